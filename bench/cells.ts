/**
 * Measuring one cell: a workload's load against one subject, with the CPU of
 * every process under test read from /proc over the measured window; and the
 * routing comparison through the proxy.
 */
import { clientRoom, fileRoom } from '../actors/port-limits.js';
import { runLoad, type LoadOptions } from './loadgen.js';
import { fdCount, HOST, ProcWatch } from './procs.js';
import { registerMany } from './stub.js';
import { untilServed, type Topology } from './topology.js';
import type { BenchOptions, Row, RoutingRun } from './types.js';
import type { CellSubject, WorkloadPlan } from './workloads.js';

/** Measure `s` under `plan`'s load in round `round`. */
export async function measureCell(plan: WorkloadPlan, s: CellSubject, round: number, live: LoadOptions['live']): Promise<Row> {
  const stage = await s.open();
  try {
    const watch = new ProcWatch({ underTest: stage.underTest === undefined ? [] : [stage.underTest], servers: stage.servers, loadgen: [process.pid] }, stage.underTest);
    const result = await runLoad({ ...plan.load, ...stage.load, target: stage.endpoint, live, window: { start: () => watch.windowStart(), end: () => watch.windowEnd() } });
    const w = watch.finish();
    const answers = result.answered;
    const perRequest = (group: string): number | undefined => (answers ? (w.cpu[group]! * 1e6) / answers : undefined);
    return {
      workload: plan.workload,
      label: s.label,
      subject: s.subject,
      target: s.target,
      round,
      result,
      proxyCpu: stage.underTest === undefined ? undefined : w.cpu.underTest! / w.seconds,
      peakRss: w.peakRss,
      cpuUs: { underTest: stage.underTest === undefined ? undefined : perRequest('underTest'), servers: perRequest('servers'), loadgen: perRequest('loadgen') },
    };
  } finally {
    await stage.close?.();
  }
}

/**
 * Register `members` stub ids for a policy of their own, all pointing at the
 * four real servers, and run the pipelined workload through the proxy on it.
 */
/** Descriptors the routing comparison leaves the proxy beside its registrations, links and load connections: the topology's own servers, their links, its logs. */
export const ROUTING_SPARE = 64;

/** How long the routing comparison waits for one more registration before it gives up. */
const STALLED_MS = 15_000;

/**
 * Servers the routing comparison can register: each takes a registration connection and a link,
 * which with the load's `connections` must fit the room the proxy's open-files limit (`hard`, the
 * bench raises each process's soft limit to it) leaves, less the descriptors its links leave to
 * clients (`clientRoom`: without them the proxy held 8,709 of 8,714 and refused the rest); past it
 * the proxy refuses registrations and clients, as it should (docs/CONFIG.md, "The open-files limit").
 */
export function routingRoom(registered: number, hard: number, connections: number): number {
  const room = fileRoom(hard);
  return Math.max(0, Math.min(registered, Math.floor((room - clientRoom(room) - connections - ROUTING_SPARE) / 2)));
}

export async function routingEndToEnd(topo: Topology, members: number, o: BenchOptions, live: LoadOptions['live']): Promise<RoutingRun[]> {
  const policy = `routing-${members}`;
  const base = fdCount(topo.proxy.pid);
  const reg = await registerMany(topo.proxyPort, policy, topo.servers.map((s) => s.port), members, policy);
  try {
    // The proxy dials every member's listen port: wait until it holds both connections of each,
    // as long as their count grows (a loaded machine takes minutes for 8,000).
    let fds = fdCount(topo.proxy.pid);
    for (let last = fds, since = Date.now(); fds < base + 2 * members && Date.now() - since < STALLED_MS; fds = fdCount(topo.proxy.pid)) {
      if (fds > last) [last, since] = [fds, Date.now()];
      await new Promise((r) => setTimeout(r, 100));
    }
    const held = Math.min(Math.floor((fds - base) / 2), reg.count);
    if (held < members) throw new Error(`the proxy held ${held.toLocaleString('en')} of ${members.toLocaleString('en')} registrations with their links, and no more for ${STALLED_MS / 1000} s`);
    await untilServed(topo.proxyPort, policy, topo.servers.length);
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
