/**
 * The proxy's options and their defaults, in one place: what a caller may
 * set (`ProxyOptions`), and the resolved set every part of the proxy reads
 * (`Opts`, from `resolveOptions`).
 */
import type { ErrorCode as Code } from '../transport/errors.js';
import { DEFAULT_PROXY_PORT, DEFAULT_PROXY_TIMEOUT_MS, isEveryAddress, isLoopback } from '../transport/address.js';
import { defaultBufferBudget } from '../transport/budget.js';
import { budgetNote, connectionsNote, defaultMaxConnections, memoryLimit } from './memory-limit.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import type { TlsMaterial, UpstreamTlsMaterial } from '../transport/tls.js';
import type { TlsFailure } from '../transport/foreign.js';
import type { Clock } from '../transport/clock.js';
import { isIP, type Socket } from 'node:net';
import { RETRY_CONDITIONS, type Peer, type ProxyRequest, type RetryCondition, type SocketFactory } from './link.js';
import type { Logger } from './logger.js';
import type { RefuseReason } from './port-limits.js';
import { DEFAULT_MAX_TLS_HANDSHAKES } from './tls-handshakes.js';

/** How the proxy treats servers of the old JSON wire. */
export interface OldServerOptions {
  /** Connections to one old server at most (each carries one request at a time); it gets more than one only once it has answered that many at once. Default 8. */
  connections?: number | undefined;
  /** Tries in a row that time out, with no answer from the server meanwhile, before it counts as gone. Default 3. */
  missesToLeave?: number | undefined;
  /** An old server sends its setup before it listens: refused dials this long after its registration are retried with backoff (ms). Default 5000. */
  registrationWindowMs?: number | undefined;
}

export const OLD_SERVER_DEFAULTS: Required<OldServerOptions> = { connections: 8, missesToLeave: 3, registrationWindowMs: 5000 };

