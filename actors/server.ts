/**
 * A server of one privacy policy: listens on its own port, registers with
 * one or more proxies over connections it keeps open (its leaving is that
 * connection closing, or a DEREGISTER on it), and answers every DATA request
 * with what its handler returns (by default the SHA1 hex of the payload; see
 * handler.ts for how a handler runs: concurrency, deadlines, errors).
 *
 * starting --LISTENING--> online.serving --STOP--> online.draining --DRAINED / drain timeout--> stopped
 *    \--LISTEN_FAILED--> failed            \--REFUSED--> failed
 *
 * A registration that is lost (the proxy went away, refused it with a code
 * that may pass, or never accepted it) is retried with backoff and the server
 * registers again, so restarting a proxy heals on its own. REFUSED (fatal) is
 * a refusal for good from every proxy; from one of several, it is that proxy's.
 * Draining: DEREGISTER on every registration, keep answering what the proxies
 * already sent, stop once every proxy has closed its connections to us. A server
 * registered through etcd also answers SHUTTING_DOWN to what comes after a short
 * grace (LEAVING_GRACE_MS): a proxy that could not hear etcd stops then.
 */
import { isIP, type Socket } from 'node:net';
import { assertEvent, assign, fromCallback, sendTo, setup, type ActorRefFrom } from 'xstate';
import { canonicalHost, DEFAULT_PROXY_PORT, hostPort, isEveryAddress, peerAddress, plainIPv4, repeatedEndpoint, unbracket } from '../transport/address.js';
import { ErrorCode, ProtocolError } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import { errorMsg, isIdValue, loneSurrogateIn, MAX_ID_LENGTH, MsgType, type DataMsg, type ErrorMsg, type Message, type PongMsg, type SetupMsg } from '../transport/messages.js';
import { Connection, ConnectionTimeout } from '../transport/socket.js';
import { CERT_REFUSED, CLOSED_UNACCEPTED, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TCP_KEEPALIVE_MS, certificateMissesAddress, certificateMissesName, describeDialError, dial, NO_ADDRESS_OF_FAMILY, dialDeadline, listenOn, listenServer, whenReady, renewTls, type TlsMaterial } from '../transport/tls.js';
import { jittered, systemClock, type Clock, type Timer } from '../transport/clock.js';
import { BufferBudget, defaultBufferBudget } from '../transport/budget.js';
import { budgetNote, connectionsNote, defaultMaxConnections, lazyTextFrom, memoryLimit } from './memory-limit.js';
import { SaidAgainPerProxy } from './said-again.js';
import { badHandler, Caller, HandlerRunner, sha1Handler, type Behaviour, type Handler } from './handler.js';
import { defaultConnsPerPeer, DEFAULT_LISTEN_HOST } from './proxy-options.js';
import { closeRevoked, ConnectionLimits, logAcceptErrors, logBadInput, logShed, logTlsRefusals, type ConnectionLimitsInput } from './port-limits.js';
import { DEFAULT_MAX_TLS_HANDSHAKES, TlsHandshakes } from './tls-handshakes.js';
import { fmt, silentLogger, type Logger } from './logger.js';

export type { Behaviour } from './handler.js';

export interface Endpoint {
  host: string;
  port: number;
}

/** Where a server, a client and the library find the proxy when told nothing: this machine, the proxy's default port. */
export const DEFAULT_PROXY: Readonly<Endpoint> = { host: DEFAULT_LISTEN_HOST, port: DEFAULT_PROXY_PORT };

export interface ServerOptions {
  id: string;
  policy: string;
  /** Port to listen on for the proxy's requests; 0 picks a free one. */
  listenPort: number;
  /** Address to listen on. Default 127.0.0.1 (`DEFAULT_LISTEN_HOST`). */
  listenHost?: string | undefined;
  /** The proxy to register with (or use `proxies`). */
  proxy?: Endpoint | undefined;
  /** Several proxies: the server registers with each of them. */
  proxies?: Endpoint[] | undefined;
  /** What answers each request: `async (payload, ctx) => answer`. Default: the SHA1 hex of the payload. */
  handler?: Handler | undefined;
  /** Requests the handler runs at once; more wait (see `queueLimit`). Default: no limit. */
  concurrency?: number | undefined;
  /** Requests waiting for one of the `concurrency` slots; past it the server answers OVERLOADED. Default 1024. */
  queueLimit?: number | undefined;
  /**
   * The longest a request waits for one of the `concurrency` slots (ms); past it the server answers
   * OVERLOADED, not run, and the proxy sends it to another server (0: it waits until the proxy's
   * deadline for the try, then TIMEOUT). Default 0.
   */
  queueTimeoutMs?: number | undefined;
  /**
   * Adaptive LIFO: once the queue for the `concurrency` slots has not been empty for this long (ms),
   * a free slot takes the newest waiting request, and the oldest wait out `queueTimeoutMs` (set it
   * too). Default 0: always the oldest.
   */
  queueLifoAfterMs?: number | undefined;
  maxFrameBytes?: number | undefined;
  /**
   * Bytes the server holds for all its peers together (0 = no limit):
   * messages begun and not yet complete, answers not yet read, and requests
   * not answered yet (each its payload and 1 KiB). Past it the connections
   * holding the most are closed with OVERLOADED; requests may take half of
   * it (past that they are refused OVERLOADED), one connection's requests a
   * 32nd (then it is read no more until answers bring it down), as on the
   * proxy's port. Default 256 MiB.
   */
  maxBufferedBytes?: number | undefined;
  /** Connections the server keeps open at once (at most what the open-files limit leaves room for); past it each new one is closed at once. Default 4096. */
  maxConnections?: number | undefined;
  /** Connections from one address at once (0 = no limit). Default: none when listening on loopback, 1024 on any other address. */
  maxConnectionsPerPeer?: number | undefined;
  /** New connections one address may open a second, refused past it before a TLS handshake (0 = no limit; port-limits.ts `tooFast`). Default 0. */
  maxConnRatePerPeer?: number | undefined;
  /** TLS handshakes under way at once, a sixteenth of them (at least 1) for one address; past either a connection waits its turn (tls-handshakes.ts) (0 = no limit). Default 256. */
  maxTlsHandshakes?: number | undefined;
  /** `normal` answers; `silent` accepts requests and never answers; `fail` answers every request with an error (for fault tests). */
  behaviour?: Behaviour | undefined;
  /**
   * How to register: `frames` (default) on connections kept open; `json` the
   * old way, for the old Python proxy (see json-registration.ts). Requests are
   * read in either wire, decided by their first byte.
   */
  wire?: 'frames' | 'json' | undefined;
  /** Every request waits this long (ms) before its handler runs, inside its concurrency slot (for drain, timeout and one-at-a-time tests). Default 0. */
  delayMs?: number | undefined;
  /**
   * A handler whose promise has not settled this long (ms) after it started
   * is given up on: its request is answered TIMEOUT, its `ctx.signal` is
   * aborted and its concurrency slot goes to the next request (0: never).
   * Default 30000.
   */
  handlerTimeoutMs?: number | undefined;
  /** First delay before re-registering with a proxy that went away (ms); doubles up to `reconnectMaxMs`. Default 200. */
  reconnectInitialMs?: number | undefined;
  /** Default 5000. */
  reconnectMaxMs?: number | undefined;
  /**
   * TCP keepalive on each registration connection: probes start after this
   * long without traffic (ms; 0 = off), one a second, ten unanswered end it.
   * A proxy cut off without a FIN or a RST (a partition, a pulled cable, a
   * frozen VM) is found by them, and so is a proxy that took the server out
   * while the two could not reach each other: the server registers again.
   * Default 15000 (Go's default for every connection it dials).
   */
  tcpKeepAliveMs?: number | undefined;
  /**
   * On STOP, the longest wait for the proxies to let go (ms): requests still
   * running then are cut off. Default: the handler timeout plus 5 s (35000),
   * so a drain lets every request run for as long as the handler timeout
   * allows it (with no handler timeout, 35000 as well).
   */
  drainTimeoutMs?: number | undefined;
  /** Registration secret, when the proxy requires one. */
  token?: string | undefined;
  /** TLS: the listener's certificate (and, with a CA, mutual TLS: proxies must present certificates it signed); the CA also verifies the proxies this server registers with. */
  tls?: TlsMaterial | undefined;
  /**
   * Register with the proxies over plain TCP while the listener serves TLS (`tls.cert`): for a proxy whose port serves
   * plain TCP (behind a balancer that ends TLS, or on a network trusted for it) and that dials its servers over TLS (its
   * `upstream_tls`). The registration, its secret included, then crosses the network in clear: the proxy's CA and
   * `upstream_tls.names` are what keep a stranger who read the secret from being sent requests. Default false.
   */
  plainRegistration?: boolean | undefined;
  logger?: Logger | undefined;
  clock?: Clock | undefined;
}

