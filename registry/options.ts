/**
 * What a registry is given: where etcd is (`etcd://HOST:PORT[,HOST:PORT...]`),
 * the prefix every key lives under, the lease TTL, and etcd's own
 * credentials (user and password, TLS). One type for the server, the proxy
 * and the client; the defaults are written here once.
 */
import type { TlsMaterial } from '../transport/tls.js';
import { bracketHint } from '../transport/address.js';

export interface RegistryOptions {
  /** etcd's client endpoints, `host:port` each (from `etcd://a:2379,b:2379`). */
  endpoints: string[];
  /** Every key lives under it (default `/revproxy/`). Proxies and servers of one fleet share it. */
  prefix?: string;
  /** Lease TTL in whole seconds (default 5): a server or proxy that dies is gone from etcd this long after. */
  ttlSeconds?: number;
  /** etcd's authentication (etcd's own users; `etcdctl auth enable`). */
  username?: string;
  password?: string;
  /** TLS to etcd: its CA, and a client certificate when etcd asks for one (`--client-cert-auth`). */
  tls?: TlsMaterial;
  /** How long one call to etcd may take (ms, default 2000). */
  callTimeoutMs?: number;
  /** While etcd cannot be reached, try again this often at first (ms, default 250), doubling up to `retryMaxMs`. */
  retryInitialMs?: number;
  /** Default 2000. */
  retryMaxMs?: number;
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
    const hp = /^(?:\[[^\]]+\]|[^:/\s]+):(\d{1,5})$/.exec(e);
    const v6 = hp ? undefined : bracketHint(e);
    if (!hp || Number(hp[1]) < 1 || Number(hp[1]) > 65535) throw new TypeError(`'${e}' in ${value} is not HOST:PORT${v6 ? ` (${v6})` : ''}; ${expected}`);
  }
  return { endpoints, tls: m[1]!.toLowerCase() === 'etcds' };
}

/** The endpoints as a URL again, for messages. */
export function describeRegistry(o: { endpoints: string[]; tls?: unknown }): string {
  return `etcd${o.tls ? 's' : ''}://${o.endpoints.join(',')}`;
}
