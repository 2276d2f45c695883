/**
 * One budget for the bytes a process holds on its peers' behalf: messages
 * begun and not yet complete (a peer may send up to a frame's limit and
 * stop), and answers written that the peer has not read. Each connection
 * is allowed its frame limit; together they are allowed `limit`. Past it,
 * the connections holding the most are cut until the total is back under,
 * so a crowd of peers each holding a nearly full frame cannot take the
 * process's memory, and everyone else keeps being served.
 *
 * Requests read and not yet answered hold their bytes too (a client may send
 * thousands of requests of up to a frame each to a policy whose servers are
 * slow): they may take at most half the limit (`hold`), and one that does not
 * fit is refused, so partial messages and unread answers keep the other half.
 * One connection's requests may take `requestsPerPeer` (a sixteenth of that
 * half) before its reads pause, so one greedy client cannot take it all.
 * A `shielded` holder (the proxy's link to a server) is counted and never cut.
 *
 * What the proxy's links to servers hold unwritten (requests their servers have
 * not read yet, `addUnwritten`) is counted apart: it cuts and refuses no client.
 * One link may hold `requestsPerPeer`, all of them a quarter of the limit
 * (`linksFull`): past it, a link whose server has stopped taking bytes gets no
 * new request until it reads (upstream.ts `backlogged`). A try that timed out
 * leaves its request's bytes in its link, held by no request, so without the
 * total 1,000 servers reading slowly could hold 1,000 shares.
 */

/** What the budget needs of a connection: how to cut it. */
export interface BudgetHolder {
  /** Close the connection now, telling the peer why if it can; its bytes are released. */
  shed(reason: string): void;
  /**
   * Never cut: what it holds counts, but the budget cuts the other holders instead.
   * The proxy's own link to a server, whose cut would fail every request on it, its
   * server's every client, and free nothing the requests do not hold already.
   */
  readonly shielded?: boolean;
}

/** The budget's default limit (bytes), on the proxy's port and a server's, where nothing limits the process's memory. */
export const DEFAULT_BUFFER_BUDGET = 256 * 1024 * 1024;
/** One connection's requests may hold this part of the budget (`requestsPerPeer`): a 32nd. */
export const PEER_SHARE = 32;

/** The default under a memory limit, in a help text's words (`budgetFor`). */
export const BUDGET_UNDER_A_LIMIT = "under a memory limit (a container's or systemd unit's) below 1 GiB, a quarter of the limit; below 256 MiB, half of it less 64 MiB; up to about 171 MiB, an eighth of it";

/**
 * The budget's default for a process that may use `memory` bytes, and how it was taken from it, as
 * a start line says it (`of` names the limit: "an eighth of it"; undefined where it is
 * `DEFAULT_BUFFER_BUDGET`, less than the share): an eighth of the limit, or half of it less 64 MiB
 * where that is more (from about 171 MiB), at most a quarter (from 256 MiB). The three meet, so the
 * budget, the heap fitted beside it (`fittedOldSpace`) and the connections that heap keeps
 * (`defaultMaxConnections`) grow with the limit: 16 MiB for 128 MiB, 20 for 160, 32 for 192, 48
 * for 224, 64 for 256.
 *
 * What the budget does not count (Node's own memory, V8's young generation, the garbage between
 * collections) hardly shrinks with the limit. In a 128 MiB group, 64 clients sending 1 MB requests
 * to a slow server ended a proxy with a quarter (32 MiB: with the heap fitted beside it,
 * `--max-old-space-size=16`, the requests' 16 MiB held decoded ran the heap out; with 40, the
 * kernel killed it, 128 MiB, with 950 idle connections open too) and with 24 MiB (heap 24: out of
 * heap with the idle connections); with an eighth, 16 MiB, and 32 it refused them OVERLOADED and
 * lived, peaking at 100-116 MiB with 950 idle connections or none (8 runs, and 8 of the spec), a
 * good client answered throughout (with 24, 86-106 MiB, but its heap ran out in 1 of about 20
 * runs) (`spec/memory-limit.spec.ts`).
 *
 * An eighth up to 255 MiB (until 2026-12-02) stepped from 32 MiB to 64 at 256, and the heap fitted
 * beside it from 79 to 64, so a limit below 256 MiB got a larger heap than 256 and, from it, more
 * connections (7168 for 224 MiB, 10000 for 255, where 256 keeps 2048): in a 224 MiB group 7,094
 * idle connections and then the load above took the proxy past its limit (the kernel killed it in 1
 * run of 6; the others peaked at 195-213 MiB; in 240 MiB, 8,630 of them, at 218 and 235). Now, the
 * idle connections up to the default open (1974) or none, the load is refused OVERLOADED and the
 * proxy lives, peaking at 148-149 MiB in 176 MiB, 150-164 in 192, 186-193 in 224, 194-208 in 240
 * (2, 5, 4 and 2 runs); below about 171 MiB it is an eighth, as before (160: 109-131 MiB; 168, 1,590
 * idle connections: 128-150).
 * A line from an eighth at 128 MiB to a quarter at 256 (three eighths less 32 MiB) was worse below
 * 160: in 144 MiB, a 22 MiB budget beside the floor heap of 32 peaked at 125-131 MiB, an eighth
 * (18) at 112-114.
 */
