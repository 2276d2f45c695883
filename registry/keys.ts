/**
 * The key layout in etcd, under the fleet's prefix (default `/revproxy/`):
 *
 *   <prefix>servers/<id>           {"v":1,"id","policy","address","port","wire","tls","proof","leaving"}   on the server's lease
 *   <prefix>proxies/<host>:<port>  {"v":1,"address","port","tls","instance"}               on the proxy's lease
 *
 * Values are JSON. A server's key is its presence: it goes when the server
 * drains (written once more with `"leaving": true`, then deleted, then its
 * lease revoked) or dies (its lease expires). Decoding checks every
 * field, so a malformed entry is refused with a reason and hurts nobody.
 */
import { createHash } from 'node:crypto';

export const SERVERS = 'servers/';
export const PROXIES = 'proxies/';

/** A server as its registry entry says. */
export interface ServerEntry {
  id: string;
  policy: string;
  address: string;
  port: number;
  wire: 'frames' | 'json';
  /**
   * Whether its port serves TLS (since 2026-12-07; a revproxy server writes it, true with --tls-cert), as a SETUP's
   * `tls`: a proxy that dials otherwise passes the entry over, saying what to change (actors/registry-members.ts).
   * Absent (an older server's entry): the proxy dials it as it dials every server. Not in the proof: older proxies
   * check the proof without it.
   */
  tls?: boolean;
  /** HMAC of id, policy, address and port under the policy's secret (proof.ts); absent when the server has no secret. */
  proof?: string;
  /** The server is draining: written just before its key is deleted, so proxies tell a drain from a lease that expired (docs/PROTOCOL.md). */
  leaving?: boolean;
}

/** A proxy as its registry entry says. */
export interface ProxyEntry {
  address: string;
  port: number;
  tls: boolean;
  /**
   * Random, new at each start of the proxy (since 2026-12-06; absent in an older proxy's entry): a proxy
   * restarted within its lease TTL rewrites its key, which never left etcd, and only this tells its clients
   * that it came back (client.ts `newcomerFirst`).
   */
  instance?: string;
}

export const serverKey = (prefix: string, id: string): string => `${prefix}${SERVERS}${id}`;

/** The prefix of `key` when it is laid out as a server's (`<prefix>servers/<id>`, an id without `/`), else undefined: `serverKey` read back. */
export function serverKeyPrefix(key: string): string | undefined {
  const at = key.lastIndexOf(`/${SERVERS}`);
  if (at < 0 || key.indexOf('/', at + 1 + SERVERS.length) >= 0) return undefined;
  return key.slice(0, at + 1);
}
export const proxyKey = (prefix: string, e: Pick<ProxyEntry, 'address' | 'port'>): string => `${prefix}${PROXIES}${e.address.includes(':') ? `[${e.address}]` : e.address}:${e.port}`;

export function encodeServer(e: ServerEntry): string {
  return JSON.stringify({ v: 1, id: e.id, policy: e.policy, address: e.address, port: e.port, wire: e.wire, ...(e.tls === undefined ? {} : { tls: e.tls }), ...(e.proof === undefined ? {} : { proof: e.proof }), ...(e.leaving ? { leaving: true } : {}) });
}

export function encodeProxy(e: ProxyEntry): string {
  return JSON.stringify({ v: 1, address: e.address, port: e.port, tls: e.tls, ...(e.instance === undefined ? {} : { instance: e.instance }) });
}

/**
 * Longest value read as it is. An entry of ours is under 1 KiB; anyone who can write to the prefix
 * could write values of a megabyte each, and every proxy and client watching it would hold them
 * all: a longer value is held as a short stand-in (its size and digest) and refused.
 */
export const MAX_VALUE_BYTES = 4096;

/** What a mirror holds for a value: the value, or the stand-in of one over MAX_VALUE_BYTES (a new digest when it changes). */
export function heldValue(value: Buffer): string {
  if (value.length <= MAX_VALUE_BYTES) return value.toString();
  return `\0oversized ${value.length} ${createHash('sha1').update(value).digest('hex')}`;
}

