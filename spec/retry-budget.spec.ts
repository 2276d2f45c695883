/**
 * The retry budget (actors/retry-budget.ts): a policy's retries of failed tries over the last 10 s
 * are at most `--retry-budget` percent of its requests over them plus `--min-retry-rate` a second;
 * the requests of a server whose link went down are sent again outside it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runClient, startProxy, startServer, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { resolveOptions, type ProxyObserver } from '../actors/proxy-options.js';
import { RETRY_BUDGET_WINDOW_MS, RetryBudget } from '../actors/retry-budget.js';
import { combineObservers } from '../admin/access-log.js';
import { changes, parseConfig, toRuntime } from '../config/proxy.js';
import { Metrics } from '../inspector/metrics.js';
import { startInspector } from '../inspector/index.js';
import { eventually, LOCAL, sleep } from './helpers.js';
import { adminOnFreePort, killAll, proxyProcess, revproxy, serving, type Proc } from './procs.js';

const unit = suite('retry budget, alone');

unit('with no requests, the minimum rate allows its 10 seconds worth, then no more', () => {
  const b = new RetryBudget();
  const rules = { percent: 20, minPerSecond: 3 };
  let taken = 0;
  while (b.take(1000, rules)) taken++;
  assert.is(taken, 30);
  assert.equal(b.state(1000, rules), { requests: 0, retries: 30, allowed: 30 });
});

unit('requests over the last 10 s allow their percentage; older ones and older retries are forgotten', () => {
  const b = new RetryBudget();
  const rules = { percent: 20, minPerSecond: 0 };
  b.deposit(0, 500);
  b.deposit(5000, 500);
  let taken = 0;
  while (b.take(5500, rules)) taken++;
  assert.is(taken, 200, '20 % of 1,000');
  // The first second's 500 requests and none of the retries (taken at 5.5 s) have aged out at 10.0 s.
  assert.equal(b.state(10_000, rules), { requests: 500, retries: 200, allowed: 100 });
  assert.not.ok(b.take(10_000, rules));
  // 10 s after the retries, they are gone too; so are the 5 s requests.
  assert.equal(b.state(15_000, rules), { requests: 0, retries: 0, allowed: 0 });
  b.deposit(15_000, 10);
  assert.ok(b.take(15_000, rules));
  assert.ok(b.take(15_000, rules));
  assert.not.ok(b.take(15_000, rules), '20 % of 10 is 2');
  assert.is(RETRY_BUDGET_WINDOW_MS, 10_000);
});

unit('a slot met again after a whole window counts afresh', () => {
  const b = new RetryBudget();
  const rules = { percent: 100, minPerSecond: 0 };
  b.deposit(2500, 7);
  // 12.5 s is the same slot as 2.5 s, ten seconds on: the 7 are gone.
  b.deposit(12_500, 1);
  assert.equal(b.state(12_500, rules), { requests: 1, retries: 0, allowed: 1 });
});

interface Counts {
  retried: number;
  refused: number;
}

function counting(): { counts: Counts; observer: ProxyObserver } {
  const counts = { retried: 0, refused: 0 };
  return { counts, observer: { retried: () => void counts.retried++, retryRefused: () => void counts.refused++ } };
}

type Ctx = { proxy?: ProxyHandle; servers: ServerHandle[] };
const live = suite<Ctx>('retry budget, in a proxy', { servers: [] });
/** Each test's proxy and servers go with it. */
async function stopAll(ctx: Ctx): Promise<void> {
  for (const s of ctx.servers) s.kill();
  ctx.servers = [];
  await ctx.proxy?.stop();
  ctx.proxy = undefined;
}
live.after.each(stopAll);

/** Three servers of policy F that answer every request UPSTREAM_FAILED, never ejected (they fail alike anyway). */
async function failingPolicy(ctx: Ctx, options: Parameters<typeof startProxy>[0]): Promise<{ host: string; port: number }> {
  ctx.proxy = await startProxy({ port: 0, ejectAfter: 1_000_000, ...options });
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  for (const id of ['f1', 'f2', 'f3']) ctx.servers.push(await startServer({ id, policy: 'F', listenPort: 0, proxy, behaviour: 'fail' }));
  await eventually(() => ctx.proxy!.pools().F?.serving.length === 3, 3000, 'three failing servers serving F');
  return proxy;
}

