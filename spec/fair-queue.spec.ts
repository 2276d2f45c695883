/**
 * The proxy's wait queue (actors/fair-queue.ts) as a structure: clients take turns, each in
 * arrival order; a full queue refuses the client holding the most its own excess; deadlines
 * take each client's oldest; a drain's leftovers pushed back keep the turns going round, and a
 * request put back goes in its place in its client's arrival order; a client gone is taken out whole.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { FairQueue } from '../actors/fair-queue.js';

interface Client { name: string }
const A: Client = { name: 'A' };
const B: Client = { name: 'B' };
const C: Client = { name: 'C' };
interface Item { who: Client; n: number; at: number }
const item = (who: Client, n: number, at = 0): Item => ({ who, n, at });
const names = (items: (Item | undefined)[]): string[] => items.map((i) => (i ? `${i.who.name}${i.n}` : '-'));

function queueOf(...entries: Item[]): FairQueue<Client, Item> {
  const q = new FairQueue<Client, Item>();
  for (const e of entries) q.push(e.who, e);
  return q;
}

test('clients take turns, one request each, each in its arrival order', () => {
  const q = queueOf(item(A, 1), item(A, 2), item(A, 3), item(B, 1), item(A, 4), item(C, 1), item(B, 2));
  assert.is(q.length, 7);
  assert.equal(names(q.takeAll()), ['A1', 'B1', 'C1', 'A2', 'B2', 'A3', 'A4']);
  assert.is(q.length, 0);
  assert.is(q.shift(), undefined);
});

test("a light client's request goes second behind a heavy client's backlog of 1,000, not 1,001st", () => {
  const q = new FairQueue<Client, Item>();
  for (let i = 1; i <= 1000; i++) q.push(A, item(A, i));
  q.push(B, item(B, 1));
  assert.equal(names([q.shift(), q.shift()]), ['A1', 'B1']);
});

test("a drain's leftovers pushed back in the order taken: the next client in turn goes first the next time", () => {
  // As drainWaiting does: take all, a server with room for one takes the first, the rest come back (unrouted).
  const q = new FairQueue<Client, Item>();
  for (let i = 1; i <= 5; i++) q.push(A, item(A, i));
  q.push(B, item(B, 1));
  q.push(C, item(C, 1));
  const served: Item[] = [];
  for (let round = 0; round < 4; round++) {
    const all = q.takeAll();
    served.push(all[0]!);
    for (const r of all.slice(1)) q.push(r.who, r);
  }
  assert.equal(names(served), ['A1', 'B1', 'C1', 'A2']);
  assert.equal(names(q.takeAll()), ['A3', 'A4', 'A5']);
});

test('a full queue: the client holding the most is refused its own request; a lighter one gets in and the biggest holder loses its newest', () => {
  const q = queueOf(item(A, 1), item(A, 2), item(A, 3), item(B, 1));
  const heavy = item(A, 4);
  assert.is(q.admit(A, heavy, 4), heavy, 'A holds the most (3): its own request is refused');
  assert.is(q.length, 4);
  const dropped = q.admit(C, item(C, 1), 4);
  assert.equal(names([dropped]), ['A3'], "A's newest makes room for C");
  assert.equal([q.sizeOf(A), q.sizeOf(B), q.sizeOf(C), q.length], [2, 1, 1, 4]);
  assert.equal(names([q.admit(B, item(B, 2), 4)]), ['A2'], 'B (1) is below A (2): A loses its newest again');
  assert.equal(names([q.admit(C, item(C, 2), 4)]), ['B2'], 'A, B and C hold 1, 2, 1: C is below B and gets in, B loses B2');
  const most = item(C, 3);
  assert.is(q.admit(C, most, 4), most, 'C now holds the most (2): refused its own');
  assert.equal(names(q.takeAll()), ['A1', 'B1', 'C1', 'C2']);
  const even = queueOf(item(A, 1), item(B, 1));
  const tie = item(A, 2);
  assert.is(even.admit(A, tie, 2), tie, 'A ties with the biggest holder: refused, nobody else loses a request');
  assert.equal(names(even.takeAll()), ['A1', 'B1']);
});

test('a limit of 0 refuses every request; below the limit nobody is dropped', () => {
  const q = new FairQueue<Client, Item>();
  const r = item(A, 1);
  assert.is(q.admit(A, r, 0), r);
  assert.is(q.length, 0);
  for (let i = 1; i <= 3; i++) assert.is(q.admit(A, item(A, i), 4), undefined);
  assert.is(q.length, 3);
});

test("newest first (adaptive LIFO): each client's newest in turn, and what is left of each lane stays in arrival order for the deadlines", () => {
  const q = queueOf(item(A, 1, 0), item(A, 2, 10), item(A, 3, 20), item(B, 1, 5), item(B, 2, 15), item(C, 1, 30));
  assert.equal(names(q.take(4, true)), ['A3', 'B2', 'C1', 'A2']);
  assert.is(q.length, 2);
  // A1 and B1 are left, oldest of their lanes: the deadlines find them at the head.
  const due: Item[] = [];
  assert.is(q.takeDue((i) => i.at <= 5, (i) => due.push(i)), 2);
  assert.equal(names(due), ['B1', 'A1']);
  assert.is(q.length, 0);
  // The biggest holder is still found after pops: a full queue refuses its newest.
  const r = queueOf(item(A, 1), item(A, 2), item(A, 3), item(B, 1));
  assert.equal(names([r.shift(true)]), ['A3']);
  assert.equal(names([r.admit(C, item(C, 1), 3)]), ['A2']);
  assert.equal(names(r.takeAll()), ['B1', 'A1', 'C1']);
});

test("deadlines take each client's oldest requests that are due, and leave the turns of the others", () => {
  const q = queueOf(item(A, 1, 10), item(B, 1, 5), item(A, 2, 30), item(B, 2, 6), item(C, 1, 40), item(B, 3, 50));
  assert.ok(q.anyDue((i) => i.at <= 5), "B's oldest is due");
  assert.not.ok(q.anyDue((i) => i.at <= 4));
  const out: Item[] = [];
  assert.is(q.takeDue((i) => i.at <= 10, (i) => out.push(i)), 3);
  assert.equal(names(out), ['A1', 'B1', 'B2']);
  assert.is(q.length, 3);
  assert.equal(names(q.takeAll()), ['A2', 'B3', 'C1']);
});

test('deadlines look past the items passOver names that are not due (requests back from a try), and stop at the first other one not due', () => {
  // A2 is back from a try: not due, it does not end A's scan; A4 does, so A5 waits though due.
  const back = new Set(['A2', 'B2']);
  const passOver = (i: Item): boolean => back.has(`${i.who.name}${i.n}`);
  const q = queueOf(item(A, 1, 1), item(A, 2, 90), item(A, 3, 2), item(A, 4, 50), item(A, 5, 3), item(B, 1, 60), item(B, 2, 70), item(B, 3, 4));
  const due = (i: Item): boolean => i.at <= 10;
  assert.not.ok(q.anyDue((i) => i.at <= 4 && i.who === B, passOver), "B3, behind B1, is not seen: B1 ends B's look");
  assert.ok(q.anyDue(due, passOver));
  assert.not.ok(q.anyDue((i) => i.at === 3, passOver), 'A5 is behind A4');
  const out: Item[] = [];
  assert.is(q.takeDue(due, (i) => out.push(i), passOver), 2);
  assert.equal(names(out), ['A1', 'A3']);
  assert.is(q.length, 6);
  assert.equal([q.sizeOf(A), q.sizeOf(B)], [3, 3]);
  // Without passOver, the first not due ends each lane's look, as before.
  assert.is(q.takeDue(due, (i) => out.push(i)), 0);
  assert.equal(names(q.takeAll()), ['A2', 'B1', 'A4', 'B2', 'A5', 'B3'], 'those passed over keep their order and turns');
});

test('a long-lived lane whose oldest are taken by deadlines moves down: its slots do not grow while it never empties', () => {
  const q = new FairQueue<Client, Item>();
  let n = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 100; i++) q.push(A, item(A, ++n, n));
    q.takeDue((i) => i.at <= n - 100, () => {});
  }
  assert.is(q.length, 100);
  // Reach into the lane: its array holds at most twice what waits, plus the 1,024 it may trail.
  const lane = (q as unknown as { lanes: WeakMap<Client, { items: unknown[] }> }).lanes.get(A)!;
  assert.ok(lane.items.length <= 2 * 100 + 1024 + 100, `${lane.items.length} slots for 100 items`);
});

test("a client gone: every request it has waiting taken out at once, oldest first; the others keep their turns and the biggest holder is found again", () => {
  const q = queueOf(item(A, 1), item(B, 1), item(A, 2), item(C, 1), item(A, 3), item(B, 2));
  assert.equal(names(q.takeOf(A)), ['A1', 'A2', 'A3']);
  assert.equal([q.length, q.sizeOf(A)], [3, 0]);
  assert.equal(q.takeOf(A), [], 'nothing left of A');
  const c2 = item(C, 2);
  assert.equal(names([q.admit(C, c2, 3)]), ['B2'], 'B holds the most now: a full queue takes its newest for C');
  q.push(A, item(A, 4));
  assert.equal(names(q.takeAll()), ['B1', 'C1', 'A4', 'C2'], 'A comes back last in the turns');
});

test("a request put back (a drain's that no server took, a retry that waits) goes in its place in its client's arrival order, so deadlines take it when it is due", () => {
  const older = (a: Item, b: Item): boolean => a.at < b.at;
  const q = queueOf(item(A, 1, 10), item(A, 2, 20), item(B, 1, 15), item(A, 3, 30));
  const [a1, b1] = q.take(2);
  assert.equal(names([a1, b1]), ['A1', 'B1']);
  q.push(A, item(A, 4, 40));
  assert.is(q.admit(A, a1!, 8, older), undefined);
  q.push(A, item(A, 0, 5), older); // a retry that came before all of A's
  q.push(A, item(A, 5, 25), older); // and one between A2 and A3
  const out: Item[] = [];
  q.takeDue((i) => i.at <= 10, (i) => out.push(i));
  assert.equal(names(out), ['A0', 'A1'], 'due at 10: both, at the head of the lane');
  assert.equal(names(q.takeAll()), ['A2', 'A5', 'A3', 'A4']);
  const full = queueOf(item(A, 2, 20), item(A, 3, 30), item(B, 1, 15));
  assert.equal(names([full.admit(B, item(B, 0, 5), 3, older)]), ['A3'], 'full: the biggest holder loses its newest');
  assert.equal(names(full.takeAll()), ['A2', 'B0', 'B1']);
});

test('one client of thousands, pushed and taken in turns past the point where its lane is compacted, keeps its order', () => {
  const q = new FairQueue<Client, Item>();
  let pushed = 0;
  let taken = 0;
  for (let round = 0; round < 40; round++) {
    for (let i = 0; i < 150; i++) q.push(A, item(A, pushed++));
    for (let i = 0; i < 100; i++) assert.is(q.shift()!.n, taken++);
  }
  while (q.length) assert.is(q.shift()!.n, taken++);
  assert.is(taken, pushed);
});

test('against a model: any sequence of admits, shifts, deadlines, requests put back and clients gone keeps each client in arrival order, every item once, and at most the limit', () => {
  const clients = [A, B, C];
  const op = fc.oneof(
    fc.record({ kind: fc.constant('admit' as const), who: fc.integer({ min: 0, max: 2 }) }),
    fc.record({ kind: fc.constant('shift' as const) }),
    fc.record({ kind: fc.constant('expire' as const), before: fc.integer({ min: 0, max: 60 }) }),
    fc.record({ kind: fc.constant('gone' as const), who: fc.integer({ min: 0, max: 2 }) }),
    fc.record({ kind: fc.constant('back' as const), skip: fc.integer({ min: 0, max: 3 }) }),
  );
  fc.assert(fc.property(fc.array(op, { maxLength: 200 }), fc.integer({ min: 0, max: 6 }), (ops, limit) => {
    const q = new FairQueue<Client, Item>();
    const model = new Map<Client, Item[]>(clients.map((c) => [c, []]));
    const seen = new Set<Item>();
    let n = 0;
    const gone = (i: Item): void => {
      assert.not.ok(seen.has(i), 'each item leaves once');
      seen.add(i);
      const lane = model.get(i.who)!;
      const k = lane.indexOf(i);
      assert.ok(k >= 0, 'it was queued');
      lane.splice(k, 1);
    };
    for (const o of ops) {
      if (o.kind === 'admit') {
        const who = clients[o.who]!;
        const it = item(who, ++n, n);
        const sizes = clients.map((c) => model.get(c)!.length);
        const most = Math.max(...sizes);
        model.get(who)!.push(it);
        const away = q.admit(who, it, limit);
        const total = sizes.reduce((a, b) => a + b, 0);
        if (total < limit) assert.is(away, undefined);
        else if (model.get(who)!.length - 1 >= most) assert.is(away, it, 'the biggest holder (or a tie) is refused its own');
        else {
          assert.ok(away && away !== it && model.get(away.who)!.length - (away.who === who ? 1 : 0) === most, 'a lighter client gets in: a biggest holder loses one');
          assert.is(model.get(away.who)!.at(-1), away, "that holder's newest");
        }
        if (away) gone(away);
      } else if (o.kind === 'shift') {
        const it = q.shift();
        if (it) {
          assert.is(model.get(it.who)![0], it, "each client's oldest first");
          gone(it);
        } else assert.ok(clients.every((c) => model.get(c)!.length === 0));
      } else if (o.kind === 'back') {
        // A drain takes some in turn and puts the last back (no server took it): it goes in its place.
        const taken = q.take(o.skip + 1);
        for (const it of taken) gone(it);
        const it = taken.at(-1);
        if (it) {
          const lane = model.get(it.who)!;
          const at = lane.findIndex((x) => x.at > it.at);
          lane.splice(at < 0 ? lane.length : at, 0, it);
          seen.delete(it);
          assert.is(q.admit(it.who, it, limit, (a, b) => a.at < b.at), undefined, 'room for what was taken');
        }
      } else if (o.kind === 'gone') {
        const who = clients[o.who]!;
        const lane = [...model.get(who)!];
        const out = q.takeOf(who);
        assert.equal(out, lane, "a gone client's every item, oldest first");
        for (const it of out) gone(it);
      } else {
        q.takeDue((i) => i.at < o.before, (i) => {
          assert.is(model.get(i.who)![0], i, "deadlines take a client's oldest");
          gone(i);
        });
        assert.not.ok(q.anyDue((i) => i.at < o.before), 'none due is left');
      }
      const total = clients.reduce((a, c) => a + model.get(c)!.length, 0);
      assert.is(q.length, total);
      assert.ok(total <= limit, 'never past the limit');
      for (const c of clients) assert.is(q.sizeOf(c), model.get(c)!.length);
    }
    const rest = q.takeAll();
    for (const it of rest) gone(it);
    assert.ok(clients.every((c) => model.get(c)!.length === 0), 'takeAll took everything left');
  }), { numRuns: 300 });
});

test.run();
