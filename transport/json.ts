/**
 * The old system's wire: JSON objects written raw on TCP, no length prefix
 * and no delimiter. Pure: bytes in, messages out; no sockets here.
 *
 * The old programs write one object per `send` and parse each `recv` as one
 * object; TCP keeps neither promise, so the decoder splits the byte stream
 * itself, following strings, escapes and nesting. The encoder writes exactly
 * the old shapes: string-typed values, `", "` and `": "` separators.
 */
import { ErrorCode, ProtocolError, hexPreview } from './errors.js';
import { recogniseForeign } from './foreign.js';
import { LazyText, lazyText } from './fastwire.js';
import { DEFAULT_MAX_FRAME_BYTES, PartialBytes, type DecodeResult, type Decoder } from './frame.js';
import { isUtf8 } from 'node:buffer';
import { loneSurrogateIn, MAX_SEQ, sliceWhole, MAX_VALUES, MsgType, toMessage, type DataMsg, type ErrorMsg, type Message, type ValidateOptions } from './messages.js';
import { firstInvalidUtf8 } from './utf8.js';

const OPEN = 0x7b; // {
const CLOSE = 0x7d; // }
const OPEN_ARRAY = 0x5b; // [
const CLOSE_ARRAY = 0x5d; // ]
const QUOTE = 0x22; // "
const BACKSLASH = 0x5c; // \
const COMMA = 0x2c; // ,
const COLON = 0x3a; // :

/** Messages are flat maps; anything nested deeper is not one of ours. */
const MAX_DEPTH = 32;

/** How far into a string's text the decoder looks a byte at a time before it asks `indexOf` (json.ts `scan`). */
const NEAR = 16;

/** Where `byte` is next in `chunk` from `from` on, or `chunk.length` when it is not. */
function nextIndex(chunk: Buffer, byte: number, from: number): number {
  const at = chunk.indexOf(byte, from);
  return at === -1 ? chunk.length : at;
}

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

/** Whether the first byte of a connection starts the old JSON wire (`{`) rather than a frame. */
export function startsJson(firstByte: number): boolean {
  return firstByte === OPEN;
}

export interface JsonDecoderOptions {
  /** Largest object accepted, in bytes (the same limit as frames); longer input is refused before it is buffered. */
  maxFrameBytes?: number;
  /**
   * The old wire has no `seq`: requests are answered in order. When set, each
   * DATA, ACK and ERROR decoded gets a `seq`, whatever it carried: with `true`
   * the next number of this connection (0, 1, 2, ...), so answers can be put
   * back in order; with a function, what it returns (the seq of the request
   * an answer is for), or the next number when it returns undefined.
   */
  number?: boolean | (() => number | undefined);
  /**
   * A request's text payload of this many bytes or more, written without an escape, is made into a
   * string only when read, as a frame's is (`FrameDecoderOptions.lazyTextFrom`; `plainPayload`).
   * Default: never, each made as read.
   */
  lazyTextFrom?: number;
}

/** The old wire has no `seq`, and a request's `payloadsize` is advisory there (messages.ts `ValidateOptions`). */
const OLD_WIRE: ValidateOptions = { seqOptional: true, sizeAdvisory: true };

/** The key whose text is left unmade. */
const PAYLOAD = 'payload' satisfies keyof DataMsg;

/**
 * How many escapes `plainPayload` steps over before it leaves an object to `JSON.parse` whole: a
 * payload of escapes is parsed anyway, and stepping over each (a MiB of `\u00e9` is 175,000) would
 * cost what the walk saves.
 */
const FEW_ESCAPES = 64;

/**
 * Where the text of an object's `payload` is, `[from, to)` inside its quotes, when `JSON.parse`
 * would make it a string of `min` bytes or more of those bytes as they are: a top-level key's (one
 * in a nested object is another field), the last of them (a repeated key: the last wins, as in
 * `JSON.parse`), with no escape in it and no control character (which `JSON.parse` refuses).
 * Otherwise undefined, as for a top-level key spelled with an escape (it may spell `payload`) or
 * an object of many escapes. `b` is one whole object, valid UTF-8, not necessarily JSON: what this
 * finds is only used when the object with the text cut out parses, and cutting the text of a string
 * (no escape, no control character) leaves every other token as it was, so then the object is JSON
 * and this walk read it as `JSON.parse` does.
 */
