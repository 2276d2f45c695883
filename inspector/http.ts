/**
 * The inspector's HTTP server, on 127.0.0.1 unless told otherwise: the page
 * (files from inspector/page, nothing from the network), the live feed as
 * Server-Sent Events, an actor's recorded states, `/metrics`, and the
 * operator's actions (`POST /api/members/drain`, `/enable`), guarded as
 * guard.ts says.
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { silentLogger, type Logger } from '../actors/logger.js';
import type { ProxyContext } from '../actors/proxy-types.js';
import { checkListen, Guard, whoAsked, type Refusal } from './guard.js';
import type { Batch, Hub } from './hub.js';
import type { Metrics } from './metrics.js';
import { Pacer } from './paced.js';
import { listenOn } from '../transport/tls.js';
import { httpPort, logAcceptErrors } from '../actors/port-limits.js';

// Written from the project root's depth so it also resolves from the CLI bundle in .build/.
const PAGE_DIR = new URL('../inspector/page/', import.meta.url);
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

/**
 * Sent with every answer, whatever its path or status. The page's buttons change the running proxy, so no
 * other site may show it in a frame (`X-Frame-Options`, CSP `frame-ancestors`): a page framing it under a
 * decoy drained a member with the operator's click. And its script comes from this origin only: no inline
 * script or event handler runs (`script-src 'self'`), so markup that ever reached the page from a recorded
 * log (page/app.js draws its charts without it) could run nothing.
 */
export const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'x-frame-options': 'DENY',
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

/** Rows of the event log in one answer of `/api/events`: by default as many as the page shows, at most a few pages' worth. */
const ROWS_PAGE = 1500;
const MAX_ROWS_PAGE = 5000;

/** A client whose socket buffer holds more than this gets no batches until it drains, then a fresh full picture. */
const SLOW_CLIENT_BYTES = 1 << 20;

/**
 * Readers of /events fed at once. Each may hold SLOW_CLIENT_BYTES it has not
 * read, and a stream that is never read was kept open for ever: 300 of them
 * took a proxy from 81 MB to 290-370 MB. A page needs one.
 */
export const MAX_STREAMS = 32;
/** How often a page refused its stream asks again (s): `Retry-After`, and the page's own timer. */
const STREAM_RETRY_S = 5;
/**
 * How often a live stream carries a heartbeat (ms). An idle proxy sends no batch, so without one a
 * page could not tell an idle proxy from a hung one (SIGSTOP, a frozen event loop): it said "live"
 * for as long as the proxy was stopped. The beat comes from the proxy's own event loop, so it stops
 * when that loop does; the page says how long it has heard nothing (page/app.js `heard`).
 */
export const BEAT_MS = 2000;

export interface InspectorServer {
  port: number;
  url: string;
  close(): Promise<void>;
}

export interface ServeOptions {
  port: number;
  /** Address to listen on. Default 127.0.0.1; anywhere else needs `token`. */
  host?: string;
  /** HTTP Basic password for every request (any user name). */
  token?: string;
  /** Where refused actions are logged (the proxy logs the actions it takes). */
  logger?: Logger;
  /** Shown in the page's title bar: what this process runs. */
  title: string;
  /** Whether the page shows a recorded log rather than a live system. */
  recorded?: boolean;
  /** How often a live stream carries a heartbeat (ms). Default `BEAT_MS`. */
  beatMs?: number;
}

