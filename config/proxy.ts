/**
 * The proxy's configuration file (`revproxy proxy --config FILE`), written
 * once: the table of settings below gives each key its flag, its option in
 * `ProxyOptions` and whether it can change on a reload. The YAML schema, the
 * command-line flags (cli/proxy.ts) and docs/CONFIG.md all follow it; the
 * defaults come from `resolveOptions` (actors/proxy-options.ts), the one
 * place they are written.
 *
 * Precedence: a flag (or REVPROXY_TOKEN) over the file, the file over the
 * defaults. Paths in the file are relative to the file's folder.
 */
import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, statSync } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { setTimeout as wait } from 'node:timers/promises';
import { isIP } from 'node:net';
import { dirname, isAbsolute, resolve } from 'node:path';
import { LEVELS, SUMMARY_INTERVAL_MS, type Level } from '../actors/logger.js';
import { ACCESS_LOG_HOLD } from '../admin/access-log.js';
import { DEPARTED_POLICIES_KEPT, MAX_DEPARTED_POLICIES } from '../inspector/metrics.js';
import { DEFAULT_LISTEN_HOST, resolveOptions, type Opts, type ProxyOptions } from '../actors/proxy-options.js';
import { RETRY_CONDITIONS, type RetryCondition } from '../actors/link.js';
import { badTrustedSource } from '../actors/port-limits.js';
import { badWholeNumbers } from '../actors/server.js';
import { HEAP_PER_CONNECTION, HEAP_RESERVE, MIN_DEFAULT_CONNECTIONS } from '../actors/memory-limit.js';
import { badDialAddress, bracketHint, canonicalHost, hostPort as hostAndPort, isEveryAddress, unbracket } from '../transport/address.js';
import { FileError, LocalCode } from '../transport/errors.js';
import { MAX_TIMER_MS } from '../transport/clock.js';
import { MAX_ID_LENGTH } from '../transport/messages.js';
import { BUDGET_UNDER_A_LIMIT } from '../transport/budget.js';
import { allowedNameProblem, crlWarnings, serverNameProblem, tlsWarnings, type CertPurpose, type TlsMaterial, type TlsNames, type TlsWarning, type UpstreamTlsMaterial } from '../transport/tls.js';
import { badSecretText, loadedCerts, loadTokens, tlsFileHint, tlsFromFlags, TOKENS_HINT, readYamlFile, whyUnreadable, type LoadedCert } from './files.js';
import { parseRegistryUrl, REGISTRY_DEFAULTS, type RegistryOptions } from '../registry/options.js';
import {
  dict, flag, INVALID, IssuesError, list, name, object, offsetOf, oneOf, oneOrList, opt, readYaml, refine, report, req, scalar, text, whole, yaml, type Field, type Infer, type Issue, type Schema,
} from './schema.js';

/** When a change of a setting takes effect. */
export type Reload =
  /** at once, on SIGHUP */
  | 'live'
  /** on SIGHUP, for connections opened after it */
  | 'new'
  /** only when the proxy restarts */
  | 'restart';

/** The numeric options the table maps: keys of `Opts` whose value is a number. */
type NumericOption = { [K in keyof ProxyOptions]-?: NonNullable<ProxyOptions[K]> extends number ? K : never }[keyof ProxyOptions];

interface NumberSetting {
  option: NumericOption;
  /** The flag's value name: `ms`, `n`, `bytes`, `us`, `port`. */
  unit: string;
  min: number;
  max?: number;
  reload: Reload;
  doc: string;
  /** The default in words, when it is not one number (it depends on other settings). */
  defaultText?: string;
}

/**
 * Every numeric setting: the key in the file is the flag's name with `_`
 * for `-` (`max_server_inflight` is `--max-server-inflight`).
 */
export const NUMBERS = {
  port: { option: 'port', unit: 'port', min: 0, max: 65535, reload: 'restart', doc: 'port to listen on (0 picks a free one)' },
  timeout: { option: 'timeoutMs', unit: 'ms', min: 1, reload: 'live', doc: 'every request is answered within this time' },
  retries: { option: 'retries', unit: 'n', min: 0, reload: 'live', doc: 'retries of a failed try on other servers of the policy' },
  retry_budget: { option: 'retryBudget', unit: 'percent', min: 0, reload: 'live', doc: "a policy's retries over the last 10 s may be this percentage of its requests over them, plus min_retry_rate a second; past it a failed try is not retried and its request gets that try's answer (a server's OVERLOADED, and the requests of a server that went down, are retried outside it) (100 x retries or more: no budget)" },
  min_retry_rate: { option: 'minRetryRate', unit: 'n', min: 0, reload: 'live', doc: 'retries a second a policy may make whatever its retry budget (10 times it over the budget\'s 10 s)' },
  max_resets: { option: 'maxResets', unit: 'n', min: 0, reload: 'live', doc: "servers whose link may go down while they hold one request (a try ended reset) before it is not sent to another, and gets that try's answer: a request its handler crashes on would take down one more server with each retry (0 = no limit)" },
  try_timeout: { option: 'tryTimeoutMs', unit: 'ms', min: 1, reload: 'live', doc: 'timeout of one try', defaultText: 'timeout / (retries + 1)' },
  max_frame: { option: 'maxFrameBytes', unit: 'bytes', min: 16, reload: 'new', doc: 'largest frame accepted from any peer, less 64 bytes (the room forwarding a request takes, so what the proxy forwards is within it); its servers must take as much (revproxy server --max-frame). Stated to servers on each link: a larger answer is answered ANSWER_TOO_LARGE (by the server, or passed over by the proxy)' },
  max_connections: { option: 'maxConnections', unit: 'n', min: 1, reload: 'live', doc: `connections open at once (clients and servers); at most what the open-files limit (ulimit -n) leaves room for; by default fewer when V8's heap is small (--max-old-space-size): as many as it holds at ${HEAP_PER_CONNECTION / 1024} KiB each past ${HEAP_RESERVE / 1048576} MiB and half of max_buffered_bytes, ${MIN_DEFAULT_CONNECTIONS} or more` },
  max_conns_per_peer: { option: 'maxConnectionsPerPeer', unit: 'n', min: 0, reload: 'live', doc: 'connections from one address at once (0 = no limit)', defaultText: 'none on loopback, 1024 otherwise' },
  max_tls_handshakes: { option: 'maxTlsHandshakes', unit: 'n', min: 0, reload: 'live', doc: "TLS handshakes under way at once (HAProxy's maxsslconn), a sixteenth of them (at least 1) for one address; a connection past either waits its turn, closed if it waits longer than frame_timeout, or at once when too many wait (0 = no limit)" },
  max_conn_rate_per_peer: { option: 'maxConnRatePerPeer', unit: 'n', min: 0, reload: 'live', doc: "new connections one address may open a second (HAProxy's conn_rate(1s): this second's and the last one's, weighted); past it each is closed as it comes, before a TLS handshake or a read, until the address slows down (0 = no limit)" },
  max_client_inflight: { option: 'maxClientInflight', unit: 'n', min: 1, reload: 'live', doc: 'unanswered requests per client connection before its reads pause' },
  max_server_inflight: { option: 'maxServerInflight', unit: 'n', min: 1, reload: 'live', doc: 'requests in flight to one server' },
  max_server_queue: { option: 'maxServerQueue', unit: 'n', min: 0, reload: 'live', doc: "requests a server that states its --concurrency is sent beyond it, to wait in its own queue; past them a policy's requests wait in the proxy's queue, fair between clients (HAProxy's maxconn on a server line, from what the server says; a server that states none is held to max_server_inflight only)", defaultText: 'its concurrency, or what it answers in 5 ms when more' },
  queue_limit: { option: 'queueLimit', unit: 'n', min: 0, reload: 'live', doc: 'requests one policy may hold waiting for a server with room, its clients in turn; when full, a client holding fewer waiting than the one holding the most gets in and that one\'s newest is answered OVERLOADED, the one holding the most is refused its own (OVERLOADED)' },
  queue_timeout: { option: 'queueTimeoutMs', unit: 'ms', min: 1, reload: 'live', doc: "the longest a request waits in its policy's queue for a server with room (HAProxy's timeout queue); past it, it is answered OVERLOADED, unsent (one back from a failed try, that try's answer), and a policy short of room serves what it can promptly and refuses the rest early", defaultText: 'timeout' },
  queue_lifo_after: { option: 'queueLifoAfterMs', unit: 'ms', min: 0, reload: 'live', doc: "adaptive LIFO: once a policy's queue has not been empty for this long, a server with room gets the newest waiting request first (each client's newest, clients in turn) and the oldest wait out queue_timeout, so under sustained overload most requests are answered promptly; a shorter burst is served oldest first (0 = always oldest first)" },
  idle_timeout: { option: 'idleTimeoutMs', unit: 'ms', min: 0, reload: 'new', doc: 'close client connections silent this long and waiting for no answer (0 = never); registrations are watched by PINGs instead' },
  frame_timeout: { option: 'frameTimeoutMs', unit: 'ms', min: 0, reload: 'new', doc: 'a frame begun must be complete within this time (0 = no limit)' },
  ping_interval: { option: 'pingIntervalMs', unit: 'ms', min: 10, reload: 'live', doc: 'PING each server on its registration connection this often' },
  ping_misses: { option: 'pingMisses', unit: 'n', min: 1, reload: 'live', doc: 'missed PONGs after which a server is removed' },
  probe_initial: { option: 'probeInitialMs', unit: 'ms', min: 1, reload: 'live', doc: 'first wait before probing a server that went down; doubles per failed probe' },
  probe_max: { option: 'probeMaxMs', unit: 'ms', min: 1, reload: 'live', doc: 'longest wait between probes of a server that is down; the wait between probes of one refused by upstream_tls' },
  eject_after: { option: 'ejectAfter', unit: 'n', min: 1, reload: 'live', doc: 'consecutive failures that eject a server for a while, while another server of its policy does clearly better (its handler failing, HANDLER_FAILED, counts; its own OVERLOADED and TIMEOUT answers do not)' },
  eject_time: { option: 'ejectBaseMs', unit: 'ms', min: 1, reload: 'live', doc: 'ejection time, times the number of ejections in a row (one is forgotten for each eject time the server serves), up to max_eject_time' },
  max_eject_time: { option: 'ejectMaxMs', unit: 'ms', min: 1, reload: 'live', doc: 'the longest an ejection lasts, however many came in a row (eject_time when that is longer)' },
  drain_timeout: { option: 'drainTimeoutMs', unit: 'ms', min: 0, reload: 'live', doc: 'on SIGTERM, the longest wait for requests in flight (then answered SHUTTING_DOWN)', defaultText: 'timeout' },
  max_buffered_bytes: { option: 'maxBufferedBytes', unit: 'bytes', min: 0, max: 2 ** 40, reload: 'restart', doc: `bytes held for all peers together (partial frames, unread answers, requests not answered yet); past it the connections holding the most are closed with OVERLOADED; requests may take half of it (past that they are refused OVERLOADED), the requests of one connection a 32nd (then its reads pause) (0 = no limit; by default less ${BUDGET_UNDER_A_LIMIT})` },
  max_servers: { option: 'maxServers', unit: 'n', min: 0, reload: 'live', doc: 'servers registered without a token, in total (0 = no limit)' },
  max_servers_per_peer: { option: 'maxServersPerPeer', unit: 'n', min: 0, reload: 'live', doc: 'servers registered without a token from one address (0 = no limit)' },
  probes_per_second: { option: 'probesPerSecond', unit: 'n', min: 1, reload: 'restart', doc: 'probes of servers that are down started per second at most, across all of them' },
  slow_after: { option: 'slowAfterMs', unit: 'ms', min: 0, reload: 'live', doc: 'a server whose oldest unanswered request has waited this long, and that answered nothing meanwhile, is sent one more to find out, then none until it answers; so is one whose --concurrency is full (its link PONG states it) while it answers no newer request past its oldest: a backlog waits in the proxy\'s queue, not the server\'s (0 = off)', defaultText: 'try timeout / 4' },
  busy_poll: { option: 'busyPollUs', unit: 'us', min: 0, reload: 'restart', doc: 'after traffic, keep polling sockets this many microseconds instead of sleeping: lower one-at-a-time latency on virtual machines, for up to one core of CPU while traffic flows (0 = off)' },
} as const satisfies Record<string, NumberSetting>;
export type NumberKey = keyof typeof NUMBERS;

