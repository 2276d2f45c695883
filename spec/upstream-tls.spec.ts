/**
 * TLS from the proxy toward its servers, set apart from its port's (`upstream_tls`, `--upstream-tls-*`; the
 * library's `upstreamTls`): one-way TLS to clients with TLS servers, plain clients with TLS servers, a CA of
 * its own for servers, the names a server's certificate must carry, and a server's registration saying how
 * its port serves. Real openssl-made certificates (spec/certs.ts); the real `revproxy proxy` and `server`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer as netServer, type AddressInfo } from 'node:net';
import { createServer as tlsServer } from 'node:tls';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { Logger, memorySink, runClient, sha1Handler, startProxy, startServer, StartError, type LogRecord, type ProxyHandle } from '../actors/index.js';
import { changes, parseConfig, toRuntime } from '../config/proxy.js';
import { encodeFrame } from '../transport/frame.js';
import { loadTls } from '../transport/tls.js';
import { makePki } from './certs.js';
import { eventually, LOCAL } from './helpers.js';
import { freshSuite, revproxy, type Fresh, type Proc } from './procs.js';

const ctx: Fresh & { proxy?: ProxyHandle } = { dir: '', servers: [] };
const up = freshSuite('TLS toward the servers', 'revproxy-upstream-', ctx);
up.after.each(() => {
  ctx.proxy?.kill();
  ctx.proxy = undefined;
});

const pkts = (n: number) => Array.from({ length: n }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `u${i}` }));

/** A proxy in this process, logging into `logs`. */
async function proxyWith(logs: LogRecord[], opts: Parameters<typeof startProxy>[0]): Promise<ProxyHandle> {
  ctx.proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(logs), 'debug'), ...opts });
  return ctx.proxy;
}

/** A server in this process answering SHA1, counting what it was sent in `seen`. */
async function countingServer(id: string, port: number, seen: Map<string, number>, extra: Partial<Parameters<typeof startServer>[0]> = {}) {
  const s = await startServer({
    id, policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, registerTimeoutMs: 3000,
    handler: (payload, hctx) => {
      seen.set(id, (seen.get(id) ?? 0) + 1);
      return sha1Handler(payload, hctx);
    },
    ...extra,
  });
  ctx.servers.push(s);
  return s;
}

/** `revproxy proxy` with `args` on a free port: the process and its port. */
async function proxyProc(args: string[]): Promise<{ proc: Proc; port: number }> {
  const proc = revproxy(['proxy', '--port', '0', ...args]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/, 20_000))[1]);
  return { proc, port };
}

up('a server whose certificate names none of upstream_tls.names is refused at every dial, said in its down line, and never sent a request; one naming one is served', async () => {
  const servers = makePki(['good', 'bad'], 'servers CA', { sans: { good: 'IP:127.0.0.1,DNS:a.servers.internal', bad: 'IP:127.0.0.1,DNS:db.other.internal' } });
  const logs: LogRecord[] = [];
  // Its port serves plain TCP; its dials to servers are TLS, verified against the servers' CA and held to the names.
  const proxy = await proxyWith(logs, { upstreamTls: { ca: readFileSync(servers.ca), names: ['*.servers.internal'] } });
  const seen = new Map<string, number>();
  await countingServer('good', proxy.port, seen, { tls: loadTls(servers.cert('good')), plainRegistration: true });
  await countingServer('bad', proxy.port, seen, { tls: loadTls(servers.cert('bad')), plainRegistration: true });
  await eventually(() => proxy.pools().P?.serving.includes('good') ?? false, 5000, 'good serving');
  await eventually(() => logs.some((l) => l.event === 'down' && l.id === 'bad'), 5000, "bad's down line");
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: pkts(20) });
  assert.ok(r.every((x) => x.correct), JSON.stringify(r.filter((x) => !x.correct)));
  assert.is(seen.get('good'), 20);
  assert.is(seen.get('bad') ?? 0, 0, 'the server whose certificate no name allows was sent nothing');
  assert.not.ok(proxy.pools().P!.serving.includes('bad'));
  const down = logs.find((l) => l.event === 'down' && l.id === 'bad')!;
  assert.match(down.msg, /^Server id bad at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the server's TLS certificate names IP:127\.0\.0\.1, DNS:db\.other\.internal, none of the names upstream_tls\.names \(--upstream-tls-names; upstreamTls\.names in the library\) allows \(\*\.servers\.internal\): give the server a certificate with one of them in its subjectAltName, or add a name it has there\)/);
  // A renewal that narrows the names closes the link open to a server they no longer allow, and its next dials are refused.
  const closed = proxy.renewTls({ upstreamTls: { ca: readFileSync(servers.ca), names: ['b.servers.internal'] } });
  assert.is(closed, 1, 'the link to good closed');
  assert.match(logs.find((l) => l.event === 'tls_name_refused')?.msg ?? '', /^Closed the link to the server at 127\.0\.0\.1:\d+: the server's TLS certificate names IP:127\.0\.0\.1, DNS:a\.servers\.internal, none of the names/);
  await eventually(() => !proxy.pools().P!.serving.includes('good'), 3000, 'good out of rotation');
  const after = await runClient({ id: 'c2', proxy: { host: LOCAL, port: proxy.port }, packets: pkts(1), maxAttempts: 1, timeoutMs: 1500 });
  assert.not.ok(after[0]!.correct, JSON.stringify(after));
  assert.is(seen.get('good'), 20, 'nothing more reached it');
});

