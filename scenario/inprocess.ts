/**
 * Scenario actors in this process, started through the library's public
 * surface (actors/index.ts): startProxy, startServer, ProxyHandle.pools().
 */
import { Logger, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import type { ProxySpec, ServerSpec } from './format.js';
import { ProxyEvents, type RunningServer, type Topology } from './topology.js';

const LOCAL = '127.0.0.1';

export class InProcessTopology implements Topology {
  readonly mode = 'in-process';
  readonly events = new ProxyEvents();
  port = 0;
  private proxy?: ProxyHandle;
  private spec: ProxySpec = {};
  private readonly servers = new Map<string, ServerHandle>();

  async startProxy(spec: ProxySpec): Promise<void> {
    this.spec = spec;
    const logger = new Logger('proxy', (rec: LogRecord) => this.events.push(rec), 'info');
    this.proxy = await startProxy({
      port: this.port,
      host: LOCAL,
      timeoutMs: spec.timeout,
      maxFrameBytes: spec.max_frame,
      maxClientInflight: spec.max_client_inflight,
      logger,
    });
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
    });
    this.servers.set(spec.id, handle);
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

  pools(): Record<string, string[]> {
    const out: Record<string, string[]> = {};
    for (const [policy, p] of Object.entries(this.proxy?.pools() ?? {})) if (p.members.length) out[policy] = p.members;
    return out;
  }

  async close(): Promise<void> {
    for (const s of this.servers.values()) s.kill();
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
