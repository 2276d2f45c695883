/** The library built once per test run (`npm run build`: dist/), for the specs that use it as another program would. */
import { spawn } from 'node:child_process';
import { ROOT } from './procs.js';

let once: Promise<void> | undefined;

export function built(): Promise<void> {
  once ??= new Promise<void>((resolve, reject) => {
    const child = spawn(process.execPath, ['lib/build.mjs'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`npm run build failed (${code}):\n${out}`))));
  });
  return once;
}
