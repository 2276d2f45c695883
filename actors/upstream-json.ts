/**
 * An upstream link to an old server: one that registered over the old JSON
 * wire. Such a server parses each read as one whole object, so each of its
 * connections carries at most one request at a time; to serve many clients at
 * once the link opens more connections, up to a limit. Its setup connection
 * closed right after setup, so its presence is judged here: it leaves (the
 * parent is told UPSTREAM_DOWN, as with `upstream.ts`) when its listen port
 * refuses a connection or it stops answering.
 *
 * Accepts the same events as `upstream.ts` (SEND / EXPIRE / RETIRE):
 *
 * open --(a dial refused, or too many timeouts in a row)--> down
 *   \--RETIRE--> retiring --(nothing in flight)--> retired
 */
import { assign, enqueueActions, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import { ErrorCode } from '../transport/errors.js';
import { errorMsg, MsgType, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import type { Timer } from './clock.js';
import { Inflight } from './inflight.js';
import type { ProxyRequest, UpstreamEvent, UpstreamInput } from './upstream.js';

/** How the proxy treats servers of the old JSON wire. */
export interface OldServerOptions {
  /** Connections opened to one old server at most (each carries one request at a time). Default 8. */
  connections?: number;
  /** Requests in a row that time out before the server is taken out of its pool. Default 3. */
  missesToLeave?: number;
}

export const OLD_SERVER_DEFAULTS: Required<OldServerOptions> = { connections: 8, missesToLeave: 3 };

export interface UpstreamJsonInput extends UpstreamInput {
  old?: OldServerOptions;
}

/** One connection to the server, and the request it carries (by the link's seq), if any. */
interface Slot {
  conn: Connection;
  upSeq?: number;
  /** Answers this connection has brought. */
  served: number;
}

export interface UpstreamJsonContext extends UpstreamInput {
  limits: Required<OldServerOptions>;
  slots: Map<Connection, Slot>;
  /** Dials under way. */
  dialing: number;
  /** Every request accepted and not yet answered, waiting or on a connection: one table, one deadline rule. */
  inflight: Inflight<ProxyRequest>;
  /** Requests (by seq in `inflight`) waiting for a free connection, oldest first. */
  queue: number[];
  /** Whether connections are kept for the next request (until the server is seen to close them after answering). */
  reuse: boolean;
  /** Requests already sent a second time after their connection closed under them. */
  resent: Set<number>;
  /** Timeouts in a row on requests the server received. */
  misses: number;
  /** When the link last dialed; a PROBE is due (`probeLater`) when nothing is open. */
  lastProbe: number;
  probeLater: boolean;
  answered: number;
  failed: number;
  /** Set when the server is judged gone; the machine then leaves `open`. */
  gone?: string;
}

/** The proxy's events are `upstream.ts`'s; the rest come from the link's own connections. */
export type UpstreamJsonEvent =
  | Extract<UpstreamEvent, { type: 'SEND' | 'EXPIRE' | 'RETIRE' }>
  | { type: 'CONN_UP'; conn: Connection }
  | { type: 'CONN_ANSWERS'; conn: Connection; messages: Message[] }
  | { type: 'CONN_DOWN'; conn: Connection; connected: boolean; error: string }
  | { type: 'PROBE' };

/** Dials a connection for every DIAL (and one at start, to learn at once whether the port answers); reports each connection's life. */
const jsonSockets = fromCallback<
  { type: 'DIAL' } | { type: 'PROBE_LATER'; ms: number },
  Pick<UpstreamInput, 'host' | 'port' | 'connect' | 'maxFrameBytes' | 'clock'>
>(
  ({ sendBack, receive, input }) => {
    const conns = new Set<Connection>();
    let stopped = false;
    let later: Timer | undefined;
    const dial = (): void => {
      const socket = input.connect(input.host, input.port);
      const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'json' });
      conn.role = 'upstream';
      conns.add(conn);
      let connected = false;
      let done = false;
      const down = (error: string): void => {
        conns.delete(conn);
        if (done || stopped) return;
        done = true;
        sendBack({ type: 'CONN_DOWN', conn, connected, error });
      };
      socket.once('connect', () => {
        connected = true;
        sendBack({ type: 'CONN_UP', conn });
      });
      conn.messages$.subscribe({
        next: (messages) => sendBack({ type: 'CONN_ANSWERS', conn, messages }),
        error: (err: Error) => down(err.message),
        complete: () => down(connected ? 'connection closed by the server' : 'connection closed before it was established'),
      });
    };
    receive((ev) => {
      if (ev.type === 'DIAL') dial();
      else later = input.clock.setTimeout(() => sendBack({ type: 'PROBE' }), ev.ms);
    });
    dial();
    return () => {
      stopped = true;
      later?.cancel();
      for (const c of conns) c.destroy();
    };
  },
);

