/**
 * A client: sends packets to the proxy on one connection, pipelined up to a
 * window, matches each answer by seq, and checks it equals SHA1(payload).
 *
 * connecting --CONNECTED--> sending --(all answered)--> done
 *      \--CONNECT_FAILED--> done (every packet marked failed)
 */
import { connect as netConnect } from 'node:net';
import { assign, fromCallback, setup, type ActorRefFrom } from 'xstate';
import { MsgType, type DataMsg, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { systemClock, type Clock } from './clock.js';
import { silentLogger, type Logger } from './logger.js';
import type { Endpoint } from './server.js';
import { sha1Hex } from './server.js';

export interface Packet {
  srcid: string;
  privPoliId: string;
  payload: string;
}

export interface ClientOptions {
  id: string;
  proxy: Endpoint;
  packets: Packet[];
  /** Per-request timeout in ms (default 5000). */
  timeoutMs?: number;
  /** Requests in flight at once on the connection (default 64; always 1 on the json wire). */
  window?: number;
  /** `frames` (default), or `json`: the old wire, one request at a time, for the old Python proxy. */
  wire?: 'frames' | 'json';
  logger?: Logger;
  clock?: Clock;
}

export interface Result {
  packet: Packet;
  /** The id of the server that answered. */
  server?: string;
  hash?: string;
  correct?: boolean;
  /** Error code when no ack came: a proxy error code, or CLIENT_TIMEOUT / CONNECTION_LOST. */
  error?: string;
  message?: string;
  latencyMs?: number;
}

export interface ClientContext {
  opts: ClientOptions;
  logger: Logger;
  clock: Clock;
  conn?: Connection;
  results: Result[];
  sentAt: number[];
  next: number;
  inflight: number;
  remaining: number;
}

export type ClientEvent =
  | { type: 'CONNECTED'; conn: Connection }
  | { type: 'CONNECT_FAILED'; error: string }
  | { type: 'ANSWERS'; messages: Message[] }
  | { type: 'CLOSED'; error: string }
  | { type: 'TICK' };

const clientSocket = fromCallback<ClientEvent, { proxy: Endpoint; wire?: 'frames' | 'json' }>(({ sendBack, input }) => {
  const socket = netConnect({ host: input.proxy.host, port: input.proxy.port });
  // On the json wire answers carry no seq: the decoder numbers them in arrival order, which is request order.
  const conn = new Connection(socket, { wire: input.wire });
  conn.role = 'client';
  let connected = false;
  socket.once('connect', () => {
    connected = true;
    sendBack({ type: 'CONNECTED', conn });
  });
  const sub = conn.messages$.subscribe({
    next: (messages) => sendBack({ type: 'ANSWERS', messages }),
    error: (err: NodeJS.ErrnoException) => {
      if (!connected) {
        const why = err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${input.proxy.host}:${input.proxy.port}` : err.message;
        sendBack({ type: 'CONNECT_FAILED', error: why });
      } else sendBack({ type: 'CLOSED', error: err.message });
    },
    complete: () => sendBack({ type: 'CLOSED', error: 'the reverse proxy closed the connection' }),
  });
  return () => {
    sub.unsubscribe();
    conn.destroy();
  };
});

const ticker = fromCallback<ClientEvent, { clock: Clock; every: number }>(({ sendBack, input }) => {
  const t = input.clock.setInterval(() => sendBack({ type: 'TICK' }), input.every);
  return () => t.cancel();
});

function sendMore(context: ClientContext): Partial<ClientContext> {
  const { conn, opts } = context;
  const window = opts.wire === 'json' ? 1 : opts.window ?? 64;
  let { next, inflight } = context;
  if (!conn) return {};
  const log = context.logger;
  const now = context.clock.now();
  while (next < opts.packets.length && inflight < window) {
    const p = opts.packets[next]!;
    log.info('send', `Sending message ${p.payload} to privacy policy ${p.privPoliId} through reverse proxy running on port ${opts.proxy.port}`, {
      client: p.srcid, policy: p.privPoliId, payload: p.payload, seq: next,
    });
    const msg: DataMsg = { type: MsgType.DATA, seq: next, srcid: p.srcid, privPoliId: p.privPoliId, payload: p.payload, payloadsize: Buffer.byteLength(p.payload) };
    context.sentAt[next] = now;
    conn.send(msg);
    next++;
    inflight++;
  }
  return { next, inflight };
}

function settle(context: ClientContext, index: number, result: Omit<Result, 'packet'>): boolean {
  const r = context.results[index];
  if (!r || r.correct !== undefined || r.error !== undefined) return false;
  Object.assign(r, result);
  if (context.sentAt[index] !== undefined) r.latencyMs = context.clock.now() - context.sentAt[index]!;
  context.remaining--;
  context.inflight--;
  return true;
}

export const clientMachine = setup({
  types: {
    context: {} as ClientContext,
    events: {} as ClientEvent,
    input: {} as ClientOptions,
    output: {} as { results: Result[] },
  },
  actors: { clientSocket, ticker },
  actions: {
    start: assign(({ context, event }) => {
      if (event.type !== 'CONNECTED') return {};
      return { conn: event.conn, ...sendMore({ ...context, conn: event.conn }) };
    }),
    receive: assign(({ context, event }) => {
      if (event.type !== 'ANSWERS') return {};
      const log = context.logger;
      for (const m of event.messages) {
        if (m.type === MsgType.ACK) {
          const r = context.results[m.seq];
          if (!r) continue;
          const correct = m.payload === sha1Hex(r.packet.payload);
          if (!settle(context, m.seq, { server: m.srcid, hash: m.payload, correct })) continue;
          log.info('answer', `Receiving a response from the server payload: ${m.payload}`, { server: m.srcid, payload: m.payload, seq: m.seq });
          if (correct) log.info('verified', 'Hash of payload is correct', { seq: m.seq, server: m.srcid });
          else log.error('wrong_hash', 'Hash of payload is not correct', { seq: m.seq, server: m.srcid, expected: sha1Hex(r.packet.payload), got: m.payload });
        } else if (m.type === MsgType.ERROR) {
          if (m.seq === undefined) {
            // Not about one request: the proxy is closing this connection.
            log.error('proxy_error', `The reverse proxy said ${m.code}: ${m.message}`, { code: m.code });
            continue;
          }
          if (!settle(context, m.seq, { error: m.code, message: m.message })) continue;
          log.error('request_failed', `Request ${m.seq} failed: ${m.code}: ${m.message}`, { seq: m.seq, code: m.code });
        }
      }
      return { remaining: context.remaining, inflight: context.inflight, ...sendMore(context) };
    }),
    expire: assign(({ context }) => {
      const timeout = context.opts.timeoutMs ?? 5000;
      const now = context.clock.now();
      for (let i = 0; i < context.next; i++) {
        const sent = context.sentAt[i];
        if (sent !== undefined && now - sent >= timeout && settle(context, i, { error: 'CLIENT_TIMEOUT', message: `no answer within ${timeout} ms` })) {
          context.logger.error('request_failed', `Request ${i} got no answer within ${timeout} ms`, { seq: i, code: 'CLIENT_TIMEOUT' });
        }
      }
      return { remaining: context.remaining, inflight: context.inflight, ...sendMore(context) };
    }),
    failRest: assign(({ context, event }) => {
      const why = event.type === 'CONNECT_FAILED' || event.type === 'CLOSED' ? event.error : 'stopped';
      const code = event.type === 'CONNECT_FAILED' ? 'CONNECT_FAILED' : 'CONNECTION_LOST';
      let failed = 0;
      for (const r of context.results) {
        if (r.correct === undefined && r.error === undefined) {
          r.error = code;
          r.message = why;
          failed++;
        }
      }
      if (failed) context.logger.error('connection', `${why}: ${failed} request(s) unanswered`, { code, count: failed });
      return { remaining: 0 };
    }),
  },
  guards: {
    allAnswered: ({ context }) => context.remaining === 0,
  },
}).createMachine({
  id: 'client',
  context: ({ input }) => ({
    opts: input,
    logger: input.logger ?? silentLogger,
    clock: input.clock ?? systemClock,
    results: input.packets.map((packet) => ({ packet })),
    sentAt: [],
    next: 0,
    inflight: 0,
    remaining: input.packets.length,
  }),
  invoke: { id: 'socket', src: 'clientSocket', input: ({ context }) => ({ proxy: context.opts.proxy, wire: context.opts.wire }) },
  initial: 'connecting',
  states: {
    connecting: {
      always: { guard: 'allAnswered', target: 'done' },
      on: {
        CONNECTED: { target: 'sending', actions: 'start' },
        CONNECT_FAILED: { target: 'done', actions: 'failRest' },
        CLOSED: { target: 'done', actions: 'failRest' },
      },
    },
    sending: {
      invoke: {
        id: 'ticker',
        src: 'ticker',
        input: ({ context }) => ({ clock: context.clock, every: Math.max(10, Math.min(250, (context.opts.timeoutMs ?? 5000) / 10)) }),
      },
      always: { guard: 'allAnswered', target: 'done' },
      on: {
        ANSWERS: { actions: 'receive' },
        TICK: { actions: 'expire' },
        CLOSED: { target: 'done', actions: 'failRest' },
      },
    },
    done: { type: 'final' },
  },
  output: ({ context }) => ({ results: context.results }),
});

export type ClientActor = ActorRefFrom<typeof clientMachine>;
