/**
 * One privacy policy's requests waiting in the library client (`RequestBook.waiting`, client.ts) to
 * be sent, oldest first: two lists threaded through the requests themselves, so that each step is
 * O(1) whatever the queue holds.
 *
 * - Every waiting request, in order (`oldest`, `size`): what counts against `maxQueued`, and what
 *   `makeRoom` gives up the oldest of.
 * - Those `sendMore` still looks at: every waiting request but those it found given up on (aborted,
 *   or their time up) and set aside (`setAside`), each to be settled by its own CANCEL or EXPIRE.
 *   Left in its place, such a request was looked at again by every `sendMore` until that event
 *   came: many requests running out of time together (their EXPIREs in one turn of the event loop)
 *   cost a walk of the whole queue each, and 40,000 held the client's loop for seconds.
 *
 * A JavaScript Set kept the order before; besides the looks again, its iteration walks past the
 * holes its deletions leave at its head until it is rehashed, and putting requests back first
 * (`unshift`, after a lost connection) made a new Set of the whole policy's queue.
 */

/** The links a waiting request carries (client.ts `Entry`): set and read by its policy's queue alone. */
export interface Queued<T> {
  /** Its neighbours among every waiting request of its policy. */
  qPrev: T | undefined;
  qNext: T | undefined;
  /** Its neighbours among those `sendMore` still looks at. */
  lPrev: T | undefined;
  lNext: T | undefined;
  /** Not in a queue, in one and looked at, or in one and set aside (given up on, its event to come). */
  queued: Place;
}

/** Where a request is in its policy's queue: in none, looked at, or set aside. */
export type Place = typeof NOT_QUEUED | typeof LOOKED | typeof ASIDE;
export const NOT_QUEUED = 0;
const LOOKED = 1;
const ASIDE = 2;

export class PolicyQueue<T extends Queued<T>> {
  /** Waiting requests, set aside or not. */
  size = 0;
  private head: T | undefined;
  private tail: T | undefined;
  private lookHead: T | undefined;
  private lookTail: T | undefined;

  constructor(
    readonly policy: string,
    /** When the queue was made, among the client's: its place in `RequestBook.waiting`'s order (a Map's, by insertion). */
    readonly order: number,
  ) {}

  /** The oldest waiting request, set aside or not. */
  get oldest(): T | undefined {
    return this.head;
  }

  /** The first request `sendMore` still looks at; `e.lNext` the next one. */
  get first(): T | undefined {
    return this.lookHead;
  }

  /** `e` waits last. */
  push(e: T): void {
    e.qPrev = this.tail;
    e.qNext = undefined;
    if (this.tail) this.tail.qNext = e;
    else this.head = e;
    this.tail = e;
    e.lPrev = this.lookTail;
    e.lNext = undefined;
    if (this.lookTail) this.lookTail.lNext = e;
    else this.lookHead = e;
    this.lookTail = e;
    e.queued = LOOKED;
    this.size++;
  }

  /** `list` (sent, then taken back) waits before every other request, in its order. */
  unshift(list: T[]): void {
    for (let i = list.length - 1; i >= 0; i--) {
      const e = list[i]!;
      e.qPrev = undefined;
      e.qNext = this.head;
      if (this.head) this.head.qPrev = e;
      else this.tail = e;
      this.head = e;
      e.lPrev = undefined;
      e.lNext = this.lookHead;
      if (this.lookHead) this.lookHead.lPrev = e;
      else this.lookTail = e;
      this.lookHead = e;
      e.queued = LOOKED;
      this.size++;
    }
  }

  /** `e` leaves the queue (sent, or settled); returns whether it was in it. */
  remove(e: T): boolean {
    if (e.queued === NOT_QUEUED) return false;
    if (e.queued === LOOKED) this.unlook(e);
    if (e.qPrev) e.qPrev.qNext = e.qNext;
    else this.head = e.qNext;
    if (e.qNext) e.qNext.qPrev = e.qPrev;
    else this.tail = e.qPrev;
    e.qPrev = e.qNext = undefined;
    e.queued = NOT_QUEUED;
    this.size--;
    return true;
  }

  /** `e` was given up on (its CANCEL or EXPIRE to come): it keeps its place, and `sendMore` does not look at it again. */
  setAside(e: T): void {
    if (e.queued !== LOOKED) return;
    this.unlook(e);
    e.queued = ASIDE;
  }

  private unlook(e: T): void {
    if (e.lPrev) e.lPrev.lNext = e.lNext;
    else this.lookHead = e.lNext;
    if (e.lNext) e.lNext.lPrev = e.lPrev;
    else this.lookTail = e.lPrev;
    e.lPrev = e.lNext = undefined;
  }
}
