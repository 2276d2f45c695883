/**
 * The certificates a proxy or a server runs with, watched while it runs: a warn line as one comes
 * within its warning window (`expiryWarning`: a week, or a third of its life) and once a day after,
 * an error line as it expires and once an hour after. They were said at start and at a reload only:
 * a proxy started 80 days into a 90-day certificate never said it, and after the end it said only
 * that peers closed their handshakes (a probe). The certificates' dates are wall-clock dates, as every
 * TLS peer checks them; the waits between checks run on the injectable clock.
 * The CRLs of its CRL file likewise, by their nextUpdate (`tls_crl_expiring`, `tls_crl_expired`): past it,
 * OpenSSL refuses every peer certificate of that CA at each handshake (CRL_HAS_EXPIRED), reload or not.
 */
import type { LoadedCert } from '../config/files.js';
import type { Logger } from '../actors/logger.js';
import { systemClock, type Clock, type Timer } from '../transport/clock.js';
import { certificateNamed, crlDue, expiryWarning, warningFrom } from '../transport/tls.js';

/** A certificate in its warning window is said again this often (ms). */
export const EXPIRING_REMIND_MS = 24 * 3600 * 1000;
/** An expired certificate is said again this often (ms). */
export const EXPIRED_REMIND_MS = 3600 * 1000;
/** The longest wait between two checks (ms): a stepped wall clock, or a sleep, is caught up within it. */
const CHECK_MS = 3600 * 1000;
/** A check comes this long after the moment it is for (ms), so that moment has passed by every clock's reckoning. */
const LATE_MS = 1000;

/** What to say of a certificate that has expired (of a CRL, that it passed its nextUpdate). */
export function expiredError(c: LoadedCert): string {
  if (c.crl) return crlDue(c.role, c.file, c, c.notAfter);
  const what = c.role.endsWith('ca') ? 'peers whose certificates it signed are refused (an expired CA verifies no one)' : "peers refuse this side's new TLS handshakes";
  return `${certificateNamed(c.role, c.file, c)} expired on ${new Date(c.notAfter).toISOString()}: ${what}; renew it, then send SIGHUP (systemctl reload) to load the renewed files`;
}

export interface ExpiryWatchOptions {
  clock?: Clock;
  /** The wall clock, ms since the epoch (tests pass their own). */
  wallNow?: () => number;
}

export class ExpiryWatch {
  private readonly clock: Clock;
  private readonly wallNow: () => number;
  /** When each certificate (role, file, subject and end) was last said, and as what. */
  private readonly said = new Map<string, { as: 'expiring' | 'expired'; at: number }>();
  private timer: Timer | undefined;
  private stopped = false;

  constructor(
    private readonly logger: Logger,
    /** The certificates in use now (a reload changes them). */
    private readonly certs: () => readonly LoadedCert[],
    opts: ExpiryWatchOptions = {},
  ) {
    this.clock = opts.clock ?? systemClock;
    this.wallNow = opts.wallNow ?? (() => Date.now());
  }

  /**
   * Says what is due now, then waits for the next moment one is due. `reload`: every certificate
   * close to its end or past it is said again now, renewed or not (a reload that kept it should say so).
   */
  check(reload = false): void {
    if (this.stopped) return;
    this.timer?.cancel();
    const now = this.wallNow();
    const certs = this.certs();
    const keys = new Set<string>();
    let next = now + CHECK_MS;
    for (const c of certs) {
      // A CRL file's CRLs are told apart by their issuers (two CAs' published together end together).
      const key = `${c.role}\0${c.file}\0${c.crl ? c.subject : ''}\0${c.notAfter}`;
      const event = c.crl ? 'tls_crl' : 'tls_cert';
      keys.add(key);
      const said = this.said.get(key);
      if (now >= c.notAfter) {
        if (reload || said?.as !== 'expired' || now - said.at >= EXPIRED_REMIND_MS) {
          this.logger.error(`${event}_expired`, expiredError(c), fieldsOf(c));
          this.said.set(key, { as: 'expired', at: now });
        }
        next = Math.min(next, this.said.get(key)!.at + EXPIRED_REMIND_MS);
        continue;
      }
      const why = expiryWarning(c.role, c.file, c, now);
      if (why && (reload || said === undefined || now - said.at >= EXPIRING_REMIND_MS)) {
        this.logger.warn(`${event}_expiring`, why, fieldsOf(c));
        this.said.set(key, { as: 'expiring', at: now });
      }
      // Next: its end; the day's reminder; or its window's beginning.
      next = Math.min(next, c.notAfter, why ? this.said.get(key)!.at + EXPIRING_REMIND_MS : warningFrom(c));
    }
    // A certificate no longer in use (renewed, or its setting removed) is forgotten.
    for (const key of this.said.keys()) if (!keys.has(key)) this.said.delete(key);
    if (certs.length) this.timer = this.clock.setTimeout(() => this.check(), Math.max(0, next - now) + LATE_MS);
  }

  /** The certificate in use in `role` that has expired, if one has. */
  ended(role: string): LoadedCert | undefined {
    const now = this.wallNow();
    return this.certs().find((c) => c.role === role && now >= c.notAfter);
  }

  /** The CRLs in use past their nextUpdate (each CA's peers refused, CRL_HAS_EXPIRED). */
  passedCrls(): LoadedCert[] {
    const now = this.wallNow();
    return this.certs().filter((c) => c.crl && now >= c.notAfter);
  }

  stop(): void {
    this.stopped = true;
    this.timer?.cancel();
  }
}

/** A certificate's fields on its lines: the setting, the file, its end in Unix seconds; a CRL's: its issuer and nextUpdate. */
function fieldsOf(c: LoadedCert): Record<string, unknown> {
  if (c.crl) return { setting: c.role, file: c.file, issuer: c.subject, next_update: Math.floor(c.notAfter / 1000) };
  return { setting: c.role, file: c.file, not_after: Math.floor(c.notAfter / 1000) };
}
