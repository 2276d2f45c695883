/**
 * `revproxy load`: puts load on a running proxy (or on servers directly) with
 * the bench's load generator (bench/loadgen.ts), and reports requests/s,
 * latency percentiles from an HDR histogram, and errors by code.
 * Registered in cli/main.ts with one line.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { CLOSED_AFTER, CLOSED_UNHEARD, retryableLoadCode, runLoad, type LiveCounters, type LoadResult } from '../bench/loadgen.js';
import { cliProgress } from '../bench/progress.js';
import { DEFAULT_PROXY, type Endpoint } from '../actors/server.js';
import { fileLimits } from '../actors/port-limits.js';
import { DEFAULT_PROXY_PORT, hostPort } from '../transport/address.js';
import { closedAtOnce, describeLookupError, describeTlsError } from '../transport/tls.js';
import { parseEndpoints, parseIntOption, tlsFromFlags, tlsOptions, UsageError, type TlsFlags } from './common.js';

interface LoadFlags extends TlsFlags {
  revproc: Endpoint[];
  policy: string[];
  connections: number;
  inflight: number;
  duration: number;
  requests?: number;
  rate?: number;
  warmup: number;
  connectionPerRequest?: boolean;
  payloadSize?: number;
  timeout: number;
  connectTimeout: number;
  json?: boolean;
  progress: boolean;
}

/** What `--json` prints: the options that shaped the run, then what it measured. */
export interface LoadReport {
  targets: string[];
  policies: string[];
  connections: number;
  inflight: number;
  mode: 'closed loop' | 'open loop' | 'connection per request';
  /** Open loop: requests per second asked for. */
  rate: number | null;
  /** A fixed count, or null for a duration. */
  requests: number | null;
  /** Seconds of sending after the warm-up, or null for a fixed count. */
  durationS: number | null;
  warmupS: number;
  sent: number;
  /** Answers whose payload was SHA1 of what was sent. */
  ok: number;
  wrongHash: number;
  /**
   * Failed requests by code, each request once: the proxy's ERROR codes, and CONNECTION_LOST, NO_ANSWER, BAD_FRAME
   * (with --connection-per-request also UNEXPECTED_ANSWER: the one answer was neither an ACK nor an ERROR);
   * and CONNECT_FAILED: connections that could not be opened (with --connection-per-request each is a request's).
   * `sent` = `ok` + `wrongHash` + these (less CONNECT_FAILED of connections kept open).
   */
  errors: Record<string, number>;
  /**
   * For each code of `errors` (since 2026-12-07): whether its requests may be sent again without running twice
   * (docs/PROTOCOL.md, "Sending a request again"): `NO_SERVER` and `CONNECT_FAILED` yes (no handler ran them); a code
   * that leaves a request at a handler (`TIMEOUT`, `OVERLOADED`, ...) or unanswered in flight (`CONNECTION_LOST`,
   * `NO_ANSWER`, `BAD_FRAME`), or fails it again the same way (`BAD_REQUEST`), no.
   */
  retryable: Record<string, boolean>;
  /** Answers to no request in flight (again to one answered already, to a seq never sent, a PONG unasked): counted apart from the requests; any makes the exit status 1. */
  unexpected: number;
  /** What the first of them was, or null. */
  firstUnexpected: string | null;
  /** What the first failure of each code said. */
  firstError: Record<string, string>;
  /** Targets (`host:port`) a connection to could not be opened. */
  unreachable: string[];
  /** Connections open at once at the peak. */
  connected: number;
  /** The measured window, seconds. */
  seconds: number;
  /** Right answers that came in the window. */
  answered: number;
  /** Right answers per second in the window (`answered` / `seconds`). */
  rps: number;
  /** Latency of the right answers to the requests sent in the window, answered in it or after, milliseconds (open loop: from when each request was due). */
  latencyMs: LoadResult['latency'];
  /** The target closed every connection this many seconds into the window, which ended there (connections are not opened again); null when they stayed open. */
  closedAllAfterS: number | null;
  /** Who closed them then: 'target', 'load' (each after the target sent what is not a revproxy frame, BAD_FRAME) or 'both'; null when they stayed open. */
  closedAllBy: 'target' | 'load' | 'both' | null;
  /** The signal (SIGINT: Ctrl-C, or SIGTERM) that stopped the run before its end, or null. */
  stoppedBy: string | null;
}

