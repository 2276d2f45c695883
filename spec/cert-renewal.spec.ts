/**
 * Certificates that renew under a running proxy (certbot's deploy hook, cert-manager rewriting the
 * files, an internal CA's day-long certificates): SIGHUP swaps in the renewed files for the next
 * handshakes, a bad set is refused with the running one kept, and each certificate's end is a
 * metric and a warning before it comes. Real openssl-made certificates, the real `revproxy proxy`.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { connect, runClient, startServer } from '../actors/index.js';
import { loadTls } from '../transport/tls.js';
import { handshake, makePki, presented, type Pki } from './certs.js';
import { eventually, LOCAL, rawConnect } from './helpers.js';
import { freePort } from '../bench/procs.js';
import { freshSuite, revproxy, type Fresh, type Proc } from './procs.js';
import { ExpiryWatch } from '../cli/cert-expiry.js';
import { Logger, memorySink, type LogRecord } from '../actors/logger.js';
import { ManualClock } from '../transport/clock.js';
import type { LoadedCert } from '../config/files.js';

const ctx: Fresh = { dir: '', servers: [] };
const renew = freshSuite('renewing certificates', 'revproxy-certs-', ctx);

/** Put `name`'s certificate and key of `pki` where the proxy reads its own (what a renewal does), and its CA as tls.ca. */
function install(pki: Pki, name: string): { cert: string; key: string; ca: string } {
  const at = { cert: join(ctx.dir, 'proxy.pem'), key: join(ctx.dir, 'proxy.key'), ca: join(ctx.dir, 'ca.pem') };
  copyFileSync(pki.cert(name).cert, at.cert);
  copyFileSync(pki.cert(name).key, at.key);
  copyFileSync(pki.ca, at.ca);
  return at;
}

/** `revproxy proxy --config` with the installed files, mutual TLS unless `mutual` is false (with `crl`, the CRL file in ctx.dir it names), and the admin endpoint. */
async function tlsProxy(mutual = true, crl?: string): Promise<{ proc: Proc; port: number; admin: string; file: string }> {
  const file = join(ctx.dir, 'p.yaml');
  writeFileSync(file, `port: 0\nadmin:\n  listen: 127.0.0.1:0\ntls:\n  cert: proxy.pem\n  key: proxy.key\n${mutual ? '  ca: ca.pem\n' : ''}${crl ? `  crl: ${crl}\n` : ''}`);
  const proc = revproxy(['proxy', '--config', file]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proc.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean) ?? '';
  return { proc, port, admin, file };
}

const metrics = async (admin: string): Promise<string> => (await fetch(`${admin}metrics`)).text();

/** The exit code of a start expected to be refused: one still running after `ms` (it took the files) is stopped, and reads 0. */
async function refusedStart(proc: Proc, ms = 10_000): Promise<number> {
  const timer = setTimeout(() => proc.kill('SIGTERM'), ms);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}
const notAfter = (pem: string): number => Math.floor(Date.parse(new X509Certificate(readFileSync(pem)).validTo) / 1000);

renew('under load: SIGHUP after a renewal serves the renewed certificate to new handshakes, open connections keep theirs, no request lost', async () => {
  const pki = makePki(['old', 'renewed', 'server', 'client']);
  const at = install(pki, 'old');
  const { proc, port, admin } = await tlsProxy();
  const client = { ...pki.cert('client'), ca: pki.ca };
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, tls: loadTls({ ...pki.cert('server'), ca: pki.ca }) }));
  const open = await handshake(port, client);
  let closed = false;
  open.on('close', () => (closed = true));
  assert.is(String(open.getPeerCertificate().subject.CN), 'old');

  // Load for the whole renewal: one connection kept open, and a new connection (a new handshake) per round of 20.
  let stop = false;
  const tally = { ok: 0, failed: [] as string[], rounds: 0 };
  const kept = await connect({ revproc: { host: LOCAL, port }, id: 'kept', tls: loadTls(client) });
  const steady = (async () => {
    for (let i = 0; !stop; i++) {
      const r = await kept.request('P', `k${i}`).then(() => 'ok', (e: Error) => e.message);
      if (r === 'ok') tally.ok++;
      else tally.failed.push(r);
    }
  })();
  const rounds = (async () => {
    while (!stop) {
      const rs = await runClient({ id: 'r', proxy: { host: LOCAL, port }, tls: loadTls(client), packets: Array.from({ length: 20 }, (_, i) => ({ srcid: 'r', privPoliId: 'P', payload: `r${i}` })) });
      tally.rounds++;
      for (const r of rs) if (r.correct) tally.ok++;
      else tally.failed.push(String(r.error));
    }
  })();
  try {
    await eventually(() => tally.rounds >= 2, 10_000, 'load before the renewal');
    // What certbot's deploy hook does: the renewed files in place, then `systemctl reload` (SIGHUP).
    install(pki, 'renewed');
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded .*p\.yaml: applied tls/);
    const since = tally.rounds;
    await eventually(() => tally.rounds >= since + 2, 10_000, 'load after the renewal');
    assert.is(await presented(port, client), 'renewed');
  } finally {
    stop = true;
    await Promise.all([steady, rounds]);
    await kept.close();
  }
  assert.equal(tally.failed, [], 'no request failed');
  assert.ok(tally.ok > 0);
  assert.not.ok(closed, 'the connection open before the renewal is still open');
  assert.is(String(open.getPeerCertificate().subject.CN), 'old', 'and keeps the certificate it began with');
  open.destroy();
  assert.not.ok(proc.out.some((l) => /restart/.test(l)), proc.out.join('\n'));
  const text = await metrics(admin);
  assert.match(text, /revproxy_reloads_total\{result="applied"\} 1/);
  assert.ok(text.includes(`revproxy_tls_cert_not_after_seconds{role="tls.cert",file="${at.cert}"} ${notAfter(pki.cert('renewed').cert)}`), text);
  assert.ok(text.includes(`revproxy_tls_cert_not_after_seconds{role="tls.ca",file="${at.ca}"} ${notAfter(pki.ca)}`), text);
});

