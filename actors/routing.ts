/**
 * The proxy's routing rules, as plain functions over its context: the
 * policy records and their pools, who may take a request (eligibility and
 * in-flight limits), what happens to requests no member can take (wait,
 * OVERLOADED, NO_SERVER), retries after a failed try, and the one place
 * every request gets its answer. Membership (who is registered) is
 * membership.ts's; health (ejection, probes) is health.ts's.
 */
import { hostPort } from '../transport/address.js';
import { ErrorCode } from '../transport/errors.js';
import { ownRead } from '../transport/frame.js';
import { errorMsg, heldBytes, MsgType, payloadSize, TEXT_BYTES, WIRE, type AckMsg, type DataMsg, type ErrorMsg } from '../transport/messages.js';
import { startChild, stopChild } from './children.js';
import { FairQueue } from './fair-queue.js';
import { deadline, endStay, quoted, type Failure, type Peer, type ProxyRequest, type Reply, type TryCause } from './link.js';
import { fmt } from './logger.js';
import { poolMachine } from './pool.js';
import { countRefusal } from './refusal-budget.js';
import { RETRY_BUDGET_WINDOW_MS, RetryBudget, type RetryBudgetRules } from './retry-budget.js';
import { CLIENT_GONE, type Opts } from './proxy-options.js';
import { MEMBER_STATES, type ForwardBatch, type Member, type MemberState, type Policy, type ProxyContext } from './proxy-types.js';

/** The policy's record, made with its pool machine when it is first needed. */
export function policyOf(context: ProxyContext, name: string): Policy {
  let policy = context.policies.get(name);
  if (!policy) {
    const picked: Picked = { id: undefined, entry: undefined };
    let made: Policy | undefined;
    const pool = startChild(context.self, poolMachine, {
      id: `pool:${name}`,
      input: { policy: name, deliver: makeDeliver(context, () => made!, picked), unrouted: (requests: unknown[]) => unrouted(context, requests as ProxyRequest[]), eligible: makeEligible(context, picked) },
    });
    made = policy = { name, pool, members: new Set(), waiting: new FairQueue(), retryBudget: new RetryBudget() };
    context.policies.set(name, policy);
  }
  return policy;
}

/** A policy with no member and nothing waiting is forgotten, pool and all. */
export function forgetIfEmpty(context: ProxyContext, policy: Policy): void {
  if (policy.members.size > 0 || policy.waiting.length > 0) return;
  context.policies.delete(policy.name);
  stopChild(policy.pool);
}

/**
 * A member of `policy` left, went down or was drained. When no member could serve now (none
 * serving or connecting), its waiting requests are answered at once, as a new request is then
 * (`unrouted`: NO_SERVER, or a retry its tries' answer): they waited for room, and kept waiting for a
 * server until their deadline (a policy's only server stopped: up to the request timeout, then a
 * TIMEOUT that said no server had room). A policy left with no member and nothing waiting is forgotten.
 */
export function memberLost(context: ProxyContext, policy: Policy): void {
  if (!couldServe(policy)) endEjectionsEarly(context, policy);
  if (policy.waiting.length > 0 && !couldServe(policy)) drainWaiting(context, policy.name, true);
  forgetIfEmpty(context, policy);
}

/**
 * No member of `policy` is serving or connecting any more: its ejected members, whose links are open,
 * take requests again before their ejections end (Envoy's panic threshold routes to every host when
 * too few are healthy). Ejection never takes out the last healthy member, but that member could still
 * leave, go down or be drained: the policy then answered `NO_SERVER` for the rest of the ejections
 * (30 s and more) while servers that answer sat out. Three servers slower than the try timeout, two
 * ejected for their timeouts and the third killed: 1.78 million `NO_SERVER` in 9 s of load.
 */
function endEjectionsEarly(context: ProxyContext, policy: Policy): void {
  for (const m of policy.members) {
    if (!m.ejected || m.drained || m.traffic.phase !== 'open') continue;
    endEjection(context, m, `no other server of privacy policy ${policy.name} is serving (the last one left, went down or was drained)`, true);
  }
}

/**
 * A member's ejection ends: it takes requests again, its failure count reset; at its time (health.ts
 * `readmit`), or `early` when no other member of its policy could serve (`endEjectionsEarly`).
 */
export function endEjection(context: ProxyContext, entry: Member, why: string, early: boolean): void {
  entry.ejected = false;
  if (early) {
    entry.timer?.cancel();
    entry.timer = undefined;
    entry.ejectedUntil = context.clock.now();
  }
  entry.link.send({ type: 'RESET_FAILURES' });
  context.logger.info('readmit', early
    ? `Server id ${entry.id} is back in rotation for privacy policy ${entry.policy} before its ejection ended: ${why}`
    : `Server id ${entry.id} is back in rotation for privacy policy ${entry.policy} after its ejection`, {
    id: entry.id, policy: entry.policy, reason: why,
  });
  context.observer?.ejected?.(entry.policy, entry.id, 'ejection_over', true);
  drainWaiting(context, entry.policy);
}

/**
 * Hand requests to their policy's pool, or refuse them when nobody serves the policy. `now` is the
 * batch's one clock reading (the pool hands it on with each request: `makeDeliver`). New requests
 * (`arrived`, not a retry) count towards the policy's retry budget, at `now`.
 */
export function route(context: ProxyContext, name: string, requests: ProxyRequest[], now: number, arrived = false): void {
  const policy = context.policies.get(name);
  if (policy) {
    if (arrived) policy.retryBudget.deposit(now, requests.length);
    policy.pool.send({ type: 'ROUTE', requests, now });
  } else refuse(context, requests, { code: ErrorCode.NO_SERVER, message: `no server is registered for privacy policy ${name}` });
}

/**
 * A try failed on `member`: send each request to another member of its pool,
 * or answer it when its retries or its time are used up, or when no member it
 * has not tried could take it, or when `--retry-on` leaves out how the try
 * failed (`cause`), or when its policy's retry budget is spent (retry-budget.ts;
 * for work that may have run: not a link that went down, a server's OVERLOADED or
 * a request never sent). Only a request that goes elsewhere is logged as retried;
 * the observer counts each retry as it is sent (`makeDeliver`).
 */
