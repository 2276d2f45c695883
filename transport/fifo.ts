/**
 * A first-in, first-out queue: an array read from a head index, so taking one is O(1) where
 * `Array.prototype.shift` copies the rest once the array is long. A slot taken is cleared (the
 * job it held can be collected), the array starts again when emptied, and once more than 1,024
 * taken make over half of it, what is left moves down. The lifecycle lane (lane.ts) and the
 * proxy's probe pacer (actors/pacer.ts) keep their waiting jobs in one.
 */
export class Fifo<T> {
  private items: Array<T | undefined> = [];
  private head = 0;

  /** Items waiting. */
  get size(): number {
    return this.items.length - this.head;
  }

  push(item: T): void {
    this.items.push(item);
  }

  /** The oldest item, taken out; undefined when none waits. */
  shift(): T | undefined {
    if (this.head === this.items.length) return undefined;
    const item = this.items[this.head];
    this.items[this.head++] = undefined;
    if (this.head === this.items.length) this.clear();
    else if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }

  clear(): void {
    this.items = [];
    this.head = 0;
  }
}