/** Longest id, policy or address taken from etcd: what a registration message may carry, and no more. */
const MAX_TEXT = 256;

/**
 * Longest key name (the part after the mirrored prefix) read as it is. A name is an id (at most
 * MAX_TEXT characters) or a proxy's address; anyone who can write to the prefix could write names of
 * a megabyte, which every proxy would hold and print in its refusal line: a longer one is held as a
 * short stand-in (its size and digest), the same for the same name, and refused.
 */
export const MAX_NAME_BYTES = 1024;

/** What a mirror holds for a key's name after `prefixBytes`: the name, or the stand-in of one over MAX_NAME_BYTES. */
export function heldName(key: Buffer, prefixBytes: number): string {
  const size = key.length - prefixBytes;
  if (size <= MAX_NAME_BYTES) return key.toString('utf8', prefixBytes);
  return `<a key name of ${size} bytes, sha1 ${createHash('sha1').update(key.subarray(prefixBytes)).digest('hex')}>`;
}

const OVERSIZED_NAME = /^<a key name of (\d+) bytes, sha1 [0-9a-f]{40}>$/;

const isText = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_TEXT;
const isPort = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 65535;

function parse(value: string): Record<string, unknown> | string {
  const big = /^\0oversized (\d+) /.exec(value);
  if (big) return `its value is ${big[1]} bytes; an entry is at most ${MAX_VALUE_BYTES}`;
  let o: unknown;
  try {
    o = JSON.parse(value);
  } catch {
    return 'its value is not JSON';
  }
  if (!o || typeof o !== 'object' || Array.isArray(o)) return 'its value is not a JSON object';
  const r = o as Record<string, unknown>;
  if (r.v !== 1) return `it has version ${JSON.stringify(r.v)}; this revproxy reads version 1`;
  return r;
}

/** The entry under `<prefix>servers/<id>`, or why it cannot be used. */
export function decodeServer(idFromKey: string, value: string): ServerEntry | string {
  const long = OVERSIZED_NAME.exec(idFromKey);
  if (long) return `its key name is ${long[1]} bytes; an id is at most ${MAX_TEXT}`;
  const r = parse(value);
  if (typeof r === 'string') return r;
  if (!isText(r.id)) return 'its id is missing or not a string';
  if (r.id !== idFromKey) return `its id '${r.id}' is not the one its key names ('${idFromKey}')`;
  if (!isText(r.policy)) return 'its policy is missing or not a string';
  if (!isText(r.address)) return 'its address is missing or not a string';
  if (!isPort(r.port)) return 'its port is not a number from 1 to 65535';
  const wire = r.wire ?? 'frames';
  if (wire !== 'frames' && wire !== 'json') return `its wire is ${JSON.stringify(wire)}; expected frames or json`;
  if (r.tls !== undefined && typeof r.tls !== 'boolean') return `its tls is ${JSON.stringify(r.tls)}; expected true or false`;
  if (r.proof !== undefined && typeof r.proof !== 'string') return 'its proof is not a string';
  return { id: r.id, policy: r.policy, address: r.address, port: r.port, wire, ...(r.tls === undefined ? {} : { tls: r.tls }), ...(r.proof === undefined ? {} : { proof: r.proof as string }), ...(r.leaving === true ? { leaving: true } : {}) };
}

/** The entry under `<prefix>proxies/...`, or why it cannot be used. */
export function decodeProxy(value: string): ProxyEntry | string {
  const r = parse(value);
  if (typeof r === 'string') return r;
  if (!isText(r.address)) return 'its address is missing or not a string';
  if (!isPort(r.port)) return 'its port is not a number from 1 to 65535';
  // An instance that is not text is read as absent: it only tells a restart apart, and the entry serves without it.
  return { address: r.address, port: r.port, tls: r.tls === true, ...(isText(r.instance) ? { instance: r.instance } : {}) };
}
