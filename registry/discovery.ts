/**
 * How a client finds the proxies: it mirrors `<prefix>proxies/` and keeps
 * its list of proxies to fail over between up to date. Each client orders
 * the list by a hash of its own random seed and each proxy (rendezvous
 * hashing), so clients spread evenly over the proxies, and a proxy that
 * comes or goes moves only its own share of clients. While etcd cannot be
 * reached the client keeps the list it last saw; one that starts while etcd
 * has lost its quorum starts with the list a member last saw (`staleProxies`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { LocalCode, RevproxyError } from '../transport/errors.js';
import { EtcdClient, type Renewal } from './etcd-client.js';
import { inCallTimeout, isNoLeader, openEtcd, type Etcd3 } from './etcd.js';
import type { TlsMaterial } from '../transport/tls.js';
import { decodeProxy, heldName, heldValue, PROXIES } from './keys.js';
import { PrefixMirror } from './mirror.js';
import { describeRegistry, resolveRegistry, type RegistryOptions, type Resolved } from './options.js';

export interface Found {
  host: string;
  port: number;
  /** The proxy's start it was found as (`ProxyEntry.instance`): a new one is a proxy back from a restart, though its key never left. */
  instance?: string;
}

export interface Discovery {
  /** The live proxies, in this client's order (never empty: see `discoverProxies`). */
  readonly proxies: Found[];
  /**
   * Why the list to start with is not etcd's current one, when it is not: etcd could not be read (its quorum lost)
   * and the list is what one member last saw (`staleProxies`). Until the registry is read, and the list followed.
   */
  readonly stale?: { why: string; member: string };
  /** Called with the new list whenever it changes (an empty list is not reported: the last one stays). */
  onChange(fn: (proxies: Found[]) => void): void;
  /** Renewed TLS material for etcd: the watch moves to a new etcd client made with it (`EtcdClient.renew`). */
  renewTls(tls: TlsMaterial): Promise<Renewal>;
  close(): void;
}

/** A connection failure of the client's family (CONNECT_FAILED), raised when no proxy can be found. */
export class DiscoveryError extends RevproxyError<typeof LocalCode.CONNECT_FAILED> {
  constructor(message: string) {
    super(LocalCode.CONNECT_FAILED, message);
    this.name = 'DiscoveryError';
  }
}

/**
 * Read the proxies from the registry; resolves once at least one is there
 * (waiting up to `waitMs`, default 5000, for one to appear), rejects with a
 * DiscoveryError when etcd cannot be read or no proxy appears.
 */
