/**
 * A server's own listen port, reached by a hostile peer instead of the proxy:
 * what it may hold there is bounded as on the proxy's client port - one
 * buffer budget for partial frames, unread answers and requests not answered
 * yet, and the connections it keeps.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { loadTls } from '../transport/tls.js';
import { makePki } from './certs.js';
import { Logger, ManualClock, memorySink, startServer, type Handler, type LogRecord, type ServerHandle, type StartServerOptions } from '../actors/index.js';
import { MsgType, type AckMsg, type ErrorMsg } from '../transport/messages.js';
import { collector, eventually, frame, LOCAL, rawConnect } from './helpers.js';

interface Ctx {
  server: ServerHandle;
  logs: LogRecord[];
  socks: Socket[];
  /** Requests the handler holds, unanswered until `releaseAll`. */
  held: Array<() => void>;
}
const ctx = {} as Ctx;
const port = suite<Ctx>('a hostile peer on a server\'s listen port', ctx);

port.before.each(() => {
  ctx.logs = [];
  ctx.socks = [];
  ctx.held = [];
});
port.after.each(async () => {
  for (const s of ctx.socks) s.destroy();
  for (const r of ctx.held.splice(0)) r();
  await ctx.server?.stop();
});

/** A server registered nowhere (requests come straight from the spec) whose handler holds 'slow' requests until released. */
async function lonely(opts: Partial<StartServerOptions> = {}): Promise<ServerHandle> {
  const handler: Handler = (p) => (p === 'quick' ? 'fine' : new Promise<string>((r) => ctx.held.push(() => r('late'))));
  ctx.server = await startServer({
    id: 'h', policy: 'P', revproc: 1, waitForRegistration: false, reconnectInitialMs: 60_000, handler,
    logger: new Logger('server', memorySink(ctx.logs), 'info'), ...opts,
  });
  return ctx.server;
}

/** A TLS connection to `port` from `localAddress`, once its handshake is done; undefined if it was not. */
function tlsFrom(port: number, localAddress: string): Promise<TLSSocket | undefined> {
  return new Promise((done) => {
    const s = tlsConnect({ socket: connect({ host: LOCAL, port, localAddress }), rejectUnauthorized: false }, () => done(s));
    s.on('error', () => done(undefined));
    s.on('close', () => done(undefined));
  });
}

/** A TLS connection from `localAddress` completes its handshake and gets a request answered. */
async function servedFrom(port: number, localAddress: string): Promise<void> {
  const other = await tlsFrom(port, localAddress);
  assert.ok(other, 'another address completes its handshake');
  const got = collector(other!);
  other!.write(frame({ type: 0, seq: 1, srcid: 'good', privPoliId: 'P', payload: 'quick' }));
  await got.until(() => got.got.length === 1);
  assert.is((got.got[0] as AckMsg).payload, 'fine');
  other!.destroy();
}

async function peer(p: number): Promise<Socket> {
  const s = await rawConnect(p);
  ctx.socks.push(s);
  return s;
}

/** A request on its own connection is still answered. */
async function stillServes(p: number): Promise<void> {
  const s = await peer(p);
  const got = collector(s);
  s.write(frame({ type: 0, seq: 1, srcid: 'good', privPoliId: 'P', payload: 'quick' }));
  await got.until(() => got.got.length === 1);
  assert.equal([(got.got[0] as AckMsg).type, (got.got[0] as AckMsg).payload], [MsgType.ACK, 'fine']);
}

