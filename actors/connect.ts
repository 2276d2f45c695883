/**
 * The client as a program uses it: `connect()` starts a client machine
 * (client.ts) and returns a `Client` whose requests are promises, or an RxJS
 * stream; `runClient` sends a list of packets and checks the answers, as the
 * `client` command does.
 */
import { EventEmitter } from 'node:events';
import { defer, from, mergeMap, Observable, throwError, type ObservableInput } from 'rxjs';
import { createActor, type InspectionEvent } from 'xstate';
import { DEFAULT_PROXY_PORT, hostPort } from '../transport/address.js';
import { ErrorCode, LocalCode, StartError, type ClientCode } from '../transport/errors.js';
import { TlsConfigError, type TlsMaterial } from '../transport/tls.js';
import { actorOptions, badStartOptions, checkTlsOptions } from './start-options.js';
import { badClientOption, clientMachine, RequestError, whyUnreached, type ClientActor, type ClientOptions, type Outcome, type RequestHandle } from './client.js';
import { show, type HandlerError, type Payload } from './handler.js';
import type { Logger } from './logger.js';
import { badWholeNumbers, DEFAULT_PROXY, type Endpoint } from './server.js';
import { sha1Hex } from './sha1.js';
import { renewed } from './renew-tls.js';
import { isRegistryUrl, parseRegistryUrl, type RegistryOptions } from '../registry/options.js';
import type { Discovery } from '../registry/discovery.js';
import type { Renewal } from '../registry/etcd-client.js';

/** Where the proxies are: a port on 127.0.0.1, `"host:port"`, a comma-separated list of those, an endpoint, or a list. */
export type Revproc = number | string | Endpoint | Array<number | string | Endpoint>;

/** The options connect() hands the client machine as they are: each is documented once, in ClientOptions (client.ts). */
type PassedOn = 'timeoutMs' | 'window' | 'maxQueued' | 'maxBytesInFlight' | 'maxAttempts' | 'failoverDelayMs' | 'hold' | 'reconnectMaxDelayMs' | 'connectTimeoutMs' | 'tcpKeepAliveMs' | 'tls' | 'wire' | 'maxFrameBytes' | 'logger' | 'clock';

export interface ConnectOptions extends Pick<ClientOptions, PassedOn> {
  /** The proxy, or proxies in failover order. Default 2100 on 127.0.0.1. `etcd://HOST:PORT` finds them in the registry instead. */
  revproc?: Revproc | undefined;
  /** Find the live proxies in the registry (etcd) and fail over between them, following it as proxies come and go. */
  registry?: RegistryOptions | undefined;
  /** The client's id, sent as `srcid` (default `client`). */
  id?: string | undefined;
  /** XState inspection of the client machine (the inspector's `attach.inspect`). */
  inspect?: ((event: InspectionEvent) => void) | undefined;
}

export interface RequestOptions {
  /**
   * Abort the request: it rejects with a `RequestError` coded `ABORTED` and named `AbortError` (as Node's own APIs name
   * an abort: `err.name === 'AbortError'`), its `cause` the signal's `reason`; an answer arriving later is dropped.
   */
  signal?: AbortSignal | undefined;
  /** This request's timeout (ms); it rejects with `CLIENT_TIMEOUT` when it passes. Default: the client's. `Infinity`: none. */
  timeoutMs?: number | undefined;
  /** The `srcid` to send instead of the client's id. */
  srcid?: string | undefined;
}

/** A `disconnect` event: the client's connection to `proxy` (host:port) ended, and why. */
export interface Disconnected {
  proxy: string;
  /** What ended it, in the words of the client's `failover` line: the proxy closed it, went silent, drains, ... */
  reason: string;
}

/** A `reconnect` event: the client is connected again, to `proxy` (host:port), after a `disconnect` from `previous`. */
export interface Reconnected {
  proxy: string;
  /** The proxy it lost (another than `proxy` after a failover). */
  previous: string;
  /** How long it was without a proxy (ms, on the client's clock). */
  downMs: number;
}

/**
 * The events a `Client` emits as its connection to the proxies goes and comes back, with a listener's arguments (as
 * nats.js's `disconnect`/`reconnect` and MQTT.js's `offline`/`connect`). Node's `events.on(client, 'reconnect')` makes
 * any of them an async iterator.
 */
