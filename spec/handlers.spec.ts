/**
 * Servers run your code (issue 17): a handler's answers and errors through
 * the proxy, its limits (concurrency, queue, per-request delay), its
 * deadline signal, and payloads as bytes.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { readFile } from 'node:fs/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  connect, HandlerError, Logger, ManualClock, memorySink, RequestError, sha1Hex, StartError, startProxy, startServer,
  type Client, type Handler, type HandlerContext, type LogRecord, type ProxyHandle, type ProxyOptions, type ServerHandle,
} from '../actors/index.js';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType, type AckMsg, type ErrorMsg, type Message } from '../transport/messages.js';
import { collector, eventually, frame, LOCAL, rawConnect } from './helpers.js';
import { freePort } from '../bench/procs.js';

interface Ctx {
  proxy: ProxyHandle;
  servers: ServerHandle[];
  clients: Client[];
  logs: LogRecord[];
}
const ctx = {} as Ctx;

function withProxy(name: string, opts: ProxyOptions = {}) {
  const s = suite<Ctx>(name, ctx);
  s.before.each(async () => {
    ctx.logs = [];
    ctx.servers = [];
    ctx.clients = [];
    ctx.proxy = await startProxy({ port: 0, ...opts, logger: new Logger('proxy', memorySink(ctx.logs), 'debug') });
  });
  s.after.each(async () => {
    for (const c of ctx.clients) c.destroy();
    for (const sv of ctx.servers) await sv.stop();
    await ctx.proxy.stop();
  });
  return s;
}

async function serve(id: string, policy: string, handler?: Handler, extra: { concurrency?: number; queueLimit?: number } = {}): Promise<ServerHandle> {
  const s = await startServer({ id, policy, revproc: ctx.proxy.port, handler, ...extra });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools()[policy]?.serving.includes(id) ?? false, 3000, `server ${id} serving ${policy}`);
  return s;
}

async function client(opts: { timeoutMs?: number } = {}): Promise<Client> {
  const c = await connect({ revproc: ctx.proxy.port, id: 'c1', ...opts });
  ctx.clients.push(c);
  return c;
}

const answers = withProxy('a handler behind the proxy');

answers('a custom handler answers as written, and its ctx names the client, the policy and the server', async () => {
  const seen: Array<Omit<HandlerContext, 'signal'>> = [];
  await serve('up-1', 'upper', async (payload, c) => {
    seen.push({ clientId: c.clientId, policy: c.policy, serverId: c.serverId });
    return String(payload).toUpperCase();
  });
  const c = await client();
  assert.is(await c.request('upper', 'hello'), 'HELLO');
  assert.is(await c.request('upper', 'world', { srcid: 'someone-else' }), 'WORLD');
  assert.equal(seen, [{ clientId: 'c1', policy: 'upper', serverId: 'up-1' }, { clientId: 'someone-else', policy: 'upper', serverId: 'up-1' }]);
});

answers('the default handler still answers the SHA1 of the payload', async () => {
  await serve('s', 'P');
  const c = await client();
  assert.is(await c.request('P', 'xyz1'), 'b0400cf1f3919fdba057dbd2acc52f148fbb43ac');
});

answers('a throwing handler gives its own code to the client once: not retried on another server, not counted towards ejection', async () => {
  let calls = 0;
  const failing: Handler = async () => {
    calls++;
    throw new HandlerError('NOT_ALLOWED', 'policy says no');
  };
  // Two servers, and more failures than --eject-after (5): each must be an answer, not a fault.
  await serve('a', 'P', failing);
  await serve('b', 'P', failing);
  const c = await client();
  for (let i = 0; i < 8; i++) {
    const err = await c.request('P', `x${i}`).then(() => undefined, (e: unknown) => e);
    assert.instance(err, HandlerError);
    // Typed as the one code it has (the docs say so): \`npx tsc\` refuses this line where it is any Code.
    const code: 'HANDLER_ERROR' = (err as HandlerError).code;
    assert.is(code, 'HANDLER_ERROR');
    assert.is((err as HandlerError).appCode, 'NOT_ALLOWED');
    assert.is((err as HandlerError).message, 'policy says no');
  }
  assert.is(calls, 8, 'each request reached exactly one handler');
  assert.is(ctx.logs.filter((r) => r.event === 'retry').length, 0, 'no retry');
  assert.is(ctx.logs.filter((r) => r.event === 'eject' || r.event === 'eject_skipped').length, 0, 'no ejection');
  assert.equal(ctx.proxy.pools().P!.serving, ['a', 'b']);
});

answers('a handler that fails without a code of its own (HANDLER_FAILED) on every request: each answered to its client, not retried, and the server is ejected as a 5xx would have it', async () => {
  // Counted as answers, a server whose handler threw a TypeError on every request was never ejected: a third of its
  // policy's requests failed HANDLER_FAILED for as long as it ran, and the proxy logged nothing (a probe of three servers).
  let calls = 0;
  await serve('broken', 'P', async () => {
    calls++;
    throw new TypeError("Cannot read properties of undefined (reading 'x')");
  });
  await serve('good', 'P');
  const c = await client();
  const outcomes: string[] = [];
  for (let i = 0; i < 16; i++) {
    outcomes.push(await c.request('P', `x${i}`).then((a) => (a === sha1Hex(`x${i}`) ? 'ok' : `wrong ${String(a)}`), (e: unknown) => (e instanceof HandlerError ? e.appCode : String(e))));
  }
  // Five in a row on the broken one (every other request), then every request goes to the good one.
  assert.equal(outcomes.filter((o) => o === 'HANDLER_FAILED').length, 5, JSON.stringify(outcomes));
  assert.equal(outcomes.filter((o) => o === 'ok').length, 11, JSON.stringify(outcomes));
  assert.is(calls, 5, 'each failed request reached one handler: not retried');
  const ejected = ctx.logs.find((r) => r.event === 'eject');
  assert.ok(ejected && ejected.id === 'broken', JSON.stringify(ctx.logs.filter((r) => /eject/.test(String(r.event)))));
  assert.match(ejected!.msg, /after 5 consecutive failures/);
  assert.match(String(ctx.proxy.actor.getSnapshot().context.servers.get('broken')?.lastFailure?.message), /the handler of server broken failed \(HANDLER_FAILED: /);
  assert.is(ctx.logs.filter((r) => r.event === 'retry').length, 0, 'no retry');
});

answers('an error with a string code is the handler\'s own; any other error is HANDLER_FAILED without its details', async () => {
  await serve('s', 'P', async (payload) => {
    if (payload === 'coded') throw Object.assign(new Error('no e-mail here'), { code: 'NO_EMAIL' });
    throw new Error('secret internal detail');
  });
  const c = await client();
  const coded = (await c.request('P', 'coded').catch((e: unknown) => e)) as HandlerError;
  assert.equal([coded.appCode, coded.message], ['NO_EMAIL', 'no e-mail here']);
  const bug = (await c.request('P', 'other').catch((e: unknown) => e)) as HandlerError;
  assert.is(bug.appCode, 'HANDLER_FAILED');
  assert.not.match(bug.message, /secret/);
});

answers('an error code that is no application code is refused out loud: HandlerError throws a TypeError saying why, a plain error\'s code is named in its handler_failed line', async () => {
  assert.throws(() => new HandlerError('user/not-found', 'user 7 does not exist'), (e: unknown) => e instanceof TypeError && /an application code is 1 to 64 letters, digits, _ \. : or - \(docs\/PROTOCOL\.md, appcode\), and it has "\/" in it: write it as, say, "user_not-found"/.test((e as Error).message));
  assert.throws(() => new HandlerError('', 'empty'), /and it is empty/);
  assert.throws(() => new HandlerError('X'.repeat(65), 'long'), /and it has 65 characters/);
  assert.is(new HandlerError('user.not-found:7', 'fine').appCode, 'user.not-found:7');
  const logs: LogRecord[] = [];
  const s = await startServer({
    id: 'codes', policy: 'K', revproc: ctx.proxy.port, logger: new Logger('server', memorySink(logs), 'info'),
    handler: async (p) => {
      if (p === 'class') throw new HandlerError('user/not-found', 'user 7 does not exist');
      if (p === 'plain') throw Object.assign(new Error('no such user'), { code: 'NOT FOUND' });
      throw Object.assign(new Error('no such user'), { code: 'ERR_USER_NOT_FOUND' });
    },
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().K?.serving.includes('codes') ?? false, 3000, 'serving');
  const c = await client();
  for (const p of ['class', 'plain', 'node']) assert.is(((await c.request('K', p).catch((e: unknown) => e)) as HandlerError).appCode, 'HANDLER_FAILED', p);
  const said = logs.filter((r) => r.event === 'handler_failed').map((r) => r.msg).join('\n');
  // The HandlerError case logged nothing before; the plain ones their stacks only.
  assert.match(said, /TypeError: new HandlerError\("user\/not-found", \.\.\.\): an application code is 1 to 64/);
  assert.match(said, /\(its code is not an application code: an application code is 1 to 64 .* and it has " " in it: write it as, say, "NOT_FOUND"; answered HANDLER_FAILED\)/);
  assert.match(said, /\(its code "ERR_USER_NOT_FOUND" is taken as Node's own \(ERR_\.\.\.\), not an application code: answered HANDLER_FAILED; to answer the client with a code of the handler's own, throw new HandlerError\(CODE, message\)\)/);
});

answers('a handler that fails on every request is logged once with its stack, then counted: not a line per request', async () => {
  const logs: LogRecord[] = [];
  const s = await startServer({
    id: 'buggy', policy: 'B', revproc: ctx.proxy.port, logger: new Logger('server', memorySink(logs), 'info'),
    handler: async () => {
      throw new TypeError('cannot read properties of undefined');
    },
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().B?.serving.includes('buggy') ?? false, 3000, 'serving');
  const c = await client();
  const errs = await Promise.all(Array.from({ length: 100 }, (_, i) => c.request('B', `x${i}`).catch((e: HandlerError) => e.appCode)));
  assert.ok(errs.every((e) => e === 'HANDLER_FAILED'), String(errs[0]));
  const lines = logs.filter((r) => r.event === 'handler_failed');
  assert.is(lines.length, 1, lines.slice(0, 3).map((r) => r.msg).join('\n'));
  assert.match(lines[0]!.msg, /TypeError: cannot read properties of undefined\n\s+at /);
});

answers('an error from Node itself (a failed system call, ERR_...) is not the handler\'s own code: HANDLER_FAILED, its details (a path) hidden from the client and logged', async () => {
  const logs: LogRecord[] = [];
  const s = await startServer({
    id: 'fs', policy: 'F', revproc: ctx.proxy.port, logger: new Logger('server', memorySink(logs), 'info'),
    handler: async (p) => {
      if (p === 'read') return String(await readFile('/srv/internal-secrets/key.json'));
      return Buffer.alloc(-1) as unknown as string;
    },
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().F?.serving.includes('fs') ?? false, 3000, 'serving');
  const c = await client();
  for (const [payload, code] of [['read', 'ENOENT'], ['alloc', 'ERR_OUT_OF_RANGE']] as const) {
    const err = (await c.request('F', payload).catch((e: unknown) => e)) as HandlerError;
    assert.is(err.appCode, 'HANDLER_FAILED', `${payload}: ${err.appCode} ${err.message}`);
    assert.not.match(err.message, /internal-secrets|ENOENT|ERR_/);
    assert.ok(logs.some((r) => r.event === 'handler_failed' && r.msg.includes(code)), `${code} logged: ${logs.map((r) => r.msg).join('\n')}`);
  }
});

answers('an answer that is not text or bytes is the handler\'s error, BAD_ANSWER, saying what it was; the server\'s log says so once per kind', async () => {
  const logs: LogRecord[] = [];
  const detached = new ArrayBuffer(8);
  structuredClone(detached, { transfer: [detached] });
  const wrong: Record<string, unknown> = { object: { not: 'bytes' }, nothing: undefined, number: 42, detached };
  const s = await startServer({
    id: 's', policy: 'P', revproc: ctx.proxy.port, logger: new Logger('server', memorySink(logs), 'info'),
    handler: (async (p: string) => wrong[p]) as unknown as Handler,
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().P?.serving.includes('s') ?? false, 3000, 'serving');
  const c = await client();
  const said = async (p: string): Promise<string> => {
    const err = (await c.request('P', p).catch((e: unknown) => e)) as HandlerError;
    assert.is(err.appCode, 'BAD_ANSWER');
    return err.message;
  };
  assert.is(await said('object'), 'the handler of server s answered an object (JSON.stringify it to answer JSON); a handler answers a string or bytes');
  assert.is(await said('nothing'), 'the handler of server s answered undefined (does it return its answer?); a handler answers a string or bytes');
  assert.is(await said('number'), 'the handler of server s answered number; a handler answers a string or bytes');
  // It was 'an object (JSON.stringify it to answer JSON)'.
  assert.is(await said('detached'), 'the handler of server s answered an ArrayBuffer that cannot be read (detached: transferred to a worker or by structuredClone; answer a copy of its bytes); a handler answers a string or bytes');
  await said('nothing');
  // Said nothing in the server's log before, even at info: a developer watching the server saw no sign of the bug.
  const lines = logs.filter((r) => r.event === 'bad_answer');
  assert.is(lines.length, 4, lines.map((r) => r.msg).join('\n'));
  assert.is(lines[1]!.level, 'error');
  assert.match(lines[1]!.msg, /^The handler of server s answered request \d+ of client c1 with undefined \(does it return its answer\?\): a handler answers a string or bytes/);
});

answers('a server that registers with no proxy says why for each proxy it tried, not only that it could not', async () => {
  const [a, b] = [await freePort(), await freePort()];
  const err = (await startServer({ id: 'lonely', policy: 'P', listenPort: 0, revproc: `${LOCAL}:${a},${LOCAL}:${b}`, registerTimeoutMs: 1500 }).catch((e: unknown) => e)) as Error;
  assert.instance(err, StartError);
  // It said "could not register with any reverse proxy (127.0.0.1:A, 127.0.0.1:B) within 1500 ms".
  assert.is(err.message, `server lonely could not register with any reverse proxy (no reverse proxy is listening on ${LOCAL}:${a}; no reverse proxy is listening on ${LOCAL}:${b}) within 1500 ms`);
});

answers('a handler, an id or a policy that cannot serve is refused at start with a StartError saying which, not registered to fail every request', async () => {
  // Before: a handler that was a string (or an async generator) registered and answered every request
  // HANDLER_FAILED or BAD_ANSWER; a server without an id dialled the proxy and waited out the 5 s
  // registration timeout.
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ handler: 'upper' }, /^server x: the handler is a function, async \(payload, ctx\) => answer, not a string$/],
    [{ handler: async function* gen() { yield 'a'; } }, /^server x: the handler is an async generator function \(async function\*\): a handler returns one answer, it does not yield/],
    [{ handler: function* gen() { yield 'a'; } }, /^server x: the handler is a generator function \(function\*\)/],
    // It started, then answered every request HANDLER_FAILED ("Class constructor Upper cannot be invoked without 'new'").
    [{ handler: class Upper { handle(p: string) { return p.toUpperCase(); } } }, /^server x: the handler is a class \(Upper\), which cannot be called: a handler is a function/],
    [{ id: undefined }, /^startServer: id must be a string of 1 to 256 characters, got undefined$/],
    [{ id: '' }, /^startServer: id must be a string of 1 to 256 characters, got an empty string$/],
    [{ policy: undefined }, /^server x: policy must be a string of 1 to 256 characters, got undefined$/],
    // Registered as 'x\uFFFD' before: UTF-8 cannot carry the lone surrogate, and the encoder replaced it without a word.
    [{ id: 'x\ud800' }, /^startServer: id has a lone surrogate \(U\+D800 at index 1\), which UTF-8 cannot carry: use well-formed text$/],
    [{ policy: '\udfff' }, /^server x: policy has a lone surrogate \(U\+DFFF at index 0\)/],
  ];
  for (const [opts, why] of bad) {
    const started = Date.now();
    const err = await startServer({ id: 'x', policy: 'X', revproc: ctx.proxy.port, ...opts } as unknown as Parameters<typeof startServer>[0])
      .then((s) => s.stop().then(() => 'started'), (e: unknown) => e);
    assert.instance(err, StartError, `${JSON.stringify(opts)}: ${String(err)}`);
    assert.match((err as Error).message, why);
    assert.ok(Date.now() - started < 1000, `${JSON.stringify(opts)} refused at once, not after the registration timeout`);
  }
  assert.equal(Object.keys(ctx.proxy.pools()), [], 'nothing registered');
});

const timing = withProxy('a handler that does not answer in time', { timeoutMs: 400, retries: 0 });

answers('a handler that computes for a second or more without awaiting is said to, at warn, naming the request and what to do: the server answered nothing meanwhile, PINGs included', async () => {
  // Before, the server's log said nothing of it; past 3 s, only 'REMOVED: it missed 3 PINGs in a row' once it was free again.
  const logs: LogRecord[] = [];
  const spin = (ms: number): void => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  const s = await startServer({
    id: 'cpu', policy: 'C', revproc: ctx.proxy.port, logger: new Logger('server', memorySink(logs), 'info'),
    handler: (p) => (spin(p === 'long' ? 1100 : 50), `spun ${String(p)}`),
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().C?.serving.includes('cpu') ?? false, 3000, 'serving');
  const c = await client({ timeoutMs: 10_000 });
  assert.is(await c.request('C', 'short'), 'spun short');
  assert.equal(logs.filter((r) => r.event === 'handler_blocking'), [], 'a 50 ms computation is not said');
  assert.is(await c.request('C', 'long'), 'spun long');
  const lines = logs.filter((r) => r.event === 'handler_blocking');
  assert.is(lines.length, 1, lines.map((r) => r.msg).join('\n'));
  assert.is(lines[0]!.level, 'warn');
  assert.match(lines[0]!.msg, /^The handler of server cpu computed for 1\d{3} ms without awaiting on request \d+ of client c1: the server answered nothing meanwhile, the proxy's PINGs included, .* Run heavy work in a worker thread \(node:worker_threads, or a pool such as piscina\) and await it$/);
});

timing('a handler that ignores its signal still gets the client the proxy\'s TIMEOUT, before its own timeout', async () => {
  await serve('s', 'P', () => new Promise<string>(() => {}));
  // The client's own timeout is far later: the error must be the proxy's.
  const c = await client({ timeoutMs: 20_000 });
  const err = (await c.request('P', 'x').catch((e: unknown) => e)) as RequestError;
  assert.instance(err, RequestError);
  assert.is(err.code, 'TIMEOUT');
});

timing('the handler\'s signal fires when the proxy stops waiting, with a TIMEOUT reason', async () => {
  let reason: { code?: string } | undefined;
  await serve('s', 'P', (_p, c) => new Promise<string>((_resolve, reject) => {
    c.signal.addEventListener('abort', () => {
      reason = c.signal.reason as { code?: string };
      reject(c.signal.reason);
    });
  }));
  const c = await client({ timeoutMs: 20_000 });
  assert.is(((await c.request('P', 'x').catch((e: unknown) => e)) as RequestError).code, 'TIMEOUT');
  await eventually(() => reason !== undefined, 3000, 'the signal fired');
  assert.is(reason!.code, 'TIMEOUT');
});

// The proxy's timeout (1 s) is shorter than the client's (3 s): requests waiting in the server's queue for a
// slot are answered TIMEOUT by it at their deadline, which a try to a policy's one server runs to.
const lostSlots = withProxy('a handler whose promise never settles', { timeoutMs: 1000 });

lostSlots('a handler promise that can never settle (garbage-collected unsettled) gives its slot back: with --concurrency 2, more than four such requests do not stop the server', async () => {
  // Before, each one lingered for good past its handler timeout: after four, the server ran nothing again, its queue waiting for ever.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const logs: LogRecord[] = [];
  const s = await startServer({
    id: 'lost', policy: 'N', revproc: ctx.proxy.port, concurrency: 2, handlerTimeoutMs: 100, logger: new Logger('server', memorySink(logs), 'info'),
    handler: (p) => (p === 'ok' ? 'fine' : new Promise<string>(() => {})),
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools().N?.serving.includes('lost') ?? false, 3000, 'serving');
  const c = await client({ timeoutMs: 3000 });
  for (let i = 0; i < 6; i++) {
    const err = (await c.request('N', `lost ${i}`).catch((e: unknown) => e)) as RequestError;
    assert.is(err.code, 'TIMEOUT', String(err));
  }
  for (let i = 0; i < 5; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.is(await c.request('N', 'ok'), 'fine');
  const line = logs.find((r) => r.event === 'handler_unsettled');
  assert.match(line?.msg ?? '', /^The handler of server lost returned a promise that can never settle on request \d+ of client c1: nothing refers to it any more \(it was garbage-collected\)/);
});

answers.run();
lostSlots.run();
timing.run();

// ---- limits, straight to one server (no proxy in between) ----

const limits = suite('a server\'s limits');

async function lonelyServer(opts: { handler: Handler; concurrency: number; queueLimit: number; delayMs?: number; clock?: ManualClock; handlerTimeoutMs?: number; drainTimeoutMs?: number; logger?: Logger; maxConnections?: number }): Promise<ServerHandle> {
  // Registered nowhere: requests come straight from the spec.
  return startServer({ id: 'lim', policy: 'P', revproc: 1, waitForRegistration: false, reconnectInitialMs: 60_000, ...opts });
}

limits('--concurrency 1 runs one request at a time, queues up to the bound and refuses past it with OVERLOADED', async () => {
  let running = 0;
  let most = 0;
  const gates: Array<() => void> = [];
  const server = await lonelyServer({
    concurrency: 1, queueLimit: 2,
    handler: (payload) => new Promise<string>((resolve) => {
      running++;
      most = Math.max(most, running);
      gates.push(() => {
        running--;
        resolve(`done ${String(payload)}`);
      });
    }),
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    sock.write(Buffer.concat([0, 1, 2, 3].map((i) => frame({ type: 0, seq: i, srcid: 'c', privPoliId: 'P', payload: `p${i}` }))));
    await got.until(() => got.got.length >= 1);
    const refused = got.got[0] as ErrorMsg;
    assert.equal([refused.type, refused.seq, refused.code], [MsgType.ERROR, 3, 'OVERLOADED'], 'the fourth is past 1 running + 2 waiting');
    for (let n = 1; n <= 3; n++) {
      await eventually(() => gates.length === n, 2000, `handler ${n} started`);
      assert.is(running, 1);
      gates[n - 1]!();
      await got.until(() => got.got.length >= n + 1);
    }
    assert.is(most, 1, 'never two at once');
    assert.equal(got.got.slice(1).map((m) => [(m as AckMsg).seq, (m as AckMsg).payload]), [[0, 'done p0'], [1, 'done p1'], [2, 'done p2']]);
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('whatever a handler throws (a null-prototype object, a revoked Proxy, an error whose code getter throws, null), sync or async, is HANDLER_FAILED with a log line saying what it was: the server lives on', async () => {
  // Each of these ended the whole server (exit 1): String(err), err.code and instanceof threw in the error path.
  const revoked = (): object => {
    const r = Proxy.revocable({}, {});
    r.revoke();
    return r.proxy;
  };
  const codeGetter = (): Error => Object.defineProperty(new Error('g'), 'code', { get() { throw new Error('getter boom'); } });
  const thrown: Record<string, () => unknown> = {
    nullproto: () => Object.create(null), revoked, codeGetter, nothing: () => null, text: () => 'plain words',
  };
  const logs: LogRecord[] = [];
  const server = await lonelyServer({
    concurrency: 4, queueLimit: 16, logger: new Logger('server', memorySink(logs), 'info'),
    handler: ((payload: string) => {
      const [name, how] = payload.split(' ');
      if (name === 'answer-revoked') return revoked();
      if (how === 'sync') throw thrown[name!]!();
      return Promise.reject(thrown[name!]!());
    }) as unknown as Handler,
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    const payloads = [...Object.keys(thrown).flatMap((k) => [`${k} sync`, `${k} async`]), 'answer-revoked sync'];
    sock.write(Buffer.concat(payloads.map((payload, seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload }))));
    await got.until(() => got.got.length === payloads.length);
    const codes = Object.fromEntries((got.got as ErrorMsg[]).map((m) => [payloads[m.seq!], `${m.code} ${(m as { appcode?: string }).appcode}`]));
    // An answer that is a revoked Proxy is looked at as a promise (its `then`), which throws: HANDLER_FAILED as well.
    for (const p of payloads) assert.is(codes[p], 'HANDLER_ERROR HANDLER_FAILED', `${p}: ${JSON.stringify(codes)}`);
    const said = logs.filter((r) => r.event === 'handler_failed').map((r) => r.msg).join('\n');
    for (const re of [/an object with no prototype/, /cannot be looked at \(a revoked Proxy\?\)/, /Error: g\n/, /it threw null, not an Error/, /it threw "plain words", not an Error/]) assert.match(said, re);
    // Still serving.
    sock.write(frame({ type: 0, seq: 99, srcid: 'c', privPoliId: 'P', payload: 'text async' }));
    await got.until(() => got.got.length === payloads.length + 1);
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('handlers that time out and ignore ctx.signal stay bounded: up to --concurrency of them linger beside the running ones, past it each takes a slot (requests wait, or are refused OVERLOADED), and a warn line says why', async () => {
  // Their slots were freed at the timeout and new requests started: with --concurrency 4, 76 ran at once.
  const clock = new ManualClock();
  const logs: LogRecord[] = [];
  let live = 0;
  let most = 0;
  const release: Array<() => void> = [];
  const server = await lonelyServer({
    concurrency: 2, queueLimit: 4, handlerTimeoutMs: 100, clock, logger: new Logger('server', memorySink(logs), 'info'),
    handler: () => new Promise<string>((resolve) => {
      live++;
      most = Math.max(most, live);
      release.push(() => {
        live--;
        resolve('late');
      });
    }),
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    sock.write(Buffer.concat(Array.from({ length: 6 }, (_, seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload: `p${seq}` }))));
    await eventually(() => live === 2, 2000, 'two running');
    for (let round = 0; round < 5; round++) {
      clock.advance(100);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.is(most, 4, `at most twice --concurrency handlers at once: ${most}`);
    const timedOut = () => got.got.filter((m) => (m as ErrorMsg).code === 'TIMEOUT').length;
    await eventually(() => timedOut() === 4, 2000, 'four answered TIMEOUT');
    // Two requests wait; past the queue, a new one is refused OVERLOADED, naming the lingering handlers.
    sock.write(Buffer.concat(Array.from({ length: 5 }, (_, i) => frame({ type: 0, seq: 10 + i, srcid: 'c', privPoliId: 'P', payload: 'more' }))));
    await eventually(() => got.got.some((m) => (m as ErrorMsg).code === 'OVERLOADED'), 2000, 'refused past the queue');
    assert.match((got.got.find((m) => (m as ErrorMsg).code === 'OVERLOADED') as ErrorMsg).message, /4 handler\(s\) that timed out still run: they ignore ctx\.signal/);
    assert.ok(logs.some((r) => r.event === 'handler_lingering' && r.level === 'warn' && /ignores ctx\.signal/.test(r.msg)), JSON.stringify(logs.map((r) => r.msg)));
    // The lingering handlers settle: the waiting requests run.
    for (const r of release.splice(0)) r();
    await eventually(() => live === 2, 2000, 'the waiting requests started');
    assert.is(most, 4);
  } finally {
    for (const r of release.splice(0)) r();
    sock.destroy();
    await server.stop();
  }
});

limits('an answer UTF-8 cannot carry (a lone surrogate) is BAD_ANSWER, not U+FFFD without a word; one too big for the frame is ANSWER_TOO_LARGE naming the real cap, --max-frame less 1024', async () => {
  const cap = 1024 * 1024 - 1024;
  const server = await lonelyServer({
    concurrency: 4, queueLimit: 4,
    handler: (p) => (p === 'lone' ? 'A\ud800B' : p === 'pair' ? 'A\ud83d\ude00B' : p === 'at-cap' ? 'x'.repeat(cap) : 'x'.repeat(cap + 1)),
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    const asks = ['lone', 'pair', 'at-cap', 'over-cap'];
    sock.write(Buffer.concat(asks.map((payload, seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload }))));
    await got.until(() => got.got.length === asks.length, 5000);
    const by = (seq: number) => got.got.find((m) => (m as ErrorMsg).seq === seq) as unknown as { type: number; code: string; appcode?: string; message: string; payload: unknown };
    assert.equal([by(0).code, by(0).appcode], ['HANDLER_ERROR', 'BAD_ANSWER']);
    assert.match(by(0).message, /a lone surrogate \(U\+D800 at index 1\)/);
    assert.equal([by(1).type, by(1).payload], [MsgType.ACK, 'A\ud83d\ude00B'], 'a surrogate pair is well-formed');
    assert.equal([by(2).type, (by(2).payload as string).length], [MsgType.ACK, cap], 'the cap itself fits');
    assert.equal([by(3).code, by(3).appcode], ['HANDLER_ERROR', 'ANSWER_TOO_LARGE']);
    assert.match(by(3).message, new RegExp(`answered ${cap + 1} bytes; answers may be ${cap} bytes at most \\(the server's --max-frame, maxFrameBytes to startServer, 1048576 less 1024`));
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits("a proxy's PING on its link states its frame (maxFrame): answers on that connection are kept within it, ANSWER_TOO_LARGE naming the proxy's max_frame; a connection without one keeps the server's own cap", async () => {
  const server = await lonelyServer({ concurrency: 4, queueLimit: 4, handler: (p) => 'x'.repeat(Number(p)) });
  const link = await rawConnect(server.port);
  const other = await rawConnect(server.port);
  const got = collector(link);
  const got2 = collector(other);
  try {
    // As a proxy with --max-frame 65536 dials a link: its PING first, then requests.
    link.write(Buffer.concat([frame({ type: 4, seq: 0, maxFrame: 65536 }), ...[64512, 64513].map((n, seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload: String(n) }))]));
    other.write(frame({ type: 0, seq: 0, srcid: 'c', privPoliId: 'P', payload: '64513' }));
    await got.until(() => got.got.length === 3, 5000);
    await got2.until(() => got2.got.length === 1, 5000);
    const by = (seq: number) => got.got.find((m) => m.type !== MsgType.PONG && (m as ErrorMsg).seq === seq) as unknown as ErrorMsg & { payload?: string };
    assert.is(by(0).type, MsgType.ACK, 'the cap itself fits: the proxy frame less 1024');
    assert.equal([by(1).code, by(1).appcode], ['HANDLER_ERROR', 'ANSWER_TOO_LARGE']);
    assert.match(by(1).message, /answered 64513 bytes; answers may be 64512 bytes at most \(the reverse proxy it came through reads frames of at most 65536 bytes \(its max_frame, --max-frame, as its link from 127\.0\.0\.1:\d+ states\), less 1024 for the rest of the frame; this server's own --max-frame is 1048576\)/);
    assert.is(got2.got[0]!.type, MsgType.ACK, 'another connection, which stated no frame, keeps the server\'s own cap');
  } finally {
    link.destroy();
    other.destroy();
    await server.stop();
  }
});

limits("an ERROR without a seq from the peer (a proxy ending its link) is said in its words, not refused as 'message type 3 is not a request'", async () => {
  const logs: LogRecord[] = [];
  const server = await lonelyServer({ concurrency: 1, queueLimit: 1, handler: () => 'ok', logger: new Logger('server', memorySink(logs), 'info') });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    sock.write(frame({ type: 3, code: 'BAD_REQUEST', message: 'a PONG (seq 3) that answers no PING' }));
    await got.until(() => got.closed, 3000);
    assert.equal(got.got, [], 'not answered: the proxy reads nothing more from it');
    const line = logs.find((r) => r.event === 'link_refused');
    assert.ok(line, JSON.stringify(logs.map((r) => r.msg)));
    assert.match(line!.msg, /^The peer at 127\.0\.0\.1:\d+ \(a reverse proxy's link\) ended its connection with ERROR BAD_REQUEST: a PONG \(seq 3\) that answers no PING$/);
    assert.not.ok(logs.some((r) => /is not a request/.test(r.msg)), JSON.stringify(logs.map((r) => r.msg)));
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('with --concurrency 1, --delay is paid by each request in turn', async () => {
  const clock = new ManualClock();
  const server = await lonelyServer({ concurrency: 1, queueLimit: 10, delayMs: 100, clock, handler: (p) => `ok ${String(p)}` });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    sock.write(Buffer.concat([0, 1, 2].map((i) => frame({ type: 0, seq: i, srcid: 'c', privPoliId: 'P', payload: `p${i}` }))));
    // The three are read; nothing answers before the first delay has passed.
    await new Promise((r) => setTimeout(r, 50));
    assert.is(got.got.length, 0);
    for (let n = 1; n <= 3; n++) {
      clock.advance(99);
      await new Promise((r) => setTimeout(r, 20));
      assert.is(got.got.length, n - 1, `not yet ${n}`);
      clock.advance(1);
      await got.until(() => got.got.length >= n);
    }
    assert.equal(got.got.map((m) => (m as AckMsg).seq), [0, 1, 2]);
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('a request whose deadline passes while it waits for a slot is not run', async () => {
  const clock = new ManualClock();
  const ran: string[] = [];
  let release: (() => void) | undefined;
  const server = await lonelyServer({
    concurrency: 1, queueLimit: 10, clock,
    handler: (p) => {
      ran.push(String(p));
      return p === 'first' ? new Promise<string>((r) => (release = () => r('done'))) : 'done';
    },
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    // As the proxy sends them: each with the time its try has left.
    sock.write(Buffer.concat([
      frame({ type: 0, seq: 0, srcid: 'c', privPoliId: 'P', payload: 'first', timeoutms: 1000 }),
      frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'late', timeoutms: 100 }),
      frame({ type: 0, seq: 2, srcid: 'c', privPoliId: 'P', payload: 'in time', timeoutms: 1000 }),
    ]));
    await eventually(() => release !== undefined, 2000, 'the first running');
    clock.advance(200);
    release!();
    await got.until(() => got.got.length >= 3);
    assert.equal(ran, ['first', 'in time']);
    const late = got.got.find((m) => (m as ErrorMsg).seq === 1) as ErrorMsg;
    assert.equal([late.type, late.code], [MsgType.ERROR, 'TIMEOUT']);
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('a handler that never settles is answered TIMEOUT after the handler timeout (30 s by default), its signal aborted and its slot freed', async () => {
  for (const handlerTimeoutMs of [undefined, 1000]) {
    const clock = new ManualClock();
    const logs: LogRecord[] = [];
    let signal: AbortSignal | undefined;
    let settle: ((v: string) => void) | undefined;
    const server = await lonelyServer({
      concurrency: 1, queueLimit: 10, clock, handlerTimeoutMs, logger: new Logger('server', memorySink(logs), 'info'),
      handler: (p, c) => {
        if (p !== 'hang') return `ok ${String(p)}`;
        signal = c.signal;
        return new Promise<string>((resolve) => (settle = resolve)); // ignores its signal
      },
    });
    const sock = await rawConnect(server.port);
    const got = collector(sock);
    try {
      sock.write(Buffer.concat([
        frame({ type: 0, seq: 0, srcid: 'c', privPoliId: 'P', payload: 'hang' }),
        frame({ type: 0, seq: 1, srcid: 'c', privPoliId: 'P', payload: 'next' }),
      ]));
      await eventually(() => settle !== undefined, 2000, 'the hanging handler started');
      const limit = handlerTimeoutMs ?? 30_000;
      clock.advance(limit - 1);
      await new Promise((r) => setImmediate(r));
      assert.is(got.got.length, 0, 'nothing before the handler timeout');
      clock.advance(1);
      await got.until(() => got.got.length >= 2);
      const [timedOut, next] = got.got as [ErrorMsg, AckMsg];
      assert.equal([timedOut.type, timedOut.seq, timedOut.code], [MsgType.ERROR, 0, 'TIMEOUT']);
      assert.match(timedOut.message, new RegExp(`did not settle within ${limit} ms`));
      assert.equal([next.type, next.seq, next.payload], [MsgType.ACK, 1, 'ok next'], 'the slot was freed for the next request');
      assert.is(signal!.aborted, true, 'the handler was told to stop');
      assert.is((signal!.reason as { code?: string }).code, 'TIMEOUT');
      settle!('too late');
      await new Promise((r) => setTimeout(r, 20));
      assert.is(got.got.length, 2, 'a handler settling after its timeout sends nothing');
      const lines = logs.filter((r) => r.event === 'handler_timeout');
      assert.is(lines.length, 1, 'one log line');
      assert.match(lines[0]!.msg, new RegExp(`did not settle within ${limit} ms.*request 0 of client c`));
    } finally {
      sock.destroy();
      await server.stop();
    }
  }
});

/** A server on a manual clock whose handler never settles (and ignores its signal), logging into `logs`. */
async function hangingServer(opts: { queueLimit: number; drainTimeoutMs?: number }) {
  const clock = new ManualClock();
  const logs: LogRecord[] = [];
  let started = false;
  const server = await lonelyServer({
    concurrency: 1, clock, ...opts, logger: new Logger('server', memorySink(logs), 'info'),
    handler: () => {
      started = true;
      return new Promise<string>(() => {});
    },
  });
  return { server, clock, logs, started: () => started };
}

