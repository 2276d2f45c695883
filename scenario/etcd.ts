/**
 * An etcd of its own, for a scenario with a registry and for the specs:
 * Debian's `etcd-server` (`/usr/bin/etcd`, which .ci/run installs), started
 * on free loopback ports with a temporary data directory, stopped and
 * restarted on the same ports and data (to show an outage), and removed
 * after: nothing is left behind.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { onFreePorts } from '../bench/procs.js';
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

/**
 * A member's status over TLS, asked with etcdctl over gRPC (presenting etcd's own certificate): its HTTP gateway
 * refuses a client certificate once etcd's authentication is on ("CommonName of client sending a request against
 * gateway will be ignored"), gRPC's Status asks no user. The ids are read as text: they pass 2^53.
 */
function statusOverTls(endpoint: string, tls: EtcdTls): Promise<Status> {
  const args = ['--endpoints', `https://${endpoint}`, '--cert', tls.cert, '--key', tls.key, ...(tls.ca ? ['--cacert', tls.ca] : []), '--dial-timeout', '1s', '--command-timeout', '1s', 'endpoint', 'status', '-w', 'json'];
  return new Promise((resolve, reject) => {
    execFile('etcdctl', args, { timeout: 3000 }, (err, out) => {
      if (err) return reject(err);
      resolve({ leader: /"leader":(\d+)/.exec(out)?.[1], header: { member_id: /"member_id":(\d+)/.exec(out)?.[1] } });
    });
  });
}

/** Where an etcd runs other than on this host's loopback: a network namespace (spec/netns.ts's hosts) and its address there. */
export interface EtcdHost {
  ns: string;
  addr: string;
}

/** Start an etcd of its own; resolves once it answers /health. With `tls`, its clients speak TLS to it; with `host`, it runs in that network namespace, on its address; `args` are more of etcd's flags (`--quota-backend-bytes`). */
export async function startEtcd(opts: { tls?: EtcdTls; host?: EtcdHost; args?: string[] } = {}): Promise<Etcd> {
  const dir = mkdtempSync(join(tmpdir(), 'revproxy-etcd-'));
  const [m] = await startOnFreePorts(dir, 1, (ports) => members(dir, ports, opts.tls, opts.host, opts.args));
  return m!;
}

/** A cluster of etcd members on loopback, each with its data under one temporary directory. */
export interface EtcdCluster {
  /** `etcd://a,b,c`: every member's client endpoint. */
  url: string;
  endpoints: string[];
  members: EtcdMember[];
  dir: string;
  /** The member that is leader now, as a running, unpaused member says (undefined while there is none). */
  leader(): Promise<EtcdMember | undefined>;
  /** Kill every member and remove the data. */
  remove(): Promise<void>;
}

/** One member of a cluster: an Etcd (stop, start, wipe), which can also be paused as a hung machine is. */
export interface EtcdMember extends Etcd {
  name: string;
  /** The port its peers reach it on (raft), beside its client port in `endpoint`. */
  readonly peerPort: number;
  readonly pid: number | undefined;
  readonly paused: boolean;
  /** SIGSTOP: its sockets stay open and it answers nothing, as a hung VM. */
  pause(): void;
  /** SIGCONT after `pause`. */
  resume(): void;
}

/**
 * Start a cluster of `size` etcd members (`--initial-cluster`, state new) on free loopback ports;
 * resolves once every member answers /health (which etcd says only once the cluster has a leader).
 * With `hosts`, member i runs in network namespace `hosts[i]` (spec/netns.ts's hosts), its client
 * and peer URLs on that host's address, so a cut between hosts can split the cluster. With `tls`,
 * its clients speak TLS to every member (with `ca`, presenting a certificate it signed), as `startEtcd`'s; `args` are
 * more of etcd's flags for every member (`--auth-token-ttl`).
 */
