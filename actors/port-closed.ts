/**
 * The proxy's port as the proxy stops: its connections closed, each client told, the requests
 * that came too late counted.
 */
import { ErrorCode } from '../transport/errors.js';
import { errorMsg, MsgType, type Message } from '../transport/messages.js';
import type { Connection } from '../transport/socket.js';
import type { Clock } from '../transport/clock.js';
import type { Peer } from './link.js';
import { fmt, type Logger } from './logger.js';
import type { ProxyObserver } from './proxy-options.js';

/** What a client connection is told as the stopped proxy closes it (an ERROR without a seq). */
export const CLOSING_WORDS = 'the proxy has stopped and closes this connection: a request sent on it and not answered was not read; send it to another proxy';

/**
 * The port's connections as the proxy stops. Once every request is answered (the drain's end)
 * the listener closes them, and each client connection on the frames wire is told so as its last
 * message: an ERROR without a seq, SHUTTING_DOWN, as HTTP/2's GOAWAY says which streams were not
 * taken. A request the client sent before it read that - on its way as the proxy closed - is read
 * and never run: it gets the access-log line (outcome SHUTTING_DOWN) and the metrics every request
 * gets, and a line says how many came. `closing` resolves once the connections have closed
 * (a peer that reads nothing is cut after 2 s: `Connection.endWith`), so a process exits after it.
 */
export class PortClosed {
  /** Requests read after their connection was told it closes. */
  unread = 0;
  private readonly late = new Set<Connection>();
  private waiting?: Set<Connection>;
  private finish?: () => void;
  /** Undefined until the listener closes its connections; then resolves once they have all closed. */
  closing?: Promise<void>;

  constructor(private readonly logger: Logger, private readonly clock: Clock, private readonly observer?: ProxyObserver) {}

  /**
   * Close every connection: a client's with its last word, when it holds nothing of the client's unanswered. A proxy
   * stopped before its drain ended (`kill()`: the actor stopped) has read requests it did not answer, which may
   * have run at servers: that connection closes without a word, as under SIGKILL. The word said of them too that
   * they were not read, and a client took them for never run (`RequestError.retryable`).
   */
  closeAll(conns: Iterable<Connection>): void {
    this.waiting = new Set(conns);
    this.closing = new Promise<void>((resolve) => (this.finish = resolve));
    for (const c of this.waiting) {
      // `owed` is the connection's peer (the listener's `accept`).
      const peer = c.owed as Peer;
      c.endWith(peer.role === 'client' && c.wire === 'frames' && peer.outstanding === 0 ? errorMsg(ErrorCode.SHUTTING_DOWN, CLOSING_WORDS) : undefined);
    }
    this.settle();
  }

  /** Messages read on a connection already closed by us: its requests are counted, never run. */
  read(peer: Peer, messages: Message[]): void {
    if (!this.waiting) return;
    const now = this.clock.now();
    for (const msg of messages) {
      if (msg.type !== MsgType.DATA) continue;
      this.unread++;
      this.late.add(peer.conn);
      this.observer?.answered?.(msg.privPoliId, undefined, ErrorCode.SHUTTING_DOWN, 0, { client: peer, msg, arrived: now }, 0);
    }
  }

  /** A connection's socket closed. */
  gone(conn: Connection): void {
    if (this.waiting?.delete(conn)) this.settle();
  }

  private settle(): void {
    if (this.waiting?.size !== 0 || !this.finish) return;
    if (this.unread > 0) {
      this.logger.info('unread_requests', `${fmt(this.unread)} request(s) came on ${fmt(this.late.size)} connection(s) after the proxy told them it closes (SHUTTING_DOWN): not read; their clients may send them to another proxy`, { count: this.unread, connections: this.late.size });
    }
    this.finish();
    this.finish = undefined;
  }
}
