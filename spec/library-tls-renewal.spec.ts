/**
 * Renewed certificates handed to a running proxy, server or client through the library
 * (`renewTls`): the next handshakes and dials use them, connections already open keep theirs,
 * and a bad set is refused with a TlsConfigError, the running one kept. Real openssl-made
 * certificates (spec/certs.ts), the library's own handles.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer as tlsServer, type TLSSocket } from 'node:tls';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, Logger, RevproxyError, startProxy, startServer, type Client, type LogRecord, type ProxyHandle, type ServerHandle } from '../lib/index.js';
import { memorySink } from '../actors/logger.js';
import { loadTls, TlsConfigError, type TlsMaterial } from '../transport/tls.js';
import { handshake, makePki, presented, type Pki } from './certs.js';
import { frame, LOCAL } from './helpers.js';
import { MsgType } from '../transport/messages.js';

const ctx = { proxies: [] as ProxyHandle[], servers: [] as ServerHandle[], clients: [] as Client[], sockets: [] as TLSSocket[] };
const renew = suite('renewing certificates through the library', ctx);
renew.after.each(async () => {
  for (const s of ctx.sockets.splice(0)) s.destroy();
  for (const c of ctx.clients.splice(0)) await c.close().catch(() => undefined);
  for (const s of ctx.servers.splice(0)) s.kill();
  for (const p of ctx.proxies.splice(0)) p.kill();
});

/** `name`'s certificate and key of `pki`, with `ca` (default: the pki's own CA), read as the library takes them. */
const material = (pki: Pki, name: string, ca = readFileSync(pki.ca)): TlsMaterial => ({ ...loadTls(pki.cert(name))!, ca });

/** What a library call threw, to look at. */
function thrown(f: () => void): RevproxyError {
  try {
    f();
  } catch (err) {
    assert.instance(err, RevproxyError);
    return err as RevproxyError;
  }
  throw new Error('expected renewTls to throw');
}

renew('proxy.renewTls: the listener and the dials to servers take the renewed certificates, open connections keep theirs; a bad set is refused and the running one stays', async () => {
  const a = makePki(['proxy-a', 'server', 'client'], 'CA A');
  const b = makePki(['proxy-b'], 'CA B');
  const caA = readFileSync(a.ca);
  const both = Buffer.concat([caA, readFileSync(b.ca)]);
  // Clients and servers trust CA A and B; the proxy wants certificates of CA A from them.
  const proxy = await startProxy({ port: 0, tls: material(a, 'proxy-a'), upstreamTls: material(a, 'proxy-a') });
  ctx.proxies.push(proxy);
  const port = proxy.port;
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', proxy: { host: LOCAL, port }, tls: material(a, 'server', both), handler: async () => 's1' }));
  const client = await connect({ revproc: { host: LOCAL, port }, tls: material(a, 'client', both) });
  ctx.clients.push(client);
  assert.is(await client.request('P', 'x'), 's1');
  const kept = await handshake(port, { ...a.cert('client'), ca: a.ca });
  ctx.sockets.push(kept);

  proxy.renewTls({ tls: { ...material(b, 'proxy-b'), ca: caA }, upstreamTls: { ...material(b, 'proxy-b'), ca: caA } });
  // A new handshake gets the renewed certificate; the connection open before keeps the old one, and the client's works on.
  assert.is(await presented(port, { ...a.cert('client'), ca: b.ca }), 'proxy-b');
  assert.is(String(kept.getPeerCertificate().subject.CN), 'proxy-a');
  assert.not.ok(kept.destroyed, 'the connection opened before the renewal is still open');
  assert.is(await client.request('P', 'y'), 's1');
  // The proxy's next dial to a server presents the renewed certificate: this server lets in only CA B's.
  ctx.servers.push(await startServer({ id: 's2', policy: 'Q', proxy: { host: LOCAL, port }, tls: material(a, 'server', readFileSync(b.ca)), handler: async () => 's2' }));
  assert.is(await client.request('Q', 'z', { timeoutMs: 3000 }), 's2');
  assert.equal(proxy.tls().upstreamTls?.cert, readFileSync(b.cert('proxy-b').cert));

  // A renewed certificate without its own key: refused, naming it; nothing changes, not even the half that was good.
  const bad = thrown(() => proxy.renewTls({ tls: material(a, 'proxy-a'), upstreamTls: { ...material(a, 'proxy-a'), key: readFileSync(b.cert('proxy-b').key) } }));
  assert.is(bad.code, 'TLS_CONFIG');
  assert.match(bad.message, /upstreamTls\.key is not the private key of upstreamTls\.cert/);
  assert.is(await presented(port, { ...a.cert('client'), ca: b.ca }), 'proxy-b');
  assert.equal(proxy.tls().upstreamTls?.cert, readFileSync(b.cert('proxy-b').cert));
  // What the proxy did not start with is not turned on by a renewal.
  const plain = await startProxy({ port: 0 });
  ctx.proxies.push(plain);
  assert.match(thrown(() => plain.renewTls({ tls: material(a, 'proxy-a') })).message, /cannot renew tls: it was started without tls\.cert/);
});

