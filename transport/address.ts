/**
 * How an address and port are written in log lines, messages and keys: `127.0.0.1:2100`, and
 * an IPv6 address in brackets, `[::1]:2100`, as in a URL - `::1:2100` reads as an address alone;
 * and how a peer's address is read off its socket (`peerAddress`), the one place that is done.
 */
import { isIP, isIPv4, isIPv6 } from 'node:net';
import { networkInterfaces } from 'node:os';

/**
 * The reverse proxy's port when none is given, the old system's (`reverse_proxy.py -port 2100`): the
 * proxy listens on it, and servers, clients, `revproxy load`, the demo and the library dial it. The one
 * place it is written; help texts and messages read it from here.
 */
export const DEFAULT_PROXY_PORT = 2100;

/**
 * The proxy's request timeout when none is given (`--timeout`): it answers every request within it.
 * What a client assumes of a proxy it was told nothing about reads it here too: its own default wait
 * (`DEFAULT_CLIENT_TIMEOUT_MS`, a second past it) and the silence after which it gives up a proxy
 * that answers no PING (`SILENT_PROXY_MS`).
 */
export const DEFAULT_PROXY_TIMEOUT_MS = 5000;

export function hostPort(host: string, port: number | string): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * What to write for `value` when it is an IPv6 address and a port without brackets (`::1:2100`,
 * refused: which colon ends the address cannot be told, and `::1:2100` is itself an address):
 * `an IPv6 address goes in brackets before its port: [::1]:2100`; undefined for anything else.
 */
export function bracketHint(value: string): string | undefined {
  const at = value.lastIndexOf(':');
  const host = value.slice(0, at);
  const port = value.slice(at + 1);
  if (at < 0 || !/^\d{1,5}$/.test(port) || !isIPv6(host)) return undefined;
  return `an IPv6 address goes in brackets before its port: ${hostPort(host, port)}`;
}

/**
 * Whether a listener on `host` listens on every address of the machine (`0.0.0.0`, `::`, or `[::]` as
 * a URL writes it): no address a peer could dial, and one that takes its port on every other address too.
 */
export function isEveryAddress(host: string): boolean {
  const canon = canonicalHost(host);
  return canon === '0.0.0.0' || canon === '::';
}

/**
 * `host` as one spelling, whichever way it is written: without brackets, lowercased (host names and
 * IPv6 hex alike), a trailing dot of a name dropped (`localhost.`), an IPv4-mapped address as its IPv4
 * one, an IPv6 one in its shortest form (`0:0:0:0:0:0:0:1` and `::0` are `::1` and `::`). What tells two
 * spellings of one address apart nowhere: every address and loopback (`isEveryAddress`, `isLoopback`),
 * one endpoint (`endpointKey`), one listener (`--check`'s port clashes). A name stays a name: only a
 * resolver could say `localhost` is `127.0.0.1`.
 */
export function canonicalHost(host: string): string {
  let h = plainIPv4(unbracket(String(host)).toLowerCase());
  if (isIPv6(h) && !h.includes('%')) {
    try {
      h = new URL(`http://[${h}]/`).hostname.slice(1, -1);
    } catch {
      // kept as written
    }
  } else if (h.length > 1 && h.endsWith('.') && isIP(h.slice(0, -1)) === 0) h = h.slice(0, -1);
  return h;
}

/** A host name as a resolver takes it: dot-separated labels of letters, digits, `-` and `_` (Docker Compose's names have one). */
const HOST_NAME = /^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$/;

/**
 * Why `host`, written as numbers and dots, is no IPv4 address as written (undefined when it is one,
 * or a name): the system's resolver (inet_aton, under getaddrinfo) reads a number with a leading 0 as
 * octal and 0x as hex, and fewer than four numbers as filling the last, so `0127.0.0.1` dialled
 * 87.0.0.1 and `127.1` 127.0.0.1, where Node took both for names. No host name is all numbers (RFC
 * 1123): such a value is a typing slip or a shorthand, said with the address it would have reached.
 */
