/**
 * The actors' public surface: start a proxy or a server, run a client. Each
 * helper returns once the actor is ready (or has failed with a clear error).
 */
import { createActor, type InspectionEvent } from 'xstate';
import { badDialAddress, DEFAULT_PROXY_PORT, hostPort, isEveryAddress, unbracket } from '../transport/address.js';
import { StartError } from '../transport/errors.js';
import { endpoints, type Revproc } from './connect.js';
import { jsonRegistrations } from './json-registration.js';
import { logStopped, releaseAll } from './children.js';
import { badTrustedSource, closeNotAllowed, closeRevoked } from './port-limits.js';
import { RETRY_CONDITIONS } from './link.js';
import { badSecretOption } from '../config/files.js';
import { badLogger, type Logger } from './logger.js';
import { proxyMachine, type ProxyActor } from './proxy.js';
import { DEFAULT_LISTEN_HOST, type ProxyOptions } from './proxy-options.js';
import type { MemberSource, MemberState } from './proxy-types.js';
import type { ProxyRegistryOptions } from '../registry/proxy-registry.js';
import type { RegistryOptions } from '../registry/options.js';
import type { RegistryStatus } from '../registry/events.js';
import type { EtcdClient, Renewal } from '../registry/etcd-client.js';
import { badId, badIdentity, badLimit, badProxies, badWholeNumbers, serverMachine, type ServerActor, type ServerOptions } from './server.js';
import { checkUpstreamNames, dial, systemCasToward, TlsConfigError, type TlsMaterial, type UpstreamTlsMaterial } from '../transport/tls.js';
import { renewed } from './renew-tls.js';
import { actorOptions, badKinds, badStartOptions, checkTlsOptions } from './start-options.js';

export { clientMachine, RequestError, type ClientOptions } from './client.js';
export { StartError } from '../transport/errors.js';
export { Client, connect, endpoints, runClient, type ConnectOptions, type Packet, type Reply, type RequestOptions, type Result, type Revproc, type RunOptions } from './connect.js';
export { HandlerError, sha1Handler, type Answer, type Handler, type HandlerContext, type Payload } from './handler.js';
import { BEHAVIOURS } from './handler.js';
export { systemClock, ManualClock, type Clock } from '../transport/clock.js';
export { Logger, textSink, jsonSink, memorySink, silentLogger, type LogRecord, type Level } from './logger.js';
export { poolMachine, join, leave, pick, type Rotation } from './pool.js';
export { proxyMachine, type ProxyActor } from './proxy.js';
export { isLoopback } from '../transport/address.js';
export { type ProxyOptions, type ProxyObserver, type OldServerOptions } from './proxy-options.js';
export type { MemberState } from './proxy-types.js';
export { serverMachine, type ServerOptions, type ServerActor, type Endpoint } from './server.js';
export { sha1Hex } from './sha1.js';
export { upstreamMachine } from './upstream.js';
export { upstreamJsonMachine } from './upstream-json.js';

export interface Inspect {
  inspect?: ((event: InspectionEvent) => void) | undefined;
}

export interface PoolView {
  /** Members in rotation order. */
  members: string[];
  /** Index of the member that gets the next request (may equal members.length: end of round). */
  cursor: number;
  /** The pool machine's state: empty or serving. */
  state: string;
  /** Each member's state: connecting, serving, down or ejected. */
  states: Record<string, MemberState>;
  /** Where each member came from: a registration connection (`direct`), the registry, or the registry with its key gone (`unlisted`: kept while its link answers). */
  sources: Record<string, MemberSource>;
  /** Members taking requests now, in rotation order. */
  serving: string[];
  /** Requests waiting in the policy's queue for a member with room (`queue_limit`, `queue_timeout`). */
  waiting: number;
}

