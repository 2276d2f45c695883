/**
 * Logs a person can read and a machine can parse: every line is one event
 * with a name, the seed-style sentence and its fields. `text` prints the
 * sentence (coloured per actor when on a TTY); `json` prints one object per line.
 */
import { styleText } from 'node:util';

export type Level = 'debug' | 'info' | 'warn' | 'error' | 'silent';
const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };
export const LEVELS = Object.keys(RANK) as Level[];

export interface LogRecord {
  time: string;
  level: Exclude<Level, 'silent'>;
  actor: string;
  event: string;
  msg: string;
  [field: string]: unknown;
}

export type LogSink = (rec: LogRecord) => void;

export class Logger {
  private readonly rank: number;
  constructor(
    readonly actor: string,
    private readonly sink: LogSink,
    readonly level: Level = 'info',
  ) {
    this.rank = RANK[level];
  }

  child(actor: string): Logger {
    return new Logger(actor, this.sink, this.level);
  }

  enabled(level: Exclude<Level, 'silent'>): boolean {
    return RANK[level] >= this.rank;
  }

  debug(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.rank <= 10) this.write('debug', event, msg, fields);
  }
  info(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.rank <= 20) this.write('info', event, msg, fields);
  }
  warn(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.rank <= 30) this.write('warn', event, msg, fields);
  }
  error(event: string, msg: string, fields?: Record<string, unknown>): void {
    if (this.rank <= 40) this.write('error', event, msg, fields);
  }

  private write(level: Exclude<Level, 'silent'>, event: string, msg: string, fields?: Record<string, unknown>): void {
    this.sink({ time: new Date().toISOString(), level, actor: this.actor, event, msg, ...fields });
  }
}

const PALETTE = ['cyan', 'magenta', 'yellow', 'green', 'blue', 'red'] as const;

export interface TextSinkOptions {
  color?: boolean;
  /** Pad actor names to this width so sentences line up. */
  width?: number;
  /** Print the time before each line. */
  time?: boolean;
}

/** One readable line per record: `proxy      | Received setup message ...`. */
export function textSink(out: NodeJS.WritableStream, opts: TextSinkOptions = {}): LogSink {
  const colors = new Map<string, (typeof PALETTE)[number]>();
  const width = opts.width ?? 0;
  return (rec) => {
    let prefix = rec.actor.padEnd(width);
    if (opts.color) {
      let c = colors.get(rec.actor);
      if (!c) {
        c = PALETTE[colorIndex(rec.actor)]!;
        colors.set(rec.actor, c);
      }
      prefix = styleText(c, prefix);
    }
    // One event, one line: messages from elsewhere (OpenSSL's end in a newline) are folded.
    let msg = rec.msg.includes('\n') ? rec.msg.replace(/\s*\n\s*/g, ' ').trim() : rec.msg;
    if (rec.level === 'warn') msg = opts.color ? styleText('yellow', `warning: ${msg}`) : `warning: ${msg}`;
    if (rec.level === 'error') msg = opts.color ? styleText('red', `error: ${msg}`) : `error: ${msg}`;
    const time = opts.time ? `${rec.time} ` : '';
    out.write(`${time}${prefix} | ${msg}\n`);
  };
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

/** One JSON object per line (NDJSON). */
export function jsonSink(out: NodeJS.WritableStream): LogSink {
  return (rec) => out.write(`${JSON.stringify(rec)}\n`);
}

/** Keeps records in memory: for tests. */
export function memorySink(into: LogRecord[]): LogSink {
  return (rec) => into.push(rec);
}

export const silentLogger = new Logger('-', () => {}, 'silent');
