/**
 * A mirror of every key under one prefix, kept current from etcd: read the
 * whole prefix (in pages, all at one revision: registry/etcd.ts readPrefix),
 * then watch it from that read's revision + 1, so no change
 * is missed and none is seen twice. When the watch breaks (etcd went away,
 * or a compaction cancelled it) the mirror reads the whole prefix again
 * and tells only what differs from what it held: a resync. While etcd cannot
 * be reached it keeps what it last saw, says so (`health`), and tries again
 * with backoff.
 *
 * The proxy mirrors `servers/`, clients mirror `proxies/`. Changes reach the
 * owner as calls, in revision order; the owner decides what they mean.
 */
import type { IKeyValue } from 'etcd3';
import { systemClock } from '../transport/clock.js';
import type { Etcd3 } from './etcd.js';
import { describeEtcdError, isCompactedRead, isRefusal, readPrefix } from './etcd.js';
import { heldName, heldValue } from './keys.js';
import type { Resolved } from './options.js';

export interface MirrorHandlers {
  /** A key appeared or changed (`name` is the part after the prefix). */
  put(name: string, value: string): void;
  /** A key went (`lease`: the lease of its last write, '0' for none: whether that lease is still alive tells a delete from an expiry). */
  delete(name: string, lease: string): void;
  /** The mirror is current: after the first read, and after each resync (`kept`: keys missing from a read after an outage, kept a while; see `sync`; `outage`: etcd had been said to be down, rather than a watch broken and read again at once; `suspected`: read again because something else failed to reach etcd (`suspect`), not because the watch broke). */
  synced(info: { keys: number; revision: string; reason: SyncReason; ms: number; kept: number; outage: boolean; suspected: boolean }): void;
  /** etcd cannot be reached (`up` false, with why), or can again. */
  /** `refused`: etcd answered and refused who we are (user, password, role): no retry will change that. */
  health(up: boolean, why?: string, refused?: boolean): void;
}

/** Why the whole prefix was read: the first time, after etcd came back, after a compaction cancelled the watch. */
export type SyncReason = 'start' | 'reconnect' | 'compacted';

interface Watcher {
  on(event: string, fn: (...args: never[]) => void): unknown;
  cancel(): Promise<void>;
}

export class PrefixMirror {
  private readonly held = new Map<string, string>();
  /** The lease each held key was last written under (its keys are those of `held`). */
  private readonly leases = new Map<string, string>();
  private watcher?: Watcher;
  private generation = 0;
  private timer?: NodeJS.Timeout;
  private retryMs: number;
  private state: 'unknown' | 'up' | 'down' = 'unknown';
  /** The read under way (or due) checks a failure `suspect` was told of, not a broken watch. */
  private suspected = false;
  /** A failure while up is being checked with reads until then (see `lost`). */
  private recheckUntil?: number;
  /** When a failure while up was last checked with a read at once (monotonic ms). */
  private checkedAt = -Infinity;
  private stopped = false;
  /** Why etcd was last said to be down. */
  private told?: string;
  /** Revision of the state held: watch events below it are already in (those at it may be more keys of the same change). */
  private revision = 0n;
  /** Keys missing from the read after an outage, held until `graceTimer` unless they are written again. */
  private readonly missing = new Set<string>();
  private graceTimer?: NodeJS.Timeout;
  private readonly prefixBytes: number;

  constructor(
    private client: Etcd3,
    private readonly prefix: string,
    private readonly opts: Resolved,
    private readonly on: MirrorHandlers,
  ) {
    this.retryMs = opts.retryInitialMs;
    this.prefixBytes = Buffer.byteLength(prefix);
  }

  /** The keys held now (name -> value). */
  get entries(): ReadonlyMap<string, string> {
    return this.held;
  }

  get connected(): boolean {
    return this.state === 'up';
  }

  /** Something else says etcd cannot be reached (a lease that could not be kept alive, say): stop trusting the watch, read again. */
  suspect(err: unknown): void {
    if (this.state !== 'up') return;
    this.suspected = true;
    this.lost(err, 'reconnect');
  }

  start(): void {
    void this.sync('start');
  }

