/**
 * The proxy's routing rules, as plain functions over its context: who may
 * take a request (eligibility and in-flight limits), what happens to
 * requests no member can take (wait, OVERLOADED, NO_SERVER), retries after a
 * failed try, ejection, removal, registration secrets, and the one place
 * every request gets its answer. The proxy machine's actions call them.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AnyActorRef } from 'xstate';
import { ErrorCode, type ErrorCode as Code } from '../transport/errors.js';
import { errorMsg, MsgType, type AckMsg, type ErrorMsg, type SetupMsg } from '../transport/messages.js';
import type { Opts, ProxyContext, ServerEntry } from './proxy.js';
import type { ProxyRequest, Reply, UpstreamRef } from './upstream.js';

export type Enqueue = { sendTo: (ref: AnyActorRef, ev: { type: string; [k: string]: unknown }) => void };
export type Spawn = (src: 'upstream' | 'upstreamJson', opts: { id: string; input: unknown }) => AnyActorRef;

export function sweepInterval(tryTimeoutMs: number): number {
  return Math.max(5, Math.min(100, Math.floor(tryTimeoutMs / 20)));
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.') || host.startsWith('::ffff:127.');
}

export function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Why a setup's secret is not accepted, or undefined when it is. Compared in constant time; never logged. */
export function checkSecret(opts: Opts, s: SetupMsg): string | undefined {
  const perPolicy = opts.tokens && Object.prototype.hasOwnProperty.call(opts.tokens, s.privPolyId) ? opts.tokens[s.privPolyId] : undefined;
  const required = perPolicy ?? opts.token;
  if (required === undefined) {
    return opts.tokens ? `privacy policy ${s.privPolyId} is not in the proxy's tokens file` : undefined;
  }
  if (s.token === undefined) return 'no token given; this proxy requires a registration token';
  return timingSafeEqual(digest(s.token), digest(required)) ? undefined : 'wrong token';
}

/** IPv4-mapped IPv6 addresses (::ffff:127.0.0.1) dial as plain IPv4. */
export function normaliseHost(addr: string): string {
  return addr.startsWith('::ffff:') ? addr.slice(7) : addr;
}

/** The entry for `member` if `linkId` is its current link (reports from older links are stale). */
export function current(context: ProxyContext, member: string, linkId: string): ServerEntry | undefined {
  const entry = context.servers.get(member);
  return entry && entry.link.id === linkId ? entry : undefined;
}

export function spawnLink(context: ProxyContext, entry: ServerEntry, spawn: unknown): number {
  const linkSeq = context.linkSeq + 1;
  context.linkSeq = linkSeq;
  const link = (spawn as Spawn)(entry.wire === 'json' ? 'upstreamJson' : 'upstream', {
    id: `upstream:${entry.id}#${linkSeq}`,
    input: {
      old: context.opts.oldServers,
      member: entry.id,
      policy: entry.policy,
      host: entry.host,
      port: entry.port,
      connect: context.connect,
      clock: context.clock,
      timeoutMs: context.opts.timeoutMs,
      tryTimeoutMs: context.opts.tryTimeoutMs,
      maxFrameBytes: context.opts.maxFrameBytes,
      busy: context.busy,
      reply: context.reply,
      logger: context.logger,
      busyPoll: context.busyPoll,
    },
  }) as UpstreamRef;
  entry.link = link;
  const linkContext = link.getSnapshot().context;
  entry.inflight = linkContext.inflight;
  entry.traffic = 'traffic' in linkContext ? linkContext.traffic : undefined;
  return linkSeq;
}

export function removeServer(context: ProxyContext, entry: ServerEntry, reason: string, enqueue: Enqueue): void {
  if (context.servers.get(entry.id) !== entry) return;
  context.servers.delete(entry.id);
  entry.timer?.cancel();
  context.logger.info('deregister', `Server id ${entry.id} left privacy policy ${entry.policy}: ${reason}`, {
    id: entry.id, policy: entry.policy, reason,
  });
  const pool = context.pools.get(entry.policy);
  if (pool) enqueue.sendTo(pool, { type: 'LEAVE', id: entry.id, reason });
  if (entry.link.getSnapshot().status === 'active') enqueue.sendTo(entry.link, { type: 'RETIRE' });
}

