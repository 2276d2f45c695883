import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Packr } from 'msgpackr';
import fc from 'fast-check';
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { encodeFrame, FrameDecoder, nativeAcceleration } from '../transport/frame.js';
import { JsonDecoder } from '../transport/json.js';
import { ERROR_CODES, ErrorCode, LocalCode } from '../transport/errors.js';
import { MAX_VALUES, MsgType, toMessage, type Message } from '../transport/messages.js';
import type { SkippedFrame } from '../transport/oversized.js';

const msgs: Message[] = [
  { type: 0, seq: 1, srcid: '1', privPoliId: '111', payload: 'xyz1' },
  { type: 1, id: '100', privPolyId: '111', listenport: 2105 },
  { type: 2, seq: 7, srcid: '100', destid: '1', payload: 'b0400cf1f3919fdba057dbd2acc52f148fbb43ac', payloadsize: 40 },
  { type: 3, seq: 9, code: 'NO_SERVER', message: 'no server' },
  { type: 5, seq: 3, id: '100', privPolyId: '111' },
];
const bytes = Buffer.concat(msgs.map((m) => encodeFrame(m)));

test('a frame is a 4-byte big-endian length and one MessagePack map', () => {
  const f = encodeFrame(msgs[0]!);
  assert.is(f.readUInt32BE(0), f.length - 4);
  assert.ok((f[4]! & 0xf0) === 0x80 || f[4] === 0xde, 'a MessagePack map marker (fixmap or map16)');
});

