/**
 * The benchmark: the same workloads against the servers directly, through
 * the project's proxy, through HAProxy in TCP mode and a bare Node relay, in
 * rounds on this machine; medians, the ratios with their range, the verdicts,
 * and every cell as JSON. This file keeps the order of the run; each step
 * has a file of its own (topology, workloads, cells, rounds, verdicts, report).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeAcceleration } from '../transport/frame.js';
import { CLIENT_ROOM_MAX, filesFor, fileRoom } from '../actors/port-limits.js';
import { measureCell, ROUTING_SPARE, routingEndToEnd, routingRoom } from './cells.js';
import { runLoad } from './loadgen.js';
import { fileLimits, findHaproxy, HAPROXY_INSTALL, haproxyVersion, revproxyOptions, stopAll } from './procs.js';
import { progress } from './progress.js';
import { runRounds, summarise } from './rounds.js';
import { poolRoutingRates } from './routing.js';
import { demoPolicies, endpoints, PROXY_FLAGS, startTopology, warm, type PairTarget, type ProxyPair, type Topology } from './topology.js';
import type { BenchOptions, BenchReport, Row, RoutingRun } from './types.js';
import { checks } from './verdicts.js';
import { firstAndLast, accessLogMissing, planWorkload, slowServersMissing, targetName, type Capabilities } from './workloads.js';

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 300)); // let closed connections settle before the next cell

export async function runBench(options: BenchOptions): Promise<BenchReport> {
  let o = options;
  const notes: string[] = [`The proxies run with ${PROXY_FLAGS.join(' ')} (the defaults refuse part of 10,000 concurrent requests with OVERLOADED).`];
  const limits = fileLimits();
  const haproxyBin = o.targets.includes('haproxy') ? findHaproxy() : undefined;
  if (o.targets.includes('haproxy') && !haproxyBin) {
    notes.push(`HAProxy is not installed, so its column is skipped. Install it with: ${HAPROXY_INSTALL}`);
  }
  const targets = o.targets.filter((t) => (t !== 'haproxy' || haproxyBin) && (t !== 'baseline' || o.baseline));
  const pairTargets = targets.filter((t): t is PairTarget => t === 'proxy' || t === 'baseline');
  if (o.baseline && pairTargets.length === 2 && o.rounds % 2) {
    notes.push(`${o.rounds + 1} rounds per workload, not ${o.rounds}: with a baseline, which of the two proxies starts and is measured first alternates each round, so each does so as often as the other.`);
    o = { ...o, rounds: o.rounds + 1 };
  }
  if (haproxyBin && o.workloads.includes('many')) {
    const holds = Math.floor((limits.hard - 100) / 2);
    if (holds < o.many) notes.push(`HAProxy needs two descriptors per proxied connection: with a hard limit of ${limits.hard} open files it holds about ${holds.toLocaleString('en')} connections at once, fewer than ${o.many.toLocaleString('en')}.`);
  }
  const routingMembers = routingRoom(o.registered, limits.hard, o.connections);
  if (o.routing && routingMembers < o.registered) {
    notes.push(`Routing end to end uses ${routingMembers.toLocaleString('en')} registered servers, not ${o.registered.toLocaleString('en')}: the proxy holds a registration connection and an upstream link per server, and keeps them and its clients within the room its open-files limit leaves (${fileRoom(limits.hard).toLocaleString('en')} of ${limits.hard}; docs/CONFIG.md, "The open-files limit"); raise the hard limit to ${filesFor(2 * o.registered + ROUTING_SPARE + o.connections + CLIENT_ROOM_MAX)} for the full count.`);
  }
  // What this checkout can do: the workloads that need more are named in the notes and the verdicts, not failed.
  const caps: Capabilities = { concurrency: revproxyOptions('server').has('--concurrency'), accessLog: revproxyOptions('proxy').get('--access-log') };

  const bar = progress(o.progress, 2 + (o.routing ? 3 : 0));
  const rows: Row[] = [];
  const tmpDir = mkdtempSync(join(tmpdir(), 'revproxy-bench-'));
  let routing: BenchReport['routing'];
  let topo: Topology | undefined;
  try {
    bar.step('starting proxy, servers' + (haproxyBin ? ' and HAProxy' : ''));
    topo = await startTopology({ haproxyBin, baselineDir: o.baseline, pairTargets, relay: targets.includes('relay'), slow: caps.concurrency && o.workloads.includes('slow-servers') });
    const pair = topo.pair;
    if (pair) notes.push(pairNote(pair));
    bar.advance();
    // Warm every target's code paths (the JIT, connection set-up) so the first round is not all cold (the pair's are warmed as each round starts them).
    bar.step('warming up every target');
    // The topology's proxy still serves the variants (the one-server policy) when the pair runs the target `proxy`.
    const warmed = [...targets.filter((t) => !pair?.serves(t)).map((t) => endpoints(t, topo!)), ...(pair?.serves('proxy') ? [demoPolicies(topo.proxyPort)] : [])];
    for (const target of warmed) {
      await warm(target, o);
      await runLoad({ target, connections: 1, depth: 1, perRequest: true, durationMs: 200 });
    }
    bar.advance();
    for (const w of o.workloads) {
      const plan = await planWorkload(w, { topo, o, targets, haproxyBin, caps, tmpDir, notes });
      if (!plan) continue;
      bar.grow(o.rounds * plan.subjects.length);
      try {
        await runRounds(
          plan.subjects,
          o.rounds,
          async (s, round) => {
            bar.step(`${s.label} / ${targetName(s.target)}, round ${round + 1} of ${o.rounds}`);
            try {
              rows.push(await measureCell(plan, s, round, bar.live));
            } finally {
              bar.advance();
              await settle();
            }
          },
          (s, err) => notes.push(`${s.label} / ${targetName(s.target)}: left out of the rounds after a failure (${firstAndLast(err)}).`),
          pair && {
            subjects: plan.subjects.filter((s) => s.subject === s.target && pair.serves(s.target)),
            start: async (order) => {
              bar.step(`${plan.label}: starting ${order.map((s) => targetName(s.target)).join(' and ')} afresh`);
              await pair.start(order.map((s) => s.target as PairTarget), o);
            },
          },
        );
      } finally {
        await pair?.stop();
        await plan.close();
      }
    }
    if (o.routing) {
      topo.haproxy?.child.stop();
      try {
        bar.step('routing: pool machine, 4 and 10,000 members');
        const ms = Math.max(300, o.durationMs / 2);
        const pool = poolRoutingRates([4, 10_000], ms);
        bar.advance();
        routing = { pool };
        const endToEnd: RoutingRun[] = [];
        for (const members of [4, routingMembers]) {
          bar.step(`routing: through the proxy, ${members.toLocaleString('en')} registered servers`);
          endToEnd.push(...(await routingEndToEnd(topo, members, o, bar.live)));
          bar.advance();
        }
        routing = { pool, endToEnd };
      } catch (err) {
        notes.push(`Routing through the proxy: not measured (${firstAndLast(err)}).`);
      }
    }
  } finally {
    bar.stop();
    topo?.haproxy?.cleanup();
    await topo?.pair?.stop();
    await stopAll();
    rmSync(tmpDir, { recursive: true, force: true });
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
    summary: summarise(rows),
    routing,
    checks: checks(rows, routing, { slowServers: slowServersMissing(caps), accessLog: accessLogMissing(caps) }),
  };
  mkdirSync(o.outDir, { recursive: true });
  const file = join(o.outDir, `bench-${report.date.replace(/[:.]/g, '-')}${o.quick ? '-quick' : ''}.json`);
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  report.file = file;
  return report;
}

/** How a before/after run's two proxies ran, for the notes. */
function pairNote(pair: ProxyPair): string {
  const dropped = PROXY_FLAGS.filter((f, i) => i % 2 === 0 && !pair.flags.includes(f));
  const flags = `${pair.flags.join(' ') || 'no proxy flags'}${dropped.length ? ` (not ${dropped.join(', ')}: a checkout lacks ${dropped.length === 1 ? 'it' : 'them'})` : ''}`;
  return `${pair.targets.map(targetName).join(' and ')}: started afresh in every round of a workload, alike (stand-ins register every server with each as it would itself; ${flags}), each warmed, ${pair.targets.length === 2 ? 'measured one right after the other, which first alternating each round' : 'then measured'}; not the topology's proxy, which serves the variants and the routing comparison.`;
}
