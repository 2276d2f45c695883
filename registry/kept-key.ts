/**
 * One key kept in etcd on a lease of its own, for as long as its owner
 * lives: a server's entry, or a proxy's. The lease is kept alive, a
 * keepalive every TTL/3, each with a deadline and tried again at once on
 * another member when it misses it (see `keepAlive`); when the lease is
 * lost - etcd was away for longer than the TTL allows - a new lease is
 * granted and the key written again, with backoff, until etcd answers. A
 * process that dies stops the keepalives, and etcd deletes the key a TTL
 * later.
 *
 * `exclusive` keys (a server's id) are written only when no one else holds
 * them: a key held under another lease is another live server with the same
 * id, and is left alone (`taken`) until its lease ends. Our own earlier
 * leases (after etcd came back) are ours to replace.
 *
 * The lease is kept by its id, through whichever client is current: `moveTo` hands the key a
 * new client (the registry's TLS files renewed, registry/etcd-client.ts) and its keepalives go
 * on through it, the same lease and the key untouched.
 *
 * The key is watched: deleted while its lease lives (an operator's `etcdctl del`, a `del --prefix`
 * meant for another fleet), or overwritten (an `etcdctl put` without `--lease` makes a key that
 * outlives its owner), it is written again at once and `restored` says so, as Consul's agent
 * puts back a service removed from or changed in the catalog behind its back. Before, such a key stayed gone
 * until its owner restarted: a `del --prefix` of the servers left every policy answering
 * NO_SERVER. The owner's own drain (`stop`) deletes it without that.
 */
import type { IKeyValue } from 'etcd3';
import type { Etcd3 } from './etcd.js';
import { deadlineIn, describeEtcdError, isEtcdRefusal, isRefusal, isTlsRefusal, keepaliveOnce } from './etcd.js';
import { systemClock } from '../transport/clock.js';
import type { Resolved } from './options.js';

export interface KeptKeyHandlers {
  /** The key is in etcd and its lease is alive (`again` after an outage). */
  up(again: boolean): void;
  /** The key could not be written, or its lease was lost; trying again in `retryInMs`. `refused`: etcd answered and refused it (out of space, permission denied), rather than could not be reached. */
  down(why: string, retryInMs: number, refused: boolean): void;
  /** An exclusive key is held by another lease (its current value); trying again in `retryInMs`. */
  taken(holder: string, retryInMs: number): void;
  /** A keepalive failed: etcd may be unreachable (called once per outage). */
  suspect?(err: unknown): void;
  /**
   * No keepalive was answered for a whole TTL: etcd, if it runs, has let the lease end and the key
   * go, though the lease is given up only after two (it may yet answer: a leader change, a slow disk).
   * Once per outage; `up(true)` follows if a keepalive is answered again, on this lease or a new one.
   */
  lapsed?(why: string): void;
  /**
   * etcd answered that the lease is gone (it let it expire while no keepalive reached it: this process frozen, or
   * cut off from etcd for between one TTL and two - past two it gives the lease up itself -, or etcd's data lost): the key went with it. `down` follows, and the key is
   * written again under a new lease.
   */
  ended?(why: string): void;
  /** etcd refused who we are (user, password, role): with this handler the key stops trying; without it, it keeps trying. */
  refused?(why: string): void;
  /** The key was deleted or overwritten while its lease lived, by someone else (`how`: what was done, in words), and is written again as it was (under the same lease). */
  restored?(how: string): void;
}

/** What the key's watch is used for (etcd3's Watcher). */
interface Watcher {
  on(event: string, fn: (...args: never[]) => void): unknown;
  cancel(): Promise<void>;
}

export class KeptKey {
  /** The lease the key is (being) written under; undefined while none is granted. */
  private leaseId?: string;
  /** Leases this key was written under: after an outage the key may still be on one of them. */
  private readonly ours = new Set<string>();
  private timer?: NodeJS.Timeout;
  private beat?: NodeJS.Timeout;
  private retryMs: number;
  private stopped = false;
  private isUp = false;
  private wasUp = false;
  private suspected = false;
  private generation = 0;
  /** The generation whose failure was handled: etcd3 reports a failed grant twice (its lease's `lost`, and grant() rejecting). */
  private failedGeneration = -1;
  /** The key is written under the current lease. */
  private written = false;
  /** Bumped by `moveTo`: a keepalive loop on an earlier client stops. */
  private moves = 0;
  /** The watch of the key (see `watchKey`). */
  private watcher?: Watcher;
  /** The wait before the key's watch is made again after etcd refused it (`watchKey`). */
  private watchRetryMs: number;