  /**
   * Carry on through `client` (the registry's client was made again with renewed TLS files): a
   * watch goes on there from the revision this mirror has reached, so nothing is missed or read
   * again and the owner hears nothing of the move; a read in flight finishes on the client it
   * began on (closed only once it had its time) and watches on this one, as the next read does.
   */
  moveTo(client: Etcd3): void {
    this.client = client;
    if (this.stopped || !this.watcher) return;
    const gen = ++this.generation;
    void this.watcher.cancel().catch(() => undefined);
    this.watcher = undefined;
    this.watch(gen);
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    clearTimeout(this.timer);
    clearTimeout(this.graceTimer);
    void this.watcher?.cancel().catch(() => undefined);
    this.watcher = undefined;
  }

  /**
   * Read the whole prefix, tell what differs, then watch from the next revision.
   *
   * After an outage (`reconnect` once etcd was said to be down), a key held but missing from the read is not
   * told gone at once: etcd may have come back without its data (a member
   * wiped, a restore from an older snapshot), and every live owner writes its
   * key again within a lease TTL, when its next keepalive is refused. Telling
   * the proxy at once that every server left would refuse every request until
   * they have. So such keys are kept for one TTL, and go then unless written
   * again (a key deleted meanwhile goes at once).
   */
  private async sync(reason: SyncReason): Promise<void> {
    const gen = ++this.generation;
    const started = systemClock.now();
    const old = this.watcher;
    this.watcher = undefined;
    void old?.cancel().catch(() => undefined);
    const seen = new Set<string>();
    let revision: string | undefined;
    for (let tries = 1; revision === undefined; tries++) {
      seen.clear();
      let at: string | undefined;
      try {
        // A page at a time, each dropped once taken (registry/etcd.ts readPrefix): what a writer put
        // under the prefix is held as the mirror holds it (keys.ts heldValue), never a whole read.
        for await (const page of readPrefix(this.client, this.prefix, this.opts.callTimeoutMs)) {
          if (gen !== this.generation || this.stopped) return;
          at = page.revision;
          // Told as read, a page in one turn: what an entry costs its owner is the owner's to pace (the proxy's
          // members and links are made a lane budget a turn, transport/lane.ts, as the watch's events are).
          for (const kv of page.kvs) {
            const name = heldName(kv.key, this.prefixBytes);
            const value = heldValue(kv.value);
            seen.add(name);
            this.missing.delete(name);
            this.leases.set(name, String(kv.lease));
            if (this.held.get(name) !== value) {
              this.held.set(name, value);
              this.on.put(name, value);
            }
          }
        }
        revision = at;
      } catch (err) {
        if (gen !== this.generation) return;
        // History compacted past the read's revision between two of its pages: read again from the start, at a new revision
        // (what was told from the pages read is the newer state's or is told again; `seen` starts again).
        if (at !== undefined && isCompactedRead(err) && tries < 3) continue;
        this.lost(err, reason === 'start' ? 'start' : 'reconnect');
        return;
      }
    }
    if (gen !== this.generation || this.stopped) return;
    // An outage: etcd was said to be down, or it answers from before what this mirror has seen (its
    // revision went back: restarted without its data, restored from an older snapshot) - a check of a
    // broken watch may reach it before the watch said anything, since etcd came back at once.
    const outage = this.state === 'down' || BigInt(revision) < this.revision;
    for (const name of [...this.held.keys()]) {
      if (seen.has(name)) continue;
      // Only after an outage: a read that checked a broken watch while etcd answered saw a real removal.
      if (reason === 'reconnect' && outage) this.missing.add(name);
      else this.forget(name);
    }
    if (this.missing.size > 0 && !this.graceTimer) {
      this.graceTimer = setTimeout(() => {
        this.graceTimer = undefined;
        if (this.stopped) return;
        for (const name of [...this.missing]) this.forget(name);
      }, this.opts.ttlSeconds * 1000);
    }
    this.revision = BigInt(revision);
    this.watch(gen);
    this.retryMs = this.opts.retryInitialMs;
    this.recheckUntil = undefined;
    const suspected = this.suspected;
    this.suspected = false;
    this.on.synced({ keys: this.held.size, revision, reason, ms: Math.round(systemClock.now() - started), kept: this.missing.size, outage, suspected });
    if (this.state !== 'up') {
      this.state = 'up';
      this.on.health(true);
    }
  }

