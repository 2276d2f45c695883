/**
 * The health of members, as the proxy judges it: a link that comes up (a
 * member back from being down), a link that goes down (probed again with
 * backoff, through the proxy's probe pacer), a run of failures (ejection
 * for a while, never of the last healthy member), and re-admission; and an
 * operator's say: a member drained (out of rotation, finishing what it has)
 * and enabled again.
 */
import { hostPort } from '../transport/address.js';
import { ErrorCode } from '../transport/errors.js';
import { jittered } from '../transport/clock.js';
import type { Failure, ProxyRequest, TryFailure } from './link.js';
import { fmt } from './logger.js';
import { clearlyBetter, RECENT_WINDOW_MS } from './recent-outcomes.js';
import { anotherServing, current, joinPool, LIFE_LINES, removeServer, sitOutEjection, spawnLink } from './membership.js';
import type { Member, ProxyContext } from './proxy-types.js';
import { drainSoon, drainWaiting, endEjection, memberLost, retry, stalled } from './routing.js';

/** A member's link verified its server (at registration, or after a probe). */
export function linkUp(context: ProxyContext, member: string, linkId: string): void {
  const entry = current(context, member, linkId);
  if (!entry) return;
  const now = context.clock.now();
  if (entry.downSince !== undefined && entry.ejectedUntil !== undefined && entry.ejectedUntil > now) {
    // A probe dials a new connection and PINGs it: a server whose link was wedged answers that at once
    // (as one that stopped reading its link does), and readmitted here it took a window of requests per
    // probe, each held a try timeout, however many times it was ejected.
    sitOutEjection(context, entry, now, 'answers a probe');
  } else if (entry.downSince !== undefined) {
    context.logger.info('readmit', `Server id ${entry.id} answers again; back in rotation for privacy policy ${entry.policy}`, {
      id: entry.id, policy: entry.policy, reason: 'probe succeeded',
    });
    context.observer?.ejected?.(entry.policy, entry.id, 'probe_succeeded', true);
  } else {
    context.logger.debug('serving', `Server id ${entry.id} is reachable and serving privacy policy ${entry.policy}`, { id: entry.id, policy: entry.policy });
  }
  entry.downSince = undefined;
  entry.refused = false;
  entry.lastCheck = { at: now, ok: true, message: 'connected and answered a PING' };
  entry.probeDelay = context.opts.probeInitialMs;
  // A registry member enters its pool once its link first answers.
  if (entry.source === 'registry') joinPool(context, entry);
  drainWaiting(context, entry.policy);
}

/**
 * A member's link went down: an old server is gone (it announces itself
 * again when it restarts); any other is probed later, with backoff. Its
 * unfinished requests are retried elsewhere.
 */
