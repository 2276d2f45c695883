/**
 * Routing cost on its own: the pool machine, in this process, routing
 * batches of requests among 4 members and among 10,000, with delivery a no-op.
 * The cursor moves one step per request whatever the pool's size, so the two
 * rates should match.
 */
import { createActor } from 'xstate';
import { poolMachine } from '../actors/pool.js';

export interface RoutingRate {
  members: number;
  /** Requests routed per second. */
  rate: number;
}

export function poolRoutingRate(members: number, ms: number, batch = 32): RoutingRate {
  let delivered = 0;
  const pool = createActor(poolMachine, {
    input: {
      policy: 'bench',
      deliver: () => {
        delivered++;
      },
      unrouted: () => {},
    },
  });
  pool.start();
  for (let i = 0; i < members; i++) pool.send({ type: 'JOIN', id: `m${i}` });
  const requests = Array.from({ length: batch }, (_, i) => ({ i }));
  // Warm up the JIT, then measure.
  for (let i = 0; i < 2000; i++) pool.send({ type: 'ROUTE', requests });
  delivered = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < 200; i++) pool.send({ type: 'ROUTE', requests });
    t = performance.now();
  }
  pool.stop();
  return { members, rate: (delivered / (t - t0)) * 1000 };
}

/**
 * Both pool sizes, measured in turns (4, 10,000, 4, 10,000, ...) after one
 * unmeasured pass of each: the first pool measured in a process runs faster
 * (its code is still specialised for one actor), which would otherwise
 * favour whichever size goes first. Reports each size's median.
 */
export function poolRoutingRates(sizes: number[], ms: number, rounds = 3): RoutingRate[] {
  for (const n of sizes) poolRoutingRate(n, Math.min(200, ms));
  const rates = new Map<number, number[]>(sizes.map((n) => [n, []]));
  for (let r = 0; r < rounds; r++) for (const n of sizes) rates.get(n)!.push(poolRoutingRate(n, ms / rounds).rate);
  return sizes.map((n) => {
    const sorted = rates.get(n)!.sort((a, b) => a - b);
    return { members: n, rate: sorted[sorted.length >> 1]! };
  });
}
