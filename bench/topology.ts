/**
 * The bench's topology: the proxy and four servers as processes, HAProxy
 * and the bare relay beside them, the servers that work one request at a
 * time when the checkout has them, proxies started beside the topology for
 * one workload, the pair of proxies a before/after run starts afresh each
 * round, and where each target's connections go.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runLoad, type LoadEndpoint } from './loadgen.js';
import { freePort, HOST, probe, revproxyOptions, spawnChild, spawnRevproxy, startHaproxy, waitForPort, type Child } from './procs.js';
import { standIns } from './stub.js';
import type { Target } from './types.js';

/** The demo's topology: two policies, two servers each. */
export const SERVERS = [
  { id: '100', policy: '111' },
  { id: '200', policy: '222' },
  { id: '300', policy: '111' },
  { id: '400', policy: '222' },
];
export const POLICIES = ['111', '222'];

/**
 * Servers that work one request at a time, as the old system's did: four of
 * one policy, each taking 1 ms per request. The work is a sleep, so the two
 * cores stay free for the proxies under test.
 */
export const SLOW_POLICY = '333';
export const SLOW_SERVERS = ['500', '600', '700', '800'].map((id) => ({ id, policy: SLOW_POLICY }));
export const SLOW_FLAGS = ['--concurrency', '1', '--delay', '1'];

/**
 * The proxy's own limits are sized for the many-connections workload (one
 * request in flight on each of 10,000 connections, over two servers per
 * policy); its defaults would answer part of them OVERLOADED by design. The
 * routing comparison registers ~10,000 servers from this one address without
 * a token, past the default bound on such registrations.
 */
export const PROXY_FLAGS = ['--max-server-inflight', '10000', '--queue-limit', '10000', '--max-servers', '0', '--max-servers-per-peer', '0'];

export interface Server {
  id: string;
  policy: string;
  port: number;
  child: Child;
}

export interface Topology {
  proxy: Child;
  proxyPort: number;
  /** The demo's four servers. */
  servers: Server[];
  /** The servers that work one request at a time; empty when this checkout's servers cannot. */
  slow: Server[];
  /** One frontend per policy (the slow policy's too). */
  haproxy?: { child: Child; ports: Map<string, number>; cleanup(): void };
  /** With a baseline: the targets `proxy` and `baseline`, started afresh each round (`ProxyPair`). */
  pair?: ProxyPair;
  /** bench/bare-relay.mjs: the floor of a Node relay, for reference. */
  relay?: { child: Child; port: number };
}

/** Which servers a workload loads: the demo's (policies 111 and 222), or the ones that work one at a time. */
export type Pool = 'demo' | 'slow';

const policiesOf = (pool: Pool): string[] => (pool === 'demo' ? POLICIES : [SLOW_POLICY]);

/**
 * Where connection i goes. Through a proxy it asks for policy i mod 2 (the
 * slow pool: its one policy). Direct, the demo pool's connections go to their
 * policy's servers in turn; the slow pool's connection i to slow server i mod 4.
 */
export function endpoints(t: Target, topo: Topology, pool: Pool = 'demo'): (i: number) => LoadEndpoint {
  const policies = policiesOf(pool);
  const policyOf = (i: number): string => policies[i % policies.length]!;
  if (topo.pair?.serves(t)) {
    const { port } = topo.pair.running(t);
    return (i) => ({ host: HOST, port, policy: policyOf(i) });
  }
  if (t === 'proxy') return (i) => ({ host: HOST, port: topo.proxyPort, policy: policyOf(i) });
  if (t === 'haproxy') return (i) => ({ host: HOST, port: topo.haproxy!.ports.get(policyOf(i))!, policy: policyOf(i) });
  if (t === 'relay') return (i) => ({ host: HOST, port: topo.relay!.port, policy: policyOf(i) });
  if (pool === 'slow') return (i) => ({ host: HOST, port: topo.slow[i % topo.slow.length]!.port, policy: SLOW_POLICY });
  const byPolicy = new Map(POLICIES.map((p) => [p, topo.servers.filter((s) => s.policy === p)]));
  return (i) => {
    const policy = policyOf(i);
    const group = byPolicy.get(policy)!;
    return { host: HOST, port: group[Math.floor(i / POLICIES.length) % group.length]!.port, policy };
  };
}