export interface ClientEvents {
  /**
   * The connection to the proxy in use ended (lost, or left: a failover, a draining proxy, a rebalance). The client
   * goes on dialling - the next proxy, then with backoff, holding requests or not (an idle client in the background,
   * on timers that keep no process alive) - and says `reconnect` once a proxy answers. A connection the proxy closed
   * while idle (its `idle_timeout`) is dialled again once, in the quick round; once that round is used up by such
   * closes, the client dials again only for its next request, and says `reconnect` then.
   */
  disconnect: [Disconnected];
  /** A proxy answered again (its first PING) after a `disconnect`: held requests go out now. */
  reconnect: [Reconnected];
  /** `destroy()` (or `close()`, once what was pending settled) ended the client: nothing more is emitted. */
  close: [];
}

/** One answered (or failed) request of a stream: what was sent, and what came back. */
export interface Reply {
  /** Position of the payload in the stream it came from. */
  index: number;
  payload: Payload;
  /** The answer, when there is one. */
  answer?: Payload;
  /** The id of the server that answered. */
  server?: string;
  /** Why there is no answer. */
  error?: RequestError | HandlerError;
  latencyMs: number;
}

/**
 * A connection to one or more proxies, pipelined, failing over between
 * them. Made by `connect()`. An EventEmitter of its connection's state (`ClientEvents`: `disconnect`,
 * `reconnect`, `close`).
 *
 * @example
 * client.on('disconnect', ({ proxy, reason }) => console.warn(`lost ${proxy}: ${reason}`));
 * client.on('reconnect', ({ proxy, downMs }) => console.info(`back on ${proxy} after ${downMs} ms`));
 */
export class Client extends EventEmitter<ClientEvents> {
  private closing = false;
  private closed = false;
  /** The proxy (host:port) the client is connected to, its first PING answered; undefined between connections. */
  private connectedTo?: string;
  /** The proxy lost and when (the client's clock), until a proxy answers again. */
  private lost?: { proxy: string; at: number };
  /**
   * Requests sent and not settled yet, counted as they are made and as they settle (`done`), and what `close()`
   * waits on for the last of them. A Set of their promises, each with a handler to leave it, cost every request a
   * promise, a closure and a reaction more, kept as long as it waited.
   */
  private unsettled = 0;
  private whenSettled?: Promise<void>;
  private settledNow?: () => void;
  /**
   * The requests waiting on each signal, and the one listener the client keeps on it: a signal
   * shared by many requests (an application's shutdown signal) carries one listener, not one per
   * request - past ten, Node warns of a leak (MaxListenersExceededWarning) that is not one.
   */
  private readonly watched = new Map<AbortSignal, { handles: Set<RequestHandle>; onAbort: () => void }>();

  /** @internal */
  constructor(
    /** The client machine (for inspection and tests). */
    readonly actor: ClientActor,
    readonly id: string,
    /** The registry's list of proxies, followed while the client lives. */
    private readonly discovery?: Discovery,
  ) {
    super();
    actor.subscribe((s) => this.watchConnection(s));
  }

  /**
   * Say when the connection comes and goes, from the machine's state after each event: connected once the proxy answered
   * the PING sent first (session.open, not probing), as connect() resolves; the first connection is connect()'s.
   */
  private watchConnection(s: ReturnType<ClientActor['getSnapshot']>): void {
    // Read off the state value, not with s.matches(): this runs after every event (a request, a read), and matches()
    // cost 0.4-1.7 us a call (a request makes about one event), where this costs 26-82 ns (measured in one run, loaded).
    const value = s.value as string | { session?: string };
    const up = typeof value === 'object' && value.session === 'open' && !s.context.probing;
    if (up === (this.connectedTo !== undefined) || s.status !== 'active' || value === 'closed') return;
    const { context } = s;
    if (up) {
      const { host, port } = context.proxies[context.proxyIndex]!;
      this.connectedTo = hostPort(host, port);
      const lost = this.lost;
      this.lost = undefined;
      if (lost) this.emit('reconnect', { proxy: this.connectedTo, previous: lost.proxy, downMs: context.clock.now() - lost.at });
      return;
    }
    const proxy = this.connectedTo!;
    this.connectedTo = undefined;
    this.lost = { proxy, at: context.clock.now() };
    this.emit('disconnect', { proxy, reason: context.lastError ?? 'the connection ended' });
  }

