/**
 * What one XState event costs on this machine, hot (the same actor, in a
 * loop): the floor under every transition the proxy makes. Rows: a machine
 * with one state and one action (the least an event can cost); the proxy
 * machine's FORWARD with an empty batch (a proxy listening on a free loopback
 * port, no servers); the pool machine's ROUTE with one request (one at a
 * time: one event per request) and with batches of 8 and 32 (pipelined: one
 * event per read's batch), per request; and the same round-robin pick as a
 * plain loop, without a machine. One process, no traffic: nanoseconds of CPU
 * time (user + system) per request, best of the rounds, and bytes allocated
 * per request (what V8's young generation grew by over 256 requests, the
 * median of 31 tries: a try a collection cut short is skipped). One at a
 * time, with cold caches between requests, an event costs more than this.
 *
 *   npx tsx bench/xstate-cost.ts [--rounds 5] [--events 1000000]
 */
import { parseArgs } from 'node:util';
import { getHeapSpaceStatistics } from 'node:v8';
import { createActor, setup } from 'xstate';
import { silentLogger, startProxy } from '../actors/index.js';
import { poolMachine } from '../actors/pool.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, events: { type: 'string', default: '1000000' } } });
const rounds = Number(values.rounds);
const events = Number(values.events);

let delivered = 0;

/** CPU nanoseconds per request of `run(n)`, which handles `n` requests; best of the rounds. */
function measure(run: (n: number) => void): number {
  run(Math.min(events, 100_000));
  let best = Infinity;
  for (let r = 0; r < rounds; r++) {
    const t0 = process.cpuUsage();
    run(events);
    const t = process.cpuUsage(t0);
    best = Math.min(best, ((t.user + t.system) * 1000) / events);
  }
  return best;
}

const youngUsed = (): number => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')!.space_used_size;

/** Bytes allocated per request by `run(n)`: the median over tries that no collection interrupted. */
function allocated(run: (n: number) => void, n = 256): number {
  const per: number[] = [];
  for (let k = 0; k < 31; k++) {
    const before = youngUsed();
    run(n);
    const grew = youngUsed() - before;
    if (grew > 0) per.push(grew / n);
  }
  per.sort((a, b) => a - b);
  return per.length ? per[per.length >> 1]! : NaN;
}

const oneState = createActor(
  setup({ actions: { count: () => void delivered++ } }).createMachine({ on: { E: { actions: 'count' } } }),
).start();

/** The pool's members, and the plain loop's. */
const members = ['s1', 's2', 's3', 's4'];

function pool() {
  const actor = createActor(poolMachine, { input: { policy: '111', deliver: () => void delivered++, unrouted: () => {}, eligible: () => true } }).start();
  for (const id of members) actor.send({ type: 'JOIN', id });
  return actor;
}
const pooled = pool();

function routeIn(batch: number) {
  const requests = Array.from({ length: batch }, (_, i) => i);
  return (n: number): void => {
    for (let i = 0; i < n; i += batch) pooled.send({ type: 'ROUTE', requests });
  };
}

const proxy = await startProxy({ host: '127.0.0.1', port: 0, logger: silentLogger });

let cursor = 0;
const rows: Array<[string, (n: number) => void]> = [
  ['one-state machine, one action: an event', (n) => {
    for (let i = 0; i < n; i++) oneState.send({ type: 'E' });
  }],
  ['proxy FORWARD, empty: an event', (n) => {
    for (let i = 0; i < n; i++) proxy.actor.send({ type: 'FORWARD', batches: [] });
  }],
  ['pool ROUTE, 1 request an event (one at a time)', routeIn(1)],
  ['pool ROUTE, 8 requests an event', routeIn(8)],
  ['pool ROUTE, 32 requests an event (a pipelined read)', routeIn(32)],
  ['the same pick as a plain loop, no machine', (n) => {
    for (let i = 0; i < n; i++) {
      cursor = cursor + 1 >= members.length ? 0 : cursor + 1;
      if (members[cursor]) delivered++;
    }
  }],
];

console.log(`xstate per-event cost per request: CPU (best of ${rounds} rounds of ${events.toLocaleString('en')}) and bytes allocated`);
for (const [label, run] of rows) {
  const ns = measure(run);
  console.log(`${label.padEnd(52)} ${ns.toFixed(0).padStart(6)} ns ${allocated(run).toFixed(0).padStart(6)} B`);
}
await proxy.stop();
if (delivered === 0) throw new Error('nothing was delivered');
