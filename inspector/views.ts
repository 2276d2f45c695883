/**
 * What the page shows of a live system, read from actor snapshots at flush
 * time (never on the hot path): pools with their members in rotation order,
 * in-flight counts.
 *
 * A member's card is `MemberView`, made in one place (`memberView`) from the
 * proxy's `Member`; the page lists its fields from one table (`MEMBER_FIELDS`
 * in page/app.js). A new field is one line in each.
 */
import { pick } from '../actors/pool.js';
import type { Member, MemberSource, ProxyContext } from '../actors/proxy-types.js';
import { budgetRules, unavailable, type Unavailable } from '../actors/routing.js';
import type { ConnView } from './sanitise.js';
import { hostPort } from '../transport/address.js';

/**
 * One member of a pool. `state` is the proxy's state of that server
 * (`serving`, `connecting`, `down`, `refused`, `ejected`, `drained`), or `gone` once it
 * left. Times are epoch ms, so a view stays the same while nothing changes.
 */
export interface MemberView {
  id: string;
  state: string;
  answered: number;
  errors: number;
  /** Why it left (gone members only). */
  reason?: string;
  /** Where the proxy reaches it: `host:port`. */
  address?: string;
  /** `json` for an old server (one request per connection). */
  wire?: string;
  /** Where it came from: `direct` (a registration connection), `registry` (an entry in etcd), `unlisted` (its entry gone with its lease, kept while its link answers). */
  source?: MemberSource;
  /** Requests sent to it and not answered yet. */
  inflight?: number;
  /** Latency of its recent answers (ms): request in to answer out, over the last 5 to 10 s. */
  p50?: number;
  p99?: number;
  /** In `state` since (as the inspector first saw it there). */
  since?: number;
  /** Why the pool would pass it over now (routing.ts `unavailable`); none when it may take the next request. */
  why?: Unavailable;
  /** When its oldest unanswered request was sent (a silent member's: how long it has not answered). */
  oldestAt?: number;
  /** Ejected: the failures in a row that ejected it and the last one's code (the eject line's own figure). */
  ejectedFor?: { failures: number; code: string };
  /** Its last failed try, and how many in a row its link had counted then. */
  lastError?: { code: string; message: string; at: number; inARow: number };
  /** The last check of its link: connecting and its first PING, or a probe. */
  lastCheck?: { at: number; ok: boolean; message: string };
  /** Ejected: when it is put back; down: when it is probed next. */
  backAt?: number;
  /** PINGs on its registration connection still unanswered when the next was due (the one just sent is not missed yet). */
  missedPings?: number;
}

export interface PoolView {
  policy: string;
  /** The pool machine's state: `empty` or `serving`. */
  state: string;
  /** Members in rotation order. */
  members: MemberView[];
  /** Index into `members` of where the round-robin cursor stands (may equal members.length at the end of a round). */
  cursor: number;
  /** The member the next request goes to: the first from the cursor that the pool's own `eligible` accepts; none when no member can take one now. */
  next?: string;
  routed: number;
  /** Members that left, newest first (bounded). */
  gone: MemberView[];
  /** The session id of the proxy that owns the pool (actions name it). */
  proxy?: string;
  /**
   * The pool actor's session id: which pool this is (`poolKey`). A process running several proxies
   * (`revproxy scenario A.yaml B.yaml`) has a pool of the same policy in each; keyed by policy, they
   * were one card. None in logs recorded before it.
   */
  sid?: string;
  /** Its proxy stopped (epoch ms): the pool as last seen, kept while the inspector keeps its actor. */
  stoppedAt?: number;
  /** Requests waiting in the policy's queue for a member with room, where known: the proxy's own `/metrics`, and a live proxy's pools in the inspector. */
  waiting?: number;
  /** A live proxy's retries of failed tries over the last 10 s and what its retry budget allows (`retry_budget`, `min_retry_rate`), while it made any. */
  retries?: { made: number; allowed: number };
}

export interface Figures {
  /** Answers per second over the last second. */
  rps: number;
  p50?: number;
  p99?: number;
  inflight: number;
  answered: number;
  errors: number;
}

/** A member's answers and errors, and the latency of its recent answers (ms). */
export interface Tally {
  answered: number;
  errors: number;
  p50?: number;
  p99?: number;
}

/** The parts of a pool's context the view reads. */
interface PoolContextLike {
  policy: string;
  members: readonly string[];
  cursor: number;
  routed?: number;
  eligible?: (id: string, req: unknown) => boolean;
}

/** What a pool's view is made from. */
export interface PoolSource {
  /** The pool machine's state value. */
  value: unknown;
  ctx: PoolContextLike;
  /** The pool actor's session id. */
  sid?: string;
  /** The context of the proxy that owns the pool (its members), when live. */
  proxy?: ProxyContext;
  proxySid?: string;
  tally(policy: string, member: string): Tally | undefined;
  /** Members that left (and why), oldest first, so they show as gone. */
  left: ReadonlyMap<string, string>;
  /** The proxy's clock time as epoch ms. */
  toEpoch(t: number): number;
  /** When the member entered `state`, epoch ms (the hub remembers). */
  since(member: string, state: string): number | undefined;
}

