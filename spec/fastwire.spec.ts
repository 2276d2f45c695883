import { execFileSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import { ERROR_CODES, ErrorCode, ProtocolError } from '../transport/errors.js';
import { asRead, decodeHot, encodeHot, hotSize, LAZY_TEXT_BYTES } from '../transport/fastwire.js';
import { encodeFrame, FrameBuffer, FrameDecoder, ownRead, writeFrame } from '../transport/frame.js';
import { payloadSize, TEXT_BYTES, toMessage, WIRE, type AckMsg, type DataMsg, type ErrorMsg, type Message } from '../transport/messages.js';

const packr = new Packr({ useRecords: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true });

/** The general path: msgpackr, then the model's check. */
function general(body: Uint8Array): { msg?: Message; error?: unknown } {
  try {
    return { msg: toMessage(unpackr.unpack(body)) };
  } catch (error) {
    return { error };
  }
}

/** The fast path either gives exactly what the general path gives, or defers to it. */
function agrees(body: Uint8Array): boolean {
  const hot = decodeHot(body, 0, body.length);
  if (hot === undefined) return true;
  const g = general(body);
  assert.is(g.error, undefined, `the general path refuses what the fast path accepted: ${Buffer.from(body).toString('hex')}`);
  assert.equal(hot, g.msg);
  return true;
}

const id = fc.oneof(fc.string({ maxLength: 12 }), fc.string({ unit: 'binary', maxLength: 4 }), fc.integer({ min: -1000, max: 100000 }), fc.constant(''), fc.string({ minLength: 250, maxLength: 260 }));
const int = fc.oneof(fc.nat(200), fc.integer({ min: -40000, max: 70000 }), fc.constantFrom(0xffffffff, 0x100000000, -1, 2 ** 53), fc.double(), fc.constantFrom('7', '12'));
const scalar = fc.oneof(fc.string({ maxLength: 40 }), fc.integer(), fc.boolean(), fc.constant(null), fc.double());
const odd = fc.oneof(fc.uint8Array({ maxLength: 4 }), fc.array(fc.nat(3), { maxLength: 2 }), fc.dictionary(fc.string({ maxLength: 3 }), fc.nat(3), { maxKeys: 2 }));
const field = (v: fc.Arbitrary<unknown>) => fc.option(fc.oneof({ weight: 8, arbitrary: v }, { weight: 1, arbitrary: scalar }, { weight: 1, arbitrary: odd }), { nil: undefined, freq: 5 });

/** Maps shaped like the hot messages, with every field sometimes missing, wrong or odd, and extra keys. */
const frameLike = fc
  .record({
    type: field(fc.constantFrom(0, 2, 0, 2, 1, 3, '0')),
    seq: field(int),
    srcid: field(id),
    destid: field(id),
    privPoliId: field(id),
    privPolyId: field(id),
    payload: field(fc.oneof(fc.string({ maxLength: 60 }), fc.string({ unit: 'binary', maxLength: 8 }), fc.uint8Array({ maxLength: 300 }))),
    payloadsize: field(int),
    timeoutms: field(int),
    extra: fc.dictionary(fc.constantFrom('x', 'id', 'code', '__proto__', 'tÿpe', 'payloadsizes'), fc.oneof(scalar, odd), { maxKeys: 2 }),
  })
  .map(({ extra, ...fields }) => {
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(fields)) if (v !== undefined) o[k] = v;
    for (const [k, v] of Object.entries(extra)) Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
    return o;
  });

const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ minLength: 80, maxLength: 300 }), fc.string({ unit: 'grapheme', minLength: 20, maxLength: 120 }));
const idText = fc.oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }), fc.string({ minLength: 80, maxLength: 256 }));
const u32 = fc.oneof(fc.nat(300), fc.nat(70000), fc.constant(0xffffffff), fc.nat({ max: 0xffffffff }));
// Bytes as msgpackr reads a bin back: a Buffer.
const payload = fc.oneof(text, fc.uint8Array({ maxLength: 70000 }).map((b) => Buffer.from(b)));
const hotMsg: fc.Arbitrary<DataMsg | AckMsg> = fc.oneof(
  fc.record({ type: fc.constant(0 as const), seq: u32, srcid: idText, privPoliId: idText, payload, payloadsize: u32, timeoutms: u32 }, { requiredKeys: ['type', 'seq', 'srcid', 'privPoliId', 'payload'] }),
  fc.record({ type: fc.constant(2 as const), seq: u32, srcid: idText, destid: idText, payload, payloadsize: u32 }),
);

test('for any map shaped like DATA or ACK, the fast decoder agrees with msgpackr + toMessage or defers', () => {
  fc.assert(fc.property(frameLike, (o) => agrees(packr.pack(o))), { numRuns: 3000 });
});