  /**
   * Send one payload to a policy's servers; resolves to the answer (text or
   * bytes, as the handler returned it), rejects with a `RequestError`
   * (`NO_SERVER`, `TIMEOUT`, `CLIENT_TIMEOUT`, `ABORTED`, ...) or a
   * `HandlerError` (the handler's own `appCode`).
   *
   * @example
   * const hash = await client.request('111', 'xyz1', { timeoutMs: 1000 });
   * const bytes = await client.request('img', new Uint8Array([1, 2, 3]), { signal: AbortSignal.timeout(500) });
   */
  async request(policy: string, payload: Payload, opts: RequestOptions = {}): Promise<Payload> {
    const outcome = await this.send(policy, payload, opts);
    if (!outcome.ok) throw outcome.error;
    return outcome.answer.payload;
  }

  /**
   * The RxJS form: every payload of `payloads$` is sent to `policy`, at most
   * `concurrency` at once (default: the client's window), and a `Reply` is
   * emitted for each as it comes back (in the order answers arrive; `index`
   * says which payload). A failed request is a `Reply` with `error`: one
   * `NO_SERVER` does not end the stream. Unsubscribing aborts what is in flight.
   *
   * @example
   * client.requests('111', from(['a', 'b', 'c'])).subscribe((r) => console.log(r.index, r.answer ?? r.error?.code));
   */
  requests(policy: string, payloads$: ObservableInput<Payload>, opts: { concurrency?: number; timeoutMs?: number; srcid?: string } = {}): Observable<Reply> {
    const concurrency = opts.concurrency ?? this.actor.getSnapshot().context.opts.window ?? 64;
    // mergeMap takes 0 (or -1) and runs none: the stream waited for ever, with nothing said.
    const bad = badWholeNumbers({ concurrency }, [['concurrency', 1, ' (Infinity: no limit)']]);
    if (bad) return throwError(() => new RequestError(ErrorCode.BAD_REQUEST, bad));
    return from(payloads$).pipe(
      mergeMap((payload, index) => defer(() => {
        const abort = new AbortController();
        return new Observable<Reply>((sub) => {
          this.send(policy, payload, { ...opts, signal: abort.signal }).then((o) => {
            sub.next(toReply(index, payload, o));
            sub.complete();
          });
          return () => abort.abort();
        });
      }), concurrency),
    );
  }

  /** One request, settled with its outcome (never rejects): the machine's view, for `runClient`. */
  send(policy: string, payload: Payload, opts: RequestOptions = {}): Promise<Outcome> {
    if (this.closing) return Promise.resolve(failed(LocalCode.CLIENT_CLOSED, 'the client is closed'));
    const { signal } = opts;
    // Anything else made the client's own bookkeeping throw: an unhandled rejection that ended the process.
    if (signal !== undefined && !isAbortSignal(signal)) {
      return Promise.resolve(failed(ErrorCode.BAD_REQUEST, `signal is an AbortSignal (AbortSignal.timeout(ms), or an AbortController's signal), not ${signal === null ? 'null' : typeof signal}`));
    }
    if (signal?.aborted) return Promise.resolve(aborted(signal));
    const handle: RequestHandle = {};
    this.unsettled++;
    return new Promise<Outcome>((resolve) => {
      const unwatch = signal && this.watch(signal, handle);
      const done = (o: Outcome): void => {
        unwatch?.();
        resolve(o);
        if (--this.unsettled === 0) this.settledNow?.();
      };
      this.actor.send({ type: 'REQUEST', requests: [{ req: { policy, payload, srcid: opts.srcid, timeoutMs: opts.timeoutMs, signal, done }, handle }] });
    });
  }