live('a policy whose every server fails: 20 % of its requests are retried, the rest get their first answer', async (ctx) => {
  const { counts, observer } = counting();
  const metrics = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
  const proxy = await failingPolicy(ctx, { retries: 2, retryBudget: 20, minRetryRate: 0, observer: combineObservers(observer, metrics) });
  const results = await runClient({ id: 'c', proxy, packets: Array.from({ length: 100 }, (_, i) => ({ srcid: 'c', privPoliId: 'F', payload: `f${i}` })), window: 100 });
  assert.ok(results.every((r) => r.error === 'UPSTREAM_FAILED'), JSON.stringify(results.slice(0, 3)));
  // Without the budget each request went to all three servers: 200 retries, none refused.
  assert.is(counts.retried, 20);
  // Every request ends refused a retry (the 20 retried, on their second failure), but one a retry's
  // second failure might have reached before the budget was spent (two retries: answered for its --retries).
  assert.ok(counts.refused >= 90 && counts.refused <= 100, `refused ${counts.refused}`);
  const told = results.filter((r) => /; not retried: privacy policy F made 20 retries in the last 10 s, all its retry budget allows \(20 % of its 100 requests and 0 a second: --retry-budget, --min-retry-rate\)$/.test(r.message ?? ''));
  assert.is(told.length, counts.refused, results.map((r) => r.message).slice(0, 2).join('\n'));
  const text = await metrics.registry.metrics();
  const series = [...text.matchAll(/^revproxy_retries_over_budget_total\{policy="F",server="f\d",code="UPSTREAM_FAILED"\} (\d+)$/gm)];
  assert.is(series.reduce((sum, m) => sum + Number(m[1]), 0), counts.refused, text);
});

live("the inspector's pool shows the retries of the last 10 s against what the budget allows, once there were any", async (ctx) => {
  const insp = await startInspector({ port: 0, flushMs: 50 });
  try {
    const proxy = await failingPolicy(ctx, { retries: 2, retryBudget: 20, minRetryRate: 0, inspect: insp.inspect, observer: insp.observer });
    const pool = () => insp.hub.livePools().find((p) => p.policy === 'F');
    assert.is(pool()?.retries, undefined, 'none before any retry');
    await runClient({ id: 'c', proxy, packets: Array.from({ length: 100 }, (_, i) => ({ srcid: 'c', privPoliId: 'F', payload: `f${i}` })), window: 100 });
    assert.equal(pool()?.retries, { made: 20, allowed: 20 });
  } finally {
    await insp.close();
  }
});

live('a budget of 100 % a retry (200 % with --retries 2) is no budget', async (ctx) => {
  const { counts, observer } = counting();
  const proxy = await failingPolicy(ctx, { retries: 2, retryBudget: 200, minRetryRate: 0, observer });
  const results = await runClient({ id: 'c', proxy, packets: Array.from({ length: 30 }, (_, i) => ({ srcid: 'c', privPoliId: 'F', payload: `q${i}` })), window: 30 });
  assert.ok(results.every((r) => r.error === 'UPSTREAM_FAILED' && / tried f\d, f\d, f\d$/.test(r.message ?? '')), JSON.stringify(results.slice(0, 2)));
  assert.equal(counts, { retried: 60, refused: 0 });
});

live('the minimum rate lets a policy with no budget retry; a reload changes the rules at once', async (ctx) => {
  const { counts, observer } = counting();
  const proxy = await failingPolicy(ctx, { retries: 2, retryBudget: 0, minRetryRate: 0, observer });
  const send = (tag: string) => runClient({ id: 'c', proxy, packets: Array.from({ length: 10 }, (_, i) => ({ srcid: 'c', privPoliId: 'F', payload: `${tag}${i}` })), window: 10 });
  await send('a');
  assert.equal(counts, { retried: 0, refused: 10 }, 'no budget: no retry');
  ctx.proxy!.actor.send({ type: 'RELOAD', opts: resolveOptions({ port: proxy.port, ejectAfter: 1_000_000, retries: 2, retryBudget: 0, minRetryRate: 1 }) });
  const results = await send('b');
  assert.ok(results.every((r) => r.error === 'UPSTREAM_FAILED'));
  // 1 a second, over the 10 s: 10 retries.
  assert.is(counts.retried, 10);
});

