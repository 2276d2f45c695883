/** `/metrics` on the inspector's port moves with the traffic. Issue #6. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { runClient, startProxy, startServer, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { Metrics, startInspector, type Inspector } from '../inspector/index.js';
import { addOperationsMetrics, addRegistryMetrics, DEPARTED_POLICIES_KEPT, DEPARTED_POLICY_SERIES_MS, DEPARTED_SERVER_SERIES_MS, MAX_LABEL_VALUES } from '../inspector/metrics.js';
import { MEMBER_STATES } from '../actors/proxy-types.js';
import type { PoolView } from '../inspector/views.js';
import { ManualClock } from '../transport/clock.js';
import { Readiness, startAdmin } from '../admin/server.js';
import { eventually, LOCAL } from './helpers.js';
import { ROOT } from './procs.js';
import { TLS_FAILURES, type TlsFailure } from '../transport/foreign.js';

/** `name{labels} value` lines of a Prometheus text body, summed per name and label subset. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

interface Ctx {
  insp: Inspector;
  proxy: ProxyHandle;
  servers: ServerHandle[];
}
const ctx = {} as Ctx;
const metrics = suite<Ctx>('metrics endpoint', ctx);

metrics.before(async () => {
  ctx.insp = await startInspector({ port: 0, flushMs: 50 });
  ctx.proxy = await startProxy({ port: 0, inspect: ctx.insp.inspect, observer: ctx.insp.observer });
  ctx.servers = [];
  for (const id of ['1', '2']) ctx.servers.push(await startServer({ id, policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port } }));
  await eventually(() => ctx.proxy.pools().P?.members.length === 2, 3000, 'both servers in pool P');
});

metrics.after(async () => {
  for (const s of ctx.servers) s.kill();
  await ctx.proxy.stop();
  await ctx.insp.close();
});

const scrape = async (): Promise<string> => {
  const res = await fetch(`${ctx.insp.url}metrics`);
  assert.is(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
  return res.text();
};

metrics('requests by policy, server and outcome, the latency histogram, pool sizes and in-flight move with traffic', async () => {
  const before = await scrape();
  assert.is(sample(before, 'revproxy_requests_total'), 0);
  assert.is(sample(before, 'revproxy_pool_members', { policy: 'P', state: 'serving' }), 2);
  const packets = Array.from({ length: 6 }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `m${i}` }));
  const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets });
  assert.ok(results.every((r) => r.correct));
  await runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy.port }, packets: [{ srcid: 'c', privPoliId: 'nobody', payload: 'x' }] });
  const after = await scrape();
  assert.is(sample(after, 'revproxy_requests_total', { policy: 'P', server: '1', outcome: 'ok' }), 3);
  assert.is(sample(after, 'revproxy_requests_total', { policy: 'P', server: '2', outcome: 'ok' }), 3);
  // A policy no server serves gets no label of its own (made-up names must not use up the labels): it counts as _other.
  assert.is(sample(after, 'revproxy_requests_total', { policy: '_other', outcome: 'NO_SERVER' }), 1);
  assert.not.match(after, /policy="nobody"/);
  assert.is(sample(after, 'revproxy_request_duration_seconds_count', { policy: 'P' }), 6);
  assert.is(sample(after, 'revproxy_request_duration_seconds_bucket', { policy: 'P', le: '+Inf' }), 6);
  assert.ok(sample(after, 'revproxy_request_duration_seconds_sum', { policy: 'P' }) > 0);
  assert.is(sample(after, 'revproxy_inflight_requests'), 0);
  assert.match(after, /# TYPE revproxy_request_duration_seconds histogram/);
});

metrics('a member that leaves is no longer counted in its pool', async () => {
  ctx.servers[1]!.kill();
  await eventually(() => ctx.proxy.pools().P?.members.length === 1, 3000, 'server 2 out of pool P');
  await new Promise((r) => setTimeout(r, 120));
  assert.is(sample(await scrape(), 'revproxy_pool_members', { policy: 'P', state: 'serving' }), 1);
});

metrics('every member state of a held policy reads, 0 when no member is in it, and still 0 once its last member left', async () => {
  // Only serving read 0: with no member ejected, revproxy_pool_members{state="ejected"} had no series
  // at all, so a ratio or an absent-or-zero alert on any other state had nothing to read.
  const server = await startServer({ id: 'q1', policy: 'Q', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port } });
  await eventually(() => ctx.proxy.pools().Q?.serving.length === 1, 3000, 'server q1 serving Q');
  const held = await scrape();
  assert.equal(MEMBER_STATES.map((state) => [state, new RegExp(`^revproxy_pool_members\\{policy="Q",state="${state}",source="direct"\\} (\\d+)$`, 'm').exec(held)?.[1]]),
    [['connecting', '0'], ['serving', '1'], ['down', '0'], ['refused', '0'], ['ejected', '0'], ['drained', '0']]);
  server.kill();
  await eventually(() => ctx.proxy.pools().Q === undefined, 3000, 'pool Q gone');
  // Its series went with it: "no data", which an alert on `{state="serving"} == 0` does not see, so
  // only the error ratio told of a policy whose every server left (unless --ready-policies listed it).
  const left = await scrape();
  assert.equal(MEMBER_STATES.map((state) => [state, new RegExp(`^revproxy_pool_members\\{policy="Q",state="${state}",source="direct"\\} (\\d+)$`, 'm').exec(left)?.[1]]),
    MEMBER_STATES.map((state) => [state, '0']));
  const back = await startServer({ id: 'q2', policy: 'Q', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port } });
  await eventually(() => ctx.proxy.pools().Q?.serving.length === 1, 3000, 'server q2 serving Q');
  assert.is(sample(await scrape(), 'revproxy_pool_members', { policy: 'Q', state: 'serving' }), 1, 'a member back counts again');
  back.kill();
});

metrics('retries count the requests sent again to another member, not the failures that had no member left to go to', async () => {
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  const failing = async (id: string) => {
    ctx.servers.push(await startServer({ id, policy: 'F', listenPort: 0, proxy, behaviour: 'fail' }));
    await eventually(() => ctx.proxy.pools().F?.serving.includes(id) ?? false, 3000, `server ${id} in pool F`);
  };
  const send = async (n: number) => {
    const results = await runClient({ id: 'c', proxy, packets: Array.from({ length: n }, (_, i) => ({ srcid: 'c', privPoliId: 'F', payload: `f${i}` })), window: 1 });
    assert.ok(results.every((r) => r.error === 'UPSTREAM_FAILED'), JSON.stringify(results));
  };
  // One member: its failure has nowhere else to go, so nothing is sent again.
  await failing('f1');
  await send(1);
  assert.is(sample(await scrape(), 'revproxy_retries_total', { policy: 'F' }), 0, 'a lone member that fails: no retry');
  // Two members (--retries 2): each request fails on one, is sent once to the other, fails there, and is answered.
  await failing('f2');
  await send(2);
  const text = await scrape();
  assert.is(sample(text, 'revproxy_retries_total', { policy: 'F' }), 2, 'one retry per request');
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'F', outcome: 'UPSTREAM_FAILED' }), 3);
  // Each counted against the server that failed it last, not against none.
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'F', server: '' }), 0);
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'F', server: 'f1' }) + sample(text, 'revproxy_requests_total', { policy: 'F', server: 'f2' }), 3);
});

metrics("a request the proxy answers TIMEOUT for a server that never answered is counted against that server: in /metrics and on its card", async () => {
  // It was counted under server="" and the card read "0 answered · 0 errors": an alert on a server's errors never
  // fired for a server that timed out every request (HAProxy logs the server a request timed out on).
  const p = await startProxy({ port: 0, timeoutMs: 300, inspect: ctx.insp.inspect, observer: ctx.insp.observer });
  try {
    ctx.servers.push(await startServer({ id: 't1', policy: 'T', listenPort: 0, proxy: { host: LOCAL, port: p.port }, behaviour: 'silent' }));
    await eventually(() => p.pools().T?.serving.includes('t1') ?? false, 3000, 'server t1 in pool T');
    const results = await runClient({ id: 'c', proxy: { host: LOCAL, port: p.port }, packets: [{ srcid: 'c', privPoliId: 'T', payload: 'a' }, { srcid: 'c', privPoliId: 'T', payload: 'b' }] });
    assert.ok(results.every((r) => r.error === 'TIMEOUT'), JSON.stringify(results));
    const text = await scrape();
    assert.is(sample(text, 'revproxy_requests_total', { policy: 'T', server: 't1', outcome: 'TIMEOUT' }), 2);
    assert.is(sample(text, 'revproxy_requests_total', { policy: 'T', server: '' }), 0);
    // The page's state is pushed every flushMs: read until it has the answers.
    const card = async () => {
      const state = await (await fetch(`${ctx.insp.url}api/state`)).json() as { pools: Array<{ policy: string; members: Array<{ id: string; answered: number; errors: number; inflight: number }> }> };
      return state.pools.find((x) => x.policy === 'T')?.members.find((m) => m.id === 't1');
    };
    await eventually(async () => (await card())?.inflight === 0, 3000, "t1's card to show nothing in flight");
    const t1 = await card();
    assert.equal(t1 && { answered: t1.answered, errors: t1.errors }, { answered: 0, errors: 2 });
  } finally {
    p.kill();
  }
});

metrics("a server's answers are counted by what they were: ok or the error code it answered", async () => {
  const proxy = { host: LOCAL, port: ctx.proxy.port };
  const server = await startServer({ id: 'g1', policy: 'G', listenPort: 0, proxy, behaviour: 'fail', inspect: ctx.insp.inspect });
  ctx.servers.push(server);
  await eventually(() => ctx.proxy.pools().G?.serving.includes('g1') ?? false, 3000, 'server g1 in pool G');
  const results = await runClient({ id: 'c', proxy, packets: [{ srcid: 'c', privPoliId: 'G', payload: 'a' }, { srcid: 'c', privPoliId: 'G', payload: 'b' }] });
  assert.ok(results.every((r) => r.error === 'UPSTREAM_FAILED'), JSON.stringify(results));
  const text = await scrape();
  const answers = [...text.matchAll(/^revproxy_actor_answers_total\{([^}]*kind="server"[^}]*)\} (\d+)$/gm)].map((m) => `${m[1]} ${m[2]}`);
  assert.equal(answers, ['actor="server g1",kind="server",outcome="ok" 0', 'actor="server g1",kind="server",outcome="UPSTREAM_FAILED" 2'], 'two failures, no ok');
});

const scrapes = suite('metrics scraped by a crowd');

scrapes('a crowd scraping /metrics again and again shares renders (each about a tenth of the loop); a scrape still reads what happened before it', async () => {
  // Each render of a 900-policy fleet's text took about 95 ms of the event loop, and 64 connections
  // asking for it again and again left the proxy's clients 8 answers in 8 s (p50 12 s).
  let renders = 0;
  let inflight = 0;
  const busy = (ms: number): void => {
    const end = performance.now() + ms;
    while (performance.now() < end);
  };
  const m = new Metrics({ pools: () => (renders++, busy(20), []), inflight: () => inflight, actorCounts: () => [] });
  const admin = await startAdmin({ host: LOCAL, port: 0, metrics: m, readiness: new Readiness() });
  try {
    const url = `${admin.url}metrics`;
    // Fresh, not cached: a scrape asked for after a change reads it.
    assert.is(sample(await (await fetch(url)).text(), 'revproxy_inflight_requests'), 0);
    inflight = 7;
    assert.is(sample(await (await fetch(url)).text(), 'revproxy_inflight_requests'), 7);
    renders = 0;
    const end = Date.now() + 1500;
    let answered = 0;
    const agent = (): Promise<void> => fetch(url).then(async (r) => {
      assert.is(r.status, 200);
      await r.text();
      answered++;
      if (Date.now() < end) return agent();
    });
    await Promise.all(Array.from({ length: 32 }, agent)); // within the port's 64 connections
    // A render and nine times its time free: about 8 renders in 1.5 s, where each scrape had its own (about 75).
    assert.ok(renders <= 15, `${renders} renders for ${answered} scrapes`);
    assert.ok(answered >= 32, `${answered} scrapes answered`);
  } finally {
    await admin.close();
  }
});

const rebinding = suite('metrics on loopback, asked under another name');

rebinding("the admin endpoint on loopback without a token refuses /metrics to a request naming another host (a page whose DNS name was rebound to 127.0.0.1); the health checks stay open, and a token lets any name in", async () => {
  // Any web page could read the fleet's policies, server ids and counts this way: its scripts may GET
  // http://evil.example:PORT/metrics once evil.example resolves to 127.0.0.1, and read the answer as same-origin.
  const { request } = await import('node:http');
  const get = (port: number, path: string, host?: string, auth?: string): Promise<{ status: number; body: string }> =>
    new Promise((resolve, reject) => {
      const req = request({ host: LOCAL, port, path, setHost: host === undefined, headers: { ...(host ? { host } : {}), ...(auth ? { authorization: auth } : {}) } }, (res) => {
        let body = '';
        res.setEncoding('utf8').on('data', (c: string) => (body += c)).on('end', () => resolve({ status: res.statusCode!, body }));
      });
      req.on('error', reject).end();
    });
  const m = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
  const admin = await startAdmin({ host: LOCAL, port: 0, metrics: m, readiness: new Readiness() });
  try {
    const p = admin.port;
    for (const host of [`127.0.0.1:${p}`, `localhost:${p}`, 'localhost', `127.0.0.1:8080`]) assert.is((await get(p, '/metrics', host)).status, 200, host);
    for (const host of [`evil.example:${p}`, `127.evil.example:${p}`, `10.0.0.1:${p}`]) {
      const r = await get(p, '/metrics', host);
      assert.is(r.status, 403, host);
      assert.match(r.body, `not this machine: scrape http://127.0.0.1:${p}/metrics`);
    }
    assert.is((await get(p, '/healthz', `evil.example:${p}`)).status, 200, 'liveness tells nothing');
    admin.setToken('s3cret-token');
    assert.is((await get(p, '/metrics', `proxy.internal:${p}`, 'Bearer s3cret-token')).status, 200, 'with the token, any name');
  } finally {
    await admin.close();
  }
});

const hooks = suite('metrics hooks');

hooks('retries and ejections count through the proxy observer hooks', async () => {
  const m = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
  m.retried('P', '1', 'UPSTREAM_FAILED');
  m.retried('P', '1', 'UPSTREAM_FAILED');
  m.ejected('P', '1', 'consecutive_failures', false);
  m.ejected('P', '1', 'probe_succeeded', true);
  const text = await m.text();
  assert.is(sample(text, 'revproxy_retries_total', { policy: 'P', server: '1', code: 'UPSTREAM_FAILED' }), 2);
  assert.is(sample(text, 'revproxy_ejections_total', { policy: 'P', server: '1', direction: 'out' }), 1);
  assert.is(sample(text, 'revproxy_ejections_total', { policy: 'P', server: '1', direction: 'back' }), 1);
});

hooks('ids holding a NUL keep their own series: a server registered as "s\\0TIMEOUT" counted its answers as server s timing out', async () => {
  const insp = await startInspector({ port: 0, flushMs: 50 });
  const proxy = await startProxy({ port: 0, inspect: insp.inspect, observer: insp.observer });
  const forger = await startServer({ id: 's\0TIMEOUT', policy: 'N', listenPort: 0, proxy: { host: LOCAL, port: proxy.port } });
  try {
    await eventually(() => proxy.pools().N?.members.length === 1, 3000, 'the server in pool N');
    const rs = await runClient({ id: 'c', proxy: { host: LOCAL, port: proxy.port }, packets: Array.from({ length: 3 }, (_, i) => ({ srcid: 'c', privPoliId: 'N', payload: `n${i}` })) });
    assert.ok(rs.every((r) => r.error === undefined), JSON.stringify(rs));
    const m = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
    m.retried('N\0x', 's\0y', 'UPSTREAM_FAILED');
    m.ejected('N', 's\0consecutive_failures', 'unreachable', false);
    const text = (await (await fetch(`${insp.url}metrics`)).text()) + (await m.text());
    assert.is(sample(text, 'revproxy_requests_total', { policy: 'N', server: 's' }), 0, 'nothing counted for a server s');
    assert.is(sample(text, 'revproxy_requests_total', { policy: 'N', server: 's\0TIMEOUT', outcome: 'ok' }), 3);
    assert.is(sample(text, 'revproxy_retries_total', { policy: 'N\0x', server: 's\0y', code: 'UPSTREAM_FAILED' }), 1);
    assert.is(sample(text, 'revproxy_ejections_total', { policy: 'N', server: 's' }), 0);
    assert.is(sample(text, 'revproxy_ejections_total', { policy: 'N', server: 's\0consecutive_failures', reason: 'unreachable' }), 1);
  } finally {
    forger.kill();
    await proxy.stop();
    await insp.close();
  }
});

hooks('live figures: requests per second over the last second, p50 and p99', () => {
  const m = new Metrics({ pools: () => [], inflight: () => 3, actorCounts: () => [] }, 100);
  for (let i = 1; i <= 100; i++) m.answered('P', '1', 'ok', i);
  m.tick();
  const f = m.figures();
  assert.is(f.rps, 100);
  assert.is(f.p50, 51);
  assert.is(f.p99, 100);
  assert.is(f.inflight, 3);
  for (let k = 0; k < 11; k++) m.tick();
  assert.is(m.figures().rps, 0, 'a quiet second later the rate is back to zero');
  assert.is(m.figures().p50, undefined);
});

hooks('after more servers and policies came and went than are counted one by one, a new one is counted under its own name, not _other', async () => {
  const clock = new ManualClock();
  let pools: PoolView[] = [];
  const pool = (policy: string, id: string): PoolView => ({ policy, state: 'serving', members: [{ id, state: 'serving', answered: 0, errors: 0 }], cursor: 0, routed: 0, gone: [] });
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { clock });
  // A long-lived proxy: servers of policy P restart under new ids (as pods do), and policies come and go,
  // each answered and retried while it served, then gone.
  for (let i = 0; i < MAX_LABEL_VALUES + 5; i++) {
    pools = [pool('P', `old-${i}`), pool(`gone-${i}`, 's')];
    m.answered('P', `old-${i}`, 'ok', 1);
    m.answered(`gone-${i}`, 's', 'ok', 1);
    m.retried('P', `old-${i}`, 'UPSTREAM_FAILED');
    m.ejected('P', `old-${i}`, 'consecutive_failures', false);
  }
  clock.advance(1000);
  pools = [pool('P', 'fresh'), pool('NEW', 'n')];
  m.answered('P', 'fresh', 'ok', 1);
  m.answered('NEW', 'n', 'ok', 1);
  m.retried('P', 'fresh', 'UPSTREAM_FAILED');
  m.ejected('P', 'fresh', 'consecutive_failures', false);
  const text = await m.text();
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'P', server: 'fresh', outcome: 'ok' }), 1);
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'NEW', server: 'n', outcome: 'ok' }), 1);
  assert.is(sample(text, 'revproxy_retries_total', { policy: 'P', server: 'fresh' }), 1, 'the live server\'s retries are counted');
  assert.is(sample(text, 'revproxy_ejections_total', { policy: 'P', server: 'fresh' }), 1, 'the live server\'s ejections are counted');
  // What left was forgotten to make the room: the table stays bounded.
  assert.not.match(text, /server="old-1"/);
  assert.not.match(text, /policy="gone-1"/);
  const lines = text.split('\n').filter((l) => l.startsWith('revproxy_requests_total{')).length;
  assert.ok(lines <= 2 * MAX_LABEL_VALUES, `${lines} requests_total series`);
});

hooks('servers that restart under new ids leave their series for DEPARTED_SERVER_SERIES_MS, then they end: the series follow the fleet, not its history', async () => {
  // The soak (a fleet of six, a server restarted each minute, every other one under a new id): each
  // new id left a requests_total series for ever (until 1000 a policy), and Prometheus kept them all.
  const clock = new ManualClock();
  const pool = (ids: string[]): PoolView => ({ policy: 'P', state: 'serving', members: ids.map((id) => ({ id, state: 'serving', answered: 0, errors: 0 })), cursor: 0, routed: 0, gone: [] });
  let pools = [pool(['a', 'b', 'c'])];
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { clock });
  const servers = (t: string): Set<string> => new Set([...t.matchAll(/^revproxy_(?:requests|retries|ejections)_total\{policy="P",server="([^"]*)"/gm)].map((x) => x[1]!));
  const counts: number[] = [];
  for (let i = 0; i < 60; i++) {
    // A minute: 'c' restarts under a new id; 'a' and 'b' stay.
    const c = `c${i}`;
    pools = [pool(['a', 'b', c])];
    for (const id of ['a', 'b', c]) m.answered('P', id, 'ok', 1);
    m.retried('P', c, 'UPSTREAM_FAILED');
    m.ejected('P', c, 'unreachable', false);
    for (let s = 0; s < 4; s++) {
      counts.push(servers(await m.text()).size);
      clock.advance(15_000);
    }
  }
  const text = await m.text();
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'P', server: 'a', outcome: 'ok' }), 60, 'a live server keeps its counts');
  const kept = Math.ceil(DEPARTED_SERVER_SERIES_MS / 60_000) + 2;
  assert.ok(servers(text).size <= 2 + kept, `${servers(text).size} servers have series after 60 restarts under new ids (at most ${2 + kept})`);
  const late = counts.slice(-40);
  assert.ok(Math.max(...late) - Math.min(...late) <= 1, `the count is flat once DEPARTED_SERVER_SERIES_MS has passed: ${late.join(' ')}`);
  // One that left is still read for a while: scrapes see its last counts.
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'P', server: 'c58', outcome: 'ok' }), 1);
  assert.is(sample(text, 'revproxy_retries_total', { policy: 'P', server: 'c58' }), 1);
  assert.not.match(text, /server="c0"/, 'the first to leave is forgotten, from every table');
  // A server back under its id before its series ended keeps its counts.
  pools = [pool(['a', 'b', 'c58'])];
  m.answered('P', 'c58', 'ok', 1);
  clock.advance(DEPARTED_SERVER_SERIES_MS);
  assert.is(sample(await m.text(), 'revproxy_requests_total', { policy: 'P', server: 'c58', outcome: 'ok' }), 2);
});

/** The policies a body shows `revproxy_pool_members` for. */
const membersOf = (t: string): Set<string> => new Set([...t.matchAll(/^revproxy_pool_members\{policy="([^"]+)"/gm)].map((x) => x[1]!));
/** The policies a body has any series of (requests, latencies, pool members, retries...). */
const policiesOf = (t: string): Set<string> => new Set([...t.matchAll(/^revproxy_\w+\{policy="([^"]+)"/gm)].map((x) => x[1]!));
const onePool = (policy: string, id = 's', source: 'direct' | 'registry' = 'registry'): PoolView => ({ policy, state: 'serving', members: [{ id, state: 'serving', answered: 0, errors: 0, source }], cursor: 0, routed: 0, gone: [] });

hooks('policies whose last member left read 0 until a member comes back; past the bound (departedPolicies) the least recent go, once a scrape showed them gone, counted and said once', async () => {
  const warns: Array<{ event: string; msg: string }> = [];
  const kept = 10;
  let pools: PoolView[] = Array.from({ length: kept + 5 }, (_, i) => onePool(`p${i}`));
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { departedPolicies: kept, logger: { warn: (event, msg) => warns.push({ event, msg }) } });
  for (const p of pools) m.answered(p.policy, 's', 'ok', 1);
  assert.is(sample(await m.text(), 'revproxy_pool_members', { policy: 'p0', state: 'serving', source: 'registry' }), 1);
  pools = [];
  let text = await m.text();
  // The scrape that first finds them gone shows every one: its final counts and its zeros.
  assert.is(membersOf(text).size, kept + 5, 'each shown gone once, however many left');
  assert.match(text, /^revproxy_pool_members\{policy="p0",state="serving",source="registry"\} 0$/m);
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'p0', outcome: 'ok' }), 1);
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 0);
  assert.is(warns.length, 0);
  text = await m.text();
  assert.is(policiesOf(text).size, kept, 'as many as are kept, in every series');
  assert.not.ok(policiesOf(text).has('p4'), 'the first to leave go first');
  assert.ok(policiesOf(text).has('p5'));
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 5);
  assert.equal(warns.map((w) => w.event), ['metrics_departed_bound']);
  assert.match(warns[0]!.msg, /at most 10 privacy policies that have left .*admin\.metrics_departed_policies.*policy p0 /);
  // One comes back and leaves again: it is now the latest to leave, and a new departure pushes out the oldest.
  pools = [onePool('p5'), onePool('new')];
  assert.is(sample(await m.text(), 'revproxy_pool_members', { policy: 'p5', state: 'serving' }), 1);
  pools = [];
  await m.text();
  text = await m.text();
  assert.ok(policiesOf(text).has('p5') && policiesOf(text).has('new'));
  assert.not.ok(policiesOf(text).has('p6'), 'the oldest made room');
  assert.is(policiesOf(text).size, kept);
  // A request for one (refused NO_SERVER) makes it the most recent: the one left longest with none goes instead.
  m.answered('p7', undefined, 'NO_SERVER', 0);
  pools = [onePool('other')];
  await m.text();
  pools = [];
  await m.text();
  text = await m.text();
  assert.ok(policiesOf(text).has('p7'), 'a policy clients still ask for stays');
  assert.not.ok(policiesOf(text).has('p8'), 'the least recent went');
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'p7', outcome: 'NO_SERVER' }), 1);
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 7);
  assert.is(warns.length, 1, 'said once');
  // A lower bound applies at the next scrape, and is said again when reached.
  m.setDepartedPolicies(2);
  text = await m.text();
  assert.is(policiesOf(text).size, 2);
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 15);
  assert.is(warns.length, 2);
});

