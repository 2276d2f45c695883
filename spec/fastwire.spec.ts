import { execFileSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { Packr, Unpackr } from 'msgpackr';
import { ERROR_CODES, ErrorCode, ProtocolError } from '../transport/errors.js';
import { decodeHot, encodeHot, hotSize } from '../transport/fastwire.js';
import { encodeFrame, FrameBuffer, FrameDecoder, writeFrame } from '../transport/frame.js';
import { toMessage, type AckMsg, type DataMsg, type Message } from '../transport/messages.js';

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

const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ minLength: 80, maxLength: 300 }), fc.string({ unit: 'grapheme', minLength: 20, maxLength: 120 }));
const idText = fc.oneof(fc.string({ minLength: 1, maxLength: 40 }), fc.string({ unit: 'binary', minLength: 1, maxLength: 40 }), fc.string({ minLength: 80, maxLength: 256 }));
const u32 = fc.oneof(fc.nat(300), fc.nat(70000), fc.constant(0xffffffff), fc.nat({ max: 0xffffffff }));
// Bytes as msgpackr reads a bin back: a Buffer.
const payload = fc.oneof(text, fc.uint8Array({ maxLength: 70000 }).map((b) => Buffer.from(b)));
const hotMsg: fc.Arbitrary<DataMsg | AckMsg> = fc.oneof(
  fc.record({ type: fc.constant(0 as const), seq: u32, srcid: idText, privPoliId: idText, payload, payloadsize: u32, timeoutms: u32 }, { requiredKeys: ['type', 'seq', 'srcid', 'privPoliId', 'payload'] }),
  fc.record({ type: fc.constant(2 as const), seq: u32, srcid: idText, destid: idText, payload, payloadsize: u32 }),
);

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
