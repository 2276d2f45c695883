/**
 * The bench's load generator counts what it measures: every request it sends
 * is answered once, counted once, and its hash checked. Behaviour only; the
 * bench itself measures timing, never this spec.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runLoad } from '../bench/loadgen.js';
import type { Check, Row } from '../bench/types.js';
import { ratioSpread, roundOrder, runRounds, spread, summarise } from '../bench/rounds.js';
import { checks } from '../bench/verdicts.js';
import { histogramsReady, LatencyHistogram } from '../bench/histogram.js';
import { startStubServer, type StubServer } from '../bench/stub.js';
import { ROUTING_SPARE, routingRoom } from '../bench/cells.js';
import { clientRoom, fileRoom } from '../actors/port-limits.js';
import { growth } from '../bench/churn.js';
import { SETTLE_MS, settledSample } from '../bench/idle-fleet.js';

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

test('a run for a duration measures every request sent in its window, answered in it or after: a stalled target cannot hide the requests it held longest', async () => {
  // 300 ms at 1,000/s: the stub answers the first 100 at once, then holds every answer for 400 ms, past the window's end.
  const s = await stub({ stall: { after: 100, ms: 400 } });
  const r = await runLoad({ target: () => ({ host: '127.0.0.1', port: s.port, policy: 'p' }), connections: 1, depth: 1000, durationMs: 300, rate: 1000 });
  assert.is(r.ok, r.sent);
  assert.ok(r.sent >= 250, `sent ${r.sent}`);
  assert.is(r.latency.count, r.ok, 'every request of the window is in the latencies, the held ones too');
  assert.ok(r.latency.max >= 300, `max ${r.latency.max} ms: the first held request waited about 400 ms`);
  // Throughput counts the answers that came in the window: about the first 100.
  assert.is(r.answered, Math.round((r.rps * r.windowMs) / 1000));
  assert.ok(r.answered < r.ok / 2, `${r.answered} of ${r.ok} answered in the window`);
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

const rounds = suite('bench rounds');

rounds('each round runs every subject once, starting one place further on: A B C, B C A, C A B, A B C', () => {
  assert.equal(roundOrder(['A', 'B', 'C'], 4), [['A', 'B', 'C'], ['B', 'C', 'A'], ['C', 'A', 'B'], ['A', 'B', 'C']]);
  // Over as many rounds as subjects, each subject takes each place once (no target always runs first).
  const order = roundOrder(['direct', 'proxy', 'haproxy', 'relay'], 4);
  for (let place = 0; place < 4; place++) assert.is(new Set(order.map((r) => r[place])).size, 4);
  for (const r of order) assert.is(new Set(r).size, 4);
});

rounds('runRounds measures in that order; a subject that fails is named once and left out of the rounds after', async () => {
  const calls: string[] = [];
  const dropped: string[] = [];
  await runRounds(['A', 'B', 'C'], 3, async (s, r) => {
    calls.push(`${s}${r}`);
    if (s === 'B' && r === 1) throw new Error('B broke');
  }, (s, err) => dropped.push(`${s}: ${(err as Error).message}`));
  assert.equal(calls, ['A0', 'B0', 'C0', 'B1', 'C1', 'A1', 'C2', 'A2']);
  assert.equal(dropped, ['B: B broke']);
});

rounds('a before/after pair takes one place in the turn, measured back to back, and which goes first alternates each round', () => {
  const order = roundOrder(['direct', 'proxy', 'haproxy', 'baseline'], 4, ['proxy', 'baseline']);
  assert.equal(order, [
    ['direct', 'proxy', 'baseline', 'haproxy'],
    ['baseline', 'proxy', 'haproxy', 'direct'],
    ['haproxy', 'direct', 'proxy', 'baseline'],
    ['direct', 'baseline', 'proxy', 'haproxy'],
  ]);
  // Over an even count of rounds each of the two goes first as often as the other, always next to the other.
  const firsts = order.map((r) => r.find((s) => s === 'proxy' || s === 'baseline'));
  assert.is(firsts.filter((s) => s === 'proxy').length, 2);
  for (const r of order) assert.is(Math.abs(r.indexOf('proxy') - r.indexOf('baseline')), 1);
  // Without both in the subjects, the plain turn.
  assert.equal(roundOrder(['A', 'B', 'C'], 2, ['B', 'X']), roundOrder(['A', 'B', 'C'], 2));
});

rounds('runRounds starts the fresh subjects before the first of their cells in each round, in the order measured; a start that fails leaves both out, named once each', async () => {
  const calls: string[] = [];
  const dropped: string[] = [];
  await runRounds(['D', 'P', 'B'], 4, async (s, r) => {
    calls.push(`${s}${r}`);
  }, (s, err) => dropped.push(`${s}: ${(err as Error).message}`), {
    subjects: ['P', 'B'],
    start: async (order, r) => {
      calls.push(`start ${order.join('')}${r}`);
      if (r === 2) throw new Error('no listen');
    },
  });
  assert.equal(calls, ['D0', 'start PB0', 'P0', 'B0', 'start BP1', 'B1', 'P1', 'D1', 'D2', 'start PB2', 'D3']);
  assert.equal(dropped, ['P: no listen', 'B: no listen']);
});

rounds('the median of an odd count is the middle value, of an even count the mean of the middle two; with the lowest and highest', () => {
  assert.equal(spread([3, 1, 2]), { median: 2, min: 1, max: 3, n: 3 });
  assert.equal(spread([4, 1, 3, 2]), { median: 2.5, min: 1, max: 4, n: 4 });
  assert.equal(spread([5, NaN]), { median: 5, min: 5, max: 5, n: 1 });
  assert.is(spread([]), undefined);
});

function cell(workload: Row['workload'], subject: Row['subject'], round: number, rps: number, p50 = 1, extra: Partial<Row> = {}): Row {
  const latency = { p50, p90: p50, p99: p50, p999: p50, mean: p50, max: p50, count: 1000 };
  const target = subject.split(':')[0] as Row['target'];
  return {
    workload, label: workload, subject, target, round, cpuUs: {},
    result: { sent: 1000, ok: 1000, wrongHash: 0, errors: {}, unexpected: 0, firstError: {}, unreachable: [], connected: 1, windowMs: 1000, answered: 1000, rps, latency },
    ...extra,
  };
}

rounds('a ratio is taken inside each round, then its median: not the ratio of the medians', () => {
  const rows = [
    cell('pipelined', 'proxy', 0, 100), cell('pipelined', 'direct', 0, 200),
    cell('pipelined', 'proxy', 1, 90), cell('pipelined', 'direct', 1, 100),
    cell('pipelined', 'proxy', 2, 200), cell('pipelined', 'direct', 2, 200),
  ];
  // Per round 0.5, 0.9, 1.0; the medians alone (100 / 200) would say 0.5.
  assert.equal(ratioSpread(rows, 'pipelined', 'proxy', 'direct', (r) => r.result.rps), { median: 0.9, min: 0.5, max: 1, n: 3 });
  assert.is(ratioSpread(rows, 'serial', 'proxy', 'direct', (r) => r.result.rps), undefined);
});

rounds('the summary gives medians, errors summed over the rounds and the highest peak RSS', () => {
  const rows = [0, 1, 2].map((r) => cell('many', 'proxy', r, [10, 30, 20][r]!, 1, { peakRss: [5, 9, 7][r]!, proxyCpu: [0.5, 0.7, 0.6][r]!, cpuUs: { underTest: [2, 4, 3][r]! } }));
  rows[1]!.result.errors = { OVERLOADED: 2 };
  rows[2]!.result.errors = { OVERLOADED: 1, NO_ANSWER: 1 };
  const [s] = summarise(rows);
  assert.is(s!.rps.median, 20);
  assert.equal(s!.errors, { OVERLOADED: 3, NO_ANSWER: 1 });
  assert.is(s!.peakRss, 9);
  assert.is(s!.proxyCpu, 0.6);
  assert.is(s!.cpuUs.underTest, 3);
});

rounds.run();

const verdicts = suite('bench verdicts');

const MB = 1024 * 1024;

/** Three rounds of every subject the verdicts read, with per-round figures chosen so medians and single rounds disagree. */
function run3(): Row[] {
  const rows: Row[] = [];
  const add = (w: Row['workload'], subject: Row['subject'], rps: number[], p50: number[] = [1, 1, 1], extra: (r: number) => Partial<Row> = () => ({})): void => {
    for (let r = 0; r < 3; r++) rows.push(cell(w, subject, r, rps[r]!, p50[r]!, { label: subject.includes(':') ? `${w}, ${subject}` : w, ...extra(r) }));
  };
  // 1. proxy / HAProxy per round 1.7, 1.9, 2.0 (one round under 1.8; the median over it); proxy / direct 0.85, 0.95, 0.95.
  add('slow-servers', 'proxy', [3400, 3800, 3800]);
  add('slow-servers', 'haproxy', [2000, 2000, 1900]);
  add('slow-servers', 'direct', [4000, 4000, 4000]);
  // 2. proxy / relay 0.9, 0.96, 0.99: median 0.96 passes; old target proxy / direct 0.8 met, proxy / HAProxy 1.0 not.
  add('pipelined', 'proxy', [900, 960, 990], undefined, (r) => ({ cpuUs: { underTest: [2.5, 2.6, 2.7][r]! } }));
  add('pipelined', 'relay', [1000, 1000, 1000], undefined, () => ({ cpuUs: { underTest: 2 } }));
  add('pipelined', 'direct', [1000, 1200, 1200]);
  add('pipelined', 'haproxy', [1100, 1100, 1100], undefined, () => ({ cpuUs: { underTest: 0.6 } }));
  // 5. info / warn beside it about 0.96 every round: passes (against the proxy under test it would be 0.5); the access log is not measured.
  add('pipelined', 'proxy:log-info', [450, 480, 495], undefined, () => ({ cpuUs: { underTest: 2.9 } }));
  add('pipelined', 'proxy:log-warn', [470, 500, 520], undefined, () => ({ cpuUs: { underTest: 2.8 } }));
  // 3. one-server p50 / HAProxy p50 per round 1.0, 1.2, 1.3: median 1.2 fails though one round passes.
  add('serial', 'proxy:one-server', [1, 1, 1], [0.1, 0.12, 0.13]);
  add('serial', 'haproxy', [1, 1, 1], [0.1, 0.1, 0.1]);
  add('serial', 'proxy', [1, 1, 1], [0.15, 0.15, 0.15]);
  add('serial', 'proxy:busy-poll', [1, 1, 1], [0.09, 0.09, 0.09], () => ({ label: 'one at a time, --busy-poll 300' }));
  add('serial', 'haproxy:busy-polling', [1, 1, 1], [0.06, 0.06, 0.06]);
  // 4. RSS 150, 170, 140 MB: the highest round fails the 160 MB target.
  add('many', 'proxy', [1, 1, 1], undefined, (r) => ({ peakRss: [150, 170, 140][r]! * MB }));
  return rows;
}

