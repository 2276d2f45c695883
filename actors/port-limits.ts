/**
 * What bounds a listening port, shared by the proxy's port and a server's:
 * how many connections it keeps (in all, and from one address), the
 * process's limit on open files, and how a connection cut by the buffer
 * budget, a refused TLS handshake and a connection closed on bad input are
 * logged.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type RequestListener, type Server as HttpServer, type ServerResponse } from 'node:http';
import { BlockList, isIP, type Server, type Socket } from 'node:net';
import { Server as TlsServer, TLSSocket } from 'node:tls';
import type { BudgetHolder } from '../transport/budget.js';
import { peerAddress, peerName } from '../transport/address.js';
import { ErrorCode } from '../transport/errors.js';
import { recogniseTlsRefusal, tlsFailureOf, type TlsFailure } from '../transport/foreign.js';
import { proxiedClient, tcpUnder } from '../transport/proxied.js';
import { systemClock, type Clock } from '../transport/clock.js';
import type { Connection } from '../transport/socket.js';
import { closedByProxy, namedCert, notAllowedName, notServerName, peerOf, revokedBy, subjectOf, type TlsMaterial, type UpstreamTlsMaterial } from '../transport/tls.js';
import type { HandshakeLimits } from './tls-handshakes.js';
import { fmt, type Logger } from './logger.js';

/** Why a listening port refused a connection as it came: past its limit in all, from an address holding its share, or from one opening them too fast (revproxy_connections_refused_total's reasons). */
export const REFUSE_REASONS = ['max_connections', 'per_peer', 'conn_rate', 'tls_handshakes'] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];

/** The limits a listener reads (a reload may change them in place; `retune` applies them). */
export interface ConnectionLimitsInput extends HandshakeLimits {
  /** Connections open at once; past it Node closes each new one at once. */
  maxConnections: number;
  /** Whether the operator set `maxConnections` (else it is the default, which the open-files limit lowers quietly). */
  maxConnectionsSet: boolean;
  /** Connections from one address at once (0: any number). */
  maxConnectionsPerPeer: number;
  /** New connections one address may open a second (0: any number; `tooFast`). */
  maxConnRatePerPeer?: number;
  /** What `tooFast` reads the time from. */
  clock?: Clock;
}

/**
 * The open-files limits of this process (`ulimit -Sn`, `ulimit -Hn`), from /proc (Node has no
 * getrlimit); undefined where /proc cannot tell (not Linux).
 */
export function fileLimits(): { soft: number; hard: number } | undefined {
  let text: string;
  try {
    text = readFileSync('/proc/self/limits', 'utf8');
  } catch {
    return undefined;
  }
  const line = text.split('\n').find((l) => l.startsWith('Max open files'));
  const [soft, hard] = (line ?? '').trim().split(/\s+/).slice(3, 5).map((v) => (v === 'unlimited' ? Infinity : Number(v)));
  return soft && hard ? { soft, hard } : undefined;
}

/**
 * Connections a process with this open-files limit may keep: the rest of its descriptors (an
 * eighth, at least 64, at most half) are left for Node's own, the links to servers, the logs,
 * etcd and a handler's files.
 */
export function fileRoom(soft: number): number {
  return soft - Math.min(Math.floor(soft / 2), Math.max(64, Math.ceil(soft / 8)));
}

/** The most descriptors the links to servers leave to clients (`clientRoom`). */
export const CLIENT_ROOM_MAX = 64;

/** Of the room `fileRoom` gives, the descriptors the links to servers leave to clients' connections: a sixteenth, at most `CLIENT_ROOM_MAX`, at least 1. */
export function clientRoom(room: number): number {
  return Math.max(1, Math.min(CLIENT_ROOM_MAX, Math.ceil(room / 16)));
}

/** The open-files limit that leaves room for `connections` (the least `soft` with `fileRoom(soft) >= connections`). */
export function filesFor(connections: number): number {
  return Math.max(connections + 64, Math.ceil((connections * 8) / 7));
}

