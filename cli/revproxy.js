#!/usr/bin/env -S node --max-semi-space-size=8 --heap-growing-percent=50
// Entry point for `npx revproxy` and `npm start`.
//
// The V8 flags bound the heap of a proxy holding many connections (the bench
// reads them from this line, so every process it starts runs as this one does):
// - --max-semi-space-size=8 bounds the young generation: with the default
//   (sized from this machine's 24 GB) a proxy holding 10,000 connections peaked
//   at 317 MB, with 16 MB semi-spaces at about 215 MB (170-174 MB once a
//   connection kept no closures), with 8 MB at 154-155 MB (alternating runs),
//   for the same throughput; pipelined, CPU per request moved by 1-2 % (paired
//   rounds; scavenges cost what survives them, a few hundred requests in flight).
// - --heap-growing-percent=50: a full collection is due when the old
//   generation has grown by half since the last one. V8's own factor reaches 4
//   on a machine with this much memory: 10,000 busy connections peaked at
//   229-256 MB with it, 162-173 MB with 2 (100 %), and, with 8 MB
//   semi-spaces, 154-158 MB with 2 and 132-142 MB with 1.5 (three rounds on
//   one proxy, alternating runs). Pipelined, CPU per request stayed within
//   1-2 % at each step (paired rounds), and GC took 6.2-7.4 % of the proxy's
//   CPU at 1.5 and at 2 alike (--trace-gc-nvp, 5 s runs: 35-40 short full
//   collections either way; what survives them is small).
//
// The TypeScript sources are bundled once into .build/revproxy.mjs with
// esbuild (about 0.2 s, redone whenever a source file is newer than the
// bundle) and run as plain JavaScript: no loader thread at run time, which
// saves about 50 MB of memory and most of the start-up time per process.
// If bundling is impossible, the sources run through tsx instead.
//
// Packages stay in node_modules, loaded by Node, except rxjs: it is bundled
// from its ES module build, so only what the sources use (Observable and a
// few helpers, about 25 KB) is loaded; its CommonJS build loads every
// operator, hundreds of files and about 4 MB of resident memory. Packages
// that only some commands need are loaded when first used
// (transport/lazy.ts).
import { mkdirSync, readdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const out = `${root}/.build/revproxy.mjs`;
const SOURCES = ['actors', 'transport', 'cli', 'inspector', 'bench', 'scenario', 'config', 'admin', 'registry'];

function newestSource() {
  let newest = statSync(`${root}/package.json`).mtimeMs;
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of SOURCES) {
    try {
      walk(`${root}/${d}`);
    } catch {
      // a folder that does not exist has nothing newer
    }
  }
  return newest;
}

const packagesExternalButRxjs = {
  name: 'packages-external-but-rxjs',
  setup(build) {
    build.onResolve({ filter: /^rxjs$/ }, () => ({
      path: join(dirname(createRequire(import.meta.url).resolve('rxjs/package.json')), 'dist/esm/index.js'),
    }));
    // rxjs's own imports (tslib) are bundled with it: they resolve from its folder, not ours.
    build.onResolve({ filter: /^[^./]/ }, (args) => (args.path.startsWith('node:') || args.importer.includes('/node_modules/rxjs/') ? undefined : { path: args.path, external: true }));
  },
};

async function bundle() {
  let built = 0;
  try {
    built = statSync(out).mtimeMs;
  } catch {
    // not built yet
  }
  if (built > newestSource()) return out;
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: [`${root}/cli/main.ts`],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    plugins: [packagesExternalButRxjs],
    write: false,
    logLevel: 'silent',
  });
  mkdirSync(`${root}/.build`, { recursive: true });
  // Several processes may start at once: write aside, then rename (atomic).
  const tmp = `${out}.${process.pid}.tmp`;
  writeFileSync(tmp, result.outputFiles[0].contents);
  renameSync(tmp, out);
  return out;
}

let entry;
try {
  entry = await bundle();
} catch (err) {
  if (process.env.REVPROXY_DEBUG) console.error('revproxy: bundling failed, running through tsx:', err);
}
let main;
if (entry) {
  ({ main } = await import(new URL(`file://${entry}`).href));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('./main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
