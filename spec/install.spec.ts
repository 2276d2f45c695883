/**
 * A fresh install is quiet: npm 11 runs a dependency's install script only
 * when package.json's `allowScripts` says so, and warns on every install
 * about each one it does not cover. Checked from the lockfile (any npm), and
 * by npm itself where it has `npm install-scripts` (npm 11). That the native
 * msgpackr addon still loads is spec/frame.spec.ts's.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ROOT } from './procs.js';

const json = (file: string): Record<string, unknown> => JSON.parse(readFileSync(`${ROOT}/${file}`, 'utf8'));

test("every dependency with an install script is decided in package.json's allowScripts", () => {
  const allow = (json('package.json').allowScripts ?? {}) as Record<string, boolean>;
  const packages = json('package-lock.json').packages as Record<string, { hasInstallScript?: boolean }>;
  const withScripts = Object.entries(packages)
    .filter(([path, p]) => path && p.hasInstallScript)
    .map(([path]) => path.slice(path.lastIndexOf('node_modules/') + 'node_modules/'.length))
    .sort();
  assert.equal(withScripts, ['esbuild', 'msgpackr-extract', 'protobufjs'], 'the three the README names');
  for (const name of withScripts) assert.is(typeof allow[name], 'boolean', `${name} is in allowScripts`);
  assert.equal(Object.keys(allow).sort(), withScripts, 'and nothing else is');
});

test('npm itself finds no install script left to review', async () => {
  const r = await new Promise<{ code: number; out: string }>((resolve) => {
    execFile('npm', ['install-scripts', 'ls'], { cwd: ROOT }, (err, stdout, stderr) => resolve({ code: typeof err?.code === 'number' ? err.code : err ? 1 : 0, out: stdout + stderr }));
  });
  if (/Unknown command/i.test(r.out)) return; // npm before 11 runs every install script and has nothing to warn about
  assert.is(r.code, 0, r.out);
  assert.match(r.out, /No packages with unreviewed install scripts/);
});

test("README's apt-get line installs every Debian package .ci/run installs for the specs", () => {
  const ci = readFileSync(`${ROOT}/.ci/run`, 'utf8');
  const needed = new Set([...ci.matchAll(/need\+=\(([a-z0-9.-]+)\)|apt-get install -y ([a-z0-9.-]+)\)/g)].map((m) => (m[1] ?? m[2])!));
  assert.ok(needed.size >= 10, `.ci/run's packages: ${[...needed].join(' ')}`);
  const line = readFileSync(`${ROOT}/README.md`, 'utf8').split('\n').find((l) => l.startsWith('sudo apt-get update && sudo apt-get install -y '));
  assert.ok(line, 'README has the apt-get line of "Two commands"');
  const listed = new Set(line!.split(/\s+/).slice(line!.split(/\s+/).lastIndexOf('-y') + 1));
  assert.equal([...needed].filter((p) => !listed.has(p)), [], "packages .ci/run installs that README's line leaves out");
});

test.run();
