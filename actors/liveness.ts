/**
 * The client's one watch on its connection to a proxy (client.ts): how long the proxy has said
 * nothing with requests waiting on it, and when that makes the connection dead - given up, its
 * requests sent again on a new one. The silence counts from the first request sent since the
 * proxy last said anything (or from when it did): a client idle a minute has heard nothing for a
 * minute from a proxy that owes it nothing.
 *
 * - A proxy that answered the client's first PING on the connection: once it has been silent
 *   PING_AFTER_MS, one PING goes out; nothing at all heard within PONG_WITHIN_MS of it, the
 *   connection is dead (a NAT or firewall forgot the flow, a path died without a word). A proxy
 *   answers a PING at once, however long its servers take.
 * - One that answers no PING (older than client PINGs, stalled as the client connected, the old
 *   JSON wire): its silence is judged when a request's own timeout ends on it. A proxy answers
 *   every request within its `--timeout` (5000 ms by default), with TIMEOUT at worst: one silent
 *   SILENT_PROXY_MS then is cut off (a partition, a host gone without a FIN or a RST) or stalled.
 *   Before, a client stayed on it, every request failing CLIENT_TIMEOUT, until TCP gave up
 *   resending (about 15 minutes on Linux).
 *
 * Nothing here on the per-request path but a few comparisons: one timer per connection, armed
 * again at most about once a second while requests wait.
 */
import { DEFAULT_PROXY_TIMEOUT_MS } from '../transport/address.js';
import { setDeadline, type Clock, type Timer } from '../transport/clock.js';

/** Silence with requests waiting, after which the client PINGs a proxy that answers PINGs. */
export const PING_AFTER_MS = 1000;
/** How long after its PING the proxy has to say anything (the PONG, an answer) before the connection is given up. */
export const PONG_WITHIN_MS = 2000;
/** Silence after which a proxy that answers no PING is given up, when a request's own timeout ends on it. */
export const SILENT_PROXY_MS = DEFAULT_PROXY_TIMEOUT_MS;

/** What the watch reads of the requests on the connection (the client's RequestBook). */
export interface Watched {
  /** Requests sent on the connection and not answered. */
  readonly inFlight: number;
  /** When the proxy last said anything (the clock's ms). */
  readonly heardAt: number;
  /** Since when the proxy's silence counts against it: the first request sent since it last spoke, or when it last spoke. */
  readonly quietSince: number;
}

export class Liveness {
  private timer?: Timer;
  /** When the armed timer is due. */
  private dueAt = Infinity;
  /** When the unanswered PING went out. */
  private pingAt?: number;
  /** The proxy answered a PING on this connection: it is watched with PINGs. */
  private pings = false;

  constructor(
    private readonly clock: Clock,
    private readonly book: Watched,
    /** The proxy as host:port, for the reasons. */
    private readonly proxy: string,
    private readonly ping: () => void,
    /** The connection is dead (`why`), found by the PINGs: give it up. */
    private readonly dead: (why: string) => void,
    private readonly stalled: (lateMs: number) => void,
  ) {}

  /** The proxy answered a PING on this connection: from now on it is PINGed when silent. */
  pinged(): void {
    this.pings = true;
    this.check();
  }

  /** Look again after requests were sent or answers read: PING, give up, or arm the timer for when one is due. */
  check(): void {
    const { book } = this;
    if (!this.pings) return;
    if (this.pingAt !== undefined && book.heardAt >= this.pingAt) this.pingAt = undefined;
    if (book.inFlight === 0) return;
    const due = this.pingAt !== undefined ? this.pingAt + PONG_WITHIN_MS : book.quietSince + PING_AFTER_MS;
    // The armed timer looks again by then: nothing to do now (the usual case on a busy connection: not even a clock read).
    if (this.timer && this.dueAt <= due) return;
    const now = this.clock.now();
    if (now < due) {
      this.arm(due, now);
      return;
    }
    if (this.pingAt !== undefined) {
      this.stop();
      this.dead(`the reverse proxy at ${this.proxy} said nothing within ${Math.round(now - this.pingAt)} ms of a PING, with ${book.inFlight} request(s) waiting on it: the connection died without a word (a NAT or firewall forgot it, or the path to it failed)`);
      return;
    }
    this.pingAt = now;
    this.ping();
    this.arm(now + PONG_WITHIN_MS, now);
  }

  /**
   * The proxy said it will close the connection once it has answered what it read (client.ts CLOSING): it reads
   * nothing more, PINGs neither, so its silence is judged as a proxy's that answers none, when a request's own
   * timeout ends on it (it answers within its `--timeout`, then closes).
   */
  closing(): void {
    this.pings = false;
    this.pingAt = undefined;
    this.stop();
  }

  /**
   * A request in flight on this connection ran out of its own time: why the connection is dead, if
   * it is (a proxy that answers no PING, silent SILENT_PROXY_MS); undefined if not. A proxy that
   * answers PINGs is judged by them alone: a request's timeout says nothing of it.
   */
  silentAtExpiry(): string | undefined {
    if (this.pings) return undefined;
    const quiet = this.clock.now() - this.book.quietSince;
    if (quiet < SILENT_PROXY_MS) return undefined;
    return `the reverse proxy at ${this.proxy} has sent nothing for ${Math.round(quiet)} ms with requests waiting on it: it is cut off or stalled`;
  }

  /** The connection is gone: nothing more fires. */
  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.dueAt = Infinity;
  }

  /** The timer, due at `at` (`now` is the clock's time). */
  private arm(at: number, now: number): void {
    this.timer?.cancel();
    this.dueAt = at;
    // A deadline (setDeadline): after a pause of this process, the PONG that came meanwhile is read before it counts as missing.
    this.timer = setDeadline(this.clock, () => {
      this.timer = undefined;
      this.dueAt = Infinity;
      this.check();
    }, at - now, this.stalled);
  }
}

/**
 * The proxies (host:port) this client dials without a PING first: one refused it (a proxy older
 * than client PINGs) or left it unanswered (stalled as the client connected). The mark lasts as
 * long as the connection made without PINGs: once that is lost or a dial fails (the proxy
 * restarted - upgraded, perhaps), the next connection PINGs it again, as nats.js reads a server's
 * INFO afresh on each connection. Before, it was never PINGed again by that client: one that met
 * an older proxy, or a stalled one, kept the slow detection of a silent cut for life. A proxy
 * that refuses again is the same period (its `no_pings` line is not said again); one that answers
 * a PING ends it.
 */
export class NoPings {
  /** true: dial without a PING; false: it refused before, its connection since was lost: PING it again. */
  private readonly marks = new Map<string, boolean>();

  /** Whether to dial `proxy` without a PING. */
  skips(proxy: string): boolean {
    return this.marks.get(proxy) === true;
  }

  /** `proxy` answers no PING: dialled without one from now on. Returns whether it is news (not marked since it last answered one). */
  mark(proxy: string): boolean {
    const news = !this.marks.has(proxy);
    this.marks.set(proxy, true);
    return news;
  }

  /** The connection to `proxy` was lost, or a dial to it failed: the next connection PINGs it again. */
  lost(proxy: string): void {
    if (this.marks.has(proxy)) this.marks.set(proxy, false);
  }

  /** `proxy` answered a PING: returns whether it had been marked (the period ends). */
  answered(proxy: string): boolean {
    return this.marks.delete(proxy);
  }

  /** The proxies are these now: the others are forgotten (a registry's list changes for ever: the memory stays bounded). */
  keep(proxies: string[]): void {
    for (const p of this.marks.keys()) if (!proxies.includes(p)) this.marks.delete(p);
  }
}
