/**
 * An etcd of its own, for a scenario with a registry and for the specs:
 * Debian's `etcd-server` (`/usr/bin/etcd`, which .ci/run installs), started
 * on free loopback ports with a temporary data directory, stopped and
 * restarted on the same ports and data (to show an outage), and removed
 * after: nothing is left behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../bench/procs.js';
import { systemClock } from '../transport/clock.js';

export const ETCD = existsSync('/usr/bin/etcd') ? '/usr/bin/etcd' : 'etcd';
const NO_ETCD = "cannot start etcd: it is not installed (Debian: sudo apt-get install -y etcd-server; or put an etcd 3.4+ binary on the PATH)";

export interface Etcd {
  /** `etcd://127.0.0.1:PORT` */
  url: string;
  endpoint: string;
  dir: string;
  /** Stop it (SIGTERM, or SIGKILL with `hard`) and wait for it to exit; its data stays. */
  stop(hard?: boolean): Promise<void>;
  /** Start it again on the same ports and data; resolves once it serves. */
  start(): Promise<void>;
  /** Kill it, remove its data and start it again empty, on the same ports: an etcd that lost its disk. */
  wipe(): Promise<void>;
  /** Stop it and remove its data. */
  remove(): Promise<void>;
  /** Its output, for failures. */
  out: string[];
  /** Whether its process runs. */
  readonly running: boolean;
}

const live = new Set<ChildProcess>();

/** TLS for etcd's clients: its certificate and key, and with `ca` mutual TLS (clients must present a certificate it signed). */
export interface EtcdTls {
  cert: string;
  key: string;
  ca?: string;
}

/** GET /health over TLS, trusting `ca` (and presenting a client certificate when etcd asks for one). */
function healthOverTls(port: number, tls: EtcdTls): Promise<boolean> {
  return new Promise((resolve) => {
    const ca = tls.ca ? readFileSync(tls.ca) : undefined;
    const req = request({ host: '127.0.0.1', port, path: '/health', ca, cert: readFileSync(tls.cert), key: readFileSync(tls.key), timeout: 500 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve(res.statusCode === 200 && /"health":\s*"true"/.test(body)));
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

/** Start an etcd of its own; resolves once it answers /health. With `tls`, its clients speak TLS to it. */
export async function startEtcd(opts: { tls?: EtcdTls } = {}): Promise<Etcd> {
  const tls = opts.tls;
  const scheme = tls ? 'https' : 'http';
  const dir = mkdtempSync(join(tmpdir(), 'revproxy-etcd-'));
  const client = await freePort();
  const peer = await freePort();
  const out: string[] = [];
  let child: ChildProcess | undefined;
  const run = async (): Promise<void> => {
    const c = spawn(ETCD, [
      '--name', 'default', '--data-dir', join(dir, 'data'),
      '--listen-client-urls', `${scheme}://127.0.0.1:${client}`, '--advertise-client-urls', `${scheme}://127.0.0.1:${client}`,
      ...(tls ? ['--cert-file', tls.cert, '--key-file', tls.key, ...(tls.ca ? ['--client-cert-auth', '--trusted-ca-file', tls.ca] : [])] : []),
      '--listen-peer-urls', `http://127.0.0.1:${peer}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `default=http://127.0.0.1:${peer}`, '--logger', 'zap', '--log-level', 'warn',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    live.add(c);
    const spawnFailed = new Promise<Error>((resolve) => c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ENOENT' ? new Error(NO_ETCD) : err)));
    let failure: Error | undefined;
    void spawnFailed.then((e) => (failure = e));
    c.on('exit', () => live.delete(c));
    c.stdout!.setEncoding('utf8').on('data', (t: string) => out.push(t));
    c.stderr!.setEncoding('utf8').on('data', (t: string) => out.push(t));
    const end = systemClock.now() + 20_000;
    for (;;) {
      if (failure) throw failure;
      if (c.exitCode !== null) throw new Error(`etcd exited (${c.exitCode}) before serving:\n${out.join('')}`);
      if (tls) {
        if (await healthOverTls(client, tls)) return;
      } else {
        try {
          const r = await fetch(`http://127.0.0.1:${client}/health`, { signal: AbortSignal.timeout(500) });
          if (r.ok && /"health":\s*"true"/.test(await r.text())) return;
        } catch {
          // not yet
        }
      }
      if (systemClock.now() > end) throw new Error(`etcd did not serve within 20 s:\n${out.join('')}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async (hard = false): Promise<void> => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill(hard ? 'SIGKILL' : 'SIGTERM');
    await exited;
  };
  await run();
  return {
    url: `${tls ? 'etcds' : 'etcd'}://127.0.0.1:${client}`,
    endpoint: `127.0.0.1:${client}`,
    dir,
    out,
    stop,
    start: run,
    get running() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    async wipe() {
      await stop(true);
      rmSync(join(dir, 'data'), { recursive: true, force: true });
      await run();
    },
    async remove() {
      await stop(true);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Kill every etcd still running (an `after` hook's last resort, and at exit). */
export function killEtcds(): void {
  for (const c of live) c.kill('SIGKILL');
}