export function linkDown(context: ProxyContext, member: string, linkId: string, failure: Failure, requests: ProxyRequest[], unsent: ProxyRequest[]): void {
  const entry = current(context, member, linkId);
  // A registry entry stays while its key does, and is probed like any other; one kept unlisted (its key gone) leaves.
  // An old server registered directly leaves when its port refuses (a restarted one sends its setup again);
  // one that stopped answering with its port open (stalled) is probed, as it sends no setup until it restarts.
  if (entry?.wire === 'json' && entry.source === 'direct' && !failure.stalled) {
    removeServer(context, entry, `it is gone from ${hostPort(entry.host, entry.port)}: ${failure.message}`);
  } else if (entry?.unlisted) {
    removeServer(context, entry, `its link failed (${failure.message}) while it was kept out of the registry (${entry.unlisted})`);
  } else if (entry) {
    const now = context.clock.now();
    // A probe failing as the last one did is no news: at debug (a server killed was 3 warn lines before its lease ended).
    const again = entry.downSince !== undefined && entry.lastCheck?.ok === false && entry.lastCheck.message === failure.message;
    entry.downSince ??= now;
    entry.lastCheck = { at: now, ok: false, message: failure.message };
    // A server that sent something not a valid message, or ended the link itself, is reachable: its author or its load is the cause, not the network.
    // So is one the proxy refused by its own upstream_tls (`byProxy`: the link closed at a renewal, its certificate refused at the handshake).
    const cause = failure.closed !== undefined ? 'ended_by_server' : failure.byProxy ? 'closed_by_proxy' : failure.invalid === undefined ? 'unreachable' : 'invalid_message';
    // Refused by policy, it is not down (`refused`), and no probe soon would find it otherwise: its certificate, or the
    // settings, must change first. Probed at the slowest pace (probe_max), as a server whose certificate was renewed is
    // then taken back, and at once at each renewal of upstream_tls (`probeRefused`). Probed at the backoff's start,
    // it was dialled, and refused at its handshake, 1, 2, 4, 8, 16 s after, as if it were flaky.
    entry.refused = cause === 'closed_by_proxy';
    // Refused at a handshake under settings a renewal has replaced since its link started (the probe under way as renewTls
    // ran): the renewal's probe passed it by, so it is probed at the backoff's pace, under the settings now, not left out
    // for probe_max. A link a renewal closed was refused by that renewal's settings.
    const slowest = entry.refused && (failure.byProxy === 'closed' || entry.linkRenewals === context.upstreamTlsRenewals);
    // Up to a fifth early, at random: servers that went down together are not probed together.
    const delay = jittered(slowest ? context.opts.probeMaxMs : entry.probeDelay);
    entry.probeDelay = Math.min(entry.probeDelay * 2, context.opts.probeMaxMs);
    const at = hostPort(entry.host, entry.port);
    // An invalid message again within an eject time of its return after the last (the probe that passed, or the end of
    // the ejection that followed): a probe shows only that the server answers a PING, and re-admitted by each (about once
    // a second) it took a request or two to fail on each time, for ever. It is ejected as an outlier is, longer each time
    // in a row - unless no other server of its policy serves (a probe then, as before).
    const lastInvalid = entry.invalidAt;
    if (cause === 'invalid_message') entry.invalidAt = now;
    const back = lastInvalid === undefined ? undefined : Math.max(lastInvalid, entry.ejectedUntil ?? lastInvalid);
    const relapse = cause === 'invalid_message' && back !== undefined && now - back < context.opts.ejectBaseMs && anotherServing(context, entry);
    const ejectedMs = relapse ? ejectionStarts(context, entry, now) : undefined;
    if (relapse) entry.ejectedFor = undefined;
    if (again) {
      context.logger.debug('still_down', `Server id ${entry.id} is still ${entry.refused ? 'refused by this proxy' : 'unreachable'} at ${at} (${failure.message}); next probe in ${delay} ms`, { id: entry.id, policy: entry.policy, reason: failure.message, cause, probeInMs: delay });
    } else {
      // Budgeted as registrations are: a peer registering in a loop with a port nobody listens on made one such line each (2,345 in 10 s).
      context.logger.budgeted('warn', 'down', '', LIFE_LINES, failure.closed !== undefined
        ? `Server id ${entry.id} at ${at} ended its upstream link with ERROR ${failure.closed.code}: ${failure.closed.reason}; the requests in flight on it are retried, and it is out of rotation, next probe in ${delay} ms`
        : entry.refused
        ? `Server id ${entry.id} at ${at} is refused by this proxy's upstream_tls (${failure.message}); out of rotation until its certificate, or upstream_tls, changes: next probe in ${delay} ms${slowest ? ' (probe_max)' : ''}, or at once at a reload of upstream_tls`
        : failure.invalid === undefined
        ? `Server id ${entry.id} is unreachable at ${at} (${failure.message}); out of rotation, next probe in ${delay} ms`
        : `Server id ${entry.id} at ${at} sent a message that is not valid on its upstream link (${failure.invalid}); it was answered BAD_REQUEST and the link closed. Fix the server to send what docs/PROTOCOL.md describes; ${ejectedMs === undefined
          ? `out of rotation, next probe in ${delay} ms`
          : `it did so ${Math.round((now - lastInvalid!) / 100) / 10} s ago too, and was let back in since: ejected for ${ejectedMs} ms (${entry.ejections} in a row)`}`, {
        id: entry.id, policy: entry.policy, code: failure.code, reason: failure.message, cause, probeInMs: delay, ...(ejectedMs === undefined ? {} : { ejectedForMs: ejectedMs, ejections: entry.ejections }),
      }, (n, span) => `${fmt(n)} more server(s) went out of rotation, unreachable, refused or ending their links${span ? ` ${span}` : ''}, past ${LIFE_LINES} such lines an interval: not logged one by one (revproxy_ejections_total counts them by reason)`);
    }
    context.observer?.ejected?.(entry.policy, entry.id, cause, false);
    // The probe takes over from an ejection's timer (cancelled here); a new link that answers
    // puts the member back once its ejection is over (`ejectedUntil`, linkUp).
    entry.ejected = false;
    entry.timer?.cancel();
    entry.timer = context.clock.setTimeout(() => context.probes.add(entry.id), delay);
    entry.timerDue = now + delay;
  }
  // First: the ejected members it leaves alone take requests again (`memberLost`), before its requests look for one.
  const policy = entry && context.policies.get(entry.policy);
  if (policy) memberLost(context, policy);
  retry(context, member, requests, failure, failure.cause ?? 'reset');
  // Never written to the server: whatever took it down, it was not these.
  retry(context, member, unsent, { code: failure.code, message: `server ${member} went down before the request was written to it: ${failure.message}` }, 'unsent');
}

