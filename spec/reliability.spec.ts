/**
 * Reliability under sustained load and hostile peers (issue 14). Each test
 * would have caught one of the failures the issue measured, on shortened
 * timeouts so it runs in seconds.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Logger, ManualClock, memorySink, runClient, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { encodeFrame, FORWARD_ROOM, FrameDecoder } from '../transport/frame.js';
import type { LinkTraffic } from '../actors/upstream.js';
import { MsgType } from '../transport/messages.js';
import { cpuSeconds, rssBytes } from '../bench/procs.js';
import { readFileSync } from 'node:fs';
import { makePki } from './certs.js';
import { collector, eventually, LOCAL, rawConnect, sleep } from './helpers.js';
import { runLoad } from './load.js';
import { killAll, node, proxyProcess, revproxy, type Proc } from './procs.js';

interface Ctx {
  proxy?: ProxyHandle;
  servers: ServerHandle[];
  sockets: Socket[];
  logs: LogRecord[];
  /** Listeners a test opened itself (closed after it). */
  listeners: Array<{ close(): void }>;
}
const ctx: Ctx = { servers: [], sockets: [], logs: [], listeners: [] };

const r = suite('reliability');
r.after.each(async () => {
  for (const s of ctx.sockets) s.destroy();
  for (const s of ctx.servers) s.kill();
  for (const l of ctx.listeners) l.close();
  ctx.listeners = [];
  ctx.proxy?.kill();
  ctx.proxy = undefined;
  ctx.servers = [];
  ctx.sockets = [];
  ctx.logs = [];
  killAll();
});

async function inProcess(opts: Parameters<typeof startProxy>[0] = {}): Promise<ProxyHandle> {
  ctx.proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(ctx.logs), 'info'), ...opts });
  return ctx.proxy;
}

async function addServer(id: string, policy = 'P', behaviour: 'normal' | 'silent' = 'normal'): Promise<ServerHandle> {
  const s = await startServer({ id, policy, listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy!.port }, behaviour });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy!.pools()[policy]?.serving.includes(id) ?? false, 3000, `${id} serving`);
  return s;
}

/** Open `n` connections that each register a server of `policy` at `port` and keep their registration open. */
async function registerMany(proxyPort: number, n: number, policy: (i: number) => string, port: number): Promise<Socket[]> {
  const out: Socket[] = [];
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.all(Array.from({ length: Math.min(100, n - i) }, async (_, k) => {
      const s = await rawConnect(proxyPort);
      s.on('error', () => {});
      s.on('data', () => {}); // PINGs: read and ignored (a PONG is not needed: their links count as life, or they are let go)
      s.write(encodeFrame({ type: 1, id: `dead-${i + k}`, privPolyId: policy(i + k), listenport: port }));
      return s;
    }));
    out.push(...batch);
  }
  return out;
}

r('stop() called twice drains as once: the server\'s handler call and the proxy\'s request in flight are answered (a second call cut them off SHUTTING_DOWN)', async () => {
  for (const stopping of ['server', 'proxy'] as const) {
    const proxy = await inProcess();
    let reached!: () => void;
    const atHandler = new Promise<void>((r) => (reached = r));
    const s = await startServer({ id: 's', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: proxy.port }, handler: async () => (reached(), await sleep(300), 'done') });
    ctx.servers.push(s);
    await eventually(() => proxy.pools().P?.serving.includes('s') ?? false, 3000, 's serving');
    const answer = runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }], verify: false, hold: false });
    await atHandler;
    const handle = stopping === 'server' ? s : proxy;
    // Two shutdown hooks: the same drain, the same promise.
    const [first, second] = [handle.stop(), handle.stop()];
    await Promise.all([first, second]);
    const [a] = await answer;
    assert.equal([a!.error, a!.answer === undefined ? undefined : String(a!.answer)], [undefined, 'done'], `${stopping}: ${a!.error} ${a!.message ?? ''}`);
    assert.ok(first === second, `${stopping}.stop() twice returns the one drain`);
    if (stopping === 'proxy') s.kill();
    else proxy.kill();
    ctx.proxy = undefined;
    ctx.servers = [];
  }
});

