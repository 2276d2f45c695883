/**
 * `--queue-timeout` (`queue_timeout`), HAProxy's `timeout queue`: a request waits at most this long
 * in its policy's queue for a server with room, then is answered OVERLOADED, unsent (one back from a
 * failed try: that try's answer). The proxies here run on a manual clock, so every wait is exact;
 * the servers are real, in this process, their handlers held until the test lets them go.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, Logger, ManualClock, memorySink, startProxy, startServer, type Client, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import type { ServerOptions } from '../actors/server.js';
import type { HandlerContext, Payload } from '../actors/handler.js';
import { resolveOptions, type ProxyOptions } from '../actors/proxy-options.js';
import { Destination } from '../actors/logger.js';
import { AccessLog, combineObservers, type AccessRecord } from '../admin/access-log.js';
import { Metrics } from '../inspector/metrics.js';
import { startInspector } from '../inspector/index.js';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';
import { eventually, LOCAL } from './helpers.js';
import { killAll, proxyProcess, revproxy } from './procs.js';
import { roomlessWhy } from '../actors/routing.js';
import { Member, type Policy } from '../actors/proxy-types.js';
import type { LinkPort } from '../actors/link.js';

interface Outcome {
  answer?: string;
  code?: string;
  message?: string;
}

/** Settles with the answer or the error's code and message, so a test can look at it later. */
function outcome(p: Promise<Payload>): { done?: Outcome } {
  const box: { done?: Outcome } = {};
  p.then((answer) => (box.done = { answer: String(answer) }), (e: { code: string; message: string }) => (box.done = { code: e.code, message: e.message }));
  return box;
}

/**
 * A handler that records what it got and holds each request until `release(payload)`, or fails it
 * when released with an error; with `signal`, also when its ctx.signal aborts (at its deadline).
 */
function held(signal = true) {
  const got: string[] = [];
  const waiting = new Map<string, { ok: (v: string) => void; fail: (e: Error) => void }>();
  const handler = (payload: Payload, ctx: HandlerContext): Promise<string> => {
    const p = typeof payload === 'string' ? payload : Buffer.from(payload).toString();
    got.push(p);
    return new Promise((ok, fail) => {
      waiting.set(p, { ok, fail });
      if (signal) ctx.signal.addEventListener('abort', () => fail(ctx.signal.reason as Error));
    });
  };
  const release = (payload: string, error?: string): void => {
    const w = waiting.get(payload)!;
    if (error) w.fail(new Error(error));
    else w.ok(`done ${payload}`);
  };
  return { got, handler, release };
}

type Ctx = { proxy?: ProxyHandle; servers: ServerHandle[]; clients: Client[] };
const live = suite<Ctx>('queue timeout, in a proxy on a manual clock', { servers: [], clients: [] });
live.after.each((ctx) => {
  for (const c of ctx.clients) c.destroy();
  for (const s of ctx.servers) s.kill();
  // Abrupt: a drain would wait for the held requests on a clock nobody moves.
  ctx.proxy?.kill();
  Object.assign(ctx, { proxy: undefined, servers: [], clients: [] });
});

/**
 * A proxy on a manual clock that sends each server one request at a time (so requests wait in its
 * queue), with tries and slowness that never end on their own here, and servers of policy P.
 */
async function policy(ctx: Ctx, ids: string[], options: Omit<Parameters<typeof startProxy>[0], "port">, serverOptions: { concurrency?: number } = {}) {
  const clock = new ManualClock();
  const records: LogRecord[] = [];
  ctx.proxy = await startProxy({
    port: 0, clock, maxServerInflight: 1, timeoutMs: 20_000, tryTimeoutMs: 10_000, slowAfterMs: 0, ejectAfter: 1_000_000,
    logger: new Logger('proxy', memorySink(records), 'info'), ...options,
  });
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  const servers = ids.map((id) => ({ id, ...held() }));
  for (const s of servers) ctx.servers.push(await startServer({ id: s.id, policy: 'P', listenPort: 0, proxy, handler: s.handler, ...serverOptions }));
  await eventually(() => ctx.proxy!.pools().P?.serving.length === ids.length, 3000, 'the servers serving P');
  const client = async (id: string): Promise<Client> => {
    const c = await connect({ revproc: `${LOCAL}:${proxy.port}`, id });
    ctx.clients.push(c);
    return c;
  };
  const waiting = (): number => ctx.proxy!.actor.getSnapshot().context.policies.get('P')?.waiting.length ?? 0;
  return { clock, records, servers, client, waiting };
}

