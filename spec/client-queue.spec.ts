/**
 * The library client's queue of requests waiting for room in their policy's window
 * (actors/client-queue.ts, `RequestBook` in actors/client.ts): what many requests given up on
 * together cost, counted in looks at them (never in time), and the orders it keeps.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { connect, ManualClock, silentLogger, startProxy, startServer, type Client, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { RequestBook, RequestError, type ClientRequest, type Outcome } from '../actors/client.js';
import type { PolicyQueue, Queued } from '../actors/client-queue.js';
import { MsgType, type DataMsg, type Message } from '../transport/messages.js';
import type { Connection } from '../transport/socket.js';
import { eventually } from './helpers.js';

interface Ctx {
  proxy?: ProxyHandle;
  server?: ServerHandle;
  clients: Client[];
}
const ctx: Ctx = { clients: [] };
const expiry = suite<Ctx>('many requests given up on together', ctx);

expiry.before(async () => {
  ctx.proxy = await startProxy({ port: 0 });
  ctx.server = await startServer({ id: 'quiet', policy: 'P', revproc: [ctx.proxy.port], behaviour: 'silent' });
  await eventually(() => ctx.proxy!.pools().P?.serving.includes('quiet') ?? false, 3000, 'quiet serving');
});
expiry.after.each(() => {
  for (const c of ctx.clients.splice(0)) c.destroy();
});
expiry.after(async () => {
  ctx.server?.kill();
  await ctx.proxy?.stop();
});

/**
 * An AbortSignal of the caller's (any object shaped as one is taken: a polyfill's, another realm's) that is
 * never aborted and counts how often the client asks whether it is: twice as a request is made (is it a signal,
 * is it aborted), and once each time the client looks at a request waiting for room to see whether it may still
 * be sent.
 */
function countingSignal(): { signal: AbortSignal; looks: () => number } {
  let looks = 0;
  const signal = {
    get aborted() {
      looks++;
      return false;
    },
    reason: undefined,
    addEventListener() {},
    removeEventListener() {},
  };
  return { signal: signal as unknown as AbortSignal, looks: () => looks };
}

/**
 * `n` requests to the silent server behind a window of 4, all made at one moment of a manual clock with a
 * timeout of 1000 ms, then the clock moved past it: every timer falls due at once, as in a client whose
 * event loop was busy. Returns how often the client looked at a request (the signal's `aborted` read),
 * from the first request made to the last one settled, and checks each ends CLIENT_TIMEOUT.
 */
async function looksToExpire(n: number): Promise<number> {
  const clock = new ManualClock();
  const c = await connect({ revproc: ctx.proxy!.port, clock, window: 4, timeoutMs: 1000 });
  ctx.clients.push(c);
  const { signal, looks } = countingSignal();
  const all = Array.from({ length: n }, (_, i) => c.request('P', `r${i}`, { signal }).then(() => 'answered', (e: RequestError) => `${e.code}: ${e.message}`));
  const book = (): RequestBook => c.actor.getSnapshot().context.book;
  await eventually(() => book().inFlight === 4, 3000, 'the window of 4 in flight');
  clock.advance(1000);
  const outcomes = await Promise.all(all);
  assert.equal(new Set(outcomes), new Set(["CLIENT_TIMEOUT: no answer within the request's timeout (1000 ms)"]));
  assert.is(book().size, 0, 'each settled');
  return looks();
}

expiry('requests timing out together behind a full window are each looked at a bounded number of times, however many wait', async () => {
  // Each EXPIRE freed a slot or a place and sent the next waiting request, walking past every other one whose
  // time was up too (their EXPIREs next in line): looks grew with the square of the requests waiting. 40,000
  // requests timing out together held the client's event loop for seconds (14 s in a probe), 100,000 for minutes.
  const n = 300;
  const once = await looksToExpire(n);
  const twice = await looksToExpire(2 * n);
  // Two looks as each is made, one as the window reaches it (sent, or set aside as given up on): at most 3n and a few.
  assert.ok(once <= 3 * n + 8, `${once} looks for ${n} requests`);
  assert.ok(twice <= 3 * (2 * n) + 8, `${twice} looks for ${2 * n} requests`);
  assert.ok(twice < 2.5 * once, `twice the requests cost ${(twice / once).toFixed(2)} times the looks (${once}, then ${twice})`);
});

