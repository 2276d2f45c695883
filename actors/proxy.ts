/**
 * The reverse proxy. Registers servers into per-policy pools, forwards each
 * client request to the pool's next member over a persistent upstream link,
 * and returns the one answer every request gets: an ACK, or an ERROR with a
 * stable code, within the request timeout.
 *
 * starting --LISTENING--> running --STOP--> draining --DRAINED / drain timeout--> stopped
 *     \--LISTEN_FAILED--> failed
 *
 * Transitions are driven by the socket streams: the reads of client
 * connections in one turn of the event loop become one FORWARD event
 * carrying every batch.
 *
 * Members of a pool are `connecting` (link not verified yet), `serving`,
 * `down` (link failed: probed with backoff until it answers again) or
 * `ejected` (too many consecutive failures: out for a while). Only serving
 * members below their in-flight limit take requests; a failed try is retried
 * on the next member; requests that find every member busy wait in a bounded
 * queue, and past it get OVERLOADED.
 */
import { assign, enqueueActions, sendTo, setup, type ActorRefFrom, type AnyActorRef } from 'xstate';
import { ErrorCode, ProtocolError, type ErrorCode as Code } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import { errorMsg, MsgType, type DataMsg, type SetupMsg } from '../transport/messages.js';
import { BusyPoll } from '../transport/busy-poll.js';
import type { Connection } from '../transport/socket.js';
import { dial, type TlsMaterial } from '../transport/tls.js';
import { systemClock, type Clock, type Timer } from './clock.js';
import type { Inflight } from './inflight.js';
import { silentLogger, type Logger } from './logger.js';
import { poolMachine } from './pool.js';
import { tcpConnect, upstreamMachine, type LinkTraffic, type ProxyRequest, type Reply, type SocketFactory, type UpstreamRef, type UpstreamReport } from './upstream.js';
import { OLD_SERVER_DEFAULTS, upstreamJsonMachine, type OldServerOptions } from './upstream-json.js';
import { drainWatch, listener, pinger, sweeper } from './proxy-io.js';
import {
  checkSecret, current, drainWaiting, eject, isLoopback, makeDeliver, makeEligible, makeReply, makeUnrouted, normaliseHost, refuse,
  removeServer, retry, spawnLink, sweepInterval,
} from './routing.js';

export interface ProxyOptions {
  /** Port to listen on; 0 picks a free one. Default 2100. */
  port?: number;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string;
  /** Whole-request timeout in ms: every request is answered within it. Default 5000. */
  timeoutMs?: number;
  /** Retries of a failed try on other members of the pool. Default 2. */
  retries?: number;
  /** Timeout of one try, in ms. Default: the request timeout divided by (retries + 1). */
  tryTimeoutMs?: number;
  /** Largest frame accepted from any peer. Default 1 MiB. */
  maxFrameBytes?: number;
  /** Unanswered requests one client connection may have before its reads pause. Default 4096. */
  maxClientInflight?: number;
  /** Requests in flight to one server; past it the server takes no more until answers come. Default 1024. */
  maxServerInflight?: number;
  /** Requests one pool may hold waiting for a member with room; past it, OVERLOADED. Default 1024. */
  queueLimit?: number;
  /** Connections the proxy accepts at once (clients and servers). Default 20000. */
  maxConnections?: number;
  /** PING every registration connection this often (ms). Default 1000. */
  pingIntervalMs?: number;
  /** Missed PONGs after which a server is removed. Default 3. */
  pingMisses?: number;
  /** First delay before probing a server that went down (ms); doubles per failed probe. Default 1000. */
  probeInitialMs?: number;
  /** Longest delay between probes (ms). Default 30000. */
  probeMaxMs?: number;
  /** Consecutive failures (try timeouts, error answers) that eject a server. Default 5. */
  ejectAfter?: number;
  /** An ejected server stays out this long times the number of its ejections (ms). Default 30000. */
  ejectBaseMs?: number;
  /** On STOP, how long to wait for requests in flight before answering them SHUTTING_DOWN (ms). Default 5000. */
  drainTimeoutMs?: number;
  /** Registration secret every server must present (unless `tokens` names its policy). */
  token?: string;
  /** Per-policy registration secrets. When given, a policy it does not name takes `token`, or no registrations at all. */
  tokens?: Record<string, string>;
  /** TLS for the listener (clients and servers connect over it); with a CA, peers must present certificates it signed. */
  tls?: TlsMaterial;
  /** TLS for the proxy's connections to servers: the CA that signed servers' certificates, and the proxy's own certificate for mutual TLS. */
  upstreamTls?: TlsMaterial;
  /** Close a client or registration connection after this long without bytes from it (ms; 0 = never). Default 60000. */
  idleTimeoutMs?: number;
  /** A frame begun must be complete within this long (ms; 0 = no limit). Default 10000. */
  frameTimeoutMs?: number;
  /** Connections from one address at once (0 = no limit). Default: none on loopback, 1024 on any other address. */
  maxConnectionsPerPeer?: number;
  /**
   * After traffic, keep polling the sockets this long instead of sleeping
   * (microseconds; 0 = off, the default). Lower one-at-a-time latency on
   * virtual machines, for up to one core of CPU while traffic flows
   * (transport/busy-poll.ts).
   */
  busyPollUs?: number;
  logger?: Logger;
  clock?: Clock;
  /** How the proxy dials servers (tests inject failures here). */
  connect?: SocketFactory;
  /** Told of every answer, retry and ejection: feeds metrics and the inspector. */
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
  /** A request that failed on `failed` is being tried again on another member. */
  retried?(policy: string, failed: string, reason: string): void;
  /** A member was taken out of rotation (or put back, with `back` true). */
  ejected?(policy: string, member: string, reason: string, back: boolean): void;
}

