/**
 * A fast path for the two messages that carry the traffic: DATA (client ->
 * proxy -> server) and ACK (server -> proxy -> client). Pure: bytes in,
 * messages out, and messages into a caller's buffer.
 *
 * `decodeHot` scans one MessagePack body that is a flat map of short ASCII
 * strings and small integers (and a payload of bytes) and returns the same
 * normalised message msgpackr + `toMessage` would. It only ever answers for a
 * message that is valid: anything else - another type, a missing or
 * out-of-range field, nested values, bin outside the payload, ext, floats,
 * non-ASCII text, trailing bytes - returns
 * undefined, and the caller takes the general path, which gives the exact
 * value or the exact BAD_REQUEST error. So validation has one definition,
 * `toMessage`, and this file only recognises its commonest yes.
 *
 * `encodeHot` writes a DATA or ACK body straight into an outgoing buffer:
 * it is how the frame encoder (`writeFrame` in frame.ts) writes these two,
 * whichever buffer it writes to; msgpackr decodes the body as the same map
 * (not necessarily msgpackr's own bytes: string headers may be wider). It
 * writes an ERROR too, the answer a refusal is (a flood of a full policy is
 * refused a million times in seconds), as exactly msgpackr's bytes. A text
 * payload a reader left unmade (`TEXT_BYTES`: a JSON request's, forwarded to a
 * frames server) is written from its bytes, never made into a string: the
 * bytes of the `str` its string would be.
 *
 * The limits and spellings checked here are the model's (messages.ts),
 * imported, never restated.
 */
import { Buffer, isUtf8 } from 'node:buffer';
import { isIdValue, MAX_SEQ, MAX_VALUES, MsgType, ownSpellingFirst, payloadBytes, POLICY_KEY, TEXT_BYTES, WIRE, type AckMsg, type DataMsg, type ErrorMsg, type Message, type WireBytes } from './messages.js';

/** The fields of the hot messages (their string keys: `WIRE` is no field). */
type Field = Exclude<keyof DataMsg | keyof AckMsg, typeof WIRE | typeof TEXT_BYTES>;

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
  TIMEOUTMS,
}

