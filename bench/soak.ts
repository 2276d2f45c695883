/**
 * The soak: sustained load through the proxy for a long while (10 minutes
 * by default), past every timeout and interval of the proxy's defaults
 * (idle timeout 60 s, PINGs every second, probes, ejection), with one
 * server stopped (SIGSTOP) for a while in the middle. Reports, per window,
 * answers per second, errors by code, latency p99 and max, and the proxy's
 * RSS and CPU; at the end the totals. Not in CI (it takes minutes):
 *
 *   npm run soak -- [--minutes 10] [--stall 10] [--window 10]
 *
 * (`npm run soak` execs `node --import tsx bench/soak.ts`: a signal npm passes on reaches the soak
 * itself, not a shell that would end without it, nor tsx's CLI, which SIGKILLs a child whose event
 * loop takes over 30 ms to answer its relay.)
 *
 * The proxy runs with its defaults (log level info), three servers of one
 * policy (`revproxy server`), four client connections with 32 requests in
 * flight each. Results go to bench/results/soak-<time>.json.
 *
 * With `--access-log` the proxy also writes its access log (text) to the
 * logs folder, and the soak rotates it as logrotate does every `--rotate`
 * seconds (rename, then SIGHUP): each rotated file is checked (whole lines,
 * the format) and its lines counted, then deleted. At the end the lines must
 * number the requests answered (the load's and the soak's probes'), none
 * lost or doubled across the rotations; the soak exits 1 when they do not,
 * and keeps any file found faulty.
 *
 * With `--churn` (bench/churn.ts) the steady load runs at a fixed rate
 * (`--rate`, 2000 requests/s) beside what an hour in the real world brings:
 * short-lived clients from many addresses (`--clients` a second), a server
 * that drains and comes back under a new id and policy every `--restart`
 * seconds (directly and through an etcd of the soak's own, in turn), a bad
 * peer every `--bad` seconds, /metrics and inspector readers. Each window
 * then also reports the proxy's heap (lowest sample), descriptors, active
 * handles and connections, and the end a verdict on growth (the second
 * half's windows against the first's) and the figures once the churn has
 * stopped against those before it began; the soak exits 1 when any grew.
 *
 * With `--idle-clients N` (bench/idle-fleet.ts) the soak is another one: no
 * steady load, but a fleet of two proxies and N idle library clients (in a
 * process of their own, bench/idle-clients.ts) on both, each sending a
 * request every `--request-every` seconds, while a proxy is killed every
 * `--kill-proxy-every` seconds (SIGKILL, every third SIGTERM; every
 * `--kill-both-every`-th kill both) and started again `--down` seconds later
 * on its port. Per kill: how long until every client is back, their failed
 * requests by code and `retryable`, their dials (the most in one
 * millisecond); over the run the client process's RSS, heap, fds, handles,
 * timers and listeners. It exits 1 on a request lost, a client not back, a
 * storm of dials, or growth.
 */