/** What to do for `wanted` connections beside `links` links to servers (docs/CONFIG.md, "The open-files limit"); `total` names the setting. */
function raiseFileLimit(wanted: number, total: string, links = 0): string {
  const need = filesFor(wanted + links);
  return `to allow ${wanted}, raise the limit where the process is started to ${need} (ulimit -n ${need} in its shell, LimitNOFILE=${need} in its systemd unit, docker run --ulimit nofile=${need}), or lower ${total}`;
}

/**
 * The warn line for a limit on connections (`total` names it) set above the room this process's
 * open-files limit leaves, or undefined. The default is lowered quietly (as HAProxy derives its
 * maxconn). A start logs it, and `proxy --check` prints it, as `nginx -t` warns.
 */
export function fileLimitWarning(wanted: number, set: boolean, total: string, files = fileLimits()): { message: string; fields: Record<string, number> } | undefined {
  if (!files || !Number.isFinite(files.soft) || !set) return undefined;
  const room = fileRoom(files.soft);
  if (room >= wanted) return undefined;
  return {
    message: `This process may open ${files.soft} files (ulimit -n; its hard limit ${files.hard}), room for ${room} connections (a proxy's links to servers among them: one for each server registered) beside its logs and files, fewer than ${total} (${wanted}): connections past ${room} will be refused; ${raiseFileLimit(wanted, total)}`,
    fields: { soft: files.soft, hard: files.hard, limit: room, wanted },
  };
}

/**
 * The proxy's descriptors that its open-files limit bounds: its port's connections and its links
 * to servers (`connect` dials them, counted). Every registration comes with a link (an
 * old JSON server with up to --old-server-connections), which the port's connections must leave a
 * descriptor for: with `ulimit -n 256` the port took 150 registrations, the room it had, and their
 * links' dials failed EMFILE (each server logged unreachable) - past them registrations and clients
 * were closed unseen. So the port's limit is the room less the links open (`ConnectionLimits`), and
 * a direct registration whose link would find no descriptor is refused (`noRoomForLink`).
 */
export class LinkSockets {
  /** Link sockets open. */
  get open(): number {
    return this.sockets.size;
  }
  /** The port's connections open (`ConnectionLimits` counts them). */
  connections = 0;
  /** The process's open-files limit, as `ConnectionLimits` read it last. */
  soft = Infinity;
  /** Told each time `open` changes (the port's limits). */
  changed?: () => void;
  /** Dials a server with `dial` (link.ts's `SocketFactory`), its socket counted while open. */
  readonly connect: (host: string, port: number, tls?: UpstreamTlsMaterial) => Socket;
  /** The link sockets open (a renewed CRL closes those whose server's certificate it revokes: `closeRevoked`). */
  readonly sockets = new Set<Socket>();

  constructor(dial: (host: string, port: number, tls?: UpstreamTlsMaterial) => Socket) {
    this.connect = (host, port, tls) => {
      const socket = dial(host, port, tls);
      this.sockets.add(socket);
      this.changed?.();
      socket.once('close', () => {
        this.sockets.delete(socket);
        this.changed?.();
      });
      return socket;
    };
  }

  /**
   * Why a new server's link would find no descriptor (a registration connection is counted already), or undefined.
   * The last `clientRoom(room)` descriptors are not a link's to take: each server registered directly holds two (its
   * registration and its link), and 96 of them took all 192 a proxy under `ulimit -n 256` had, so every client's
   * connection was refused (2 CI runs in 6 of the operations spec's "the links to servers count against the open-files limit").
   */
  noRoomForLink(): string | undefined {
    if (!Number.isFinite(this.soft)) return undefined;
    const room = fileRoom(this.soft);
    const kept = clientRoom(room);
    if (this.connections + this.open < room - kept) return undefined;
    return `the proxy has no file descriptor for its link: ${this.connections} connections and ${this.open} links to servers fill the ${room} its open-files limit leaves room for (ulimit -n ${this.soft}) but the ${kept} kept for clients; raise it (docs/CONFIG.md, "The open-files limit")`;
  }
}

/** For sockets refused before they become connections: their errors are of no interest. */
const ignore = (): void => {};

/**
 * Who may stay connected to a listening port. Refusals are a flood a peer
 * can make, so each kind is logged once, then once per interval with a count.
 */
