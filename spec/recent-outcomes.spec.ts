/** How a member's tries ended lately (actors/recent-outcomes.ts), and when another member does clearly better: ejection's outlier test. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { clearlyBetter, RECENT_WINDOW_MS, RecentOutcomes } from '../actors/recent-outcomes.js';

test('the failure ratio covers the current window and the one before it; a silent window empties it', () => {
  const r = new RecentOutcomes();
  assert.is(r.failureRatio(0), undefined, 'no tries yet');
  r.add(0, 3, 1);
  assert.is(r.failureRatio(RECENT_WINDOW_MS - 1), 0.25);
  r.add(RECENT_WINDOW_MS * 1.5, 0, 1);
  assert.is(r.failureRatio(RECENT_WINDOW_MS * 1.5), 2 / 5, 'the window before still counts');
  assert.is(r.failureRatio(RECENT_WINDOW_MS * 2.6), 1, 'the first window is gone; the second is the one before');
  assert.is(r.failureRatio(RECENT_WINDOW_MS * 6), undefined, 'nothing in the last two windows');
});

test('another member does clearly better when it fails at most half as often or answers at least twice as often', () => {
  assert.ok(clearlyBetter(undefined, 1), 'an idle or new member');
  assert.ok(clearlyBetter(0, 1));
  assert.ok(clearlyBetter(0.6, 1), '40 % answered against none');
  assert.ok(clearlyBetter(0.05, 0.3));
  assert.not.ok(clearlyBetter(1, 1));
  assert.not.ok(clearlyBetter(0.5, 0.6), 'an overloaded policy: alike');
  assert.not.ok(clearlyBetter(0.85, 0.9));
  assert.not.ok(clearlyBetter(0.2, 0.3));
});

test.run();