test('for any mutated, truncated or extended frame body, the fast decoder agrees or defers', () => {
  const body = fc.oneof(
    frameLike.map((o) => packr.pack(o)),
    fc.constant(packr.pack({ type: 0, seq: 1, srcid: 'c1', privPoliId: '111', payload: 'hello', payloadsize: 5 })),
    fc.constant(packr.pack({ type: 2, seq: 300, srcid: '100', destid: 'c1', payload: 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d', payloadsize: 40 })),
  );
  const mutated = fc.tuple(body, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 3 }), fc.integer({ min: -3, max: 3 })).map(([b, edits, grow]) => {
    let out = Buffer.from(b);
    for (const [at, v] of edits) out[at % out.length] = v;
    if (grow < 0) out = out.subarray(0, Math.max(1, out.length + grow));
    if (grow > 0) out = Buffer.concat([out, Buffer.alloc(grow, 0xc0)]);
    return out;
  });
  fc.assert(fc.property(mutated, (b) => agrees(b)), { numRuns: 5000 });
});

test('a text payload of LAZY_TEXT_BYTES or more, where the reader may (lazyFrom), is made into a string only when read: the same string msgpackr gives, its size known before, and forwarded as its bytes without it', () => {
  const texts = ['a'.repeat(LAZY_TEXT_BYTES - 1), 'a'.repeat(LAZY_TEXT_BYTES), 'x'.repeat(1_000_000), '漢'.repeat(40000), '😀é\u0000z'.repeat(30000)];
  for (const t of texts) {
    for (const o of [{ type: 0, seq: 7, srcid: 'c1', privPoliId: '111', payload: t }, { type: 2, seq: 7, srcid: '100', destid: 'c1', payload: t, payloadsize: 3 }]) {
      // As this project's encoder writes it (msgpackr writes a map this big with a map16 header, which is read but not forwarded as its bytes).
      const body = encodeFrame(o as Message).subarray(4);
      assert.ok(agrees(packr.pack(o)));
      const hot = decodeHot(body, 0, body.length, LAZY_TEXT_BYTES)!;
      assert.ok(hot, `read by the fast path (${t.length} characters)`);
      // Where the reader may not (the default: memory-limit.ts lazyTextFrom in a small group), the same message, made as read.
      // (Text not all ASCII is then the general path's, msgpackr's, as before.)
      const made = decodeHot(body, 0, body.length);
      assert.is(made === undefined, /[^\x00-\x7f]/.test(t), 'text not all ASCII is left to the general path');
      if (made) {
        assert.is(made[TEXT_BYTES], undefined);
        assert.is(Object.getOwnPropertyDescriptor(made, 'payload')!.value, t, 'made as read');
        assert.equal(made, general(body).msg);
      }
      const bytes = Buffer.byteLength(t);
      const lazy = bytes >= LAZY_TEXT_BYTES;
      assert.is(hot[TEXT_BYTES]?.length, lazy ? bytes : undefined);
      assert.is(payloadSize(hot), bytes);
      if (lazy) assert.ok(Object.getOwnPropertyDescriptor(hot, 'payload')!.get, 'not made into a string yet');
      if (o.type === 2) assert.is((hot as AckMsg).payloadsize, 3);
      // Forwarded as its bytes (a new seq), the payload not made.
      assert.ok(asRead(hot, 9), 'goes out as its bytes');
      const fb = new FrameBuffer();
      writeFrame(hot, fb, 9);
      assert.equal(unpackr.unpack(fb.take().subarray(4)), { ...o, seq: 9 });
      if (lazy) assert.ok(Object.getOwnPropertyDescriptor(hot, 'payload')!.get, 'still not made after it was forwarded');
      // Read: the string msgpackr gives, made once; the message as the general path has it.
      assert.is(hot.payload, t);
      assert.is(hot[TEXT_BYTES], undefined);
      assert.is(Object.getOwnPropertyDescriptor(hot, 'payload')!.value, t);
      assert.equal(hot, general(body).msg);
      assert.equal(Object.keys(hot), Object.keys(general(body).msg!), 'its keys in their order');
    }
  }
  // A copy is a message with a string; a payload set is the payload.
  const body = encodeFrame({ type: 0, seq: 1, srcid: 'c1', privPoliId: '111', payload: 'q'.repeat(LAZY_TEXT_BYTES) }).subarray(4);
  const m = decodeHot(body, 0, body.length, LAZY_TEXT_BYTES) as DataMsg;
  const copy = { ...m };
  assert.is(copy[TEXT_BYTES], undefined);
  assert.is(copy.payload, 'q'.repeat(LAZY_TEXT_BYTES));
  const n = decodeHot(body, 0, body.length, LAZY_TEXT_BYTES) as DataMsg;
  n.payload = Buffer.from('bytes');
  assert.is(n[TEXT_BYTES], undefined);
  assert.is(payloadSize(n), 5);
  // Not valid UTF-8 (a lone continuation byte, a surrogate's bytes): the general path's, which reads it as msgpackr does.
  for (const bad of [Buffer.from([0x80]), Buffer.from([0xed, 0xa0, 0x80])]) {
    const head = encodeFrame({ type: 0, seq: 1, srcid: 'c1', privPoliId: '111', payload: 'a'.repeat(LAZY_TEXT_BYTES) }).subarray(4);
    const forged = Buffer.concat([head, bad]);
    // The str32's length grows by the bytes added (the payload is last).
    const at = head.indexOf(0xdb);
    forged.writeUInt32BE(LAZY_TEXT_BYTES + bad.length, at + 1);
    assert.is(decodeHot(forged, 0, forged.length, LAZY_TEXT_BYTES), undefined, 'deferred');
    assert.ok(agrees(forged));
  }
});

test('a frame decoder leaves large text unmade only when told to (lazyTextFrom), and a lone request keeps its frame for it', () => {
  const o = { type: 0, seq: 3, srcid: 'c1', privPoliId: '111', payload: 'y'.repeat(300_000) } as DataMsg;
  const wire = encodeFrame(o);
  // In reads of 64 KiB, as a socket gives them.
  const read = (d: FrameDecoder): DataMsg => {
    const got: Message[] = [];
    for (let at = 0; at < wire.length; at += 65536) got.push(...d.push(wire.subarray(at, at + 65536)).messages);
    assert.is(got.length, 1);
    return got[0] as DataMsg;
  };
  const lazy = read(new FrameDecoder({ lazyTextFrom: LAZY_TEXT_BYTES }));
  assert.is(lazy[TEXT_BYTES]?.length, 300_000);
  assert.ok(lazy[WIRE], 'kept as its bytes, to forward unmade');
  assert.is(lazy.payload, o.payload);
  const made = read(new FrameDecoder());
  assert.is(made[TEXT_BYTES], undefined);
  assert.is(Object.getOwnPropertyDescriptor(made, 'payload')!.value, o.payload);
  assert.is(made[WIRE], undefined, 'a lone request made as read lets its frame go');
});

test('text not made into a string yet (TEXT_BYTES) is encoded from its bytes: hotSize and encodeHot never make the string, and write the bytes its string would be written as, ASCII or not', () => {
  const texts = ['a'.repeat(LAZY_TEXT_BYTES), 'x'.repeat(1_000_000), '漢'.repeat(40000), '😀é\u0000z'.repeat(30000), '\u0080\u2028'.repeat(20000)];
  for (const t of texts) {
    for (const o of [{ type: 0, seq: 7, srcid: 'c1', privPoliId: '111', payload: t, payloadsize: 5 }, { type: 2, seq: 7, srcid: '100', destid: 'c1', payload: t, payloadsize: 3 }]) {
      const body = encodeFrame(o as Message).subarray(4);
      const hot = decodeHot(body, 0, body.length, LAZY_TEXT_BYTES)!;
      // Encoded from its fields, as a message whose frame is not kept is (a request read from the old JSON wire), with a DATA's timeoutms.
      hot[WIRE] = undefined;
      if (hot.type === 0) hot.timeoutms = 1500;
      const want = { ...o, ...(o.type === 0 ? { timeoutms: 1500 } : {}) } as DataMsg | AckMsg;
      const unmade = (): boolean => Object.getOwnPropertyDescriptor(hot, 'payload')!.get !== undefined;
      const room = hotSize(hot, 9);
      assert.ok(unmade(), 'sized without the string');
      assert.is(room, hotSize(want, 9) - 3 * t.length + Buffer.byteLength(t), 'room for its bytes');
      const out = Buffer.alloc(room + 8, 0xee);
      const end = encodeHot(hot, 9, out, 3);
      assert.ok(unmade(), 'written without the string');
      assert.ok(end - 3 <= room);
      assert.is(payloadSize(hot), Buffer.byteLength(t));
      const ref = Buffer.alloc(hotSize(want, 9));
      assert.ok(out.subarray(3, end).equals(ref.subarray(0, encodeHot(want, 9, ref, 0))), `the bytes of the string's (${t.length} characters)`);
      // And so the frame: as a connection writes it, and as one of its own.
      const fb = new FrameBuffer();
      writeFrame(hot, fb, 9);
      assert.ok(fb.take().equals(encodeFrame(want, 9)));
      assert.ok(encodeFrame(hot, 9).equals(encodeFrame(want, 9)));
      assert.ok(unmade(), 'still not made');
      assert.equal(unpackr.unpack(encodeFrame(hot, 9).subarray(4)), { ...want, seq: 9 });
      // Made when read, the same message, encoded the same.
      assert.is(hot.payload, t);
      assert.is(hot[TEXT_BYTES], undefined);
      assert.ok(encodeFrame(hot, 9).equals(encodeFrame(want, 9)));
    }
  }
});

/**
 * Forward `body` as the proxy does (a new seq; a DATA gets the proxy's timeoutms) when the fast decoder
 * kept its bytes: msgpackr must read the forwarded frame as exactly the message with those changes.
 */
function forwardsExactly(body: Uint8Array, seq: number, timeoutms: number): boolean {
  const hot = decodeHot(body, 0, body.length);
  if (hot === undefined || hot[WIRE] === undefined) return true;
  // The bytes kept are exactly the message: msgpackr reads them as it, and they hold each of its keys once.
  assert.equal(unpackr.unpack(body), hot);
  const entries = body[0]! >= 0x80 && body[0]! <= 0x8f ? body[0]! - 0x80 : (body[1]! << 8) | body[2]!;
  assert.is(entries, Object.keys(hot).length, 'no key twice');
  if (hot.type === 0) hot.timeoutms = timeoutms;
  assert.ok(asRead(hot, seq), 'an unchanged message goes out as its bytes');
  const fb = new FrameBuffer();
  writeFrame(hot, fb, seq);
  const frame = fb.take();
  assert.is(frame.readUInt32BE(0), frame.length - 4);
  const sent = unpackr.unpack(frame.subarray(4));
  assert.equal(sent, { ...hot, seq });
  assert.equal(toMessage(sent), { ...hot, seq });
  // The same message as the field encoder writes it decodes the same.
  assert.equal(unpackr.unpack(encodeFrame({ ...hot }, seq).subarray(4)), sent);
  return true;
}

/** A uint at least `width` bytes long with its header (valid MessagePack, the same value as msgpackr's shortest form). */
function wideUint(v: number, width: 2 | 3 | 5): Buffer {
  if (width === 2 && v <= 0xff) return Buffer.from([0xcc, v]);
  if (width <= 3 && v <= 0xffff) return Buffer.from([0xcd, v >>> 8, v & 0xff]);
  const b = Buffer.alloc(5, 0xce);
  b.writeUInt32BE(v, 1);
  return b;
}

/**
 * Bodies near the hot messages, built key by key: a valid DATA or ACK, then
 * sometimes a key added (another field, the other spelling, an unknown key,
 * a client's own timeoutms), dropped or repeated, the keys in another order,
 * an id as a number, the seq wider than it needs, a map16 header.
 */
const sometimes = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.oneof({ weight: 3, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: arb });
const asciiId = fc.oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.string({ minLength: 80, maxLength: 256 }));
const asciiPayload = fc.oneof(fc.string({ maxLength: 60 }), fc.string({ minLength: 200, maxLength: 400 }), fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b)));
/** DATA and ACK as clients and servers send them: text in ASCII, no timeoutms (the proxy adds its own). */
const sentHot: fc.Arbitrary<DataMsg | AckMsg> = fc.oneof(
  fc.record({ type: fc.constant(0 as const), seq: u32, srcid: asciiId, privPoliId: asciiId, payload: asciiPayload, payloadsize: u32 }, { requiredKeys: ['type', 'seq', 'srcid', 'privPoliId', 'payload'] }),
  fc.record({ type: fc.constant(2 as const), seq: u32, srcid: asciiId, destid: asciiId, payload: asciiPayload, payloadsize: u32 }),
);
const nearHot = fc
  .tuple(
    fc.oneof({ weight: 3, arbitrary: sentHot }, { weight: 1, arbitrary: hotMsg }),
    sometimes(fc.array(fc.tuple(fc.constantFrom('x', 'destid', 'privPoliId', 'privPolyId', 'timeoutms', 'payloadsize', 'seq', 'srcid', 'type'), fc.oneof(u32.map((v) => v as unknown), idText)), { minLength: 1, maxLength: 2 })),
    sometimes(fc.nat(7)),
    sometimes(fc.nat(7)),
    fc.boolean(),
    sometimes(fc.constantFrom(2 as const, 3 as const, 5 as const)),
    sometimes(fc.constant(true)),
    sometimes(fc.constantFrom('srcid', 'destid', 'privPoliId')),
  )
  .map(([m, extra = [], drop, repeat, reverse, seqWidth, map16, numericId]) => {    const pairs: Array<[string, unknown]> = Object.entries(m).filter(([, v]) => v !== undefined);
    for (const e of extra) pairs.push(e);
    if (drop !== undefined && pairs.length > 1) pairs.splice(drop % pairs.length, 1);
    if (repeat !== undefined) pairs.push(pairs[repeat % pairs.length]!);
    if (reverse) pairs.reverse();
    const parts = pairs.map(([k, v]) => {
      const value = k === numericId && typeof v === 'string' ? v.length % 1000 : v;
      return Buffer.concat([packr.pack(k), k === 'seq' && seqWidth && typeof value === 'number' ? wideUint(value, seqWidth) : packr.pack(value)]);
    });
    const head = map16 || pairs.length > 15 ? Buffer.from([0xde, 0, pairs.length]) : Buffer.from([0x80 + pairs.length]);
    return Buffer.concat([head, ...parts]);
  });

