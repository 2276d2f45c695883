/**
 * The reverse proxy. Registers servers into per-policy pools, forwards each
 * client request to the pool's next member over a persistent upstream link,
 * and returns the one answer every request gets.
 *
 * starting --LISTENING--> running --STOP--> stopped
 *     \--LISTEN_FAILED--> failed
 *
 * Transitions are driven by the socket streams: every read of a client
 * connection becomes one FORWARD event carrying the whole batch.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { assign, enqueueActions, fromCallback, setup, type ActorRefFrom, type AnyActorRef } from 'xstate';
import { ErrorCode, ProtocolError, type ErrorCode as Code } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import { errorMsg, MsgType, type AckMsg, type DataMsg, type ErrorMsg, type SetupMsg } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { systemClock, type Clock } from './clock.js';
import type { Inflight } from './inflight.js';
import { silentLogger, type Logger } from './logger.js';
import { poolMachine } from './pool.js';
import { tcpConnect, upstreamMachine, type ProxyRequest, type SocketFactory, type UpstreamRef } from './upstream.js';
import { OLD_SERVER_DEFAULTS, upstreamJsonMachine, type OldServerOptions } from './upstream-json.js';

export interface ProxyOptions {
  /** Port to listen on; 0 picks a free one. Default 2100. */
  port?: number;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  /** Request timeout in ms. Default 5000. */
  timeoutMs?: number;
  /** Largest frame accepted from any peer. Default 1 MiB. */
  maxFrameBytes?: number;
  /** Unanswered requests one client connection may have before its reads pause. Default 4096. */
  maxClientInflight?: number;
  logger?: Logger;
  clock?: Clock;
  /** How the proxy dials servers (tests inject failures here). */
  connect?: SocketFactory;
  /** Told of every answer (and, as the proxy grows, retries and ejections): feeds metrics and the inspector. */
  observer?: ProxyObserver;
  /** Servers that registered over the old JSON wire: connections per server, timeouts before one leaves. */
  oldServers?: OldServerOptions;
}

/**
 * Hooks for metrics and inspection. Called synchronously on the hot path:
 * keep them cheap (count, don't format).
 */
export interface ProxyObserver {
  /** A request got its one answer: `outcome` is 'ok' for an ACK, else the error code. */
  answered?(policy: string, member: string | undefined, outcome: 'ok' | Code, latencyMs: number): void;
  /** A request was sent to `member` again after `failed` failed it. */
  retried?(policy: string, failed: string, reason: string): void;
  /** A member was taken out of rotation (or put back, with `back` true). */
  ejected?(policy: string, member: string, reason: string, back: boolean): void;
}

interface ServerEntry {
  id: string;
  policy: string;
  host: string;
  port: number;
  registration: Connection;
  link: UpstreamRef;
  /** `json`: an old server, reached one request per connection; its setup connection closing is not its leaving. */
  wire: Connection['wire'];
}

export interface ProxyContext {
  opts: Required<Omit<ProxyOptions, 'logger' | 'clock' | 'connect' | 'observer'>>;
  observer?: ProxyObserver;
  logger: Logger;
  clock: Clock;
  connect: SocketFactory;
  port: number;
  pools: Map<string, AnyActorRef>;
  servers: Map<string, ServerEntry>;
  busy: Set<Inflight<ProxyRequest>>;
  linkSeq: number;
  error?: string;
}

export type ProxyEvent =
  | { type: 'LISTENING'; port: number }
  | { type: 'LISTEN_FAILED'; error: string }
  | { type: 'REGISTER'; conn: Connection; setup: SetupMsg }
  | { type: 'FORWARD'; conn: Connection; requests: DataMsg[] }
  | { type: 'DEREGISTER'; conn: Connection; reason: string }
  | { type: 'BAD_INPUT'; conn: Connection; error: ProtocolError }
  | { type: 'CONN_CLOSED'; conn: Connection; error?: string }
  | { type: 'UPSTREAM_DOWN'; member: string; linkId: string; error: string }
  | { type: 'STOP' };