test('the real frame docs/PROTOCOL.md shows is the bytes a client writes for pktfiles/1.json', () => {
  const doc = readFileSync(new URL('../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const dump = /### A real frame[\s\S]*?```\n([\s\S]*?)```/.exec(doc)?.[1];
  assert.ok(dump, 'the section has a hex dump');
  const shown = Buffer.from(dump.split('\n').map((l) => l.slice(10, 58)).join(' ').replace(/\s+/g, ''), 'hex');
  const data = { type: 0, seq: 1, srcid: '1', privPoliId: '111', payload: 'xyz1', payloadsize: 4 } as const;
  assert.is(shown.toString('hex'), encodeFrame(data).toString('hex'));
  assert.equal(new FrameDecoder().push(shown).messages, [data]);
});

test('many frames in one read decode exactly once, in order', () => {
  const { messages, error } = new FrameDecoder().push(bytes);
  assert.is(error, undefined);
  assert.equal(messages, msgs);
});

test('frames fed one byte at a time decode exactly once', () => {
  const d = new FrameDecoder();
  const out: Message[] = [];
  for (let i = 0; i < bytes.length; i++) {
    const r = d.push(bytes.subarray(i, i + 1));
    assert.is(r.error, undefined);
    out.push(...r.messages);
  }
  assert.equal(out, msgs);
  assert.is(d.buffered, 0);
});

test('a frame split across three reads at every pair of cut points decodes once', () => {
  const one = encodeFrame(msgs[2]!);
  for (let a = 1; a < one.length - 1; a++) {
    for (let b = a + 1; b < one.length; b++) {
      const d = new FrameDecoder();
      const out = [...d.push(one.subarray(0, a)).messages, ...d.push(one.subarray(a, b)).messages, ...d.push(one.subarray(b)).messages];
      assert.equal(out, [msgs[2]], `cut at ${a},${b}`);
    }
  }
});

test('a declared length over the limit is refused from the header alone', () => {
  const d = new FrameDecoder({ maxFrameBytes: 1000 });
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1001);
  const r = d.push(header);
  assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(r.error!.message, /1001 bytes, over the limit of 1000/);
  assert.is(d.buffered, 0, 'nothing buffered');
});

/** A decoder that passes over frames over `max` (`skipOversized`), answering each with an ERROR naming what it learnt; `seen` are the frames it was told of. */
function skipper(max: number) {
  const seen: SkippedFrame[] = [];
  const d = new FrameDecoder({
    maxFrameBytes: max,
    skipOversized: (f) => {
      seen.push({ bytes: f.bytes, at: f.at, type: f.type, seq: f.seq, unread: f.unread });
      return f.seq === undefined || f.type !== MsgType.ACK ? undefined : { type: 3, seq: f.seq, code: 'HANDLER_ERROR', appcode: 'ANSWER_TOO_LARGE', message: `${f.bytes} bytes` };
    },
  });
  return { d, seen };
}

test('with skipOversized, a frame over the limit is passed over without holding it: the frames after it decode, wherever the reads cut it', () => {
  const big = { type: 2, seq: 77, srcid: 'old', destid: 'c', payload: 'y'.repeat(3000), payloadsize: 3000 } as const;
  const stream = Buffer.concat([encodeFrame(msgs[2]!), encodeFrame(big), encodeFrame(msgs[3]!)]);
  const bigLen = encodeFrame(big).length - 4;
  const at = encodeFrame(msgs[2]!).length;
  const want = [msgs[2], { type: 3, seq: 77, code: 'HANDLER_ERROR', appcode: 'ANSWER_TOO_LARGE', message: `${bigLen} bytes` }, msgs[3]];
  // In one read, a byte at a time, and cut at every point into two reads and into reads of 7 bytes.
  const cuts: number[][] = [[], Array.from({ length: stream.length - 1 }, (_, i) => i + 1), Array.from({ length: Math.floor((stream.length - 1) / 7) }, (_, i) => 7 * (i + 1))];
  for (let a = 1; a < stream.length; a += 13) cuts.push([a]);
  for (const cut of cuts) {
    const { d, seen } = skipper(1000);
    const out: Message[] = [];
    let most = 0;
    let from = 0;
    for (const to of [...cut, stream.length]) {
      const r = d.push(stream.subarray(from, to));
      from = to;
      assert.is(r.error, undefined, `cut at ${cut.slice(0, 3).join(',')}: ${r.error?.message}`);
      out.push(...r.messages);
      most = Math.max(most, d.buffered);
    }
    assert.equal(out, want, `cut at ${cut.slice(0, 3).join(',')}...`);
    assert.equal(seen, [{ bytes: bigLen, at, type: 2, seq: 77, unread: undefined }]);
    assert.ok(most < 1000, `never more than a frame within the limit held: ${most}`);
  }
});

test('with skipOversized, a frame being passed over counts as a frame under way (buffered > 0): its reads are activity, and a frame timeout applies to it as to any', () => {
  // It read as nothing held (buffered 0): a connection passing over 200 MiB sent slowly counted none of it as a read.
  const { d } = skipper(1024);
  const big = encodeFrame({ type: 2, seq: 5, srcid: 's', destid: 'c', payload: 'y'.repeat(4096), payloadsize: 4096 });
  assert.is(d.push(big.subarray(0, 4)).messages.length, 0);
  assert.ok(d.buffered > 0, 'the header of a frame over the limit waits for its first byte');
  d.push(big.subarray(4, 2000));
  assert.ok(d.buffered > 0 && d.buffered < 1024, `a frame under way, none of it held: ${d.buffered}`);
  const r = d.push(big.subarray(2000));
  assert.equal(r.messages.map((m) => m.type), [3]);
  assert.is(d.buffered, 0, 'passed over: nothing under way');
});

test('with skipOversized, any answer over the limit - its fields in any order, of any encoder width, text or bytes, cut anywhere - is passed over and its seq read', () => {
  const pk = new Packr({ useRecords: false });
  const answer = fc.record({
    seq: fc.oneof(fc.nat(200), fc.constantFrom(255, 256, 65535, 65536, 0xffffffff)),
    srcid: fc.oneof(fc.string({ maxLength: 12 }), fc.string({ minLength: 250, maxLength: 300 })),
    payload: fc.oneof(fc.integer({ min: 1001, max: 70000 }).map((n) => 'y'.repeat(n)), fc.integer({ min: 1001, max: 70000 }).map((n) => new Uint8Array(n))),
    order: fc.shuffledSubarray(['type', 'seq', 'srcid', 'destid', 'payload', 'payloadsize'], { minLength: 6, maxLength: 6 }),
    cuts: fc.array(fc.nat(80000), { maxLength: 6 }),
  });
  fc.assert(fc.property(answer, ({ seq, srcid, payload, order, cuts }) => {
    const fields: Record<string, unknown> = { type: 2, seq, srcid, destid: 'c', payload, payloadsize: payload.length };
    const body = pk.pack(Object.fromEntries(order.map((k) => [k, fields[k]])));
    const header = Buffer.alloc(4);
    header.writeUInt32BE(body.length);
    const stream = Buffer.concat([encodeFrame(msgs[0]!), header, body, encodeFrame(msgs[3]!)]);
    const { d, seen } = skipper(1000);
    const out: Message[] = [];
    let from = 0;
    for (const to of [...new Set(cuts.map((c) => c % stream.length))].sort((a, b) => a - b).concat(stream.length)) {
      const r = d.push(stream.subarray(from, to));
      from = to;
      if (r.error) throw r.error;
      out.push(...r.messages);
    }
    assert.equal(out, [msgs[0], { type: 3, seq, code: 'HANDLER_ERROR', appcode: 'ANSWER_TOO_LARGE', message: `${body.length} bytes` }, msgs[3]]);
    assert.equal(seen.map((f) => [f.type, f.seq, f.unread]), [[2, seq, undefined]]);
  }), { numRuns: 200 });
});

test('with skipOversized, what cannot be passed over, or answers nothing, is refused as any frame over the limit', () => {
  const over = (body: Buffer): Buffer => Buffer.concat([Buffer.from([0, 0, (body.length >> 8) & 0xff, body.length & 0xff]), body]);
  const pk = new Packr({ useRecords: false });
  const cases: Array<[Buffer, RegExp]> = [
    // Not a map: no frame of this protocol (a stream out of step), refused from its header and first byte.
    [over(Buffer.alloc(2000, 0x41)), /^frame at byte 0 declares 2000 bytes, over the limit of 1000$/],
    // A map whose seq is not there, or not an ACK's: passed over, then refused, saying why.
    [over(pk.pack({ type: 2, payload: 'y'.repeat(2000) })), /over the limit of 1000; passed over, but its seq could not be read, so it answers no request$/],
    [over(pk.pack({ type: 5, seq: 1, pad: 'y'.repeat(2000) })), /over the limit of 1000; passed over, but it is a message of type 5, so it answers no request$/],
    [over(pk.pack({ payload: 'y'.repeat(2000), nested: { seq: 1 } })), /passed over, but its seq could not be read \(field 'nested' holds a map\)/],
  ];
  for (const [bytes, why] of cases) {
    for (const split of [bytes.length, 5, 100]) {
      const { d } = skipper(1000);
      const r1 = d.push(bytes.subarray(0, split));
      const r = r1.error ? r1 : d.push(bytes.subarray(split));
      assert.match(r.error?.message ?? 'no error', why);
    }
  }
  // A declared length past SKIP_LIMIT is refused from the header, as without the option.
  const head = Buffer.from([0x10, 0, 0, 1, 0x82]);
  assert.match(skipper(1000).d.push(head).error?.message ?? 'no error', /declares 268435457 bytes, over the limit of 1000$/);
});

test('the default limit is 1 MiB', () => {
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1024 * 1024 + 1);
  assert.ok(new FrameDecoder().push(header).error);
  header.writeUInt32BE(1024 * 1024);
  assert.not.ok(new FrameDecoder().push(header).error, 'exactly 1 MiB waits for its body');
});

