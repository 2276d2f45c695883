/**
 * The actors a scenario drives, behind one interface with two builds: actors
 * in this process (through actors/index.ts, as a library user has them) and
 * real `revproxy` processes (processes.ts). Both feed the proxy's own log
 * records into `ProxyEvents`: registration and leaving are read from there,
 * the same way in both modes.
 */
import type { InspectionEvent } from 'xstate';
import type { LogRecord } from '../actors/logger.js';
import type { ProxyObserver } from '../actors/proxy-options.js';
import type { ProxySpec, RegistrySpec, ServerSpec } from './format.js';

/** A scenario's registry: the etcd it started, and how its proxies and servers use it. */
export interface FleetSettings {
  spec: RegistrySpec;
  /** `host:port` of the scenario's etcd. */
  endpoint: string;
  prefix: string;
}

export const fleetTtl = (spec: RegistrySpec): number => spec.ttl ?? 2;

/** The proxy's log events the runner follows; the rest are dropped to keep memory flat. */
const LIFECYCLE = new Set(['listening', 'registry_synced', 'advertised', 'register', 'register_refused', 'unauthorized', 'serving', 'down', 'eject', 'readmit', 'deregister', 'stopped']);

/** A pool as a scenario sees it. */
export interface PoolState {
  /** Every member, in rotation order. */
  members: string[];
  /** Members taking requests now: reachable, not ejected. */
  serving: string[];
}

/**
 * The proxy's lifecycle log records, in order, with pool membership derived
 * from them (register appends, deregister removes: the pool's own rule).
 */
export class ProxyEvents {
  private readonly records: LogRecord[] = [];
  private readonly waiters = new Set<() => void>();
  private readonly members = new Map<string, string[]>();
  private readonly serving = new Set<string>();

  push(rec: LogRecord): void {
    if (!LIFECYCLE.has(rec.event)) return;
    this.records.push(rec);
    const id = String(rec.id ?? '');
    const policy = String(rec.policy ?? '');
    if (rec.event === 'register') this.members.set(policy, [...(this.members.get(policy) ?? []), id]);
    if (rec.event === 'deregister') {
      for (const [p, m] of this.members) this.members.set(p, m.filter((x) => x !== id));
    }
    if (rec.event === 'serving' || rec.event === 'readmit') this.serving.add(id);
    if (rec.event === 'down' || rec.event === 'eject' || rec.event === 'deregister') this.serving.delete(id);
    for (const w of this.waiters) w();
  }

  /** A position: `next(since)` looks only at records after it. */
  mark(): number {
    return this.records.length;
  }

  /** The proxy restarted: its pools start empty. */
  forgetPools(): void {
    this.members.clear();
    this.serving.clear();
  }

  pools(): Record<string, PoolState> {
    const out: Record<string, PoolState> = {};
    for (const [policy, members] of this.members) {
      if (members.length) out[policy] = { members, serving: members.filter((m) => this.serving.has(m)) };
    }
    return out;
  }

  isMember(id: string): boolean {
    return [...this.members.values()].some((m) => m.includes(id));
  }

  /** The first record after `since` that matches, or undefined once `ms` have passed or `stop` settles. */
  next(since: number, match: (r: LogRecord) => boolean, ms: number, stop?: Promise<unknown>): Promise<LogRecord | undefined> {
    return new Promise((resolve) => {
      let i = since;
      const finish = (r: LogRecord | undefined): void => {
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(r);
      };
      const check = (): void => {
        for (; i < this.records.length; i++) if (match(this.records[i]!)) return finish(this.records[i]);
      };
      const timer = setTimeout(() => finish(undefined), ms);
      this.waiters.add(check);
      void stop?.then(() => {
        check();
        finish(undefined);
      });
      check();
    });
  }
}

/** Records of a setup the proxy refused: a duplicate id, a missing or wrong secret. */
export const REFUSALS = new Set(['register_refused', 'unauthorized']);

/** How to watch the actors (the inspector): given to the in-process actors as they start. */
export interface Attach {
  inspect?: (event: InspectionEvent) => void;
  observer?: ProxyObserver;
}

export interface RunningServer {
  /** Settles with the reason when the server stops or fails on its own. */
  ended: Promise<string>;
}

export interface Topology {
  readonly mode: 'in-process' | 'processes';
  /** The proxy's port (fresh and ephemeral; kept across a restart). */
  readonly port: number;
  /** The first proxy's log records (the one steps talk to unless they name another). */
  readonly events: ProxyEvents;
  /** Every proxy's port, the first one first: more than one with a registry (`registry.proxies`). */
  readonly ports: number[];
  /** Proxy n's log records (1 = the first). */
  eventsOf(n: number): ProxyEvents | undefined;
  startProxy(spec: ProxySpec): Promise<void>;
  /** Stop the proxy and start it again on the same port. */
  restartProxy(): Promise<void>;
  /** Resolves once the server runs and has sent its setup; the runner waits for the proxy's answer. */
  startServer(spec: ServerSpec): Promise<RunningServer>;
  /** Graceful: as SIGTERM. */
  stopServer(id: string): Promise<void>;
  /** Abrupt: as SIGKILL. */
  killServer(id: string): Promise<void>;
  /** Each policy's members in rotation order, and those serving, on proxy n (default 1). */
  pools(n?: number): Record<string, PoolState>;
  /** End everything still running. */
  close(): Promise<void>;
}
