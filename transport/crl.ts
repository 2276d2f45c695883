/**
 * Certificate revocation lists (CRLs, RFC 5280 section 5) read from PEM, as OpenSSL reads them: the
 * issuer, when the list was made and when the next one is due, the serial numbers it revokes, and
 * its signature. Node hands the TLS library one CRL for each entry of its `crl` option, and of a
 * PEM text holding several only the first (the rest were dropped without a word, and peers of every
 * other CA refused: `UNABLE_TO_GET_CRL`), so a file is split into its CRLs here (`crlBlocks`), and
 * checked before it is used (transport/tls.ts). Node's crypto reads certificates but not CRLs: their
 * DER is walked here, as far as a CRL's facts go (~90 lines). Libraries were measured for it on a CRL of
 * 20,000 entries, in one process: asn1.js 5.9x this reader's time (and unmaintained since 2020),
 * @peculiar/asn1-x509 88x (and out of a 32 MiB heap at 5,000 entries), pkijs 120x; a reload reads every
 * CRL on the event loop, so this reader stays. Pure: bytes in, facts out; no clock is read here.
 */
import { verify, type X509Certificate } from 'node:crypto';

/** A CRL read from its PEM block. */
export interface Crl {
  /** The PEM block, as the TLS library takes it. */
  pem: string;
  /** The issuer's distinguished name (DER): a certificate's issuer field, as OpenSSL compares them. */
  issuer: Buffer;
  /** The issuer as a person reads it: `CN=revproxy CA, O=Example`. */
  issuerName: string;
  /** thisUpdate and nextUpdate (ms since the epoch, the wall clock's); a CRL without nextUpdate has none. */
  thisUpdate: number;
  nextUpdate?: number;
  /** The serial numbers it revokes: upper-case hex without leading zeros, as X509Certificate.serialNumber reads. */
  revoked: ReadonlySet<string>;
  /** What is signed, the signature algorithm (its OID), its digest for `crypto.verify` (null: Ed25519/Ed448; undefined: one not known here, RSA-PSS), and the signature. */
  signed: Buffer;
  algorithm: string;
  digest: string | null | undefined;
  signature: Buffer;
}

const BLOCK = /-----BEGIN X509 CRL-----[\s\S]*?-----END X509 CRL-----/g;

/** The PEM blocks of CRLs in `pem`, in order (other text around them is left, as OpenSSL leaves it). */
export function crlBlocks(pem: Buffer | string): string[] {
  return [...(typeof pem === 'string' ? pem : pem.toString('latin1')).matchAll(BLOCK)].map((m) => m[0]);
}

/** A DER element: its tag, where its contents begin and end, and where it began. */
interface Tlv {
  tag: number;
  at: number;
  start: number;
  end: number;
}

function tlv(buf: Buffer, at: number, limit = buf.length): Tlv {
  if (at + 2 > limit) throw new Error('it ends inside an element');
  const tag = buf[at]!;
  let len = buf[at + 1]!;
  let start = at + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4 || start + n > limit) throw new Error('an element has a length it cannot have');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[start + i]!;
    start += n;
  }
  if (start + len > limit) throw new Error('an element is longer than what holds it');
  return { tag, at, start, end: start + len };
}

/** The elements inside a constructed one. */
function inside(buf: Buffer, node: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let at = node.start; at < node.end; at = out[out.length - 1]!.end) out.push(tlv(buf, at, node.end));
  return out;
}

const SEQUENCE = 0x30;
const INTEGER = 0x02;
const BIT_STRING = 0x03;
const OID = 0x06;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;

function expect(node: Tlv | undefined, tag: number, what: string): Tlv {
  if (!node || node.tag !== tag) throw new Error(`no ${what} where the CRL format has one`);
  return node;
}

/** A UTCTime (YYMMDDHHMMSSZ: 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ), as ms since the epoch. */
function timeOf(buf: Buffer, node: Tlv): number {
  const text = buf.toString('latin1', node.start, node.end);
  const m = node.tag === UTC_TIME ? /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text) : /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/.exec(text);
  if (!m) throw new Error(`a time it cannot read ('${text}')`);
  const year = node.tag === UTC_TIME ? (Number(m[1]) < 50 ? 2000 : 1900) + Number(m[1]) : Number(m[1]);
  return Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
}

/** An INTEGER's value as upper-case hex without leading zeros ('0' for zero). */
function hexOf(buf: Buffer, node: Tlv): string {
  return buf.toString('hex', node.start, node.end).toUpperCase().replace(/^0+(?=.)/, '');
}

/** The digest `crypto.verify` takes for a signature algorithm's OID. */
const DIGESTS: Record<string, string | null> = {
  '1.2.840.10045.4.3.2': 'sha256', '1.2.840.10045.4.3.3': 'sha384', '1.2.840.10045.4.3.4': 'sha512', // ecdsa-with-SHA*
  '1.2.840.113549.1.1.11': 'sha256', '1.2.840.113549.1.1.12': 'sha384', '1.2.840.113549.1.1.13': 'sha512', '1.2.840.113549.1.1.5': 'sha1', // sha*WithRSAEncryption
  '1.3.101.112': null, '1.3.101.113': null, // Ed25519, Ed448
};

/** The short names of a distinguished name's usual attributes (their OIDs' DER contents, hex). */
const ATTRIBUTES: Record<string, string> = { '550403': 'CN', '55040a': 'O', '55040b': 'OU', '550406': 'C', '550407': 'L', '550408': 'ST', '2a864886f70d010901': 'emailAddress' };

/** An OID in dotted form: 2.5.4.3. */
function dotted(bytes: Buffer): string {
  const parts = [Math.floor(bytes[0]! / 40), bytes[0]! % 40];
  let n = 0;
  for (const b of bytes.subarray(1)) {
    n = n * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      parts.push(n);
      n = 0;
    }
  }
  return parts.join('.');
}

