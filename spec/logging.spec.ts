/**
 * Logs (issue 16): info is the life of the system, never a line per request;
 * a repeated condition is one line per interval with a count; a reader that
 * stalls costs lines (dropped and counted), never memory.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Server } from 'node:net';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger, memorySink, runClient, startProxy, startServer, type LogRecord } from '../actors/index.js';
import { Destination, LogStream } from '../actors/logger.js';
import { AccessLog } from '../admin/access-log.js';
import { Readiness, startAdmin, type AdminServer } from '../admin/server.js';
import { Metrics, startInspector, type Inspector } from '../inspector/index.js';
import { ManualClock } from '../transport/clock.js';
import { collector, eventually, frame, LOCAL, rawConnect, sleep, tempDir } from './helpers.js';
import { loadFor, rssBytes, startPressure, type Pressure } from './log-pressure.js';

const PER_REQUEST = new Set(['request', 'forward', 'ack', 'answer', 'send']);

const inproc = suite('logging, in process');

inproc('at info, traffic writes no per-request line and no payload; at debug it does', async () => {
  for (const level of ['info', 'debug'] as const) {
    const logs: LogRecord[] = [];
    const proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(logs), level) });
    const server = await startServer({ id: '1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: proxy.port }, logger: new Logger('server 1', memorySink(logs), level) });
    await eventually(() => proxy.pools().P?.serving.length === 1, 2000, 'server serving');
    const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: Array.from({ length: 50 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `secret-payload-${i}` })), logger: new Logger('client c', memorySink(logs), level) });
    assert.is(results.filter((r) => r.correct).length, 50);
    await server.stop();
    await proxy.stop();
    const perRequest = logs.filter((l) => PER_REQUEST.has(l.event));
    const payloads = logs.filter((l) => JSON.stringify(l).includes('secret-payload-'));
    if (level === 'info') {
      assert.equal(perRequest.map((l) => l.event), [], 'no per-request line at info');
      assert.is(payloads.length, 0, 'no payload at info');
      assert.ok(logs.some((l) => l.event === 'register') && logs.some((l) => l.event === 'deregister'), 'the life of the system is at info');
    } else {
      assert.ok(perRequest.length >= 50 * 4, `per-request lines at debug: ${perRequest.length}`);
      assert.ok(payloads.length >= 50, 'payloads at debug');
    }
  }
});

inproc('a server that drains says whom it told: each proxy it is registered with, by address', async () => {
  // It said 'told the reverse proxy we are leaving' whoever it had told: two proxies, the
  // registry in etcd, or none at all (its proxy was down), which in a deploy misleads.
  const logs: LogRecord[] = [];
  const a = await startProxy({ port: 0 });
  const b = await startProxy({ port: 0 });
  const server = await startServer({ id: '1', policy: 'P', revproc: [a.port, b.port], logger: new Logger('server 1', memorySink(logs), 'info') });
  for (const p of [a, b]) await eventually(() => p.pools().P?.serving.length === 1, 2000, 'server serving');
  await b.stop();
  await eventually(() => logs.some((l) => l.event === 'registration_lost'), 2000, 'registration lost');
  await server.stop();
  await a.stop();
  const drain = logs.find((l) => l.event === 'draining')!;
  // Sent, not told: whether the proxy heard, its connections closing say (or a drain_unanswered line that they did not).
  assert.is(drain.msg, `Draining: sent the reverse proxy at 127.0.0.1:${a.port} a DEREGISTER, saying we are leaving; finishing requests in flight (at most 35000 ms; a proxy told that then keeps a connection here silent 3000 ms (nothing read, nothing left to write to it, no handler running) is taken for not answering and that connection cut)`);
});

inproc('a --wire json server that drains does not claim it told its proxy: the old wire has no deregistration', async () => {
  // It said 'told the reverse proxy ... that we are leaving', and had sent nothing.
  const logs: LogRecord[] = [];
  const p = await startProxy({ port: 0 });
  const server = await startServer({ id: 'j', policy: 'P', revproc: [p.port], wire: 'json', logger: new Logger('server j', memorySink(logs), 'info') });
  await eventually(() => logs.some((l) => l.event === 'registered'), 2000, 'registered');
  await server.stop();
  await p.stop();
  const drain = logs.find((l) => l.event === 'draining')!;
  assert.is(drain.msg, `Draining: the old JSON wire cannot tell the reverse proxy at 127.0.0.1:${p.port} (it has no deregistration): no new connections are taken, so they see this server gone; finishing requests in flight (at most 35000 ms)`);
});

/** The servers `start` made listen (their listen() calls seen on the way). */
async function listeningIn(start: () => Promise<void>): Promise<Server[]> {
  const listening: Server[] = [];
  const listen = Server.prototype.listen;
  Server.prototype.listen = function (this: Server, ...args: unknown[]) {
    listening.push(this);
    return (listen as (...a: unknown[]) => Server).apply(this, args);
  } as typeof listen;
  try {
    await start();
  } finally {
    Server.prototype.listen = listen;
  }
  return listening;
}

