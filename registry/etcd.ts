/**
 * The etcd client (npm `etcd3`, over gRPC), made the same way for servers,
 * proxies and clients: loaded only when a registry is asked for (it costs
 * about a third of a second to load), with its fault handling set for a
 * registry that must come back quickly after an outage: a per-member circuit
 * breaker that tries again after a second (etcd3's default waits 5 s), longer
 * for a member that keeps failing while others answer (registry/host-breaker.ts), a
 * deadline on every call and on the making of every watch, gRPC keepalives
 * that notice an etcd that went silent. And etcd's errors in words.
 */
import type { CallOptions, Interceptor, InterceptingCall as Call, Metadata, StatusObject } from '@grpc/grpc-js';
import type { Etcd3, IKeyValue, IOptions } from 'etcd3';
import { validityOf } from '../transport/tls.js';
import { systemClock } from '../transport/clock.js';
import { HostBreakers } from './host-breaker.js';
import { Dials } from './etcd-dials.js';
import { describeRegistry, type Resolved } from './options.js';

export type { Etcd3 } from 'etcd3';

/** etcd3's module, once a client was made (`openEtcd` loads it): its errors, for `keepaliveOnce`. */
let etcd3: typeof import('etcd3') | undefined;

/**
 * `requireLeader`: whether every call asks etcd for a leader (`requireLeader` below: the default). Without, a
 * serializable read is answered from a member's own data with or without a leader: what a client finding the
 * proxies during a quorum loss reads (registry/discovery.ts `staleProxies`), nothing else. The calls of etcd's Auth
 * service (a user's token, `Authenticate`) ask for one all the same: etcd applies them through raft, so a member
 * without a leader cannot answer them. Asked to require one, it refuses at once (14 UNAVAILABLE "etcdserver: no
 * leader"); not asked, it held the call until its request timeout (7 s with etcd's defaults: 14 UNAVAILABLE
 * "etcdserver: request timed out", a wrong password too) or the deadline (Debian's etcd 3.4.23, two members of
 * three hung). `isNoLeader` tells such a refusal.
 */
