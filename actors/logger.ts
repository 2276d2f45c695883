/**
 * Logs a person can read and a machine can parse: every line is one event
 * with a name, the seed-style sentence and its fields.
 *
 * - `info` is the life of the system (start, listen, registrations,
 *   departures, ejections, drains, reloads); per-request lines are `debug`,
 *   and payloads are never logged above `debug`.
 * - A condition that can repeat many times a second goes through
 *   `repeated`: logged the first time, then one line per interval with a
 *   count, so a flood of refusals is a few lines, not a flood of lines.
 * - Lines leave through a `LogStream`: pino (JSON) or a text formatter
 *   writing to a SonicBoom destination, asynchronously, with a bounded
 *   buffer. When the reader is slower than the log, lines are dropped and
 *   counted (a periodic line and `dropped()` say how many) instead of
 *   growing memory.
 * - Tests and the demo give a plain function instead (`memorySink`,
 *   `textSink`), which gets every record as an object.
 */
import { closeSync, openSync } from 'node:fs';
import { styleText } from 'node:util';
import type * as PinoModule from 'pino';
import type { Logger as Pino } from 'pino';
import sonicBoom, { type SonicBoom as Sonic } from 'sonic-boom';
import { systemClock, type Clock, type Timer } from '../transport/clock.js';
import { FrameBuffer } from '../transport/frame.js';
import { lazyPackage } from '../transport/lazy.js';

// sonic-boom is CommonJS: its default export is the class.
const SonicBoom = sonicBoom as unknown as typeof Sonic;
// pino writes the JSON form only: loaded when a JSON log is made.
const pinoModule = lazyPackage<typeof PinoModule>('pino');

export type Level = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };
export const LEVELS = Object.keys(RANK) as Level[];
type Emitting = Exclude<Level, 'silent'>;

export interface LogRecord {
  time: string;
  level: Emitting;
  actor: string;
  event: string;
  msg: string;
  [field: string]: unknown;
}

export type LogSink = (rec: LogRecord) => void;

/** How often repeated conditions and dropped lines are summarised, by default (ms). */
export const SUMMARY_INTERVAL_MS = 5000;
/** Distinct repeated conditions counted per interval; more are counted together, per event. */
const MAX_REPEATED_KEYS = 256;

/** Says what a repeated condition amounted to: `span` is set ("in the last 5 s") on a summary line. */
export type Describe = (count: number, span?: string) => string;

interface Repeat {
  level: Emitting;
  actor: string;
  event: string;
  count: number;
  describe: Describe;
  fields?: Record<string, unknown>;
}

/**
 * A repeated condition's fields keep only what every occurrence since its first gave alike: its summary
 * line stands for all of them. The first's fields were kept whole, so a summary of 40 connections from
 * one address refused said `peer` with the first one's port and `bytes` with what it held.
 */
function keepCommon(kept: Record<string, unknown>, fields: Record<string, unknown> | undefined): void {
  for (const k in kept) if (fields === undefined || !Object.is(kept[k], fields[k])) delete kept[k];
}

/** What a logger and its children share: where lines go, the level, the repeated conditions. */
class Core {
  rank: number;
  private readonly repeats = new Map<string, Repeat>();
  /** Occurrences of repeated conditions beyond MAX_REPEATED_KEYS, per event. */
  private readonly overflow = new Map<string, { level: Emitting; actor: string; count: number; keys: Set<string> }>();
  private timer: Timer | undefined;
  private lastTick: number;
  /** Lines written this interval by `budgeted`, per event and key. */
  private readonly spent = new Map<string, number>();

  constructor(
    readonly out: LogSink | LogStream,
    level: Level,
    readonly summaryMs: number,
    private readonly clock: Clock,
  ) {
    this.rank = RANK[level];
    this.lastTick = clock.now();
    if (out instanceof LogStream) out.onFirstDrop = () => this.arm();
  }

  emit(level: Emitting, actor: string, event: string, msg: string, fields?: Record<string, unknown>): void {
    const out = this.out;
    if (out instanceof LogStream) return out.write(level, actor, event, msg, fields);
    // Keys in the order pino writes them (level, time, ...), as the proxy's and server's JSON lines have them.
    try {
      out({ level, time: new Date().toISOString(), actor, event, msg, ...fields });
    } catch (err) {
      this.sinkThrew(err);
    }
  }