/** What both live states do with work and with their connections' news: act on it, then put waiting requests on free connections. */
const serving = {
  SEND: { actions: ['accept', 'dispatch'] },
  CONN_UP: { actions: ['connUp', 'dispatch'] },
  CONN_ANSWERS: { actions: ['answer', 'dispatch'] },
  CONN_DOWN: { actions: ['connDown', 'dispatch'] },
  EXPIRE: { actions: ['expire', 'dispatch'] },
  PROBE: { actions: ['probeDue', 'dispatch'] },
} as const;

export const upstreamJsonMachine = setup({
  types: {
    context: {} as UpstreamJsonContext,
    events: {} as UpstreamJsonEvent,
    input: {} as UpstreamJsonInput,
  },
  actors: { jsonSockets },
  actions: {
    accept: ({ context, event }) => {
      if (event.type !== 'SEND') return;
      for (const req of event.requests) context.queue.push(context.inflight.add(req, req.arrived + context.timeoutMs));
    },
    connUp: assign(({ context, event }) => {
      if (event.type !== 'CONN_UP') return {};
      context.slots.set(event.conn, { conn: event.conn, served: 0 });
      return { dialing: context.dialing - 1 };
    }),
    answer: assign(({ context, event }) => {
      if (event.type !== 'CONN_ANSWERS') return {};
      const slot = context.slots.get(event.conn);
      if (!slot) return {};
      let answered = 0;
      for (const m of event.messages) {
        if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
        const p = slot.upSeq === undefined ? undefined : context.inflight.take(slot.upSeq);
        if (p) context.resent.delete(p.upSeq);
        slot.upSeq = undefined;
        slot.served++;
        if (!p) {
          context.logger.debug('late_answer', `Dropped an answer from server id ${context.member} that no request was waiting for`, { server: context.member });
          continue;
        }
        if (m.type === MsgType.ACK) {
          context.logger.info('ack', `Received a data message from server id ${context.member} payload ${m.payload}`, {
            server: context.member, client: m.destid, payload: m.payload,
          });
        }
        context.reply(p.req, m, context.member);
        answered++;
      }
      if (!context.reuse) {
        slot.conn.destroy();
        context.slots.delete(slot.conn);
      }
      return { answered: context.answered + answered, misses: answered ? 0 : context.misses };
    }),
    connDown: assign(({ context, event }) => {
      if (event.type !== 'CONN_DOWN') return {};
      if (!event.connected) {
        // Any dial that fails means the listen port no longer takes connections.
        return { dialing: context.dialing - 1, gone: `its listen port refuses connections (${event.error})` };
      }
      const slot = context.slots.get(event.conn);
      if (!slot) return {};
      context.slots.delete(event.conn);
      if (slot.upSeq === undefined) return {};
      if (slot.served > 0 && !context.resent.has(slot.upSeq)) {
        // A reused connection the server closed as the request went out: the server closes
        // its connections after answering, and never read the request. Send it again on a new
        // connection, and from now on give this server a connection per request, as the old proxy did.
        context.resent.add(slot.upSeq);
        context.queue.unshift(slot.upSeq);
        if (context.reuse) {
          context.logger.info('no_reuse', `Server id ${context.member} closes its connections after answering: one connection per request from now on`, { server: context.member });
        }
        return { reuse: false };
      }
      const p = context.inflight.take(slot.upSeq);
      context.resent.delete(slot.upSeq);
      if (!p) return {};
      context.reply(p.req, errorMsg(ErrorCode.UPSTREAM_FAILED, `server ${context.member} failed before answering: ${event.error}`), context.member);
      return { failed: context.failed + 1 };
    }),
    expire: assign(({ context, event }) => {
      if (event.type !== 'EXPIRE') return {};
      let misses = context.misses;
      for (const p of context.inflight.takeExpired(event.now)) {
        context.resent.delete(p.upSeq);
        const waiting = context.queue.indexOf(p.upSeq);
        if (waiting >= 0) context.queue.splice(waiting, 1);
        else {
          misses++;
          // A late answer on this connection would be taken for the next request's: close it.
          for (const slot of context.slots.values()) {
            if (slot.upSeq !== p.upSeq) continue;
            slot.conn.destroy();
            context.slots.delete(slot.conn);
          }
        }
        context.logger.warn('timeout', `No answer from server id ${context.member} within ${context.timeoutMs} ms for client ${p.req.msg.srcid}`, {
          server: context.member, client: p.req.msg.srcid, code: ErrorCode.TIMEOUT,
        });
        context.reply(p.req, errorMsg(ErrorCode.TIMEOUT, `server ${context.member} did not answer within ${context.timeoutMs} ms`), context.member);
      }
      const gone = misses >= context.limits.missesToLeave ? `it stopped answering (${misses} requests in a row timed out)` : undefined;
      return { misses, gone };
    }),
    probeDue: assign({ probeLater: false }),
    /** Put waiting requests on idle connections; dial more, up to the limit, for the rest. */
    dispatch: enqueueActions(({ context, enqueue }) => {
      if (context.gone) return;
      for (const slot of context.slots.values()) {
        if (context.queue.length === 0) break;
        if (slot.upSeq === undefined) write(context, slot, context.queue.shift()!);
      }
      let dials = Math.min(context.queue.length - context.dialing, context.limits.connections - context.slots.size - context.dialing);
      // With nothing open any more, check that the port still answers: at once, or (at most
      // once per timeout) later - a dial can land just before a dying server's port closes.
      const now = context.clock.now();
      if (dials <= 0 && context.slots.size === 0 && context.dialing === 0) {
        const wait = context.lastProbe + context.timeoutMs - now;
        if (wait <= 0) dials = 1;
        else if (!context.probeLater) {
          enqueue.sendTo('sockets', { type: 'PROBE_LATER', ms: wait });
          enqueue.assign({ probeLater: true });
        }
      }
      if (dials <= 0) return;
      for (let i = 0; i < dials; i++) enqueue.sendTo('sockets', { type: 'DIAL' });
      enqueue.assign({ dialing: context.dialing + dials, lastProbe: now });
    }),
    failAll: assign(({ context }) => {
      const why = context.gone ?? 'link closed';
      const all = context.inflight.takeAll();
      context.queue.length = 0;
      context.resent.clear();
      for (const p of all) {
        context.reply(p.req, errorMsg(ErrorCode.UPSTREAM_FAILED, `server ${context.member} failed before answering: ${why}`), context.member);
      }
      return { failed: context.failed + all.length };
    }),
    notifyDown: sendParent(({ context, self }) => ({
      type: 'UPSTREAM_DOWN' as const,
      member: context.member,
      linkId: self.id,
      error: context.gone ?? 'unknown',
    })),
  },
  guards: {
    idle: ({ context }) => context.inflight.size === 0,
    gone: ({ context }) => context.gone !== undefined,
  },
}).createMachine({
  id: 'upstreamJson',
  context: ({ input, self }) => ({
    ...input,
    limits: { ...OLD_SERVER_DEFAULTS, ...input.old },
    slots: new Map(),
    dialing: 1, // the socket actor dials once at start
    inflight: new Inflight<ProxyRequest>(input.busy, self),
    queue: [],
    resent: new Set(),
    reuse: true,
    misses: 0,
    lastProbe: -Infinity,
    probeLater: false,
    answered: 0,
    failed: 0,
  }),
  invoke: {
    id: 'sockets',
    src: 'jsonSockets',
    input: ({ context }) => ({ host: context.host, port: context.port, connect: context.connect, maxFrameBytes: context.maxFrameBytes, clock: context.clock }),
  },
  initial: 'open',
  states: {
    open: {
      always: { guard: 'gone', target: 'down', actions: ['failAll', 'notifyDown'] },
      on: {
        ...serving,
        RETIRE: [{ guard: 'idle', target: 'retired' }, { target: 'retiring' }],
      },
    },
    retiring: {
      always: [
        { guard: 'gone', target: 'retired', actions: 'failAll' },
        { guard: 'idle', target: 'retired' },
      ],
      on: serving,
    },
    down: { type: 'final' },
    retired: { type: 'final' },
  },
});

function write(context: UpstreamJsonContext, slot: Slot, upSeq: number): void {
  const p = context.inflight.peek(upSeq);
  if (!p) return;
  slot.upSeq = upSeq;
  const req = p.req;
  if (context.logger.enabled('info')) {
    context.logger.info('forward', `Forwarding a data message to server id ${context.member} from client ${req.msg.srcid} payload ${req.msg.payload}`, {
      server: context.member, client: req.msg.srcid, policy: context.policy, payload: req.msg.payload,
    });
  }
  slot.conn.send(req.msg);
}

export type UpstreamJsonRef = ActorRefFrom<typeof upstreamJsonMachine>;