hooks('a policy that left between two scrapes is scraped with its final counts and zeros, even when no departed policy is kept; its series end at the scrape after', async () => {
  const clock = new ManualClock();
  let pools: PoolView[] = [onePool('stays'), onePool('goes', 'g', 'direct')];
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { clock, departedPolicies: 0 });
  m.answered('goes', 'g', 'ok', 1);
  await m.text();
  // Its last answers come after the last scrape that saw it held.
  m.answered('goes', 'g', 'ok', 1);
  m.answered('goes', 'g', 'SERVER_ERROR' as never, 1);
  m.retried('goes', 'g', 'UPSTREAM_FAILED' as never);
  pools = [onePool('stays')];
  clock.advance(15_000);
  let text = await m.text();
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'goes', server: 'g', outcome: 'ok' }), 2, 'its final count');
  assert.is(sample(text, 'revproxy_request_duration_seconds_count', { policy: 'goes' }), 3);
  assert.is(sample(text, 'revproxy_retries_total', { policy: 'goes' }), 1);
  assert.match(text, /^revproxy_pool_members\{policy="goes",state="serving",source="direct"\} 0$/m, 'its zeros');
  clock.advance(15_000);
  text = await m.text();
  assert.not.ok(policiesOf(text).has('goes'), 'gone at the next scrape, from every series');
  assert.ok(policiesOf(text).has('stays'));
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 1);
});

