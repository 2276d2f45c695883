/**
 * What a peer that is not a revproxy peer seems to be, from the first bytes
 * it sent: an HTTP server or client, TLS where plain TCP was expected, an SSH,
 * Redis, mail or FTP server, or one of the old programs (JSON). The decoders
 * ask when a connection's very first bytes cannot start a message, so the
 * error says what the peer is and what to do instead of "frame at byte 0
 * declares 1213486160 bytes". A TLS listener asks the same of the TLS
 * library's refusals. Pure: bytes (or an error code) in, words out.
 */

export type ForeignKind =
  | 'http-server' | 'http-client' | 'tls-client' | 'tls' | 'tls-alert' | 'ssh' | 'redis' | 'banner' | 'json' | 'json-value' | 'proxy-header'
  /** Seen by a TLS listener (recogniseTlsRefusal). */
  | 'plain' | 'no-certificate' | 'bad-certificate' | 'closed';

export interface ForeignPeer {
  /** What was recognised (stable; specs and callers may branch on it). */
  kind: ForeignKind;
  /** One sentence for a person: what the peer seems to be, and what to do. */
  message: string;
}

const CHECK = 'check the host and port dialled';

/** The first line of what the peer sent, printable and short, for quoting. */
function firstLine(bytes: Uint8Array, max = 60): string {
  let end = 0;
  while (end < bytes.length && end < max && bytes[end] !== 0x0d && bytes[end] !== 0x0a) end++;
  const text = Buffer.from(bytes.subarray(0, end)).toString('latin1').replace(/[^\x20-\x7e]/g, '?');
  return end === max && end < bytes.length && bytes[end] !== 0x0d && bytes[end] !== 0x0a ? `${text}...` : text;
}

function startsWith(bytes: Uint8Array, text: string): boolean {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) if (bytes[i] !== text.charCodeAt(i)) return false;
  return true;
}

const HTTP_METHODS = ['GET ', 'POST ', 'PUT ', 'HEAD ', 'DELETE ', 'OPTIONS ', 'PATCH ', 'CONNECT ', 'TRACE ', 'PRI * HTTP/2'];

/**
 * What the peer seems to be, from the first bytes of its connection; undefined
 * when they look like nothing known (or too few bytes have come to tell).
 *
 * @example
 * recogniseForeign(Buffer.from('HTTP/1.1 400 Bad Request\r\n'))?.kind // 'http-server'
 */
export function recogniseForeign(bytes: Uint8Array): ForeignPeer | undefined {
  const b0 = bytes[0];
  if (b0 === undefined) return undefined;
  // TLS records: content type, then version 3.x (SSL 3.0 to TLS 1.3 all write 0x03 first).
  if ((b0 === 0x16 || b0 === 0x15) && bytes[1] === 0x03 && (bytes[2] ?? 0) <= 0x04) {
    if (b0 === 0x15) {
      return {
        kind: 'tls-alert',
        message: 'the peer speaks TLS and refused these plain bytes (it sent a TLS alert): connect to it with TLS (--tls-ca, and --tls-cert and --tls-key if it asks for a certificate)',
      };
    }
    if (bytes[5] === 0x01) {
      return {
        kind: 'tls-client',
        message: 'the peer speaks TLS and this side does not (it sent a TLS ClientHello): give this side --tls-cert and --tls-key, or have the peer connect without TLS',
      };
    }
    return { kind: 'tls', message: 'the peer speaks TLS and this side does not (it sent a TLS handshake): use TLS on both sides (--tls-cert, --tls-key, --tls-ca) or on neither' };
  }
  if (startsWith(bytes, 'PROXY ') || startsWith(bytes, '\r\n\r\n\0\r\nQUIT\n')) {
    return {
      kind: 'proxy-header',
      message: `the peer sent a PROXY protocol header (it is a load balancer with send-proxy or proxy_protocol on), and its address is not one this port takes one from: on a revproxy proxy, list the balancer in --proxy-protocol-from (proxy_protocol_from); a revproxy server takes none`,
    };
  }
  if (startsWith(bytes, 'HTTP/')) {
    return { kind: 'http-server', message: `the peer is an HTTP server, not a revproxy peer (it answered "${firstLine(bytes)}"): ${CHECK}` };
  }
  if (HTTP_METHODS.some((m) => startsWith(bytes, m))) {
    return {
      kind: 'http-client',
      message: `the peer speaks HTTP, not revproxy frames (it sent "${firstLine(bytes)}"): this port is not a web page; /metrics and the health checks are on the --admin port, the inspector page on the --inspect port`,
    };
  }
  if (startsWith(bytes, 'SSH-')) {
    return { kind: 'ssh', message: `the peer is an SSH server, not a revproxy peer (it said "${firstLine(bytes)}"): ${CHECK}` };
  }
  if (startsWith(bytes, '-ERR') || startsWith(bytes, '-NOAUTH') || startsWith(bytes, '-DENIED') || startsWith(bytes, '-WRONGPASS')) {
    return { kind: 'redis', message: `the peer looks like a Redis server, not a revproxy peer (it answered "${firstLine(bytes)}"): ${CHECK}` };
  }
  if (startsWith(bytes, '220 ') || startsWith(bytes, '220-')) {
    return { kind: 'banner', message: `the peer is a mail (SMTP) or FTP server, not a revproxy peer (it said "${firstLine(bytes)}"): ${CHECK}` };
  }
  if (b0 === 0x7b) {
    return {
      kind: 'json',
      message: `the peer speaks the old JSON wire (it sent "${firstLine(bytes)}"): it is one of the old programs; talk to it with --wire json`,
    };
  }
  // A JSON array: said "frame at byte 0 declares 1529949234 bytes" ('[1,2').
  if (b0 === 0x5b) {
    return {
      kind: 'json-value',
      message: `the peer sent JSON that is not an object (it sent "${firstLine(bytes)}"): a revproxy peer speaks frames, or the old JSON wire's one object ({...}) per message`,
    };
  }
  return undefined;
}