verdicts("issue 20's five targets are judged on the median of the per-round ratios; the earlier targets and the variants are information", () => {
  const out = checks(run3(), undefined, { accessLog: 'no --access-log here' });
  const by = (what: string): Check => {
    const c = out.find((x) => x.what.startsWith(what));
    assert.ok(c, `no check "${what}" in ${out.map((x) => x.what).join(' | ')}`);
    return c!;
  };
  const slowH = by('servers working one at a time (4 at 1 ms), 2x32: requests/s proxy / HAProxy >= 1.8');
  assert.is(slowH.pass, true);
  assert.is(slowH.ratio!.toFixed(2), '1.90');
  assert.equal([slowH.spread!.min.toFixed(2), slowH.spread!.max.toFixed(2)], ['1.70', '2.00']);
  assert.match(slowH.detail, '1.90x (1.70-2.00, 3 rounds)');
  assert.is(by('servers working one at a time: requests/s proxy / direct').pass, true);
  const relay = by('pipelined: requests/s proxy / bare Node relay >= 0.95');
  assert.is(relay.pass, true);
  assert.is(relay.ratio!.toFixed(2), '0.96');
  assert.match(relay.detail, 'CPU per request: proxy 2.60 us, relay 2.00 us, HAProxy 0.60 us');
  const like = by('one at a time, like for like (one-server policy): p50 proxy / HAProxy <= 1.1');
  assert.is(like.pass, false);
  assert.is(like.ratio!.toFixed(2), '1.20');
  const many = by('1 connections through the proxy: peak RSS < 160 MB, no errors');
  assert.is(many.pass, false);
  assert.match(many.detail, 'peak RSS 170 MB (the highest round; rounds in order: 150, 170, 140 MB), 0 errors; old target < 256 MB: met');
  const info = by('pipelined: requests/s proxy at --log-level info / at warn >= 0.95');
  assert.is(info.pass, true);
  assert.match(info.detail, 'CPU per request: this 2.90 us, at warn 2.80 us');
  // Without a proxy at warn beside it, the reference is the proxy under test.
  const alone = checks(run3().filter((r) => r.subject !== 'proxy:log-warn'), undefined);
  assert.is(alone.find((c) => c.what.startsWith('pipelined: requests/s proxy at --log-level info'))!.pass, false);
  // The proxy under test against its twin at warn, inside each round (CPU 2.5/2.8, 2.6/2.8, 2.7/2.8; requests/s 900/470, 960/500, 990/520), for information.
  const twin = by('pipelined: CPU per request, proxy / its twin at warn beside it');
  assert.is(twin.pass, undefined);
  assert.is(twin.ratio!.toFixed(3), (2.6 / 2.8).toFixed(3));
  assert.match(twin.detail, '0.93x (0.89-0.96, 3 rounds): requests/s 1.91x (1.90-1.92, 3 rounds); the medians over the rounds: proxy 2.60 us, twin 2.80 us; requests/s twin / bare Node relay (target 2 on the other process) 0.50x (0.47-0.52, 3 rounds)');
  assert.not.ok(alone.some((c) => c.what.includes('its twin')), 'no twin, no row');
  const access = by('pipelined: requests/s proxy with --access-log / at warn');
  assert.is(access.pass, undefined);
  assert.is(access.detail, 'not measured: no --access-log here');
  // The earlier targets, for information, with their old verdicts.
  const direct = by('pipelined: requests/s proxy / direct');
  assert.is(direct.pass, undefined);
  assert.match(direct.detail, 'old target >= 0.8: met');
  assert.match(by('pipelined: requests/s proxy / HAProxy').detail, 'old target >= 1.0: not met');
  assert.match(by('one at a time: p50 proxy / HAProxy (two-server policies)').detail, '1.50x (1.50-1.50, 3 rounds)');
  assert.match(by('one at a time: p50 proxy / HAProxy (two-server policies)').detail, 'old target <= 1.2: not met');
  assert.is(by('one at a time: p50 proxy --busy-poll 300 / HAProxy busy-polling').ratio?.toFixed(2), '1.50');
  assert.is(out.find((c) => c.what === 'one at a time: p50 proxy --busy-poll 300 / HAProxy')?.ratio?.toFixed(2), '0.90');
  assert.ok(out.filter((c) => c.what.includes('busy')).every((c) => c.pass === undefined), 'information, not verdicts');
});