  /** Lines a caller's sink threw on (`sinkThrew`). */
  private sinkFailures = 0;

  /**
   * A caller's sink threw: the line is lost, not the process. Thrown inside an actor's action, it
   * stopped the proxy, server or client with an uncaught exception (the host process exited 1 at a
   * `no_server` line), and one at start left a listener open with no handle to close it. Said once,
   * as a process warning (winston and pino report a failing destination as an event, not a throw).
   */
  private sinkThrew(err: unknown): void {
    if (this.sinkFailures++ > 0) return;
    process.emitWarning(`a revproxy log sink threw (${err instanceof Error ? err.message : String(err)}): its lines are lost while it throws, and this is said once`, { code: 'REVPROXY_LOG_SINK' });
  }

  repeated(level: Emitting, actor: string, event: string, key: string, count: number, describe: Describe, fields?: Record<string, unknown>): void {
    const id = `${event}\0${key}`;
    const r = this.repeats.get(id);
    if (r) {
      r.count += count;
      if (r.fields) keepCommon(r.fields, fields);
      return;
    }
    if (this.repeats.size >= MAX_REPEATED_KEYS) {
      let o = this.overflow.get(event);
      if (!o) this.overflow.set(event, (o = { level, actor, count: 0, keys: new Set() }));
      o.count += count;
      if (o.keys.size < 10_000) o.keys.add(key);
      return;
    }
    this.repeats.set(id, { level, actor, event, count: 0, describe, fields: fields && { ...fields } });
    this.emit(level, actor, event, describe(count), { ...fields, count });
    this.arm();
  }

  /** `Logger.budgeted`: the line itself while this interval's budget lasts, then a repeated condition. */
  budgeted(level: Emitting, actor: string, event: string, key: string, max: number, msg: string, fields: Record<string, unknown> | undefined, past: Describe): void {
    const id = `${event}\0${key}`;
    const spent = this.spent.get(id) ?? 0;
    if (spent < max) {
      this.spent.set(id, spent + 1);
      this.emit(level, actor, event, msg, fields);
      this.arm();
      return;
    }
    this.repeated(level, actor, `${event}_more`, key, 1, past);
  }

  private arm(): void {
    if (this.timer) return;
    this.lastTick = this.clock.now();
    this.timer = this.clock.setInterval(() => this.tick(), this.summaryMs);
  }

  /** The interval so far: its length in seconds, and in words ("in the last 4 s"). */
  private interval(): { seconds: number; span: string } {
    const ms = this.clock.now() - this.lastTick;
    return { seconds: Math.round(ms / 100) / 10, span: ms < 1000 ? `in the last ${Math.round(ms)} ms` : `in the last ${Math.round(ms / 1000)} s` };
  }

  private summarise(r: Repeat, span: string, seconds: number): void {
    if (RANK[r.level] >= this.rank) this.emit(r.level, r.actor, r.event, r.describe(r.count, span), { ...r.fields, count: r.count, summary: true, intervalS: seconds });
  }

  /** One line per repeated condition that happened again in the interval; conditions that did not are forgotten. */
  tick(): void {
    const { seconds, span } = this.interval();
    this.lastTick = this.clock.now();
    this.spent.clear();
    for (const [id, r] of this.repeats) {
      if (r.count === 0) {
        this.repeats.delete(id);
        continue;
      }
      this.summarise(r, span, seconds);
      r.count = 0;
    }
    for (const [event, o] of this.overflow) {
      this.emit(o.level, o.actor, event, `${event}: ${fmt(o.count)} more time(s) for ${fmt(o.keys.size)} other key(s) ${span} (more distinct conditions than are counted one by one)`, {
        count: o.count, keys: o.keys.size, summary: true, intervalS: seconds,
      });
    }
    this.overflow.clear();
    const out = this.out;
    const dropped = out instanceof LogStream ? out.takeDropped() : 0;
    // A warning like any other: below the level (error, silent) it is left out; the count still reaches the metric.
    if (dropped > 0 && out instanceof LogStream && RANK.warn >= this.rank) {
      out.write('warn', 'log', 'log_dropped', `Dropped ${fmt(dropped)} log line(s) ${span}: the log's reader is slower than the log (lines are dropped rather than held in memory)`, {
        count: dropped, summary: true, intervalS: seconds,
      });
    }
    if (this.repeats.size === 0 && dropped === 0 && this.timer) {
      this.timer.cancel();
      this.timer = undefined;
    }
  }

