/**
 * A proxy in a memory-limited container or systemd unit: its buffer budget's default fits the
 * memory the process may use (a quarter of its control group's limit, an eighth of a small one, half less 64 MiB between), a start says what it
 * chose and why, and a budget or heap that cannot fit is warned of. A real proxy in a real
 * cgroup sheds a crowd of large frames (OVERLOADED) where it was killed by the kernel.
 */
import { connect, type Socket } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { budgetNote, connectionsNote, defaultMaxConnections, fittedOldSpace, lazyTextFrom, LAZY_TEXT_MEMORY, memoryLimit, MIN_MEMORY_LIMIT } from '../actors/memory-limit.js';
import { LAZY_TEXT_BYTES } from '../transport/fastwire.js';
import { fileLimits } from '../actors/port-limits.js';
import { defaultBufferBudget, DEFAULT_BUFFER_BUDGET } from '../transport/budget.js';
import { cannotLimitMemory, memoryGroup, type MemoryGroup } from './cgroup.js';
import { collector, eventually, frame, LOCAL } from './helpers.js';
import { killAll, proxyProcess, revproxy, type Proc } from './procs.js';
import { startProxy, startServer } from '../actors/index.js';
import { Logger, memorySink, type LogRecord } from '../actors/logger.js';

const MiB = 1024 * 1024;
const FLAG = '--max-buffered-bytes';

const derive = suite('memory limit: the budget it derives');

derive('no limit below the machine (Node 20 reads 2^64 then) keeps 256 MiB; a limit gives a quarter of it, at most 256 MiB, an eighth of one up to about 171 MiB, and between them half of it less 64 MiB', () => {
  assert.is(memoryLimit(2 ** 64, 24 * 1024 * MiB), undefined);
  assert.is(memoryLimit(0, 24 * 1024 * MiB), undefined);
  assert.is(memoryLimit(256 * MiB, 24 * 1024 * MiB), 256 * MiB);
  assert.is(defaultBufferBudget(undefined), DEFAULT_BUFFER_BUDGET);
  assert.is(defaultBufferBudget(256 * MiB), 64 * MiB);
  assert.is(defaultBufferBudget(8 * 1024 * MiB), DEFAULT_BUFFER_BUDGET);
  assert.is(defaultBufferBudget(128 * MiB), 16 * MiB);
  assert.is(fittedOldSpace(128 * MiB, 16 * MiB), 32);
  assert.is(budgetNote(16 * MiB, FLAG, 128 * MiB, 56 * MiB)!.message, `This process may use 128 MiB (its control group's memory limit): the buffer budget is 16 MiB, an eighth of it (${FLAG} sets another)`);
  assert.match(budgetNote(0, FLAG, 128 * MiB, 56 * MiB)!.message, `lower ${FLAG} to ${16 * MiB} (an eighth of the limit, the default here)`);
  assert.is(defaultBufferBudget(96 * MiB), 12 * MiB);
  assert.is(defaultBufferBudget(160 * MiB), 20 * MiB);
  assert.is(defaultBufferBudget(192 * MiB), 32 * MiB);
  assert.is(defaultBufferBudget(224 * MiB), 48 * MiB);
  assert.is(budgetNote(32 * MiB, FLAG, 192 * MiB, 72 * MiB)!.message, `This process may use 192 MiB (its control group's memory limit): the buffer budget is 32 MiB, half of it less 64 MiB, between an eighth and a quarter (${FLAG} sets another)`);
  assert.match(budgetNote(0, FLAG, 8 * 1024 * MiB, 56 * MiB)!.message, `lower ${FLAG} to ${DEFAULT_BUFFER_BUDGET} (the default)`);
});