function plainPayload(b: Buffer, min: number): [number, number] | undefined {
  let depth = 0;
  // A top-level value comes next (a `:` at depth 1 was read).
  let valueNext = false;
  // The last top-level key read is `payload`.
  let payloadKey = false;
  let found: [number, number] | undefined;
  let escapes = 0;
  // The next quote and backslash at or after where they were last looked for (b.length: none), as in `scan`.
  let quote = -1;
  let backslash = -1;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c === QUOTE) {
      let plain = true;
      let end = i + 1;
      for (;;) {
        if (quote < end) quote = nextIndex(b, QUOTE, end);
        if (backslash < end) backslash = nextIndex(b, BACKSLASH, end);
        if (quote <= backslash) break;
        if (++escapes > FEW_ESCAPES) return undefined;
        plain = false;
        end = backslash + 2;
      }
      end = quote;
      if (end === b.length) return undefined;
      if (valueNext) {
        if (payloadKey) found = plain && end - i - 1 >= min ? [i + 1, end] : undefined;
      } else if (depth === 1) {
        // A key spelled with an escape may be `payload`.
        if (!plain) return undefined;
        payloadKey = end - i - 1 === PAYLOAD.length && b.toString('latin1', i + 1, end) === PAYLOAD;
      }
      i = end;
    } else if (depth === 1 && c === COLON) valueNext = true;
    else {
      if (c === OPEN || c === OPEN_ARRAY) depth++;
      else if (c === CLOSE || c === CLOSE_ARRAY) depth--;
      // A comma (after a value), or a value that is no string: a payload that is none is refused as parsed whole (`withoutText`).
      if (!isSpace(c)) valueNext = false;
    }
  }
  return found && !hasControl(b, found[0], found[1]) ? found : undefined;
}

/**
 * Whether `b[from, to)` holds a byte under 0x20, four at a time: a word has one when subtracting
 * 0x20 from each of its bytes borrows into a byte whose top bit was clear. A byte at a time a MiB
 * took 1.1-1.7 ms, about what the string it spares costs; four at a time 0.3-0.6.
 */
function hasControl(b: Buffer, from: number, to: number): boolean {
  let i = from;
  for (; (b.byteOffset + i) & 3; i++) {
    if (i === to) return false;
    if (b[i]! < 0x20) return true;
  }
  const words = new Int32Array(b.buffer, b.byteOffset + i, (to - i) >> 2);
  let seen = 0;
  for (let k = 0; k < words.length; k++) {
    const w = words[k]!;
    seen |= (w - 0x20202020) & ~w;
  }
  if (seen & 0x80808080) return true;
  for (i += 4 * words.length; i < to; i++) if (b[i]! < 0x20) return true;
  return false;
}

/**
 * Splits a byte stream into raw JSON objects and validates each one. Objects
 * split across pushes, several in one push and one byte at a time all decode
 * exactly once. Whitespace between objects is skipped; any other byte there
 * is corrupt input and ends the decoder, as do invalid JSON and an object
 * over the size limit.
 *
 * @example
 * const d = new JsonDecoder({ number: true });
 * d.push(Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "111", "payload": "xyz1"}'));
 */
export class JsonDecoder implements Decoder {
  private readonly max: number;
  private readonly numbering: boolean | (() => number | undefined);
  private readonly lazyTextFrom: number;
  /** Bytes of the object being read, from its `{`. */
  private readonly held = new PartialBytes();
  private depth = 0;
  /** Values begun in the object being read (each key and value follows one of `{ [ , :`), up to `MAX_VALUES`. */
  private values = 0;
  private inString = false;
  private escaped = false;
  private failed?: ProtocolError;
  /** Stream offset of the start of the current chunk (for error messages). */
  private offset = 0;
  private nextSeq = 0;

