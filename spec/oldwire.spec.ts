/**
 * Drop-in for the old system (issue 3): its Python servers and clients work
 * unchanged through our proxy, and ours through its proxy. The Python programs
 * in spec/fixtures/ behave on the wire as ../shared/seed/README.md describes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runClient, startProxy, startServer, sha1Hex, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { JsonDecoder } from '../transport/json.js';
import type { Message } from '../transport/messages.js';
import { eventually, LOCAL, rawConnect } from './helpers.js';
import { killAll, python, revproxy, type Proc } from './procs.js';

interface Ctx {
  proxy: ProxyHandle;
  servers: ServerHandle[];
  closers: Array<() => void>;
}
const ctx = {} as Ctx;

const pkt = (name: string): string => join('pktfiles', `${name}.json`);

function members(policy: string): string[] {
  return ctx.proxy.pools()[policy]?.members ?? [];
}

function serving(policy: string): string[] {
  return ctx.proxy.pools()[policy]?.serving ?? [];
}

/** Start an old Python server of `policy` against our proxy; resolves once it is in its pool. */
async function oldServer(id: string, policy: string, extra: string[] = []): Promise<Proc> {
  const p = python('old_server', ['-id', id, '-pp', policy, '-listen', '0', '-revproc', String(ctx.proxy.port), ...extra]);
  await p.waitFor(/Setup sent/);
  await eventually(() => serving(policy).includes(id), 3000, `old server ${id} serving ${policy}`);
  return p;
}

async function newServer(id: string, policy: string): Promise<ServerHandle> {
  const s = await startServer({ id, policy, listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port } });
  ctx.servers.push(s);
  await eventually(() => serving(policy).includes(id), 3000, `server ${id} serving ${policy}`);
  return s;
}

/** Run an old Python client to the end: its exit status, and which server answered each packet, in order. */
async function oldClient(args: string[]): Promise<{ code: number; servers: string[]; text: string }> {
  const c = python('old_client', ['-revproc', String(ctx.proxy.port), ...args]);
  const code = await c.exited;
  const servers = c.out.flatMap((l) => /^answered by server (\S+)$/.exec(l)?.[1] ?? []);
  return { code, servers, text: c.out.join('\n') };
}

function noBreakage(...procs: Proc[]): void {
  for (const p of procs) assert.not.ok(p.out.some((l) => l.startsWith('BROKEN')), `an old server broke:\n${p.out.join('\n')}`);
}

function fresh(name: string, opts: Parameters<typeof startProxy>[0] = {}) {
  const s = suite<Ctx>(name, ctx);
  s.before.each(async () => {
    ctx.servers = [];
    ctx.closers = [];
    ctx.proxy = await startProxy({ port: 0, ...opts });
  });
  s.after.each(async () => {
    killAll();
    for (const c of ctx.closers) c();
    for (const sv of ctx.servers) await sv.stop();
    await ctx.proxy.stop();
  });
  return s;
}

const oldThroughOurs = fresh('old programs through our proxy');

oldThroughOurs('old clients through old servers: round robin, correct hashes, and the setup connection closing removes nobody', async () => {
  const a = await oldServer('100', '111');
  const b = await oldServer('300', '111');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(members('111'), ['100', '300'], 'both stay after their setup connections closed');
  const r = await oldClient(['-id', '1', '-pkt', pkt('1'), '-repeat', '4']);
  assert.is(r.code, 0, r.text);
  assert.equal(r.servers, ['100', '300', '100', '300']);
  assert.is(r.text.match(/Hash of payload is correct/g)?.length, 4);
  assert.match(r.text, /Receiving a response from the server payload: b0400cf1f3919fdba057dbd2acc52f148fbb43ac/);
  await a.waitFor(/Received a message from client 1 payload xyz1/);
  noBreakage(a, b);
});

oldThroughOurs('old clients through new servers', async () => {
  await newServer('200', '222');
  await newServer('400', '222');
  const r = await oldClient(['-id', '3', '-pkt', pkt('3'), '-repeat', '2']);
  assert.is(r.code, 0, r.text);
  assert.equal(r.servers, ['200', '400']);
});

oldThroughOurs('new clients through old servers: a pipelined client is served over several one-at-a-time connections', async () => {
  const a = await oldServer('1', 'P');
  const b = await oldServer('2', 'P');
  const packets = Array.from({ length: 40 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `m${i}` }));
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets, window: 40 });
  assert.ok(results.every((r) => r.correct), JSON.stringify(results.filter((r) => !r.correct)));
  assert.equal(results.map((r) => r.server), packets.map((_, i) => (i % 2 === 0 ? '1' : '2')));
  const accepted = a.out.filter((l) => l.startsWith('Accepted a connection')).length;
  assert.ok(accepted > 1 && accepted <= 8, `server 1 was reached over ${accepted} connections (more than one, at most the limit of 8)`);
  noBreakage(a, b);
});