export function numericHostProblem(host: string): string | undefined {
  const parts = host.split('.');
  if (!parts.every((p) => /^(?:0x[0-9a-f]*|\d+)$/i.test(p)) || isIPv4(host)) return undefined;
  const none = `${host} is no IPv4 address (four numbers 0-255 in decimal, as 127.0.0.1) nor a host name`;
  if (parts.length > 4) return none;
  const nums = parts.map((p) => (/^0x/i.test(p) ? (p.length > 2 ? parseInt(p.slice(2), 16) : 0) : /^0[0-7]+$/.test(p) ? parseInt(p, 8) : /^0\d/.test(p) ? NaN : Number(p)));
  const last = 2 ** (8 * (5 - parts.length)) - 1;
  if (nums.some((n, i) => Number.isNaN(n) || n > (i === nums.length - 1 ? last : 255))) return none;
  const value = nums.slice(0, -1).reduce((v, n, i) => v + n * 2 ** (24 - 8 * i), 0) + nums[nums.length - 1]!;
  const reached = [24, 16, 8, 0].map((shift) => Math.floor(value / 2 ** shift) % 256).join('.');
  return `${host} is no IPv4 address as written: the system's resolver reads it as ${reached} (a leading 0 makes a number octal, 0x hex, and fewer than four numbers fill the last): write ${reached} if that is the address meant`;
}

/**
 * Why `value` is no address for peers to dial - an advertised one (`--advertise`, `registry.advertise`),
 * which goes into the registry as it is written and is dialed by every proxy or client that reads it -
 * or undefined when it is one: an IPv4 address, an IPv6 one (bare or in brackets, a zone allowed) or a
 * host name. Said as the end of a sentence "... got 'X': <why>". `portSays` says where the port is given (`give the port with --port`).
 * Anything else was written to etcd and failed every dial (`[::1]` became `[[::1]]:PORT`, ENOTFOUND)
 * while its owner said it was registered.
 */
export function badDialAddress(value: string, portSays: string): string | undefined {
  if (value === '') return 'it is empty (an unset variable?)';
  if (value.trim() !== value) return 'it has spaces around it';
  if (isEveryAddress(value)) return `${value} is every address of this machine, which no peer can dial: give the one peers reach it at`;
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return 'it is a URL: give its host alone';
  if (/^\[[^\]]*\]:\d*$/.test(value) || /^[^:[\]]+:\d*$/.test(value)) return `it has a port: give the address alone, and ${portSays}`;
  if (value.startsWith('[') || value.endsWith(']')) {
    return value.startsWith('[') && value.endsWith(']') && isIPv6(value.slice(1, -1)) ? undefined : 'brackets hold an IPv6 address alone, as [::1]';
  }
  const numeric = numericHostProblem(value);
  if (numeric) return numeric;
  if (isIPv4(value) || isIPv6(value) || HOST_NAME.test(value)) return undefined;
  return 'it is neither an IP address nor a host name (letters, digits, - and _, in labels separated by dots)';
}

/**
 * `[::1]` as the address it brackets (::1), as a URL writes it; anything else as it is. An address
 * `badDialAddress` takes goes into the registry so: its entries write an IPv6 address without brackets.
 */
export function unbracket(host: string): string {
  return /^\[([^\]]+)\]$/.exec(host.trim())?.[1] ?? host;
}

/**
 * Whether `host` is this machine only, however it is spelt (`canonicalHost`): `localhost`, `::1` or a
 * `127.x.x.x` address (`LOCALHOST`, `localhost.`, `0:0:0:0:0:0:0:1`, `::ffff:127.0.0.1`, IPv6 in
 * brackets as a URL or a `Host` header writes it). A DNS name such as `127.example.com` is not, whatever it resolves to. The one rule
 * for a listen address (the warnings of a proxy or admin endpoint open to other machines, the
 * per-peer limit's default, the inspector's token) and for the inspector's `Host` check.
 */