live("a server's OVERLOADED answers (it ran none of the work) are sent again outside the budget: what a full server refuses goes to the other", async (ctx) => {
  const { counts, observer } = counting();
  // Sent past its concurrency (max_server_queue), for its own OVERLOADED answers to be what is tested.
  ctx.proxy = await startProxy({ port: 0, retryBudget: 0, minRetryRate: 0, observer, maxServerQueue: 1024 });
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  // One request at a time, 100 ms each, none waiting: it refuses the rest of what it is sent OVERLOADED, at once.
  ctx.servers.push(await startServer({ id: 'busy', policy: 'P', listenPort: 0, proxy, delayMs: 100, concurrency: 1, queueLimit: 0 }));
  ctx.servers.push(await startServer({ id: 'good', policy: 'P', listenPort: 0, proxy }));
  await eventually(() => ctx.proxy!.pools().P?.serving.length === 2, 3000, 'both servers serving P');
  const results = await runClient({ id: 'c', proxy, packets: Array.from({ length: 40 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `o${i}` })), window: 16 });
  assert.ok(results.every((r) => r.correct), JSON.stringify(results.filter((r) => !r.correct).slice(0, 2)));
  assert.ok(counts.retried >= 5, `busy refused ${counts.retried}`);
  assert.is(counts.refused, 0);
});

const on = suite<Ctx>('retry_on', { servers: [] });
on.after.each(stopAll);

on('without upstream-failed: what a failing server answers goes to the client after that one try, saying so', async (ctx) => {
  const { counts, observer } = counting();
  ctx.proxy = await startProxy({ port: 0, ejectAfter: 1_000_000, retryOn: ['reset', 'try-timeout', 'overloaded', 'timeout'], observer });
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  ctx.servers.push(await startServer({ id: 'bad', policy: 'P', listenPort: 0, proxy, behaviour: 'fail' }));
  ctx.servers.push(await startServer({ id: 'good', policy: 'P', listenPort: 0, proxy }));
  await eventually(() => ctx.proxy!.pools().P?.serving.length === 2, 3000, 'both servers serving P');
  const results = await runClient({ id: 'c', proxy, packets: Array.from({ length: 6 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `u${i}` })), window: 1 });
  assert.equal(results.map((r) => r.error ?? 'ok'), ['UPSTREAM_FAILED', 'ok', 'UPSTREAM_FAILED', 'ok', 'UPSTREAM_FAILED', 'ok']);
  assert.match(results[0]!.message!, /^server bad answered UPSTREAM_FAILED: .*; not retried: retry_on \(--retry-on\) leaves out upstream-failed$/);
  assert.equal(counts, { retried: 0, refused: 0 });
});

