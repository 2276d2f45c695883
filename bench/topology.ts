/**
 * The bench's topology: the proxy and four servers as processes, HAProxy,
 * a baseline proxy and the bare relay beside them, and where each target's
 * connections go.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LoadEndpoint } from './loadgen.js';
import { freePort, HOST, probe, spawnChild, spawnRevproxy, startHaproxy, waitForPort, type Child } from './procs.js';
import { registerMany } from './stub.js';
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
 * The proxy's own limits are sized for the many-connections workload (one
 * request in flight on each of 10,000 connections, over two servers per
 * policy); its defaults would answer part of them OVERLOADED by design.
 */
export const PROXY_FLAGS = ['--max-server-inflight', '10000', '--queue-limit', '10000'];
export interface Topology {
  proxy: Child;
  proxyPort: number;
  servers: Array<{ id: string; policy: string; port: number; child: Child }>;
  haproxy?: { child: Child; ports: Map<string, number>; cleanup(): void };
  baseline?: { child: Child; port: number; close(): void };
  /** bench/bare-relay.mjs: the floor of a Node relay, for reference. */
  relay?: { child: Child; port: number };
}

/** Connection i asks for policy i mod 2; direct, it goes to that policy's servers in turn. */
export function endpoints(t: Target, topo: Topology): (i: number) => LoadEndpoint {
  const policyOf = (i: number): string => POLICIES[i % POLICIES.length]!;
  if (t === 'proxy') return (i) => ({ host: HOST, port: topo.proxyPort, policy: policyOf(i) });
  if (t === 'haproxy') return (i) => ({ host: HOST, port: topo.haproxy!.ports.get(policyOf(i))!, policy: policyOf(i) });
  if (t === 'baseline') return (i) => ({ host: HOST, port: topo.baseline!.port, policy: policyOf(i) });
  if (t === 'relay') return (i) => ({ host: HOST, port: topo.relay!.port, policy: policyOf(i) });
  const byPolicy = new Map(POLICIES.map((p) => [p, topo.servers.filter((s) => s.policy === p)]));
  return (i) => {
    const policy = policyOf(i);
    const group = byPolicy.get(policy)!;
    return { host: HOST, port: group[Math.floor(i / POLICIES.length) % group.length]!.port, policy };
  };
}

export async function startTopology(haproxyBin: string | undefined, baselineDir?: string, withRelay = false): Promise<Topology> {
  const proxyPort = await freePort();
  const proxy = spawnRevproxy('proxy', ['proxy', '--port', String(proxyPort), ...PROXY_FLAGS]);
  await waitForPort(proxyPort, proxy);
  const servers = await Promise.all(
    SERVERS.map(async (s) => {
      const port = await freePort();
      const child = spawnRevproxy(`server ${s.id}`, ['server', '--id', s.id, '--pp', s.policy, '--listen', String(port), '--revproc', String(proxyPort)]);
      await waitForPort(port, child);
      return { ...s, port, child };
    }),
  );
  // Registration travels on its own connection: wait until every server answers through the proxy.
  for (const p of POLICIES) {
    const want = servers.filter((s) => s.policy === p).map((s) => s.id);
    const until = Date.now() + 10000;
    for (;;) {
      const seen = await probe(proxyPort, p, want.length * 2).catch(() => new Set<string>());
      if (want.every((id) => seen.has(id))) break;
      if (Date.now() > until) throw new Error(`servers ${want.join(', ')} did not all register for policy ${p}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  let haproxy: Topology['haproxy'];
  if (haproxyBin) {
    const ports = new Map<string, number>();
    for (const p of POLICIES) ports.set(p, await freePort());
    const h = startHaproxy(
      haproxyBin,
      POLICIES.map((p) => ({ policy: p, port: ports.get(p)!, servers: servers.filter((s) => s.policy === p) })),
    );
    for (const port of ports.values()) await waitForPort(port, h.child);
    haproxy = { child: h.child, ports, cleanup: h.cleanup };
  }
  let baseline: Topology['baseline'];
  if (baselineDir) {
    // The same servers, registered with the baseline proxy by stand-ins that point at their ports.
    const port = await freePort();
    const child = spawnRevproxy('baseline proxy', ['proxy', '--port', String(port), ...PROXY_FLAGS], join(baselineDir, 'cli', 'revproxy.js'));
    await waitForPort(port, child);
    const regs = await Promise.all(servers.map((s) => registerMany(port, s.policy, [s.port], 1, `base${s.id}`)));
    for (const p of POLICIES) await probe(port, p, 4);
    baseline = { child, port, close: () => regs.forEach((r) => r.close()) };
  }
  let relay: Topology['relay'];
  if (withRelay) {
    const port = await freePort();
    const pools = POLICIES.map((p) => `${p}:${servers.filter((s) => s.policy === p).map((s) => s.port).join(',')}`);
    const child = spawnChild('bare relay', process.execPath, [fileURLToPath(new URL('../bench/bare-relay.mjs', import.meta.url)), String(port), ...pools]);
    await waitForPort(port, child);
    relay = { child, port };
  }
  return { proxy, proxyPort, servers, haproxy, baseline, relay };
}
/** The process under test for a target: the one whose CPU and memory are watched (none for direct). */
export function watchedPid(t: Target, topo: Topology): number | undefined {
  return t === 'proxy' ? topo.proxy.pid : t === 'haproxy' ? topo.haproxy!.child.pid : t === 'baseline' ? topo.baseline!.child.pid : t === 'relay' ? topo.relay!.child.pid : undefined;
}

/** Wait until `members` servers answer for `policy` through the proxy on `port` (stand-ins register on connections of their own). */
export async function untilServed(port: number, policy: string, members: number): Promise<void> {
  const until = Date.now() + 10_000;
  while ((await probe(port, policy, 2 * members).catch(() => new Set<string>())).size < members) {
    if (Date.now() > until) throw new Error(`fewer than ${members} servers answered for policy ${policy} on port ${port} within 10 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

