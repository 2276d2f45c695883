/**
 * TLS on every link, when asked: certificate files in, socket factories
 * and server options out. Plain TCP when no TLS options are given.
 */
import { createPrivateKey, X509Certificate, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { constants as cryptoConstants } from 'node:crypto';
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { connect as netConnect, createServer as netServer, isIP, type LookupFunction, type Server, type Socket } from 'node:net';
import { checkServerIdentity, connect as tlsConnect, createSecureContext, createServer as tlsServer, TLSSocket, Server as TlsServer, type PeerCertificate, type SecureContextOptions } from 'node:tls';
import { isPlainObject, kindOf, LocalCode, RevproxyError } from './errors.js';
import { badDialAddress, canonicalHost, hostPort, isEveryAddress, isLoopback, unbracket } from './address.js';
import { CRL_CODES, refusedCertificate, untrustedCertificate, UNTRUSTED_CA_CODES } from './foreign.js';
import { setDeadline, type Clock, type Timer } from './clock.js';
import { crlBlocks, issuedBy, namesOf, parseCrl, revoking, type Crl } from './crl.js';
import { byBytes } from './by-bytes.js';

export interface TlsFiles {
  /** PEM certificate chain presented by this side. */
  cert?: string;
  /** PEM private key of `cert`. */
  key?: string;
  /** PEM CA bundle: verifies the other side's certificate; on a listener it also asks peers for one (mutual TLS). */
  ca?: string;
  /** PEM CRLs (one or more) of the CAs in `ca`: a peer certificate one of them revokes is refused. */
  crl?: string;
}

export interface TlsMaterial {
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
  ca?: Buffer | undefined;
  /** PEM CRLs of the CAs in `ca` (transport/crl.ts): every CA there then needs its own, as OpenSSL checks a whole chain. */
  crl?: Buffer | undefined;
}

/**
 * The proxy's TLS toward its servers (`upstreamTls`; `upstream_tls` in a config file): the files, as every side's;
 * `serverName`, the name sent as SNI on every dial and verified in the server's certificate in place of the address
 * dialled (`serverNameProblem` says what it may be); and `names`, what a server's certificate must name beyond that
 * check (Envoy's `match_subject_alt_names`): one of its subjectAltName entries is one of them (`allowedNameProblem`
 * says what an entry may be).
 */
export interface UpstreamTlsMaterial extends TlsMaterial {
  serverName?: string | undefined;
  names?: readonly string[] | undefined;
}

/** How the names setting is said in the words a refusal ends with: the file's key, the flag, the library's option. */
export const UPSTREAM_NAMES = 'upstream_tls.names (--upstream-tls-names; upstreamTls.names in the library)';

/** How the server name setting is said in the words a refusal ends with. */
export const UPSTREAM_SERVER_NAME = 'upstream_tls.server_name (--upstream-tls-server-name; upstreamTls.serverName in the library)';

/** A URI entry's kind in a certificate's subjectAltName as Node writes it, and in `names` (`URI:spiffe://example.org/web`). */
const URI_KIND = 'URI:';

/**
 * Why `uri` (an entry of `names` after its `URI:`) is no URI to match a certificate's `URI:` entries against, or undefined:
 * a scheme and what follows it, matched whole (Envoy's `uri` matcher, exact); a SPIFFE ID is `spiffe://TRUST-DOMAIN/PATH`.
 */
function uriProblem(uri: string): string | undefined {
  const shape = 'give URI:SCHEME:..., as URI:spiffe://example.org/ns/prod/sa/web';
  if (uri === '') return `it has nothing after URI: ${shape}`;
  if (/\s/.test(uri)) return 'it has spaces in it: a URI has none';
  if (uri.includes('*')) return 'it has a *: a URI is matched whole, character for character (no patterns): list each one';
  if (!/^[A-Za-z][A-Za-z0-9+.-]*:./.test(uri)) return `it has no scheme: ${shape}`;
  if (!/^spiffe:/i.test(uri)) return undefined;
  // The SPIFFE ID spec: spiffe://, a lowercase trust domain, a path of segments; no port, user, query or fragment.
  const spiffe = 'it is no SPIFFE ID: give spiffe://TRUST-DOMAIN/PATH (spiffe://example.org/ns/prod/sa/web)';
  const id = /^spiffe:\/\/([^/?#]*)(\/[^?#]*)?$/.exec(uri);
  if (!id) return `${spiffe}, lower case before the trust domain, without a query or fragment`;
  if (!/^[a-z0-9._-]+$/.test(id[1]!)) return `${spiffe}: its trust domain '${id[1]}' is not lowercase letters, digits, ., - and _ alone (no port, no user)`;
  if (!id[2] || id[2] === '/') return `${spiffe}: it has no path after its trust domain, as a workload's ID has`;
  return undefined;
}

/**
 * Why `name` is not an entry of `names` (`UpstreamTlsMaterial`), said after "the name 'X': ", or undefined: an exact
 * DNS name (`server-a.internal`), `*.NAME` for every name under NAME at any depth (`*.servers.internal`), an IP
 * address (matched against the certificate's `IP:` entries), or `URI:` and a URI (matched whole against its `URI:`
 * entries: a SPIFFE ID, `URI:spiffe://example.org/ns/prod/sa/web`).
 */
export function allowedNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `it is ${kindOf(name)}, not text`;
  if (name.startsWith(URI_KIND)) return uriProblem(name.slice(URI_KIND.length));
  const under = name.startsWith('*.');
  const rest = under ? name.slice(2) : name;
  if (rest.includes('*')) return 'it has a * that is not its first label: give an exact name (server-a.internal), or *.NAME for every name under NAME (*.servers.internal)';
  if (isIP(unbracket(rest)) !== 0) return under ? 'it puts *. before an address: an address is matched whole (IP:10.0.0.7 in the certificate)' : undefined;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(rest)) return `it is a URI without its kind: give it as URI:${rest} (matched against the certificate's URI: entries)`;
  const kind = /^(DNS|IP|IP Address|URI):/i.exec(rest)?.[1];
  if (kind) return kind.toUpperCase() === 'URI' ? `write its kind as URI: (upper case), as certificates show it: URI:${rest.slice(4)}` : `leave its kind out: a DNS name or an address is given alone (${rest.slice(kind.length + 1)}); only a URI is given with its kind (URI:...)`;
  return badDialAddress(rest, 'leave the port out (a certificate names none)');
}

/**
 * Why `name` cannot be `serverName` (`UpstreamTlsMaterial`), said after "the server name 'X': ", or undefined: one DNS
 * name, sent as SNI and matched against the certificate's `DNS:` entries (a wildcard entry there, `*.servers.internal`,
 * takes a name one label under it). No address: TLS sends none as SNI (RFC 6066; Node warns DEP0123 and will ignore it).
 */
export function serverNameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string') return `it is ${kindOf(name)}, not text`;
  if (isIP(unbracket(name)) !== 0) return 'it is an IP address, which TLS does not send as a server name (RFC 6066; Node warns DEP0123 and will ignore it): leave server_name out for the proxy to verify the address it dials (the certificate\'s IP: entries), or give a DNS name the servers\' certificates carry';
  if (name.includes('*')) return 'it has a *: the name sent is one name (servers.internal, or a.servers.internal for certificates carrying *.servers.internal)';
  if (name.endsWith('.')) return `it ends with a dot: a server name is sent without it (${name.replace(/\.+$/, '')})`;
  return badDialAddress(name, 'leave the port out (the proxy dials the port each server registered)');
}

/** A subjectAltName entry's value as Node writes it: quoted as JSON when it holds a comma, a quote or a control character (Node >= 17.3). */
function altNameValue(raw: string): string {
  if (!raw.startsWith('"')) return raw;
  try {
    const v: unknown = JSON.parse(raw);
    return typeof v === 'string' ? v : raw;
  } catch {
    return raw.replace(/^"|"$/g, '');
  }
}

/** A certificate's subjectAltName as Node writes it (`DNS:a, IP Address:10.0.0.7, URI:spiffe://x/y`), each entry as its kind and value. */
function altNameEntries(san: string | undefined): Array<{ kind: string; value: string }> {
  return (san ?? '').split(/, (?=[A-Za-z ]+:)/).flatMap((entry) => {
    const at = entry.indexOf(':');
    return at < 0 ? [] : [{ kind: entry.slice(0, at), value: altNameValue(entry.slice(at + 1)) }];
  });
}

/** Whether the subjectAltName entry `kind:value` is one `name` allows (`allowedNameProblem`'s forms); DNS names compared without case, URIs exactly. */
function allows(name: string, kind: string, value: string): boolean {
  if (name.startsWith(URI_KIND)) return kind === 'URI' && value === name.slice(URI_KIND.length);
  if (isIP(unbracket(name)) !== 0) return kind === 'IP Address' && canonicalHost(value) === canonicalHost(name);
  if (kind !== 'DNS') return false;
  const v = value.toLowerCase().replace(/\.$/, '');
  const n = name.toLowerCase().replace(/\.$/, '');
  return n.startsWith('*.') ? v.length > n.length - 1 && v.endsWith(n.slice(1)) : v === n;
}

export type NamedCert = { subjectaltname?: string; subject?: { CN?: string | string[] } };

/** A certificate as `notAllowedName` and `notServerName` read it (as Node's handshake gives the peer's). */
export function namedCert(x509: X509Certificate): NamedCert {
  return { subjectaltname: x509.subjectAltName, subject: { CN: /^CN=(.*)$/m.exec(x509.subject)?.[1] } };
}

/** What a server's certificate names, in a refusal's words: `names IP:10.0.0.7, DNS:db.internal`, or that it has no subjectAltName. */
function namedBy(cert: NamedCert): string {
  const entries = altNameEntries(cert.subjectaltname);
  return entries.length ? `names ${entries.map((e) => `${e.kind === 'IP Address' ? 'IP' : e.kind}:${e.value}`).join(', ')}` : `has no subjectAltName (its subject's CN: ${String(cert.subject?.CN ?? 'none')})`;
}

