/**
 * A bounded ring buffer: keeps the newest `capacity` items, drops the oldest.
 * Pushing never allocates once full, so recording on a busy proxy stays cheap.
 */
export class Ring<T> {
  private readonly items: Array<T | undefined>;
  private start = 0;
  private count = 0;
  /** How many items were ever pushed (the newest item's number is `total - 1`). */
  total = 0;

  constructor(readonly capacity: number) {
    if (!(capacity >= 1)) throw new RangeError(`a ring needs a capacity of at least 1, got ${capacity}`);
    this.items = new Array<T | undefined>(capacity);
  }

  get size(): number {
    return this.count;
  }

  push(item: T): void {
    this.total++;
    if (this.count < this.capacity) {
      this.items[(this.start + this.count) % this.capacity] = item;
      this.count++;
      return;
    }
    this.items[this.start] = item;
    this.start = (this.start + 1) % this.capacity;
  }

  /** Oldest first. */
  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.items[(this.start + i) % this.capacity]!);
    return out;
  }

  /** The number (as `total` counts) of the oldest item kept. */
  get first(): number {
    return this.total - this.count;
  }

  /** The item numbered `n` (as `total` counts), if still kept. */
  at(n: number): T | undefined {
    const i = n - this.first;
    return i >= 0 && i < this.count ? this.items[(this.start + i) % this.capacity] : undefined;
  }

  /** The newest `n` items, oldest first. */
  last(n: number): T[] {
    const all = this.toArray();
    return n >= all.length ? all : all.slice(all.length - n);
  }
}