verdicts('a target whose rows are missing is not measured, and says why when the checkout lacks what it needs', () => {
  const out = checks([], undefined, { slowServers: 'no --concurrency' });
  const slow = out.filter((c) => c.what.startsWith('servers working one at a time'));
  assert.is(slow.length, 2);
  for (const c of slow) {
    assert.is(c.pass, undefined);
    assert.is(c.detail, 'not measured: no --concurrency');
  }
  assert.is(out.filter((c) => c.pass !== undefined).length, 0);
});

verdicts.run();

const room = suite('bench routing comparison');

room('registers only as many servers as the proxy keeps room for beside the load: 9,850 of a 20,000-file limit were more, and the proxy refused registrations and 6 of the 8 load connections (CONNECTION_LOST 192)', () => {
  for (const hard of [1024, 4096, 20_000, 65_536]) {
    const members = routingRoom(10_000, hard, 8);
    // The proxy's links leave clientRoom to clients (actors/port-limits.ts): a bench that filled the room held 8,709 of 8,714.
    const usable = fileRoom(hard) - clientRoom(fileRoom(hard));
    assert.ok(2 * members + 8 + ROUTING_SPARE <= usable, `${members} servers with ${hard} files`);
    assert.ok(2 * (members + 1) + 8 + ROUTING_SPARE > usable || members === 10_000, `${members} servers with ${hard} files: room for more`);
  }
  assert.is(routingRoom(10_000, 20_000, 8), 8_682);
  assert.is(routingRoom(100, 20_000, 8), 100, 'fewer asked for: all of them');
  assert.is(routingRoom(10_000, 64, 8), 0, 'no room: none, never a negative count');
});