/** `10`, `10s`, `500ms`, `2m` -> seconds. */
export function parseSeconds(name: string, min: number) {
  return (value: string): number => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(value.trim());
    const s = m ? Number(m[1]) * (m[2] === 'ms' ? 0.001 : m[2] === 'm' ? 60 : 1) : NaN;
    if (!(s >= min)) throw new InvalidArgumentError(`${name} must be a time such as 10, 10s, 500ms or 2m (at least ${min} s), got '${value}'`);
    return s;
  };
}

function parsePolicies(value: string): string[] {
  const list = value.split(',').map((p) => p.trim()).filter(Boolean);
  if (list.length === 0) throw new InvalidArgumentError('give at least one privacy policy, e.g. --policy 111,222');
  return list;
}

/** Payloads of `size` bytes, 16 different ones so the servers' hashes are checked against more than one. */
function payloadsOf(size: number): string[] {
  return Array.from({ length: 16 }, (_, i) => `${i.toString(16)}${'x'.repeat(size)}`.slice(0, size).padEnd(size, '.'));
}

const fmt = (n: number): string => Math.round(n).toLocaleString('en');
const ms = (v: number): string => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));

/** What each failure means, and what to do about it. */
function hint(code: string, f: LoadFlags, first = '', unreachable: string[] = []): string {
  const at = f.revproc.map((e) => hostPort(e.host, e.port)).join(', ');
  const target = f.revproc[0]!;
  const port = target.port;
  switch (code) {
    case 'CONNECT_FAILED':
      if (first.startsWith('EMFILE')) return outOfFiles(f);
      if (first.startsWith('TLS_HANDSHAKE_TIMEOUT ')) {
        return `connected to ${unreachable.length ? unreachable.join(', ') : at}, but the TLS handshake was not answered within ${f.connectTimeout} ms (--connect-timeout): does the target serve TLS? A plain listener says nothing to a TLS hello: leave out --tls-ca (and --tls-cert) to dial it plain`;
      }
      if (f.tlsCa || f.tlsCert) {
        // 'ERR_SSL_WRONG_VERSION_NUMBER 127.0.0.1:2100' (a plain listener answered the TLS hello), or a certificate's code.
        // The code alone is kept: OpenSSL's reason is its ERR_SSL_ code in words, which describeTlsError reads.
        const code = first.split(' ')[0]!;
        const reason = code.replace(/^ERR_SSL_/, '').replace(/_/g, ' ').toLowerCase();
        const said = describeTlsError({ code, message: reason } as NodeJS.ErrnoException);
        if (said !== reason) return `could not connect to ${unreachable.length ? unreachable.join(', ') : at} over TLS: ${said}`;
      }
      if (first.startsWith('ETIMEDOUT ')) {
        return `no answer from ${unreachable.length ? unreachable.join(', ') : at} within ${f.connectTimeout} ms (--connect-timeout): is the host up, and does no firewall drop the connection? A listener with a full backlog drops new connections too`;
      }
      if (/^(ENOTFOUND|EAI_AGAIN|EAI_FAIL) /.test(first)) {
        // `first` is 'ENOTFOUND name:port': a name that failed, so no IPv6 address in brackets.
        const [errno, where = ''] = first.split(' ');
        return `${describeLookupError({ code: errno } as NodeJS.ErrnoException, where.slice(0, where.lastIndexOf(':')))}; or give the proxy's address with --revproc HOST:PORT`;
      }
      return `could not connect to ${unreachable.length ? unreachable.join(', ') : at}: start the proxy there (revproxy proxy --port ${unreachable[0]?.split(':').pop() ?? port}) or give its address with --revproc HOST:PORT`;
    case 'NO_SERVER': {
      // Of several policies, the one the proxy named (it was always the first given, which may be served).
      // The proxy's words (routing.ts: `route` for a policy it has never had, `noServer`): the policy, then what its servers are, when it has some.
      const said = /^no (?:server is registered for|live server serves) privacy policy (.+?)(?:: (its (?:one server, |\d+ servers: ).*))?$/s.exec(first);
      const policy = said?.[1] ?? f.policy[0];
      const which = f.policy.length > 1 ? `policy ${policy}` : 'the policy';
      if (said?.[2]) return `no server of ${which} takes requests now, though the proxy has some (${said[2]}): a drained one is put back with the inspector's enable (or POST /api/members/enable on its --inspect port), an ejected or down one once it answers again, a refused one once its certificate or the proxy's upstream_tls changes (the proxy's log says why each went)`;
      return `no server of ${which} is registered with the proxy: start one (revproxy server --id 100 --pp ${policy} --revproc ${target.host === '127.0.0.1' ? port : hostPort(target.host, port)}, or with the --registry its fleet's servers use) or name another --policy`;
    }
    case 'OVERLOADED':
      return "the proxy refused requests at one of its limits (--queue-limit, --max-server-inflight): ask for less (--connections, --inflight, --rate) or raise the proxy's limits";
    case 'TIMEOUT':
      return "no answer in time - the proxy's --timeout, or each try's --try-timeout (by default a third of it: its message says which fired) - the servers are too slow for this load, or stuck";
    case 'UPSTREAM_FAILED':
      return 'the server chosen for a request failed before answering (and the retries did too): see the proxy\'s and the servers\' logs';
    case 'SHUTTING_DOWN':
      return 'the proxy is draining and takes no new requests';
    case 'BAD_REQUEST':
      if (/over the limit/.test(first)) return `the requests are larger than the target takes (its --max-frame, 1 MiB by default): lower --payload-size${f.payloadSize ? ` (${f.payloadSize})` : ''}`;
      return 'the target refused the requests as invalid: is it a revproxy proxy or server speaking frames?';
    case 'BAD_FRAME':
      return 'an answer was not a revproxy frame: is the target a revproxy proxy or server (the old JSON wire is not supported)?';
    case 'CONNECTION_LOST':
      // As the client says of a proxy that closes before answering its first PING (actors/client.ts, CLOSED_AT_ONCE).
      if (first === CLOSED_UNHEARD) return `the target accepted connections and closed them before sending anything: ${closedAtOnce()}`;
      if (first.startsWith(CLOSED_AFTER)) return 'the target said why it closes a connection (an ERROR naming no request, the first below), then closed it: the requests in flight there were not answered, and may have run';
      return "the target closed connections with requests in flight: its log says why (a limit such as --max-conns-per-peer, or it stopped)";
    case 'NO_ANSWER':
      return `requests still unanswered ${f.timeout} ms after the last answer: the target stopped answering (--timeout waits longer)`;
    case 'UNEXPECTED_ANSWER':
      return "the connection's one answer was neither an ACK nor an ERROR: is the target a revproxy proxy or server?";
    case 'HANDLER_ERROR':
      return "the servers' handler refused the requests with an application error of its own (the first one's message below): load a policy whose handler takes these payloads (the default SHA1 handler takes any)";
    default:
      // An errno (ECONNRESET), Node's ERR_ codes and SOCKET_ERROR are the socket's; any other code is one the target answered with.
      return /^(E[A-Z0-9]+|ERR_[A-Z0-9_]+|SOCKET_ERROR)$/.test(code) ? 'a socket error' : "an error the target answered with: see the proxy's and the servers' logs";
  }
}

