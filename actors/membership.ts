/**
 * Who is registered: the secrets a registration must present and the bounds
 * on registrations that need none, admitting a server (its member record
 * and its upstream link), removing one (with the reason, and telling it when
 * the proxy decided), and a reload's new secrets. The proxy machine's
 * registration actions call these.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { AnyActorRef } from 'xstate';
import { ErrorCode } from '../transport/errors.js';
import { hostPort, isEveryAddress, isLoopback, isThisMachine } from '../transport/address.js';
import { errorMsg, MsgType, type SetupMsg } from '../transport/messages.js';
import { startChild } from './children.js';
import type { LinkInput, LinkPort, Peer } from './link.js';
import type { Opts } from './proxy-options.js';
import { Member, type ProxyContext } from './proxy-types.js';
import { drainWaiting, memberLost, policyOf } from './routing.js';
import { proofHolds, type Provable } from '../registry/proof.js';
import { upstreamJsonMachine } from './upstream-json.js';
import { upstreamMachine } from './upstream.js';
import { fmt } from './logger.js';
import { lazyTextFrom } from './memory-limit.js';

/**
 * Registration and departure lines written one by one in a summary interval (5 s), each kind: a
 * fleet's start (servers registering a few a second each) fits; a peer registering and leaving a
 * thousand times a second (1.1-1.4 MB of log a second before, the proxy's thread saturated) is
 * counted past it instead.
 */
export const LIFE_LINES = 100;

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** The secrets a policy's servers may register with (any one of them), or undefined when it needs none. */
function secretsFor(opts: Opts, policy: string): readonly string[] | undefined {
  const perPolicy = opts.tokens && Object.prototype.hasOwnProperty.call(opts.tokens, policy) ? opts.tokens[policy] : undefined;
  const given = perPolicy ?? opts.token;
  return given === undefined ? undefined : typeof given === 'string' ? [given] : given;
}

/** Why a setup's secret is not accepted, or undefined when it is (any of its policy's). Compared in constant time; never logged. */
export function checkSecret(opts: Opts, s: SetupMsg): string | undefined {
  const accepted = secretsFor(opts, s.privPolyId);
  if (accepted === undefined) {
    return opts.tokens ? `privacy policy ${s.privPolyId} has no secret in the proxy's per-policy tokens (--tokens, or tokens in its config)` : undefined;
  }
  if (s.token === undefined) return 'no token given; this proxy requires a registration token';
  const given = digest(s.token);
  // Every one compared, whichever matches.
  let ok = false;
  for (const secret of accepted) ok = timingSafeEqual(given, digest(secret)) || ok;
  return ok ? undefined : 'wrong token';
}

/**
 * Why a registry entry is not admitted, or undefined: its proof must be the
 * HMAC of its id, policy, address and port under the secret this proxy holds
 * for its policy (the secret itself never leaves the server). Constant time.
 */
export function checkProof(opts: Opts, e: Provable & { proof?: string }): string | undefined {
  const accepted = secretsFor(opts, e.policy);
  if (accepted === undefined) {
    return opts.tokens ? `privacy policy ${e.policy} has no secret in the proxy's per-policy tokens (--tokens, or tokens in its config)` : undefined;
  }
  if (e.proof === undefined) return 'its entry carries no proof; this proxy requires a registration secret (start the server with --token)';
  const proof = e.proof;
  return accepted.some((secret) => proofHolds(secret, e, proof)) ? undefined : 'its proof does not match: a wrong secret, an entry written or changed without it, or a server of another fleet under the same --registry-prefix';
}

/**
 * Why a registration that needs no token is refused for numbers, or
 * undefined: anyone who can connect may register then, so how many may is bounded.
 */
