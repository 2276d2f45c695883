/**
 * `revproxy load` as a user runs it: a real proxy and two real servers as
 * processes on free ports, the command as a process, its exit status, its
 * JSON and its words. Counts and shapes only; no timing but lower bounds
 * that a slow machine can only make longer.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { probe } from '../bench/procs.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType, type DataMsg } from '../transport/messages.js';
import { makePki } from './certs.js';
import { killAll, proxyProcess, python, revproxy, type Proc } from './procs.js';

const test = suite('revproxy load');

let proxyPort = 0;
const serverPorts: string[] = [];

test.before(async () => {
  ({ port: proxyPort } = await proxyProcess(['--log-level', 'warn']));
  for (const id of ['1', '2']) {
    const s = revproxy(['server', '--id', id, '--pp', '111', '--listen', '0', '--revproc', String(proxyPort)]);
    serverPorts.push((await s.waitFor(/Listening on port (\d+)/))[1]!);
  }
  // Registration travels on its own connection: wait until both servers answer through the proxy.
  const until = Date.now() + 10_000;
  while ((await probe(proxyPort, '111', 4).catch(() => new Set<string>())).size < 2) {
    if (Date.now() > until) throw new Error('the two servers did not register within 10 s');
    await new Promise((r) => setTimeout(r, 50));
  }
});

test.after(killAll);

/** Runs `revproxy load`; `during` gets the process while it runs (to signal it). One still running after a minute is killed: a hang fails the test instead of holding the suite. */
async function load(args: string[], during?: (p: Proc) => Promise<void>): Promise<{ code: number; out: string; json?: Record<string, any> }> {
  const p: Proc = revproxy(['load', '--no-progress', ...args]);
  const hung = setTimeout(() => p.kill('SIGKILL'), 60_000);
  if (during) await Promise.race([during(p), p.exited]);
  const code = await p.exited;
  clearTimeout(hung);
  const out = p.out.join('\n');
  const line = p.out.find((l) => l.startsWith('{'));
  return { code, out, json: line ? JSON.parse(line) : undefined };
}

/**
 * A fake target for what a real proxy never does (answers that are not frames, answers to nothing,
 * silence): it reads requests with the proxy's own decoder, and `answer` says what to write for
 * each. Its plain answer (`ack`) is checked against the real proxy by the first test that uses it:
 * the same load against both reports the same counts.
 */
