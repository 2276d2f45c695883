/**
 * The proxy's side of the registry, as a callback actor the proxy machine
 * invokes (its `registry` actor): it mirrors `<prefix>servers/` and turns
 * each change into an event for the machine (REGISTRY_JOIN, REGISTRY_LEAVE,
 * REGISTRY_HEALTH); the machine checks each entry's proof and joins or
 * removes members (actors/registry-members.ts). It knows nothing of pools.
 *
 * A key that goes is a server leaving, or a server that lost etcd: an entry
 * written with `leaving` (a drain) leaves at once; a key deleted while its
 * lease is alive (an operator's `etcdctl del`, an older server's drain)
 * leaves; a key gone with its lease (expired: the server's host may be cut
 * off from etcd while it still serves) is sent as `unlisted`, and the proxy
 * keeps that member while its link answers.
 *
 * Once the proxy listens and the membership is known (the first read is in,
 * and every server it names has had its first link check, or `settleMs`
 * passed), it writes the proxy's own key under `<prefix>proxies/` on a lease,
 * so clients never find a proxy that does not know its servers yet. On
 * drain the key goes first. While etcd cannot be reached the proxy keeps the
 * members it last saw and the actor says so (a warn line, then one every
 * `remindMs`); when etcd answers again it reads the whole prefix and the
 * proxy gets only what changed.
 */
import { randomBytes } from 'node:crypto';
import { fromCallback } from 'xstate';
import { fmt, type Logger } from '../actors/logger.js';
import type { Clock } from '../transport/clock.js';
import type { RegistryCommand, RegistryEvent, RegistryStatus } from './events.js';
import { deadlineIn, type Etcd3 } from './etcd.js';
import { EtcdClient } from './etcd-client.js';
import { KeptKey } from './kept-key.js';
import { decodeServer, encodeProxy, proxyKey, serverKeyPrefix, SERVERS } from './keys.js';
import { PrefixMirror } from './mirror.js';
import { describeRegistry, REGISTRY_DEFAULTS, resolveRegistry, type RegistryOptions, type Resolved } from './options.js';
import { hostPort } from '../transport/address.js';
import { lifecycle } from '../transport/lane.js';

export interface ProxyRegistryOptions extends RegistryOptions {
  /** The address clients should dial to reach this proxy (default: the address it listens on). */
  advertise: string;
  /** Whether the proxy serves TLS (clients are told). */
  servesTls?: boolean;
  /** The longest wait for the servers' first link checks before advertising (ms, default 2000). */
  settleMs?: number;
  /** While etcd is unreachable, say so again this often (ms, default 30000). */
  remindMs?: number;
}

/** What the proxy machine gives the actor: its logger, its clock (the settle wait, how long etcd has been away), and a read-only look at its members (to know when their links were first checked). */
export interface ProxyRegistryInput {
  logger: Logger;
  clock: Clock;
  servers: ReadonlyMap<string, { source: string; traffic: { phase: string } }>;
}

/**
 * The actor logic, with etcd's client loaded and made (not yet connected):
 * `proxyMachine.provide({ actors: { registry: (await proxyRegistry(opts)).logic } })`; `etcd` is
 * its client, for the proxy's handle to renew its TLS files (`EtcdClient.renew`).
 */
export async function proxyRegistry(options: ProxyRegistryOptions) {
  const o = resolveRegistry(options);
  const etcd = await EtcdClient.open(o);
  // What the registry says goes to the proxy through the lifecycle lane (transport/lane.ts), as direct
  // registrations do: thousands of entries written at once (a host's fleet restarted) come in a few watch
  // events, each a member and a link dialled, and are taken a few dozen a turn, in the order they came.
  return { etcd, logic: fromCallback<RegistryCommand, ProxyRegistryInput>(({ sendBack, receive, input }) => run(etcd, o, options, input, (e: RegistryEvent) => lifecycle.run(() => sendBack(e)), receive)) };
}

