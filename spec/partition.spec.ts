/**
 * A real network between the peers: hosts in network namespaces, cut apart
 * silently (every packet dropped both ways: no FIN, no RST), as a partition,
 * a pulled cable or a frozen VM would. On loopback a dead peer always answers
 * at once; here it does not. Needs root, iproute2 and nftables (CI has them).
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { killEtcds, startEtcd, startEtcdCluster, type Etcd, type EtcdCluster, type EtcdMember } from '../scenario/etcd.js';
import { eventually } from './helpers.js';
import { cannotMakeHosts, twoHosts, type Host, type Link } from './netns.js';
import { killAll, type Proc } from './procs.js';

const cut = suite('a silent cut between hosts');
let link: Link | undefined;
let etcd: Etcd | undefined;
let cluster: EtcdCluster | undefined;
cut.before(() => {
  const why = cannotMakeHosts();
  if (why) throw new Error(`this spec runs hosts in network namespaces: ${why}`);
});
cut.after.each(async () => {
  killAll();
  await etcd?.remove();
  await cluster?.remove();
  killEtcds();
  etcd = undefined;
  cluster = undefined;
  link?.remove();
  link = undefined;
});

/** `revproxy load` from `host`, its --json report. */
async function load(host: Host, args: string[]): Promise<{ ok: number; errors: Record<string, number> }> {
  const p: Proc = host.revproxy(['load', '--no-progress', '--json', ...args]);
  await p.exited;
  const line = p.out.find((l) => l.startsWith('{'));
  if (!line) throw new Error(`revproxy load printed no report:\n${p.out.join('\n')}`);
  return JSON.parse(line) as { ok: number; errors: Record<string, number> };
}

cut('a server cut off from its proxy long enough to be removed registers again once the cut heals', async () => {
  // The proxy's side forgets its closed sockets within a second (as after a cut of two minutes or more):
  // no late FIN reaches the server when the cut heals.
  link = twoHosts({ orphanRetries: 1 });
  const { a, b } = link;
  const proxy = a.revproxy(['proxy', '--host', a.addr, '--port', '2100', '--ping-interval', '200']);
  await proxy.waitFor(/Running the reverse proxy on port 2100/);
  const server = b.revproxy(['server', '--id', 'n1', '--pp', 'P', '--host', b.addr, '--revproc', `${a.addr}:2100`, '--tcp-keepalive', '1000']);
  await server.waitFor(/Registered with the reverse proxy/);

  link.cut();
  await proxy.waitFor(/Server id n1 left privacy policy P: it missed 3 PINGs/);
  await eventually(() => a.socketsTo(b).length === 0, 10000, 'the proxy host to forget its connections to the server');
  link.heal();

  // The server's registration looks open on its side; only probes of its own find the proxy forgot it.
  await server.waitFor(/Registered again with the reverse proxy/);
  // The proxy's line comes on its own pipe, which may be read after the server's.
  const setups = (): number => proxy.out.filter((l) => l.includes('Received setup message from server id n1 ')).length;
  await eventually(() => setups() >= 2, 5000, 'the proxy to log the second registration');
  assert.is(setups(), 2, proxy.out.join('\n'));
});