async function fakeTarget(answer: (m: DataMsg, socket: Socket) => void, onConnect?: (socket: Socket) => void): Promise<{ port: number; server: Server }> {
  const server = createServer((socket) => {
    const decoder = new FrameDecoder();
    socket.on('error', () => {});
    onConnect?.(socket);
    socket.on('data', (chunk) => {
      const { messages } = decoder.push(chunk);
      for (const m of messages) if (m.type === MsgType.DATA) answer(m, socket);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  fakes.push(server);
  return { port: (server.address() as { port: number }).port, server };
}
const fakes: Server[] = [];
test.after(() => fakes.forEach((f) => f.close()));

/** The ACK a server sends for `m`: the SHA1 hex of its payload. */
function ack(m: DataMsg): Buffer {
  const payload = createHash('sha1').update(m.payload as string).digest('hex');
  return encodeFrame({ type: MsgType.ACK, seq: m.seq, srcid: 'fake', destid: m.srcid, payload, payloadsize: 40 });
}

/** The counts of a JSON report that do not depend on timing. */
const counts = (j: Record<string, any>) => ({ sent: j.sent, ok: j.ok, wrongHash: j.wrongHash, errors: j.errors, connected: j.connected, answered: j.answered, latency: j.latencyMs.count });

test('the fake target answering as a server does is the real proxy to load: the same run reports the same counts from both', async () => {
  const fake = await fakeTarget((m, s) => s.write(ack(m)));
  const args = ['-n', '300', '-c', '2', '-p', '8', '--json'];
  const real = await load(['--revproc', String(proxyPort), ...args]);
  const faked = await load(['--revproc', String(fake.port), ...args]);
  assert.is(real.code, 0, real.out);
  assert.is(faked.code, 0, faked.out);
  assert.equal(counts(faked.json!), counts(real.json!));
  assert.equal(Object.keys(faked.json!).sort(), Object.keys(real.json!).sort());
});

test('an answer whose body is MessagePack nil (00 00 00 01 c0): its request fails BAD_FRAME, the connection ends, and the run reports', async () => {
  // load crashed: its decoder does not validate, and the nil was read as null (TypeError: Cannot read properties of null (reading 'type')), exit 1 with no report.
  const nil = Buffer.from([0, 0, 0, 1, 0xc0]);
  const fake = await fakeTarget((_m, s) => s.write(nil));
  const j = await load(['--revproc', String(fake.port), '-n', '5', '-c', '1', '-p', '1', '--json']);
  assert.is(j.code, 1, j.out);
  assert.not.match(j.out, /TypeError/);
  assert.is(j.json!.sent, 1, 'the connection ended at the bad frame: nothing more was sent on it');
  assert.equal(j.json!.errors, { BAD_FRAME: 1 });
  assert.match(j.json!.firstError.BAD_FRAME, /a frame whose body is nil, not a map/);
  // load closed it, not the target: the report said "the target closed every connection ... (a proxy that restarted, or stopped)".
  assert.is(j.json!.closedAllBy, 'load');
  const k = await load(['--revproc', String(fake.port), '-n', '4', '-c', '2', '-p', '1']);
  assert.match(k.out, /ended +load closed every connection [\d.]+ s into the run, which ended there: load does not open connections again - each after the target sent what is not a revproxy frame/);
  assert.not.match(k.out, /the target closed every connection/);
  const t = await load(['--revproc', String(fake.port), '-n', '3', '-c', '1', '--connection-per-request']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, /requests {4}3 sent, 0 answered right, 3 failed/);
  assert.match(t.out, /BAD_FRAME 3: an answer was not a revproxy frame.*\(first: a frame whose body is nil, not a map\)/);
  // Other values than a map are no frame either (a number, an array), and do not count as answers.
  const num = await fakeTarget((_m, s) => s.write(Buffer.from([0, 0, 0, 1, 0x05])));
  const n = await load(['--revproc', String(num.port), '-n', '2', '-c', '1', '-p', '2', '--json']);
  assert.equal(n.json!.errors, { BAD_FRAME: 2 }, n.out);
  assert.match(n.json!.firstError.BAD_FRAME, /a number/);
});

test('a fixed count to a target that stops answering waits --timeout once, and the wait is not the measured window', async () => {
  // measure() and runLoad() each waited --timeout: with --timeout 3000 a silent target held load 6.3 s, and the report
  // said "0 requests/s over 3.00 s" - the wait counted as the window. Answers that come between one --timeout and two
  // were taken as answered right then: they count NO_ANSWER now, as --timeout says.
  const silent = await fakeTarget(() => {});
  const s = await load(['--revproc', String(silent.port), '-n', '4', '-c', '1', '-p', '4', '--timeout', '1500', '--json']);
  assert.is(s.code, 1, s.out);
  assert.equal(s.json!.errors, { NO_ANSWER: 4 });
  assert.ok(s.json!.seconds < 1.5, `the window (${s.json!.seconds} s) is the sending, not the wait for answers that did not come`);
  // Answered 1.5 --timeout after the requests: past the one wait (given up), within the two the old code waited.
  // 1.5 s of slack either side (a busy machine's timers run late, not early).
  const late = await fakeTarget((m, sock) => setTimeout(() => sock.write(ack(m)), 4500));
  const l = await load(['--revproc', String(late.port), '-n', '4', '-c', '1', '-p', '4', '--timeout', '3000', '--json']);
  assert.equal(l.json!.errors, { NO_ANSWER: 4 }, l.out);
  assert.is(l.json!.ok, 0);
  // A target that answers some and then stops: the window ends at the last answer.
  let n = 0;
  const half = await fakeTarget((m, sock) => ++n <= 2 && sock.write(ack(m)));
  const h = await load(['--revproc', String(half.port), '-n', '4', '-c', '1', '-p', '4', '--timeout', '1500', '--json']);
  assert.is(h.json!.ok, 2, h.out);
  assert.equal(h.json!.errors, { NO_ANSWER: 2 });
  assert.ok(h.json!.seconds < 1.5 && h.json!.rps > 2 / 1.5, h.out);
});

test('answers to no request in flight are counted apart from the requests, which add up: sent = answered right + failed; the exit status is 1', async () => {
  // A target answering each request three times gave "sent":50,"ok":50,"errors":{"UNEXPECTED_ANSWER":100}; one sending
  // frames unasked, "8 sent, 0 answered right, 1,344,008 failed": more requests failed than were sent.
  const dup = await fakeTarget((m, s) => s.write(Buffer.concat([ack(m), ack(m), ack(m)])));
  const d = await load(['--revproc', String(dup.port), '-n', '50', '-c', '1', '-p', '8', '--json']);
  assert.is(d.code, 1, 'a target that answers twice is broken');
  assert.is(d.json!.sent, 50);
  assert.is(d.json!.ok, 50);
  assert.equal(d.json!.errors, {});
  assert.is(d.json!.unexpected, 100);
  assert.match(d.json!.firstUnexpected, /^an ACK of seq \d+, which no request in flight has \(answered already, or never sent\)$/);
  // Answers to seqs never sent, and a PONG nobody asked for, written as the connection opens; the requests get nothing.
  const stray = Buffer.concat([...Array.from({ length: 1000 }, (_, i) => ack({ type: MsgType.DATA, seq: 1e6 + i, srcid: 'x', privPoliId: '111', payload: 'y' })), encodeFrame({ type: MsgType.PONG, seq: 1 })]);
  const unasked = await fakeTarget(() => {}, (s) => s.write(stray));
  const t = await load(['--revproc', String(unasked.port), '-n', '8', '-c', '1', '-p', '8', '--timeout', '1000']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, /requests {4}8 sent, 0 answered right, 8 failed\n/);
  assert.match(t.out, /unexpected {2}1,001 answer\(s\) to no request in flight, apart from the requests above: the target answered twice, or what was not asked - it is broken \(first: an ACK of seq 1000000/);
  assert.match(t.out, /NO_ANSWER 8: /);
});

test('a late second answer is not taken for another request: a slot freed is used again with a new seq', async () => {
  // seq was round * depth + slot, the round moving on only when the last slot was used: while that slot's request
  // waited, a slot freed was used again at once with the same seq, so an answer repeated 20 ms later was matched to
  // the next request on that slot (counted as its answer, wrong when its payload differed), whose own answer then
  // came to nothing. Odd seqs (the last of 2 slots, on the old code) are answered after 100 ms, even ones at once
  // and again 20 ms later.
  const late = await fakeTarget((m, s) => {
    if (m.seq % 2 === 1) return void setTimeout(() => s.write(ack(m)), 100);
    s.write(ack(m));
    setTimeout(() => s.write(ack(m)), 20);
  });
  const d = await load(['--revproc', String(late.port), '-n', '200', '-c', '1', '-p', '2', '--json']);
  assert.is(d.json!.sent, 200, d.out);
  assert.is(d.json!.ok, 200, d.out);
  assert.is(d.json!.wrongHash, 0, d.out);
  assert.equal(d.json!.errors, {});
  assert.ok(d.json!.unexpected > 0, d.out);
  assert.match(d.json!.firstUnexpected, /^an ACK of seq \d+, which no request in flight has/);
});

test('a connection not made within --connect-timeout is given up, saying what was not answered: a TLS handshake to a plain listener, a port that drops SYNs', async () => {
  // load had no connect timeout: --tls-ca to a plain listener that waits for a request, or a full backlog, and it never ended, printing nothing.
  // The fake's silence is what a plain listener waiting for its first request does (a revproxy proxy instead refuses the TLS hello and closes).
  const { ca } = makePki([]);
  const silent = await fakeTarget(() => {});
  const t = await load(['--revproc', String(silent.port), '-n', '5', '-c', '1', '--tls-ca', ca, '--connect-timeout', '300']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, new RegExp(`CONNECT_FAILED 1 connection\\(s\\) of 1: connected to 127\\.0\\.0\\.1:${silent.port}, but the TLS handshake was not answered within 300 ms \\(--connect-timeout\\): does the target serve TLS\\?.*\\(first: TLS_HANDSHAKE_TIMEOUT 127\\.0\\.0\\.1:${silent.port}\\)`));
  // A port whose accept queue is full: Linux drops the SYNs, as a firewall does (spec/fixtures/syn_blackhole.py).
  const hole = python('syn_blackhole', []);
  const port = (await hole.waitFor(/^(\d+)$/))[1]!;
  const b = await load(['--revproc', port, '-n', '5', '-c', '1', '--connect-timeout', '300']);
  hole.kill('SIGKILL');
  assert.is(b.code, 1, b.out);
  assert.match(b.out, new RegExp(`CONNECT_FAILED 1 connection\\(s\\) of 1: no answer from 127\\.0\\.0\\.1:${port} within 300 ms \\(--connect-timeout\\)`));
  // A connection per request: each request's connection, the same.
  const p = await load(['--revproc', String(silent.port), '-n', '2', '-c', '1', '--connection-per-request', '--tls-ca', ca, '--connect-timeout', '300', '--json']);
  assert.equal(p.json!.errors, { CONNECT_FAILED: 2 }, p.out);
  assert.match(p.json!.firstError.CONNECT_FAILED, /^TLS_HANDSHAKE_TIMEOUT /);
});

test('Ctrl-C or SIGTERM while the connections are being opened ends the run with its report, exit 1', async () => {
  // The first Ctrl-C was ignored until every connection was made (with no connect timeout: never).
  const { ca } = makePki([]);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    let connected!: () => void;
    const dialled = new Promise<void>((r) => (connected = r));
    const silent = await fakeTarget(() => {}, () => connected());
    const r = await load(['--revproc', String(silent.port), '-n', '5', '-c', '2', '--tls-ca', ca], async (p) => {
      await dialled;
      p.kill(signal);
    });
    assert.is(r.code, 1, r.out);
    assert.match(r.out, new RegExp(`stopped +by ${signal} while opening the connections \\(0 of 2 made\\): nothing was sent`));
    assert.match(r.out, /requests {4}0 sent, 0 answered right\n/);
    // A connection per request, the same: the loops' dials were given up, where the run waited for them to time out
    // (--connect-timeout) and counted each as a request sent that failed CONNECT_FAILED.
    let dialledEach!: () => void;
    const both = new Promise<void>((r) => { let n = 0; dialledEach = () => ++n === 2 && r(); });
    const quiet = await fakeTarget(() => {}, () => dialledEach());
    const q = await load(['--revproc', String(quiet.port), '-d', '60s', '-c', '2', '--connection-per-request', '--tls-ca', ca, '--connect-timeout', '60000'], async (p) => {
      await both;
      p.kill(signal);
    });
    assert.is(q.code, 1, q.out);
    assert.match(q.out, new RegExp(`stopped +by ${signal} while opening the connections \\(0 of 2 made\\): nothing was sent`));
    assert.match(q.out, /requests {4}0 sent, 0 answered right\n/);
    assert.match(q.out, /errors +none/);
  }
});

test('a plain load to a proxy that wants TLS says TLS may be why, as the client does; a TLS load to a plain proxy says it does not speak TLS', async () => {
  // It said CONNECTION_LOST "... (a limit such as --max-conns-per-peer, or it stopped)", never TLS. Real proxies, no fakes.
  const pki = makePki(['proxy']);
  const { cert, key } = pki.cert('proxy');
  const { port: tlsPort } = await proxyProcess(['--tls-cert', cert, '--tls-key', key]);
  for (const mode of [[], ['--connection-per-request']]) {
    const r = await load(['--revproc', String(tlsPort), '-n', '4', '-c', '2', ...mode]);
    assert.is(r.code, 1, r.out);
    assert.match(r.out, /CONNECTION_LOST \d+: the target accepted connections and closed them before sending anything: check whether another program listens on that port, or the proxy wants TLS \(--tls-ca, --tls-cert\), refused this side's TLS certificate \(--tls-cert: signed by a CA not in its --tls-ca, or expired, or revoked by its --tls-crl: its tls_refused lines say which\) or is at its connection limit/);
  }
  const t = await load(['--revproc', String(proxyPort), '-n', '4', '-c', '2', '--tls-ca', pki.ca]);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, new RegExp(`CONNECT_FAILED 2 connection\\(s\\) of 2: could not connect to 127\\.0\\.0\\.1:${proxyPort} over TLS: the peer does not speak TLS: start it with --tls-cert and --tls-key, or dial it without TLS \\(no --tls-ca here\\)`));
});

test('a fixed count through the proxy: every request answered right, counted once, and the JSON says so', async () => {
  const r = await load(['--revproc', String(proxyPort), '--policy', '111', '-n', '2000', '-c', '3', '-p', '16', '--json']);
  assert.is(r.code, 0, r.out);
  const j = r.json!;
  assert.equal(
    Object.keys(j).sort(),
    ['answered', 'closedAllAfterS', 'closedAllBy', 'connected', 'connections', 'durationS', 'errors', 'firstError', 'firstUnexpected', 'inflight', 'latencyMs', 'mode', 'ok', 'policies', 'rate', 'requests', 'retryable', 'rps', 'seconds', 'sent', 'stoppedBy', 'targets', 'unexpected', 'unreachable', 'warmupS', 'wrongHash'].sort(),
  );
  assert.is(j.sent, 2000);
  assert.is(j.ok, 2000);
  assert.is(j.wrongHash, 0);
  assert.equal(j.errors, {});
  assert.equal(j.retryable, {});
  assert.is(j.unexpected, 0);
  assert.is(j.firstUnexpected, null);
  assert.is(j.connected, 3);
  assert.is(j.mode, 'closed loop');
  assert.is(j.requests, 2000);
  assert.is(j.durationS, null);
  assert.equal(j.targets, [`127.0.0.1:${proxyPort}`]);
  const l = j.latencyMs;
  assert.is(l.count, 2000);
  // A fixed count's window lasts until its last answer: every answer came in it.
  assert.is(j.answered, 2000);
  assert.ok(l.p50 > 0 && l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max, JSON.stringify(l));
  assert.ok(j.rps > 0 && j.seconds > 0);
});

test('a proxy that stops under load: the run ends when its last connection closes, and says so, instead of counting the rest of the duration', async () => {
  // It went on sending nothing for the rest of --duration and reported requests/s over all of it,
  // as if the target had been slow: a proxy restarted during a deploy looked like a slow one.
  const { proc: doomed, port } = await proxyProcess(['--log-level', 'debug']);
  const s = revproxy(['server', '--id', 'd', '--pp', '111', '--listen', '0', '--revproc', String(port)]);
  await s.waitFor(/Registered/);
  const run = load(['--revproc', String(port), '-d', '60s', '-R', '200', '-c', '2', '-p', '4']);
  await doomed.waitFor(/Received a message from client/);
  doomed.kill('SIGTERM');
  const r = await run;
  s.kill('SIGKILL');
  assert.match(r.out, /ended +the target closed every connection [\d.]+ s into the run, which ended there/);
  const over = Number(/requests\/s answered right over ([\d.]+) s/.exec(r.out)?.[1]);
  assert.ok(over < 60, r.out);
  assert.not.match(r.out, / 0 answered right/);
});

test('open loop: a fixed count at a fixed rate keeps to its schedule and reports the rate', async () => {
  const r = await load(['--revproc', String(proxyPort), '-n', '300', '--rate', '1000', '-c', '2', '--json']);
  assert.is(r.code, 0, r.out);
  assert.is(r.json!.ok, 300, r.out);
  assert.is(r.json!.mode, 'open loop');
  assert.is(r.json!.rate, 1000);
  // The last request is due 299 ms after the first: the run cannot be shorter.
  assert.ok(r.json!.seconds >= 0.29, `the run took ${r.json!.seconds} s: ${r.out}`);
});

test('straight to two servers (no proxy): connections spread over the listed ports', async () => {
  const r = await load(['--revproc', serverPorts.join(','), '-n', '400', '-c', '2', '--json']);
  assert.is(r.code, 0, r.out);
  assert.is(r.json!.ok, 400);
  assert.equal(r.json!.targets, serverPorts.map((p) => `127.0.0.1:${p}`));
});

test("a handler's own errors (HANDLER_ERROR) are said to be the handler's, not a socket's", async () => {
  // examples/privacy-handler.js refuses policy 222's payloads that are not JSON (NOT_JSON), as every load payload is.
  const s = revproxy(['server', '--id', 'privacy', '--pp', '222', '--listen', '0', '--revproc', String(proxyPort), '--handler', 'examples/privacy-handler.js']);
  const port = (await s.waitFor(/Listening on port (\d+)/))[1]!;
  const t = await load(['--revproc', port, '--policy', '222', '-n', '20']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, /HANDLER_ERROR 20: the servers' handler refused the requests with an application error of its own .*\(first: policy 222 takes a JSON object/);
  assert.not.match(t.out, /socket error/);
});

test('a policy nobody serves: exit 1, NO_SERVER counted for every request, and the words say what to start', async () => {
  const j = await load(['--revproc', String(proxyPort), '--policy', 'nobody', '-n', '50', '--json']);
  assert.is(j.code, 1);
  assert.equal(j.json!.errors, { NO_SERVER: 50 });
  assert.is(j.json!.ok, 0);
  const t = await load(['--revproc', String(proxyPort), '--policy', 'nobody', '-n', '50']);
  assert.is(t.code, 1);
  assert.match(t.out, /NO_SERVER 50: no server of the policy is registered with the proxy: start one \(revproxy server --id 100 --pp nobody/);
  // It said "0 requests/s" and "no answers measured" beside 50 answers, all of them errors.
  assert.match(t.out, /throughput  0 requests\/s answered right over [\d.]+ s \(every answer failed: see errors\)/);
  assert.match(t.out, /latency     no right answer to measure \(latency is of right answers only\)/);
});

test('each failure code says whether its requests may be sent again without running twice (--json retryable, and a line of the text)', async () => {
  // The errors by code did not say it: a user read NO_SERVER 2, TIMEOUT 2, CONNECTION_LOST 2 and had to know which of
  // them no handler ran (RETRYABLE, transport/errors.ts; the library's err.retryable). A fake target, to have the three in
  // one run: the proxy's answers NO_SERVER and TIMEOUT to two requests each, then the connection lost with two in flight.
  let n = 0;
  const error = (m: DataMsg, code: string): Buffer => encodeFrame({ type: MsgType.ERROR, seq: m.seq, code, message: `${code} from the fake` });
  const fake = await fakeTarget((m, s) => {
    const i = n++ % 6;
    if (i < 2) s.write(error(m, 'NO_SERVER'));
    else if (i < 4) s.write(error(m, 'TIMEOUT'));
    else if (i === 5) s.destroy();
  });
  const j = await load(['--revproc', String(fake.port), '-n', '6', '-c', '1', '-p', '6', '--json']);
  assert.is(j.code, 1, j.out);
  assert.equal(j.json!.errors, { NO_SERVER: 2, TIMEOUT: 2, CONNECTION_LOST: 2 }, j.out);
  assert.equal(j.json!.retryable, { NO_SERVER: true, TIMEOUT: false, CONNECTION_LOST: false });
  const t = await load(['--revproc', String(fake.port), '-n', '6', '-c', '1', '-p', '6']);
  assert.match(t.out, /\n  retryable   NO_SERVER \(no handler ran them: safe to send again\); not (TIMEOUT, CONNECTION_LOST|CONNECTION_LOST, TIMEOUT) \(a handler may have run them, or they would fail the same way again\)/);
  // Nothing sent on a connection that could not be opened: CONNECT_FAILED is retryable.
  const none = await fakeTarget(() => {});
  const down = (none.server.address() as { port: number }).port;
  await new Promise<void>((r) => none.server.close(() => r()));
  const d = await load(['--revproc', String(down), '-n', '2', '-c', '1', '--json']);
  assert.equal([d.json!.errors, d.json!.retryable], [{ CONNECT_FAILED: 1 }, { CONNECT_FAILED: true }], d.out);
});

test('of several policies, the one nobody serves is the one the NO_SERVER words name', async () => {
  // They named the first policy given, here the one served: "start one (revproxy server --id 100 --pp 111 ...)".
  // A connection per policy (the first gets 111): for a while, so that both send.
  const t = await load(['--revproc', String(proxyPort), '--policy', '111,nobody', '-d', '300ms', '-p', '1']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, /NO_SERVER [\d,]+: no server of policy nobody is registered with the proxy: start one \(revproxy server --id 100 --pp nobody /);
});

test('a policy nobody serves on a proxy at another address: the words give that address to register with', async () => {
  // They gave the port alone, which a server reads as 127.0.0.1: for a proxy on ::1 (or another host) the command named would register elsewhere.
  const p = revproxy(['proxy', '--host', '::1', '--port', '0']);
  const port = (await p.waitFor(/on port (\d+)/))[1]!;
  const t = await load(['--revproc', `[::1]:${port}`, '--policy', 'nobody', '-n', '5']);
  assert.is(t.code, 1, t.out);
  assert.match(t.out, new RegExp(`NO_SERVER 5: .*start one \\(revproxy server --id 100 --pp nobody --revproc \\[::1\\]:${port}, or with the --registry its fleet's servers use\\)`));
});

test('nothing listening: exit 1, CONNECT_FAILED with what the system said and what to do', async () => {
  const { freePort } = await import('../bench/procs.js');
  const port = await freePort();
  const r = await load(['--revproc', String(port), '-n', '10']);
  assert.is(r.code, 1);
  assert.match(r.out, /CONNECT_FAILED 2 connection\(s\) of 2: could not connect to 127\.0\.0\.1:\d+: start the proxy there/);
  assert.match(r.out, /ECONNREFUSED/);
});

test('more connections than this process may open (ulimit -n): CONNECT_FAILED blames the open-files limit and says what to raise, not the target', async () => {
  const p = revproxy(['load', '--no-progress', '--revproc', String(proxyPort), '--policy', '111', '-c', '200', '-p', '1', '-n', '400'], { fileLimit: 100 });
  assert.is(await p.exited, 1, p.out.join('\n'));
  const out = p.out.join('\n');
  // It used to say: could not connect to 127.0.0.1:PORT: start the proxy there - of the proxy that answered the rest.
  assert.match(out, /CONNECT_FAILED \d+ connection\(s\) of 200: this process ran out of file descriptors \(EMFILE\): it may open 100 files \(ulimit -n\), and --connections asks for 200: raise the limit in this shell \(ulimit -n 264, as root: the hard limit is 100\) or lower --connections/);
  assert.not.match(out, /start the proxy there/);
});

test('one target of two down: its connections are counted as connections, the requests add up, and only it is named', async () => {
  const { freePort } = await import('../bench/procs.js');
  const down = await freePort();
  const r = await load(['--revproc', `${proxyPort},${down}`, '--policy', '111', '-n', '400', '-c', '4', '-p', '4']);
  assert.is(r.code, 1, 'a target could not be reached');
  assert.match(r.out, /requests {4}400 sent, 400 answered right\n/, 'no request failed: the connections that never opened sent none');
  assert.match(r.out, new RegExp(`CONNECT_FAILED 2 connection\\(s\\) of 4: could not connect to 127\\.0\\.0\\.1:${down}: start the proxy there`));
  assert.not.match(r.out, new RegExp(`could not connect to [^:]*127\\.0\\.0\\.1:${proxyPort}`), 'the target that answered is not named as unreachable');
  const j = await load(['--revproc', `${proxyPort},${down}`, '--policy', '111', '-n', '400', '-c', '4', '-p', '4', '--json']);
  assert.equal(j.json!.unreachable, [`127.0.0.1:${down}`]);
});

test('usage errors exit 2 and say what to give', async () => {
  const both = await load(['-n', '10', '-d', '5s']);
  assert.is(both.code, 2);
  assert.match(both.out, /give --duration or --requests, not both/);
  const bad = await load(['-d', 'soon']);
  assert.is(bad.code, 2);
  assert.match(bad.out, /--duration must be a time such as 10, 10s, 500ms or 2m/);
  const perReq = await load(['--rate', '100', '--connection-per-request']);
  assert.is(perReq.code, 2);
  assert.match(perReq.out, /--rate works on connections kept open/);
  // Flags that would do nothing are refused, not ignored.
  const warm = await load(['-n', '10', '--warmup', '1s']);
  assert.is(warm.code, 2);
  assert.match(warm.out, /--warmup goes with --duration/);
  const depth = await load(['--connection-per-request', '-p', '8']);
  assert.is(depth.code, 2);
  assert.match(depth.out, /--inflight does not go with --connection-per-request/);
});

test('payloads past the proxy\'s frame limit: the request refused fails BAD_REQUEST, those lost with its connection CONNECTION_LOST, each once, and the words say to lower --payload-size', async () => {
  // The proxy answers one BAD_REQUEST naming no request, then closes the connection: that was counted as a failure
  // of its own besides every request lost with the connection (18 failed of 16 sent), then each of those as BAD_REQUEST.
  const j = await load(['--revproc', String(proxyPort), '-n', '20', '-c', '2', '-p', '4', '--payload-size', '2000000', '--json']);
  assert.is(j.code, 1);
  const { sent, ok, errors } = j.json!;
  assert.is(ok, 0);
  assert.ok(sent > 2);
  assert.equal(errors, { BAD_REQUEST: 2, CONNECTION_LOST: sent - 2 }, JSON.stringify(j.json));
  const t = await load(['--revproc', String(proxyPort), '-n', '4', '-c', '1', '-p', '4', '--payload-size', '2000000']);
  assert.match(t.out, /BAD_REQUEST 1: the requests are larger than the target takes \(its --max-frame, 1 MiB by default\): lower --payload-size \(2000000\)/);
  assert.match(t.out, /CONNECTION_LOST 3: the target said why it closes a connection .*\(first: closed by the target after it said BAD_REQUEST: frame at byte 0 declares \d+ bytes, over the limit of \d+/);
});

test('a target that closes a connection after an ERROR about it: the requests lost count CONNECTION_LOST, not under its code; a stopped proxy\'s SHUTTING_DOWN, which says they were not read, under its own', async () => {
  // A server cutting a connection at its buffer budget says OVERLOADED naming no request: its requests in flight were
  // counted OVERLOADED, a refusal that runs none of the work, though they were at its handlers.
  const cut = (code: string, message: string) => fakeTarget((() => {
    const seen = new WeakMap<Socket, number>();
    return (m: DataMsg, socket: Socket) => {
      const n = (seen.get(socket) ?? 0) + 1;
      seen.set(socket, n);
      if (n === 1) socket.write(ack(m));
      // The second request read: the word about the connection, and the close.
      else if (n === 2) socket.end(encodeFrame({ type: MsgType.ERROR, code, message }));
    };
  })());
  const overloaded = await cut('OVERLOADED', 'this connection holds the most of a full buffer budget: closed');
  const o = await load(['--revproc', String(overloaded.port), '-n', '4', '-c', '1', '-p', '4', '--json']);
  assert.equal([o.json!.sent, o.json!.ok, o.json!.errors], [4, 1, { CONNECTION_LOST: 3 }], o.out);
  assert.equal(o.json!.firstError.CONNECTION_LOST, 'closed by the target after it said OVERLOADED: this connection holds the most of a full buffer budget: closed');
  assert.equal(o.json!.retryable, { CONNECTION_LOST: false });
  // A refusal after an answer is of the oldest request unanswered: one BAD_REQUEST, the rest lost.
  const refused = await cut('BAD_REQUEST', 'not a request: closed');
  const r = await load(['--revproc', String(refused.port), '-n', '4', '-c', '1', '-p', '4', '--json']);
  assert.equal([r.json!.sent, r.json!.ok, r.json!.errors], [4, 1, { BAD_REQUEST: 1, CONNECTION_LOST: 2 }], r.out);
  const stopped = await cut('SHUTTING_DOWN', 'the proxy has stopped and closes this connection: a request sent on it and not answered was not read; send it to another proxy');
  const s = await load(['--revproc', String(stopped.port), '-n', '4', '-c', '1', '-p', '4', '--json']);
  assert.equal([s.json!.sent, s.json!.ok, s.json!.errors], [4, 1, { SHUTTING_DOWN: 3 }], s.out);
});

test.run();
