/** The old JSON wire's codec and the first-byte sniffing, without sockets (issue 3). */
import { createHash } from 'node:crypto';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { encodeFrame, FrameBuffer, FrameDecoder, writeFrame } from '../transport/frame.js';
import { ErrorCode } from '../transport/errors.js';
import { LAZY_TEXT_BYTES } from '../transport/fastwire.js';
import { encodeJson, JsonDecoder, jsonWire, orderedJsonEncoder } from '../transport/json.js';
import { TEXT_BYTES, toMessage, type DataMsg, type Message } from '../transport/messages.js';
import { SniffDecoder, type Wire } from '../transport/sniff.js';

// Exactly as the old programs write them (Python json.dumps).
const data = '{"type": "0", "srcid": "1", "privPoliId": "111", "payload": "xyz1"}';
const setup = '{"type": "1", "id": "100", "privPolyId": "111", "listenport": "2105"}';
const ack = '{"type": "2", "srcid": "100", "destid": "1", "payloadsize": 40, "payload": "b0400cf1f3919fdba057dbd2acc52f148fbb43ac"}';
const tricky = '{"type": "0", "srcid": "a\\"}{", "privPoliId": "P", "payload": "} { [ \\\\\\" ] \\u00e9 é"}';
const stream = Buffer.from(`${data}${setup}\n${ack} ${tricky}`);
const expected: Message[] = [
  { type: 0, seq: 0, srcid: '1', privPoliId: '111', payload: 'xyz1' },
  { type: 1, id: '100', privPolyId: '111', listenport: 2105 },
  { type: 2, seq: 0, srcid: '100', destid: '1', payload: 'b0400cf1f3919fdba057dbd2acc52f148fbb43ac', payloadsize: 40 },
  { type: 0, seq: 0, srcid: 'a"}{', privPoliId: 'P', payload: '} { [ \\" ] é é' },
];

function decodeAll(d: JsonDecoder, parts: Buffer[]): Message[] {
  const out: Message[] = [];
  for (const p of parts) {
    const r = d.push(p);
    assert.is(r.error, undefined, r.error?.message);
    out.push(...r.messages);
  }
  return out;
}

test("the old system's packets decode with both policy spellings and string-typed values", () => {
  assert.equal(decodeAll(new JsonDecoder(), [stream]), expected);
});

