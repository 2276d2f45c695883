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

/**
 * The subjects' order in each round: round r starts r places further on. A
 * `pair` (a before/after run's two proxies) takes one place in that turn, its
 * two measured one right after the other: the first of the pair first in even
 * rounds, the second in odd ones, so over an even count of rounds each goes
 * first (and starts first, `runRounds`) as often as the other.
 */
export function roundOrder<T>(subjects: readonly T[], rounds: number, pair?: readonly [T, T]): T[][] {
  const paired = pair !== undefined && pair[0] !== pair[1] && subjects.includes(pair[0]) && subjects.includes(pair[1]);
  const places = paired ? subjects.filter((s) => s !== pair[1]) : subjects;
  const n = places.length;
  return Array.from({ length: rounds }, (_, r) =>
    Array.from({ length: n }, (_, k) => places[(r + k) % n]!).flatMap((s) => (paired && s === pair[0] ? (r % 2 ? [pair[1], pair[0]] : [pair[0], pair[1]]) : [s])),
  );
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

/** Subjects whose processes start afresh in every round (a before/after run's two proxies, `ProxyPair`). */
export interface Fresh<S> {
  /** Two of them are a `roundOrder` pair, in this order (the first goes first in even rounds). */
  subjects: readonly S[];
  /** Start those still in the rounds, in the order the round measures them, before the first of their cells. */
  start(order: S[], round: number): Promise<void>;
}

/**
 * Run `rounds` rounds over `subjects` in `roundOrder`, calling `cell` for
 * each. A subject whose cell throws is reported to `dropped` once and left
 * out of the rounds after (a variant that cannot run is not the whole run's
 * failure). The `fresh` subjects are started before the first of their
 * cells in each round; when that fails, each is dropped so.
 */
export async function runRounds<S>(
  subjects: readonly S[],
  rounds: number,
  cell: (subject: S, round: number) => Promise<void>,
  dropped: (subject: S, err: unknown) => void,
  fresh?: Fresh<S>,
): Promise<void> {
  const out = new Set<S>();
  const isFresh = (s: S): boolean => fresh?.subjects.includes(s) ?? false;
  const pair = fresh?.subjects.length === 2 ? ([fresh.subjects[0]!, fresh.subjects[1]!] as const) : undefined;
  for (const [r, order] of roundOrder(subjects, rounds, pair).entries()) {
    let started = false;
    for (const s of order) {
      if (out.has(s)) continue;
      if (isFresh(s) && !started) {
        started = true;
        const these = order.filter((x) => isFresh(x) && !out.has(x));
        try {
          await fresh!.start(these, r);
        } catch (err) {
          for (const x of these) {
            out.add(x);
            dropped(x, err);
          }
          continue;
        }
      }
      try {
        await cell(s, r);
      } catch (err) {
        out.add(s);
        dropped(s, err);
      }
    }
  }
}