/** A policy of one server holding a client's first request, and that client's next waiting in the proxy's queue. */
async function oneWaiting(ctx: Ctx, options: ProxyOptions) {
  const { clock, records, servers: [s], client, waiting } = await policy(ctx, ['s'], options);
  const c = await client('c');
  c.request('P', 'first', { timeoutMs: 60_000 }).catch(() => {});
  await eventually(() => s!.got.length === 1, 3000, 'the first request at the server');
  const next = outcome(c.request('P', 'next', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'one request waiting');
  return { clock, records, next };
}

live('a request that waits --queue-timeout for a server with room is answered OVERLOADED, unsent; the one the server has is answered', async (ctx) => {
  const { clock, records, servers: [s], client, waiting } = await policy(ctx, ['s'], { queueTimeoutMs: 500 });
  const c = await client('c');
  const first = outcome(c.request('P', 'first', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.length === 1, 3000, 'the first request at the server');
  const rest = ['a', 'b', 'c'].map((p) => outcome(c.request('P', p, { timeoutMs: 60_000 })));
  await eventually(() => waiting() === 3, 3000, 'three requests waiting');
  clock.advance(499);
  await new Promise((r) => setTimeout(r, 50));
  assert.ok(rest.every((r) => r.done === undefined), 'none answered before its 500 ms');
  clock.advance(1);
  await eventually(() => rest.every((r) => r.done !== undefined), 3000, 'the waiting answered');
  for (const r of rest) {
    assert.is(r.done!.code, 'OVERLOADED');
    assert.match(r.done!.message!, 'no server of privacy policy P had room within 500 ms (--queue-timeout; its one server, s, was serving with no room); not sent, try again later');
  }
  assert.equal(s!.got, ['first'], 'none of them reached the server');
  assert.is(first.done, undefined);
  s!.release('first');
  await eventually(() => first.done !== undefined, 3000, 'the first answered');
  assert.equal(first.done, { answer: 'done first' });
  const warn = records.filter((r) => r.event === 'queue_timeout');
  assert.is(warn.length, 1);
  assert.is(warn[0]!.level, 'warn');
  assert.match(warn[0]!.msg, 'Privacy policy P is short of room: 3 request(s) waited 500 ms in its queue (--queue-timeout)');
});

live('without --queue-timeout a waiting request is answered TIMEOUT at the request timeout, as before', async (ctx) => {
  assert.is(resolveOptions({ timeoutMs: 2000 }).queueTimeoutMs, 2000, 'the default is the request timeout');
  const { clock, next } = await oneWaiting(ctx, { timeoutMs: 2000 });
  clock.advance(1999);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(next.done, undefined, 'still waiting at 1999 ms');
  clock.advance(1);
  await eventually(() => next.done !== undefined, 3000, 'answered at its timeout');
  assert.equal(next.done, { code: 'TIMEOUT', message: 'no server of privacy policy P had room within 2000 ms (its one server, s, was serving with no room)' });
});

live("a request back from a failed try waits --queue-timeout from its return, and a client's newer request behind it is still answered at its own", async (ctx) => {
  // Its client's requests wait in arrival order; the one back from a try is ahead of the newer one,
  // but due later. The sweep once stopped at the first request not due in each client's turn.
  const { clock, servers: [a, b], client, waiting } = await policy(ctx, ['a', 'b'], { queueTimeoutMs: 500, retries: 2 });
  const [x, y] = [await client('x'), await client('y')];
  // y's request holds one server, x's first the other; x's next waits.
  const hold = outcome(y.request('P', 'hold', { timeoutMs: 60_000 }));
  await eventually(() => a!.got.length + b!.got.length === 1, 3000, 'hold at a server');
  const r = outcome(x.request('P', 'r', { timeoutMs: 60_000 }));
  await eventually(() => a!.got.length + b!.got.length === 2, 3000, 'r at the other server');
  clock.advance(100);
  const u = outcome(x.request('P', 'u', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'u waiting from 100 ms');
  clock.advance(200);
  // r's server dies with it: r goes again, but the other server is full, so r waits, from 300 ms,
  // ahead of u, which came after it.
  ctx.servers[a!.got.includes('r') ? 0 : 1]!.kill();
  await eventually(() => waiting() === 2, 3000, `r back to wait: ${JSON.stringify([r.done, u.done])}`);
  clock.advance(299);
  await new Promise((res) => setTimeout(res, 50));
  assert.is(u.done, undefined, 'u at 499 ms of its stay');
  clock.advance(1);
  await eventually(() => u.done !== undefined, 3000, 'u answered at 500 ms of its stay, though r, ahead of it, is not due');
  assert.is(u.done!.code, 'OVERLOADED');
  assert.is(r.done, undefined, 'r has waited 300 ms of its 500');
  clock.advance(199);
  await new Promise((res) => setTimeout(res, 50));
  assert.is(r.done, undefined, 'r at 499 ms of its stay');
  clock.advance(1);
  await eventually(() => r.done !== undefined, 3000, 'r answered at 500 ms of its stay');
  assert.is(r.done!.code, 'UPSTREAM_FAILED', 'its failed try answers it');
  // Its dead server gone, the other was full.
  assert.match(r.done!.message!, /; not retried: no server of privacy policy P had room within 500 ms \(--queue-timeout; its one server, [ab], was serving with no room\)$/);
  assert.is(hold.done, undefined, 'the other server still holds its request');
});

live("the access log's queue_ms and revproxy_queue_wait_seconds say how long each request waited in its policy's queue, over all its stays", async (ctx) => {
  const dir = tempDir('revproxy-qtime-');
  try {
    const dest = new Destination({ to: join(dir, 'access.log') });
    await dest.ready();
    const metrics = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
    const observer = combineObservers(new AccessLog(dest, 'json'), metrics);
    const { clock, servers: [a, b], client, waiting } = await policy(ctx, ['a', 'b'], { queueTimeoutMs: 500, retries: 2, observer });
    const c = await client('c');
    const ask = (p: string) => outcome(c.request('P', p, { timeoutMs: 60_000 }));
    const at = (p: string) => (a!.got.includes(p) ? a! : b!);
    // first and second take both servers; w1 waits 300 ms for first's server; w2 waits 200 ms, then
    // w2's server dies with it: w2 waits 100 ms more for the other, then runs there; w3 waits out its 500 ms.
    const [first, second] = [ask('first'), ask('second')];
    await eventually(() => a!.got.length + b!.got.length === 2, 3000, 'first and second at the servers');
    /** `p` waits `ms`, then `holder` is answered and `p` goes to its server. */
    const waitFor = async (p: string, ms: number, holder: string) => {
      const r = ask(p);
      await eventually(() => waiting() === 1, 3000, `${p} waiting`);
      clock.advance(ms);
      at(holder).release(holder);
      await eventually(() => at(holder).got.includes(p), 3000, `${p} sent when ${holder} was answered`);
      return r;
    };
    const w1 = await waitFor('w1', 300, 'first');
    const w2 = await waitFor('w2', 200, 'second');
    const w2server = at('w2') === a ? 0 : 1;
    clock.advance(50);
    ctx.servers[w2server]!.kill();
    await eventually(() => waiting() === 1, 3000, 'w2 back to wait, the other server running w1');
    clock.advance(100);
    at('w1').release('w1');
    await eventually(() => at('w1').got.includes('w2'), 3000, 'w2 sent again when w1 was answered');
    const w3 = ask('w3');
    await eventually(() => waiting() === 1, 3000, 'w3 waiting');
    clock.advance(500);
    await eventually(() => w3.done !== undefined, 3000, 'w3 answered at its queue timeout');
    at('w1').release('w2');
    await eventually(() => [first, second, w1, w2].every((r) => r.done !== undefined), 3000, 'the rest answered');
    assert.equal(w2.done, { answer: 'done w2' });
    await dest.end();
    const recs = readFileSync(join(dir, 'access.log'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as AccessRecord);
    const bySeq = new Map(recs.map((r) => [r.seq, r]));
    const rec = (p: string): Pick<AccessRecord, 'outcome' | 'tries' | 'latency_ms' | 'queue_ms'> => {
      const r = bySeq.get(['first', 'second', 'w1', 'w2', 'w3'].indexOf(p))!;
      return { outcome: r.outcome, tries: r.tries, latency_ms: r.latency_ms, queue_ms: r.queue_ms };
    };
    assert.equal(rec('first'), { outcome: 'ok', tries: 1, latency_ms: 300, queue_ms: 0 }, 'first never waited');
    assert.equal(rec('second'), { outcome: 'ok', tries: 1, latency_ms: 500, queue_ms: 0 });
    assert.equal(rec('w1'), { outcome: 'ok', tries: 1, latency_ms: 650, queue_ms: 300 });
    assert.equal(rec('w2'), { outcome: 'ok', tries: 2, latency_ms: 850, queue_ms: 300 }, 'w2 waited 200 ms, then 100 ms after its failed try');
    assert.equal(rec('w3'), { outcome: 'OVERLOADED', tries: 0, latency_ms: 500, queue_ms: 500 });
    const text = await metrics.text();
    const series = (name: string) => Number(new RegExp(`^revproxy_queue_wait_seconds_${name} (\\S+)$`, 'm').exec(text)?.[1]);
    assert.match(text, /# TYPE revproxy_queue_wait_seconds histogram/);
    assert.is(series('count{policy="P"}'), 3, 'the three that waited');
    assert.ok(Math.abs(series('sum{policy="P"}') - 1.1) < 1e-9, `0.3 + 0.3 + 0.5 s, not ${series('sum{policy="P"}')}`);
    assert.is(series('bucket{policy="P",le="0.25"}'), 0);
    assert.is(series('bucket{policy="P",le="0.5"}'), 3);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/**
 * One server that runs one request at a time: `first` runs, a waits from 0, b from 50; first is
 * answered at 60 (the queue has stood 60 ms); c waits from 70; a is answered at 120 (the queue has
 * stood 120 ms, b having waited throughout); then the rest. Returns the order the server got them.
 */
async function orderServed(ctx: Ctx, options: ProxyOptions): Promise<string[]> {
  const { clock, servers: [s], client, waiting } = await policy(ctx, ['s'], { queueTimeoutMs: 10_000, ...options });
  const c = await client('c');
  const ask = (p: string) => void c.request('P', p, { timeoutMs: 60_000 }).catch(() => {});
  const served = (n: number, why: string) => eventually(() => s!.got.length === n, 3000, why);
  ask('first');
  await served(1, 'first at the server');
  ask('a');
  await eventually(() => waiting() === 1, 3000, 'a waiting');
  clock.advance(50);
  ask('b');
  await eventually(() => waiting() === 2, 3000, 'b waiting');
  clock.advance(10);
  s!.release('first');
  await served(2, 'the next sent at 60 ms');
  clock.advance(10);
  ask('c');
  await eventually(() => waiting() === 2, 3000, 'c waiting');
  clock.advance(50);
  s!.release(s!.got[1]!);
  await served(3, 'the next sent at 120 ms');
  s!.release(s!.got[2]!);
  await served(4, 'the last sent');
  return s!.got;
}

live('--queue-lifo-after: a queue that has stood that long gives a server with room the newest waiting request first; a shorter one the oldest', async (ctx) => {
  assert.equal(await orderServed(ctx, { queueLifoAfterMs: 100 }), ['first', 'a', 'c', 'b'], 'a at 60 ms (oldest first), c at 120 ms (newest first)');
});

live('without --queue-lifo-after the queue is served oldest first however long it stands', async (ctx) => {
  assert.is(resolveOptions({}).queueLifoAfterMs, 0, 'off by default');
  assert.equal(await orderServed(ctx, {}), ['first', 'a', 'b', 'c']);
});

live("the inspector sees the queue: its pools say how many wait, and its /metrics has revproxy_queued_requests and revproxy_queue_wait_seconds", async (ctx) => {
  const insp = await startInspector({ port: 0, flushMs: 50 });
  try {
    const { clock, servers: [s], client, waiting } = await policy(ctx, ['s'], { inspect: insp.inspect, observer: insp.observer });
    const c = await client('c');
    const answers = ['first', 'a', 'b'].map((p) => outcome(c.request('P', p, { timeoutMs: 60_000 })));
    await eventually(() => waiting() === 2, 3000, 'two waiting');
    const pool = () => insp.hub.livePools().find((p) => p.policy === 'P');
    assert.is(pool()?.waiting, 2);
    const scrape = async () => (await fetch(`${insp.url}metrics`)).text();
    await eventually(async () => /^revproxy_queued_requests\{policy="P"\} 2$/m.test(await scrape()), 3000, "the inspector's gauge reads 2");
    clock.advance(40);
    for (const p of ['first', 'a', 'b']) {
      await eventually(() => s!.got.includes(p), 3000, `${p} at the server`);
      s!.release(p);
    }
    await eventually(() => answers.every((a) => a.done !== undefined), 3000, 'all answered');
    assert.is(pool()?.waiting, 0);
    const text = await scrape();
    assert.match(text, /^revproxy_queue_wait_seconds_count\{policy="P"\} 2$/m);
    assert.match(text, /^revproxy_queue_wait_seconds_sum\{policy="P"\} 0\.08$/m, 'a and b waited 40 ms each');
  } finally {
    await insp.close();
  }
});

live('a reload changes the queue timeout at once', async (ctx) => {
  const { clock, next } = await oneWaiting(ctx, { queueTimeoutMs: 5000 });
  clock.advance(200);
  const opts = ctx.proxy!.actor.getSnapshot().context.opts;
  ctx.proxy!.actor.send({ type: 'RELOAD', opts: { ...opts, queueTimeoutMs: 100 } });
  clock.advance(100);
  await eventually(() => next.done !== undefined, 3000, 'answered under the new timeout');
  assert.is(next.done!.code, 'OVERLOADED');
  assert.match(next.done!.message!, 'within 100 ms (--queue-timeout;');
});

type ServerCtx = { proxy?: ProxyHandle; servers: ServerHandle[]; clients: Client[] };
const server = suite<ServerCtx>("a server's queue timeout (revproxy server --queue-timeout), on a manual clock", { servers: [], clients: [] });
server.after.each(async (ctx) => {
  for (const c of ctx.clients) c.destroy();
  for (const s of ctx.servers) s.kill();
  await ctx.proxy?.stop();
  Object.assign(ctx, { proxy: undefined, servers: [], clients: [] });
});

/**
 * A proxy whose tries do not end here, a server `id` of P on a manual clock that runs one request at
 * a time and lets others wait 500 ms for it, and a client whose first request it is running.
 */
async function oneSlot(ctx: ServerCtx, id: string, extra: Partial<ServerOptions> = {}, signal = true) {
  // The server's own queue is what is tested: the proxy sends it past its concurrency (max_server_queue).
  ctx.proxy = await startProxy({ port: 0, ejectAfter: 1_000_000, slowAfterMs: 0, timeoutMs: 20_000, tryTimeoutMs: 10_000, maxServerQueue: 1024 });
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  const clock = new ManualClock();
  const s = held(signal);
  const records: LogRecord[] = [];
  ctx.servers.push(await startServer({
    id, policy: 'P', listenPort: 0, proxy, handler: s.handler, concurrency: 1, queueTimeoutMs: 500, clock,
    logger: new Logger(`server ${id}`, memorySink(records), 'info'), ...extra,
  }));
  await eventually(() => ctx.proxy!.pools().P?.serving.length === 1, 3000, `${id} serving P`);
  const c = await connect({ revproc: `${LOCAL}:${proxy.port}`, id: 'c' });
  ctx.clients.push(c);
  const first = outcome(c.request('P', 'first'));
  await eventually(() => s.got.length === 1, 3000, 'the first running');
  return { proxy, clock, s, records, c, first };
}

server("a request that waits --queue-timeout for one of a server's slots is answered OVERLOADED, not run, and goes to another server; a slot taken in time runs it", async (ctx) => {
  const { proxy, clock, s: busy, records, c, first } = await oneSlot(ctx, 'busy');
  const second = outcome(c.request('P', 'second'));
  const third = outcome(c.request('P', 'third'));
  await new Promise((r) => setTimeout(r, 100)); // both read by the server, waiting for its one slot
  clock.advance(499);
  await new Promise((r) => setTimeout(r, 50));
  assert.equal([second.done, third.done], [undefined, undefined], 'still waiting at 499 ms');
  // A second server comes: what busy refuses at 500 ms goes there.
  const idle = held();
  ctx.servers.push(await startServer({ id: 'idle', policy: 'P', listenPort: 0, proxy, handler: idle.handler }));
  await eventually(() => ctx.proxy!.pools().P?.serving.length === 2, 3000, 'idle serving P');
  clock.advance(1);
  await eventually(() => idle.got.length === 2, 3000, 'both sent on to idle');
  assert.equal(busy.got, ['first'], 'busy ran neither');
  idle.release('second');
  idle.release('third');
  busy.release('first');
  await eventually(() => [first, second, third].every((o) => o.done !== undefined), 3000, 'all answered');
  assert.equal([first.done, second.done, third.done], [{ answer: 'done first' }, { answer: 'done second' }, { answer: 'done third' }]);
  const warn = records.filter((r) => r.event === 'queue_timeout');
  assert.is(warn.length, 1);
  assert.match(warn[0]!.msg, "Answered 2 request(s) OVERLOADED, unrun: they waited 500 ms for one of the server's 1 slot(s) (--queue-timeout, --concurrency)");
});

server("--queue-lifo-after: once a server's queue has stood that long a free slot takes the newest waiting request; before, the oldest", async (ctx) => {
  const { clock, s, c } = await oneSlot(ctx, 'lifo', { queueTimeoutMs: 10_000, queueLifoAfterMs: 100 });
  const read = () => new Promise((r) => setTimeout(r, 100)); // the server has read what was sent
  const ask = (p: string) => void c.request('P', p).catch(() => {});
  ask('a');
  await read();
  clock.advance(50);
  ask('b');
  await read();
  clock.advance(10);
  s.release('first');
  await eventually(() => s.got.length === 2, 3000, 'the next running at 60 ms');
  clock.advance(10);
  ask('c');
  await read();
  clock.advance(50);
  s.release(s.got[1]!);
  await eventually(() => s.got.length === 3, 3000, 'the next running at 120 ms');
  s.release(s.got[2]!);
  await eventually(() => s.got.length === 4, 3000, 'the last running');
  assert.equal(s.got, ['first', 'a', 'c', 'b'], 'a at 60 ms (oldest first), c at 120 ms (newest first)');
});

server("a full server queue first answers TIMEOUT the requests in it whose deadline passed, and takes the new one, where it refused it OVERLOADED", async (ctx) => {
  // The proxy's tries to its one server run to the requests' deadline, 20 s (its own clock); the server's
  // clock is moved past it. The handler ignores its ctx.signal, so first keeps the slot past its deadline,
  // as a slow handler does.
  const { clock, s, c, first } = await oneSlot(ctx, 'full', { queueLimit: 2, queueTimeoutMs: 0 }, false);
  const [a, b] = [outcome(c.request('P', 'a')), outcome(c.request('P', 'b'))];
  await new Promise((r) => setTimeout(r, 100)); // both waiting in the server's queue, which is full
  clock.advance(20_001);
  const late = outcome(c.request('P', 'late'));
  await eventually(() => a.done !== undefined && b.done !== undefined, 3000, 'a and b answered');
  for (const o of [a, b]) {
    assert.is(o.done!.code, 'TIMEOUT');
    assert.match(o.done!.message!, "waited past its deadline in server full's queue");
  }
  assert.is(late.done, undefined, 'late waits for the slot, not refused');
  s.release('first');
  await eventually(() => s.got.length === 2, 3000, 'late running');
  assert.equal(s.got, ['first', 'late']);
  s.release('late');
  await eventually(() => late.done !== undefined && first.done !== undefined, 3000, 'late answered');
  assert.equal(late.done, { answer: 'done late' });
});

server('with one server, the client gets its OVERLOADED, which says why; a request that gets the slot before its 500 ms runs', async (ctx) => {
  const { clock, s, c, first } = await oneSlot(ctx, 'only');
  const second = outcome(c.request('P', 'second'));
  await new Promise((r) => setTimeout(r, 100));
  clock.advance(300);
  const third = outcome(c.request('P', 'third'));
  await new Promise((r) => setTimeout(r, 100));
  s.release('first');
  // The slot goes to second, 300 ms into its wait; third waits from 300 ms, and is refused at 800.
  await eventually(() => s.got.length === 2, 3000, 'second running');
  clock.advance(499);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(third.done, undefined);
  clock.advance(1);
  await eventually(() => third.done !== undefined, 3000, 'third refused');
  assert.is(third.done!.code, 'OVERLOADED');
  assert.match(third.done!.message!, /waited 500 ms in server only's queue for a slot \(--queue-timeout\), not run; try another server or later/);
  s.release('second');
  await eventually(() => second.done !== undefined, 3000, 'second answered');
  assert.equal([first.done, second.done], [{ answer: 'done first' }, { answer: 'done second' }]);
  assert.equal(s.got, ['first', 'second']);
});

const cli = suite('queue timeout, from the command line');
cli.after.each(() => killAll());

cli('--queue-timeout: a server working one request at a time answers one; the others that waited are refused OVERLOADED, with a warn line', async () => {
  const { proc: proxy, port } = await proxyProcess(['--log-level', 'warn', '--log-format', 'json', '--max-server-inflight', '1', '--queue-timeout', '100']);
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', String(port), '--concurrency', '1', '--delay', '1500']);
  await server.waitFor(/Registered with the reverse proxy/, 15000);
  const c = await connect({ revproc: `${LOCAL}:${port}`, id: 'c' });
  try {
    const results = await Promise.all(['a', 'b', 'c', 'd'].map((p) => c.request('P', p).then(() => 'ok', (e: { code: string }) => e.code)));
    assert.equal(results, ['ok', 'OVERLOADED', 'OVERLOADED', 'OVERLOADED']);
    const line = (await proxy.waitFor(/"event":"queue_timeout"/, 5000)).input!;
    const rec = JSON.parse(line.slice(line.indexOf('{'))) as { level: string; policy: string; code: string; count: number };
    assert.equal([rec.level, rec.policy, rec.code, rec.count], ['warn', 'P', 'OVERLOADED', 3]);
  } finally {
    c.destroy();
  }
});

cli('revproxy_queued_requests reads how many requests wait in each policy\'s queue, and 0 once none does', async () => {
  const { proc: proxy, port } = await proxyProcess(['--log-level', 'info', '--max-server-inflight', '1', '--timeout', '3000', '--admin', '127.0.0.1:0']);
  const admin = (await proxy.waitFor(/Admin endpoint on (http:\S+)/)).at(1)!;
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', String(port), '--behaviour', 'silent']);
  await server.waitFor(/Registered with the reverse proxy/, 15000);
  const queued = async (): Promise<string | undefined> => /^revproxy_queued_requests\{policy="P"\} (\d+)$/m.exec(await (await fetch(`${admin}metrics`)).text())?.[1];
  await eventually(async () => (await queued()) === '0', 5000, 'P reads 0 with nothing waiting');
  const c = await connect({ revproc: `${LOCAL}:${port}`, id: 'c' });
  try {
    // The silent server holds the first; the other three wait in P's queue until their timeout.
    const answers = Promise.all(['a', 'b', 'c', 'd'].map((p) => c.request('P', p).then(() => 'ok', (e: { code: string }) => e.code)));
    await eventually(async () => (await queued()) === '3', 2500, 'three waiting');
    assert.equal(await answers, ['TIMEOUT', 'TIMEOUT', 'TIMEOUT', 'TIMEOUT']);
    assert.is(await queued(), '0');
  } finally {
    c.destroy();
  }
});

/** What a waiting request is answered when its policy's last server is gone: what a new one is, at once. */
const gone = { code: 'NO_SERVER', message: 'no live server serves privacy policy P' };

live("the requests waiting for a policy's only server are answered NO_SERVER at once when it dies, as a new request is, not at their timeout", async (ctx) => {
  const { clock, records, next } = await oneWaiting(ctx, { timeoutMs: 60_000 });
  ctx.servers[0]!.kill();
  await eventually(() => next.done !== undefined, 3000, `the waiting request answered with the clock at ${clock.now()} ms`);
  // Its link lost: down until its registration's end removes it (then it has no server).
  assert.is(next.done!.code, gone.code);
  assert.match(next.done!.message ?? "", /^no live server serves privacy policy P(: its one server, s, is down)?$/);
  assert.is(clock.now(), 0, 'no time passed');
  const fresh = outcome(ctx.clients[0]!.request('P', 'fresh', { timeoutMs: 60_000 }));
  await eventually(() => fresh.done !== undefined, 3000, 'a new request answered');
  assert.is(fresh.done!.code, 'NO_SERVER');
  assert.ok(records.some((r) => r.event === 'no_server' && r.policy === 'P'), 'the no_server line counts them');
});

live("the requests waiting for a policy's only server are answered NO_SERVER at once when it stops, and the policy is forgotten", async (ctx) => {
  const { clock, next } = await oneWaiting(ctx, { timeoutMs: 60_000 });
  void ctx.servers[0]!.stop();
  await eventually(() => next.done !== undefined, 3000, `the waiting request answered with the clock at ${clock.now()} ms`);
  assert.equal(next.done, gone);
  await eventually(() => ctx.proxy!.pools().P === undefined, 3000, 'policy P forgotten once its server left');
});

live("an operator's drain of a policy's only server answers its waiting requests NO_SERVER at once", async (ctx) => {
  const { next } = await oneWaiting(ctx, { timeoutMs: 60_000 });
  ctx.proxy!.actor.send({ type: 'MEMBER_DRAIN', member: 's', by: 'spec' });
  await eventually(() => next.done !== undefined, 3000, 'the waiting request answered');
  // Saying what its server is: registered, and drained.
  assert.equal(next.done, { ...gone, message: `${gone.message}: its one server, s, is drained` });
});

live('requests waiting for room keep waiting when one of two servers dies, and go to the other when it has room', async (ctx) => {
  const { clock, servers: [a, b], client, waiting } = await policy(ctx, ['a', 'b'], { timeoutMs: 60_000, retries: 0 });
  const c = await client('c');
  const [x, y] = [outcome(c.request('P', 'x', { timeoutMs: 60_000 })), outcome(c.request('P', 'y', { timeoutMs: 60_000 }))];
  await eventually(() => a!.got.length === 1 && b!.got.length === 1, 3000, 'one request at each server');
  const next = outcome(c.request('P', 'next', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'one request waiting');
  ctx.servers[0]!.kill();
  await eventually(() => (a!.got.includes('x') ? x : y).done !== undefined, 3000, "the dead server's request answered");
  await new Promise((r) => setTimeout(r, 100));
  assert.is(next.done, undefined, 'still waiting: b could serve it');
  assert.is(waiting(), 1);
  b!.release(b!.got[0]!);
  await eventually(() => b!.got.includes('next'), 3000, 'sent to b when it had room');
  b!.release('next');
  await eventually(() => next.done !== undefined, 3000, 'answered');
  assert.equal(next.done, { answer: 'done next' });
  assert.is(clock.now(), 0);
});

live("--slow-after: a server with one slow request takes the next at once when it answers the one sent to find out; one answering nothing holds that one and no more", async (ctx) => {
  // A server awaiting one long call got no new request until it was answered or its try timed out (1.7 s by
  // default): every other request of the policy, from every client, waited that long behind it.
  const { clock, servers: [s], client, waiting } = await policy(ctx, ['s'], { slowAfterMs: 400, maxServerInflight: 100 });
  const c = await client('c');
  const slow = outcome(c.request('P', 'slow', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.length === 1, 3000, 'slow at the server');
  clock.advance(500);
  const quick1 = outcome(c.request('P', 'quick1', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.includes('quick1'), 3000, `quick1 at the server, 500 ms after slow (waiting: ${waiting()})`);
  s!.release('quick1');
  await eventually(() => quick1.done !== undefined, 3000, 'quick1 answered');
  const quick2 = outcome(c.request('P', 'quick2', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.includes('quick2'), 3000, 'quick2 at the server: it answers');
  s!.release('quick2');
  await eventually(() => quick2.done !== undefined, 3000, 'quick2 answered');
  // Now it answers nothing: a request sent 400 ms after its last answer finds out, and the next waits.
  clock.advance(500);
  const probe = outcome(c.request('P', 'probe', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.includes('probe'), 3000, 'probe at the server');
  const held = outcome(c.request('P', 'held', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'held waits in the queue');
  assert.not.ok(s!.got.includes('held'));
  clock.advance(399);
  await new Promise((r) => setTimeout(r, 50));
  assert.is(waiting(), 1, 'still held back: nothing came back for the probe');
  s!.release('probe');
  await eventually(() => s!.got.includes('held'), 3000, 'held sent once the server answered');
  s!.release('held');
  s!.release('slow');
  await eventually(() => [slow, probe, held].every((r) => r.done !== undefined), 3000, 'all answered');
  assert.equal([slow, probe, held].map((r) => r.done!.answer), ['done slow', 'done probe', 'done held']);
});

/** One server (slow_after 400 ms): a and b sent it, 500 ms pass, a answered - in order, b still unanswered. */
async function answeredInOrder(ctx: Ctx, serverOptions: { concurrency?: number } = {}) {
  const { clock, servers: [s], client, waiting } = await policy(ctx, ['s'], { slowAfterMs: 400, maxServerInflight: 100 }, serverOptions);
  const c = await client('c');
  const [a, b] = [outcome(c.request('P', 'a', { timeoutMs: 60_000 })), outcome(c.request('P', 'b', { timeoutMs: 60_000 }))];
  await eventually(() => s!.got.length === 2, 3000, 'a and b at the server');
  clock.advance(500);
  s!.release('a');
  await eventually(() => a.done !== undefined, 3000, 'a answered, in order');
  return { clock, s: s!, c, waiting, b };
}

live("--slow-after: a server whose --concurrency is full and that answers in order, with a backlog, is held back once one request was sent it to find out: the rest wait in the proxy's queue, not the server's", async (ctx) => {
  // Answers that came, in order, do not make it a server that works past a slow request: an answer to the
  // oldest is no sign the next would be quick. Taken as one, a one-at-a-time server under a flood took every
  // request up to max_server_inflight into its own queue (the soak's RSS grew 159 to 208 MB). Its link PONG
  // states its limit (2 here: a and b run, c would wait in its queue).
  const { s, c, waiting, b } = await answeredInOrder(ctx, { concurrency: 2 });
  const probe = outcome(c.request('P', 'c', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.includes('c'), 3000, 'c sent to find out');
  const d = outcome(c.request('P', 'd', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'd waits in the proxy');
  await new Promise((r) => setTimeout(r, 50));
  assert.not.ok(s!.got.includes('d'));
  s!.release('b');
  await eventually(() => s!.got.includes('d'), 3000, 'd sent once b, the oldest, was answered and the oldest left is young');
  for (const p of ['c', 'd']) s!.release(p);
  await eventually(() => [b, probe, d].every((r) => r.done !== undefined), 3000, 'all answered');
});

live("--slow-after: a server that states no limit and answers in order, every request taking longer than slow_after, keeps taking requests", async (ctx) => {
  // A hostile-peer probe: a server whose handler awaits a 1 s call, 20 requests a second, no --concurrency: it
  // answered in order, never past its oldest, and was sent one request at a time past slow_after (417 ms by
  // default): 7.2 of 20 a second answered, 23 of 161 TIMEOUT; 17.6 a second with --slow-after 0.
  const { clock, s, c, waiting, b } = await answeredInOrder(ctx);
  const more = ['c', 'd', 'e'].map((p) => outcome(c.request('P', p, { timeoutMs: 60_000 })));
  await eventually(() => ['c', 'd', 'e'].every((p) => s!.got.includes(p)), 3000, 'c, d and e at the server: it answers, and states no limit');
  assert.is(waiting(), 0);
  // Silent past slow_after, it is held back as before: one more to find out, the next waits.
  clock.advance(500);
  const f = outcome(c.request('P', 'f', { timeoutMs: 60_000 }));
  await eventually(() => s!.got.includes('f'), 3000, 'f sent to find out');
  const g = outcome(c.request('P', 'g', { timeoutMs: 60_000 }));
  await eventually(() => waiting() === 1, 3000, 'g waits in the proxy');
  for (const p of ['b', 'c', 'd', 'e', 'f']) s!.release(p);
  await eventually(() => s!.got.includes('g'), 3000, 'g sent once the server answered');
  s!.release('g');
  await eventually(() => [b, ...more, f, g].every((r) => r.done !== undefined), 3000, 'all answered');
});

const why = suite('why no server had room');

why('a waiting request\'s answer names what its policy\'s servers were doing, and which: connecting (and where to, for its one), serving with no room, down, ejected, drained', () => {
  const member = (id: string, phase: 'open' | 'connecting' | 'down', set: Partial<Pick<Member, 'ejected' | 'drained'>> = {}): Member => {
    const m = new Member(id, 'P', '10.0.0.7', 9001, 'json', undefined, 1000);
    m.traffic = { phase } as LinkPort;
    return Object.assign(m, set);
  };
  const policy = (...members: Member[]): Policy => ({ members: new Set(members) }) as Policy;
  assert.is(roomlessWhy(policy()), 'it has no server now');
  assert.is(roomlessWhy(policy(member('OLD1', 'connecting'))), 'its one server, OLD1, was connecting to 10.0.0.7:9001');
  assert.is(roomlessWhy(policy(member('a', 'open'))), 'its one server, a, was serving with no room');
  assert.is(
    roomlessWhy(policy(member('a', 'open'), member('b', 'down'), member('c', 'open'), member('d', 'open', { ejected: true }), member('e', 'open', { drained: true }), member('f', 'connecting'))),
    'its 6 servers: 1 connecting (f), 2 serving with no room (a, c), 1 down (b), 1 ejected (d), 1 drained (e)',
  );
  const many = Array.from({ length: 5 }, (_, i) => member(`s${i}`, 'open'));
  assert.is(roomlessWhy(policy(...many)), 'its 5 servers: 5 serving with no room (s0, s1, s2 and 2 more)');
});

live.run();
server.run();
cli.run();
why.run();