/**
 * Tries failed on a member's link (an error answer, or no answer in time): retried elsewhere; a
 * run of failures long enough ejects the member. Each freed a slot of the member, as an answer
 * does: the policy's waiting requests may go (retries first: they are routed now, the drain after).
 */
export function triesFailed(context: ProxyContext, member: string, linkId: string, failure: TryFailure, failures: number, requests: ProxyRequest[]): void {
  const entry = current(context, member, linkId);
  if (entry) entry.lastFailure = { ...failure, at: context.clock.now(), inARow: failures };
  if (entry?.unlisted && entry.state === 'serving' && failures >= context.opts.ejectAfter) removeServer(context, entry, `${failures} consecutive failures while it was kept out of the registry (${entry.unlisted})`);
  else if (entry && entry.state === 'serving' && failures >= context.opts.ejectAfter) eject(context, entry, failures);
  retry(context, member, requests, failure, failure.cause);
  const policy = context.servers.get(member)?.policy;
  if (policy !== undefined) drainSoon(context, policy);
}

/**
 * A server answered SHUTTING_DOWN, or its link's PONG says it leaves (`why` says which, in the
 * log's words): it is draining and ran none of `requests` (none, for a PONG), which go to another
 * member as requests never sent do. It says so on its link at once when its registry entry could not (etcd
 * did not take its leaving), and a grace after it did (actors/server.ts LEAVING_GRACE_MS), for a proxy that
 * did not hear etcd: a registry member leaves now, as at an entry saying it is leaving; its link
 * finishes what the server has read, then closes, and the server's drain ends. A member registered
 * directly leaves at its DEREGISTER, which its registration connection carries: until then it is
 * drained, as by an operator (a server of another make answering SHUTTING_DOWN to every request is
 * sent none, where it was ejected after five).
 */
export function serverLeaving(context: ProxyContext, member: string, linkId: string, requests: ProxyRequest[], why: string): void {
  const entry = current(context, member, linkId);
  if (entry?.source === 'registry') removeServer(context, entry, `it is draining: ${why}; this proxy had read no registry entry saying so (etcd did not take it, or this proxy did not hear from etcd)`);
  else if (entry && !entry.drained) drainMember(context, member, `the server itself: ${why}`);
  retry(context, member, requests, { code: ErrorCode.UPSTREAM_FAILED, message: `server ${member} is draining and did not run it` }, 'unsent');
}