/**
 * Why a server's certificate is not one `names` allows (none of its subjectAltName entries is one of them), or
 * undefined when it is, or when `names` is empty. Its subject's CN is not looked at, as Envoy's
 * `match_subject_alt_names` does not: a certificate without a subjectAltName names nothing here.
 */
export function notAllowedName(cert: NamedCert, names: readonly string[] | undefined): string | undefined {
  if (!names?.length) return undefined;
  const entries = altNameEntries(cert.subjectaltname);
  if (names.some((name) => entries.some((e) => allows(name, e.kind, e.value)))) return undefined;
  return `the server's TLS certificate ${namedBy(cert)}, none of the names ${UPSTREAM_NAMES} allows (${names.join(', ')}): give the server a certificate with one of them in its subjectAltName, or add a name it has there`;
}

/**
 * Why a server's certificate does not name `serverName` (`UpstreamTlsMaterial`), or undefined when it does: Node's
 * rule for a host name (a `DNS:` entry, exact or a wildcard one label above it), its subject's CN not looked at (Node
 * falls back to it when the certificate has no `DNS:` entry; `names` never looks at it either).
 */
export function notServerName(cert: NamedCert, serverName: string): string | undefined {
  const own = checkServerIdentity(serverName, { subjectaltname: cert.subjectaltname, subject: {} } as unknown as PeerCertificate);
  if (!own) return undefined;
  // Node takes a wildcard entry of three labels or more only (`*.internal` names nothing).
  const parent = serverName.split('.').length > 2 ? ` (or DNS:*.${serverName.slice(serverName.indexOf('.') + 1)})` : '';
  return `the server's TLS certificate ${namedBy(cert)}, not ${serverName}, the name the proxy sends it and verifies (${UPSTREAM_SERVER_NAME}): give the server a certificate with DNS:${serverName}${parent} in its subjectAltName, or set the server name to one its certificate carries`;
}

/**
 * The code of a dial refused for `notAllowedName` or `notServerName` (its certificate does not carry the names the
 * proxy's upstream_tls asks for): what its error carries, as Node's own verification errors carry theirs.
 */
export const CERT_NAME_NOT_ALLOWED = 'CERT_NAME_NOT_ALLOWED';

/**
 * The code of a link to a server the proxy closed itself (`closedByProxy`): a renewal or reload whose CRL now revokes
 * the server's certificate, or whose names no longer allow it. The link's `down` line says the proxy's reason.
 */
export const CLOSED_BY_PROXY = 'CLOSED_BY_PROXY';

/**
 * The error a link's socket is destroyed with when the proxy closes it itself (`CLOSED_BY_PROXY`), at the renewal of
 * `setting` (a reload's, or the library's `renewTls`), for `why`: its down line's words.
 */
export function closedByProxy(setting: string, why: string): Error {
  return Object.assign(new Error(`the proxy closed its link at the renewal of ${setting}: ${why}`), { code: CLOSED_BY_PROXY });
}

/**
 * Whether a link's connection failed because the proxy refused its server by its own upstream_tls, not because the
 * server could not be reached: the proxy closed the link at a renewal (`CLOSED_BY_PROXY`), or refused the server's
 * certificate at the handshake for a name `names` or `serverName` does not allow (`CERT_NAME_NOT_ALLOWED`), for not
 * naming the address dialled (`ERR_TLS_CERT_ALTNAME_INVALID`), as one its CRL revokes (`CERT_REVOKED`), as one its CRLs
 * cannot vouch for (`CRL_CODES`: none from the server's CA, one past its nextUpdate - the proxy's own files) or as one
 * that leads to no CA of its `ca` (`UNTRUSTED_CA_CODES`: a CA rotation half done). Such a server is refused until its
 * certificate, or the proxy's settings, change: health.ts `linkDown` counts it `closed_by_proxy` and probes it at the
 * slowest pace, and again at once at each renewal of upstream_tls. Which: `closed` (at a renewal), `handshake` (at a
 * dial, under the settings of its time), or undefined when the proxy did not refuse it.
 */
export function refusedByProxy(err: { code?: string | undefined }): RefusedBy | undefined {
  if (err.code === undefined) return undefined;
  if (err.code === CLOSED_BY_PROXY) return 'closed';
  return HANDSHAKE_REFUSALS.has(err.code) ? 'handshake' : undefined;
}
export type RefusedBy = 'closed' | 'handshake';
const HANDSHAKE_REFUSALS: ReadonlySet<string> = new Set([CERT_NAME_NOT_ALLOWED, 'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_REVOKED', ...CRL_CODES, ...UNTRUSTED_CA_CODES]);

/**
 * `names` and `serverName` of an `upstreamTls` option (`setting` names it) checked: `names` a list of entries
 * `allowedNameProblem` takes, `serverName` a name `serverNameProblem` takes; a TlsConfigError naming the first that
 * is not. Either undefined (and `names` empty): no restriction.
 */
export function checkUpstreamNames(setting: string, upstreamTls: unknown): void {
  const { names, serverName } = (isPlainObject(upstreamTls) ? upstreamTls : {}) as { names?: unknown; serverName?: unknown };
  if (serverName !== undefined) {
    const bad = serverNameProblem(serverName);
    if (bad) throw new TlsConfigError(`${setting}.serverName${typeof serverName === 'string' ? ` '${serverName}'` : ''}: ${bad}`, 'usage');
  }
  if (names === undefined) return;
  if (!Array.isArray(names)) throw new TlsConfigError(`${setting}.names must be a list of names (['server-a.internal', '*.servers.internal']), got ${kindOf(names)}`, 'usage');
  for (const [i, name] of names.entries()) {
    const bad = allowedNameProblem(name);
    if (bad) throw new TlsConfigError(`${setting}.names[${i}]${typeof name === 'string' ? ` '${name}'` : ''}: ${bad}`, 'usage');
  }
}

/** What names each TLS setting in errors (`--tls-cert`, `tls.cert`); the CRL's is the CA's with `crl` for `ca` when not given. */
export interface TlsNames {
  cert: string;
  key: string;
  ca: string;
  crl?: string;
}

/** The name of the CRL setting beside `names.ca` (`--tls-ca`: `--tls-crl`; `tls.ca`: `tls.crl`). */
export function crlName(names: TlsNames): string {
  return names.crl ?? names.ca.replace(/ca$/, 'crl');
}

