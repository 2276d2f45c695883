/**
 * The examples of examples/ run end to end, as the README shows them: the
 * privacy handler behind a real proxy, reached by `revproxy client` and by
 * examples/client.mjs (the library, built, run with plain node).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, Logger, memorySink, type LogRecord } from '../actors/index.js';
import { built } from './built.js';
import { loadHandler, STDOUT_LINE_MAX, stdoutToLog } from '../cli/handler-module.js';
import { killAll, node, proxyProcess, revproxy, ROOT, start } from './procs.js';
import { tempDir } from './helpers.js';

const examples = suite('examples');
/** Whether the node that runs the CLI (the same as this one) erases a .ts module's types on its own: Node 22.18 and later. */
const nodeRunsTypeScript = Boolean((process.features as { typescript?: unknown }).typescript);
examples.after.each(killAll);

async function privacyTopology(): Promise<string> {
  const { proc: proxy, port } = await proxyProcess();
  for (const [id, pp] of [['500', '111'], ['600', '222']] as const) {
    revproxy(['server', '--id', id, '--pp', pp, '--revproc', String(port), '--handler', 'examples/privacy-handler.js']);
    await proxy.waitFor(new RegExp(`Received setup message from server id ${id} `));
  }
  return String(port);
}

examples('the privacy handler masks contacts (111) and drops fields off the allow-list (222); `revproxy client` prints the answers', async () => {
  const port = await privacyTopology();
  const client = revproxy(['client', '--revproc', port, '--pkt', 'examples/packets', '--window', '1', '--json']);
  assert.is(await client.exited, 0, client.out.join('\n'));
  const report = JSON.parse(client.out.find((l) => l.startsWith('{'))!);
  assert.equal(report.results.map((r: { answer: string; server: string; checked: boolean }) => [r.server, r.answer, r.checked]), [
    ['500', 'Mail a***@example.org, phone *** **** **58', false],
    ['600', '{"id":1,"country":"UK"}', false],
  ]);
  assert.equal([report.answered, report.total], [2, 2]);
});

examples('examples/client.mjs uses connect() from the built package and reports a handler\'s refusal by its code', async () => {
  const [port] = await Promise.all([privacyTopology(), built()]);
  const run = node('examples/client.mjs', [port]);
  assert.is(await run.exited, 0, run.out.join('\n'));
  assert.equal(run.out.filter((l) => l.includes(' -> ')), [
    '111 "Write to ada@example.org or call +44 20 7946 0958." -> "Write to a***@example.org or call +** ** **** **58."',
    '222 "{\\"id\\":7,\\"name\\":\\"Ada\\",\\"email\\":\\"ada@example.org\\",\\"country\\":\\"UK\\",\\"plan\\":\\"pro\\"}" -> "{\\"id\\":7,\\"country\\":\\"UK\\",\\"plan\\":\\"pro\\"}"',
    '222 "not json" -> refused by the handler: NOT_JSON: policy 222 takes a JSON object',
  ]);
});

examples('`revproxy client` checks SHA1-shaped answers by default, and with --no-verify only prints them', async () => {
  const { proc: proxy, port } = await proxyProcess();
  revproxy(['server', '--id', '100', '--pp', '111', '--revproc', String(port)]);
  await proxy.waitFor(/Received setup message from server id 100 /);
  const checked = revproxy(['client', '--revproc', String(port), '--pkt', 'pktfiles/1.json', '--json']);
  assert.is(await checked.exited, 0, checked.out.join('\n'));
  const a = JSON.parse(checked.out.find((l) => l.startsWith('{'))!);
  assert.equal([a.verified, a.results[0].checked, a.results[0].correct], [1, true, true]);
  const printed = revproxy(['client', '--revproc', String(port), '--pkt', 'pktfiles/1.json', '--no-verify']);
  assert.is(await printed.exited, 0, printed.out.join('\n'));
  const text = printed.out.join('\n');
  assert.match(text, /Answer from server 100: b0400cf1f3919fdba057dbd2acc52f148fbb43ac/);
  assert.not.match(text, /Hash of payload is/);
});

