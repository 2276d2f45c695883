/**
 * Which byte starts which MessagePack value, and how long its head and
 * contents are: the one table of the format's first bytes, for the readers
 * that walk a body value by value without decoding it (frame.ts refuses a
 * body before msgpackr reads any of it; utf8.ts finds the bad text in one
 * msgpackr read). Pure: bytes in, a head out.
 */

/** What a value is, by its first byte. */
export const Kind = { SCALAR: 0, STR: 1, BIN: 2, EXT: 3, ARRAY: 4, MAP: 5 } as const;
/** A byte that starts no value (0xc1, which the format never uses). */
const NONE = 6;

/** A value's head as `valueHead` read it. One object, filled again by each call: read it before the next. */
export const head = {
  kind: 0 as number,
  /** Where its contents start: after the first byte, the length field and an extension's type. */
  data: 0,
  /** Where the next value starts: after the contents, or for an array or map after its head (its items follow). */
  next: 0,
  /** The values an array or map holds (a map's keys and values both); 0 for the others. */
  items: 0,
  /** An extension's type byte (0xff is a timestamp); -1 for the others. */
  ext: -1,
};

// 0xc0 to 0xdf, as the format lists them: the kind, the bytes of the length field, the bytes of contents a number or fixext has.
const { SCALAR, STR, BIN, EXT, ARRAY, MAP } = Kind;
const FORMATS: ReadonlyArray<readonly [kind: number, width: number, size: number]> = [
  [SCALAR, 0, 0], // c0 nil
  [NONE, 0, 0], // c1 (never used)
  [SCALAR, 0, 0], // c2 false
  [SCALAR, 0, 0], // c3 true
  [BIN, 1, 0], // c4 bin 8
  [BIN, 2, 0], // c5 bin 16
  [BIN, 4, 0], // c6 bin 32
  [EXT, 1, 0], // c7 ext 8
  [EXT, 2, 0], // c8 ext 16
  [EXT, 4, 0], // c9 ext 32
  [SCALAR, 0, 4], // ca float 32
  [SCALAR, 0, 8], // cb float 64
  [SCALAR, 0, 1], // cc uint 8
  [SCALAR, 0, 2], // cd uint 16
  [SCALAR, 0, 4], // ce uint 32
  [SCALAR, 0, 8], // cf uint 64
  [SCALAR, 0, 1], // d0 int 8
  [SCALAR, 0, 2], // d1 int 16
  [SCALAR, 0, 4], // d2 int 32
  [SCALAR, 0, 8], // d3 int 64
  [EXT, 0, 1], // d4 fixext 1
  [EXT, 0, 2], // d5 fixext 2
  [EXT, 0, 4], // d6 fixext 4
  [EXT, 0, 8], // d7 fixext 8
  [EXT, 0, 16], // d8 fixext 16
  [STR, 1, 0], // d9 str 8
  [STR, 2, 0], // da str 16
  [STR, 4, 0], // db str 32
  [ARRAY, 2, 0], // dc array 16
  [ARRAY, 4, 0], // dd array 32
  [MAP, 2, 0], // de map 16
  [MAP, 4, 0], // df map 32
];
// The same by first byte (all 256), the fix formats' counts (a fixstr's bytes, a fixarray's or fixmap's values) included.
const KIND = new Uint8Array(256);
const WIDTH = new Uint8Array(256);
const COUNT = new Uint8Array(256);
for (let b = 0; b < 256; b++) {
  const [kind, width, size] =
    b <= 0x7f || b >= 0xe0 ? [SCALAR, 0, 0] // positive and negative fixint
    : b <= 0x8f ? [MAP, 0, 2 * (b - 0x80)] // fixmap
    : b <= 0x9f ? [ARRAY, 0, b - 0x90] // fixarray
    : b <= 0xbf ? [STR, 0, b - 0xa0] // fixstr
    : FORMATS[b - 0xc0]!;
  KIND[b] = kind;
  WIDTH[b] = width;
  COUNT[b] = size;
}

/**
 * Read the head of the value at `body[pos]` into `head`. False, and `head`
 * left as it was, when `pos` is at `end`, the byte starts no value, or the
 * head (length field, extension type) runs past `end`; contents that run
 * past `end` are the caller's to notice (`head.next` is then beyond it).
 */
export function valueHead(body: Uint8Array, pos: number, end: number): boolean {
  if (pos >= end) return false;
  const b = body[pos]!;
  const kind = KIND[b]!;
  if (kind === NONE) return false;
  const w = WIDTH[b]!;
  let data = pos + 1 + w;
  let n = COUNT[b]!;
  if (w > 0) {
    if (data > end) return false;
    const at = pos + 1;
    n = w === 1 ? body[at]! : w === 2 ? (body[at]! << 8) | body[at + 1]! : body[at]! * 0x1000000 + ((body[at + 1]! << 16) | (body[at + 2]! << 8) | body[at + 3]!);
    if (kind === Kind.MAP) n *= 2;
  }
  let ext = -1;
  if (kind === Kind.EXT) {
    if (data >= end) return false;
    ext = body[data++]!;
  }
  head.kind = kind;
  head.data = data;
  head.ext = ext;
  if (kind >= Kind.ARRAY) {
    head.items = n;
    head.next = data;
  } else {
    head.items = 0;
    head.next = data + n;
  }
  return true;
}
