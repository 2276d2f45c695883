/**
 * Runs queued jobs at a bounded rate: at most `perSecond`, in the order they
 * were queued, in rounds every `tickMs`. The proxy probes servers that went
 * down through one: however many are down (thousands pointing at a refused
 * port, say), probing costs a bounded share of the proxy's time.
 */
import type { Clock, Timer } from '../transport/clock.js';
import { Fifo } from '../transport/fifo.js';

export class Pacer<T> {
  private readonly queue = new Fifo<T>();
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
    return this.queue.size;
  }

  add(job: T): void {
    this.queue.push(job);
    if (!this.timer) this.timer = this.clock.setInterval(this.tick, this.tickMs);
  }

  stop(): void {
    this.timer?.cancel();
    this.timer = undefined;
    this.queue.clear();
  }

  private readonly tick = (): void => {
    for (let n = 0; n < this.perTick && this.queue.size > 0; n++) this.run(this.queue.shift()!);
    if (this.queue.size === 0) {
      this.timer?.cancel();
      this.timer = undefined;
    }
  };
}
