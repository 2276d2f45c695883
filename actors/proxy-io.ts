/**
 * The proxy's callback actors, the parts that touch sockets and timers: the
 * listener (accepted connections -> REGISTER / FORWARD / DEREGISTER events),
 * the sweeper (requests past their deadline), the pinger (registration
 * liveness) and the drain watch. The proxy machine invokes them.
 */
import type { Server, Socket } from 'node:net';
import { fromCallback } from 'xstate';
import type { BusyPoll } from '../transport/busy-poll.js';
import { ErrorCode, ProtocolError } from '../transport/errors.js';
import { MsgType, type DataMsg } from '../transport/messages.js';
import { Connection, ConnectionTimeout, sendTogether } from '../transport/socket.js';
import { listenServer, type TlsMaterial } from '../transport/tls.js';
import type { Clock } from './clock.js';
import type { Inflight } from './inflight.js';
import type { Logger } from './logger.js';
import type { ForwardBatch, ProxyEvent, ServerEntry } from './proxy.js';
import type { ProxyRequest } from './upstream.js';

/** Owns the listening socket; turns each accepted connection's reads into proxy events. */
interface ListenerInput {
  host: string;
  port: number;
  maxFrameBytes: number;
  maxConnections: number;
  maxConnectionsPerPeer: number;
  idleTimeoutMs: number;
  frameTimeoutMs: number;
  tls?: TlsMaterial;
  logger: Logger;
  /** Kicked by every client read; stopped with the listener. */
  busyPoll?: BusyPoll;
}

export const listener = fromCallback<ProxyEvent, ListenerInput>(
  ({ sendBack, receive, input }) => {
    const conns = new Set<Connection>();
    const perPeer = new Map<string, number>();
    // The reads of every client connection in one turn of the event loop go to the proxy as one
    // FORWARD event (setImmediate runs once the poll phase has delivered them all), and what that
    // event writes leaves at once.
    let pending: ForwardBatch[] = [];
    let scheduled = false;
    const forwardNow = (): void => {
      scheduled = false;
      if (pending.length === 0) return;
      const batches = pending;
      pending = [];
      sendTogether(() => sendBack({ type: 'FORWARD', batches }));
    };
    const forwardLater = (conn: Connection, requests: DataMsg[]): void => {
      pending.push({ conn, requests });
      if (!scheduled) {
        scheduled = true;
        setImmediate(forwardNow);
      }
    };
    let refusedLogged = 0;
    const server: Server = listenServer(input.tls, (socket: Socket) => {
      socket.on('error', () => {});
      const peer = socket.remoteAddress ?? '?';
      const n = (perPeer.get(peer) ?? 0) + 1;
      if (input.maxConnectionsPerPeer && n > input.maxConnectionsPerPeer) {
        // Logged at most once a second: a flood must not become a log flood.
        if (Date.now() - refusedLogged > 1000) {
          refusedLogged = Date.now();
          input.logger.warn('conn_refused', `Refused connections from ${peer}: it has ${input.maxConnectionsPerPeer} open (--max-conns-per-peer)`, { peer, limit: input.maxConnectionsPerPeer });
        }
        socket.destroy();
        return;
      }
      perPeer.set(peer, n);
      socket.once('close', () => {
        const left = (perPeer.get(peer) ?? 1) - 1;
        if (left > 0) perPeer.set(peer, left);
        else perPeer.delete(peer);
      });
      const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, idleTimeoutMs: input.idleTimeoutMs, frameTimeoutMs: input.frameTimeoutMs, wire: 'sniff' });
      conns.add(conn);
      conn.messages$.subscribe({
        next: (messages) => {
          input.busyPoll?.kick();
          let data: DataMsg[] | undefined;
          const flush = (): void => {
            if (data) forwardLater(conn, data);
            data = undefined;
            // Anything else this connection says comes after the requests it sent before.
            if (pending.length) forwardNow();
          };
          for (const m of messages) {
            if (conn.closed) return;
            if (m.type === MsgType.DATA && conn.role !== 'registration') {
              conn.role = 'client';
              (data ??= []).push(m);
              continue;
            }
            if (m.type === MsgType.PONG && conn.role === 'registration') {
              conn.missedPings = 0; // liveness bookkeeping only: no event
              continue;
            }
            flush();
            if (m.type === MsgType.SETUP && conn.role === 'unknown') {
              conn.role = 'registration';
              sendBack({ type: 'REGISTER', conn, setup: m });
            } else if (m.type === MsgType.DEREGISTER && conn.role === 'registration') {
              sendBack({ type: 'DEREGISTER', conn, reason: 'the server is draining' });
            } else {
              const what = conn.role === 'unknown' ? 'a first message' : `a ${conn.role} connection`;
              sendBack({
                type: 'BAD_INPUT',
                conn,
                error: new ProtocolError(ErrorCode.BAD_REQUEST, `message type ${m.type} is not allowed as ${what}`),
              });
              return;
            }
          }
          if (data) forwardLater(conn, data);
        },
        error: (err: Error) => {
          conns.delete(conn);
          if (err instanceof ProtocolError) sendBack({ type: 'BAD_INPUT', conn, error: err });
          else {
            if (err instanceof ConnectionTimeout) input.logger.info('conn_timeout', `Closed connection from ${conn.describe()}: ${err.message}`, { peer: conn.describe(), role: conn.role });
            sendBack({ type: 'CONN_CLOSED', conn, error: err.message });
          }
        },
        complete: () => {
          conns.delete(conn);
          sendBack({ type: 'CONN_CLOSED', conn });
        },
      });
    });
    server.maxConnections = input.maxConnections;
    server.on('tlsClientError', (err: Error, socket: Socket) => {
      input.logger.warn('tls_refused', `Refused a TLS connection from ${socket.remoteAddress ?? '?'}: ${err.message}`, { peer: socket.remoteAddress, reason: err.message });
    });
    server.on('drop', () => input.logger.warn('conn_refused', `Refused a connection: ${input.maxConnections} connections are open (--max-connections)`, { limit: input.maxConnections }));
    server.on('error', (err) => sendBack({ type: 'LISTEN_FAILED', error: describeListenError(err, input.host, input.port) }));
    server.listen(input.port, input.host, () => {
      const addr = server.address();
      sendBack({ type: 'LISTENING', port: typeof addr === 'object' && addr ? addr.port : input.port });
    });
    receive((e) => {
      if (e.type === 'STOP') server.close(); // stop accepting; open connections stay
    });
    return () => {
      server.close();
      input.busyPoll?.stop();
      // Let answers already written leave before the sockets close.
      for (const c of conns) c.endWith();
    };
  },
);

