/**
 * The inspector on the command line: `--inspect [PORT]` and `--inspect-log FILE`
 * for the commands that run actors, and `revproxy inspect FILE`, which serves
 * the same page over a recorded log.
 */
import { Command, Option } from 'commander';
import { jsonSink, type Logger } from '../actors/logger.js';
import { serveRecorded, startInspector, type Inspector } from '../inspector/index.js';
import { MIN_TOKEN_LENGTH } from '../inspector/guard.js';
import { checkGiven, FileError, parsePort, UsageError } from './common.js';

export interface InspectFlags {
  /** true: a free port; a number: that port. */
  inspect?: number | true;
  inspectLog?: string;
  /** The inspector's HTTP Basic password. */
  inspectToken?: string;
}

export const inspectOptions = (): Option[] => [
  new Option('--inspect [port]', 'serve the state-machine inspector and /metrics on 127.0.0.1 (no port: a free one)').argParser((v) => parsePort(v, '--inspect port')),
  new Option('--inspect-log <file>', 'write every inspection event to FILE as NDJSON (replay with: revproxy inspect FILE)'),
  new Option('--inspect-token <secret>', "the inspector's password (HTTP Basic, any user name): its page, /metrics and its drain/enable buttons then need it").env('REVPROXY_INSPECT_TOKEN'),
];

/** The inspector token as given, or a usage error when it is too short to be a secret. */
export function checkInspectToken(token: unknown): string {
  const t = String(token);
  if (t.length < MIN_TOKEN_LENGTH) throw new UsageError(`--inspect-token (or REVPROXY_INSPECT_TOKEN) must be at least ${MIN_TOKEN_LENGTH} characters: a short secret is easy to guess`);
  return t;
}

/** What the actors get when inspected; empty when not, so nothing is attached. */
export interface Attach {
  inspect?: Inspector['inspect'];
  observer?: Inspector['observer'];
}

export interface Inspection {
  attach: Attach;
  url?: string;
  /** The inspection log's file, when one is written. */
  logFile?: string;
  /** With a page being served: keep serving until Ctrl-C (for commands that would otherwise exit). */
  hold(): Promise<void>;
  /** Open the inspection log again (after logrotate moved it); throws why it cannot be. */
  reopen(): void;
  close(): Promise<void>;
}

const none: Inspection = { attach: {}, hold: async () => {}, reopen: () => {}, close: async () => {} };

/**
 * A line about the inspector, on stderr whatever the log level (its URL is what `--inspect 0`
 * leaves you to find): as text, or with `--log-format json` one object shaped like the log's
 * records, so that every line is JSON.
 */
function say(format: 'text' | 'json' | undefined, actor: string, event: string, msg: string, fields: Record<string, unknown> = {}): void {
  if (format === 'json') jsonSink(process.stderr)({ level: 'info', time: new Date().toISOString(), actor, event, ...fields, msg });
  else process.stderr.write(`${msg}\n`);
}

/** Start the inspector when the flags ask for it, and say where it is. `logger` gets its refusals of actions. */
export async function startInspection(flags: InspectFlags & { logFormat?: 'text' | 'json' }, title: string, logger?: Logger): Promise<Inspection> {
  if (flags.inspect === undefined && !flags.inspectLog) return none;
  const port = flags.inspect === undefined ? undefined : flags.inspect === true ? 0 : flags.inspect;
  const token = flags.inspectToken === undefined ? undefined : checkInspectToken(flags.inspectToken);
  const insp = await startInspector({ port, logFile: flags.inspectLog, title, token, logger });
  const format = flags.logFormat;
  if (insp.url) {
    say(format, title, 'inspector', `Inspector for ${title} on ${insp.url} (metrics at ${insp.url}metrics)${token ? '; sign in with any user name and the inspector token' : ''}`, {
      url: insp.url, metrics: `${insp.url}metrics`, token: Boolean(token),
    });
  }
  if (flags.inspectLog) say(format, title, 'inspect_log', `Writing inspection events to ${flags.inspectLog}`, { file: flags.inspectLog });
  return {
    attach: { inspect: insp.inspect, observer: insp.observer },
    url: insp.url,
    logFile: flags.inspectLog,
    reopen: () => insp.reopen(),
    async hold() {
      if (!insp.url) return;
      await untilSignalAfter(() => say(format, title, 'inspector_holding', `Inspector still serving on ${insp.url}; Ctrl-C exits.`, { url: insp.url }));
    },
    close: () => insp.close(),
  };
}

/**
 * Print the line that says Ctrl-C ends the wait (`announce`), then wait for SIGINT or SIGTERM.
 * Listening first: a Ctrl-C sent as soon as the line was read ended the process by the signal.
 */
export function untilSignalAfter(announce: () => void): Promise<void> {
  const stopped = new Promise<void>((resolve) => {
    const done = (): void => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
  announce();
  return stopped;
}

export function inspectCommand(setExit: (code: number) => void): Command {
  return new Command('inspect')
    .description('serve the inspector page over a recorded inspection log (written with --inspect-log)')
    .argument('<file>', 'an NDJSON inspection log')
    .addOption(new Option('-p, --port <port>', 'port to serve the page on, on 127.0.0.1 (0 picks a free one)').default(0).argParser((v) => parsePort(v)))
    .addHelpText('after', '\nExample:\n  revproxy proxy --inspect-log run.ndjson   # later:\n  revproxy inspect run.ndjson --port 8080')
    .action(async (file: string, o: { port: number }) => {
      checkGiven(file, 'inspection log', 'write one with --inspect-log FILE (revproxy proxy --inspect-log run.ndjson), then give that file');
      const page = await serveRecorded(file, o.port);
      if (page.records === 0) {
        await page.close();
        throw new FileError(`'${file}' holds no inspection records (${page.bad ? `${page.bad} unreadable line(s)` : 'it is empty'}); give a log written with --inspect-log FILE`);
      }
      await untilSignalAfter(() => process.stdout.write(`Serving ${page.records} recorded inspection events from ${file} on ${page.url}${page.bad ? ` (${page.bad} unreadable lines skipped)` : ''}; Ctrl-C exits.\n`));
      await page.close();
      setExit(0);
    });
}