r('busy servers stay registered through many idle-timeout periods of sustained load: no request refused', async () => {
  // The registrations carry nothing while the links are busy answering; before, the idle timeout closed them all.
  const proxy = await inProcess({ idleTimeoutMs: 200, pingIntervalMs: 50 });
  await addServer('1');
  await addServer('2');
  await addServer('3');
  const t0 = Date.now();
  let rounds = 0;
  let acks = 0;
  while (Date.now() - t0 < 1500) {
    const report = await runLoad({ ports: [proxy.port], policy: 'P', connections: 2, perConnection: 300, window: 16 });
    assert.equal(report.errors, {}, JSON.stringify(report));
    assert.is(report.unanswered, 0);
    acks += report.acks;
    rounds++;
  }
  assert.ok(Date.now() - t0 >= 7 * 200, 'the load outlasted seven idle timeouts');
  assert.is(ctx.logs.filter((l) => l.event === 'deregister').length, 0, 'no server left');
  assert.equal(proxy.pools().P!.serving.sort(), ['1', '2', '3']);
  assert.ok(acks === rounds * 600);
});

r('a server stopped long enough to miss its PINGs is told it was removed, and registers again as soon as it wakes', async () => {
  const { proc: proxy, port } = await proxyProcess(['--ping-interval', '100', '--ping-misses', '3', '--log-level', 'info']);
  const server = revproxy(['server', '-id', 'sleepy', '-pp', 'P', '-listen', '0', '-revproc', String(port)]);
  await server.waitFor(/Registered with the reverse proxy/);
  server.kill('SIGSTOP');
  await proxy.waitFor(/Server id sleepy left privacy policy P: it missed 3 PINGs/, 5000);
  await sleep(300);
  const registrations = () => proxy.out.filter((l) => /Received setup message from server id sleepy /.test(l)).length;
  assert.is(registrations(), 1);
  server.kill('SIGCONT');
  await eventually(() => registrations() === 2, 3000, 'registered again');
  // As soon as it wakes: told why, it tries again after the first step of its backoff (200 ms, up to a fifth early at random), not a longer one (no time is asserted: the machine may be loaded).
  assert.ok(server.out.some((l) => /Not registered .*REMOVED: .*; retrying in (1[6-9]\d|200) ms/.test(l)), `the server was told why, and retried at once: ${server.out.join('\n')}`);
  const ok = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'after' }] });
  assert.ok(ok[0]!.correct, JSON.stringify(ok));
});

r("3,000 registrations pointing at a refused port cost a good client's requests no more than 30 % more of the proxy's CPU time", async () => {
  // Two proxies with the same two servers: one also holds 3,000 registrations of dead servers (held by
  // another process, which answers their PINGs). What it guards against is work per request that grows
  // with every dead registration, as XState's scan of every pending delay on each actor stop did before
  // issue 14: so it compares the CPU time each proxy spends on the same 6,000 requests, not their rate.
  // The rate measured 0.82x-0.98x on an idle machine but 0.64x-0.69x under a load average of 9-10: the
  // dead registrations' own work (a PING round of them every fourth second, 100 probes a second) is a
  // fixed amount per second, which takes a larger share of a proxy that gets less of a core. That work
  // is put out of the measured rounds here (a PING round every 16 s, a dead server's next probe ten minutes
  // on), while the timers it waits on stay pending, 3,000 of them, as they were when they cost each request.
  const args = ['--log-level', 'warn', '--max-servers-per-peer', '0', '--max-servers', '0', '--ping-interval', '4000', '--probe-initial', '600000', '--probe-max', '600000'];
  const dead = await proxyProcess(args);
  const clean = await proxyProcess(args);
  for (const id of ['1', '2']) revproxy(['server', '-id', id, '-pp', 'GOOD', '-listen', '0', '-revproc', `${dead.port},${clean.port}`]);
  await waitServing(dead.port, 'GOOD', 2);
  await waitServing(clean.port, 'GOOD', 2);
  node('spec/fixtures/registrations.mjs', [String(dead.port), '3000', 'DEAD', String(await closedPort())]);
  // Every registration accepted, dialled, refused and waiting for its probe (a pending delay each).
  // 100 lines an interval one by one, the rest counted (`down_more`: at once for the first, then in each interval's summary).
  const down = (): number => dead.proc.out.reduce((n, l) => {
    if (/Server id held-DEAD-\d+ is unreachable .*next probe in/.test(l)) return n + 1;
    const more = /([\d,]+) more server\(s\) went out of rotation/.exec(l);
    return more ? n + Number(more[1]!.replace(/,/g, '')) : n;
  }, 0);
  await eventually(() => down() >= 3000, 120000, "3,000 dead servers out of rotation"); // 49 s under a load average of 14
  /** CPU milliseconds the proxy spends on 6,000 requests of the good client. */
  const cost = async (p: { proc: Proc; port: number }): Promise<number> => {
    const before = cpuSeconds(p.proc.child.pid!);
    const report = await runLoad({ ports: [p.port], policy: 'GOOD', connections: 2, perConnection: 3000, window: 8 });
    assert.is(report.acks, 6000, JSON.stringify(report.errors));
    return (cpuSeconds(p.proc.child.pid!) - before) * 1000;
  };
  for (let i = 0; i < 3; i++) await cost(dead), await cost(clean); // warm-up
  // Rounds of two cells back to back, the order swapped every round; the verdict is the median of
  // the rounds' ratios, so a PING round or another process's burst weighs on one round only.
  const ratios: number[] = [];
  const cells: string[] = [];
  for (let i = 0; i < 9; i++) {
    let withDead: number;
    let without: number;
    if (i % 2 === 0) {
      withDead = await cost(dead);
      without = await cost(clean);
    } else {
      without = await cost(clean);
      withDead = await cost(dead);
    }
    ratios.push(without / withDead);
    cells.push(`${withDead.toFixed(0)}/${without.toFixed(0)}`);
  }
  const ratio = [...ratios].sort((a, b) => a - b)[4]!;
  assert.ok(ratio >= 0.7, `the proxy holding 3,000 dead servers spent ${(1 / ratio).toFixed(2)}x the CPU time of the one holding none on the good client's requests (median of 9 rounds); rounds, CPU ms with/without: ${cells.join(' ')}`);
});

