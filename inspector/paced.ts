/**
 * Texts that are costly to make and that anyone who can reach a port may ask for (`/metrics`, the
 * inspector's picture on `/api/state` and `/events`, its `/api/events` and `/api/history`): made after
 * they were asked for, one at a time, each starting once `GAP` times the last one's cost has passed
 * since it ended (at most `MAX_WAIT_MS`), and each shared by everyone who asked for the same (its key)
 * meanwhile. So such reads take about a tenth of the event loop at most, however many ask and whatever
 * they ask for, and none is ever answered with a text made before it asked.
 */
import { systemClock, type Clock } from '../transport/clock.js';

/** A make starts once this many times the last one's cost has passed since it ended. */
const GAP = 9;
/** ... but never waits longer than this, so a scrape is answered within Prometheus's default 10 s timeout. */
const MAX_WAIT_MS = 2000;

/** Makes of several kinds taking turns: one at a time, paced as above, those asked for with the same key shared. */
export class Pacer {
  /** The makes asked for and not started yet, by key. */
  private readonly waiting = new Map<string, Promise<unknown>>();
  /** The last make asked for (started or not): the next one starts after it. */
  private last: Promise<unknown> = Promise.resolve();
  private nextAt = -Infinity;

  constructor(private readonly clock: Clock = systemClock) {}

  /** What `make` makes, made after every make asked for before it; shared with the asks of `key` until it starts. */
  run<T>(key: string, make: () => T | Promise<T>): Promise<T> {
    const asked = this.waiting.get(key) as Promise<T> | undefined;
    if (asked) return asked;
    const turn = this.made(key, this.last, make);
    this.waiting.set(key, turn);
    this.last = turn.catch(() => {});
    return turn;
  }

  private async made<T>(key: string, after: Promise<unknown>, make: () => T | Promise<T>): Promise<T> {
    // Awaited even when nothing is being made: `run` must have kept this promise before it is let go below.
    await after;
    const wait = Math.min(MAX_WAIT_MS, this.nextAt - this.clock.now());
    if (wait > 0) await new Promise<void>((resolve) => this.clock.setTimeout(resolve, wait));
    this.waiting.delete(key); // asked for from now on: the one after this
    const start = this.clock.now();
    try {
      return await make();
    } finally {
      const end = this.clock.now();
      this.nextAt = end + GAP * (end - start);
    }
  }
}

/** One text made so: `/metrics`. */
export class Paced {
  private readonly pacer: Pacer;

  constructor(
    private readonly make: () => string | Promise<string>,
    clock: Clock = systemClock,
  ) {
    this.pacer = new Pacer(clock);
  }

  get(): Promise<string> {
    return this.pacer.run('', this.make);
  }
}
