/**
 * The seed's demo, in one terminal: the proxy, four servers, six clients run
 * one after another, every line prefixed by its actor; then a table of who
 * answered whom. Exit 0 when all six answers verified.
 */
import { join } from 'node:path';
import { styleText } from 'node:util';
import { Logger } from '../actors/logger.js';
import { runClient, startProxy, startServer, StartError, type ServerHandle } from '../actors/index.js';
import { systemClock } from '../transport/clock.js';
import { loadPackets, makeSink, useColor, type LogFlags } from './common.js';
import { untilSignalAfter, type Attach } from './inspect.js';

export const DEMO_SERVERS = [
  { id: '100', policy: '111', offset: 5 },
  { id: '200', policy: '222', offset: 10 },
  { id: '300', policy: '111', offset: 15 },
  { id: '400', policy: '222', offset: 20 },
];
export const DEMO_CLIENTS = ['1', '2', '3', '4', '5', '6'];

export interface DemoOptions extends LogFlags {
  /** Inspector hooks (cli/inspect.ts), when inspected. */
  attach?: Attach;
  port: number;
  pkt: string;
  keep?: boolean;
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const sink = makeSink(o, 10);
  const log = (actor: string): Logger => new Logger(actor, sink, o.logLevel);
  // Every client's packet file is checked before anything starts: 1.json ... 6.json in --pkt.
  const hint = `demo --pkt takes a folder holding ${DEMO_CLIENTS[0]}.json to ${DEMO_CLIENTS.at(-1)}.json, like pktfiles/`;
  const packetsOf = new Map(DEMO_CLIENTS.map((id) => [id, loadPackets([join(o.pkt, `${id}.json`)], id, hint)]));
  const proxy = await startProxy({ port: o.port, logger: log('proxy'), ...o.attach }).catch((err: unknown) => {
    if (err instanceof StartError && /already in use/.test(err.message)) {
      throw new StartError(`${err.message} (the demo uses ports ${o.port} to ${o.port + 20}: \`npm start -- --port 0\` picks free ones)`);
    }
    throw err;
  });
  const servers: ServerHandle[] = [];
  let summary: { rows: string[][]; verified: number } | undefined;
  try {
    for (const s of DEMO_SERVERS) {
      servers.push(
        await startServer({
          id: s.id,
          policy: s.policy,
          listenPort: o.port === 0 ? 0 : o.port + s.offset,
          proxy: { host: '127.0.0.1', port: proxy.port },
          logger: log(`server ${s.id}`),
          inspect: o.attach?.inspect,
        }),
      );
    }
    await waitForMembers(proxy.pools, DEMO_SERVERS.length);
    const rows: string[][] = [];
    let verified = 0;
    for (const id of DEMO_CLIENTS) {
      const packets = packetsOf.get(id)!;
      const [r] = await runClient({ id, proxy: { host: '127.0.0.1', port: proxy.port }, packets, logger: log(`client ${id}`), inspect: o.attach?.inspect });
      if (r?.correct) verified++;
      const p = packets[0]!;
      rows.push([id, p.privPoliId, String(p.payload), r?.server ?? '-', r?.correct ? 'yes' : `no${r?.error ? ` (${r.error})` : ''}`]);
    }
    if (o.keep) {
      printSummary(o, rows, verified);
      await untilSignalAfter(() => process.stdout.write(`Proxy on port ${proxy.port}; Ctrl-C stops.\n`));
    }
    summary = { rows, verified };
    return verified === DEMO_CLIENTS.length ? 0 : 1;
  } finally {
    for (const s of servers) await s.stop();
    await proxy.stop();
    // The table comes last, after the shutdown lines, so it is what the terminal shows.
    if (summary && !o.keep) printSummary(o, summary.rows, summary.verified);
  }
}

function printSummary(o: DemoOptions, rows: string[][], verified: number): void {
  if (o.logFormat === 'json') {
    process.stdout.write(`${JSON.stringify({ event: 'demo_summary', verified, total: DEMO_CLIENTS.length, rows })}\n`);
    return;
  }
  process.stdout.write(`\n${table(['client', 'policy', 'payload', 'server', 'verified'], rows)}\n`);
  const line = `${verified}/${DEMO_CLIENTS.length} clients verified their answers`;
  const color = useColor(o.color);
  process.stdout.write(`${color ? styleText(verified === DEMO_CLIENTS.length ? 'green' : 'red', line) : line}\n`);
}

/** Setup messages travel on their own connections: wait until the proxy serves through them all. */
async function waitForMembers(pools: () => Record<string, { serving: string[] }>, n: number): Promise<void> {
  const until = systemClock.now() + 5000;
  while (Object.values(pools()).reduce((k, p) => k + p.serving.length, 0) < n) {
    if (systemClock.now() > until) throw new Error('servers did not register within 5 s');
    await new Promise((r) => setTimeout(r, 5));
  }
}

export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}
