/**
 * The inspector: a page on 127.0.0.1 that shows the running actors, their
 * statecharts, pools, a live event log and figures, plus `/metrics`.
 *
 * @example
 *   const insp = await startInspector({ port: 0, title: 'proxy' });
 *   const proxy = await startProxy({ port: 0, inspect: insp.inspect, observer: insp.observer });
 *   console.log(insp.url);
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import type { InspectionEvent } from 'xstate';
import { Destination, LOG_BUFFER_BYTES, silentLogger, type Logger } from '../actors/logger.js';
import type { ProxyObserver } from '../actors/proxy-options.js';
import { Hub, type HubOptions, type Rec } from './hub.js';
import { serveInspector, type InspectorServer } from './http.js';
import { Metrics } from './metrics.js';

export { Hub, type Rec, type Batch, type ActorView } from './hub.js';
export { Metrics } from './metrics.js';
export { Ring } from './ring.js';
export { project, projectEvent, stateName } from './sanitise.js';
export { chartOf, readChart, drawChart, activeIds } from './chart.js';
export type { PoolView, MemberView, Figures } from './views.js';

export interface InspectorOptions extends Omit<HubOptions, 'sink'> {
  /** Serve the page on this port (0 picks a free one); leave out for no page (a log only). */
  port?: number;
  /** Address to serve it on. Default 127.0.0.1; anywhere else needs `token` (it will not start without one). */
  host?: string;
  /** HTTP Basic password for every request (any user name, logged as who asked). */
  token?: string;
  /** Where refused actions are logged (the proxy logs the drains and enables it does), and the inspection log's failures. */
  logger?: Logger;
  /**
   * Write every inspection record to this file as NDJSON: emptied at start, then appended to,
   * through a bounded `Destination` (a slow or full disk drops records, counted and logged;
   * `reopen` follows logrotate).
   */
  logFile?: string;
  /** What this process runs, shown on the page. */
  title?: string;
  /** How often a page's stream carries a heartbeat (ms; default http.ts `BEAT_MS`). */
  beatMs?: number;
}

export interface Inspector {
  hub: Hub;
  metrics: Metrics;
  /** Give to createActor (startProxy/startServer/runClient take it as `inspect`). */
  inspect: (event: InspectionEvent) => void;
  /** Give to startProxy as `observer`. */
  observer: ProxyObserver;
  /** The page's address, when served. */
  url?: string;
  port?: number;
  /** Open the inspection log again (logrotate moved it); throws why it cannot be (records keep going to the file open now). Nothing without one. */
  reopen(): void;
  close(): Promise<void>;
}

export async function startInspector(opts: InspectorOptions = {}): Promise<Inspector> {
  const log = opts.logFile === undefined ? undefined : await openLog(opts.logFile, opts.logger ?? silentLogger);
  const hub = new Hub({ ...opts, sink: log ? (lines, count) => writeRecords(log, lines, count) : undefined });
  const metrics = new Metrics({ pools: () => hub.livePools(), inflight: () => hub.inflight(), actorCounts: () => hub.actorCounts() }, opts.flushMs ?? 200);
  hub.metrics = metrics;
  hub.start();
  let server: InspectorServer | undefined;
  try {
    if (opts.port !== undefined) server = await serveInspector(hub, metrics, { port: opts.port, host: opts.host, token: opts.token, logger: opts.logger, title: opts.title ?? 'revproxy', beatMs: opts.beatMs });
  } catch (err) {
    hub.stop();
    await log?.end();
    throw err;
  }
  // The metrics count answers, retries and ejections; the hub notes each connection as it is accepted.
  const observer: ProxyObserver = {
    answered: (policy, member, outcome, latencyMs, req, tries, proxy) => metrics.answered(policy, member, outcome, latencyMs, req, tries, proxy),
    retried: (policy, failed, code) => metrics.retried(policy, failed, code),
    retryRefused: (policy, failed, code) => metrics.retryRefused(policy, failed, code),
    poison: (policy) => metrics.poison(policy),
    ejected: (policy, member, reason, back) => metrics.ejected(policy, member, reason, back),
    accepted: (peer) => hub.notePeer(peer),
  };
  return {
    hub,
    metrics,
    inspect: hub.observe,
    observer,
    url: server?.url,
    port: server?.port,
    reopen() {
      if (!log) return;
      // What was recorded before the signal goes to the file it was recorded for; the new file
      // starts with the picture it needs to replay on its own.
      hub.flush();
      log.reopen();
      const recs = hub.picture();
      writeRecords(log, recs.map((r) => JSON.stringify(r)).join('\n') + '\n', recs.length);
    },
    async close() {
      hub.stop();
      await server?.close();
      if (!log) return;
      await log.end();
      if (log.lostAtEnd) (opts.logger ?? silentLogger).warn('inspect_log_lost', `${log.lostAtEnd} inspection record(s) could not be written to ${opts.logFile} before the process stopped, and are lost`, { file: opts.logFile, lost: log.lostAtEnd });
    },
  };
}

