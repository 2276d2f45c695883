/**
 * A policy's retry budget, as Finagle's `RetryBudget` and Linkerd's `retryBudget` keep one: its
 * retries over the last 10 seconds may be at most a percentage of its requests over them
 * (`retry_budget`, 20 % by default) plus a few a second however few requests came
 * (`min_retry_rate`, 10: 100 over the 10 s). A retry past it is not made: the request gets its
 * last try's answer at once. Without it, a policy whose tries fail or time out got up to
 * `retries + 1` times its load, at the moment it could least take it: three servers answering
 * `TIMEOUT` after their handler timeout for a third of the requests ran every fast request's p50
 * from 4 ms to over a second (README, "Retries and their budget").
 *
 * Only retries of work that may have run count (an error answer, a try timeout). Outside it: a
 * server's OVERLOADED (it ran none of the work; sent elsewhere, the request runs once all the same),
 * and the requests of a server whose link went down - what the server held when it went, a one-off
 * bounded by its in-flight limit, and the server takes no more.
 *
 * Ten one-second slots; a request or a retry is counted in the slot of its second. Counting a
 * request is one add per batch of a read; the sum over the slots is taken per retry only.
 */

/** The budget's span (ms): Finagle's `ttl` and Linkerd's default. */
export const RETRY_BUDGET_WINDOW_MS = 10_000;
const SLOTS = 10;
const SLOT_MS = RETRY_BUDGET_WINDOW_MS / SLOTS;

export interface RetryBudgetRules {
  /** Retries allowed as a percentage of the requests over the window. */
  percent: number;
  /** Retries allowed a second whatever the requests (over the window: this times its seconds). */
  minPerSecond: number;
}

/** What the window holds, for a refused retry's message. */
export interface RetryBudgetState {
  requests: number;
  retries: number;
  allowed: number;
}

export class RetryBudget {
  /** The second (`floor(now / SLOT_MS)`) each slot counts, or -1. */
  private readonly second = new Float64Array(SLOTS).fill(-1);
  private readonly requests = new Float64Array(SLOTS);
  private readonly retries = new Float64Array(SLOTS);

  /** Count `n` requests that arrived at `now` (clock ms). */
  deposit(now: number, n: number): void {
    this.requests[this.slot(now)]! += n;
  }

  /** Take one retry at `now` if the budget has room for it (counted), else false (not counted). */
  take(now: number, rules: RetryBudgetRules): boolean {
    const s = this.state(now, rules);
    if (s.retries >= s.allowed) return false;
    this.retries[this.slot(now)]! += 1;
    return true;
  }

  /** Requests and retries over the window that ends at `now`, and the retries it allows. */
  state(now: number, rules: RetryBudgetRules): RetryBudgetState {
    const current = Math.floor(now / SLOT_MS);
    let requests = 0;
    let retries = 0;
    for (let i = 0; i < SLOTS; i++) {
      const age = current - this.second[i]!;
      if (age < 0 || age >= SLOTS) continue;
      requests += this.requests[i]!;
      retries += this.retries[i]!;
    }
    const allowed = Math.floor((rules.minPerSecond * RETRY_BUDGET_WINDOW_MS) / 1000 + (rules.percent / 100) * requests);
    return { requests, retries, allowed };
  }

  /** The slot of `now`'s second, emptied first when it last counted another second. */
  private slot(now: number): number {
    const second = Math.floor(now / SLOT_MS);
    const i = second % SLOTS;
    if (this.second[i] !== second) {
      this.second[i] = second;
      this.requests[i] = 0;
      this.retries[i] = 0;
    }
    return i;
  }
}