derive('from 128 MiB to 256 the budget, the heap the start line advises and the connections that heap keeps grow with the limit: an eighth up to 255 MiB gave it a heap of 79 and 10000 connections, and 256 a heap of 64 and 2048 (224 MiB, 66 and 7168: 7,094 idle connections and 64 clients\' 1 MB requests took it past its limit)', () => {
  const at = (limit: number) => {
    const budget = defaultBufferBudget(limit);
    const oldSpace = fittedOldSpace(limit, budget);
    // The heap of --max-old-space-size=N with the semi-spaces of cli/revproxy.js: N + 24 MiB.
    return { budget, oldSpace, connections: defaultMaxConnections(20000, budget, (oldSpace + 24) * MiB) };
  };
  assert.equal(at(160 * MiB), { budget: 20 * MiB, oldSpace: 38, connections: 1024 });
  assert.equal(at(192 * MiB), { budget: 32 * MiB, oldSpace: 48, connections: 2048 });
  assert.equal(at(224 * MiB), { budget: 48 * MiB, oldSpace: 56, connections: 2048 });
  assert.equal(at(256 * MiB), { budget: 64 * MiB, oldSpace: 64, connections: 2048 });
  let before = at(128 * MiB);
  for (let limit = 129 * MiB; limit <= 256 * MiB; limit += MiB) {
    const now = at(limit);
    for (const key of ['budget', 'oldSpace'] as const) assert.ok(now[key] >= before[key], `${key} at ${limit / MiB} MiB: ${now[key]}, at ${limit / MiB - 1} MiB: ${before[key]}`);
    // The heap is advised in whole MiB, so the connections it keeps move by a few hundred from one MiB to the next: never past 256 MiB's.
    assert.ok(now.connections <= 2048, `connections at ${limit / MiB} MiB: ${now.connections}`);
    before = now;
  }
});

derive('large text payloads are left unmade as read without a limit and in one of 256 MiB or more; below it each is made as read, as V8 collects Buffers only 64 MB at a time', () => {
  assert.is(LAZY_TEXT_MEMORY, 256 * MiB);
  assert.is(lazyTextFrom(undefined), LAZY_TEXT_BYTES);
  assert.is(lazyTextFrom(256 * MiB), LAZY_TEXT_BYTES);
  assert.is(lazyTextFrom(8 * 1024 * MiB), LAZY_TEXT_BYTES);
  assert.is(lazyTextFrom(255 * MiB), Infinity);
  assert.is(lazyTextFrom(MIN_MEMORY_LIMIT), Infinity);
});

derive(`below ${MIN_MEMORY_LIMIT / MiB} MiB the start line is a warn: too little to run safely, raise the limit and start Node with the heap 128 MiB needs`, () => {
  const note = budgetNote(12 * MiB, FLAG, 96 * MiB, 56 * MiB)!;
  assert.is(note.level, 'warn');
  assert.match(note.message, 'This process may use 96 MiB (its control group\'s memory limit): the buffer budget is 12 MiB, an eighth of it');
  assert.match(note.message, 'but below 128 MiB it cannot run safely');
  assert.match(note.message, 'raise the memory limit to 128 MiB or more and start Node with --max-old-space-size=32');
  assert.is(budgetNote(16 * MiB, FLAG, 128 * MiB, 56 * MiB)!.level, 'info', '128 MiB is enough');
});

derive('a start says what budget it chose and why; a budget or a heap that cannot fit the limit is a warn line saying what to set', () => {
  const heapFits = 100 * MiB;
  assert.is(budgetNote(DEFAULT_BUFFER_BUDGET, FLAG, undefined, heapFits), undefined, 'nothing to say without a limit');
  const chosen = budgetNote(64 * MiB, FLAG, 256 * MiB, heapFits)!;
  assert.is(chosen.level, 'info');
  assert.is(chosen.message, `This process may use 256 MiB (its control group's memory limit): the buffer budget is 64 MiB, a quarter of it (${FLAG} sets another)`);
  assert.is(budgetNote(32 * MiB, FLAG, 256 * MiB, heapFits), undefined, 'a budget set that fits is taken quietly');
  const big = budgetNote(DEFAULT_BUFFER_BUDGET, FLAG, 256 * MiB, heapFits)!;
  assert.is(big.level, 'warn');
  assert.match(big.message, `${FLAG} is 256 MiB, more than half of it`);
  assert.match(big.message, `lower ${FLAG} to ${64 * MiB}`);
  assert.match(budgetNote(0, FLAG, 256 * MiB, heapFits)!.message, `${FLAG} is 0 (no limit)`);
  // V8 sizes its heap from the machine, at least about 256 MB on 64-bit: in a 256 MiB group it may outgrow the limit by itself.
  const heap = budgetNote(64 * MiB, FLAG, 256 * MiB, 280 * MiB)!;
  assert.is(heap.level, 'warn');
  assert.match(heap.message, "V8's heap may grow to 280 MiB");
  assert.match(heap.message, 'NODE_OPTIONS=--max-old-space-size=64');
});