/** Owns the listening socket; turns each accepted connection's reads into proxy events. */
const listener = fromCallback<ProxyEvent, { host: string; port: number; maxFrameBytes: number }>(({ sendBack, input }) => {
  const conns = new Set<Connection>();
  const server: Server = createServer((socket: Socket) => {
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'sniff' });
    conns.add(conn);
    socket.on('error', () => {});
    conn.messages$.subscribe({
      next: (messages) => {
        let data: DataMsg[] | undefined;
        const flush = (): void => {
          if (data) sendBack({ type: 'FORWARD', conn, requests: data });
          data = undefined;
        };
        for (const m of messages) {
          if (conn.closed) return;
          if (m.type === MsgType.DATA && conn.role !== 'registration') {
            conn.role = 'client';
            (data ??= []).push(m);
            continue;
          }
          flush();
          if (m.type === MsgType.SETUP && conn.role === 'unknown') {
            conn.role = 'registration';
            sendBack({ type: 'REGISTER', conn, setup: m });
          } else if (m.type === MsgType.DEREGISTER && conn.role === 'registration') {
            sendBack({ type: 'DEREGISTER', conn, reason: 'the server asked to leave' });
          } else if (m.type === MsgType.PONG && conn.role === 'registration') {
            // Liveness answers carry nothing more for now.
          } else {
            const what = conn.role === 'unknown' ? 'a first message' : `a ${conn.role} connection`;
            sendBack({
              type: 'BAD_INPUT',
              conn,
              error: new ProtocolError(ErrorCode.BAD_REQUEST, `message type ${m.type} is not allowed as ${what}`),
            });
            return;
          }
        }
        flush();
      },
      error: (err: Error) => {
        conns.delete(conn);
        if (err instanceof ProtocolError) sendBack({ type: 'BAD_INPUT', conn, error: err });
        else sendBack({ type: 'CONN_CLOSED', conn, error: err.message });
      },
      complete: () => {
        conns.delete(conn);
        sendBack({ type: 'CONN_CLOSED', conn });
      },
    });
  });
  server.on('error', (err) => sendBack({ type: 'LISTEN_FAILED', error: describeListenError(err, input.host, input.port) }));
  server.listen(input.port, input.host, () => {
    const addr = server.address();
    sendBack({ type: 'LISTENING', port: typeof addr === 'object' && addr ? addr.port : input.port });
  });
  return () => {
    server.close();
    for (const c of conns) c.destroy();
  };
});

/** Checks the in-flight tables for requests past their deadline, without an event when none is. */
const sweeper = fromCallback<ProxyEvent, { busy: Set<Inflight<ProxyRequest>>; clock: Clock; every: number }>(({ input }) => {
  const timer = input.clock.setInterval(() => {
    const now = input.clock.now();
    for (const table of input.busy) if (table.oldestDeadline() <= now) table.owner?.send({ type: 'EXPIRE', now });
  }, input.every);
  return () => timer.cancel();
});

export function describeListenError(err: NodeJS.ErrnoException, host: string, port: number): string {
  if (err.code === 'EADDRINUSE') return `port ${port} on ${host} is already in use: stop what holds it or choose another port`;
  if (err.code === 'EACCES') return `no permission to listen on port ${port}: choose a port above 1023`;
  if (err.code === 'EADDRNOTAVAIL') return `address ${host} is not on this machine: choose a local address`;
  return `cannot listen on ${host}:${port}: ${err.message}`;
}

