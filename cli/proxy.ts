/**
 * `revproxy proxy`: the flags (made from the config table in
 * config/proxy.ts), `--config FILE` and `--check`, the logs and the access
 * log, the admin endpoint, SIGHUP (reload the config, reopen the access
 * and inspection logs) and SIGUSR1 (reopen those logs only). SIGTERM, SIGINT and SIGQUIT drain.
 */
import { REVISION, VERSION } from './build.js';
import { accessSync, constants, lstatSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { setTimeout as wait } from 'node:timers/promises';
import { dirname, resolve as resolvePath } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { startProxy, type ProxyHandle } from '../actors/index.js';
import { logStopped } from '../actors/children.js';
import { Destination, fmt, Logger, LogStream, LEVELS, LOG_BUFFER_BYTES, SUMMARY_INTERVAL_MS } from '../actors/logger.js';
import { DEFAULT_LISTEN_HOST, OLD_SERVER_DEFAULTS, proxyBudgetNote, proxyConnectionsNote, proxyInsecureNote, hasSecrets, resolveOptions } from '../actors/proxy-options.js';
import { badTrustedSource, fileLimitWarning } from '../actors/port-limits.js';
import { ACCESS_LOG_HOLD, AccessLog, accessLogHold, combineObservers } from '../admin/access-log.js';
import { ConnStats } from '../admin/conn-stats.js';
import { Readiness, startAdmin, type AdminServer, type NotReady } from '../admin/server.js';
import type { RegistryStatus } from '../registry/events.js';
import {
  anchorIssues, badPolicy, changes, UPSTREAM_DOCS, checkListenNames, ConfigError, flagOfKey, flagsNamedOtherwise, flagWords, hostPortProblem, keyOfFlag, METRICS_DEPARTED_DOC, PROXY_PROTOCOL_FROM_DOC, RETRY_ON_DOC, checkRuntime, defaultOf, loadConfigFile, logFileIssue, maxOf, merge, NUMBERS, overridden, parseHostPort, RuntimeProblems, setsNothing, setsNothingWarning, toRuntime,
  assertWritable, whyNotWritable, type FileKey, type NumberKey, type ProxyConfig, type Runtime,
} from '../config/proxy.js';
import { addOperationsMetrics, addRegistryMetrics, MAX_DEPARTED_POLICIES, Metrics } from '../inspector/metrics.js';
import { monotonicEpoch } from '../inspector/hub.js';
import type { PoolView } from '../inspector/views.js';
import { systemClock } from '../transport/clock.js';
import { bracketHint, hostPort as hostAndPort, isEveryAddress, isLoopback, isThisMachine } from '../transport/address.js';
import { ErrorCode } from '../transport/errors.js';
import { RETRY_CONDITIONS } from '../actors/link.js';
import { allowedNameProblem, dial, expiryWarning, serverNameProblem, type UpstreamTlsMaterial } from '../transport/tls.js';
import type { LoadedCert } from '../config/files.js';
import { FileError, hostParser, ignoreUserSignals, logProcessWarnings, logStartFailuresTo, releaseEarlySignals, takeEarlySignals, parseIntOption, parseList, parsePort, registryOptions, runUntilStopped, tlsOptions, UsageError, useColor, warnIfPid1, warnTls } from './common.js';
import { ExpiryWatch, expiredError } from './cert-expiry.js';
import { checkInspectToken, inspectOptions, startInspection } from './inspect.js';


/** The proxy command's options: one per numeric setting of the table, then the rest. */
function proxyOptions(): Option[] {
  const numbers = (Object.keys(NUMBERS) as NumberKey[]).map((key) => {
    const s = NUMBERS[key];
    const flag = flagOfKey(key)!;
    const flags = key === 'port' ? `-p, --port <port>` : `${flag} <${s.unit}>`;
    const parse = key === 'port' ? (v: string) => parsePort(v) : parseIntOption(flag, s.min, maxOf(s));
    return new Option(flags, `${s.doc} (default: ${defaultOf(key)})`).argParser(parse);
  });
  return [
    ...numbers,
    new Option('--host <address>', `address to listen on (default: ${DEFAULT_LISTEN_HOST}), without a port; an IPv6 one bare or in brackets (::1, [::1])`).argParser(hostParser('--port')),
    new Option('--config <file>', 'read the settings from this YAML file (docs/CONFIG.md); flags given as well override it'),
    new Option('--check', 'check the configuration (the file, the flags and the files they name), then exit: 0 when it is valid, 1 when not, 2 when the flags themselves are wrong (a usage error)'),
    new Option('--pid-file <file>', "write the process id to this file once the proxy listens, as HAProxy's -p and nginx's pid do (logrotate: postrotate kill -USR1 $(cat FILE)); removed on exit; a start refuses one naming another proxy still running"),
    new Option('--token <secret>', 'registration secret every server must present').env('REVPROXY_TOKEN'),
    new Option('--tokens <file>', 'per-policy registration secrets (YAML: policy: secret); policies not in it take --token, or no registrations; re-read on SIGHUP'),
    new Option('--retry-on <conditions>', RETRY_ON_DOC).argParser(parseList('--retry-on', `conditions (${RETRY_CONDITIONS.join(', ')})`, 'reset,overloaded', (e) => ((RETRY_CONDITIONS as readonly string[]).includes(e) ? undefined : `'${e}' is not one`))),
    new Option('--no-hedge-on-try-timeout', "give a try up at --try-timeout, its answer dropped if it comes later; by default it stays in flight until the request's deadline while the request goes on to another server, and the first answer of either is the client's (hedge_on_try_timeout in the file)"),
    new Option('--proxy-protocol-from <sources>', PROXY_PROTOCOL_FROM_DOC).argParser(parseList('--proxy-protocol-from', 'addresses or networks', '10.0.0.5,10.1.0.0/16', badTrustedSource)),
    new Option('--old-server-connections <n>', `most connections to each old (JSON) server, one request on each at a time; it gets more than one only once it answers that many at once (default: ${OLD_SERVER_DEFAULTS.connections})`).argParser(parseIntOption('--old-server-connections', 1)),
    new Option('--log-level <level>', 'least severe log level written (debug adds a line per request, with payloads) (default: info)').choices(LEVELS),
    new Option('--log-format <format>', 'text for people, json for machines, one object per line; also the access log\'s format (default: text)').choices(['text', 'json']),
    new Option('--no-color', 'plain text even on a terminal'),
    new Option('--log-summary-interval <ms>', `repeated conditions (refusals, retries) and dropped log lines are summarised once per this interval (default: ${SUMMARY_INTERVAL_MS})`).argParser(parseIntOption('--log-summary-interval', 100)),
    new Option('--access-log <file>', "one line per request (time, client and address, policy, server, seq, tries, latency, outcome): '-' for stdout, or a file, reopened on SIGUSR1 (logrotate) and SIGHUP (default: off)"),
    new Option('--access-log-flush <ms>', `a file access log holds its lines for fewer, larger writes: it writes at least this often, and whenever ${ACCESS_LOG_HOLD.bytes / 1024} KiB wait; 0 writes every turn of the event loop (default: ${ACCESS_LOG_HOLD.ms})`).argParser(parseIntOption('--access-log-flush', 0)),
    new Option('--admin <host:port>', 'serve /healthz, /readyz and /metrics on HOST:PORT (default: off)').argParser((v) => {
      const why = hostPortProblem(v);
      if (!parseHostPort(v)) throw new InvalidArgumentError(`--admin takes HOST:PORT (e.g. 127.0.0.1:9100) or a port, got '${v}'${why ? `: ${why}` : ''}`);
      return v;
    }),
    new Option('--admin-token <secret>', 'bearer token /metrics requires (the health checks stay open)').env('REVPROXY_ADMIN_TOKEN'),
    new Option('--metrics-departed-policies <n>', `with --admin: ${METRICS_DEPARTED_DOC}`).argParser(parseIntOption('--metrics-departed-policies', 0, MAX_DEPARTED_POLICIES)),
    new Option('--ready-policies <policies>', 'with --admin: /readyz answers 503 while any of these privacy policies (comma-separated) has no server serving, naming each; for rolling restarts with direct registration (default: off)').argParser(parseList('--ready-policies', 'privacy policies', '111,222', badPolicy)),
    ...tlsOptions(),
    new Option('--upstream-tls-ca <file>', "PEM CA that signs the servers' certificates: the proxy dials its servers over TLS and verifies theirs against it, apart from --tls-ca (the other --upstream-tls-* flags need it; without them, --tls-ca does both)"),
    new Option('--upstream-tls-cert <file>', 'PEM certificate the proxy presents to servers that ask for one (mutual TLS: a server with --tls-ca), with --upstream-tls-key'),
    new Option('--upstream-tls-key <file>', 'PEM private key of --upstream-tls-cert'),
    new Option('--upstream-tls-crl <file>', 'PEM CRLs of the --upstream-tls-ca CAs (each needs its own): a server whose certificate one revokes is refused; re-read on SIGHUP'),
    new Option('--upstream-tls-server-name <name>', UPSTREAM_DOCS.server_name).argParser((v) => {
      const bad = serverNameProblem(v);
      if (bad) throw new InvalidArgumentError(`--upstream-tls-server-name takes one DNS name (e.g. servers.internal): the server name '${v}': ${bad}`);
      return v;
    }),
    new Option('--upstream-tls-names <names>', `comma-separated (a URI holding a comma goes in the config file's upstream_tls.names): ${UPSTREAM_DOCS.names.replace('; quote it in YAML', '')}`).argParser(upstreamNames),
    ...registryOptions({ ttl: true, advertise: { help: 'with --registry: the address clients dial to reach this proxy, without a port (default: --host); an IPv6 one bare or in brackets', portFlag: '--port' } }),
    ...inspectOptions(),
  ];
}

type Flags = Record<string, unknown> & { config?: string; check?: boolean; pidFile?: string };

/** The proxy command's flags that are not settings: what to read, and what to do with it. */
const NOT_SETTINGS = new Set(['config', 'check', 'pid-file']);

function secretFlag(flag: string, value: unknown): unknown {
  if (String(value).length < 8) throw new UsageError(`${flag} must be at least 8 characters: a short secret is easy to guess`);
  return value;
}

/** A flag's value as its key in a file takes it, where they differ (the others are the same). */
const FROM_FLAG: Record<string, (value: unknown) => unknown> = {
  token: (v) => secretFlag('--token (or REVPROXY_TOKEN)', v),
  'admin-token': (v) => secretFlag('--admin-token (or REVPROXY_ADMIN_TOKEN)', v),
  admin: (v) => parseHostPort(String(v)),
  inspect: (v) => (v === true ? 0 : v),
  'inspect-token': checkInspectToken,
};

/** `value` at `key` (a dotted path) of `c`, its sections made as needed. */
function setKey(c: Record<string, unknown>, key: string, value: unknown): void {
  const [head, ...rest] = key.split('.');
  if (!rest.length) c[head!] = value;
  else setKey((c[head!] ??= {}) as Record<string, unknown>, rest.join('.'), value);
}

/**
 * What the flags set, as a config (only what was given: a flag overrides the file, a default does not),
 * each at its key (config/proxy.ts, `keyOfFlag`). Paths from flags stay as given (the working directory
 * does not change); the file's are made absolute.
 */
function configFromFlags(cmd: Command): ProxyConfig {
  const o = cmd.opts() as Flags;
  const c: Record<string, unknown> = {};
  for (const option of cmd.options) {
    const flag = option.long?.slice(2);
    const name = option.attributeName();
    if (!flag || NOT_SETTINGS.has(flag) || o[name] === undefined || cmd.getOptionValueSource(name) === 'default') continue;
    const convert = FROM_FLAG[flag];
    setKey(c, keyOfFlag(flag), convert ? convert(o[name]) : o[name]);
  }
  return c as ProxyConfig;
}

/** The settings a config sets: a section's each (`registry: {url, ttl}` is 2), `tokens` one, a list one. It counted sections as one. */
function settingCount(c: object): number {
  return Object.entries(c).reduce((n, [k, v]) => n + (v === undefined ? 0 : v && typeof v === 'object' && !Array.isArray(v) && k !== 'tokens' ? settingCount(v as object) : 1), 0);
}

/** `proxy --help`'s words for the flags whose key is not their name with _ for - (config/proxy.ts, flagsNamedOtherwise), beyond a section's. */
function flagExceptions(): string {
  const odd = flagsNamedOtherwise();
  // Wrapped at 100 columns, as the rest of the text is.
  const lines: string[] = [];
  for (const words of odd.map((flag) => `--${flag} is ${flagWords(flag)}`)) {
    const last = lines.length - 1;
    if (last >= 0 && lines[last]!.length + words.length + 2 <= 100) lines[last] += `, ${words}`;
    else {
      if (last >= 0) lines[last] += ',';
      lines.push(words);
    }
  }
  return lines.join('\n');
}

export function proxyCommand(setExit: (code: number) => void): Command {
  const cmd = new Command('proxy').description('run the reverse proxy');
  for (const o of proxyOptions()) cmd.addOption(o);
  cmd.addHelpText(
    'after',
    `
Every setting can also be given in a YAML file (--config FILE; docs/CONFIG.md): the key is the
flag's name with _ for - (max_server_inflight: 2048), and a section's flags go under it (--log-level
is log: {level}, --tls-cert is tls: {cert}), except:
${flagExceptions()}.
Flags override the file.
Old JSON clients and servers use the same port: the first byte of a connection decides.
SIGTERM, SIGINT or SIGQUIT drains: no new connections, every request in flight answered, then exit 0.
A second one stops at once: what is still in flight is answered SHUTTING_DOWN (the same signal
within 100 ms is a copy of the first, not a second: GNU timeout signals the command, then its group).
SIGHUP reloads the config file (or, without one, the tokens file): limits, timeouts, retries,
health settings, log level and secrets change at once, and no connection is closed; the TLS
files are read again (a renewed certificate serves new handshakes; etcd's, registry.tls, make a
new etcd client, the watch and the proxy's key moved to it on their lease); the access log and the
inspection log (--inspect-log) are reopened (for logrotate). An invalid file is refused and the running settings stay.
SIGUSR1 reopens those log files only (logrotate's postrotate: kill -USR1 $(cat PIDFILE), or
systemctl kill -s USR1 revproxy), reading no configuration, as nginx's USR1 does; SIGUSR2 is ignored. A SIGHUP sent while
the proxy starts is applied once it listens; a SIGTERM then drains it as soon as it is up.
TLS: --tls-cert/--tls-key serve TLS; --tls-ca requires peers' certificates (mutual TLS) and verifies servers'.
Toward servers, --upstream-tls-ca (with --upstream-tls-cert/--upstream-tls-key for servers that ask for one,
--upstream-tls-server-name to verify a DNS name of theirs in place of their address, --upstream-tls-names to
restrict their certificates' names) has the proxy dial them over TLS, whatever its port
serves; without it, the proxy dials servers over TLS when --tls-ca is given, with the --tls-* files.

Example:
  revproxy proxy -port 2100
  revproxy proxy --config /etc/revproxy.yaml --check
  REVPROXY_TOKEN=... revproxy proxy --host 0.0.0.0 --tls-cert proxy.pem --tls-key proxy.key --tls-ca ca.pem --admin 0.0.0.0:9100`,
  );
  cmd.action(async () => {
    const flags = configFromFlags(cmd);
    const file = (cmd.opts() as Flags).config;
    const source = file ?? COMMAND_LINE;
    // REVPROXY_REGISTRY_PASSWORD is ambient, like REVPROXY_TOKEN: a proxy with no registry ignores it (the flag is still refused without one).
    const envPassword = cmd.getOptionValueSource('registryPassword') === 'env';
    // REVPROXY_ADMIN_TOKEN likewise: a proxy with no admin endpoint ignores it (--admin-token without --admin is refused).
    const envAdminToken = cmd.getOptionValueSource('adminToken') === 'env';
    // What the file last said, and the settings the command line takes from it (said at start and at each reload).
    let fromFile: ProxyConfig = {};
    // A reload refuses a file that sets nothing (config/proxy.ts, loadConfigFile); a start and --check take it.
    const read = (reload = false): ProxyConfig => {
      fromFile = file ? loadConfigFile(resolvePath(file), { reload }) : {};
      const c = merge(fromFile, flags);
      if (envAdminToken) c.admin = withoutAmbient(c.admin, 'token', 'listen');
      if (envPassword) c.registry = withoutAmbient(c.registry, 'password', 'url');
      return c;
    };
    // A file a flag gave is named by that flag in errors, not blamed on the config file.
    // Settings that clash (ready policies or an admin token without --admin, registry settings without
    // --registry) when every one came from a flag: options that do not fit together, a usage error (exit 2).
    // With a file, the clash is pointed at the line that set it.
    // A clash a flag's setting is part of is named by the flag (the file did not set it).
    const flagSet = (path: string): string | undefined =>
      path.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], flags) !== undefined ? flagOfKey(path) : undefined;
    const asUsage = (err: unknown): unknown =>
      file ? anchorIssues(err, resolvePath(file), flagSet) : err instanceof ConfigError && err.issues.every((i) => i.line === 0) ? new UsageError(err.issues.map((i) => i.message).join('; ')) : err;
    // Every problem checkRuntime found, at once: the file's at their lines, then the files the flags named.
    const explain = (err: unknown): unknown => {
      if (!(err instanceof RuntimeProblems)) return asUsage(err);
      const anchored = err.issues.length ? asUsage(new ConfigError(err.file, err.issues)) : undefined;
      // In the file's order.
      const inFile = anchored instanceof ConfigError ? new ConfigError(anchored.file, [...anchored.issues].sort((a, b) => (a.line || Infinity) - (b.line || Infinity) || a.col - b.col)) : anchored;
      if (!err.given.length && inFile) return inFile;
      return new FileError([...(inFile ? [(inFile as Error).message] : []), ...err.given].join('\n'));
    };
    if ((cmd.opts() as Flags).check) {
      // A check is not a daemon: the signals it was sent while it loaded do what Node does with them.
      releaseEarlySignals();
      const cfg = read();
      let rt: Runtime | undefined;
      let problems: unknown;
      try {
        rt = checkRuntime(cfg, source, flagSet);
      } catch (err) {
        problems = err;
      }
      // The pid file a start would write: its folder must exist and be writable (the file itself is written at start).
      const pidFile = (cmd.opts() as Flags).pidFile;
      const pid = pidFile ? pidFileProblem(pidFile) : undefined;
      if (pid) problems = problems instanceof RuntimeProblems ? new RuntimeProblems(problems.file, problems.issues, [...problems.given, pid]) : (problems ?? new FileError(pid));
      if (problems || !rt) throw explain(problems);
      // Its listeners, their names resolved as a start resolves them.
      await checkListenNames(cfg).catch((err: unknown) => {
        throw explain(err);
      });
      // What a start would warn of, where an operator runs the check (CI, a deploy), as nginx -t warns; still valid (exit 0).
      const resolved = resolveOptions(rt.options);
      const files = fileLimitWarning(resolved.maxConnections, resolved.maxConnectionsSet, 'max_connections');
      const memory = proxyBudgetNote(resolved);
      const conns = proxyConnectionsNote(resolved);
      if (conns) process.stdout.write(`revproxy: ${conns.message}\n`);
      const listen = await Promise.all([listenWarning('host', resolved.host), rt.admin ? listenWarning('the admin endpoint\'s host', rt.admin.host) : undefined]);
      const warnings = [
        file && setsNothing(fromFile) ? setsNothingWarning(file) : undefined, ...listen, files?.message, memory?.level === 'warn' ? memory.message : undefined,
        proxyInsecureNote(resolved)?.message, rt.admin && adminInsecure(rt.admin), ...rt.certs.map((c) => expiryWarning(c.role, c.file, c)), ...rt.tlsWarnings.map((w) => w.message),
      ].filter(Boolean);
      for (const w of warnings) process.stderr.write(`revproxy: warning: ${w}\n`);
      process.stdout.write(`revproxy: ${file ? `the configuration file ${file}` : 'the configuration'} is valid (${settingCount(cfg)} setting(s); the files it names can be used)\n`);
      setExit(0);
      return;
    }
    // SIGHUP must never end the process, whatever happens before the proxy is up: one sent while the
    // CLI loaded (caught from its first line, cli/early-signals.mjs) or while the proxy starts is
    // applied once it listens. Each handler `run` installs is given the one that came before it.
    let hupBefore = false;
    let onHup = (): void => void (hupBefore = true);
    const hup = (): void => onHup();
    process.on('SIGHUP', hup);
    if (takeEarlySignals(['SIGHUP']).length) hup();
    const setHup = (f: () => void): void => {
      onHup = f;
      if (hupBefore) {
        hupBefore = false;
        f();
      }
    };
    try {
      await run(read, source, setExit, setHup, flagSet, explain, (cmd.opts() as Flags).pidFile, () => ({ file: fromFile, keys: overridden(fromFile, flags) }));
    } catch (err) {
      throw explain(err);
    } finally {
      process.off('SIGHUP', hup);
    }
  });
  return cmd;
}