export function retry(context: ProxyContext, member: string, requests: ProxyRequest[], failure: Failure, cause: TryCause): void {
  if (requests.length === 0) return;
  const now = context.clock.now();
  const reply = context.reply;
  const again = new Map<string, ProxyRequest[]>();
  let failedNow = 0;
  // Per policy: the requests the budget held back, and their one answer (the budget does not change within a call).
  let overBudget: Map<Policy, { n: number; answer: ErrorMsg }> | undefined;
  // A server's OVERLOADED says it ran none of the work (its queue was full): sent elsewhere, the request runs
  // once all the same, and that is how a policy with one full server and others with room balances. Outside
  // the budget too, as a link that went down or a request never sent: what the budget bounds is work done again.
  const budget = cause === 'try-timeout' || cause === 'timeout' || cause === 'upstream-failed';
  const rules = budgetRules(context);
  const wanted = cause === 'unsent' || context.opts.retryOn.includes(cause);
  let notWanted: ErrorMsg | undefined;
  const reset = cause === 'reset';
  const maxResets = context.opts.maxResets;
  let poisoned: ProxyRequest[] | undefined;
  for (const req of requests) {
    // Answered meanwhile by a try kept past its try timeout on another member (`keepTry`): nothing left to do.
    if (req.answered) continue;
    (req.tried ??= []).push(member);
    req.last = failure;
    if (reset) (req.downWith ??= []).push(member);
    const expired = deadline(context.opts, req) <= now;
    if (expired || req.tried.length > context.opts.retries) {
      if (!expired && waitsOnKept(req)) continue;
      const finalCode = expired ? ErrorCode.TIMEOUT : failure.code;
      const why = expired ? `no answer within ${context.opts.timeoutMs} ms (last try: ${failure.message})` : `${failure.message}; tried ${req.tried.join(', ')}`;
      reply(req, errorMsg(finalCode, why));
      failedNow++;
      continue;
    }
    if (!wanted) {
      if (waitsOnKept(req)) continue;
      reply(req, (notWanted ??= errorMsg(failure.code, `${failure.message}; not retried: retry_on (--retry-on) leaves out ${cause}`)));
      failedNow++;
      continue;
    }
    if (reset && maxResets > 0 && req.downWith!.length >= maxResets) {
      reply(req, errorMsg(failure.code, `${failure.message}; not sent to another server: ${downWithIt(req.downWith!)}: a request the handler crashes on ends every server it reaches (max_resets, --max-resets ${maxResets})`));
      (poisoned ??= []).push(req);
      continue;
    }
    const name = req.msg.privPoliId;
    const policy = context.policies.get(name);
    if (!couldServe(policy, req)) {
      if (waitsOnKept(req)) continue;
      answerTriedAll(context, req, name);
      failedNow++;
      continue;
    }
    if (budget && !policy!.retryBudget.take(now, rules)) {
      if (waitsOnKept(req)) continue;
      let held = (overBudget ??= new Map()).get(policy!);
      if (!held) overBudget.set(policy!, (held = { n: 0, answer: errorMsg(failure.code, `${failure.message}; not retried: ${budgetSpent(rules, policy!, now)}`) }));
      held.n++;
      reply(req, held.answer);
      context.observer?.retryRefused?.(name, member, failure.code);
      continue;
    }
    let group = again.get(name);
    if (!group) again.set(name, (group = []));
    group.push(req);
  }
  // Repeated conditions (per policy, server, code and how the try failed): one line at first, then one per interval with a count (logger.ts).
  // Requests the server never ran (it left or drains before they reached it) are an `info` line: nothing failed,
  // and a rolling restart made a warn line per server; why it left is said where it left.
  for (const [policy, reqs] of again) {
    context.logger.repeated(cause === 'unsent' ? 'info' : 'warn', 'retry', `${policy}\0${member}\0${failure.code}\0${cause}`, reqs.length,
      (n, span) => `Retrying ${fmt(n)} request(s) of privacy policy ${policy} on another server${span ? ` ${span}` : ''}: ${failure.message}`,
      { policy, server: member, code: failure.code, cause });
    route(context, policy, reqs, now);
  }
  if (overBudget) {
    for (const [policy, { n }] of overBudget) {
      context.logger.repeated('warn', 'retry_budget', `${policy.name}\0${member}\0${failure.code}`, n,
        (k, span) => `Did not retry ${fmt(k)} request(s) that failed on server id ${member}${span ? ` ${span}` : ''} (${failure.message}): ${budgetSpent(rules, policy, now)}; they got that answer`,
        { policy: policy.name, server: member, code: failure.code });
    }
  }
  if (poisoned) logPoisoned(context, poisoned);
  if (failedNow) {
    context.logger.repeated('warn', 'request_failed', `${member}\0${failure.code}`, failedNow,
      (n, span) => `${fmt(n)} request(s) failed after server id ${member}${span ? ` ${span}` : ''}: ${failure.message}`,
      { server: member, code: failure.code });
  }
}

/**
 * Whether a request that would be answered with a failure now (no member left to try, its retries or
 * the retry budget spent, `retry_on` leaving the failure out) waits for a try of it kept past its try
 * timeout instead (`keepTry`): that try may still answer before the deadline, and its answer, its
 * failure or the deadline then answers the request (`lastKept`). A policy of two servers, one down and
 * the other slower than the try timeout, answered `TIMEOUT` at the try timeout, the answer dropped.
 */
function waitsOnKept(req: ProxyRequest): boolean {
  if (!req.kept) return false;
  req.keptOnly = true;
  return true;
}

/** `the links of servers a and b went down while each held it`: the members a request was in flight on when their link went down. */
function downWithIt(servers: readonly string[]): string {
  const names = servers.length === 1 ? `server ${servers[0]}` : `servers ${servers.slice(0, -1).join(', ')} and ${servers[servers.length - 1]}`;
  return `the link${servers.length === 1 ? '' : 's'} of ${names} went down while ${servers.length === 1 ? 'it' : 'each'} held it`;
}

