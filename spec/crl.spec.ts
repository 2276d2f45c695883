/**
 * CRLs read by transport/crl.ts from files openssl makes, as OpenSSL reads them;
 * which CRL a reload takes to revoke an open connection's peer (only one signed by the key that signed
 * the peer's certificate); and their nextUpdate watched as certificates' ends are (cli/cert-expiry.ts).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { sign, X509Certificate } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { crlBlocks, issuedBy, namesOf, parseCrl } from '../transport/crl.js';
import { crlWarnings, loadTls, revokedBy, TlsConfigError, type TlsMaterial } from '../transport/tls.js';
import { loadedCerts, type LoadedCert } from '../config/files.js';
import { ExpiryWatch } from '../cli/cert-expiry.js';
import { Logger, memorySink, type LogRecord } from '../actors/logger.js';
import { ManualClock } from '../transport/clock.js';
import { makePki } from './certs.js';
import { tempDir } from './helpers.js';

const crls = suite('CRLs');

const certOf = (path: string): X509Certificate => new X509Certificate(readFileSync(path));
const serialOf = (path: string): string => certOf(path).serialNumber.toUpperCase().replace(/^0+(?=.)/, '');
/** A CRL's lastUpdate or nextUpdate as `openssl crl` prints it, in ms. */
const opensslDate = (file: string, which: 'lastupdate' | 'nextupdate'): number => Date.parse(execFileSync('openssl', ['crl', '-in', file, '-noout', `-${which}`], { encoding: 'utf8' }).split('=')[1]!.trim());
const NAMES = { cert: 'tls.cert', key: 'tls.key', ca: 'tls.ca' };

for (const key of ['ec', 'rsa', 'ed25519'] as const) {
  crls(`a CRL of a ${key} CA that openssl made is read as OpenSSL reads it: its issuer, dates, revoked serial numbers and signature`, () => {
    const pki = makePki(['a', 'b', 'kept'], `revproxy ${key} CA`, { key });
    const file = pki.crl(['a', 'b']);
    const [block, ...more] = crlBlocks(readFileSync(file));
    assert.is(more.length, 0);
    const crl = parseCrl(block!);
    const ca = certOf(pki.ca);
    assert.is(crl.issuerName, ca.subject.replace(/\n/g, ', '), "named as Node names the CA's subject");
    assert.ok(crl.issuer.equals(namesOf(ca).subject), "its issuer's DER is the CA's subject's");
    assert.ok(namesOf(certOf(pki.cert('a').cert)).issuer.equals(crl.issuer), "and the issuer's of the certificates the CA signed");
    assert.equal([...crl.revoked].sort(), [serialOf(pki.cert('a').cert), serialOf(pki.cert('b').cert)].sort());
    assert.is(crl.thisUpdate, opensslDate(file, 'lastupdate'));
    assert.is(crl.nextUpdate, opensslDate(file, 'nextupdate'));
    assert.ok(issuedBy(crl, ca), 'its CA signed it');
    const rekeyed = makePki([], `revproxy ${key} CA`, { key });
    assert.not.ok(issuedBy(crl, certOf(rekeyed.ca)), 'a CA of the same name under another key did not');
  });
}

crls('a CRL of 5,000 entries is read whole (a parser for untrusted input stops at 10,000 elements: about 1,400 entries)', () => {
  const pki = makePki([]);
  pki.crl();
  // openssl ca's database, written as `openssl ca -revoke` writes it: 5,000 serial numbers.
  const serials = Array.from({ length: 5000 }, (_, i) => (0x1000 + i * 7919).toString(16).toUpperCase());
  writeFileSync(join(pki.dir, 'ca.index.txt'), serials.map((s, i) => `R\t301231000000Z\t261201000000Z,keyCompromise\t${s.length % 2 ? `0${s}` : s}\tunknown\t/CN=c${i}\n`).join(''));
  const crl = parseCrl(crlBlocks(readFileSync(pki.crl()))[0]!);
  assert.is(crl.revoked.size, 5000);
  assert.ok(serials.every((s) => crl.revoked.has(s)));
  assert.ok(issuedBy(crl, certOf(pki.ca)));
});

