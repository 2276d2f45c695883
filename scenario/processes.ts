/**
 * Scenario actors as real `revproxy` processes, started with the same command
 * lines a user types. The proxy runs with `--log-format json`: its register
 * and deregister records (carrying id and policy) are how this side sees the
 * pools, as any log reader can.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LogRecord } from '../actors/logger.js';
import { yaml } from '../config/schema.js';
import { startEtcd, type Etcd } from './etcd.js';
import { PROXY_OPTIONS, type ProxyOptionKey, type ProxySpec, type RegistrySpec, type ServerSpec } from './format.js';
import { fleetTtl, ProxyEvents, type PoolState, type RunningServer, type Topology } from './topology.js';

const BIN = fileURLToPath(new URL('../cli/revproxy.js', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const START_MS = 15_000;

/** One child process: its last lines of output, and a promise of its exit. */
class Child {
  readonly proc: ChildProcess;
  readonly tail: string[] = [];
  readonly exited: Promise<number>;

  constructor(args: string[], onLine: (line: string) => void) {
    // The scenario says which secrets are in force, not the caller's environment.
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined };
    delete env.REVPROXY_TOKEN;
    this.proc = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines = (stream: NodeJS.ReadableStream): void => {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (t: string) => {
        const parts = (buf + t).split('\n');
        buf = parts.pop()!;
        for (const l of parts) {
          this.tail.push(l);
          if (this.tail.length > 20) this.tail.shift();
          onLine(l);
        }
      });
    };
    lines(this.proc.stdout!);
    lines(this.proc.stderr!);
    this.exited = new Promise((resolve) => this.proc.once('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1))));
  }

  /** Why it ended, in its own words: its last error line, or its last line. */
  async why(): Promise<string> {
    const code = await this.exited;
    const said = this.tail.map(readable).filter(Boolean);
    return `exited with status ${code}${said.length ? `: ${said[said.length - 1]}` : ''}`;
  }

  stop(signal: NodeJS.Signals): Promise<number> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    return this.exited;
  }
}

/** A JSON log line's sentence, or the line itself. */
function readable(line: string): string {
  try {
    const rec = JSON.parse(line) as LogRecord;
    return rec.msg ?? line;
  } catch {
    return line.trim();
  }
}

export class ProcessTopology implements Topology {
  readonly mode = 'processes';
  readonly events = new ProxyEvents();
  port = 0;
  ports: number[] = [];
  private proxy?: Child;
  /** With a registry: the other proxies of the fleet, and their log records. */
  private readonly others: Array<{ child: Child; events: ProxyEvents; port: number }> = [];
  private etcd?: Etcd;
  private spec: ProxySpec = {};
  private readonly servers = new Map<string, Child>();
  /**
   * Every process started, from the moment it is spawned: also servers a later
   * one with the same id replaced in `servers`, and a proxy whose start the
   * step's deadline gave up on (it was left running, for ever, after the run).
   */
  private readonly all: Child[] = [];
  /** Set by close(): a step still under way (its deadline passed) starts nothing more. */
  private closed = false;
  private tmp?: string;

  constructor(
    private readonly opts: { inspect?: boolean; onNote?: (line: string) => void } = {},
    /** A fleet: an etcd of its own, `proxies` proxies watching it, servers registered there. */
    private readonly fleet?: RegistrySpec,
  ) {}

  /** `--registry ...` for the fleet's proxies and servers. */
  private registryArgs(): string[] {
    return this.fleet && this.etcd ? ['--registry', `etcd://${this.etcd.endpoint}`, '--registry-prefix', '/scenario/', '--registry-ttl', String(fleetTtl(this.fleet))] : [];
  }

  eventsOf(n: number): ProxyEvents | undefined {
    return n === 1 ? this.events : this.others[n - 2]?.events;
  }