derive('a start reads the memory limit once: its line about the budget speaks of the limit the budget came from', async () => {
  // A limit that changes between two reads (systemctl set-property MemoryMax=, a container's limit raised): the line used to read it again.
  // config/proxy.ts reads it once as it loads (its DEFAULTS, for help texts), which startProxy imports: loaded first, so that read is
  // not the one counted (run alone, this spec's first startProxy loaded it here, and the proxy read the second value).
  await import('../config/proxy.js');
  const real = process.constrainedMemory;
  let reads = 0;
  process.constrainedMemory = () => (++reads === 1 ? 256 * MiB : 512 * MiB);
  const logs: LogRecord[] = [];
  const proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(logs), 'info') }).finally(() => (reads = 0));
  try {
    const server = await startServer({ id: 's', policy: 'P', revproc: proxy.port, logger: new Logger('server', memorySink(logs), 'info') });
    await server.stop();
  } finally {
    process.constrainedMemory = real;
    await proxy.stop();
  }
  const said = logs.filter((r) => r.event === 'memory_limit').map((r) => `${r.actor}: ${r.msg}`);
  assert.is(said.length, 2, said.join('\n'));
  for (const line of said) assert.match(line, /may use 256 MiB .*: the buffer budget is 64 MiB, a quarter of it/);
});

derive('a small V8 heap lowers the default limit on connections to what it holds past 48 MiB and the requests\' half of the buffer budget (4 KiB each, at least 1024); a large one keeps it, and a start says so', () => {
  const proxy = 20000;
  const server = 4096;
  const budget = 64 * MiB; // a quarter of 256 MiB: its requests may hold 32 MiB, decoded in the heap
  assert.is(defaultMaxConnections(proxy, DEFAULT_BUFFER_BUDGET, 4120 * MiB), proxy, "no heap flag on a large machine: V8's own limit");
  assert.is(defaultMaxConnections(proxy, budget, 280 * MiB), proxy, 'Node 20 in a 256 MiB group without a heap flag');
  assert.is(defaultMaxConnections(proxy, budget, 88 * MiB), 2048, 'the heap the warn line advises for 256 MiB (--max-old-space-size=64, 8 MiB semi-spaces) beside its 64 MiB budget');
  assert.is(defaultMaxConnections(proxy, 0, 88 * MiB), 10240, 'no budget: nothing reserved for requests (the memory_limit line warns of it)');
  assert.is(defaultMaxConnections(proxy, 16 * MiB, 72 * MiB), 4096);
  assert.is(defaultMaxConnections(proxy, 16 * MiB, 56 * MiB), 1024, 'for 128 MiB (--max-old-space-size=32 beside a 16 MiB budget): the floor');
  assert.is(defaultMaxConnections(proxy, 0, 16 * MiB), 1024, 'the floor');
  assert.is(defaultMaxConnections(proxy, DEFAULT_BUFFER_BUDGET, 200 * MiB), 6144, 'a 256 MiB budget (no memory limit) lets requests hold 128 MiB of a 200 MiB heap');
  assert.is(defaultMaxConnections(server, 16 * MiB, 72 * MiB), server, "a server's 4096 fits 72 MiB beside a 16 MiB budget");
  assert.is(defaultMaxConnections(server, 16 * MiB, 60 * MiB), 1024);
  assert.is(connectionsNote(proxy, false, proxy, 'max_connections', budget, 280 * MiB), undefined, 'nothing to say of a limit the heap did not lower');
  assert.is(connectionsNote(5000, true, proxy, 'max_connections', budget, 88 * MiB), undefined, 'nor of one set');
  assert.is(connectionsNote(2048, true, proxy, 'max_connections', budget, 88 * MiB), undefined, 'nor of one set to the very number the heap gives');
  const note = connectionsNote(2048, false, proxy, 'max_connections', budget, 88 * MiB)!;
  assert.match(note.message, "V8's heap may grow to 88 MiB (--max-old-space-size): the process keeps at most 2048 connections open at once, not 20000");
  assert.match(note.message, 'past 48 MiB for its young generation and own state and 32 MiB for requests (half the buffer budget)');
  assert.match(note.message, 'max_connections sets another');
  assert.equal(note.fields, { max_connections: 2048, heap_limit: 88 * MiB, budget });
});