test('bodies near DATA and ACK (keys added, dropped, repeated, reordered, numbers for ids, wide seqs): the fast decoder agrees or defers', () => {
  let taken = 0;
  let kept = 0;
  fc.assert(
    fc.property(nearHot, (b) => {
      const hot = decodeHot(b, 0, b.length);
      if (hot) taken++;
      if (hot?.[WIRE]) kept++;
      return agrees(b);
    }),
    { numRuns: 3000 },
  );
  // The property means something only if the generator reaches both answers often.
  assert.ok(taken > 1000 && kept > 500 && kept < taken, `taken ${taken}, kept as bytes ${kept}`);
});

test('a frame the fast decoder keeps as bytes forwards, with a new seq (and timeoutms), as exactly the message', () => {
  fc.assert(fc.property(nearHot, u32, u32, (b, seq, t) => forwardsExactly(b, seq, t)), { numRuns: 3000 });
  fc.assert(fc.property(frameLike, u32, u32, (o, seq, t) => forwardsExactly(packr.pack(o), seq, t)), { numRuns: 1000 });
  const mutated = fc.tuple(nearHot, fc.array(fc.tuple(fc.nat(), fc.nat(255)), { minLength: 1, maxLength: 3 })).map(([b, edits]) => {
    const out = Buffer.from(b);
    for (const [at, v] of edits) out[at % out.length] = v;
    return out;
  });
  fc.assert(fc.property(mutated, u32, u32, (b, seq, t) => forwardsExactly(b, seq, t)), { numRuns: 3000 });
  // The frames clients and servers send are kept, whatever the width of their seq and of the new one.
  for (const m of [
    { type: 0, seq: 4000000000, srcid: 'client-7', privPoliId: '111', payload: 'x'.repeat(300), payloadsize: 300 },
    { type: 0, seq: 3, srcid: 'c', privPoliId: 'p', payload: Buffer.from([1, 2, 3]) },
    { type: 2, seq: 70000, srcid: '100', destid: 'client-7', payload: 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d', payloadsize: 40 },
  ]) {
    for (const seq of [0, 200, 70000, 0xffffffff]) {
      const body = encodeFrame(m).subarray(4);
      assert.ok(decodeHot(body, 0, body.length)![WIRE], 'kept as bytes');
      forwardsExactly(body, seq, 1666);
    }
  }
});

/**
 * Forward `body` as the proxy does, its timeoutms given to the encoder (`writeFrame`'s last argument): the bytes
 * are those of the message with the field set on it, as the proxy set it before, byte for byte - kept as bytes,
 * from its fields (a copy), or packed by msgpackr - and the message is left as it was read.
 */
function timeoutGivenAsSet(body: Uint8Array, seq: number, timeoutms: number): boolean {
  const given = decodeHot(body, 0, body.length) ?? general(body).msg;
  const set = decodeHot(body, 0, body.length) ?? general(body).msg;
  if (given?.type !== 0 || set?.type !== 0) return true;
  const own = given.timeoutms;
  set.timeoutms = timeoutms;
  for (const [g, s] of [[given, set], [{ ...given }, { ...set }]] as const) {
    const a = new FrameBuffer();
    const b = new FrameBuffer();
    writeFrame(g, a, seq, timeoutms);
    writeFrame(s, b, seq);
    assert.ok(a.take().equals(b.take()), `the same bytes for ${Buffer.from(body).toString('hex')}`);
  }
  assert.is(given.timeoutms, own, 'the message keeps its own timeoutms (none, as clients send)');
  assert.is(Object.keys(given).length, Object.keys(set).length - (own === undefined ? 1 : 0), 'no field added to the message');
  return true;
}

test('a DATA forwarded with the timeoutms given to the encoder is the bytes of the message with it set, and the message is not changed', () => {
  fc.assert(fc.property(nearHot, u32, u32, (b, seq, t) => timeoutGivenAsSet(b, seq, t)), { numRuns: 3000 });
  fc.assert(fc.property(frameLike, u32, u32, (o, seq, t) => timeoutGivenAsSet(packr.pack(o), seq, t)), { numRuns: 1000 });
  // A request as a client sends it, kept as its bytes: its frame to the server, and a DATA packed by msgpackr (an extra key).
  const body = encodeFrame({ type: 0, seq: 5, srcid: 'client-7', privPoliId: '111', payload: 'hello', payloadsize: 5 }).subarray(4);
  const m = decodeHot(body, 0, body.length)!;
  assert.ok(m[WIRE], 'kept as bytes');
  const fb = new FrameBuffer();
  writeFrame(m, fb, 70000, 1666);
  assert.equal(unpackr.unpack(fb.take().subarray(4)), { type: 0, seq: 70000, srcid: 'client-7', privPoliId: '111', payload: 'hello', payloadsize: 5, timeoutms: 1666 });
  assert.not.ok('timeoutms' in m);
  const odd = { type: 0, seq: 1, srcid: 'c', privPoliId: 'p', payload: 'x', extra: [1] };
  writeFrame(odd, fb, 9, 250);
  assert.equal(unpackr.unpack(fb.take().subarray(4)), { ...odd, seq: 9, timeoutms: 250 });
  assert.not.ok('timeoutms' in odd);
});

test('a message kept as bytes is encoded from its fields once it is copied or its keys change', () => {
  const ack = { type: 2, seq: 7, srcid: '100', destid: 'c1', payload: 'aaf4', payloadsize: 4 } as const;
  const read = (): AckMsg => {
    const body = encodeFrame(ack).subarray(4);
    return decodeHot(body, 0, body.length) as AckMsg;
  };
  const sent = (m: object, seq = 9): unknown => unpackr.unpack(encodeFrame(m as Record<string, unknown>, seq).subarray(4));
  assert.ok(asRead(read()));
  // Copies (they carry the key, but are other objects), and keys added or taken away in place.
  const changes: Array<(m: AckMsg & Record<string, unknown>) => Record<string, unknown>> = [
    (m) => ({ ...m, payload: 'bbbb' }),
    (m) => ({ ...m, destid: 'c2' }),
    (m) => ({ ...m }),
    (m) => Object.assign(m, { type: 0, privPoliId: '111' }),
    (m) => Object.assign(m, { extra: 1 }),
    (m) => {
      delete (m as Partial<AckMsg>).payloadsize;
      return m;
    },
  ];
  for (const change of changes) {
    const m = change(read() as AckMsg & Record<string, unknown>);
    assert.is(asRead(m), undefined);
    assert.equal(sent(m), { ...m, seq: 9 });
  }
  // A DATA's timeoutms set in place is added to its bytes; one no frame can carry sends it the general way (msgpackr).
  const body = encodeFrame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'p', payload: 'x' }).subarray(4);
  const data = decodeHot(body, 0, body.length) as DataMsg;
  data.timeoutms = 12;
  assert.ok(asRead(data));
  assert.equal(sent(data), { ...data, seq: 9 });
  data.timeoutms = -1;
  assert.is(asRead(data), undefined);
  assert.equal(sent(data), { ...data, seq: 9 });
});