port('connections each holding a nearly full frame stay within the buffer budget: the ones holding the most are cut with OVERLOADED, and others are served', async () => {
  const budget = 4 * 1024 * 1024;
  const server = await lonely({ maxBufferedBytes: budget });
  const head = Buffer.alloc(4);
  head.writeUInt32BE(1_000_000);
  const cut: ErrorMsg[] = [];
  const closed: boolean[] = [];
  // 20 frames of 1 MB begun and never finished: 20 MB against a 4 MiB budget.
  for (let i = 0; i < 20; i++) {
    const s = await peer(server.port);
    const got = collector(s);
    s.on('close', () => {
      closed.push(true);
      cut.push(...(got.got as ErrorMsg[]));
    });
    s.write(Buffer.concat([head, Buffer.alloc(900_000)]));
  }
  await eventually(() => closed.length >= 16, 5000, 'the connections past the budget cut');
  assert.ok(cut.length > 0 && cut.every((m) => m.code === 'OVERLOADED' && /buffer budget of 4194304 bytes is full/.test(m.message)), JSON.stringify(cut.slice(0, 2)));
  assert.ok(ctx.logs.some((r) => r.event === 'budget_shed'), 'the cuts are logged');
  await stillServes(server.port);
});

port('requests held by a slow handler stay within the buffer budget: a greedy connection is read no more, and past half the budget requests are refused OVERLOADED', async () => {
  const budget = 4 * 1024 * 1024;
  const server = await lonely({ maxBufferedBytes: budget });
  const size = 64 * 1024;
  const big = (seq: number) => frame({ type: 0, seq, srcid: 'greedy', privPoliId: 'P', payload: 'x'.repeat(size) });
  // One peer pipelines 200 requests of 64 KiB (12.5 MiB) to a handler that answers none of them yet.
  const greedy = await peer(server.port);
  greedy.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => big(i))));
  await eventually(() => ctx.held.length * size >= budget / 32, 5000, 'its share of the budget taken');
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(ctx.held.length * size <= budget / 32 + 4 * size, `one connection has ${ctx.held.length} requests of ${size} bytes running (its share of the budget is ${budget / 32} bytes)`);
  // A crowd of them: past half the budget, requests are refused at once.
  const refused: ErrorMsg[] = [];
  for (let c = 0; c < 40; c++) {
    const s = await peer(server.port);
    collectorInto(s, refused);
    s.write(Buffer.concat(Array.from({ length: 4 }, (_, i) => big(i))));
  }
  await eventually(() => refused.length > 0, 5000, 'requests past half the budget refused');
  assert.ok(refused.every((m) => m.code === 'OVERLOADED' && /half its buffer budget/.test(m.message)), JSON.stringify(refused[0]));
  assert.ok(ctx.held.length * size <= budget / 2, `${ctx.held.length} requests of ${size} bytes running, over half the ${budget}-byte budget`);
  await stillServes(server.port);
  // Answers bring the greedy peer under its share again: it is read again, and its every request is answered.
  const answers = collector(greedy);
  for (;;) {
    const release = ctx.held.splice(0);
    if (release.length === 0 && answers.got.length >= 200) break;
    for (const r of release) r();
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.is(answers.got.filter((m) => m.type === MsgType.ACK).length + answers.got.filter((m) => (m as ErrorMsg).code === 'OVERLOADED').length, 200);
});

