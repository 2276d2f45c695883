/**
 * `revproxy server --handler FILE`: the handler comes from an ES module whose
 * default export is `async (payload, ctx) => answer`, or a CommonJS module
 * that exports it (`module.exports = fn`, or `export default` compiled by tsc).
 */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { StringDecoder } from 'node:string_decoder';
import { format } from 'node:util';
import { StartError, type Handler } from '../actors/index.js';
import { badHandler, describeThrown } from '../actors/handler.js';
import type { Logger } from '../actors/logger.js';
import { systemClock } from '../transport/clock.js';

/** Why a module that exists could not be imported, and what to do about it. */
function whyNotLoaded(err: unknown, path: string): string {
  const e = err as NodeJS.ErrnoException;
  const first = String(e?.message ?? err).split('\n')[0]!;
  if (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') {
    const m = /^Cannot find (?:package|module) '([^']+)' imported from (.+)$/.exec(first) ?? /^Cannot find module '([^']+)'/.exec(first);
    const what = m?.[1] ?? first;
    const from = m?.[2] ? ` from ${m[2]}` : '';
    return `it imports '${what}', which cannot be found${from}: install it in a node_modules folder beside the module or above it (or fix the path)`;
  }
  if (e?.code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.[cm]?tsx?$/.test(path)) {
    return `this Node (${process.version}) does not run TypeScript: compile it (tsc) and give the .js file, or use Node 22.18 or later, which runs TypeScript whose types can be erased`;
  }
  if (e?.code === 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX') {
    return `this Node (${process.version}) does not run this TypeScript (${first}): it runs only TypeScript whose types can be erased (no enums, namespaces or parameter properties); compile it (tsc) and give the .js file`;
  }
  if (e instanceof SyntaxError) return `${e.name}: ${first} (node --check ${resolve(path)} shows where)`;
  // Node's own (require() of an ES module...): its words say it, but for where revproxy's own bundle imported it from.
  if (typeof e?.code === 'string' && e.code.startsWith('ERR_')) return first.replace(/ (?:resolving ES modules )?imported from \S+$/, '');
  // The module's own code threw as it ran (a setting it reads at the top, a file it opens): say so, and where.
  const url = pathToFileURL(resolve(path)).href;
  const at = safeStack(err).split('\n').find((l) => l.includes(url) || l.includes(resolve(path)))?.trim();
  const what = e instanceof Error ? `${e.name}: ${first}` : `${describeThrown(err).reason.replace(/^it threw /, '')}`;
  return `its top-level code threw as it was imported (${what})${at ? `, ${at}` : ''}; it runs once, before the server starts: fix what it needs and start the server again`;
}

/** The stack of whatever was thrown, or nothing: a getter may throw too. */
function safeStack(err: unknown): string {
  try {
    const stack = (err as { stack?: unknown } | null)?.stack;
    return typeof stack === 'string' ? stack : '';
  } catch {
    return '';
  }
}

/** What --handler takes, for the errors about what it was given instead. */
const TAKES = '--handler takes a JavaScript module (.js, .mjs or .cjs; .ts on a Node that runs TypeScript) whose default export is the handler';

/** Import the handler module at `path` (relative to the working directory); a StartError says what is wrong with it. */
export async function loadHandler(path: string): Promise<Handler> {
  const file = resolve(path);
  if (!existsSync(file)) throw new StartError(`handler module '${path}' cannot be loaded: the file does not exist`);
  // Node's words named the path of revproxy's own bundle ("... imported from .../.build/revproxy.mjs"), not what to give.
  if (statSync(file).isDirectory()) throw new StartError(`handler module '${path}' cannot be loaded: it is a directory: ${TAKES}; give the module's file`);
  // Node's words were 'needs an import attribute of type "json"': how to import it, which --handler cannot do.
  if (/\.json$/i.test(file)) throw new StartError(`handler module '${path}' cannot be loaded: it is a JSON file: ${TAKES}; to answer from this data, import it in one: import data from '${file}' with { type: 'json' }`);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (err) {
    throw new StartError(`handler module '${path}' cannot be loaded: ${whyNotLoaded(err, path)}`);
  }
  let handler = mod.default;
  // CommonJS compiled from `export default` (tsc, Babel): Node gives the whole `exports` as the default, the function inside it.
  const compiled = handler as { __esModule?: unknown; default?: unknown } | null;
  if (typeof compiled === 'object' && compiled?.__esModule === true && typeof compiled.default === 'function') handler = compiled.default;
  if (typeof handler === 'object' && handler !== null) {
    const keys = Object.keys(handler);
    throw new StartError(`handler module '${path}' exports an object${keys.length ? ` (${keys.slice(0, 5).join(', ')})` : ''}, not a function: export the handler itself (export default async (payload, ctx) => answer, or module.exports = fn)`);
  }
  if (handler === undefined) {
    // A named export (`export async function handler`) is not taken: which one would be meant is a guess.
    const named = Object.keys(mod).filter((k) => k !== 'default' && k !== 'module.exports');
    const fns = named.filter((k) => typeof (mod as Record<string, unknown>)[k] === 'function');
    const has = named.length ? `; it exports ${named.slice(0, 5).map((k) => `${k}${fns.includes(k) ? ' (a function)' : ''}`).join(', ')}` : '';
    const fix = fns.length ? `export default ${fns[0]};` : 'export default async (payload, ctx) => answer';
    throw new StartError(`handler module '${path}' has no default export${has}: the handler is the module's default export; add: ${fix}`);
  }
  const bad = badHandler(handler);
  if (bad) throw new StartError(`handler module '${path}' cannot be used: ${bad}`);
  return handler as Handler;
}

