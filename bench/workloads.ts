/**
 * The workloads: each one's load, and the subjects its rounds measure - the
 * targets, and beside them the variants that take a target's figure apart
 * (one at a time: the proxy on a one-server policy, busy polling; pipelined:
 * the proxy logging at info, and with its access log). A variant's processes
 * start with its workload and stop after its rounds; one that must not run
 * beside the others' cells (HAProxy busy-polling keeps a core busy) starts
 * for each of its cells alone.
 */
import { join } from 'node:path';
import type { LoadEndpoint, LoadOptions } from './loadgen.js';
import { HOST, startHaproxy, waitForPort, freePort } from './procs.js';
import { registerMany } from './stub.js';
import {
  demoPolicies, endpoints, POLICIES, serverPids, startSideProxy, untilServed, warm, watchedPid, type Pool, type SideProxy, type Topology,
} from './topology.js';
import { VARIANT, type BenchOptions, type Subject, type Target, type Workload } from './types.js';

/** What one cell needs: where its connections go and which processes it watches. */
export interface Stage {
  endpoint: (i: number) => LoadEndpoint;
  /** The process under test, whose CPU and memory are watched; none for direct. */
  underTest?: number;
  /** The server processes its requests reach. */
  servers: number[];
  /** Load settings of its own (direct to the slow servers: one connection each). */
  load?: Partial<LoadOptions>;
  /** After the cell: stop what was started for it alone. */
  close?(): Promise<void>;
}

export interface CellSubject {
  subject: Subject;
  target: Target;
  /** The cell's name in the report: the workload's label, and the variant's. */
  label: string;
  /** Get ready for one cell. */
  open(): Promise<Stage>;
}

export interface WorkloadPlan {
  workload: Workload;
  label: string;
  load: Omit<LoadOptions, 'target'>;
  subjects: CellSubject[];
  /** After the workload's rounds: stop what its variants started. */
  close(): Promise<void>;
}

/** What the checkout under test can do, from its `--help`; a missing piece is named in the notes. */
export interface Capabilities {
  /** `server --concurrency`: servers that work one request at a time. */
  concurrency: boolean;
  /** `proxy --access-log`, and whether it takes a file ('<' or '['), or writes to the log (''). */
  accessLog?: string;
}

export interface PlanContext {
  topo: Topology;
  o: BenchOptions;
  targets: Target[];
  haproxyBin?: string;
  caps: Capabilities;
  /** A folder for the logging variants' output, removed after the run. */
  tmpDir: string;
  notes: string[];
}

export function workloadLabel(w: Workload, o: BenchOptions): string {
  switch (w) {
    case 'pipelined':
      return `pipelined ${o.connections}x${o.depth}`;
    case 'serial':
      return 'one at a time';
    case 'per-request':
      return 'connection per request';
    case 'many':
      return `${o.many.toLocaleString('en')} connections`;
    case 'slow-servers':
      return '4 servers at 1 ms one at a time, 2x32';
    default:
      throw new Error(`unknown workload ${w satisfies never}`);
  }
}

function workloadLoad(w: Workload, o: BenchOptions): Omit<LoadOptions, 'target'> {
  const timing = { durationMs: o.durationMs, warmupMs: o.warmupMs };
  switch (w) {
    case 'pipelined':
      return { connections: o.connections, depth: o.depth, ...timing };
    case 'serial':
      return { connections: 1, depth: 1, ...timing };
    case 'per-request':
      return { connections: 1, depth: 1, perRequest: true, ...timing };
    case 'many':
      return { connections: o.many, depth: 1, connectConcurrency: 256, ...timing };
    case 'slow-servers':
      return { connections: 2, depth: 32, ...timing };
    default:
      throw new Error(`unknown workload ${w satisfies never}`);
  }
}

const TARGET_NAME: Record<Target, string> = { direct: 'direct', proxy: 'proxy', haproxy: 'HAProxy', baseline: 'baseline proxy', relay: 'bare Node relay' };
export const targetName = (t: Target): string => TARGET_NAME[t];

/** Why the slow-servers workload cannot run with this checkout, if it cannot. */
export function slowServersMissing(caps: Capabilities): string | undefined {
  return caps.concurrency ? undefined : "this checkout's `revproxy server` has no --concurrency (servers that work one request at a time)";
}

/** Why the access-log row cannot run with this checkout, if it cannot. */
export function accessLogMissing(caps: Capabilities): string | undefined {
  return caps.accessLog !== undefined ? undefined : "this checkout's `revproxy proxy` has no --access-log";
}

