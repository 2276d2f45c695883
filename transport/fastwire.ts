/**
 * A fast path for the two messages that carry the traffic: DATA (client ->
 * proxy -> server) and ACK (server -> proxy -> client). Pure: bytes in,
 * messages out, and messages into a caller's buffer.
 *
 * `decodeHot` scans one MessagePack body that is a flat map of short ASCII
 * strings and small integers and returns the same normalised message
 * msgpackr + `toMessage` would. It only ever answers for a message that is
 * valid: anything else - another type, a missing or out-of-range field,
 * nested values, bin, ext, floats, non-ASCII text, trailing bytes - returns
 * undefined, and the caller takes the general path, which gives the exact
 * value or the exact BAD_REQUEST error. So validation has one definition,
 * `toMessage`, and this file only recognises its commonest yes.
 *
 * `encodeHot` writes a DATA or ACK body straight into an outgoing buffer,
 * decoded by msgpackr as the same map (not necessarily msgpackr's own bytes:
 * integers and string headers may use a wider encoding).
 *
 * The limits and spellings checked here are the model's (messages.ts),
 * imported, never restated.
 */
import { isIdValue, MAX_SEQ, MsgType, ownSpellingFirst, POLICY_KEY, type AckMsg, type DataMsg, type Message } from './messages.js';

// Keys the hot messages use. Anything else is skipped when its value is a scalar.
const enum K {
  OTHER,
  TYPE,
  SEQ,
  SRCID,
  DESTID,
  POLICY,
  POLICY_OTHER,
  PAYLOAD,
  PAYLOADSIZE,
}

/** The keys' names: the model's fields (the compiler checks them against it), the policy's two spellings from messages.ts. */
const KEY_NAMES: ReadonlyArray<readonly [K, keyof DataMsg | keyof AckMsg | typeof POLICY_KEY.SETUP]> = [
  [K.TYPE, 'type'],
  [K.SEQ, 'seq'],
  [K.SRCID, 'srcid'],
  [K.DESTID, 'destid'],
  [K.POLICY, POLICY_KEY.DATA],
  [K.POLICY_OTHER, POLICY_KEY.SETUP],
  [K.PAYLOAD, 'payload'],
  [K.PAYLOADSIZE, 'payloadsize'],
];

/**
 * The keys by length, as little-endian 32-bit words of their bytes (the last
 * one padded with zeros): a key is found by its length, then compared four
 * bytes at a time with the one or two keys of that length, without making a string.
 */
const KEY_WORDS: Array<Int32Array | undefined> = [];
const KEY_IDS: Array<K[] | undefined> = [];
for (const [k, name] of KEY_NAMES) {
  const n = name.length;
  const words = new Int32Array(Math.ceil(n / 4));
  for (let i = 0; i < n; i++) words[i >> 2]! |= name.charCodeAt(i) << (8 * (i & 3));
  const had = KEY_WORDS[n];
  KEY_WORDS[n] = had ? Int32Array.from([...had, ...words]) : words;
  (KEY_IDS[n] ??= []).push(k);
}

/** What a key's bytes name. */
function keyAt(b: Uint8Array, at: number, len: number): K {
  const ids = KEY_IDS[len];
  if (ids === undefined) return K.OTHER;
  const words = KEY_WORDS[len]!;
  const per = (len + 3) >> 2;
  for (let c = 0; c < ids.length; c++) if (same(b, at, len, words, c * per)) return ids[c]!;
  return K.OTHER;
}

/** Whether the `len` bytes at `at` are those `words` hold from `w`. */
function same(b: Uint8Array, at: number, len: number, words: Int32Array, w: number): boolean {
  let i = 0;
  for (; i + 4 <= len; i += 4, w++) {
    if ((b[at + i]! | (b[at + i + 1]! << 8) | (b[at + i + 2]! << 16) | (b[at + i + 3]! << 24)) !== words[w]) return false;
  }
  switch (len - i) {
    case 3: return (b[at + i]! | (b[at + i + 1]! << 8) | (b[at + i + 2]! << 16)) === words[w];
    case 2: return (b[at + i]! | (b[at + i + 1]! << 8)) === words[w];
    case 1: return b[at + i] === words[w];
    default: return true;
  }
}

