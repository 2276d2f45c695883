/**
 * A client: sends packets to the proxy on one connection, pipelined up to a
 * window, matches each answer by seq, and checks it equals SHA1(payload).
 *
 * connecting --CONNECTED--> sending --(all answered)--> done
 *      \--CONNECT_FAILED--> done (every packet marked failed)
 */
import { assign, fromCallback, setup, type ActorRefFrom } from 'xstate';
import { LocalCode, type ClientCode, type ErrorCode } from '../transport/errors.js';
import { MsgType, type DataMsg, type Message } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { describeTlsError, dial, readyEvent, type TlsMaterial } from '../transport/tls.js';
import { systemClock, type Clock } from '../transport/clock.js';
import { silentLogger, type Logger } from './logger.js';
import type { Endpoint } from './server.js';
import { sha1Hex } from './sha1.js';

export interface Packet {
  srcid: string;
  privPoliId: string;
  payload: string;
}

export interface ClientOptions {
  id: string;
  /** The proxy to send through (or use `proxies`). */
  proxy?: Endpoint;
  /** Several proxies: the client uses the first and fails over to the next when one is down. */
  proxies?: Endpoint[];
  packets: Packet[];
  /** Per-request timeout in ms (default 5000). */
  timeoutMs?: number;
  /** Requests in flight at once on the connection (default 64; always 1 on the json wire). */
  window?: number;
  /** `frames` (default), or `json`: the old wire, one request at a time, for the old Python proxy. */
  wire?: 'frames' | 'json';
  /** Consecutive failed connection attempts before giving up (default: 2 per proxy). */
  maxAttempts?: number;
  /** Pause before trying the next proxy (ms, default 100). */
  failoverDelayMs?: number;
  /** TLS to the proxy: the CA that signed its certificate, and a client certificate for mutual TLS. */
  tls?: TlsMaterial;
  logger?: Logger;
  clock?: Clock;
}

export interface Result {
  packet: Packet;
  /** The id of the server that answered. */
  server?: string;
  hash?: string;
  correct?: boolean;
  /** Error code when no ack came: the proxy's (from its ERROR answer), or the client's own CLIENT_TIMEOUT / CONNECTION_LOST / CONNECT_FAILED. */
  error?: ErrorCode | ClientCode;
  message?: string;
  latencyMs?: number;
}

export interface ClientContext {
  opts: ClientOptions;
  proxies: Endpoint[];
  proxyIndex: number;
  attempts: number;
  logger: Logger;
  clock: Clock;
  conn?: Connection;
  results: Result[];
  sentAt: Array<number | undefined>;
  /** Packet indexes not sent yet on the current connection, in order. */
  toSend: number[];
  inflight: number;
  remaining: number;
  lastError?: string;
}

export type ClientEvent =
  | { type: 'CONNECTED'; conn: Connection }
  | { type: 'CONNECT_FAILED'; error: string }
  | { type: 'ANSWERS'; messages: Message[] }
  | { type: 'CLOSED'; error: string }
  | { type: 'TICK' };