hooks('a peer registering under a new policy at each scrape, with a request each, for an hour: the series stay flat at the bound, not at 1000 policies', async () => {
  // As a server with a valid token (or none configured) can: each policy held at one scrape (15 s apart), gone at the next.
  const clock = new ManualClock();
  let pools: PoolView[] = [onePool('live', 'a', 'direct')];
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { clock });
  const counts: number[] = [];
  const kinds: number[] = [];
  for (let i = 0; i < 240; i++) {
    const policy = `x${i}-${(i * 7919).toString(36)}`;
    pools = [onePool('live', 'a', 'direct'), onePool(policy, `s${i}`, i % 2 ? 'direct' : 'registry')];
    m.answered(policy, `s${i}`, 'ok', 1);
    m.answered('live', 'a', 'ok', 1);
    clock.advance(15_000);
    const text = await m.text();
    counts.push(text.split('\n').filter((l) => l.startsWith('revproxy_')).length);
    kinds.push(policiesOf(text).size);
  }
  const late = counts.slice(-100);
  assert.ok(Math.max(...late) - Math.min(...late) <= 2, `the series are flat once the bound is reached: ${late.join(' ')}`);
  assert.ok(Math.max(...kinds) <= DEPARTED_POLICIES_KEPT + 3, `policies with series: at most the bound, the one held, the one found gone and the live one (${Math.max(...kinds)})`);
  assert.ok(kinds.at(-1)! > DEPARTED_POLICIES_KEPT, 'the bound is kept to, not undershot');
  const text = await m.text();
  assert.is(sample(text, 'revproxy_departed_policies_dropped_total'), 240 - DEPARTED_POLICIES_KEPT - 1);
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'live', outcome: 'ok' }), 240);
});