// Short strings recur (ids, policies): kept by a hash of their bytes, so a repeat costs no allocation.
const SHORT = 24;
const cache: Array<string | undefined> = new Array(512).fill(undefined);

/** An ASCII string from bytes, or undefined when a byte is not ASCII. */
function ascii(buf: Uint8Array, at: number, len: number): string | undefined {
  if (len < SHORT) {
    let h = len;
    for (let i = 0; i < len; i++) h = (Math.imul(h, 31) + buf[at + i]!) | 0;
    const slot = (h ^ (h >>> 9)) & 511;
    const hit = cache[slot];
    // A cached string is ASCII, so bytes equal to it are too.
    if (hit !== undefined && hit.length === len) {
      let i = 0;
      while (i < len && hit.charCodeAt(i) === buf[at + i]) i++;
      if (i === len) return hit;
    }
    const s = latin1(buf, at, len);
    if (s !== undefined) cache[slot] = s;
    return s;
  }
  return latin1(buf, at, len);
}

/** The bytes as a string when every one is ASCII, else undefined. */
function latin1(buf: Uint8Array, at: number, len: number): string | undefined {
  for (let i = 0; i < len; i++) if (buf[at + i]! > 0x7f) return undefined;
  return Buffer.prototype.latin1Slice.call(buf, at, at + len) as string;
}

// The scanner's result, reused: one body is scanned at a time (no re-entry: nothing here calls out).
let pos = 0;
let value: string | number | undefined;

/**
 * Read one value at `pos`: a string (ASCII) or an integer into `value`, or
 * another scalar skipped (`value` undefined). Returns false for anything that
 * needs the general path.
 */
function scalar(buf: Uint8Array, end: number): boolean {
  if (pos >= end) return false;
  const b = buf[pos++]!;
  let len: number;
  if (b <= 0x7f) {
    value = b;
    return true;
  }
  if (b >= 0xe0) {
    value = b - 0x100;
    return true;
  }
  if (b >= 0xa0 && b <= 0xbf) len = b - 0xa0;
  else {
    switch (b) {
      case 0xc0: // nil
      case 0xc2: // false
      case 0xc3: // true
        value = undefined;
        return true;
      case 0xcc:
        if (pos + 1 > end) return false;
        value = buf[pos++]!;
        return true;
      case 0xcd:
        if (pos + 2 > end) return false;
        value = (buf[pos]! << 8) | buf[pos + 1]!;
        pos += 2;
        return true;
      case 0xce:
        if (pos + 4 > end) return false;
        value = buf[pos]! * 0x1000000 + ((buf[pos + 1]! << 16) | (buf[pos + 2]! << 8) | buf[pos + 3]!);
        pos += 4;
        return true;
      case 0xd0:
        if (pos + 1 > end) return false;
        value = (buf[pos++]! << 24) >> 24;
        return true;
      case 0xd1:
        if (pos + 2 > end) return false;
        value = (((buf[pos]! << 8) | buf[pos + 1]!) << 16) >> 16;
        pos += 2;
        return true;
      case 0xd2:
        if (pos + 4 > end) return false;
        value = (buf[pos]! << 24) | (buf[pos + 1]! << 16) | (buf[pos + 2]! << 8) | buf[pos + 3]!;
        pos += 4;
        return true;
      case 0xd9:
        if (pos + 1 > end) return false;
        len = buf[pos++]!;
        break;
      case 0xda:
        if (pos + 2 > end) return false;
        len = (buf[pos]! << 8) | buf[pos + 1]!;
        pos += 2;
        break;
      default:
        // floats, 64-bit integers, str32, bin, ext, arrays, maps, and reserved bytes
        return false;
    }
  }
  if (pos + len > end) return false;
  const s = ascii(buf, pos, len);
  if (s === undefined) return false;
  value = s;
  pos += len;
  return true;
}

function isUint32(v: unknown): v is number {
  return typeof v === 'number' && v >= 0 && v <= MAX_SEQ;
}

function idString(v: string | number): string {
  return typeof v === 'string' ? v : String(v);
}

/**
 * The DATA or ACK message in `buf[start, end)`, exactly as msgpackr +
 * `toMessage` would give it; undefined when the body is anything else
 * (including every invalid body): then use the general path.
 */