r('20,000 one-shot registrations of distinct policies leave no pool behind and the memory back near where it was', async () => {
  const { proc, port } = await proxyProcess(['--log-level', 'error', '--max-servers-per-peer', '0']);
  const pid = proc.child.pid!;
  const live = await closedPort();
  const oneShots = async (from: number, n: number): Promise<void> => {
    for (let i = from; i < from + n; i += 200) {
      await Promise.all(Array.from({ length: Math.min(200, from + n - i) }, async (_, k) => {
        const s = await rawConnect(port);
        s.on('error', () => {});
        await new Promise<void>((done) => s.end(encodeFrame({ type: 1, id: `one-${i + k}`, privPolyId: `policy-${i + k}`, listenport: live }), () => done()));
        await new Promise<void>((done) => s.once('close', () => done()).resume());
      }));
    }
  };
  await oneShots(0, 2000); // warm-up: the heap grows to its working size
  await sleep(500);
  const start = rssBytes(pid);
  const t0 = performance.now();
  await oneShots(2000, 9000);
  const first = performance.now() - t0;
  const t1 = performance.now();
  await oneShots(11000, 9000);
  const second = performance.now() - t1;
  await sleep(1000);
  const end = rssBytes(pid);
  // No pool left: a client of any of those policies gets NO_SERVER at once, and the proxy says so.
  const c = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'policy-19999', payload: 'x' }] });
  assert.is(c[0]!.error, 'NO_SERVER');
  assert.ok(second < first * 3, `the second half took ${second.toFixed(0)} ms against ${first.toFixed(0)} ms for the first: no growing cost (it was 7x before pools were freed)`);
  assert.ok(end - start < 40 * 1024 * 1024, `RSS ${(start / 1048576).toFixed(0)} MB -> ${(end / 1048576).toFixed(0)} MB after 18,000 one-shot registrations`);
});

