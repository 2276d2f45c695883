/**
 * Requests sent on one upstream link and not yet answered, keyed by the seq
 * the proxy gave them on that link. Insertion order is deadline order (one
 * timeout for all), so expiry looks only at the oldest entries.
 */
export interface Pending<R> {
  upSeq: number;
  req: R;
  deadline: number;
}

export class Inflight<R> {
  private readonly map = new Map<number, Pending<R>>();
  private seq = 0;

  /**
   * @param busy a set shared by all tables of one proxy: holds the tables
   *   that have entries, so one sweeper can find what may expire.
   */
  constructor(
    private readonly busy?: Set<Inflight<R>>,
    /** Who is told when entries expire (the upstream link actor). */
    readonly owner?: { send(event: { type: 'EXPIRE'; now: number }): void },
  ) {}

  get size(): number {
    return this.map.size;
  }

  add(req: R, deadline: number): number {
    this.seq = this.seq >= 0xffffffff ? 1 : this.seq + 1;
    const upSeq = this.seq;
    this.map.set(upSeq, { upSeq, req, deadline });
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
      if (this.map.size === 0) this.busy?.delete(this);
    }
    return p;
  }

  /** Deadline of the oldest entry, or Infinity when empty. */
  oldestDeadline(): number {
    for (const p of this.map.values()) return p.deadline;
    return Infinity;
  }

  takeExpired(now: number): Array<Pending<R>> {
    const out: Array<Pending<R>> = [];
    for (const p of this.map.values()) {
      if (p.deadline > now) break;
      out.push(p);
    }
    for (const p of out) this.map.delete(p.upSeq);
    if (out.length && this.map.size === 0) this.busy?.delete(this);
    return out;
  }

  takeAll(): Array<Pending<R>> {
    const out = [...this.map.values()];
    this.map.clear();
    this.busy?.delete(this);
    return out;
  }
}