export interface ProxyHandle {
  actor: ProxyActor;
  port: number;
  /** Graceful: stop accepting, answer everything in flight (at most the drain timeout), then close. Called again, it returns the same promise: the drain goes on (`kill()` ends it). */
  stop(): Promise<void>;
  /** Abrupt, as SIGKILL: close every socket now. */
  kill(): void;
  /** Each pool: members in rotation order, the cursor, each member's state. */
  pools(): Record<string, PoolView>;
  /** The registry as the proxy last heard of it (undefined without one). */
  registry(): RegistryStatus | undefined;
  /**
   * Renewed certificates (or a new CA bundle), as Buffers like `startProxy`'s: `tls` for the
   * listener's next handshakes, `upstreamTls` for its next dials to servers (its `names` and `serverName` too); connections
   * already open keep theirs, but for those whose peer's certificate a CRL of the renewed set (`crl`)
   * revokes, and the links to servers whose certificates the renewed `upstreamTls.names` no longer
   * allows: those are closed, and their number returned. Checked first as the files are at start: a
   * bad set throws a `TlsConfigError` (code TLS_CONFIG) and the running one stays. Only what the proxy
   * started with can be renewed.
   */
  renewTls(next: { tls?: TlsMaterial; upstreamTls?: UpstreamTlsMaterial }): number;
  /** The TLS material the proxy runs with now: its start's, or the last `renewTls`'s. */
  tls(): { tls?: TlsMaterial; upstreamTls?: UpstreamTlsMaterial };
  /** What the proxy's etcd client presents and trusts now (`registry.tls`, or the last `renewRegistryTls`'s); undefined without a registry over TLS. */
  registryTls(): TlsMaterial | undefined;
  /**
   * Renewed TLS material for etcd (a client certificate and its key, a CA bundle), as Buffers like
   * `registry.tls`: a new etcd client is made with it and tried, then the proxy's watch of the
   * servers and its own key's lease move to it (the same lease; nothing read or written again)
   * and the old client is closed. Rejects with a `TlsConfigError` (code TLS_CONFIG) when the set
   * cannot be used - checked as `renewTls` checks its own - or etcd refuses it, the running
   * client kept. Resolves with `tried: false` (and why) when etcd could not be reached to try it.
   */
  renewRegistryTls(tls: TlsMaterial): Promise<Renewal>;
}

/** What `startProxy` takes: the proxy's options, and a registry (etcd) to take servers from and advertise itself in. */
export type StartProxyOptions = ProxyOptions & Inspect & {
  /** Watch etcd for servers, and advertise this proxy there for clients. `advertise` defaults to `host` (which must then not be a wildcard address). */
  registry?: (Omit<ProxyRegistryOptions, 'advertise' | 'servesTls'> & { advertise?: string | undefined }) | undefined;
  /**
   * Who logs the last line, "Reverse proxy stopped": the proxy as it stops (the default; with a
   * registry, `stop()` once its key is withdrawn), or the caller, with `logStopped`, once it has
   * closed what it keeps beside the proxy (an access log whose lost lines it warns of): a warning
   * after "stopped" reads as if the proxy still ran.
   */
  stoppedLine?: 'proxy' | 'caller' | undefined;
};

/**
 * Start a proxy; resolves once it listens (rejects with a `StartError` when
 * it cannot, e.g. the port is taken).
 *
 * @example
 * const proxy = await startProxy({ port: 2100, timeoutMs: 2000 });
 * // ... servers register, clients send ...
 * await proxy.stop(); // drains: every request in flight is answered first
 */
