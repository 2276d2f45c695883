/**
 * What the bench runs and watches: the project's proxy and servers as
 * separate processes, HAProxy when installed, descriptor limits, and CPU and
 * memory read from /proc.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileLimits as processFileLimits } from '../actors/port-limits.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';

export const HOST = '127.0.0.1';
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = fileURLToPath(new URL('../cli/revproxy.js', import.meta.url));
/**
 * The node flags of a checkout's `cli/revproxy.js` shebang
 * (`#!/usr/bin/env -S node FLAGS`), so every process runs as `npx revproxy`
 * runs it, a baseline checkout with its own; REVPROXY_NODE_FLAGS replaces
 * them, to try other V8 settings in one run.
 */
export function nodeFlags(bin: string): string[] {
  if (process.env.REVPROXY_NODE_FLAGS !== undefined) return process.env.REVPROXY_NODE_FLAGS.split(' ').filter(Boolean);
  let first = '';
  try {
    first = readFileSync(bin, 'utf8').split('\n', 1)[0]!;
  } catch {
    return [];
  }
  const m = /^#!\S*env -S node((?: --?[\w-]+(?:=\S+)?)*)\s*$/.exec(first);
  return m ? m[1]!.split(' ').filter(Boolean) : [];
}

/** The open-files limits of this process (1024 each where /proc cannot tell). */
export function fileLimits(): { soft: number; hard: number } {
  return processFileLimits() ?? { soft: 1024, hard: 1024 };
}

/** A port free right now (another process may still take it before we do: `onFreePorts` starts again on another). */
export async function freePort(): Promise<number> {
  return (await freePorts(1))[0]!;
}

/** `count` different ports free right now: each held until all are chosen, then let go. */
async function freePorts(count: number): Promise<number[]> {
  const held = await Promise.all(Array.from({ length: count }, () => new Promise<Server>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => resolve(s));
  })));
  const ports = held.map((s) => (s.address() as { port: number }).port);
  await Promise.all(held.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Whether a start failed because a port was taken: revproxy's "is already in use", etcd's and HAProxy's "address already in use", Node's EADDRINUSE. */
export function portTaken(err: unknown): boolean {
  return /already in use|EADDRINUSE/i.test(err instanceof Error ? err.message : String(err));
}

/**
 * Start something on `count` free ports, resolving with what `start` resolves with. The ports are
 * chosen before it binds them, and another socket may take one meanwhile (an outgoing connection's
 * local port, another program's listener): when the start fails saying a port is already in use
 * (`portTaken`), it is started again on ports chosen again, `tries` starts in all. Any other failure,
 * and the last, is thrown as it is. `start` leaves nothing running when it fails.
 */
export async function onFreePorts<T>(count: number, start: (ports: number[]) => Promise<T>, tries = 3): Promise<T> {
  const taken: string[] = [];
  for (;;) {
    const ports = await freePorts(count);
    try {
      return await start(ports);
    } catch (err) {
      if (!portTaken(err) || taken.length + 1 >= tries) {
        if (taken.length > 0 && err instanceof Error) err.message += `\n(started ${taken.length + 1} times, on ports chosen again after each: ${[...taken, ports.join(', ')].join('; ')})`;
        throw err;
      }
      taken.push(ports.join(', '));
    }
  }
}

export interface Child {
  name: string;
  proc: ChildProcess;
  pid: number;
  /** The last lines it printed, for error messages. */
  tail(): string;
  stop(): Promise<void>;
}

const live = new Set<Child>();

/**
 * Spawn a command with the soft descriptor limit raised to the hard one (a
 * child cannot go past the hard limit; a shell's `ulimit -Sn` can reach it).
 * Its output is kept in memory (the last lines), or written to the file
 * `output` when it writes a lot (a proxy logging every request): the bench
 * process reading it would cost the load generator's CPU.
 */
export function spawnChild(name: string, cmd: string, args: string[], output?: string): Child {
  const fd = output === undefined ? undefined : openSync(output, 'a');
  const proc = spawn('/bin/sh', ['-c', 'ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'sh', cmd, ...args], {
    cwd: ROOT,
    env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined },
    stdio: fd === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', fd, fd],
  });
  if (fd !== undefined) closeSync(fd);
  const lines: string[] = [];
  const keep = (t: Buffer): void => {
    lines.push(...t.toString('utf8').split('\n').filter(Boolean));
    if (lines.length > 20) lines.splice(0, lines.length - 20);
  };
  proc.stdout?.on('data', keep);
  proc.stderr?.on('data', keep);
  return adoptChild(name, proc, () => (output === undefined ? lines.join('\n') : lastLines(output, 20)));
}

/**
 * A process this one started otherwise (a `fork`) kept with the spawned ones: `stopAll`, and so a
 * signal that ends the run (`stopChildrenOnSignals`), stops it too.
 */