  /** The summaries due, written now; the timer runs on. */
  flush(): void {
    if (this.timer) this.tick();
  }

  /** The summaries of the conditions whose fields name `id` (as `server` or `id`), written now, and those conditions forgotten. */
  settle(id: string): void {
    let interval: { seconds: number; span: string } | undefined;
    for (const [key, r] of this.repeats) {
      const f = r.fields;
      if (f === undefined || (f.server !== id && f.id !== id)) continue;
      if (r.count > 0) {
        interval ??= this.interval();
        this.summarise(r, interval.span, interval.seconds);
      }
      this.repeats.delete(key);
    }
  }

  close(): void {
    this.flush();
    this.timer?.cancel();
    this.timer = undefined;
  }
}

export interface LoggerOptions {
  /** How often repeated conditions are summarised (ms). Default 5000. */
  summaryMs?: number;
  /** The summaries' timer (the system clock by default; specs give a ManualClock). */
  clock?: Clock;
}

/**
 * One actor's log: events with a name, a sentence and fields, at or above a
 * level. Give one to `startProxy`, `startServer` or `connect` as `logger`
 * (the default is silent).
 *
 * @example
 * const logger = new Logger('server 500', jsonSink(process.stdout), 'info');
 * await startServer({ id: '500', policy: '111', revproc: 2100, logger, handler });
 */
export class Logger {
  private readonly core: Core;

  /** A logger writing records to `out`: a function (tests, the demo) or a `LogStream` (pino, SonicBoom). */
  constructor(actor: string, out: LogSink | LogStream, level?: Level, opts?: LoggerOptions);
  constructor(actor: string, core: Core);
  constructor(
    readonly actor: string,
    out: LogSink | LogStream | Core,
    level: Level = 'info',
    opts: LoggerOptions = {},
  ) {
    this.core = out instanceof Core ? out : new Core(out, level, opts.summaryMs ?? SUMMARY_INTERVAL_MS, opts.clock ?? systemClock);
  }

  /** A logger for another actor, sharing this one's output, level and summaries. */
  child(actor: string): Logger {
    return new Logger(actor, this.core);
  }

  get level(): Level {
    return LEVELS.find((l) => RANK[l] === this.core.rank) ?? 'info';
  }

  /** Change the level of this logger and every logger sharing its output (a reload). */
  setLevel(level: Level): void {
    this.core.rank = RANK[level];
  }

  enabled(level: Emitting): boolean {
    return RANK[level] >= this.core.rank;
  }

