/**
 * How many TLS handshakes a listening port has under way at once. A handshake begun holds
 * OpenSSL's state and buffers, 70-130 KB of the process's memory outside its heap and outside the
 * buffer budget, for as long as the peer takes to finish it (up to the handshake timeout): 5,000
 * connections that each sent 3 bytes of a ClientHello and no more took a proxy from 67 to 498 MB,
 * and a peer reopening each one the timeout closed kept it there. HAProxy bounds the same with
 * `maxsslconn`.
 *
 * So at most `max` handshakes are under way, and at most a sixteenth of them (at least 1) for one
 * address; a connection past either waits its turn as the TCP socket it is (a few KB, its reads
 * stopped at Node's 16 KB), taken in turns across addresses, so that one address's crowd does not
 * delay everyone else's first connection. One that waits longer than the handshake timeout is
 * closed, as its handshake would have been. Waiting is bounded too: at most `max` connections of
 * one address wait, at most four times `max` in all; past that a connection is closed at once.
 * A trusted balancer's connections are counted under the client its PROXY header named.
 */
import type { Server, Socket } from 'node:net';
import { tcpUnder } from '../transport/proxied.js';
import { systemClock, type Clock, type Timer } from '../transport/clock.js';
import { fmt, type Logger } from './logger.js';

/** The default of `max_tls_handshakes` (`--max-tls-handshakes`): 256 handshakes' state is 18-33 MB. */
export const DEFAULT_MAX_TLS_HANDSHAKES = 256;
/** One address may have this part of `max` under way at once. */
const PEER_PART = 16;
/** All addresses together may have this many times `max` waiting. */
const WAITING_TIMES = 4;

/** The limits the gate reads each time (a reload may change them in place). */
export interface HandshakeLimits {
  /** Handshakes under way at once (0: no limit). */
  maxTlsHandshakes?: number;
  /** What the waits' timeouts read the time from. */
  clock?: Clock;
}

interface Waiter {
  socket: Socket;
  start: () => void;
  timer: Timer;
}

/** For sockets closed before their handshake: their errors are of no interest. */
const ignore = (): void => {};

/** The handshakes a port's TLS server `secure` has under way, and the connections waiting to begin theirs. */
export class TlsHandshakes {
  /** The TCP sockets whose handshakes are under way, and their addresses. */
  private readonly underWay = new Map<Socket, string>();
  private readonly perPeer = new Map<string, number>();
  /** The sockets waiting, by address, in the order addresses take their turns. */
  private readonly waiting = new Map<string, Waiter[]>();
  private waitingCount = 0;

  /**
   * `timeoutMs` is the handshake timeout (read at each wait); `option` names the limit in lines;
   * `refused` is told each connection closed for it.
   */
  constructor(
    secure: Server,
    private readonly limits: HandshakeLimits,
    private readonly timeoutMs: () => number,
    private readonly logger: Logger,
    private readonly option: string,
    private readonly refused?: () => void,
  ) {
    // Done, a handshake leaves its TCP socket to the connection; failed or cut short, the socket closes.
    secure.on('secureConnection', (socket: Socket) => {
      const tcp = tcpUnder(socket);
      if (tcp) this.release(tcp);
    });
  }

  /**
   * Begin the handshake of `socket` (a TCP socket just accepted from `addr`): `start` hands it to
   * the TLS server, now or when its turn comes. A socket closed before its turn is forgotten.
   */
  begin(socket: Socket, addr: string, start: () => void): void {
    const max = this.limits.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES;
    if (!max) return start();
    if (this.underWay.size < max && (this.perPeer.get(addr) ?? 0) < peerMax(max) && !this.waiting.has(addr)) return this.run(socket, addr, start);
    const queue = this.waiting.get(addr) ?? [];
    if (queue.length >= max || this.waitingCount >= max * WAITING_TIMES) {
      const own = queue.length >= max;
      return this.refuse(socket, addr, own ? 'own-line' : 'line', `${own ? `${fmt(queue.length)} connections from that address wait to begin theirs` : `${fmt(this.waitingCount)} connections wait to begin theirs`}, beside the ${fmt(this.underWay.size)} handshakes under way (${this.option} ${max}, ${peerMax(max)} for one address)`);
    }
    // Paused, its reads stop at Node's high-water mark; TLS reads what it holds when it takes the socket over.
    socket.pause();
    socket.on('error', ignore);
    const ms = this.timeoutMs();
    const waiter: Waiter = {
      socket, start,
      timer: (this.limits.clock ?? systemClock).setTimeout(() => {
        if (!this.unqueue(addr, waiter)) return;
        const own = (this.perPeer.get(addr) ?? 0) >= peerMax(max);
        this.refuse(socket, addr, own ? 'own-wait' : 'wait', `its handshake could not begin within ${ms} ms, the handshake timeout: ${fmt(this.perPeer.get(addr) ?? 0)} of that address's handshakes and ${fmt(this.underWay.size)} in all were under way (${this.option} ${max}, ${peerMax(max)} for one address)`);
      }, ms),
    };
    queue.push(waiter);
    this.waiting.set(addr, queue);
    this.waitingCount++;
    socket.once('close', () => {
      if (this.unqueue(addr, waiter)) waiter.timer.cancel();
    });
  }

