/** The report as people read it: the medians over the rounds, the ratios with their range, the routing comparison and the verdicts, as text or Markdown. */
import type { LoadResult } from './loadgen.js';
import { fmtMs, fmtRate, MB } from './format.js';
import { ratioSpread } from './rounds.js';
import type { BenchReport, Row, Subject, Summary } from './types.js';
import { targetName } from './workloads.js';

function errorsOf(r: Pick<LoadResult, 'errors' | 'wrongHash'>): string {
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

/** The report as people read it: medians over the rounds, ratios with their range, the targets. Markdown when `markdown`, for the README. */
export function formatReport(rep: BenchReport, markdown = false): string {
  const head = ['workload', 'target', 'requests/s', 'p50 ms', 'p99 ms', 'p99.9 ms', 'errors', 'CPU', 'CPU us/req', 'servers us/req', 'load gen us/req', 'peak RSS'];
  const us = (v?: number): string => (v === undefined ? '-' : v.toFixed(2));
  const body = rep.summary.map((r: Summary) => [
    r.label,
    targetName(r.target),
    Math.round(r.rps.median).toLocaleString('en'),
    fmtMs(r.p50.median),
    fmtMs(r.p99.median),
    fmtMs(r.p999.median),
    errorsOf(r),
    r.proxyCpu === undefined ? '-' : `${Math.round(r.proxyCpu * 100)}%`,
    us(r.cpuUs.underTest),
    us(r.cpuUs.servers),
    us(r.cpuUs.loadgen),
    r.peakRss === undefined ? '-' : `${(r.peakRss / MB).toFixed(0)} MB`,
  ]);
  const has = (s: Subject): boolean => rep.rows.some((r) => r.subject === s);
  const withBase = has('baseline');
  const withRelay = has('relay');
  const ratioHead = [
    'workload', 'req/s proxy/direct', 'req/s proxy/HAProxy', 'p50 proxy/direct', 'p50 proxy/HAProxy',
    ...(withBase ? ['req/s proxy/baseline', 'p50 proxy/baseline', 'CPU us/req proxy/baseline'] : []),
    ...(withRelay ? ['req/s proxy/relay', 'req/s relay/direct', 'req/s relay/HAProxy', 'p50 relay/HAProxy'] : []),
  ];
  const rps = (r: Row): number => r.result.rps;
  const p50 = (r: Row): number => r.result.latency.p50;
  const cpuUs = (r: Row): number | undefined => r.cpuUs.underTest;
  const ratioRows = [...new Set(rep.rows.map((r) => r.workload))].map((w) => {
    const q = (a: Subject, b: Subject, figure: (r: Row) => number | undefined): string => {
      const s = ratioSpread(rep.rows, w, a, b, figure);
      return s ? `${s.median.toFixed(2)}x (${s.min.toFixed(2)}-${s.max.toFixed(2)})` : '-';
    };
    return [
      rep.rows.find((r) => r.workload === w && r.subject === r.target)?.label ?? w,
      q('proxy', 'direct', rps),
      q('proxy', 'haproxy', rps),
      q('proxy', 'direct', p50),
      q('proxy', 'haproxy', p50),
      ...(withBase ? [q('proxy', 'baseline', rps), q('proxy', 'baseline', p50), q('proxy', 'baseline', cpuUs)] : []),
      ...(withRelay ? [q('proxy', 'relay', rps), q('relay', 'direct', rps), q('relay', 'haproxy', rps), q('relay', 'haproxy', p50)] : []),
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
  const o = rep.options;
  const about = [
    `${m.cpus} CPUs (${m.model}), Node ${m.node}, msgpackr native addon ${m.msgpackrNative ? 'on' : 'OFF'}${m.haproxy ? `, HAProxy ${m.haproxy}` : ', no HAProxy'}, ${o.quick ? 'quick run' : 'full run'}:`,
    `${o.rounds} rounds per workload (targets in turn, the order rotated each round), ${o.durationMs / 1000} s measured per cell after ${o.warmupMs / 1000} s warm-up.`,
    'Figures are medians over the rounds (errors: all rounds; peak RSS: the highest); ratios are taken inside each round, median (lowest-highest).',
    'CPU: the process under test, in cores. us/req: CPU time per answered request from /proc, of the process under test, the servers together and the load generator.',
  ].join(markdown ? ' ' : '\n');
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
    textTable(head, body, new Set([2, 3, 4, 5, 7, 8, 9, 10, 11])),
    '',
    textTable(ratioHead, ratioRows, new Set(ratioHead.map((_, i) => i).slice(1))),
    ...(routingRows.length ? ['', textTable(['routing', 'rate', 'errors'], routingRows, new Set([1]))] : []),
    '',
    textTable(['', 'target', 'measured'], checkRows, new Set()),
    ...rep.notes.map((n) => `note: ${n}`),
    ...(rep.file ? [`\nresults: ${rep.file}`] : []),
  ].join('\n');
}
