/**
 * The inspector's HTTP server, on 127.0.0.1 only: the page (files from
 * inspector/page, nothing from the network), the live feed as Server-Sent
 * Events, an actor's recorded states, and `/metrics`.
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Hub } from './hub.js';
import type { Metrics } from './metrics.js';

// Written from the project root's depth so it also resolves from the CLI bundle in .build/.
const PAGE_DIR = new URL('../inspector/page/', import.meta.url);
const FILES: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/style.css': { file: 'style.css', type: 'text/css; charset=utf-8' },
};

/** A client whose socket buffer holds more than this gets no batches until it drains, then a fresh full picture. */
const SLOW_CLIENT_BYTES = 1 << 20;

export interface InspectorServer {
  port: number;
  url: string;
  close(): Promise<void>;
}

export interface ServeOptions {
  port: number;
  /** Shown in the page's title bar: what this process runs. */
  title: string;
  /** Whether the page shows a recorded log rather than a live system. */
  recorded?: boolean;
}

export function serveInspector(hub: Hub, metrics: Metrics | undefined, opts: ServeOptions): Promise<InspectorServer> {
  const streams = new Set<ServerResponse>();
  const meta = { title: opts.title, recorded: opts.recorded ?? false, pid: process.pid };
  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const file = FILES[url.pathname];
    if (req.method !== 'GET') return send(res, 405, 'text/plain', 'only GET is served here\n');
    if (file) return send(res, 200, file.type, readFileSync(new URL(file.file, PAGE_DIR)));
    switch (url.pathname) {
      case '/api/state':
        return send(res, 200, 'application/json', JSON.stringify({ meta, ...hub.full() }));
      case '/api/history': {
        const sid = url.searchParams.get('actor') ?? '';
        return send(res, 200, 'application/json', JSON.stringify(hub.history(sid)));
      }
      case '/metrics':
        if (!metrics) return send(res, 404, 'text/plain', 'no metrics: this page shows a recorded log\n');
        return send(res, 200, metrics.contentType, await metrics.text());
      case '/events':
        return openStream(res);
      default:
        return send(res, 404, 'text/plain', `nothing at ${url.pathname}; the page is at /\n`);
    }
  };

  const openStream = (res: ServerResponse): void => {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
    let stale = false;
    const write = (event: string, data: unknown): void => {
      res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    write('full', { meta, ...hub.full() });
    streams.add(res);
    const off = hub.subscribe((batch) => {
      if (res.writableLength > SLOW_CLIENT_BYTES) {
        stale = true;
        return;
      }
      if (stale) {
        stale = false;
        write('full', { meta, ...hub.full() });
      } else write('batch', batch);
    });
    res.on('close', () => {
      off();
      streams.delete(res);
    });
  };

  const server: Server = createServer((req, res) => {
    handler(req, res).catch((err: Error) => send(res, 500, 'text/plain', `inspector error: ${err.message}\n`));
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(err.code === 'EADDRINUSE' ? `inspector port ${opts.port} is already in use: choose another with --inspect PORT, or --inspect 0 for a free one` : `cannot start the inspector: ${err.message}`)),
    );
    server.listen(opts.port, '127.0.0.1', () => {
      const addr = server.address();
      const port = typeof addr === 'object' && addr ? addr.port : opts.port;
      resolve({
        port,
        url: `http://127.0.0.1:${port}/`,
        close: () =>
          new Promise<void>((done) => {
            for (const s of streams) s.end();
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}