  debug(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.core.rank <= 10) this.core.emit('debug', this.actor, event, msg, fields);
  }
  info(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.core.rank <= 20) this.core.emit('info', this.actor, event, msg, fields);
  }
  warn(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.core.rank <= 30) this.core.emit('warn', this.actor, event, msg, fields);
  }
  error(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.core.rank <= 40) this.core.emit('error', this.actor, event, msg, fields);
  }

  /**
   * A condition that can repeat many times a second, told apart by `key`
   * (requests refused for policy 999, say). The first occurrence is logged at
   * once with `describe(count)`; later ones are counted, and each interval in
   * which it happened again gives one line, `describe(total, 'in the last 5 s')`.
   *
   * @example
   *   log.repeated('warn', 'no_server', policy, n, (k, span) => `refused ${k} request(s) for policy ${policy}${span ? ` ${span}` : ''}`);
   */
  repeated(level: Emitting, event: string, key: string, count: number, describe: Describe, fields?: Record<string, unknown>): void {
    if (RANK[level] >= this.core.rank) this.core.repeated(level, this.actor, event, key, count, describe, fields);
  }

  /**
   * A line of the system's life that a peer can make happen at will (a registration, a departure):
   * written as any other up to `max` times an interval per `key`; past that, counted and summarised
   * as a repeated condition (`EVENT_more`, `past(count, span)`), so that a peer registering and
   * leaving a thousand times a second cannot fill the disk with them (1.1-1.4 MB/s before).
   */
  budgeted(level: Emitting, event: string, key: string, max: number, msg: string, fields: Record<string, unknown> | undefined, past: Describe): void {
    if (RANK[level] >= this.core.rank) this.core.budgeted(level, this.actor, event, key, max, msg, fields, past);
  }

  /**
   * The line this logger would write for the record now, its format and where it would go (a file
   * descriptor or a file's path), without writing it: for a thread that writes a line of this log when
   * this one cannot run (cli/watchdog.ts). Undefined when records go to a function (tests, the demo)
   * or the level leaves it out.
   */
  render(level: Emitting, event: string, msg: string, fields?: Record<string, unknown>): { line: string; format: 'text' | 'json'; to: string | number } | undefined {
    const out = this.core.out;
    if (!(out instanceof LogStream) || RANK[level] < this.core.rank) return undefined;
    const to = out.dest.opts.to;
    return { line: out.render(level, this.actor, event, msg, fields), format: out.format, to: to === '-' ? 1 : to };
  }

  /** Lines the output dropped so far because its reader was too slow. */
  get dropped(): number {
    const out = this.core.out;
    return out instanceof LogStream ? out.dest.dropped : 0;
  }

  /**
   * Write the pending summaries now ("Retrying 16 request(s) ... in the last 4 s"), as before a line
   * that must come last: a summary after "stopped" reads as if the actor still ran.
   */
  flush(): void {
    this.core.flush();
  }

  /**
   * Write now the pending summaries about server `id` (conditions whose fields name it, as `server` or
   * `id`) and forget those conditions: before the line saying it left, so that no "kept failing but is
   * ... kept in rotation (2 more time(s) in the last 5 s)" comes after it, reading as if it were still there.
   */
  settle(id: string): void {
    this.core.settle(id);
  }

  /** Write the pending summaries now and stop their timer. */
  close(): void {
    this.core.close();
  }

  /**
   * Close, and end the output: what its reader takes within a second is
   * written, the rest is given up (a reader that stopped reading must not
   * keep the process alive). For the end of a command.
   */
  async end(): Promise<void> {
    this.core.close();
    const out = this.core.out;
    if (out instanceof LogStream) await out.dest.end();
  }
}

/** 2417 -> "2,417". */
export function fmt(n: number): string {
  return n.toLocaleString('en-US');
}

const PALETTE = ['cyan', 'magenta', 'yellow', 'green', 'blue', 'red'] as const;

export interface TextOptions {
  color?: boolean;
  /** Pad actor names to this width so sentences line up. */
  width?: number;
  /** Start each line with its time (ISO 8601). */
  time?: boolean;
}

/**
 * Characters a terminal or a line reader acts on: C0 controls but the newline (folded below), DEL,
 * C1 controls and the line and paragraph separators. Ids and policies are any text a peer sends, and
 * a server registered as `x\r<a forged line>` or with ANSI escapes in its id rewrote what `tail -f`
 * showed of the text log.
 */
const CONTROLS = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]/g;

/** `s` with those characters written as JSON writes them (`\u001b`), so a text line shows them and never acts on them. */
export function escapeControls(s: string): string {
  CONTROLS.lastIndex = 0;
  return CONTROLS.test(s) ? s.replace(CONTROLS, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) : s;
}

/** The text form of a record: `[TIME ]ACTOR | [warning: ]sentence`, control characters escaped. */
export function textLine(rec: Pick<LogRecord, 'time' | 'level' | 'actor' | 'msg'>, opts: TextOptions, colors?: Map<string, (typeof PALETTE)[number]>): string {
  let prefix = escapeControls(rec.actor).padEnd(opts.width ?? 0);
  if (opts.color) {
    let c = colors?.get(rec.actor);
    if (!c) {
      c = PALETTE[colorIndex(rec.actor)]!;
      colors?.set(rec.actor, c);
    }
    prefix = styleText(c, prefix);
  }
  // One event, one line: messages from elsewhere (OpenSSL's end in a newline) are folded.
  let msg = escapeControls(rec.msg.includes('\n') ? rec.msg.replace(/\s*\n\s*/g, ' ').trim() : rec.msg);
  if (rec.level === 'warn') msg = opts.color ? styleText('yellow', `warning: ${msg}`) : `warning: ${msg}`;
  if (rec.level === 'error') msg = opts.color ? styleText('red', `error: ${msg}`) : `error: ${msg}`;
  return `${opts.time ? `${rec.time} ` : ''}${prefix} | ${msg}\n`;
}