/** The error Node emits on a listening server when accept() fails for want of descriptors. */
const enfile = (): Error => Object.assign(new Error('accept ENFILE'), { code: 'ENFILE', errno: -23, syscall: 'accept' });

inproc('a connection the admin endpoint or the inspector could not accept is a warn line naming the port, and each serves on', async () => {
  // Neither logged them, and after the first the process ended: their listen's once('error') took the
  // first, and Node throws an 'error' no one listens to.
  const logs: LogRecord[] = [];
  const logger = new Logger('proxy', memorySink(logs), 'info');
  let admin!: AdminServer;
  let insp!: Inspector;
  const listening = await listeningIn(async () => {
    admin = await startAdmin({ host: '127.0.0.1', port: 0, metrics: new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] }), readiness: new Readiness(), logger });
    insp = await startInspector({ port: 0, logger });
  });
  try {
    assert.is(listening.length, 2, 'the admin port and the inspector\'s');
    for (const s of listening) for (let i = 0; i < 3; i++) s.emit('error', enfile());
    const failed = logs.filter((l) => l.event === 'accept_failed');
    assert.equal(failed.map((l) => l.msg.split(':')[0]), ['Could not accept a connection on the admin endpoint', 'Could not accept a connection on the inspector'], JSON.stringify(logs));
    assert.match(failed[0]!.msg, /the system has no file descriptor left \(ENFILE/);
    assert.is((await fetch(`${admin.url}healthz`)).status, 200, 'the admin endpoint serves on');
    assert.is((await fetch(insp.url!)).status, 200, 'the inspector serves on');
  } finally {
    await admin?.close();
    await insp?.close();
  }
});

inproc('a connection a listening port could not accept (ENFILE) is a warn line with the errno and what to do, not once per failure, and the port serves on', async () => {
  // It was dropped silently: the error went to the machine's LISTEN_FAILED, which a running
  // proxy or server ignores. A system out of file descriptors cannot be provoked here, so the
  // error is emitted on each listening server object, as Node emits it when accept() fails.
  const logs: LogRecord[] = [];
  let proxy!: Awaited<ReturnType<typeof startProxy>>;
  let server!: Awaited<ReturnType<typeof startServer>>;
  const listening = await listeningIn(async () => {
    proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(logs), 'info') });
    server = await startServer({ id: '1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: proxy.port }, logger: new Logger('server 1', memorySink(logs), 'info') });
  });
  try {
    assert.is(listening.length, 2, 'the proxy\'s port and the server\'s');
    for (const s of listening) for (let i = 0; i < 3; i++) s.emit('error', enfile());
    const failed = logs.filter((l) => l.event === 'accept_failed');
    assert.equal(failed.map((l) => [l.actor, l.level]), [['proxy', 'warn'], ['server 1', 'warn']], JSON.stringify(logs));
    assert.match(failed[0]!.msg, /^Could not accept a connection: the system has no file descriptor left \(ENFILE, its limit is fs\.file-max\): raise it/);
    await eventually(() => proxy.pools().P?.serving.length === 1, 2000, 'server serving');
    const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] });
    assert.ok(results[0]?.correct, 'still serving');
  } finally {
    await server.stop();
    await proxy.stop();
  }
});

