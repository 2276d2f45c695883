/**
 * The specs start proxies, etcd and HAProxy on free ports chosen before they bind them; another
 * socket may take one meanwhile (a CI run: names.spec's etcd exited "address already in use", a
 * proxy "port 45035 ... is already in use"). One owner starts them again on other ports, when and
 * only when the start says its port was taken (`onFreePorts`).
 */
import { createServer, type Server } from 'node:net';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { onFreePorts } from '../bench/procs.js';
import { LOCAL } from './helpers.js';
import { killAll, listensOn, proxyProcess } from './procs.js';

const test = suite('free ports for the specs\' processes');
const takers: Server[] = [];
test.after.each(() => {
  killAll();
  for (const t of takers.splice(0)) t.close();
});

test('a proxy whose port another program takes before it listens is started again on another, and the listener found is its own', async () => {
  const tried: number[] = [];
  const { proc, port } = await onFreePorts(1, async ([p]) => {
    tried.push(p!);
    if (tried.length === 1) {
      // Another program takes the port between its choice and the proxy's start: it accepts connections there too.
      const taker = createServer();
      takers.push(taker);
      await new Promise<void>((resolve) => taker.listen(p, LOCAL, resolve));
    }
    return proxyProcess(['--log-level', 'warn'], { port: p });
  });
  assert.is(tried.length, 2, `ports tried: ${tried.join(', ')}`);
  assert.is.not(port, tried[0]);
  assert.ok(listensOn(proc.child.pid!, port), 'the proxy listens on the port it was started on again');
  assert.not.ok(listensOn(proc.child.pid!, tried[0]!));
  assert.is(proc.child.exitCode, null);
});

test('a start that fails for another reason is not started again: its error as it is', async () => {
  let starts = 0;
  const err = await onFreePorts(1, ([p]) => {
    starts++;
    return proxyProcess(['--no-such-option'], { port: p });
  }).then(() => undefined, (e: Error) => e);
  assert.is(starts, 1);
  assert.match(err?.message ?? '', /unknown option '--no-such-option'/);
});

test('a port taken at every try: started a bounded number of times, then the last error, naming the ports tried', async () => {
  const tried: number[] = [];
  const err = await onFreePorts(2, async (ports) => {
    tried.push(...ports);
    throw new Error(`port ${ports[0]} on 127.0.0.1 is already in use: stop what holds it or choose another port`);
  }).then(() => undefined, (e: Error) => e);
  assert.is(tried.length, 6, 'three starts of two ports each');
  assert.is(new Set(tried.slice(0, 2)).size, 2, 'the ports of one start differ');
  assert.match(err?.message ?? '', /is already in use/);
  assert.match(err?.message ?? '', /started 3 times, on ports chosen again after each/);
});

test.run();