derive.run();

const cgroup = suite('memory limit: a real proxy in a real cgroup');
let group: MemoryGroup | undefined;
const sockets: Socket[] = [];
const why = cannotLimitMemory();

cgroup.after.each(() => {
  for (const s of sockets.splice(0)) s.destroy();
  killAll();
  group?.remove();
  group = undefined;
});

cgroup('with its defaults in a 256 MiB group, 400 connections each sending most of a 1 MiB frame are shed (OVERLOADED) and the proxy lives: the kernel killed it', async () => {
  if (why) {
    console.log(`  skipped: this test runs a proxy in a memory-limited control group: ${why}`);
    return;
  }
  group = memoryGroup(256 * MiB);
  const { proc, port } = await proxyProcess([], { memoryGroup: group.procs });
  await proc.waitFor(/may use 256 MiB .*the buffer budget is 64 MiB/);
  // Each declares a frame just under the limit and sends all of it but its last byte: the proxy holds it, waiting for the rest.
  const size = 1024 * 1024 - 100;
  const body = Buffer.alloc(size - 1, 0x61);
  const header = Buffer.alloc(4);
  header.writeUInt32BE(size);
  const cut: Array<ReturnType<typeof collector>> = [];
  for (let i = 0; i < 400; i++) {
    const s = connect({ host: LOCAL, port });
    s.on('error', () => {});
    sockets.push(s);
    cut.push(collector(s));
    s.write(header);
    s.write(body);
  }
  // 400 MiB offered: the budget (64 MiB) holds about 64 of them and sheds the rest, each told why.
  await eventually(() => cut.filter((c) => c.closed).length >= 300 || proc.child.exitCode !== null || proc.child.signalCode !== null, 30000, 'the connections past the budget shed');
  assert.is(group.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${proc.out.join('\n')}`);
  assert.ok(proc.child.exitCode === null && proc.child.signalCode === null, `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode})`);
  const told = cut.filter((c) => c.got.some((m) => (m as { code?: string }).code === 'OVERLOADED')).length;
  assert.ok(told >= 300, `each connection cut is told OVERLOADED: ${told}`);
  // And it still answers: a request now (no server registered) gets its answer.
  const s = connect({ host: LOCAL, port });
  sockets.push(s);
  const c = collector(s);
  s.write(frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'after' }));
  await c.until(() => c.got.length > 0, 10000);
  assert.is((c.got[0] as { code?: string }).code, 'NO_SERVER');
});

/**
 * 64 clients each keeping 4 requests of 1 MB in flight to a server that takes 200 ms over each, against a proxy in a
 * 256 MiB group (or `limit` bytes), `before` run first: far more than the budget lets the requests hold, so most are refused OVERLOADED. Resolves with the
 * proxy and what `revproxy load` reported (its --json object).
 */
/** A proxy in a group of `limit` bytes (256 MiB unless given; `env` its environment) and a server of policy 111 behind it, `id` run with `options`. */
async function serverBehindProxy(env: Record<string, string>, id: string, options: string[], limit = 256 * MiB): Promise<{ proc: Proc; port: number; server: Proc }> {
  group = memoryGroup(limit);
  const { proc, port } = await proxyProcess([], { memoryGroup: group.procs, env });
  await proc.waitFor(new RegExp(`may use ${limit / MiB} MiB`));
  const server = revproxy(['server', '--id', id, '--pp', '111', '--revproc', String(port), ...options]);
  await proc.waitFor(new RegExp(`server id ${id}`));
  return { proc, port, server };
}

/** What V8 prints as it aborts a process whose heap ran out ("FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"): not any log line that names the words. */
const V8_OUT_OF_HEAP = /FATAL ERROR: .*JavaScript heap out of memory/;

async function largeRequestsToSlowServer(env: Record<string, string>, before?: (port: number, proc: Proc) => Promise<void>, limit?: number): Promise<{ proc: Proc; report: { errors: Record<string, number> } }> {
  const { proc, port, server } = await serverBehindProxy(env, 'slow', ['--delay', '200', '--concurrency', '64'], limit);
  await before?.(port, proc);
  const load = revproxy(['load', '--no-progress', '--json', '--revproc', String(port), '-c', '64', '-p', '4', '--payload-size', '1000000', '-d', '3s', '--timeout', '3000']);
  await load.exited;
  server.kill();
  const line = load.out.find((l) => l.startsWith('{'));
  assert.ok(line, `revproxy load reported nothing:\n${load.out.join('\n')}`);
  return { proc, report: JSON.parse(line!) };
}

/** Says why a test is skipped, when `reason` says it is. */
function skipped(reason: string | undefined): boolean {
  if (reason) console.log(`  skipped: ${reason}`);
  return reason !== undefined;
}

/** `n` clients on `port`, client `i` sending `sends(i)` and staying open. */
function crowdOf(port: number, n: number, sends: (i: number) => Buffer): Array<ReturnType<typeof collector>> {
  const conns: Array<ReturnType<typeof collector>> = [];
  for (let i = 0; i < n; i++) {
    const s = connect({ host: LOCAL, port });
    s.on('error', () => {});
    sockets.push(s);
    conns.push(collector(s));
    s.write(sends(i));
  }
  return conns;
}

/** `n` idle clients on `port`: each asks once (no server of policy P: NO_SERVER) and stays open, as idle clients do. */
function idleCrowd(port: number, n: number): Array<ReturnType<typeof collector>> {
  return crowdOf(port, n, (i) => frame({ type: 0, seq: 1, srcid: `c${i}`, privPoliId: 'P', payload: 'x' }));
}

/** Why a test of a proxy in a group under a crowd of `n` connections cannot run here (no group, or this process's open-files limit), or undefined. */
function cannotCrowd(n: number): string | undefined {
  if (why) return `this test runs a proxy in a memory-limited control group: ${why}`;
  const files = fileLimits()?.soft ?? 0;
  return files < n + 1000 ? `this test opens ${n} connections, and this process may open ${files} files (ulimit -n)` : undefined;
}

cgroup('with a heap fitted to its 256 MiB group, 1 MB requests from 64 clients to a slow server are refused OVERLOADED and the proxy lives: those read in one turn of its event loop, not yet held, filled the heap and it died (JavaScript heap out of memory)', async () => {
  if (why) {
    console.log(`  skipped: this test runs a proxy in a memory-limited control group: ${why}`);
    return;
  }
  const { proc, report } = await largeRequestsToSlowServer({ NODE_OPTIONS: `--max-old-space-size=${fittedOldSpace(256 * MiB, 64 * MiB)}`, MALLOC_MMAP_THRESHOLD_: '131072' });
  const out = proc.out.join('\n');
  assert.not.match(out, V8_OUT_OF_HEAP);
  assert.is(group!.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out}`);
  assert.ok(proc.child.exitCode === null && proc.child.signalCode === null, `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out}`);
  assert.ok((report.errors.OVERLOADED ?? 0) > 0, `the requests past the budget are refused OVERLOADED: ${JSON.stringify(report.errors)}`);
});

