/**
 * The benchmark: the same workloads against the servers directly, through
 * the project's proxy, and through HAProxy in TCP mode, in one run on this
 * machine; a table, the ratios that matter, and the results as JSON.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { nativeAcceleration } from '../transport/frame.js';
import { measure, routingEndToEnd, serialVariants, workloadConfig } from './cells.js';
import { runLoad } from './loadgen.js';
import { fileLimits, findHaproxy, HAPROXY_INSTALL, haproxyVersion, stopAll } from './procs.js';
import { progress } from './progress.js';
import { poolRoutingRates } from './routing.js';
import { endpoints, PROXY_FLAGS, startTopology, watchedPid, type Topology } from './topology.js';
import type { BenchOptions, BenchReport, Row, RoutingRun, SerialVariants } from './types.js';
import { checks } from './verdicts.js';

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
        const watched = watchedPid(t, topo);
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
