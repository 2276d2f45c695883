/**
 * What a text access-log line costs the proxy's event loop: `AccessLog.answered`
 * for turns of `--lines` answers (a `setImmediate` between turns, as the proxy's
 * reads come), the answers' times 10 us apart on the proxy's clock, into a
 * destination that keeps the bytes and hands nothing to a file (the formatting
 * alone). With `--baseline DIR` (another checkout, with node_modules) its
 * `AccessLog` runs beside this one's in alternating rounds: the ratio is taken
 * inside each round. CPU time (user + system) per line, less that of the same
 * turns with no lines; medians over the rounds.
 *
 *   npx tsx bench/access-log.ts [--rounds 9] [--turns 20000] [--lines 32] [--baseline DIR]
 */
import { Socket } from 'node:net';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { newPeer, type ProxyRequest } from '../actors/link.js';
import type { Destination } from '../actors/logger.js';
import { AccessLog } from '../admin/access-log.js';
import { FrameBuffer } from '../transport/frame.js';
import { MsgType, type DataMsg } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '9' }, turns: { type: 'string', default: '20000' }, lines: { type: 'string', default: '32' }, baseline: { type: 'string' } } });
const rounds = Number(values.rounds);
const turns = Number(values.turns);
const lines = Number(values.lines);

/** A destination that keeps each 256 KiB of lines as a file log would hand them on, and drops them. */
function keepingNothing(): Destination {
  const bytes = new FrameBuffer(16 * 1024, true);
  return {
    bytes,
    dropped: 0,
    wrote() {
      if (bytes.length >= 256 * 1024) {
        bytes.recycle();
        bytes.take();
      }
    },
  } as unknown as Destination;
}

type Log = Pick<AccessLog, 'answered'>;
const logs: Array<{ name: string; log: Log }> = [{ name: 'this checkout', log: new AccessLog(keepingNothing(), 'text') }];
if (values.baseline) {
  const url = pathToFileURL(resolve(values.baseline, 'admin/access-log.ts')).href;
  const { AccessLog: Baseline } = (await import(url)) as { AccessLog: new (dest: Destination, format: 'text') => Log };
  logs.push({ name: `baseline ${values.baseline}`, log: new Baseline(keepingNothing(), 'text') });
}

// Eight client connections of two policies, answered by two servers each, as the bench's pipelined load.
const clients = Array.from({ length: 8 }, () => newPeer(new Connection(new Socket())));
const requests: ProxyRequest[] = Array.from({ length: 256 }, (_, i) => ({
  client: clients[i % 8]!,
  msg: { type: MsgType.DATA, srcid: 'load', privPoliId: i % 2 ? '111' : '222', seq: i, payload: 'x' } as DataMsg,
  arrived: 0,
}));
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const cpuNs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
};

/** CPU ns per line of `turns` turns of `lines` lines (none when `log` is undefined). */
async function run(log: Log | undefined): Promise<number> {
  const start = cpuNs();
  let k = 0;
  for (let t = 0; t < turns; t++) {
    if (log) {
      for (let i = 0; i < lines; i++, k++) {
        const req = requests[k & 255]!;
        req.msg.seq = k;
        const latency = 0.5 + (k % 977) * 0.0137;
        req.arrived = k * 0.01 - latency;
        log.answered(req.msg.privPoliId, k & 2 ? '100' : '300', 'ok', latency, req, 1);
      }
    }
    await turn();
  }
  return (cpuNs() - start) / (turns * lines);
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[a.length >> 1]!;
const per: number[][] = logs.map(() => []);
for (let r = 0; r < rounds; r++) {
  const idle = await run(undefined);
  for (let j = 0; j < logs.length; j++) {
    const i = (j + r) % logs.length;
    per[i]!.push((await run(logs[i]!.log)) - idle);
  }
}
console.log(`text access-log line, ${rounds} rounds of ${turns} turns x ${lines} lines: CPU ns per line (median, range)`);
for (const [i, { name }] of logs.entries()) console.log(`  ${name}: ${median(per[i]!).toFixed(0)} (${Math.min(...per[i]!).toFixed(0)}-${Math.max(...per[i]!).toFixed(0)})`);
if (logs.length === 2) {
  const ratios = per[0]!.map((x, r) => x / per[1]![r]!);
  console.log(`  this / baseline: ${median(ratios).toFixed(2)}x (${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)})`);
}
