/**
 * The verdicts: issue 20's five targets, each judged on the median over the
 * rounds of a ratio taken inside each round; the earlier targets and the
 * variants that take a figure apart stay beside them, for information.
 */
import { fmtMs, fmtRate, fmtSpread, MB } from './format.js';
import { ratioSpread, summarise } from './rounds.js';
import { VARIANT, type BenchReport, type Check, type Row, type Spread, type Subject, type Summary, type Workload } from './types.js';

/** Why a group of rows was not measured, when the checkout under test lacks what it needs. */
export interface Missing {
  slowServers?: string;
  accessLog?: string;
}

const rps = (r: Row): number => r.result.rps;
const p50 = (r: Row): number => r.result.latency.p50;

export function checks(rows: Row[], routing: BenchReport['routing'], missing: Missing = {}): Check[] {
  const out: Check[] = [];
  const summary = summarise(rows);
  const sum = (w: Workload, s: Subject): Summary | undefined => summary.find((x) => x.workload === w && x.subject === s);
  const cpu = (w: Workload, s: Subject, name: string): string | undefined => {
    const us = sum(w, s)?.cpuUs.underTest;
    return us === undefined ? undefined : `${name} ${us.toFixed(2)} us`;
  };
  /** A target: pass when `ok(median)`. */
  const target = (what: string, s: Spread | undefined, ok: (r: number) => boolean, why?: string, extra = ''): void => {
    out.push({
      what,
      ratio: s?.median,
      spread: s,
      pass: s === undefined ? undefined : ok(s.median),
      detail: s === undefined ? `not measured${why ? `: ${why}` : ''}` : `${fmtSpread(s)}${extra}`,
    });
  };
  /** For information: the figure, and the old target's verdict when there was one. */
  const info = (what: string, s: Spread | undefined, text: string, old?: { ok: (r: number) => boolean; said: string }): void => {
    if (!s) return;
    const verdict = old ? `; old target ${old.said}: ${old.ok(s.median) ? 'met' : 'not met'}` : '';
    out.push({ what, ratio: s.median, spread: s, pass: undefined, detail: `${fmtSpread(s)}${text ? `: ${text}` : ''}${verdict}` });
  };

  // 1. Servers that work one request at a time: per-message balancing keeps all four busy.
  target('servers working one at a time (4 at 1 ms), 2x32: requests/s proxy / HAProxy >= 1.8', ratioSpread(rows, 'slow-servers', 'proxy', 'haproxy', rps), (r) => r >= 1.8, missing.slowServers);
  target('servers working one at a time: requests/s proxy / direct (one connection per server) >= 0.9', ratioSpread(rows, 'slow-servers', 'proxy', 'direct', rps), (r) => r >= 0.9, missing.slowServers);

  // 2. Pipelined, trivial servers: against the leanest Node relay, with CPU per request beside it.
  const cpus = [cpu('pipelined', 'proxy', 'proxy'), cpu('pipelined', 'relay', 'relay'), cpu('pipelined', 'haproxy', 'HAProxy')].filter(Boolean);
  target('pipelined: requests/s proxy / bare Node relay >= 0.95', ratioSpread(rows, 'pipelined', 'proxy', 'relay', rps), (r) => r >= 0.95, undefined,
    cpus.length ? `; CPU per request: ${cpus.join(', ')}` : '');

  // The proxy under test beside its twin at warn (the same build, started as the logging variants are), inside each round: two
  // medians of CPU per request taken over different rounds differ with the machine's load at each cell as much as with the proxies.
  const twinRps = ratioSpread(rows, 'pipelined', 'proxy', VARIANT.logWarn, rps);
  const twinCpu = ratioSpread(rows, 'pipelined', 'proxy', VARIANT.logWarn, (r) => r.cpuUs.underTest);
  const twinRelay = ratioSpread(rows, 'pipelined', VARIANT.logWarn, 'relay', rps);
  if (twinCpu) {
    info('pipelined: CPU per request, proxy / its twin at warn beside it (the same build), inside each round', twinCpu,
      `requests/s ${twinRps ? fmtSpread(twinRps) : '-'}; the medians over the rounds: ${[cpu('pipelined', 'proxy', 'proxy'), cpu('pipelined', VARIANT.logWarn, 'twin')].filter(Boolean).join(', ')}`
      + (twinRelay ? `; requests/s twin / bare Node relay (target 2 on the other process) ${fmtSpread(twinRelay)}` : ''));
  }

  // 3. One at a time, like for like: HAProxy's one connection always reaches the same server, so the proxy on a one-server policy.
  target('one at a time, like for like (one-server policy): p50 proxy / HAProxy <= 1.1', ratioSpread(rows, 'serial', VARIANT.oneServer, 'haproxy', p50), (r) => r <= 1.1);

  // 4. 10,000 concurrent connections: the highest RSS of any round, and no errors in any.
  const many = sum('many', 'proxy');
  if (many) {
    const errors = Object.values(many.errors).reduce((a, b) => a + b, 0) + many.wrongHash;
    const rss = (many.peakRss ?? 0) / MB;
    // RSS seldom falls: a round's peak carries the rounds before it, so the order shows whether it grows.
    const perRound = rows.filter((r) => r.workload === 'many' && r.subject === 'proxy').sort((a, b) => a.round - b.round).map((r) => ((r.peakRss ?? 0) / MB).toFixed(0));
    out.push({
      what: `${many.connected.toLocaleString('en')} connections through the proxy: peak RSS < 160 MB, no errors`,
      ratio: rss / 160,
      pass: rss < 160 && errors === 0,
      detail: `peak RSS ${rss.toFixed(0)} MB (the highest round; rounds in order: ${perRound.join(', ')} MB), ${errors} errors; old target < 256 MB: ${rss < 256 ? 'met' : 'not met'}`,
    });
  } else out.push({ what: 'many connections through the proxy: peak RSS < 160 MB, no errors', pass: undefined, detail: 'not measured' });

  // 5. What logging costs, against a proxy at warn started the same way (or, without one, the proxy under test).
  const warn = rows.some((r) => r.subject === VARIANT.logWarn) ? VARIANT.logWarn : 'proxy';
  const against = (s: Subject): string => {
    const [a, b] = [cpu('pipelined', s, 'this'), cpu('pipelined', warn, 'at warn')];
    return a && b ? `; CPU per request: ${a}, ${b}` : '';
  };
  target('pipelined: requests/s proxy at --log-level info / at warn >= 0.95', ratioSpread(rows, 'pipelined', VARIANT.logInfo, warn, rps), (r) => r >= 0.95, undefined, against(VARIANT.logInfo));
  target('pipelined: requests/s proxy with --access-log / at warn >= 0.95', ratioSpread(rows, 'pipelined', VARIANT.accessLog, warn, rps), (r) => r >= 0.95, missing.accessLog, against(VARIANT.accessLog));

  // For information: the earlier targets, and what the one-at-a-time ratio is made of.
  info('pipelined: requests/s proxy / direct', ratioSpread(rows, 'pipelined', 'proxy', 'direct', rps), '', { ok: (r) => r >= 0.8, said: '>= 0.8' });
  info('pipelined: requests/s proxy / HAProxy', ratioSpread(rows, 'pipelined', 'proxy', 'haproxy', rps), '', { ok: (r) => r >= 1.0, said: '>= 1.0' });
  info('one at a time: p50 proxy / HAProxy (two-server policies)', ratioSpread(rows, 'serial', 'proxy', 'haproxy', p50), 'each request goes to the other server of its policy', { ok: (r) => r <= 1.2, said: '<= 1.2' });
  const busy = rows.find((r) => r.subject === VARIANT.busyPoll)?.label.split(', ')[1] ?? '--busy-poll';
  info(`one at a time: p50 proxy ${busy} / HAProxy`, ratioSpread(rows, 'serial', VARIANT.busyPoll, 'haproxy', p50), 'polling instead of sleeping after traffic; HAProxy as configured for the targets sleeps');
  info(`one at a time: p50 proxy ${busy} / HAProxy busy-polling`, ratioSpread(rows, 'serial', VARIANT.busyPoll, VARIANT.haproxyBusy, p50), 'both polling; HAProxy with busy-polling and one thread never sleeps');

  if (routing) {
    const one = (v: number | undefined): Spread | undefined => (v === undefined || !Number.isFinite(v) ? undefined : { median: v, min: v, max: v, n: 1 });
    const [p4, pN] = routing.pool;
    info(`pool routing rate, ${pN?.members.toLocaleString('en')} members / 4 (pool machine alone)`, one(pN && p4 ? pN.rate / p4.rate : undefined),
      `${fmtRate(pN?.rate)} vs ${fmtRate(p4?.rate)} routed/s`, { ok: (r) => r >= 0.8, said: '>= 0.8' });
    const e2e = routing.endToEnd ?? [];
    const run = (mode: 'pipelined' | 'serial', big: boolean) => e2e.find((e) => e.mode === mode && (e.members > 4) === big);
    const s4 = run('serial', false);
    const sN = run('serial', true);
    info(`one at a time through the proxy: p50 with ${sN?.members.toLocaleString('en')} registered servers / 4`, one(sN && s4 ? sN.result.latency.p50 / s4.result.latency.p50 : undefined),
      `${fmtMs(sN?.result.latency.p50 ?? 0)} vs ${fmtMs(s4?.result.latency.p50 ?? 0)} ms`, { ok: (r) => r <= 1.25, said: '<= 1.25' });
    const f4 = run('pipelined', false);
    const fN = run('pipelined', true);
    // Not a routing figure: with 8 x 32 in flight over 10,000 members every request is its own write and read on both sides.
    info(`pipelined through the proxy: ${fN?.members.toLocaleString('en')} registered servers / 4 (fan-out)`, one(fN && f4 ? fN.result.rps / f4.result.rps : undefined),
      "each request is alone on its server's connection");
  }
  return out;
}