export interface ProxyOptions {
  /** Port to listen on; 0 picks a free one. Default 2100. */
  port?: number | undefined;
  /** Address to listen on. Default 127.0.0.1. */
  host?: string | undefined;
  /** Whole-request timeout in ms: every request is answered within it. Default 5000. */
  timeoutMs?: number | undefined;
  /** Retries of a failed try on other members of the pool. Default 2. */
  retries?: number | undefined;
  /** Timeout of one try, in ms. Default: the request timeout divided by (retries + 1). */
  tryTimeoutMs?: number | undefined;
  /**
   * A try given up at the try timeout stays in flight until the request's deadline, on a server of
   * this project's (frames) wire: whichever of it and the tries after it answers first answers the
   * client (Envoy's `hedge_on_per_try_timeout`). Default true.
   */
  hedgeOnTryTimeout?: boolean | undefined;
  /** A policy's retries of failed tries over the last 10 s may be this percentage of its requests over them, plus `minRetryRate` a second (retry-budget.ts). Default 20. */
  retryBudget?: number | undefined;
  /** Retries a second a policy may always make, whatever its retry budget. Default 10. */
  minRetryRate?: number | undefined;
  /** How a try may have failed for the request to be retried (`RETRY_CONDITIONS`). Default: all of them. */
  retryOn?: readonly RetryCondition[] | undefined;
  /**
   * Servers whose link may go down while they hold one request (its tries ended `reset`) before it
   * is not sent to another: a request its handler crashes on ends every server it reaches, and
   * each retry would take down one more. 0: no limit. Default 2.
   */
  maxResets?: number | undefined;
  /** Largest frame accepted from any peer. Default 1 MiB. */
  maxFrameBytes?: number | undefined;
  /** Unanswered requests one client connection may have before its reads pause. Default 4096. */
  maxClientInflight?: number | undefined;
  /** Requests in flight to one server; past it the server takes no more until answers come. Default 1024. */
  maxServerInflight?: number | undefined;
  /**
   * Requests a server that states its `--concurrency` (its first PONG) is sent beyond it, to wait in its own
   * queue; past them a policy's requests wait in the proxy's, fair between clients. Default: its concurrency,
   * or for a server that answers quicker, as many as it answers in 5 ms when busy (`routing.ts` `serverQueue`).
   */
  maxServerQueue?: number | undefined;
  /** Requests one pool may hold waiting for a member with room; past it, OVERLOADED. Default 1024. */
  queueLimit?: number | undefined;
  /**
   * The longest a request waits in a policy's queue for a member with room (ms), as HAProxy's
   * `timeout queue`; past it the request is answered OVERLOADED, unsent (one back from a failed
   * try: that try's answer). Default: the request timeout (then TIMEOUT).
   */
  queueTimeoutMs?: number | undefined;
  /**
   * Adaptive LIFO: once a policy's queue has not been empty for this long (ms), a member with room
   * is given the newest waiting request first (each client's newest, clients still in turn), and the
   * oldest wait out `queueTimeoutMs`. Under sustained overload most requests are then answered
   * promptly instead of every one after most of the queue timeout; a burst shorter than this is
   * served oldest first. Default 0: always oldest first.
   */
  queueLifoAfterMs?: number | undefined;
  /** Connections the proxy accepts at once (clients and servers); at most what the process's open-files limit leaves room for (docs/CONFIG.md). Default 20000. */
  maxConnections?: number | undefined;
  /** PING every registration connection this often (ms). Default 1000. */
  pingIntervalMs?: number | undefined;
  /** Missed PONGs after which a server is removed. Default 3. */
  pingMisses?: number | undefined;
  /** First delay before probing a server that went down (ms); doubles per failed probe. Default 1000. */
  probeInitialMs?: number | undefined;
  /** Longest delay between probes (ms). Default 30000. */
  probeMaxMs?: number | undefined;
  /** Probes started per second at most, across all servers that are down (probes past it wait their turn). Default 200. */
  probesPerSecond?: number | undefined;
  /** Consecutive failures (try timeouts, error answers) that eject a server. Default 5. */
  ejectAfter?: number | undefined;
  /** An ejected server stays out this long times the number of its ejections in a row (ms); one is forgotten for each such time it serves. Default 30000. */
  ejectBaseMs?: number | undefined;
  /** The longest an ejection lasts (ms), however many came in a row (`ejectBaseMs` when that is longer). Default 300000. */
  ejectMaxMs?: number | undefined;
  /**
   * On STOP, how long to wait for requests in flight before answering them SHUTTING_DOWN (ms).
   * Default: `timeoutMs`, by which every request is answered anyway, so a drain cuts nothing off.
   */
  drainTimeoutMs?: number | undefined;
  /**
   * Registration secret every server must present (unless `tokens` names its policy). A list: each
   * is accepted, to change the secret without an outage (the proxies take old and new, then the
   * servers move to the new one, then the proxies drop the old: README, "Changing a secret").
   */
  token?: Secrets | undefined;
  /** Per-policy registration secrets (each one, or a list as `token`). When given, a policy it does not name takes `token`, or no registrations at all. */
  tokens?: Record<string, Secrets> | undefined;
  /** TLS for the listener (clients and servers connect over it); with a CA, peers must present certificates it signed. */
  tls?: TlsMaterial | undefined;
  /**
   * TLS for the proxy's connections to servers: the CA that signed servers' certificates (`ca`, and `crl`), the proxy's
   * own certificate for servers that ask for one (`cert`, `key`: mutual TLS), and `names`, what a server's certificate
   * must name beyond the address dialled (exact names, `*.NAME`, addresses). Without `ca` (`{}`): TLS with the system's
   * CAs, which the CLI refuses (`upstream_tls` needs `ca`) and a `warn` line says (`upstream_tls_system_cas`). Given,
   * a server whose registration says it serves plain TCP is refused; absent, one that says it serves TLS is.
   */
  upstreamTls?: UpstreamTlsMaterial | undefined;
  /** Close a client or registration connection after this long without bytes from it (ms; 0 = never). Default 60000. */
  idleTimeoutMs?: number | undefined;
  /** A frame begun must be complete within this long (ms; 0 = no limit). Default 10000. */
  frameTimeoutMs?: number | undefined;
  /** Connections from one address at once (0 = no limit). Default: none on loopback, 1024 on any other address. */
  maxConnectionsPerPeer?: number | undefined;
  /** New connections one address may open a second, refused past it before a TLS handshake (0 = no limit). Default 0. */
  maxConnRatePerPeer?: number | undefined;
  /** TLS handshakes under way at once, a sixteenth of them (at least 1) for one address; past either a connection waits its turn (tls-handshakes.ts) (0 = no limit). Default 256. */
  maxTlsHandshakes?: number | undefined;
  /**
   * Addresses and networks (`10.0.0.5`, `10.0.0.0/8`, `fd00::/8`) of the L4
   * balancers in front of the proxy: a connection from one of them must begin
   * with a PROXY protocol header (v1 or v2), whose client address then stands
   * for the connection's everywhere. Default none (no header is read from anyone).
   */
  proxyProtocolFrom?: string[] | undefined;
  /**
   * Bytes the proxy holds for all its peers together: messages begun and not
   * yet complete, answers not yet read (0 = no limit). Past it, the
   * connections holding the most are closed with OVERLOADED. Default 256 MiB.
   */
  maxBufferedBytes?: number | undefined;
  /** Servers registered without a token (no secret is set for their policy), in total (0 = no limit). Default 10000. */
  maxServers?: number | undefined;
  /** Servers registered without a token from one address (0 = no limit). Default 1000. */
  maxServersPerPeer?: number | undefined;
  /** A member whose oldest unanswered request has waited this long (ms) gets no new ones until it answers (0 = off). Default: a quarter of the try timeout. */
  slowAfterMs?: number | undefined;
  /**
   * After traffic, keep polling the sockets this long instead of sleeping
   * (microseconds; 0 = off, the default). Lower one-at-a-time latency on
   * virtual machines, for up to one core of CPU while traffic flows
   * (transport/busy-poll.ts).
   */
  busyPollUs?: number | undefined;
  logger?: Logger | undefined;
  clock?: Clock | undefined;
  /** How the proxy dials servers (tests inject failures here). */
  connect?: SocketFactory | undefined;
  /** Told of every answer, retry and ejection: feeds metrics and the inspector. */
  observer?: ProxyObserver | undefined;
  /** Servers that registered over the old JSON wire: connections per server, timeouts before one leaves. */
  oldServers?: OldServerOptions | undefined;
}