test("a data packet's payloadsize that is not a size is left out, as the old system passed it, not refused; a frame's still is", () => {
  // Checked with the real reverse_proxy.py and server.py (commit 38c973a): packets holding "payloadsize": "four",
  // 1.5, -1, null, [4] or "4.0" were each answered with the payload's SHA1 (neither program reads a request's payloadsize).
  const d = new JsonDecoder();
  for (const junk of ['"four"', '1.5', '-1', 'null', '[4]', '"4.0"']) {
    const { messages, error } = d.push(Buffer.from(`{"type": "0", "srcid": "1", "privPoliId": "111", "payloadsize": ${junk}, "payload": "xyz1"}`));
    assert.is(error, undefined, junk);
    assert.equal(messages, [{ type: 0, seq: 0, srcid: '1', privPoliId: '111', payload: 'xyz1' }], junk);
  }
  // A size is kept, as before ("4" as the old client wrote it, or 4).
  assert.equal(d.push(Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "111", "payloadsize": "4", "payload": "xyz1"}')).messages, [{ type: 0, seq: 0, srcid: '1', privPoliId: '111', payload: 'xyz1', payloadsize: 4 }]);
  // An answer's is read (the proxy passes it on), and frames are the model's, checked as they were.
  assert.match(new JsonDecoder().push(Buffer.from('{"type": "2", "srcid": "100", "destid": "1", "payloadsize": "forty", "payload": "h"}')).error?.message ?? '', "field 'payloadsize' must be an integer");
  assert.throws(() => toMessage({ type: 0, seq: 1, srcid: '1', privPoliId: '111', payloadsize: 'four', payload: 'x' }), /field 'payloadsize' must be an integer/);
});

test('objects fed one byte at a time decode exactly once', () => {
  const d = new JsonDecoder();
  const bytes = [...stream].map((b) => Buffer.from([b]));
  assert.equal(decodeAll(d, bytes), expected);
  assert.is(d.buffered, 0);
});

test('an object split across three reads at every pair of cut points decodes once', () => {
  const one = Buffer.from(tricky);
  for (let a = 1; a < one.length - 1; a++) {
    for (let b = a + 1; b < one.length; b++) {
      const out = decodeAll(new JsonDecoder(), [one.subarray(0, a), one.subarray(a, b), one.subarray(b)]);
      assert.equal(out, [expected[3]], `cut at ${a},${b}`);
    }
  }
});

test('long text between quotes and escapes is skipped to them, not past them: two objects split at every cut point decode once each', () => {
  // A string's text is skipped natively to its next quote or backslash (a byte at a time, a 1 MiB payload held the
  // proxy's loop 10-18 ms): what sits past a long stretch - an escaped quote, braces, a backslash, the closing quote -
  // must still be found, wherever a read ends.
  const text = `${'x'.repeat(40)}\\"${'y'.repeat(17)}}{[${'z'.repeat(16)}\\\\${'w'.repeat(50)}\\u00e9${'v'.repeat(33)}`;
  const payload = JSON.parse(`"${text}"`) as string;
  const obj = `{"type": "0", "srcid": "${'s'.repeat(20)}", "privPoliId": "P", "payload": "${text}"}`;
  const both = Buffer.from(`${obj}  ${obj}`);
  const want = { type: 0, seq: 0, srcid: 's'.repeat(20), privPoliId: 'P', payload };
  assert.equal(decodeAll(new JsonDecoder(), [both]), [want, want]);
  for (let a = 1; a < both.length; a++) {
    assert.equal(decodeAll(new JsonDecoder(), [both.subarray(0, a), both.subarray(a)]), [want, want], `cut at ${a}`);
  }
  assert.equal(decodeAll(new JsonDecoder(), [...both].map((b) => Buffer.from([b]))), [want, want]);
});

test('a numbering decoder gives requests and answers the connection\'s own order, whatever seq they carried', () => {
  const d = new JsonDecoder({ number: true });
  const out = decodeAll(d, [Buffer.from(`${data}{"type": "0", "seq": 77, "srcid": "1", "privPoliId": "1", "payload": "b"}${setup}${ack}`)]);
  assert.equal(out.map((m) => ('seq' in m ? m.seq : '-')), [0, 1, '-', 2]);
});

test('an object over the size limit is refused before it is buffered', () => {
  const d = new JsonDecoder({ maxFrameBytes: 100 });
  const r1 = d.push(Buffer.from(`{"type": "0", "payload": "${'x'.repeat(60)}`));
  assert.is(r1.error, undefined, 'under the limit: waits for more');
  const r2 = d.push(Buffer.from('y'.repeat(60)));
  assert.is(r2.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(r2.error!.message, /over the limit of 100 bytes/);
  assert.is(d.buffered, 0, 'nothing held');
  const whole = new JsonDecoder({ maxFrameBytes: 50 }).push(Buffer.from(data));
  assert.match(whole.error!.message, /over the limit of 50 bytes/);
});

test('the default limit is the frames\' 1 MiB', () => {
  const big = `{"type": "0", "srcid": "1", "privPoliId": "1", "payload": "${'x'.repeat(1024 * 1024)}"}`;
  assert.match(new JsonDecoder().push(Buffer.from(big)).error!.message, /over the limit of 1048576/);
});

const bad: Array<[string, string, RegExp]> = [
  ['garbage between objects', `${data}xx`, /byte 67 is not the start of a JSON object/],
  ['an array at the top', '[1, 2]', /^the peer sent JSON that is not an object \(it sent "\[1, 2\]"\)/],
  ['an array after an object', `${data}[1, 2]`, /^byte 67 is not the start of a JSON object/],
  ['broken JSON inside the braces', '{"type": "0" "srcid": "1"}', /not valid JSON/],
  ['mismatched brackets', '{"a": [1}]', /not valid JSON/],
  ['deep nesting', `{"a": ${'['.repeat(40)}`, /nested deeper than 32/],
  // 1 MiB of `{}` is 350,000 objects for JSON.parse (~100 ms of the event loop); two connections sending them stalled the proxy.
  ['an object of more values than a message holds', `{"type": "0", "srcid": "1", "privPoliId": "1", "payload": "x", "j": [${'{},'.repeat(2000)}{}]}`, /JSON object holds more than 1024 values .*: value 1025 begins at byte 1589$/],
  ['numbers past the count, split over many reads', `{"j": [${'0,'.repeat(1100)}0]}`, /more than 1024 values/],
  ['an unknown type', '{"type": "9"}', /unknown message type 9/],
  ['data without a payload', '{"type": "0", "srcid": "1", "privPoliId": "1"}', /missing field 'payload'/],
  ['a setup with a port out of range', '{"type": "1", "id": "1", "privPolyId": "1", "listenport": "70000"}', /listenport/],
];
for (const [name, text, re] of bad) {
  test(`refuses ${name} with BAD_REQUEST, delivering what came before and nothing after`, () => {
    const d = new JsonDecoder();
    const r = d.push(Buffer.from(text));
    assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
    assert.match(r.error!.message, re);
    assert.is(d.push(Buffer.from(data)).messages.length, 0, 'the decoder stays failed');
  });
}

test('an object of up to 1024 values, strings full of the characters that count them included, decodes', () => {
  const fields = Array.from({ length: 500 }, (_, i) => `"f${i}": "{[,:]}"`).join(', ');
  const text = `{"type": "0", "srcid": "1", "privPoliId": "111", "payload": "x", ${fields}, "l": [1, 2]}`;
  assert.equal(decodeAll(new JsonDecoder({ number: true }), [Buffer.from(text)]), [{ type: 0, seq: 0, srcid: '1', privPoliId: '111', payload: 'x' }]);
});

test('bytes that are not UTF-8 are named where their sequence starts: a Latin-1 é (0xe9) before a quote is the é, not the quote', () => {
  const b = Buffer.concat([Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "111", "payload": "caf'), Buffer.from([0xe9]), Buffer.from('"}')]);
  const { error } = new JsonDecoder({ number: true }).push(b);
  assert.is(error?.message, `the JSON object at byte 0 is not valid UTF-8: byte 0xe9 at byte ${b.indexOf(0xe9)} (text must be UTF-8)`);
});

test('the encoder writes the old shapes byte for byte', () => {
  assert.is(encodeJson(expected[1]!).toString(), setup);
  assert.is(encodeJson(expected[2]!).toString(), ack);
  assert.is(encodeJson({ type: 0, seq: 5, srcid: '1', privPoliId: '111', payload: 'xyz1' }).toString(), data);
  // A data packet as the old client sends it, `payloadsize` or not: it wrote "payloadsize": "4", 20-odd
  // bytes the old proxy's one recv(2048) had no room for in a packet the old client fitted.
  assert.is(encodeJson({ type: 0, seq: 5, srcid: '1', privPoliId: '111', payload: 'xyz1', payloadsize: 4 }).toString(), data);
  assert.is(
    encodeJson({ type: 3, seq: 2, code: 'NO_SERVER', message: 'no server is registered for privacy policy 9' }).toString(),
    '{"type": "3", "code": "NO_SERVER", "message": "no server is registered for privacy policy 9", "payload": "NO_SERVER: no server is registered for privacy policy 9"}',
  );
});

test('encoded messages decode back to themselves (without seq)', () => {
  const d = new JsonDecoder();
  for (const m of expected) assert.equal(d.push(encodeJson(m)).messages, [m]);
});

test('the ordered encoder holds an answer that overtakes an earlier one', () => {
  const enc = orderedJsonEncoder();
  const a = (seq: number): Message => ({ type: 2, seq, srcid: 's', destid: 'c', payload: `h${seq}`, payloadsize: 2 });
  assert.is(enc(a(1)).length, 0, 'answer 1 waits for answer 0');
  assert.is(enc.held, encodeJson(a(1)).length, 'what it holds is counted (for the buffer budget)');
  const both = enc(a(0)).toString();
  assert.is(both, `${encodeJson(a(0))}${encodeJson(a(1))}`);
  assert.is(enc.held, 0);
  assert.is(enc(a(2)).toString(), encodeJson(a(2)).toString());
  assert.is(enc({ type: 3, code: 'BAD_REQUEST', message: 'bye' }).length > 0, true, 'a connection error goes out at once');
});

test('the asking side gives each answer the seq of the oldest unanswered request', () => {
  const { decoder, encoder } = jsonWire(undefined, 'asks');
  for (const seq of [5, 9]) assert.is(encoder({ type: 0, seq, srcid: '1', privPoliId: 'P', payload: 'x' }).toString().includes('seq'), false);
  const got = decoder.push(Buffer.from(`${ack}${ack}`)).messages;
  assert.equal(got.map((m) => ('seq' in m ? m.seq : '-')), [5, 9]);
});

test('the first byte picks the wire: { for JSON, anything else frames', () => {
  const picked: Wire[] = [];
  const j = new SniffDecoder({ onWire: (w, enc) => { picked.push(w); assert.ok(enc, 'JSON gets its own encoder'); } });
  assert.equal(j.push(Buffer.from(data.slice(0, 1))).messages, []);
  assert.equal(j.push(Buffer.from(data.slice(1))).messages.length, 1);
  const f = new SniffDecoder({ onWire: (w, enc) => { picked.push(w); assert.is(enc, undefined); } });
  assert.equal(f.push(encodeFrame(expected[1]!)).messages, [expected[1]]);
  assert.equal(picked, ['json', 'frames']);
  assert.is(f.wire, 'frames');
  const g = new SniffDecoder().push(Buffer.from('hello'));
  assert.is(g.error?.code, ErrorCode.BAD_REQUEST, 'garbage goes to the frame decoder and is refused there');
  assert.ok(new FrameDecoder().push(Buffer.from('{"ty')).error, 'a { can never start a valid frame under the limit');
});

test('an ERROR on the old wire fits the old client\'s one recv(2048): a longer reason is cut in both copies, never half a surrogate pair', () => {
  // Measured with the real client.py (commit 38c973a): UPSTREAM_FAILED naming three old servers
  // of 250-character ids was 2,329 bytes, and the client ended with a JSONDecodeError.
  const short = { type: 3, code: ErrorCode.NO_SERVER, message: 'no server is registered for privacy policy 111' } as const;
  assert.is(encodeJson(short).toString(), `{"type": "3", "code": "NO_SERVER", "message": "${short.message}", "payload": "NO_SERVER: ${short.message}"}`);
  for (const message of ['x'.repeat(3000), 'é'.repeat(1500), `${'y'.repeat(1003)}${'😀'.repeat(600)}`, `tried ${'a'.repeat(250)}, ${'b'.repeat(250)}, ${'c'.repeat(250)}; the last try: server ${'c'.repeat(250)} ${'z'.repeat(200)}`]) {
    const bytes = encodeJson({ type: 3, code: ErrorCode.UPSTREAM_FAILED, appcode: 'APP', message });
    assert.ok(bytes.length <= 2048 && bytes.length > 1900, `${bytes.length} bytes`);
    const e = JSON.parse(bytes.toString()) as { message: string; payload: string; appcode: string };
    assert.ok(e.message.endsWith('...') && message.startsWith(e.message.slice(0, -3)), e.message.slice(-20));
    assert.is(e.payload, `APP: ${e.message}`);
    assert.not.match(e.message, /[\uD800-\uDFFF]/u, 'no lone surrogate');
  }
});

test('a JSON string holding half a surrogate pair (an escape alone) is refused, naming the field; a whole pair passes', () => {
  const d = new JsonDecoder();
  const ok = d.push(Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "\\ud83d\\ude00"}'));
  assert.is((ok.messages[0] as { payload: string }).payload, '😀');
  const r = d.push(Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "P\\udc00", "payload": "x"}'));
  assert.is(r.error?.code, ErrorCode.BAD_REQUEST);
  assert.match(r.error!.message, /^field 'privPoliId' of the JSON object at byte \d+ holds a lone surrogate \(U\+DC00 at index 1\)/);
});

// ---- a large payload written without escapes, kept as its bytes (JsonDecoderOptions.lazyTextFrom) ----

const big = (n: number, unit = 'x'): string => unit.repeat(Math.ceil(n / Buffer.byteLength(unit))).slice(0, n);
const request = (payload: string, before = '', after = ''): string => `{"type": "0", ${before}"srcid": "c1", "privPoliId": "111", "payload": "${payload}"${after}}`;

/**
 * What `text` (fed in reads cut at `cuts`) decodes to where large text is left unmade, checked to be what a decoder that
 * makes all text gives, message for message and error for error; `unmade` is the size of each message's `TEXT_BYTES` as decoded.
 */
function bothWays(text: string | Buffer, cuts: number[] = []): { messages: Message[]; error?: string; unmade: Array<number | undefined> } {
  const bytes = Buffer.isBuffer(text) ? text : Buffer.from(text);
  const run = (d: JsonDecoder): { messages: Message[]; error?: string } => {
    const messages: Message[] = [];
    let error: string | undefined;
    for (const [from, to] of [0, ...cuts].map((c, i, all) => [c, all[i + 1] ?? bytes.length])) {
      const r = d.push(bytes.subarray(from, to));
      messages.push(...r.messages);
      error ??= r.error?.message;
    }
    return { messages, error };
  };
  const lazy = run(new JsonDecoder({ number: true, lazyTextFrom: LAZY_TEXT_BYTES }));
  const unmade = lazy.messages.map((m) => (m as DataMsg)[TEXT_BYTES]?.length);
  const made = run(new JsonDecoder({ number: true }));
  assert.equal(lazy.messages, made.messages, 'the same messages');
  assert.is(lazy.error, made.error, 'the same error');
  return { ...lazy, unmade };
}

test('a request\'s payload of lazyTextFrom bytes or more without escapes is left unmade, and is the string JSON.parse made, byte for byte, forwarded as the same frame', () => {
  for (const t of [big(LAZY_TEXT_BYTES - 1), big(LAZY_TEXT_BYTES), big(LAZY_TEXT_BYTES + 7, '😀é漢z'), big(1_000_000, 'ab\u2028\u2029\u007f c'), big(300_000, '\u0080')]) {
    const bytes = Buffer.byteLength(t);
    const r = bothWays(request(t));
    assert.equal(r.unmade, [bytes >= LAZY_TEXT_BYTES ? bytes : undefined], `${bytes} bytes`);
    const [m] = new JsonDecoder({ lazyTextFrom: LAZY_TEXT_BYTES }).push(Buffer.from(request(t))).messages as DataMsg[];
    assert.ok(encodeFrame(m!).equals(encodeFrame({ type: 0, seq: 0, srcid: 'c1', privPoliId: '111', payload: t })), 'forwarded as the frame of the string');
    assert.ok(Buffer.from(m!.payload as string).equals(Buffer.from(t)), 'byte for byte');
    assert.is(m![TEXT_BYTES], undefined, 'made once read');
  }
  // The proxy's client port: the sniffing decoder passes its lazyTextFrom to the JSON wire.
  const [m] = new SniffDecoder({ lazyTextFrom: LAZY_TEXT_BYTES }).push(Buffer.from(request(big(LAZY_TEXT_BYTES)))).messages as DataMsg[];
  assert.is(m![TEXT_BYTES]?.length, LAZY_TEXT_BYTES);
});

test('a request kept as its bytes goes to a frames server as them, never made into a string: the frame the string would be, byte for byte, and the server hashes the bytes the client sent', () => {
  const sha1 = (p: string | Uint8Array): string => createHash('sha1').update(p).digest('hex');
  for (const t of [big(1_000_000 - 100), big(LAZY_TEXT_BYTES), big(700_000, '😀é漢z'), big(300_000, '\u0080'), big(500_000, 'ab\u2028\u2029\u007f c')]) {
    const sent = Buffer.from(request(t));
    // In a socket's reads of 64 KiB, as the proxy's client port reads it.
    const d = new SniffDecoder({ lazyTextFrom: LAZY_TEXT_BYTES });
    const got: Message[] = [];
    for (let at = 0; at < sent.length; at += 65536) got.push(...d.push(sent.subarray(at, at + 65536)).messages);
    const m = got[0] as DataMsg;
    assert.is(got.length, 1);
    const unmade = (): boolean => Object.getOwnPropertyDescriptor(m, 'payload')!.get !== undefined;
    assert.ok(unmade(), 'kept as its bytes');
    // Forwarded as a link does it: the proxy's timeoutms, its own seq, into the connection's batch.
    m.timeoutms = 2500;
    const batch = new FrameBuffer();
    writeFrame(m, batch, 41);
    const frame = batch.take();
    assert.ok(unmade(), `not made into a string (${Buffer.byteLength(t)} bytes)`);
    assert.ok(frame.equals(encodeFrame({ type: 0, seq: 41, srcid: 'c1', privPoliId: '111', payload: t, timeoutms: 2500 })), 'the frame of the string');
    // The server reads it (its text left unmade too) and its handler hashes the payload: the SHA1 of the bytes sent.
    const [atServer] = new FrameDecoder({ lazyTextFrom: LAZY_TEXT_BYTES }).push(frame).messages as DataMsg[];
    assert.is(sha1(atServer!.payload), sha1(sent.subarray(sent.indexOf('"payload": "') + 12, sent.length - 2)));
    assert.is(sha1(atServer!.payload), sha1(Buffer.from(t)));
    // Where the string is needed (a log line, the old wire out), it is made: the same text.
    assert.is(encodeJson(m).toString(), request(t));
    assert.is(m.payload, t);
    assert.is(m[TEXT_BYTES], undefined);
  }
});

test('a large payload that is not UTF-8, or holds a control character, is refused in the words it was', () => {
  const text = big(LAZY_TEXT_BYTES + 40);
  const head = Buffer.from(request('').slice(0, -2));
  for (const bad of [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xe6, 0xbc]]) {
    for (const at of [0, 1, 2, 3, 1000, text.length - 1, text.length]) {
      const bytes = Buffer.concat([head, Buffer.from(text.slice(0, at)), Buffer.from(bad), Buffer.from(text.slice(at)), Buffer.from('"}')]);
      assert.match(bothWays(bytes).error ?? '', /is not valid UTF-8: byte 0x/);
    }
  }
  for (const c of ['\u0000', '\t', '\n', '\u001f']) {
    // Each of a word's four places, from each of the four alignments the object's bytes may have.
    for (const at of [0, 1, 2, 3, 4, 5, 6, 7, 4000, text.length - 3, text.length - 1, text.length]) {
      for (const shift of [0, 1, 2, 3]) {
        const r = bothWays(`${' '.repeat(shift)}${request(`${text.slice(0, at)}${c}${text.slice(at)}`)}`);
        assert.match(r.error ?? '', /is not valid JSON/, `${JSON.stringify(c)} at ${at}`);
      }
    }
  }
});

test('a payload key inside a nested object or array is another field, and "payload" as a value is a value', () => {
  const t = big(LAZY_TEXT_BYTES);
  const cases: Array<[string, string | RegExp, number | undefined]> = [
    [request('small', `"x": {"payload": "${t}"}, `), 'small', undefined],
    [request(t, `"x": {"payload": "small", "y": ["payload", {"payload": 1}], "z": {"payload": {"payload": "${t}"}}}, `), t, t.length],
    [request(t, '', `, "x": [{"payload": "small"}], "y": {"payload": null}`), t, t.length],
    [request(t, '"x": {"k\\u0065y": ["v\\"w", {"payload": "\\u00e9"}]}, '), t, t.length],
    [request(t, '"note": "payload", "privPolyId": "payload", '), t, t.length],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "x": [{"payload": "${t}"}]}`, /missing field 'payload'/, undefined],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "x": {"payload": "${t}"}}`, /missing field 'payload'/, undefined],
  ];
  for (const [text, want, unmade] of cases) {
    const r = bothWays(text);
    if (typeof want === 'string') {
      assert.equal(r.unmade, [unmade]);
      assert.is((r.messages[0] as DataMsg).payload, want);
    } else assert.match(r.error ?? '', want);
  }
});