export async function discoverProxies(options: RegistryOptions & { waitMs?: number }): Promise<Discovery> {
  const o = resolveRegistry(options);
  const etcd = await EtcdClient.open(o);
  const url = describeRegistry({ endpoints: o.endpoints, tls: o.tls });
  const prefix = o.prefix + PROXIES;
  const seed = randomBytes(8).toString('hex');
  const rank = (name: string): string => createHash('sha1').update(seed).update(name).digest('hex');
  let listeners: Array<(p: Found[]) => void> = [];
  let current: Found[] = [];
  let lastError = '';
  /** Whether etcd was read once: a wait that ends before then says so, not that no proxy is registered. */
  let read = false;
  let stale: Discovery['stale'];
  let settle: (() => void) | undefined;
  /** The stale read: one under way, or the timer of its next try, and the wait before that try (the client's backoff). */
  let staleAsking = false;
  let staleTimer: NodeJS.Timeout | undefined;
  let staleWait = o.retryInitialMs;
  /** The stale reads under way end with the wait: their etcd clients are closed then, not left to their call timeout. */
  const staleEnd = new AbortController();
  /** The last stale read failed because etcd takes this client's password only through a leader (`PASSWORD_NEEDS_LEADER`). */
  let passwordNeedsLeader = false;
  /**
   * etcd cannot be read, and no proxy is known yet: the list a member last saw (`staleProxies`), while the mirror tries on.
   * A read that finds none (every member failed: one slow, all out of reach for a moment) is made again after the client's
   * backoff (retryInitialMs, doubling up to retryMaxMs), one at a time, for as long as the client waits; never once it has
   * a list, nor once etcd is read (the mirror gives the list then, and nothing more is asked of etcd).
   */
  const fallBack = async (): Promise<void> => {
    if (staleAsking || staleTimer || !settle || current.length > 0 || mirror.connected) return;
    staleAsking = true;
    const why = lastError;
    const seen = await staleProxies(o, prefix, staleEnd.signal).finally(() => (staleAsking = false));
    if (!settle || current.length > 0 || mirror.connected) return;
    const next = seen.entries ? compute(seen.entries) : [];
    if (!seen.entries || next.length === 0) {
      passwordNeedsLeader = !seen.entries && seen.passwordNeedsLeader;
      staleTimer = setTimeout(() => {
        staleTimer = undefined;
        void fallBack();
      }, staleWait);
      staleWait = Math.min(2 * staleWait, o.retryMaxMs);
      return;
    }
    current = next;
    stale = { why, member: seen.endpoint };
    settle();
  };
  const compute = (entries: Iterable<[string, string]> = mirror.entries): Found[] => {
    const out: Array<Found & { r: string }> = [];
    for (const [name, value] of entries) {
      const e = decodeProxy(value);
      if (typeof e !== 'string') out.push({ host: e.address, port: e.port, ...(e.instance === undefined ? {} : { instance: e.instance }), r: rank(name) });
    }
    return out.sort((a, b) => (a.r < b.r ? -1 : 1)).map(({ r: _, ...found }) => found);
  };
  let due = false;
  /**
   * The list again, once a turn however many entries changed in it: each computing reads every entry, and a read of
   * the prefix tells a page of up to 1,000 in one turn (2,000 proxies' entries, each told computing the list anew,
   * held a client's loop 990 ms).
   */
  const changed = (): void => {
    if (due) return;
    due = true;
    setImmediate(update);
  };
  const update = (): void => {
    due = false;
    const next = compute();
    if (next.length === 0) return;
    stale = undefined;
    if (JSON.stringify(next) === JSON.stringify(current)) return;
    current = next;
    settle?.();
    for (const fn of listeners) fn(current);
  };
  const mirror = etcd.use((client) => new PrefixMirror(client, prefix, o, {
    put: changed,
    delete: changed,
    synced: () => {
      read = true;
      changed();
    },
    health: (up, why, refused) => {
      if (!up) lastError = why ?? 'unreachable';
      // A wrong user or password will not come right by waiting: fail now, not after waitMs.
      if (refused) settle?.();
      else if (!up && current.length === 0) void fallBack();
    },
  }));
  mirror.start();
  const waitMs = options.waitMs ?? 5000;
  let waiting: NodeJS.Timeout | undefined;
  await new Promise<void>((resolve) => {
    settle = resolve;
    waiting = setTimeout(resolve, waitMs);
    if (current.length) resolve();
  });
  // Left running, the wait would hold the process up to waitMs after its last answer.
  clearTimeout(waiting);
  clearTimeout(staleTimer);
  staleEnd.abort();
  settle = undefined;
  if (current.length === 0) {
    mirror.stop();
    etcd.close();
    // Its first read not answered within the wait (a name still resolving, a member slow): etcd was not read, so nothing
    // is known of the proxies there. It said that none was registered.
    const why = lastError || (read ? '' : `etcd at ${url} did not answer within ${waitMs} ms, the client's timeout`);
    const member = passwordNeedsLeader ? `; and no member could be read without a leader either: ${PASSWORD_NEEDS_LEADER}` : '';
    throw new DiscoveryError(why ? `cannot read the proxies from the registry: ${why}${member}` : `no reverse proxy is registered in the registry at ${url} (under ${prefix}) after ${waitMs} ms: start one with --registry ${url}`);
  }
  return {
    get proxies() {
      return current;
    },
    get stale() {
      return stale;
    },
    onChange: (fn) => void listeners.push(fn),
    renewTls: (tls) => etcd.renew(tls),
    close: () => {
      listeners = [];
      mirror.stop();
      etcd.close();
    },
  };
}