export function decodeHot(buf: Uint8Array, start: number, end: number): DataMsg | AckMsg | undefined {
  const b = buf[start]!;
  let n: number;
  pos = start + 1;
  if (b >= 0x80 && b <= 0x8f) n = b - 0x80;
  else if (b === 0xde && end - start >= 3) {
    n = (buf[start + 1]! << 8) | buf[start + 2]!;
    pos = start + 3;
  } else return undefined;
  let type: string | number | undefined;
  let seq: string | number | undefined;
  let srcid: string | number | undefined;
  let destid: string | number | undefined;
  let poli: string | number | undefined;
  let poly: string | number | undefined;
  let payload: string | number | undefined;
  let size: string | number | undefined;
  // A key present with a skipped scalar (nil, bool): the general path decides what it means.
  let odd = false;
  for (let i = 0; i < n; i++) {
    if (pos >= end) return undefined;
    const kb = buf[pos]!;
    let klen: number;
    if (kb >= 0xa0 && kb <= 0xbf) {
      klen = kb - 0xa0;
      pos++;
    } else if (kb === 0xd9 && pos + 1 < end) {
      klen = buf[pos + 1]!;
      pos += 2;
    } else return undefined;
    if (pos + klen > end) return undefined;
    const key = keyAt(buf, pos, klen);
    if (key === K.OTHER) {
      // msgpackr renames __proto__, and may read non-ASCII bytes as one of our keys (overlong UTF-8): general path.
      if (klen === 9 && buf[pos] === 0x5f && buf[pos + 1] === 0x5f) return undefined;
      for (let j = 0; j < klen; j++) if (buf[pos + j]! > 0x7f) return undefined;
      pos += klen;
      if (!scalar(buf, end)) return undefined;
      continue;
    }
    pos += klen;
    if (!scalar(buf, end)) return undefined;
    const v = value;
    if (v === undefined) odd = true;
    switch (key) {
      case K.TYPE: type = v; break;
      case K.SEQ: seq = v; break;
      case K.SRCID: srcid = v; break;
      case K.DESTID: destid = v; break;
      case K.POLICY: poli = v; break;
      case K.POLICY_OTHER: poly = v; break;
      case K.PAYLOAD: payload = v; break;
      case K.PAYLOADSIZE: size = v; break;
    }
  }
  if (pos !== end || odd) return undefined;
  if (!isUint32(seq) || !isIdValue(srcid) || typeof payload !== 'string') return undefined;
  if (size !== undefined && !isUint32(size)) return undefined;
  if (type === MsgType.DATA) {
    const policy = ownSpellingFirst(poli, poly);
    if (!isIdValue(policy)) return undefined;
    const m: DataMsg = { type: 0, seq, srcid: idString(srcid), privPoliId: idString(policy), payload };
    if (size !== undefined) m.payloadsize = size;
    return m;
  }
  if (type === MsgType.ACK) {
    if (!isIdValue(destid)) return undefined;
    return { type: 2, seq, srcid: idString(srcid), destid: idString(destid), payload, payloadsize: size ?? 0 };
  }
  return undefined;
}

// ---- encoding ----

/** Buffer's own UTF-8 writer without `write`'s argument juggling (present on every Node Buffer, not in its typings). */
const utf8Write = (out: Buffer, s: string, at: number): number => (out as unknown as { utf8Write(s: string, at: number): number }).utf8Write(s, at);

type Put = (out: Buffer, at: number) => number;

/**
 * A writer of fixed bytes, unrolled into one store per byte: for these
 * 6-12 byte runs a loop over an array cost a sixth of DATA's encoding time.
 * Built once per constant, from the bytes alone: no outside input reaches it.
 */
function fixed(bytes: readonly number[]): Put {
  const body = bytes.map((b, i) => `out[at + ${i}] = ${b};`).join(' ');
  return new Function('out', 'at', `${body} return at + ${bytes.length};`) as Put;
}

const enc = (s: string): number[] => [0xa0 + s.length, ...Buffer.from(s, 'ascii')];
const DATA_HEAD = fixed([...enc('type'), 0x00, ...enc('seq')]);
const ACK_HEAD = fixed([...enc('type'), 0x02, ...enc('seq')]);
const K_SRCID = fixed(enc('srcid'));
const K_DESTID = fixed(enc('destid'));
const K_POLI = fixed(enc(POLICY_KEY.DATA));
const K_PAYLOAD = fixed(enc('payload'));
const K_SIZE = fixed(enc('payloadsize'));

