/**
 * What an operator installs beside the program (README, "Operations", "The systemd unit and the
 * alerting rules"): docs/revproxy.service, checked by Debian's systemd-analyze and run as systemd
 * would run it (this machine has no systemd as PID 1: its commands run here, under its
 * environment and limits, with the file system read-only but for its LogsDirectory, as
 * ProtectSystem=strict leaves it); and docs/revproxy.rules.yml, checked and unit-tested by
 * Debian's promtool, every metric, label and value it names read from a running proxy's /metrics.
 * docs/revproxy.logrotate is run with Debian's logrotate against a proxy under load.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import * as assert from 'uvu/assert';
import { parse } from 'yaml';
import { runClient, startServer } from '../actors/index.js';
import { DEFAULT_MAX_CONNECTIONS, defaultDrainTimeoutMs } from '../actors/server.js';
import { fileRoom } from '../actors/port-limits.js';
import { fileLimits, freePort } from '../bench/procs.js';
import { DEFAULTS } from '../config/proxy.js';
import { OTHER } from '../inspector/metrics.js';
import { ERROR_CODES } from '../transport/errors.js';
import { eventually, LOCAL, sleep } from './helpers.js';
import { BIN, freshSuite, revproxy, ROOT, start, type Fresh, type Proc } from './procs.js';

const UNIT = join(ROOT, 'docs/revproxy.service');
const RULES = join(ROOT, 'docs/revproxy.rules.yml');
const RULES_TEST = join(ROOT, 'spec/fixtures/revproxy.rules.test.yml');
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';
const PROMTOOL = '/usr/bin/promtool';

const ctx: Fresh = { dir: '', servers: [] };
const fresh = (name: string) => freshSuite(name, 'revproxy-kit-', ctx);

/** Debian's tool at `path`, run with `args`: its status and all it said. */
function tool(path: string, pkg: string, args: string[]): { status: number; said: string } {
  assert.ok(existsSync(path), `${path} is missing: install Debian's ${pkg} package (apt-get install ${pkg}), as .ci/run does`);
  const r = spawnSync(path, args, { encoding: 'utf8' });
  return { status: r.status ?? 1, said: `${r.stdout}${r.stderr}`.trim() };
}

/** A unit file's [Service] section: each key with its values in order (a key may repeat, as ExecReload does). */
function service(text: string): Map<string, string[]> {
  const keys = new Map<string, string[]>();
  let section = '';
  for (const line of text.split('\n').map((l) => l.trim())) {
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const head = /^\[(.+)\]$/.exec(line);
    if (head) section = head[1]!;
    else if (section === 'Service') {
      const eq = line.indexOf('=');
      const key = line.slice(0, eq);
      keys.set(key, [...(keys.get(key) ?? []), line.slice(eq + 1)]);
    }
  }
  return keys;
}

const one = (unit: Map<string, string[]>, key: string): string => {
  const v = unit.get(key);
  assert.ok(v?.length === 1, `the unit sets ${key} once`);
  return v![0]!;
};

const systemd = fresh('docs/revproxy.service');

/** The installed paths the units name, and where this spec puts each; a template's %i is `instance`. */
function places(dir: string): Array<[string, string]> {
  return [
    ['/usr/local/lib/node_modules/revproxy/cli/revproxy.js', BIN],
    ['/etc/revproxy/revproxy.yaml', join(dir, 'revproxy.yaml')],
    ['/etc/revproxy/revproxy.env', join(dir, 'revproxy.env')],
    ['/etc/revproxy/server-%i.env', join(dir, 'server-%i.env')],
  ];
}
const relocate = (text: string, dir: string, instance = '%i'): string => places(dir).reduce((t, [from, to]) => t.split(from).join(to), text).split('%i').join(instance);

/** The environment systemd gives a unit's commands: its PATH, then its EnvironmentFile= and Environment= lines. */
function unitEnv(unit: Map<string, string[]>): string[] {
  const env: string[] = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin']; // systemd's, for the shebang's `env node`
  for (const file of unit.get('EnvironmentFile') ?? []) env.push(...readFileSync(file.replace(/^-/, ''), 'utf8').split('\n').filter((l) => /^\w+=/.test(l)));
  for (const line of unit.get('Environment') ?? []) env.push(...line.split(/\s+/));
  return env;
}