/** The keys' names: the model's fields (the compiler checks them against it), the policy's two spellings from messages.ts. */
const KEY_NAMES: ReadonlyArray<readonly [K, Field | typeof POLICY_KEY.SETUP]> = [
  [K.TYPE, 'type'],
  [K.SEQ, 'seq'],
  [K.SRCID, 'srcid'],
  [K.DESTID, 'destid'],
  [K.POLICY, POLICY_KEY.DATA],
  [K.POLICY_OTHER, POLICY_KEY.SETUP],
  [K.PAYLOAD, 'payload'],
  [K.PAYLOADSIZE, 'payloadsize'],
  [K.TIMEOUTMS, 'timeoutms'],
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

/**
 * Buffer's own latin1 reader (present on every Node Buffer, not in its typings), taken once: read
 * through the global `Buffer` - a getter in Node 20 - each call cost an inline-cache miss and the
 * getter's call (a 40-byte slice 140-185 ns against 73-94 ns; README's Benchmark).
 */
const latin1Slice = (Buffer.prototype as unknown as { latin1Slice(this: Uint8Array, start: number, end: number): string }).latin1Slice;

/** The bytes as a string when every one is ASCII, else undefined. */
function latin1(buf: Uint8Array, at: number, len: number): string | undefined {
  for (let i = 0; i < len; i++) if (buf[at + i]! > 0x7f) return undefined;
  return latin1Slice.call(buf, at, at + len);
}

// Where the scanner is: one body is scanned at a time (no re-entry: nothing here calls out).
let pos = 0;

/** What `scalar` returns for a body the general path must read. */
const FAIL: unique symbol = Symbol('not hot');
type Scalar = string | number | Uint8Array | undefined;

/**
 * Read one value at `pos`: a string (ASCII), an integer or bytes (a view of
 * `buf`, as msgpackr gives them), or another scalar skipped (undefined).
 * Returns FAIL for anything that needs the general path. (Returned rather
 * than kept in a variable of the module: a string stored there costs a write
 * barrier each time.)
 */
function scalar(buf: Uint8Array, end: number): Scalar | typeof FAIL {
  if (pos >= end) return FAIL;
  const b = buf[pos++]!;
  let len: number;
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if (b >= 0xa0 && b <= 0xbf) len = b - 0xa0;
  else {
    switch (b) {
      case 0xc0: // nil
      case 0xc2: // false
      case 0xc3: // true
        return undefined;
      case 0xcc:
        if (pos + 1 > end) return FAIL;
        return buf[pos++]!;
      case 0xcd:
        if (pos + 2 > end) return FAIL;
        pos += 2;
        return (buf[pos - 2]! << 8) | buf[pos - 1]!;
      case 0xce:
        if (pos + 4 > end) return FAIL;
        pos += 4;
        return buf[pos - 4]! * 0x1000000 + ((buf[pos - 3]! << 16) | (buf[pos - 2]! << 8) | buf[pos - 1]!);
      case 0xd0:
        if (pos + 1 > end) return FAIL;
        return (buf[pos++]! << 24) >> 24;
      case 0xd1:
        if (pos + 2 > end) return FAIL;
        pos += 2;
        return (((buf[pos - 2]! << 8) | buf[pos - 1]!) << 16) >> 16;
      case 0xd2:
        if (pos + 4 > end) return FAIL;
        pos += 4;
        return (buf[pos - 4]! << 24) | (buf[pos - 3]! << 16) | (buf[pos - 2]! << 8) | buf[pos - 1]!;
      case 0xd9:
        if (pos + 1 > end) return FAIL;
        len = buf[pos++]!;
        break;
      case 0xda:
        if (pos + 2 > end) return FAIL;
        len = (buf[pos]! << 8) | buf[pos + 1]!;
        pos += 2;
        break;
      case 0xc4:
        if (pos + 1 > end) return FAIL;
        return bytes(buf, end, buf[pos++]!);
      case 0xc5:
        if (pos + 2 > end) return FAIL;
        pos += 2;
        return bytes(buf, end, (buf[pos - 2]! << 8) | buf[pos - 1]!);
      case 0xc6:
        if (pos + 4 > end) return FAIL;
        pos += 4;
        return bytes(buf, end, buf[pos - 4]! * 0x1000000 + ((buf[pos - 3]! << 16) | (buf[pos - 2]! << 8) | buf[pos - 1]!));
      default:
        // floats, 64-bit integers, str32, ext, arrays, maps, and reserved bytes
        return FAIL;
    }
  }
  if (pos + len > end) return FAIL;
  const s = ascii(buf, pos, len);
  if (s === undefined) return FAIL;
  pos += len;
  return s;
}

/** `len` bytes at `pos` as the value: a view of `buf`, as msgpackr gives a `bin`. */
function bytes(buf: Uint8Array, end: number, len: number): Uint8Array | typeof FAIL {
  if (pos + len > end) return FAIL;
  pos += len;
  return buf.subarray(pos - len, pos);
}

/**
 * A text payload this long (bytes) or longer may be left unmade as it is read (`decodeHot`'s
 * `lazyFrom`, `TEXT_BYTES`): V8 makes a string of 128 KiB or more in its large-object space, at
 * about 4 ms a megabyte against 0.1 for shorter ones, and a proxy that forwards the frame's bytes
 * never reads it. A flood of 1 MB text requests to a policy whose server was silent, read and
 * refused, kept the proxy's core busy making strings nobody read: another policy's client waited
 * 216 ms at p50 (1.6 before it). Whether a process leaves text unmade is memory-limit.ts's
 * `lazyTextFrom`.
 */
export const LAZY_TEXT_BYTES = 64 * 1024;

/** A text payload's UTF-8 bytes, `buf[at, at + len)`, valid, not made into a string yet (a frame's, or a JSON request's: json.ts). */
export class LazyText {
  constructor(readonly buf: Uint8Array, readonly at: number, readonly len: number) {}
}

/** A value `decodeHot` read: a scalar, or a payload's text not made into a string. */
type Value = Scalar | LazyText;

const utf8Slice = (Buffer.prototype as unknown as { utf8Slice(this: Uint8Array, start: number, end: number): string }).utf8Slice;

/**
 * The payload's value at `pos` when it is text of `lazyFrom` bytes or more (str16 or str32) and
 * valid UTF-8, as a `LazyText` (text that is not: FAIL, the general path's; msgpackr reads valid
 * UTF-8 as Node does); shorter text as `scalar` reads it, in a str32 too; any other value by `scalar`.
 */
function payloadValue(buf: Uint8Array, end: number, lazyFrom: number): Scalar | LazyText | typeof FAIL {
  const b = buf[pos];
  if (b !== 0xda && b !== 0xdb) return scalar(buf, end);
  const head = b === 0xda ? 3 : 5;
  if (pos + head > end) return FAIL;
  const len = b === 0xda ? (buf[pos + 1]! << 8) | buf[pos + 2]! : buf[pos + 1]! * 0x1000000 + ((buf[pos + 2]! << 16) | (buf[pos + 3]! << 8) | buf[pos + 4]!);
  const at = pos + head;
  if (at + len > end) return FAIL;
  if (len < lazyFrom) {
    // As `scalar` reads a str16 (and a str32, which this project's encoder writes for text that might need it).
    const text = ascii(buf, at, len);
    if (text === undefined) return FAIL;
    pos = at + len;
    return text;
  }
  if (!isUtf8(buf.subarray(at, at + len))) return FAIL;
  pos = at + len;
  return new LazyText(buf, at, len);
}

/**
 * Give `m` the text `t` as its payload, made into a string the first time it is read (and kept):
 * until then `m[TEXT_BYTES]` holds its bytes, which the encoder writes as they are (`encodeHot`).
 * Setting `payload` sets it as any field.
 */
export function lazyText<M extends DataMsg | AckMsg>(m: M, t: LazyText): M {
  const settle = (v: string | Uint8Array): void => {
    Object.defineProperty(m, 'payload', { value: v, writable: true, enumerable: true, configurable: true });
    m[TEXT_BYTES] = undefined;
  };
  const bytes = t.buf.subarray(t.at, t.at + t.len);
  Object.defineProperty(m, TEXT_BYTES, { value: bytes, writable: true, enumerable: false, configurable: true });
  Object.defineProperty(m, 'payload', {
    get(): string {
      const text = utf8Slice.call(bytes, 0, bytes.length);
      settle(text);
      return text;
    },
    set: settle,
    enumerable: true,
    configurable: true,
  });
  return m;
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
 * (including every invalid body): then use the general path. A text payload
 * of `lazyFrom` bytes or more is made into a string when first read
 * (`lazyText`; `LAZY_TEXT_BYTES` where a process may, Infinity: never).
 */
export function decodeHot(buf: Uint8Array, start: number, end: number, lazyFrom = Infinity): DataMsg | AckMsg | undefined {
  const b = buf[start]!;
  let n: number;
  pos = start + 1;
  if (b >= 0x80 && b <= 0x8f) n = b - 0x80;
  else if (b === 0xde && end - start >= 3) {
    n = (buf[start + 1]! << 8) | buf[start + 2]!;
    pos = start + 3;
  } else return undefined;
  // More fields than a message may hold (`MAX_VALUES`): the general path refuses it.
  if (2 * n + 1 > MAX_VALUES) return undefined;
  let type: Value;
  let seq: Value;
  let srcid: Value;
  let destid: Value;
  let poli: Value;
  let poly: Value;
  let payload: Value;
  let size: Value;
  let timeout: Value;
  // A key present with a skipped scalar (nil, bool): the general path decides what it means.
  let odd = false;
  // Which keys were seen (a bit per K) and where the seq's value is: for the bytes' view (`WIRE`).
  let seen = 0;
  let seqAt = 0;
  let seqEnd = 0;
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
      if (scalar(buf, end) === FAIL) return undefined;
      seen |= 1 << K.OTHER;
      continue;
    }
    pos += klen;
    const at = pos;
    // A positive fixint (a type, a payloadsize, a small seq) is read here, as `scalar` reads it, without the call.
    const vb = buf[pos]!;
    const v = vb <= 0x7f && pos < end ? (pos++, vb) : key === K.PAYLOAD ? payloadValue(buf, end, lazyFrom) : scalar(buf, end);
    if (v === FAIL) return undefined;
    seen |= 1 << key;
    if (key === K.SEQ) {
      seqAt = at;
      seqEnd = pos;
    }
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
      case K.TIMEOUTMS: timeout = v; break;
    }
  }
  if (pos !== end || odd) return undefined;
  const lazy = payload instanceof LazyText ? payload : undefined;
  if (lazy) payload = '';
  if (!isUint32(seq) || !isIdValue(srcid) || !(typeof payload === 'string' || payload instanceof Uint8Array)) return undefined;
  if (size !== undefined && !isUint32(size)) return undefined;
  if (type === MsgType.DATA) {
    const policy = ownSpellingFirst(poli, poly);
    if (!isIdValue(policy)) return undefined;
    if (timeout !== undefined && !isUint32(timeout)) return undefined;
    // Read as exactly the model's fields, each once (n keys, no other): forwarded as these bytes (the proxy adds its own timeoutms).
    const w = (seen & ~DATA_KEYS) === 0 && n === (size === undefined ? 5 : 6) && b <= 0x8f && typeof srcid === 'string' && typeof poli === 'string'
      ? wireAt(buf, start, seqAt, seqEnd, end) : undefined;
    const s = idString(srcid);
    const p = idString(policy);
    // Made whole by one literal each (the fields a DATA read hot has, `WIRE` among them), not grown field by field: no
    // property added after (a transition each), and the view of its bytes in the object itself, not in a store beside it.
    const m: DataMsg = size === undefined
      ? (w ? { type: 0, seq, srcid: s, privPoliId: p, payload, [WIRE]: w } : { type: 0, seq, srcid: s, privPoliId: p, payload })
      : (w ? { type: 0, seq, srcid: s, privPoliId: p, payload, payloadsize: size, [WIRE]: w } : { type: 0, seq, srcid: s, privPoliId: p, payload, payloadsize: size });
    if (timeout !== undefined) m.timeoutms = timeout;
    if (lazy) lazyText(m, lazy);
    if (w) (w as { msg: DataMsg | AckMsg }).msg = m;
    return m;
  }
  if (type === MsgType.ACK) {
    if (!isIdValue(destid)) return undefined;
    const w = seen === ACK_KEYS && n === 6 && b <= 0x8f && typeof srcid === 'string' && typeof destid === 'string' ? wireAt(buf, start, seqAt, seqEnd, end) : undefined;
    const s = idString(srcid);
    const d = idString(destid);
    const psize = size ?? (lazy ? lazy.len : payloadBytes(payload));
    // One literal each, as a DATA's (above).
    const m: AckMsg = w ? { type: 2, seq, srcid: s, destid: d, payload, payloadsize: psize, [WIRE]: w } : { type: 2, seq, srcid: s, destid: d, payload, payloadsize: psize };
    if (lazy) lazyText(m, lazy);
    if (w) (w as { msg: DataMsg | AckMsg }).msg = m;
    return m;
  }
  return undefined;
}