  constructor(
    private client: Etcd3,
    readonly key: string,
    private readonly value: string,
    private readonly opts: Resolved,
    private readonly on: KeptKeyHandlers,
    private readonly exclusive = false,
  ) {
    this.retryMs = opts.retryInitialMs;
    this.watchRetryMs = opts.retryInitialMs;
  }

  /** Why `stop` could not tell etcd the key goes (its first call's failure, in words), when it could not. */
  stopError?: string;

  get alive(): boolean {
    return this.isUp;
  }

  start(): void {
    this.watchKey();
    void this.establish();
  }

  /**
   * Carry on through `client` (the registry's client was made again with renewed TLS files): the
   * lease is kept alive through it from now on, a keepalive sent at once; a grant or a write in
   * flight finishes on the client it began on (closed only once such calls had their time), and
   * whatever comes next uses this one.
   */
  moveTo(client: Etcd3): void {
    this.client = client;
    this.moves++;
    if (!this.stopped) this.watchKey();
    if (this.stopped || this.leaseId === undefined || this.generation === this.failedGeneration) return;
    clearTimeout(this.beat);
    this.keepAlive(this.leaseId, this.generation, 0);
  }

  private async establish(): Promise<void> {
    const gen = ++this.generation;
    this.written = false;
    this.leaseId = undefined;
    clearTimeout(this.beat);
    try {
      const id = String((await this.client.leaseClient.leaseGrant({ TTL: this.opts.ttlSeconds })).ID);
      if (gen !== this.generation || this.stopped) return void this.revoke(id);
      this.leaseId = id;
      this.ours.add(id);
      this.keepAlive(id, gen);
      const holder = await this.write(id);
      if (gen !== this.generation || this.stopped) return;
      if (holder !== undefined) {
        this.leaseId = undefined;
        clearTimeout(this.beat);
        this.revoke(id);
        this.ours.delete(id);
        const wait = Math.max(this.opts.retryInitialMs, Math.round((this.opts.ttlSeconds * 1000) / 2));
        this.on.taken(holder, wait);
        this.retry(wait);
        return;
      }
      this.written = true;
      this.markUp();
    } catch (err) {
      this.failed(err, gen);
    }
  }

  /** Write the key under lease `id`; returns the value of another holder when an exclusive key is taken. */
  private async write(id: string): Promise<string | undefined> {
    const c = this.client;
    if (!this.exclusive) {
      await c.put(this.key).value(this.value).lease(id).exec();
      return undefined;
    }
    const first = await c.if(this.key, 'Create', '==', 0).then(c.put(this.key).value(this.value).lease(id)).else(c.get(this.key)).commit();
    if (first.succeeded) return undefined;
    const kv = first.responses[0]?.response_range?.kvs[0];
    if (!kv) return this.write(id); // deleted meanwhile
    if (!this.ours.has(String(kv.lease))) return kv.value.toString();
    // Ours, from before an outage: replace it, unless it changed meanwhile.
    const again = await c.if(this.key, 'Mod', '==', kv.mod_revision).then(c.put(this.key).value(this.value).lease(id)).commit();
    return again.succeeded ? undefined : this.write(id);
  }