renew("a reload whose tls change needs a restart (mutual TLS turned on) still reads the running files again: their renewal in place applies", async () => {
  // After `ca` was added to the file, every reload said "nothing applied: tls needs a restart", counted as applied,
  // and served the old certificate to its end: a certbot renewal after it did nothing until a restart.
  const pki = makePki(['old', 'renewed']);
  const at = install(pki, 'old');
  const { proc, port, admin, file } = await tlsProxy(false);
  writeFileSync(file, `${readFileSync(file, 'utf8')}  ca: ca.pem\n`);
  proc.kill('SIGHUP');
  const warned = await proc.waitFor(/tls changed in .*p\.yaml but takes effect only after a restart; running with the previous value; the running tls files are read again at each reload, so their renewal applies/);
  assert.ok(warned);
  assert.is(await presented(port, { ca: pki.ca }), 'old');
  install(pki, 'renewed');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*p\.yaml: applied tls/);
  await proc.waitFor(/tls changed in .*p\.yaml but takes effect only after a restart; running with the previous value; the running tls files were read again and their renewal applied/);
  // A client with no certificate of its own: mutual TLS waits for the restart.
  assert.is(await presented(port, { ca: pki.ca }), 'renewed', 'the renewed certificate serves new handshakes');
  const text = await metrics(admin);
  assert.ok(text.includes(`revproxy_tls_cert_not_after_seconds{role="tls.cert",file="${at.cert}"} ${notAfter(pki.cert('renewed').cert)}`), text);
  // The file moved to new paths and the running ones removed while the change waits: said, and the certificate loaded before kept.
  copyFileSync(at.cert, join(ctx.dir, 'next.pem'));
  copyFileSync(at.key, join(ctx.dir, 'next.key'));
  writeFileSync(file, readFileSync(file, 'utf8').replace('proxy.pem', 'next.pem').replace('proxy.key', 'next.key'));
  rmSync(at.cert);
  proc.kill('SIGHUP');
  await proc.waitFor(/the running tls files could not be read again \(.*proxy\.pem: cannot read it: it does not exist.*\): serving the certificate loaded before/);
  assert.is(await presented(port, { ca: pki.ca }), 'renewed');
});

renew('a new CA bundle (the old CA and the new, while peers move over) is taken on SIGHUP: peers with certificates of the new CA are let in', async () => {
  const oldCa = makePki(['proxy', 'client']);
  const newCa = makePki(['client', 'server'], 'revproxy next CA');
  install(oldCa, 'proxy');
  const { proc, port } = await tlsProxy();
  const moved = { ...newCa.cert('client'), ca: oldCa.ca };
  assert.instance(await presented(port, moved).catch((e: Error) => e), Error, 'a certificate of the new CA is refused before');
  writeFileSync(join(ctx.dir, 'ca.pem'), Buffer.concat([readFileSync(oldCa.ca), readFileSync(newCa.ca)]));
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied tls/);
  assert.is(await presented(port, moved), 'proxy');
  assert.is(await presented(port, { ...oldCa.cert('client'), ca: oldCa.ca }), 'proxy', 'and the old CA\'s still are');
  // A server of the new CA registers (the listener verifies it) and is dialled (the proxy's dials verify it with the new bundle too).
  ctx.servers.push(await startServer({ id: 'next', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, tls: loadTls({ ...newCa.cert('server'), ca: oldCa.ca }) }));
  const [answer] = await runClient({ id: 'c', proxy: { host: LOCAL, port }, tls: loadTls({ ...oldCa.cert('client'), ca: oldCa.ca }), packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] });
  assert.ok(answer!.correct, `answered through the server of the new CA: ${String(answer!.error)}\n${proc.out.join('\n')}`);
});

renew('a bad set of renewed files is refused, naming the file and what to do; the running certificate stays, the reload counts as refused, and --check refuses it too', async () => {
  const pki = makePki(['old', 'renewed']);
  const expired = makePki(['gone'], 'revproxy old CA', { days: 2, made: '-3d' });
  const at = install(pki, 'old');
  const { proc, port, admin, file } = await tlsProxy(false);
  const bad: Array<[string, () => void, RegExp]> = [
    ['a renewed certificate without its new key', () => copyFileSync(pki.cert('renewed').cert, at.cert), /p\.yaml:\d+:\d+: tls\.cert: the tls\.key file '.*proxy\.key' is not the private key of the tls\.cert file '.*proxy\.pem' \(a renewed certificate comes with its own key: install both\)/],
    ['a certificate file half written', () => writeFileSync(at.cert, readFileSync(pki.cert('renewed').cert).subarray(0, 100)), /p\.yaml:\d+:\d+: tls\.cert: the tls\.cert file '.*proxy\.pem' holds no PEM certificate/],
    ['a key file gone', () => rmSync(at.key), /p\.yaml:\d+:\d+: tls\.key: .*proxy\.key: cannot read it: it does not exist/],
    ['an expired certificate', () => install(expired, 'gone'), /p\.yaml:\d+:\d+: tls\.cert: the tls\.cert file '.*proxy\.pem' holds a certificate that expired on 20\d\d-[-\dT:.]+Z: every peer would refuse it: install the renewed certificate \(and its key\) there/],
  ];
  for (const [what, spoil, said] of bad) {
    install(pki, 'old');
    spoil();
    proc.kill('SIGHUP');
    await eventually(() => proc.out.filter((l) => /Reload refused/.test(l)).length === bad.findIndex((b) => b[0] === what) + 1, 5000, `the reload after ${what}`);
    const refusal = proc.out.filter((l) => /Reload refused/.test(l)).at(-1)!;
    assert.match(refusal, /\| error: Reload refused/, `${what}: an error line`);
    assert.match(refusal, said, what);
    assert.is(await presented(port, { ca: pki.ca }), 'old', `${what}: the running certificate stays`);
    const check = revproxy(['proxy', '--config', file, '--check']);
    assert.is(await check.exited, 1, `${what}: --check refuses it (systemctl reload runs it first): ${check.out.join('\n')}`);
    assert.match(check.out.join('\n'), said, what);
  }
  assert.match(await metrics(admin), /revproxy_reloads_total\{result="refused"\} 4/);
});