export function serveInspector(hub: Hub, metrics: Metrics | undefined, opts: ServeOptions): Promise<InspectorServer> {
  const host = opts.host ?? '127.0.0.1';
  const cannot = checkListen({ host, port: opts.port, token: opts.token });
  if (cannot) return Promise.reject(new Error(cannot));
  const log = opts.logger ?? silentLogger;
  const streams = new Set<ServerResponse>();
  /** Streams opened and waiting for their first picture: counted against MAX_STREAMS too. */
  const opening = new Set<ServerResponse>();
  const recorded = opts.recorded ?? false;
  const beatMs = opts.beatMs ?? BEAT_MS;
  let guard!: Guard;
  // `now` lets the page count ages from the records' clock (for a recorded log: the end of the log); `wall`, the wall clock at the same
  // moment, lets it show their times of day as the wall clock would now (live, the records' clock is monotonic: see monotonicEpoch).
  const meta = () => ({ title: opts.title, recorded, pid: process.pid, now: recorded ? hub.lastTime : hub.now(), wall: recorded ? undefined : Date.now(), actions: !recorded, beatMs: recorded ? undefined : beatMs, started: recorded ? undefined : hub.started });
  // Every read that makes a large text takes its turn here (paced.ts): any page the operator's browser opens,
  // and any local process, may ask for them again and again. The whole picture (`/api/state`, and each
  // `/events` opened or caught up: 1.7 MB for a 900-policy fleet, about 300 ms to make), a page of the event
  // log (`/api/events?limit=5000`, 1.1 MB and 66 ms in a probe) and an actor's states (`/api/history`,
  // 540 KB and 37 ms): asked for in loops, unpaced, they took a good client's p50 from 5 ms to 3.5 s.
  const pacer = new Pacer();
  const picture = (): Promise<string> => pacer.run('picture', () => JSON.stringify({ meta: meta(), ...hub.full() }));
  const refuse = (res: ServerResponse, r: Refusal): void => {
    for (const [k, v] of Object.entries(r.headers ?? {})) res.setHeader(k, v);
    send(res, r.status, 'application/json', JSON.stringify({ error: r.message }));
  };
  // A refused request, once per burst of the same from the same address: a page that keeps trying must not flood the log.
  const logRefusal = (req: IncomingMessage, path: string, user: string, r: Refusal): void => {
    if (r.quiet) return;
    const by = whoAsked(req, r.user ?? user);
    const key = `${r.status} ${req.socket.remoteAddress} ${req.headers.host} ${req.headers.origin} ${r.message}`;
    log.repeated('warn', 'inspector_refused', key, 1, (n, span) => `Refused ${req.method} ${path} from ${by}: ${r.message}${span ? ` (${n} times ${span})` : ''}`, { path, by, status: r.status });
  };
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const admitted = guard.admit(req);
    const action = ACTIONS[url.pathname];
    if (action) {
      const user = 'status' in admitted ? '' : admitted.user;
      const refusal = 'status' in admitted ? admitted : guard.checkAction(req);
      if (refusal) {
        logRefusal(req, url.pathname, user, refusal);
        return refuse(res, refusal);
      }
      const r = await act(hub, recorded, action, req, whoAsked(req, user));
      if ('error' in r.body) log.warn('inspector_refused', `Refused ${url.pathname} from ${whoAsked(req, user)}: ${r.body.error}`, { path: url.pathname, by: whoAsked(req, user), status: r.status });
      return send(res, r.status, 'application/json', JSON.stringify(r.body));
    }
    if ('status' in admitted) {
      logRefusal(req, url.pathname, '', admitted);
      return refuse(res, admitted);
    }
    const file = FILES[url.pathname];
    if (req.method !== 'GET') {
      res.setHeader('allow', 'GET');
      return send(res, 405, 'text/plain', 'only GET is served here (actions: POST /api/members/drain or /api/members/enable)\n');
    }
    if (file) return send(res, 200, file.type, readFileSync(new URL(file.file, PAGE_DIR)));
    switch (url.pathname) {
      case '/favicon.ico':
        res.writeHead(204, { 'cache-control': 'max-age=86400' });
        return void res.end();
      case '/api/state':
        return send(res, 200, 'application/json', await picture());
      case '/api/events': {
        // The event log a page at a time: a recorded log's rows, more than a page keeps, filtered here.
        const q = url.searchParams;
        const before = Number(q.get('before') ?? NaN);
        const limit = Math.min(Math.max(Number(q.get('limit')) || ROWS_PAGE, 1), MAX_ROWS_PAGE);
        const query = { before: Number.isInteger(before) ? before : undefined, limit, actor: q.get('actor') || undefined, type: q.get('type') || undefined, states: q.get('states') !== '0' };
        return send(res, 200, 'application/json', await pacer.run(`events ${JSON.stringify(query)}`, () => JSON.stringify(hub.rows(query))));
      }
      case '/api/history': {
        const sid = url.searchParams.get('actor') ?? '';
        return send(res, 200, 'application/json', await pacer.run(`history ${sid}`, () => JSON.stringify(hub.history(sid))));
      }
      case '/metrics':
        if (!metrics) return send(res, 404, 'text/plain', 'no metrics: this page shows a recorded log\n');
        return send(res, 200, metrics.contentType, await metrics.scrape());
      case '/events':
        if (streams.size + opening.size >= MAX_STREAMS) {
          // Told to the operator too: without a token any local process can hold the streams (set
          // --inspect-token where others share the machine). The page tries again on its own.
          const full: Refusal = { status: 503, message: `${MAX_STREAMS} pages already follow this inspector, the most it feeds at once: close one (the page tries again every ${STREAM_RETRY_S} s)`, headers: { 'retry-after': String(STREAM_RETRY_S) } };
          logRefusal(req, url.pathname, admitted.user, full);
          for (const [k, v] of Object.entries(full.headers!)) res.setHeader(k, v);
          return send(res, 503, 'text/plain', `${full.message}\n`);
        }
        return openStream(res);
      default:
        return send(res, 404, 'text/plain', `nothing at ${url.pathname}; the page is at /\n`);
    }
  };

  // Each batch is made into its message once, for every page that follows: made once per page, 32 pages
  // of a fleet under load (150 KB a batch, 5 a second) took the proxy from 27,600 to 11,400 requests/s.
  let lastBatch: Batch | undefined;
  let lastMessage = Buffer.alloc(0);
  const message = (event: string, data: unknown): string => `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
  const batchMessage = (batch: Batch): Buffer => {
    if (batch !== lastBatch) {
      lastBatch = batch;
      // As bytes: encoded once too, not once per socket.
      lastMessage = Buffer.from(message('batch', batch));
    }
    return lastMessage;
  };

  // One timer for every stream, on the proxy's event loop (a recorded log has nothing to hear from).
  // `beat` is an event, not an SSE comment: a browser's EventSource never shows comments to the page.
  const beat = Buffer.from('event: beat\ndata: {}\n\n');
  const beats = recorded ? undefined : setInterval(() => {
    for (const res of streams) if (res.writableLength <= SLOW_CLIENT_BYTES) res.write(beat);
  }, beatMs).unref();

  // The picture as a stream's `full` event, written in parts: the text made once for /api/state and every stream alike.
  const writeFull = (res: ServerResponse, json: string): void => {
    res.write('event: full\ndata: ');
    res.write(json);
    res.write('\n\n');
  };

  // A stream's picture is paced as /api/state is: opening and closing streams in a loop made one each time, and
  // took the proxy's event loop. It is written, and the stream follows the batches, in the turn the picture was
  // made in (nothing but promise callbacks run between): no batch is missed, none is sent twice.
  const openStream = async (res: ServerResponse): Promise<void> => {
    // A stream may go quiet for longer than a connection may stay idle (`httpPort`): it stays open.
    res.socket?.setTimeout(0);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    let closed = false;
    let off: (() => void) | undefined;
    res.on('close', () => {
      closed = true;
      off?.();
      opening.delete(res);
      streams.delete(res);
    });
    opening.add(res);
    const first = await picture().finally(() => opening.delete(res));
    if (closed) return;
    writeFull(res, first);
    streams.add(res);
    // A reader that fell behind skips batches, then takes a new picture once it has read what it holds (and
    // skips the batches made while it waits for it: the picture has them).
    let stale = false;
    let catchingUp = false;
    off = hub.subscribe((batch) => {
      if (catchingUp) return;
      if (res.writableLength > SLOW_CLIENT_BYTES) {
        stale = true;
        return;
      }
      if (!stale) return void res.write(batchMessage(batch));
      catchingUp = true;
      picture().then((json) => {
        catchingUp = false;
        if (closed || res.writableLength > SLOW_CLIENT_BYTES) return;
        stale = false;
        writeFull(res, json);
      }, () => {
        catchingUp = false;
      });
    });
  };

  // Its pages' event streams (at most MAX_STREAMS) stay open; a crowd of other connections does not.
  const server: Server = httpPort('the inspector', log, (req, res) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    handler(req, res).catch((err: Error) => send(res, 500, 'text/plain', `inspector error: ${err.message}\n`));
  });
  return new Promise((resolve, reject) => {
    // The flag that chooses this port: `revproxy inspect FILE --port`, or the live commands' --inspect.
    const flag = opts.recorded ? '--port' : '--inspect';
    const failed = (why: string, err: NodeJS.ErrnoException): void =>
      reject(new Error(err.code === 'EADDRINUSE' ? `inspector port ${opts.port} is already in use: choose another with ${flag} PORT, or ${flag} 0 for a free one` : `cannot start the inspector (${flag}): ${why}`));
    listenOn(server, opts.port, host, (port) => {
      guard = new Guard({ host, port, token: opts.token });
      resolve({
        port,
        url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/`,
        close: () =>
          new Promise<void>((done) => {
            clearInterval(beats);
            for (const s of streams) s.end();
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    }, failed, logAcceptErrors(log, "the process's connection limit (max_connections, a server's --max-connections)", 'the inspector'));
  });
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