/** The file's settings as last read, and those of them the command line sets too (`overridden`). */
type Overrides = () => { file: ProxyConfig; keys: string[] };

/** Where the settings come from without a config file: said in reload lines (`Reloaded the command line: ...`), where no file holds secrets to re-read. */
const COMMAND_LINE = 'the command line';

/** Start everything a config asks for, serve until SIGTERM/SIGINT, reload on SIGHUP. */
async function run(read: (reload?: boolean) => ProxyConfig, source: string, setExit: (code: number) => void, onHup: (f: () => void) => void, flagOf: (key: FileKey) => string | undefined, explain: (err: unknown) => unknown, pidFile?: string, overrides: Overrides = () => ({ file: {}, keys: [] })): Promise<void> {
  let running = read();
  // Checked as --check checks it: every problem at once, the file's at their lines; then its listeners, by the addresses its names resolve to.
  const rt = checkRuntime(running, source, flagOf);
  await checkListenNames(running);
  const stdout = new Destination({ to: '-' });
  const logger = new Logger('proxy', new LogStream(stdout, { format: rt.log.format, color: useColor(rt.log.color) }), rt.log.level, { summaryMs: rt.log.summaryMs });
  const unwarn = logProcessWarnings(logger);
  logStartFailuresTo('proxy', rt.log.format);
  warnIfPid1(logger);
  // Until the proxy is up (its registry client loading, its admin and inspector ports opening), a
  // reload has nothing to apply to: it is remembered, and done once the proxy listens (a deploy
  // script or logrotate sending SIGHUP just after a start must not be lost, nor end the process).
  let reloadOnceUp = false;
  onHup(() => {
    if (!reloadOnceUp) logger.info('reload_pending', 'SIGHUP while the proxy starts: the configuration is read again once it listens', { file: source, state: 'starting' });
    reloadOnceUp = true;
  });
  const accessLog = rt.log.accessLog ? new AccessLog(rt.log.accessLog === '-' ? stdout : new Destination({ to: rt.log.accessLog, ...accessLogHold(rt.log.accessLogFlushMs) }), rt.log.format) : undefined;
  if (accessLog && rt.log.accessLog !== '-') await accessLog.dest.ready().catch((err: Error) => {
    throw logFileIssue(source, 'log.access_log', rt.log.accessLog!, whyNotWritable(err, rt.log.accessLog!), flagOf('log.access_log'));
  });
  // SIGUSR1 reopens the log files (the access log, the inspection log) and nothing else, as nginx's
  // USR1 reopens its logs: logrotate's postrotate must reach them whatever the config file on disk
  // holds (systemd's ExecReload runs --check first, and sends no SIGHUP when the file is not valid).
  // The inspection log joins once the inspector has started.
  const files: Array<{ what: string; file: string; key: string; reopen(): void }> = [];
  if (accessLog && accessLog.dest !== stdout) files.push({ what: 'the access log', file: rt.log.accessLog!, key: 'access_log', reopen: () => accessLog.reopen() });
  const reopen = (signal: NodeJS.Signals): string[] => {
    const done: string[] = [];
    for (const f of files) {
      try {
        f.reopen();
        done.push(`${f.what} ${f.file}`);
      } catch (err) {
        logger.error(`${f.key}_reopen_failed`, `cannot reopen ${f.what} ${f.file}: ${whyNotWritable(err, f.file)}; its lines still go to the file it had open; fix this and send ${signal} again`, { file: f.file, signal });
      }
    }
    return done;
  };
  const usr1 = (): void => {
    if (!files.length) {
      logger.info('reopen', `SIGUSR1: no access log file to reopen (${accessLog ? 'the access log is stdout' : 'no access log'}) nor an inspection log; the configuration was not read again (SIGHUP does that)`, { signal: 'SIGUSR1' });
      return;
    }
    const done = reopen('SIGUSR1');
    if (done.length) logger.info('reopen', `Reopened ${done.join(' and ')} (SIGUSR1); the configuration was not read again (SIGHUP does that)`, { file: files[0]!.file, files: files.map((f) => f.file), signal: 'SIGUSR1' });
  };
  process.on('SIGUSR1', usr1);
  for (const signal of takeEarlySignals(['SIGUSR1'])) process.emit(signal, signal);
  if (accessLog && accessLog.dest !== stdout) {
    const file = rt.log.accessLog;
    accessLog.dest.onError = (err) => {
      const why = err.code === 'ENOSPC' ? 'the disk is full (ENOSPC)' : err.code === 'EIO' ? 'an I/O error (EIO)' : err.message;
      logger.repeated('error', 'access_log_write_failed', 'access', 1, (n, span) => `cannot write the access log ${file}: ${why}; ${n} write(s) failed${span ? ` ${span}` : ''}; its lines wait (up to ${LOG_BUFFER_BYTES / 1024 / 1024} MiB, then dropped and counted) and are written once it can be, unless the proxy stops first: what still waits then is lost, and counted`, { file, code: err.code });
    };
    accessLog.dest.onRecovered = () => {
      logger.flush(); // the failures' summary first
      logger.info('access_log_write_recovered', `the access log ${file} is written again; ${fmt(accessLog.dropped)} line(s) dropped so far while it could not be`, { file, dropped: accessLog.dropped });
    };
  }
  // The last reload's outcome too, as Prometheus's own prometheus_config_last_reload_successful: an alert on
  // the refusals' increase over 15 minutes cleared while the proxy still ran the old configuration. Its time
  // is Unix time that moves with the monotonic clock (as the inspector's records), not with a stepped wall clock.
  const reloads = { applied: 0, refused: 0, lastOk: true, lastOkAt: monotonicEpoch() };
  const refusedOne = (): void => {
    reloads.refused++;
    reloads.lastOk = false;
  };
  // The certificates the metrics and warnings describe; the proxy itself owns what it runs with (proxy.renewTls).
  let certs = rt.certs;
  // Said at start, at each reload, and as each comes within its warning window or ends while the proxy runs.
  const expiry = new ExpiryWatch(logger, () => certs);
  expiry.check();
  warnTls(logger, rt.tlsWarnings);
  // A file's setting the command line overrides is not the one running, and editing it then reloading
  // changed nothing, saying "no setting changed" (REVPROXY_TOKEN from the unit's environment file beside
  // a `token` in the file, say): said at start, and at a reload that changes it in the file.
  let said = overrides();
  if (said.keys.length) logger.warn('config_overridden', `${source} sets ${said.keys.join(', ')}, which the command line (its flags, or REVPROXY_* variables) sets too: the command line's value${said.keys.length === 1 ? ' is' : 's are'} the one${said.keys.length === 1 ? '' : 's'} running, and a reload keeps ${said.keys.length === 1 ? 'it' : 'them'}`, { file: source, keys: said.keys });
  let proxy: ProxyHandle | undefined;
  let admin: AdminServer | undefined;
  let metrics: Metrics | undefined;
  const conns = rt.admin ? new ConnStats() : undefined;
  // A reload changes it at once.
  let readyPolicies = rt.admin?.readyPolicies ?? [];
  // The token the admin endpoint asks for now.
  let adminToken: string | undefined;
  if (rt.admin) {
    metrics = new Metrics({ pools: () => (proxy ? poolViews(proxy, readyPolicies) : []), inflight: () => proxy?.actor.getSnapshot().context.inflight.size ?? 0, actorCounts: () => [] }, 200, { defaults: true, departedPolicies: rt.admin.departedPolicies, logger });
    addOperationsMetrics(metrics.registry, {
      conns: () => conns!.snapshot(),
      maxConnections: () => conns!.limit,
      dropped: () => ({ main: logger.dropped, access: accessLog && accessLog.dest !== stdout ? accessLog.dropped : 0 }),
      reloads: () => reloads,
      version: VERSION,
      revision: REVISION,
      certs: () => certs,
    });
    const readiness = new Readiness();
    readiness.add('proxy', () => {
      const state = proxy?.actor.getSnapshot().value;
      if (state === 'running') return undefined;
      if (state === 'draining') return { code: 'DRAINING', message: 'the proxy is draining: it takes no new connections' };
      if (state === undefined || state === 'starting') return { code: 'STARTING', message: 'the proxy is not listening yet' };
      return { code: 'STOPPED', message: `the proxy is ${String(state)}` };
    });
    if (rt.registry) {
      addRegistryMetrics(metrics.registry, () => proxy?.registry());
      readiness.add('registry', () => registryReadiness(proxy?.registry()));
    }
    readiness.add('pool', () => poolReadiness(readyPolicies, proxy?.pools() ?? {}));
    // A proxy whose own certificate has expired is refused by every TLS client: not ready, as a load balancer should hear.
    // A CRL past its nextUpdate refuses its CA's peers alone (on the port, or the dials to servers), and every proxy
    // reading the same published file at once: a warning, still ready, since taking them all out of rotation would turn
    // one CA's refusals into a refusal of everyone (Envoy and HAProxy stay up too). The log says it as the watch does.
    readiness.add('tls', () => {
      const ended = expiry.ended('tls.cert');
      return [
        ...(ended ? [{ code: 'CERT_EXPIRED', message: expiredError(ended) }] : []),
        ...expiry.passedCrls().map((c) => ({ code: 'CRL_EXPIRED', message: expiredError(c), warning: true })),
      ];
    });
    admin = await startAdmin({ host: rt.admin.host, port: rt.admin.port, token: rt.admin.token, metrics, readiness, logger });
    adminToken = rt.admin.token;
    logger.info('admin', `Admin endpoint on ${admin.url} (/healthz, /readyz, /metrics)`, { url: admin.url });
    const open = adminInsecure(rt.admin);
    if (open) logger.warn('admin_insecure', open, { host: rt.admin.host });
  }
  const insp = await startInspection({ inspect: rt.inspect, inspectLog: rt.inspectLog, inspectToken: rt.inspectToken, logFormat: rt.log.format }, 'proxy', logger);
  if (insp.logFile) files.push({ what: 'the inspection log', file: insp.logFile, key: 'inspect_log', reopen: () => insp.reopen() });
  const unignore = ignoreUserSignals(logger, 'send SIGHUP to reload the configuration and reopen the log files, SIGUSR1 to reopen the log files only, SIGTERM to drain and stop', ['SIGUSR2']);
  for (const signal of takeEarlySignals(['SIGUSR2'])) process.emit(signal, signal);
  try {
    const unwritable = pidFile && (pidFileProblem(pidFile) ?? pidFileHeld(pidFile));
    if (unwritable) throw new FileError(unwritable);
    proxy = await startProxy({
      ...rt.options,
      registry: rt.registry,
      logger,
      inspect: insp.attach.inspect,
      observer: combineObservers(metrics, accessLog, conns, insp.attach.observer),
      connect: conns?.wrap(dial),
      stoppedLine: 'caller',
    });
    const handle = proxy;
    // Once it listens, as nginx and HAProxy write theirs: a second start that cannot take the port
    // (the proxy started twice) wrote its pid over the running one's, then removed the file as it
    // failed, and logrotate's `kill -USR1 $(cat FILE)` reached no proxy.
    if (pidFile) {
      try {
        writePidFile(pidFile);
      } catch (err) {
        await handle.stop();
        throw err;
      }
    }
    const reload = async (): Promise<void> => {
      reopen('SIGHUP');
      const state = handle.actor.getSnapshot().value;
      if (state !== 'running') {
        // The drain keeps the settings it started with (its timeout was set as it began).
        logger.info('reload_ignored', `Reload ignored: the proxy is ${String(state)}${files.length ? `; ${files.map((f) => f.what).join(' and ')} reopened` : ''}`, { file: source, state });
        return;
      }
      let next: ProxyConfig;
      let nextRt: Runtime;
      try {
        next = read(true);
        // Checked as at start: every problem at once, the file's at their lines (its log files aside: reopened below).
        nextRt = checkRuntime(next, source, flagOf, { logs: false });
        await checkListenNames(next);
      } catch (err) {
        refusedOne();
        // Pointed at the file's lines, as at start.
        const why = (explain(err) as Error).message.replace(/\n/g, '; ');
        logger.error('reload_refused', `Reload refused, still running the previous configuration: ${why}`, { file: source });
        return;
      }
      const was = said;
      said = overrides();
      const pick = (c: ProxyConfig, key: string): unknown => key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], c);
      const unheard = said.keys.filter((k) => JSON.stringify(pick(was.file, k)) !== JSON.stringify(pick(said.file, k)));
      if (unheard.length) logger.warn('reload_overridden', `${unheard.join(', ')} changed in ${source}, but the command line (its flags, or REVPROXY_* variables) sets ${unheard.length === 1 ? 'it' : 'them'}: running with the command line's value${unheard.length === 1 ? '' : 's'}`, { file: source, keys: unheard });
      const changed = changes(running, next);
      const restart = changed.filter((c) => c.reload === 'restart').map((c) => c.key);
      const applied = changed.filter((c) => c.reload !== 'restart').map((c) => c.key);
      // etcd's files first: a set etcd refuses refuses the whole reload, as a bad file does.
      const registryTls = nextRt.registry?.tls;
      if (!restart.includes('registry.tls') && (registryTls?.cert || registryTls?.ca) && !sameTls(handle.registryTls(), registryTls)) {
        try {
          const renewal = await handle.renewRegistryTls(registryTls);
          if (!renewal.tried) logger.warn('registry_tls_untried', `The renewed registry.tls could not be tried against etcd (${renewal.why}): the proxy's etcd client uses it from now on, and etcd checks it when it answers again`, { file: source });
        } catch (err) {
          refusedOne();
          logger.error('reload_refused', `Reload refused, still running the previous configuration: ${(err as Error).message}`, { file: source });
          return;
        }
        if (!applied.includes('registry.tls')) applied.push('registry.tls');
      }
      // A change of TLS's shape (mutual TLS on or off, TLS toward servers on or off) waits for a restart; the files running
      // are read again all the same, so their renewal in place applies. It did not: after `ca` was added to the file, every
      // later reload said "tls needs a restart", counted as applied, and served the old certificate to its end.
      const reshaped = restart.includes('tls') || restart.includes('upstream_tls');
      let tlsRt: Runtime | undefined = nextRt;
      let tlsUnread: string | undefined;
      // The configuration the TLS files are taken from: the shape running, with the rest of the file.
      const kept: ProxyConfig = !reshaped ? next : { ...next, ...(restart.includes('tls') ? { tls: running.tls } : {}), ...(restart.includes('upstream_tls') ? { upstream_tls: running.upstream_tls } : {}) };
      if (reshaped) {
        try {
          tlsRt = running.tls || running.upstream_tls ? checkRuntime(kept, source, flagOf, { logs: false }) : undefined;
        } catch (err) {
          tlsRt = undefined;
          tlsUnread = (explain(err) as Error).message.replace(/\n/g, '; ');
        }
      }
      // Connections closed because the renewed CRLs revoke their peers' certificates, or upstream_tls.names or server_name no longer allows their servers'.
      let revokedClosed = 0;
      if (tlsRt) {
        // Same paths, new contents (a renewed certificate) is a change too: the port's files (tls), and what the proxy dials
        // servers with (upstream_tls's, or without it tls's, whose change is tls's).
        const was = handle.tls();
        const { tls, upstreamTls } = tlsRt.options;
        const upstreamKey = kept.upstream_tls ? 'upstream_tls' : 'tls';
        if (!applied.includes('tls') && !sameTls(was.tls, tls?.cert ? tls : undefined)) applied.push('tls');
        if (!applied.includes(upstreamKey) && !sameTls(was.upstreamTls, upstreamTls)) applied.push(upstreamKey);
        try {
          if (tls?.cert || upstreamTls) revokedClosed = handle.renewTls({ tls: tls?.cert ? tls : undefined, upstreamTls });
        } catch (err) {
          // The files passed the same checks as they were read, so this is not expected; but SIGHUP must never end the process.
          refusedOne();
          logger.error('reload_refused', `Reload refused, still running the previous configuration: ${(err as Error).message}`, { file: source });
          return;
        }
      }
      // What the metrics and warnings describe: the files in use, the new ones of each part a reload took.
      const ofRegistry = (c: LoadedCert): boolean => c.role.startsWith('registry.');
      certs = [...(tlsRt ? tlsRt.certs : certs).filter((c) => !ofRegistry(c)), ...(restart.includes('registry.tls') ? certs : nextRt.certs).filter(ofRegistry)];
      // Defaults computed from a setting that needs a restart (max_conns_per_peer's from host) follow its running value.
      // A secret no longer accepted revokes its servers' registrations, in the RELOAD itself: counted for the line below.
      const registered = handle.actor.getSnapshot().context.servers.size;
      const wasOpts = handle.actor.getSnapshot().context.opts;
      handle.actor.send({ type: 'RELOAD', opts: resolveOptions({ ...nextRt.options, host: rt.options.host, maxBufferedBytes: rt.options.maxBufferedBytes }) });
      const nowOpts = handle.actor.getSnapshot().context.opts;
      const revoked = registered - handle.actor.getSnapshot().context.servers.size;
      // The endpoint's token and ready policies change at once, unless the endpoint itself changed (a restart: config/proxy.ts, `changes`).
      const adminWas = adminToken;
      if (admin && !restart.includes('admin.token')) admin.setToken((adminToken = nextRt.admin?.token));
      if (admin && !restart.includes('admin.ready_policies')) readyPolicies = nextRt.admin?.readyPolicies ?? [];
      if (metrics && nextRt.admin && !restart.includes('admin.metrics_departed_policies')) metrics.setDepartedPolicies(nextRt.admin.departedPolicies);
      reloads.applied++;
      reloads.lastOk = true;
      reloads.lastOkAt = monotonicEpoch();
      logger.info('reload', `Reloaded ${source}: ${applied.length ? `applied ${applied.join(', ')}` : restart.length ? `nothing applied: ${restart.join(', ')} need${restart.length === 1 ? 's' : ''} a restart` : 'no setting changed'}${source !== COMMAND_LINE || next.tokens_file !== undefined ? '; secrets re-read' : ''}; ${closedSaid(revoked, revokedClosed, kept)}`, { file: source, applied, revoked, ...(revokedClosed ? { tls_revoked: revokedClosed } : {}) });
      // After the line saying so: a reload to `warn` said nothing of itself (half of 100 reloads between info and warn went unsaid).
      logger.setLevel(nextRt.log.level);
      // A secret removed opens what it protected: said plainly, whatever else the reload did (an empty file took every default and said only "applied token, admin.token").
      if (!hasSecrets(nowOpts) && hasSecrets(wasOpts)) {
        logger.warn('secret_removed', `this reload removed every registration secret (token, tokens): any peer that can connect to ${hostAndPort(nowOpts.host, handle.port)} can now register as a server of any privacy policy and receive its clients' data; if that is not meant, put the secret back and reload`, { file: source, key: 'token' });
      }
      if (admin && adminWas !== undefined && adminToken === undefined) {
        logger.warn('secret_removed', `this reload removed admin.token: /metrics on ${admin.url} now answers anyone who can connect, with no token; if that is not meant, put the token back and reload`, { file: source, key: 'admin.token' });
      }
      if (restart.length) {
        const runningFiles = [running.tls && 'tls', running.upstream_tls && 'upstream_tls'].filter(Boolean).join(' and ');
        const files = !reshaped || !runningFiles ? '' : tlsUnread
          ? `; the running ${runningFiles} files could not be read again (${tlsUnread}): serving the certificate loaded before`
          : applied.includes('tls') || applied.includes('upstream_tls') ? `; the running ${runningFiles} files were read again and their renewal applied` : `; the running ${runningFiles} files are read again at each reload, so their renewal applies`;
        logger.warn('reload_restart_needed', `${restart.join(', ')} changed in ${source} but take${restart.length === 1 ? 's' : ''} effect only after a restart; running with the previous value${restart.length === 1 ? '' : 's'}${files}`, { file: source, restart });
      }
      expiry.check(true);
      warnTls(logger, tlsRt?.tlsWarnings ?? []);
      // What needs a restart stays as it runs, so the next reload reports it again.
      const before = running;
      running = { ...next };
      // Several keys of one section (log.format and log.access_log) each keep theirs: built on what the last one left.
      for (const key of restart) {
        const [k, sub] = key.split('.') as [keyof ProxyConfig, string | undefined];
        if (sub) (running as Record<string, unknown>)[k] = { ...(running[k] as object), [sub]: (before[k] as Record<string, unknown> | undefined)?.[sub] };
        else (running as Record<string, unknown>)[k] = before[k];
      }
    };
    // One reload at a time: etcd's renewed files are tried against etcd (a moment) before anything is applied. SIGHUPs that
    // come while one waits its turn are that one (as nginx and HAProxy take a burst of them): 10 in a second were 10 reloads,
    // each reading and checking the file again (2.7 s each for a file of 20,000 tokens, the proxy blocked meanwhile).
    let reloading = Promise.resolve();
    let waiting = false;
    const queueReload = (): void => {
      if (waiting) return;
      waiting = true;
      reloading = reloading.then(() => {
        waiting = false;
        return reload();
      }).catch((err: Error) => {
        // Not expected (each step catches its own errors); but SIGHUP must never end the process.
        refusedOne();
        logger.error('reload_refused', `Reload refused, still running the previous configuration: ${err.message}`, { file: source });
      });
    };
    onHup(queueReload);
    if (reloadOnceUp) queueReload();
    await runUntilStopped(proxy.actor, proxy.stop, logger).catch((err: Error) => {
      logger.error('crashed', `The reverse proxy stopped on an internal error, and exits: ${err.message}`, { error: err.message });
      throw err;
    });
  } finally {
    expiry.stop();
    unignore();
    process.off('SIGUSR1', usr1);
    if (pidFile) removePidFile(pidFile);
    await admin?.close();
    await insp.close();
    if (accessLog && accessLog.dest !== stdout) {
      logger.flush(); // what the failing writes were, summarised, before what they lost
      await accessLog.dest.end();
      // Lines that waited for a write that kept failing (a full disk) go with the process: say how many.
      const lost = accessLog.dest.lostAtEnd;
      if (lost) logger.warn('access_log_lost', `${lost} access log line(s) could not be written to ${rt.log.accessLog} before the proxy stopped, and are lost${accessLog.dropped ? `; ${accessLog.dropped} more were dropped while it ran` : ''}`, { file: rt.log.accessLog, lost, dropped: accessLog.dropped });
    }
    // Last, once the files beside it are closed and their warnings written.
    if (proxy?.actor.getSnapshot().value === 'stopped') logStopped(logger, proxy.port);
    await unwarn();
    await logger.end();
  }
  setExit(0);
}

