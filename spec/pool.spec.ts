import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { createActor } from 'xstate';
import { emptyRotation, join, leave, pick, poolMachine, type Rotation } from '../actors/pool.js';

function serveN(r: Rotation, n: number): { served: string[]; r: Rotation } {
  const served: string[] = [];
  for (let i = 0; i < n; i++) {
    const p = pick(r);
    served.push(p.member!);
    r = { ...r, cursor: p.cursor };
  }
  return { served, r };
}

test("the assignment's example: servers 1 and 2, five messages go 1, 2, 1, 2, 1", () => {
  const r = join(join(emptyRotation, '1'), '2');
  assert.equal(serveN(r, 5).served, ['1', '2', '1', '2', '1']);
});

test('a member that joins is appended after the current rotation', () => {
  let r = join(join(emptyRotation, 'a'), 'b');
  const first = serveN(r, 1);
  r = join(first.r, 'c');
  assert.equal(serveN(r, 5).served, ['b', 'c', 'a', 'b', 'c']);
});

test('the member that was next stays next when another leaves', () => {
  let r = join(join(join(emptyRotation, 'a'), 'b'), 'c');
  r = serveN(r, 1).r; // served a; b is next
  assert.equal(serveN(leave(r, 'a'), 2).served, ['b', 'c'], 'a leaves: b still next');
  assert.equal(serveN(leave(r, 'b'), 2).served, ['c', 'a'], 'b (next) leaves: c next');
  assert.equal(serveN(leave(r, 'c'), 2).served, ['b', 'a'], 'c leaves: b still next');
});

type Op = { kind: 'join'; id: string } | { kind: 'leave'; id: string } | { kind: 'serve' };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('join' as const), id: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f') }),
  fc.record({ kind: fc.constant('leave' as const), id: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f') }),
  fc.constant({ kind: 'serve' as const }),
  fc.constant({ kind: 'serve' as const }),
);

test('property: under any join/leave sequence the next member served is the one after the last served', () => {
  fc.assert(
    fc.property(fc.array(opArb, { maxLength: 200 }), (ops) => {
      let r: Rotation = emptyRotation;
      let last: string | undefined;
      for (const op of ops) {
        if (op.kind === 'join') r = join(r, op.id);
        else if (op.kind === 'leave') {
          r = leave(r, op.id);
          if (op.id === last) last = undefined; // covered by the next property
        } else {
          const p = pick(r);
          if (r.members.length === 0) {
            assert.is(p.member, undefined);
            continue;
          }
          const m = p.member!;
          assert.ok(r.members.includes(m), 'serves a member');
          if (last !== undefined && r.members.includes(last)) {
            // Nobody skipped, nobody twice in a row: the cyclic successor of the last one served.
            const want = r.members[(r.members.indexOf(last) + 1) % r.members.length];
            assert.is(m, want, `after ${last} with [${r.members.join(',')}] served ${m}`);
          }
          last = m;
          r = { ...r, cursor: p.cursor };
        }
        assert.ok(r.cursor >= 0 && r.cursor <= r.members.length, 'cursor in range');
        assert.equal(new Set(r.members).size, r.members.length, 'no duplicate members');
      }
    }),
    { numRuns: 1000 },
  );
});

test('property: when the last one served leaves, the member after it is next', () => {
  fc.assert(
    fc.property(fc.integer({ min: 2, max: 8 }), fc.nat(30), (n, k) => {
      const ids = Array.from({ length: n }, (_, i) => `s${i}`);
      let r = emptyRotation;
      for (const id of ids) r = join(r, id);
      const { served, r: after } = serveN(r, k + 1);
      const lastServed = served[served.length - 1]!;
      const expected = ids[(ids.indexOf(lastServed) + 1) % n]!;
      assert.is(pick(leave(after, lastServed)).member, expected);
    }),
  );
});

test('property: with a stable membership every member serves once per round, in registration order', () => {
  fc.assert(
    fc.property(fc.uniqueArray(fc.string({ minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 8 }), fc.nat(20), (ids, rounds) => {
      let r = emptyRotation;
      for (const id of ids) r = join(r, id);
      const { served } = serveN(r, ids.length * rounds);
      assert.equal(served, Array.from({ length: rounds }, () => ids).flat());
    }),
  );
});

test('the pool machine is empty until a member joins and refuses with no member', () => {
  const delivered: Array<[string, unknown]> = [];
  const unrouted: unknown[][] = [];
  const pool = createActor(poolMachine, { input: { policy: '111', deliver: (m, req) => delivered.push([m, req]), unrouted: (reqs) => unrouted.push(reqs) } }).start();
  assert.is(pool.getSnapshot().value, 'empty');
  pool.send({ type: 'ROUTE', requests: ['r0'] });
  assert.equal(unrouted, [['r0']]);
  assert.equal(delivered, []);
  pool.send({ type: 'JOIN', id: '1' });
  pool.send({ type: 'JOIN', id: '2' });
  assert.is(pool.getSnapshot().value, 'serving');
  pool.send({ type: 'ROUTE', requests: ['a', 'b', 'c', 'd', 'e'] });
  assert.equal(delivered, [['1', 'a'], ['2', 'b'], ['1', 'c'], ['2', 'd'], ['1', 'e']], 'one batch event, handed out in turn');
  assert.is(pool.getSnapshot().context.cursor, 1, 'the cursor moved one step per request');
  assert.is(pool.getSnapshot().context.routed, 5);
  pool.send({ type: 'LEAVE', id: '1' });
  pool.send({ type: 'LEAVE', id: '2' });
  assert.is(pool.getSnapshot().value, 'empty');
  pool.stop();
});

test('a batch routed with the clock read once hands that reading to every request it delivers', () => {
  const delivered: Array<[string, unknown, number | undefined]> = [];
  const pool = createActor(poolMachine, { input: { policy: 'p', deliver: (m, req, now) => delivered.push([m, req, now]), unrouted: () => undefined } }).start();
  for (const id of ['1', '2']) pool.send({ type: 'JOIN', id });
  pool.send({ type: 'ROUTE', requests: ['a', 'b', 'c'], now: 1234.5 });
  pool.send({ type: 'ROUTE', requests: ['d'] });
  assert.equal(delivered, [['1', 'a', 1234.5], ['2', 'b', 1234.5], ['1', 'c', 1234.5], ['2', 'd', undefined]]);
  pool.stop();
});

test('a pool skips members its eligibility check refuses, and hands back what none can take', () => {
  const delivered: Array<[string, unknown]> = [];
  const unrouted: unknown[][] = [];
  const out = new Set(['2']);
  const pool = createActor(poolMachine, {
    input: { policy: 'p', deliver: (m, req) => delivered.push([m, req]), unrouted: (reqs) => unrouted.push(reqs), eligible: (id) => !out.has(id) },
  }).start();
  for (const id of ['1', '2', '3']) pool.send({ type: 'JOIN', id });
  pool.send({ type: 'ROUTE', requests: [1, 2, 3, 4] });
  assert.equal(delivered, [['1', 1], ['3', 2], ['1', 3], ['3', 4]]);
  assert.equal(unrouted, []);
  out.add('1').add('3');
  pool.send({ type: 'ROUTE', requests: [5, 6] });
  assert.equal(unrouted, [[5, 6]], 'one call for the whole batch');
  assert.is(delivered.length, 4);
  pool.stop();
});

test.run();
