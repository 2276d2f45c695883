/**
 * Text on the wire is UTF-8: a MessagePack `str` (or a JSON object) whose
 * bytes are not is refused, naming the first bad byte, rather than decoded
 * with U+FFFD in place of what the client sent. Pure: bytes in, a finding out.
 *
 * Decoders take their usual path first; only when a decoded string holds
 * U+FFFD (which valid input may also carry, as EF BF BD) do they look at the
 * bytes again here, so well-formed traffic pays nothing.
 */

/** Offset of the first byte in `buf[start, end)` that breaks UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF), or -1. */
export function firstInvalidUtf8(buf: Uint8Array, start: number, end: number): number {
  let i = start;
  while (i < end) {
    const b = buf[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0;
      else if (b === 0xed) hi = 0x9f;
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90;
      else if (b === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= need; k++) {
      if (i + k >= end) return i;
      const c = buf[i + k]!;
      if (c < lo || c > hi) return i + k;
      lo = 0x80;
      hi = 0xbf;
    }
    i += need + 1;
  }
  return -1;
}

/** A string value whose bytes are not UTF-8: where, and under which key of the top-level map (when it is one). */
export interface BadText {
  /** Offset of the bad byte from the start of the body. */
  at: number;
  byte: number;
  key?: string;
}

/**
 * The first `str` in one MessagePack value (`body[start, end)`) whose bytes
 * are not UTF-8, or undefined. The value has already decoded, so it is
 * well-formed MessagePack; anything unexpected ends the search.
 */
export function findBadText(body: Uint8Array, start: number, end: number): BadText | undefined {
  const head = body[start]!;
  let pairs = -1;
  let pos = start + 1;
  if (head >= 0x80 && head <= 0x8f) pairs = head - 0x80;
  else if (head === 0xde) {
    pairs = u16(body, pos);
    pos += 2;
  } else if (head === 0xdf) {
    pairs = u32(body, pos);
    pos += 4;
  }
  if (pairs < 0) {
    const r = scan(body, start, end, 1);
    return r.bad < 0 ? undefined : { at: r.bad - start, byte: body[r.bad]! };
  }
  // A map (every message is one): name the field whose value holds the bad text.
  for (let i = 0; i < pairs && pos < end; i++) {
    const k = scan(body, pos, end, 1);
    if (k.bad >= 0) return { at: k.bad - start, byte: body[k.bad]! };
    const key = k.text ? Buffer.from(body.buffer, body.byteOffset + k.text[0], k.text[1] - k.text[0]).toString('latin1') : undefined;
    const v = scan(body, k.next, end, 1);
    if (v.bad >= 0) return { at: v.bad - start, byte: body[v.bad]!, key };
    pos = v.next;
  }
  return undefined;
}

function u16(b: Uint8Array, at: number): number {
  return (b[at]! << 8) | b[at + 1]!;
}

function u32(b: Uint8Array, at: number): number {
  return ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;
}

/**
 * Walk `count` values from `pos` (nested ones included): where they end,
 * the offset of the first bad byte in a `str` among them (or -1), and, when
 * the first value is a `str`, where its bytes are.
 */
function scan(body: Uint8Array, pos: number, end: number, count: number): { next: number; bad: number; text?: [number, number] } {
  let text: [number, number] | undefined;
  let first = true;
  while (count > 0 && pos < end) {
    const b = body[pos++]!;
    count--;
    let len = -1;
    let skip = 0;
    if (b <= 0x7f || b >= 0xe0 || b === 0xc0 || b === 0xc2 || b === 0xc3) skip = 0;
    else if (b <= 0x8f) count += 2 * (b - 0x80);
    else if (b <= 0x9f) count += b - 0x90;
    else if (b <= 0xbf) len = b - 0xa0;
    else {
      switch (b) {
        case 0xd9: len = body[pos]!; pos += 1; break;
        case 0xda: len = u16(body, pos); pos += 2; break;
        case 0xdb: len = u32(body, pos); pos += 4; break;
        case 0xc4: skip = 1 + body[pos]!; break;
        case 0xc5: skip = 2 + u16(body, pos); break;
        case 0xc6: skip = 4 + u32(body, pos); break;
        case 0xc7: skip = 2 + body[pos]!; break;
        case 0xc8: skip = 3 + u16(body, pos); break;
        case 0xc9: skip = 5 + u32(body, pos); break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xca: case 0xce: case 0xd2: skip = 4; break;
        case 0xd6: skip = 5; break;
        case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xdc: count += u16(body, pos); pos += 2; break;
        case 0xdd: count += u32(body, pos); pos += 4; break;
        case 0xde: count += 2 * u16(body, pos); pos += 2; break;
        case 0xdf: count += 2 * u32(body, pos); pos += 4; break;
        default: return { next: end, bad: -1 };
      }
    }
    if (len >= 0) {
      const stop = Math.min(pos + len, end);
      const bad = firstInvalidUtf8(body, pos, stop);
      if (bad >= 0) return { next: stop, bad };
      if (first) text = [pos, stop];
      pos = stop;
    } else pos += skip;
    first = false;
  }
  return { next: pos, bad: -1, text };
}

/** Whether a decoded message holds U+FFFD in a string field: only then can its bytes have been invalid UTF-8. */
export function mayHoldBadText(msg: object): boolean {
  for (const v of Object.values(msg)) if (typeof v === 'string' && v.includes('\uFFFD')) return true;
  return false;
}

/** `field 'payload' is not valid UTF-8: byte 0xff at byte 41 of the body of ...` */
export function describeBadText(bad: BadText, where: string): string {
  const what = bad.key !== undefined ? `field '${bad.key}'` : 'a string';
  return `${what} is not valid UTF-8: byte 0x${bad.byte.toString(16).padStart(2, '0')} at byte ${bad.at} of the body of ${where} (text must be UTF-8; send bytes as MessagePack bin)`;
}
