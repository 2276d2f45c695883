/**
 * The bench's vocabulary: workloads, targets, options, the rows it measures,
 * the verdicts and the report. Every other file of bench/ imports these.
 */
import { fileURLToPath } from 'node:url';
import type { LoadResult } from './loadgen.js';
import type { RoutingRate } from './routing.js';

export const WORKLOADS = ['pipelined', 'serial', 'per-request', 'many'] as const;
export type Workload = (typeof WORKLOADS)[number];
export const TARGETS = ['direct', 'proxy', 'haproxy', 'baseline', 'relay'] as const;
export type Target = (typeof TARGETS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Measured seconds per workload and target. */
  durationMs: number;
  warmupMs: number;
  connections: number;
  depth: number;
  /** Connections of the many-connections workload. */
  many: number;
  /** Registered servers in the routing comparison (against 4). */
  registered: number;
  workloads: Workload[];
  targets: Target[];
  routing: boolean;
  outDir: string;
  progress: boolean;
  /** Another checkout of revproxy whose proxy runs as the `baseline` target (before/after comparisons in one run). */
  baseline?: string;
  /** The busy-poll window (us) of the one-at-a-time variants beside the targets; 0 skips them. */
  busyPollUs: number;
}


export const DEFAULT_RESULTS_DIR = fileURLToPath(new URL('../bench/results', import.meta.url));

export interface Row {
  workload: Workload;
  label: string;
  target: Target;
  result: LoadResult;
  /** CPU of the proxy process (ours or HAProxy) over the measured window, in cores; undefined for direct. */
  proxyCpu?: number;
  /** Highest RSS of the proxy process during the workload, bytes. */
  peakRss?: number;
}

/**
 * One end-to-end routing measurement. `pipelined`: 8 x 32 requests in flight,
 * so with 4 members each write carries dozens of requests while with 10,000
 * each request travels alone (the cost of that is syscalls, not routing);
 * `serial`: one request in flight, the same traffic shape at both pool sizes.
 */
export interface RoutingRun {
  members: number;
  mode: 'pipelined' | 'serial';
  result: LoadResult;
}

export interface Check {
  what: string;
  ratio?: number;
  pass: boolean | undefined;
  detail: string;
}

export interface BenchReport {
  date: string;
  machine: { cpus: number; model: string; node: string; haproxy?: string; fileLimit: number; msgpackrNative: boolean };
  options: BenchOptions;
  notes: string[];
  rows: Row[];
  routing?: { pool: RoutingRate[]; endToEnd?: RoutingRun[] };
  /** One-at-a-time variants measured right after the one-at-a-time cells, for information. */
  variants?: SerialVariants;
  checks: Check[];
  file?: string;
}

/**
 * One at a time, measured beside the target's cells to show what the
 * target's ratio is made of.
 */
export interface SerialVariants {
  /**
   * The proxy on a policy served by a single server. HAProxy's `balance
   * roundrobin` in TCP mode picks a server per connection, so its one
   * connection always reaches the same server; the proxy balances each
   * message, so on the two-server policies each request goes to the other one.
   */
  oneServer?: Row;
  /** A second proxy process with `--busy-poll`, on the same servers and policies as the first. */
  busyPoll?: Row;
  /** A second HAProxy with `busy-polling` and one thread (a thread that never sleeps: at most a core, as the proxy's busy polling). */
  haproxyBusy?: Row;
}