/**
 * The registry's part of /readyz. Not ready until the proxy has read its
 * servers once (it would refuse requests it could serve). Once it has, an
 * etcd that cannot be reached leaves it ready, with a warning: the proxy
 * serves with the membership it last saw, as Envoy and Traefik do with
 * their last configuration, and taking every proxy of a fleet out of
 * service because their shared etcd is away would turn an etcd outage into
 * a whole outage.
 */
function registryReadiness(r: RegistryStatus | undefined): NotReady | undefined {
  if (!r || !r.synced) {
    return { code: r && !r.up && r.why ? 'REGISTRY_UNREACHABLE' : 'REGISTRY_SYNCING', message: r?.why ? `the proxy has not read its servers from the registry yet: ${r.why}` : 'the proxy has not read its servers from the registry yet' };
  }
  if (!r.up) {
    // `since` is on the proxy's clock, the system's (monotonic): a wall-clock step does not make the outage an hour long.
    const s = Math.round((systemClock.now() - r.since) / 1000);
    return { code: 'REGISTRY_UNREACHABLE', message: `the registry has been unreachable for ${s} s (${r.why}); serving with the membership last seen (${r.entries} server entries)`, warning: true };
  }
  // etcd answers and refuses this proxy's key (out of space, a role that may not write it): it serves, unseen by clients that find their proxies in etcd.
  if (r.unadvertised) return { code: 'REGISTRY_NOT_ADVERTISED', message: `etcd refused to write this proxy's registry key (${r.unadvertised}): clients that find their proxies in etcd do not find this one`, warning: true };
  return undefined;
}