/**
 * Requests not sent again because `max_resets` servers went down with each (`retry`): a line per
 * client address (the first names the request, then a count an interval), and the observer's count.
 */
function logPoisoned(context: ProxyContext, requests: ProxyRequest[]): void {
  for (const req of requests) {
    const policy = req.msg.privPoliId;
    const servers = req.downWith!;
    context.observer?.poison?.(policy);
    const conn = req.client.conn;
    const addr = conn.remoteAddress;
    context.logger.repeated('warn', 'poison_request', `${addr}\0${policy}`, 1, (n, span) => span
      ? `Did not send ${fmt(n)} request(s) of privacy policy ${policy} from ${addr} to another server ${span}: the links of ${context.opts.maxResets} servers went down while each held it`
      : `Did not send request ${req.msg.seq} of client ${req.msg.srcid} (privacy policy ${policy}) from ${conn.describe()} to another server: ${downWithIt(servers)}, and a request the handler crashes on ends every server it reaches; it got the last try's answer. Look for what its payload holds that the handler cannot take (--log-level debug logs every payload forwarded); max_resets (--max-resets ${context.opts.maxResets}) bounds the servers one request may take down`, {
      policy, client: req.msg.srcid, seq: req.msg.seq, peer: conn.describe(), servers: [...servers],
    });
  }
}

/** The retry budget's rules as the options now have them (a reload may change them). */
export function budgetRules(context: ProxyContext): RetryBudgetRules {
  return { percent: context.opts.retryBudget, minPerSecond: context.opts.minRetryRate };
}

/** Why a retry was not made: the policy's budget, with its figures and the settings that make it. */
function budgetSpent(rules: RetryBudgetRules, policy: Policy, now: number): string {
  const s = policy.retryBudget.state(now, rules);
  return `privacy policy ${policy.name} made ${fmt(s.retries)} retries in the last ${RETRY_BUDGET_WINDOW_MS / 1000} s, all its retry budget allows `
    + `(${rules.percent} % of its ${fmt(s.requests)} requests and ${rules.minPerSecond} a second: --retry-budget, --min-retry-rate)`;
}

/** Whether a member of `policy` that `req` has not tried is serving or connecting (it may take `req` now or soon). */
function couldServe(policy: Policy | undefined, req?: ProxyRequest): boolean {
  if (!policy) return false;
  for (const m of policy.members) {
    if (req?.tried?.includes(m.id)) continue;
    const s = m.state;
    if (s === 'serving' || s === 'connecting') return true;
  }
  return false;
}

/**
 * Why a request of policy `name` finds no server: none registered, or what its registered ones are (drained,
 * ejected, down: `its one server, 'a', is drained`). It said only "no live server", and a client's author
 * (and `revproxy load`) read that as no server registered, with servers registered and drained.
 */
function noServer(name: string, policy: Policy | undefined): string {
  const base = `no live server serves privacy policy ${name}`;
  return policy && policy.members.size > 0 ? `${base}: ${membersWhy(policy, 'is')}` : base;
}

/**
 * Answer a request that failed on every member of its policy that could take it, with its last
 * try's code and, briefly, why it failed: a client's author can tell a broken server from a dead one.
 */
function answerTriedAll(context: ProxyContext, req: ProxyRequest, name: string): void {
  const last = req.last;
  const code = last?.code ?? ErrorCode.UPSTREAM_FAILED;
  const how = code === ErrorCode.TIMEOUT ? 'timed out on' : 'failed on';
  const why = last === undefined ? '' : `; the last try: ${quoted(last.message)}`;
  context.reply(req, errorMsg(code, `this request ${how} every server of privacy policy ${name} it could go to (tried ${req.tried!.join(', ')})${why}`));
}

export function refuse(context: ProxyContext, reqs: ProxyRequest[], failure: Failure): void {
  const reply = context.reply;
  const policy = reqs[0]?.msg.privPoliId;
  context.logger.repeated('warn', failure.code === ErrorCode.NO_SERVER ? 'no_server' : 'refused', `${policy}\0${failure.code}`, reqs.length,
    (n, span) => `${failure.message}; refused ${fmt(n)} request(s)${span ? ` ${span}` : ''}`, { policy, code: failure.code });
  const answer = errorMsg(failure.code, failure.message);
  // Refused as they came (NO_SERVER, OVERLOADED): counted against their connections' budget of refusals; a drain's are not.
  const counted = failure.code !== ErrorCode.SHUTTING_DOWN;
  for (const r of reqs) {
    reply(r, answer);
    if (counted) countRefusal(r.client, context.clock, context.logger);
  }
}

/**
 * What a request holds in memory until it is answered, as the buffer budget counts it
 * (`heldBytes`: its payload, and the frame it keeps to be forwarded as its own bytes, `WIRE`). A
 * text payload counts its UTF-8 bytes, not its length: V8 keeps a string with any character past
 * U+00FF at two bytes a character (CJK text: 2 bytes for its 3 in UTF-8, where its length counted
 * 1), and UTF-8 is never less.
 */
export function requestBytes(msg: DataMsg): number {
  const w = msg[WIRE];
  // A text payload not made into a string (`TEXT_BYTES`) is held as its frame's bytes alone, as a binary one is.
  return heldBytes(payloadSize(msg), msg[TEXT_BYTES] === undefined && typeof msg.payload === 'string', w === undefined ? 0 : w.end - w.start);
}

/**
 * The requests read in one turn of the event loop (a FORWARD): each held against the budget and
 * counted for its client, grouped by policy, and each group routed with the one clock reading of the
 * turn. A client past its limit of requests, or of the budget's share for one connection, is not
 * read until answers bring it down.
 */
