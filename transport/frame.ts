/**
 * The MessagePack frame codec: a 4-byte big-endian length, then one
 * MessagePack map. Pure: bytes in, messages out, and messages into frames
 * (one encoder, whatever buffer it writes to); no sockets here.
 */
import { Buffer } from 'node:buffer';
import { Packr, Unpackr, isNativeAccelerationEnabled } from 'msgpackr';
import { ErrorCode, ProtocolError, hexPreview } from './errors.js';
import { asRead, asReadSize, decodeHot, encodeAsRead, encodeHot, hotSize } from './fastwire.js';
import { recogniseForeign } from './foreign.js';
import { OversizedFrame, SKIP_LIMIT, type SkippedFrame } from './oversized.js';
import { MAX_VALUES, MsgType, TEXT_BYTES, toMessage, WIRE, type AckMsg, type DataMsg, type ErrorMsg, type Message, type WireBytes } from './messages.js';
import { describeBadText, findBadText, mayHoldBadText } from './utf8.js';
import { head, Kind, valueHead } from './valuehead.js';

export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;

/** The words of a refusal of a frame over the limit (`FrameDecoder`'s BAD_REQUEST), as a peer reads them in the ERROR that ends the connection. */
export const FRAME_OVER = /over the limit of \d+/;

/**
 * Whether a BAD_REQUEST that ends a connection (naming no request) refuses one of its requests: after the peer
 * answered something (it read the bytes before the bad ones), or naming a frame over its limit. Nothing heard
 * first, it may be the connection's own (a proxy wanting a PROXY header refuses a connection before it reads any).
 */
export function refusesARequest(message: string | undefined, heard: boolean): boolean {
  return heard || (message !== undefined && FRAME_OVER.test(message));
}

/**
 * What forwarding a request may add to its frame: the proxy's own seq (up to 4
 * bytes longer than the client's), `timeoutms` (15), and ids a client wrote as
 * integers written as text (9 each) - 37 bytes at most. A proxy reads frames
 * up to its limit less this, so what it forwards is never over the limit it
 * and its servers apply (a request of the whole limit, forwarded, was over it:
 * each server it was tried on refused it and closed its link).
 */
export const FORWARD_ROOM = 64;
const HEADER = 4;

// useRecords:false keeps every frame self-contained (no shared structures
// between frames), so any peer in any language can read any single frame.
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

/** Whether msgpackr's native addon is in use (about 2.5x faster decoding). */
export const nativeAcceleration = isNativeAccelerationEnabled;

/**
 * The frame encoder, the only one: writes `msg` as one frame at the end of
 * `out`, with `seq` in place of its own when given, and a DATA's `timeoutms`
 * when given (the message itself is never touched: the proxy sends the
 * request it read with its own seq and the time it waits, and the message
 * stays as it was read). A DATA or ACK read from the wire goes out as the
 * bytes it was read from, with the seq replaced (and a DATA's `timeoutms`
 * added: see `WIRE`); other DATA and ACK, and ERROR, go through the fast
 * writer (no intermediate body); anything else is packed by msgpackr and
 * copied. The destination does not change the bytes: `encodeFrame` is this
 * function writing into a fresh buffer, a connection's `send` is it writing
 * into the connection's batch. A `timeoutms` given writes the bytes the
 * message would with that field set (in its place, or last when it had none).
 *
 * @example
 * const batch = new FrameBuffer();
 * writeFrame({ type: 4, seq: 1 }, batch);
 * socket.write(batch.take());
 */