hooks('a policy no pool holds and no request names for DEPARTED_POLICY_SERIES_MS loses its series; one clients still ask for keeps them', async () => {
  // The soak's churn retires a policy every 20 s: each kept its request, latency and pool-member
  // series (and 10-13 KB of the heap) until 1000 had left, some five and a half hours.
  const clock = new ManualClock();
  const pool = (policy: string): PoolView => ({ policy, state: 'serving', members: [{ id: 's', state: 'serving', answered: 0, errors: 0 }], cursor: 0, routed: 0, gone: [] });
  let pools: PoolView[] = ['retired', 'asked', 'silent', 'stays'].map(pool);
  const m = new Metrics({ pools: () => pools, inflight: () => 0, actorCounts: () => [] }, 200, { clock });
  for (const p of ['retired', 'asked', 'stays']) m.answered(p, 's', 'ok', 1);
  await m.text();
  pools = [pool('stays')];
  const series = (t: string, policy: string): number => t.split('\n').filter((l) => l.includes(`{policy="${policy}"`)).length;
  let text = await m.text();
  for (const p of ['retired', 'asked', 'silent']) assert.is(sample(text, 'revproxy_pool_members', { policy: p, state: 'serving' }), 0, `${p}: its zeros read once it left`);
  // An hour and more with scrapes each minute: clients keep asking for 'asked' (refused NO_SERVER).
  for (let i = 0; i < 70; i++) {
    clock.advance(60_000);
    m.answered('asked', undefined, 'NO_SERVER', 0);
    m.answered('stays', 's', 'ok', 1);
    text = await m.text();
    if (i === 50) assert.ok(series(text, 'retired') > 0, 'fifty minutes on, the retired policy is still read');
  }
  for (const p of ['retired', 'silent']) assert.is(series(text, p), 0, `${p}: no series ${DEPARTED_POLICY_SERIES_MS / 60_000} minutes after it left with no request for it`);
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'asked', outcome: 'NO_SERVER' }), 70, 'the refusals count under the policy, not _other');
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'asked', server: 's', outcome: 'ok' }), 0, 'its server\'s series ended after DEPARTED_SERVER_SERIES_MS');
  assert.is(sample(text, 'revproxy_pool_members', { policy: 'asked', state: 'serving' }), 0);
  assert.ok(series(text, 'asked') > 0, 'a policy clients still ask for keeps its zeros: an alert on it still fires');
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'stays', outcome: 'ok' }), 71, 'a held policy keeps its counts');
  // Clients stop asking: an hour later it ends too; a policy that comes back starts afresh.
  for (let i = 0; i < 61; i++) {
    clock.advance(60_000);
    text = await m.text();
  }
  assert.is(series(text, 'asked'), 0);
  pools = [pool('stays'), pool('retired')];
  m.answered('retired', 's', 'ok', 1);
  text = await m.text();
  assert.is(sample(text, 'revproxy_requests_total', { policy: 'retired', outcome: 'ok' }), 1, 'back, counted from 0');
  assert.is(sample(text, 'revproxy_pool_members', { policy: 'retired', state: 'serving' }), 1);
});

