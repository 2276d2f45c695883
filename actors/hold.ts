/**
 * How the client holds its requests while no proxy answers (a proxy restarting, a fleet's
 * proxies all down for a moment): the backoff between its dials, and the words a held request
 * gets when its own timeout ends the wait. The client machine (client.ts) decides when.
 *
 * A proxy restarted by its operator or by systemd is back in about a second; before, the client
 * failed every request after two dials per proxy within about 200 ms, each with seconds of its
 * own timeout left. As nats.js (reconnectTimeWait, jitter) and MQTT.js (reconnectPeriod, its
 * offline queue) do, it now dials again with backoff and sends what it holds once a proxy answers.
 * A client holding no request dials with the same backoff, in the background, until a proxy
 * answers (2026-12-07): it went offline after the quick round, and its first request after the
 * outage paid the dial.
 */
import { hostPort } from '../transport/address.js';
import { jittered, STALL_MS } from '../transport/clock.js';
import type { Endpoint } from './server.js';

/** The pause before the client dials the next proxy after losing one, in the quick round (ms): `failoverDelayMs`'s default. */
export const DEFAULT_FAILOVER_DELAY_MS = 100;

/**
 * The pause before the next dial of the quick round: the failover delay, up to a fifth early at random (as each pause
 * of the backoff after it), so the clients of a proxy that goes do not all dial the next one in the same millisecond.
 * Measured with 200 clients of a proxy killed (spec/client-outcomes.spec.ts, their own clock): all 200 dialled the
 * next one in one millisecond, 100 ms after the loss; now spread over 80-100 ms, at most 14-18 in any one (three runs).
 */
export function failoverDelay(baseMs: number): number {
  return jittered(baseMs);
}

/**
 * The longest pause between two rounds of dials (each proxy of the list once) while the client holds requests (ms). A proxy restarted
 * is back in about a second: a client finds it at most this long after it listens. One refused
 * dial a second costs next to nothing, where a longer pause would eat the requests' timeouts
 * (5 s by default) for nothing.
 */
export const DEFAULT_RECONNECT_MAX_DELAY_MS = 1000;

/**
 * How long after a reconnect a proxy's NO_SERVER is taken for "its servers are still
 * registering again" and the request held: servers dial a proxy they lost with backoff up to 5 s
 * (`revproxy server`, `startServer`), so a restarted proxy knows none of them for up to that long.
 */
export const NO_SERVER_GRACE_MS = 5000;

/** The pause before requests refused NO_SERVER in that grace are sent again: to the next proxy when the client knows another, else on the same connection (ms). */
export const PARK_MS = 250;

/**
 * The pause before requests refused NO_SERVER in the grace are sent again, after `moves` moves to
 * the next proxy since the reconnect: PARK_MS, doubled at each move up to `maxMs` (the reconnect
 * backoff's longest pause). A fleet where no proxy serves the policy moved them about every
 * 350 ms for the whole grace, a connection each time: now after 250, 500, 1000 ms, then each second.
 */
export function parkDelay(moves: number, maxMs: number): number {
  return Math.max(PARK_MS, doubled(PARK_MS, moves, maxMs));
}

/** `baseMs` doubled `times` times, at most `maxMs`: the backoff both pauses here take. */
function doubled(baseMs: number, times: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.min(times, 30));
}

/**
 * The pause before the next round of dials (each proxy once) once the quick round of failovers is used up: the
 * failover delay doubled at each round that fails (`step` 0 is the first), up to `maxMs`, each up to a fifth
 * early at random, so clients that lost their proxy together do not dial it again all at once
 * (the servers' backoff does the same).
 */
export function reconnectDelay(step: number, baseMs: number, maxMs: number): number {
  return jittered(doubled(Math.max(1, baseMs), step + 1, maxMs));
}

/**
 * What a held request's own timeout ends with: how long no proxy answered, which, and what to check. `lateMs`: how late
 * the timeout's timer ran, a stall of the client's own process (STALL_MS or more) - the soak's clients at load 20 said
 * only "no reverse proxy could be reached for 5140 ms ... check that the proxy runs", the other proxy up all along: the
 * lost one's close had been read late, and the dial of the live one was under way, unread, when the late timer ran.
 */
export function unreachable(ms: number, proxies: Endpoint[], lastError: string | undefined, timeoutMs: number, lateMs = 0): string {
  const where = proxies.map((p) => hostPort(p.host, p.port)).join(', ');
  const starved = lateMs >= STALL_MS
    ? `the client's own event loop did not run for ${Math.round(lateMs)} ms as it ran out (the process was starved of CPU or blocked), so a proxy may have been up and its dial not yet read: check the load of the client's host, then `
    : 'check ';
  return `no reverse proxy could be reached for ${Math.round(ms)} ms (${where}${lastError ? `; the last try: ${lastError}` : ''}): `
    + `the request's timeout (${timeoutMs} ms) ran out while the client held it and dialled again with backoff; `
    + `${starved}that the proxy runs (systemctl status, its log) and listens where --revproc says`;
}

/** What a held request refused NO_SERVER by a proxy just reconnected to ends with. */
export function stillNoServer(said: string, ms: number, timeoutMs: number): string {
  return `${said} (the client reconnected to it ${Math.round(ms)} ms before and held the request while its servers registered again, `
    + `until the request's timeout, ${timeoutMs} ms: check that a server of this policy runs and reaches this proxy)`;
}

/**
 * What a request held unsent while the client moved to the next proxy for another request's NO_SERVER ends with:
 * `said`, the words of that refusal by `proxy`, a proxy just reconnected to (`ms` before).
 */
export function movedForNoServer(said: string, proxy: string, ms: number, timeoutMs: number): string {
  return `${said} (the reverse proxy at ${proxy} said so of another request; the client reconnected to it ${Math.round(ms)} ms before, and held this request, never sent, `
    + `while it moved to the next proxy, until the request's timeout, ${timeoutMs} ms: check that a server of that policy runs and reaches the proxies)`;
}

/**
 * What a held request ends with when its timeout runs out after a proxy refused it SHUTTING_DOWN
 * (`refusal`: which proxy, and its words) and none took it since; `lastTry`: how the client's last
 * dial or connection failed, when it was not connected then.
 */
export function stillShuttingDown(refusal: string, timeoutMs: number, lastTry?: string): string {
  return `${refusal} (the client held the request and sent it again with backoff until the request's timeout, ${timeoutMs} ms, ran out${lastTry ? `; the last try: ${lastTry}` : ''}): `
    + 'it is draining; give the client another proxy (--revproc HOST:PORT,HOST:PORT), or wait for it to be back';
}
