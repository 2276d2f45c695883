/**
 * The soak's fleet mode (`bench/soak.ts --idle-clients N --kill-proxy-every S`): what an operator's fleet does to
 * idle library clients. Two proxies (A and B), two servers registered with both, and N library clients in a process
 * of their own (bench/idle-clients.ts), each given both proxies (half A first, half B first) and sending one request
 * every `everyS` seconds. Every S seconds the soak kills a proxy - the one more clients are on, A and B in turn when as many are on each, with SIGKILL, every third kill
 * with SIGTERM (it drains), and every `bothEvery`-th kill both, the whole fleet down, so the clients' background
 * dials (their backoff) are soaked too - and starts it again `downS` seconds later on the same port.
 *
 * Per kill: the clients that were on a killed proxy, how long until every one of them said `reconnect` (and when the
 * proxy listened again), the requests sent in the kill's window and those that failed, by code and whether
 * `retryable`, and every dial the clients' process made (Node's `net.client.socket` channel): how many, how many to
 * a killed proxy, and the most in one millisecond and in ten (a storm: all the clients of a proxy dialling at once).
 * The client process's figures before each kill, sampled once the fleet had settled after the kill before (every
 * client back, settledSample) - RSS, heap after a full collection, fds, active handles by type, timers live on the
 * clients' clock, sockets and their listeners - and a verdict on growth (the second half of the kills against the
 * first). The clients log what they do to clients.log in the logs folder (IDLE_CLIENTS_LOG_LEVEL, info by default;
 * debug adds every request sent and answered). It fails (exit 1) on a request never settled, a client not back by the next kill, a
 * storm, more dials than the backoff allows, or growth.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { growth } from './churn.js';
import type { ClientStats, FromClients, IdleClientsConfig } from './idle-clients.js';
import { spread } from './rounds.js';
import { adoptChild, freePort, HOST, portTaken, probe, spawnRevproxy, waitForPort, type Child } from './procs.js';

export interface FleetOptions {
  minutes: number;
  clients: number;
  killEveryS: number;
  downS: number;
  everyS: number;
  /** Every this many kills, both proxies (0: never). */
  bothEvery: number;
  logs: string;
}

const POLICY = 'IDLE';
/** The library's defaults (actors/client.ts): the quick round's attempts per proxy, and the backoff's longest pause. */
const MAX_ATTEMPTS = 2;
const RECONNECT_MAX_DELAY_MS = 1000;

/** What one kill did to the clients. */
export interface KillRow {
  n: number;
  /** Seconds since the clients were ready. */
  atS: number;
  killed: string[];
  /** Which: A, B or A+B. */
  which: string;
  signal: 'SIGKILL' | 'SIGTERM';
  /** Ms from the kill until the killed proxies had exited (a SIGTERM's drain), and until they listened again. */
  exitMs: number;
  listenMs: number;
  /** Clients whose proxy was killed. */
  affected: number;
  /** Ms from the kill to each affected client's `reconnect`: median, largest; and how many never said it in the window. */
  backMedianMs: number;
  backMaxMs: number;
  notBack: number;
  /** Clients on a proxy not killed that disconnected all the same. */
  bystandersLost: number;
  /** Requests sent in the window (from the kill to the next), answered, failed by `CODE (retryable)`, and the slowest. */
  requests: number;
  answered: number;
  failed: Record<string, number>;
  /** The first failure's message for each of `failed`. */
  examples: Record<string, string>;
  slowestMs: number;
  /** The longest the client process's event loop stood still in the window (ms). */
  loopMaxMs: number;
  /** Dials in the window: all, to a killed proxy, failed (refused, timed out), the most in one ms and in ten, and the most one client made in any second. */
  dials: number;
  dialsToKilled: number;
  dialsFailed: number;
  peak1ms: number;
  peak10ms: number;
  perClientPeakPerS: number;
  /** Dials in each second from the kill until every client lost was back. */
  dialsPerS: number[];
  /** The client process just before the kill, once the fleet had settled after the kill before (settledSample); none when it had not. */
  stats?: ClientStats & { handles: number };
}

const median = (xs: number[]): number => spread(xs)?.median ?? NaN;

/**
 * How long after the last client of a kill said `reconnect` the fleet counts as settled: the requests it held are
 * sent on the new connection and answered within milliseconds, their timers and the failed dials' sockets gone.
 */
export const SETTLE_MS = 500;

