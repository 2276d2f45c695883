/**
 * Small JSON projections of what actors carry. Snapshots and events hold
 * sockets, Connection objects, functions, Maps, request batches and actor
 * refs: none of it may reach JSON.stringify raw (cycles, megabytes of
 * payloads). Everything shown by the inspector goes through `project`.
 *
 * Nor may a secret: the actors' inputs and contexts carry the registration
 * secrets (`token`, `tokens`, a member's `token` and registry `proof`), the
 * registry's `password`, TLS keys; the events carry them too (`xstate.init`'s
 * `input`, a SETUP's `token`). Every projection (the page, `/api/state`,
 * `/events`, `/api/history`, the `--inspect-log` file) shows `[redacted]` in
 * their place (`isSecretKey`, `REDACTED`): the page is readable by any local
 * process when no `--inspect-token` is set, and a log file is read by anyone
 * it is given to.
 */
import { peerName, UNKNOWN_PEER } from '../transport/address.js';
import { Connection } from '../transport/socket.js';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface ProjectLimits {
  /** Levels of objects and arrays followed before a summary replaces them. */
  depth: number;
  /** Array items and object keys shown per level. */
  items: number;
  /** Longest string kept, in characters. */
  chars: number;
}

export const EVENT_LIMITS: ProjectLimits = { depth: 4, items: 2, chars: 80 };
export const CONTEXT_LIMITS: ProjectLimits = { depth: 3, items: 8, chars: 120 };

/** A connection as the page shows it. */
export interface ConnView {
  id: number;
  role: string;
  peer: string;
  outstanding: number;
  closed: boolean;
}

/** A connection with what its owner knows of it: its role, and (for a proxy's peer) its unanswered requests. */
export interface SeenConn {
  conn: Connection;
  role: string;
  outstanding?: number;
  /** For a connection this process dialed: the address it dialed (the connection's own is read before it connects). */
  dialed?: string;
}

export function connView(c: SeenConn): ConnView {
  const conn = c.conn;
  const peer = conn.remoteAddress === UNKNOWN_PEER && c.dialed ? c.dialed : peerName(conn.remoteAddress, conn.remotePort);
  return { id: conn.id, role: c.role, peer, outstanding: c.outstanding ?? 0, closed: conn.closed };
}

/** A proxy's peer (actors/link.ts `Peer`): a connection and the proxy's bookkeeping of it. */
export function isPeer(o: unknown): o is { conn: Connection; role: string; outstanding: number } {
  return typeof o === 'object' && o !== null && (o as { conn?: unknown }).conn instanceof Connection && typeof (o as { role?: unknown }).role === 'string';
}

interface ActorLike {
  id: string;
  sessionId: string;
  send: unknown;
}

function isActorRef(v: object): v is ActorLike {
  return typeof (v as ActorLike).sessionId === 'string' && typeof (v as ActorLike).send === 'function';
}

/** What a secret is shown as. */
export const REDACTED = '[redacted]';

/**
 * Keys whose values are secrets wherever they stand: `token`, `tokens`, `inspectToken`, `adminToken`,
 * `password`, `registryPassword`, a passphrase, a registry entry's `proof` (an HMAC under a policy's
 * secret), a TLS `key` or `pfx`. A yes/no or a count under such a name (`hasToken`) is shown.
 */
const SECRET_KEY = /token|password|passwd|passphrase|secret|proof|credential|authori[sz]ation|^(key|pfx|privateKey)$/i;
/** A PEM private key, under any name. */
const PRIVATE_KEY_PEM = /-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/;

/** Whether a field of this name is shown as `[redacted]` (when it holds more than a yes/no or a number). */
export function isSecretKey(key: string): boolean {
  return SECRET_KEY.test(key);
}

/** The value of a field named `key`, or `[redacted]` when the name says it is a secret (undefined: project it as any other). */
function redacted(key: string, v: unknown): string | undefined {
  if (!isSecretKey(key)) return undefined;
  if (v === null || v === undefined || typeof v === 'boolean' || typeof v === 'number' || typeof v === 'function' || typeof v === 'symbol') return undefined;
  return REDACTED;
}

/** Keys that only ever hold plumbing (loggers, clocks, callbacks): left out of projections. */
const SKIP = new Set(['logger', 'clock', 'connect', 'deliver', 'reply', 'eligible', 'observer', 'busy', 'toJSON']);

/** What is not data (functions, symbols, objects made only of them): left out where it stands. */
const OMIT = Symbol('omit');

/**
 * Turn any value into a bounded JSON value, following at most `limits.depth`
 * levels. What is not data (functions, symbols) is left out of objects and
 * lists; on its own it becomes null.
 */
