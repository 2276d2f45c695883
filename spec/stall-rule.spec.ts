/**
 * The rule that holds a member back as slow or silent (routing.ts `stalled`), which the pool asks of
 * a member for every request it routes: the same answer as "the clock is past `since`, and a request
 * was sent since", without reading the clock when the last send's time already says it.
 */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import fc from 'fast-check';
import { stalled } from '../actors/routing.js';
import { Inflight } from '../actors/inflight.js';
import type { Member, ProxyContext } from '../actors/proxy-types.js';
import type { ProxyRequest } from '../actors/link.js';

const time = fc.double({ min: 0, max: 5000, noNaN: true });

test('stalled answers as the rule says, and reads the clock only for a link whose sends say nothing of the time', () => {
  fc.assert(
    fc.property(
      fc.record({ slowAfterMs: fc.constantFrom(0, 1, 417, 1000), answeredAt: fc.oneof(time, fc.constant(-Infinity)), overtakenAt: fc.oneof(time, fc.constant(-Infinity)), oldest: time, sentAt: fc.oneof(time, fc.constant(Infinity)), later: time, limit: fc.option(fc.integer({ min: 1, max: 4 }), { nil: undefined }), held: fc.integer({ min: 0, max: 5 }) }),
      (o) => {
        // Every time read so far is at or before now.
        const now = Math.max(o.answeredAt, o.overtakenAt, o.oldest, o.sentAt === Infinity ? 0 : o.sentAt) + o.later;
        let reads = 0;
        const inflight = new Inflight<ProxyRequest>();
        for (let i = 0; i < o.held; i++) inflight.add({} as ProxyRequest, Infinity, o.oldest + i);
        const traffic = { inflight, limit: o.limit, answeredAt: o.answeredAt, overtakenAt: o.overtakenAt, sentAt: o.sentAt };
        const context = { opts: { slowAfterMs: o.slowAfterMs }, clock: { now: () => (reads++, now) } } as unknown as ProxyContext;
        const got = stalled(context, { traffic } as unknown as Member);
        let want = false;
        if (o.slowAfterMs > 0 && o.held > 0) {
          const full = o.limit !== undefined && o.held >= o.limit;
          const since = Math.max(full ? o.overtakenAt : o.answeredAt, o.oldest) + o.slowAfterMs;
          want = now >= since && o.sentAt >= since;
        }
        assert.is(got, want);
        if (o.sentAt !== Infinity) assert.is(reads, 0, 'a send at or after `since` was at a clock reading past it');
      },
    ),
    { numRuns: 2000 },
  );
});

test.run();