export const proxyMachine = setup({
  types: {
    context: {} as ProxyContext,
    events: {} as ProxyEvent,
    input: {} as ProxyOptions,
  },
  actors: { listener, sweeper, pool: poolMachine, upstream: upstreamMachine, upstreamJson: upstreamJsonMachine },
  actions: {
    setPort: assign(({ event }) => (event.type === 'LISTENING' ? { port: event.port } : {})),
    logListening: ({ context }) =>
      context.logger.info('listening', `Running the reverse proxy on port ${context.port}`, { host: context.opts.host, port: context.port }),
    setError: assign(({ event }) => (event.type === 'LISTEN_FAILED' ? { error: event.error } : {})),

    register: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'REGISTER') return;
      const { conn, setup: s } = event;
      const log = context.logger;
      const held = context.servers.get(s.id);
      // An old server that restarts sends its setup again, and cannot read a refusal: take the new one.
      if (held && held.wire === 'json' && conn.wire === 'json') removeServer(context, held, 'it sent a new setup message', enqueue);
      else if (held) {
        log.warn('register_refused', `Refused setup from ${conn.describe()}: server id ${s.id} is already registered`, {
          id: s.id, peer: conn.describe(), code: ErrorCode.DUPLICATE_ID,
        });
        conn.endWith(errorMsg(ErrorCode.DUPLICATE_ID, `server id ${s.id} is already registered by a live server; pick another id`));
        return;
      }
      log.info('register', `Received setup message from server id ${s.id} privacy policy ${s.privPolyId} port ${s.listenport}`, {
        id: s.id, policy: s.privPolyId, port: s.listenport, host: conn.remoteAddress,
      });
      const linkSeq = context.linkSeq + 1;
      enqueue.assign(({ spawn }) => {
        const host = normaliseHost(conn.remoteAddress);
        const link = spawn(conn.wire === 'json' ? 'upstreamJson' : 'upstream', {
          id: `upstream:${s.id}#${linkSeq}`,
          input: {
            old: context.opts.oldServers,
            member: s.id,
            policy: s.privPolyId,
            host,
            port: s.listenport,
            connect: context.connect,
            clock: context.clock,
            timeoutMs: context.opts.timeoutMs,
            maxFrameBytes: context.opts.maxFrameBytes,
            busy: context.busy,
            reply: makeReply(context),
            logger: context.logger,
          },
        }) as UpstreamRef;
        context.servers.set(s.id, { id: s.id, policy: s.privPolyId, host, port: s.listenport, registration: conn, link, wire: conn.wire });
        if (!context.pools.has(s.privPolyId)) {
          const pool = spawn('pool', {
            id: `pool:${s.privPolyId}`,
            input: { policy: s.privPolyId, deliver: makeDeliver(context) },
          });
          context.pools.set(s.privPolyId, pool);
        }
        return { linkSeq };
      });
      enqueue(({ context: ctx }) => ctx.pools.get(s.privPolyId)?.send({ type: 'JOIN', id: s.id }));
    }),

    forward: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'FORWARD') return;
      const { conn, requests } = event;
      const log = context.logger;
      const now = context.clock.now();
      const byPolicy = new Map<string, ProxyRequest[]>();
      conn.outstanding += requests.length;
      if (!conn.throttled && conn.outstanding >= context.opts.maxClientInflight) {
        conn.throttled = true;
        conn.pause();
      }
      const verbose = log.enabled('info');
      for (const msg of requests) {
        if (verbose) {
          log.info('request', `Received a message from client ${msg.srcid} payload ${msg.payload}`, {
            client: msg.srcid, policy: msg.privPoliId, payload: msg.payload,
          });
        }
        let group = byPolicy.get(msg.privPoliId);
        if (!group) byPolicy.set(msg.privPoliId, (group = []));
        group.push({ client: conn, msg, arrived: now });
      }
      for (const [policy, reqs] of byPolicy) {
        const pool = context.pools.get(policy);
        if (pool) enqueue.sendTo(pool, { type: 'ROUTE', requests: reqs });
        else refuseNoServer(context, reqs, policy);
      }
    }),

    deregister: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'DEREGISTER' && event.type !== 'CONN_CLOSED' && event.type !== 'BAD_INPUT') return;
      const conn = event.conn;
      if (conn.role !== 'registration') return;
      for (const entry of context.servers.values()) {
        if (entry.registration !== conn || entry.wire === 'json') continue;
        const reason =
          event.type === 'DEREGISTER' ? event.reason
          : event.type === 'BAD_INPUT' ? `bad input on its registration connection: ${event.error.message}`
          : event.error ? `registration connection failed: ${event.error}` : 'registration connection closed';
        removeServer(context, entry, reason, enqueue);
      }
    }),

    badInput: ({ context, event }) => {
      if (event.type !== 'BAD_INPUT') return;
      context.logger.warn('bad_input', `Closed connection from ${event.conn.describe()}: ${event.error.message}`, {
        peer: event.conn.describe(), code: event.error.code, role: event.conn.role,
      });
      event.conn.endWith(errorMsg(event.error.code, event.error.message));
    },

    connClosed: ({ event }) => {
      if (event.type === 'CONN_CLOSED') event.conn.closed = true;
    },

    upstreamDown: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'UPSTREAM_DOWN') return;
      const entry = context.servers.get(event.member);
      if (!entry) return;
      if (entry.link.id !== event.linkId) return; // an older link of a server that registered again
      removeServer(context, entry, `cannot reach its listen port ${entry.host}:${entry.port}: ${event.error}`, enqueue);
      entry.registration.endWith(
        errorMsg(ErrorCode.UPSTREAM_FAILED, `the proxy cannot reach your listen port ${entry.host}:${entry.port} (${event.error}); check that the server listens there`),
      );
    }),

    stopAll: ({ context }) => {
      for (const entry of context.servers.values()) entry.registration.destroy();
      context.logger.info('stopped', 'Reverse proxy stopped', { port: context.port });
    },
  },
}).createMachine({
  id: 'proxy',
  context: ({ input }) => ({
    opts: {
      port: input.port ?? 2100,
      host: input.host ?? '127.0.0.1',
      timeoutMs: input.timeoutMs ?? 5000,
      maxFrameBytes: input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      maxClientInflight: input.maxClientInflight ?? 4096,
      oldServers: { ...OLD_SERVER_DEFAULTS, ...input.oldServers },
    },
    logger: input.logger ?? silentLogger,
    clock: input.clock ?? systemClock,
    connect: input.connect ?? tcpConnect,
    observer: input.observer,
    port: input.port ?? 2100,
    pools: new Map(),
    servers: new Map(),
    busy: new Set(),
    linkSeq: 0,
  }),
  invoke: {
    id: 'listener',
    src: 'listener',
    input: ({ context }) => ({ host: context.opts.host, port: context.opts.port, maxFrameBytes: context.opts.maxFrameBytes }),
  },
  initial: 'starting',
  states: {
    starting: {
      on: {
        LISTENING: { target: 'running', actions: ['setPort', 'logListening'] },
        LISTEN_FAILED: { target: 'failed', actions: 'setError' },
      },
    },
    running: {
      invoke: {
        id: 'sweeper',
        src: 'sweeper',
        input: ({ context }) => ({ busy: context.busy, clock: context.clock, every: sweepInterval(context.opts.timeoutMs) }),
      },
      on: {
        REGISTER: { actions: 'register' },
        FORWARD: { actions: 'forward' },
        DEREGISTER: { actions: 'deregister' },
        BAD_INPUT: { actions: ['badInput', 'deregister'] },
        CONN_CLOSED: { actions: ['connClosed', 'deregister'] },
        UPSTREAM_DOWN: { actions: 'upstreamDown' },
        STOP: { target: 'stopped' },
      },
    },
    stopped: { type: 'final', entry: 'stopAll' },
    failed: { type: 'final' },
  },
});