  constructor(opts: JsonDecoderOptions = {}) {
    this.max = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.numbering = opts.number ?? false;
    this.lazyTextFrom = opts.lazyTextFrom ?? Infinity;
  }

  get buffered(): number {
    return this.held.size;
  }

  push(chunk: Buffer): DecodeResult {
    if (this.failed) return { messages: [], error: this.failed };
    const messages: Message[] = [];
    try {
      this.scan(chunk, messages);
    } catch (err) {
      this.failed = err instanceof ProtocolError ? err : new ProtocolError(ErrorCode.BAD_REQUEST, String(err));
      this.held.clear();
      return { messages, error: this.failed };
    }
    this.offset += chunk.length;
    return { messages };
  }

  private scan(chunk: Buffer, out: Message[]): void {
    // Start of the current object inside this chunk (0 when it began in an earlier one).
    let start = 0;
    // The next quote and backslash at or after where they were last looked for (chunk.length: none): a string's body
    // is skipped to the first of them natively. Read a byte at a time here, a 1 MiB payload held the proxy's loop
    // 10-18 ms, about 140 times what the same bytes cost as a frame. Each is looked for again only once passed: O(n).
    let quote = -1;
    let backslash = -1;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (this.depth === 0) {
        if (isSpace(b)) continue;
        if (b !== OPEN) {
          throw new ProtocolError(
            ErrorCode.BAD_REQUEST,
            (this.offset + i === 0 ? recogniseForeign(chunk)?.message : undefined) ?? `byte ${this.offset + i} is not the start of a JSON object: ${hexPreview(chunk.subarray(i))}`,
          );
        }
        start = i;
        this.depth = 1;
        this.values = 1;
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        else {
          // Text: the next few bytes here (escapes come close together: a native call each cost more than this), then
          // natively to the next quote or backslash. The loop's step lands on it.
          const near = Math.min(i + NEAR, chunk.length);
          let j = i + 1;
          while (j < near && chunk[j] !== QUOTE && chunk[j] !== BACKSLASH) j++;
          if (j === near && near < chunk.length) {
            if (quote < j) quote = nextIndex(chunk, QUOTE, j);
            if (backslash < j) backslash = nextIndex(chunk, BACKSLASH, j);
            j = Math.min(quote, backslash);
          }
          i = j - 1;
        }
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === OPEN || b === OPEN_ARRAY || b === COMMA || b === COLON) {
        // Each value costs JSON.parse about an object: a 1 MiB object of 350,000 `{}` took the proxy's event loop ~100 ms.
        if (++this.values > MAX_VALUES) throw new ProtocolError(ErrorCode.BAD_REQUEST, `JSON object holds more than ${MAX_VALUES} values (a message is one flat object of a few fields): value ${MAX_VALUES + 1} begins at byte ${this.offset + i}`);
        if (b !== COMMA && b !== COLON && ++this.depth > MAX_DEPTH) throw new ProtocolError(ErrorCode.BAD_REQUEST, `JSON nested deeper than ${MAX_DEPTH} levels at byte ${this.offset + i}`);
      } else if ((b === CLOSE || b === CLOSE_ARRAY) && --this.depth === 0) {
        const length = this.held.size + i + 1 - start;
        this.checkSize(length, i);
        const bytes = this.held.take(chunk.subarray(start, i + 1));
        out.push(this.toMessage(bytes, this.offset + i + 1 - length));
      }
    }
    if (this.depth > 0) {
      this.checkSize(this.held.size + chunk.length - start, chunk.length - 1);
      // Small tails are copied, so the big read buffer they sit in can be freed.
      this.held.add(chunk.subarray(start), this.max);
    }
  }

  private checkSize(length: number, at: number): void {
    if (length > this.max) {
      throw new ProtocolError(
        ErrorCode.BAD_REQUEST,
        `JSON object ending at or after byte ${this.offset + at} is over the limit of ${this.max} bytes`,
      );
    }
  }

  private toMessage(bytes: Buffer, at: number): Message {
    // JSON is text: bytes that are not UTF-8 would be read as U+FFFD, and the answer be about bytes never sent.
    if (!isUtf8(bytes)) {
      const bad = firstInvalidUtf8(bytes, 0, bytes.length);
      throw new ProtocolError(
        ErrorCode.BAD_REQUEST,
        `the JSON object at byte ${at} is not valid UTF-8: byte 0x${bytes[bad]!.toString(16).padStart(2, '0')} at byte ${at + bad} (text must be UTF-8)`,
      );
    }
    // A large payload written without escapes is kept as its bytes, as a frame's: parsed, the object made a string
    // and its text made one again by JSON.parse, a MiB of it cost the loop 2.0-2.5 ms (5.7-7.4 not ASCII); kept, 0.6-0.9.
    const text = bytes.length > this.lazyTextFrom ? plainPayload(bytes, this.lazyTextFrom) : undefined;
    const unmade = text && withoutText(bytes, text);
    const msg = unmade ?? parseWhole(bytes, at);
    // A `\ud800` escape decodes to half a surrogate pair, which no UTF-8 can carry: a frames peer got
    // U+FFFD in its place (the SHA1 of EF BF BD), and the old server.py, printing it, died holding its lock.
    // Only a `\u` escape makes one (the bytes were checked as UTF-8 above), so most objects skip the look.
    for (const [field, v] of bytes.includes('\\u') ? Object.entries(msg) : []) {
      const lone = typeof v === 'string' ? loneSurrogateIn(v) : undefined;
      if (lone) {
        throw new ProtocolError(
          ErrorCode.BAD_REQUEST,
          `field '${field}' of the JSON object at byte ${at} holds ${lone}, escaped without its other half: it is not text any peer can read (write both halves of the pair)`,
        );
      }
    }
    // Its text, which has no escape and so no lone surrogate, is given only now: the look above would have made it.
    if (unmade) lazyText(unmade, new LazyText(bytes, text![0], text![1] - text![0]));
    if (this.numbering && (msg.type === MsgType.DATA || msg.type === MsgType.ACK || msg.type === MsgType.ERROR)) {
      const given = typeof this.numbering === 'function' ? this.numbering() : undefined;
      msg.seq = given ?? this.nextSeq;
      this.nextSeq = this.nextSeq >= MAX_SEQ ? 0 : this.nextSeq + 1;
    }
    return msg;
  }
}