up("a server says whether its port serves TLS as it registers: one that does not fit how the proxy dials is refused BAD_REQUEST, both sides told what to change", async () => {
  const pki = makePki(['proxy', 'server']);
  const logs: LogRecord[] = [];
  // One-way TLS to clients, and no upstream TLS: servers are dialled in plain TCP. A server with --tls-cert registered
  // and was never reached, its link "closed by the server".
  const proxy = await proxyWith(logs, { tls: loadTls(pki.cert('proxy'))! });
  const refused = await countingServer('s', proxy.port, new Map(), { tls: loadTls({ ...pki.cert('server'), ca: pki.ca }) }).catch((e: unknown) => e);
  assert.instance(refused, StartError);
  assert.match((refused as Error).message, /BAD_REQUEST: registration refused: server id s serves TLS on port \d+ \(its setup says tls\) and this proxy dials its servers in plain TCP: give the proxy upstream_tls \(--upstream-tls-ca, the CA that signed the servers' certificates; upstreamTls in the library\), or start the server without --tls-cert/);
  const line = logs.find((l) => l.event === 'register_refused');
  assert.match(line?.msg ?? JSON.stringify(logs), /^Refused setup from 127\.0\.0\.1:\d+ for server id s privacy policy P: server id s serves TLS/);
  assert.is(line!.code, 'BAD_REQUEST');
  assert.equal(proxy.pools(), {}, 'never a member');
  proxy.kill();
  // The other way round: a proxy dialling over TLS, a server serving plain TCP.
  const logs2: LogRecord[] = [];
  const tlsDialler = await proxyWith(logs2, { upstreamTls: { ca: readFileSync(pki.ca) } });
  const plain = await countingServer('p', tlsDialler.port, new Map()).catch((e: unknown) => e);
  assert.instance(plain, StartError);
  assert.match((plain as Error).message, /registration refused: server id p serves plain TCP on port \d+ \(its setup says so\) and this proxy dials its servers over TLS \(its upstream_tls, or tls\.ca without it\): start the server with --tls-cert and --tls-key/);
});

up("a server that does not say how its port serves (a build from before) is dialled as every server, and its link's failure says what to change in the proxy's words", async () => {
  const pki = makePki(['server']);
  // A setup without `tls`, naming a port where `listener` listens: a TLS port dialled in plain TCP, then a plain port dialled over TLS.
  const register = (port: number, listenport: number) => {
    const s = netConnect(port, LOCAL, () => s.write(encodeFrame({ type: 1, id: 'old', privPolyId: 'P', listenport })));
    s.on('data', () => {});
    s.on('error', () => {});
    return s;
  };
  const tlsPort = tlsServer({ cert: readFileSync(pki.cert('server').cert), key: readFileSync(pki.cert('server').key) }, () => {});
  tlsPort.on('tlsClientError', (_e, socket) => socket.destroy());
  const plainPort = netServer((s) => s.on('data', () => s.end(encodeFrame({ type: 3, code: 'BAD_REQUEST', message: 'not a frame' }))));
  for (const l of [tlsPort, plainPort]) await new Promise<void>((r) => l.listen(0, LOCAL, r));
  try {
    const logs: LogRecord[] = [];
    const plainDialler = await proxyWith(logs, {});
    const a = register(plainDialler.port, (tlsPort.address() as AddressInfo).port);
    await eventually(() => logs.some((l) => l.event === 'down'), 5000, 'the down line');
    a.destroy();
    // It said only "connection closed by the server".
    assert.match(logs.find((l) => l.event === 'down')!.msg, /\(connection closed by the server before it answered anything: if it serves TLS on that port \(revproxy server --tls-cert\), the proxy dials it in plain TCP: give the proxy upstream_tls \(--upstream-tls-ca, the CA that signed the servers' certificates\)/);
    plainDialler.kill();
    const logs2: LogRecord[] = [];
    const tlsDialler = await proxyWith(logs2, { upstreamTls: { ca: readFileSync(pki.ca) } });
    const b = register(tlsDialler.port, (plainPort.address() as AddressInfo).port);
    await eventually(() => logs2.some((l) => l.event === 'down'), 5000, 'the down line');
    b.destroy();
    // It said OpenSSL's "...:ssl3_get_record:wrong version number:../deps/openssl/openssl/ssl/record/ssl3_record.c:350:".
    const said = logs2.find((l) => l.event === 'down')!.msg;
    assert.match(said, /\(the server does not speak TLS on its port, and the proxy dials its servers over TLS \(its upstream_tls, or tls\.ca without it\): start the server with --tls-cert and --tls-key/);
    assert.not.match(said, /deps\/openssl/);
  } finally {
    tlsPort.close();
    plainPort.close();
  }
});

up("a server that asks for the proxy's certificate (its --tls-ca) is told none and the proxy's down line says to give upstream_tls.cert; given, it is served", async () => {
  const pki = makePki(['proxy-client', 'server']);
  const logs: LogRecord[] = [];
  const proxy = await proxyWith(logs, { upstreamTls: { ca: readFileSync(pki.ca) } });
  const seen = new Map<string, number>();
  await countingServer('m', proxy.port, seen, { tls: loadTls({ ...pki.cert('server'), ca: pki.ca }), plainRegistration: true });
  await eventually(() => logs.some((l) => l.event === 'down'), 5000, 'the down line');
  const msg = logs.find((l) => l.event === 'down')!.msg;
  assert.match(msg, /the server refused the TLS handshake \(its alert: certificate required\): it asks for the proxy's certificate \(its --tls-ca: mutual TLS\) and the proxy presents none: give the proxy upstream_tls\.cert and upstream_tls\.key/);
  assert.not.match(msg, /deps\/openssl/);
  proxy.kill();
  for (const s of ctx.servers.splice(0)) s.kill();
  const mutual = await proxyWith([], { upstreamTls: loadTls({ ...pki.cert('proxy-client'), ca: pki.ca }) });
  await countingServer('m', mutual.port, seen, { tls: loadTls({ ...pki.cert('server'), ca: pki.ca }), plainRegistration: true });
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port: mutual.port }, packets: pkts(3) });
  assert.ok(r.every((x) => x.correct), JSON.stringify(r));
  assert.is(seen.get('m'), 3);
});

up('revproxy proxy serving clients one-way TLS (tls.cert, no ca) dials TLS servers with its --upstream-tls-* files: a client verifying the proxy gets its answers', async () => {
  // One CA for the proxy's port, another for the servers: the proxy presents its own client certificate to servers (mutual TLS toward them).
  const front = makePki(['proxy']);
  const back = makePki(['proxy-client', 'server'], 'servers CA', { sans: { server: 'IP:127.0.0.1,DNS:s1.servers.internal' } });
  const { proc, port } = await proxyProc([
    '--tls-cert', front.cert('proxy').cert, '--tls-key', front.cert('proxy').key,
    '--upstream-tls-ca', back.ca, '--upstream-tls-cert', back.cert('proxy-client').cert, '--upstream-tls-key', back.cert('proxy-client').key, '--upstream-tls-names', '*.servers.internal',
  ]);
  // revproxy server over TLS to the proxy (verifying it against the front CA), its port asking proxies for a certificate of the back CA.
  const ca = join(ctx.dir, 'both.pem');
  writeFileSync(ca, readFileSync(front.ca, 'utf8') + readFileSync(back.ca, 'utf8'));
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', String(port), '--tls-cert', back.cert('server').cert, '--tls-key', back.cert('server').key, '--tls-ca', ca]);
  await server.waitFor(/Registered with the reverse proxy/, 20_000);
  await proc.waitFor(/Received setup message from server id s1/);
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: pkts(5), tls: loadTls({ ca: front.ca }) });
  assert.ok(r.every((x) => x.correct), `${JSON.stringify(r)}\n${proc.out.join('\n')}\n${server.out.join('\n')}`);
  assert.not.ok(proc.out.some((l) => /unreachable|Refused/.test(l)), proc.out.join('\n'));
});

up('plain clients and TLS servers: revproxy proxy --upstream-tls-ca with revproxy server --plain-registration; a reload narrowing upstream_tls.names closes the link, and the server is refused after', async () => {
  const back = makePki(['server'], 'servers CA', { sans: { server: 'IP:127.0.0.1,DNS:s1.servers.internal' } });
  const file = join(ctx.dir, 'p.yaml');
  const config = (names: string) => writeFileSync(file, `port: 0\nupstream_tls:\n  ca: ${back.ca}\n  names: [${names}]\n`);
  config("'*.servers.internal'");
  const proc = revproxy(['proxy', '--config', file]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/, 20_000))[1]);
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', String(port), '--tls-cert', back.cert('server').cert, '--tls-key', back.cert('server').key, '--plain-registration']);
  await server.waitFor(/Registered with the reverse proxy/, 20_000);
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: pkts(5) });
  assert.ok(r.every((x) => x.correct), `${JSON.stringify(r)}\n${proc.out.join('\n')}\n${server.out.join('\n')}`);
  config("'other.servers.internal'");
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*p\.yaml: applied upstream_tls; secrets re-read; closed 1 connection\(s\) whose peer's certificate upstream_tls\.names no longer allows \(tls_name_refused lines name them\)/);
  await proc.waitFor(/Server id s1 at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the proxy closed its link at the renewal of upstream_tls\.names: the server's TLS certificate names IP:127\.0\.0\.1, DNS:s1\.servers\.internal, none of the names upstream_tls\.names/);
  const after = await runClient({ id: 'c2', proxy: { host: LOCAL, port }, packets: pkts(1), maxAttempts: 1, timeoutMs: 2000 });
  assert.not.ok(after[0]!.correct, JSON.stringify(after));
});

