/**
 * The PROXY protocol header codec (transport/proxy-header.ts) on bytes, as
 * HAProxy's spec writes them: v1 text, v2 binary (TCP over IPv4 and IPv6,
 * LOCAL, other families), split across reads, garbage and oversize.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Socket } from 'node:net';
import { parseProxyHeader, PROXY_V1_MAX, PROXY_V2_SIGNATURE, ProxyHeaderReader } from '../transport/proxy-header.js';
import { recogniseForeign } from '../transport/foreign.js';
import { FrameDecoder } from '../transport/frame.js';
import { Connection } from '../transport/socket.js';
import { frame } from './helpers.js';

const codec = suite('the PROXY protocol header');

/** A v2 header: command (0 LOCAL, 1 PROXY), family byte, then the address block (and any TLVs) as given. */
function v2(cmd: number, family: number, block: number[]): Buffer {
  const fixed = Buffer.alloc(4);
  fixed[0] = 0x20 | cmd;
  fixed[1] = family;
  fixed.writeUInt16BE(block.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, fixed, Buffer.from(block)]);
}
const port = (p: number): number[] => [p >> 8, p & 0xff];
const ip6 = (groups: number[]): number[] => groups.flatMap((g) => [g >> 8, g & 0xff]);

const AFTER = frame({ type: 0, seq: 1, srcid: 'c', privPoliId: '111', payload: 'x' });

codec('v1 TCP4 and TCP6 name the client; the bytes after the CRLF are the client\'s own', () => {
  const line = Buffer.from('PROXY TCP4 203.0.113.7 10.0.0.2 51234 2100\r\n', 'latin1');
  const r = new ProxyHeaderReader().push(Buffer.concat([line, AFTER]));
  assert.ok('header' in r);
  assert.equal(r.header, { source: { address: '203.0.113.7', port: 51234 }, length: line.length });
  assert.equal(r.rest, AFTER);
  const six = parseProxyHeader(Buffer.from('PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 65535 2100\r\n', 'latin1'));
  assert.equal('header' in six && six.header.source, { address: '2001:db8::1', port: 65535 }, 'written as Node writes a socket\'s address');
  const mapped = parseProxyHeader(Buffer.from('PROXY TCP6 ::ffff:198.51.100.1 ::1 1 2\r\n', 'latin1'));
  assert.equal('header' in mapped && mapped.header.source, { address: '::ffff:198.51.100.1', port: 1 });
  const unknown = parseProxyHeader(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n', 'latin1'));
  assert.equal(unknown, { header: { length: 35 } }, 'UNKNOWN: the socket\'s address stands');
});

codec('v2 TCP over IPv4 and IPv6 name the client; TLVs after the addresses are skipped', () => {
  const four = v2(1, 0x11, [192, 0, 2, 9, 10, 0, 0, 2, ...port(40000), ...port(2100), 0x04, 0, 1, 0xaa]);
  const r = new ProxyHeaderReader().push(Buffer.concat([four, AFTER]));
  assert.ok('header' in r);
  assert.equal(r.header.source, { address: '192.0.2.9', port: 40000 });
  assert.equal(r.rest, AFTER, 'the TLV (type 4, NOOP) is the header\'s, not the client\'s');
  const six = v2(1, 0x21, [...ip6([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1]), ...ip6([0, 0, 0, 0, 0, 0, 0, 1]), ...port(443), ...port(2100)]);
  assert.equal(parseProxyHeader(six), { header: { source: { address: '2001:db8::1:0:0:1', port: 443 }, length: 52 } });
  const zeros = v2(1, 0x21, [...ip6([0, 0, 0, 0, 0, 0, 0, 0]), ...ip6([0, 0, 0, 0, 0, 0, 0, 1]), ...port(1), ...port(2)]);
  assert.equal('header' in parseProxyHeader(zeros) && (parseProxyHeader(zeros) as { header: { source: unknown } }).header.source, { address: '::', port: 1 });
});

codec('v2 LOCAL (the balancer\'s own health check) and families other than TCP leave the socket\'s address', () => {
  assert.equal(parseProxyHeader(v2(0, 0x00, [])), { header: { length: 16 } });
  assert.equal(parseProxyHeader(v2(0, 0x11, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])), { header: { length: 28 } }, 'LOCAL ignores any addresses');
  assert.equal(parseProxyHeader(v2(1, 0x12, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])), { header: { length: 28 } }, 'UDP over IPv4');
  assert.equal(parseProxyHeader(v2(1, 0x31, new Array(216).fill(0))), { header: { length: 232 } }, 'UNIX stream');
});