cgroup('with a heap fitted to its 256 MiB group, 1 MB requests of CJK text from 64 clients to a server that does not answer are refused OVERLOADED and the proxy lives: the budget counted a third of their bytes (their length), V8 holds two thirds, and the heap ran out (JavaScript heap out of memory)', async () => {
  if (why) {
    console.log(`  skipped: this test runs a proxy in a memory-limited control group: ${why}`);
    return;
  }
  // The server reads each request and never answers: the proxy holds them until their time is up.
  const { proc, port } = await serverBehindProxy({ NODE_OPTIONS: `--max-old-space-size=${fittedOldSpace(256 * MiB, 64 * MiB)}`, MALLOC_MMAP_THRESHOLD_: '131072' }, 'silent', ['--behaviour', 'silent']);
  // 333,000 characters of 3 bytes in UTF-8 each: 999,000 bytes on the wire, 666,000 in V8's heap once decoded.
  const text = '漢'.repeat(333000);
  const requests = Buffer.concat([1, 2, 3, 4].map((seq) => frame({ type: 0, seq, srcid: 'cjk', privPoliId: '111', payload: text })));
  const clients = crowdOf(port, 64, () => requests);
  const ended = (): boolean => proc.child.exitCode !== null || proc.child.signalCode !== null;
  await eventually(() => clients.every((c) => c.got.length === 4 || c.closed) || ended(), 30000, 'every request answered, or its connection closed');
  const out = proc.out.join('\n');
  assert.not.match(out, V8_OUT_OF_HEAP);
  assert.is(group!.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out}`);
  assert.not.ok(ended(), `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out}`);
  const overloaded = clients.flatMap((c) => c.got).filter((m) => (m as { code?: string }).code === 'OVERLOADED').length;
  assert.ok(overloaded > 0, 'the requests past the budget are refused OVERLOADED');
});

cgroup('with the heap its start line advises for a 256 MiB group, 1 MB requests from 64 clients to a slow server and a crowd of 10,000 idle connections at once: the crowd past what the heap holds beside the requests is refused and the proxy lives: it took them all (max_connections 10240) and died (JavaScript heap out of memory)', async () => {
  const crowd = 10000;
  if (skipped(cannotCrowd(crowd))) return;
  let conns: Array<ReturnType<typeof collector>> = [];
  const { proc } = await largeRequestsToSlowServer({ NODE_OPTIONS: `--max-old-space-size=${fittedOldSpace(256 * MiB, 64 * MiB)}`, MALLOC_MMAP_THRESHOLD_: '131072' }, async (port, proxy) => {
    // The crowd first, then the load on top of it.
    conns = idleCrowd(port, crowd);
    const ended = (): boolean => proxy.child.exitCode !== null || proxy.child.signalCode !== null;
    await eventually(() => conns.every((c) => c.got.length > 0 || c.closed) || ended(), 60000, 'every connection of the crowd answered or refused');
  });
  const out = (): string => proc.out.join('\n');
  assert.not.match(out(), V8_OUT_OF_HEAP);
  assert.is(group!.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out()}`);
  assert.ok(proc.child.exitCode === null && proc.child.signalCode === null, `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out()}`);
  await proc.waitFor(/V8's heap may grow to 88 MiB .*at most 2048 connections .*32 MiB for requests/);
  const kept = conns.filter((c) => !c.closed).length;
  assert.ok(kept > 0 && kept <= 2048, `it keeps what its heap holds beside the requests and refuses the rest: ${kept} kept`);
  await proc.waitFor(/Refused .*2048 connections are open \(max_connections\)/);
});