/**
 * `revproxy server` has stopped and ended its log: a process still up `graceMs` later is held by what
 * the handler module left open (a setInterval never cleared, a connection never closed), which the
 * server cannot close. It ran on for ever after its drain ('Server ... stopped', then nothing) until
 * a supervisor's SIGKILL. Say what is open, on a log of its own (`newLogger`), and exit with `code`.
 * Without a handler module (`handlerModule` false) what is open is the server's own (its registration
 * dial left open by a stop as it started did this), and the line says so rather than blaming a module.
 */
export function exitOnceStopped(code: number, newLogger: () => Logger, graceMs = 1000, handlerModule = true): void {
  setTimeout(() => {
    const counts = new Map<string, number>();
    for (const kind of process.getActiveResourcesInfo()) counts.set(kind, (counts.get(kind) ?? 0) + 1);
    // Its own stdout and stderr are listed once written to (PipeWrap, TTYWrap), and hold nothing up.
    for (const stream of [process.stdout, process.stderr]) {
      const kind = `${(stream as { _handle?: object })._handle?.constructor.name}Wrap`;
      const n = counts.get(kind);
      if (n !== undefined) n > 1 ? counts.set(kind, n - 1) : counts.delete(kind);
    }
    const open = [...counts].map(([kind, n]) => `${n} ${kind}`).join(', ') || 'something';
    const logger = newLogger();
    // Without a handler module nothing but the server's own code ran: what it left open is its bug, not the user's.
    if (!handlerModule) logger.warn('kept_alive', `Still running ${graceMs} ms after the server stopped, with ${open} open though no handler module was loaded: revproxy itself left it (a bug: please report it with this line); exiting now`, { open });
    else logger.warn('kept_alive', `Still running ${graceMs} ms after the server stopped: the handler module left ${open} open, which would keep the process running for ever (a setInterval never cleared, a connection never closed); exiting now. unref() what must not keep a process running (setInterval(...).unref()), or close it on SIGTERM`, { open });
    void logger.end().then(() => process.exit(code));
  }, graceMs).unref();
}

/** The console methods a handler module writes with, and the level each becomes in the server's log. */
const CONSOLE_LEVELS = { log: 'info', info: 'info', debug: 'debug', warn: 'warn', error: 'error' } as const;

/**
 * A handler module's `console.log` (and `info`, `debug`, `warn`, `error`) becomes a line of the server's
 * log (`console`, at its level): its text went raw to the stdout the log is written to, so that
 * `--log-format json` had lines that are not JSON, and `process.stdout.write('...')` without a newline
 * ran on into the next record (`...{"level":"info",...}`). As AWS Lambda does with JSON logs. Raw
 * writes to stdout too (`stdoutToLog`); the function returned logs a piece of a line still held.
 */
export function consoleToLog(logger: Logger): () => void {
  for (const [method, level] of Object.entries(CONSOLE_LEVELS)) {
    console[method as keyof typeof CONSOLE_LEVELS] = (...args: unknown[]) => logger[level]('console', format(...args), { method });
  }
  return stdoutToLog(logger);
}

/** The longest piece of a line (in characters) a handler module's raw stdout writes are held for, waiting for its end; past it, a line of its own. */
export const STDOUT_LINE_MAX = 64 * 1024;
/** How long a piece of a line without its end waits for the rest before it is a line of its own (ms). */
export const STDOUT_LINE_WAIT_MS = 1000;

/**
 * What a handler module writes to `process.stdout` itself (`process.stdout.write`, and what `console`
 * methods other than those above write: `console.table`, `console.dir`) becomes a line of the server's
 * log too (`stdout`, at info), one per line it wrote: it went raw into the stdout the log is written
 * to, so a JSON log got lines that are not JSON, and a write without a newline ran on into the next
 * record. A piece of a line waits for the rest (at most `STDOUT_LINE_WAIT_MS`, or `STDOUT_LINE_MAX`
 * bytes) and a multi-byte character split between writes stays whole. The log itself is written
 * to the file descriptor (SonicBoom), not through `process.stdout.write`; should a sink write
 * through it, that write goes out as it is (no loop). Returns the function that puts it back.
 */
