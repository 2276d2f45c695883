/**
 * Busy polling: after traffic, the event loop keeps polling its sockets for
 * a while instead of sleeping until the next one is readable.
 *
 * Why: on a virtual machine a CPU that goes idle is handed back to the host,
 * and waking it for the next packet takes tens of microseconds. One request
 * at a time through a proxy meets that wake-up twice per request (the
 * request, then the server's answer). While the loop has an immediate
 * pending, libuv polls with a zero timeout, so data that arrives is read on
 * the next turn without the process ever sleeping.
 *
 * The cost is CPU: up to one core while traffic keeps coming, and nothing
 * once the window after the last traffic has passed. HAProxy's `busy-polling`
 * does the same without a window (its threads never sleep).
 */
import { performance } from 'node:perf_hooks';

export interface BusyPollOptions {
  /** Keep polling this long after the last traffic (microseconds). */
  windowUs: number;
  /** Milliseconds, monotonic (tests pass their own). */
  now?: () => number;
  /** Runs `fn` on the next turn of the event loop, after polling for I/O (tests pass their own). */
  schedule?: (fn: () => void) => void;
}

export class BusyPoll {
  private readonly windowMs: number;
  private readonly now: () => number;
  private readonly schedule: (fn: () => void) => void;
  private last = 0;
  private running = false;
  private stopped = false;
  /** Turns of the event loop spent polling so far. */
  spins = 0;

  constructor(opts: BusyPollOptions) {
    this.windowMs = opts.windowUs / 1000;
    this.now = opts.now ?? (() => performance.now());
    this.schedule = opts.schedule ?? ((fn) => void setImmediate(fn));
  }

  /** Traffic was seen: poll until the window from now has passed. */
  kick(): void {
    this.last = this.now();
    if (this.running || this.stopped) return;
    this.running = true;
    this.schedule(this.spin);
  }

  /** Whether the loop is being kept polling now. */
  get active(): boolean {
    return this.running;
  }

  /** No more polling, whatever traffic comes (the process may exit). */
  stop(): void {
    this.stopped = true;
  }

  private readonly spin = (): void => {
    if (this.stopped || this.now() - this.last >= this.windowMs) {
      this.running = false;
      return;
    }
    this.spins++;
    this.schedule(this.spin);
  };
}
