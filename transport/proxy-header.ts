/**
 * The PROXY protocol header (HAProxy's spec, versions 1 and 2) that an L4
 * balancer (HAProxy `send-proxy`, an AWS NLB, nginx `stream` with
 * `proxy_protocol on`) writes before the first byte of the client's own, to
 * name the client it accepted. Pure: bytes in, the client's address and the
 * bytes after the header out; no sockets here. Which peers must send one is
 * the listener's to decide (`--proxy-protocol-from`).
 */
import { ErrorCode, ProtocolError, hexPreview } from './errors.js';

/** The longest v1 header, `\r\n` included (the spec's 107 bytes). */
export const PROXY_V1_MAX = 107;
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
/** The v2 header's first 12 bytes. */
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED = 16;

/** A header read whole. */
export interface ProxyHeader {
  /** The client as the balancer saw it; undefined for v2 LOCAL (the balancer's own health check), v1 UNKNOWN and families other than TCP over IPv4 or IPv6: the socket's address stands. */
  source?: { address: string; port: number };
  /** Bytes the header took: what follows is the client's own. */
  length: number;
}

/** What the bytes so far are: a header, not enough bytes yet, or not a header (`error`). */
export type ProxyHeaderResult = { header: ProxyHeader } | { need: true } | { error: ProtocolError };

function bad(message: string): { error: ProtocolError } {
  return { error: new ProtocolError(ErrorCode.BAD_REQUEST, `bad PROXY protocol header: ${message}`) };
}

/** Whether `bytes` is (so far) a prefix of `of`. */
function prefixOf(bytes: Uint8Array, of: Uint8Array): boolean {
  const n = Math.min(bytes.length, of.length);
  for (let i = 0; i < n; i++) if (bytes[i] !== of[i]) return false;
  return true;
}

/**
 * Read a PROXY header from the start of `bytes` (everything received so far).
 *
 * @example
 * parseProxyHeader(Buffer.from('PROXY TCP4 203.0.113.7 10.0.0.2 51234 2100\r\n'))
 * // { header: { source: { address: '203.0.113.7', port: 51234 }, length: 44 } }
 */
export function parseProxyHeader(bytes: Buffer): ProxyHeaderResult {
  if (bytes.length === 0) return { need: true };
  if (prefixOf(bytes, PROXY_V2_SIGNATURE)) return bytes.length < V2_FIXED ? { need: true } : parseV2(bytes);
  if (prefixOf(bytes, V1_PREFIX)) return bytes.length < V1_PREFIX.length ? { need: true } : parseV1(bytes);
  return bad(`expected "PROXY " (v1) or the v2 signature first, got ${hexPreview(bytes)}${printable(bytes)}`);
}

function printable(bytes: Uint8Array): string {
  const text = Buffer.from(bytes.subarray(0, 24)).toString('latin1');
  return /^[\x20-\x7e]+$/.test(text.replace(/[\r\n].*$/s, '')) ? ` ("${text.replace(/[\r\n].*$/s, '')}")` : '';
}

function parseV1(bytes: Buffer): ProxyHeaderResult {
  const end = bytes.subarray(0, PROXY_V1_MAX).indexOf('\r\n', 0, 'latin1');
  if (end < 0) {
    if (bytes.length >= PROXY_V1_MAX) return bad(`a v1 header ends with CRLF within ${PROXY_V1_MAX} bytes, and none came in the first ${PROXY_V1_MAX}`);
    return { need: true };
  }
  const line = bytes.subarray(0, end).toString('latin1');
  const length = end + 2;
  const f = line.split(' ');
  if (f[1] === 'UNKNOWN') return { header: { length } };
  if (f.length !== 6 || (f[1] !== 'TCP4' && f[1] !== 'TCP6')) return bad(`expected "PROXY TCP4|TCP6 SRC DST SPORT DPORT" or "PROXY UNKNOWN", got "${line.replace(/[^\x20-\x7e]/g, '?')}"`);
  const src = f[1] === 'TCP4' ? ipv4Bytes(f[2]!) : ipv6Bytes(f[2]!);
  const dst = f[1] === 'TCP4' ? ipv4Bytes(f[3]!) : ipv6Bytes(f[3]!);
  const port = v1Port(f[4]!);
  if (!src || !dst || port === undefined || v1Port(f[5]!) === undefined) return bad(`the addresses or ports of "${line.replace(/[^\x20-\x7e]/g, '?')}" are not ${f[1] === 'TCP4' ? 'IPv4' : 'IPv6'} addresses and ports 0-65535`);
  return { header: { source: { address: formatIp(src), port }, length } };
}