export async function startProxy(opts: StartProxyOptions = {}): Promise<ProxyHandle> {
  const badCall = badStartOptions(opts, `{ port: ${DEFAULT_PROXY_PORT} }`);
  if (badCall) throw new StartError(`startProxy: ${badCall}`);
  checkTlsOptions(opts, 'startProxy', true, ['serverAuth']);
  let machine = proxyMachine;
  let etcd: EtcdClient | undefined;
  // The rules the config file and the flags keep (config/proxy.ts owns them), for a caller of the library.
  const { badProxyNumber, listenHostProblem } = await import('../config/proxy.js');
  const badNumber = badProxyNumber(opts) ?? badLogger(opts.logger) ?? badKinds(opts, [
    ['host', 'string'], ['hedgeOnTryTimeout', 'boolean'], ['retryOn', { listOf: RETRY_CONDITIONS }], ['proxyProtocolFrom', 'strings'],
    ['stoppedLine', { oneOf: ['proxy', 'caller'] }], ['connect', 'function'], ['observer', 'object'], ['oldServers', 'object'],
  ]);
  if (badNumber) throw new StartError(`startProxy: ${badNumber}`);
  // Each secret by the rule the flags and the file keep: 8 characters or more, no white space at an end.
  const badSecret = badSecretOption('token', opts.token, 8, true)
    ?? Object.entries(opts.tokens ?? {}).map(([policy, v]) => badSecretOption(`tokens['${policy}']`, v, 8, true)).find(Boolean)
    ?? badSecretOption('registry.password', opts.registry?.password, 0);
  if (badSecret) throw new StartError(`startProxy: ${badSecret}`);
  const untrusted = (opts.proxyProtocolFrom ?? []).map(badTrustedSource).find(Boolean);
  if (untrusted) throw new StartError(`proxyProtocolFrom: ${untrusted}`);
  // As the flags and the file: an empty host (an unset variable) would have Node listen on every address.
  const badHost = opts.host === undefined ? undefined : listenHostProblem(opts.host, 'port');
  if (badHost) throw new StartError(`startProxy: host needs an address ${badHost}`);
  if (opts.registry) {
    const host = opts.host ?? DEFAULT_LISTEN_HOST;
    const advertise = advertised(opts.registry.advertise, 'clients', 'give the port with port') ?? host;
    if (isEveryAddress(advertise)) {
      throw new StartError(`the proxy listens on ${host}, every address: say which address clients should dial to reach it (--advertise HOST, or registry.advertise in the config file)`);
    }
    const { proxyRegistry } = await import('../registry/proxy-registry.js');
    const registry = await proxyRegistry({ ...opts.registry, advertise, servesTls: Boolean(opts.tls?.cert) });
    etcd = registry.etcd;
    machine = proxyMachine.provide({ actors: { registry: registry.logic } });
  }
  // The one owner of what the proxy dials servers with: every dial reads it, renewTls replaces it.
  const running = { tls: opts.tls, upstreamTls: opts.upstreamTls };
  // With a registry the drain's last work (the key withdrawn: its `withdrawn` line) ends after the machine does:
  // `stop()` says "stopped" once it is over, as the CLI does (`logStopped`), where the machine said it first.
  const lineAfterDrain = opts.stoppedLine !== 'caller' && etcd !== undefined;
  if (opts.stoppedLine === 'caller' || lineAfterDrain) machine = machine.provide({ actions: { logStopped: () => {} } });
  const dialWith = opts.connect ?? dial;
  const input = { ...opts, connect: (host: string, port: number) => dialWith(host, port, running.upstreamTls), upstreamTlsNow: () => running.upstreamTls };
  const actor = createActor(machine, { input, ...actorOptions(opts) });
  actor.start();
  await waitUntil(actor, (s) => s.value !== 'starting');
  const snap = actor.getSnapshot();
  if (snap.value === 'failed') throw new StartError(snap.context.error ?? 'the proxy failed to start');
  warnSystemCas(snap.context.logger, 'startProxy', opts.upstreamTls);
  return {
    actor,
    port: snap.context.port,
    stop: once(async () => {
      await stopGracefully(actor, etcd, () => snap.context.portClosed.closing);
      if (lineAfterDrain && actor.getSnapshot().value === 'stopped') logStopped(snap.context.logger, snap.context.port);
    }),
    kill: () => {
      actor.stop();
      releaseAll(actor.getSnapshot().context);
    },
    pools() {
      const ctx = actor.getSnapshot().context;
      const out: Record<string, PoolView> = {};
      for (const [policy, { pool, waiting }] of ctx.policies) {
        const s = pool.getSnapshot() as unknown as { value: string; context: { members: string[]; cursor: number } };
        const members: string[] = [...s.context.members];
        const states: Record<string, MemberState> = {};
        const sources: Record<string, MemberSource> = {};
        for (const id of members) {
          states[id] = ctx.servers.get(id)?.state ?? 'down';
          sources[id] = ctx.servers.get(id)?.shownSource ?? 'direct';
        }
        out[policy] = { members, cursor: s.context.cursor, state: String(s.value), states, sources, serving: members.filter((id) => states[id] === 'serving'), waiting: waiting.length };
      }
      return out;
    },
    registry: () => actor.getSnapshot().context.registry,
    renewTls(next) {
      // Both checked before either is taken: a bad set changes nothing.
      const tls = next.tls && renewed('tls', running.tls, next.tls, true, ['serverAuth']);
      const upstreamTls = next.upstreamTls && renewed('upstreamTls', running.upstreamTls, next.upstreamTls) as UpstreamTlsMaterial;
      if (upstreamTls) checkUpstreamNames('upstreamTls', upstreamTls);
      const closed = { connections: 0 };
      if (upstreamTls) {
        running.upstreamTls = upstreamTls;
        warnSystemCas(actor.getSnapshot().context.logger, 'renewTls', upstreamTls);
        // Its links to servers whose certificates the CRLs revoke, or the names no longer allow: each link dials again, and is refused.
        const { linkSockets, logger } = actor.getSnapshot().context;
        // Named as the CLI's files are: tls.crl when upstream_tls is absent (the proxy dials with the tls files), else its own.
        const crlSetting = upstreamTls.crl && running.tls?.crl && Buffer.from(upstreamTls.crl).equals(Buffer.from(running.tls.crl)) ? 'tls.crl' : 'upstream_tls.crl';
        closed.connections += closeRevoked(linkSockets.sockets, upstreamTls, logger, crlSetting, true);
        closed.connections += closeNotAllowed(linkSockets.sockets, upstreamTls, logger);
        // The members refused before are probed now: the new settings or CRL may take them (each waited probe_max).
        actor.send({ type: 'UPSTREAM_TLS_RENEWED' });
      }
      if (tls) {
        running.tls = tls;
        actor.send({ type: 'RENEW_TLS', tls, closed });
      }
      return closed.connections;
    },
    tls: () => ({ ...running }),
    registryTls: () => etcd?.tls,
    renewRegistryTls: (tls) => renewRegistryTls(etcd, tls, 'the proxy'),
  };
}

