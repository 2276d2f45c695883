/**
 * Requests sent on one upstream link and not yet answered, keyed by the seq
 * the proxy gave them on that link. Each entry has its own deadline (the
 * earlier of the try timeout and the request's deadline); `minDeadline`
 * tells a sweeper cheaply whether anything may have expired.
 */
export interface Pending<R> {
  upSeq: number;
  req: R;
  deadline: number;
}

export class Inflight<R> {
  private readonly map = new Map<number, Pending<R>>();
  private seq = 0;
  /** No entry expires before this (it may be stale-low after removals; a scan refreshes it). */
  private min = Infinity;

  /**
   * @param busy a set shared by all tables of one proxy: holds the tables
   *   that have entries, so one sweeper can find what may expire.
   * @param owner who is told when entries expire (the upstream link actor).
   */
  constructor(
    private readonly busy?: Set<Inflight<R>>,
    readonly owner?: { send(event: { type: 'EXPIRE'; now: number }): void },
  ) {}

  get size(): number {
    return this.map.size;
  }

  add(req: R, deadline: number): number {
    this.seq = this.seq >= 0xffffffff ? 1 : this.seq + 1;
    const upSeq = this.seq;
    this.map.set(upSeq, { upSeq, req, deadline });
    if (deadline < this.min) this.min = deadline;
    if (this.map.size === 1) this.busy?.add(this);
    return upSeq;
  }

  /** The entry for `upSeq`, left in the table. */
  peek(upSeq: number): Pending<R> | undefined {
    return this.map.get(upSeq);
  }

  take(upSeq: number): Pending<R> | undefined {
    const p = this.map.get(upSeq);
    if (p) {
      this.map.delete(upSeq);
      if (this.map.size === 0) this.clear();
    }
    return p;
  }

  /** Earliest deadline of any entry (a lower bound), or Infinity when empty. */
  oldestDeadline(): number {
    return this.min;
  }

  takeExpired(now: number): Array<Pending<R>> {
    const out: Array<Pending<R>> = [];
    let min = Infinity;
    for (const p of this.map.values()) {
      if (p.deadline <= now) out.push(p);
      else if (p.deadline < min) min = p.deadline;
    }
    for (const p of out) this.map.delete(p.upSeq);
    this.min = min;
    if (this.map.size === 0) this.clear();
    return out;
  }

  takeAll(): Array<Pending<R>> {
    const out = [...this.map.values()];
    this.map.clear();
    this.clear();
    return out;
  }

  private clear(): void {
    this.min = Infinity;
    this.busy?.delete(this);
  }
}
