/**
 * The bench's vocabulary: workloads, targets, options, the cells it measures,
 * the verdicts and the report. Every other file of bench/ imports these.
 */
import { fileURLToPath } from 'node:url';
import type { LoadResult } from './loadgen.js';
import type { RoutingRate } from './routing.js';

export const WORKLOADS = ['pipelined', 'serial', 'per-request', 'many', 'slow-servers'] as const;
export type Workload = (typeof WORKLOADS)[number];
export const TARGETS = ['direct', 'proxy', 'haproxy', 'baseline', 'relay'] as const;
export type Target = (typeof TARGETS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Measured milliseconds per cell (one workload against one target in one round). */
  durationMs: number;
  warmupMs: number;
  /** Rounds per workload: every target once per round, the order rotated each round. */
  rounds: number;
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

/**
 * Who a cell measures: a target as configured for every workload, or a
 * variant of one beside it (the proxy on a one-server policy, a proxy at
 * `--log-level info`, ...). Variants are named `target:variant`.
 */
export type Subject = Target | `${Target}:${string}`;

/** The variants the verdicts and the report know by name. */
export const VARIANT = {
  oneServer: 'proxy:one-server',
  busyPoll: 'proxy:busy-poll',
  haproxyBusy: 'haproxy:busy-polling',
  /** A proxy at warn started as the logging variants are: their reference. */
  logWarn: 'proxy:log-warn',
  logInfo: 'proxy:log-info',
  accessLog: 'proxy:access-log',
} as const satisfies Record<string, Subject>;

/** One cell: a workload against one subject in one round. */
export interface Row {
  workload: Workload;
  /** How the report names the cell's workload (and variant): 'pipelined 8x32', 'one at a time, one-server policy'. */
  label: string;
  subject: Subject;
  target: Target;
  /** 0-based. */
  round: number;
  result: LoadResult;
  /** CPU of the process under test (ours, HAProxy, the relay) over the measured window, in cores; undefined for direct. */
  proxyCpu?: number;
  /** Highest RSS of the process under test during the cell, bytes. */
  peakRss?: number;
  /** CPU per answered request over the measured window, microseconds, from /proc: the process under test, the servers together, the load generator. */
  cpuUs: { underTest?: number; servers?: number; loadgen?: number };
}

/** The median of a figure over the rounds, and its lowest and highest. */
export interface Spread {
  median: number;
  min: number;
  max: number;
  /** Rounds it was measured in. */
  n: number;
}

/** One subject in one workload over every round: medians, summed errors, the highest RSS. */
export interface Summary {
  workload: Workload;
  label: string;
  subject: Subject;
  target: Target;
  rps: Spread;
  p50: Spread;
  p99: Spread;
  p999: Spread;
  /** Failed requests and wrong hashes over every round. */
  errors: Record<string, number>;
  wrongHash: number;
  /** Connections open at once, the highest of the rounds. */
  connected: number;
  proxyCpu?: number;
  /** The highest of the rounds. */
  peakRss?: number;
  cpuUs: { underTest?: number; servers?: number; loadgen?: number };
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
  /** The median ratio over the rounds (or the figure judged, over its limit). */
  ratio?: number;
  /** Lowest and highest of the per-round ratios. */
  spread?: Spread;
  /** undefined: for information, or not measured (then `ratio` is undefined too). */
  pass: boolean | undefined;
  detail: string;
}

export interface BenchReport {
  date: string;
  machine: { cpus: number; model: string; node: string; haproxy?: string; fileLimit: number; msgpackrNative: boolean };
  options: BenchOptions;
  notes: string[];
  /** Every cell of every round, in the order measured. */
  rows: Row[];
  /** Each workload's subjects over the rounds. */
  summary: Summary[];
  routing?: { pool: RoutingRate[]; endToEnd?: RoutingRun[] };
  checks: Check[];
  file?: string;
}