renew('server.renewTls: its listener serves the renewed certificate to new handshakes, requests flow on; a bad set is refused and the old one kept', async () => {
  const pki = makePki(['proxy', 'old', 'renewed', 'client']);
  const proxy = await startProxy({ port: 0, tls: material(pki, 'proxy'), upstreamTls: material(pki, 'proxy') });
  ctx.proxies.push(proxy);
  const server = await startServer({ id: 's1', policy: 'P', proxy: { host: LOCAL, port: proxy.port }, tls: material(pki, 'old'), handler: async () => 'ok' });
  ctx.servers.push(server);
  const client = await connect({ revproc: { host: LOCAL, port: proxy.port }, tls: material(pki, 'client') });
  ctx.clients.push(client);
  assert.is(await client.request('P', 'x'), 'ok');
  const peer = { ...pki.cert('client'), ca: pki.ca };
  assert.is(await presented(server.port, peer), 'old');

  server.renewTls(material(pki, 'renewed'));
  assert.is(await presented(server.port, peer), 'renewed');
  assert.is(await client.request('P', 'y'), 'ok', 'the proxy\'s link opened before the renewal serves on');

  const bad = thrown(() => server.renewTls({ ...material(pki, 'old'), key: readFileSync(pki.cert('renewed').key) }));
  assert.is(bad.code, 'TLS_CONFIG');
  assert.match(bad.message, /tls\.key is not the private key of tls\.cert/);
  assert.is(await presented(server.port, peer), 'renewed');
});

renew("client.renewTls: the client's next dial presents the renewed certificate; a bad set is refused and the old one kept", async () => {
  const pki = makePki(['proxy', 'old', 'renewed']);
  // A TLS listener standing in for the proxy: it records whose certificate each dial presents, answers the
  // client's first PING (a proxy reached: the client holds its requests and dials it again), and closes it.
  const seen: string[] = [];
  const fake = tlsServer({ ...material(pki, 'proxy'), requestCert: true, rejectUnauthorized: true }, (s) => {
    seen.push(String(s.getPeerCertificate().subject.CN));
    s.write(frame({ type: MsgType.PONG, seq: 0 }), () => s.destroy());
  });
  await new Promise<void>((r) => fake.listen(0, LOCAL, r));
  try {
    const port = (fake.address() as { port: number }).port;
    const client = await connect({ revproc: { host: LOCAL, port }, tls: material(pki, 'old') });
    ctx.clients.push(client);
    await client.request('P', 'x', { timeoutMs: 500 }).catch(() => undefined);
    assert.ok(seen.length > 0 && seen.every((cn) => cn === 'old'), seen.join());

    const bad = thrown(() => client.renewTls({ ...material(pki, 'renewed'), key: readFileSync(pki.cert('old').key) }));
    assert.is(bad.code, 'TLS_CONFIG');
    assert.match(bad.message, /tls\.key is not the private key of tls\.cert/);
    const before = seen.length;
    await client.request('P', 'x', { timeoutMs: 500 }).catch(() => undefined);
    assert.ok(seen.length > before && seen.every((cn) => cn === 'old'), seen.join());

    client.renewTls(material(pki, 'renewed'));
    const from = seen.length;
    await client.request('P', 'y', { timeoutMs: 500 }).catch(() => undefined);
    assert.ok(seen.length > from, 'the client dialled again');
    assert.equal([...new Set(seen.slice(from))], ['renewed']);
  } finally {
    await new Promise((r) => fake.close(r));
  }
  // Through a real proxy: the connection open before a renewal carries on with what it began with.
  const proxy = await startProxy({ port: 0, tls: material(pki, 'proxy'), upstreamTls: material(pki, 'proxy') });
  ctx.proxies.push(proxy);
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', proxy: { host: LOCAL, port: proxy.port }, tls: material(pki, 'old'), handler: async () => 'ok' }));
  const kept = await connect({ revproc: { host: LOCAL, port: proxy.port }, tls: material(pki, 'old') });
  ctx.clients.push(kept);
  assert.is(await kept.request('P', 'x'), 'ok');
  const conn = kept.actor.getSnapshot().context.conn;
  kept.renewTls(material(pki, 'renewed'));
  assert.is(await kept.request('P', 'y'), 'ok');
  assert.ok(conn && kept.actor.getSnapshot().context.conn === conn, 'the connection open before the renewal carries on');
});

