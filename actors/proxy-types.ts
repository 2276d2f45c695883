/**
 * The proxy's vocabulary: its members, policies, context and events. The
 * machine (proxy.ts), its rules (routing.ts) and its socket and timer actors
 * (proxy-io.ts) all import it; it imports none of them.
 */
import type { ActorRef, AnyActorRef, Snapshot } from 'xstate';
import type { BufferBudget } from '../transport/budget.js';
import type { BusyPoll } from '../transport/busy-poll.js';
import type { ProtocolError } from '../transport/errors.js';
import type { DataMsg, SetupMsg } from '../transport/messages.js';
import type { Wire } from '../transport/sniff.js';
import type { TlsMaterial, UpstreamTlsMaterial } from '../transport/tls.js';
import type { Clock, Timer } from '../transport/clock.js';
import type { Inflight, InflightCount } from './inflight.js';
import type { FairQueue } from './fair-queue.js';
import type { Failure, LinkCommand, LinkPort, LinkReport, Peer, ProxyRequest, Reply, SocketFactory } from './link.js';
import type { Logger } from './logger.js';
import type { PoolEvent } from './pool.js';
import type { Pacer } from './pacer.js';
import type { RetryBudget } from './retry-budget.js';
import type { LinkSockets } from './port-limits.js';
import type { PortClosed } from './port-closed.js';
import type { Opts, ProxyObserver } from './proxy-options.js';
import type { RegistryEvent, RegistryStatus } from '../registry/events.js';

/** What `startProxy` gives the proxy machine beside the options: where the upstream TLS it dials with now is read (renewTls replaces it). */
export interface ProxyMachineInput {
  upstreamTlsNow?: () => UpstreamTlsMaterial | undefined;
}

/** Every state a pool member can be in: `revproxy_pool_members` reads each of them, 0 when no member is in it. */
export const MEMBER_STATES = ['connecting', 'serving', 'down', 'refused', 'ejected', 'drained'] as const;
export type MemberState = (typeof MEMBER_STATES)[number];
/** Where a member came from: a registration connection, the registry, or the registry with its key gone and its link answering (registry-members.ts). */
export type MemberSource = 'direct' | 'registry' | 'unlisted';

export type LinkRef = ActorRef<Snapshot<unknown>, LinkCommand>;
export type PoolRef = ActorRef<Snapshot<unknown>, PoolEvent>;

/**
 * A registered server. Owned by the proxy machine; only its actions change
 * it. Whether it can take traffic is not stored here: its link knows whether
 * it is connected (`traffic.phase`), and the proxy knows whether it ejected
 * it or an operator drained it; `state` reads them all.
 */
export class Member {
  /** The link now serving this member (a new one after each probe). */
  link!: LinkRef;
  /** That link's traffic side: its phase, its table of unanswered requests, and the hot path in. */
  traffic!: LinkPort;
  /** Taken out of rotation by the proxy for consecutive failures, until a timer puts it back. */
  ejected = false;
  /**
   * What its last ejection was for, as the eject line says it: the failures in a row then and the code of the last.
   * Not `lastFailure.inARow`, which goes on counting the failures after it (a card said 32 where the log said 10).
   */
  ejectedFor?: { failures: number; code: string };
  /** Its ejections in a row: less one for each eject time it served since the last ended (health.ts, `eject`). */
  ejections = 0;
  /**
   * When its last ejection ends, or ended (clock ms). A link that goes down while its member is ejected
   * is probed, and a probe only dials and PINGs: a member that passes it sits out the rest.
   */
  ejectedUntil?: number;
  /** Taken out of rotation by an operator (MEMBER_DRAIN) until MEMBER_ENABLE: no new requests, what it has finishes, it stays registered. */
  drained = false;
  /**
   * Its link went down because the proxy refused it by its own upstream_tls (`Failure.byProxy`: closed at a renewal,
   * or its certificate refused at the handshake), until a link to it answers again: `refused`, not `down`, as it is
   * reachable (health.ts `linkDown`).
   */
  refused = false;
  /** `ProxyContext.upstreamTlsRenewals` when its current link was started: a refusal under settings renewed since is no verdict on them (health.ts `linkDown`). */
  linkRenewals = 0;
  probeDelay: number;
  /** Set while the member is down or being probed: when it went down. */
  downSince?: number;
  /** Registered without a token (counted against the limits on such registrations). */
  open = false;
  /** The upstream link's read count at the last liveness round. */
  seenReads = -1;
  /** The probe or re-admission due next. */
  timer?: Timer;
  /** When `timer` fires (clock ms). */
  timerDue?: number;
  /** The last try that failed on it (clock ms; `inARow` as its link counted): why it was ejected or went down. */
  lastFailure?: Failure & { at: number; inARow: number };
  /** When its link last closed for a message not valid there (clock ms): another soon after ejects it (health.ts, `linkDown`). */
  invalidAt?: number;
  /** The last check of its link (connecting, or a probe), passed or failed (clock ms). */
  lastCheck?: { at: number; ok: boolean; message: string };
  /** The secret it registered with: checked again when a reload changes the secrets. */
  token?: string;
  /** Where it came from: a registration connection (`direct`, or an old server's setup) or an entry in the registry (etcd). */
  source: 'direct' | 'registry' = 'direct';
  /** A registry entry's proof (registry/proof.ts): checked again when a reload changes the secrets. */
  proof?: string;
  /** A registry member whose key went with its lease expired (why): kept while its link answers, removed when it fails (registry-members.ts). */
  unlisted?: string;

