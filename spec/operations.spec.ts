/**
 * Operating the proxy (issue 16): the config file and --check, the access
 * log, SIGHUP reloads under load, and the admin endpoint (/healthz, /readyz,
 * /metrics). The proxy runs as a real process (`revproxy proxy --config`);
 * servers and load run in this process.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import * as assert from 'uvu/assert';
import { runClient, sha1Handler, startServer, type Handler, type ServerHandle } from '../actors/index.js';
import { EJECT_REASONS, resolveOptions } from '../actors/proxy-options.js';
import { MEMBER_STATES } from '../actors/proxy-types.js';
import { clientRoom, fileRoom, REFUSE_REASONS } from '../actors/port-limits.js';
import { TLS_FAILURES } from '../transport/foreign.js';
import { describeLinkError } from '../actors/link.js';
import { ROLES } from '../admin/conn-stats.js';
import { changes, defaultOf, DEFAULTS, flagOfKey, flagsNamedOtherwise, keyOfFlag, NUMBERS, parseConfig, proxyConfigSpec, toRuntime } from '../config/proxy.js';
import { proxyCommand } from '../cli/proxy.js';
import { loadTokens } from '../config/files.js';
import { Hub, readLog } from '../inspector/index.js';
import { OTHER } from '../inspector/metrics.js';
import { ERROR_CODES } from '../transport/errors.js';
import { eventually, LOCAL, rawConnect, sleep } from './helpers.js';
import { runLoad } from './load.js';
import { freePort, nodeFlags } from '../bench/procs.js';
import { BIN, freshSuite, revproxy, ROOT, start, type Fresh, type Proc } from './procs.js';
import { SAME_SIGNAL_MS } from '../cli/common.js';

const EXAMPLE = join(ROOT, 'docs/revproxy.example.yaml');

const ctx: Fresh = { dir: '', servers: [] };
const fresh = (name: string) => freshSuite(name, 'revproxy-ops-', ctx);

function write(name: string, text: string): string {
  const p = join(ctx.dir, name);
  writeFileSync(p, text);
  return p;
}

/** Start `revproxy proxy --config FILE`; resolves with its port and admin URL once both listen. */
/** `fileLimit`: started under `ulimit -n fileLimit`. */
async function proxyWithConfig(file: string, extra: string[] = [], fileLimit?: number): Promise<{ proc: Proc; port: number; admin: string }> {
  const proc = revproxy(['proxy', '--config', file, ...extra], { fileLimit });
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proc.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean) ?? '';
  return { proc, port, admin };
}

async function server(id: string, policy: string, port: number, opts: { token?: string; delayMs?: number; handler?: Handler } = {}): Promise<ServerHandle> {
  const s = await startServer({ id, policy, listenPort: 0, proxy: { host: LOCAL, port }, ...opts });
  ctx.servers.push(s);
  return s;
}

const get = async (url: string, init: RequestInit = {}): Promise<{ status: number; body: string; type: string | null }> => {
  const res = await fetch(url, init);
  return { status: res.status, body: await res.text(), type: res.headers.get('content-type') };
};

const config = fresh('the config file');

config('docs/revproxy.example.yaml is valid, shows every key the format has (set or commented), and --check says so', async () => {
  const text = readFileSync(EXAMPLE, 'utf8');
  const cfg = parseConfig(text, EXAMPLE);
  toRuntime(cfg);
  for (const key of Object.keys(proxyConfigSpec.fields)) {
    assert.ok(new RegExp(`^#? ?${key}:`, 'm').test(text), `the example shows '${key}'`);
  }
  const check = revproxy(['proxy', '--check', '--config', EXAMPLE]);
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.match(check.out.join('\n'), /revproxy\.example\.yaml is valid/);
  // What it says of when the admin endpoint's settings change is what a reload does (it said "a change needs a restart" of them all).
  const adminNote = /^# The admin endpoint.*$/m.exec(text)?.[0] ?? '';
  assert.not.match(adminNote, /a change needs a restart/);
  assert.match(adminNote, /token and ready_policies change at once/);
  // Each number is marked as a reload takes it (config/proxy.ts): the TLS section said "a change needs a restart", its files re-read at every reload.
  const marks = Object.entries(NUMBERS).flatMap(([key, s]) => {
    const line = new RegExp(`^#? ?${key}:.*$`, 'm').exec(text)?.[0] ?? '';
    const shown = /\(restart\)/.test(line) ? 'restart' : /\(new connections\)/.test(line) ? 'new' : 'live';
    return shown === s.reload ? [] : [`${key}: marked ${shown}, a reload takes it ${s.reload}`];
  });
  assert.equal(marks, [], 'numbers the example marks otherwise than a reload takes them');
  assert.match(/^# TLS\..*\n(#.*\n)*/m.exec(text)?.[0] ?? '', /read again at\n# every reload/);
});

config('docs/revproxy.example.yaml sets each number to its default, and leaves commented those that follow another setting', () => {
  const text = readFileSync(EXAMPLE, 'utf8');
  const set = toRuntime(parseConfig(text, EXAMPLE)).options as Record<string, unknown>;
  for (const [key, s] of Object.entries(NUMBERS)) {
    if (set[s.option] === undefined) continue;
    const follows = (s as { defaultText?: string }).defaultText;
    assert.not.ok(follows, `the example pins ${key}, whose default is ${follows}: a copy that changes that would keep the example's number`);
    assert.is(set[s.option], DEFAULTS[s.option], `the example's ${key} is its default`);
  }
  // A copy of the example with a longer timeout drains as long (a pinned drain_timeout: 5000 cut it off at 5 s).
  const longer = resolveOptions(toRuntime(parseConfig(text.replace(/^timeout: 5000\b/m, 'timeout: 60000'), EXAMPLE)).options);
  assert.is(longer.timeoutMs, 60000);
  assert.is(longer.drainTimeoutMs, 60000);
});

config('docs/CONFIG.md documents every key, section keys included', () => {
  const doc = readFileSync(join(ROOT, 'docs/CONFIG.md'), 'utf8');
  for (const [key, field] of Object.entries(proxyConfigSpec.fields)) {
    const sub = (field.schema as { fields?: Record<string, unknown> }).fields;
    for (const k of sub ? Object.keys(sub).map((s) => `${key}.${s}`) : [key]) assert.ok(doc.includes(`| \`${k}\` |`), `docs/CONFIG.md has a row for ${k}`);
  }
  // The default column of each number (| key | flag | unit | range | default |) begins as --help's words for it (defaultOf, the one source of both).
  const wrong = Object.keys(NUMBERS).flatMap((key) => {
    const cells = new RegExp(`^\\| \`${key}\` \\|([^\n]*)$`, 'm').exec(doc)?.[1]?.split('|').map((c) => c.trim());
    const shown = cells?.[3] ?? '';
    const want = defaultOf(key as keyof typeof NUMBERS);
    return shown.startsWith(want) && !/^[\w.]/.test(shown.slice(want.length)) ? [] : [`${key}: the doc says '${shown.slice(0, 40)}', the default is '${want}'`];
  });
  assert.equal(wrong, [], 'defaults docs/CONFIG.md gives that are not the defaults');
});

config('one table says which flag sets which key: every flag of proxy --help sets a key the schema has, and docs/CONFIG.md names each key\'s flag as it does', () => {
  const fieldsOf = (s: unknown): Record<string, { schema: unknown }> | undefined => (s as { fields?: Record<string, { schema: unknown }> } | undefined)?.fields;
  // The field at a dotted key (`registry.tls.ca`), or undefined.
  const fieldAt = (key: string): { schema: unknown } | undefined =>
    key.split('.').reduce<{ schema: unknown } | undefined>((field, part) => {
      const fields = fieldsOf(field?.schema);
      return fields && Object.hasOwn(fields, part) ? fields[part] : undefined;
    }, { schema: proxyConfigSpec });
  const known = (key: string): boolean => fieldAt(key) !== undefined;
  const flags = proxyCommand(() => {}).options.map((o) => o.long!.slice(2)).filter((f) => !['config', 'check', 'pid-file'].includes(f));
  assert.ok(flags.length > 60, `proxy has its flags (${flags.length})`);
  const lost = flags.filter((f) => !known(keyOfFlag(f)) || flagOfKey(keyOfFlag(f)) !== `--${f}`);
  assert.equal(lost, [], 'flags whose key (config/proxy.ts, keyOfFlag) the schema does not have, or whose key is named by another flag');
  // docs/CONFIG.md's flag column (| key | flag | ...) begins with the flag keyOfFlag's inverse names; a key no flag sets has none.
  const doc = readFileSync(join(ROOT, 'docs/CONFIG.md'), 'utf8');
  const wrong = [...doc.matchAll(/^\| `([a-z_.]+)` \|([^|\n]*)\|/gm)].flatMap(([, key, cell]) => {
    if (!known(key!) || fieldsOf(fieldAt(key!)!.schema)) return [];
    const shown = /`(--[a-z-]+)/.exec(cell!)?.[1];
    return shown === flagOfKey(key!) ? [] : [`${key}: the doc says ${shown ?? 'no flag'}, the flag is ${flagOfKey(key!) ?? 'none'}`];
  });
  assert.equal(wrong, [], "docs/CONFIG.md's flags that are not the flags of their keys");
  // Its naming rule's exceptions are proxy --help's: it left out --access-log-flush and --registry-ca/-cert/-key.
  const rule = /Each key is the flag's name[^]*?Paths in the file/.exec(doc)?.[0] ?? '';
  assert.equal(flagsNamedOtherwise().filter((f) => !rule.includes(`\`--${f}\``)), [], "flags named otherwise that docs/CONFIG.md's naming rule leaves out");
});

config('--check refuses a bad file with exit 1, naming file:line:col and what was expected at each problem', async () => {
  const bad = write('bad.yaml', 'port: 2100\ntimeout: fast\nlog:\n  levl: info\nmax_server_inflight: 0\ndrain_timeout: 2147483648\n');
  const check = revproxy(['proxy', '--check', '--config', bad]);
  assert.is(await check.exited, 1);
  const out = check.out.join('\n');
  assert.match(out, /bad\.yaml:2:10: timeout: expected milliseconds \(a whole number, at least 1\), got "fast"/);
  assert.match(out, /bad\.yaml:4:3: log\.levl: unknown key 'levl' in log; .*did you mean 'level'/);
  // A key written as its flag or as the library's option name is found, however far it is from the key by edits.
  const cased = write('cased.yaml', 'port: 2100\nmaxServerInflight: 4\nadmin:\n  ready-policies: [a]\nlog_level: debug\ntokens: tokens.yaml\n');
  const c = revproxy(['proxy', '--check', '--config', cased]);
  assert.is(await c.exited, 1);
  assert.match(c.out.join('\n'), /cased\.yaml:2:1: maxServerInflight: unknown key 'maxServerInflight' in proxy configuration; .*\(did you mean 'max_server_inflight'\? keys are snake_case\)/);
  assert.match(c.out.join('\n'), /cased\.yaml:4:3: admin\.ready-policies: unknown key 'ready-policies' in admin; .*\(did you mean 'ready_policies'\? keys are snake_case\)/);
  // A key written as a flag whose key is named otherwise (docs/CONFIG.md's tables): --log-level is log: {level}, --tokens FILE is tokens_file.
  assert.match(c.out.join('\n'), /cased\.yaml:5:1: log_level: unknown key 'log_level' in proxy configuration; .*\(did you mean 'log: \{level\}'\?\)/);
  const negated = write('negated.yaml', 'no_color: true\nregistry_ca: ca.pem\n');
  const n = revproxy(['proxy', '--check', '--config', negated]);
  assert.is(await n.exited, 1);
  assert.match(n.out.join('\n'), /negated\.yaml:1:1: no_color: unknown key 'no_color' .*\(did you mean 'log: \{color: false\}'\?\)/);
  assert.match(n.out.join('\n'), /negated\.yaml:2:1: registry_ca: unknown key 'registry_ca' .*\(did you mean 'registry: \{tls: \{ca\}\}'\?\)/);
  assert.match(c.out.join('\n'), /cased\.yaml:6:9: tokens: expected a mapping .*, got "tokens\.yaml": did you mean tokens_file \(a file of per-policy secrets, as --tokens FILE\), or token/);
  assert.match(out, /bad\.yaml:5:22: max_server_inflight: expected a count \(a whole number, at least 1\), got 0/);
  // A time no timer can wait (Node would fire it at once), from the file and from a flag alike.
  assert.match(out, /bad\.yaml:6:16: drain_timeout: expected at most 2147483647, got 2147483648/);
  const flag = revproxy(['proxy', '--check', '--drain-timeout', '2147483648']);
  assert.is(await flag.exited, 2);
  assert.match(flag.out.join('\n'), /--drain-timeout must be at most 2147483647, got '2147483648'/);
  const broken = write('broken.yaml', 'port: [1,\n');
  const b = revproxy(['proxy', '--check', '--config', broken]);
  assert.is(await b.exited, 1);
  assert.match(b.out.join('\n'), /broken\.yaml:\d+:\d+: not valid YAML/);
});

config('a large file is read in time linear in its keys, a repeated key still placed at its line; a burst of SIGHUPs while one reload waits is one reload, and a reload to warn says so', async () => {
  // yaml's own repeated-key check compares each key with every one before it: 2.4 s for 20,000 tokens, 67 s for
  // 100,000, each reload blocking the proxy; 10 SIGHUPs in a second were 10 such reloads (27.6 s of stall).
  const tokens = (n: number, from = 0): string => Array.from({ length: n }, (_, i) => `  "p${from + i}": token-secret-${String(from + i).padStart(8, '0')}\n`).join('');
  const timed = (n: number): number => {
    const text = `port: 0\ntokens:\n${tokens(n)}`;
    const t0 = performance.now();
    parseConfig(text, 'big.yaml');
    return performance.now() - t0;
  };
  timed(2000);
  const ratio = Math.min(timed(32000), timed(32000)) / Math.max(1, Math.min(timed(8000), timed(8000)));
  // Linear: about 4; quadratic (the check before): about 16.
  assert.ok(ratio < 8, `32,000 keys took ${ratio.toFixed(1)} times as long as 8,000`);
  const dup = write('dup-big.yaml', `port: 0\ntokens:\n${tokens(5000)}  "p17": another-secret-1\n`);
  const d = revproxy(['proxy', '--check', '--config', dup]);
  assert.is(await d.exited, 1);
  assert.match(d.out.join('\n'), /dup-big\.yaml:5003:3: not valid YAML: Map keys must be unique/);
  // A burst: the first reload reads 20,000 tokens; the nine SIGHUPs after it, while it runs, are one more.
  const file = write('burst.yaml', `port: 0\nlog:\n  level: info\ntokens:\n${tokens(20000)}`);
  const { proc } = await proxyWithConfig(file);
  writeFileSync(file, `port: 0\nlog:\n  level: warn\ntokens:\n${tokens(20000)}`);
  for (let i = 0; i < 10; i++) {
    proc.kill('SIGHUP');
    await sleep(10);
  }
  await proc.waitFor(/Reloaded/);
  await sleep(3000);
  const lines = proc.out.filter((l) => /Reloaded/.test(l));
  assert.ok(lines.length >= 1 && lines.length <= 3, `${lines.length} reloads for a burst of 10 SIGHUPs:\n${lines.join('\n')}`);
  // The level was lowered to warn by the reload: its line is written all the same.
  assert.match(lines[0]!, /Reloaded .*burst\.yaml: applied log\.level/);
});