import { createReadStream, existsSync, mkdirSync, mkdtempSync, renameSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { Churn, verdict, type ChurnCounts, type Sample } from './churn.js';
import { runFleet } from './idle-fleet.js';
import { errorsOf, runLoad } from './loadgen.js';
import { cpuSeconds, fdCount, freePort, HOST, probe, rssBytes, spawnRevproxy, stopAll, stopChildrenOnSignals, waitForPort } from './procs.js';

const USAGE = `usage: npm run soak -- [--minutes N] [--stall SECONDS] [--window SECONDS] [--access-log [--rotate SECONDS]]
                          [--churn [--rate N] [--clients N] [--restart SECONDS] [--bad SECONDS] [--flood SECONDS]]
  --minutes     how long the load runs (default 10)
  --stall       seconds one server is stopped (SIGSTOP) in the middle (default 10; 0 = none)
  --window      seconds per reported window (default 10)
  --access-log  the proxy writes its access log, rotated as logrotate does every --rotate seconds (default 60), every line checked
  --churn       beside a steady load of --rate requests/s (default 2000): --clients short-lived clients a second (default 20),
                a server drained and replaced every --restart seconds (default 20; directly and through etcd in turn),
                a bad peer every --bad seconds (default 5), /metrics and inspector readers, and every --flood seconds
                (default 60; 0 = none) a 5 s flood of 4 x 4,096 requests in flight at a one-at-a-time server's policy
                (every request answered: an ACK, OVERLOADED or TIMEOUT); reports heap, fds, handles and connections per
                window and whether any grew
       npm run soak -- --idle-clients N [--kill-proxy-every SECONDS] [--down SECONDS] [--kill-both-every K] [--request-every SECONDS] [--minutes N]
  --idle-clients      instead of the load: N idle library clients (connect(), in a process of their own) on a fleet of two
                      proxies, each sending one request every --request-every seconds (default 3)
  --kill-proxy-every  seconds between kills (default 60): the proxy most clients are on (A and B in turn when even), SIGKILL (every third SIGTERM), every
                      --kill-both-every-th kill (default 4; 0 = never) both, each started again --down seconds later (default 3)
                      on its port; reports per kill how long until every client was back, failed requests by code and
                      retryable, dials (the most in one ms), and the client process's RSS, heap, fds, handles, timers, listeners;
                      the kills are those due within --minutes, each waiting (a minute at most) for the clients of the last
SIGINT, SIGTERM or SIGHUP stops every process the soak started (and its etcd), then exits 128 + the signal's number.`;

function options(): { [k: string]: string | boolean | undefined } {
  try {
    return parseArgs({
      options: {
        minutes: { type: 'string', default: '10' },
        stall: { type: 'string', default: '10' },
        window: { type: 'string', default: '10' },
        'access-log': { type: 'boolean', default: false },
        rotate: { type: 'string', default: '60' },
        churn: { type: 'boolean', default: false },
        rate: { type: 'string', default: '2000' },
        clients: { type: 'string', default: '20' },
        restart: { type: 'string', default: '20' },
        bad: { type: 'string', default: '5' },
        flood: { type: 'string', default: '60' },
        'idle-clients': { type: 'string' },
        'kill-proxy-every': { type: 'string', default: '60' },
        down: { type: 'string', default: '3' },
        'kill-both-every': { type: 'string', default: '4' },
        'request-every': { type: 'string', default: '3' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }).values;
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}
const values = options();
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const minutes = Number(values.minutes);
const stallS = Number(values.stall);
const windowS = Number(values.window);
const rotateS = Number(values.rotate);
const churning = values.churn === true;
const rate = Number(values.rate);
const clientsPerS = Number(values.clients);
const restartS = Number(values.restart);
const badS = Number(values.bad);
const floodS = Number(values.flood);
if (!(minutes > 0) || !(stallS >= 0) || !(windowS > 0) || !(rotateS > 0) || !(rate > 0) || !(clientsPerS > 0) || !(restartS > 0) || !(badS > 0) || !(floodS >= 0)) {
  console.error(USAGE);
  process.exit(2);
}

interface Row {
  at: number;
  rps: number;
  ok: number;
  errors: Record<string, number>;
  wrongHash: number;
  p99: number;
  max: number;
  rssMB: number;
  cpu: number;
  note: string;
  /** With --churn: the proxy's figures over the window, and what the churn did. */
  proxy?: Sample & { rssMB: number; fdsProc: number };
  churn?: ChurnCounts;
}

const POLICY = 'SOAK';
/** The load generator's own failure codes (bench/loadgen.ts): no answer came from the proxy. */
const LOCAL_CODES = new Set(['CONNECT_FAILED', 'CONNECTION_LOST', 'NO_ANSWER', 'UNEXPECTED_ANSWER']);

/** What a text access line looks like (admin/access-log.ts; spec/access-log.spec.ts checks every field). */
const ACCESS_LINE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z client=\S+ addr=\S+ policy=\S+ server=\S+ seq=\d+ tries=\d+ latency_ms=[\d.]+ outcome=\S+ queue_ms=[\d.]+$/;
/** The lines of the churn's requests (bench/churn.ts): its short clients', and its probes of the policies it replaces servers under. */
const CHURN_CLIENT = Buffer.from(' client=short-');
const SOAK_POLICY = Buffer.from(` policy=${POLICY} `);

/**
 * A rotated access log: its lines counted (the load's and the soak's probes', apart from the
 * churn's: they are counted, not checked), its first and last line checked, and whether it ends
 * with a whole line.
 */
async function countLines(file: string): Promise<{ lines: number; churn: number; whole: boolean; bad: string[] }> {
  let lines = 0;
  let churn = 0;
  let first = '';
  let tail: Buffer = Buffer.alloc(0);
  /** The line a chunk ended inside, read with the next one. */
  let rest: Buffer = Buffer.alloc(0);
  for await (const read of createReadStream(file, { highWaterMark: 1 << 20 }) as AsyncIterable<Buffer>) {
    const chunk = rest.length ? Buffer.concat([rest, read]) : read;
    let at = 0;
    for (let i = chunk.indexOf(10); i !== -1; at = i + 1, i = chunk.indexOf(10, at)) {
      const line = chunk.subarray(at, i);
      if (line.includes(CHURN_CLIENT) || !line.includes(SOAK_POLICY)) churn++;
      else lines++;
    }
    rest = chunk.subarray(at);
    if (!first) {
      const nl = read.indexOf(10);
      first = read.subarray(0, nl === -1 ? read.length : nl).toString();
    }
    tail = read.length >= 512 ? read.subarray(-512) : Buffer.concat([tail, read]).subarray(-512);
  }
  const whole = tail.length === 0 || tail[tail.length - 1] === 10;
  const last = tail.toString().split('\n').at(whole ? -2 : -1) ?? '';
  const bad = [first, last].filter((l) => l && !ACCESS_LINE.test(l));
  return { lines, churn, whole, bad };
}

/** With --churn: an etcd of the soak's own (removed on a signal too). */
let etcd: Etcd | undefined;

async function main(): Promise<void> {
  const port = await freePort();
  // Each process's log goes to a file of its own, kept after the run: a soak that goes wrong is read there.
  const logs = mkdtempSync(join(tmpdir(), 'revproxy-soak-'));
  const accessLog = values['access-log'] ? join(logs, 'access.log') : undefined;
  // With --churn: an etcd of the soak's own, and the proxy's /metrics and inspector, read by the churn.
  const churnPorts = churning ? { admin: await freePort(), inspect: await freePort() } : undefined;
  if (churning) etcd = await startEtcd();
  const churnFlags = churnPorts ? ['--admin', `${HOST}:${churnPorts.admin}`, '--inspect', String(churnPorts.inspect), '--registry', etcd!.url] : [];
  const proxy = spawnRevproxy('proxy', ['proxy', '--port', String(port), '--log-level', 'info', ...(accessLog ? ['--access-log', accessLog] : []), ...churnFlags], undefined, join(logs, 'proxy.log'), churning ? ['--trace-gc'] : []);
  await waitForPort(port, proxy);
  const servers = ['1', '2', '3'].map((id) => spawnRevproxy(`server ${id}`, ['server', '--id', id, '--pp', POLICY, '--listen', '0', '--revproc', String(port)], undefined, join(logs, `server-${id}.log`)));
  // Requests the soak itself sends (probes): the access log has a line for each, too.
  let probed = 0;
  const probeAll = async (): Promise<Set<string>> => {
    const seen = await probe(port, POLICY, 6);
    probed += 6;
    return seen;
  };
  for (let i = 0; i < 50; i++) {
    if ((await probeAll()).size === 3) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const churn = churnPorts && new Churn({ proxyPort: port, adminPort: churnPorts.admin, inspectPort: churnPorts.inspect, registry: etcd!.url, steadyPolicy: POLICY, clientsPerS, restartS, badS, floodS, logs, proxyLog: join(logs, 'proxy.log') });
  // The figures before the churn begins, to compare with those once it has stopped.
  const before = churn && { ...(await churn.readNow()), rssMB: Math.round(rssBytes(proxy.pid) / 1048576), fdsProc: fdCount(proxy.pid) };
  churn?.start();
  const rows: Row[] = [];
  const t0 = Date.now();
  const end = t0 + minutes * 60_000;
  const stallAt = t0 + (minutes * 60_000) / 2;
  let stalled: 'before' | 'now' | 'after' = stallS > 0 ? 'before' : 'after';
  let lastCpu = cpuSeconds(proxy.pid);
  console.log(`soak: ${minutes} min through the proxy on ${HOST}:${port}, 3 servers, 4 connections x 32 in flight${churning ? ` at ${rate} requests/s` : ''}${stallS ? `, server 2 stopped for ${stallS} s at ${minutes / 2} min` : ''}; logs in ${logs}`);
  if (churning) console.log(`  churn: ${clientsPerS} short clients/s from 250 addresses, a server replaced every ${restartS} s (direct and etcd in turn), a bad peer every ${badS} s, /metrics read every 2 s, the inspector feed every 15 s${floodS ? `, a 5 s flood (4 x 4,096 in flight) at a one-at-a-time policy every ${floodS} s` : ''}`);
  console.log(`  time   req/s     errors                 p99 ms   max ms   RSS MB  CPU${churning ? '   heap MB  after GC  fds  handles  conns c/r/u/up  short ok/err  restarts  flood ok/overl  policies/series' : ''}`);
  // The access log's rotations: what each rotated file held, and any fault found in one.
  const access = { lines: 0, churnLines: 0, files: 0, answered: 0, faults: [] as string[] };
  let nextRotation = t0 + rotateS * 1000;
  const rotation = async (): Promise<void> => {
    const file = `${accessLog}.${access.files + 1}`;
    renameSync(accessLog!, file);
    proxy.proc.kill('SIGHUP');
    // The proxy writes what it holds to the renamed file, then opens a new one (admin/access-log.ts).
    for (let i = 0; i < 100 && !existsSync(accessLog!); i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 2000));
    access.files++;
    await tally(file);
  };
  const tally = async (file: string): Promise<void> => {
    const c = await countLines(file);
    access.lines += c.lines;
    access.churnLines += c.churn;
    if (!c.whole) access.faults.push(`${file} ends inside a line`);
    for (const l of c.bad) access.faults.push(`${file}: not an access line: ${l.slice(0, 200)}`);
    // A file with a fault is kept, to be read.
    if (!c.whole || c.bad.length) return;
    // Off the event loop: unlinking a file of hundreds of MB takes the file system 0.1-0.2 s,
    // which the load generator in this process would have counted as the proxy's latency.
    await rm(file);
  };
  let rotating: Promise<void> = Promise.resolve();
  while (Date.now() < end) {
    let note = '';
    if (accessLog && Date.now() >= nextRotation) {
      nextRotation += rotateS * 1000;
      // Beside the load, as logrotate runs beside traffic.
      rotating = rotating.then(rotation).catch((err: Error) => void access.faults.push(`rotation failed: ${err.message}`));
      note = 'access log rotated (rename, SIGHUP)';
    }
    if (stalled === 'before' && Date.now() >= stallAt) {
      servers[1]!.proc.kill('SIGSTOP');
      stalled = 'now';
      note = `server 2 stopped (SIGSTOP) for ${stallS} s`;
      setTimeout(() => {
        servers[1]!.proc.kill('SIGCONT');
        stalled = 'after';
      }, stallS * 1000).unref();
    }
    const r = await runLoad({ target: () => ({ host: HOST, port, policy: POLICY }), connections: 4, depth: 32, durationMs: windowS * 1000, ...(churning ? { rate } : {}) });
    const cpu = cpuSeconds(proxy.pid);
    const row: Row = {
      at: Math.round((Date.now() - t0) / 1000), rps: Math.round(r.rps), ok: r.ok, errors: errorsOf(r), wrongHash: r.wrongHash,
      p99: r.latency.p99, max: r.latency.max, rssMB: Math.round(rssBytes(proxy.pid) / 1048576), cpu: (cpu - lastCpu) / windowS, note,
    };
    lastCpu = cpu;
    let churned = '';
    if (churn) {
      const w = churn.takeWindow();
      if (w.sample) row.proxy = { ...w.sample, rssMB: row.rssMB, fdsProc: fdCount(proxy.pid) };
      row.churn = w.counts;
      churned = churnColumns(row);
    }
    rows.push(row);
    const errs = Object.entries(row.errors).map(([k, v]) => `${k} ${v}`).join(', ') || '0';
    console.log(`  ${String(row.at).padStart(4)} s ${String(row.rps).padStart(7)}   ${errs.padEnd(22)} ${row.p99.toFixed(2).padStart(7)} ${row.max.toFixed(1).padStart(8)} ${String(row.rssMB).padStart(8)}  ${(row.cpu * 100).toFixed(0).padStart(3)}%${churned}${note ? `   <- ${note}` : ''}`);
  }
  const answered = rows.reduce((n, r) => n + r.ok, 0);
  const errors: Record<string, number> = {};
  for (const r of rows) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  const wrong = rows.reduce((n, r) => n + r.wrongHash, 0);
  // The churn stops; once the proxy has let go of what it brought, its figures should be back where they were.
  let churnEnd: { after: Sample & { rssMB: number; fdsProc: number }; growth: ReturnType<typeof verdict>; failures: string[]; floodFailures: number } | undefined;
  if (churn) {
    await churn.stop();
    await new Promise((r) => setTimeout(r, 15_000));
    const after = { ...(await churn.readNow()), rssMB: Math.round(rssBytes(proxy.pid) / 1048576), fdsProc: fdCount(proxy.pid) };
    churnEnd = { after, growth: verdict(rows.flatMap((r) => (r.proxy ? [r.proxy] : []))), failures: rows.flatMap((r) => r.churn?.failures ?? []), floodFailures: rows.reduce((n, r) => n + (r.churn?.floodFailures ?? 0), 0) };
  }
  const members = await probeAll();
  const departures = proxy.tail().split('\n').filter((l) => /left privacy policy/.test(l));
  await rotating;
  const stopping = [proxy.stop(), ...servers.map((s) => s.stop())];
  await Promise.all(stopping);
  await etcd?.remove();
  let accessLine = '';
  if (accessLog) {
    // Stopped: the proxy wrote every held line before it exited.
    await tally(accessLog);
    access.files++;
    // Every answer the proxy gave has a line; failures the load saw on its side (no answer at all) have none.
    const theirs = Object.entries(errors).filter(([code]) => !LOCAL_CODES.has(code)).reduce((n, [, v]) => n + v, 0);
    access.answered = rows.reduce((n, r) => n + r.ok + r.wrongHash, 0) + theirs + probed;
    const off = access.lines - access.answered;
    accessLine = `access log: ${access.lines.toLocaleString('en')} lines in ${access.files} files for ${access.answered.toLocaleString('en')} requests answered (${probed} of them probes)${off === 0 ? ', one each' : `, ${off.toLocaleString('en')} off`}${access.churnLines ? ` (and ${access.churnLines.toLocaleString('en')} of the churn's requests)` : ''}; ${access.faults.length ? `faults: ${access.faults.join('; ')}` : 'every file ended with a whole line'}`;
    if (off !== 0 || access.faults.length) process.exitCode = 1;
  }
  const summary = {
    minutes, answered, errors, wrongHash: wrong, rssMB: { first: rows[0]?.rssMB, max: Math.max(...rows.map((r) => r.rssMB)), last: rows.at(-1)?.rssMB },
    serversAnsweringAtEnd: [...members].sort(), departures,
    ...(accessLog ? { accessLog: access } : {}),
    ...(churnEnd ? { churn: { before, ...churnEnd } } : {}),
  };
  console.log(`\n${answered.toLocaleString('en')} answered, errors: ${JSON.stringify(errors)}, wrong hashes: ${wrong}; RSS ${summary.rssMB.first} MB first, ${summary.rssMB.max} MB at most, ${summary.rssMB.last} MB last; servers answering at the end: ${summary.serversAnsweringAtEnd.join(', ')}`);
  const dir = join(import.meta.dirname, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ summary, rows }, null, 2));
  if (accessLine) console.log(accessLine);
  if (churnEnd && before) {
    for (const g of churnEnd.growth) console.log(`${g.figure}: median ${g.first.toFixed(1)} in the first half, ${g.second.toFixed(1)} in the second: ${g.grew ? 'GREW' : 'flat'}`);
    const a = churnEnd.after;
    console.log(`before the churn / 15 s after it stopped: heap ${before.heapMB.toFixed(1)} / ${a.heapMB.toFixed(1)} MB (after the last full GC seen: ${before.heapAfterGcMB} MB idle before the load / ${a.heapAfterGcMB} MB, the run's last), RSS ${before.rssMB} / ${a.rssMB} MB, fds ${before.fdsProc} / ${a.fdsProc}, handles ${before.handles} / ${a.handles}, connections ${JSON.stringify(before.conns)} / ${JSON.stringify(a.conns)}`);
    if (churnEnd.failures.length) console.log(`churn failures: ${[...new Set(churnEnd.failures)].slice(0, 10).join('; ')}`);
    // A flood's request lost or given up is a failure of the proxy, as growth is.
    if (churnEnd.floodFailures) console.log(`floods failed: ${churnEnd.floodFailures} of ${rows.reduce((n, r) => n + (r.churn?.floods ?? 0), 0)} lost a request, had one answered wrong or none answered (see the churn failures above)`);
    if (churnEnd.growth.some((g) => g.grew) || a.fdsProc > before.fdsProc + 8 || a.handles > before.handles + 8 || churnEnd.floodFailures) process.exitCode = 1;
  }
  console.log(`results: ${file}`);
}

/** The churn's columns of a window's line: the proxy's heap, fds, handles, connections (client/registration/unknown/upstream), short clients, restarts, floods, and the policies and series /metrics shows. */
function churnColumns(row: Row): string {
  const p = row.proxy;
  const c = row.churn!;
  const conns = p ? ['client', 'registration', 'unknown', 'upstream'].map((k) => p.conns[k] ?? 0).join('/') : '-';
  const errs = Object.values(c.clientErrors).reduce((a, b) => a + b, 0);
  const flood = c.floods ? `${c.floodAnswers}/${c.floodErrors.OVERLOADED ?? 0}` : '-';
  return `  ${(p ? p.heapMB.toFixed(1) : '-').padStart(8)} ${(p ? p.heapAfterGcMB.toFixed(1) : '-').padStart(9)} ${String(p?.fdsProc ?? '-').padStart(4)} ${String(p?.handles ?? '-').padStart(8)}  ${conns.padStart(14)}  ${`${c.clientAnswers}/${errs}`.padStart(12)}  ${String(c.restarts).padStart(8)}  ${flood.padStart(14)}  ${(p ? `${p.pools}/${p.series}` : '-').padStart(15)}`;
}

// SIGINT, SIGTERM (`timeout`, `kill`, npm run passing it on) or SIGHUP (the terminal closed) stops every process the
// soak started, then exits 128 + the signal's number: before, each ended the soak and left them running.
stopChildrenOnSignals(() => {
  // One still starting is not `etcd` yet.
  killEtcds();
  return etcd?.remove();
});
if (values['idle-clients'] !== undefined) {
  const fleet = { clients: Number(values['idle-clients']), killEveryS: Number(values['kill-proxy-every']), downS: Number(values.down), bothEvery: Number(values['kill-both-every']), everyS: Number(values['request-every']) };
  if (!(Number.isInteger(fleet.clients) && fleet.clients > 0) || !(fleet.killEveryS > 0) || !(fleet.downS >= 0 && fleet.downS < fleet.killEveryS) || !(Number.isInteger(fleet.bothEvery) && fleet.bothEvery >= 0) || !(fleet.everyS > 0)) {
    console.error(`--idle-clients takes a whole number above 0, --kill-proxy-every and --request-every seconds above 0, --down seconds less than --kill-proxy-every, --kill-both-every a whole number (0: never)\n${USAGE}`);
    process.exit(2);
  }
  if (churning || values['access-log']) {
    console.error(`--idle-clients is a soak of its own (no steady load): it does not go with --churn or --access-log\n${USAGE}`);
    process.exit(2);
  }
  runFleet({ ...fleet, minutes, logs: mkdtempSync(join(tmpdir(), 'revproxy-soak-')) })
    .then((r) => void (process.exitCode = r.ok ? 0 : 1))
    .catch((err: Error) => {
      console.error(`soak failed: ${err.message}`);
      process.exitCode = 1;
    })
    .finally(() => stopAll());
} else {
  main()
    .catch((err) => {
      console.error(`soak failed: ${err instanceof Error ? err.message : String(err)}`);
      process.exitCode = 1;
    })
    .finally(() => stopAll());
}