/** The idle connections that with the load's 64 and the server's link make the connections a proxy keeps by default with the heap advised for a group of `limit` bytes. */
function crowdUpToDefault(limit: number): number {
  const budget = defaultBufferBudget(limit);
  // The heap of --max-old-space-size=N with the semi-spaces of cli/revproxy.js: N + 24 MiB.
  return defaultMaxConnections(20000, budget, (fittedOldSpace(limit, budget) + 24) * MiB) - 74;
}

/**
 * A proxy with its defaults and the heap its start line advises in a group of `limit` bytes, `crowd` idle connections open,
 * then 64 clients' 1 MB requests to a slow server: they are refused OVERLOADED, the idle connections are kept, and the proxy lives.
 */
async function heavyBesideIdle(limit: number, crowd: number): Promise<void> {
  const oldSpace = fittedOldSpace(limit, defaultBufferBudget(limit));
  let conns: Array<ReturnType<typeof collector>> = [];
  const { proc, report } = await largeRequestsToSlowServer({ NODE_OPTIONS: `--max-old-space-size=${oldSpace}`, MALLOC_MMAP_THRESHOLD_: '131072' }, async (port, proxy) => {
    conns = idleCrowd(port, crowd);
    const ended = (): boolean => proxy.child.exitCode !== null || proxy.child.signalCode !== null;
    await eventually(() => conns.every((c) => c.got.length > 0 || c.closed) || ended(), 60000, 'every connection of the crowd answered or refused');
  }, limit);
  const out = proc.out.join('\n');
  assert.not.match(out, V8_OUT_OF_HEAP);
  assert.is(group!.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out}`);
  assert.ok(proc.child.exitCode === null && proc.child.signalCode === null, `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out}`);
  assert.ok((report.errors.OVERLOADED ?? 0) > 0, `the requests past the budget are refused OVERLOADED: ${JSON.stringify(report.errors)}`);
  assert.is(conns.filter((c) => !c.closed).length, crowd, 'the idle connections are kept');
}

cgroup('with its defaults and the heap its start line advises for a 128 MiB group, 1 MB requests from 64 clients to a slow server beside 950 idle connections are refused OVERLOADED and the proxy lives: with a quarter of it for a budget (32 MiB) and 16 for a heap the requests\' half ran the heap out (JavaScript heap out of memory)', async () => {
  assert.is(crowdUpToDefault(128 * MiB), 950);
  if (skipped(cannotCrowd(950))) return;
  await heavyBesideIdle(128 * MiB, 950);
});

for (const limit of [160, 192, 224]) {
  const crowd = crowdUpToDefault(limit * MiB);
  cgroup(`with its defaults and the heap its start line advises for a ${limit} MiB group, 1 MB requests from 64 clients to a slow server beside ${crowd} idle connections (with them, the connections it keeps) are refused OVERLOADED and the proxy lives`, async () => {
    if (skipped(cannotCrowd(crowd))) return;
    await heavyBesideIdle(limit * MiB, crowd);
  });
}

cgroup('with the heap its start line advises for a 224 MiB group, a crowd of 7,000 idle connections and then 1 MB requests from 64 clients to a slow server: the crowd past what the heap holds is refused and the proxy lives: with an eighth for a budget (28 MiB) it was advised a heap of 66 that kept 7168 connections, and the kernel killed it (1 run of 6) or it peaked within 11-29 MiB of its limit', async () => {
  const crowd = 7000;
  if (skipped(cannotCrowd(crowd))) return;
  let conns: Array<ReturnType<typeof collector>> = [];
  const { proc } = await largeRequestsToSlowServer({ NODE_OPTIONS: `--max-old-space-size=${fittedOldSpace(224 * MiB, defaultBufferBudget(224 * MiB))}`, MALLOC_MMAP_THRESHOLD_: '131072' }, async (port, proxy) => {
    conns = idleCrowd(port, crowd);
    const ended = (): boolean => proxy.child.exitCode !== null || proxy.child.signalCode !== null;
    await eventually(() => conns.every((c) => c.got.length > 0 || c.closed) || ended(), 60000, 'every connection of the crowd answered or refused');
  }, 224 * MiB);
  const out = (): string => proc.out.join('\n');
  assert.not.match(out(), V8_OUT_OF_HEAP);
  assert.is(group!.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out()}`);
  assert.ok(proc.child.exitCode === null && proc.child.signalCode === null, `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out()}`);
  const kept = conns.filter((c) => !c.closed).length;
  assert.ok(kept > 0 && kept <= 2048, `it keeps what its heap holds beside the requests and refuses the rest: ${kept} kept`);
  await proc.waitFor(/may use 224 MiB .*the buffer budget is 48 MiB, half of it less 64 MiB/);
  await proc.waitFor(/V8's heap may grow to 80 MiB .*at most 2048 connections/);
  await proc.waitFor(/Refused .*2048 connections are open \(max_connections\)/);
});

