/**
 * Expectations, pure: what happened in, the differences from what the
 * scenario expected out. No sockets here.
 */
import type { Result } from '../actors/connect.js';
import { MsgType, type Message } from '../transport/messages.js';
import type { PoolExpect, RawExpect, SendExpect } from './format.js';
import type { PoolState } from './topology.js';

/** One way what happened differs from what was expected. */
export interface Diff {
  what: string;
  expected: unknown;
  got: unknown;
  /** Where they part, or why, in words. */
  note?: string;
}

/** What a send step saw, in the terms its expectations use. */
export interface SendSummary {
  total: number;
  acked: number;
  wrongHashes: number;
  /** Who answered each request, in order: a server id, or the error code. */
  servers: string[];
  /** Answers by outcome: `ACK` or an error code. */
  outcomes: Record<string, number>;
  perServer: Record<string, number>;
}

export function summariseSend(results: Result[]): SendSummary {
  const s: SendSummary = { total: results.length, acked: 0, wrongHashes: 0, servers: [], outcomes: {}, perServer: {} };
  for (const r of results) {
    const outcome = r.error ?? (r.answer === undefined ? 'NO_ANSWER' : 'ACK');
    s.outcomes[outcome] = (s.outcomes[outcome] ?? 0) + 1;
    s.servers.push(r.server ?? outcome);
    if (r.server !== undefined && r.error === undefined) {
      s.acked++;
      s.perServer[r.server] = (s.perServer[r.server] ?? 0) + 1;
      if (r.correct === false) s.wrongHashes++;
    }
  }
  return s;
}

export function checkSend(expect: SendExpect, s: SendSummary): Diff[] {
  const diffs: Diff[] = [];
  if (expect.servers) {
    const at = firstDifference(expect.servers, s.servers);
    if (at >= 0) {
      const note = at >= expect.servers.length ? `${s.servers.length - expect.servers.length} more answer(s) than expected`
        : at >= s.servers.length ? `${expect.servers.length - s.servers.length} answer(s) fewer than expected`
        : `request ${at + 1}: expected ${expect.servers[at]}, got ${s.servers[at]}`;
      diffs.push({ what: 'servers', expected: expect.servers, got: s.servers, note });
    }
  }
  if (expect.verified !== undefined) {
    const verified = s.acked > 0 && s.wrongHashes === 0;
    if (verified !== expect.verified) {
      const note = s.wrongHashes ? `${s.wrongHashes} of ${s.acked} ACKs carried a wrong hash` : s.acked === 0 ? `no ACK came back (${outcomes(s)})` : `all ${s.acked} ACKs carried the right hash`;
      diffs.push({ what: 'verified', expected: expect.verified, got: verified, note });
    }
  }
  if (expect.error !== undefined) {
    const every = s.total > 0 && s.outcomes[expect.error] === s.total;
    if (!every) diffs.push({ what: 'error', expected: `${expect.error} on all ${s.total}`, got: outcomes(s) });
  }
  if (expect.acked_at_least !== undefined) {
    const share = s.total ? s.acked / s.total : 0;
    if (share < expect.acked_at_least) {
      diffs.push({ what: 'acked_at_least', expected: expect.acked_at_least, got: round(share), note: `${s.acked} of ${s.total} acked (${outcomes(s)})` });
    }
  }
  if (expect.acked !== undefined && expect.acked !== s.acked) diffs.push({ what: 'acked', expected: expect.acked, got: s.acked, note: outcomes(s) });
  if (expect.per_server && !sameCounts(expect.per_server, s.perServer)) diffs.push({ what: 'per_server', expected: expect.per_server, got: s.perServer });
  return diffs;
}

/** What came back on a raw connection. */
export interface RawSummary {
  answers: Message[];
  closed: boolean;
  /** Bytes that did not decode as frames, if any. */
  undecodable?: string;
}

export function checkRaw(expect: RawExpect, r: RawSummary): Diff[] {
  const diffs: Diff[] = [];
  if (expect.error !== undefined) {
    const codes = r.answers.map(describeAnswer);
    if (codes.length === 0 || codes.some((c) => c !== expect.error)) {
      diffs.push({ what: 'error', expected: expect.error, got: codes.length ? codes : r.closed ? 'the connection closed with no answer' : 'no answer' });
    }
  }
  if (expect.closed !== undefined && expect.closed !== r.closed) {
    diffs.push({ what: 'closed', expected: expect.closed, got: r.closed, note: r.closed ? 'the proxy closed the connection' : 'the connection stayed open' });
  }
  if (expect.answers !== undefined && expect.answers !== r.answers.length) diffs.push({ what: 'answers', expected: expect.answers, got: r.answers.length });
  return diffs;
}

/** A raw step is over when the connection closed, or what was expected has come. */
export function rawSettled(expect: RawExpect | undefined, r: RawSummary): boolean {
  if (r.closed || r.undecodable) return true;
  if (!expect) return r.answers.length > 0;
  if (expect.closed) return false;
  return checkRaw(expect, r).length === 0;
}

export function describeAnswer(m: Message): string {
  if (m.type === MsgType.ERROR) return m.code;
  if (m.type === MsgType.ACK) return `ACK from ${m.srcid}`;
  return `message type ${m.type}`;
}

export function checkPool(expect: PoolExpect, got: PoolState): Diff[] {
  const diffs: Diff[] = [];
  const none = got.members.length ? undefined : `no server is registered for policy ${expect.policy}`;
  // `order: any`: the same servers, in whatever order the proxy took them (a restart's re-registrations race).
  const any = expect.order === 'any';
  const differ = (a: string[], b: string[]): boolean => (any ? firstDifference([...a].sort(), [...b].sort()) : firstDifference(a, b)) >= 0;
  const what = any ? ' (in any order)' : '';
  if (expect.members && differ(expect.members, got.members)) diffs.push({ what: `pool ${expect.policy} members${what}`, expected: expect.members, got: got.members, note: none });
  if (expect.serving && differ(expect.serving, got.serving)) diffs.push({ what: `pool ${expect.policy} serving${what}`, expected: expect.serving, got: got.serving, note: none });
  return diffs;
}

function firstDifference(a: string[], b: string[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

function sameCounts(a: Record<string, number>, b: Record<string, number>): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].every((k) => (a[k] ?? 0) === (b[k] ?? 0));
}

function outcomes(s: SendSummary): string {
  return Object.entries(s.outcomes).map(([k, n]) => `${n} ${k}`).join(', ') || 'nothing sent';
}

const round = (x: number): number => Math.round(x * 10000) / 10000;