inproc('a repeated condition gives one line, then one summary line per interval whose counts add up', async () => {
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const logger = new Logger('proxy', memorySink(logs), 'info', { summaryMs: 100, clock });
  const proxy = await startProxy({ port: 0, logger });
  const sock = await rawConnect(proxy.port);
  const answers = collector(sock);
  let sent = 0;
  // 10 intervals of the logger's clock, 5 batches of 20 refused requests in each.
  for (let interval = 0; interval < 10; interval++) {
    for (let batch = 0; batch < 5; batch++) {
      sock.write(Buffer.concat(Array.from({ length: 20 }, () => frame({ type: 0, seq: sent++, srcid: 'c', privPoliId: '999', payload: 'x' }))));
      await answers.until(() => answers.got.length === sent, 3000);
    }
    clock.advance(100);
  }
  clock.advance(100); // an interval with nothing: the condition is forgotten
  sock.destroy();
  await proxy.stop();
  const lines = logs.filter((l) => l.event === 'no_server');
  assert.is(lines.reduce((k, l) => k + Number(l.count), 0), sent, 'every refusal is counted once');
  // The first batch at once, then one summary per interval: 11 lines for 50 batches.
  assert.is(lines.length, 11, lines.map((l) => l.msg).join('\n'));
  assert.not.ok(lines[0]!.summary);
  assert.is(lines[0]!.msg, 'no server is registered for privacy policy 999; refused 20 request(s)');
  assert.is(lines[1]!.msg, 'no server is registered for privacy policy 999; refused 80 request(s) in the last 100 ms');
  for (const l of lines.slice(2)) assert.is(l.msg, 'no server is registered for privacy policy 999; refused 100 request(s) in the last 100 ms');
});

inproc("a summary line's fields are those every occurrence it counts gave alike (the first's whole: its peer's port, its bytes)", () => {
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const logger = new Logger('proxy', memorySink(logs), 'info', { summaryMs: 5000, clock });
  const fields = [{ peer: '10.0.0.1:4000', bytes: 10, code: 'OVERLOADED' }, { peer: '10.0.0.1:4001', bytes: 10, code: 'OVERLOADED' }, { peer: '10.0.0.1:4002', bytes: 12, code: 'OVERLOADED' }];
  for (const f of fields) logger.repeated('warn', 'budget_shed', '10.0.0.1', 1, (n, span) => (span ? `Closed ${n} ${span}` : 'Closed one'), f);
  clock.advance(5000);
  assert.equal(logs.map((l) => [l.msg, l.peer, l.bytes, l.code, l.count]), [
    ['Closed one', '10.0.0.1:4000', 10, 'OVERLOADED', 1],
    ['Closed 2 in the last 5 s', undefined, undefined, 'OVERLOADED', 2],
  ]);
  assert.equal(fields[0], { peer: '10.0.0.1:4000', bytes: 10, code: 'OVERLOADED' }, "the caller's fields are left as they were");
  // The next interval counts from what is common still: nothing comes back.
  logger.repeated('warn', 'budget_shed', '10.0.0.1', 1, (n, span) => (span ? `Closed ${n} ${span}` : 'Closed one'), fields[0]);
  clock.advance(5000);
  assert.equal([logs.at(-1)!.peer, logs.at(-1)!.code], [undefined, 'OVERLOADED']);
});