renew('the TLS options at start are checked as the files are: a key not the certificate\'s, a path for the contents, a listener without a certificate, each a TlsConfigError naming the option, and the process goes on', async () => {
  // The first two rejected the start with OpenSSL's own error and then ended the process from inside the actor (an
  // uncaught exception); tls: {} and tls: { ca } on a proxy served plain TCP without a word.
  const a = makePki(['proxy-a', 'other'], 'CA A');
  const good = material(a, 'proxy-a');
  const otherKey = material(a, 'other').key!;
  const uncaught: unknown[] = [];
  const onUncaught = (err: unknown): void => void uncaught.push(err);
  process.on('uncaughtException', onUncaught);
  try {
    const refused = async (start: () => Promise<unknown>, said: RegExp): Promise<void> => {
      const err = await start().then(() => undefined, (e: unknown) => e);
      assert.instance(err, TlsConfigError);
      assert.is((err as TlsConfigError).code, 'TLS_CONFIG');
      assert.match((err as Error).message, said);
    };
    await refused(() => startProxy({ port: 0, tls: { cert: good.cert, key: otherKey } }), /^startProxy: tls\.key is not the private key of tls\.cert/);
    const path = a.cert('proxy-a').cert;
    await refused(() => startProxy({ port: 0, tls: { cert: path, key: a.cert('proxy-a').key } as never }), new RegExp(`^startProxy: tls\\.cert is '${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}', which is no PEM text: give the file's contents \\(readFileSync\\(`));
    await refused(() => startProxy({ port: 0, tls: {} }), /^startProxy: tls has no tls\.cert or tls\.key: the listener serves TLS with them \(leave tls out to serve plain TCP\)$/);
    await refused(() => startProxy({ port: 0, tls: { ca: good.ca } }), /^startProxy: tls has no tls\.cert or tls\.key/);
    await refused(() => startProxy({ port: 0, upstreamTls: { cert: good.cert, key: otherKey } }), /^startProxy: upstreamTls\.key is not the private key of upstreamTls\.cert/);
    await refused(() => startServer({ id: 's1', policy: 'P', revproc: 1, tls: { cert: good.cert, key: otherKey } }), /^startServer: tls\.key is not the private key of tls\.cert/);
    await refused(() => connect({ revproc: 1, tls: { ca: Buffer.from('not a certificate') } }), /^connect\(\): tls\.ca holds no PEM certificate/);
    await refused(() => connect({ revproc: 1, tls: 'on' as never }), /^connect\(\): tls must be \{ cert, key, ca, crl \}, each a PEM Buffer .*, got string$/);
    // What each takes still starts: a pair as Buffers or PEM strings, a dialling side's {} (the system's CAs).
    const p = await startProxy({ port: 0, tls: { cert: good.cert!.toString(), key: good.key!.toString() } as never, upstreamTls: {} });
    ctx.proxies.push(p);
    // A CRL as a PEM string too: its start threw "Invalid value used as weak map key" (the CRLs were kept by their Buffer).
    const revoking = await startProxy({ port: 0, tls: { cert: good.cert!.toString(), key: good.key!.toString(), ca: good.ca!.toString(), crl: readFileSync(a.crl(), 'utf8') } as never });
    ctx.proxies.push(revoking);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(uncaught, [], 'nothing thrown out of reach');
  } finally {
    process.off('uncaughtException', onUncaught);
  }
});

renew("upstreamTls without ca: the library says, at start and at a renewal bringing such a set, that servers are verified against the system's CAs (the CLI refuses upstream_tls without ca); with ca, nothing", async () => {
  // It took {} (or a certificate and key alone) silently: every server signed by a private CA refused at each dial,
  // and any certificate a public CA issued for the name dialled taken.
  const a = makePki(['proxy'], 'CA A');
  const logs: LogRecord[] = [];
  const said = (): string[] => logs.filter((l) => l.event === 'upstream_tls_system_cas').map((l) => `${l.level}: ${l.msg}`);
  const p = await startProxy({ port: 0, upstreamTls: {}, logger: new Logger('proxy', memorySink(logs), 'info') });
  ctx.proxies.push(p);
  assert.equal(said(), ["warn: startProxy: upstreamTls has no upstreamTls.ca: the proxy verifies each server's TLS certificate against the system's CAs (Node's default list, and NODE_EXTRA_CA_CERTS), which the CLI never does (it refuses upstream_tls without ca): they sign no server dialled at its address on a private network, whose every dial is then refused, and they vouch for any certificate one of them issued for the name dialled: give upstreamTls.ca, the PEM CA that signs the servers' certificates, unless the servers hold a public CA's certificates for the names they are dialled by (upstreamTls.serverName)"]);
  p.renewTls({ upstreamTls: material(a, 'proxy') });
  assert.is(said().length, 1, 'a renewal with a CA: nothing more');
  p.renewTls({ upstreamTls: loadTls(a.cert('proxy'))! });
  assert.is(said().length, 2);
  assert.match(said()[1]!, /^warn: renewTls: upstreamTls has no upstreamTls\.ca: /);
  const withCa = await startProxy({ port: 0, upstreamTls: { ca: readFileSync(a.ca) }, logger: new Logger('proxy', memorySink(logs), 'info') });
  ctx.proxies.push(withCa);
  assert.is(said().length, 2, 'with ca: nothing said');
});