limits('a server killed with a handler still running says nothing of it afterwards: its handler timeout goes with it', async () => {
  const { server, clock, logs, started } = await hangingServer({ queueLimit: 1 });
  const sock = await rawConnect(server.port);
  try {
    sock.write(frame({ type: 0, seq: 0, srcid: 'c', privPoliId: 'P', payload: 'hang' }));
    await eventually(started, 2000, 'the handler started');
    server.kill();
    clock.advance(60_000);
    assert.equal(logs.filter((r) => r.event === 'handler_timeout').map((r) => r.msg), []);
  } finally {
    sock.destroy();
  }
});

limits('a drain lets its requests run as long as the handler timeout allows, not 5 s', async () => {
  // A SIGTERM cut off, 5 s into its drain, a handler the server gave 30 s: the proxy failed the
  // request (UPSTREAM_FAILED) or tried it elsewhere, and the server's log said nothing of it.
  const clock = new ManualClock();
  const logs: LogRecord[] = [];
  const release: Array<() => void> = [];
  const server = await lonelyServer({
    concurrency: 2, queueLimit: 10, clock, logger: new Logger('server', memorySink(logs), 'info'),
    handler: (p) => new Promise<string>((resolve) => release.push(() => resolve(`done ${String(p)}`))),
  });
  const sock = await rawConnect(server.port);
  const got = collector(sock);
  try {
    sock.write(Buffer.concat(['slow', 'stuck'].map((p, seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload: p }))));
    await eventually(() => release.length === 2, 2000, 'both handlers started');
    const stopped = server.stop();
    await eventually(() => logs.some((r) => r.event === 'draining'), 2000, 'draining');
    clock.advance(10_000);
    release[0]!();
    await got.until(() => got.got.length >= 1);
    assert.equal([(got.got[0] as AckMsg).seq, (got.got[0] as AckMsg).payload], [0, 'done slow'], 'answered 10 s into the drain');
    clock.advance(20_000);
    await got.until(() => got.got.length >= 2);
    assert.equal([(got.got[1] as ErrorMsg).seq, (got.got[1] as ErrorMsg).code], [1, 'TIMEOUT'], 'the handler timeout still rules');
    clock.advance(5000);
    await stopped;
    assert.equal(logs.filter((r) => r.event === 'drain_timeout'), [], 'nothing was cut off');
    assert.is(logs.find((r) => r.event === 'draining')!.drainTimeoutMs, 35_000, 'the handler timeout (30 s) plus 5 s');
  } finally {
    sock.destroy();
    await server.stop();
  }
});