export function checkOpenLimits(context: ProxyContext, policy: string, host: string): string | undefined {
  if (secretsFor(context.opts, policy) !== undefined) return undefined;
  const { maxServers, maxServersPerPeer } = context.opts;
  const open = context.openRegistrations;
  if (maxServers && open.total >= maxServers) return `${maxServers} servers are registered without a token (--max-servers); set a registration token (--token) to register more`;
  if (maxServersPerPeer && (open.byHost.get(host) ?? 0) >= maxServersPerPeer) return `${maxServersPerPeer} servers from ${host} are registered without a token (--max-servers-per-peer)`;
  return undefined;
}

function countOpen(context: ProxyContext, entry: Member, by: 1 | -1): void {
  if (!entry.open) return;
  const open = context.openRegistrations;
  open.total += by;
  const n = (open.byHost.get(entry.host) ?? 0) + by;
  if (n > 0) open.byHost.set(entry.host, n);
  else open.byHost.delete(entry.host);
}

/** The server a registration connection registered, while it is the one registered under that id. */
export function registeredBy(context: ProxyContext, peer: Peer): Member | undefined {
  const entry = peer.serverId === undefined ? undefined : context.servers.get(peer.serverId);
  return entry && entry.registration === peer ? entry : undefined;
}

/** The member whose current link is `linkId` (reports from older links are stale). */
export function current(context: ProxyContext, member: string, linkId: string): Member | undefined {
  const entry = context.servers.get(member);
  return entry && entry.link.id === linkId ? entry : undefined;
}

/** Start a new link to `entry`'s server (at registration, and at each probe). */
export function spawnLink(context: ProxyContext, entry: Member): void {
  const linkSeq = ++context.linkSeq;
  entry.linkRenewals = context.upstreamTlsRenewals;
  const input: LinkInput & { old: Opts['oldServers'] } = {
    old: context.opts.oldServers,
    member: entry.id,
    policy: entry.policy,
    host: entry.host,
    port: entry.port,
    connect: context.linkSockets.connect,
    clock: context.clock,
    timeoutMs: context.opts.timeoutMs,
    tryTimeoutMs: context.opts.tryTimeoutMs,
    hedge: context.opts.hedgeOnTryTimeout,
    maxFrameBytes: context.opts.maxFrameBytes,
    lazyTextFrom: lazyTextFrom(context.opts.memoryLimit),
    busy: context.busy,
    reply: context.reply,
    logger: context.logger,
    busyPoll: context.busyPoll,
    budget: context.budget,
    registrationReads: entry.registration ? () => entry.registration!.conn.reads : undefined,
    checkIdentity: entry.source === 'registry',
  };
  const id = `upstream:${entry.id}#${linkSeq}`;
  // Their parent is the proxy's link hub (proxy-io.ts), which passes their reports on.
  const hub = (context.self.getSnapshot() as { children: Record<string, AnyActorRef> }).children.links!;
  const link = entry.wire === 'json' ? startChild(hub, upstreamJsonMachine, { id, input }) : startChild(hub, upstreamMachine, { id, input });
  entry.link = link;
  entry.traffic = (link.getSnapshot().context as { traffic: LinkPort }).traffic;
}

/**
 * A server is registered and its link dialed. A direct registration joins its
 * policy's rotation at once (the server just spoke to us); a registry entry
 * joins once its link answers (`joinPool`, from health.ts's linkUp), so an
 * entry whose address does not answer never holds requests back.
 */
export function addServer(context: ProxyContext, entry: Member): void {
  spawnLink(context, entry);
  context.servers.set(entry.id, entry);
  entry.open = secretsFor(context.opts, entry.policy) === undefined;
  countOpen(context, entry, 1);
  takeUpEjection(context, entry);
  if (entry.source !== 'registry') joinPool(context, entry);
}

/** Ejections kept for members that left (`keptEjections`): the oldest is forgotten past this many. */
const KEPT_EJECTIONS = 1024;

/** A member leaves while its ejections count (its last ended less than its count of eject times ago): kept for its return. */
function keepEjection(context: ProxyContext, entry: Member): void {
  const until = entry.ejectedUntil;
  if (until === undefined || entry.ejections === 0 || context.clock.now() - until >= entry.ejections * context.opts.ejectBaseMs) return;
  const kept = context.keptEjections;
  kept.delete(entry.id);
  kept.set(entry.id, { policy: entry.policy, host: entry.host, port: entry.port, until, ejections: entry.ejections });
  if (kept.size > KEPT_EJECTIONS) kept.delete(kept.keys().next().value!);
}