renew('the library refuses as the CLI does, at start and on renewTls: a certificate unfit for what the side does with it (a client certificate without clientAuth taken: only a proxy that asks is shown it), not valid yet, an expired intermediate, a leaf as the CA, an encrypted key', async () => {
  const a = makePki(['proxy', 'client-only', 'server-only'], 'CA A', { usages: { 'client-only': 'clientAuth', 'server-only': 'serverAuth' } });
  const future = makePki(['soon'], 'CA later', { made: '+1d' });
  const lapsed = makePki(['chained'], 'CA lapsed', { days: 5, intermediate: { made: '-3d', days: 1 } });
  const refused = async (start: () => Promise<unknown>, said: RegExp): Promise<void> => {
    const err = await start().then(() => undefined, (e: unknown) => e);
    assert.instance(err, TlsConfigError, String(err));
    assert.match((err as Error).message, said);
  };
  const ca = readFileSync(a.ca);
  // As read, unchecked (`material` checks them as the CLI's files).
  const raw = (pki: Pki, name: string, trusted = ca): TlsMaterial => ({ cert: readFileSync(pki.cert(name).cert), key: readFileSync(pki.cert(name).key), ca: trusted });
  await refused(() => startProxy({ port: 0, tls: raw(a, 'client-only') }), /^startProxy: tls\.cert holds a certificate whose extended key usage is clientAuth only, without serverAuth: this side serves it on its port/);
  // A client presents its certificate only to a proxy that asks for one (tls.ca): one without clientAuth is not refused
  // before it dials (a proxy that asks refuses it in the handshake, in words); one that does not ask takes the client.
  const oneWay = await startProxy({ port: 0, tls: { ...loadTls(a.cert('proxy'))! } });
  ctx.proxies.push(oneWay);
  const serverOnly = await connect({ revproc: oneWay.port, tls: { ...raw(a, 'server-only'), ca } });
  serverOnly.destroy();
  await refused(() => startServer({ id: 's1', policy: 'P', revproc: 1, tls: raw(lapsed, 'chained') }), /^startServer: tls\.cert holds the intermediate certificate CN=CA lapsed intermediate, which expired on /);
  await refused(() => startProxy({ port: 0, tls: raw(future, 'soon') }), /^startProxy: tls\.cert holds a certificate valid only from 20\d\d-[-\dT:.]+Z, in 2[34] hours/);
  await refused(() => startProxy({ port: 0, tls: raw(a, 'proxy', readFileSync(a.cert('proxy').cert)) }), /^startProxy: tls\.ca holds no root CA certificate \(self-signed, valid now\) to verify peers with: CN=proxy is not a CA certificate/);
  const encrypted = execFileSync('openssl', ['pkey', '-in', a.cert('proxy').key, '-aes256', '-passout', 'pass:secret-pass']);
  await refused(() => startProxy({ port: 0, tls: { ...raw(a, 'proxy'), key: encrypted } }), /^startProxy: tls\.key is encrypted \(a passphrase protects it\), and revproxy needs the private key unencrypted: decrypt it with `openssl pkey -in key\.pem -out key\.pem\.plain`/);
  // A running proxy keeps its own when handed one of them.
  const proxy = await startProxy({ port: 0, tls: material(a, 'proxy') });
  ctx.proxies.push(proxy);
  assert.match(thrown(() => proxy.renewTls({ tls: raw(future, 'soon') })).message, /^tls\.cert holds a certificate valid only from/);
  assert.match(thrown(() => proxy.renewTls({ tls: raw(a, 'client-only') })).message, /^tls\.cert holds a certificate whose extended key usage is clientAuth only/);
  assert.is(await presented(proxy.port, { ...a.cert('proxy'), ca: a.ca }), 'proxy');
});

renew.run();