export function forwardRead(context: ProxyContext, batches: readonly ForwardBatch[]): void {
  const log = context.logger;
  const now = context.clock.now();
  const byPolicy = new Map<string, ProxyRequest[]>();
  const verbose = log.enabled('debug');
  const limit = context.opts.maxClientInflight;
  let groupOf: string | undefined;
  let group: ProxyRequest[] | undefined;
  for (const { peer, requests } of batches) {
    peer.outstanding += requests.length;
    context.inflight.add(requests.length);
    for (const msg of requests) {
      if (verbose) {
        log.debug('request', `Received a message from client ${msg.srcid} payload ${msg.payload}`, {
          client: msg.srcid, policy: msg.privPoliId, payload: msg.payload,
        });
      }
      if (!peer.mixed && msg.privPoliId !== peer.policy) namedPolicy(peer, msg.privPoliId);
      const req = holdRequest(context, peer, msg, now);
      if (!req) continue;
      // A connection's requests mostly name one policy: its group is looked up again only when the name changes.
      if (msg.privPoliId !== groupOf) {
        groupOf = msg.privPoliId;
        group = byPolicy.get(groupOf);
        if (!group) byPolicy.set(groupOf, (group = []));
      }
      group!.push(req);
    }
    if (!peer.throttled && (peer.outstanding >= limit || peer.heldBytes >= context.budget.requestsPerPeer)) {
      peer.throttled = true;
      peer.conn.pause();
    }
  }
  for (const [policy, reqs] of byPolicy) route(context, policy, reqs, now, true);
}

/**
 * A request read from `peer`, its bytes held against the buffer budget until
 * its answer (on the request and its client). Requests together may hold half
 * the budget: past it the request is answered OVERLOADED at once (undefined).
 */
export function holdRequest(context: ProxyContext, peer: Peer, msg: DataMsg, now: number): ProxyRequest | undefined {
  const bytes = requestBytes(msg);
  if (context.budget.hold(bytes)) {
    peer.heldBytes += bytes;
    // Its fields the hot path sets later are in it from the start: one shape from here to its answer, no property added.
    return { client: peer, msg, arrived: now, bytes, finalTry: false, answered: false };
  }
  refuse(context, [{ client: peer, msg, arrived: now }], { code: ErrorCode.OVERLOADED, message: `the proxy holds ${context.budget.limit / 2} bytes of requests not answered yet, half its buffer budget (--max-buffered-bytes); try again later` });
  return undefined;
}

/**
 * End a client's connection once what it asked is answered (`makeReply`), at
 * once when nothing is in flight; `error` (its bad input) goes first on the frames wire, last on
 * the JSON one. Also for
 * a client that ended its side, as HAProxy and Envoy let a half-closed client
 * read its answers.
 */
export function closeAfterAnswers(peer: Peer, error?: ErrorMsg): void {
  if (peer.outstanding === 0) return peer.conn.endWith(error);
  // On the frames wire the error goes at once, before the answers still owed (as HTTP/2's GOAWAY): the client sends
  // nothing more on the connection, nor takes our silence to its PINGs (nothing after the bad bytes is read, its PINGs
  // neither) for a dead connection, which sent again the requests being answered: a slow one ran twice. A JSON client
  // (the old client.py) takes the next reply for its request's: the error last.
  if (error && peer.conn.wire === 'frames') {
    peer.conn.send(error);
    error = undefined;
  }
  peer.closing = { error };
  peer.conn.pause();
}

/** Why a member may not take a request now (`makeEligible`'s reasons, named for the inspector). */
export type Unavailable = 'unregistered' | 'drained' | 'ejected' | 'not_connected' | 'full' | 'silent' | 'backlogged' | 'tried';

/**
 * Why `entry` may not take `req` now, or undefined when it may: it must be
 * registered, not drained or ejected, connected, below its in-flight limit,
 * not held back as slow or silent (`stalled`: its oldest request unanswered for
 * `slowAfterMs`, none newer answered past it, and the one sent to find out
 * unanswered too: it holds only the requests it already has, which retry on time), not backlogged (its link holds no more
 * unwritten than it may: a server that reads too slowly is sent nothing more
 * until it reads), and not already tried for it.
 */
export function unavailable(context: ProxyContext, entry: Member | undefined, req?: ProxyRequest): Unavailable | undefined {
  if (!entry) return 'unregistered';
  if (entry.drained) return 'drained';
  if (entry.ejected) return 'ejected';
  if (entry.traffic.phase !== 'open') return 'not_connected';
  const inflight = entry.traffic.inflight;
  if (inflight.size > 0) {
    if (inflight.size >= mostHeld(context, entry)) return 'full';
    if (stalled(context, entry)) return 'silent';
  }
  if (entry.traffic.backlogged) return 'backlogged';
  const tried = req?.tried;
  return tried && tried.includes(entry.id) ? 'tried' : undefined;
}

/**
 * The most requests `entry` may hold in flight: `max_server_inflight` (read live: a reload may change it), and for a
 * server that states how many it runs at once (`--concurrency`, in its first PONG) that many and its queue
 * (`serverQueue`): enough waiting in its own queue that it does not wait for the proxy between two requests, and past
 * them a backlog waits in the proxy's queue, fair between clients, not in the server's, where each waits behind all
 * the others. `max_server_inflight` (1024) was the only bound: a burst of 2,000 requests sent 535 at once to each of
 * three servers that ran 4 at a time, and a light client's request waited behind them (p50 3.3 s, 15 of 301
 * `TIMEOUT`; 116 ms and none with `--max-server-inflight 8`). HAProxy needs a `maxconn` on each server line for this;
 * the server says it here. The one rule of a member's room: `unavailable` (full) and `roomIn` (what a drain takes).
 */
function mostHeld(context: ProxyContext, entry: Member): number {
  const max = context.opts.maxServerInflight;
  const limit = entry.traffic.limit;
  return limit === undefined ? max : Math.min(max, limit + serverQueue(context, entry.traffic));
}

