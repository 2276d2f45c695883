/**
 * The proxy's callback actors, the parts that touch sockets and timers: the
 * listener (accepted connections -> REGISTER / FORWARD / DEREGISTER events),
 * the sweeper (requests past their deadline), the pinger (registration
 * liveness) and the drain watch. The proxy machine invokes them.
 */
import type { AddressInfo, Server, Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import { fromCallback } from 'xstate';
import type { BufferBudget } from '../transport/budget.js';
import type { BusyPoll } from '../transport/busy-poll.js';
import { ErrorCode, ProtocolError } from '../transport/errors.js';
import { errorMsg, MsgType, type DataMsg, type Message } from '../transport/messages.js';
import { encodeJson, startsJson } from '../transport/json.js';
import { peerAddress } from '../transport/address.js';
import { Connection, ConnectionTimeout, READ_SLICE, sendTogether, type MessageSink } from '../transport/socket.js';
import { lifecycle } from '../transport/lane.js';
import { listenOn, listenServer, renewTls, TLS_HANDSHAKE_TIMEOUT_MS, type TlsMaterial } from '../transport/tls.js';
import { TlsHandshakes } from './tls-handshakes.js';
import { encodeFrame, FORWARD_ROOM } from '../transport/frame.js';
import { STALL_MS, type Clock } from '../transport/clock.js';
import type { Inflight, InflightCount } from './inflight.js';
import { newPeer, type Peer, type ProxyRequest } from './link.js';
import { backFromTry, requestBytes, waitingDue } from './routing.js';
import { fmt, type Logger } from './logger.js';
import { closeRevoked, ConnectionLimits, logAcceptErrors, type LinkSockets, logNoProxyHeader, logTlsRefusals, trustedSources, trusts } from './port-limits.js';
import { awaitProxyHeader, handOverToTls, proxiedClient } from '../transport/proxied.js';
import type { Opts, ProxyObserver } from './proxy-options.js';
import type { PortClosed } from './port-closed.js';
export { PortClosed } from './port-closed.js';
import type { ForwardBatch, Member, Policy, ProxyEvent } from './proxy-types.js';
import type { RegistryCommand } from '../registry/events.js';
import type { ProxyRegistryInput } from '../registry/proxy-registry.js';

/** Owns the listening socket; turns each accepted connection's reads into proxy events. */
export interface ListenerInput {
  host: string;
  port: number;
  maxFrameBytes: number;
  /** Clients' text payloads of this many bytes or more are made into strings only when read (memory-limit.ts `lazyTextFrom` of the memory limit). */
  lazyTextFrom: number;
  maxConnections: number;
  maxConnectionsSet: boolean;
  maxConnectionsPerPeer: number;
  /** New connections one address may open a second (0: no limit), checked before a TLS handshake. */
  maxConnRatePerPeer: number;
  /** TLS handshakes under way at once (0: no limit; tls-handshakes.ts). */
  maxTlsHandshakes: number;
  idleTimeoutMs: number;
  frameTimeoutMs: number;
  /** The balancers whose connections begin with a PROXY protocol header (addresses and networks). */
  proxyProtocolFrom: string[];
  tls?: TlsMaterial;
  logger: Logger;
  clock: Clock;
  observer?: ProxyObserver;
  budget: BufferBudget;
  /** Kicked by every client read; stopped with the listener. */
  busyPoll?: BusyPoll;
  /** The links to servers, whose descriptors the port's limit leaves room for. */
  linkSockets?: LinkSockets;
  /** The port's connections as the proxy stops (the listener closes them, each with its last word). */
  portClosed?: PortClosed;
}

/** What every accepted connection's reads share: the listener's input, its events, and the FORWARD being gathered. */
interface ListenerCore {
  input: ListenerInput;
  sendBack: (event: ProxyEvent) => void;
  conns: Set<Connection>;
  limits: ConnectionLimits;
  /** Hand this connection's requests to the FORWARD of this turn. */
  forwardLater(peer: Peer, requests: DataMsg[]): void;
  /** Send the FORWARD gathered so far now (anything else a connection says comes after its requests). */
  forwardNow(): void;
  /** Whether a FORWARD is being gathered. */
  gathering(): boolean;
}

/**
 * One accepted connection's reads, turned into proxy events. An object per
 * connection with its methods on the prototype: a proxy holding 10,000
 * connections keeps no closures or RxJS subscriber chain per connection.
 */
class AcceptedReads implements MessageSink {
  constructor(
    private readonly core: ListenerCore,
    private readonly conn: Connection,
    private readonly peer: Peer,
    private readonly addr: string,
    /** The largest frame this connection's reads take (max_frame as it was accepted: a reload changes it for new connections), stated in its PONGs. */
    private readonly maxFrame: number,
  ) {}

  messages(messages: Message[]): void {
    const { core, conn, peer } = this;
    if (conn.closed) return core.input.portClosed?.read(peer, messages);
    core.input.busyPoll?.kick();
    let data: DataMsg[] | undefined;
    for (const m of messages) {
      if (conn.closed) return;
      if (m.type === MsgType.DATA && peer.role !== 'registration') {
        peer.role = 'client';
        (data ??= []).push(m);
        continue;
      }
      // A PONG answering a PING of ours (a late one too): liveness bookkeeping only, no event. One beyond them is bad input (below).
      if (m.type === MsgType.PONG && peer.role === 'registration' && m.seq === 0 && peer.pongsOwed > 0) {
        peer.pongsOwed--;
        peer.missedPings = 0;
        continue;
      }
      if (m.type === MsgType.PING && peer.role !== 'registration') {
        // A client asking whether we are alive (a silent cut is found by its PONG not coming): answered here, never routed,
        // with the bytes its requests may hold before we stop reading it, and the largest frame we take from it (the
        // library's client keeps under both: a request over the frame would cost the connection, every request on it).
        const share = core.input.budget.requestsPerPeer;
        const maxFrame = this.maxFrame;
        conn.send(share === Infinity ? { type: MsgType.PONG, seq: m.seq, maxFrame } : { type: MsgType.PONG, seq: m.seq, share: Math.floor(share), maxFrame });
        continue;
      }
      if (data) core.forwardLater(peer, data);
      data = undefined;
      // Anything else this connection says comes after the requests it sent before.
      if (core.gathering()) core.forwardNow();
      if (m.type === MsgType.SETUP && peer.role === 'unknown') {
        peer.role = 'registration';
        // A registration's reads are never held for its writes: holding them could deadlock two full buffers.
        conn.holdReadsWhenCongested = false;
        // Its liveness is the pinger's to judge (a busy server's link answers for it): no idle timeout.
        conn.setIdleTimeout(0);
        registrationEvent(core, peer, { type: 'REGISTER', peer, setup: m });
      } else if (m.type === MsgType.DEREGISTER && peer.role === 'registration') {
        registrationEvent(core, peer, { type: 'DEREGISTER', peer, reason: 'the server is draining' });
      } else {
        const what = peer.role === 'unknown' ? 'as a first message' : `on a ${peer.role} connection`;
        registrationEvent(core, peer, {
          type: 'BAD_INPUT',
          peer,
          error: new ProtocolError(ErrorCode.BAD_REQUEST, m.type === MsgType.PONG && peer.role === 'registration'
            ? `a PONG (seq ${m.seq}) that answers no PING of the proxy's (it PINGs with seq 0, and every PING it sent was answered already): a server sends one PONG per PING, with its seq`
            : `message type ${m.type} is not allowed ${what}`),
        });
        return;
      }
    }
    if (data) core.forwardLater(peer, data);
  }

  failed(err: Error): void {
    const { core, conn, peer } = this;
    core.conns.delete(conn);
    if (err instanceof ProtocolError) {
      // The requests it sent before the bad bytes go first: they are answered before the error closes it.
      if (core.gathering()) core.forwardNow();
      return core.sendBack({ type: 'BAD_INPUT', peer, error: err });
    }
    if (err instanceof ConnectionTimeout) {
      core.input.logger.repeated('info', 'conn_timeout', `${peer.role}\0${err.message}`, 1, (n, span) => n === 1 && !span ? `Closed connection from ${conn.describe()}: ${err.message}` : `Closed ${fmt(n)} ${peer.role} connection(s)${span ? ` ${span}` : ''}: ${err.message}`, { role: peer.role });
    }
    core.sendBack({ type: 'CONN_CLOSED', peer, error: err.message });
  }

  /** The peer ended its side: what it sent before goes first, and it gets its answers before our end (the listener allows half-open sockets). */
  ended(): void {
    const core = this.core;
    core.conns.delete(this.conn);
    if (core.gathering()) core.forwardNow();
    core.sendBack({ type: 'CONN_CLOSED', peer: this.peer, halfClosed: true });
  }

  /** The peer's connection no longer counts against its limit. */
  closed(): void {
    this.core.limits.left(this.addr);
    this.core.input.portClosed?.gone(this.conn);
  }
}

/**
 * A registration goes to the proxy through the lifecycle lane, as connections' ends do: a storm of
 * thousands of servers registering at once (a host's fleet restarted) is taken a few dozen a turn,
 * each costing a member, a link and its dial, while clients' requests are read between them. What
 * its connection says while its REGISTER waits there (a DEREGISTER, bad input) goes behind it, so in
 * order, and only the first of it: each more would be one more job for anyone's turn (a connection
 * sending DEREGISTER frames made a job of each, 300,000 waiting after 4 s, every other registration
 * and end behind them). Said with nothing of it waiting, it goes at once, as ever.
 */
function registrationEvent(core: ListenerCore, peer: Peer, event: ProxyEvent): void {
  if (event.type !== 'REGISTER') {
    if (peer.inLane === 0) return core.sendBack(event);
    if (peer.inLane > 1) return;
  }
  peer.inLane++;
  lifecycle.run(() => {
    peer.inLane--;
    core.sendBack(event);
  });
}

export const listener = fromCallback<ProxyEvent, ListenerInput>(
  ({ sendBack, receive, input }) => {
    const conns = new Set<Connection>();
    // The reads of every client connection in one turn of the event loop go to the proxy as one
    // FORWARD event (setImmediate runs once the poll phase has delivered them all), and what that
    // event writes leaves at once.
    let pending: ForwardBatch[] = [];
    // What the requests gathered hold, as the budget counts them once the FORWARD holds them.
    let pendingBytes = 0;
    let scheduled = false;
    const forwardNow = (): void => {
      scheduled = false;
      if (pending.length === 0) return;
      const batches = pending;
      pending = [];
      pendingBytes = 0;
      sendTogether(() => sendBack({ type: 'FORWARD', batches }));
    };
    const core: ListenerCore = {
      input,
      sendBack,
      conns,
      limits: new ConnectionLimits(input, input.logger, { total: 'max_connections', perPeer: 'max_conns_per_peer', connRate: 'max_conn_rate_per_peer' }, (limit) => input.observer?.connectionLimit?.(limit), input.linkSockets, (reason) => input.observer?.refused?.(reason)),
      forwardLater(peer, requests) {
        pending.push({ peer, requests });
        for (const m of requests) pendingBytes += requestBytes(m);
        // Requests read are outside the budget until the FORWARD holds (or refuses) them: a turn that
        // reads many large ones (64 clients' 1 MB frames) sends what it has once it is past one
        // connection's share, rather than keep them all decoded in the heap until the turn ends.
        if (pendingBytes >= input.budget.requestsPerPeer) return forwardNow();
        if (!scheduled) {
          scheduled = true;
          setImmediate(forwardNow);
        }
      },
      forwardNow,
      gathering: () => pending.length > 0,
    };
    /** A socket let in: `from` is the client a trusted balancer's header named, `rest` what followed the header. */
    const accept = (socket: Socket, from?: { address: string; port: number }, rest?: Buffer): void => {
      const addr = core.limits.admit(socket, from?.address);
      if (addr === undefined) return;
      // The connection listens for the socket's errors from here on.
      // Room for what forwarding adds, so a request read whole is never too big to forward.
      const conn = new Connection(socket, { maxFrameBytes: Math.max(1, input.maxFrameBytes - FORWARD_ROOM), idleTimeoutMs: input.idleTimeoutMs, frameTimeoutMs: input.frameTimeoutMs, wire: 'sniff', lazyTextFrom: input.lazyTextFrom, clock: input.clock, budget: input.budget, from, readSlice: READ_SLICE });
      const peer = newPeer(conn);
      conn.owed = peer;
      conns.add(conn);
      input.observer?.accepted?.(peer, socket);
      conn.listen(new AcceptedReads(core, conn, peer, addr, input.maxFrameBytes));
      // The bytes that came with the header are the client's first: the wire sniffer sees them first.
      if (rest && rest.length > 0) conn.read(rest);
    };
    // With TLS the listening server is TCP's, and `secure` does the handshakes, so that a trusted balancer's header
    // (which comes before the handshake) can be read first: a socket is handed to it as is, or after its header.
    const secure = input.tls?.cert
      ? listenServer(input.tls, (socket: Socket) => {
        // Handshaken: a client may now half-close and still read its answers (see `toTls`).
        socket.allowHalfOpen = true;
        accept(socket, proxiedClient(socket));
      }, { handshakeTimeoutMs: input.frameTimeoutMs, allowHalfOpen: true }) as TlsServer
      : undefined;
    /**
     * A socket handed to `secure` for its handshake is not half-open until the handshake is done: a
     * peer that closes its side mid-handshake cannot finish it, and is closed at once. Half-open, such
     * a socket waited for the frame timeout (10 s) and was logged `TLS handshake timeout`: a Node
     * client destroying its socket on `secureConnect` (its Finished still unwritten) left every such
     * connection open 10 s, a slot and a warn line each.
     */
    const toTls = (socket: Socket): Socket => {
      socket.allowHalfOpen = false;
      return socket;
    };
    // At most max_tls_handshakes under way, a sixteenth of them for one address: the rest wait their turn.
    const handshakes = secure && new TlsHandshakes(secure, input, () => input.frameTimeoutMs || TLS_HANDSHAKE_TIMEOUT_MS, input.logger, 'max_tls_handshakes', () => input.observer?.refused?.('tls_handshakes'));
    // One check per connection, at accept: connections from anyone else are read (or handed to TLS) as they always were.
    let trusted = trustedSources(input.proxyProtocolFrom);
    const server: Server = listenServer(undefined, (socket: Socket) => {
      // A peer reset before its accept was seen has no address to check (HAProxy's health checks connect, send their header and reset):
      // nothing can be answered, and nothing it sent can be believed.
      if (trusted && socket.remoteAddress === undefined) return socket.destroy();
      if (!trusts(trusted, socket.remoteAddress)) {
        // An address opening connections too fast is refused before its handshake costs anything.
        if (core.limits.tooFast(socket)) return;
        if (!secure) return accept(socket);
        return handshakes!.begin(socket, peerAddress(socket), () => void secure.emit('connection', toTls(socket)));
      }
      awaitProxyHeader(socket, { timeoutMs: input.frameTimeoutMs, clock: input.clock }, (outcome) => {
        if ('header' in outcome) {
          const { header: { source }, rest } = outcome;
          // A header naming no client (v2 LOCAL, v1 UNKNOWN) is the trusted balancer's own connection, its health
          // check (HAProxy's `check inter 100ms`: 10 a second): not a peer's flood, so not held to the rate.
          if (source && core.limits.tooFast(socket, source.address)) return;
          if (!secure) return accept(socket, source, rest);
          return handshakes!.begin(socket, peerAddress(socket, source?.address), () => handOverToTls(secure, toTls(socket), source, rest));
        }
        if ('error' in outcome) {
          logNoProxyHeader(input.logger, socket, outcome.error);
          return tellHeaderless(socket, outcome.first, input.clock);
        }
        socket.destroy();
      });
    }, { allowHalfOpen: true });
    core.limits.watch(server);
    if (secure) logTlsRefusals(secure, input.logger, (reason) => input.observer?.tlsFailed?.(reason));
    listenOn(server, input.port, input.host, (port) => sendBack({ type: 'LISTENING', port, address: (server.address() as AddressInfo | null)?.address }), (error) => sendBack({ type: 'LISTEN_FAILED', error }), logAcceptErrors(input.logger, 'max_connections'));
    receive((e) => {
      if (e.type === 'STOP') server.close(); // stop accepting; open connections stay
      else if (e.type === 'RELOAD') {
        // New limits for the connections accepted from now on.
        const { maxFrameBytes, maxConnections, maxConnectionsSet, maxConnectionsPerPeer, maxConnRatePerPeer, maxTlsHandshakes, idleTimeoutMs, frameTimeoutMs, proxyProtocolFrom } = e.opts;
        Object.assign(input, { maxFrameBytes, maxConnections, maxConnectionsSet, maxConnectionsPerPeer, maxConnRatePerPeer, maxTlsHandshakes, idleTimeoutMs, frameTimeoutMs, proxyProtocolFrom });
        core.limits.retune();
        trusted = trustedSources(proxyProtocolFrom);
      } else if (e.type === 'RENEW_TLS' && secure) {
        // Renewed certificates (or a new CA bundle) for the handshakes from now on; a CRL that revokes a peer closes its connections.
        renewTls(secure, (input.tls = e.tls));
        const closed = closeRevoked([...conns].map((c) => c.socket), e.tls, input.logger, 'tls.crl');
        if (e.closed) e.closed.connections += closed;
      }
    });
    return () => {
      server.close();
      input.busyPoll?.stop();
      // Let answers already written leave before the sockets close; a client's last word says that it closes.
      if (input.portClosed) input.portClosed.closeAll(conns);
      else for (const c of conns) c.endWith();
    };
  },
);

/**
 * The parent of every upstream link: passes their reports on to the proxy,
 * and keeps back XState's own news of each link's end. That news is an
 * event whose type holds the link's id (`xstate.done.actor.upstream:7#12`),
 * and a machine keeps a lookup for every event type it is sent: with links
 * coming and going by the thousand, the proxy's would grow without bound.
 */
export const linkHub = fromCallback<ProxyEvent, { logger: Logger }>(({ sendBack, receive, input }) => {
  receive((event) => {
    const type = (event as { type: string }).type;
    if (!type.startsWith('xstate.')) return sendBack(event);
    if (type.startsWith('xstate.error.actor.')) {
      const error = (event as { error?: unknown }).error;
      input.logger.error('link_failed', `An upstream link stopped on an error: ${error instanceof Error ? error.message : String(error)}`, { link: type.slice('xstate.error.actor.'.length) });
    }
  });
});

/**
 * Finds requests past their deadline without an event when none is.
 *
 * After a stall, Node runs timers before it reads the sockets: answers the
 * servers sent during the stall wait unread while their tries look expired,
 * and sweeping then would count each as the server's failure (a pause of a
 * few seconds under load ejected healthy servers) and send it again
 * elsewhere. So a late sweep only notes the stall; the next one, an interval
 * later, after what arrived has been read, finds what is really unanswered.
 */
export const sweeper = fromCallback<ProxyEvent, { busy: Set<Inflight<ProxyRequest>>; policies: Map<string, Policy>; opts: Pick<Opts, 'timeoutMs' | 'queueTimeoutMs'>; clock: Clock; every: number; logger: Logger }>(
  ({ sendBack, input }) => {
    let last = input.clock.now();
    const timer = input.clock.setInterval(() => {
      const now = input.clock.now();
      const late = now - last - input.every;
      last = now;
      if (late >= STALL_MS) {
        input.logger.repeated('warn', 'stalled', '', 1, (n, span) => span
          ? `The proxy's event loop stalled ${fmt(n)} times ${span} (the process was paused or blocked)`
          : `The proxy's event loop did not run for ${Math.round(late)} ms (the process was paused or blocked): answers that came meanwhile are read before any try counts as timed out`, { ms: Math.round(late) });
        return;
      }
      for (const table of input.busy) if (table.oldestDeadline() <= now) table.owner?.send({ type: 'EXPIRE', now });
      const due = waitingDue(input.opts, now);
      for (const policy of input.policies.values()) {
        if (policy.waiting.anyDue(due, backFromTry)) {
          sendBack({ type: 'EXPIRE_WAITING', now });
          break;
        }
      }
    }, input.every);
    return () => timer.cancel();
  },
);

const DOWN_PING_EVERY = 4;

/**
 * A round of the pinger (one `ping_interval`) is taken in this many ticks, each PINGing the servers of
 * one slot (given in turn as each is first seen), so a large fleet is PINGed a tenth at a time: 3,000
 * idle registrations PINGed in one turn held the proxy's loop 20-38 ms every second (their PINGs
 * written in one flush, their PONGs read in one poll phase after). HAProxy spreads its health checks
 * over the interval too. Each server is still PINGed once a round.
 */
export const PING_SLOTS = 10;

/**
 * The slots a round of `every` ms is taken in: the most, up to `PING_SLOTS`, that divide it into whole milliseconds
 * (timers run in whole ones: a round of 15 ms in ticks of 1.5 ran in ticks of 1, and PINGed half as often again).
 */
export function pingSlots(every: number): number {
  for (let n = PING_SLOTS; n > 1; n--) if (every % n === 0) return n;
  return 1;
}

/**
 * Liveness: PING each registration connection; a server that misses too many PONGs is removed. A
 * member found in the registry has none: its link is PINGed while idle (`LinkPort.heartbeat`), and
 * ended past as many misses, the member probed. It was judged only by the requests sent it: a
 * server stopped (SIGSTOP) while its policy was idle stayed serving, `/readyz` 200, and the first
 * requests waited out their tries on it.
 */
export const pinger = fromCallback<ProxyEvent, { servers: Map<string, Member>; clock: Clock; every: number; misses: number; proxy: { send(event: ProxyEvent): void } }>(({ input }) => {
  let tick = 0;
  let given = 0;
  const n = pingSlots(input.every);
  const slots = new WeakMap<Member, number>();
  const timer = input.clock.setInterval(() => {
    const slot = tick % n;
    // A server that is down takes no traffic whatever its registration says: its registration is checked every fourth round only.
    const quiet = Math.floor(tick / n) % DOWN_PING_EVERY !== 0;
    tick++;
    for (const entry of input.servers.values()) {
      let mine = slots.get(entry);
      if (mine === undefined) slots.set(entry, (mine = given++ % n));
      if (mine !== slot) continue;
      const peer = entry.registration;
      if (!peer) {
        if (entry.traffic.phase === 'open') entry.traffic.heartbeat?.(input.misses);
        continue;
      }
      if (peer.conn.closed) continue;
      if (quiet && entry.traffic.phase === 'down') continue;
      if (peer.missedPings >= input.misses) {
        const misses = peer.missedPings;
        // Thousands at once when a network between goes: through the lane, as their registrations came. Sent to the
        // proxy itself: a reload restarts this pinger, and what a stopped actor sends back is dropped - the server, marked
        // reported, was never evicted.
        lifecycle.run(() => input.proxy.send({ type: 'MISSED_PINGS', peer, misses }));
        peer.missedPings = -Infinity; // reported once
        continue;
      }
      // A server whose upstream link answered since the last round is alive: no PING needed
      // (with thousands of busy servers this saves thousands of writes and reads a second).
      const reads = entry.traffic.reads;
      if (reads > 0 && reads !== entry.seenReads) {
        entry.seenReads = reads;
        peer.missedPings = 0;
        continue;
      }
      peer.missedPings++;
      peer.pongsOwed++;
      peer.conn.send({ type: MsgType.PING, seq: 0 });
    }
  }, input.every / n);
  return () => timer.cancel();
});

/** While draining: reports when nothing is in flight any more (told by the reply path, not by polling). */
export const drainWatch = fromCallback<ProxyEvent, { inflight: InflightCount }>(({ sendBack, input }) =>
  input.inflight.whenIdle(() => sendBack({ type: 'DRAINED' })),
);

/** The `registry` actor without a registry: nothing. startProxy provides etcd's (registry/proxy-registry.ts) when one is given. */
export const noRegistry = fromCallback<RegistryCommand, ProxyRegistryInput>(() => undefined);

/**
 * A connection from a trusted balancer's address that began with no PROXY header is told why in its
 * own wire, when its first byte shows one (a frame's 0x00, the JSON wire's `{`), then closed: a
 * `revproxy server` or client on that address (proxy_protocol_from: 127.0.0.1 shuts out this
 * machine's own) logged only that the proxy closed its connection, over and over, while the proxy's
 * log alone said why. Bytes still coming are read and dropped, so the close does not reset the
 * answer away; the socket is destroyed once the peer closes, or a second later. Anything else (TLS's
 * 0x16, a stranger's bytes) is closed at once.
 */
function tellHeaderless(socket: Socket, first: number | undefined, clock: Clock): void {
  const frames = first === 0;
  if (!frames && (first === undefined || !startsJson(first))) return void socket.destroy();
  const addr = peerAddress(socket);
  const answer = errorMsg(ErrorCode.BAD_REQUEST, `this proxy takes connections from ${addr} only when they begin with a PROXY protocol header: ${addr} is one of its balancers (proxy_protocol_from). Connect from another address; for a balancer on the proxy's own machine, its operator can give the balancer a source address of its own (HAProxy: source 127.0.0.5 on its server line) and list that one instead`);
  socket.on('data', ignoreBytes);
  const timer = clock.setTimeout(() => socket.destroy(), HEADERLESS_CLOSE_MS);
  socket.once('close', () => timer.cancel());
  socket.end(frames ? encodeFrame(answer) : encodeJson(answer));
}

/** How long a connection told it needed a PROXY header (`tellHeaderless`) is given to close its side. */
const HEADERLESS_CLOSE_MS = 1000;

const ignoreBytes = (): void => {};
