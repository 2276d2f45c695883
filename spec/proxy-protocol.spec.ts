/**
 * Behind an L4 balancer: Debian's HAProxy in `mode tcp` with `send-proxy`
 * (v1) or `send-proxy-v2` in front of a real proxy given
 * `--proxy-protocol-from`. The access log names each client as HAProxy saw
 * it, and the per-address limit counts clients, not the balancer. A trusted
 * source that sends no header, or too slowly, is closed with one line; an
 * untrusted one that sends a header is bad input, as any stranger's bytes.
 * HAProxy passing TLS through to a proxy with --tls-cert (and --tls-ca):
 * the header comes before the handshake, and the client it names is the one
 * answered, logged, and named when its handshake is refused.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { findHaproxy, onFreePorts } from '../bench/procs.js';
import { MsgType } from '../transport/messages.js';
import { makePki } from './certs.js';
import { collector, frame, LOCAL, tempDir } from './helpers.js';
import { allOutput, killAll, proxyProcess, revproxy, start, type Proc } from './procs.js';

/** HAProxy dials the proxy from this address (its `source`); the clients come from the others. All are loopback on Linux. */
const BALANCER = '127.0.0.5';
const CLIENTS = ['127.0.0.3', '127.0.0.4'];
const HAPROXY = findHaproxy();

type Ctx = { proxy?: Proc; port: number };
const test = suite<Ctx>('behind an L4 balancer (PROXY protocol)', { port: 0 });
test.after.each(() => killAll());

/** A real proxy trusting BALANCER (and `extra` flags), with a real server of policy 111 (and `serverFlags`) registered directly (from 127.0.0.1: untrusted, no header). */
async function proxyBehindBalancer(ctx: Ctx, extra: string[] = [], serverFlags: string[] = [], trust = ['--proxy-protocol-from', `${BALANCER},127.0.0.6`]): Promise<void> {
  const { proc, port } = await proxyProcess([...trust, '--access-log', '-', ...extra]);
  Object.assign(ctx, { proxy: proc, port });
  revproxy(['server', '-id', '100', '-pp', '111', '-listen', '0', '-revproc', String(port), ...serverFlags]);
  await proc.waitFor(/Received setup message from server id 100/);
}

/**
 * HAProxy in mode tcp on a free loopback port, sending `send` to the proxy from BALANCER, with
 * health checks as an operator would run them (a check connects, sends its header and resets);
 * resolves with its port once its first check of the proxy has passed. On another free port when
 * the one chosen was taken before it bound it (`onFreePorts`).
 */
async function haproxy(proxyPort: number, send: 'send-proxy' | 'send-proxy-v2'): Promise<number> {
  assert.ok(HAPROXY, "Debian's haproxy is not installed (apt-get install haproxy; .ci/run installs it)");
  const dir = tempDir('revproxy-pp-haproxy-');
  return onFreePorts(1, async ([front]) => {
    const file = join(dir, 'haproxy.cfg');
    writeFileSync(file, [
      'global', '  log stdout format raw local0 info',
      'defaults', '  mode tcp', '  log global', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
      'frontend fe', `  bind ${LOCAL}:${front}`, '  default_backend proxies',
      'backend proxies', '  option log-health-checks', `  source ${BALANCER}`, `  server p1 ${LOCAL}:${proxyPort} check inter 100ms ${send}`, '',
    ].join('\n'));
    const proc = start(HAPROXY, ['-f', file, '-db']);
    await proc.waitFor(/Health check for server proxies\/p1 succeeded/).catch(async (err: unknown) => {
      if (proc.child.exitCode !== null) throw new Error(`haproxy exited before its first check passed; output:\n${await allOutput(proc)}`);
      proc.kill('SIGKILL');
      throw err;
    });
    return front!;
  });
}

/** A connection from `from` to `port` (over TLS with `tls`), collecting what it is sent. */
function dialFrom(from: string, port: number, tls?: ConnectionOptions): Promise<{ socket: Socket; got: ReturnType<typeof collector> }> {
  return new Promise((resolve, reject) => {
    const ready = (): void => resolve({ socket, got: got });
    const tcp = connect({ host: LOCAL, port, localAddress: from }, tls ? undefined : ready);
    const socket = tls ? tlsConnect({ socket: tcp, host: LOCAL, ...tls }, ready) : tcp;
    const got = collector(socket);
    socket.once('error', reject);
  });
}

