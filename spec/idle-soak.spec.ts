/**
 * The soak's fleet mode (`bench/soak.ts --idle-clients`, bench/idle-fleet.ts), run for seconds: idle library clients
 * on two proxies, four kills (one proxy by SIGKILL, the other, then both with SIGTERM, then one again). What it
 * counts is checked, not its timings: every kill found the clients of the proxies it killed, every one of them was
 * back before the next (the soak waits for them), every request sent settled, the dials were seen (refused ones to the proxies down), and the
 * client process was sampled.
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { KillRow } from '../bench/idle-fleet.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const test = suite('idle soak');

test('--idle-clients: four kills of a fleet of two, every client back after each, every request settled, the dials and the client process counted', async () => {
  const args = ['--import', 'tsx', 'bench/soak.ts', '--idle-clients', '20', '--kill-proxy-every', '5', '--down', '1', '--kill-both-every', '3', '--request-every', '1', '--minutes', '0.35'];
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  const file = /^results: (.+)$/m.exec(out)?.[1];
  assert.ok(file, out);
  const { summary, rows, stats } = JSON.parse(readFileSync(file!, 'utf8')) as {
    summary: { requests: number; settled: number; lost: number; problems: string[] };
    rows: KillRow[];
    stats: unknown[];
  };
  rmSync(file!);
  assert.equal(summary.problems, [], out);
  assert.is(code, 0, out);
  assert.equal(rows.map((r) => `${r.which.includes('+') ? 'both' : 'one'} ${r.signal}`), ['one SIGKILL', 'one SIGKILL', 'both SIGTERM', 'one SIGKILL'], out);
  for (const r of rows) {
    assert.ok(r.affected > 0, `kill ${r.n} found no client on ${r.which}: ${out}`);
    assert.is(r.notBack, 0, out);
    assert.ok(r.backMaxMs > 0 && r.requests > 0 && r.dials >= r.affected, `kill ${r.n}: ${JSON.stringify(r)}`);
    assert.ok(r.stats && r.stats.sockets > 0 && r.stats.timers >= 0 && r.stats.handles > 0, `kill ${r.n}: ${JSON.stringify(r.stats)}`);
  }
  // The whole fleet down: every client lost its proxy, and dialled both while they were down (refused).
  const both = rows[2]!;
  assert.is(both.affected, 20, out);
  assert.ok(both.dialsToKilled > 0 && both.dialsFailed > 0, JSON.stringify(both));
  assert.ok(summary.requests > 0 && summary.settled === summary.requests && summary.lost === 0, JSON.stringify(summary));
  assert.ok(stats.length >= rows.length, 'the client process sampled at least once a kill');
});

test.run();
