import { Fifo } from './fifo.js';

/**
 * Work that comes in storms, run a bounded number of jobs a turn of the event loop.
 *
 * A connection's end costs its owner little (a link's machine steps down, a server leaves its
 * pool: about 0.15 ms), a registration more (a member, a link and its dial: 1-2 ms). Alone they
 * are nothing; by the thousand they arrive in one poll phase (libuv reads every socket that is
 * ready before the loop turns), and ran there: 3,000 servers of one process killed at once held
 * the proxy's loop 550-650 ms, its clients' requests with it. Through a lane, at most `perTurn`
 * jobs run a turn of the loop; the rest wait, in order, for the turns after, while the clients'
 * reads are served between them (HAProxy bounds its accepts a turn with `tune.maxaccept`, Envoy
 * with `max_connections_to_accept_per_socket_event`).
 *
 * Jobs run in the order they were given: one given while others wait runs after them, so the
 * events of one connection (its registration, then its end) keep their order. One given while
 * none wait and the turn's budget lasts runs at once, as if there were no lane.
 */
export class Lane {
  private readonly queue = new Fifo<() => void>();
  /** Jobs run in this turn of the loop: since the last tick, which ends a turn (it runs in the check phase). */
  private used = 0;
  private ticking = false;

  constructor(readonly perTurn: number) {}

  /** Jobs waiting for a later turn. */
  get waiting(): number {
    return this.queue.size;
  }

  /** Run `job` now if the turn's budget lasts and nothing waits, or after what waits, in a later turn. */
  run(job: () => void): void {
    if (this.queue.size === 0 && this.used < this.perTurn) {
      this.used++;
      this.schedule();
      return job();
    }
    this.queue.push(job);
    this.schedule();
  }

  private schedule(): void {
    if (this.ticking) return;
    this.ticking = true;
    setImmediate(this.tick);
  }

  /**
   * The end of a turn (the check phase, after the poll): what is left of its budget goes to the jobs
   * waiting, and the next turn has a new one; what remains waits for it. The jobs run at once in
   * this turn's poll phase count: reset here, the budget let 32 run there and 32 more here.
   */
  private readonly tick = (): void => {
    this.ticking = false;
    try {
      while (this.queue.size > 0 && this.used < this.perTurn) {
        const job = this.queue.shift()!;
        this.used++;
        job();
      }
    } finally {
      this.used = 0;
      if (this.queue.size > 0) this.schedule();
    }
  };
}

/**
 * Jobs of connections' ends (every `Connection`'s), of servers' registrations at the proxy (its
 * listener's REGISTER, DEREGISTER and bad input, its pinger's MISSED_PINGS) and of what the
 * registry tells the proxy (`registry/proxy-registry.ts`): one lane for the process, since the loop
 * they would hold is one.
 */
export const lifecycle = new Lane(32);