/**
 * What is wrong with the numeric options a library caller gave `startProxy`, if anything, by the
 * rules the file and the flags keep (`NUMBERS`, their one owner): a whole number within the
 * setting's range, or `Infinity` where it has no largest. Unchecked, a `timeoutMs` of 0 or NaN
 * started a proxy whose every link timed out, its servers said unreachable and every request
 * refused NO_SERVER; `retries: -1`, `maxServerInflight: 0` and the like ran as nobody meant.
 */
export function badProxyNumber(opts: ProxyOptions): string | undefined {
  return badWholeNumbers(opts, (Object.entries(NUMBERS) as Array<[NumberKey, NumberSetting]>).map(([key, s]) => [s.option, s.min, ` (${key} in a config file)`, s.max] as const));
}

/** A setting's largest value: its own, or for a time the longest a timer can wait (transport/clock.ts; about 24.8 days). */
export function maxOf(s: NumberSetting): number | undefined {
  return s.max ?? (s.unit === 'ms' ? MAX_TIMER_MS : undefined);
}

/** A `retry_on` list as the proxy runs it: each condition once, in `RETRY_CONDITIONS`' order (so a reload that only reorders it changes nothing). */
export function retryOnOf(given: readonly RetryCondition[]): RetryCondition[] {
  return RETRY_CONDITIONS.filter((c) => given.includes(c));
}

/** The defaults, as `resolveOptions` gives them: for help texts and docs, never restated. */
export const DEFAULTS = resolveOptions({});

/** A setting's default, in words: `5000`, or what it depends on. */
export function defaultOf(key: NumberKey): string {
  const s: NumberSetting = NUMBERS[key];
  return s.defaultText ?? String(DEFAULTS[s.option]);
}

/** What to give instead of an empty listen address (Node would listen on every address). */
export const EMPTY_HOST_HINT = 'give 127.0.0.1 (this machine only), or 0.0.0.0 or :: to listen on every address';

/**
 * A listen address as given, as Node takes it: `[::1]` as ::1 (`unbracket`), and `*` as 0.0.0.0, every
 * IPv4 address, as HAProxy's `bind *:80` and nginx's `listen *:80` mean it (Node took it for a host name
 * and failed: getaddrinfo ENOTFOUND *).
 */
export function listenAddress(host: string): string {
  const h = unbracket(host);
  return h.trim() === '*' ? '0.0.0.0' : h;
}

/**
 * Why `host` is not an address to listen on, or undefined: `empty` (an unset variable); `port`, a
 * port in it (`127.0.0.1:80`, `[::1]:80`, which Node took for a host name and failed to resolve:
 * "cannot listen on [127.0.0.1:80]:2100"; `::1:80`, an IPv6 one without its brackets, with `hint`
 * saying how to write it: it failed as a name that does not resolve, ENOTFOUND); or `form`, `why`
 * it is no address - spaces around it (` 127.0.0.1` was looked up as a host name), a bracket alone
 * (`[::1`, `::1]`), brackets around what is not an IPv6 address, a URL, a character no host name has -
 * by the rules of an address peers dial (`badDialAddress`). `*`, `0.0.0.0`, `::` and `[::]` are every
 * address; a bare IPv6 address (::1, fe80::1) has colons of its own.
 */
export function badListenHost(host: string): { kind: 'empty' } | { kind: 'port'; hint?: string } | { kind: 'form'; why: string } | undefined {
  if (host.trim() === '') return { kind: 'empty' };
  if (host === '*' || isEveryAddress(host)) return undefined;
  if (/^\[[^\]]*\]:\d*$/.test(host) || /^[^:[\]\s]+:\d*$/.test(host)) return { kind: 'port' };
  const v6 = isIP(host) === 0 ? bracketHint(host) : undefined;
  if (v6) return { kind: 'port', hint: v6 };
  const why = badDialAddress(host, 'give the port on its own');
  return why ? { kind: 'form', why } : undefined;
}

/**
 * What is wrong with `host` as an address to listen on (`badListenHost`), said after "<what> ",
 * or undefined: `portSays` names where the port goes (`--port`, `port (--port)`).
 */
export function listenHostProblem(host: string, portSays: string): string | undefined {
  const bad = badListenHost(host);
  if (bad?.kind === 'empty') return `to listen on, got an empty one: ${EMPTY_HOST_HINT}`;
  if (bad?.kind === 'port') return `without a port, got '${host}'${bad.hint ? ` (${bad.hint}): give the address alone, and the port with ${portSays}` : `: give the port with ${portSays}`}`;
  return bad && `to listen on, got '${host}': ${bad.why}`;
}

/** `host`: an address to listen on, its IPv6 brackets taken off. */
const listenHost: Schema<string> = {
  expected: 'an address to listen on',
  read(node, at, ctx) {
    const v = refine(text, (t) => {
      const bad = listenHostProblem(t, 'port (--port)');
      return bad && `expected an address ${bad.replace(/^to listen on, got an empty one/, 'to listen on, got an empty string')}`;
    }).read(node, at, ctx);
    return v === INVALID ? v : listenAddress(v);
  },
};

/** `registry.advertise`: an address peers dial (`badDialAddress`), its IPv6 brackets taken off. */
const advertiseHost: Schema<string> = {
  expected: 'the address clients dial',
  read(node, at, ctx) {
    const v = refine(text, (t) => {
      const bad = badDialAddress(t, 'give the port with port (--port)');
      return bad && `expected the address clients dial to reach this proxy, without a port, got '${t}': ${bad}`;
    }).read(node, at, ctx);
    return v === INVALID ? v : unbracket(v);
  },
};

/** A secret's text: white space at an end is refused as every secret's is (`badSecretText`); an empty one is refused by `secret`'s length, or as empty. */
const secretText = refine(text, (t) => {
  const bad = badSecretText(t);
  return bad && `a secret that ${bad}`;
});
/** A proxy's secret (8 characters or more), as the config file and a scenario's `proxy` take it. */
export const secret = refine(secretText, (t) => (t.length < 8 ? 'a secret needs at least 8 characters: a short secret is easy to guess' : undefined));
const path = refine(text, (t) => (t.length === 0 ? 'expected a file path, got an empty string' : undefined));

