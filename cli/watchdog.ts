/**
 * `revproxy server --watchdog MS`: a server whose event loop has not turned for MS ends, as
 * HAProxy's watchdog ends a process with a stuck thread, so that its supervisor starts it again.
 *
 * A handler that computes without yielding (a loop that never ends on some input) blocked the
 * server's one thread for ever: it answered nothing, the proxy's PINGs included, so the proxy
 * removed it after 3 s and tried its requests elsewhere, and the process stayed up, blocked, its
 * registration dial never made again. SIGTERM could not stop it (its handler is JavaScript too);
 * only SIGKILL did. Ended instead, it is a crash: the supervisor restarts it, and the proxy's
 * `max_resets` keeps the request that did it from ending every server it reaches.
 *
 * - The main thread writes the time of its beat (ten a second) in shared memory; a worker thread
 *   looks as often. When the loop has not beaten for MS (counted from when the worker last ran on
 *   time: a process stopped with SIGSTOP, or a suspended machine, stops both), the worker pauses the
 *   main thread through the inspector (`Debugger.pause`, as a debugger pauses a loop; a session
 *   from a worker is served between two statements of the loop), reads where it is (the stack's
 *   frames), and calls the server's hook on the main thread (`Runtime.evaluate`): the server logs
 *   its line with its own logger (`watchdog`, error, naming the request and where the loop is),
 *   and exits with `WATCHDOG_EXIT_CODE`.
 * - A main thread blocked outside JavaScript (a synchronous child process or system call, a native
 *   addon) runs nothing a pause can stop at: after `GRACE_MS` more, the worker writes the line
 *   itself (the log's own format, rendered at start: `Logger.render`) and ends the process with
 *   SIGKILL. What the server logged in its last turn and had not written yet is lost then.
 * - The worker's source is a string: the CLI runs as one bundled file (cli/bundle.mjs), and a
 *   worker started from it has no module of its own to load.
 */
import { Worker } from 'node:worker_threads';
import { fmt, type Logger } from '../actors/logger.js';
import { closeSync } from 'node:fs';
import inspector from 'node:inspector';

/** The exit status of a server the watchdog ended (as sysexits' EX_SOFTWARE). */
export const WATCHDOG_EXIT_CODE = 70;
/** `--watchdog`'s default (ms): past the proxy's removal of a server that answers no PING (3 s), short of a wait nobody would choose. */
export const DEFAULT_WATCHDOG_MS = 10_000;
/** How long the paused main thread has to log and exit before the worker does it itself (ms). */
export const GRACE_MS = 2000;
/** Where revproxy's own code runs from: the bundle this file is part of, or its sources (tsx). */
const OWN = [import.meta.url, new URL('../actors/', import.meta.url).href];
/** The global the worker calls on the paused main thread. */
const HOOK = 'revproxy.watchdog';
/** Where the message goes in the line rendered at start for the worker. */
const PLACEHOLDER = '@@revproxy-watchdog@@';

const WORKER_SOURCE = String.raw`'use strict';
const { workerData } = require('node:worker_threads');
const { limitMs, periodMs, graceMs, hook, fallback, placeholder } = workerData;
// When the main thread last beat, and this thread last looked (process.hrtime: one monotonic clock for both threads).
const lastBeat = new BigInt64Array(workerData.lastBeat);
const now = () => process.hrtime.bigint();
const limit = BigInt(limitMs) * 1000000n;
const period = BigInt(periodMs) * 1000000n;
let looked = now();
let resumed = looked;
const timer = setInterval(() => {
  const at = now();
  // This thread was late too: the process was stopped (SIGSTOP) or the machine suspended, not the loop blocked.
  if (at - looked > period + limit / 2n) resumed = at;
  looked = at;
  const beat = Atomics.load(lastBeat, 0);
  const since = beat > resumed ? beat : resumed;
  // The loop stopped at most a period after its last beat: past limit + period it has not turned for limit at least.
  if (at - since >= limit + period) {
    clearInterval(timer);
    stuck(Number((at - since - period) / 1000000n));
  }
}, periodMs);

function stuck(ms) {
  // Holds this thread up from here on (the interval is cleared).
  setTimeout(() => unpaused(ms + graceMs), graceMs);
  let session;
  try {
    session = new (require('node:inspector').Session)();
    session.connectToMainThread();
  } catch {
    return; // no inspector in this Node: the timer above writes the line
  }
  const urls = new Map();
  session.on('Debugger.scriptParsed', (m) => urls.set(m.params.scriptId, m.params.url));
  session.once('Debugger.paused', (m) => {
    const frames = [];
    for (const f of m.params.callFrames) {
      const url = urls.get(f.location.scriptId) || f.url || '?';
      if (url.startsWith('node:')) continue;
      frames.push((f.functionName || '<anonymous>') + ' (' + url + ':' + (f.location.lineNumber + 1) + ':' + (f.location.columnNumber + 1) + ')');
      if (frames.length === 8) break;
    }
    session.post('Runtime.evaluate', { expression: 'globalThis[Symbol.for(' + JSON.stringify(hook) + ')](' + JSON.stringify(frames) + ', ' + ms + ')' });
  });
  session.post('Debugger.enable', () => session.post('Debugger.pause'));
}

function unpaused(ms) {
  const msg = 'The server\'s event loop has not turned for ' + ms.toLocaleString('en-US') + ' ms (--watchdog ' + limitMs + '), blocked outside JavaScript (a synchronous child process or system call, a native addon), where no pause can stop it to tell where: the server is killed now (SIGKILL) so that its supervisor starts it again';
  if (fallback) {
    const text = fallback.line.replace(/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/, new Date().toISOString())
      .replace(placeholder, fallback.format === 'json' ? JSON.stringify(msg).slice(1, -1) : msg);
    const fs = require('node:fs');
    try {
      if (typeof fallback.to === 'number') fs.writeSync(fallback.to, text);
      else fs.appendFileSync(fallback.to, text);
    } catch {
      // a log that cannot be written to: the process ends all the same
    }
  }
  process.kill(process.pid, 'SIGKILL');
}
`;