/**
 * Every connection is a file descriptor of this process: past its open-files limit (often 1024)
 * the system refuses the socket, and the target is not to blame.
 */
function outOfFiles(f: LoadFlags): string {
  const files = fileLimits();
  const need = f.connections + 64;
  const limit = files ? `it may open ${files.soft} files (ulimit -n)` : 'it reached its open-files limit (ulimit -n)';
  return `this process ran out of file descriptors (EMFILE): ${limit}, and --connections asks for ${f.connections}: raise the limit in this shell (ulimit -n ${need}${files && files.hard < need ? `, as root: the hard limit is ${files.hard}` : ''}) or lower --connections`;
}

export function loadReport(r: LoadResult, f: LoadFlags, stoppedBy: string | null = null): LoadReport {
  return {
    targets: f.revproc.map((e) => hostPort(e.host, e.port)),
    policies: f.policy,
    connections: f.connections,
    inflight: f.connectionPerRequest ? 1 : f.inflight,
    mode: f.connectionPerRequest ? 'connection per request' : f.rate !== undefined ? 'open loop' : 'closed loop',
    rate: f.rate ?? null,
    requests: f.requests ?? null,
    durationS: f.requests === undefined ? f.duration : null,
    warmupS: f.requests === undefined ? f.warmup : 0,
    sent: r.sent,
    ok: r.ok,
    wrongHash: r.wrongHash,
    errors: r.errors,
    retryable: Object.fromEntries(Object.keys(r.errors).map((code) => [code, retryableLoadCode(code)])),
    unexpected: r.unexpected,
    firstUnexpected: r.firstUnexpected ?? null,
    firstError: r.firstError,
    unreachable: r.unreachable,
    connected: r.connected,
    seconds: r.windowMs / 1000,
    answered: r.answered,
    rps: r.rps,
    latencyMs: r.latency,
    closedAllAfterS: r.closedAllAfterMs === undefined ? null : r.closedAllAfterMs / 1000,
    closedAllBy: r.closedAllBy ?? null,
    stoppedBy,
  };
}

