/**
 * The etcd client a registry talks through (a proxy's registry actor, a server's registration),
 * and the one owner of which client that is now. etcd checks a client's certificate as it
 * connects, and etcd3 connects with the files it was made with: a client certificate renewed
 * (cert-manager, an internal CA's day-long certificates) reached etcd only after a restart.
 * `renew` makes a new client with the renewed files and tries it (one read under the prefix)
 * before anything moves onto it; then the keys kept alive and the mirrors' watches move to it
 * (`moveTo`: the same leases, each watch going on from the revision it had reached, nothing
 * written or read again), and the old client is closed once calls in flight on it have had
 * their time. A set etcd refuses (a certificate its CA did not sign, a CA that does not verify
 * etcd's) is refused and the running client kept.
 */
import type { Etcd3 } from './etcd.js';
import { describeEtcdError, inCallTimeout, isRefusal, isTlsRefusal, openEtcd, released } from './etcd.js';
import { describeRegistry, type Resolved } from './options.js';
import { renewed } from '../actors/renew-tls.js';
import { TlsConfigError, type TlsMaterial } from '../transport/tls.js';

/** What goes on through the current client: a kept key, a mirror. */
export interface Movable {
  moveTo(client: Etcd3): void;
}

/** What a renewal did: `tried` false when etcd could not be reached to try it (`why`): the renewed client is used anyway, as the old one could not reach etcd either. */
export interface Renewal {
  tried: boolean;
  why?: string;
}

export class EtcdClient {
  private readonly users = new Set<Movable>();
  /** Old clients, each closed once the calls it had in flight have had their time. */
  private readonly retiring = new Map<Etcd3, NodeJS.Timeout>();
  /** Renewals one after the other: the last one given wins. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** Settles once `closeAfter`'s last writes are done and the client is closed (at once until it is called). */
  private ended: Promise<void> = Promise.resolve();

  constructor(private client: Etcd3, private o: Resolved) {}

  static async open(o: Resolved): Promise<EtcdClient> {
    return new EtcdClient(await openEtcd(o), o);
  }

  get current(): Etcd3 {
    return this.client;
  }

  /** The TLS material the client was made with now (undefined for etcd:// without TLS). */
  get tls(): TlsMaterial | undefined {
    return this.o.tls;
  }

  /** `make` a user (a kept key, a mirror) on the current client, and move it along with the client from now on (for as long as the client lives: its users are made once, with it, and close with it). */
  use<M extends Movable>(make: (client: Etcd3) => M): M {
    const m = make(this.client);
    this.users.add(m);
    return m;
  }

  /**
   * Talk to etcd with renewed TLS material from now on (a renewed client certificate and its key,
   * a new CA bundle). Checked first as the files are at start (`renewed`: a TlsConfigError naming
   * registry.tls.cert, ...), then tried against etcd: refused (a TlsConfigError saying what etcd
   * said) when etcd refuses it, the running client kept. Resolves once everything has moved.
   */
  renew(next: TlsMaterial): Promise<Renewal> {
    const run = this.queue.then(() => this.swap(next));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async swap(next: TlsMaterial): Promise<Renewal> {
    if (this.closed) throw new TlsConfigError('cannot renew registry.tls: the registry is closed (the proxy or server has stopped)', 'usage');
    // Presented to etcd only, when it asks (--client-cert-auth): not held to clientAuth, as at start.
    const material = renewed('registry.tls', this.o.tls, next);
    const o: Resolved = { ...this.o, tls: material };
    const client = await openEtcd(o);
    let renewal: Renewal = { tried: true };
    try {
      await inCallTimeout(client.get(o.prefix).exec(), o.callTimeoutMs);
    } catch (err) {
      if (isTlsRefusal(err) || isRefusal(err)) {
        client.close();
        throw new TlsConfigError(`etcd refused the renewed registry.tls, the previous files are still used: ${describeEtcdError(err, o)}`);
      }
      // etcd cannot be reached now (nor through the running client): the renewed files passed every check that can be made here.
      renewal = { tried: false, why: describeEtcdError(err, o) };
    }
    if (this.closed) {
      client.close();
      throw new TlsConfigError('cannot renew registry.tls: the registry was closed meanwhile (the proxy or server has stopped)', 'usage');
    }
    const old = this.client;
    this.client = client;
    this.o = o;
    for (const u of this.users) u.moveTo(client);
    // Calls begun on the old client (a read, a grant, a drain's last writes) finish there: it is closed after two call timeouts.
    const timer = setTimeout(() => {
      this.retiring.delete(old);
      old.close();
    }, 2 * o.callTimeoutMs);
    timer.unref();
    this.retiring.set(old, timer);
    return renewal;
  }

  /**
   * Close once `last` settles (a drain's last writes: a key's farewell, delete and revoke, bounded
   * by kept-key.ts), at once without it. `closing` settles once the client is closed and has let the
   * process go (`released`: at most etcd3's wait before a watch's next try, `retryMaxMs`): a handle's
   * stop() waits for it, so a program that exits as soon as stop() resolves leaves no key behind,
   * nor anything of etcd's open.
   */
  closeAfter(last?: Promise<unknown>): void {
    this.ended = (last ?? Promise.resolve()).then(() => undefined, () => undefined).then(() => {
      const clients = [this.client, ...this.retiring.keys()];
      this.close();
      return Promise.all(clients.map(released)).then(() => undefined);
    });
  }

  /** Settles once the client is closed after `closeAfter` (at once before it is called). */
  get closing(): Promise<void> {
    return this.ended;
  }

  close(): void {
    this.closed = true;
    for (const [old, timer] of this.retiring) {
      clearTimeout(timer);
      old.close();
    }
    this.retiring.clear();
    this.client.close();
  }
}
