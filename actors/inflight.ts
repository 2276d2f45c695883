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
 * an older one waits in a small Map beside it. An entry in the ring is no
 * object: its request, seq and two times sit in arrays side by side, so a
 * request sent and answered allocates nothing here (a `Pending` with its two
 * times boxed was about 60 bytes a request); `Pending` objects are made only
 * for the rare paths that hand entries out (`take`, `takeExpired`, ...).
 */
export class Inflight<R> {
  private reqs: Array<R | undefined> = new Array(16).fill(undefined);
  private seqs = new Float64Array(16);
  private deadlines = new Float64Array(16);
  private sentAts = new Float64Array(16);
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
  /** When the entry `takeReq` took last was sent (clock ms). */
  takenSentAt = 0;
  /** The deadline of the entry `takeReq` took last. */
  takenDeadline = 0;

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
    if (this.count >= this.reqs.length >> 1) this.grow();
    if (this.count === 0) this.low = upSeq;
    this.place(upSeq, req, deadline, sentAt);
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
    if (this.count >= this.reqs.length >> 1) this.grow();
    this.place(p.upSeq, p.req, p.deadline, p.sentAt);
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
    const i = upSeq & this.mask;
    const req = this.reqs[i];
    if (req !== undefined && this.seqs[i] === upSeq) return { upSeq, req, deadline: this.deadlines[i]!, sentAt: this.sentAts[i]! };
    return this.overflow.size ? this.overflow.get(upSeq) : undefined;
  }

  /** The entry for `upSeq`, taken out of the table (its request; undefined when none has that seq), its times left in `takenSentAt` and `takenDeadline`: the answer's path, which allocates nothing. */
  takeReq(upSeq: number): R | undefined {
    const i = upSeq & this.mask;
    let req = this.reqs[i];
    if (req !== undefined && this.seqs[i] === upSeq) {
      this.reqs[i] = undefined;
      this.takenSentAt = this.sentAts[i]!;
      this.takenDeadline = this.deadlines[i]!;
    } else {
      const p = this.overflow.size ? this.overflow.get(upSeq) : undefined;
      if (p === undefined) return undefined;
      this.overflow.delete(upSeq);
      req = p.req;
      this.takenSentAt = p.sentAt;
      this.takenDeadline = p.deadline;
    }
    if (--this.count === 0) this.clear();
    return req;
  }

  take(upSeq: number): Pending<R> | undefined {
    const req = this.takeReq(upSeq);
    return req === undefined ? undefined : { upSeq, req, deadline: this.takenDeadline, sentAt: this.takenSentAt };
  }

  /**
   * When the oldest unanswered entry was sent, or undefined when none is.
   * Seqs are handed out in order, so the oldest is the lowest seq still
   * here: each seq is stepped over once, so this is O(1) amortised.
   */
  oldestSentAt(): number | undefined {
    if (this.count === 0) return undefined;
    for (;;) {
      const low = this.low;
      const i = low & this.mask;
      if (this.reqs[i] !== undefined && this.seqs[i] === low) return this.sentAts[i];
      const p = this.overflow.size ? this.overflow.get(low) : undefined;
      if (p) return p.sentAt;
      this.low = low >= 0xffffffff ? 1 : low + 1;
    }
  }

  /** Whether any entry passes `test` (entries in no particular order). */
  some(test: (p: Pending<R>) => boolean): boolean {
    if (this.count === 0) return false;
    for (let i = 0; i < this.reqs.length; i++) if (this.reqs[i] !== undefined && test(this.entryAt(i))) return true;
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
    for (const p of out) this.takeReq(p.upSeq);
    this.min = min;
    if (this.count === 0) this.clear();
    return out;
  }

  takeAll(): Array<Pending<R>> {
    const out = this.entries();
    this.reqs.fill(undefined);
    this.overflow.clear();
    this.count = 0;
    this.clear();
    return out;
  }

  /** The ring's entry in slot `i` (taken) as a `Pending`. */
  private entryAt(i: number): Pending<R> {
    return { upSeq: this.seqs[i]!, req: this.reqs[i]!, deadline: this.deadlines[i]!, sentAt: this.sentAts[i]! };
  }

  /** Every entry, oldest first. */
  private entries(): Array<Pending<R>> {
    const out: Array<Pending<R>> = [];
    for (let i = 0; i < this.reqs.length; i++) if (this.reqs[i] !== undefined) out.push(this.entryAt(i));
    for (const p of this.overflow.values()) out.push(p);
    // Age from the newest seq back, across the wrap from 0xffffffff to 1.
    const newest = this.seq;
    return out.sort((a, b) => ((newest - b.upSeq) >>> 0) - ((newest - a.upSeq) >>> 0));
  }

  /** Twice the slots; entries move to their new slot, or stay beside the ring when it is taken. */
  private grow(): void {
    const old = this.entries();
    const size = this.reqs.length * 2;
    this.reqs = new Array(size).fill(undefined);
    this.seqs = new Float64Array(size);
    this.deadlines = new Float64Array(size);
    this.sentAts = new Float64Array(size);
    this.mask = size - 1;
    this.overflow.clear();
    for (const p of old) this.place(p.upSeq, p.req, p.deadline, p.sentAt);
  }

  private place(upSeq: number, req: R, deadline: number, sentAt: number): void {
    const i = upSeq & this.mask;
    if (this.reqs[i] === undefined) {
      this.reqs[i] = req;
      this.seqs[i] = upSeq;
      this.deadlines[i] = deadline;
      this.sentAts[i] = sentAt;
    } else this.overflow.set(upSeq, { upSeq, req, deadline, sentAt });
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