test('good frames before a bad one are delivered, then the decoder stays failed', () => {
  const garbage = Buffer.from([0, 0, 0, 2, 0xc1, 0xc1]); // 0xc1 is never used in MessagePack
  const d = new FrameDecoder();
  const r = d.push(Buffer.concat([encodeFrame(msgs[0]!), garbage, encodeFrame(msgs[1]!)]));
  assert.equal(r.messages, [msgs[0]]);
  assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(r.error!.message, new RegExp(`frame at byte ${encodeFrame(msgs[0]!).length} is not one MessagePack value`));
  assert.is(d.push(encodeFrame(msgs[1]!)).messages.length, 0, 'nothing after the error');
});

/** A frame around a body written byte by byte. */
function withHeader(body: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt32BE(body.length);
  return Buffer.concat([h, body]);
}

const badFrames: Array<[string, Buffer, RegExp]> = [
  ['an empty frame', Buffer.from([0, 0, 0, 0]), /empty frame/],
  ['two values in one frame', (() => { const p = new Packr().pack(1); const b = Buffer.concat([p, p]); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); })(), /not one MessagePack value/],
  ['a frame whose body is shorter than its value', (() => { const b = new Packr({ useRecords: false }).pack({ a: 'long string here' }).subarray(0, 5); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); })(), /not one MessagePack value/],
  ['a number instead of a map', encodeFrame(42 as never), /must be a map/],
  ['an array instead of a map', encodeFrame([1, 2] as never), /must be a map/],
  ['an unknown type', encodeFrame({ type: 9 }), /unknown message type 9/],
  ['data without a payload', encodeFrame({ type: 0, seq: 1, srcid: '1', privPoliId: '1' }), /missing field 'payload'/],
  ['data with a numeric payload', encodeFrame({ type: 0, seq: 1, srcid: '1', privPoliId: '1', payload: 5 }), /'payload' must be a string/],
  ['setup with a port out of range', encodeFrame({ type: 1, id: '1', privPolyId: '1', listenport: 70000 }), /listenport/],
  // A seq past uint32, as another language's MessagePack writes it (uint64, 0xcf): named as out of range, not "not an integer".
  ['a seq of 2^32 written as uint64', withHeader(Buffer.from('82a474797065' + '00' + 'a3736571' + 'cf0000000100000000', 'hex')), /field 'seq' must be between 0 and 4294967295, got 4294967296/],
  ['a seq of -2^40 written as int64', withHeader(Buffer.from('82a474797065' + '00' + 'a3736571' + 'd3ffffff0000000000', 'hex')), /field 'seq' must be between 0 and 4294967295, got -1099511627776/],
];
for (const [name, buf, re] of badFrames) {
  test(`refuses ${name} with BAD_REQUEST`, () => {
    const r = new FrameDecoder().push(buf);
    assert.equal(r.messages, []);
    assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
    assert.match(r.error!.message, re);
  });
}

