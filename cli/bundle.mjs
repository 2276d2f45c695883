// The CLI's TypeScript sources bundled into .build/revproxy.mjs with esbuild
// (about 0.2 s), run by cli/revproxy.js as plain JavaScript: no loader thread
// at run time, which saves about 50 MB of memory and most of the start-up
// time per process.
//
// Packages stay in node_modules, loaded by Node, except rxjs: it is bundled
// from its ES module build, so only what the sources use (Observable and a
// few helpers, about 25 KB) is loaded; its CommonJS build loads every
// operator, hundreds of files and about 4 MB of resident memory. Packages
// that only some commands need are loaded when first used
// (transport/lazy.ts).
//
// In a checkout the bundle is made again whenever a source is newer. A
// package installed from npm carries the bundle `npm pack` made
// (lib/build.mjs), and runs it as it is: its sources do not change, the
// times its files were unpacked at say nothing about which is newer, and it
// may be installed where it cannot write (a global install, a read-only
// image).
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = fileURLToPath(new URL('..', import.meta.url));
export const bundlePath = join(root, '.build', 'revproxy.mjs');
const SOURCES = ['actors', 'transport', 'cli', 'inspector', 'bench', 'scenario', 'config', 'admin', 'registry'];

/** Whether this copy is a package installed into a node_modules folder (not a checkout). */
export const installed = root.split(sep).includes('node_modules');

function newestSource() {
  let newest = statSync(join(root, 'package.json')).mtimeMs;
  const walk = (dir) => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
    }
  };
  for (const d of SOURCES) {
    try {
      walk(join(root, d));
    } catch {
      // a folder that does not exist has nothing newer
    }
  }
  return newest;
}

/** Whether the bundle there is the one to run: in a checkout, newer than every source; installed, present. */
function current() {
  if (installed) return existsSync(bundlePath);
  try {
    return statSync(bundlePath).mtimeMs > newestSource();
  } catch {
    return false; // not built yet
  }
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

/** What esbuild compiles both bundles for (this one and lib/build.mjs's): the oldest Node package.json's `engines` allows (">=20": node20). */
export function nodeTarget() {
  const engines = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).engines?.node ?? '';
  const major = /^>=\s*(\d+)/.exec(engines)?.[1];
  if (!major) throw new Error(`package.json's engines.node is '${engines}': write the oldest Node it runs on as '>=N', which the bundles are compiled for`);
  return `node${major}`;
}

/** The bundle's path, made first when it is not current (or always, with `force`: `npm pack`). */
export async function bundle({ force = false } = {}) {
  if (!force && current()) return bundlePath;
  const esbuild = await import('esbuild');
  // esbuild runs as a child process (about 48 MB resident) that outlives the build unless stopped:
  // it stayed beside the proxy it made the bundle for, as long as the proxy ran.
  const result = await esbuild
    .build({
      entryPoints: [join(root, 'cli', 'main.ts')],
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: nodeTarget(),
      plugins: [packagesExternalButRxjs],
      write: false,
      logLevel: 'silent',
    })
    .finally(() => esbuild.stop());
  mkdirSync(dirname(bundlePath), { recursive: true });
  // Several processes may start at once: write aside, then rename (atomic).
  const tmp = `${bundlePath}.${process.pid}.tmp`;
  writeFileSync(tmp, result.outputFiles[0].contents);
  renameSync(tmp, bundlePath);
  return bundlePath;
}
