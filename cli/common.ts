/** Helpers shared by the CLI's commands: options, loggers, endpoints, packet files. */
import { isIP } from 'node:net';
import { InvalidArgumentError, Option } from 'commander';
import { Destination, jsonSink, LEVELS, Logger, LogStream, textSink, type Level, type LogSink } from '../actors/logger.js';
import type { Endpoint } from '../actors/server.js';
import { badDialAddress, bracketHint, DEFAULT_PROXY_PORT, hostPort, numericHostProblem, repeatedEndpoint, unbracket } from '../transport/address.js';
import { UsageError } from '../transport/errors.js';
import { badSecretText, tlsFromFlags } from '../config/files.js';
import type { TlsWarning } from '../transport/tls.js';
import { listenAddress, listenHostProblem } from '../config/proxy.js';
import { nearest } from '../config/schema.js';
import { isRegistryUrl, parseRegistryUrl, REGISTRY_DEFAULTS, type RegistryOptions } from '../registry/options.js';

// The files a command is given are read by config/files.ts (the config file names the same
// kinds); the commands take them, and the two errors, from here.
export { FileError, UsageError } from '../transport/errors.js';
export { checkGiven, loadedCerts, loadPackets, loadTokens, PKT_HINT, readGiven, tlsFromFlags, whyUnreadable, type TlsFlags } from '../config/files.js';

/** The old system's flags, single-dash as its programs spelt them (`-port 2100`): the only ones taken with one dash. */
export const OLD_FLAGS: readonly string[] = ['port', 'id', 'pp', 'listen', 'revproc', 'pkt'];

/** What `normaliseArgv` needs to know of the options: which take a value, which exist. */
export interface FlagTable {
  /** Whether the argument after this flag is its value (`--token <secret>`). */
  takesValue(flag: string): boolean;
  /** Whether this `--flag` is an option of some command. */
  known(flag: string): boolean;
}

/**
 * The seed's command lines use single-dash long flags (`-port 2100`). Turn
 * those six (`-port`, `-port=2100`) into `--port` so one parser handles both
 * spellings. Nothing else is rewritten: never the value of an option
 * (`--token -abcdefghij` keeps its secret: an argument right after an option
 * that takes a value is left as it is), and no other single-dash word; one
 * that is this project's flag with one dash (`-window`) is a usage error that
 * names the right spelling. After `--` nothing is touched.
 */
export function normaliseArgv(argv: string[], flags: FlagTable = { takesValue: () => false, known: () => false }): string[] {
  const out: string[] = [];
  for (const [i, a] of argv.entries()) {
    if (a === '--') return [...out, ...argv.slice(i)];
    const prev = out[out.length - 1];
    const m = /^-([a-z][a-z-]+)(=.*)?$/.exec(a);
    if (!m || (prev !== undefined && !prev.includes('=') && flags.takesValue(prev))) out.push(a);
    else if (OLD_FLAGS.includes(m[1]!)) out.push(`-${a}`);
    else if (flags.known(`--${m[1]}`)) {
      throw new UsageError(`unknown option '${a}': one dash is for the old system's flags only (${OLD_FLAGS.map((f) => `-${f}`).join(', ')}); write --${m[1]}`);
    } else if (m[1]!.length > 2 && nearest(m[1]!, OLD_FLAGS)) {
      // A misspelt old flag: commander took `-prot` for -p with the value 'rot', and named no flag for `-revprox`.
      throw new UsageError(`unknown option '${a}' (did you mean -${nearest(m[1]!, OLD_FLAGS)}?)`);
    } else out.push(a);
  }
  return out;
}

/**
 * The secrets a command was given (every option written `<secret>`: --token, --admin-token,
 * --inspect-token, --registry-password, each also an environment variable), checked by one rule on
 * every command (`badSecretText`): an empty one is refused, not taken as none - a blank
 * `REVPROXY_TOKEN=` line in an EnvironmentFile is a secret that did not arrive, and as none it made
 * a server register without one, saying nothing (the proxy refused it as too short) - and so is
 * one with white space at an end, naming the variable or the flag it came from. The value is
 * never shown. A usage error (exit 2).
 */