export function writeFrame(msg: Message | Record<string, unknown>, out: FrameBuffer, seq?: number, timeoutms?: number): void {
  // A DATA or ACK read from the wire and unchanged since goes out as its own bytes, with the seq replaced (fastwire.ts `asRead`).
  const read = asRead(msg, seq, timeoutms);
  if (read !== undefined) {
    const at = out.reserve(HEADER + asReadSize(read));
    out.commit(lengthFirst(out.buffer, at, encodeAsRead(read, seq ?? read.msg.seq, out.buffer, at + HEADER, timeoutms)));
    return;
  }
  const room = hotSize(msg, seq, timeoutms);
  if (room >= 0) {
    const at = out.reserve(HEADER + room);
    const hot = msg as DataMsg | AckMsg | ErrorMsg;
    out.commit(lengthFirst(out.buffer, at, encodeHot(hot, seq ?? hot.seq, out.buffer, at + HEADER, timeoutms)));
    return;
  }
  // Not a hot message: a copy carries the seq, and a DATA's timeout (rare).
  let value = seq === undefined ? msg : { ...msg, seq };
  if (timeoutms !== undefined && msg.type === MsgType.DATA) value = { ...value, timeoutms };
  const body = packr.pack(value);
  const at = out.reserve(HEADER + body.length);
  const buf = out.buffer;
  buf.writeUInt32BE(body.length, at);
  out.commit(at + HEADER + body.copy(buf, at + HEADER));
}

/** Write the length of the body that ends at `end` before it, at `at`; returns `end`. */
function lengthFirst(buf: Buffer, at: number, end: number): number {
  const len = end - at - HEADER;
  buf[at] = len >>> 24;
  buf[at + 1] = len >>> 16;
  buf[at + 2] = len >>> 8;
  buf[at + 3] = len;
  return end;
}

/**
 * One message as a frame in a buffer of its own: `writeFrame` into a fresh
 * `FrameBuffer`, so the bytes are those a connection sends. Any value is
 * accepted (specs and scenarios craft frames the model refuses); values that
 * are not DATA or ACK in the model's shape are packed by msgpackr as they are.
 */
export function encodeFrame(msg: Message | Record<string, unknown>, seq?: number): Buffer {
  const out = new FrameBuffer(0);
  writeFrame(msg, out, seq);
  const frame = out.take();
  // Room is reserved for the worst case (three bytes a character, and spare room for a batch):
  // a big frame left in a much bigger buffer moves to one of its own size, so it holds no more memory than it needs.
  return frame.buffer.byteLength > 2 * frame.length + 8192 ? Buffer.from(frame) : frame;
}

/**
 * Bytes written into one growing buffer and taken in batches: what one
 * connection sends in one turn of the event loop (frames, or on the old wire
 * JSON objects), or the single frame of `encodeFrame`. Writers `reserve` room,
 * write into `buffer` from the offset it returned, and `commit` the end.
 */
export class FrameBuffer {
  private buf?: Buffer;
  /** Where the bytes not yet taken begin in `buf` (a busy connection carves many batches from one buffer). */
  private start = 0;
  private end = 0;

  /**
   * @param hint Room the first batch starts with; the size of each batch taken sets the next one's.
   * @param recycles Whether its owner says when the batches taken are done with (`recycle`): only
   *   then does it keep the buffer they came from (a connection's batches would each keep one).
   */
  constructor(
    private hint = 512,
    private readonly recycles = false,
  ) {}

  /** Bytes written and not yet taken. */
  get length(): number {
    return this.end - this.start;
  }

  /** The buffer the last `reserve` made room in. */
  get buffer(): Buffer {
    return this.buf!;
  }

  /** Room for `n` more bytes; returns where they go in `buffer`. */
  reserve(n: number): number {
    const buf = this.buf;
    if (buf && buf.length - this.end >= n) return this.end;
    const pending = this.end - this.start;
    const need = Math.max(this.hint, 2 * pending, pending + n);
    // Small batches come from Node's shared pool; big ones carve several batches from one buffer.
    const size = need <= 2048 ? need : Math.max(need, Math.min(8 * need, MAX_SLAB));
    const spare = this.spare;
    this.spare = undefined;
    const grown = spare !== undefined && spare.length >= size ? spare : Buffer.allocUnsafe(size);
    if (buf && pending) buf.copy(grown, 0, this.start, this.end);
    this.buf = grown;
    this.start = 0;
    this.end = pending;
    return pending;
  }

  /** The bytes of `buffer` up to `end` are written. */
  commit(end: number): void {
    this.end = end;
  }