export interface ServerContext {
  opts: ServerOptions;
  proxies: Endpoint[];
  logger: Logger;
  clock: Clock;
  port: number;
  /** The address the listener bound: its --host, or the address that name resolved to. */
  listenAddress?: string;
  /** Runs the handler for every request and writes the answers; counts what it took. */
  runner: HandlerRunner;
  /** What the server holds for its peers: partial messages, unread answers, requests not answered yet. */
  budget: BufferBudget;
  /** The memory limit read at start (`memoryLimit()`; undefined: none): the budget's default and the start's line about it both come from it. */
  memoryLimit?: number;
  /** The limit on connections open at once: `--max-connections`, or the default V8's heap gives (`defaultMaxConnections`), read once at start for the limit kept and the start's line alike. */
  maxConnections: number;
  /** Whether `--max-connections` was given (else `maxConnections` is the default): the start's line and the listener's open-files warning both ask. */
  maxConnectionsSet: boolean;
  /** Proxies we are registered with now (`host:port`). */
  registered: string[];
  /** Its sockets closing as it stops: `stop()` waits for them. */
  closing: Closing;
  /**
   * Why the last registration with each proxy that lost or refused one failed (`host:port`: why): a
   * start that registers with none says so for each. It said "could not register with any reverse proxy
   * (...) within 1500 ms", not whether each refused the connection, timed out or turned it down.
   */
  unregistered: Record<string, string>;
  error?: string;
}

export type ServerEvent =
  | { type: 'LISTENING'; port: number; address: string }
  | { type: 'LISTEN_FAILED'; error: string }
  | { type: 'REQUESTS'; caller: Caller; requests: DataMsg[] }
  | { type: 'REGISTERED'; proxy: string; again: boolean }
  | { type: 'REFUSED'; proxy: string; code: string; message: string }
  /** `repeat`: the same failure as the one said last, said at debug (a lasting one is said every 30 s: said-again.ts). */
  | { type: 'REGISTRATION_LOST'; proxy: string; error: string; retryInMs: number; repeat?: boolean }
  /** One of several proxies refused the registration for good (UNAUTHORIZED, DUPLICATE_ID): the others' stand; it is asked again after the longest backoff. */
  | { type: 'REGISTRATION_REFUSED'; proxy: string; code: string; message: string; retryInMs: number }
  /**
   * `proxies` names one proxy twice under two names (`127.0.0.1:2100` and `localhost:2100`): `proxy` reached
   * the same address and port (`address`) as `twin`, where this server is registered, and that proxy refused the
   * second registration its own id (DUPLICATE_ID). `proxy` is not dialled again; `twin`'s registration stands.
   */
  | { type: 'DUPLICATE_ENTRY'; proxy: string; twin: string; address: string }
  | { type: 'DEREGISTER_ALL' }
  /** The drain could not tell a registry that this server is leaving (etcd away): its proxies keep their links. */
  | { type: 'DEREGISTER_FAILED'; proxy: string; error: string }
  /** The registry took this server's leaving: the proxies watching it stop sending; one cut off from etcd does not (LEAVING_GRACE_MS). */
  | { type: 'DEREGISTERED'; proxy: string }
  | { type: 'DRAIN' }
  | { type: 'DRAINED' }
  /** The drain's proxies told, this server running none of their requests, `count` of their connections stayed silent `ms` (`UNANSWERED_MS`): they were cut. */
  | { type: 'UNANSWERED'; peers: string[]; count: number; ms: number }
  | { type: 'STOP' }
  | RenewTls;

/** New TLS files (renewed certificates, a new CA bundle) for the server's next handshakes: its listener's, and its dials to proxies. */
export type RenewTls = { type: 'RENEW_TLS'; tls: TlsMaterial };

/**
 * A message begun must be complete within this long (ms), and a TLS
 * handshake. A connection with no message under way may be quiet for as long
 * as it likes, even before its first: a proxy's link carries nothing while its
 * clients send nothing, and its link to a `--wire json` server sends nothing
 * at all until a request comes (no idle timeout could tell such a link from a
 * peer that holds a connection; the connection limits bound those).
 */
const FRAME_TIMEOUT_MS = 10_000;

/**
 * Bytes a registration connection may hold unread by its proxy (its PONGs, mostly) before the
 * registration is closed as misbehaving and made again after the longest backoff. A proxy PINGs
 * once a second and reads the PONGs: at a few bytes each, this is hours of them.
 */
export const REGISTRATION_UNREAD_BYTES = 256 * 1024;

/**
 * How long a proxy has to accept a registration (its first PING, docs/PROTOCOL.md) once the SETUP
 * is sent: past it the registration is given up, said, and made again under the backoff.
 */
export const ACCEPT_TIMEOUT_MS = 10_000;

/**
 * The server's sockets as it stops: its listener's and its registrations' connections, each closed with `endWith` (its
 * answers written first) and added here. `closed` settles once every one has closed: a peer that does not answer our close
 * (a proxy SIGSTOPped or cut off) is cut 2 s after it (`Connection.endWith`). `stop()` waits for it, so a process that
 * exits once it resolves leaves no socket behind: `revproxy server`'s check 1 s after the stop found two such sockets of a
 * hung proxy still open, and called them revproxy's bug.
 */
export class Closing {
  private readonly waits: Promise<void>[] = [];

  /** `conn`, closed by its owner (`endWith`): waited for. */
  add(conn: Connection): void {
    const socket = conn.socket;
    if (!socket.closed) this.waits.push(new Promise((resolve) => socket.once('close', () => resolve())));
  }

  get closed(): Promise<void> {
    return Promise.all(this.waits).then(() => undefined);
  }
}

const MSG_NAMES: Record<number, string> = { [MsgType.DATA]: 'DATA', [MsgType.SETUP]: 'SETUP', [MsgType.ACK]: 'ACK', [MsgType.ERROR]: 'ERROR', [MsgType.PONG]: 'PONG', [MsgType.DEREGISTER]: 'DEREGISTER' };

interface ListenerInput extends ConnectionLimitsInput {
  /** The server's id: its JSON ERRORs carry it as `srcid` (the old proxy reads it from every answer); its PONGs on a link state it. */
  id: string;
  /** The privacy policy it serves, which its PONGs on a link state with its id (a proxy checks a registry member's). */
  policy: string;
  /** How many requests it runs at once (`--concurrency`), which its PONGs on a link state; undefined: no limit. */
  concurrency?: number;
  host: string;
  port: number;
  maxFrameBytes: number;
  /** Requests' text payloads of this many bytes or more are made into strings only when read (memory-limit.ts `lazyTextFrom`): by the handler, or never for one refused. */
  lazyTextFrom: number;
  logger: Logger;
  runner: HandlerRunner;
  budget: BufferBudget;
  clock: Clock;
  tls?: TlsMaterial;
  /** The server's sockets as it stops, for its `stop()` to wait for. */
  closing: Closing;
}

/**
 * What the server machine tells its listener: the drain began (`told`: its proxies have its DEREGISTER; a registry
 * server's are told by `REFUSE_NEW`'s PONG instead), new requests are refused, new TLS files.
 */
type ListenerCommand = { type: 'DRAIN'; told: boolean } | { type: 'REFUSE_NEW'; message: string; leaving: string } | RenewTls;

/**
 * Accepts the proxies' connections; each read becomes one REQUESTS batch. Stopped, it aborts the handlers still
 * running and closes the connections, each added to `closing`.
 */