export function checkSecrets(cmd: { options: readonly Option[]; getOptionValue(key: string): unknown; getOptionValueSource(key: string): string | undefined }): void {
  for (const o of cmd.options) {
    if (!o.flags.includes('<secret>')) continue;
    const value = cmd.getOptionValue(o.attributeName());
    if (typeof value !== 'string') continue;
    const bad = badSecretText(value);
    if (!bad) continue;
    const env = cmd.getOptionValueSource(o.attributeName()) === 'env' ? o.envVar : undefined;
    if (bad !== 'is empty') throw new UsageError(`${env ?? o.long} ${bad}`);
    throw new UsageError(env
      ? `${env} is set but empty (a blank line in an EnvironmentFile or .env file, a secret with no value?): give the secret, or unset the variable (remove the line) to go without one`
      : `${o.long} is empty (an unset shell variable, as --token "$TOKEN"?): give the secret, or leave ${o.long} out to go without one`);
  }
}

/** `--log-level`, `--log-format`, `--no-color`; `level` is the default level (the demo prints per-request lines, at debug). */
export const logOptions = (level: Level = 'info'): Option[] => [
  new Option('--log-level <level>', 'least severe log level printed (debug adds a line per request, with payloads)').choices(LEVELS).default(level),
  new Option('--log-format <format>', 'text for people, json for machines (one object per line)').choices(['text', 'json']).default('text'),
  new Option('--no-color', 'plain text even on a terminal'),
];

/** `--wire frames|json`: which wire a server or client speaks to the proxy. */
export const wireOption = (json: string): Option =>
  new Option('--wire <wire>', `frames (MessagePack, default) or json: ${json}`).choices(['frames', 'json']).default('frames');

export interface LogFlags {
  logLevel: Level;
  logFormat: 'text' | 'json';
  color: boolean;
}

/** Synchronous records to stdout, as the demo prints them (no time: the old system's look). */
export function makeSink(flags: LogFlags, width = 0): LogSink {
  if (flags.logFormat === 'json') return jsonSink(process.stdout);
  return textSink(process.stdout, { color: useColor(flags.color), width });
}

/**
 * Whether text for `stream` (stdout) is coloured: `on` (not --no-color) and a terminal, unless NO_COLOR
 * is set; FORCE_COLOR (1, 2, 3, true or empty, as Node reads it; 0 or false is no colour) colours a
 * pipe too, as CI logs ask of the tools they run, and wins over NO_COLOR. `--no-color` always wins.
 */
export function useColor(on: boolean, stream: { isTTY?: boolean } = process.stdout): boolean {
  const force = process.env.FORCE_COLOR;
  if (!on) return false;
  if (force !== undefined) return ['', '1', '2', '3', 'true'].includes(force);
  return stream.isTTY === true && !process.env.NO_COLOR;
}

/** The daemon whose log is JSON lines, if this command runs one (`logStartFailuresTo`). */
let jsonActor: string | undefined;

/**
 * A daemon's log, once made: when its lines are JSON, a failure to start (a port in use, a file that
 * cannot be read), or any failure that ends it, is one of them, `failed` at `error` (`startFailureLog`), where it was a plain
 * `revproxy: ...` line among them that a machine reading JSON lines could not parse. Text logs keep
 * the plain line.
 */
export function logStartFailuresTo(actor: string, format: 'text' | 'json'): void {
  jsonActor = format === 'json' ? actor : undefined;
}

/** A log for that line (the daemon's own is closed by then), or undefined for the plain line. */
export function startFailureLog(): Logger | undefined {
  return jsonActor === undefined ? undefined : new Logger(jsonActor, jsonSink(process.stdout), 'error');
}

/**
 * The log of a long-running command: text lines that start with their time,
 * or JSON lines (pino), written asynchronously to stdout with a bounded
 * backlog (a reader that stalls loses lines, counted, never memory).
 */