limits('a drain timeout that cuts off requests says how many, at warn', async () => {
  const { server, clock, logs, started } = await hangingServer({ queueLimit: 10, drainTimeoutMs: 1000 });
  const sock = await rawConnect(server.port);
  try {
    sock.write(Buffer.concat([0, 1].map((seq) => frame({ type: 0, seq, srcid: 'c', privPoliId: 'P', payload: 'hang' }))));
    await eventually(started, 2000, 'the handler started');
    const stopped = server.stop();
    await eventually(() => logs.some((r) => r.event === 'draining'), 2000, 'draining');
    clock.advance(1000);
    await stopped;
    const cut = logs.filter((r) => r.event === 'drain_timeout');
    assert.equal(cut.map((r) => [r.level, r.count]), [['warn', 2]], 'one running, one waiting');
    assert.match(cut[0]!.msg, /^Drain timeout \(1000 ms, --drain-timeout\): cut off 2 request\(s\)/);
  } finally {
    sock.destroy();
  }
});

limits('a limit that would leave the server answering nothing is refused at start, naming the option: concurrency 0, -1 or NaN', async () => {
  const bad: Array<[Record<string, number>, RegExp]> = [
    [{ concurrency: 0 }, /concurrency must be a whole number of at least 1 \(leave it out for no limit\), got 0/],
    [{ concurrency: -1 }, /concurrency must be .* got -1/],
    [{ concurrency: Number.NaN }, /concurrency must be .* got NaN/],
    [{ queueLimit: -1 }, /queueLimit must be a whole number of at least 0, got -1/],
    [{ handlerTimeoutMs: Number.NaN }, /handlerTimeoutMs must be/],
    [{ maxConnections: 0 }, /maxConnections must be a whole number of at least 1/],
  ];
  for (const [opts, why] of bad) {
    const err = await lonelyServer({ handler: () => 'ok', concurrency: 1, queueLimit: 1, ...opts }).then((s) => s.stop().then(() => undefined), (e: unknown) => e);
    assert.instance(err, StartError, JSON.stringify(opts));
    assert.match((err as Error).message, why);
  }
});