export async function startEtcdCluster(size = 3, opts: { hosts?: EtcdHost[]; tls?: EtcdTls; args?: string[] } = {}): Promise<EtcdCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'revproxy-etcd-cluster-'));
  const { tls } = opts;
  const ms = await startOnFreePorts(dir, size, (ports) => members(dir, ports, tls, opts.hosts, opts.args));
  return {
    url: `${tls ? 'etcds' : 'etcd'}://${ms.map((m) => m.endpoint).join(',')}`,
    endpoints: ms.map((m) => m.endpoint),
    members: ms,
    dir,
    async leader() {
      // Each member says its own id and the leader's: the leader is the member whose id they name.
      const said = await Promise.all(ms.map(async (m) => {
        if (!m.running || m.paused) return undefined;
        try {
          if (tls) return await statusOverTls(m.endpoint, tls);
          const r = await fetch(`http://${m.endpoint}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(1000) });
          return (await r.json()) as Status;
        } catch {
          return undefined;
        }
      }));
      const named = said.find((x) => x?.leader)?.leader;
      return ms.find((_, i) => named !== undefined && said[i]?.header?.member_id === named);
    },
    remove: () => removeAll(dir, ms),
  };
}

/** What a member says of itself and its leader (etcd's maintenance status). */
interface Status {
  leader?: string;
  header?: { member_id?: string };
}

async function removeAll(dir: string, ms: EtcdMember[]): Promise<void> {
  for (const m of ms) m.resume();
  await Promise.all(ms.map((m) => m.stop(true)));
  rmSync(dir, { recursive: true, force: true });
}

/**
 * Start the members `make` sets up, on free ports (a client and a peer port each). Free ports are
 * chosen before the members bind them, and another socket may take one meanwhile (an outgoing
 * connection's local port: a lone etcd of names.spec once exited "address already in use"): a start
 * that says so is made again on ports chosen again (`onFreePorts`); nothing is left of one that failed.
 */
async function startOnFreePorts(dir: string, size: number, make: (ports: MemberPorts[]) => EtcdMember[]): Promise<EtcdMember[]> {
  try {
    return await onFreePorts(2 * size, async (free) => {
      const ms = make(Array.from({ length: size }, (_, i) => ({ client: free[2 * i]!, peer: free[2 * i + 1]! })));
      try {
        await Promise.all(ms.map((m) => m.start()));
        return ms;
      } catch (err) {
        await removeAll(dir, ms);
        mkdirSync(dir, { recursive: true });
        throw err;
      }
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

interface MemberPorts {
  client: number;
  peer: number;
}

/** Members under `dir` on `ports`, not started yet, each knowing the others (`host`: one host for all, or one per member). */
function members(dir: string, ports: MemberPorts[], tls?: EtcdTls, host?: EtcdHost | EtcdHost[], args: string[] = []): EtcdMember[] {
  const size = ports.length;
  const names = ports.map((_, i) => (size === 1 ? 'default' : `m${i + 1}`));
  const hostOf = (i: number): EtcdHost | undefined => (Array.isArray(host) ? host[i] : host);
  const initialCluster = ports.map((p, i) => `${names[i]}=http://${Array.isArray(host) ? hostOf(i)!.addr : '127.0.0.1'}:${p.peer}`).join(',');
  // A single etcd's `remove` takes its whole directory; a member's only its own data.
  return ports.map((p, i) => member({ name: names[i]!, data: join(dir, size === 1 ? 'data' : names[i]!), dir, removes: size === 1 ? dir : join(dir, names[i]!), ...p, initialCluster, tls, host: hostOf(i), peerOnHost: Array.isArray(host), args }));
}

function member(o: { name: string; data: string; dir: string; removes: string; client: number; peer: number; initialCluster: string; tls?: EtcdTls; host?: EtcdHost; peerOnHost?: boolean; args: string[] }): EtcdMember {
  const { tls, client, peer } = o;
  const peerIp = o.peerOnHost ? o.host!.addr : '127.0.0.1';
  const ip = o.host?.addr ?? '127.0.0.1';
  // In a namespace it is reached only from there: its health is asked from there too.
  const inNs = (cmd: string, args: string[]): [string, string[]] => (o.host ? ['ip', ['netns', 'exec', o.host.ns, cmd, ...args]] : [cmd, args]);
  const scheme = tls ? 'https' : 'http';
  const out: string[] = [];
  let child: ChildProcess | undefined;
  let paused = false;
  const run = async (): Promise<void> => {
    paused = false;
    const c = spawn(...inNs(ETCD, [
      '--name', o.name, '--data-dir', o.data,
      '--listen-client-urls', `${scheme}://${ip}:${client}`, '--advertise-client-urls', `${scheme}://${ip}:${client}`,
      ...(tls ? ['--cert-file', tls.cert, '--key-file', tls.key, ...(tls.ca ? ['--client-cert-auth', '--trusted-ca-file', tls.ca] : [])] : []),
      '--listen-peer-urls', `http://${peerIp}:${peer}`, '--initial-advertise-peer-urls', `http://${peerIp}:${peer}`,
      '--initial-cluster', o.initialCluster, '--initial-cluster-state', 'new', '--logger', 'zap', '--log-level', 'warn', ...o.args,
    ]), { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    live.add(c);
    const spawnFailed = new Promise<Error>((resolve) => c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ENOENT' ? new Error(NO_ETCD) : err)));
    let failure: Error | undefined;
    void spawnFailed.then((e) => (failure = e));
    c.on('exit', () => live.delete(c));
    // Its last words (why it exited: "address already in use", which a start on other ports answers) may be read after its exit.
    const closed = new Promise<void>((resolve) => c.once('close', () => resolve()));
    c.stdout!.setEncoding('utf8').on('data', (t: string) => out.push(t));
    c.stderr!.setEncoding('utf8').on('data', (t: string) => out.push(t));
    const end = systemClock.now() + 20_000;
    for (;;) {
      if (failure) throw failure;
      if (c.exitCode !== null) {
        await Promise.race([closed, new Promise((r) => setTimeout(r, 1000))]);
        throw new Error(`etcd exited (${c.exitCode}) before serving:\n${out.join('')}`);
      }
      if (tls) {
        if (await healthOverTls(client, tls)) return;
      } else if (o.host) {
        if (await healthInNs(o.host, client)) return;
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
  const running = (): boolean => child !== undefined && child.exitCode === null && child.signalCode === null;
  const stop = async (hard = false): Promise<void> => {
    const c = child;
    if (!c || !running()) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill(hard ? 'SIGKILL' : 'SIGTERM');
    await exited;
  };
  return {
    name: o.name,
    peerPort: peer,
    url: `${tls ? 'etcds' : 'etcd'}://${ip}:${client}`,
    endpoint: `${ip}:${client}`,
    dir: o.dir,
    out,
    stop,
    start: run,
    get running() {
      return running();
    },
    get pid() {
      return running() ? child!.pid : undefined;
    },
    get paused() {
      return paused && running();
    },
    pause: () => void (running() && child!.kill('SIGSTOP') && (paused = true)),
    resume: () => void (running() && child!.kill('SIGCONT') && (paused = false)),
    async wipe() {
      await stop(true);
      rmSync(o.data, { recursive: true, force: true });
      await run();
    },
    async remove() {
      await stop(true);
      rmSync(o.removes, { recursive: true, force: true });
    },
  };
}

/** GET /health from inside the namespace etcd runs in. */
function healthInNs(host: EtcdHost, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    execFile('ip', ['netns', 'exec', host.ns, 'curl', '-sf', '-m', '0.5', `http://${host.addr}:${port}/health`], (err, out) => resolve(!err && /"health":\s*"true"/.test(out)));
  });
}

/** Kill every etcd still running (an `after` hook's last resort, and at exit). */
export function killEtcds(): void {
  for (const c of live) {
    c.kill('SIGCONT');
    c.kill('SIGKILL');
  }
}
