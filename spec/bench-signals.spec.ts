/**
 * What the bench and the soak started ends with them, whatever signal ends them: SIGTERM (`kill`,
 * GNU timeout, a CI runner) and SIGHUP (the terminal closed) as Ctrl-C's SIGINT. Before, only the
 * bench caught SIGINT: `pkill -f 'revproxy.js bench'` left its proxy, servers and HAProxy running.
 * Each run is as small as the command allows, signalled once its processes are up; the processes
 * are found from /proc (every descendant), and each must be gone a few seconds after.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync } from 'node:fs';
import { tempDir } from './helpers.js';
import { BIN, killAll, listensOn, start, type Proc } from './procs.js';

const test = suite('bench and soak: children stopped on every signal that ends them');
test.after(killAll);

/** A process as /proc shows it now: its start time tells it from a later one given the same id. */
interface Seen {
  pid: number;
  started: string;
  cmd: string;
}

function stat(pid: number): { state: string; started: string } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return { state: f[0]!, started: f[19]! };
  } catch {
    return undefined;
  }
}

/** Every descendant of `pid` running now (children of children included). */
function descendants(pid: number): Seen[] {
  const out: Seen[] = [];
  const walk = (p: number): void => {
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const t of tasks) {
      let kids: number[] = [];
      try {
        kids = readFileSync(`/proc/${p}/task/${t}/children`, 'utf8').split(' ').filter(Boolean).map(Number);
      } catch {
        continue;
      }
      for (const k of kids) {
        const st = stat(k);
        if (!st) continue;
        let cmd = '';
        try {
          cmd = readFileSync(`/proc/${k}/cmdline`, 'utf8').split('\0').join(' ').trim();
        } catch {
          // gone meanwhile
        }
        out.push({ pid: k, started: st.started, cmd });
        walk(k);
      }
    }
  };
  walk(pid);
  return out;
}

/** Whether the process seen still runs (a zombie, or another process now under its id, does not). */
function running(p: Seen): boolean {
  const st = stat(p.pid);
  return st !== undefined && st.started === p.started && st.state !== 'Z';
}

/** The port a proxy among `procs` was started on, once it listens there. */
function proxyListening(procs: Seen[]): boolean {
  return procs.some((p) => {
    const m = /revproxy\.js proxy .*--port (\d+)/.exec(p.cmd);
    return m !== null && listensOn(p.pid, Number(m[1]));
  });
}

/**
 * Signal `proc` once `ready(descendants)` holds, then: its exit status, and whatever it had started that
 * still runs 5 s after (none is right).
 */
async function signalWhenUp(proc: Proc, signal: NodeJS.Signals, ready: (procs: Seen[]) => boolean, what: string): Promise<{ code: number; started: Seen[]; left: Seen[] }> {
  let started: Seen[] = [];
  // Every 100 ms: walking /proc is not free on a machine the run shares.
  for (const until = Date.now() + 60_000; !ready((started = descendants(proc.child.pid!))); ) {
    if (Date.now() > until || proc.child.exitCode !== null) {
      // Not SIGKILL (killAll): what it started would be left running.
      proc.kill('SIGTERM');
      await proc.exited;
      throw new Error(`timed out waiting until ${what}; output:\n${proc.out.join('\n')}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  // Taken again as it is signalled: whatever it started since belongs to it too.
  started = [...started, ...descendants(proc.child.pid!).filter((d) => !started.some((s) => s.pid === d.pid))];
  proc.kill(signal);
  const code = await Promise.race([proc.exited, new Promise<number>((r) => setTimeout(() => r(-1), 15_000))]);
  const until = Date.now() + 5000;
  let left = started.filter(running);
  while (left.length && Date.now() < until) {
    await new Promise((r) => setTimeout(r, 100));
    left = left.filter(running);
  }
  for (const p of left) process.kill(p.pid, 'SIGKILL');
  return { code, started, left };
}

/** `revproxy bench`, as small as it goes: one workload, on the proxy alone (with its four servers). */
function bench(): Proc {
  return start(process.execPath, [BIN, 'bench', '--workloads', 'serial', '--targets', 'proxy', '--rounds', '3', '--duration', '1', '--warmup', '50', '--no-routing', '--busy-poll', '0', '--no-progress', '--out', tempDir('bench-out-')]);
}

/** Its proxy listens, and its four servers are started. */
const benchUp = (procs: Seen[]): boolean => proxyListening(procs) && procs.filter((p) => /revproxy\.js server /.test(p.cmd)).length >= 4;

test('revproxy bench stopped with SIGTERM: its proxy and servers are gone, and it exits 143', async () => {
  const r = await signalWhenUp(bench(), 'SIGTERM', benchUp, 'the bench started its proxy and servers');
  assert.ok(r.started.length >= 5, `the bench's processes were found: ${r.started.map((p) => p.cmd).join('\n')}`);
  assert.equal(r.left.map((p) => p.cmd), [], 'still running 5 s after SIGTERM');
  assert.is(r.code, 143);
});

test('npm run soak stopped with SIGTERM (npm passes it on): the soak stops its proxy and servers, and exits 143', async () => {
  // npm's shell ran the soak as its child and ended at the SIGTERM, the soak never told; tsx's CLI, run there,
  // passed it on but SIGKILLed a soak whose event loop, busy with the load, took over 30 ms to answer.
  const proc = start('npm', ['run', '--silent', 'soak', '--', '--minutes', '1', '--stall', '0', '--window', '1']);
  const r = await signalWhenUp(proc, 'SIGTERM', (procs) => proxyListening(procs) && procs.filter((p) => /revproxy\.js server /.test(p.cmd)).length === 3 && proc.out.some((l) => l.startsWith('soak: ')), 'the soak started its load');
  assert.ok(r.started.some((p) => /bench\/soak\.ts/.test(p.cmd)), 'the soak was found');
  assert.equal(r.left.map((p) => p.cmd), [], 'still running 5 s after SIGTERM');
  assert.is(r.code, 143);
});

test("the soak's idle fleet stopped with SIGHUP: its two proxies, servers and the clients' process are gone, and it exits 129", async () => {
  // The soak itself (npm passes on SIGINT and SIGTERM, not SIGHUP: a closed terminal sends it to every process of the group).
  const proc = start(process.execPath, ['--import', 'tsx', 'bench/soak.ts', '--idle-clients', '2', '--minutes', '1', '--kill-proxy-every', '30']);
  const r = await signalWhenUp(proc, 'SIGHUP', (procs) => procs.some((p) => /idle-clients\.ts/.test(p.cmd)) && proc.out.some((l) => l.startsWith('idle fleet: ')), "the fleet's clients connected");
  assert.ok(r.started.some((p) => /idle-clients\.ts/.test(p.cmd)), 'the clients\' process was found');
  assert.equal(r.left.map((p) => p.cmd), [], 'still running 5 s after SIGHUP');
  assert.is(r.code, 129);
});

test.run();
