/**
 * The soak's churn (`bench/soak.ts --churn`): what a proxy meets in an hour
 * of the real world beside its steady load, each at a fixed, moderate rate:
 *
 * - short-lived clients: a connection, one to three requests, gone; each from
 *   another loopback address (127.0.0.2-127.0.0.251) and so another port; one
 *   in ten leaves with its requests still in flight, one in ten asks for a
 *   policy nobody serves;
 * - servers that come and go: every `restartS` seconds one churn server drains
 *   (SIGTERM) and a new one starts under a new id and a new policy, in turn
 *   registered directly (`--revproc`) and through etcd (`--registry`), and the
 *   short clients follow it to its policy;
 * - bad peers now and then: garbage bytes, an HTTP request, half a frame, a
 *   silent connection, a registration that leaves mid-handshake, a
 *   registration whose listen port nobody serves;
 * - readers of the proxy's /metrics (a new connection every sample) and of
 *   the inspector's live feed (a few seconds each, then gone);
 * - floods: every `floodS` seconds, for 5 s, 4 connections keep 4,096
 *   requests in flight each to a policy whose one server works one at a time
 *   (2 ms each), as a misbehaving batch job does: the policy's wait queue
 *   fills, most are refused OVERLOADED and those connections' reads held
 *   until their next answer (actors/routing.ts, `holdRefused`). Every request
 *   of a flood must be answered (an ACK, OVERLOADED, or TIMEOUT for those
 *   that waited too long), none lost or left waiting.
 *
 * Every sample reads the proxy's /metrics: the heap in use (the window's
 * lowest sample stands for the heap after a collection), descriptors, active
 * handles, and connections by role. `verdict` compares the second half of
 * the run's windows with the first.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { get, type IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';
import { errorsOf, runLoad } from './loadgen.js';
import { spread } from './rounds.js';
import { freePort, HOST, probe, spawnRevproxy, type Child } from './procs.js';

export interface ChurnCounts {
  clients: number;
  clientAnswers: number;
  clientErrors: Record<string, number>;
  leftInFlight: number;
  restarts: number;
  badPeers: number;
  metricsReads: number;
  inspectorReads: number;
  /** Floods run (bench/churn.ts, `flood`), their requests answered ACK, and their failures by code (OVERLOADED expected). */
  floods: number;
  floodAnswers: number;
  floodErrors: Record<string, number>;
  /** Floods that lost a request, were answered wrong or not at all: a failure of the proxy (the soak exits 1), counted apart from `failures`, which keeps the first 50 of every kind. */
  floodFailures: number;
  failures: string[];
}

/** What the proxy's /metrics said over one window. */
export interface Sample {
  /** The heap in use: the lowest of the window's samples. */
  heapMB: number;
  /** The heap after the window's last full collection (Mark-Compact, from --trace-gc), else the last one before. */
  heapAfterGcMB: number;
  fds: number;
  handles: number;
  conns: Record<string, number>;
  /** Policies /metrics shows `revproxy_pool_members` for (held, or left and still read). */
  pools: number;
  /** Series (sample lines) on /metrics. */
  series: number;
}

const zero = (): ChurnCounts => ({ clients: 0, clientAnswers: 0, clientErrors: {}, leftInFlight: 0, restarts: 0, badPeers: 0, metricsReads: 0, inspectorReads: 0, floods: 0, floodAnswers: 0, floodErrors: {}, floodFailures: 0, failures: [] });

/** GET a path over a connection of its own (no keep-alive): the body, or a rejection. */
function fetchText(port: number, path: string, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host: HOST, port, path, agent: false, timeout: ms }, (res: IncomingMessage) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${path}: HTTP ${res.statusCode}`))));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${path}: no answer within ${ms} ms`)));
    req.on('error', reject);
  });
}