oldThroughOurs('an old server that closes each connection after one answer is still served, request after request', async () => {
  const a = await oldServer('1', 'P', ['-once']);
  const packets = Array.from({ length: 30 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `o${i}` }));
  const one = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets, window: 1 });
  const many = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets, window: 30 });
  assert.ok([...one, ...many].every((r) => r.correct), JSON.stringify([...one, ...many].filter((r) => !r.correct)));
  assert.equal(members('P'), ['1']);
  noBreakage(a);
});

oldThroughOurs("this project's server registered with --wire json is served as an old server", async () => {
  const s = await startServer({ id: '8', policy: 'W', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port }, wire: 'json' });
  ctx.servers.push(s);
  await eventually(() => serving('W').includes('8'), 3000, 'server 8 serving');
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: Array.from({ length: 20 }, (_, i) => ({ srcid: 'c', privPoliId: 'W', payload: `w${i}` })), window: 20 });
  assert.ok(results.every((r) => r.correct && r.server === '8'), JSON.stringify(results.filter((r) => !r.correct)));
});

oldThroughOurs('a mixed pool: the round robin goes across old and new servers, and any client reaches any server', async () => {
  const a = await oldServer('1', 'M');
  await newServer('2', 'M');
  const c = await oldServer('3', 'M');
  const dir = mkdtempSync(join(tmpdir(), 'oldwire-'));
  writeFileSync(join(dir, 'p.json'), JSON.stringify({ type: '0', srcid: '9', privPoliId: 'M', payload: 'mixed' }));
  const old = await oldClient(['-id', '9', '-pkt', join(dir, 'p.json'), '-repeat', '4']);
  assert.is(old.code, 0, old.text);
  assert.equal(old.servers, ['1', '2', '3', '1']);
  const ours = await runClient({ id: 'n', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: Array.from({ length: 3 }, () => ({ srcid: 'n', privPoliId: 'M', payload: 'x' })), window: 1 });
  assert.equal(ours.map((r) => r.server), ['2', '3', '1'], 'the one cursor carries on across kinds of client');
  assert.ok(ours.every((r) => r.correct));
  noBreakage(a, c);
});

oldThroughOurs('an old JSON object split across three writes is answered once', async () => {
  await oldServer('100', '111');
  const r = await oldClient(['-id', '1', '-pkt', pkt('1'), '-split', '3', '-repeat', '2']);
  assert.is(r.code, 0, r.text);
  assert.is(r.text.match(/Hash of payload is correct/g)?.length, 2);
});

oldThroughOurs('two objects in one write: both answered, in order, one object each, and the old servers see one request per read', async () => {
  const a = await oldServer('1', 'P');
  const b = await oldServer('2', 'P');
  const dir = mkdtempSync(join(tmpdir(), 'oldwire-'));
  writeFileSync(join(dir, 'p.json'), JSON.stringify({ type: '0', srcid: '5', privPoliId: 'P', payload: 'pair' }));
  const r = await oldClient(['-id', '5', '-pkt', join(dir, 'p.json'), '-pair', '-repeat', '3']);
  assert.is(r.code, 0, r.text);
  assert.is(r.text.match(/Hash of payload is correct/g)?.length, 6, 'each answer matched the packet at its place');
  assert.equal(r.servers, ['1', '2', '1', '2', '1', '2']);
  noBreakage(a, b);
});

