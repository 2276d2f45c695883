/**
 * What the proxy keeps waiting at a server that states its `--concurrency` (`routing.ts` `mostHeld`, `serverQueue`):
 * `max_server_queue` when set; by default as many again, or for a server that answers quicker than
 * `SERVER_QUEUE_MS` a request, what it works through in that time. The proxy's clock is a manual one, so each
 * server's pace is what the test says; the server's handler answers when the test lets it. Counts only, never times.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Socket } from 'node:net';
import { Logger, ManualClock, memorySink, startProxy, startServer, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { SERVER_QUEUE_MS } from '../actors/routing.js';
import type { ProxyOptions } from '../actors/proxy-options.js';
import { MsgType } from '../transport/messages.js';
import { collector, eventually, frame, LOCAL, rawConnect } from './helpers.js';

interface Ctx {
  proxy?: ProxyHandle;
  server?: ServerHandle;
  sockets: Socket[];
}

const queue = suite<Ctx>('the requests a server that states its concurrency is kept waiting', { sockets: [] });
queue.after.each(async (ctx) => {
  for (const s of ctx.sockets) s.destroy();
  ctx.sockets = [];
  ctx.server?.kill();
  ctx.proxy?.kill();
  ctx.server = ctx.proxy = undefined;
});

/**
 * A proxy on a manual clock (nothing times out), one server of P working one request at a time whose handler
 * answers only when `release` is called, and a client that has sent `n` requests at once.
 */
async function oneAtATime(ctx: Ctx, n: number, opts: ProxyOptions = {}) {
  const clock = new ManualClock();
  ctx.proxy = await startProxy({ port: 0, clock, timeoutMs: 600_000, tryTimeoutMs: 600_000, retries: 0, logger: new Logger('proxy', memorySink([]), 'warn'), ...opts });
  const waiting: Array<(answer: string) => void> = [];
  ctx.server = await startServer({
    id: 's', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port }, concurrency: 1, handlerTimeoutMs: 0,
    handler: (payload) => new Promise<string>((resolve) => waiting.push(() => resolve(`done ${String(payload)}`))),
  });
  await eventually(() => ctx.proxy!.pools().P?.serving.includes('s') ?? false, 3000, 's serving');
  const context = () => ctx.proxy!.actor.getSnapshot().context;
  // The link's first PONG states the concurrency: until then the server is held to max_server_inflight alone.
  await eventually(() => context().servers.get('s')?.traffic.limit === 1, 3000, 'the link knows the concurrency');
  const sock = await rawConnect(ctx.proxy.port);
  ctx.sockets.push(sock);
  const got = collector(sock);
  sock.write(Buffer.concat(Array.from({ length: n }, (_, seq) => frame({ type: MsgType.DATA, seq, srcid: 'c', privPoliId: 'P', payload: `r${seq}` }))));
  const held = (): number => context().servers.get('s')!.traffic.inflight.size;
  const policy = () => context().policies.get('P')!;
  await eventually(() => waiting.length === 1 && policy().waiting.length > 0, 3000, 'the server runs one, the rest wait');
  /** After `ms` of the proxy's time, the server answers the request it runs and takes the next. */
  const answerAfter = async (ms: number): Promise<void> => {
    const before = got.got.length;
    clock.advance(ms);
    waiting.shift()!('');
    await got.until(() => got.got.length > before);
    await eventually(() => waiting.length === 1, 3000, 'the server runs the next');
    // The drain after the answer is the proxy's next microtask.
    await new Promise((r) => setImmediate(r));
  };
  return { held, policy, answerAfter, got };
}

queue(`by default a server that answers every 1 ms is kept what it works through in ${SERVER_QUEUE_MS} ms waiting, and one slower than ${SERVER_QUEUE_MS} ms as many as its concurrency again: on main one waited whatever its pace, and a server quicker than the proxy's turn-around sat idle between requests`, async (ctx) => {
  const { held, answerAfter } = await oneAtATime(ctx, 60);
  // Its pace not measured yet: its concurrency and as many again.
  assert.is(held(), 2, 'before its pace is known');
  let most = 0;
  for (let i = 0; i < 6; i++) {
    await answerAfter(1);
    most = Math.max(most, held());
  }
  assert.is(most, 1 + Math.ceil(SERVER_QUEUE_MS / 1), `a server answering every 1 ms holds 1 running and ${SERVER_QUEUE_MS} waiting`);
  // Slower than SERVER_QUEUE_MS a request: back to one waiting once its pace shows it.
  for (let i = 0; i < 10; i++) await answerAfter(4 * SERVER_QUEUE_MS);
  assert.is(held(), 2, 'a server answering every 20 ms holds 1 running and 1 waiting');
});

queue('max_server_queue, when set, is what the server is kept waiting whatever its pace', async (ctx) => {
  const { held, answerAfter } = await oneAtATime(ctx, 40, { maxServerQueue: 2 });
  for (let i = 0; i < 6; i++) {
    await answerAfter(1);
    assert.is(held(), 3, 'one running and max_server_queue waiting');
  }
});

queue("a drain after an answer takes from the policy's queue what its servers have room for: on main it took every waiting request and put back all but the one or two sent (56 for each answer with four servers one at a time under 2x32)", async (ctx) => {
  const { policy, answerAfter, held } = await oneAtATime(ctx, 40, { maxServerQueue: 1 });
  const waiting = policy().waiting;
  const taken: number[] = [];
  const take = waiting.take.bind(waiting);
  waiting.take = (n, newest) => {
    const out = take(n, newest);
    taken.push(out.length);
    return out;
  };
  for (let i = 0; i < 5; i++) await answerAfter(1);
  assert.equal(taken, [1, 1, 1, 1, 1], 'one request taken for each slot an answer freed');
  assert.is(held(), 2);
  assert.is(policy().waiting.length, 40 - 2 - 5, 'the rest wait in the proxy, in turn');
});

queue.run();
