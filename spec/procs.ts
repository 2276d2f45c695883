/** Helpers to run `revproxy` as real processes in specs. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { suite } from 'uvu';
import type { ServerHandle } from '../actors/index.js';
import { freePort, nodeFlags, onFreePorts } from '../bench/procs.js';
import { eventually, tempDir } from './helpers.js';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = fileURLToPath(new URL('../cli/revproxy.js', import.meta.url));

export interface Proc {
  child: ChildProcess;
  out: string[];
  /** Resolves with the first stdout line matching `re`. */
  waitFor(re: RegExp, ms?: number): Promise<RegExpMatchArray>;
  /** Resolves with the exit code (128 for a signal) once the process has exited and its output is read to the end. */
  exited: Promise<number>;
  kill(signal?: NodeJS.Signals): void;
}

const live = new Set<ChildProcess>();

/**
 * Run `revproxy` as `npx revproxy` runs it: with the node flags of its shebang (and under
 * `ulimit -n fileLimit`, when given, as a shell would start it). Without them a
 * proxy's memory is V8's defaults', which differ by Node version (Node 24 lets the young
 * generation grow to 64 MB semi-spaces on this machine, Node 20 to 16 MB).
 */
export function revproxy(args: string[], opts: { env?: Record<string, string>; fileLimit?: number; memoryGroup?: string } = {}): Proc {
  const argv = [process.execPath, ...nodeFlags(BIN), BIN, ...args];
  // `exec` keeps the process id, so signals reach revproxy itself; a control group is joined by writing that id (spec/cgroup.ts).
  const before = [opts.fileLimit ? `ulimit -n ${opts.fileLimit}` : '', opts.memoryGroup ? `echo $$ > ${opts.memoryGroup}` : ''].filter(Boolean);
  if (before.length) return start('/bin/sh', ['-c', `${before.join(' && ')} && exec "$@"`, 'sh', ...argv], opts);
  return start(argv[0]!, argv.slice(1), opts);
}

/** Debian's interpreter when there is one (a version manager's `python3` shim costs a quarter of a second per start). */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Run one of the Python programs written for the specs (spec/fixtures/NAME.py). */
export function python(name: string, args: string[]): Proc {
  return pythonFile(fileURLToPath(new URL(`fixtures/${name}.py`, import.meta.url)), args);
}

/** Run a Python program by its path (from the project root), unbuffered. */
export function pythonFile(path: string, args: string[]): Proc {
  return start(PYTHON, ['-u', path, ...args]);
}

/** Run a JavaScript file with plain `node` (no tsx), from the project root or `cwd`. */
export function node(script: string, args: string[], opts: { cwd?: string } = {}): Proc {
  return start(process.execPath, [script, ...args], opts);
}

export function start(command: string, args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Proc {
  const child = spawn(command, args, { cwd: opts.cwd ?? ROOT, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const out: string[] = [];
  let buf = '';
  const listeners = new Set<() => void>();
  /** The process has exited and its output is read (`exited`). */
  let over = false;
  const onText = (t: string): void => {
    buf += t;
    const lines = buf.split('\n');
    buf = lines.pop()!;
    out.push(...lines);
    for (const l of listeners) l();
  };
  child.stdout!.setEncoding('utf8').on('data', onText);
  child.stderr!.setEncoding('utf8').on('data', onText);
  // Resolves once the process has exited and what it printed is read to the end, which may come after its exit: a
  // test reading `out` at once missed the last lines (the memory-limit spec's `load --json` report, under CI's load).
  // At most a second later: a child of its own may hold the pipes open.
  const exited = new Promise<number>((resolve) =>
    child.on('exit', (code, sig) => {
      live.delete(child);
      const ended = [child.stdout!, child.stderr!].map((s) => (s.readableEnded || s.destroyed ? undefined : new Promise((r) => s.once('end', r).once('close', r))));
      let timer: NodeJS.Timeout | undefined;
      void Promise.race([Promise.all(ended), new Promise((r) => (timer = setTimeout(r, 1000)))]).then(() => {
        clearTimeout(timer);
        if (buf) out.push(buf);
        buf = '';
        over = true;
        for (const l of listeners) l();
        resolve(code ?? (sig ? 128 : 1));
      });
    }),
  );
  return {
    child,
    out,
    exited,
    kill: (signal = 'SIGTERM') => child.kill(signal),
    waitFor(re, ms = 10000) {
      return new Promise((resolve, reject) => {
        const check = (): boolean => {
          for (const l of out) {
            const m = l.match(re);
            if (m) {
              listeners.delete(check);
              clearTimeout(timer);
              resolve(m);
              return true;
            }
          }
          if (over) {
            listeners.delete(check);
            clearTimeout(timer);
            reject(new Error(`process exited before printing ${re}; output:\n${out.join('\n')}`));
            return true;
          }
          return false;
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`timed out waiting for ${re}; output:\n${out.join('\n')}`));
        }, ms);
        if (!check()) listeners.add(check);
      });
    },
  };
}

