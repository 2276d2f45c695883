/**
 * A text that is costly to make and that anyone who can reach a port may ask for
 * (`/metrics`, the inspector's `/api/state`): made after it was asked for, one at a
 * time, each starting once `GAP` times the last one's cost has passed since it ended
 * (at most `MAX_WAIT_MS`), and shared by everyone who asked meanwhile. So such reads
 * take about a tenth of the event loop at most, however many ask, and none is ever
 * answered with a text made before it asked.
 */
import { systemClock, type Clock } from '../transport/clock.js';

/** A make starts once this many times the last one's cost has passed since it ended. */
const GAP = 9;
/** ... but never waits longer than this, so a scrape is answered within Prometheus's default 10 s timeout. */
const MAX_WAIT_MS = 2000;

export class Paced {
  /** The make a read asked for now gets (not started yet), the one running, and when the next may start. */
  private next?: Promise<string>;
  private making?: Promise<string>;
  private nextAt = -Infinity;

  constructor(
    private readonly make: () => string | Promise<string>,
    private readonly clock: Clock = systemClock,
  ) {}

  get(): Promise<string> {
    return (this.next ??= this.makeNext());
  }

  private async makeNext(): Promise<string> {
    // Awaited even when nothing is being made: `get` must have kept this promise before it is let go below.
    await this.making?.catch(() => {});
    const wait = Math.min(MAX_WAIT_MS, this.nextAt - this.clock.now());
    if (wait > 0) await new Promise<void>((resolve) => this.clock.setTimeout(resolve, wait));
    this.next = undefined; // asked for from now on: the one after this
    const making = (async () => {
      const start = this.clock.now();
      try {
        return await this.make();
      } finally {
        const end = this.clock.now();
        this.nextAt = end + GAP * (end - start);
        this.making = undefined;
      }
    })();
    this.making = making;
    return making;
  }
}
