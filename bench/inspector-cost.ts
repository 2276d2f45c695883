/**
 * What the inspector costs the proxy under load: the same pipelined load
 * through a proxy process without and with `--inspect` (with a page's event
 * stream connected), in alternating rounds. Not a general load generator
 * (that is the benchmark's job): one connection, a fixed window of requests
 * in flight, answers counted over a fixed time.
 *
 *   npx tsx bench/inspector-cost.ts [--rounds 3] [--seconds 3] [--window 256]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startServer, type ServerHandle } from '../actors/index.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';
import { freePort } from './procs.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, seconds: { type: 'string', default: '3' }, window: { type: 'string', default: '256' } } });
const ROUNDS = Number(values.rounds);
const SECONDS = Number(values.seconds);
const WINDOW = Number(values.window);
const BIN = fileURLToPath(new URL('../cli/revproxy.js', import.meta.url));

async function startProxyProcess(inspect: boolean): Promise<{ child: ChildProcess; port: number; url?: string }> {
  const port = await freePort();
  const args = [BIN, 'proxy', '--port', String(port), '--log-level', 'warn', ...(inspect ? ['--inspect', '0'] : [])];
  const child = spawn(process.execPath, [...(process.env.PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.PROF] : []), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  let url: string | undefined;
  if (inspect) {
    url = await new Promise<string>((resolve, reject) => {
      let buf = '';
      child.stderr!.setEncoding('utf8').on('data', (t: string) => {
        buf += t;
        const m = /on (http:\/\/127\.0\.0\.1:\d+\/)/.exec(buf);
        if (m) resolve(m[1]!);
      });
      child.once('exit', () => reject(new Error(`proxy exited: ${buf}`)));
    });
  }
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return { child, port, url };
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('the proxy did not start listening');
}

/** CPU time (user + system) a process has used, in ms (Linux). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100; // utime, stime in clock ticks (USER_HZ = 100)
}

/** Keep WINDOW requests in flight on one connection; count answers after a one-second warm-up. */
async function load(port: number, pid: number): Promise<{ rps: number; cpuUsPerReq: number }> {
  const sock = connect({ host: '127.0.0.1', port });
  sock.setNoDelay(true);
  await new Promise((r) => sock.once('connect', r));
  const decoder = new FrameDecoder();
  let seq = 0;
  let counted = 0;
  let counting = false;
  const send = (n: number): void => {
    const frames: Buffer[] = [];
    for (let i = 0; i < n; i++) frames.push(encodeFrame({ type: MsgType.DATA, seq: (seq = (seq + 1) >>> 0), srcid: 'bench', privPoliId: 'P', payload: 'payload-of-a-bench-request' }));
    sock.write(Buffer.concat(frames));
  };
  sock.on('data', (chunk: Buffer) => {
    const { messages } = decoder.push(chunk);
    if (counting) counted += messages.length;
    send(messages.length);
  });
  send(WINDOW);
  await new Promise((r) => setTimeout(r, 1000));
  counting = true;
  const cpu0 = cpuMs(pid);
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  const cpu = cpuMs(pid) - cpu0;
  counting = false;
  sock.destroy();
  return { rps: counted / SECONDS, cpuUsPerReq: (cpu * 1000) / counted };
}

async function round(inspect: boolean): Promise<{ rps: number; cpuUsPerReq: number }> {
  const proxy = await startProxyProcess(inspect);
  const servers: ServerHandle[] = [];
  const abort = new AbortController();
  try {
    for (const id of ['1', '2']) servers.push(await startServer({ id, policy: 'P', listenPort: 0, proxy: { host: '127.0.0.1', port: proxy.port } }));
    await new Promise((r) => setTimeout(r, 200));
    if (proxy.url) {
      // A page is open: its event stream is read throughout.
      void fetch(`${proxy.url}events`, { signal: abort.signal }).then(async (res) => {
        for await (const _ of res.body!) void _;
      }).catch(() => {});
    }
    return await load(proxy.port, proxy.child.pid!);
  } finally {
    abort.abort();
    for (const s of servers) s.kill();
    proxy.child.kill(process.env.PROF ? 'SIGTERM' : 'SIGKILL');
    if (process.env.PROF) await new Promise((r) => proxy.child.once('exit', r));
  }
}

type Run = { rps: number; cpuUsPerReq: number };
const off: Run[] = [];
const on: Run[] = [];
const show = (r: Run): string => `${r.rps.toFixed(0)} req/s, ${r.cpuUsPerReq.toFixed(2)} µs proxy CPU/req`;
for (let i = 0; i < ROUNDS; i++) {
  off.push(await round(false));
  on.push(await round(true));
  process.stdout.write(`round ${i + 1}: off ${show(off.at(-1)!)} | on ${show(on.at(-1)!)}\n`);
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const cOff = median(off.map((r) => r.cpuUsPerReq));
const cOn = median(on.map((r) => r.cpuUsPerReq));
const rOff = median(off.map((r) => r.rps));
const rOn = median(on.map((r) => r.rps));
process.stdout.write(
  `median off: ${rOff.toFixed(0)} req/s, ${cOff.toFixed(2)} µs/req | on: ${rOn.toFixed(0)} req/s, ${cOn.toFixed(2)} µs/req\n` +
    `inspector on: proxy CPU per request ${cOn >= cOff ? '+' : ''}${(100 * (cOn / cOff - 1)).toFixed(1)} %, requests/s ${rOn >= rOff ? '+' : ''}${(100 * (rOn / rOff - 1)).toFixed(1)} %\n`,
);