room.run();

const idle = suite('bench idle soak: figures read once the fleet settled');

idle('a sample taken while the clients of the kill before still reconnected is not read; the latest one taken since they settled is', () => {
  const samples = [{ t: 1000, timers: 60 }, { t: 6000, timers: 400 }];
  // The last client back at 5800: the sample at 6000 came before the fleet settled.
  assert.is(settledSample(samples, 5800 + SETTLE_MS), undefined);
  assert.equal(settledSample([...samples, { t: 11_000, timers: 70 }], 5800 + SETTLE_MS), { t: 11_000, timers: 70 });
  assert.equal(settledSample(samples, 1000), { t: 6000, timers: 400 }, 'the latest, not the first, once settled');
  // A client not back: no settled sample at all.
  assert.is(settledSample(samples, undefined), undefined);
});

idle("a long --down no longer reads as growth: the reconnecting clients' timers are not compared", () => {
  // Per kill, the samples before it: taken while the clients of the kill before reconnected (their held requests'
  // timers), and once all were back. With a long --down, the second half's clients came back later, and the sample
  // at hand just before the kill (the old reading) caught them reconnecting.
  const kills = [
    { back: 4000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 80 }] },
    { back: 4000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 80 }] },
    { back: 4000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 80 }] },
    { back: 8000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 300 }] },
    { back: 8000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 300 }, { t: 9000, timers: 82 }] },
    { back: 8000, samples: [{ t: 2000, timers: 80 }, { t: 7000, timers: 300 }, { t: 9000, timers: 81 }] },
  ];
  const figure: Array<[string, (x: { timers: number }) => number, number]> = [['timers', (x) => x.timers, 8 + 200 / 2]];
  const atHand = kills.map((k) => k.samples.filter((s) => s.t <= 7000).at(-1)!);
  assert.ok(growth(atHand, figure)[0]!.grew, 'the sample at hand before each kill reads as growth');
  const settled = kills.flatMap((k) => {
    const s = settledSample(k.samples, k.back + SETTLE_MS);
    return s ? [s] : [];
  });
  assert.equal(settled.map((s) => s.timers), [80, 80, 80, 82, 81], 'the fourth kill has none (its clients were still reconnecting at its last sample)');
  assert.not.ok(growth(settled, figure)[0]!.grew);
});

idle.run();