test('requests kept as bytes hold at most four times their size of a big read; a read full of requests is kept as it is, a read of one request is not kept', () => {
  const small = { type: 0, seq: 1, srcid: 'c', privPoliId: 'p', payload: Buffer.from('abc'), payloadsize: 3 } as const;
  const big = { type: 2, seq: 2, srcid: '100', destid: 'c', payload: 'y'.repeat(20000), payloadsize: 20000 } as const;
  const bigFirst = Buffer.concat([encodeFrame(big), encodeFrame(small), encodeFrame({ ...small, seq: 3 })]);
  const { messages } = new FrameDecoder().push(bigFirst);
  const [, a, b] = messages as [AckMsg, DataMsg, DataMsg];
  for (const m of [a, b]) {
    assert.ok(m[WIRE]!.buf !== bigFirst && m[WIRE]!.buf.buffer.byteLength < 1000, 'moved out of the big read');
    assert.equal(m.payload, Buffer.from('abc'));
    assert.ok((m.payload as Buffer).buffer === m[WIRE]!.buf.buffer, 'the payload moved with its frame');
    assert.equal(unpackr.unpack(encodeFrame(m, 77).subarray(4)), { ...m, seq: 77 });
  }
  // The big answer itself, and a read of many requests, keep their read.
  assert.is((messages[0] as AckMsg)[WIRE]!.buf, bigFirst);
  const many = Buffer.concat(Array.from({ length: 300 }, (_, i) => encodeFrame({ ...small, seq: i })));
  for (const m of new FrameDecoder().push(many).messages) assert.is((m as DataMsg)[WIRE]!.buf, many);
  // One of them about to wait in its policy's queue (ownRead) lets go of it: the rest of the read was answered and
  // dropped, and 1,024 waiting, each of another read, kept 64 MB.
  const waiting = new FrameDecoder().push(many).messages[150] as DataMsg;
  ownRead(waiting);
  assert.ok(waiting[WIRE]!.buf !== many && waiting[WIRE]!.buf.buffer.byteLength < 100, 'moved out of the read');
  assert.equal(waiting.payload, Buffer.from('abc'));
  assert.ok((waiting.payload as Buffer).buffer === waiting[WIRE]!.buf.buffer, 'the payload moved with its frame');
  assert.equal(unpackr.unpack(encodeFrame(waiting, 8).subarray(4)), { ...small, seq: 8 });
  // A read of one request keeps nothing of the read: it goes out encoded from its fields.
  const [lone] = new FrameDecoder().push(encodeFrame(small)).messages as [DataMsg];
  assert.is(lone[WIRE], undefined);
  assert.equal(unpackr.unpack(encodeFrame(lone, 5).subarray(4)), { ...small, seq: 5 });
  // One answer alone is kept as bytes (it is forwarded at once and dropped).
  const [answer] = new FrameDecoder().push(encodeFrame({ ...big, payload: 'z', payloadsize: 1 })).messages as [AckMsg];
  assert.ok(answer[WIRE]);
});