renew('a certificate close to its end is a warn line at start, at each reload and from --check; an expired one stops the start', async () => {
  const ending = makePki(['proxy'], 'revproxy test CA', { days: 3, made: '-60h' });
  install(ending, 'proxy');
  const said = /the tls\.cert certificate '.*proxy\.pem' expires on 20\d\d-[-\dT:.]+Z, in 1[12] hours: renew it, then send SIGHUP \(systemctl reload\) to load the renewed files/;
  const { proc, file } = await tlsProxy(false);
  assert.match(proc.out.find((l) => /expires on/.test(l)) ?? proc.out.join('\n'), new RegExp(`\\| warning: ${said.source}`));
  proc.kill('SIGHUP');
  await eventually(() => proc.out.filter((l) => said.test(l)).length === 2, 5000, 'the warning again at the reload');
  const check = revproxy(['proxy', '--config', file, '--check']);
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.match(check.out.join('\n'), new RegExp(`revproxy: warning: ${said.source}`));
  // A fresh one says nothing.
  install(makePki(['proxy']), 'proxy');
  const fresh = revproxy(['proxy', '--config', file, '--check']);
  assert.is(await fresh.exited, 0);
  assert.not.match(fresh.out.join('\n'), /expires on/);

  install(makePki(['proxy'], 'revproxy old CA', { made: '-3d' }), 'proxy');
  const late = revproxy(['proxy', '--config', file]);
  assert.is(await late.exited, 1, late.out.join('\n'));
  assert.match(late.out.join('\n'), /holds a certificate that expired on/);
});

