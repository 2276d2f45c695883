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
  /** When it was sent (clock ms). */
  sentAt: number;
}

/**
 * Seqs are handed out in order and mostly answered in order, so entries live
 * in a ring indexed by the low bits of their seq (no hashing, no rehashing as
 * a Map of ever-new keys needs); the rare entry whose slot is still taken by
 * an older one waits in a small Map beside it.
 */
export class Inflight<R> {
  private slots: Array<Pending<R> | undefined> = new Array(16).fill(undefined);
  private mask = 15;
  private overflow = new Map<number, Pending<R>>();
  private count = 0;
  private seq = 0;
  /** Seqs have wrapped from 0xffffffff to 1: every seq was handed out once. */
  private wrapped = false;
  /** No entry expires before this (it may be stale-low after removals; a scan refreshes it). */
  private min = Infinity;
  /** No entry was sent before the one with this seq (the oldest may have been answered since: `oldestSentAt` moves it on). */
  private low = 1;

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
    return this.count;
  }

  add(req: R, deadline: number, sentAt = 0): number {
    if (this.seq >= 0xffffffff) {
      this.seq = 1;
      this.wrapped = true;
    } else this.seq++;
    const upSeq = this.seq;
    if (this.count >= this.slots.length >> 1) this.grow();
    if (this.count === 0) this.low = upSeq;
    const p: Pending<R> = { upSeq, req, deadline, sentAt };
    const i = upSeq & this.mask;
    if (this.slots[i] === undefined) this.slots[i] = p;
    else this.overflow.set(upSeq, p);
    this.count++;
    if (deadline < this.min) this.min = deadline;
    if (this.count === 1) this.busy?.add(this);
    return upSeq;
  }

  /**
   * Put in an entry another table handed out (its `upSeq` and `deadline` its own): a link's tries kept
   * past their try timeout (link.ts `keepTry`) wait for their answer in a table of their own, apart
   * from its in-flight requests, which the slots and the stall rule count.
   */
  put(p: Pending<R>): void {
    if (this.count >= this.slots.length >> 1) this.grow();
    this.place(p);
    this.count++;
    if (p.deadline < this.min) this.min = p.deadline;
    if (this.count === 1) this.busy?.add(this);
  }

  /** The seq handed out last (0 before any). */
  get lastSeq(): number {
    return this.seq;
  }

  /** Whether `upSeq` was handed out by this table (in flight, answered or expired since), as against a seq it never gave. */
  wasSent(upSeq: number): boolean {
    return upSeq >= 1 && upSeq <= 0xffffffff && (this.wrapped || upSeq <= this.seq);
  }

  /** The entry for `upSeq`, left in the table. */
  peek(upSeq: number): Pending<R> | undefined {
    const p = this.slots[upSeq & this.mask];
    return p !== undefined && p.upSeq === upSeq ? p : this.overflow.size ? this.overflow.get(upSeq) : undefined;
  }

  take(upSeq: number): Pending<R> | undefined {
    const i = upSeq & this.mask;
    let p = this.slots[i];
    if (p !== undefined && p.upSeq === upSeq) this.slots[i] = undefined;
    else {
      p = this.overflow.size ? this.overflow.get(upSeq) : undefined;
      if (p === undefined) return undefined;
      this.overflow.delete(upSeq);
    }
    if (--this.count === 0) this.clear();
    return p;
  }

  /**
   * When the oldest unanswered entry was sent, or undefined when none is.
   * Seqs are handed out in order, so the oldest is the lowest seq still
   * here: each seq is stepped over once, so this is O(1) amortised.
   */
  oldestSentAt(): number | undefined {
    if (this.count === 0) return undefined;
    for (;;) {
      const p = this.peek(this.low);
      if (p) return p.sentAt;
      this.low = this.low >= 0xffffffff ? 1 : this.low + 1;
    }
  }

  /** Whether any entry passes `test` (entries in no particular order). */
  some(test: (p: Pending<R>) => boolean): boolean {
    if (this.count === 0) return false;
    for (const p of this.slots) if (p !== undefined && test(p)) return true;
    for (const p of this.overflow.values()) if (test(p)) return true;
    return false;
  }

  /** Earliest deadline of any entry (a lower bound), or Infinity when empty. */
  oldestDeadline(): number {
    return this.min;
  }

  takeExpired(now: number): Array<Pending<R>> {
    const out: Array<Pending<R>> = [];
    let min = Infinity;
    for (const p of this.entries()) {
      if (p.deadline <= now) out.push(p);
      else if (p.deadline < min) min = p.deadline;
    }
    for (const p of out) this.take(p.upSeq);
    this.min = min;
    if (this.count === 0) this.clear();
    return out;
  }

  takeAll(): Array<Pending<R>> {
    const out = this.entries();
    this.slots.fill(undefined);
    this.overflow.clear();
    this.count = 0;
    this.clear();
    return out;
  }

  /** Every entry, oldest first. */
  private entries(): Array<Pending<R>> {
    const out: Array<Pending<R>> = [];
    for (const p of this.slots) if (p !== undefined) out.push(p);
    for (const p of this.overflow.values()) out.push(p);
    // Age from the newest seq back, across the wrap from 0xffffffff to 1.
    const newest = this.seq;
    return out.sort((a, b) => ((newest - b.upSeq) >>> 0) - ((newest - a.upSeq) >>> 0));
  }

  /** Twice the slots; entries move to their new slot, or stay beside the ring when it is taken. */
  private grow(): void {
    const old = this.slots;
    const size = old.length * 2;
    this.slots = new Array(size).fill(undefined);
    this.mask = size - 1;
    for (const p of old) if (p !== undefined) this.place(p);
    if (this.overflow.size) {
      const waiting = [...this.overflow.values()];
      this.overflow.clear();
      for (const p of waiting) this.place(p);
    }
  }

  private place(p: Pending<R>): void {
    const i = p.upSeq & this.mask;
    if (this.slots[i] === undefined) this.slots[i] = p;
    else this.overflow.set(p.upSeq, p);
  }

  private clear(): void {
    this.min = Infinity;
    this.busy?.delete(this);
  }
}

/**
 * How many requests are accepted and not yet answered, with one waiter for
 * the moment none is (a drain ends then). Costs a decrement per answer.
 */
export class InflightCount {
  private n = 0;
  private waiter?: () => void;

  get size(): number {
    return this.n;
  }

  add(k: number): void {
    this.n += k;
  }

  done(): void {
    if (--this.n === 0 && this.waiter) this.waiter();
  }

  /** Call `fn` once nothing is in flight (now, when nothing is). Returns the cancel. */
  whenIdle(fn: () => void): () => void {
    let fired = false;
    const once = (): void => {
      if (fired) return;
      fired = true;
      this.waiter = undefined;
      fn();
    };
    this.waiter = once;
    if (this.n === 0) queueMicrotask(once);
    return () => {
      if (this.waiter === once) this.waiter = undefined;
    };
  }
}