/**
 * The client process's figures a kill reports and the growth verdict reads: the latest sample taken once the fleet
 * had settled (`settledAt`: the clients of the kill before all back, plus SETTLE_MS), none if no sample was taken
 * since. The sample just before the kill was read instead: with a long `--down` the clients of the kill before were
 * still reconnecting when it was taken (held requests' timers, failed dials' sockets), and the second half's figures,
 * later kills' clients slower back, were reported GREW where nothing leaked.
 */
export function settledSample<T extends { t: number }>(samples: readonly T[], settledAt: number | undefined): T | undefined {
  if (settledAt === undefined) return undefined;
  const last = samples.at(-1);
  return last !== undefined && last.t >= settledAt ? last : undefined;
}
const peakIn = (ts: number[], ms: number): number => {
  const per = new Map<number, number>();
  for (const t of ts) per.set(Math.floor(t / ms), (per.get(Math.floor(t / ms)) ?? 0) + 1);
  return Math.max(0, ...per.values());
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The most dials one client may make in any second while its proxies are down, by the backoff: the quick round
 * (`maxAttempts` a proxy, 80-100 ms apart) and the first pauses (160-200, 320-400 ms), each followed by a dial of
 * every proxy, fit in one second; a pause never shorter than 160 ms after it. Ten dials per proxy is past that with
 * room for a dial's own time: more is a storm.
 */
const dialsAllowedPerS = (proxies: number): number => proxies * (MAX_ATTEMPTS + 1000 / 200 + 3);

export async function runFleet(o: FleetOptions): Promise<{ ok: boolean; file: string }> {
  const ports = [await freePort(), await freePort()];
  const names = ['A', 'B'];
  const at = (i: number): string => `${HOST}:${ports[i]}`;
  const proxies: Child[] = [];
  let starts = 0;
  const startProxy = async (i: number): Promise<void> => {
    // The port was let go of by the proxy killed: another program may have taken it meanwhile (an outgoing connection's port).
    for (let tries = 0; ; tries++) {
      const p = spawnRevproxy(`proxy ${names[i]}`, ['proxy', '--port', String(ports[i]), '--log-level', 'info'], undefined, join(o.logs, `proxy-${names[i]}-${starts++}.log`));
      try {
        // A machine busy with other work may take seconds to start a Node process: a minute before giving up.
        await waitForPort(ports[i]!, p, 60_000);
        proxies[i] = p;
        return;
      } catch (err) {
        if (!portTaken(p.tail()) || tries === 20) throw err;
        await sleep(500);
      }
    }
  };
  await startProxy(0);
  await startProxy(1);
  const servers = ['1', '2'].map((id) => spawnRevproxy(`server ${id}`, ['server', '--id', id, '--pp', POLICY, '--listen', '0', '--revproc', ports.join(',')], undefined, join(o.logs, `server-${id}.log`)));
  for (const port of ports) {
    for (let i = 0; ; i++) {
      if ((await probe(port, POLICY, 4).catch(() => new Set())).size === 2) break;
      if (i === 100) throw new Error(`the two servers did not both answer through the proxy on ${port} within 20 s`);
      await sleep(200);
    }
  }
  const statsMs = Math.min(5000, Math.max(500, (o.killEveryS * 1000) / 4));
  const cfg: IdleClientsConfig = { ports, clients: o.clients, everyMs: o.everyS * 1000, policy: POLICY, statsMs, log: join(o.logs, 'clients.log'), ...(process.env.IDLE_CLIENTS_LOG_LEVEL ? { logLevel: process.env.IDLE_CLIENTS_LOG_LEVEL as IdleClientsConfig['logLevel'] } : {}) };
  const proc: ChildProcess = fork(join(import.meta.dirname, 'idle-clients.ts'), [JSON.stringify(cfg)], {
    execArgv: ['--import', 'tsx', '--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: { ...process.env, NO_COLOR: '1' },
  });
  // Stopped with the proxies and servers when a signal ends the soak (it would end on its own once the IPC channel closed).
  adoptChild('idle clients', proc);
  const conns: Array<Extract<FromClients, { k: 'conn' }>> = [];
  const reqs: Array<Extract<FromClients, { k: 'req' }>> = [];
  const dials: Array<Extract<FromClients, { k: 'dial' }>> = [];
  const stats: Array<{ t: number; stats: ClientStats }> = [];
  let end: Extract<FromClients, { k: 'end' }> | undefined;
  const cur: Array<string | undefined> = [];
  const ready = new Promise<number>((resolve, reject) => {
    proc.on('message', (m: FromClients) => {
      if (m.k === 'ready') {
        m.on.forEach((p, i) => (cur[i] = p));
        resolve(m.t);
      } else if (m.k === 'conn') {
        conns.push(m);
        cur[m.i] = m.ev === 'reconnect' ? m.proxy : undefined;
      } else if (m.k === 'req') reqs.push(m);
      else if (m.k === 'dial') dials.push(m);
      else if (m.k === 'stats') stats.push(m);
      else if (m.k === 'end') end = m;
    });
    proc.once('exit', (code) => reject(new Error(`the idle clients' process exited (${code}) before its clients were connected`)));
  });
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  try {
    return await soak(await ready);
  } finally {
    // On a failure too: the clients' process ends with the soak.
    if (proc.exitCode === null && proc.signalCode === null) proc.kill();
  }

  async function soak(t0: number): Promise<{ ok: boolean; file: string }> {
    const on = (i: number): number => cur.filter((p) => p === at(i)).length;
    console.log(`idle fleet: ${o.clients} library clients in process ${proc.pid}, each on proxies A (${at(0)}) and B (${at(1)}) (${on(0)} on A, ${on(1)} on B), one request every ${o.everyS} s each; a proxy killed every ${o.killEveryS} s (the one more clients are on, every third with SIGTERM${o.bothEvery ? `, every ${o.bothEvery === 1 ? '' : `${ordinal(o.bothEvery)} `}kill both` : ''}), started again ${o.downS} s later; ${o.minutes} min; logs in ${o.logs}`);
    console.log('  kill   at s  killed    signal   on it  back median/max ms  exited/listening ms  loop max ms  requests  failed                   dials  to killed  peak 1 ms/10 ms  per client/s   RSS MB  heap MB  fds  handles  timers  sockets/listeners');
    const rows: KillRow[] = [];
    // The kills at every --kill-proxy-every seconds within --minutes. A kill waits for the clients of the one before to be
    // back (at most a minute more), so a machine slow to start a proxy again lengthens the run rather than cutting it.
    const kills = Math.ceil((o.minutes * 60) / o.killEveryS) - 1;
    let nextKill = t0 + o.killEveryS * 1000;
    // When the fleet settled after the kill before (the clients' first connections for the first): undefined while a client is not back.
    let settledAt: number | undefined = t0;
    for (let n = 1; n <= kills; n++) {
      await sleep(nextKill - Date.now());
      // The figures are read once the fleet has settled: a kill waits for a sample taken since (one statsMs at most, and a second more).
      for (const late = Date.now() + statsMs + 1000; settledAt !== undefined && !settledSample(stats, settledAt) && Date.now() < late; ) await sleep(100);
      const both = o.bothEvery > 0 && n % o.bothEvery === 0;
      // One proxy: the one most clients are on (after the whole fleet was down they may all be on one), in turn when even.
      const which = both ? [0, 1] : on(0) === on(1) ? [(n - 1) % 2] : [on(0) > on(1) ? 0 : 1];
      const signal = n % 3 === 0 ? 'SIGTERM' : 'SIGKILL';
      const before = settledSample(stats, settledAt);
      const killAt = Date.now();
      const affectedIds = cur.flatMap((p, i) => (which.some((w) => p === at(w)) ? [i] : []));
      for (const w of which) proxies[w]!.proc.kill(signal);
      await Promise.all(which.map((w) => (proxies[w]!.proc.exitCode === null && proxies[w]!.proc.signalCode === null ? new Promise((r) => proxies[w]!.proc.once('exit', r)) : undefined)));
      const exitMs = Date.now() - killAt;
      await sleep(killAt + o.downS * 1000 - Date.now());
      await Promise.all(which.map((w) => startProxy(w)));
      const listenMs = Date.now() - killAt;
      // The window: until the next kill, or until every client lost is back if later (at most a minute later).
      await sleep(killAt + o.killEveryS * 1000 - Date.now() - 200);
      const everyBack = (): boolean => affectedIds.every((i) => cur[i] !== undefined);
      for (const late = Date.now() + 60_000; !everyBack() && Date.now() < late; ) await sleep(100);
      const windowEnd = Date.now();
      nextKill = Math.max(killAt + o.killEveryS * 1000, windowEnd + 200);
      const killed = which.map(at);
      const inWindow = <T extends { t: number }>(xs: T[]): T[] => xs.filter((x) => x.t >= killAt && x.t < windowEnd);
      const back = affectedIds.map((i) => conns.find((c) => c.i === i && c.ev === 'reconnect' && c.t >= killAt && c.t < windowEnd)?.t);
      const backMs = back.flatMap((t) => (t === undefined ? [] : [t - killAt]));
      const affected = new Set(affectedIds);
      const bystanders = new Set(inWindow(conns).filter((c) => c.ev === 'disconnect' && !affected.has(c.i)).map((c) => c.i));
      const sentIn = reqs.filter((r) => r.t0 >= killAt && r.t0 < windowEnd);
      const failed: Record<string, number> = {};
      const examples: Record<string, string> = {};
      for (const r of sentIn) {
        if (!r.code) continue;
        const key = `${r.code} (${r.retryable ? 'retryable' : 'not retryable'})`;
        failed[key] = (failed[key] ?? 0) + 1;
        examples[key] ??= r.message ?? '';
      }
      const allBack = Math.max(0, ...backMs);
      settledAt = back.includes(undefined) ? undefined : killAt + allBack + SETTLE_MS;
      const d = inWindow(dials);
      // A client's dials are not told apart by the channel: the most in any second over all, shared among the clients lost.
      const row: KillRow = {
        n, atS: Math.round((killAt - t0) / 1000), killed, which: which.map((w) => names[w]).join('+'), signal, exitMs, listenMs, affected: affectedIds.length,
        backMedianMs: median(backMs), backMaxMs: allBack, notBack: back.filter((t) => t === undefined).length, bystandersLost: bystanders.size,
        requests: sentIn.length, answered: sentIn.filter((r) => !r.code).length, failed, examples, slowestMs: Math.max(0, ...sentIn.map((r) => r.t - r.t0)),
        dials: d.length, dialsToKilled: d.filter((x) => killed.includes(`${HOST}:${x.port}`)).length, dialsFailed: d.filter((x) => !x.ok).length,
        peak1ms: peakIn(d.map((x) => x.t), 1), peak10ms: peakIn(d.map((x) => x.t), 10),
        perClientPeakPerS: affectedIds.length ? peakIn(d.map((x) => x.t - killAt), 1000) / affectedIds.length : 0,
        dialsPerS: Array.from({ length: Math.ceil(allBack / 1000) }, (_, s) => d.filter((x) => x.t - killAt >= s * 1000 && x.t - killAt < (s + 1) * 1000).length),
        loopMaxMs: Math.max(0, ...stats.filter((x) => x.t > killAt && x.t <= windowEnd).map((x) => x.stats.loopMaxMs)),
        ...(before ? { stats: { ...before.stats, handles: Object.values(before.stats.resources).reduce((a, b) => a + b, 0) } } : {}),
      };
      rows.push(row);
      console.log(killLine(row));
      for (const [k, m] of Object.entries(examples)) console.log(`         ${k}, the first: ${m}`);
    }
    proc.send({ k: 'stop' });
    await exited;
    const last = stats.at(-1);
    for (const s of servers) await s.stop();
    for (const p of proxies) await p.stop();

    // The verdict.
    const problems: string[] = [];
    const lost = end ? end.pending : NaN;
    if (!end) problems.push("the idle clients' process ended without its counts");
    else if (end.pending) problems.push(`${end.pending} of ${end.sent} requests never settled (each has a 6 s timeout): lost`);
    for (const r of rows) {
      if (r.notBack) problems.push(`kill ${r.n}: ${r.notBack} of ${r.affected} clients had not reconnected a minute after the proxies listened again`);
      if (r.peak1ms > Math.max(8, r.affected / 4)) problems.push(`kill ${r.n}: ${r.peak1ms} dials in one millisecond (of ${r.affected} clients lost): a reconnect storm`);
      if (r.perClientPeakPerS > dialsAllowedPerS(ports.length)) problems.push(`kill ${r.n}: ${r.perClientPeakPerS.toFixed(1)} dials a second per client lost, past the backoff's ${dialsAllowedPerS(ports.length)}`);
    }
    const samples = rows.flatMap((r) => (r.stats ? [r.stats] : []));
    const grew = growth(samples, [
      ['RSS MB', (x) => x.rssMB, 16],
      ['heap MB after full GC', (x) => x.heapMB, 4],
      ['open fds', (x) => x.fds, 8],
      ['active handles', (x) => x.handles, 8],
      // Each request waiting holds a timer (its timeout): as many as happen to be in flight, up to a few per client.
      ['timers on the clients\' clock', (x) => x.timers, 8 + o.clients / 2],
      ['sockets', (x) => x.sockets, 8],
      ['listeners on sockets', (x) => x.socketListeners, 16],
      ['listeners on clients', (x) => x.clientListeners, 0],
    ]);
    for (const g of grew) if (g.grew) problems.push(`${g.figure} grew: median ${g.first.toFixed(1)} over the first half of the kills, ${g.second.toFixed(1)} over the second`);
    const failed: Record<string, number> = {};
    for (const r of rows) for (const [k, v] of Object.entries(r.failed)) failed[k] = (failed[k] ?? 0) + v;
    const summary = {
      clients: o.clients, kills: rows.length, requests: end?.sent, settled: end?.settled, lost, failed,
      backMaxMs: Math.max(0, ...rows.map((r) => r.backMaxMs)), notBack: rows.reduce((n, r) => n + r.notBack, 0),
      peak1ms: Math.max(0, ...rows.map((r) => r.peak1ms)), peak10ms: Math.max(0, ...rows.map((r) => r.peak10ms)),
      growth: grew, first: samples[0], last, problems,
    };
    console.log(`\n${rows.length} kills; ${end?.sent ?? '?'} requests, ${end?.settled ?? '?'} settled, failed: ${JSON.stringify(failed)}; every client back within ${summary.backMaxMs} ms of a kill at most${summary.notBack ? ` (${summary.notBack} not back)` : ''}; dials at most ${summary.peak1ms} in one ms, ${summary.peak10ms} in ten`);
    for (const g of grew) console.log(`${g.figure}: median ${g.first.toFixed(1)} over the first half of the kills, ${g.second.toFixed(1)} over the second: ${g.grew ? 'GREW' : 'flat'}`);
    if (last) console.log(`the client process at the end: ${statsLine(last.stats)}; active resources ${JSON.stringify(last.stats.resources)}`);
    for (const p of problems) console.log(`FAIL: ${p}`);
    const dir = join(import.meta.dirname, 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `idle-soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    writeFileSync(file, JSON.stringify({ options: o, summary, rows, stats, failures: reqs.filter((r) => r.code) }, null, 2));
    console.log(`results: ${file}`);
    return { ok: problems.length === 0, file };
  }
}

function ordinal(n: number): string {
  return `${n}${n % 10 === 1 && n !== 11 ? 'st' : n % 10 === 2 && n !== 12 ? 'nd' : n % 10 === 3 && n !== 13 ? 'rd' : 'th'}`;
}

function statsLine(s: ClientStats): string {
  const handles = Object.values(s.resources).reduce((a, b) => a + b, 0);
  return `RSS ${s.rssMB.toFixed(0)} MB, heap ${s.heapMB.toFixed(1)} MB, ${s.fds} fds, ${handles} handles, ${s.timers} timers, ${s.sockets} sockets with ${s.socketListeners} listeners`;
}

function killLine(r: KillRow): string {
  const failed = Object.entries(r.failed).map(([k, v]) => `${v} ${k}`).join(', ') || '0';
  const s = r.stats;
  return `  ${String(r.n).padStart(4)} ${String(r.atS).padStart(6)}  ${r.which.padEnd(8)}  ${r.signal.padEnd(7)} ${String(r.affected).padStart(6)}  ${`${r.backMedianMs.toFixed(0)}/${r.backMaxMs}${r.notBack ? ` (${r.notBack} not back)` : ''}`.padStart(18)}  ${`${r.exitMs}/${r.listenMs}`.padStart(19)}  ${r.loopMaxMs.toFixed(0).padStart(11)}  ${String(r.requests).padStart(8)}  ${failed.padEnd(24)} ${String(r.dials).padStart(5)}  ${String(r.dialsToKilled).padStart(9)}  ${`${r.peak1ms}/${r.peak10ms}`.padStart(15)}  ${r.perClientPeakPerS.toFixed(1).padStart(12)}${s ? `  ${s.rssMB.toFixed(0).padStart(7)}  ${s.heapMB.toFixed(1).padStart(7)}  ${String(s.fds).padStart(3)}  ${String(s.handles).padStart(7)}  ${String(s.timers).padStart(6)}  ${`${s.sockets}/${s.socketListeners}`.padStart(17)}` : ''}`;
}
