/**
 * Upgrading a running deployment one piece at a time (README, "Upgrading"; docs/PROTOCOL.md,
 * "Compatibility"): what an older or a newer peer sends is read, and what this build writes is
 * read by older ones.
 *
 * spec/fixtures/upgrade/recorded.json holds what the real programs of two older commits sent and
 * wrote - a992239 (the end of the first sessions) and 94a8441 (the end of the last session but
 * two) - its "about" says how each was recorded. Building old commits here would be too slow: the
 * recordings stand for them. Checked by hand with the real builds as well (README, "Upgrading").
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { ManualClock, runClient } from '../actors/index.js';
import { connect, startProxy, startServer, type ProxyHandle } from '../lib/index.js';
import { decodeProxy, decodeServer, encodeProxy, encodeServer, PROXIES, SERVERS } from '../registry/keys.js';
import { proofHolds } from '../registry/proof.js';
import { ERROR_CODES } from '../transport/errors.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { JsonDecoder } from '../transport/json.js';
import { MsgType, type Message } from '../transport/messages.js';
import { Logger, memorySink, type LogRecord } from '../actors/logger.js';
import { eventually, frame, LOCAL, rawConnect } from './helpers.js';
import { revproxy } from './procs.js';
import { makePki } from './certs.js';
import { loadTls } from '../transport/tls.js';

const sha1 = (s: string): string => createHash('sha1').update(s).digest('hex');

/** What a newer peer might send: an error code this build has never heard of. */
const NEWER = { code: 'RATE_LIMITED', message: 'slow down' };

