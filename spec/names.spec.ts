/**
 * Peers given by name, as in production (`--revproc proxy.internal:2100`, a server's `--host`,
 * `--registry etcd://etcd-1.internal:2379`): real processes, each reading an /etc/hosts of the
 * spec's own (spec/hosts.ts), rewritten mid-run as DNS changes when a pod is replaced or the
 * resolver fails. Loopback addresses 127.0.0.2, 127.0.0.3 ... stand for hosts of their own.
 */
import { createSocket } from 'node:dgram';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../bench/procs.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { cannotMakeHosts, hostNames, type Names } from './hosts.js';
import { killAll, ROOT } from './procs.js';
import { join } from 'node:path';

const names = suite('peers given by name');
let hosts: Names | undefined;
let etcd: Etcd | undefined;
names.before(() => {
  const why = cannotMakeHosts();
  if (why) throw new Error(`this spec gives processes an /etc/hosts of their own: ${why}`);
});
names.after.each(async () => {
  killAll();
  hosts?.remove();
  hosts = undefined;
  await etcd?.remove();
  killEtcds();
  etcd = undefined;
});

/** Every line of a process's output is a log line: no stack trace, no uncaught error. */
function noStack(out: string[]): void {
  const trace = out.filter((l) => /^\s+at |Uncaught|node:internal/.test(l));
  assert.equal(trace, [], out.join('\n'));
}