const MAX_GONE = 8;

/** A pool as the page shows it. */
export function poolView(src: PoolSource): PoolView {
  const { ctx, proxy } = src;
  const counts = (id: string): MemberView => {
    const t = src.tally(ctx.policy, id);
    return { id, state: 'serving', answered: t?.answered ?? 0, errors: t?.errors ?? 0, p50: t?.p50, p99: t?.p99 };
  };
  const members = ctx.members.map((id) => {
    const entry = proxy?.servers.get(id);
    const view = entry && proxy ? memberView(counts(id), entry, proxy, src.toEpoch) : counts(id);
    view.since = src.since(id, view.state);
    return view;
  });
  const gone: MemberView[] = [];
  for (const [id, reason] of src.left) if (!ctx.members.includes(id)) gone.unshift({ ...counts(id), state: 'gone', reason });
  // The pool's own rule, from its cursor: the member a request with no tries yet goes to.
  const next = ctx.eligible ? pick(ctx, ctx.eligible, {}).member : members[ctx.cursor >= members.length ? 0 : ctx.cursor]?.id;
  const view: PoolView = { policy: ctx.policy, state: String(src.value), members, cursor: ctx.cursor, next, routed: ctx.routed ?? 0, gone: gone.slice(0, MAX_GONE), proxy: src.proxySid, sid: src.sid };
  const policy = proxy?.policies.get(ctx.policy);
  if (proxy && policy) {
    view.waiting = policy.waiting.length;
    const budget = policy.retryBudget.state(proxy.clock.now(), budgetRules(proxy));
    if (budget.retries > 0) view.retries = { made: budget.retries, allowed: budget.allowed };
  }
  return view;
}

/** One member's card: `base` (its id and counts) with what the proxy knows of it. */
export function memberView(base: MemberView, entry: Member, proxy: ProxyContext, toEpoch: (t: number) => number): MemberView {
  const v: MemberView = { ...base, state: entry.state, address: hostPort(entry.host, entry.port), source: entry.shownSource };
  if (entry.wire === 'json') v.wire = 'json';
  const inflight = entry.traffic.inflight;
  v.inflight = inflight.size;
  v.why = unavailable(proxy, entry);
  const oldest = inflight.size ? inflight.oldestSentAt() : undefined;
  if (oldest !== undefined) v.oldestAt = toEpoch(oldest);
  if (entry.ejected && entry.ejectedFor) v.ejectedFor = entry.ejectedFor;
  const f = entry.lastFailure;
  if (f) v.lastError = { code: f.code, message: f.message, at: toEpoch(f.at), inARow: f.inARow };
  const c = entry.lastCheck;
  if (c) v.lastCheck = { at: toEpoch(c.at), ok: c.ok, message: c.message };
  if ((entry.ejected || entry.traffic.phase === 'down') && entry.timerDue !== undefined) v.backAt = toEpoch(entry.timerDue);
  // The pinger counts a PING as it sends it, and the inspector reads the pools on a timer of the
  // same period: counted so, every member of a healthy fleet showed one unanswered PING on and
  // off, and every pool changed at each round of PINGs (the page was sent all of them again).
  const missed = (entry.registration?.missedPings ?? 0) - 1;
  if (missed > 0 && Number.isFinite(missed)) v.missedPings = missed;
  return v;
}

/** Requests the proxy has accepted and not yet answered (its own count: actors/inflight.ts InflightCount). */
export function proxyInflight(ctx: { inflight?: { size: number } }): number {
  return ctx.inflight?.size ?? 0;
}

export interface ConnsView {
  open: ConnView[];
  closed: ConnView[];
}

/** Which pool a view is: its pool actor, or in a log recorded before views named it, its policy (`gone` named policies then). */
export function poolKey(p: PoolView): string {
  return p.sid ?? p.policy;
}

/** Pools in the order the page lists them: by policy, then by proxy. */
export function byPolicy(a: PoolView, b: PoolView): number {
  return a.policy.localeCompare(b.policy) || (a.proxy ?? '').localeCompare(b.proxy ?? '');
}

/** `pools` with those `changed` put in and those `gone` (their `poolKey`s) taken out, ordered as the hub lists them. */
export function mergePools(pools: readonly PoolView[], changed: readonly PoolView[], gone: readonly string[]): PoolView[] {
  const byKey = new Map(pools.map((p) => [poolKey(p), p]));
  for (const p of changed) byKey.set(poolKey(p), p);
  for (const key of gone) byKey.delete(key);
  return [...byKey.values()].sort(byPolicy);
}
