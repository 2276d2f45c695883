/**
 * etcd's simple token past its TTL (`--auth-token-ttl`, here 3 s): etcd drops a token that no checked request used for
 * that long, and a member drops them all when it restarts. A watch or a lease keepalive does not use it, so a quiet
 * proxy or server holds a dead one after a TTL. etcd3 asks for a new token when a unary call is refused
 * (EtcdInvalidAuthTokenError), but not for a stream: a watch made again with the dead token is cancelled by etcd
 * ("etcdserver: invalid auth token"), every watch after it on that stream too (etcd checks the token the stream
 * opened with), and nothing asked for a new one. On a real etcd (Debian's, started by scenario/etcd.ts on free
 * loopback ports, killed and removed after).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger, memorySink, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { openEtcd, type Etcd3 } from '../registry/etcd.js';
import { serverKey } from '../registry/keys.js';
import { resolveRegistry } from '../registry/options.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { eventually, sleep } from './helpers.js';
import { fleetUser } from './etcd-helpers.js';

const TOKEN_TTL_S = 3;
const PREFIX = '/token/';
const ctx: { etcd?: Etcd; clients: Etcd3[]; proxies: ProxyHandle[]; servers: ServerHandle[] } = { clients: [], proxies: [], servers: [] };
const fleet = { username: 'fleet', password: 'fleet-password-1' };
const reg = () => ({ endpoints: [ctx.etcd!.endpoint], prefix: PREFIX, ttlSeconds: 2, retryInitialMs: 100, retryMaxMs: 500, ...fleet });

const token = suite('etcd authentication: a token etcd dropped (its TTL passed unused, or the member restarted)');
token.before(async () => {
  ctx.etcd = await startEtcd({ args: ['--auth-token-ttl', String(TOKEN_TTL_S)] });
  const root = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint] }));
  try {
    await fleetUser(root, PREFIX);
    await root.auth.authEnable();
  } finally {
    root.close();
  }
});
token.after(async () => {
  for (const s of ctx.servers) s.kill();
  for (const p of ctx.proxies) p.kill();
  for (const c of ctx.clients) c.close();
  await ctx.etcd?.remove();
  killEtcds();
});

/** A client of the fleet's user, closed after the suite. */
async function client(): Promise<Etcd3> {
  const c = await openEtcd(resolveRegistry(reg()));
  ctx.clients.push(c);
  return c;
}

token('a watch made after a quiet spell past the TTL, on a stream opened before it, sees the changes', async () => {
  const c = await client();
  const writer = await client();
  const first = await c.watch().prefix(`${PREFIX}w/`).create();
  const put = await c.put(`${PREFIX}w/a`).value('1').exec();
  await sleep(TOKEN_TTL_S * 1000 + 2000);
  const seen: string[] = [];
  const errors: string[] = [];
  // From the revision after what was read, as a mirror's watch is made (registry/mirror.ts).
  const second = c.watch().prefix(`${PREFIX}w/`).startRevision(String(BigInt(put.header.revision) + 1n)).watcher();
  second.on('put', (kv) => seen.push(kv.key.toString()));
  second.on('error', (err: Error) => errors.push(err.message));
  await writer.put(`${PREFIX}w/b`).value('1');
  await eventually(() => seen.includes(`${PREFIX}w/b`), 5000, `the new watch to see the put (its errors: ${errors.join('; ') || 'none'})`);
  await Promise.all([first.cancel(), second.cancel()]);
});

token("after a quiet spell past the TTL and etcd's restart, the proxy's watch sees a server that registers, and the first server keeps its lease", async () => {
  const logs: LogRecord[] = [];
  const p = await startProxy({ port: 0, registry: reg(), logger: new Logger('proxy', memorySink(logs), 'info') });
  ctx.proxies.push(p);
  const a = await startServer({ id: 'a', policy: 'T', registry: reg() });
  ctx.servers.push(a);
  await eventually(() => p.pools().T?.serving.length === 1 && p.registry()?.advertised === true, 10_000, 'a serving and the proxy advertised');
  const reader = await client();
  const leaseOfA = async () => String((await reader.get(serverKey(PREFIX, 'a')).exec()).kvs[0]?.lease);
  const lease = await leaseOfA();
  // Quiet: keepalives and the watches only, none of which uses the token.
  await sleep(TOKEN_TTL_S * 1000 + 2000);
  await ctx.etcd!.stop();
  await ctx.etcd!.start();
  await eventually(() => p.registry()?.up === true && p.registry()?.synced === true, 10_000, 'the proxy to read the registry again');
  const from = logs.length;
  const b = await startServer({ id: 'b', policy: 'T', registry: reg() });
  ctx.servers.push(b);
  await eventually(() => p.pools().T?.serving.length === 2, 10_000, 'the proxy to serve through b too');
  // Seen through the watch, not by reading the registry again after it failed.
  await sleep(2000);
  const since = logs.slice(from).filter((r) => /registry_(down|resynced)/.test(r.event ?? ''));
  assert.equal(since.map((r) => `${r.event}: ${r.msg}`), [], 'no read of the registry again and no outage after the restart');
  assert.is(p.pools().T?.serving.length, 2, 'a and b both served');
  // a's keepalives (a stream each, with the token a held before the restart) kept its lease: not written again under a new one.
  assert.is(await leaseOfA(), lease, "a's key is on the lease it had before");
});

token.run();