  private run(socket: Socket, addr: string, start: () => void): void {
    this.underWay.set(socket, addr);
    this.perPeer.set(addr, (this.perPeer.get(addr) ?? 0) + 1);
    socket.once('close', () => this.release(socket));
    start();
  }

  /** A handshake ended (done, failed or cut short): the next waiting connection in turn begins its own. */
  private release(socket: Socket): void {
    const addr = this.underWay.get(socket);
    if (addr === undefined) return;
    this.underWay.delete(socket);
    const n = (this.perPeer.get(addr) ?? 1) - 1;
    if (n > 0) this.perPeer.set(addr, n);
    else this.perPeer.delete(addr);
    this.next();
  }

  /** Begin waiting connections' handshakes while there is room: addresses take turns, each its oldest first. */
  private next(): void {
    const max = this.limits.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES;
    for (const [addr, queue] of this.waiting) {
      if (max && this.underWay.size >= max) return;
      if (max && (this.perPeer.get(addr) ?? 0) >= peerMax(max)) continue;
      const [waiter] = queue;
      if (!waiter) continue;
      this.unqueue(addr, waiter);
      waiter.timer.cancel();
      // Its turn taken, the address goes to the end of the line.
      const rest = this.waiting.get(addr);
      if (rest) {
        this.waiting.delete(addr);
        this.waiting.set(addr, rest);
      }
      waiter.socket.off('error', ignore);
      this.run(waiter.socket, addr, waiter.start);
      return this.next();
    }
  }

  /** Take `waiter` out of its address's line; false when it was not in it. */
  private unqueue(addr: string, waiter: Waiter): boolean {
    const queue = this.waiting.get(addr);
    const at = queue ? queue.indexOf(waiter) : -1;
    if (!queue || at < 0) return false;
    queue.splice(at, 1);
    if (queue.length === 0) this.waiting.delete(addr);
    this.waitingCount--;
    return true;
  }

  /**
   * Close `socket`: past its address's waiting line (`own-line`) or every address's (`line`), or after waiting too long, its
   * address's share under way (`own-wait`) or the port's (`wait`); each kind logged once an interval, an address's own per address.
   */
  private refuse(socket: Socket, addr: string, kind: 'own-line' | 'line' | 'own-wait' | 'wait', why: string): void {
    socket.on('error', ignore);
    this.refused?.();
    const limit = this.limits.maxTlsHandshakes ?? DEFAULT_MAX_TLS_HANDSHAKES;
    if (kind === 'own-line' || kind === 'own-wait') {
      this.logger.repeated('warn', 'conn_refused', `${addr}\0tls-${kind}`, 1, (k, span) => `Refused ${span ? `${fmt(k)} TLS connection(s)` : 'a TLS connection'} from ${addr}${span ? ` ${span}` : ''}: ${why}. Raise ${this.option} (0: no limit) if that address stands for many clients that connect at once`, { peer: addr, limit });
    } else {
      // The port's handshakes are all taken, by whatever addresses: one condition, not one per address it met (a
      // slow-handshake flood from 40 addresses made 268 lines in 15 s), and not the address's doing, nor its limit's.
      const many = this.perPeerCounts();
      this.logger.repeated('warn', 'conn_refused', `\0tls-${kind}`, 1, (k, span) => `Refused ${span ? `${fmt(k)} TLS connection(s) ${span}` : `a TLS connection from ${addr}`}: ${why}. The port's handshakes are held by ${fmt(many.addresses)} address(es), ${fmt(many.most)} at most by one: peers that begin handshakes and do not finish them (a slow-handshake flood from many addresses), or that many clients connecting at once - then raise ${this.option} (0: no limit; each handshake under way holds 70-130 KB)`, { limit });
    }
    socket.destroy();
  }

  /** How many addresses have handshakes under way, and the most one has. */
  private perPeerCounts(): { addresses: number; most: number } {
    let most = 0;
    for (const n of this.perPeer.values()) if (n > most) most = n;
    return { addresses: this.perPeer.size, most };
  }
}

/** Handshakes one address may have under way when `max` may be in all. */
export function peerMax(max: number): number {
  return Math.max(1, Math.ceil(max / PEER_PART));
}