/** `HOST:PORT`, `[::1]:PORT` or `PORT`: the host as written (brackets kept), and the port. */
function splitHostPort(value: string): { host?: string; port: string } | undefined {
  const m = /^(?:(\[[^\]]+\])|([^:\s]+)):(\d{1,5})$/.exec(value) ?? /^()()(\d{1,5})$/.exec(value);
  return m ? { host: m[1] || m[2] || undefined, port: m[3]! } : undefined;
}

/**
 * Why `value` is not `HOST:PORT` (the admin endpoint's), said after "got 'VALUE': ", or undefined when
 * it is one, or when there are no better words than what is expected. Its host follows the rule of
 * `host` (`badListenHost`, the one owner): `127.1`, `0127.0.0.1` and `[127.0.0.1]` passed here, where
 * `--host` refused them, and a loopback one was warned of as reachable from other machines.
 */
export function hostPortProblem(value: string): string | undefined {
  const split = splitHostPort(value);
  if (!split) return bracketHint(value);
  const bad = split.host === undefined ? undefined : badListenHost(split.host);
  return bad?.kind === 'form' ? bad.why : undefined;
}

/** `HOST:PORT`, `[::1]:PORT` or `PORT` (127.0.0.1), its host an address to listen on (`hostPortProblem`). */
export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const split = splitHostPort(value);
  if (!split || Number(split.port) > 65535 || (split.host !== undefined && badListenHost(split.host))) return undefined;
  return { host: listenAddress(split.host ?? '127.0.0.1'), port: Number(split.port) };
}
const etcdUrl = scalar('etcd://HOST:PORT (a comma-separated list for several etcd members; etcds:// for TLS)', (v) => {
  try {
    parseRegistryUrl(String(v));
    return String(v);
  } catch {
    return undefined;
  }
});
/** A privacy policy as a server registers it: 1 to MAX_ID_LENGTH characters (a whole number is read as its decimal string). */
export function badPolicy(p: string): string | undefined {
  return p.length === 0 || p.length > MAX_ID_LENGTH ? `a privacy policy is 1 to ${MAX_ID_LENGTH} characters, got ${p.length}` : undefined;
}
const policy = refine(name, badPolicy);
const trustedSource = refine(text, badTrustedSource);
/**
 * An entry of `upstream_tls.names` (`allowedNameProblem`, the one rule: the library's `upstreamTls.names` and the flag
 * keep it too). `*.servers.internal` unquoted is a YAML alias (a `*` that begins a value), read as nothing: said so.
 */
const allowedName: Schema<string> = {
  expected: 'a name',
  read(node, at, ctx) {
    if (yaml().isAlias(node)) return report(ctx, { ...at, offset: offsetOf(node, at.offset) }, `expected a name, got *${String(node.source)}, which YAML reads as an alias (a * that begins a value makes one): quote it, '*${String(node.source)}'`);
    return refine(text, (t) => {
      const bad = allowedNameProblem(t);
      return bad && `the name '${t}': ${bad}`;
    }).read(node, at, ctx);
  },
};

/** What each key of `upstream_tls` (`--upstream-tls-*`) does: the schema's words and the flags' help. */
export const UPSTREAM_DOCS = {
  ca: "PEM CA that signs the servers' certificates (needed): the proxy dials its servers over TLS and verifies theirs against it, apart from tls.ca (without upstream_tls, tls.ca does both)",
  cert: 'PEM certificate the proxy presents to servers that ask for one (mutual TLS: a server with --tls-ca), with key',
  key: 'PEM private key of cert',
  crl: 'PEM CRLs (one or more) of the CAs in ca: a server whose certificate one revokes is refused; re-read on SIGHUP',
  server_name: "a DNS name sent as SNI on every dial to a server and verified in its certificate (a DNS: entry, exact or a wildcard one label above it) in place of the address dialled, so servers may hold certificates for a shared name (servers.internal) instead of their IP: entries; names still applies beside it; no address (TLS sends none as SNI) (default: none: the address dialled is verified)",
  names: "a server's certificate must carry one of these among its subjectAltName entries, beyond the address dialled (or server_name) (Envoy's match_subject_alt_names): an exact DNS name (server-a.internal), *.NAME for any name under NAME (*.servers.internal; quote it in YAML), an IP address, or URI: and a URI matched whole (a SPIFFE ID: URI:spiffe://example.org/ns/prod/sa/web); a server whose certificate carries none is refused at every dial and never sent a request (default: any its CA signed)",
} as const;

/** What `hedge_on_try_timeout` (`--no-hedge-on-try-timeout`) does, for the help text and docs/CONFIG.md. */
export const HEDGE_DOC = "a try given up at try_timeout stays in flight until the request's deadline while the request goes on to another server, and the first answer of either is the client's (Envoy's hedge_on_per_try_timeout); servers of this project's wire only (an old JSON server's try is given up)";

/** What `retry_on` (`--retry-on`) does, for the help text and docs/CONFIG.md. */
export const RETRY_ON_DOC = `how a try may have failed for its request to be sent to another server (within retries and retry_budget): ${RETRY_CONDITIONS.join(', ')} (the server's link went down or it left; no answer within the try timeout; it answered OVERLOADED, TIMEOUT, or another error); a request that never reached a server goes again whatever this says (default: all of them)`;

/** What `proxy_protocol_from` (`--proxy-protocol-from`) does, for the help text and docs/CONFIG.md. */
export const PROXY_PROTOCOL_FROM_DOC = 'addresses or networks (10.0.0.0/8) of the L4 balancers in front of the proxy: their connections must begin with a PROXY protocol header (v1 or v2), whose client address the limits, logs and access log then use; anyone else is read as without it (default: none)';

/** What `admin.metrics_departed_policies` (`--metrics-departed-policies`) does, for the help text and the schema. */
export const METRICS_DEPARTED_DOC = `privacy policies that have left (no server now) whose series /metrics keeps - their requests, latencies and revproxy_pool_members zeros, each for up to an hour after its last request - the least recent going first once a scrape has shown it gone (counted in revproxy_departed_policies_dropped_total); 0 to ${MAX_DEPARTED_POLICIES} (default: ${DEPARTED_POLICIES_KEPT})`;

const hostPort = scalar('HOST:PORT (e.g. 127.0.0.1:9100), or a port on 127.0.0.1', (v) => parseHostPort(String(v)), (v) => hostPortProblem(String(v)));

const UNIT_WORDS: Record<string, string> = { ms: 'milliseconds', us: 'microseconds', n: 'a count', bytes: 'bytes', port: 'a port' };

const numberFields = Object.fromEntries(
  Object.entries(NUMBERS).map(([k, s]) => {
    const max = maxOf(s);
    const schema = max === undefined ? whole(UNIT_WORDS[s.unit] ?? s.unit, s.min) : refine(whole(UNIT_WORDS[s.unit] ?? s.unit, s.min), (v) => (v > max ? `expected at most ${max}, got ${v}` : undefined));
    return [k, opt(schema, s.doc)];
  }),
) as { [K in NumberKey]: Field<number, false> };