/**
 * What the proxy keeps waiting in the queue of a server that states its `limit`, beyond it: `max_server_queue`, or by
 * default as many again, or as many as it answers in `SERVER_QUEUE_MS` when busy (its `pace`) when that is more. The
 * next request reaches a server a turn-around after its last answer (the proxy reads the answer, writes the next
 * request, the server reads it), and a server holding less work than that waits idle for it: four servers working one
 * request at a time, 1 ms each (1.2-1.4 ms a request with their timer's lag), loaded 2x32 through the proxy on two busy
 * cores, were idle a median 13 % of the time with one waiting each, one request in nine starting after a wait for the
 * proxy (a quarter to a half of those waits over 1 ms); 5 ms ahead, 3 % and one in a hundred (timed in the servers, 8 rounds
 * alternating). The cost is bounded in time: a request waits at most about that much longer in a server's queue,
 * behind other clients' requests, than in the proxy's.
 */
function serverQueue(context: ProxyContext, traffic: Member['traffic']): number {
  const limit = traffic.limit!;
  const set = context.opts.maxServerQueue;
  if (set !== undefined) return set;
  const pace = traffic.pace;
  return pace !== undefined && pace > 0 ? Math.max(limit, Math.ceil(SERVER_QUEUE_MS / pace)) : limit;
}

/** The work, in time, a server that states its `--concurrency` is kept queued by default (`serverQueue`). */
export const SERVER_QUEUE_MS = 5;

/**
 * Whether a member is held back as slow or silent (never, when `slowAfterMs` is 0): its oldest
 * unanswered request has waited `slowAfterMs`, it answered nothing in that time (or, holding as many
 * requests as it says it runs at once, no newer request past that one), and a request sent it since
 * is unanswered too. A server that stopped answering takes one request to find out, then nothing
 * until it answers. A server whose `--concurrency` is full (one at a time: `--concurrency 1`) and
 * answers in order queues what more it takes: it takes nothing more until it answers, so a backlog
 * waits in the proxy's queue, fair between clients, not in the server's. One that awaits one long
 * call answers the next past it at once, and keeps taking requests; so does one that states no limit
 * and answers: every request may take longer than `slow_after` (a handler awaiting a 1 s call), and
 * held to the in-order rule such a server was sent one request at a time (7 of 20 a second answered).
 */
export function stalled(context: ProxyContext, entry: Member): boolean {
  const slowAfterMs = context.opts.slowAfterMs;
  if (slowAfterMs === 0) return false;
  const traffic = entry.traffic;
  const inflight = traffic.inflight;
  if (inflight.size === 0) return false;
  const full = traffic.limit !== undefined && inflight.size >= traffic.limit;
  const since = Math.max(full ? traffic.overtakenAt : traffic.answeredAt, inflight.oldestSentAt()!) + slowAfterMs;
  // A request sent at or after `since` was sent at a clock reading past it, so `now >= since` follows without a read of
  // the clock (the pool asks this of a member for every request it routes). `sentAt` Infinity (the oldest request's wait
  // alone counts) says nothing of the time: the clock is read then.
  const sent = traffic.sentAt;
  return sent >= since && (sent !== Infinity || context.clock.now() >= since);
}

/**
 * The member the pool's `eligible` looked up last, for its `deliver`: the pool asks whether a member may take a request,
 * then hands it that request at once, and the second lookup of the member by its id (a Map's, per request) is spared.
 */
interface Picked {
  id: string | undefined;
  entry: Member | undefined;
}

/** Whether member `id` may take `req` now (the pool's `eligible`): `unavailable` has no reason against it. */
function makeEligible(context: ProxyContext, picked: Picked) {
  return (id: string, req: unknown): boolean => {
    const entry = context.servers.get(id);
    picked.id = id;
    picked.entry = entry;
    return unavailable(context, entry, req as ProxyRequest) === undefined;
  };
}

/**
 * The pool of `policy` hands each request to the member it picked. `eligible` has just
 * checked that member (`picked`), so it is registered and its link is open.
 */
function makeDeliver(context: ProxyContext, policy: () => Policy, picked: Picked) {
  return (member: string, request: unknown, routedAt?: number): void => {
    const req = request as ProxyRequest;
    // The batch's one clock reading (every sender of ROUTE here gives one), not one a request.
    const now = routedAt ?? context.clock.now();
    // A request that failed elsewhere is being sent again: a retry, counted as it goes.
    if (req.tried !== undefined) context.observer?.retried?.(req.msg.privPoliId, req.tried[req.tried.length - 1]!, req.last!.code);
    // Its wait for a member with room, if it had one, ends here (the access log's queue_ms).
    if (req.queued !== undefined) endStay(req, now);
    // No retry could follow this try (its retries spent, or every other member tried or none): it runs to
    // the request's deadline. Members are counted, not looked at: one down or drained still counts, so
    // the rule is exact for a policy of one server, and costs nothing per request.
    const tried = req.tried?.length ?? 0;
    // On another try now: it no longer waits on its kept ones alone.
    if (req.keptOnly) req.keptOnly = false;
    req.finalTry = tried >= context.opts.retries || policy().members.size <= tried + 1;
    const entry = picked.id === member ? picked.entry! : context.servers.get(member)!;
    entry.traffic.sendOne(req, now);
  };
}

/**
 * Requests no member can take now either wait (some member is busy or still
 * connecting), or are answered: OVERLOADED when the wait queue is full,
 * NO_SERVER when nobody could serve them, or the last failure when every
 * other member was tried. The queue is fair between clients (fair-queue.ts):
 * when it is full, a client holding fewer waiting requests than the one
 * holding the most gets in, and that one's newest waiting request is
 * answered OVERLOADED instead; the client holding the most is refused its own.
 * Each client's waiting requests stay in arrival order, which deadlines rely on
 * (`expireWaiting`): a request back from a failed try, or from a drain, goes in
 * its place among its client's newer ones (one comparison for a new request).
 */