/**
 * The pools' part of /readyz (`--ready-policies`), as HAProxy's
 * `monitor fail if { nbsrv(backend) lt 1 }`: not ready while a listed policy
 * has no member serving (connecting, down, ejected and drained members take
 * no request now). A proxy restarted with servers registered directly knows
 * none until each registers again, within its backoff (up to 5 s): ready as
 * soon as it listens, it would answer their requests NO_SERVER meanwhile.
 */
function poolReadiness(policies: readonly string[], pools: ReturnType<ProxyHandle['pools']>): NotReady[] {
  const out: NotReady[] = [];
  for (const policy of policies) {
    const p = pools[policy];
    if (p && p.serving.length > 0) continue;
    const count = new Map<string, number>();
    for (const id of p?.members ?? []) count.set(p!.states[id]!, (count.get(p!.states[id]!) ?? 0) + 1);
    const message = p?.members.length
      ? `none of the ${p.members.length} server(s) of privacy policy ${policy} registered here can take requests (${[...count].map(([s, n]) => `${n} ${s}`).join(', ')}); its requests wait or get NO_SERVER until one is serving`
      : `no server of privacy policy ${policy} is registered with this proxy; its requests get NO_SERVER until one registers`;
    out.push({ code: ErrorCode.NO_SERVER, policy, message });
  }
  return out;
}

