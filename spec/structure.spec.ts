/**
 * The shape of the code (issue 13), checked on the sources themselves: no
 * import circles, transport/ below actors/, one error base, the proxy
 * machine file short enough to read top-down, no dead routing state.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './procs.js';

const FOLDERS = ['actors', 'transport', 'cli', 'scenario', 'inspector', 'bench', 'spec', 'lib', 'config', 'admin', 'registry', 'examples'];

function sources(): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return;
    }
    for (const n of names) {
      const p = join(dir, n);
      if (n === 'node_modules') continue;
      if (statSync(p).isDirectory()) walk(p);
      else if (n.endsWith('.ts') && !n.endsWith('.d.ts')) out.push(p);
    }
  };
  for (const f of FOLDERS) walk(join(ROOT, f));
  return out;
}

/** Each file's imports of the project's own files (type-only imports included: a circle of types is still a circle to a reader). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sources()) {
    const text = readFileSync(file, 'utf8');
    const deps: string[] = [];
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s+['"](\.{1,2}\/[^'"]+)['"]/g)) {
      deps.push(relative(ROOT, resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts')));
    }
    graph.set(relative(ROOT, file), deps);
  }
  return graph;
}

function cycles(graph: Map<string, string[]>): string[] {
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const found: string[] = [];
  const visit = (n: string): void => {
    state.set(n, 1);
    stack.push(n);
    for (const d of graph.get(n) ?? []) {
      if (!graph.has(d)) continue;
      if (state.get(d) === 1) found.push([...stack.slice(stack.indexOf(d)), d].join(' -> '));
      else if (!state.has(d)) visit(d);
    }
    stack.pop();
    state.set(n, 2);
  };
  for (const n of graph.keys()) if (!state.has(n)) visit(n);
  return found;
}

const shape = suite('the shape of the code');

shape('no file imports itself through others: the import graph has no circle', () => {
  const graph = importGraph();
  assert.ok(graph.size > 50, `read ${graph.size} files`);
  assert.equal(cycles(graph), []);
});

shape('the check finds a circle when there is one', () => {
  const graph = new Map([['a.ts', ['b.ts']], ['b.ts', ['c.ts']], ['c.ts', ['a.ts']]]);
  assert.equal(cycles(graph), ['a.ts -> b.ts -> c.ts -> a.ts']);
});

shape('only the programs import cli/: the actors, the config file, scenarios and the rest read files through config/', () => {
  const programs = ['cli/', 'spec/', 'bench/'];
  const wrong = [...importGraph()].filter(([f, deps]) => !programs.some((p) => f.startsWith(p)) && deps.some((d) => d.startsWith('cli/')));
  assert.equal(wrong.map(([f, deps]) => `${f}: ${deps.filter((d) => d.startsWith('cli/')).join(', ')}`), []);
});

shape('waits, deadlines and durations run on the monotonic clock (transport/clock.ts): the wall clock (Date.now(), new Date()) only for times shown to people', () => {
  // A wall-clock step (NTP at boot, a resumed VM, `date -s`) moves Date.now() by hours: a wait timed on it ends at once or never (spec/clock-step.spec.ts).
  const wall: Record<string, string> = {
    'actors/logger.ts': "a log line's time",
    'cli/watchdog.ts': "the time of the line its thread writes (the log's format)",
    'cli/inspect.ts': "a log line's time",
    'admin/access-log.ts': "an access-log line's time",
    'inspector/http.ts': "the wall clock the inspector's page shows times of day by (its records are on monotonicEpoch)",
    'transport/tls.ts': "a certificate's validity, which is in wall-clock dates (as every TLS peer checks it)",
    'cli/cert-expiry.ts': "whether a certificate in use has come within its warning window or ended (wall-clock dates); its waits run on the clock",
    'registry/etcd.ts': "gRPC's deadline (a wall-clock time by its API, made a timer as the call starts), and whether a client certificate has expired",
  };
  const found: string[] = [];
  for (const file of sources()) {
    const rel = relative(ROOT, file);
    if (rel.startsWith('spec/') || rel.startsWith('bench/') || wall[rel]) continue;
    readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
      if (/\bDate\.now\(\)|\bnew Date\(/.test(line) && !/^\s*(\/\/|\*)/.test(line)) found.push(`${rel}:${i + 1}: ${line.trim()}`);
    });
  }
  assert.equal(found, []);
});

shape('transport/ knows nothing of the actors above it', () => {
  const wrong = [...importGraph()].filter(([f, deps]) => f.startsWith('transport/') && deps.some((d) => !d.startsWith('transport/')));
  assert.equal(wrong.map(([f, deps]) => `${f}: ${deps.filter((d) => !d.startsWith('transport/')).join(', ')}`), []);
});

shape('one error family: only the base class extends Error, every other error extends the base', () => {
  const found: string[] = [];
  for (const file of sources()) {
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/class\s+(\w+)(?:<[^>]*>)?\s+extends\s+(\w+Error|Error)\b/g)) if (m[2] === 'Error') found.push(`${relative(ROOT, file)}: ${m[1]}`);
  }
  assert.equal(found, ['transport/errors.ts: RevproxyError']);
});

shape('the proxy machine file reads top-down in one sitting (under 350 lines), its rules in files of their own', () => {
  const lines = readFileSync(join(ROOT, 'actors/proxy.ts'), 'utf8').split('\n').length;
  assert.ok(lines < 350, `actors/proxy.ts has ${lines} lines`);
});

shape('no dead routing state: nothing counts picks made and undone in the same loop', () => {
  const hits = sources().filter((f) => f.includes('/actors/') && /\bplanned\b/.test(readFileSync(f, 'utf8')));
  assert.equal(hits.map((f) => relative(ROOT, f)), []);
});

shape("the oldest Node is written once, in package.json's engines: both bundles (cli/bundle.mjs, lib/build.mjs) compile for it", async () => {
  const engines = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } }).engines.node;
  const { nodeTarget } = (await import(pathToFileURL(join(ROOT, 'cli/bundle.mjs')).href)) as { nodeTarget(): string };
  assert.is(nodeTarget(), `node${/\d+/.exec(engines)![0]}`);
  const scripts = ['cli', 'lib', 'bench'].flatMap((dir) => readdirSync(join(ROOT, dir)).filter((n) => /\.(mjs|js|ts)$/.test(n)).map((n) => `${dir}/${n}`));
  const written = scripts.filter((f) => /target:\s*['"`]node\d/.test(readFileSync(join(ROOT, f), 'utf8')));
  assert.equal(written, [], 'a Node target written beside package.json');
});

shape("the hot path reads Buffer and performance from their modules, not Node 20's global getters (README's Benchmark: an inline-cache miss and a call at each read)", () => {
  const hot = ['transport/fastwire.ts', 'transport/frame.ts', 'transport/messages.ts', 'transport/clock.ts', 'transport/busy-poll.ts'];
  const wrong: string[] = [];
  for (const f of hot) {
    const code = readFileSync(join(ROOT, f), 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    for (const [name, from] of [['Buffer', 'node:buffer'], ['performance', 'node:perf_hooks']] as const) {
      const used = new RegExp(`(?<![\\w.])${name}\\.`).test(code);
      const imported = new RegExp(`import \\{[^}]*\\b${name}\\b[^}]*\\} from '${from}'`).test(code);
      if (used && !imported) wrong.push(`${f}: ${name} from the global object`);
    }
  }
  assert.equal(wrong, []);
});

shape("the proxy's default port (2100) and a client's default timeout are each written once, help texts read them from there (transport/address.ts, actors/client.ts)", () => {
  const code = (f: string): string => readFileSync(f, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
  const found: string[] = [];
  for (const file of sources()) {
    const rel = relative(ROOT, file);
    if (/^(spec|bench|examples)\//.test(rel) || rel === 'transport/address.ts') continue;
    // Command lines shown as examples (`revproxy proxy -port 2100`) give the port; they do not default it.
    for (const m of code(file).matchAll(/(?<![-\w] ?|:)\b2100\b/g)) found.push(`${rel}: ${m.input.slice(Math.max(0, m.index - 40), m.index + 10).replace(/\s+/g, ' ')}`);
  }
  for (const rel of ['actors/client.ts', 'actors/connect.ts', 'cli/main.ts']) {
    for (const m of code(join(ROOT, rel)).matchAll(/(?:timeoutMs \?\? |'time to wait for each answer'\)\.default\()(\d+)/g)) found.push(`${rel}: ${m[0]}`);
  }
  assert.equal(found, []);
});

shape.run();