function unrouted(context: ProxyContext, reqs: ProxyRequest[]): void {
  const name = reqs[0]!.msg.privPoliId;
  const policy = context.policies.get(name);
  const returned = policy?.returned;
  const reply = context.reply;
  const limit = context.opts.queueLimit;
  let overloaded = 0;
  let noServers = 0;
  let refused: Set<Peer> | undefined;
  // The two refusals, made once a batch (a flood of a full policy is refused by the million).
  let full: ErrorMsg | undefined;
  let fullMost: ErrorMsg | undefined;
  let now: number | undefined;
  // Made once a batch too: a flood of a policy whose servers are all out is refused by the million.
  let none: ErrorMsg | undefined;
  const overload = (whose: string): ErrorMsg => errorMsg(ErrorCode.OVERLOADED, `every server of privacy policy ${name} is at its limit and ${limit} requests are waiting${whose}; try again later`);
  for (const req of reqs) {
    if (!couldServe(policy, req)) {
      if (req.tried?.length) answerTriedAll(context, req, name);
      else {
        reply(req, (none ??= errorMsg(ErrorCode.NO_SERVER, noServer(name, policy))));
        // One that waited (its servers went meanwhile) was not refused as it came: not its client's doing.
        if (req.queued === undefined) countRefusal(req.client, context.clock, context.logger);
        noServers++;
      }
      continue;
    }
    if (returned) {
      returned.push(req);
      continue;
    }
    // Its stay in the queue starts at its arrival, or now when it is back from a failed try; one a
    // drain put back keeps its own.
    if (req.queued === undefined) req.queued = req.tried === undefined ? req.arrived : (now ??= context.clock.now());
    if (policy!.waiting.length === 0) policy!.waitingSince = now ??= context.clock.now();
    const away = policy!.waiting.admit(req.client, req, limit, arrivedBefore);
    if (away !== req) ownRead(req.msg);
    if (away === undefined) continue;
    reply(away, away === req ? (full ??= overload('')) : (fullMost ??= overload(', the most of them from this connection')));
    // The new request, or the newest waiting one of the connection holding the most: refused for what it sends now.
    countRefusal(away.client, context.clock, context.logger);
    overloaded++;
    (refused ??= new Set()).add(away.client);
  }
  if (refused) holdRefused(refused);
  if (noServers) {
    context.logger.repeated('warn', 'no_server', `${name}\0live`, noServers,
      (n, span) => `No live server serves privacy policy ${name}; refused ${fmt(n)} request(s)${span ? ` ${span}` : ''}`, { policy: name, code: ErrorCode.NO_SERVER });
  }
  if (overloaded) {
    context.logger.repeated('warn', 'overloaded', name, overloaded,
      (n, span) => `Privacy policy ${name} is at its limits; refused ${fmt(n)} request(s) with OVERLOADED${span ? ` ${span}` : ''}`, { policy: name, code: ErrorCode.OVERLOADED });
  }
}

/**
 * Clients a full wait queue refused are not read again until their next answer (`makeReply`), as
 * HAProxy stops reading a connection over its limits: what they send meanwhile waits in the kernel,
 * and TCP holds them back. Read and refused at once instead, a closed-loop flood of a full policy
 * (30 connections keeping 4,096 requests in flight) had the proxy refuse 150,000-275,000 requests a
 * second at a full core, every other client sharing what was left. Only a client with requests still
 * unanswered is held: one of them answered (by a server, a timeout or a refusal) lets it go.
 * A connection whose requests named more than one policy (`Peer.mixed`) is not held, as an HTTP/2
 * proxy refuses one stream and reads on: held, its requests to a policy with room waited for the
 * full one's next answer (the library's client, one connection for every policy: a policy with
 * room answered in 336-360 ms at p90 instead of 3.5-4.2 while another was full, its server taking 500 ms).
 */
function holdRefused(clients: Set<Peer>): void {
  for (const client of clients) {
    if (client.queueHeld || client.mixed || client.outstanding === 0 || client.conn.closed) continue;
    client.queueHeld = true;
    // The socket only: what a read already took in is refused at once, as before the queue filled.
    client.conn.holdSocket();
  }
}

/** A client's request named `policy`, not the one it named before (if any): it is `mixed` from its second. */
export function namedPolicy(client: Peer, policy: string): void {
  if (client.policy === undefined) client.policy = policy;
  else client.mixed = true;
}

/** Whether request `a` came to the proxy before `b`: the order of a client's lane in a policy's wait queue. */
const arrivedBefore = (a: ProxyRequest, b: ProxyRequest): boolean => a.arrived < b.arrived;

/**
 * Route requests waiting for room in `policy` again (after a member got room or came back): as
 * many as its members have room for, taken one client's in turn (`FairQueue.take`). Each is taken
 * at most once per drain; one no member takes (it tried those with room) is held aside while the
 * drain goes on (`Policy.returned`: taken again at once, it would be taken without end), then goes
 * back to its place in its client's lane (`unrouted`, in arrival order: ahead of that client's newer
 * requests, whose deadlines come after its own). Taking them all, as the queue once was, cost
 * O(queue) per answer.
 * A reload takes them all (`all`): those no member takes are admitted again under the new
 * `queueLimit` (the excess of the client holding the most refused), or answered when no member
 * could serve them any more. Requests of a client whose connection closed are not sent (`sendWaiting`).
 */
export function drainWaiting(context: ProxyContext, name: string, all = false): void {
  const policy = context.policies.get(name);
  if (!policy) return;
  const waiting = policy.waiting;
  if (waiting.length === 0) return;
  if (all) return sendWaiting(context, policy, waiting.takeAll());
  const newest = standing(context, policy);
  const returned: ProxyRequest[] = (policy.returned = []);
  try {
    for (let n = roomIn(context, policy); n > 0 && waiting.length > 0; n = roomIn(context, policy)) {
      sendWaiting(context, policy, waiting.take(n, newest));
    }
  } finally {
    policy.returned = undefined;
  }
  if (returned.length > 0) unrouted(context, returned);
}

/**
 * Adaptive LIFO (`queueLifoAfterMs`, off at 0): whether `policy`'s queue has stood that long, not
 * empty once, so its members are given the newest waiting first. A standing queue is overload: in
 * arrival order every request served would have waited nearly `queue_timeout`; newest first, most
 * are served at once and the oldest are refused at it. A burst that clears sooner is served in order.
 */
function standing(context: ProxyContext, policy: Policy): boolean {
  const after = context.opts.queueLifoAfterMs;
  return after > 0 && context.clock.now() - policy.waitingSince! >= after;
}