/**
 * The same server (id, policy, address and port) registering again takes up the ejection it left with: its count, so
 * the next is longer, and what is left of it - it stays out of rotation until then, as a probe that passes leaves an
 * ejected member (unless no other member of its policy serves: the last is never ejected). A server stalled past its
 * PINGs (or restarted) while ejected left, and its new registration was in full rotation a second later, every time,
 * its ejections never growing: the "30000 ms" of its eject line was false.
 */
function takeUpEjection(context: ProxyContext, entry: Member): void {
  const kept = context.keptEjections.get(entry.id);
  if (!kept) return;
  context.keptEjections.delete(entry.id);
  if (kept.policy !== entry.policy || kept.host !== entry.host || kept.port !== entry.port) return;
  entry.ejections = kept.ejections;
  entry.ejectedUntil = kept.until;
  const now = context.clock.now();
  if (kept.until <= now || !anotherServing(context, entry)) return;
  sitOutEjection(context, entry, now, 'registered again');
}

/**
 * `entry` sits out the rest of its ejection (`ejectedUntil`, later than `now`), and is READMITted then; said
 * once (`still_ejected`), with `why` it is back to be kept out: it answers a probe, or it registered again.
 */
export function sitOutEjection(context: ProxyContext, entry: Member, now: number, why: string): void {
  const until = entry.ejectedUntil!;
  entry.ejected = true;
  entry.timer?.cancel();
  entry.timer = context.clock.setTimeout(() => context.self.send({ type: 'READMIT', member: entry.id }), until - now);
  entry.timerDue = until;
  const left = Math.ceil(until - now);
  context.logger.info('still_ejected', `Server id ${entry.id} ${why}; it stays ejected from privacy policy ${entry.policy} for the ${left} ms left of its ejection`, {
    id: entry.id, policy: entry.policy, ejectedForMs: left,
  });
}

/** Whether a member of `entry`'s policy other than it is serving. */
export function anotherServing(context: ProxyContext, entry: Member): boolean {
  for (const m of context.policies.get(entry.policy)?.members ?? []) if (m !== entry && m.state === 'serving') return true;
  return false;
}

/** The member enters its policy's rotation (once). */
export function joinPool(context: ProxyContext, entry: Member): void {
  const policy = policyOf(context, entry.policy);
  if (policy.members.has(entry)) return;
  policy.members.add(entry);
  policy.pool.send({ type: 'JOIN', id: entry.id });
}

export function removeServer(context: ProxyContext, entry: Member, reason: string): void {
  if (context.servers.get(entry.id) !== entry) return;
  context.servers.delete(entry.id);
  countOpen(context, entry, -1);
  keepEjection(context, entry);
  entry.timer?.cancel();
  context.logger.settle(entry.id);
  context.logger.budgeted('info', 'deregister', '', LIFE_LINES, `Server id ${entry.id} left privacy policy ${entry.policy}: ${reason}`, {
    id: entry.id, policy: entry.policy, reason,
  }, (n, span) => `${fmt(n)} more server(s) left${span ? ` ${span}` : ''}, past ${LIFE_LINES} departure lines an interval: not logged one by one`);
  const policy = context.policies.get(entry.policy);
  if (policy) {
    policy.members.delete(entry);
    policy.pool.send({ type: 'LEAVE', id: entry.id, reason });
    memberLost(context, policy);
  }
  if (entry.link.getSnapshot().status === 'active') entry.link.send({ type: 'RETIRE' });
  if (!context.registry) return;
  // Registry entries passed over while this member held their id or the room it took (registry-members.ts) may join now:
  // an entry is read once, and its key does not change while its lease lives.
  if (entry.source === 'direct') context.self.send({ type: 'RELEASED', id: entry.id });
  const waiting = entry.open ? context.overLimit.values().next() : undefined;
  if (waiting && !waiting.done) {
    context.overLimit.delete(waiting.value);
    context.self.send({ type: 'RELEASED', id: waiting.value });
  }
}