/**
 * What a peer refused by a TLS listener seems to be, from the TLS library's
 * error code: plain TCP or plain HTTP on a TLS port, or a peer without the
 * certificate mutual TLS asks for. Undefined for anything else (the library's
 * own message then says it best). `certificate` is the peer certificate's
 * verification error (a TLS socket's `authorizationError`): Node closes a
 * handshake whose peer certificate it refuses itself, reported as a socket
 * hang-up, so the verification error is what says why.
 */
export function recogniseTlsRefusal(code: string | undefined, certificate?: string): ForeignPeer | undefined {
  if (certificate) return { kind: 'bad-certificate', message: refusedCertificate(certificate) };
  switch (code) {
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
    case 'ERR_SSL_UNKNOWN_PROTOCOL':
      return {
        kind: 'plain',
        message: 'the peer speaks plain TCP to this TLS port (a revproxy client or server without --tls-ca, or one of the old programs): have it connect with TLS (--tls-ca)',
      };
    case 'ERR_SSL_HTTP_REQUEST':
    case 'ERR_SSL_HTTPS_PROXY_REQUEST':
      return { kind: 'http-client', message: 'the peer sent a plain HTTP request to this TLS port: it is not a revproxy peer; /metrics and the health checks are on the --admin port, the inspector page on the --inspect port' };
    case 'ECONNRESET':
      // Node's words for it are "socket hang up".
      return { kind: 'closed', message: 'the peer closed the connection before its TLS handshake was done' };
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
      return {
        kind: 'no-certificate',
        message: 'the peer presented no TLS certificate, and this side asks for one (--tls-ca): give the peer --tls-cert and --tls-key signed by that CA',
      };
    default:
      return undefined;
  }
}

/**
 * The verification errors (OpenSSL's, as Node names them) that say a certificate is not signed by a
 * CA the verifying side trusts: said so by a listener of its peer's (`recogniseTlsRefusal`) and by a
 * dialler of its listener's (tls.ts `describeTlsError`).
 */
export const UNTRUSTED_CA_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_SIGNATURE_FAILURE',
]);

/**
 * The verification errors that say this side's CRLs (--tls-crl) cannot vouch for a certificate, whatever
 * the certificate: none from its CA, one past its nextUpdate or not valid yet, or one whose signature fails.
 */
export const CRL_CODES: ReadonlySet<string> = new Set([
  'UNABLE_TO_GET_CRL', 'CRL_HAS_EXPIRED', 'CRL_NOT_YET_VALID', 'CRL_SIGNATURE_FAILURE', 'UNABLE_TO_DECRYPT_CRL_SIGNATURE',
  'ERROR_IN_CRL_LAST_UPDATE_FIELD', 'ERROR_IN_CRL_NEXT_UPDATE_FIELD', 'UNABLE_TO_GET_CRL_ISSUER', 'KEYUSAGE_NO_CRL_SIGN',
  'DIFFERENT_CRL_SCOPE', 'CRL_PATH_VALIDATION_ERROR', 'UNHANDLED_CRITICAL_CRL_EXTENSION',
]);

/** Why this side's CRLs could not vouch for a certificate (a `CRL_CODES` code), and what to do. */
export function crlProblem(code: string): string {
  const fix = 'install a fresh CRL of each CA in --tls-ca there, then reload (SIGHUP)';
  switch (code) {
    case 'UNABLE_TO_GET_CRL':
      return `this side's --tls-crl has no CRL from the CA that signed it (${code}: with CRLs given, each CA of a chain needs its own): add that CA's CRL (an empty one when it revokes nothing), then reload (SIGHUP)`;
    case 'CRL_HAS_EXPIRED':
      return `the CRL of its CA in this side's --tls-crl is past its nextUpdate (${code}): ${fix}`;
    case 'CRL_NOT_YET_VALID':
      return `the CRL of its CA in this side's --tls-crl is not valid yet (${code}): check this machine's clock, or ${fix}`;
    default:
      return `the CRL of its CA in this side's --tls-crl cannot be used (${code}): ${fix}`;
  }
}