export class ConnectionLimits {
  private readonly perPeer = new Map<string, number>();
  /** Connections each address opened in this second (`second`) and in the one before (`tooFast`). */
  private opened = new Map<string, number>();
  private openedBefore = new Map<string, number>();
  private second = -Infinity;
  private server?: Server;
  /** The process's open-files limit when `retune` last read it. */
  private softFiles = Infinity;

  /**
   * `names` says how the log names the two limits (a config key or a flag). The open-files limit
   * lowers a default limit in all quietly (as HAProxy derives its maxconn from it): only a limit
   * set (`maxConnectionsSet`) above it is worth a line at start.
   */
  constructor(
    private readonly limits: ConnectionLimitsInput,
    private readonly logger: Logger,
    private readonly names: { total: string; perPeer: string; connRate?: string },
    /** Told the limit in all each time it is applied (start, reload, a link opened or closed). */
    private readonly applied?: (limit: number) => void,
    /** The proxy's links to servers: the descriptors they hold are not the port's to take. */
    private readonly links?: LinkSockets,
    /** Told each connection refused as it came, and why. */
    private readonly refused?: (reason: RefuseReason) => void,
  ) {}

  /** Hold `server` to the limit on connections in all (before it listens). */
  watch(server: Server): void {
    this.server = server;
    this.retune();
    if (this.links) this.links.changed = () => this.apply();
    const { logger } = this;
    server.on('drop', () => {
      this.refused?.('max_connections');
      logger.repeated('warn', 'conn_refused', '', 1, (n, span) => `Refused ${span ? `${fmt(n)} connection(s) ${span}` : 'a connection'}: ${this.refusedWhy()}`, { limit: server.maxConnections });
    });
  }

  /** Why a connection past the limit in all was refused. */
  private refusedWhy(): string {
    const max = this.server!.maxConnections;
    const wanted = this.limits.maxConnections;
    if (max >= wanted) return `${max} connections are open (${this.names.total}): raise ${this.names.total} to keep more`;
    const links = this.links?.open ?? 0;
    const beside = links > 0 ? ` beside its ${links} link(s) to servers, a descriptor each` : '';
    return `${max} connections are open, the most this process's open-files limit leaves room for${beside} (ulimit -n ${this.softFiles}; ${this.names.total} is ${wanted}): ${this.raise(links)}`;
  }

  private raise(links = 0): string {
    return raiseFileLimit(this.limits.maxConnections, this.names.total, links);
  }

  /**
   * Apply the limits as they are now (at start, after a reload). Past the process's open-files
   * limit the kernel refuses the descriptor and libuv closes each new connection unseen, with no
   * line in any log, and the links to servers, a reopened log and etcd fail alike: so the limit
   * on connections is kept below it, with room to spare (`fileRoom`), and a warn line says what
   * to raise.
   */
  retune(): void {
    if (!this.server) return;
    const files = fileLimits();
    this.softFiles = files?.soft ?? Infinity;
    if (this.links) this.links.soft = this.softFiles;
    this.apply();
    const warning = fileLimitWarning(this.limits.maxConnections, this.limits.maxConnectionsSet, this.names.total, files);
    if (warning) this.logger.warn('file_limit', warning.message, warning.fields);
  }

  /** Set the port's limit: `maxConnections`, or the room the open-files limit leaves beside the links to servers (at least 1: 0 is no limit to Node). */
  private apply(): void {
    if (!this.server) return;
    const room = Number.isFinite(this.softFiles) ? fileRoom(this.softFiles) - (this.links?.open ?? 0) : Infinity;
    const max = Math.max(1, Math.min(this.limits.maxConnections, room));
    if (max === this.server.maxConnections) return;
    this.server.maxConnections = max;
    this.applied?.(max);
  }

