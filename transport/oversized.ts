/**
 * A frame over the decoder's limit read through without holding it: its bytes are counted as they
 * arrive and dropped, and only the few bytes of each field's head and of its small values are kept
 * (at most `CARRY`), to learn the frame's `type` and `seq`. A length-prefixed frame can be passed
 * over so; the connection reads on after it, as HAProxy and Envoy answer an oversized upstream
 * response with an error of their own instead of dropping the connection (frame.ts
 * `FrameDecoderOptions.skipOversized`: the proxy's links to servers, actors/upstream.ts).
 *
 * Pure: bytes in, the fields found out.
 */
import { Buffer } from 'node:buffer';
import { head, Kind, valueHead } from './valuehead.js';

/**
 * The most bytes of an oversized frame held at once: a field's head and key, or a small value whole.
 * A key longer than it, or a value longer than it other than text or bytes (passed over), ends the
 * reading of fields: the frame is skipped all the same, and what was found before stands.
 */
const CARRY = 256;

/**
 * Frames declaring more than this are not passed over (frame.ts refuses them from the header, as any
 * frame over the limit was): no answer of this project's servers comes near it, and the bytes of a
 * header that is no frame's (another protocol, a stream out of step) would most often declare more.
 */
export const SKIP_LIMIT = 256 * 1024 * 1024;

/** The fields an oversized frame was found to hold, once skipped (`OversizedFrame.done`). */
export interface SkippedFrame {
  /** The body's declared length. */
  readonly bytes: number;
  /** Where the frame began in the connection's stream (its header's first byte). */
  readonly at: number;
  /** Its `type` and `seq`, when they were read: integers, or decimal strings as the old JSON wire writes them. */
  readonly type?: number;
  readonly seq?: number;
  /** Why its fields were not all read, if they were not (what was found before stands). */
  readonly unread?: string;
}

/** An oversized frame being passed over: `feed` it the connection's bytes until `done`. */
export class OversizedFrame implements SkippedFrame {
  /** Body bytes still to come. */
  private left: number;
  /** Bytes of a field not whole yet (a head, a key, a small value), at most `CARRY` + a head. */
  private carry: Buffer = Buffer.alloc(0);
  /** Key-value pairs still to read; -1 before the map's head. */
  private pairs = -1;
  /** The key whose value comes next; undefined when a key comes next. */
  private key: string | undefined;
  /** Contents of a large text or bytes value still to pass over. */
  private pass = 0;
  type?: number;
  seq?: number;
  unread?: string;

  constructor(readonly bytes: number, readonly at: number) {
    this.left = bytes;
  }

  /** What it holds of the frame now (a field not whole yet), at least 1 while it is not done: a frame under way, as a held one is. */
  get holding(): number {
    return this.done ? 0 : Math.max(1, this.carry.length);
  }

  get done(): boolean {
    return this.left === 0;
  }

  /**
   * Whether a body beginning with `first` may be passed over: a frame's body is a map. Any other first byte is no
   * frame of this protocol (a stream out of step, another program), and is refused from its header as before.
   */
  static startsMap(first: number): boolean {
    return (first >= 0x80 && first <= 0x8f) || first === 0xde || first === 0xdf;
  }

  /** Take what belongs to this frame of `buf` from `start`; returns the bytes taken (all of them, until the frame's end). */
  feed(buf: Buffer, start: number): number {
    const n = Math.min(this.left, buf.length - start);
    this.left -= n;
    if (this.reading) this.read(buf.subarray(start, start + n));
    if (this.left === 0) {
      this.carry = Buffer.alloc(0);
      if (this.reading) this.unread = this.pairs < 0 ? 'the body ended before its map' : 'the body ended inside its map';
    }
    return n;
  }

  /** Fields are still being read: the map is not over (its last value passed over to its end included), and nothing stopped it. */
  private get reading(): boolean {
    return (this.pairs !== 0 || this.pass > 0) && this.unread === undefined;
  }