/** TLS options or files that cannot be used: named, with what is wrong with them. */
export class TlsConfigError extends RevproxyError<typeof LocalCode.TLS_CONFIG> {
  /** `usage`: the options do not fit together; `file`: a file cannot be read or is not what it should be. */
  constructor(message: string, readonly kind: 'usage' | 'file' = 'file') {
    super(LocalCode.TLS_CONFIG, message);
    this.name = 'TlsConfigError';
  }
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new TlsConfigError(`cannot read the ${what} file '${path}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Whether a file holds a PEM certificate (X509Certificate alone would take DER too, which the TLS context ignores). */
function holdsCertificate(pem: Buffer): boolean {
  if (!/-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/.test(pem.toString('latin1'))) return false;
  try {
    new X509Certificate(pem);
    return true;
  } catch {
    return false;
  }
}

/** Every certificate of a PEM file, in order (X509Certificate alone reads only the first of a chain or a bundle). */
const certificatesOf = byBytes((pem: Buffer): readonly X509Certificate[] => [...pem.toString('latin1').matchAll(/-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----[^-]+-----END (?:TRUSTED |X509 )?CERTIFICATE-----/g)].flatMap((m) => {
  try {
    return [new X509Certificate(m[0])];
  } catch {
    return [];
  }
}));

/**
 * Why a peer that dials `address` would refuse the certificate `pem` presents (its first), or undefined
 * when it names that address, or cannot be read: `the certificate names DNS:server-a.internal, IP:10.0.0.7,
 * not 127.0.0.1`. Checked as Node's client checks it (`tls.checkServerIdentity`): an IP against the
 * certificate's IP entries only, a name against its DNS entries (its subject's CN when it has none).
 */
export function certificateMissesAddress(pem: Buffer, address: string): string | undefined {
  const leaf = certificatesOf(pem)[0];
  if (!leaf || checkServerIdentity(unbracket(address), leaf.toLegacyObject()) === undefined) return undefined;
  return `the certificate names ${altNamesOf(leaf)}, not ${address}`;
}

/**
 * Why a proxy that verifies `serverName` (its upstream_tls.server_name, which it says as it accepts a registration:
 * `PingMsg.serverName`) would refuse the certificate `pem` presents (its first), or undefined when it names it, or
 * cannot be read: the proxy's own check and words (`notServerName`).
 */
export function certificateMissesName(pem: Buffer, serverName: string): string | undefined {
  const leaf = certificatesOf(pem)[0];
  return leaf && notServerName(namedCert(leaf), serverName);
}

/** The names a certificate is for, as peers check them: `DNS:server-a.internal, IP:10.0.0.7`. */
function altNamesOf(leaf: X509Certificate): string {
  return leaf.subjectAltName?.replace(/IP Address:/g, 'IP:') ?? `no subjectAltName (its subject: ${subjectOf(leaf)})`;
}

/** A certificate's subject on one line: `CN=proxy, O=Example`. */
export function subjectOf(c: X509Certificate): string {
  return c.subject.replace(/\n/g, ', ');
}

/** Its issuer likewise. */
function issuerOf(c: X509Certificate): string {
  return c.issuer.replace(/\n/g, ', ');
}

/** Whether `issuer` signed `cert` (its name and key identifiers match, and the signature is its key's). */
function issued(issuer: X509Certificate, cert: X509Certificate): boolean {
  try {
    return cert.checkIssued(issuer) && cert.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

const selfSigned = (c: X509Certificate): boolean => issued(c, c);
const startOf = (c: X509Certificate): number => Date.parse(c.validFrom);
const endOf = (c: X509Certificate): number => Date.parse(c.validTo);

/**
 * How far a certificate's start may be ahead of this machine's clock and still be taken (ms): a CA whose
 * clock runs a little ahead issues certificates that peers take a moment later (Let's Encrypt backdates
 * its own an hour for this). Further ahead, it is refused: every peer refuses it for now.
 */
export const CLOCK_SKEW_MS = 5 * 60 * 1000;

/**
 * The certificates a peer verifies of a chain file: its first (the leaf), then the issuer of each among
 * the file's others, as OpenSSL builds a chain (one valid now first, when two could be), up to a self-signed
 * one or the first whose issuer the file lacks (the peer's CA file then has it, or the chain is short).
 */
function chainOf(certs: readonly X509Certificate[], now: number): X509Certificate[] {
  const chain = certs.slice(0, 1);
  let rest = certs.slice(1);
  for (let at = chain[0]; at && !selfSigned(at);) {
    const cert: X509Certificate = at;
    const issuers = rest.filter((c) => issued(c, cert));
    const next = issuers.find((c) => startOf(c) <= now && now < endOf(c)) ?? issuers[0];
    if (!next) break;
    chain.push(next);
    rest = rest.filter((c) => c !== next);
    at = next;
  }
  return chain;
}

/** What is checked of a chain: its leaf, and the intermediates after it (a self-signed root a file may carry is the peers' to trust, from their own CA file). */
function checkedOf(chain: readonly X509Certificate[]): Array<{ cert: X509Certificate; depth: number; which: string }> {
  return chain.flatMap((cert, depth) => (depth > 0 && selfSigned(cert) ? [] : [{ cert, depth, which: depth === 0 ? 'a certificate' : `the intermediate certificate ${subjectOf(cert)}` }]));
}

/**
 * What a certificate does in a handshake, as OpenSSL checks its extended key usage (`openssl x509 -purpose`):
 * `serverAuth` for one a side serves on its port, `clientAuth` for one it presents when it dials (mutual TLS).
 * A certificate without that extension is fit for both; the CAs on its chain are held to it too.
 */
export type CertPurpose = 'serverAuth' | 'clientAuth';

const PURPOSE_OIDS: Record<CertPurpose, string> = { serverAuth: '1.3.6.1.5.5.7.3.1', clientAuth: '1.3.6.1.5.5.7.3.2' };
const USAGE_NAMES: Record<string, string> = {
  '1.3.6.1.5.5.7.3.1': 'serverAuth', '1.3.6.1.5.5.7.3.2': 'clientAuth', '1.3.6.1.5.5.7.3.3': 'codeSigning', '1.3.6.1.5.5.7.3.4': 'emailProtection',
  '1.3.6.1.5.5.7.3.8': 'timeStamping', '1.3.6.1.5.5.7.3.9': 'OCSPSigning', '2.5.29.37.0': 'anyExtendedKeyUsage',
};

/** What the peer checking `purpose` does with a certificate (a sentence's middle). */
const PURPOSE_USE: Record<CertPurpose, string> = {
  serverAuth: 'this side serves it on its port, and every peer that dials it checks it is a TLS server\'s',
  clientAuth: 'this side presents it when it dials, and a peer that asks for a certificate (mutual TLS) checks it is a TLS client\'s',
};

/** Why `cert` is not fit for `purpose` (`its extended key usage is clientAuth only, without serverAuth`), or undefined when it is. */
function unfitFor(cert: X509Certificate, purpose: CertPurpose): string | undefined {
  // Node's name for the extended key usage (undefined without the extension). anyExtendedKeyUsage alone is not taken by OpenSSL.
  const usages = cert.keyUsage as string[] | undefined;
  if (!usages || usages.includes(PURPOSE_OIDS[purpose])) return undefined;
  return `extended key usage is ${usages.map((u) => USAGE_NAMES[u] ?? u).join(', ')}${usages.length === 1 ? ' only' : ''}, without ${purpose}`;
}

/** `ms` as a date in words (UTC, ISO 8601). */
const dateOf = (ms: number): string => new Date(ms).toISOString();

/**
 * What keeps a certificate of a CA file from verifying peers: expired, not valid for a while yet, or not a CA
 * (a leaf, which signs nothing: one the peer itself presents is taken only when self-signed, as a pin).
 */
function caProblem(c: X509Certificate, now: number): string | undefined {
  if (endOf(c) <= now) return `${subjectOf(c)} expired on ${dateOf(endOf(c))}`;
  if (startOf(c) > now + CLOCK_SKEW_MS) return `${subjectOf(c)} is valid only from ${dateOf(startOf(c))}`;
  if (!c.ca && !selfSigned(c)) return `${subjectOf(c)} is not a CA certificate (a leaf, issued by ${issuerOf(c)})`;
  return undefined;
}

/**
 * When a file's certificates can be used (ms since the epoch, the wall clock's): a chain's is that of its
 * certificate that ends first (the leaf, or an intermediate ending before it), a CA bundle's that of its
 * certificate that ends first among those that have not ended (all of them once all have). `subject`
 * names that certificate when it is not the file's only one or, for a chain, not its leaf.
 */
export interface Validity {
  notBefore: number;
  notAfter: number;
  subject?: string;
  /** A CRL's dates instead (`crlValidities`): notBefore its thisUpdate, notAfter its nextUpdate, subject its issuer. */
  crl?: true;
}

/** The validity that matters of `pem` (`Validity`), as of `now`: `role` cert, a chain this side presents; ca, a bundle. */
export function validityOf(pem: Buffer, role: 'cert' | 'ca', now = Date.now()): Validity | undefined {
  const certs = certificatesOf(pem);
  const live = certs.filter((c) => endOf(c) > now);
  const candidates = role === 'cert' ? chainOf(certs, now) : live.length ? live : certs;
  const first = candidates.reduce<X509Certificate | undefined>((a, c) => (a && endOf(a) <= endOf(c) ? a : c), undefined);
  if (!first) return undefined;
  const named = role === 'cert' ? first !== certs[0] : certs.length > 1;
  return { notBefore: startOf(first), notAfter: endOf(first), ...(named ? { subject: subjectOf(first) } : {}) };
}

/**
 * Whether a certificate is close enough to its end to be worth a warning: less than a week left,
 * and less than a third of its life (a 24-hour certificate of an internal CA is renewed every
 * few hours, a 90-day one from Let's Encrypt 30 days before its end). docs/revproxy.rules.yml's
 * RevproxyCertificateExpiresSoon is the same rule.
 */
function expiresSoon(v: Validity, now: number): boolean {
  return now > warningFrom(v);
}
const EXPIRY_WARNING_MS = 7 * 24 * 3600 * 1000;

/** When `v` comes close enough to its end to be warned of (`expiresSoon`). */
export function warningFrom(v: Validity): number {
  return v.notAfter - Math.min(EXPIRY_WARNING_MS, (v.notAfter - v.notBefore) / 3);
}

/** What to say of the certificate in `file` (named by `setting`) when it ends soon (`expiresSoon`), or has ended; undefined when it does not. */
export function expiryWarning(setting: string, file: string, v: Validity, now = Date.now()): string | undefined {
  if (!expiresSoon(v, now)) return undefined;
  if (v.crl) return crlDue(setting, file, v, now);
  const which = certificateNamed(setting, file, v);
  const load = 'then send SIGHUP (systemctl reload) to load the renewed files';
  if (v.notAfter <= now) return `${which} expired on ${dateOf(v.notAfter)}, ${timeLeft(now, v.notAfter)} ago: every handshake that needs it fails: renew it, ${load}`;
  return `${which} expires on ${dateOf(v.notAfter)}, in ${timeLeft(v.notAfter, now)}: renew it, ${load}`;
}

/**
 * What to say of a CRL (`Validity`'s, of the setting `setting` in `file`) close to its nextUpdate or past it: OpenSSL then
 * refuses every peer certificate its CA signed (CRL_HAS_EXPIRED), at each handshake, with no reload.
 */
export function crlDue(setting: string, file: string, v: Validity, now = Date.now()): string {
  const of = `the CRL of ${v.subject} in the ${setting} file '${file}'`;
  if (v.notAfter <= now) return `${of} passed its nextUpdate on ${dateOf(v.notAfter)}: TLS refuses every peer certificate that CA signed (CRL_HAS_EXPIRED) until a fresh CRL is installed there and the process reloaded (SIGHUP); publish CRLs before their nextUpdate`;
  return `${of} passes its nextUpdate on ${dateOf(v.notAfter)}, in ${timeLeft(v.notAfter, now)}: TLS then refuses every peer certificate that CA signed (CRL_HAS_EXPIRED): install a fresh CRL there, then send SIGHUP (systemctl reload) to load it`;
}

/** A certificate in words: `the tls.ca certificate '/etc/ca.pem'`, with its subject when the file holds others (`Validity`). */
export function certificateNamed(setting: string, file: string, v: Validity): string {
  return `the ${setting} certificate '${file}'${v.subject ? ` (${v.subject}, of the certificates in it)` : ''}`;
}

/** How long until `at`, in words: "3 days", "5 hours", "12 minutes". */
function timeLeft(at: number, now: number): string {
  const s = Math.max(0, (at - now) / 1000);
  const [n, unit] = s >= 2 * 86400 ? [s / 86400, 'days'] : s >= 2 * 3600 ? [s / 3600, 'hours'] : [s / 60, 'minutes'];
  return `${Math.floor(n)} ${unit}`;
}

/** How a file or setting is named in the sentences about it: the file with its setting, or the setting alone (a library caller's buffers). */
function describer(names: TlsNames, paths?: TlsFiles): (role: keyof TlsFiles) => string {
  const all = { ...names, crl: crlName(names) };
  return (role) => (paths ? `the ${all[role]} file '${paths[role]}'` : all[role]);
}

/**
 * Read the PEM files; undefined when none is given. `needs`: what this side does with its certificate
 * (`CertPurpose`), which it must be fit for; any other use is only warned of (`tlsWarnings`).
 */
export function loadTls(files: TlsFiles, names: TlsNames = { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }, needs: readonly CertPurpose[] = []): TlsMaterial | undefined {
  if (!files.cert && !files.key && !files.ca && !files.crl) return undefined;
  if (Boolean(files.cert) !== Boolean(files.key)) throw new TlsConfigError(`${names.cert} and ${names.key} go together: give both or neither`, 'usage');
  const material = {
    cert: files.cert ? read(files.cert, '--tls-cert') : undefined,
    key: files.key ? read(files.key, '--tls-key') : undefined,
    ca: files.ca ? read(files.ca, '--tls-ca') : undefined,
    crl: files.crl ? read(files.crl, crlName(names)) : undefined,
  };
  return checkMaterial(material, names, files, needs);
}

/**
 * Check TLS material already read (a library caller's buffers) as `loadTls` checks files: a TlsConfigError
 * naming the setting (`names`, e.g. tls.cert) when a certificate or key is not one, expired, not valid yet,
 * not fit for `needs`, or not the pair, or when the CA file verifies no one.
 */
export function checkTls(material: TlsMaterial, names: TlsNames, needs: readonly CertPurpose[] = []): TlsMaterial {
  if (!material.cert && !material.key && !material.ca && !material.crl) throw new TlsConfigError(`no ${names.cert}, ${names.key} or ${names.ca} given: give the renewed files`, 'usage');
  if (Boolean(material.cert) !== Boolean(material.key)) throw new TlsConfigError(`${names.cert} and ${names.key} go together: give both or neither`, 'usage');
  return checkMaterial(material, names, undefined, needs);
}

/**
 * A library caller's TLS option as a start takes it (`setting`: its name, `tls`, `upstreamTls`, `registry.tls`),
 * checked as the CLI's files are (`loadTls`): an object of PEM Buffers or strings; the certificate and key
 * together, each what it says, and a pair; with `serves`, a certificate to serve (a proxy's listener). `{}` alone
 * is TLS with the system's CAs, where this side only dials. Unchecked, a key that was not the certificate's
 * rejected the start with OpenSSL's own error and then ended the process from inside the actor; a file's path
 * given for its contents did the same, and `{}` on a listener served plain TCP without a word.
 */
export function checkStartTls(setting: string, material: unknown, serves: boolean, needs: readonly CertPurpose[] = []): TlsMaterial | undefined {
  if (material === undefined) return undefined;
  const names = { cert: `${setting}.cert`, key: `${setting}.key`, ca: `${setting}.ca`, crl: `${setting}.crl` };
  const shape = `${setting} must be { cert, key, ca, crl }, each a PEM Buffer (readFileSync of the file) or string`;
  if (!isPlainObject(material)) {
    throw new TlsConfigError(`${shape}, got ${kindOf(material)}`, 'usage');
  }
  const m = material as Record<'cert' | 'key' | 'ca' | 'crl', unknown>;
  for (const role of ['cert', 'key', 'ca', 'crl'] as const) {
    const v = m[role];
    if (v === undefined || Buffer.isBuffer(v)) continue;
    if (typeof v !== 'string') throw new TlsConfigError(`${shape}; ${names[role]} is ${v === null ? 'null' : typeof v}`, 'usage');
    if (!v.includes('-----BEGIN')) throw new TlsConfigError(`${names[role]} is '${v.length > 80 ? `${v.slice(0, 80)}...` : v}', which is no PEM text: give the file's contents (readFileSync('${v.length > 80 ? '...' : v}')), not its path`, 'usage');
  }
  if (serves && !m.cert) {
    throw new TlsConfigError(`${setting} has no ${names.cert}${m.key ? '' : ` or ${names.key}`}: the listener serves TLS with them (leave ${setting} out to serve plain TCP)`, 'usage');
  }
  // `{}` is TLS with the system's CAs; anything more is checked as renewed material is.
  return !m.cert && !m.key && !m.ca && !m.crl ? (material as TlsMaterial) : checkTls(material as TlsMaterial, names, needs);
}