export async function openEtcd(o: Resolved, { requireLeader: leaderRequired = true }: { requireLeader?: boolean } = {}): Promise<Etcd3> {
  const [mod, { BrokenCircuitError, ExponentialBackoff }, grpc] = await Promise.all([import('etcd3'), import('cockatiel'), import('@grpc/grpc-js')]);
  etcd3 = mod;
  const { Etcd3, isRecoverableError } = mod;
  const left = new Leftovers(grpc.InterceptingCall, grpc.status.CANCELLED);
  const leader = requireLeader(grpc.InterceptingCall);
  const exhausted = exhaustedIsNoFault(grpc.InterceptingCall, grpc.status);
  // etcd's Auth calls require a leader whether the others do or not (above).
  const auth = [left.interceptor, leader, exhausted];
  const calls = leaderRequired ? auth : [left.interceptor, exhausted];
  const streams = leaderRequired ? [left.interceptor, leader] : [left.interceptor];
  // A watch etcd refuses for its token makes the stream again with a new one (`tokenRefused`): set once the client is made.
  let tokenDropped: (used: string | undefined) => void = () => undefined;
  const watch = [...calls, watchInterceptor(grpc.InterceptingCall, grpc.status.DEADLINE_EXCEEDED, o.callTimeoutMs), tokenRefused(grpc.InterceptingCall, grpc.status.UNAUTHENTICATED, (used) => tokenDropped(used))];
  // Each TCP connection to etcd: a connect timeout, and ended at the close (registry/etcd-dials.ts).
  const dials = new Dials(grpc, o.callTimeoutMs);
  const breakers = new HostBreakers(Math.min(1000, o.retryMaxMs), (err) => err instanceof Error && isRecoverableError(err), BrokenCircuitError);
  const options: IOptions = {
    hosts: o.endpoints.map((e) => `${o.tls ? 'https' : 'http'}://${e}`),
    // etcd3 1.1 does nothing with this: the dials' timeout is set by `dials`.
    dialTimeout: o.callTimeoutMs,
    // gRPC takes a deadline as a wall-clock time and turns it into a timer (monotonic) when the call starts, a moment after this.
    defaultCallOptions: (ctx) => (ctx.isStream ? { interceptors: ctx.service === 'Watch' ? watch : streams } : { interceptors: ctx.service === 'Auth' ? auth : calls, deadline: deadlineIn(o.callTimeoutMs) }),
    // etcd's default --grpc-keepalive-min-time is 5 s: ping no more often than that. A message from
    // etcd larger than MAX_RECEIVE_BYTES is refused (gRPC's default is 4 MiB): see there.
    grpcOptions: { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': Math.max(1000, o.callTimeoutMs), 'grpc.max_receive_message_length': MAX_RECEIVE_BYTES, ...dials.channelOptions() },
    faultHandling: {
      // etcd3's types want cockatiel's whole policy; it calls only `execute` (registry/host-breaker.ts).
      host: () => breakers.add() as never,
      // etcd3's types say a backoff, its code calls `.next()` on a factory (its own default is one); `Leftovers` sees its waits.
      watchBackoff: left.backoffs(new ExponentialBackoff({ initialDelay: o.retryInitialMs, maxDelay: o.retryMaxMs })) as never,
    },
  };
  if (o.username !== undefined) options.auth = { username: o.username, password: o.password ?? '' };
  if (o.tls && (o.tls.ca || o.tls.cert)) {
    options.credentials = { rootCertificate: o.tls.ca ?? Buffer.alloc(0), privateKey: o.tls.key, certChain: o.tls.cert };
  }
  const client = new (class extends Etcd3 {
    constructor(options: IOptions) {
      super(options);
      authenticateOnHosts(this.pool, grpc.Metadata, mod.castGrpcError, isRecoverableError);
      tokenDropped = forgetToken(this.pool);
      refusedWatchesEnd(this);
    }

    override close(): void {
      // A channel still connecting is closed at once, not a second later (etcd3's workaround for grpc-node#1487): that second held the process.
      // etcd3's own fields (1.1's ConnectionPool and Host), read with care: another version without them closes as etcd3 does.
      for (const host of (this.pool as unknown as { hosts?: Array<{ cachedServices?: Record<string, { close?(): void } | undefined> }> }).hosts ?? []) {
        for (const service of Object.values(host.cachedServices ?? {})) service?.close?.();
      }
      super.close();
      left.close();
      dials.close();
    }
  })(options);
  leftovers.set(client, left);
  return client;
}

/** What `authenticateOnHosts` reads of etcd3 1.1's ConnectionPool: its Authenticator and its members (`Host`). */
interface Pool {
  authenticator?: Asker & { getCredentialsFromHost?: unknown };
  hosts?: Array<{ host?: unknown; getServiceClient?(name: 'Auth'): AuthClient; resetAllServices?(): void; faultHandling?: { execute?<T>(fn: () => PromiseLike<T>): Promise<T> } }>;
}

interface AuthClient {
  authenticate(request: { name: string; password: string }, metadata: Metadata, options: CallOptions, callback: (err: Error | null, res?: { token: string }) => void): void;
}

/**
 * With a user (`auth`), etcd3's Authenticator asks a member for a token through a gRPC client it makes for that one call
 * (`new Auth(host, credentials)`), without the client's channel options and never closed: its dials were not ours
 * (registry/etcd-dials.ts). A token asked of a member whose packets are dropped left a dial pending past the stop (a proxy
 * had not exited 15 minutes after SIGTERM: the channel, never closed, dialled again after each SYN timeout; a server said
 * "revproxy itself left it"), and one asked of a member that took the connection and said nothing held the process for
 * good (grpc-js waits for a TLS handshake without a timeout). It was also one more connection to etcd. So the token is
 * asked through the member's own Auth client (etcd3's `Host.getServiceClient`): made with the client's channel options
 * (its dials under the policy, its connection the one the member's other services share) and closed with them.
 *
 * And through the member's breaker (registry/host-breaker.ts, etcd3's `faultHandling.host`), as etcd3's pool sends its other
 * calls: the Authenticator asks the members in the order of --registry, each in turn, so a first member that was down
 * (SIGSTOPped, its packets dropped) cost every token ask a call timeout (2 s) before the second was asked, and a dial to
 * it, at start and at every renewal (etcd's simple token expires after its --auth-token-ttl unused; etcd3 asks again on
 * EtcdInvalidAuthTokenError), with every registry call waiting on it. A member its breaker holds back is now passed over
 * at once (BrokenCircuitError: the Authenticator asks the next); a failed ask counts against the member as any failed
 * call to it; a refusal (a wrong password) is an answer. When every member is held back the ask fails as other calls do,
 * and is let through again after the breaker's base. A failed ask (recoverable, as etcd3 counts them) makes the member's
 * channels again, as etcd3 does after any other call that failed so (`resetAllServices`): the next asks went over the same
 * connection, and one gone silent (a NAT that forgot it) failed them all until gRPC's keepalive gave it up (a client of one
 * member answered its first read 11.5 s after; now 1.1 s, the call's second try). The members are asked in an order drawn
 * anew for each round (`shuffleTokenAsks`): a process's first ask, whose breakers know nothing yet, no longer always goes
 * to the first of --registry. etcd3's fields, read with care: another version without them authenticates as etcd3 does.
 */
function authenticateOnHosts(pool: unknown, Metadata: new () => Metadata, castGrpcError: (err: Error) => Error, isRecoverable: (err: Error) => boolean): void {
  const { authenticator, hosts } = pool as Pool;
  if (typeof authenticator?.getCredentialsFromHost !== 'function' || !Array.isArray(hosts)) return;
  shuffleTokenAsks(authenticator);
  const own = authenticator.getCredentialsFromHost as (address: string, ...rest: unknown[]) => Promise<string>;
  authenticator.getCredentialsFromHost = (address: string, name: string, password: string, options: CallOptions | undefined, ...rest: unknown[]): Promise<string> => {
    const host = hosts.find((h) => h.host === address);
    if (typeof host?.getServiceClient !== 'function') return own.call(authenticator, address, name, password, options, ...rest);
    const ask = (): Promise<string> =>
      new Promise<string>((resolve, reject) => {
        // Throws ClientClosedError once the client is closed: a rejection, as etcd3's own call would fail then.
        host.getServiceClient!('Auth').authenticate({ name, password }, new Metadata(), options ?? {}, (err, res) => (err || !res ? reject(castGrpcError(err ?? new Error('etcd sent no token'))) : resolve(res.token)));
      }).catch((err: Error) => {
        // The member's channels made again, as etcd3 does after any other call that failed so (its `resetAllServices`).
        if (isRecoverable(err)) host.resetAllServices?.();
        throw err;
      });
    const breaker = host.faultHandling;
    return typeof breaker?.execute === 'function' ? breaker.execute(ask) : ask();
  };
}

/** What `shuffleTokenAsks` reads of etcd3 1.1's Authenticator: its options (the members it asks, in their order) and the token it holds. */
interface Asker {
  options?: { hosts?: string | string[]; auth?: unknown };
  awaitingMetadata?: unknown;
  getMetadata?(): Promise<Metadata>;
}

/**
 * etcd3's Authenticator asks the members for a token in the order of --registry, the next only when one fails: a process's
 * first ask went to the first member, and waited out a call timeout (2 s) there when it hung, before any call was made. So
 * each round of asks goes through the members in an order drawn anew (as etcd3 sends its other calls, `shuffledHosts`; etcd's
 * Go client asks through its balancer, whichever member it picks). A member its breaker holds back is still passed over at
 * once (`authenticateOnHosts`). etcd3's fields, read with care: without them the order is --registry's.
 */
function shuffleTokenAsks(authenticator: Asker): void {
  const own = authenticator.getMetadata;
  const hosts = authenticator.options?.hosts;
  // Without a user no token is asked: each call would copy the options and shuffle the members for nothing.
  if (typeof own !== 'function' || !Array.isArray(hosts) || hosts.length < 2 || !authenticator.options?.auth) return;
  authenticator.getMetadata = function (this: Asker) {
    // A new round (no token held nor asked): etcd3 reads the members from its options as the round starts.
    if (this.awaitingMetadata === null) this.options = { ...this.options, hosts: shuffled(hosts) };
    return own.call(this);
  };
}

/** `items` in a random order (Fisher-Yates). */
function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Each client's `Leftovers`, for `released`. */
const leftovers = new WeakMap<Etcd3, Leftovers>();

/**
 * Settles once `client`, closed, holds the process no more: its calls cancelled at the close, and etcd3's last wait before
 * trying a watch again (at most `retryMaxMs`) over. A stop that exits when it settles leaves nothing of etcd's open.
 */
export function released(client: Etcd3): Promise<void> {
  return leftovers.get(client)?.released() ?? Promise.resolve();
}

/** What etcd3 reads of a watch's backoff (made by its factory's `next()`): the wait before its next try, and the backoff after it. */
interface Backoff {
  readonly duration: number;
  next(context: undefined): Backoff;
}

/**
 * What of one etcd client could hold the process once it is closed, cut or waited for. etcd3's `close()` closes the gRPC
 * channels and grpc-js lets the calls on them run on: a watch (whose cancel waits for etcd's answer) kept its connection to an
 * etcd that had hung (SIGSTOP, a frozen VM) until gRPC's keepalive gave the connection up, 3-10 s later, and the process
 * with it (a proxy stopped while etcd hung exited up to 10.4 s after its last line; a server's exit check, 1 s after its
 * stop, called the socket revproxy's bug). So every call is seen (`interceptor`) and those still open are cancelled at the
 * close: every other call has a deadline anyway. And etcd3 waits between a watch's tries (its backoff, up to retryMaxMs)
 * on a timer of its own, set as the cancelled stream fails or before: once closed, it waits nothing, and `released` waits
 * for the wait set before (etcd3 then finds the watchers gone, each cancelled before the close, and stops).
 */
class Leftovers {
  private readonly calls = new Set<Call>();
  readonly interceptor: Interceptor;
  private closed = false;
  /** When etcd3's last wait before a watch's next try ends (`systemClock` ms). */
  private waitEnds = 0;

  constructor(InterceptingCall: typeof Call, private readonly cancelled: number) {
    this.interceptor = (options, next) => {
      const call: Call = new InterceptingCall(next(options), {
        start: (metadata, _listener, start) => {
          this.calls.add(call);
          start(metadata, {
            onReceiveStatus: (status, next) => {
              this.calls.delete(call);
              next(status);
            },
          });
        },
      });
      return call;
    };
  }

  /** The backoffs `factory` makes, as etcd3 reads them: each wait read is a timer etcd3 sets now. */
  backoffs(factory: { next(context: undefined): Backoff }): { next(context: undefined): Backoff } {
    const waitFor = (ms: number): number => this.waitFor(ms);
    const seen = (b: Backoff): Backoff => ({
      get duration() {
        return waitFor(b.duration);
      },
      next: () => seen(b.next(undefined)),
    });
    return { next: () => seen(factory.next(undefined)) };
  }

  private waitFor(ms: number): number {
    if (this.closed) return 0;
    this.waitEnds = Math.max(this.waitEnds, systemClock.now() + ms);
    return ms;
  }

  close(): void {
    this.closed = true;
    for (const call of [...this.calls]) call.cancelWithStatus(this.cancelled, 'the etcd client is closed');
    this.calls.clear();
  }

  released(): Promise<void> {
    const ms = this.waitEnds - systemClock.now();
    // etcd3's timer is Node's, on the system's time, and holds the process: so does this wait (one that did not, with
    // nothing else left, ended the process mid-stop: exit 13, an unsettled top-level await).
    return ms > 0 ? new Promise((resolve) => setTimeout(resolve, ms + 1)) : Promise.resolve();
  }
}

/**
 * Every call asks etcd to require a leader (`hasleader: true` in its metadata: what etcd's Go
 * client sends for `WithRequireLeader`, and etcdctl for every watch). A member cut off from the
 * others by a partition lives, answers gRPC's pings and has no leader. Without this, it served a
 * watch from its own data, which no longer changes, so the watch went silent without an error for
 * as long as the cut lasted (a proxy that joined through the majority went unseen); and every read
 * and keepalive sent to it waited out its whole deadline (a proxy said the registry was
 * unreachable when two reads in a row went there, though two members of three answered; a server
 * took 4-6 s to register). Asked to require a leader, the member refuses at once ("etcdserver: no
 * leader", which etcd3 counts as recoverable: it tries another member within the same call), and
 * ends a stream it holds once it has been without a leader for three election timeouts (3 s with
 * etcd's defaults): etcd3 makes the stream again, and the mirror reads again, on a member chosen
 * anew. While a cluster elects a new leader (1-2 s) every member refuses so: the callers already
 * try again for longer than that (registry/mirror.ts, registry/kept-key.ts).
 */
function requireLeader(InterceptingCall: typeof Call): Interceptor {
  return (options, next) =>
    new InterceptingCall(next(options), {
      start(metadata, listener, start) {
        metadata.set('hasleader', 'true');
        start(metadata, listener);
      },
    });
}

/**
 * The largest message taken from etcd (bytes): gRPC's default, 4 MiB, is less than a read of a
 * prefix of 16,000 entries of 250 bytes, or of four values of 1.4 MB that anyone who can write
 * under the prefix may put there (etcd takes a request of up to its --max-request-bytes, 1.5 MiB
 * by default). Reads of a prefix go in pages (`readPrefix`), each far below this; but etcd sends a
 * watch all the events of one revision in one message (a delete of a prefix: an event per key,
 * each with its key, up to 1.5 MiB) and, when a watch catches up, the events of up to 1000
 * revisions together, so this is what one watch message may carry. etcd's own Go client takes up
 * to 2 GiB. A larger message ends the call or the watch with RESOURCE_EXHAUSTED (gRPC refuses it
 * from its length, before reading it), which costs a watch a read of the prefix again, not the
 * registry.
 */
const MAX_RECEIVE_BYTES = 32 << 20;

/**
 * What every call but a keepalive goes through besides: two RESOURCE_EXHAUSTEDs that are no fault
 * of the member, which etcd3 would take for one (it closes the member's connection, the watches and
 * keepalives on it with it, counts a failure against its breaker, and tries the call again twice).
 *
 * - etcd out of space (its NOSPACE alarm, raised when its database reached --quota-backend-bytes)
 *   refuses every write, a lease grant too. A proxy that could not write its own key read the whole
 *   registry again every 12 s, each time saying etcd was unreachable (and /readyz with it) then
 *   back, though etcd answered every read.
 * - A message larger than this client takes (MAX_RECEIVE_BYTES), which gRPC itself refuses: etcd3
 *   would send a page of a prefix filled with large values twice more, close the connection each
 *   time, and after three such pages the member's breaker (host-breaker.ts) would hold back the
 *   smaller page asked next (`readPrefix`).
 *
 * Each is passed on as FAILED_PRECONDITION (what it is: the call cannot be made in this state),
 * which etcd3 leaves to the caller, the words kept.
 */
function exhaustedIsNoFault(InterceptingCall: typeof Call, status: { RESOURCE_EXHAUSTED: number; FAILED_PRECONDITION: number }): Interceptor {
  return (options, next) =>
    new InterceptingCall(next(options), {
      start(metadata, listener, start) {
        start(metadata, {
          onReceiveStatus(s, next) {
            next(s.code === status.RESOURCE_EXHAUSTED && (NO_SPACE.test(s.details) || TOO_LARGE.test(s.details)) ? { ...s, code: status.FAILED_PRECONDITION } : s);
          },
        });
      },
    });
}

/** etcd's words for a write it refuses while out of space (its ErrGRPCNoSpace). */
const NO_SPACE = /database space exceeded/i;

/** gRPC's words for a message over its receive limit, with its size and the limit. */
const TOO_LARGE = /Received message larger than max \((\d+) vs\.? (\d+)\)/i;

/** Whether `err` is a message from etcd over this client's receive limit (MAX_RECEIVE_BYTES). */
function isTooLarge(err: unknown): boolean {
  return TOO_LARGE.test(String((err as Error | undefined)?.message ?? err));
}

/** Most keys one page of `readPrefix` asks for. */
const PAGE_KEYS = 1000;

/** Keys the first page of `readPrefix` asks for, before it knows their sizes: etcd builds the whole answer before gRPC can refuse it, 150 MiB for 100 values of 1.5 MiB. */
const FIRST_PAGE_KEYS = 100;

/** About how many bytes (keys and values) a page of `readPrefix` asks for: each page's limit of keys is set by the sizes of the one before. */
const PAGE_BYTES = 4 << 20;

/** One page of `readPrefix`: keys in key order, read at `revision` (that of the first page). */
export interface Page {
  kvs: IKeyValue[];
  revision: string;
}

/** The first key after every key that starts with `prefix` (etcd's range end for a prefix; a zero byte for "to the end"). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

/**
 * Every key under `prefix`, a page at a time (each page a range with a limit, from just after the
 * last key read), every page at the revision of the first, so the pages are one state, and a watch
 * from that revision + 1 misses nothing. Read whole, in one answer, a prefix of 20,000 entries or
 * of four values of 1.4 MB went over gRPC's receive limit, and no proxy could read the registry.
 * A page's limit is set from the sizes of the keys and values of the one before (about PAGE_BYTES,
 * at most PAGE_KEYS keys; FIRST_PAGE_KEYS for the first), and a page larger than MAX_RECEIVE_BYTES
 * all the same is asked again with a quarter of its limit, down to one key. The caller takes each page and drops it before the next,
 * so what is held is one page. Each page is a call of its own, within `callTimeoutMs`.
 *
 * A compaction past the revision between two pages fails the read with etcd's "required revision
 * has been compacted" (`isCompactedRead`): it is read again from the start.
 */
export async function* readPrefix(client: Etcd3, prefix: string, callTimeoutMs: number): AsyncGenerator<Page> {
  const end = prefixEnd(Buffer.from(prefix));
  let start = Buffer.from(prefix);
  let revision: string | undefined;
  let limit = FIRST_PAGE_KEYS;
  for (;;) {
    const range = client.getAll().inRange({ start, end }).limit(limit);
    if (revision !== undefined) range.revision(revision);
    let res;
    try {
      res = await inCallTimeout(range.exec(), callTimeoutMs);
    } catch (err) {
      if (isTooLarge(err) && limit > 1) {
        limit = Math.max(1, limit >> 2);
        continue;
      }
      throw err;
    }
    revision ??= res.header.revision;
    const { kvs } = res;
    yield { kvs, revision };
    if (!res.more || kvs.length === 0) return;
    start = Buffer.concat([kvs[kvs.length - 1]!.key, Buffer.alloc(1)]);
    let bytes = 0;
    for (const kv of kvs) bytes += kv.key.length + kv.value.length;
    limit = Math.max(1, Math.min(PAGE_KEYS, Math.floor((PAGE_BYTES * kvs.length) / Math.max(1, bytes))));
  }
}

/** Whether a read at a revision failed because etcd compacted its history past it. */
export function isCompactedRead(err: unknown): boolean {
  return /required revision has been compacted/i.test(String((err as Error | undefined)?.message ?? err));
}

/**
 * What every watch stream goes through besides: etcd must make the watch within `ms`. A watch
 * stream has no deadline (it lives as long as the watch), and etcd3 sends it to a member chosen at
 * random: one sent to a member this host cannot reach (its packets dropped: a cut, a firewall)
 * never connects and never fails - gRPC waits on the connection as long as TCP tries, minutes -
 * and every watch of the client waits on that stream meanwhile (a mirror there said it was up and
 * told nothing for over 120 s). So etcd must answer within `ms` (its first message says the watch
 * is made); if not, the stream is ended as a missed deadline, and etcd3 marks the member failed and
 * makes the stream again on another.
 */
function watchInterceptor(InterceptingCall: typeof Call, deadlineExceeded: number, ms: number): Interceptor {
  return (options, next) => {
    let timer: NodeJS.Timeout | undefined;
    const call: Call = new InterceptingCall(next(options), {
      start(metadata, _listener, start) {
        timer = setTimeout(() => call.cancelWithStatus(deadlineExceeded, `deadline exceeded: etcd did not make the watch within ${ms} ms`), ms);
        start(metadata, {
          onReceiveMessage(message, next) {
            clearTimeout(timer);
            next(message);
          },
          onReceiveStatus(status, next) {
            clearTimeout(timer);
            next(status);
          },
        });
      },
    });
    return call;
  };
}

/** etcd's words for a watch it refuses for the token the stream opened with (its cancel reason): dropped, or older than its auth store. */
const TOKEN_REFUSED = /invalid auth token|revision of auth store is old/i;

/**
 * What every watch stream goes through besides, with a user (`auth`): a watch etcd refuses for the stream's token ends
 * the stream, and the next is opened with a new token. etcd checks a user's simple token on each request, drops it after
 * --auth-token-ttl (300 s by default) without one, and drops them all when it restarts; a lease keepalive and the events
 * of a watch made already do not use it, so a quiet proxy or server holds a dropped one. etcd3 asks for a new token when a
 * unary call is refused (EtcdInvalidAuthTokenError) but not for a stream: it opens a stream with the token it holds, and
 * etcd then cancels each watch made on it ("etcdserver: invalid auth token": etcd checks the token the stream opened
 * with, at each watch made). etcd3 takes that cancel as the watch's end, and its queue of watches to make waits for an
 * answer to that one forever: a watch made after it on the stream was never sent, and told nothing (a proxy's mirror,
 * made again after etcd restarted, saw no server register; Debian's etcd 3.4.23, --auth-token-ttl 3). So the refusal
 * (`created` and `canceled`, in etcd's words) is not passed on: the token the stream opened with is forgotten (`dropped`,
 * unless a newer one was asked meanwhile) and the stream ended as UNAUTHENTICATED; etcd3 then makes it again (its
 * backoff), asking a new token, and makes each of its watches again from the revision it had reached: what etcd's Go
 * client does (its watch's `shouldRetryWatch`: a new stream for the same two reasons).
 */
function tokenRefused(InterceptingCall: typeof Call, unauthenticated: number, dropped: (used: string | undefined) => void): Interceptor {
  return (options, next) => {
    const call: Call = new InterceptingCall(next(options), {
      start(metadata, listener, start) {
        const used = metadata.get('token')[0]?.toString();
        // A listener of grpc-js's own form (one argument each, passing on itself): one with `next` callbacks holds the
        // stream's status until the message in hand is passed on, and the refusal is not.
        start(metadata, {
          onReceiveMetadata: (md: Metadata) => listener.onReceiveMetadata(md),
          onReceiveMessage: (message: { created?: boolean; canceled?: boolean; cancel_reason?: string } | undefined) => {
            if (!(message?.created && message.canceled && TOKEN_REFUSED.test(message.cancel_reason ?? ''))) return listener.onReceiveMessage(message);
            dropped(used);
            call.cancelWithStatus(unauthenticated, `etcdserver: invalid auth token (etcd refused a watch: ${message.cancel_reason})`);
          },
          onReceiveStatus: (status: StatusObject) => listener.onReceiveStatus(status),
        });
      },
    });
    return call;
  };
}

/** What `refusedWatchesEnd` reads of etcd3 1.1's WatchManager (the client's `watchManager`) and of its queue of watches to make (`AttachQueue`). */
interface WatchManager {
  queue?: { queue?: unknown[]; readQueue?(): void };
  handleCreatedResponse?(res: { canceled?: boolean }): void;
  handleCancelResponse?(watcher: unknown, res: unknown): void;
}

/**
 * A watch etcd refuses as it is made (`created` and `canceled`, with its reason: "etcdserver: permission denied" when the
 * user's roles may no longer read the range, as after a role's permission was revoked) ends that watch only, and the watches
 * made after it on the stream are made. etcd3 makes a stream's watches one at a time, each once etcd answered the one before
 * (its AttachQueue); a refused one it ends (its watcher's `error`: "Watcher canceled: ..." in etcd's words) but it leaves it at
 * the head of that queue, waiting for an answer that came: every watch made after it on the client was never sent, and nothing
 * said so (a proxy whose role could not read servers/ for a moment, given it back, read the registry and said it watched it,
 * and never saw a server come or go; Debian's etcd 3.4.23). etcd's Go client takes such an answer as the answer to the head of
 * its queue, tells that watch (its channel's last response, canceled, with the reason) and sends the next (its watch.go `run`):
 * so does this. What the refused watch's owner does then is its own: the mirror says it and tries again with backoff
 * (registry/mirror.ts). A stale token (`tokenRefused`) ends the stream before this. etcd3's fields, read with care: another
 * version without them makes watches as etcd3 does.
 */
function refusedWatchesEnd(client: unknown): void {
  const manager = (client as { watchManager?: WatchManager } | undefined)?.watchManager;
  const own = manager?.handleCreatedResponse;
  if (!manager || typeof own !== 'function' || typeof manager.handleCancelResponse !== 'function') return;
  manager.handleCreatedResponse = function (this: WatchManager, res) {
    const queue = this.queue;
    const head = queue?.queue?.[0];
    if (!res.canceled || head === undefined || typeof queue?.readQueue !== 'function') return own.call(this, res);
    queue.queue = queue.queue!.slice(1);
    // The next watch is sent before the refused one is told: its owner may throw (an `error` nobody listens to).
    queue.readQueue();
    this.handleCancelResponse!(head, res);
  };
}

/** What `forgetToken` reads of etcd3 1.1's Authenticator: the token it holds (a promise of the calls' metadata), and how it forgets it. */
interface HeldToken {
  awaitingMetadata?: Promise<Metadata> | null;
  invalidateMetadata?(): void;
}

/**
 * Forgets the token etcd3's Authenticator holds if it is `used` (a stream's, which etcd refused): its next call asks a new
 * one. A newer token (asked meanwhile, after a unary call was refused) is kept. etcd3's fields, read with care: without
 * them nothing is forgotten (the stream made again has the same token, as before).
 */
function forgetToken(pool: unknown): (used: string | undefined) => void {
  const authenticator = (pool as { authenticator?: HeldToken } | undefined)?.authenticator;
  return (used) => {
    const held = authenticator?.awaitingMetadata;
    if (!held || typeof authenticator.invalidateMetadata !== 'function') return;
    void held.then(
      (metadata) => {
        if (authenticator.awaitingMetadata === held && metadata.get('token')[0]?.toString() === used) authenticator.invalidateMetadata!();
      },
      () => undefined,
    );
  };
}

/** A gRPC deadline `ms` from now: a wall-clock time by gRPC's API, which makes it a timer (monotonic) as the call starts. */
export function deadlineIn(ms: number): number {
  return Date.now() + ms;
}

/**
 * One keepalive of lease `id` through `client`, on a stream of its own with a deadline: resolves
 * with the TTL etcd gives the lease again, rejects when it is not answered in time or etcd says
 * the lease is gone (EtcdLeaseInvalidError). By lease id rather than through etcd3's Lease, which
 * is bound to the client that granted it: a kept key moves to a new client (renewed TLS files,
 * registry/etcd-client.ts) and keeps its lease.
 */
export async function keepaliveOnce(client: Etcd3, id: string, deadline: number): Promise<void> {
  const stream = await client.leaseClient.leaseKeepAlive({ deadline });
  const res = await new Promise<{ ID: string; TTL: string }>((resolve, reject) => {
    stream.on('data', resolve);
    stream.on('error', (err: Error) => reject(etcd3 ? etcd3.castGrpcError(err) : err));
    stream.write({ ID: id });
  });
  stream.end();
  if (res.TTL === '0') throw etcd3 ? new etcd3.EtcdLeaseInvalidError(id) : Object.assign(new Error(`lease ${id} is expired or revoked`), { name: 'EtcdLeaseInvalidError' });
}

/**
 * `call`, or a deadline error after `ms`. etcd3 tries a call that missed its deadline twice more
 * (its pool's retry policy), each with a deadline of its own: against a cluster without quorum (2
 * members of 3 hung) a read took 6-8 s to fail instead of 2, so a proxy said the registry was
 * unreachable only after an 8 s outage had ended, and stayed so for 4 s more while the read still
 * in flight failed. The call left behind settles on its own, unheard.
 */
export function inCallTimeout<T>(call: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`deadline exceeded: the read had no answer within ${ms} ms`), { name: 'GRPCDeadlineExceededError' })), ms);
  });
  call.catch(() => undefined);
  return Promise.race([call, late]).finally(() => clearTimeout(timer));
}

