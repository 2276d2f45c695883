/**
 * etcd3's fault handling for each etcd member of one client (its `faultHandling.host`): a member
 * that failed 3 calls in a row is not called for a while, and etcd3 sends its calls to another.
 * A call refused so fails at once with cockatiel's BrokenCircuitError (etcd3 knows it: it tries the
 * next member), whose `cause` is the failure that opened it (describeEtcdError says both).
 *
 * Written here rather than taken as cockatiel's breaker, which etcd3 uses by default, for two
 * things it cannot tell:
 *
 * - A stream (a watch, a keepalive) is made at once and fails later, when its connection does:
 *   cockatiel counted the making as a success, which closed the breaker again as soon as it let
 *   one call through. With one member of three dead (connection refused), etcd3 sent a watch or a
 *   keepalive there about every second and a half: a proxy read the whole registry again 34 times
 *   a minute, a line each. Here a stream counts as an answer once it carries one.
 * - How long to wait. A member that keeps failing while another answers is left alone longer
 *   each time it fails again (1 s, 2 s, 4 s ... up to `HOLD_MAX_MS`); one that answers is an
 *   ordinary member again. When no other member answers (etcd itself is away, or one member is
 *   all there is), calls are let through again after `baseMs` (a second), so the registry is
 *   found within a second of coming back.
 *
 * Times are monotonic: cockatiel timed an open breaker on the wall clock, and a step back while
 * etcd was away kept every call refused for as long as the step.
 */
import type { BrokenCircuitError } from 'cockatiel';
import { systemClock } from '../transport/clock.js';

/** Failures in a row that open the breaker. */
const FAILURES = 3;
/** The longest a member is left alone while others answer (ms). */
export const HOLD_MAX_MS = 30_000;

/** The members of one etcd client, each with its breaker: a breaker asks whether another member answers. */
export class HostBreakers {
  private readonly all: HostBreaker[] = [];

  constructor(
    private readonly baseMs: number,
    private readonly isFailure: (err: unknown) => boolean,
    private readonly broken: new (message?: string) => BrokenCircuitError,
  ) {}

  /** The breaker of one more member (etcd3 asks for one per endpoint). */
  add(): HostBreaker {
    const b = new HostBreaker(this.baseMs, this.isFailure, this.broken, (me) => this.all.some((o) => o !== me && o.answering()));
    this.all.push(b);
    return b;
  }
}

export class HostBreaker {
  private failures = 0;
  /** Times opened since this member last answered. */
  private opens = 0;
  /** Until when calls are refused, whatever the others do (monotonic ms). */
  private until = -Infinity;
  /** Until when calls are refused while another member answers. */
  private holdUntil = -Infinity;
  private cause: unknown;

  constructor(
    private readonly baseMs: number,
    private readonly isFailure: (err: unknown) => boolean,
    private readonly broken: new (message?: string) => BrokenCircuitError,
    private readonly othersAnswer: (me: HostBreaker) => boolean,
  ) {}

  /** Whether this member is an ordinary one now: not failing, not left alone. */
  answering(): boolean {
    return this.opens === 0 && this.failures === 0;
  }

  /** What etcd3 calls for each call to this member (`fn` makes it), and with a throwing `fn` to tell of a stream that failed. */
  async execute<T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T, signal = new AbortController().signal): Promise<T> {
    const now = systemClock.now();
    if (now < this.until || (now < this.holdUntil && this.othersAnswer(this))) {
      const err = new this.broken(`Execution prevented because the circuit breaker is open: this etcd member failed ${FAILURES} calls in a row`);
      (err as Error).cause = this.cause;
      throw err;
    }
    let result: T;
    try {
      result = await fn({ signal });
    } catch (err) {
      if (this.isFailure(err)) this.failed(err);
      // Any other error (a refusal, a key not found) is an answer.
      else this.answered();
      throw err;
    }
    const stream = result as { on?: unknown; write?: unknown; once?(event: string, fn: () => void): void };
    if (typeof stream?.on === 'function' && typeof stream.write === 'function') stream.once!('data', () => this.answered());
    else this.answered();
    return result;
  }

  private answered(): void {
    this.failures = 0;
    this.opens = 0;
    this.until = this.holdUntil = -Infinity;
  }

  private failed(err: unknown): void {
    // Once it has been opened, one failure opens it again: the member has not answered since.
    if (++this.failures < FAILURES && this.opens === 0) return;
    const now = systemClock.now();
    // Several streams made while it was let through fail together: one opening.
    if (now < this.until) return;
    this.failures = 0;
    this.cause = err;
    this.until = now + this.baseMs;
    this.holdUntil = now + Math.min(HOLD_MAX_MS, this.baseMs * 2 ** this.opens);
    this.opens++;
  }
}