renew('a set that cannot work is refused by a reload (the running one kept), by --check and at start: a certificate not valid yet, an expired intermediate in its chain, one for clientAuth only, a leaf as tls.ca; an encrypted key and a chain out of order say what to do', async () => {
  // Each was taken ("Reloaded ...: applied tls", --check valid), and peers then refused every handshake.
  const pki = makePki(['old', 'client-only'], 'revproxy test CA', { usages: { 'client-only': 'clientAuth' } });
  const future = makePki(['soon'], 'revproxy future CA', { made: '+1d' });
  const lapsed = makePki(['chained'], 'revproxy lapsed CA', { days: 5, intermediate: { made: '-3d', days: 1 } });
  const chain = makePki(['chained'], 'revproxy chain CA', { intermediate: {} });
  const at = install(pki, 'old');
  const { proc, port, admin, file } = await tlsProxy();
  const put = (files: { cert: string; key: string }, ca = pki.ca): void => {
    copyFileSync(files.cert, at.cert);
    copyFileSync(files.key, at.key);
    copyFileSync(ca, at.ca);
  };
  const bad: Array<[string, () => void, RegExp]> = [
    ['a certificate not valid for a day yet', () => put(future.cert('soon')), /tls\.cert: the tls\.cert file '.*proxy\.pem' holds a certificate valid only from 20\d\d-[-\dT:.]+Z, in 2[34] hours: every peer would refuse it until then \("certificate is not yet valid"\): check this machine's clock and the CA's/],
    ['a chain whose intermediate has expired', () => put(lapsed.cert('chained')), /tls\.cert: the tls\.cert file '.*proxy\.pem' holds the intermediate certificate CN=revproxy lapsed CA intermediate, which expired on 20\d\d-[-\dT:.]+Z: every peer would refuse the chain \("certificate has expired" at depth 1\): install the CA's renewed intermediate there/],
    ['a certificate for clientAuth only', () => put(pki.cert('client-only')), /tls\.cert: the tls\.cert file '.*proxy\.pem' holds a certificate whose extended key usage is clientAuth only, without serverAuth: this side serves it on its port, and every peer that dials it checks it is a TLS server's, and refuses it \("unsuitable certificate purpose"\)/],
    ['a leaf certificate as tls.ca', () => put(pki.cert('old'), pki.cert('client-only').cert), /the tls\.ca file '.*ca\.pem' holds no root CA certificate \(self-signed, valid now\) to verify peers with: CN=client-only is not a CA certificate \(a leaf, issued by CN=revproxy test CA\)/],
    ['an encrypted key', () => {
      put(pki.cert('old'));
      execFileSync('openssl', ['pkey', '-in', pki.cert('old').key, '-out', at.key, '-aes256', '-passout', 'pass:secret-pass']);
    }, /the tls\.key file '.*proxy\.key' is encrypted \(a passphrase protects it\), and revproxy needs the private key unencrypted: decrypt it with `openssl pkey -in \S*proxy\.key -out \S*proxy\.key\.plain`/],
    ['a chain with its intermediate first', () => {
      put(chain.cert('chained'), chain.ca);
      writeFileSync(at.cert, Buffer.concat([readFileSync(chain.intermediate!), readFileSync(chain.leaf!('chained'))]));
    }, /the tls\.cert file '.*proxy\.pem' begins with CN=revproxy chain CA intermediate, and the tls\.key file '.*proxy\.key' is the key of CN=chained, certificate 2 of 2 there: the leaf certificate \(the key's\) must come first, then the intermediates/],
  ];
  const client = { ...pki.cert('old'), ca: pki.ca };
  for (const [i, [what, spoil, said]] of bad.entries()) {
    put(pki.cert('old'));
    spoil();
    proc.kill('SIGHUP');
    await eventually(() => proc.out.filter((l) => /Reload refused/.test(l)).length === i + 1, 5000, `the reload after ${what}`);
    assert.match(proc.out.filter((l) => /Reload refused/.test(l)).at(-1)!, said, what);
    assert.is(await presented(port, client), 'old', `${what}: the running certificate stays`);
    const [check, start] = [revproxy(['proxy', '--config', file, '--check']), revproxy(['proxy', '--config', file])];
    assert.is(await refusedStart(check), 1, `${what}: --check refuses it: ${check.out.join('\n')}`);
    assert.match(check.out.join('\n'), said, `${what}: --check`);
    assert.is(await refusedStart(start), 1, `${what}: a start refuses it: ${start.out.join('\n')}`);
    assert.match(start.out.join('\n'), said, `${what}: a start`);
  }
  assert.match(await metrics(admin), /revproxy_reloads_total\{result="refused"\} 6/);
});

renew('what works, but not everywhere, is a warn line at start, at each reload and from --check: an expired old CA left in the bundle (named; its metric and the critical alert keep to the CA that verifies), a certificate without clientAuth the proxy presents to servers, one not naming the address clients dial', async () => {
  const pki = makePki(['proxy', 'server-only', 'elsewhere'], 'revproxy test CA', { usages: { 'server-only': 'serverAuth' }, sans: { elsewhere: 'DNS:proxy.example' } });
  const old = makePki([], 'revproxy old CA', { days: 1, made: '-3d' });
  const at = install(pki, 'proxy');
  writeFileSync(at.ca, Buffer.concat([readFileSync(old.ca), readFileSync(pki.ca)]));
  const { proc, port, admin, file } = await tlsProxy();
  // It said "expires on 2020-01-31..., in 0 minutes: renew it", not which of the bundle, and the metric read the old CA's end.
  const oldCa = /warning: the tls\.ca file '.*ca\.pem' holds a CA certificate that has expired: CN=revproxy old CA expired on 20\d\d-[-\dT:.]+Z: peers whose certificates it signed are refused, while the file's other CA certificates verify theirs: remove it from the file once its peers have moved to the renewed CA/;
  assert.ok(proc.out.some((l) => oldCa.test(l)), proc.out.join('\n'));
  assert.not.ok(proc.out.some((l) => /expires on|in 0 minutes|error: the tls\.ca certificate/.test(l)), `neither expiring nor expired (tls_cert_expired): ${proc.out.join('\n')}`);
  assert.is(await presented(port, { ...pki.cert('proxy'), ca: pki.ca }), 'proxy', 'the CA that verifies lets its peers in');
  const m = await metrics(admin);
  assert.ok(m.includes(`revproxy_tls_cert_not_after_seconds{role="tls.ca",file="${at.ca}"} ${notAfter(pki.ca)}`), m);
  assert.ok(notAfter(pki.ca) > Date.now() / 1000, 'so RevproxyCertificateExpired (not_after - time() <= 0) does not fire');

  // Fit to serve, not to be presented to a server with --tls-ca: taken, and said.
  copyFileSync(pki.cert('server-only').cert, at.cert);
  copyFileSync(pki.cert('server-only').key, at.key);
  proc.kill('SIGHUP');
  const purpose = /warning: the tls\.cert file '.*proxy\.pem' holds a certificate whose extended key usage is serverAuth only, without clientAuth: this side presents it when it dials, and a peer that asks for a certificate \(mutual TLS: a server with --tls-ca, a proxy with tls\.ca\) refuses it/;
  await proc.waitFor(purpose);
  assert.ok(proc.out.some((l) => /Reloaded .*p\.yaml: applied tls/.test(l)), proc.out.join('\n'));
  assert.is(proc.out.filter((l) => oldCa.test(l)).length, 2, 'the old CA said again at the reload');
  assert.is(await presented(port, { ...pki.cert('proxy'), ca: pki.ca }), 'server-only');
  const check = revproxy(['proxy', '--config', file, '--check']);
  assert.is(await check.exited, 0, check.out.join('\n'));
  for (const said of [oldCa, purpose]) assert.match(check.out.join('\n'), new RegExp(said.source.replace(/^warning: /, 'revproxy: warning: ')));

  // A certificate for another name: clients dialling 127.0.0.1 or localhost refuse it. A warning: they may dial a name it lists.
  copyFileSync(pki.cert('elsewhere').cert, at.cert);
  copyFileSync(pki.cert('elsewhere').key, at.key);
  const named = /warning: the tls\.cert file '.*proxy\.pem' is not for 127\.0\.0\.1 nor localhost \(host, --host\), which clients dial to reach this side: it names DNS:proxy\.example: they refuse it \(ERR_TLS_CERT_ALTNAME_INVALID\) unless they dial a name it lists/;
  const elsewhere = revproxy(['proxy', '--config', file, '--check']);
  assert.is(await elsewhere.exited, 0, elsewhere.out.join('\n'));
  assert.match(elsewhere.out.join('\n'), new RegExp(named.source.replace(/^warning: /, 'revproxy: warning: ')));
  proc.kill('SIGHUP');
  await proc.waitFor(named);
});

renew('a chain whose intermediate ends before its leaf: the metric and the warning describe the intermediate, when the chain stops working', async () => {
  // The metric read the leaf's end: the chain stopped verifying with nothing said and no alert.
  const pki = makePki(['proxy'], 'revproxy test CA', { days: 5, intermediate: { made: '-60h', days: 3 } });
  install(pki, 'proxy');
  const { proc, admin } = await tlsProxy(false);
  assert.match(proc.out.join('\n'), /warning: the tls\.cert certificate '.*proxy\.pem' \(CN=revproxy test CA intermediate, of the certificates in it\) expires on 20\d\d-[-\dT:.]+Z, in 1[12] hours: renew it/);
  const m = await metrics(admin);
  assert.ok(m.includes(`revproxy_tls_cert_not_after_seconds{role="tls.cert",file="${join(ctx.dir, 'proxy.pem')}"} ${notAfter(pki.intermediate!)}`), m);
  assert.ok(notAfter(pki.intermediate!) < notAfter(pki.leaf!('proxy')));
});

renew('a server (revproxy server --tls-cert) reads its renewed files on SIGHUP for its next handshakes; a bad set is refused and the old one kept', async () => {
  const pki = makePki(['old', 'renewed', 'client']);
  const at = install(pki, 'old');
  const proc = revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', '1', '--tls-cert', at.cert, '--tls-key', at.key, '--tls-ca', at.ca]);
  const port = Number((await proc.waitFor(/Listening on port (\d+)/))[1]);
  const proxyLike = { ...pki.cert('client'), ca: pki.ca };
  assert.is(await presented(port, proxyLike), 'old');
  install(pki, 'renewed');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded the TLS files \(--tls-cert, --tls-key, --tls-ca\): new connections and registrations use them/);
  assert.is(await presented(port, proxyLike), 'renewed');
  // A renewed certificate without its key: refused, the running one kept.
  copyFileSync(pki.cert('old').cert, at.cert);
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused, still using the TLS files read before: the --tls-key file '.*proxy\.key' is not the private key of the --tls-cert file '.*proxy\.pem'/);
  assert.is(await presented(port, proxyLike), 'renewed');
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0, proc.out.join('\n'));
});

renew('a server refuses at start a certificate for clientAuth only and a leaf as --tls-ca, and on SIGHUP one not valid yet (its own kept); one without clientAuth, which it presents as it registers, is a warn line', async () => {
  const pki = makePki(['old', 'client-only', 'server-only'], 'revproxy test CA', { usages: { 'client-only': 'clientAuth', 'server-only': 'serverAuth' } });
  const future = makePki(['soon'], 'revproxy future CA', { made: '+1d' });
  const server = (files: { cert: string; key: string }, ca = pki.ca): Proc => revproxy(['server', '--id', 's1', '--pp', 'P', '--revproc', '1', '--tls-cert', files.cert, '--tls-key', files.key, '--tls-ca', ca]);
  const clientOnly = server(pki.cert('client-only'));
  assert.is(await refusedStart(clientOnly), 1, clientOnly.out.join('\n'));
  assert.match(clientOnly.out.join('\n'), /the --tls-cert file '.*client-only\.pem' holds a certificate whose extended key usage is clientAuth only, without serverAuth: this side serves it on its port/);
  const leafCa = server(pki.cert('old'), pki.cert('old').cert);
  assert.is(await refusedStart(leafCa), 1, leafCa.out.join('\n'));
  assert.match(leafCa.out.join('\n'), /the --tls-ca file '.*old\.pem' holds no root CA certificate \(self-signed, valid now\) to verify peers with: CN=old is not a CA certificate/);

  const at = install(pki, 'server-only');
  const proc = server(at, at.ca);
  await proc.waitFor(/warning: the --tls-cert file '.*proxy\.pem' holds a certificate whose extended key usage is serverAuth only, without clientAuth: this side presents it when it dials/);
  const port = Number((await proc.waitFor(/Listening on port (\d+)/))[1]);
  install(future, 'soon');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused, still using the TLS files read before: the --tls-cert file '.*proxy\.pem' holds a certificate valid only from 20\d\d-[-\dT:.]+Z, in 2[34] hours/);
  assert.is(await presented(port, { ...pki.cert('old'), ca: pki.ca }), 'server-only');
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0, proc.out.join('\n'));
});