  /**
   * A socket just accepted: its address when it may stay (counted until
   * `left`), or undefined when its address has too many open (the socket is
   * destroyed). `from` is the client a trusted balancer's PROXY header named,
   * counted in place of the balancer.
   */
  admit(socket: Socket, from?: string): string | undefined {
    const addr = peerAddress(socket, from);
    const n = (this.perPeer.get(addr) ?? 0) + 1;
    const limit = this.limits.maxConnectionsPerPeer;
    if (limit && n > limit) {
      socket.on('error', ignore);
      this.refused?.('per_peer');
      this.logger.repeated('warn', 'conn_refused', addr, 1, (k, span) => `Refused ${span ? `${fmt(k)} connection(s)` : 'a connection'} from ${addr}${span ? ` ${span}` : ''}: it has ${limit} open (${this.names.perPeer}); raise ${this.names.perPeer} (0: no limit) if that address stands for many clients`, {
        peer: addr, limit,
      });
      socket.destroy();
      return undefined;
    }
    this.perPeer.set(addr, n);
    if (this.links) this.links.connections++;
    return addr;
  }

  /**
   * Whether a socket just accepted comes from an address opening connections faster than
   * `maxConnRatePerPeer` a second: it is then destroyed, before a TLS handshake or a read (a peer
   * opening 84 TLS connections a second, each closed after its handshake, cost the proxy about 2 ms
   * of CPU each, and another client's p50 rose from 0.8 to 17 ms). The rate is HAProxy's
   * `conn_rate(1s)`: this second's connections plus the last second's, weighted by what is left of
   * this one; refused ones count too (as a `track-sc0` before the reject), so an address that keeps
   * opening them stays refused until it slows down. The two maps hold the addresses of two seconds
   * only. `from` is the client a trusted balancer's header named.
   */
  tooFast(socket: Socket, from?: string): boolean {
    const limit = this.limits.maxConnRatePerPeer ?? 0;
    if (!limit) return false;
    const now = (this.limits.clock ?? systemClock).now();
    const second = Math.floor(now / 1000);
    if (second !== this.second) {
      this.openedBefore = second === this.second + 1 ? this.opened : new Map();
      this.opened = new Map();
      this.second = second;
    }
    const addr = peerAddress(socket, from);
    const n = (this.opened.get(addr) ?? 0) + 1;
    this.opened.set(addr, n);
    const rate = n + (this.openedBefore.get(addr) ?? 0) * (1 - (now - second * 1000) / 1000);
    if (rate <= limit) return false;
    socket.on('error', ignore);
    this.refused?.('conn_rate');
    this.logger.repeated('warn', 'conn_refused', `${addr}\0rate`, 1, (k, span) => `Refused ${span ? `${fmt(k)} connection(s)` : 'a connection'} from ${addr}${span ? ` ${span}` : ''}: it opens more than ${limit} a second (${this.names.connRate ?? 'its limit'}); it is let in again once it slows down. Raise ${this.names.connRate ?? 'it'} (0: no limit) if that address stands for many clients`, {
      peer: addr, limit,
    });
    socket.destroy();
    return true;
  }

  /** A connection `admit` let in has closed. */
  left(addr: string): void {
    if (this.links) this.links.connections--;
    const n = (this.perPeer.get(addr) ?? 1) - 1;
    if (n > 0) this.perPeer.set(addr, n);
    else this.perPeer.delete(addr);
  }
}

/**
 * How a connection the buffer budget cut is logged: a crowd of peers cut
 * must not become a log flood, so one line, then one per interval with a
 * count (per address).
 */
export function logShed(logger: Logger, limit: number) {
  return (holder: BudgetHolder, bytes: number): void => {
    const conn = holder as Connection;
    logger.repeated('warn', 'budget_shed', conn.remoteAddress, 1, (n, span) => span
      ? `Closed ${n} connection(s) from ${conn.remoteAddress} ${span}: the buffer budget of ${limit} bytes (--max-buffered-bytes) was full and each held the most`
      : `Closed connection from ${conn.describe()}: the buffer budget of ${limit} bytes (--max-buffered-bytes) is full and it held the most (${bytes} bytes)`, {
      peer: conn.describe(), bytes, code: ErrorCode.OVERLOADED,
    });
  };
}

/**
 * How the links to servers passing their bound together is logged (`BufferBudget.linksFull`): one
 * line, then one per interval with a count.
 */
