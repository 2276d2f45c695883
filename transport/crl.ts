/**
 * Certificate revocation lists (CRLs, RFC 5280 section 5) read from PEM, as OpenSSL reads them: the
 * issuer, when the list was made and when the next one is due, the serial numbers it revokes, and
 * its signature. Node hands the TLS library one CRL for each entry of its `crl` option, and of a
 * PEM text holding several only the first (the rest were dropped without a word, and peers of every
 * other CA refused: `UNABLE_TO_GET_CRL`), so a file is split into its CRLs here (`crlBlocks`), and
 * checked before it is used (transport/tls.ts). Node's crypto reads certificates but not CRLs: their
 * DER is decoded by asn1.js, with RFC 5280's ASN.1 of a CertificateList written out below (`models`).
 * Pure: bytes in, facts out; no clock is read here.
 */
import { verify, type X509Certificate } from 'node:crypto';
import { lazyPackage } from './lazy.js';

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

/** A node of asn1.js's schema language (`this` in a model's body), as far as used here: each call returns the node it makes or changes. */
type Asn1Node = Record<'seq' | 'optional' | 'any' | 'int' | 'objid' | 'bitstr' | 'utctime' | 'gentime' | 't61str' | 'printstr' | 'unistr' | 'utf8str' | 'bmpstr' | 'ia5str', () => Asn1Node>
  & Record<'use' | 'seqof' | 'setof', (model: Asn1Model<unknown>) => Asn1Node>
  & { obj(...children: Asn1Node[]): Asn1Node; choice(alternatives: Record<string, Asn1Node>): Asn1Node; key(name: string): Asn1Node; explicit(tag: number): Asn1Node };
/**
 * A model asn1.js made (`define`): DER in, the values of its keys out. `track` is told where each element
 * decoded lies (`tagged`: from its tag to its end; its path: `tbsCertList/issuer`), which is how an
 * element's own DER is had: an `any` element's value runs on to the end of what holds it (asn1.js 5.4.1).
 */
interface Asn1Model<T> {
  decode(der: Buffer, encoding: 'der', options?: { track(path: string, start: number, end: number, type: string): void }): T;
}
/** asn1.js, a CommonJS package without types: what is used of it. */
interface Asn1 {
  define<T>(name: string, body: (this: Asn1Node) => void): Asn1Model<T>;
}

/** A Time (UTCTime or GeneralizedTime), as asn1.js reads it: ms since the epoch (a UTCTime's two-digit year as 1970-2069, where RFC 5280 reads 1950-2049: a CRL dated 1950-1969 is none made). */
interface Time {
  value: number;
}
/** A distinguished name: its RDNs, each of attributes (an OID's arcs, and the value's DER). */
type Name = Array<Array<{ type: number[]; value: Buffer }>>;
interface CertificateList {
  tbsCertList: {
    issuer: Name;
    thisUpdate: Time;
    nextUpdate?: Time;
    /** Each entry's serial number, an INTEGER (asn1.js's big number: `toString(16)`). */
    revokedCertificates?: Array<{ userCertificate: { toString(base: 16): string } }>;
  };
  signatureAlgorithm: { algorithm: number[] };
  signature: { unused: number; data: Buffer };
}

/**
 * RFC 5280's ASN.1 (sections 4.1 and 5.1) as asn1.js models, as far as this file reads it: a CRL (its
 * extensions, and its entries', left unread) and a certificate up to its subject. Made on first use.
 */
function defineModels({ define: model }: Asn1) {
  const AlgorithmIdentifier = model('AlgorithmIdentifier', function () {
    this.seq().obj(this.key('algorithm').objid(), this.key('parameters').optional().any());
  });
  const Time = model('Time', function () {
    this.choice({ utcTime: this.utctime(), generalTime: this.gentime() });
  });
  const AttributeTypeAndValue = model('AttributeTypeAndValue', function () {
    this.seq().obj(this.key('type').objid(), this.key('value').any());
  });
  const RelativeDistinguishedName = model('RelativeDistinguishedName', function () {
    this.setof(AttributeTypeAndValue);
  });
  const Name = model('Name', function () {
    this.seqof(RelativeDistinguishedName);
  });
  const RevokedCertificate = model('RevokedCertificate', function () {
    this.seq().obj(this.key('userCertificate').int(), this.key('revocationDate').use(Time), this.key('crlEntryExtensions').optional().any());
  });
  const TBSCertList = model('TBSCertList', function () {
    this.seq().obj(
      this.key('version').optional().int(),
      this.key('signature').use(AlgorithmIdentifier),
      this.key('issuer').use(Name),
      this.key('thisUpdate').use(Time),
      this.key('nextUpdate').optional().use(Time),
      this.key('revokedCertificates').optional().seqof(RevokedCertificate),
      this.key('crlExtensions').optional().explicit(0).any(),
    );
  });
  const CertificateList = model<CertificateList>('CertificateList', function () {
    this.seq().obj(this.key('tbsCertList').use(TBSCertList), this.key('signatureAlgorithm').use(AlgorithmIdentifier), this.key('signature').bitstr());
  });
  // What follows a certificate's subject is not read.
  const TBSCertificate = model('TBSCertificate', function () {
    this.seq().obj(
      this.key('version').optional().explicit(0).int(),
      this.key('serialNumber').int(),
      this.key('signature').use(AlgorithmIdentifier),
      this.key('issuer').use(Name),
      this.key('validity').seq().obj(this.key('notBefore').use(Time), this.key('notAfter').use(Time)),
      this.key('subject').use(Name),
    );
  });
  const Certificate = model('Certificate', function () {
    this.seq().obj(this.key('tbsCertificate').use(TBSCertificate));
  });
  // X.520's DirectoryString, and the IA5String of an emailAddress.
  const NameString = model<{ value: string }>('NameString', function () {
    this.choice({ teletexString: this.t61str(), printableString: this.printstr(), universalString: this.unistr(), utf8String: this.utf8str(), bmpString: this.bmpstr(), ia5String: this.ia5str() });
  });
  return { CertificateList, Certificate, NameString };
}