crls('a CRL without nextUpdate (RFC 5280 makes it optional) is read, and has no nextUpdate to watch', () => {
  const pki = makePki([]);
  const der = Buffer.from(readFileSync(pki.crl(), 'latin1').replace(/-----(BEGIN|END) X509 CRL-----/g, ''), 'base64');
  // openssl always writes one: cut it out of what is signed, and sign that with the CA's key.
  const tlv = (buf: Buffer, at: number): { start: number; end: number } => {
    const len = buf[at + 1]!;
    const n = len & 0x80 ? len & 0x7f : 0;
    const size = n ? buf.subarray(at + 2, at + 2 + n).reduce((a, b) => a * 256 + b, 0) : len;
    return { start: at + 2 + n, end: at + 2 + n + size };
  };
  const header = (tag: number, size: number): Buffer => Buffer.from(size < 128 ? [tag, size] : size < 256 ? [tag, 0x81, size] : [tag, 0x82, size >> 8, size & 0xff]);
  const outer = tlv(der, 0);
  const tbs = tlv(der, outer.start);
  const fields: Array<{ at: number; end: number }> = [];
  for (let at = tbs.start; at < tbs.end; at = fields.at(-1)!.end) fields.push({ at, end: tlv(der, at).end });
  // version, signature, issuer, thisUpdate, nextUpdate, then the rest
  const content = Buffer.concat(fields.filter((_, i) => i !== 4).map((f) => der.subarray(f.at, f.end)));
  const signed = Buffer.concat([header(0x30, content.length), content]);
  const algorithm = der.subarray(tbs.end, tlv(der, tbs.end).end);
  const signature = Buffer.concat([Buffer.from([0]), sign('sha256', signed, readFileSync(join(pki.dir, 'ca.key')))]);
  const list = Buffer.concat([signed, algorithm, header(0x03, signature.length), signature]);
  const pem = `-----BEGIN X509 CRL-----\n${Buffer.concat([header(0x30, list.length), list]).toString('base64')}\n-----END X509 CRL-----\n`;
  assert.match(execFileSync('openssl', ['crl', '-noout', '-nextupdate'], { input: pem, encoding: 'utf8' }), /nextUpdate=NONE/, 'openssl reads it so');
  const crl = parseCrl(pem);
  assert.is(crl.nextUpdate, undefined);
  assert.ok(issuedBy(crl, certOf(pki.ca)), 'its signature verifies');
  const file = join(tempDir('revproxy-crl-'), 'ca.crl');
  writeFileSync(file, pem);
  assert.equal(loadedCerts({ crl: file }, loadTls({ ca: pki.ca, crl: file }), { cert: 'tls.cert', ca: 'tls.ca', crl: 'tls.crl' }), []);
});

crls('a CRL signed with RSA-PSS, whose signature is not checked here, is named by a warning: a reload closes no connection it revokes', () => {
  const pki = makePki(['a'], 'revproxy rsa CA', { key: 'rsa' });
  const file = pki.crl(['a'], { pss: true });
  const crl = parseCrl(crlBlocks(readFileSync(file))[0]!);
  assert.is(crl.algorithm, '1.2.840.113549.1.1.10');
  assert.is(crl.digest, undefined);
  const tls = loadTls({ ca: pki.ca, crl: file })!;
  assert.equal(crlWarnings(tls, NAMES, file), [`the CRL of CN=revproxy rsa CA in the tls.crl file '${file}' is signed with an algorithm revproxy cannot check (1.2.840.113549.1.1.10, such as RSA-PSS): TLS checks it at each handshake, but a reload closes no open connection it revokes (only a CRL whose signature is checked here does)`]);
  assert.is(revokedBy(tls)!(certOf(pki.cert('a').cert), () => [certOf(pki.ca)]), undefined);
});

