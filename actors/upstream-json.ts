/**
 * An upstream link to an old server: one that registered over the old JSON
 * wire. The old system's server (shantoroy/reverse_proxy server.py, and
 * spec/fixtures/old_server.py after it) shapes every rule here:
 *
 * - It sends its setup before it listens: a dial refused in the first
 *   `registrationWindowMs` after registration is retried with backoff.
 * - It parses each read as one whole object, and one bad read breaks it for
 *   good: each connection carries one whole request per write, at most one at
 *   a time, and no request over what it reads at once (OLD_READ_BYTES).
 * - Many serve one connection at a time, holding a lock until the proxy closes
 *   that connection; a reset (RST) of a connection it has not read yet also
 *   breaks it for good. So the link starts with one connection, and opens
 *   another only as a trial (with a request on it) when requests are waiting;
 *   the server shows it answers two at once by answering on the second while
 *   the first, already answered, is open. If instead the first keeps being
 *   answered while the trial waits, the link closes the first (which lets a
 *   one-at-a-time server go on to the trial) and tries again later, with
 *   backoff. Every connection the link closes is closed gently (FIN, then the
 *   server's close is awaited), never reset while the server may read it; once
 *   the server has closed its side, a reset ends ours (`Connection.resetAfterPeerEnd`).
 * - A request that waited on a connection the server was not reading says
 *   nothing against it: a timeout counts as a miss only when the server
 *   answered nothing of this link's since the request was written.
 *
 * Speaks to the proxy exactly as `upstream.ts` does: takes SEND / EXPIRE /
 * RETIRE / RESET_FAILURES, answers ACKs through `reply`, and hands every
 * request it cannot finish back to the proxy (UPSTREAM_RETRY, UPSTREAM_DOWN).
 *
 * open --(a dial refused after the registration window, or too many misses in a row)--> down
 *   \--RETIRE--> retiring --(nothing in flight)--> retired
 */