const asn1 = lazyPackage<Asn1>('asn1.js');
let made: ReturnType<typeof defineModels> | undefined;
const models = (): ReturnType<typeof defineModels> => (made ??= defineModels(asn1()));

/** Decode `der` with `model`, and the DER of the elements at `paths` (each the first there). */
function decodeWith<T, P extends string>(model: Asn1Model<T>, der: Buffer, paths: readonly P[]): { value: T; at: Record<P, Buffer> } {
  const at: Partial<Record<P, Buffer>> = {};
  const value = model.decode(der, 'der', {
    track(path, start, end, type) {
      if (type === 'tagged' && (paths as readonly string[]).includes(path) && !at[path as P]) at[path as P] = der.subarray(start, end);
    },
  });
  return { value, at: at as Record<P, Buffer> };
}

/** The digest `crypto.verify` takes for a signature algorithm's OID. */
const DIGESTS: Record<string, string | null> = {
  '1.2.840.10045.4.3.2': 'sha256', '1.2.840.10045.4.3.3': 'sha384', '1.2.840.10045.4.3.4': 'sha512', // ecdsa-with-SHA*
  '1.2.840.113549.1.1.11': 'sha256', '1.2.840.113549.1.1.12': 'sha384', '1.2.840.113549.1.1.13': 'sha512', '1.2.840.113549.1.1.5': 'sha1', // sha*WithRSAEncryption
  '1.3.101.112': null, '1.3.101.113': null, // Ed25519, Ed448
};

/** The short names of a distinguished name's usual attributes, as Node's X509Certificate.subject writes them. */
const ATTRIBUTES: Record<string, string> = {
  '2.5.4.3': 'CN', '2.5.4.10': 'O', '2.5.4.11': 'OU', '2.5.4.6': 'C', '2.5.4.7': 'L', '2.5.4.8': 'ST', '1.2.840.113549.1.9.1': 'emailAddress',
};

/** A distinguished name as a person reads it: `CN=revproxy CA, O=Example` (an attribute not named here by its OID). */
function nameOf(name: Name): string {
  return name.flatMap((rdn) => rdn.map(({ type, value }) => {
    const oid = type.join('.');
    let text: string;
    try {
      text = models().NameString.decode(value, 'der').value;
    } catch {
      text = `#${value.toString('hex')}`;
    }
    return `${ATTRIBUTES[oid] ?? oid}=${text}`;
  })).join(', ');
}

/** Read one PEM block of `crlBlocks`; an Error saying what is wrong when it is not a CRL. */
export function parseCrl(pem: string): Crl {
  const base64 = pem.replace(/-----(BEGIN|END) X509 CRL-----/g, '').replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64) || base64.length === 0) throw new Error('its base64 is broken');
  let list: CertificateList;
  let at: Record<'tbsCertList' | 'tbsCertList/issuer', Buffer>;
  try {
    ({ value: list, at } = decodeWith(models().CertificateList, Buffer.from(base64, 'base64'), ['tbsCertList', 'tbsCertList/issuer'] as const));
  } catch (err) {
    // asn1.js says where: `Failed to match tag: "objid" at: ["tbsCertList"]["signature"]["algorithm"]`.
    throw new Error(`its DER is not a CRL's (${(err as Error).message.split('\n')[0]})`);
  }
  const tbs = list.tbsCertList;
  const algorithm = list.signatureAlgorithm.algorithm.join('.');
  return {
    pem,
    issuer: at['tbsCertList/issuer'],
    issuerName: nameOf(tbs.issuer),
    thisUpdate: tbs.thisUpdate.value,
    ...(tbs.nextUpdate ? { nextUpdate: tbs.nextUpdate.value } : {}),
    revoked: new Set((tbs.revokedCertificates ?? []).map((r) => r.userCertificate.toString(16).toUpperCase())),
    signed: at.tbsCertList,
    algorithm,
    digest: DIGESTS[algorithm],
    // A signature's BIT STRING has no unused bits.
    signature: list.signature.data,
  };
}

/** A certificate's issuer and subject names (DER), as its tbsCertificate holds them. */
export function namesOf(cert: X509Certificate): { issuer: Buffer; subject: Buffer } {
  const { at } = decodeWith(models().Certificate, cert.raw, ['tbsCertificate/issuer', 'tbsCertificate/subject'] as const);
  return { issuer: at['tbsCertificate/issuer'], subject: at['tbsCertificate/subject'] };
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