/**
 * A reload: `opts` replace the running options, except what only a restart
 * changes (the listening address, busy polling) and TLS, whose one owner is
 * RENEW_TLS (`ProxyHandle.renewTls`, which the CLI's SIGHUP calls). Everything that reads
 * `context.opts` sees the new values at once; a member whose secret no
 * longer passes leaves its pool (it is told UNAUTHORIZED, its link finishes
 * what it has in flight); the others' links take the new timeouts; every waiting
 * request tries the new limits (queueLimit included).
 */
export function applyReload(context: ProxyContext, opts: Opts): void {
  const was = context.opts;
  context.opts = { ...opts, port: was.port, host: was.host, tls: was.tls, busyPollUs: was.busyPollUs };
  const { timeoutMs, tryTimeoutMs, hedgeOnTryTimeout: hedge } = context.opts;
  const revoked = new Map<string, number>();
  for (const entry of [...context.servers.values()]) {
    const denied = entry.source === 'registry'
      ? checkProof(context.opts, { id: entry.id, policy: entry.policy, address: entry.host, port: entry.port, proof: entry.proof })
      : checkSecret(context.opts, { type: MsgType.SETUP, id: entry.id, privPolyId: entry.policy, listenport: entry.port, token: entry.token });
    if (denied) {
      entry.registration?.conn.endWith(errorMsg(ErrorCode.UNAUTHORIZED, `registration revoked: ${denied}`));
      removeServer(context, entry, `its registration was revoked by a reload (${denied})`);
      revoked.set(entry.policy, (revoked.get(entry.policy) ?? 0) + 1);
    } else entry.link.send({ type: 'RETUNE', timeoutMs, tryTimeoutMs, hedge });
  }
  for (const [policy, n] of revoked) {
    if (context.policies.get(policy)?.members.size) continue;
    context.logger.warn('reload_emptied', `The reload's secrets revoked every server of privacy policy ${policy} (${n}): its requests are refused NO_SERVER until a server registers with a secret it accepts. To change a secret with no outage, accept the old and the new one (tokens: {"${policy}": [OLD, NEW]}), move the servers to the new one, then drop the old (README, "Changing a secret")`, { policy, revoked: n });
  }
  for (const name of [...context.policies.keys()]) drainWaiting(context, name, true);
}

/**
 * A setup message on a registration connection: the server joins its
 * policy's pool, or is refused with a code and why (wrong or missing secret,
 * an id held by a live server, too many registrations without a secret).
 */
