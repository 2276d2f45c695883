/**
 * Storms: work that comes by the thousand in one poll phase (servers registering at once, their
 * connections ending at once) is taken a bounded number of jobs a turn of the event loop
 * (transport/lane.ts), so that the clients' reads are served between. Turns are counted here by a
 * setImmediate that schedules itself again: one count per turn of this process's loop, which the
 * proxy under test shares.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createServer, type Server, type Socket } from 'node:net';
import { startProxy, type ProxyHandle } from '../actors/index.js';
import { Lane, lifecycle } from '../transport/lane.js';
import { MsgType } from '../transport/messages.js';
import { FrameDecoder } from '../transport/frame.js';
import { eventually, frame, LOCAL, perTurn, rawConnect, sleep, turns } from './helpers.js';

const lane = suite('lane');

lane('a job given when none waits and the budget lasts runs at once; past the budget, jobs wait for the turns after, in order, a budget a turn', async () => {
  const t = turns();
  try {
    const l = new Lane(4);
    const ran: number[] = [];
    const at: number[] = [];
    for (let i = 0; i < 10; i++) l.run(() => {
      ran.push(i);
      at.push(t.now());
    });
    assert.equal(ran, [0, 1, 2, 3], 'the first four at once');
    assert.is(l.waiting, 6);
    await eventually(() => ran.length === 10, 1000, 'every job run');
    assert.equal(ran, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert.equal(perTurn(at), [4, 4, 2]);
    assert.is(l.waiting, 0);
  } finally {
    t.stop();
  }
});

lane('jobs run in the order given, a job given by a job too: after what waits, or at once when nothing waits and the budget lasts', async () => {
  const l = new Lane(2);
  const ran: string[] = [];
  l.run(() => ran.push('a'));
  l.run(() => {
    ran.push('b');
    // Given with the budget spent: it waits, and c (given after) goes after it.
    l.run(() => ran.push('b2'));
  });
  l.run(() => ran.push('c'));
  assert.equal(ran, ['a', 'b']);
  // The next turn runs b2 and c; in the same turn, with nothing waiting and none of the budget left, d waits a turn.
  await new Promise((r) => setImmediate(r));
  assert.equal(ran, ['a', 'b', 'b2', 'c']);
  l.run(() => ran.push('d'));
  assert.equal(ran, ['a', 'b', 'b2', 'c']);
  await eventually(() => ran.length === 5, 1000, 'd run');
  // A turn later, nothing waiting and the budget new: at once.
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  l.run(() => ran.push('e'));
  assert.equal(ran, ['a', 'b', 'b2', 'c', 'd', 'e']);
});

lane.run();

interface StormCtx {
  proxy?: ProxyHandle;
  links?: Server;
  socks: Socket[];
}
const sctx: StormCtx = { socks: [] };
const storm = suite<StormCtx>('storms at the proxy', sctx);

storm.after.each(() => {
  for (const s of sctx.socks) s.destroy();
  sctx.socks = [];
  sctx.links?.close();
  sctx.proxy?.kill();
});

storm('200 servers registering in one turn, then leaving in one, reach the proxy a lane budget a turn; all registered, all gone', async () => {
  const n = 200;
  const t = turns();
  const at = { REGISTER: [] as number[], CONN_CLOSED: [] as number[] };
  try {
    // Where the proxy dials each server's link: every registration names this one port (ids differ).
    const links = (sctx.links = createServer((s) => s.on('error', () => undefined)));
    await new Promise<void>((r) => links.listen(0, LOCAL, r));
    const linkPort = (links.address() as { port: number }).port;
    const proxy = (sctx.proxy = await startProxy({
      port: 0,
      inspect: (ev) => {
        if (ev.type !== '@xstate.event') return;
        const type = (ev.event as { type: string }).type;
        if (type === 'REGISTER' || type === 'CONN_CLOSED') at[type].push(t.now());
      },
    }));
    const socks = (sctx.socks = await Promise.all(Array.from({ length: n }, () => rawConnect(proxy.port))));
    // The proxy's first PING on a registration says it was taken.
    const taken = new Set<number>();
    socks.forEach((s, i) => {
      const d = new FrameDecoder({ validate: false });
      s.on('data', (chunk: Buffer) => {
        if (d.push(chunk).messages.some((m) => m.type === MsgType.PING)) taken.add(i);
      });
    });
    // The proxy accepts connections as they come, one or a few a turn: a moment after it has them all, every setup is
    // written in one turn, and it reads them all in one poll phase (before the lane, 200 REGISTER events in one turn).
    await sleep(100);
    socks.forEach((s, i) => s.write(frame({ type: MsgType.SETUP, id: `st${i}`, privPolyId: 'storm', listenport: linkPort })));
    await eventually(() => taken.size === n, 10000, `all ${n} registrations taken`);
    assert.is(at.REGISTER.length, n);
    const most = perTurn(at.REGISTER)[0]!;
    assert.ok(most <= lifecycle.perTurn, `${most} registrations in one turn (the lane's budget is ${lifecycle.perTurn})`);
    assert.is(proxy.pools().storm?.members.length, n);

    // Every registration ends in one turn.
    for (const s of socks) s.destroy();
    await eventually(() => proxy.pools().storm === undefined || proxy.pools().storm!.members.length === 0, 10000, 'every server gone');
    assert.is(at.CONN_CLOSED.length, n);
    const mostEnds = perTurn(at.CONN_CLOSED)[0]!;
    assert.ok(mostEnds <= lifecycle.perTurn, `${mostEnds} ends in one turn (the lane's budget is ${lifecycle.perTurn})`);
  } finally {
    t.stop();
  }
});

storm.run();