export function makeLogger(actor: string, flags: LogFlags, width = 0): Logger {
  if (flags.logLevel === 'silent') return new Logger(actor, () => {}, 'silent');
  const out = new LogStream(new Destination({ to: '-' }), { format: flags.logFormat, color: useColor(flags.color), width });
  return new Logger(actor, out, flags.logLevel);
}

export function parsePort(value: string, what = 'port'): number {
  if (!/^\d{1,5}$/.test(value) || Number(value) > 65535) throw new InvalidArgumentError(`${what} must be a number from 0 to 65535, got '${value}'`);
  return Number(value);
}

/**
 * `--host`: an address to listen on, an IPv6 one bracketed or not (`[::1]`, `::1`); an empty one (an
 * unset variable) is refused, not taken as every address, and so is one with a port in it (`::1:80`
 * too), which Node took for a host name that does not resolve, and one that is no address (spaces
 * around it, a bracket alone: `badListenHost`). `portFlag` is the command's flag for the port.
 */
export function hostParser(portFlag: string): (value: string) => string {
  return (value) => {
    const bad = listenHostProblem(value, portFlag);
    if (bad) throw new InvalidArgumentError(`--host takes an address ${bad}`);
    return listenAddress(value);
  };
}

export function parseIntOption(name: string, min: number, max?: number) {
  return (value: string): number => {
    // `--timeout 5s`: the unit is the one named beside the option (`option '--timeout <ms>'`), never written.
    const unit = /^\d+(?:\.\d+)?\s*[a-z]+$/i.test(value) ? ' without a unit' : '';
    if (!/^\d+$/.test(value) || Number(value) < min) throw new InvalidArgumentError(`${name} must be a whole number of at least ${min}${unit}, got '${value}'`);
    if (max !== undefined && Number(value) > max) throw new InvalidArgumentError(`${name} must be at most ${max}, got '${value}'`);
    return Number(value);
  };
}

/**
 * An option whose value is a comma-separated list (`--ready-policies 111,222`): each entry
 * trimmed and checked by `bad` (a sentence when it is not one of `what`), each kept once.
 */
export function parseList(flag: string, what: string, example: string, bad: (entry: string) => string | undefined): (value: string) => string[] {
  return (value) => {
    const entries = value.split(',').map((e) => e.trim());
    for (const e of entries) {
      const why = bad(e);
      if (why) throw new InvalidArgumentError(`${flag} takes ${what} separated by commas (e.g. ${example}): ${why}${e === '' ? ` in '${value}'` : ''}`);
    }
    return [...new Set(entries)];
  };
}

/**
 * A comma-separated list of endpoints: `2100,2200` or `a:2100,b:2100`; one given twice, however
 * written (`2100,127.0.0.1:2100`: `endpointKey`), is refused: a server registered with that proxy
 * twice and was refused its own id every few seconds.
 */
export function parseEndpoints(value: string): Endpoint[] {
  const parts = value.split(',').map((p) => p.trim()).filter(Boolean);
  if (parts.length === 0) throw new InvalidArgumentError('give at least one PORT or HOST:PORT');
  const eps = parts.map(parseEndpoint);
  const twice = repeatedEndpoint(eps);
  if (twice) {
    const [a, b] = [parts[twice.first]!, parts[twice.again]!];
    throw new InvalidArgumentError(`'${value}' lists the reverse proxy at ${twice.key} twice${a === b ? '' : ` (as '${a}' and '${b}')`}: list each proxy once`);
  }
  return eps;
}

