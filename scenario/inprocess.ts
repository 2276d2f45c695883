/**
 * Scenario actors in this process, started through the library's public
 * surface (actors/index.ts): startProxy, startServer, ProxyHandle.pools().
 */
import { Logger, startProxy, startServer, type LogRecord, type ProxyHandle, type ProxyOptions, type ServerHandle } from '../actors/index.js';
import { startEtcd, type Etcd } from './etcd.js';
import { PROXY_OPTIONS, type ProxyOptionKey, type ProxySpec, type RegistrySpec, type ServerSpec } from './format.js';
import { fleetTtl, ProxyEvents, type Attach, type PoolState, type RunningServer, type Topology } from './topology.js';

const LOCAL = '127.0.0.1';

export class InProcessTopology implements Topology {
  readonly mode = 'in-process';
  readonly events = new ProxyEvents();
  port = 0;
  ports: number[] = [];
  private proxy?: ProxyHandle;
  /** With a registry: the other proxies of the fleet, and their log records. */
  private readonly others: Array<{ handle: ProxyHandle; events: ProxyEvents }> = [];
  private etcd?: Etcd;
  private spec: ProxySpec = {};
  private readonly servers = new Map<string, ServerHandle>();
  /** Every server started, also those a later one with the same id replaced in `servers`. */
  private readonly all: ServerHandle[] = [];

  constructor(
    private readonly attach: Attach = {},
    /** A fleet: an etcd of its own, `proxies` proxies watching it, servers registered there. */
    private readonly fleet?: RegistrySpec,
  ) {}

  async startProxy(spec: ProxySpec): Promise<void> {
    this.spec = spec;
    if (this.fleet && !this.etcd) this.etcd = await startEtcd();
    this.proxy = await this.one(spec, this.events, this.port);
    this.port = this.proxy.port;
    if (this.fleet && this.others.length === 0) {
      for (let n = 2; n <= (this.fleet.proxies ?? 1); n++) {
        const events = new ProxyEvents();
        this.others.push({ handle: await this.one(spec, events, 0), events });
      }
    }
    this.ports = [this.port, ...this.others.map((o) => o.handle.port)];
  }

  private one(spec: ProxySpec, events: ProxyEvents, port: number): Promise<ProxyHandle> {
    // Debug: 'serving' (the proxy reaches a new server) is a debug record.
    const logger = new Logger('proxy', (rec: LogRecord) => events.push(rec), 'debug');
    const options: Record<string, number> = {};
    for (const key of Object.keys(PROXY_OPTIONS) as ProxyOptionKey[]) {
      if (spec[key] !== undefined) options[PROXY_OPTIONS[key].option] = spec[key];
    }
    return startProxy({ ...(options as ProxyOptions), token: spec.token, tokens: spec.tokens, port, host: LOCAL, logger, registry: this.registry(), ...this.attach });
  }

  private registry() {
    return this.fleet && this.etcd ? { endpoints: [this.etcd.endpoint], prefix: '/scenario/', ttlSeconds: fleetTtl(this.fleet), retryInitialMs: 100, retryMaxMs: 1000 } : undefined;
  }

  eventsOf(n: number): ProxyEvents | undefined {
    return n === 1 ? this.events : this.others[n - 2]?.events;
  }

  async restartProxy(): Promise<void> {
    await this.proxy?.stop();
    this.events.forgetPools();
    await this.startProxy(this.spec);
  }

  async startServer(spec: ServerSpec): Promise<RunningServer> {
    const handle = await startServer({
      id: spec.id,
      policy: spec.policy,
      listenPort: 0,
      listenHost: LOCAL,
      ...(this.fleet ? { registry: this.registry() } : { proxy: { host: LOCAL, port: this.port } }),
      behaviour: spec.behaviour,
      delayMs: spec.delay,
      wire: spec.wire === 'json' ? 'json' : undefined,
      token: spec.token,
      inspect: this.attach.inspect,
      // As `revproxy server` does: the runner waits for the proxy's word itself.
      waitForRegistration: false,
    });
    this.servers.set(spec.id, handle);
    this.all.push(handle);
    const ended = new Promise<string>((resolve) => {
      const done = (): void => {
        const snap = handle.actor.getSnapshot();
        if (snap.status !== 'active') resolve(snap.context.error ?? 'the server stopped');
      };
      handle.actor.subscribe({ next: done, complete: done, error: done });
      done();
    });
    return { ended };
  }

  async stopServer(id: string): Promise<void> {
    await this.take(id).stop();
  }

  async killServer(id: string): Promise<void> {
    this.take(id).kill();
  }

  pools(n = 1): Record<string, PoolState> {
    const out: Record<string, PoolState> = {};
    const handle = n === 1 ? this.proxy : this.others[n - 2]?.handle;
    for (const [policy, p] of Object.entries(handle?.pools() ?? {})) if (p.members.length) out[policy] = { members: p.members, serving: p.serving };
    return out;
  }

  async close(): Promise<void> {
    for (const s of this.all) s.kill();
    this.servers.clear();
    await Promise.all([this.proxy?.stop(), ...this.others.map((o) => o.handle.stop())]);
    await this.etcd?.remove();
  }

  private take(id: string): ServerHandle {
    const handle = this.servers.get(id);
    if (!handle) throw new Error(`server ${id} is not running`);
    this.servers.delete(id);
    return handle;
  }
}