config('what an operator may write by habit gets a clear word: ${VAR} (not expanded), `warning` for warn, a ConfigMap link whose target is gone', async () => {
  const env = write('env.yaml', 'port: ${PORT}\ntoken: ${REVPROXY_TOKEN}\nadmin:\n  listen: 127.0.0.1:0\n  token: "${ADMIN_TOKEN}"\n');
  const e = revproxy(['proxy', '--check', '--config', env], { env: { REVPROXY_TOKEN: 'the-real-token-1' } });
  assert.is(await e.exited, 1);
  const out = e.out.join('\n');
  assert.match(out, /env\.yaml:1:7: port: expected a port .*, got "\$\{PORT\}": nothing here expands environment variables/);
  assert.match(out, /env\.yaml:2:8: token: a secret that is '\$\{REVPROXY_TOKEN\}', a reference to an environment variable: nothing here expands environment variables/);
  assert.match(out, /env\.yaml:5:10: admin\.token: a secret that is '\$\{ADMIN_TOKEN\}'/);
  const level = write('warning.yaml', 'port: 0\nlog:\n  level: warning\n');
  const w = revproxy(['proxy', '--check', '--config', level]);
  assert.is(await w.exited, 1);
  assert.match(w.out.join('\n'), /got "warning" \(did you mean 'warn'\?\)/);
  const link = join(ctx.dir, 'cm-config.yaml');
  execFileSync('ln', ['-sfn', join(ctx.dir, '..data', 'config.yaml'), link]);
  const l = revproxy(['proxy', '--check', '--config', link]);
  assert.is(await l.exited, 1);
  assert.match(l.out.join('\n'), /cannot read the configuration file: it is a symbolic link to .*\.\.data\/config\.yaml, which does not exist/);
});

config('--check places a YAML syntax error at its line and column, not at 1:1, and says to quote an IPv6 address', async () => {
  const dup = write('dup.yaml', 'port: 2100\nlog:\n  level: info\n  level: debug\n');
  const d = revproxy(['proxy', '--check', '--config', dup]);
  assert.is(await d.exited, 1);
  assert.match(d.out.join('\n'), /dup\.yaml:4:3: not valid YAML: Map keys must be unique/);
  const indent = write('indent.yaml', 'port: 2100\ntimeout: 5000\n  retries: 2\n');
  const i = revproxy(['proxy', '--check', '--config', indent]);
  assert.is(await i.exited, 1);
  assert.match(i.out.join('\n'), /indent\.yaml:2:10: not valid YAML/);
  assert.not.match(i.out.join('\n'), /quote a value/);
  // An IPv6 address written bare is YAML's own syntax: said with what to write (it was "got a list", or yaml's words alone).
  for (const [name, text, at] of [['v6host.yaml', 'host: ::\n', /v6host\.yaml:1:7: not valid YAML: .*: quote a value that is an IPv6 address or starts with '\['/],
    ['v6list.yaml', 'host: [::1]\n', /v6list\.yaml:1:7: host: expected a string, got a list: quote a value that is an IPv6 address/],
    ['v6admin.yaml', 'admin:\n  listen: [::1]:9100\n', /v6admin\.yaml:2:\d+: not valid YAML: .*: quote a value that is an IPv6 address/]] as const) {
    const v = revproxy(['proxy', '--check', '--config', write(name, text)]);
    assert.is(await v.exited, 1);
    assert.match(v.out.join('\n'), at);
  }
  const quoted = revproxy(['proxy', '--check', '--config', write('v6ok.yaml', "host: '::'\nadmin:\n  listen: '[::1]:0'\n")]);
  assert.is(await quoted.exited, 0, quoted.out.join('\n'));
});

config('--check opens the files a config names, as nginx -t does', async () => {
  const cfg = write('missing.yaml', 'tokens_file: nowhere.yaml\n');
  const check = revproxy(['proxy', '--check', '--config', cfg]);
  assert.is(await check.exited, 1);
  assert.match(check.out.join('\n'), /missing\.yaml:1:14: tokens_file: .*nowhere\.yaml: cannot read it: it does not exist/);
});

config('--check and a start say every file problem at once, each at its key\'s line in the file, or named by its flag', async () => {
  // It said the first only (the tokens file), without a line; a missing TLS file as "the --tls-cert file" though the file named
  // it, and a log file at 1:1 of a relative path though its key was on line 3.
  const missing = join(ctx.dir, 'no-such-folder');
  const cfg = write('files.yaml', `port: 0\ntls:\n  cert: nope.pem\n  key: nope.key\ntokens_file: nowhere.yaml\nlog:\n  access_log: ${missing}/a.log\ninspect_log: ${missing}/i.ndjson\nadmin:\n  listen: 127.0.0.1:23571\ninspect: 23571\n`);
  const at = (line: number, col: number, key: string, what: string): RegExp => new RegExp(`${cfg.replace(/[.]/g, '\\.')}:${line}:${col}: ${key.replace(/[.]/g, '\\.')}: .*${what}`);
  for (const args of [['--check'], []]) {
    const p = revproxy(['proxy', ...args, '--config', cfg]);
    assert.is(await p.exited, 1, p.out.join('\n'));
    const out = p.out.join('\n');
    assert.match(out, at(3, 9, 'tls.cert', 'nope\\.pem: cannot read it: it does not exist'));
    assert.match(out, at(4, 8, 'tls.key', 'nope\\.key: cannot read it: it does not exist'));
    assert.match(out, at(5, 14, 'tokens_file', 'nowhere\\.yaml: cannot read it: it does not exist'));
    assert.match(out, at(7, 15, 'log.access_log', 'cannot open it for writing: its folder .* does not exist'));
    assert.match(out, at(8, 14, 'inspect_log', 'cannot open it for writing: its folder .* does not exist'));
    assert.match(out, at(11, 10, 'inspect', 'the inspector .* and the admin endpoint'));
  }
  // Given as flags: each named by its flag, all at once, the pid file with them.
  const flags = revproxy(['proxy', '--check', '--port', '0', '--tls-cert', 'no/cert.pem', '--tls-key', 'no/key.pem', '--tokens', 'no/tokens.yaml', '--access-log', `${missing}/a.log`, '--pid-file', `${missing}/x.pid`]);
  assert.is(await flags.exited, 1, flags.out.join('\n'));
  const said = flags.out.join('\n');
  for (const re of [/cannot read the --tls-cert file 'no\/cert\.pem': it does not exist/, /cannot read the --tls-key file 'no\/key\.pem'/, /cannot read the tokens file 'no\/tokens\.yaml'/, /cannot open the --access-log file '.*a\.log' for writing/, /cannot write the --pid-file '.*x\.pid'/]) assert.match(said, re);
});