/**
 * Hooks for metrics and inspection. Called synchronously on the hot path:
 * keep them cheap (count, don't format).
 */
export interface ProxyObserver {
  /**
   * A request got its one answer (`Outcome`); `req` is the request (for the access log). `member`: the
   * server that answered, or when the proxy answered for it (its try timed out, failed, was cut off),
   * the last one tried; undefined when none was (`NO_SERVER`). `tries`: how many servers it was sent to.
   * `proxy`: the session id of the proxy actor that answered it, for an observer shared by several
   * proxies in one process (the inspector's cards count each proxy's members apart).
   */
  answered?(policy: string, member: string | undefined, outcome: Outcome, latencyMs: number, req: ProxyRequest, tries: number, proxy?: string): void;
  /** A request that failed on `failed` (with `code`) is being tried again on another member. */
  retried?(policy: string, failed: string, code: Code): void;
  /** A request that failed on `failed` (with `code`) was not tried again: its policy's retry budget was spent. */
  retryRefused?(policy: string, failed: string, code: Code): void;
  /** A request was not sent again because the links of `maxResets` servers went down while each held it (the `poison_request` line names them). */
  poison?(policy: string): void;
  /** A member was taken out of rotation (or put back, with `back` true), for a reason from a fixed set. */
  ejected?(policy: string, member: string, reason: EjectReason, back: boolean): void;
  /** The listener accepted a connection (its role is known from its first message). */
  accepted?(peer: Peer, socket: Socket): void;
  /** The listener's limit on connections open at once, as applied at start and after each reload: max_connections, or less when the open-files limit leaves room for fewer. */
  connectionLimit?(limit: number): void;
  /** The listener refused a connection as it came: past its limit in all (max_connections, or the room the open-files limit leaves), from an address with max_conns_per_peer open, or from one opening more than max_conn_rate_per_peer a second. */
  refused?(reason: RefuseReason): void;
  /** A TLS handshake on the listener failed (each a `tls_refused` line), by why (transport/foreign.ts `TLS_FAILURES`). */
  tlsFailed?(reason: TlsFailure): void;
}

/** The hooks a `ProxyObserver` may have: `combineObservers` and `guardObserver` go through them. */
export const OBSERVER_HOOKS = ['answered', 'retried', 'retryRefused', 'poison', 'ejected', 'accepted', 'connectionLimit', 'refused', 'tlsFailed'] as const satisfies ReadonlyArray<keyof ProxyObserver>;

/**
 * `observer` with each hook's throw caught and logged (`observer_failed`, once, then counted an
 * interval): a caller's hook that threw, called from an action, stopped the proxy with an uncaught
 * exception (the host process exited 1). The proxy goes on; the hook misses that event.
 */
export function guardObserver(observer: ProxyObserver, logger: Logger): ProxyObserver {
  const guarded: ProxyObserver = {};
  for (const name of OBSERVER_HOOKS) {
    const hook = observer[name] as ((...args: unknown[]) => void) | undefined;
    if (!hook) continue;
    // Arguments by name, not rest parameters: `answered` runs for every request, and an array each time would be garbage.
    (guarded as Record<string, unknown>)[name] = (a: unknown, b: unknown, c: unknown, d: unknown, e: unknown, f: unknown, g: unknown): void => {
      try {
        hook.call(observer, a, b, c, d, e, f, g);
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        logger.repeated('error', 'observer_failed', name, 1, (n, span) => (span
          ? `The observer's ${name} hook threw ${n} more time(s) ${span}`
          : `The observer's ${name} hook threw (${why}): the proxy goes on, and the hook misses each event it throws on; fix the observer`), { hook: name });
      }
    };
  }
  return guarded;
}