  private watch(gen: number): void {
    const w = this.client.watch().prefix(this.prefix).startRevision(String(this.revision + 1n)).watcher() as unknown as Watcher;
    this.watcher = w;
    const apply = (kv: IKeyValue, put: boolean): void => {
      if (gen !== this.generation) return;
      // One revision may change many keys (a transaction, a delete of a prefix): each comes as its own
      // event with that revision, so only events older than the last one applied are already in.
      const rev = BigInt(kv.mod_revision);
      if (rev < this.revision) return;
      this.revision = rev;
      const name = heldName(kv.key, this.prefixBytes);
      if (put) {
        const value = heldValue(kv.value);
        this.missing.delete(name);
        this.leases.set(name, String(kv.lease));
        if (this.held.get(name) === value) return;
        this.held.set(name, value);
        this.on.put(name, value);
      } else this.forget(name);
    };
    w.on('put', (kv: IKeyValue) => apply(kv, true));
    w.on('delete', (kv: IKeyValue) => apply(kv, false));
    // etcd3 would reconnect and resume on its own; a full read instead also tells what changed
    // while etcd was away, whatever happened to its history meanwhile.
    w.on('disconnected', (err: Error) => gen === this.generation && this.lost(err, 'reconnect'));
    w.on('error', (err: Error) => {
      if (gen !== this.generation) return;
      // etcd cancels a watch whose start revision was compacted away (etcd3 says "Watcher canceled: " with no reason).
      if (/compact|canceled:\s*$/i.test(err.message)) void this.sync('compacted');
      else this.lost(err, 'reconnect');
    });
  }

  private forget(name: string): void {
    this.missing.delete(name);
    const lease = this.leases.get(name) ?? '0';
    this.leases.delete(name);
    if (this.held.delete(name)) this.on.delete(name, lease);
  }

  /**
   * The watch broke, or a read failed. While etcd was up, a failure is first checked with a read
   * at once, which etcd3 sends to a member that answers: on a cluster a watch breaks when the
   * member it was on dies or hangs while the others serve on, and saying "unreachable" then was
   * wrong (killing each member of 3 in turn said it 4 times, with readiness warnings and
   * revproxy_registry_up 0). With several members the reads go on, every retryInitialMs, for up
   * to two call timeouts (a leader lost takes an election, 1-2 s, before reads are served again);
   * with one there is no other to ask. Only then is etcd said to be down. A refusal (`isRefusal`: a watch or read the
   * user's roles may not make) is said at once.
   */
  private lost(err: unknown, reason: SyncReason): void {
    if (this.stopped) return;
    const gen = ++this.generation;
    void this.watcher?.cancel().catch(() => undefined);
    this.watcher = undefined;
    // etcd answered and refused (a watch its user's roles may not read, after a permission was revoked): no member answers
    // otherwise, so it is said at once, and tried again with backoff, which a grant heals.
    if (this.state === 'up' && !isRefusal(err)) {
      const now = systemClock.now();
      if (this.recheckUntil === undefined) {
        this.recheckUntil = now + (this.opts.endpoints.length > 1 ? 2 * this.opts.callTimeoutMs : 0);
        // At once, unless such a check was made just now: a watch that breaks again as soon as it is
        // made would be read in a tight loop. Then as a second failure: read again after retryInitialMs
        // on a cluster, etcd said to be down with one member.
        if (now - this.checkedAt >= this.opts.retryInitialMs) {
          this.checkedAt = now;
          return void this.sync(reason);
        }
      }
      if (now < this.recheckUntil) {
        clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          if (gen === this.generation && !this.stopped) void this.sync(reason);
        }, this.opts.retryInitialMs);
        return;
      }
    }
    this.recheckUntil = undefined;
    const why = describeEtcdError(err, this.opts);
    // A refusal met while down (etcd back, and refusing what this user may read) is told too: what to do has changed.
    if (this.state !== 'down' || (isRefusal(err) && why !== this.told)) {
      this.state = 'down';
      this.told = why;
      this.on.health(false, why, isRefusal(err));
    }
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.opts.retryMaxMs);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      if (gen === this.generation && !this.stopped) void this.sync(reason);
    }, wait);
  }
}