  /** Append bytes encoded elsewhere (the old wire's JSON). */
  append(bytes: Uint8Array): void {
    const at = this.reserve(bytes.length);
    this.buf!.set(bytes, at);
    this.end = at + bytes.length;
  }

  /**
   * The bytes written since the last take, in one buffer, handed over: they
   * are never written again (later bytes go after them, or into a new buffer).
   */
  take(): Buffer {
    const buf = this.buf;
    if (!buf) return Buffer.alloc(0);
    const out = buf.subarray(this.start, this.end);
    this.hint = Math.min(Math.max(512, out.length + (out.length >> 2)), MAX_SLAB);
    if (buf.length - this.end >= this.hint) this.start = this.end;
    else {
      // Only a buffer of its own may be written again (`recycle`), never a slice of Node's shared pool.
      this.left = this.recycles && buf.byteOffset === 0 && buf.buffer.byteLength === buf.length ? buf : undefined;
      this.clear();
    }
    return out;
  }

  /** The buffer the last batches taken came from, once nothing is written into it any more (`recycle`). */
  private left?: Buffer;
  /** A buffer whose bytes no one needs any more, for the next `reserve` that needs one. */
  private spare?: Buffer;

  /**
   * Every batch taken so far is done with (written out by whoever took it):
   * the buffer the last of them came from is written over by the next
   * batches, instead of a new one being made. A writer that takes big
   * batches and hands them on (a log file's 256 KiB chunks) then fills two
   * buffers in turn: each new one is memory outside V8's heap that counts
   * towards its next full collection.
   */
  recycle(): void {
    if (this.left !== undefined) this.spare = this.left;
    this.left = undefined;
  }

  /**
   * The bytes `taken` (the last `take`) are needed by no one any more - the
   * socket wrote them before its `write` returned - so the next batch may be
   * written over them. A busy connection then writes from one buffer instead
   * of carving new ones: each new one is memory outside V8's heap that V8
   * counts towards its next full collection (under load, buffers made per
   * batch started one every ~100 ms).
   */
  reclaim(taken: Buffer): void {
    const buf = this.buf;
    if (buf === undefined || this.start !== this.end || taken.buffer !== buf.buffer) return;
    const at = taken.byteOffset - buf.byteOffset;
    if (at >= 0 && at + taken.length === this.start) this.start = this.end = at;
  }

  /** Drop what was written and not taken. */
  clear(): void {
    this.buf = undefined;
    this.start = this.end = 0;
  }
}

const MAX_SLAB = 256 * 1024;

/** Reads (backing stores) up to this size may be held by any of several requests read from them. */
const SMALL_READ = 4096;

/**
 * A message that keeps a view of its bytes (`WIRE`, and a `bin` payload read
 * with it) keeps the whole read it came from in memory until it is dropped:
 * for the proxy, a request until it is answered (an answer is forwarded and
 * dropped at once). So:
 * - A read that holds one request only: the request keeps no view. Its read
 *   would stay for it (measured, 5,000 connections with one request each in
 *   flight: 250 bytes more of heap and the read's 80 bytes per request), and
 *   a connection with one request at a time - 10,000 of them - would keep one
 *   each, to save about 100 ns of encoding.
 * - In a read bigger than `SMALL_READ`, a frame under a quarter of the read
 *   may keep it only when such frames together are at least a quarter of it
 *   (a read full of requests, as a busy client sends, is kept as it is);
 *   otherwise their bytes move to one buffer of their own. So a big read is
 *   held only by frames that make up a quarter of it: not by a small request
 *   that came after a big one already answered.
 */