up('upstream_tls.server_name (--upstream-tls-server-name) is sent as SNI on every dial and verified in place of the address: servers whose certificates carry the name and no IP: entry are served, one carrying another name is refused saying so', async () => {
  // The servers' certificates name servers.internal alone, as an internal CA issues them: no IP: entry for the address dialled.
  const back = makePki(['named', 'other'], 'servers CA', { sans: { named: 'DNS:servers.internal', other: 'DNS:db.internal' } });
  const { proc, port } = await proxyProc(['--upstream-tls-ca', back.ca, '--upstream-tls-server-name', 'servers.internal']);
  const seen = new Map<string, number>();
  await countingServer('named', port, seen, { tls: loadTls(back.cert('named')), plainRegistration: true });
  await countingServer('other', port, seen, { tls: loadTls(back.cert('other')), plainRegistration: true });
  // A TLS port that says which name it was sent, registered as a server of an older build does (its SETUP says nothing of TLS).
  const sent: Array<string | false> = [];
  const listener = tlsServer({ cert: readFileSync(back.cert('named').cert), key: readFileSync(back.cert('named').key) }, (s) => {
    sent.push((s as unknown as { servername: string | false }).servername);
    s.destroy();
  });
  await new Promise<void>((r) => listener.listen(0, LOCAL, r));
  const reg = netConnect(port, LOCAL, () => reg.write(encodeFrame({ type: 1, id: 'sni', privPolyId: 'Q', listenport: (listener.address() as AddressInfo).port })));
  reg.on('data', () => {});
  reg.on('error', () => {});
  try {
    await proc.waitFor(/Server id other at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the server's TLS certificate names DNS:db\.internal, not servers\.internal, the name the proxy sends it and verifies \(upstream_tls\.server_name \(--upstream-tls-server-name; upstreamTls\.serverName in the library\)\): give the server a certificate with DNS:servers\.internal in its subjectAltName/, 10_000);
    await eventually(() => sent.length > 0, 5000, 'a dial to the TLS port');
    assert.is(sent[0], 'servers.internal', 'the name went as SNI (Node sends none for an address dialled)');
    const r = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: pkts(10) });
    assert.ok(r.every((x) => x.correct), `${JSON.stringify(r)}\n${proc.out.join('\n')}`);
    assert.is(seen.get('named'), 10);
    assert.is(seen.get('other') ?? 0, 0, 'the server whose certificate does not carry the name was sent nothing');
  } finally {
    reg.destroy();
    listener.close();
  }
  // Without it the address is verified, as before: the same certificate is refused, and the line says server_name would take it.
  const logs: LogRecord[] = [];
  const byAddress = await proxyWith(logs, { upstreamTls: { ca: readFileSync(back.ca) } });
  await countingServer('named2', byAddress.port, seen, { tls: loadTls(back.cert('named')), plainRegistration: true });
  await eventually(() => logs.some((l) => l.event === 'down'), 5000, 'the down line');
  assert.match(logs.find((l) => l.event === 'down')!.msg, /the server's TLS certificate does not name the address the proxy dials .*; or give the proxy upstream_tls\.server_name \(--upstream-tls-server-name\), a DNS name the servers' certificates carry, to verify in its place/);
});

