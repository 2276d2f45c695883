/**
 * The access log (`--access-log -|FILE`): one line per request, written when
 * the request gets its one answer - time, client id and address, policy,
 * server, client seq, tries, latency, outcome code and the time it waited
 * in its policy's queue for a server with room - as text (key=value)
 * or JSON. It is a `ProxyObserver`: with no access log nothing is attached
 * and the reply path pays nothing. Lines go through a bounded asynchronous
 * `Destination` (a slow disk or reader drops lines, counted, rather than
 * growing memory); `reopen()` follows logrotate on SIGHUP.
 *
 * A text line is written as bytes, straight into the turn's chunk: the parts
 * a line repeats (the time, the client's part, the server's, the outcome)
 * are encoded once and copied, the two numbers written digit by digit. A line
 * made as a string cost about twice as much (1.0 against 0.5 us a line, the
 * formatting and the write alone), most of it joining a dozen pieces and
 * collecting them afterwards. `spec/access-log.spec.ts` checks the bytes
 * against the same line made the plain way.
 */
import { escapeControls, type Destination } from '../actors/logger.js';
import type { Peer, ProxyRequest } from '../actors/link.js';
import { OBSERVER_HOOKS, type Outcome, type ProxyObserver } from '../actors/proxy-options.js';

/** One request's record, as the JSON form writes it (an unset value is `-` in text, absent in JSON). */
export interface AccessRecord {
  time: string;
  client: string;
  addr: string;
  policy: string;
  server?: string;
  seq: number;
  tries: number;
  latency_ms: number;
  outcome: string;
  /** Of `latency_ms`, the time it waited in its policy's queue for a server with room (HAProxy's `Tw`); 0 when it never waited. Last, so a line's earlier fields keep their places. */
  queue_ms: number;
}

// Ids are any string up to 256 characters: anything unusual is quoted, so a line always splits on spaces,
// and what JSON leaves raw that a terminal acts on (DEL, C1 controls, U+2028) is escaped too.
const PLAIN = /^[\w.:@/+-]+$/;
const q = (v: string): string => (PLAIN.test(v) ? v : escapeControls(JSON.stringify(v)));

/** A client connection's last (srcid, policy), and its part of a line: ` client=... addr=... policy=... server=`. */
interface ClientPart {
  srcid: string;
  policy: string;
  bytes: Buffer;
}

/** Bounded caches of encoded parts: ids are few in practice, but any number can come. */
const CACHE_LIMIT = 1024;
function cached<K, V>(map: Map<K, V>, key: K, make: (key: K) => V): V {
  let v = map.get(key);
  if (v === undefined) {
    if (map.size >= CACHE_LIMIT) map.clear();
    v = make(key);
    map.set(key, v);
  }
  return v;
}
/**
 * `text` in bytes of its own, for a part kept long after the lines around it. `Buffer.from` cuts small
 * buffers from Node's shared 8 KiB pool, and a part kept held its whole slab: a slab per server id
 * (and per client connection) once other buffers came between them - 391 slabs, 3.2 MB, for the
 * server ids of 45 minutes of churn, up to 8 MiB at the cache's 1,024.
 */
function own(text: string): Buffer {
  const bytes = Buffer.allocUnsafeSlow(Buffer.byteLength(text));
  bytes.write(text);
  return bytes;
}
const serverPart = (id: string | undefined): Buffer => own(`${id === undefined ? '-' : q(id)} seq=`);
const triesPart = (tries: number): Buffer => own(` tries=${tries} latency_ms=`);
const outcomePart = (outcome: string): Buffer => own(` outcome=${outcome} queue_ms=`);

/**
 * Writes the decimal digits of a whole number `n` >= 0 at `at`; returns where they end. Up to 2^32 - 1
 * (every seq, a latency under 71 minutes in microseconds) in 32-bit integer arithmetic: with doubles,
 * `n % 10` and `Math.floor(n / 10)` made the three numbers of a line about 110 of its 280 ns.
 */
function digits(b: Buffer, at: number, n: number): number {
  if (n > 0xffffffff) return bigDigits(b, at, n);
  n >>>= 0;
  const end = at + (n < 10 ? 1 : n < 100 ? 2 : n < 1000 ? 3 : n < 10000 ? 4 : n < 100000 ? 5 : n < 1000000 ? 6 : n < 10000000 ? 7 : n < 100000000 ? 8 : n < 1000000000 ? 9 : 10);
  for (let p = end - 1; p > at; p--) {
    const q = (n / 10) >>> 0;
    b[p] = 48 + n - q * 10;
    n = q;
  }
  b[at] = 48 + n;
  return end;
}