/**
 * One readable line per record, written synchronously: `proxy      | Received setup message ...` (the demo's look).
 *
 * @example
 * const logger = new Logger('client', textSink(process.stderr, { color: true }));
 */
export function textSink(out: NodeJS.WritableStream, opts: TextOptions = {}): LogSink {
  const colors = new Map<string, (typeof PALETTE)[number]>();
  return (rec) => void out.write(textLine(rec, opts, colors));
}

function colorIndex(actor: string): number {
  if (actor.startsWith('proxy')) return 0;
  if (actor.startsWith('server')) return 1 + (hash(actor) % 2) * 2; // magenta or green
  if (actor.startsWith('client')) return 4;
  return hash(actor) % PALETTE.length;
}

function hash(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) >>> 0;
  return h;
}

/**
 * One JSON object per line (NDJSON), written synchronously.
 *
 * @example
 * const logger = new Logger('proxy', jsonSink(process.stdout), 'warn');
 */
export function jsonSink(out: NodeJS.WritableStream): LogSink {
  return (rec) => void out.write(`${JSON.stringify(rec)}\n`);
}

/** Keeps records in memory: for tests. */
export function memorySink(into: LogRecord[]): LogSink {
  return (rec) => into.push(rec);
}

/** Bytes of log a destination holds for a slow reader before it drops lines. */
export const LOG_BUFFER_BYTES = 4 * 1024 * 1024;
/** After a write failed (a full disk), how soon what waits is tried again with no new line to carry it (ms). */
export const WRITE_RETRY_MS = 1000;
const NOTHING = Buffer.alloc(0);

export interface DestinationOptions {
  /** `-` (or 1) for standard output, 2 for standard error, or a file path (appended to). */
  to: string | number;
  /** Largest backlog held for a slow reader (bytes); past it, lines are dropped and counted. Default 4 MiB. */
  maxBytes?: number;
  /**
   * Hold lines until `bytes` are waiting or `ms` have passed since the first
   * of them (as nginx's `buffer=`/`flush=` and Envoy's access log flush
   * interval do): fewer, larger writes. Absent: every turn of the event loop
   * writes what it logged.
   */
  hold?: { bytes: number; ms: number };
  /** The mode a file this creates gets (at start, and at a reopen after logrotate moved it), before the umask. Default 0o666. An existing file keeps its own. */
  mode?: number;
}

/**
 * An asynchronous, bounded line destination (SonicBoom): writes never
 * block the event loop, a stalled reader costs at most `maxBytes` of memory,
 * and `reopen()` follows a rotated file. The main log and the access log use one each.
 */
export class Destination {
  readonly sonic: Sonic;
  /** Lines dropped so far (a slow reader). */
  dropped = 0;
  private exiting = false;
  onDrop?: () => void;
  /** A write failed (a full disk, an I/O error): the lines wait, up to the bound, and are tried again every `WRITE_RETRY_MS`. */
  onError?: (err: NodeJS.ErrnoException) => void;
  /** A write succeeded after one failed: the file takes lines again. */
  onRecovered?: () => void;
  /** The last write failed, and none has succeeded since. */
  private failing = false;
  private retryTimer?: NodeJS.Timeout;
  private readonly onExit = (): void => this.flushNow();

