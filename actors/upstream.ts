/**
 * An upstream link: the proxy's persistent connection to one registered
 * server, reused for every request routed to that server. Requests are
 * pipelined; answers come back in any order and are matched by seq.
 *
 * connecting --CONNECTED--> verifying --PONG--> open --DISCONNECTED--> down
 *      |                        |                 |
 *      +--fail / timeout--> down+                 +--RETIRE--> retiring --idle--> retired
 *
 * The link never answers a failed request itself: requests it cannot finish
 * (connection lost, try timed out, the server answered with an error) go
 * back to the proxy, which retries them on another member or answers them.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { assign, enqueueActions, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import type { BusyPoll } from '../transport/busy-poll.js';
import { ErrorCode } from '../transport/errors.js';
import { MsgType, type AckMsg, type DataMsg, type ErrorMsg, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { readyEvent } from '../transport/tls.js';
import type { Clock } from './clock.js';
import { Inflight } from './inflight.js';
import type { Logger } from './logger.js';

/** A client request as it travels through the proxy. */
export interface ProxyRequest {
  /** The client connection that asked, and answers go back to. */
  client: Connection;
  msg: DataMsg;
  /** When the request arrived (clock ms); its deadline runs from here. */
  arrived: number;
  /** Members already tried for this request, in order. */
  tried?: string[];
  /** How the last try failed, for the answer when no member is left to try. */
  lastCode?: ErrorMsg['code'];
}

/** Sends the one answer a request gets. */
export type Reply = (req: ProxyRequest, answer: AckMsg | ErrorMsg, member?: string) => void;

export type SocketFactory = (host: string, port: number) => Socket;
export const tcpConnect: SocketFactory = (host, port) => netConnect({ host, port });

export interface UpstreamInput {
  member: string;
  policy: string;
  host: string;
  port: number;
  connect: SocketFactory;
  clock: Clock;
  /** Whole-request timeout: no try outlives `arrived + timeoutMs`. */
  timeoutMs: number;
  /** One try's timeout; also bounds connecting and the first PING. */
  tryTimeoutMs: number;
  maxFrameBytes: number;
  busy: Set<Inflight<ProxyRequest>>;
  reply: Reply;
  logger: Logger;
  /** Kicked by every read of answers (the proxy's busy polling, when on). */
  busyPoll?: BusyPoll;
}

export interface UpstreamContext extends UpstreamInput {
  inflight: Inflight<ProxyRequest>;
  queue: ProxyRequest[];
  /** The traffic side of the link: how requests go out and answers come in while it is open. */
  traffic: LinkTraffic;
  lastError?: string;
}

/**
 * The traffic side of an upstream link. While the link machine is `open`,
 * the proxy's pools hand it requests by calling `send`, and
 * each read of answers is settled by `answer` straight from the socket
 * stream: the link machine gets events only for what changes its state
 * (connected, verified, down, retired, expired tries, error answers to report).
 * An event per batch per member would cost about 3 us each, and a batch
 * spread over 10,000 members would make 10,000 of them.
 */
export class LinkTraffic {
  /** Set by the link machine: true while it is `open`. */
  open = false;
  /** The link's connection, from CONNECTED until the link is down or retired. */
  conn?: Connection;
  /** Failures since the last ACK (try timeouts, error answers): for outlier ejection. */
  failures = 0;
  answered = 0;

  constructor(private readonly link: Pick<UpstreamContext, 'inflight' | 'clock' | 'tryTimeoutMs' | 'timeoutMs' | 'logger' | 'member' | 'policy' | 'reply' | 'queue'>) {}

  /** Write requests to the server now (or queue them until the connection is there). */
  send(requests: ProxyRequest[]): void {
    for (let i = 0; i < requests.length; i++) this.sendOne(requests[i]!);
  }

  /** Write one request now (the pool's hot path: it hands requests over one by one, in turn). */
  sendOne(req: ProxyRequest): void {
    const conn = this.conn;
    if (!conn) {
      this.link.queue.push(req);
      return;
    }
    const link = this.link;
    const upSeq = link.inflight.add(req, tryDeadline(link, req, link.clock.now()));
    if (link.logger.enabled('info')) logForward(link, req);
    conn.send(req.msg, upSeq);
  }

  /** Settle one read of answers; returns the report of its error answers, if any, for the proxy. */
  answer(messages: Message[], linkId: string): UpstreamReport | undefined {
    const link = this.link;
    const tally: Tally = { answered: 0, failures: this.failures };
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
      const p = m.seq === undefined ? undefined : link.inflight.take(m.seq);
      if (!p) {
        link.logger.debug('late_answer', `Dropped an answer from server id ${link.member} for no pending request (seq ${m.seq})`, { server: link.member, seq: m.seq });
        continue;
      }
      settle(link, p.req, m, tally);
    }
    this.answered += tally.answered;
    this.failures = tally.failures;
    return errorAnswersReport(link.member, linkId, tally);
  }
}