/**
 * Whether etcd answered a call and refused it, in its own words (out of space, permission denied),
 * rather than could not be reached, did not answer in time or has no leader (each of which etcd3
 * takes for a failing member), or let a lease go (written again under a new one).
 */
export function isEtcdRefusal(err: unknown): boolean {
  const e = err as Error | undefined;
  if (!(e instanceof Error) || (etcd3 && (etcd3.isRecoverableError(e) || e instanceof etcd3.EtcdLeaseInvalidError))) return false;
  return !(e as { isBrokenCircuitError?: boolean }).isBrokenCircuitError && e.name !== 'EtcdLeaseInvalidError' && /etcdserver:/.test(e.message);
}

/**
 * Whether etcd refused a call for want of a leader ("etcdserver: no leader": a call that requires one, on a member that has
 * none), or the member's breaker held the call back for such refusals (its token asks too: `authenticateOnHosts`).
 */
export function isNoLeader(err: unknown): boolean {
  const cause = heldBackFor(err);
  return /no leader/i.test(String((err as Error | undefined)?.message ?? err)) || (cause !== undefined && isNoLeader(cause));
}

/** The failure that opened the breaker, for a call it held back (registry/host-breaker.ts); undefined for any other error. */
function heldBackFor(err: unknown): unknown {
  return (err as { isBrokenCircuitError?: boolean; cause?: unknown } | undefined)?.isBrokenCircuitError ? (err as { cause?: unknown }).cause : undefined;
}

