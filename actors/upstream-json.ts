/**
 * An upstream link to an old server: one that registered over the old JSON
 * wire. Such a server parses each read as one whole object, so each of its
 * connections carries at most one request at a time; to serve many clients at
 * once the link opens more connections, up to a limit. Its setup connection
 * closed right after setup, so its presence is judged here: it is gone when
 * its listen port refuses a connection or it stops answering.
 *
 * Speaks to the proxy exactly as `upstream.ts` does: takes SEND / EXPIRE /
 * RETIRE / RESET_FAILURES, answers ACKs through `reply`, and hands every
 * request it cannot finish back to the proxy (UPSTREAM_RETRY, UPSTREAM_DOWN).
 *
 * open --(a dial refused, or too many timeouts in a row)--> down
 *   \--RETIRE--> retiring --(nothing in flight)--> retired
 */
import { assertEvent, assign, enqueueActions, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import { ErrorCode } from '../transport/errors.js';
import { MsgType, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { readyEvent } from '../transport/tls.js';
import type { Timer } from '../transport/clock.js';
import { Inflight } from './inflight.js';
import {
  errorAnswersReport, logForward, retryReport, settle, tryDeadline,
  type LinkCommand, type LinkInput, type LinkPhase, type LinkPort, type LinkReport, type ProxyRequest, type Tally,
} from './link.js';
import { OLD_SERVER_DEFAULTS, type OldServerOptions } from './proxy-options.js';

export interface UpstreamJsonInput extends LinkInput {
  old?: OldServerOptions;
}

/** One connection to the server, and the request it carries (by the link's seq), if any. */
interface Slot {
  conn: Connection;
  upSeq?: number;
  /** Answers this connection has brought. */
  served: number;
}

/**
 * What the proxy's hot path sees of this link: requests come in as SEND
 * events (this link decides per request which connection carries it).
 */
class JsonLinkPort implements LinkPort {
  phase: LinkPhase = 'connecting';
  readonly reads = -1;
  constructor(
    readonly inflight: Inflight<ProxyRequest>,
    private readonly self: { send(e: LinkCommand): void },
  ) {}

  sendOne(req: ProxyRequest): void {
    this.self.send({ type: 'SEND', requests: [req] });
  }
}

export interface UpstreamJsonContext extends LinkInput {
  traffic: JsonLinkPort;
  limits: Required<OldServerOptions>;
  slots: Map<Connection, Slot>;
  /** Dials under way. */
  dialing: number;
  /** Every request accepted and not yet finished, waiting or on a connection: one table, one deadline rule. */
  inflight: Inflight<ProxyRequest>;
  /** Requests (by seq in `inflight`) waiting for a free connection, oldest first. */
  queue: number[];
  /** Whether connections are kept for the next request (until the server is seen to close them after answering). */
  reuse: boolean;
  /** Requests already sent a second time after their connection closed under them. */
  resent: Set<number>;
  /** Whether the proxy has been told the server answers (UPSTREAM_UP). */
  up: boolean;
  /** Tries in a row that timed out on requests the server received. */
  misses: number;
  /** Failures since the last ACK (timeouts, lost connections, error answers): for the proxy's ejection. */
  consecutiveFailures: number;
  /** When the link last dialed; a PROBE is due (`probeLater`) when nothing is open. */
  lastProbe: number;
  probeLater: boolean;
  answered: number;
  /** Set when the server is judged gone; the machine then leaves `open`. */
  gone?: string;
}

/** The proxy's events are `upstream.ts`'s; the rest come from the link's own connections. */
export type UpstreamJsonEvent =
  | LinkCommand
  | { type: 'CONN_UP'; conn: Connection }
  | { type: 'CONN_ANSWERS'; conn: Connection; messages: Message[] }
  | { type: 'CONN_DOWN'; conn: Connection; connected: boolean; error: string }
  | { type: 'PROBE' };

type SocketsInput = Pick<LinkInput, 'host' | 'port' | 'connect' | 'maxFrameBytes' | 'clock' | 'tryTimeoutMs'>;

/**
 * Dials a connection for every DIAL (and one at start, to learn at once
 * whether the port answers); reports each connection's life. A dial that does
 * not connect within one try's timeout fails.
 */
const jsonSockets = fromCallback<{ type: 'DIAL' } | { type: 'PROBE_LATER'; ms: number }, SocketsInput>(({ sendBack, receive, input }) => {
  const conns = new Set<Connection>();
  let stopped = false;
  let later: Timer | undefined;
  const dial = (): void => {
    const socket = input.connect(input.host, input.port);
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'json', holdReadsWhenCongested: false });
    conns.add(conn);
    let connected = false;
    let done = false;
    const down = (error: string): void => {
      conns.delete(conn);
      connectTimer.cancel();
      if (done || stopped) return;
      done = true;
      sendBack({ type: 'CONN_DOWN', conn, connected, error });
    };
    const connectTimer = input.clock.setTimeout(() => {
      if (connected) return;
      down('connect timed out');
      conn.destroy();
    }, input.tryTimeoutMs);
    socket.once(readyEvent(socket), () => {
      connected = true;
      connectTimer.cancel();
      sendBack({ type: 'CONN_UP', conn });
    });
    conn.messages$.subscribe({
      next: (messages) => sendBack({ type: 'CONN_ANSWERS', conn, messages }),
      error: (err: NodeJS.ErrnoException) => down(err.code === 'ECONNREFUSED' ? 'connection refused' : err.message),
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
});

/** What both live states do with work and with their connections' news: act on it, then put waiting requests on free connections. */
const serving = {
  SEND: { actions: ['accept', 'dispatch'] },
  CONN_UP: { actions: ['connUp', 'dispatch'] },
  CONN_ANSWERS: { actions: ['answer', 'dispatch'] },
  CONN_DOWN: { actions: ['connDown', 'dispatch'] },
  EXPIRE: { actions: ['expire', 'dispatch'] },
  PROBE: { actions: ['probeDue', 'dispatch'] },
  RESET_FAILURES: { actions: 'resetFailures' },
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
      assertEvent(event, 'SEND');
      const now = context.clock.now();
      for (const req of event.requests) {
        context.queue.push(context.inflight.add(req, tryDeadline(context, req, now)));
      }
    },
    connUp: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_UP');
      context.slots.set(event.conn, { conn: event.conn, served: 0 });
      enqueue.assign({ dialing: context.dialing - 1, up: true });
      // A connection accepted is all an old server can show of being there (it knows no PING).
      if (!context.up) {
        context.traffic.phase = 'open';
        enqueue.sendParent({ type: 'UPSTREAM_UP', member: context.member, linkId: self.id } satisfies LinkReport);
      }
    }),
    answer: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_ANSWERS');
      const slot = context.slots.get(event.conn);
      if (!slot) return;
      const tally: Tally = { answered: 0, failures: context.consecutiveFailures };
      for (const m of event.messages) {
        if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
        const p = slot.upSeq === undefined ? undefined : context.inflight.take(slot.upSeq);
        slot.upSeq = undefined;
        slot.served++;
        if (!p) {
          context.logger.debug('late_answer', `Dropped an answer from server id ${context.member} that no request was waiting for`, { server: context.member });
          continue;
        }
        context.resent.delete(p.upSeq);
        settle(context, p.req, m, tally);
      }
      if (!context.reuse) {
        slot.conn.destroy();
        context.slots.delete(slot.conn);
      }
      enqueue.assign({ answered: context.answered + tally.answered, consecutiveFailures: tally.failures, misses: tally.answered ? 0 : context.misses });
      const report = errorAnswersReport(context.member, self.id, tally);
      if (report) enqueue.sendParent(report);
    }),
    connDown: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_DOWN');
      if (!event.connected) {
        // Any dial that fails means the listen port no longer takes connections.
        enqueue.assign({ dialing: context.dialing - 1, gone: `its listen port ${context.host}:${context.port} refuses connections (${event.error})` });
        return;
      }
      const slot = context.slots.get(event.conn);
      if (!slot) return;
      context.slots.delete(event.conn);
      if (slot.upSeq === undefined) return;
      if (slot.served > 0 && !context.resent.has(slot.upSeq)) {
        // A reused connection the server closed as the request went out: the server closes
        // its connections after answering, and never read the request. Send it again on a new
        // connection, and from now on give this server a connection per request, as the old proxy did.
        context.resent.add(slot.upSeq);
        context.queue.unshift(slot.upSeq);
        if (context.reuse) {
          context.logger.info('no_reuse', `Server id ${context.member} closes its connections after answering: one connection per request from now on`, { server: context.member });
        }
        enqueue.assign({ reuse: false });
        return;
      }
      const p = context.inflight.take(slot.upSeq);
      context.resent.delete(slot.upSeq);
      if (!p) return;
      const failures = context.consecutiveFailures + 1;
      enqueue.assign({ consecutiveFailures: failures });
      enqueue.sendParent(retryReport(context.member, self.id, [p.req], { code: ErrorCode.UPSTREAM_FAILED, message: `server ${context.member} failed before answering: ${event.error}` }, failures));
    }),
    expire: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'EXPIRE');
      const expired = context.inflight.takeExpired(event.now);
      if (expired.length === 0) return;
      let misses = context.misses;
      let onWire = 0;
      for (const p of expired) {
        context.resent.delete(p.upSeq);
        const waiting = context.queue.indexOf(p.upSeq);
        if (waiting >= 0) {
          context.queue.splice(waiting, 1);
          continue;
        }
        misses++;
        onWire++;
        // A late answer on this connection would be taken for the next request's: close it.
        for (const slot of context.slots.values()) {
          if (slot.upSeq !== p.upSeq) continue;
          slot.conn.destroy();
          context.slots.delete(slot.conn);
        }
      }
      // Only tries the server received count against it; ones that waited for a connection did not reach it.
      const failures = context.consecutiveFailures + onWire;
      const gone = misses >= context.limits.missesToLeave ? `it stopped answering (${misses} tries in a row timed out)` : undefined;
      enqueue.assign({ misses, consecutiveFailures: failures, gone });
      enqueue.sendParent(retryReport(context.member, self.id, expired.map((p) => p.req), { code: ErrorCode.TIMEOUT, message: `server ${context.member} did not answer within ${context.tryTimeoutMs} ms` }, failures));
    }),
    resetFailures: assign({ consecutiveFailures: 0 }),
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
      // once per try timeout) later - a dial can land just before a dying server's port closes.
      const now = context.clock.now();
      if (dials <= 0 && context.slots.size === 0 && context.dialing === 0) {
        const wait = context.lastProbe + context.tryTimeoutMs - now;
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
    /** The server is gone: every unfinished request goes back to the proxy with the reason. */
    notifyDown: sendParent(({ context, self }) => {
      context.queue.length = 0;
      context.resent.clear();
      context.traffic.phase = 'down';
      return {
        type: 'UPSTREAM_DOWN' as const,
        member: context.member,
        linkId: self.id,
        failure: { code: ErrorCode.UPSTREAM_FAILED, message: context.gone ?? 'link closed' },
        requests: context.inflight.takeAll().map((p) => p.req),
      } satisfies LinkReport;
    }),
    /** Gone while retiring: unfinished requests go back to be routed elsewhere. */
    returnAll: enqueueActions(({ context, enqueue, self }) => {
      const requests = context.inflight.takeAll().map((p) => p.req);
      context.queue.length = 0;
      if (requests.length === 0) return;
      enqueue.sendParent(retryReport(context.member, self.id, requests, { code: ErrorCode.UPSTREAM_FAILED, message: `server ${context.member} left before answering` }, 0));
    }),
  },
  guards: {
    idle: ({ context }) => context.inflight.size === 0,
    gone: ({ context }) => context.gone !== undefined,
  },
}).createMachine({
  id: 'upstreamJson',
  context: ({ input, self }) => {
    const inflight = new Inflight<ProxyRequest>(input.busy, self);
    return {
    ...input,
    traffic: new JsonLinkPort(inflight, self),
    limits: { ...OLD_SERVER_DEFAULTS, ...input.old },
    slots: new Map(),
    dialing: 1, // the socket actor dials once at start
    inflight,
    queue: [],
    reuse: true,
    resent: new Set(),
    up: false,
    misses: 0,
    consecutiveFailures: 0,
    lastProbe: -Infinity,
    probeLater: false,
    answered: 0,
    };
  },
  invoke: {
    id: 'sockets',
    src: 'jsonSockets',
    input: ({ context }) => ({
      host: context.host, port: context.port, connect: context.connect, maxFrameBytes: context.maxFrameBytes, clock: context.clock, tryTimeoutMs: context.tryTimeoutMs,
    }),
  },
  initial: 'open',
  states: {
    open: {
      always: { guard: 'gone', target: 'down' },
      on: {
        ...serving,
        RETIRE: [{ guard: 'idle', target: 'retired' }, { target: 'retiring' }],
      },
    },
    retiring: {
      entry: ({ context }) => {
        context.traffic.phase = 'retiring';
      },
      always: [
        { guard: 'gone', target: 'retired', actions: 'returnAll' },
        { guard: 'idle', target: 'retired' },
      ],
      on: serving,
    },
    down: { type: 'final', entry: 'notifyDown' },
    retired: {
      type: 'final',
      entry: ({ context }) => {
        context.traffic.phase = 'retired';
      },
    },
  },
});

function write(context: UpstreamJsonContext, slot: Slot, upSeq: number): void {
  const p = context.inflight.peek(upSeq);
  if (!p) return;
  slot.upSeq = upSeq;
  if (context.logger.enabled('info')) logForward(context, p.req);
  slot.conn.send(p.req.msg, upSeq);
}

export type UpstreamJsonRef = ActorRefFrom<typeof upstreamJsonMachine>;
