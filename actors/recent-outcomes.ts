/**
 * How a member's tries ended lately - answered, or failed (an error answer
 * that counts against it, a try that timed out) - over the last 10 to 20
 * seconds: two windows of `RECENT_WINDOW_MS`, the current and the one
 * before. Ejection (health.ts) reads it to tell a server that fails where
 * the others of its policy do not (an outlier: take it out) from a policy
 * whose servers all fail alike (overloaded, or a fault they share: taking
 * one out only sends its load to the others). A link counts its tries once
 * per read of answers, not per request.
 */

/** One window's length (ms): Envoy's outlier detection looks at 10 s intervals too. */
export const RECENT_WINDOW_MS = 10_000;

export class RecentOutcomes {
  private since = -Infinity;
  private ok = 0;
  private failed = 0;
  private okBefore = 0;
  private failedBefore = 0;

  /** Count `ok` answered and `failed` failed tries at `now` (clock ms). */
  add(now: number, ok: number, failed: number): void {
    this.roll(now);
    this.ok += ok;
    this.failed += failed;
  }

  /** Failed tries over all tries in the last 10-20 s, or undefined when there were none. */
  failureRatio(now: number): number | undefined {
    this.roll(now);
    const failed = this.failed + this.failedBefore;
    const all = failed + this.ok + this.okBefore;
    return all === 0 ? undefined : failed / all;
  }

  private roll(now: number): void {
    if (now - this.since < RECENT_WINDOW_MS) return;
    // The window that ended becomes the one before, unless a whole window passed with nothing counted.
    const adjacent = now - this.since < 2 * RECENT_WINDOW_MS;
    this.okBefore = adjacent ? this.ok : 0;
    this.failedBefore = adjacent ? this.failed : 0;
    this.ok = 0;
    this.failed = 0;
    this.since = now;
  }
}

/**
 * Whether a member that fails `other` of its tries does clearly better than one that fails
 * `mine`: at most half as many failures, or at least twice as many answers (and some). A member with no
 * tries lately (undefined) is taken as well: an idle or new server is not failing. Two servers
 * of one overloaded policy failing 60 % and 50 % are alike; 100 % against 60 %, or 30 % against
 * 5 %, are not.
 */
export function clearlyBetter(other: number | undefined, mine: number): boolean {
  if (other === undefined) return true;
  const answers = 1 - other;
  return other <= mine / 2 || (answers > 0 && answers >= 2 * (1 - mine));
}
