/**
 * The access log's lines and how they reach the file (issue 20, target 5).
 * Text lines are written as bytes in place: each must read exactly as the
 * same line made with JavaScript's own number and string formatting, for any
 * latency, seq, id (quoted or not, non-ASCII) and outcome. A file access log
 * holds its lines until 256 KiB wait or a second has passed; nothing is lost
 * at the end.
 */
import { readFileSync, rmSync } from 'node:fs';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { newPeer, type ProxyRequest } from '../actors/link.js';
import { Inflight } from '../actors/inflight.js';
import type { ProxyContext } from '../actors/proxy-types.js';
import { makeReply } from '../actors/routing.js';
import { LinkTraffic } from '../actors/upstream.js';
import { ManualClock } from '../transport/clock.js';
import { Destination } from '../actors/logger.js';
import { AccessLog, accessLogHold, combineObservers } from '../admin/access-log.js';
import { Connection } from '../transport/socket.js';
import { MsgType, type AckMsg, type DataMsg } from '../transport/messages.js';
import { eventually, sleep, tempDir } from './helpers.js';

const test = suite<{ dir: string }>('the access log', { dir: '' });
test.before.each((ctx) => {
  ctx.dir = tempDir('revproxy-access-');
});
test.after.each((ctx) => {
  rmSync(ctx.dir, { recursive: true, force: true });
});

/** A client as the proxy keeps it, on a socket that is never connected (the log only reads its address). */
function peer() {
  return newPeer(new Connection(new Socket()));
}

function request(client: ReturnType<typeof peer>, srcid: string, seq: number, tried?: string[], waited?: number): ProxyRequest {
  const msg = { type: MsgType.DATA, srcid, privPoliId: 'ignored', seq, payload: 'x' } as unknown as DataMsg;
  return { client, msg, arrived: 0, tried, waited };
}

/** What a line says after its time, made the plain way. */
function expected(srcid: string, addr: string, policy: string, member: string | undefined, seq: number, tries: number, latencyMs: number, outcome: string, waited = 0): string {
  const q = (v: string) => (/^[\w.:@/+-]+$/.test(v) ? v : JSON.stringify(v));
  const ms = (v: number) => Math.round(v * 1000) / 1000;
  return `client=${q(srcid)} addr=${addr} policy=${q(policy)} server=${member === undefined ? '-' : q(member)} seq=${seq} tries=${tries} latency_ms=${ms(latencyMs)} outcome=${outcome} queue_ms=${ms(waited)}`;
}

test('text lines in bytes read exactly as the same lines formatted by JavaScript', async ({ dir }) => {
  const file = join(dir, 'access.log');
  const dest = new Destination({ to: file });
  await dest.ready();
  const log = new AccessLog(dest, 'text');
  const clients = [peer(), peer()];
  const ids = ['c1', 'client with space', 'kühl-☃', '"quoted"', ''];
  const members = ['s1', 'server two', 'ünï', undefined];
  const outcomes = ['ok', 'TIMEOUT', 'NO_SERVER'] as const;
  const latencies = [0, 0.0004, 0.0005, 0.5, 1, 1.005, 2.675, 999.9995, 0.1 + 0.2, 12345678.9, 4e9 + 0.25];
  // Either side of the 32-bit arithmetic's end (2^32 - 1 us), and every length of a fraction.
  latencies.push(4294967.295, 4294967.296, 4294967.2954, 4294967.2956, 0.001, 0.01, 0.011, 0.1, 0.101, 0.11, 0.111, 9.99, 10.09, 1e21, 9007199254740.991);
  for (let i = 0; i < 3000; i++) latencies.push(Math.random() * 10 ** Math.floor(Math.random() * 8));
  const seqs = [0, 1, 9, 10, 99, 100, 1000, 4294967295, 123456789, 99999, 100000, 999999999, 1000000000, 2147483647, 2147483648, 4294967296];
  const want: string[] = [];
  for (let i = 0; i < latencies.length; i++) {
    const client = clients[i % 2]!;
    const srcid = ids[i % ids.length]!;
    const member = members[i % members.length];
    const seq = seqs[i % seqs.length]!;
    const tried = i % 7 === 0 ? ['a', 'b'] : undefined;
    const policy = i % 3 ? '111' : 'policy 2';
    const outcome = outcomes[i % outcomes.length]!;
    // Most requests never waited (no `waited`); the rest waited some part of their latency.
    const waited = i % 5 === 0 ? latencies[(i * 7) % latencies.length]! : undefined;
    const tries = (tried?.length ?? 0) + (member === undefined ? 0 : 1);
    log.answered(policy, member, outcome, latencies[i]!, request(client, srcid, seq, tried, waited), tries);
    want.push(expected(srcid, client.conn.describe(), policy, member, seq, tries, latencies[i]!, outcome, waited));
  }
  await dest.end();
  const lines = readFileSync(file, 'utf8').split('\n');
  assert.is(lines.pop(), '', 'the file ends with a newline');
  assert.is(lines.length, want.length);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    assert.match(line, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    assert.is(line.slice(25), want[i], `line ${i}`);
  }
});