/** One request from client `srcid` on `c`, answered. */
async function ask(c: Awaited<ReturnType<typeof dialFrom>>, srcid: string): Promise<void> {
  c.socket.write(frame({ type: MsgType.DATA, seq: 1, srcid, privPoliId: '111', payload: `from ${srcid}` }));
  await c.got.until(() => c.got.got.length > 0 || c.got.closed, 5000);
  assert.is(c.got.got[0]?.type, MsgType.ACK, `${srcid} answered: ${JSON.stringify(c.got.got)}`);
}

for (const send of ['send-proxy', 'send-proxy-v2'] as const) {
  test(`HAProxy with ${send}: the access log names each client's address and port as HAProxy saw it`, async (ctx) => {
    await proxyBehindBalancer(ctx);
    const front = await haproxy(ctx.port, send);
    for (const [i, from] of CLIENTS.entries()) {
      const c = await dialFrom(from, front);
      await ask(c, `c${i}`);
      const addr = `${c.socket.localAddress}:${c.socket.localPort}`;
      const [line] = await ctx.proxy!.waitFor(new RegExp(`client=c${i} addr=(\\S+) policy=111 server=100 .*outcome=ok`));
      assert.ok(line.includes(` addr=${addr} `), `${line} names ${addr}, not HAProxy's ${BALANCER}`);
      c.socket.destroy();
    }
    assert.equal(ctx.proxy!.out.filter((l) => /warning|error/.test(l)), [], 'nothing to warn of: HAProxy\'s health checks (header, then reset) are taken quietly');
  });
}

for (const mutual of [false, true]) {
  test(`HAProxy passing TLS through with send-proxy-v2 to a proxy with --tls-cert${mutual ? ' and --tls-ca (mutual TLS)' : ''}: a TLS client is answered and named as HAProxy saw it, in the access log, its limit and a refused or stalled handshake`, async (ctx) => {
    const pki = makePki(['proxy', 'server', 'client']);
    const presents = (name: string): string[] => ['--tls-cert', pki.cert(name).cert, '--tls-key', pki.cert(name).key];
    // With --tls-ca the proxy asks its peers for certificates and dials its servers over TLS: the server presents one too.
    const limits = ['--max-conns-per-peer', '1', '--frame-timeout', '300'];
    await proxyBehindBalancer(ctx, [...presents('proxy'), ...(mutual ? ['--tls-ca', pki.ca] : []), ...limits], [...(mutual ? presents('server') : []), '--tls-ca', pki.ca]);
    const front = await haproxy(ctx.port, 'send-proxy-v2');
    const ca = readFileSync(pki.ca);
    const client = mutual ? { ca, cert: readFileSync(pki.cert('client').cert), key: readFileSync(pki.cert('client').key) } : { ca };
    const c = await dialFrom(CLIENTS[0]!, front, client);
    await ask(c, 'c0');
    const addr = `${c.socket.localAddress}:${c.socket.localPort}`;
    const [line] = await ctx.proxy!.waitFor(/client=c0 addr=(\S+) policy=111 server=100 .*outcome=ok/);
    assert.ok(line.includes(` addr=${addr} `), `${line} names ${addr}, not HAProxy's ${BALANCER}`);
    // The client's second connection is over its own limit, not HAProxy's.
    const second = await dialFrom(CLIENTS[0]!, front, client);
    await second.got.until(() => second.got.closed, 5000);
    await ctx.proxy!.waitFor(/Refused a connection from 127\.0\.0\.3: it has 1 open \(max_conns_per_peer\)/);
    c.socket.destroy();
    // A handshake the proxy refuses (no certificate where one is asked for; plain TCP where TLS is) names the client behind HAProxy.
    const refused = await dialFrom(CLIENTS[1]!, front, mutual ? { ca } : undefined);
    refused.socket.on('error', () => {}); // the refusal's alert
    if (!mutual) refused.socket.write(frame({ type: MsgType.DATA, seq: 1, srcid: 'plain', privPoliId: '111', payload: 'x' }));
    await refused.got.until(() => refused.got.closed, 5000);
    assert.is(refused.got.got.length, 0, 'not served');
    const why = mutual ? 'the peer presented no TLS certificate' : 'the peer speaks plain TCP to this TLS port';
    await ctx.proxy!.waitFor(new RegExp(`Refused a TLS connection from ${CLIENTS[1]!.replace(/\./g, '\\.')}: ${why}`));
    // A header and then no handshake: the handshake timeout (--frame-timeout) names the header's client.
    const stalled = await dialFrom(BALANCER, ctx.port);
    stalled.socket.write('PROXY TCP4 203.0.113.7 127.0.0.1 4000 2100\r\n');
    await stalled.got.until(() => stalled.got.closed, 5000);
    await ctx.proxy!.waitFor(/Refused a TLS connection from 203\.0\.113\.7: TLS handshake timeout/);
  });
}