limits.run();

// ---- answers over the frame between a server and its proxy ----

const frames = withProxy('answers larger than the proxy takes');

frames("a server whose --max-frame is bigger than its proxy's answers ANSWER_TOO_LARGE at the proxy's limit, and stays in rotation: its next requests are its own (the probe's case)", async () => {
  const logs: LogRecord[] = [];
  const s = await startServer({
    id: 'wide', policy: 'W', revproc: ctx.proxy.port, maxFrameBytes: 4 * 1048576, logger: new Logger('server', memorySink(logs), 'info'),
    handler: async (x) => (x === 'big' ? 'y'.repeat(2e6) : 'small'),
  });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy.pools()['W']?.serving.includes('wide') ?? false, 3000, 'wide serving');
  const c = await client({ timeoutMs: 3000 });
  for (let round = 0; round < 2; round++) {
    const [big, small] = await Promise.allSettled([c.request('W', 'big'), c.request('W', 'small')]);
    assert.is(big.status, 'rejected');
    const err = (big as PromiseRejectedResult).reason as HandlerError;
    assert.instance(err, HandlerError);
    assert.equal([err.code, err.appCode], ['HANDLER_ERROR', 'ANSWER_TOO_LARGE'], String(err));
    assert.match(err.message, /answered 2000000 bytes; answers may be 1047552 bytes at most \(the reverse proxy it came through reads frames of at most 1048576 bytes \(its max_frame, --max-frame/);
    assert.equal(small, { status: 'fulfilled', value: 'small' }, `round ${round}: the request beside it is answered`);
  }
  // Right after: every request answered by that server, none NO_SERVER (it was out of rotation for 0.9 s).
  const after = await Promise.allSettled(Array.from({ length: 20 }, () => c.request('W', 'small')));
  assert.equal(after.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), []);
  assert.equal(ctx.proxy.pools()['W']!.states, { wide: 'serving' });
  assert.not.ok(ctx.logs.some((r) => r.event === 'down' || r.event === 'no_server'), JSON.stringify(ctx.logs.filter((r) => r.level === 'warn').map((r) => r.msg)));
  assert.not.ok(logs.some((r) => r.event === 'bad_input' || r.event === 'link_refused'), JSON.stringify(logs.map((r) => r.msg)));
});

