/**
 * The library as another project gets it: `npm pack`, installed from the
 * tarball into a temporary package (offline: the dependencies come from the
 * npm cache, pinned by this project's lockfile), then imported by name from
 * plain `node` (no tsx) and type-checked against the shipped declarations;
 * and its `revproxy` command run from the installed package.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { built } from './built.js';
import { killAll, node, ROOT } from './procs.js';
import { tempDir } from './helpers.js';

const pkg = suite('the packed library');
let dir = '';
pkg.after(() => {
  killAll();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function run(cmd: string, args: string[], cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, npm_config_update_notifier: 'false' } });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} failed (${code}):\n${out}`))));
  });
}

/**
 * A lockfile for the consumer: the tarball, and this project's runtime
 * dependencies exactly as its own lockfile pins them, so `npm ci --offline`
 * takes every one from the npm cache that installing this project filled.
 */
function consumerLock(tarball: string): object {
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean; link?: boolean; dependencies?: Record<string, string> }> };
  const ours = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string; dependencies: Record<string, string> };
  const integrity = `sha512-${createHash('sha512').update(readFileSync(join(dir, tarball))).digest('base64')}`;
  const packages: Record<string, unknown> = {
    '': { name: 'consumer', dependencies: { revproxy: `file:${tarball}` } },
    'node_modules/revproxy': { version: ours.version, resolved: `file:${tarball}`, integrity, dependencies: ours.dependencies },
  };
  for (const [path, entry] of Object.entries(lock.packages)) if (path && !entry.dev && !entry.link) packages[path] = entry;
  return { name: 'consumer', lockfileVersion: 3, requires: true, packages };
}

const CONSUMER = `
import { connect, startProxy, startServer, HandlerError, RequestError, RevproxyError } from 'revproxy';
import { from, toArray, lastValueFrom } from 'rxjs';

const proxy = await startProxy({ port: 0 });
const server = await startServer({
  id: 'up', policy: 'upper', revproc: proxy.port,
  handler: async (payload, ctx) => {
    if (payload === 'boom') throw new HandlerError('BOOM', 'asked to fail');
    return typeof payload === 'string' ? payload.toUpperCase() + ' via ' + ctx.serverId : payload.reverse();
  },
});
const client = await connect({ revproc: String(proxy.port), id: 'consumer' });
const out = {};
out.text = await client.request('upper', 'hello');
out.bytes = [...await client.request('upper', new Uint8Array([1, 2, 3]))];
out.boom = await client.request('upper', 'boom').catch((e) => [e instanceof HandlerError, e instanceof RevproxyError, e.code, e.appCode]);
out.none = await client.request('nobody', 'x').catch((e) => [e instanceof RequestError, e.code]);
out.stream = (await lastValueFrom(client.requests('upper', from(['a', 'b', 'c'])).pipe(toArray()))).map((r) => r.answer).sort();
console.log(JSON.stringify(out));
await client.close();
await server.stop();
await proxy.stop();
`;

// What TypeScript's "module": "commonjs" makes of \`import { connect } from 'revproxy'\`.
const REQUIRED = `
const { connect, startProxy, startServer } = require('revproxy');
(async () => {
  const proxy = await startProxy({ port: 0 });
  const server = await startServer({ id: 'up', policy: 'upper', revproc: proxy.port, handler: async (p) => String(p).toUpperCase() });
  const client = await connect({ revproc: proxy.port });
  console.log(await client.request('upper', 'hello'));
  await client.close();
  await server.stop();
  await proxy.stop();
})();
`;

const TYPED = `
import { connect, HandlerError, ManualClock, startProxy, TlsConfigError, type Clock, type Handler, type ProxyHandle, type Reply, type ServerHandle, type StartProxyOptions, type StartServerOptions, type TlsMaterial } from 'revproxy';
const handler: Handler = async (payload, ctx) => (ctx.signal.aborted ? 'late' : String(payload));
// Each start function's options have a name to type a config with.
const proxyOptions: StartProxyOptions = { port: 0, registry: { endpoints: ['127.0.0.1:2379'] } };
const serverOptions: StartServerOptions = { id: 's', policy: '111', handler };
void startProxy, proxyOptions, serverOptions;
const client = await connect({ revproc: 2100 });
const answer: string | Uint8Array = await client.request('111', 'x', { timeoutMs: 100, signal: AbortSignal.timeout(50) });
client.requests('111', ['a']).subscribe((r: Reply) => r.error instanceof HandlerError && r.error.appCode);
// @ts-expect-error a policy is a string
void client.request(111, 'x');
// Renewed certificates, read as the start functions take them; a bad set throws a TlsConfigError.
const renew = (proxy: ProxyHandle, server: ServerHandle, tls: TlsMaterial): void => {
  try {
    proxy.renewTls({ tls, upstreamTls: tls });
    server.renewTls(tls);
    client.renewTls(tls);
  } catch (err) {
    if (err instanceof TlsConfigError) console.error(err.code, proxy.tls().tls?.cert);
  }
};
// A test's clock: ConnectOptions.clock (and the start functions') take one by its exported type.
const clock: Clock = new ManualClock();
const timed = (): Promise<unknown> => connect({ revproc: 2100, clock });
void handler, answer, renew, timed;
// Options read from the environment are often undefined: the option types take it, as @types packages' do, under
// exactOptionalPropertyTypes too (they refused a signal, a logger, a timeout or TLS that might be undefined).
const maybe = <T>(v: T): T | undefined => (process.env.NEVER_SET ? v : undefined);
const loose = (): Promise<unknown> => connect({ revproc: 2100, timeoutMs: maybe(100), tls: maybe<TlsMaterial>({}), registry: maybe({ endpoints: ['127.0.0.1:2379'], prefix: maybe('/x/') }) });
const looseServer: StartServerOptions = { id: 's', policy: '111', handler, listenPort: maybe(0), token: maybe('secret-1234'), registry: maybe({ endpoints: ['127.0.0.1:2379'], advertise: maybe('10.0.0.1') }) };
const looseProxy: StartProxyOptions = { port: maybe(0), tls: maybe<TlsMaterial>({ cert: maybe(Buffer.from('')) }), stoppedLine: maybe('caller' as const), inspect: maybe(() => undefined) };
void client.request('111', 'x', { signal: maybe(AbortSignal.timeout(50)), timeoutMs: maybe(10) });
void loose, looseServer, looseProxy;
`;

