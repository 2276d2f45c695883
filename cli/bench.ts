/**
 * `revproxy bench`: the benchmark (bench/run.ts) from the command line.
 * Registered in cli/main.ts with one line.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Command, Option } from 'commander';
import { formatReport } from '../bench/report.js';
import { runBench } from '../bench/run.js';
import { DEFAULT_RESULTS_DIR, TARGETS, WORKLOADS, type Target, type Workload } from '../bench/types.js';
import { fileLimits, stopChildrenOnSignals } from '../bench/procs.js';
import { parseIntOption, UsageError } from './common.js';

interface BenchFlags {
  quick?: boolean;
  duration?: number;
  warmup?: number;
  rounds?: number;
  connections: number;
  depth: number;
  many: number;
  registered: number;
  workloads: string;
  targets: string;
  routing: boolean;
  out: string;
  progress: boolean;
  markdown?: boolean;
  baseline?: string;
  busyPoll: number;
}

function list<T extends string>(value: string, allowed: readonly T[], what: string): T[] {
  const items = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const i of items) if (!allowed.includes(i as T)) throw new UsageError(`unknown ${what} '${i}': choose from ${allowed.join(', ')}`);
  return items as T[];
}

/**
 * The load generator itself holds every client connection: make sure this
 * process may open that many files. A soft limit below the hard one is
 * raised by running again under `ulimit -Sn`; a hard limit too low is said.
 */
function ensureFileLimit(need: number, argv: string[]): number | 'reran' {
  const { soft, hard } = fileLimits();
  if (soft >= need) return soft;
  if (hard > soft && !process.env.REVPROXY_BENCH_RAISED) {
    process.stderr.write(`bench: raising the open-files limit from ${soft} to ${hard} (needs ${need})\n`);
    const r = spawnSync('/bin/sh', ['-c', 'ulimit -Sn "$(ulimit -Hn)" && exec "$@"', 'sh', process.execPath, ...process.execArgv, ...argv], {
      stdio: 'inherit',
      env: { ...process.env, REVPROXY_BENCH_RAISED: '1' },
    });
    process.exitCode = r.status ?? 1;
    return 'reran';
  }
  process.stderr.write(
    `bench: the open-files limit is ${soft} (hard ${hard}); ${need} are needed for every workload at full size.\n` +
      `       Raise it before running, for example as root: ulimit -Hn ${need} && ulimit -Sn ${need}\n`,
  );
  return soft;
}

/** The baseline checkout's folder, made absolute; a folder without a revproxy checkout ready to run is refused, saying what to give. */
function baselineDir(dir: string): string {
  const abs = resolve(dir);
  const missing = ['cli/revproxy.js', 'node_modules'].filter((p) => !existsSync(join(abs, p)));
  if (missing.length) throw new UsageError(`--baseline ${dir}: ${abs} has no ${missing.join(' and no ')}: give the folder of another revproxy checkout with its dependencies installed (git worktree add DIR REV, then npm ci there), or . for this one`);
  return abs;
}

