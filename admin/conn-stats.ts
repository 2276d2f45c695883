/**
 * Connections and bytes by role, for /metrics: the listener's connections
 * (told through the observer's `accepted` hook; their role is known from
 * their first message) and the proxy's connections to servers (through a
 * wrapped socket factory). Counted at scrape time from the sockets' own
 * counters, so the hot path pays nothing per byte.
 */
import type { Socket } from 'node:net';
import type { Peer, SocketFactory } from '../actors/link.js';
import { REFUSE_REASONS, type RefuseReason } from '../actors/port-limits.js';
import type { ProxyObserver } from '../actors/proxy-options.js';
import { TLS_FAILURES, type TlsFailure } from '../transport/foreign.js';

/** The roles a connection can have: the label values of the connection metrics. */
export const ROLES = ['client', 'registration', 'unknown', 'upstream'] as const;
export type Role = (typeof ROLES)[number];

export interface ConnSnapshot {
  open: Record<Role, number>;
  /** Bytes read from peers, by role, since the start. */
  received: Record<Role, number>;
  /** Bytes written to peers, by role, since the start. */
  sent: Record<Role, number>;
  /** Connections the listener refused as they came, by why, since the start. */
  refused: Record<RefuseReason, number>;
  /** TLS handshakes the listener failed (each a tls_refused line), by why, since the start. */
  tlsFailures: Record<TlsFailure, number>;
}

const zero = (): Record<Role, number> => ({ client: 0, registration: 0, unknown: 0, upstream: 0 });

export class ConnStats implements Pick<ProxyObserver, 'accepted' | 'connectionLimit' | 'refused' | 'tlsFailed'> {
  private readonly live = new Map<Socket, () => Role>();
  /** The listener's limit on connections open at once (client, registration and unknown ones), as last applied; undefined before it listens. */
  limit?: number;
  private readonly received = zero();
  private readonly sent = zero();
  private readonly refusedBy = Object.fromEntries(REFUSE_REASONS.map((r) => [r, 0])) as Record<RefuseReason, number>;
  private readonly tlsFailedBy = Object.fromEntries(TLS_FAILURES.map((r) => [r, 0])) as Record<TlsFailure, number>;

  accepted(peer: Peer, socket: Socket): void {
    this.track(socket, () => peer.role);
  }

  connectionLimit(limit: number): void {
    this.limit = limit;
  }

  refused(reason: RefuseReason): void {
    this.refusedBy[reason]++;
  }

  tlsFailed(reason: TlsFailure): void {
    this.tlsFailedBy[reason]++;
  }

  /** A socket factory whose sockets are counted as `upstream`. */
  wrap(factory: SocketFactory): SocketFactory {
    return (host, port, tls) => {
      const s = factory(host, port, tls);
      this.track(s, () => 'upstream');
      return s;
    };
  }

  private track(socket: Socket, role: () => Role): void {
    this.live.set(socket, role);
    socket.once('close', () => {
      const r = role();
      this.received[r] += socket.bytesRead;
      this.sent[r] += socket.bytesWritten;
      this.live.delete(socket);
    });
  }

  snapshot(): ConnSnapshot {
    const open = zero();
    const received = { ...this.received };
    const sent = { ...this.sent };
    for (const [s, role] of this.live) {
      const r = role();
      open[r]++;
      received[r] += s.bytesRead;
      sent[r] += s.bytesWritten;
    }
    return { open, received, sent, refused: { ...this.refusedBy }, tlsFailures: { ...this.tlsFailedBy } };
  }
}
