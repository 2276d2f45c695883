/**
 * A proxy process whose stdout nobody reads, under load: for the logging
 * spec (and by hand: `npx tsx spec/log-pressure.ts debug 5`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { nodeFlags, onFreePorts } from '../bench/procs.js';
import { startServer, type ServerHandle } from '../actors/index.js';
import { BIN, ROOT } from './procs.js';
import { runLoad } from './load.js';
import { sleep } from './helpers.js';

export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

export interface Pressure {
  child: ChildProcess;
  port: number;
  servers: ServerHandle[];
  /** Starts reading stdout: resolves with the lines read until `until` matches one (or `ms` passes). */
  read(until: RegExp, ms: number): Promise<string[]>;
  close(): Promise<void>;
}

/**
 * Start a proxy process (stdout to a pipe nobody reads yet; the shebang's node flags unless `nodeArgs`) and
 * two servers in this process; on another free port when the one chosen was taken before it listened (`onFreePorts`).
 */
export function startPressure(args: string[], nodeArgs: string[] = nodeFlags(BIN)): Promise<Pressure> {
  return onFreePorts(1, ([port]) => pressureOn(port!, args, nodeArgs));
}

async function pressureOn(port: number, args: string[], nodeArgs: string[]): Promise<Pressure> {
  const child = spawn(process.execPath, [...nodeArgs, BIN, 'proxy', '--port', String(port), ...args], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: undefined }, stdio: ['ignore', 'pipe', 'pipe'] });
  // stdout stays paused: nothing is read from the pipe until `read`. Its errors are passed on, and kept for a start that fails.
  let said = '';
  const stderrEnded = new Promise((resolve) => child.stderr!.once('end', resolve));
  child.stderr!.setEncoding('utf8').on('data', (t: string) => {
    said += t;
    process.stderr.write(t);
  });
  const servers: ServerHandle[] = [];
  try {
    for (let tries = 0; servers.length < 2; tries++) {
      if (child.exitCode !== null || child.signalCode !== null) {
        await stderrEnded;
        throw new Error(`the proxy on port ${port} exited before its servers registered: ${said}`);
      }
      try {
        servers.push(await startServer({ id: `s${servers.length}`, policy: 'P', listenPort: 0, proxy: { host: '127.0.0.1', port }, registerTimeoutMs: 500 }));
      } catch (err) {
        if (tries > 40) throw err;
        await sleep(100);
      }
    }
  } catch (err) {
    child.kill('SIGKILL');
    for (const s of servers) s.kill();
    throw err;
  }
  await sleep(200);
  return {
    child,
    port,
    servers,
    read(until, ms) {
      return new Promise((resolve) => {
        const lines: string[] = [];
        let buf = '';
        const done = (): void => {
          clearTimeout(timer);
          child.stdout!.off('data', onData);
          resolve(lines);
        };
        const onData = (t: string): void => {
          buf += t;
          const parts = buf.split('\n');
          buf = parts.pop()!;
          lines.push(...parts);
          if (parts.some((l) => until.test(l))) done();
        };
        const timer = setTimeout(done, ms);
        child.stdout!.setEncoding('utf8').on('data', onData);
      });
    },
    async close() {
      child.stdout!.resume();
      child.kill('SIGKILL');
      for (const s of servers) s.kill();
    },
  };
}

/** Load for `seconds`: pipelined requests on 4 connections, in rounds. */
export async function loadFor(port: number, seconds: number): Promise<number> {
  const end = Date.now() + seconds * 1000;
  let acks = 0;
  while (Date.now() < end) {
    const r = await runLoad({ ports: [port], policy: 'P', connections: 4, perConnection: 2000, window: 64, deadlineMs: 5000 });
    acks += r.acks;
  }
  return acks;
}

if (process.argv[1]?.endsWith('log-pressure.ts')) {
  const level = process.argv[2] ?? 'debug';
  const seconds = Number(process.argv[3] ?? 5);
  const p = await startPressure(['--log-level', level]);
  const start = rssBytes(p.child.pid!);
  const t0 = Date.now();
  const samples: string[] = [];
  const sampler = setInterval(() => samples.push(`${((Date.now() - t0) / 1000).toFixed(1)}s ${(rssBytes(p.child.pid!) / 2 ** 20).toFixed(0)}MB`), 500);
  const acks = await loadFor(p.port, seconds);
  clearInterval(sampler);
  console.log(`level ${level}: ${acks} acks in ${seconds} s; RSS start ${(start / 2 ** 20).toFixed(0)} MB; ${samples.join(', ')}`);
  const lines = await p.read(/Dropped/, 7000);
  console.log(`read ${lines.length} lines; dropped line: ${lines.find((l) => /Dropped/.test(l)) ?? 'none'}`);
  await p.close();
  process.exit(0);
}