  async startProxy(spec: ProxySpec): Promise<void> {
    this.spec = spec;
    if (this.fleet && !this.etcd) this.etcd = await startEtcd();
    const { child, port } = await this.one(spec, this.events, this.port, this.opts.inspect);
    this.proxy = child;
    this.port = port;
    if (this.fleet && this.others.length === 0) {
      for (let n = 2; n <= (this.fleet.proxies ?? 1); n++) {
        const events = new ProxyEvents();
        this.others.push({ ...(await this.one(spec, events, 0, false)), events });
      }
    }
    this.ports = [this.port, ...this.others.map((o) => o.port)];
  }

  private async one(spec: ProxySpec, events: ProxyEvents, port: number, inspect?: boolean): Promise<{ child: Child; port: number }> {
    // Debug: 'serving' (the proxy reaches a new server) is a debug record.
    const args = ['proxy', '--port', String(port), '--log-format', 'json', '--log-level', 'debug', ...this.registryArgs()];
    for (const key of Object.keys(PROXY_OPTIONS) as ProxyOptionKey[]) {
      if (spec[key] !== undefined) args.push(PROXY_OPTIONS[key].flag, String(spec[key]));
    }
    if (spec.token !== undefined) args.push('--token', spec.token);
    if (spec.tokens) args.push('--tokens', this.tokensFile(spec.tokens));
    if (inspect) args.push('--inspect');
    const since = events.mark();
    const child = new Child(args, (line) => {
      if (line.startsWith('Inspector for proxy')) this.opts.onNote?.(line);
      if (!line.startsWith('{')) return;
      try {
        events.push(JSON.parse(line) as LogRecord);
      } catch {
        // not a log record: kept in the tail for messages
      }
    });
    this.spawned(child);
    const up = await events.next(since, (r) => r.event === 'listening', START_MS, child.exited);
    if (!up) throw new Error(`the proxy process did not start: ${child.proc.exitCode !== null ? await child.why() : `no 'listening' record within ${START_MS} ms`}`);
    return { child, port: Number(up.port) };
  }

  async restartProxy(): Promise<void> {
    await this.proxy?.stop('SIGTERM');
    this.events.forgetPools();
    await this.startProxy(this.spec);
  }

  async startServer(spec: ServerSpec): Promise<RunningServer> {
    const where = this.fleet ? this.registryArgs() : ['--revproc', `127.0.0.1:${this.port}`];
    const args = ['server', '--id', spec.id, '--pp', spec.policy, '--listen', '0', ...where, '--log-format', 'json', '--log-level', 'warn'];
    if (spec.behaviour) args.push('--behaviour', spec.behaviour);
    if (spec.delay !== undefined) args.push('--delay', String(spec.delay));
    if (spec.wire === 'json') args.push('--wire', 'json');
    if (spec.token !== undefined) args.push('--token', spec.token);
    const child = new Child(args, () => {});
    this.servers.set(spec.id, child);
    this.spawned(child);
    return { ended: child.why() };
  }

  async stopServer(id: string): Promise<void> {
    await this.take(id).stop('SIGTERM');
  }

  async killServer(id: string): Promise<void> {
    await this.take(id).stop('SIGKILL');
  }

  pools(n = 1): Record<string, PoolState> {
    return this.eventsOf(n)?.pools() ?? {};
  }

  /** Keep a process to stop at close(); one started after it (a late step) is stopped at once. */
  private spawned(child: Child): void {
    this.all.push(child);
    if (this.closed) void child.stop('SIGKILL');
  }

  async close(): Promise<void> {
    this.closed = true;
    this.servers.clear();
    await Promise.all(this.all.map((c) => c.stop('SIGKILL')));
    await this.etcd?.remove();
    if (this.tmp) rmSync(this.tmp, { recursive: true, force: true });
  }

  /** `revproxy proxy --tokens` reads a file: write the scenario's table to a private one. */
  private tokensFile(tokens: Record<string, string>): string {
    this.tmp ??= mkdtempSync(join(tmpdir(), 'revproxy-scenario-'));
    const file = join(this.tmp, 'tokens.yaml');
    writeFileSync(file, yaml().stringify(tokens), { mode: 0o600 });
    return file;
  }

  private take(id: string): Child {
    const child = this.servers.get(id);
    if (!child) throw new Error(`server ${id} is not running`);
    this.servers.delete(id);
    return child;
  }
}