export function project(v: unknown, limits: ProjectLimits = CONTEXT_LIMITS, depth = 0): Json {
  const out = projectValue(v, limits, depth);
  return out === OMIT ? null : out;
}

function projectValue(v: unknown, limits: ProjectLimits, depth: number): Json | typeof OMIT {
  switch (typeof v) {
    case 'string':
      if (PRIVATE_KEY_PEM.test(v)) return REDACTED;
      return v.length > limits.chars ? `${v.slice(0, limits.chars)}…(${v.length})` : v;
    case 'number':
      return Number.isFinite(v) ? v : String(v);
    case 'boolean':
      return v;
    case 'bigint':
      return v.toString();
    case 'undefined':
      return null;
    case 'function':
    case 'symbol':
      return OMIT;
  }
  if (v === null) return null;
  const o = v as object;
  if (o instanceof Connection) return `conn#${o.id} ${o.describe()}${o.closed ? ' closed' : ''}`;
  if (isPeer(o)) return `conn#${o.conn.id} ${o.role} ${o.conn.describe()}${o.conn.closed ? ' closed' : ''}`;
  if (isActorRef(o)) return `actor ${o.id}`;
  if (o instanceof Error) return `${o.name}: ${o.message}`;
  if (Buffer.isBuffer(o)) return `Buffer(${o.length})`;
  // Bytes of any other kind (a key as a Uint8Array) are not walked index by index either.
  if (ArrayBuffer.isView(o)) return `${o.constructor.name}(${o.byteLength})`;
  if (o instanceof ArrayBuffer) return `ArrayBuffer(${o.byteLength})`;
  if (o instanceof Date) return o.toISOString();
  if (depth >= limits.depth) {
    if (Array.isArray(o)) return `[${o.length} items]`;
    if (o instanceof Map || o instanceof Set) return `${o.constructor.name}(${o.size})`;
    return `{${o.constructor?.name && o.constructor.name !== 'Object' ? o.constructor.name : '…'}}`;
  }
  if (Array.isArray(o)) return projectList(o, o.length, limits, depth);
  if (o instanceof Set) return projectList(o, o.size, limits, depth);
  if (o instanceof Map) {
    const out: { [k: string]: Json } = {};
    let n = 0;
    for (const [k, val] of o) {
      if (n >= limits.items) {
        out['…'] = `${o.size - limits.items} more`;
        break;
      }
      // A map's keys are data (policies, ids), not field names: a map of secrets stands under a secret's name.
      const p = projectValue(val, limits, depth + 1);
      if (p === OMIT) continue;
      out[String(k)] = p;
      n++;
    }
    return n === 0 && o.size > 0 && !('…' in out) ? OMIT : out;
  }
  const ctor = o.constructor;
  if (ctor && ctor !== Object && typeof (o as { size?: unknown }).size === 'number') {
    return `${ctor.name}(${(o as { size: number }).size})`;
  }
  const out: { [k: string]: Json } = {};
  let n = 0;
  let omitted = 0;
  for (const k of Object.keys(o)) {
    if (SKIP.has(k)) continue;
    if (n >= limits.items * 2) {
      out['…'] = 'more keys';
      break;
    }
    const val = (o as Record<string, unknown>)[k];
    const p = redacted(k, val) ?? projectValue(val, limits, depth + 1);
    if (p === OMIT) {
      omitted++;
      continue;
    }
    out[k] = p;
    n++;
  }
  // An object of nothing but functions (a timer's handle, say) is not data either.
  return n === 0 && omitted > 0 ? OMIT : out;
}

function projectList(items: Iterable<unknown>, size: number, limits: ProjectLimits, depth: number): Json {
  const out: Json[] = [];
  for (const item of items) {
    if (out.length >= limits.items) {
      out.push(`…${size - limits.items} more (${size} in all)`);
      break;
    }
    const p = projectValue(item, limits, depth + 1);
    if (p !== OMIT) out.push(p);
  }
  return out;
}

/** An event as the log shows it: its type and its other fields, projected. */
export function projectEvent(event: { type: string; [k: string]: unknown }): { [k: string]: Json } {
  const out: { [k: string]: Json } = {};
  for (const k of Object.keys(event)) {
    if (k === 'type') continue;
    const p = redacted(k, event[k]) ?? projectValue(event[k], EVENT_LIMITS, 1);
    if (p !== OMIT) out[k] = p;
  }
  return out;
}

/** A state value as one short string: `running`, `online.registered`. */
export function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object') {
    const parts: string[] = [];
    for (const [k, v] of Object.entries(value)) {
      const inner = stateName(v);
      parts.push(inner ? `${k}.${inner}` : k);
    }
    return parts.join(' | ');
  }
  return '';
}