  constructor(
    readonly id: string,
    readonly policy: string,
    readonly host: string,
    readonly port: number,
    /** `json`: an old server, reached one request per connection (upstream-json.ts); it leaves when its link goes down. */
    readonly wire: Wire,
    /** The connection the server registered on; its closing is the server leaving. None for an old server. */
    readonly registration: Peer | undefined,
    probeDelay: number,
  ) {
    this.probeDelay = probeDelay;
  }

  /** Where it came from, as /metrics, the inspector and pools() show it: `unlisted`, a registry member kept with its key gone. */
  get shownSource(): MemberSource {
    return this.unlisted ? 'unlisted' : this.source;
  }

  get state(): MemberState {
    if (this.drained) return 'drained';
    if (this.ejected) return 'ejected';
    const phase = this.traffic.phase;
    // A refused member being probed is still refused until its link answers (`linkUp` clears it): a scrape during the
    // probe would otherwise see it gone from `refused` for a moment.
    return phase === 'open' ? 'serving' : this.refused ? 'refused' : phase === 'connecting' ? 'connecting' : 'down';
  }
}

/** A member's ejection kept past its leaving: where it served, and its ejection's end and count (Member's `ejectedUntil`, `ejections`). */
export interface KeptEjection {
  policy: string;
  host: string;
  port: number;
  until: number;
  ejections: number;
}

/** Everything the proxy keeps for one privacy policy: its pool (the rotation), its members, and requests waiting for room. */
export interface Policy {
  name: string;
  pool: PoolRef;
  /** Registered members of this policy, whatever their state (the pool holds their rotation order). */
  members: Set<Member>;
  /** Requests waiting for a member with room (bounded by queueLimit): each client's in arrival order, oldest first, clients in turn (fair-queue.ts). */
  waiting: FairQueue<Peer, ProxyRequest>;
  /** When `waiting` last went from empty to not (clock ms): how long its queue has stood (`queueLifoAfterMs`). */
  waitingSince?: number;
  /** While a drain routes waiting requests: those no member took, put back in their lanes once it is done (`drainWaiting`). */
  returned?: ProxyRequest[];
  /** A `DRAIN_WAITING` is scheduled for this microtask's end (`drainSoon`, its one owner). */
  drainDue?: boolean;
  /** Its requests and retries over the last 10 s, which bound its retries (`retry`). */
  retryBudget: RetryBudget;
}

