/**
 * `revproxy server --watchdog MS` (cli/watchdog.ts): a server whose event loop has not turned for MS
 * (a handler computing without end) logs where it is and which request it was on, and exits 70 for its
 * supervisor to start it again; one blocked outside JavaScript is killed, its line written by the
 * watchdog's thread in the log's own format. Real processes: a proxy, a server running a handler
 * module that loops on some payloads, and the library's client; the log read as an operator's tools
 * read it (every JSON line parsed).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runClient, type Result } from '../actors/index.js';
import { eventually, LOCAL, sleep, tempDir } from './helpers.js';
import { killAll, proxyProcess, revproxy, type Proc } from './procs.js';

const test = suite('the server watchdog');
test.after.each(killAll);

/** Loops for ever on `spin...` (at once, or after an await on `later...`), waits on a child process on `child...`, computes N ms on `busy N`. */
const HANDLER = `import { createHash } from 'node:crypto';
import { execSync } from 'node:child_process';
function spinForever(text) { let n = 0; while (text.startsWith('spin')) n++; return n; }
function busyFor(ms) { const end = Date.now() + ms; while (Date.now() < end); }
export default async function (payload) {
  const text = String(payload);
  if (text.startsWith('spin')) spinForever(text);
  if (text.startsWith('later')) { await new Promise((r) => setTimeout(r, 5)); spinForever('spin'); }
  if (text.startsWith('child')) execSync('sleep 20');
  if (text.startsWith('busy')) busyFor(Number(text.slice(5)));
  return createHash('sha1').update(text).digest('hex');
}
`;

/** A proxy and one server of policy P running the handler above with `args`, registered. */
async function serve(args: string[]): Promise<{ port: number; server: Proc; handler: string }> {
  const handler = join(tempDir('watchdog-'), 'loops.mjs');
  writeFileSync(handler, HANDLER);
  const { port } = await proxyProcess();
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--listen', '0', '--revproc', String(port), '--handler', handler, ...args]);
  await server.waitFor(/Registered with the reverse proxy|"event":"registered"/, 15000);
  await sleep(150); // the proxy's link verifies with a PING round trip
  return { port, server, handler };
}

