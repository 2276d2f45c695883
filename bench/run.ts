/**
 * The benchmark: the same workloads against the servers directly, through
 * the project's proxy, and through HAProxy in TCP mode, in one run on this
 * machine; a table, the ratios that matter, and the results as JSON.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { nativeAcceleration } from '../transport/frame.js';
import { runLoad, type LoadEndpoint, type LoadOptions, type LoadResult } from './loadgen.js';
import {
  fdCount, fileLimits, findHaproxy, freePort, HAPROXY_INSTALL, haproxyVersion, HOST, probe, ProcWatch, spawnChild, spawnRevproxy, startHaproxy,
  stopAll, waitForPort, type Child,
} from './procs.js';
import { poolRoutingRates, type RoutingRate } from './routing.js';
import { registerMany } from './stub.js';

export const WORKLOADS = ['pipelined', 'serial', 'per-request', 'many'] as const;
export type Workload = (typeof WORKLOADS)[number];
export const TARGETS = ['direct', 'proxy', 'haproxy', 'baseline', 'relay'] as const;
export type Target = (typeof TARGETS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Measured seconds per workload and target. */
  durationMs: number;
  warmupMs: number;
  connections: number;
  depth: number;
  /** Connections of the many-connections workload. */
  many: number;
  /** Registered servers in the routing comparison (against 4). */
  registered: number;
  workloads: Workload[];
  targets: Target[];
  routing: boolean;
  outDir: string;
  progress: boolean;
  /** Another checkout of revproxy whose proxy runs as the `baseline` target (before/after comparisons in one run). */
  baseline?: string;
  /** The busy-poll window (us) of the one-at-a-time variants beside the targets; 0 skips them. */
  busyPollUs: number;
}

export const DEFAULT_RESULTS_DIR = fileURLToPath(new URL('../bench/results', import.meta.url));

/** The demo's topology: two policies, two servers each. */
const SERVERS = [
  { id: '100', policy: '111' },
  { id: '200', policy: '222' },
  { id: '300', policy: '111' },
  { id: '400', policy: '222' },
];
const POLICIES = ['111', '222'];

/**
 * The proxy's own limits are sized for the many-connections workload (one
 * request in flight on each of 10,000 connections, over two servers per
 * policy); its defaults would answer part of them OVERLOADED by design.
 */
export const PROXY_FLAGS = ['--max-server-inflight', '10000', '--queue-limit', '10000'];

export interface Row {
  workload: Workload;
  label: string;
  target: Target;
  result: LoadResult;
  /** CPU of the proxy process (ours or HAProxy) over the measured window, in cores; undefined for direct. */
  proxyCpu?: number;
  /** Highest RSS of the proxy process during the workload, bytes. */
  peakRss?: number;
}

/**
 * One end-to-end routing measurement. `pipelined`: 8 x 32 requests in flight,
 * so with 4 members each write carries dozens of requests while with 10,000
 * each request travels alone (the cost of that is syscalls, not routing);
 * `serial`: one request in flight, the same traffic shape at both pool sizes.
 */
export interface RoutingRun {
  members: number;
  mode: 'pipelined' | 'serial';
  result: LoadResult;
}

export interface Check {
  what: string;
  ratio?: number;
  pass: boolean | undefined;
  detail: string;
}

export interface BenchReport {
  date: string;
  machine: { cpus: number; model: string; node: string; haproxy?: string; fileLimit: number; msgpackrNative: boolean };
  options: BenchOptions;
  notes: string[];
  rows: Row[];
  routing?: { pool: RoutingRate[]; endToEnd?: RoutingRun[] };
  /** One-at-a-time variants measured right after the one-at-a-time cells, for information. */
  variants?: SerialVariants;
  checks: Check[];
  file?: string;
}

/**
 * One at a time, measured beside the target's cells to show what the
 * target's ratio is made of.
 */
export interface SerialVariants {
  /**
   * The proxy on a policy served by a single server. HAProxy's `balance
   * roundrobin` in TCP mode picks a server per connection, so its one
   * connection always reaches the same server; the proxy balances each
   * message, so on the two-server policies each request goes to the other one.
   */
  oneServer?: Row;
  /** A second proxy process with `--busy-poll`, on the same servers and policies as the first. */
  busyPoll?: Row;
  /** A second HAProxy with `busy-polling` and one thread (a thread that never sleeps: at most a core, as the proxy's busy polling). */
  haproxyBusy?: Row;
}