r('2,000 connections each holding a nearly full frame stay within the buffer budget, and a good client is served meanwhile', async () => {
  const maxFrame = 128 * 1024;
  const budget = 16 * 1024 * 1024;
  const { proc, port } = await proxyProcess(['--log-level', 'warn', '--max-frame', String(maxFrame), '--max-buffered-bytes', String(budget)]);
  revproxy(['server', '-id', '1', '-pp', 'P', '-listen', '0', '-revproc', String(port)]);
  await waitServing(port, 'P', 1);
  const base = rssBytes(proc.child.pid!);
  // Each frame declares the largest body allowed (the limit less the room forwarding takes) and stops 8 bytes short of it: the proxy must hold what came.
  const header = Buffer.alloc(4);
  header.writeUInt32BE(maxFrame - FORWARD_ROOM);
  const unfinished = Buffer.concat([header, Buffer.alloc(maxFrame - FORWARD_ROOM - 8, 0x61)]);
  let shed = 0;
  const holders: Socket[] = [];
  for (let i = 0; i < 2000; i += 100) {
    holders.push(...(await Promise.all(Array.from({ length: 100 }, async () => {
      const s = await rawConnect(port);
      s.on('error', () => {});
      const c = collector(s);
      s.on('close', () => {
        if (c.got.some((m) => m.type === 3 && (m as { code: string }).code === 'OVERLOADED')) shed++;
      });
      s.write(unfinished);
      return s;
    }))));
  }
  ctx.sockets.push(...holders);
  const report = await runLoad({ ports: [port], policy: 'P', connections: 2, perConnection: 500, window: 8 });
  assert.is(report.acks, 1000, JSON.stringify(report));
  await eventually(() => holders.filter((s) => s.closed).length >= 2000 - Math.ceil(budget / (unfinished.length - 4)) - 10, 5000, 'connections past the budget cut');
  const grew = rssBytes(proc.child.pid!) - base;
  const sent = (2000 * unfinished.length) / 1048576;
  assert.ok(grew < 96 * 1024 * 1024, `RSS grew ${(grew / 1048576).toFixed(0)} MB while peers sent ${sent.toFixed(0)} MB of unfinished frames (budget ${budget / 1048576} MB)`);
  assert.ok(shed >= 2000 - Math.ceil(budget / (unfinished.length - 4)) - 10, `${shed} connections were cut with OVERLOADED`);
  assert.ok(proc.out.some((l) => /buffer budget/.test(l)), 'the cuts are logged');
  // About 1,900 cuts from one address are one line (then a count per interval), not a line each.
  assert.is(proc.out.filter((l) => /Closed connection from .*buffer budget/.test(l)).length, 1, proc.out.filter((l) => /buffer budget/.test(l)).slice(0, 5).join('\n'));
});

r('big requests held for a slow server stay within the buffer budget: a greedy client is read no more while others are served, and past half the budget requests are refused OVERLOADED', async () => {
  const budget = 4 * 1024 * 1024;
  const proxy = await inProcess({ maxBufferedBytes: budget, timeoutMs: 20000 });
  await addServer('stalled', 'P', 'silent');
  await addServer('good', 'Q');
  const size = 64 * 1024;
  const context = () => proxy.actor.getSnapshot().context;
  // Requests of policy P the proxy holds: at its only server, which never answers, or waiting for it.
  const held = () => context().servers.get('stalled')!.traffic.inflight.size + (context().policies.get('P')?.waiting.length ?? 0);
  const greedy = async (n: number, tag: number) => {
    const s = await rawConnect(proxy.port);
    ctx.sockets.push(s);
    const c = collector(s);
    s.write(Buffer.concat(Array.from({ length: n }, (_, i) => encodeFrame({ type: 0, seq: i, srcid: `big${tag}`, privPoliId: 'P', payload: Buffer.alloc(size, i) }))));
    return c;
  };
  // One client pipelines 200 requests of 64 KiB (12.5 MiB against a 4 MiB budget): it used to be held whole (the in-flight limits count requests, not bytes).
  const one = await greedy(200, 0);
  await eventually(() => held() > 0, 3000, 'the first requests held');
  await sleep(300);
  assert.ok(held() * size <= budget / 32 + 4 * size, `one connection holds ${held()} requests of ${size} bytes (its share of the budget is ${budget / 32} bytes)`);
  assert.not.ok(one.closed, 'a greedy client is paused, not cut');
  // Everyone else is served meanwhile.
  const other = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: Array.from({ length: 20 }, (_, i) => ({ srcid: 'c', privPoliId: 'Q', payload: `q${i}` })) });
  assert.ok(other.every((x) => x.correct), JSON.stringify(other.filter((x) => !x.correct)).slice(0, 500));
  // A crowd of such clients (the limit a flood of connections meets): past half the budget, requests are refused at once.
  const crowd = await Promise.all(Array.from({ length: 24 }, (_, i) => greedy(12, i + 1)));
  const overloaded = () => crowd.reduce((n, c) => n + c.got.filter((m) => m.type === 3 && m.code === 'OVERLOADED').length, 0);
  await eventually(() => overloaded() > 0, 5000, 'requests past half the budget refused');
  assert.ok(held() * size <= budget / 2, `${held()} requests of ${size} bytes held, over half the ${budget}-byte budget`);
  assert.match(JSON.stringify(crowd.flatMap((c) => c.got).find((m) => m.type === 3)), /--max-buffered-bytes/);
});

