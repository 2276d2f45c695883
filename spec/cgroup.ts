/**
 * A memory-limited control group for specs, as a container (`resources.limits.memory`) or a
 * systemd unit (`MemoryMax=`) gives a process: cgroup v1's memory controller
 * (/sys/fs/cgroup/memory), or cgroup v2's where the root delegates it. Needs root. Each group
 * is named after this process, and removed in `remove()` and when the process exits, whatever
 * happened (its processes killed first: a group with processes cannot be removed).
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface MemoryGroup {
  /** The file a process writes its id into to join the group (`revproxy(args, { memoryGroup })`). */
  readonly procs: string;
  /** How many times the kernel's OOM killer killed a process of the group. */
  oomKills(): number;
  remove(): void;
}

const V1 = '/sys/fs/cgroup/memory';
const V2 = '/sys/fs/cgroup';

function v2Memory(): boolean {
  try {
    return readFileSync(join(V2, 'cgroup.subtree_control'), 'utf8').split(/\s+/).includes('memory');
  } catch {
    return false;
  }
}

/** Why a memory-limited group cannot be made here, or undefined when it can. */
export function cannotLimitMemory(): string | undefined {
  if (process.getuid?.() !== 0) return 'control groups need root (CI runs the specs as root)';
  if (existsSync(join(V1, 'memory.limit_in_bytes')) || v2Memory()) return undefined;
  return `no memory controller to make a group with (neither cgroup v1's ${V1} nor cgroup v2's ${V2} with memory in cgroup.subtree_control)`;
}

let made = 0;

/** A new group whose processes may use `limit` bytes together (swap included, so the limit is what the OOM killer acts on). */
export function memoryGroup(limit: number): MemoryGroup {
  const v1 = existsSync(join(V1, 'memory.limit_in_bytes'));
  const dir = join(v1 ? V1 : V2, `revproxy-spec-${process.pid}-${made++}`);
  const remove = (): void => {
    // Once removed, the group no longer waits for the process's exit (a spec file that makes many would leak listeners).
    process.off('exit', remove);
    try {
      for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // gone already
        }
      }
      // The kernel lets a group go once its killed processes are reaped; wait for that a little.
      for (let i = 0; i < 200; i++) {
        try {
          rmdirSync(dir);
          return;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EBUSY') return;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
        }
      }
    } catch {
      // not made, or gone already
    }
  };
  process.once('exit', remove);
  mkdirSync(dir);
  if (v1) {
    writeFileSync(join(dir, 'memory.limit_in_bytes'), String(limit));
    // Where swap is accounted, keep the group from swapping past the limit instead of being killed.
    if (existsSync(join(dir, 'memory.memsw.limit_in_bytes'))) writeFileSync(join(dir, 'memory.memsw.limit_in_bytes'), String(limit));
  } else {
    writeFileSync(join(dir, 'memory.max'), String(limit));
    if (existsSync(join(dir, 'memory.swap.max'))) writeFileSync(join(dir, 'memory.swap.max'), '0');
  }
  return {
    procs: join(dir, 'cgroup.procs'),
    oomKills() {
      const text = readFileSync(join(dir, v1 ? 'memory.oom_control' : 'memory.events'), 'utf8');
      return Number(/^oom_kill (\d+)/m.exec(text)?.[1] ?? 0);
    },
    remove,
  };
}
