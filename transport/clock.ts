import { performance } from 'node:perf_hooks';

/**
 * Time, injectable: actors read time and set timers only through a Clock, so
 * fault tests can run on a manual clock, fast and deterministic.
 */
export interface Timer {
  cancel(): void;
}

export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): Timer;
  setInterval(fn: () => void, ms: number): Timer;
}

/** The longest delay a Node timer (and so XState's) takes, about 24.8 days: a longer one, Infinity too, fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** `ms` as a timer can wait it: a longer delay waits the longest there is (for a timeout, never in practice), not no time at all. */
export function timerMs(ms: number): number {
  return ms > MAX_TIMER_MS ? MAX_TIMER_MS : ms;
}

/**
 * A timer this late (ms past when it was due) means the event loop did not run meanwhile: the
 * process was paused (SIGSTOP, a frozen VM, a laptop asleep) or blocked.
 */
export const STALL_MS = 500;

/**
 * A deadline: `fn` runs `ms` from now, as `clock.setTimeout` would - but when the timer comes
 * STALL_MS or more late, one turn of the event loop later. After a stall Node runs the late
 * timers before it reads the sockets, so without that turn an answer that came in time, and sat
 * unread while the process was stopped, would be taken for none. `stalled` is told how late
 * the timer came, at once.
 */
/**
 * `ms` made up to a fifth shorter, at random: peers that lost something together (servers probed
 * after going down together, servers and clients dialling a proxy they lost) do not all try again
 * in step. The one owner of that rule.
 */
export function jittered(ms: number): number {
  return Math.round(ms * (0.8 + 0.2 * Math.random()));
}

export function setDeadline(clock: Clock, fn: () => void, ms: number, stalled?: (lateMs: number) => void): Timer {
  const due = clock.now() + timerMs(ms);
  let timer = clock.setTimeout(() => {
    const late = clock.now() - due;
    if (late < STALL_MS) return fn();
    stalled?.(late);
    timer = clock.setTimeout(fn, 0);
  }, ms);
  return { cancel: () => timer.cancel() };
}

/**
 * The system clock. `performance` comes from its module, not from the global
 * object: in Node 20 the global is a getter, so each read of it in hot code was
 * an inline-cache miss and a call (`performance.now()` 68-70 ns through the
 * global, 55-59 ns through the import; README's Benchmark).
 */
export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, timerMs(ms));
    t.unref?.();
    return { cancel: () => clearTimeout(t) };
  },
  setInterval(fn, ms) {
    const t = setInterval(fn, timerMs(ms));
    t.unref?.();
    return { cancel: () => clearInterval(t) };
  },
};

/**
 * A clock that moves only when told to: `advance(ms)` runs every timer due,
 * in order.
 */
export class ManualClock implements Clock {
  private t = 0;
  private seq = 0;
  private timers = new Map<number, { at: number; fn: () => void; every?: number }>();

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): Timer {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return { cancel: () => this.timers.delete(id) };
  }

  setInterval(fn: () => void, ms: number): Timer {
    const id = ++this.seq;
    const every = Math.max(1, ms);
    this.timers.set(id, { at: this.t + every, fn, every });
    return { cancel: () => this.timers.delete(id) };
  }

  advance(ms: number): void {
    const until = this.t + ms;
    for (;;) {
      let nextId = -1;
      let next: { at: number; fn: () => void; every?: number } | undefined;
      for (const [id, timer] of this.timers) {
        if (timer.at <= until && (!next || timer.at < next.at)) {
          next = timer;
          nextId = id;
        }
      }
      if (!next) break;
      this.t = next.at;
      if (next.every) next.at += next.every;
      else this.timers.delete(nextId);
      next.fn();
    }
    this.t = until;
  }

  /**
   * The process was paused (or blocked) for `ms`: time jumps, then each timer
   * that fell due runs once, late, and an interval goes on from now - as
   * Node's timers do after a SIGSTOP.
   */
  stall(ms: number): void {
    this.t += ms;
    const due = [...this.timers].filter(([, timer]) => timer.at <= this.t).sort(([, a], [, b]) => a.at - b.at);
    for (const [id, timer] of due) {
      if (!this.timers.has(id)) continue;
      if (timer.every) timer.at = this.t + timer.every;
      else this.timers.delete(id);
      timer.fn();
    }
  }
}

/**
 * The clock option XState's `createActor` takes, from ours: so a machine's
 * delayed transitions (`after`) follow the same clock as everything else it
 * does. For the system clock, Node's own timers, as XState's default is
 * (they keep the process alive while a delay is pending, as they must), with
 * a delay longer than a timer can wait waiting the longest there is
 * (`timerMs`): every machine's `after` goes through here.
 */
export function xstateClock(clock: Clock): { clock: { setTimeout(fn: () => void, ms: number): unknown; clearTimeout(t: unknown): void } } {
  if (clock === systemClock) return { clock: { setTimeout: (fn, ms) => setTimeout(fn, timerMs(ms)), clearTimeout: (t) => clearTimeout(t as NodeJS.Timeout) } };
  return { clock: { setTimeout: (fn, ms) => clock.setTimeout(fn, ms), clearTimeout: (t) => (t as Timer).cancel() } };
}