port('big answers to many small requests, from a peer that reads none of them: past its share of the buffer budget its requests wait unrun, it is not cut, others are served, and once it reads it gets every answer', async () => {
  // A handler answered a read's every request in the same turn, for a peer that read nothing, until the budget
  // cut it: with the default budget 256 MiB built in one turn (the event loop stalled for seconds, the proxy's
  // PINGs unanswered) at each such connection.
  const budget = 4 * 1024 * 1024;
  const answer = 'x'.repeat(256 * 1024);
  let made = 0;
  const server = await lonely({ maxBufferedBytes: budget, handler: (p) => (p === 'quick' ? 'fine' : (made++, answer)) });
  const s = await peer(server.port);
  s.pause();
  // 400 requests of a few bytes in one write, each answered with 256 KiB: 100 MiB of answers.
  s.write(Buffer.concat(Array.from({ length: 400 }, (_, i) => frame({ type: 0, seq: i + 1, srcid: 'greedy', privPoliId: 'P', payload: `r${i}` }))));
  await eventually(() => made > 0, 5000, 'its requests taken');
  await stillServes(server.port);
  // What it was answered is what the socket's buffers took, and its share: not its every request.
  assert.ok(made < 200, `the handler answered ${made} of its 400 requests`);
  assert.not.ok(ctx.logs.some((r) => r.event === 'budget_shed'), 'not cut');
  assert.match(ctx.logs.find((r) => r.event === 'answers_unread')?.msg ?? '', /has not read \d+ bytes of answers, more than its share of the buffer budget \(131072 bytes/);
  const answers = collector(s);
  s.resume();
  await answers.until(() => answers.got.length === 400, 10_000);
  assert.equal(answers.got.map((m) => [m.type, (m as AckMsg).seq]), Array.from({ length: 400 }, (_, i) => [MsgType.ACK, i + 1]));
});

port('an async handler\'s big answers to a pipelined peer (a proxy\'s link) stay within its share of the buffer budget: it runs no more than their room allows, the connection is not cut, and it gets every answer', async () => {
  // Without --concurrency every request of a read started before the first was answered: 1,024 answers of 500 kB
  // settled in one turn, and the default 256 MiB budget cut the proxy's link with OVERLOADED (every request on it failed).
  const budget = 4 * 1024 * 1024;
  const answer = 'x'.repeat(256 * 1024);
  let running = 0;
  let most = 0;
  const handler: Handler = async (p) => {
    if (p === 'quick') return 'fine';
    most = Math.max(most, ++running);
    await new Promise((r) => setImmediate(r));
    running--;
    return answer;
  };
  const server = await lonely({ maxBufferedBytes: budget, handler });
  const s = await peer(server.port);
  const answers = collector(s);
  // 400 requests of a few bytes in one write, each answered with 256 KiB: 100 MiB of answers, a 4 MiB budget.
  s.write(Buffer.concat(Array.from({ length: 400 }, (_, i) => frame({ type: 0, seq: i + 1, srcid: 'proxy', privPoliId: 'P', payload: `r${i}` }))));
  await answers.until(() => answers.got.length === 400 || answers.closed, 20_000);
  assert.not.ok(ctx.logs.some((r) => r.event === 'budget_shed'), 'not cut');
  assert.equal(answers.got.map((m) => [m.type, (m as AckMsg).seq]), Array.from({ length: 400 }, (_, i) => [MsgType.ACK, i + 1]));
  // Its share, 128 KiB, is half an answer: one runs at a time (two before the first answer, each taken to owe half the share).
  assert.ok(most <= 2, `${most} handlers ran at once for one connection`);
  await stillServes(server.port);
});

port('one big answer among small ones does not hold back a pipelined peer\'s other requests: the room an answer is taken to need is the answers\' mean, not the last big one', async () => {
  // A 32 MiB budget: a connection's share is 1 MiB. It was the last answer's size whenever bigger, a 16th off at each
  // smaller one: after one of 200 KiB, 5 of the held requests ran at once (1 MiB / 200 KiB) until answers came.
  const big = 'b'.repeat(200 * 1024);
  let running = 0;
  let most = 0;
  const handler: Handler = (p) => {
    if (p === 'small') return 'ok';
    if (p === 'big') return big;
    most = Math.max(most, ++running);
    return new Promise<string>((r) => ctx.held.push(() => (running--, r('late'))));
  };
  const server = await lonely({ maxBufferedBytes: 32 * 1024 * 1024, handler });
  const s = await peer(server.port);
  const answers = collector(s);
  const send = (from: number, n: number, payload: string): boolean => s.write(Buffer.concat(Array.from({ length: n }, (_, i) => frame({ type: 0, seq: from + i, srcid: 'proxy', privPoliId: 'P', payload }))));
  send(1, 20, 'small');
  await answers.until(() => answers.got.length === 20);
  send(21, 1, 'big');
  await answers.until(() => answers.got.length === 21);
  assert.is((answers.got[20] as AckMsg).payload, big);
  // 40 requests its handler holds: all run at once (the mean after the big answer is about 25 KiB: 40 fit in 1 MiB).
  send(22, 40, 'held');
  await eventually(() => running === 40, 3000, 'the 40 held requests running at once').catch(() => assert.unreachable(`${running} of the 40 held requests ran at once`));
  for (const r of ctx.held.splice(0)) r();
  await answers.until(() => answers.got.length === 61);
  assert.is(most, 40);
  assert.equal(answers.got.map((m) => [m.type, (m as AckMsg).seq]), Array.from({ length: 61 }, (_, i) => [MsgType.ACK, i + 1]));
});

port('with --concurrency, the slots go to peers that read their answers: the queued requests of one that reads none wait aside, and a good request is run before them', async () => {
  const budget = 4 * 1024 * 1024;
  const answer = 'x'.repeat(256 * 1024);
  let made = 0;
  const handler: Handler = async (p) => (p === 'quick' ? 'fine' : (made++, answer));
  const server = await lonely({ maxBufferedBytes: budget, concurrency: 2, handler });
  const s = await peer(server.port);
  s.pause();
  s.write(Buffer.concat(Array.from({ length: 400 }, (_, i) => frame({ type: 0, seq: i + 1, srcid: 'greedy', privPoliId: 'P', payload: `r${i}` }))));
  await eventually(() => made > 0, 5000, 'its requests taken');
  await stillServes(server.port);
  assert.ok(made < 200, `the handler answered ${made} of its 400 requests before the good one`);
  const answers = collector(s);
  s.resume();
  await answers.until(() => answers.got.length === 400, 10_000);
  assert.equal(answers.got.map((m) => [m.type, (m as AckMsg).seq]), Array.from({ length: 400 }, (_, i) => [MsgType.ACK, i + 1]));
});

port('a peer that goes away while its requests wait for it to read lets go of what they held of the buffer budget', async () => {
  const answer = 'x'.repeat(256 * 1024);
  const server = await lonely({ maxBufferedBytes: 4 * 1024 * 1024, handler: (p) => (p === 'quick' ? 'fine' : answer) });
  const budget = server.actor.getSnapshot().context.budget;
  const s = await peer(server.port);
  s.pause();
  s.write(Buffer.concat(Array.from({ length: 400 }, (_, i) => frame({ type: 0, seq: i + 1, srcid: 'greedy', privPoliId: 'P', payload: `r${i}` }))));
  await eventually(() => ctx.logs.some((r) => r.event === 'answers_unread'), 5000, 'its requests held');
  assert.ok(budget.used > 0);
  s.destroy();
  await eventually(() => budget.used === 0, 5000, `the budget let go (${budget.used} bytes held)`);
  await stillServes(server.port);
});

port('connections past --max-connections, or past --max-conns-per-peer from one address, are refused at once and logged once; the server keeps serving', async () => {
  for (const limits of [{ maxConnections: 5 }, { maxConnectionsPerPeer: 5 }]) {
    ctx.logs.length = 0;
    const server = await lonely(limits);
    const socks: Socket[] = [];
    for (let i = 0; i < 5; i++) socks.push(await peer(server.port));
    // The five are accepted before the next ones come (a request on the last is answered).
    const last = collector(socks[4]!);
    socks[4]!.write(frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'quick' }));
    await last.until(() => last.got.length === 1);
    const over = await Promise.all([0, 1, 2].map(() => peer(server.port)));
    await eventually(() => over.every((s) => s.destroyed || s.readableEnded), 3000, 'the connections past the limit closed');
    await eventually(() => ctx.logs.some((r) => r.event === 'conn_refused'), 3000, 'the refusal logged');
    assert.is(ctx.logs.filter((r) => r.event === 'conn_refused').length, 1, 'once, then counted');
    assert.match(ctx.logs.find((r) => r.event === 'conn_refused')!.msg, limits.maxConnections ? /5 connections are open \(--max-connections\): raise --max-connections to keep more$/ : /it has 5 open \(--max-conns-per-peer\); raise --max-conns-per-peer \(0: no limit\) if that address stands for many clients$/);
    // The connections it has are served on.
    const first = collector(socks[0]!);
    socks[0]!.write(frame({ type: 0, seq: 2, srcid: 'c', privPoliId: 'P', payload: 'quick' }));
    await first.until(() => first.got.length === 1);
    assert.is((first.got[0] as AckMsg).payload, 'fine');
    for (const s of ctx.socks.splice(0)) s.destroy();
    await server.stop();
  }
});