/**
 * A server that does not keep its answers within the proxy's frame (an older build, another implementation): raw
 * frames, answering `big` with a frame of `size` bytes of payload whatever the link's PING said. `pings` are the PINGs
 * its link read.
 */
async function uncappedServer(id: string, policy: string, size: number): Promise<{ pings: Message[]; close(): void }> {
  const pings: Message[] = [];
  const socks = new Set<Socket>();
  const srv = createServer((sock) => {
    socks.add(sock);
    const d = new FrameDecoder({ maxFrameBytes: 8 << 20 });
    sock.on('error', () => {});
    sock.on('data', (chunk) => {
      for (const m of d.push(chunk).messages) {
        if (m.type === MsgType.PING) {
          pings.push(m);
          sock.write(encodeFrame({ type: MsgType.PONG, seq: m.seq }));
        } else if (m.type === MsgType.DATA) {
          const payload = m.payload === 'big' ? 'y'.repeat(size) : `small ${String(m.payload)}`;
          sock.write(encodeFrame({ type: MsgType.ACK, seq: m.seq, srcid: id, destid: m.srcid, payload, payloadsize: payload.length }));
        }
      }
    });
  });
  await new Promise<void>((r) => srv.listen(0, LOCAL, r));
  const reg = await rawConnect(ctx.proxy.port);
  socks.add(reg);
  const rd = new FrameDecoder();
  reg.on('data', (chunk) => {
    for (const m of rd.push(chunk).messages) if (m.type === MsgType.PING) reg.write(encodeFrame({ type: MsgType.PONG, seq: m.seq }));
  });
  reg.write(frame({ type: MsgType.SETUP, id, privPolyId: policy, listenport: (srv.address() as AddressInfo).port }));
  await eventually(() => ctx.proxy.pools()[policy]?.serving.includes(id) ?? false, 3000, `server ${id} serving ${policy}`);
  return { pings, close: () => { for (const so of socks) so.destroy(); srv.close(); } };
}

