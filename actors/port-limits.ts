/**
 * What bounds a listening port, shared by the proxy's port and a server's:
 * how many connections it keeps (in all, and from one address), and how a
 * connection cut by the buffer budget, a refused TLS handshake and a
 * connection closed on bad input are logged.
 */
import type { Server, Socket } from 'node:net';
import { Server as TlsServer } from 'node:tls';
import type { BudgetHolder } from '../transport/budget.js';
import { ErrorCode } from '../transport/errors.js';
import { recogniseTlsRefusal } from '../transport/foreign.js';
import type { Connection } from '../transport/socket.js';
import { fmt, type Logger } from './logger.js';

/** The limits a listener reads (a reload may change them in place; `retune` applies them). */
export interface ConnectionLimitsInput {
  /** Connections open at once; past it Node closes each new one at once. */
  maxConnections: number;
  /** Connections from one address at once (0: any number). */
  maxConnectionsPerPeer: number;
}

/** For sockets refused before they become connections: their errors are of no interest. */
const ignore = (): void => {};

/**
 * Who may stay connected to a listening port. Refusals are a flood a peer
 * can make, so each kind is logged once, then once per interval with a count.
 */
export class ConnectionLimits {
  private readonly perPeer = new Map<string, number>();
  private server?: Server;

  /** `names` says how the log names the two limits (a config key or a flag). */
  constructor(
    private readonly limits: ConnectionLimitsInput,
    private readonly logger: Logger,
    private readonly names: { total: string; perPeer: string },
  ) {}

  /** Hold `server` to the limit on connections in all (before it listens). */
  watch(server: Server): void {
    this.server = server;
    this.retune();
    const { limits, logger, names } = this;
    server.on('drop', () =>
      logger.repeated('warn', 'conn_refused', '', 1, (n, span) => `Refused ${span ? `${fmt(n)} connections ${span}` : 'a connection'}: ${limits.maxConnections} connections are open (${names.total})`, { limit: limits.maxConnections }),
    );
  }

  /** Apply the limits as they are now (after a reload). */
  retune(): void {
    if (this.server) this.server.maxConnections = this.limits.maxConnections;
  }

  /**
   * A socket just accepted: its address when it may stay (counted until
   * `left`), or undefined when its address has too many open (the socket is
   * destroyed).
   */
  admit(socket: Socket): string | undefined {
    const addr = socket.remoteAddress ?? '?';
    const n = (this.perPeer.get(addr) ?? 0) + 1;
    const limit = this.limits.maxConnectionsPerPeer;
    if (limit && n > limit) {
      socket.on('error', ignore);
      this.logger.repeated('warn', 'conn_refused', addr, 1, (k, span) => `Refused ${span ? `${fmt(k)} connections` : 'a connection'} from ${addr}${span ? ` ${span}` : ''}: it has ${limit} open (${this.names.perPeer})`, {
        peer: addr, limit,
      });
      socket.destroy();
      return undefined;
    }
    this.perPeer.set(addr, n);
    return addr;
  }

  /** A connection `admit` let in has closed. */
  left(addr: string): void {
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
 * Log the TLS handshakes `server` refuses (a plain-TCP peer, an untrusted
 * certificate): a crowd of them must not become a log flood, so one line,
 * then one per interval with a count (per address).
 */
export function logTlsRefusals(server: Server, logger: Logger): void {
  if (!(server instanceof TlsServer)) return;
  // Node reports a handshake cut short (a reset, plain bytes then a reset) once its TLS socket is
  // destroyed, when that socket's address reads undefined. The accepted TCP socket keeps the
  // address it was first asked for, so ask before TLS takes the connection over (a prepended
  // listener runs before Node's TLS one), and read it there: the TLS socket's `_parent`.
  server.prependListener('connection', (raw: Socket) => void raw.remoteAddress);
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    const why = recogniseTlsRefusal(err.code)?.message ?? err.message;
    const addr = socket.remoteAddress ?? (socket as Socket & { _parent?: Socket })._parent?.remoteAddress ?? '?';
    logger.repeated('warn', 'tls_refused', addr, 1, (n, span) => `Refused ${span ? `${fmt(n)} TLS connections` : 'a TLS connection'} from ${addr}${span ? ` ${span}` : ''}: ${why}`, { peer: addr, reason: err.message });
  });
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