/**
 * How a request ended, as the metrics and the access log count it: 'ok' for an ACK, else the error
 * code the client got - or `client_gone` when its answer could not be written because the client's
 * connection had closed (nginx's 499, HAProxy's `CD`), whatever the answer was; a connection the
 * buffer budget cut was told OVERLOADED, which its requests count.
 */
export type Outcome = 'ok' | Code | typeof CLIENT_GONE;
export const CLIENT_GONE = 'client_gone';

/** Why a member left rotation or came back: codes, so a metric's label values stay few. */
export type EjectReason = 'consecutive_failures' | 'unreachable' | 'invalid_message' | 'ended_by_server' | 'closed_by_proxy' | 'probe_succeeded' | 'ejection_over';
export const EJECT_REASONS: readonly EjectReason[] = ['consecutive_failures', 'unreachable', 'invalid_message', 'ended_by_server', 'closed_by_proxy', 'probe_succeeded', 'ejection_over'];

/** A registration secret, or several accepted alike (while servers move from one to the next). */
export type Secrets = string | readonly string[];

/** The options every part of the proxy reads: each one set, defaults applied. */
export type Opts = Required<Omit<ProxyOptions, 'logger' | 'clock' | 'connect' | 'observer' | 'token' | 'tokens' | 'tls' | 'upstreamTls' | 'oldServers' | 'maxServerQueue'>> & {
  /** Undefined: each server's own concurrency. */
  maxServerQueue?: number;
  token?: Secrets;
  tokens?: Record<string, Secrets>;
  tls?: TlsMaterial;
  oldServers: Required<OldServerOptions>;
  /** Whether `maxConnections` was set; else it is the default read once here (`defaultMaxConnections`), which the start's lines and the limit kept all take. */
  maxConnectionsSet: boolean;
  /** The memory limit read when these were resolved (`memoryLimit()`; undefined: none), which the budget's default and the start's line about it both come from. */
  memoryLimit?: number;
};

/** Where a proxy or a server listens when given no host (`--host`'s default for both): this machine only. */
export const DEFAULT_LISTEN_HOST = '127.0.0.1';

/** Connections one address may keep open by default, on the proxy's port and a server's: no limit on loopback, 1024 otherwise. */
export function defaultConnsPerPeer(host: string): number {
  return isLoopback(host) ? 0 : 1024;
}

/** Connections the proxy keeps at once by default (fewer when the open-files limit leaves room for fewer: port-limits.ts; or V8's heap: `defaultMaxConnections`). */
export const DEFAULT_PROXY_MAX_CONNECTIONS = 20000;