inproc("a server's pending summaries come before the line saying it left, not after it (\"kept in rotation (2 more time(s) ...)\" 3 s after it left)", () => {
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const logger = new Logger('proxy', memorySink(logs), 'info', { summaryMs: 5000, clock });
  const kept = (n: number, span?: string) => (span ? `Server id 7 kept failing; kept in rotation (${n} more time(s) ${span})` : 'Server id 7 kept failing; kept in rotation');
  for (let i = 0; i < 3; i++) logger.repeated('warn', 'eject_skipped', 'A\u00007', 1, kept, { id: '7', policy: 'A' });
  for (let i = 0; i < 2; i++) logger.repeated('warn', 'retry', 'A\u00007', 1, (n, span) => `Retrying ${n}${span ? ` ${span}` : ''}`, { server: '7' });
  logger.repeated('warn', 'retry', 'A\u00008', 1, (n, span) => `Retrying ${n} of 8${span ? ` ${span}` : ''}`, { server: '8' });
  logger.repeated('warn', 'retry', 'A\u00008', 1, (n, span) => `Retrying ${n} of 8${span ? ` ${span}` : ''}`, { server: '8' });
  clock.advance(3000);
  logger.settle('7');
  logger.info('deregister', 'Server id 7 left privacy policy A', { id: '7' });
  clock.advance(2000);
  const msgs = logs.map((l) => l.msg);
  assert.equal(msgs, [
    'Server id 7 kept failing; kept in rotation',
    'Retrying 1',
    'Retrying 1 of 8',
    'Server id 7 kept failing; kept in rotation (2 more time(s) in the last 3 s)',
    'Retrying 1 in the last 3 s',
    'Server id 7 left privacy policy A',
    // Another server's condition is summarised at the interval, as before; 7's are forgotten.
    'Retrying 1 of 8 in the last 5 s',
  ]);
  // 7's condition starts over: said at once again.
  logger.repeated('warn', 'retry', 'A\u00007', 1, (n, span) => `Retrying ${n}${span ? ` ${span}` : ''}`, { server: '7' });
  assert.is(logs.at(-1)!.msg, 'Retrying 1');
});

inproc('"stopped" is the last line: the summary of a condition that repeated comes before it (a "refused 40 request(s) in the last ..." after it read as if the proxy still ran)', async () => {
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(logs), 'info', { summaryMs: 100, clock }) });
  const sock = await rawConnect(proxy.port);
  const answers = collector(sock);
  for (let seq = 0; seq < 60; seq++) sock.write(frame({ type: 0, seq, srcid: 'c', privPoliId: '999', payload: 'x' }));
  await answers.until(() => answers.got.length === 60, 3000);
  sock.destroy();
  await proxy.stop();
  clock.advance(100); // the summaries' timer, had it been left to run
  const lines = logs.filter((l) => l.event === 'no_server' || l.event === 'stopped');
  assert.is(lines.at(-1)?.event, 'stopped', lines.map((l) => l.msg).join('\n'));
  assert.is(lines.filter((l) => l.event === 'no_server').reduce((k, l) => k + Number(l.count), 0), 60, 'every refusal is counted before "stopped"');
});