export interface ProxyContext {
  opts: Opts;
  observer?: ProxyObserver;
  logger: Logger;
  clock: Clock;
  /** Dials servers (`linkSockets.connect`), counting the sockets the links hold open, which the listening port's limit leaves room for. */
  linkSockets: LinkSockets;
  /**
   * Whether the proxy dials its servers over TLS (it was started with `upstreamTls`; a renewal never turns it on or
   * off): a server whose setup says otherwise (`SetupMsg.tls`) is refused, its link would fail at every dial.
   */
  dialsTls: boolean;
  /** What the proxy dials its servers with now (the start's `upstreamTls`, or the last renewal's: `startProxy`'s `running` owns it). */
  upstreamTls: () => UpstreamTlsMaterial | undefined;
  port: number;
  /** The address the listener bound: what `host` resolved to when it is a name (`localhost`: its first address only). */
  listenAddress?: string;
  policies: Map<string, Policy>;
  servers: Map<string, Member>;
  /** Servers registered without a token, in total and per address (bounded by maxServers, maxServersPerPeer). */
  openRegistrations: { total: number; byHost: Map<string, number> };
  /** Requests accepted and not yet answered (every request is counted once, and answered once). */
  inflight: InflightCount;
  /** Link tables with requests in flight: the sweeper looks for expired tries here. */
  busy: Set<Inflight<ProxyRequest>>;
  /** Links spawned so far: numbers each new link's id. */
  linkSeq: number;
  /** Renewals of upstream_tls so far (health.ts `probeRefused` counts them): a member's link says under which it dialled (`Member.linkRenewals`). */
  upstreamTlsRenewals: number;
  error?: string;
  /** The proxy actor itself: the parent of its links and pools, and the target of its timers. */
  self: AnyActorRef;
  /** Probes of members that are down, started at a bounded rate (probesPerSecond). */
  probes: Pacer<string>;
  /** The one path every request's answer takes (made once, from this context). */
  reply: Reply;
  /** Keeps the event loop polling after traffic, when `busyPollUs` is set. */
  busyPoll?: BusyPoll;
  /** Bytes held for all peers together (maxBufferedBytes), shared by every connection. */
  budget: BufferBudget;
  /** The registry (etcd), when the proxy has one: as its actor last reported it. */
  registry?: RegistryStatus;
  /** Ids of registry entries refused for the open limits (registry-members.ts): one is offered again each time a member frees room. */
  overLimit: Set<string>;
  /** Ids of registry entries passed over for how their port serves (registry-members.ts), with what was said: said once, again only when the entry changes. */
  tlsMisfits: Map<string, string>;
  /**
   * The ejections of members that left while they counted (membership.ts `keepEjection`), by id, oldest first, at most
   * KEPT_EJECTIONS: the same server registering again takes them up (a server stalled past its PINGs left while ejected,
   * and came back in full rotation a second later, its ejection and its count gone).
   */
  keptEjections: Map<string, KeptEjection>;
  /** The port's connections as the proxy stops: closed by the listener, each client told; a stop waits for them. */
  portClosed: PortClosed;
}

/** The requests one read of one client connection brought. */
export interface ForwardBatch {
  peer: Peer;
  requests: DataMsg[];
}

export type ProxyEvent =
  | { type: 'LISTENING'; port: number; address?: string }
  | { type: 'LISTEN_FAILED'; error: string }
  | { type: 'REGISTER'; peer: Peer; setup: SetupMsg }
  | { type: 'FORWARD'; batches: ForwardBatch[] }
  | { type: 'DEREGISTER'; peer: Peer; reason: string }
  | { type: 'MISSED_PINGS'; peer: Peer; misses: number }
  | { type: 'BAD_INPUT'; peer: Peer; error: ProtocolError }
  /** `halfClosed`: the peer ended its side and may still read (its answers, then our end). */
  | { type: 'CONN_CLOSED'; peer: Peer; error?: string; halfClosed?: boolean }
  | LinkReport
  /** From the registry actor (registry/proxy-registry.ts), when the proxy has a registry. */
  | RegistryEvent
  | { type: 'PROBE'; member: string }
  | { type: 'READMIT'; member: string }
  /** An operator takes a member out of rotation (`by`: who asked, for the log), or puts it back. */
  | { type: 'MEMBER_DRAIN'; member: string; by: string }
  | { type: 'MEMBER_ENABLE'; member: string; by: string }
  | { type: 'DRAIN_WAITING'; policy: string }
  | { type: 'EXPIRE_WAITING'; now: number }
  | { type: 'DRAINED' }
  /** A member left an id, or room under the open limits, a registry entry was passed over for (to the registry actor). */
  | { type: 'RELEASED'; id: string }
  /** New options (SIGHUP): limits, timeouts, retries, health settings and secrets change at once. */
  | { type: 'RELOAD'; opts: Opts }
  /** Renewed listener certificates (ProxyHandle.renewTls): the next handshakes use them. */
  /** `closed`, when given, is told how many connections the listener closed whose peers' certificates the renewed CRLs revoke. */
  | { type: 'RENEW_TLS'; tls: TlsMaterial; closed?: { connections: number } }
  /** upstream_tls was renewed (ProxyHandle.renewTls): the members it refused are probed now (health.ts `probeRefused`). */
  | { type: 'UPSTREAM_TLS_RENEWED' }
  | { type: 'STOP' };