/** Send one request, not waiting for its answer (a looping server gives none). */
function send(port: number, payload: string): Promise<Result[]> {
  return runClient({ id: 'c9', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c9', privPoliId: 'P', payload }], window: 1, timeoutMs: 20000 }).catch(() => []);
}

const DEBUGGER_LINE = /Waiting for the debugger/;

test('a handler that never returns: the server logs the request and where the loop is (JSON), and exits 70', async () => {
  const { port, server } = await serve(['--watchdog', '1000', '--log-format', 'json']);
  const at = Date.now();
  void send(port, 'spin 1');
  const code = await Promise.race([server.exited, sleep(8000).then(() => 'still running')]);
  assert.is(code, 70, server.out.join('\n'));
  assert.ok(Date.now() - at >= 1000);
  // Every line is the log's JSON: nothing of Node's own ("Waiting for the debugger to disconnect...") after it.
  const records = server.out.filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);
  const line = records.find((r) => r.event === 'watchdog');
  assert.ok(line, server.out.join('\n'));
  assert.is(line!.level, 'error');
  assert.is(records.at(-1), line, 'the last line');
  assert.match(String(line!.msg), /^The server's event loop has not turned for [\d,]+ ms \(--watchdog 1000\), at spinForever \(file:\/\/\S+loops\.mjs:3:\d+\) < default \(file:\/\/\S+loops\.mjs:7:\d+\): the handler had not returned from request \d+ of client c9, called [\d,]+ ms before\. It answered nothing meanwhile, the proxy's PINGs included, and would not again: it ends now \(exit 70\)/);
  // The handler's own frames only: revproxy's under them are the same each time.
  const stack = line!.stack as string[];
  assert.is(stack.length, 2, JSON.stringify(stack));
  assert.is(line!.limitMs, 1000);
  assert.ok((line!.ms as number) >= 1000);
});

test('a loop after an await: the line says the handler had returned, and still names the loop; the text log ends with it', async () => {
  const { port, server } = await serve(['--watchdog', '1000']);
  void send(port, 'later 1');
  assert.is(await Promise.race([server.exited, sleep(8000).then(() => 'still running')]), 70, server.out.join('\n'));
  const last = server.out.filter((l) => l.trim()).at(-1)!;
  assert.match(last, /server s1 \| error: The server's event loop has not turned for [\d,]+ ms \(--watchdog 1000\), at spinForever \(file:\S+loops\.mjs:3:\d+\) < default \(file:\S+loops\.mjs:8:\d+\): the handler had returned for each of its 1 running request\(s\), so it computes after an await in one of them/);
  assert.not.ok(server.out.some((l) => DEBUGGER_LINE.test(l)));
});

test('blocked outside JavaScript (a synchronous child process): killed (SIGKILL), its line written by the watchdog thread in the JSON log', async () => {
  const { port, server } = await serve(['--watchdog', '1000', '--log-format', 'json']);
  const at = Date.now();
  void send(port, 'child 1');
  await Promise.race([server.exited, sleep(10000)]);
  assert.is(server.child.signalCode, 'SIGKILL', server.out.join('\n'));
  const records = server.out.filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);
  const line = records.find((r) => r.event === 'watchdog');
  assert.ok(line, server.out.join('\n'));
  assert.equal([line!.level, line!.actor, line!.limitMs], ['error', 'server s1', 1000]);
  assert.match(String(line!.msg), /^The server's event loop has not turned for [\d,]+ ms \(--watchdog 1000\), blocked outside JavaScript \(a synchronous child process or system call, a native addon\), where no pause can stop it to tell where: the server is killed now \(SIGKILL\)/);
  // Its time is when it was written, not when its shape was made at start.
  assert.ok(Date.parse(String(line!.time)) >= at + 1000, String(line!.time));
});

test('no stall, no end: computing for less than --watchdog, a process stopped (SIGSTOP) for longer, and a loop with --watchdog 0', async () => {
  const { port, server } = await serve(['--watchdog', '1000']);
  const [busy] = await send(port, 'busy 500');
  assert.ok(busy?.correct, JSON.stringify(busy));
  // Its watchdog thread is stopped with it: the loop did not stall, the process did.
  server.kill('SIGSTOP');
  await sleep(2000);
  server.kill('SIGCONT');
  await sleep(1500);
  assert.is(server.child.exitCode, null, server.out.join('\n'));
  const [after] = await send(port, 'fine');
  assert.ok(after?.correct, `${JSON.stringify(after)}\n${server.out.join('\n')}`);
  assert.not.ok(server.out.some((l) => /watchdog/.test(l)), server.out.join('\n'));

  const off = await serve(['--watchdog', '0']);
  void send(off.port, 'spin 2');
  await sleep(2500);
  assert.is(off.server.child.exitCode, null);
  assert.is(off.server.child.signalCode, null);
});

test("a handler module whose top-level code never ends: watched from before it is imported, the server ends saying it was starting", async () => {
  const handler = join(tempDir('watchdog-'), 'never-loads.mjs');
  writeFileSync(handler, 'let n = 0;\nwhile (n >= 0) n++;\nexport default async () => "never";\n');
  const server = revproxy(['server', '--id', 's1', '--pp', 'P', '--listen', '0', '--revproc', '9', '--handler', handler, '--watchdog', '1000']);
  assert.is(await Promise.race([server.exited, sleep(8000).then(() => 'still running')]), 70, server.out.join('\n'));
  assert.match(server.out.join('\n'), /error: The server's event loop has not turned for [\d,]+ ms \(--watchdog 1000\), at <anonymous> \(file:\S+never-loads\.mjs:2:\d+\): the server was starting: the handler module's top-level code computes\./);
});

test('--watchdog takes a whole number of milliseconds', async () => {
  const bad = revproxy(['server', '--id', 's1', '--pp', 'P', '--watchdog', '10s']);
  assert.is(await bad.exited, 2);
  assert.ok(bad.out.some((l) => /--watchdog must be a whole number of at least 0 without a unit, got '10s'/.test(l)), bad.out.join('\n'));
});

test.run();