/** `2100`, `host:2100` or `[::1]:2100`. */
export function parseEndpoint(value: string): Endpoint {
  // A registry where an address is asked: it was "the reverse proxy port must be a number ..., got 'etcd://...'".
  if (isRegistryUrl(value)) throw new InvalidArgumentError(`'${value}' is a registry: this command dials addresses; give PORT or HOST:PORT (the fleet's proxies: etcdctl get --prefix --keys-only /revproxy/proxies/)`);
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(value);
  const v6 = m ? undefined : bracketHint(value);
  if (v6) throw new InvalidArgumentError(`'${value}' is not PORT nor HOST:PORT: ${v6}`);
  if (!m && !/^\d+$/.test(value) && (isIP(unbracket(value)) !== 0 || /^[a-z][\w.-]*$/i.test(value))) throw new InvalidArgumentError(`'${value}' has no port: give HOST:PORT (${hostPort(unbracket(value), DEFAULT_PROXY_PORT)})`);
  const ep = m ? { host: m[1] ?? m[2]!, port: parsePort(m[3]!, `port in '${value}'`) } : { host: '127.0.0.1', port: parsePort(value, 'the reverse proxy port') };
  if (ep.port === 0) throw new InvalidArgumentError(`'${value}': port 0 cannot be dialled; give the port the reverse proxy listens on`);
  const numeric = numericHostProblem(ep.host);
  if (numeric) throw new InvalidArgumentError(`'${value}': ${numeric}`);
  return ep;
}

export const tlsOptions = (): Option[] => [
  new Option('--tls-cert <file>', 'PEM certificate this side presents (with --tls-key): turns on TLS'),
  new Option('--tls-key <file>', 'PEM private key of --tls-cert'),
  new Option('--tls-ca <file>', "PEM CA that verifies the other side's certificate; on a listener, peers must present one it signed (mutual TLS)"),
  new Option('--tls-crl <file>', 'PEM CRLs of the --tls-ca CAs (each needs its own): a peer whose certificate one revokes is refused; re-read on SIGHUP'),
];

/** A warn line for each of `warnings` (transport/tls.ts `tlsWarnings`): at start and at each reload, by the proxy and a server. */
export function warnTls(logger: Logger, warnings: readonly TlsWarning[]): void {
  for (const w of warnings) logger.warn(w.event, w.message, { setting: w.setting });
}

/** `--registry etcd://...` and etcd's own options, on server, proxy and client. */
/**
 * `--advertise`: the address peers dial, as `badDialAddress` takes it (an IPv6 one bare or in brackets,
 * kept without them); `portFlag` is the command's flag for the port, which goes into the entry apart.
 */
export function advertiseParser(portFlag: string): (value: string) => string {
  return (value) => {
    const bad = badDialAddress(value, `give the port with ${portFlag}`);
    if (bad) throw new InvalidArgumentError(`--advertise takes the address peers dial to reach this machine, without a port, got '${value}': ${bad}`);
    return unbracket(value);
  };
}

export const registryOptions = (opts: { ttl?: boolean; advertise?: { help: string; portFlag: string } } = {}): Option[] => [
  new Option('--registry <url>', 'the registry: etcd://HOST:PORT (a comma-separated list for several etcd members; etcds:// for TLS)').argParser((v) => {
    try {
      parseRegistryUrl(v);
    } catch (err) {
      throw new InvalidArgumentError((err as Error).message);
    }
    return v;
  }),
  new Option('--registry-prefix <prefix>', `the key prefix the fleet shares in etcd (default: ${REGISTRY_DEFAULTS.prefix})`),
  ...(opts.ttl ? [new Option('--registry-ttl <s>', `lease TTL in seconds: gone from etcd this long after dying (default: ${REGISTRY_DEFAULTS.ttlSeconds})`).argParser(parseIntOption('--registry-ttl', 1))] : []),
  ...(opts.advertise ? [new Option('--advertise <host>', opts.advertise.help).argParser(advertiseParser(opts.advertise.portFlag))] : []),
  new Option('--registry-user <name>', "etcd's user, when etcd has authentication on"),
  new Option('--registry-password <secret>', "that user's password (prefer the environment variable)").env('REVPROXY_REGISTRY_PASSWORD'),
  new Option('--registry-ca <file>', "PEM CA that signed etcd's certificate (TLS to etcd)"),
  new Option('--registry-cert <file>', 'PEM client certificate for etcd (with --registry-key), when etcd asks for one'),
  new Option('--registry-key <file>', 'PEM private key of --registry-cert'),
];

