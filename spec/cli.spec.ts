import { execFileSync } from 'node:child_process';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createServer as httpServer } from 'node:http';
import { createServer as netServer, type AddressInfo } from 'node:net';
import { makePki } from './certs.js';
import { killAll, revproxy, ROOT, start } from './procs.js';
import { collector, frame, rawConnect, sleep, tempDir } from './helpers.js';
import type { AckMsg } from '../transport/messages.js';
import { createActor, setup } from 'xstate';
import { normaliseArgv, OLD_FLAGS, parseIntOption, runUntilStopped, UsageError, type FlagTable } from '../cli/common.js';
import { silentLogger } from '../actors/logger.js';
import { describeListenError } from '../transport/tls.js';
import { loadPackets } from '../config/files.js';

const cli = suite('cli');
cli.after.each(killAll);

cli("the assignment's example through the CLI with the seed's single-dash flags: 1, 2, 1, 2, 1", async () => {
  const proxy = revproxy(['proxy', '-port', '0']);
  const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  const s1 = revproxy(['server', '-id', '1', '-pp', 'PP_1', '-listen', '0', '-revproc', port]);
  await s1.waitFor(/Connecting to the reverse proxy/);
  await proxy.waitFor(/Received setup message from server id 1 /);
  const s2 = revproxy(['server', '-id', '2', '-pp', 'PP_1', '-listen', '0', '-revproc', `127.0.0.1:${port}`]);
  await proxy.waitFor(/Received setup message from server id 2 /);
  const dir = tempDir('pkt-');
  for (let i = 1; i <= 5; i++) writeFileSync(join(dir, `${i}.json`), JSON.stringify({ type: '0', srcid: '7', privPoliId: 'PP_1', payload: `m${i}` }));
  const client = revproxy(['client', '-id', '7', '-revproc', port, '-pkt', dir, '--window', '1', '--json']);
  assert.is(await client.exited, 0, client.out.join('\n'));
  const report = JSON.parse(client.out.find((l) => l.startsWith('{'))!);
  assert.equal(report.results.map((r: { server: string }) => r.server), ['1', '2', '1', '2', '1']);
  assert.is(report.verified, 5);
  s1.kill();
  s2.kill();
  proxy.kill();
  assert.is(await proxy.exited, 0, 'SIGTERM stops the proxy cleanly');
});

cli("a proxy taking frames past 1 MiB, and servers told to take as much (server --max-frame): a 1.5 MB request is answered", async () => {
  const big = String(2 * 1024 * 1024);
  const proxy = revproxy(['proxy', '--port', '0', '--max-frame', big]);
  const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  revproxy(['server', '--id', '1', '--pp', 'BIG', '--revproc', port, '--max-frame', big]);
  await proxy.waitFor(/Received setup message from server id 1 /);
  const dir = tempDir('pkt-');
  const payload = 'x'.repeat(1_500_000);
  writeFileSync(join(dir, '1.json'), JSON.stringify({ type: '0', srcid: '7', privPoliId: 'BIG', payload }));
  const client = revproxy(['client', '--id', '7', '--revproc', port, '--pkt', dir, '--json', '--max-frame', big]);
  assert.is(await client.exited, 0, client.out.join('\n').slice(0, 2000));
  assert.is(JSON.parse(client.out.find((l) => l.startsWith('{'))!).verified, 1);
});

cli("the client prints the seed's lines and exits 0 when the hash is correct", async () => {
  // The seed's per-request lines are debug (issue 16): info is the life of the system.
  const proxy = revproxy(['proxy', '-port', '0', '--log-level', 'debug']);
  const port = (await proxy.waitFor(/port (\d+)/))[1]!;
  revproxy(['server', '-id', '100', '-pp', '111', '-listen', '0', '-revproc', port]);
  await proxy.waitFor(/Received setup message from server id 100 privacy policy 111 port \d+/);
  const client = revproxy(['client', '-id', '1', '-revproc', port, '-pkt', 'pktfiles/1.json', '--log-level', 'debug']);
  assert.is(await client.exited, 0);
  const text = client.out.join('\n');
  assert.match(text, /Sending message xyz1 to privacy policy 111 through reverse proxy running on port \d+/);
  assert.match(text, /Receiving a response from the server payload: b0400cf1f3919fdba057dbd2acc52f148fbb43ac/);
  assert.match(text, /Hash of payload is correct/);
  await proxy.waitFor(/Forwarding a data message to server id 100 .*payload xyz1/);
  await proxy.waitFor(/Received a data message from server id 100 payload b0400c/);
});

cli('the client exits 1 when an answer is missing, saying why', async () => {
  const proxy = revproxy(['proxy', '-port', '0']);
  const port = (await proxy.waitFor(/port (\d+)/))[1]!;
  const client = revproxy(['client', '-id', '1', '-revproc', port, '-pkt', 'pktfiles/1.json']);
  assert.is(await client.exited, 1);
  // And whether it may be sent again without running twice (RETRYABLE): the proxy sent it to no server.
  assert.match(client.out.join('\n'), /Request 0 \(policy 111\) failed: NO_SERVER \(retryable\): /);
  const json = revproxy(['client', '-id', '1', '-revproc', port, '-pkt', 'pktfiles/1.json', '--json']);
  assert.is(await json.exited, 1);
  const [r] = JSON.parse(json.out.find((l) => l.startsWith('{'))!).results;
  assert.equal([r.error, r.retryable], ['NO_SERVER', true], JSON.stringify(r));
});

cli('the demo runs the seed topology and exits 0 with a table of who answered whom', async () => {
  const demo = revproxy(['demo', '--port', '0']);
  assert.is(await demo.exited, 0, demo.out.join('\n'));
  const text = demo.out.join('\n');
  assert.match(text, /client\s+policy\s+payload\s+server\s+verified/);
  assert.match(text, /^1\s+111\s+xyz1\s+100\s+yes$/m);
  assert.match(text, /^2\s+111\s+xyz2\s+300\s+yes$/m);
  assert.match(text, /^6\s+222\s+xyz6\s+200\s+yes$/m);
  assert.match(text, /6\/6 clients verified/);
  assert.match(text, /^client 3\s+\| Hash of payload is correct$/m);
});

cli('usage errors exit 2 with a message that says what is wrong', async () => {
  const bad = revproxy(['proxy', '-port', 'abc']);
  assert.is(await bad.exited, 2);
  assert.match(bad.out.join('\n'), /port must be a number/);
  const missing = revproxy(['server', '-pp', '1']);
  assert.is(await missing.exited, 2);
  assert.match(missing.out.join('\n'), /--id/);
  const help = revproxy(['--help']);
  assert.is(await help.exited, 0);
  assert.match(help.out.join('\n'), /proxy \[options\]/);
  // --window was ignored without a word with the old format, which sends one request at a time.
  const window = revproxy(['client', '--wire', 'json', '--window', '8', '--pkt', 'pktfiles/1.json']);
  assert.is(await window.exited, 2, window.out.join('\n'));
  assert.match(window.out.join('\n'), /--window does not go with --wire json: the old format carries one request at a time on a connection, so its window is always 1\n\(add --help for usage\)/);
});

cli('a misspelt option is named, with the option meant, before a required option found missing', async () => {
  // Commander checks required options first: `client --timout 5` said only that --pkt was missing.
  const typo = revproxy(['client', '--timout', '5']);
  assert.is(await typo.exited, 2);
  assert.match(typo.out.join('\n'), /unknown option '--timout'\n\(Did you mean --timeout\?\)/);
  const missing = revproxy(['client', '--timeout', '5']);
  assert.is(await missing.exited, 2);
  assert.match(missing.out.join('\n'), /required option '--pkt <paths\.\.\.>' not specified/);
});