export function isLoopback(host: string): boolean {
  const canon = canonicalHost(host);
  return canon === 'localhost' || canon === '::1' || (isIPv4(canon) && canon.startsWith('127.'));
}

/** Whether `address` (an IP) is one of this machine's: loopback, or an address of one of its interfaces as they are now. */
export function isThisMachine(address: string): boolean {
  if (isLoopback(address)) return true;
  return Object.values(networkInterfaces()).some((list) => (list ?? []).some((a) => a.address === address));
}

/**
 * Whether an HTTP `Host` header (`name` or `name:port`, IPv6 in brackets) names this machine only
 * (`isLoopback`), and with `port`, names that port. A page that rebinds its own DNS name to
 * 127.0.0.1 sends its own name: the inspector and the admin endpoint's /metrics, listening on
 * loopback without a token, refuse it.
 */
export function hostHeaderIsLoopback(host: string, port?: number): boolean {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(host);
  if (!m || (port !== undefined && Number(m[2] ?? NaN) !== port)) return false;
  return isLoopback(m[1]!);
}

/** A peer whose address its socket cannot tell (it reset before its accept was seen): `?` in every log, with no port. */
export const UNKNOWN_PEER = '?';

/** `hostPort` of a peer, or `?` when its address is unknown (a port of nothing means nothing). */
export function peerName(host: string, port: number | string): string {
  return host === UNKNOWN_PEER ? UNKNOWN_PEER : hostPort(host, port);
}

/**
 * An IPv4-mapped IPv6 address (`::ffff:10.0.0.5`, how a dual-stack listener on `::` sees an
 * IPv4 client) as the IPv4 address it maps (`10.0.0.5`, how an IPv4 listener and a PROXY
 * header name the same client); any other address as it is. Dialing it back reaches the same
 * host over IPv4.
 */
export function plainIPv4(addr: string): string {
  return addr.length > 7 && addr.slice(0, 7).toLowerCase() === '::ffff:' && isIPv4(addr.slice(7)) ? addr.slice(7) : addr;
}

/**
 * A peer's address: the one a trusted balancer's PROXY header `named`, else its socket's, as
 * `plainIPv4` writes it, so that one client is one key for the per-address limits and one name
 * in the logs, the access log and the inspector whichever way it arrived; `?` when the socket
 * cannot tell.
 */
export function peerAddress(socket: { remoteAddress?: string }, named?: string): string {
  const addr = named ?? socket.remoteAddress;
  return addr === undefined ? UNKNOWN_PEER : plainIPv4(addr);
}

/**
 * An endpoint as one key whatever way it is written: the host lowercased, without brackets, an
 * IPv4-mapped address as its IPv4 one, an IPv6 one in its shortest form (`0:0:0:0:0:0:0:1` is
 * `::1`), then `hostPort`. `2100` (127.0.0.1), `127.0.0.1:2100` and `::ffff:127.0.0.1:2100` are one
 * key; `localhost:2100` is another, as only a resolver could say it is the same.
 */
export function endpointKey(ep: { host: string; port: number }): string {
  return hostPort(canonicalHost(ep.host), ep.port);
}

/**
 * The first endpoint of `list` given again (`endpointKey`), as the indexes of both and their key, or
 * undefined. A server given one proxy twice registered with it twice, and was refused its own id.
 */
export function repeatedEndpoint(list: ReadonlyArray<{ host: string; port: number }>): { first: number; again: number; key: string } | undefined {
  const seen = new Map<string, number>();
  for (const [i, ep] of list.entries()) {
    const key = endpointKey(ep);
    const first = seen.get(key);
    if (first !== undefined) return { first, again: i, key };
    seen.set(key, i);
  }
  return undefined;
}
