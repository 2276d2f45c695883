/**
 * A client that starts while etcd has lost its quorum (registry/discovery.ts `staleProxies`: a serializable read of
 * each member, without a leader), with etcd's authentication on: a real 3-member cluster (Debian's etcd, started by
 * scenario/etcd.ts on free loopback ports, killed and removed after), a proxy and a server registered through it,
 * both followers hung (SIGSTOP) while the client starts. etcd takes a user's password (its Authenticate call) only
 * through its leader: a client with a password cannot start, and says so and what to do. A client whose etcd user is
 * its certificate (etcd --client-cert-auth: the CN is the user, no token asked for) is checked by the member itself,
 * and starts with the proxies that member last saw.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, Logger, memorySink, sha1Hex, startProxy, startServer, type Client, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { readFileSync } from 'node:fs';
import { openEtcd, type Etcd3 } from '../registry/etcd.js';
import { resolveRegistry, type RegistryOptions } from '../registry/options.js';
import { killEtcds, startEtcdCluster, type EtcdCluster } from '../scenario/etcd.js';
import { makePki } from './certs.js';
import { eventually, rejection } from './helpers.js';
import { fleetUser, withoutQuorum } from './etcd-helpers.js';

interface Ctx {
  cluster?: EtcdCluster;
  /** How the fleet's user reaches etcd: a password, or a client certificate. */
  creds: Pick<RegistryOptions, 'username' | 'password' | 'tls'>;
  /** A client of the fleet's user, every call requiring a leader: what tells the quorum is lost. */
  raw?: Etcd3;
  proxy?: ProxyHandle;
  server?: ServerHandle;
}

const PREFIX = '/quorum-auth/';
const reg = (ctx: Ctx, more: Partial<RegistryOptions> = {}): RegistryOptions => ({ endpoints: ctx.cluster!.endpoints, prefix: PREFIX, ttlSeconds: 2, retryInitialMs: 100, retryMaxMs: 500, ...ctx.creds, ...more });

/** etcd's authentication on `ctx.cluster` (`fleetUser`), reached as `admin` before it is on; then a proxy and a server registered through it as the fleet's user. */
async function fleetOn(ctx: Ctx, admin: Pick<RegistryOptions, 'tls'>): Promise<void> {
  const root = await openEtcd(resolveRegistry({ endpoints: ctx.cluster!.endpoints, ...admin }));
  try {
    await fleetUser(root, PREFIX);
    await root.auth.authEnable();
  } finally {
    root.close();
  }
  ctx.raw = await openEtcd(resolveRegistry(reg(ctx)));
  ctx.proxy = await startProxy({ port: 0, registry: reg(ctx) });
  ctx.server = await startServer({ id: 'q', policy: 'Q', registry: reg(ctx) });
  await eventually(() => ctx.proxy!.pools().Q?.serving.length === 1 && ctx.proxy!.registry()?.advertised === true, 10_000, 'the server serving and the proxy advertised');
}

/** A suite on a cluster of its own, `setUp` before its tests, everything ended after. */
function clusterSuite(name: string, ctx: Ctx, setUp: () => Promise<void>) {
  const s = suite<Ctx>(name, ctx);
  s.before(async () => {
    // uvu counts a failed hook as the suite's tests failed without saying why: say it here.
    await setUp().catch((err: Error) => {
      console.error(`etcd-cluster-auth.spec: setting up "${name}" failed: ${err.stack ?? err}`);
      throw err;
    });
  });
  s.after(async () => {
    ctx.server?.kill();
    ctx.proxy?.kill();
    ctx.raw?.close();
    await ctx.cluster?.remove();
    killEtcds();
  });
  return s;
}

const pctx: Ctx = { creds: { username: 'fleet', password: 'fleet-password-1' } };
const password = clusterSuite('a client with a password for etcd, started while etcd has lost its quorum', pctx, async () => {
  pctx.cluster = await startEtcdCluster(3);
  await fleetOn(pctx, {});
});

password('cannot start (etcd takes a password only through its leader), and says so and what to do', async () => {
  await withoutQuorum(pctx.cluster!, pctx.raw!, async () => {
    const err = await rejection<Error & { code?: string }>(connect({ registry: reg(pctx, { callTimeoutMs: 1000 }), timeoutMs: 3000 }));
    assert.is(err.code, 'CONNECT_FAILED');
    // Its first read: "no leader" from the member left, or a deadline from a hung one (etcd3 asks the members for a token in their order).
    assert.match(err.message, /^cannot read the proxies from the registry: etcd at etcd:\/\/\S+ (has no leader|did not answer within 1000 ms)/);
    // Before, it ended there: "... has no leader (14 UNAVAILABLE: etcdserver: no leader): the members reached are cut off from the others, or the cluster lost quorum".
    assert.match(err.message, /; and no member could be read without a leader either: etcd takes a user's password \(its Authenticate call\) only through its leader, so a client given a registry user \(--registry-user, registry\.username\) cannot start while etcd has none: /);
    assert.match(err.message, /make their etcd user a client certificate instead of a password \(etcd --client-cert-auth, the certificate's CN as the user; --registry-cert and --registry-key, registry\.tls; docs\/SECURITY\.md/);
    assert.not.match(err.message, /fleet-password-1/, 'the password is not said');
  });
});

password.run();

const cctx: Ctx = { creds: {} };
const certificate = clusterSuite('a client whose etcd user is its certificate (etcd --client-cert-auth), started while etcd has lost its quorum', cctx, async () => {
  const pki = makePki(['etcd', 'fleet', 'root']);
  const material = (name: string) => ({ ca: readFileSync(pki.ca), cert: readFileSync(pki.cert(name).cert), key: readFileSync(pki.cert(name).key) });
  cctx.creds = { tls: material('fleet') };
  cctx.cluster = await startEtcdCluster(3, { tls: { ...pki.cert('etcd'), ca: pki.ca } });
  await fleetOn(cctx, { tls: material('root') });
});

certificate('starts with the proxies the member left last saw, and is answered: the member checks the certificate itself', async () => {
  assert.match(cctx.cluster!.url, /^etcds:\/\//);
  const logs: LogRecord[] = [];
  let client: Client | undefined;
  try {
    await withoutQuorum(cctx.cluster!, cctx.raw!, async () => {
      client = await connect({ registry: reg(cctx, { callTimeoutMs: 1000 }), timeoutMs: 5000, logger: new Logger('client', memorySink(logs), 'info') });
      const stale = logs.find((r) => r.event === 'registry_stale');
      assert.ok(stale, 'a registry_stale line');
      assert.match(stale!.msg, /starting with the proxy the etcd member at 127\.0\.0\.1:\d+ last saw \(read without a leader/);
      const o = await client.send('Q', 'during the quorum loss');
      assert.ok(o.ok, `answered: ${o.ok ? '' : o.error.message}`);
      assert.is(o.ok && o.answer.payload, sha1Hex('during the quorum loss'));
    });
  } finally {
    client?.destroy();
  }
});

certificate.run();
