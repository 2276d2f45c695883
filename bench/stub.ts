/**
 * Stubs for the bench and its spec: a bare answering server (no actors, so
 * the load generator can be checked on its own), a registrar that
 * registers many server ids with a proxy, all pointing at a few real ports,
 * and stand-ins that register running servers as they would themselves.
 */
import { createHash } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType, type AckMsg, type SetupMsg } from '../transport/messages.js';
import { serverSetup } from '../actors/server.js';

export interface StubServerOptions {
  id?: string;
  /** Answer this payload with a wrong hash (to check the generator notices). */
  wrongFor?: (payload: string) => boolean;
  /** Answer each read's requests in reverse order (answers may come back in any order). */
  reverse?: boolean;
  /** After this many requests, hold every answer for `ms`, then send them all (a target that stalls). */
  stall?: { after: number; ms: number };
}

export interface StubServer {
  port: number;
  /** DATA frames received. */
  received: number;
  close(): Promise<void>;
}

/** A server that answers every DATA frame with the SHA1 of its payload. */
export function startStubServer(opts: StubServerOptions = {}): Promise<StubServer> {
  const sockets = new Set<Socket>();
  const stub: StubServer = { port: 0, received: 0, close };
  let stalled = false;
  let stallTimer: NodeJS.Timeout | undefined;
  const held: Array<{ socket: Socket; bytes: Buffer }> = [];
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      const out: Buffer[] = [];
      for (const m of decoder.push(chunk).messages) {
        if (m.type !== MsgType.DATA) continue;
        stub.received++;
        let hash = createHash('sha1').update(m.payload).digest('hex');
        if (opts.wrongFor?.(String(m.payload))) hash = hash.replace(/^./, (c) => (c === '0' ? '1' : '0'));
        const ack: AckMsg = { type: MsgType.ACK, seq: m.seq, srcid: opts.id ?? 'stub', destid: m.srcid, payload: hash, payloadsize: 40 };
        out.push(encodeFrame(ack));
      }
      if (opts.reverse) out.reverse();
      if (opts.stall && stub.received >= opts.stall.after && !stallTimer) {
        stalled = true;
        stallTimer = setTimeout(() => {
          stalled = false;
          for (const h of held.splice(0)) if (!h.socket.destroyed) h.socket.write(h.bytes);
        }, opts.stall.ms);
      }
      if (out.length && stalled) held.push({ socket, bytes: Buffer.concat(out) });
      else if (out.length) socket.write(Buffer.concat(out));
    });
  });
  function close(): Promise<void> {
    clearTimeout(stallTimer);
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(() => resolve()));
  }
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      stub.port = (server.address() as { port: number }).port;
      resolve(stub);
    });
  });
}

/** Answer the proxy's liveness PINGs, as a live server does. */
function answerPings(s: Socket): void {
  const decoder = new FrameDecoder();
  s.on('data', (chunk: Buffer) => {
    for (const m of decoder.push(chunk).messages) if (m.type === MsgType.PING) s.write(encodeFrame({ type: MsgType.PONG, seq: m.seq }));
  });
}

export interface Registrar {
  /** Registration connections open. */
  readonly count: number;
  close(): void;
}

/** Open a registration connection to the proxy at `proxyPort` and write `setup` on it; it answers the proxy's PINGs, as a real server does. */
function register(proxyPort: number, setup: SetupMsg): Promise<Socket> {
  return new Promise<Socket>((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: proxyPort }, () => {
      s.write(encodeFrame(setup));
      s.off('error', reject);
      s.on('error', () => {});
      answerPings(s);
      resolve(s);
    });
    s.once('error', reject);
  });
}

function registrar(sockets: Socket[]): Registrar {
  return {
    get count() {
      return sockets.filter((s) => !s.destroyed).length;
    },
    close() {
      for (const s of sockets) s.destroy();
    },
  };
}

/**
 * Register `n` server ids for `policy` with the proxy at `proxyPort`, each
 * announcing one of `ports` (round robin). Every id keeps its registration
 * connection open, as a real server does. Resolves once every SETUP is written.
 */
export async function registerMany(proxyPort: number, policy: string, ports: number[], n: number, prefix = 'stub'): Promise<Registrar> {
  const sockets: Socket[] = [];
  const batch = 200;
  for (let i = 0; i < n; i += batch) {
    const opened = Array.from({ length: Math.min(batch, n - i) }, (_, k) =>
      register(proxyPort, { type: MsgType.SETUP, id: `${prefix}-${i + k}`, privPolyId: policy, listenport: ports[(i + k) % ports.length]! }));
    sockets.push(...(await Promise.all(opened)));
  }
  return registrar(sockets);
}

/**
 * Stand-ins for running servers: register each with the proxy at `proxyPort`
 * under its own id, policy and port, with the SETUP the server itself writes
 * (`serverSetup`). What else a server states - how many requests it runs at
 * once - it states itself, in its PONGs on the link the proxy dials to it.
 */
export async function standIns(proxyPort: number, servers: ReadonlyArray<{ id: string; policy: string; port: number }>): Promise<Registrar> {
  const sockets: Socket[] = [];
  try {
    for (const s of servers) sockets.push(await register(proxyPort, serverSetup({ id: s.id, policy: s.policy, port: s.port, tls: false })));
  } catch (err) {
    registrar(sockets).close();
    throw err;
  }
  return registrar(sockets);
}
