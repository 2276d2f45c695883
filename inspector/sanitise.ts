/**
 * Small JSON projections of what actors carry. Snapshots and events hold
 * sockets, Connection objects, functions, Maps, request batches and actor
 * refs: none of it may reach JSON.stringify raw (cycles, megabytes of
 * payloads). Everything shown by the inspector goes through `project`.
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
    const p = projectValue((o as Record<string, unknown>)[k], limits, depth + 1);
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
    const p = projectValue(event[k], EVENT_LIMITS, 1);
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