/** Kill every process a spec started (call in `after`). */
export function killAll(): void {
  for (const c of live) c.kill('SIGKILL');
}

/**
 * Start `revproxy proxy` on a free port (or `port`), under `ulimit -n fileLimit` and in the control group
 * `memoryGroup` (its cgroup.procs) if given; resolves once it accepts connections. On a free port it is
 * started again on another when the one chosen was taken before it listened (`onFreePorts`).
 */
export async function proxyProcess(args: string[] = [], opts: { port?: number; env?: Record<string, string>; fileLimit?: number; memoryGroup?: string } = {}): Promise<{ proc: Proc; port: number }> {
  const on = async (port: number): Promise<{ proc: Proc; port: number }> => ({ proc: await listening(revproxy(['proxy', '-port', String(port), ...args], opts), port), port });
  return opts.port !== undefined ? on(opts.port) : onFreePorts(1, ([port]) => on(port!));
}

/**
 * Resolves once the proxy whose admin endpoint is `admin` (`http://127.0.0.1:PORT/`) has `n` members of
 * `policy` serving (its /metrics, revproxy_pool_members): their links open and answering, not their
 * registrations only. A server says it is registered a PING round trip before the proxy's link to it
 * is open, and requests sent meanwhile all go to the one open first.
 */
export async function serving(admin: string, policy: string, n: number, ms = 15000): Promise<void> {
  const re = new RegExp(`^revproxy_pool_members\\{policy="${policy}",state="serving"[^}]*\\} ${n}$`, 'm');
  await eventually(async () => re.test(await (await fetch(`${admin}metrics`)).text()), ms, `${n} server(s) of privacy policy ${policy} serving`);
}

/** A proxy process's admin endpoint on a free port: the flags that serve it, and its URL. */
export async function adminOnFreePort(): Promise<{ args: string[]; url: string }> {
  const port = await freePort();
  return { args: ['--admin', `127.0.0.1:${port}`], url: `http://127.0.0.1:${port}/` };
}

/**
 * `proc` once it listens on `port`; killed, and its output thrown, when it exits first (its port taken)
 * or does not listen within 30 s. The listening socket must be its own: another program that took the
 * port accepts connections there too, while the proxy exits saying the port is in use.
 */
async function listening(proc: Proc, port: number): Promise<Proc> {
  const end = Date.now() + 30000;
  while (!listensOn(proc.child.pid!, port)) {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) throw new Error(`the proxy exited before it listened on port ${port}; output:\n${await allOutput(proc)}`);
    if (Date.now() > end) {
      proc.kill('SIGKILL');
      throw new Error(`the proxy did not listen on port ${port} within 30 s; output:\n${proc.out.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return proc;
}

/** Everything `proc` printed, once it has exited and its output is read to the end (which may come after its exit). */
export async function allOutput(proc: Proc): Promise<string> {
  await proc.exited;
  return proc.out.join('\n');
}

/** Whether process `pid` holds a TCP socket listening on `port` (Linux: the sockets in /proc/net/tcp and tcp6, and the process's descriptors). */
export function listensOn(pid: number, port: number): boolean {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address, state 0A (LISTEN), inode
      if (f[1]?.endsWith(hexPort) && f[3] === '0A') inodes.add(f[9]!);
    }
  }
  if (inodes.size === 0) return false;
  let fds: string[] = [];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return false;
  }
  return fds.some((fd) => {
    try {
      return inodes.has(/^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1] ?? '');
    } catch {
      return false;
    }
  });
}

/** What each test of a `freshSuite` starts with: a new temp folder, and the servers it starts (for the suite to kill). */
export interface Fresh {
  dir: string;
  servers: ServerHandle[];
}

/** A suite whose tests each get a new temp folder (named from `prefix`) in `ctx`; after each, its servers and every process are killed and the folder removed. */
export function freshSuite(name: string, prefix: string, ctx: Fresh) {
  const s = suite<Fresh>(name, ctx);
  s.before.each(() => {
    ctx.dir = tempDir(prefix);
    ctx.servers = [];
  });
  s.after.each(() => {
    for (const srv of ctx.servers) srv.kill();
    killAll();
    rmSync(ctx.dir, { recursive: true, force: true });
  });
  return s;
}
