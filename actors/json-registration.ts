/**
 * How a server registers on the old JSON wire (`revproxy server --wire json`),
 * for the old Python proxy: the setup message on a connection of its own,
 * closed right after it, as the old servers did. The old proxy sends no
 * answer and keeps no connection, so there is nothing more to watch: once the
 * setup is written the server counts as registered.
 *
 * Swapped in for the server machine's `registration` actor:
 * `serverMachine.provide({ actors: { registration: jsonRegistration } })`.
 */
import { connect as netConnect } from 'node:net';
import { fromCallback } from 'xstate';
import type { SetupMsg } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import type { Endpoint, ServerEvent } from './server.js';

export const jsonRegistration = fromCallback<ServerEvent, { proxy: Endpoint; setup: SetupMsg; maxFrameBytes: number }>(({ sendBack, input }) => {
  const socket = netConnect({ host: input.proxy.host, port: input.proxy.port });
  const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'json' });
  conn.role = 'registration';
  let sent = false;
  socket.once('connect', () => {
    sent = true;
    conn.endWith(input.setup);
    sendBack({ type: 'REGISTERED' });
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    if (sent) return;
    sent = true;
    sendBack({
      type: 'REGISTRATION_LOST',
      error: err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${input.proxy.host}:${input.proxy.port}` : err.message,
    });
  });
  return () => {
    if (!conn.closed) conn.destroy();
  };
});