up('upstream_tls.names takes URI: entries matched whole against a certificate\'s URI: subjectAltName entries (SPIFFE IDs), beside server_name; a server carrying another URI is refused, said in its down line', async () => {
  const web = 'spiffe://example.org/ns/prod/sa/web';
  // Node writes a value holding a comma quoted as JSON (URI:"https://x.example/a\u002cb"): read as the URI it is.
  const back = makePki(['web', 'comma', 'db'], 'servers CA', { sans: {
    web: ['DNS:servers.internal', `URI:${web}`],
    comma: ['DNS:servers.internal', 'URI:https://x.example/a,b'],
    db: ['DNS:servers.internal', 'URI:spiffe://example.org/ns/prod/sa/db'],
  } });
  const logs: LogRecord[] = [];
  const proxy = await proxyWith(logs, { upstreamTls: { ca: readFileSync(back.ca), serverName: 'servers.internal', names: [`URI:${web}`, 'URI:https://x.example/a,b'] } });
  const seen = new Map<string, number>();
  for (const id of ['web', 'comma', 'db']) await countingServer(id, proxy.port, seen, { tls: loadTls(back.cert(id)), plainRegistration: true });
  await eventually(() => ['web', 'comma'].every((id) => proxy.pools().P?.serving.includes(id)), 5000, 'web and comma serving');
  await eventually(() => logs.some((l) => l.event === 'down' && l.id === 'db'), 5000, "db's down line");
  assert.match(logs.find((l) => l.event === 'down' && l.id === 'db')!.msg, /\(the server's TLS certificate names DNS:servers\.internal, URI:spiffe:\/\/example\.org\/ns\/prod\/sa\/db, none of the names upstream_tls\.names \(--upstream-tls-names; upstreamTls\.names in the library\) allows \(URI:spiffe:\/\/example\.org\/ns\/prod\/sa\/web, URI:https:\/\/x\.example\/a,b\)/);
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: pkts(10) });
  assert.ok(r.every((x) => x.correct), JSON.stringify(r));
  assert.is((seen.get('web') ?? 0) + (seen.get('comma') ?? 0), 10);
  assert.is(seen.get('db') ?? 0, 0);
  // Each entry is checked as the others are: at start, in a file, and by the flag's parser (allowedNameProblem, serverNameProblem).
  const refused = await startProxy({ port: 0, upstreamTls: { ca: readFileSync(back.ca), names: ['URI:spiffe://Example.org/web'] } }).catch((e: unknown) => e);
  assert.is((refused as { code?: string }).code, 'TLS_CONFIG');
  assert.match(String(refused), /startProxy: upstreamTls\.names\[0\] 'URI:spiffe:\/\/Example\.org\/web': it is no SPIFFE ID: give spiffe:\/\/TRUST-DOMAIN\/PATH .*its trust domain 'Example\.org' is not lowercase/);
  const byIp = await startProxy({ port: 0, upstreamTls: { ca: readFileSync(back.ca), serverName: '10.0.0.7' } }).catch((e: unknown) => e);
  assert.match(String(byIp), /upstreamTls\.serverName '10\.0\.0\.7': it is an IP address, which TLS does not send as a server name \(RFC 6066; Node warns DEP0123/);
  const file = (u: string) => () => toRuntime(parseConfig(`upstream_tls:\n  ca: ${back.ca}\n${u}`, join(ctx.dir, 'p.yaml')));
  assert.throws(file('  server_name: servers.internal:443\n'), /upstream_tls\.server_name: the server name 'servers\.internal:443': it has a port/);
  assert.throws(file("  server_name: '*.servers.internal'\n"), /the server name '\*\.servers\.internal': it has a \*: the name sent is one name/);
  assert.throws(file('  names: [spiffe://example.org/web]\n'), /the name 'spiffe:\/\/example\.org\/web': it is a URI without its kind: give it as URI:spiffe:\/\/example\.org\/web/);
  assert.equal(file(`  server_name: servers.internal\n  names: ['URI:${web}']\n`)().options.upstreamTls?.serverName, 'servers.internal');
});

up("a link the proxy closes itself (a renewal's names or server name no longer allow its server, its CRL now revokes it) says the proxy's reason in its down line, not 'connection closed by the server'", async () => {
  const back = makePki(['a', 'b', 'c'], 'servers CA', { sans: { a: 'IP:127.0.0.1,DNS:a.servers.internal', b: 'IP:127.0.0.1,DNS:b.servers.internal', c: 'IP:127.0.0.1,DNS:c.servers.internal' } });
  const ca = readFileSync(back.ca);
  const logs: LogRecord[] = [];
  const proxy = await proxyWith(logs, { upstreamTls: { ca, names: ['*.servers.internal'] } });
  for (const id of ['a', 'b', 'c']) await countingServer(id, proxy.port, new Map(), { tls: loadTls(back.cert(id)), plainRegistration: true });
  await eventually(() => ['a', 'b', 'c'].every((id) => proxy.pools().P?.serving.includes(id)), 5000, 'all three serving');
  const downOf = (id: string) => logs.find((l) => l.event === 'down' && l.id === id)?.msg;
  // Names that no longer take a's certificate.
  assert.is(proxy.renewTls({ upstreamTls: { ca, names: ['b.servers.internal', 'c.servers.internal'] } }), 1);
  await eventually(() => downOf('a') !== undefined, 3000, "a's down line");
  assert.match(downOf('a')!, /^Server id a at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the proxy closed its link at the renewal of upstream_tls\.names: the server's TLS certificate names IP:127\.0\.0\.1, DNS:a\.servers\.internal, none of the names/);
  // A CRL that now revokes b's certificate.
  assert.is(proxy.renewTls({ upstreamTls: { ca, crl: readFileSync(back.crl(['b'])), names: ['b.servers.internal', 'c.servers.internal'] } }), 1);
  await eventually(() => downOf('b') !== undefined, 3000, "b's down line");
  assert.match(downOf('b')!, /^Server id b at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the proxy closed its link at the renewal of upstream_tls\.crl: the server's TLS certificate \(serial [0-9A-F]+, CN=b\) is revoked by the CRL of CN=servers CA there\)/);
  // A server name c's certificate does not carry (moving off a shared name that got out): its link open is closed, as a
  // new dial would be refused (before, it served on until the link failed).
  assert.is(proxy.renewTls({ upstreamTls: { ca, serverName: 'x.servers.internal' } }), 1);
  await eventually(() => downOf('c') !== undefined, 3000, "c's down line");
  assert.match(downOf('c')!, /^Server id c at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the proxy closed its link at the renewal of upstream_tls\.server_name: the server's TLS certificate names IP:127\.0\.0\.1, DNS:c\.servers\.internal, not x\.servers\.internal/);
  assert.not.ok(logs.some((l) => /connection closed by the server/.test(l.msg)), logs.filter((l) => l.event === 'down').map((l) => l.msg).join('\n'));
});

up("a server the proxy refuses by its upstream_tls is counted closed_by_proxy and shown refused, not down or unreachable: probed at probe_max, not dialled again and again, and at once at a renewal, which may take it back", async () => {
  const back = makePki(['a', 'b'], 'servers CA', { sans: { a: 'IP:127.0.0.1,DNS:a.servers.internal', b: 'IP:127.0.0.1,DNS:b.servers.internal' } });
  const ca = readFileSync(back.ca);
  const logs: LogRecord[] = [];
  const ejections: string[] = [];
  // The backoff would start at 100 ms; the slowest pace is a minute, which no probe of this test waits for.
  const proxy = await proxyWith(logs, {
    upstreamTls: { ca, names: ['*.servers.internal'] }, probeInitialMs: 100, probeMaxMs: 60_000,
    observer: { ejected: (policy, member, reason, backIn) => ejections.push(`${member} ${reason} ${backIn ? 'back' : 'out'}`) },
  });
  for (const id of ['a', 'b']) await countingServer(id, proxy.port, new Map(), { tls: loadTls(back.cert(id)), plainRegistration: true });
  await eventually(() => ['a', 'b'].every((id) => proxy.pools().P?.serving.includes(id)), 5000, 'both serving');
  assert.is(proxy.renewTls({ upstreamTls: { ca, names: ['b.servers.internal'] } }), 1);
  await eventually(() => logs.some((l) => l.event === 'down' && l.id === 'a'), 3000, "a's down line");
  const down = logs.find((l) => l.event === 'down' && l.id === 'a')!;
  assert.is(down.cause, 'closed_by_proxy', JSON.stringify(down));
  assert.match(down.msg, /^Server id a at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the proxy closed its link at the renewal of upstream_tls\.names: .*\); out of rotation until its certificate, or upstream_tls, changes: next probe in \d+ ms \(probe_max\), or at once at a reload of upstream_tls$/);
  // Up to a fifth early (jittered); it was the backoff's first step, 100 ms, then 200, 400...: a dial refused at each.
  assert.ok(Number(down.probeInMs) >= 48_000, `next probe in ${String(down.probeInMs)} ms`);
  assert.equal(ejections, ['a closed_by_proxy out'], 'counted as closed by the proxy, not unreachable');
  assert.is(proxy.pools().P!.states.a, 'refused');
  await new Promise((r) => setTimeout(r, 1500));
  assert.is(logs.filter((l) => l.event === 'probe' && l.id === 'a').length, 0, 'not dialled again meanwhile');
  // A renewal that takes it again probes it at once, and it serves.
  proxy.renewTls({ upstreamTls: { ca, names: ['a.servers.internal', 'b.servers.internal'] } });
  await eventually(() => proxy.pools().P?.serving.includes('a') ?? false, 3000, 'a back in rotation');
  assert.equal(ejections, ['a closed_by_proxy out', 'a probe_succeeded back']);
  // Refused at its handshake by a renewal's CRL: the same, its probe refused.
  const revoking = { ca, crl: readFileSync(back.crl(['a'])), names: ['a.servers.internal', 'b.servers.internal'] };
  proxy.renewTls({ upstreamTls: revoking });
  await eventually(() => proxy.pools().P?.states.a === 'refused', 3000, 'a refused');
  proxy.renewTls({ upstreamTls: revoking });
  const refusedProbe = () => logs.find((l) => l.event === 'down' && l.id === 'a' && /has been revoked \(CERT_REVOKED\)/.test(l.msg));
  await eventually(() => refusedProbe() !== undefined, 3000, 'its probe at the renewal, refused');
  assert.is(refusedProbe()!.cause, 'closed_by_proxy');
  assert.is(proxy.pools().P!.states.a, 'refused');
  assert.equal(ejections.slice(2), ['a closed_by_proxy out', 'a closed_by_proxy out']);
});

up("servers refused for the proxy's own CA or CRLs (a CA not in upstream_tls.ca, a CRL past its nextUpdate) are refused, not down: probed at probe_max, and at once at the renewal that mends it", async () => {
  const back = makePki(['a'], 'servers CA', { sans: { a: 'IP:127.0.0.1' } });
  const stranger = makePki([], 'another CA');
  const ca = readFileSync(back.ca);
  const logs: LogRecord[] = [];
  const ejections: string[] = [];
  // A CA rotation half done: the proxy trusts another CA than the one that signed the server's certificate.
  const proxy = await proxyWith(logs, {
    upstreamTls: { ca: readFileSync(stranger.ca) }, probeInitialMs: 100, probeMaxMs: 60_000,
    observer: { ejected: (_policy, member, reason, backIn) => ejections.push(`${member} ${reason} ${backIn ? 'back' : 'out'}`) },
  });
  await countingServer('a', proxy.port, new Map(), { tls: loadTls(back.cert('a')), plainRegistration: true });
  const downs = () => logs.filter((l) => l.event === 'down' && l.id === 'a');
  await eventually(() => downs().length === 1, 5000, "a's down line");
  // It was counted unreachable, shown down and dialled again at 100, 200, 400 ms ... each refused at its handshake.
  assert.is(downs()[0]!.cause, 'closed_by_proxy', JSON.stringify(downs()[0]));
  assert.ok(Number(downs()[0]!.probeInMs) >= 48_000, `next probe in ${String(downs()[0]!.probeInMs)} ms`);
  assert.is(proxy.pools().P!.states.a, 'refused');
  // The renewal that brings the right CA, with a CRL past its nextUpdate: probed at once, refused for the CRL.
  proxy.renewTls({ upstreamTls: { ca, crl: readFileSync(back.crl([], { made: '-3d', hours: 24 })) } });
  await eventually(() => downs().length === 2, 5000, 'its probe at the renewal, refused for the CRL');
  assert.match(downs()[1]!.msg, /CRL_HAS_EXPIRED|has expired/, downs()[1]!.msg);
  assert.is(downs()[1]!.cause, 'closed_by_proxy');
  assert.is(proxy.pools().P!.states.a, 'refused');
  // A fresh CRL: probed at once again, and it serves.
  proxy.renewTls({ upstreamTls: { ca, crl: readFileSync(back.crl([])) } });
  await eventually(() => proxy.pools().P?.serving.includes('a') ?? false, 5000, 'a back in rotation');
  assert.equal(ejections, ['a closed_by_proxy out', 'a closed_by_proxy out', 'a probe_succeeded back']);
});

up("a proxy verifying upstream_tls.server_name says so as it accepts a registration: a server whose certificate carries the name, and not its address, says nothing false; one whose certificate would be refused says so at error in the proxy's words", async () => {
  // Certificates for names alone, as an internal CA issues them: no IP: entry for the address the proxy dials.
  const back = makePki(['exact', 'wild', 'other'], 'servers CA', { sans: { exact: 'DNS:a.servers.internal', wild: 'DNS:*.servers.internal', other: 'DNS:*.other.internal' } });
  const proxy = await proxyWith([], { upstreamTls: { ca: readFileSync(back.ca), serverName: 'a.servers.internal' } });
  const said = new Map<string, LogRecord[]>();
  for (const id of ['exact', 'wild', 'other']) {
    const logs: LogRecord[] = [];
    said.set(id, logs);
    await countingServer(id, proxy.port, new Map(), { tls: loadTls(back.cert(id)), plainRegistration: true, logger: new Logger('server', memorySink(logs), 'info') });
  }
  await eventually(() => ['exact', 'wild'].every((id) => proxy.pools().P?.serving.includes(id)), 5000, 'exact and wild serving');
  const certLines = (id: string) => said.get(id)!.filter((l) => /^certificate_not_for/.test(String(l.event)));
  // It said the proxy "cannot reach this server over TLS ... names that address", while the proxy served it.
  assert.equal(certLines('exact'), [], 'the name carried exactly');
  assert.equal(certLines('wild'), [], 'a wildcard one label above it');
  const [refused, ...more] = certLines('other');
  assert.is(more.length, 0);
  assert.is(refused?.event, 'certificate_not_for_name', JSON.stringify(said.get('other')));
  assert.is(refused!.level, 'error');
  assert.match(refused!.msg, /^The reverse proxy at 127\.0\.0\.1:\d+ will refuse this server over TLS: it verifies the name a\.servers\.internal in this server's certificate \(--tls-cert\), as it said accepting this registration: the server's TLS certificate names DNS:\*\.other\.internal, not a\.servers\.internal, the name the proxy sends it and verifies .*: give the server a certificate with DNS:a\.servers\.internal \(or DNS:\*\.servers\.internal\) in its subjectAltName/);
  assert.not.ok(proxy.pools().P!.serving.includes('other'), 'the proxy refuses it indeed');
});

up('--upstream-tls-names refuses a URI cut at its comma (the rest would be a single-label DNS name of its own, the restriction silently wider): such a URI goes in the config file', async () => {
  const back = makePki([], 'servers CA');
  const proc = revproxy(['proxy', '--port', '0', '--upstream-tls-ca', back.ca, '--upstream-tls-names', 'URI:https://x.example/a,b']);
  assert.is(await proc.exited, 2, proc.out.join('\n'));
  assert.match(proc.out.join('\n'), /--upstream-tls-names: 'b' after 'URI:https:\/\/x\.example\/a' looks like the rest of a URI cut at its comma .*give a URI holding a comma in the config file's upstream_tls\.names/);
  // A URI followed by a name with its domain, or another URI, is taken.
  const ok = revproxy(['proxy', '--port', '0', '--upstream-tls-ca', back.ca, '--upstream-tls-names', 'URI:spiffe://example.org/ns/a,b.servers.internal', '--check']);
  assert.is(await ok.exited, 0, ok.out.join('\n'));
});

up('a reload that adds upstream_tls.server_name applies it to the next dials (applied upstream_tls): a server whose certificate names servers.internal alone, refused by its address before, is served after', async () => {
  const back = makePki(['server'], 'servers CA', { sans: { server: 'DNS:servers.internal' } });
  const file = join(ctx.dir, 'p.yaml');
  writeFileSync(file, `port: 0\nupstream_tls:\n  ca: ${back.ca}\n`);
  const proc = revproxy(['proxy', '--config', file]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/, 20_000))[1]);
  await countingServer('s1', port, new Map(), { tls: loadTls(back.cert('server')), plainRegistration: true });
  await proc.waitFor(/Server id s1 at 127\.0\.0\.1:\d+ is refused by this proxy's upstream_tls \(the server's TLS certificate does not name the address the proxy dials/);
  writeFileSync(file, `port: 0\nupstream_tls:\n  ca: ${back.ca}\n  server_name: servers.internal\n`);
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*p\.yaml: applied upstream_tls/);
  // The next probe dials with the name, and the server is back.
  await proc.waitFor(/Server id s1 answers again; back in rotation/, 10_000);
  const r = await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: pkts(3) });
  assert.ok(r.every((x) => x.correct), `${JSON.stringify(r)}\n${proc.out.join('\n')}`);
});