test('a repeated payload key is the last one, as JSON.parse reads it', () => {
  const t = big(LAZY_TEXT_BYTES, 'a');
  const u = big(LAZY_TEXT_BYTES + 3, 'b');
  const cases: Array<[string, string | RegExp, number | undefined]> = [
    [request(u, `"payload": "${t}", `), u, u.length],
    [request(t, '"payload": "small", '), t, t.length],
    [request('small', `"payload": "${t}", `), 'small', undefined],
    [request(u, `"payload": "${t.slice(10)}\\"${t.slice(10)}", `), u, u.length],
    [request(t, '', ', "p\\u0061yload": "escaped key"'), 'escaped key', undefined],
    [request(t, '', ', "n": 5, "b": true, "payload": "after a number"'), 'after a number', undefined],
    [request(t, '', ', "o": {"a": [1, {}]}, "l": [], "payload": "after an object"'), 'after an object', undefined],
    [request(t, '', ', "payload": 5'), /field 'payload' must be a string, got number/, undefined],
    [request(t, '', ', "payload": null'), /field 'payload' must be a string, got null/, undefined],
    [request(t, '', ', "payload": {"payload": "x"}'), /field 'payload' must be a string, got object/, undefined],
    [request(t, '', ', "payload": ["x"]'), /field 'payload' must be a string, got an array/, undefined],
  ];
  for (const [text, want, unmade] of cases) {
    const r = bothWays(text);
    if (typeof want === 'string') {
      assert.equal(r.unmade, [unmade], want.slice(0, 20));
      assert.is((r.messages[0] as DataMsg).payload, want);
    } else assert.match(r.error ?? '', want);
  }
});

