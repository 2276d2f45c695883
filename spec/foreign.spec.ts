/**
 * A peer that is not a revproxy peer is named from its first bytes
 * (transport/foreign.ts). The HTTP and TLS bytes are captured from real
 * programs on loopback - Node's HTTP server, OpenSSL through node:tls - not
 * written by hand; SSH, Redis and SMTP are quoted from their specifications
 * (RFC 4253 4.2, the RESP error reply, RFC 5321 4.2).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer as httpServer } from 'node:http';
import { connect as netConnect, createServer as netServer, type AddressInfo, type Server } from 'node:net';
import { readFileSync } from 'node:fs';
import { connect as tlsConnect, createServer as tlsServer } from 'node:tls';
import { recogniseForeign, recogniseTlsRefusal } from '../transport/foreign.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { JsonDecoder } from '../transport/json.js';
import { MsgType } from '../transport/messages.js';
import { makePki } from './certs.js';
import { LOCAL } from './helpers.js';

const foreign = suite('foreign peers');
const servers: Server[] = [];
foreign.after.each(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

const listen = async <S extends Server>(s: S): Promise<number> => {
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, LOCAL, r));
  return (s.address() as AddressInfo).port;
};

/** Everything a server sends back to `bytes` until it closes (or `ms` passes). */
function answerTo(port: number, bytes: Buffer, ms = 2000): Promise<Buffer> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    const s = netConnect(port, LOCAL, () => s.write(bytes));
    const done = (): void => {
      clearTimeout(t);
      s.destroy();
      resolve(Buffer.concat(got));
    };
    const t = setTimeout(done, ms);
    s.on('data', (d: Buffer) => got.push(d));
    s.on('close', done);
    s.on('error', () => {});
  });
}

/** The first bytes a real TLS client sends (its ClientHello), captured by a plain listener. */
async function clientHello(opts: { maxVersion?: 'TLSv1.2' | 'TLSv1.3' } = {}): Promise<Buffer> {
  let resolve!: (b: Buffer) => void;
  const got = new Promise<Buffer>((r) => (resolve = r));
  const port = await listen(netServer((s) => s.once('data', (d: Buffer) => {
    resolve(d);
    s.destroy();
  })));
  const c = tlsConnect({ host: LOCAL, port, rejectUnauthorized: false, ...opts });
  c.on('error', () => {});
  const hello = await got;
  c.destroy();
  return hello;
}

const frame = encodeFrame({ type: MsgType.DATA, seq: 0, srcid: '1', privPoliId: '111', payload: 'xyz1' });

foreign('an HTTP server, from what node:http really answers to a frame', async () => {
  const port = await listen(httpServer((_q, res) => res.end('hello')));
  const answer = await answerTo(port, frame);
  assert.match(answer.toString('latin1'), /^HTTP\/1\.1 400 Bad Request\r\n/, 'node:http answers 400 to bytes that are not HTTP');
  const r = recogniseForeign(answer);
  assert.is(r?.kind, 'http-server');
  assert.is(r?.message, 'the peer is an HTTP server, not a revproxy peer (it answered "HTTP/1.1 400 Bad Request"): check the host and port dialled');
  // Both decoders say it where they refuse the first bytes.
  assert.is(new FrameDecoder().push(answer).error?.message, r?.message);
  assert.is(new JsonDecoder().push(answer).error?.message, r?.message);
});

foreign('an HTTP client, from the request a real one sends', async () => {
  let resolve!: (b: Buffer) => void;
  const got = new Promise<Buffer>((r) => (resolve = r));
  const port = await listen(netServer((s) => s.once('data', (d: Buffer) => {
    resolve(d);
    s.destroy();
  })));
  fetch(`http://${LOCAL}:${port}/metrics`).catch(() => {});
  const r = recogniseForeign(await got);
  assert.is(r?.kind, 'http-client');
  assert.match(r!.message, /^the peer speaks HTTP, not revproxy frames \(it sent "GET \/metrics HTTP\/1\.1"\): .*--inspect port/);
});

foreign("TLS on a plain port: a real TLS client's ClientHello", async () => {
  for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
    const hello = await clientHello({ maxVersion });
    const r = recogniseForeign(hello);
    assert.is(r?.kind, 'tls-client', maxVersion);
    assert.match(r!.message, /the peer speaks TLS and this side does not \(it sent a TLS ClientHello\): give this side --tls-cert and --tls-key/);
    assert.is(new FrameDecoder().push(hello).error?.message, r?.message, 'the frame decoder says it');
  }
});

