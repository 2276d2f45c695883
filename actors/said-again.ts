import type { Clock } from '../transport/clock.js';

/** While a registration keeps failing for the same reason, how often it is said (ms). */
export const REMIND_MS = 30_000;

/** Reasons a failure that lasts is remembered by at most (the oldest said is forgotten past them). */
const MAX_REASONS = 8;

/**
 * How a failure that lasts is said: a server's registration that keeps failing (its proxy down, etcd
 * away or out of space). The first is said at once; while it goes on, each reason is said again only
 * every REMIND_MS, with how many tries failed since the failure began, and each try between is
 * `repeat` (said at debug). A reason not said yet in this failure is said at once. Every try was a
 * warn line, up to 5 s apart: a server whose proxy was down wrote 720 an hour, all alike. Only the
 * reason said last was remembered: an etcd that lost its quorum fails a try with "connection refused"
 * (a member down) and the next with "no leader" (one up), and each server wrote 11-17 lines a minute.
 */
export class SaidAgain {
  private said?: { since: number; tries: number; latest: string; reasons: { why: string; at: number }[] };

  constructor(
    private readonly clock: Clock,
    /** Whether `why` is a reason already said (`said`): by default, the same words. */
    private readonly same: (said: string, why: string) => boolean = (said, why) => said === why,
  ) {}

  /** The reason of the last try, while failures go on. */
  get last(): string | undefined {
    return this.said?.latest;
  }

  /** It worked: the next failure is said at once. */
  clear(): void {
    this.said = undefined;
  }

  /** This try failed, `why`: the words to say, and whether they only repeat what was said within REMIND_MS (debug). */
  say(why: string): { error: string; repeat: boolean } {
    const now = this.clock.now();
    const said = (this.said ??= { since: now, tries: 0, latest: why, reasons: [] });
    said.tries++;
    said.latest = why;
    const i = said.reasons.findIndex((r) => this.same(r.why, why));
    const reason = i < 0 ? undefined : said.reasons[i];
    if (reason && now - reason.at < REMIND_MS) return { error: why, repeat: true };
    // Said now: it goes last, and the one said longest ago goes past MAX_REASONS.
    if (i >= 0) said.reasons.splice(i, 1);
    else if (said.reasons.length >= MAX_REASONS) said.reasons.shift();
    said.reasons.push({ why, at: now });
    const error = reason ? `${why} (${said.tries} tries failed so in ${Math.round((now - said.since) / 1000)} s; said again every ${REMIND_MS / 1000} s while it lasts)` : why;
    return { error, repeat: false };
  }
}

/** A `SaidAgain` for each proxy a server registers with (its `host:port`), made at its first failure. */
export class SaidAgainPerProxy {
  private readonly each = new Map<string, SaidAgain>();

  constructor(private readonly clock: Clock) {}

  /** `proxy`'s registration failed, `why`: as `SaidAgain.say`. */
  say(proxy: string, why: string): { error: string; repeat: boolean } {
    let failures = this.each.get(proxy);
    if (!failures) this.each.set(proxy, (failures = new SaidAgain(this.clock)));
    return failures.say(why);
  }

  /** `proxy` took the registration: its next failure is said at once. */
  clear(proxy: string): void {
    this.each.delete(proxy);
  }
}