test('--max-conns-per-peer counts each client behind HAProxy, not HAProxy', async (ctx) => {
  await proxyBehindBalancer(ctx, ['--max-conns-per-peer', '3']);
  const front = await haproxy(ctx.port, 'send-proxy-v2');
  // Six connections through one balancer, three from each client: all served.
  const conns = [];
  for (let i = 0; i < 6; i++) {
    const c = await dialFrom(CLIENTS[i % 2]!, front);
    await ask(c, `c${i}`);
    conns.push(c);
  }
  // A fourth from one client is over its own limit; the other client is not held back by it.
  const over = await dialFrom(CLIENTS[0]!, front);
  over.socket.write(frame({ type: MsgType.DATA, seq: 1, srcid: 'over', privPoliId: '111', payload: 'x' }));
  await over.got.until(() => over.got.closed, 5000);
  assert.is(over.got.got.length, 0, 'not served');
  await ctx.proxy!.waitFor(new RegExp(`Refused a connection from ${CLIENTS[0]!.replace(/\./g, '\\.')}: it has 3 open \\(max_conns_per_peer\\)`));
  conns.pop()!.socket.destroy(); // one of CLIENTS[1]'s
  const again = await dialFrom(CLIENTS[1]!, front);
  await ask(again, 'again');
  for (const c of [...conns, again]) c.socket.destroy();
});

test('on a dual-stack listener (::) a client is one address whether its socket (::ffff:a.b.c.d) or a header (a.b.c.d) names it: one key for --max-conns-per-peer, one name in the logs', async (ctx) => {
  // The sources are listed as IPv4, which the sockets of a listener on :: report IPv4-mapped.
  await proxyBehindBalancer(ctx, ['--host', '::', '--max-conns-per-peer', '1']);
  const direct = await dialFrom(CLIENTS[0]!, ctx.port);
  await ask(direct, 'direct');
  const [line] = await ctx.proxy!.waitFor(/client=direct addr=(\S+) policy=111/);
  assert.match(line!, new RegExp(` addr=${CLIENTS[0]!.replace(/\./g, '\\.')}:\\d+ `), 'named as IPv4, as a header names it');
  // The same client through the balancer, named by its header: over its limit of one. It was
  // counted as a second client (::ffff:127.0.0.3 and 127.0.0.3), and served.
  const through = await dialFrom(BALANCER, ctx.port);
  through.socket.write(Buffer.concat([Buffer.from(`PROXY TCP4 ${CLIENTS[0]} 127.0.0.1 40000 ${ctx.port}\r\n`), frame({ type: MsgType.DATA, seq: 1, srcid: 'through', privPoliId: '111', payload: 'x' })]));
  await through.got.until(() => through.got.closed, 5000);
  assert.is(through.got.got.length, 0, 'not served');
  await ctx.proxy!.waitFor(new RegExp(`Refused a connection from ${CLIENTS[0]!.replace(/\./g, '\\.')}: it has 1 open \\(max_conns_per_peer\\)`));
  assert.not.ok(ctx.proxy!.out.some((l) => l.includes('::ffff:')), ctx.proxy!.out.join('\n'));
  direct.socket.destroy();
});

/** A connection from `from` that begins with a v1 header naming `client`, then asks one request as `srcid`. */
async function askWithHeader(from: string, port: number, client: string, srcid: string): Promise<Awaited<ReturnType<typeof dialFrom>>> {
  const c = await dialFrom(from, port);
  c.socket.write(Buffer.concat([Buffer.from(`PROXY TCP4 ${client} 127.0.0.1 40000 ${port}\r\n`), frame({ type: MsgType.DATA, seq: 1, srcid, privPoliId: '111', payload: 'x' })]));
  await c.got.until(() => c.got.got.length > 0 || c.got.closed, 5000);
  return c;
}