test('a held log writes once its bytes wait or its time has passed, and nothing is lost at the end', async ({ dir }) => {
  const file = join(dir, 'held.log');
  const dest = new Destination({ to: file, hold: { bytes: 4096, ms: 1000 } });
  await dest.ready();
  const size = () => readFileSync(file).length;
  dest.write('one short line\n');
  await sleep(100);
  assert.is(size(), 0, 'a short line waits');
  await eventually(() => size() === 15, 3000, 'written once its time passed');
  const line = `${'x'.repeat(99)}\n`;
  for (let i = 0; i < 41; i++) dest.write(line); // 4100 bytes: past its bytes
  await eventually(() => size() === 15 + 4100, 1000, 'written once its bytes wait');
  for (let i = 0; i < 3; i++) dest.write(line);
  await dest.end();
  assert.is(size(), 15 + 4400, 'end writes what was held');
});

test('a held log fills two buffers in turn, each again once its chunk is written, and the file gets every line whole', async ({ dir }) => {
  // Each 256 KiB chunk came from a new buffer (and a second one, twice its size, that the first grew into):
  // memory outside V8's heap that counts towards its next full collection. Pipelined at ~100,000 requests/s,
  // ~40 MB/s of it: about a full collection a second, more than the lines cost to make.
  const file = join(dir, 'access.log');
  const dest = new Destination({ to: file, ...accessLogHold() });
  await dest.ready();
  const log = new AccessLog(dest, 'text');
  const handed: ArrayBufferLike[] = [];
  const sonic = dest.sonic as unknown as { write(chunk: Buffer): boolean };
  const write = sonic.write.bind(sonic);
  sonic.write = (chunk) => {
    handed.push(chunk.buffer);
    return write(chunk);
  };
  const client = peer();
  let seq = 0;
  for (let chunk = 0; chunk < 12; chunk++) {
    while (handed.length === chunk) log.answered('111', `s${seq % 4}`, 'ok', seq % 1000, request(client, 'load', seq++), 1);
    await eventually(() => dest.backlog === 0, 3000, `chunk ${chunk} written`);
  }
  await dest.end();
  const buffers = new Set(handed);
  assert.ok(buffers.size <= 3, `${handed.length} chunks came from ${buffers.size} buffers`);
  const lines = readFileSync(file, 'latin1').split('\n');
  assert.is(lines.pop(), '');
  assert.is(lines.length, seq);
  for (let i = 0; i < seq; i++) assert.is(lines[i]!.slice(25), expected('load', client.conn.describe(), '111', `s${i % 4}`, i, 1, i % 1000, 'ok'), `line ${i}`);
});

