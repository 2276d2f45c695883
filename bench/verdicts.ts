/** The verdicts: each target judged from the ratios measured in one run. */
import type { BenchReport, Check, Row, RoutingRun, SerialVariants, Target, Workload } from './types.js';
import { fmtMs, fmtRate, MB } from './format.js';

export function find(rows: Row[], w: Workload, t: Target): Row | undefined {
  return rows.find((r) => r.workload === w && r.target === t);
}

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