/** Finds requests past their deadline without an event when none is. */
export const sweeper = fromCallback<ProxyEvent, { busy: Set<Inflight<ProxyRequest>>; waiting: Map<string, ProxyRequest[]>; timeoutMs: number; clock: Clock; every: number }>(
  ({ sendBack, input }) => {
    const timer = input.clock.setInterval(() => {
      const now = input.clock.now();
      for (const table of input.busy) if (table.oldestDeadline() <= now) table.owner?.send({ type: 'EXPIRE', now });
      for (const q of input.waiting.values()) {
        if (q.length && q[0]!.arrived + input.timeoutMs <= now) {
          sendBack({ type: 'EXPIRE_WAITING', now });
          break;
        }
      }
    }, input.every);
    return () => timer.cancel();
  },
);

/** Liveness: PING each registration connection; a server that misses too many PONGs is removed. */
export const pinger = fromCallback<ProxyEvent, { servers: Map<string, ServerEntry>; clock: Clock; every: number; misses: number }>(({ sendBack, input }) => {
  const timer = input.clock.setInterval(() => {
    for (const entry of input.servers.values()) {
      const conn = entry.registration;
      if (!conn || conn.closed) continue;
      if (conn.missedPings >= input.misses) {
        sendBack({ type: 'DEREGISTER', conn, reason: `it missed ${conn.missedPings} PINGs in a row on its registration connection` });
        conn.missedPings = -Infinity; // reported once
        continue;
      }
      // A server whose upstream link answered since the last round is alive: no PING needed
      // (with thousands of busy servers this saves thousands of writes and reads a second).
      const reads = entry.traffic?.conn?.reads ?? -1;
      if (reads > 0 && reads !== entry.seenReads) {
        entry.seenReads = reads;
        conn.missedPings = 0;
        continue;
      }
      conn.missedPings++;
      conn.send({ type: MsgType.PING, seq: 0 });
    }
  }, input.every);
  return () => timer.cancel();
});

/** While draining: reports when nothing is in flight any more. */
export const drainWatch = fromCallback<ProxyEvent, { busy: Set<unknown>; waiting: Map<string, unknown[]> }>(({ sendBack, input }) => {
  const check = (): boolean => input.busy.size === 0 && [...input.waiting.values()].every((q) => q.length === 0);
  const t = setInterval(() => check() && sendBack({ type: 'DRAINED' }), 10);
  if (check()) queueMicrotask(() => sendBack({ type: 'DRAINED' }));
  return () => clearInterval(t);
});

export function describeListenError(err: NodeJS.ErrnoException, host: string, port: number): string {
  if (err.code === 'EADDRINUSE') return `port ${port} on ${host} is already in use: stop what holds it or choose another port`;
  if (err.code === 'EACCES') return `no permission to listen on port ${port}: choose a port above 1023`;
  if (err.code === 'EADDRNOTAVAIL') return `address ${host} is not on this machine: choose a local address`;
  return `cannot listen on ${host}:${port}: ${err.message}`;
}