/** The message of the object `bytes` (at stream offset `at`), `JSON.parse` of all of it. */
function parseWhole(bytes: Buffer, at: number): Message {
  let value: unknown;
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new ProtocolError(
      ErrorCode.BAD_REQUEST,
      `the JSON object at byte ${at} is not valid JSON (${(err as Error).message.slice(0, 80)}): ${hexPreview(bytes)}`,
      { cause: err },
    );
  }
  return toMessage(value, OLD_WIRE);
}

/**
 * The DATA of the object `bytes` with the payload's text `bytes[text)` left out (`plainPayload`),
 * its payload '' for now; or undefined when that is no DATA, or any of it is wrong: the object is
 * then parsed whole, as before, and so answered or refused in the same words. (Of a payload the model
 * reads only whether it is a string, and an ACK without a `payloadsize` its size: no error quotes it.)
 */
function withoutText(bytes: Buffer, text: [number, number]): DataMsg | undefined {
  try {
    const msg = toMessage(JSON.parse(Buffer.concat([bytes.subarray(0, text[0]), bytes.subarray(text[1])]).toString('utf8')), OLD_WIRE);
    return msg.type === MsgType.DATA ? msg : undefined;
  } catch {
    return undefined;
  }
}

const q = JSON.stringify;

/**
 * The old programs read each message with one recv(2048) and parse what it returned as one
 * object: a longer message arrives cut, and breaks them (the server for good, the client with
 * a JSONDecodeError).
 */