/** Where a hot message's bytes are (`WIRE`), its `msg` set once the message is made (`decodeHot`). */
function wireAt(buf: Uint8Array, start: number, seqAt: number, seqEnd: number, end: number): WireBytes {
  return { msg: undefined as unknown as DataMsg, buf, start, seqAt, seqEnd, end };
}

/** The keys of a DATA as the model has it, and those an ACK has with every field (payloadsize included). */
const DATA_KEYS = (1 << K.TYPE) | (1 << K.SEQ) | (1 << K.SRCID) | (1 << K.POLICY) | (1 << K.PAYLOAD) | (1 << K.PAYLOADSIZE);
const ACK_KEYS = (1 << K.TYPE) | (1 << K.SEQ) | (1 << K.SRCID) | (1 << K.DESTID) | (1 << K.PAYLOAD) | (1 << K.PAYLOADSIZE);

/**
 * The bytes `msg` was read from (`WIRE`), when it is the message they were
 * read as (a copy, which carries the same key, is encoded from its fields),
 * with the keys it was read with (one added or taken away since: from its
 * fields too), a DATA's `timeoutms` to write (`timeoutms`, else its own, if
 * set since) one `encodeAsRead` can add, and the seq to write (`seq`, else
 * its own) one a frame can carry.
 */