test('the fast decoder takes the frames clients and servers send', () => {
  const data: DataMsg = { type: 0, seq: 4000000000, srcid: 'client-7', privPoliId: '111', payload: 'x'.repeat(100), payloadsize: 100 };
  const ack: AckMsg = { type: 2, seq: 65536, srcid: '100', destid: 'client-7', payload: 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d', payloadsize: 40 };
  for (const m of [data, ack, { ...data, payloadsize: undefined }]) {
    if (m.payloadsize === undefined) delete (m as Partial<DataMsg>).payloadsize;
    const body = encodeFrame(m).subarray(4);
    assert.equal(decodeHot(body, 0, body.length), m);
  }
  // Integer ids and the setup spelling of the policy, as toMessage normalises them.
  const body = packr.pack({ type: 0, seq: 1, srcid: 5, privPolyId: 111, payload: 'p' });
  assert.equal(decodeHot(body, 0, body.length), { type: 0, seq: 1, srcid: '5', privPoliId: '111', payload: 'p' });
});

test('bad DATA through the decoder is still BAD_REQUEST with the model\'s own message', () => {
  const { messages, error } = new FrameDecoder().push(encodeFrame({ type: 0, seq: 1, srcid: '', privPoliId: '111', payload: 'p' }));
  assert.equal(messages, []);
  assert.instance(error, ProtocolError);
  assert.is(error!.code, ErrorCode.BAD_REQUEST);
  assert.is(error!.message, "field 'srcid' is empty");
});

test('the fast encoder writes bodies msgpackr decodes as the message, with the seq given', () => {
  fc.assert(
    fc.property(hotMsg, u32, (m, seq) => {
      const room = hotSize(m, seq);
      assert.ok(room > 0);
      const out = Buffer.alloc(room + 8, 0xee);
      const end = encodeHot(m, seq, out, 3);
      assert.ok(end - 3 <= room, 'stays inside the room it asked for');
      assert.equal(unpackr.unpack(out.subarray(3, end)), { ...m, seq });
    }),
    { numRuns: 2000 },
  );
});

test('an ERROR is written by the fast encoder too: the bytes msgpackr packs, any text', () => {
  // The shapes the proxy and servers answer with (errorMsg, the handler's appError), keys in either order.
  const error = fc.tuple(
    fc.constantFrom(...ERROR_CODES),
    text,
    fc.option(u32, { nil: undefined }),
    fc.option(fc.stringMatching(/^[A-Za-z0-9_.:-]{1,64}$/), { nil: undefined }),
    fc.boolean(),
  ).map(([code, message, seq, appcode, appcodeFirst]): ErrorMsg => {
    const m: Record<string, unknown> = { type: 3 };
    if (seq !== undefined) m.seq = seq;
    m.code = code;
    if (appcode !== undefined && appcodeFirst) m.appcode = appcode;
    m.message = message;
    if (appcode !== undefined && !appcodeFirst) m.appcode = appcode;
    return m as unknown as ErrorMsg;
  });
  fc.assert(
    fc.property(error, fc.option(u32, { nil: undefined }), (m, seq) => {
      const room = hotSize(m, seq);
      // Without a seq of its own or given, it has none on the wire either.
      assert.ok(room > 0);
      const out = Buffer.alloc(room + 8, 0xee);
      const end = encodeHot(m, seq ?? m.seq, out, 3);
      assert.ok(end - 3 <= room, 'stays inside the room it asked for');
      // The same bytes: an older peer reads what this build writes as it reads its own (spec/upgrade.spec.ts).
      assert.is(out.subarray(3, end).toString('hex'), packr.pack(seq === undefined ? m : { ...m, seq }).toString('hex'));
    }),
    { numRuns: 2000 },
  );
  // Not the model's shape: packed by msgpackr as it is.
  for (const odd of [{ type: 3, code: 'X', message: 'm', extra: 1 }, { type: 3, code: 5, message: 'm' }, { type: 3, message: 'm' }, { type: 3, seq: -1, code: 'X', message: 'm' }, { type: 3, seq: undefined, code: 'X', message: 'm' }]) {
    assert.is(hotSize(odd), -1, JSON.stringify(odd));
  }
});

test('a frame buffer of mixed messages decodes to the same messages, in order', () => {
  const other = fc.constantFrom<Message>({ type: 1, id: '100', privPolyId: '111', listenport: 2105 }, { type: 3, seq: 9, code: 'NO_SERVER', message: 'no server' }, { type: 4, seq: 0 });
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.oneof(hotMsg, other), fc.option(u32, { nil: undefined })), { maxLength: 40 }), (sends) => {
      const fb = new FrameBuffer();
      for (const [m, seq] of sends) writeFrame(m, fb, seq);
      const expected = sends.map(([m, seq]) => toMessage(seq === undefined ? m : { ...m, seq }));
      const { messages, error } = new FrameDecoder().push(fb.take());
      assert.is(error, undefined);
      assert.equal(messages, expected);
      // The seq override leaves the message itself alone.
      for (const [m] of sends) assert.ok(m.type !== 1 || !('seq' in m));
    }),
    { numRuns: 300 },
  );
});