function holdLittle(messages: Message[], buf: Buffer): void {
  let requests = 0;
  let lone: DataMsg | undefined;
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i] as DataMsg | AckMsg;
    if (m.type === MsgType.DATA && m[WIRE] !== undefined && m[WIRE].buf === buf) {
      requests++;
      lone = m;
    }
  }
  // One whose text is not made into a string yet keeps its frame for it anyway (`TEXT_BYTES`): forwarded as its bytes, never made.
  if (requests === 1 && lone![TEXT_BYTES] === undefined) lone![WIRE] = undefined;
  const size = buf.buffer.byteLength;
  if (size <= SMALL_READ) return;
  let small = 0;
  for (let i = 0; i < messages.length; i++) {
    const w = (messages[i] as DataMsg | AckMsg)[WIRE];
    if (w !== undefined && w.buf === buf && smallPart(w, size)) small += w.end - w.start;
  }
  if (small === 0 || 4 * small >= size) return;
  const own = Buffer.allocUnsafeSlow(small);
  let at = 0;
  for (const m of messages) {
    const w = (m as DataMsg | AckMsg)[WIRE];
    if (w === undefined || w.buf !== buf || !smallPart(w, size)) continue;
    at = moveTo(m as DataMsg | AckMsg, own, at);
  }
}

/** Whether a frame is under a quarter of its read (of `size` bytes): too small a part of it to keep it, past `SMALL_READ`. */
function smallPart(w: WireBytes, size: number): boolean {
  return 4 * (w.end - w.start) < size;
}

/** Copies a message's frame bytes into `own` at `at`, its view and a binary payload moved with them; returns where the next may go. */
function moveTo(m: DataMsg | AckMsg, own: Buffer, at: number): number {
  const w = m[WIRE]!;
  const buf = w.buf;
  const shift = at - w.start;
  own.set(buf.subarray(w.start, w.end), at);
  const next = at + (w.end - w.start);
  // A payload not made into a string yet is of a frame too big to move (`LAZY_TEXT_BYTES`, a read's size or more); it is not read here.
  const p = m[TEXT_BYTES] === undefined ? m.payload : '';
  if (typeof p !== 'string') {
    const from = p.byteOffset - buf.byteOffset + shift;
    m.payload = own.subarray(from, from + p.length);
  }
  w.buf = own;
  w.start += shift;
  w.seqAt += shift;
  w.seqEnd += shift;
  w.end += shift;
  return next;
}

/**
 * A request about to wait (its policy's queue: up to `queue_timeout`) lets go of the read it came in
 * when it is a small part of it, as `holdLittle` has a small frame do in a read that is not mostly
 * small frames: its bytes move to a buffer of their own. A read full of a flooding client's requests
 * was kept whole by whichever of them waited, each of the 1,024 a full queue holds keeping another
 * (64 KiB each): the churn soak's proxy ran at 181-206 MB of RSS, where it ran at 134-154 while the
 * servers' queues held them (its heap the same).
 */
export function ownRead(m: DataMsg): void {
  const w = m[WIRE];
  if (w === undefined || m[TEXT_BYTES] !== undefined) return;
  const size = w.buf.buffer.byteLength;
  if (size <= SMALL_READ || !smallPart(w, size)) return;
  moveTo(m, Buffer.allocUnsafeSlow(w.end - w.start), 0);
}

/** Reads shorter than this, of a message not yet complete, are copied into a buffer of the holder's own; longer ones are kept as they are. */
const COPY_BELOW = 4096;

/**
 * The bytes of a message begun and not yet complete, as a decoder holds them
 * between reads. Long reads are kept as they came; short ones are copied into
 * a buffer of the holder's own, whose room doubles with what it holds (never
 * past what the message can still need), so copying stays linear. A message
 * that arrives a byte per read then costs about its bytes in memory - what
 * the buffer budget counts - not a read's objects per byte (about 200 bytes of
 * heap each: 320 KB of a frame dribbled a byte per read held 150 MB).
 */
export class PartialBytes {
  /** Bytes held, in order (the last of them possibly in `room`). */
  size = 0;
  private parts: Buffer[] = [];
  /** The holder's own buffer the short reads are copied into, filled to `filled`; it comes after `parts`. */
  private room?: Buffer;
  private filled = 0;