export function asRead(msg: Message | Record<string, unknown>, seq?: number, timeoutms?: number): WireBytes | undefined {
  const m = msg as DataMsg | AckMsg;
  const w = m[WIRE];
  if (w === undefined || w.msg !== m) return undefined;
  const s = seq ?? m.seq;
  if (!(isUint32(s) && Number.isInteger(s))) return undefined;
  let keys = 6;
  if (m.type === MsgType.DATA) {
    const own = m.timeoutms;
    const t = timeoutms ?? own;
    if (t !== undefined && !(isUint32(t) && Number.isInteger(t))) return undefined;
    keys = 5 + (m.payloadsize === undefined ? 0 : 1) + (own === undefined ? 0 : 1);
  }
  return hasKeys(m, keys) ? w : undefined;
}

/** Room `encodeAsRead` may need: the body, a seq up to 4 bytes longer, and a timeoutms (key and value). */
export function asReadSize(w: WireBytes): number {
  return w.end - w.start + 4 + 16;
}

/**
 * Write the body `w` holds (of a message `asRead` accepted) at `at`, with
 * `seq` in place of its own, and a DATA's `timeoutms` (given, else the
 * message's own, if it has one): the map header counts it, and it goes last.
 * Returns where it ends.
 */
export function encodeAsRead(w: WireBytes, seq: number, out: Buffer, at: number, timeoutms?: number): number {
  const b = w.buf;
  const timeout = w.msg.type === MsgType.DATA ? timeoutms ?? w.msg.timeoutms : undefined;
  out[at] = b[w.start]! + (timeout === undefined ? 0 : 1);
  at = copyBytes(b, w.start + 1, w.seqAt, out, at + 1);
  at = uint(out, at, seq);
  at = copyBytes(b, w.seqEnd, w.end, out, at);
  return timeout === undefined ? at : uint(out, K_TIMEOUT(out, at), timeout);
}