/** Whether etcd refused who we are (a wrong user or password, no role on the prefix): not something that trying again mends. */
export function isRefusal(err: unknown): boolean {
  const e = err as Error;
  return /Authentication|PermissionDenied|RoleNotGranted|UserNotFound/.test(e?.name ?? '') || /authentication failed|invalid user ID or password|permission denied/i.test(String(e?.message ?? ''));
}

/** The part of a gRPC TLS failure a person reads: OpenSSL's reason ("sslv3 alert bad certificate"; "ssl/tls alert bad certificate" from Node 24's OpenSSL), without its codes and source paths. */
function tlsWords(msg: string): string {
  const ssl = /:SSL routines:[^:]*:([^:]+):/.exec(msg)?.[1];
  if (ssl) return ssl.trim();
  return msg.replace(/^\d+ UNAVAILABLE: No connection established\. Last error: (Error( \[[A-Z_]+\])?: )?/, '').replace(/\s*\(\d{4}-\d\d-\d\dT[^)]*\)\.?\s*$/, '').trim().replace(/\.$/, '');
}

/**
 * etcd and this client did not agree in TLS, in words with what to do; undefined for any other
 * failure. The one owner of what counts as a TLS refusal: a renewal of registry.tls that meets one
 * is refused (registry/etcd-client.ts). What Node 20 says, from a real etcd: a client certificate
 * etcd's CA did not sign, an expired one, or none where etcd requires one (--client-cert-auth) all
 * end in etcd's alert 42, "sslv3 alert bad certificate" (said as expired when the certificate this
 * client presents has expired); a CA that does not verify etcd's certificate, "unable to verify
 * the first certificate"; etcd's certificate not for the name dialled, ERR_TLS_CERT_ALTNAME_INVALID. An etcd that is down (ECONNREFUSED), slow (a deadline),
 * or not serving TLS at all (the socket closes before the handshake ends) is none of these.
 */
