/**
 * The soak: sustained load through the proxy for a long while (10 minutes
 * by default), past every timeout and interval of the proxy's defaults
 * (idle timeout 60 s, PINGs every second, probes, ejection), with one
 * server stopped (SIGSTOP) for a while in the middle. Reports, per window,
 * answers per second, errors by code, latency p99 and max, and the proxy's
 * RSS and CPU; at the end the totals. Not in CI (it takes minutes):
 *
 *   npx tsx bench/soak.ts [--minutes 10] [--stall 10] [--window 10]
 *
 * The proxy runs with its defaults (log level info), three servers of one
 * policy (`revproxy server`), four client connections with 32 requests in
 * flight each. Results go to bench/results/soak-<time>.json.
 */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runLoad } from './loadgen.js';
import { cpuSeconds, freePort, HOST, probe, rssBytes, spawnRevproxy, stopAll, waitForPort } from './procs.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '10' },
    stall: { type: 'string', default: '10' },
    window: { type: 'string', default: '10' },
  },
});
const minutes = Number(values.minutes);
const stallS = Number(values.stall);
const windowS = Number(values.window);
if (!(minutes > 0) || !(stallS >= 0) || !(windowS > 0)) {
  console.error('usage: npx tsx bench/soak.ts [--minutes N] [--stall SECONDS] [--window SECONDS]');
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
}

const POLICY = 'SOAK';

async function main(): Promise<void> {
  const port = await freePort();
  // Each process's log goes to a file of its own, kept after the run: a soak that goes wrong is read there.
  const logs = mkdtempSync(join(tmpdir(), 'revproxy-soak-'));
  const proxy = spawnRevproxy('proxy', ['proxy', '--port', String(port), '--log-level', 'info'], undefined, join(logs, 'proxy.log'));
  await waitForPort(port, proxy);
  const servers = ['1', '2', '3'].map((id) => spawnRevproxy(`server ${id}`, ['server', '--id', id, '--pp', POLICY, '--listen', '0', '--revproc', String(port)], undefined, join(logs, `server-${id}.log`)));
  for (let i = 0; i < 50; i++) {
    if ((await probe(port, POLICY, 6)).size === 3) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  const rows: Row[] = [];
  const t0 = Date.now();
  const end = t0 + minutes * 60_000;
  const stallAt = t0 + (minutes * 60_000) / 2;
  let stalled: 'before' | 'now' | 'after' = stallS > 0 ? 'before' : 'after';
  let lastCpu = cpuSeconds(proxy.pid);
  console.log(`soak: ${minutes} min through the proxy on ${HOST}:${port}, 3 servers, 4 connections x 32 in flight${stallS ? `, server 2 stopped for ${stallS} s at ${minutes / 2} min` : ''}; logs in ${logs}`);
  console.log('  time   req/s     errors                 p99 ms   max ms   RSS MB  CPU');
  while (Date.now() < end) {
    let note = '';
    if (stalled === 'before' && Date.now() >= stallAt) {
      servers[1]!.proc.kill('SIGSTOP');
      stalled = 'now';
      note = `server 2 stopped (SIGSTOP) for ${stallS} s`;
      setTimeout(() => {
        servers[1]!.proc.kill('SIGCONT');
        stalled = 'after';
      }, stallS * 1000).unref();
    }
    const r = await runLoad({ target: () => ({ host: HOST, port, policy: POLICY }), connections: 4, depth: 32, durationMs: windowS * 1000 });
    const cpu = cpuSeconds(proxy.pid);
    const row: Row = {
      at: Math.round((Date.now() - t0) / 1000), rps: Math.round(r.rps), ok: r.ok, errors: r.errors, wrongHash: r.wrongHash,
      p99: r.latency.p99, max: r.latency.max, rssMB: Math.round(rssBytes(proxy.pid) / 1048576), cpu: (cpu - lastCpu) / windowS, note,
    };
    lastCpu = cpu;
    rows.push(row);
    const errs = Object.entries(r.errors).map(([k, v]) => `${k} ${v}`).join(', ') || '0';
    console.log(`  ${String(row.at).padStart(4)} s ${String(row.rps).padStart(7)}   ${errs.padEnd(22)} ${row.p99.toFixed(2).padStart(7)} ${row.max.toFixed(1).padStart(8)} ${String(row.rssMB).padStart(8)}  ${(row.cpu * 100).toFixed(0)}%${note ? `   <- ${note}` : ''}`);
  }
  const answered = rows.reduce((n, r) => n + r.ok, 0);
  const errors: Record<string, number> = {};
  for (const r of rows) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
  const wrong = rows.reduce((n, r) => n + r.wrongHash, 0);
  const members = await probe(port, POLICY, 6);
  const summary = {
    minutes, answered, errors, wrongHash: wrong, rssMB: { first: rows[0]?.rssMB, max: Math.max(...rows.map((r) => r.rssMB)), last: rows.at(-1)?.rssMB },
    serversAnsweringAtEnd: [...members].sort(), departures: proxy.tail().split('\n').filter((l) => /left privacy policy/.test(l)),
  };
  console.log(`\n${answered.toLocaleString('en')} answered, errors: ${JSON.stringify(errors)}, wrong hashes: ${wrong}; RSS ${summary.rssMB.first} MB first, ${summary.rssMB.max} MB at most, ${summary.rssMB.last} MB last; servers answering at the end: ${summary.serversAnsweringAtEnd.join(', ')}`);
  const dir = join(import.meta.dirname, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `soak-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, JSON.stringify({ summary, rows }, null, 2));
  console.log(`results: ${file}`);
  await Promise.all([proxy.stop(), ...servers.map((s) => s.stop())]);
}

main()
  .catch((err) => {
    console.error(`soak failed: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 1;
  })
  .finally(() => stopAll());
