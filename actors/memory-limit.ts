/**
 * The memory a process may use, as its container or systemd unit limits it (cgroup
 * `memory.max` / `memory.limit_in_bytes`, read by Node as `process.constrainedMemory()`), and
 * the line a proxy or server logs at start about the buffer budget it keeps within it.
 */
import { totalmem } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { defaultBudgetShare, defaultBufferBudget } from '../transport/budget.js';
import { LAZY_TEXT_BYTES } from '../transport/fastwire.js';

/** The bytes this process may use when a control group limits it below the machine's memory, else undefined (no limit: Node 20 then reads 2^64, or 0). */
export function memoryLimit(constrained = process.constrainedMemory?.(), machine = totalmem()): number | undefined {
  return constrained !== undefined && constrained > 0 && constrained < machine ? constrained : undefined;
}

const mib = (n: number): string => `${Math.round((n / 1048576) * 10) / 10} MiB`;

/**
 * The `--max-old-space-size` (MiB) that fits V8's heap beside a buffer budget of `budget` in a
 * process limited to `memory` bytes: half of what the budget leaves, less 32 MiB for the young
 * generation, and at least 32 - 64 for 256 MiB, 32 for 128 MiB (beside its 16 MiB budget, an
 * eighth), 38, 48 and 56 for 160, 192 and 224 MiB (beside budgets of 20, 32 and 48 MiB:
 * `defaultBufferBudget`, whose share makes it grow with the limit). The other half is for what neither counts: buffers V8 frees only
 * when it next collects, the allocator's slack, Node's own memory. 64 clients sending 1 MB
 * requests to a slow server, a proxy in a 256 MiB group (`spec/memory-limit.spec.ts`): with 64
 * it refused them OVERLOADED and lived, the group peaking at 174-185 MiB over 10 s; with 40 (and
 * 46) the heap ran out (the requests' decoded payloads live in it); with 96, the half alone, it
 * lived too, peaking near 200 MiB. 64 leaves room both ways. In a 128 MiB group beside a
 * 16 MiB budget (with 950 idle connections or none), 24 (what half of what the budget leaves
 * gives) peaked at 86-106 MiB but ran out of heap in 1 of about 20 runs; 32 lived in 8 of 8 (and 8 of
 * 8 of the spec), peaking at 100-116 MiB; 40 at 113-118 (2 runs), too near the limit. Hence the floor of 32.
 * (`defaultBufferBudget` in transport/budget.ts: what ended it beside a 32 MiB budget.) Below
 * `MIN_MEMORY_LIMIT` no heap fits with a margin.
 */
export function fittedOldSpace(memory: number, budget: number): number {
  return Math.max(32, Math.floor((memory - budget) / 2 / 1048576) - 32);
}

/**
 * The least memory limit under which a process leaves large text payloads unmade as it reads them
 * (`lazyTextFrom`). Unmade, a text request the proxy refuses or forwards as its frame's bytes costs
 * it no string - no 4 ms a megabyte, no heap - but what it leaves is Buffers, and V8 collects
 * those once about 64 MB more of them are held than at its last full collection (its
 * external-memory allowance), where strings' growth of the heap had it collect sooner. In a
 * 128 MiB group that step is half the limit: 64 clients' 1 MB text requests to a slow server beside
 * 950 idle connections (`spec/memory-limit.spec.ts`) got the proxy killed by the kernel (OOM) in 2
 * of 12 runs with text unmade, none of 10 with it made. In 160, 256 and 512 MiB groups the same load
 * peaked no higher unmade than made (117-130 MiB against 121-135; 186-187 against 186-201; 217-224
 * against 243), the proxy reading 30-60 % more of it.
 */
export const LAZY_TEXT_MEMORY = 256 * 1048576;

/** From what size (bytes) a process limited to `memory` bytes (undefined: no limit) leaves a text payload unmade as it reads it: `LAZY_TEXT_BYTES`, or Infinity (never) below `LAZY_TEXT_MEMORY`. */
export function lazyTextFrom(memory: number | undefined): number {
  return memory !== undefined && memory < LAZY_TEXT_MEMORY ? Infinity : LAZY_TEXT_BYTES;
}

/**
 * The least memory limit a proxy (or server) runs in safely: below it the `memory_limit` line is a
 * warn saying so, whatever the budget and the heap. In a 96 MiB group (a 12 MiB budget, an eighth)
 * 64 clients' 1 MB requests to a slow server got a proxy killed by the kernel (OOM) with the
 * heap advised for 128 MiB (`--max-old-space-size=32`) in 6 of 6 runs, 950 idle connections open or
 * none; with 16 its heap ran out (5 of 5, budgets of 6 and 12 MiB); with 24 beside a budget of 6 or
 * 8 MiB it lived (9 of 9) but peaked at 70-90 MiB, closer to the limit than 128 MiB's 100-116. In
 * 64 MiB: killed with 32 (2 of 2), out of heap with 16 (4 of 5).
 */
export const MIN_MEMORY_LIMIT = 128 * 1048576;

/**
 * What a start says of the buffer budget `budget` (`flag` names the setting) in a process
 * limited to `memory` bytes (the `memoryLimit()` the budget's default was derived from, read
 * once, so the line and the budget agree), whose V8 heap may grow to `heap` bytes: the default it derived, as
 * an info line; a budget set past half the limit (or 0, none), a heap that does not fit
 * beside the budget, or a limit below `MIN_MEMORY_LIMIT`, as a warn line - either way heavy peers would take the process past its
 * limit and the kernel would kill it (OOM), ending every request in flight, before the budget
 * sheds any. Undefined without a limit, or for a budget set that fits beside the heap.
 */
