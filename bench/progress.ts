/** The bench's progress display. */
import type * as CliProgress from 'cli-progress';
import { lazyPackage } from '../transport/lazy.js';

/** cli-progress, loaded when a bar is shown (by bench and load only). */
export const cliProgress = lazyPackage<typeof CliProgress>('cli-progress');

/** Progress: a bar on a terminal, one line per step otherwise. `grow` adds steps learnt on the way (a workload's cells once it is planned). */
export function progress(enabled: boolean, total: number) {
  const live = { answered: 0, opened: 0 };
  const tty = enabled && process.stderr.isTTY;
  const bar = tty
    ? new (cliProgress().SingleBar)(
        { format: ' {bar} {value}/{total} | {step} | {answered} answers', stream: process.stderr, hideCursor: true, clearOnComplete: true },
        cliProgress().Presets.shades_classic,
      )
    : undefined;
  bar?.start(total, 0, { step: 'starting', answered: 0 });
  const timer = bar ? setInterval(() => bar.update({ answered: live.answered.toLocaleString('en') }), 250) : undefined;
  let done = 0;
  return {
    live,
    step(name: string) {
      live.answered = 0;
      if (bar) bar.update(done, { step: name, answered: 0 });
      else if (enabled) process.stderr.write(`bench: [${done + 1}/${total}] ${name}\n`);
    },
    advance() {
      done++;
      bar?.update(done);
    },
    grow(steps: number) {
      total += steps;
      bar?.setTotal(total);
    },
    stop() {
      if (timer) clearInterval(timer);
      bar?.stop();
    },
  };
}

export type Progress = ReturnType<typeof progress>;