/** Says, once for the set given (at `startProxy`, at a `renewTls`), that `upstreamTls` without `ca` trusts the system's CAs (`systemCasToward`). */
function warnSystemCas(logger: Logger, who: string, upstreamTls: UpstreamTlsMaterial | undefined): void {
  const why = systemCasToward('upstreamTls', upstreamTls);
  if (why) logger.warn('upstream_tls_system_cas', `${who}: ${why}`, { setting: 'upstreamTls' });
}

/** `EtcdClient.renew`, or a rejection saying there is no registry to renew. */
async function renewRegistryTls(etcd: EtcdClient | undefined, tls: TlsMaterial, who: string): Promise<Renewal> {
  if (!etcd) throw new TlsConfigError(`cannot renew registry.tls: ${who} was started without a registry`, 'usage');
  return etcd.renew(tls);
}

export interface ServerHandle {
  actor: ServerActor;
  port: number;
  id: string;
  /** Graceful: leave the proxy's pool (through the registry: its key is gone before this resolves), finish what is in flight, then stop. Called again, it returns the same promise: the drain goes on (`kill()` ends it). */
  stop(): Promise<void>;
  /** Abrupt, as SIGKILL: close every socket now. */
  kill(): void;
  /**
   * Renewed certificates (or a new CA bundle), as Buffers like `startServer`'s `tls`: the listener's
   * next handshakes and the next registration dials use them; connections already open keep theirs,
   * but for those whose peer's certificate a CRL of `tls.crl` revokes, which the listener closes.
   * Checked first as the files are at start: a bad set throws a `TlsConfigError` (code TLS_CONFIG)
   * and the running one stays. A server started without `tls` has none to renew.
   */
  renewTls(tls: TlsMaterial): void;
  /** As `ProxyHandle.renewRegistryTls`: the server's registration (its key's lease) moves to a new etcd client made with `tls`. */
  renewRegistryTls(tls: TlsMaterial): Promise<Renewal>;
}

