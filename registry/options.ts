/**
 * What a registry is given: where etcd is (`etcd://HOST:PORT[,HOST:PORT...]`),
 * the prefix every key lives under, the lease TTL, and etcd's own
 * credentials (user and password, TLS). One type for the server, the proxy
 * and the client; the defaults are written here once.
 */
import type { TlsMaterial } from '../transport/tls.js';
import { bracketHint, numericHostProblem } from '../transport/address.js';
import { isPlainObject, kindOf } from '../transport/errors.js';

export interface RegistryOptions {
  /** etcd's client endpoints, `host:port` each (from `etcd://a:2379,b:2379`). */
  endpoints: string[];
  /** Every key lives under it (default `/revproxy/`). Proxies and servers of one fleet share it. */
  prefix?: string | undefined;
  /** Lease TTL in whole seconds (default 5): a server or proxy that dies is gone from etcd this long after. */
  ttlSeconds?: number | undefined;
  /** etcd's authentication (etcd's own users; `etcdctl auth enable`). */
  username?: string | undefined;
  password?: string | undefined;
  /** TLS to etcd: its CA, and a client certificate when etcd asks for one (`--client-cert-auth`). */
  tls?: TlsMaterial | undefined;
  /** How long one call to etcd may take (ms, default 2000). */
  callTimeoutMs?: number | undefined;
  /** While etcd cannot be reached, try again this often at first (ms, default 250), doubling up to `retryMaxMs`. */
  retryInitialMs?: number | undefined;
  /** Default 2000. */
  retryMaxMs?: number | undefined;
}

export type Resolved = Required<Omit<RegistryOptions, 'username' | 'password' | 'tls'>> & Pick<RegistryOptions, 'username' | 'password' | 'tls'>;

export const REGISTRY_DEFAULTS = { prefix: '/revproxy/', ttlSeconds: 5, callTimeoutMs: 2000, retryInitialMs: 250, retryMaxMs: 2000 } as const;

export function resolveRegistry(o: RegistryOptions): Resolved {
  const prefix = o.prefix ?? REGISTRY_DEFAULTS.prefix;
  return {
    ...REGISTRY_DEFAULTS,
    ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)),
    endpoints: o.endpoints,
    prefix: prefix.endsWith('/') ? prefix : `${prefix}/`,
  } as Resolved;
}

/** Whether a `--revproc` or `--registry` value names etcd rather than proxies. */
export function isRegistryUrl(value: string): boolean {
  return /^etcds?:\/\//i.test(value.trim());
}

/**
 * `etcd://HOST:PORT[,HOST:PORT...]` -> the endpoints; `etcds://` is the same
 * over TLS (which then needs the CA of etcd's certificate, or the system's).
 * Throws a TypeError that says what was expected.
 */
export function parseRegistryUrl(value: string): { endpoints: string[]; tls: boolean } {
  const m = /^(etcds?):\/\/(.+)$/i.exec(value.trim());
  const expected = `expected etcd://HOST:PORT (a comma-separated list for several etcd members), got '${value}'`;
  if (!m) throw new TypeError(expected);
  const endpoints = m[2]!.replace(/\/+$/, '').split(',').map((s) => s.trim()).filter(Boolean);
  if (endpoints.length === 0) throw new TypeError(expected);
  for (const e of endpoints) {
    const why = endpointProblem(e);
    if (why) throw new TypeError(`'${e}' in ${value} ${why}; ${expected}`);
  }
  return { endpoints, tls: m[1]!.toLowerCase() === 'etcds' };
}

/**
 * Why `e` is no etcd endpoint (`HOST:PORT`, an IPv6 host in brackets), said as the end of a sentence "'e' ...",
 * or undefined. etcd's own tools take URLs (`etcdctl --endpoints http://127.0.0.1:2379`), and a library caller
 * who gave one waited out the registration's timeout for "the name http does not resolve"; an address
 * like 0127.0.0.1 reached 87.0.0.1 (`numericHostProblem`).
 */
export function endpointProblem(e: string): string | undefined {
  const url = /^(https?):\/\/([^/?#]+)\/*$/i.exec(e.trim());
  if (url) {
    const tls = url[1]!.toLowerCase() === 'https' ? ', with TLS as the tls option (etcds:// in a URL)' : '';
    return `is a URL: an endpoint is etcd's host and port alone, '${url[2]}'${tls}`;
  }
  const hp = /^(?:\[([^\]]+)\]|([^:/\s]+)):(\d{1,5})$/.exec(e);
  if (!e.includes(':') && e.trim() !== '') return `has no port: give HOST:PORT (${e.trim()}:2379, etcd's client port by default)`;
  if (!hp || Number(hp[3]) < 1 || Number(hp[3]) > 65535) {
    const v6 = bracketHint(e);
    return `is not HOST:PORT${v6 ? ` (${v6})` : ''}`;
  }
  const numeric = hp[2] === undefined ? undefined : numericHostProblem(hp[2]);
  return numeric && `names no address: ${numeric}`;
}

/**
 * What is wrong with a library caller's `registry` option, if anything: an object whose `endpoints` is a
 * list of `HOST:PORT`. Unchecked, a string of endpoints failed with "o.endpoints.map is not a function" and an
 * empty list with etcd3's "Cannot construct an etcd client with no hosts specified", neither with a code.
 */
export function badRegistryOption(r: unknown): string | undefined {
  const example = "{ endpoints: ['127.0.0.1:2379'] }";
  if (!isPlainObject(r)) return `registry must be an object (${example}), got ${kindOf(r)}`;
  const { endpoints } = r as { endpoints?: unknown };
  if (!Array.isArray(endpoints) || endpoints.length === 0) {
    const got = endpoints === undefined ? 'none' : Array.isArray(endpoints) ? 'an empty list' : typeof endpoints === 'string' ? `the string '${endpoints}' (a list is [${endpoints.split(',').map((x) => `'${x.trim()}'`).join(', ')}])` : typeof endpoints;
    return `registry.endpoints must be a list of etcd's client addresses, HOST:PORT each (${example}), got ${got}`;
  }
  for (const e of endpoints) {
    const why = typeof e === 'string' ? endpointProblem(e) : `is a ${e === null ? 'null' : typeof e}, not a string HOST:PORT`;
    if (why) return `registry.endpoints: '${String(e)}' ${why}`;
  }
  return undefined;
}

/** The endpoints as a URL again, for messages. */
export function describeRegistry(o: { endpoints: string[]; tls?: unknown }): string {
  return `etcd${o.tls ? 's' : ''}://${o.endpoints.join(',')}`;
}