codec('a header split across reads, one byte at a time, is read once, with the bytes after it', () => {
  for (const whole of [Buffer.from('PROXY TCP4 198.51.100.20 10.0.0.2 60000 2100\r\n', 'latin1'), v2(1, 0x11, [198, 51, 100, 20, 10, 0, 0, 2, ...port(60000), ...port(2100)])]) {
    const reader = new ProxyHeaderReader();
    const bytes = Buffer.concat([whole, AFTER]);
    let got: ReturnType<ProxyHeaderReader['push']> = { need: true };
    let i = 0;
    while ('need' in got && i < bytes.length) got = reader.push(bytes.subarray(i, ++i));
    assert.ok('header' in got, 'read whole');
    assert.is(i, whole.length, 'on its last byte, not before');
    assert.equal(got.header.source, { address: '198.51.100.20', port: 60000 });
    assert.is(got.rest.length, 0);
    assert.is(reader.buffered, 0);
  }
});

codec('garbage is refused on its first bytes, naming what came', () => {
  const cases: Array<[Buffer, RegExp]> = [
    [AFTER, /^bad PROXY protocol header: expected "PROXY " \(v1\) or the v2 signature first, got 00 00 00 /],
    [Buffer.from('GET / HTTP/1.1\r\n'), /got 47 45 54 .*\("GET \/ HTTP\/1\.1"\)/],
    [Buffer.from('PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n'), /expected "PROXY TCP4\|TCP6 SRC DST SPORT DPORT" or "PROXY UNKNOWN", got "PROXY TCP5 1\.2\.3\.4 5\.6\.7\.8 1 2"/],
    [Buffer.from('PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n'), /are not IPv4 addresses and ports 0-65535/],
    [Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n'), /are not IPv4 addresses and ports 0-65535/],
    [Buffer.from('PROXY TCP6 1::2::3 ::1 1 2\r\n'), /are not IPv6 addresses/],
    [Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n'), /are not IPv4 addresses/],
    [v2(2, 0x11, []), /v2 command 2 \(0 LOCAL and 1 PROXY are defined\)/],
    [Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x11, 0x11, 0, 0])]), /v2 signature with version 1/],
    [v2(1, 0x21, new Array(12).fill(0)), /v2 TCP over IPv6 with 12 bytes of addresses, fewer than the 36 it takes/],
  ];
  for (const [bytes, message] of cases) {
    const r = new ProxyHeaderReader().push(bytes);
    assert.ok('error' in r, bytes.toString('latin1'));
    assert.is(r.error.code, 'BAD_REQUEST');
    assert.match(r.error.message, message);
  }
  assert.equal(parseProxyHeader(Buffer.from('PRO')), { need: true }, 'a prefix of "PROXY " waits for more');
  assert.equal(parseProxyHeader(PROXY_V2_SIGNATURE.subarray(0, 5)), { need: true }, 'a prefix of the v2 signature waits for more');
});

codec(`a v1 line without its CRLF in ${PROXY_V1_MAX} bytes is refused, and no more than that is ever held`, () => {
  const reader = new ProxyHeaderReader();
  const long = Buffer.from(`PROXY TCP4 1.2.3.4 5.6.7.8 1 2${' '.repeat(200)}`, 'latin1');
  let r: ReturnType<ProxyHeaderReader['push']> = { need: true };
  let i = 0;
  while ('need' in r) {
    assert.ok(reader.buffered < PROXY_V1_MAX, `${reader.buffered} bytes held`);
    r = reader.push(long.subarray(i, (i += 10)));
  }
  assert.ok('error' in r);
  assert.match(r.error.message, /a v1 header ends with CRLF within 107 bytes, and none came in the first 107/);
  const exact = Buffer.from(`PROXY UNKNOWN ${'ffff:'.repeat(7)}ffff ${'ffff:'.repeat(7)}ffff 65535 65535\r\n`, 'latin1');
  assert.is(exact.length, PROXY_V1_MAX, 'the spec\'s longest line');
  assert.ok('header' in parseProxyHeader(exact), 'is read');
});

codec('without the setting, a header is bad input that says what it is and what to do', () => {
  for (const bytes of [Buffer.from('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), v2(1, 0x11, [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2])]) {
    assert.is(recogniseForeign(bytes)?.kind, 'proxy-header');
    assert.match(new FrameDecoder().push(bytes).error!.message, /sent a PROXY protocol header .*list the balancer in --proxy-protocol-from/);
  }
});

codec('a connection named by a header is that client everywhere its address is read', () => {
  const conn = new Connection(new Socket(), { from: { address: '203.0.113.7', port: 51234 } });
  assert.is(conn.remoteAddress, '203.0.113.7');
  assert.is(conn.describe(), '203.0.113.7:51234');
});

codec.run();