  /** Hold `chunk` after what is held; `most` is the most the message can hold in all (room is never made past it). */
  add(chunk: Buffer, most: number): void {
    const n = chunk.length;
    const before = this.size;
    this.size += n;
    if (n >= COPY_BELOW) {
      this.seal();
      this.parts.push(chunk);
      return;
    }
    let room = this.room;
    if (room === undefined || room.length - this.filled < n) {
      this.seal();
      room = this.room = Buffer.allocUnsafe(Math.max(n, Math.min(most - before, Math.max(256, 2 * this.size))));
    }
    chunk.copy(room, this.filled);
    this.filled += n;
  }

  /** Everything held, followed by `last`, as one buffer (`last` itself when nothing is held); nothing is held after. */
  take(last: Buffer): Buffer {
    this.seal();
    const parts = this.parts;
    const size = this.size + last.length;
    this.parts = [];
    this.size = 0;
    if (parts.length === 0) return last;
    parts.push(last);
    return Buffer.concat(parts, size);
  }

  clear(): void {
    this.parts = [];
    this.room = undefined;
    this.filled = 0;
    this.size = 0;
  }

  private seal(): void {
    if (this.room === undefined) return;
    if (this.filled > 0) this.parts.push(this.room.subarray(0, this.filled));
    this.room = undefined;
    this.filled = 0;
  }
}

/** The extension type MessagePack itself defines (timestamp, -1); the others are a library's own. */
const TIMESTAMP = 0xff;

/**
 * Why the MessagePack body `buf[start, end)` is refused before msgpackr
 * decodes any of it, or undefined. Every value's head is read in order
 * (valuehead.ts), strings and bins skipped by their lengths, so no value is
 * made and the cost is the count of values, not the bytes; bytes that are no
 * MessagePack are left for msgpackr to name. Refused:
 * - more than `MAX_VALUES` values;
 * - an extension value other than a timestamp: messages hold none, and
 *   msgpackr's own (BigInt, Error, RegExp, Set, typed arrays, records,
 *   references, bundled strings) are no other MessagePack's; a 1 MiB BigInt
 *   took 45 ms to decode. msgpackr's undefined (d4 00 00) is let through:
 *   msgpackr reads it as undefined, a field left out.
 */
function refuseUnread(buf: Buffer, start: number, end: number): string | undefined {
  let pos = start;
  // Where the string value before this one lies: in a message's flat map, the key of the value that follows it.
  // Made a string only for the message: this walk is every frame's the hot decoder does not take.
  let keyFrom = -1;
  let keyTo = -1;
  for (let n = 0; pos < end; n++) {
    if (n === MAX_VALUES) return `holds more than ${MAX_VALUES} MessagePack values (a message is one flat map of a few fields): value ${n + 1} is at byte ${pos - start}`;
    if (!valueHead(buf, pos, end)) return undefined;
    // msgpackr writes JavaScript's undefined as d4 00 00 (an extension of type 0), and reads it back as undefined: a
    // field a peer written with it set to undefined (`token: process.env.TOKEN`) is a field left out, as msgpackr says.
    if (head.ext >= 0 && head.ext !== TIMESTAMP && !(head.ext === 0 && buf[pos] === 0xd4 && buf[head.data] === 0)) {
      const field = keyFrom < 0 ? '' : ` in field ${JSON.stringify(buf.toString('utf8', keyFrom, keyTo))}`;
      return `holds a MessagePack extension value (type ${head.ext})${field} at byte ${pos - start}: messages hold none but timestamps`;
    }
    const isKey = head.kind === Kind.STR && head.next - head.data <= 64 && head.next <= end;
    keyFrom = isKey ? head.data : -1;
    keyTo = head.next;
    pos = head.next;
  }
  return undefined;
}

/** What one `push` produced: the messages completed by these bytes, and the error that ended the stream, if any. */
export interface DecodeResult {
  messages: Message[];
  error?: ProtocolError;
}

/** A streaming decoder: bytes of one connection in, messages out. */
export interface Decoder {
  push(chunk: Buffer): DecodeResult;
  /** Bytes held waiting for the rest of a message. */
  readonly buffered: number;
}