r('a crowd of big requests sheds clients, never the proxy\'s own link to their server: the server stays in rotation and answers after', async () => {
  // The link's unwritten bytes are the requests it forwards, which hold their own bytes: it held the most
  // (16 MB), was cut, and every client of the policy got UPSTREAM_FAILED, then NO_SERVER.
  const { proc, port } = await proxyProcess(['--log-level', 'warn', '--max-buffered-bytes', String(64 * 1024 * 1024)]);
  // A server slower than its clients: the proxy's writes to it pile up.
  revproxy(['server', '-id', 's1', '-pp', 'P', '-listen', '0', '-revproc', String(port), '--delay', '200']);
  await waitServing(port, 'P', 1);
  /** The report of `revproxy load ARGS` through the proxy, once it ends (by itself, or at `stop`, SIGINT, as a person's ^C). */
  const load = async (args: string[], stop?: Promise<unknown>): Promise<Record<string, any>> => {
    const p = revproxy(['load', '--no-progress', '--json', '--revproc', String(port), '--policy', 'P', ...args]);
    void stop?.finally(() => p.kill('SIGINT'));
    await p.exited;
    const line = p.out.find((l) => l.startsWith('{'));
    assert.ok(line, p.out.join('\n'));
    return JSON.parse(line!);
  };
  // The crowd sends until the budget is full, the test's premise, however fast this machine sends: on an
  // idle one its 64 connections fill it within 2 s; under a load average of 19 their requests reached
  // half of it (refused past it) and no further in 20 s, the partial frames too few at once. So once the
  // requests hold half, 48 more connections each send a request all but its last byte: 48 MB begun,
  // which the proxy holds as they come, as it would a slow network's.
  const partials: Socket[] = [];
  const full = (async () => {
    await proc.waitFor(/holds \d+ bytes of requests not answered yet, half its buffer budget|buffer budget .* (is|was) full/, 60000);
    const big = encodeFrame({ type: MsgType.DATA, seq: 1, srcid: 'partial', privPoliId: 'P', payload: 'x'.repeat(1_000_000) });
    for (let i = 0; i < 48; i++) {
      const s = await rawConnect(port);
      s.on('error', () => {});
      s.write(big.subarray(0, big.length - 1));
      partials.push(s);
    }
    ctx.sockets.push(...partials);
    await proc.waitFor(/buffer budget .* (is|was) full/, 60000);
  })();
  const crowd = await load(['-c', '64', '-p', '8', '-d', '120s', '--timeout', '2000', '--payload-size', '1000000'], full.catch(() => undefined));
  await full.catch((err: Error) => assert.unreachable(`the crowd filled the budget (the test's premise): ${err.message.split('\n')[0]}; ${JSON.stringify(crowd.errors)}`));
  for (const s of partials) s.destroy();
  const warnings = () => proc.out.filter((l) => /buffer budget|unreachable|failed after|No live server/.test(l)).join('\n');
  assert.ok((crowd.errors.OVERLOADED ?? 0) > 0, `clients shed or refused OVERLOADED: ${JSON.stringify(crowd.errors)}`);
  assert.is(crowd.errors.NO_SERVER, undefined, warnings());
  assert.is(crowd.errors.UPSTREAM_FAILED, undefined, warnings());
  assert.not.ok(proc.out.some((l) => /Server id s1 is unreachable/.test(l)), warnings());
  const after = await load(['-c', '1', '-p', '1', '-n', '3']);
  assert.is(after.ok, 3, JSON.stringify(after.errors));
});

r('a server that reads its link a little at a time holds no more of the proxy\'s memory than its share of the buffer budget, however long its clients send', async () => {
  // It answers what it reads, so every check finds it alive; its tries time out, their requests are answered, and
  // their bytes stayed in the link's buffer, counted by nobody: each burst its clients sent went there too.
  const budget = 32 * 1024 * 1024;
  const size = 100_000;
  const proxy = await inProcess({ maxBufferedBytes: budget, timeoutMs: 1500, retries: 0 });
  const trickle = await trickleServer(proxy.port, 'trickle', 'P');
  await eventually(() => proxy.pools().P?.serving.includes('trickle') ?? false, 3000, 'the trickling server serving');
  // 16 connections of 10 requests each: 15 MiB a round, within half the budget and each connection's share of it.
  const clients = await Promise.all(Array.from({ length: 16 }, async () => {
    const s = await rawConnect(proxy.port);
    ctx.sockets.push(s);
    return { s, c: collector(s) };
  }));
  for (let round = 0; round < 3; round++) {
    clients.forEach(({ s }, i) => s.write(Buffer.concat(Array.from({ length: 10 }, (_, k) =>
      encodeFrame({ type: 0, seq: round * 10 + k, srcid: `c${i}`, privPoliId: 'P', payload: Buffer.alloc(size, k) })))));
    // Each is answered: by the server, or TIMEOUT (at the server, or waiting for it to read).
    for (const { c } of clients) await c.until(() => c.got.length === (round + 1) * 10, 10000);
  }
  const link = (proxy.actor.getSnapshot().context.servers.get('trickle')!.traffic as LinkTraffic).conn!;
  assert.ok(link.pendingBytes <= budget / 32 + size + 1024, `the link holds ${link.pendingBytes} bytes unwritten (its share of the budget is ${budget / 32}); the server read ${trickle.read} of the ${link.socket.bytesWritten} written to it`);
  assert.ok(ctx.logs.some((l) => l.event === 'link_backlog' && /reads its upstream link too slowly/.test(l.msg)), 'the backlog is logged');
  const codes = new Set(clients.flatMap(({ c }) => c.got.map((m) => (m.type === 3 ? m.code : 'ACK'))));
  assert.ok([...codes].every((c) => c === 'ACK' || c === 'TIMEOUT'), [...codes].join());
});