oldThroughOurs('answers to a JSON client are in order even when a later request is answered first', async () => {
  // Server 1 answers 300 ms late; server 2 at once.
  const slow = await startServer({ id: '1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port }, delayMs: 300 });
  ctx.servers.push(slow);
  await newServer('2', 'P');
  await eventually(() => ctx.proxy.pools().P?.serving.length === 2, 3000, 'both serving');
  const sock = await rawConnect(ctx.proxy.port);
  ctx.closers.push(() => sock.destroy());
  const got = jsonCollector(sock);
  sock.write('{"type": "0", "srcid": "7", "privPoliId": "P", "payload": "first"}{"type": "0", "srcid": "7", "privPoliId": "P", "payload": "second"}');
  await eventually(() => got.length >= 2, 3000, 'two answers');
  assert.equal(got.map((m) => [(m as { srcid: string }).srcid, (m as { payload: string }).payload]), [['1', sha1Hex('first')], ['2', sha1Hex('second')]]);
});

oldThroughOurs('errors to a JSON client are one JSON object with "type": "3", code and message', async () => {
  const r = await oldClient(['-id', '1', '-pkt', pkt('1')]);
  assert.is(r.code, 1);
  assert.match(r.text, /Error from the reverse proxy: NO_SERVER no server is registered for privacy policy 111/);
  const sock = await rawConnect(ctx.proxy.port);
  ctx.closers.push(() => sock.destroy());
  const chunks: Buffer[] = [];
  sock.on('data', (c: Buffer) => chunks.push(c));
  const closed = new Promise((r) => sock.on('close', r));
  sock.write('{"type": "0", "srcid": "1"} trailing');
  await closed;
  const text = Buffer.concat(chunks).toString();
  assert.match(text, /^\{"type": "3", "code": "BAD_REQUEST", "message": "missing field 'privPoliId'"\}$/);
});

const leaving = fresh('old wire, short timeout', { timeoutMs: 300, oldServers: { missesToLeave: 2 } });

leaving('an old server whose listen port refuses connections leaves its pool; the others keep serving', async () => {
  const a = await oldServer('1', 'P');
  await oldServer('2', 'P');
  a.kill('SIGKILL');
  await eventually(() => !members('P').includes('1'), 3000, 'server 1 removed');
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: Array.from({ length: 3 }, () => ({ srcid: 'c', privPoliId: 'P', payload: 'x' })), window: 1 });
  assert.equal(results.map((r) => r.server), ['2', '2', '2']);
});

leaving('an old server that stops answering leaves after requests in a row time out', async () => {
  await oldServer('1', 'P', ['-mute']);
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: Array.from({ length: 3 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `q${i}` })), window: 1, timeoutMs: 2000 });
  assert.equal(results.map((r) => r.error), ['TIMEOUT', 'TIMEOUT', 'NO_SERVER']);
  assert.equal(members('P'), []);
});

leaving('an old server that restarts and sends its setup again replaces its old entry', async () => {
  const first = await oldServer('1', 'P');
  first.kill('SIGKILL');
  await oldServer('1', 'P');
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'again' }] });
  assert.ok(results[0]!.correct, JSON.stringify(results));
});

const reverse = suite('our programs through the old proxy');
reverse.after.each(killAll);

reverse('revproxy server --wire json and revproxy client --wire json work with the old Python proxy', async () => {
  const proxy = python('old_proxy', ['-port', '0']);
  const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  const servers: Proc[] = [];
  for (const id of ['1', '2']) {
    servers.push(revproxy(['server', '-id', id, '-pp', 'PP_1', '-listen', '0', '-revproc', port, '--wire', 'json']));
    await proxy.waitFor(new RegExp(`Received setup message from server id ${id} privacy policy PP_1 port \\d+`));
  }
  const dir = mkdtempSync(join(tmpdir(), 'oldwire-'));
  for (let i = 1; i <= 5; i++) writeFileSync(join(dir, `${i}.json`), JSON.stringify({ type: '0', srcid: '7', privPoliId: 'PP_1', payload: `m${i}` }));
  const client = revproxy(['client', '-id', '7', '-revproc', port, '-pkt', dir, '--wire', 'json', '--json']);
  assert.is(await client.exited, 0, `${client.out.join('\n')}\n--- old proxy:\n${proxy.out.join('\n')}`);
  const report = JSON.parse(client.out.find((l) => l.startsWith('{'))!);
  assert.is(report.verified, 5);
  assert.equal(report.results.map((r: { server: string }) => r.server), ['1', '2', '1', '2', '1']);
  await servers[0]!.waitFor(/Received a message from client 7 payload m1/);
  await proxy.waitFor(/Received a data message from server id 2 payload /);
  // An old client through the old proxy reaches our servers too.
  const old = python('old_client', ['-id', '7', '-revproc', port, '-pkt', join(dir, '1.json'), '-repeat', '2']);
  assert.is(await old.exited, 0, old.out.join('\n'));
  assert.equal(old.out.filter((l) => l.startsWith('answered by')), ['answered by server 2', 'answered by server 1']);
  for (const s of servers) assert.is(s.child.exitCode, null, 'our servers keep running after their setup connections closed');
});

function jsonCollector(sock: import('node:net').Socket): Message[] {
  const d = new JsonDecoder();
  const got: Message[] = [];
  sock.on('data', (c: Buffer) => got.push(...d.push(c).messages));
  return got;
}

oldThroughOurs.run();
leaving.run();
reverse.run();
