/**
 * Text on the wire is UTF-8 (issue 14, point 8): bytes that are not are
 * refused naming the first bad one, and text that merely holds U+FFFD passes.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { isUtf8 } from 'node:buffer';
import fc from 'fast-check';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { firstInvalidUtf8 } from '../transport/utf8.js';

test('firstInvalidUtf8 finds a bad byte exactly when Node says the bytes are not UTF-8', () => {
  const bytes = fc.oneof(
    fc.uint8Array({ maxLength: 40 }),
    fc.string({ unit: 'binary', maxLength: 20 }).map((s) => new Uint8Array(Buffer.from(s))),
    fc.tuple(fc.string({ unit: 'binary', maxLength: 10 }), fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([s, tail]) => new Uint8Array(Buffer.concat([Buffer.from(s), tail]))),
  );
  fc.assert(
    fc.property(bytes, (b) => {
      const at = firstInvalidUtf8(b, 0, b.length);
      assert.is(at === -1, isUtf8(b), Buffer.from(b).toString('hex'));
    }),
    { numRuns: 5000 },
  );
  // Overlongs, surrogates and code points past U+10FFFF, which a lax decoder would take.
  for (const hex of ['c080', 'e08080', 'eda080', 'f4908080', 'f8888080', 'ff', 'e282']) assert.is.not(firstInvalidUtf8(Buffer.from(hex, 'hex'), 0, hex.length / 2), -1, hex);
});

test('a frame whose text holds U+FFFD itself is taken as it is', () => {
  const msg = { type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'a \uFFFD b é' };
  const { messages, error } = new FrameDecoder().push(encodeFrame(msg));
  assert.is(error, undefined);
  assert.equal(messages, [msg]);
});

test('a bad byte in another field is named by that field', () => {
  const f = Buffer.from(encodeFrame({ type: 0, seq: 1, srcid: 'cé', privPoliId: 'P', payload: 'x' }));
  const at = f.indexOf(Buffer.from('é'));
  f[at + 1] = 0x41; // é is C3 A9: a lead byte followed by one that cannot continue it
  const { messages, error } = new FrameDecoder().push(f);
  assert.equal(messages, []);
  assert.is(error?.code, 'BAD_REQUEST');
  // The lead byte, where the ill-formed sequence starts, as Python names it ("can't decode byte 0xc3 in
  // position 21: invalid continuation byte"): it named the 0x41 after it, a letter that is fine alone
  // (a Latin-1 é before a quote was reported as the quote).
  assert.is(error?.message, `field 'srcid' is not valid UTF-8: byte 0xc3 at byte ${at - 4} of the body of the frame at byte 0 (text must be UTF-8; send bytes as MessagePack bin)`);
});

test.run();