export type UpstreamEvent =
  | { type: 'SEND'; requests: ProxyRequest[] }
  | { type: 'CONNECTED'; conn: Connection }
  | { type: 'ANSWERS'; messages: Message[] }
  | { type: 'REPORT'; report: UpstreamReport }
  | { type: 'DISCONNECTED'; error?: string }
  | { type: 'EXPIRE'; now: number }
  | { type: 'RETIRE' }
  | { type: 'RESET_FAILURES' };

/** What a link tells the proxy. */
export type UpstreamReport =
  | { type: 'UPSTREAM_UP'; member: string; linkId: string }
  | { type: 'UPSTREAM_DOWN'; member: string; linkId: string; error: string; requests: ProxyRequest[] }
  | { type: 'UPSTREAM_RETRY'; member: string; linkId: string; requests: ProxyRequest[]; code: ErrorMsg['code']; reason: string; failures: number };

/**
 * Owns the socket: dials, then turns its reads into ANSWERS batches until the
 * link is open, and settles them through the link's port from then on.
 */
const upstreamSocket = fromCallback<UpstreamEvent, { host: string; port: number; connect: SocketFactory; maxFrameBytes: number; link: LinkTraffic; linkId: string; busyPoll?: BusyPoll }>(
  ({ sendBack, input }) => {
    const { link, linkId } = input;
    const socket = input.connect(input.host, input.port);
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes });
    conn.role = 'upstream';
    let done = false;
    const down = (error?: string): void => {
      if (done) return;
      done = true;
      sendBack({ type: 'DISCONNECTED', error });
    };
    socket.once(readyEvent(socket), () => sendBack({ type: 'CONNECTED', conn }));
    const sub = conn.messages$.subscribe({
      next: (messages) => {
        input.busyPoll?.kick();
        if (!link.open) return sendBack({ type: 'ANSWERS', messages });
        const report = link.answer(messages, linkId);
        if (report) sendBack({ type: 'REPORT', report });
      },
      error: (err: NodeJS.ErrnoException) => down(err.code === 'ECONNREFUSED' ? 'connection refused' : err.message),
      complete: () => down('connection closed by the server'),
    });
    return () => {
      done = true;
      sub.unsubscribe();
      conn.destroy();
    };
  },
);

const PING_SEQ = 0;

export const upstreamMachine = setup({
  types: {
    context: {} as UpstreamContext,
    events: {} as UpstreamEvent,
    input: {} as UpstreamInput,
  },
  actors: { upstreamSocket },
  delays: {
    tryTimeout: ({ context }) => context.tryTimeoutMs,
  },
  actions: {
    enqueue: ({ context, event }) => {
      if (event.type === 'SEND') for (const r of event.requests) context.queue.push(r);
    },
    setConn: ({ context, event }) => {
      if (event.type === 'CONNECTED') context.traffic.conn = event.conn;
    },
    trafficOpen: ({ context }) => {
      context.traffic.open = true;
    },
    trafficPaused: ({ context }) => {
      context.traffic.open = false;
    },
    trafficClosed: ({ context }) => {
      context.traffic.open = false;
      context.traffic.conn = undefined;
    },
    report: enqueueActions(({ event, enqueue }) => {
      if (event.type === 'REPORT') enqueue.sendParent(event.report);
    }),
    ping: ({ context }) => context.traffic.conn?.send({ type: MsgType.PING, seq: PING_SEQ }),
    notifyUp: sendParent(({ context, self }) => ({ type: 'UPSTREAM_UP' as const, member: context.member, linkId: self.id })),
    flushQueue: ({ context }) => {
      const queued = context.queue.splice(0);
      if (queued.length) context.traffic.send(queued);
    },
    write: ({ context, event }) => {
      if (event.type === 'SEND') context.traffic.send(event.requests);
    },
    respond: enqueueActions(({ context, event, enqueue, self }) => {
      if (event.type !== 'ANSWERS') return;
      const report = context.traffic.answer(event.messages, self.id);
      if (report) enqueue.sendParent(report);
    }),
    expire: enqueueActions(({ context, event, enqueue, self }) => {
      if (event.type !== 'EXPIRE') return;
      const expired = context.inflight.takeExpired(event.now);
      if (expired.length === 0) return;
      const failures = (context.traffic.failures += expired.length);
      enqueue.sendParent(retryReport(context.member, self.id, expired.map((p) => p.req), ErrorCode.TIMEOUT, `server ${context.member} did not answer within ${context.tryTimeoutMs} ms`, failures));
    }),
    setError: assign(({ event }) => ({
      lastError: event.type === 'DISCONNECTED' ? event.error ?? 'connection lost' : 'no answer to PING in time',
    })),
    /** Hand every unfinished request back to the proxy, with the reason. */
    notifyDown: sendParent(({ context, self }) => ({
      type: 'UPSTREAM_DOWN' as const,
      member: context.member,
      linkId: self.id,
      error: context.lastError ?? 'connection lost',
      requests: [...context.inflight.takeAll().map((p) => p.req), ...context.queue.splice(0)],
    })),
    /** A retired link's unsent requests go back to be routed elsewhere. */
    returnQueue: enqueueActions(({ context, enqueue, self }) => {
      const requests = [...context.inflight.takeAll().map((p) => p.req), ...context.queue.splice(0)];
      if (requests.length === 0) return;
      enqueue.sendParent(retryReport(context.member, self.id, requests, ErrorCode.UPSTREAM_FAILED, `server ${context.member} left before answering`, 0));
    }),
  },
  guards: {
    idle: ({ context }) => context.inflight.size === 0 && context.queue.length === 0,
    hasPong: ({ event }) => event.type === 'ANSWERS' && event.messages.some((m) => m.type === MsgType.PONG),
  },
}).createMachine({
  id: 'upstream',
  context: ({ input, self }) => {
    const link = { ...input, inflight: new Inflight<ProxyRequest>(input.busy, self), queue: [] as ProxyRequest[] };
    return { ...link, traffic: new LinkTraffic(link) };
  },
  invoke: {
    id: 'socket',
    src: 'upstreamSocket',
    input: ({ context, self }) => ({ host: context.host, port: context.port, connect: context.connect, maxFrameBytes: context.maxFrameBytes, link: context.traffic, linkId: self.id, busyPoll: context.busyPoll }),
  },
  on: {
    RESET_FAILURES: {
      actions: ({ context }) => {
        context.traffic.failures = 0;
      },
    },
    REPORT: { actions: 'report' },
  },
  initial: 'connecting',
  states: {
    connecting: {
      after: { tryTimeout: { target: 'down', actions: assign({ lastError: 'connect timed out' }) } },
      on: {
        SEND: { actions: 'enqueue' },
        CONNECTED: { target: 'verifying', actions: ['setConn', 'ping'] },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: { target: 'retired', actions: 'returnQueue' },
      },
    },
    verifying: {
      after: { tryTimeout: { target: 'down', actions: assign({ lastError: 'no answer to PING in time' }) } },
      on: {
        SEND: { actions: 'enqueue' },
        ANSWERS: { guard: 'hasPong', target: 'open', actions: ['notifyUp', 'flushQueue'] },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: { target: 'retired', actions: 'returnQueue' },
      },
    },
    // Only here does traffic bypass events: `retiring` waits for its last answers as events, so its `idle` check sees each one.
    open: {
      entry: 'trafficOpen',
      exit: 'trafficPaused',
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: [{ guard: 'idle', target: 'retired' }, { target: 'retiring' }],
      },
    },
    retiring: {
      always: { guard: 'idle', target: 'retired' },
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'retired', actions: ['setError', 'returnQueue'] },
      },
    },
    down: { type: 'final', entry: ['trafficClosed', 'notifyDown'] },
    retired: { type: 'final', entry: 'trafficClosed' },
  },
});

