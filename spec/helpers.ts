/** Test helpers: raw sockets, frames, waiting. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import type { Message } from '../transport/messages.js';
import { suite } from 'uvu';
import type { Client, ProxyHandle, ServerHandle } from '../actors/index.js';

export const LOCAL = '127.0.0.1';

export function rawConnect(port: number, localAddress?: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: LOCAL, port, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Collects every message a socket receives; `until(n)` waits for n of them. */
export function collector(socket: Socket) {
  const decoder = new FrameDecoder({ validate: true });
  const got: Message[] = [];
  let closed = false;
  const waiters: Array<() => void> = [];
  socket.on('data', (chunk: Buffer) => {
    const { messages } = decoder.push(chunk);
    got.push(...messages);
    for (const w of waiters.splice(0)) w();
  });
  socket.on('close', () => {
    closed = true;
    for (const w of waiters.splice(0)) w();
  });
  return {
    got,
    get closed() {
      return closed;
    },
    async until(pred: () => boolean, ms = 3000): Promise<void> {
      const end = Date.now() + ms;
      while (!pred()) {
        if (Date.now() > end) throw new Error(`timed out after ${ms} ms; got ${JSON.stringify(got).slice(0, 300)}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 20);
        });
      }
    },
  };
}

/**
 * A reader of an inspector's /events that takes the response's first bytes, then reads no
 * more: its status, and its socket (for the caller to destroy).
 */
export function sseReader(port: number): Promise<{ status: number; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, LOCAL, () => socket.write(`GET /events HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`));
    socket.on('error', reject);
    socket.once('data', (d) => {
      socket.pause();
      resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(String(d))?.[1]), socket });
    });
  });
}

export function frame(msg: Record<string, unknown>): Buffer {
  return encodeFrame(msg);
}

/** Resolves once `pred` holds (checked every 5 ms; it may be async); throws after `ms`. */
export async function eventually(pred: () => boolean | Promise<boolean>, ms = 3000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const tempDirs: string[] = [];

/**
 * A new folder under the system's temp folder, removed with all it holds when
 * the test process exits (passed, failed or stopped early), so runs leave
 * nothing behind.
 */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  if (tempDirs.push(dir) === 1) {
    process.once('exit', () => {
      for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
    });
  }
  return dir;
}

/**
 * An inspection log (NDJSON, as --inspect-log writes it) of one proxy actor: an `INCIDENT` event
 * first, then `quiet` TICK events, so the incident is far from the log's end. Its path.
 */
export function longInspectionLog(quiet: number): string {
  const file = join(tempDir('insp-log-'), 'long.ndjson');
  const lines = [JSON.stringify({ k: 'actor', t: 1, sid: 'x:0', id: 'proxy', machine: 'proxy' })];
  lines.push(JSON.stringify({ k: 'event', t: 2, n: 0, sid: 'x:0', type: 'INCIDENT', data: { what: 'early' } }));
  for (let n = 1; n <= quiet; n++) lines.push(JSON.stringify({ k: 'event', t: 2 + n, n, sid: 'x:0', type: 'TICK', data: {} }));
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

/**
 * Counts the turns of the event loop until stopped: a setImmediate that schedules itself again, one count a turn
 * of this process's loop (which a proxy started in the spec shares).
 */
export function turns() {
  let turn = 0;
  let on = true;
  const spin = (): void => {
    turn++;
    if (on) setImmediate(spin);
  };
  setImmediate(spin);
  return { now: () => turn, stop: () => void (on = false) };
}

/** How many of `at` (the turn each job or event came in) fell in each turn, the largest first. */
export function perTurn(at: number[]): number[] {
  const n = new Map<number, number>();
  for (const t of at) n.set(t, (n.get(t) ?? 0) + 1);
  return [...n.values()].sort((a, b) => b - a);
}

/** What a suite of the library's client starts in a test, stopped after it (`librarySuite`). */
export interface LibraryCtx {
  proxies: ProxyHandle[];
  servers: ServerHandle[];
  clients: Client[];
}

/** A suite whose tests start proxies, servers and clients in `ctx`, all ended after each test; `first` runs before that (spec/procs.ts killAll). */
export function librarySuite(name: string, ctx: LibraryCtx, first?: () => void) {
  const s = suite<LibraryCtx>(name, ctx);
  s.before.each(() => {
    ctx.proxies = [];
    ctx.servers = [];
    ctx.clients = [];
  });
  s.after.each(async () => {
    first?.();
    for (const c of ctx.clients) c.destroy();
    for (const s of ctx.servers) s.kill();
    for (const p of ctx.proxies) await p.stop();
  });
  return s;
}

/** A client `made` (connect()'s promise), ended after the test with the suite's (`librarySuite`). */
export async function clientIn(ctx: LibraryCtx, made: Promise<Client>): Promise<Client> {
  const c = await made;
  ctx.clients.push(c);
  return c;
}

/** What `p` rejects with (an Error 'resolved' when it resolves). */
export const rejection = <E>(p: Promise<unknown>): Promise<E> => p.then(() => { throw new Error('resolved'); }, (e: E) => e);