pkg('npm pack, installed from the tarball into another package, imported by name with plain node and type-checked', async () => {
  await built();
  dir = tempDir('revproxy-consumer-');
  // The build has just run: pack what it made, without running it again.
  const packed = await run('npm', ['pack', '--ignore-scripts', '--pack-destination', dir], ROOT);
  const tarball = packed.trim().split('\n').pop()!.trim();
  assert.match(tarball, /^revproxy-.*\.tgz$/);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module', dependencies: { revproxy: `file:${tarball}` } }));
  writeFileSync(join(dir, 'package-lock.json'), JSON.stringify(consumerLock(tarball)));
  await run('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], dir);

  writeFileSync(join(dir, 'main.mjs'), CONSUMER);
  const main = node('main.mjs', [], { cwd: dir });
  assert.is(await main.exited, 0, main.out.join('\n'));
  const out = JSON.parse(main.out.find((l) => l.startsWith('{'))!);
  assert.equal(out, {
    text: 'HELLO via up',
    bytes: [3, 2, 1],
    boom: [true, true, 'HANDLER_ERROR', 'BOOM'],
    none: [true, 'NO_SERVER'],
    stream: ['A via up', 'B via up', 'C via up'],
  });

  // A CommonJS project: Node 20.19 and later load an ES module with require() (process.features.require_module).
  if ((process.features as { require_module?: boolean }).require_module) {
    writeFileSync(join(dir, 'main.cjs'), REQUIRED);
    const required = node('main.cjs', [], { cwd: dir });
    assert.is(await required.exited, 0, required.out.join('\n'));
    assert.ok(required.out.includes('HELLO'), required.out.join('\n'));
  }

  writeFileSync(join(dir, 'typed.ts'), TYPED);
  // A CommonJS file in a project type-checked with "module": "NodeNext", as README says (TypeScript 5.8 and later).
  writeFileSync(join(dir, 'required.cts'), "import { connect, type Handler } from 'revproxy';\nconst h: Handler = (p) => String(p);\nvoid connect, h;\n");
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, exactOptionalPropertyTypes: true, noEmit: true, skipLibCheck: true, types: ['node'], typeRoots: [join(ROOT, 'node_modules/@types')] },
    files: ['typed.ts', 'required.cts'],
  }));
  await run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], dir);
});

/** Every file under `dir` with its size and modification time: what a command wrote there shows as a difference. */
function snapshot(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => {
      const p = join(e.parentPath, e.name);
      const st = statSync(p);
      return `${p} ${st.size} ${st.mtimeMs}`;
    })
    .sort();
}

pkg('the installed package runs `revproxy` without writing into its own folder (a global install, a read-only image), and says why when it cannot start', async () => {
  assert.ok(dir, 'the install above ran');
  const installed = join(dir, 'node_modules', 'revproxy');
  const cli = join(installed, 'cli', 'revproxy.js');
  // Unpacked files carry the time they were unpacked at, so sources may look newer than the bundle: it runs anyway.
  writeFileSync(join(installed, 'cli', 'main.ts'), readFileSync(join(installed, 'cli', 'main.ts')));
  const before = snapshot(installed);
  const help = node(cli, ['--help'], { cwd: dir });
  assert.is(await help.exited, 0, help.out.join('\n'));
  assert.ok(help.out.some((l) => l.startsWith('Usage: revproxy')), help.out.join('\n'));
  assert.equal(snapshot(installed), before, 'nothing in the package was written');

  // No bundle, and no folder to write one to (a file is in its way, as a read-only image would be): a sentence, not a stack.
  rmSync(join(installed, '.build'), { recursive: true, force: true });
  writeFileSync(join(installed, '.build'), '');
  const broken = node(cli, ['--help'], { cwd: dir });
  assert.is(await broken.exited, 1);
  const said = broken.out.join('\n');
  assert.match(said, /^revproxy: cannot start: its sources could not be bundled into .*\.build\/revproxy\.mjs \(EEXIST/);
  assert.match(said, /tsx, which runs them unbundled, is not installed\. Install revproxy from a package made by npm pack/);
  assert.not.match(said, /ERR_MODULE_NOT_FOUND|\n\s+at /, 'no stack trace');
});

pkg.run();
