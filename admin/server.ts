/**
 * The admin endpoint (`--admin HOST:PORT`), without the inspector:
 *
 * - `GET /healthz`: 200 while the process runs its event loop (liveness).
 * - `GET /readyz`: 200 when every readiness check passes (the proxy listens
 *   and is not draining; with `--ready-policies`, each listed policy has a
 *   server serving), else 503 with a short JSON body saying why.
 * - `GET /metrics`: Prometheus text (prom-client): request metrics, process
 *   and Node metrics, connections, bytes, pools.
 * - `/inspector/...`: the inspector page, when it is served here.
 *
 * GET and HEAD only. With a bearer token, /metrics and /inspector/ require
 * `Authorization: Bearer TOKEN`; the health checks stay open (they tell
 * nothing but up or down).
 *
 * Adding a readiness check (issue 18's registry, say):
 *   readiness.add('registry', () => connected ? undefined : { code: 'REGISTRY_UNREACHABLE', message: 'etcd is unreachable' });
 * and a metric: `new Gauge({ name, help, registers: [metrics.registry], collect() {...} })`.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { hostHeaderIsLoopback, hostPort, isLoopback, plainIPv4 } from '../transport/address.js';
import { listenOn } from '../transport/tls.js';
import { httpPort, logAcceptErrors } from '../actors/port-limits.js';
import type { Metrics } from '../inspector/metrics.js';
import { silentLogger, type Logger } from '../actors/logger.js';

/** Why something is not ready: a stable code and a sentence. */
export interface NotReady {
  code: string;
  /** The privacy policy it is about, when it is about one (a check of several policies gives a reason per policy). */
  policy?: string;
  message: string;
  /** Still ready, but worth saying: /readyz stays 200 and lists it under `warnings` (serving with the registry membership last seen, say). */
  warning?: boolean;
}

/** Named checks; ready when every one returns undefined (or no reason). */
export class Readiness {
  private readonly checks = new Map<string, () => NotReady | NotReady[] | undefined>();

  /** Add (or replace) a check: it returns undefined (or an empty list) when ready, or why not (one reason per thing that is not). */
  add(name: string, check: () => NotReady | NotReady[] | undefined): void {
    this.checks.set(name, check);
  }

  evaluate(): { ready: boolean; reasons: Array<NotReady & { check: string }>; warnings: Array<NotReady & { check: string }> } {
    const reasons: Array<NotReady & { check: string }> = [];
    const warnings: Array<NotReady & { check: string }> = [];
    for (const [check, fn] of this.checks) {
      let found: NotReady | NotReady[] | undefined;
      try {
        found = fn();
      } catch (err) {
        found = { code: 'CHECK_FAILED', message: (err as Error).message };
      }
      for (const r of found === undefined ? [] : Array.isArray(found) ? found : [found]) {
        const { warning, ...why } = r;
        (warning ? warnings : reasons).push({ check, ...why });
      }
    }
    return { ready: reasons.length === 0, reasons, warnings };
  }
}

/** Serves another part of the admin port (the inspector under /inspector/); returns false when it has nothing at that path. */
export type SubHandler = (req: IncomingMessage, res: ServerResponse, path: string) => Promise<boolean> | boolean;

export interface AdminOptions {
  host: string;
  port: number;
  /** Bearer token for /metrics and /inspector/. */
  token?: string;
  metrics: Metrics;
  readiness: Readiness;
  /** Serves /inspector/... when given. */
  inspector?: SubHandler;
  /** Where connections its port could not accept (ENFILE, EMFILE) are logged. */
  logger?: Logger;
}

export interface AdminServer {
  port: number;
  url: string;
  /** Change the bearer token (a reload). */
  setToken(token: string | undefined): void;
  close(): Promise<void>;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

export function startAdmin(opts: AdminOptions): Promise<AdminServer> {
  let token = opts.token;
  const onLoopback = isLoopback(opts.host);
  const authorised = (req: IncomingMessage): boolean => {
    if (token === undefined) return true;
    // The scheme is case-insensitive (RFC 7235): some scrapers and hand-made requests send `bearer`.
    const m = /^Bearer +(.+)$/i.exec(req.headers.authorization ?? '');
    return m !== null && timingSafeEqual(digest(m[1]!), digest(token));
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.setHeader('allow', 'GET, HEAD');
      return send(res, head, 405, 'text/plain; charset=utf-8', 'only GET and HEAD are served here\n');
    }
    const path = new URL(req.url ?? '/', 'http://admin').pathname;
    if (path === '/healthz') return send(res, head, 200, 'application/json', '{"status":"ok"}\n');
    if (path === '/readyz') {
      const r = opts.readiness.evaluate();
      const body = r.ready ? { ready: true, ...(r.warnings.length ? { warnings: r.warnings } : {}) } : { ready: false, reasons: r.reasons, ...(r.warnings.length ? { warnings: r.warnings } : {}) };
      return send(res, head, r.ready ? 200 : 503, 'application/json', `${JSON.stringify(body)}\n`);
    }
    if (path === '/metrics' || path.startsWith('/inspector')) {
      if (!authorised(req)) {
        res.setHeader('www-authenticate', 'Bearer realm="revproxy"');
        return send(res, head, 401, 'text/plain; charset=utf-8', 'this path needs Authorization: Bearer <the admin token>\n');
      }
      if (path === '/metrics') {
        // On loopback without a token, a browser page whose DNS name was rebound to 127.0.0.1 could read the
        // fleet's policies, server ids and counts: such a request names its own host, not this machine.
        const host = req.headers.host;
        if (token === undefined && onLoopback && host !== undefined && !hostHeaderIsLoopback(host)) {
          return send(res, head, 403, 'text/plain; charset=utf-8', `refused: the request names host '${host}', not this machine: scrape http://${hostPort(plainIPv4(req.socket.localAddress ?? '127.0.0.1'), req.socket.localPort ?? 0)}/metrics (or localhost), or set --admin-token to reach it under another name\n`);
        }
        return send(res, head, 200, opts.metrics.contentType, await opts.metrics.scrape());
      }
      if (opts.inspector && (await opts.inspector(req, res, path.slice('/inspector'.length) || '/'))) return;
    }
    return send(res, head, 404, 'text/plain; charset=utf-8', `nothing at ${path}: try /healthz, /readyz or /metrics\n`);
  };

  // Probes and scrapes are short: an idle or slow client is not kept around, nor a crowd of them.
  const server: Server = httpPort('the admin endpoint', opts.logger ?? silentLogger, (req, res) => {
    handle(req, res).catch((err: Error) => {
      if (!res.headersSent) send(res, req.method === 'HEAD', 500, 'text/plain; charset=utf-8', `admin error: ${err.message}\n`);
      else res.destroy();
    });
  });
  return new Promise((resolve, reject) => {
    const failed = (why: string, err: NodeJS.ErrnoException): void =>
      reject(new Error(err.code === 'EADDRINUSE' ? `the admin port ${hostPort(opts.host, opts.port)} is already in use: choose another with --admin HOST:PORT` : `the admin endpoint (--admin): ${why}`));
    listenOn(server, opts.port, opts.host, (port) => {
      const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
      resolve({
        port,
        url: `http://${host}:${port}/`,
        setToken: (t) => (token = t),
        close: () =>
          new Promise<void>((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    }, failed, logAcceptErrors(opts.logger ?? silentLogger, 'max_connections', 'the admin endpoint'));
  });
}

function send(res: ServerResponse, head: boolean, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(head ? undefined : body);
}