function tlsRefusal(msg: string, where: string, expiredOn?: number): string | undefined {
  // etcd refused our client certificate (an alert in its handshake). etcd says "bad certificate" (42) of an expired one too:
  // when the certificate this client presents has expired (`expiredOn`), that is the cause to tell.
  if (/alert certificate expired|SSL alert number 45/i.test(msg) || (expiredOn !== undefined && /alert bad certificate|SSL alert number 42/i.test(msg))) {
    return `etcd at ${where} refused this client's certificate: it has expired${expiredOn !== undefined ? ` (on ${new Date(expiredOn).toISOString()})` : ''} (${tlsWords(msg)}): install the renewed one (registry.tls, --registry-cert and --registry-key; a running proxy or server takes it on SIGHUP)`;
  }
  if (/alert (bad certificate|unknown ca|certificate unknown|certificate required)|SSL alert number (42|46|48|116)/i.test(msg)) {
    return `etcd at ${where} refused this client's certificate (${tlsWords(msg)}): give registry.tls (--registry-cert and --registry-key) a certificate signed by a CA etcd trusts (its --trusted-ca-file); a running proxy or server takes renewed files on SIGHUP`;
  }
  // etcd's certificate was not verified by our CA, or is not for the name dialled.
  if (/unable to verify|self[- ]signed certificate|unable to get (local )?issuer|certificate has expired|certificate is not yet valid|CERT_HAS_EXPIRED|CERT_NOT_YET_VALID/i.test(msg)) {
    return `etcd's certificate at ${where} was not accepted (${tlsWords(msg)}): give registry.tls.ca (--registry-ca) the CA that signed it`;
  }
  if (/ERR_TLS_CERT_ALTNAME_INVALID|does not match certificate's altnames/i.test(msg)) {
    return `etcd's certificate at ${where} is not for the name dialled (${tlsWords(msg)}): give --registry a name or address its certificate lists, or give etcd a certificate that lists this one`;
  }
  // Any other alert etcd ended the handshake with (a TLS version or cipher it does not take).
  if (/SSL alert number \d+/i.test(msg)) return `etcd at ${where} ended the TLS handshake (${tlsWords(msg)}): check that registry.tls suits etcd's TLS settings`;
  return undefined;
}

