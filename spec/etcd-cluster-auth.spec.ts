/**
 * A client that starts while etcd has lost its quorum (registry/discovery.ts `staleProxies`: a serializable read of
 * each member, without a leader), with etcd's authentication on: a real 3-member cluster (Debian's etcd, started by
 * scenario/etcd.ts on free loopback ports, killed and removed after), a proxy and a server registered through it,
 * both followers hung (SIGSTOP) while the client starts. etcd takes a user's password (its Authenticate call) only
 * through its leader: a client with a password cannot start, and says so and what to do. A client whose etcd user is
 * its certificate (etcd --client-cert-auth: the CN is the user, no token asked for) is checked by the member itself,
 * and starts with the proxies that member last saw.
 *
 * And a token asked again while the first member of --registry does not answer: etcd3 asks the members in that order,
 * and each ask went to it first, a call timeout each, though its breaker had long held it back from every other call; and
 * each process's first ask too (its breaker knows nothing yet): the order is now drawn anew for each round of asks.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, Logger, memorySink, sha1Hex, startProxy, startServer, type Client, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { readFileSync } from 'node:fs';
import { createServer as createH2Server, type Http2Server } from 'node:http2';
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

/**
 * A first member that takes gRPC calls and never answers them (a hung etcd, whose connections are up), counting what
 * reaches it: every call, and the Authenticate calls (a token asked).
 */
interface HungMember {
  endpoint: string;
  calls: number;
  ended: number;
  tokenAsks: number;
  close(): void;
}

async function hungMember(): Promise<HungMember> {
  const server: Http2Server = createH2Server();
  const m: HungMember = { endpoint: '', calls: 0, ended: 0, tokenAsks: 0, close: () => server.close() };
  server.on('stream', (stream, headers) => {
    m.calls++;
    if (headers[':path'] === '/etcdserverpb.Auth/Authenticate') m.tokenAsks++;
    // The client gives the call up at its deadline: one failure more for the member's breaker.
    stream.on('error', () => undefined).on('close', () => m.ended++);
  });
  server.on('session', (session) => session.on('error', () => undefined));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  m.endpoint = `127.0.0.1:${(server.address() as { port: number }).port}`;
  return m;
}

const tctx: Ctx & { hung?: HungMember; client?: Etcd3; admin?: Etcd3 } = { creds: { username: 'fleet', password: 'fleet-password-1' } };
const token = clusterSuite('a token asked again while the first member of --registry hangs', tctx, async () => {
  tctx.cluster = await startEtcdCluster(3);
  const root = await openEtcd(resolveRegistry({ endpoints: tctx.cluster.endpoints }));
  try {
    await fleetUser(root, PREFIX);
    await root.auth.authEnable();
  } finally {
    root.close();
  }
});
token.after(() => {
  tctx.client?.close();
  tctx.admin?.close();
  tctx.hung?.close();
});

token('goes past it while its breaker holds it back, instead of waiting out a call timeout there each time', async () => {
  const hung = (tctx.hung = await hungMember());
  const client = (tctx.client = await openEtcd(resolveRegistry({ endpoints: [hung.endpoint, ...tctx.cluster!.endpoints], prefix: PREFIX, username: 'fleet', password: 'fleet-password-1', callTimeoutMs: 1000 })));
  const admin = (tctx.admin = await openEtcd(resolveRegistry({ endpoints: tctx.cluster!.endpoints, username: 'root', password: 'root-password-1' })));
  // The token asks etcd3 makes, of any member (its Authenticator; a spy, wrapped around what it calls).
  const authenticator = (client as unknown as { pool: { authenticator: { getCredentialsFromHost(address: string, ...rest: unknown[]): Promise<string> } } }).pool.authenticator;
  const own = authenticator.getCredentialsFromHost.bind(authenticator);
  let asked = 0;
  authenticator.getCredentialsFromHost = (...args) => {
    asked++;
    return own(...args);
  };
  const read = () => client.get(`${PREFIX}x`).string();
  // Calls until the member has failed five, each given up at its deadline (the first a token ask): its breaker holds it back.
  await eventually(async () => (await read().catch(() => undefined), hung.ended >= 5), 60_000, 'five calls to the hung member given up');
  const [asks, reached] = [asked, hung.tokenAsks];
  // etcd drops a user's tokens when its password is set: each read after is refused (EtcdInvalidAuthTokenError), and etcd3 asks again.
  const RENEWALS = 8;
  for (let i = 0; i < RENEWALS; i++) {
    await admin.user('fleet').setPassword('fleet-password-1');
    assert.is(await read(), null);
  }
  assert.ok(asked - asks >= RENEWALS, `${asked - asks} token asks for ${RENEWALS} renewals: etcd did not drop the tokens`);
  // Before, each went to the hung member first (8 of 8, a call timeout each). Now it is passed over while held back; let
  // through again only when its hold ends (4 s after the warm-up's fifth failure, then 8, 16 s: twice at most unless the
  // renewals take 28 s) and a token ask is the first call then (0 or 1 seen, on a loaded host).
  const got = hung.tokenAsks - reached;
  assert.ok(got <= 2, `${got} of ${asked - asks} token asks reached the hung member (each waits its call timeout there); it had failed ${hung.ended} calls`);
});

token("a process's first ask goes to the members in an order drawn anew, not to the first of --registry each time", async () => {
  const hung = (tctx.hung ??= await hungMember());
  const before = hung.tokenAsks;
  // Fresh clients, each asking its first token (a read): before, every one asked the hung first member and waited out its call timeout there.
  const CLIENTS = 12;
  const took: number[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const client = await openEtcd(resolveRegistry({ endpoints: [hung.endpoint, ...tctx.cluster!.endpoints], prefix: PREFIX, username: 'fleet', password: 'fleet-password-1', callTimeoutMs: 1000 }));
    try {
      const asks = hung.tokenAsks;
      const t0 = performance.now();
      assert.is(await client.get(`${PREFIX}x`).string(), null);
      took.push(performance.now() - t0);
      if (process.env.TOKEN_ASK_TIMES) console.log(`first read ${Math.round(took[i]!)} ms, the hung member asked: ${hung.tokenAsks > asks}`);
    } finally {
      client.close();
    }
  }
  // One member in four hangs: about 3 of 12 ask it first (9 or more: 4 in 10,000).
  const got = hung.tokenAsks - before;
  assert.ok(got < 9, `${got} of ${CLIENTS} first token asks went to the hung member (the first of --registry)`);
});

token.run();
