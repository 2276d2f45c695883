/**
 * The MessagePack frame codec: a 4-byte big-endian length, then one
 * MessagePack map. Pure: bytes in, messages out; no sockets here.
 */
import { Packr, Unpackr, isNativeAccelerationEnabled } from 'msgpackr';
import { ErrorCode, ProtocolError, hexPreview } from './errors.js';
import { decodeHot, encodeHot, hotSize } from './fastwire.js';
import { recogniseForeign } from './foreign.js';
import { toMessage, type Message } from './messages.js';

export const DEFAULT_MAX_FRAME_BYTES = 1024 * 1024;
const HEADER = 4;

// useRecords:false keeps every frame self-contained (no shared structures
// between frames), so any peer in any language can read any single frame.
const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

/** Whether msgpackr's native addon is in use (about 2.5x faster decoding). */
export const nativeAcceleration = isNativeAccelerationEnabled;

/** Encode one message as a length-prefixed frame. */
export function encodeFrame(msg: Message | Record<string, unknown>): Buffer {
  const body = packr.pack(msg);
  const out = Buffer.allocUnsafe(HEADER + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, HEADER);
  return out;
}

/**
 * Frames written straight into one growing buffer: what one connection sends
 * in one turn of the event loop. DATA and ACK are written by the fast encoder
 * (no intermediate body); other messages are packed by msgpackr and copied.
 */
export class FrameBuffer {
  private buf?: Buffer;
  /** Where the frames not yet taken begin in `buf` (a busy connection carves many batches from one buffer). */
  private start = 0;
  private end = 0;
  /** Size of the last batch taken: the next one starts with that much room. */
  private hint = 512;

  /** Bytes written and not yet taken (frames with their prefixes). */
  get length(): number {
    return this.end - this.start;
  }

  /** Append one message as a frame, with `seq` in place of its own when given. */
  append(msg: Message, seq?: number): void {
    const s = seq ?? (msg as { seq?: number }).seq ?? 0;
    const room = hotSize(msg, s);
    if (room >= 0) {
      const at = this.reserve(HEADER + room);
      const end = encodeHot(msg as Parameters<typeof encodeHot>[0], s, this.buf!, at + HEADER);
      this.buf!.writeUInt32BE(end - at - HEADER, at);
      this.end = end;
      return;
    }
    // Not a hot message: a copy carries the seq (rare; the message itself is never touched).
    const body = packr.pack(seq === undefined ? msg : { ...msg, seq });
    const at = this.reserve(HEADER + body.length);
    this.buf!.writeUInt32BE(body.length, at);
    this.end = at + HEADER + body.copy(this.buf!, at + HEADER);
  }

  /**
   * The frames written since the last take, in one buffer, handed over: the
   * bytes are never written again (later frames go after them, or into a new buffer).
   */
  take(): Buffer {
    const buf = this.buf;
    if (!buf) return Buffer.alloc(0);
    const out = buf.subarray(this.start, this.end);
    this.hint = Math.min(Math.max(512, out.length + (out.length >> 2)), MAX_SLAB);
    if (buf.length - this.end >= this.hint) this.start = this.end;
    else this.clear();
    return out;
  }

  /** Drop what was written and not taken. */
  clear(): void {
    this.buf = undefined;
    this.start = this.end = 0;
  }

  /** Room for `n` more bytes; returns where they go. */
  private reserve(n: number): number {
    const buf = this.buf;
    if (buf && buf.length - this.end >= n) return this.end;
    const pending = this.end - this.start;
    const need = Math.max(this.hint, 2 * pending, pending + n);
    // Small batches come from Node's shared pool; big ones carve several batches from one buffer.
    const grown = Buffer.allocUnsafe(need <= 2048 ? need : Math.max(need, Math.min(8 * need, MAX_SLAB)));
    if (buf && pending) buf.copy(grown, 0, this.start, this.end);
    this.buf = grown;
    this.start = 0;
    this.end = pending;
    return pending;
  }
}

const MAX_SLAB = 256 * 1024;

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
  /** Check each value against the message model (default true). Off only for tests of the raw codec. */
  validate?: boolean;
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
  private chunks: Buffer[] = [];
  private size = 0;
  private need = HEADER;
  private failed?: ProtocolError;
  private offset = 0;

  constructor(opts: FrameDecoderOptions = {}) {
    this.max = opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
    this.validate = opts.validate ?? true;
  }

  get buffered(): number {
    return this.size;
  }

  push(chunk: Buffer): DecodeResult {
    if (this.failed) return { messages: [], error: this.failed };
    const messages: Message[] = [];
    if (chunk.length === 0) return { messages };
    this.chunks.push(chunk);
    this.size += chunk.length;
    if (this.size < this.need) return { messages };
    let buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.size);
    this.chunks = [];
    let pos = 0;
    try {
      while (buf.length - pos >= HEADER) {
        const len = buf.readUInt32BE(pos);
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
        const hot = this.validate ? decodeHot(buf, start, end) : undefined;
        if (hot) {
          messages.push(hot);
          continue;
        }
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
        messages.push(this.validate ? toMessage(value) : (value as Message));
      }
    } catch (err) {
      this.failed = err instanceof ProtocolError ? err : new ProtocolError(ErrorCode.BAD_REQUEST, String(err));
      this.size = 0;
      return { messages, error: this.failed };
    }
    this.offset += pos;
    if (pos < buf.length) {
      // Keep only the unread tail; copy it when small so the big read buffer can be freed.
      const rest = buf.subarray(pos);
      this.chunks.push(rest.length < 4096 ? Buffer.from(rest) : rest);
      this.size = rest.length;
    } else {
      this.size = 0;
    }
    return { messages };
  }
}
