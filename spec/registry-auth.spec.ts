/**
 * The registry with etcd's own protections on (issue 18), each on an etcd of
 * its own (scenario/etcd.ts; auth is etcd-wide): with authentication, the
 * fleet's user, with readwrite on the fleet's prefix only, registers servers
 * and proxies and finds them, while a wrong password or a user without the
 * role is refused by etcd and the proxy says so in words (and is not
 * ready); over TLS with client certificates (throw-away ones from openssl),
 * the fleet works, and a client without a certificate is refused.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, Logger, memorySink, sha1Hex, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { openEtcd, type Etcd3 } from '../registry/etcd.js';
import { resolveRegistry } from '../registry/options.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { eventually, sleep } from './helpers.js';
import { fleetUser } from './etcd-helpers.js';
import { makePki } from './certs.js';
import { revproxy } from './procs.js';
import { readFileSync, rmSync } from 'node:fs';

const ctx: { etcd?: Etcd; root?: Etcd3; proxies: ProxyHandle[]; servers: ServerHandle[] } = { proxies: [], servers: [] };
const PREFIX = '/authed/';
const reg = (username: string, password: string, prefix = PREFIX) => ({ endpoints: [ctx.etcd!.endpoint], prefix, ttlSeconds: 2, username, password, retryInitialMs: 100, retryMaxMs: 500 });

const auth = suite('registry with etcd authentication');
auth.before(async () => {
  ctx.etcd = await startEtcd();
  const admin = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint] }));
  await fleetUser(admin, PREFIX);
  await admin.user('stranger').create('stranger-password-1');
  await admin.auth.authEnable();
  admin.close();
});
auth.after(async () => {
  for (const s of ctx.servers) s.kill();
  for (const p of ctx.proxies) p.kill();
  await ctx.etcd?.remove();
  killEtcds();
});

auth("the fleet's user registers servers and proxies and finds them", async () => {
  const p = await startProxy({ port: 0, registry: reg('fleet', 'fleet-password-1') });
  ctx.proxies.push(p);
  ctx.servers.push(await startServer({ id: 'a', policy: 'P', registry: reg('fleet', 'fleet-password-1') }));
  await eventually(() => p.pools().P?.serving.length === 1 && p.registry()?.advertised === true, 5000, 'served and advertised');
  const c = await connect({ registry: reg('fleet', 'fleet-password-1'), timeoutMs: 3000 });
  assert.is(await c.request('P', 'hi'), sha1Hex('hi'));
  await c.close();
});

auth('a wrong password is refused by etcd: the proxy says so in words, and is not ready', async () => {
  const logs: LogRecord[] = [];
  const p = await startProxy({ port: 0, registry: reg('fleet', 'not-the-password'), logger: new Logger('proxy', memorySink(logs), 'info') });
  ctx.proxies.push(p);
  await eventually(() => p.registry()?.why !== undefined, 5000, 'the registry says why');
  const r = p.registry()!;
  assert.is(r.synced, false);
  assert.match(r.why!, /refused the user name or password/);
  assert.ok(logs.some((l) => l.event === 'registry_down' && /refused the user name or password/.test(l.msg)));
  assert.is(logs.some((l) => JSON.stringify(l).includes('not-the-password')), false, 'the password is never logged');
  // A server with it stops at once, as when a proxy refuses its token.
  const s = await startServer({ id: 'b', policy: 'P', registry: reg('fleet', 'not-the-password') }).then(() => undefined, (e: Error) => e);
  assert.match(String(s?.message), /the registry etcd:\/\/\S+ \(\S+\) refused the registration \(UNAUTHORIZED\): etcd at .* refused the user name or password/);
  assert.not.match(String(s?.message), /reverse proxy at registry/, 'the registry is not called a reverse proxy');
  // A client with it fails as soon as etcd refuses it, not when its timeout (here a minute) is up.
  const c = await Promise.race([
    connect({ registry: reg('fleet', 'not-the-password'), timeoutMs: 60_000 }).then((cl) => (void cl.close(), undefined), (e: Error) => e),
    sleep(10_000).then(() => new Error('still waiting after 10 s')),
  ]);
  assert.match(String(c?.message), /refused the user name or password/);
});

auth('a user without a role on the prefix is denied, and told which prefix', async () => {
  const p = await startProxy({ port: 0, registry: reg('stranger', 'stranger-password-1') });
  ctx.proxies.push(p);
  await eventually(() => p.registry()?.why !== undefined, 5000, 'the registry says why');
  assert.match(p.registry()!.why!, /denied access under \/authed\//);
});

auth.run();

const tls = suite('registry over TLS, with a client certificate (mutual TLS)');
const tctx: { etcd?: Etcd; dir?: string; files?: { ca: string; cert: string; key: string }; proxies: ProxyHandle[]; servers: ServerHandle[] } = { proxies: [], servers: [] };
tls.before(async () => {
  const pki = makePki(['etcd', 'fleet']);
  tctx.dir = pki.dir;
  tctx.etcd = await startEtcd({ tls: { ...pki.cert('etcd'), ca: pki.ca } });
  const f = pki.cert('fleet');
  tctx.files = { ca: pki.ca, cert: f.cert, key: f.key };
  material = { ca: readFileSync(pki.ca), cert: readFileSync(f.cert), key: readFileSync(f.key) };
});
tls.after(async () => {
  for (const s of tctx.servers) s.kill();
  for (const p of tctx.proxies) p.kill();
  await tctx.etcd?.remove();
  if (tctx.dir) rmSync(tctx.dir, { recursive: true, force: true });
  killEtcds();
});
let material: { ca: Buffer; cert: Buffer; key: Buffer };
const treg = (m: { ca?: Buffer; cert?: Buffer; key?: Buffer }) => ({ endpoints: [tctx.etcd!.endpoint], prefix: '/tls/', ttlSeconds: 2, tls: m, retryInitialMs: 100, retryMaxMs: 500 });

tls('with the CA and a client certificate, servers, proxies and clients use the registry over TLS', async () => {
  assert.match(tctx.etcd!.url, /^etcds:\/\//);
  const p = await startProxy({ port: 0, registry: treg(material) });
  tctx.proxies.push(p);
  tctx.servers.push(await startServer({ id: 't', policy: 'P', registry: treg(material) }));
  await eventually(() => p.pools().P?.serving.length === 1 && p.registry()?.advertised === true, 5000, 'served and advertised');
  const c = await connect({ registry: treg(material), timeoutMs: 3000 });
  assert.is(await c.request('P', 'over tls'), sha1Hex('over tls'));
  await c.close();
});

tls('without a client certificate etcd refuses the connection, and the proxy says it cannot reach it', async () => {
  const p = await startProxy({ port: 0, registry: treg({ ca: material.ca }) });
  tctx.proxies.push(p);
  await eventually(() => p.registry()?.why !== undefined, 8000, 'the registry says why');
  assert.is(p.registry()!.synced, false);
});

tls('a client given revproc etcds://... speaks TLS to etcd (as --revproc etcds:// does), trusting the system\'s CAs', async () => {
  // etcd's certificate is signed by a throw-away CA the system does not trust: the client must fail, and say it tried TLS.
  const err = await connect({ revproc: tctx.etcd!.url, timeoutMs: 1000 }).then(() => undefined, (e: Error & { code?: string }) => e);
  assert.is(err?.code, 'CONNECT_FAILED');
  assert.match(String(err?.message), /etcds:\/\//);
});

tls('the proxy given etcds:// with an IP address logs Node\'s DEP0123 warning as a line of its log: with --log-format json every line stays JSON', async () => {
  // grpc-js sets the TLS server name to the address, and Node warns once (grpc/grpc-node#1919).
  // Before, Node printed it raw on stderr, two lines a collector parsing JSON cannot read:
  // `(node:4242) [DEP0123] DeprecationWarning: ...` and its hint to rerun with --trace-deprecation.
  assert.match(tctx.etcd!.url, /^etcds:\/\/127\.0\.0\.1:/);
  const f = tctx.files!;
  const proxy = revproxy(['proxy', '--port', '0', '--log-format', 'json', '--registry', tctx.etcd!.url, '--registry-ca', f.ca, '--registry-cert', f.cert, '--registry-key', f.key]);
  try {
    await proxy.waitFor(/"event":"advertised"/);
    proxy.kill('SIGTERM');
    assert.is(await proxy.exited, 0, proxy.out.join('\n'));
  } finally {
    proxy.kill('SIGKILL');
  }
  const records = proxy.out.filter((line) => line !== '').map((line) => {
    try {
      return JSON.parse(line) as { level: string; event: string; code?: string; name?: string; msg: string };
    } catch {
      throw new Error(`not a JSON line: ${line}\n${proxy.out.join('\n')}`);
    }
  });
  const warned = records.filter((r) => r.event === 'node_warning');
  assert.is(warned.length, 1, proxy.out.join('\n'));
  assert.equal([warned[0]!.level, warned[0]!.name, warned[0]!.code], ['info', 'DeprecationWarning', 'DEP0123']);
  assert.match(warned[0]!.msg, /^Node warning: \[DEP0123\] DeprecationWarning: Setting the TLS ServerName to an IP address/);
});

tls.run();