export function adoptChild(name: string, proc: ChildProcess, tail: () => string = () => ''): Child {
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  const child: Child = {
    name,
    proc,
    pid: proc.pid!,
    tail,
    async stop() {
      // Kept in `live` until it has exited (below): a second signal meanwhile SIGKILLs it (stopChildrenOnSignals).
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 2000);
      await exited;
      clearTimeout(t);
    },
  };
  live.add(child);
  void exited.then(() => live.delete(child));
  return child;
}

/** The last `n` lines of a file (for error messages), or '' when it cannot be read. */
function lastLines(file: string, n: number): string {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean).slice(-n).join('\n');
  } catch {
    return '';
  }
}

/** `node cli/revproxy.js <args> --log-level warn` as its own process (a `--log-level` in `args` wins: commander keeps the last); `extraNodeFlags` after the checkout's own (`--trace-gc`, say). */
export function spawnRevproxy(name: string, args: string[], bin = BIN, output?: string, extraNodeFlags: string[] = []): Child {
  const [command, ...rest] = args;
  return spawnChild(name, process.execPath, [...nodeFlags(bin), ...extraNodeFlags, bin, command!, '--log-level', 'warn', '--no-color', ...rest], output);
}

/**
 * The long options `revproxy <command> --help` lists, each with how it takes
 * a value ('<' required, '[' optional, '' none): what the checkout under
 * test can do, so the bench measures what exists and names what does not.
 */
export function revproxyOptions(command: string, bin = BIN): Map<string, string> {
  const out = new Map<string, string>();
  let help = '';
  try {
    help = execFileSync(process.execPath, [bin, command, '--help'], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined } });
  } catch {
    return out;
  }
  for (const m of help.matchAll(/^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)(?: ([<[]))?/gm)) out.set(m[1]!, m[2] ?? '');
  return out;
}

/** Stop every child still running (also on a signal: `stopChildrenOnSignals`). */
export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((c) => c.stop()));
}

/** The signals that end a run: Ctrl-C (SIGINT), `kill`, GNU `timeout` or a CI runner (SIGTERM), the terminal closed (SIGHUP). */
export const END_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** The same signal again within this long is a copy of the first (GNU `timeout` signals the command, then its process group), not a second (ms). */
const COPY_MS = 100;

/** The exit status a shell reports for a process a signal ended: 128 + its number (SIGINT 130, SIGTERM 143, SIGHUP 129). */
export function signalStatus(signal: NodeJS.Signals): number {
  return 128 + (osConstants.signals[signal] ?? 0);
}

/**
 * Until the returned function is called, SIGINT, SIGTERM or SIGHUP stops every child this process
 * started (`stopAll`: SIGTERM, SIGKILL 2 s later; those it starts meanwhile too), and what `also`
 * stops (an etcd of the run's own), then ends the process with `signalStatus`. A second signal meanwhile (not a copy of the first)
 * kills the children (SIGKILL) and ends it at once. Before, the bench stopped them on SIGINT alone:
 * `kill`, `timeout` or a closed terminal ended it and left its proxy, eight servers and HAProxy
 * running (the servers ignore SIGHUP, the proxy reloads on it); the soak stopped them on none.
 */
export function stopChildrenOnSignals(also: () => unknown = () => undefined): () => void {
  let first: { signal: NodeJS.Signals; at: number } | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    const now = performance.now();
    if (first) {
      if (signal === first.signal && now - first.at < COPY_MS) return;
      for (const c of live) c.proc.kill('SIGKILL');
      process.exit(signalStatus(signal));
    }
    first = { signal, at: now };
    void (async () => {
      await Promise.allSettled([stopAll(), Promise.resolve().then(also)]);
      // What the run started meanwhile (the signal came while it started its processes) is stopped too.
      while (live.size) await stopAll();
      process.exit(signalStatus(signal));
    })();
  };
  for (const s of END_SIGNALS) process.on(s, onSignal);
  return () => {
    for (const s of END_SIGNALS) process.off(s, onSignal);
  };
}

