import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { Inflight } from '../actors/inflight.js';

type Op = { kind: 'add'; deadline: number } | { kind: 'take'; pick: number } | { kind: 'expire'; now: number } | { kind: 'all' };
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ kind: fc.constant('add' as const), deadline: fc.nat(100) }) },
  { weight: 5, arbitrary: fc.record({ kind: fc.constant('take' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('expire' as const), now: fc.nat(100) }) },
  { weight: 1, arbitrary: fc.constant({ kind: 'all' as const }) },
);

test('the in-flight table behaves like a Map keyed by seq, in seq order, across growth and the seq wrap, keeping each entry\'s times', () => {
  fc.assert(
    fc.property(fc.array(op, { minLength: 40, maxLength: 300, size: 'max' }), fc.constantFrom(0, 0xffffffff - 40), (ops, startSeq) => {
      const busy = new Set<Inflight<number>>();
      const t = new Inflight<number>(busy);
      (t as unknown as { seq: number }).seq = startSeq;
      const model = new Map<number, { req: number; deadline: number; sentAt: number }>();
      let n = 0;
      for (const o of ops) {
        if (o.kind === 'add') {
          // Times as the clock gives them: fractions of a millisecond.
          const sentAt = n * 0.25 + 0.125;
          const seq = t.add(n, o.deadline, sentAt);
          assert.ok(seq >= 1 && seq <= 0xffffffff && !model.has(seq));
          model.set(seq, { req: n++, deadline: o.deadline, sentAt });
        } else if (o.kind === 'take') {
          const keys = [...model.keys()];
          // Mostly a live seq, sometimes one that is not (or no longer) there.
          const seq = keys.length && o.pick % 5 ? keys[o.pick % keys.length]! : (o.pick % 0xffffffff) + 1;
          const m = model.get(seq);
          if (o.pick % 2) {
            const p = t.take(seq);
            assert.is(p?.req, m?.req);
            if (m) assert.equal(p, { upSeq: seq, req: m.req, deadline: m.deadline, sentAt: m.sentAt });
          } else {
            // The answer's path: the request, its times left in the table's two fields, no entry object.
            assert.is(t.takeReq(seq), m?.req);
            if (m) assert.equal([t.takenDeadline, t.takenSentAt], [m.deadline, m.sentAt]);
          }
          model.delete(seq);
        } else if (o.kind === 'expire') {
          const got = t.takeExpired(o.now).map((p) => p.upSeq);
          const want = [...model].filter(([, v]) => v.deadline <= o.now).map(([k]) => k);
          assert.equal(got, want);
          for (const k of want) model.delete(k);
        } else {
          assert.equal(t.takeAll().map((p) => p.req), [...model.values()].map((v) => v.req));
          model.clear();
        }
        assert.is(t.size, model.size);
        assert.is(busy.has(t), model.size > 0);
        for (const [k, v] of model) assert.equal(t.peek(k), { upSeq: k, ...v });
        // The oldest unanswered request's send time: the lowest seq's, counting across the wrap.
        const oldest = [...model.entries()].sort(([a], [b]) => ((a - startSeq - 1) >>> 0) - ((b - startSeq - 1) >>> 0))[0];
        assert.is(t.oldestSentAt(), oldest?.[1].sentAt);
      }
    }),
    { numRuns: 300 },
  );
});

test('wasSent tells a seq the table handed out (answered, expired or in flight) from one it never did, across the seq wrap', () => {
  const t = new Inflight<number>();
  assert.not.ok(t.wasSent(1));
  for (let i = 0; i < 3; i++) t.take(t.add(i, 10));
  assert.equal([0, 1, 3, 4, 0x100000000].map((s) => t.wasSent(s)), [false, true, true, false, false]);
  (t as unknown as { seq: number }).seq = 0xffffffff - 1;
  assert.is(t.add(0, 10), 0xffffffff);
  assert.is(t.add(0, 10), 1);
  assert.ok(t.wasSent(5), 'every seq was handed out once, once they wrapped');
  assert.not.ok(t.wasSent(0), 'never 0: the seq of PINGs');
});

test('put takes in entries another table handed out (a link\'s kept tries): found by their seq, expired by their deadline, in the busy set while any is there', () => {
  const busy = new Set<Inflight<string>>();
  const main = new Inflight<string>();
  const kept = new Inflight<string>(busy);
  const seqs = Array.from({ length: 40 }, (_, i) => main.add(`r${i}`, 10 + i));
  // Every other one timed out and is kept, until a later deadline; the table grows past its 16 slots.
  for (const p of main.takeExpired(49)) if (p.upSeq % 2 === 0) kept.put({ ...p, deadline: 100 + p.upSeq });
  assert.is(kept.size, 20);
  assert.ok(busy.has(kept));
  assert.is(kept.oldestDeadline(), 102);
  assert.is(seqs[2], 3);
  assert.is(kept.take(3), undefined, 'an odd one was not kept');
  assert.is(kept.take(2)?.req, 'r1');
  assert.equal(kept.takeExpired(110).map((p) => p.req), ['r3', 'r5', 'r7', 'r9']);
  assert.is(kept.size, 15);
  kept.takeAll();
  assert.not.ok(busy.has(kept));
});

test.run();