/**
 * The verification errors of a chain that ends short of a CA the verifying side trusts: its last certificate's
 * issuer is not in this side's CA file. Either the peer left out an intermediate CA's certificate (it sends its
 * leaf alone: OpenSSL's "unable to verify the first certificate"), or no CA here signed it.
 */
const ISSUER_NOT_FOUND = new Set(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY']);

/**
 * What to say of a peer's certificate that does not lead to a CA this side trusts (`UNTRUSTED_CA_CODES`):
 * `fix`, what to do when its CA is not one this side trusts; for an issuer not found, that the peer may
 * have left out its intermediate, the likelier cause where peers come from one CA.
 */
export function untrustedCertificate(code: string, fix: string): string {
  if (!ISSUER_NOT_FOUND.has(code)) return `the peer's TLS certificate is not signed by a CA this side trusts (${code}): ${fix}`;
  return `the peer's TLS certificate does not lead to a CA this side trusts (${code}): if an intermediate CA signed it, the peer sends it without that intermediate's certificate: its --tls-cert file must hold its certificate, then the intermediate's (the chain); if not, it is not signed by a CA this side trusts: ${fix}`;
}

/**
 * Why a peer's TLS certificate was refused, from its verification error, and what to do: a listener's of its peer's
 * (a dialler's of its listener's says an untrusted CA and INVALID_PURPOSE its own way: tls.ts `describeTlsError`).
 */
export function refusedCertificate(code: string): string {
  if (UNTRUSTED_CA_CODES.has(code)) return untrustedCertificate(code, "give the peer a certificate signed by a CA in this side's --tls-ca, or add the CA that signed it there");
  if (CRL_CODES.has(code)) return `the peer's TLS certificate could not be checked for revocation: ${crlProblem(code)}`;
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return `the peer's TLS certificate has expired (${code}): give the peer a renewed one (its --tls-cert)`;
    case 'CERT_NOT_YET_VALID':
      return `the peer's TLS certificate is not valid yet (${code}): check this machine's clock and the peer's, or the certificate's start date`;
    case 'CERT_REVOKED':
      return `the peer's TLS certificate has been revoked (${code}): its CA lists it in this side's --tls-crl; the peer needs a new certificate (and key), or the CRL is not the one meant`;
    case 'INVALID_PURPOSE':
      // This side asked for a certificate (mutual TLS): the peer's must be a TLS client's, as OpenSSL checks its extended key usage.
      return `the peer's TLS certificate is not for a TLS client (${code}: its extendedKeyUsage, or that of a CA of its chain, lacks clientAuth): this side asks peers for a certificate (--tls-ca) and checks that: give the peer a certificate whose extendedKeyUsage has clientAuth (and serverAuth, for a server or proxy that also serves it)`;
    default:
      return `the peer's TLS certificate was refused (${code}): check it against this side's --tls-ca (openssl verify -CAfile)`;
  }
}

/**
 * Why a TLS listener's handshakes fail, as revproxy_tls_handshake_failures_total counts them: a fixed
 * set, so a peer cannot make new series. `crl` is this side's CRLs failing (none from the peer's CA,
 * one past its nextUpdate), not the peer's certificate; `closed`, a peer that hung up mid-handshake
 * (a Node peer refusing this side's certificate does so without an alert); `peer_alert`, one that said
 * why with a TLS alert.
 */
export const TLS_FAILURES = ['no_certificate', 'unknown_ca', 'expired', 'not_yet_valid', 'revoked', 'crl', 'bad_purpose', 'plain_tcp', 'http', 'timeout', 'closed', 'peer_alert', 'other'] as const;
export type TlsFailure = (typeof TLS_FAILURES)[number];

/** The `TLS_FAILURES` reason of a listener's failed handshake: the TLS library's error code, and the peer certificate's verification error if any. */
export function tlsFailureOf(code: string | undefined, certificate?: string): TlsFailure {
  if (certificate) {
    if (UNTRUSTED_CA_CODES.has(certificate)) return 'unknown_ca';
    if (CRL_CODES.has(certificate)) return 'crl';
    const known: Record<string, TlsFailure> = { CERT_HAS_EXPIRED: 'expired', CERT_NOT_YET_VALID: 'not_yet_valid', CERT_REVOKED: 'revoked', INVALID_PURPOSE: 'bad_purpose' };
    return known[certificate] ?? 'other';
  }
  const kind = recogniseTlsRefusal(code)?.kind;
  if (kind === 'no-certificate') return 'no_certificate';
  if (kind === 'plain') return 'plain_tcp';
  if (kind === 'http-client') return 'http';
  if (kind === 'closed') return 'closed';
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return 'timeout';
  if (code && /^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT_/.test(code)) return 'peer_alert';
  return 'other';
}