test('--max-conn-rate-per-peer behind a balancer counts the client its header names, not the balancer: one client opening too fast is refused, another through the same balancer is served', async (ctx) => {
  await proxyBehindBalancer(ctx, ['--max-conn-rate-per-peer', '3']);
  // The balancer's own health checks (a header naming no client, 10 a second here) are not held to it.
  const checks = await Promise.all(Array.from({ length: 10 }, async () => {
    const c = await dialFrom(BALANCER, ctx.port);
    c.socket.write(Buffer.concat([Buffer.from('PROXY UNKNOWN\r\n'), frame({ type: MsgType.DATA, seq: 1, srcid: 'check', privPoliId: '111', payload: 'x' })]));
    await c.got.until(() => c.got.got.length > 0 || c.got.closed, 5000);
    return c;
  }));
  assert.is(checks.filter((c) => c.got.got[0]?.type === MsgType.ACK).length, 10, 'every health check served');
  for (const c of checks) c.socket.destroy();
  const burst = await Promise.all(Array.from({ length: 10 }, (_, i) => askWithHeader(BALANCER, ctx.port, CLIENTS[0]!, `b${i}`)));
  const served = burst.filter((c) => c.got.got[0]?.type === MsgType.ACK).length;
  assert.ok(served >= 3 && served <= 5, `${served} of 10 served`);
  await ctx.proxy!.waitFor(new RegExp(`Refused a connection from ${CLIENTS[0]!.replace(/\./g, '\\.')}: it opens more than 3 a second \\(max_conn_rate_per_peer\\)`));
  const other = await askWithHeader(BALANCER, ctx.port, CLIENTS[1]!, 'other');
  assert.is(other.got.got[0]?.type, MsgType.ACK, `another client through the balancer: ${JSON.stringify(other.got.got)}`);
  for (const c of [...burst, other]) c.socket.destroy();
});

test('proxy_protocol_from changed in the file and SIGHUP: a source no longer listed is not believed, one newly listed is', async (ctx) => {
  const file = join(tempDir('revproxy-pp-reload-'), 'p.yaml');
  writeFileSync(file, `proxy_protocol_from: ["${BALANCER}"]\n`);
  await proxyBehindBalancer(ctx, [], [], ['--config', file]);
  const ask = async (from: string, client: string, srcid: string, believed: boolean): Promise<void> => {
    const c = await askWithHeader(from, ctx.port, client, srcid);
    if (believed) {
      assert.is(c.got.got[0]?.type, MsgType.ACK, `${srcid} answered: ${JSON.stringify(c.got.got)}`);
      await ctx.proxy!.waitFor(new RegExp(`client=${srcid} addr=${client.replace(/\./g, '\\.')}:40000 `));
    } else {
      assert.is((c.got.got[0] as { code?: string } | undefined)?.code, 'BAD_REQUEST', `${srcid}: ${JSON.stringify(c.got.got)}`);
      await ctx.proxy!.waitFor(new RegExp(`Closed connection from ${from.replace(/\./g, '\\.')}:\\d+: the peer sent a PROXY protocol header`));
    }
    c.socket.destroy();
  };
  await ask(BALANCER, '203.0.113.7', 'before', true);
  await ask('127.0.0.6', '203.0.113.8', 'stranger', false);
  writeFileSync(file, 'proxy_protocol_from: ["127.0.0.6"]\n');
  ctx.proxy!.kill('SIGHUP');
  await ctx.proxy!.waitFor(/Reloaded .*applied proxy_protocol_from/);
  await ask('127.0.0.6', '203.0.113.9', 'listed', true);
  await ask(BALANCER, '203.0.113.10', 'dropped', false);
});