r('many servers that read their links too slowly hold no more of the proxy\'s memory together than the links\' part of the buffer budget, and the one that reads serves the clients', async () => {
  // Each link may hold a 32nd of the budget unwritten; 24 servers that stopped reading (a late answer each 100 ms keeps them alive, and
  // they are never ejected here, as a server that answers a little is not) held 24 of them: nothing bounded the total.
  const budget = 16 * 1024 * 1024;
  const size = 100_000;
  const stuck = 24;
  const proxy = await inProcess({ maxBufferedBytes: budget, timeoutMs: 900, retries: 2, ejectAfter: 1_000_000 });
  await addServer('good');
  for (let i = 0; i < stuck; i++) await trickleServer(proxy.port, `stuck${i}`, 'P', 0);
  await eventually(() => proxy.pools().P?.serving.length === stuck + 1, 5000, 'every server serving');
  const links = () => [...proxy.actor.getSnapshot().context.servers.values()].map((m) => (m.traffic as LinkTraffic).conn?.pendingBytes ?? 0);
  const held = () => links().reduce((a, b) => a + b, 0);
  // 16 connections of 5 requests each: 8 MB a round, within half the budget and each connection's share of it.
  const clients = await Promise.all(Array.from({ length: 16 }, async () => {
    const s = await rawConnect(proxy.port);
    ctx.sockets.push(s);
    return { s, c: collector(s) };
  }));
  const rounds = 30;
  let most = 0;
  for (let round = 0; round < rounds; round++) {
    clients.forEach(({ s }, i) => s.write(Buffer.concat(Array.from({ length: 5 }, (_, k) =>
      encodeFrame({ type: 0, seq: round * 5 + k, srcid: `c${i}`, privPoliId: 'P', payload: Buffer.alloc(size, k) })))));
    for (const { c } of clients) await c.until(() => c.got.length === (round + 1) * 5, 10000);
    most = Math.max(most, held());
  }
  // Their part is a quarter of the budget; a link may go past it by what one turn hands it before its server's side is seen full.
  const bound = budget / 4 + stuck * (size + 1024);
  assert.ok(most <= bound, `the links held up to ${most} bytes unwritten together (now ${links().filter((n) => n > 0).join(', ')}), more than their part of the budget (${budget / 4}) and a request each`);
  assert.ok(ctx.logs.some((l) => l.event === 'links_backlog'), `the links' backlog is logged: ${ctx.logs.map((l) => l.event).join()}`);
  const codes = clients.flatMap(({ c }) => c.got.map((m) => (m.type === 3 ? m.code : 'ACK')));
  assert.ok(codes.every((c) => c === 'ACK' || c === 'TIMEOUT'), [...new Set(codes)].join());
  assert.ok(codes.filter((c) => c === 'ACK').length > codes.length / 2, `most requests answered by the server that reads: ${codes.filter((c) => c === 'ACK').length} of ${codes.length}`);
});