export function logLinksFull(logger: Logger) {
  return (bytes: number, max: number): void => {
    logger.repeated('warn', 'links_backlog', 'links', 1, (n, span) => span
      ? `The links to servers filled their part of the buffer budget ${fmt(n)} more time(s) ${span}`
      : `The links to servers hold ${bytes} bytes of requests unwritten together, more than their part of the buffer budget (${max} bytes, --max-buffered-bytes / 4): servers read their links too slowly. Those that have not read what waits on theirs get no new requests until they do (the other servers of their policies take them, or they wait); the inspector shows them backlogged`,
    { unwritten: bytes, max });
  };
}

/**
 * Log the TLS handshakes `server` refuses (a plain-TCP peer, an untrusted
 * certificate): a crowd of them must not become a log flood, so one line,
 * then one per interval with a count (per address and reason). `failed` is
 * told each one, by its reason (`TLS_FAILURES`: the metric's).
 */
export function logTlsRefusals(server: Server, logger: Logger, failed?: (reason: TlsFailure) => void): void {
  if (!(server instanceof TlsServer)) return;
  // Node reports a handshake cut short (a reset, plain bytes then a reset) once its TLS socket is
  // destroyed, when that socket's address reads undefined. The accepted TCP socket keeps the
  // address it was first asked for, so ask before TLS takes the connection over (a prepended
  // listener runs before Node's TLS one), and read it there (`tcpUnder`).
  server.prependListener('connection', (raw: Socket) => void raw.remoteAddress);
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // A peer certificate Node refused itself (expired, another CA's) is reported as a hang-up: its verification error says why.
    const certificate = (socket as TLSSocket).authorizationError?.toString();
    const failure = tlsFailureOf(err.code, certificate);
    failed?.(failure);
    const refusal = recogniseTlsRefusal(err.code, certificate);
    const why = refusal?.message ?? err.message;
    // A socket a trusted balancer handed over names its client in its PROXY header: that is who was refused, not the balancer.
    const addr = peerAddress(socket.remoteAddress !== undefined ? socket : tcpUnder(socket) ?? socket, proxiedClient(socket)?.address);
    // Counted by address and reason: keyed by address alone, plain HTTP refused after a plain frame was counted as plain TCP.
    logger.repeated('warn', 'tls_refused', `${addr}\0${certificate ?? refusal?.kind ?? err.code ?? err.message}`, 1, (n, span) => `Refused ${span ? `${fmt(n)} TLS connection(s)` : 'a TLS connection'} from ${addr}${span ? ` ${span}` : ''}: ${why}`, { peer: addr, reason: certificate ?? err.message, failure });
  });
}

/**
 * Close the connections of `conns` (a listener's, over TLS) whose peer's certificate the CRLs of `tls`
 * revoke (a CRL signed by the key that signed the certificate: one whose signature does not verify revokes
 * nothing), as a reload that brings a CRL listing it does: a new handshake would be refused, and a
 * revoked certificate is most often a key that got out, so its connections open do not go on for as
 * long as their peer likes (HAProxy and Envoy leave them; nginx too). Only a revocation closes one:
 * a CRL that cannot vouch (past its nextUpdate, none from a CA) refuses new handshakes and leaves
 * those open. Each is logged (`tls_revoked`, one line per address, then counted). `links`: `sockets` are the proxy's
 * links to servers, each closed with its reason (`closedByProxy`), which its down line says. Returns how many.
 */
export function closeRevoked(sockets: Iterable<Socket>, tls: TlsMaterial, logger: Logger, setting: string, links = false): number {
  const what = links ? 'link to the server at' : 'connection from';
  const revoked = revokedBy(tls);
  if (!revoked) return 0;
  let closed = 0;
  for (const socket of sockets) {
    const held = socket instanceof TLSSocket && !socket.destroyed ? peerOf(socket) : undefined;
    if (!held) continue;
    const crl = revoked(held.cert, held.chain);
    if (!crl) continue;
    const peer = held.cert;
    closed++;
    const addr = peerAddress(socket, proxiedClient(socket)?.address);
    const at = socket.remotePort === undefined ? addr : peerName(addr, socket.remotePort);
    logger.repeated('warn', 'tls_revoked', addr, 1, (n, span) => (span
      ? `Closed ${fmt(n)} more ${what} ${addr} ${span}: their peers' TLS certificates are revoked by ${setting}`
      : `Closed the ${what} ${at}: its peer's TLS certificate (serial ${peer.serialNumber}, ${subjectOf(peer)}) is revoked by the CRL of ${crl.issuerName} in ${setting}`), { peer: at, serial: peer.serialNumber });
    // A link says why in its down line (`closedByProxy`): closed plainly, it said "connection closed by the server".
    socket.destroy(links ? closedByProxy(setting, `the server's TLS certificate (serial ${peer.serialNumber}, ${subjectOf(peer)}) is revoked by the CRL of ${crl.issuerName} there`) : undefined);
  }
  return closed;
}