export function budgetNote(budget: number, flag: string, memory: number | undefined, heap = getHeapStatistics().heap_size_limit): { level: 'info' | 'warn'; message: string; fields: Record<string, number> } | undefined {
  if (memory === undefined) return undefined;
  const fallback = defaultBufferBudget(memory);
  const share = defaultBudgetShare(memory) ?? 'its default';
  const fields = { memory_limit: memory, budget, heap_limit: heap };
  const limit = `This process may use ${mib(memory)} (its control group's memory limit)`;
  if (budget === 0 || budget > memory / 2) {
    return {
      level: 'warn',
      message: `${limit}, and ${flag} is ${budget === 0 ? '0 (no limit)' : `${mib(budget)}, more than half of it`}: peers filling the buffers would take the process past its limit and the kernel would kill it (OOM), ending every request in flight, before the budget sheds any; lower ${flag} to ${fallback} (${defaultBudgetShare(memory, 'the limit')?.concat(', the default here') ?? 'the default'}) or raise the memory limit`,
      fields,
    };
  }
  const said = budget === fallback ? `: the buffer budget is ${mib(budget)}, ${share} (${flag} sets another)` : `: the buffer budget is ${mib(budget)} (${flag})`;
  const node = (oldSpace: number): string => `--max-old-space-size=${oldSpace} (NODE_OPTIONS=--max-old-space-size=${oldSpace} in the environment of its unit or container, with MALLOC_MMAP_THRESHOLD_=131072 so glibc gives freed large buffers back)`;
  if (memory < MIN_MEMORY_LIMIT) {
    const least = MIN_MEMORY_LIMIT;
    return {
      level: 'warn',
      message: `${limit}${said}, but below ${mib(least)} it cannot run safely: under heavy load the kernel kills it (OOM) with the heap ${mib(least)} needs, or a smaller heap runs out, ending every request in flight; raise the memory limit to ${mib(least)} or more and start Node with ${node(fittedOldSpace(least, defaultBufferBudget(least)))}`,
      fields,
    };
  }
  if (heap + budget > memory) {
    return {
      level: 'warn',
      message: `${limit}${said}, but V8's heap may grow to ${mib(heap)} (Node 20 sizes it at start, at half the limit but at least about 256 MiB): under heavy load the kernel would kill the process (OOM) before V8 collects its garbage; start Node with ${node(fittedOldSpace(memory, budget))}`,
      fields,
    };
  }
  return budget === fallback ? { level: 'info', message: `${limit}${said}`, fields } : undefined;
}

/**
 * The V8 heap one connection may be taken to need: a proxy holds about 2.5 KiB for an idle client
 * connection and 3.2 KiB for one part-way through a frame after a full collection (measured with
 * 8,000 of each on Node 20), rounded up for the garbage between collections.
 */
export const HEAP_PER_CONNECTION = 4096;

/**
 * The part of V8's heap no connection may be counted on: its young generation (three
 * semi-spaces, up to 16 MiB each on Node 20: 24 MiB with the `--max-semi-space-size=8` of
 * `cli/revproxy.js`) and the process's own state (about 8 MiB).
 */
export const HEAP_RESERVE = 48 * 1048576;

/** The fewest connections a small heap lowers a default limit to. */
export const MIN_DEFAULT_CONNECTIONS = 1024;

/**
 * The default limit on connections open at once of a process whose V8 heap may grow to `heap`
 * bytes, beside a buffer budget of `budget` bytes (0: none): `fallback` (the proxy's 20000, a
 * server's 4096), or as many as the heap holds past `HEAP_RESERVE` and the requests' half of the
 * budget at `HEAP_PER_CONNECTION` each when that is fewer (at least `MIN_DEFAULT_CONNECTIONS`).
 * The requests' half is heap too: a request read is held decoded, its text payload a string in V8's
 * heap, until it is answered. With the heap the `memory_limit` line advises for 256 MiB
 * (`--max-old-space-size=64`: 88 MiB, beside a 64 MiB budget) that is 2048, for 128 MiB (32: 56 MiB)
 * 1024: proxies with 48 and 16 died (JavaScript heap out of memory) past about 17,000 and 4,500 idle
 * connections instead of refusing the excess, and one with 64 under 10,000 idle connections and 64
 * clients' 1 MB requests to a slow server (the requests filling their half: 8,000 lived, its heap
 * full, 2,048 and 4,096 too). A limit set always wins.
 */
export function defaultMaxConnections(fallback: number, budget: number, heap = getHeapStatistics().heap_size_limit): number {
  return Math.min(fallback, Math.max(MIN_DEFAULT_CONNECTIONS, Math.floor((heap - HEAP_RESERVE - budget / 2) / HEAP_PER_CONNECTION)));
}

/**
 * What a start (and `proxy --check`) says of the limit on connections `limit` it keeps (`flag`
 * names the setting; `set`: the operator set it) when V8's heap (beside a buffer budget of `budget`
 * bytes) lowered the default below `fallback`. Undefined for a limit set, even to the number the heap gives, or one the heap did
 * not lower.
 */
export function connectionsNote(limit: number, set: boolean, fallback: number, flag: string, budget: number, heap = getHeapStatistics().heap_size_limit): { message: string; fields: Record<string, number> } | undefined {
  if (set || limit >= fallback) return undefined;
  return {
    message: `V8's heap may grow to ${mib(heap)} (--max-old-space-size): the process keeps at most ${limit} connections open at once, not ${fallback}, as many as it holds at ${HEAP_PER_CONNECTION / 1024} KiB each past ${mib(HEAP_RESERVE)} for its young generation and own state and ${mib(budget / 2)} for requests (half the buffer budget), so that a crowd of connections is refused before it fills the heap, which would end the process; ${flag} sets another, with a larger heap to hold them`,
    fields: { max_connections: limit, heap_limit: heap, budget },
  };
}