/**
 * What to say of the proxy's `upstreamTls` (a library caller's; `setting` names it) given without `ca`: every dial to
 * a server then verifies its certificate against the system's CAs, where the CLI refuses `upstream_tls` without `ca`
 * (config/proxy.ts `upstreamClashes`). A warn line at `startProxy` and at each `renewTls` that brings such a set, not a
 * refusal: servers dialled by names a public CA certified (`serverName`) are served so. Undefined with a `ca`.
 */
export function systemCasToward(setting: string, material: TlsMaterial | undefined): string | undefined {
  if (!material || material.ca) return undefined;
  return `${setting} has no ${setting}.ca: the proxy verifies each server's TLS certificate against the system's CAs (Node's default list, and NODE_EXTRA_CA_CERTS), which the CLI never does (it refuses upstream_tls without ca): they sign no server dialled at its address on a private network, whose every dial is then refused, and they vouch for any certificate one of them issued for the name dialled: give ${setting}.ca, the PEM CA that signs the servers' certificates, unless the servers hold a public CA's certificates for the names they are dialled by (${setting}.serverName)`;
}

/** A PEM private key under a passphrase: PKCS#8's encrypted form, or OpenSSL's traditional one (`Proc-Type: 4,ENCRYPTED`). */
const ENCRYPTED_KEY = /-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type:\s*4,\s*ENCRYPTED/;

/** Whether `key` is the private key of `cert` (false for a key of another kind too). */
function keyOf(cert: X509Certificate, key: KeyObject): boolean {
  try {
    return cert.checkPrivateKey(key);
  } catch {
    return false;
  }
}

/**
 * The checks of `loadTls` and `checkTls`: each file is what it says; the chain presented (`chainOf`) is valid
 * now (neither expired nor starting more than `CLOCK_SKEW_MS` ahead) and fit for `needs`, its leaf first; the
 * CA file holds a root valid now. `paths`: the files read, named in the errors with their settings (`names`).
 */
function checkMaterial(material: TlsMaterial, names: TlsNames, paths: TlsFiles | undefined, needs: readonly CertPurpose[]): TlsMaterial {
  const what = describer(names, paths);
  // Check the contents now, so a bad file is a clear error at start rather than a failed handshake later.
  // Each file on its own first, to name the one that is wrong: a CA file with no certificate in it
  // passes createSecureContext (an empty CA store), and then every peer's certificate is refused.
  if (material.cert && !holdsCertificate(material.cert)) {
    throw new TlsConfigError(`${what('cert')} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the certificate this side presents`);
  }
  let key: KeyObject | undefined;
  if (material.key) {
    // Node asks for no passphrase: it fails "interrupted or cancelled".
    if (ENCRYPTED_KEY.test(material.key.toString('latin1'))) {
      const file = paths?.key ?? 'key.pem';
      throw new TlsConfigError(`${what('key')} is encrypted (a passphrase protects it), and revproxy needs the private key unencrypted: decrypt it with \`openssl pkey -in ${file} -out ${file}.plain\` (it asks for the passphrase), make that file readable by revproxy's user only (chmod 600), and give it as ${names.key}`);
    }
    try {
      key = createPrivateKey(material.key);
    } catch (err) {
      throw new TlsConfigError(`${what('key')} is not a PEM private key (${(err as Error).message.trim()}): give the private key of ${names.cert}`);
    }
  }
  if (material.ca && !holdsCertificate(material.ca)) {
    throw new TlsConfigError(`${what('ca')} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the certificate of the CA that signs the peers' certificates`);
  }
  const now = Date.now();
  const certs = material.cert ? certificatesOf(material.cert) : [];
  // A chain whose intermediate comes first: OpenSSL says only that the key does not match (the first certificate's).
  const leaf = certs[0];
  const at = leaf && key && !keyOf(leaf, key) ? certs.findIndex((c) => keyOf(c, key!)) : -1;
  if (at > 0) {
    throw new TlsConfigError(`${what('cert')} begins with ${subjectOf(leaf!)}, and ${what('key')} is the key of ${subjectOf(certs[at]!)}, certificate ${at + 1} of ${certs.length} there: the leaf certificate (the key's) must come first, then the intermediates, each after the one it signed (cat leaf.pem intermediate.pem > chain.pem)`);
  }
  // A certificate that is not valid now, or not for what this side does with it, fails every handshake that needs it (peers
  // refuse it): refused here, where it can still be fixed (at start, on a reload that keeps the previous one, by --check), not at each peer.
  for (const { cert, depth, which } of checkedOf(chainOf(certs, now))) {
    if (endOf(cert) <= now) {
      throw new TlsConfigError(depth === 0
        ? `${what('cert')} holds a certificate that expired on ${dateOf(endOf(cert))}: every peer would refuse it: install the renewed certificate (and its key) there`
        : `${what('cert')} holds ${which}, which expired on ${dateOf(endOf(cert))}: every peer would refuse the chain ("certificate has expired" at depth ${depth}): install the CA's renewed intermediate there, after the certificate`);
    }
    if (startOf(cert) > now + CLOCK_SKEW_MS) {
      throw new TlsConfigError(`${what('cert')} holds ${which} valid only from ${dateOf(startOf(cert))}, in ${timeLeft(startOf(cert), now)}: every peer would refuse it until then ("certificate is not yet valid"): check this machine's clock and the CA's, or install a certificate valid now`);
    }
    for (const purpose of needs) {
      const unfit = unfitFor(cert, purpose);
      if (unfit) throw new TlsConfigError(`${what('cert')} holds ${which} whose ${unfit}: ${PURPOSE_USE[purpose]}, and refuses it ("unsuitable certificate purpose"): install one whose extendedKeyUsage has ${needs.join(' and ')} (or has no extendedKeyUsage)`);
    }
  }
  const cas = material.ca ? certificatesOf(material.ca) : [];
  if (cas.length && cas.every((c) => endOf(c) <= now)) {
    throw new TlsConfigError(`every certificate in ${what('ca')} has expired (the last on ${dateOf(Math.max(...cas.map(endOf)))}): no peer's certificate could be verified: install the CA's renewed certificate there`);
  }
  // A peer's chain is verified up to a self-signed certificate of this file (Node sets no partial-chain flag): an
  // intermediate alone, or a leaf (a peer's own certificate, not its CA's), verifies no one.
  if (cas.length && !cas.some((c) => !caProblem(c, now) && selfSigned(c))) {
    const each = cas.map((c) => caProblem(c, now) ?? `${subjectOf(c)} is an intermediate CA, issued by ${issuerOf(c)}`);
    throw new TlsConfigError(`${what('ca')} holds no root CA certificate (self-signed, valid now) to verify peers with: ${each.join('; ')}: no peer's certificate could be verified: give the certificate of the root CA that signs the peers' certificates (the one named as issuer)`);
  }
  if (material.crl) {
    if (!material.ca) throw new TlsConfigError(`${crlName(names)} goes with ${names.ca}: a CRL revokes certificates its CA signed, and only peers' certificates verified against ${names.ca} are checked against it`, 'usage');
    crlsOf(material.crl, what('crl'), names);
  }
  try {
    createSecureContext({ cert: material.cert, key: material.key, ca: material.ca, crl: material.crl && crlsOf(material.crl).map((c) => c.pem) });
  } catch (err) {
    const m = (err as Error).message;
    const which = /key values mismatch/.test(m) ? `${what('key')} is not the private key of ${what('cert')} (a renewed certificate comes with its own key: install both)`
      : /CRL/.test(m) ? `${what('crl')} holds a CRL the TLS library cannot read`
      : /no start line|PEM|asn1|ASN1|bad base64|nested asn1/.test(m) ? `${paths ? `a ${names.cert}, ${names.key} or ${names.ca} file` : `${names.cert}, ${names.key} or ${names.ca}`} is not a PEM certificate or key`
      : 'the TLS files were refused';
    throw new TlsConfigError(`${which}: ${m.trim()}`);
  }
  return material;
}