test('an ERROR frame carrying a local code is refused with BAD_REQUEST: local codes never travel on the wire', () => {
  for (const code of Object.values(LocalCode)) {
    const r = new FrameDecoder().push(encodeFrame({ type: 3, seq: 1, code, message: 'from a peer' }));
    assert.equal(r.messages, [], code);
    assert.is(r.error?.code, ErrorCode.BAD_REQUEST, code);
    assert.match(r.error!.message, new RegExp(`error code '${code}' is local`));
  }
  for (const code of ERROR_CODES) {
    const r = new FrameDecoder().push(encodeFrame({ type: 3, seq: 1, code, message: 'from a peer' }));
    assert.equal(r.messages, [{ type: 3, seq: 1, code, message: 'from a peer' }], `the wire code ${code} is taken`);
  }
  assert.equal(ERROR_CODES.filter((c) => (Object.values(LocalCode) as string[]).includes(c)), [], 'no code is both');
});

test('__proto__ keys cannot pollute prototypes', () => {
  const body = Buffer.from('83a474797065 00 a3736571 01 a95f5f70726f746f5f5f 81a178a179'.replace(/ /g, ''), 'hex');
  const h = Buffer.alloc(4);
  h.writeUInt32BE(body.length);
  const r = new FrameDecoder({ validate: false }).push(Buffer.concat([h, body]));
  assert.is(({} as Record<string, unknown>).x, undefined);
  assert.ok(r.messages.length === 1 || r.error);
});

test('unvalidated, a frame is whatever MessagePack value it holds (nil, a number, an array), returned as it is, not a crash', () => {
  // holdLittle read `.type` of every value: a body of nil (00 00 00 01 c0) threw a TypeError out of push (and out of `revproxy load`).
  const frames = Buffer.from([0, 0, 0, 1, 0xc0, 0, 0, 0, 1, 0x05, 0, 0, 0, 3, 0xd4, 0, 0, 0, 0, 0, 3, 0x92, 1, 2]);
  const r = new FrameDecoder({ validate: false }).push(Buffer.concat([frames, encodeFrame(msgs[2]!)]));
  assert.is(r.error, undefined);
  assert.equal(r.messages.slice(0, 4) as unknown[], [null, 5, undefined, [1, 2]]);
  assert.is(r.messages.length, 5);
  assert.is((r.messages[4] as { seq: number }).seq, 7);
  // Validated, the same bytes are refused, as before.
  assert.ok(new FrameDecoder().push(frames).error);
});