config('--check refuses what a start cannot do: two of its listeners on one port (naming both settings), a pid file in a missing folder', async () => {
  // Each passed --check, and the start then failed "port P on 127.0.0.1 is already in use: stop what holds it", blaming another program.
  const run = async (args: string[]): Promise<{ code: number; out: string }> => {
    const p = revproxy(['proxy', '--check', ...args]);
    return { code: await p.exited, out: p.out.join('\n') };
  };
  const flags = await run(['--port', '23565', '--admin', '127.0.0.1:23565']);
  assert.is(flags.code, 2, flags.out);
  assert.match(flags.out, /the admin endpoint \(admin\.listen, --admin\), 127\.0\.0\.1:23565, and the proxy's port \(port, --port\), 127\.0\.0\.1:23565, are the same address and port: .*give each its own port/);
  const file = await run(['--config', write('clash.yaml', 'port: 23566\nadmin:\n  listen: 0.0.0.0:23566\n')]);
  assert.is(file.code, 1, file.out);
  assert.match(file.out, /clash\.yaml:3:11: admin\.listen: the admin endpoint .*0\.0\.0\.0:23566, and the proxy's port .*127\.0\.0\.1:23566, are the same port, on addresses that overlap/);
  const inspector = await run(['--port', '0', '--admin', '127.0.0.1:23567', '--inspect', '23567']);
  assert.is(inspector.code, 2, inspector.out);
  assert.match(inspector.out, /the inspector \(inspect, --inspect, on 127\.0\.0\.1\), 127\.0\.0\.1:23567, and the admin endpoint/);
  // One address spelt two ways is one address (each pair passed --check and the start failed "already in use").
  for (const [host, admin] of [['127.0.0.1', '[::ffff:127.0.0.1]'], ['::1', '[0:0:0:0:0:0:0:1]'], ['LOCALHOST', 'localhost'], ['::', '[::0]']]) {
    const spelt = await run(['--port', '23569', '--host', host!, '--admin', `${admin!}:23569`]);
    assert.is(spelt.code, 2, `${host} and ${admin}: ${spelt.out}`);
    assert.match(spelt.out, /are the same address and port: one process cannot listen there twice/);
  }
  // Port 0 is a free port for each; other addresses do not overlap.
  assert.is((await run(['--port', '0', '--admin', '127.0.0.1:0', '--inspect', '0'])).code, 0);
  assert.is((await run(['--port', '23568', '--host', '127.0.0.2', '--admin', '127.0.0.1:23568'])).code, 0);
  const pid = await run(['--port', '0', '--pid-file', join(ctx.dir, 'nowhere', 'x.pid')]);
  assert.is(pid.code, 1, pid.out);
  assert.match(pid.out, /cannot write the --pid-file '.*x\.pid': its folder .*nowhere does not exist/);
  // A start says the same as --check, not that another program holds the port.
  const start = revproxy(['proxy', '--port', '23565', '--admin', '127.0.0.1:23565']);
  assert.is(await start.exited, 2);
  assert.not.match(start.out.join('\n'), /already in use/);
});

config('two of the proxy\'s own listeners on one address, one written as a name: refused at --check and at start as its own two listeners (the start failed "already in use: stop what holds it")', async () => {
  // A name is resolved as the start resolves it: here localhost is 127.0.0.1 (spec/hosts.ts gives processes no other /etc/hosts).
  const { lookup } = await import('node:dns/promises');
  const local = (await lookup('localhost')).address;
  if (local !== '127.0.0.1') throw new Error(`this spec needs localhost to resolve to 127.0.0.1 first here, got ${local}`);
  const cases: Array<[string[], RegExp]> = [
    [['--host', 'localhost', '--port', '63714', '--admin', '127.0.0.1:63714'], /the admin endpoint \(admin\.listen, --admin\), 127\.0\.0\.1:63714, and the proxy's port \(port, --port\), localhost:63714 \(127\.0\.0\.1\), are the same address and port/],
    [['--port', '63714', '--admin', 'LOCALHOST:63714'], /the admin endpoint \(admin\.listen, --admin\), LOCALHOST:63714 \(127\.0\.0\.1\), and the proxy's port \(port, --port\), 127\.0\.0\.1:63714, are the same address and port/],
    [['--host', 'localhost', '--port', '63714', '--inspect', '63714'], /the inspector \(inspect, --inspect, on 127\.0\.0\.1\), 127\.0\.0\.1:63714, and the proxy's port \(port, --port\), localhost:63714 \(127\.0\.0\.1\), are the same address and port/],
  ];
  for (const [args, said] of cases) {
    const check = revproxy(['proxy', '--check', ...args]);
    assert.is(await check.exited, 2, `--check ${args.join(' ')}: ${check.out.join('\n')}`);
    assert.match(check.out.join('\n'), said);
  }
  const file = revproxy(['proxy', '--check', '--config', write('byname.yaml', 'host: localhost\nport: 63714\nadmin:\n  listen: 127.0.0.1:63714\n')]);
  assert.is(await file.exited, 1, file.out.join('\n'));
  assert.match(file.out.join('\n'), /byname\.yaml:4:11: admin\.listen: the admin endpoint .*, and the proxy's port .*localhost:63714 \(127\.0\.0\.1\), are the same address and port: one process cannot listen there twice/);
  // Other names and addresses that do not meet still pass.
  const apart = revproxy(['proxy', '--check', '--host', 'localhost', '--port', '63714', '--admin', '127.0.0.2:63714']);
  assert.is(await apart.exited, 0, apart.out.join('\n'));
  // The start says the same, before it listens anywhere: not that another program holds the port.
  const start = revproxy(['proxy', '--host', 'localhost', '--port', '63714', '--admin', '127.0.0.1:63714']);
  assert.is(await start.exited, 2, start.out.join('\n'));
  assert.not.match(start.out.join('\n'), /already in use|Admin endpoint on/);
  assert.match(start.out.join('\n'), /the admin endpoint .* and the proxy's port .* are the same address and port: one process cannot listen there twice/);
});

config('--check counts the settings the file sets, none for an empty or commented-out file', async () => {
  const tokens = write('tokens.yaml', '"111": secret-of-111\n');
  const check = revproxy(['proxy', '--check', '--config', write('one.yaml', `tokens_file: ${tokens}\n`)]);
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.match(check.out.join('\n'), /one\.yaml is valid \(1 setting\(s\);/);
  // An empty file, or the example with every line commented out, sets nothing: it was refused "got nothing", naming every key.
  for (const [name, text] of [['empty.yaml', ''], ['commented.yaml', '# port: 2100\n# log:\n#   level: info\n']] as const) {
    const none = revproxy(['proxy', '--check', '--config', write(name, text)]);
    assert.is(await none.exited, 0, none.out.join('\n'));
    assert.match(none.out.join('\n'), new RegExp(`${name.replace('.', '\\.')} is valid \\(0 setting\\(s\\);`));
    // Valid at start, but a reload refuses it (what a writer that truncates leaves for a moment): said here, where systemd's ExecReload runs it.
    assert.match(none.out.join('\n'), new RegExp(`revproxy: warning: .*${name.replace('.', '\\.')} sets nothing \\(it is empty, or only comments\\): a start takes every setting from the flags and defaults, but a reload \\(SIGHUP\\) refuses such a file.*write \\{\\}`));
  }
  // `{}` says "every setting at its default" on purpose: no warning.
  const braces = revproxy(['proxy', '--check', '--config', write('braces.yaml', '{}\n')]);
  assert.is(await braces.exited, 0, braces.out.join('\n'));
  assert.not.match(braces.out.join('\n'), /warning/);
});

config('--check says in the file\'s terms what yaml says to a developer: two documents in one file (a second ---), a number YAML reads as infinity or not-a-number', async () => {
  const two = revproxy(['proxy', '--check', '--config', write('two.yaml', '---\ntimeout: 5000\n---\nretries: 2\n')]);
  assert.is(await two.exited, 1, two.out.join('\n'));
  assert.not.match(two.out.join('\n'), /parseAllDocuments/);
  assert.match(two.out.join('\n'), /two\.yaml:3:1: not valid YAML: a second document begins here \(---\): the file holds one document; remove this line/);
  const tokens = write('two-tokens.yaml', '"111": secret-of-111\n---\n"222": secret-of-222\n');
  const t = revproxy(['proxy', '--check', '--port', '0', '--tokens', tokens]);
  assert.is(await t.exited, 1, t.out.join('\n'));
  assert.not.match(t.out.join('\n'), /parseAllDocuments/);
  assert.match(t.out.join('\n'), /two-tokens\.yaml' is not valid YAML \(line 2: a second document begins here \(---\)/);
  const inf = revproxy(['proxy', '--check', '--config', write('inf.yaml', 'admin:\n  listen: 127.0.0.1:0\n  ready_policies: [.inf, .nan]\n')]);
  assert.is(await inf.exited, 1, inf.out.join('\n'));
  assert.match(inf.out.join('\n'), /inf\.yaml:3:20: admin\.ready_policies\[0\]: expected a string or a whole number, got \.inf/);
  assert.match(inf.out.join('\n'), /inf\.yaml:3:26: admin\.ready_policies\[1\]: expected a string or a whole number, got \.nan/);
});

config('--check and a start agree on a log whose folder does not exist: both refuse it, naming the folder, and --check creates nothing', async () => {
  const missing = join(ctx.dir, 'no-such-folder');
  for (const [key, text] of [['log.access_log', `log:\n  access_log: ${missing}/access.log\n`], ['inspect_log', `inspect_log: ${missing}/run.ndjson\n`]]) {
    const cfg = write('l.yaml', `port: 0\n${text}`);
    const check = revproxy(['proxy', '--check', '--config', cfg]);
    assert.is(await check.exited, 1, `--check with ${key}: ${check.out.join('\n')}`);
    assert.match(check.out.join('\n'), new RegExp(`${key}: .*cannot open it for writing: its folder ${missing} does not exist`));
    assert.not.ok(existsSync(missing), `--check with ${key} created nothing`);
  }
  const start = revproxy(['proxy', '--config', write('s.yaml', `port: 0\nlog:\n  access_log: ${missing}/access.log\n`)]);
  assert.is(await start.exited, 1);
  assert.match(start.out.join('\n'), new RegExp(`log\\.access_log: .*cannot open it for writing: its folder ${missing} does not exist`));
});

config('--check prints the warning a start logs for an admin endpoint other machines can reach with no token, as nginx -t prints its warnings', async () => {
  const check = revproxy(['proxy', '--check', '--port', '0', '--admin', '0.0.0.0:0']);
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.match(check.out.join('\n'), /revproxy: warning: the admin endpoint listens on 0\.0\.0\.0, reachable from other machines, with no token/);
  const quiet = revproxy(['proxy', '--check', '--port', '0', '--admin', '127.0.0.1:0']);
  assert.is(await quiet.exited, 0);
  assert.not.match(quiet.out.join('\n'), /admin endpoint listens/);
});

config('--check prints the warning a start logs for a proxy port other machines can reach with no registration secret', async () => {
  const open = revproxy(['proxy', '--check', '--host', '0.0.0.0', '--port', '63711']);
  assert.is(await open.exited, 0, open.out.join('\n'));
  assert.match(open.out.join('\n'), /revproxy: warning: listening on 0\.0\.0\.0, reachable from other machines, with no registration secret: anyone who can connect can register/);
  const file = revproxy(['proxy', '--check', '--config', write('open.yaml', "host: 0.0.0.0\nport: 63711\nadmin:\n  listen: '0.0.0.0:63712'\n")]);
  assert.is(await file.exited, 0, file.out.join('\n'));
  assert.match(file.out.join('\n'), /revproxy: warning: listening on 0\.0\.0\.0, reachable from other machines, with no registration secret/);
  for (const args of [['--token', 'a-long-secret'], ['--host', '127.0.0.1']]) {
    const quiet = revproxy(['proxy', '--check', '--host', '0.0.0.0', '--port', '63711', ...args]);
    assert.is(await quiet.exited, 0);
    assert.not.match(quiet.out.join('\n'), /registration secret/, args.join(' '));
  }
});

config('admin.listen takes an address by the rule host does: 127.1, 127.000.000.001 and 0127.0.0.1 are refused there too (they passed, and loopback was said to be reachable from other machines)', async () => {
  for (const host of ['127.1', '127.000.000.001', '0127.0.0.1']) {
    const flag = revproxy(['proxy', '--check', '--port', '0', '--admin', `${host}:63713`]);
    assert.is(await flag.exited, 2, `--admin ${host}: ${flag.out.join('\n')}`);
    assert.match(flag.out.join('\n'), new RegExp(`--admin takes HOST:PORT .*'${host.replace(/\./g, '\\.')}:63713': ${host.replace(/\./g, '\\.')} is no IPv4 address as written`));
    assert.not.match(flag.out.join('\n'), /reachable from other machines/);
    const file = revproxy(['proxy', '--check', '--config', write('a.yaml', `port: 0\nadmin:\n  listen: ${host}:63713\n`)]);
    assert.is(await file.exited, 1, `admin.listen ${host}: ${file.out.join('\n')}`);
    assert.match(file.out.join('\n'), new RegExp(`a\\.yaml:3:11: admin\\.listen: .*${host.replace(/\./g, '\\.')} is no IPv4 address as written`));
  }
  // What host takes, admin.listen takes: a name, an IPv6 address in brackets, '*', a port alone.
  for (const listen of ['localhost:0', '[::1]:0', '*:0', '0', '127.0.0.1:0']) {
    const ok = revproxy(['proxy', '--check', '--port', '0', '--admin', listen, '--admin-token', 'a-long-secret']);
    assert.is(await ok.exited, 0, `--admin ${listen}: ${ok.out.join('\n')}`);
  }
});

config("'*' listens on every IPv4 address, as HAProxy's bind *:80 and nginx's listen *:80 mean it (the proxy, its admin endpoint, a server); --check warns of a listen address this machine does not have or cannot resolve, and still passes", async () => {
  // Node took '*' for a host name: the start failed `getaddrinfo ENOTFOUND *` after --check had said it was valid.
  const star = await proxyWithConfig(write('star.yaml', "port: 0\nhost: '*'\ntoken: a-long-secret\nadmin:\n  listen: '*:0'\n"));
  assert.match(star.proc.out.join('\n'), /Running the reverse proxy on port \d+ at 0\.0\.0\.0 \(every address\)/);
  assert.match(star.admin, /^http:\/\/0\.0\.0\.0:\d+\/$/);
  star.proc.kill();
  const srv = revproxy(['server', '--host', '*', '--id', 's', '--policy', 'P', '--revproc', '127.0.0.1:1']);
  await srv.waitFor(/Listening on port \d+ at 0\.0\.0\.0/);
  srv.kill();
  const elsewhere = revproxy(['proxy', '--check', '--host', '192.0.2.123', '--admin', 'no-such-name.invalid:9100', '--admin-token', 'a-long-secret']);
  assert.is(await elsewhere.exited, 0, elsewhere.out.join('\n'));
  const said = elsewhere.out.join('\n');
  assert.match(said, /revproxy: warning: host 192\.0\.2\.123 is not an address of this machine: a start here fails to listen \(EADDRNOTAVAIL\); give one of its addresses \(127\.0\.0\.1, /);
  assert.match(said, /revproxy: warning: the admin endpoint's host no-such-name\.invalid (does not resolve here \((ENOTFOUND|EAI_AGAIN)\)|did not resolve within 3 s)/);
  const here = revproxy(['proxy', '--check', '--host', '0.0.0.0', '--token', 'a-long-secret', '--admin', 'localhost:9100']);
  assert.is(await here.exited, 0);
  assert.not.match(here.out.join('\n'), /warning/);
});

config('--check does not create the log files it checks: run as root (as nginx -t is), it made an access log owned by root that the service\'s user could not open', async () => {
  const folder = join(ctx.dir, 'logs-here');
  mkdirSync(folder);
  const check = revproxy(['proxy', '--check', '--config', write('c.yaml', `port: 0\nlog:\n  access_log: ${folder}/access.log\ninspect_log: ${folder}/run.ndjson\n`)]);
  assert.is(await check.exited, 0, check.out.join('\n'));
  assert.not.ok(existsSync(join(folder, 'access.log')), 'no access log made');
  assert.not.ok(existsSync(join(folder, 'run.ndjson')), 'no inspection log made');
  // One that exists and cannot be written is still refused (root may write anything: checked as another user only).
  if (process.getuid?.() !== 0) {
    writeFileSync(join(folder, 'access.log'), '');
    chmodSync(join(folder, 'access.log'), 0o444);
    const ro = revproxy(['proxy', '--check', '--config', write('c2.yaml', `port: 0\nlog:\n  access_log: ${folder}/access.log\n`)]);
    assert.is(await ro.exited, 1, ro.out.join('\n'));
  }
  // A folder named as the file is refused.
  const dir = revproxy(['proxy', '--check', '--config', write('c3.yaml', `port: 0\nlog:\n  access_log: ${folder}\n`)]);
  assert.is(await dir.exited, 1, dir.out.join('\n'));
  assert.match(dir.out.join('\n'), /log\.access_log: .*cannot open it for writing/);
});

config('flags override the file; the table gives every numeric key its flag', async () => {
  const help = revproxy(['proxy', '--help']);
  await help.exited;
  for (const key of Object.keys(NUMBERS)) assert.ok(help.out.join('\n').includes(`--${key.replace(/_/g, '-')}`), `flag for ${key}`);
  const cfg = write('p.yaml', 'port: 0\nlog:\n  level: warn\n');
  const { proc } = await proxyWithConfig(cfg, ['--log-level', 'info']);
  assert.ok(proc.out.some((l) => /Running the reverse proxy/.test(l)), 'info lines written: the flag won over the file');
});

const access = fresh('the access log');

access('one line per request, matched to requests by seq, in JSON; reopened on SIGHUP after a rotation', async () => {
  const log = join(ctx.dir, 'access.log');
  const cfg = write('a.yaml', `port: 0\nlog:\n  format: json\n  access_log: ${log}\n`);
  const { proc, port } = await proxyWithConfig(cfg);
  await server('s1', 'P', port);
  const results = await runClient({ id: 'c7', proxy: { host: LOCAL, port }, packets: Array.from({ length: 30 }, (_, i) => ({ srcid: 'c7', privPoliId: 'P', payload: `m${i}` })) });
  assert.is(results.filter((r) => r.correct).length, 30);
  await eventually(() => readFileSync(log, 'utf8').split('\n').filter(Boolean).length === 30, 3000, '30 access lines');
  const recs = readFileSync(log, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.equal(recs.map((r) => r.seq).sort((a, b) => Number(a) - Number(b)), Array.from({ length: 30 }, (_, i) => i));
  for (const r of recs) {
    assert.is(r.client, 'c7');
    assert.is(r.policy, 'P');
    assert.is(r.server, 's1');
    assert.is(r.tries, 1);
    assert.is(r.outcome, 'ok');
    assert.match(String(r.addr), /^127\.0\.0\.1:\d+$/);
    assert.ok(typeof r.latency_ms === 'number' && r.latency_ms >= 0);
    assert.ok(typeof r.queue_ms === 'number' && r.queue_ms >= 0 && r.queue_ms <= r.latency_ms, `queue_ms ${r.queue_ms} within latency_ms ${r.latency_ms}`);
    assert.match(String(r.time), /^\d{4}-\d\d-\d\dT/);
  }
  // logrotate: move the file away, SIGHUP, and the next lines go to a new file.
  renameSync(log, `${log}.1`);
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded/);
  await runClient({ id: 'c8', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c8', privPoliId: 'NOPE', payload: 'x' }] });
  await eventually(() => {
    try {
      return readFileSync(log, 'utf8').includes('"outcome":"NO_SERVER"');
    } catch {
      return false;
    }
  }, 3000, 'a line in the reopened file');
  const line = JSON.parse(readFileSync(log, 'utf8').trim()) as Record<string, unknown>;
  assert.equal([line.client, line.policy, line.server, line.tries, line.outcome], ['c8', 'NOPE', undefined, 0, 'NO_SERVER']);
  assert.is(readFileSync(`${log}.1`, 'utf8').split('\n').filter(Boolean).length, 30, 'the rotated file kept its lines');
  assert.ok(proc.child.exitCode === null, 'SIGHUP did not end the process');
});

access('SIGUSR1 reopens the access log after a rotation and reads no configuration, even when the file on disk is not valid (logrotate beside systemd\'s ExecReload, which runs --check first)', async () => {
  const log = join(ctx.dir, 'access.log');
  const cfgFile = write('u.yaml', `port: 0\nlog:\n  access_log: ${log}\n  access_log_flush: 0\n`);
  const { proc, port } = await proxyWithConfig(cfgFile);
  const one = (id: string) => runClient({ id, proxy: { host: LOCAL, port }, packets: [{ srcid: id, privPoliId: 'Z', payload: 'x' }] });
  const has = (f: string, id: string): boolean => existsSync(f) && readFileSync(f, 'utf8').includes(`client=${id} `);
  await one('c1');
  await eventually(() => has(log, 'c1'), 3000, 'the first line');
  // A config edit in progress: not valid. SIGUSR1 must not care.
  writeFileSync(cfgFile, 'port: 0\ntimeout: soon\n');
  renameSync(log, `${log}.1`);
  proc.kill('SIGUSR1');
  await proc.waitFor(new RegExp(`Reopened the access log ${log} \\(SIGUSR1\\); the configuration was not read again`));
  await one('c2');
  await eventually(() => has(log, 'c2'), 3000, 'the line in the reopened file');
  assert.not.ok(has(`${log}.1`, 'c2'), 'the rotated file is no longer written');
  assert.not.ok(proc.out.some((l) => /Reload|SIGUSR1 ignored/.test(l)), proc.out.join('\n'));
  assert.ok(proc.child.exitCode === null, 'still running');
});

access('the inspection log (--inspect-log) is reopened on SIGUSR1 and on SIGHUP after a rotation: it was written on into the moved file', async () => {
  const log = join(ctx.dir, 'inspect.ndjson');
  const { proc, port } = await proxyWithConfig(write('i.yaml', 'port: 0\n'), ['--inspect-log', log]);
  await server('y1', 'Y', port);
  const one = (id: string) => runClient({ id, proxy: { host: LOCAL, port }, packets: [{ srcid: id, privPoliId: 'Z', payload: 'x' }] });
  // Each request is recorded as the proxy's FORWARD event.
  const forwards = (f: string): number => (existsSync(f) ? readFileSync(f, 'utf8').split('"type":"FORWARD"').length - 1 : 0);
  await one('c1');
  await eventually(() => forwards(log) === 1, 3000, 'the first request recorded');
  renameSync(log, `${log}.1`);
  proc.kill('SIGUSR1');
  await proc.waitFor(new RegExp(`Reopened the inspection log ${log} \\(SIGUSR1\\)`));
  await one('c2');
  await eventually(() => forwards(log) === 1, 3000, 'the second request in the reopened file');
  renameSync(log, `${log}.2`);
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded/);
  await one('c3');
  await eventually(() => forwards(log) === 1, 3000, 'the third request in the file reopened on SIGHUP');
  assert.equal([forwards(`${log}.1`), forwards(`${log}.2`)], [1, 1], 'each rotated file holds only the request made before it was moved');
  // Each file replays on its own (revproxy inspect): the new one starts with the picture it needs.
  // A continuation file held events of actors it never introduced: 4 actors of 856, no chart, one pool of 50.
  for (const f of [`${log}.2`, log]) {
    const replay = new Hub();
    for (const r of readLog(f).recs) replay.apply(r);
    assert.ok([...replay.actors.values()].some((a) => a.machine === 'proxy' && a.status === 'active' && a.state === 'running'), `${f}: the running proxy`);
    assert.ok(replay.charts.has('proxy'), `${f}: the proxy's chart`);
    assert.equal(replay.pools.find((p) => p.policy === 'Y')?.members.map((m) => m.id), ['y1'], `${f}: pool Y with its server`);
  }
  // Whole records in each file.
  for (const f of [`${log}.1`, `${log}.2`, log]) for (const line of readFileSync(f, 'utf8').split('\n').filter(Boolean)) JSON.parse(line);
});

access('an inspection log the proxy cannot write (a full disk) is an error line saying why; the proxy serves on (it said nothing)', async () => {
  const { proc, port } = await proxyWithConfig(write('if.yaml', 'port: 0\nlog:\n  summary_interval: 500\n'), ['--inspect-log', '/dev/full']);
  const [r] = await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c1', privPoliId: 'Z', payload: 'x' }] });
  assert.is(r!.error, 'NO_SERVER');
  await proc.waitFor(/error: cannot write the inspection log \/dev\/full: the disk is full \(ENOSPC\)/);
  assert.ok(proc.child.exitCode === null, 'still running');
});

access('text lines: key=value, an unset value is -', async () => {
  const log = join(ctx.dir, 'access.log');
  const { port } = await proxyWithConfig(write('t.yaml', 'port: 0\n'), ['--access-log', log]);
  await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c1', privPoliId: 'Z', payload: 'x' }] });
  await eventually(() => readFileSync(log, 'utf8').length > 0, 3000, 'a line');
  assert.match(readFileSync(log, 'utf8'), /^\d{4}-\d\d-\d\dT\S+Z client=c1 addr=127\.0\.0\.1:\d+ policy=Z server=- seq=0 tries=0 latency_ms=[\d.]+ outcome=NO_SERVER queue_ms=0\n$/);
});

access('a file access log holds its lines for --access-log-flush ms; 0 writes them at once', async () => {
  const held = join(ctx.dir, 'held.log');
  const now = join(ctx.dir, 'now.log');
  const a = await proxyWithConfig(write('h.yaml', 'port: 0\n'), ['--access-log', held, '--access-log-flush', '1500']);
  const b = await proxyWithConfig(write('n.yaml', `port: 0\nlog:\n  access_log: ${now}\n  access_log_flush: 0\n`));
  const size = (f: string): number => (existsSync(f) ? readFileSync(f).length : 0);
  const t0 = Date.now();
  for (const port of [a.port, b.port]) await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c1', privPoliId: 'Z', payload: 'x' }] });
  await eventually(() => size(now) > 0, 600, 'flush 0: the line at once');
  if (Date.now() - t0 < 1200) assert.is(size(held), 0, 'flush 1500: the line still held');
  await eventually(() => size(held) > 0, 4000, 'flush 1500: the line within its time');
});

access('a SIGHUP that cannot reopen the access log says so and why, keeps writing to the file it has open, and the next SIGHUP reopens it', async () => {
  const logs = join(ctx.dir, 'logs');
  mkdirSync(logs);
  const log = join(logs, 'access.log');
  const { proc, port } = await proxyWithConfig(write('r.yaml', `port: 0\nlog:\n  access_log: ${log}\n  access_log_flush: 0\n`));
  const one = (id: string) => runClient({ id, proxy: { host: LOCAL, port }, packets: [{ srcid: id, privPoliId: 'Z', payload: 'x' }] });
  const has = (f: string, id: string): boolean => existsSync(f) && readFileSync(f, 'utf8').includes(`client=${id} `);
  // The folder is moved away (nginx logs an alert and keeps its old file in this case): the file cannot be opened again.
  renameSync(logs, `${logs}.old`);
  proc.kill('SIGHUP');
  await proc.waitFor(/cannot reopen the access log/);
  assert.match(proc.out.find((l) => /cannot reopen/.test(l)) ?? '', new RegExp(`error: cannot reopen the access log ${log}: its folder ${logs} does not exist: create it, or name another file; .*SIGHUP again`));
  await one('c1');
  await eventually(() => has(join(`${logs}.old`, 'access.log'), 'c1'), 3000, 'the line in the file still open');
  mkdirSync(logs);
  proc.kill('SIGHUP');
  await eventually(() => proc.out.filter((l) => /Reloaded/.test(l)).length === 2, 3000, 'the second reload');
  await one('c2');
  await eventually(() => has(log, 'c2'), 3000, 'the line in the reopened file');
  assert.not.ok(has(join(`${logs}.old`, 'access.log'), 'c2'), 'the old file is no longer written');
});

access('an access log the proxy cannot write (a full disk) is an error line saying why, repeated once per interval', async () => {
  const { proc, port } = await proxyWithConfig(write('f.yaml', 'port: 0\nlog:\n  access_log: /dev/full\n  access_log_flush: 0\n  summary_interval: 500\n'));
  const one = (id: string) => runClient({ id, proxy: { host: LOCAL, port }, packets: [{ srcid: id, privPoliId: 'Z', payload: 'x' }] });
  await one('c1');
  await proc.waitFor(/error: cannot write the access log \/dev\/full: the disk is full \(ENOSPC\)/);
  await Promise.all(Array.from({ length: 5 }, (_, i) => one(`c${i + 2}`)));
  await proc.waitFor(/cannot write the access log \/dev\/full: .* in the last/);
  // Later failures are summarised, one line per interval, not one line per failed write.
  assert.ok(proc.out.filter((l) => /cannot write the access log/.test(l)).length < 6, proc.out.join('\n'));
});

access('access log lines still waiting for a full disk when the proxy stops are counted in a warn line, not said to be written later', async () => {
  // The error line said they "are written once it can be", and they were lost at exit without a word.
  const { proc, port } = await proxyWithConfig(write('x.yaml', 'port: 0\nlog:\n  access_log: /dev/full\n  access_log_flush: 0\n'));
  for (const id of ['c1', 'c2', 'c3']) await runClient({ id, proxy: { host: LOCAL, port }, packets: [{ srcid: id, privPoliId: 'Z', payload: 'x' }] });
  await proc.waitFor(/cannot write the access log \/dev\/full: .*unless the proxy stops first/);
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0);
  assert.match(proc.out.join('\n'), /warning: 3 access log line\(s\) could not be written to \/dev\/full before the proxy stopped, and are lost/);
  // ... and before the last line, which was written before it.
  assert.match(proc.out.at(-1) ?? '', /Reverse proxy stopped$/, proc.out.slice(-3).join('\n'));
});

access('a line half written when the disk filled does not end at the top of the next file after a rotation: its rest is dropped and counted', async () => {
  // A small tmpfs fills inside a chunk of lines; logrotate moves the file and frees the space; SIGUSR1.
  // The rest of the torn line went first into the new file, a line without its start.
  const disk = join(ctx.dir, 'disk');
  mkdirSync(disk);
  if (process.getuid?.() !== 0 || spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', disk]).status !== 0) return; // needs root
  let proc: Proc | undefined;
  try {
    writeFileSync(join(disk, 'filler'), Buffer.alloc(56 * 1024));
    const log = join(disk, 'access.log');
    const started = await proxyWithConfig(write('t.yaml', `port: 0\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  access_log: ${log}\n  access_log_flush: 0\n`));
    proc = started.proc;
    const { port, admin: url } = started;
    const burst = (n: number) => runClient({ id: 'c', proxy: { host: LOCAL, port }, window: 256, packets: Array.from({ length: n }, (_, i) => ({ srcid: 'c', privPoliId: 'Z', payload: `m${i}` })) });
    await burst(200);
    await proc.waitFor(/cannot write the access log .*ENOSPC/);
    const old = readFileSync(log, 'utf8');
    assert.ok(!old.endsWith('\n'), 'the disk filled inside a line');
    renameSync(log, `${log}.1`);
    spawnSync('rm', [join(disk, 'filler')]);
    proc.kill('SIGUSR1');
    await proc.waitFor(/Reopened the access log/);
    await burst(2);
    const whole = /^\d{4}-\d\d-\d\dT\S+Z client=c addr=127\.0\.0\.1:\d+ policy=Z server=- seq=\d+ tries=0 latency_ms=[\d.]+ outcome=NO_SERVER queue_ms=0$/;
    await eventually(() => existsSync(log) && readFileSync(log, 'utf8').split('\n').filter(Boolean).length === 200 - old.split('\n').length + 2, 3000, 'the waiting lines and two more in the new file');
    for (const line of readFileSync(log, 'utf8').split('\n').filter(Boolean)) assert.match(line, whole);
    assert.match((await get(`${url}metrics`)).body, /revproxy_log_lines_dropped_total\{log="access"\} 1$/m);
  } finally {
    proc?.kill('SIGKILL');
    await proc?.exited;
    // Lazily: a file still open (a process of the test's own) must not leave the mount behind.
    spawnSync('umount', ['-l', disk]);
  }
});

const reload = fresh('SIGHUP');

reload('a SIGHUP while the proxy starts (its registry client loading) is remembered and applied once it listens, never unheard; one once it listens reloads', async () => {
  // Loading etcd's client takes a third of a second or more, after the admin endpoint is up: a
  // reload sent as soon as that line shows (a deploy script, systemd's ExecReload) went unheard,
  // then was said to be ignored; now it is done once the proxy listens.
  const etcd = await freePort();
  const proc = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--registry', `etcd://127.0.0.1:${etcd}`]);
  await proc.waitFor(/Admin endpoint on/);
  proc.kill('SIGHUP');
  await proc.waitFor(/Running the reverse proxy on port/);
  const reloaded = (): number => proc.out.filter((l) => /Reloaded the command line: no setting changed/.test(l)).length;
  await eventually(() => reloaded() === 1, 5000, `the SIGHUP applied:\n${proc.out.join('\n')}`);
  const said = proc.out.findIndex((l) => /SIGHUP while the proxy starts: the configuration is read again once it listens/.test(l));
  if (said >= 0) assert.ok(said < proc.out.findIndex((l) => /Running the reverse proxy/.test(l)), 'said while starting');
  proc.kill('SIGHUP');
  await eventually(() => reloaded() === 2, 5000, 'the second reload');
  assert.ok(proc.child.exitCode === null, 'SIGHUP did not end the process');
  // No file holds a secret here: nothing of the kind is said to be re-read.
  assert.not.ok(proc.out.some((l) => /Reloaded the command line: .*secrets re-read/.test(l)), proc.out.join('\n'));
});

reload('a signal sent while the CLI loads, before the proxy has a handler: SIGHUP is applied once it listens, SIGTERM and SIGINT drain (exit 0), SIGUSR1 opens no debugger', async () => {
  // Loading the bundle takes a fifth of a second: a SIGHUP then ended the proxy (exit 129), a SIGTERM
  // ended it without its drain. The fixture sends the signal as the CLI starts loading its code.
  const onLoad = (signal: NodeJS.Signals, args: string[]): Proc =>
    revproxy(['proxy', ...args], { env: { NODE_OPTIONS: `--import=${join(ROOT, 'spec/fixtures/signal-on-load.mjs')}`, SIGNAL_ON_LOAD: signal } });
  const cfg = write('h.yaml', 'port: 0\n');
  const hup = onLoad('SIGHUP', ['--config', cfg]);
  await hup.waitFor(/Reloaded .*h\.yaml: no setting changed/);
  const at = (re: RegExp): number => hup.out.findIndex((l) => re.test(l));
  assert.ok(at(/SIGHUP while the proxy starts/) >= 0 && at(/SIGHUP while the proxy starts/) < at(/Running the reverse proxy/), hup.out.join('\n'));
  assert.ok(at(/Running the reverse proxy/) < at(/Reloaded/), hup.out.join('\n'));
  assert.ok(hup.child.exitCode === null, 'SIGHUP did not end the process');
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const pidFile = join(ctx.dir, `${signal}.pid`);
    const stop = onLoad(signal, ['--config', cfg, '--pid-file', pidFile]);
    assert.is(await stop.exited, 0, `${signal}: ${stop.out.join('\n')}`);
    assert.match(stop.out.join('\n'), /Running the reverse proxy[^]*Draining[^]*Reverse proxy stopped/);
    assert.not.ok(existsSync(pidFile), 'the pid file is removed');
  }
  const usr1 = onLoad('SIGUSR1', ['--config', cfg]);
  await usr1.waitFor(/Running the reverse proxy/);
  await eventually(() => usr1.out.some((l) => /SIGUSR1/.test(l)), 3000, 'the SIGUSR1 handled');
  assert.not.ok(usr1.out.some((l) => /Debugger listening/.test(l)), usr1.out.join('\n'));
});

/** Why a process cannot be started as PID 1 of a new PID namespace here (`unshare --fork --pid`, root only), or undefined. */
function noPidNamespace(): string | undefined {
  const r = spawnSync('unshare', ['--fork', '--pid', '--mount-proc', 'true'], { stdio: 'ignore' });
  return r.error ? `unshare is not installed (${(r.error as NodeJS.ErrnoException).code})` : r.status !== 0 ? `unshare --fork --pid --mount-proc fails here (status ${r.status}: not root, or PID namespaces not allowed)` : undefined;
}

/** `revproxy ARGS` as PID 1 of a new PID namespace (a container without an init), and its process id outside it once it runs. */
async function asPid1(args: string[]): Promise<{ proc: Proc; pid: () => number }> {
  const proc = start('unshare', ['--fork', '--pid', '--mount-proc', process.execPath, ...nodeFlags(BIN), BIN, ...args]);
  // unshare --fork waits for its child, ignoring SIGTERM itself: the signal goes to the child.
  const child = (): number => Number(readFileSync(`/proc/${proc.child.pid}/task/${proc.child.pid}/children`, 'utf8').trim().split(/\s+/)[0]);
  return { proc, pid: child };
}

reload('as PID 1 (a container without an init): the proxy and a server each say once at start that orphans are not reaped and to run under an init, and drain and exit 0 on SIGTERM', async () => {
  const why = noPidNamespace();
  if (why) {
    console.log(`  skipped (PID 1): ${why}`);
    return;
  }
  const px = await asPid1(['proxy', '--port', '0']);
  const port = Number((await px.proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const srv = await asPid1(['server', '--id', 'p1', '--pp', '111', '--revproc', String(port)]);
  await srv.proc.waitFor(/Registered with the reverse proxy/);
  for (const { proc } of [px, srv]) {
    const lines = proc.out.filter((l) => /\bpid1\b|PID 1/.test(l));
    assert.is(lines.length, 1, proc.out.join('\n'));
    assert.match(lines[0]!, /warn.*Running as PID 1 .*not reaped.*docker run --init.*tini.*shareProcessNamespace/);
  }
  for (const { proc, pid } of [srv, px]) {
    process.kill(pid(), 'SIGTERM');
    assert.is(await proc.exited, 0, proc.out.join('\n'));
    assert.match(proc.out.join('\n'), /Draining[^]*stopped/);
  }
  // Not PID 1 (every other spec's process): no such line.
  const plain = revproxy(['proxy', '--port', '0']);
  await plain.waitFor(/Running the reverse proxy/);
  assert.not.ok(plain.out.some((l) => /PID 1/.test(l)), plain.out.join('\n'));
  plain.kill();
  await plain.exited;
});

reload('--pid-file: the process id to signal (logrotate: kill -USR1 $(cat FILE)), removed when the proxy stops; a file it cannot write stops the start', async () => {
  const pidFile = join(ctx.dir, 'revproxy.pid');
  const { proc } = await proxyWithConfig(write('p.yaml', 'port: 0\n'), ['--pid-file', pidFile]);
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  assert.is(pid, proc.child.pid);
  process.kill(pid, 'SIGHUP');
  await proc.waitFor(/Reloaded .*p\.yaml/);
  proc.kill();
  assert.is(await proc.exited, 0);
  assert.not.ok(existsSync(pidFile), 'removed on exit');
  const bad = revproxy(['proxy', '--port', '0', '--pid-file', join(ctx.dir, 'nowhere', 'x.pid')]);
  assert.is(await bad.exited, 1);
  assert.match(bad.out.join('\n'), /cannot write the --pid-file '.*x\.pid': its folder .*nowhere does not exist/);
});

reload('--pid-file: a second start that cannot take the port (the proxy started twice) leaves the running proxy\'s pid in the file', async () => {
  // It wrote its pid over the running one's before binding, then removed the file as it failed:
  // logrotate's `kill -USR1 $(cat FILE)` then reached no proxy, and the access log was never reopened.
  const pidFile = join(ctx.dir, 'twice.pid');
  const { proc, port } = await proxyWithConfig(write('t1.yaml', 'port: 0\n'), ['--pid-file', pidFile]);
  const again = revproxy(['proxy', '--port', String(port), '--pid-file', pidFile]);
  assert.is(await again.exited, 1);
  // Refused before it binds: the file names the running proxy (the port would be refused next).
  assert.match(again.out.join('\n'), /the --pid-file '.*twice\.pid' names process \d+, a revproxy proxy that is running/);
  assert.is(existsSync(pidFile) ? readFileSync(pidFile, 'utf8').trim() : 'removed', String(proc.child.pid));
  proc.kill();
  assert.is(await proc.exited, 0);
  assert.not.ok(existsSync(pidFile), 'removed by the proxy whose pid it holds');
});

reload('--pid-file: a second proxy on another port refuses a pid file that names a running proxy; a stale one (no such process, or not a proxy) is written over', async () => {
  // It wrote its pid over the running one's: logrotate's `kill -USR1 $(cat FILE)` then reopened
  // the second proxy's logs only, and the first, stopping, found the file not its own and left it.
  const pidFile = join(ctx.dir, 'held.pid');
  const { proc } = await proxyWithConfig(write('h1.yaml', 'port: 0\n'), ['--pid-file', pidFile]);
  const again = revproxy(['proxy', '--port', '0', '--pid-file', pidFile]);
  assert.is(await again.exited, 1, again.out.join('\n'));
  assert.match(again.out.join('\n'), new RegExp(`the --pid-file '.*held\\.pid' names process ${proc.child.pid}, a revproxy proxy that is running \\(.*revproxy\\.js proxy .*\\): stop it first, or give each proxy its own --pid-file`));
  assert.is(readFileSync(pidFile, 'utf8').trim(), String(proc.child.pid));
  // --check is run beside the running proxy (nginx -t): the pid file it would write is not its business.
  const check = revproxy(['proxy', '--check', '--port', '0', '--pid-file', pidFile]);
  assert.is(await check.exited, 0, check.out.join('\n'));
  proc.kill();
  assert.is(await proc.exited, 0);
  // Stale: a pid no process has, and a live process that is not a revproxy proxy (this spec's runner).
  for (const stale of ['4194304', String(process.pid)]) {
    writeFileSync(pidFile, `${stale}\n`);
    const { proc: next } = await proxyWithConfig(write('h2.yaml', 'port: 0\n'), ['--pid-file', pidFile]);
    assert.is(readFileSync(pidFile, 'utf8').trim(), String(next.child.pid), `over ${stale}`);
    next.kill();
    assert.is(await next.exited, 0);
  }
});

reload('--pid-file on a full disk (/dev/full: every write ENOSPC) stops the start at once, saying the disk is full', async () => {
  const full = revproxy(['proxy', '--port', '0', '--pid-file', '/dev/full']);
  // It used to say "ENOSPC (ENOSPC: no space left on device, write)" - had it got that far: on the way
  // out it read the pid file back to see whose it was, and /dev/full never ends, so it hung, its memory growing.
  await full.waitFor(/cannot write the --pid-file '\/dev\/full': the disk it is on is full \(ENOSPC\): free some space there, or name a file on another disk/, 5000);
  assert.is(await full.exited, 1, full.out.join('\n'));
});

reload('under load: a limit and a token change, a revoked server is drained out, an invalid file is refused; 0 requests lost', async () => {
  const cfg = (limits: string, tokens: string): string => `port: 0\nadmin:\n  listen: 127.0.0.1:0\n${limits}tokens:\n${tokens}`;
  const both = '  P: secret-of-P-1\n  SLOW: secret-of-SLOW\n  R: secret-of-R-1\n';
  const file = write('r.yaml', cfg('', both));
  const { proc, port, admin } = await proxyWithConfig(file);
  await server('p1', 'P', port, { token: 'secret-of-P-1' });
  await server('p2', 'P', port, { token: 'secret-of-P-1' });
  const slow = await server('slow', 'SLOW', port, { token: 'secret-of-SLOW', delayMs: 300 });
  await server('r1', 'R', port, { token: 'secret-of-R-1' });
  await sleep(200);
  const burst = async (): Promise<string[]> => {
    const rs = await runClient({ id: 'b', proxy: { host: LOCAL, port }, window: 60, packets: Array.from({ length: 60 }, (_, i) => ({ srcid: 'b', privPoliId: 'SLOW', payload: `s${i}` })) });
    return rs.map((r) => (r.correct ? 'ok' : String(r.error)));
  };
  assert.ok((await burst()).every((o) => o === 'ok'), 'before: the slow server takes all 60 at once');

  // Load on policy P in rounds until told to stop, so it spans every reload.
  let stop = false;
  const total = { sent: 0, acks: 0, unanswered: 0, duplicates: 0, wrongHashes: 0, errors: {} as Record<string, number>, rounds: 0 };
  const load = (async () => {
    while (!stop) {
      const r = await runLoad({ ports: [port], policy: 'P', connections: 4, perConnection: 500, window: 16, deadlineMs: 30_000 });
      total.rounds++;
      total.sent += r.sent;
      total.acks += r.acks;
      total.unanswered += r.unanswered;
      total.duplicates += r.duplicates;
      total.wrongHashes += r.wrongHashes;
      for (const [k, n] of Object.entries(r.errors)) total.errors[k] = (total.errors[k] ?? 0) + n;
    }
  })();
  // Stopped however the steps end: a step that fails must not leave the load running (the process would never exit).
  try {
    await sleep(300);
    // A limit and a token: a server takes 40 requests at once and nothing waits (the load on P keeps
    // 64 in flight over two servers, so it fits); R's secret is gone.
    writeFileSync(file, cfg('max_server_inflight: 40\nqueue_limit: 0\n', '  P: secret-of-P-1\n  SLOW: secret-of-SLOW\n'));
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded .*applied max_server_inflight, queue_limit, tokens/);
    await proc.waitFor(/Server id r1 left privacy policy R: its registration was revoked by a reload/);
    const after = await burst();
    assert.is(after.filter((o) => o === 'ok').length, 40, `after: ${after.join(' ')}`);
    assert.is(after.filter((o) => o === 'OVERLOADED').length, 20);
    // An invalid file is refused; the running settings stay.
    writeFileSync(file, 'port: 0\nmax_server_inflight: lots\n');
    proc.kill('SIGHUP');
    await proc.waitFor(/Reload refused, still running the previous configuration: .*r\.yaml:2:22: max_server_inflight: expected a count/);
    assert.is((await burst()).filter((o) => o === 'OVERLOADED').length, 20, 'the previous limits still apply');
    // A whole round after the last reload, however slow the machine: the load sees what the reloads left
    // (it asked for two rounds in all, and a loaded machine ran every step inside the first).
    const roundsThen = total.rounds;
    await eventually(() => total.rounds > roundsThen, 60_000, 'a round of load after the last reload');
  } finally {
    stop = true;
    await load;
  }
  assert.is(total.unanswered, 0, JSON.stringify(total));
  assert.is(total.duplicates, 0);
  assert.is(total.wrongHashes, 0);
  assert.equal(total.errors, {}, 'no request of the loaded policy failed');
  assert.is(total.acks, total.rounds * 2000);
  assert.ok(total.rounds >= 1, `rounds of load: ${total.rounds}`);
  const metrics = (await get(`${admin}metrics`)).body;
  assert.match(metrics, /revproxy_reloads_total\{result="applied"\} 1/);
  assert.match(metrics, /revproxy_reloads_total\{result="refused"\} 1/);
  assert.ok(proc.child.exitCode === null, 'still running');
  void slow;
});

reload('without a config file, SIGHUP re-reads the tokens file; a changed listen address is reported as needing a restart', async () => {
  const tokens = write('tokens.yaml', 'A: secret-of-A-1\n');
  const proc = revproxy(['proxy', '--port', '0', '--tokens', tokens]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  await server('a1', 'A', port, { token: 'secret-of-A-1' });
  writeFileSync(tokens, 'A: secret-of-A-2\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Server id a1 left privacy policy A: its registration was revoked by a reload \(wrong token\)/);

  const file = write('c.yaml', 'port: 0\nhost: 127.0.0.1\n');
  const p2 = revproxy(['proxy', '--config', file]);
  await p2.waitFor(/Running the reverse proxy/);
  writeFileSync(file, 'port: 0\nhost: 0.0.0.0\n');
  p2.kill('SIGHUP');
  await p2.waitFor(/host changed in .*c\.yaml but takes effect only after a restart/);
  const reloaded = p2.out.find((l) => /Reloaded/.test(l)) ?? '';
  assert.not.match(reloaded, /no setting changed/, 'the info line does not contradict the warning');
  assert.match(reloaded, /nothing applied: host needs a restart/);
});

reload('an empty file at SIGHUP (a writer that truncates, then writes) is refused and the running secrets stay; a reload that removes a secret says plainly what is open now', async () => {
  const file = write('e.yaml', 'port: 0\ntoken: a-long-registration-secret\nadmin:\n  listen: 127.0.0.1:0\n  token: a-long-admin-secret\n');
  const { proc, port, admin: url } = await proxyWithConfig(file);
  const refused = (): number => proc.out.filter((l) => /Reload refused/.test(l)).length;
  for (const [n, text] of [[1, ''], [2, '# being rewritten\n\n  \n']] as const) {
    writeFileSync(file, text);
    proc.kill('SIGHUP');
    await eventually(() => refused() === n, 5000, `reload ${n} refused:\n${proc.out.join('\n')}`);
    const line = proc.out.filter((l) => /Reload refused/.test(l))[n - 1]!;
    assert.match(line, /Reload refused, still running the previous configuration: .*e\.yaml:1:1: the file sets nothing \(it is empty, or only comments\)/);
    assert.match(line, /write \{\} for every setting at its default/);
    assert.match(line, /write the file atomically \(a temporary file renamed over it\)/);
  }
  assert.not.ok(proc.out.some((l) => /Reloaded/.test(l)), proc.out.join('\n'));
  assert.is((await get(`${url}metrics`)).status, 401, 'the admin token stays');
  const intruder = await server('intruder', '111', port).then(() => 'registered', (err: Error) => err.message);
  assert.match(intruder, /refused the registration \(UNAUTHORIZED\)/, 'a server with no token is refused');
  // Every secret removed on purpose: applied, and said plainly, each.
  writeFileSync(file, 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*e\.yaml: applied token, admin\.token/);
  await proc.waitFor(/this reload removed every registration secret \(token, tokens\): any peer that can connect to 127\.0\.0\.1:\d+ can now register as a server of any privacy policy/);
  await proc.waitFor(/this reload removed admin\.token: \/metrics on http:\/\/127\.0\.0\.1:\d+\/ now answers anyone who can connect, with no token/);
  assert.is((await get(`${url}metrics`)).status, 200);
  // A reload that keeps them open says nothing more.
  const warned = proc.out.filter((l) => /this reload removed/.test(l)).length;
  writeFileSync(file, 'port: 0\ntimeout: 4000\nadmin:\n  listen: 127.0.0.1:0\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied timeout/);
  await sleep(50);
  assert.is(proc.out.filter((l) => /this reload removed/.test(l)).length, warned);
});

/** Write `text` to the proxy's config `file`, SIGHUP it, and return its reload line (its warn lines, written just after, come too). */
async function hupWith(proc: Proc, file: string, text: string): Promise<string> {
  const n = proc.out.filter((l) => /Reloaded/.test(l)).length;
  writeFileSync(file, text);
  proc.kill('SIGHUP');
  await eventually(() => proc.out.filter((l) => /Reloaded/.test(l)).length === n + 1, 5000, 'the reload');
  await sleep(50);
  return proc.out.filter((l) => /Reloaded/.test(l))[n]!;
}

reload('removing the admin: section on SIGHUP: the reload line says what it applied and what waits for a restart, and /metrics does what it says', async () => {
  const file = write('a.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  token: a-long-admin-secret\n');
  const { proc, admin: url } = await proxyWithConfig(file);
  const auth = { headers: { authorization: 'Bearer a-long-admin-secret' } };
  const hup = (text: string): Promise<string> => hupWith(proc, file, text);
  // The endpoint stays until a restart, and keeps its token meanwhile: it said "applied admin.token" and kept demanding it.
  const removed = await hup('port: 0\n');
  assert.not.match(removed, /applied .*admin\.token/, removed);
  assert.match(removed, /nothing applied: admin\.listen, admin\.token need a restart/);
  assert.ok(proc.out.some((l) => /admin\.listen, admin\.token changed in .*a\.yaml but take effect only after a restart/.test(l)), proc.out.join('\n'));
  assert.is((await get(`${url}metrics`)).status, 401);
  assert.is((await get(`${url}metrics`, auth)).status, 200);
  // Back, without its token: that is a change, applied now (it said "no setting changed" and opened /metrics).
  const back = await hup('port: 0\nadmin:\n  listen: 127.0.0.1:0\n');
  assert.match(back, /applied admin\.token/, back);
  assert.is((await get(`${url}metrics`)).status, 200);
  assert.ok(proc.out.some((l) => /this reload removed admin\.token/.test(l)), proc.out.join('\n'));
  // With a token again: applied at once.
  assert.match(await hup('port: 0\nadmin:\n  listen: 127.0.0.1:0\n  token: another-admin-secret\n'), /applied admin\.token/);
  assert.is((await get(`${url}metrics`)).status, 401);
  assert.is((await get(`${url}metrics`, { headers: { authorization: 'Bearer another-admin-secret' } })).status, 200);
});

reload('a secret changes with no outage: the proxy accepts the old and the new one (a list), the servers move, the old is dropped; a reload that revokes a whole policy says so', async () => {
  // One secret per policy: a reload to the new one revoked every server of the policy at once (1,373 NO_SERVER in
  // 4.5 s in a fleet), until they registered again with it; `"111": [old, new]` was refused as not a string.
  const tokens = write('rotate.yaml', 'A: secret-of-A-old\n');
  const proc = revproxy(['proxy', '--port', '0', '--tokens', tokens]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const servers = [await server('a1', 'A', port, { token: 'secret-of-A-old' }), await server('a2', 'A', port, { token: 'secret-of-A-old' })];
  let stop = false;
  const total = { acks: 0, errors: {} as Record<string, number> };
  const load = (async () => {
    while (!stop) {
      const r = await runLoad({ ports: [port], policy: 'A', connections: 2, perConnection: 200, window: 8, deadlineMs: 30_000 });
      total.acks += r.acks;
      for (const [k, n] of Object.entries(r.errors)) total.errors[k] = (total.errors[k] ?? 0) + n;
    }
  })();
  try {
    writeFileSync(tokens, 'A: [secret-of-A-old, secret-of-A-new]\n');
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded .*; secrets re-read; no connection closed/);
    // Each server in turn: stopped (it drains), and started again with the new secret.
    for (const [i, id] of ['a1', 'a2'].entries()) {
      await servers[i]!.stop();
      servers[i] = await server(id, 'A', port, { token: 'secret-of-A-new' });
    }
    writeFileSync(tokens, 'A: secret-of-A-new\n');
    proc.kill('SIGHUP');
    await eventually(() => proc.out.filter((l) => /Reloaded .*; secrets re-read; no connection closed/.test(l)).length === 2, 5000, 'the second reload, closing nothing');
    await sleep(300);
  } finally {
    stop = true;
    await load;
  }
  assert.equal(total.errors, {}, `no request failed (${total.acks} answered)`);
  assert.not.ok(proc.out.some((l) => /revoked/.test(l)), proc.out.join('\n'));
  // Without the list: every server of the policy revoked, and said so.
  writeFileSync(tokens, 'A: secret-of-A-other\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*; secrets re-read; revoked 2 server registration\(s\) whose secret no longer passes/);
  await proc.waitFor(/warning: The reload's secrets revoked every server of privacy policy A \(2\): its requests are refused NO_SERVER .*tokens: \{"A": \[OLD, NEW\]\}/);
});

reload('a secret or a list of them, in the file and in a tokens file; an empty list or a short secret in one is refused', () => {
  const cfg = parseConfig('token: [a-long-secret-1, a-long-secret-2]\ntokens:\n  "111": [a-long-secret-3, a-long-secret-4]\n  "222": a-long-secret-5\n', join(ctx.dir, 'x.yaml'));
  assert.equal(cfg.token, ['a-long-secret-1', 'a-long-secret-2']);
  assert.equal(cfg.tokens, { 111: ['a-long-secret-3', 'a-long-secret-4'], 222: 'a-long-secret-5' });
  assert.throws(() => parseConfig('tokens:\n  "111": []\n', join(ctx.dir, 'x.yaml')), /tokens\.111: expected a list of at least 1/);
  assert.throws(() => parseConfig('tokens:\n  "111": [a-long-secret-3, short]\n', join(ctx.dir, 'x.yaml')), /tokens\.111\[1\]: a secret needs at least 8 characters/);
  assert.equal({ ...loadTokens(write('list.yaml', '"111": [a-long-secret-1, a-long-secret-2]\n"222": a-long-secret-3\n')) }, { 111: ['a-long-secret-1', 'a-long-secret-2'], 222: 'a-long-secret-3' });
  assert.throws(() => loadTokens(write('empty.yaml', '"111": []\n')), /the secret of policy '111' must be a string, or a list of them/);
  assert.throws(() => loadTokens(write('short.yaml', '"111": [a-long-secret-1, short]\n')), /a secret of policy '111' is shorter than 8 characters/);
});

reload("a mapping of free names (tokens: policy: secret) keeps every key the file gives as its own, __proto__ too (it was set as the object's prototype, and the entry lost unsaid)", () => {
  const cfg = parseConfig('tokens:\n  __proto__: a-long-secret-1\n  "111": a-long-secret-2\n', join(ctx.dir, 'x.yaml'));
  assert.equal(Object.keys(cfg.tokens ?? {}), ['111', '__proto__']); // an index-like key first, as JavaScript orders them
  assert.is(Object.getOwnPropertyDescriptor(cfg.tokens, '__proto__')?.value, 'a-long-secret-1');
});

reload('policies, ids and secrets are taken as the file writes them: 0111 is policy "0111", not 111, in the config and in a tokens file; a secret YAML reads as a number is refused with a hint that quotes what was written', () => {
  // Found by an operator's probe: `--check` passed, and /readyz waited for 111 and 12345678901234567000,
  // a server of `--pp 0111` was refused as having no secret, and `token: 0x1234abcd` was refused
  // with the hint to write "305441741" - a secret the servers do not have.
  const file = join(ctx.dir, 'x.yaml');
  const cfg = parseConfig('admin:\n  listen: 127.0.0.1:0\n  ready_policies: [0111, 12345678901234567890, 007, "222", 1_000]\ntokens:\n  0111: a-long-secret-1\n  0x10: a-long-secret-2\n', file);
  assert.equal(cfg.admin?.ready_policies, ['0111', '12345678901234567890', '007', '222', '1_000']);
  assert.equal(Object.keys(cfg.tokens ?? {}).sort(), ['0111', '0x10']);
  const hint = (text: string): string => {
    try {
      parseConfig(text, file);
    } catch (err) {
      return (err as Error).message;
    }
    return 'accepted';
  };
  assert.match(hint('token: 0x1234abcd\n'), /YAML reads it as a number; quote it to make it text \("0x1234abcd"\)/);
  assert.match(hint('tokens:\n  "111": 0123456789\n'), /quote it to make it text \("0123456789"\)/);
  const tokensFile = write('tokens.yaml', '0111: 0123456789\n"222": secret-of-222\n0x10: true-secret\n');
  assert.equal({ ...loadTokens(tokensFile) }, { '0111': '0123456789', '222': 'secret-of-222', '0x10': 'true-secret' });
});

reload('a file setting the command line overrides (a flag, REVPROXY_TOKEN) is said at start, and a reload that changes it in the file says it keeps the command line\'s', async () => {
  // An operator's probe: REVPROXY_TOKEN from the unit's environment file beside `token:` in the file;
  // the file's secret was refused, and rotating it in the file then reloading said "no setting changed".
  // admin.listen is named as the file writes it, once: it said `admin.listen.host, admin.listen.port`, keys no file has.
  const file = write('o.yaml', 'port: 0\ntoken: file-secret-1\ntimeout: 4000\nretries: 1\nadmin:\n  listen: 127.0.0.1:0\n');
  const proc = revproxy(['proxy', '--config', file, '--timeout', '3000', '--admin', '127.0.0.1:0'], { env: { REVPROXY_TOKEN: 'env-secret-1' } });
  await proc.waitFor(/Running the reverse proxy on port/);
  const start = proc.out.find((l) => /config_overridden|sets timeout, token/.test(l)) ?? '';
  assert.match(start, /warning: .*o\.yaml sets timeout, token, admin\.listen, which the command line \(its flags, or REVPROXY_\* variables\) sets too: the command line's values are the ones running, and a reload keeps them/, proc.out.join('\n'));
  assert.not.match(start, /admin\.listen\./);
  assert.not.match(proc.out.join('\n'), /env-secret-1|file-secret-1/, 'secrets never logged');
  writeFileSync(file, 'port: 0\ntoken: file-secret-2\ntimeout: 4000\nretries: 2\nadmin:\n  listen: 127.0.0.1:1\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded/);
  assert.match(proc.out.join('\n'), /warning: token, admin\.listen changed in .*o\.yaml, but the command line \(its flags, or REVPROXY_\* variables\) sets them: running with the command line's values/);
  assert.match(proc.out.find((l) => /Reloaded/.test(l)) ?? '', /applied retries/);
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0);
});

reload('/metrics says whether the last reload was applied for as long as it matters (revproxy_config_last_reload_successful), when the running configuration was read, and which build runs', async () => {
  // An operator's probe: the alert on an increase of refused reloads over 15 minutes cleared while the
  // proxy still ran its old configuration, and nothing said which version ran.
  const file = write('g.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n');
  const { proc, admin } = await proxyWithConfig(file);
  const scrape = async (): Promise<string> => (await get(`${admin}metrics`)).body;
  const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  let m = await scrape();
  const revision = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim().slice(0, 12);
  assert.match(m, new RegExp(`^revproxy_build_info\\{version="${version.replace(/\./g, '\\.')}",revision="${revision}",node="${process.version}"\\} 1$`, 'm'));
  assert.match(m, /^revproxy_config_last_reload_successful 1$/m);
  const started = Number(/^revproxy_config_last_reload_success_timestamp_seconds (\d+)$/m.exec(m)?.[1]);
  assert.ok(Math.abs(started - Date.now() / 1000) < 60, String(started));
  writeFileSync(file, 'port: 0\nadmin:\n  listen: 127.0.0.1:0\ntimeout: fast\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused/);
  m = await scrape();
  assert.match(m, /^revproxy_config_last_reload_successful 0$/m);
  assert.match(m, new RegExp(`^revproxy_config_last_reload_success_timestamp_seconds ${started}$`, 'm'));
  await sleep(1100);
  writeFileSync(file, 'port: 0\nadmin:\n  listen: 127.0.0.1:0\ntimeout: 4000\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded/);
  m = await scrape();
  assert.match(m, /^revproxy_config_last_reload_successful 1$/m);
  assert.ok(Number(/^revproxy_config_last_reload_success_timestamp_seconds (\d+)$/m.exec(m)?.[1]) > started);
});

reload('a reload compares the settings as they run, defaults applied: a default written out is no change, nor is the file put back after a change that needed a restart', async () => {
  const at = (text: string) => parseConfig(text, join(ctx.dir, 'x.yaml'));
  assert.equal(changes(at('port: 0\nlog:\n  level: info\n'), at('port: 0\nlog:\n  level: info\n  format: text\n')), []);
  assert.equal(changes(at('port: 0\n'), at('port: 0\nhost: 127.0.0.1\nprobes_per_second: 100\ntimeout: 5000\ntry_timeout: 1667\n')), []);
  assert.equal(changes(at('port: 0\n'), at('port: 0\nlog:\n  format: json\n')), [{ key: 'log.format', reload: 'restart' }]);
  const file = write('p.yaml', 'port: 0\nlog:\n  access_log: a.log\n');
  const { proc } = await proxyWithConfig(file);
  const reloads = (): string[] => proc.out.filter((l) => /Reloaded|changed in/.test(l));
  const hup = (text: string): Promise<string> => hupWith(proc, file, text);
  // The value already running, written out (it said "log.format needs a restart").
  assert.match(await hup('port: 0\nlog:\n  access_log: a.log\n  format: text\n'), /no setting changed/);
  assert.match(await hup('port: 0\nlog:\n  access_log: b.log\n  format: json\n'), /nothing applied: log\.format, log\.access_log need a restart/);
  // The file as the proxy runs it, back: every reload after warned that log.format (or log.access_log) changed.
  const warned = reloads().length;
  assert.match(await hup('port: 0\nlog:\n  access_log: a.log\n'), /no setting changed/);
  assert.match(await hup('port: 0\nlog:\n  access_log: a.log\n'), /no setting changed/);
  assert.is(reloads().length, warned + 2, reloads().join('\n'));
});

reload('a SIGHUP while draining says it applies nothing (the drain keeps its settings), instead of "Reloaded ... applied"', async () => {
  const cfg = write('d.yaml', 'port: 0\ntimeout: 8000\ndrain_timeout: 8000\n');
  const { proc, port } = await proxyWithConfig(cfg);
  await server('slow', 'P', port, { delayMs: 1500 });
  const answer = runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] });
  await sleep(300); // the request is at the slow server
  proc.kill('SIGTERM');
  await proc.waitFor(/Draining/);
  writeFileSync(cfg, 'port: 0\ntimeout: 8000\ndrain_timeout: 100\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/reload ignored/i);
  assert.not.ok(proc.out.some((l) => /Reloaded/.test(l)), proc.out.join('\n'));
  assert.ok((await answer)[0]!.correct, 'the request in flight was answered: the drain kept its 8 s');
  assert.is(await proc.exited, 0);
});

reload('a second SIGTERM or SIGINT during the drain stops at once, and cleanly: the request in flight is answered SHUTTING_DOWN, the pid file removed, exit 0', async () => {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    const pidFile = join(ctx.dir, `${signal}.pid`);
    const { proc, port } = await proxyWithConfig(write('t.yaml', 'port: 0\ntimeout: 20000\ndrain_timeout: 20000\n'), ['--pid-file', pidFile]);
    let reached!: () => void;
    const atServer = new Promise<void>((r) => (reached = r));
    await server(`s-${signal}`, 'P', port, { handler: (_p, c) => new Promise((r) => { reached(); c.signal.addEventListener('abort', () => r('late')); }) });
    // hold: false: the proxy's own answer is what this checks; a client that holds would send the request again once a proxy is back.
    const answer = runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }], timeoutMs: 20000, hold: false });
    await atServer;
    proc.kill(signal);
    await proc.waitFor(/Draining/);
    // Past the window in which the same signal is a copy of the first (a process group's).
    await sleep(SAME_SIGNAL_MS + 50);
    proc.kill(signal);
    // It used to end at once on Node's default (exit 130 or 143): the client lost its connection
    // unanswered, and the pid file stayed behind, naming a process id the system may give another.
    assert.is(await proc.exited, 0, proc.out.join('\n'));
    assert.match(proc.out.join('\n'), new RegExp(`${signal} again: stopping now, without waiting for the drain[^]*Stopped before the drain ended: answered 1 request\\(s\\) SHUTTING_DOWN`));
    assert.is((await answer)[0]!.error, 'SHUTTING_DOWN');
    assert.not.ok(existsSync(pidFile), 'the pid file is removed');
  }
});

reload('the same stop signal twice at once (GNU timeout signals the command, then its process group) is one: the drain goes on and the request in flight is answered', async () => {
  const { proc, port } = await proxyWithConfig(write('t2.yaml', 'port: 0\ntimeout: 20000\ndrain_timeout: 20000\n'));
  let reached!: () => void;
  const atServer = new Promise<void>((r) => (reached = r));
  await server('s-twice', 'P', port, { handler: async () => (reached(), await sleep(500), 'done') });
  const answer = runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }], timeoutMs: 20000, hold: false, verify: false });
  await atServer;
  // Sent back to back the kernel may merge them into one; 20 ms apart, as a copy that comes after the first was handled.
  proc.kill('SIGTERM');
  await sleep(20);
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0, proc.out.join('\n'));
  const [a] = await answer;
  assert.equal([a!.error, String(a!.answer)], [undefined, 'done'], proc.out.join('\n'));
  assert.not.ok(proc.out.some((l) => /again: stopping now/.test(l)), proc.out.join('\n'));
});

const admin = fresh('the admin endpoint');

admin('/healthz, /readyz (503 while draining) and /metrics (GET and HEAD): counters move, process metrics, bounded labels', async () => {
  const { proc, port, admin: url } = await proxyWithConfig(write('m.yaml', 'port: 0\ndrain_timeout: 5000\nadmin:\n  listen: 127.0.0.1:0\n'));
  assert.equal(await get(`${url}healthz`), { status: 200, body: '{"status":"ok"}\n', type: 'application/json' });
  assert.equal(await get(`${url}readyz`), { status: 200, body: '{"ready":true}\n', type: 'application/json' });
  const head = await fetch(`${url}metrics`, { method: 'HEAD' });
  assert.is(head.status, 200);
  assert.is(await head.text(), '');
  assert.is((await fetch(`${url}metrics`, { method: 'POST' })).status, 405);

  // s1 answers after 500 ms and counts the requests it has taken, so the drain below starts with one in flight there.
  let s1Took = 0;
  const slow: Handler = async (payload, hctx) => {
    s1Took++;
    await sleep(500);
    return sha1Handler(payload, hctx);
  };
  await server('s1', 'P', port, { handler: slow });
  await server('s2', 'P', port);
  const count = (text: string): number => Number(/revproxy_requests_total\{policy="P",server="s2",outcome="ok"\} (\d+)/.exec(text)?.[1] ?? 0);
  const before = count((await get(`${url}metrics`)).body);
  await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: Array.from({ length: 4 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `x${i}` })) });
  await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'NONE', payload: 'x' }] });
  const text = (await get(`${url}metrics`)).body;
  assert.is(count(text) - before, 2, 'the counter moved by the two answers s2 gave');
  assert.match(text, /^process_cpu_seconds_total [\d.e+-]+$/m);
  assert.match(text, /^revproxy_connections\{role="registration"\} 2$/m);
  assert.match(text, /^revproxy_received_bytes_total\{role="client"\} [1-9]\d*$/m);
  assert.match(text, /^revproxy_pool_members\{policy="P",state="serving",source="direct"\} 2$/m);

  // Every label value of the proxy's own metrics is from its known set.
  const known: Record<string, (v: string) => boolean> = {
    outcome: (v) => v === 'ok' || (ERROR_CODES as readonly string[]).includes(v),
    code: (v) => (ERROR_CODES as readonly string[]).includes(v),
    reason: (v) => (EJECT_REASONS as readonly string[]).includes(v) || (REFUSE_REASONS as readonly string[]).includes(v) || (TLS_FAILURES as readonly string[]).includes(v),
    role: (v) => (ROLES as readonly string[]).includes(v),
    state: (v) => (MEMBER_STATES as readonly string[]).includes(v),
    source: (v) => v === 'direct' || v === 'registry',
    direction: (v) => v === 'out' || v === 'back',
    log: (v) => v === 'main' || v === 'access',
    result: (v) => v === 'applied' || v === 'refused',
    // revproxy_build_info's: one series, this build's.
    version: (v) => v === (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version,
    revision: (v) => /^[0-9a-f]{12}$/.test(v),
    node: (v) => v === process.version,
    policy: (v) => ['P', 'NONE', OTHER].includes(v),
    server: (v) => ['', 's1', 's2', OTHER].includes(v),
    le: (v) => v === '+Inf' || Number.isFinite(Number(v)),
  };
  for (const line of text.split('\n').filter((l) => l.startsWith('revproxy_'))) {
    for (const [, name, value] of line.matchAll(/(\w+)="([^"]*)"/g)) {
      const ok = known[name!];
      assert.ok(ok, `label ${name} is one of the known labels (${line})`);
      assert.ok(ok!(value!), `label ${name}="${value}" is in its known set (${line})`);
    }
  }

  // Draining: a request is in flight at the slow server, so the drain lasts; /readyz says so.
  // One of the two goes to s1 (round robin). A fixed 100 ms wait here let a loaded machine send
  // SIGTERM before either had arrived: the drain ended at once and the admin port with it.
  const took = s1Took;
  const slowRequest = runClient({ id: 'd', proxy: { host: LOCAL, port }, packets: [{ srcid: 'd', privPoliId: 'P', payload: 'a' }, { srcid: 'd', privPoliId: 'P', payload: 'b' }] });
  await eventually(() => s1Took > took, 5000, 'a request in flight at the slow server');
  proc.kill('SIGTERM');
  let ready = await get(`${url}readyz`);
  for (let i = 0; i < 50 && ready.status === 200; i++) ready = await get(`${url}readyz`);
  assert.is(ready.status, 503);
  assert.equal(JSON.parse(ready.body), { ready: false, reasons: [{ check: 'proxy', code: 'DRAINING', message: 'the proxy is draining: it takes no new connections' }] });
  assert.is((await get(`${url}healthz`)).status, 200, 'alive while draining');
  assert.ok((await slowRequest).every((r) => r.correct), 'the requests in flight were answered');
  assert.is(await proc.exited, 0);
});

admin('with a token, /metrics needs it and the health checks do not', async () => {
  const { admin: url } = await proxyWithConfig(write('t.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  token: an-admin-secret\n'));
  assert.is((await get(`${url}metrics`)).status, 401);
  assert.is((await get(`${url}metrics`, { headers: { authorization: 'Bearer wrong-secret' } })).status, 401);
  assert.is((await get(`${url}metrics`, { headers: { authorization: 'Bearer an-admin-secret' } })).status, 200);
  // The scheme is case-insensitive (RFC 7235).
  assert.is((await get(`${url}metrics`, { headers: { authorization: 'bearer an-admin-secret' } })).status, 200);
  assert.is((await get(`${url}healthz`)).status, 200);
  assert.is((await get(`${url}readyz`)).status, 200);
});

interface Readyz { status: number; ready: boolean; reasons?: Array<Record<string, string>> }

/** /readyz's answer once `want` holds for it (a probe polls it; the proxy is another process). */
async function readyzUntil(url: string, want: (r: Readyz) => boolean, what: string): Promise<Readyz> {
  const end = Date.now() + 5000;
  for (;;) {
    const res = await get(`${url}readyz`);
    const r: Readyz = { status: res.status, ...JSON.parse(res.body) };
    if (want(r)) return r;
    if (Date.now() > end) throw new Error(`/readyz is still ${res.status} ${res.body.trim()}: waited for ${what}`);
    await sleep(20);
  }
}

/** Each reason as `check code policy`. */
const reasonsOf = (r: Readyz): string[] => (r.reasons ?? []).map((x) => `${x.check} ${x.code} ${x.policy}`);
const notReadyFor = (...policies: string[]) => (r: Readyz): boolean => r.status === 503 && reasonsOf(r).join() === policies.map((p) => `pool NO_SERVER ${p}`).join();

admin('revproxy_max_connections: the limit its port keeps to (max_connections, or what the open-files limit leaves room for), and its change on SIGHUP', async () => {
  const file = write('limit.yaml', 'port: 0\nmax_connections: 300\nadmin:\n  listen: 127.0.0.1:0\n');
  const limit = async (url: string): Promise<string | undefined> => /^revproxy_max_connections (\d+)$/m.exec((await get(`${url}metrics`)).body)?.[1];
  const { proc, admin: url } = await proxyWithConfig(file);
  assert.is(await limit(url), '300');
  writeFileSync(file, 'port: 0\nmax_connections: 200\nadmin:\n  listen: 127.0.0.1:0\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded/);
  assert.is(await limit(url), '200', 'a reload changes it');
  // ulimit -n 512 leaves room for 448 connections: a max_connections of 1000 keeps to that.
  writeFileSync(file, 'port: 0\nmax_connections: 1000\nadmin:\n  listen: 127.0.0.1:0\n');
  const { admin: lowUrl } = await proxyWithConfig(file, [], 512);
  assert.is(await limit(lowUrl), String(fileRoom(512)));
});

admin('revproxy_connections_refused_total counts the connections its port refused as they came, by reason: max_connections, per_peer, and conn_rate (max_conn_rate_per_peer, set by a reload)', async () => {
  const file = write('refused.yaml', 'port: 0\nmax_connections: 3\nmax_conns_per_peer: 2\nadmin:\n  listen: 127.0.0.1:0\n');
  const { proc, port, admin: url } = await proxyWithConfig(file);
  const refused = async (): Promise<string> => [...(await get(`${url}metrics`)).body.matchAll(/^revproxy_connections_refused_total\{reason="(\w+)"\} (\d+)$/gm)].map((m) => `${m[1]}=${m[2]}`).sort().join(' ');
  assert.is(await refused(), 'conn_rate=0 max_connections=0 per_peer=0 tls_handshakes=0', 'every reason at 0 before any');
  const open: Socket[] = [];
  const closedAtOnce = async (from: string): Promise<void> => {
    const s = await rawConnect(port, from);
    s.on('error', () => {});
    s.resume();
    await new Promise((r) => s.once('close', r));
  };
  try {
    for (const from of ['127.0.0.1', '127.0.0.1', '127.0.0.2']) {
      open.push(await rawConnect(port, from));
      // Each is counted once the proxy has accepted it (its connection count), before the next comes.
      await eventually(async () => /^revproxy_connections\{role="unknown"\} (\d+)$/m.exec((await get(`${url}metrics`)).body)?.[1] === String(open.length), 3000, `${open.length} open`);
    }
    await closedAtOnce('127.0.0.3');
    await proc.waitFor(/Refused a connection: 3 connections are open \(max_connections\)/);
    open.pop()!.destroy();
    await eventually(async () => /^revproxy_connections\{role="unknown"\} 2$/m.test((await get(`${url}metrics`)).body), 3000, 'two open');
    await closedAtOnce('127.0.0.1');
    await proc.waitFor(/Refused a connection from 127\.0\.0\.1: it has 2 open \(max_conns_per_peer\)/);
    assert.is(await refused(), 'conn_rate=0 max_connections=1 per_peer=1 tls_handshakes=0');
    // A reload sets a rate: a third connection from one address within the second is closed as it comes.
    writeFileSync(file, 'port: 0\nmax_connections: 3\nmax_conns_per_peer: 2\nmax_conn_rate_per_peer: 2\nadmin:\n  listen: 127.0.0.1:0\n');
    proc.kill('SIGHUP');
    await proc.waitFor(/Reloaded/);
    for (const s of open.splice(0)) s.destroy();
    await eventually(async () => /^revproxy_connections\{role="unknown"\} 0$/m.test((await get(`${url}metrics`)).body), 3000, 'none open');
    for (let i = 0; i < 2; i++) open.push(await rawConnect(port, '127.0.0.4'));
    await closedAtOnce('127.0.0.4');
    await proc.waitFor(/Refused a connection from 127\.0\.0\.4: it opens more than 2 a second \(max_conn_rate_per_peer\)/);
    assert.is(await refused(), 'conn_rate=1 max_connections=1 per_peer=1 tls_handshakes=0');
  } finally {
    for (const s of open) s.destroy();
  }
});

admin('connections to the admin endpoint that send nothing cannot take the descriptors the proxy needs, nor the port from probes: past 64 the oldest idle one makes room (a warn line), the rest close after 10 s idle, and its clients, servers and health probes are served meanwhile', async () => {
  // Unbounded, and never closed by Node while they sent nothing, 400 of them took every descriptor a proxy with ulimit -n 256
  // had: its clients' connections were reset, servers could not register, /healthz did not answer, and no line said why.
  const file = write('crowd.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n');
  const { proc, port, admin: url } = await proxyWithConfig(file, [], 256);
  const crowd = await Promise.all(Array.from({ length: 400 }, () => rawConnect(Number(new URL(url).port))));
  let closed = 0;
  for (const s of crowd) {
    s.on('error', () => {});
    s.on('close', () => closed++);
    s.resume(); // read, so that the proxy's end is seen
  }
  try {
    await eventually(() => closed === 400 - 64, 10_000, `all but 64 closed at once (${closed})`);
    await proc.waitFor(/warning: Closed an idle connection to the admin endpoint from 127\.0\.0\.1:\d+ to take a new one: 64 are open, the most it keeps, and the oldest with no request under way makes room/);
    // A probe is served while the crowd holds its 64: it takes the oldest one's place (the newest was refused, and 19 of
    // 20 probes failed while a peer kept 64 open, reopening each one closed: a liveness probe failing so restarts the proxy).
    for (let i = 0; i < 5; i++) assert.is((await get(`${url}healthz`)).status, 200, `probe ${i} while the crowd holds the port`);
    await server('s1', 'P', port);
    const results = await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: Array.from({ length: 20 }, (_, i) => ({ srcid: 'c1', privPoliId: 'P', payload: `m${i}` })) });
    assert.is(results.filter((r) => r.correct).length, 20, 'the proxy serves its clients and a new server while the crowd holds its 64');
    await eventually(() => closed === 400, 20_000, `the 64 that sent nothing closed once idle 10 s (${closed})`);
    assert.is((await get(`${url}healthz`)).status, 200);
  } finally {
    for (const s of crowd) s.destroy();
  }
});

admin('the links to servers count against the open-files limit: a registration whose link would find no descriptor is refused, saying so, and the port keeps the room the links hold (no EMFILE)', async () => {
  // Each registration comes with a link. With ulimit -n 256 the port took 150 registrations (the 192 it may keep), and
  // their links' dials failed EMFILE: each server logged unreachable, and past them new connections were closed unseen.
  const file = write('fds.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n');
  const { proc, port, admin: url } = await proxyWithConfig(file, [], 256);
  const room = fileRoom(256);
  const servers = await Promise.all(Array.from({ length: 150 }, (_, i) => startServer({ id: `s${i}`, policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, waitForRegistration: false })));
  ctx.servers.push(...servers);
  await proc.waitFor(new RegExp(`Refused setup from .* the proxy has no file descriptor for its link: \\d+ connections and \\d+ links to servers fill the ${room} its open-files limit leaves room for \\(ulimit -n 256\\) but the ${clientRoom(room)} kept for clients`));
  // The refused ones dial again and again, as real servers do; a crowd of them dialling at once may hold every slot the
  // port has left for a moment (1 run in 4 refused the client's one connection), like any crowd under max_connections.
  // They go before the client, which is not what this test is about. Each server is asked once the proxy's count of
  // links agrees with the servers' own: one whose acceptance was still on its way was killed as unregistered, and in
  // 1 run in 3 that was every one the proxy had (the client got NO_SERVER).
  const registered = (): ServerHandle[] => servers.filter((s) => s.actor.getSnapshot().context.registered.length > 0);
  const upstream = async (): Promise<number> => Number(/^revproxy_connections\{role="upstream"\} (\d+)$/m.exec((await get(`${url}metrics`)).body)?.[1]);
  await eventually(async () => { const n = registered().length; return n > 0 && n === (await upstream()); }, 15000, "the servers' registrations and the proxy's links to agree");
  const keep = new Set(registered());
  for (const s of servers) if (!keep.has(s)) s.kill();
  // The killed ones' connections may still fill the port when the client dials (Node counts a connection until its
  // 'close'): it goes once the proxy has seen them close.
  const registrations = async (): Promise<number> => Number(/^revproxy_connections\{role="registration"\} (\d+)$/m.exec((await get(`${url}metrics`)).body)?.[1]);
  await eventually(async () => (await registrations()) === keep.size, 10000, 'the killed servers\' connections to close');
  const results = await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: Array.from({ length: 20 }, (_, i) => ({ srcid: 'c1', privPoliId: 'P', payload: `m${i}` })) });
  assert.is(results.filter((r) => r.correct).length, 20, 'clients are served');
  const text = (await get(`${url}metrics`)).body;
  const gauge = (re: RegExp): number => Number(re.exec(text)?.[1]);
  const links = gauge(/^revproxy_connections\{role="upstream"\} (\d+)$/m);
  assert.ok(links > 0, 'servers registered');
  assert.is(gauge(/^revproxy_max_connections (\d+)$/m), room - links, 'the port keeps the room the links hold');
  // Each registered server holds two descriptors; 96 of them took all 192, and every client was refused (2 CI runs in 6).
  assert.ok(gauge(/^revproxy_connections\{role="registration"\} (\d+)$/m) + links + clientRoom(room) <= room, `the links leave ${clientRoom(room)} for clients:\n${text}`);
  assert.not.ok(proc.out.some((l) => /EMFILE/.test(l)), proc.out.filter((l) => /EMFILE/.test(l)).slice(0, 3).join('\n'));
});