/**
 * A unit's command run as systemd runs it: under its environment (a `$NAME` of it split into words,
 * as systemd does), its LimitNOFILE (at most the hard limit this spec runs under; systemd sets it as
 * root), and ProtectSystem=strict: every path read-only but `writable` (and /dev, /proc, /sys).
 */
function sandboxed(unit: Map<string, string[]>, command: string, writable: string): Proc {
  const env = unitEnv(unit);
  const files = Math.min(Number(one(unit, 'LimitNOFILE')), fileLimits().hard);
  const vars = new Map(env.map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  const words = command.split(/\s+/).flatMap((w) => (/^\$\w+$/.test(w) ? (vars.get(w.slice(1)) ?? '').split(/\s+/).filter(Boolean) : [w]));
  return start('/usr/bin/unshare', ['-m', '/bin/sh', '-c', `mount --bind "$0" "$0" && mount -o remount,bind,ro / && ulimit -n ${files} && exec env -i "$@"`, writable, ...env, ...words]);
}

/** The bundle made now, if a source is newer: in the read-only file system it could not be written. */
async function bundled(): Promise<void> {
  const made = start(process.execPath, ['-e', "import('./cli/bundle.mjs').then((b) => b.bundle())"]);
  assert.is(await made.exited, 0, made.out.join('\n'));
}

/** Waits until `n` requests are in flight at the proxy whose admin endpoint is `admin`. */
async function untilInflight(admin: string | undefined, n: string, headers: Record<string, string> = {}): Promise<void> {
  const inflight = async (): Promise<string | undefined> => /^revproxy_inflight_requests (\d+)$/m.exec(await (await fetch(`${admin}metrics`, { headers })).text())?.[1];
  for (const end = Date.now() + 3000; (await inflight()) !== n; await sleep(10)) assert.ok(Date.now() < end, 'the second request reached the server within 3 s');
}

/** SIGTERM (the unit's KillSignal): the process must exit 0 within its TimeoutStopSec. */
async function stopped(unit: Map<string, string[]>, proc: Proc): Promise<void> {
  proc.kill(one(unit, 'KillSignal') as NodeJS.Signals);
  const timeout = new Promise<string>((resolve) => setTimeout(() => resolve('still running at TimeoutStopSec'), Number(one(unit, 'TimeoutStopSec')) * 1000).unref());
  assert.is(await Promise.race([proc.exited, timeout]), 0, 'exit 0: Restart=on-failure does not restart it');
}

/** `systemctl reload`: the unit's ExecReload commands in turn, each of which must exit 0 ($MAINPID the process's). */
async function reload(unit: Map<string, string[]>, proc: Proc, writable: string): Promise<void> {
  for (const command of unit.get('ExecReload')!) {
    const step = command.includes('$MAINPID') ? start('/bin/sh', ['-c', command.replace('$MAINPID', String(proc.child.pid))]) : sandboxed(unit, command, writable);
    assert.is(await step.exited, 0, `${command}: ${step.out.join('\n')}`);
  }
}

systemd('systemd-analyze verify finds nothing to say; the limits fit the defaults; a stop is SIGTERM, a reload SIGHUP', () => {
  // systemd-analyze refuses a command that is not there: the unit's, pointed at this checkout.
  const copy = join(ctx.dir, 'revproxy.service');
  writeFileSync(copy, relocate(readFileSync(UNIT, 'utf8'), ctx.dir));
  assert.equal(tool(SYSTEMD_ANALYZE, 'systemd', ['verify', copy]), { status: 0, said: '' });
  const unit = service(readFileSync(UNIT, 'utf8'));
  assert.ok(fileRoom(Number(one(unit, 'LimitNOFILE'))) >= DEFAULTS.maxConnections, `LimitNOFILE leaves room for the default max_connections, ${DEFAULTS.maxConnections}`);
  assert.ok(Number(one(unit, 'TimeoutStopSec')) * 1000 > DEFAULTS.drainTimeoutMs, `TimeoutStopSec is longer than the default drain, ${DEFAULTS.drainTimeoutMs} ms`);
  assert.is(one(unit, 'KillSignal'), 'SIGTERM');
  assert.is(one(unit, 'Restart'), 'on-failure');
  assert.is(unit.get('ExecReload')!.at(-1), '/bin/kill -HUP $MAINPID');
  assert.match(one(unit, 'ExecStart'), /^\/usr\/local\/lib\/node_modules\/revproxy\/cli\/revproxy\.js proxy /, 'cli/revproxy.js itself, for the memory flags of its first line');
});

systemd("its ExecStart serves under its environment, its LimitNOFILE and a read-only file system; ExecReload reloads; SIGTERM drains within TimeoutStopSec and exits 0", async () => {
  const unit = service(relocate(readFileSync(UNIT, 'utf8'), ctx.dir));
  const logs = join(ctx.dir, 'logs'); // its LogsDirectory, /var/log/revproxy
  mkdirSync(logs);
  writeFileSync(join(ctx.dir, 'revproxy.yaml'), `port: 0\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  access_log: ${logs}/access.log\n`);
  writeFileSync(join(ctx.dir, 'revproxy.env'), 'REVPROXY_ADMIN_TOKEN=kit-admin-secret\n');
  const files = Math.min(Number(one(unit, 'LimitNOFILE')), fileLimits().hard);
  await bundled();
  // ExecStartPre checks the file (`systemctl start` fails at once on one that is not valid).
  const pre = sandboxed(unit, one(unit, 'ExecStartPre'), logs);
  assert.is(await pre.exited, 0, pre.out.join('\n'));
  assert.match(pre.out.join('\n'), /revproxy\.yaml is valid/);
  const proc = sandboxed(unit, one(unit, 'ExecStart'), logs);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proc.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean);
  assert.is((await fetch(`${admin}metrics`, { headers: { authorization: 'Bearer kit-admin-secret' } })).status, 200, 'REVPROXY_ADMIN_TOKEN came from its EnvironmentFile');
  const ulimit = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${proc.child.pid}/limits`, 'utf8'))?.[1];
  assert.is(ulimit, String(files));
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, delayMs: 200 }));
  const ask = async (): Promise<string | undefined> => (await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] }))[0]!.error ?? 'ok';
  assert.is(await ask(), 'ok');

  await reload(unit, proc, logs);
  await proc.waitFor(/Reloaded/);

  const inFlight = ask();
  await untilInflight(admin, '1', { authorization: 'Bearer kit-admin-secret' });
  await stopped(unit, proc);
  assert.is(await inFlight, 'ok', 'the request in flight was answered');
  await eventually(() => readFileSync(`${logs}/access.log`, 'utf8').split('\n').filter((l) => / outcome=ok queue_ms=[\d.]+$/.test(l)).length === 2, 3000, 'both requests in the access log');
});

const SERVER_UNIT = join(ROOT, 'docs/revproxy-server@.service');
const serverUnit = fresh('docs/revproxy-server@.service');

serverUnit('systemd-analyze verify finds nothing to say; the limits fit the defaults; a stop is SIGTERM, a reload SIGHUP (a server reads its TLS files again on it)', () => {
  const copy = join(ctx.dir, 'revproxy-server@.service');
  writeFileSync(copy, relocate(readFileSync(SERVER_UNIT, 'utf8'), ctx.dir));
  assert.equal(tool(SYSTEMD_ANALYZE, 'systemd', ['verify', copy]), { status: 0, said: '' });
  const unit = service(readFileSync(SERVER_UNIT, 'utf8'));
  assert.ok(fileRoom(Number(one(unit, 'LimitNOFILE'))) >= DEFAULT_MAX_CONNECTIONS, `LimitNOFILE leaves room for the default --max-connections, ${DEFAULT_MAX_CONNECTIONS}`);
  assert.ok(Number(one(unit, 'TimeoutStopSec')) * 1000 > defaultDrainTimeoutMs(), `TimeoutStopSec is longer than the default drain, ${defaultDrainTimeoutMs()} ms`);
  assert.is(one(unit, 'KillSignal'), 'SIGTERM');
  assert.is(one(unit, 'Restart'), 'on-failure');
  assert.equal(unit.get('ExecReload'), ['/bin/kill -HUP $MAINPID'], 'systemctl reload sends SIGHUP, on which a server renews its TLS files (README, "Renewed certificates")');
  assert.match(one(unit, 'ExecStart'), /^\/usr\/local\/lib\/node_modules\/revproxy\/cli\/revproxy\.js server --id %i /, 'cli/revproxy.js itself, the instance its id');
});

serverUnit("an instance's ExecStart, its flags from its EnvironmentFile, registers and answers under its limits and a read-only file system; ExecReload, without TLS files, changes nothing; SIGTERM drains within TimeoutStopSec and exits 0", async () => {
  const unit = service(relocate(readFileSync(SERVER_UNIT, 'utf8'), ctx.dir, '100'));
  const proxy = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--token', 'kit-registration-secret']);
  const port = Number((await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proxy.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean);
  writeFileSync(join(ctx.dir, 'server-100.env'), `REVPROXY_SERVER_ARGS=--pp P --revproc 127.0.0.1:${port} --delay 200\nREVPROXY_TOKEN=kit-registration-secret\n`);
  await bundled();
  const proc = sandboxed(unit, one(unit, 'ExecStart'), ctx.dir); // it writes nothing; ctx.dir stands for a path it may
  await proc.waitFor(/Registered with the reverse proxy/);
  const ulimit = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${proc.child.pid}/limits`, 'utf8'))?.[1];
  assert.is(ulimit, String(Math.min(Number(one(unit, 'LimitNOFILE')), fileLimits().hard)));
  const ask = async (): Promise<string | undefined> => (await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] }))[0]!.error ?? 'ok';
  assert.is(await ask(), 'ok', 'server 100 (the instance) serves policy P (its EnvironmentFile)');

  await reload(unit, proc, ctx.dir);
  await proc.waitFor(/nothing to reload/);
  assert.is(await ask(), 'ok', 'still serving after the reload');

  const inFlight = ask();
  await untilInflight(admin, '1');
  await stopped(unit, proc);
  assert.is(await inFlight, 'ok', 'the request in flight was answered');
});