export interface RegistryFlags {
  registry?: string;
  registryPrefix?: string;
  registryTtl?: number;
  advertise?: string;
  registryUser?: string;
  registryPassword?: string;
  registryCa?: string;
  registryCert?: string;
  registryKey?: string;
}

/** The flags of etcd's TLS files, as the errors and warnings name them. */
export const REGISTRY_FLAGS = { cert: '--registry-cert', key: '--registry-key', ca: '--registry-ca' };

/** The registry the flags name, or undefined without --registry. */
export function registryFromFlags(o: RegistryFlags): (RegistryOptions & { advertise?: string }) | undefined {
  if (o.registry === undefined) {
    const stray = (['registryPrefix', 'registryTtl', 'advertise', 'registryUser', 'registryCa', 'registryCert', 'registryKey'] as const).find((k) => o[k] !== undefined);
    if (stray) throw new UsageError(`--${stray.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} goes with --registry etcd://HOST:PORT`);
    return undefined;
  }
  const { endpoints, tls } = parseRegistryUrl(o.registry);
  if ((o.registryCert === undefined) !== (o.registryKey === undefined)) throw new UsageError('--registry-cert and --registry-key go together: give both or neither');
  // Presented to etcd only, when it asks for one (--client-cert-auth): not held to clientAuth here (warned of: tlsWarnings).
  const material = tlsFromFlags({ tlsCert: o.registryCert, tlsKey: o.registryKey, tlsCa: o.registryCa }, REGISTRY_FLAGS);
  return {
    endpoints,
    prefix: o.registryPrefix,
    ttlSeconds: o.registryTtl,
    advertise: o.advertise,
    username: o.registryUser,
    password: o.registryPassword,
    tls: material ?? (tls ? {} : undefined),
  };
}

/**
 * SIGUSR1 would open Node's debugger on 127.0.0.1:9229, where anyone on the machine could run
 * code in this process, and SIGUSR2 would end it at once, without a drain. Operators send them
 * from habit (nginx reopens its logs on USR1, HAProxy reloads on USR2): each is logged with what
 * to send instead, and ignored. A command with nothing to reload (the server) adds SIGHUP, which
 * would end it without a drain too. Returns the undo.
 */
export function ignoreUserSignals(logger: Logger, instead: string, signals: readonly NodeJS.Signals[] = ['SIGUSR1', 'SIGUSR2']): () => void {
  const handlers = signals.map((signal) => {
    const f = (): void => logger.warn('signal_ignored', `${signal} ignored: ${instead}`, { signal });
    process.on(signal, f);
    return [signal, f] as const;
  });
  return () => {
    for (const [signal, f] of handlers) process.off(signal, f);
  };
}

/** Node's warnings that are news for whoever wrote the code, not for whoever runs it: logged at `info`. */
const DEVELOPERS_WARNINGS = new Set(['DeprecationWarning', 'ExperimentalWarning']);

/**
 * Node's process warnings as lines of the command's log, where Node prints them raw on stderr: a
 * deprecation in a library under the registry (grpc-js's `DEP0123` for `etcds://` given an IP
 * address), an EventEmitter leak in a handler module. Printed raw they are two lines that are not
 * the log's format (`(node:4242) [DEP0123] DeprecationWarning: ...` and Node's hint to rerun with
 * `--trace-deprecation`), which a collector parsing JSON lines cannot read. Each is an `info`
 * (a deprecation, an experimental feature) or `warn` line, `node_warning`, once, then counted as a
 * repeated condition; with `--trace-warnings` (or `--trace-deprecation`) its `stack` is a field. A
 * silent logger leaves Node's own printing in place. Returns the undo, which first lets the warnings
 * already emitted reach the log: Node hands a warning to its listeners on the next tick, and one
 * a command's last lines caused (Node's colour check, `FORCE_COLOR` beside `NO_COLOR`, at the
 * client's first coloured line, its last) came after the undo, raw on stderr.
 */
