/**
 * A bounded wait queue that is fair between the keys (clients) its items come
 * from: each key has its own FIFO lane, lanes with items take turns (round
 * robin, one item each), and a full queue turns away the newest item of the
 * key that holds the most (longest-queue drop), so a key that floods the
 * queue is refused its own excess and never a lighter key's request.
 *
 * The proxy keeps one per policy (`Policy.waiting`, routing.ts): requests no
 * server has room for wait here, keyed by the client connection they came from.
 *
 * Cost: push and shift are O(1) amortised and allocate nothing per item (a
 * lane is made once per key, kept while the key lives: a WeakMap, and keeps
 * its slots when it empties); a full
 * queue finds its biggest holder in O(1), or once in O(keys waiting) after
 * that holder lost an item.
 */

/** Slots a lane keeps when it empties; a bigger array is let go (a flood's lane does not hold its peak). */
const KEEP = 64;

/** One key's items, oldest first, in `items[head..tail)`, and its place in the ring of keys with items. */
class Lane<T> {
  /** Its slots, kept when it empties (up to KEEP), so a client with one request waiting at a time allocates nothing per request. */
  items: (T | undefined)[] = [];
  head = 0;
  tail = 0;
  /** Neighbours in the ring while the lane has items (undefined when it has none). */
  next?: Lane<T>;
  prev?: Lane<T>;

  get size(): number {
    return this.tail - this.head;
  }

  oldest(): T {
    return this.items[this.head]!;
  }

  push(item: T): void {
    this.items[this.tail++] = item;
  }

  /** Put `item` after the newest item not `older` than it, so the lane stays in arrival order: O(items it goes before). */
  insert(item: T, older: (a: T, b: T) => boolean): void {
    let at = this.tail;
    while (at > this.head && older(item, this.items[at - 1]!)) at--;
    if (at === this.tail) return this.push(item);
    if (at === this.head && this.head > 0) {
      this.items[--this.head] = item;
      return;
    }
    for (let i = this.tail; i > at; i--) this.items[i] = this.items[i - 1];
    this.items[at] = item;
    this.tail++;
  }

  shift(): T {
    const item = this.items[this.head]!;
    this.items[this.head++] = undefined;
    this.settle();
    return item;
  }

  /** After items left the head: an empty lane starts again, and a long-lived one moves down once half its slots are behind it. */
  private settle(): void {
    if (this.head === this.tail) this.empty();
    else if (this.head > 1024 && this.head * 2 > this.tail) {
      this.items.copyWithin(0, this.head, this.tail);
      this.items.fill(undefined, this.tail - this.head, this.tail);
      this.tail -= this.head;
      this.head = 0;
    }
  }

  /**
   * Take out the items `due` says, from the oldest, into `out`; the scan ends at the first item
   * not due that `passOver` does not let it look past (without one, at the first not due). Items
   * passed over keep their order. O(items scanned), and O(items behind) when one passed over
   * stays ahead of one taken.
   */
  takeDue(due: (item: T) => boolean, passOver: ((item: T) => boolean) | undefined, out: T[]): void {
    const items = this.items;
    let keep = this.head;
    let i = this.head;
    for (; i < this.tail; i++) {
      const item = items[i]!;
      if (due(item)) out.push(item);
      else if (passOver?.(item)) items[keep++] = item;
      else break;
    }
    if (keep === i) return;
    if (keep === this.head) {
      // Only the oldest were taken: the lane starts further on.
      items.fill(undefined, this.head, i);
      this.head = i;
    } else {
      items.copyWithin(keep, i, this.tail);
      items.fill(undefined, this.tail - (i - keep), this.tail);
      this.tail -= i - keep;
    }
    this.settle();
  }

  /** Whether `due` says so of an item the scan `takeDue` makes reaches. */
  anyDue(due: (item: T) => boolean, passOver?: (item: T) => boolean): boolean {
    for (let i = this.head; i < this.tail; i++) {
      const item = this.items[i]!;
      if (due(item)) return true;
      if (!passOver?.(item)) return false;
    }
    return false;
  }

  pop(): T {
    const item = this.items[--this.tail]!;
    this.items[this.tail] = undefined;
    if (this.head === this.tail) this.empty();
    return item;
  }

  private empty(): void {
    this.head = this.tail = 0;
    if (this.items.length > KEEP) this.items = [];
  }
}

export class FairQueue<K extends object, T> {
  private readonly lanes = new WeakMap<K, Lane<T>>();
  /** The lane whose turn is next; the ring holds exactly the lanes with items, in the order they got them. */
  private turn?: Lane<T>;
  /** A lane holding the most items, when known (`biggest` finds it again when it may no longer be). */
  private longest?: Lane<T>;
  private longestKnown = true;
  /** Items queued, in all lanes. */
  length = 0;

  /** Items `key` has queued. */
  sizeOf(key: K): number {
    return this.lanes.get(key)?.size ?? 0;
  }

  /**
   * Queue `item` as `key`'s newest, whatever the length; with `older`, in its
   * place among `key`'s items (behind each that is not `older` than it), for an
   * item that may have come before some of them (a request back from a try).
   */
  push(key: K, item: T, older?: (a: T, b: T) => boolean): void {
    let lane = this.lanes.get(key);
    if (!lane) this.lanes.set(key, (lane = new Lane<T>()));
    if (lane.size === 0) this.link(lane);
    if (older) lane.insert(item, older);
    else lane.push(item);
    this.length++;
    if (this.longestKnown && (!this.longest || lane.size > this.longest.size)) this.longest = lane;
  }

