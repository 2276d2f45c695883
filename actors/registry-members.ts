/**
 * What the proxy does with the registry's news (registry/proxy-registry.ts
 * watches etcd and sends it): a server entry that appears is admitted with
 * the same secrets as a direct registration (its proof, checkProof in
 * routing.ts), the same limits and the same check of how its port serves
 * (its `tls`, tlsMismatch in membership.ts), and becomes a member without a
 * registration connection - its presence is its key - that joins its pool
 * once its link answers; an entry that goes takes its member out. Plain
 * functions over the proxy's context, as routing.ts's are.
 */
import { fmt } from './logger.js';
import { ErrorCode } from '../transport/errors.js';
import type { RegistryEvent, RegistryStatus, ServerEntry } from '../registry/events.js';
import { Member, type ProxyContext } from './proxy-types.js';
import { addServer, checkOpenLimits, checkProof, removeServer, tlsMismatch } from './membership.js';
import { hostPort } from '../transport/address.js';

/** The proxy machine's one action for the registry's events. */
export function fromRegistry(context: ProxyContext, event: RegistryEvent): void {
  if (event.type === 'REGISTRY_JOIN') registryJoin(context, event.entry);
  else if (event.type === 'REGISTRY_LEAVE') registryLeave(context, event.id, event.reason, event.unlisted);
  else registryHealth(context, event.status);
}

/** A server entry appeared or changed in the registry. */
export function registryJoin(context: ProxyContext, e: ServerEntry): void {
  const log = context.logger;
  const held = context.servers.get(e.id);
  // Its port serves otherwise than this proxy dials (its entry says so): its link would fail at every dial, each said
  // only as a connection closed by the server (a plain dial to TLS) or a TLS dial to plain TCP.
  const misfit = tlsMismatch(context.dialsTls, e, 'registry entry');
  if (!misfit) context.tlsMisfits.delete(e.id);
  // A lease renewed or written again after an outage: nothing changed (a member kept unlisted is listed again).
  if (!misfit && held?.source === 'registry' && held.policy === e.policy && held.host === e.address && held.port === e.port && held.wire === e.wire && held.proof === e.proof) {
    if (held.unlisted) {
      held.unlisted = undefined;
      log.info('relisted', `Server id ${e.id} privacy policy ${e.policy} is in the registry again (${e.address}); an ordinary member again`, { id: e.id, policy: e.policy, source: 'registry' });
    }
    return;
  }
  const where = `privacy policy ${e.policy} at ${hostPort(e.address, e.port)}`;
  const denied = checkProof(context.opts, e);
  if (denied) {
    log.repeated('warn', 'unauthorized', `registry\0${e.id}\0${denied}`, 1, (n, span) => `Refused server id ${e.id} (${where}) from the registry: ${denied}${span ? ` (${n} times ${span})` : ''}`, {
      id: e.id, policy: e.policy, address: hostPort(e.address, e.port), code: ErrorCode.UNAUTHORIZED, source: 'registry',
    });
    if (held?.source === 'registry') removeServer(context, held, `its registry entry changed and is refused: ${denied}`);
    context.tlsMisfits.delete(e.id);
    return;
  }
  if (misfit) {
    if (held?.source === 'registry') removeServer(context, held, `its registry entry changed and is passed over: ${misfit}`);
    context.overLimit.delete(e.id);
    // One line per server, as a direct setup's refusal, and none again until its entry changes (a reload offers it again).
    const said = `${where}\0${misfit}`;
    if (context.tlsMisfits.get(e.id) === said) return;
    context.tlsMisfits.set(e.id, said);
    log.repeated('warn', 'register_refused', `registry\0${e.id}\0${misfit}`, 1, (n, span) => `Refused server id ${e.id} (${where}) from the registry: ${misfit}${span ? ` (${n} times ${span})` : ''}`, {
      id: e.id, policy: e.policy, address: hostPort(e.address, e.port), code: ErrorCode.BAD_REQUEST, source: 'registry',
    });
    return;
  }
  if (held && held.source !== 'registry') {
    log.warn('register_refused', `Ignored server id ${e.id} (${where}) from the registry: a server registered directly with this proxy holds that id`, {
      id: e.id, policy: e.policy, code: ErrorCode.DUPLICATE_ID, source: 'registry',
    });
    return;
  }
  if (held) removeServer(context, held, `its registry entry changed (now ${where})`);
  // Not refused for want of a descriptor, as a direct registration is: an entry is read once, and would stay out until it
  // changed. Its link, failing EMFILE, says so and is probed again until there is room.
  const tooMany = checkOpenLimits(context, e.policy, e.address);
  if (tooMany) {
    context.overLimit.add(e.id);
    // One line, then one per interval with a count, as for direct registrations over the limit (admit in membership.ts).
    log.repeated('warn', 'register_refused', `registry\0${e.address}\0${ErrorCode.OVERLOADED}\0${tooMany}`, 1, (n, span) => span
      ? `Refused ${fmt(n)} server entries at ${e.address} from the registry ${span}: ${tooMany}`
      : `Refused server id ${e.id} (${where}) from the registry: ${tooMany}`, {
      id: e.id, policy: e.policy, code: ErrorCode.OVERLOADED, source: 'registry',
    });
    return;
  }
  context.overLimit.delete(e.id);
  log.info('register', `Server id ${e.id} privacy policy ${e.policy} port ${e.port} is in the registry (${e.address}); it joins once its link answers`, {
    id: e.id, policy: e.policy, port: e.port, host: e.address, wire: e.wire, source: 'registry',
  });
  const member = new Member(e.id, e.policy, e.address, e.port, e.wire, undefined, context.opts.probeInitialMs);
  member.source = 'registry';
  member.proof = e.proof;
  addServer(context, member);
}

/**
 * A server entry went from the registry (or can no longer be read): its member leaves, finishing what
 * it has in flight. `unlisted`: its key went with its lease expired, as when the server's host lost
 * etcd while the proxy still reaches both - a control-plane fault must not take serving down (a
 * partition removed every server: 2,694 NO_SERVER of 5,733 requests in 12 s while each answered). Such a
 * member serving now stays while its link answers, and leaves when the link fails (health.ts), never
 * probed back; its key written again makes it an ordinary member.
 */
export function registryLeave(context: ProxyContext, id: string, reason: string, unlisted = false): void {
  context.overLimit.delete(id);
  context.tlsMisfits.delete(id);
  const held = context.servers.get(id);
  if (held?.source !== 'registry') return;
  if (!unlisted || held.state !== 'serving') return removeServer(context, held, held.lastCheck?.ok === false && (held.state === 'down' || held.state === 'refused') ? `${reason}; its link was down (${held.lastCheck.message})` : reason);
  if (held.unlisted) return;
  held.unlisted = reason;
  context.logger.warn('unlisted', `Server id ${id} of privacy policy ${held.policy} is gone from the registry (${reason}) but its link answers; kept in rotation until its link fails or its key is written again`, {
    id, policy: held.policy, reason, source: 'registry',
  });
}

export function registryHealth(context: ProxyContext, status: RegistryStatus): void {
  context.registry = status;
}