/** Every other setting: listening, secrets, TLS, logs, the admin endpoint, the inspector. */
const otherFields = {
  host: opt(listenHost, 'address to listen on'),
  token: opt(oneOrList(secret), 'registration secret every server must present (REVPROXY_TOKEN, --token); a list is each accepted, to change secrets without an outage'),
  tokens: opt(dict(oneOrList(secret), (v) => (typeof v === 'string' ? 'did you mean tokens_file (a file of per-policy secrets, as --tokens FILE), or token (one secret for every policy)?' : undefined)), 'per-policy registration secrets: policy: secret, or policy: [old, new] while its servers move to the new one'),
  tokens_file: opt(path, 'a YAML file of per-policy secrets (--tokens)'),
  proxy_protocol_from: opt(list(trustedSource), PROXY_PROTOCOL_FROM_DOC),
  retry_on: opt(list(oneOf(RETRY_CONDITIONS)), RETRY_ON_DOC),
  hedge_on_try_timeout: opt(flag, HEDGE_DOC),
  old_server_connections: opt(whole('connections to one old (JSON) server', 1), 'connections opened to each old (JSON) server, one request on each at a time'),
  tls: opt(object('tls', {
    cert: opt(path, 'PEM certificate the proxy presents (with key): turns TLS on'),
    key: opt(path, 'PEM private key of cert'),
    ca: opt(path, "PEM CA that verifies peers' certificates (mutual TLS) and servers'"),
    crl: opt(path, 'PEM CRLs (one or more) of the CAs in ca: a peer whose certificate one revokes is refused (each CA in ca needs its own)'),
  }), 'TLS files'),
  upstream_tls: opt(object('upstream_tls', {
    ca: opt(path, UPSTREAM_DOCS.ca),
    cert: opt(path, UPSTREAM_DOCS.cert),
    key: opt(path, UPSTREAM_DOCS.key),
    crl: opt(path, UPSTREAM_DOCS.crl),
    server_name: opt(refine(text, (t) => {
      const bad = serverNameProblem(t);
      return bad && `the server name '${t}': ${bad}`;
    }), UPSTREAM_DOCS.server_name),
    names: opt(list(allowedName), UPSTREAM_DOCS.names),
  }), "TLS toward the servers, apart from the port's (without it, tls with ca is used: its files toward servers too)"),
  log: opt(object('log', {
    level: opt(oneOf(LEVELS), 'least severe level written'),
    format: opt(oneOf(['text', 'json'] as const), 'text for people, json for machines'),
    color: opt(flag, 'colour text lines on a terminal'),
    summary_interval: opt(whole('milliseconds between summary lines', 100), 'repeated conditions and dropped lines are summarised this often'),
    access_log: opt(path, "one line per request: '-' for stdout, or a file (reopened on SIGUSR1, for logrotate, and on SIGHUP)"),
    access_log_flush: opt(whole('milliseconds a file access log may hold its lines'), `a file access log writes at least this often, and whenever ${ACCESS_LOG_HOLD.bytes / 1024} KiB wait; 0 writes every turn`),
  }), 'logging'),
  admin: opt(object('admin', {
    listen: opt(hostPort, 'HOST:PORT of /healthz, /readyz and /metrics'),
    token: opt(secret, 'bearer token /metrics requires (the health checks stay open)'),
    ready_policies: opt(list(policy), 'privacy policies that must each have a server serving for /readyz to answer 200 (--ready-policies)'),
    metrics_departed_policies: opt(refine(whole('a count of policies', 0), (v) => (v > MAX_DEPARTED_POLICIES ? `expected at most ${MAX_DEPARTED_POLICIES} (as many as the policies /metrics labels), got ${v}` : undefined)), METRICS_DEPARTED_DOC),
  }), 'the admin endpoint'),
  registry: opt(object('registry', {
    url: req(etcdUrl, 'etcd://HOST:PORT: take servers from the registry, and advertise this proxy there for clients (--registry)'),
    prefix: opt(text, `the key prefix the fleet shares (default ${REGISTRY_DEFAULTS.prefix})`),
    ttl: opt(whole('seconds', 1), `lease TTL of this proxy's own key, in seconds (default ${REGISTRY_DEFAULTS.ttlSeconds})`),
    advertise: opt(advertiseHost, 'the address clients dial to reach this proxy, without a port (default: host); an IPv6 one bare or in brackets'),
    username: opt(text, "etcd's user, when etcd has authentication on"),
    password: opt(secretText, "that user's password (REVPROXY_REGISTRY_PASSWORD overrides it)"),
    tls: opt(object('registry.tls', {
      ca: opt(path, "PEM CA that signed etcd's certificate"),
      cert: opt(path, 'PEM client certificate for etcd (with key)'),
      key: opt(path, 'PEM private key of cert'),
    }), 'TLS to etcd'),
  }, (r) => (r.tls && (r.tls.cert === undefined) !== (r.tls.key === undefined) ? 'tls needs both cert and key, or neither' : undefined)), 'the registry (etcd), for a fleet of proxies'),
  inspect: opt(whole('a port on 127.0.0.1 for the inspector page (0 = a free one)', 0), 'serve the inspector page and its /metrics on 127.0.0.1:PORT'),
  inspect_log: opt(path, 'write every inspection event to this file (NDJSON)'),
  inspect_token: opt(secret, "the inspector's HTTP Basic password (any user name): its page and its drain and enable buttons need it (REVPROXY_INSPECT_TOKEN, --inspect-token)"),
} as const;

/**
 * The flags of `revproxy proxy` whose key in a file is not the flag's name with `_` for `-` at the top
 * level (`max_server_inflight` is `--max-server-inflight`), and the key each sets: `log-level` is
 * `log.level`. The one owner of which flag is which key: the command line reads it for what its flags
 * set and to name a flag in an error (cli/proxy.ts), the schema for its "did you mean" (`MEANT`),
 * `proxy --help` for its list of exceptions, and a spec for docs/CONFIG.md's flag column. A `no-` flag
 * sets its key to false.
 */
export const FLAG_KEYS: Readonly<Record<string, string>> = {
  tokens: 'tokens_file',
  'no-hedge-on-try-timeout': 'hedge_on_try_timeout',
  'log-level': 'log.level',
  'log-format': 'log.format',
  'no-color': 'log.color',
  'log-summary-interval': 'log.summary_interval',
  'access-log': 'log.access_log',
  'access-log-flush': 'log.access_log_flush',
  admin: 'admin.listen',
  'admin-token': 'admin.token',
  'ready-policies': 'admin.ready_policies',
  'metrics-departed-policies': 'admin.metrics_departed_policies',
  'tls-cert': 'tls.cert',
  'tls-key': 'tls.key',
  'tls-ca': 'tls.ca',
  'tls-crl': 'tls.crl',
  'upstream-tls-ca': 'upstream_tls.ca',
  'upstream-tls-cert': 'upstream_tls.cert',
  'upstream-tls-key': 'upstream_tls.key',
  'upstream-tls-crl': 'upstream_tls.crl',
  'upstream-tls-names': 'upstream_tls.names',
  'upstream-tls-server-name': 'upstream_tls.server_name',
  registry: 'registry.url',
  'registry-prefix': 'registry.prefix',
  'registry-ttl': 'registry.ttl',
  advertise: 'registry.advertise',
  'registry-user': 'registry.username',
  'registry-password': 'registry.password',
  'registry-ca': 'registry.tls.ca',
  'registry-cert': 'registry.tls.cert',
  'registry-key': 'registry.tls.key',
};

/**
 * The flags whose key is not their name with `_` for `-`, nor under their section as `--log-level`'s
 * is (`--access-log-flush`, `--registry-ca`): `proxy --help` and docs/CONFIG.md list them.
 */
export function flagsNamedOtherwise(): string[] {
  return Object.keys(FLAG_KEYS).filter((flag) => flag !== FLAG_KEYS[flag]!.replace(/[._]/g, '-'));
}

/** The key (a dotted path) a flag of `revproxy proxy` sets, the flag named without its dashes: `log-level` sets `log.level`. */
export function keyOfFlag(flag: string): string {
  return Object.hasOwn(FLAG_KEYS, flag) ? FLAG_KEYS[flag]! : flag.replace(/-/g, '_');
}

/** The flag that sets `key` (`--log-level` for `log.level`), or undefined when none does (`tokens`, a section). */
export function flagOfKey(key: string): string | undefined {
  const named = Object.keys(FLAG_KEYS).find((f) => FLAG_KEYS[f] === key);
  if (named) return `--${named}`;
  const flag = key.replace(/_/g, '-');
  return key.includes('.') || Object.hasOwn(FLAG_KEYS, flag) ? undefined : `--${flag}`;
}

/** A key as a file writes it: `log.level` is `log: {level}`, with `value` `log: {color: false}`. */
export function keyWords(key: string, value?: string): string {
  const [head, ...rest] = key.split('.');
  return rest.length ? `${head}: {${keyWords(rest.join('.'), value)}}` : value === undefined ? head! : `${head}: ${value}`;
}

/** What a flag sets, as a file writes it: `--no-color` sets `log: {color: false}`. */
export function flagWords(flag: string): string {
  return keyWords(keyOfFlag(flag), flag.startsWith('no-') ? 'false' : undefined);
}

/**
 * Top-level keys written as a flag whose key is not its name with `_` for `-` (`FLAG_KEYS`), and the
 * key meant: `log_level` (`--log-level`) is `log: {level}`. Each section's keys with its name before
 * them (`admin_listen`, `tls_cert`), then the flags named otherwise, and a `no-` flag without its `no-`
 * (`color`).
 */
const MEANT: Record<string, string> = {
  ...Object.fromEntries(
    Object.entries(otherFields).flatMap(([section, field]) => {
      const sub = (field.schema as { fields?: Record<string, unknown> }).fields;
      return sub ? Object.keys(sub).map((k) => [`${section}_${k}`, `${section}: {${k}}`]) : [];
    }),
  ),
  ...Object.fromEntries(
    Object.keys(FLAG_KEYS).flatMap((flag) => {
      const entries: Array<[string, string]> = [[flag.replace(/-/g, '_'), flagWords(flag)]];
      // `color` (--no-color without its no-) is log: {color}.
      if (flag.startsWith('no-')) entries.push([flag.slice(3).replace(/-/g, '_'), keyWords(keyOfFlag(flag))]);
      return entries;
    }).filter(([key]) => !Object.hasOwn(otherFields, key) && !Object.hasOwn(NUMBERS, key)),
  ),
};

export const proxyConfigSpec = object('proxy configuration', { ...numberFields, ...otherFields }, (c) => {
  if (c.tokens && c.tokens_file) return "give per-policy secrets as 'tokens' or in 'tokens_file', not both";
  if (c.tls && (c.tls.cert === undefined) !== (c.tls.key === undefined)) return 'tls needs both cert and key, or neither';
  if (c.tls?.crl !== undefined && c.tls.ca === undefined) return "tls.crl goes with tls.ca: a CRL revokes certificates its CA signed, and only peers' certificates verified against tls.ca are checked against it";
  if (c.upstream_tls && (c.upstream_tls.cert === undefined) !== (c.upstream_tls.key === undefined)) return 'upstream_tls needs both cert and key, or neither';
  return undefined;
}, undefined, MEANT);

/** What a config file (or the flags) set: every key optional. */
export type ProxyConfig = Infer<typeof proxyConfigSpec>;

/** A config file that cannot be used: every problem, as `file:line:col: path: what was expected`. */
export class ConfigError extends IssuesError<typeof LocalCode.BAD_FILE> {
  constructor(file: string, issues: Issue[]) {
    super(LocalCode.BAD_FILE, file, issues);
    this.name = 'ConfigError';
  }
}

/** Marks the config of a file that sets nothing (`setsNothing`). */
const NOTHING = Symbol('sets nothing');