const clientSocket = fromCallback<ClientEvent, { proxy: Endpoint; tls?: TlsMaterial; wire?: 'frames' | 'json' }>(({ sendBack, input }) => {
  const socket = dial(input.proxy.host, input.proxy.port, input.tls);
  // On the json wire answers carry no seq: the connection gives each the seq of the oldest unanswered request.
  const conn = new Connection(socket, { wire: input.wire });
  let connected = false;
  socket.once(readyEvent(socket), () => {
    connected = true;
    sendBack({ type: 'CONNECTED', conn });
  });
  const sub = conn.messages$.subscribe({
    next: (messages) => sendBack({ type: 'ANSWERS', messages }),
    error: (err: NodeJS.ErrnoException) => {
      if (!connected) {
        const why = err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${input.proxy.host}:${input.proxy.port}` : describeTlsError(err);
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
  let { inflight } = context;
  if (!conn) return {};
  const log = context.logger;
  const now = context.clock.now();
  const port = context.proxies[context.proxyIndex]!.port;
  while (context.toSend.length && inflight < window) {
    const i = context.toSend.shift()!;
    if (settled(context.results[i]!)) continue;
    const p = opts.packets[i]!;
    log.debug('send', `Sending message ${p.payload} to privacy policy ${p.privPoliId} through reverse proxy running on port ${port}`, {
      client: p.srcid, policy: p.privPoliId, payload: p.payload, seq: i,
    });
    const msg: DataMsg = { type: MsgType.DATA, seq: i, srcid: p.srcid, privPoliId: p.privPoliId, payload: p.payload, payloadsize: Buffer.byteLength(p.payload) };
    context.sentAt[i] = now;
    conn.send(msg);
    inflight++;
  }
  return { inflight };
}

function settled(r: Result): boolean {
  return r.correct !== undefined || r.error !== undefined;
}

function settle(context: ClientContext, index: number, result: Omit<Result, 'packet'>): boolean {
  const r = context.results[index];
  if (!r || settled(r) || context.sentAt[index] === undefined) return false;
  Object.assign(r, result);
  r.latencyMs = context.clock.now() - context.sentAt[index]!;
  context.sentAt[index] = undefined;
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
  delays: {
    failoverDelay: ({ context }) => context.opts.failoverDelayMs ?? 100,
  },
  actions: {
    start: assign(({ context, event }) => {
      if (event.type !== 'CONNECTED') return {};
      // Connecting is not progress: a proxy that accepts and then closes (TLS wanted,
      // a full proxy, an old proxy) must not keep us trying for ever. An answer is.
      return { conn: event.conn, ...sendMore({ ...context, conn: event.conn }) };
    }),
    receive: assign(({ context, event }) => {
      if (event.type !== 'ANSWERS') return {};
      const log = context.logger;
      const before = context.remaining;
      for (const m of event.messages) {
        if (m.type === MsgType.ACK) {
          const r = context.results[m.seq];
          if (!r) continue;
          const correct = m.payload === sha1Hex(r.packet.payload);
          if (!settle(context, m.seq, { server: m.srcid, hash: m.payload, correct })) continue;
          log.debug('answer', `Receiving a response from the server payload: ${m.payload}`, { server: m.srcid, payload: m.payload, seq: m.seq });
          if (correct) log.info('verified', 'Hash of payload is correct', { seq: m.seq, server: m.srcid });
          else log.error('wrong_hash', 'Hash of payload is not correct', { seq: m.seq, server: m.srcid, expected: sha1Hex(r.packet.payload), got: m.payload });
        } else if (m.type === MsgType.ERROR) {
          if (m.seq === undefined) {
            // Not about one request: the proxy is closing this connection.
            log.error('proxy_error', `The reverse proxy said ${m.code}: ${m.message}`, { code: m.code });
            continue;
          }
          if (!settle(context, m.seq, { error: m.code, message: m.message })) continue;
          const p = context.results[m.seq]!.packet;
          log.error('request_failed', `Request ${m.seq} (policy ${p.privPoliId}) failed: ${m.code}: ${m.message}`, { seq: m.seq, code: m.code, policy: p.privPoliId });
        }
      }
      const progress = context.remaining < before ? { attempts: 0 } : {};
      return { remaining: context.remaining, inflight: context.inflight, ...progress, ...sendMore(context) };
    }),
    expire: assign(({ context }) => {
      const timeout = context.opts.timeoutMs ?? 5000;
      const now = context.clock.now();
      context.sentAt.forEach((sent, i) => {
        if (sent !== undefined && now - sent >= timeout && settle(context, i, { error: LocalCode.CLIENT_TIMEOUT, message: `no answer within ${timeout} ms` })) {
          context.logger.error('request_failed', `Request ${i} got no answer within ${timeout} ms`, { seq: i, code: LocalCode.CLIENT_TIMEOUT });
        }
      });
      return { remaining: context.remaining, inflight: context.inflight, ...sendMore(context) };
    }),
    /** Requests sent on the lost connection go out again, first, on the next one. */
    failover: assign(({ context, event }) => {
      const why = event.type === 'CONNECT_FAILED' || event.type === 'CLOSED' ? event.error : 'connection lost';
      const resend: number[] = [];
      context.sentAt.forEach((sent, i) => {
        if (sent !== undefined) resend.push(i);
      });
      for (const i of resend) context.sentAt[i] = undefined;
      const next = (context.proxyIndex + 1) % context.proxies.length;
      const attempts = context.attempts + 1;
      const target = context.proxies[next]!;
      if (attempts < maxAttempts(context)) {
        const how = next === context.proxyIndex ? 'trying again' : `trying the reverse proxy at ${target.host}:${target.port}`;
        context.logger.warn('failover', `${why}; ${how}${resend.length ? ` and sending ${resend.length} unanswered request(s) again` : ''}`, {
          reason: why, proxy: `${target.host}:${target.port}`, resend: resend.length,
        });
      }
      return { toSend: [...resend, ...context.toSend], inflight: 0, conn: undefined, proxyIndex: next, attempts, lastError: why };
    }),
    failRest: assign(({ context }) => {
      const why = context.lastError ?? 'stopped';
      const code = context.results.some((r) => r.correct !== undefined) ? LocalCode.CONNECTION_LOST : LocalCode.CONNECT_FAILED;
      let failed = 0;
      for (const r of context.results) {
        if (!settled(r)) {
          r.error = code;
          r.message = why;
          failed++;
        }
      }
      if (failed) {
        const answered = context.results.length - failed;
        const hint = answered > 0 ? '' : /closed the connection|ECONNRESET|socket hang up/.test(why)
          ? " (the proxy accepted the connection and closed it without answering: does it want TLS (--tls-ca, --tls-cert), is it at its connection limit, or is it the old proxy (--wire json)?)"
          : /no reverse proxy is listening/.test(why) ? ' (start one with `revproxy proxy -port N`, or check --revproc)' : '';
        context.logger.error('connection', `${why}: ${failed} request(s) unanswered${hint}`, { code, count: failed });
      }
      return { remaining: 0 };
    }),
  },
  guards: {
    allAnswered: ({ context }) => context.remaining === 0,
    givesUp: ({ context }) => context.attempts >= maxAttempts(context),
  },
}).createMachine({
  id: 'client',
  context: ({ input }) => {
    const proxies = input.proxies ?? (input.proxy ? [input.proxy] : [{ host: '127.0.0.1', port: 2100 }]);
    return {
      opts: input,
      proxies,
      proxyIndex: 0,
      attempts: 0,
      logger: input.logger ?? silentLogger,
      clock: input.clock ?? systemClock,
      results: input.packets.map((packet) => ({ packet })),
      sentAt: [],
      toSend: input.packets.map((_, i) => i),
      inflight: 0,
      remaining: input.packets.length,
    };
  },
  initial: 'session',
  states: {
    session: {
      invoke: { id: 'socket', src: 'clientSocket', input: ({ context }) => ({ proxy: context.proxies[context.proxyIndex]!, tls: context.opts.tls, wire: context.opts.wire }) },
      always: { guard: 'allAnswered', target: 'done' },
      on: {
        CONNECT_FAILED: { target: 'failover', actions: 'failover' },
        CLOSED: { target: 'failover', actions: 'failover' },
      },
      initial: 'connecting',
      states: {
        connecting: {
          on: { CONNECTED: { target: 'sending', actions: 'start' } },
        },
        sending: {
          invoke: {
            id: 'ticker',
            src: 'ticker',
            input: ({ context }) => ({ clock: context.clock, every: Math.max(10, Math.min(250, (context.opts.timeoutMs ?? 5000) / 10)) }),
          },
          on: {
            ANSWERS: { actions: 'receive' },
            TICK: { actions: 'expire' },
          },
        },
      },
    },
    failover: {
      always: { guard: 'givesUp', target: 'done', actions: 'failRest' },
      after: { failoverDelay: 'session' },
    },
    done: { type: 'final' },
  },
  output: ({ context }) => ({ results: context.results }),
});

function maxAttempts(context: ClientContext): number {
  return context.opts.maxAttempts ?? 2 * context.proxies.length;
}

export type ClientActor = ActorRefFrom<typeof clientMachine>;