renew("etcd's client certificates (registry.tls) are read again on SIGHUP: their warning says so, and a reload while etcd is away takes the renewed files untried, their metric with them", async () => {
  const ending = makePki([], 'revproxy etcd CA', { days: 3, made: '-60h' });
  const ca = join(ctx.dir, 'etcd-ca.pem');
  copyFileSync(ending.ca, ca);
  // No etcd: the proxy starts and serves without it (README, "Running a fleet").
  const proc = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--registry', `etcds://127.0.0.1:${await freePort()}`, '--registry-ca', ca]);
  await proc.waitFor(/the registry\.tls\.ca certificate '.*etcd-ca\.pem' expires on .*: renew it, then send SIGHUP \(systemctl reload\) to load the renewed files/);
  const admin = (await proc.waitFor(/Admin endpoint on (http:\S+)/))[1]!;
  // A SIGHUP before it listens is ignored (the admin endpoint is up a moment before, while etcd's client loads).
  await proc.waitFor(/Running the reverse proxy on port/);
  const renewed = makePki([]);
  copyFileSync(renewed.ca, ca);
  proc.kill('SIGHUP');
  await proc.waitFor(/The renewed registry\.tls could not be tried against etcd \(etcd is not reachable at etcds:\/\/127\.0\.0\.1:\d+: connection refused\): the proxy's etcd client uses it from now on/);
  await proc.waitFor(/Reloaded .*: applied registry\.tls/);
  assert.ok((await metrics(admin)).includes(`revproxy_tls_cert_not_after_seconds{role="registry.tls.ca",file="${ca}"} ${notAfter(renewed.ca)}`), 'the certificate etcd\'s client has now');
});

renew('a certificate that ends while the proxy runs: an error line as it does, once an hour after, /readyz not ready; one coming within its warning window while it runs is said then, once a day after', async () => {
  // They were said at start and at a reload only: a proxy started 80 days into a 90-day certificate never said it,
  // and after its end it said only that peers closed their handshakes, /readyz still ready.
  const ending = makePki(['proxy'], 'revproxy test CA', { days: 1, made: '-86390' }); // ends about 10 s from now
  install(ending, 'proxy');
  const { proc, admin } = await tlsProxy(false);
  await proc.waitFor(/warning: the tls\.cert certificate '.*proxy\.pem' expires on .*: renew it/);
  assert.is((await fetch(`${admin}readyz`)).status, 200);
  const line = (await proc.waitFor(/error: (the tls\.cert certificate '.*proxy\.pem' expired on [-\dT:.]+Z: peers refuse this side's new TLS handshakes; renew it, then send SIGHUP)/, 20_000))[1]!;
  const ready = await fetch(`${admin}readyz`);
  assert.is(ready.status, 503);
  const body = await ready.text();
  assert.ok(body.includes('CERT_EXPIRED') && body.includes(line.slice(0, 40)), body);

  // On a manual clock, the schedule: a 90-day certificate 80 days in comes within its window (7 days) on day 83.
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const day = 24 * 3600 * 1000;
  const start = Date.UTC(2026, 0, 1);
  const cert: LoadedCert = { role: 'tls.cert', file: 'p.pem', notBefore: start - 80 * day, notAfter: start + 10 * day };
  const watch = new ExpiryWatch(new Logger('proxy', memorySink(logs), 'info'), () => [cert], { clock, wallNow: () => start + clock.now() });
  watch.check();
  assert.equal(logs, [], 'nothing to say on day 80');
  clock.advance(3 * day - 60_000);
  assert.equal(logs, [], 'nor just before day 83');
  clock.advance(62_000);
  assert.equal(logs.map((l) => [l.level, l.event]), [['warn', 'tls_cert_expiring']], 'said as it comes within its window');
  clock.advance(day);
  assert.is(logs.length, 2, 'and once a day after');
  clock.advance(6 * day);
  assert.equal(logs.slice(2).map((l) => [l.level, l.event]), [['warn', 'tls_cert_expiring'], ['warn', 'tls_cert_expiring'], ['warn', 'tls_cert_expiring'], ['warn', 'tls_cert_expiring'], ['warn', 'tls_cert_expiring'], ['error', 'tls_cert_expired']]);
  clock.advance(3 * 3600 * 1000 + 10_000);
  assert.is(logs.filter((l) => l.event === 'tls_cert_expired').length, 4, 'the end said again once an hour');
  assert.equal(watch.ended('tls.cert'), cert);
  watch.stop();
  clock.advance(day);
  assert.is(logs.filter((l) => l.event === 'tls_cert_expired').length, 4, 'stopped: nothing more');
});

const handshakeFailures = async (admin: string): Promise<string> => [...(await metrics(admin)).matchAll(/^revproxy_tls_handshake_failures_total\{reason="(\w+)"\} (\d+)$/gm)].filter((m) => m[2] !== '0').map((m) => `${m[1]}=${m[2]}`).sort().join(' ');

renew('tls.crl renewed in place and SIGHUP: a client the new CRL revokes is refused at its next handshake and its open connection closed, the others kept and served; each refusal counted', async () => {
  const pki = makePki(['proxy', 'server', 'kept', 'revoked']);
  install(pki, 'proxy');
  pki.crl([], { file: join(ctx.dir, 'ca.crl') });
  const { proc, port, admin } = await tlsProxy(true, 'ca.crl');
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, tls: loadTls({ ...pki.cert('server'), ca: pki.ca }) }));
  const files = (name: string) => ({ ...pki.cert(name), ca: pki.ca });
  const kept = await connect({ revproc: { host: LOCAL, port }, id: 'kept', tls: loadTls(files('kept')), maxAttempts: 1 });
  const doomed = await handshake(port, files('revoked'));
  let doomedClosed = false;
  doomed.on('close', () => (doomedClosed = true));
  try {
    assert.ok(await kept.request('P', 'before'));
    // The CA revokes one certificate: its new CRL is written over the old one, then `systemctl reload`.
    pki.crl(['revoked'], { file: join(ctx.dir, 'ca.crl') });
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded .*p\.yaml: applied tls; secrets re-read; closed 1 connection\(s\) whose peer's certificate tls\.crl now revokes \(tls_revoked lines name them\)/);
    assert.match(proc.out.find((l) => /Closed the connection from/.test(l)) ?? proc.out.join('\n'), /\| warning: Closed the connection from 127\.0\.0\.1:\d+: its peer's TLS certificate \(serial [0-9A-F]+, CN=revoked\) is revoked by the CRL of CN=revproxy test CA in tls\.crl/);
    await eventually(() => doomedClosed, 3000, 'the revoked peer\'s open connection closed');
    const again = await handshake(port, files('revoked')).then((s) => s.destroy(), (e: Error) => e);
    assert.instance(again, Error, 'a new handshake with the revoked certificate is refused');
    await proc.waitFor(/Refused a TLS connection from 127\.0\.0\.1: the peer's TLS certificate has been revoked \(CERT_REVOKED\): its CA lists it in this side's --tls-crl/);
    assert.ok(await kept.request('P', 'after'), 'a connection the CRL does not revoke is kept, and served');
    const [fresh] = await runClient({ id: 'c', proxy: { host: LOCAL, port }, tls: loadTls(files('kept')), packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] });
    assert.ok(fresh!.correct, String(fresh!.error));
    assert.ok(ctx.servers[0]!.actor.getSnapshot().status === 'active');
    assert.is(await handshakeFailures(admin), 'revoked=1');
  } finally {
    doomed.destroy();
    await kept.close();
  }
});

renew("tls.crl at a reload: a CRL under its CA's name but another key closes no connection, though it lists the peer; its CA's own CRL then does", async () => {
  const pki = makePki(['proxy', 'server', 'victim']);
  const forger = makePki([], 'revproxy test CA');
  install(pki, 'proxy');
  const crl = join(ctx.dir, 'ca.crl');
  pki.crl([], { file: crl });
  const { proc, port } = await tlsProxy(true, 'ca.crl');
  const victim = await handshake(port, { ...pki.cert('victim'), ca: pki.ca });
  let closed = false;
  victim.on('close', () => (closed = true));
  try {
    // Signed by another key: it names the CA and lists the victim's serial number, and was matched by its name alone.
    forger.crl([join(pki.dir, 'victim')], { file: crl });
    proc.kill('SIGHUP');
    const line = (await proc.waitFor(/Reloaded .*p\.yaml: applied tls.*/))[0]!;
    assert.match(line, /; no connection closed$/, line);
    await proc.waitFor(/warning: the CRL of CN=revproxy test CA in the tls\.crl file '.*ca\.crl' is not signed by the key of that CA in tls\.ca/);
    assert.not.ok(proc.out.some((l) => /Closed the connection/.test(l)), proc.out.join('\n'));
    assert.not.ok(closed, 'the connection is open');
    pki.crl(['victim'], { file: crl });
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded .*p\.yaml: applied tls; secrets re-read; closed 1 connection\(s\) whose peer's certificate tls\.crl now revokes/);
    await eventually(() => closed, 3000, "closed once its CA's CRL lists it");
  } finally {
    victim.destroy();
  }
});

/** /readyz's status and body. */
async function readyz(admin: string): Promise<{ status: number; body: { ready: boolean; reasons?: Array<{ check: string; code: string; message: string }>; warnings?: Array<{ check: string; code: string; message: string }> } }> {
  const res = await fetch(`${admin}readyz`);
  return { status: res.status, body: await res.json() as never };
}

renew('a tls.crl that passes its nextUpdate while the proxy runs: a warning before, then an error, and each of its peers refused (CRL_HAS_EXPIRED) until a fresh one is loaded; its nextUpdate is a metric, and a warning of /readyz, which stays ready', async () => {
  const pki = makePki(['proxy', 'client']);
  install(pki, 'proxy');
  const crl = join(ctx.dir, 'ca.crl');
  // Due in 20 s: its last third (the warning window) begins 13 s after it was made.
  pki.crl([], { file: crl, seconds: 20 });
  const nextUpdate = Math.floor(Date.parse(execFileSync('openssl', ['crl', '-in', crl, '-noout', '-nextupdate'], { encoding: 'utf8' }).split('=')[1]!) / 1000);
  const { proc, port, admin } = await tlsProxy(true, 'ca.crl');
  const client = { ...pki.cert('client'), ca: pki.ca };
  (await handshake(port, client)).destroy();
  assert.ok((await metrics(admin)).includes(`revproxy_tls_crl_next_update_seconds{role="tls.crl",file="${crl}",issuer="CN=revproxy test CA"} ${nextUpdate}`));
  assert.equal(await readyz(admin), { status: 200, body: { ready: true } });
  await proc.waitFor(/warning: the CRL of CN=revproxy test CA in the tls\.crl file '.*ca\.crl' passes its nextUpdate on [-\dT:.]+Z, in \d+ minutes: TLS then refuses every peer certificate that CA signed \(CRL_HAS_EXPIRED\)/, 20_000);
  const line = (await proc.waitFor(/error: (the CRL of CN=revproxy test CA in the tls\.crl file '.*ca\.crl' passed its nextUpdate on [-\dT:.]+Z: TLS refuses every peer certificate that CA signed \(CRL_HAS_EXPIRED\).*)$/, 20_000))[1]!;
  assert.instance(await handshake(port, client).catch((e: Error) => e), Error, 'refused at its handshake, with no reload');
  await proc.waitFor(/Refused a TLS connection from 127\.0\.0\.1: the peer's TLS certificate could not be checked for revocation: the CRL of its CA in this side's --tls-crl is past its nextUpdate \(CRL_HAS_EXPIRED\)/);
  // /readyz ignored it: ready, with nothing said. Still ready (its CA's peers alone are refused, and every proxy reading the
  // same published CRL with it: out of rotation together they would refuse everyone), with the error's words as a warning.
  for (let i = 0; i < 5; i++) {
    assert.equal(await readyz(admin), { status: 200, body: { ready: true, warnings: [{ check: 'tls', code: 'CRL_EXPIRED', message: line }] } });
  }
  assert.is(proc.out.filter((l) => /passed its nextUpdate/.test(l)).length, 1, 'said once in the log, not at each probe');
  pki.crl([], { file: crl });
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied tls/);
  (await handshake(port, client)).destroy();
  assert.equal(await readyz(admin), { status: 200, body: { ready: true } }, 'a fresh CRL loaded: nothing to say');
});