  /** Cancel `handle` when `signal` aborts; returns what stops watching it for this request. */
  private watch(signal: AbortSignal, handle: RequestHandle): () => void {
    let w = this.watched.get(signal);
    if (!w) {
      const handles = new Set<RequestHandle>();
      const onAbort = (): void => {
        this.watched.delete(signal);
        for (const h of handles) this.actor.send({ type: 'CANCEL', handle: h, error: aborted(signal).error });
      };
      w = { handles, onAbort };
      this.watched.set(signal, w);
      signal.addEventListener('abort', onAbort, { once: true });
    }
    const mine = w;
    mine.handles.add(handle);
    return () => {
      mine.handles.delete(handle);
      if (mine.handles.size > 0 || this.watched.get(signal) !== mine) return;
      this.watched.delete(signal);
      signal.removeEventListener('abort', mine.onAbort);
    };
  }

  /**
   * Renewed client certificates (or a new CA bundle), as Buffers like `connect`'s `tls`: the next
   * dial to a proxy (a reconnect, a failover) presents them; the open connection keeps its own.
   * Checked first as files are at start: a bad set throws a `TlsConfigError` (code TLS_CONFIG)
   * and the running one stays. A client connected without `tls` has none to renew.
   *
   * @example
   * client.renewTls({ cert: readFileSync('client.pem'), key: readFileSync('client.key'), ca: readFileSync('ca.pem') });
   */
  renewTls(tls: TlsMaterial): void {
    const running = this.actor.getSnapshot().context.opts.tls;
    this.actor.send({ type: 'RENEW_TLS', tls: renewed('tls', running, tls) });
  }

  /**
   * Renewed TLS material for etcd (`registry.tls`), for a client that finds its proxies in the
   * registry: as `ProxyHandle.renewRegistryTls`, its watch of the proxies moves to a new etcd
   * client made with it. Rejects with a `TlsConfigError` when the set cannot be used or etcd
   * refuses it (the running client kept), or when this client was not given a registry.
   */
  async renewRegistryTls(tls: TlsMaterial): Promise<Renewal> {
    if (!this.discovery) throw new TlsConfigError('cannot renew registry.tls: this client was given its proxies, not a registry (connect({ registry }) or revproc etcd://...)', 'usage');
    return this.discovery.renewTls(tls);
  }

  /** Requests sent and not settled yet. */
  get inFlight(): number {
    return this.unsettled;
  }

  /**
   * Stop taking requests, wait for those pending to settle (answer, error or
   * timeout), then close the connection.
   *
   * @example
   * await client.close();
   */
  async close(): Promise<void> {
    this.closing = true;
    if (this.unsettled > 0) await (this.whenSettled ??= new Promise<void>((resolve) => (this.settledNow = resolve)));
    this.destroy();
  }

  /** Close now: requests pending reject with `CLIENT_CLOSED`; `close` is emitted (once). */
  destroy(): void {
    const first = !this.closed;
    this.closing = true;
    this.closed = true;
    this.discovery?.close();
    if (this.actor.getSnapshot().status === 'active') this.actor.send({ type: 'CLOSE' });
    this.actor.stop();
    if (first) this.emit('close');
  }
}

/**
 * Connect to the proxy (or the first of several that answers); resolves
 * once connected, rejects with a `RequestError` coded `CONNECT_FAILED` when
 * no proxy can be reached. The client fails over to the next proxy when its
 * connection is lost, sending the requests that were in flight again.
 *
 * @example
 * import { connect } from 'revproxy';
 * const client = await connect({ revproc: 'localhost:2100,localhost:2200' });
 * console.log(await client.request('111', 'xyz1'));
 * await client.close();
 */