/** The operator's actions: a path, and the proxy event it sends. */
const ACTIONS: Record<string, 'MEMBER_DRAIN' | 'MEMBER_ENABLE'> = {
  '/api/members/drain': 'MEMBER_DRAIN',
  '/api/members/enable': 'MEMBER_ENABLE',
};

/** The largest action body read: `{"member": ..., "proxy": ...}` is far smaller. */
const MAX_ACTION_BYTES = 4096;

type ActionResult = { status: number; body: { error: string } | { member: string; state: string; proxy: string } };

/**
 * Send one action to the live proxy that has the member, and say what its
 * state is now (the proxy handles the event before `send` returns). The
 * proxy logs the action with who asked.
 */
async function act(hub: Hub, recorded: boolean, type: 'MEMBER_DRAIN' | 'MEMBER_ENABLE', req: IncomingMessage, by: string): Promise<ActionResult> {
  if (recorded) return { status: 409, body: { error: 'this page shows a recorded log: there is no proxy to act on' } };
  let raw = '';
  for await (const chunk of req) {
    raw += chunk;
    if (raw.length > MAX_ACTION_BYTES) return { status: 413, body: { error: `an action's body is at most ${MAX_ACTION_BYTES} bytes` } };
  }
  let body: { member?: unknown; proxy?: unknown };
  try {
    body = JSON.parse(raw) as typeof body;
  } catch (err) {
    return { status: 400, body: { error: `the body is not JSON (${(err as Error).message}); send {"member":"ID"}` } };
  }
  if (typeof body !== 'object' || body === null || typeof body.member !== 'string' || body.member === '') return { status: 400, body: { error: 'name the member: {"member":"ID"} (and "proxy" when several proxies run here)' } };
  if (body.proxy !== undefined && typeof body.proxy !== 'string') return { status: 400, body: { error: '"proxy" is the session id of a proxy, as the page shows it' } };
  const member = body.member;
  const holders = hub.liveProxies().filter((p) => (body.proxy === undefined || p.sid === body.proxy) && contextOf(p.ref)?.servers.has(member));
  if (holders.length === 0) return { status: 404, body: { error: `no running proxy here has a server of id ${member}${body.proxy === undefined ? '' : ` (proxy ${String(body.proxy)})`}` } };
  if (holders.length > 1) return { status: 409, body: { error: `several proxies here have a server of id ${member}: name one with "proxy" (${holders.map((p) => p.sid).join(', ')})` } };
  const { sid, ref } = holders[0]!;
  ref.send({ type, member, by });
  const state = contextOf(ref)?.servers.get(member)?.state ?? 'gone';
  return { status: 200, body: { member, state, proxy: sid } };
}

function contextOf(ref: { getSnapshot(): unknown }): ProxyContext | undefined {
  const snap = ref.getSnapshot() as { status?: string; context?: ProxyContext };
  return snap.status === 'active' ? snap.context : undefined;
}
