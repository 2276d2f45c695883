/**
 * Scenario actors in this process, started through the library's public
 * surface (actors/index.ts): startProxy, startServer, ProxyHandle.pools().
 */
import { Logger, startProxy, startServer, type LogRecord, type ProxyHandle, type ProxyOptions, type ServerHandle } from '../actors/index.js';
import { PROXY_OPTIONS, type ProxyOptionKey, type ProxySpec, type ServerSpec } from './format.js';
import { ProxyEvents, type Attach, type PoolState, type RunningServer, type Topology } from './topology.js';

const LOCAL = '127.0.0.1';

export class InProcessTopology implements Topology {
  readonly mode = 'in-process';
  readonly events = new ProxyEvents();
  port = 0;
  private proxy?: ProxyHandle;
  private spec: ProxySpec = {};
  private readonly servers = new Map<string, ServerHandle>();
  /** Every server started, also those a later one with the same id replaced in `servers`. */
  private readonly all: ServerHandle[] = [];

  constructor(private readonly attach: Attach = {}) {}

  async startProxy(spec: ProxySpec): Promise<void> {
    this.spec = spec;
    // Debug: 'serving' (the proxy reaches a new server) is a debug record.
    const logger = new Logger('proxy', (rec: LogRecord) => this.events.push(rec), 'debug');
    const options: Record<string, number> = {};
    for (const key of Object.keys(PROXY_OPTIONS) as ProxyOptionKey[]) {
      if (spec[key] !== undefined) options[PROXY_OPTIONS[key].option] = spec[key];
    }
    this.proxy = await startProxy({ ...(options as ProxyOptions), token: spec.token, tokens: spec.tokens, port: this.port, host: LOCAL, logger, ...this.attach });
    this.port = this.proxy.port;
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
      proxy: { host: LOCAL, port: this.port },
      behaviour: spec.behaviour,
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

  pools(): Record<string, PoolState> {
    const out: Record<string, PoolState> = {};
    for (const [policy, p] of Object.entries(this.proxy?.pools() ?? {})) if (p.members.length) out[policy] = { members: p.members, serving: p.serving };
    return out;
  }

  async close(): Promise<void> {
    for (const s of this.all) s.kill();
    this.servers.clear();
    await this.proxy?.stop();
  }

  private take(id: string): ServerHandle {
    const handle = this.servers.get(id);
    if (!handle) throw new Error(`server ${id} is not running`);
    this.servers.delete(id);
    return handle;
  }
}
