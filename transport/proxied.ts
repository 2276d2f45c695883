/**
 * An accepted socket from a trusted balancer: its PROXY header is read
 * (transport/proxy-header.ts) before the socket becomes a `Connection`, which
 * then takes the client's address from it and reads the bytes after it. On a
 * TLS listener the header comes before the handshake: the TCP socket is read
 * for it first, then handed to the TLS server (`handOverToTls`).
 */
import type { Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import type { Clock, Timer } from './clock.js';
import type { ProtocolError } from './errors.js';
import { ProxyHeaderReader, type ProxyHeader } from './proxy-header.js';
import { ConnectionTimeout } from './socket.js';

/** How waiting for a header ended: the header and the bytes after it; bad bytes or too slow (`error`); or the peer left first (`closed`). */
export type HeaderOutcome = { header: ProxyHeader; rest: Buffer } | { error: ProtocolError | ConnectionTimeout; first?: number } | { closed: true };

/** Socket errors while waiting: a 'close' follows each, and that ends the wait. */
const ignore = (): void => {};

/**
 * Read `socket`'s PROXY header, then tell `done` once. The header must be whole
 * within `timeoutMs` (0: no limit), as a frame must; at most one header's bytes
 * are held. On `header` the socket is left to the caller with no listener of
 * this function's (the caller reads on in the same turn, so no byte is lost);
 * otherwise the caller closes it.
 */
export function awaitProxyHeader(socket: Socket, opts: { timeoutMs: number; clock: Clock }, done: (outcome: HeaderOutcome) => void): void {
  const reader = new ProxyHeaderReader();
  let timer: Timer | undefined;
  // The connection's first byte, for an answer in the peer's own wire when what came is no header (`error`'s `first`).
  let first: number | undefined;
  const finish = (outcome: HeaderOutcome): void => {
    socket.off('data', onData);
    socket.off('end', onGone);
    socket.off('close', onGone);
    if ('header' in outcome) socket.off('error', ignore);
    timer?.cancel();
    done(outcome);
  };
  const onData = (chunk: Buffer): void => {
    if (first === undefined && chunk.length > 0) first = chunk[0];
    const r = reader.push(chunk);
    if (!('need' in r)) finish('error' in r ? { error: r.error, first } : r);
  };
  const onGone = (): void => finish({ closed: true });
  socket.on('error', ignore);
  socket.on('end', onGone);
  socket.on('close', onGone);
  socket.on('data', onData);
  if (opts.timeoutMs > 0) {
    timer = opts.clock.setTimeout(() => finish({ error: new ConnectionTimeout(`no whole PROXY protocol header within ${opts.timeoutMs} ms (--frame-timeout; ${reader.buffered} bytes of one came)`) }), opts.timeoutMs);
  }
}

/** The clients trusted balancers' headers named, by the TCP socket handed to TLS: the TLS socket over it has the balancer's address. */
const clients = new WeakMap<Socket, NonNullable<ProxyHeader['source']>>();

/**
 * Hand `socket`, its PROXY header read, to the TLS server `tls` for its
 * handshake (`emit('connection')`, Node's way to give a server a socket),
 * with the bytes that came after the header put back first. Paused first: a
 * flowing socket would emit them to no listener, and TLS reads the ones held
 * when it takes the socket over. `source` (the header's client, if it named
 * one) is what `proxiedClient` then says of the TLS socket.
 */
export function handOverToTls(tls: TlsServer, socket: Socket, source: ProxyHeader['source'], rest: Buffer): void {
  if (source) clients.set(socket, source);
  socket.pause();
  if (rest.length > 0) socket.unshift(rest);
  tls.emit('connection', socket);
}

/** The client a trusted balancer's header named for this TLS socket (its TCP socket was handed over by `handOverToTls`), or undefined. */
export function proxiedClient(socket: Socket): ProxyHeader['source'] {
  const tcp = tcpUnder(socket);
  return tcp && clients.get(tcp);
}

/**
 * The TCP socket a TLS socket runs over (Node's `_parent`: not documented, long stable). It
 * keeps the peer's address once read, where the TLS socket's reads undefined after it is destroyed.
 */
export function tcpUnder(socket: Socket): Socket | undefined {
  return (socket as Socket & { _parent?: Socket })._parent;
}