/** Whether `c` was read from a file that sets nothing: empty, or only comments and white space (`{}` sets every setting to its default). */
export function setsNothing(c: ProxyConfig): boolean {
  return (c as { [NOTHING]?: boolean })[NOTHING] === true;
}

/** What a file that sets nothing is, in the words of the reload that refuses it and of `--check`, which warns of it. */
const SETS_NOTHING = 'the file sets nothing (it is empty, or only comments)';
const WRITE_BRACES = 'write {} for every setting at its default';

/**
 * `--check`'s warning for a file that sets nothing: valid at start (every setting from the flags and the
 * defaults), refused by a reload (`loadConfigFile`).
 */
export function setsNothingWarning(file: string): string {
  return `${file} sets nothing (it is empty, or only comments): a start takes every setting from the flags and defaults, but a reload (SIGHUP) refuses such a file and keeps the running settings, as such a file is what a writer leaves for a moment before it writes; ${WRITE_BRACES}`;
}

/**
 * Read and check a config file; paths in it become absolute (relative to its folder). A file that sets
 * nothing is valid at start; `reload` refuses it (at 1:1), keeping the running settings: it is what an
 * editor or a script that truncates the file, then writes it, leaves for a moment, and a reload then
 * took every default - the registration and admin secrets dropped, with no warning - while an empty
 * tokens file was refused.
 */
export function loadConfigFile(file: string, opts: { reload?: boolean } = {}): ProxyConfig {
  const c = parseConfig(readYamlFile(file, 'the configuration file', (issues) => new ConfigError(file, issues)), file);
  if (opts.reload && setsNothing(c)) {
    throw new ConfigError(file, [{ line: 1, col: 1, path: '', message: `${SETS_NOTHING}: a reload refuses it and keeps the running settings, as such a file is what a writer leaves for a moment before it writes; ${WRITE_BRACES}, and write the file atomically (a temporary file renamed over it), then reload again` }]);
  }
  return c;
}

/** Check a config given as text; `file` names it in messages and anchors relative paths. */
export function parseConfig(source: string, file: string): ProxyConfig {
  const { value, ctx } = readYaml(source, proxyConfigSpec);
  // An empty file, or one of comments only (the example with every line commented out), is a valid config that
  // sets nothing, as a start without one: it was refused "expected a mapping ... got nothing", naming every key.
  if (!value && ctx.doc.errors.length === 0 && ctx.doc.contents === null) return Object.defineProperty({}, NOTHING, { value: true });
  if (!value) throw new ConfigError(file, ctx.issues);
  return absolutePaths(value, dirname(resolve(file)));
}

function absolutePaths(c: ProxyConfig, dir: string): ProxyConfig {
  const abs = (p: string | undefined): string | undefined => (p === undefined || p === '-' || isAbsolute(p) ? p : resolve(dir, p));
  return {
    ...c,
    tokens_file: abs(c.tokens_file),
    inspect_log: abs(c.inspect_log),
    tls: c.tls && { cert: abs(c.tls.cert), key: abs(c.tls.key), ca: abs(c.tls.ca), crl: abs(c.tls.crl) },
    upstream_tls: c.upstream_tls && { ...c.upstream_tls, cert: abs(c.upstream_tls.cert), key: abs(c.upstream_tls.key), ca: abs(c.upstream_tls.ca), crl: abs(c.upstream_tls.crl) },
    log: c.log && { ...c.log, access_log: abs(c.log.access_log) },
    registry: c.registry && { ...c.registry, tls: c.registry.tls && { ca: abs(c.registry.tls.ca), cert: abs(c.registry.tls.cert), key: abs(c.registry.tls.key) } },
  };
}

/**
 * The settings both `base` (the file) and `over` (the command line: flags, REVPROXY_* variables) set,
 * as dotted keys (`token`, `log.level`), as the file writes them: the file's value of each is not the
 * one running. A section of the format (`log`, `admin`, `registry.tls`) is looked into key by key; any
 * other value is one setting, whatever it reads as: a list, the `tokens` mapping, `admin.listen` (read
 * as its host and port, which named `admin.listen.host, admin.listen.port`, keys no file has).
 */
export function overridden(base: ProxyConfig, over: ProxyConfig, at = '', fields: Record<string, Field<unknown, boolean>> = proxyConfigSpec.fields): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(over)) {
    const b = (base as Record<string, unknown>)[k];
    if (v === undefined || b === undefined) continue;
    const sub = (fields[k]?.schema as { fields?: Record<string, Field<unknown, boolean>> } | undefined)?.fields;
    const section = (x: unknown): boolean => x !== null && typeof x === 'object' && !Array.isArray(x);
    if (sub && section(v) && section(b)) out.push(...overridden(b as ProxyConfig, v as ProxyConfig, `${at}${k}.`, sub));
    else out.push(`${at}${k}`);
  }
  return out;
}

/** `over` wins wherever it sets a value; sections (tls, log, admin) merge key by key. */
export function merge(base: ProxyConfig, over: ProxyConfig): ProxyConfig {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    const b = out[k];
    out[k] = v && typeof v === 'object' && !Array.isArray(v) && b && typeof b === 'object' && k !== 'tokens' ? merge(b as ProxyConfig, v as ProxyConfig) : v;
  }
  return out as ProxyConfig;
}

/** Everything the proxy command runs with, resolved from a config: the proxy's options and the rest. */
export interface Runtime {
  /** The proxy's own options (logger, observer and clock are the command's to add). */
  options: ProxyOptions;
  log: { level: Level; format: 'text' | 'json'; color: boolean; summaryMs?: number; accessLog?: string; accessLogFlushMs?: number };
  /** `readyPolicies`: /readyz is 503 while one of them has no server serving (none: not checked); `departedPolicies`: how many that left /metrics keeps the series of. */
  admin?: { host: string; port: number; token?: string; readyPolicies: string[]; departedPolicies: number };
  registry?: RegistryOptions & { advertise?: string };
  inspect?: number;
  inspectLog?: string;
  inspectToken?: string;
  /** Each certificate file loaded (tls, registry.tls), and each CRL of tls.crl: for the metrics of their ends, and the warning before one. */
  certs: LoadedCert[];
  /** What the TLS files loaded hold that works, but not everywhere or not for long (`tlsWarnings`, and tls.crl's `crlWarnings`): warned of at start, at each reload and by --check. */
  tlsWarnings: TlsWarning[];
}

/**
 * What the proxy does with each section's certificate, which it must be fit for (`CertPurpose`): it serves
 * `tls.cert` on its port, and presents `upstream_tls.cert` to servers (its one use: mutual TLS with them). It
 * presents `registry.tls.cert` to etcd, which asks only with --client-cert-auth, and without `upstream_tls`
 * `tls.cert` to servers when it dials them (with `tls.ca`), which only a server with --tls-ca asks for: a
 * certificate without clientAuth there is warned of (`tlsWarnings`' mayPresent), not refused.
 */
const CERT_NEEDS: Record<TlsSection, readonly CertPurpose[]> = { tls: ['serverAuth'], upstream_tls: ['clientAuth'], 'registry.tls': [] };

/** The sections of TLS files. */
type TlsSection = 'tls' | 'upstream_tls' | 'registry.tls';

/** A section's TLS settings as sentences name them: by the flag that gave each (`flagOf`), else by its key. */
function keysOf(section: TlsSection, flagOf: (key: FileKey) => string | undefined = () => undefined): Required<TlsNames> {
  const name = (role: 'cert' | 'key' | 'ca' | 'crl'): string => flagOf(`${section}.${role}` as FileKey) ?? `${section}.${role}`;
  return { cert: name('cert'), key: name('key'), ca: name('ca'), crl: name('crl') };
}

/**
 * Turn a config into what the proxy runs with, reading the files it names
 * (tokens file, TLS files: a FileError names the file that cannot be used,
 * why, and what it should hold). `flagOf`: the flag that gave a file's key,
 * which names it in the TLS warnings.
 */
