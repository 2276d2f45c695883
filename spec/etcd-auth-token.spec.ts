/**
 * etcd's simple token past its TTL (`--auth-token-ttl`, here 3 s): etcd drops a token that no checked request used for
 * that long, and a member drops them all when it restarts. A watch or a lease keepalive does not use it, so a quiet
 * proxy or server holds a dead one after a TTL. etcd3 asks for a new token when a unary call is refused
 * (EtcdInvalidAuthTokenError), but not for a stream: a watch made again with the dead token is cancelled by etcd
 * ("etcdserver: invalid auth token"), every watch after it on that stream too (etcd checks the token the stream
 * opened with), and nothing asked for a new one. And a token ask that failed on a connection gone silent: asked on it
 * again, until gRPC's keepalive gave it up. On a real etcd (Debian's, started by scenario/etcd.ts on free
 * loopback ports, killed and removed after).
 */
import { connect as tcpConnect, createServer, type Server, type Socket } from 'node:net';
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
const ctx: { etcd?: Etcd; clients: Etcd3[]; proxies: ProxyHandle[]; servers: ServerHandle[]; relays: Relay[] } = { clients: [], proxies: [], servers: [], relays: [] };
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
  for (const r of ctx.relays) r.close();
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

/** A TCP relay to `target` whose connections can go silent both ways (`silence`: a NAT or firewall that forgot them), while new ones pass. */
interface Relay {
  endpoint: string;
  silence(): void;
  close(): void;
}

async function relay(target: string): Promise<Relay> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set<[Socket, Socket]>();
  const server: Server = createServer((inbound) => {
    const outbound = tcpConnect(port, host);
    const pair: [Socket, Socket] = [inbound, outbound];
    pairs.add(pair);
    for (const s of pair) s.on('error', () => undefined).on('close', () => (pairs.delete(pair), inbound.destroy(), outbound.destroy()));
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `127.0.0.1:${(server.address() as { port: number }).port}`,
    silence() {
      // Open, and nothing passes either way: what is sent is read and dropped.
      for (const [a, b] of pairs) {
        a.unpipe(b);
        b.unpipe(a);
        a.removeAllListeners('data').on('data', () => undefined);
        b.removeAllListeners('data').on('data', () => undefined);
      }
      pairs.clear();
    },
    close() {
      server.close();
      for (const [a, b] of pairs) (a.destroy(), b.destroy());
    },
  };
}

token('a token ask that fails on a connection gone silent is not asked on it again: the member is dialled anew, as after any failed call', async () => {
  const r = await relay(ctx.etcd!.endpoint);
  ctx.relays.push(r);
  const c = await openEtcd(resolveRegistry({ ...reg(), endpoints: [r.endpoint], callTimeoutMs: 1000 }));
  ctx.clients.push(c);
  assert.is(await c.get(`${PREFIX}x`).string(), null);
  r.silence();
  // The token forgotten, as after etcd refused it: the next call asks first, on the connection it has.
  (c as unknown as { pool: { authenticator: { invalidateMetadata(): void } } }).pool.authenticator.invalidateMetadata();
  // etcd3 tries a call three times (its pool's retry policy), asking for the token each time. Before, each ask went to the
  // same silent connection, and once three had failed the member's breaker held every call back: the first read answered
  // came 11.5 s after the silence (6 failed), when gRPC's keepalive gave the connection up; now the call's second try is.
  const failed: string[] = [];
  for (let i = 0; i < 3; i++) {
    const err = await c.get(`${PREFIX}x`).string().then(() => undefined, (e: Error) => e);
    if (!err) break;
    failed.push(err.message);
  }
  assert.ok(failed.length < 3, `no read answered after the silence: ${failed.join('; ')}`);
});

token.run();