export function admit(context: ProxyContext, peer: Peer, s: SetupMsg): void {
  const conn = peer.conn;
  const log = context.logger;
  const denied = checkSecret(context.opts, s);
  if (denied) {
    log.repeated('warn', 'unauthorized', `${conn.remoteAddress}\0${s.privPolyId}\0${s.id}\0${denied}`, 1, (n, span) => `Refused setup from ${span ? conn.remoteAddress : conn.describe()} for server id ${s.id} privacy policy ${s.privPolyId}: ${denied}${span ? ` (${n} times ${span})` : ''}`, {
      id: s.id, policy: s.privPolyId, peer: conn.describe(), code: ErrorCode.UNAUTHORIZED,
    });
    conn.endWith(errorMsg(ErrorCode.UNAUTHORIZED, `registration refused: ${denied}`));
    return;
  }
  // A server that says how its port serves, and not as this proxy dials: its link would fail at every dial, said only as
  // a connection closed by the server (a plain dial to TLS) or OpenSSL's words (a TLS dial to plain TCP).
  const mismatch = tlsMismatch(context.dialsTls, { id: s.id, port: s.listenport, tls: s.tls }, 'setup');
  if (mismatch) return void refuseSetup(context, peer, s, mismatch);
  const held = context.servers.get(s.id);
  const host = conn.remoteAddress;
  if (conn.wire === 'json') {
    // An old server's setup names only a port: the proxy dials the address it came from. One naming this
    // proxy's own client port from this machine had the proxy send its requests into itself, round and round.
    const loop = ownClientPort(context, host, s.listenport);
    if (loop) return void refuseSetup(context, peer, s, `${loop}: requests sent there would come back into this proxy. Give the server's own listen port (-listen)`);
  }
  // An old server that restarts sends its setup again, and cannot read a refusal: take the new one - from the
  // address the held one came from once its process has exited (a live one holds a connection of its link
  // open), or when the held one's link is down (it moved). Any peer took a live old server's id, and with it
  // every request of its policy; any peer on its host did until the held one's connections were asked.
  if (held && held.wire === 'json' && conn.wire === 'json') {
    const restart = held.host === host && !held.traffic.serverHolds;
    if (restart || held.downSince !== undefined) removeServer(context, held, restart ? 'it sent a new setup message' : `it sent a new setup message from ${host}, and its link to ${hostPort(held.host, held.port)} is down`);
    else if (held.host === host) return void refuseSetup(context, peer, s, `server id ${s.id} is held by a live old server at ${hostPort(held.host, held.port)}, which holds this proxy's connection open: a second server may not take a live server's id. A server that restarts is taken once its old process has exited; give each server an id of its own`, ErrorCode.DUPLICATE_ID);
    else return void refuseSetup(context, peer, s, `server id ${s.id} is held by a live old server at ${hostPort(held.host, held.port)}, and this setup came from another address: a peer may not take a live server's id. An old server that moved is taken once its old address stops answering (restart it then), or use ids each host keeps to itself`, ErrorCode.DUPLICATE_ID);
  } else if (held) {
    // A flood of them must not become a flood of lines: one, then one per interval with a count, per id (as for UNAUTHORIZED).
    log.repeated('warn', 'register_refused', `${conn.remoteAddress}\0${ErrorCode.DUPLICATE_ID}\0${s.id}`, 1, (n, span) => `Refused setup from ${span ? conn.remoteAddress : conn.describe()}: server id ${s.id} is already registered${span ? ` (${n} times ${span})` : ''}`, {
      id: s.id, peer: conn.describe(), code: ErrorCode.DUPLICATE_ID,
    });
    conn.endWith(errorMsg(ErrorCode.DUPLICATE_ID, `server id ${s.id} is already registered by a live server; pick another id`));
    return;
  }
  const limit = held ? undefined : checkOpenLimits(context, s.privPolyId, host);
  const tooMany = limit ?? context.linkSockets.noRoomForLink();
  if (tooMany) {
    // Counted by reason too (the limit's words; the descriptors' change with their counts), each with its own line.
    log.repeated('warn', 'register_refused', `${conn.remoteAddress}\0${ErrorCode.OVERLOADED}\0${limit ?? 'descriptors'}`, 1, (n, span) => span
      ? `Refused ${fmt(n)} setup(s) from ${conn.remoteAddress} ${span}: ${tooMany}`
      : `Refused setup from ${conn.describe()} for server id ${s.id}: ${tooMany}`, { id: s.id, policy: s.privPolyId, peer: conn.describe(), code: ErrorCode.OVERLOADED });
    conn.endWith(errorMsg(ErrorCode.OVERLOADED, `registration refused: ${tooMany}`));
    return;
  }
  log.budgeted('info', 'register', '', LIFE_LINES, `Received setup message from server id ${s.id} privacy policy ${s.privPolyId} port ${s.listenport}`, {
    id: s.id, policy: s.privPolyId, port: s.listenport, host: conn.remoteAddress, wire: conn.wire,
  }, (n, span) => `${fmt(n)} more registration(s)${span ? ` ${span}` : ''}, past ${LIFE_LINES} registration lines an interval: not logged one by one`);
  // The first PING on a registration connection tells the server it was accepted (an old server has closed it already),
  // and which name the proxy verifies in its certificate in place of its address, if it does (`PingMsg.serverName`).
  if (conn.wire !== 'json') {
    const serverName = context.dialsTls ? context.upstreamTls()?.serverName : undefined;
    conn.send(serverName === undefined ? { type: MsgType.PING, seq: 0 } : { type: MsgType.PING, seq: 0, serverName });
    peer.pongsOwed++;
  }
  // An old server's setup connection closes at once: it is not its presence.
  const registration = conn.wire === 'json' ? undefined : peer;
  if (registration) registration.serverId = s.id;
  const member = new Member(s.id, s.privPolyId, host, s.listenport, conn.wire, registration, context.opts.probeInitialMs);
  member.token = s.token;
  addServer(context, member);
}