export function toRuntime(c: ProxyConfig, flagOf?: (key: FileKey) => string | undefined): Runtime {
  const options: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(NUMBERS)) {
    const v = c[k as NumberKey];
    if (v !== undefined) options[s.option] = v;
  }
  if (c.host !== undefined) options.host = c.host;
  if (c.token !== undefined) options.token = c.token;
  if (c.tokens) options.tokens = { ...c.tokens };
  if (c.tokens_file) options.tokens = loadTokens(c.tokens_file);
  if (c.proxy_protocol_from !== undefined) options.proxyProtocolFrom = c.proxy_protocol_from;
  if (c.retry_on !== undefined) options.retryOn = retryOnOf(c.retry_on);
  if (c.hedge_on_try_timeout !== undefined) options.hedgeOnTryTimeout = c.hedge_on_try_timeout;
  if (c.old_server_connections !== undefined) options.oldServers = { connections: c.old_server_connections };
  const tls = c.tls ? tlsFromFlags({ tlsCert: c.tls.cert, tlsKey: c.tls.key, tlsCa: c.tls.ca, tlsCrl: c.tls.crl }, undefined, CERT_NEEDS.tls) : undefined;
  if (tls?.cert) options.tls = tls;
  const log = c.log ?? {};
  const clashes = [...portClashes(c), ...unadvertisable(c), ...upstreamClashes(c)];
  if (clashes.length) throw new ConfigError('the configuration', clashes);
  // Toward the servers: upstream_tls when given, alone; else the tls files when they have a CA, as before upstream_tls was.
  const up = upstreamOf(c, tls, flagOf);
  if (up) options.upstreamTls = up;
  const registry = toRegistry(c.registry);
  return {
    options: options as ProxyOptions,
    log: { level: log.level ?? 'info', format: log.format ?? 'text', color: log.color ?? true, summaryMs: log.summary_interval, accessLog: log.access_log, accessLogFlushMs: log.access_log_flush },
    admin: toAdmin(c.admin),
    registry,
    inspect: c.inspect,
    inspectLog: c.inspect_log,
    inspectToken: c.inspect_token,
    certs: [
      ...loadedCerts(c.tls, tls, { cert: 'tls.cert', ca: 'tls.ca', crl: 'tls.crl' }),
      ...(c.upstream_tls ? loadedCerts(c.upstream_tls, up, { cert: 'upstream_tls.cert', ca: 'upstream_tls.ca', crl: 'upstream_tls.crl' }) : []),
      ...loadedCerts(c.registry?.tls, registry?.tls, { cert: 'registry.tls.cert', ca: 'registry.tls.ca' }),
    ],
    // Clients dial `host` (unless it is every address) and, finding the proxy in etcd, its advertised address.
    tlsWarnings: [
      ...tlsWarnings(tls, keysOf('tls', flagOf), { paths: c.tls, mayPresent: Boolean(tls?.ca) && !c.upstream_tls, dialledAs: [{ host: c.host ?? DEFAULT_LISTEN_HOST, setting: 'host, --host', listening: true }, ...(c.registry?.advertise ? [{ host: c.registry.advertise, setting: 'registry.advertise, --advertise' }] : [])] }),
      ...tlsWarnings(registry?.tls, keysOf('registry.tls', flagOf), { paths: c.registry?.tls, mayPresent: true }),
      ...crlWarnings(tls, { cert: 'tls.cert', key: 'tls.key', ca: 'tls.ca' }, c.tls?.crl).map((message) => ({ event: 'tls_crl_problem', setting: 'tls.crl', message })),
      ...(c.upstream_tls ? [
        ...tlsWarnings(up, keysOf('upstream_tls', flagOf), { paths: c.upstream_tls }),
        ...crlWarnings(up, { cert: 'upstream_tls.cert', key: 'upstream_tls.key', ca: 'upstream_tls.ca' }, c.upstream_tls.crl).map((message) => ({ event: 'tls_crl_problem', setting: 'upstream_tls.crl', message })),
      ] : []),
    ],
  };
}

/**
 * What the proxy dials its servers with (`ProxyOptions.upstreamTls`), from a config: `upstream_tls`'s files, server name and names
 * when it is given, whatever `tls` holds (it wins: one CA for clients and another for servers); else `tls`'s files
 * when they have a CA, as before `upstream_tls` was (mutual TLS on the port, and servers verified against the same
 * CA); else nothing (plain TCP to servers).
 */
function upstreamOf(c: ProxyConfig, tls: TlsMaterial | undefined, flagOf?: (key: FileKey) => string | undefined): UpstreamTlsMaterial | undefined {
  const u = c.upstream_tls;
  if (!dialsTls(c)) return undefined;
  if (!u) return tls;
  const material = tlsFromFlags({ tlsCert: u.cert, tlsKey: u.key, tlsCa: u.ca, tlsCrl: u.crl }, keysOf('upstream_tls', flagOf), CERT_NEEDS.upstream_tls) ?? {};
  return { ...material, ...(u.server_name !== undefined ? { serverName: u.server_name } : {}), ...(u.names?.length ? { names: [...new Set(u.names)] } : {}) };
}

/**
 * `upstream_tls` that cannot be used, said as the settings that clash (the files' contents are the loader's): without
 * `ca` it would verify servers against the system's CAs, which sign no server dialled at its address on a private
 * network (and would take any certificate one of them signed); a certificate without its key, or a key without it.
 */
function upstreamClashes(c: ProxyConfig): Issue[] {
  const u = c.upstream_tls;
  if (!u) return [];
  const issues: Issue[] = [];
  if (u.ca === undefined) {
    issues.push({ line: 0, col: 0, path: 'upstream_tls.ca', message: `upstream_tls needs ca (--upstream-tls-ca): the PEM CA that signs the servers' certificates, which the proxy verifies every server against (give tls.ca's file if the same CA signs both)${c.tls?.ca ? '; upstream_tls replaces tls toward servers, so tls.ca is not used there' : ''}` });
  }
  if ((u.cert === undefined) !== (u.key === undefined)) {
    issues.push({ line: 0, col: 0, path: u.cert === undefined ? 'upstream_tls.cert' : 'upstream_tls.key', message: 'upstream_tls needs both cert and key (the certificate the proxy presents to servers that ask for one, and its key), or neither' });
  }
  return issues;
}

/**
 * The proxy's own listeners (its port, the admin endpoint, the inspector) that would share a port on
 * addresses that overlap (the same address, or either on every address): the second to open failed
 * "port P on H is already in use: stop what holds it", blaming another program, and --check passed
 * it. Port 0 (a free one each) never clashes. Each clash is named on the later setting, saying both.
 */
function portClashes(c: ProxyConfig, addressOf: ReadonlyMap<string, string> = new Map()): Issue[] {
  const listeners = [
    { path: 'port', names: "the proxy's port (port, --port)", host: c.host ?? DEFAULT_LISTEN_HOST, port: c.port ?? DEFAULTS.port },
    ...(c.admin?.listen ? [{ path: 'admin.listen', names: 'the admin endpoint (admin.listen, --admin)', host: c.admin.listen.host, port: c.admin.listen.port }] : []),
    ...(c.inspect !== undefined ? [{ path: 'inspect', names: 'the inspector (inspect, --inspect, on 127.0.0.1)', host: '127.0.0.1', port: c.inspect }] : []),
  ];
  const issues: Issue[] = [];
  // A name as the start resolved it (`checkListenNames`), said beside it: `localhost:2100 (127.0.0.1)`.
  const address = (x: { host: string }): string => addressOf.get(x.host) ?? x.host;
  const said = (x: { host: string; port: number }): string => `${hostAndPort(x.host, x.port)}${addressOf.has(x.host) ? ` (${address(x)})` : ''}`;
  for (const [j, b] of listeners.entries()) {
    // However each is spelt (`localhost.`, `[::ffff:127.0.0.1]`, `0:0:0:0:0:0:0:1`): only spellings that differ passed --check.
    const same = (x: { host: string }): boolean => canonicalHost(address(x)) === canonicalHost(address(b));
    const a = listeners.slice(0, j).find((x) => x.port !== 0 && x.port === b.port && (same(x) || isEveryAddress(address(x)) || isEveryAddress(address(b))));
    if (!a) continue;
    const overlap = same(a) ? 'the same address and port' : 'the same port, on addresses that overlap';
    issues.push({ line: 0, col: 0, path: b.path, message: `${b.names}, ${said(b)}, and ${a.names}, ${said(a)}, are ${overlap}: one process cannot listen there twice; give each its own port` });
  }
  return issues;
}

/** How long a listen name's lookup may take before it is compared as written (`checkListenNames`). */
const LISTEN_LOOKUP_MS = 3000;

/**
 * The proxy's own listeners that share a port once their names are resolved as a start resolves them
 * (the first address of a lookup, as Node's listen takes it), thrown as `toRuntime` throws those it sees as written: `host: localhost` beside `admin.listen:
 * 127.0.0.1:P` passed `--check`, then the start failed "port P on localhost is already in use: stop what
 * holds it", the admin endpoint holding it. `--check`, a start (before it listens) and a reload ask.
 * A name that does not resolve in time is compared as written (`--check` warns of it on its own).
 */
export async function checkListenNames(c: ProxyConfig): Promise<void> {
  const hosts = [c.host, c.admin?.listen?.host].filter((h): h is string => h !== undefined && isIP(h) === 0 && !isEveryAddress(h));
  if (!hosts.length) return;
  const addressOf = new Map<string, string>();
  await Promise.all(hosts.map(async (host) => {
    const found = await Promise.race([lookup(host).then((a) => a.address, () => undefined), wait(LISTEN_LOOKUP_MS, undefined, { ref: false })]);
    if (found !== undefined) addressOf.set(host, found);
  }));
  const clashes = portClashes(c, addressOf);
  if (clashes.length) throw new ConfigError('the configuration', clashes);
}

/**
 * A registry proxy listening on every address with no `registry.advertise`: it would advertise the
 * wildcard, which no client can dial. The start refused it; --check passed it (a systemd unit's
 * ExecStartPre, then a failed start).
 */
function unadvertisable(c: ProxyConfig): Issue[] {
  const host = c.host ?? DEFAULT_LISTEN_HOST;
  if (!c.registry || c.registry.advertise !== undefined || !isEveryAddress(host)) return [];
  return [{ line: 0, col: 0, path: 'host', message: `the proxy listens on ${host}, every address, and advertises itself in the registry: say which address clients should dial to reach it (registry.advertise, --advertise HOST)` }];
}