function run(etcd: EtcdClient, o: Resolved, options: ProxyRegistryOptions, input: ProxyRegistryInput, send: (e: RegistryEvent) => void, receive: (fn: (c: RegistryCommand) => void) => void): () => void {
  const log = input.logger;
  const url = describeRegistry({ endpoints: o.endpoints, tls: o.tls !== undefined });
  const status: RegistryStatus = { url, up: false, synced: false, since: input.clock.now(), entries: 0, syncs: { start: 0, reconnect: 0, compacted: 0 }, advertised: false };
  const report = (): void => send({ type: 'REGISTRY_HEALTH', status: { ...status, syncs: { ...status.syncs } } });
  const prefix = o.prefix + SERVERS;
  let port: number | undefined;
  /** This start of the proxy, in its entry: its clients tell a restart by it, its key never having left etcd when the restart was within the TTL. */
  const instance = randomBytes(8).toString('hex');
  let own: KeptKey | undefined;
  let draining = false;
  let stopped = false;
  let withdrawn: Promise<unknown> | undefined;
  let settle: NodeJS.Timeout | undefined;
  let remind: NodeJS.Timeout | undefined;
  /** Says again, while it lasts, that etcd refuses to write this proxy's key. */
  let remindUnadvertised: NodeJS.Timeout | undefined;
  /** Since when this proxy's key is gone from the registry, etcd said (`ended`), until it is written again: said, and its return. */
  let lapsedSince: number | undefined;
  /** Ids whose entry could not be read (sent as leaves; told again only when they change). */
  const refused = new Map<string, string>();
  /** Deleted keys whose lease is being checked (one check per id: a newer event for it drops the older check). */
  const checking = new Map<string, object>();

  const counted = (): void => {
    if (!status.synced || status.entries === mirror.entries.size) return;
    status.entries = mirror.entries.size;
    report();
  };
  const mirror = etcd.use((client) => new PrefixMirror(client, prefix, o, {
    put(id, value) {
      const entry = decodeServer(id, value);
      if (typeof entry === 'string') {
        const why = `its registry entry ${prefix}${id} cannot be used: ${entry}`;
        counted();
        if (refused.get(id) === why) return;
        refused.set(id, why);
        // Anyone who can write to the prefix can write thousands: a few lines, then counts (as for refused registrations).
        log.repeated('warn', 'registry_refused', id, 1, (n, span) => `Ignored server id ${id} from the registry: ${why}${span ? ` (${n} times ${span})` : ''}`, { id, code: 'BAD_ENTRY', reason: entry });
        send({ type: 'REGISTRY_LEAVE', id, reason: why });
        return;
      }
      refused.delete(id);
      checking.delete(id);
      if (entry.leaving) send({ type: 'REGISTRY_LEAVE', id, reason: 'it is draining (its registry entry says it is leaving)' });
      else send({ type: 'REGISTRY_JOIN', entry });
      counted();
    },
    delete(id, lease) {
      refused.delete(id);
      counted();
      // No lease (an entry an operator wrote by hand): its deletion is deliberate.
      if (lease === '0') return send({ type: 'REGISTRY_LEAVE', id, reason: 'its registry key was deleted' });
      // Its lease alive: a deliberate delete (an operator's, a server's drain). Gone: it expired - the
      // server may only be cut off from etcd while it still serves; it stays while its link answers.
      const check = {};
      checking.set(id, check);
      void leaseAlive(etcd.current, lease, o.callTimeoutMs).then((alive) => {
        if (checking.get(id) !== check) return; // written again (or deleted again) meanwhile
        checking.delete(id);
        if (stopped || mirror.entries.has(id)) return;
        if (alive === true) send({ type: 'REGISTRY_LEAVE', id, reason: 'its registry key was deleted while its lease was alive (an operator deleted it, or the server drained)' });
        else send({ type: 'REGISTRY_LEAVE', id, unlisted: true, reason: alive === false ? 'its registry key went and its lease is gone: expired (the server stopped without draining - killed, crashed - or its host lost etcd), or revoked by a draining server of a build before the leaving field' : `its registry key was deleted and its lease could not be checked (${alive})` });
      });
    },
    synced({ keys, revision, reason, ms, kept, outage, suspected }) {
      status.syncs[reason]++;
      status.entries = keys;
      const first = !status.synced;
      status.synced = true;
      if (first) {
        log.info('registry_synced', `Read ${fmt(keys)} server entr${keys === 1 ? 'y' : 'ies'} from the registry at ${url} (revision ${revision}, ${ms} ms); watching ${prefix}`, { url, entries: keys, revision, ms });
        if (keys === 0) void serversElsewhere();
      } else log.info('registry_resynced', `Read the registry again (${reason === 'compacted' ? 'its history was compacted' : outage ? 'etcd is back' : suspected ? "this proxy's registry key could not be kept alive, so the watch may have gone silent too; etcd answered at once" : 'the watch broke, as when the etcd member it was on fails; etcd answered at once'}): ${fmt(keys - kept)} server entr${keys - kept === 1 ? 'y' : 'ies'} at revision ${revision}`, { url, entries: keys - kept, revision, reason });
      // etcd came back without keys it had: their leases ran out while the servers (or this proxy) could not reach etcd - an etcd
      // SIGSTOPped for 15 s lost every key this way - or etcd lost its data; either way their servers are about to write them again.
      if (kept > 0) log.warn('registry_missing', `${fmt(kept)} server entr${kept === 1 ? 'y' : 'ies'} this proxy held ${kept === 1 ? 'is' : 'are'} missing from the registry after etcd came back: their leases ran out while etcd was away (no keepalive reached it within the TTL), or etcd lost its data; kept in rotation for ${o.ttlSeconds} s (the lease TTL), for their servers to write them again; then removed, or kept unlisted while their links answer if their leases are gone`, { url, missing: kept, graceS: o.ttlSeconds });
      report();
      // After the entries told before it, which may wait in the lane: the members it checks exist by then.
      lifecycle.run(maybeAdvertise);
    },
    health(up, why, refused) {
      // Told again while down (etcd back and refusing this user): still down since the first time.
      if (up || status.up !== false) status.since = input.clock.now();
      status.up = up;
      status.why = up ? undefined : why;
      clearInterval(remind);
      if (!up) {
        const members = (): number => mirror.entries.size;
        // A refusal (the user's role may not read the prefix) is tried again all the same: a grant takes effect at the next try.
        const retrying = refused ? `retrying every ${o.retryMaxMs} ms at most, so a grant takes effect at the next try` : 'retrying';
        if (status.synced) log.warn('registry_down', `The registry ${refused ? 'refused this proxy' : 'is unreachable'} (${why}); serving with the membership last seen (${fmt(members())} server entr${members() === 1 ? 'y' : 'ies'}) and ${retrying}`, { url, reason: why, entries: members(), refused: refused === true });
        else log.warn('registry_down', `Cannot read the registry yet (${why}); ${retrying}. This proxy is not ready and not advertised until it has read its servers`, { url, reason: why, refused: refused === true });
        remind = setInterval(() => {
          const s = Math.round((input.clock.now() - status.since) / 1000);
          log.warn('registry_down', `The registry has been unreachable for ${s} s (${status.why}); still serving with the membership last seen (${fmt(members())} server entries)`, { url, reason: status.why, downForS: s });
        }, options.remindMs ?? 30_000);
      }
      report();
    },
  }));
  mirror.start();

  /** Advertise once the proxy listens and the servers' links had their first check (or settleMs passed). */
  function maybeAdvertise(): void {
    if (own || draining || stopped || port === undefined || !status.synced) return;
    const deadline = input.clock.now() + (options.settleMs ?? 2000);
    const check = (): void => {
      if (own || draining || stopped) return;
      let pending = 0;
      for (const id of mirror.entries.keys()) {
        const m = input.servers.get(id);
        if (m && m.source === 'registry' && m.traffic.phase === 'connecting') pending++;
      }
      if (pending > 0 && input.clock.now() < deadline) {
        settle = setTimeout(check, 10);
        return;
      }
      advertise(port!);
    };
    check();
  }

  /**
   * None under this proxy's prefix at its start: servers under another prefix are named, with the flag that reads them. A
   * proxy given another fleet's --registry-prefix (or none, where its fleet has one) said it read 0 entries, /readyz 200,
   * and refused every request NO_SERVER. One read of at most 1,000 keys, names only; a role that may not read them is not told.
   */
  async function serversElsewhere(): Promise<void> {
    const keys = await etcd.current.getAll().limit(1000).keys().catch(() => [] as string[]);
    const found = new Map<string, number>();
    for (const k of keys) {
      const other = serverKeyPrefix(k);
      if (other !== undefined && other !== o.prefix) found.set(other, (found.get(other) ?? 0) + 1);
    }
    if (found.size === 0 || stopped || mirror.entries.size > 0) return;
    const list = [...found].sort((a, b) => b[1] - a[1]).slice(0, 3);
    log.warn('registry_elsewhere', `No server entries under ${prefix}, but the registry holds some under ${list.map(([p, n]) => `${p}${SERVERS} (${fmt(n)})`).join(', ')}: if this proxy's servers are those, start it with --registry-prefix ${list[0]![0]} (registry.prefix)`, { url, prefix: o.prefix, elsewhere: Object.fromEntries(list) });
  }

  function advertise(p: number): void {
    const entry = { address: options.advertise, port: p, tls: options.servesTls === true, instance };
    const key = proxyKey(o.prefix, entry);
    own = etcd.use((client) => new KeptKey(client, key, encodeProxy(entry), o, {
      up(again) {
        status.advertised = true;
        clearInterval(remindUnadvertised);
        // Clients given the URL alone read the default prefix: another fleet's, when this one has its own.
        const given = o.prefix === REGISTRY_DEFAULTS.prefix ? `--registry ${url}` : `--registry ${url} --registry-prefix ${o.prefix}`;
        if (!again) log.info('advertised', `Advertised this proxy in the registry as ${hostPort(entry.address, p)}: clients given ${given} find it`, { url, address: entry.address, port: p });
        else if (status.unadvertised || lapsedSince !== undefined) {
          // How long since etcd said the key was gone (a frozen proxy hears it only once it runs again).
          const s = lapsedSince === undefined ? 0 : Math.round((input.clock.now() - lapsedSince) / 1000);
          const away = s > 0 ? ` after ${s} s` : '';
          log.info('advertised', `Advertised this proxy in the registry again as ${hostPort(entry.address, p)}${away}: clients find it again`, { url, address: entry.address, port: p });
        }
        status.unadvertised = undefined;
        lapsedSince = undefined;
        report();
      },
      down(why, retryInMs, refused) {
        log.debug('advertise_retry', `Could not keep this proxy's registry key (${why}); trying again in ${retryInMs} ms`, { reason: why, retryInMs });
        // etcd away is said as such (registry_down). etcd answering and refusing this write (out of space, a role that may
        // not write under proxies/) is said here, once per reason and again every remindMs: clients that find their proxies
        // in etcd do not find this one.
        const told = status.unadvertised;
        if (status.advertised || (refused ? why !== told : told !== undefined)) {
          status.advertised = false;
          status.unadvertised = refused ? why : undefined;
          report();
        }
        if (!refused) return clearInterval(remindUnadvertised);
        if (why === told) return;
        const say = (): void => log.warn('unadvertised', `This proxy is not in the registry: etcd refused to write its key ${key} (${why}); clients that find their proxies in etcd do not find this one. Serving on, and trying again`, { url, key, reason: why });
        say();
        clearInterval(remindUnadvertised);
        remindUnadvertised = setInterval(say, options.remindMs ?? 30_000);
      },
      taken() {},
      restored(how) {
        log.warn('registry_key_restored', `This proxy's registry key ${key} was ${how} while its lease was alive (an operator's etcdctl?); written again as this proxy writes it${how === 'deleted' ? ': clients that find their proxies in etcd may have moved off it at the delete, and find it again now' : ''}`, { url, key, how });
      },
      // A TTL without a keepalive answered: etcd has let the key go, if it runs. /metrics said 1 for a second TTL, until the lease was given up.
      // etcd away is said as such (registry_down): that the key may have gone with it, at debug.
      lapsed(why) {
        log.debug('advertise_lapsed', `This proxy's registry key may be gone (${why}); keeping its lease alive`, { reason: why });
        status.advertised = false;
        report();
      },
      // etcd answers, and says the key is gone (a restarted etcd keeps its leases: this proxy was frozen past its TTL, or
      // cut off from etcd alone, back within two TTLs): clients that find their proxies in etcd do not find this one until it is written again.
      // It was said at debug, as a lapse: such a proxy said nothing of it but the stall.
      ended(why) {
        lapsedSince ??= input.clock.now();
        log.warn('advertise_ended', `This proxy's registry key ${key} is gone (${why}): clients that find their proxies in etcd do not find this one until it is written again. Serving on, and writing it again`, { url, key, reason: why });
      },
      // The lease could not be renewed: the watch may be silently dead too.
      suspect: (err) => mirror.suspect(err),
    }));
    own.start();
  }

  /** An entry held sent again for the proxy to check (it may have passed it over). */
  function offer(id: string, value: string): void {
    const entry = decodeServer(id, value);
    if (typeof entry !== 'string' && !entry.leaving) send({ type: 'REGISTRY_JOIN', entry });
  }

  receive((c) => {
    if (c.type === 'LISTENING') {
      port = c.port;
      lifecycle.run(maybeAdvertise);
    } else if (c.type === 'DRAIN') {
      draining = true;
      clearTimeout(settle);
      clearInterval(remindUnadvertised);
      const key = own?.key;
      withdrawn = own?.stop();
      void withdrawn?.then((taken) => {
        // `false`: etcd did not take the delete (it is away or hung): the key stays until its lease ends, and says nothing was withdrawn.
        if (taken && status.advertised) log.info('withdrawn', 'Withdrew this proxy from the registry (draining): clients stop choosing it', { url });
        else if (!taken) {
          const why = own?.stopError ?? `no answer within ${2 * o.callTimeoutMs} ms`;
          log.warn('withdraw_failed', `Could not withdraw this proxy from the registry: etcd did not take the delete of its key ${key} (${why}). The key stays until its lease expires, within ${o.ttlSeconds} s (--registry-ttl) of the last keepalive etcd took: until then clients that find their proxies in etcd may choose this proxy, find its port closed, and go to another`, { url, key, reason: why, ttlS: o.ttlSeconds });
        }
        status.advertised = false;
        report();
      });
    } else if (c.type === 'RELOAD') {
      for (const [id, value] of mirror.entries) offer(id, value);
    } else if (c.type === 'RELEASED') {
      // Its entry was read once, passed over, and never changes while its lease lives (keepalives write nothing).
      const value = mirror.entries.get(c.id);
      if (value !== undefined) offer(c.id, value);
    }
  });

  return () => {
    stopped = true;
    clearTimeout(settle);
    clearInterval(remind);
    clearInterval(remindUnadvertised);
    mirror.stop();
    // Stopped without a drain (kill()): the key stays until its lease ends, as when a process dies.
    if (!withdrawn) own?.release();
    etcd.closeAfter(withdrawn);
  };
}

/** Whether lease `id` is alive in etcd (true), gone (false: expired or revoked), or why that could not be read. */
async function leaseAlive(client: Etcd3, id: string, timeoutMs: number): Promise<boolean | string> {
  try {
    // A deadline of its own, not the default call options' one: etcd3 resolves those anew for each of its three tries, this one bounds them all.
    const r = await client.leaseClient.leaseTimeToLive({ ID: id }, { deadline: deadlineIn(timeoutMs) });
    return Number(r.TTL) >= 0;
  } catch (err) {
    // etcd says an unknown lease is not found (some versions) rather than TTL -1.
    if (/not found|LeaseNotFound/i.test(`${(err as Error).name} ${(err as Error).message}`)) return false;
    return (err as Error).message;
  }
}