/** Wait until something accepts connections on `port`. */
export async function waitForPort(port: number, child: Child, ms = 15000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (child.proc.exitCode !== null) throw new Error(`${child.name} exited before listening on ${port}:\n${child.tail()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: HOST, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`${child.name} did not listen on ${port} within ${ms} ms:\n${child.tail()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Send `n` requests for `policy` one at a time on one connection; returns which server ids answered. */
export function probe(port: number, policy: string, n: number): Promise<Set<string>> {
  return new Promise((resolve, reject) => {
    const seen = new Set<string>();
    const decoder = new FrameDecoder();
    let got = 0;
    const s = connect({ host: HOST, port }, () => send());
    const send = (): void => void s.write(encodeFrame({ type: MsgType.DATA, seq: got, srcid: 'probe', privPoliId: policy, payload: 'probe' }));
    s.on('data', (c: Buffer) => {
      for (const m of decoder.push(c).messages) {
        if (m.type === MsgType.ACK) seen.add(m.srcid);
        if (++got === n) {
          s.destroy();
          return resolve(seen);
        }
        send();
      }
    });
    s.once('error', reject);
    s.setTimeout(5000, () => {
      s.destroy();
      reject(new Error(`no answer for policy ${policy} on port ${port} within 5 s`));
    });
  });
}

/** Where HAProxy lives, or undefined when it is not installed. */
export function findHaproxy(): string | undefined {
  for (const p of ['/usr/sbin/haproxy', '/usr/local/sbin/haproxy', '/usr/bin/haproxy', '/usr/local/bin/haproxy']) {
    try {
      execFileSync(p, ['-v'], { stdio: 'ignore' });
      return p;
    } catch {
      /* next */
    }
  }
  try {
    return execFileSync('sh', ['-c', 'command -v haproxy'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

export const HAPROXY_INSTALL = 'sudo apt-get update && sudo apt-get install -y haproxy';

export function haproxyVersion(bin: string): string {
  try {
    return execFileSync(bin, ['-v'], { encoding: 'utf8' }).split('\n')[0]!.replace(/^HA-?Proxy version /i, '').split(' ')[0]!;
  } catch {
    return 'unknown';
  }
}

/**
 * HAProxy in TCP mode: one frontend per policy, `balance roundrobin` over
 * that policy's servers. maxconn is left to HAProxy, which derives it from the
 * descriptor limit (it needs two per proxied connection).
 */
export function startHaproxy(
  bin: string,
  frontends: Array<{ policy: string; port: number; servers: Array<{ id: string; port: number }> }>,
  opts: { busyPolling?: boolean } = {},
): { child: Child; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'revproxy-bench-haproxy-'));
  const cfg = [
    'global',
    '  log stdout format raw local0 err',
    // Its threads never sleep: one thread, so it takes at most a core, as the proxy's busy polling does.
    ...(opts.busyPolling ? ['  busy-polling', '  nbthread 1'] : []),
    'defaults',
    '  mode tcp',
    '  timeout connect 5s',
    '  timeout client 60s',
    '  timeout server 60s',
    ...frontends.flatMap((f) => [
      `frontend policy_${f.policy}`,
      `  bind ${HOST}:${f.port}`,
      `  default_backend servers_${f.policy}`,
      `backend servers_${f.policy}`,
      '  balance roundrobin',
      ...f.servers.map((s) => `  server s${s.id} ${HOST}:${s.port}`),
    ]),
    '',
  ].join('\n');
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, cfg);
  const child = spawnChild('haproxy', bin, ['-f', file, '-db']);
  return { child, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** Resident memory now, in bytes. */
export function rssBytes(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Descriptors a process holds now. */
export function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return NaN;
  }
}

/**
 * Watches processes during a cell: CPU seconds (user + system) of each group
 * of processes over the measured window, and the highest RSS of one of them
 * (the process under test) over the whole cell, connection set-up included.
 * /proc counts CPU in clock ticks (10 ms here), so a 1 s window is good to
 * about 1 % of a busy process.
 */
export class ProcWatch {
  private cpu0 = new Map<string, number>();
  private t0 = 0;
  private readonly cpu = new Map<string, number>();
  private seconds = NaN;
  private peak = 0;
  private readonly timer?: NodeJS.Timeout;

  constructor(
    private readonly groups: Record<string, number[]>,
    private readonly rssPid?: number,
  ) {
    if (rssPid !== undefined) {
      this.sample();
      this.timer = setInterval(() => this.sample(), 100);
    }
  }

  private sample(): void {
    const r = rssBytes(this.rssPid!);
    if (r > this.peak) this.peak = r;
  }

  private total(pids: number[]): number {
    return pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);
  }

  windowStart(): void {
    for (const [g, pids] of Object.entries(this.groups)) this.cpu0.set(g, this.total(pids));
    this.t0 = performance.now();
  }

  windowEnd(): void {
    this.seconds = (performance.now() - this.t0) / 1000;
    for (const [g, pids] of Object.entries(this.groups)) this.cpu.set(g, this.total(pids) - this.cpu0.get(g)!);
  }

  /** Stop watching: CPU seconds per group over the window, the window's length, and the peak RSS (bytes) when watched. */
  finish(): { cpu: Record<string, number>; seconds: number; peakRss?: number } {
    clearInterval(this.timer);
    if (this.rssPid !== undefined) this.sample();
    return { cpu: Object.fromEntries(this.cpu), seconds: this.seconds, peakRss: this.rssPid === undefined ? undefined : this.peak };
  }
}