/** The plan of workload `w`, or undefined with a note when it cannot run here. */
export async function planWorkload(w: Workload, ctx: PlanContext): Promise<WorkloadPlan | undefined> {
  const { topo, o, notes } = ctx;
  const label = workloadLabel(w, o);
  const pool: Pool = w === 'slow-servers' ? 'slow' : 'demo';
  if (pool === 'slow' && !topo.slow.length) {
    notes.push(`${label}: not measured: ${slowServersMissing(ctx.caps)}.`);
    return undefined;
  }
  const main: CellSubject[] = ctx.targets.map((t) => ({
    subject: t,
    target: t,
    label,
    open: async () => ({
      endpoint: endpoints(t, topo, pool),
      underTest: watchedPid(t, topo),
      servers: serverPids(topo, pool),
      // Direct to the slow servers: the same 64 in flight, one connection per server (the most they can do).
      load: pool === 'slow' && t === 'direct' ? { connections: topo.slow.length, depth: 64 / topo.slow.length } : undefined,
    }),
  }));
  const variants: CellSubject[] = [];
  const closers: Array<() => Promise<void> | void> = [];
  /** Start a variant's processes; one that cannot start is left out with a note. */
  const variant = async (name: string, start: () => Promise<CellSubject>): Promise<void> => {
    try {
      variants.push(await start());
    } catch (err) {
      notes.push(`${label}, ${name}: not measured (${firstAndLast(err)}).`);
    }
  };
  const side = async (name: string, flags: string[], output?: string): Promise<SideProxy> => {
    const p = await startSideProxy(name, flags, topo.servers, { output });
    closers.push(() => p.stop());
    await warm(demoPolicies(p.port), o);
    return p;
  };

  if (w === 'serial' && ctx.targets.includes('proxy') && ctx.targets.includes('haproxy') && ctx.haproxyBin) {
    await variant('proxy, one-server policy', async () => {
      // HAProxy in TCP mode picks a server per connection, so its one connection always reaches the same server: like for like.
      const server = topo.servers[0]!;
      const solo = await registerMany(topo.proxyPort, 'one-server', [server.port], 1, `solo${server.id}`);
      closers.push(() => solo.close());
      await untilServed(topo.proxyPort, 'one-server', 1);
      return {
        subject: VARIANT.oneServer,
        target: 'proxy',
        label: `${label}, one-server policy`,
        open: async () => ({ endpoint: () => ({ host: HOST, port: topo.proxyPort, policy: 'one-server' }), underTest: topo.proxy.pid, servers: [server.child.pid] }),
      };
    });
    if (o.busyPollUs) {
      await variant(`proxy --busy-poll ${o.busyPollUs}`, async () => {
        const p = await side('proxy --busy-poll', ['--busy-poll', String(o.busyPollUs)]);
        return {
          subject: VARIANT.busyPoll,
          target: 'proxy',
          label: `${label}, --busy-poll ${o.busyPollUs}`,
          open: async () => ({ endpoint: demoPolicies(p.port), underTest: p.child.pid, servers: serverPids(topo, 'demo') }),
        };
      });
      variants.push({
        subject: VARIANT.haproxyBusy,
        target: 'haproxy',
        label: `${label}, busy-polling`,
        // Its thread never sleeps: it runs only during its own cells, so it takes no core from the others'.
        open: async () => {
          const ports = new Map<string, number>();
          for (const p of POLICIES) ports.set(p, await freePort());
          const h = startHaproxy(ctx.haproxyBin!, POLICIES.map((p) => ({ policy: p, port: ports.get(p)!, servers: topo.servers.filter((s) => s.policy === p) })), { busyPolling: true });
          const close = async (): Promise<void> => {
            await h.child.stop();
            h.cleanup();
          };
          try {
            for (const port of ports.values()) await waitForPort(port, h.child);
          } catch (err) {
            await close();
            throw err;
          }
          const endpoint = (i: number): LoadEndpoint => ({ host: HOST, port: ports.get(POLICIES[i % POLICIES.length]!)!, policy: POLICIES[i % POLICIES.length]! });
          return { endpoint, underTest: h.child.pid, servers: serverPids(topo, 'demo'), close };
        },
      });
    }
  }

  if (w === 'pipelined' && ctx.targets.includes('proxy')) {
    // What logging costs, against a proxy at warn started the same way beside it (stand-ins register the same servers).
    // The output goes to files, as under a supervisor (the bench reading it would cost the load generator's CPU).
    await variant('proxy --log-level warn', async () => {
      const p = await side('proxy --log-level warn', [], join(ctx.tmpDir, 'proxy-warn.log'));
      return {
        subject: VARIANT.logWarn,
        target: 'proxy',
        label: `${label}, --log-level warn (beside)`,
        open: async () => ({ endpoint: demoPolicies(p.port), underTest: p.child.pid, servers: serverPids(topo, 'demo') }),
      };
    });
    await variant('proxy --log-level info', async () => {
      const p = await side('proxy --log-level info', ['--log-level', 'info'], join(ctx.tmpDir, 'proxy-info.log'));
      return {
        subject: VARIANT.logInfo,
        target: 'proxy',
        label: `${label}, --log-level info`,
        open: async () => ({ endpoint: demoPolicies(p.port), underTest: p.child.pid, servers: serverPids(topo, 'demo') }),
      };
    });
    const missing = accessLogMissing(ctx.caps);
    if (missing) notes.push(`${label}, --access-log: not measured: ${missing}.`);
    else {
      await variant('proxy --access-log', async () => {
        const file = join(ctx.tmpDir, 'access.log');
        const flags = ctx.caps.accessLog === '<' || ctx.caps.accessLog === '[' ? ['--access-log', file] : ['--access-log'];
        const p = await side('proxy --access-log', flags, join(ctx.tmpDir, 'proxy-access.log'));
        return {
          subject: VARIANT.accessLog,
          target: 'proxy',
          label: `${label}, --access-log`,
          open: async () => ({ endpoint: demoPolicies(p.port), underTest: p.child.pid, servers: serverPids(topo, 'demo') }),
        };
      });
    }
  }

  return {
    workload: w,
    label,
    load: workloadLoad(w, o),
    subjects: [...main, ...variants],
    async close() {
      for (const c of closers.reverse()) await c();
    },
  };
}

/** An error's first line, and the last line the process printed when it says one. */
export function firstAndLast(err: unknown): string {
  const [first, ...tail] = (err instanceof Error ? err.message : String(err)).split('\n').filter(Boolean);
  return `${first?.replace(/:$/, '') ?? 'failed'}${tail.length ? `: ${tail[tail.length - 1]}` : ''}`;
}

