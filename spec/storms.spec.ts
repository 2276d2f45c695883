/**
 * Storms: work that comes by the thousand in one poll phase (servers registering at once, their
 * connections ending at once) is taken a bounded number of jobs a turn of the event loop
 * (transport/lane.ts), so that the clients' reads are served between. Turns are counted here by a
 * setImmediate that schedules itself again: one count per turn of this process's loop, which the
 * proxy under test shares.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { execFileSync } from 'node:child_process';
import { connect, startProxy, startServer, type ProxyHandle } from '../actors/index.js';
import { resolveOptions } from '../actors/proxy-options.js';
import { PING_SLOTS, pinger, pingSlots } from '../actors/proxy-io.js';
import { createActor } from 'xstate';
import { ManualClock, systemClock, type Clock } from '../transport/clock.js';
import { Connection } from '../transport/socket.js';
import { Lane, lifecycle } from '../transport/lane.js';
import { Fifo } from '../transport/fifo.js';
import { MsgType } from '../transport/messages.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
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
  await eventually(() => ran.length === 4, 1000, 'b2 and c run');
  assert.equal(ran, ['a', 'b', 'b2', 'c']);
  // Turns later, nothing waiting and the budget new: at once.
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  l.run(() => ran.push('d'));
  assert.equal(ran, ['a', 'b', 'b2', 'c', 'd']);
});

lane('the budget is a turn\'s, poll phase and check phase together: jobs run at once as sockets are read leave the rest of the turn that much less', async () => {
  // The lane's tick (the check phase) gave itself a new budget: 32 run as a storm was read, then 32 more before the next poll.
  const l = new Lane(8);
  let ran = 0;
  const seen = await new Promise<{ inPoll: number; byCheck: number }>((resolve) => {
    const server = createServer((s) => s.on('data', () => {
      for (let i = 0; i < 20; i++) l.run(() => void ran++);
      const inPoll = ran;
      // Scheduled after the lane's tick: runs in this turn's check phase, before the next poll.
      setImmediate(() => {
        resolve({ inPoll, byCheck: ran });
        s.destroy();
        server.close();
      });
    }));
    server.listen(0, LOCAL, () => {
      const c = createConnection((server.address() as { port: number }).port, LOCAL, () => c.end('x'));
      c.on('error', () => undefined);
    });
  });
  assert.equal(seen, { inPoll: 8, byCheck: 8 });
  await eventually(() => ran === 20, 1000, 'the rest run in the turns after');
});

lane('the queue behind the lane and the probe pacer gives items in the order pushed, across its compaction, and lets go of what it gave', () => {
  const q = new Fifo<{ n: number }>();
  const taken: number[] = [];
  let next = 0;
  // Past 1,024 taken with more than half the array behind the head, what is left moves down: push while taking, so it does.
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 1500; i++) q.push({ n: next++ });
    for (let i = 0; i < 1200; i++) taken.push(q.shift()!.n);
  }
  assert.equal(q.size, next - taken.length);
  while (q.size > 0) taken.push(q.shift()!.n);
  assert.equal(q.shift(), undefined);
  assert.equal(taken, Array.from({ length: next }, (_, i) => i));
  // A slot taken is cleared: the queue holds nothing of what it gave.
  const one = { n: -1 };
  q.push(one);
  q.push({ n: -2 });
  q.shift();
  assert.equal((q as unknown as { items: unknown[] }).items.includes(one), false, 'the item given is no longer held');
});

lane.run();

interface StormCtx {
  proxy?: ProxyHandle;
  links?: Server;
  socks: Socket[];
  closers: Array<() => void>;
}
const sctx: StormCtx = { socks: [], closers: [] };
const storm = suite<StormCtx>('storms at the proxy', sctx);

storm.after.each(() => {
  for (const c of sctx.closers.splice(0)) c();
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

storm('a registration\'s DEREGISTER frames while its REGISTER waits in the lane are one job, not one each: the lane does not grow with them', async () => {
  // Each was a job: one connection sending DEREGISTER frames had 300,000 waiting after 4 s, every registration and end behind them.
  const links = (sctx.links = createServer((s) => s.on('error', () => undefined)));
  await new Promise<void>((r) => links.listen(0, LOCAL, r));
  const proxy = (sctx.proxy = await startProxy({ port: 0 }));
  const sock = await rawConnect(proxy.port);
  sctx.socks = [sock];
  const frames = [frame({ type: MsgType.SETUP, id: 'd1', privPolyId: 'dp', listenport: (links.address() as { port: number }).port })];
  for (let i = 0; i < 2000; i++) frames.push(frame({ type: MsgType.DEREGISTER, id: 'd1' }));
  const most = { waiting: 0 };
  let sampling = true;
  const sample = (): void => {
    most.waiting = Math.max(most.waiting, lifecycle.waiting);
    if (sampling) setImmediate(sample);
  };
  // The last test's ends (its proxy's links, closed as it was killed) gone from the lane first; then another storm's
  // jobs fill it, so the REGISTER waits while the frames are read (64 a turn).
  await eventually(() => lifecycle.waiting === 0, 5000, 'the lane empty');
  for (let i = 0; i < 200; i++) lifecycle.run(() => undefined);
  sample();
  sock.write(Buffer.concat(frames));
  await eventually(() => lifecycle.waiting === 0 && most.waiting > 0, 5000, 'the lane empty again');
  await sleep(50);
  sampling = false;
  assert.ok(most.waiting <= 200 + 2, `${most.waiting} jobs waiting at most (200 of the other storm, then the REGISTER and one DEREGISTER)`);
});

storm('a MISSED_PINGS waiting in the lane reaches the proxy across a reload, which restarts the pinger: the silent server is removed', async () => {
  // Sent back by the pinger, it was dropped (the pinger stopped), and the server, marked reported, stayed for good.
  const opts = { port: 0, pingIntervalMs: 100, pingMisses: 2 };
  let reloaded = false;
  const clock: Clock = {
    ...systemClock,
    setInterval(fn, ms) {
      if (ms !== opts.pingIntervalMs / PING_SLOTS) return systemClock.setInterval(fn, ms);  // the pinger's tick
      return systemClock.setInterval(() => {
        // Another storm's jobs fill this turn's budget: what the pinger gives waits.
        for (let i = 0; i < lifecycle.perTurn + 1; i++) lifecycle.run(() => undefined);
        fn();
        const m = sctx.proxy?.actor.getSnapshot().context.servers.get('quiet');
        if (!reloaded && m?.registration?.missedPings === -Infinity) {
          reloaded = true;
          sctx.proxy!.actor.send({ type: 'RELOAD', opts: resolveOptions(opts) });
        }
      }, ms);
    },
  };
  const links = (sctx.links = createServer((s) => s.on('error', () => undefined)));
  await new Promise<void>((r) => links.listen(0, LOCAL, r));
  const proxy = (sctx.proxy = await startProxy({ ...opts, clock }));
  const sock = await rawConnect(proxy.port);
  sctx.socks = [sock];
  // It never answers a PING.
  sock.write(frame({ type: MsgType.SETUP, id: 'quiet', privPolyId: 'qp', listenport: (links.address() as { port: number }).port }));
  await eventually(() => reloaded, 3000, 'the reload while its MISSED_PINGS waits');
  await eventually(() => !proxy.actor.getSnapshot().context.servers.has('quiet'), 3000, 'the silent server removed');
});

storm("an old server's close is answered with a reset, so its port holds no TIME_WAIT, with the lane busy too", async () => {
  // The reset came with the link's end, which a busy lane held a turn: Node's own FIN went first, and server.py,
  // which binds without SO_REUSEADDR, could not start again on its port for 60 s.
  const server = (sctx.links = createServer((s) => {
    s.on('error', () => undefined);
    setTimeout(() => s.end(), 20);
  }));
  await new Promise<void>((r) => server.listen(0, LOCAL, r));
  const port = (server.address() as { port: number }).port;
  for (let i = 0; i < 3; i++) {
    const socket = createConnection(port, LOCAL);
    // As the server's end is read, another storm fills the lane's budget.
    socket.on('end', () => {
      for (let j = 0; j < lifecycle.perTurn + 1; j++) lifecycle.run(() => undefined);
    });
    const conn = new Connection(socket, { wire: 'json' });
    socket.once('connect', () => (conn.resetOnPeerEnd = true));
    await new Promise<void>((done) => conn.messages$.subscribe({ error: () => done(), complete: () => done() }));
  }
  await sleep(100);
  const timeWait = execFileSync('ss', ['-tanH', 'state', 'time-wait', `( src 127.0.0.1:${port} )`]).toString().trim();
  assert.is(timeWait, '', `TIME_WAIT on the old server's port:\n${timeWait}`);
});

storm('requests routed to a link whose server closed it, while the link hears of it in a busy lane, go to another server as never sent', async () => {
  // Written to the closed connection they were dropped, then failed as a reset: with --retry-on without reset, errors
  // for requests no server ever saw.
  // b's side of its links: PINGs answered (a new link is checked with one), requests never.
  const linkSocks: Socket[] = [];
  const links = (sctx.links = createServer((s) => {
    s.on('error', () => undefined);
    linkSocks.push(s);
    const d = new FrameDecoder({ validate: false });
    s.on('data', (chunk: Buffer) => {
      for (const m of d.push(chunk).messages) if (m.type === MsgType.PING) s.write(frame({ type: MsgType.PONG, seq: m.seq }));
    });
  }));
  await new Promise<void>((r) => links.listen(0, LOCAL, r));
  const proxy = (sctx.proxy = await startProxy({ port: 0, retryOn: ['try-timeout'] }));
  const a = await startServer({ id: 'a', policy: 'P', revproc: proxy.port });
  sctx.closers.push(() => a.kill());
  const reg = await rawConnect(proxy.port);
  sctx.socks = [reg];
  const pings = new FrameDecoder({ validate: false });
  reg.on('data', (chunk: Buffer) => {
    for (const m of pings.push(chunk).messages) if (m.type === MsgType.PING) reg.write(frame({ type: MsgType.PONG, seq: m.seq }));
  });
  reg.write(frame({ type: MsgType.SETUP, id: 'b', privPolyId: 'P', listenport: (links.address() as { port: number }).port }));
  await eventually(() => proxy.pools().P?.serving.length === 2, 3000, 'a and b serving');
  const client = await connect({ revproc: proxy.port });
  sctx.closers.push(() => void client.close());
  // Another storm's jobs wait in the lane for ten turns; b closes its link, and requests come at once.
  for (let i = 0; i < 10 * lifecycle.perTurn; i++) lifecycle.run(() => undefined);
  for (const s of linkSocks) s.end();
  const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => client.send('P', `m${i}`)));
  const failed = outcomes.filter((o) => !o.ok).map((o) => (o.ok ? '' : o.error.code));
  assert.equal(failed, [], `${failed.length} of 20 failed`);
});

storm("the pinger takes a round a slot at a time: a tenth of the idle registrations PINGed each tenth of the interval, each once a round", async () => {
  // 3,000 idle registrations PINGed in one turn held the proxy's loop 20-38 ms every second (one flush, then their PONGs in one poll phase).
  const n = 40;
  const every = 1000;
  const clock = new ManualClock();
  // The links answer PINGs, as a server's do: every link open, no server down.
  const links = (sctx.links = createServer((sock) => {
    const d = new FrameDecoder({ validate: false });
    sock.on('error', () => undefined);
    sock.on('data', (chunk: Buffer) => {
      for (const m of d.push(chunk).messages) if (m.type === MsgType.PING) sock.write(encodeFrame({ type: MsgType.PONG, seq: m.seq }));
    });
  }));
  await new Promise<void>((r) => links.listen(0, LOCAL, r));
  const proxy = (sctx.proxy = await startProxy({ port: 0, pingIntervalMs: every, pingMisses: 1000, clock }));
  const socks = (sctx.socks = await Promise.all(Array.from({ length: n }, () => rawConnect(proxy.port))));
  const pings = new Array<number>(n).fill(0);
  socks.forEach((s, i) => {
    const d = new FrameDecoder({ validate: false });
    s.on('data', (chunk: Buffer) => {
      for (const m of d.push(chunk).messages) {
        if (m.type !== MsgType.PING) continue;
        pings[i]!++;
        s.write(encodeFrame({ type: MsgType.PONG, seq: m.seq }));
      }
    });
    s.write(frame({ type: MsgType.SETUP, id: `pg${i}`, privPolyId: 'pinged', listenport: (links.address() as { port: number }).port }));
  });
  // Taken (the first PING), and every link open.
  await eventually(() => pings.every((p) => p === 1) && (proxy.pools().pinged?.serving.length ?? 0) === n, 5000, `all ${n} registered and serving`);
  const perTick: number[] = [];
  // The first round PINGs none: each link was read from (its PONG) since the last, which says its server is alive.
  for (let round = 0; round < 4; round++) {
    const atStart = [...pings];
    for (let tick = 0; tick < PING_SLOTS; tick++) {
      const before = pings.reduce((a, b) => a + b, 0);
      clock.advance(every / PING_SLOTS);
      await sleep(15); // the PINGs written, read here
      if (round > 0) perTick.push(pings.reduce((a, b) => a + b, 0) - before);
    }
    if (round > 0) assert.ok(pings.every((p, i) => p === atStart[i]! + 1), `round ${round + 1}: each registration PINGed once (${pings.map((p, i) => p - atStart[i]!).join(' ')})`);
  }
  assert.ok(Math.max(...perTick) <= Math.ceil(n / PING_SLOTS), `PINGs a tick: ${perTick.join(' ')} (at most ${Math.ceil(n / PING_SLOTS)})`);
});

storm("the pinger's ticks are whole milliseconds that make up the interval: a round of 15 ms in ticks of 1.5 ran in ticks of 1 (timers take whole ones), PINGing half as often again", () => {
  assert.equal([1000, 500, 100, 30, 15, 25, 12, 13, 10].map(pingSlots), [10, 10, 10, 10, 5, 5, 6, 1, 10]);
  for (const every of [10, 13, 15, 25, 99, 100, 1000, 1234]) {
    const asked: number[] = [];
    const clock: Clock = { ...systemClock, setInterval: (fn, ms) => (asked.push(ms), systemClock.setInterval(fn, ms)) };
    const a = createActor(pinger, { input: { servers: new Map(), clock, every, misses: 3, proxy: { send() {} } } }).start();
    a.stop();
    assert.is(asked.length, 1);
    assert.ok(Number.isInteger(asked[0]) && every % asked[0]! === 0, `ping_interval ${every}: a tick of ${asked[0]} ms`);
  }
});

storm.run();
