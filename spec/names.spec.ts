/**
 * Peers given by name, as in production (`--revproc proxy.internal:2100`, a server's `--host`,
 * `--registry etcd://etcd-1.internal:2379`): real processes, each reading an /etc/hosts of the
 * spec's own (spec/hosts.ts), rewritten mid-run as DNS changes when a pod is replaced or the
 * resolver fails. Loopback addresses 127.0.0.2, 127.0.0.3 ... stand for hosts of their own.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../bench/procs.js';
import { cannotMakeHosts, hostNames, type Names } from './hosts.js';
import { killAll } from './procs.js';

const names = suite('peers given by name');
let hosts: Names | undefined;
names.before(() => {
  const why = cannotMakeHosts();
  if (why) throw new Error(`this spec gives processes an /etc/hosts of their own: ${why}`);
});
names.after.each(() => {
  killAll();
  hosts?.remove();
  hosts = undefined;
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
  assert.ok(client.out.some((l) => /CONNECT_FAILED: the name proxy\.test does not resolve to an address on this machine \(ENOTFOUND\)/.test(l)), client.out.join('\n'));
  noStack(client.out);
  const load = hosts.revproxy(['load', '--revproc', `proxy.test:${port}`, '-n', '1', '--no-progress']);
  assert.is(await load.exited, 1, load.out.join('\n'));
  assert.ok(load.out.some((l) => /CONNECT_FAILED .*the name proxy\.test does not resolve .*; or give the proxy's address with --revproc HOST:PORT/.test(l)), load.out.join('\n'));
  noStack(load.out);

  // The name appears (DNS is back, the record was added): the next retry finds it.
  const proxy = hosts.revproxy(['proxy', '--port', String(port)]);
  await proxy.waitFor(/Running the reverse proxy on port/);
  hosts.set({ 'proxy.test': ['127.0.0.1'] });
  await server.waitFor(/Registered with the reverse proxy at proxy\.test:\d+/);
  noStack(server.out);
});

names.run();