crls('a CRL block that is not a CRL is refused, naming the file and what is wrong', () => {
  const pki = makePki([]);
  const dir = tempDir('revproxy-crl-');
  const refusal = (text: string): string => {
    const file = join(dir, 'bad.crl');
    writeFileSync(file, text);
    try {
      loadTls({ ca: pki.ca, crl: file });
    } catch (err) {
      assert.instance(err, TlsConfigError);
      return (err as Error).message;
    }
    throw new Error('taken');
  };
  const block = (base64: string): string => `-----BEGIN X509 CRL-----\n${base64}\n-----END X509 CRL-----\n`;
  assert.match(refusal(block('not*base64')), /^the --tls-crl file '.*bad\.crl' holds a CRL that cannot be read \(the only one: its base64 is broken\): give the CRL of each CA in --tls-ca, in PEM/);
  // A certificate's DER between a CRL's markers: a SEQUENCE, not a CertificateList.
  const cert = readFileSync(pki.ca, 'latin1').replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').trim();
  const good = readFileSync(pki.crl(), 'utf8');
  assert.match(refusal(good + block(cert)), /holds a CRL that cannot be read \(the 2nd of 2: its DER is not a CRL's \(.+\)\): give the CRL/);
  assert.match(refusal(block('MAMCAQE=')), /holds a CRL that cannot be read \(the only one: its DER is not a CRL's \(.+\)\)/);
});

crls("at a reload, only a CRL signed by the key that signed the peer's certificate revokes it: not one of its CA's name under another key", () => {
  const pki = makePki(['victim', 'kept']);
  const victim = certOf(pki.cert('victim').cert);
  const genuine = loadTls({ ca: pki.ca, crl: pki.crl(['victim']) })!;
  assert.is(revokedBy(genuine)!(victim)?.issuerName, 'CN=revproxy test CA', "its CA's CRL revokes it");
  assert.is(revokedBy(genuine)!(certOf(pki.cert('kept').cert)), undefined, 'and no other');
  // Whoever holds another key may sign a CRL under the CA's name listing any serial number: it revokes nothing.
  const forger = makePki([], 'revproxy test CA');
  const forged = loadTls({ ca: pki.ca, crl: forger.crl([join(pki.dir, 'victim')]) })!;
  assert.ok(parseCrl(crlBlocks(forged.crl!)[0]!).revoked.has(serialOf(pki.cert('victim').cert)), 'the forged CRL lists the victim');
  assert.is(revokedBy(forged)!(victim), undefined);
  assert.is(revokedBy(forged)!(victim, () => [certOf(forger.ca)]), undefined, 'nor with a certificate of the forger\'s key in the chain the peer presented: it did not sign the peer\'s');
  assert.match(crlWarnings(forged, NAMES, 'ca.crl').join('\n'), /the CRL of CN=revproxy test CA in the tls\.crl file 'ca\.crl' is not signed by the key of that CA in tls\.ca/);
});

crls('a CRL file read again unchanged (a reload, a renewal) is not parsed again: its CRLs are those read before; one whose bytes changed is read anew, and a PEM string is taken as a Buffer is', () => {
  // Kept by the Buffer read, each reload's new Buffer parsed the file again (57 ms for 20,000 entries, beside OpenSSL's own reading).
  const pki = makePki(['victim']);
  const file = pki.crl(['victim']);
  const victim = certOf(pki.cert('victim').cert);
  const load = (): ReturnType<typeof loadTls> => loadTls({ ca: pki.ca, crl: file });
  const first = revokedBy(load()!)!(victim);
  assert.is(first?.issuerName, 'CN=revproxy test CA');
  assert.is(revokedBy(load()!)!(victim), first, 'the same CRL, not read again');
  writeFileSync(file, `${readFileSync(file, 'latin1')}\n`);
  const running = load()!;
  const changed = revokedBy(running)!(victim);
  assert.ok(changed !== undefined && changed !== first, 'other bytes: read anew');
  // A library caller's PEM strings: the WeakMap that kept the CRLs by their Buffer threw "Invalid value used as weak map key".
  const text = { ca: readFileSync(pki.ca, 'utf8'), crl: readFileSync(file, 'utf8') } as unknown as TlsMaterial;
  assert.is(revokedBy(text)!(victim), changed, 'a string of the same bytes, while the material read from them runs: the CRLs read from them');
  assert.ok(running.crl, 'the material still runs');
});

crls("an intermediate CA's CRL revokes the certificates it signed, checked with its key from the chain the peer presented", () => {
  const pki = makePki(['leaf'], 'revproxy test CA', { intermediate: {} });
  const dir = tempDir('revproxy-crl-');
  const both = (inter: string): string => {
    const file = join(dir, 'crls.pem');
    writeFileSync(file, readFileSync(pki.crl([]), 'utf8') + readFileSync(inter, 'utf8'));
    return file;
  };
  const leaf = certOf(pki.leaf!('leaf'));
  const intermediate = certOf(pki.intermediate!);
  const tls = loadTls({ ca: pki.ca, crl: both(pki.crl(['leaf'], { intermediate: true })) })!;
  assert.is(revokedBy(tls)!(leaf, () => [intermediate, certOf(pki.ca)])?.issuerName, 'CN=revproxy test CA intermediate');
  assert.is(revokedBy(tls)!(leaf), undefined, 'without the chain, the intermediate\'s key is not known here');
  const forger = makePki([], 'revproxy test CA', { intermediate: {} });
  const forged = loadTls({ ca: pki.ca, crl: both(forger.crl([join(pki.dir, 'leaf')], { intermediate: true })) })!;
  assert.is(revokedBy(forged)!(leaf, () => [intermediate, certOf(pki.ca)]), undefined, 'an intermediate of that name under another key signed it');
  assert.is(revokedBy(forged)!(leaf, () => [certOf(forger.intermediate!)]), undefined, 'and that one did not sign the leaf, whatever the peer presents');
});

crls("each CRL of the CRL file is watched by its nextUpdate: warned of in the certificates' window (a third of its life, at most a week), an error once past it", () => {
  const pki = makePki([]);
  const other = makePki([], 'revproxy other CA');
  const file = join(tempDir('revproxy-crl-'), 'crls.pem');
  writeFileSync(file, readFileSync(pki.crl(), 'utf8') + readFileSync(other.crl([], { file: join(other.dir, 'x.crl') }), 'utf8'));
  const material = loadTls({ ca: pki.ca, crl: file })!;
  const loaded = loadedCerts({ ca: pki.ca, crl: file }, material, { cert: 'tls.cert', ca: 'tls.ca', crl: 'tls.crl' });
  const of = loaded.filter((c) => c.crl);
  assert.equal(of.map((c) => [c.role, c.file, c.subject]), [['tls.crl', file, 'CN=revproxy test CA'], ['tls.crl', file, 'CN=revproxy other CA']]);
  assert.is(of[0]!.notAfter, opensslDate(pki.dir + '/ca.crl', 'nextupdate'));
  assert.is(of[0]!.notBefore, opensslDate(pki.dir + '/ca.crl', 'lastupdate'));
  assert.is(loadedCerts({ ca: pki.ca, crl: file }, material, { cert: 'tls.cert', ca: 'tls.ca' }).filter((c) => c.crl).length, 0, 'only where a CRL setting is named');

  // Two day-long CRLs published together: each said, by its issuer.
  const logs: LogRecord[] = [];
  const clock = new ManualClock();
  const hour = 3600 * 1000;
  const start = Date.UTC(2026, 0, 1);
  const crl = (issuer: string): LoadedCert => ({ role: 'tls.crl', file: 'ca.crl', notBefore: start, notAfter: start + 24 * hour, subject: issuer, crl: true });
  const upstream: LoadedCert = { ...crl('CN=servers CA'), role: 'upstream_tls.crl', notAfter: start + 48 * hour };
  const watch = new ExpiryWatch(new Logger('proxy', memorySink(logs), 'info'), () => [crl('CN=a CA'), crl('CN=b CA'), upstream], { clock, wallNow: () => start + clock.now() });
  watch.check();
  clock.advance(16 * hour - 60_000);
  assert.equal(logs, [], 'nothing before the last third of its life');
  clock.advance(62_000);
  assert.equal(logs.map((l) => [l.level, l.event, l.issuer]), [['warn', 'tls_crl_expiring', 'CN=a CA'], ['warn', 'tls_crl_expiring', 'CN=b CA']]);
  assert.match(logs[0]!.msg, /^the CRL of CN=a CA in the tls\.crl file 'ca\.crl' passes its nextUpdate on 2026-01-02T00:00:00\.000Z, in 7 hours: TLS then refuses every peer certificate that CA signed \(CRL_HAS_EXPIRED\): install a fresh CRL there, then send SIGHUP/);
  clock.advance(8 * hour);
  assert.equal(logs.slice(2).map((l) => [l.level, l.event, l.issuer, l.next_update]), [['error', 'tls_crl_expired', 'CN=a CA', (start + 24 * hour) / 1000], ['error', 'tls_crl_expired', 'CN=b CA', (start + 24 * hour) / 1000]]);
  // What the proxy's /readyz lists as warnings: the CRLs past their nextUpdate, of either setting.
  assert.equal(watch.passedCrls().map((c) => c.subject), ['CN=a CA', 'CN=b CA']);
  assert.match(logs[2]!.msg, /^the CRL of CN=a CA in the tls\.crl file 'ca\.crl' passed its nextUpdate on 2026-01-02T00:00:00\.000Z: TLS refuses every peer certificate that CA signed \(CRL_HAS_EXPIRED\) until a fresh CRL is installed there and the process reloaded \(SIGHUP\)/);
  clock.advance(hour + 10_000);
  assert.is(logs.filter((l) => l.event === 'tls_crl_expired').length, 4, 'said again once an hour');
  clock.advance(24 * hour);
  assert.equal(watch.passedCrls().map((c) => [c.role, c.subject]), [['tls.crl', 'CN=a CA'], ['tls.crl', 'CN=b CA'], ['upstream_tls.crl', 'CN=servers CA']]);
  assert.is(watch.ended('tls.cert'), undefined, "a CRL is not this side's certificate");
  watch.stop();
});

crls.run();