expiry('close() waits for every request made, each call of it returns once they have settled, and inFlight counts them until then', async () => {
  const clock = new ManualClock();
  const c = await connect({ revproc: ctx.proxy!.port, clock, window: 2, timeoutMs: 1000 });
  ctx.clients.push(c);
  const all = Array.from({ length: 10 }, (_, i) => c.request('P', `c${i}`).catch((e: RequestError) => e.code));
  assert.is(c.inFlight, 10);
  let closed = 0;
  const closing = [c.close().then(() => closed++), c.close().then(() => closed++)];
  await eventually(() => c.actor.getSnapshot().context.book.inFlight === 2, 3000, 'the window of 2 in flight');
  assert.equal([closed, c.inFlight], [0, 10]);
  assert.is((await c.request('P', 'late').catch((e: RequestError) => e.code)), 'CLIENT_CLOSED');
  clock.advance(1000);
  await Promise.all(closing);
  assert.equal([closed, c.inFlight], [2, 0]);
  assert.equal(new Set(await Promise.all(all)), new Set(['CLIENT_TIMEOUT']));
});

expiry.run();

const book = suite('the order of the client queue');

/** A request as the machine gives it, its outcome kept. */
function request(policy: string, payload: string, outcomes: Map<string, Outcome>, signal?: AbortSignal): { req: ClientRequest; handle: object } {
  return { req: { policy, payload, timeoutMs: 10_000, signal, done: (o) => outcomes.set(payload, o) }, handle: {} };
}

/** A RequestBook on a manual clock whose connection writes into `sent` (the payloads, in order), and its answers. */
function bookOn(window: number, maxQueued: number, json = false): { book: RequestBook; sent: DataMsg[]; add: (r: ReturnType<typeof request>) => void; more: () => void; ack: (...payloads: string[]) => void } {
  const clock = new ManualClock();
  const b = new RequestBook(clock, window, maxQueued, json, 1024 * 1024);
  const sent: DataMsg[] = [];
  const conn = { send: (m: DataMsg) => sent.push(m) } as unknown as Connection;
  const more = (): void => b.sendMore(conn, 'c', silentLogger, 1);
  const add = (r: ReturnType<typeof request>): void => {
    b.add(r.req, r.handle, (h, ms) => clock.setTimeout(() => b.fail(h, new RequestError('CLIENT_TIMEOUT', `${ms}`)), ms), 'c');
    more();
  };
  const ack = (...payloads: string[]): void => {
    const msgs: Message[] = payloads.map((p) => ({ type: MsgType.ACK, seq: sent.find((m) => m.payload === p)!.seq, srcid: 's', destid: 'c', payload: 'ok', payloadsize: 2 }));
    b.answer(msgs, silentLogger, false);
    more();
  };
  return { book: b, sent, add, more, ack };
}

book('policies whose windows free together send in the order their waiting requests came, whatever order the answers came in', () => {
  const outcomes = new Map<string, Outcome>();
  const { sent, add, ack } = bookOn(1, 100);
  for (const p of ['A', 'B', 'C']) add(request(p, `${p}1`, outcomes));
  // Waiting, in this order: C's first, then A's, then B's.
  for (const p of ['C', 'A', 'B']) add(request(p, `${p}2`, outcomes));
  assert.equal(sent.map((m) => m.payload), ['A1', 'B1', 'C1']);
  // One read answers all three: each policy's window has room at once.
  ack('A1', 'B1', 'C1');
  assert.equal(sent.map((m) => m.payload), ['A1', 'B1', 'C1', 'C2', 'A2', 'B2']);
});