export const OLD_READ_BYTES = 2048;

/**
 * One message in the old system's exact shape, as Python's `json.dumps` wrote
 * it: values as strings (the ACK's `payloadsize` as the number it was), no
 * `seq`. Messages the old wire never carried keep the same style. `from` is
 * the id of the side writing it, when it has one (a server): an ERROR then
 * carries it as `srcid`, as its ACKs do.
 */
export function encodeJson(msg: Message, from?: string): Buffer {
  let text: string;
  switch (msg.type) {
    case MsgType.DATA:
      // Senders keep bytes off this wire (the client refuses them, the proxy's old-server link hands them back).
      if (typeof msg.payload !== 'string') throw new TypeError('the old JSON wire carries text only: a binary payload cannot be written');
      // No `payloadsize`, which the old system's data packets never carried and the old programs do
      // not read: it took 20-odd of the 2,048 bytes the old proxy reads a message in, and a packet the
      // old client fitted, sent by our client, reached it cut (a JSONDecodeError that killed it).
      text = `{"type": "0", "srcid": ${q(msg.srcid)}, "privPoliId": ${q(msg.privPoliId)}, "payload": ${q(msg.payload)}}`;
      break;
    case MsgType.SETUP:
      // A registration secret is this project's addition: written only when there is one (the old proxy ignores it).
      text = `{"type": "1", "id": ${q(msg.id)}, "privPolyId": ${q(msg.privPolyId)}, "listenport": "${msg.listenport}"` +
        (msg.token === undefined ? '}' : `, "token": ${q(msg.token)}}`);
      break;
    case MsgType.ACK:
      if (typeof msg.payload !== 'string') return encodeJson(binaryAnswer(msg.payload, msg.seq), msg.srcid);
      text = `{"type": "2", "srcid": ${q(msg.srcid)}, "destid": ${q(msg.destid)}, "payloadsize": ${msg.payloadsize}, "payload": ${q(msg.payload)}}`;
      break;
    case MsgType.ERROR:
      text = errorJson(msg, from);
      break;
    case MsgType.PING:
    case MsgType.PONG:
      text = `{"type": "${msg.type}", "seq": "${msg.seq}"}`;
      break;
    case MsgType.DEREGISTER:
      text = `{"type": "6", "id": ${q(msg.id)}}`;
      break;
    default: {
      const never: never = msg;
      throw new TypeError(`cannot encode message ${q(never)}`);
    }
  }
  return Buffer.from(text, 'utf8');
}

/**
 * An ERROR on the old wire. The reason goes again as `payload`: the old client prints the payload
 * of whatever it gets (and would end in a KeyError without one), then says the hash is not
 * correct. It reads that answer with one recv(OLD_READ_BYTES): a longer ERROR (a reason naming
 * 250-character server ids, twice) ended it with a JSONDecodeError instead, so a reason that would
 * not fit is cut, in both copies, and ends with `...`.
 *
 * A server's ERROR carries its id as `srcid` (`from`), as its ACK does: the old proxy reads
 * `srcid` and `payload` from any answer, and a server's ERROR without `srcid` (a handler's error, a
 * request refused `BAD_REQUEST`) killed its handler in a KeyError with its one lock held - from
 * then on it answered nobody.
 */
function errorJson(msg: ErrorMsg, from?: string): string {
  const head = from === undefined ? '{"type": "3", ' : `{"type": "3", "srcid": ${q(from)}, `;
  const write = (message: string): string =>
    `${head}"code": ${q(msg.code)}, ${msg.appcode === undefined ? '' : `"appcode": ${q(msg.appcode)}, `}"message": ${q(message)}, "payload": ${q(`${msg.appcode ?? msg.code}: ${message}`)}}`;
  const text = write(msg.message);
  if (Buffer.byteLength(text) <= OLD_READ_BYTES) return text;
  // The longest start of the reason that fits (found by halving), never ending in half a surrogate pair.
  const cut = (keep: number): string => write(`${sliceWhole(msg.message, keep)}...`);
  let lo = 0;
  let hi = msg.message.length;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (Buffer.byteLength(cut(mid)) <= OLD_READ_BYTES) lo = mid;
    else hi = mid - 1;
  }
  return cut(lo);
}

