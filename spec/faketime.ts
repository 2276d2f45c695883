/**
 * A wall clock a spec can step under a real process, as NTP, a resumed VM or
 * `date -s` steps a machine's: Debian's libfaketime (package `faketime`,
 * which .ci/run installs), preloaded into the process. The offset from the
 * real time is read from a file on every read of the clock
 * (`FAKETIME_NO_CACHE=1`), so writing `+1h` or `-1d` there moves Date.now()
 * in the running process at once; `DONT_FAKE_MONOTONIC=1` leaves
 * CLOCK_MONOTONIC alone (performance.now(), Node's timers), as a real step
 * does. Checked on Node 20: a child's Date.now() jumps by the offset the
 * moment the file changes, its performance.now() does not.
 */
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './helpers.js';

/** libfaketime's path (`/usr/lib/<arch>/faketime/libfaketime.so.1`), or undefined when it is not installed. */
export function libfaketime(): string | undefined {
  for (const arch of existsSync('/usr/lib') ? readdirSync('/usr/lib') : []) {
    const lib = join('/usr/lib', arch, 'faketime', 'libfaketime.so.1');
    if (existsSync(lib)) return lib;
  }
  return undefined;
}

export interface SteppedClock {
  /** The environment that puts a process on this clock. */
  env: Record<string, string>;
  /** Step the wall clock of every process on it: `+1h`, `-1d`, `+0` (libfaketime's offsets from the real time). */
  step(offset: string): void;
}

export function steppedClock(): SteppedClock {
  const lib = libfaketime();
  if (!lib) throw new Error('libfaketime is not installed (Debian: sudo apt-get install -y faketime)');
  const file = join(tempDir('revproxy-faketime-'), 'offset');
  writeFileSync(file, '+0\n');
  return {
    env: { LD_PRELOAD: lib, FAKETIME_TIMESTAMP_FILE: file, FAKETIME_NO_CACHE: '1', DONT_FAKE_MONOTONIC: '1' },
    step: (offset) => writeFileSync(file, `${offset}\n`),
  };
}