  /**
   * Queue `item` as `key`'s newest when fewer than `limit` are queued. When
   * the queue is full, a key holding fewer items than the biggest holder gets
   * in, and the biggest holder's newest item is taken out instead. Returns
   * the item turned away (`item` itself when `key` is the biggest holder, or
   * ties with it, or `limit` is 0), or undefined when none was. `older` as
   * for `push` (the newest turned away is then the last in arrival order).
   */
  admit(key: K, item: T, limit: number, older?: (a: T, b: T) => boolean): T | undefined {
    if (this.length < limit) {
      this.push(key, item, older);
      return undefined;
    }
    const big = this.biggest();
    if (!big || this.sizeOf(key) >= big.size) return item;
    const dropped = big.pop();
    this.length--;
    if (big.size === 0) this.unlink(big);
    this.longestKnown = false;
    this.push(key, item, older);
    return dropped;
  }

  /** Take out every item `key` has queued, oldest first (a key gone for good: a client whose connection closed). */
  takeOf(key: K): T[] {
    const lane = this.lanes.get(key);
    if (!lane || lane.size === 0) return [];
    const out = lane.items.slice(lane.head, lane.tail) as T[];
    this.length -= out.length;
    lane.items = [];
    lane.head = lane.tail = 0;
    this.unlink(lane);
    return out;
  }

  /** The next item in turn: the oldest (or with `newest`, the newest) of the key whose turn it is; that key's turn then passes to the next. */
  shift(newest = false): T | undefined {
    const lane = this.turn;
    if (!lane) return undefined;
    const item = newest ? lane.pop() : lane.shift();
    this.length--;
    if (lane === this.longest) this.longestKnown = false;
    if (lane.size === 0) this.unlink(lane);
    else this.turn = lane.next;
    return item;
  }

  /**
   * Take the next `n` items (at most all), in turn order: one per key per round, each key's oldest,
   * or with `newest` each key's newest (adaptive LIFO: what is left of each lane stays in arrival
   * order, so `takeDue` still finds the due at its head).
   */
  take(n: number, newest = false): T[] {
    const out: T[] = new Array(Math.min(n, this.length));
    for (let i = 0; i < out.length; i++) out[i] = this.shift(newest)!;
    return out;
  }

  /** Take every item, in turn order: the queue is left empty. */
  takeAll(): T[] {
    return this.take(this.length);
  }

  /**
   * Whether any key has an item `due` says so of: its oldest, or one behind items not due that
   * `passOver` lets the look go past (as `takeDue`).
   */
  anyDue(due: (item: T) => boolean, passOver?: (item: T) => boolean): boolean {
    for (const lane of this.ring()) if (lane.anyDue(due, passOver)) return true;
    return false;
  }

  /**
   * Take out, from each key, its items `due` says so of, and hand each to `out` (once the queue is
   * whole again: `out` may use it). Each lane is scanned from its oldest and the scan ends at the
   * first item not due, or with `passOver`, at the first not due it does not let the scan go past:
   * a lane is in arrival order, so items past a deadline that runs from arrival are at its head,
   * and `passOver` names those whose deadline runs from elsewhere (a request back from a try waits
   * in its place by arrival, its stay in the queue counted from its return). Returns how many were
   * taken.
   */
  takeDue(due: (item: T) => boolean, out: (item: T) => void, passOver?: (item: T) => boolean): number {
    const taken: T[] = [];
    // The lanes listed first: one that empties leaves the ring.
    for (const l of [...this.ring()]) {
      l.takeDue(due, passOver, taken);
      if (l.size === 0 && l.next) this.unlink(l);
    }
    if (taken.length === 0) return 0;
    this.length -= taken.length;
    this.longestKnown = false;
    for (const item of taken) out(item);
    return taken.length;
  }

  /** A lane holding the most items, or undefined when the queue is empty. */
  private biggest(): Lane<T> | undefined {
    if (!this.longestKnown) {
      let best: Lane<T> | undefined;
      for (const lane of this.ring()) if (!best || lane.size > best.size) best = lane;
      this.longest = best;
      this.longestKnown = true;
    }
    return this.longest;
  }

  /** The lanes with items, from the one whose turn is next, each once. */
  private *ring(): Generator<Lane<T>> {
    const start = this.turn;
    if (!start) return;
    let lane = start;
    do {
      yield lane;
      lane = lane.next!;
    } while (lane !== start);
  }

  /** Put a lane that just got its first item last in the ring: its turn comes after those already waiting. */
  private link(lane: Lane<T>): void {
    const turn = this.turn;
    if (!turn) {
      lane.next = lane.prev = lane;
      this.turn = lane;
      return;
    }
    const last = turn.prev!;
    lane.prev = last;
    lane.next = turn;
    last.next = lane;
    turn.prev = lane;
  }

  /** Take a lane that has no items left out of the ring. */
  private unlink(lane: Lane<T>): void {
    const next = lane.next!;
    if (next === lane) this.turn = undefined;
    else {
      lane.prev!.next = next;
      next.prev = lane.prev;
      if (this.turn === lane) this.turn = next;
    }
    lane.next = lane.prev = undefined;
    if (this.longest === lane) {
      this.longest = undefined;
      this.longestKnown = this.turn === undefined;
    }
  }
}
