/**
 * Who may use the inspector, and who may act through it.
 *
 * The page shows a running proxy's internals (payloads in its event log),
 * and its buttons change what the proxy does (drain a member, enable it
 * again), so:
 *
 * - It listens on 127.0.0.1 unless told otherwise; anywhere else it needs a
 *   token, and will not start without one.
 * - With a token, every path asks for HTTP Basic authentication: any user
 *   name (it goes into the log as who asked), the token as the password. A
 *   browser asks once and sends it with the page's own requests.
 * - Actions are POSTs with a JSON body: a page from another origin cannot
 *   send one without a CORS preflight, and none is ever granted.
 * - An action's `Origin`, which browsers send with every POST, must be the
 *   inspector's own; `null` (a sandboxed or privacy-stripped page) is refused.
 * - A browser's request made by another site's page (`Sec-Fetch-Site`
 *   `cross-site` or `same-site`, which another port of 127.0.0.1 is) is
 *   refused, but for a navigation: images and no-cors fetches need no CORS
 *   and carry no `Origin`, so a page the operator opens could make the
 *   inspector work for it, hold its event streams, or read with a signed-in
 *   operator's credentials into a response it cannot see.
 * - Without a token the `Host` must be a loopback name (for an action, with
 *   the inspector's port): a page that rebinds its own DNS name to 127.0.0.1
 *   sends its own name, and is refused, whether it acts or only reads.
 *
 * Every action, done or refused, is logged with who asked; so is every read
 * refused (a wrong token, a name that is not loopback), once for a burst of
 * the same, but not a browser's first request, which asks it to sign in.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { hostHeaderIsLoopback, isLoopback, peerAddress, peerName } from '../transport/address.js';

export interface GuardOptions {
  /** The address the inspector listens on. */
  host: string;
  port: number;
  /** HTTP Basic password every request needs; required off loopback. */
  token?: string;
}

/** A refusal: an HTTP status and a sentence saying what to do. */
export interface Refusal {
  status: 401 | 403 | 405 | 415 | 503;
  message: string;
  headers?: Record<string, string>;
  /** The user name given with a wrong token, for the log. */
  user?: string;
  /** Not worth a log line: a browser asking before it signs in. */
  quiet?: boolean;
}

/** Tokens shorter than this are refused: easy to guess. */
export const MIN_TOKEN_LENGTH = 8;

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Why the inspector may not listen as asked, or undefined. */
export function checkListen(o: GuardOptions): string | undefined {
  if (o.token !== undefined && o.token.length < MIN_TOKEN_LENGTH) return `the inspector token must be at least ${MIN_TOKEN_LENGTH} characters: a short secret is easy to guess`;
  if (!isLoopback(o.host) && o.token === undefined) {
    return `the inspector on ${o.host} would be reachable from other machines, and its buttons change the running proxy: give it a token (--inspect-token, REVPROXY_INSPECT_TOKEN) or listen on 127.0.0.1`;
  }
  return undefined;
}

export class Guard {
  constructor(private readonly o: GuardOptions) {}

  /**
   * Every request: the token, when there is one; without one, a `Host` that
   * names loopback, so a page that rebinds its own name to 127.0.0.1 cannot
   * read the page's data (payloads) either. Any port: an SSH tunnel may
   * forward another one. Gives the user name (or '') when let in.
   */
  admit(req: IncomingMessage): { user: string } | Refusal {
    // Fetch Metadata (every current browser): another site's page reaches 127.0.0.1 too, with requests
    // that need no CORS (an image, a no-cors fetch: no Origin header at all), and an image takes a
    // signed-in operator's Basic credentials with it. Only a navigation (a link followed) may come from elsewhere.
    const site = req.headers['sec-fetch-site'];
    if ((site === 'cross-site' || site === 'same-site') && req.headers['sec-fetch-mode'] !== 'navigate') {
      return { status: 403, message: `refused: a request made by another site's page (Sec-Fetch-Site: ${site}); the inspector answers its own page, and links to it` };
    }
    if (this.o.token === undefined) {
      const host = req.headers.host ?? '';
      if (hostHeaderIsLoopback(host)) return { user: '' };
      return { status: 403, message: `refused: the request names host '${host}', not this inspector: open it as http://127.0.0.1:${this.o.port}/ or http://localhost:${this.o.port}/ (or set --inspect-token to reach it under another name)` };
    }
    const m = /^Basic +([A-Za-z0-9+/=]+)$/i.exec(req.headers.authorization ?? '');
    const decoded = m ? Buffer.from(m[1]!, 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    if (colon >= 0 && timingSafeEqual(digest(decoded.slice(colon + 1)), digest(this.o.token))) return { user: decoded.slice(0, colon) };
    const headers = { 'www-authenticate': 'Basic realm="revproxy inspector", charset="UTF-8"' };
    if (req.headers.authorization === undefined) {
      return { status: 401, message: 'this inspector needs its token: sign in with any user name and the token as the password (HTTP Basic)', headers, quiet: true };
    }
    return { status: 401, message: 'the token given is wrong: sign in with any user name and the inspector\'s token as the password (HTTP Basic)', headers, user: colon > 0 ? decoded.slice(0, colon).slice(0, 64) : '' };
  }

  /** An action, once admitted: POST, JSON, from this inspector's own page (or from no browser at all). */
  checkAction(req: IncomingMessage): Refusal | undefined {
    if (req.method !== 'POST') return { status: 405, message: 'actions are POSTs with a JSON body, e.g. {"member":"2"}', headers: { allow: 'POST' } };
    const host = req.headers.host ?? '';
    if (this.o.token === undefined && !hostHeaderIsLoopback(host, this.o.port)) {
      return { status: 403, message: `refused: the request names host '${host}', not this inspector (127.0.0.1:${this.o.port} or localhost:${this.o.port})` };
    }
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${host}` && origin !== `https://${host}`) {
      return { status: 403, message: `refused: actions are taken from this inspector's own page, not from ${origin}` };
    }
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') return { status: 415, message: 'an action\'s body is JSON: send Content-Type: application/json' };
    return undefined;
  }
}

/** Who asked, for the log: the user name given with the token, and the address the request came from. */
export function whoAsked(req: IncomingMessage, user: string): string {
  const from = peerName(peerAddress(req.socket), req.socket.remotePort ?? 0);
  return `${user ? `${user} at ` : ''}${from} via the inspector`;
}
