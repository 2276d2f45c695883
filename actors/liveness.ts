/**
 * The client's watch on a connection to a proxy that answers PINGs (client.ts): while requests
 * wait on it and the proxy has said nothing for PING_AFTER_MS, one PING goes out; nothing at all
 * heard within PONG_WITHIN_MS of it, the connection is dead (a NAT or firewall forgot the flow, a
 * path died without a word) and is given up, its requests sent again on a new one. Before, such a
 * connection held the first request sent on it its whole timeout (5 s), and every request behind
 * it, unless TCP keepalive (about 25 s after the last traffic) had found it first.
 *
 * Nothing here on the per-request path but a few comparisons: one timer per connection, armed
 * again at most about once a second while requests wait.
 */
import { setDeadline, type Clock, type Timer } from '../transport/clock.js';

/** Silence with requests waiting, after which the client PINGs the proxy. */
export const PING_AFTER_MS = 1000;
/** How long after its PING the proxy has to say anything (the PONG, an answer) before the connection is given up. */
export const PONG_WITHIN_MS = 2000;

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

  constructor(
    private readonly clock: Clock,
    private readonly book: Watched,
    private readonly ping: () => void,
    /** The connection is dead: `ms` since the PING, nothing heard. */
    private readonly dead: (ms: number) => void,
    private readonly stalled: (lateMs: number) => void,
  ) {}

  /** Look again after requests were sent or answers read: PING, give up, or arm the timer for when one is due. */
  check(): void {
    const { book } = this;
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
      this.dead(now - this.pingAt);
      return;
    }
    this.pingAt = now;
    this.ping();
    this.arm(now + PONG_WITHIN_MS, now);
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