const id1 = fc.string({ minLength: 1, maxLength: 12 });
const anyMessage: fc.Arbitrary<Message> = fc.oneof(
  hotMsg,
  fc.record({ type: fc.constant(1 as const), id: id1, privPolyId: id1, listenport: fc.integer({ min: 1, max: 65535 }), token: id1 }, { requiredKeys: ['type', 'id', 'privPolyId', 'listenport'] }),
  fc.record({ type: fc.constant(3 as const), seq: u32, code: fc.constantFrom(...ERROR_CODES), message: text, appcode: fc.stringMatching(/^[A-Z_]{1,20}$/) }, { requiredKeys: ['type', 'code', 'message'] }),
  fc.record({ type: fc.constantFrom(4 as const, 5 as const), seq: u32 }),
  fc.record({ type: fc.constant(6 as const), id: id1 }),
);
/** A message, or a value crafted from one: an extra key, or a field taken away (then it is not the model's shape). */
const anyValue: fc.Arbitrary<Record<string, unknown>> = fc.oneof(
  { weight: 4, arbitrary: anyMessage.map((m): Record<string, unknown> => ({ ...m })) },
  fc.tuple(anyMessage, fc.constantFrom('x', 'extra', 'payloadsizes'), scalar).map(([m, k, v]) => ({ ...m, [k]: v })),
  fc.tuple(anyMessage, fc.constantFrom('seq', 'payloadsize', 'srcid')).map(([m, k]) => {
    const o: Record<string, unknown> = { ...m };
    delete o[k];
    return o;
  }),
);