/**
 * Why a client with a password for etcd (`registry.username`) cannot start while etcd has no leader. etcd applies its
 * Authenticate call (a user's token) through raft: a member without a leader refuses it ("etcdserver: no leader", or
 * held until "etcdserver: request timed out", 7 s, when not asked to require one; a wrong password is told the same), so
 * no member can be read, leader or not. A token given before would still serve a serializable read (Debian's etcd
 * 3.4.23, two members of three hung), but a client that starts has none. A client certificate is checked by the member
 * itself (etcd --client-cert-auth: its CN is the user, no token asked for): a client that authenticates so starts.
 */
const PASSWORD_NEEDS_LEADER = "etcd takes a user's password (its Authenticate call) only through its leader, so a client given a registry user (--registry-user, registry.username) cannot start while etcd has none: for clients that must start during a quorum loss, make their etcd user a client certificate instead of a password (etcd --client-cert-auth, the certificate's CN as the user; --registry-cert and --registry-key, registry.tls; docs/SECURITY.md, \"The registry (etcd)\"), or give them the proxies' addresses (--revproc HOST:PORT)";

/** What one stale read found: a member's entries, or none (`passwordNeedsLeader`: a member refused this client's password for want of a leader). */
type StaleRead = { entries: Array<[string, string]>; endpoint: string } | { entries?: undefined; passwordNeedsLeader: boolean };

/**
 * The proxies under `prefix` as a member of etcd last saw them, leader or not: a serializable read, answered from
 * the member's own data (every other read of the registry requires a leader: registry/etcd.ts `requireLeader`).
 * What a client goes on when it starts while etcd has lost its quorum, as the proxies themselves serve on with the
 * membership they last saw: without, it could not start until etcd had its quorum back. Every member is asked at
 * once, each within the call timeout; the first to answer with any entry is taken. No entries when none does, or
 * when `end` aborts (every etcd client made is closed then). With a password, each member is first asked for a token,
 * which needs a leader (`PASSWORD_NEEDS_LEADER`): a member without one refuses it at once (registry/etcd.ts `openEtcd`).
 */
async function staleProxies(o: Resolved, prefix: string, end: AbortSignal): Promise<StaleRead> {
  const prefixBytes = Buffer.byteLength(prefix);
  const clients: Etcd3[] = [];
  let done = false;
  const closeAll = (): void => {
    done = true;
    for (const c of clients) c.close();
  };
  end.addEventListener('abort', closeAll);
  const ask = async (endpoint: string): Promise<StaleRead> => {
    const client = await openEtcd({ ...o, endpoints: [endpoint] }, { requireLeader: false });
    // Made after another member answered, or after the end: closed at once, as the others were.
    if (done) client.close();
    clients.push(client);
    const res = await inCallTimeout(client.getAll().prefix(prefix).serializable(true).exec(), o.callTimeoutMs);
    if (res.kvs.length === 0) throw new Error('no proxy');
    return { entries: res.kvs.map((kv) => [heldName(kv.key, prefixBytes), heldValue(kv.value)]), endpoint };
  };
  try {
    if (end.aborted) return { passwordNeedsLeader: false };
    return await Promise.any(o.endpoints.map(ask));
  } catch (err) {
    // The read itself asks for no leader: a member that refused for want of one refused the password's token
    // (registry/etcd.ts `openEtcd`); the others may have been out of reach.
    const errors = err instanceof AggregateError ? err.errors : [err];
    return { passwordNeedsLeader: o.username !== undefined && errors.some(isNoLeader) };
  } finally {
    end.removeEventListener('abort', closeAll);
    closeAll();
  }
}