export type ProxyActor = ActorRefFrom<typeof proxyMachine>;

function sweepInterval(timeoutMs: number): number {
  return Math.max(5, Math.min(100, Math.floor(timeoutMs / 20)));
}

/** IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) dial as plain IPv4. */
function normaliseHost(addr: string): string {
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}

function removeServer(
  context: ProxyContext,
  entry: ServerEntry,
  reason: string,
  enqueue: { sendTo: (ref: AnyActorRef, ev: { type: string; [k: string]: unknown }) => void },
): void {
  if (context.servers.get(entry.id) !== entry) return;
  context.servers.delete(entry.id);
  context.logger.info('deregister', `Server id ${entry.id} left privacy policy ${entry.policy}: ${reason}`, {
    id: entry.id, policy: entry.policy, reason,
  });
  const pool = context.pools.get(entry.policy);
  if (pool) enqueue.sendTo(pool, { type: 'LEAVE', id: entry.id, reason });
  if (entry.link.getSnapshot().status === 'active') enqueue.sendTo(entry.link, { type: 'RETIRE' });
}

function refuseNoServer(context: ProxyContext, reqs: ProxyRequest[], policy: string): void {
  const reply = makeReply(context);
  context.logger.warn('no_server', `No server serves privacy policy ${policy}; refused ${reqs.length} request(s)`, {
    policy, count: reqs.length, code: ErrorCode.NO_SERVER,
  });
  for (const r of reqs) {
    reply(r, errorMsg(ErrorCode.NO_SERVER, `no server is registered for privacy policy ${policy}`));
  }
}

/** The pool hands each member its share of a batch; requests no member can take get NO_SERVER. */
function makeDeliver(context: ProxyContext) {
  return (member: string | undefined, requests: unknown[]): void => {
    const reqs = requests as ProxyRequest[];
    const entry = member === undefined ? undefined : context.servers.get(member);
    if (!entry) {
      refuseNoServer(context, reqs, reqs[0]?.msg.privPoliId ?? '?');
      return;
    }
    entry.link.send({ type: 'SEND', requests: reqs });
  };
}

/** Every request gets exactly one answer through here. */
function makeReply(context: ProxyContext) {
  const limit = context.opts.maxClientInflight;
  const observer = context.observer?.answered ? context.observer : undefined;
  const clock = context.clock;
  return (req: ProxyRequest, answer: AckMsg | ErrorMsg, member?: string): void => {
    const client = req.client;
    observer?.answered!(req.msg.privPoliId, member, answer.type === MsgType.ACK ? 'ok' : answer.code, clock.now() - req.arrived);
    client.outstanding--;
    if (client.throttled && client.outstanding <= limit >> 1) {
      client.throttled = false;
      client.resume();
    }
    if (client.closed) return;
    client.send({ ...answer, seq: req.msg.seq });
  };
}