r('a client that reads none of its many big answers costs the server no cut link and no missed PING: the server paces its answers to what the proxy reads', async () => {
  // The server's handler answered a read's every request in one turn: a proxy link carrying 200 requests for 256 KiB
  // answers made 50 MiB at once, past the server's 4 MiB budget, which cut the proxy's link (with the default budget,
  // 256 MiB built over seconds: the proxy's PINGs unanswered, the server removed, its other clients NO_SERVER).
  const proxy = await inProcess();
  const serverLogs: LogRecord[] = [];
  let made = 0;
  const answer = 'x'.repeat(256 * 1024);
  ctx.servers.push(await startServer({
    id: 'big', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: proxy.port }, maxBufferedBytes: 4 * 1024 * 1024,
    handler: (p) => (p === 'quick' ? 'fine' : (made++, answer)), logger: new Logger('server', memorySink(serverLogs), 'info'),
  }));
  await eventually(() => proxy.pools().P?.serving.includes('big') ?? false, 3000, 'the server serving');
  const greedy = await rawConnect(proxy.port);
  ctx.sockets.push(greedy);
  greedy.pause();
  greedy.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => encodeFrame({ type: 0, seq: i + 1, srcid: 'greedy', privPoliId: 'P', payload: `r${i}` }))));
  await eventually(() => made > 0, 5000, 'its requests reaching the server');
  const good = await rawConnect(proxy.port);
  ctx.sockets.push(good);
  const got = collector(good);
  good.write(encodeFrame({ type: 0, seq: 1, srcid: 'good', privPoliId: 'P', payload: 'quick' }));
  await got.until(() => got.got.length === 1, 20_000);
  const said = [...serverLogs, ...ctx.logs].filter((l) => l.level !== 'info').map((l) => l.msg).join('\n');
  assert.equal([got.got[0]!.type, (got.got[0] as { payload?: unknown }).payload], [MsgType.ACK, 'fine'], said);
  assert.not.ok(serverLogs.some((l) => l.event === 'budget_shed'), said);
  assert.not.ok(ctx.logs.some((l) => /unreachable|missed \d+ PINGs|No live server/.test(l.msg)), said);
  assert.ok(proxy.pools().P?.serving.includes('big'), 'still serving');
});

r('an old-wire client whose answers wait behind a slow one holds them within the buffer budget: past it, it is cut with OVERLOADED', async () => {
  const budget = 4 * 1024 * 1024;
  const proxy = await inProcess({ maxBufferedBytes: budget, timeoutMs: 20000 });
  await addServer('stalled', 'P', 'silent');
  // The old wire answers in request order: one request to a server that does not answer, then 12,000 answered at once
  // (NO_SERVER, about 600 bytes each): their answers wait for the first one's, and used to wait uncounted, however many.
  const s = await rawConnect(proxy.port);
  ctx.sockets.push(s);
  let got = '';
  s.on('data', (d: Buffer) => (got += d.toString()));
  const quick = JSON.stringify({ type: '0', srcid: 'c', privPoliId: 'N'.repeat(250), payload: 'x' });
  s.write(JSON.stringify({ type: '0', srcid: 'c', privPoliId: 'P', payload: 'slow' }) + quick.repeat(12000));
  await eventually(() => s.closed, 5000, 'the connection cut once its held answers passed the budget');
  assert.match(got, /"code": "OVERLOADED"/);
  assert.ok(ctx.logs.some((l) => l.event === 'budget_shed'), 'the cut is logged');
});

r('TLS handshakes that stall are closed after the frame timeout', async () => {
  const pki = makePki(['proxy']);
  const files = pki.cert('proxy');
  const proxy = await inProcess({ tls: { cert: readFileSync(files.cert), key: readFileSync(files.key) }, frameTimeoutMs: 300 });
  const stalled = await Promise.all(Array.from({ length: 50 }, async () => {
    const s = connect({ host: LOCAL, port: proxy.port });
    s.on('error', () => {});
    await new Promise<void>((ok) => s.once('connect', () => ok()));
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40])); // the start of a ClientHello, never finished
    return s;
  }));
  ctx.sockets.push(...stalled);
  await eventually(() => stalled.every((s) => s.closed), 3000, 'every stalled handshake closed by the proxy');
  // A real TLS client still gets through.
  const ok = await new Promise<boolean>((done) => {
    const t = tlsConnect({ host: LOCAL, port: proxy.port, ca: readFileSync(pki.ca) }, () => {
      t.destroy();
      done(true);
    });
    t.on('error', () => done(false));
  });
  assert.ok(ok, 'a complete handshake is accepted');
});

