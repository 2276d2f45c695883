/**
 * Text on the wire is UTF-8: a MessagePack `str` (or a JSON object) whose
 * bytes are not is refused, naming the first bad byte, rather than decoded
 * with U+FFFD in place of what the client sent. Pure: bytes in, a finding out.
 *
 * Decoders take their usual path first; only when a decoded string holds
 * U+FFFD (which valid input may also carry, as EF BF BD) do they look at the
 * bytes again here, so well-formed traffic pays nothing.
 */
import { head, Kind, valueHead } from './valuehead.js';

/**
 * Offset of the first byte in `buf[start, end)` that breaks UTF-8 (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or -1: the start of the ill-formed sequence. A Latin-1 `é` (0xe9)
 * before a quote was named as the quote (`byte 0x22 at byte 65`), the byte after it, which is fine.
 */
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
      if (c < lo || c > hi) return i;
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
  if (!valueHead(body, start, end) || head.kind !== Kind.MAP) {
    const r = scan(body, start, end, 1);
    return r.bad < 0 ? undefined : { at: r.bad - start, byte: body[r.bad]! };
  }
  // A map (every message is one): name the field whose value holds the bad text.
  const pairs = head.items / 2;
  let pos = head.next;
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

/**
 * Walk `count` values from `pos` (nested ones included): where they end,
 * the offset of the first bad byte in a `str` among them (or -1), and, when
 * the first value is a `str`, where its bytes are.
 */
function scan(body: Uint8Array, pos: number, end: number, count: number): { next: number; bad: number; text?: [number, number] } {
  let text: [number, number] | undefined;
  let first = true;
  while (count > 0 && pos < end) {
    if (!valueHead(body, pos, end)) return { next: end, bad: -1 };
    count += head.items - 1;
    if (head.kind === Kind.STR) {
      const stop = Math.min(head.next, end);
      const bad = firstInvalidUtf8(body, head.data, stop);
      if (bad >= 0) return { next: stop, bad };
      if (first) text = [head.data, stop];
    }
    pos = head.next;
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