/**
 * Copy `src[from, to)` to `out` at `at`; returns where it ends. Short runs
 * byte by byte, long ones natively. Measured with bench/codec.ts's proxy row
 * (requests in turn to 4 servers' batches, answers to 8 clients'): four bytes
 * at a time through DataViews cost 1,200-1,250 ns a request, since each
 * message goes to another buffer than the last and needs a view of it made;
 * byte by byte 1,040-1,100. `Buffer.copy` makes a view of the source each
 * time (about 60 ns a call).
 */
function copyBytes(src: Uint8Array, from: number, to: number, out: Buffer, at: number): number {
  if (to - from > 256) {
    out.set(src.subarray(from, to), at);
    return at + to - from;
  }
  // Four bytes a step (still byte stores: a view to store words through costs more than it saves, above).
  let i = from;
  for (const last = to - 4; i <= last; i += 4, at += 4) {
    out[at] = src[i]!;
    out[at + 1] = src[i + 1]!;
    out[at + 2] = src[i + 2]!;
    out[at + 3] = src[i + 3]!;
  }
  for (; i < to; i++) out[at++] = src[i]!;
  return at;
}

// ---- encoding ----

/** Buffer's own UTF-8 writer without `write`'s argument juggling (present on every Node Buffer, not in its typings). */
const utf8Write = (out: Buffer, s: string, at: number): number => (out as unknown as { utf8Write(s: string, at: number): number }).utf8Write(s, at);

type Put = (out: Buffer, at: number) => number;

/**
 * A writer of fixed bytes (a key with its header): one store per byte, of
 * bytes the closure holds, written out for each length the keys have (6 to
 * 12). Measured with bench/codec.ts (encode into a batch, best of 8 runs): a
 * loop over the bytes costs DATA 150 ns and ACK 245 ns a message, these
 * closures 124 and 187; writers built from strings with `new Function` ran no
 * faster (122 and 178) and stop the process from loading under
 * `--disallow-code-generation-from-strings`, so there are none.
 */