export type MemberState = 'connecting' | 'serving' | 'down' | 'ejected';

/** A registered server. Mutable record owned by the proxy machine; only its actions change it. */
export interface ServerEntry {
  id: string;
  policy: string;
  host: string;
  port: number;
  /** The connection the server registered on; its closing is the server leaving. None for an old server. */
  registration?: Connection;
  /** `json`: an old server, reached one request per connection (upstream-json.ts); it leaves when its link goes down. */
  wire: Connection['wire'];
  link: UpstreamRef;
  /** The link's traffic side, which takes requests directly while the link is open (none for old servers' links). */
  traffic?: LinkTraffic;
  /** The link's table of unanswered requests (for the in-flight limit). */
  inflight: Inflight<ProxyRequest>;
  state: MemberState;
  ejections: number;
  probeDelay: number;
  /** Requests the pool has picked this member for in the batch being routed, not yet handed to its link. */
  planned: number;
  /** The upstream link's read count at the last liveness round. */
  seenReads?: number;
  /** Set while the member is down or being probed: when it went down. */
  downSince?: number;
  timer?: Timer;
}

export type Opts = Required<Omit<ProxyOptions, 'logger' | 'clock' | 'connect' | 'observer' | 'tryTimeoutMs' | 'token' | 'tokens' | 'tls' | 'upstreamTls' | 'maxConnectionsPerPeer'>> & {
  tryTimeoutMs: number;
  token?: string;
  tokens?: Record<string, string>;
  tls?: TlsMaterial;
  maxConnectionsPerPeer: number;
};

export interface ProxyContext {
  opts: Opts;
  observer?: ProxyObserver;
  logger: Logger;
  clock: Clock;
  connect: SocketFactory;
  port: number;
  pools: Map<string, AnyActorRef>;
  servers: Map<string, ServerEntry>;
  /** Requests waiting for a member with room, per policy (bounded by queueLimit). */
  waiting: Map<string, ProxyRequest[]>;
  busy: Set<Inflight<ProxyRequest>>;
  linkSeq: number;
  error?: string;
  /** The proxy actor itself, for timers that send it events later. */
  self?: AnyActorRef;
  /** The one path every request's answer takes (made once, from this context). */
  reply: Reply;
  /** Keeps the event loop polling after traffic, when `busyPollUs` is set. */
  busyPoll?: BusyPoll;
}

/** The requests one read of one client connection brought. */
export interface ForwardBatch {
  conn: Connection;
  requests: DataMsg[];
}

