/**
 * The inspector: a page on 127.0.0.1 that shows the running actors, their
 * statecharts, pools, a live event log and figures, plus `/metrics`.
 *
 * @example
 *   const insp = await startInspector({ port: 0, title: 'proxy' });
 *   const proxy = await startProxy({ port: 0, inspect: insp.inspect, observer: insp.observer });
 *   console.log(insp.url);
 */
import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import type { InspectionEvent } from 'xstate';
import type { Logger } from '../actors/logger.js';
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
  /** Where refused actions are logged (the proxy logs the drains and enables it does). */
  logger?: Logger;
  /** Write every inspection record to this file as NDJSON. */
  logFile?: string;
  /** What this process runs, shown on the page. */
  title?: string;
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
  close(): Promise<void>;
}

export async function startInspector(opts: InspectorOptions = {}): Promise<Inspector> {
  let log: WriteStream | undefined;
  if (opts.logFile) {
    log = createWriteStream(opts.logFile, { flags: 'w' });
    await new Promise<void>((resolve, reject) => {
      log!.once('open', () => resolve());
      log!.once('error', (err) => reject(new Error(`cannot write the inspection log ${opts.logFile}: ${err.message}`)));
    });
  }
  const hub = new Hub({ ...opts, sink: log ? (lines) => void log!.write(lines) : undefined });
  const metrics = new Metrics({ pools: () => hub.livePools(), inflight: () => hub.inflight(), actorCounts: () => hub.actorCounts() }, opts.flushMs ?? 200);
  hub.metrics = metrics;
  hub.start();
  let server: InspectorServer | undefined;
  try {
    if (opts.port !== undefined) server = await serveInspector(hub, metrics, { port: opts.port, host: opts.host, token: opts.token, logger: opts.logger, title: opts.title ?? 'revproxy' });
  } catch (err) {
    hub.stop();
    log?.end();
    throw err;
  }
  // The metrics count answers, retries and ejections; the hub notes each connection as it is accepted.
  const observer: ProxyObserver = {
    answered: (policy, member, outcome, latencyMs) => metrics.answered(policy, member, outcome, latencyMs),
    retried: (policy, failed, code) => metrics.retried(policy, failed, code),
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
    async close() {
      hub.stop();
      await server?.close();
      if (log) await new Promise<void>((resolve) => log!.end(resolve));
    },
  };
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
  const server = await serveInspector(hub, undefined, { port, title: `recorded: ${file}`, recorded: true });
  return { url: server.url, port: server.port, records: recs.length, bad, close: () => server.close() };
}