/**
 * The CRLs of a PEM file, each read (`parseCrl`): a TlsConfigError naming the file (`what`) when it holds
 * none or one cannot be read. Without `what`, of material checked already. Read once while in use (`byBytes`):
 * a dial reads them at each connection, and a reload reads the file again.
 */
const crlsOf = byBytes((pem: Buffer, what?: string, names?: TlsNames): Crl[] => {
  const blocks = crlBlocks(pem);
  const give = `give the CRL of each CA in ${names?.ca ?? '--tls-ca'}, in PEM (openssl ca -gencrl makes one; openssl crl -inform DER -in FILE -out FILE.pem turns a DER one into PEM)`;
  if (blocks.length === 0) {
    const holds = /-----BEGIN (TRUSTED |X509 )?CERTIFICATE-----/.test(pem.toString('latin1')) ? ': it holds a certificate (a CA\'s certificate goes in the CA file, the CRL it issues here)' : '';
    throw new TlsConfigError(`${what} holds no PEM CRL (-----BEGIN X509 CRL-----)${holds}: ${give}`);
  }
  return blocks.map((block, i) => {
    try {
      return parseCrl(block);
    } catch (err) {
      throw new TlsConfigError(`${what} holds a CRL that cannot be read (the ${blocks.length > 1 ? `${ordinal(i + 1)} of ${blocks.length}` : 'only one'}: ${(err as Error).message}): ${give}`);
    }
  });
});

const ordinal = (n: number): string => `${n}${n % 10 === 1 && n % 100 !== 11 ? 'st' : n % 10 === 2 && n % 100 !== 12 ? 'nd' : n % 10 === 3 && n % 100 !== 13 ? 'rd' : 'th'}`;

/** The CRLs as the TLS library takes them: one PEM block an entry (of a text of several it reads only the first). */
function crlOption(tls: TlsMaterial): string[] | undefined {
  return tls.crl && crlsOf(tls.crl).map((c) => c.pem);
}

/**
 * What to say of CRLs that can be read but will refuse peers (the setting `names.crl` in `file`), as
 * OpenSSL checks them at each handshake; empty when none. Said at start, by `--check` and at each
 * reload, as warnings: nginx and HAProxy load such files without a word, and the TLS library then
 * refuses the peers (fail closed), each refusal a `tls_refused` line naming its cause. A CRL's
 * nextUpdate is the expiry watch's (`crlValidities`, cli/cert-expiry.ts), said before it comes and
 * after: a CRL past it (its publisher late) is taken, as refused at start it would stop a restart,
 * and refused at a reload every other change in it, while the handshakes fail the same either way.
 */
export function crlWarnings(material: TlsMaterial | undefined, names: TlsNames, file: string | undefined): string[] {
  if (!material?.crl || !material.ca) return [];
  const now = Date.now();
  const setting = `the ${crlName(names)} file${file ? ` '${file}'` : ''}`;
  const crls = crlsOf(material.crl);
  const cas = certificatesOf(material.ca);
  const out: string[] = [];
  for (const crl of crls) {
    const of = `the CRL of ${crl.issuerName} in ${setting}`;
    if (!cas.some((ca) => issuedBy(crl, ca))) {
      const named = cas.find((ca) => namesOf(ca).subject.equals(crl.issuer));
      out.push(named
        ? `${of} is not signed by the key of that CA in ${names.ca} (a CRL of a previous key of a CA re-keyed under the same name?): install the CRL its current key issued`
        : `${of} was not issued by any CA in ${names.ca}: it is used only for the certificates of an intermediate CA of that name that peers present in their chains; if there is none, it is not the CRL meant (each CA in ${names.ca} needs its own)`);
    }
    if (crl.digest === undefined) {
      out.push(`${of} is signed with an algorithm revproxy cannot check (${crl.algorithm}, such as RSA-PSS): TLS checks it at each handshake, but a reload closes no open connection it revokes (only a CRL whose signature is checked here does)`);
    }
    if (crl.thisUpdate > now) {
      out.push(`${of} is valid only from ${new Date(crl.thisUpdate).toISOString()} (its thisUpdate): TLS refuses every peer certificate that CA signed until then (CRL_NOT_YET_VALID): check this machine's clock`);
    }
  }
  for (const ca of cas) {
    if (Date.parse(ca.validTo) <= now || crls.some((crl) => issuedBy(crl, ca))) continue;
    out.push(`the CA ${subjectOf(ca)} in ${names.ca} has no CRL in ${setting}: TLS refuses every peer certificate it signed (UNABLE_TO_GET_CRL: with CRLs given, each CA of a peer's chain needs its own); add that CA's CRL (an empty one when it revokes nothing)`);
  }
  return out;
}

/** Something in TLS material that works, but not everywhere or not for long: a warn line at start and at each reload, a warning of `--check`. */
export interface TlsWarning {
  /** The log line's event: `tls_cert_not_yet_valid`, `tls_ca_unusable`, `tls_cert_purpose`, `tls_cert_not_for_host`. */
  event: string;
  /** The setting that names the file (`names`'). */
  setting: string;
  message: string;
}

/**
 * What to warn of in TLS material `checkMaterial` took (`names` and `paths` as `loadTls`'s): a certificate of the
 * chain starting within `CLOCK_SKEW_MS`; a certificate of the CA file that verifies no one (expired, not valid
 * yet, a leaf) beside one that does; with `mayPresent`, a certificate unfit for clientAuth that this side presents
 * when it dials peers that may ask for one; and each of `dialledAs` (an address or name clients dial, and the
 * setting that says it) the certificate does not name (a loopback one passes when it names `localhost`). A
 * listening address (`listening`) that is an IP other than loopback passes when the certificate names hosts by
 * name: clients reach such an address by a name that resolves to it (`proxy.example.com` on 10.0.0.5), which is
 * not known here; an address clients are told to dial (registry.advertise) is dialled as it is.
 */
export function tlsWarnings(material: TlsMaterial | undefined, names: TlsNames, opts: { paths?: TlsFiles; mayPresent?: boolean; dialledAs?: ReadonlyArray<{ host: string; setting: string; listening?: boolean }> } = {}): TlsWarning[] {
  if (!material) return [];
  const what = describer(names, opts.paths);
  const now = Date.now();
  const out: TlsWarning[] = [];
  const warn = (event: string, role: 'cert' | 'ca', message: string): number => out.push({ event, setting: names[role], message });
  const certs = material.cert ? certificatesOf(material.cert) : [];
  for (const { cert, which } of checkedOf(chainOf(certs, now))) {
    if (startOf(cert) > now) warn('tls_cert_not_yet_valid', 'cert', `${what('cert')} holds ${which} valid only from ${dateOf(startOf(cert))}, in ${timeLeft(startOf(cert), now)}: until then peers refuse it ("certificate is not yet valid"): check this machine's clock and the CA's`);
    const unfit = opts.mayPresent && unfitFor(cert, 'clientAuth');
    if (unfit) warn('tls_cert_purpose', 'cert', `${what('cert')} holds ${which} whose ${unfit}: this side presents it when it dials, and a peer that asks for a certificate (mutual TLS: a server with --tls-ca, a proxy with tls.ca) refuses it ("unsuitable certificate purpose"): install one whose extendedKeyUsage has serverAuth and clientAuth`);
  }
  for (const { host, setting, listening } of certs.length ? opts.dialledAs ?? [] : []) {
    if (isEveryAddress(host)) continue;
    if (listening && isIP(unbracket(host)) && !isLoopback(host) && /(^|, )DNS:/.test(certs[0]!.subjectAltName ?? '')) continue;
    const alike = isLoopback(host) && unbracket(host) !== 'localhost' ? [host, 'localhost'] : [host];
    if (alike.every((name) => certificateMissesAddress(material.cert!, name))) warn('tls_cert_not_for_host', 'cert', `${what('cert')} is not for ${host}${alike.length > 1 ? ' nor localhost' : ''} (${setting}), which clients dial to reach this side: it names ${altNamesOf(certs[0]!)}: they refuse it (ERR_TLS_CERT_ALTNAME_INVALID) unless they dial a name it lists: give it a certificate whose subjectAltName names ${host}, or have clients dial a name it lists`);
  }
  // `checkMaterial` took the file: another of its certificates verifies peers.
  for (const c of material.ca ? certificatesOf(material.ca) : []) {
    const others = "peers whose certificates it signed are refused, while the file's other CA certificates verify theirs";
    if (endOf(c) <= now) warn('tls_ca_unusable', 'ca', `${what('ca')} holds a CA certificate that has expired: ${caProblem(c, now)}: ${others}: remove it from the file once its peers have moved to the renewed CA`);
    else if (startOf(c) > now) warn('tls_ca_unusable', 'ca', `${what('ca')} holds a CA certificate not valid yet: ${subjectOf(c)} is valid only from ${dateOf(startOf(c))}, in ${timeLeft(startOf(c), now)}: until then ${others}: check this machine's clock and the CA's`);
    else if (caProblem(c, now)) warn('tls_ca_unusable', 'ca', `${what('ca')} holds a certificate that is not a CA's: ${caProblem(c, now)}, which verifies no peer: remove it from the file (the CA that issued it is what verifies its peers)`);
  }
  return out;
}