frames("an answer over the proxy's frame from a server that does not cap its answers is passed over: its request answered ANSWER_TOO_LARGE, the others on the link answered, the server kept in rotation", async () => {
  const old = await uncappedServer('old', 'O', 2e6);
  try {
    const c = await client({ timeoutMs: 3000 });
    for (let round = 0; round < 2; round++) {
      // Sent together, so the oversized answer comes between the other two on the link.
      const [before, big, after] = await Promise.allSettled([c.request('O', 'a'), c.request('O', 'big'), c.request('O', 'b')]);
      const err = (big as PromiseRejectedResult).reason as HandlerError;
      assert.instance(err, HandlerError, String(err));
      assert.equal([err.code, err.appCode], ['HANDLER_ERROR', 'ANSWER_TOO_LARGE']);
      assert.match(err.message, /server old answered with a frame of 2000062 bytes, over the 1048576 the reverse proxy reads \(its max_frame, --max-frame\); answers may be 1047552 bytes at most/);
      assert.equal([before, after], [{ status: 'fulfilled', value: 'small a' }, { status: 'fulfilled', value: 'small b' }], `round ${round}: the answers around it on the link`);
    }
    assert.is(await c.request('O', 'next'), 'small next');
    assert.equal(ctx.proxy.pools()['O']!.states, { old: 'serving' });
    assert.not.ok(ctx.logs.some((r) => r.event === 'down'), JSON.stringify(ctx.logs.filter((r) => r.level === 'warn').map((r) => r.msg)));
    const said = ctx.logs.filter((r) => r.event === 'answer_too_large');
    assert.is(said.length, 1, 'said once, then counted');
    assert.match(said[0]!.msg, /^Server id old answered with a frame of 2000062 bytes \(seq \d+\), over the 1048576 the proxy reads \(its max_frame, --max-frame\): passed over unread/);
    assert.equal(old.pings[0], { type: MsgType.PING, seq: 0, maxFrame: 1048576 }, "the link's PING states the proxy's frame (which this server did not heed)");
  } finally {
    old.close();
  }
});