/** What `startServer` takes: the server's options, with the proxies as `revproc` if you like and a free listen port by default. */
export type StartServerOptions = Omit<ServerOptions, 'listenPort'> & Inspect & {
  /** Port to listen on for the proxies' requests (default 0: a free one). */
  listenPort?: number | undefined;
  /** The proxies to register with, as `connect()` takes them (instead of `proxy`/`proxies`). */
  revproc?: Revproc | undefined;
  /** How long to wait for the first registration (ms, default 5000). */
  registerTimeoutMs?: number | undefined;
  /** Resolve once listening, without waiting to be registered (default: wait). */
  waitForRegistration?: boolean | undefined;
  /**
   * Register once in the registry (etcd) instead of with each proxy: every
   * proxy watching it takes this server. `advertise` is the address proxies
   * dial (default: `listenHost`, which must then not be a wildcard address).
   */
  registry?: (RegistryOptions & { advertise?: string | undefined }) | undefined;
};

/**
 * Start a server of one policy that registers with the proxy (or proxies)
 * and answers every request with its handler; resolves once it listens and
 * is registered with at least one proxy. Rejects with a StartError when it
 * cannot listen, is refused, or reaches no proxy within `registerTimeoutMs`.
 *
 * @example
 * const server = await startServer({
 *   id: 'upper-1', policy: '111', revproc: 2100, concurrency: 16,
 *   handler: async (payload, ctx) => String(payload).toUpperCase(),
 * });
 * // ...
 * await server.stop(); // leaves the pool, answers what it has, then stops
 */