  /**
   * Keep the lease alive: a keepalive every TTL/3, each on a stream of its own with a deadline of
   * half that; when one fails, two are sent at once (on a cluster), and again at most every
   * 100 ms until one is answered. etcd3's own keepalive (one long stream) noticed a member that
   * hung (a SIGSTOP, a hung VM: its socket stays open) only after a whole TTL of silence, when
   * etcd had just expired the lease: on a 3-member cluster with one member stopped, 3 servers of
   * 4 lost their keys and the proxies refused requests (NO_SERVER). etcd3 picks a member at
   * random for each stream and does not learn from a missed deadline, so a single retry went to
   * the hung member again one time in three: two at a time, both must. With no answer for 2 TTLs
   * (etcd away), the lease is given up for lost and written again when etcd answers, as etcd3 did.
   */
  private keepAlive(id: string, gen: number, first?: number): void {
    const ttlMs = this.opts.ttlSeconds * 1000;
    const every = ttlMs / 3;
    const patience = Math.max(100, Math.min(this.opts.callTimeoutMs, Math.round(every / 2)));
    let last = systemClock.now();
    let lapsed = false;
    const client = this.client;
    const moves = this.moves;
    const live = (): boolean => gen === this.generation && gen !== this.failedGeneration && !this.stopped && this.leaseId === id && moves === this.moves;
    const send = async (): Promise<void> => {
      if (!live()) return;
      const sent = systemClock.now();
      try {
        const tries = this.suspected && this.opts.endpoints.length > 1 ? 2 : 1;
        await Promise.any(Array.from({ length: tries }, () => keepaliveOnce(client, id, deadlineIn(patience))));
        if (!live()) return;
        last = systemClock.now();
        this.suspected = false;
        if ((!this.isUp || lapsed) && this.written) this.markUp();
        lapsed = false;
        this.beat = setTimeout(send, every);
      } catch (caught) {
        if (!live()) return;
        const err = caught instanceof AggregateError ? caught.errors[0] : caught;
        // etcd says the lease is gone (it expired while etcd was away, or was revoked): write the key again under a new one.
        if ((err as Error)?.name === 'EtcdLeaseInvalidError' || (err as Error)?.constructor?.name === 'EtcdLeaseInvalidError') {
          this.on.ended?.(describeEtcdError(err, this.opts));
          return this.failed(err, gen);
        }
        if (!this.suspected) {
          this.suspected = true;
          this.on.suspect?.(err);
        }
        // A TTL since etcd last renewed the lease (it did before its answer came): the key may be gone.
        if (!lapsed && this.isUp && this.on.lapsed && systemClock.now() - last > ttlMs) {
          lapsed = true;
          this.on.lapsed(`no keepalive answered for ${Math.round((systemClock.now() - last) / 100) / 10} s, more than the lease's TTL (${this.opts.ttlSeconds} s): ${describeEtcdError(err, this.opts)}`);
        }
        // Given up: said as a lease etcd let expire, unless etcd refused us in TLS (a client certificate it no longer trusts), which is the cause to tell.
        if (systemClock.now() - last > 2 * ttlMs) return this.failed(isTlsRefusal(err) ? err : Object.assign(new Error('no keepalive was answered within two lease TTLs'), { name: 'EtcdLeaseInvalidError', lastError: err }), gen);
        this.beat = setTimeout(send, Math.max(0, 100 - (systemClock.now() - sent)));
      }
    };
    this.beat = setTimeout(send, first ?? every);
  }

  /**
   * Watch the key (on the current client) for a delete or a write that is not ours. etcd3 resumes a watch
   * after a broken connection from the revision it had reached; a watch etcd cancelled (its
   * revision compacted away) is made again and the key read once (`lookAgain`), as a delete or an
   * overwrite may have gone by meanwhile.
   */
  private watchKey(): void {
    this.unwatch();
    const w = this.client.watch().key(this.key).watcher() as unknown as Watcher;
    this.watcher = w;
    w.on('delete', () => {
      if (this.watcher === w) void this.restore();
    });
    w.on('put', (kv: IKeyValue) => {
      if (this.watcher !== w) return;
      const over = this.overwrite(kv);
      if (over) void this.restore(over);
    });
    // Made: a watch refused again is tried again soon.
    w.on('connected', () => {
      if (this.watcher === w) this.watchRetryMs = this.opts.retryInitialMs;
    });
    w.on('error', (err: Error) => {
      if (this.watcher !== w || this.stopped) return;
      this.watcher = undefined;
      // A watch etcd refused (the user's roles may not read the key: a permission revoked) is tried again with backoff,
      // which a grant heals. Not told here: a proxy's mirror, refused the same prefix, says it (registry/mirror.ts).
      const wait = this.watchRetryMs;
      if (isRefusal(err)) this.watchRetryMs = Math.min(2 * this.watchRetryMs, this.opts.retryMaxMs);
      setTimeout(() => {
        if (this.stopped || this.watcher !== undefined) return;
        this.watchKey();
        void this.lookAgain();
      }, wait).unref();
    });
  }

  /** How `kv`, a write of the key, differs from ours (undefined when it is ours): the words `restored` is told. */
  private overwrite(kv: IKeyValue): { revision: string; how: string } | undefined {
    const lease = String(kv.lease);
    if (lease === this.leaseId && kv.value.toString() === this.value) return undefined;
    const how = lease === '0' ? 'overwritten without a lease (it would outlive this process)' : lease === this.leaseId ? 'overwritten with another value' : 'overwritten under another lease';
    return { revision: String(kv.mod_revision), how };
  }

  /**
   * After a watch etcd cancelled: whatever went by meanwhile, a delete or an overwrite, is read from the
   * key as it is now. A read that fails is left (etcd away: the lease's keepalives say so, and the new watch
   * sees the next change).
   */
  private async lookAgain(): Promise<void> {
    if (this.stopped || this.leaseId === undefined || !this.written) return;
    const kv = await this.client.get(this.key).exec().then((r) => r.kvs[0], () => null);
    if (kv === null) return;
    if (kv === undefined) return this.restore();
    const over = this.overwrite(kv);
    if (over) return this.restore(over);
  }