  /** Read the fields in `bytes`, the next of the body. */
  private read(bytes: Buffer): void {
    let pos = 0;
    while (pos < bytes.length && this.reading) {
      if (this.pass > 0) {
        const k = Math.min(this.pass, bytes.length - pos);
        this.pass -= k;
        pos += k;
        continue;
      }
      // The next field from what is carried and at most CARRY bytes more: never more than that is held.
      const room = CARRY + 16 - this.carry.length;
      const add = bytes.subarray(pos, pos + room);
      const w = this.carry.length === 0 ? add : Buffer.concat([this.carry, add]);
      const used = this.field(w);
      if (used < 0 && add.length === 0) this.unread = 'a field longer than it may be';
      else if (used < 0) {
        // Not whole yet: keep what there is (bounded by CARRY), and wait for the rest.
        this.carry = Buffer.from(w);
        pos += add.length;
        continue;
      }
      // `used` counts from the carry's start: the bytes of `add` it took are those past the carry.
      pos += used - this.carry.length;
      this.carry = Buffer.alloc(0);
    }
  }

  /** Read one field (or the map's head) at the start of `w`: the bytes it took, or -1 when `w` does not hold it whole yet. */
  private field(w: Buffer): number {
    if (!valueHead(w, 0, w.length)) {
      // A head is at most 6 bytes (a byte, a 4-byte length, an extension's type).
      if (w.length >= 6 || (w.length > 0 && !startsValue(w[0]!))) this.unread = `byte 0x${w[0]!.toString(16).padStart(2, '0')} starts no MessagePack value`;
      return w.length >= 6 ? 0 : -1;
    }
    const { kind, data, next, items } = head;
    if (this.pairs < 0) {
      if (kind !== Kind.MAP) {
        this.unread = 'its body is not a map';
        return 0;
      }
      this.pairs = items / 2;
      return data;
    }
    if (this.key === undefined) {
      if (kind !== Kind.STR) {
        this.unread = 'a key is not text';
        return 0;
      }
      if (next - data > CARRY) {
        this.unread = `a key of ${next - data} bytes`;
        return 0;
      }
      if (next > w.length) return -1;
      this.key = w.toString('utf8', data, next);
      return next;
    }
    const key = this.key;
    if (kind === Kind.ARRAY || kind === Kind.MAP) {
      // No field of an answer holds either: what follows is not read.
      this.unread = `field '${key.slice(0, 40)}' holds ${kind === Kind.MAP ? 'a map' : 'an array'}`;
      return 0;
    }
    if (next > w.length) {
      // A small value not whole yet: read again from its head when the rest comes.
      if (next - data <= CARRY) return -1;
      // Large contents (the payload, a long message): passed over, never held.
      this.key = undefined;
      this.pairs--;
      this.pass = next - w.length;
      return w.length;
    }
    this.key = undefined;
    this.pairs--;
    if (key === 'type' || key === 'seq') {
      const v = smallInt(w, kind, data, next);
      if (v !== undefined) this[key] = v;
    }
    return next;
  }
}

/** Whether `b` can start a MessagePack value (0xc1 is the one byte that cannot). */
function startsValue(b: number): boolean {
  return b !== 0xc1;
}

/** The integer a small value holds: a MessagePack integer of any width, or text of decimal digits; undefined for anything else. */
function smallInt(w: Buffer, kind: number, data: number, next: number): number | undefined {
  if (kind === Kind.STR) {
    const s = w.toString('utf8', data, next);
    return /^\d{1,10}$/.test(s) ? Number(s) : undefined;
  }
  if (kind !== Kind.SCALAR) return undefined;
  const b = w[data - 1]!;
  if (b <= 0x7f) return b;
  switch (b) {
    case 0xcc: return w.readUInt8(data);
    case 0xcd: return w.readUInt16BE(data);
    case 0xce: return w.readUInt32BE(data);
    case 0xcf: {
      const v = w.readBigUInt64BE(data);
      return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
    }
    case 0xd0: return nonNegative(w.readInt8(data));
    case 0xd1: return nonNegative(w.readInt16BE(data));
    case 0xd2: return nonNegative(w.readInt32BE(data));
    case 0xd3: {
      const v = w.readBigInt64BE(data);
      return v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : undefined;
    }
    default: return undefined;
  }
}

function nonNegative(v: number): number | undefined {
  return v >= 0 ? v : undefined;
}