examples('`revproxy client` logs a Node warning its own last lines cause as a node_warning line, not raw on stderr', async () => {
  // FORCE_COLOR beside NO_COLOR: Node warns at the first coloured line, here the client's last
  // (NO_SERVER), and hands the warning on the next tick - after the client had put Node's printing back.
  const { port } = await proxyProcess();
  const client = revproxy(['client', '--revproc', String(port), '--pkt', 'pktfiles/1.json'], { env: { FORCE_COLOR: '1', NO_COLOR: '1' } });
  assert.is(await client.exited, 1, client.out.join('\n'));
  const lines = client.out.map((l) => l.replace(/\x1b\[\d+m/g, ''));
  assert.ok(lines.some((l) => / \| warning: Node warning: Warning: The 'NO_COLOR' env is ignored due to the 'FORCE_COLOR' env being set\.$/.test(l)), lines.join('\n'));
  assert.not.ok(lines.some((l) => /^\(node:\d+\)|--trace-warnings/.test(l)), lines.join('\n'));
});

examples('a handler module that cannot be used stops the server with exit 1, naming the file', async () => {
  const missing = revproxy(['server', '--id', '1', '--pp', 'P', '--handler', 'examples/no-such-handler.js']);
  assert.is(await missing.exited, 1);
  assert.match(missing.out.join('\n'), /handler module 'examples\/no-such-handler.js' cannot be loaded: the file does not exist/);
  const notAFunction = revproxy(['server', '--id', '1', '--pp', 'P', '--handler', 'examples/packets/1.json']);
  assert.is(await notAFunction.exited, 1);
  assert.match(notAFunction.out.join('\n'), /handler module 'examples\/packets\/1.json'/);
  const dir = tempDir('revproxy-handlers-');
  try {
    // The CLI runs plain node (tsx, which runs the specs, would take any TypeScript). Node 22.18 and
    // later erase the types of a .ts module and run it; Node 20 refuses it.
    writeFileSync(join(dir, 'h.ts'), 'export default async (p: string): Promise<string> => `ts ${p}`;\n');
    if (nodeRunsTypeScript) {
      const { proc: proxy, port } = await proxyProcess();
      const server = revproxy(['server', '--id', '1', '--pp', 'P', '--revproc', String(port), '--handler', join(dir, 'h.ts')]);
      const registered = proxy.waitFor(/Received setup message from server id 1 /).then(() => 'registered');
      assert.is(await Promise.race([registered, server.exited.then((code) => `exited ${code}`)]), 'registered', server.out.join('\n'));
      const client = await connect({ revproc: port });
      try {
        assert.is(await client.request('P', 'x'), 'ts x');
      } finally {
        client.destroy();
      }
    } else {
      const ts = revproxy(['server', '--id', '1', '--pp', 'P', '--handler', join(dir, 'h.ts')]);
      assert.is(await ts.exited, 1);
      assert.match(ts.out.join('\n'), /h\.ts' cannot be loaded: this Node \(v[\d.]+\) does not run TypeScript: compile it \(tsc\) and give the .js file, or use Node 22\.18 or later/);
    }
    // What no Node runs without compiling: an enum is not erasable syntax.
    writeFileSync(join(dir, 'enum.ts'), 'enum E { A }\nexport default async (p: string): Promise<string> => `${E.A} ${p}`;\n');
    const en = revproxy(['server', '--id', '1', '--pp', 'P', '--handler', join(dir, 'enum.ts')]);
    assert.is(await en.exited, 1);
    assert.match(en.out.join('\n'), /enum\.ts' cannot be loaded: this Node \(v[\d.]+\) does not run (TypeScript|this TypeScript.*enum).*compile it \(tsc\) and give the .js file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('--handler given a JSON file or a directory says what --handler takes, not Node\'s words for an import nobody wrote', async () => {
  // Node's raw text reached the user: 'needs an import attribute of type "json"' for data.json, and for a
  // directory "Directory import '...' is not supported resolving ES modules imported from <revproxy's own bundle>".
  const dir = tempDir('revproxy-handlers-');
  try {
    writeFileSync(join(dir, 'data.json'), '{"answer": 42}\n');
    const json = await loadHandler(join(dir, 'data.json')).then(() => 'loaded', (e: Error) => e.message);
    assert.match(json, /data\.json' cannot be loaded: it is a JSON file: --handler takes a JavaScript module \(\.js, \.mjs or \.cjs; .*\) whose default export is the handler; to answer from this data, import it in one: import data from '.*data\.json' with \{ type: 'json' \}$/, json);
    const folder = await loadHandler(dir).then(() => 'loaded', (e: Error) => e.message);
    assert.match(folder, /cannot be loaded: it is a directory: --handler takes a JavaScript module .* whose default export is the handler; give the module's file$/, folder);
    assert.not.match(`${json}\n${folder}`, /imported from|import attribute/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('a handler module that cannot be used is told apart: a missing import is not a missing file; a syntax error, an object holding the handler, a named export, code that throws as it is imported and a generator each say what to do', async () => {
  const dir = tempDir('revproxy-handlers-');
  const why = (name: string, text: string): Promise<string> => {
    writeFileSync(join(dir, name), text);
    return loadHandler(join(dir, name)).then(() => 'loaded', (e: Error) => e.message);
  };
  try {
    const dep = await why('dep.mjs', 'import pad from "no-such-package-here";\nexport default async (p) => pad(p);\n');
    assert.not.match(dep, /does not exist/, dep);
    assert.match(dep, /dep\.mjs' cannot be loaded: it imports 'no-such-package-here', which cannot be found from .*: install it in a node_modules folder beside the module or above it/, dep);
    const syntax = await why('syntax.mjs', 'export default async (p) => {\n  return p +\n}\n');
    assert.match(syntax, /syntax\.mjs' cannot be loaded: SyntaxError: Unexpected token '\}' \(node --check .*syntax\.mjs shows where\)/, syntax);
    const object = await why('object.cjs', 'module.exports = { handler: async () => "x" };\n');
    assert.match(object, /object\.cjs' exports an object \(handler\), not a function: export the handler itself/, object);
    // A named export is not taken, but named: it said "has no default export function (it exports undefined)".
    const named = await why('named.mjs', 'export async function handler(p) { return p; }\nexport const version = 1;\n');
    assert.match(named, /named\.mjs' has no default export; it exports handler \(a function\), version: the handler is the module's default export; add: export default handler;$/, named);
    // Its own code throwing as it ran said only the error's message, as if the module were not found or broken.
    const threw = await why('threw.mjs', 'if (!process.env.NO_SUCH_SETTING) throw new Error("set NO_SUCH_SETTING");\nexport default async (p) => p;\n');
    assert.match(threw, /threw\.mjs' cannot be loaded: its top-level code threw as it was imported \(Error: set NO_SUCH_SETTING\), at .*threw\.mjs:1:\d+; it runs once, before the server starts/, threw);
    const threwText = await why('threw-text.mjs', 'throw "no config";\nexport default async (p) => p;\n');
    assert.match(threwText, /threw-text\.mjs' cannot be loaded: its top-level code threw as it was imported \("no config", not an Error\)/, threwText);
    // A generator answers nothing: every request was BAD_ANSWER "an object".
    const gen = await why('gen.mjs', 'export default async function* (p) { yield p; }\n');
    assert.match(gen, /gen\.mjs' cannot be used: the handler is an async generator function \(async function\*\): a handler returns one answer, it does not yield/, gen);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('a handler module whose top-level code does not finish is said to after 5 s, and SIGTERM or Ctrl-C stops the server there', async () => {
  // Before, its import was waited for with the stop signals held until the server started: one that never
  // finished (a top-level await on something that never comes) left a server neither SIGTERM nor SIGINT stopped.
  const dir = tempDir('revproxy-handlers-');
  try {
    writeFileSync(join(dir, 'hang.mjs'), 'console.log("importing");\nawait new Promise((r) => setTimeout(r, 600_000));\nexport default async (p) => p;\n');
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const server = revproxy(['server', '--id', 'h', '--pp', 'P', '--revproc', '1', '--handler', join(dir, 'hang.mjs')]);
      await server.waitFor(/ \| importing$/);
      if (signal === 'SIGTERM') await server.waitFor(/warning: Still importing the handler module '.*hang\.mjs' after 5000 ms: its top-level code has not finished \(a top-level await\?\)/, 8000);
      server.kill(signal);
      const code = await Promise.race([server.exited, new Promise<string>((r) => setTimeout(() => r('still running 5 s after the signal'), 5000))]);
      assert.is(code, 1, server.out.join('\n'));
      assert.match(server.out.join('\n'), new RegExp(`revproxy: ${signal} while the handler module '.*hang\\.mjs' was being imported \\(its top-level code had run \\d+ ms\\): stopped before the server started`));
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('a handler module may be CommonJS: `module.exports = fn`, or TypeScript\'s `export default` compiled to CommonJS', async () => {
  // Plain node, as the CLI runs (tsx, which runs the specs, unwraps a compiled module's default on its own).
  const dir = tempDir('revproxy-handlers-');
  try {
    writeFileSync(join(dir, 'cjs.cjs'), 'module.exports = async (p) => `cjs ${p}`;');
    // What tsc writes for `export default async function handler(...)` with "module": "commonjs".
    writeFileSync(join(dir, 'tsc.cjs'), '"use strict";\nObject.defineProperty(exports, "__esModule", { value: true });\nexports.default = handler;\nasync function handler(p) { return `tsc ${p}`; }\n');
    const { proc: proxy, port } = await proxyProcess();
    for (const name of ['cjs', 'tsc']) {
      const server = revproxy(['server', '--id', name, '--pp', name, '--revproc', String(port), '--handler', join(dir, `${name}.cjs`)]);
      const registered = proxy.waitFor(new RegExp(`Received setup message from server id ${name} `)).then(() => 'registered');
      assert.is(await Promise.race([registered, server.exited.then((code) => `exited ${code}`)]), 'registered', server.out.join('\n'));
    }
    const client = await connect({ revproc: port });
    try {
      assert.equal([await client.request('cjs', 'x'), await client.request('tsc', 'x')], ['cjs x', 'tsc x']);
    } finally {
      client.destroy();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('a server whose handler module left a timer running still exits after its drain, saying what was left open', async () => {
  // Before, 'Server ... stopped' and then nothing: the module's setInterval kept the process up for ever, until a supervisor's SIGKILL.
  const dir = tempDir('revproxy-handlers-');
  try {
    writeFileSync(join(dir, 'leaky.mjs'), 'setInterval(() => {}, 1000); // a flush the module never clears\nexport default async (p) => `leaky ${p}`;\n');
    const { proc: proxy, port } = await proxyProcess();
    const server = revproxy(['server', '--id', 'leaky', '--pp', 'L', '--revproc', String(port), '--handler', join(dir, 'leaky.mjs')]);
    await proxy.waitFor(/Received setup message from server id leaky /);
    server.kill('SIGTERM');
    await server.waitFor(/Server leaky stopped after answering 0 request\(s\)/);
    const code = await Promise.race([server.exited, new Promise<string>((r) => setTimeout(() => r('still running 5 s after it stopped'), 5000))]);
    assert.is(code, 0, server.out.join('\n'));
    assert.match(server.out.join('\n'), /warning: Still running 1000 ms after the server stopped: the handler module left 1 Timeout open, which would keep the process running for ever .*; exiting now/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('a server without a handler module that is still held up after it stopped says it is revproxy\'s own doing, not a handler module\'s', async () => {
  // A registration dial left open by a SIGTERM as the server started (found in an hour of churn) read
  // 'the handler module left 1 TCPSocketWrap open' from a server that had loaded no handler module.
  const dir = tempDir('revproxy-handlers-');
  try {
    const script = join(dir, 'held.mts');
    writeFileSync(script, [
      "import { createServer } from 'node:net';",
      `import { exitOnceStopped } from ${JSON.stringify(join(ROOT, 'cli/handler-module.ts'))};`,
      `import { makeLogger } from ${JSON.stringify(join(ROOT, 'cli/common.ts'))};`,
      "createServer().listen(0, '127.0.0.1'); // what the server's own code left open",
      "exitOnceStopped(0, () => makeLogger('server held', { logLevel: 'info', logFormat: 'text', color: false }), 50, false);",
    ].join('\n'));
    const held = start(process.execPath, ['--import', 'tsx', script]);
    assert.is(await held.exited, 0, held.out.join('\n'));
    const out = held.out.join('\n');
    assert.match(out, /warning: Still running 50 ms after the server stopped, with 1 TCPServerWrap open though no handler module was loaded: revproxy itself left it \(a bug: please report it with this line\); exiting now/);
    assert.not.match(out, /the handler module left/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('what a handler module writes with console is a line of the server\'s log: with --log-format json every line stays JSON', async () => {
  // Before, console.log's text went raw to the stdout the JSON log is written to: lines a log shipper cannot parse.
  const dir = tempDir('revproxy-handlers-');
  try {
    // Its top-level code also leaks listeners, as a handler may: Node's MaxListenersExceededWarning.
    writeFileSync(join(dir, 'chatty.mjs'), 'import { EventEmitter } from "node:events";\nconst leaky = new EventEmitter();\nfor (let i = 0; i < 11; i++) leaky.on("x", () => {});\nconsole.log("loaded", { v: 1 });\nprocess.stdout.write("loaded raw\\n");\nexport default async (p, ctx) => { console.log("handling %s for", p, ctx.clientId); console.error(new Error("not fatal")); console.debug("hidden at info"); process.stdout.write("partial "); process.stdout.write("line\\nnext line\\n"); process.stdout.write(Buffer.from([0xc3])); process.stdout.write(Buffer.from([0xa9, 0x0a])); process.stdout.write("no end"); return `chatty ${p}`; };\n');
    const { proc: proxy, port } = await proxyProcess();
    const server = revproxy(['server', '--id', 'chatty', '--pp', 'T', '--revproc', String(port), '--handler', join(dir, 'chatty.mjs'), '--log-format', 'json']);
    await proxy.waitFor(/Received setup message from server id chatty /);
    const client = await connect({ revproc: port, id: 'c7' });
    try {
      assert.is(await client.request('T', 'x'), 'chatty x');
    } finally {
      client.destroy();
    }
    await server.waitFor(/not fatal/);
    server.kill('SIGTERM');
    assert.is(await server.exited, 0, server.out.join('\n'));
    const records = server.out.map((line) => {
      try {
        return JSON.parse(line) as { level: string; event: string; method?: string; msg: string };
      } catch {
        throw new Error(`not a JSON line: ${line}\n${server.out.join('\n')}`);
      }
    });
    const said = records.filter((r) => r.event === 'console').map((r) => [r.level, r.method, r.msg.split('\n')[0]]);
    assert.equal(said, [['info', 'log', 'loaded { v: 1 }'], ['info', 'log', 'handling x for c7'], ['error', 'error', 'Error: not fatal']]);
    // Its raw writes to stdout, one line of the log per line written: pieces joined, an é split
    // between two writes whole, and the piece without an end at the stop. Before, they went raw
    // into the JSON log, the last running on into the next record.
    // Node's warning is a warn line of its own (Node printed it with console.error: an `error` line
    // `console`, with its hint to rerun with --trace-warnings).
    const warned = records.filter((r) => r.event === 'node_warning').map((r) => [r.level, (r as { name?: string }).name, r.msg.split('.')[0]]);
    assert.equal(warned, [['warn', 'MaxListenersExceededWarning', 'Node warning: MaxListenersExceededWarning: Possible EventEmitter memory leak detected']]);
    const raw = records.filter((r) => r.event === 'stdout');
    assert.ok(raw.every((r) => r.level === 'info'));
    assert.equal(raw.map((r) => r.msg), ['loaded raw', 'partial line', 'next line', 'é', 'no end']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples('raw stdout writes, line by line: a piece waits for the rest, a piece past 64 KiB is a line of its own, the rest at the stop; the stream is put back', () => {
  const records: LogRecord[] = [];
  const written: string[] = [];
  const stream = { write: (chunk: unknown) => written.push(String(chunk)) > 0 } as unknown as NodeJS.WriteStream;
  const restore = stdoutToLog(new Logger('server t', memorySink(records), 'info'), stream);
  let called = 0;
  assert.ok(stream.write('a\nb', () => called++));
  stream.write('c\r\n');
  stream.write('x'.repeat(STDOUT_LINE_MAX + 5));
  stream.write('dGFpbA==', 'base64');
  restore();
  stream.write('after\n');
  assert.equal(records.map((r) => (r.msg.length > 100 ? r.msg.length : r.msg)), ['a', 'bc', STDOUT_LINE_MAX + 5, 'tail']);
  assert.ok(records.every((r) => r.event === 'stdout' && r.level === 'info'));
  assert.equal(written, ['after\n'], 'nothing raw until it was put back');
  return new Promise<void>((done) => process.nextTick(() => {
    assert.is(called, 1, 'the write callback is called');
    done();
  }));
});

examples('a server ended by its handler module - process.exit(), a throw from its own timer, an unhandled rejection - says so in its log before it goes', async () => {
  // Before, process.exit() ended it without a line, and the other two left Node's raw stack on stderr alone, outside a JSON log.
  const dir = tempDir('revproxy-handlers-');
  try {
    writeFileSync(join(dir, 'ends.mjs'), [
      'export default async (p) => {',
      '  if (p === "exit") process.exit(3);',
      '  if (p === "timer") setTimeout(() => { throw new Error("late boom"); }, 10);',
      '  if (p === "rejection") Promise.reject(new Error("forgotten"));',
      '  return `ok ${p}`;',
      '};',
    ].join('\n'));
    const { proc: proxy, port } = await proxyProcess();
    const ends: Record<string, [number, RegExp]> = {
      exit: [3, /"event":"unplanned_exit","code":3,"msg":"The process is exiting with code 3 while the server serves, not by its drain: process\.exit\(\) was called \(by the handler module\?\)/],
      timer: [1, /"event":"uncaught","origin":"uncaughtException","msg":"The server ends \(exit 1\): an exception was thrown outside any request \(a timer or callback of its own\): Error: late boom\\n    at /],
      rejection: [1, /"event":"uncaught","origin":"unhandledRejection","msg":"The server ends \(exit 1\): a promise it did not await rejected \(an unhandled rejection\): Error: forgotten\\n    at /],
    };
    for (const [name, [status, line]] of Object.entries(ends)) {
      const server = revproxy(['server', '--id', name, '--pp', name, '--revproc', String(port), '--handler', join(dir, 'ends.mjs'), '--log-format', 'json']);
      await proxy.waitFor(new RegExp(`Received setup message from server id ${name} `));
      const client = await connect({ revproc: port });
      try {
        await client.request(name, name).catch(() => undefined);
      } finally {
        client.destroy();
      }
      assert.is(await server.exited, status, server.out.join('\n'));
      assert.match(server.out.join('\n'), line, name);
      assert.not.match(server.out.join('\n'), name === 'exit' ? /"event":"uncaught"/ : /"event":"unplanned_exit"/, `${name}: said once`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

examples.run();