function toAdmin(a: ProxyConfig['admin']): Runtime['admin'] {
  const issues: Issue[] = [];
  if (a?.ready_policies?.length && !a.listen) issues.push({ line: 0, col: 0, path: 'admin.ready_policies', message: 'ready policies were given without the admin endpoint that reports them (/readyz): add --admin HOST:PORT (or admin.listen in the file)' });
  // A token with no endpoint protects nothing: the operator meant to serve /metrics and does not.
  if (a?.token !== undefined && !a.listen) issues.push({ line: 0, col: 0, path: 'admin.token', message: 'an admin token was given without the admin endpoint it protects (/metrics): add --admin HOST:PORT (or admin.listen in the file), or remove the token' });
  if (a?.metrics_departed_policies !== undefined && !a.listen) issues.push({ line: 0, col: 0, path: 'admin.metrics_departed_policies', message: 'a bound on the departed policies /metrics keeps was given without the admin endpoint that serves /metrics: add --admin HOST:PORT (or admin.listen in the file), or remove it' });
  if (issues.length) throw new ConfigError('the configuration', issues);
  return a?.listen ? { ...a.listen, token: a.token, readyPolicies: [...new Set(a.ready_policies ?? [])], departedPolicies: a.metrics_departed_policies ?? DEPARTED_POLICIES_KEPT } : undefined;
}

/**
 * A clash of settings found after the file and the flags merged (line 0) is
 * pointed back into the file when the file set the setting named, as the
 * schema's own refusals are (`file:line:col`). One a flag set (`flagOf` names
 * it) is named by the flag, and pointed at the file's section it clashes with
 * (`admin:` without `listen`) when the file has one.
 */
export function anchorIssues(err: unknown, file: string, flagOf: (path: string) => string | undefined = () => undefined): unknown {
  if (!(err instanceof ConfigError) || err.issues.every((i) => i.line !== 0)) return err;
  let source: string;
  try {
    source = readFileSync(file, 'utf8');
  } catch {
    return err;
  }
  const lines = new (yaml().LineCounter)();
  const doc = yaml().parseDocument(source, { lineCounter: lines, uniqueKeys: false });
  const issues = err.issues.map((i) => {
    if (i.line !== 0) return i;
    const flag = flagOf(i.path);
    const keys = i.path.split('.');
    const named = flag ? { ...i, path: `${i.path} (${flag})` } : i;
    const node = doc.getIn(flag ? keys.slice(0, -1) : keys, true) as { range?: [number, number, number] } | undefined;
    return node?.range && (!flag || keys.length > 1) ? { ...named, ...lines.linePos(node.range[0]) } : named;
  });
  return new ConfigError(issues.some((i) => i.line !== 0) ? file : err.file, issues);
}

function toRegistry(r: ProxyConfig['registry']): Runtime['registry'] {
  if (!r) return undefined;
  if (!r.url) throw new ConfigError('the configuration', [{ line: 0, col: 0, path: 'registry.url', message: 'registry settings were given without the registry itself: add --registry etcd://HOST:PORT (or registry.url in the file)' }]);
  const { endpoints, tls } = parseRegistryUrl(r.url);
  const material = r.tls ? tlsFromFlags({ tlsCa: r.tls.ca, tlsCert: r.tls.cert, tlsKey: r.tls.key }, keysOf('registry.tls'), CERT_NEEDS['registry.tls']) : undefined;
  return { endpoints, prefix: r.prefix, ttlSeconds: r.ttl, advertise: r.advertise, username: r.username, password: r.password, tls: material ?? (tls ? {} : undefined) };
}

/** A file the config names that cannot be used: at the line of its key (line 0 here: `anchorIssues` places it). */
function fileIssue(source: string, what: string, path: string, why: string): ConfigError {
  return new ConfigError(source, [{ line: 0, col: 0, path: what, message: `${path}: ${why}` }]);
}

/** Why a log file cannot be opened for appending, in words (a missing folder is not created: the proxy would not create it either). */
export function whyNotWritable(err: unknown, path: string): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
      if (!existsSync(dirname(path))) return `its folder ${dirname(path)} does not exist: create it, or name another file`;
      break;
    case 'ENOSPC':
    case 'EDQUOT':
      return `the disk it is on is full (${(err as NodeJS.ErrnoException).code}): free some space there, or name a file on another disk`;
    case 'EROFS':
      return 'its file system is read-only (EROFS): name a file on a writable one (such as /run or /tmp in a container)';
  }
  return whyUnreadable(err);
}

/**
 * Throws why `path` could not be opened for writing, without creating it: a file that exists must be
 * writable and not a folder, a new one's folder must exist and be writable. `--check` run as root (as
 * `nginx -t` is) created the access log it checked, owned by root, and the service's own user could then
 * not open it: the proxy would not start.
 */
export function assertWritable(path: string): void {
  let folder = false;
  try {
    folder = statSync(path).isDirectory();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    accessSync(dirname(resolve(path)), constants.W_OK);
    return;
  }
  if (folder) throw Object.assign(new Error(`'${path}' is a folder`), { code: 'EISDIR' });
  accessSync(path, constants.W_OK);
}

/**
 * Every problem `checkRuntime` found, at once: `issues` those of settings the file made (line 0:
 * `anchorIssues` places each at its key's line) and the settings that clash; `given` those of files a
 * flag named, each a sentence naming its flag.
 */
export class RuntimeProblems extends ConfigError {
  constructor(file: string, issues: Issue[], readonly given: string[]) {
    super(file, issues);
    this.name = 'RuntimeProblems';
    if (given.length) this.message = [...(issues.length ? [this.message] : []), ...given].join('\n');
  }
}

/** The settings naming a file the proxy reads or writes: each named by its flag when a flag gave it (`flagOf`). */
export type FileKey = 'tokens_file' | 'tls.cert' | 'tls.key' | 'tls.ca' | 'tls.crl' | 'upstream_tls.cert' | 'upstream_tls.key' | 'upstream_tls.ca' | 'upstream_tls.crl' | 'registry.tls.cert' | 'registry.tls.key' | 'registry.tls.ca' | LogFileKey;

/**
 * What `--check` does beyond reading: the files a config names can be used
 * (tokens, TLS; the access log and inspection log can be opened for
 * appending, as nginx -t opens its logs), and its settings fit together.
 * Every problem is found, then thrown at once (`RuntimeProblems`): each file
 * the config file named at its key, each a flag named by the flag.
 */
export function checkRuntime(c: ProxyConfig, source: string, flagOf: (key: FileKey) => string | undefined = () => undefined, opts: { logs?: boolean } = {}): Runtime {
  const issues: Issue[] = [];
  const given: string[] = [];
  // A flag's file is said as before, with what the flag takes.
  const hintOf = (key: FileKey): string => {
    if (key === 'tokens_file') return TOKENS_HINT;
    const [section, role] = key.startsWith('registry.') ? ['registry.tls', key.slice(13)] : key.startsWith('upstream_tls.') ? ['upstream_tls', key.slice(13)] : ['tls', key.slice(4)];
    const f = (r: string): string => flagOf(`${section}.${r}` as FileKey) ?? `${section}.${r}`;
    return tlsFileHint({ cert: f('cert'), key: f('key'), ca: f('ca'), crl: f('crl') }, role as 'cert' | 'key' | 'ca' | 'crl');
  };
  const readable = (key: FileKey, path: string | undefined): boolean => {
    if (path === undefined) return true;
    try {
      if (statSync(path).isDirectory()) throw Object.assign(new Error('is a folder'), { code: 'EISDIR' });
      closeSync(openSync(path, 'r'));
      return true;
    } catch (err) {
      if (flagOf(key)) given.push(`cannot read the ${key === 'tokens_file' ? 'tokens' : flagOf(key)} file '${path}': ${whyUnreadable(err)}; ${hintOf(key)}`);
      else issues.push({ line: 0, col: 0, path: key, message: `${path}: cannot read it: ${whyUnreadable(err)}` });
      return false;
    }
  };
  // The contents of a file read whole: a problem names the file as its loader does.
  const contents = (key: FileKey, path: string, load: () => unknown): boolean => {
    try {
      load();
      return true;
    } catch (err) {
      if (!(err instanceof FileError)) throw err;
      if (flagOf(key)) given.push(err.message);
      else issues.push({ line: 0, col: 0, path: key, message: err.message });
      return false;
    }
  };
  const next: ProxyConfig = { ...c };
  if (c.tokens_file !== undefined && !(readable('tokens_file', c.tokens_file) && contents('tokens_file', c.tokens_file, () => loadTokens(c.tokens_file!)))) delete next.tokens_file;
  for (const section of ['tls', 'upstream_tls', 'registry.tls'] as const) {
    const files: { cert?: string; key?: string; ca?: string; crl?: string } | undefined = section === 'tls' ? c.tls : section === 'upstream_tls' ? c.upstream_tls : c.registry?.tls;
    if (!files) continue;
    const key = (role: 'cert' | 'key' | 'ca' | 'crl'): FileKey => `${section}.${role}` as FileKey;
    const names = keysOf(section, flagOf);
    const flags = { tlsCert: files.cert, tlsKey: files.key, tlsCa: files.ca, tlsCrl: files.crl };
    // A certificate without its key (or a key without its certificate) is said first, as before: settings that do not go
    // together, named as the flags when a flag gave either (`--tls-cert and --tls-key go together`).
    if (Boolean(files.cert) !== Boolean(files.key)) {
      const byFlag = flagOf(key('cert')) !== undefined || flagOf(key('key')) !== undefined;
      tlsFromFlags(flags, byFlag ? { ...names, cert: flagOfKey(key('cert')) ?? names.cert, key: flagOfKey(key('key')) ?? names.key } : names);
    }
    let ok = (['cert', 'key', 'ca', 'crl'] as const).map((role) => readable(key(role), files[role])).every(Boolean);
    // upstream_tls without its CA is said as the settings that clash (`upstreamClashes`), not as what its CRL goes with.
    if (ok && section === 'upstream_tls' && files.ca === undefined) continue;
    // Readable: a certificate that does not match its key, or has expired, is said by the loader, naming its setting (a CRL that is none, its own).
    if (ok) ok = contents(key(files.cert ? 'cert' : 'ca'), files.cert ?? files.ca ?? '', () => tlsFromFlags({ ...flags, tlsCrl: undefined }, names, CERT_NEEDS[section])) && (files.crl === undefined || contents(key('crl'), files.crl, () => tlsFromFlags(flags, names, CERT_NEEDS[section])));
    if (ok) continue;
    if (section === 'tls') delete next.tls;
    else if (section === 'upstream_tls') delete next.upstream_tls;
    else next.registry = { ...next.registry!, tls: undefined };
  }
  // A reload (logs: false) reopens the access log itself, and keeps the one open when it cannot.
  for (const [what, p] of opts.logs === false ? [] : ([['log.access_log', c.log?.access_log], ['inspect_log', c.inspect_log]] as const)) {
    if (p === undefined || p === '-') continue;
    try {
      assertWritable(p);
    } catch (err) {
      const flag = flagOf(what);
      if (flag) given.push(`cannot open the ${flag} file '${p}' for writing: ${whyNotWritable(err, p)}`);
      else issues.push({ line: 0, col: 0, path: what, message: `${p}: cannot open it for writing: ${whyNotWritable(err, p)}` });
    }
  }
  // The settings that clash, found with the rest (the files that failed left out: each is said once).
  let rt: Runtime | undefined;
  try {
    rt = toRuntime(next, flagOf);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    issues.push(...err.issues);
  }
  if (issues.length || given.length || !rt) throw new RuntimeProblems(source, issues, given);
  return rt;
}