/**
 * upstream_tls was renewed (a reload, the library's `renewTls`): the members it refused before (`refused`) are probed
 * now, through the probe pacer, as the new settings or CRL may take them; each waited the slowest probe pace.
 */
export function probeRefused(context: ProxyContext): void {
  context.upstreamTlsRenewals++;
  for (const entry of context.servers.values()) {
    if (!entry.refused || entry.traffic.phase !== 'down') continue;
    entry.timer?.cancel();
    entry.timer = undefined;
    entry.timerDue = undefined;
    context.probes.add(entry.id);
  }
}

/** A probe is due (the pacer's turn came): a new link is dialed, unless the member came back or left meanwhile. */
export function probe(context: ProxyContext, member: string): void {
  const entry = context.servers.get(member);
  if (!entry || entry.traffic.phase !== 'down') return;
  context.logger.debug('probe', `Probing server id ${entry.id} at ${hostPort(entry.host, entry.port)}`, { id: entry.id });
  spawnLink(context, entry);
}

export function eject(context: ProxyContext, entry: Member, failures: number): void {
  const policy = context.policies.get(entry.policy);
  const now = context.clock.now();
  // An outlier is ejected; a server failing as the others of its policy do is not. Under overload every server
  // answers OVERLOADED or TIMEOUT to a share of its requests, the first to fail 5 in a row while the others were still
  // answering: ejecting it sent its load to them, which then failed more (2 servers at 1.5x their capacity:
  // 1,714-2,080 answered in 30 s, against 3,097-3,148 with no ejection). Another member does clearly better when it
  // fails far less lately and answers promptly (none of its requests waited past slow_after).
  const mine = entry.traffic.recent.failureRatio(now) ?? 1;
  let othersServing = false;
  let betterServing = false;
  for (const m of policy?.members ?? []) {
    if (m === entry || m.state !== 'serving') continue;
    othersServing = true;
    const theirs = m.traffic.recent.failureRatio(now);
    // One with requests in flight and no try ended lately is untried, not better: the servers of a policy all slower
    // than the try timeout time out in turn, and the first to have its run of them counted was ejected for it.
    if (theirs === undefined && m.traffic.inflight.size > 0) continue;
    if (clearlyBetter(theirs, mine) && !stalled(context, m)) betterServing = true;
  }
  const reason = `${failures} consecutive failures`;
  if (!othersServing) {
    // Said once, then once per interval with a count: a failing last member under load fails a read's worth of requests at a time.
    context.logger.repeated('warn', 'eject_skipped', `${entry.policy}\0${entry.id}`, 1, (n, span) => span
      ? `Server id ${entry.id} kept failing but is the last healthy server of privacy policy ${entry.policy}; kept in rotation (${fmt(n)} more time(s) ${span})`
      : `Server id ${entry.id} has ${reason} but is the last healthy server of privacy policy ${entry.policy}; kept in rotation`, {
      id: entry.id, policy: entry.policy, reason,
    });
    return;
  }
  if (!betterServing) {
    const pct = Math.round(mine * 100);
    context.logger.repeated('warn', 'eject_skipped', `${entry.policy}\0${entry.id}\0alike`, 1, (n, span) => span
      ? `Server id ${entry.id} kept failing as the other servers of privacy policy ${entry.policy} did; kept in rotation (${fmt(n)} more time(s) ${span})`
      : `Server id ${entry.id} has ${reason} but no other server of privacy policy ${entry.policy} does clearly better: they fail about as often (this one ${pct} % of its tries in the last ${RECENT_WINDOW_MS / 1000}-${(2 * RECENT_WINDOW_MS) / 1000} s), have requests unanswered for ${context.opts.slowAfterMs} ms (--slow-after) themselves, or have had no try end yet. The policy looks overloaded, or failing as a whole, and taking this server out would only send its load to the others; kept in rotation`, {
      id: entry.id, policy: entry.policy, reason, failureRatio: mine,
    });
    return;
  }
  entry.ejected = true;
  entry.ejectedFor = { failures, code: entry.lastFailure?.code ?? 'unknown' };
  const ms = ejectionStarts(context, entry, now);
  context.logger.warn('eject', `Ejected server id ${entry.id} from privacy policy ${entry.policy} for ${ms} ms after ${reason}`, {
    id: entry.id, policy: entry.policy, reason, ejectedForMs: ms, ejections: entry.ejections,
  });
  context.observer?.ejected?.(entry.policy, entry.id, 'consecutive_failures', false);
  const self = context.self;
  entry.timer?.cancel();
  entry.timer = context.clock.setTimeout(() => self.send({ type: 'READMIT', member: entry.id }), ms);
  entry.timerDue = now + ms;
}