cgroup('in a 96 MiB group a start and proxy --check warn that the limit is too small to run safely and say what to set (still valid: exit 0): with the heap they advised (32) 64 clients\' 1 MB requests got the proxy killed by the kernel, 6 runs of 6', async () => {
  if (skipped(why && `this test runs revproxy in a memory-limited control group: ${why}`)) return;
  group = memoryGroup(96 * MiB);
  const check = revproxy(['proxy', '--check'], { memoryGroup: group.procs });
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.ok(check.out.some((l) => l.includes('warning: This process may use 96 MiB') && l.includes('below 128 MiB it cannot run safely') && l.includes('raise the memory limit to 128 MiB or more and start Node with --max-old-space-size=32')), check.out.join('\n'));
  const { proc } = await proxyProcess([], { memoryGroup: group.procs, env: { NODE_OPTIONS: '--max-old-space-size=32' } });
  await proc.waitFor(/may use 96 MiB .*the buffer budget is 12 MiB, an eighth of it .*below 128 MiB it cannot run safely/);
});

cgroup('with the heap its start line advises for a 128 MiB group, a crowd of idle connections past what that heap holds is refused and the proxy lives: 6000 ended it (JavaScript heap out of memory) under max_connections 20000', async () => {
  const crowd = 6000;
  if (skipped(cannotCrowd(crowd))) return;
  // What the memory_limit warn line says to start Node with in a 128 MiB group (its budget, an eighth: 16 MiB).
  const oldSpace = fittedOldSpace(128 * MiB, defaultBufferBudget(128 * MiB));
  assert.is(oldSpace, 32);
  group = memoryGroup(128 * MiB);
  const { proc, port } = await proxyProcess([], { memoryGroup: group.procs, env: { NODE_OPTIONS: `--max-old-space-size=${oldSpace}`, MALLOC_MMAP_THRESHOLD_: '131072' } });
  await proc.waitFor(/may use 128 MiB/);
  const conns = idleCrowd(port, crowd);
  const ended = (): boolean => proc.child.exitCode !== null || proc.child.signalCode !== null;
  await eventually(() => conns.every((c) => c.got.length > 0 || c.closed) || ended(), 60000, 'every connection answered or refused');
  const out = (): string => proc.out.join('\n');
  assert.not.match(out(), V8_OUT_OF_HEAP);
  assert.is(group.oomKills(), 0, `the kernel's OOM killer killed the proxy; output:\n${out()}`);
  assert.not.ok(ended(), `the proxy runs on (it ended: ${proc.child.exitCode ?? proc.child.signalCode}); output:\n${out()}`);
  assert.is(conns.filter((c) => !c.closed).length, 1024, 'it keeps what its heap holds and refuses the rest');
  await proc.waitFor(/V8's heap may grow to 56 MiB .*at most 1024 connections/);
  await proc.waitFor(/Refused .*connections are open \(max_connections\)/);
  // And it still answers once the crowd goes (a connection the proxy took before it saw the crowd's closes is refused: dial again).
  for (const s of sockets.splice(0)) s.destroy();
  await eventually(async () => {
    const s = connect({ host: LOCAL, port });
    s.on('error', () => {});
    sockets.push(s);
    const c = collector(s);
    s.write(frame({ type: 0, seq: 1, srcid: 'after', privPoliId: 'P', payload: 'after' }));
    await c.until(() => c.got.length > 0 || c.closed, 10000);
    return (c.got[0] as { code?: string } | undefined)?.code === 'NO_SERVER';
  }, 10000, 'a request answered NO_SERVER after the crowd went');
});

cgroup('proxy --check in a 256 MiB group warns of a budget that cannot fit, as a start would (still valid: exit 0)', async () => {
  if (why) {
    console.log(`  skipped: this test runs revproxy in a memory-limited control group: ${why}`);
    return;
  }
  group = memoryGroup(256 * MiB);
  const check = revproxy(['proxy', '--check', '--max-buffered-bytes', '0'], { memoryGroup: group.procs });
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.ok(check.out.some((l) => l.includes('warning: This process may use 256 MiB') && l.includes('is 0 (no limit)') && l.includes('to 67108864')), check.out.join('\n'));
});

cgroup.run();
