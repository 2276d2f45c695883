/**
 * What the page shows of a live system, read from actor snapshots at flush
 * time (never on the hot path): pools with their members in rotation order,
 * in-flight counts.
 */
import type { ConnView } from './sanitise.js';

/** One member of a pool. `state` is the proxy's state of that server (`serving`, `connecting`, `down`, `ejected`, `draining`...), or `gone` once it left. */
export interface MemberView {
  id: string;
  state: string;
  answered: number;
  errors: number;
  /** Why it left (gone members only). */
  reason?: string;
}

export interface PoolView {
  policy: string;
  /** The pool machine's state: `empty` or `serving`. */
  state: string;
  /** Members in rotation order. */
  members: MemberView[];
  /** Index into `members` of the one that gets the next request (may equal members.length at the end of a round). */
  cursor: number;
  /** The member that gets the next request. */
  next?: string;
  routed: number;
  /** Members that left, newest first (bounded). */
  gone: MemberView[];
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

export interface Tally {
  answered: number;
  errors: number;
}

/** The parts of a pool's context the view reads. */
interface PoolContextLike {
  policy: string;
  members: readonly string[];
  cursor: number;
  routed?: number;
}

const MAX_GONE = 8;

/**
 * A pool as the page shows it. `stateOf` gives each member's state as the
 * proxy keeps it; `left` holds the members that left (and why), oldest
 * first, so they show as gone.
 */
export function poolView(
  value: unknown,
  ctx: PoolContextLike,
  tally: (policy: string, member: string) => Tally | undefined,
  left: ReadonlyMap<string, string>,
  stateOf: (member: string) => string = () => 'serving',
): PoolView {
  const counts = (id: string): Tally => {
    const t = tally(ctx.policy, id);
    return { answered: t?.answered ?? 0, errors: t?.errors ?? 0 };
  };
  const members = ctx.members.map((id) => ({ id, state: stateOf(id), ...counts(id) }));
  const gone: MemberView[] = [];
  for (const [id, reason] of left) if (!ctx.members.includes(id)) gone.unshift({ id, state: 'gone', ...counts(id), reason });
  const n = members.length;
  const next = n ? members[ctx.cursor >= n ? 0 : ctx.cursor]!.id : undefined;
  return { policy: ctx.policy, state: String(value), members, cursor: ctx.cursor, next, routed: ctx.routed ?? 0, gone: gone.slice(0, MAX_GONE) };
}

/** Requests the proxy has accepted and not yet answered (its own count: actors/inflight.ts InflightCount). */
export function proxyInflight(ctx: { inflight?: { size: number } }): number {
  return ctx.inflight?.size ?? 0;
}

/** A member's state as a proxy keeps it (its `servers` table), for the pool view. */
export function memberStateIn(proxyContext: unknown): (member: string) => string {
  const servers = (proxyContext as { servers?: Map<string, { state?: string }> } | undefined)?.servers;
  return (member) => servers?.get(member)?.state ?? 'serving';
}

export interface ConnsView {
  open: ConnView[];
  closed: ConnView[];
}