cut('servers cut off from etcd while the proxy reaches them stay in rotation; their link failing removes them; their key deleted on purpose takes them out until they write it again, at once', async () => {
  link = twoHosts();
  const { a, b } = link;
  etcd = await startEtcd({ host: { ns: a.ns, addr: a.addr } });
  const reg = ['--registry', etcd.url, '--registry-ttl', '2'];
  const proxy = a.revproxy(['proxy', '--host', a.addr, '--port', '2100', ...reg]);
  await proxy.waitFor(/Running the reverse proxy on port 2100/);
  const servers = ['n1', 'n2'].map((id) => b.revproxy(['server', '--id', id, '--pp', 'P', '--host', b.addr, ...reg]));
  for (const s of servers) await s.waitFor(/Registered/);
  const said = (re: RegExp): boolean => proxy.out.some((l) => re.test(l));
  const ask = (): ReturnType<typeof load> => load(a, ['--revproc', `${a.addr}:2100`, '--policy', 'P', '-n', '200', '-c', '2', '-p', '4']);
  await eventually(() => said(/Server id n1 privacy policy P port \d+ is in the registry/) && said(/Server id n2 privacy policy P port \d+ is in the registry/), 10000, 'the proxy to read both servers');
  // Each joins once its link answers: until one has, requests wait or are refused.
  for (let i = 0; i < 20 && (await ask()).ok !== 200; i++);
  assert.is((await ask()).ok, 200);

  // The servers' host loses etcd, not the proxy: their leases end and etcd deletes their keys.
  link.cut({ port: Number(etcd.endpoint.split(':')[1]) });
  const gone = (id: string) => new RegExp(`Server id ${id} (of privacy policy P is gone from the registry|left privacy policy P)`);
  await eventually(() => said(gone('n1')) && said(gone('n2')), 15000, 'the proxy to hear both keys deleted');
  const during = await ask();
  assert.equal(during.errors, {}, proxy.out.join('\n'));
  assert.is(during.ok, 200);

  // A kept server whose link fails leaves, and is not probed back.
  servers[1]!.kill('SIGKILL');
  await eventually(() => said(/Server id n2 left privacy policy P: its link failed/), 10000, 'n2 to leave once its link failed');

  // The cut heals: n1 writes its key again and is listed. An operator's delete (its lease alive) takes it out,
  // unless n1's own write comes first (the proxy asks etcd for the deleted key's lease before it acts), and n1
  // writes its key again at once and serves (before, it stayed out until it restarted).
  link.heal();
  await eventually(() => said(/Server id n1 privacy policy P is in the registry again/), 15000, 'n1 listed again');
  execFileSync('ip', ['netns', 'exec', a.ns, 'etcdctl', '--endpoints', etcd.endpoint, 'del', '/revproxy/servers/n1']);
  await servers[0]!.waitFor(/This server's registry key \/revproxy\/servers\/n1 was deleted while its lease was alive .* written again/);
  for (let i = 0; i < 20 && (await ask()).ok !== 200; i++);
  assert.is((await ask()).ok, 200, 'n1 serving again');
});

cut("a library client's connection cut without a word (a NAT forgot its flow) before the keepalive probes find it: the first request sent into it is PINGed for, and answered on a new connection within its timeout", async () => {
  // Before, the client sent it into the dead flow and heard nothing: CLIENT_TIMEOUT after its whole
  // 5 s, unless TCP keepalive (about 25 s after the last traffic) had found the flow dead first.
  link = twoHosts();
  const { a, b } = link;
  const proxy = a.revproxy(['proxy', '--host', a.addr, '--port', '2100']);
  await proxy.waitFor(/Running the reverse proxy on port 2100/);
  const server = a.revproxy(['server', '--id', 's1', '--pp', 'P', '--host', a.addr, '--revproc', `${a.addr}:2100`]);
  await server.waitFor(/Registered with the reverse proxy/);
  const client = b.tsx(fileURLToPath(new URL('fixtures/cut-client.ts', import.meta.url)), [`${a.addr}:2100`, 'P']);
  const [, port] = await client.waitFor(/^ready (\d+)$/, 20_000);
  // That flow alone: a new connection from another port goes through, as through a NAT that forgot one.
  link.cut({ flow: Number(port) });
  client.kill('SIGUSR2');
  const [line, outcome] = await client.waitFor(/^outcome (\S+) \d+$/, 15_000);
  assert.is(outcome, 'ok', `${line}\n${client.out.join('\n')}`);
});

/** `spec/fixtures/mirror.ts` on `host`: `count` PrefixMirrors of `prefix`, each on an etcd client of its own, printing what they are told. */
function mirrors(host: Host, endpoints: string[], prefix: string, count = 1): Proc {
  return host.tsx(fileURLToPath(new URL('fixtures/mirror.ts', import.meta.url)), [endpoints.join(','), prefix, String(count)]);
}

/** Three etcd members, two on host a and one on host b, and the three as members. */
async function splitCluster(l: Link): Promise<[EtcdMember, EtcdMember, EtcdMember]> {
  cluster = await startEtcdCluster(3, { hosts: [l.a, l.a, l.b] });
  return cluster.members as [EtcdMember, EtcdMember, EtcdMember];
}

const clientPort = (m: EtcdMember): number => Number(m.endpoint.split(':')[1]);

cut('etcd members out of reach of a host (its packets to them dropped) while one is not: a watch made on one out of reach is made again on another, so every mirror follows changes', async () => {
  link = twoHosts();
  const { a, b } = link;
  const [m1, m2] = await splitCluster(link);
  // Host b reaches only its own member; a stream to another never connects, and never fails either.
  link.cut({ ports: [clientPort(m1), clientPort(m2)] });
  // Each etcd client picks a member at random for its watch: with six, some pick one out of reach.
  const COUNT = 6;
  const m = mirrors(b, cluster!.endpoints, '/revproxy/proxies/', COUNT);
  for (let i = 0; i < COUNT; i++) await m.waitFor(new RegExp(`^${i} synced start 0$`), 30_000);
  a.revproxy(['proxy', '--host', a.addr, '--port', '2100', '--registry', cluster!.url, '--registry-ttl', '2']);
  for (let i = 0; i < COUNT; i++) await m.waitFor(new RegExp(`^${i} put 10\\.201\\.0\\.1:2100$`), 20_000);
});

cut('an etcd member cut off from the other two: a watch on it ends, and the mirror follows the majority again (a proxy that joins meanwhile is seen)', async () => {
  link = twoHosts();
  const { a, b } = link;
  const [m1, m2, m3] = await splitCluster(link);
  const reg = ['--registry', cluster!.url, '--registry-ttl', '2'];
  // At first host b reaches only its own member, so the mirror's watch can only be on it.
  link.cut({ ports: [clientPort(m1), clientPort(m2)] });
  const m = mirrors(b, cluster!.endpoints, '/revproxy/proxies/');
  await m.waitFor(/^0 synced start 0$/, 30_000);
  // A key written on host a and told after the mirror's last read came through the watch, which is then on
  // the member of host b: until one is (a watch may first go to a member out of reach, and be made again).
  const last = (re: RegExp): number => m.out.map((l) => re.test(l)).lastIndexOf(true);
  const put = (key: string): string => execFileSync('ip', ['netns', 'exec', a.ns, 'etcdctl', '--endpoints', m1.endpoint, 'put', key, 'x'], { encoding: 'utf8' });
  for (let i = 0; ; i++) {
    put(`/revproxy/proxies/probe-${i}`);
    await m.waitFor(new RegExp(`^0 put probe-${i}$`), 20_000);
    if (last(new RegExp(`^0 put probe-${i}$`)) > last(/^0 synced /)) break;
    assert.ok(i < 20, `the mirror's watch never settled on the member it reaches:\n${m.out.join('\n')}`);
  }

  // That member is cut off from the other two (their raft traffic dropped); host b reaches all three.
  link.heal();
  link.cut({ ports: [m1.peerPort, m2.peerPort, m3.peerPort] });
  const late = a.revproxy(['proxy', '--host', a.addr, '--port', '2200', ...reg]);
  await late.waitFor(/Advertised this proxy in the registry/, 20_000);
  // The member has no leader and its watch no more events: it must end the watch, and the mirror read the majority.
  await m.waitFor(/^0 put 10\.201\.0\.1:2200$/, 20_000);
});

cut('a proxy given only the etcd member that is cut off from the other two: it says that member has no leader', async () => {
  link = twoHosts();
  const { b } = link;
  const [m1, m2, m3] = await splitCluster(link);
  link.cut({ ports: [m1.peerPort, m2.peerPort, m3.peerPort] });
  const status = (): string => {
    try {
      return execFileSync('ip', ['netns', 'exec', b.ns, 'etcdctl', '--endpoints', m3.endpoint, 'endpoint', 'status'], { encoding: 'utf8' });
    } catch (err) {
      return String(err);
    }
  };
  await eventually(() => /no leader/.test(status()), 20_000, 'the cut-off member to know it has no leader');
  // Its own member only, as a host that talks to the etcd member beside it.
  const proxy = b.revproxy(['proxy', '--host', b.addr, '--port', '2100', '--registry', `etcd://${m3.endpoint}`, '--registry-ttl', '2']);
  // Not "did not answer within 2000 ms": every call asks etcd to require a leader, and the member refuses it at once.
  const [line] = await proxy.waitFor(/Cannot read the registry yet \(.*\)/, 20_000);
  assert.match(line, /has no leader/, proxy.out.join('\n'));
});

cut.run();
