/**
 * How a server registers on the old JSON wire (`revproxy server --wire json`),
 * for the old Python proxy: the setup message on a connection of its own,
 * closed right after it, as the old servers did. The old proxy sends no
 * answer, keeps no connection and knows no deregistration, so once the setup
 * is written there is nothing more to watch. A proxy not listening yet is
 * retried with backoff, as the frames registration does.
 *
 * Swapped in for the server machine's `registrations` actor:
 * `serverMachine.provide({ actors: { registrations: jsonRegistrations } })`.
 */
import { fromCallback } from 'xstate';
import { hostPort } from '../transport/address.js';
import { Connection } from '../transport/socket.js';
import { describeDialError, dial, whenReady } from '../transport/tls.js';
import type { Timer } from '../transport/clock.js';
import { SaidAgainPerProxy } from './said-again.js';
import { logCertificateProblem, logDialBackProblem, logSeveralAddresses, registrationSource, sourceDialError, type Endpoint, type RegistrationCommand, type RegistrationInput } from './server.js';

export const jsonRegistrations = fromCallback<RegistrationCommand, RegistrationInput>(({ sendBack, receive, input }) => {
  let stopping = false;
  const timers = new Set<Timer>();
  const conns = new Set<Connection>();
  const namesSaid = new Map<string, string>();
  /** Each proxy's failure said last, while its registration keeps failing (said again only now and then, as on the frames wire). */
  const said = new SaidAgainPerProxy(input.clock);

  const attempt = (ep: Endpoint, delay: number): void => {
    const key = hostPort(ep.host, ep.port);
    const from = registrationSource(input.listenHost, input.listenAddress, ep.host);
    const socket = dial(ep.host, ep.port, input.tls, from);
    logSeveralAddresses(input, key, ep.host, socket, namesSaid);
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'json', holdReadsWhenCongested: false });
    conns.add(conn);
    socket.once('close', () => conns.delete(conn));
    whenReady(socket, () => {
      // The old proxy dials the server back at the address this comes from, as the new one does.
      // It answers nothing: the certificate is checked against the address it dials, as it verifies no name.
      if (!logDialBackProblem(input, key, socket.localAddress)) logCertificateProblem(input, key, socket.localAddress);
      conn.endWith(input.setup);
      said.clear(key);
      sendBack({ type: 'REGISTERED', proxy: key, again: false });
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      if (stopping || socket.bytesWritten > 0) return;
      const error = err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${key}` : sourceDialError(err, from) ?? describeDialError(err, ep.host);
      sendBack({ type: 'REGISTRATION_LOST', proxy: key, retryInMs: delay, ...said.say(key, error) });
      const t = input.clock.setTimeout(() => {
        timers.delete(t);
        if (!stopping) attempt(ep, Math.min(delay * 2, input.maxMs));
      }, delay);
      timers.add(t);
    });
  };

  for (const ep of input.proxies) attempt(ep, input.initialMs);
  // The old wire has nothing to deregister; renewed TLS files are for the next dials.
  receive((e) => {
    if (e.type !== 'RENEW_TLS') return;
    if (!input.plain) input.tls = e.tls;
    input.served = e.tls.cert;
  });
  return () => {
    stopping = true;
    for (const t of timers) t.cancel();
    for (const c of conns) if (!c.closed) c.destroy();
  };
});