/** Apply the defaults. The one place a default is written. */
export function resolveOptions(input: ProxyOptions): Opts {
  const retries = input.retries ?? 2;
  const timeoutMs = input.timeoutMs ?? DEFAULT_PROXY_TIMEOUT_MS;
  const host = input.host ?? DEFAULT_LISTEN_HOST;
  const tryTimeoutMs = input.tryTimeoutMs ?? Math.ceil(timeoutMs / (retries + 1));
  const memory = memoryLimit();
  const maxBufferedBytes = input.maxBufferedBytes ?? defaultBufferBudget(memory);
  return {
    port: input.port ?? DEFAULT_PROXY_PORT,
    host,
    timeoutMs,
    retries,
    tryTimeoutMs,
    retryBudget: input.retryBudget ?? 20,
    minRetryRate: input.minRetryRate ?? 10,
    retryOn: input.retryOn ?? RETRY_CONDITIONS,
    maxResets: input.maxResets ?? 2,
    hedgeOnTryTimeout: input.hedgeOnTryTimeout ?? true,
    maxFrameBytes: input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
    maxClientInflight: input.maxClientInflight ?? 4096,
    maxServerInflight: input.maxServerInflight ?? 1024,
    maxServerQueue: input.maxServerQueue,
    queueLimit: input.queueLimit ?? 1024,
    queueTimeoutMs: input.queueTimeoutMs ?? timeoutMs,
    queueLifoAfterMs: input.queueLifoAfterMs ?? 0,
    maxConnections: input.maxConnections ?? defaultMaxConnections(DEFAULT_PROXY_MAX_CONNECTIONS, maxBufferedBytes),
    maxConnectionsSet: input.maxConnections !== undefined,
    pingIntervalMs: input.pingIntervalMs ?? 1000,
    pingMisses: input.pingMisses ?? 3,
    probeInitialMs: input.probeInitialMs ?? 1000,
    probeMaxMs: input.probeMaxMs ?? 30000,
    probesPerSecond: input.probesPerSecond ?? 100,
    ejectAfter: input.ejectAfter ?? 5,
    ejectBaseMs: input.ejectBaseMs ?? 30000,
    ejectMaxMs: input.ejectMaxMs ?? 300000,
    drainTimeoutMs: input.drainTimeoutMs ?? timeoutMs,
    oldServers: { ...OLD_SERVER_DEFAULTS, ...input.oldServers },
    token: input.token,
    tokens: input.tokens,
    tls: input.tls,
    idleTimeoutMs: input.idleTimeoutMs ?? 60000,
    frameTimeoutMs: input.frameTimeoutMs ?? 10000,
    maxConnectionsPerPeer: input.maxConnectionsPerPeer ?? defaultConnsPerPeer(host),
    maxConnRatePerPeer: input.maxConnRatePerPeer ?? 0,
    maxTlsHandshakes: input.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES,
    proxyProtocolFrom: input.proxyProtocolFrom ?? [],
    busyPollUs: input.busyPollUs ?? 0,
    maxBufferedBytes,
    memoryLimit: memory,
    maxServers: input.maxServers ?? 10000,
    maxServersPerPeer: input.maxServersPerPeer ?? 1000,
    slowAfterMs: input.slowAfterMs ?? Math.ceil(tryTimeoutMs / 4),
  };
}

/**
 * The line saying where the proxy listens: a name with the address it bound (its first only: `localhost` as ::1
 * leaves 127.0.0.1 unheard, and it said "at localhost"), as a server says its own.
 */
export function proxyListeningNote(o: Opts, port: number, address: string | undefined): { message: string; fields: Record<string, unknown> } {
  const bound = isIP(o.host) === 0 && address !== undefined ? ` (${address} only)` : '';
  return {
    message: `Running the reverse proxy on port ${port} at ${o.host}${isEveryAddress(o.host) ? ' (every address)' : bound}`,
    fields: { host: o.host, port, tls: Boolean(o.tls?.cert), ...(address !== undefined && { address }) },
  };
}

/** What a start (and `--check`) says of the buffer budget under a memory limit: `budgetNote` with the setting's name, in config and flag. */
export function proxyBudgetNote(o: Opts): ReturnType<typeof budgetNote> {
  return budgetNote(o.maxBufferedBytes, 'max_buffered_bytes (--max-buffered-bytes)', o.memoryLimit);
}

/** What a start (and `--check`) says of a max_connections V8's heap lowered: `connectionsNote` with the setting's name. */
export function proxyConnectionsNote(o: Opts): ReturnType<typeof connectionsNote> {
  return connectionsNote(o.maxConnections, o.maxConnectionsSet, DEFAULT_PROXY_MAX_CONNECTIONS, 'max_connections (--max-connections)', o.maxBufferedBytes);
}

/** Whether the proxy asks registering servers for a secret: a `token`, or `tokens` (a policy they do not name takes no registration). */
export function hasSecrets(o: Pick<Opts, 'token' | 'tokens'>): boolean {
  return o.token !== undefined || o.tokens !== undefined;
}

/**
 * What a start (and `--check`, as nginx -t prints its warnings) says of a port other machines can reach
 * with no registration secret (`insecure`), or undefined. `--check` printed the admin endpoint's like
 * warning and not this one.
 */
export function proxyInsecureNote(o: Pick<Opts, 'host' | 'token' | 'tokens'>): { message: string; fields: Record<string, unknown> } | undefined {
  if (isLoopback(o.host) || hasSecrets(o)) return undefined;
  return {
    message: `listening on ${o.host}, reachable from other machines, with no registration secret: anyone who can connect can register as a server of any privacy policy and receive its clients' data. Set --token (or REVPROXY_TOKEN) or --tokens FILE.`,
    fields: { host: o.host },
  };
}

/** How often the sweeper looks for requests past their deadline: a twentieth of a try, or of the queue timeout when shorter, within 5-100 ms. */
export function sweepInterval(o: Pick<Opts, 'tryTimeoutMs' | 'queueTimeoutMs'>): number {
  return Math.max(5, Math.min(100, Math.floor(Math.min(o.tryTimeoutMs, o.queueTimeoutMs) / 20)));
}