test('a message arriving a byte per read is held in about its bytes, not an object per read (what the buffer budget counts is what is held)', () => {
  // A collection on demand, to measure what stays reachable (uvu runs without --expose-gc).
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const reads = 100_000;
  const held = (start: Buffer, push: (b: Buffer) => void, buffered: () => number): number => {
    push(start);
    gc();
    const before = process.memoryUsage();
    for (let i = 0; i < reads; i++) push(Buffer.from([0x61])); // a read of its own each, as a socket gives them
    gc();
    const after = process.memoryUsage();
    assert.is(buffered(), start.length + reads, 'every byte is held, none decoded yet');
    return after.heapUsed + after.arrayBuffers - before.heapUsed - before.arrayBuffers;
  };
  const frames = new FrameDecoder();
  const header = Buffer.alloc(4);
  header.writeUInt32BE(1 << 20);
  const json = new JsonDecoder();
  const grew = {
    frames: held(header, (b) => assert.is(frames.push(b).error, undefined), () => frames.buffered),
    json: held(Buffer.from('{"type": "0", "payload": "'), (b) => assert.is(json.push(b).error, undefined), () => json.buffered),
  };
  // It was about 100 bytes of memory per byte held (one Buffer object per read): 10 MB for 100 KB here, and 150 MB for 320 KB dribbled at a proxy.
  for (const [wire, bytes] of Object.entries(grew)) assert.ok(bytes < 20 * reads, `${wire}: ${(bytes / 1e6).toFixed(1)} MB of memory hold ${reads / 1000} KB dribbled a byte per read`);
});

test("an ACK without payloadsize (a server's may leave it out) is read with its payload's size in bytes, not 0", () => {
  // The proxy passes an ACK's payloadsize on to the client: a server that left it out made the client read 0.
  const ack = (payload: string | Uint8Array) => ({ type: 2, seq: 3, srcid: 's', destid: 'c', payload });
  for (const [payload, size] of [['naïve', 6], [new Uint8Array([1, 2, 3]), 3], ['', 0]] as const) {
    assert.is((new FrameDecoder().push(encodeFrame(ack(payload) as never)).messages[0] as { payloadsize: number }).payloadsize, size, `frames, ${JSON.stringify(payload)}`);
    assert.is((new FrameDecoder().push(encodeFrame({ ...ack(payload), extra: 1 } as never)).messages[0] as { payloadsize: number }).payloadsize, size, `frames, general path, ${JSON.stringify(payload)}`);
  }
  const old = new JsonDecoder().push(Buffer.from('{"type": "2", "srcid": "100", "destid": "1", "payload": "naïve"}'));
  assert.is((old.messages[0] as { payloadsize: number }).payloadsize, 6, 'the old JSON wire');
  assert.is((new FrameDecoder().push(encodeFrame({ ...ack('abc'), payloadsize: 40 } as never)).messages[0] as { payloadsize: number }).payloadsize, 40, 'one written is kept');
});