export function logProcessWarnings(logger: Logger): () => Promise<void> {
  if (logger.level === 'silent') return async () => {};
  const nodes = process.listeners('warning');
  for (const f of nodes) process.off('warning', f);
  const onWarning = (w: Error & { code?: string }): void => {
    const level = DEVELOPERS_WARNINGS.has(w.name) ? 'info' : 'warn';
    const what = `Node warning: ${w.code ? `[${w.code}] ` : ''}${w.name}: ${w.message}`;
    const trace = (process as { traceProcessWarnings?: boolean }).traceProcessWarnings || (w.name === 'DeprecationWarning' && process.traceDeprecation);
    const fields = { name: w.name, ...(w.code ? { code: w.code } : {}), ...(trace && w.stack ? { stack: w.stack } : {}) };
    logger.repeated(level, 'node_warning', what, 1, (n, span) => (span ? `${what} (${n} time(s) ${span})` : what), fields);
  };
  process.on('warning', onWarning);
  return async () => {
    // After the ticks queued so far, those of the warnings emitted (process.emitWarning's).
    await new Promise<void>((done) => process.nextTick(done));
    process.off('warning', onWarning);
    for (const f of nodes) process.on('warning', f);
  };
}

/** What cli/early-signals.mjs keeps on globalThis: the signals caught before a command handled them, in order. */
interface EarlySignals {
  received: NodeJS.Signals[];
  listeners: Map<NodeJS.Signals, () => void>;
}

const early = (): EarlySignals | undefined => (globalThis as Record<symbol, EarlySignals | undefined>)[Symbol.for('revproxy.earlySignals')];

/**
 * The signals of `which` caught before the caller installed its own handlers (cli/early-signals.mjs),
 * in the order they came; from now on they are the caller's (install its handlers first). Empty when
 * the CLI did not start through cli/revproxy.js.
 */
export function takeEarlySignals(which: readonly NodeJS.Signals[]): NodeJS.Signals[] {
  const e = early();
  if (!e) return [];
  for (const signal of which) {
    const f = e.listeners.get(signal);
    if (f) process.off(signal, f);
    e.listeners.delete(signal);
  }
  const taken = e.received.filter((s) => which.includes(s));
  e.received = e.received.filter((s) => !which.includes(s));
  return taken;
}

/**
 * Node's defaults back for the signals no command took, and each that came meanwhile sent again, so it
 * does what it did before they were caught (a SIGTERM to `revproxy client` ends it), for commands that
 * do not handle them, as they start. Once a command is done, those still caught are let go unsent
 * (`resend: false`): what it was asked to stop has stopped, and its exit status says how.
 */
export function releaseEarlySignals({ resend = true } = {}): void {
  const e = early();
  if (!e) return;
  const pending = takeEarlySignals([...e.listeners.keys()]);
  if (resend) for (const signal of new Set(pending)) process.kill(process.pid, signal);
}

/**
 * What a proxy or server running as PID 1 (a container's first process, `docker run` without
 * `--init`, a pod without `shareProcessNamespace`) says at start. The kernel hands PID 1 every
 * orphaned process of its namespace - the children of an exec probe or of `docker exec` that
 * outlive their shell - for it to reap, and Node reaps only the children it started itself: they
 * stay zombies for the container's life, each holding a process slot (a probe: 20 of 20 after a
 * few exec calls). The Node Docker best practices' advice: an init as PID 1.
 */
export const PID1_WARNING = 'Running as PID 1 (a container\'s first process): orphaned processes this namespace hands to PID 1 (the children of exec probes and of `docker exec` that outlive them) are not reaped, since Node reaps only its own children, and stay zombies; run it under an init: `docker run --init`, tini as the entrypoint (ENTRYPOINT ["tini", "--", ...]), or Kubernetes\' `shareProcessNamespace: true` (the pause container reaps them)';

/** The `pid1` warn line, when this process is PID 1 (`PID1_WARNING`): at start, by the proxy and a server. */
export function warnIfPid1(logger: Logger, pid = process.pid): void {
  if (pid === 1) logger.warn('pid1', PID1_WARNING, { pid });
}