port('--max-conn-rate-per-peer: over TLS, an address opening connections too fast is refused before its handshake and logged once; another address completes its handshake and is served', async () => {
  const pki = makePki(['server']);
  const server = await lonely({ tls: loadTls(pki.cert('server')), maxConnRatePerPeer: 3 });
  const handshake = (localAddress: string): Promise<TLSSocket | undefined> => tlsFrom(server.port, localAddress);
  const burst = await Promise.all(Array.from({ length: 12 }, () => handshake('127.0.0.3')));
  const done = burst.filter(Boolean).length;
  assert.ok(done >= 3 && done <= 5, `${done} of 12 handshakes done`);
  for (const s of burst) s?.destroy();
  await eventually(() => ctx.logs.some((r) => r.event === 'conn_refused'), 3000, 'the refusal logged');
  assert.is(ctx.logs.filter((r) => r.event === 'conn_refused').length, 1, 'once, then counted');
  assert.match(ctx.logs.find((r) => r.event === 'conn_refused')!.msg, /^Refused a connection from 127\.0\.0\.3: it opens more than 3 a second \(--max-conn-rate-per-peer\); it is let in again once it slows down/);
  assert.not.ok(ctx.logs.some((r) => r.event === 'tls_refused'), 'no handshake begun for a refused one');
  await servedFrom(server.port, '127.0.0.2');
});