export function eject(context: ProxyContext, entry: ServerEntry, failures: number): void {
  const pool = context.pools.get(entry.policy);
  const members: string[] = pool?.getSnapshot().context.members ?? [];
  const othersServing = members.some((id) => id !== entry.id && context.servers.get(id)?.state === 'serving');
  const reason = `${failures} consecutive failures`;
  if (!othersServing) {
    context.logger.warn('eject_skipped', `Server id ${entry.id} has ${reason} but is the last healthy server of privacy policy ${entry.policy}; kept in rotation`, {
      id: entry.id, policy: entry.policy, reason,
    });
    return;
  }
  entry.state = 'ejected';
  entry.ejections++;
  const ms = context.opts.ejectBaseMs * entry.ejections;
  context.logger.warn('eject', `Ejected server id ${entry.id} from privacy policy ${entry.policy} for ${ms} ms after ${reason}`, {
    id: entry.id, policy: entry.policy, reason, ejectedForMs: ms, ejections: entry.ejections,
  });
  context.observer?.ejected?.(entry.policy, entry.id, reason, false);
  const self = context.self;
  entry.timer?.cancel();
  entry.timer = context.clock.setTimeout(() => self?.send({ type: 'READMIT', member: entry.id }), ms);
}

/**
 * A try failed on `member`: send each request to another member of its pool,
 * or answer it when its retries or its time are used up.
 */
export function retry(context: ProxyContext, member: string, requests: ProxyRequest[], code: Code, reason: string, enqueue: Enqueue): void {
  if (requests.length === 0) return;
  const now = context.clock.now();
  const reply = context.reply;
  const again = new Map<string, ProxyRequest[]>();
  let failedNow = 0;
  for (const req of requests) {
    (req.tried ??= []).push(member);
    req.lastCode = code;
    const expired = now >= req.arrived + context.opts.timeoutMs;
    if (expired || req.tried.length > context.opts.retries) {
      const finalCode = expired ? ErrorCode.TIMEOUT : code;
      const why = expired ? `no answer within ${context.opts.timeoutMs} ms (last try: ${reason})` : `${reason}; tried ${req.tried.join(', ')}`;
      reply(req, errorMsg(finalCode, why));
      failedNow++;
      continue;
    }
    context.observer?.retried?.(req.msg.privPoliId, member, reason);
    let group = again.get(req.msg.privPoliId);
    if (!group) again.set(req.msg.privPoliId, (group = []));
    group.push(req);
  }
  for (const [policy, reqs] of again) {
    context.logger.warn('retry', `Retrying ${reqs.length} request(s) of privacy policy ${policy} on another server: ${reason}`, {
      policy, server: member, count: reqs.length, reason,
    });
    const pool = context.pools.get(policy);
    if (pool) enqueue.sendTo(pool, { type: 'ROUTE', requests: reqs });
    else refuse(context, reqs, ErrorCode.NO_SERVER, `no server is registered for privacy policy ${policy}`);
  }
  if (failedNow) {
    context.logger.warn('request_failed', `${failedNow} request(s) failed after server id ${member}: ${reason}`, { server: member, count: failedNow, code, reason });
  }
}

export function refuse(context: ProxyContext, reqs: ProxyRequest[], code: Code, message: string): void {
  const reply = context.reply;
  context.logger.warn(code === ErrorCode.NO_SERVER ? 'no_server' : 'refused', `${message}; refused ${reqs.length} request(s)`, {
    policy: reqs[0]?.msg.privPoliId, count: reqs.length, code,
  });
  for (const r of reqs) reply(r, errorMsg(code, message));
}

/**
 * Whether `id` may take `req` now. The pool picks the first member this
 * accepts, so a yes is a pick: it is counted in `planned` until the batch is
 * handed to the link, keeping the in-flight limit exact within one batch.
 */
export function makeEligible(context: ProxyContext) {
  const max = context.opts.maxServerInflight;
  return (id: string, req: unknown): boolean => {
    const entry = context.servers.get(id);
    if (!entry || entry.state !== 'serving' || entry.inflight.size + entry.planned >= max) return false;
    const tried = (req as ProxyRequest).tried;
    if (tried && tried.includes(id)) return false;
    entry.planned++;
    return true;
  };
}

/**
 * The pool hands each request to the member it picked: straight to the
 * member's link while it is open (no event), or as a SEND event while its
 * machine decides (connecting, verifying, an old server's link).
 */
export function makeDeliver(context: ProxyContext) {
  return (member: string, request: unknown): void => {
    const req = request as ProxyRequest;
    const entry = context.servers.get(member);
    if (!entry) {
      unrouted(context, [req]);
      return;
    }
    if (entry.planned > 0) entry.planned--;
    const traffic = entry.traffic;
    if (traffic && traffic.open) traffic.sendOne(req);
    else entry.link.send({ type: 'SEND', requests: [req] });
  };
}