// ---- payloads as bytes ----

const bytes = withProxy('binary payloads and answers');

bytes('bytes and text round-trip byte-exact through the proxy, and the SHA1 handler hashes the exact bytes', async () => {
  await serve('echo', 'E', (p) => p);
  await serve('sha', 'H');
  const c = await client();
  await fc.assert(
    fc.asyncProperty(fc.oneof(fc.uint8Array({ maxLength: 2048 }), fc.string({ unit: 'binary', maxLength: 512 })), async (payload) => {
      const back = await c.request('E', payload);
      if (typeof payload === 'string') assert.is(back, payload);
      else {
        assert.instance(back, Uint8Array);
        assert.ok(Buffer.from(back as Uint8Array).equals(Buffer.from(payload)), 'same bytes');
      }
      assert.is(await c.request('H', payload), sha1Hex(payload));
    }),
    { numRuns: 150 },
  );
});

bytes('an ArrayBuffer, a DataView or another typed array answers its bytes, as ws and undici take them; a Blob or a fetch Response is BAD_ANSWER saying how to read it', async () => {
  // Before, each was BAD_ANSWER 'an object (JSON.stringify it to answer JSON)', and JSON.stringify of an ArrayBuffer is '{}'.
  const memory = new Uint8Array([9, 1, 2, 3, 4, 9]).buffer;
  const shapes: Record<string, unknown> = {
    buffer: memory.slice(1, 5), view: new DataView(memory, 1, 4), u16: new Uint16Array(memory.slice(1, 5)), sub: new Int8Array(memory, 1, 4),
    blob: new Blob(['x']), response: new Response('x'),
  };
  await serve('shapes', 'S', ((p: string) => shapes[p]) as unknown as Handler);
  const c = await client();
  for (const shape of ['buffer', 'view', 'u16', 'sub']) {
    const back = await c.request('S', shape).catch((e: unknown) => e);
    assert.instance(back, Uint8Array, `${shape}: ${String(back)}`);
    assert.equal([...(back as Uint8Array)], [1, 2, 3, 4], shape);
  }
  const said = async (p: string): Promise<string> => ((await c.request('S', p).catch((e: unknown) => e)) as HandlerError).message;
  assert.is(await said('blob'), 'the handler of server shapes answered a Blob (answer await blob.arrayBuffer(), its bytes); a handler answers a string or bytes');
  assert.is(await said('response'), 'the handler of server shapes answered a fetch Response (answer await response.text(), or await response.arrayBuffer() for its bytes); a handler answers a string or bytes');
});