function v1Port(s: string): number | undefined {
  if (!/^(0|[1-9]\d{0,4})$/.test(s)) return undefined;
  const n = Number(s);
  return n <= 65535 ? n : undefined;
}

function parseV2(bytes: Buffer): ProxyHeaderResult {
  const verCmd = bytes[12]!;
  if (verCmd >> 4 !== 2) return bad(`v2 signature with version ${verCmd >> 4} (only 2 is defined)`);
  const cmd = verCmd & 0x0f;
  if (cmd > 1) return bad(`v2 command ${cmd} (0 LOCAL and 1 PROXY are defined)`);
  const length = V2_FIXED + bytes.readUInt16BE(14);
  if (bytes.length < length) return { need: true };
  if (cmd === 0) return { header: { length } };
  const family = bytes[13]!;
  // TCP over IPv4 (0x11) or IPv6 (0x21): source, destination, then their ports. Anything else (UDP, UNIX, UNSPEC): the socket's address stands.
  const size = family === 0x11 ? 4 : family === 0x21 ? 16 : 0;
  if (size === 0) return { header: { length } };
  if (length < V2_FIXED + 2 * size + 4) return bad(`v2 ${size === 4 ? 'TCP over IPv4' : 'TCP over IPv6'} with ${length - V2_FIXED} bytes of addresses, fewer than the ${2 * size + 4} it takes`);
  const address = formatIp(bytes.subarray(V2_FIXED, V2_FIXED + size));
  return { header: { source: { address, port: bytes.readUInt16BE(V2_FIXED + 2 * size) }, length } };
}

function ipv4Bytes(s: string): Uint8Array | undefined {
  const parts = s.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) return undefined;
  return Uint8Array.from(parts.map(Number));
}

/** IPv6 text (with `::` and a dotted IPv4 tail allowed) as its 16 bytes. */
function ipv6Bytes(s: string): Uint8Array | undefined {
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groups = (h: string): number[] | undefined => {
    if (h === '') return [];
    const out: number[] = [];
    const parts = h.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = ipv4Bytes(p);
        if (!v4) return undefined;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(p)) out.push(parseInt(p, 16));
      else return undefined;
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return undefined;
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...head, ...new Array<number>(missing).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/**
 * An address as Node writes a socket's `remoteAddress`: dotted IPv4, or IPv6
 * compressed (RFC 5952) with IPv4-mapped ones as `::ffff:a.b.c.d`. The
 * per-address limits count by this text, so one client is one key whichever
 * header version or spelling named it.
 */
function formatIp(b: Uint8Array): string {
  if (b.length === 4) return b.join('.');
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `::ffff:${b.subarray(12).join('.')}`;
  const g = Array.from({ length: 8 }, (_, i) => (b[2 * i]! << 8) | b[2 * i + 1]!);
  // The longest run of two or more zero groups (the first of equal ones) becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j;
  }
  const hex = (xs: number[]): string => xs.map((x) => x.toString(16)).join(':');
  return best < 0 ? hex(g) : `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

/**
 * A connection's first bytes, gathered until they hold a whole header: never
 * more than a header can take (107 bytes for v1, 16 plus its stated length
 * for v2), so a peer cannot make it hold more.
 */
export class ProxyHeaderReader {
  private held: Buffer = Buffer.alloc(0);

  /** Bytes held so far. */
  get buffered(): number {
    return this.held.length;
  }

  /** The next read: the header and the bytes after it, not enough yet, or not a header. */
  push(chunk: Buffer): { header: ProxyHeader; rest: Buffer } | { need: true } | { error: ProtocolError } {
    const bytes = this.held.length === 0 ? chunk : Buffer.concat([this.held, chunk]);
    const r = parseProxyHeader(bytes);
    if ('header' in r) {
      this.held = Buffer.alloc(0);
      return { header: r.header, rest: bytes.subarray(r.header.length) };
    }
    // Only a prefix of a header is ever held: v1 is refused past 107 bytes, v2 stops at its stated length.
    this.held = 'need' in r ? Buffer.from(bytes) : Buffer.alloc(0);
    return r;
  }
}