/**
 * Whether the CRLs of `tls` revoke a peer's certificate: a function answering, for each certificate and
 * the chain its peer presented (`chain()`, asked for only when a CRL lists the certificate), the CRL that
 * lists it: its issuer's, with its serial number, signed by the key that signed the certificate (a CA of
 * `tls.ca`, or an intermediate of the chain; `revoking`). Undefined without CRLs.
 */
export function revokedBy(tls: TlsMaterial): ((cert: X509Certificate, chain?: () => readonly X509Certificate[]) => Crl | undefined) | undefined {
  if (!tls.crl) return undefined;
  const crls = crlsOf(tls.crl);
  const cas = tls.ca ? certificatesOf(tls.ca) : [];
  return (cert, chain = () => []) => revoking(crls, cert, () => [...cas, ...chain()].filter((c) => issued(c, cert)));
}

/** The dates of the CRLs of a PEM file `checkMaterial` took that have a nextUpdate, each a `Validity` (`crl`), for the expiry watch and the metric. */
export function crlValidities(pem: Buffer): Validity[] {
  return crlsOf(pem).flatMap((c) => (c.nextUpdate === undefined ? [] : [{ notBefore: c.thisUpdate, notAfter: c.nextUpdate, subject: c.issuerName, crl: true as const }]));
}

/**
 * How long a dial may wait for the peer (TCP, and TLS's handshake) before it is given up (ms): a
 * host that drops the packets (down, firewalled, cut off) would hold it for the system's connect
 * timeout, about two minutes on Linux. The library client's `connectTimeoutMs` default, and a
 * server's registration dial.
 */
export const DEFAULT_CONNECT_TIMEOUT_MS = 2000;

/**
 * TCP keepalive's idle time on the connections a server and a client dial (ms): probes after this
 * long without traffic, one a second, ten unanswered end the connection. Go's default for the
 * connections it dials and accepts.
 */
export const DEFAULT_TCP_KEEPALIVE_MS = 15_000;

/**
 * What to say of a dial to `host:port` given up after `ms` (`option`: the setting that chose `ms`). To a loopback
 * address (`isLoopback`: this machine) neither a host down nor a firewall is the likely cause: the dialling process's
 * own event loop stalled (the connection was made, its callback run late), or the listener's accept backlog is full
 * (a listener that stopped accepting, or a burst of connections): Linux drops the SYN then, and the dial waits.
 */
export function connectTimedOut(host: string, port: number, ms: number, option?: string): string {
  const head = `no answer from ${hostPort(host, port)} within ${ms} ms${option ? ` (${option})` : ''}`;
  if (!isLoopback(host)) return `${head}: is the host up, and does no firewall drop the connection?`;
  return `${head}: on this machine (a loopback address), so not a host down or a firewall, most likely: was this process's event loop stalled `
    + '(its load, a long synchronous task: the connection made in time but read late), or is the listener\'s accept backlog full '
    + '(a listener that stopped accepting or a burst of connections: `ss -ltn` shows its Recv-Q at its Send-Q)?';
}

/**
 * A TLS dial whose TCP connection was made, its handshake unanswered in time: the host is up and
 * something listens, but says nothing to a ClientHello (a revproxy proxy without TLS closes the
 * connection instead, and the dial says it does not speak TLS): another program, or a stalled one.
 */
export function handshakeTimedOut(host: string, port: number, ms: number, option?: string): string {
  return `the TCP connection to ${hostPort(host, port)} was made, but the TLS handshake got no answer within ${ms} ms${option ? ` (${option})` : ''}: `
    + 'does the proxy serve TLS there (--tls-cert, --tls-key), and is it a revproxy proxy, not another program, and not stalled?';
}

/**
 * How long a dial waits for its host name to resolve (ms): glibc's worst at its defaults (5 s a
 * try, 2 tries, for each of up to 3 nameservers). A resolver that takes seconds (a first nameserver
 * down costs its whole timeout at every lookup) still resolves, and the connection is timed after it.
 */
export const LOOKUP_TIMEOUT_MS = 30_000;

/**
 * The deadline of a dial to `host:port`: `ms` for the connection (TCP, and TLS's handshake), counted
 * from when the name resolved - the resolver's wait is not the peer's, and a dial abandoned at every
 * slow lookup would never connect - and `LOOKUP_TIMEOUT_MS` for the lookup. `slow` gets the sentence
 * saying which passed. An address is dialled at once: `ms` from now. Each is a deadline (`setDeadline`):
 * a connection made in time while the process was paused (a laptop asleep, a frozen VM) is taken.
 */
export function dialDeadline(socket: Socket, host: string, port: number, ms: number, clock: Clock, slow: (why: string) => void, option?: string): Timer {
  // Over TLS, a TCP connection made says the host is up and reached: what got no answer is the handshake.
  let tcpUp = false;
  if (socket instanceof TLSSocket) socket.once('connect', () => (tcpUp = true));
  const timedOut = (): string => (tcpUp ? handshakeTimedOut(host, port, ms, option) : connectTimedOut(host, port, ms, option));
  // As net.connect tells them (it looks up whatever isIP does not call an address: '1.2.3', '127.1'), so a name's time starts at its lookup.
  if (isIP(host) !== 0) return setDeadline(clock, () => slow(timedOut()), ms);
  let timer = setDeadline(clock, () => slow(`the name ${host} was not resolved within ${LOOKUP_TIMEOUT_MS} ms: its DNS server does not answer: check this machine's resolver (/etc/resolv.conf) and its DNS server`), LOOKUP_TIMEOUT_MS);
  // Emitted once per address found (and once with the error when there is none): the first starts the connection's time.
  socket.once('lookup', (err: Error | null) => {
    timer.cancel();
    if (!err) timer = setDeadline(clock, () => slow(timedOut()), ms);
  });
  return { cancel: () => timer.cancel() };
}

/** A lookup error: the name resolves, to no address of the family dialled from (`dial`'s `from`). */
export const NO_ADDRESS_OF_FAMILY = 'ENOADDRESSOFFAMILY';

/**
 * `dns.lookup` keeping the addresses of one family: a socket bound to an address of that family can dial
 * no other (EINVAL). A name with addresses of the other family only fails `NO_ADDRESS_OF_FAMILY`, naming
 * them; one with none fails as it would (ENOTFOUND), so its words stay the usual ones.
 */
function lookupIn(family: 4 | 6): LookupFunction {
  return (hostname, options, callback) => {
    dnsLookup(hostname, { ...options, family: 0, all: true }, (err, addresses) => {
      if (err) return callback(err, '', 0);
      const mine = addresses.filter((a) => a.family === family);
      if (mine.length === 0) {
        const other = addresses.map((a) => a.address).join(', ');
        return callback(Object.assign(new Error(`${hostname} has no IPv${family} address (it resolves to ${other})`), { code: NO_ADDRESS_OF_FAMILY }), '', 0);
      }
      if (options.all) (callback as unknown as (e: null, a: LookupAddress[]) => void)(null, mine);
      else callback(null, mine[0]!.address, family);
    });
  };
}

/**
 * Dial host:port, over TLS when `tls` is given (verifying the peer against `tls.ca`, presenting `tls.cert` if any);
 * from the local address `from` when given (a name then resolves to an address of `from`'s family only).
 */
export function dial(host: string, port: number, tls?: UpstreamTlsMaterial, from?: string): Socket {
  const source = from === undefined ? {} : { localAddress: from, lookup: lookupIn(isIP(from) as 4 | 6) };
  if (!tls) return netConnect({ host, port, ...source });
  // With `serverName` it goes as SNI (a name dialled too, else nothing: Node sends no address), and the certificate must
  // name it in place of the address dialled; with `names` it must also carry one of them (the proxy's upstream_tls.names).
  const names = tls.names?.length ? tls.names : undefined;
  const { serverName } = tls;
  const identity = (names || serverName !== undefined) && ((hostname: string, cert: PeerCertificate): Error | undefined => {
    const refused = (why: string | undefined): Error | undefined => why === undefined ? undefined : Object.assign(new Error(why), { code: CERT_NAME_NOT_ALLOWED, host: hostname, cert });
    // Without a server name, Node's own check of the address (or the name) dialled comes first.
    if (serverName === undefined) return checkServerIdentity(hostname, cert) ?? refused(notAllowedName(cert, names));
    return refused(notServerName(cert, serverName) ?? notAllowedName(cert, names));
  });
  const socket = tlsConnect({ host, port, ...source, ca: tls.ca, cert: tls.cert, key: tls.key, crl: crlOption(tls), rejectUnauthorized: true, servername: serverName ?? (isIP(host) !== 0 ? undefined : host), ...(identity ? { checkServerIdentity: identity } : {}) });
  socket.once('secureConnect', () => {
    const peer = livePeer(socket);
    if (!peer) return;
    // Read now, while Node still has it: later the chain is gone too.
    const chain = peer.chain();
    HANDSHAKE_PEERS.set(socket, { cert: peer.cert, chain: () => chain });
  });
  return socket;
}

/**
 * A TLS peer's certificate, and the chain above it that its handshake verified (its intermediates, then the CA): read
 * only when asked (a CRL's signer is looked for there), as a reload reads every connection's peer.
 */
export interface TlsPeer {
  cert: X509Certificate;
  chain(): readonly X509Certificate[];
}