export async function connect(opts: ConnectOptions = {}): Promise<Client> {
  const bad = badStartOptions(opts, `{ revproc: ${DEFAULT_PROXY_PORT} }`) ?? badClientOption(opts);
  if (bad) throw new StartError(`connect(): ${bad}`);
  // Its certificate is presented only to a proxy that asks for one (mutual TLS): not held to clientAuth here, or one that no
  // proxy asks for would be refused (a peer that asks refuses it in the handshake, in words: transport/foreign.ts).
  checkTlsOptions(opts, 'connect()', false, []);
  const found = await locate(opts).catch((err: Error) => {
    throw err instanceof StartError ? new StartError(`connect(): ${err.message}`) : new RequestError(LocalCode.CONNECT_FAILED, err.message);
  });
  const client = startClient({ ...opts, id: opts.id ?? 'client', proxies: found.proxies }, opts.inspect, found.discovery);
  await new Promise<void>((resolve, reject) => {
    const check = (): boolean => {
      const s = client.actor.getSnapshot();
      // Connected once the proxy answered the PING sent first (or refused it, as a proxy older than client PINGs
      // does, and took the connection made again without one); a connection lost after it was made is the
      // requests' business, as it was before that PING.
      if ((s.matches({ session: 'open' }) && !s.context.probing) || (s.context.connectedOnce && !s.matches({ session: 'open' }))) resolve();
      else if (s.matches('offline') || s.status !== 'active') reject(new RequestError(LocalCode.CONNECT_FAILED, whyUnreached(s.context) ?? 'no reverse proxy could be reached'));
      else return false;
      return true;
    };
    if (check()) return;
    const sub = client.actor.subscribe({ next: () => check() && sub.unsubscribe(), error: reject });
  }).catch((err: unknown) => {
    client.destroy();
    throw err;
  });
  return client;
}

function startClient(opts: ClientOptions, inspect?: (event: InspectionEvent) => void, discovery?: Discovery): Client {
  const actor = createActor(clientMachine, { input: opts, ...actorOptions({ clock: opts.clock, inspect }) });
  actor.start();
  discovery?.onChange((proxies) => actor.send({ type: 'PROXIES', proxies }));
  return new Client(actor, opts.id, discovery);
}

/**
 * The proxies to start with: the list given, or those in the registry
 * (`registry`, or `revproc` given as `etcd://...`), followed from then on.
 * Rejects with the reason when the registry has none to offer.
 */
async function locate(opts: { revproc?: Revproc; registry?: RegistryOptions; proxies?: Endpoint[]; timeoutMs?: number; logger?: Logger | undefined }): Promise<{ proxies: Endpoint[]; discovery?: Discovery }> {
  let registry = opts.registry;
  if (!registry && typeof opts.revproc === 'string' && isRegistryUrl(opts.revproc)) {
    const { endpoints, tls } = parseRegistryUrl(opts.revproc);
    // etcds://: TLS with the system's CAs, as the CLI's --revproc etcds:// (cli/common.ts registryFromFlags).
    registry = { endpoints, tls: tls ? {} : undefined };
  }
  if (!registry) return { proxies: opts.proxies ?? (opts.revproc === undefined ? [{ ...DEFAULT_PROXY }] : endpoints(opts.revproc)) };
  const { discoverProxies } = await import('../registry/discovery.js');
  const discovery = await discoverProxies({ ...registry, waitMs: opts.timeoutMs });
  // Started from a member's last view (etcd without its quorum): said once; the list follows etcd once it is read.
  const { stale, proxies } = discovery;
  if (stale) {
    const n = proxies.length === 1 ? 'the proxy' : `the ${proxies.length} proxies`;
    opts.logger?.warn('registry_stale', `Cannot read the registry (${stale.why}): starting with ${n} the etcd member at ${stale.member} last saw (read without a leader, so possibly out of date); the list follows the registry once it can be read`, { member: stale.member, proxies: proxies.length });
  }
  return { proxies: discovery.proxies, discovery };
}

/**
 * The proxies `revproc` names, in order. Throws a StartError naming what cannot
 * be dialled (an option out of range, as the numeric ones are): net would throw it later, inside the actor that dials, where
 * nothing can catch it.
 */
export function endpoints(revproc: Revproc): Endpoint[] {
  const list = Array.isArray(revproc) ? revproc : typeof revproc === 'string' ? revproc.split(',') : [revproc];
  if (list.length === 0) throw new StartError('revproc names no reverse proxy: give a port, HOST:PORT, or a list of them');
  const isPort = (p: unknown): p is number => Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 65535;
  return list.map((r) => {
    if (typeof r === 'number') {
      if (!isPort(r)) throw new StartError(`revproc ${r} is not a port (1 to 65535)`);
      return { host: '127.0.0.1', port: r };
    }
    if (typeof r !== 'string') {
      if (typeof r?.host !== 'string' || !r.host || !isPort(r.port)) throw new StartError(`revproc ${JSON.stringify(r)} is not { host, port } with a port from 1 to 65535`);
      return r;
    }
    const m = /^\s*(?:\[([^\]]+)\]|([^:]+)):(\d+)\s*$/.exec(r) ?? /^\s*()()(\d+)\s*$/.exec(r);
    const port = m ? Number(m[3]) : NaN;
    if (!m || port < 1 || port > 65535) throw new StartError(`revproc '${r}' is not PORT or HOST:PORT`);
    return { host: m[1] || m[2] || '127.0.0.1', port };
  });
}