function fixed(bytes: readonly number[]): Put {
  const [b0 = 0, b1 = 0, b2 = 0, b3 = 0, b4 = 0, b5 = 0, b6 = 0, b7 = 0, b8 = 0, b9 = 0, b10 = 0, b11 = 0] = bytes;
  switch (bytes.length) {
    case 6: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; return at + 6; };
    case 7: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; out[at + 6] = b6; return at + 7; };
    case 8: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; out[at + 6] = b6; out[at + 7] = b7; return at + 8; };
    case 10: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; out[at + 6] = b6; out[at + 7] = b7; out[at + 8] = b8; out[at + 9] = b9; return at + 10; };
    case 11: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; out[at + 6] = b6; out[at + 7] = b7; out[at + 8] = b8; out[at + 9] = b9; out[at + 10] = b10; return at + 11; };
    case 12: return (out, at) => { out[at] = b0; out[at + 1] = b1; out[at + 2] = b2; out[at + 3] = b3; out[at + 4] = b4; out[at + 5] = b5; out[at + 6] = b6; out[at + 7] = b7; out[at + 8] = b8; out[at + 9] = b9; out[at + 10] = b10; out[at + 11] = b11; return at + 12; };
    default: {
      const u8 = Uint8Array.from(bytes);
      return (out, at) => {
        out.set(u8, at);
        return at + u8.length;
      };
    }
  }
}

/** A key as MessagePack writes it: a fixstr header, then its ASCII bytes. */
const key = (s: Field): number[] => [0xa0 + s.length, ...Buffer.from(s, 'ascii')];
const DATA_HEAD = fixed([...key('type'), MsgType.DATA, ...key('seq')]);
const ACK_HEAD = fixed([...key('type'), MsgType.ACK, ...key('seq')]);
const K_SRCID = fixed(key('srcid'));
const K_DESTID = fixed(key('destid'));
const K_POLICY = fixed(key(POLICY_KEY.DATA));
const K_PAYLOAD = fixed(key('payload'));
const K_SIZE = fixed(key('payloadsize'));
const K_TIMEOUT = fixed(key('timeoutms'));