test('the frame encoder writes the same bytes into a buffer of its own as into a busy connection batch, and msgpackr reads them back as the value', () => {
  fc.assert(
    fc.property(fc.array(anyValue, { maxLength: 6 }), fc.boolean(), anyValue, fc.option(u32, { nil: undefined }), (earlier, takeBetween, v, seq) => {
      // A batch that already holds frames (and, sometimes, has handed a batch over and carves the next one from the same buffer).
      const batch = new FrameBuffer();
      for (const e of earlier) writeFrame(e, batch);
      if (takeBetween) batch.take();
      const held = batch.length;
      // A deep copy that keeps bytes as Buffers (structuredClone would make them plain Uint8Arrays).
      const before = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Uint8Array ? Buffer.from(x) : structuredClone(x)]));
      writeFrame(v, batch, seq);
      assert.equal(v, before, 'the value itself is left alone');
      const inBatch = batch.take().subarray(held);
      const own = encodeFrame(v, seq);
      assert.equal([...inBatch], [...own], 'the same bytes in either place');
      const withSeq = seq === undefined ? v : { ...v, seq };
      assert.equal([...own], [...encodeFrame(withSeq)], 'a seq given is written as the copy with that seq would be');
      assert.is(own.readUInt32BE(0), own.length - 4);
      assert.equal(unpackr.unpack(own.subarray(4)), withSeq);
    }),
    { numRuns: 2000 },
  );
});