const requestListener = fromCallback<ListenerCommand, ListenerInput>(
  ({ sendBack, receive, input }) => {
    const send = (e: ServerEvent): void => sendBack(e);
    const limits = new ConnectionLimits(input, input.logger, { total: '--max-connections', perPeer: '--max-conns-per-peer', connRate: '--max-conn-rate-per-peer' });
    const conns = new Set<Connection>();
    let draining = false;
    // What every PONG on a link states (its seq each PING's); a concurrency of Infinity is no limit, not stated.
    const pong: PongMsg = { type: MsgType.PONG, seq: 0, id: input.id, privPolyId: input.policy };
    if (Number.isSafeInteger(input.concurrency)) pong.concurrency = input.concurrency;
    /**
     * Set once a registry server's drain stops taking new requests (at once when etcd did not take its leaving, a
     * grace after when it did): each request read from then on is answered this, SHUTTING_DOWN, and not run.
     */
    let refusing: ErrorMsg | undefined;
    /** The connections that PINGed: proxies' links, told unasked when the server leaves untold (`PongMsg.leaving`). */
    const pinged = new WeakSet<Connection>();
    const checkDrained = (): void => {
      if (draining && conns.size === 0) send({ type: 'DRAINED' });
    };
    /** Connections something was read from since the unanswered watch last looked (`watchUnanswered`). */
    const heardFrom = new Set<Connection>();
    let unanswered: Timer | undefined;
    /**
     * Once the proxies are told this server leaves: a proxy reads that, stops sending, and closes its connections here
     * as soon as it has its answers (milliseconds). A connection still open `UNANSWERED_MS` on, with no handler running,
     * nothing read from it meanwhile and nothing left to write to it, is a proxy's that does not answer (SIGSTOPped, hung,
     * cut off): with nothing in flight, the drain waited its whole timeout for it (35 s by default), then left its sockets
     * open past the stop. Each such connection is cut and the machine told; the others are watched on. One with an answer
     * still leaving is waited for (to the drain timeout at most): a proxy reading a large answer slowly had it cut in the
     * middle (a review; Node tells no progress of one large write, so it is not judged by it).
     */
    const watchUnanswered = (): void => {
      unanswered?.cancel();
      heardFrom.clear();
      unanswered = input.clock.setTimeout(() => {
        unanswered = undefined;
        if (conns.size === 0) return;
        const silent = input.runner.held > 0 ? [] : [...conns].filter((c) => !heardFrom.has(c) && c.pendingBytes === 0);
        if (silent.length > 0) {
          for (const c of silent) c.destroy();
          send({ type: 'UNANSWERED', peers: [...new Set(silent.map((c) => c.remoteAddress))], count: silent.length, ms: UNANSWERED_MS });
        }
        if (conns.size > silent.length) watchUnanswered();
      }, UNANSWERED_MS);
    };
    const accept = (socket: Socket): void => {
      const addr = limits.admit(socket);
      if (addr === undefined) return;
      socket.once('close', () => limits.left(addr));
      // Either wire: the old proxy talks JSON here, ours frames.
      const conn = new Connection(socket, {
        maxFrameBytes: input.maxFrameBytes, lazyTextFrom: input.lazyTextFrom, frameTimeoutMs: FRAME_TIMEOUT_MS, wire: 'sniff', answerAs: input.id, budget: input.budget, clock: input.clock,
      });
      const caller = new Caller(conn);
      conns.add(conn);
      socket.on('error', () => {});
      const gone = (): void => {
        conns.delete(conn);
        checkDrained();
      };
      conn.messages$.subscribe({
        next: (messages) => {
          if (unanswered) heardFrom.add(conn);
          const requests: DataMsg[] = [];
          for (const m of messages) {
            if (m.type === MsgType.DATA) {
              if (refusing && conn.wire !== 'json') {
                conn.send({ ...refusing, seq: m.seq });
                // Nothing is lost (the proxy sends it to another server as one never sent), but a proxy that sends here now has not
                // heard the registry say this server leaves: said once, then counted, for an operator to look at that proxy's etcd.
                input.logger.repeated('info', 'refused_draining', 'refused', 1, (n, span) => span
                  ? `Answered SHUTTING_DOWN to ${fmt(n)} more request(s) ${span}, not run: their proxies send them to another server`
                  : `Answered SHUTTING_DOWN to a request from ${conn.describe()}, not run: this server is draining and takes no new requests; that proxy sends it to another server and stops sending here. A proxy still sending here after the registry said this server is leaving did not hear it: see whether it reaches etcd (its registry_down lines, revproxy_registry_up)`, { peer: conn.describe() });
              } else requests.push(m);
            }
            else if (m.type === MsgType.PING) {
              pinged.add(conn);
              // A proxy's link states the largest frame it reads: answers on it are kept within it (handler.ts `ack`).
              if (m.maxFrame !== undefined) caller.peerMaxFrame = m.maxFrame;
              conn.send({ ...pong, seq: m.seq });
            }
            else {
              if (requests.length) send({ type: 'REQUESTS', caller, requests: requests.splice(0) });
              // An ERROR without a seq is the proxy's last word on the connection (it refused something this server sent,
              // and closes): said in its words, and not answered. It was refused in turn as "message type 3 is not a request".
              if (m.type === MsgType.ERROR && m.seq === undefined) endedByPeer(conn, m, input.logger);
              else refuse(conn, new ProtocolError(ErrorCode.BAD_REQUEST, `message type ${m.type}${MSG_NAMES[m.type] ? ` (${MSG_NAMES[m.type]})` : ''} is not a request: a proxy sends DATA and PING on a server's port`), input.logger);
              return;
            }
          }
          if (requests.length) send({ type: 'REQUESTS', caller, requests });
        },
        error: (err: Error) => {
          if (err instanceof ProtocolError) refuse(conn, err, input.logger);
          else if (err instanceof ConnectionTimeout) {
            const why = err.message;
            input.logger.repeated('info', 'conn_timeout', why, 1, (n, span) => (span ? `Closed ${fmt(n)} connection(s) ${span}: ${why}` : `Closed connection from ${conn.describe()}: ${why}`), { peer: conn.describe() });
          }
          gone();
        },
        complete: gone,
      });
    };
    // With TLS the listening server is TCP's and `secure` does the handshakes (as on the proxy's port),
    // so that an address opening connections too fast is refused before its handshake costs anything.
    const secure = input.tls?.cert ? listenServer(input.tls, accept, { handshakeTimeoutMs: FRAME_TIMEOUT_MS }) : undefined;
    // At most --max-tls-handshakes under way, a sixteenth of them for one address: the rest wait their turn.
    const handshakes = secure && new TlsHandshakes(secure, input, () => FRAME_TIMEOUT_MS, input.logger, '--max-tls-handshakes');
    const server = listenServer(undefined, (socket: Socket) => {
      if (limits.tooFast(socket)) return;
      if (secure) handshakes!.begin(socket, peerAddress(socket), () => void secure.emit('connection', socket));
      else accept(socket);
    });
    limits.watch(server);
    if (secure) logTlsRefusals(secure, input.logger);
    listenOn(server, input.port, input.host, (port, address) => send({ type: 'LISTENING', port, address }), (error) => send({ type: 'LISTEN_FAILED', error }), logAcceptErrors(input.logger, '--max-connections'));
    receive((e) => {
      if (e.type === 'RENEW_TLS') {
        if (secure) renewTls(secure, e.tls);
        // A proxy whose certificate the renewed CRLs revoke has its connections here closed, as on the proxy's port.
        return void closeRevoked([...conns].map((c) => c.socket), e.tls, input.logger, '--tls-crl');
      }
      if (e.type === 'REFUSE_NEW') {
        refusing = errorMsg(ErrorCode.SHUTTING_DOWN, e.message);
        // Every PONG says it from now on, and each proxy's link is told now: one with no request to carry the
        // SHUTTING_DOWN stayed open, and the drain waited for it until its timeout.
        pong.leaving = e.leaving;
        for (const c of conns) if (pinged.has(c) && !c.closed) c.send({ ...pong, seq: 0 });
        watchUnanswered();
        return;
      }
      // DRAIN: no new connections; the proxies close theirs once they have their answers.
      draining = true;
      server.close();
      // The old JSON wire has no deregistration: a proxy keeping a JSON connection open would
      // hold the drain to its timeout. Answers are written as requests arrive (unless --delay), so close them.
      for (const c of conns) if (c.wire === 'json') c.endWith();
      if (e.told) watchUnanswered();
      checkDrained();
    });
    return () => {
      unanswered?.cancel();
      input.runner.abortAll(`server stopped`);
      server.close();
      for (const c of conns) {
        c.endWith();
        input.closing.add(c);
      }
    };
  },
);

/**
 * The peer ended the connection with an ERROR without a seq: a proxy refusing what this server sent on its link (an
 * answer it could not take), with its reason. Said once per address and code, then counted; the connection is closed
 * without an answer (the proxy reads nothing more from it).
 */
function endedByPeer(conn: Connection, m: ErrorMsg, logger: Logger): void {
  const addr = conn.remoteAddress;
  logger.repeated('warn', 'link_refused', `${addr}\0${m.code}`, 1, (n, span) => span
    ? `${fmt(n)} more connection(s) from ${addr} ended by the peer with ERROR ${m.code} ${span}; the first said: ${m.message}`
    : `The peer at ${conn.describe()} (a reverse proxy's link) ended its connection with ERROR ${m.code}: ${m.message}`,
  { peer: conn.describe(), code: m.code });
  conn.endWith();
}

function refuse(conn: Connection, err: ProtocolError, logger: Logger): void {
  // Garbage from a crowd of connections must not become a log flood: once, then counted (as the proxy's).
  logBadInput(logger, conn, err);
  conn.endWith(errorMsg(err.code, err.message));
}

/** What the server tells its registrations actor (either wire's): it is draining, or its dials take new TLS files. */
export type RegistrationCommand = { type: 'DEREGISTER_ALL' } | RenewTls;

export interface RegistrationInput {
  proxies: Endpoint[];
  /** What the registrations dial with (none: plain TCP); renewed by RENEW_TLS. */
  tls?: TlsMaterial;
  /** Register in plain TCP whatever `tls` the server has (`ServerOptions.plainRegistration`): RENEW_TLS then renews `served` alone. */
  plain?: boolean;
  /** The certificate the listener serves, which the proxy checks against the address it dials back (`logDialBackProblem`). */
  served?: Buffer;
  setup: SetupMsg;
  maxFrameBytes: number;
  clock: Clock;
  initialMs: number;
  maxMs: number;
  /** TCP keepalive's idle time on each registration connection (ms; 0 = off). */
  keepAliveMs: number;
  /** The address the server listens on (its --host), which the proxy must reach it at. */
  listenHost: string;
  /** The address its listener bound (what `listenHost` resolved to, when it is a name). */
  listenAddress?: string;
  logger: Logger;
  /** The server's sockets as it stops: a registration's connections are added as they close. */
  closing: Closing;
}

/**
 * One registration connection per proxy: sends SETUP, answers PINGs, and
 * stays open as the server's presence. Lost -> reconnect with backoff.
 */