export async function startServer(options: StartServerOptions): Promise<ServerHandle> {
  const badCall = badStartOptions(options, `{ id: 'a1', policy: '111', revproc: ${DEFAULT_PROXY_PORT}, handler }`);
  if (badCall) throw new StartError(`startServer: ${badCall}`);
  checkTlsOptions(options, 'startServer', false, ['serverAuth']);
  const { revproc, ...rest } = options;
  let proxies = rest.proxies;
  try {
    if (revproc !== undefined) proxies ??= endpoints(revproc);
  } catch (err) {
    throw new StartError(`server ${rest.id} cannot register: ${(err as Error).message}`);
  }
  const opts: ServerOptions & StartServerOptions = { ...rest, listenPort: rest.listenPort ?? 0, proxies };
  // An id that is no id cannot name the server in its own error: the call is named instead.
  const noId = badId('id', opts.id);
  if (noId) throw new StartError(`startServer: ${noId}`);
  const badKind = badKinds(opts, [['listenHost', 'string'], ['wire', { oneOf: ['frames', 'json'] }], ['behaviour', { oneOf: BEHAVIOURS }], ['waitForRegistration', 'boolean'], ['plainRegistration', 'boolean']]);
  if (badKind) throw new StartError(`server ${opts.id}: ${badKind}`);
  // Plain registration is a TLS listener's, registering with proxies: anything else registers as it would without it.
  if (opts.plainRegistration && !opts.tls?.cert) throw new StartError(`server ${opts.id}: plainRegistration (--plain-registration) goes with tls.cert (--tls-cert): it registers in plain TCP a server whose port serves TLS, and without TLS files a server registers in plain TCP anyway`);
  if (opts.plainRegistration && opts.registry) throw new StartError(`server ${opts.id}: plainRegistration (--plain-registration) is for registrations with proxies: through the registry a server dials no proxy (the proxies dial it, over TLS with their upstream_tls)`);
  // A server's token is the proxy's to judge (a short one is never accepted); empty or with white space at an end, it is refused here.
  const badHost = opts.listenHost === undefined ? undefined : (await import('../config/proxy.js')).listenHostProblem(opts.listenHost, 'listenPort');
  const bad = badIdentity(opts) ?? badProxies(opts.proxies) ?? badLimit(opts) ?? badWholeNumbers(opts, [['registerTimeoutMs', 1, ''], ['listenPort', 0, ' (0: any free port)', 65535]]) ?? badLogger(opts.logger)
    ?? (badHost && `listenHost needs an address ${badHost}`)
    ?? badSecretOption('token', opts.token, 0) ?? badSecretOption('registry.password', opts.registry?.password, 0);
  if (bad) throw new StartError(`server ${opts.id}: ${bad}`);
  let machine = opts.wire === 'json' ? serverMachine.provide({ actors: { registrations: jsonRegistrations } }) : serverMachine;
  let etcd: EtcdClient | undefined;
  if (opts.registry) {
    if (opts.wire === 'json') throw new StartError('a server registers through the registry or the old way (--wire json), not both: the old proxy knows no registry');
    const host = opts.listenHost ?? DEFAULT_LISTEN_HOST;
    const advertise = advertised(opts.registry.advertise, 'proxies', 'give the port with listenPort') ?? host;
    if (isEveryAddress(advertise)) {
      throw new StartError(`server ${opts.id} listens on ${host}, every address: say which address proxies should dial to reach it (--advertise HOST)`);
    }
    const { serverRegistration } = await import('../registry/server-registration.js');
    const registration = await serverRegistration({ ...opts.registry, advertise });
    etcd = registration.etcd;
    machine = serverMachine.provide({ actors: { registrations: registration.logic } });
    opts.proxies = [];
  }
  const actor = createActor(machine, { input: opts, ...actorOptions(opts) });
  actor.start();
  if (opts.waitForRegistration === false) {
    // Listening is enough: registrations keep being retried in the background.
    await waitUntil(actor, (s) => s.status !== 'active' || s.value !== 'starting');
    const snap = actor.getSnapshot();
    if (snap.status !== 'active') throw new StartError(snap.context.error ?? `server ${opts.id} failed to start`);
    return serverHandle(actor, opts.id, etcd);
  }
  const wait = opts.registerTimeoutMs ?? 5000;
  let timedOut = false;
  const timer = setTimeout(() => (timedOut = true), wait);
  await waitUntil(actor, (s) => s.status !== 'active' || s.context.registered.length > 0, wait + 10).catch(() => undefined);
  clearTimeout(timer);
  const snap = actor.getSnapshot();
  if (snap.value === 'failed' || snap.status !== 'active' || timedOut || snap.context.registered.length === 0) {
    actor.stop();
    // Each proxy with why its last try failed, when one did (a try still under way says nothing yet).
    const why = (at: string): string => {
      const last = snap.context.unregistered[at];
      return last === undefined ? at : last.includes(at) ? last : `${at}: ${last}`;
    };
    const proxies = snap.context.proxies.map((p) => why(hostPort(p.host, p.port))).join('; ');
    const failed = Object.entries(snap.context.unregistered).find(([at]) => at.startsWith('registry '))?.[1];
    const where = opts.registry ? `in the registry (etcd://${opts.registry.endpoints.join(',')}${failed ? `: ${failed}` : ''})` : `with any reverse proxy (${proxies})`;
    throw new StartError(snap.context.error ?? `server ${opts.id} could not register ${where} within ${wait} ms`);
  }
  return serverHandle(actor, opts.id, etcd);
}