export interface WatchdogOptions {
  /** How long the event loop may not turn before the process ends (ms, more than 0). */
  limitMs: number;
  /** The server's log: the line is its own, or rendered from it for the worker. */
  logger: Logger;
  /** What the server was doing (`HandlerRunner.stuckOn`). */
  doing: () => string;
  /** Called on the paused main thread just before it exits: the server's own exit hooks stand down (`sayUnplannedExit`). */
  beforeExit?: () => void;
}

export interface Watchdog {
  /** Stop watching (the server stops: a drain that waits is no stall). */
  stop(): Promise<void>;
}

/** Start watching this process's event loop; see the file's comment. */
export function startWatchdog(opts: WatchdogOptions): Watchdog {
  const { limitMs, logger } = opts;
  if (inspector.url()) {
    logger.info('watchdog_off', `The watchdog is off (--watchdog ${limitMs}): Node's inspector is open (--inspect), and a pause at a breakpoint is no stall`, {});
    return { stop: async () => {} };
  }
  const periodMs = Math.max(10, Math.min(100, Math.floor(limitMs / 10)));
  const lastBeat = new BigInt64Array(new SharedArrayBuffer(8));
  Atomics.store(lastBeat, 0, process.hrtime.bigint());
  const beat = setInterval(() => Atomics.store(lastBeat, 0, process.hrtime.bigint()), periodMs).unref();
  const hook = Symbol.for(HOOK);
  (globalThis as Record<symbol, unknown>)[hook] = (frames: string[], ms: number): void => {
    // The handler's frames: those under it (HandlerRunner, XState, the socket's stream) are revproxy's own, the same each time.
    const mine = frames.findIndex((f) => OWN.some((own) => f.includes(` (${own}`)));
    const shown = mine > 0 ? frames.slice(0, mine) : frames;
    const where = shown.length ? `, at ${shown.join(' < ')}` : '';
    const doing = mine === 0 ? "revproxy's own code computes there (a bug: please report it with this line)" : opts.doing();
    opts.beforeExit?.();
    logger.error('watchdog', `The server's event loop has not turned for ${fmt(ms)} ms (--watchdog ${limitMs})${where}: ${doing}. It answered nothing meanwhile, the proxy's PINGs included, and would not again: it ends now (exit ${WATCHDOG_EXIT_CODE}) so that its supervisor starts it again. Run long work in a worker thread (node:worker_threads, or a pool such as piscina) and await it, or raise --watchdog if the handler must compute this long`, { ms, limitMs, stack: shown });
    exitQuietly(WATCHDOG_EXIT_CODE);
  };
  const fallback = logger.render('error', 'watchdog', PLACEHOLDER, { limitMs });
  const worker = new Worker(WORKER_SOURCE, {
    eval: true,
    // Nothing of the CLI's own flags (tsx's loader, in a checkout) is needed to run a string.
    execArgv: [],
    workerData: { lastBeat: lastBeat.buffer, limitMs, periodMs, graceMs: GRACE_MS, hook: HOOK, fallback, placeholder: PLACEHOLDER },
    resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
    stdout: false,
    stderr: false,
  });
  worker.unref();
  worker.on('error', (err) => logger.warn('watchdog_failed', `The watchdog thread failed (${err.message}): a handler that blocks the event loop for good is no longer ended (--watchdog)`, {}));
  return {
    async stop() {
      clearInterval(beat);
      delete (globalThis as Record<symbol, unknown>)[hook];
      await worker.terminate();
    },
  };
}

/**
 * `process.exit(code)` from the debugger's pause: the log's exit hooks write what it holds, then
 * standard error is closed so that Node's "Waiting for the debugger to disconnect..." (the worker's
 * session is still open) is not the last line of a log that is JSON otherwise.
 */
function exitQuietly(code: number): never {
  process.on('exit', () => {
    try {
      closeSync(2);
    } catch {
      // closed already
    }
  });
  process.exit(code);
}