/**
 * An ejection of `entry` starts `now`: how long it lasts (ms), its end kept in `ejectedUntil`. Each in a row lasts
 * longer, up to the most (Envoy's max_ejection_time); one is forgotten for each eject time the member served since
 * its last ejection ended. Counted for its whole life, a server with a hiccup an hour was out for 12 minutes at each
 * after a day, and for hours within a month.
 */
function ejectionStarts(context: ProxyContext, entry: Member, now: number): number {
  const base = context.opts.ejectBaseMs;
  if (entry.ejectedUntil !== undefined && now > entry.ejectedUntil) entry.ejections = Math.max(0, entry.ejections - Math.floor((now - entry.ejectedUntil) / base));
  entry.ejections++;
  const ms = Math.min(base * entry.ejections, Math.max(context.opts.ejectMaxMs, base));
  entry.ejectedUntil = now + ms;
  return ms;
}

/** An ejection is over: the member takes requests again, with its failure count reset. */
export function readmit(context: ProxyContext, member: string): void {
  const entry = context.servers.get(member);
  if (!entry || !entry.ejected) return;
  endEjection(context, entry, 'ejection time over', false);
}

/** An operator takes a member out of rotation (`by`: who asked): no new requests; what it has finishes; it stays registered. */
export function drainMember(context: ProxyContext, member: string, by: string): void {
  const entry = context.servers.get(member);
  if (!entry) return unknownMember(context, 'drain', member, by);
  const already = entry.drained;
  entry.drained = true;
  const othersServing = anotherServing(context, entry);
  const inflight = entry.traffic.inflight.size;
  context.logger.info('member_drain', already
    ? `Server id ${entry.id} of privacy policy ${entry.policy} is already drained (asked again by ${by})`
    : `Drained server id ${entry.id} of privacy policy ${entry.policy} (asked by ${by}): it takes no new requests, finishes the ${inflight} it has, and stays registered${othersServing ? '' : `; no other server of privacy policy ${entry.policy} is serving, so its requests are refused NO_SERVER until one is, those waiting too`}`, {
    id: entry.id, policy: entry.policy, by, inflight,
  });
  const policy = context.policies.get(entry.policy);
  if (policy) memberLost(context, policy);
}

/** An operator puts a drained member back (`by`: who asked); it takes requests as soon as it is serving. */
export function enableMember(context: ProxyContext, member: string, by: string): void {
  const entry = context.servers.get(member);
  if (!entry) return unknownMember(context, 'enable', member, by);
  const was = entry.drained;
  entry.drained = false;
  const state = entry.state;
  context.logger.info('member_enable', !was
    ? `Server id ${entry.id} of privacy policy ${entry.policy} was not drained (enable asked by ${by}); it is ${state}`
    : `Enabled server id ${entry.id} of privacy policy ${entry.policy} (asked by ${by}): ${state === 'serving' ? 'back in rotation' : `back in rotation once it is serving (it is ${state})`}`, {
    id: entry.id, policy: entry.policy, by, state,
  });
  drainWaiting(context, entry.policy);
}

function unknownMember(context: ProxyContext, what: string, member: string, by: string): void {
  context.logger.warn('member_unknown', `Cannot ${what} server id ${member} (asked by ${by}): no server of that id is registered`, { id: member, by });
}