/**
 * Send requests taken from `policy`'s wait queue to its pool, but for those of a client whose
 * connection closed while they waited (a client that pipelined the queue full and went): their
 * answers would go nowhere, and the server's work with them. The first met answers every request
 * that client has waiting, at once, OVERLOADED without a server (the answer releases the budget and
 * the in-flight count, is not written, and is counted `client_gone`, as `makeReply` counts any
 * answer to a closed connection). The check is one read per request a drain takes.
 */
function sendWaiting(context: ProxyContext, policy: Policy, reqs: ProxyRequest[]): void {
  let send: ProxyRequest[] | undefined;
  let gone = 0;
  for (let i = 0; i < reqs.length; i++) {
    const req = reqs[i]!;
    // Answered while it waited, by a try of it kept past its try timeout (`keepTry`): not sent again.
    if (req.answered) {
      send ??= reqs.slice(0, i);
      continue;
    }
    if (!req.client.conn.closed) {
      send?.push(req);
      continue;
    }
    send ??= reqs.slice(0, i);
    const why = errorMsg(ErrorCode.OVERLOADED, `the client's connection closed while this request waited for a server of privacy policy ${policy.name} with room; not sent`);
    context.reply(req, why);
    gone++;
    for (const r of policy.waiting.takeOf(req.client)) {
      context.reply(r, why);
      gone++;
    }
  }
  if (gone) {
    const name = policy.name;
    context.logger.repeated('info', 'client_gone', name, gone,
      (n, span) => `Dropped ${fmt(n)} waiting request(s) of privacy policy ${name} whose client closed its connection, unsent (counted as outcome ${CLIENT_GONE})${span ? ` ${span}` : ''}`, { policy: name });
  }
  const out = send ?? reqs;
  if (out.length) policy.pool.send({ type: 'ROUTE', requests: out, now: context.clock.now() });
}

/**
 * Requests the members of `policy` could take now: the free in-flight slots of those that may take any (`unavailable`),
 * each to its `mostHeld`. It counted each to `max_server_inflight` alone, so that a drain after one answer took the
 * whole queue of a policy whose servers state their concurrency, routed the one or two requests they had room for
 * and put the rest back: with 56 waiting for four servers that work one request at a time, 56 taken and put back for
 * each answer.
 */
function roomIn(context: ProxyContext, policy: Policy): number {
  let room = 0;
  for (const m of policy.members) if (unavailable(context, m) === undefined) room += mostHeld(context, m) - m.traffic.inflight.size;
  return room;
}

/**
 * Whether a waiting request is due at `now`: past its deadline (`timeout`, from its arrival), or
 * past `queue_timeout` in the queue (from its arrival, or when it came back from a failed try:
 * `queued`). The sweeper asks, and `expireWaiting` answers them.
 */
export function waitingDue(o: Pick<Opts, 'timeoutMs' | 'queueTimeoutMs'>, now: number): (req: ProxyRequest) => boolean {
  const queueTimeoutMs = o.queueTimeoutMs;
  return (req) => deadline(o, req) <= now || (req.queued ?? req.arrived) + queueTimeoutMs <= now;
}

/**
 * A waiting request back from a failed try: it waits in its place by arrival, but its stay counts
 * from its return, so one not yet due does not end the look for due ones behind it (`takeDue`). The
 * others' stays run from arrival, in the lane's order: the first not due ends it.
 */
export const backFromTry = (req: ProxyRequest): boolean => req.tried !== undefined;

/** How a policy's servers are named in `roomlessWhy`: at most this many of each state, then how many more. */
const NAMED_PER_STATE = 3;

/**
 * What the servers of `policy` were doing when a request waited in its queue past its time: none
 * had room, and which were serving (with no room: at their limit, or held back), connecting (an old
 * server that has not listened yet since its setup, a new link dialing), down, ejected or drained,
 * with their ids: `its one server, OLD1, was connecting to 127.0.0.1:9001`, `its 3 servers: 2 serving with no room
 * (a, b), 1 down (c)`. A TIMEOUT said only that no server had room: a policy whose one old server
 * registered and never listened timed its requests out for 5 s as if its server were busy.
 */
export function roomlessWhy(policy: Policy): string {
  return policy.members.size === 0 ? 'it has no server now' : membersWhy(policy, 'was');
}

/** What the members of `policy` (one at least) are doing, `verb` ('was', 'is') for one alone: `roomlessWhy`. */
function membersWhy(policy: Policy, verb: string): string {
  const doing = (state: MemberState): string => (state === 'serving' ? 'serving with no room' : state);
  if (policy.members.size === 1) {
    const [m] = policy.members as Iterable<Member> as [Member];
    // Connecting: where to (an old server listens only after its setup; a registered port may be wrong).
    return `its one server, ${quoted(m.id)}, ${verb} ${doing(m.state)}${m.state === 'connecting' ? ` to ${hostPort(m.host, m.port)}` : ''}`;
  }
  const by = new Map<MemberState, string[]>();
  for (const m of policy.members) {
    const ids = by.get(m.state);
    if (ids) ids.push(m.id);
    else by.set(m.state, [m.id]);
  }
  const parts: string[] = [];
  for (const state of MEMBER_STATES) {
    const ids = by.get(state);
    if (!ids) continue;
    const named = ids.slice(0, NAMED_PER_STATE).map(quoted).join(', ');
    parts.push(`${ids.length} ${doing(state)} (${named}${ids.length > NAMED_PER_STATE ? ` and ${ids.length - NAMED_PER_STATE} more` : ''})`);
  }
  return `its ${policy.members.size} servers: ${parts.join(', ')}`;
}

/**
 * Answer the requests of every policy that have waited past their deadline (TIMEOUT) or past
 * `queue_timeout` for a member with room: OVERLOADED, unsent, or for one back from a failed try,
 * that try's answer. As HAProxy's `timeout queue`: a policy short of room refuses what it cannot
 * serve soon, and what it serves has not waited long (README, "Overload: queue_limit and queue_timeout").
 */