/** A try ends at the try timeout, and never after the request's own deadline. */
export function tryDeadline(context: Pick<UpstreamInput, 'tryTimeoutMs' | 'timeoutMs'>, req: ProxyRequest, now: number): number {
  return Math.min(now + context.tryTimeoutMs, req.arrived + context.timeoutMs);
}

export function logForward(context: Pick<UpstreamInput, 'member' | 'policy' | 'logger'>, req: ProxyRequest): void {
  context.logger.info('forward', `Forwarding a data message to server id ${context.member} from client ${req.msg.srcid} payload ${req.msg.payload}`, {
    server: context.member, client: req.msg.srcid, policy: context.policy, payload: req.msg.payload,
  });
}

/** What a batch of answers did: counted for the link, error answers kept to be retried elsewhere. */
export interface Tally {
  answered: number;
  /** Failures in a row, carried over from the link and reset by an ACK. */
  failures: number;
  failed?: ProxyRequest[];
  lastFailure?: ErrorMsg;
}

/** One server answer to one request: an ACK goes to the client now; an ERROR is kept in the tally for a retry. */
export function settle(context: Pick<UpstreamInput, 'member' | 'logger' | 'reply'>, req: ProxyRequest, m: AckMsg | ErrorMsg, tally: Tally): void {
  if (m.type === MsgType.ACK) {
    if (context.logger.enabled('info')) {
      context.logger.info('ack', `Received a data message from server id ${context.member} payload ${m.payload}`, { server: context.member, client: m.destid, payload: m.payload });
    }
    tally.failures = 0;
    tally.answered++;
    context.reply(req, m, context.member);
  } else {
    tally.failures++;
    tally.lastFailure = m;
    (tally.failed ??= []).push(req);
  }
}

/** Hands requests a link cannot finish back to the proxy, to be retried on another member. */
export function retryReport(member: string, linkId: string, requests: ProxyRequest[], code: ErrorMsg['code'], reason: string, failures: number): UpstreamReport {
  return { type: 'UPSTREAM_RETRY', member, linkId, requests, code, reason, failures };
}

/** The retry report for a tally's error answers, if it has any. */
export function errorAnswersReport(member: string, linkId: string, tally: Tally): UpstreamReport | undefined {
  const m = tally.lastFailure;
  return tally.failed && m ? retryReport(member, linkId, tally.failed, m.code, `server ${member} answered ${m.code}: ${m.message}`, tally.failures) : undefined;
}

export type UpstreamRef = ActorRefFrom<typeof upstreamMachine>;