book('a request given up on keeps its place while its own event is to come: a full queue gives up the oldest, that one', () => {
  const outcomes = new Map<string, Outcome>();
  const { book: b, sent, add, ack } = bookOn(1, 3);
  let aborted = false;
  const signal = { get aborted() { return aborted; }, reason: undefined, addEventListener() {}, removeEventListener() {} } as unknown as AbortSignal;
  add(request('P', 'p1', outcomes));
  add(request('P', 'p2', outcomes, signal));
  add(request('P', 'p3', outcomes));
  add(request('P', 'p4', outcomes));
  // p2's caller gives up; its CANCEL has not come yet. The window's next place goes to p3, past it.
  aborted = true;
  ack('p1');
  assert.equal(sent.map((m) => m.payload), ['p1', 'p3']);
  assert.not.ok(outcomes.has('p2'), 'p2 waits for its CANCEL');
  add(request('P', 'p5', outcomes));
  // The queue is full (p2, p4, p5): a request to Q gets in, and P's oldest waiting request, p2, is given up for it.
  add(request('Q', 'q1', outcomes));
  const given = outcomes.get('p2');
  assert.ok(given && !given.ok && given.error.code === 'CLIENT_OVERLOADED', JSON.stringify(given));
  assert.equal(sent.map((m) => m.payload), ['p1', 'p3', 'q1']);
  assert.is(b.size, 4, 'p3 in flight, p4 and p5 waiting, q1 in flight');
  // Its CANCEL, when it comes, finds it settled.
  b.fail({}, new RequestError('ABORTED', 'late'));
  ack('p3');
  assert.equal(sent.map((m) => m.payload), ['p1', 'p3', 'q1', 'p4']);
});

book('on the old JSON wire (one request in flight in all) a policy held back by the other\'s request goes once it is answered, in the order they came', () => {
  const outcomes = new Map<string, Outcome>();
  const { sent, add, ack } = bookOn(64, 100, true);
  add(request('A', 'a1', outcomes));
  add(request('B', 'b1', outcomes));
  add(request('A', 'a2', outcomes));
  assert.equal(sent.map((m) => m.payload), ['a1']);
  ack('a1');
  assert.equal(sent.map((m) => m.payload), ['a1', 'b1']);
  ack('b1');
  assert.equal(sent.map((m) => m.payload), ['a1', 'b1', 'a2']);
});

book('sent, then taken back (a lost connection), requests wait first again in their order, and go before the others', () => {
  const outcomes = new Map<string, Outcome>();
  const { book: b, sent, add, more } = bookOn(2, 100);
  for (let i = 1; i <= 5; i++) add(request('P', `p${i}`, outcomes));
  assert.equal(sent.map((m) => m.payload), ['p1', 'p2']);
  assert.is(b.unsend(), 2);
  sent.length = 0;
  more();
  assert.equal(sent.map((m) => m.payload), ['p1', 'p2']);
});

const queue = suite('a policy queue (PolicyQueue)');

interface Item extends Queued<Item> {
  name: string;
}
const item = (name: string): Item => ({ name, qPrev: undefined, qNext: undefined, lPrev: undefined, lNext: undefined, queued: 0 });
function looked(q: PolicyQueue<Item>): string[] {
  const out: string[] = [];
  for (let e = q.first; e; e = e.lNext) out.push(e.name);
  return out;
}

queue('every waiting item in order, those set aside left out of the ones looked at; each step touches its neighbours alone', async () => {
  // Imported here: the suites above run on a tree without it (the code before it), to show what they catch.
  const { PolicyQueue } = await import('../actors/client-queue.js');
  const q = new PolicyQueue<Item>('P', 0);
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map(item) as [Item, Item, Item, Item, Item];
  q.push(a);
  q.push(b);
  q.push(c);
  q.setAside(a);
  q.setAside(c);
  assert.equal(looked(q), ['b']);
  assert.is(q.oldest, a);
  assert.is(q.size, 3);
  q.unshift([d, e]);
  assert.equal(looked(q), ['d', 'e', 'b']);
  assert.is(q.oldest, d);
  assert.ok(q.remove(a) && q.remove(d) && q.remove(b));
  assert.not.ok(q.remove(b), 'not in it any more');
  assert.equal(looked(q), ['e']);
  assert.is(q.oldest, e);
  assert.ok(q.remove(e) && q.remove(c));
  assert.equal([q.size, q.oldest, q.first], [0, undefined, undefined]);
});

book.run();
queue.run();