test('the parts a text log keeps (per server id, per client connection) hold their own bytes, not a slab of the shared buffer pool each', async ({ dir }) => {
  // An hour of server churn: the cached part of each new server id held an 8 KiB slab of Node's pool
  // (391 slabs, 3.2 MB, after 45 minutes; up to 8 MiB at the cache's 1,024 ids), as the heap snapshots showed.
  const dest = new Destination({ to: join(dir, 'access.log') });
  await dest.ready();
  const log = new AccessLog(dest, 'text');
  const ids = 1000;
  const clients = Array.from({ length: ids }, () => peer());
  const lines: Buffer[] = [];
  for (let i = 0; i < ids; i++) {
    log.answered('P', `server-${i}`, 'ok', 1, request(clients[i]!, `c${i}`, i), 1);
    // What a busy proxy does between two new ids: other small buffers cut from the pool, let go at once.
    lines.push(Buffer.from('x'.repeat(4000)));
    lines.length = 0;
  }
  const kept = [...(log as unknown as { servers: Map<string, Buffer> }).servers.values()];
  kept.push(...clients.map((c) => (log as unknown as { clients: WeakMap<object, { bytes: Buffer }> }).clients.get(c)!.bytes));
  const slabs = new Set(kept.map((b) => b.buffer));
  const held = [...slabs].reduce((n, ab) => n + ab.byteLength, 0);
  const parts = kept.reduce((n, b) => n + b.length, 0);
  assert.is(kept.length, 2 * ids);
  assert.ok(held <= parts, `${kept.length} kept parts of ${parts} bytes hold ${held} bytes of ${slabs.size} ArrayBuffers`);
  await dest.end();
});

test('a line says the wall clock at its answer, read again once the proxy\'s clock has moved a millisecond; the time as toISOString writes it', async ({ dir }) => {
  // Each line's time was read once per turn of the event loop: the lines of a turn that took 5 ms all said its
  // first millisecond. Within a second a text line rewrites only the milliseconds: every time must still read
  // as toISOString's, across seconds, days, years, a wall clock stepped back, and years written longer.
  const T = Date.UTC(2026, 11, 7, 23, 59, 59, 998);
  // [the answer's time on the proxy's clock (arrived + latency), the wall clock then, the time the line says]
  const steps: Array<[number, number, number]> = [
    [0, T, T],
    [0.5, T + 1, T], // the same millisecond of the proxy's clock: not read again
    [1, T + 1, T + 1], // a millisecond on: read again, within the turn
    [2, T + 2, T + 2], // a new second, minute, hour and day
    [3, T + 2, T + 2],
    [4, T + 12, T + 12],
    [5, T + 102, T + 102],
    [6, T + 1001, T + 1001],
    [7, T + 1999, T + 1999],
    [8, T - 3600_000, T - 3600_000], // the wall clock stepped back an hour
    [8.2, T + 5, T - 3600_000],
    [2, T + 7, T + 7], // the proxy's clock read back (another caller's time): read again
    [9, Date.UTC(2026, 0, 1), Date.UTC(2026, 0, 1)],
    [10, -1, -1], // 1969-12-31T23:59:59.999Z
    [11, 0, 0],
    [12, Date.UTC(10000, 0, 1, 0, 0, 0, 7), Date.UTC(10000, 0, 1, 0, 0, 0, 7)], // +010000-01-01T00:00:00.007Z
    [13, Date.UTC(10000, 0, 1, 0, 0, 0, 8), Date.UTC(10000, 0, 1, 0, 0, 0, 8)],
    [14, T + 3, T + 3],
    [15, T + 4, T + 4],
  ];
  for (let i = 0; i < 200; i++) steps.push([16 + i, T + 5 + i * 37, T + 5 + i * 37]);
  const realNow = Date.now;
  try {
    for (const format of ['text', 'json'] as const) {
      const file = join(dir, `${format}.log`);
      const dest = new Destination({ to: file });
      await dest.ready();
      const log = new AccessLog(dest, format);
      const client = peer();
      steps.forEach(([at, wall], i) => {
        Date.now = () => wall;
        const req = request(client, 'c', i);
        req.arrived = at - 0.25;
        log.answered('111', 's1', 'ok', 0.25, req, 1);
      });
      Date.now = realNow;
      await dest.end();
      const lines = readFileSync(file, 'latin1').split('\n');
      lines.pop();
      const times = lines.map((l) => (format === 'json' ? (JSON.parse(l) as { time: string }).time : l.slice(0, l.indexOf(' '))));
      assert.equal(times, steps.map(([, , says]) => new Date(says).toISOString()), format);
    }
  } finally {
    Date.now = realNow;
  }
});