const open: Array<{ close(): unknown }> = [];
test.after.each(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

/** A TCP peer on a free loopback port (or `port`) that answers each decoded message with `answer`; `conns` counts its connections, `close()` stops it. */
async function peer(answer: (m: Message, sock: Socket) => void, port = 0): Promise<{ port: number; conns: number; close(): Promise<void> }> {
  const state = { port: 0, conns: 0, close: async () => {} };
  const socks = new Set<Socket>();
  const server: Server = createServer((sock) => {
    state.conns++;
    socks.add(sock);
    const decoder = new FrameDecoder();
    sock.on('data', (chunk: Buffer) => decoder.push(chunk).messages.forEach((m) => answer(m, sock)));
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(port, LOCAL, r));
  state.close = async () => {
    socks.forEach((s) => s.destroy());
    if (server.listening) await new Promise((r) => server.close(r));
  };
  open.push(state);
  state.port = (server.address() as { port: number }).port;
  return state;
}

/** A newer server: it refuses the payload `refuse` with the newer code and answers the rest. */
function newerServerAnswer(m: Message, sock: Socket): void {
  if (m.type === MsgType.PING) sock.write(frame({ type: MsgType.PONG, seq: m.seq }));
  if (m.type !== MsgType.DATA) return;
  if (m.payload === 'refuse') sock.write(frame({ type: MsgType.ERROR, seq: m.seq, ...NEWER }));
  else sock.write(frame({ type: MsgType.ACK, seq: m.seq, srcid: 'newer', destid: m.srcid, payload: 'fine', payloadsize: 4 }));
}

test('an ERROR with an error code this build does not know is read as UPSTREAM_FAILED naming it, on both wires; a value not shaped like a code is still refused', () => {
  const r = new FrameDecoder().push(frame({ type: 3, seq: 7, ...NEWER }));
  assert.is(r.error, undefined);
  assert.equal(r.messages, [{ type: 3, seq: 7, code: 'UPSTREAM_FAILED', message: 'RATE_LIMITED (an error code this revproxy does not know, from a newer peer): slow down' }]);
  const j = new JsonDecoder().push(Buffer.from('{"type": "3", "code": "RATE_LIMITED", "message": "slow down"}'));
  assert.is(j.error, undefined);
  assert.is((j.messages[0] as { code: string }).code, 'UPSTREAM_FAILED');
  for (const code of ['rate limited', 'x'.repeat(65), '']) {
    const bad = new FrameDecoder().push(frame({ type: 3, seq: 7, code, message: 'm' }));
    assert.is(bad.error?.code, 'BAD_REQUEST', code);
  }
});

test("a server's answer with a newer error code fails that request alone: the link stays and the next request is answered on it", async () => {
  const proxy: ProxyHandle = await startProxy({ port: 0 });
  open.push({ close: () => proxy.stop() });
  const server = await peer(newerServerAnswer);
  const reg = await rawConnect(proxy.port);
  open.push({ close: () => reg.destroy() });
  reg.on('data', (d: Buffer) => new FrameDecoder().push(d).messages.forEach((m) => m.type === MsgType.PING && reg.write(frame({ type: MsgType.PONG, seq: m.seq }))));
  reg.write(frame({ type: 1, id: 'newer', privPolyId: 'P', listenport: server.port }));
  await eventually(() => proxy.pools().P?.serving.includes('newer') ?? false, 3000, 'the newer server serving');
  const client = await connect({ revproc: proxy.port });
  open.push({ close: () => client.close() });
  const refused = await client.request('P', 'refuse').then(() => undefined, (e: { code: string; message: string }) => e);
  assert.is(refused?.code, 'UPSTREAM_FAILED', 'a failed try, as any error answer but HANDLER_ERROR');
  assert.is(await client.request('P', 'next'), 'fine');
  assert.is(server.conns, 1, 'one link to the server, never closed');
});

test("a proxy's answer with a newer error code fails that request alone: the client's connection stays", async () => {
  const proxy = await peer((m, sock) => {
    if (m.type === MsgType.PING) sock.write(frame({ type: MsgType.PONG, seq: m.seq }));
    if (m.type !== MsgType.DATA) return;
    if (m.payload === 'refuse') sock.write(frame({ type: MsgType.ERROR, seq: m.seq, ...NEWER }));
    else sock.write(frame({ type: MsgType.ACK, seq: m.seq, srcid: 's', destid: m.srcid, payload: 'fine', payloadsize: 4 }));
  });
  const client = await connect({ revproc: proxy.port });
  open.push({ close: () => client.close() });
  const refused = await client.request('P', 'refuse').then(() => undefined, (e: { code: string; message: string }) => e);
  assert.is(refused?.code, 'UPSTREAM_FAILED');
  assert.match(refused!.message, /^RATE_LIMITED \(an error code this revproxy does not know/);
  assert.is(await client.request('P', 'next'), 'fine');
  assert.is(proxy.conns, 1, 'one connection to the proxy');
});

test("a proxy that ends the connection refusing what the client sent (an older proxy and a binary payload) is named with its reason, not 'closed the connection'", async () => {
  // What a proxy from before binary payloads (a992239) answered a DATA with a bin payload, then closed. It answered
  // nothing before (an old proxy takes no PING): the client cannot tell a refusal of the request from one of the
  // connection (a PROXY header wanted, say), and fails over as after a lost connection, naming the proxy's reason.
  // One try, not held (hold: false): held, the request went back to this proxy with backoff until its timeout, and the
  // verdict depended on when that ended - in an outage (CONNECT_FAILED naming the reason) or in the millisecond or so a
  // connection was up before the proxy ended it (CLIENT_TIMEOUT): CI drew the second once, at load. Both are
  // CONNECT_FAILED now (the next two tests, on a manual clock); one try stays the quicker test.
  const older = await peer((m, sock) => sock.end(frame({ type: MsgType.ERROR, code: 'BAD_REQUEST', message: "field 'payload' must be a string, got binary" })));
  const client = await connect({ revproc: older.port, maxAttempts: 1, hold: false });
  open.push({ close: () => client.close() });
  const e = await client.request('P', new Uint8Array([1, 2])).then(() => undefined, (err: { code: string; message: string }) => err);
  assert.is(e?.code, 'CONNECT_FAILED');
  assert.match(e!.message, `the reverse proxy at 127.0.0.1:${older.port} ended the connection saying BAD_REQUEST: field 'payload' must be a string, got binary`);
});

/**
 * An older proxy (it refuses a PING, and a binary payload, BAD_REQUEST, closing the connection) that, once `then` is
 * set, refuses the PING still but not at once what comes next - the moment between the client's connection without a
 * PING and the proxy ending it, held still: 'silent', it keeps the requests it reads unanswered (`waiting` counts them),
 * all but one whose payload is 'answer', which it answers; 'says', it refuses the first as before, but does not close
 * the connection yet.
 */
async function refusingOlderProxy(): Promise<{ port: number; conns: number; then?: 'silent' | 'says'; waiting: number; close(): Promise<void> }> {
  const state: { then?: 'silent' | 'says'; waiting: number } = { waiting: 0 };
  const refusal = frame({ type: MsgType.ERROR, code: 'BAD_REQUEST', message: "field 'payload' must be a string, got binary" });
  const older = await peer((m, sock) => {
    if (sock.writableEnded) return; // it reads nothing after what it refused
    if (m.type === MsgType.PING) sock.end(frame({ type: MsgType.ERROR, code: 'BAD_REQUEST', message: 'message type 4 is not allowed as a first message' }));
    else if (m.type !== MsgType.DATA) return;
    else if (state.then === undefined) sock.end(refusal);
    else if (state.then === 'says' && state.waiting === 0) {
      state.waiting++;
      sock.write(refusal);
    }
    else if (m.payload === 'answer') sock.write(frame({ type: MsgType.ACK, seq: m.seq, srcid: 's', destid: m.srcid, payload: 'fine', payloadsize: 4 }));
    else state.waiting++;
  });
  return Object.defineProperties(older, {
    then: { get: () => state.then, set: (v: 'silent' | 'says') => (state.then = v) },
    waiting: { get: () => state.waiting },
  }) as typeof older & typeof state;
}

/**
 * A client on a manual clock holds `requests` (sent together: the proxy refuses the first and ends the connection, the
 * client holds them and backs off); the proxy set to `then`, the client's clock is moved past the pause: it dials again,
 * PINGs, is refused, dials without a PING (reached: the outage is over) and sends the held requests, which wait there.
 */
async function heldOnOlderProxy(requests: Array<{ payload: string | Uint8Array; timeoutMs: number }>, then: 'silent' | 'says' = 'silent') {
  const older = await refusingOlderProxy();
  const clock = new ManualClock();
  const client = await connect({ revproc: older.port, clock, maxAttempts: 1, failoverDelayMs: 100, reconnectMaxDelayMs: 100 });
  open.push({ close: () => client.destroy() }); // close() would wait for the held requests, whose timeouts run on the manual clock
  const start = clock.now();
  const outcomes = requests.map(({ payload, timeoutMs }) => client.request('P', payload, { timeoutMs }).then((a) => ({ code: 'OK', message: String(a) }), (e: { code: string; message: string }) => e));
  await eventually(() => client.actor.getSnapshot().matches('backoff'), 3000, 'the requests held, the client backing off');
  older.then = then;
  clock.advance(100);
  const sent = requests.filter((r) => r.payload !== 'answer').length;
  await eventually(() => older.waiting === sent, 3000, 'the held requests sent again, on a connection without a PING');
  // What it says is read before the clock moves on (a fixed sleep lost that race at load): why it closes the connection, or an answer.
  const book = client.actor.getSnapshot().context.book;
  if (then === 'says') await eventually(() => book.closing, 3000, 'the proxy said it closes the connection');
  if (requests.some((r) => r.payload === 'answer')) await eventually(() => book.answers > 0, 3000, 'the answer read');
  return { older, clock, client, start, outcomes };
}

test("a request held while an older proxy refused it, whose timeout ends on the client's next connection to it, before that proxy said anything there, fails as in the outage (CONNECT_FAILED naming the refusal), not CLIENT_TIMEOUT", async () => {
  // The client's connection without a PING counts as reached at once (an older proxy answers no PING), ending the
  // outage; the proxy ends it a moment later, refusing the request again. Whether the request's timeout ended in that
  // moment or in the outage around it decided its verdict: CI drew CLIENT_TIMEOUT "no answer within the request's
  // timeout" once, at load, where every other run said CONNECT_FAILED naming the proxy's reason.
  const { older, clock, client, start, outcomes } = await heldOnOlderProxy([{ payload: new Uint8Array([1, 2]), timeoutMs: 1000 }]);
  // A request sent on that connection after the reconnect, its timeout ending as near it: the proxy left it unanswered.
  clock.advance(10);
  const later = client.request('P', 'later', { timeoutMs: 1000 }).then(() => undefined, (e: { code: string; message: string }) => e);
  await eventually(() => older.waiting === 2, 3000, 'the later request sent');
  clock.advance(start + 1000 - clock.now());
  const held = await outcomes[0]!;
  assert.is(held.code, 'CONNECT_FAILED', held.message);
  assert.match(held.message, /^no reverse proxy could be reached for 1000 ms \(/);
  assert.match(held.message, `the last try: the reverse proxy at 127.0.0.1:${older.port} ended the connection saying BAD_REQUEST: field 'payload' must be a string, got binary`);
  clock.advance(110);
  const e = await later;
  assert.is(e?.code, 'CLIENT_TIMEOUT', e?.message);
  // The moment after the proxy said why it closes the connection (an ERROR naming no request), before it closed it.
  const says = await heldOnOlderProxy([{ payload: new Uint8Array([1, 2]), timeoutMs: 1000 }], 'says');
  assert.ok(says.client.actor.getSnapshot().context.book.closing, 'the proxy said it closes the connection');
  says.clock.advance(says.start + 1000 - says.clock.now());
  const refused = await says.outcomes[0]!;
  assert.is(refused.code, 'CONNECT_FAILED', refused.message);
});

test('a request held while an older proxy refused it stays CLIENT_TIMEOUT on the next connection to it once that proxy answered something there, or once it has been silent there past connectTimeoutMs', async () => {
  const answered = await heldOnOlderProxy([{ payload: 'answer', timeoutMs: 5000 }, { payload: new Uint8Array([1]), timeoutMs: 1000 }]);
  answered.clock.advance(answered.start + 1000 - answered.clock.now());
  assert.equal(await answered.outcomes[0], { code: 'OK', message: 'fine' });
  assert.is((await answered.outcomes[1])!.code, 'CLIENT_TIMEOUT', 'the proxy answered on that connection');
  // Silent past connectTimeoutMs (2000 ms), as long as a PINGed proxy may take to answer the first PING: silent, not unreached.
  const silent = await heldOnOlderProxy([{ payload: new Uint8Array([1]), timeoutMs: 3000 }]);
  silent.clock.advance(silent.start + 3000 - silent.clock.now());
  const e = await silent.outcomes[0]!;
  assert.is(e.code, 'CLIENT_TIMEOUT', e.message);
});

test('on the json wire (no PING on any connection) a request held through an outage and sent again to a proxy silent there ends CLIENT_TIMEOUT, not as in the outage', async () => {
  // The rule above is for a binary-wire proxy older than client PINGs. On the json wire every connection is made without
  // a PING and no older proxy refuses a binary payload: a request sent again to a proxy that keeps it unanswered was
  // left unanswered there (the review of the rule found it said "no reverse proxy could be reached" for it).
  let conns = 0;
  const server = createServer((sock) => {
    const first = ++conns === 1;
    sock.on('error', () => {});
    sock.on('data', () => {
      if (first) sock.destroy(); // the first connection lost with the request on it: an outage
    });
  });
  await new Promise<void>((r) => server.listen(0, LOCAL, r));
  open.push({ close: () => new Promise((r) => server.close(r)) });
  const port = (server.address() as { port: number }).port;
  const clock = new ManualClock();
  const client = await connect({ revproc: port, wire: 'json', clock, maxAttempts: 1, failoverDelayMs: 100, reconnectMaxDelayMs: 100 });
  open.push({ close: () => client.destroy() });
  const start = clock.now();
  const outcome = client.request('P', 'hello', { timeoutMs: 1000 }).then(() => undefined, (e: { code: string; message: string }) => e);
  await eventually(() => client.actor.getSnapshot().matches('backoff'), 3000, 'the request held, the client backing off');
  clock.advance(100);
  await eventually(() => conns === 2 && client.actor.getSnapshot().context.book.inFlight === 1, 3000, 'the request sent again on the next connection');
  clock.advance(start + 1000 - clock.now());
  const e = await outcome;
  assert.is(e?.code, 'CLIENT_TIMEOUT', e?.message);
});

/** A proxy of 942d779 and before, on a free port (or `port`): it refuses a PING as the first message of a connection, as that build does (checked with it), and closes it; it answers DATA. */
async function olderProxy(port = 0): Promise<{ port: number; conns: number; pings: number; requests: number; close(): Promise<void> }> {
  let pings = 0;
  let requests = 0;
  const older = await peer((m, sock) => {
    if (sock.writableEnded) return; // it reads nothing after what it refused
    if (m.type === MsgType.PING) {
      pings++;
      sock.end(frame({ type: MsgType.ERROR, code: 'BAD_REQUEST', message: 'message type 4 is not allowed as a first message' }));
    } else if (m.type === MsgType.DATA && ++requests) sock.write(frame({ type: MsgType.ACK, seq: m.seq, srcid: 's', destid: m.srcid, payload: 'fine', payloadsize: 4 }));
  }, port);
  return Object.defineProperties(older, { pings: { get: () => pings }, requests: { get: () => requests } }) as typeof older & { pings: number; requests: number };
}

test('a client meets a proxy from before client PINGs: the PING it sends first, with nothing in flight, is refused and the connection closed; it dials again, PINGs that proxy no more on that connection, and is answered', async () => {
  const older = await olderProxy();
  const client = await connect({ revproc: older.port });
  open.push({ close: () => client.close() });
  for (let i = 0; i < 3; i++) assert.is(await client.request('P', `x${i}`), 'fine');
  assert.is(older.pings, 1, 'one PING, refused');
  assert.is(older.conns, 2, 'the refused connection, then one without PINGs');
});

test('requests sent right behind the first PING to a proxy from before client PINGs are sent again on the next connection, each answered once', async () => {
  const older = await olderProxy();
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: older.port }, verify: false, packets: ['a', 'b', 'c'].map((payload) => ({ srcid: 'c', privPoliId: 'P', payload })) });
  assert.equal(results.map((r) => r.answer ?? r.error), ['fine', 'fine', 'fine']);
  assert.equal([older.pings, older.conns, older.requests], [1, 2, 3], 'one PING refused with the requests behind it unread; each request read once, on the next connection');
});

test('a client that met a proxy from before client PINGs PINGs again once a new proxy is in its place: a proxy stalled under it is then found by PINGs, not by a request\'s timeout', async () => {
  // The proxy that refused a PING was never PINGed again by that client, even once upgraded and
  // restarted under it: a long-lived client kept the slow detection of a silent cut for life.
  const records: LogRecord[] = [];
  const older = await olderProxy();
  const client = await connect({ revproc: older.port, timeoutMs: 60_000, failoverDelayMs: 10, logger: new Logger('client', memorySink(records), 'debug') });
  open.push({ close: () => client.destroy() });
  assert.is(await client.request('P', 'old'), 'fine');
  // The old proxy restarted, still old: PINGed again on the new connection, refused again, and the warn line not said again.
  await older.close();
  const again = await olderProxy(older.port);
  assert.is(await client.request('P', 'old again'), 'fine');
  assert.is(again.pings, 1, 'PINGed again after the restart');
  assert.equal(records.filter((r) => r.event === 'no_pings').map((r) => r.level), ['warn', 'debug'], 'one warn line for the proxy');
  // Upgraded: a real proxy of this build in its place.
  await again.close();
  const proxy = revproxy(['proxy', '--host', LOCAL, '-port', String(older.port)]);
  open.push({ close: () => proxy.kill('SIGKILL') });
  await proxy.waitFor(/Running the reverse proxy/);
  const server = await startServer({ id: 's', policy: 'P', revproc: older.port });
  open.push({ close: () => server.kill() });
  await eventually(async () => (await client.request('P', 'new').catch(() => '')) === sha1('new'), 5000, 'an answer through the new proxy');
  assert.ok(records.some((r) => r.event === 'pings' && r.level === 'info'), 'it says the proxy answers PINGs now');
  // The proxy stalls (SIGSTOP) with a request on it: the client PINGs it after 1 s of silence and gives it up 2 s later.
  proxy.kill('SIGSTOP');
  client.request('P', 'into the stall').catch(() => {});
  await eventually(() => records.some((r) => /said nothing within \d+ ms of a PING/.test(r.msg)), 10_000, 'the connection given up by its PINGs');
});

interface Recorded {
  frames: Record<string, string[]>;
  reads: { types: number[]; errorCodes: string[]; payload: string[] };
  etcd?: Array<{ key: string; value: string }>;
}
const recorded = JSON.parse(readFileSync(new URL('fixtures/upgrade/recorded.json', import.meta.url), 'utf8')) as Record<'a992239' | '94a8441', Recorded>;

/** What each recorded connection carried, by message type, as this build reads it. */
const expectedTypes: Record<string, number[]> = {
  'server: registration connection': [MsgType.SETUP, MsgType.PONG, MsgType.DEREGISTER],
  'client: data': [MsgType.DATA, MsgType.DATA],
  'proxy: registration connection': [MsgType.PING, MsgType.PING],
  'proxy: upstream link': [MsgType.PING, MsgType.DATA],
  'proxy: client connection': [MsgType.ERROR, MsgType.ACK],
};

for (const commit of ['a992239', '94a8441'] as const) {
  test(`every frame a real ${commit} server, client and proxy sent is read by this build, and written back as the same bytes`, () => {
    for (const [what, frames] of Object.entries(recorded[commit].frames)) {
      const got = frames.map((hex) => {
        const bytes = Buffer.from(hex, 'hex');
        const r = new FrameDecoder().push(bytes);
        assert.is(r.error, undefined, `${commit} ${what}: ${r.error?.message}`);
        assert.is(r.messages.length, 1);
        // The same bytes from this build's encoder: an older peer reads what this build writes as it reads its own.
        assert.is(encodeFrame({ ...r.messages[0]! }).toString('hex'), hex, `${commit} ${what}`);
        return r.messages[0]!;
      });
      if (expectedTypes[what]) assert.equal(got.map((m) => m.type), expectedTypes[what], `${commit} ${what}`);
    }
    const upstream = recorded[commit].frames['server: upstream link']!.map((h) => new FrameDecoder().push(Buffer.from(h, 'hex')).messages[0]!);
    assert.equal(upstream.slice(0, 2).map((m) => m.type), [MsgType.PONG, MsgType.ACK], 'a PONG, and the ACK of the DATA that carried timeoutms (a field it did not know, ignored)');
  });
}

test('a server from before binary payloads refuses one and closes the link (the proxy retries the request elsewhere); one from after answers it', () => {
  const last = (c: 'a992239' | '94a8441') => new FrameDecoder().push(Buffer.from(recorded[c].frames['server: upstream link']!.at(-1)!, 'hex')).messages[0]!;
  assert.equal(last('a992239'), { type: MsgType.ERROR, code: 'BAD_REQUEST', message: "field 'payload' must be a string, got binary" });
  assert.is(last('94a8441').type, MsgType.ACK);
});

test('the error codes this build may send that an older build cannot read are the ones README "Upgrading" names', () => {
  const unread = (c: 'a992239' | '94a8441') => ERROR_CODES.filter((code) => !recorded[c].reads.errorCodes.includes(code));
  // A new code lands here first: name it in README "Upgrading" and docs/PROTOCOL.md "Compatibility", then add it.
  assert.equal(unread('a992239'), ['HANDLER_ERROR', 'REMOVED']);
  assert.equal(unread('94a8441'), []);
  for (const c of ['a992239', '94a8441'] as const) assert.equal(recorded[c].reads.types, [0, 1, 2, 3, 4, 5, 6], 'no message type was added');
});

test("the etcd entries a real 94a8441 proxy and server wrote are read by this build, and this build writes them byte for byte", () => {
  const entries = recorded['94a8441'].etcd!;
  const prefix = '/revproxy/';
  assert.equal(entries.map((e) => e.key.slice(prefix.length).split('/')[0] + '/').sort(), [PROXIES, PROXIES, SERVERS, SERVERS]);
  for (const { key, value } of entries) {
    const name = key.slice(prefix.length);
    if (name.startsWith(SERVERS)) {
      const e = decodeServer(name.slice(SERVERS.length), value);
      assert.type(e, 'object', `${key}: ${String(e)}`);
      assert.is(encodeServer(e as Exclude<typeof e, string>), value, key);
      if (typeof e !== 'string' && e.proof) assert.ok(proofHolds('s3cret', e, e.proof), 'the proof of a server registered with --token s3cret holds here');
      // A draining server's record is this one plus `leaving`, which that build (it keeps the fields it knows) reads as unchanged.
      if (typeof e !== 'string') assert.equal(JSON.parse(encodeServer({ ...e, leaving: true })), { ...JSON.parse(value), leaving: true });
    } else {
      const e = decodeProxy(value);
      assert.type(e, 'object', `${key}: ${String(e)}`);
      assert.is(encodeProxy(e as Exclude<typeof e, string>), value, key);
    }
  }
  assert.ok(entries.some((e) => e.value.includes('"proof"')) && entries.some((e) => e.value.includes('"tls":true')), 'a proof and a TLS proxy among them');
});

test("a server's etcd entry says whether its port serves TLS (`tls`, after `wire`); an entry without it (an older server's) reads and writes back as it was; any other value is refused with a reason", () => {
  const at = { id: '7', policy: '111', address: '10.0.0.7', port: 2107, wire: 'frames' as const };
  for (const tls of [true, false]) {
    const value = encodeServer({ ...at, tls, proof: 'ab' });
    assert.is(value, `{"v":1,"id":"7","policy":"111","address":"10.0.0.7","port":2107,"wire":"frames","tls":${tls},"proof":"ab"}`);
    assert.equal(decodeServer('7', value), { ...at, tls, proof: 'ab' });
  }
  // Builds from the registry's first (35a3758) to 94a8441 read it as the entry without the field: checked with their decodeServer.
  const older = `{"v":1,"id":"7","policy":"111","address":"10.0.0.7","port":2107,"wire":"frames"}`;
  assert.equal(decodeServer('7', older), at, 'no tls: dialled as every server');
  assert.is(encodeServer(decodeServer('7', older) as typeof at), older);
  assert.is(decodeServer('7', JSON.stringify({ ...at, v: 1, tls: 'yes' })), 'its tls is "yes"; expected true or false');
});

test("an etcd entry with fields a newer revproxy added under version 1 is read; one of another version is refused with a reason", () => {
  const newer = { v: 1, id: '7', policy: '111', address: '10.0.0.7', port: 2107, wire: 'frames', weight: 3, zone: 'b' };
  assert.equal(decodeServer('7', JSON.stringify(newer)), { id: '7', policy: '111', address: '10.0.0.7', port: 2107, wire: 'frames' });
  assert.equal(decodeProxy(JSON.stringify({ v: 1, address: '10.0.0.1', port: 2100, tls: false, draining: true })), { address: '10.0.0.1', port: 2100, tls: false });
  assert.is(decodeServer('7', JSON.stringify({ ...newer, v: 2 })), 'it has version 2; this revproxy reads version 1');
});

test("a proxy's etcd entry names its start (instance, since 2026-12-06): written and read back; an older proxy's, without it, reads as before", () => {
  const mine = { address: '10.0.0.1', port: 2100, tls: false, instance: '0123456789abcdef' };
  assert.is(encodeProxy(mine), '{"v":1,"address":"10.0.0.1","port":2100,"tls":false,"instance":"0123456789abcdef"}');
  assert.equal(decodeProxy(encodeProxy(mine)), mine);
  assert.equal(decodeProxy('{"v":1,"address":"10.0.0.1","port":2100,"tls":false}'), { address: '10.0.0.1', port: 2100, tls: false });
  // Not text: read as absent (the entry serves; only a restart goes untold).
  assert.equal(decodeProxy(JSON.stringify({ v: 1, address: '10.0.0.1', port: 2100, tls: false, instance: 7 })), { address: '10.0.0.1', port: 2100, tls: false });
});

/** The first frame a proxy sends on a registration connection after a SETUP (its acceptance PING), as bytes. */
async function acceptance(port: number, id = 'reg'): Promise<Buffer> {
  const reg = await rawConnect(port);
  open.push({ close: () => reg.destroy() });
  const first = new Promise<Buffer>((done) => reg.once('data', (d: Buffer) => done(d)));
  reg.write(frame({ type: 1, id, privPolyId: 'P', listenport: 1 }));
  return first;
}

test("a proxy verifying upstream_tls.server_name names it in the PING that accepts a registration (serverName, since 2026-12-07); one without it sends the PING a real 94a8441 proxy sent, byte for byte", async () => {
  const plain = await startProxy({ port: 0 });
  open.push({ close: () => plain.stop() });
  const recordedPing = recorded['94a8441'].frames['proxy: registration connection']![0]!;
  assert.is((await acceptance(plain.port)).toString('hex'), recordedPing, 'as before: {type: 4, seq: 0}');
  assert.is(recorded.a992239.frames['proxy: registration connection']![0], recordedPing);
  const pki = makePki([]);
  const named = await startProxy({ port: 0, upstreamTls: { ca: readFileSync(pki.ca), serverName: 'servers.internal' } });
  open.push({ close: () => named.stop() });
  const ping = new FrameDecoder().push(await acceptance(named.port));
  assert.equal(ping.messages, [{ type: MsgType.PING, seq: 0, serverName: 'servers.internal' }]);
  // Its reload changes the name said to the registrations that follow.
  named.renewTls({ upstreamTls: { ca: readFileSync(pki.ca), serverName: 'other.internal' } });
  assert.equal(new FrameDecoder().push(await acceptance(named.port, 'reg2')).messages, [{ type: MsgType.PING, seq: 0, serverName: 'other.internal' }]);
  // The PING decoders of a992239 and 94a8441 read `seq` alone (`case MsgType.PING: return { type: 4, seq }`): a real
  // 94a8441 server registered with such a proxy and answered its PINGs (checked by hand). This build passes by a
  // value that is no name, as it passes by a `maxFrame` that is no size.
  for (const bad of ['', 7, 'x'.repeat(254)]) {
    assert.equal(new FrameDecoder().push(frame({ type: MsgType.PING, seq: 0, serverName: bad })).messages, [{ type: MsgType.PING, seq: 0 }], String(bad));
  }
});

test("a server of this build checks its certificate against the name a newer proxy says it verifies, and against its address with an older proxy (no serverName), as before", async () => {
  // A certificate naming servers.internal alone (no IP: entry for 127.0.0.1, the address its registration comes from).
  const back = makePki(['server'], 'servers CA', { sans: { server: 'DNS:servers.internal' } });
  const standIn = (ping: Buffer) => peer((m, sock) => {
    if (m.type === MsgType.SETUP) sock.write(ping);
  });
  const registered = async (ping: Buffer): Promise<LogRecord[]> => {
    const proxy = await standIn(ping);
    const logs: LogRecord[] = [];
    const s = await startServer({ id: 's', policy: 'P', listenPort: 0, revproc: proxy.port, tls: loadTls(back.cert('server')), plainRegistration: true, logger: new Logger('server', memorySink(logs), 'info') });
    open.push({ close: () => s.kill() });
    assert.ok(logs.some((l) => l.event === 'registered'), JSON.stringify(logs));
    return logs.filter((l) => /^certificate_not_for/.test(String(l.event)));
  };
  // An older proxy's acceptance, as 94a8441 sent it: it verifies the address, and the certificate does not name it.
  const older = await registered(Buffer.from(recorded['94a8441'].frames['proxy: registration connection']![0]!, 'hex'));
  assert.equal(older.map((l) => [l.event, l.level]), [['certificate_not_for_address', 'error']]);
  assert.match(older[0]!.msg, /checks that this server's certificate \(--tls-cert\) names that address: the certificate names DNS:servers\.internal, not 127\.0\.0\.1/);
  // A newer proxy saying it verifies servers.internal: the certificate carries it, and nothing is said (it said the address line, falsely).
  assert.equal(await registered(frame({ type: MsgType.PING, seq: 0, serverName: 'servers.internal' })), []);
  // One verifying another name: said at error, in the proxy's words.
  const other = await registered(frame({ type: MsgType.PING, seq: 0, serverName: 'db.internal' }));
  assert.equal(other.map((l) => [l.event, l.level]), [['certificate_not_for_name', 'error']]);
  assert.match(other[0]!.msg, /it verifies the name db\.internal in this server's certificate \(--tls-cert\), as it said accepting this registration: the server's TLS certificate names DNS:servers\.internal, not db\.internal/);
});

test.run();