export interface FrameDecoderOptions {
  /** Largest frame body accepted; a longer declared length is refused before any of it is buffered. */
  maxFrameBytes?: number;
  /**
   * Check each value against the message model (default true). Off for tests of the raw codec and for the load
   * generator, which reads answers as fast as it can: each value is then whatever MessagePack value the peer sent
   * (nil, a number, an array as well as a map), and the reader must check it is an object before reading its fields.
   */
  validate?: boolean;
  /**
   * A text payload of this many bytes or more is made into a string only when read (fastwire.ts `lazyText`;
   * `LAZY_TEXT_BYTES` where the process may: memory-limit.ts `lazyTextFrom`). Default: never, each made as read.
   */
  lazyTextFrom?: number;
  /**
   * A frame over the limit whose body begins as a map, and declares at most `SKIP_LIMIT` bytes, is passed over
   * rather than refused (oversized.ts): none of it is held, its bytes are counted as they come, and this is told
   * its `type` and `seq` once it is past. What it returns is handed on in the frame's place; undefined refuses the
   * frame as any over the limit is (the stream is not read past it). Default: every frame over the limit refused
   * from its header. The proxy's links to servers (actors/upstream.ts): an answer over the proxy's frame is that
   * request's `ANSWER_TOO_LARGE`, and the link reads on.
   */
  skipOversized?: (frame: SkippedFrame) => Message | undefined;
}

/**
 * Decodes length-prefixed MessagePack frames from a byte stream. Frames split
 * across pushes, many frames in one push and one byte at a time all decode
 * exactly once. "Need more bytes" is not an error; corrupt input is, and ends
 * the decoder: every later push returns the same error.
 *
 * @example
 * const d = new FrameDecoder({ maxFrameBytes: 65536 });
 * socket.on('data', (chunk) => { const { messages, error } = d.push(chunk); ... });
 */
export class FrameDecoder implements Decoder {
  private readonly max: number;
  private readonly validate: boolean;
  private readonly lazyTextFrom: number;
  private readonly held = new PartialBytes();
  private need = HEADER;
  private failed?: ProtocolError;
  private offset = 0;
  private readonly skipOversized?: (frame: SkippedFrame) => Message | undefined;
  /** A frame over the limit being passed over (`skipOversized`): the bytes of the next pushes are its, until it is done. */
  private skipping?: OversizedFrame;

  constructor(opts: FrameDecoderOptions = {}) {
    this.max = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.validate = opts.validate ?? true;
    this.lazyTextFrom = opts.lazyTextFrom ?? Infinity;
    this.skipOversized = opts.skipOversized;
  }

  /** Bytes held of frames not whole yet; an oversized frame being passed over (`skipOversized`) counts what it holds, at least 1: a frame under way, so its reads are activity and a frame timeout applies to it as to any. */
  get buffered(): number {
    return this.held.size + (this.skipping?.holding ?? 0);
  }