test('the answers of one read share one reading of the clock, where their latency ends: the reply reads none of its own', () => {
  // Each reply read the clock again for the access log's latency (performance.now(), 50-60 ns a request), after
  // the link had read it for the same read of answers.
  class Counting extends ManualClock {
    reads = 0;
    override now(): number {
      return 1000 + ++this.reads;
    }
  }
  const clock = new Counting();
  const replied: Array<{ seq: number; at: number | undefined }> = [];
  const inflight = new Inflight<ProxyRequest>();
  const link = { inflight, kept: new Inflight<ProxyRequest>(), clock, tryTimeoutMs: 1000, timeoutMs: 3000, hedge: false, logger: { enabled: () => false }, member: 's1', policy: '111', queue: [], reply: (req: ProxyRequest, _m: unknown, _member?: string, at?: number) => replied.push({ seq: req.msg.seq, at }) };
  const traffic = new LinkTraffic(link as unknown as ConstructorParameters<typeof LinkTraffic>[0]);
  const client = peer();
  const acks: AckMsg[] = [];
  for (let seq = 1; seq <= 32; seq++) {
    const upSeq = inflight.add(request(client, 'c', seq), 5000, 500);
    acks.push({ type: MsgType.ACK, seq: upSeq, srcid: 's1', destid: 'c', payload: 'h', payloadsize: 1 });
  }
  traffic.answer(acks, 'link');
  assert.is(replied.length, 32);
  assert.is(clock.reads, 1, 'one reading of the clock for the read of 32 answers');
  assert.ok(replied.every((r) => r.at === 1001), 'each reply is given that reading');
  assert.is(traffic.answeredAt, 1001);

  // The reply gives the observer that time, less the request's arrival, and reads no clock of its own.
  const got: number[] = [];
  const context = {
    observer: { answered: (_p: string, _m: string | undefined, _o: string, latencyMs: number) => got.push(latencyMs) },
    clock,
    self: { sessionId: 'proxy' },
    budget: { release() {} },
    opts: { maxClientInflight: 1024 },
    policies: new Map(),
    inflight: { done() {} },
  } as unknown as ProxyContext;
  const reply = makeReply(context);
  const answeredClient = { ...peer(), outstanding: 2, conn: { closed: false, shedByBudget: false, send() {} } } as unknown as ProxyRequest['client'];
  const req = { ...request(answeredClient, 'c', 1), arrived: 990 };
  reply(req, acks[0]!, 's1', 1001);
  assert.equal(got, [11]);
  assert.is(clock.reads, 1, 'no reading of its own');
  reply({ ...request(answeredClient, 'c', 2), arrived: 990 }, acks[1]!, 's1');
  assert.equal(got, [11, 12], 'a reply given no time reads the clock');
});

test('observers combined: a hook one of them has is its own, bound; a hook several have calls each in turn', () => {
  const calls: string[] = [];
  class Counter {
    constructor(readonly name: string) {}
    accepted(): void {
      calls.push(`${this.name} accepted`);
    }
  }
  class Answers extends Counter {
    answered(policy: string): void {
      calls.push(`${this.name} answered ${policy}`);
    }
  }
  const one = combineObservers(new Counter('a'), undefined, new Answers('b'))!;
  assert.is(one.retried, undefined);
  one.answered!('111', undefined, 'ok', 1, request(peer(), 'c', 1), 0);
  one.accepted!(peer(), new Socket());
  assert.equal(calls, ['b answered 111', 'a accepted', 'b accepted']);
  assert.is(combineObservers(undefined, undefined), undefined);
});

test.run();
