import type { Clock } from '../transport/clock.js';

/** While a registration keeps failing for the same reason, how often it is said (ms). */
export const REMIND_MS = 30_000;

/**
 * How a failure that lasts is said: a server's registration that keeps failing (its proxy down, etcd
 * away or out of space). The first is said at once; while the same one goes on, it is said again only
 * every REMIND_MS, with how many tries failed since, and each try between is `repeat` (said at debug).
 * Every try was a warn line, up to 5 s apart: a server whose proxy was down wrote 720 an hour, all alike.
 */
export class SaidAgain {
  private said?: { why: string; at: number; since: number; tries: number };

  constructor(
    private readonly clock: Clock,
    /** Whether `why` is the failure said last (`said`): by default, the same words. */
    private readonly same: (said: string, why: string) => boolean = (said, why) => said === why,
  ) {}

  /** The reason said last, while failures go on. */
  get last(): string | undefined {
    return this.said?.why;
  }

  /** It worked: the next failure is said at once. */
  clear(): void {
    this.said = undefined;
  }

  /** This try failed, `why`: the words to say, and whether they only repeat what was said within REMIND_MS (debug). */
  say(why: string): { error: string; repeat: boolean } {
    const now = this.clock.now();
    const said = this.said;
    const same = said !== undefined && this.same(said.why, why);
    if (same && now - said.at < REMIND_MS) {
      said.tries++;
      return { error: why, repeat: true };
    }
    const error = same ? `${why} (${said.tries + 1} tries failed so in ${Math.round((now - said.since) / 1000)} s; said again every ${REMIND_MS / 1000} s while it lasts)` : why;
    this.said = same ? { ...said, at: now, tries: said.tries + 1 } : { why, at: now, since: now, tries: 1 };
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