export function expireWaiting(context: ProxyContext, now: number): void {
  const reply = context.reply;
  const { timeoutMs, queueTimeoutMs } = context.opts;
  const due = waitingDue(context.opts, now);
  for (const policy of context.policies.values()) {
    if (policy.waiting.length === 0) continue;
    const name = policy.name;
    let late: ErrorMsg | undefined;
    let full: ErrorMsg | undefined;
    let queueTimedOut = 0;
    let why: string | undefined;
    const wait = (): string => `no server of privacy policy ${name} had room within ${queueTimeoutMs} ms (--queue-timeout; ${(why ??= roomlessWhy(policy))})`;
    const expire = (req: ProxyRequest): void => {
      if (deadline(context.opts, req) <= now) {
        reply(req, (late ??= errorMsg(ErrorCode.TIMEOUT, `no server of privacy policy ${name} had room within ${timeoutMs} ms (${(why ??= roomlessWhy(policy))})`)));
        return;
      }
      queueTimedOut++;
      const last = req.last;
      if (last) reply(req, errorMsg(last.code, `${last.message}; not retried: ${wait()}`));
      else reply(req, (full ??= errorMsg(ErrorCode.OVERLOADED, `${wait()}; not sent, try again later`)));
    };
    if (policy.waiting.takeDue(due, expire, backFromTry) === 0) continue;
    if (queueTimedOut) {
      context.logger.repeated('warn', 'queue_timeout', name, queueTimedOut,
        (n, span) => `Privacy policy ${name} is short of room: ${fmt(n)} request(s) waited ${queueTimeoutMs} ms in its queue (--queue-timeout) and were answered unsent: OVERLOADED, or a retry its try's answer${span ? ` ${span}` : ''}`,
        { policy: name, code: ErrorCode.OVERLOADED });
    }
    forgetIfEmpty(context, policy);
  }
}

/**
 * Route the waiting requests of policy `name` again soon (`DRAIN_WAITING`, `drainWaiting`), once
 * per policy per microtask however many slots of its members freed meanwhile (`Policy.drainDue`):
 * after a member's answer (`makeReply`), and after tries that failed or timed out (`triesFailed`):
 * a try's expiry frees its slot as an answer does, and the waiting must not wait for the next
 * answer or their own deadline. Nothing is scheduled for a policy with nothing waiting.
 */
export function drainSoon(context: ProxyContext, name: string): void {
  const policy = context.policies.get(name);
  if (!policy || policy.drainDue || policy.waiting.length === 0) return;
  policy.drainDue = true;
  queueMicrotask(() => {
    policy.drainDue = false;
    context.self.send({ type: 'DRAIN_WAITING', policy: name });
  });
}

/**
 * Every request gets exactly one answer through here; the proxy makes it
 * once, as `context.reply`. It keeps the proxy's count of requests in
 * flight, whose last answer ends a drain.
 */
export function makeReply(context: ProxyContext): Reply {
  const observer = context.observer?.answered ? context.observer : undefined;
  const clock = context.clock;
  return (req: ProxyRequest, answer: AckMsg | ErrorMsg, member?: string, at?: number): void => {
    // Once: a try kept past its try timeout and the try after it may both answer (`keepTry`), and what still held it is then done with it.
    if (req.answered) return;
    req.answered = true;
    const client = req.client;
    if (observer) {
      const conn = client.conn;
      const outcome = !conn.closed ? (answer.type === MsgType.ACK ? 'ok' : answer.code) : conn.shedByBudget ? ErrorCode.OVERLOADED : CLIENT_GONE;
      const now = at ?? clock.now();
      // Answered while it waited (a queue timeout, a deadline, its client gone): that stay ends here.
      if (req.queued !== undefined) endStay(req, now);
      // Answered by the proxy after a try (a TIMEOUT at the deadline, the last of its retries failed): counted
      // against the server that had it last, as HAProxy logs it. It was counted against no server: a server
      // that timed out every request showed 0 errors on its card and in /metrics.
      const tried = req.tried;
      const tries = (tried?.length ?? 0) + (member === undefined ? 0 : 1);
      observer.answered!(req.msg.privPoliId, member ?? tried?.[tried.length - 1], outcome, now - req.arrived, req, tries, context.self.sessionId);
    }
    client.outstanding--;
    if (req.bytes) {
      context.budget.release(req.bytes);
      client.heldBytes -= req.bytes;
    }
    if (client.queueHeld) {
      client.queueHeld = false;
      client.conn.releaseSocket();
    }
    if (client.throttled && client.outstanding <= context.opts.maxClientInflight >> 1 && client.heldBytes <= context.budget.requestsPerPeer / 2) {
      client.throttled = false;
      client.conn.resume();
    }
    // A request that freed room at a busy server lets waiting requests of its policy go.
    if (member !== undefined) drainSoon(context, req.msg.privPoliId);
    client.conn.send(answer, req.msg.seq);
    if (client.closing !== undefined && client.outstanding === 0) client.conn.endWith(client.closing.error);
    // Last: the last answer of a drain may end the proxy, which closes the client connections.
    context.inflight.done();
  };
}

/**
 * The drain is over before its requests are (its timeout ran out, or a second STOP: `stopped`):
 * what servers still hold, and what still waits for one, is answered SHUTTING_DOWN, in one line.
 */
export function failRemaining(context: ProxyContext, stopped: boolean): void {
  const reply = context.reply;
  let n = 0;
  for (const entry of context.servers.values()) {
    // Tries kept past their try timeout (`keepTry`) hold requests too: those that waited on them alone are answered here once.
    const kept = entry.traffic.kept?.takeAll() ?? [];
    for (const p of [...entry.traffic.inflight.takeAll(), ...kept]) {
      if (p.req.answered) continue;
      reply(p.req, errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy shut down before the server answered'));
      n++;
    }
  }
  for (const policy of context.policies.values()) {
    for (const req of policy.waiting.takeAll()) {
      reply(req, errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy shut down before a server had room'));
      n++;
    }
  }
  if (n) context.logger.warn('drain_timeout', `${stopped ? 'Stopped before the drain ended' : 'Drain timeout'}: answered ${n} request(s) SHUTTING_DOWN`, { count: n });
}