cli('FORCE_COLOR colours the log through a pipe, over NO_COLOR; FORCE_COLOR=0 and --no-color keep it plain', async () => {
  // Nothing listens on port 1: the client logs its failure and exits 1. The specs run it with NO_COLOR=1, stdout a pipe.
  const run = async (env: Record<string, string>, ...flags: string[]): Promise<string> => {
    const p = revproxy(['client', '--revproc', '1', '--pkt', 'pktfiles/1.json', ...flags], { env });
    assert.is(await p.exited, 1, p.out.join('\n'));
    return p.out.join('\n');
  };
  assert.not.match(await run({}), /\x1b\[/, 'a pipe is plain');
  assert.match(await run({ FORCE_COLOR: '1' }), /\x1b\[34mclient 1\x1b\[39m \| /, 'FORCE_COLOR was ignored on a pipe');
  assert.not.match(await run({ FORCE_COLOR: '0' }), /\x1b\[/);
  assert.not.match(await run({ FORCE_COLOR: '1' }, '--no-color'), /\x1b\[/);
});

cli("a number given with a unit (--timeout 5s, --max-frame 2MB) is refused saying to leave the unit out: the option's <ms> or <bytes> is its unit", async () => {
  assert.is(parseIntOption('--timeout', 1)('5000'), 5000);
  assert.throws(() => parseIntOption('--timeout', 1)('5s'), /--timeout must be a whole number of at least 1 without a unit, got '5s'/);
  assert.throws(() => parseIntOption('--max-frame', 1024)('2 MB'), /without a unit, got '2 MB'/);
  assert.throws(() => parseIntOption('--timeout', 1)('-1'), (e: unknown) => !/without a unit/.test((e as Error).message));
  const p = revproxy(['client', '--pkt', 'pktfiles/1.json', '--timeout', '5s']);
  assert.is(await p.exited, 2);
  assert.match(p.out.join('\n'), /option '--timeout <ms>' argument '5s' is invalid\. --timeout must be a whole number of at least 1 without a unit, got '5s'/);
});

cli('client --inspect: the inspector is named for the client, its "Ctrl-C exits" comes after the summary, and a Ctrl-C sent as soon as it is read exits with the run\'s status', async () => {
  // Without --id the title said "client undefined", and the async log's last lines came after the line saying to press Ctrl-C.
  const p = revproxy(['client', '--revproc', '1', '--pkt', 'pktfiles/1.json', '--inspect', '0']);
  await p.waitFor(/Ctrl-C exits/);
  const text = p.out.join('\n');
  assert.match(text, /Inspector for client 1 on http/);
  assert.match(text, /0\/1 answered, 1 failed \(1 retryable\)\nInspector still serving on http:\/\/127\.0\.0\.1:\d+\/; Ctrl-C exits\./);
  p.kill('SIGINT');
  assert.is(await p.exited, 1, 'ended by the signal: the line was printed before the handler was installed');
});

cli('a Ctrl-C sent as soon as "Ctrl-C exits" is read ends client --inspect with the run\'s status, every time', async () => {
  // 3 to 5 of 8 such clients at once died by the signal (the line was written before the handler was installed).
  const codes = await Promise.all(Array.from({ length: 6 }, async () => {
    const p = revproxy(['client', '--revproc', '1', '--pkt', 'pktfiles/1.json', '--inspect', '0']);
    await p.waitFor(/Ctrl-C exits/);
    p.kill('SIGINT');
    return p.exited;
  }));
  assert.equal(codes, [1, 1, 1, 1, 1, 1]);
});

cli('-v prints the version and the git revision it runs from, as -V and --version do (it was an unknown option, exit 2)', async () => {
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
  // Every build said 0.1.0: the builds of a rolling upgrade could not be told apart.
  const revision = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim().slice(0, 12);
  for (const flag of ['-v', '-V', '--version']) {
    const p = revproxy([flag]);
    assert.is(await p.exited, 0, `${flag}: ${p.out.join('\n')}`);
    assert.equal(p.out, [`${version} (revision ${revision})`], flag);
  }
});

cli('a second proxy on a port in use fails with a clear message', async () => {
  const first = revproxy(['proxy', '-port', '0']);
  const port = (await first.waitFor(/port (\d+)/))[1]!;
  const second = revproxy(['proxy', '-port', port]);
  assert.is(await second.exited, 1);
  assert.match(second.out.join('\n'), new RegExp(`port ${port} on 127.0.0.1 is already in use`));
});

cli('with --log-format json, a failure to start is a JSON line of the log (failed), for the proxy and the server', async () => {
  // It was a plain "revproxy: port ... is already in use" among JSON lines, which a reader of JSON lines could not parse.
  const first = revproxy(['proxy', '-port', '0']);
  const port = (await first.waitFor(/port (\d+)/))[1]!;
  for (const args of [['proxy', '--port', port], ['server', '--id', '1', '--pp', '1', '--listen', port]]) {
    const p = revproxy([...args, '--log-format', 'json']);
    assert.is(await p.exited, 1, args.join(' '));
    const lines = p.out.filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as { level: string; event: string; msg: string; actor: string });
    const failed = lines.find((l) => l.event === 'failed');
    assert.ok(failed, p.out.join('\n'));
    assert.is(failed!.level, 'error');
    assert.is(failed!.actor, args[0] === 'proxy' ? 'proxy' : 'server 1');
    assert.match(failed!.msg, `port ${port} on 127.0.0.1 is already in use`);
  }
});

cli('a listen address that cannot be used, for the proxy or its admin endpoint, says why and what to do, without an errno', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--host', 'no-such-host.invalid'], /cannot listen on no-such-host\.invalid:0: the host name does not resolve to an address: give an address of this machine \(e\.g\. 127\.0\.0\.1, or 0\.0\.0\.0 for every one\)/],
    [['--admin', 'no-such-host.invalid:0'], /the admin endpoint \(--admin\): cannot listen on no-such-host\.invalid:0: the host name does not resolve/],
    [['--admin', '192.0.2.1:0'], /the admin endpoint \(--admin\): address 192\.0\.2\.1 is not on this machine: choose a local address/],
  ];
  for (const [args, message] of cases) {
    const p = revproxy(['proxy', '-port', '0', ...args]);
    assert.is(await p.exited, 1, args.join(' '));
    const text = p.out.join('\n');
    assert.match(text, message, text);
    assert.not.match(text, /ENOTFOUND|EADDRNOTAVAIL|getaddrinfo/, text);
  }
});

cli('--host takes an IPv6 address in brackets ([::1], as a URL writes it) and refuses one with a port, saying to give the port on its own; the start line names the address', async () => {
  // '[::1]' failed "cannot listen on [[::1]]:PORT: the host name does not resolve", '127.0.0.1:80' "cannot listen on [127.0.0.1:80]:PORT".
  const exited = (p: ReturnType<typeof revproxy>): Promise<number> => {
    const t = setTimeout(() => p.kill(), 5000);
    return p.exited.finally(() => clearTimeout(t));
  };
  for (const [args, port] of [[['proxy', '-port', '0', '--host', '127.0.0.1:80'], '--port'], [['server', '--id', '1', '--pp', '1', '--host', '[::1]:80'], '--listen']] as const) {
    const p = revproxy([...args]);
    assert.is(await exited(p), 2, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), new RegExp(`--host takes an address without a port, got '${args.at(-1)!.replace(/[[\].]/g, '\\$&')}': give the port with ${port}`));
  }
  const dir = tempDir('host-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nhost: "127.0.0.1:80"\n');
  const file = revproxy(['proxy', '--check', '--config', join(dir, 'p.yaml')]);
  assert.is(await exited(file), 1, file.out.join('\n'));
  assert.match(file.out.join('\n'), /p\.yaml:2:7: host: expected an address without a port, got '127\.0\.0\.1:80': give the port with port \(--port\)/);
  const v6 = await new Promise<boolean>((resolve) => {
    const srv = netServer().once('error', () => resolve(false)).listen(0, '::1', () => srv.close(() => resolve(true)));
  });
  if (!v6) return; // no IPv6 loopback here
  const proxy = revproxy(['proxy', '-port', '0', '--host', '[::1]']);
  await proxy.waitFor(/Running the reverse proxy on port \d+ at ::1$/);
  const server = revproxy(['server', '--id', '1', '--pp', '1', '--host', '[::1]', '--revproc', '1']);
  await server.waitFor(/Listening on port \d+ at ::1$/);
});

cli('an IPv6 address given with a port but without brackets (::1:2100), or an address without a port, is refused saying how to write it: --revproc, --admin, admin.listen, --registry', async () => {
  // They said only "the reverse proxy port must be a number from 0 to 65535, got '::1:2100'",
  // "--admin takes HOST:PORT ... got '::1:9100'", "'::1:2379' in etcd://::1:2379 is not HOST:PORT".
  const bracket = (hostPort: string) => new RegExp(`an IPv6 address goes in brackets before its port: ${hostPort.replace(/[[\].]/g, '\\$&')}`);
  const usage = async (args: string[], said: RegExp, status = 2): Promise<void> => {
    const p = revproxy(args);
    assert.is(await p.exited, status, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), said, args.join(' '));
  };
  await usage(['client', '--revproc', '::1:2100', '--pkt', 'pktfiles'], bracket('[::1]:2100'));
  await usage(['server', '--id', '1', '--pp', '1', '--revproc', '2100,fd00::5:2100'], bracket('[fd00::5]:2100'));
  await usage(['load', '--revproc', '::1', '-n', '1'], /'::1' has no port: give HOST:PORT \(\[::1\]:2100\)/);
  // It said the port must be a number, got 'etcd://...'.
  await usage(['load', '--revproc', 'etcd://127.0.0.1:2379', '-n', '1'], /'etcd:\/\/127\.0\.0\.1:2379' is a registry: this command dials addresses; give PORT or HOST:PORT/);
  await usage(['client', '--revproc', 'proxy.internal', '--pkt', 'pktfiles'], /'proxy\.internal' has no port: give HOST:PORT \(proxy\.internal:2100\)/);
  await usage(['proxy', '--port', '0', '--admin', '::1:9100', '--check'], bracket('[::1]:9100'));
  await usage(['server', '--id', '1', '--pp', '1', '--registry', 'etcd://::1:2379'], bracket('[::1]:2379'));
  const dir = tempDir('bracket-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nadmin:\n  listen: "::1:9100"\n');
  await usage(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:3:11: admin\.listen: expected HOST:PORT .*, got "::1:9100": an IPv6 address goes in brackets before its port: \[::1\]:9100/, 1);
});

/**
 * Runs `revproxy ARGS` (with `env`), which must exit with `status` (2: a usage error) within 10 s having
 * said `said`; returns what it printed. One that runs on is killed, and fails.
 */
async function refused(args: string[], said: RegExp, status = 2, env: Record<string, string> = {}): Promise<string> {
  const p = revproxy(args, { env });
  const code = await Promise.race([p.exited, sleep(10_000).then(() => 'still running')]);
  if (code === 'still running') p.kill('SIGKILL');
  const what = `${Object.entries(env).map(([k, v]) => `${k}=${JSON.stringify(v)} `).join('')}${args.join(' ')}`;
  assert.is(code, status, `${what}: ${p.out.join('\n')}`);
  assert.match(p.out.join('\n'), said, what);
  return p.out.join('\n');
}

