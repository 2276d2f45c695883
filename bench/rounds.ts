/**
 * Measuring in rounds. On two shared cores one cell per target is noise, and
 * whichever target runs first in a workload runs slower: so every workload
 * runs its subjects in rounds (A B C, B C A, C A B, ...), each round starting
 * one place further on, and every figure is the median over the rounds. A
 * ratio is taken inside each round (the two cells ran moments apart) and then
 * its median and spread over the rounds. Pure, apart from `runRounds`, which
 * only calls what it is given.
 */
import type { Row, Spread, Subject, Summary, Workload } from './types.js';
import { errorsOf } from './loadgen.js';

/** The subjects' order in each round: round r starts r places further on. */
export function roundOrder<T>(subjects: readonly T[], rounds: number): T[][] {
  const n = subjects.length;
  return Array.from({ length: rounds }, (_, r) => Array.from({ length: n }, (_, k) => subjects[(r + k) % n]!));
}

/** Median (the mean of the middle two for an even count), lowest and highest; undefined for no values. */
export function spread(values: number[]): Spread | undefined {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  return { median: v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

/**
 * The ratio a/b of a figure, taken in each round where both were measured,
 * then its median and spread over those rounds.
 */
export function ratioSpread(rows: Row[], workload: Workload, a: Subject, b: Subject, figure: (r: Row) => number | undefined): Spread | undefined {
  const ratios: number[] = [];
  for (const ra of rows) {
    if (ra.workload !== workload || ra.subject !== a) continue;
    const rb = rows.find((r) => r.workload === workload && r.subject === b && r.round === ra.round);
    const x = figure(ra);
    const y = rb && figure(rb);
    if (x !== undefined && y) ratios.push(x / y);
  }
  return spread(ratios);
}

const none: Spread = { median: NaN, min: NaN, max: NaN, n: 0 };
const median = (values: Array<number | undefined>): number | undefined => spread(values.filter((v): v is number => v !== undefined))?.median;

/** Each workload's subjects over the rounds, in the order first measured. */
export function summarise(rows: Row[]): Summary[] {
  const groups = new Map<string, Row[]>();
  for (const r of rows) {
    const k = `${r.workload}\u0000${r.subject}`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  return [...groups.values()].map((g) => {
    const first = g[0]!;
    const errors: Record<string, number> = {};
    for (const r of g) for (const [code, n] of Object.entries(errorsOf(r.result))) errors[code] = (errors[code] ?? 0) + n;
    const rss = g.map((r) => r.peakRss).filter((v): v is number => v !== undefined);
    return {
      workload: first.workload,
      label: first.label,
      subject: first.subject,
      target: first.target,
      rps: spread(g.map((r) => r.result.rps)) ?? none,
      p50: spread(g.map((r) => r.result.latency.p50)) ?? none,
      p99: spread(g.map((r) => r.result.latency.p99)) ?? none,
      p999: spread(g.map((r) => r.result.latency.p999)) ?? none,
      errors,
      wrongHash: g.reduce((a, r) => a + r.result.wrongHash, 0),
      connected: Math.max(...g.map((r) => r.result.connected)),
      proxyCpu: median(g.map((r) => r.proxyCpu)),
      peakRss: rss.length ? Math.max(...rss) : undefined,
      cpuUs: {
        underTest: median(g.map((r) => r.cpuUs.underTest)),
        servers: median(g.map((r) => r.cpuUs.servers)),
        loadgen: median(g.map((r) => r.cpuUs.loadgen)),
      },
    };
  });
}

/**
 * Run `rounds` rounds over `subjects` in `roundOrder`, calling `cell` for
 * each. A subject whose cell throws is reported to `dropped` once and left
 * out of the rounds after (a variant that cannot run is not the whole run's
 * failure).
 */
export async function runRounds<S>(
  subjects: readonly S[],
  rounds: number,
  cell: (subject: S, round: number) => Promise<void>,
  dropped: (subject: S, err: unknown) => void,
): Promise<void> {
  const out = new Set<S>();
  for (const [r, order] of roundOrder(subjects, rounds).entries()) {
    for (const s of order) {
      if (out.has(s)) continue;
      try {
        await cell(s, r);
      } catch (err) {
        out.add(s);
        dropped(s, err);
      }
    }
  }
}