test('a batch buffer is written over only once every batch taken is done with (recycle), and never a slice of the shared pool', () => {
  const fill = (fb: FrameBuffer, n: number, byte: number): Buffer => {
    const at = fb.reserve(n);
    fb.buffer.fill(byte, at, at + n);
    fb.commit(at + n);
    return fb.take();
  };
  const fb = new FrameBuffer(512, true);
  const first = fill(fb, 200 * 1024, 1);
  const second = fill(fb, 200 * 1024, 2);
  assert.ok(first.buffer !== second.buffer, 'not recycled: a new buffer');
  assert.ok(first.every((b) => b === 1), 'the first batch is left as it was');
  fb.recycle();
  const third = fill(fb, 200 * 1024, 3);
  assert.ok(third.buffer === second.buffer, 'recycled: the buffer of the last batch taken');
  assert.ok(first.every((b) => b === 1), 'a batch taken before the last one is not written over either');
  const small = new FrameBuffer(512, true);
  const pooled = fill(small, 100, 4);
  assert.ok(pooled.buffer.byteLength > pooled.length, 'a small batch is a slice of the shared pool');
  small.recycle();
  const next = fill(small, 100, 5);
  assert.ok(next.buffer !== pooled.buffer || next.byteOffset !== pooled.byteOffset, 'a pool slice is never written over');
  assert.ok(pooled.every((b) => b === 4));
  // A connection's batches (no `recycles`) keep no buffer after it is taken: 10,000 of them would each hold one.
  const batch = new FrameBuffer();
  fill(batch, 200 * 1024, 6);
  assert.is((batch as unknown as { left?: Buffer }).left, undefined);
});

test('the codec builds no code from strings: it encodes and decodes under --disallow-code-generation-from-strings', () => {
  const script = `
    const { encodeFrame, FrameDecoder } = await import(${JSON.stringify(new URL('../transport/frame.ts', import.meta.url).href)});
    const msgs = [
      { type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'x', payloadsize: 1 },
      { type: 2, seq: 2, srcid: 's', destid: 'c', payload: 'h', payloadsize: 1 },
      { type: 4, seq: 3 },
    ];
    const { messages, error } = new FrameDecoder().push(Buffer.concat(msgs.map((m) => encodeFrame(m))));
    process.stdout.write(JSON.stringify({ same: JSON.stringify(messages) === JSON.stringify(msgs), error: error?.message }));`;
  const out = execFileSync(process.execPath, ['--disallow-code-generation-from-strings', '--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(JSON.parse(out), { same: true });
});

test.run();