function failed(code: ErrorCode | ClientCode, message: string): Outcome {
  return { ok: false, error: new RequestError(code, message), latencyMs: 0 };
}

/** An AbortSignal, from this realm or another (a test runner's, a polyfill's): what the client calls on it is there. */
function isAbortSignal(v: unknown): v is AbortSignal {
  const s = v as AbortSignal | null;
  return typeof s === 'object' && s !== null && typeof s.aborted === 'boolean' && typeof s.addEventListener === 'function' && typeof s.removeEventListener === 'function';
}

/**
 * A request ended by its signal: ABORTED, named AbortError (RequestError), its `cause` the signal's reason (a
 * TimeoutError for AbortSignal.timeout(), whatever abort(reason) was given), as Node's own APIs reject; before, the
 * reason was lost but for its message.
 */
function aborted(signal: AbortSignal): Outcome & { ok: false; error: RequestError } {
  const r = signal.reason as { message?: unknown } | undefined;
  const error = new RequestError(LocalCode.ABORTED, `the request was aborted${typeof r?.message === 'string' ? `: ${r.message}` : ''}`, { cause: signal.reason });
  return { ok: false, error, latencyMs: 0 };
}

function toReply(index: number, payload: Payload, o: Outcome): Reply {
  return o.ok ? { index, payload, answer: o.answer.payload, server: o.answer.srcid, latencyMs: o.latencyMs } : { index, payload, error: o.error, latencyMs: o.latencyMs };
}

// ---- the `client` command's run: packets in, checked results out ----

export interface Packet {
  srcid: string;
  privPoliId: string;
  payload: Payload;
}

export interface Result {
  packet: Packet;
  /** The id of the server that answered. */
  server?: string;
  /** The answer, when one came. */
  answer?: Payload;
  /** Whether the answer is the payload's SHA1 hex: set only when it was checked (see `verify`). */
  correct?: boolean;
  /** Error code when no answer came: the proxy's (from its ERROR), or the client's own (CLIENT_TIMEOUT, CONNECTION_LOST, CONNECT_FAILED). */
  error?: string;
  /** With HANDLER_ERROR: the handler's own code. */
  appCode?: string;
  /**
   * With `error`: whether the packet may be sent again without its handler running twice (`RequestError.retryable`:
   * transport/errors.ts `isRetryable`, from its code and whether a handler may have run it). docs/PROTOCOL.md,
   * "Sending a request again".
   */
  retryable?: boolean;
  message?: string;
  latencyMs?: number;
}

export interface RunOptions extends Omit<ClientOptions, 'id'> {
  /** The client's id, the `srcid` of its packets unless one names another (default `client`, as `connect`'s). */
  id?: string | undefined;
  /** The proxy or proxies, as `connect` takes them (or `proxy`, `proxies`); `etcd://HOST:PORT` finds them in the registry. */
  revproc?: Revproc | undefined;
  packets: Packet[];
  /** Find the proxies in the registry (etcd) instead of `proxies`. */
  registry?: RegistryOptions | undefined;
  /**
   * Check each answer against the SHA1 of its payload: `true` checks every
   * answer, `false` none, `auto` (default) those shaped like a SHA1 (40
   * lowercase hex digits), so a custom handler's answers are printed, not failed.
   */
  verify?: boolean | 'auto' | undefined;
  inspect?: ((event: InspectionEvent) => void) | undefined;
}

const SHA1_SHAPE = /^[0-9a-f]{40}$/;