on('without try-timeout: a silent server\'s request is not sent on; it waits for its try, kept (hedge_on_try_timeout), until the deadline, or with hedging off is answered TIMEOUT at its try timeout', async (ctx) => {
  for (const hedge of [true, false]) {
    ctx.proxy = await startProxy({ port: 0, timeoutMs: 1500, tryTimeoutMs: 200, ejectAfter: 1_000_000, retryOn: ['reset', 'overloaded', 'timeout', 'upstream-failed'], hedgeOnTryTimeout: hedge });
    const proxy = { host: LOCAL, port: ctx.proxy.port };
    const mute = await startServer({ id: 'mute', policy: 'P', listenPort: 0, proxy, behaviour: 'silent' });
    const good = await startServer({ id: 'good', policy: 'P', listenPort: 0, proxy });
    await eventually(() => ctx.proxy!.pools().P?.serving.length === 2, 3000, 'both servers serving P');
    // Round robin: the first request goes to the first member to register (mute).
    const results = await runClient({ id: 'c', proxy, packets: [{ srcid: 'c', privPoliId: 'P', payload: 'v' }], window: 1, timeoutMs: 5000 });
    assert.is(results[0]!.error, 'TIMEOUT');
    if (hedge) {
      assert.match(results[0]!.message!, /^no answer within 1500 ms \(last try: server mute did not answer within the request's 1500 ms \(its try, kept past the 200 ms try timeout, was all it had left\)\)$/);
      assert.ok(results[0]!.latencyMs! >= 1400, `answered at the deadline: ${results[0]!.latencyMs} ms`);
    } else {
      assert.match(results[0]!.message!, /^server mute did not answer within 200 ms; not retried: retry_on \(--retry-on\) leaves out try-timeout$/);
      assert.ok(results[0]!.latencyMs! < 1000, `answered at the try timeout, not the request's: ${results[0]!.latencyMs} ms`);
    }
    await mute.stop();
    await good.stop();
    await ctx.proxy.stop();
    ctx.proxy = undefined;
  }
});

on('in the file: a YAML list, run in one order, so a reload that only reorders it or writes the default changes nothing', () => {
  const at = (text: string) => parseConfig(text, '/tmp/revproxy-retry-on.yaml');
  assert.equal(toRuntime(at('retry_on: [timeout, reset]\n')).options.retryOn, ['reset', 'timeout']);
  assert.equal(changes(at('retry_on: [timeout, reset]\n'), at('retry_on: [reset, timeout]\n')), []);
  assert.equal(changes(at('port: 0\n'), at('port: 0\nretry_on: [reset, try-timeout, overloaded, timeout, upstream-failed]\n')), []);
  assert.equal(changes(at('port: 0\n'), at('port: 0\nretry_on: [reset]\n')), [{ key: 'retry_on', reload: 'live' }]);
  assert.throws(() => at('retry_on: [reset, never]\n'), /retry_on\[1\].*one of reset, try-timeout, overloaded, timeout, upstream-failed/);
});

const procs = suite('retry budget across processes');
procs.after.each(killAll);

/**
 * A proxy process run with `proxyArgs`, a silent server and one that answers (policy P), and 40 requests
 * at once: the silent server holds its half until it is killed 300 ms in, and its link goes down.
 */
async function killedMidRun(proxyArgs: string[]): Promise<Awaited<ReturnType<typeof runClient>>> {
  const admin = await adminOnFreePort();
  const { port } = await proxyProcess(['--log-level', 'warn', ...admin.args, ...proxyArgs]);
  const slow: Proc = revproxy(['server', '-id', 'slow', '-pp', 'P', '-listen', '0', '-revproc', String(port), '--behaviour', 'silent']);
  const good: Proc = revproxy(['server', '-id', 'good', '-pp', 'P', '-listen', '0', '-revproc', String(port)]);
  await eventually(() => [slow, good].every((s) => s.out.some((l) => /Registered with the reverse proxy/.test(l))), 15000, 'servers registered');
  // The proxy's links to them open a PING round trip after their registrations: on a loaded machine all 40 went to
  // the one open first (a CI run: 40 failed where this expects the killed server's half).
  await serving(admin.url, 'P', 2);
  const run = runClient({ id: 'c', proxy: { host: LOCAL, port }, packets: Array.from({ length: 40 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `k${i}` })), window: 40 });
  await sleep(300);
  slow.kill('SIGKILL');
  return run;
}

procs('the requests of a server killed mid-run are sent again outside the budget: none lost', async () => {
  const results = await killedMidRun(['--retry-budget', '0', '--min-retry-rate', '0']);
  assert.ok(results.every((r) => r.correct), JSON.stringify(results.filter((r) => !r.correct).slice(0, 3)));
});

procs('--retry-on without reset: a killed server\'s requests fail with it, saying so', async () => {
  const failed = (await killedMidRun(['--retry-on', 'try-timeout,overloaded,timeout,upstream-failed'])).filter((r) => !r.correct);
  assert.ok(failed.length >= 1 && failed.length <= 20, `${failed.length} failed`);
  assert.ok(failed.every((r) => r.error === 'UPSTREAM_FAILED' && /; not retried: retry_on \(--retry-on\) leaves out reset$/.test(r.message ?? '')), JSON.stringify(failed.slice(0, 2)));
});

unit.run();
live.run();
on.run();
procs.run();