  constructor(readonly opts: DestinationOptions) {
    const to = opts.to === '-' ? 1 : opts.to;
    // The fd of a pipe is made non-blocking by Node's own stream for it: then a stalled reader
    // gives EAGAIN (retried later; the backlog is bounded), never a blocked write.
    if (to === 1) void process.stdout;
    if (to === 2) void process.stderr;
    this.sonic = new SonicBoom({
      ...(typeof to === 'number' ? { fd: to } : { dest: to, append: true, mkdir: false, mode: opts.mode }),
      maxLength: opts.maxBytes ?? LOG_BUFFER_BYTES,
      // Chunks of bytes, made by `write` and by producers that format their lines as bytes (the access log).
      contentMode: 'buffer',
      maxWrite: 256 * 1024,
      sync: false,
      // At exit a reader that never reads must not hold the process: give up instead of retrying.
      retryEAGAIN: () => !this.exiting,
    });
    this.sonic.on('drop', () => {
      this.dropped += this.dropping;
      this.onDrop?.();
    });
    // A broken pipe or a full disk must not end the proxy.
    this.sonic.on('error', (err: NodeJS.ErrnoException) => {
      this.failing = true;
      this.onError?.(err);
      this.retryLater();
    });
    // Whether the last write stopped inside a line (a disk that filled took part of a chunk): see `reopen`.
    this.sonic.on('write', (n: number) => {
      const b = (this.sonic as unknown as { _writingBuf: Buffer | string })._writingBuf;
      if (n > 0 && typeof b !== 'string') this.midLine = n < b.length && b[n - 1] !== 10;
      if (n > 0 && this.failing) {
        this.failing = false;
        this.onRecovered?.();
      }
    });
    process.on('exit', this.onExit);
  }