interface Topology {
  proxy: Child;
  proxyPort: number;
  servers: Array<{ id: string; policy: string; port: number; child: Child }>;
  haproxy?: { child: Child; ports: Map<string, number>; cleanup(): void };
  baseline?: { child: Child; port: number; close(): void };
  /** bench/bare-relay.mjs: the floor of a Node relay, for reference. */
  relay?: { child: Child; port: number };
}

function workloadConfig(w: Workload, o: BenchOptions): { label: string; load: Omit<LoadOptions, 'target'> } {
  const timing = { durationMs: o.durationMs, warmupMs: o.warmupMs };
  switch (w) {
    case 'pipelined':
      return { label: `pipelined ${o.connections}x${o.depth}`, load: { connections: o.connections, depth: o.depth, ...timing } };
    case 'serial':
      return { label: 'one at a time', load: { connections: 1, depth: 1, ...timing } };
    case 'per-request':
      return { label: 'connection per request', load: { connections: 1, depth: 1, perRequest: true, ...timing } };
    case 'many':
      return { label: `${o.many.toLocaleString('en')} connections`, load: { connections: o.many, depth: 1, connectConcurrency: 256, ...timing } };
    default:
      throw new Error(`unknown workload ${w satisfies never}`);
  }
}

/** Connection i asks for policy i mod 2; direct, it goes to that policy's servers in turn. */
function endpoints(t: Target, topo: Topology): (i: number) => LoadEndpoint {
  const policyOf = (i: number): string => POLICIES[i % POLICIES.length]!;
  if (t === 'proxy') return (i) => ({ host: HOST, port: topo.proxyPort, policy: policyOf(i) });
  if (t === 'haproxy') return (i) => ({ host: HOST, port: topo.haproxy!.ports.get(policyOf(i))!, policy: policyOf(i) });
  if (t === 'baseline') return (i) => ({ host: HOST, port: topo.baseline!.port, policy: policyOf(i) });
  if (t === 'relay') return (i) => ({ host: HOST, port: topo.relay!.port, policy: policyOf(i) });
  const byPolicy = new Map(POLICIES.map((p) => [p, topo.servers.filter((s) => s.policy === p)]));
  return (i) => {
    const policy = policyOf(i);
    const group = byPolicy.get(policy)!;
    return { host: HOST, port: group[Math.floor(i / POLICIES.length) % group.length]!.port, policy };
  };
}