hooks('a scrape reads the open connections once, for the four metrics made of them (by role open, received, sent; refused), and the next scrape reads them anew', async () => {
  // Each read every open socket: 6,000 of a proxy of 3,000 servers, four times a scrape, about 15 ms of it.
  const m = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
  let reads = 0;
  let open = 1;
  const roles = (n: number) => ({ client: n, registration: 0, unknown: 0, upstream: 0 });
  const conns = () => {
    reads++;
    return { open: roles(open), received: roles(10), sent: roles(20), refused: { max_connections: 0, per_peer: 0, conn_rate: 0, tls_handshakes: 0 }, tlsFailures: Object.fromEntries(TLS_FAILURES.map((r) => [r, 0])) as Record<TlsFailure, number> };
  };
  addOperationsMetrics(m.registry, { conns, maxConnections: () => undefined, dropped: () => ({ main: 0, access: 0 }), reloads: () => ({ applied: 0, refused: 0 }), certs: () => [] });
  let text = await m.text();
  assert.is(reads, 1, 'one read for the scrape');
  assert.is(sample(text, 'revproxy_connections', { role: 'client' }), 1);
  assert.is(sample(text, 'revproxy_sent_bytes_total', { role: 'client' }), 20);
  open = 2;
  await new Promise((r) => setImmediate(r));
  text = await m.text();
  assert.is(reads, 2, 'the next scrape reads them again');
  assert.is(sample(text, 'revproxy_connections', { role: 'client' }), 2);
});