test('a frame of more values than a message holds, or of a library\'s own extension types, is refused before msgpackr decodes any of it', () => {
  const frame = (body: Buffer): Buffer => Buffer.concat([Buffer.from([body.length >>> 24, body.length >>> 16, body.length >>> 8, body.length]), body]);
  const packr = new Packr({ useRecords: false });
  const data = { type: 0, seq: 1, srcid: 'a', privPoliId: 'P', payload: 'x' };
  // 1 MiB of empty maps in an array: a million objects (140 ms of the event loop each frame; four connections sending them stalled the proxy).
  const maps = Buffer.alloc(1024 * 1024 - 200, 0x80);
  maps[0] = 0xdd;
  maps.writeUInt32BE(maps.length - 5, 1);
  // The same inside a valid DATA, as a field nobody reads.
  const inData = packr.pack({ ...data, junk: Array.from({ length: 5000 }, () => ({})) });
  // msgpackr's BigInt extension (0x42): a 1 MiB integer took 45 ms to decode; Error (0x65), RegExp (0x78), Set (0x73).
  const bigint = Buffer.concat([Buffer.from([0xc9, 0, 0x0f, 0xff, 0xf0, 0x42]), Buffer.alloc(0x0ffff0, 0x7f)]);
  const error = Buffer.concat([Buffer.from([0xd4, 0x65, 0]), packr.pack(['constructor', data])]);
  const regexp = Buffer.concat([Buffer.from([0xd4, 0x78, 0]), packr.pack(['(a+)+$', 'g'])]);
  const set = Buffer.concat([Buffer.from([0xd4, 0x73, 0]), packr.pack([1, 2])]);
  for (const [name, body, re] of [
    ['a million empty maps', maps, new RegExp(`holds more than ${MAX_VALUES} MessagePack values .*: value ${MAX_VALUES + 1} is at byte ${MAX_VALUES + 4}$`)],
    ['a DATA with 5,000 maps in a field of its own', inData, /holds more than 1024 MessagePack values/],
    ['a BigInt', bigint, /holds a MessagePack extension value \(type 66\) at byte 0: messages hold none but timestamps/],
    ['an Error whose name is a method of a plain object', error, /extension value \(type 101\)/],
    ['a RegExp', regexp, /extension value \(type 120\)/],
    ['a Set', set, /extension value \(type 115\)/],
  ] as const) {
    const started = performance.now();
    const r = new FrameDecoder().push(frame(body));
    assert.is(r.error?.code, ErrorCode.BAD_REQUEST, name);
    assert.match(r.error!.message, re, name);
    assert.equal(r.messages, [], name);
    assert.ok(performance.now() - started < 100, `${name}: refused in ${performance.now() - started} ms`);
  }
  // Exactly the count (the map, 5 fields, 505 more, and a key whose value is an array of a timestamp - the extension MessagePack itself defines): read as before.
  const fields = Object.fromEntries(Array.from({ length: 505 }, (_, i) => [`f${i}`, i]));
  const within = new FrameDecoder().push(frame(packr.pack({ ...data, ...fields, at: [new Date(1e12)] })));
  assert.is(within.error, undefined, within.error?.message);
  assert.equal(within.messages, [data]);
  const over = new FrameDecoder().push(frame(packr.pack({ ...data, ...fields, g: 1, h: [] })));
  assert.match(over.error?.message ?? '', /value 1025 is at byte/, 'one value past the count');
  // A flat map of short ASCII text and small integers takes the fast path (fastwire.ts), which made no objects of the fields it skips: the count holds there too.
  const flat = Object.fromEntries(Array.from({ length: 600 }, (_, i) => [`f${i}`, i]));
  const hot = new FrameDecoder().push(frame(packr.pack({ ...data, ...flat })));
  assert.match(hot.error?.message ?? '', /value 1025 is at byte/, 'a flat DATA of 605 fields');
});

