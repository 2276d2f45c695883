/**
 * `revproxy`: the command line. Subcommands launch the actors; the seed's
 * single-dash flags (`-port 2100`) work as well as `--port 2100`.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Help, Option } from 'commander';
import { VERSION_LINE } from './build.js';
import { runClient, startServer, StartError, type ServerHandle } from '../actors/index.js';
import { DEFAULT_CLIENT_TIMEOUT_MS } from '../actors/client.js';
import { LocalCode, RevproxyError } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import type { Result } from '../actors/connect.js';
import type { Payload } from '../actors/handler.js';
import { consoleToLog, exitOnceStopped, loadHandlerStoppable, sayUnplannedExit } from './handler-module.js';
import { DEFAULT_WATCHDOG_MS, startWatchdog, WATCHDOG_EXIT_CODE } from './watchdog.js';
import { benchCommand } from './bench.js';
import { proxyCommand } from './proxy.js';
import { loadCommand } from './load.js';
import { runDemo } from './demo.js';
import { scenarioCommand } from './scenario.js';
import { inspectCommand, inspectOptions, startInspection, type InspectFlags } from './inspect.js';
import {
  checkSecrets, FileError, ignoreUserSignals, logProcessWarnings, logStartFailuresTo, startFailureLog, loadedCerts, releaseEarlySignals, takeEarlySignals, loadPackets, logOptions, makeLogger, normaliseArgv, OLD_FLAGS, parseEndpoints, hostParser, parseIntOption, parsePort, registryFromFlags, registryOptions, REGISTRY_FLAGS, runUntilStopped, tlsFromFlags, tlsOptions, UsageError, warnIfPid1, warnTls,
  wireOption, type FlagTable, type LogFlags, type RegistryFlags, type TlsFlags,
} from './common.js';
import { ExpiryWatch } from './cert-expiry.js';
import { isRegistryUrl } from '../registry/options.js';
import { DEFAULT_HANDLER_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, DEFAULT_PROXY, type Behaviour, type Endpoint } from '../actors/server.js';
import { DEFAULT_PROXY_PORT } from '../transport/address.js';
import { DEFAULT_LISTEN_HOST } from '../actors/proxy-options.js';
import { HEAP_PER_CONNECTION, HEAP_RESERVE, MIN_DEFAULT_CONNECTIONS } from '../actors/memory-limit.js';
import { crlWarnings, DEFAULT_TCP_KEEPALIVE_MS, tlsWarnings, type TlsMaterial } from '../transport/tls.js';
import { BUDGET_UNDER_A_LIMIT, DEFAULT_BUFFER_BUDGET } from '../transport/budget.js';
import type { Level } from '../actors/logger.js';
import { DEFAULT_MAX_TLS_HANDSHAKES } from '../actors/tls-handshakes.js';


function withLogOptions(cmd: Command, level?: Level): Command {
  for (const o of logOptions(level)) cmd.addOption(o);
  return cmd;
}

/** What a server without TLS files says of SIGHUP, SIGUSR1 and SIGUSR2. */
const NOTHING_TO_RELOAD = 'a server has nothing to reload or reopen without TLS files (--tls-*, --registry-cert/--registry-key/--registry-ca; its settings are its flags, its log is its output): restart it to change them; SIGTERM drains and stops it';

function withTlsOptions(cmd: Command): Command {
  for (const o of tlsOptions()) cmd.addOption(o);
  return cmd;
}

function withOptions(options: Option[], cmd: Command): Command {
  for (const o of options) cmd.addOption(o);
  return cmd;
}

function withInspectOptions(cmd: Command): Command {
  for (const o of inspectOptions()) cmd.addOption(o);
  return cmd;
}