  /**
   * The key is gone (or, with `over`, was overwritten at that revision) while it was written under the
   * lease now kept: write it again under that lease, only if it is still absent (or still as that write
   * left it): a write seen meanwhile, another's or ours, is left alone. A lease that ended meanwhile fails
   * the write, and the key is written again under a new one, as after an outage.
   */
  private async restore(over?: { revision: string; how: string }): Promise<void> {
    const id = this.leaseId;
    const gen = this.generation;
    if (this.stopped || id === undefined || !this.written) return;
    const c = this.client;
    try {
      const unchanged = over ? c.if(this.key, 'Mod', '==', over.revision) : c.if(this.key, 'Create', '==', 0);
      const r = await unchanged.then(c.put(this.key).value(this.value).lease(id)).commit();
      if (r.succeeded && gen === this.generation && !this.stopped) this.on.restored?.(over?.how ?? 'deleted');
    } catch (err) {
      this.failed(err, gen);
    }
  }

  /** Revoke lease `id`, best effort (it ends a TTL after its last keepalive anyway). */
  private revoke(id: string): void {
    void this.client.leaseClient.leaseRevoke({ ID: id }).catch(() => undefined);
  }

  private markUp(): void {
    this.retryMs = this.opts.retryInitialMs;
    this.isUp = true;
    this.suspected = false;
    this.on.up(this.wasUp);
    this.wasUp = true;
  }

  /** The lease of generation `gen` failed: once per generation, or the backoff doubles twice and the loss is told twice. */
  private failed(err: unknown, gen: number): void {
    if (this.stopped || gen !== this.generation || gen === this.failedGeneration) return;
    this.failedGeneration = gen;
    this.isUp = false;
    clearTimeout(this.beat);
    if (this.on.refused && isRefusal(err)) {
      this.stopped = true;
      this.on.refused(describeEtcdError(err, this.opts));
      return;
    }
    const wait = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.opts.retryMaxMs);
    this.on.down(describeEtcdError(err, this.opts), wait, isEtcdRefusal(err));
    this.retry(wait);
  }

  private unwatch(): void {
    void this.watcher?.cancel().catch(() => undefined);
    this.watcher = undefined;
  }

  private retry(wait: number): void {
    clearTimeout(this.timer);
    // `on.taken` may have given up (DUPLICATE_ID: stopped): a timer set after that held the process 2.5 s,
    // and `revproxy server`'s exit check blamed the handler module, or called it a bug of revproxy's.
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      if (!this.stopped) void this.establish();
    }, wait);
  }

  /**
   * Stop keeping the key without deleting it, as a process that dies would:
   * etcd deletes it a TTL after the last keepalive.
   */
  release(): void {
    this.stopped = true;
    this.generation++;
    this.unwatch();
    clearTimeout(this.timer);
    clearTimeout(this.beat);
    this.isUp = false;
  }

  /**
   * Stop keeping the key: with `farewell`, write it once more with that
   * value (a server's entry saying it is leaving: proxies then remove it at
   * once, and keep one whose key went with its lease expired, registry/proxy-registry.ts);
   * then delete it (while our lease holds it), then
   * revoke the lease. Best effort, and over within two call timeouts whatever
   * etcd does: if etcd is away the lease ends a TTL after the last keepalive
   * anyway, and a drain waits for this before it closes the etcd client (a
   * server and a proxy that lived through etcd pauses and a wipe were seen
   * never to exit after SIGTERM, their client left open behind a stop that
   * never settled).
   */
  /**
   * Resolves true once etcd has taken the farewell (or the delete, without one): the watchers know the
   * key is leaving. False when it did not within twice the call timeout (etcd away): they learn it only
   * when the lease ends, and only once they reach etcd again.
   */
  async stop(farewell?: string): Promise<boolean> {
    if (this.stopped) return true;
    this.stopped = true;
    this.generation++;
    this.unwatch();
    clearTimeout(this.timer);
    clearTimeout(this.beat);
    const id = this.leaseId;
    this.isUp = false;
    if (id === undefined) return true;
    const c = this.client;
    let told = false;
    const untold = (err: unknown): void => void (this.stopError ??= describeEtcdError(err, this.opts));
    const work = (async () => {
      if (farewell !== undefined) await c.if(this.key, 'Lease', '==', id).then(c.put(this.key).value(farewell).lease(id)).commit().then(() => (told = true), untold);
      await c.if(this.key, 'Lease', '==', id).then(c.delete().key(this.key)).commit().then(() => (told = true), untold);
      await c.leaseClient.leaseRevoke({ ID: id }).catch(() => undefined);
    })();
    let limit: NodeJS.Timeout | undefined;
    await Promise.race([work, new Promise<void>((r) => (limit = setTimeout(r, 2 * this.opts.callTimeoutMs)))]);
    clearTimeout(limit);
    return told;
  }
}