port('--max-tls-handshakes: an address holding handshakes half-begun has its share under way and a waiting line, the rest refused at once and logged; another address completes its handshake and is served', async () => {
  // 4,200 connections that each sent 3 bytes of a ClientHello filled a server's --max-connections, each holding OpenSSL's state.
  const pki = makePki(['server']);
  const server = await lonely({ tls: loadTls(pki.cert('server')), maxTlsHandshakes: 32 });
  const held = await Promise.all(Array.from({ length: 40 }, () => rawConnect(server.port, '127.0.0.3')));
  let closed = 0;
  for (const s of held) {
    ctx.socks.push(s);
    s.on('error', () => {});
    s.on('close', () => closed++);
    s.resume();
    s.write(Buffer.from([0x16, 0x03, 0x01]));
  }
  // 2 under way (a sixteenth of 32), 32 waiting: 6 closed at once, logged once.
  await eventually(() => closed === 6, 3000, '6 refused past the waiting line');
  const lines = ctx.logs.filter((r) => r.event === 'conn_refused');
  assert.is(lines.length, 1, 'once, then counted');
  assert.match(lines[0]!.msg, /^Refused a TLS connection from 127\.0\.0\.3: 32 connections from that address wait to begin theirs, beside the 2 handshakes under way \(--max-tls-handshakes 32, 2 for one address\)/);
  await servedFrom(server.port, '127.0.0.2');
  assert.is(closed, 6, 'the others still wait their turn');
});

port('a quiet connection is not closed, before its first message or after it: a proxy\'s link may carry nothing for hours (to a --wire json server, nothing at all until a request)', async () => {
  const clock = new ManualClock();
  const server = await lonely({ clock });
  const silent = await peer(server.port);
  const spoke = await peer(server.port);
  const answers = collector(spoke);
  spoke.write(frame({ type: MsgType.PING, seq: 0 }));
  await answers.until(() => answers.got.length === 1);
  clock.advance(24 * 3600_000);
  await new Promise((r) => setTimeout(r, 30));
  assert.not.ok(silent.destroyed || silent.readableEnded, 'the connection that never spoke is open');
  assert.not.ok(ctx.logs.some((r) => r.event === 'conn_timeout'), JSON.stringify(ctx.logs.map((r) => r.msg)));
  spoke.write(frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'quick' }));
  await answers.until(() => answers.got.length === 2);
  assert.is((answers.got[1] as AckMsg).payload, 'fine');
  const first = collector(silent);
  silent.write(frame({ type: 0, seq: 2, srcid: 'c', privPoliId: 'P', payload: 'quick' }));
  await first.until(() => first.got.length === 1);
  assert.is((first.got[0] as AckMsg).payload, 'fine');
});