/**
 * What `--check` says of an address a start would listen on that it cannot here (`--check` binds
 * nothing, as `nginx -t` and `haproxy -c` do not): a name that does not resolve, or an address no
 * interface of this machine has (EADDRNOTAVAIL at start). A warning, not an error: the configuration
 * may be checked on another machine than the one it is for.
 */
export async function listenWarning(what: string, host: string): Promise<string | undefined> {
  if (isEveryAddress(host) || isLoopback(host) || host.includes('%')) return undefined;
  let addresses: string[];
  if (isIP(host) !== 0) addresses = [host];
  else {
    const lookedUp = await Promise.race([
      lookup(host, { all: true }).then((r) => r.map((a) => a.address), (err: NodeJS.ErrnoException) => err),
      wait(LOOKUP_WAIT_MS, undefined, { ref: false }),
    ]);
    if (lookedUp === undefined) return `${what} ${host} did not resolve within ${LOOKUP_WAIT_MS / 1000} s here: a start here may fail to listen`;
    if (lookedUp instanceof Error) return `${what} ${host} does not resolve here (${lookedUp.code ?? lookedUp.message}): a start here fails to listen; give an address of this machine, or 0.0.0.0 or :: for every address`;
    addresses = lookedUp;
  }
  if (addresses.some(isThisMachine)) return undefined;
  const mine = new Set(Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => a.address)));
  // `::1:2100` is an IPv6 address of its own, and the port it may have meant is said.
  const at = host.lastIndexOf(':');
  const port = bracketHint(host) ? `; if :${host.slice(at + 1)} is a port, write ${hostAndPort(host.slice(0, at), host.slice(at + 1))}` : '';
  return `${what} ${host}${addresses[0] === host ? '' : ` (${addresses.join(', ')})`} is not an address of this machine: a start here fails to listen (EADDRNOTAVAIL); give one of its addresses (${[...mine].join(', ')}), or 0.0.0.0 or :: for every address${port}`;
}

