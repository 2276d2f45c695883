/** Busy polling's window, on a hand-moved clock and a hand-run scheduler. */
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BusyPoll } from '../transport/busy-poll.js';

function harness(windowUs: number) {
  let now = 0;
  const queue: Array<() => void> = [];
  const poll = new BusyPoll({ windowUs, now: () => now, schedule: (fn) => void queue.push(fn) });
  /** Run one turn of the "event loop": whatever was scheduled. */
  const turn = (): number => {
    const due = queue.splice(0);
    for (const fn of due) fn();
    return due.length;
  };
  return { poll, turn, advance: (ms: number) => void (now += ms), pending: () => queue.length };
}

test('nothing polls before any traffic', () => {
  const h = harness(300);
  assert.is(h.poll.active, false);
  assert.is(h.pending(), 0);
});

test('after traffic it polls every turn until the window has passed, then stops', () => {
  const h = harness(300);
  h.poll.kick();
  assert.is(h.poll.active, true);
  h.turn();
  h.advance(0.2);
  h.turn();
  assert.is(h.poll.active, true, 'still inside 300 us');
  assert.is(h.poll.spins, 2);
  h.advance(0.1);
  h.turn();
  assert.is(h.poll.active, false, 'the window has passed');
  assert.is(h.pending(), 0, 'nothing left scheduled: the process may sleep');
});

test('traffic during the window extends it, with one poller however many kicks', () => {
  const h = harness(300);
  h.poll.kick();
  h.advance(0.25);
  h.poll.kick();
  h.poll.kick();
  assert.is(h.pending(), 1, 'one poller');
  h.advance(0.25);
  h.turn();
  assert.is(h.poll.active, true, '250 us after the last kick');
  h.advance(0.05);
  h.turn();
  assert.is(h.poll.active, false);
});

test('stop ends polling at the next turn, and later traffic does not start it again', () => {
  const h = harness(1000);
  h.poll.kick();
  h.poll.stop();
  h.turn();
  assert.is(h.poll.active, false);
  h.poll.kick();
  assert.is(h.pending(), 0);
});

test.run();