/**
 * The mode of an inspection log file the process creates (at start, and at a reopen after logrotate moved
 * the old one): its owner's only. It holds the events' payloads; it was made 0644, readable by every user
 * of the machine. A file that exists keeps its mode (logrotate's `create 0640 ...`, say).
 */
const LOG_MODE = 0o600;

/**
 * The inspection log: emptied (one run per file: `revproxy inspect` replays one process's actors),
 * then written as the access log is, bounded: under load it takes about 350 KB a second, and a
 * stream that buffered without bound grew the process on a slow disk, said nothing when the disk
 * was full, and was never reopened, so logrotate's moved file grew on.
 */
async function openLog(file: string, logger: Logger): Promise<Destination> {
  try {
    closeSync(openSync(file, 'w', LOG_MODE));
  } catch (err) {
    throw new Error(`cannot write the inspection log ${file}: ${(err as Error).message}`);
  }
  const log = new Destination({ to: file, mode: LOG_MODE });
  await log.ready().catch((err: Error) => {
    throw new Error(`cannot write the inspection log ${file}: ${err.message}`);
  });
  log.onError = (err) => {
    const why = err.code === 'ENOSPC' ? 'the disk is full (ENOSPC)' : err.code === 'EIO' ? 'an I/O error (EIO)' : err.message;
    logger.repeated('error', 'inspect_log_write_failed', file, 1, (n, span) => `cannot write the inspection log ${file}: ${why}; ${n} write(s) failed${span ? ` ${span}` : ''}; its records wait (up to ${LOG_BUFFER_BYTES / 1024 / 1024} MiB, then dropped and counted) and are written once it can be`, { file, code: err.code });
  };
  log.onRecovered = () => logger.info('inspect_log_write_recovered', `the inspection log ${file} is written again`, { file });
  let reported = 0;
  log.onDrop = () => {
    logger.repeated('warn', 'inspect_log_dropped', file, log.dropped - reported, (n, span) => `${n} inspection record(s) dropped${span ? ` ${span}` : ''}: the inspection log ${file} is written more slowly than records come (a slow or full disk); the page and the proxy are not affected`, { file });
    reported = log.dropped;
  };
  return log;
}

/** A flush's records into the log's chunk of this turn, counted one line each (what a drop loses). */
function writeRecords(log: Destination, lines: string, count: number): void {
  const bytes = log.bytes;
  const at = bytes.reserve(Buffer.byteLength(lines));
  bytes.commit(at + bytes.buffer.write(lines, at, 'utf8'));
  for (let i = 0; i < count; i++) log.wrote();
}

/** Read a recorded NDJSON log; lines that are not records are counted, not fatal. */
export function readLog(file: string): { recs: Rec[]; bad: number } {
  const text = readFileSync(file, 'utf8');
  const recs: Rec[] = [];
  let bad = 0;
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as Rec;
      if (r && typeof r === 'object' && typeof r.k === 'string') recs.push(r);
      else bad++;
    } catch {
      bad++;
    }
  }
  return { recs, bad };
}

/** Serve the page over a recorded log: the same page, frozen at the log's end, with its whole history. */
export async function serveRecorded(file: string, port: number): Promise<{ url: string; port: number; records: number; bad: number; close(): Promise<void> }> {
  const { recs, bad } = readLog(file);
  const hub = new Hub({ ringSize: Math.max(5000, recs.length), historySize: 5000, keepStopped: 10_000 });
  for (const r of recs) hub.apply(r);
  hub.ended();
  const server = await serveInspector(hub, undefined, { port, title: `recorded: ${file}`, recorded: true });
  return { url: server.url, port: server.port, records: recs.length, bad, close: () => server.close() };
}