/** The `ended` line: every connection closed, by whom, and what that suggests. */
function closedAll(rep: LoadReport): string {
  const at = `${rep.closedAllAfterS!.toFixed(2)} s into the run, which ended there: load does not open connections again`;
  if (rep.closedAllBy === 'load') return `load closed every connection ${at} - each after the target sent what is not a revproxy frame (BAD_FRAME above): is it a revproxy proxy or server?`;
  if (rep.closedAllBy === 'both') return `every connection was closed ${at} - load closed those whose target sent what is not a revproxy frame (BAD_FRAME above), the target the others`;
  return `the target closed every connection ${at} (a proxy that restarted, or stopped)`;
}

function formatText(rep: LoadReport, f: LoadFlags): string {
  const l = rep.latencyMs;
  // Kept open, a connection that could not be opened sent no request: its CONNECT_FAILED counts a connection, not a failed request.
  const perRequest = rep.mode === 'connection per request';
  const failed = Object.entries(rep.errors).reduce((a, [code, n]) => a + (code === 'CONNECT_FAILED' && !perRequest ? 0 : n), 0);
  const what = rep.requests !== null ? `${fmt(rep.requests)} requests` : `${rep.durationS} s${rep.warmupS ? ` after ${rep.warmupS} s warm-up` : ''}`;
  const shape = rep.mode === 'connection per request' ? `${rep.connections} loop(s) of a connection per request` : `${rep.connections} connection(s) x ${rep.inflight} in flight`;
  const lines = [
    `load: ${what}, ${shape}, to ${rep.targets.join(', ')}, policy ${rep.policies.join(', ')} (${rep.mode}${rep.rate !== null ? ` at ${fmt(rep.rate)} requests/s` : ''})`,
    `  requests    ${fmt(rep.sent)} sent, ${fmt(rep.ok)} answered right${rep.wrongHash ? `, ${fmt(rep.wrongHash)} with a wrong hash` : ''}${failed ? `, ${fmt(failed)} failed` : ''}`,
    `  throughput  ${fmt(rep.rps)} requests/s answered right over ${rep.seconds.toFixed(2)} s${rep.rps === 0 && failed ? ' (every answer failed: see errors)' : ''}`,
    ...(rep.unexpected
      ? [`  unexpected  ${fmt(rep.unexpected)} answer(s) to no request in flight, apart from the requests above: the target answered twice, or what was not asked - it is broken (first: ${rep.firstUnexpected})`]
      : []),
    ...(rep.stoppedBy === null ? [] : [`  stopped     by ${rep.stoppedBy} ${rep.sent === 0 && rep.connected < rep.connections ? `while opening the connections (${rep.connected} of ${rep.connections} made): nothing was sent` : 'before the end: what was measured until then'}`]),
    ...(rep.closedAllAfterS === null ? [] : [`  ended       ${closedAll(rep)}`]),
    l.count
      ? `  latency ms  p50 ${ms(l.p50)}  p90 ${ms(l.p90)}  p99 ${ms(l.p99)}  p99.9 ${ms(l.p999)}  max ${ms(l.max)}  (${fmt(l.count)} requests of the window${rep.mode === 'open loop' ? ', from when each was due' : ''})`
      : `  latency     no right answer to measure${failed ? ' (latency is of right answers only)' : ''}`,
  ];
  const problems = Object.entries(rep.errors)
    .sort((a, b) => b[1] - a[1])
    .map(([code, n]) => `${code} ${fmt(n)}${code === 'CONNECT_FAILED' && !perRequest ? ` connection(s) of ${fmt(rep.connections)}` : ''}: ${hint(code, f, rep.firstError[code], rep.unreachable)}${rep.firstError[code] ? ` (first: ${rep.firstError[code]})` : ''}`);
  if (rep.wrongHash) problems.unshift(`wrong hash ${fmt(rep.wrongHash)}: answers whose payload is not the SHA1 of what was sent: the server computes the wrong thing`);
  lines.push(...(problems.length ? problems.map((p, i) => `  ${i === 0 ? 'errors    ' : '          '}  ${p}`) : ['  errors      none']));
  const retry = retryLine(rep.retryable);
  if (retry) lines.push(`  retryable   ${retry}`);
  return lines.join('\n');
}