/**
 * The servers' certificates of the proxy's links, read as each handshake ends (`dial`). Read later, Node gave none:
 * a link a second or two old answered getPeerX509Certificate() with undefined and getPeerCertificate() without
 * subjectaltname (Node 20.20, OpenSSL 3, TLS 1.3: the client's side, as the session tickets the server sends after the
 * handshake come in), so a reload whose CRL revoked a server's certificate, or whose names or server_name no longer
 * allowed it, closed no link (`closeRevoked`, `closeNotAllowed`).
 */
const HANDSHAKE_PEERS = new WeakMap<TLSSocket, TlsPeer>();

/** `socket`'s peer (`TlsPeer`): as its handshake ended when this process dialled it (`dial`), else as Node reads it now. */
export function peerOf(socket: TLSSocket): TlsPeer | undefined {
  return HANDSHAKE_PEERS.get(socket) ?? livePeer(socket);
}

function livePeer(socket: TLSSocket): TlsPeer | undefined {
  const cert = socket.getPeerX509Certificate();
  if (!cert) return undefined;
  const chain = (): X509Certificate[] => {
    const out: X509Certificate[] = [];
    // The last one names itself as its issuer.
    for (let c = socket.getPeerCertificate(true).issuerCertificate; c?.raw && !out.some((x) => x.raw.equals(c!.raw)); c = c.issuerCertificate) out.push(new X509Certificate(c.raw));
    return out;
  };
  return { cert, chain };
}

/** What to tell a person when a listen fails: the cause and what to do. */
export function describeListenError(err: NodeJS.ErrnoException, host: string, port: number): string {
  if (err.code === 'EADDRINUSE') return `port ${port} on ${host} is already in use: stop what holds it or choose another port`;
  if (err.code === 'EACCES') {
    const first = unprivilegedPortStart();
    return `no permission to listen on port ${port}: on this machine a port below ${first} needs privilege: choose a port of ${first} or above, or let the process bind it `
      + '(AmbientCapabilities=CAP_NET_BIND_SERVICE in its systemd unit, or setcap cap_net_bind_service=+ep on the node binary)';
  }
  if (err.code === 'EADDRNOTAVAIL') return `address ${host} is not on this machine: choose a local address`;
  // A link-local IPv6 address is one per interface: without its zone the kernel cannot tell which (`listen EINVAL`).
  if (err.code === 'EINVAL' && /^fe[89ab][0-9a-f]:/i.test(unbracket(host)) && !host.includes('%')) {
    return `cannot listen on ${hostPort(host, port)}: ${host} is a link-local IPv6 address, which needs its interface: give it as ${unbracket(host)}%eth0 (the interface's name, ip -6 addr lists them), or another address`;
  }
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return `cannot listen on ${hostPort(host, port)}: the host name does not resolve to an address: give an address of this machine (e.g. 127.0.0.1, or 0.0.0.0 for every one)`;
  return `cannot listen on ${hostPort(host, port)}: ${err.message}`;
}

/** The lowest port a process without privilege may listen on (Linux's net.ipv4.ip_unprivileged_port_start; 1024 elsewhere). */
function unprivilegedPortStart(): number {
  try {
    return Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8')) || 1024;
  } catch {
    return 1024;
  }
}

/**
 * Connections the kernel completes and holds for accept() (it caps this at net.core.somaxconn, 4096
 * since Linux 5.4). Node's 511 overflowed when a fleet came back at once: 1,000 servers dialling a
 * restarted proxy within a second lost 766 SYNs, and 67 of them gave up their connect after 2 s.
 */
export const LISTEN_BACKLOG = 4096;

/**
 * Listen on `host:port`: `listening` gets the port (the one picked, for 0) and the address
 * bound (the one `host` resolved to, when it is a name),
 * `failed` a sentence saying why not - whether Node reports it as an 'error'
 * (the port is taken) or throws it from listen() (a port out of range),
 * which inside an actor would escape uncaught. Once it listens, an 'error' is
 * a connection it could not accept (ENFILE, ENOBUFS: the server listens on):
 * `acceptFailed` gets those. `failed` gets the error too, for a caller with words of its own.
 */
export function listenOn(server: Server, port: number, host: string, listening: (port: number, address: string) => void, failed: (why: string, err: NodeJS.ErrnoException) => void, acceptFailed: (err: NodeJS.ErrnoException) => void): void {
  let up = false;
  server.on('error', (err: NodeJS.ErrnoException) => (up ? acceptFailed(err) : failed(describeListenError(err, host, port), err)));
  try {
    server.listen({ port, host, backlog: LISTEN_BACKLOG }, () => {
      up = true;
      const addr = server.address();
      listening(typeof addr === 'object' && addr ? addr.port : port, typeof addr === 'object' && addr ? addr.address : host);
    });
  } catch (err) {
    failed(describeListenError(err as NodeJS.ErrnoException, host, port), err as NodeJS.ErrnoException);
  }
}

/** A listener's TLS handshake timeout when none is given (Node's own default). */
export const TLS_HANDSHAKE_TIMEOUT_MS = 120_000;

/**
 * A listening server, TLS when `tls` has a certificate; with a CA it requires and verifies peers' certificates (mutual TLS).
 * With `allowHalfOpen` a peer's end leaves our side open to write: its owner ends it (`Connection.endWith`).
 */
export function listenServer(tls: TlsMaterial | undefined, onSocket: (socket: Socket) => void, opts: { handshakeTimeoutMs?: number; allowHalfOpen?: boolean } = {}): Server {
  const allowHalfOpen = opts.allowHalfOpen ?? false;
  if (!tls?.cert) return netServer({ allowHalfOpen }, onSocket);
  const server = tlsServer({
    ...contextOf(tls), requestCert: Boolean(tls.ca), rejectUnauthorized: Boolean(tls.ca),
    handshakeTimeout: opts.handshakeTimeoutMs || TLS_HANDSHAKE_TIMEOUT_MS, allowHalfOpen,
  }, onSocket);
  // A handshake that fails or stalls past its timeout must not keep its socket (and a connection slot): Node reports it and leaves it open.
  server.on('tlsClientError', (_err: Error, socket: Socket) => socket.destroy());
  return server;
}

/**
 * A listener's certificates and CA, as `tls.createServer` and `setSecureContext` take them; and no
 * renegotiation (TLS 1.2's; 1.3 has none). A peer asking for one again and again on one connection
 * cost the proxy a handshake each (1.7-3 ms of CPU; 386 on one connection in a probe), past the
 * per-address connection rate and unlogged: Node reports its own limit (3 in 10 minutes) as an error
 * and goes on. Refused, the peer gets a handshake_failure alert and the connection ends. nginx and
 * HAProxy refuse client renegotiation too.
 */
function contextOf(tls: TlsMaterial): SecureContextOptions {
  return { cert: tls.cert, key: tls.key, ca: tls.ca, crl: crlOption(tls), secureOptions: cryptoConstants.SSL_OP_NO_RENEGOTIATION };
}

/**
 * Give a listening TLS server of `listenServer` new files (renewed certificates, a new CA bundle):
 * handshakes from now on use them, connections already open keep what they began with. Whether
 * peers must present a certificate stays as it was at start (the server's, not the files'). A
 * plain TCP server (started without a certificate) stays as it is.
 */
export function renewTls(server: Server, tls: TlsMaterial): void {
  if (server instanceof TlsServer && tls.cert) server.setSecureContext(contextOf(tls));
}

/**
 * Call `ready` once a dialled socket may talk: after the handshake on TLS, after connecting on TCP.
 * Not when the dial met itself: a port in the system's ephemeral range (net.ipv4.ip_local_port_range,
 * 32768-60999 by default) with nothing listening can be the one the kernel picks for the dial's own
 * end, and TCP's simultaneous open then connects the socket to itself. A server dialling its stopped
 * proxy so read back its own SETUP and waited 10 s for an acceptance before it dialled again: a proxy
 * back meanwhile had it 10 s late. Such a socket fails as a refused dial does
 * (`ECONNREFUSED`, which is what it is: nothing listens), as Go's net package does for the same case.
 */
export function whenReady(socket: Socket, ready: () => void): void {
  if (socket instanceof TLSSocket) return void socket.once('secureConnect', ready);
  socket.once('connect', () => {
    if (socket.localPort !== socket.remotePort || socket.localAddress !== socket.remoteAddress) return ready();
    const at = hostPort(socket.remoteAddress ?? '?', socket.remotePort ?? 0);
    socket.destroy(Object.assign(new Error(`connect ECONNREFUSED ${at} (the dial met itself: nothing listens there, and the port is in this system's ephemeral range)`), { code: 'ECONNREFUSED', syscall: 'connect' }));
  });
}

/**
 * A host name a dial could not resolve, in words naming it and what to check; undefined for any
 * other failure. Every dial asks the resolver again (nothing caches an address), so each caller's
 * retry is also a new lookup: a name that comes back, or moves to another address, is followed.
 */
export function describeLookupError(err: NodeJS.ErrnoException, host: string): string | undefined {
  if (err.code === 'ENOTFOUND') return `the name ${host} does not resolve to an address on this machine (ENOTFOUND): check the name, and that its DNS or /etc/hosts lists it`;
  if (err.code === 'EAI_AGAIN' || err.code === 'EAI_FAIL') return `the name ${host} could not be resolved (${err.code}: the DNS server did not answer, or failed): check this machine's resolver (/etc/resolv.conf) and its DNS server`;
  return undefined;
}

/** Why a dial to `host` failed, in words: its name not resolving (`describeLookupError`), or `describeTlsError`'s. */
export function describeDialError(err: NodeJS.ErrnoException, host: string): string {
  return describeLookupError(err, host) ?? describeTlsError(err);
}

/**
 * What to look at when a port accepts a connection and closes it before answering anything: another
 * program on the port, a listener that wants TLS, one at a connection limit (max_connections, max_conns_per_peer,
 * max_conn_rate_per_peer); `also`, what else fits
 * the dialler (the client: 'is the old proxy (--wire json)'). The client (actors/client.ts) and
 * `revproxy load` both say them.
 */