renew("revproxy_tls_handshake_failures_total counts the proxy's failed handshakes by reason, as its tls_refused lines say them", async () => {
  const pki = makePki(['proxy', 'client']);
  const rogue = makePki(['client'], 'rogue CA');
  install(pki, 'proxy');
  const { proc, port, admin } = await tlsProxy();
  assert.is(await handshakeFailures(admin), '', 'every reason at 0 before any');
  assert.instance(await handshake(port, { ...rogue.cert('client'), ca: pki.ca }).catch((e: Error) => e), Error);
  assert.instance(await handshake(port, { ca: pki.ca }).catch((e: Error) => e), Error);
  for (const bytes of ['GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n', Buffer.from([0, 0, 0, 5, 1, 2, 3, 4, 5])]) {
    const sock = await rawConnect(port);
    sock.on('error', () => {});
    sock.write(bytes);
    await new Promise((r) => sock.once('close', r));
  }
  await eventually(async () => (await handshakeFailures(admin)) === 'http=1 no_certificate=1 plain_tcp=1 unknown_ca=1', 3000, 'each counted under its reason');
  assert.is(proc.out.filter((l) => /Refused a TLS connection/.test(l)).length, 4, proc.out.join('\n'));
});

renew('tls.crl is checked at start, by --check and at each reload: a file that is no CRL is refused; one past its nextUpdate, one of no CA in tls.ca, or a CA without its CRL is a warning saying which peers will be refused', async () => {
  const pki = makePki(['proxy', 'client']);
  const other = makePki([], 'revproxy other CA');
  install(pki, 'proxy');
  const crl = join(ctx.dir, 'ca.crl');
  const file = join(ctx.dir, 'p.yaml');
  writeFileSync(file, 'port: 0\ntls:\n  cert: proxy.pem\n  key: proxy.key\n  ca: ca.pem\n  crl: ca.crl\n');
  const check = async (): Promise<{ code: number | null; out: string }> => {
    const c = revproxy(['proxy', '--config', file, '--check']);
    return { code: await c.exited, out: c.out.join('\n') };
  };
  // The CA's certificate where its CRL goes: refused, naming the setting.
  copyFileSync(pki.ca, crl);
  let r = await check();
  assert.is(r.code, 1, r.out);
  assert.match(r.out, /tls\.crl: the tls\.crl file '.*ca\.crl' holds no PEM CRL \(-----BEGIN X509 CRL-----\): it holds a certificate \(a CA's certificate goes in the CA file, the CRL it issues here\): give the CRL of each CA in tls\.ca, in PEM/);
  // Past its nextUpdate: valid, with a warning (TLS refuses every peer of that CA meanwhile).
  pki.crl([], { file: crl, made: '-3d' });
  r = await check();
  assert.is(r.code, 0, r.out);
  assert.match(r.out, /revproxy: warning: the CRL of CN=revproxy test CA in the tls\.crl file '.*ca\.crl' passed its nextUpdate on 20\d\d-[-\dT:.]+Z: TLS refuses every peer certificate that CA signed \(CRL_HAS_EXPIRED\)/);
  // Another CA's CRL: both warnings, the CRL's and the CA's without one.
  other.crl([], { file: crl });
  r = await check();
  assert.is(r.code, 0, r.out);
  assert.match(r.out, /warning: the CRL of CN=revproxy other CA in the tls\.crl file '.*ca\.crl' was not issued by any CA in tls\.ca/);
  assert.match(r.out, /warning: the CA CN=revproxy test CA in tls\.ca has no CRL in the tls\.crl file '.*ca\.crl': TLS refuses every peer certificate it signed \(UNABLE_TO_GET_CRL/);
  // Started so, the proxy says it (and refuses such peers, saying why); a reload with a good CRL clears it; one with no CRL is refused, the running one kept.
  const proc = revproxy(['proxy', '--config', file]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  assert.ok(proc.out.some((l) => /\| warning: the CA CN=revproxy test CA in tls\.ca has no CRL/.test(l)), proc.out.join('\n'));
  const client = { ...pki.cert('client'), ca: pki.ca };
  assert.instance(await handshake(port, client).catch((e: Error) => e), Error);
  await proc.waitFor(/Refused a TLS connection from 127\.0\.0\.1: the peer's TLS certificate could not be checked for revocation: this side's --tls-crl has no CRL from the CA that signed it \(UNABLE_TO_GET_CRL/);
  pki.crl([], { file: crl });
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied tls/);
  (await handshake(port, client)).destroy();
  writeFileSync(crl, 'not a CRL\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused, still running the previous configuration: .*tls\.crl: the tls\.crl file '.*ca\.crl' holds no PEM CRL/);
  (await handshake(port, client)).destroy();
});

renew.run();