/** The keys of the log files a config names. */
export type LogFileKey = 'log.access_log' | 'inspect_log';

/** A log file that cannot be opened for writing: named by its flag when a flag gave it, else by the file's key. */
export function logFileIssue(source: string, key: LogFileKey, path: string, why: string, flag: string | undefined): Error {
  return flag ? new FileError(`cannot open the ${flag} file '${path}' for writing: ${why}`) : fileIssue(source, key, path, `cannot open it for writing: ${why}`);
}

/** A setting that changed between two configs, and whether a reload can apply it. */
export interface Change {
  key: string;
  reload: Reload;
}

const OTHER_RELOAD: Record<keyof typeof otherFields, Reload> = {
  host: 'restart',
  token: 'live',
  tokens: 'live',
  tokens_file: 'live',
  proxy_protocol_from: 'new',
  retry_on: 'live',
  hedge_on_try_timeout: 'live',
  old_server_connections: 'new',
  tls: 'new',
  upstream_tls: 'new',
  log: 'live',
  admin: 'restart',
  registry: 'restart',
  inspect: 'restart',
  inspect_log: 'restart',
  inspect_token: 'restart',
};

/**
 * A configuration with its defaults written out, as it runs: what `changes` compares, so a setting
 * written with the value it already had (a default added to the file, or one a reload that needed
 * a restart left running) is no change. A default computed from other settings (try_timeout from
 * timeout) is computed here too. Files are not read: their paths are what is compared.
 */
export function effective(c: ProxyConfig): ProxyConfig {
  const options: Record<string, unknown> = {};
  for (const [k, s] of Object.entries(NUMBERS)) if (c[k as NumberKey] !== undefined) options[s.option] = c[k as NumberKey];
  if (c.host !== undefined) options.host = c.host;
  if (c.retry_on !== undefined) options.retryOn = retryOnOf(c.retry_on);
  const resolved = resolveOptions(options as ProxyOptions) as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = { ...c };
  for (const [k, s] of Object.entries(NUMBERS)) out[k] = resolved[s.option];
  out.host = resolved.host;
  out.old_server_connections = c.old_server_connections ?? (resolved.oldServers as { connections: number }).connections;
  out.retry_on = resolved.retryOn;
  out.hedge_on_try_timeout = c.hedge_on_try_timeout ?? resolved.hedgeOnTryTimeout;
  const log = c.log ?? {};
  out.log = {
    level: log.level ?? 'info', format: log.format ?? 'text', color: log.color ?? true, summary_interval: log.summary_interval ?? SUMMARY_INTERVAL_MS,
    access_log: log.access_log, access_log_flush: log.access_log_flush ?? ACCESS_LOG_HOLD.ms,
  };
  if (c.admin) out.admin = { ...c.admin, ready_policies: [...new Set(c.admin.ready_policies ?? [])], metrics_departed_policies: c.admin.metrics_departed_policies ?? DEPARTED_POLICIES_KEPT };
  if (c.registry) out.registry = { ...c.registry, prefix: c.registry.prefix ?? REGISTRY_DEFAULTS.prefix, ttl: c.registry.ttl ?? REGISTRY_DEFAULTS.ttlSeconds };
  return out as ProxyConfig;
}

/** Whether a config has the proxy dial its servers over TLS: with upstream_tls, or with tls's ca (`upstreamOf` takes the files). */
export function dialsTls(c: ProxyConfig): boolean {
  return Boolean(c.upstream_tls || c.tls?.ca);
}

/**
 * Which settings differ (tokens compared without ever being shown), each with when it takes effect:
 * their values as they run (`effective`), not as written.
 */
export function changes(was: ProxyConfig, next: ProxyConfig): Change[] {
  const out: Change[] = [];
  const before = effective(was);
  const after = effective(next);
  // A default computed from a setting that needs a restart follows the value running, as the reload
  // resolves it (cli/proxy.ts): max_conns_per_peer's from host, max_connections' from max_buffered_bytes.
  const kept = effective({ ...next, host: was.host, max_buffered_bytes: was.max_buffered_bytes });
  after.max_conns_per_peer = kept.max_conns_per_peer;
  after.max_connections = kept.max_connections;
  for (const key of Object.keys(proxyConfigSpec.fields) as Array<keyof ProxyConfig>) {
    if (JSON.stringify(before[key]) === JSON.stringify(after[key])) continue;
    const reload = key in NUMBERS ? NUMBERS[key as NumberKey].reload : OTHER_RELOAD[key as keyof typeof otherFields];
    // Within a section, some settings apply at once and some need a restart.
    if (key === 'admin') {
      // The token and the ready policies are the running endpoint's, and change at once; with the endpoint itself
      // changed (moved, added, or the section removed: a restart) they go with it, and it keeps its own until then.
      // Removing the section said "applied admin.token" while /metrics kept asking for it.
      const moved = JSON.stringify(before.admin?.listen) !== JSON.stringify(after.admin?.listen);
      const reload = moved ? 'restart' : 'live';
      if (moved) out.push({ key: 'admin.listen', reload });
      if (before.admin?.token !== after.admin?.token) out.push({ key: 'admin.token', reload });
      if (JSON.stringify(before.admin?.ready_policies ?? []) !== JSON.stringify(after.admin?.ready_policies ?? [])) out.push({ key: 'admin.ready_policies', reload });
      if ((before.admin?.metrics_departed_policies ?? DEPARTED_POLICIES_KEPT) !== (after.admin?.metrics_departed_policies ?? DEPARTED_POLICIES_KEPT)) out.push({ key: 'admin.metrics_departed_policies', reload });
    } else if (key === 'tls') {
      // Other files in the same roles are swapped in on a reload (as renewed ones at the same paths are);
      // TLS turned on or off, or mutual TLS (a CA), is how the listener was made: a restart.
      const shape = (t: ProxyConfig['tls']): string => `${Boolean(t?.cert)} ${Boolean(t?.ca)}`;
      out.push({ key, reload: shape(before.tls) === shape(after.tls) ? 'new' : 'restart' });
    } else if (key === 'upstream_tls') {
      // Other files or names are taken on a reload (the next dials use them); TLS toward servers turned on or off
      // (upstream_tls added to or removed from a proxy whose tls has no ca) is how its links dial: a restart.
      out.push({ key, reload: dialsTls(before) === dialsTls(after) ? 'new' : 'restart' });
    } else if (key === 'registry') {
      // etcd's TLS files (a renewed client certificate, a new CA bundle) are taken on a reload: a new etcd client is made
      // with them (registry/etcd-client.ts). TLS to etcd turned on or off, and the rest of the registry, need a restart.
      const { tls: a, ...restBefore } = before.registry ?? {};
      const { tls: b, ...restAfter } = after.registry ?? {};
      if (JSON.stringify(restBefore) !== JSON.stringify(restAfter)) out.push({ key, reload: 'restart' });
      if (JSON.stringify(a) !== JSON.stringify(b)) out.push({ key: 'registry.tls', reload: a && b ? 'new' : 'restart' });
    } else if (key === 'log') {
      for (const sub of ['level', 'format', 'color', 'summary_interval', 'access_log', 'access_log_flush'] as const) {
        if (before.log?.[sub] === after.log?.[sub]) continue;
        out.push({ key: `log.${sub}`, reload: sub === 'level' ? 'live' : 'restart' });
      }
    } else out.push({ key, reload });
  }
  return out;
}