cli('secrets (--token, --admin-token, --inspect-token, --registry-password and their REVPROXY_* variables; the file\'s, the tokens file\'s), one rule on every command: an empty one is refused, not taken as none; white space at an end is refused naming where it came from and how it got there, the value never shown', async () => {
  // A blank EnvironmentFile line: the proxy said "must be at least 8 characters", a server started without a token and said nothing.
  const empty = (name: string) => new RegExp(`${name} is set but empty \\(a blank line in an EnvironmentFile .*unset the variable \\(remove the line\\) to go without one`);
  await refused(['proxy', '--check', '--port', '45170'], empty('REVPROXY_TOKEN'), 2, { REVPROXY_TOKEN: '' });
  await refused(['server', '--id', 'e1', '--pp', '1', '--revproc', '45171'], empty('REVPROXY_TOKEN'), 2, { REVPROXY_TOKEN: '' });
  await refused(['proxy', '--check', '--port', '45170', '--admin', '45172'], empty('REVPROXY_ADMIN_TOKEN'), 2, { REVPROXY_ADMIN_TOKEN: '' });
  await refused(['client', '--revproc', '45171', '--pkt', 'pktfiles'], empty('REVPROXY_INSPECT_TOKEN'), 2, { REVPROXY_INSPECT_TOKEN: '' });
  await refused(['server', '--id', 'e1', '--pp', '1', '--registry', 'etcd://127.0.0.1:45173', '--registry-user', 'u'], empty('REVPROXY_REGISTRY_PASSWORD'), 2, { REVPROXY_REGISTRY_PASSWORD: '' });
  await refused(['server', '--id', 'e1', '--pp', '1', '--revproc', '45171', '--token', ''], /--token is empty \(an unset shell variable.*leave --token out to go without one/);
  // A Kubernetes secret made with echo: the proxy took the newline as part of its token, servers with the trimmed one were refused UNAUTHORIZED.
  const newline = /REVPROXY_TOKEN ends with a newline: a secret never starts or ends with white space here .*made with echo.*printf '%s' SECRET \(or echo -n\), or strip it/;
  for (const cmd of [['proxy', '--check', '--port', '45170'], ['server', '--id', 'e1', '--pp', '1', '--revproc', '45171']]) {
    const out = await refused(cmd, newline, 2, { REVPROXY_TOKEN: 'sekrit-123456\n' });
    assert.not.ok(out.includes('sekrit'), out);
  }
  await refused(['server', '--id', 'e1', '--pp', '1', '--revproc', '45171', '--token', 'sekrit-123456 '], /--token ends with a space: .*strip it/);
  await refused(['proxy', '--check', '--port', '45170', '--admin', '45172', '--admin-token', '\tsekrit-123456'], /--admin-token starts with white space/);
  await refused(['proxy', '--check', '--port', '45170'], /REVPROXY_TOKEN ends with a carriage return \(a file saved with Windows line ends\?\)/, 2, { REVPROXY_TOKEN: 'sekrit-123456\r' });
  // In the file, and in the tokens file (a quoted or block scalar keeps the newline): at --check, with where.
  const dir = tempDir('secrets-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\ntoken: "sekrit-123456\\n"\n');
  await refused(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:2:8: token: a secret that ends with a newline: .*printf/, 1);
  writeFileSync(join(dir, 't.yaml'), '"111": |\n  sekrit-123456\n');
  await refused(['proxy', '--check', '--port', '45170', '--tokens', join(dir, 't.yaml')], /the tokens file '.*t\.yaml': a secret of policy '111' ends with a newline/, 1);
  // A good one still passes.
  await refused(['proxy', '--check', '--port', '45170'], /is valid/, 0, { REVPROXY_TOKEN: 'sekrit-123456' });
});

cli('--host (and the file\'s host) refuses what is no address to listen on: an IPv6 address with a port and no brackets (::1:2100), spaces around it, a bracket alone ([::1, ::1]), brackets around an IPv4 address, a URL', async () => {
  // '::1:45020' failed to start ("does not resolve here (ENOTFOUND)"); ' 127.0.0.1', '[::1' and '::1]' passed --check as host names with a warning.
  await refused(['proxy', '--check', '--port', '45180', '--host', '::1:45020'], /--host takes an address without a port, got '::1:45020' \(an IPv6 address goes in brackets before its port: \[::1\]:45020\): give the address alone, and the port with --port/);
  await refused(['server', '--id', '1', '--pp', '1', '--host', 'fd00::5:45080'], /got 'fd00::5:45080' \(an IPv6 address goes in brackets before its port: \[fd00::5\]:45080\): give the address alone, and the port with --listen/);
  await refused(['proxy', '--check', '--port', '45180', '--host', ' 127.0.0.1'], /--host takes an address to listen on, got ' 127\.0\.0\.1': it has spaces around it/);
  for (const h of ['[::1', '::1]', '[127.0.0.1]']) await refused(['proxy', '--check', '--port', '45180', '--host', h], new RegExp(`--host takes an address to listen on, got '${h.replace(/[[\].]/g, '\\$&')}': brackets hold an IPv6 address alone, as \\[::1\\]`));
  await refused(['proxy', '--check', '--port', '45180', '--host', 'http://0.0.0.0'], /got 'http:\/\/0\.0\.0\.0': it is a URL: give its host alone/);
  const dir = tempDir('host-forms-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nhost: "::1]"\n');
  await refused(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:2:7: host: expected an address to listen on, got '::1\]': brackets hold an IPv6 address alone/, 1);
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nhost: "::1:45020"\n');
  await refused(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:2:7: host: expected an address without a port, got '::1:45020' \(an IPv6 address goes in brackets .*\[::1\]:45020\): give the address alone, and the port with port \(--port\)/, 1);
  // '::1:2100' is itself an IPv6 address (2100 a group of it): taken, and --check says it is not this machine's, and how a port is written.
  await refused(['proxy', '--check', '--port', '45180', '--host', '::1:2100'], /warning: host ::1:2100 is not an address of this machine.*if :2100 is a port, write \[::1\]:2100/, 0);
  // Still taken: every address, a bare or bracketed IPv6 one, one that is itself an IPv6 address ending in digits.
  for (const h of ['*', '::', '[::]', '::1', '[::1]', '::ffff:127.0.0.1', 'localhost']) await refused(['proxy', '--check', '--port', '45180', '--host', h], /is valid/, 0);
});

cli("an address of numbers that is no IPv4 address as written (0127.0.0.1, 127.1) is refused, saying what the system's resolver would reach: --revproc, --host, --advertise, --registry, a config file's host", async () => {
  // Node took each for a name and the resolver (inet_aton) read it: 0127.0.0.1 dialled 87.0.0.1 (octal), 127.1 127.0.0.1.
  const refused = async (args: string[], said: RegExp, status = 2): Promise<void> => {
    const p = revproxy(args);
    assert.is(await p.exited, status, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), said, args.join(' '));
  };
  const octal = /0127\.0\.0\.1 is no IPv4 address as written: the system's resolver reads it as 87\.0\.0\.1 \(a leading 0 makes a number octal, 0x hex, and fewer than four numbers fill the last\): write 87\.0\.0\.1 if that is the address meant/;
  await refused(['server', '--id', 's1', '--pp', '1', '--revproc', '0127.0.0.1:45160'], octal);
  await refused(['client', '--revproc', '127.1:45160', '--pkt', 'pktfiles'], /127\.1 is no IPv4 address as written: the system's resolver reads it as 127\.0\.0\.1 .*: write 127\.0\.0\.1 if that is the address meant/);
  await refused(['proxy', '--check', '--host', '0127.0.0.1'], octal);
  await refused(['proxy', '--check', '--registry', 'etcd://127.0.0.1:1', '--advertise', '10.1'], /10\.1 is no IPv4 address as written: the system's resolver reads it as 10\.0\.0\.1/);
  await refused(['load', '--revproc', '10.0.0.256:45160', '-n', '1'], /10\.0\.0\.256 is no IPv4 address \(four numbers 0-255 in decimal, as 127\.0\.0\.1\) nor a host name/);
  // And etcd's addresses in a registry URL: it dialled the resolver's reading too.
  await refused(['server', '--id', 's1', '--pp', '1', '--registry', 'etcd://127.0.0.1:2379,0127.0.0.1:2379'], /'0127\.0\.0\.1:2379' in etcd:\/\/127\.0\.0\.1:2379,0127\.0\.0\.1:2379 names no address: 0127\.0\.0\.1 is no IPv4 address as written: the system's resolver reads it as 87\.0\.0\.1/);
  await refused(['proxy', '--check', '--registry', 'etcd://http://127.0.0.1:2379'], /'http:\/\/127\.0\.0\.1:2379' in etcd:\/\/http:\/\/127\.0\.0\.1:2379 is a URL: an endpoint is etcd's host and port alone, '127\.0\.0\.1:2379'/);
  const dir = tempDir('numeric-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nhost: 0127.0.0.1\n');
  await refused(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:2:7: host: .*0127\.0\.0\.1 is no IPv4 address as written: the system's resolver reads it as 87\.0\.0\.1/, 1);
  // Names with numbers in them, and IPv4 addresses as written, are as before.
  for (const fine of ['127.0.0.1', 'host-1.example', '1a.example']) await refused(['proxy', '--check', '--registry', 'etcd://127.0.0.1:1', '--advertise', fine], /the configuration is valid/, 0);
});

cli('a proxy listed twice in --revproc, however written (2100,2100; 2100,127.0.0.1:2100; [::1]:2100,[0:0:0:0:0:0:0:1]:2100), is a usage error naming it: server, client and load', async () => {
  // A server given one proxy twice registered with it twice and was refused its own id every 5 s, told to pick another.
  await refused(['server', '--id', 's1', '--pp', '1', '--revproc', '45160,45160'], /'45160,45160' lists the reverse proxy at 127\.0\.0\.1:45160 twice: list each proxy once/);
  await refused(['server', '--id', 's1', '--pp', '1', '--revproc', '45160, 127.0.0.1:45160'], /lists the reverse proxy at 127\.0\.0\.1:45160 twice \(as '45160' and '127\.0\.0\.1:45160'\): list each proxy once/);
  await refused(['client', '--revproc', '[::1]:45160,[0:0:0:0:0:0:0:1]:45160', '--pkt', 'pktfiles'], /lists the reverse proxy at \[::1\]:45160 twice \(as '\[::1\]:45160' and '\[0:0:0:0:0:0:0:1\]:45160'\)/);
  await refused(['load', '--revproc', 'LOCALHOST:45160,localhost:45160', '-n', '1'], /lists the reverse proxy at localhost:45160 twice/);
});

cli('--advertise (and registry.advertise) takes only an address peers can dial: one with a port, a URL, a wildcard, an empty one or a stray character is refused, as --check refuses a registry proxy on every address with none', async () => {
  // Each was written to etcd as given ('[::1]' as [[::1]]:PORT, ENOTFOUND at every dial) while the proxy said
  // it was advertised and /readyz 200; --advertise :: passed --check and failed the start, naming --host.
  const usage = async (args: string[], said: RegExp, status = 2): Promise<void> => {
    const p = revproxy(args);
    assert.is(await p.exited, status, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), said, args.join(' '));
  };
  const reg = ['--registry', 'etcd://127.0.0.1:1'];
  const refused = (value: string, why: string, port = '--port') => new RegExp(`--advertise takes the address peers dial to reach this machine, without a port, got '${value.replace(/[[\].*:/]/g, '\\$&')}': ${why.replace(/[()?.]/g, '\\$&')}${why.startsWith('it has a port') ? `, and give the port with ${port}` : ''}`);
  await usage(['proxy', ...reg, '--advertise', '10.0.0.1:2100', '--check'], refused('10.0.0.1:2100', 'it has a port: give the address alone'));
  await usage(['server', '--id', '1', '--pp', '1', ...reg, '--advertise', '[::1]:2100'], refused('[::1]:2100', 'it has a port: give the address alone', '--listen'));
  await usage(['proxy', ...reg, '--advertise', 'http://10.0.0.1', '--check'], refused('http://10.0.0.1', 'it is a URL: give its host alone'));
  await usage(['proxy', ...reg, '--advertise', '::', '--check'], refused('::', ':: is every address of this machine, which no peer can dial'));
  await usage(['server', '--id', '1', '--pp', '1', ...reg, '--advertise', ''], refused('', 'it is empty (an unset variable?)'));
  for (const odd of ['*', 'bad host', '[10.0.0.1]']) await usage(['proxy', ...reg, '--advertise', odd, '--check'], /--advertise takes the address peers dial .*: (it is neither an IP address nor a host name|brackets hold an IPv6 address alone)/);
  // Accepted: an IPv6 address in brackets (as --host takes it), a name with an underscore (Docker Compose's).
  for (const fine of ['[::1]', 'fd00::5', 'svc_proxy_1', 'proxy.internal']) await usage(['proxy', ...reg, '--advertise', fine, '--check'], /the configuration is valid/, 0);
  // On every address with no advertise: --check says so (the start did), naming --advertise.
  await usage(['proxy', ...reg, '--host', '0.0.0.0', '--check'], /the proxy listens on 0\.0\.0\.0, every address, and advertises itself in the registry: say which address clients should dial to reach it \(registry\.advertise, --advertise HOST\)/);
  const dir = tempDir('advertise-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\nregistry:\n  url: etcd://127.0.0.1:1\n  advertise: "10.0.0.1:2100"\n');
  await usage(['proxy', '--check', '--config', join(dir, 'p.yaml')], /p\.yaml:4:14: registry\.advertise: expected the address clients dial to reach this proxy, without a port, got '10\.0\.0\.1:2100': it has a port: give the address alone, and give the port with port \(--port\)/, 1);
  writeFileSync(join(dir, 'w.yaml'), 'host: "::"\nport: 0\nregistry:\n  url: etcd://127.0.0.1:1\n  ttl: 5\nlog: { level: warn }\n');
  await usage(['proxy', '--check', '--config', join(dir, 'w.yaml')], /w\.yaml:1:7: host: the proxy listens on ::, every address, and advertises itself in the registry/, 1);
  // A section's settings are counted each (it said 3 for this file's 5).
  writeFileSync(join(dir, 'ok.yaml'), 'host: "::"\nport: 0\nregistry:\n  url: etcd://127.0.0.1:1\n  advertise: "[::1]"\nlog: { level: warn }\n');
  await usage(['proxy', '--check', '--config', join(dir, 'ok.yaml')], /the configuration file .*ok\.yaml is valid \(5 setting\(s\)/, 0);
});

cli('an empty listen address is refused, not taken as every address (--host "$UNSET", host: "")', async () => {
  // A process that started anyway is stopped, so the spec fails instead of waiting for it.
  const exited = (p: ReturnType<typeof revproxy>): Promise<number> => {
    const t = setTimeout(() => p.kill(), 5000);
    return p.exited.finally(() => clearTimeout(t));
  };
  for (const args of [['proxy', '-port', '0', '--host', ''], ['server', '--id', '1', '--pp', '1', '--host', '']]) {
    const p = revproxy(args);
    assert.is(await exited(p), 2, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), /--host takes an address to listen on, got an empty one: give 127\.0\.0\.1 \(this machine only\), or 0\.0\.0\.0 or :: to listen on every address/);
  }
  const dir = tempDir('host-');
  writeFileSync(join(dir, 'h.yaml'), 'port: 0\nhost: ""\n');
  for (const args of [['proxy', '--check', '--config', join(dir, 'h.yaml')], ['proxy', '--config', join(dir, 'h.yaml')]]) {
    const p = revproxy(args);
    assert.is(await exited(p), 1, `${args.join(' ')}: ${p.out.join('\n')}`);
    assert.match(p.out.join('\n'), /h\.yaml:2:7: host: expected an address to listen on, got an empty string: give 127\.0\.0\.1 \(this machine only\), or 0\.0\.0\.0 or :: to listen on every address/);
  }
});

cli('REVPROXY_REGISTRY_PASSWORD in the environment does not stop a proxy that has no registry; --registry-password without --registry still does', async () => {
  const env = { REVPROXY_REGISTRY_PASSWORD: 'etcd-password' };
  const check = revproxy(['proxy', '--check'], { env });
  assert.is(await check.exited, 0, check.out.join('\n'));
  const flag = revproxy(['proxy', '--check', '--registry-password', 'etcd-password']);
  assert.is(await flag.exited, 2, flag.out.join('\n'));
  assert.match(flag.out.join('\n'), /revproxy: registry settings were given without the registry itself/);
});

cli("SIGUSR1 and SIGUSR2 (nginx's reopen, HAProxy's reload) neither open Node's debugger nor end the process: the proxy reopens its access log on SIGUSR1; otherwise a warning says what to send", async () => {
  for (const args of [['proxy', '-port', '0'], ['server', '--id', 'u1', '--pp', 'P', '--revproc', '1', '--log-level', 'warn']]) {
    const p = revproxy(args);
    await p.waitFor(args[0] === 'proxy' ? /Running the reverse proxy/ : /Not registered/);
    // What to send instead: the proxy reloads on SIGHUP; a server has nothing to reload, and drains on SIGTERM.
    const instead = args[0] === 'proxy' ? 'SIGHUP' : 'SIGTERM';
    p.kill('SIGUSR1');
    await p.waitFor(args[0] === 'proxy' ? /SIGUSR1: no access log file to reopen \(no access log\) nor an inspection log; the configuration was not read again/ : /warning: SIGUSR1 ignored: .*SIGTERM/);
    p.kill('SIGUSR2');
    await p.waitFor(new RegExp(`warning: SIGUSR2 ignored: .*${instead}`));
    assert.ok(p.child.exitCode === null && p.child.signalCode === null, `${args[0]} still runs`);
    assert.not.ok(p.out.some((l) => /Debugger listening|inspector/i.test(l)), p.out.join('\n'));
    p.kill('SIGTERM');
    assert.is(await p.exited, 0);
  }
});

cli("SIGQUIT (nginx's graceful stop, its image's STOPSIGNAL) drains the proxy and a server as SIGTERM does, instead of ending them at once", async () => {
  for (const args of [['proxy', '-port', '0'], ['server', '--id', 'q1', '--pp', 'P', '--revproc', '1']]) {
    const p = revproxy(args);
    await p.waitFor(args[0] === 'proxy' ? /Running the reverse proxy/ : /Not registered/);
    p.kill('SIGQUIT');
    // It used to end at once (exit 131, a core dump where they are on), with nothing answered and a pid file left.
    assert.is(await p.exited, 0, p.out.join('\n'));
    assert.match(p.out.join('\n'), /Draining/);
  }
});

cli('a port below the unprivileged range, as a user without privilege: the refusal names the lowest port it may take and how to let it bind the port', () => {
  // Checked on the sentence, not by running the proxy as nobody: a checkout nobody may not read (a clone in a 0700 directory) would fail that for another reason.
  const read = Number(readFileSync('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'utf8'));
  const first = read || 1024;
  const why = describeListenError(Object.assign(new Error('listen EACCES: permission denied 0.0.0.0:80'), { code: 'EACCES' }), '0.0.0.0', 80);
  // It used to say "choose a port above 1023" only, whatever the machine's threshold, as if 80 or 443 were out of reach.
  assert.match(why, new RegExp(`^no permission to listen on port 80: on this machine a port below ${first} needs privilege: choose a port of ${first} or above, or let the process bind it \\(AmbientCapabilities=CAP_NET_BIND_SERVICE in its systemd unit, or setcap cap_net_bind_service=\\+ep on the node binary\\)$`));
});

cli('a link-local IPv6 address without its interface is refused saying it needs one (it was Node\'s "listen EINVAL")', async () => {
  const p = revproxy(['proxy', '--port', '0', '--host', 'fe80::1']);
  assert.is(await p.exited, 1);
  assert.match(p.out.join('\n'), /cannot listen on \[fe80::1\]:0: fe80::1 is a link-local IPv6 address, which needs its interface: give it as fe80::1%eth0/);
});

cli('SIGHUP does not end a server (a daemon\'s SIGHUP means reload): a warning says it has nothing to reload, and it goes on serving until SIGTERM drains it', async () => {
  const p = revproxy(['server', '--id', 'h1', '--pp', 'P', '--revproc', '1']);
  const port = Number((await p.waitFor(/Listening on port (\d+)/))[1]);
  p.kill('SIGHUP');
  await p.waitFor(/warning: SIGHUP ignored: a server has nothing to reload/);
  // SIGUSR1 (nginx's reopen-the-logs) is answered in its own terms, not with a sentence about SIGHUP.
  p.kill('SIGUSR1');
  const usr1 = (await p.waitFor(/warning: SIGUSR1 ignored: .*/))[0];
  assert.not.match(usr1, /SIGHUP/, usr1);
  assert.match(usr1, /nothing to reload or reopen/);
  const sock = await rawConnect(port);
  const got = collector(sock);
  sock.write(frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'xyz1' }));
  await got.until(() => got.got.length === 1);
  sock.destroy();
  assert.is((got.got[0] as AckMsg).payload, 'b0400cf1f3919fdba057dbd2acc52f148fbb43ac', 'still answering');
  assert.ok(p.child.exitCode === null && p.child.signalCode === null, 'still running');
  p.kill('SIGTERM');
  assert.is(await p.exited, 0);
  assert.ok(p.out.some((l) => /Server h1 stopped after answering 1 request/.test(l)), p.out.join('\n'));
});

cli('proxy flags that do not fit together are a usage error (exit 2), as for every command; the same in a config file is the file\'s problem (exit 1)', async () => {
  const cases: Array<[string[], RegExp]> = [
    [['--ready-policies', '111'], /ready policies were given without the admin endpoint .*add --admin HOST:PORT/],
    [['--advertise', '10.0.0.5'], /registry settings were given without the registry itself: add --registry etcd:\/\/HOST:PORT/],
    // It was accepted, and the token protected nothing: no endpoint was served.
    [['--admin-token', 'secretsecret'], /an admin token was given without the admin endpoint it protects \(\/metrics\): add --admin HOST:PORT/],
  ];
  for (const [flags, said] of cases) {
    for (const run of [['--check'], []]) {
      const p = revproxy(['proxy', '-port', '0', ...run, ...flags]);
      // It exited 1, as for a port in use or a bad file, where README promises 2 for options that do not fit together.
      assert.is(await p.exited, 2, p.out.join('\n'));
      assert.match(p.out.join('\n'), said);
      assert.match(p.out.join('\n'), /\(add --help for usage\)/);
    }
  }
  const file = join(tempDir('clash-'), 'p.yaml');
  writeFileSync(file, 'port: 0\nadmin:\n  ready_policies: ["111"]\n');
  const fromFile = revproxy(['proxy', '--check', '--config', file]);
  assert.is(await fromFile.exited, 1, fromFile.out.join('\n'));
  assert.match(fromFile.out.join('\n'), /p\.yaml:3:19: admin\.ready_policies: ready policies were given without the admin endpoint/);
  writeFileSync(file, 'port: 0\nadmin:\n  token: secretsecret\n');
  for (const run of [['--check'], []]) {
    const token = revproxy(['proxy', ...run, '--config', file]);
    assert.is(await token.exited, 1, token.out.join('\n'));
    assert.match(token.out.join('\n'), /p\.yaml:3:10: admin\.token: an admin token was given without the admin endpoint it protects/);
  }
  // A flag's setting that clashes with the file's section: named by the flag, at the section's line (it was "p.yaml: admin.ready_policies", no line, as if the file had set it).
  const mixed = revproxy(['proxy', '--check', '--config', file, '--ready-policies', '111']);
  assert.is(await mixed.exited, 1, mixed.out.join('\n'));
  assert.match(mixed.out.join('\n'), /p\.yaml:3:3: admin\.ready_policies \(--ready-policies\): ready policies were given without the admin endpoint/);
  const withAdmin = revproxy(['proxy', '--check', '--config', file, '--admin', '0']);
  assert.is(await withAdmin.exited, 0, withAdmin.out.join('\n'));
  // REVPROXY_ADMIN_TOKEN is ambient, as REVPROXY_TOKEN is: a proxy without the endpoint ignores it.
  const ambient = revproxy(['proxy', '--check'], { env: { REVPROXY_ADMIN_TOKEN: 'secretsecret' } });
  assert.is(await ambient.exited, 0, ambient.out.join('\n'));
});

cli('proxy --check warns, as a start does, of a max_connections the open-files limit leaves no room for, and the config is still valid (exit 0)', async () => {
  // It said only that the config was valid; the start that followed warned (security.spec.ts).
  const dir = tempDir('check-files-');
  writeFileSync(join(dir, 'p.yaml'), 'max_connections: 1000\n');
  const p = revproxy(['proxy', '--check', '--config', join(dir, 'p.yaml')], { fileLimit: 160 });
  assert.is(await p.exited, 0, p.out.join('\n'));
  const text = p.out.join('\n');
  assert.match(text, /warning: This process may open 160 files \(ulimit -n; its hard limit 160\), room for 96 connections .*fewer than max_connections \(1000\).*raise the limit where the process is started to 1143/);
  assert.match(text, /p\.yaml is valid/);
  for (const quiet of [['--max-connections', '96'], []]) {
    const q = revproxy(['proxy', '--check', ...quiet], { fileLimit: 160 });
    assert.is(await q.exited, 0, q.out.join('\n'));
    assert.not.match(q.out.join('\n'), /ulimit/, 'room enough, or the default (lowered quietly)');
  }
});

cli('a max_connections set is the operator\'s even at the number a default would take: proxy --check neither says the heap lowered it nor keeps quiet of an open-files limit too low for it', async () => {
  // Both compared numbers to tell a setting from the default: set to the heap's number it drew
  // 'the process keeps at most N ... max_connections sets another', set to 20000 no file_limit line.
  const heap = { NODE_OPTIONS: '--max-old-space-size=16' };
  const lowered = revproxy(['proxy', '--check'], { env: heap });
  assert.is(await lowered.exited, 0, lowered.out.join('\n'));
  const derived = /keeps at most (\d+) connections open at once, not 20000/.exec(lowered.out.join('\n'))?.[1];
  assert.ok(derived, lowered.out.join('\n'));
  const same = revproxy(['proxy', '--check', '--max-connections', derived], { env: heap });
  assert.is(await same.exited, 0, same.out.join('\n'));
  assert.not.match(same.out.join('\n'), /keeps at most/);
  const files = revproxy(['proxy', '--check', '--max-connections', '20000'], { fileLimit: 160 });
  assert.is(await files.exited, 0, files.out.join('\n'));
  assert.match(files.out.join('\n'), /warning: This process may open 160 files .*room for 96 connections .*fewer than max_connections \(20000\)/);
});

cli('a log file given by a flag beside --config is named by its flag, not blamed on the file', async () => {
  const dir = tempDir('flag-file-');
  writeFileSync(join(dir, 'p.yaml'), 'port: 0\n');
  for (const [flag, run] of [['--access-log', ['--check']], ['--access-log', []], ['--inspect-log', ['--check']]] as const) {
    const p = revproxy(['proxy', ...run, '--config', join(dir, 'p.yaml'), flag, dir]);
    assert.is(await p.exited, 1, p.out.join('\n'));
    const text = p.out.join('\n');
    assert.match(text, new RegExp(`cannot open the ${flag} file '${dir}' for writing: it is a folder`), text);
    assert.not.match(text, /p\.yaml/, text);
  }
});

const table: FlagTable = {
  takesValue: (f) => ['--token', '--pkt', '--port', '-p', '--id', '--revproc'].includes(f),
  known: (f) => ['--token', '--pkt', '--port', '--window', '--id', '--revproc'].includes(f),
};

cli('a proxy or server whose actor stops on an error thrown inside it fails the command with that error, instead of ending as if stopped', async () => {
  // The proxy's machine, say, throwing in an action (a bug): XState stops the actor with status 'error'.
  const machine = setup({ actions: { crash: () => { throw new Error('Maximum call stack size exceeded'); } } }).createMachine({ on: { GO: { actions: 'crash' } } });
  const actor = createActor(machine).start();
  const running = runUntilStopped(actor, async () => {}, silentLogger);
  actor.send({ type: 'GO' });
  const err = await running.then(() => undefined, (e: unknown) => e);
  // It used to resolve: the command exited 0 - or, since an errored actor's listeners stay open, hung silently with its port open.
  assert.instance(err, Error);
  assert.match((err as Error).message, /Maximum call stack/);
});

cli("one dash maps only the old system's six flags, never a value", () => {
  assert.equal(OLD_FLAGS, ['port', 'id', 'pp', 'listen', 'revproc', 'pkt'], "the seed's README names these six");
  assert.equal(
    normaliseArgv(['server', '-id', '1', '-pp', '111', '-listen', '0', '-revproc=2100', '-pkt', 'a.json', '-port', '2100'], table),
    ['server', '--id', '1', '--pp', '111', '--listen', '0', '--revproc=2100', '--pkt', 'a.json', '--port', '2100'],
  );
  assert.equal(normaliseArgv(['proxy', '--token', '-abcdefghij'], table), ['proxy', '--token', '-abcdefghij']);
  assert.equal(normaliseArgv(['proxy', '--token', '-port'], table), ['proxy', '--token', '-port'], 'a value that spells an old flag is still a value');
  assert.equal(normaliseArgv(['proxy', '-p', '-id'], table), ['proxy', '-p', '-id'], 'after a short option that takes a value too');
  assert.equal(normaliseArgv(['proxy', '--token=-abcdefghij', '-port', '1'], table), ['proxy', '--token=-abcdefghij', '--port', '1']);
  assert.equal(normaliseArgv(['client', '-h', '-5', '-x'], table), ['client', '-h', '-5', '-x'], 'short flags, numbers, unknown words: untouched');
  assert.equal(normaliseArgv(['scenario', '--', '-port'], table), ['scenario', '--', '-port'], 'nothing after --');
  assert.throws(() => normaliseArgv(['client', '-window', '1'], table), (e: unknown) => e instanceof UsageError && /'-window'.*write --window/.test(e.message));
  // A misspelt old flag: `-prot 2100` was -p with the value 'rot' ("argument 'rot' is invalid"), `-revprox` had no suggestion.
  assert.throws(() => normaliseArgv(['proxy', '-prot', '2100'], table), (e: unknown) => e instanceof UsageError && e.message === "unknown option '-prot' (did you mean -port?)");
  assert.throws(() => normaliseArgv(['client', '-revprox', '2100'], table), (e: unknown) => e instanceof UsageError && /did you mean -revproc\?/.test(e.message));
  assert.equal(normaliseArgv(['proxy', '-xyzzy'], table), ['proxy', '-xyzzy'], 'a word like no flag is left to commander');
  assert.equal(normaliseArgv(['server', '--token', '-prot'], table), ['server', '--token', '-prot'], 'a value is never a typo');
});

cli('a secret that starts with a dash is kept, on the command line and in REVPROXY_TOKEN', async () => {
  const secret = '-abcdefghij';
  const proxy = revproxy(['proxy', '-port', '0', '--token', secret]);
  const port = (await proxy.waitFor(/port (\d+)/))[1]!;
  revproxy(['server', '-id', '1', '-pp', '111', '-revproc', port], { env: { REVPROXY_TOKEN: secret } });
  await proxy.waitFor(/Received setup message from server id 1 /);
  revproxy(['server', '-id', '2', '-pp', '111', '-revproc', port, '--token', secret]);
  await proxy.waitFor(/Received setup message from server id 2 /);
  // The secret as the old mapping rewrote it is refused: the check above can fail.
  revproxy(['server', '-id', '3', '-pp', '111', '-revproc', port, '--token', `-${secret}`]);
  await proxy.waitFor(/Refused setup .* server id 3 .*/);
  const client = revproxy(['client', '-id', '1', '-revproc', port, '-pkt', 'pktfiles/1.json']);
  assert.is(await client.exited, 0, client.out.join('\n'));
});

cli('a flag of this project written with one dash is refused, naming the right spelling', async () => {
  const bad = revproxy(['client', '-window', '1', '-pkt', 'pktfiles/1.json']);
  assert.is(await bad.exited, 2);
  assert.match(bad.out.join('\n'), /unknown option '-window': one dash is for the old system's flags only .*; write --window/);
});

cli('--help marks the options a command cannot run without', async () => {
  const flat = async (args: string[]): Promise<string> => {
    const p = revproxy(args);
    assert.is(await p.exited, 0);
    return p.out.join('\n').replace(/\s+/g, ' ');
  };
  const server = await flat(['server', '--help']);
  assert.match(server, /Usage: revproxy server --id <id> --pp <policy> \[options\]/);
  assert.match(server, /--id <id> this server's id \(required\)/);
  assert.match(server, /--pp <policy> the privacy policy it serves \(also --policy\) \(required\)/);
  assert.not.match(server, /--listen <port>[^-]*\(required\)/, 'an option with a default is not marked');
  const client = await flat(['client', '--help']);
  assert.match(client, /Usage: revproxy client --pkt <paths\.\.\.> \[options\]/);
  assert.match(client, /--pkt <paths\.\.\.> packet files \(JSON\), or folders of them \(required\)/);
  assert.not.match(client, /--id <id>[^-]*\(required\)/);
  assert.not.match(await flat(['proxy', '--help']), /\(required\)/, 'every proxy option has a default');
});

cli("--help's default --host is the address a proxy and a server started without --host listen on", async () => {
  for (const [command, args] of [['proxy', ['--port', '0']], ['server', ['--id', '1', '--pp', 'P', '--listen', '0', '--revproc', '1']]] as const) {
    const help = revproxy([command, '--help']);
    assert.is(await help.exited, 0);
    const said = /--host <address>\s+address to listen on \(default: ([^)]+)\)/.exec(help.out.join('\n'))?.[1];
    const started = revproxy([command, ...args, '--log-format', 'json']);
    const listening = JSON.parse((await started.waitFor(/^\{.*"event":"listening".*$/))[0]) as { host?: string };
    started.kill();
    assert.is(said, listening.host, `${command} --help says it listens on ${said}; it listens on ${listening.host}`);
  }
});

cli('server: --pp is required, and --policy gives it', async () => {
  const missing = revproxy(['server', '-id', '1']);
  assert.is(await missing.exited, 2);
  assert.match(missing.out.join('\n'), /required option '--pp <policy>' not specified/);
  const proxy = revproxy(['proxy', '-port', '0']);
  const port = (await proxy.waitFor(/port (\d+)/))[1]!;
  revproxy(['server', '--id', '1', '--policy', '111', '--revproc', port]);
  await proxy.waitFor(/Received setup message from server id 1 privacy policy 111 /);
});

cli('a packet file saved with a UTF-8 byte order mark (as Windows editors save it) is read as without it', () => {
  const file = join(tempDir('bom-'), 'bom.json');
  writeFileSync(file, Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('{"type": "0", "srcid": "1", "privPoliId": "111", "payload": "xyz1"}')]));
  const [p] = loadPackets([file], 'c');
  assert.equal([p!.srcid, p!.privPoliId, p!.payload], ['1', '111', 'xyz1']);
});

cli('a file that cannot be used fails the start with exit 1, naming the file and what to do, without the usage hint', async () => {
  const dir = tempDir('files-');
  const write = (name: string, text: string): string => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const cases: Array<[string[], RegExp]> = [
    [['client', '-pkt', 'no/such.json'], /cannot read the packet file 'no\/such.json': it does not exist; --pkt takes packet files \(JSON, like pktfiles\/1.json\) or folders of them/],
    [['client', '-pkt', tempDir('empty-')], /the folder '.*' holds no .json packet files; --pkt takes/],
    [['client', '-pkt', write('bad.json', '{"type": "0",')], /the packet file '.*bad.json' is not valid JSON \(.*\); a packet file holds one data packet, e.g. \{"type": "0"/],
    [['client', '-pkt', write('ack.json', '{"type": "2", "srcid": "1", "destid": "2", "payload": "x"}')], /the packet file '.*ack.json' is not a data packet|has type 2; a client sends data packets/],
    [['demo', '--pkt', join(dir, 'none')], /cannot read the packet file '.*none\/1.json': it does not exist; demo --pkt takes a folder holding 1.json to 6.json/],
    [['proxy', '--tokens', 'no/tokens.yaml'], /cannot read the tokens file 'no\/tokens.yaml': it does not exist; --tokens takes a YAML file that maps each privacy policy to its secret/],
    [['proxy', '--tokens', write('t.yaml', 'a: [\n')], /the tokens file '.*t.yaml' is not valid YAML \(.*line 2, column 1\); --tokens takes/],
    [['proxy', '--tls-cert', 'no/cert.pem', '--tls-key', 'no/key.pem'], /cannot read the --tls-cert file 'no\/cert.pem': it does not exist; --tls-cert takes a PEM certificate/],
    [['proxy', '--tls-ca', dir], /cannot read the --tls-ca file '.*': it is a folder; --tls-ca takes the PEM certificate of the CA/],
    [['proxy', '--tls-cert', 'package.json', '--tls-key', 'package.json'], /the --tls-cert file 'package.json' holds no PEM certificate/],
    [['inspect', 'no/run.ndjson'], /cannot read the inspection log 'no\/run.ndjson': it does not exist; write one with --inspect-log FILE/],
    // It said '(0 unreadable lines)' of an empty log.
    [['inspect', write('empty.ndjson', '')], /'.*empty.ndjson' holds no inspection records \(it is empty\); give a log written with --inspect-log FILE/],
    [['inspect', write('junk.ndjson', 'x\n[]\n')], /'.*junk.ndjson' holds no inspection records \(2 unreadable line\(s\)\)/],
  ];
  for (const [args, message] of cases) {
    const p = revproxy(args);
    const code = await p.exited;
    const text = p.out.join('\n');
    assert.is(code, 1, `${args.join(' ')}: ${text}`);
    assert.match(text, message, args.join(' '));
    assert.not.match(text, /ENOENT|add --help for usage/, `${args.join(' ')}: no errno and no usage hint`);
    assert.is(p.out.filter((l) => l.startsWith('revproxy:')).length, 1, `${args.join(' ')}: one line`);
  }
  const usage = revproxy(['proxy', '--tls-cert', 'some.pem']);
  assert.is(await usage.exited, 2, 'options that do not fit together are a usage error');
  assert.match(usage.out.join('\n'), /--tls-cert and --tls-key go together[\s\S]*\(add --help for usage\)/);
});

cli('TLS files with the wrong contents are refused by --check and at start, naming the file and what it should hold', async () => {
  const pki = makePki(['proxy', 'other']);
  const expired = makePki(['proxy'], 'revproxy old CA', { made: '-3d' });
  const { cert, key } = pki.cert('proxy');
  const notPem = join(tempDir('tls-'), 'notes.txt');
  writeFileSync(notPem, 'not a certificate\n');
  const der = join(dirname(notPem), 'ca.der');
  writeFileSync(der, new X509Certificate(readFileSync(pki.ca)).raw);
  const cases: Array<[string[], RegExp]> = [
    // A CA file without a certificate made a CA store with nothing in it: every peer's certificate refused, while --check said valid.
    [['--tls-cert', cert, '--tls-key', key, '--tls-ca', notPem], /the --tls-ca file '.*notes\.txt' holds no PEM certificate.*: give the certificate of the CA/],
    [['--tls-cert', cert, '--tls-key', key, '--tls-ca', key], /the --tls-ca file '.*proxy\.key' holds no PEM certificate/],
    [['--tls-cert', cert, '--tls-key', key, '--tls-ca', der], /the --tls-ca file '.*ca\.der' holds no PEM certificate/],
    [['--tls-cert', key, '--tls-key', key], /the --tls-cert file '.*proxy\.key' holds no PEM certificate/],
    [['--tls-cert', cert, '--tls-key', cert], /the --tls-key file '.*proxy\.pem' is not a PEM private key/],
    [['--tls-cert', cert, '--tls-key', pki.cert('other').key], /the --tls-key file '.*other\.key' is not the private key of the --tls-cert file '.*proxy\.pem'/],
    // Expired: every peer would refuse the certificate, or every peer's certificate.
    [['--tls-cert', expired.cert('proxy').cert, '--tls-key', expired.cert('proxy').key], /the --tls-cert file '.*proxy\.pem' holds a certificate that expired on /],
    [['--tls-cert', cert, '--tls-key', key, '--tls-ca', expired.ca], /every certificate in the --tls-ca file '.*ca\.pem' has expired \(the last on .*\): no peer's certificate could be verified/],
  ];
  for (const [args, message] of cases) {
    for (const run of [['proxy', '--check', ...args], ['proxy', '-port', '0', ...args]]) {
      const p = revproxy(run);
      const code = await p.exited;
      assert.is(code, 1, `${run.join(' ')}: ${p.out.join('\n')}`);
      assert.match(p.out.join('\n'), message, run.join(' '));
    }
  }
  const good = revproxy(['proxy', '--check', '--tls-cert', cert, '--tls-key', key, '--tls-ca', pki.ca]);
  assert.is(await good.exited, 0, good.out.join('\n'));
});

cli('a client or server pointed at an HTTP server says so, instead of a frame length', async () => {
  const web = httpServer((_q, res) => res.end('hello'));
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  try {
    const port = String((web.address() as AddressInfo).port);
    const said = /the peer is an HTTP server, not a revproxy peer \(it answered "HTTP\/1\.1 400 Bad Request"\): check the host and port dialled/;
    const client = revproxy(['client', '-revproc', port, '-pkt', 'pktfiles/1.json']);
    assert.is(await client.exited, 1);
    const text = client.out.join('\n');
    assert.match(text, said);
    assert.not.match(text, /declares \d+ bytes/);
    const json = revproxy(['client', '-revproc', port, '-pkt', 'pktfiles/1.json', '--wire', 'json']);
    assert.is(await json.exited, 1);
    assert.match(json.out.join('\n'), said, 'on the old JSON wire too');
    const server = revproxy(['server', '-id', '1', '-pp', '111', '-revproc', port]);
    await server.waitFor(new RegExp(`Not registered with the reverse proxy at 127\\.0\\.0\\.1:${port}: ${said.source}; retrying`));
  } finally {
    web.closeAllConnections();
    await new Promise((r) => web.close(r));
  }
});

cli('TLS on one side only: both sides say which', async () => {
  const pki = makePki(['proxy', 'client']);
  const { cert, key } = pki.cert('proxy');
  const tlsProxy = revproxy(['proxy', '-port', '0', '--tls-cert', cert, '--tls-key', key]);
  const tlsPort = (await tlsProxy.waitFor(/port (\d+)/))[1]!;
  const plainClient = revproxy(['client', '-revproc', tlsPort, '-pkt', 'pktfiles/1.json']);
  assert.is(await plainClient.exited, 1);
  assert.match(plainClient.out.join('\n'), /accepted the connection and closed it before answering the client's first PING: check whether another program listens on that port, or the proxy wants TLS \(--tls-ca, --tls-cert\)/);
  await tlsProxy.waitFor(/Refused a TLS connection from 127\.0\.0\.1: the peer speaks plain TCP to this TLS port .*: have it connect with TLS \(--tls-ca\)/);

  const plainProxy = revproxy(['proxy', '-port', '0']);
  const plainPort = (await plainProxy.waitFor(/port (\d+)/))[1]!;
  const tlsClient = revproxy(['client', '-revproc', plainPort, '-pkt', 'pktfiles/1.json', '--tls-ca', pki.ca]);
  assert.is(await tlsClient.exited, 1);
  assert.match(tlsClient.out.join('\n'), /the peer does not speak TLS: start it with --tls-cert and --tls-key, or dial it without TLS/);
  assert.not.match(tlsClient.out.join('\n'), /wrong version number/);
  await plainProxy.waitFor(/Closed connection from .*: the peer speaks TLS and this side does not \(it sent a TLS ClientHello\): give this side --tls-cert and --tls-key/);
});

/** README.md and docs/*.md, what an operator reads, as one text. */
const docsText = (): string => ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)].map((f) => readFileSync(join(ROOT, f), 'utf8')).join('\n');

/** The text of a markdown section: from its heading (found by its start) to the next heading of its level or above. */
function mdSection(text: string, heading: string): string {
  const at = new RegExp(`^(#+) ${heading.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}.*$`, 'm').exec(text);
  assert.ok(at, `a section '${heading}'`);
  const rest = text.slice(at.index + at[0].length);
  const next = new RegExp(`^#{1,${at[1]!.length}} `, 'm').exec(rest);
  return next ? rest.slice(0, next.index) : rest;
}

cli("every option a command's --help lists is named where that command is documented: its row and paragraphs in README's CLI section, or its own section", async () => {
  const help = async (args: string[]): Promise<string> => {
    const p = revproxy(args);
    assert.is(await p.exited, 0, p.out.join('\n'));
    return p.out.join('\n');
  };
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const doc = (f: string): string => readFileSync(join(ROOT, 'docs', f), 'utf8');
  const config = doc('CONFIG.md');
  // Each command's own pages; the rest of a command's options are in README's CLI section, where a paragraph names the commands that take them.
  const own: Record<string, string> = {
    proxy: config.slice(0, config.indexOf('\n## `revproxy server`')),
    server: mdSection(config, '`revproxy server`'),
    inspect: mdSection(readme, 'The inspector and metrics'),
    bench: mdSection(readme, 'Benchmark'),
    load: mdSection(readme, 'Putting load on a proxy: `revproxy load`'),
    scenario: mdSection(readme, 'Scenarios') + doc('SCENARIOS.md'),
  };
  const cliSection = mdSection(readme, 'The CLI');
  const commands = [...(await help(['--help'])).matchAll(/^ {2}([a-z]+) \[options\]/gm)].map((m) => m[1]!);
  assert.ok(commands.length >= 8, `the commands of revproxy --help: ${commands.join(', ')}`);
  const missing: string[] = [];
  for (const command of commands) {
    const row = cliSection.split('\n').find((l) => l.startsWith(`| \`${command}\` |`));
    assert.ok(row, `README's CLI table has a row for ${command}`);
    const paragraphs = cliSection.split(/\n\s*\n/).filter((p) => p.includes(`\`${command}\``));
    const docs = [row, ...paragraphs, own[command] ?? ''].join('\n');
    const options = new Set([...(await help([command, '--help'])).matchAll(/^ {2}(?:-\w, )?(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!));
    for (const option of options) if (option !== '--help' && !new RegExp(`${option}(?![a-z0-9-])`).test(docs)) missing.push(`${command} ${option}`);
  }
  assert.equal(missing, [], "options --help lists that the command's docs do not name");
});

cli("every --option README.md and docs/ name is one a revproxy command's --help lists, the soak's, or another program's the docs run", async () => {
  const helps = await Promise.all([[], ...[...['proxy', 'server', 'client', 'demo', 'inspect', 'scenario', 'load', 'bench']].map((c) => [c])].map(async (args) => {
    const p = revproxy([...args, '--help']);
    assert.is(await p.exited, 0, p.out.join('\n'));
    return p.out.join('\n');
  }));
  const optionsIn = (text: string): string[] => [...text.matchAll(/(?:^|[^a-z0-9-])(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!);
  const known = new Set([...optionsIn(helps.join('\n')), ...optionsIn(/const USAGE = `([^`]*)`/.exec(readFileSync(join(ROOT, 'bench/soak.ts'), 'utf8'))![1]!)]);
  // Other programs' options the docs show beside revproxy's: Node's (--disable-sigusr1 of a later Node), etcd's and etcdctl's, Docker's (--init), kubectl's (--from-file), systemctl's, npm's, certbot's, GNU timeout's.
  const others = ['--import', '--require', '--cpu-prof', '--trace-gc', '--trace-gc-nvp', '--max-semi-space-size', '--min-semi-space-size', '--initial-heap-size', '--heap-growing-percent', '--no-allocation-site-pretenuring', '--trace-pretenuring-statistics', '--perf-basic-prof', '--single-threaded-gc', '--v8-pool-size', '--maglev', '--trace-warnings', '--trace-deprecation', '--disable-sigusr1',
    '--auto-compaction-retention', '--auth-token-ttl', '--client-cert-auth', '--quota-backend-bytes', '--trusted-ca-file', '--cert-file', '--consistency', '--lease', '--prefix', '--memory', '--ulimit', '--now', '--no-save', '--deploy-hook', '--foreground', '--init', '--from-file', '--network'];
  // Misspellings the docs show on purpose (what a typo is told).
  const misspelt = ['--timout'];
  const unknown = [...new Set(optionsIn(docsText()))].filter((o) => !known.has(o) && !others.includes(o) && !misspelt.includes(o));
  assert.equal(unknown, [], 'options the docs name that no --help lists (renamed or removed?)');
});

cli("every --option a command line in README.md or docs/ gives a revproxy command (`revproxy load --revproc 2100 -c 8`) is one that command's --help lists", async () => {
  const commands = ['proxy', 'server', 'client', 'demo', 'inspect', 'scenario', 'load', 'bench'];
  const optionsOf = new Map<string, Set<string>>();
  for (const command of commands) {
    const p = revproxy([command, '--help']);
    assert.is(await p.exited, 0, p.out.join('\n'));
    optionsOf.set(command, new Set([...p.out.join('\n').matchAll(/(?:^|[^a-z0-9-])(--[a-z][a-z0-9-]*)/gm)].map((m) => m[1]!)));
  }
  const files = ['README.md', ...readdirSync(join(ROOT, 'docs')).map((f) => `docs/${f}`)];
  const wrong: string[] = [];
  let lines = 0;
  for (const file of files) {
    // A command line continued with a backslash is one line.
    const text = readFileSync(join(ROOT, file), 'utf8').replace(/\\\n\s*/g, ' ');
    for (const line of text.split('\n')) {
      // The command's own words: up to the end of the code span, a pipe, a comment or the next command.
      for (const m of line.matchAll(new RegExp(`revproxy(?:\\.js)? (${commands.join('|')})\\b([^\`|;&#\n]*)`, 'g'))) {
        lines++;
        for (const o of m[2]!.matchAll(/(?:^|\s)(--[a-z][a-z0-9-]*)/g)) {
          if (!optionsOf.get(m[1]!)!.has(o[1]!) && o[1] !== '--help' && o[1] !== '--timout') wrong.push(`${file}: revproxy ${m[1]} ${o[1]}`);
        }
      }
    }
  }
  assert.ok(lines > 50, `command lines read: ${lines}`);
  assert.equal(wrong, [], "options the docs give a command that its --help does not list (another command's, renamed or removed?)");
});

cli("the defaults README's CLI table gives in brackets (`--port` (2100), `--max-frame` bytes (1 MiB)) are the ones each command's --help gives", async () => {
  const rows = readFileSync(join(ROOT, 'README.md'), 'utf8').split('\n').filter((l) => /^\| `[a-z]+` \|/.test(l));
  const bytes = (v: string): number => {
    const m = /^(\d+) (KiB|MiB)$/.exec(v);
    return m ? Number(m[1]) * (m[2] === 'MiB' ? 1 << 20 : 1 << 10) : Number(v.replace(/,/g, ''));
  };
  const wrong: string[] = [];
  let checked = 0;
  for (const row of rows) {
    const command = /^\| `([a-z]+)`/.exec(row)![1]!;
    const p = revproxy([command, '--help']);
    assert.is(await p.exited, 0, p.out.join('\n'));
    // Each option's help, from its line to the next option's (its words may name other options).
    const options = new Map(p.out.join('\n').split(/\n(?= {2}(?:-\w, )?--)/).map((o) => [/^ {2}(?:-\w, )?(--[a-z-]+)/.exec(o)?.[1], o.replace(/\s+/g, ' ')]));
    for (const m of row.matchAll(/`(--[a-z-]+)`(?: [a-z]+)? \((\d[\d,]*(?: [KM]iB)?)[);= ]/g)) {
      const given = /default:? (\d+)[),]/.exec(options.get(m[1]!) ?? '')?.[1];
      checked++;
      if (given === undefined || bytes(m[2]!) !== Number(given)) wrong.push(`${command} ${m[1]}: README (${m[2]}), --help ${given ?? 'no default'}`);
    }
  }
  assert.ok(checked >= 12, `defaults checked: ${checked}`);
  assert.equal(wrong, [], "defaults README's CLI table gives that --help does not");
});

cli("each option's --help says its default once: proxy --max-buffered-bytes said it in its words and again in brackets, (default: 268435456 ...) (default: 268435456)", async () => {
  const twice: string[] = [];
  for (const command of ['proxy', 'server', 'client', 'demo', 'inspect', 'scenario', 'load', 'bench']) {
    const p = revproxy([command, '--help']);
    assert.is(await p.exited, 0, p.out.join('\n'));
    for (const option of p.out.join('\n').split(/\n(?= {2}(?:-\w, )?--)/)) {
      if ((option.match(/default:/g) ?? []).length > 1) twice.push(`${command} ${/--[a-z-]+/.exec(option)?.[0]}`);
    }
  }
  assert.equal(twice, []);
});

cli('every REVPROXY_ environment variable the commands read is named in README.md or docs/', () => {
  const docs = docsText();
  const sources = ['cli', 'config', 'actors', 'admin', 'registry', 'inspector', 'transport', 'lib'].flatMap((dir) => readdirSync(join(ROOT, dir)).filter((f) => /\.(ts|js|mjs)$/.test(f)).map((f) => readFileSync(join(ROOT, dir, f), 'utf8')));
  const read = new Set(sources.flatMap((text) => [...text.matchAll(/\bREVPROXY_[A-Z_]+/g)].map((m) => m[0])));
  read.delete('REVPROXY_BENCH_RAISED'); // set by revproxy bench for the copy of itself it starts with a raised open-files limit
  assert.ok(read.has('REVPROXY_TOKEN'), `the variables found: ${[...read].join(', ')}`);
  assert.equal([...read].filter((name) => !docs.includes(name)), [], 'variables no doc names');
});

cli('making the bundle in a checkout leaves no esbuild process behind: its service process (about 48 MB) stayed beside the proxy that made it, as long as that ran', async () => {
  // A process that makes the bundle (as `revproxy` does when a source is newer), then lists its own children still running (an exited one not reaped yet holds no memory).
  // esbuild's stop() sends its service SIGTERM and does not wait for it to exit: the list is read again for up to 10 s
  // (a CI run under load found it still running when read at once); on main it ran as long as its parent.
  const script = `const m = await import(${JSON.stringify(join(ROOT, 'cli/bundle.mjs'))}); await m.bundle({ force: true }); const fs = await import('node:fs');
    const runningNow = () => fs.readFileSync('/proc/' + process.pid + '/task/' + process.pid + '/children', 'utf8').split(' ').filter(Boolean).filter((pid) => { try { return fs.readFileSync('/proc/' + pid + '/stat', 'utf8').split(') ')[1][0] !== 'Z'; } catch { return false; } });
    let running = runningNow();
    for (const end = Date.now() + 10000; running.length > 0 && Date.now() < end; running = runningNow()) await new Promise((r) => setTimeout(r, 50));
    console.log('children: [' + running.join(' ') + ']');`;
  const child = start(process.execPath, ['--input-type=module', '-e', script]);
  assert.is(await child.exited, 0, child.out.join('\n'));
  assert.ok(child.out.includes('children: []'), child.out.join('\n'));
});

cli.run();