test('two objects of a large payload split in two reads at every cut point in a few places (the first\'s start, its text\'s ends and middle, the second\'s start) decode once each, unmade', () => {
  // Multi-byte characters at the text's ends: reads cut inside them too.
  const t = `é${big(LAZY_TEXT_BYTES + 1000)}©`;
  const one = request(t, '"payloadsize": "5", ', ', "after": {"payload": "n"}');
  const both = Buffer.from(`${one} ${one}`);
  const want = bothWays(one).messages[0]!;
  const from = Buffer.from(one).indexOf('é');
  const to = from + Buffer.byteLength(t);
  for (const [a, b] of [[1, 10], [from - 30, from + 20], [from + 30_000, from + 30_010], [to - 20, to + 50]]) {
    for (let cut = a!; cut < b!; cut++) {
      const r = bothWays(both, [cut]);
      assert.equal(r.unmade, [Buffer.byteLength(t), Buffer.byteLength(t)], `cut at ${cut}`);
      assert.equal(r.messages, [want, { ...want, seq: 1 }], `cut at ${cut}`);
    }
  }
});

test('a large payload with escapes is parsed as before, as are other messages with a large payload and refusals', () => {
  const t = big(LAZY_TEXT_BYTES + 10);
  for (const escaped of [`\\"${t}`, `${t}\\\\`, `${t.slice(0, 500)}\\u00e9${t}`, `${t}\\n`, '\\u00e9'.repeat(LAZY_TEXT_BYTES)]) {
    const r = bothWays(request(escaped));
    assert.equal(r.unmade, [undefined]);
    assert.is((r.messages[0] as DataMsg).payload, JSON.parse(`"${escaped}"`));
  }
  // Only a DATA's text is left unmade: an ACK without payloadsize gets its payload's size, as before.
  assert.is((bothWays(`{"type": "2", "srcid": "s", "destid": "c", "payload": "${t}"}`).messages[0] as { payloadsize: number }).payloadsize, t.length);
  assert.equal(bothWays(`{"type": "1", "id": "s", "privPolyId": "P", "listenport": "1", "payload": "${t}"}`).messages, [{ type: 1, id: 's', privPolyId: 'P', listenport: 1 }]);
  // A field the model has not is not looked at, half a surrogate pair or not.
  assert.equal(bothWays(request(t, '', ', "x": "\\ud800"')).unmade, [t.length]);
  const refused: Array<[string, RegExp]> = [
    [request(t, '"seq": "\\ud800", '), /field 'seq' must be an integer, got string/],
    [`{"type": "0", "srcid": "\\udc00", "privPoliId": "P", "payload": "${t}"}`, /field 'srcid' of the JSON object at byte 0 holds a lone surrogate/],
    [`{"type": "0", "privPoliId": "P", "payload": "${t}"}`, /missing field 'srcid'/],
    [`{"type": "9", "payload": "${t}"}`, /unknown message type 9/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "${t}" "x": 1}`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "${t}",}`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "${t}"]`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "${t}", "a": [1, }]`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P" "payload": "${t}"}`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload" "${t}"}`, /is not valid JSON/],
    [`{"type": "0", "srcid": "1", "privPoliId": "P", "payload": "${t}"}}`, /not the start of a JSON object/],
  ];
  for (const [text, re] of refused) assert.match(bothWays(text).error ?? '', re, text.slice(0, 60));
});

test.run();