/** The lines of a Prometheus text: `name{labels}` -> value. */
function parseMetrics(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

/** The policy the floods ask for: one server of it, one request at a time. */
export const FLOOD_POLICY = 'FLOOD';
/**
 * The proxy's answers a flood's failed requests may have: refused (a full wait queue), or waited past
 * the request timeout (2,048 waiting at the proxy and the server, 2 ms each, is 4 s and more).
 */
const FLOOD_ANSWERS = new Set(['OVERLOADED', 'TIMEOUT']);

export class Churn {
  counts = zero();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly sockets = new Set<Socket>();
  private server?: Child;
  /** The one-at-a-time server of the flooded policy. */
  private floodServer?: Child;
  /** The flood under way, and how to end it early (the churn stopping). */
  private flooding?: Promise<void>;
  private readonly floodStop = new AbortController();
  private floodReady = false;
  private generation = 0;
  /** The policy the current churn server serves (the short clients' target). */
  private policy = 'SOAK';
  private window: Sample[] = [];
  private stopped = false;
  /** Monotonic, unlike `counts`: what makes each short client's address and each bad peer's ids new. */
  private nClients = 0;
  private nBad = 0;
  /** How far the proxy's log (with its --trace-gc lines) has been read, and the last full collection's result. */
  private gcOffset = 0;
  private heapAfterGc = NaN;

  constructor(
    private readonly o: {
      proxyPort: number;
      adminPort: number;
      inspectPort: number;
      registry: string;
      steadyPolicy: string;
      clientsPerS: number;
      restartS: number;
      badS: number;
      /** Seconds between floods (0: none). */
      floodS: number;
      logs: string;
      /** The proxy's output, with its --trace-gc lines. */
      proxyLog: string;
    },
  ) {}

  start(): void {
    const every = (ms: number, fn: () => Promise<void> | void): void => {
      this.timers.push(setInterval(() => void Promise.resolve().then(fn).catch((err: Error) => this.fail(err.message)), ms));
    };
    every(1000 / this.o.clientsPerS, () => this.shortClient());
    every(this.o.restartS * 1000, () => this.restart());
    every(this.o.badS * 1000, () => this.badPeer());
    every(2000, () => this.sample());
    every(15_000, () => this.readInspector());
    if (this.o.floodS > 0) {
      this.floodServer = spawnRevproxy('flood server', ['server', '--id', 'flood-1', '--pp', FLOOD_POLICY, '--listen', '0', '--revproc', String(this.o.proxyPort), '--concurrency', '1', '--delay', '2'], undefined, `${this.o.logs}/flood-server.log`);
      every(this.o.floodS * 1000, () => this.flood());
    }
    void this.restart().catch((err: Error) => this.fail(err.message));
  }

  /**
   * A flood: 4 connections keep 4,096 requests in flight each for 5 s to the one-at-a-time
   * policy, then wait for their answers. Every request must be answered, an ACK, OVERLOADED or TIMEOUT:
   * one given up (NO_ANSWER, CONNECTION_LOST) is a held connection never let go, or a lost request.
   */
  private async flood(): Promise<void> {
    if (this.flooding || this.stopped) return;
    this.flooding = this.floodOnce();
    try {
      await this.flooding;
    } finally {
      this.flooding = undefined;
    }
  }

  private async floodOnce(): Promise<void> {
    // The first flood waits for the flood server to answer through the proxy.
    if (!this.floodReady && !(this.floodReady = await this.untilAnswering(FLOOD_POLICY, 'the flood server'))) return;
    const r = await runLoad({ target: () => ({ host: HOST, port: this.o.proxyPort, policy: FLOOD_POLICY }), connections: 4, depth: 4096, durationMs: 5000, srcid: 'flood', drainMs: 15_000, stop: this.floodStop.signal });
    this.counts.floods++;
    this.counts.floodAnswers += r.ok;
    for (const [code, n] of Object.entries(errorsOf(r))) this.counts.floodErrors[code] = (this.counts.floodErrors[code] ?? 0) + n;
    const lost = Object.entries(errorsOf(r)).filter(([code]) => !FLOOD_ANSWERS.has(code));
    if (!(r.ok === 0 || lost.length || r.wrongHash) || this.stopped) return;
    this.counts.floodFailures++;
    this.fail(`flood: ${r.ok} answered, ${r.wrongHash} wrong hashes, ${lost.map(([k, v]) => `${k} ${v}`).join(', ') || 'no other failure'}${r.firstError.NO_ANSWER ? ` (${r.firstError.NO_ANSWER})` : ''}`);
  }

  /** Wait until `policy` answers through the proxy (tried every 200 ms, for 20 s): false when the churn stopped meanwhile. */
  private async untilAnswering(policy: string, who: string): Promise<boolean> {
    for (let i = 0; ; i++) {
      if (this.stopped) return false;
      if ((await probe(this.o.proxyPort, policy, 1).catch(() => new Set())).size) return true;
      if (i === 100) throw new Error(`${who} was not answering through the proxy after 20 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  private fail(why: string): void {
    if (this.stopped) return;
    if (this.counts.failures.length < 50) this.counts.failures.push(why);
  }

  private track(s: Socket): Socket {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
    s.on('error', () => {});
    return s;
  }

  /** One short-lived client: a connection from its own address, 1-3 requests, then gone (sometimes before the answers). */
  private shortClient(): void {
    const n = this.nClients++;
    this.counts.clients++;
    const policy = n % 10 === 3 ? `NOBODY-${n % 1000}` : n % 2 ? this.policy : this.o.steadyPolicy;
    const leave = n % 10 === 7;
    const requests = 1 + (n % 3);
    const s = this.track(connect({ host: HOST, port: this.o.proxyPort, localAddress: `127.0.0.${2 + (n % 250)}` }));
    const decoder = new FrameDecoder();
    let got = 0;
    s.once('connect', () => {
      for (let i = 0; i < requests; i++) s.write(encodeFrame({ type: MsgType.DATA, seq: i, srcid: `short-${n}`, privPoliId: policy, payload: `churn ${n} ${i}` }));
      if (leave) {
        this.counts.leftInFlight++;
        s.destroy();
      }
    });
    s.on('data', (c: Buffer) => {
      for (const m of decoder.push(c).messages) {
        if (m.type === MsgType.ACK) this.counts.clientAnswers++;
        else if (m.type === MsgType.ERROR) {
          const code = policy.startsWith('NOBODY') && m.code === 'NO_SERVER' ? 'NO_SERVER (asked for)' : m.code;
          this.counts.clientErrors[code] = (this.counts.clientErrors[code] ?? 0) + 1;
        }
        if (++got === requests) s.end();
      }
    });
    s.setTimeout(10_000, () => {
      this.counts.clientErrors.NO_ANSWER = (this.counts.clientErrors.NO_ANSWER ?? 0) + requests - got;
      s.destroy();
    });
  }

  /** The churn server drains and a new one (new id, new policy) takes its place, directly or through etcd in turn. */
  private restarting = false;

  private async restart(): Promise<void> {
    if (this.restarting) return;
    this.restarting = true;
    try {
      await this.replace();
    } finally {
      this.restarting = false;
    }
  }

  private async replace(): Promise<void> {
    const old = this.server;
    const g = ++this.generation;
    const policy = `CHURN-${g}`;
    const where = g % 2 ? ['--revproc', String(this.o.proxyPort)] : ['--registry', this.o.registry];
    this.server = spawnRevproxy(`churn ${g}`, ['server', '--id', `churn-${g}`, '--pp', policy, '--listen', '0', ...where], undefined, `${this.o.logs}/churn-servers.log`);
    // A rolling replacement: the short clients move to the new policy once it answers, then the old server drains.
    if (!(await this.untilAnswering(policy, `churn server ${g} (${where[0]})`))) return void (await old?.stop());
    this.policy = policy;
    if (old) await old.stop();
    if (g > 1) this.counts.restarts++;
  }

  /** Someone who is not a revproxy peer, or one that leaves half-way. */
  private async badPeer(): Promise<void> {
    const k = this.nBad++;
    this.counts.badPeers++;
    const s = this.track(connect({ host: HOST, port: this.o.proxyPort, localAddress: `127.0.1.${1 + (k % 200)}` }));
    await new Promise<void>((resolve) => {
      s.once('connect', () => resolve());
      s.once('error', () => resolve());
    });
    const frame = (m: Parameters<typeof encodeFrame>[0]): Buffer => Buffer.from(encodeFrame(m));
    switch (k % 6) {
      case 0:
        s.end(Buffer.from(Array.from({ length: 64 }, (_, i) => (i * 37 + k) & 0xff)));
        break;
      case 1:
        s.end('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
        break;
      case 2: {
        const f = frame({ type: MsgType.DATA, seq: 1, srcid: 'half', privPoliId: this.o.steadyPolicy, payload: 'x'.repeat(100) });
        s.write(f.subarray(0, f.length - 20));
        setTimeout(() => s.destroy(), 500);
        break;
      }
      case 3:
        setTimeout(() => s.destroy(), 2000);
        break;
      case 4:
        // A registration that leaves before the proxy could dial it.
        s.write(frame({ type: MsgType.SETUP, id: `ghost-${k}`, privPolyId: `GHOST-${k}`, listenport: await freePort() }));
        s.destroy();
        break;
      default:
        // A registration whose listen port nobody serves, kept for a few seconds.
        s.write(frame({ type: MsgType.SETUP, id: `dead-${k}`, privPolyId: `DEAD-${k}`, listenport: await freePort() }));
        setTimeout(() => s.destroy(), 3000);
    }
  }

  private async sample(): Promise<void> {
    const m = parseMetrics(await fetchText(this.o.adminPort, '/metrics'));
    this.counts.metricsReads++;
    const conns: Record<string, number> = {};
    let pools = 0;
    // By type: /metrics has no nodejs_active_handles_total (a gauge named like a counter, left out for promtool).
    let handles = 0;
    for (const [k, v] of m) {
      const role = /^revproxy_connections\{role="([^"]+)"\}$/.exec(k);
      if (role) conns[role[1]!] = v;
      if (k.startsWith('revproxy_pool_members{') && k.includes('state="serving"')) pools++;
      if (k.startsWith('nodejs_active_handles{')) handles += v;
    }
    this.readGc();
    this.window.push({ heapMB: (m.get('nodejs_heap_size_used_bytes') ?? NaN) / 1048576, heapAfterGcMB: this.heapAfterGc, fds: m.get('process_open_fds') ?? NaN, handles, conns, pools, series: m.size });
  }

  /** The proxy's full collections since the last read (`[pid]  123 ms: Mark-Compact 20.1 (25.3) -> 15.2 (25.8) MB, ...`). */
  private readGc(): void {
    const fd = openSync(this.o.proxyLog, 'r');
    try {
      const buf = Buffer.alloc(1 << 20);
      let text = '';
      for (let n; (n = readSync(fd, buf, 0, buf.length, this.gcOffset)) > 0; ) {
        text += buf.toString('latin1', 0, n);
        this.gcOffset += n;
      }
      // A line cut at the end is read again next time.
      const cut = text.length - 1 - text.lastIndexOf('\n');
      this.gcOffset -= cut;
      for (const m of text.slice(0, text.length - cut).matchAll(/Mark-Compact[^\d]*[\d.]+ \([\d.]+\) -> ([\d.]+) \(/g)) this.heapAfterGc = Number(m[1]);
    } finally {
      closeSync(fd);
    }
  }

  /** An inspector page's feed, read for a few seconds and left. */
  private async readInspector(): Promise<void> {
    await new Promise<void>((resolve) => {
      const req = get({ host: HOST, port: this.o.inspectPort, path: '/events', agent: false }, (res) => {
        res.on('data', () => {});
        setTimeout(() => {
          req.destroy();
          resolve();
        }, 3000);
      });
      req.on('error', (err) => {
        this.fail(`inspector feed: ${err.message}`);
        resolve();
      });
    });
    this.counts.inspectorReads++;
  }

  /** The window's figures (the lowest heap, the last of the rest), and counts since the last call. */
  takeWindow(): { sample?: Sample; counts: ChurnCounts } {
    const w = this.window;
    this.window = [];
    const counts = this.counts;
    this.counts = zero();
    const last = w.at(-1);
    return { sample: last && { ...last, heapMB: Math.min(...w.map((s) => s.heapMB)) }, counts };
  }

  /** One reading now (after the churn stopped). */
  async readNow(): Promise<Sample> {
    await this.sample();
    return this.takeWindow().sample!;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    for (const s of this.sockets) s.destroy();
    // A flood under way stops sending and waits for its answers before its server goes.
    this.floodStop.abort();
    await this.flooding;
    await Promise.all([this.server?.stop(), this.floodServer?.stop()]);
  }
}

/**
 * Growth over the run: each figure's median over the second half of the
 * windows against the first half's (the first window, the warm-up, left
 * out). A figure grew when the second half is past the first by more than
 * `allow` (absolute) and 10 %.
 */
export function verdict(samples: Array<Sample & { rssMB: number }>): Array<{ figure: string; first: number; second: number; grew: boolean }> {
  return growth(samples, [
    ['RSS MB', (x) => x.rssMB, 16],
    ['heap MB (lowest in window)', (x) => x.heapMB, 4],
    ['heap MB after full GC', (x) => x.heapAfterGcMB, 4],
    ['open fds', (x) => x.fds, 8],
    ['active handles', (x) => x.handles, 8],
    ['connections (all roles)', (x) => Object.values(x.conns).reduce((a, b) => a + b, 0), 8],
  ]);
}

/**
 * Whether each figure grew over a run: its median over the second half of the samples (the first left out: a
 * start-up) against the first half's, grown when by more than its allowance and by more than a tenth.
 */
export function growth<T>(samples: T[], figures: Array<[string, (x: T) => number, number]>): Array<{ figure: string; first: number; second: number; grew: boolean }> {
  const s = samples.slice(1);
  const half = Math.floor(s.length / 2);
  const median = (xs: number[]): number => spread(xs)?.median ?? NaN;
  return figures.map(([figure, pick, allow]) => {
    const first = median(s.slice(0, half).map(pick));
    const second = median(s.slice(half).map(pick));
    return { figure, first, second, grew: second - first > allow && second > first * 1.1 };
  });
}