export function closedAtOnce(also?: string): string {
  const first = 'check whether another program listens on that port, or the proxy wants TLS (--tls-ca, --tls-cert)';
  const limit = 'is at its connection limit (in all, from one address, or new ones a second: its conn_refused lines say which)';
  return also ? `${first}, ${CERT_REFUSED}, ${limit}, or ${also}` : `${first}, ${CERT_REFUSED} or ${limit}`;
}

/**
 * A listener that refused the certificate a dialler presented (mutual TLS), as the dialler can tell
 * it: in TLS 1.3 the dialler's handshake is done before the listener checks its certificate, and
 * Node's listener then closes the connection without an alert.
 */
export const CERT_REFUSED = "refused this side's TLS certificate (--tls-cert: signed by a CA not in its --tls-ca, or expired, or revoked by its --tls-crl: its tls_refused lines say which)";

/** Why a client's connection dialled without TLS is closed before any answer, most likely (a server's registration says `CLOSED_UNACCEPTED`). */
export const PLAIN_TO_TLS = 'check that a revproxy proxy listens on that port (not another program), and whether it wants TLS (--tls-ca, --tls-cert; tls in the library)';

/**
 * Why a proxy closed a plain registration before accepting it, without a word: it may serve TLS (the setup read as a
 * bad handshake), be another program, or have refused the address at its connection limits (it closes those unread).
 */
export const CLOSED_UNACCEPTED = 'it may want TLS (--tls-ca, --tls-cert; tls in the library), be another program than a revproxy proxy, or have refused this address at its connection limits (max_conns_per_peer, max_conn_rate_per_peer: its log says)';

/** A TLS failure in words a person can act on. */
export function describeTlsError(err: NodeJS.ErrnoException): string {
  const code = err.code ?? '';
  if (UNTRUSTED_CA_CODES.has(code)) return untrustedCertificate(code, 'give the CA that signed it with --tls-ca');
  if (code === 'INVALID_PURPOSE') {
    return `the peer's TLS certificate is not for a TLS server (${code}: its extendedKeyUsage, or that of a CA of its chain, lacks serverAuth): give the peer a certificate whose extendedKeyUsage has serverAuth`;
  }
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `the peer's TLS certificate does not name the address dialled: ${err.message}`;
  if (/wrong version number|packet length too long|unknown protocol/i.test(err.message)) {
    return 'the peer does not speak TLS: start it with --tls-cert and --tls-key, or dial it without TLS (no --tls-ca here)';
  }
  if (CERT_CODES.has(code) || CRL_CODES.has(code)) return refusedCertificate(code);
  return peerAlert(err.message) ?? err.message;
}

/** The proxy's files toward servers, as its words about a link name them: upstream_tls's, or tls's without it. */
const UP = (role: 'ca' | 'cert' | 'crl'): string => `the proxy's upstream_tls.${role} (tls.${role} without upstream_tls)`;

/** What a server's refusal of the proxy's certificate says to do, by the TLS alert it sent (RFC 8446's numbers). */
const SERVER_ALERTS: ReadonlyMap<number, string> = new Map([
  [116, `it asks for the proxy's certificate (its --tls-ca: mutual TLS) and the proxy presents none: give the proxy upstream_tls.cert and upstream_tls.key (--upstream-tls-cert, --upstream-tls-key), a certificate signed by a CA in the server's --tls-ca`],
  [48, `it does not trust the CA that signed the certificate the proxy presents (${UP('cert')}): give the proxy one signed by a CA in the server's --tls-ca, or add that CA there`],
  [45, `the certificate the proxy presents (${UP('cert')}) has expired: renew it (and its key), then reload the proxy (SIGHUP)`],
  [44, `the certificate the proxy presents (${UP('cert')}) is revoked (the CRL of the server's --tls-crl lists it): give the proxy one newly issued`],
  [42, `it refused the certificate the proxy presents (${UP('cert')}): the server's tls_refused lines say why`],
  [43, `it refused the certificate the proxy presents (${UP('cert')}): the server's tls_refused lines say why`],
  [46, `it refused the certificate the proxy presents (${UP('cert')}): the server's tls_refused lines say why`],
  [70, 'no TLS version both sides accept'],
  [40, 'no cipher or parameters both sides accept'],
]);

/**
 * A failed TLS dial of the proxy's link to a server in words naming the proxy's settings toward servers (`upstream_tls`,
 * or `tls` without it) and the server's (`--tls-cert`, `--tls-ca`), or undefined for an error that is not TLS's. The
 * link said OpenSSL's text (`...:ssl3_read_bytes:tlsv13 alert certificate required:../deps/openssl/...`), or Node's.
 */
export function describeUpstreamTlsError(err: NodeJS.ErrnoException): string | undefined {
  const code = err.code ?? '';
  if (code === CERT_NAME_NOT_ALLOWED) return err.message;
  if (UNTRUSTED_CA_CODES.has(code)) return untrustedCertificate(code, `add the CA that signed it to ${UP('ca')}, or give the server a certificate signed by a CA there`).replace(/^the peer's/, "the server's");
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return `the server's TLS certificate does not name the address the proxy dials (${err.message}): give the server a certificate with that address among its subjectAltName entries (IP:ADDRESS), as a server registering directly is dialled at the address its registration comes from; or give the proxy upstream_tls.server_name (--upstream-tls-server-name), a DNS name the servers' certificates carry, to verify in its place`;
  if (code === 'INVALID_PURPOSE') return `the server's TLS certificate is not for a TLS server (${code}: its extendedKeyUsage, or that of a CA of its chain, lacks serverAuth): give the server a certificate whose extendedKeyUsage has serverAuth`;
  if (code === 'CERT_HAS_EXPIRED') return `the server's TLS certificate has expired (${code}): give the server a renewed one (its --tls-cert)`;
  if (code === 'CERT_NOT_YET_VALID') return `the server's TLS certificate is not valid yet (${code}): check this machine's clock and the server's, or the certificate's start date`;
  if (code === 'CERT_REVOKED') return `the server's TLS certificate has been revoked (${code}): its CA lists it in ${UP('crl')}; the server needs a new certificate (and key), or the CRL is not the one meant`;
  if (CRL_CODES.has(code)) return `the server's TLS certificate could not be checked for revocation (${code}): ${UP('crl')} has no CRL from its CA, or one past its nextUpdate or not valid yet: install a fresh CRL of each CA in ${UP('ca')}, then reload (SIGHUP)`;
  if (/wrong version number|packet length too long|unknown protocol/i.test(err.message)) {
    return `the server does not speak TLS on its port, and the proxy dials its servers over TLS (its upstream_tls, or tls.ca without it): start the server with --tls-cert and --tls-key (a server of this build says how its port serves as it registers, and is refused then)`;
  }
  const n = Number(/SSL alert number (\d+)/.exec(err.message)?.[1] ?? NaN);
  const why = SERVER_ALERTS.get(n);
  if (why === undefined) return undefined;
  const name = /alert ([a-z ]+?)(?::|$)/i.exec(err.message)?.[1]?.trim() ?? `number ${n}`;
  return `the server refused the TLS handshake (its alert: ${name}): ${why}`;
}

/**
 * A link closed by its server before the server answered anything (its first PING's PONG): `overTls`, what the proxy
 * dialled with. A plain dial to a TLS port is closed so (the listener takes the PING for a bad handshake), and a TLS
 * dial whose certificate the server refused (TLS 1.3 ends the proxy's handshake before the server checks it).
 */
export function linkClosedUnanswered(overTls: boolean): string {
  const limits = 'or it is at its connection limits (its conn_refused lines say so)';
  return overTls
    ? `connection closed by the server before it answered anything: it may have refused the certificate the proxy presents (${UP('cert')}: its tls_refused lines say why), ${limits}`
    : `connection closed by the server before it answered anything: if it serves TLS on that port (revproxy server --tls-cert), the proxy dials it in plain TCP: give the proxy upstream_tls (--upstream-tls-ca, the CA that signed the servers' certificates); ${limits}, or it is not a revproxy server`;
}

/** Verification errors of the peer's certificate that `refusedCertificate` says in words (those of an untrusted CA aside). */
const CERT_CODES: ReadonlySet<string> = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'INVALID_PURPOSE', 'CERT_REVOKED']);

/**
 * The alert a TLS peer ended the handshake with (OpenSSL's `... alert certificate required ... SSL alert number 116`),
 * in words a person can act on; undefined for another error. A client without the certificate a mutual-TLS proxy asks
 * for was told a list of five causes with OpenSSL's source path in it (a TLS probe).
 */
export function peerAlert(message: string): string | undefined {
  const n = Number(/SSL alert number (\d+)/.exec(message)?.[1] ?? NaN);
  const why = PEER_ALERTS.get(n);
  if (why === undefined) return undefined;
  const name = /alert ([a-z ]+?)(?::|$)/i.exec(message)?.[1]?.trim() ?? `number ${n}`;
  return `the peer refused the TLS handshake (its alert: ${name}): ${why}`;
}

/** The alerts of a certificate refused for a reason the dialler is not told. */
const REFUSED_OURS = 'it refused this side\'s certificate: give --tls-cert and --tls-key signed by a CA it trusts (its tls_refused lines say why)';
/** What a TLS alert (RFC 8446's numbers) the peer ended the handshake with says to do. */
const PEER_ALERTS: ReadonlyMap<number, string> = new Map([
  [116, 'it asks for this side\'s certificate (mutual TLS) and none was given: give --tls-cert and --tls-key (tls.cert and tls.key in the library) signed by a CA in its --tls-ca'],
  [48, 'it does not trust the CA that signed this side\'s certificate: give a certificate signed by a CA in its --tls-ca, or add that CA there'],
  [45, 'this side\'s certificate has expired: renew --tls-cert (and its key)'],
  [44, 'this side\'s certificate is revoked (its CA\'s CRL lists it): give --tls-cert and --tls-key newly issued'],
  [42, REFUSED_OURS],
  [43, REFUSED_OURS],
  [46, REFUSED_OURS],
  [70, 'no TLS version both sides accept'],
  [40, 'no cipher or parameters both sides accept'],
]);