/** The process under test for a target: the one whose CPU and memory are watched (none for direct). */
export function watchedPid(t: Target, topo: Topology): number | undefined {
  if (topo.pair?.serves(t)) return topo.pair.running(t).child.pid;
  return t === 'proxy' ? topo.proxy.pid : t === 'haproxy' ? topo.haproxy!.child.pid : t === 'relay' ? topo.relay!.child.pid : undefined;
}

/** The server processes a pool's requests reach. */
export function serverPids(topo: Topology, pool: Pool): number[] {
  return (pool === 'demo' ? topo.servers : topo.slow).map((s) => s.child.pid);
}

async function startServers(list: Array<{ id: string; policy: string }>, proxyPort: number, flags: string[] = []): Promise<Server[]> {
  return Promise.all(
    list.map(async (s) => {
      const port = await freePort();
      const child = spawnRevproxy(`server ${s.id}`, ['server', '--id', s.id, '--pp', s.policy, '--listen', String(port), '--revproc', String(proxyPort), ...flags]);
      await waitForPort(port, child);
      return { ...s, port, child };
    }),
  );
}

export interface TopologyOptions {
  haproxyBin?: string;
  /** Another checkout whose proxy runs as the `baseline` target, with this checkout's as `proxy`: the two a `ProxyPair`. */
  baselineDir?: string;
  /** Which of `proxy` and `baseline` the pair runs (with a baseline). */
  pairTargets?: PairTarget[];
  relay: boolean;
  /** Start the servers that work one request at a time (the checkout's `server` has --concurrency). */
  slow: boolean;
}

export async function startTopology(o: TopologyOptions): Promise<Topology> {
  const proxyPort = await freePort();
  const proxy = spawnRevproxy('proxy', ['proxy', '--port', String(proxyPort), ...PROXY_FLAGS]);
  await waitForPort(proxyPort, proxy);
  const servers = await startServers(SERVERS, proxyPort);
  const slow = o.slow ? await startServers(SLOW_SERVERS, proxyPort, SLOW_FLAGS) : [];
  const all = [...servers, ...slow];
  const policies = [...POLICIES, ...(slow.length ? [SLOW_POLICY] : [])];
  // Registration travels on its own connection: wait until every server answers through the proxy.
  for (const p of policies) await untilServed(proxyPort, p, all.filter((s) => s.policy === p).length);
  let haproxy: Topology['haproxy'];
  if (o.haproxyBin) {
    const ports = new Map<string, number>();
    for (const p of policies) ports.set(p, await freePort());
    const h = startHaproxy(o.haproxyBin, policies.map((p) => ({ policy: p, port: ports.get(p)!, servers: all.filter((s) => s.policy === p) })));
    for (const port of ports.values()) await waitForPort(port, h.child);
    haproxy = { child: h.child, ports, cleanup: h.cleanup };
  }
  const pair = o.baselineDir ? proxyPair(o.baselineDir, all, o.pairTargets ?? ['proxy', 'baseline']) : undefined;
  let relay: Topology['relay'];
  if (o.relay) {
    const port = await freePort();
    const pools = policies.map((p) => `${p}:${all.filter((s) => s.policy === p).map((s) => s.port).join(',')}`);
    const child = spawnChild('bare relay', process.execPath, [fileURLToPath(new URL('../bench/bare-relay.mjs', import.meta.url)), String(port), ...pools]);
    await waitForPort(port, child);
    relay = { child, port };
  }
  return { proxy, proxyPort, servers, slow, haproxy, pair, relay };
}

export interface SideProxy {
  child: Child;
  port: number;
  /** Close the stand-ins' registrations. */
  unregister(): void;
  /** Unregister and stop the process. */
  stop(): Promise<void>;
}

/**
 * A proxy process beside the topology, serving the same servers: stand-ins
 * register each one with it as the server would itself (`standIns`: its id,
 * policy and port; the data path is the same as a server's own registration).
 * It runs with PROXY_FLAGS, those its checkout has (`proxyFlags` instead when
 * given), then `flags`. Resolves once every policy answers.
 */
export async function startSideProxy(name: string, flags: string[], servers: Server[], opts: { bin?: string; output?: string; proxyFlags?: string[] } = {}): Promise<SideProxy> {
  const port = await freePort();
  const child = spawnRevproxy(name, ['proxy', '--port', String(port), ...(opts.proxyFlags ?? supported(PROXY_FLAGS, [opts.bin])), ...flags], opts.bin, opts.output);
  const regs: Array<{ close(): void }> = [];
  const unregister = (): void => regs.forEach((r) => r.close());
  try {
    await waitForPort(port, child);
    regs.push(await standIns(port, servers));
    for (const p of new Set(servers.map((s) => s.policy))) await untilServed(port, p, servers.filter((s) => s.policy === p).length);
  } catch (err) {
    unregister();
    await child.stop();
    throw err;
  }
  return {
    child,
    port,
    unregister,
    async stop() {
      unregister();
      await child.stop();
    },
  };
}

