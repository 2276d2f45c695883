/**
 * What the library client's caller is told of a request that failed, as a caller used to nats.js, undici and
 * MQTT.js reads it: whether it may be sent again without running twice (`retryable`, one table:
 * transport/errors.ts RETRYABLE), checked against the real paths that give each code; an abort by its
 * signal named `AbortError`, as Node's own APIs and fetch name theirs; the connection's state as events
 * (`disconnect`, `reconnect`, `close`), as nats.js's and MQTT.js's clients emit theirs.
 */
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { on, once } from 'node:events';
import { createServer, type AddressInfo, type Server } from 'node:net';
import type { InspectionEvent } from 'xstate';
import { join } from 'node:path';
import { connect, HandlerError, ManualClock, RequestError, runClient, startProxy, startServer, type Client, type Handler, type ProxyHandle, type ProxyOptions, type ServerHandle } from '../actors/index.js';
import { CLIENT_CODES, ERROR_CODES, RETRYABLE, RevproxyError } from '../transport/errors.js';
import { FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';
import { clientIn, eventually, frame, librarySuite, rejection, sleep, tempDir, type LibraryCtx } from './helpers.js';
import { killAll, proxyProcess, revproxy, ROOT, start } from './procs.js';
import { freePort } from '../bench/procs.js';

const ctx = {} as LibraryCtx;
const retry = librarySuite('whether a failed request may be sent again (retryable)', ctx);

async function proxy(opts: Omit<ProxyOptions, 'port'> = {}): Promise<ProxyHandle> {
  const p = await startProxy({ port: 0, ...opts });
  ctx.proxies.push(p);
  return p;
}

async function server(id: string, ports: number[], handler: Handler, opts: { concurrency?: number } = {}): Promise<ServerHandle> {
  const s = await startServer({ id, policy: 'P', revproc: ports, handler, ...opts });
  ctx.servers.push(s);
  for (const p of ctx.proxies) if (ports.includes(p.port)) await eventually(() => p.pools().P?.serving.includes(id) ?? false, 3000, `${id} serving`);
  return s;
}

const client = (opts: Parameters<typeof connect>[0]): Promise<Client> => clientIn(ctx, connect(opts));
const reject = (p: Promise<unknown>): Promise<RequestError> => rejection<RequestError>(p);

/** A handler that records each payload it starts and answers only when `release()` is called (but `quick` at once). */
function held(): { handler: Handler; ran: string[]; arrived: Promise<void>; release: () => void } {
  const ran: string[] = [];
  let release!: () => void;
  let arrive!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const arrived = new Promise<void>((r) => (arrive = r));
  const handler: Handler = async (p) => {
    if (p === 'quick') return 'done';
    ran.push(String(p));
    arrive();
    await released;
    return 'done';
  };
  return { handler, ran, arrived, release };
}

retry('docs/PROTOCOL.md\'s "Sending a request again" shows RETRYABLE: a row for every code a request can end with, and no other', () => {
  const doc = readFileSync(join(ROOT, 'docs/PROTOCOL.md'), 'utf8');
  const from = doc.indexOf('\n### Sending a request again');
  assert.ok(from > 0, 'the section is there');
  const section = doc.slice(from, doc.indexOf('\n## ', from + 1));
  const rows = [...section.matchAll(/^\| `([A-Z_]+)` \| (yes|no) \|/gm)].map((m) => [m[1]!, m[2] === 'yes'] as const);
  assert.equal(Object.fromEntries(rows), RETRYABLE);
  assert.equal(Object.keys(RETRYABLE).sort(), [...ERROR_CODES, ...CLIENT_CODES].sort(), 'every wire code and client code');
});

retry('NO_SERVER from a proxy with no server for the policy is retryable; a request that reached a server and timed out is not (TIMEOUT, CLIENT_TIMEOUT)', async () => {
  const p = await proxy({ timeoutMs: 300, retries: 0 });
  const c = await client({ revproc: p.port });
  const none = await reject(c.request('nobody', 'x'));
  assert.equal([none.code, none.retryable], ['NO_SERVER', true]);
  const h = held();
  await server('slow', [p.port], h.handler);
  const late = await reject(c.request('P', 'proxy times out'));
  assert.equal([late.code, late.retryable, h.ran], ['TIMEOUT', false, ['proxy times out']], 'the handler ran it, the proxy gave up on it');
  const mine = await reject(c.request('P', 'client times out', { timeoutMs: 100 }));
  assert.equal([mine.code, mine.retryable], ['CLIENT_TIMEOUT', false]);
  await eventually(() => h.ran.includes('client times out'), 1000, 'the server had it');
  h.release();
});

retry('a request the client never sent is retryable, whatever ended it (its timeout, its abort, the client closed); one sent is not', async () => {
  const p = await proxy();
  const h = held();
  await server('slow', [p.port], h.handler);
  const c = await client({ revproc: p.port, window: 1 });
  const first = reject(c.request('P', 'in flight', { timeoutMs: 2000 }));
  await h.arrived;
  // Behind the window of 1: never sent.
  const waited = await reject(c.request('P', 'waits', { timeoutMs: 50 }));
  assert.equal([waited.code, waited.retryable], ['CLIENT_TIMEOUT', true]);
  const ac = new AbortController();
  const aborted = reject(c.request('P', 'waits too', { signal: ac.signal }));
  ac.abort();
  assert.equal([(await aborted).code, (await aborted).retryable], ['ABORTED', true]);
  assert.equal([(await reject(c.request('P', 'x', { signal: AbortSignal.abort() }))).retryable], [true], 'aborted before it was made');
  const closedOut = reject(c.request('P', 'waits at close'));
  const ac2 = new AbortController();
  const sent = reject(c.request('P', 'y', { signal: ac2.signal }));
  c.destroy();
  assert.equal([(await closedOut).code, (await closedOut).retryable], ['CLIENT_CLOSED', true]);
  assert.equal([(await first).code, (await first).retryable], ['CLIENT_CLOSED', false], 'the one in flight may have run');
  assert.is((await sent).retryable, true);
  // Aborted in flight: the server has it.
  const c2 = await client({ revproc: p.port });
  const ac3 = new AbortController();
  const inFlight = reject(c2.request('P', 'aborted in flight', { signal: ac3.signal }));
  await eventually(() => h.ran.includes('aborted in flight'), 1000, 'the server had it');
  ac3.abort();
  assert.equal([(await inFlight).code, (await inFlight).retryable], ['ABORTED', false]);
  h.release();
});

retry('a connection lost with the request at the server: CONNECTION_LOST is not retryable, nor is the NO_SERVER the next proxy then answers it with', async () => {
  const a = await proxy();
  const b = await proxy();
  const h = held();
  await server('slow', [a.port], h.handler);
  // hold: false: a lone proxy's loss fails what it had after the quick round, and a NO_SERVER is not held.
  const alone = await client({ revproc: a.port, hold: false, failoverDelayMs: 10 });
  const fleet = await client({ revproc: [a.port, b.port], hold: false, failoverDelayMs: 10 });
  // Answered once: a connection lost later is CONNECTION_LOST (CONNECT_FAILED for a client never answered).
  assert.is(await alone.request('P', 'quick'), 'done');
  const lost = reject(alone.request('P', 'lost'));
  const moved = reject(fleet.request('P', 'moved'));
  await eventually(() => h.ran.length === 2, 2000, 'the server had both');
  // kill(): the proxy's port closes at once, as under SIGKILL (its last word, that it read nothing unanswered, is not said).
  a.kill();
  assert.equal([(await lost).code, (await lost).retryable], ['CONNECTION_LOST', false]);
  const e = await moved;
  assert.equal([e.code, e.retryable], ['NO_SERVER', false], `sent again on b after a went, which has no server: ${e.message}`);
  // The same refusal for a request sent only to b is retryable.
  const fresh = await reject(fleet.request('P', 'fresh'));
  assert.equal([fresh.code, fresh.retryable], ['NO_SERVER', true]);
  h.release();
});

retry('OVERLOADED is not retryable: a request whose try timed out on one server (its handler ran) ends OVERLOADED when the retry finds the policy full', async () => {
  // Each server runs one request at a time, the proxy keeps none waiting (queueLimit 0) and sends none past a server's concurrency.
  const p = await proxy({ tryTimeoutMs: 200, timeoutMs: 1500, queueLimit: 0, maxServerQueue: 0 });
  const h1 = held();
  const h2 = held();
  await server('s1', [p.port], h1.handler, { concurrency: 1 });
  await server('s2', [p.port], h2.handler, { concurrency: 1 });
  const c = await client({ revproc: p.port });
  const both = [reject(c.request('P', 'one')), reject(c.request('P', 'two'))];
  const ends = await Promise.all(both);
  assert.equal([h1.ran.length, h2.ran.length], [1, 1], 'each server ran one');
  // The first retried finds the other server busy and no room to wait (the second may then go where the first ran: TIMEOUT).
  const overloaded = ends.find((e) => e.code === 'OVERLOADED');
  assert.ok(overloaded, ends.map((e) => `${e.code}: ${e.message}`).join('; '));
  assert.match(overloaded.message, /at its limit/);
  assert.equal(ends.map((e) => e.retryable), [false, false]);
  h1.release();
  h2.release();
});

retry('SHUTTING_DOWN is not retryable: the drain timeout answers a request still at its server with it', async () => {
  const p = await proxy({ drainTimeoutMs: 200 });
  const h = held();
  await server('slow', [p.port], h.handler);
  const c = await client({ revproc: p.port, hold: false });
  const r = reject(c.request('P', 'x'));
  await h.arrived;
  const stopped = p.stop();
  const e = await r;
  assert.equal([e.code, e.retryable, h.ran], ['SHUTTING_DOWN', false, ['x']], e.message);
  h.release();
  await stopped;
});

retry('a handler\'s own error is never retryable: it ran', async () => {
  const p = await proxy();
  await server('refuses', [p.port], async () => {
    throw new HandlerError('NOPE', 'no');
  });
  const c = await client({ revproc: p.port });
  const e = await c.request('P', 'x').then(() => undefined, (err: HandlerError) => err);
  assert.ok(e instanceof HandlerError);
  assert.is(e.retryable, false);
});

retry('runClient says it of each failed packet (Result.retryable, which revproxy client --json prints); the packets a client that found no proxy never sent are retryable', async () => {
  // A Result had the code alone: `revproxy client` and a runClient caller could not tell a retryable NO_SERVER from
  // a TIMEOUT whose handler ran without knowing the table.
  const p = await proxy({ timeoutMs: 300 });
  await server('s', [p.port], async (x) => {
    if (x === 'slow') await sleep(1000);
    if (x === 'bad') throw new HandlerError('BAD', 'no');
    return String(x);
  });
  const packets = [['P', 'slow'], ['Q', 'none'], ['P', 'bad'], ['P', 'fine']].map(([privPoliId, payload]) => ({ srcid: 'c', privPoliId: privPoliId!, payload: payload! }));
  const rs = await runClient({ revproc: p.port, packets, verify: false });
  assert.equal(rs.map((r) => [r.error, r.retryable]), [['TIMEOUT', false], ['NO_SERVER', true], ['HANDLER_ERROR', false], [undefined, undefined]], JSON.stringify(rs));
  const down = await freePort();
  const none = await runClient({ revproc: down, packets, failoverDelayMs: 10 });
  assert.equal(none.map((r) => [r.error, r.retryable]), packets.map(() => ['CONNECT_FAILED', true]), JSON.stringify(none));
  // One window: the first packet at its handler when the proxy goes, the others never sent. They took the first's
  // error, and with it its retryable: false, as if each had been at a handler.
  const q = await proxy();
  const h = held();
  await server('held', [q.port], h.handler);
  const lost = runClient({ revproc: q.port, packets: packets.slice(0, 3), window: 1, hold: false, failoverDelayMs: 10 });
  await h.arrived;
  q.kill();
  const rl = await lost;
  h.release();
  // CONNECT_FAILED: lost before the client had any answer (README, "Whether a failed request may be sent again").
  assert.equal(rl.map((r) => [r.error, r.retryable]), [['CONNECT_FAILED', false], ['CONNECT_FAILED', true], ['CONNECT_FAILED', true]], JSON.stringify(rl));
});

retry("revproxy client's summary counts the failures that may be sent again, in the failure lines' words, and --json gives failed and retryable", async () => {
  // The failure lines said `NO_SERVER (retryable)` of each, the summary only `1/3 answered, 2 failed`: how many to send again meant counting lines.
  const p = await proxy({ timeoutMs: 300 });
  await server('s', [p.port], async (x) => {
    if (x === 'slow') await sleep(1000);
    return String(x);
  });
  const dir = tempDir('pkt-');
  for (const [i, [privPoliId, payload]] of [['P', 'slow'], ['Q', 'none'], ['P', 'fine']].entries()) writeFileSync(join(dir, `${i}.json`), JSON.stringify({ type: '0', srcid: 'c', privPoliId, payload }));
  const text = revproxy(['client', '--revproc', String(p.port), '--pkt', dir, '--no-verify']);
  assert.is(await text.exited, 1);
  const out = text.out.join('\n');
  assert.match(out, /failed: TIMEOUT \(not retryable\)/);
  assert.match(out, /failed: NO_SERVER \(retryable\)/);
  assert.match(out, /1\/3 answered, 2 failed \(1 retryable\) \(answers not checked\)$/m);
  const json = revproxy(['client', '--revproc', String(p.port), '--pkt', dir, '--no-verify', '--json']);
  assert.is(await json.exited, 1);
  const report = JSON.parse(json.out.find((l) => l.startsWith('{'))!) as { answered: number; total: number; failed: number; retryable: number };
  assert.equal([report.answered, report.total, report.failed, report.retryable], [1, 3, 2, 1]);
  // None failed: no count of them.
  const fine = revproxy(['client', '--revproc', String(p.port), '--pkt', join(dir, '2.json'), '--pkt', join(dir, '2.json'), '--no-verify']);
  assert.is(await fine.exited, 0);
  assert.match(fine.out.join('\n'), /2\/2 answered \(answers not checked\)$/m);
});

retry("revproxy client counts a wrong answer once, as wrong: --json's answered, wrong and failed add up to total, and the summary line says it", async () => {
  // A wrong answer (not the payload's SHA1) counted in both answered and failed (--json: answered 2, failed 2 of 3), and the text said only how many were verified.
  const p = await proxy();
  await server('w', [p.port], async (x) => (x === 'bad' ? '0'.repeat(40) : createHash('sha1').update(String(x)).digest('hex')));
  const dir = tempDir('pkt-');
  for (const [i, [privPoliId, payload]] of [['P', 'fine'], ['P', 'bad'], ['Q', 'none']].entries()) writeFileSync(join(dir, `${i}.json`), JSON.stringify({ type: '0', srcid: 'c', privPoliId, payload }));
  const json = revproxy(['client', '--revproc', String(p.port), '--pkt', dir, '--json']);
  assert.is(await json.exited, 1);
  const report = JSON.parse(json.out.find((l) => l.startsWith('{'))!) as { answered: number; wrong: number; failed: number; total: number; verified: number; retryable: number };
  assert.equal({ answered: report.answered, wrong: report.wrong, failed: report.failed, total: report.total, verified: report.verified, retryable: report.retryable }, { answered: 1, wrong: 1, failed: 1, total: 3, verified: 1, retryable: 1 });
  const text = revproxy(['client', '--revproc', String(p.port), '--pkt', dir]);
  assert.is(await text.exited, 1);
  assert.match(text.out.join('\n'), /1\/3 answered, 1 answered wrong \(not the payload's SHA1\), 1 failed \(1 retryable\), 1 of 2 checked answers verified$/m);
  // Every answer checked, one wrong: no failure, and still the exit status 1.
  const both = revproxy(['client', '--revproc', String(p.port), '--pkt', join(dir, '0.json'), '--pkt', join(dir, '1.json')]);
  assert.is(await both.exited, 1);
  assert.match(both.out.join('\n'), /1\/2 answers verified, 1 answered wrong \(not the payload's SHA1\)$/m);
});

retry.run();

const abort = librarySuite('an aborted request is an AbortError, still a RequestError coded ABORTED', ctx);

abort("aborted before it is made, while it waits behind the window, in flight, or by AbortSignal.timeout(): err.name === 'AbortError', the signal's reason its cause", async () => {
  // It was named 'RequestError': a caller written for fetch, undici or Node's APIs (err.name === 'AbortError') took the
  // client's own abort for a failure of the request.
  const p = await proxy();
  const h = held();
  await server('slow', [p.port], h.handler);
  const c = await client({ revproc: p.port, window: 1 });
  const first = c.request('P', 'in flight');
  first.catch(() => undefined); // a failure above must not leave it rejected unhandled when the client is destroyed
  await h.arrived;
  const reason = new Error('user gave up');
  const before = await reject(c.request('P', 'a', { signal: AbortSignal.abort(reason) }));
  const ac = new AbortController();
  const waiting = reject(c.request('P', 'b', { signal: ac.signal }));
  const ac2 = new AbortController();
  const c2 = await client({ revproc: p.port });
  const inFlight = reject(c2.request('P', 'c', { signal: ac2.signal }));
  await eventually(() => h.ran.includes('c'), 1000, 'the server had it');
  ac.abort(reason);
  ac2.abort(reason);
  const timedOut = await reject(c2.request('P', 'd', { signal: AbortSignal.timeout(30) }));
  for (const [what, e] of [['before', before], ['waiting', await waiting], ['in flight', await inFlight], ['timeout', timedOut]] as const) {
    assert.is(e.name, 'AbortError', what);
    assert.ok(e instanceof RequestError && e instanceof RevproxyError && e instanceof Error, what);
    assert.is(e.code, 'ABORTED', what);
    assert.ok(String(e).startsWith('AbortError: the request was aborted'), String(e));
  }
  assert.equal([before.cause, (await waiting).cause, (await inFlight).cause], [reason, reason, reason]);
  assert.is((timedOut.cause as Error).name, 'TimeoutError', "AbortSignal.timeout()'s reason, as Node's APIs give it");
  // Any other outcome keeps its name.
  const other = await reject(c2.request('nobody', 'x'));
  assert.equal([other.name, other.code], ['RequestError', 'NO_SERVER']);
  h.release();
  await first;
});

abort.run();

const state = librarySuite("the connection's state: disconnect, reconnect, close", ctx, killAll);

/** A proxy process (`slow`: its flags) with one server of policy P, answering upper case, and a client of it whose events `seen` records. */
async function killableProxy(clientOpts: Parameters<typeof connect>[0] = {}) {
  const slow = ['--timeout', '30000'];
  const first = await proxyProcess(slow);
  const { port } = first;
  const s = await startServer({ id: 's', policy: 'P', revproc: port, handler: async (p) => String(p).toUpperCase() });
  ctx.servers.push(s);
  const c = await client({ revproc: port, timeoutMs: 20000, failoverDelayMs: 10, ...clientOpts });
  return { slow, first, port, at: `127.0.0.1:${port}`, c, seen: record(c) };
}

/** `client`'s events as lines, in the order they came. */
function record(c: Client): string[] {
  const seen: string[] = [];
  c.on('disconnect', ({ proxy, reason }) => seen.push(`disconnect ${proxy}: ${reason}`));
  c.on('reconnect', ({ proxy, previous, downMs }) => {
    assert.ok(downMs >= 0, `downMs ${downMs}`);
    seen.push(`reconnect ${proxy} from ${previous}`);
  });
  c.on('close', () => seen.push('close'));
  return seen;
}

state('a proxy killed (SIGKILL) and started again: the client says disconnect, then reconnect once it is back, before the request it held is answered, then close', async () => {
  // There was nothing to listen to: an application learnt of an outage from its requests' errors or the log alone.
  const { slow, first, port, at, c, seen } = await killableProxy();
  assert.is(await c.request('P', 'warm'), 'WARM');
  first.proc.kill('SIGKILL');
  await first.proc.exited;
  await eventually(() => seen.length > 0, 5000, 'disconnect');
  assert.equal(seen, [`disconnect ${at}: the reverse proxy closed the connection`]);
  // Held while no proxy listens, sent once one answers.
  const held = c.request('P', 'held').then((a) => seen.push(`answer ${String(a)}`), (e: RequestError) => seen.push(`failed ${e.code}`));
  await eventually(() => c.actor.getSnapshot().matches('backoff'), 5000, 'the client holding');
  await proxyProcess(slow, { port });
  await held;
  c.destroy();
  assert.equal(seen, [`disconnect ${at}: the reverse proxy closed the connection`, `reconnect ${at} from ${at}`, 'answer HELD', 'close']);
  c.destroy();
  assert.is(seen.filter((x) => x === 'close').length, 1, 'close once');
});

state('a failover: the proxy in use killed, the client says disconnect from it and reconnect to the next, and an async iterator (events.on) reads them too', async () => {
  const a = await proxy();
  const b = await proxy();
  const s = await startServer({ id: 's', policy: 'P', revproc: [a.port, b.port], handler: async (p) => String(p) });
  ctx.servers.push(s);
  for (const p of [a, b]) await eventually(() => p.pools().P?.serving.includes('s') ?? false, 3000, 's serving');
  const c = await client({ revproc: [a.port, b.port], failoverDelayMs: 10 });
  const seen = record(c);
  const ac = new AbortController();
  const iterated: string[] = [];
  const reading = (async () => {
    for await (const [e] of on(c, 'reconnect', { signal: ac.signal })) iterated.push((e as { proxy: string }).proxy);
  })().catch((e: Error) => assert.is(e.name, 'AbortError'));
  assert.is(await c.request('P', 'x'), 'x');
  a.kill();
  // The client fails over to b by itself (the quick round of dials), idle as it is; a request goes there.
  assert.is(await c.request('P', 'y'), 'y');
  // kill() closes an idle connection with the stopped proxy's last word.
  assert.equal(seen, [`disconnect 127.0.0.1:${a.port}: the reverse proxy at 127.0.0.1:${a.port} ended the connection saying SHUTTING_DOWN: the proxy has stopped and closes this connection: a request sent on it and not answered was not read; send it to another proxy`, `reconnect 127.0.0.1:${b.port} from 127.0.0.1:${a.port}`]);
  assert.equal(iterated, [`127.0.0.1:${b.port}`]);
  ac.abort();
  await reading;
});

state('an idle client whose proxy is killed (SIGKILL) and started again says reconnect once it is back, without a request, and its next request goes out on that connection', async () => {
  // An idle client went offline after the quick round and dialled again only at its next request: its reconnect came
  // then (8.8 s after the disconnect where the proxy had been back for 6 s), and that request paid the dial.
  const { slow, first, port, at, c, seen } = await killableProxy({ reconnectMaxDelayMs: 200 });
  assert.is(await c.request('P', 'warm'), 'WARM');
  first.proc.kill('SIGKILL');
  await first.proc.exited;
  // The quick round over (two dials with one proxy), no proxy found: the idle client goes on dialling in the background.
  await eventually(() => c.actor.getSnapshot().context.attempts >= 2, 5000, 'the quick round used up');
  await proxyProcess(slow, { port });
  await eventually(() => seen.length > 1, 5000, 'reconnect, no request made');
  assert.equal(seen, [`disconnect ${at}: the reverse proxy closed the connection`, `reconnect ${at} from ${at}`]);
  const conn = c.actor.getSnapshot().context.conn;
  assert.ok(conn && c.actor.getSnapshot().matches({ session: 'open' }), 'connected');
  // The server registers again within its own backoff: until then the proxy's NO_SERVER is held (hold.ts).
  assert.is(await c.request('P', 'after'), 'AFTER');
  assert.ok(c.actor.getSnapshot().context.conn === conn, 'the request went out on the connection made in the background');
  assert.is(seen.length, 2, 'no other event');
});

state('a client closed while it dials again in the background (destroy(), close()) dials nothing more', async () => {
  const first = await proxyProcess();
  const { port } = first;
  const opts = { revproc: port, failoverDelayMs: 10, reconnectMaxDelayMs: 100 };
  const a = await client(opts);
  const b = await client(opts);
  first.proc.kill('SIGKILL');
  await first.proc.exited;
  for (const c of [a, b]) await eventually(() => c.actor.getSnapshot().matches('reconnecting'), 5000, 'dialling again in the background');
  // Between two dials, or in one: either way nothing more may be dialled once closed.
  await sleep(50);
  const seen = [record(a), record(b)];
  a.destroy();
  await b.close();
  assert.equal(seen, [['close'], ['close']]);
  // The port listens again: a dial from either would be taken here.
  let dials = 0;
  const listener = createServer((sock) => {
    dials++;
    sock.destroy();
  }).listen(port, '127.0.0.1');
  await once(listener, 'listening');
  try {
    await sleep(1000); // ten of the longest pauses between dials
  } finally {
    listener.close();
  }
  assert.is(dials, 0, 'dials after close');
  for (const c of [a, b]) assert.is.not(c.actor.getSnapshot().status, 'active');
});

state('a script that connects, sends and forgets close() runs while connected, and ends by itself once its proxy is gone: the background dials keep no process alive', async () => {
  // Decided: the client's open connection keeps Node running, as any socket does (as before); its pauses between
  // background dials do not (the system clock's timers are unref'd), so such a script ends once its proxy is gone,
  // as it did when an idle client went offline after the quick round.
  const first = await proxyProcess();
  const script = start(process.execPath, ['--import', 'tsx', join(ROOT, 'spec/fixtures/forgetful-client.ts'), String(first.port)]);
  try {
    await script.waitFor(/^asked$/, 15000);
    await sleep(300);
    assert.is(script.child.exitCode, null, 'connected, it runs on');
    first.proc.kill('SIGKILL');
    await first.proc.exited;
    const code = await Promise.race([script.exited, sleep(10000).then(() => 'still running 10 s after its proxy was killed')]);
    assert.is(code, 0, script.out.join('\n'));
  } finally {
    script.kill('SIGKILL');
  }
});

state('idle clients of a proxy killed and started again: their background dials keep to the backoff and its cap, and jitter spreads them (manual clock)', async () => {
  // On the client's clock, so the spread is the clients' own, not the event loop's: with a fixed pause (MQTT.js's
  // reconnectPeriod) every client would dial the restarted proxy in the same step.
  const N = 40;
  const STEP = 5;
  const clock = new ManualClock();
  const first = await proxyProcess();
  const { port } = first;
  const dials: number[][] = [];
  const back: number[] = [];
  const clients = await Promise.all(Array.from({ length: N }, async (_, i) => {
    dials[i] = [];
    const c = await client({
      revproc: port, clock, failoverDelayMs: 100, reconnectMaxDelayMs: 1000,
      inspect: (e) => {
        if (e.type === '@xstate.event' && e.event.type === 'REDIAL') dials[i]!.push(clock.now());
      },
    });
    c.on('reconnect', () => (back[i] = clock.now()));
    return c;
  }));
  first.proc.kill('SIGKILL');
  await first.proc.exited;
  await eventually(() => clients.every((c) => c.actor.getSnapshot().matches('lost')), 5000, 'every client lost its proxy');
  const lostAt = clock.now();
  /** Move the clients' clock on, a step at a time, letting each dial's real connect end between steps. */
  const drive = async (ms: number, done = (): boolean => false): Promise<void> => {
    for (const end = clock.now() + ms; clock.now() < end && !done(); ) {
      clock.advance(STEP);
      await sleep(2);
    }
  };
  await drive(2600); // past the quick round, and at the cap (200, 400, 800, then 1000 ms)
  const restarted = clock.now();
  await proxyProcess([], { port });
  await drive(3000, () => back.filter((t) => t !== undefined).length === N);
  assert.is(back.filter((t) => t !== undefined).length, N, 'every client said reconnect, no request made');
  for (const d of dials) {
    assert.ok(d.length >= 4, `dials ${d.map((t) => t - lostAt).join(', ')}`);
    const gaps = d.slice(1).map((t, k) => t - d[k]!);
    assert.ok(gaps.every((g) => g <= 1000 + STEP), `a pause past reconnectMaxDelayMs: ${gaps.join(', ')}`);
    // The quick round's dial after the failover delay (100 ms), then pauses doubling from twice it, each (the failover
    // delay too) up to a fifth early: 80-100, then 160-200, 320-400, 640-800, then 800-1000 (each dial's own connect may
    // take a step of the clock).
    const firstAfter = d[0]! - lostAt;
    assert.ok(firstAfter >= 80 + 160 - STEP && firstAfter <= 100 + 200 + 2 * STEP, `the first background dial ${firstAfter} ms after the loss`);
    assert.ok(gaps[0]! >= 320 - STEP && gaps[0]! <= 400 + STEP && gaps.at(-1)! >= 800 - STEP, `the backoff: ${gaps.join(', ')}`);
  }
  // The dials that found the proxy back, one a client: by step of the clock.
  const found = dials.map((d) => d.find((t) => t >= restarted)!);
  const perStep = new Map<number, number>();
  for (const t of found) perStep.set(Math.floor(t / STEP), (perStep.get(Math.floor(t / STEP)) ?? 0) + 1);
  const most = Math.max(...perStep.values());
  assert.ok(most <= N / 4, `${most} of ${N} clients dialled the restarted proxy in one ${STEP} ms step`);
  for (const c of clients) c.destroy();
});

state('an idle connection the proxy closes (its idle_timeout) is not chased: after the quick round\'s dial the client goes offline and dials again only for a request', async () => {
  // The background dials are for a proxy that went away, not for one that closed an idle connection: chased, each idle
  // client would hold a connection for ever, dialled again at every idle_timeout, which the proxy sets to let go of them.
  const p = await proxy({ idleTimeoutMs: 200 });
  const at = `127.0.0.1:${p.port}`;
  const c = await client({ revproc: p.port, failoverDelayMs: 10, reconnectMaxDelayMs: 100 });
  const seen = record(c);
  await eventually(() => c.actor.getSnapshot().matches('offline'), 5000, 'offline');
  await sleep(1000); // five idle timeouts
  assert.equal(seen, [
    `disconnect ${at}: the reverse proxy closed the connection`, `reconnect ${at} from ${at}`, `disconnect ${at}: the reverse proxy closed the connection`,
  ]);
  assert.ok(c.actor.getSnapshot().matches('offline'), 'still offline');
  assert.instance(await c.request('P', 'x', { timeoutMs: 500 }).catch((e: unknown) => e), RequestError);
  assert.is(seen[3], `reconnect ${at} from ${at}`, 'the request dialled');
});

state('clients of a proxy that goes fail over spread over the failover delay\'s last fifth, not all in one millisecond (manual clock)', async () => {
  // The failover delay (failoverDelayMs, 100 ms) had no jitter where the backoff after it has: every client of a proxy
  // killed dialled the next proxy in the same millisecond. On the clients' own clock, so the spread is theirs, not the
  // event loop's.
  const N = 200;
  const clock = new ManualClock();
  const a = await proxy();
  const b = await proxy();
  const dialled: number[] = [];
  const clients = await Promise.all(Array.from({ length: N }, () => client({
    revproc: [a.port, b.port], clock, failoverDelayMs: 100,
    inspect: (e) => {
      if (e.type === '@xstate.event' && e.event.type.startsWith('xstate.after.failoverDelay')) dialled.push(clock.now());
    },
  })));
  a.kill();
  await eventually(() => clients.every((c) => c.actor.getSnapshot().matches('lost')), 5000, 'every client lost its proxy');
  const lostAt = clock.now();
  for (let t = 0; t < 110 && dialled.length < N; t++) {
    clock.advance(1);
    await sleep(1);
  }
  assert.is(dialled.length, N, 'every client dialled the next proxy');
  const after = dialled.map((t) => t - lostAt);
  assert.ok(after.every((ms) => ms >= 80 && ms <= 100), `each up to a fifth early, never late: ${Math.min(...after)}-${Math.max(...after)} ms`);
  const perMs = new Map<number, number>();
  for (const ms of after) perMs.set(ms, (perMs.get(ms) ?? 0) + 1);
  const most = Math.max(...perMs.values());
  assert.ok(most <= N / 4, `${most} of ${N} clients dialled the next proxy in one millisecond (over ${Math.max(...after) - Math.min(...after)} ms)`);
  await eventually(() => clients.every((c) => c.actor.getSnapshot().matches({ session: 'open' })), 5000, 'every client on the next proxy');
});

state('with a list of proxies, each pause of the backoff is followed by a dial of every proxy in turn, held requests or none: the first one dead does not double the time to reach the second (manual clock)', async () => {
  // One dial a pause, the proxies in turn: with A dead, B was dialled every other pause, and a client reached B back
  // up to two pauses after it listened (20 idle clients: a median 0.5-1.6 s, where a pause is at most 1 s). nats.js
  // dials each server of its pool after a wait; MQTT.js one a reconnectPeriod.
  const STEP = 5;
  const clock = new ManualClock();
  const a = await proxy();
  const b = await proxy();
  const ports = [a.port, b.port];
  type Seen = { dials: number[][]; back?: number };
  const watch = (seen: Seen, pauseEnd: string) => (e: InspectionEvent): void => {
    if (e.type !== '@xstate.event') return;
    if (e.event.type === pauseEnd) seen.dials.push([]);
    const m = e.event.type === 'CONNECT_FAILED' ? /listening on 127\.0\.0\.1:(\d+)/.exec((e.event as unknown as { error: string }).error) : null;
    if (m && seen.dials.length > 0) seen.dials.at(-1)!.push(Number(m[1]));
  };
  const idle: Seen = { dials: [] };
  const holding: Seen = { dials: [] };
  const opts = { revproc: ports, clock, failoverDelayMs: 100, reconnectMaxDelayMs: 1000, timeoutMs: 60000 };
  const ci = await client({ ...opts, inspect: watch(idle, 'REDIAL') });
  const ch = await client({ ...opts, inspect: watch(holding, 'xstate.after.reconnectDelay.client.backoff') });
  for (const [c, seen] of [[ci, idle], [ch, holding]] as const) c.on('reconnect', () => (seen.back = clock.now()));
  a.kill();
  b.kill();
  void ch.request('P', 'held').catch(() => {}); // held until the test ends
  const drive = async (ms: number, done = (): boolean => false): Promise<void> => {
    for (const end = clock.now() + ms; clock.now() < end && !done(); ) {
      clock.advance(STEP);
      await sleep(2);
    }
  };
  await drive(4000); // the quick round, then pauses of 200, 400, 800, 1000 and 1000 ms
  for (const [name, seen] of [['idle', idle], ['holding', holding]] as const) {
    const rounds = seen.dials.slice(0, -1); // the last pause may still be under way
    assert.ok(rounds.length >= 3, `${name}: pauses ${JSON.stringify(seen.dials)}`);
    for (const r of rounds) assert.equal([...r].sort(), [...ports].sort(), `${name}: each pause dials every proxy once: ${JSON.stringify(seen.dials)}`);
  }
  // B back: each client reaches it within one pause (at most reconnectMaxDelayMs), not two.
  const restarted = clock.now();
  const b2 = await startProxy({ port: b.port });
  ctx.proxies.push(b2);
  await drive(2500, () => idle.back !== undefined && holding.back !== undefined);
  for (const [name, seen] of [['idle', idle], ['holding', holding]] as const) {
    assert.ok(seen.back !== undefined && seen.back - restarted <= 1000 + 4 * STEP, `${name}: reconnected ${seen.back === undefined ? 'never' : `${seen.back - restarted} ms`} after B listened`);
  }
});

/**
 * A stand-in proxy listening on `port` (0: a free one) that answers a PING with a PONG of its seq, as the real proxy
 * does, and writes `onData(message)` for each request: a draining proxy's refusal, an ACK.
 */
async function stubProxy(port: number, onData: (m: { seq: number; payload: unknown }) => Buffer): Promise<Server & { port: number }> {
  const stub = createServer((sock) => {
    const decoder = new FrameDecoder();
    sock.on('data', (chunk: Buffer) => {
      for (const m of decoder.push(chunk).messages) {
        if (m.type === MsgType.PING) sock.write(frame({ type: MsgType.PONG, seq: m.seq }));
        if (m.type === MsgType.DATA) sock.write(onData(m as { seq: number; payload: unknown }));
      }
    });
    sock.on('error', () => {});
  }).listen(port, '127.0.0.1');
  await once(stub, 'listening');
  return Object.assign(stub, { port: (stub.address() as AddressInfo).port });
}

/** The real proxy's words refusing a request while it drains (client-lib.spec.ts realDrain reads them from one). */
const DRAINING = 'the proxy is shutting down and takes no new requests; try another proxy';

state('an idle client that reconnects in the background forgets a drained proxy\'s SHUTTING_DOWN once the requests it refused have ended, as one that goes offline does', async () => {
  // forgetShutting: the refusal is remembered while a request it refused is held (its timeout then ends SHUTTING_DOWN
  // in the proxy's words), and forgotten once none is. Offline forgot it; reconnecting (nothing held, dialling in the
  // background) kept it: connected again to the proxy started anew, the client still held "the reverse proxy at ...
  // refused the request SHUTTING_DOWN" of the run before as its state (what the inspector shows of it), until an answer.
  const draining = await stubProxy(0, (m) => {
    draining.close(); // it stops listening as it drains: nothing answers a dial any more
    return frame({ type: MsgType.ERROR, seq: m.seq, code: 'SHUTTING_DOWN', message: DRAINING });
  });
  const { port } = draining;
  const at = `127.0.0.1:${port}`;
  let restarted: Server | undefined;
  try {
    const c = await client({ revproc: port, failoverDelayMs: 10, reconnectMaxDelayMs: 50 });
    const seen = record(c);
    const e = await reject(c.request('P', 'refused', { timeoutMs: 400 }));
    assert.is(e.code, 'SHUTTING_DOWN', e.message);
    assert.ok(e.message.startsWith(`the reverse proxy at ${at} refused the request SHUTTING_DOWN: ${DRAINING}`), e.message);
    await eventually(() => c.actor.getSnapshot().matches('reconnecting'), 5000, 'dialling again in the background, nothing held');
    restarted = await stubProxy(port, (m) => frame({ type: MsgType.ACK, seq: m.seq, srcid: 'back', destid: 'client', payload: String(m.payload) }));
    await eventually(() => seen.some((l) => l.startsWith('reconnect ')), 5000, 'reconnect in the background');
    assert.is(c.actor.getSnapshot().context.shutting, undefined, 'the refusal of the run before is forgotten');
    assert.is(await c.request('P', 'after'), 'after');
  } finally {
    draining.close();
    restarted?.close();
  }
});

state.run();