const LOGROTATE_CONF = join(ROOT, 'docs/revproxy.logrotate');
const LOGROTATE = '/usr/sbin/logrotate';
const logrotate = fresh('docs/revproxy.logrotate');

logrotate("Debian's logrotate, run with it five times against a proxy under load, says nothing, and every request's line is in one file, once", async () => {
  const text = readFileSync(LOGROTATE_CONF, 'utf8');
  assert.match(text, /^\s*if systemctl is-active --quiet revproxy\.service; then systemctl kill -s USR1 revproxy\.service; fi$/m, 'the postrotate line of the unit: SIGUSR1');
  assert.ok(existsSync(LOGROTATE), `${LOGROTATE} is missing: install Debian's logrotate package (apt-get install logrotate), as .ci/run does`);
  const logs = join(ctx.dir, 'logs'); // the unit's LogsDirectory, /var/log/revproxy
  mkdirSync(logs);
  const proc = revproxy(['proxy', '--port', '0', '--access-log', join(logs, 'access.log')]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port } }));
  // This machine has no systemd as PID 1: the signal the unit's `systemctl kill` sends, to the process.
  const conf = join(ctx.dir, 'revproxy.logrotate');
  writeFileSync(conf, text.split('/var/log/revproxy').join(logs).replace(/^(\s*)if systemctl is-active.*$/m, `$1kill -USR1 ${proc.child.pid}`), { mode: 0o644 });
  const load = revproxy(['load', '--revproc', `127.0.0.1:${port}`, '--policy', 'P', '-c', '4', '-R', '2000', '-d', '6s', '--json', '--no-progress']);
  for (let i = 0; i < 5; i++) {
    await sleep(900);
    const run = start(LOGROTATE, ['-f', '-s', join(ctx.dir, 'logrotate.state'), conf]);
    assert.is(await run.exited, 0, run.out.join('\n'));
    assert.equal(run.out.filter(Boolean), [], 'logrotate said nothing');
  }
  assert.is(await load.exited, 0, load.out.join('\n'));
  const report = JSON.parse(load.out.join('\n')) as { sent: number; ok: number; errors: Record<string, number> };
  assert.equal(report.errors, {});
  proc.kill('SIGTERM');
  assert.is(await proc.exited, 0);
  const files = readdirSync(logs).sort();
  assert.ok(files.includes('access.log.1') && files.some((f) => f.endsWith('.gz')), `the newest rotated file kept as it is, older ones compressed: ${files.join(' ')}`);
  const lines = files.flatMap((f) => {
    const bytes = readFileSync(join(logs, f));
    return (f.endsWith('.gz') ? gunzipSync(bytes) : bytes).toString('utf8').split('\n').filter(Boolean);
  });
  assert.ok(lines.every((l) => / client=load addr=127\.0\.0\.1:\d+ policy=P server=s1 seq=\d+ tries=1 latency_ms=[\d.]+ outcome=ok queue_ms=[\d.]+$/.test(l)), 'whole lines only');
  assert.is(lines.length, report.sent, 'one line for each request sent, none lost and none twice');
});