/**
 * The flag-value pairs of `flags` that the proxy of every checkout in `bins`
 * has (undefined: this one, which has them all). An older baseline may lack
 * the newer bounds: a before/after pair runs without them, both its proxies.
 */
export function supported(flags: string[], bins: Array<string | undefined>): string[] {
  const has = bins.filter((b): b is string => b !== undefined).map((b) => revproxyOptions('proxy', b));
  const out: string[] = [];
  for (let i = 0; i < flags.length; i += 2) if (has.every((h) => h.has(flags[i]!))) out.push(flags[i]!, flags[i + 1]!);
  return out;
}

/** Connection i asks for the demo policies in turn, of the proxy on `port`. */
export const demoPolicies = (port: number) => (i: number): LoadEndpoint => ({ host: HOST, port, policy: POLICIES[i % POLICIES.length]! });

/** A short warm-up for a proxy started beside the topology (the topology's targets get one before the first workload). */
export async function warm(endpoint: (i: number) => LoadEndpoint, o: { connections: number; depth: number }): Promise<void> {
  await runLoad({ target: endpoint, connections: o.connections, depth: o.depth, durationMs: 300 });
  await runLoad({ target: endpoint, connections: 1, depth: 1, durationMs: 200 });
}

/** The two targets a before/after run compares. */
export type PairTarget = 'proxy' | 'baseline';

/**
 * A before/after run's two proxies: this checkout's (target `proxy`) and the
 * baseline checkout's (target `baseline`), started alike - as side proxies,
 * stand-ins registering every server as it would itself, with the proxy flags
 * both checkouts have - and afresh for every round, in the order the round
 * measures them (`roundOrder` alternates it), each warmed, before the first
 * of their cells. Two processes of one build differ (by up to a quarter in CPU
 * per request on this machine), and a process keeps its difference for its
 * life: new processes each round draw it again, and the alternation cancels
 * what starting or being measured first does.
 */
export interface ProxyPair {
  /** The pair's targets. */
  readonly targets: PairTarget[];
  /** The proxy flags both run with (PROXY_FLAGS less those a checkout lacks). */
  readonly flags: string[];
  serves(t: Target): t is PairTarget;
  /** Stop the last round's proxies, then start `order`'s, one after the other, each warmed. */
  start(order: PairTarget[], warmLoad: { connections: number; depth: number }): Promise<void>;
  /** The process running now for `t` (after `start`). */
  running(t: PairTarget): { child: Child; port: number };
  /** Stop the proxies running now. */
  stop(): Promise<void>;
}

function proxyPair(baselineDir: string, servers: Server[], targets: PairTarget[]): ProxyPair {
  const bins: Record<PairTarget, string | undefined> = { proxy: undefined, baseline: join(baselineDir, 'cli', 'revproxy.js') };
  const names: Record<PairTarget, string> = { proxy: 'proxy', baseline: 'baseline proxy' };
  const flags = supported(PROXY_FLAGS, targets.map((t) => bins[t]));
  const now = new Map<PairTarget, SideProxy>();
  const stop = async (): Promise<void> => {
    const up = [...now.values()];
    now.clear();
    for (const p of up) await p.stop();
  };
  return {
    targets,
    flags,
    serves: (t): t is PairTarget => (targets as Target[]).includes(t),
    async start(order, warmLoad) {
      await stop();
      for (const t of order) {
        const p = await startSideProxy(names[t], [], servers, { bin: bins[t], proxyFlags: flags });
        now.set(t, p);
        await warm(demoPolicies(p.port), warmLoad);
      }
    },
    running(t) {
      const p = now.get(t);
      if (!p) throw new Error(`the ${names[t]} of this round is not running`);
      return { child: p.child, port: p.port };
    },
    stop,
  };
}

/** Wait until `members` servers answer for `policy` through the proxy on `port` (servers and stand-ins register on connections of their own). */
export async function untilServed(port: number, policy: string, members: number): Promise<void> {
  const until = Date.now() + 15_000;
  while ((await probe(port, policy, 2 * members).catch(() => new Set<string>())).size < members) {
    if (Date.now() > until) throw new Error(`fewer than ${members} servers answered for policy ${policy} on port ${port} within 15 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
