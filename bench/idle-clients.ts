/**
 * The idle library clients of the soak's fleet mode (`bench/soak.ts --idle-clients N`, bench/idle-fleet.ts): this
 * process, forked by the soak, holds N clients made with the library's `connect()` (lib/index.ts), each given both
 * proxies of the fleet (in either order, half and half, as an operator's fleet config lists them), each sending one
 * request every few seconds. It tells the soak over IPC what it sees, with wall-clock times (Date.now(): the soak's
 * clock too):
 *
 * - `conn`: a client's `disconnect` and `reconnect` (and the proxy it connected to first);
 * - `req`: each request's outcome (its code and whether it was `retryable`) and latency;
 * - `dial`: every TCP connection this process opened (Node's `net.client.socket` diagnostics channel: the
 *   library's own dials, whatever made them), the port it went to and whether it connected;
 * - `stats`: after a full collection (`--expose-gc`), its RSS and heap, its open fds, its active handles and
 *   requests by type (`process.getActiveResourcesInfo()`), the timers live on the clients' clock (which are unref'd,
 *   and so not among the active resources: counted by wrapping the clock), its sockets live and the listeners on
 *   them and on the clients.
 *
 * On `stop` it stops sending, waits for every request to settle (each has its own timeout), closes the clients and
 * says `end` with the counts: a request sent and never settled is one lost.
 */
import { subscribe } from 'node:diagnostics_channel';
import { createWriteStream, readdirSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Socket } from 'node:net';
import { connect, jsonSink, Logger, RequestError, systemClock, type Client, type Clock, type Level, type Timer } from '../lib/index.js';

export interface IdleClientsConfig {
  ports: number[];
  clients: number;
  /** Each client sends one request every `everyMs`, up to a fifth early at random. */
  everyMs: number;
  policy: string;
  statsMs: number;
  /** Where the clients log what they do (failovers, holding, giving up; JSON lines, `logLevel`, info by default): the soak's logs folder. */
  log?: string;
  logLevel?: Level;
}

export type FromClients =
  | { k: 'ready'; t: number; on: string[] }
  | { k: 'conn'; t: number; i: number; ev: 'disconnect' | 'reconnect'; proxy: string }
  | { k: 'req'; t0: number; t: number; i: number; code?: string; retryable?: boolean; message?: string }
  | { k: 'dial'; t: number; port: number; ok: boolean }
  | { k: 'stats'; t: number; stats: ClientStats }
  | { k: 'end'; t: number; sent: number; settled: number; pending: number };

export interface ClientStats {
  rssMB: number;
  heapMB: number;
  fds: number;
  /** process.getActiveResourcesInfo(), by type. */
  resources: Record<string, number>;
  /** Timers live on the clients' clock (set and neither fired nor cancelled; intervals until cancelled). */
  timers: number;
  /** TCP sockets this process opened and has not closed, and the listeners on them. */
  sockets: number;
  socketListeners: number;
  /** Listeners on the clients (the soak's own three each). */
  clientListeners: number;
  /** The longest the event loop went without running since the last sample (ms; the histogram's, or how late this sample's timer ran if more): a reconnect slow because the process was. */
  loopMaxMs: number;
}

const HOST = '127.0.0.1';
const send = (m: FromClients): void => void process.send!(m);