const docs = suite('the metrics README.md and docs/ name');

docs('every revproxy_ metric the docs name is one the proxy registers, with the labels they give it, and every one it registers is named', () => {
  // Every metric a proxy may serve: the request metrics, the admin endpoint's, and the registry's (with --registry).
  const m = new Metrics({ pools: () => [], inflight: () => 0, actorCounts: () => [] });
  addOperationsMetrics(m.registry, { conns: () => ({}) as never, maxConnections: () => undefined, dropped: () => ({ main: 0, access: 0 }), reloads: () => ({ applied: 0, refused: 0 }), certs: () => [], version: '0.0.0' });
  addRegistryMetrics(m.registry, () => undefined);
  const registered = new Map(m.registry.getMetricsAsArray().filter((x) => x.name.startsWith('revproxy_')).map((x) => [x.name, [...((x as unknown as { labelNames?: string[] }).labelNames ?? [])].sort()]));
  const text = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)].map((f) => readFileSync(join(ROOT, f), 'utf8')).join('\n');
  const base = (name: string): string => (registered.has(name) ? name : name.replace(/_(bucket|sum|count)$/, ''));
  const named = new Set([...text.matchAll(/\brevproxy_[a-z_]*[a-z]/g)].map((x) => base(x[0])));
  assert.equal([...named].filter((n) => !registered.has(n)), [], 'metrics the docs name that no proxy serves');
  assert.equal([...registered.keys()].filter((n) => !named.has(n)), [], 'metrics a proxy serves that the docs never name in full (an operator greps for it)');
  // Labels, where the docs give them: `name{a,b}` or `name{a="x"}`, and the rows of README's table (| `name` | a, b |).
  const wrong: string[] = [];
  const check = (name: string, labels: string[], where: string) => {
    const want = registered.get(base(name));
    if (want && labels.some((l) => l !== 'le' && !want.includes(l))) wrong.push(`${where}: ${name} {${labels.join(',')}}, served with {${want.join(',')}}`);
  };
  for (const x of text.matchAll(/\b(revproxy_[a-z_]*[a-z])\{([^}]*)\}/g)) check(x[1]!, x[2]!.split(',').map((l) => l.split('=')[0]!.trim()), x[0]);
  for (const x of text.matchAll(/^\| `(revproxy_[a-z_]+)` \| ([a-z, ]*) \|/gm)) {
    const labels = x[2]!.split(',').map((l) => l.trim()).filter(Boolean).sort();
    check(x[1]!, labels, 'table row');
    if (labels.join(',') !== registered.get(x[1]!)?.join(',')) wrong.push(`table row: ${x[1]} | ${labels.join(', ')} |, served with {${registered.get(x[1]!)?.join(',')}}`);
  }
  assert.equal(wrong, [], 'labels the docs give that the metric does not have');
});

metrics.run();
scrapes.run();
rebinding.run();
hooks.run();
docs.run();