const registrations = fromCallback<RegistrationCommand, RegistrationInput>(({ sendBack: sendAny, receive, input }) => {
  const sendBack = (e: ServerEvent): void => sendAny(e);
  let stopping = false;
  const live = new Map<string, Connection>();
  /** Proxies whose last word was a refusal for good (UNAUTHORIZED, DUPLICATE_ID): once it is every proxy, the server stops. */
  const refusedForGood = new Set<string>();
  const timers = new Set<Timer>();
  const namesSaid = new Map<string, string>();
  /** The address and port each connected registration reached (`plainIPv4`), by its entry's key: two entries reaching one are one proxy. */
  const reached = new Map<string, string>();
  /** The entries whose registration the proxy accepted, and holds now. */
  const held = new Set<string>();
  /** Entries given up for good as another's duplicate (`DUPLICATE_ENTRY`). */
  const dropped = new Set<string>();
  /**
   * The registrations still being dialled, each one's way to give up. A server stopped before its
   * dial connected (a SIGTERM as it started) had its dial connect after the stop, send SETUP and stay
   * open: the proxy took a server whose port was closed, and the process was held by the socket.
   */
  const dialling = new Set<() => void>();
  /** Each proxy's failure said last, while its registration keeps failing (said again only now and then). */
  const said = new SaidAgainPerProxy(input.clock);

  const attempt = (ep: Endpoint, delay: number, everRegistered: boolean): void => {
    const key = hostPort(ep.host, ep.port);
    const from = registrationSource(input.listenHost, input.listenAddress, ep.host);
    const socket = dial(ep.host, ep.port, input.tls, from);
    logSeveralAddresses(input, key, ep.host, socket, namesSaid);
    // A proxy that went away without a word (no FIN, no RST: a partition, a frozen host) sends no
    // PINGs, and the server sends nothing unasked: without probes of its own it would wait for ever,
    // and a proxy that removed it meanwhile would never hear from it again.
    if (input.keepAliveMs > 0) socket.setKeepAlive(true, input.keepAliveMs);
    // Never hold a registration's reads for its writes (PINGs and PONGs both ways): that could deadlock.
    // A message begun must arrive whole, as on the listener: a proxy that stops mid-frame is given up.
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, holdReadsWhenCongested: false, frameTimeoutMs: FRAME_TIMEOUT_MS, clock: input.clock });
    let registered = everRegistered;
    let over = false;
    /** The proxy's acceptance (its first PING) is due by then; what it sent instead, if anything. */
    let acceptance: Timer | undefined;
    let instead: string | undefined;
    /** When the proxy accepted this registration (clock ms; -1: not yet). */
    let acceptedAt = -1;
    // A dial into a partition waits out the system's SYN retries (about two minutes), and after the
    // cut heals up to a minute more for the next one: give up on it and dial again under the backoff.
    const slow = dialDeadline(socket, ep.host, ep.port, DEFAULT_CONNECT_TIMEOUT_MS, input.clock, (why) => lost(why));
    /**
     * `backoff`: wait this step rather than the current one (a proxy that misbehaved, or refused us
     * for good, waits the longest); `refusal`: said as that proxy's refusal, not as a loss.
     */
    const lost = (error: string, backoff?: number, refusal?: { code: string; message: string }): void => {
      if (over) return;
      end();
      conn.destroy();
      if (stopping) return;
      // Up to a fifth early, at random: a fleet that lost its proxy together would otherwise dial it
      // again in step, every server at the same moment at each round (1,000 at once at 5 s).
      // A registration that lasted the longest backoff or more starts again from the first step (a proxy
      // restarted: back within 200 ms); one lost sooner goes on doubling. Reset at every acceptance, a proxy
      // that accepted and dropped it at once (OVERLOADED a second later, again and again) was dialled every 1.2 s for ever.
      const step = backoff ?? (acceptedAt >= 0 && input.clock.now() - acceptedAt >= input.maxMs ? input.initialMs : delay);
      const wait = jittered(step);
      if (refusal) sendBack({ type: 'REGISTRATION_REFUSED', proxy: key, ...refusal, retryInMs: wait });
      else sendBack({ type: 'REGISTRATION_LOST', proxy: key, retryInMs: wait, ...said.say(key, error) });
      const t = input.clock.setTimeout(() => {
        timers.delete(t);
        if (!stopping) attempt(ep, Math.min(step * 2, input.maxMs), registered);
      }, wait);
      timers.add(t);
    };
    /** This attempt is over: nothing more is awaited of it. */
    const end = (): void => {
      over = true;
      dialling.delete(giveUp);
      slow.cancel();
      acceptance?.cancel();
      live.delete(key);
      reached.delete(key);
      held.delete(key);
    };
    const giveUp = (): void => lost('the server is stopping');
    dialling.add(giveUp);
    let accepted = false;
    /** The address this registration comes from, and whether the proxy cannot reach this server there (said as it connected). */
    let local: string | undefined;
    let unreachable = false;
    whenReady(socket, () => {
      // Still given up by a stop until the proxy accepts: one that never does (a SIGSTOPped proxy, a port
      // that takes connections and reads nothing) left the connection open past the server's stop, its
      // end waiting for a reader, and the stop's check called it a bug (`revproxy itself left it`).
      slow.cancel();
      live.set(key, conn);
      if (socket.remoteAddress) reached.set(key, hostPort(plainIPv4(socket.remoteAddress), socket.remotePort ?? 0));
      local = socket.localAddress;
      unreachable = logDialBackProblem(input, key, local);
      conn.send(input.setup);
      // A proxy that took the connection and says nothing (stopped with SIGSTOP: the kernel completes
      // the handshake; something else on the port) was waited on for ever, without a word.
      acceptance = input.clock.setTimeout(() => lost(
        `it did not accept the registration within ${ACCEPT_TIMEOUT_MS} ms (no PING after our SETUP${instead ? `; it sent ${instead} instead` : ''}): is it stopped, overloaded, or not a revproxy proxy? The old system's reverse_proxy.py reads no frame, and answers nobody after one: register with it in its JSON, \`--wire json\`, and restart it`,
      ), ACCEPT_TIMEOUT_MS);
    });
    conn.messages$.subscribe({
      next: (messages: Message[]) => {
        for (const m of messages) {
          if (m.type === MsgType.PING) {
            conn.send({ type: MsgType.PONG, seq: m.seq });
            // Its reads are never held (see above), so a peer that PINGs and never reads our PONGs would
            // pile them up without end (781 MB in 50 s of a flood): past a bound no proxy comes near
            // (one PING a second, PONGs read as they come), it is cut as misbehaving.
            if (conn.pendingBytes > REGISTRATION_UNREAD_BYTES) {
              return lost(`it sent PINGs and did not read our PONGs (${conn.pendingBytes} bytes unread, more than ${REGISTRATION_UNREAD_BYTES}): closed as a misbehaving proxy`, input.maxMs);
            }
            // The proxy answers an accepted SETUP with a PING: we are in.
            if (!accepted) {
              accepted = true;
              dialling.delete(giveUp);
              acceptance?.cancel();
              refusedForGood.delete(key);
              said.clear(key);
              held.add(key);
              // Checked once the proxy has said which name it verifies, if one (its acceptance PING), not as it connects.
              if (!unreachable) logCertificateProblem(input, key, local, m.serverName);
              sendBack({ type: 'REGISTERED', proxy: key, again: registered });
              registered = true;
              acceptedAt = input.clock.now();
            }
          }
          else if (m.type === MsgType.ERROR && m.seq === undefined) {
            const why = `${m.code}: ${m.message}`;
            // A duplicate id right after we lost the proxy is our own stale registration: retry.
            if (m.code === ErrorCode.DUPLICATE_ID && everRegistered) lost(why);
            // Our own registration through another entry naming the same proxy (`localhost:2100` beside
            // `127.0.0.1:2100`): both reached one address and port. Accepted there, this entry is dropped,
            // said once; not yet accepted there, this one is tried again soon, when the other's fate is known.
            else if (m.code === ErrorCode.DUPLICATE_ID && twinOf(key) !== undefined) {
              const twin = twinOf(key)!;
              if (!held.has(twin)) lost(why);
              else {
                end();
                conn.destroy();
                dropped.add(key);
                sendBack({ type: 'DUPLICATE_ENTRY', proxy: key, twin, address: reached.get(twin)! });
              }
            }
            // A proxy shutting down, or one that took us out of its pool (we missed its PINGs while stopped, say): register again.
            else if (m.code === ErrorCode.SHUTTING_DOWN || m.code === ErrorCode.REMOVED) lost(why);
            // Refused for good (a wrong token, an id a live server holds): the operator must act. With this
            // proxy the only one, the server stops (exit 1); with several, it is this proxy's matter, as a
            // fleet member's refusal is in HAProxy or Envoy: the others' registrations stand, this one is
            // asked again after the longest backoff (its secret may be fixed), and the server stops only
            // once every proxy has refused it so.
            else if (m.code === ErrorCode.UNAUTHORIZED || m.code === ErrorCode.DUPLICATE_ID) {
              refusedForGood.add(key);
              // Our own registration, perhaps, through another entry naming this proxy under a name that reaches it at another address (`localhost` as ::1 beside 127.0.0.1).
              const mine = m.code === ErrorCode.DUPLICATE_ID ? [...held].filter((k) => k !== key) : [];
              const message = mine.length ? `${m.message}; or this id is this server's own registration through another entry of --revproc naming the same proxy: it is registered with ${mine.join(' and ')}, which may be the proxy at ${key} by another name or address; if so, list that proxy once` : m.message;
              if (refusedForGood.size < input.proxies.length - dropped.size) lost(why, input.maxMs, { code: m.code, message });
              else {
                end();
                sendBack({ type: 'REFUSED', proxy: key, code: m.code, message: m.message });
              }
            }
            // Anything else (OVERLOADED past its --max-servers, TIMEOUT, BAD_REQUEST, a code newer than this
            // server knows) may pass: tried again under the backoff. It stopped the server, every registration with it.
            else lost(why);
          }
          else {
            // Only PINGs and ERRORs come on a registration: anything else is ignored, and said once per proxy, then counted.
            const what = m.type === MsgType.ERROR ? `ERROR about request ${m.seq} (${m.code})` : `${MSG_NAMES[m.type] ?? 'type ' + String(m.type)} (type ${m.type})`;
            instead ??= `a ${what}`;
            input.logger.repeated('warn', 'registration_unexpected', key, 1, (n, span) => span
              ? `The reverse proxy at ${key} sent ${fmt(n)} more message(s) not allowed on a registration connection ${span}: ignored`
              : `The reverse proxy at ${key} sent a ${what} on the registration connection, where only PING and ERROR are allowed: ignored`, { proxy: key, type: m.type });
          }
        }
      },
      error: (err: NodeJS.ErrnoException) => lost(
        err instanceof ConnectionTimeout ? `it stalled: ${err.message}`
        : err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${key}`
        : err.code === 'ETIMEDOUT' && accepted ? `the reverse proxy at ${key} stopped answering (TCP timed out: its keepalive probes or resent data got no reply): it is cut off or down`
        : sourceDialError(err, from) ?? describeDialError(err, ep.host)),
      // Before its acceptance, over mutual TLS, most likely for this server's certificate (TLS 1.3 tells the dialler nothing).
      // Without TLS, before its acceptance: most likely a TLS listener, which takes the setup for a bad handshake and closes.
      complete: () => lost(`the reverse proxy closed the registration connection${accepted ? '' : input.tls?.cert ? ` before accepting it: it may have ${CERT_REFUSED}` : input.tls ? '' : ` before accepting it, without a word: ${CLOSED_UNACCEPTED}`}`),
    });
  };

  /** Another entry whose registration reached the address and port `key`'s did (the same proxy), if any. */
  const twinOf = (key: string): string | undefined => {
    const at = reached.get(key);
    return at === undefined ? undefined : [...reached].find(([k, a]) => k !== key && a === at)?.[0];
  };

  for (const ep of input.proxies) attempt(ep, input.initialMs, false);

  /** No more dials: the timers of those to come cancelled, those under way or not yet accepted abandoned (draining or stopping alike). */
  const stopDialling = (): void => {
    stopping = true;
    for (const t of timers) t.cancel();
    for (const giveUp of [...dialling]) giveUp();
  };
  receive((e) => {
    if (e.type === 'RENEW_TLS') {
      if (!input.plain) input.tls = e.tls;
      input.served = e.tls.cert;
      return;
    }
    // DEREGISTER_ALL: the server is draining.
    stopDialling();
    for (const conn of live.values()) conn.send({ type: MsgType.DEREGISTER, id: input.setup.id });
  });
  return () => {
    stopDialling();
    for (const conn of live.values()) {
      conn.endWith();
      input.closing.add(conn);
    }
  };
});

function setupMsg(context: ServerContext): SetupMsg {
  return serverSetup({ id: context.opts.id, policy: context.opts.policy, port: context.port, token: context.opts.token, tls: Boolean(context.opts.tls?.cert) });
}

/**
 * The SETUP a revproxy server registers with: its id, policy and listen port, its token when it has one, and how
 * its port serves (the bench's stand-ins register real servers with it, as the servers would themselves).
 */
export function serverSetup(s: { id: string; policy: string; port: number; token?: string | undefined; tls: boolean }): SetupMsg {
  const m: SetupMsg = { type: MsgType.SETUP, id: s.id, privPolyId: s.policy, listenport: s.port };
  if (s.token !== undefined) m.token = s.token;
  // How its port serves, for a proxy to refuse a registration it could not dial (docs/PROTOCOL.md, SETUP); the JSON wire writes no such field.
  m.tls = s.tls;
  return m;
}

/**
 * The proxy dials a server back at the address its registration came from, at its listenport
 * (docs/PROTOCOL.md, SETUP): why that fails when the server listens elsewhere - on 127.0.0.1
 * (the default) and registered over IPv6 (`--revproc [::1]:2100`, or `localhost` resolving to
 * ::1 first), or on one address of a host whose route to the proxy leaves from another - or
 * undefined. The proxy would only report the server unreachable, its connection refused.
 */
export function dialBackProblem(listenHost: string, local: string | undefined, port: number, bound?: string): string | undefined {
  const address = listenAddressOf(listenHost, bound);
  if (!local || address === undefined) return undefined;
  const named = address !== listenHost;
  const from = plainIPv4(local);
  const canon = canonicalHost(address);
  if (canon === '::' || (canon === '0.0.0.0' ? isIP(from) === 4 : canon === canonicalHost(from))) return undefined;
  return `it will dial ${hostPort(from, port)}, the address this registration comes from, but this server listens on ${named ? `${listenHost} (${address})` : address} only: `
    + `start it with --host ${from} (or --host :: for every address)${isIP(from) !== isIP(address) ? `, or give the proxy by an IPv${isIP(address)} address in --revproc` : ''}`;
}

/**
 * The address this server listens on, as an IP: `--host` itself, or for a name (--host server.internal) the
 * address the listener bound, which the name resolved to; undefined while that is not known.
 */
function listenAddressOf(listenHost: string, bound: string | undefined): string | undefined {
  const address = isIP(listenHost) === 0 ? bound : listenHost;
  return address !== undefined && isIP(address) !== 0 ? address : undefined;
}

/**
 * The local address a registration to `host` leaves from: the address this server listens on, when it
 * is one address (not every address) that can dial `host` (a name, or an address of its family). The
 * proxy dials a server back at the address its registration comes from: left to the kernel, that was
 * the route's own (127.0.0.1 for a proxy on 127.0.0.7; the address of another interface on a host with
 * several), and a server listening on one address was registered and never reached, as HAProxy's
 * `source` and nginx's `proxy_bind` would have it leave from that address. Undefined: the kernel's choice.
 */
export function registrationSource(listenHost: string, bound: string | undefined, host: string): string | undefined {
  const address = listenAddressOf(listenHost, bound);
  if (address === undefined || isEveryAddress(address) || address.includes('%')) return undefined;
  const family = isIP(plainIPv4(unbracket(host)));
  return family === 0 || family === isIP(address) ? address : undefined;
}

/**
 * Why a registration dialled from `from` (`registrationSource`) failed, when that is the cause: the proxy is
 * not reachable from that address (EINVAL: a loopback address and a proxy on another machine), or its name has
 * addresses of the other family only (`NO_ADDRESS_OF_FAMILY`); else undefined (a name that does not resolve
 * at all is said as ever).
 */
export function sourceDialError(err: NodeJS.ErrnoException, from: string | undefined): string | undefined {
  if (from === undefined) return undefined;
  const then = `the proxy dials a server back at the address its registration comes from, so this server registers from the one it listens on (--host ${from}): `
    + 'start it with --host set to its address on the proxy\'s network (or --host :: for every address)';
  if (err.code === 'EINVAL' || err.code === 'ENETUNREACH' || err.code === 'EADDRNOTAVAIL') return `it cannot be reached from ${from} (${err.code}): ${then}`;
  if (err.code === NO_ADDRESS_OF_FAMILY) return `${err.message}, and this server listens on ${from}, an IPv${isIP(from)} address: ${then}`;
  return undefined;
}

/**
 * Say, as a registration connects (frames or JSON), when the proxy at `key` will not reach this server
 * (`dialBackProblem`): whether it said so (the certificate is then not looked at, `logCertificateProblem`).
 */
export function logDialBackProblem(input: RegistrationInput, key: string, local: string | undefined): boolean {
  const unreachable = dialBackProblem(input.listenHost, local, input.setup.listenport, input.listenAddress);
  if (unreachable) input.logger.error('unreachable_from_proxy', `The reverse proxy at ${key} cannot reach this server: ${unreachable}`, { proxy: key, listenHost: input.listenHost, from: local });
  return unreachable !== undefined;
}

/**
 * Say when the proxy at `key` will refuse this server's certificate (`served`) as it dials it back over TLS: checked
 * against `serverName` when the proxy said, as it accepted the registration, that it verifies that name in the
 * address's place (`PingMsg.serverName`, its upstream_tls.server_name), with the proxy's own check and words; else
 * against the address the registration comes from (`local`), which the proxy dials and verifies (it has no name for
 * it). A certificate naming only host names (an internal CA's usual kind) was refused at every dial, and this server
 * heard only of a TLS connection closed before its handshake was done. A proxy from before 2026-12-07 says nothing of
 * its server_name, and this server checks the address: the address line says what such a proxy may verify instead.
 */
export function logCertificateProblem(input: RegistrationInput, key: string, local: string | undefined, serverName?: string): void {
  if (!input.served) return;
  if (serverName !== undefined) {
    const refused = certificateMissesName(input.served, serverName);
    if (refused) input.logger.error('certificate_not_for_name', `The reverse proxy at ${key} will refuse this server over TLS: it verifies the name ${serverName} in this server's certificate (--tls-cert), as it said accepting this registration: ${refused}`, { proxy: key, serverName });
    return;
  }
  const from = local === undefined ? undefined : plainIPv4(local);
  const misses = from === undefined ? undefined : certificateMissesAddress(input.served, from);
  if (misses) {
    input.logger.error('certificate_not_for_address', `The reverse proxy at ${key} cannot reach this server over TLS: it dials it back at ${from}, the address this registration comes from, and checks that this server's certificate (--tls-cert) names that address: ${misses}: `
      + `give this server a certificate with IP:${from} in its subjectAltName, or have the proxy verify a DNS name the certificate carries in the address's place (its upstream_tls.server_name: a proxy of 2026-12-07 or later says so as it accepts the registration, and this line is then not said; one from before cannot), or register through the registry (--registry), whose entries name --advertise, the name its certificate gives`, { proxy: key, from });
  }
}

/**
 * A `--revproc` name resolving to several addresses of one family (a Kubernetes headless service,
 * a DNS round robin) is dialled as one proxy: the dial tries them in turn and registers with the
 * first that answers, as a client connects to one, and never with each. Why that matters when
 * each address is a proxy, in words - or undefined for an address, or a name with one address
 * per family (`localhost` as ::1 and 127.0.0.1 is one host).
 */
export function severalAddresses(host: string, addresses: string[], reached: string): string | undefined {
  if (isIP(host) !== 0) return undefined;
  const distinct = [...new Set(addresses.map(plainIPv4))];
  if (distinct.filter((a) => isIP(a) === 4).length < 2 && distinct.filter((a) => isIP(a) === 6).length < 2) return undefined;
  return `${host} resolves to ${distinct.length} addresses (${distinct.join(', ')}) and this server registered with the first that answered (${plainIPv4(reached)}) only: `
    + 'if each is a proxy (a Kubernetes headless service, a DNS round robin), the others have no server of this policy from it and answer NO_SERVER: '
    + 'list every proxy in --revproc (HOST:PORT,HOST:PORT,...), or register through the registry (--registry)';
}

/**
 * Say, as a registration to a proxy given by name connects, when the name stands for several
 * addresses (`severalAddresses`): once for each set of addresses the name resolves to.
 */
export function logSeveralAddresses(input: RegistrationInput, key: string, host: string, socket: Socket, said: Map<string, string>): void {
  if (isIP(host) !== 0) return;
  const addresses: string[] = [];
  socket.on('lookup', (err: Error | null, address: string) => void (err || addresses.push(address)));
  whenReady(socket, () => {
    const set = [...new Set(addresses)].sort().join(' ');
    const why = severalAddresses(host, addresses, socket.remoteAddress ?? '?');
    if (!why || said.get(key) === set) return;
    said.set(key, set);
    input.logger.warn('several_proxies', `The reverse proxy at ${key} may be several: ${why}`, { proxy: key, addresses: set });
  });
}

/** Whether `proxy` (a registration's name: `registered`, an event's `proxy`) is the registry's rather than a proxy's. */
const viaRegistry = (proxy: string): boolean => proxy.startsWith('registry ');

/**
 * How log lines name where a server registers: a proxy (`HOST:PORT`), or the
 * registry (`registry etcd://... (key)`), which every proxy watching it reads.
 */
function registrar(proxy: string): { within: string; who: string } {
  return viaRegistry(proxy)
    ? { within: `in the ${proxy}`, who: `the ${proxy}` }
    : { within: `with the reverse proxy at ${proxy}`, who: `the reverse proxy at ${proxy}` };
}

/**
 * Why the server cannot be told apart or cannot answer, if so: an `id` or `policy` the proxy would
 * refuse at registration (left out, empty, an object), a handler that is no function. Without an id
 * the server dialled the proxy and waited out `registerTimeoutMs` for nothing; a handler that is
 * a string registered and failed every request.
 */
export function badIdentity(opts: ServerOptions): string | undefined {
  return badId('id', opts.id) ?? badId('policy', opts.policy) ?? badHandler(opts.handler);
}

/**
 * Why the server's proxies cannot be its list, if so: one proxy given twice, however written
 * (`2100` and `127.0.0.1:2100`: `endpointKey`). It registered with that proxy twice, and the second
 * registration was refused its own id (DUPLICATE_ID) every few seconds, with advice to pick another.
 */
export function badProxies(proxies: readonly Endpoint[] | undefined): string | undefined {
  const twice = proxies && repeatedEndpoint(proxies);
  return twice && `proxies lists the reverse proxy at ${twice.key} twice (entries ${twice.first + 1} and ${twice.again + 1}): list each proxy once`;
}

/** Why `v` cannot be the server's `name` (its id or policy), if so. */
export function badId(name: 'id' | 'policy', v: unknown): string | undefined {
  if (!isIdValue(v)) return `${name} must be a string of 1 to ${MAX_ID_LENGTH} characters, got ${typeof v !== 'string' ? String(v) : v === '' ? 'an empty string' : `one of ${v.length}`}`;
  // UTF-8 cannot carry a lone surrogate: the encoder sent U+FFFD in its place, and the server registered as another id.
  const lone = typeof v === 'string' ? loneSurrogateIn(v) : undefined;
  return lone ? `${name} has ${lone}, which UTF-8 cannot carry: use well-formed text` : undefined;
}

/** Requests that may wait for a slot when `concurrency` is set. */
const DEFAULT_QUEUE_LIMIT = 1024;
/**
 * What is wrong with the numeric limits in `opts`, if anything: a limit of 0,
 * a negative one or NaN would leave the server answering nothing (no slot
 * ever free) or mean something else than meant (0 is "no limit" elsewhere).
 */
export function badLimit(opts: ServerOptions): string | undefined {
  return badWholeNumbers(opts, [
    ['concurrency', 1, ' (leave it out for no limit)'], ['queueLimit', 0, ''], ['queueTimeoutMs', 0, ' (0 = until the proxy\'s deadline)'], ['queueLifoAfterMs', 0, ' (0 = oldest first)'], ['handlerTimeoutMs', 0, ' (0 = never)'], ['delayMs', 0, ''],
    ['drainTimeoutMs', 0, ''], ['tcpKeepAliveMs', 0, ' (0 = off)'], ['maxFrameBytes', 1024, ''], ['maxBufferedBytes', 0, ' (0 = no limit)'], ['maxConnections', 1, ''], ['maxConnectionsPerPeer', 0, ' (0 = no limit)'], ['maxConnRatePerPeer', 0, ' (0 = no limit)'], ['maxTlsHandshakes', 0, ' (0 = no limit)'],
  ]);
}

/**
 * The first of `checks` (an option's name, its least, a hint, and its largest if it has one) whose
 * option is set and is neither a whole number in that range nor `Infinity` (no limit, where there
 * is no largest), said as what is wrong with it.
 */
export function badWholeNumbers<T extends object>(opts: T, checks: ReadonlyArray<readonly [keyof T & string, number, string, number?]>): string | undefined {
  for (const [name, min, hint, max] of checks) {
    const v: unknown = opts[name];
    if (v === undefined || (v === Infinity && max === undefined)) continue;
    if (typeof v === 'number' && Number.isInteger(v) && v >= min && (max === undefined || v <= max)) continue;
    const range = max === undefined ? `of at least ${min}` : `from ${min} to ${max}`;
    return `${name} must be a whole number ${range}${hint}, got ${typeof v === 'string' ? `'${v}'` : String(v)}`;
  }
  return undefined;
}

/** Connections a server keeps at once by default: its peers are proxies, each with a link and now and then a probe. */
export const DEFAULT_MAX_CONNECTIONS = 4096;
/** How long a handler may take before its request is answered TIMEOUT and its slot freed (ms). */
export const DEFAULT_HANDLER_TIMEOUT_MS = 30_000;
/**
 * How long a registry server's drain goes on taking new requests once etcd took its leaving (ms): the proxies
 * watching etcd stop sending at its entry saying so, and the requests they sent before it reached them run.
 * Past it each new request is answered SHUTTING_DOWN, not run (the proxy sends it to another server), and each
 * link is told in a PONG: a proxy that did not hear etcd (cut off from it) stops then, not at the drain timeout.
 * Proxies reached by etcd took the server out 23-27 ms after its drain began (two proxies, 120 requests a second
 * each); the grace is 40 times that, for a proxy busy or an etcd slow, and adds at most itself to a drain: in the
 * probe that found the cut proxy (requests of 200 ms), the drain took 1.47 s with it, not the 10 s drain timeout,
 * and 0.42 s with no proxy cut off (its requests in flight were done before the grace was).
 */
export const LEAVING_GRACE_MS = 1000;
/**
 * How long a drain waits for a proxy told this server leaves to close its connections here once none of its requests is
 * left to answer (ms): one that heard closes them at once (a proxy reading the DEREGISTER retires its link, closed at its
 * last answer), so one whose connections stay open this long, nothing read from them, is taken for not answering (stopped
 * with SIGSTOP, hung, cut off) and its connections are cut. Three of its PING intervals (1 s by default): a proxy busy for
 * longer than that is missing its own PINGs. Without it, a server with nothing in flight waited out its whole drain timeout
 * (35 s) for such a proxy.
 */
export const UNANSWERED_MS = 3000;
/** What a drain allows beyond the handler timeout: for the last answers to reach the proxies and for them to let go (ms). */
const DRAIN_MARGIN_MS = 5000;

/**
 * A server's drain timeout unless set: the handler timeout (30 s when there is
 * none) plus 5 s. A drain shorter than the handler timeout would cut off
 * requests the server had said it would give that long (HAProxy's soft stop
 * and Envoy's drain, likewise, wait for requests in flight by default).
 */
export function defaultDrainTimeoutMs(handlerTimeoutMs = DEFAULT_HANDLER_TIMEOUT_MS): number {
  return (handlerTimeoutMs || DEFAULT_HANDLER_TIMEOUT_MS) + DRAIN_MARGIN_MS;
}
const drainTimeoutOf = (opts: ServerOptions): number => opts.drainTimeoutMs ?? defaultDrainTimeoutMs(opts.handlerTimeoutMs);

export const serverMachine = setup({
  types: {
    context: {} as ServerContext,
    events: {} as ServerEvent,
    input: {} as ServerOptions,
  },
  actors: { requestListener, registrations },
  guards: {
    /** The registry is being told this server leaves (its registration is a registry's): DEREGISTERED or DEREGISTER_FAILED will come. */
    registryTold: ({ context }) => context.registered.some(viaRegistry),
  },
  delays: {
    drainTimeout: ({ context }) => drainTimeoutOf(context.opts),
    leavingGrace: LEAVING_GRACE_MS,
  },
  actions: {
    // The proxies learn it from a PONG on each link (sent now, and every one after) and from each request sent: answered SHUTTING_DOWN, not run (docs/PROTOCOL.md).
    // `entry`: what the server's registry entry did.
    refuseNew: sendTo('listener', ({ context }, params: { entry: string }) => ({
      type: 'REFUSE_NEW' as const,
      message: `server ${context.opts.id} is draining and did not run this request: send it to another server (its registry entry ${params.entry})`,
      leaving: `server ${context.opts.id} is draining, and its registry entry ${params.entry}`,
    })),
    renewTls: ({ context, event, self }) => {
      assertEvent(event, 'RENEW_TLS');
      context.opts = { ...context.opts, tls: event.tls };
      const children = self.getSnapshot().children as Record<string, { send(e: RenewTls): void } | undefined>;
      children.listener?.send(event);
      children.registrations?.send(event);
    },
    setPort: assign(({ event }) => {
      assertEvent(event, 'LISTENING');
      return { port: event.port, listenAddress: event.address };
    }),
    logStart: ({ context }) => {
      const { logger: log, opts } = context;
      log.info('start', `Server running with id ${opts.id}`, { id: opts.id });
      log.info('policy', `Server serving privacy policy ${opts.policy}`, { policy: opts.policy });
      const memory = budgetNote(context.budget.limit, '--max-buffered-bytes', context.memoryLimit);
      if (memory) log[memory.level]('memory_limit', memory.message, memory.fields);
      const conns = connectionsNote(context.maxConnections, context.maxConnectionsSet, DEFAULT_MAX_CONNECTIONS, '--max-connections', context.budget.limit);
      if (conns) log.info('connection_limit', conns.message, conns.fields);
      if (opts.handler || opts.concurrency !== undefined) {
        const timeout = opts.handlerTimeoutMs ?? DEFAULT_HANDLER_TIMEOUT_MS;
        const limit = `${opts.concurrency === undefined ? 'no limit' : `${opts.concurrency} at once, ${opts.queueLimit ?? DEFAULT_QUEUE_LIMIT} waiting${opts.queueTimeoutMs ? ` up to ${opts.queueTimeoutMs} ms` : ''}${opts.queueLifoAfterMs ? `, newest first once waiting ${opts.queueLifoAfterMs} ms` : ''}`}, ${timeout ? `${timeout} ms each at most` : 'no timeout'}`;
        log.info('handler', `Answering with ${opts.handler ? `handler ${opts.handler.name || '(anonymous)'}` : 'SHA1 of the payload'} (${limit})`, {
          handler: opts.handler?.name || (opts.handler ? 'anonymous' : 'sha1'), concurrency: opts.concurrency ?? null,
        });
      }
      const host = context.listenAddress ?? context.opts.listenHost ?? DEFAULT_LISTEN_HOST;
      log.info('listening', `Listening on port ${context.port} at ${host}`, { host, port: context.port });
      for (const p of context.proxies) log.info('connecting', `Connecting to the reverse proxy on port ${p.port}`, { proxy: hostPort(p.host, p.port) });
    },
    respond: ({ context, event }) => {
      assertEvent(event, 'REQUESTS');
      context.runner.take(event.caller, event.requests);
    },
    logRegistered: ({ context, event }) => {
      assertEvent(event, 'REGISTERED');
      const where = registrar(event.proxy).within;
      if (event.again) context.logger.info('reregistered', `Registered again ${where}`, { proxy: event.proxy });
      // The registry takes any entry: each proxy checks its proof, and only the proxies can say they refused it.
      else if (viaRegistry(event.proxy)) context.logger.info('registered', `Registered ${where}: each proxy reading it admits this server once its link answers and its proof holds under that proxy's secret for privacy policy ${context.opts.policy} (a wrong or missing --token is said only in the proxies' logs, as unauthorized lines)`, { proxy: event.proxy });
      else context.logger.info('registered', `Registered ${where}`, { proxy: event.proxy });
    },
    registered: assign(({ context, event }) => {
      assertEvent(event, 'REGISTERED');
      return { registered: [...context.registered.filter((p) => p !== event.proxy), event.proxy] };
    }),
    logLost: ({ context, event }) => {
      assertEvent(event, 'REGISTRATION_LOST');
      context.logger[event.repeat ? 'debug' : 'warn']('registration_lost', `Not registered ${registrar(event.proxy).within}: ${event.error}; retrying in ${event.retryInMs} ms`, {
        proxy: event.proxy, reason: event.error, retryInMs: event.retryInMs,
      });
    },
    logRefusedOne: ({ context, event }) => {
      assertEvent(event, 'REGISTRATION_REFUSED');
      const { proxy, code, message, retryInMs } = event;
      const others = context.proxies.length - 1;
      const who = registrar(proxy).who.replace(/^the/, 'The');
      context.logger.repeated('error', 'registration_refused', `${proxy} ${code}`, 1, (n, span) => span
        ? `${who} refused the registration (${code}) ${fmt(n)} more time(s) ${span}: ${message}`
        : `${who} refused the registration (${code}): ${message}; this server keeps its registrations with the ${others} other prox${others === 1 ? 'y' : 'ies'} and asks it again in ${retryInMs} ms`,
      { proxy, code, retryInMs });
    },
    logDuplicateEntry: ({ context, event }) => {
      assertEvent(event, 'DUPLICATE_ENTRY');
      context.logger.warn('revproc_duplicate', `--revproc lists the proxy at ${event.address} twice (as ${event.twin} and ${event.proxy}): this server is registered with it through ${event.twin}, and it refused the second registration through ${event.proxy} as server id ${context.opts.id} already registered (DUPLICATE_ID), this server's own; ${event.proxy} is not dialled again: list each proxy once`, {
        proxy: event.proxy, twin: event.twin, address: event.address,
      });
    },
    lost: assign(({ context, event }) => {
      assertEvent(event, ['REGISTRATION_LOST', 'REGISTRATION_REFUSED']);
      const why = event.type === 'REGISTRATION_LOST' ? event.error : `${event.code}: ${event.message}`;
      return { registered: context.registered.filter((p) => p !== event.proxy), unregistered: { ...context.unregistered, [event.proxy]: why } };
    }),
    setError: assign(({ event }) => {
      assertEvent(event, ['LISTEN_FAILED', 'REFUSED']);
      return { error: event.type === 'LISTEN_FAILED' ? event.error : `${registrar(event.proxy).who} refused the registration (${event.code}): ${event.message}` };
    }),
    logError: ({ context }) => context.logger.error('failed', context.error ?? 'unknown error', { id: context.opts.id }),
    logDraining: ({ context }) => {
      // Whom it tells: each proxy it is registered with now (its DEREGISTER is written), or the registry
      // (being written: etcd may not take it, then deregister_failed says so); with none, nobody.
      const told = context.registered.map((p) => registrar(p).who);
      const direct = context.registered.filter((p) => !viaRegistry(p)).map((p) => registrar(p).who);
      const registry = context.registered.filter(viaRegistry).map((p) => registrar(p).who);
      // The old JSON wire has no deregistration: its proxies learn it when this server stops taking their connections.
      const what = !told.length ? 'registered nowhere, so nobody to tell'
        : context.opts.wire === 'json' ? `the old JSON wire cannot tell ${told.join(' and ')} (it has no deregistration): no new connections are taken, so they see this server gone`
        // Sent, not told: whether a proxy read it, its connections closing say (or `drain_unanswered` that they did not).
        : [direct.length ? `sent ${direct.join(' and ')} a DEREGISTER, saying we are leaving` : '', registry.length ? `telling ${registry.join(' and ')} that we are leaving` : ''].filter(Boolean).join(', and ');
      const ms = drainTimeoutOf(context.opts);
      // The watch runs once a proxy is told (its DEREGISTER, or a registry server's PONGs once etcd took the leaving).
      const unanswered = context.opts.wire === 'json' || !told.length ? '' : `; a proxy told that then keeps a connection here silent ${UNANSWERED_MS} ms (nothing read, nothing left to write to it, no handler running) is taken for not answering and that connection cut`;
      context.logger.info('draining', `Draining: ${what}; finishing requests in flight (at most ${ms} ms${unanswered})`, { id: context.opts.id, registered: context.registered, drainTimeoutMs: ms });
    },
    /** The proxies told, this server holding nothing of theirs, kept their connections open: they do not answer, and were cut (`watchUnanswered`). */
    logUnanswered: ({ context, event }) => {
      assertEvent(event, 'UNANSWERED');
      const { peers, count, ms } = event;
      const one = peers.length === 1;
      const drain = drainTimeoutOf(context.opts);
      context.logger.warn('drain_unanswered', `The reverse prox${one ? 'y' : 'ies'} at ${peers.join(', ')} did not answer: ${one ? 'its' : 'their'} ${count} connection(s) here stayed open ${ms} ms after ${one ? 'it was' : 'they were'} told this server is leaving, with no request of ${one ? 'its' : 'theirs'} running here, nothing read and nothing left to write (a proxy that heard closes them once it has its answers). Stopped (SIGSTOP), hung or cut off, ${one ? 'it' : 'they'} may not have heard; cut them: the drain ends once no connection is left, not at its timeout (${drain} ms)`, { peers, count, ms });
    },
    /**
     * The drain's line said the registry is told; it was not: the proxies keep sending, and the drain waits for their links to
     * close. `drained`: none was open (the drain waited for etcd's answer only, to say this): the server stops now.
     */
    logUntold: ({ context, event }, params?: { drained: boolean }) => {
      assertEvent(event, 'DEREGISTER_FAILED');
      const ms = drainTimeoutOf(context.opts);
      const then = params?.drained ? 'no proxy has a link to this server open, so it stops now' : `the drain waits for their links to close, at most ${ms} ms (--drain-timeout)`;
      context.logger.warn('deregister_failed', `Could not tell the ${event.proxy} that this server is leaving: ${event.error}. Its proxies keep its entry until its lease ends and they reach etcd again: their links are told it is leaving (in its PONGs), and each request they send from now is answered SHUTTING_DOWN and not run, which takes this server out of a proxy's rotation (a proxy of this build or later; an older one keeps the link until the drain ends) and the request to another server; ${then}`, { proxy: event.proxy, error: event.error, drainTimeoutMs: ms });
    },
    logDrainTimedOut: ({ context }) => {
      // Said, not left to the stop line's count: the proxies retry these elsewhere or fail them, and a deploy should know.
      const n = context.runner.held;
      const ms = drainTimeoutOf(context.opts);
      if (n) context.logger.warn('drain_timeout', `Drain timeout (${ms} ms, --drain-timeout): cut off ${n} request(s) still running or waiting; their proxies try them on another server of the policy, or answer them UPSTREAM_FAILED`, { count: n, drainTimeoutMs: ms });
    },
    logStopped: ({ context }) => {
      const { answered } = context.runner;
      context.logger.flush(); // the summaries of what repeated come before the last line
      context.logger.info('stopped', `Server ${context.opts.id} stopped after answering ${answered} request(s)`, { id: context.opts.id, answered });
    },
  },
}).createMachine({
  id: 'server',
  context: ({ input }) => {
    const logger = input.logger ?? silentLogger;
    const clock = input.clock ?? systemClock;
    const memory = memoryLimit();
    const limit = input.maxBufferedBytes ?? defaultBufferBudget(memory);
    const budget = new BufferBudget(limit, logShed(logger, limit));
    return {
      opts: input,
      proxies: input.proxies ?? (input.proxy ? [input.proxy] : [{ ...DEFAULT_PROXY }]),
      logger,
      clock,
      port: input.listenPort,
      budget,
      memoryLimit: memory,
      maxConnections: input.maxConnections ?? defaultMaxConnections(DEFAULT_MAX_CONNECTIONS, limit),
      maxConnectionsSet: input.maxConnections !== undefined,
      runner: new HandlerRunner({
        serverId: input.id,
        policy: input.policy,
        handler: input.handler ?? sha1Handler,
        concurrency: input.concurrency ?? Infinity,
        queueLimit: input.queueLimit ?? DEFAULT_QUEUE_LIMIT,
        queueTimeoutMs: input.queueTimeoutMs ?? 0,
        queueLifoAfterMs: input.queueLifoAfterMs ?? 0,
        delayMs: input.delayMs ?? 0,
        handlerTimeoutMs: input.handlerTimeoutMs ?? DEFAULT_HANDLER_TIMEOUT_MS,
        behaviour: input.behaviour ?? 'normal',
        maxFrameBytes: input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
        clock,
        logger,
        budget,
      }),
      registered: [],
      unregistered: {},
      closing: new Closing(),
    };
  },
  invoke: {
    id: 'listener',
    src: 'requestListener',
    input: ({ context }) => ({
      id: context.opts.id,
      policy: context.opts.policy,
      concurrency: context.opts.concurrency,
      host: context.opts.listenHost ?? DEFAULT_LISTEN_HOST,
      port: context.opts.listenPort,
      maxFrameBytes: context.opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      lazyTextFrom: lazyTextFrom(context.memoryLimit),
      logger: context.logger,
      runner: context.runner,
      budget: context.budget,
      clock: context.clock,
      tls: context.opts.tls,
      closing: context.closing,
      maxConnections: context.maxConnections,
      maxConnectionsSet: context.maxConnectionsSet,
      maxConnectionsPerPeer: context.opts.maxConnectionsPerPeer ?? defaultConnsPerPeer(context.opts.listenHost ?? DEFAULT_LISTEN_HOST),
      maxConnRatePerPeer: context.opts.maxConnRatePerPeer ?? 0,
      maxTlsHandshakes: context.opts.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES,
    }),
  },
  // Renewed TLS files are taken in any state: for the listener's next handshakes and the registrations' next dials.
  on: { RENEW_TLS: { actions: 'renewTls' } },
  initial: 'starting',
  states: {
    starting: {
      on: {
        LISTENING: { target: 'online', actions: ['setPort', 'logStart'] },
        // No log line: the StartError that startServer throws carries the reason.
        LISTEN_FAILED: { target: 'failed', actions: 'setError' },
        STOP: { target: 'stopped' },
      },
    },
    online: {
      invoke: {
        id: 'registrations',
        src: 'registrations',
        input: ({ context }) => ({
          proxies: context.proxies,
          ...(context.opts.plainRegistration ? { plain: true } : { tls: context.opts.tls }),
          ...(context.opts.tls?.cert ? { served: context.opts.tls.cert } : {}),
          maxFrameBytes: context.opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
          setup: setupMsg(context),
          clock: context.clock,
          initialMs: context.opts.reconnectInitialMs ?? 200,
          maxMs: context.opts.reconnectMaxMs ?? 5000,
          keepAliveMs: context.opts.tcpKeepAliveMs ?? DEFAULT_TCP_KEEPALIVE_MS,
          listenHost: context.opts.listenHost ?? DEFAULT_LISTEN_HOST,
          listenAddress: context.listenAddress,
          logger: context.logger,
          closing: context.closing,
        }),
      },
      on: {
        // One action per read: an event costs about as much as answering a small request.
        REQUESTS: { actions: 'respond' },
        REGISTERED: { actions: ['logRegistered', 'registered'] },
        REGISTRATION_LOST: { actions: ['logLost', 'lost'] },
        REGISTRATION_REFUSED: { actions: ['logRefusedOne', 'lost'] },
        DUPLICATE_ENTRY: { actions: 'logDuplicateEntry' },
        REFUSED: { target: 'failed', actions: ['setError', 'logError'] },
      },
      initial: 'serving',
      states: {
        serving: {
          on: { STOP: 'draining' },
        },
        draining: {
          entry: [
            'logDraining',
            sendTo('registrations', { type: 'DEREGISTER_ALL' }),
            // `told`: a proxy has this server's DEREGISTER (a registry server's are told by REFUSE_NEW; the old JSON wire has none).
            sendTo('listener', ({ context }) => ({ type: 'DRAIN' as const, told: context.opts.wire !== 'json' && context.registered.some((p) => !viaRegistry(p)) })),
          ],
          after: { drainTimeout: { target: '#server.stopped', actions: 'logDrainTimedOut' } },
          on: {
            DRAINED: '#server.stopped',
            // The silent connections are cut: the drain ends at their close (DRAINED), or goes on for the others.
            UNANSWERED: { actions: 'logUnanswered' },
            STOP: '#server.stopped',
          },
          // A server registered directly (or on the old JSON wire) stays in `telling`: each proxy has its DEREGISTER on
          // the registration connection, and leaves at it. A registry server's proxies hear it from etcd - all but one
          // cut off from etcd, which kept sending for the whole drain timeout and had those in flight then cut off
          // (10.1 s and 433 requests in a probe with --drain-timeout 10000; 0.4 s and 75 without the cut): so the
          // server stops taking new requests itself, at once if etcd did not take its leaving, a grace after if it did.
          initial: 'telling',
          states: {
            telling: {
              on: {
                // Nothing left to finish, but etcd's answer still to come (at most two call timeouts: kept-key.ts `stop`): awaited,
                // so that the log says whether etcd took this server's leaving. The server stopped at once, and said nothing of it.
                DRAINED: { guard: 'registryTold', target: 'answerAwaited' },
                DEREGISTERED: 'told',
                DEREGISTER_FAILED: { target: 'refusing', actions: ['logUntold', { type: 'refuseNew', params: { entry: 'could not say it is leaving' } }] },
              },
            },
            told: {
              after: { leavingGrace: { target: 'refusing', actions: { type: 'refuseNew', params: { entry: `has said it is leaving for ${LEAVING_GRACE_MS} ms` } } } },
            },
            refusing: {},
            answerAwaited: {
              on: {
                DEREGISTERED: '#server.stopped',
                DEREGISTER_FAILED: { target: '#server.stopped', actions: { type: 'logUntold', params: { drained: true } } },
              },
            },
          },
        },
      },
    },
    stopped: { type: 'final', entry: 'logStopped' },
    failed: { type: 'final' },
  },
});

export type ServerActor = ActorRefFrom<typeof serverMachine>;