function budgetFor(memory: number, of: string): { bytes: number; share: string | undefined } {
  const MiB = 1024 * 1024;
  const [eighth, half, quarter] = [memory / 8, memory / 2 - 64 * MiB, memory / 4];
  const [bytes, share] = half <= eighth ? [eighth, `an eighth of ${of}`] : half < quarter ? [half, `half of ${of} less 64 MiB, between an eighth and a quarter`] : [quarter, `a quarter of ${of}`];
  return bytes > DEFAULT_BUFFER_BUDGET ? { bytes: DEFAULT_BUFFER_BUDGET, share: undefined } : { bytes: Math.floor(bytes), share };
}

/** How the budget's default is taken from a memory limit of `memory` bytes (`budgetFor`), as a start line says it ("an eighth of it"); undefined where it is `DEFAULT_BUFFER_BUDGET`, less than the share. */
export function defaultBudgetShare(memory: number, of = 'it'): string | undefined {
  return budgetFor(memory, of).share;
}

/**
 * The budget's default for a process that may use `memory` bytes (its control group's limit,
 * `memoryLimit()` in actors/memory-limit.ts; undefined: no limit): `budgetFor`'s share of it, at
 * most `DEFAULT_BUFFER_BUDGET`. The rest is for what the budget does not count - V8's heap (at least
 * about 256 MB on 64-bit, whatever the limit), the messages decoded from those bytes, sockets' own
 * buffers, garbage not collected yet - so a crowd of peers filling the budget is shed (OVERLOADED)
 * before the kernel's OOM killer ends the process and every request in flight.
 */
export function defaultBufferBudget(memory: number | undefined): number {
  return memory === undefined ? DEFAULT_BUFFER_BUDGET : budgetFor(memory, 'it').bytes;
}

export class BufferBudget {
  private total = 0;
  /** Bytes held for requests until they are answered (`hold`, `release`). */
  private requests = 0;
  /** Holders with bytes held, and how many. */
  private readonly held = new Map<BudgetHolder, number>();
  /** Bytes the links to servers hold unwritten, together (`addUnwritten`). */
  private linked = 0;

  /**
   * @param limit bytes allowed in all (0: no limit).
   * @param onShed told of each holder cut, with what it held (for the log).
   * @param onLinksFull told when the links' unwritten bytes pass `maxUnwritten` (for the log).
   */
  constructor(
    readonly limit: number,
    private readonly onShed?: (holder: BudgetHolder, bytes: number) => void,
    private readonly onLinksFull?: (bytes: number, max: number) => void,
  ) {}

  /** Bytes the links to servers may hold unwritten together before those whose servers stopped taking bytes get no new request: a quarter of the limit (no limit without one). */
  get maxUnwritten(): number {
    return this.limit > 0 ? this.limit / 4 : Infinity;
  }

  /** Bytes the links to servers hold unwritten now, together. */
  get unwritten(): number {
    return this.linked;
  }

  /** Whether the links hold more unwritten than `maxUnwritten`. */
  get linksFull(): boolean {
    return this.linked > this.maxUnwritten;
  }

  /** A link's unwritten bytes changed by `delta` (a request queued to it, bytes its server took, the link closed). Cuts nobody. */
  addUnwritten(delta: number): void {
    const before = this.linked;
    this.linked = before + delta;
    if (delta > 0 && before <= this.maxUnwritten && this.linked > this.maxUnwritten) this.onLinksFull?.(this.linked, this.maxUnwritten);
  }

  /** Bytes one connection's unanswered requests may hold before it is read no more until answers bring them down (no limit without one). */
  get requestsPerPeer(): number {
    return this.limit > 0 ? this.limit / PEER_SHARE : Infinity;
  }

  /** Bytes held now, across every holder. */
  get used(): number {
    return this.total + this.requests;
  }

  /**
   * Hold `bytes` for a request until it is answered (`release`). Requests
   * together may hold half the limit at most: one that does not fit holds
   * nothing and gets false (the caller refuses it, OVERLOADED).
   */
  hold(bytes: number): boolean {
    if (this.limit === 0) return true;
    if (this.requests + bytes > this.limit / 2) return false;
    this.requests += bytes;
    if (this.used > this.limit) this.shedLargest();
    return true;
  }

  /** A request `hold` took bytes for was answered. */
  release(bytes: number): void {
    this.requests -= bytes;
  }

  /** `holder` now holds `bytes` (0 when it holds none, or is gone). */
  set(holder: BudgetHolder, bytes: number): void {
    const before = this.held.get(holder) ?? 0;
    if (bytes === before) return;
    this.total += bytes - before;
    if (bytes > 0) this.held.set(holder, bytes);
    else this.held.delete(holder);
    if (this.limit > 0 && this.used > this.limit) this.shedLargest();
  }

  /** Cut the largest holders (shielded ones never) until the total is under the limit. */
  private shedLargest(): void {
    while (this.used > this.limit) {
      let victim: BudgetHolder | undefined;
      let most = -1;
      for (const [h, n] of this.held) {
        if (n > most && !h.shielded) {
          most = n;
          victim = h;
        }
      }
      if (victim === undefined) return;
      this.held.delete(victim);
      this.total -= most;
      this.onShed?.(victim, most);
      victim.shed(`the buffer budget of ${this.limit} bytes is full, and this connection held the most of it (${most} bytes)`);
    }
  }
}