export function buildProgram(setExit: (code: number) => void): Command {
  const program = new Command('revproxy')
    .description(`Reverse proxy with policy-based round-robin load balancing.\nThe old system's single-dash flags (${OLD_FLAGS.map((f) => `-${f}`).join(', ')}) are accepted as well as --port, --id, ...`)
    .version(VERSION_LINE, '-V, --version', 'output the version number and the git revision it was built from (also -v)')
    // `revproxy -v`, as node -v and npm -v: it was an unknown option.
    .addOption(new Option('-v').hideHelp())
    .on('option:v', () => {
      process.stdout.write(`${VERSION_LINE}\n`);
      throw new CommanderError(0, 'commander.version', VERSION_LINE);
    })
    .showHelpAfterError('(add --help for usage)')
    .configureHelp({ showGlobalOptions: false });

  program.addCommand(proxyCommand(setExit));

  withOptions(registryOptions({ ttl: true, advertise: { help: 'with --registry: the address proxies dial to reach this server, without a port (default: --host); an IPv6 one bare or in brackets', portFlag: '--listen' } }), withTlsOptions(withLogOptions(withInspectOptions(
    program
      .command('server')
      .description('run a server of one privacy policy, registered with the reverse proxy')
      .requiredOption('--id <id>', 'this server\'s id')
      .requiredOption('--pp <policy>', 'the privacy policy it serves (also --policy)')
      .addOption(new Option('--policy <policy>').hideHelp())
      .on('option:policy', function (this: Command, v: string) {
        this.setOptionValue('pp', v);
      })
      .addOption(new Option('--listen <port>', 'port to listen on for the proxy\'s requests (0 picks a free one)').default(0).argParser((v) => parsePort(v)))
      .addOption(new Option('--host <address>', 'address to listen on').default(DEFAULT_LISTEN_HOST, DEFAULT_LISTEN_HOST).argParser(hostParser('--listen')))
      .addOption(new Option('--revproc <endpoints>', 'the reverse proxy or proxies to register with: PORT or HOST:PORT, comma-separated, each once').default([{ ...DEFAULT_PROXY }], String(DEFAULT_PROXY_PORT)).argParser(parseEndpoints))
      .addOption(new Option('--behaviour <kind>', 'normal answers; silent accepts requests and never answers; fail answers every request with an error (for fault tests)').choices(['normal', 'silent', 'fail']).default('normal'))
      .option('--handler <module>', 'an ES module whose default export answers each request: async (payload, ctx) => answer (default: the SHA1 hex of the payload)')
      .addOption(new Option('--concurrency <n>', 'requests the handler runs at once; more wait (default: no limit)').argParser(parseIntOption('--concurrency', 1)))
      .addOption(new Option('--queue-limit <n>', 'with --concurrency, requests that may wait for a slot; past it OVERLOADED').default(1024).argParser(parseIntOption('--queue-limit', 0)))
      .addOption(new Option('--queue-timeout <ms>', "with --concurrency, the longest a request waits for a slot; past it OVERLOADED, not run, and the proxy sends it to another server (0 = until the proxy's deadline for the try)").default(0).argParser(parseIntOption('--queue-timeout', 0)))
      .addOption(new Option('--queue-lifo-after <ms>', 'with --concurrency, adaptive LIFO: once the queue has not been empty for this long, a free slot takes the newest waiting request and the oldest wait out --queue-timeout (0 = always the oldest)').default(0).argParser(parseIntOption('--queue-lifo-after', 0)))
      .addOption(new Option('--handler-timeout <ms>', 'a handler not done this long after it started is given up on: its request is answered TIMEOUT, its ctx.signal aborted, its slot freed (0 = never)').default(DEFAULT_HANDLER_TIMEOUT_MS).argParser(parseIntOption('--handler-timeout', 0)))
      .addOption(new Option('--watchdog <ms>', `a server whose event loop has not turned this long (a handler computing without end) logs where it is and exits ${WATCHDOG_EXIT_CODE}, for its supervisor to start it again (0 = never)`).default(DEFAULT_WATCHDOG_MS).argParser(parseIntOption('--watchdog', 0)))
      .addOption(new Option('--delay <ms>', 'every request waits this long before its handler runs, inside its --concurrency slot (for tests and benchmarks)').default(0).argParser(parseIntOption('--delay', 0)))
      .addOption(new Option('--drain-timeout <ms>', 'on SIGTERM, the longest wait for the proxies to let go; requests still running then are cut off (default: --handler-timeout plus 5000, 35000 with its default)').argParser(parseIntOption('--drain-timeout', 0)))
      .addOption(new Option('--tcp-keepalive <ms>', 'TCP keepalive on each registration connection: probes after this long without traffic, one a second, ten unanswered end it and the server registers again (finds a proxy cut off without a word) (0 = off)').default(DEFAULT_TCP_KEEPALIVE_MS).argParser(parseIntOption('--tcp-keepalive', 0)))
      .addOption(new Option('--max-frame <bytes>', "largest frame taken from a proxy: at least the proxies' --max-frame, or a request near their limit closes the link it is sent on, then the next; answers are kept within the smaller of it and the proxy's (ANSWER_TOO_LARGE past it)").default(DEFAULT_MAX_FRAME_BYTES).argParser(parseIntOption('--max-frame', 1024)))
      .addOption(new Option('--max-buffered-bytes <bytes>', `bytes held for all peers together (partial frames, unread answers, requests not answered yet); past it the connections holding the most are closed with OVERLOADED; requests may take half of it, one connection's requests a 32nd (then its reads pause), its answers not read yet a 32nd (then its requests wait until it reads them) (0 = no limit; default: ${DEFAULT_BUFFER_BUDGET}, or ${BUDGET_UNDER_A_LIMIT})`).argParser(parseIntOption('--max-buffered-bytes', 0)))
      .addOption(new Option('--max-connections <n>', `connections kept open at once; past it each new one is closed at once (default: ${DEFAULT_MAX_CONNECTIONS}, or fewer when V8's heap is small: as many as it holds at ${HEAP_PER_CONNECTION / 1024} KiB each past ${HEAP_RESERVE / 1048576} MiB and half of --max-buffered-bytes, ${MIN_DEFAULT_CONNECTIONS} or more)`).argParser(parseIntOption('--max-connections', 1)))
      .addOption(new Option('--max-conns-per-peer <n>', 'connections from one address at once (0 = no limit; default: none on loopback, 1024 on any other address)').argParser(parseIntOption('--max-conns-per-peer', 0)))
      .addOption(new Option('--max-conn-rate-per-peer <n>', 'new connections one address may open a second; past it each is closed as it comes, before a TLS handshake, until the address slows down (0 = no limit)').default(0).argParser(parseIntOption('--max-conn-rate-per-peer', 0)))
      .addOption(new Option('--max-tls-handshakes <n>', 'TLS handshakes under way at once, a sixteenth of them (at least 1) for one address; a connection past either waits its turn, closed if it waits longer than 10 s, or at once when too many wait (0 = no limit)').default(DEFAULT_MAX_TLS_HANDSHAKES).argParser(parseIntOption('--max-tls-handshakes', 0)))
      .addOption(new Option('--token <secret>', "the proxy's registration secret (prefer the environment variable to the command line)").env('REVPROXY_TOKEN'))
      .addOption(wireOption('register the old way (setup on its own connection, then closed), for the old Python proxy'))
      .addOption(new Option('--plain-registration', "with --tls-cert: register with the proxies over plain TCP while this server's port serves TLS, for a proxy whose own port serves plain TCP and that dials its servers over TLS (its upstream_tls); the registration and its --token then cross the network in clear"))
      .addHelpText('after', '\nWith --registry etcd://HOST:PORT the server registers once, in etcd, instead of with each proxy:\nevery proxy watching the registry takes it (see README, "Running a fleet").\nA lost proxy is retried with backoff and the server registers again.\nSIGTERM, SIGINT or SIGQUIT drains: tells the proxies it is leaving, finishes requests in flight, exits 0.\nA second one stops it at once (the same signal within 100 ms is a copy of the first: GNU timeout sends two).\nSIGHUP reads the TLS files again (renewed certificates): new connections and registrations use them;\n--registry-cert, --registry-key and --registry-ca make a new etcd client, the registration moved to it on its lease.\nA handler that throws an error with a string code answers the client HANDLER_ERROR with that code\n(not retried elsewhere; Node\'s own, such as ENOENT, answer HANDLER_FAILED and are logged); ctx.signal aborts when the proxy stops waiting for the answer.\n\nExample:\n  revproxy server -id 100 -pp 111 -listen 2105 -revproc 2100\n  revproxy server -id 100 -pp 111 -revproc 2100,2200\n  revproxy server -id 500 -pp 111 --handler examples/privacy-handler.js --concurrency 8\n  revproxy server -id 100 -pp 111 --registry etcd://127.0.0.1:2379'),
  )))).action(async function (this: Command, o: LogFlags & TlsFlags & InspectFlags & RegistryFlags & { token?: string } & {
    id: string; pp: string; listen: number; host: string; revproc: Endpoint[]; behaviour: Behaviour; drainTimeout?: number; delay: number; maxFrame: number; wire: 'frames' | 'json'; plainRegistration?: boolean;
    handler?: string; concurrency?: number; queueLimit: number; queueTimeout: number; queueLifoAfter: number; handlerTimeout: number; watchdog: number; tcpKeepalive: number; maxBufferedBytes?: number; maxConnections?: number; maxConnsPerPeer?: number; maxConnRatePerPeer: number; maxTlsHandshakes: number;
  }) {
    const policy = o.pp;
    const registry = registryFromFlags(o);
    if (registry && this.getOptionValueSource('revproc') !== 'default') throw new UsageError('--revproc and --registry do not go together: with --registry the server registers in etcd, and every proxy watching it takes it');
    if (o.plainRegistration && !o.tlsCert) throw new UsageError('--plain-registration goes with --tls-cert: it registers in plain TCP a server whose port serves TLS (without --tls-cert the server registers in plain TCP anyway)');
    if (o.plainRegistration && registry) throw new UsageError('--plain-registration and --registry do not go together: through the registry the server dials no proxy (the proxies dial it, over TLS with their upstream_tls)');
    const logger = makeLogger(`server ${o.id}`, o);
    const unwarn = logProcessWarnings(logger);
    logStartFailuresTo(`server ${o.id}`, o.logFormat);
    warnIfPid1(logger);
    // Its certificate serves its port. It presents it too when it registers with a proxy over TLS (not through etcd, nor with
    // --plain-registration), which asks for one when it has tls.ca (mutual TLS): fit for clientAuth, or warned of (`tlsWarnings`).
    const ownTls = (): TlsMaterial | undefined => tlsFromFlags(o, undefined, ['serverAuth']);
    const tls = ownTls();
    // etcd's client certificate and CA (--registry-cert, --registry-ca) are read again on SIGHUP as the server's own are.
    const registryFiles = o.registryCert || o.registryCa ? { cert: o.registryCert, ca: o.registryCa } : undefined;
    const certsOf = (own: typeof tls, etcd: typeof tls) => [...loadedCerts({ cert: o.tlsCert, ca: o.tlsCa, crl: o.tlsCrl }, own, { cert: '--tls-cert', ca: '--tls-ca', crl: '--tls-crl' }), ...loadedCerts(registryFiles, etcd, { cert: '--registry-cert', ca: '--registry-ca' })];
    let certs = certsOf(tls, registry?.tls);
    // Said at start, at each reload, and as each comes within its warning window or ends while the server runs.
    const expiry = new ExpiryWatch(logger, () => certs);
    expiry.check();
    const crlWarn = (material: typeof tls): void => {
      for (const why of crlWarnings(material, { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }, o.tlsCrl)) logger.warn('tls_crl_problem', why, { setting: '--tls-crl' });
    };
    crlWarn(tls);
    const warningsOf = (own: typeof tls, etcd: typeof tls) => [
      ...tlsWarnings(own, { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' }, { paths: { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa }, mayPresent: !registry && !o.plainRegistration }),
      ...tlsWarnings(etcd, REGISTRY_FLAGS, { paths: { cert: o.registryCert, key: o.registryKey, ca: o.registryCa }, mayPresent: true }),
    ];
    warnTls(logger, warningsOf(tls, registry?.tls));
    const files = [...(tls ? [`--tls-cert, --tls-key, --tls-ca${o.tlsCrl ? ', --tls-crl' : ''}`] : []), ...(registryFiles ? ['--registry-cert, --registry-key, --registry-ca'] : [])].join('; ');
    // A daemon's SIGHUP means reload: the TLS files (renewed certificates) for the next handshakes and dials, and etcd's.
    // Its other settings are its flags; Node's default would end the server without its drain.
    let server: ServerHandle | undefined;
    const reload = async (s: ServerHandle): Promise<void> => {
      let next, etcd;
      try {
        next = tls && ownTls();
        etcd = registryFiles && registryFromFlags(o)?.tls;
        // etcd's first, tried against etcd: a set it refuses refuses the reload, the server's own files with it.
        const renewal = etcd && (await s.renewRegistryTls(etcd));
        if (renewal && !renewal.tried) logger.warn('registry_tls_untried', `The renewed --registry-cert/--registry-ca could not be tried against etcd (${renewal.why}): the registration's etcd client uses them from now on, and etcd checks them when it answers again`, {});
        // Checked again as a renewal: never thrown out of the signal handler, should the two checks part.
        if (next) s.renewTls(next);
      } catch (err) {
        return logger.error('reload_refused', `Reload refused, still using the TLS files read before: ${(err as Error).message}`, {});
      }
      logger.info('reload', `Reloaded the TLS files (${files}): new connections and registrations use them, open ones keep theirs${o.tlsCrl ? ' (but a proxy\'s whose certificate --tls-crl now revokes, closed: tls_revoked lines)' : ''}${etcd ? '; the registration moved to a new connection to etcd, its lease kept' : ''}`, {});
      certs = certsOf(next, etcd);
      expiry.check(true);
      crlWarn(next);
      warnTls(logger, warningsOf(next, etcd));
    };
    let reloading = Promise.resolve();
    // One sent while the CLI loaded (cli/early-signals.mjs) or the server started is done once it listens.
    let reloadOnceUp = false;
    const hup = (): void => {
      if (!files) return logger.warn('signal_ignored', `SIGHUP ignored: ${NOTHING_TO_RELOAD}`, { signal: 'SIGHUP' });
      if (!server) {
        if (!reloadOnceUp) logger.info('reload_pending', 'SIGHUP while the server starts: the TLS files are read again once it listens', {});
        reloadOnceUp = true;
        return;
      }
      const s = server;
      reloading = reloading.then(() => reload(s));
    };
    process.on('SIGHUP', hup);
    const unignore = ignoreUserSignals(logger, files ? `send SIGHUP to reload the TLS files (${files}), SIGTERM to drain and stop; restart it to change its other settings` : NOTHING_TO_RELOAD);
    for (const signal of takeEarlySignals(['SIGHUP', 'SIGUSR1', 'SIGUSR2'])) process.emit(signal, signal);
    const stdoutHeld = o.handler !== undefined ? consoleToLog(logger) : undefined;
    // Watching from before the handler module is imported: its top-level code may loop too.
    let planned: (() => void) | undefined;
    const doing = (): string => server?.actor.getSnapshot().context.runner.stuckOn() ?? "the server was starting: the handler module's top-level code computes";
    const watchdog = o.watchdog > 0 ? startWatchdog({ limitMs: o.watchdog, logger, doing, beforeExit: () => planned?.() }) : undefined;
    const handler = o.handler === undefined ? undefined : await loadHandlerStoppable(o.handler, logger);
    const insp = await startInspection(o, `server ${o.id}`);
    server = await startServer({
      id: o.id, policy, listenPort: o.listen, listenHost: o.host, proxies: o.revproc, behaviour: o.behaviour,
      drainTimeoutMs: o.drainTimeout, delayMs: o.delay, maxFrameBytes: o.maxFrame, logger, waitForRegistration: false, inspect: insp.attach.inspect,
      token: o.token, tls, plainRegistration: o.plainRegistration, wire: o.wire, handler, concurrency: o.concurrency, queueLimit: o.queueLimit, queueTimeoutMs: o.queueTimeout, queueLifoAfterMs: o.queueLifoAfter, handlerTimeoutMs: o.handlerTimeout, tcpKeepAliveMs: o.tcpKeepalive, maxBufferedBytes: o.maxBufferedBytes, maxConnections: o.maxConnections, maxConnectionsPerPeer: o.maxConnsPerPeer, maxConnRatePerPeer: o.maxConnRatePerPeer, maxTlsHandshakes: o.maxTlsHandshakes, registry,
    });
    if (reloadOnceUp) hup();
    planned = sayUnplannedExit(logger);
    try {
      await runUntilStopped(server.actor, server.stop, logger);
    } finally {
      expiry.stop();
      planned();
      await watchdog?.stop();
    }
    unignore();
    process.off('SIGHUP', hup);
    await insp.close();
    // A piece of a line the handler module wrote last, without its end: a line of its own before the log ends.
    stdoutHeld?.();
    await unwarn();
    await logger.end();
    const code = server.actor.getSnapshot().value === 'failed' ? 1 : 0;
    setExit(code);
    exitOnceStopped(code, () => makeLogger(`server ${o.id}`, o), undefined, o.handler !== undefined);
  });

  withOptions(registryOptions(), withTlsOptions(withLogOptions(withInspectOptions(
    program
      .command('client')
      .description('send packets through the reverse proxy and verify every answer')
      .option('--id <id>', 'client id: names its log lines, and is the srcid of packets that carry none (default: the first packet\'s srcid)')
      .addOption(new Option('--revproc <endpoints>', 'the reverse proxy: PORT or HOST:PORT; a comma-separated list fails over in order; etcd://HOST:PORT finds the live proxies in the registry').default([{ ...DEFAULT_PROXY }], String(DEFAULT_PROXY_PORT)).argParser((v) => (isRegistryUrl(v) ? v : parseEndpoints(v))))
      .requiredOption('--pkt <paths...>', 'packet files (JSON), or folders of them')

      .addOption(new Option('--timeout <ms>', 'time to wait for each answer').default(DEFAULT_CLIENT_TIMEOUT_MS).argParser(parseIntOption('--timeout', 1)))
      .addOption(new Option('--window <n>', 'requests in flight at once on the connection (with --wire json always 1)').default(64).argParser(parseIntOption('--window', 1)))
      .addOption(new Option('--max-frame <bytes>', "the proxy's --max-frame: a request that would not fit is refused here (BAD_REQUEST), not sent").default(DEFAULT_MAX_FRAME_BYTES).argParser(parseIntOption('--max-frame', 1024)))
      .option('--json', 'print the results as one JSON object at the end: each packet\'s, and the counts answered, wrong (not the payload\'s SHA1) and failed (no answer), which add up to total')
      .option('--no-verify', 'print the answers without checking them against the SHA1 of the payload (answers not shaped like a SHA1 are never checked)')
      .addOption(wireOption('speak the old format, one request at a time, for the old Python proxy'))
      .addHelpText('after', '\nExit status: 0 when every request got an answer and every checked answer is correct, 1 otherwise.\nWith --inspect the page stays up after the answers are in, until Ctrl-C.\n\nExample:\n  revproxy client -id 1 -revproc 2100 -pkt pktfiles/1.json\n  revproxy client -id 1 --revproc etcd://127.0.0.1:2379 -pkt pktfiles/1.json'),
  )))).action(async function (this: Command, o: LogFlags & TlsFlags & InspectFlags & RegistryFlags & { id: string; revproc: Endpoint[] | string; pkt: string[]; timeout: number; window: number; maxFrame: number; json?: boolean; verify: boolean; wire: 'frames' | 'json' }) {
    if (o.wire === 'json' && this.getOptionValueSource('window') === 'cli') throw new UsageError('--window does not go with --wire json: the old format carries one request at a time on a connection, so its window is always 1');
    const packets = loadPackets(o.pkt, o.id ?? '0');
    const id = o.id ?? packets[0]?.srcid ?? '0';
    const logger = makeLogger(`client ${id}`, o.json ? { ...o, logFormat: 'text', logLevel: 'silent' } : o);
    const unwarn = logProcessWarnings(logger);
    const insp = await startInspection(o, `client ${id}`);
    if (typeof o.revproc === 'string') {
      if (o.registry !== undefined) throw new UsageError('give the registry once: --revproc etcd://... or --registry etcd://...');
      o.registry = o.revproc;
    }
    const registry = registryFromFlags(o);
    const results = await runClient({
      id, proxies: typeof o.revproc === 'string' ? undefined : o.revproc, registry, packets, tls: tlsFromFlags(o), timeoutMs: o.timeout, window: o.window, maxFrameBytes: o.maxFrame, wire: o.wire, logger,
      inspect: insp.attach.inspect, verify: o.verify ? 'auto' : false,
    });
    const sum = clientSummary(results);
    if (o.json) process.stdout.write(`${JSON.stringify(summarise(results, packets.map((p) => p.file)))}\n`);
    else if (results.length > 1 || sum.failed || sum.wrong) logger.info('summary', sum.line, { verified: sum.verified, answered: sum.answered, wrong: sum.wrong, total: sum.total, failed: sum.failed, retryable: sum.retryable });
    setExit(sum.failed || sum.wrong ? 1 : 0);
    // The log ends first: its last lines (the summary) were printed after the inspector's "Ctrl-C exits".
    await unwarn();
    await logger.end();
    await insp.hold();
    await insp.close();
  });

  withLogOptions(withInspectOptions(
    program
      .command('demo')
      .description("run the seed's demo in one terminal: proxy, servers 100/111 200/222 300/111 400/222, clients 1-6")
      .addOption(new Option('-p, --port <port>', 'proxy port; servers listen on port+5, +10, +15, +20 (0 picks free ports)').default(DEFAULT_PROXY_PORT).argParser((v) => parsePort(v)))
      .option('--pkt <dir>', 'folder with the clients\' packet files, 1.json to 6.json', new URL('../pktfiles', import.meta.url).pathname)
      .option('--keep', 'keep the proxy and servers running after the clients finish (Ctrl-C stops); implied by --inspect'),
  ), 'debug').action(async (o: LogFlags & InspectFlags & { port: number; pkt: string; keep?: boolean }) => {
    const insp = await startInspection(o, 'demo');
    setExit(await runDemo({ ...o, keep: o.keep || insp.url !== undefined, attach: insp.attach }));
    await insp.close();
  });

  program.addCommand(inspectCommand(setExit));
  program.addCommand(benchCommand(setExit));
  program.addCommand(loadCommand(setExit));
  program.addCommand(scenarioCommand(setExit));
  for (const c of program.commands) markRequired(c);

  return program;
}

/**
 * `--help` shows the options a command cannot run without: in its usage line, and "(required)" beside each.
 * A misspelt option is named before a missing required one: commander checks for the missing one first,
 * so `client --timout 5` said only that --pkt was missing, never that --timout is not an option.
 */
function markRequired(cmd: Command): void {
  const required = cmd.options.filter((o) => o.mandatory);
  if (required.length === 0) return;
  // What commander could not take is in `args`; its first word with a dash is the first unknown option.
  // Both methods are commander's own, left out of its types.
  const c = cmd as Command & { missingMandatoryOptionValue(o: Option): void; unknownOption(flag: string): void };
  const missing = c.missingMandatoryOptionValue.bind(c);
  c.missingMandatoryOptionValue = (o: Option): void => {
    const unknown = c.args.find((a) => /^-./.test(a) && a !== '--');
    if (unknown !== undefined) c.unknownOption(unknown);
    missing(o);
  };
  const args = cmd.registeredArguments.map((a) => (a.required ? `<${a.name()}${a.variadic ? '...' : ''}>` : `[${a.name()}${a.variadic ? '...' : ''}]`));
  cmd.usage([...required.map((o) => o.flags.replace(/^-\w, /, '')), '[options]', ...args].join(' '));
  cmd.configureHelp({
    ...cmd.configureHelp(),
    optionDescription(this: Help, o: Option): string {
      const text = Help.prototype.optionDescription.call(this, o);
      return o.mandatory ? `${text} (required)` : text;
    },
  });
}

/**
 * `revproxy client`'s counts, and its summary line: `2/5 answered, 1 answered wrong, 2 failed (1 retryable), ...`.
 * Each request counts once: `answered` (right, or not checked), `wrong` (an answer checked and found not the
 * payload's SHA1) or `failed` (no answer), adding up to `total`; `retryable` counts the failed ones the failure lines
 * say `CODE (retryable)` of (`Result.retryable`: no handler ran them, so they may be sent again). A wrong answer was
 * counted both answered and failed (`--json`), and the text said only `1/2 answers verified`.
 */
export function clientSummary(results: readonly Result[]): { verified: number; answered: number; wrong: number; total: number; failed: number; retryable: number; line: string } {
  const total = results.length;
  const wrong = results.filter((r) => r.answer !== undefined && r.correct === false).length;
  const answered = results.filter((r) => r.answer !== undefined && r.correct !== false).length;
  const checked = results.filter((r) => r.correct !== undefined).length;
  const verified = results.filter((r) => r.correct).length;
  const failed = total - answered - wrong;
  const retryable = results.filter((r) => r.retryable === true).length;
  const wrongly = wrong ? `, ${wrong} answered wrong (not the payload's SHA1)` : '';
  const line = checked === total
    ? `${verified}/${total} answers verified${wrongly}`
    : `${answered}/${total} answered${wrongly}${failed ? `, ${failed} failed (${retryable} retryable)` : ''}${checked ? `, ${verified} of ${checked} checked answers verified` : answered ? ' (answers not checked)' : ''}`;
  return { verified, answered, wrong, total, failed, retryable, line };
}

function summarise(results: Result[], files: string[]) {
  // Bytes print as base64, marked so they are not taken for text.
  const text = (p: Payload | undefined) => (p === undefined || typeof p === 'string' ? p : { base64: Buffer.from(p).toString('base64') });
  const { verified, answered, wrong, failed, retryable } = clientSummary(results);
  return {
    verified,
    answered,
    wrong,
    total: results.length,
    failed,
    retryable,
    results: results.map((r, i) => ({
      file: files[i], ...r.packet, payload: text(r.packet.payload), server: r.server, answer: text(r.answer),
      hash: r.correct === undefined ? undefined : r.answer, correct: r.correct ?? false, checked: r.correct !== undefined,
      error: r.error, appcode: r.appCode, retryable: r.retryable, message: r.message,
    })),
  };
}

/** Run the CLI; returns the process exit code. */
export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = buildProgram((c) => (code = c));
  program.exitOverride();
  for (const c of program.commands) c.exitOverride().showHelpAfterError('(add --help for usage)');
  // The daemons take the signals caught while the CLI loaded (cli/early-signals.mjs) as they install
  // their handlers; every other command has Node's defaults back as it starts.
  program.hook('preAction', (_, action) => {
    if (!SIGNAL_TAKERS.includes(action.name())) releaseEarlySignals();
    checkSecrets(action);
  });
  try {
    await program.parseAsync(normaliseArgv(argv, flagTable(program)), { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 1 ? 2 : err.exitCode;
    if (err instanceof UsageError) {
      process.stderr.write(`revproxy: ${err.message}\n(add --help for usage)\n`);
      return 2;
    }
    const known = err instanceof StartError || err instanceof FileError || (err instanceof RevproxyError && err.code === LocalCode.BAD_FILE);
    // Anything else that stops a command from starting (a port in use, a file that cannot be
    // written, bad certificate contents): one line, no stack; REVPROXY_DEBUG=1 shows the stack.
    if (!known && process.env.REVPROXY_DEBUG) throw err;
    const message = known ? (err as Error).message : describeFailure(err);
    const log = startFailureLog();
    if (log) log.error('failed', message, { exitCode: 1 });
    else process.stderr.write(`revproxy: ${message}\n`);
    return 1;
  } finally {
    releaseEarlySignals({ resend: false });
  }
}

/** The commands that handle the signals caught while the CLI loaded (takeEarlySignals). */
const SIGNAL_TAKERS = ['proxy', 'server'];

/** The options of every command, for `normaliseArgv`. */
function flagTable(program: Command): FlagTable {
  const all = new Set<string>();
  const valued = new Set<string>();
  for (const cmd of [program, ...program.commands]) {
    for (const o of cmd.options) {
      for (const f of [o.long, o.short]) {
        if (!f) continue;
        all.add(f);
        if (o.required) valued.add(f);
      }
    }
  }
  return { takesValue: (f) => valued.has(f), known: (f) => all.has(f) };
}

function describeFailure(err: unknown): string {
  let e = err as (Error & { code?: string; cause?: unknown }) | undefined;
  // XState wraps errors thrown inside actors: the useful message is the innermost one.
  while (e && e.cause instanceof Error) e = e.cause as Error & { code?: string; cause?: unknown };
  const msg = e?.message ?? String(err);
  return msg.replace(/\s*\n\s*/g, ' ').trim();
}

// `revproxy proxy --help | head -2` closes our stdout early: that is not an error.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});