/**
 * A binary answer cannot be an old ACK's text `payload`, and a lossy one
 * would be an answer the handler never gave: it goes as the handler's error.
 */
function binaryAnswer(payload: Uint8Array, seq: number): ErrorMsg {
  return {
    type: MsgType.ERROR, seq, code: ErrorCode.HANDLER_ERROR, appcode: 'BINARY_ANSWER',
    message: `the answer is ${payload.length} bytes of binary data, and the old JSON wire carries text only; ask with a MessagePack client`,
  };
}

const EMPTY = Buffer.alloc(0);

/**
 * One connection's JSON encoder: the bytes of `msg`, sent with `seq` in place
 * of its own when given (the old wire does not write it; it decides the order).
 */
export interface JsonEncoder {
  (msg: Message, seq?: number): Buffer;
  /** Bytes of answers it holds for an earlier one (the ordered encoder), which the connection counts against its buffer budget. */
  readonly held?: number;
  /** Let go of what it holds (the connection is closed). */
  drop?(): void;
}

/**
 * An encoder for one JSON connection that writes answers (ACK, ERROR with a
 * `seq`) in the order of the requests' numbers from a numbering
 * `JsonDecoder`: an answer that overtakes an earlier one is held, encoded,
 * until the earlier one is written (`held` counts its bytes: a client that
 * sends one slow request and then thousands of quick ones makes it hold their
 * answers). Everything else is written at once.
 */
export function orderedJsonEncoder(from?: string): JsonEncoder {
  let next = 0;
  let heldBytes = 0;
  const held = new Map<number, Buffer>();
  const encode = (msg: Message, seq?: number): Buffer => {
    if (msg.type !== MsgType.ACK && msg.type !== MsgType.ERROR) return encodeJson(msg, from);
    const s = seq ?? msg.seq;
    if (s === undefined) return encodeJson(msg, from);
    if (s !== next) {
      const bytes = encodeJson(msg, from);
      held.set(s, bytes);
      heldBytes += bytes.length;
      return EMPTY;
    }
    const out = [encodeJson(msg, from)];
    next = next >= MAX_SEQ ? 0 : next + 1;
    for (let b = held.get(next); b; b = held.get(next)) {
      held.delete(next);
      heldBytes -= b.length;
      out.push(b);
      next = next >= MAX_SEQ ? 0 : next + 1;
    }
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  };
  return Object.defineProperties(encode, {
    held: { get: () => heldBytes },
    drop: {
      value: () => {
        held.clear();
        heldBytes = 0;
      },
    },
  }) as JsonEncoder;
}

/**
 * Decoder and encoder for one connection on the old JSON wire, for the side
 * that `answers` (accepted the connection: requests are numbered as they
 * arrive and answered in that order) or the side that `asks` (dialed it: each
 * answer gets the seq of the oldest request sent and not yet answered).
 * `lazyTextFrom` is the answering side's: only requests' text is left unmade (`JsonDecoderOptions`).
 */
export function jsonWire(maxFrameBytes: number | undefined, side: 'answers' | 'asks', from?: string, lazyTextFrom?: number): { decoder: JsonDecoder; encoder: JsonEncoder } {
  if (side === 'answers') return { decoder: new JsonDecoder({ maxFrameBytes, number: true, lazyTextFrom }), encoder: orderedJsonEncoder(from) };
  const sent: number[] = [];
  return {
    decoder: new JsonDecoder({ maxFrameBytes, number: () => sent.shift() }),
    encoder: (msg, seq) => {
      if (msg.type === MsgType.DATA) sent.push(seq ?? msg.seq);
      return encodeJson(msg);
    },
  };
}
