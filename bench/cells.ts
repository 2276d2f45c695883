/**
 * Measuring: the workloads' settings, one cell (a workload against a target,
 * watching the process under test), the one-at-a-time variants on processes
 * of their own, and the routing comparison through the proxy.
 */
import { runLoad, type LoadEndpoint, type LoadOptions } from './loadgen.js';
import { fdCount, freePort, HOST, probe, ProcWatch, spawnRevproxy, startHaproxy, waitForPort } from './procs.js';
import type { Progress } from './progress.js';
import { registerMany } from './stub.js';
import { POLICIES, PROXY_FLAGS, untilServed, type Topology } from './topology.js';
import type { BenchOptions, Row, RoutingRun, SerialVariants, Workload } from './types.js';

export function workloadConfig(w: Workload, o: BenchOptions): { label: string; load: Omit<LoadOptions, 'target'> } {
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
/** Measure one workload cell against `target`, watching the CPU and memory of `pid` (the proxy under test) when given. */
export async function measure(load: Omit<LoadOptions, 'target'>, target: (i: number) => LoadEndpoint, pid: number | undefined, live: LoadOptions['live']): Promise<Pick<Row, 'result' | 'proxyCpu' | 'peakRss'>> {
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
/**
 * The one-at-a-time variants (see SerialVariants), each on processes of its
 * own beside the topology. Information only: a variant that cannot run (an
 * HAProxy without busy-polling, say) is left out with a note, not a failure.
 */
export async function serialVariants(topo: Topology, haproxyBin: string, load: Omit<LoadOptions, 'target'>, busyPollUs: number, bar: Progress, notes: string[]): Promise<SerialVariants> {
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
export async function routingEndToEnd(topo: Topology, members: number, o: BenchOptions, live: LoadOptions['live']): Promise<RoutingRun[]> {
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