/**
 * Requests no member can take now either wait (some member is busy or still
 * connecting), or are answered: OVERLOADED when the wait queue is full,
 * NO_SERVER when nobody could serve them, or the last failure when every
 * other member was tried.
 */
export function makeUnrouted(context: ProxyContext) {
  return (requests: unknown[]): void => unrouted(context, requests as ProxyRequest[]);
}

function unrouted(context: ProxyContext, reqs: ProxyRequest[]): void {
  const policy = reqs[0]!.msg.privPoliId;
  const pool = context.pools.get(policy);
  const members: string[] = pool?.getSnapshot().context.members ?? [];
  const reply = context.reply;
  const queue = context.waiting.get(policy) ?? [];
  let overloaded = 0;
  let noServer = 0;
  for (const req of reqs) {
    const candidates = members.filter((id) => !req.tried?.includes(id));
    const couldServe = candidates.some((id) => {
      const s = context.servers.get(id)?.state;
      return s === 'serving' || s === 'connecting';
    });
    if (!couldServe) {
      if (req.tried?.length) {
        const code = req.lastCode ?? ErrorCode.UPSTREAM_FAILED;
        const how = code === ErrorCode.TIMEOUT ? 'timed out on' : 'failed on';
        reply(req, errorMsg(code, `this request ${how} every server of privacy policy ${policy} it could go to (tried ${req.tried.join(', ')})`));
      } else {
        reply(req, errorMsg(ErrorCode.NO_SERVER, `no live server serves privacy policy ${policy}`));
        noServer++;
      }
    } else if (queue.length < context.opts.queueLimit) {
      queue.push(req);
    } else {
      reply(req, errorMsg(ErrorCode.OVERLOADED, `every server of privacy policy ${policy} is at its limit and ${context.opts.queueLimit} requests are waiting; try again later`));
      overloaded++;
    }
  }
  if (queue.length) context.waiting.set(policy, queue);
  if (noServer) context.logger.warn('no_server', `No live server serves privacy policy ${policy}; refused ${noServer} request(s)`, { policy, count: noServer, code: ErrorCode.NO_SERVER });
  if (overloaded) context.logger.warn('overloaded', `Privacy policy ${policy} is at its limits; refused ${overloaded} request(s) with OVERLOADED`, { policy, count: overloaded, code: ErrorCode.OVERLOADED });
}

/** Route the requests waiting for room in `policy` again (after a member got room or came back). */
export function drainWaiting(context: ProxyContext, policy: string, enqueue: Enqueue, now = false): void {
  const q = context.waiting.get(policy);
  if (!q || q.length === 0) return;
  const pool = context.pools.get(policy);
  if (!pool) return;
  if (!now) {
    enqueue.sendTo(context.self!, { type: 'DRAIN_WAITING', policy });
    return;
  }
  const reqs = q.splice(0);
  enqueue.sendTo(pool, { type: 'ROUTE', requests: reqs });
}

/** Every request gets exactly one answer through here; the proxy makes it once, as `context.reply`. */
export function makeReply(context: ProxyContext): Reply {
  const limit = context.opts.maxClientInflight;
  const observer = context.observer?.answered ? context.observer : undefined;
  const clock = context.clock;
  return (req: ProxyRequest, answer: AckMsg | ErrorMsg, member?: string): void => {
    const client = req.client;
    observer?.answered!(req.msg.privPoliId, member, answer.type === MsgType.ACK ? 'ok' : answer.code, clock.now() - req.arrived);
    client.outstanding--;
    if (client.throttled && client.outstanding <= limit >> 1) {
      client.throttled = false;
      client.resume();
    }
    // A request that freed room at a busy server lets waiting requests of its policy go.
    if (member !== undefined) {
      const q = context.waiting.get(req.msg.privPoliId);
      if (q && q.length && !pendingDrains.has(q)) {
        pendingDrains.add(q);
        const self = context.self;
        queueMicrotask(() => {
          pendingDrains.delete(q);
          self?.send({ type: 'DRAIN_WAITING', policy: req.msg.privPoliId });
        });
      }
    }
    if (client.closed) return;
    client.send(answer, req.msg.seq);
  };
}

const pendingDrains = new WeakSet<ProxyRequest[]>();