/** A distinguished name as a person reads it: `CN=revproxy CA, O=Example`. */
function nameOf(buf: Buffer, name: Tlv): string {
  return inside(buf, name).flatMap((rdn) => inside(buf, rdn).map((pair) => {
    const [oid, value] = inside(buf, pair);
    if (!oid || oid.tag !== OID || !value) return '?';
    const hex = buf.toString('hex', oid.start, oid.end);
    return `${ATTRIBUTES[hex] ?? dotted(buf.subarray(oid.start, oid.end))}=${buf.toString(value.tag === 0x1e ? 'utf16le' : 'utf8', value.start, value.end)}`;
  })).join(', ');
}

/** Read one PEM block of `crlBlocks`; an Error saying what is wrong when it is not a CRL. */
export function parseCrl(pem: string): Crl {
  const base64 = pem.replace(/-----(BEGIN|END) X509 CRL-----/g, '').replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64) || base64.length === 0) throw new Error('its base64 is broken');
  try {
    return readCrl(pem, Buffer.from(base64, 'base64'));
  } catch (err) {
    throw new Error(`its DER is not a CRL's (${(err as Error).message})`);
  }
}

function readCrl(pem: string, der: Buffer): Crl {
  const outer = expect(tlv(der, 0), SEQUENCE, 'CertificateList');
  const [tbs, sigAlgorithm, signature] = inside(der, outer);
  expect(tbs, SEQUENCE, 'tbsCertList');
  const sig = expect(signature, BIT_STRING, 'signature');
  const fields = inside(der, tbs!);
  let i = fields[0]?.tag === INTEGER ? 1 : 0; // version, v2's
  i++; // the signature algorithm, again
  const issuer = expect(fields[i++], SEQUENCE, 'issuer');
  const thisUpdate = fields[i++];
  if (!thisUpdate || (thisUpdate.tag !== UTC_TIME && thisUpdate.tag !== GENERALIZED_TIME)) throw new Error('no thisUpdate where the CRL format has one');
  const next = fields[i]?.tag === UTC_TIME || fields[i]?.tag === GENERALIZED_TIME ? fields[i++] : undefined;
  const revoked = new Set<string>();
  if (fields[i]?.tag === SEQUENCE) for (const entry of inside(der, fields[i++]!)) revoked.add(hexOf(der, expect(inside(der, entry)[0], INTEGER, "a revoked certificate's serial number")));
  const oid = expect(inside(der, expect(sigAlgorithm, SEQUENCE, 'signatureAlgorithm'))[0], OID, 'signature algorithm');
  const algorithm = dotted(der.subarray(oid.start, oid.end));
  return {
    pem,
    issuer: der.subarray(issuer.at, issuer.end),
    issuerName: nameOf(der, issuer),
    thisUpdate: timeOf(der, thisUpdate),
    ...(next ? { nextUpdate: timeOf(der, next) } : {}),
    revoked,
    signed: der.subarray(tbs!.at, tbs!.end),
    algorithm,
    digest: DIGESTS[algorithm],
    // A BIT STRING's first byte counts the unused bits of its last (0 for a signature).
    signature: der.subarray(sig.start + 1, sig.end),
  };
}

/** A certificate's issuer and subject names (DER), as its tbsCertificate holds them. */
export function namesOf(cert: X509Certificate): { issuer: Buffer; subject: Buffer } {
  const der = cert.raw;
  const fields = inside(der, inside(der, tlv(der, 0))[0]!);
  // [0] version, serialNumber, signature, issuer, validity, subject
  const i = fields[0]?.tag === 0xa0 ? 1 : 0;
  const [issuer, subject] = [fields[i + 2]!, fields[i + 4]!];
  return { issuer: der.subarray(issuer.at, issuer.end), subject: der.subarray(subject.at, subject.end) };
}

/**
 * Whether the key of `ca` signed `crl`: true or false, or undefined for an algorithm not known here
 * (`Crl.digest`).
 */
function signedBy(crl: Crl, ca: X509Certificate): boolean | undefined {
  if (crl.digest === undefined) return undefined;
  try {
    return verify(crl.digest, crl.signed, ca.publicKey, crl.signature);
  } catch {
    return false;
  }
}

/**
 * Whether `ca` issued `crl`: its subject is the CRL's issuer and its key verifies the CRL's signature
 * (of an algorithm not known here, the name alone). A CA re-keyed under the same name issues a
 * CRL the old key does not verify.
 */
export function issuedBy(crl: Crl, ca: X509Certificate): boolean {
  return namesOf(ca).subject.equals(crl.issuer) && signedBy(crl, ca) !== false;
}

/**
 * The CRL of `crls` that revokes `cert`, or undefined: one naming its issuer, listing its serial number,
 * and signed by the key of one of `signers()`, the certificates whose key signed `cert` (a CA that verifies
 * peers, or an intermediate of the chain the peer presented: an intermediate's CRL is signed by its key),
 * asked for only when a CRL lists it. A CRL whose signature does not verify (a forged one, or one of a
 * previous key of the CA) revokes nothing here; nor one of an algorithm not known here (RSA-PSS), whose
 * signature cannot be checked.
 */
export function revoking(crls: readonly Crl[], cert: X509Certificate, signers: () => readonly X509Certificate[]): Crl | undefined {
  const serial = cert.serialNumber.toUpperCase().replace(/^0+(?=.)/, '');
  const listing = crls.filter((c) => c.revoked.has(serial));
  if (listing.length === 0) return undefined;
  const { issuer } = namesOf(cert);
  const keys = signers();
  return listing.find((c) => c.issuer.equals(issuer) && keys.some((ca) => signedBy(c, ca) === true));
}