/** An unsigned integer up to 2^32-1 in its shortest form. */
function uint(out: Buffer, at: number, v: number): number {
  if (v <= 0x7f) {
    out[at] = v;
    return at + 1;
  }
  if (v <= 0xff) {
    out[at] = 0xcc;
    out[at + 1] = v;
    return at + 2;
  }
  if (v <= 0xffff) {
    out[at] = 0xcd;
    out.writeUInt16BE(v, at + 1);
    return at + 3;
  }
  out[at] = 0xce;
  out.writeUInt32BE(v, at + 1);
  return at + 5;
}

/** A string; short ASCII ones byte by byte, others as UTF-8 under a header sized for the worst case. */
function str(out: Buffer, at: number, s: string): number {
  const n = s.length;
  if (n < 32) {
    let i = 0;
    for (; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c > 0x7f) break;
      out[at + 1 + i] = c;
    }
    if (i === n) {
      out[at] = 0xa0 + n;
      return at + 1 + n;
    }
  }
  if (n * 3 <= 0xff) {
    const len = utf8Write(out, s, at + 2);
    out[at] = 0xd9;
    out[at + 1] = len;
    return at + 2 + len;
  }
  if (n * 3 <= 0xffff) {
    const len = utf8Write(out, s, at + 3);
    out[at] = 0xda;
    out.writeUInt16BE(len, at + 1);
    return at + 3 + len;
  }
  const len = utf8Write(out, s, at + 5);
  out[at] = 0xdb;
  out.writeUInt32BE(len, at + 1);
  return at + 5 + len;
}

/**
 * Room `encodeHot` may need for `msg` (an upper bound), or -1 when `msg` is
 * not a message it writes (then pack it the general way).
 */
export function hotSize(msg: Message, seq: number): number {
  if (!Number.isInteger(seq) || !isUint32(seq)) return -1;
  if (msg.type === MsgType.DATA) {
    const { srcid, privPoliId, payload, payloadsize } = msg;
    if (typeof srcid !== 'string' || typeof privPoliId !== 'string' || typeof payload !== 'string') return -1;
    if (payloadsize !== undefined && !(Number.isInteger(payloadsize) && isUint32(payloadsize))) return -1;
    return 80 + 3 * (srcid.length + privPoliId.length + payload.length);
  }
  if (msg.type === MsgType.ACK) {
    const { srcid, destid, payload, payloadsize } = msg;
    if (typeof srcid !== 'string' || typeof destid !== 'string' || typeof payload !== 'string') return -1;
    if (!(Number.isInteger(payloadsize) && isUint32(payloadsize))) return -1;
    return 80 + 3 * (srcid.length + destid.length + payload.length);
  }
  return -1;
}

/**
 * Write the body of a DATA or ACK message (with `seq` in place of its own)
 * at `at`, in `hotSize(msg)` bytes or fewer; returns where it ends. Only for
 * messages `hotSize` accepted, and seqs 0..2^32-1.
 */
export function encodeHot(msg: DataMsg | AckMsg, seq: number, out: Buffer, at: number): number {
  if (msg.type === MsgType.DATA) {
    const sized = msg.payloadsize !== undefined;
    out[at++] = sized ? 0x86 : 0x85;
    at = uint(out, DATA_HEAD(out, at), seq);
    at = str(out, K_SRCID(out, at), msg.srcid);
    at = str(out, K_POLI(out, at), msg.privPoliId);
    at = str(out, K_PAYLOAD(out, at), msg.payload);
    if (sized) at = uint(out, K_SIZE(out, at), msg.payloadsize!);
    return at;
  }
  out[at++] = 0x86;
  at = uint(out, ACK_HEAD(out, at), seq);
  at = str(out, K_SRCID(out, at), msg.srcid);
  at = str(out, K_DESTID(out, at), msg.destid);
  at = str(out, K_PAYLOAD(out, at), msg.payload);
  return uint(out, K_SIZE(out, at), msg.payloadsize);
}
