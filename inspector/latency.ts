/**
 * The recent latency of one member, for the p50 and p99 beside its card.
 * Counted on the hot path, so an answer costs a few integer operations and
 * one increment: counts in log-spaced buckets (four per doubling, so a
 * quantile is read to within about 12 %), in two windows (the current one
 * and the one before), so what is read covers the last one to two windows.
 */

/**
 * Buckets in whole microseconds, four per doubling (the two bits after the
 * top bit pick one), found with integer operations only: bucket `4e + s`
 * holds [(4 + s) << (e - 2), (5 + s) << (e - 2)) us, and the first four hold
 * 0 to 3 us. 2^31 us (35 minutes) is the top.
 */
const BUCKETS = 32 * 4;

function bucketOf(ms: number): number {
  const us = ms >= 2147483 ? 0x7fffffff : (ms * 1000) | 0;
  if (us < 4) return us < 0 ? 0 : us;
  const e = 31 - Math.clz32(us);
  return (e << 2) + ((us >>> (e - 2)) & 3);
}

/** A bucket's value as read back (ms): the middle of its bounds. */
function valueOf(bucket: number): number {
  if (bucket < 4) return bucket / 1000;
  const e = bucket >> 2;
  const s = bucket & 3;
  return ((4 + s + 0.5) * 2 ** (e - 2)) / 1000;
}

export class RecentLatency {
  private cur = new Uint32Array(BUCKETS);
  private prev = new Uint32Array(BUCKETS);
  private window = 0;
  private curCount = 0;
  private prevCount = 0;

  /** Count one answer's latency in window number `window` (windows only move on). */
  add(ms: number, window: number): void {
    if (window !== this.window) this.roll(window);
    this.cur[bucketOf(ms)]!++;
    this.curCount++;
  }

  /** The p50 and p99 of the answers in window `window` and the one before it, or undefined when there were none. */
  quantiles(window: number): { p50: number; p99: number } | undefined {
    if (window !== this.window) this.roll(window);
    const total = this.curCount + this.prevCount;
    if (total === 0) return undefined;
    return { p50: this.at(0.5 * total), p99: this.at(0.99 * total) };
  }

  private at(rank: number): number {
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.cur[i]! + this.prev[i]!;
      if (seen >= rank && seen > 0) return round2(valueOf(i));
    }
    return round2(valueOf(BUCKETS - 1));
  }

  private roll(window: number): void {
    const keep = window === this.window + 1;
    const old = this.prev;
    this.prev = this.cur;
    this.prevCount = this.curCount;
    if (!keep) {
      this.prev.fill(0);
      this.prevCount = 0;
    }
    old.fill(0);
    this.cur = old;
    this.curCount = 0;
    this.window = window;
  }
}

/** Two significant digits: what a bucket can tell. */
function round2(ms: number): number {
  return Number(ms.toPrecision(2));
}