bytes('a binary request never goes to an old JSON server: it is tried on the next member, and fails only when none is left', async () => {
  const old = await startServer({ id: 'old', policy: 'M', revproc: ctx.proxy.port, wire: 'json' });
  ctx.servers.push(old);
  await eventually(() => ctx.proxy.pools().M?.serving.includes('old') ?? false, 3000, 'old serving');
  const c = await client();
  const err = (await c.request('M', new Uint8Array([1, 2])).catch((e: unknown) => e)) as RequestError;
  assert.equal([err.code, /tried old/.test(err.message)], ['UPSTREAM_FAILED', true], err.message);
  assert.ok(ctx.logs.some((r) => /old JSON server, which takes text only/.test(r.msg)), 'the proxy logs why');
  await serve('new', 'M');
  for (let i = 0; i < 4; i++) assert.is(await c.request('M', new Uint8Array([i])), sha1Hex(new Uint8Array([i])));
  assert.is(await c.request('M', 'text goes to both'), sha1Hex('text goes to both'));
  assert.equal(ctx.proxy.pools().M!.serving, ['old', 'new'], 'and the old server is not held to account');
  assert.is(ctx.logs.filter((r) => r.event === 'eject').length, 0);
});

bytes('text that is not UTF-8 is refused with BAD_REQUEST naming the byte, on frames and on the old JSON wire (issue 14, point 8)', async () => {
  await serve('sha', 'H');
  const body = Buffer.from(frame({ type: 0, seq: 7, srcid: 'c', privPoliId: 'H', payload: 'abcd' }));
  const at = body.indexOf('abcd');
  body[at + 2] = 0xff;
  const sock = await rawConnect(ctx.proxy.port);
  const got = collector(sock);
  sock.write(body);
  await got.until(() => got.closed);
  const err = got.got[0] as ErrorMsg;
  assert.is(err.code, 'BAD_REQUEST');
  assert.match(err.message, new RegExp(`field 'payload' is not valid UTF-8: byte 0xff at byte ${at + 2 - 4} of the body of the frame at byte 0`));

  const json = await rawConnect(ctx.proxy.port);
  const text: Buffer[] = [];
  json.on('data', (d: Buffer) => text.push(d));
  const head = Buffer.from('{"type": "0", "srcid": "c", "privPoliId": "H", "payload": "ab');
  // C3 starts a two-byte sequence; 28 cannot continue it: named at C3, where the ill-formed sequence starts.
  json.write(Buffer.concat([head, Buffer.from([0xc3, 0x28]), Buffer.from('"}')]));
  await new Promise((r) => json.once('close', r));
  assert.match(Buffer.concat(text).toString(), new RegExp(`"code": "BAD_REQUEST".*is not valid UTF-8: byte 0xc3 at byte ${head.length}`));
});

bytes('an old JSON client gets a binary answer as HANDLER_ERROR BINARY_ANSWER, and an application error with its appcode', async () => {
  await serve('b', 'B', (p) => (p === 'fail' ? Promise.reject(new HandlerError('NOPE', 'not this one')) : new Uint8Array([0, 1, 2])));
  const sock = await rawConnect(ctx.proxy.port);
  const text: string[] = [];
  sock.setEncoding('utf8').on('data', (d: string) => text.push(d));
  sock.write('{"type": "0", "srcid": "old", "privPoliId": "B", "payload": "x"}{"type": "0", "srcid": "old", "privPoliId": "B", "payload": "fail"}');
  await eventually(() => (text.join('').match(/"type": "3"/g) ?? []).length === 2, 3000, 'two answers');
  sock.destroy();
  const [bin, app] = text.join('').split(/(?<=\})(?=\{)/).map((o) => JSON.parse(o) as Record<string, string>);
  assert.equal([bin!.code, bin!.appcode], ['HANDLER_ERROR', 'BINARY_ANSWER']);
  assert.match(bin!.message!, /3 bytes of binary data/);
  assert.equal([app!.code, app!.appcode, app!.message], ['HANDLER_ERROR', 'NOPE', 'not this one']);
});

frames.run();
bytes.run();