/** Which codes' requests may be sent again without running twice, and which not (`LoadReport.retryable`); none without errors. */
function retryLine(retryable: Record<string, boolean>): string | undefined {
  const codes = Object.keys(retryable);
  if (codes.length === 0) return undefined;
  const yes = codes.filter((c) => retryable[c]);
  const no = codes.filter((c) => !retryable[c]);
  const safe = yes.length ? `${yes.join(', ')} (no handler ran them: safe to send again)` : 'none';
  return `${safe}${no.length ? `; not ${no.join(', ')} (a handler may have run them, or they would fail the same way again)` : ''}`;
}

/** A bar on a terminal's stderr: answered/failed counts, over the count or the time. */
function progressBar(f: LoadFlags, live: LiveCounters): { stop(): void } {
  if (!f.progress || !process.stderr.isTTY) return { stop() {} };
  const byCount = f.requests !== undefined;
  const total = byCount ? f.requests! : Math.round((f.warmup + f.duration) * 10);
  const bar = new (cliProgress().SingleBar)(
    {
      format: ` {bar} {percentage}% | {answered} answered, {failed} failed | {rate} requests/s`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: true,
    },
    cliProgress().Presets.shades_classic,
  );
  const t0 = performance.now();
  let last = { t: t0, n: 0 };
  bar.start(total, 0, { answered: 0, failed: 0, rate: 0 });
  const timer = setInterval(() => {
    const now = performance.now();
    const n = live.answered;
    const rate = ((n - last.n) / (now - last.t)) * 1000;
    last = { t: now, n };
    const value = byCount ? n + (live.failed ?? 0) : Math.min(total, Math.round((now - t0) / 100));
    bar.update(value, { answered: fmt(n), failed: fmt(live.failed ?? 0), rate: fmt(rate) });
  }, 250);
  return {
    stop() {
      clearInterval(timer);
      bar.stop();
    },
  };
}