import { assertEvent, assign, enqueueActions, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import { hostPort } from '../transport/address.js';
import { ErrorCode } from '../transport/errors.js';
import { encodeJson, OLD_READ_BYTES } from '../transport/json.js';
import { MsgType, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { whenReady } from '../transport/tls.js';
import type { Timer } from '../transport/clock.js';
import { Inflight } from './inflight.js';
import {
  describeLinkError, answersReports, leftReports, logForward, retryReport, settle, tryDeadline, tryTimedOut,
  type LinkCommand, type LinkInput, type LinkPhase, type LinkPort, type LinkReport, type ProxyRequest, type Tally, type TryCause,
} from './link.js';
import { OLD_SERVER_DEFAULTS, type OldServerOptions } from './proxy-options.js';
import { RecentOutcomes } from './recent-outcomes.js';

/** Refused dials in the registration window are retried after this, doubling up to DIAL_RETRY_MAX_MS. */
export const DIAL_RETRY_FIRST_MS = 25;
export const DIAL_RETRY_MAX_MS = 1000;
/** After a trial that showed one connection at a time, the next is tried this much later, doubling up to TRIAL_MAX_MS. */
export const TRIAL_FIRST_MS = 1000;
export const TRIAL_MAX_MS = 64_000;
/** Answers on other connections to requests written after the trial's, per connection known, that show the trial is not being read. */
const OVERTAKEN_PER_CONNECTION = 2;

export interface UpstreamJsonInput extends LinkInput {
  old?: OldServerOptions;
}

/** One connection to the server. */
interface Slot {
  conn: Connection;
  /** The request it carries (by the link's seq in `inflight`), if any. */
  upSeq?: number;
  /** When that request was written (clock ms), and as which of the link's writes. */
  writtenAt: number;
  writeNo: number;
  /** Answers this connection has brought: a connection the server reads. */
  served: number;
  /** Answers on other connections to requests written after this one's: counted while it is the trial. */
  overtaken: number;
  /** Given up for the trial's sake: closed as soon as it carries no request, and never written to again. */
  closing: boolean;
}

/**
 * What the proxy's hot path sees of this link: requests come in as SEND
 * events (this link decides per request which connection carries it).
 */
class JsonLinkPort implements LinkPort {
  phase: LinkPhase = 'connecting';
  readonly reads = -1;
  /** Never: each of its connections carries one request at a time, and it opens a bounded number of them. */
  readonly backlogged = false;
  readonly recent = new RecentOutcomes();
  /** An old server works one request at a time on each connection: a request waiting past slow_after is enough (`stalled`). */
  readonly overtakenAt = -Infinity;
  readonly answeredAt = -Infinity;
  readonly limit = undefined;
  readonly sentAt = Infinity;
  constructor(
    readonly inflight: Inflight<ProxyRequest>,
    private readonly self: { send(e: LinkCommand): void },
    /** The link's connections (its context's `slots`): each one the server accepted and has not closed. */
    private readonly slots: ReadonlyMap<Connection, unknown>,
  ) {}

  get serverHolds(): boolean {
    return this.slots.size > 0;
  }

  sendOne(req: ProxyRequest): void {
    this.self.send({ type: 'SEND', requests: [req] });
  }
}

export interface UpstreamJsonContext extends LinkInput {
  traffic: JsonLinkPort;
  limits: Required<OldServerOptions>;
  /** When the link started (the server's registration): refused dials before `startedAt + registrationWindowMs` are retried. */
  startedAt: number;
  slots: Map<Connection, Slot>;
  /** Dials under way. */
  dialing: number;
  /** Whether a connection should be opened even with no request waiting: at registration, and when the server closed the last one after answering on it. */
  wantStanding: boolean;
  /** A dial retry is scheduled (WAKE); no dial until then. */
  retryPending: boolean;
  /** The wait before the next dial retry. */
  retryMs: number;
  /** Every request accepted and not yet finished, waiting or on a connection: one table, one deadline rule. */
  inflight: Inflight<ProxyRequest>;
  /** Requests (by seq in `inflight`) waiting for a free connection, oldest first. */
  queue: number[];
  /** Connections the server has been seen answering at once (each answered, all open, at one answer). */
  width: number;
  /** The connection opened (or being dialed) beyond `width` to learn whether the server serves one more at once. */
  trial?: Connection;
  trialDialing: boolean;
  /** No trial before this (clock ms), and the backoff after the next failed one. */
  nextTrialAt: number;
  trialBackoffMs: number;
  /** Writes so far (to order requests across connections). */
  writes: number;
  /** When the server last answered anything of this link's (clock ms). */
  lastAnswerAt: number;
  /** Whether connections are kept for the next request (until the server is seen to close them after answering). */
  reuse: boolean;
  /** Requests already sent a second time after their connection closed under them. */
  resent: Set<number>;
  /** Whether the proxy has been told the server answers (UPSTREAM_UP). */
  up: boolean;
  /** Misses in a row: tries that timed out while the server answered nothing of this link's, and dials that timed out. */
  misses: number;
  /** Failures since the last ACK (misses, lost connections, error answers): for the proxy's ejection. */
  consecutiveFailures: number;
  answered: number;
  /** Set when the server is judged gone; the machine then leaves `open`. */
  gone?: string;
}

/** The proxy's commands, and the news of the link's own connections and timer. */
export type UpstreamJsonEvent =
  | LinkCommand
  | { type: 'CONN_UP'; conn: Connection }
  | { type: 'CONN_ANSWERS'; conn: Connection; messages: Message[] }
  | { type: 'CONN_DOWN'; conn: Connection; connected: boolean; error: string; refused: boolean }
  | { type: 'WAKE' };

type SocketsInput = Pick<LinkInput, 'host' | 'port' | 'connect' | 'maxFrameBytes' | 'clock' | 'tryTimeoutMs'>;

/**
 * Dials a connection at start and for every DIAL, and reports each
 * connection's life; a dial that does not connect within one try's timeout
 * fails. WAKE_LATER asks
 * for a WAKE after a while. Stopped, it closes every connection gently.
 */
const jsonSockets = fromCallback<{ type: 'DIAL' } | { type: 'WAKE_LATER'; ms: number }, SocketsInput>(({ sendBack, receive, input }) => {
  const conns = new Set<Connection>();
  let stopped = false;
  let later: Timer | undefined;
  const dial = (): void => {
    const socket = input.connect(input.host, input.port);
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'json', holdReadsWhenCongested: false, clock: input.clock });
    conns.add(conn);
    let connected = false;
    let done = false;
    const down = (error: string, refused = false): void => {
      conns.delete(conn);
      connectTimer.cancel();
      if (done || stopped) return;
      done = true;
      sendBack({ type: 'CONN_DOWN', conn, connected, error, refused });
    };
    const connectTimer = input.clock.setTimeout(() => {
      if (connected) return;
      down('connect timed out');
      // Nothing was written: the server has nothing of ours to read, whatever state the handshake is in.
      conn.destroy();
    }, input.tryTimeoutMs);
    whenReady(socket, () => {
      connected = true;
      // The server closing first: a FIN of ours would leave its port in TIME_WAIT (`resetAfterPeerEnd`, done as its end is read).
      conn.resetOnPeerEnd = true;
      connectTimer.cancel();
      if (!stopped) sendBack({ type: 'CONN_UP', conn });
    });
    conn.messages$.subscribe({
      next: (messages) => {
        if (!stopped) sendBack({ type: 'CONN_ANSWERS', conn, messages });
      },
      error: (err: NodeJS.ErrnoException) => down(describeLinkError(err, input.host), err.code === 'ECONNREFUSED'),
      complete: () => {
        // The server has closed its side; the connection reset it already (`resetOnPeerEnd`).
        down(connected ? 'connection closed by the server' : 'connection closed before it was established');
      },
    });
  };
  receive((ev) => {
    if (ev.type === 'DIAL') dial();
    else {
      later?.cancel();
      later = input.clock.setTimeout(() => sendBack({ type: 'WAKE' }), ev.ms);
    }
  });
  // The connection requests will go on, dialed at registration (again, with backoff, while the registration window allows refusals).
  dial();
  return () => {
    stopped = true;
    later?.cancel();
    for (const c of conns) c.endWith();
  };
});

