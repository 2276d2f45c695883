/**
 * A small load generator for fault specs: C connections, each keeping W
 * requests in flight, N requests per connection. It records every answer per
 * request, so duplicates, wrong hashes and silence are all visible. A closed
 * connection fails over to the next port and sends the unanswered again.
 */
import { connect, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';
import { sha1Hex } from '../actors/sha1.js';

export interface LoadReport {
  sent: number;
  acks: number;
  errors: Record<string, number>;
  wrongHashes: number;
  duplicates: number;
  unanswered: number;
  byServer: Record<string, number>;
}

export interface LoadOptions {
  ports: number[];
  policy: string;
  connections: number;
  perConnection: number;
  window: number;
  /** Give up on unanswered requests after this long (ms). */
  deadlineMs?: number;
  /** Called once, when half of all requests have been answered. */
  onHalfway?: () => void;
}

export async function runLoad(o: LoadOptions): Promise<LoadReport> {
  const report: LoadReport = { sent: 0, acks: 0, errors: {}, wrongHashes: 0, duplicates: 0, unanswered: 0, byServer: {} };
  const total = o.connections * o.perConnection;
  let answeredAll = 0;
  let halfway = false;
  const sockets = new Set<Socket>();
  let stopped = false;

  const one = (c: number): Promise<void> =>
    new Promise((resolve) => {
      const answered = new Uint8Array(o.perConnection);
      let queue = Array.from({ length: o.perConnection }, (_, i) => i);
      let inflight = 0;
      let done = 0;
      let portIndex = 0;
      const payload = (i: number): string => `c${c}-r${i}`;

      const open = (): void => {
        if (stopped) return resolve();
        const sock = connect({ host: '127.0.0.1', port: o.ports[portIndex % o.ports.length]! });
        sockets.add(sock);
        const decoder = new FrameDecoder();
        const pump = (): void => {
          const batch: Buffer[] = [];
          while (queue.length && inflight < o.window) {
            const i = queue.shift()!;
            if (answered[i]) continue;
            batch.push(encodeFrame({ type: 0, seq: i, srcid: `load${c}`, privPoliId: o.policy, payload: payload(i) }));
            inflight++;
            report.sent++;
          }
          if (batch.length) sock.write(Buffer.concat(batch));
        };
        sock.on('connect', pump);
        sock.on('error', () => {});
        sock.on('data', (chunk: Buffer) => {
          for (const m of decoder.push(chunk).messages) {
            if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
            const i = m.seq ?? -1;
            if (i < 0 || i >= o.perConnection) continue;
            if (answered[i]) {
              report.duplicates++;
              continue;
            }
            answered[i] = 1;
            inflight--;
            done++;
            answeredAll++;
            if (m.type === MsgType.ACK) {
              report.acks++;
              report.byServer[m.srcid] = (report.byServer[m.srcid] ?? 0) + 1;
              if (m.payload !== sha1Hex(payload(i))) report.wrongHashes++;
            } else report.errors[m.code] = (report.errors[m.code] ?? 0) + 1;
          }
          if (!halfway && answeredAll >= total / 2) {
            halfway = true;
            o.onHalfway?.();
          }
          if (done === o.perConnection) {
            sock.end();
            resolve();
          } else pump();
        });
        sock.on('close', () => {
          sockets.delete(sock);
          if (done === o.perConnection) return;
          // Fail over: everything unanswered goes again, on the next port.
          queue = [];
          for (let i = 0; i < o.perConnection; i++) if (!answered[i]) queue.push(i);
          inflight = 0;
          portIndex++;
          setTimeout(open, 50);
        });
      };
      open();
    });

  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<void>((r) => (timer = setTimeout(r, o.deadlineMs ?? 15000)));
  await Promise.race([Promise.all(Array.from({ length: o.connections }, (_, c) => one(c))), deadline]);
  clearTimeout(timer);
  stopped = true;
  for (const s of sockets) s.destroy();
  report.unanswered = total - report.acks - Object.values(report.errors).reduce((a, b) => a + b, 0);
  return report;
}
