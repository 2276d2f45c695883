/**
 * Upgrading a running deployment one piece at a time (README, "Upgrading"; docs/PROTOCOL.md,
 * "Compatibility"): what an older or a newer peer sends is read, and what this build writes is
 * read by older ones.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server, type Socket } from 'node:net';
import { connect, startProxy, type ProxyHandle } from '../lib/index.js';
import { FrameDecoder } from '../transport/frame.js';
import { JsonDecoder } from '../transport/json.js';
import { MsgType, type Message } from '../transport/messages.js';
import { eventually, frame, LOCAL, rawConnect } from './helpers.js';

/** What a newer peer might send: an error code this build has never heard of. */
const NEWER = { code: 'RATE_LIMITED', message: 'slow down' };

const open: Array<{ close(): unknown }> = [];
test.after.each(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

/** A TCP peer on a free loopback port that answers each decoded message with `answer`; `conns` counts its connections. */
async function peer(answer: (m: Message, sock: Socket) => void): Promise<{ port: number; conns: number }> {
  const state = { port: 0, conns: 0 };
  const socks = new Set<Socket>();
  const server: Server = createServer((sock) => {
    state.conns++;
    socks.add(sock);
    const decoder = new FrameDecoder();
    sock.on('data', (chunk: Buffer) => decoder.push(chunk).messages.forEach((m) => answer(m, sock)));
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, LOCAL, r));
  open.push({ close: () => new Promise((r) => server.close(r)) }, { close: () => socks.forEach((s) => s.destroy()) });
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
  // What a proxy from before binary payloads (a992239) answered a DATA with a bin payload, then closed.
  const older = await peer((m, sock) => sock.end(frame({ type: MsgType.ERROR, code: 'BAD_REQUEST', message: "field 'payload' must be a string, got binary" })));
  const client = await connect({ revproc: older.port, maxAttempts: 1 });
  open.push({ close: () => client.close() });
  const e = await client.request('P', new Uint8Array([1, 2])).then(() => undefined, (err: { code: string; message: string }) => err);
  assert.is(e?.code, 'CONNECT_FAILED');
  assert.match(e!.message, `the reverse proxy at 127.0.0.1:${older.port} ended the connection saying BAD_REQUEST: field 'payload' must be a string, got binary`);
});

test.run();