/** When the certificate this client presents to etcd expired (ms since the epoch, the wall clock's), if it has. */
function expiredOn(cert: Buffer | undefined): number | undefined {
  const end = cert && validityOf(cert, 'cert')?.notAfter;
  return end !== undefined && end <= Date.now() ? end : undefined;
}

/** Whether etcd and this client did not agree in TLS (`tlsRefusal`): new TLS files that meet this are refused. */
export function isTlsRefusal(err: unknown): boolean {
  // A call the breaker held back (registry/host-breaker.ts) is refused for the failure that opened it.
  const cause = heldBackFor(err);
  return tlsRefusal(String((err as Error)?.message ?? err), '') !== undefined || (cause !== undefined && isTlsRefusal(cause));
}

/** What describeEtcdError adds for a call the breaker held back: the same failure as the one that opened it. */
export const HELD_BACK = ' (it failed several calls in a row; trying again shortly)';

/**
 * gRPC's words for a call made while its channel has no connection and kept no reason for it ("14 UNAVAILABLE: No
 * connection established. Last error: null."): seen between two "connection refused" while etcd was stopped. It says
 * nothing new of why etcd is out of reach: a reason already said stands (a server said "Not registered" again for it).
 */
export function saysNoReason(why: string): boolean {
  return /No connection established\. Last error: null/.test(why);
}