/** The system clock, counting the timers live on it. */
function countingClock(): { clock: Clock; live: () => number } {
  let live = 0;
  const counted = (start: (fn: () => void, ms: number) => Timer, once: boolean) => (fn: () => void, ms: number): Timer => {
    live++;
    let done = false;
    const end = (): void => {
      if (!done) live--;
      done = true;
    };
    const t = start(() => {
      if (once) end();
      fn();
    }, ms);
    return { cancel: () => (end(), t.cancel()) };
  };
  return {
    clock: { now: () => systemClock.now(), setTimeout: counted(systemClock.setTimeout, true), setInterval: counted(systemClock.setInterval, false) },
    live: () => live,
  };
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2]!) as IdleClientsConfig;
  // Every TCP connection this process opens: the clients' dials.
  const sockets = new Set<Socket>();
  subscribe('net.client.socket', (m) => {
    const socket = (m as { socket: Socket }).socket;
    const t = Date.now();
    sockets.add(socket);
    let port = NaN;
    let ok = false;
    socket.once('connect', () => ((ok = true), (port = socket.remotePort ?? NaN)));
    socket.once('error', (err: NodeJS.ErrnoException & { port?: number }) => void (port = Number.isNaN(port) ? err.port ?? NaN : port));
    socket.once('close', () => {
      sockets.delete(socket);
      if (!ok) send({ k: 'dial', t, port, ok });
    });
    // A dial that connected is told at once (its socket may live the whole run).
    socket.once('connect', () => send({ k: 'dial', t, port, ok: true }));
  });
  const { clock, live } = countingClock();
  const clients: Client[] = [];
  const on: string[] = [];
  const file = cfg.log === undefined ? undefined : createWriteStream(cfg.log, { flags: 'a' });
  const log = file === undefined ? undefined : new Logger('idle clients', jsonSink(file), cfg.logLevel ?? 'info');
  for (let i = 0; i < cfg.clients; i++) {
    const ports = i % 2 === 0 ? cfg.ports : [...cfg.ports].reverse();
    const c = await connect({ revproc: ports.map((p) => `${HOST}:${p}`).join(','), id: `idle-${i}`, clock, logger: log?.child(`client ${i}`) });
    c.on('disconnect', ({ proxy }) => send({ k: 'conn', t: Date.now(), i, ev: 'disconnect', proxy }));
    c.on('reconnect', ({ proxy }) => send({ k: 'conn', t: Date.now(), i, ev: 'reconnect', proxy }));
    c.on('close', () => {});
    const { context } = c.actor.getSnapshot();
    const p = context.proxies[context.proxyIndex]!;
    on.push(`${p.host}:${p.port}`);
    clients.push(c);
  }
  let sent = 0;
  let settled = 0;
  let stopping = false;
  let lastSettled: () => void = () => {};
  const ask = (i: number): void => {
    if (stopping) return;
    const t0 = Date.now();
    sent++;
    clients[i]!.request(cfg.policy, `idle-${i}-${sent}`).then(
      () => send({ k: 'req', t0, t: Date.now(), i }),
      (err: unknown) => send({
        k: 'req', t0, t: Date.now(), i, code: err instanceof RequestError ? err.code : (err as { code?: string }).code ?? String(err),
        retryable: err instanceof RequestError ? err.retryable : false, message: (err as Error).message?.slice(0, 500),
      }),
    ).finally(() => {
      settled++;
      if (stopping && settled === sent) lastSettled();
    });
  };
  // Spread over the first period, then each on its own schedule.
  const timers = clients.map((_, i) => {
    const next = (): NodeJS.Timeout => setTimeout(() => {
      ask(i);
      timers[i] = next();
    }, cfg.everyMs * (0.8 + 0.2 * Math.random()));
    return setTimeout(() => {
      ask(i);
      timers[i] = next();
    }, Math.random() * cfg.everyMs);
  });
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  // When the stats timer was due: how late it ran is a stall too. The histogram alone missed the longest ones: a process
  // that did not run for 19 s ran this timer before the histogram's own (both due), and reported 0 ms (2026-12-08).
  let statsDue = Date.now() + cfg.statsMs;
  const stats = (): ClientStats => {
    const now = Date.now();
    const loopMaxMs = Math.max(loop.max / 1e6, now - statsDue);
    statsDue = now + cfg.statsMs;
    loop.reset();
    (globalThis as { gc?: () => void }).gc?.();
    const m = process.memoryUsage();
    const resources: Record<string, number> = {};
    for (const r of process.getActiveResourcesInfo()) resources[r] = (resources[r] ?? 0) + 1;
    let socketListeners = 0;
    for (const s of sockets) for (const e of s.eventNames()) socketListeners += s.listenerCount(e);
    let clientListeners = 0;
    for (const c of clients) for (const e of c.eventNames()) clientListeners += c.listenerCount(e);
    return {
      rssMB: m.rss / 1048576, heapMB: m.heapUsed / 1048576, fds: readdirSync('/proc/self/fd').length, resources,
      timers: live(), sockets: sockets.size, socketListeners, clientListeners, loopMaxMs,
    };
  };
  const statsTimer = setInterval(() => send({ k: 'stats', t: Date.now(), stats: stats() }), cfg.statsMs);
  process.on('message', (m: { k: string }) => {
    if (m.k !== 'stop') return;
    stopping = true;
    for (const t of timers) clearTimeout(t);
    void new Promise<void>((resolve) => {
      lastSettled = resolve;
      if (settled === sent) resolve();
      // Every request has its timeout (6 s by default): one still unsettled well past it is lost.
      setTimeout(resolve, 15_000).unref();
    }).then(async () => {
      clearInterval(statsTimer);
      loop.disable();
      const end: FromClients = { k: 'end', t: Date.now(), sent, settled, pending: sent - settled };
      await Promise.all(clients.map((c) => c.close()));
      process.send!(end, () => process.disconnect());
    });
  });
  // The soak gone (it failed, or was stopped), nothing is left to tell: its clients' timers would keep this process running.
  // Its log written out first: process.exit drops what a stream still holds (the lines around the end, or a failure).
  process.once('disconnect', () => {
    const exit = (): never => process.exit(process.exitCode ?? 0);
    if (file === undefined) exit();
    else file.end(exit);
  });
  send({ k: 'ready', t: Date.now(), on });
}

main().catch((err: Error) => {
  console.error(`idle clients: ${err.message}`);
  process.exit(1);
});