async function startTopology(haproxyBin: string | undefined, baselineDir?: string, withRelay = false): Promise<Topology> {
  const proxyPort = await freePort();
  const proxy = spawnRevproxy('proxy', ['proxy', '--port', String(proxyPort), ...PROXY_FLAGS]);
  await waitForPort(proxyPort, proxy);
  const servers = await Promise.all(
    SERVERS.map(async (s) => {
      const port = await freePort();
      const child = spawnRevproxy(`server ${s.id}`, ['server', '--id', s.id, '--pp', s.policy, '--listen', String(port), '--revproc', String(proxyPort)]);
      await waitForPort(port, child);
      return { ...s, port, child };
    }),
  );
  // Registration travels on its own connection: wait until every server answers through the proxy.
  for (const p of POLICIES) {
    const want = servers.filter((s) => s.policy === p).map((s) => s.id);
    const until = Date.now() + 10000;
    for (;;) {
      const seen = await probe(proxyPort, p, want.length * 2).catch(() => new Set<string>());
      if (want.every((id) => seen.has(id))) break;
      if (Date.now() > until) throw new Error(`servers ${want.join(', ')} did not all register for policy ${p}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  let haproxy: Topology['haproxy'];
  if (haproxyBin) {
    const ports = new Map<string, number>();
    for (const p of POLICIES) ports.set(p, await freePort());
    const h = startHaproxy(
      haproxyBin,
      POLICIES.map((p) => ({ policy: p, port: ports.get(p)!, servers: servers.filter((s) => s.policy === p) })),
    );
    for (const port of ports.values()) await waitForPort(port, h.child);
    haproxy = { child: h.child, ports, cleanup: h.cleanup };
  }
  let baseline: Topology['baseline'];
  if (baselineDir) {
    // The same servers, registered with the baseline proxy by stand-ins that point at their ports.
    const port = await freePort();
    const child = spawnRevproxy('baseline proxy', ['proxy', '--port', String(port), ...PROXY_FLAGS], join(baselineDir, 'cli', 'revproxy.js'));
    await waitForPort(port, child);
    const regs = await Promise.all(servers.map((s) => registerMany(port, s.policy, [s.port], 1, `base${s.id}`)));
    for (const p of POLICIES) await probe(port, p, 4);
    baseline = { child, port, close: () => regs.forEach((r) => r.close()) };
  }
  let relay: Topology['relay'];
  if (withRelay) {
    const port = await freePort();
    const pools = POLICIES.map((p) => `${p}:${servers.filter((s) => s.policy === p).map((s) => s.port).join(',')}`);
    const child = spawnChild('bare relay', process.execPath, [fileURLToPath(new URL('../bench/bare-relay.mjs', import.meta.url)), String(port), ...pools]);
    await waitForPort(port, child);
    relay = { child, port };
  }
  return { proxy, proxyPort, servers, haproxy, baseline, relay };
}

/** Progress: a bar on a terminal, one line per step otherwise. */
function progress(enabled: boolean, total: number) {
  const live = { answered: 0, opened: 0 };
  const tty = enabled && process.stderr.isTTY;
  const bar = tty
    ? new cliProgress.SingleBar(
        { format: ' {bar} {value}/{total} | {step} | {answered} answers', stream: process.stderr, hideCursor: true, clearOnComplete: true },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  bar?.start(total, 0, { step: 'starting', answered: 0 });
  const timer = bar ? setInterval(() => bar.update({ answered: live.answered.toLocaleString('en') }), 250) : undefined;
  let done = 0;
  return {
    live,
    step(name: string) {
      live.answered = 0;
      if (bar) bar.update(done, { step: name, answered: 0 });
      else if (enabled) process.stderr.write(`bench: [${done + 1}/${total}] ${name}\n`);
    },
    advance() {
      done++;
      bar?.update(done);
    },
    stop() {
      if (timer) clearInterval(timer);
      bar?.stop();
    },
  };
}

export async function runBench(o: BenchOptions): Promise<BenchReport> {
  const notes: string[] = [`The proxies run with ${PROXY_FLAGS.join(' ')} (the defaults refuse part of 10,000 concurrent requests with OVERLOADED).`];
  const limits = fileLimits();
  const haproxyBin = o.targets.includes('haproxy') ? findHaproxy() : undefined;
  if (o.targets.includes('haproxy') && !haproxyBin) {
    notes.push(`HAProxy is not installed, so its column is skipped. Install it with: ${HAPROXY_INSTALL}`);
  }
  const targets = o.targets.filter((t) => (t !== 'haproxy' || haproxyBin) && (t !== 'baseline' || o.baseline));
  if (haproxyBin && o.workloads.includes('many')) {
    const holds = Math.floor((limits.hard - 100) / 2);
    if (holds < o.many) notes.push(`HAProxy needs two descriptors per proxied connection: with a hard limit of ${limits.hard} open files it holds about ${holds.toLocaleString('en')} connections at once, fewer than ${o.many.toLocaleString('en')}.`);
  }
  const routingMembers = Math.min(o.registered, Math.floor((limits.hard - 300) / 2));
  if (o.routing && routingMembers < o.registered) {
    notes.push(`Routing end to end uses ${routingMembers.toLocaleString('en')} registered servers, not ${o.registered.toLocaleString('en')}: the proxy holds a registration connection and an upstream link per server, and the hard limit is ${limits.hard} open files (raise it to ${2 * o.registered + 300} for the full count).`);
  }

  const likeForLike = o.workloads.includes('serial') && targets.includes('proxy') && targets.includes('haproxy');
  const variantSteps = likeForLike ? (o.busyPollUs ? 3 : 1) : 0;
  const steps = o.workloads.length * targets.length + variantSteps + (o.routing ? 3 : 0);
  const bar = progress(o.progress, steps);
  const rows: Row[] = [];
  let routing: BenchReport['routing'];
  let variants: SerialVariants | undefined;
  let topo: Topology | undefined;
  try {
    bar.step('starting proxy, servers' + (haproxyBin ? ' and HAProxy' : ''));
    topo = await startTopology(haproxyBin, o.baseline, targets.includes('relay'));
    // Warm every target's code paths (the JIT, connection set-up) so the first measured cell is not penalised.
    bar.step('warming up every target');
    for (const t of targets) {
      await runLoad({ target: endpoints(t, topo), connections: o.connections, depth: o.depth, durationMs: 300 });
      await runLoad({ target: endpoints(t, topo), connections: 1, depth: 1, durationMs: 200 });
      await runLoad({ target: endpoints(t, topo), connections: 1, depth: 1, perRequest: true, durationMs: 200 });
    }
    for (const w of o.workloads) {
      const { label, load } = workloadConfig(w, o);
      for (const t of targets) {
        bar.step(`${label} / ${t}`);
        const watched = t === 'proxy' ? topo.proxy.pid : t === 'haproxy' ? topo.haproxy!.child.pid : t === 'baseline' ? topo.baseline!.child.pid : t === 'relay' ? topo.relay!.child.pid : undefined;
        rows.push({ workload: w, label, target: t, ...(await measure(load, endpoints(t, topo), watched, bar.live)) });
        bar.advance();
        await new Promise((r) => setTimeout(r, 300)); // let closed connections settle before the next step
      }
      if (w === 'serial' && likeForLike) variants = await serialVariants(topo, haproxyBin!, load, o.busyPollUs, bar, notes);
    }
    if (o.routing) {
      topo.haproxy?.child.stop();
      bar.step('routing: pool machine, 4 and 10,000 members');
      const ms = Math.max(300, o.durationMs / 2);
      const pool = poolRoutingRates([4, 10_000], ms);
      bar.advance();
      const endToEnd: RoutingRun[] = [];
      for (const members of [4, routingMembers]) {
        bar.step(`routing: through the proxy, ${members.toLocaleString('en')} registered servers`);
        endToEnd.push(...(await routingEndToEnd(topo, members, o, bar.live)));
        bar.advance();
      }
      routing = { pool, endToEnd };
    }
  } finally {
    bar.stop();
    topo?.haproxy?.cleanup();
    topo?.baseline?.close();
    await stopAll();
  }
  const report: BenchReport = {
    date: new Date().toISOString(),
    machine: {
      cpus: cpus().length,
      model: cpus()[0]?.model ?? 'unknown',
      node: process.version,
      haproxy: haproxyBin ? haproxyVersion(haproxyBin) : undefined,
      fileLimit: limits.soft,
      msgpackrNative: nativeAcceleration,
    },
    options: o,
    notes,
    rows,
    routing,
    variants,
    checks: checks(rows, routing, variants),
  };
  mkdirSync(o.outDir, { recursive: true });
  const file = join(o.outDir, `bench-${report.date.replace(/[:.]/g, '-')}${o.quick ? '-quick' : ''}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  report.file = file;
  return report;
}

/** Measure one workload cell against `target`, watching the CPU and memory of `pid` (the proxy under test) when given. */
async function measure(load: Omit<LoadOptions, 'target'>, target: (i: number) => LoadEndpoint, pid: number | undefined, live: LoadOptions['live']): Promise<Pick<Row, 'result' | 'proxyCpu' | 'peakRss'>> {
  const watch = pid === undefined ? undefined : new ProcWatch(pid);
  const result = await runLoad({ ...load, target, live, window: watch && { start: () => watch.windowStart(), end: () => watch.windowEnd() } });
  const proc = watch?.finish();
  return { result, proxyCpu: proc?.cpu, peakRss: proc?.peakRss };
}

/** A cell on processes started for it alone: a short warm-up first (the main cells share one, run before them all). */
async function cell(load: Omit<LoadOptions, 'target'>, target: (i: number) => LoadEndpoint, pid: number, live: LoadOptions['live']): Promise<Pick<Row, 'result' | 'proxyCpu' | 'peakRss'>> {
  await runLoad({ connections: 1, depth: 1, durationMs: 200, target });
  return measure(load, target, pid, live);
}

/** Wait until `members` servers answer for `policy` through the proxy on `port` (stand-ins register on connections of their own). */
async function untilServed(port: number, policy: string, members: number): Promise<void> {
  const until = Date.now() + 10_000;
  while ((await probe(port, policy, 2 * members).catch(() => new Set<string>())).size < members) {
    if (Date.now() > until) throw new Error(`fewer than ${members} servers answered for policy ${policy} on port ${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The one-at-a-time variants (see SerialVariants), each on processes of its
 * own beside the topology. Information only: a variant that cannot run (an
 * HAProxy without busy-polling, say) is left out with a note, not a failure.
 */
async function serialVariants(topo: Topology, haproxyBin: string, load: Omit<LoadOptions, 'target'>, busyPollUs: number, bar: ReturnType<typeof progress>, notes: string[]): Promise<SerialVariants> {
  const out: SerialVariants = {};
  const label = 'one at a time';
  const variant = async (step: string, measure: () => Promise<void>): Promise<void> => {
    bar.step(`${label} / ${step}`);
    try {
      await measure();
    } catch (err) {
      // The error's first line, and the last line the process printed when it says one.
      const [first, ...tail] = (err as Error).message.split('\n').filter(Boolean);
      notes.push(`One at a time, ${step}: not measured (${first?.replace(/:$/, '')}${tail.length ? `: ${tail[tail.length - 1]}` : ''}).`);
    }
    bar.advance();
    await new Promise((r) => setTimeout(r, 300)); // let closed connections settle before the next step
  };

  await variant('proxy, one-server policy', async () => {
    const server = topo.servers[0]!;
    const solo = await registerMany(topo.proxyPort, 'one-server', [server.port], 1, `solo${server.id}`);
    try {
      await untilServed(topo.proxyPort, 'one-server', 1);
      const m = await cell(load, () => ({ host: HOST, port: topo.proxyPort, policy: 'one-server' }), topo.proxy.pid, bar.live);
      out.oneServer = { workload: 'serial', label: `${label}, one-server policy`, target: 'proxy', ...m };
    } finally {
      solo.close();
    }
  });
  if (!busyPollUs) return out;

  await variant(`proxy --busy-poll ${busyPollUs}`, async () => {
    const port = await freePort();
    const busy = spawnRevproxy('proxy --busy-poll', ['proxy', '--port', String(port), ...PROXY_FLAGS, '--busy-poll', String(busyPollUs)]);
    const regs: Array<{ close(): void }> = [];
    try {
      await waitForPort(port, busy);
      // The same servers and policies as the proxy under test, registered by stand-ins that point at their ports.
      for (const p of POLICIES) {
        const ports = topo.servers.filter((s) => s.policy === p).map((s) => s.port);
        regs.push(await registerMany(port, p, ports, ports.length, `busy${p}`));
        await untilServed(port, p, ports.length);
      }
      const m = await cell(load, (i) => ({ host: HOST, port, policy: POLICIES[i % POLICIES.length]! }), busy.pid, bar.live);
      out.busyPoll = { workload: 'serial', label: `${label}, --busy-poll ${busyPollUs}`, target: 'proxy', ...m };
    } finally {
      for (const r of regs) r.close();
      await busy.stop();
    }
  });

  await variant('HAProxy busy-polling', async () => {
    const ports = new Map<string, number>();
    for (const p of POLICIES) ports.set(p, await freePort());
    const h = startHaproxy(haproxyBin, POLICIES.map((p) => ({ policy: p, port: ports.get(p)!, servers: topo.servers.filter((s) => s.policy === p) })), { busyPolling: true });
    try {
      for (const port of ports.values()) await waitForPort(port, h.child);
      const m = await cell(load, (i) => ({ host: HOST, port: ports.get(POLICIES[i % POLICIES.length]!)!, policy: POLICIES[i % POLICIES.length]! }), h.child.pid, bar.live);
      out.haproxyBusy = { workload: 'serial', label: `${label}, busy-polling`, target: 'haproxy', ...m };
    } finally {
      await h.child.stop();
      h.cleanup();
    }
  });
  return out;
}

/**
 * Register `members` stub ids for a policy of their own, all pointing at the
 * four real servers, and run the pipelined workload through the proxy on it.
 */
async function routingEndToEnd(topo: Topology, members: number, o: BenchOptions, live: LoadOptions['live']): Promise<RoutingRun[]> {
  const policy = `routing-${members}`;
  const base = fdCount(topo.proxy.pid);
  const reg = await registerMany(topo.proxyPort, policy, topo.servers.map((s) => s.port), members, policy);
  try {
    // The proxy dials every member's listen port: wait until it holds both connections of each.
    const until = Date.now() + 60_000;
    while (fdCount(topo.proxy.pid) < base + 2 * members && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    await probe(topo.proxyPort, policy, 4);
    const runs: RoutingRun[] = [];
    for (const mode of ['pipelined', 'serial'] as const) {
      const result = await runLoad({
        connections: mode === 'pipelined' ? o.connections : 1,
        depth: mode === 'pipelined' ? o.depth : 1,
        durationMs: o.durationMs,
        warmupMs: o.warmupMs,
        target: () => ({ host: HOST, port: topo.proxyPort, policy }),
        live,
      });
      runs.push({ members, mode, result });
    }
    return runs;
  } finally {
    reg.close();
    await new Promise((r) => setTimeout(r, 500));
  }
}

function find(rows: Row[], w: Workload, t: Target): Row | undefined {
  return rows.find((r) => r.workload === w && r.target === t);
}

const MB = 1024 * 1024;

export function checks(rows: Row[], routing: BenchReport['routing'], variants?: SerialVariants): Check[] {
  const out: Check[] = [];
  const ratio = (a?: number, b?: number): number | undefined => (a !== undefined && b ? a / b : undefined);
  const add = (what: string, r: number | undefined, ok: (r: number) => boolean, detail: string): void => {
    out.push({ what, ratio: r, pass: r === undefined ? undefined : ok(r), detail: r === undefined ? 'not measured' : detail });
  };
  const pp = find(rows, 'pipelined', 'proxy');
  const r1 = ratio(pp?.result.rps, find(rows, 'pipelined', 'direct')?.result.rps);
  add('pipelined throughput, proxy / direct >= 0.8', r1, (r) => r >= 0.8, `${r1?.toFixed(2)}x`);
  const r2 = ratio(pp?.result.rps, find(rows, 'pipelined', 'haproxy')?.result.rps);
  add('pipelined throughput, proxy / HAProxy >= 1.0', r2, (r) => r >= 1.0, `${r2?.toFixed(2)}x`);
  const r3 = ratio(find(rows, 'serial', 'proxy')?.result.latency.p50, find(rows, 'serial', 'haproxy')?.result.latency.p50);
  add('one-at-a-time p50, proxy / HAProxy <= 1.2', r3, (r) => r <= 1.2, `${r3?.toFixed(2)}x`);
  const hp50 = find(rows, 'serial', 'haproxy')?.result.latency.p50;
  const info = (what: string, row: Row | undefined, against: number | undefined, why: string): void => {
    if (!row) return;
    const r = ratio(row.result.latency.p50, against);
    out.push({ what, ratio: r, pass: undefined, detail: r === undefined ? 'not measured' : `${r.toFixed(2)}x (${fmtMs(row.result.latency.p50)} vs ${fmtMs(against!)} ms): ${why}` });
  };
  info('one-at-a-time p50, proxy on a one-server policy / HAProxy (like for like, for information)', variants?.oneServer, hp50,
    'HAProxy balances connections, so its one connection always reaches the same server');
  const bp = variants?.busyPoll;
  // Its label is "one at a time, --busy-poll N": the proxy's flag, as it ran.
  const busy = `proxy ${bp?.label.split(', ')[1] ?? '--busy-poll'}`;
  info(`one-at-a-time p50, ${busy} / HAProxy (for information)`, bp, hp50,
    'polling instead of sleeping after traffic; HAProxy as configured for the target sleeps');
  info(`one-at-a-time p50, ${busy} / HAProxy busy-polling (both polling, for information)`, bp, variants?.haproxyBusy?.result.latency.p50,
    'HAProxy with busy-polling and one thread never sleeps');
  const many = find(rows, 'many', 'proxy');
  if (many) {
    const errors = Object.values(many.result.errors).reduce((a, b) => a + b, 0) + many.result.wrongHash;
    const rss = (many.peakRss ?? 0) / MB;
    out.push({
      what: `${many.result.connected.toLocaleString('en')} connections through the proxy: RSS < 256 MB, no errors`,
      ratio: rss / 256,
      pass: rss < 256 && errors === 0,
      detail: `peak RSS ${rss.toFixed(0)} MB, ${errors} errors`,
    });
  } else out.push({ what: 'many connections through the proxy', pass: undefined, detail: 'not measured' });
  if (routing) {
    const [p4, pN] = routing.pool;
    const r4 = ratio(pN?.rate, p4?.rate);
    add(`pool routing rate, ${pN?.members.toLocaleString('en')} members / 4 (pool machine alone)`, r4, (r) => r >= 0.8, `${r4?.toFixed(2)}x (${fmtRate(pN?.rate)} vs ${fmtRate(p4?.rate)} requests/s)`);
    const e2e = routing.endToEnd ?? [];
    const run = (mode: RoutingRun['mode'], big: boolean): RoutingRun | undefined => e2e.find((e) => e.mode === mode && (e.members > 4) === big);
    const s4 = run('serial', false);
    const sN = run('serial', true);
    const rs = ratio(sN?.result.latency.p50, s4?.result.latency.p50);
    add(`one-at-a-time p50 through the proxy, ${sN?.members.toLocaleString('en')} registered servers / 4 <= 1.25`, rs, (r) => r <= 1.25, `${rs?.toFixed(2)}x (${fmtMs(sN?.result.latency.p50 ?? 0)} vs ${fmtMs(s4?.result.latency.p50 ?? 0)} ms)`);
    const f4 = run('pipelined', false);
    const fN = run('pipelined', true);
    const rp = ratio(fN?.result.rps, f4?.result.rps);
    // Not a routing figure: with 8 x 32 in flight over 10,000 members every request is its own write and read on both sides.
    out.push({
      what: `pipelined through the proxy, ${fN?.members.toLocaleString('en')} registered servers / 4 (fan-out, for information)`,
      ratio: rp,
      pass: undefined,
      detail: rp === undefined ? 'not measured' : `${rp.toFixed(2)}x: each request is alone on its server's connection`,
    });
  }
  return out;
}

function fmtRate(r?: number): string {
  if (r === undefined) return '-';
  return r >= 1e6 ? `${(r / 1e6).toFixed(1)}M` : r >= 1e3 ? `${(r / 1e3).toFixed(1)}k` : r.toFixed(0);
}

const fmtMs = (ms: number): string => (ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3));

function errorsOf(r: LoadResult): string {
  const n = Object.values(r.errors).reduce((a, b) => a + b, 0) + r.wrongHash;
  if (n === 0) return '0';
  const kinds = Object.entries(r.errors).map(([k, v]) => `${k} ${v}`);
  if (r.wrongHash) kinds.push(`wrong hash ${r.wrongHash}`);
  return `${n} (${kinds.join(', ')})`;
}

function textTable(head: string[], rows: string[][], right: Set<number>): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (right.has(i) ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The report as people read it: results, ratios, targets. Markdown when `markdown`, for the README. */
export function formatReport(rep: BenchReport, markdown = false): string {
  const head = ['workload', 'target', 'requests/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'errors', 'proxy CPU', 'proxy peak RSS'];
  // The one-at-a-time variants show under the one-at-a-time rows.
  const shown = [...rep.rows];
  const v = rep.variants;
  const extra = v ? [v.oneServer, v.busyPoll, v.haproxyBusy].filter((r): r is Row => r !== undefined) : [];
  shown.splice(shown.map((r) => r.workload).lastIndexOf('serial') + 1, 0, ...extra);
  const body = shown.map((r) => [
    r.label,
    r.target === 'haproxy' ? 'HAProxy' : r.target === 'baseline' ? 'baseline proxy' : r.target === 'relay' ? 'bare Node relay' : r.target,
    Math.round(r.result.rps).toLocaleString('en'),
    fmtMs(r.result.latency.p50),
    fmtMs(r.result.latency.p99),
    fmtMs(r.result.latency.p999),
    errorsOf(r.result),
    r.proxyCpu === undefined ? '-' : `${Math.round(r.proxyCpu * 100)}%`,
    r.peakRss === undefined ? '-' : `${(r.peakRss / MB).toFixed(0)} MB`,
  ]);
  const withBase = rep.rows.some((r) => r.target === 'baseline');
  const withRelay = rep.rows.some((r) => r.target === 'relay');
  const ratioHead = [
    'workload', 'req/s proxy/direct', 'req/s proxy/HAProxy', 'p50 proxy/direct', 'p50 proxy/HAProxy',
    ...(withBase ? ['req/s proxy/baseline', 'p50 proxy/baseline'] : []),
    ...(withRelay ? ['req/s relay/direct', 'req/s relay/HAProxy', 'p50 relay/HAProxy'] : []),
  ];
  const labels = [...new Set(rep.rows.map((r) => r.workload))];
  const ratioRows = labels.map((w) => {
    const get = (t: Target): Row | undefined => find(rep.rows, w, t);
    const q = (a?: number, b?: number): string => (a !== undefined && b ? `${(a / b).toFixed(2)}x` : '-');
    const p = get('proxy');
    return [
      p?.label ?? w,
      q(p?.result.rps, get('direct')?.result.rps),
      q(p?.result.rps, get('haproxy')?.result.rps),
      q(p?.result.latency.p50, get('direct')?.result.latency.p50),
      q(p?.result.latency.p50, get('haproxy')?.result.latency.p50),
      ...(withBase ? [q(p?.result.rps, get('baseline')?.result.rps), q(p?.result.latency.p50, get('baseline')?.result.latency.p50)] : []),
      ...(withRelay
        ? [q(get('relay')?.result.rps, get('direct')?.result.rps), q(get('relay')?.result.rps, get('haproxy')?.result.rps), q(get('relay')?.result.latency.p50, get('haproxy')?.result.latency.p50)]
        : []),
    ];
  });
  const checkRows = rep.checks.map((c) => [c.pass === undefined ? (c.ratio === undefined ? 'n/a' : 'info') : c.pass ? 'PASS' : 'FAIL', c.what, c.detail]);
  const routingRows = rep.routing
    ? [
        ...rep.routing.pool.map((p) => [`pool machine alone, ${p.members.toLocaleString('en')} members`, `${fmtRate(p.rate)} routed/s`, '-']),
        ...(rep.routing.endToEnd ?? []).map((e) => [
          `${e.mode === 'serial' ? 'one at a time' : 'pipelined'} through the proxy, ${e.members.toLocaleString('en')} registered`,
          e.mode === 'serial' ? `p50 ${fmtMs(e.result.latency.p50)} ms` : `${Math.round(e.result.rps).toLocaleString('en')} req/s`,
          errorsOf(e.result),
        ]),
      ]
    : [];
  const m = rep.machine;
  const about = `${m.cpus} CPUs (${m.model}), Node ${m.node}, msgpackr native addon ${m.msgpackrNative ? 'on' : 'OFF'}${m.haproxy ? `, HAProxy ${m.haproxy}` : ', no HAProxy'}, ${rep.options.quick ? 'quick run' : 'full run'}: ${rep.options.durationMs / 1000} s measured per cell after ${rep.options.warmupMs / 1000} s warm-up`;
  if (markdown) {
    const md = (h: string[], rows: string[][]): string =>
      [`| ${h.join(' | ')} |`, `|${h.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
    return [
      about,
      '',
      md(head, body),
      '',
      md(ratioHead, ratioRows),
      ...(routingRows.length ? ['', md(['routing', 'rate', 'errors'], routingRows)] : []),
      '',
      md(['', 'target', 'measured'], checkRows),
      ...rep.notes.map((n) => `\n- ${n}`),
    ].join('\n');
  }
  return [
    about,
    '',
    textTable(head, body, new Set([2, 3, 4, 5, 7, 8])),
    '',
    textTable(ratioHead, ratioRows, new Set([1, 2, 3, 4, 5, 6])),
    ...(routingRows.length ? ['', textTable(['routing', 'rate', 'errors'], routingRows, new Set([1]))] : []),
    '',
    textTable(['', 'target', 'measured'], checkRows, new Set()),
    ...rep.notes.map((n) => `note: ${n}`),
    ...(rep.file ? [`\nresults: ${rep.file}`] : []),
  ].join('\n');
}