/** etcd's own words in a reason it gives (a watch's cancel_reason), without gRPC's wrapping ("rpc error: code = PermissionDenied desc = "). */
function etcdWords(reason: string): string {
  return reason.replace(/^rpc error: code = \w+ desc = /, '');
}

/** What went wrong talking to etcd, in words, with what to do when it is a common mistake. */
export function describeEtcdError(err: unknown, o: Resolved): string {
  const e = err as Error;
  // etcd3's error classes leave `name` as 'Error': their class is what tells them apart.
  const cls = (e as { constructor?: { name?: string } } | undefined)?.constructor?.name;
  const name = e?.name && e.name !== 'Error' ? e.name : cls ?? '';
  const msg = String(e?.message ?? err).replace(/\s*Resolution note:.*$/s, '').trim();
  const where = describeRegistry({ endpoints: o.endpoints, tls: o.tls !== undefined });
  if (name === 'EtcdAuthenticationFailedError' || name === 'EtcdUserNotFoundError' || /authentication failed|invalid user ID or password/i.test(msg)) return `etcd at ${where} refused the user name or password (${msg}): check --registry-user and REVPROXY_REGISTRY_PASSWORD`;
  // etcd refused a watch as it was made, or ended one (etcd3's words: "Watcher canceled: " and etcd's reason; none for a compaction).
  const watchRefused = /^Watcher canceled: (.+)$/s.exec(msg)?.[1];
  if (watchRefused !== undefined && /permission denied/i.test(watchRefused)) {
    return `etcd at ${where} refused a watch under ${o.prefix} (${etcdWords(watchRefused)}): the user's roles may not read that prefix (a permission revoked, a role taken from the user); give the user a role with readwrite on it (etcdctl role grant-permission ROLE --prefix=true readwrite ${o.prefix})`;
  }
  if (watchRefused !== undefined) return `etcd at ${where} refused a watch under ${o.prefix} (${etcdWords(watchRefused)})`;
  if (name === 'EtcdPermissionDeniedError' || name === 'EtcdRoleNotGrantedError' || name === 'GRPCUnauthenticatedError' || /permission denied|user name is empty/i.test(msg)) {
    return `etcd at ${where} denied access under ${o.prefix} (${msg}): give the user a role with readwrite on that prefix (etcdctl role grant-permission --prefix ...)`;
  }
  // etcd3 builds this one with its sentence where the lease id goes ("Lease We lost connection ... is expired or revoked").
  // Ours, giving the lease up after two TTLs without a keepalive answered: said by why they were not (etcd stopped is no lease etcd let expire).
  const last = (e as { lastError?: unknown } | undefined)?.lastError;
  if (name === 'EtcdLeaseInvalidError' && last !== undefined) return `no keepalive reached etcd within two lease TTLs (${2 * o.ttlSeconds} s), so the lease is given up: ${describeEtcdError(last, o)}; the key is written again under a new lease once etcd answers`;
  if (name === 'EtcdLeaseInvalidError') return `etcd at ${where} let the lease expire: it could not be kept alive within its TTL (${o.ttlSeconds} s), as when etcd is out of reach or stalled, or this process was paused; the key is written again under a new lease`;
  if (/ECONNREFUSED/.test(msg)) return `etcd is not reachable at ${where}: connection refused`;
  // gRPC's words when the connection a call was queued on ends before the call went out: seen as a proxy's first line when its
  // way to etcd stopped carrying anything (its forwarder SIGSTOPped: 3.4 s after, in a probe), gRPC's keepalive having given it up.
  if (/Channel closed before call started/i.test(msg)) return `etcd at ${where} stopped answering: the connection to it was lost (etcd is stopped or overloaded, or the network to it drops everything) and is being made again`;
  // gRPC's resolver, asked again at each reconnect: a member's name that does not resolve (or a DNS server that did not answer).
  const unresolved = /Name resolution failed for target dns:(\[[^\]]+\]|[^:\s]+)/.exec(msg);
  if (unresolved) return `etcd at ${where} cannot be reached: the name ${unresolved[1]} does not resolve to an address on this machine, or its DNS server did not answer (${msg}): check the name in --registry, and that its DNS or /etc/hosts lists it`;
  // What etcd (or gRPC) says itself, without gRPC's code (which exhaustedIsNoFault changed).
  if (NO_SPACE.test(msg)) return `etcd at ${where} is out of space and refuses every write (${msg.replace(/^\d+ [A-Z_]+: /, '')}): its database reached its quota (--quota-backend-bytes, 2 GB by default) and etcd raised its NOSPACE alarm. Free it: etcdctl compaction REVISION, etcdctl defrag (and perhaps a larger quota), then etcdctl alarm disarm; keys are written again as soon as it takes writes`;
  const large = TOO_LARGE.exec(msg);
  if (large) {
    return `etcd at ${where} sent a message of ${large[1]} bytes, more than the ${large[2]} this client takes: something under ${o.prefix} is far larger than revproxy's own entries (each under 1 KiB), written by something else that can write there (etcdctl get --prefix --keys-only ${o.prefix} lists it); remove it, and give the prefix to the fleet's etcd user only (docs/SECURITY.md)`;
  }
  if (isNoLeader(msg)) return `etcd at ${where} has no leader (${msg}): the members reached are cut off from the others, or the cluster lost quorum`;
  const tls = tlsRefusal(msg, where, expiredOn(o.tls?.cert));
  if (tls) return tls;
  // An etcd without TLS ends a TLS client's connection at its first bytes: Node says so when the close is orderly, and only
  // ECONNRESET when the close resets it (seen under load, the hello still unread), which means the same before any connection was made.
  const reset = o.tls !== undefined && /No connection established\. Last error: .*ECONNRESET/.test(msg);
  if (reset || /disconnected before secure TLS connection was established/i.test(msg)) return `etcd at ${where} closed the connection before the TLS handshake ended${reset ? ' (it reset it)' : ''}: it may not serve TLS there (etcds:// is for an etcd started with --cert-file, etcd:// for one without)`;
  if (name === 'GRPCDeadlineExceededError' || /deadline/i.test(msg)) return `etcd at ${where} did not answer within ${o.callTimeoutMs} ms`;
  if (/BrokenCircuit|circuit/i.test(name + msg)) {
    // Refused without a call while several calls in a row have failed: the failure that opened the breaker is the cause (registry/host-breaker.ts).
    const cause = (e as { cause?: unknown }).cause;
    return `${cause !== undefined ? describeEtcdError(cause, o) : `etcd at ${where} is not reachable`}${HELD_BACK}`;
  }
  return `etcd at ${where}: ${msg}`;
}
