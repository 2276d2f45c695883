/**
 * The bench's load generator counts what it measures: every request it sends
 * is answered once, counted once, and its hash checked. Behaviour only; the
 * bench itself measures timing, never this spec.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runLoad } from '../bench/loadgen.js';
import type { Check, Row } from '../bench/types.js';
import { checks } from '../bench/verdicts.js';
import { histogramsReady, LatencyHistogram } from '../bench/histogram.js';
import { startStubServer, type StubServer } from '../bench/stub.js';

const stubs: StubServer[] = [];
const test = suite('bench load generator');

test.after.each(async () => {
  for (const s of stubs.splice(0)) await s.close();
});

async function stub(opts: Parameters<typeof startStubServer>[0] = {}): Promise<StubServer> {
  const s = await startStubServer(opts);
  stubs.push(s);
  return s;
}

test('pipelined: 1000 requests on 4 connections x 16 in flight yield exactly 1000 right answers', async () => {
  const s = await stub({ reverse: true });
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: '111' }), connections: 4, depth: 16, requests: 1000 });
  assert.is(r.sent, 1000);
  assert.is(r.ok, 1000);
  assert.is(r.wrongHash, 0);
  assert.equal(r.errors, {});
  assert.is(r.latency.count, 1000);
  assert.is(s.received, 1000);
  assert.is(r.connected, 4);
});

test('one at a time: 50 requests on one connection', async () => {
  const s = await stub();
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: 'p' }), connections: 1, depth: 1, requests: 50 });
  assert.is(r.ok, 50);
  assert.is(s.received, 50);
});

test('connection per request: 30 requests over 3 loops open 30 connections', async () => {
  const s = await stub();
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: 'p' }), connections: 3, depth: 1, perRequest: true, requests: 30 });
  assert.is(r.sent, 30);
  assert.is(r.ok, 30);
  assert.equal(r.errors, {});
  assert.is(s.received, 30);
});

test('wrong hashes are counted, not taken as right answers', async () => {
  const payloads = ['a', 'b', 'c', 'd'];
  const s = await stub({ wrongFor: (p) => p === 'b' });
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: 'p' }), connections: 2, depth: 4, requests: 40, payloads });
  assert.is(r.wrongHash, 10);
  assert.is(r.ok, 30);
});

test('a refused connection is reported as CONNECT_FAILED and the run ends', async () => {
  const s = await stub();
  const port = s.port;
  await s.close();
  stubs.length = 0;
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port, policy: 'p' }), connections: 2, depth: 4, requests: 10, drainMs: 2000 });
  assert.is(r.ok, 0);
  assert.is(r.errors.CONNECT_FAILED, 2);
});

test('open loop: 200 requests at 1,000/s over 2 connections keep to the schedule (the last is due after 199 ms), every one answered', async () => {
  const s = await stub();
  const t0 = performance.now();
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: 'p' }), connections: 2, depth: 4, requests: 200, rate: 1000 });
  const took = performance.now() - t0;
  assert.is(r.sent, 200);
  assert.is(r.ok, 200);
  assert.is(s.received, 200);
  assert.equal(r.errors, {});
  assert.ok(took >= 198, `sent ahead of the schedule: all 200 in ${took.toFixed(0)} ms`);
});

test('open loop: latency counts from when each request was due, so a 300 ms stall shows in every request it held back (closed loop: in one)', async () => {
  const target = (port: number) => () => ({ host: '127.0.0.1', port, policy: 'p' });
  const open = await stub({ stall: { after: 100, ms: 300 } });
  const o = await runLoad({ target: target(open.port), connections: 1, depth: 1, requests: 600, rate: 1000 });
  const closed = await stub({ stall: { after: 100, ms: 300 } });
  const c = await runLoad({ target: target(closed.port), connections: 1, depth: 1, requests: 600 });
  assert.is(o.ok, 600);
  assert.is(c.ok, 600);
  // About 300 requests fell due during the stall, waiting 300 ms down to 0: a third of all waited over 100 ms.
  assert.ok(o.latency.p90 >= 100, `open loop p90 ${o.latency.p90} ms`);
  assert.ok(c.latency.max >= 270, `closed loop max ${c.latency.max} ms`);
  assert.ok(c.latency.p90 < o.latency.p90, `closed loop p90 ${c.latency.p90} ms against open ${o.latency.p90} ms`);
});

test('histogram quantiles are within 0.1% of the recorded values', async () => {
  await histogramsReady();
  const h = new LatencyHistogram();
  for (let i = 1; i <= 1000; i++) h.record(i / 10);
  assert.ok(Math.abs(h.quantile(0.5) - 50) / 50 < 0.0011, `p50 ${h.quantile(0.5)}`);
  assert.ok(Math.abs(h.quantile(0.99) - 99) / 99 < 0.0011, `p99 ${h.quantile(0.99)}`);
  const s = h.summary();
  assert.is(s.count, 1000);
  assert.ok(Math.abs(s.max - 100) / 100 < 0.0011, `max ${s.max}`);
  assert.ok(Math.abs(s.mean - 50.05) / 50.05 < 0.0011, `mean ${s.mean}`);
  h.destroy();
});

test.run();

const verdicts = suite('bench verdicts');

function row(workload: Row['workload'], target: Row['target'], rps: number, p50: number, label: string = workload): Row {
  const latency = { p50, p90: p50, p99: p50, p999: p50, mean: p50, max: p50, count: 1 };
  return { workload, label, target, result: { sent: 1, ok: 1, wrongHash: 0, errors: {}, firstError: {}, connected: 1, windowMs: 1000, rps, latency } };
}

verdicts('each target is judged from the ratio measured in the run; the one-at-a-time variants are information, not verdicts', () => {
  const rows = [
    row('pipelined', 'direct', 1000, 1),
    row('pipelined', 'proxy', 800, 1),
    row('pipelined', 'haproxy', 900, 1),
    row('serial', 'proxy', 1, 0.15),
    row('serial', 'haproxy', 1, 0.1),
  ];
  const out = checks(rows, undefined, {
    oneServer: row('serial', 'proxy', 1, 0.12, 'one at a time, one-server policy'),
    busyPoll: row('serial', 'proxy', 1, 0.09, 'one at a time, --busy-poll 300'),
    haproxyBusy: row('serial', 'haproxy', 1, 0.06, 'one at a time, busy-polling'),
  });
  const by = (what: string): Check => out.find((c) => c.what.startsWith(what))!;
  assert.is(by('pipelined throughput, proxy / direct').pass, true);
  assert.is(by('pipelined throughput, proxy / HAProxy').pass, false);
  assert.is(by('one-at-a-time p50, proxy / HAProxy').pass, false);
  const like = by('one-at-a-time p50, proxy on a one-server policy');
  assert.is(like.pass, undefined);
  assert.ok(Math.abs(like.ratio! - 1.2) < 1e-9);
  assert.match(like.detail, '1.20x (0.120 vs 0.100 ms)');
  assert.is(by('one-at-a-time p50, proxy --busy-poll 300 / HAProxy (').ratio?.toFixed(2), '0.90');
  assert.is(by('one-at-a-time p50, proxy --busy-poll 300 / HAProxy busy-polling').ratio?.toFixed(2), '1.50');
  assert.ok(out.filter((c) => c.what.includes('busy')).every((c) => c.pass === undefined), 'information, not verdicts');
  assert.is(checks(rows, undefined).some((c) => c.what.includes('one-server')), false);
});

verdicts.run();