/** What both live states do with work and with their connections' news: act on it, then put waiting requests on connections. */
const serving = {
  SEND: { actions: ['accept', 'dispatch'] },
  CONN_UP: { actions: ['connUp', 'dispatch'] },
  CONN_ANSWERS: { actions: ['answer', 'dispatch'] },
  CONN_DOWN: { actions: ['connDown', 'dispatch'] },
  EXPIRE: { actions: ['expire', 'dispatch'] },
  WAKE: { actions: ['wake', 'dispatch'] },
  RESET_FAILURES: { actions: 'resetFailures' },
  RETUNE: { actions: 'retune' },
} as const;

export const upstreamJsonMachine = setup({
  types: {
    context: {} as UpstreamJsonContext,
    events: {} as UpstreamJsonEvent,
    input: {} as UpstreamJsonInput,
  },
  actors: { jsonSockets },
  actions: {
    accept: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'SEND');
      const now = context.clock.now();
      let tooLong: ProxyRequest[] | undefined;
      let binary: ProxyRequest[] | undefined;
      let longest = 0;
      for (const req of event.requests) {
        // The old wire carries text: bytes go back to be tried on another member, not held against this one.
        if (typeof req.msg.payload !== 'string') {
          (binary ??= []).push(req);
          continue;
        }
        const bytes = encodeJson(req.msg).length;
        if (bytes > OLD_READ_BYTES) {
          (tooLong ??= []).push(req);
          longest = Math.max(longest, bytes);
          continue;
        }
        context.queue.push(context.inflight.add(req, tryDeadline(context, req, now), now));
      }
      // Never sent: it would reach the server in pieces and break it for good. Another member may take it.
      if (tooLong) {
        enqueue.sendParent(retryReport(context.member, self.id, tooLong, {
          code: ErrorCode.UPSTREAM_FAILED,
          message: `server ${context.member} is an old server, which reads at most ${OLD_READ_BYTES} bytes of a request at once; this one is ${longest} bytes as JSON`,
          cause: 'unsent',
        }, context.consecutiveFailures));
      }
      if (binary) {
        enqueue.sendParent(retryReport(context.member, self.id, binary, {
          code: ErrorCode.UPSTREAM_FAILED,
          message: `server ${context.member} is an old JSON server, which takes text only, and the payload is binary`,
          cause: 'unsent',
        }, context.consecutiveFailures));
      }
    }),
    connUp: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_UP');
      context.slots.set(event.conn, { conn: event.conn, writtenAt: 0, writeNo: 0, served: 0, overtaken: 0, closing: false });
      enqueue.assign({ dialing: context.dialing - 1, trialDialing: false });
      // A connection accepted is all an old server can show of being there (it knows no PING).
      if (!context.up) {
        context.traffic.phase = 'open';
        enqueue.assign({ up: true });
        enqueue.sendParent({ type: 'UPSTREAM_UP', member: context.member, linkId: self.id } satisfies LinkReport);
      }
    }),
    answer: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_ANSWERS');
      const slot = context.slots.get(event.conn);
      if (!slot) return;
      const now = context.clock.now();
      const tally: Tally = { answered: 0, failures: context.consecutiveFailures };
      const trial = context.trial === slot.conn ? undefined : context.trial && context.slots.get(context.trial);
      let any = false;
      for (const m of event.messages) {
        if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
        any = true;
        const p = slot.upSeq === undefined ? undefined : context.inflight.take(slot.upSeq);
        if (trial && trial.upSeq !== undefined && slot.upSeq !== undefined && slot.writeNo > trial.writeNo) trial.overtaken++;
        slot.upSeq = undefined;
        slot.served++;
        if (!p) {
          context.logger.debug('late_answer', `Dropped an answer from server id ${context.member} that no request was waiting for`, { server: context.member });
          continue;
        }
        context.resent.delete(p.upSeq);
        settle(context, p.req, m, tally);
      }
      if (!any) return;
      context.lastAnswerAt = now;
      learnWidth(context, slot, now);
      if (slot.closing || !context.reuse) closeGently(context, slot);
      context.traffic.recent.add(now, tally.answered, tally.faults ?? 0);
      enqueue.assign({ answered: context.answered + tally.answered, consecutiveFailures: tally.failures, misses: 0, retryMs: DIAL_RETRY_FIRST_MS });
      const reports = answersReports(context.member, self.id, tally);
      if (reports) for (const report of reports) enqueue.sendParent(report);
    }),
    connDown: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'CONN_DOWN');
      const now = context.clock.now();
      if (!event.connected) {
        enqueue.assign({ dialing: context.dialing - 1, trialDialing: false });
        // Until it first accepts a connection, an old server may not listen yet: it sends its setup first.
        const inWindow = !context.up && now < context.startedAt + context.limits.registrationWindowMs;
        if (event.refused && !inWindow) {
          // Nothing listens on the port any more: the server is gone (a restarted one sends its setup again).
          enqueue.assign({ gone: `its listen port ${hostPort(context.host, context.port)} refuses connections` });
          return;
        }
        if (!event.refused) {
          // Not accepted in time (a full listen backlog, a hung machine): a miss, and a try again later.
          const misses = context.misses + 1;
          enqueue.assign({
            misses,
            consecutiveFailures: context.consecutiveFailures + 1,
            gone: misses >= context.limits.missesToLeave ? `it did not accept a connection within ${context.tryTimeoutMs} ms (${misses} misses in a row)` : undefined,
          });
        } else {
          context.logger.debug('old_server_not_listening', `Server id ${context.member} does not listen on ${hostPort(context.host, context.port)} yet (an old server sends its setup first); dialing again in ${context.retryMs} ms`, {
            server: context.member, retryInMs: context.retryMs,
          });
        }
        enqueue.sendTo('sockets', { type: 'WAKE_LATER', ms: context.retryMs });
        enqueue.assign({ retryPending: true, wantStanding: true, retryMs: Math.min(context.retryMs * 2, DIAL_RETRY_MAX_MS) });
        return;
      }
      const slot = context.slots.get(event.conn);
      if (!slot) return;
      context.slots.delete(event.conn);
      if (context.trial === slot.conn) context.trial = undefined;
      if (slot.upSeq === undefined) {
        // The server closed the link's last connection: dial again, which also shows whether it
        // still listens - at once after answers on it, else after a backoff (a server that
        // accepts and closes must not make the link dial in a loop).
        if (!context.reuse || context.dialing > 0 || [...context.slots.values()].some((s) => !s.closing)) return;
        if (slot.served > 0) enqueue.assign({ wantStanding: true });
        else {
          enqueue.sendTo('sockets', { type: 'WAKE_LATER', ms: context.retryMs });
          enqueue.assign({ retryPending: true, wantStanding: true, retryMs: Math.min(context.retryMs * 2, DIAL_RETRY_MAX_MS) });
        }
        return;
      }
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
      context.traffic.recent.add(context.clock.now(), 0, 1);
      enqueue.assign({ consecutiveFailures: failures });
      enqueue.sendParent(retryReport(context.member, self.id, [p.req], { code: ErrorCode.UPSTREAM_FAILED, message: `server ${context.member} failed before answering: ${event.error}`, cause: 'reset' }, failures));
    }),
    expire: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'EXPIRE');
      const expired = context.inflight.takeExpired(event.now);
      if (expired.length === 0) return;
      let misses = context.misses;
      const waited: ProxyRequest[] = [];
      const unread: ProxyRequest[] = [];
      const missed: ProxyRequest[] = [];
      for (const p of expired) {
        context.resent.delete(p.upSeq);
        const queued = context.queue.indexOf(p.upSeq);
        if (queued >= 0) {
          context.queue.splice(queued, 1);
          waited.push(p.req);
          continue;
        }
        for (const slot of context.slots.values()) {
          if (slot.upSeq !== p.upSeq) continue;
          // Evidence against the server only if it answered nothing of ours since this request went out.
          if (context.lastAnswerAt < slot.writtenAt) {
            misses++;
            missed.push(p.req);
          } else unread.push(p.req);
          if (context.trial === slot.conn) trialFailed(context, event.now, context.lastAnswerAt >= slot.writtenAt);
          // A late answer on this connection would be taken for the next request's: close it.
          slot.upSeq = undefined;
          closeGently(context, slot);
        }
      }
      const failures = context.consecutiveFailures + missed.length;
      context.traffic.recent.add(event.now, 0, missed.length);
      const gone = misses >= context.limits.missesToLeave ? `it stopped answering (${misses} tries in a row timed out with no answer from it meanwhile)` : undefined;
      enqueue.assign({ misses, consecutiveFailures: failures, gone });
      // A final try waited until the request's deadline (`tryDeadline`), not the try timeout: its words say which.
      const within = (reqs: ProxyRequest[]): string => (reqs.every((r) => r.finalTry) ? `within the request's ${context.timeoutMs} ms` : `within ${context.tryTimeoutMs} ms`);
      const reports: Array<[ProxyRequest[], string, TryCause]> = [
        [missed, tryTimedOut(context.member, context.tryTimeoutMs, missed.every((r) => r.finalTry), context.timeoutMs), 'try-timeout'],
        [unread, `server ${context.member} did not answer ${within(unread)}, though it answered others meanwhile (it serves ${context.width} connection(s) at once)`, 'try-timeout'],
        [waited, `server ${context.member} had no free connection ${within(waited)} (it serves ${context.width} connection(s) at once)`, 'unsent'],
      ];
      for (const [reqs, message, cause] of reports) {
        if (reqs.length) enqueue.sendParent(retryReport(context.member, self.id, reqs, { code: ErrorCode.TIMEOUT, message, cause }, failures));
      }
    }),
    wake: assign({ retryPending: false }),
    resetFailures: assign({ consecutiveFailures: 0 }),
    retune: assign(({ event }) => {
      assertEvent(event, 'RETUNE');
      return { timeoutMs: event.timeoutMs, tryTimeoutMs: event.tryTimeoutMs, hedge: event.hedge };
    }),
    /**
     * Put waiting requests on idle connections; decide whether the trial has
     * shown a server that reads one connection less than we have open; dial
     * what is wanted: connections the server is known to serve at once, one
     * trial beyond them, or the link's one standing connection.
     */
    dispatch: enqueueActions(({ context, enqueue }) => {
      if (context.gone) return;
      handOverIfStuck(context);
      const active = placeRequests(context);
      if (context.retryPending) return;
      const open = active + context.dialing;
      const want = context.queue.length - context.dialing;
      let dials = Math.max(0, Math.min(want, Math.min(context.width, context.limits.connections) - open));
      let trial = false;
      if (dials === 0 && want > 0 && context.reuse && open >= context.width && open < context.limits.connections
        && context.trial === undefined && !context.trialDialing && context.clock.now() >= context.nextTrialAt) {
        dials = 1;
        trial = true;
      }
      if (dials === 0 && open === 0 && context.wantStanding) dials = 1;
      if (dials === 0) return;
      for (let i = 0; i < dials; i++) enqueue.sendTo('sockets', { type: 'DIAL' });
      enqueue.assign({ dialing: context.dialing + dials, wantStanding: false, trialDialing: trial || context.trialDialing });
    }),
    /**
     * The server is gone: every unfinished request goes back to the proxy with the reason, those
     * that waited for a free connection apart (never written: not counted against `max_resets`).
     */
    notifyDown: sendParent(({ context, self }) => {
      context.traffic.phase = 'down';
      return {
        type: 'UPSTREAM_DOWN' as const,
        member: context.member,
        linkId: self.id,
        // Gone for its misses (its port still takes connections: stalled), not for a refused port: probed, not removed.
        failure: { code: ErrorCode.UPSTREAM_FAILED, message: context.gone ?? 'link closed', ...(context.misses >= context.limits.missesToLeave ? { stalled: true } : {}) },
        ...takeUnfinished(context),
      } satisfies LinkReport;
    }),
    /** Gone while retiring: unfinished requests go back to be routed elsewhere. */
    returnAll: enqueueActions(({ context, enqueue, self }) => {
      const { requests, unsent } = takeUnfinished(context);
      for (const r of leftReports(context.member, self.id, requests, unsent)) enqueue.sendParent(r);
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
    const slots = new Map<Connection, Slot>();
    return {
      ...input,
      traffic: new JsonLinkPort(inflight, self, slots),
      limits: { ...OLD_SERVER_DEFAULTS, ...input.old },
      startedAt: input.clock.now(),
      slots,
      dialing: 1, // the socket actor dials the link's first connection at start
      wantStanding: false,
      retryPending: false,
      retryMs: DIAL_RETRY_FIRST_MS,
      inflight,
      queue: [],
      width: 1,
      trialDialing: false,
      nextTrialAt: -Infinity,
      trialBackoffMs: TRIAL_FIRST_MS,
      writes: 0,
      lastAnswerAt: -Infinity,
      reuse: true,
      resent: new Set(),
      up: false,
      misses: 0,
      consecutiveFailures: 0,
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

/**
 * Every unfinished request, taken from the link: `requests` were written to a connection (the
 * server may have read them), `unsent` waited in the queue for a free one (and a request sent
 * again after a reused connection closed under it: the server had not read it).
 */
function takeUnfinished(context: UpstreamJsonContext): { requests: ProxyRequest[]; unsent: ProxyRequest[] } {
  const waiting = new Set(context.queue);
  context.queue.length = 0;
  context.resent.clear();
  const requests: ProxyRequest[] = [];
  const unsent: ProxyRequest[] = [];
  for (const p of context.inflight.takeAll()) (waiting.has(p.upSeq) ? unsent : requests).push(p.req);
  return { requests, unsent };
}

/** One whole request in one write, on a connection that carries nothing else. */
function write(context: UpstreamJsonContext, slot: Slot, upSeq: number): void {
  const p = context.inflight.peek(upSeq);
  if (!p) return;
  slot.upSeq = upSeq;
  slot.writtenAt = context.clock.now();
  slot.writeNo = ++context.writes;
  if (context.logger.enabled('debug')) logForward(context, p.req);
  slot.conn.send(p.req.msg, upSeq);
}

/**
 * FIN, never RST: an old server that finds a connection reset breaks for
 * good. The connection leaves the link; its socket lives on until the server
 * closes its side (a late answer on it is read and dropped).
 */
function closeGently(context: UpstreamJsonContext, slot: Slot): void {
  context.slots.delete(slot.conn);
  if (context.trial === slot.conn) context.trial = undefined;
  slot.conn.endWith();
}

/**
 * After an answer on `slot`: the server has shown it serves as many
 * connections at once as are open and answered. A trial answered that way
 * widens the link; a trial answered only after the link gave up another
 * connection for it showed the width was right, for now.
 */
function learnWidth(context: UpstreamJsonContext, slot: Slot, now: number): void {
  let answeredOpen = 0;
  for (const s of context.slots.values()) if (s.served > 0) answeredOpen++;
  if (answeredOpen > context.width) {
    context.width = Math.min(answeredOpen, context.limits.connections);
    context.nextTrialAt = now;
    context.trialBackoffMs = TRIAL_FIRST_MS;
    context.logger.info('old_server_width', `Server id ${context.member} answers ${context.width} connections at once: the proxy uses up to ${context.width} (at most ${context.limits.connections})`, {
      server: context.member, connections: context.width, max: context.limits.connections,
    });
  } else if (context.trial === slot.conn) trialFailed(context, now, overtaken(context, slot));
  if (context.trial === slot.conn) context.trial = undefined;
}

/** Whether requests written after the trial's were answered on other connections often enough to show the trial was not being read. */
function overtaken(context: UpstreamJsonContext, trial: Slot): boolean {
  return trial.overtaken >= OVERTAKEN_PER_CONNECTION * context.width;
}

/**
 * The trial showed no more width than known. When others were answered
 * meanwhile (`shown`), the next trial comes later each time, twice as late
 * (up to TRIAL_MAX_MS); when it just ran out of work to tell, TRIAL_FIRST_MS later.
 */
function trialFailed(context: UpstreamJsonContext, now: number, shown: boolean): void {
  if (shown && context.trialBackoffMs === TRIAL_FIRST_MS) {
    context.logger.info('old_server_width', `Server id ${context.member} answered other connections while a new one waited: it serves ${context.width} connection(s) at once, and the proxy keeps to that (trying one more now and then)`, {
      server: context.member, connections: context.width, max: context.limits.connections,
    });
  }
  context.nextTrialAt = now + (shown ? context.trialBackoffMs : TRIAL_FIRST_MS);
  if (shown) context.trialBackoffMs = Math.min(context.trialBackoffMs * 2, TRIAL_MAX_MS);
  context.trial = undefined;
}

/**
 * Put waiting requests on idle connections, and return how many connections
 * are in use (not given up). Connections the server has answered on take
 * requests, and so do the first ones it has not answered on yet, up to the
 * number it is known to serve at once. Past that, one connection at a time
 * carries a request as the trial; one left idle there is closed, since a
 * one-at-a-time server that reaches it would wait on it, holding its lock.
 */
function placeRequests(context: UpstreamJsonContext): number {
  let active = 0;
  let trusted = 0;
  for (const s of context.slots.values()) {
    if (s.closing) continue;
    active++;
    if (s.served > 0) trusted++;
  }
  let allowance = context.width - trusted;
  for (const slot of [...context.slots.values()]) {
    if (slot.closing) continue;
    const idle = slot.upSeq === undefined;
    if (slot.served > 0 || allowance-- > 0) {
      if (idle && context.queue.length) write(context, slot, context.queue.shift()!);
      continue;
    }
    if (!idle) continue; // the trial, on its way
    if (context.queue.length && (context.trial === undefined || context.trial === slot.conn)) {
      context.trial = slot.conn;
      write(context, slot, context.queue.shift()!);
      continue;
    }
    closeGently(context, slot);
    active--;
  }
  return active;
}

/**
 * The trial carries a request the server has not read, while other
 * connections keep being answered (or have nothing more to do): a server that
 * serves fewer connections than are open reads the trial only once one is
 * closed. Give one up - an idle one now, else the next to be answered.
 */
function handOverIfStuck(context: UpstreamJsonContext): void {
  const trial = context.trial && context.slots.get(context.trial);
  if (!trial || trial.upSeq === undefined || trial.served > 0) return;
  let othersBusy = false;
  let victim: Slot | undefined;
  for (const s of context.slots.values()) {
    if (s === trial) continue;
    if (s.closing) return; // already given up for it
    if (s.upSeq !== undefined) othersBusy = true;
    if (s.served > 0 && (!victim || (victim.upSeq !== undefined && s.upSeq === undefined))) victim = s;
  }
  const nothingElse = !othersBusy && context.queue.length === 0;
  if (!victim || !(overtaken(context, trial) || nothingElse)) return;
  victim.closing = true;
  if (victim.upSeq === undefined) closeGently(context, victim);
}

export type UpstreamJsonRef = ActorRefFrom<typeof upstreamJsonMachine>;