admin("a link that finds no descriptor says it is this process's open-files limit, not the server", () => {
  const err = (code: string): NodeJS.ErrnoException => Object.assign(new Error(`connect ${code} 127.0.0.1:9`), { code });
  assert.match(describeLinkError(err('EMFILE'), '127.0.0.1'), /^this process has no file descriptor left \(EMFILE, ulimit -n \d+\): raise its open-files limit \(docs\/CONFIG\.md, "The open-files limit"\), or lower max_connections$/);
  assert.match(describeLinkError(err('ENFILE'), '127.0.0.1'), /^the system has no file descriptor left \(ENFILE/);
  assert.is(describeLinkError(err('ECONNREFUSED'), '127.0.0.1'), 'connection refused');
  assert.is(describeLinkError(err('EHOSTUNREACH'), '127.0.0.1'), 'connect EHOSTUNREACH 127.0.0.1:9');
});

admin('--ready-policies: /readyz is 503 while a listed policy has no server serving, naming each such policy, and 200 once every one has', async () => {
  // A proxy restarted with servers registered directly was ready as soon as it listened,
  // before they came back: a rolling restart waiting on /readyz got NO_SERVER meanwhile.
  const { port, admin: url } = await proxyWithConfig(write('r.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n'), ['--ready-policies', 'a,b']);
  const first = await get(`${url}readyz`);
  assert.is(first.status, 503, 'no server of a or b yet');
  assert.equal(JSON.parse(first.body), { ready: false, reasons: ['a', 'b'].map((p) => ({ check: 'pool', code: 'NO_SERVER', policy: p, message: `no server of privacy policy ${p} is registered with this proxy; its requests get NO_SERVER until one registers` })) });
  await server('a1', 'a', port);
  await readyzUntil(url, notReadyFor('b'), 'a serving, b not');
  const b1 = await server('b1', 'b', port);
  const ready = await readyzUntil(url, (r) => r.status !== 503, 'a and b each serving');
  assert.equal(ready, { status: 200, ready: true });
  await b1.stop();
  await readyzUntil(url, notReadyFor('b'), 'b1 left');
});

admin('--ready-policies: /metrics shows a listed policy with no server as serving 0, before one registers and after the last one left', async () => {
  // Its pool's series went with its last member: an alert on revproxy_pool_members{state="serving"} == 0
  // (docs/revproxy.rules.yml) never fired for a policy whose every server had left.
  const { port, admin: url } = await proxyWithConfig(write('rm.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n'), ['--ready-policies', 'a']);
  const serving = async (): Promise<string | undefined> => /^revproxy_pool_members\{policy="a",state="serving",source="direct"\} (\d+)$/m.exec((await get(`${url}metrics`)).body)?.[1];
  assert.is(await serving(), '0', 'no server registered yet');
  const a1 = await server('a1', 'a', port);
  await readyzUntil(url, (r) => r.status !== 503, 'a serving');
  assert.is(await serving(), '1');
  await a1.stop();
  await readyzUntil(url, notReadyFor('a'), 'a1 left');
  assert.is(await serving(), '0', 'its last server left');
});

admin('admin.ready_policies in the file: a reload applies it at once; without admin.listen it is refused, as is a policy no server could register', async () => {
  const file = write('rp.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  ready_policies: [a]\n');
  const { proc, port, admin: url } = await proxyWithConfig(file);
  await server('a1', 'a', port);
  assert.equal(await readyzUntil(url, (r) => r.status !== 503, 'a serving'), { status: 200, ready: true });
  writeFileSync(file, 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  ready_policies: [a, 222]\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied admin\.ready_policies/);
  const after = await get(`${url}readyz`);
  assert.ok(notReadyFor('222')({ status: after.status, ...JSON.parse(after.body) }), `policy 222, listed now, has no server: ${after.status} ${after.body}`);
  const alone = write('alone.yaml', 'port: 0\nadmin:\n  ready_policies: [a]\n');
  const check = revproxy(['proxy', '--check', '--config', alone]);
  assert.is(await check.exited, 1);
  assert.match(check.out.join('\n'), /admin\.ready_policies: ready policies were given without the admin endpoint that reports them \(\/readyz\): add --admin HOST:PORT/);
  const flag = revproxy(['proxy', '--check', '--ready-policies', 'a']);
  assert.is(await flag.exited, 2, 'from flags alone, options that do not fit together');
  assert.match(flag.out.join('\n'), /ready policies were given without the admin endpoint/);
  // The same clash on SIGHUP names the file's line, as at start: it said "the configuration" and no line.
  writeFileSync(file, 'port: 0\nadmin:\n  ready_policies: [a]\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused, still running the previous configuration: .*rp\.yaml:3:19: admin\.ready_policies: ready policies were given without the admin endpoint/);
  const long = write('long.yaml', `admin:\n  listen: 127.0.0.1:0\n  ready_policies: ["${'x'.repeat(257)}"]\n`);
  const l = revproxy(['proxy', '--check', '--config', long]);
  assert.is(await l.exited, 1);
  assert.match(l.out.join('\n'), /long\.yaml:3:\d+: admin\.ready_policies\[0\]: a privacy policy is 1 to 256 characters, got 257/);
  const empty = revproxy(['proxy', '--check', '--admin', '0', '--ready-policies', 'a,,b']);
  assert.is(await empty.exited, 2);
  assert.match(empty.out.join('\n'), /--ready-policies takes privacy policies separated by commas \(e\.g\. 111,222\): a privacy policy is 1 to 256 characters, got 0 in 'a,,b'/);
});

admin('admin.metrics_departed_policies: /metrics keeps that many policies that left, past it ends the least recent (counted, said once); a reload changes it at once; out of range or without admin.listen it is refused', async () => {
  // The bound was 1000 policies, fixed: a peer registering under a new policy at each scrape held about 23,000 series.
  const file = write('md.yaml', 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  metrics_departed_policies: 1\n');
  const { proc, port, admin: url } = await proxyWithConfig(file);
  const policies = ['d1', 'd2', 'd3'];
  const held = await Promise.all(policies.map((p) => server(`${p}-s`, p, port)));
  const serving = (body: string, policy: string): number => Number(new RegExp(`^revproxy_pool_members\\{policy="${policy}",state="serving",source="direct"\\} (\\d+)$`, 'm').exec(body)?.[1] ?? 0);
  const shown = (body: string): string[] => policies.filter((p) => body.includes(`{policy="${p}",state="serving"`));
  const dropped = (body: string): number => Number(/^revproxy_departed_policies_dropped_total (\d+)$/m.exec(body)?.[1]);
  const scraped = async (want: number): Promise<boolean> => {
    const body = (await get(`${url}metrics`)).body;
    return policies.every((p) => serving(body, p) === want);
  };
  await eventually(() => scraped(1), 5000, 'each policy serving');
  await Promise.all(held.map((s) => s.stop()));
  // Once a scrape has found every one gone, the next keeps one: the latest to leave.
  await eventually(() => scraped(0), 5000, 'a scrape finding each gone');
  let body = (await get(`${url}metrics`)).body;
  assert.is(shown(body).length, 1, `one departed policy kept: ${shown(body).join(', ')}`);
  assert.is(dropped(body), 2);
  await proc.waitFor(/warning: \/metrics keeps the series of at most 1 privacy policies that have left .*the series of policy d\d ended before their hour/);
  writeFileSync(file, 'port: 0\nadmin:\n  listen: 127.0.0.1:0\n  metrics_departed_policies: 0\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reloaded .*applied admin\.metrics_departed_policies/);
  body = (await get(`${url}metrics`)).body;
  assert.equal(shown(body), [], 'none kept now');
  assert.is(dropped(body), 3);
  for (const [text, why] of [
    ['admin:\n  listen: 127.0.0.1:0\n  metrics_departed_policies: 1001\n', /md-bad\.yaml:3:\d+: admin\.metrics_departed_policies: expected at most 1000 \(as many as the policies \/metrics labels\), got 1001/],
    ['admin:\n  listen: 127.0.0.1:0\n  metrics_departed_policies: -1\n', /md-bad\.yaml:3:\d+: admin\.metrics_departed_policies: expected a count of policies \(a whole number, at least 0\), got -1/],
    ['admin:\n  metrics_departed_policies: 10\n', /admin\.metrics_departed_policies: a bound on the departed policies \/metrics keeps was given without the admin endpoint that serves \/metrics: add --admin HOST:PORT/],
  ] as const) {
    const check = revproxy(['proxy', '--check', '--config', write('md-bad.yaml', text)]);
    assert.is(await check.exited, 1, text);
    assert.match(check.out.join('\n'), why);
  }
  const flag = revproxy(['proxy', '--check', '--admin', '0', '--metrics-departed-policies', '1001']);
  assert.is(await flag.exited, 2);
  assert.match(flag.out.join('\n'), /--metrics-departed-policies must be at most 1000, got '1001'/);
});

/** Debian's promtool (package prometheus; .ci/run installs it): Prometheus's own check of the text format and its naming rules. */
const PROMTOOL = '/usr/bin/promtool';

/** `promtool check metrics` on `text`: its exit status and what it said (0 and nothing when the exposition is valid and lint-clean). */
function promtoolCheck(text: string): { status: number; said: string } {
  assert.ok(existsSync(PROMTOOL), `${PROMTOOL} is missing: install Debian's prometheus package (apt-get install prometheus), as .ci/run does`);
  const r = spawnSync(PROMTOOL, ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status ?? 1, said: `${r.stdout}${r.stderr}`.trim() };
}

admin('promtool check metrics passes /metrics after traffic, errors, retries, an ejection, bad input, a reload and odd policy and server ids', async () => {
  const file = write('p.yaml', 'port: 0\neject_after: 2\nadmin:\n  listen: 127.0.0.1:0\n');
  const { proc, port, admin: url } = await proxyWithConfig(file);
  assert.equal(promtoolCheck((await get(`${url}metrics`)).body), { status: 0, said: '' }, 'at start');
  const odd = ['quote"d', 'back\\slash', 'new\nline', 'ünï €', '# HELP x'];
  for (const [i, p] of odd.entries()) await server(`s"${i}\\`, p, port);
  ctx.servers.push(await startServer({ id: 'failing', policy: 'F', listenPort: 0, proxy: { host: LOCAL, port }, behaviour: 'fail' }));
  await server('good', 'F', port);
  await sleep(200);
  for (const p of [...odd, 'F', 'F', 'F', 'F', 'NONE']) await runClient({ id: 'c"\\', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c"\\', privPoliId: p, payload: 'x' }] });
  const bad = await rawConnect(port);
  bad.end(Buffer.from([0x7f, 0xff, 0xff, 0xff]));
  writeFileSync(file, 'port: 0\nmax_server_inflight: lots\n');
  proc.kill('SIGHUP');
  await proc.waitFor(/Reload refused/);
  const text = (await get(`${url}metrics`)).body;
  assert.match(text, /revproxy_retries_total\{policy="F",server="failing"/, 'a retry is counted');
  assert.match(text, /revproxy_requests_total\{policy="new\\nline"/, 'the odd names are there, escaped');
  assert.equal(promtoolCheck(text), { status: 0, said: '' }, 'after traffic');
});

config.run();
access.run();
reload.run();
admin.run();