test('a trusted source that sends no header, or too slowly, is closed with one line saying what to do; the proxy serves on', async (ctx) => {
  await proxyBehindBalancer(ctx, ['--frame-timeout', '300']);
  const bare = await dialFrom(BALANCER, ctx.port);
  bare.socket.write(frame({ type: MsgType.DATA, seq: 1, srcid: 'bare', privPoliId: '111', payload: 'x' }));
  await bare.got.until(() => bare.got.closed, 5000);
  // Told why in its own wire (it began with a frame), not only closed.
  const told = bare.got.got as Array<{ type: number; code?: string; message?: string; seq?: number }>;
  assert.is(told.length, 1, JSON.stringify(told));
  assert.is(told[0]!.type, MsgType.ERROR);
  assert.is(told[0]!.code, 'BAD_REQUEST');
  assert.is(told[0]!.seq, undefined);
  assert.match(told[0]!.message!, /^this proxy takes connections from 127\.0\.0\.5 only when they begin with a PROXY protocol header: 127\.0\.0\.5 is one of its balancers \(proxy_protocol_from\)/);
  const { input: line } = await ctx.proxy!.waitFor(/Closed connection from 127\.0\.0\.5:\d+: bad PROXY protocol header: expected "PROXY " \(v1\) or the v2 signature first, got 00 00 00/);
  assert.match(line!, /must begin with a PROXY protocol header \(it is in proxy_protocol_from\): have the balancer send one \(HAProxy: send-proxy-v2/);
  const slow = await dialFrom('127.0.0.6', ctx.port);
  slow.socket.write('PROXY TCP4 203.0.113.7 ');
  await slow.got.until(() => slow.got.closed, 5000);
  await ctx.proxy!.waitFor(/Closed connection from 127\.0\.0\.6:\d+: no whole PROXY protocol header within 300 ms \(--frame-timeout; 23 bytes of one came\)/);
  const direct = await dialFrom(LOCAL, ctx.port);
  await ask(direct, 'direct');
  direct.socket.destroy();
});

test('a server on a trusted address (proxy_protocol_from 127.0.0.1) is told, in its own log, why the proxy closes its registration; so is an old JSON peer', async () => {
  // It logged only that the proxy closed the registration connection, again at each backoff; the proxy's log alone said why.
  const { proc, port } = await proxyProcess(['--proxy-protocol-from', '127.0.0.1']);
  const server = revproxy(['server', '-id', '100', '-pp', '111', '-listen', '0', '-revproc', String(port)]);
  await server.waitFor(/this proxy takes connections from 127\.0\.0\.1 only when they begin with a PROXY protocol header: 127\.0\.0\.1 is one of its balancers \(proxy_protocol_from\)\. Connect from another address; for a balancer on the proxy's own machine/);
  await proc.waitFor(/Closed connection from 127\.0\.0\.1:\d+: bad PROXY protocol header/);
  const old = connect({ host: LOCAL, port });
  const got: Buffer[] = [];
  old.on('data', (b: Buffer) => got.push(b));
  old.write('{"type": 1, "id": "OLD1", "privPolyId": "111", "listenport": 9}');
  await new Promise((r) => old.once('close', r));
  const text = Buffer.concat(got).toString();
  assert.match(text, /"code": ?"BAD_REQUEST"/, text);
  assert.match(text, /only when they begin with a PROXY protocol header/);
});

test('an untrusted address that sends a header is not believed: bad input, closed, naming what it sent', async (ctx) => {
  await proxyBehindBalancer(ctx);
  const liar = await dialFrom('127.0.0.9', ctx.port);
  liar.socket.write(Buffer.concat([Buffer.from('PROXY TCP4 203.0.113.7 10.0.0.2 1 2\r\n'), frame({ type: MsgType.DATA, seq: 1, srcid: 'liar', privPoliId: '111', payload: 'x' })]));
  await liar.got.until(() => liar.got.closed, 5000);
  const err = liar.got.got[0] as { type: number; code?: string; message?: string } | undefined;
  assert.is(err?.type, MsgType.ERROR);
  assert.is(err?.code, 'BAD_REQUEST');
  assert.match(err!.message!, /sent a PROXY protocol header .*--proxy-protocol-from/);
  const { input: line } = await ctx.proxy!.waitFor(/Closed connection from 127\.0\.0\.9:\d+: the peer sent a PROXY protocol header/);
  assert.not.ok(line!.includes('203.0.113.7'), 'the address it claimed is not taken');
});

test('the setting takes addresses and networks, from the flag and the file alike, and with TLS', async () => {
  const flag = revproxy(['proxy', '--check', '--proxy-protocol-from', '10.0.0.5,10.0.0.0/33']);
  assert.is(await flag.exited, 2);
  assert.match(flag.out.join('\n'), /--proxy-protocol-from takes addresses or networks separated by commas .*'10\.0\.0\.0\/33': the prefix length of an IPv4 network is 0 to 32/);
  const dir = tempDir('revproxy-pp-config-');
  const write = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const bad = revproxy(['proxy', '--check', '--config', write('bad.yaml', 'proxy_protocol_from: [10.0.0.5, balancer.example]\n')]);
  assert.is(await bad.exited, 1);
  assert.match(bad.out.join('\n'), /bad\.yaml:1:\d+: proxy_protocol_from\[1\]: 'balancer\.example' is not an IP address or a network/);
  const good = revproxy(['proxy', '--check', '--config', write('good.yaml', 'proxy_protocol_from: [10.0.0.5, "fd00::/8"]\n')]);
  assert.is(await good.exited, 0, good.out.join('\n'));
  const pki = makePki(['proxy']);
  const tls = revproxy(['proxy', '--check', '--config', write('tls.yaml', `proxy_protocol_from: [10.0.0.5]\ntls: {cert: ${pki.cert('proxy').cert}, key: ${pki.cert('proxy').key}}\n`)]);
  assert.is(await tls.exited, 0, tls.out.join('\n'));
});

test.run();