const rules = fresh('docs/revproxy.rules.yml');

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const ruleList = (): Rule[] => (parse(readFileSync(RULES, 'utf8')) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);

rules('promtool check rules passes it, promtool test rules its unit tests; each rule waits (for:), has a severity and says what to do', () => {
  const check = tool(PROMTOOL, 'prometheus', ['check', 'rules', RULES]);
  assert.is(check.status, 0, check.said);
  const test = tool(PROMTOOL, 'prometheus', ['test', 'rules', RULES_TEST]);
  assert.is(test.status, 0, test.said);
  for (const r of ruleList()) {
    assert.ok(r.for, `${r.alert} has for:`);
    assert.ok(['critical', 'warning'].includes(r.labels?.severity ?? ''), `${r.alert} has a severity`);
    assert.ok(r.annotations?.summary && r.annotations.description, `${r.alert} has a summary and a description`);
  }
});

/** PromQL words that are not metric names. */
const PROMQL = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset']);
/** Labels Prometheus adds to what it scrapes, and its own series. */
const SCRAPE_LABELS = new Set(['job', 'instance']);
const SCRAPE_SERIES = new Set(['up']);

/** Each selector of a PromQL expression: the metric's name and its matchers. */
function selectors(expr: string): Array<{ name: string; matchers: Array<{ label: string; op: string; value: string }> }> {
  const bare = expr.replace(/\[[^\]]*\]/g, '').replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, '');
  const found = [];
  for (const m of bare.matchAll(/([a-zA-Z_:][\w:]*)(?![\w:])\s*(\{[^}]*\})?(?!\s*\()/g)) {
    if (PROMQL.has(m[1]!) || /^\d/.test(m[1]!)) continue;
    const matchers = [...(m[2] ?? '').matchAll(/(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"/g)].map(([, label, op, value]) => ({ label: label!, op: op!, value: value! }));
    found.push({ name: m[1]!, matchers });
  }
  return found;
}

rules('every metric, label and label value it names is one a running proxy exports', async () => {
  // A dead registry address: the registry's metrics are there (revproxy_registry_up 0), etcd is not needed.
  const proc = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--registry', `etcd://127.0.0.1:${await freePort()}`]);
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proc.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean);
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port } }));
  await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] });
  const text = await (await fetch(`${admin}metrics`)).text();
  const typed = new Set([...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!));
  const labels = new Map<string, Map<string, Set<string>>>();
  for (const [, name, body] of text.matchAll(/^([a-zA-Z_:][\w:]*)\{([^}]*)\} /gm)) {
    const byLabel = labels.get(name!) ?? new Map<string, Set<string>>();
    labels.set(name!, byLabel);
    for (const [, label, value] of body!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) byLabel.set(label!, (byLabel.get(label!) ?? new Set()).add(value!));
  }
  // Values a proxy exports only once it has seen them: the error codes, and the policy past the bound.
  const known: Record<string, string[]> = { outcome: ['ok', ...ERROR_CODES], policy: [OTHER] };
  for (const r of ruleList()) {
    for (const { name, matchers } of selectors(r.expr)) {
      if (SCRAPE_SERIES.has(name)) continue;
      assert.ok(typed.has(name), `${r.alert}: ${name} is not in /metrics`);
      for (const { label, value } of matchers) {
        if (SCRAPE_LABELS.has(label)) continue;
        const values = labels.get(name)?.get(label);
        assert.ok(values, `${r.alert}: ${name} has no label ${label} in /metrics`);
        for (const v of value.split('|')) assert.ok(values.has(v) || known[label]?.includes(v), `${r.alert}: ${name}{${label}="${v}"}: /metrics has ${label} ${[...values].join(', ')}`);
      }
    }
    for (const [, name] of `${r.annotations?.summary} ${r.annotations?.description}`.matchAll(/\b((?:revproxy|process|nodejs)_\w+)/g)) assert.ok(typed.has(name!), `${r.alert}'s annotation names ${name}, not in /metrics`);
  }
});

systemd.run();
serverUnit.run();
logrotate.run();
rules.run();