/** The signals that drain (a second one stops at once). */
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGQUIT'] as const;

/** The same stop signal again within this long is a copy of the first (a process group's), not a second (ms). */
export const SAME_SIGNAL_MS = 100;

/**
 * Resolves when the actor stops; SIGINT, SIGTERM and SIGQUIT (nginx's graceful
 * stop, the official nginx image's STOPSIGNAL: left to Node it ended the
 * process at once, core dump and all) stop it. Rejects with the error when it
 * stopped on one thrown inside it (a bug): the command then
 * fails (exit 1, the error on stderr) instead of exiting 0 - and XState does
 * not stop the children of an actor that failed, so its listeners and sockets
 * stay open: `cli/revproxy.js` ends a failed command that does not end by itself.
 *
 * The first signal drains. A second (Ctrl-C again, `kill` again) stops at once
 * and still cleanly - what is in flight answered or handed back, the pid file
 * removed, the logs written - where Node's default would end the process with
 * nothing answered; a third is left to Node, which ends it there and then.
 * A copy of the first, the same signal within `SAME_SIGNAL_MS`, is not a
 * second: GNU timeout (without --foreground) sends its signal to the command
 * and then to its process group, the command included, and `timeout 60
 * revproxy server` skipped its drain ("SIGTERM again: stopping now"), its
 * handlers' calls in flight aborted; so did a script that kills a process and
 * its group.
 */
export function runUntilStopped(actor: { getSnapshot(): { status: string; error?: unknown }; send(e: { type: 'STOP' }): void; subscribe(o: { complete?: () => void; next?: () => void; error?: (e: unknown) => void }): unknown }, stop: () => Promise<void>, logger: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    let signals = 0;
    let first: { signal: NodeJS.Signals; at: number } | undefined;
    /** The handle's drain (its stop()), once asked for: it ends after the actor does (a proxy's registry key withdrawn, its port's connections closed). */
    let stopping: Promise<void> | undefined;
    const onSignal = (signal: NodeJS.Signals): void => {
      const now = performance.now();
      if (first && first.signal === signal && signals === 1 && now - first.at < SAME_SIGNAL_MS) {
        logger.debug('stop_copy', `${signal} again within ${Math.ceil(now - first.at)} ms: the same request to stop (a process group's copy), still draining`, { signal });
        return;
      }
      first ??= { signal, at: now };
      signals++;
      if (signals === 2) {
        logger.warn('stop_now', `${signal} again: stopping now, without waiting for the drain to end (a third ends the process at once)`, { signal });
        off();
        // The handle's stop() drains however often it is called; a STOP to a draining actor ends its drain.
        actor.send({ type: 'STOP' });
      }
      stopping = stop();
    };
    const off = (): void => {
      for (const signal of STOP_SIGNALS) process.off(signal, onSignal);
    };
    for (const signal of STOP_SIGNALS) process.on(signal, onSignal);
    // One sent while the command started (a deploy stopping what it just started) drains it now.
    for (const signal of takeEarlySignals(STOP_SIGNALS)) onSignal(signal);
    const check = (): void => {
      const snap = actor.getSnapshot();
      if (snap.status !== 'active') {
        off();
        if (snap.status === 'error') reject(snap.error instanceof Error ? snap.error : new Error(String(snap.error)));
        // Resolved once the drain is over, not only the actor: the caller's last line ("Reverse proxy stopped") came
        // before the registry's ("Withdrew this proxy from the registry"), though the key went first. `stopping` is read a
        // microtask later: a drain with nothing to wait for ends inside `stop()`, before `onSignal` has its promise, and a
        // server's exit check then ran while its etcd client still closed (`revproxy itself left it`).
        else void Promise.resolve().then(() => stopping).catch(() => undefined).then(() => resolve());
      }
    };
    actor.subscribe({ next: check, complete: check, error: check });
    check();
  });
}
