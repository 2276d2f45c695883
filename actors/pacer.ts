/**
 * Runs queued jobs at a bounded rate: at most `perSecond`, in the order they
 * were queued, in rounds every `tickMs`. The proxy probes servers that went
 * down through one: however many are down (thousands pointing at a refused
 * port, say), probing costs a bounded share of the proxy's time.
 */
import type { Clock, Timer } from '../transport/clock.js';

export class Pacer<T> {
  private queue: T[] = [];
  private head = 0;
  private timer?: Timer;
  private readonly perTick: number;

  constructor(
    private readonly clock: Clock,
    perSecond: number,
    private readonly run: (job: T) => void,
    private readonly tickMs = 10,
  ) {
    this.perTick = Math.max(1, Math.round((perSecond * tickMs) / 1000));
  }

  /** Jobs waiting for their turn. */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  add(job: T): void {
    this.queue.push(job);
    if (!this.timer) this.timer = this.clock.setInterval(this.tick, this.tickMs);
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.queue = [];
    this.head = 0;
  }

  private readonly tick = (): void => {
    const end = Math.min(this.queue.length, this.head + this.perTick);
    while (this.head < end) this.run(this.queue[this.head++]!);
    if (this.head >= this.queue.length) {
      this.queue = [];
      this.head = 0;
      this.timer?.cancel();
      this.timer = undefined;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  };
}