foreign("a TLS alert: what a real TLS server (OpenSSL, TLS 1.3 only) answers to a TLS 1.2 ClientHello", async () => {
  const pki = makePki(['srv']);
  const { cert, key } = pki.cert('srv');
  const port = await listen(tlsServer({ cert: readFileSync(cert), key: readFileSync(key), minVersion: 'TLSv1.3' }, (s) => s.end()).on('tlsClientError', () => {}));
  const answer = await answerTo(port, await clientHello({ maxVersion: 'TLSv1.2' }));
  assert.is(answer[0], 0x15, `an alert record, got ${answer.toString('hex')}`);
  const r = recogniseForeign(answer);
  assert.is(r?.kind, 'tls-alert');
  assert.match(r!.message, /the peer speaks TLS and refused these plain bytes \(it sent a TLS alert\): connect to it with TLS \(--tls-ca/);
});

foreign('plain bytes on a TLS port: what the TLS library says when a real client sends them', async () => {
  const pki = makePki(['srv']);
  const { cert, key } = pki.cert('srv');
  const codes: string[] = [];
  const port = await listen(
    tlsServer({ cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(pki.ca), requestCert: true, rejectUnauthorized: true }, (s) => s.end())
      .on('tlsClientError', (err: NodeJS.ErrnoException) => codes.push(err.code ?? '?')),
  );
  assert.is((await answerTo(port, frame)).length, 0, 'it closes without a byte: no alert to recognise on the client side');
  await answerTo(port, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
  await new Promise<void>((resolve) => {
    const c = tlsConnect({ host: LOCAL, port, ca: readFileSync(pki.ca) }, () => c.write('x'));
    c.on('error', () => {});
    c.on('close', () => resolve());
  });
  assert.equal(codes, ['ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_HTTP_REQUEST', 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE']);
  assert.equal(codes.map((c) => recogniseTlsRefusal(c)?.kind), ['plain', 'http-client', 'no-certificate']);
  assert.match(recogniseTlsRefusal(codes[0])!.message, /^the peer speaks plain TCP to this TLS port .*: have it connect with TLS \(--tls-ca\)$/);
  assert.is(recogniseTlsRefusal('ECONNRESET')?.message, 'the peer closed the connection before its TLS handshake was done', 'not Node\'s "socket hang up"');
  assert.is(recogniseTlsRefusal('ERR_SSL_SOMETHING_ELSE'), undefined, 'anything else keeps the library\'s words');
});

foreign('SSH, Redis, SMTP/FTP banners and the old JSON wire, as their specifications write them', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n', 'ssh', /an SSH server, not a revproxy peer \(it said "SSH-2.0-OpenSSH_9.2p1 Debian-2"\)/],
    ["-ERR unknown command '\\x00\\x00', with args beginning with: \r\n", 'redis', /a Redis server/],
    ['-NOAUTH Authentication required.\r\n', 'redis', /a Redis server/],
    ['220 mail.example.com ESMTP Postfix\r\n', 'banner', /a mail \(SMTP\) or FTP server/],
    ['220-FileZilla Server\r\n', 'banner', /FTP server/],
    ['{"type": "3", "code": "BAD_REQUEST", "message": "x"}', 'json', /the old JSON wire .*--wire json/],
    ['[1,2]', 'json-value', /^the peer sent JSON that is not an object \(it sent "\[1,2\]"\): a revproxy peer speaks frames, or the old JSON wire's one object \(\{\.\.\.\}\) per message$/],
  ];
  for (const [text, kind, message] of cases) {
    const r = recogniseForeign(Buffer.from(text, 'latin1'));
    assert.is(r?.kind, kind, text);
    assert.match(r!.message, message, text);
    assert.is(new FrameDecoder().push(Buffer.from(text, 'latin1')).error?.message, r!.message, `the frame decoder names it: ${text}`);
  }
});

foreign('only the first bytes of a connection, and only what is recognised', () => {
  assert.is(recogniseForeign(frame), undefined, 'a revproxy frame is nothing foreign');
  assert.is(recogniseForeign(Buffer.alloc(0)), undefined);
  assert.is(recogniseForeign(Buffer.from([0x7f, 0xff, 0xff, 0xff])), undefined);
  assert.is(recogniseForeign(Buffer.from([0x16, 0x04, 0x00])), undefined, 'not a TLS version');
  const unknown = new FrameDecoder().push(Buffer.from([0x7f, 0xff, 0xff, 0xff]));
  assert.match(unknown.error!.message, /^frame at byte 0 declares 2147483647 bytes, over the limit of 1048576$/);
  // HTTP after a good frame is corrupt input, not a foreign peer: the decoder says where.
  const later = new FrameDecoder().push(Buffer.concat([frame, Buffer.from('HTTP/1.1 400 Bad Request\r\n')]));
  assert.is(later.messages.length, 1);
  assert.match(later.error!.message, new RegExp(`^frame at byte ${frame.length} declares \\d+ bytes`));
  // A long first line is cut, and bytes that are not printable are not printed.
  const long = recogniseForeign(Buffer.from(`HTTP/1.1 200 ${'x'.repeat(100)}\u0001\r\n`, 'latin1'));
  assert.match(long!.message, /"HTTP\/1\.1 200 x{47}\.\.\."/);
  assert.match(recogniseForeign(Buffer.from('SSH-2.0-a\u0007b\r\n', 'latin1'))!.message, /"SSH-2\.0-a\?b"/);
});

foreign.run();
