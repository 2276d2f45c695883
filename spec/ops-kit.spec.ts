/**
 * What an operator installs beside the program (README, "Operations", "The systemd unit and the
 * alerting rules"): docs/revproxy.service, checked by Debian's systemd-analyze and run as systemd
 * would run it (this machine has no systemd as PID 1: its commands run here, under its
 * environment and limits, with the file system read-only but for its LogsDirectory, as
 * ProtectSystem=strict leaves it).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runClient, startServer, type ServerHandle } from '../actors/index.js';
import { fileRoom } from '../actors/port-limits.js';
import { fileLimits } from '../bench/procs.js';
import { DEFAULTS } from '../config/proxy.js';
import { eventually, LOCAL, sleep, tempDir } from './helpers.js';
import { BIN, killAll, ROOT, start, type Proc } from './procs.js';

const UNIT = join(ROOT, 'docs/revproxy.service');
const SYSTEMD_ANALYZE = '/usr/bin/systemd-analyze';

interface Ctx {
  dir: string;
  servers: ServerHandle[];
}
const ctx: Ctx = { dir: '', servers: [] };

function fresh(name: string) {
  const s = suite<Ctx>(name, ctx);
  s.before.each(() => {
    ctx.dir = tempDir('revproxy-kit-');
    ctx.servers = [];
  });
  s.after.each(() => {
    for (const srv of ctx.servers) srv.kill();
    killAll();
    rmSync(ctx.dir, { recursive: true, force: true });
  });
  return s;
}

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

/** The installed paths the unit names, and where this spec puts each. */
function places(dir: string): Array<[string, string]> {
  return [
    ['/usr/local/lib/node_modules/revproxy/cli/revproxy.js', BIN],
    ['/etc/revproxy/revproxy.yaml', join(dir, 'revproxy.yaml')],
    ['/etc/revproxy/revproxy.env', join(dir, 'revproxy.env')],
  ];
}
const relocate = (text: string, dir: string): string => places(dir).reduce((t, [from, to]) => t.split(from).join(to), text);

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
  spawnSync('mkdir', [logs]);
  writeFileSync(join(ctx.dir, 'revproxy.yaml'), `port: 0\nadmin:\n  listen: 127.0.0.1:0\nlog:\n  access_log: ${logs}/access.log\n`);
  writeFileSync(join(ctx.dir, 'revproxy.env'), 'REVPROXY_ADMIN_TOKEN=kit-admin-secret\n');
  const env: string[] = ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin']; // systemd's, for the shebang's `env node`
  for (const file of unit.get('EnvironmentFile') ?? []) env.push(...readFileSync(file.replace(/^-/, ''), 'utf8').split('\n').filter((l) => /^\w+=/.test(l)));
  for (const line of unit.get('Environment') ?? []) env.push(...line.split(/\s+/));
  // systemd sets LimitNOFILE as root; here the hard limit this spec runs under may be lower.
  const files = Math.min(Number(one(unit, 'LimitNOFILE')), fileLimits().hard);
  // ProtectSystem=strict with LogsDirectory: every path read-only but the logs (and /dev, /proc, /sys).
  const sandboxed = (command: string): Proc =>
    start('/usr/bin/unshare', ['-m', '/bin/sh', '-c', `mount --bind "$0" "$0" && mount -o remount,bind,ro / && ulimit -n ${files} && exec env -i "$@"`, logs, ...env, ...command.split(/\s+/)]);
  // The bundle made now, if a source is newer: in the read-only file system it could not be written.
  const made = start(process.execPath, ['-e', "import('./cli/bundle.mjs').then((b) => b.bundle())"]);
  assert.is(await made.exited, 0, made.out.join('\n'));
  const proc = sandboxed(one(unit, 'ExecStart'));
  const port = Number((await proc.waitFor(/Running the reverse proxy on port (\d+)/))[1]);
  const admin = proc.out.map((l) => /Admin endpoint on (http:\S+)/.exec(l)?.[1]).find(Boolean);
  assert.is((await fetch(`${admin}metrics`, { headers: { authorization: 'Bearer kit-admin-secret' } })).status, 200, 'REVPROXY_ADMIN_TOKEN came from its EnvironmentFile');
  const ulimit = /^Max open files\s+(\d+)/m.exec(readFileSync(`/proc/${proc.child.pid}/limits`, 'utf8'))?.[1];
  assert.is(ulimit, String(files));
  ctx.servers.push(await startServer({ id: 's1', policy: 'P', listenPort: 0, proxy: { host: LOCAL, port }, delayMs: 200 }));
  const ask = async (): Promise<string | undefined> => (await runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'x' }] }))[0]!.error ?? 'ok';
  assert.is(await ask(), 'ok');

  for (const command of unit.get('ExecReload')!) {
    const step = command.includes('$MAINPID') ? start('/bin/sh', ['-c', command.replace('$MAINPID', String(proc.child.pid))]) : sandboxed(command);
    assert.is(await step.exited, 0, `${command}: ${step.out.join('\n')}`);
  }
  await proc.waitFor(/Reloaded/);

  const inFlight = ask();
  const inflight = async (): Promise<string | undefined> => /^revproxy_inflight_requests (\d+)$/m.exec(await (await fetch(`${admin}metrics`, { headers: { authorization: 'Bearer kit-admin-secret' } })).text())?.[1];
  while ((await inflight()) !== '1') await sleep(10);
  proc.kill(one(unit, 'KillSignal') as NodeJS.Signals);
  const timeout = new Promise<string>((resolve) => setTimeout(() => resolve('still running at TimeoutStopSec'), Number(one(unit, 'TimeoutStopSec')) * 1000).unref());
  assert.is(await Promise.race([proc.exited, timeout]), 0, 'exit 0: Restart=on-failure does not restart it');
  assert.is(await inFlight, 'ok', 'the request in flight was answered');
  await eventually(() => readFileSync(`${logs}/access.log`, 'utf8').split('\n').filter((l) => / outcome=ok$/.test(l)).length === 2, 3000, 'both requests in the access log');
});

systemd.run();
