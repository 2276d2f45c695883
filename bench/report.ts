/** The report as people read it: the rows, the ratios, the routing comparison and the verdicts, as text or Markdown. */
import type { LoadResult } from './loadgen.js';
import type { BenchReport, Row, Target } from './types.js';
import { fmtMs, fmtRate, MB } from './format.js';
import { find } from './verdicts.js';

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