names('a proxy name that does not resolve: the server says so, keeps trying, and registers once it does; the client and load say so', async () => {
  hosts = hostNames();
  const port = await freePort();
  const server = hosts.revproxy(['server', '--id', 'n1', '--pp', 'P', '--revproc', `proxy.test:${port}`]);
  await server.waitFor(/Not registered with the reverse proxy at proxy\.test:\d+: the name proxy\.test does not resolve to an address on this machine \(ENOTFOUND\): check the name, and that its DNS or \/etc\/hosts lists it; retrying in \d+ ms/);

  const client = hosts.revproxy(['client', '--revproc', `proxy.test:${port}`, '--pkt', 'pktfiles/1.json']);
  assert.is(await client.exited, 1, client.out.join('\n'));
  assert.ok(client.out.some((l) => /CONNECT_FAILED \(retryable\): the name proxy\.test does not resolve to an address on this machine \(ENOTFOUND\)/.test(l)), client.out.join('\n'));
  noStack(client.out);
  const load = hosts.revproxy(['load', '--revproc', `proxy.test:${port}`, '-n', '1', '--no-progress']);
  assert.is(await load.exited, 1, load.out.join('\n'));
  assert.ok(load.out.some((l) => /CONNECT_FAILED .*the name proxy\.test does not resolve .*; or give the proxy's address with --revproc HOST:PORT/.test(l)), load.out.join('\n'));
  noStack(load.out);

  // The name appears (DNS is back, the record was added): the next retry finds it. The proxy comes up on
  // the port chosen long before, at an address of its own: there no outgoing connection's local port
  // (from 127.0.0.1) can have taken the port meanwhile.
  const proxy = hosts.revproxy(['proxy', '--host', '127.0.0.2', '--port', String(port)]);
  await proxy.waitFor(/Running the reverse proxy on port/);
  hosts.set({ 'proxy.test': ['127.0.0.2'] });
  await server.waitFor(/Registered with the reverse proxy at proxy\.test:\d+/);
  noStack(server.out);
});

names('a proxy replaced at another address under its name: the server registers with the new one, and clients reach it', async () => {
  hosts = hostNames({ 'proxy.test': ['127.0.0.2'] });
  const old = hosts.revproxy(['proxy', '--host', '127.0.0.2', '--port', '0']);
  const port = (await old.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  const server = hosts.revproxy(['server', '--id', 'n1', '--pp', '111', '--revproc', `proxy.test:${port}`]);
  await server.waitFor(/Registered with the reverse proxy at proxy\.test/);
  // The pod is replaced: the old one goes, the new one comes up elsewhere, the record follows.
  old.kill();
  await old.exited;
  const replaced = hosts.revproxy(['proxy', '--host', '127.0.0.3', '--port', port]);
  await replaced.waitFor(/Running the reverse proxy on port/);
  hosts.set({ 'proxy.test': ['127.0.0.3'] });
  await server.waitFor(/Registered again with the reverse proxy at proxy\.test/);
  await replaced.waitFor(/Received setup message from server id n1 /);
  const client = hosts.revproxy(['client', '--revproc', `proxy.test:${port}`, '--pkt', 'pktfiles/1.json']);
  assert.is(await client.exited, 0, client.out.join('\n'));
});

/**
 * A DNS server that never answers (as a first nameserver that is down), on 127.0.0.153:53, for
 * the length of `run`: with `hostNames(..., SLOW_DNS)` each lookup waits out its 3 s, then reads the file.
 */
async function withSilentDns(run: () => Promise<void>): Promise<void> {
  const dns = createSocket('udp4');
  await new Promise<void>((resolve, reject) => dns.once('error', reject).bind(53, '127.0.0.153', resolve));
  try {
    await run();
  } finally {
    dns.close();
  }
}
const SLOW_DNS = { dns: '127.0.0.153', dnsTimeoutS: 3 };

names('a resolver that takes seconds to answer: the server still registers and the client connects, the connection timed from the lookup', async () => {
  await withSilentDns(async () => {
    hosts = hostNames({ 'proxy.test': ['127.0.0.1'] }, SLOW_DNS);
    const proxy = hosts.revproxy(['proxy', '--port', '0']);
    const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
    const server = hosts.revproxy(['server', '--id', 'n1', '--pp', '111', '--revproc', `proxy.test:${port}`]);
    // Before, each dial was given up 2 s in, the lookup not done yet: 'no answer from proxy.test ... is the host up', for ever.
    await server.waitFor(/Registered with the reverse proxy at proxy\.test/, 20000);
    assert.not.ok(server.out.some((l) => l.includes('no answer from')), server.out.join('\n'));
    const client = hosts.revproxy(['client', '--revproc', `proxy.test:${port}`, '--pkt', 'pktfiles/1.json', '--timeout', '20000']);
    assert.is(await client.exited, 0, client.out.join('\n'));
  });
});

names('a proxy whose resolver takes seconds reaches a registry server by name: its link is timed from the lookup', async () => {
  etcd = await startEtcd();
  hosts = hostNames();
  await withSilentDns(async () => {
    const proxyHosts = hostNames({ 'server.test': ['127.0.0.1'] }, SLOW_DNS);
    try {
      const proxy = proxyHosts.revproxy(['proxy', '--port', '0', '--registry', etcd!.url, '--log-level', 'debug']);
      hosts!.revproxy(['server', '--id', 'n1', '--pp', '111', '--advertise', 'server.test', '--registry', etcd!.url]);
      await proxy.waitFor(/Server id n1 privacy policy 111 port \d+ is in the registry \(server\.test\)/);
      await proxy.waitFor(/Server id n1 is reachable and serving privacy policy 111/, 20000);
      // Before, the link was given up a try timeout (1666 ms) in, its lookup not done: 'unreachable ... (connect timed out)', at every probe.
      const client = hosts!.revproxy(['client', '--revproc', etcd!.url, '--pkt', 'pktfiles/1.json', '--timeout', '20000']);
      assert.is(await client.exited, 0, `${client.out.join('\n')}\n${proxy.out.join('\n')}`);
      assert.not.ok(proxy.out.some((l) => l.includes('connect timed out')), proxy.out.join('\n'));
    } finally {
      proxyHosts.remove();
    }
  });
});

names('a server whose --host is a name registers from the address it resolved to, so the proxy reaches it there; one whose proxy has no address of its family says so', async () => {
  hosts = hostNames({ 'server.test': ['127.0.0.3'], 'proxy.test': ['127.0.0.1'], 'server6.test': ['::1'] });
  const proxy = hosts.revproxy(['proxy', '--port', '0']);
  const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  // Left to the kernel, a registration to 127.0.0.1 left from 127.0.0.1, and the proxy dialled the server back there,
  // where it did not listen: now it leaves from 127.0.0.3, the address server.test resolved to.
  const server = hosts.revproxy(['server', '--id', 'n1', '--pp', '111', '--host', 'server.test', '--revproc', `proxy.test:${port}`]);
  await server.waitFor(/Registered with the reverse proxy at proxy\.test/);
  await proxy.waitFor(/Received setup message from server id n1 /);
  const answers = hosts.revproxy(['client', '--id', 'c1', '--revproc', `proxy.test:${port}`, '--pkt', join(ROOT, 'pktfiles', '1.json')]);
  assert.is(await answers.exited, 0, answers.out.join('\n'));
  assert.not.ok(server.out.some((l) => l.includes('cannot reach this server')), server.out.join('\n'));
  // Listening on ::1 and given a proxy with IPv4 addresses only: it cannot register from where it listens, and says so.
  const v6 = hosts.revproxy(['server', '--id', 'n2', '--pp', 'P', '--host', 'server6.test', '--revproc', `proxy.test:${port}`]);
  await v6.waitFor(/Not registered with the reverse proxy at proxy\.test:\d+: proxy\.test has no IPv6 address \(it resolves to 127\.0\.0\.1\), and this server listens on ::1, an IPv6 address: the proxy dials a server back at the address its registration comes from/);
});

names('a proxy name with several addresses is one proxy to a server: it registers with the first that answers, and says the others get none', async () => {
  hosts = hostNames({ 'proxies.test': ['127.0.0.2', '127.0.0.3'], 'dual.test': ['127.0.0.2', '::1'] });
  const a = hosts.revproxy(['proxy', '--host', '127.0.0.2', '--port', '0']);
  const port = (await a.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  const b = hosts.revproxy(['proxy', '--host', '127.0.0.3', '--port', port]);
  await b.waitFor(/Running the reverse proxy on port/);
  const server = hosts.revproxy(['server', '--id', 'n1', '--pp', 'P', '--host', '0.0.0.0', '--revproc', `proxies.test:${port}`]);
  await server.waitFor(/warning: The reverse proxy at proxies\.test:\d+ may be several: proxies\.test resolves to 2 addresses \(127\.0\.0\.2, 127\.0\.0\.3\) and this server registered with the first that answered \(127\.0\.0\.2\) only: .*list every proxy in --revproc/);
  await a.waitFor(/Received setup message from server id n1 /);
  assert.not.ok(b.out.some((l) => l.includes('server id n1 ')), b.out.join('\n'));
  // One address of each family is one host reached either way (localhost as ::1 and 127.0.0.1): nothing to say.
  const dual = hosts.revproxy(['server', '--id', 'n2', '--pp', 'P', '--host', '0.0.0.0', '--revproc', `dual.test:${port}`]);
  await dual.waitFor(/Registered with the reverse proxy at dual\.test/);
  assert.not.ok(dual.out.some((l) => l.includes('may be several')), dual.out.join('\n'));
});

names('through the registry, etcd is found by name and a server advertised by name is resolved on the proxy\'s machine, each dial', async () => {
  etcd = await startEtcd();
  const registry = `etcd://etcd.test:${etcd.endpoint.split(':').pop()}`;
  // The server's machine knows its own name; the proxy's does not, at first.
  hosts = hostNames({ 'etcd.test': ['127.0.0.1'], 'server.test': ['127.0.0.1'] });
  const proxyHosts = hostNames({ 'etcd.test': ['127.0.0.1'] });
  try {
    const proxy = proxyHosts.revproxy(['proxy', '--port', '0', '--registry', registry]);
    const server = hosts.revproxy(['server', '--id', 'n1', '--pp', '111', '--host', 'server.test', '--registry', registry]);
    await server.waitFor(/Registered in the registry etcd:\/\/etcd\.test/);
    await proxy.waitFor(/Server id n1 is unreachable at server\.test:\d+ \(the name server\.test does not resolve to an address on this machine \(ENOTFOUND\).*\); out of rotation, next probe in/);
    proxyHosts.set({ 'etcd.test': ['127.0.0.1'], 'server.test': ['127.0.0.1'] });
    await proxy.waitFor(/Server id n1 answers again; back in rotation for privacy policy 111/);
    const client = hosts.revproxy(['client', '--revproc', registry, '--pkt', 'pktfiles/1.json']);
    assert.is(await client.exited, 0, client.out.join('\n'));
    noStack(proxy.out);
  } finally {
    proxyHosts.remove();
  }
});

names('an etcd name that does not resolve: the proxy, the server and the client say so in words and name it', async () => {
  hosts = hostNames();
  const registry = `etcd://etcd.test:${await freePort()}`;
  const said = /etcd at etcd:\/\/etcd\.test:\d+ cannot be reached: the name etcd\.test does not resolve to an address on this machine, or its DNS server did not answer \(.*\): check the name in --registry/;
  const proxy = hosts.revproxy(['proxy', '--port', '0', '--registry', registry]);
  const server = hosts.revproxy(['server', '--id', 'n1', '--pp', 'P', '--registry', registry]);
  // Its wait (--timeout) longer than the first read's failure can take (the call timeout, 2 s): under load a name's
  // failure took over 1 s, and the client said only that etcd did not answer within its wait.
  const client = hosts.revproxy(['client', '--revproc', registry, '--pkt', 'pktfiles/1.json', '--timeout', '3000']);
  assert.is(await client.exited, 1, client.out.join('\n'));
  assert.ok(client.out.some((l) => said.test(l)), client.out.join('\n'));
  await proxy.waitFor(/Cannot read the registry yet \(etcd at etcd:\/\/etcd\.test:\d+ cannot be reached: the name etcd\.test does not resolve/);
  await server.waitFor(/Not registered in the registry .*: etcd at etcd:\/\/etcd\.test:\d+ cannot be reached: the name etcd\.test does not resolve/);
  for (const p of [proxy, server, client]) noStack(p.out);
});

names.run();