  /**
   * SonicBoom tries a failed write again only when a new chunk comes that fits in its backlog: a
   * proxy with no traffic left its lines waiting, and one with traffic, once the backlog was full,
   * dropped every new chunk before trying (the disk freed, 15,004 access log lines in 5 s at 3,000
   * requests/s were dropped and none written, until a SIGUSR1). So a failed write is tried again
   * after `WRITE_RETRY_MS`, by handing SonicBoom an empty chunk, which always fits.
   */
  private retryLater(): void {
    if (this.retryTimer || this.exiting) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      const sonic = this.sonic as unknown as { destroyed: boolean; _writing: boolean };
      if (this.exiting || sonic.destroyed || sonic._writing || this.backlog === 0) return;
      this.sonic.write(NOTHING as unknown as string);
    }, WRITE_RETRY_MS).unref();
  }

  // The lines of one event-loop turn go to SonicBoom as one chunk of bytes, written in place:
  // SonicBoom's utf8 mode measures its whole last chunk on every write (about 3.5 us a line at
  // 130 bytes), and a line joined from strings costs more to make and to collect than to copy.
  private readonly pending = new FrameBuffer(16 * 1024, true);
  private lines = 0;
  private readonly flushPending = (): void => {
    const lines = this.lines;
    if (lines === 0) return;
    this.lines = 0;
    // Once every chunk handed over is written, the buffer of the last one is filled again: a held file
    // log took a new 256 KiB buffer per chunk, and a 512 KiB one it grew into, memory outside the heap
    // that brought on a full collection of the proxy's heap every ~64 MB of it (about one a second
    // pipelined). A chunk still waiting for the disk keeps its buffer, and the next comes from a new one.
    const sonic = this.sonic as unknown as { _writing: boolean; _len: number };
    if (!sonic._writing && sonic._len === 0) this.pending.recycle();
    const chunk = this.pending.take();
    this.dropping = lines;
    // A chunk the backlog has no room for is dropped whole: 'drop' counts its lines.
    if (!(this.sonic as unknown as { destroyed: boolean }).destroyed) this.sonic.write(chunk as unknown as string);
    this.dropping = 0;
  };
  /** Lines of the chunk being handed to SonicBoom (what a 'drop' loses). */
  private dropping = 0;

  /** Append one line (ending in a newline); this turn's lines leave together. */
  write(line: string): void {
    const at = this.pending.reserve(line.length * 3); // UTF-8 takes at most 3 bytes per UTF-16 unit
    this.pending.commit(at + this.pending.buffer.write(line, at, 'utf8'));
    this.wrote();
  }

  /**
   * The bytes of this turn's lines, for a producer that writes its lines in
   * place (`reserve`, write into `buffer`, `commit`), then calls `wrote`.
   */
  get bytes(): FrameBuffer {
    return this.pending;
  }

  /** One more line is in `bytes`. */
  wrote(): void {
    const hold = this.opts.hold;
    if (this.lines++ === 0) {
      if (!hold) setImmediate(this.flushPending);
      else if (!this.holdTimer) this.holdTimer = setTimeout(this.holdExpired, hold.ms).unref();
    }
    if (hold && this.pending.length >= hold.bytes) this.flushPending();
  }

  private holdTimer?: NodeJS.Timeout;
  private readonly holdExpired = (): void => {
    this.holdTimer = undefined;
    this.flushPending();
  };

  /** Lines not yet handed to the kernel, in bytes (the backlog a slow reader causes). */
  get backlog(): number {
    return (this.sonic as unknown as { _len: number })._len;
  }

  /**
   * Open the file again (after logrotate moved it); nothing for stdout. When
   * the file cannot be opened (its folder gone, no permission), this throws
   * why and the lines keep going to the file open now, as nginx does.
   */
  reopen(): void {
    if (typeof this.opts.to === 'string' && this.opts.to !== '-') {
      this.flushPending(); // what was logged before the signal goes to the file it was logged for
      // Tried first: SonicBoom reports a failed reopen only as an 'error' event, and leaves behind
      // a listener that would close its current file a second time at the next reopen.
      closeSync(openSync(this.opts.to, 'a', this.opts.mode));
      this.dropTornLine();
      this.sonic.reopen();
    }
  }

  /** The last write stopped inside a line: its start is in the file open now. */
  private midLine = false;

  /**
   * A line whose start was written before the disk filled would end at the top of the next file,
   * the rest of a line nobody can read: it is dropped (and counted) instead, so each file holds whole
   * lines but for the last of the old one.
   */
  private dropTornLine(): void {
    const sonic = this.sonic as unknown as { _writing: boolean; _writingBuf: Buffer | string; _len: number };
    if (!this.midLine || sonic._writing || typeof sonic._writingBuf === 'string') return;
    const nl = sonic._writingBuf.indexOf(10);
    if (nl < 0) return;
    sonic._writingBuf = sonic._writingBuf.subarray(nl + 1);
    sonic._len -= nl + 1;
    this.midLine = false;
    this.dropped++;
    this.onDrop?.();
  }

  /** Waits until the file is open (or fails with why it cannot be). */
  ready(): Promise<void> {
    if ((this.sonic as unknown as { fd: number }).fd >= 0) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.sonic.once('error', onError);
      this.sonic.once('ready', () => {
        this.sonic.off('error', onError);
        resolve();
      });
    });
  }

  /** Best effort: write what is pending now, without waiting for a reader that does not read. */
  flushNow(): void {
    this.exiting = true;
    try {
      this.flushPending();
      if ((this.sonic as unknown as { fd: number }).fd >= 0) this.sonic.flushSync();
    } catch {
      // EAGAIN from a stalled reader, or a closed fd: what is left is lost.
    }
  }

  /**
   * Lines handed over and not written yet: those waiting for a reader or for a write that failed (a full
   * disk), a line written in part counted as one. What `end` could not write is lost with the process.
   */
  unwrittenLines(): number {
    const sonic = this.sonic as unknown as { _writingBuf: Buffer | string; _bufs: Array<Buffer[] | Buffer | string> };
    const newlines = (b: Buffer | string): number => {
      if (typeof b === 'string') return b.split('\n').length - 1;
      let n = 0;
      for (let i = b.indexOf(10); i >= 0; i = b.indexOf(10, i + 1)) n++;
      return n;
    };
    let n = this.lines + newlines(sonic._writingBuf ?? '');
    for (const chunk of sonic._bufs ?? []) for (const b of Array.isArray(chunk) ? chunk : [chunk]) n += newlines(b);
    return n;
  }

  /** Lines `end` could not write (a full disk, a reader that stopped): lost. */
  lostAtEnd = 0;

  /** Flush what the reader takes and close the file; `lostAtEnd` counts the lines it could not write. */
  end(): Promise<void> {
    process.off('exit', this.onExit);
    clearTimeout(this.retryTimer);
    return new Promise((resolve) => {
      if ((this.sonic as unknown as { destroyed: boolean }).destroyed) return resolve();
      const giveUp = (): void => {
        this.exiting = true;
        this.lostAtEnd = this.unwrittenLines();
        if (!(this.sonic as unknown as { destroyed: boolean }).destroyed) this.sonic.destroy();
        resolve();
      };
      this.flushPending();
      this.sonic.once('close', () => resolve());
      // A write that fails now (a full disk) is not tried again: what it held is lost.
      this.sonic.once('error', giveUp);
      // A reader that stopped reading must not hold the caller: give up after a while.
      setTimeout(giveUp, 1000).unref();
      this.sonic.end();
    });
  }
}