/**
 * Close the proxy's links to servers (`sockets`, over TLS) whose server's certificate `names` (upstream_tls.names, as
 * a reload renews it) no longer allows, as a renewed CRL closes the revoked ones (`closeRevoked`): a link lives as long
 * as its server, and a narrowed restriction (a host taken out of the names) would otherwise reach it only once the
 * link fails. Each link dials again and is refused. So for `serverName` (upstream_tls.server_name): a link whose
 * server's certificate does not name the renewed one is closed, as a new dial would refuse it (a name moved off one
 * that got out reaches the links open). Each is logged (`tls_name_refused`, one line per address, then counted), and
 * closed with its reason (`closedByProxy`), which its down line says. Returns how many.
 */
export function closeNotAllowed(sockets: Iterable<Socket>, { names, serverName }: Pick<UpstreamTlsMaterial, 'names' | 'serverName'>, logger: Logger): number {
  if (!names?.length && serverName === undefined) return 0;
  let closed = 0;
  for (const socket of sockets) {
    // As its handshake ended (peerOf): read now, Node gives none for a link a moment old.
    const x509 = socket instanceof TLSSocket && !socket.destroyed ? peerOf(socket)?.cert : undefined;
    if (!x509) continue;
    const peer = namedCert(x509);
    const wrongName = serverName === undefined ? undefined : notServerName(peer, serverName);
    const why = wrongName ?? notAllowedName(peer, names);
    if (!why) continue;
    closed++;
    const addr = peerAddress(socket);
    const at = socket.remotePort === undefined ? addr : peerName(addr, socket.remotePort);
    logger.repeated('warn', 'tls_name_refused', addr, 1, (n, span) => (span
      ? `Closed ${fmt(n)} more link(s) to servers at ${addr} ${span}: their certificates do not carry the names upstream_tls asks for (server_name, names)`
      : `Closed the link to the server at ${at}: ${why}`), { peer: at });
    socket.destroy(closedByProxy(wrongName ? 'upstream_tls.server_name' : 'upstream_tls.names', why));
  }
  return closed;
}

/**
 * Log a connection closed on its bad input: the first from an address with
 * its own port and what was wrong, then one line per interval counting the
 * connections from that address (a crowd of them must not become a log
 * flood), which names the address only: the count is not one connection's.
 */
export function logBadInput(logger: Logger, conn: Connection, err: { code: string; message: string }, fields: Record<string, unknown> = {}): void {
  const addr = conn.remoteAddress;
  logger.repeated('warn', 'bad_input', `${addr}\0${err.code}`, 1, (n, span) => span
    ? `Closed ${fmt(n)} connection(s) from ${addr} on bad input (${err.code}) ${span}; the first was: ${err.message}`
    : `Closed connection from ${conn.describe()}: ${err.message}`, {
    peer: conn.describe(), code: err.code, ...fields,
  });
}

/**
 * Connections the process's own HTTP ports (the admin endpoint, the inspector) hold at once.
 * Probes, scrapes and a few inspector pages need far fewer. Unbounded, 1,500 connections to the
 * admin port that sent nothing took every descriptor a proxy with `ulimit -n 1024` had - its
 * clients' connections were reset, servers could not register, `/healthz` did not answer, and no
 * line said why - for as long as their peer kept them: Node closes a connection that sends nothing never.
 */
export const HTTP_MAX_CONNECTIONS = 64;
/** How long an HTTP connection may send nothing, or take to send its request's headers (a probe sends them at once). */
export const HTTP_IDLE_TIMEOUT_MS = 10_000;

