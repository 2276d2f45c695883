/**
 * A client connection's budget of refusals: requests the proxy itself refused as they came, no
 * server working on them (`NO_SERVER`, `OVERLOADED` from a full wait queue or the buffer budget;
 * routing.ts counts them where it refuses them). Not a request that waited and was answered later
 * (its queue timeout, its servers gone meanwhile): a client that sent a batch once is not in a loop
 * of refusals. A connection refused more than `REFUSALS_PER_WINDOW` times in
 * `REFUSAL_WINDOW_MS` is not read for the rest of that window: what it sends meanwhile waits in
 * the kernel, and TCP holds it back. Its requests already in flight are answered as before.
 *
 * A refusal costs the proxy about as much as a forwarded request (read, decode, route, encode, log),
 * and a client that sends again at once what was refused (a closed loop, as load generators and
 * naive retry loops do) is refused as fast as the proxy can: 20 connections keeping 4,096 requests
 * in flight, spread over 50 policies whose servers never answered, were refused ~51,000 times a
 * second (~150,000 with no server at all), another policy's client going from p50 2.7 ms to 121.
 * A connection that names one policy is held by a full queue until its next answer (`holdRefused`
 * in routing.ts); one naming several is not (that would hold its other policies' requests behind the
 * full one's slow answers), and NO_SERVER held none: this budget bounds them all, as nghttp2 and
 * Node's HTTP/2 bound a session's refused streams (`maxSessionRejectedStreams`) - but by pausing the
 * connection for a moment rather than closing it, so nothing in flight on it is lost.
 *
 * A well-behaved client never meets it: 1,000 refusals a second is far past what a client that
 * reads its errors sends into a policy that cannot take them. Counting is one compare and one add
 * per refusal on the connection's `Peer`; nothing is kept for a connection the proxy never refused.
 */
import type { Clock } from '../transport/clock.js';
import type { Logger } from './logger.js';
import type { Peer } from './link.js';

/** The span a connection's refusals are counted over (ms), and the longest its reads pause. */
export const REFUSAL_WINDOW_MS = 100;
/** Refusals a connection may have in one window; the next one pauses its reads until the window ends. */
export const REFUSALS_PER_WINDOW = 100;

/** The proxy refused one of `client`'s requests itself: counted, and its reads paused when over the budget. */
export function countRefusal(client: Peer, clock: Clock, logger: Logger): void {
  const now = clock.now();
  if (now >= client.refusalsUntil) {
    client.refusalsUntil = now + REFUSAL_WINDOW_MS;
    client.refusals = 0;
  }
  if (++client.refusals <= REFUSALS_PER_WINDOW || client.refusalHold || client.conn.closed) return;
  client.refusalHold = true;
  // Slices of a read already taken in wait too (`pause`, not `holdSocket`): they would be refused as fast.
  client.conn.pause();
  clock.setTimeout(() => {
    client.refusalHold = false;
    client.conn.resume();
  }, client.refusalsUntil - now);
  const conn = client.conn;
  logger.repeated('warn', 'refusals_paused', conn.remoteAddress, 1, (n, span) => span
    ? `Paused reading ${n} time(s) ${span} client connection(s) from ${conn.remoteAddress} that the proxy refused more than ${REFUSALS_PER_WINDOW} requests in ${REFUSAL_WINDOW_MS} ms (NO_SERVER, OVERLOADED): they send again at once what is refused; each pause lasts the rest of its ${REFUSAL_WINDOW_MS} ms`
    : `Paused reading client ${conn.describe()} for up to ${REFUSAL_WINDOW_MS} ms: the proxy refused more than ${REFUSALS_PER_WINDOW} of its requests in ${REFUSAL_WINDOW_MS} ms (NO_SERVER, OVERLOADED); it sends again at once what is refused, so what it sends now waits in the kernel. Its requests in flight are answered as before`,
  { peer: conn.describe(), limit: REFUSALS_PER_WINDOW, windowMs: REFUSAL_WINDOW_MS });
}
