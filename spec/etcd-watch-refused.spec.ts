/**
 * A watch etcd refuses as it is made: its user's roles may no longer read what it watches (a role's permission revoked
 * while the proxy runs; etcd checks it at each watch made, not for watches made before). etcd3 makes a stream's watches one
 * at a time and waited forever on a refused one: every watch made after it on the client was never sent, and nothing said
 * so (registry/etcd.ts `refusedWatchesEnd`). On a real etcd (Debian's, started by scenario/etcd.ts on free loopback ports,
 * killed and removed after).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger, memorySink, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { describeEtcdError, openEtcd, type Etcd3 } from '../registry/etcd.js';
import { resolveRegistry } from '../registry/options.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { eventually, sleep } from './helpers.js';
import { fleetUser } from './etcd-helpers.js';

const PREFIX = '/refused/';
const ctx: { etcd?: Etcd; root?: Etcd3; clients: Etcd3[]; proxies: ProxyHandle[]; servers: ServerHandle[] } = { clients: [], proxies: [], servers: [] };
const fleet = { username: 'fleet', password: 'fleet-password-1' };
const reg = () => ({ endpoints: [ctx.etcd!.endpoint], prefix: PREFIX, ttlSeconds: 2, retryInitialMs: 100, retryMaxMs: 500, ...fleet });

const refused = suite('etcd refuses a watch as it is made (its user may no longer read what it watches)');
refused.before(async () => {
  ctx.etcd = await startEtcd();
  const admin = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint] }));
  try {
    await fleetUser(admin, PREFIX);
    await admin.auth.authEnable();
  } finally {
    admin.close();
  }
  ctx.root = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint], username: 'root', password: 'root-password-1' }));
});
refused.after(async () => {
  for (const s of ctx.servers) s.kill();
  for (const p of ctx.proxies) p.kill();
  for (const c of ctx.clients) c.close();
  ctx.root?.close();
  await ctx.etcd?.remove();
  killEtcds();
});

/** The fleet role's permission on `range` (a prefix): given, or taken away. */
async function permission(given: boolean, range: string, permission: 'Read' | 'Readwrite' = 'Readwrite'): Promise<void> {
  const { Range } = await import('etcd3');
  const role = ctx.root!.role('fleet');
  await (given ? role.grant({ permission, range: Range.prefix(range) }) : role.revoke({ permission, range: Range.prefix(range) }));
}

refused('a watch refused for its permission ends alone, in etcd\'s words: a watch made after it on the same client sees the changes', async () => {
  const c = await openEtcd(resolveRegistry(reg()));
  ctx.clients.push(c);
  await permission(true, '/other/', 'Read');
  const first = await c.watch().prefix(`${PREFIX}w/`).create();
  await permission(false, '/other/', 'Read');
  const errors: Error[] = [];
  const denied = c.watch().prefix('/other/').watcher();
  denied.on('error', (err: Error) => errors.push(err));
  const seen: string[] = [];
  const second = c.watch().prefix(`${PREFIX}w/`).watcher();
  second.on('put', (kv) => seen.push(kv.key.toString()));
  await eventually(() => errors.length > 0, 5000, 'the refused watch to be told');
  assert.match(errors[0]!.message, /permission denied/);
  await ctx.root!.put(`${PREFIX}w/b`).value('1');
  await eventually(() => seen.includes(`${PREFIX}w/b`), 5000, 'the watch made after the refused one to see the put');
  // In words, with what to do (what the proxy's registry_down line says of a watch refused alone).
  assert.match(describeEtcdError(errors[0], resolveRegistry(reg())), /refused a watch under \/refused\/ \(etcdserver: permission denied\): .*grant-permission ROLE --prefix=true readwrite \/refused\//);
  await Promise.all([first.cancel(), second.cancel()]);
});

refused('a proxy whose role lost and got back its permission on the prefix says etcd refused it, with what to do, and sees servers again', async () => {
  const logs: LogRecord[] = [];
  const p = await startProxy({ port: 0, registry: reg(), logger: new Logger('proxy', memorySink(logs), 'info') });
  ctx.proxies.push(p);
  const a = await startServer({ id: 'a', policy: 'R', registry: reg() });
  ctx.servers.push(a);
  await eventually(() => p.pools().R?.serving.length === 1 && p.registry()?.advertised === true, 10_000, 'a serving and the proxy advertised');
  await permission(false, PREFIX);
  // The watches are made again on a new stream (etcd restarted): etcd refuses each.
  await ctx.etcd!.stop();
  await ctx.etcd!.start();
  await eventually(() => logs.some((r) => r.event === 'registry_down' && /grant-permission/.test(r.msg)), 10_000, 'the proxy to say etcd refused it, and what to do');
  const said = logs.filter((r) => r.event === 'registry_down').map((r) => r.msg);
  assert.match(said[said.length - 1]!, /^The registry refused this proxy \(.*permission denied.*\).* retrying every 500 ms at most, so a grant takes effect at the next try$/);
  await permission(true, PREFIX);
  await eventually(() => p.registry()?.up === true, 10_000, 'the proxy to read the registry again once the role may');
  const b = await startServer({ id: 'b', policy: 'R', registry: reg() });
  ctx.servers.push(b);
  await eventually(() => p.pools().R?.serving.length === 2, 10_000, `the proxy to see b register (it said: ${said.join(' | ')})`);
});

refused.run();