export interface LogStreamOptions extends TextOptions {
  format: 'text' | 'json';
}

/**
 * The main log's output: text lines (time first) or pino's JSON lines, to a
 * bounded `Destination`.
 */
export class LogStream {
  private readonly pinos = new Map<string, Pino>();
  private readonly root?: Pino;
  private readonly colors = new Map<string, (typeof PALETTE)[number]>();
  private reported = 0;
  /** Set by the logger: wakes its timer up (when it sleeps), which reports drops. */
  onFirstDrop?: () => void;

  constructor(
    readonly dest: Destination,
    private readonly opts: LogStreamOptions,
  ) {
    if (opts.format === 'json') {
      const { pino, stdTimeFunctions } = pinoModule();
      this.root = pino(
        { level: 'debug', base: undefined, timestamp: stdTimeFunctions.isoTime, formatters: { level: (label) => ({ level: label }) } },
        // pino's lines join the destination's chunk of the turn (SonicBoom takes bytes only).
        { write: (line: string) => this.put(line) },
      );
    }
    dest.onDrop = () => this.onFirstDrop?.(); // the logger's timer starts when it is not running
  }

  write(level: Emitting, actor: string, event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.root) {
      let p = this.pinos.get(actor);
      if (!p) {
        p = this.root.child({ actor });
        if (this.pinos.size < 1000) this.pinos.set(actor, p);
      }
      p[level]({ event, ...fields }, msg);
    } else {
      this.put(textLine({ time: new Date().toISOString(), level, actor, msg }, { ...this.opts, time: true }, this.colors));
    }
  }

  /** Set while `render` runs: the line is kept here, not written. */
  private capture?: { line: string };

  private put(line: string): void {
    if (this.capture) this.capture.line = line;
    else this.dest.write(line);
  }

  get format(): 'text' | 'json' {
    return this.opts.format;
  }

  /** The line `write` would write now, not written. */
  render(level: Emitting, actor: string, event: string, msg: string, fields?: Record<string, unknown>): string {
    const into = (this.capture = { line: '' });
    try {
      this.write(level, actor, event, msg, fields);
    } finally {
      this.capture = undefined;
    }
    return into.line;
  }

  /** Lines dropped since the last call. */
  takeDropped(): number {
    const n = this.dest.dropped - this.reported;
    this.reported = this.dest.dropped;
    return n;
  }
}

/** Logs nothing (defined last: it needs the classes above). */
export const silentLogger = new Logger('-', () => {}, 'silent');

/** The methods the actors call on a logger: a pino, winston or console logger lacks some (`repeated`, `child(actor)`). */
const LOGGER_METHODS = ['child', 'enabled', 'repeated', 'budgeted', 'debug', 'info', 'warn', 'error', 'flush', 'close'] as const;

/**
 * What is wrong with a `logger` option given to the library, if anything: it must be this file's
 * `Logger`. Unchecked, a pino or console logger failed at the first line the actor wrote, inside
 * an action (`context.logger.repeated is not a function`), far from the call that passed it.
 */
export function badLogger(v: unknown): string | undefined {
  if (v === undefined || v instanceof Logger) return undefined;
  const how = `pass new Logger(actor, textSink(process.stderr), level) (or jsonSink(...) for JSON lines), both exported by revproxy`;
  if (typeof v === 'function') return `logger must be a Logger, not a function: a function taking log records is a sink, passed as new Logger(actor, sink, level); ${how}`;
  if (typeof v !== 'object' || v === null) return `logger must be a Logger, got ${v === null ? 'null' : typeof v}: ${how}`;
  const missing = LOGGER_METHODS.filter((m) => typeof (v as Record<string, unknown>)[m] !== 'function');
  if (missing.length === 0) return undefined;
  return `logger must be a revproxy Logger; this one has no ${missing.map((m) => `${m}()`).join(', ')} (a pino, winston or console logger?): ${how}`;
}