/**
 * Why an old server's setup from `host` naming `port` names this proxy's own client port (undefined when it
 * does not): the port it listens on, at an address of it - the one it listens on, or any of this machine's
 * when it listens on every address.
 */
function ownClientPort(context: ProxyContext, host: string, port: number): string | undefined {
  if (port !== context.port) return undefined;
  const own = context.opts.host;
  const mine = isEveryAddress(own) ? isThisMachine(host) : own === host || (own === 'localhost' && isLoopback(host));
  return mine ? `its listen port ${port} at ${host} is this proxy's own client port` : undefined;
}

/**
 * Why a server's word on how its listen port serves (`tls`: its SETUP's, or its registry entry's) does not fit how this
 * proxy dials its servers (`dialsTls`), or undefined: it fits, or the server did not say (a server from before, the old
 * JSON wire, an entry an older server wrote). The one owner of these words, for both ways in.
 */
export function tlsMismatch(dialsTls: boolean, s: { id: string; port: number; tls?: boolean | undefined }, by: 'setup' | 'registry entry'): string | undefined {
  if (s.tls === undefined || s.tls === dialsTls) return undefined;
  return s.tls
    ? `server id ${s.id} serves TLS on port ${s.port} (its ${by} says tls) and this proxy dials its servers in plain TCP: give the proxy upstream_tls (--upstream-tls-ca, the CA that signed the servers' certificates; upstreamTls in the library), or start the server without --tls-cert`
    : `server id ${s.id} serves plain TCP on port ${s.port} (its ${by} says so) and this proxy dials its servers over TLS (its upstream_tls, or tls.ca without it): start the server with --tls-cert and --tls-key, a certificate that CA signed naming the address ${by === 'setup' ? 'it registers from' : 'its entry gives (its --advertise)'}`;
}

/** A setup refused: said once, then counted an interval per address and reason (a flood of them is a few lines); the server is told why (an old server cannot read it) and its connection closed. */
function refuseSetup(context: ProxyContext, peer: Peer, s: SetupMsg, why: string, code: ErrorCode = ErrorCode.BAD_REQUEST): void {
  const conn = peer.conn;
  context.logger.repeated('warn', 'register_refused', `${conn.remoteAddress}\0${code}\0${why}`, 1, (n, span) => span
    ? `Refused ${fmt(n)} setup(s) from ${conn.remoteAddress} ${span}: ${why}`
    : `Refused setup from ${conn.describe()} for server id ${s.id} privacy policy ${s.privPolyId}: ${why}`, {
    id: s.id, policy: s.privPolyId, port: s.listenport, peer: conn.describe(), code,
  });
  conn.endWith(errorMsg(code, `registration refused: ${why}`));
}

/** The proxy's own decision to remove a server that registered on `peer`: it is told why (REMOVED) and its registration closed, so it registers again as soon as it can. */
export function evict(context: ProxyContext, peer: Peer, reason: string): void {
  const entry = registeredBy(context, peer);
  if (!entry) return;
  removeServer(context, entry, reason);
  peer.conn.endWith(errorMsg(ErrorCode.REMOVED, `removed from privacy policy ${entry.policy}: ${reason}; register again`));
}