function serverHandle(actor: ServerActor, id: string, etcd?: EtcdClient): ServerHandle {
  return {
    actor,
    port: actor.getSnapshot().context.port,
    id,
    stop: once(() => stopGracefully(actor, etcd, () => actor.getSnapshot().context.closing.closed)),
    kill: () => actor.stop(),
    renewTls(next) {
      const { tls } = actor.getSnapshot().context.opts;
      actor.send({ type: 'RENEW_TLS', tls: renewed('tls', tls, next, Boolean(tls?.cert), ['serverAuth']) });
    },
    renewRegistryTls: (tls) => renewRegistryTls(etcd, tls, `server ${id}`),
  };
}

interface Watchable<S> {
  getSnapshot(): S;
  subscribe(o: { next: (s: S) => void; error?: (e: unknown) => void; complete?: () => void }): { unsubscribe(): void };
}

/**
 * `f` run once, its promise returned to every call: a handle's stop() called twice (two shutdown
 * hooks, a test's teardown after an explicit stop) sent a second STOP, which a draining proxy or
 * server takes as "stop now" (the CLI's second SIGTERM): every request in flight was answered
 * SHUTTING_DOWN, every handler call aborted, where one call drained them (undici's close(),
 * nats.js's drain() do not turn abrupt when called again).
 */
function once(f: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | undefined;
  return () => (running ??= f());
}

/**
 * Send STOP (the machine drains), wait for its final state, then stop the actor; then, with a
 * registry, wait for its etcd client to close after the drain's last writes (`EtcdClient.closing`:
 * the key gone, bounded by two call timeouts); and for its connections to close (`closed`, read once
 * the actor has stopped: a proxy's port, `PortClosed.closing`; a server's, `Closing.closed`; each
 * within 2 s), so a process that exits after it loses no answer and leaves no socket open.
 */
async function stopGracefully(actor: { getSnapshot(): { status: string }; send(e: { type: 'STOP' }): void; stop(): void } & Watchable<{ status: string }>, etcd: EtcdClient | undefined, closed: () => Promise<void> | undefined): Promise<void> {
  if (actor.getSnapshot().status === 'active') {
    actor.send({ type: 'STOP' });
    await waitUntil(actor, (s) => s.status !== 'active');
  }
  actor.stop();
  await etcd?.closing;
  await closed();
}

/**
 * Resolves when `pred` holds for the actor's snapshot, or when the actor stops (the caller reads its
 * last snapshot); rejects after `timeoutMs` when given. A stopped actor tells its observers
 * `complete` only: without it, `kill()` during a drain left that drain's `stop()` pending for ever
 * (a shutdown's `await server.stop()` after a grace's `kill()` never went on, and Node exited
 * mid-shutdown when nothing else held it).
 */
export function waitUntil<S>(actor: Watchable<S>, pred: (s: S) => boolean, timeoutMs?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    if (pred(actor.getSnapshot())) return resolve();
    let timer: NodeJS.Timeout | undefined;
    const sub = actor.subscribe({
      next: (s) => {
        if (pred(s)) {
          sub.unsubscribe();
          clearTimeout(timer);
          resolve();
        }
      },
      error: (e) => reject(e),
      complete: () => {
        clearTimeout(timer);
        resolve();
      },
    });
    if (timeoutMs !== undefined) {
      timer = setTimeout(() => {
        sub.unsubscribe();
        reject(new Error(`timed out after ${timeoutMs} ms`));
      }, timeoutMs);
    }
  });
}

/** `registry.advertise` as peers dial it (`badDialAddress`), or undefined when not given; a StartError naming it when it is no such address. */
function advertised(value: string | undefined, who: string, portSays: string): string | undefined {
  if (value === undefined) return undefined;
  const bad = typeof value === 'string' ? badDialAddress(value, portSays) : `it is ${typeof value}, not a string`;
  if (bad) throw new StartError(`registry.advertise is the address ${who} dial to reach this machine, without a port, got '${String(value)}': ${bad}`);
  return unbracket(value);
}