export function loadCommand(setExit: (code: number) => void): Command {
  const cmd = new Command('load')
    .description('put load on a running proxy (or on servers directly) and report requests/s, latency percentiles and errors')
    .addOption(
      new Option('--revproc <endpoints>', "where to send: the proxy, PORT or HOST:PORT; a comma-separated list spreads the connections over them in turn (servers' --listen ports load them directly)")
        .default([{ ...DEFAULT_PROXY }], String(DEFAULT_PROXY_PORT))
        .argParser(parseEndpoints),
    )
    .addOption(new Option('--policy <list>', 'privacy policies the requests name, comma-separated; connection i names the i-th in turn').default(['111'], '111').argParser(parsePolicies))
    .addOption(new Option('-c, --connections <n>', 'connections held open at once').default(2).argParser(parseIntOption('--connections', 1)))
    .addOption(new Option('-p, --inflight <n>', 'requests in flight on each connection (pipelined); with --rate, the most waiting for answers (-p is requests in flight here, not a port: the target is --revproc)').default(32).argParser(parseIntOption('--inflight', 1)))
    .addOption(new Option('-d, --duration <time>', 'send for this long: 10, 10s, 500ms, 2m').default(10, '10s').argParser(parseSeconds('--duration', 0.001)))
    .addOption(new Option('-n, --requests <n>', 'send exactly this many requests instead of for a duration, then stop').argParser(parseIntOption('--requests', 1)))
    .addOption(new Option('-R, --rate <n>', 'open loop: send this many requests per second in all, each at its time, and measure latency from when each was due (as wrk2 does); without it, each connection sends as soon as it has room').argParser(parseIntOption('--rate', 1)))
    .addOption(new Option('--warmup <time>', 'send for this long first without counting (with --duration)').default(0, '0').argParser(parseSeconds('--warmup', 0)))
    .option('--connection-per-request', 'open a new connection for every request, as the old client did (--connections loops at once, one request each)')
    .addOption(new Option('--payload-size <bytes>', 'bytes of each payload; a request must fit the target\'s --max-frame, 1 MiB by default (default: 16 different payloads of 16 bytes)').argParser(parseIntOption('--payload-size', 1)))
    .addOption(new Option('--connect-timeout <ms>', 'give up a connection (TCP, and the TLS handshake with --tls-ca) not made within this long: it counts as CONNECT_FAILED').default(5000).argParser(parseIntOption('--connect-timeout', 1)))
    .addOption(new Option('--timeout <ms>', 'at the end, give up on unanswered requests (NO_ANSWER) when no answer came for this long; with --requests the window ends at the last answer, and this wait is not measured').default(5000).argParser(parseIntOption('--timeout', 1)))
    .option('--json', 'print the results as one JSON object')
    .option('--no-progress', 'no progress bar (it shows only on a terminal, on stderr)');
  for (const o of tlsOptions()) cmd.addOption(o);
  return cmd
    .addHelpText(
      'after',
      `
Every answer's hash is checked. Requests/s counts the answers that came in the
measured window (after --warmup). The latency of every request sent in the
window and answered right goes into an HDR histogram (three significant
digits), whether its answer came in the window or after it: p50, p90, p99,
p99.9 and max. Failed requests are counted by code, with what each means, not
timed; nor are answers with a wrong hash. Ctrl-C (or SIGTERM) stops sending and
reports what was measured, also while the connections are still being opened;
a second Ctrl-C stops at once. A connection not made within --connect-timeout
(5000 ms) is given up: a host that drops the packets, a listener whose backlog
is full, or a plain listener dialled with --tls-ca (it waits for a request and
never answers the TLS handshake).

Each request counts once: sent = answered right + wrong hash + failed (those
still unanswered --timeout after the last answer fail NO_ANSWER). Answers to no
request in flight (a second answer to a request, an answer to a seq never sent)
are counted apart, as "unexpected", not as failed requests. When the target
closes a connection after an ERROR about it (naming no request), the request it
refused (BAD_REQUEST) counts under that code, and the others lost with the
connection CONNECTION_LOST - but after a stopped proxy's last word,
SHUTTING_DOWN, which says it did not read them, SHUTTING_DOWN.

Exit status: 0 when every request was answered right, 1 when any failed or was
answered wrong, or when any answer was unexpected (the target is broken), 2 on
a usage error.

Examples:
  revproxy load --revproc 2100 --policy 111,222 -c 8 -p 32 -d 10s
  revproxy load --revproc 2100 -n 100000 --json
  revproxy load --revproc 2100 -c 4 -p 64 --rate 20000 -d 30s    # open loop
  revproxy load --revproc 2105,2115 --policy 111                 # two servers directly`,
    )
    .action(async (f: LoadFlags, self: Command) => {
      if (f.rate !== undefined && f.connectionPerRequest) throw new UsageError('--rate works on connections kept open: leave out --connection-per-request');
      if (f.requests !== undefined && self.getOptionValueSource('duration') === 'cli') throw new UsageError('give --duration or --requests, not both');
      if (f.requests !== undefined && self.getOptionValueSource('warmup') === 'cli') throw new UsageError('--warmup goes with --duration: with --requests every request counts');
      if (f.connectionPerRequest && self.getOptionValueSource('inflight') === 'cli') throw new UsageError('--inflight does not go with --connection-per-request, which sends one request per connection: --connections sets how many at once');
      const requests = f.requests;
      // Presented only to a proxy (or a server) that asks for one: not held to clientAuth (that peer refuses it in words).
      const tls = tlsFromFlags(f);
      const live: LiveCounters = { answered: 0, opened: 0, failed: 0 };
      const stop = new AbortController();
      let stoppedBy: string | null = null;
      const onSignal = (signal: NodeJS.Signals): void => {
        stoppedBy ??= signal;
        stop.abort();
      };
      // Once each: a second one ends the process at once (as it would have without these).
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const bar = progressBar(f, live);
      let result: LoadResult;
      try {
        result = await runLoad({
          target: (i) => ({ ...f.revproc[i % f.revproc.length]!, policy: f.policy[i % f.policy.length]! }),
          connections: f.connections,
          depth: f.connectionPerRequest ? 1 : f.inflight,
          perRequest: f.connectionPerRequest,
          ...(requests !== undefined ? { requests } : { durationMs: f.duration * 1000, warmupMs: f.warmup * 1000 }),
          rate: f.rate,
          tls,
          drainMs: f.timeout,
          connectTimeoutMs: f.connectTimeout,
          payloads: f.payloadSize === undefined ? undefined : payloadsOf(f.payloadSize),
          srcid: 'load',
          live,
          stop: stop.signal,
        });
      } finally {
        bar.stop();
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
      const rep = loadReport(result, f, stoppedBy);
      process.stdout.write(`${f.json ? JSON.stringify(rep) : formatText(rep, f)}\n`);
      // An answer to nothing fails the run too: a target that answers what was not asked is broken.
      const allRight = rep.ok === rep.sent && rep.wrongHash === 0 && Object.keys(rep.errors).length === 0 && rep.unexpected === 0;
      setExit(allRight && rep.sent > 0 ? 0 : 1);
    });
}