/** How long `--check` waits for a listen address's name to resolve (`listenWarning`). */
const LOOKUP_WAIT_MS = 3000;

/** The warn line for an admin endpoint other machines can reach with no token (a start logs it, `--check` prints it), or undefined. */
function adminInsecure(admin: { host: string; token?: string }): string | undefined {
  if (isLoopback(admin.host) || admin.token) return undefined;
  return `the admin endpoint listens on ${admin.host}, reachable from other machines, with no token: anyone who can connect can read /metrics. Set admin.token (--admin-token, REVPROXY_ADMIN_TOKEN).`;
}

/**
 * What `--check` can tell of the pid file without writing it: its folder exists and this user may
 * write there, and it is not a folder itself. A start writes it, and stops saying why when it cannot.
 */
function pidFileProblem(path: string): string | undefined {
  const folder = dirname(resolvePath(path));
  try {
    if (!statSync(folder).isDirectory()) throw Object.assign(new Error(`${folder} is not a folder`), { code: 'ENOTDIR' });
    accessSync(folder, constants.W_OK);
    assertWritable(path);
    return undefined;
  } catch (err) {
    return `cannot write the --pid-file '${path}': ${whyNotWritable(err, path)}`;
  }
}

/**
 * Why a start must not take the pid file: it names another revproxy proxy that is running (its
 * `/proc/PID/cmdline`), as PostgreSQL refuses a live postmaster.pid. A second proxy on another port
 * wrote its pid over the running one's, and logrotate's `kill -USR1 $(cat FILE)` then reopened the
 * new proxy's logs only; the first proxy's stop found the file not its own and left it. A file that
 * names no process, or one that is not a revproxy proxy (its pid reused since a reboot), is stale and
 * written over. `--check` does not ask: it is run beside the running proxy (`nginx -t`).
 */
