/**
 * A policy pool: the round-robin cursor machine. Members are kept in
 * registration order; one cursor per policy, shared by every client.
 *
 * States: `empty` (requests are refused with NO_SERVER) and `serving`.
 * Events: JOIN (appended), LEAVE (the rotation stays fair), ROUTE (a batch of
 * requests, each handed to the next member in turn; one event per batch, not per request).
 */
import { assertEvent, assign, setup } from 'xstate';

/** The cursor as plain data, so the rotation rules can be tested on their own. */
export interface Rotation {
  members: readonly string[];
  /**
   * Index of the member that gets the next request; equal to
   * `members.length` at the end of a round, so a member that joins then is
   * served next rather than after the first member again.
   */
  cursor: number;
}

export const emptyRotation: Rotation = { members: [], cursor: 0 };

/** A member that joins goes to the end of the rotation. Joining twice changes nothing. */
export function join(r: Rotation, id: string): Rotation {
  if (r.members.includes(id)) return r;
  return { members: [...r.members, id], cursor: r.cursor };
}

/**
 * A member that leaves: whoever was next stays next, so nobody is skipped and
 * nobody is served twice in a row because of the removal (except when one
 * member is left, which then serves every request).
 */
export function leave(r: Rotation, id: string): Rotation {
  const i = r.members.indexOf(id);
  if (i < 0) return r;
  const members = r.members.filter((m) => m !== id);
  const cursor = i < r.cursor ? r.cursor - 1 : r.cursor;
  return { members, cursor: Math.min(cursor, members.length) };
}

/**
 * Pick the next member that `eligible` accepts, starting at the cursor.
 * Returns the member (or undefined when none is eligible) and the new cursor.
 */
export function pick<R>(r: Rotation, eligible?: (id: string, req?: R) => boolean, req?: R): { member: string | undefined; cursor: number } {
  const i = pickIndex(r.members, r.cursor, eligible, req);
  return i < 0 ? { member: undefined, cursor: r.cursor } : { member: r.members[i], cursor: i + 1 };
}

/** `pick` without allocating: the index of the member picked, or -1. The new cursor is that index + 1. */
function pickIndex<R>(members: readonly string[], cursor: number, eligible?: (id: string, req?: R) => boolean, req?: R): number {
  const n = members.length;
  let i = cursor >= n ? 0 : cursor;
  for (let k = 0; k < n; k++) {
    if (!eligible || eligible(members[i]!, req)) return i;
    if (++i === n) i = 0;
  }
  return -1;
}

/** Hands one routed request to the member picked for it; `now` is the batch's clock reading, when its sender gave one. */
export type Deliver<R> = (member: string, req: R, now?: number) => void;

export interface PoolInput<R = unknown> {
  policy: string;
  /**
   * Called once per request, in turn, as the cursor moves: the cost of a
   * batch is the same with 4 members as with 10,000 (nothing is grouped by member).
   */
  deliver: Deliver<R>;
  /** Requests no member can take now (the pool is empty, or none is eligible): once per batch, in order. */
  unrouted: (requests: R[]) => void;
  /**
   * Whether a member may take this request now (for example: not ejected,
   * not at its in-flight limit, not already tried for this request).
   */
  eligible?: (id: string, req: R) => boolean;
}

export interface PoolContext<R = unknown> extends Rotation {
  policy: string;
  deliver: Deliver<R>;
  unrouted: (requests: R[]) => void;
  eligible?: (id: string, req: R) => boolean;
  routed: number;
}

export type PoolEvent<R = unknown> =
  | { type: 'JOIN'; id: string }
  | { type: 'LEAVE'; id: string; reason?: string }
  /** `now`: when the batch was routed (one clock reading for all of it), handed to `deliver` with each request. */
  | { type: 'ROUTE'; requests: R[]; now?: number };

export const poolMachine = setup({
  types: {
    context: {} as PoolContext,
    events: {} as PoolEvent,
    input: {} as PoolInput,
  },
  actions: {
    join: assign(({ context, event }) => {
      assertEvent(event, 'JOIN');
      return join(context, event.id);
    }),
    leave: assign(({ context, event }) => {
      assertEvent(event, 'LEAVE');
      return leave(context, event.id);
    }),
    refuse: ({ context, event }) => {
      assertEvent(event, 'ROUTE');
      context.unrouted(event.requests);
    },
    /**
     * The hot path: one event per batch. The cursor and the count are updated
     * in place rather than by `assign`, which would copy the context for every
     * batch; they belong to this machine alone, and every snapshot shows their
     * current values.
     */
    route: ({ context, event }) => {
      assertEvent(event, 'ROUTE');
      const { members, eligible, deliver } = context;
      const { requests, now } = event;
      let cursor = context.cursor;
      let unrouted: unknown[] | undefined;
      for (let k = 0; k < requests.length; k++) {
        const req = requests[k];
        const i = pickIndex(members, cursor, eligible, req);
        if (i < 0) {
          (unrouted ??= []).push(req);
          continue;
        }
        cursor = i + 1;
        deliver(members[i]!, req, now);
      }
      context.cursor = cursor;
      context.routed += requests.length;
      if (unrouted) context.unrouted(unrouted);
    },
  },
  guards: {
    isLastMember: ({ context, event }) => {
      assertEvent(event, 'LEAVE');
      return context.members.length === 1 && context.members[0] === event.id;
    },
  },
}).createMachine({
  id: 'pool',
  context: ({ input }) => ({
    policy: input.policy,
    deliver: input.deliver,
    unrouted: input.unrouted,
    eligible: input.eligible,
    members: [],
    cursor: 0,
    routed: 0,
  }),
  initial: 'empty',
  states: {
    empty: {
      on: {
        JOIN: { target: 'serving', actions: 'join' },
        ROUTE: { actions: 'refuse' },
      },
    },
    serving: {
      on: {
        JOIN: { actions: 'join' },
        LEAVE: [{ guard: 'isLastMember', target: 'empty', actions: 'leave' }, { actions: 'leave' }],
        ROUTE: { actions: 'route' },
      },
    },
  },
});