export function benchCommand(setExit: (code: number) => void): Command {
  return new Command('bench')
    .description('measure the proxy against the servers directly, HAProxy (TCP mode) and a bare Node relay, in rounds, on this machine')
    .option('--quick', 'a short run (about 5 minutes): 3 rounds of 1 s cells after 0.3 s warm-up')
    .addOption(new Option('--rounds <n>', 'rounds per workload, at least 3: every target once per round, the order rotated each round (default 5, quick 3)').argParser(parseIntOption('--rounds', 3)))
    .addOption(new Option('--duration <s>', 'measured seconds per cell (default 3, quick 1)').argParser(parseIntOption('--duration', 1)))
    .addOption(new Option('--warmup <ms>', 'warm-up before each cell, ms (default 1000, quick 300)').argParser(parseIntOption('--warmup', 0)))
    .addOption(new Option('-c, --connections <n>', 'pipelined workload: client connections').default(8).argParser(parseIntOption('--connections', 1)))
    .addOption(new Option('-d, --depth <n>', 'pipelined workload: requests in flight per connection').default(32).argParser(parseIntOption('--depth', 1)))
    .addOption(new Option('--many <n>', 'many-connections workload: concurrent connections').default(10_000).argParser(parseIntOption('--many', 1)))
    .addOption(new Option('--registered <n>', 'routing comparison: registered servers, against 4').default(10_000).argParser(parseIntOption('--registered', 5)))
    .option('--workloads <list>', `comma-separated: ${WORKLOADS.join(', ')}`, WORKLOADS.join(','))
    .option('--targets <list>', `comma-separated: ${TARGETS.join(', ')} (baseline needs --baseline; relay is bench/bare-relay.mjs, a bare Node relay for reference)`, 'direct,proxy,haproxy,relay')
    .option('--no-routing', 'skip the routing comparison (4 against 10,000 registered servers)')
    .option('--out <dir>', 'folder for the JSON results', DEFAULT_RESULTS_DIR)
    .option('--no-progress', 'no progress bar')
    .option('--markdown', 'also print the tables as Markdown (for the README)')
    .addOption(new Option('--busy-poll <us>', 'one at a time, also measure a proxy with --busy-poll this long and HAProxy with busy-polling, for information (0 = skip)').default(300).argParser(parseIntOption('--busy-poll', 0)))
    .option('--baseline <dir>', 'another checkout of revproxy (with node_modules; . for this one, to see what the bench can tell apart): its proxy runs as target "baseline" beside this one\'s, both started afresh each round, which first alternating (an even count of rounds), for before/after ratios in one run')
    .addHelpText(
      'after',
      `
Runs the proxy and four servers (policies 111 and 222) as separate processes
with --log-level warn, HAProxy when installed (apt-get install -y haproxy) and
a bare Node relay; and four servers of policy 333 that work one request at a
time (1 ms each) when this checkout's server has --concurrency.
Workloads: pipelined C x D, one at a time, a connection per request, many
concurrent connections, and 2x32 on the one-at-a-time servers. Each workload
runs its targets in rounds (A B C, B C A, C A B, ...); figures are medians
over the rounds, ratios are taken inside each round (median and range), and
the verdicts judge medians. Also prints CPU per request of the proxy, HAProxy,
the relay, the servers and the load generator (from /proc), and writes every
cell as JSON under bench/results/. The load generator is the one
\`revproxy load\` runs. Ctrl-C, SIGTERM or SIGHUP stops every process it
started, and it exits 128 + the signal's number (130, 143, 129).

Examples:
  npm run bench -- --quick
  revproxy bench --workloads pipelined,serial --targets proxy,haproxy --duration 10`,
    )
    .action(async (f: BenchFlags) => {
      const baseline = f.baseline === undefined ? undefined : baselineDir(f.baseline);
      const workloads = list<Workload>(f.workloads, WORKLOADS, 'workload');
      const targets = list<Target>(f.targets, TARGETS, 'target');
      if (f.baseline && !targets.includes('baseline')) targets.push('baseline');
      let many = f.many;
      const need = Math.max(workloads.includes('many') ? many : 0, f.routing ? f.registered : 0) + 200;
      const limit = ensureFileLimit(need, process.argv.slice(1));
      if (limit === 'reran') return;
      if (workloads.includes('many') && limit < many + 200) {
        many = Math.max(1, limit - 200);
        process.stderr.write(`bench: the many-connections workload opens ${many} connections instead of ${f.many}\n`);
      }
      const quick = f.quick ?? false;
      // SIGINT, SIGTERM (`kill`, `timeout`, a CI runner) or SIGHUP (the terminal closed) stops every process it started.
      const release = stopChildrenOnSignals();
      try {
        const report = await runBench({
          quick,
          durationMs: (f.duration ?? (quick ? 1 : 3)) * 1000,
          warmupMs: f.warmup ?? (quick ? 300 : 1000),
          rounds: f.rounds ?? (quick ? 3 : 5),
          connections: f.connections,
          depth: f.depth,
          many,
          registered: f.registered,
          workloads,
          targets,
          routing: f.routing,
          outDir: f.out,
          progress: f.progress,
          baseline,
          busyPollUs: f.busyPoll,
        });
        process.stdout.write(`${formatReport(report)}\n`);
        if (f.markdown) process.stdout.write(`\n${formatReport(report, true)}\n`);
        setExit(0);
      } finally {
        release();
      }
    });
}
