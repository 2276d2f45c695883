/**
 * A server's registration through the registry: the `registrations` actor
 * of the server machine (actors/server.ts), in place of one registration
 * connection per proxy. It writes `<prefix>servers/<id>` (policy, address,
 * port, wire, whether its port serves TLS, and the proof made with the server's secret) on a lease it
 * keeps alive; every proxy watching the prefix admits it. When etcd is away
 * long enough for the lease to be lost, the key is written again once etcd
 * answers; the server keeps serving meanwhile. On drain (DEREGISTER_ALL) the
 * key is written once more saying it is leaving, then deleted - the proxies
 * stop sending - and the server finishes what it has (and, a grace later,
 * answers SHUTTING_DOWN to a proxy that did not hear etcd: actors/server.ts). A key held by another live server with the same id is left
 * alone; after the TTL and a margin the registration is refused
 * (DUPLICATE_ID), as a proxy would refuse it. A key deleted or overwritten under it while its
 * lease lives is written again (registry/kept-key.ts).
 */
import { fromCallback } from 'xstate';
import { ErrorCode } from '../transport/errors.js';
import type { RegistrationCommand, RegistrationInput, ServerEvent } from '../actors/server.js';
import { EtcdClient } from './etcd-client.js';
import { HELD_BACK, saysNoReason } from './etcd.js';
import { KeptKey } from './kept-key.js';
import { decodeServer, encodeServer, serverKey, type ServerEntry } from './keys.js';
import { describeRegistry, resolveRegistry, type RegistryOptions } from './options.js';
import { proofOf } from './proof.js';
import { hostPort } from '../transport/address.js';
import { SaidAgain } from '../actors/said-again.js';

export interface ServerRegistrationOptions extends RegistryOptions {
  /** The address proxies dial to reach this server. */
  advertise: string;
}

/** The actor logic (`registrations`), and its etcd client (`etcd`), for the server's handle to renew its TLS files. */
export async function serverRegistration(options: ServerRegistrationOptions) {
  const o = resolveRegistry(options);
  const etcd = await EtcdClient.open(o);
  const url = describeRegistry({ endpoints: o.endpoints, tls: o.tls });
  const logic = fromCallback<RegistrationCommand, RegistrationInput>(({ sendBack, receive, input }) => {
    const send = (e: ServerEvent): void => sendBack(e);
    const s = input.setup;
    const entry: ServerEntry = { id: s.id, policy: s.privPolyId, address: options.advertise, port: s.listenport, wire: 'frames' };
    // How its port serves, as its setup says it (docs/PROTOCOL.md): a proxy that dials otherwise passes the entry over, saying why.
    if (s.tls !== undefined) entry.tls = s.tls;
    if (s.token !== undefined) entry.proof = proofOf(s.token, entry);
    const key = serverKey(o.prefix, s.id);
    const label = `registry ${url} (${key})`;
    // The machine's clock (monotonic): a wall-clock step must neither cut the wait short (a server refused at boot when NTP stepped the clock) nor make it endless.
    const started = input.clock.now();
    const patience = o.ttlSeconds * 1000 + 2000;
    let refused = false;
    /** This run has held its key (a lapse since - this server frozen, or cut off from etcd, past its TTL - let another take the id). */
    let held = false;
    /**
     * The failure said last: while the same one goes on (etcd away, out of space), it is said again only every
     * REMIND_MS. Every try was a warn line (up to 2 s apart): 13 a server in a 30 s outage, all alike. A call the
     * breaker held back fails for the same reason as the one before it, and one with no reason of its own too.
     */
    const said = new SaidAgain(input.clock, (last, why) => last.replace(HELD_BACK, '') === why.replace(HELD_BACK, '') || saysNoReason(why));
    const kept = etcd.use((client) => new KeptKey(client, key, encodeServer(entry), o, {
      up: (again) => {
        held = true;
        said.clear();
        send({ type: 'REGISTERED', proxy: label, again });
      },
      down: (why, retryInMs) => {
        // A try that failed with no reason of its own is said by the reason already said.
        const last = said.last;
        if (last !== undefined && saysNoReason(why)) why = last;
        send({ type: 'REGISTRATION_LOST', proxy: label, retryInMs, ...said.say(why) });
      },
      // Every proxy reading etcd took this server out at the delete, and takes it back at the write (its link checked again).
      restored: (how) => input.logger.warn('registry_key_restored', `This server's registry key ${key} was ${how} while its lease was alive (an operator's etcdctl?); written again as this server writes it${how === 'deleted' ? ': every proxy reading the registry took this server out at the delete, and takes it back now' : ''}. To take a server out of the fleet, stop it (SIGTERM drains it)`, { proxy: label, key, how }),
      // A wrong user or password is a mistake to fix, not an outage to wait out: the server stops, as when a proxy refuses its token.
      refused: (why) => {
        refused = true;
        send({ type: 'REFUSED', proxy: label, code: ErrorCode.UNAUTHORIZED, message: why });
      },
      taken: (holder, retryInMs) => {
        const other = decodeServer(s.id, holder);
        const at = typeof other === 'string' ? undefined : hostPort(other.address, other.port);
        const who = at === undefined ? 'an entry this server did not write' : `a server at ${at}`;
        if (!held && input.clock.now() - started < patience) {
          // Perhaps our own previous run, whose lease has not ended yet.
          send({ type: 'REGISTRATION_LOST', proxy: label, error: `server id ${s.id} is held in the registry by ${who} whose lease lives: a server running, or one that stopped less than its TTL ago (this server's previous run?); waiting for the lease to end`, retryInMs });
          return;
        }
        refused = true;
        void kept.stop();
        const live = at === undefined ? who : `a live server at ${at}`;
        const message = held
          // Its lease ended while it could not renew it, and a server configured with the same id wrote the key meanwhile.
          ? `server id ${s.id} was taken by ${live} while this server's lease had lapsed (it could not renew it within its TTL: frozen, or cut off from etcd): two servers are configured with id ${s.id}; give one another id`
          : `server id ${s.id} is registered by ${live} (its key ${key} stayed alive for more than ${patience} ms); pick another id`;
        send({ type: 'REFUSED', proxy: label, code: ErrorCode.DUPLICATE_ID, message });
      },
    }, true));
    kept.start();
    let leaving: Promise<unknown> | undefined;
    receive((e) => {
      // RENEW_TLS is the listener's (the proxies dial this server); etcd's TLS is renewed through `etcd` (ServerHandle.renewRegistryTls).
      if (e.type !== 'DEREGISTER_ALL') return;
      // DEREGISTER_ALL: the key goes first, so the proxies stop sending; in-flight requests are still answered.
      // Written first with "leaving": a proxy removes it at once, where a key gone with its lease is kept while the server answers.
      if (!refused) {
        leaving = kept.stop(encodeServer({ ...entry, leaving: true })).then((told) => {
          if (told) send({ type: 'DEREGISTERED', proxy: label });
          else send({ type: 'DEREGISTER_FAILED', proxy: label, error: `etcd did not take the entry saying it is leaving (${kept.stopError ?? `no answer within ${2 * o.callTimeoutMs} ms`})` });
        });
      }
    });
    return () => {
      // Stopped without a drain (kill()): the key stays until its lease ends, as when a process dies.
      if (!leaving) kept.release();
      etcd.closeAfter(leaving);
    };
  });
  return { etcd, logic };
}