/** An unsigned integer up to 2^32-1 in its shortest form. */
function uint(out: Buffer, at: number, v: number): number {
  if (v <= 0x7f) {
    out[at] = v;
    return at + 1;
  }
  return withLength(out, at, v, 0xcc);
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
 * `n` in the smallest of three forms whose type bytes follow each other, `h8`
 * for 8 bits, then 16 and 32: an unsigned integer (0xcc), the head of a `bin`
 * (0xc4) or `str` (0xd9) of `n` bytes. Returns where it ends (the contents').
 */
function withLength(out: Buffer, at: number, n: number, h8: number): number {
  if (n <= 0xff) {
    out[at] = h8;
    out[at + 1] = n;
    return at + 2;
  }
  if (n <= 0xffff) {
    out[at] = h8 + 1;
    out[at + 1] = n >>> 8;
    out[at + 2] = n;
    return at + 3;
  }
  out[at] = h8 + 2;
  out[at + 1] = n >>> 24;
  out[at + 2] = n >>> 16;
  out[at + 3] = n >>> 8;
  out[at + 4] = n;
  return at + 5;
}

/** Bytes under the smallest `bin` header that holds them. */
function bin(out: Buffer, at: number, b: Uint8Array): number {
  at = withLength(out, at, b.length, 0xc4);
  out.set(b, at);
  return at + b.length;
}

/** A payload: text as `str`, bytes as `bin`. */
function payloadOf(out: Buffer, at: number, p: string | Uint8Array): number {
  return typeof p === 'string' ? str(out, at, p) : bin(out, at, p);
}

/**
 * Text not made into a string yet (`TEXT_BYTES`): its bytes as they are, under a `str` head. Such
 * text is `LAZY_TEXT_BYTES` (0x10000) or more bytes, so its head is the str32 `str` writes for its
 * string (whose head is sized by three bytes a character): the bytes are those of the string's
 * `str`, and the string is never made. (Kept text under 0x10000 bytes, which only a reader told a
 * lower `lazyFrom` keeps, gets its smallest head: the same value.)
 */
function keptText(out: Buffer, at: number, bytes: Uint8Array): number {
  at = withLength(out, at, bytes.length, 0xd9);
  out.set(bytes, at);
  return at + bytes.length;
}

/**
 * Room `encodeHot` may need for `msg` sent with `seq` in place of its own
 * (and a DATA with `timeoutms`, when given, in place of its own or added)
 * (an upper bound), or -1 when that is not a message it writes: then pack it
 * the general way. It writes DATA and ACK in the model's shape - the model's
 * fields, of the model's types, and nothing else (a crafted value with another
 * key or without a seq is packed as it is, so nothing of it is lost or made up),
 * and ERROR (`errorSize`).
 */
export function hotSize(msg: Message | Record<string, unknown>, seq?: number, timeoutms?: number): number {
  const m = msg as { [K in Field]?: unknown };
  if (m.type === MsgType.ERROR) return errorSize(msg as Record<string, unknown>, seq);
  const { type, srcid, payloadsize } = m;
  // Text not made into a string yet is written as its bytes (`keptText`), never made: its room is their length, as a `bin`'s.
  const payload = (msg as DataMsg)[TEXT_BYTES] ?? m.payload;
  const s = seq ?? m.seq;
  const text = typeof payload === 'string';
  if (typeof srcid !== 'string' || !(text || payload instanceof Uint8Array) || !isUint32(s) || !Number.isInteger(s)) return -1;
  if (payloadsize !== undefined && !(isUint32(payloadsize) && Number.isInteger(payloadsize))) return -1;
  let other: unknown;
  let keys: number;
  if (type === MsgType.DATA) {
    other = m.privPoliId;
    const own = m.timeoutms;
    const t = timeoutms ?? own;
    if (t !== undefined && !(isUint32(t) && Number.isInteger(t))) return -1;
    keys = 5 + (payloadsize === undefined ? 0 : 1) + (own === undefined ? 0 : 1);
  } else if (type === MsgType.ACK) {
    other = m.destid;
    if (payloadsize === undefined) return -1;
    keys = 6;
  } else return -1;
  // A seq given for a value without one is a key the copy it stands for would have.
  if (m.seq === undefined && !Object.prototype.hasOwnProperty.call(m, 'seq')) keys--;
  if (typeof other !== 'string' || !hasKeys(msg, keys)) return -1;
  return 96 + 3 * (srcid.length + other.length) + (text ? 3 * payload.length : (payload as Uint8Array).length);
}

/** Whether `o` has exactly `n` enumerable keys (the fields checked present, and no others). */
function hasKeys(o: object, n: number): boolean {
  let count = 0;
  for (const _ in o) count++;
  return count === n;
}

/**
 * Write the body of a DATA or ACK message (with `seq` in place of its own,
 * and a DATA's `timeoutms` when given) at `at`, in `hotSize(msg)` bytes or
 * fewer; returns where it ends. Only for messages `hotSize` accepted, and
 * seqs 0..2^32-1.
 */
export function encodeHot(msg: DataMsg | AckMsg | ErrorMsg, seq: number | undefined, out: Buffer, at: number, timeoutms?: number): number {
  if (msg.type === MsgType.ERROR) return encodeError(msg, seq, out, at);
  if (msg.type === MsgType.DATA) {
    const sized = msg.payloadsize !== undefined;
    const timeout = timeoutms ?? msg.timeoutms;
    const timed = timeout !== undefined;
    out[at++] = 0x85 + (sized ? 1 : 0) + (timed ? 1 : 0);
    at = uint(out, DATA_HEAD(out, at), seq!);
    at = str(out, K_SRCID(out, at), msg.srcid);
    at = str(out, K_POLICY(out, at), msg.privPoliId);
    // Looked up here, and `bin` left as it was: `payloadOf` given the message cost a small DATA 6-10% more to size and write, and
    // `bin` sharing its writer with `keptText` a binary one 3-8% (hotSize + encodeHot, old and new alternated in one process).
    const kept = msg[TEXT_BYTES];
    at = kept === undefined ? payloadOf(out, K_PAYLOAD(out, at), msg.payload) : keptText(out, K_PAYLOAD(out, at), kept);
    if (sized) at = uint(out, K_SIZE(out, at), msg.payloadsize!);
    if (timed) at = uint(out, K_TIMEOUT(out, at), timeout);
    return at;
  }
  out[at++] = 0x86;
  at = uint(out, ACK_HEAD(out, at), seq!);
  at = str(out, K_SRCID(out, at), msg.srcid);
  at = str(out, K_DESTID(out, at), msg.destid);
  const kept = msg[TEXT_BYTES];
  at = kept === undefined ? payloadOf(out, K_PAYLOAD(out, at), msg.payload) : keptText(out, K_PAYLOAD(out, at), kept);
  return uint(out, K_SIZE(out, at), msg.payloadsize);
}

/** An ERROR's fields, each a string (its `type` and `seq` aside). */
const ERROR_TEXT = new Set(['code', 'message', 'appcode']);

/**
 * Room `encodeError` may need for the ERROR `m` (sent with `seq`, when given,
 * in place of its own), or -1 when it is not one in the model's shape: its
 * own keys `type`, `seq` (an integer up to 2^32-1, or none), `code`, `message`
 * and `appcode` (strings), the first three of them at least, in any order.
 * Packed by msgpackr, a flood's refusal cost the proxy 5.1-6.6 us of CPU;
 * written here, 1.9-2.4 us (README, Benchmark).
 */
function errorSize(m: Record<string, unknown>, seq: number | undefined): number {
  if (typeof m.code !== 'string' || typeof m.message !== 'string') return -1;
  if (seq !== undefined && !(isUint32(seq) && Number.isInteger(seq))) return -1;
  let room = 64;
  for (const k in m) {
    if (!Object.hasOwn(m, k)) return -1;
    const v = m[k];
    if (k === 'seq') {
      if (seq === undefined && !(isUint32(v) && Number.isInteger(v))) return -1;
    } else if (ERROR_TEXT.has(k)) {
      if (typeof v !== 'string') return -1;
      room += 3 * v.length;
    } else if (k !== 'type') return -1;
  }
  return room;
}

/**
 * Write the body of an ERROR `hotSize` accepted as the bytes msgpackr packs
 * for it (the copy `{ ...msg, seq }` when a seq is given): a 16-bit map head,
 * its keys in its own order (a seq given for one without takes the last
 * place), each string under the smallest head its UTF-8 fits. An older peer
 * reads what it wrote itself (spec/upgrade.spec.ts). Returns where it ends.
 */
function encodeError(msg: ErrorMsg, seq: number | undefined, out: Buffer, at: number): number {
  const head = at;
  at += 3;
  let keys = 0;
  let seqDone = false;
  for (const k in msg) {
    keys++;
    at = str(out, at, k);
    if (k === 'type') out[at++] = MsgType.ERROR;
    else if (k === 'seq') {
      at = uint(out, at, seq!);
      seqDone = true;
    } else at = text(out, at, (msg as unknown as Record<string, string>)[k]!);
  }
  if (!seqDone && seq !== undefined) {
    keys++;
    at = uint(out, str(out, at, 'seq'), seq);
  }
  out[head] = 0xde;
  out[head + 1] = 0;
  out[head + 2] = keys;
  return at;
}

/** A string under the smallest head its UTF-8 length fits, as msgpackr writes one (a lone surrogate as U+FFFD, as both do). */
function text(out: Buffer, at: number, s: string): number {
  if (s.length < 32) {
    const end = str(out, at, s);
    // Short ASCII: a fixstr already; else `str` chose its head by the worst case.
    if (out[at]! <= 0xbf) return end;
  }
  const len = Buffer.byteLength(s);
  if (len < 0x20) out[at++] = 0xa0 + len;
  else at = withLength(out, at, len, 0xd9);
  return at + utf8Write(out, s, at);
}