port('a connection whose reads the server holds itself (its requests at their share of the budget) is not cut as a slow sender: the rest of its message begun waits in our receive queue, not on the peer', async () => {
  // The frame timer ran on while the reads were paused: 10 s later the proxy's link was cut as "a message
  // begun 10000 ms ago is still incomplete", and every request on it failed UPSTREAM_FAILED.
  const clock = new ManualClock();
  const server = await lonely({ clock, handlerTimeoutMs: 0, maxBufferedBytes: 32 * 8192 });
  const req = (seq: number) => frame({ type: 0, seq, srcid: 'link', privPoliId: 'P', payload: 'x'.repeat(5000) });
  const link = await peer(server.port);
  const answers = collector(link);
  // Two requests take its share (8 KiB): it is read no more, with the third begun.
  const third = req(3);
  link.write(Buffer.concat([req(1), req(2), third.subarray(0, 6)]));
  await eventually(() => ctx.held.length === 2, 3000, 'two requests running');
  link.write(third.subarray(6));
  for (let i = 0; i < 30; i++) {
    clock.advance(1000);
    await new Promise((r) => setTimeout(r, 2));
  }
  assert.not.ok(link.destroyed || answers.closed, 'the connection is open');
  assert.not.ok(ctx.logs.some((r) => r.event === 'conn_timeout'), JSON.stringify(ctx.logs.filter((r) => r.event === 'conn_timeout').map((r) => r.msg)));
  // Answers bring it under its share: it is read again, and the third request is run and answered.
  while (answers.got.length < 3) {
    for (const r of ctx.held.splice(0)) r();
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.equal(answers.got.map((m) => [m.type, (m as AckMsg).seq]).sort(), [[MsgType.ACK, 1], [MsgType.ACK, 2], [MsgType.ACK, 3]]);
});

port('garbage from many connections is refused on each, and logged once, then counted', async () => {
  const server = await lonely();
  const garbage = await Promise.all(Array.from({ length: 50 }, () => peer(server.port)));
  for (const s of garbage) s.resume().write(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]));
  await eventually(() => garbage.every((s) => s.destroyed || s.readableEnded), 3000, 'every garbage connection closed');
  await eventually(() => ctx.logs.some((r) => r.event === 'bad_input'), 3000, 'logged');
  assert.is(ctx.logs.filter((r) => r.event === 'bad_input').length, 1, ctx.logs.filter((r) => r.event === 'bad_input').slice(0, 3).map((r) => r.msg).join('\n'));
  await stillServes(server.port);
});

port("bad input's summary line counts connections from the address, and names no one connection's port", async () => {
  const server = await lonely({ logger: new Logger('server', memorySink(ctx.logs), 'info', { summaryMs: 50 }) });
  const garbage = await Promise.all(Array.from({ length: 20 }, () => peer(server.port)));
  for (const s of garbage) s.resume().write(Buffer.from([0, 0, 0, 3, 0xc1, 0xc1, 0xc1]));
  const lines = () => ctx.logs.filter((r) => r.event === 'bad_input');
  await eventually(() => lines().reduce((n, r) => n + (r.count as number), 0) === 20, 3000, 'all 20 counted');
  const [first, ...summaries] = lines();
  assert.match(first!.msg, /^Closed connection from 127\.0\.0\.1:\d+: /, 'the first line names its connection');
  assert.ok(summaries.length > 0);
  for (const r of summaries) {
    assert.match(r.msg, new RegExp(`^Closed ${r.count} connection\\(s\\) from 127\\.0\\.0\\.1 on bad input \\(BAD_REQUEST\\) in the last \\d+ m?s; the first was: `), r.msg);
    assert.not.match(r.msg, /127\.0\.0\.1:\d/, 'no port of one connection for a count of many');
  }
});

function collectorInto(s: Socket, into: ErrorMsg[]): void {
  const got = collector(s);
  s.on('data', () => {
    for (const m of got.got.splice(0)) if (m.type === MsgType.ERROR) into.push(m as ErrorMsg);
  });
}

port.run();
