/**
 * An upstream link: the proxy's persistent connection to one registered
 * server, reused for every request routed to that server. Requests are
 * pipelined; answers come back in any order and are matched by seq.
 *
 * connecting --CONNECTED--> open --DISCONNECTED--> down
 *      |                      |
 *      +--FAILED--> down      +--RETIRE (when idle)--> retired
 */
import { connect as netConnect, type Socket } from 'node:net';
import { assign, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import { ErrorCode, type ErrorCode as Code } from '../transport/errors.js';
import { errorMsg, MsgType, type AckMsg, type DataMsg, type ErrorMsg, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
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
  timeoutMs: number;
  maxFrameBytes: number;
  busy: Set<Inflight<ProxyRequest>>;
  reply: Reply;
  logger: Logger;
}

export interface UpstreamContext extends UpstreamInput {
  conn?: Connection;
  inflight: Inflight<ProxyRequest>;
  queue: ProxyRequest[];
  answered: number;
  failed: number;
  lastError?: string;
}

export type UpstreamEvent =
  | { type: 'SEND'; requests: ProxyRequest[] }
  | { type: 'CONNECTED'; conn: Connection }
  | { type: 'ANSWERS'; messages: Message[] }
  | { type: 'DISCONNECTED'; error?: string }
  | { type: 'EXPIRE'; now: number }
  | { type: 'RETIRE' };

/** Owns the socket: dials, then turns its reads into ANSWERS batches. */
const upstreamSocket = fromCallback<UpstreamEvent, { host: string; port: number; connect: SocketFactory; maxFrameBytes: number }>(
  ({ sendBack, input }) => {
    const socket = input.connect(input.host, input.port);
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes });
    conn.role = 'upstream';
    let done = false;
    const down = (error?: string): void => {
      if (done) return;
      done = true;
      sendBack({ type: 'DISCONNECTED', error });
    };
    socket.once('connect', () => sendBack({ type: 'CONNECTED', conn }));
    socket.once('secureConnect', () => sendBack({ type: 'CONNECTED', conn }));
    const sub = conn.messages$.subscribe({
      next: (messages) => sendBack({ type: 'ANSWERS', messages }),
      error: (err: Error) => down(err.message),
      complete: () => down('connection closed by the server'),
    });
    return () => {
      done = true;
      sub.unsubscribe();
      conn.destroy();
    };
  },
);

export const upstreamMachine = setup({
  types: {
    context: {} as UpstreamContext,
    events: {} as UpstreamEvent,
    input: {} as UpstreamInput,
  },
  actors: { upstreamSocket },
  actions: {
    enqueue: assign(({ context, event }) => {
      if (event.type === 'SEND') for (const r of event.requests) context.queue.push(r);
      return {};
    }),
    setConn: assign(({ event }) => (event.type === 'CONNECTED' ? { conn: event.conn } : {})),
    flushQueue: ({ context }) => {
      const queued = context.queue.splice(0);
      if (queued.length) write(context, queued);
    },
    write: ({ context, event }) => {
      if (event.type === 'SEND') write(context, event.requests);
    },
    respond: assign(({ context, event }) => {
      if (event.type !== 'ANSWERS') return {};
      let answered = 0;
      for (const m of event.messages) {
        if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
        const p = m.seq === undefined ? undefined : context.inflight.take(m.seq);
        if (!p) {
          context.logger.debug('late_answer', `Dropped an answer from server id ${context.member} for no pending request (seq ${m.seq})`, { server: context.member, seq: m.seq });
          continue;
        }
        if (m.type === MsgType.ACK && context.logger.enabled('info')) {
          context.logger.info('ack', `Received a data message from server id ${context.member} payload ${m.payload}`, {
            server: context.member, client: m.destid, payload: m.payload,
          });
        }
        context.reply(p.req, m, context.member);
        answered++;
      }
      return { answered: context.answered + answered };
    }),
    expire: ({ context, event }) => {
      if (event.type !== 'EXPIRE') return;
      for (const p of context.inflight.takeExpired(event.now)) {
        context.logger.warn('timeout', `No answer from server id ${context.member} within ${context.timeoutMs} ms for client ${p.req.msg.srcid}`, {
          server: context.member, client: p.req.msg.srcid, code: ErrorCode.TIMEOUT,
        });
        context.reply(p.req, errorMsg(ErrorCode.TIMEOUT, `server ${context.member} did not answer within ${context.timeoutMs} ms`), context.member);
      }
    },
    failAll: assign(({ context, event }) => {
      const why = event.type === 'DISCONNECTED' ? event.error ?? 'connection lost' : 'link closed';
      const all = [...context.inflight.takeAll().map((p) => p.req), ...context.queue.splice(0)];
      for (const req of all) {
        context.reply(req, errorMsg(ErrorCode.UPSTREAM_FAILED, `server ${context.member} failed before answering: ${why}`), context.member);
      }
      return { failed: context.failed + all.length, lastError: why, conn: undefined };
    }),
    notifyDown: sendParent(({ context, self }) => ({
      type: 'UPSTREAM_DOWN' as const,
      member: context.member,
      linkId: self.id,
      error: context.lastError ?? 'unknown',
    })),
  },
  guards: {
    idle: ({ context }) => context.inflight.size === 0 && context.queue.length === 0,
  },
}).createMachine({
  id: 'upstream',
  context: ({ input, self }) => ({
    ...input,
    inflight: new Inflight<ProxyRequest>(input.busy, self),
    queue: [],
    answered: 0,
    failed: 0,
  }),
  invoke: {
    id: 'socket',
    src: 'upstreamSocket',
    input: ({ context }) => ({ host: context.host, port: context.port, connect: context.connect, maxFrameBytes: context.maxFrameBytes }),
  },
  initial: 'connecting',
  states: {
    connecting: {
      on: {
        SEND: { actions: 'enqueue' },
        CONNECTED: { target: 'open', actions: ['setConn', 'flushQueue'] },
        DISCONNECTED: { target: 'down', actions: ['failAll', 'notifyDown'] },
        EXPIRE: { actions: 'expire' },
        RETIRE: { target: 'retired', actions: 'failAll' },
      },
    },
    open: {
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'down', actions: ['failAll', 'notifyDown'] },
        RETIRE: [{ guard: 'idle', target: 'retired' }, { target: 'retiring' }],
      },
    },
    retiring: {
      always: { guard: 'idle', target: 'retired' },
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'retired', actions: 'failAll' },
      },
    },
    down: { type: 'final' },
    retired: { type: 'final' },
  },
});

function write(context: UpstreamContext, requests: ProxyRequest[]): void {
  const conn = context.conn;
  if (!conn) return;
  const deadlineBase = context.timeoutMs;
  for (const req of requests) {
    const upSeq = context.inflight.add(req, req.arrived + deadlineBase);
    if (context.logger.enabled('info')) {
      context.logger.info('forward', `Forwarding a data message to server id ${context.member} from client ${req.msg.srcid} payload ${req.msg.payload}`, {
        server: context.member, client: req.msg.srcid, policy: context.policy, payload: req.msg.payload,
      });
    }
    conn.send(req.msg, upSeq);
  }
}

export type UpstreamRef = ActorRefFrom<typeof upstreamMachine>;
export type { Code };