function pidFileHeld(path: string): string | undefined {
  let pid: number;
  try {
    if (!lstatSync(path).isFile()) return undefined;
    pid = Number(readFileSync(path, 'utf8').trim());
  } catch {
    return undefined; // none yet
  }
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
  let args: string[];
  try {
    args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return undefined; // no such process (or no /proc to tell)
  }
  const main = args.findIndex((a) => /(^|\/)revproxy(\.m?js)?$/.test(a));
  if (main < 0 || !args.slice(main + 1).includes('proxy')) return undefined;
  return `the --pid-file '${path}' names process ${pid}, a revproxy proxy that is running (${args.filter(Boolean).join(' ').slice(0, 200)}): stop it first, or give each proxy its own --pid-file (a signal sent by the file reaches one of them only)`;
}

/** The process id, written once the proxy listens (`--pid-file`); a file that cannot be written stops the proxy, saying why. */
function writePidFile(path: string): void {
  try {
    writeFileSync(path, `${process.pid}\n`);
  } catch (err) {
    throw new FileError(`cannot write the --pid-file '${path}': ${whyNotWritable(err, path)}`);
  }
}

/**
 * Removed on the way out, if it is still a file naming this process (another may have started
 * since and written its own). Only a regular file is read: a device (/dev/full, /dev/stdout) or
 * a FIFO given as the pid file would be read for ever, or block, and the exit with it.
 */