/**
 * An HTTP server for one of the process's own ports (`port` names it in lines: 'the admin
 * endpoint', 'the inspector'): at most `HTTP_MAX_CONNECTIONS` open; a connection that sends
 * nothing for 10 s (`server.timeout`: Node has no such limit by default, and its `headersTimeout`
 * begins only with a request's first bytes) or has not sent its headers within 10 s, or its request
 * within 30 s, is closed, checked every second (Node checks every 30 s); one idle between requests
 * after 5 s. A response that streams (the inspector's events) turns its connection's idle timeout off.
 *
 * Past the limit a new connection takes the place of the oldest one with no request under way (one
 * that sent nothing yet, or only part of its headers, or idles between requests), which is closed
 * (`conn_evicted`); only when every one has a request under way (streams) is the new one closed
 * (`conn_refused`). Refusing the newest instead let one peer holding 64 connections that sent
 * nothing take the port from every health probe: 19 of 20 `/healthz` probes failed in a probe,
 * and a liveness probe failing so restarts the proxy.
 */
export function httpPort(port: string, logger: Logger, listener: RequestListener): HttpServer {
  const server = createServer({ connectionsCheckingInterval: 1000, headersTimeout: HTTP_IDLE_TIMEOUT_MS, requestTimeout: 30_000, keepAliveTimeout: 5_000 }, listener);
  server.timeout = HTTP_IDLE_TIMEOUT_MS;
  // Oldest first (a Set keeps the order things were added in), and those with a request under way.
  const open = new Set<Socket>();
  const busy = new Set<Socket>();
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    busy.add(req.socket);
    res.once('close', () => busy.delete(req.socket));
  });
  const said = (sock: Socket): string => (sock.remoteAddress ? peerName(sock.remoteAddress, sock.remotePort ?? 0) : 'a peer');
  server.on('connection', (sock: Socket) => {
    if (open.size >= HTTP_MAX_CONNECTIONS) {
      let idle: Socket | undefined;
      for (const s of open) if (!busy.has(s)) { idle = s; break; }
      if (!idle) {
        logger.repeated('warn', 'conn_refused', port, 1, (n, span) => `Refused ${span ? `${fmt(n)} connection(s) to ${port} ${span}` : `a connection to ${port} from ${said(sock)}`}: ${HTTP_MAX_CONNECTIONS} are open, the most it keeps, each with a request under way (streams of the inspector's events?). Look at what opens them`, { port, limit: HTTP_MAX_CONNECTIONS });
        sock.destroy();
        return;
      }
      open.delete(idle);
      logger.repeated('warn', 'conn_evicted', port, 1, (n, span) => `Closed ${span ? `${fmt(n)} idle connection(s) to ${port} ${span}` : `an idle connection to ${port} from ${said(idle!)}`} to take a new one: ${HTTP_MAX_CONNECTIONS} are open, the most it keeps, and the oldest with no request under way makes room (probes, scrapes and pages need a few; one that sends nothing is closed after ${HTTP_IDLE_TIMEOUT_MS / 1000} s anyway). Look at what opens them`, { port, limit: HTTP_MAX_CONNECTIONS });
      idle.destroy();
    }
    open.add(sock);
    sock.once('close', () => {
      open.delete(sock);
      busy.delete(sock);
    });
  });
  return server;
}

/**
 * Log the connections a listening server could not accept (Node reports them as the server's
 * 'error' and listens on): a warn line with the errno and what to do, then one per interval
 * with a count, per errno (a system out of descriptors fails every accept). `port` names a port
 * other than the one the connection limit `total` is for (the admin endpoint, the inspector).
 */
export function logAcceptErrors(logger: Logger, total: string, port?: string) {
  return (err: NodeJS.ErrnoException): void => {
    const code = err.code ?? 'error';
    const on = port ? ` on ${port}` : '';
    logger.repeated('warn', 'accept_failed', `${port ?? ''}\0${code}`, 1, (n, span) => `Could not accept ${span ? `${fmt(n)} connections${on} ${span}` : `a connection${on}`}: ${whyNotAccepted(err, total)}`, { code, error: err.message, ...(port ? { port } : {}) });
  };
}