export function stdoutToLog(logger: Logger, stream: NodeJS.WriteStream = process.stdout): () => void {
  const raw = stream.write;
  const decoder = new StringDecoder('utf8');
  let held = '';
  let timer: NodeJS.Timeout | undefined;
  let inLog = false;
  const say = (line: string): void => {
    inLog = true;
    try {
      logger.info('stdout', line.endsWith('\r') ? line.slice(0, -1) : line, {});
    } finally {
      inLog = false;
    }
  };
  const flush = (): void => {
    timer = undefined;
    if (held) say(held);
    held = '';
  };
  stream.write = function write(this: NodeJS.WriteStream, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    if (inLog) return (raw as (...a: unknown[]) => boolean).call(this, chunk, encoding, cb);
    const done = typeof encoding === 'function' ? encoding : cb;
    const text = typeof chunk !== 'string' ? decoder.write(Buffer.from(chunk as Uint8Array))
      : typeof encoding === 'string' && encoding !== 'utf8' && encoding !== 'utf-8' ? Buffer.from(chunk, encoding as BufferEncoding).toString() : chunk;
    let at = 0;
    for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', at)) {
      say(held + text.slice(at, nl));
      held = '';
      at = nl + 1;
    }
    held += text.slice(at);
    if (held.length >= STDOUT_LINE_MAX) flush();
    if (timer) clearTimeout(timer);
    timer = held ? setTimeout(flush, STDOUT_LINE_WAIT_MS).unref() : undefined;
    if (typeof done === 'function') process.nextTick(done as () => void);
    return true;
  } as typeof stream.write;
  return () => {
    if (timer) clearTimeout(timer);
    flush();
    stream.write = raw;
  };
}

/**
 * While the server serves, an end it did not choose is said in its log: `process.exit()` called by the
 * handler module ended it without a line (the proxy saw the connection close, the log nothing), and a
 * throw from one of its timers or an unhandled rejection was Node's raw stack on stderr alone, outside
 * a JSON log. Node still ends the process as it would (exit 1, its stack on stderr): this only says so,
 * first (prepended: the log's own exit hook then writes it out). Returns the function that stops it.
 */
export function sayUnplannedExit(logger: Logger): () => void {
  let said = false;
  const onUncaught = (err: unknown, origin: string): void => {
    said = true;
    const what = origin === 'unhandledRejection' ? 'a promise it did not await rejected (an unhandled rejection)' : 'an exception was thrown outside any request (a timer or callback of its own)';
    logger.error('uncaught', `The server ends (exit 1): ${what}: ${describeThrown(err).detail}; catch it, or await what the handler starts (README, "Your own handler")`, { origin });
  };
  const onExit = (code: number): void => {
    if (!said) logger.error('unplanned_exit', `The process is exiting with code ${code} while the server serves, not by its drain: process.exit() was called (by the handler module?), and requests in flight are lost; a handler throws to fail its request, and the server stops on SIGTERM`, { code });
  };
  process.on('uncaughtExceptionMonitor', onUncaught);
  process.prependListener('exit', onExit);
  return () => {
    process.off('uncaughtExceptionMonitor', onUncaught);
    process.off('exit', onExit);
  };
}

/** The signals that stop a server (cli/common.ts, runUntilStopped). */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const;

/**
 * `loadHandler` for `revproxy server`: a module whose top-level code takes long (a top-level await:
 * a connection, a file) is said to after `slowMs`, and a SIGINT, SIGTERM or SIGQUIT meanwhile stops
 * the server there (a StartError: nothing listens yet, there is nothing to drain). The import cannot
 * be cancelled: it was waited for, signals held (cli/early-signals.mjs) until it ended, and one that
 * never ends left a server that Ctrl-C and SIGTERM could not stop.
 */
export async function loadHandlerStoppable(path: string, logger: Logger, slowMs = 5000): Promise<Handler> {
  const started = systemClock.now();
  const slow = setTimeout(() => logger.warn('handler_loading', `Still importing the handler module '${path}' after ${slowMs} ms: its top-level code has not finished (a top-level await?); the server starts once it has (SIGTERM or Ctrl-C stops it now)`, { module: path }), slowMs);
  let onSignal: ((signal: NodeJS.Signals) => void) | undefined;
  const stopped = new Promise<never>((_, reject) => {
    onSignal = (signal) => reject(new StartError(`${signal} while the handler module '${path}' was being imported (its top-level code had run ${Math.round(systemClock.now() - started)} ms): stopped before the server started`));
  });
  for (const signal of STOP_SIGNALS) process.on(signal, onSignal!);
  try {
    return await Promise.race([loadHandler(path), stopped]);
  } finally {
    clearTimeout(slow);
    for (const signal of STOP_SIGNALS) process.off(signal, onSignal!);
  }
}