test("a field set to JavaScript's undefined in a peer written with msgpackr (d4 00 00) is a field left out, as msgpackr reads it; other extension values name their field", () => {
  // Refused since extension values were ("holds a MessagePack extension value (type 0) at byte 46"): a JavaScript server
  // writing token: process.env.TOKEN, with no TOKEN set, could not register; before that refusal it registered.
  const packr = new Packr({ useRecords: false });
  const framed = (body: Buffer): Buffer => Buffer.concat([Buffer.from([body.length >>> 24, body.length >>> 16, body.length >>> 8, body.length]), body]);
  const setup = new FrameDecoder().push(framed(packr.pack({ type: 1, id: 's1', privPolyId: 'P', listenport: 7000, token: undefined })));
  assert.is(setup.error, undefined, setup.error?.message);
  assert.equal(setup.messages, [{ type: 1, id: 's1', privPolyId: 'P', listenport: 7000 }]);
  const data = new FrameDecoder().push(framed(packr.pack({ type: 0, seq: 1, srcid: 'a', privPoliId: 'P', payload: 'x', trace: undefined })));
  assert.equal(data.messages, [{ type: 0, seq: 1, srcid: 'a', privPoliId: 'P', payload: 'x' }]);
  // A required field left undefined is missing, said as such.
  const bare = new FrameDecoder().push(framed(packr.pack({ type: 1, id: 's1', privPolyId: 'P', listenport: undefined })));
  assert.is(bare.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(bare.error!.message, /listenport/);
  assert.not.match(bare.error!.message, /extension/);
  // Another extension after a key is named by it (msgpackr's Set, with moreTypes).
  const set = new FrameDecoder().push(framed(new Packr({ useRecords: false, moreTypes: true }).pack({ type: 0, seq: 1, srcid: 'a', privPoliId: 'P', payload: 'x', tags: new Set([1]) })));
  assert.match(set.error?.message ?? '', /extension value \(type 115\) in field "tags" at byte \d+: messages hold none but timestamps$/);
});

test("a body cut inside an extension's head is refused as cut, not by the next frame's bytes read as its type", () => {
  // 81 a1 61 d4: a map whose value is a fixext with neither type nor data. The extension check read
  // the byte after the body (the next frame's length, 00) as its type and refused "type 0".
  const body = Buffer.from('81a161d4', 'hex');
  const next = Buffer.from('0000000281c0', 'hex');
  const r = new FrameDecoder().push(Buffer.concat([Buffer.from([0, 0, 0, body.length]), body, next]));
  assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(r.error!.message, /^frame at byte 0 is not one MessagePack value \(.*\): 81 a1 61 d4$/);
});

test("msgpackr's native addon is in use", () => {
  assert.ok(nativeAcceleration, 'msgpackr-extract should be installed (optional dependency of msgpackr)');
});

test('docs/PROTOCOL.md has a row for every wire code and every local code, and no other; each class it says raises one exists', () => {
  const doc = readFileSync(new URL('../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const section = (from: string, to: string) => doc.slice(doc.indexOf(from), doc.indexOf(to, doc.indexOf(from)));
  const rows = (text: string) => [...text.matchAll(/^\| `([A-Z_]+)` \| ([^|]*)\|/gm)];
  const wire = rows(section('\n## Error codes', '\n### Local codes'));
  const local = rows(section('\n### Local codes', '\n### Sending a request again'));
  assert.equal(wire.map((r) => r[1]).sort(), [...ERROR_CODES].sort(), 'the wire codes of "Error codes" are ErrorCode (transport/errors.ts)');
  assert.equal(local.map((r) => r[1]).sort(), Object.values(LocalCode).sort(), 'the codes of "Local codes" are LocalCode (transport/errors.ts)');
  const sources = ['actors', 'transport', 'scenario', 'lib', 'cli'].flatMap((dir) => readdirSync(new URL(`../${dir}/`, import.meta.url)).filter((f) => f.endsWith('.ts')).map((f) => readFileSync(new URL(`../${dir}/${f}`, import.meta.url), 'utf8'))).join('\n');
  const classes = new Set(local.flatMap((r) => [...r[2]!.matchAll(/`([A-Z][A-Za-z]+)`/g)].map((m) => m[1]!)));
  assert.ok(classes.size >= 6, `the classes named: ${[...classes].join(', ')}`);
  assert.equal([...classes].filter((c) => !new RegExp(`export class ${c} extends`).test(sources)), [], 'error classes the doc names that do not exist');
});

test("a code's shape is what docs/PROTOCOL.md says: a capital letter, then up to 63 capital letters, digits or _", () => {
  const doc = readFileSync(new URL('../docs/PROTOCOL.md', import.meta.url), 'utf8').replace(/\s+/g, ' ');
  assert.ok(doc.includes('a capital letter, then up to 63 capital letters, digits or `_`'), 'the rule in "Error codes"');
  for (const code of ['RATE_LIMITED', 'A', `R${'9'.repeat(63)}`]) assert.is((toMessage({ type: 3, seq: 1, code, message: 'm' }) as { code: string }).code, 'UPSTREAM_FAILED', code);
  for (const code of ['1ABC', '_X', `R${'9'.repeat(64)}`, 'rate_limited']) {
    // It said "a code is 1 to 64 capital letters, digits or _" of '1ABC', which is that and is refused all the same.
    assert.throws(() => toMessage({ type: 3, seq: 1, code, message: 'm' }), /a code is a capital letter, then up to 63 capital letters, digits or _/, code);
  }
});

test.run();