/** `digits` of a whole number past 32 bits (up to 2^53). */
function bigDigits(b: Buffer, at: number, n: number): number {
  let len = 1;
  for (let x = n; x >= 10; x = Math.floor(x / 10)) len++;
  for (let p = at + len - 1; p >= at; p--) {
    const d = n % 10;
    b[p] = 48 + d;
    n = (n - d) / 10;
  }
  return at + len;
}

/** Writes a latency as `String(Math.round(ms * 1000) / 1000)` would (`3`, `0.5`, `0.05`, `1.234`); returns where it ends. */
function millis(b: Buffer, at: number, ms: number): number {
  const us = Math.round(ms * 1000);
  if (!(us >= 0 && us <= Number.MAX_SAFE_INTEGER)) return at + b.write(String(us / 1000), at, 'latin1');
  const whole = Math.floor(us / 1000);
  at = digits(b, at, whole);
  const f = us - whole * 1000; // 0-999
  if (f === 0) return at;
  b[at++] = 46; // .
  const d1 = (f / 100) | 0;
  const r = f - d1 * 100;
  b[at++] = 48 + d1;
  if (r === 0) return at;
  const d2 = (r / 10) | 0;
  const d3 = r - d2 * 10;
  b[at++] = 48 + d2;
  if (d3 !== 0) b[at++] = 48 + d3;
  return at;
}

/**
 * A file access log holds lines until 256 KiB wait or a second has passed
 * (nginx's `buffer=`, Envoy's flush interval): a write per event-loop turn
 * woke the file-writing thread and the loop about a thousand times a second
 * under load, which cost more than making the lines; a write still costs the
 * event loop about 50 us (handing it to the thread), so fewer is better.
 */
export const ACCESS_LOG_HOLD = { bytes: 256 * 1024, ms: 1000 } as const;

/** A file access log's `Destination` options for `log.access_log_flush` (ms; 0: write every turn, hold nothing). */
export function accessLogHold(flushMs: number = ACCESS_LOG_HOLD.ms): { hold?: { bytes: number; ms: number } } {
  return flushMs === 0 ? {} : { hold: { bytes: ACCESS_LOG_HOLD.bytes, ms: flushMs } };
}

/** Room a text line needs beyond its cached parts: three numbers, the newline, and slack. */
const LINE_SLACK = 80;

export class AccessLog implements ProxyObserver {
  /** The time of the last lines, as text (JSON lines) and as its bytes (text lines), and the wall clock's ms it says. */
  private lastIso = '';
  private lastTime: Buffer = Buffer.alloc(24);
  private wallMs = NaN;
  /** The wall clock's ms at the start of the second `lastTime` says, when only its milliseconds need writing within it. */
  private wallSecond = NaN;
  /** The answer's time on the proxy's clock (`arrived + latencyMs`, ms) at which the wall clock was last read. */
  private readAt = -Infinity;
  private readonly clients = new WeakMap<Peer, ClientPart>();
  private readonly servers = new Map<string | undefined, Buffer>();
  private readonly tries = new Map<number, Buffer>();
  private readonly outcomes = new Map<string, Buffer>();

  constructor(
    readonly dest: Destination,
    private readonly format: 'text' | 'json',
  ) {}

  /**
   * Brings the time of the lines (`lastIso` for JSON, `lastTime` for text) to the
   * wall clock, for an answer made at `at` on the proxy's clock: the wall clock
   * is read again once that has moved on a millisecond since it was last read
   * (or back), so a line's time is at most 1 ms before its answer, as a reading
   * per line would say (60 of the 250 ns a line took). Within a second, text lines
   * rewrite only the milliseconds: `toISOString` and its bytes cost 0.6 us. It
   * was read once per turn of the event loop (a `setImmediate` per turn), each
   * line saying the time of its turn's first.
   */
  private readTime(at: number): void {
    const since = at - this.readAt;
    if (since >= 0 && since < 1) return;
    this.readAt = at;
    const now = Date.now();
    if (now === this.wallMs) return;
    this.wallMs = now;
    if (this.format === 'json') {
      this.lastIso = new Date(now).toISOString();
      return;
    }
    const ms = now - this.wallSecond;
    if (ms >= 0 && ms < 1000) {
      const b = this.lastTime; // YYYY-MM-DDTHH:MM:SS.mmmZ
      const tens = (ms / 10) | 0;
      b[22] = 48 + ms - tens * 10;
      b[21] = 48 + tens - ((tens / 10) | 0) * 10;
      b[20] = 48 + ((ms / 100) | 0);
      return;
    }
    const iso = new Date(now).toISOString();
    // A year past 9999 (or before 0) is written longer: no second is kept for it.
    if (iso.length === 24) {
      if (this.lastTime.length !== 24) this.lastTime = Buffer.alloc(24);
      this.lastTime.write(iso, 0, 'latin1');
      this.wallSecond = now - Number(iso.slice(20, 23));
    } else {
      this.lastTime = own(iso);
      this.wallSecond = NaN;
    }
  }