/** A socket refused a descriptor (EMFILE, ENFILE), in words a person can act on; `lower` is what else to lower; undefined for another error. */
export function outOfDescriptors(err: NodeJS.ErrnoException, lower: string): string | undefined {
  if (err.code === 'EMFILE') return `this process has no file descriptor left (EMFILE, ulimit -n ${fileLimits()?.soft ?? '?'}): raise its open-files limit (docs/CONFIG.md, "The open-files limit"), or lower ${lower}`;
  if (err.code === 'ENFILE') return 'the system has no file descriptor left (ENFILE, its limit is fs.file-max): raise it (sysctl fs.file-max) or find the process holding them (lsof)';
  return undefined;
}

/** An accept error in words a person can act on. */
function whyNotAccepted(err: NodeJS.ErrnoException, total: string): string {
  switch (err.code) {
    case 'EMFILE':
    case 'ENFILE':
      return outOfDescriptors(err, total)!;
    case 'ENOBUFS':
    case 'ENOMEM':
      return `the kernel has no memory left for the socket (${err.code}): free memory on this machine, or lower ${total}`;
    case 'ECONNABORTED':
      return 'the peer reset it before it was accepted (ECONNABORTED): nothing to do unless it happens often (then look at what the peers are)';
    case 'EPERM':
      return 'a firewall rule refused it (EPERM): look at the machine\'s firewall rules';
  }
  return `${err.message}; the server listens on`;
}

/**
 * Why an entry of a list of trusted sources (`--proxy-protocol-from`) is not
 * an IP address or a network (`10.0.0.0/8`, `fd00::/8`), or undefined.
 */
export function badTrustedSource(entry: string): string | undefined {
  const [ip, bits, extra] = entry.split('/');
  const family = isIP(ip ?? '');
  if (family === 0 || extra !== undefined) return `'${entry}' is not an IP address or a network (e.g. 10.0.0.5, 10.0.0.0/8, fd00::/8)`;
  if (bits !== undefined && !(/^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128))) return `'${entry}': the prefix length of an IPv${family} network is 0 to ${family === 4 ? 32 : 128}`;
  return undefined;
}

/**
 * The sources whose connections must begin with a PROXY protocol header, as a
 * set to check an accepted socket's address against (an IPv4 address matches
 * its IPv4-mapped IPv6 form too, as a dual-stack listener reports it). The
 * entries are checked already (`badTrustedSource`).
 */
export function trustedSources(entries: readonly string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const e of entries) {
    const [ip, bits] = e.split('/') as [string, string | undefined];
    const type = isIP(ip) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) list.addAddress(ip, type);
    else list.addSubnet(ip, Number(bits), type);
  }
  return list;
}

/** Whether `list` (from `trustedSources`) holds `addr`. */
export function trusts(list: BlockList | undefined, addr: string | undefined): boolean {
  return list !== undefined && addr !== undefined && list.check(addr, isIP(addr) === 6 ? 'ipv6' : 'ipv4');
}

/**
 * Log a connection from a trusted balancer closed because it did not begin
 * with a whole PROXY protocol header: the first from an address with what was
 * wrong, then one line per interval with a count (a misconfigured balancer
 * sends every connection so).
 */
export function logNoProxyHeader(logger: Logger, socket: Socket, err: { code: string; message: string }): void {
  const addr = peerAddress(socket);
  const why = `connections from ${addr} must begin with a PROXY protocol header (it is in proxy_protocol_from): have the balancer send one (HAProxy: send-proxy-v2 on the server line; nginx stream: proxy_protocol on), or take it out of the list`;
  logger.repeated('warn', 'proxy_header_refused', addr, 1, (n, span) => span
    ? `Closed ${fmt(n)} connection(s) from ${addr} ${span} without a PROXY protocol header; the first: ${err.message}; ${why}`
    : `Closed connection from ${peerName(addr, socket.remotePort ?? 0)}: ${err.message}; ${why}`, {
    peer: peerName(addr, socket.remotePort ?? 0), code: err.code,
  });
}
