/**
 * The access log (`--access-log -|FILE`): one line per request, written when
 * the request gets its one answer - time, client id and address, policy,
 * server, client seq, tries, latency and outcome code - as text (key=value)
 * or JSON. It is a `ProxyObserver`: with no access log nothing is attached
 * and the reply path pays nothing. Lines go through a bounded asynchronous
 * `Destination` (a slow disk or reader drops lines, counted, rather than
 * growing memory); `reopen()` follows logrotate on SIGHUP.
 */
import type { Destination } from '../actors/logger.js';
import type { ProxyRequest } from '../actors/link.js';
import type { ProxyObserver } from '../actors/proxy-options.js';
import type { ErrorCode } from '../transport/errors.js';

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
}

// Ids are any string up to 256 characters: anything unusual is quoted, so a line always splits on spaces.
const PLAIN = /^[\w.:@/+-]+$/;
const q = (v: string): string => (PLAIN.test(v) ? v : JSON.stringify(v));

export class AccessLog implements ProxyObserver {
  private lastMs = 0;
  private lastTime = '';

  constructor(
    readonly dest: Destination,
    private readonly format: 'text' | 'json',
  ) {}

  /** The ISO time, made once per millisecond (thousands of lines share one). */
  private time(): string {
    const now = Date.now();
    if (now !== this.lastMs) {
      this.lastMs = now;
      this.lastTime = new Date(now).toISOString();
    }
    return this.lastTime;
  }

  answered(policy: string, member: string | undefined, outcome: 'ok' | ErrorCode, latencyMs: number, req: ProxyRequest): void {
    const m = req.msg;
    const tries = (req.tried?.length ?? 0) + (member === undefined ? 0 : 1);
    const latency = Math.round(latencyMs * 1000) / 1000;
    const time = this.time();
    const addr = req.client.conn.describe();
    if (this.format === 'json') {
      const rec: AccessRecord = { time, client: m.srcid, addr, policy, server: member, seq: m.seq, tries, latency_ms: latency, outcome };
      this.dest.write(`${JSON.stringify(rec)}\n`);
    } else {
      this.dest.write(`${time} client=${q(m.srcid)} addr=${addr} policy=${q(policy)} server=${member === undefined ? '-' : q(member)} seq=${m.seq} tries=${tries} latency_ms=${latency} outcome=${outcome}\n`);
    }
  }

  /** Lines dropped so far (a reader or disk slower than the traffic). */
  get dropped(): number {
    return this.dest.dropped;
  }

  /** Open the file again, after logrotate moved it (SIGHUP). */
  reopen(): void {
    this.dest.reopen();
  }
}

/** Several observers as one; undefined when there are none (so the proxy attaches nothing). */
export function combineObservers(...list: Array<ProxyObserver | undefined>): ProxyObserver | undefined {
  const obs = list.filter((o): o is ProxyObserver => o !== undefined);
  if (obs.length <= 1) return obs[0];
  const answered = obs.filter((o) => o.answered);
  const retried = obs.filter((o) => o.retried);
  const ejected = obs.filter((o) => o.ejected);
  const accepted = obs.filter((o) => o.accepted);
  return {
    answered: answered.length ? (...a) => { for (const o of answered) o.answered!(...a); } : undefined,
    retried: retried.length ? (...a) => { for (const o of retried) o.retried!(...a); } : undefined,
    ejected: ejected.length ? (...a) => { for (const o of ejected) o.ejected!(...a); } : undefined,
    accepted: accepted.length ? (...a) => { for (const o of accepted) o.accepted!(...a); } : undefined,
  };
}