up('without upstream_tls nothing changes: tls with ca dials servers with the tls files, tls without ca in plain TCP; given, upstream_tls wins, and a reload takes it unless TLS toward servers turns on or off', () => {
  const front = makePki(['proxy']);
  const back = makePki(['proxy-client'], 'servers CA');
  const rt = (yaml: string) => toRuntime(parseConfig(yaml, join(ctx.dir, 'p.yaml'))).options;
  const mutual = `tls:\n  cert: ${front.cert('proxy').cert}\n  key: ${front.cert('proxy').key}\n  ca: ${front.ca}\n`;
  const oneWay = `tls:\n  cert: ${front.cert('proxy').cert}\n  key: ${front.cert('proxy').key}\n`;
  const upstream = `upstream_tls:\n  ca: ${back.ca}\n  cert: ${back.cert('proxy-client').cert}\n  key: ${back.cert('proxy-client').key}\n  names: ['*.servers.internal', '*.servers.internal', 10.0.0.7]\n`;
  const before = rt(mutual);
  assert.ok(before.upstreamTls === before.tls, 'tls with ca: the same files toward servers');
  assert.is(rt(oneWay).upstreamTls, undefined, 'tls without ca: plain TCP toward servers');
  assert.is(rt('port: 0\n').upstreamTls, undefined);
  const both = rt(mutual + upstream);
  assert.ok(both.upstreamTls!.ca!.equals(readFileSync(back.ca)), "upstream_tls's CA, not tls.ca");
  assert.ok(both.upstreamTls!.cert!.equals(readFileSync(back.cert('proxy-client').cert)));
  assert.equal(both.upstreamTls!.names, ['*.servers.internal', '10.0.0.7']);
  assert.ok(both.tls!.ca!.equals(readFileSync(front.ca)), "the port's own stays");
  assert.ok(rt(oneWay + upstream).upstreamTls, 'one-way TLS to clients, TLS toward servers');
  // Without its CA it is refused, naming the setting.
  assert.throws(() => rt(`upstream_tls:\n  names: [a.internal]\n`), /upstream_tls needs ca \(--upstream-tls-ca\)/);
  // When a reload takes it: new files or names at once; TLS toward servers turned on or off only at a restart.
  const reload = (a: string, b: string) => changes(parseConfig(a, 'a.yaml'), parseConfig(b, 'b.yaml')).find((c) => c.key === 'upstream_tls')?.reload;
  assert.is(reload(oneWay + upstream, oneWay + upstream.replace('10.0.0.7', '10.0.0.8')), 'new');
  assert.is(reload(oneWay + upstream, `${oneWay + upstream}  server_name: servers.internal\n`), 'new', 'a server name, as the names');
  assert.is(reload(mutual, mutual + upstream), 'new', 'beside tls.ca the dials only move to other files');
  assert.is(reload(oneWay, oneWay + upstream), 'restart', 'from plain TCP toward servers to TLS');
  assert.is(reload(oneWay + upstream, oneWay), 'restart');
});

up.run();