export type ProxyEvent =
  | { type: 'LISTENING'; port: number }
  | { type: 'LISTEN_FAILED'; error: string }
  | { type: 'REGISTER'; conn: Connection; setup: SetupMsg }
  | { type: 'FORWARD'; batches: ForwardBatch[] }
  | { type: 'DEREGISTER'; conn: Connection; reason: string }
  | { type: 'BAD_INPUT'; conn: Connection; error: ProtocolError }
  | { type: 'CONN_CLOSED'; conn: Connection; error?: string }
  | UpstreamReport
  | { type: 'PROBE'; member: string }
  | { type: 'READMIT'; member: string }
  | { type: 'DRAIN_WAITING'; policy: string }
  | { type: 'EXPIRE_WAITING'; now: number }
  | { type: 'DRAINED' }
  | { type: 'STOP' };



export const proxyMachine = setup({
  types: {
    context: {} as ProxyContext,
    events: {} as ProxyEvent,
    input: {} as ProxyOptions,
  },
  actors: { listener, sweeper, pinger, drainWatch, pool: poolMachine, upstream: upstreamMachine, upstreamJson: upstreamJsonMachine },
  delays: {
    drainTimeout: ({ context }) => context.opts.drainTimeoutMs,
  },
  actions: {
    setPort: assign(({ event }) => (event.type === 'LISTENING' ? { port: event.port } : {})),
    logListening: ({ context }) => {
      const o = context.opts;
      context.logger.info('listening', `Running the reverse proxy on port ${context.port}`, { host: o.host, port: context.port, tls: Boolean(o.tls?.cert) });
      if (!isLoopback(o.host) && o.token === undefined && o.tokens === undefined) {
        context.logger.warn('insecure', `listening on ${o.host}, reachable from other machines, with no registration secret: anyone who can connect can register as a server of any privacy policy and receive its clients' data. Set --token (or REVPROXY_TOKEN) or --tokens FILE.`, { host: o.host });
      }
    },
    setError: assign(({ event }) => (event.type === 'LISTEN_FAILED' ? { error: event.error } : {})),

    register: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'REGISTER') return;
      const { conn, setup: s } = event;
      const log = context.logger;
      const denied = checkSecret(context.opts, s);
      if (denied) {
        log.warn('unauthorized', `Refused setup from ${conn.describe()} for server id ${s.id} privacy policy ${s.privPolyId}: ${denied}`, {
          id: s.id, policy: s.privPolyId, peer: conn.describe(), code: ErrorCode.UNAUTHORIZED,
        });
        conn.endWith(errorMsg(ErrorCode.UNAUTHORIZED, `registration refused: ${denied}`));
        return;
      }
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
        id: s.id, policy: s.privPolyId, port: s.listenport, host: conn.remoteAddress, wire: conn.wire,
      });
      // The first PING on a registration connection tells the server it was accepted (an old server has closed it already).
      if (conn.wire !== 'json') conn.send({ type: MsgType.PING, seq: 0 });
      enqueue.assign(({ spawn }) => {
        const host = normaliseHost(conn.remoteAddress);
        // An old server's setup connection closes at once: it is not its presence.
        const registration = conn.wire === 'json' ? undefined : conn;
        const entry = { id: s.id, policy: s.privPolyId, host, port: s.listenport, registration, wire: conn.wire, state: 'connecting', planned: 0, ejections: 0, probeDelay: context.opts.probeInitialMs } as ServerEntry;
        const linkSeq = spawnLink(context, entry, spawn);
        context.servers.set(s.id, entry);
        if (!context.pools.has(s.privPolyId)) {
          const pool = spawn('pool', {
            id: `pool:${s.privPolyId}`,
            input: { policy: s.privPolyId, deliver: makeDeliver(context), unrouted: makeUnrouted(context), eligible: makeEligible(context) },
          });
          context.pools.set(s.privPolyId, pool);
        }
        return { linkSeq };
      });
      enqueue(({ context: ctx }) => ctx.pools.get(s.privPolyId)?.send({ type: 'JOIN', id: s.id }));
    }),

    forward: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'FORWARD') return;
      const log = context.logger;
      const now = context.clock.now();
      const byPolicy = new Map<string, ProxyRequest[]>();
      const verbose = log.enabled('info');
      const limit = context.opts.maxClientInflight;
      for (const { conn, requests } of event.batches) {
        conn.outstanding += requests.length;
        if (!conn.throttled && conn.outstanding >= limit) {
          conn.throttled = true;
          conn.pause();
        }
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
      }
      for (const [policy, reqs] of byPolicy) {
        const pool = context.pools.get(policy);
        if (pool) enqueue.sendTo(pool, { type: 'ROUTE', requests: reqs });
        else refuse(context, reqs, ErrorCode.NO_SERVER, `no server is registered for privacy policy ${policy}`);
      }
    }),

    refuseNew: ({ context, event }) => {
      if (event.type !== 'FORWARD') return;
      const reply = context.reply;
      for (const { conn, requests } of event.batches) {
        conn.outstanding += requests.length;
        for (const msg of requests) {
          reply({ client: conn, msg, arrived: context.clock.now() }, errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy is shutting down and takes no new requests; try another proxy'));
        }
      }
    },

    deregister: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'DEREGISTER' && event.type !== 'CONN_CLOSED' && event.type !== 'BAD_INPUT') return;
      const conn = event.conn;
      if (conn.role !== 'registration') return;
      for (const entry of context.servers.values()) {
        if (entry.registration !== conn) continue;
        const reason =
          event.type === 'DEREGISTER' ? event.reason
          : event.type === 'BAD_INPUT' ? `bad input on its registration connection: ${event.error.message}`
          : event.error ? `its registration connection failed: ${event.error}` : 'its registration connection closed';
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

    upstreamUp: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'UPSTREAM_UP') return;
      const entry = current(context, event.member, event.linkId);
      if (!entry) return;
      const wasDown = entry.downSince !== undefined;
      entry.state = 'serving';
      entry.downSince = undefined;
      entry.probeDelay = context.opts.probeInitialMs;
      if (wasDown) {
        context.logger.info('readmit', `Server id ${entry.id} answers again; back in rotation for privacy policy ${entry.policy}`, {
          id: entry.id, policy: entry.policy, reason: 'probe succeeded',
        });
        context.observer?.ejected?.(entry.policy, entry.id, 'probe succeeded', true);
      } else {
        context.logger.debug('serving', `Server id ${entry.id} is reachable and serving privacy policy ${entry.policy}`, { id: entry.id, policy: entry.policy });
      }
      drainWaiting(context, entry.policy, enqueue);
    }),

    upstreamDown: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'UPSTREAM_DOWN') return;
      const entry = current(context, event.member, event.linkId);
      if (entry?.wire === 'json') {
        // An old server that restarts sends its setup again: nothing to probe for.
        removeServer(context, entry, `it is gone from ${entry.host}:${entry.port}: ${event.error}`, enqueue);
      } else if (entry) {
        entry.state = 'down';
        entry.downSince ??= context.clock.now();
        const delay = entry.probeDelay;
        entry.probeDelay = Math.min(entry.probeDelay * 2, context.opts.probeMaxMs);
        context.logger.warn('down', `Server id ${entry.id} is unreachable at ${entry.host}:${entry.port} (${event.error}); out of rotation, next probe in ${delay} ms`, {
          id: entry.id, policy: entry.policy, reason: event.error, probeInMs: delay,
        });
        context.observer?.ejected?.(entry.policy, entry.id, event.error, false);
        const self = context.self;
        entry.timer?.cancel();
        entry.timer = context.clock.setTimeout(() => self?.send({ type: 'PROBE', member: entry.id }), delay);
      }
      retry(context, event.member, event.requests, ErrorCode.UPSTREAM_FAILED, `server ${event.member} failed: ${event.error}`, enqueue);
    }),

    upstreamRetry: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'UPSTREAM_RETRY') return;
      const entry = current(context, event.member, event.linkId);
      if (entry && entry.state === 'serving' && event.failures >= context.opts.ejectAfter) eject(context, entry, event.failures);
      retry(context, event.member, event.requests, event.code, event.reason, enqueue);
    }),

    probe: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'PROBE') return;
      const entry = context.servers.get(event.member);
      if (!entry || entry.state !== 'down') return;
      context.logger.debug('probe', `Probing server id ${entry.id} at ${entry.host}:${entry.port}`, { id: entry.id });
      entry.state = 'connecting';
      enqueue.assign(({ spawn }) => ({ linkSeq: spawnLink(context, entry, spawn) }));
    }),

    readmit: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'READMIT') return;
      const entry = context.servers.get(event.member);
      if (!entry || entry.state !== 'ejected') return;
      entry.state = 'serving';
      enqueue.sendTo(entry.link, { type: 'RESET_FAILURES' });
      context.logger.info('readmit', `Server id ${entry.id} is back in rotation for privacy policy ${entry.policy} after its ejection`, {
        id: entry.id, policy: entry.policy, reason: 'ejection time over',
      });
      context.observer?.ejected?.(entry.policy, entry.id, 'ejection time over', true);
      drainWaiting(context, entry.policy, enqueue);
    }),

    drainWaitingQueue: enqueueActions(({ context, event, enqueue }) => {
      if (event.type === 'DRAIN_WAITING') drainWaiting(context, event.policy, enqueue, true);
    }),

    expireWaiting: ({ context, event }) => {
      if (event.type !== 'EXPIRE_WAITING') return;
      const reply = context.reply;
      for (const [policy, q] of context.waiting) {
        let n = 0;
        while (n < q.length && q[n]!.arrived + context.opts.timeoutMs <= event.now) n++;
        if (n === 0) continue;
        for (const req of q.splice(0, n)) {
          reply(req, errorMsg(ErrorCode.TIMEOUT, `no server of privacy policy ${policy} had room within ${context.opts.timeoutMs} ms`));
        }
      }
    },

    stopAccepting: ({ context }) => {
      context.logger.info('draining', `Draining: no new connections; answering the requests in flight (at most ${context.opts.drainTimeoutMs} ms)`, {
        drainTimeoutMs: context.opts.drainTimeoutMs,
      });
    },

    failRemaining: ({ context }) => {
      const reply = context.reply;
      let n = 0;
      for (const entry of context.servers.values()) {
        for (const p of entry.inflight.takeAll()) {
          reply(p.req, errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy shut down before the server answered'));
          n++;
        }
      }
      for (const q of context.waiting.values()) {
        for (const req of q.splice(0)) {
          reply(req, errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy shut down before a server had room'));
          n++;
        }
      }
      if (n) context.logger.warn('drain_timeout', `Drain timeout: answered ${n} request(s) SHUTTING_DOWN`, { count: n });
    },

    stopAll: ({ context }) => {
      for (const entry of context.servers.values()) {
        entry.timer?.cancel();
        entry.registration?.endWith();
      }
      context.logger.info('stopped', 'Reverse proxy stopped', { port: context.port });
    },
  },
}).createMachine({
  id: 'proxy',
  context: ({ input, self }) => {
    const retries = input.retries ?? 2;
    const timeoutMs = input.timeoutMs ?? 5000;
    const ctx: ProxyContext = {
      opts: {
        port: input.port ?? 2100,
        host: input.host ?? '127.0.0.1',
        timeoutMs,
        retries,
        tryTimeoutMs: input.tryTimeoutMs ?? Math.ceil(timeoutMs / (retries + 1)),
        maxFrameBytes: input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
        maxClientInflight: input.maxClientInflight ?? 4096,
        maxServerInflight: input.maxServerInflight ?? 1024,
        queueLimit: input.queueLimit ?? 1024,
        maxConnections: input.maxConnections ?? 20000,
        pingIntervalMs: input.pingIntervalMs ?? 1000,
        pingMisses: input.pingMisses ?? 3,
        probeInitialMs: input.probeInitialMs ?? 1000,
        probeMaxMs: input.probeMaxMs ?? 30000,
        ejectAfter: input.ejectAfter ?? 5,
        ejectBaseMs: input.ejectBaseMs ?? 30000,
        drainTimeoutMs: input.drainTimeoutMs ?? 5000,
        oldServers: { ...OLD_SERVER_DEFAULTS, ...input.oldServers },
        token: input.token,
        tokens: input.tokens,
        tls: input.tls,
        idleTimeoutMs: input.idleTimeoutMs ?? 60000,
        frameTimeoutMs: input.frameTimeoutMs ?? 10000,
        maxConnectionsPerPeer: input.maxConnectionsPerPeer ?? (isLoopback(input.host ?? '127.0.0.1') ? 0 : 1024),
        busyPollUs: input.busyPollUs ?? 0,
      },
      logger: input.logger ?? silentLogger,
      clock: input.clock ?? systemClock,
      connect: input.connect ?? (input.upstreamTls ? (host, port) => dial(host, port, input.upstreamTls) : tcpConnect),
      observer: input.observer,
      port: input.port ?? 2100,
      pools: new Map(),
      servers: new Map(),
      waiting: new Map(),
      busy: new Set(),
      linkSeq: 0,
      self,
      reply: () => {},
      busyPoll: input.busyPollUs ? new BusyPoll({ windowUs: input.busyPollUs }) : undefined,
    };
    ctx.reply = makeReply(ctx);
    return ctx;
  },
  invoke: {
    id: 'listener',
    src: 'listener',
    input: ({ context }) => ({
      host: context.opts.host,
      port: context.opts.port,
      maxFrameBytes: context.opts.maxFrameBytes,
      maxConnections: context.opts.maxConnections,
      maxConnectionsPerPeer: context.opts.maxConnectionsPerPeer,
      idleTimeoutMs: context.opts.idleTimeoutMs,
      frameTimeoutMs: context.opts.frameTimeoutMs,
      tls: context.opts.tls,
      logger: context.logger,
      busyPoll: context.busyPoll,
    }),
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
      invoke: [
        {
          id: 'sweeper',
          src: 'sweeper',
          input: ({ context }) => ({ busy: context.busy, waiting: context.waiting, timeoutMs: context.opts.timeoutMs, clock: context.clock, every: sweepInterval(context.opts.tryTimeoutMs) }),
        },
        {
          id: 'pinger',
          src: 'pinger',
          input: ({ context }) => ({ servers: context.servers, clock: context.clock, every: context.opts.pingIntervalMs, misses: context.opts.pingMisses }),
        },
      ],
      on: {
        REGISTER: { actions: 'register' },
        FORWARD: { actions: 'forward' },
        STOP: { target: 'draining' },
      },
    },
    draining: {
      entry: ['stopAccepting', sendTo('listener', { type: 'STOP' })],
      invoke: [
        {
          id: 'sweeper',
          src: 'sweeper',
          input: ({ context }) => ({ busy: context.busy, waiting: context.waiting, timeoutMs: context.opts.timeoutMs, clock: context.clock, every: sweepInterval(context.opts.tryTimeoutMs) }),
        },
        { id: 'drainWatch', src: 'drainWatch', input: ({ context }) => ({ busy: context.busy, waiting: context.waiting }) },
      ],
      after: { drainTimeout: { target: 'stopped', actions: 'failRemaining' } },
      on: {
        FORWARD: { actions: 'refuseNew' },
        REGISTER: { actions: ({ event }) => event.conn.endWith(errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy is shutting down; register with another proxy')) },
        DRAINED: { target: 'stopped' },
        STOP: { target: 'stopped', actions: 'failRemaining' },
      },
    },
    stopped: { type: 'final', entry: 'stopAll' },
    failed: { type: 'final' },
  },
  on: {
    DEREGISTER: { actions: 'deregister' },
    BAD_INPUT: { actions: ['badInput', 'deregister'] },
    CONN_CLOSED: { actions: ['connClosed', 'deregister'] },
    UPSTREAM_UP: { actions: 'upstreamUp' },
    UPSTREAM_DOWN: { actions: 'upstreamDown' },
    UPSTREAM_RETRY: { actions: 'upstreamRetry' },
    PROBE: { actions: 'probe' },
    READMIT: { actions: 'readmit' },
    DRAIN_WAITING: { actions: 'drainWaitingQueue' },
    EXPIRE_WAITING: { actions: 'expireWaiting' },
  },
});

export type ProxyActor = ActorRefFrom<typeof proxyMachine>;
export { describeListenError } from './proxy-io.js';
export { isLoopback } from './routing.js';
