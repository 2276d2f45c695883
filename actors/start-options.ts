/**
 * What every entry of the library (`startProxy`, `startServer`, `connect`, `runClient`) checks
 * alike before it starts an actor, and the options every actor is created with: one owner for
 * both, so the four cannot drift apart.
 */
import type { InspectionEvent } from 'xstate';
import { systemClock, xstateClock, type Clock } from '../transport/clock.js';
import { badRegistryOption } from '../registry/options.js';
import { checkStartTls, checkUpstreamNames, TlsConfigError, type CertPurpose } from '../transport/tls.js';
import { isPlainObject, kindOf } from '../transport/errors.js';

/** The methods a `clock` option must have (`Clock`): a plain object without them started, and failed later, out of any caller's reach. */
const CLOCK_METHODS = ['now', 'setTimeout', 'setInterval'] as const satisfies ReadonlyArray<keyof Clock>;

/**
 * What is wrong with a call's options as a whole, if anything (`example`: what it takes): they are an
 * object; its `clock`, when given, has every `Clock` method; its `inspect` is a function; its `registry`
 * names etcd's endpoints as `HOST:PORT` (registry/options.ts `badRegistryOption`). Unchecked,
 * `startProxy(null)` threw a TypeError from inside, and a `clock` of `{}` started a proxy that
 * ended the process with an uncaught TypeError at its first timer.
 */
export function badStartOptions(opts: unknown, example: string): string | undefined {
  if (!isPlainObject(opts)) {
    return `the options must be an object (${example}), got ${kindOf(opts)}`;
  }
  const { clock, inspect } = opts as { clock?: unknown; inspect?: unknown };
  if (clock !== undefined) {
    const missing = typeof clock === 'object' && clock !== null ? CLOCK_METHODS.filter((m) => typeof (clock as Record<string, unknown>)[m] !== 'function') : CLOCK_METHODS;
    if (missing.length > 0) {
      return `clock must have ${CLOCK_METHODS.map((m) => `${m}()`).join(', ')} (a Clock, as systemClock or a ManualClock, both exported by revproxy); this one has no ${missing.map((m) => `${m}()`).join(', ')}`;
    }
  }
  if (inspect !== undefined && typeof inspect !== 'function') return `inspect must be a function taking XState inspection events, got ${inspect === null ? 'null' : typeof inspect}`;
  const { registry } = opts as { registry?: unknown };
  return registry === undefined ? undefined : badRegistryOption(registry);
}

/**
 * Each TLS option of a library entry (`who`: startProxy, startServer, connect(), runClient()) checked at start
 * (transport/tls.ts `checkStartTls`), a TlsConfigError naming it when it cannot be used; `serves`: the entry's
 * `tls` is a listener's, which needs a certificate (a proxy's; a server's serves TLS only when given one);
 * `needs`: what the certificate of `tls` must be fit for (serverAuth where it serves, clientAuth for a client's).
 * `registry.tls`'s is presented to etcd only, when it asks; `upstreamTls`'s to servers that may not ask for it, and its
 * `names` (what a server's certificate must name) and `serverName` (the name sent and verified in place of the address
 * dialled) are checked as `upstream_tls.names` and `upstream_tls.server_name` in a file are.
 */
export function checkTlsOptions(opts: { tls?: unknown; upstreamTls?: unknown; registry?: { tls?: unknown } }, who: string, serves: boolean, needs: readonly CertPurpose[]): void {
  try {
    checkStartTls('tls', opts.tls, serves, needs);
    checkStartTls('upstreamTls', opts.upstreamTls, false);
    checkStartTls('registry.tls', opts.registry?.tls, false);
    checkUpstreamNames('upstreamTls', opts.upstreamTls);
  } catch (err) {
    throw err instanceof TlsConfigError ? new TlsConfigError(`${who}: ${err.message}`, err.kind) : err;
  }
}

/** What an option must be, when it is not a number (those are `badWholeNumbers`'): a kind, one of some words, or a list. */
export type Kind = 'boolean' | 'function' | 'object' | 'string' | 'strings' | { oneOf: readonly string[] } | { listOf: readonly string[] };

/** `v` as an error message shows it: a string quoted, anything else by its kind. */
function shown(v: unknown): string {
  return typeof v === 'string' ? `'${v}'` : v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v === 'function' ? 'a function' : `${typeof v} ${String(v)}`;
}

/**
 * What is wrong with the options of `kinds` in `opts` (each left out, or of its kind), if anything. Unchecked, a
 * library caller's `host: 127` failed with "host.trim is not a function", `proxyProtocolFrom: 'abc'` with
 * "(...).map is not a function", both without a code; `wire: 'xml'`, `hold: 'no'`, `retryOn: ['bogus']` and
 * a `connect` that was no function started without a word, the last making every request wait out its timeout.
 */
export function badKinds(opts: object, kinds: ReadonlyArray<readonly [string, Kind]>): string | undefined {
  for (const [name, kind] of kinds) {
    const v = (opts as Record<string, unknown>)[name];
    if (v === undefined) continue;
    if (typeof kind === 'object' && 'oneOf' in kind) {
      if (!kind.oneOf.includes(v as string)) return `${name} must be ${kind.oneOf.map((w) => `'${w}'`).join(' or ')}, got ${shown(v)}`;
    } else if (typeof kind === 'object') {
      const odd = Array.isArray(v) ? (v as unknown[]).find((w) => !kind.listOf.includes(w as string)) : v;
      if (!Array.isArray(v) || odd !== undefined) return `${name} must be a list of ${kind.listOf.map((w) => `'${w}'`).join(', ')}, got ${Array.isArray(v) ? `${shown(odd)} in it` : shown(v)}`;
    } else if (kind === 'strings') {
      if (!Array.isArray(v) || v.some((w) => typeof w !== 'string')) return `${name} must be a list of strings, got ${shown(v)}`;
    } else if (kind === 'object' ? !isPlainObject(v) : typeof v !== kind) {
      return `${name} must be ${kind === 'object' ? 'an object' : `a ${kind}`}, got ${shown(v)}`;
    }
  }
  return undefined;
}

let inspectWarned = false;

/**
 * `inspect` with its throw caught: called inside the actor's every step, a caller's inspect that
 * threw failed the start with its own plain Error, or stopped a running actor. The actor goes on;
 * the throw is said once as a process warning (`REVPROXY_INSPECT`), as a log sink's is.
 */
function guardInspect(inspect: (event: InspectionEvent) => void): (event: InspectionEvent) => void {
  return (event) => {
    try {
      inspect(event);
    } catch (err) {
      if (inspectWarned) return;
      inspectWarned = true;
      process.emitWarning(`a revproxy inspect callback threw (${err instanceof Error ? err.message : String(err)}): it misses each event it throws on, and this is said once`, { code: 'REVPROXY_INSPECT' });
    }
  };
}

/** What each actor is created with: its clock (the caller's, or the system's) and the caller's inspect, guarded. */
export function actorOptions(opts: { clock?: Clock; inspect?: (event: InspectionEvent) => void }): { inspect?: (event: InspectionEvent) => void; clock: ReturnType<typeof xstateClock>['clock'] } {
  return { ...(opts.inspect && { inspect: guardInspect(opts.inspect) }), ...xstateClock(opts.clock ?? systemClock) };
}