  answered(policy: string, member: string | undefined, outcome: Outcome, latencyMs: number, req: ProxyRequest, tries: number): void {
    if (this.format === 'json') this.json(policy, member, outcome, latencyMs, req, tries);
    else this.text(policy, member, outcome, latencyMs, req, tries);
  }

  private json(policy: string, member: string | undefined, outcome: string, latencyMs: number, req: ProxyRequest, tries: number): void {
    const m = req.msg;
    this.readTime(req.arrived + latencyMs);
    const rec: AccessRecord = {
      time: this.lastIso,
      client: m.srcid,
      addr: req.client.conn.describe(),
      policy,
      server: member,
      seq: m.seq,
      tries,
      latency_ms: Math.round(latencyMs * 1000) / 1000,
      outcome,
      queue_ms: req.waited === undefined ? 0 : Math.round(req.waited * 1000) / 1000,
    };
    this.dest.write(`${JSON.stringify(rec)}\n`);
  }

  /** One key=value line, its repeated parts copied from caches into the destination's bytes. */
  private text(policy: string, member: string | undefined, outcome: string, latencyMs: number, req: ProxyRequest, tries: number): void {
    const m = req.msg;
    let client = this.clients.get(req.client);
    if (client === undefined || client.srcid !== m.srcid || client.policy !== policy) {
      const text = ` client=${q(m.srcid)} addr=${req.client.conn.describe()} policy=${q(policy)} server=`;
      client = { srcid: m.srcid, policy, bytes: own(text) };
      this.clients.set(req.client, client);
    }
    this.readTime(req.arrived + latencyMs);
    const time = this.lastTime;
    const who = client.bytes;
    const server = cached(this.servers, member, serverPart);
    const middle = cached(this.tries, tries, triesPart);
    const end = cached(this.outcomes, outcome, outcomePart);
    const chunk = this.dest.bytes;
    let at = chunk.reserve(time.length + who.length + server.length + middle.length + end.length + LINE_SLACK);
    const b = chunk.buffer;
    b.set(time, at);
    b.set(who, (at += time.length));
    b.set(server, (at += who.length));
    at = digits(b, at + server.length, m.seq);
    b.set(middle, at);
    at = millis(b, at + middle.length, latencyMs);
    b.set(end, at);
    at = millis(b, at + end.length, req.waited ?? 0);
    b[at++] = 10; // \n
    chunk.commit(at);
    this.dest.wrote();
  }

  /** Lines dropped so far (a reader or disk slower than the traffic). */
  get dropped(): number {
    return this.dest.dropped;
  }

  /** Open the file again, after logrotate moved it (SIGHUP); throws why it cannot (the old file stays in use). */
  reopen(): void {
    this.dest.reopen();
  }
}

/**
 * Several observers as one; undefined when there are none (so the proxy
 * attaches nothing). A hook only one of them has is that one's own method,
 * bound, not a loop over a list: `answered` runs for every request.
 */
export function combineObservers(...list: Array<ProxyObserver | undefined>): ProxyObserver | undefined {
  const obs = list.filter((o): o is ProxyObserver => o !== undefined);
  if (obs.length <= 1) return obs[0];
  return Object.fromEntries(OBSERVER_HOOKS.map((name) => [name, hook(obs, name)])) as ProxyObserver;
}

type AnyHook = (...args: never[]) => void;
function hook<K extends keyof ProxyObserver>(obs: ProxyObserver[], name: K): ProxyObserver[K] {
  const having = obs.filter((o) => o[name] !== undefined);
  if (having.length === 0) return undefined;
  const fns = having.map((o) => (o[name] as AnyHook).bind(o) as (...args: unknown[]) => void);
  if (fns.length === 1) return fns[0] as ProxyObserver[K];
  return ((...a: unknown[]) => {
    for (const f of fns) f(...a);
  }) as ProxyObserver[K];
}