inproc('the dropped-lines report is a warn line: --log-level error or silent leaves it out, as any other warning (the metric still counts)', async () => {
  // It was written at warn whatever the level, the one line --log-level error let through below error.
  const dir = tempDir('revproxy-dropped-');
  try {
    for (const level of ['warn', 'error', 'silent'] as const) {
      const file = join(dir, `${level}.log`);
      const clock = new ManualClock();
      const dest = new Destination({ to: file });
      await dest.ready();
      const logger = new Logger('proxy', new LogStream(dest, { format: 'json' }), level, { summaryMs: 100, clock });
      // As a reader too slow for the log makes the destination do: lines dropped, counted, the logger woken.
      dest.dropped += 5;
      dest.onDrop!();
      clock.advance(100);
      assert.is(logger.dropped, 5, 'counted at any level (revproxy_log_lines_dropped_total)');
      await logger.end();
      const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as LogRecord);
      const reports = lines.filter((l) => l.event === 'log_dropped').map((l) => [l.level, l.count]);
      assert.equal(reports, level === 'warn' ? [['warn', 5]] : [], `at ${level}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

inproc('a destination whose reader never reads holds at most its bound and counts what it drops', async () => {
  // A named pipe with a reader that never reads: the kernel's buffer fills, then the write waits.
  const dir = tempDir('revproxy-fifo-');
  const fifo = join(dir, 'log');
  execFileSync('mkfifo', [fifo]);
  const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
  const dest = new Destination({ to: fifo, maxBytes: 256 * 1024 });
  await dest.ready();
  const line = `${'x'.repeat(999)}\n`;
  for (let turn = 0; turn < 200; turn++) {
    for (let i = 0; i < 100; i++) dest.write(line); // 20 MB in all, 100 KB per turn of the event loop
    await new Promise((r) => setImmediate(r));
  }
  await sleep(200);
  assert.ok(dest.backlog <= 256 * 1024, `backlog ${dest.backlog}`);
  assert.ok(dest.dropped >= 20_000 - 400, `dropped ${dest.dropped}`);
  closeSync(reader); // the blocked write ends (EPIPE)
  await dest.end();
  rmSync(dir, { recursive: true, force: true });
});

inproc('lines that waited for a full disk are written once it has room, with no new line to carry them and with a full backlog: tried again every second, and said', async () => {
  // SonicBoom tries a failed write again only when a new chunk fits in its backlog: with no traffic
  // the lines waited for ever, and with a full backlog every new chunk was dropped untried (an
  // operator's probe: 15,004 access log lines dropped in 5 s after the disk had room again).
  const dir = tempDir('revproxy-full-');
  const disk = join(dir, 'disk');
  mkdirSync(disk);
  if (process.getuid?.() !== 0 || spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', disk]).status !== 0) return rmSync(dir, { recursive: true, force: true }); // needs root
  try {
    writeFileSync(join(disk, 'filler'), Buffer.alloc(64 * 1024 - 4096));
    const file = join(disk, 'access.log');
    const dest = new Destination({ to: file, maxBytes: 16 * 1024 });
    await dest.ready();
    let errors = 0;
    let recovered = 0;
    dest.onError = () => errors++;
    dest.onRecovered = () => recovered++;
    const line = `${'x'.repeat(99)}\n`;
    // 50 lines a turn (5 KB), 40 KB in all: more than the disk's room and the backlog together.
    for (let turn = 0; turn < 8; turn++) {
      for (let i = 0; i < 50; i++) dest.write(line);
      await sleep(20);
    }
    await eventually(() => errors > 0, 2000, 'the disk is full');
    await sleep(100);
    assert.ok(dest.dropped > 0, 'the backlog filled: chunks dropped');
    const waiting = dest.unwrittenLines();
    assert.ok(waiting > 0, 'lines wait');
    const before = readFileSync(file).length;
    rmSync(join(disk, 'filler'));
    // No line written from here on: what waits goes out by itself.
    await eventually(() => dest.backlog === 0, 4000, `what waited is written (backlog ${dest.backlog})`);
    assert.is(readFileSync(file).length - before >= (waiting - 1) * line.length, true, 'the lines that waited are in the file');
    assert.is(recovered, 1, 'the recovery is said once');
    // And a full backlog no longer drops everything new: a new line goes out.
    const dropped = dest.dropped;
    dest.write(line);
    await eventually(() => dest.backlog === 0 && readFileSync(file, 'utf8').endsWith(line), 2000, 'a new line written');
    assert.is(dest.dropped, dropped);
    await dest.end();
  } finally {
    spawnSync('umount', ['-l', disk]);
    rmSync(dir, { recursive: true, force: true });
  }
});

inproc('ids and policies holding control characters cannot forge or restyle a text log line or an access-log line', async () => {
  // A server registered as `x\r<a line>` made `tail -f` show the forged line over the real one, and
  // ANSI escapes in an id or policy coloured, cleared or retitled the operator's terminal.
  const dir = tempDir('revproxy-inject-');
  const hostile = ['evil\r2026-01-01T00:00:00.000Z proxy | Registered server id root', 'ansi\x1b[2J\x1b]0;pwned\x07', 'del\x7f csi\u009b31m sep\u2028end'];
  const logDest = new Destination({ to: join(dir, 'proxy.log') });
  const accessDest = new Destination({ to: join(dir, 'access.log') });
  await Promise.all([logDest.ready(), accessDest.ready()]);
  const logger = new Logger('proxy', new LogStream(logDest, { format: 'text' }), 'debug');
  const proxy = await startProxy({ port: 0, logger, observer: new AccessLog(accessDest, 'text') });
  const listen = new Server();
  await new Promise<void>((r) => listen.listen(0, LOCAL, r));
  const listenport = (listen.address() as { port: number }).port;
  for (const id of hostile) {
    const reg = await rawConnect(proxy.port);
    reg.write(frame({ type: 1, id, privPolyId: `p ${id}`, listenport }));
    await eventually(() => proxy.pools()[`p ${id}`] !== undefined, 2000, 'registered');
    reg.destroy();
    await eventually(() => proxy.pools()[`p ${id}`] === undefined, 2000, 'left');
  }
  const client = await rawConnect(proxy.port);
  const answers = collector(client);
  hostile.forEach((id, seq) => client.write(frame({ type: 0, seq, srcid: id, privPoliId: id, payload: 'x' })));
  await answers.until(() => answers.got.length === hostile.length, 3000);
  client.destroy();
  listen.close();
  await proxy.stop();
  await logger.end();
  await accessDest.end();
  for (const name of ['proxy.log', 'access.log']) {
    const text = readFileSync(join(dir, name), 'utf8');
    const raw = [...text.matchAll(/[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]/g)].map((m) => `U+${m[0].charCodeAt(0).toString(16).padStart(4, '0')}`);
    assert.equal(raw, [], `${name} holds control characters as they came:\n${text}`);
    for (const line of text.split('\n').filter(Boolean)) assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /, `${name}: each line starts with its time`);
    const cr = name === 'proxy.log' ? '\\u000d' : '\\r'; // the access log quotes as JSON does
    assert.ok(text.includes(`evil${cr}2026-01-01`) && text.includes('ansi\\u001b[2J') && text.includes('del\\u007f'), `${name} shows them escaped:\n${text}`);
  }
  rmSync(dir, { recursive: true, force: true });
});

const proc = suite<{ p?: Pressure }>('logging, a proxy process with its stdout unread', {});
proc.after.each(async (ctx) => {
  await ctx.p?.close();
  ctx.p = undefined;
});

proc('at info under load: memory stays bounded and no line per request is written', async (ctx) => {
  ctx.p = await startPressure(['--log-level', 'info']);
  const pid = ctx.p.child.pid!;
  await loadFor(ctx.p.port, 1); // warm up
  const warm = rssBytes(pid);
  let peak = warm;
  const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(pid))), 100);
  const acks = await loadFor(ctx.p.port, 3);
  clearInterval(sampler);
  // Before issue 16 info wrote 3 lines per request: RSS grew by about 34 MB a second with stdout unread.
  assert.ok(peak - warm < 64 * 2 ** 20, `RSS ${(warm / 2 ** 20).toFixed(0)} -> ${(peak / 2 ** 20).toFixed(0)} MB over ${acks} requests`);
  const lines = await ctx.p.read(/never matched/, 500);
  assert.ok(acks > 10_000, `acks ${acks}`);
  assert.ok(lines.length < 10, `lines written: ${lines.length}\n${lines.slice(0, 5).join('\n')}`);
  for (const l of lines) assert.match(l, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /, 'text lines start with their time');
});

proc('at debug under load: lines the reader cannot take are dropped, counted and reported', async (ctx) => {
  ctx.p = await startPressure(['--log-level', 'debug']);
  const pid = ctx.p.child.pid!;
  await loadFor(ctx.p.port, 1);
  const warm = rssBytes(pid);
  await loadFor(ctx.p.port, 2);
  const after = rssBytes(pid);
  assert.ok(after - warm < 96 * 2 ** 20, `RSS ${(warm / 2 ** 20).toFixed(0)} -> ${(after / 2 ** 20).toFixed(0)} MB`);
  const lines = await ctx.p.read(/Dropped [\d,]+ log line/, 8000);
  const report = lines.find((l) => /Dropped [\d,]+ log line/.test(l));
  assert.ok(report, 'a line says how many lines were dropped');
  assert.ok(Number(/Dropped ([\d,]+)/.exec(report!)![1]!.replace(/,/g, '')) > 1000);
});

proc('SIGTERM with stdout still unread: the proxy drains and exits 0 without waiting for the reader', async (ctx) => {
  ctx.p = await startPressure(['--log-level', 'debug']);
  await loadFor(ctx.p.port, 1);
  const exited = new Promise<number | null>((resolve) => ctx.p!.child.once('exit', (code) => resolve(code)));
  ctx.p.child.kill('SIGTERM');
  const code = await Promise.race([exited, sleep(10_000).then(() => 'still running')]);
  assert.is(code, 0);
});

inproc.run();
proc.run();