function removePidFile(path: string): void {
  try {
    if (lstatSync(path).isFile() && readFileSync(path, 'utf8').trim() === String(process.pid)) unlinkSync(path);
  } catch {
    // already gone
  }
}

/**
 * `--upstream-tls-names`: names separated by commas, each as `allowedNameProblem` takes it. A URI holding a comma
 * (`URI:https://x.example/a,b`) would be cut there, its rest taken as a name of its own - a single-label DNS name
 * (`b`) that any certificate the CA signed with `DNS:b` carries: the restriction silently wider, the URI never
 * matched. A piece after a `URI:` one with neither a dot nor a colon is refused so; the config file takes such a URI.
 */
function upstreamNames(value: string): string[] {
  const pieces = value.split(',').map((e) => e.trim());
  const cut = pieces.findIndex((e, i) => i > 0 && pieces[i - 1]!.startsWith('URI:') && e !== '' && !/[.:]/.test(e));
  if (cut > 0) throw new InvalidArgumentError(`--upstream-tls-names: '${pieces[cut]}' after '${pieces[cut - 1]}' looks like the rest of a URI cut at its comma (commas separate the names here): give a URI holding a comma in the config file's upstream_tls.names, or give a DNS name with its domain`);
  return parseList('--upstream-tls-names', 'names', 'server-a.internal,*.servers.internal', (e) => {
    const bad = allowedNameProblem(e);
    return bad && `the name '${e}': ${bad}`;
  })(value);
}

/** Whether two sets of TLS files hold the same bytes (and, toward servers, the same server name and names). */
function sameTls(a: UpstreamTlsMaterial | undefined, b: UpstreamTlsMaterial | undefined): boolean {
  const same = (x?: Buffer, y?: Buffer): boolean => (x === undefined || y === undefined ? x === y : x.equals(y));
  return same(a?.cert, b?.cert) && same(a?.key, b?.key) && same(a?.ca, b?.ca) && same(a?.crl, b?.crl) && a?.serverName === b?.serverName && JSON.stringify(a?.names ?? []) === JSON.stringify(b?.names ?? []);
}

/**
 * What a reload closed, for its line: registrations whose secret no longer passes, connections whose peers a CRL of `c`
 * (tls.crl, upstream_tls.crl) revokes now or, links to servers, whose certificates upstream_tls.names or server_name no longer allows.
 */
function closedSaid(registrations: number, revokedPeers: number, c: ProxyConfig): string {
  const crls = [c.tls?.crl && 'tls.crl', c.upstream_tls?.crl && 'upstream_tls.crl'].filter(Boolean);
  const held = [c.upstream_tls?.names?.length && 'upstream_tls.names', c.upstream_tls?.server_name !== undefined && 'upstream_tls.server_name'].filter(Boolean);
  const names = held.length > 0;
  const why = [...(crls.length || !names ? [`${crls.join(' or ') || 'tls.crl'} now revokes`] : []), ...(names ? [`${held.join(' or ')} no longer allows`] : [])].join(', or ');
  const lines = [...(crls.length || !names ? ['tls_revoked'] : []), ...(names ? ['tls_name_refused'] : [])].join(' and ');
  const said = [
    ...(registrations > 0 ? [`revoked ${registrations} server registration(s) whose secret no longer passes (deregister lines name them)`] : []),
    ...(revokedPeers > 0 ? [`closed ${revokedPeers} connection(s) whose peer's certificate ${why} (${lines} lines name them)`] : []),
  ];
  return said.length ? said.join('; ') : 'no connection closed';
}

/**
 * A config section without the secret `key` an environment variable gave, when the setting it goes
 * with (`needs`) is absent - undefined when nothing else is left of it: an ambient secret is ignored
 * by a proxy that does not use it, where the same flag is refused.
 */
function withoutAmbient<T extends object>(section: T | undefined, key: keyof T, needs: keyof T): T | undefined {
  if (!section || section[needs]) return section;
  const rest: Partial<T> = { ...section };
  delete rest[key];
  return Object.values(rest).some((v) => v !== undefined) ? (rest as T) : undefined;
}

/**
 * The proxy's pools as the metrics read them, and each policy of `--ready-policies` that has no
 * pool (no server registered, or its last one left) as an empty one: its members read 0, so an
 * alert on `revproxy_pool_members{state="serving"} == 0` fires for it, as /readyz turns 503.
 */
function poolViews(proxy: ProxyHandle, readyPolicies: readonly string[]): PoolView[] {
  const pools = proxy.pools();
  const views: PoolView[] = Object.entries(pools).map(([policy, p]) => ({
    policy,
    state: p.state,
    members: p.members.map((id) => ({ id, state: p.states[id] ?? 'down', answered: 0, errors: 0, source: p.sources[id] })),
    cursor: p.cursor,
    routed: 0,
    gone: [],
    waiting: p.waiting,
  }));
  for (const policy of readyPolicies) if (!Object.hasOwn(pools, policy)) views.push({ policy, state: 'empty', members: [], cursor: 0, routed: 0, gone: [] });
  return views;
}