  push(chunk: Buffer): DecodeResult {
    if (this.failed) return { messages: [], error: this.failed };
    const messages: Message[] = [];
    if (chunk.length === 0) return { messages };
    if (this.skipping) {
      const taken = this.skipping.feed(chunk, 0);
      this.offset += taken;
      if (!this.skipping.done) return { messages };
      const passed = this.passed(this.skipping);
      if (passed instanceof ProtocolError) return this.fail(passed, messages);
      messages.push(passed);
      if (taken === chunk.length) return { messages };
      chunk = chunk.subarray(taken);
    }
    const held = this.held;
    if (held.size + chunk.length < this.need) {
      held.add(chunk, this.need);
      return { messages };
    }
    let buf = held.size === 0 ? chunk : held.take(chunk);
    let pos = 0;
    try {
      while (buf.length - pos >= HEADER) {
        const len = buf.readUInt32BE(pos);
        if (len > this.max && this.skipOversized !== undefined && len <= SKIP_LIMIT && buf.length - pos === HEADER) {
          // Whether it may be passed over is told by its body's first byte: the header waits for it.
          this.need = HEADER + 1;
          break;
        }
        if (len > this.max && this.skipOversized !== undefined && len <= SKIP_LIMIT && OversizedFrame.startsMap(buf[pos + HEADER]!)) {
          // Passed over, none of it held: its bytes in this read now, the rest as they come (`skipping`).
          const skip = new OversizedFrame(len, this.offset + pos);
          pos += HEADER;
          pos += skip.feed(buf, pos);
          this.need = HEADER;
          if (!skip.done) {
            this.skipping = skip;
            break;
          }
          const passed = this.passed(skip);
          if (passed instanceof ProtocolError) throw passed;
          messages.push(passed);
          continue;
        }
        if (len > this.max) {
          // A connection's first bytes that cannot start a frame may say what the peer is instead (foreign.ts).
          const foreign = this.offset + pos === 0 ? recogniseForeign(buf) : undefined;
          throw new ProtocolError(ErrorCode.BAD_REQUEST, foreign?.message ?? `frame at byte ${this.offset + pos} declares ${len} bytes, over the limit of ${this.max}`);
        }
        if (len === 0) throw new ProtocolError(ErrorCode.BAD_REQUEST, `empty frame at byte ${this.offset + pos}`);
        if (buf.length - pos - HEADER < len) {
          this.need = HEADER + len;
          break;
        }
        const start = pos + HEADER;
        const end = start + len;
        pos = end;
        this.need = HEADER;
        const hot = this.validate ? decodeHot(buf, start, end, this.lazyTextFrom) : undefined;
        if (hot) {
          messages.push(hot);
          continue;
        }
        const refused = this.validate ? refuseUnread(buf, start, end) : undefined;
        if (refused) throw new ProtocolError(ErrorCode.BAD_REQUEST, `frame at byte ${this.offset + start - HEADER} ${refused}`);
        let value: unknown;
        try {
          value = unpackr.unpack(buf, { start, end });
        } catch (err) {
          throw new ProtocolError(
            ErrorCode.BAD_REQUEST,
            `frame at byte ${this.offset + start - HEADER} is not one MessagePack value (${(err as Error).message.slice(0, 80)}): ${hexPreview(buf.subarray(start, end))}`,
            { cause: err },
          );
        }
        if (!this.validate) {
          messages.push(value as Message);
          continue;
        }
        const msg = toMessage(value);
        // msgpackr reads bytes that are not UTF-8 as U+FFFD: look at the bytes again only when a string holds one.
        const bad = mayHoldBadText(msg) ? findBadText(buf, start, end) : undefined;
        if (bad) throw new ProtocolError(ErrorCode.BAD_REQUEST, describeBadText(bad, `the frame at byte ${this.offset + start - HEADER}`));
        messages.push(msg);
      }
    } catch (err) {
      return this.fail(err instanceof ProtocolError ? err : new ProtocolError(ErrorCode.BAD_REQUEST, String(err)), messages, buf);
    }
    // Unvalidated values are whatever the peer sent (nil, a number: holdLittle would read their fields) and never keep a view of the read (only decodeHot's do).
    if (this.validate) holdLittle(messages, buf);
    this.offset += pos;
    // Keep only the unread tail (copied when small, so the big read buffer can be freed).
    if (pos < buf.length) held.add(buf.subarray(pos), this.need);
    return { messages };
  }

  /** The stream is refused from here: every later push returns the same error. */
  private fail(error: ProtocolError, messages: Message[], buf?: Buffer): DecodeResult {
    this.failed = error;
    this.skipping = undefined;
    this.held.clear();
    if (this.validate && buf) holdLittle(messages, buf);
    return { messages, error };
  }

  /** An oversized frame passed over: what its owner hands on in its place, or the refusal a frame over the limit gets. */
  private passed(skip: OversizedFrame): Message | ProtocolError {
    this.skipping = undefined;
    const m = this.skipOversized!(skip);
    if (m !== undefined) return m;
    const which = skip.seq === undefined ? `its seq could not be read${skip.unread ? ` (${skip.unread})` : ''}` : `it is a message of type ${skip.type ?? '(not read)'}`;
    return new ProtocolError(ErrorCode.BAD_REQUEST, `frame at byte ${skip.at} declares ${skip.bytes} bytes, over the limit of ${this.max}; passed over, but ${which}, so it answers no request`);
  }
}