/** Send every packet (at most `window` at a time), wait for every answer or failure, return the results in packet order. */
export async function runClient(opts: RunOptions): Promise<Result[]> {
  const bad = badStartOptions(opts, `{ proxy: { host: '127.0.0.1', port: ${DEFAULT_PROXY_PORT} }, packets }`) ?? badClientOption(opts);
  if (bad) throw new StartError(`runClient(): ${bad}`);
  checkTlsOptions(opts, 'runClient()', false, []);
  let found: { proxies: Endpoint[]; discovery?: Discovery };
  try {
    found = await locate(opts);
  } catch (err) {
    if (err instanceof StartError) throw new StartError(`runClient(): ${err.message}`);
    // No proxy to send to: every packet fails the way a client that cannot connect fails.
    const { code, message, retryable } = new RequestError(LocalCode.CONNECT_FAILED, (err as Error).message);
    opts.logger?.error('connection', `${message}: ${opts.packets.length} request(s) unanswered`, { code, count: opts.packets.length, retryable });
    return opts.packets.map((packet) => ({ packet, error: code, retryable, message }));
  }
  // Without a registry or `revproc` the options say where the proxies are (`proxy` or `proxies`), as they always did;
  // `revproc` was not read at all, and the client dialled 127.0.0.1:2100.
  const where = found.discovery || opts.revproc !== undefined ? { proxies: found.proxies } : {};
  const client = startClient({ ...opts, id: opts.id ?? 'client', ...where }, opts.inspect, found.discovery);
  const log = client.actor.getSnapshot().context.logger;
  const verify = opts.verify ?? 'auto';
  const window = opts.wire === 'json' ? 1 : opts.window ?? 64;
  const results: Result[] = opts.packets.map((packet) => ({ packet }));
  let next = 0;
  // Once no proxy can be reached, the rest fail the same way without trying again for each: never sent, as retryable as
  // their code is (the request that found no proxy may have been sent).
  let gaveUp: Outcome | undefined;
  const worker = async (): Promise<void> => {
    while (next < opts.packets.length) {
      const i = next++;
      const p = opts.packets[i]!;
      const o = gaveUp ?? await client.send(p.privPoliId, p.payload, { srcid: p.srcid });
      if (!o.ok && (o.error.code === LocalCode.CONNECT_FAILED || o.error.code === LocalCode.CONNECTION_LOST)) gaveUp ??= { ok: false, error: new RequestError(o.error.code, o.error.message), latencyMs: 0 };
      check(results[i]!, o, verify, log, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(window, opts.packets.length) }, worker));
  client.destroy();
  return results;
}

function check(r: Result, o: Outcome, verify: boolean | 'auto', log: Logger, i: number): void {
  r.latencyMs = o.latencyMs;
  const p = r.packet;
  if (!o.ok) {
    const e = o.error;
    r.error = e.code;
    r.message = e.message;
    const appCode = 'appCode' in e ? e.appCode : undefined;
    if (appCode !== undefined) r.appCode = appCode;
    r.retryable = e.retryable;
    log.error('request_failed', `Request ${i} (policy ${p.privPoliId}) failed: ${e.code} (${appCode ? `${appCode}, ` : ''}${e.retryable ? 'retryable' : 'not retryable'}): ${e.message}`, {
      seq: i, code: e.code, appcode: appCode, retryable: e.retryable, policy: p.privPoliId,
    });
    return;
  }
  const a = o.answer;
  r.server = a.srcid;
  r.answer = a.payload;
  if (verify === false || (verify === 'auto' && !(typeof a.payload === 'string' && SHA1_SHAPE.test(a.payload)))) {
    // Not checked: the answer is the result, so it is printed (the per-request lines are debug).
    log.info('result', `Answer from server ${a.srcid}: ${show(a.payload)}`, { seq: i, server: a.srcid, answer: show(a.payload) });
    return;
  }
  const expected = sha1Hex(p.payload);
  r.correct = a.payload === expected;
  if (r.correct) log.info('verified', 'Hash of payload is correct', { seq: i, server: a.srcid });
  else log.error('wrong_hash', 'Hash of payload is not correct', { seq: i, server: a.srcid, expected, got: typeof a.payload === 'string' ? a.payload : `<${a.payload.length} bytes>` });
}