r('a stalled member holds only the requests it already has: the others go to the members that answer', async () => {
  const clock = new ManualClock();
  const proxy = await inProcess({ clock, timeoutMs: 1200, retries: 2 }); // try timeout 400 ms, slow after 100 ms
  await addServer('a');
  await addServer('b');
  await addServer('stalled', 'P', 'silent');
  const inflight = () => proxy.actor.getSnapshot().context.servers.get('stalled')!.traffic.inflight.size;
  const pkts = (tag: string, n: number) => Array.from({ length: n }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `${tag}${i}` }));
  const first = runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: pkts('first', 30), window: 30, timeoutMs: 10000 });
  await eventually(() => inflight() === 10, 2000, 'a third of the first batch at the stalled member');
  clock.advance(100); // nothing has come back from it for the slow mark; no try has timed out yet
  const second = runClient({ id: 'd', proxy: { host: LOCAL, port: proxy.port }, packets: pkts('second', 30), window: 30, timeoutMs: 10000 });
  // One request of the second batch goes to it to find out whether it answers (it does not); it holds that one and no more.
  await eventually(() => inflight() === 11, 2000, 'one of the second batch at the stalled member');
  await new Promise((r) => setTimeout(r, 200));
  assert.is(inflight(), 11, 'the stalled member got one of the second batch, no more');
  clock.advance(300); // the first batch's tries at the stalled member time out and go elsewhere
  clock.advance(100); // and the one of the second batch
  const [done, again] = await Promise.all([first, second]);
  for (const batch of [done, again]) {
    assert.ok(batch.every((x) => x.correct), JSON.stringify(batch.filter((x) => !x.correct)));
    assert.is(batch.filter((x) => x.server === 'stalled').length, 0);
  }
});

r.run();

/**
 * A server that registers `id` for `policy`, answers its PINGs and its link's first, then reads its link
 * `perTick` bytes every 100 ms (20 KB) and ACKs each request it has read: a wedged or hostile server that
 * every check finds alive. With `perTick` 0 it reads nothing more and sends a PONG on its link every tick.
 */
async function trickleServer(proxyPort: number, id: string, policy: string, perTick = 20_000): Promise<{ read: number }> {
  const stats = { read: 0 };
  const server = createServer((s) => {
    ctx.sockets.push(s);
    s.on('error', () => {});
    const decoder = new FrameDecoder({ validate: true });
    let verified = false;
    const feed = (chunk: Buffer): void => {
      stats.read += chunk.length;
      for (const m of decoder.push(chunk).messages) {
        if (m.type === 4) {
          verified = true;
          s.write(encodeFrame({ type: 5, seq: m.seq }));
        } else if (m.type === 0) s.write(encodeFrame({ type: 2, seq: m.seq, srcid: id, destid: m.srcid, payload: 'ok', payloadsize: 2 }));
      }
    };
    s.on('readable', () => {
      let chunk: Buffer | null;
      while (!verified && (chunk = s.read()) !== null) feed(chunk);
    });
    const tick = setInterval(() => {
      // Reading nothing, it keeps its link alive (a read each tick) with a late answer to its link's first request: an
      // unasked PONG closes a link as a protocol violation (docs/PROTOCOL.md), a late answer does not.
      if (verified && perTick === 0 && s.readableLength > 0) s.write(encodeFrame({ type: 2, seq: 1, srcid: id, destid: 'late', payload: 'ok', payloadsize: 2 }));
      const n = Math.min(perTick, s.readableLength);
      const chunk = verified && n > 0 ? (s.read(n) as Buffer | null) : null;
      if (chunk) feed(chunk);
    }, 100);
    s.on('close', () => clearInterval(tick));
  });
  await new Promise<void>((ok) => server.listen(0, LOCAL, ok));
  const reg = await rawConnect(proxyPort);
  reg.on('error', () => {});
  const pings = new FrameDecoder({ validate: true });
  reg.on('data', (chunk: Buffer) => {
    for (const m of pings.push(chunk).messages) if (m.type === 4) reg.write(encodeFrame({ type: 5, seq: m.seq }));
  });
  reg.write(encodeFrame({ type: 1, id, privPolyId: policy, listenport: (server.address() as AddressInfo).port }));
  ctx.sockets.push(reg);
  ctx.listeners.push(server);
  return stats;
}

/** A port nothing listens on (connections to it are refused). */
async function closedPort(): Promise<number> {
  const { freePort } = await import('../bench/procs.js');
  return freePort();
}

/** Wait until `n` servers of `policy` answer through the proxy at `port`. */
async function waitServing(port: number, policy: string, n: number): Promise<void> {
  await eventually(() => false, 0).catch(() => undefined);
  const end = Date.now() + 10000;
  for (;;) {
    const results = await runClient({ id: 'probe', proxy: { host: LOCAL, port }, packets: Array.from({ length: 2 * n }, (_, i) => ({ srcid: 'probe', privPoliId: policy, payload: `${i}` })), window: 1 });
    if (new Set(results.filter((x) => x.correct).map((x) => x.server)).size >= n) return;
    if (Date.now() > end) throw new Error(`${n} servers of ${policy} did not answer within 10 s: ${JSON.stringify(results.map((x) => x.error ?? x.server))}`);
    await sleep(100);
  }
}

