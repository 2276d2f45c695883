/**
 * An operator drains a member and enables it again (issue 19): the proxy's
 * MEMBER_DRAIN and MEMBER_ENABLE events, as the inspector's buttons send them.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { Logger, memorySink, runClient, sha1Hex, startProxy, startServer, type LogRecord, type Packet, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { eventually, LOCAL } from './helpers.js';

interface Ctx {
  proxy?: ProxyHandle;
  servers: ServerHandle[];
  logs: LogRecord[];
}
const ctx: Ctx = { servers: [], logs: [] };

const d = suite('member drain and enable');
d.after.each(async () => {
  for (const s of ctx.servers.splice(0)) s.kill();
  ctx.proxy?.kill();
  ctx.proxy = undefined;
  ctx.logs = [];
});

async function proxyWith(...ids: string[]): Promise<ProxyHandle> {
  ctx.proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(ctx.logs), 'info') });
  for (const id of ids) await addServer(id);
  return ctx.proxy;
}

async function addServer(id: string, handler?: (payload: unknown) => Promise<string>): Promise<ServerHandle> {
  const s = await startServer({ id, policy: 'P', listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy!.port }, handler: handler as never });
  ctx.servers.push(s);
  await eventually(() => ctx.proxy!.pools().P?.serving.includes(id) ?? false, 3000, `${id} serving`);
  return s;
}

const packets = (tag: string, n: number): Packet[] => Array.from({ length: n }, (_, i) => ({ srcid: 'c', privPoliId: 'P', payload: `${tag}${i}` }));
const send = (tag: string, n: number) => runClient({ id: 'c', proxy: { host: LOCAL, port: ctx.proxy!.port }, packets: packets(tag, n), window: n });
const memberOf = (id: string) => ctx.proxy!.actor.getSnapshot().context.servers.get(id)!;

d('a drained member gets no new requests, answers the ones it has, and stays registered; enabled, it takes its turn again', async () => {
  const proxy = await proxyWith('a');
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  await addServer('b', async (payload) => {
    await gate;
    return sha1Hex(String(payload));
  });
  const first = send('first', 10);
  await eventually(() => memberOf('b').traffic.inflight.size === 5, 3000, 'half of the first batch held at b');
  proxy.actor.send({ type: 'MEMBER_DRAIN', member: 'b', by: 'spec' });
  assert.is(proxy.pools().P!.states.b, 'drained');
  const second = await send('second', 10);
  assert.ok(second.every((r) => r.correct && r.server === 'a'), `every new request went to a: ${JSON.stringify(second.map((r) => r.server ?? r.error))}`);
  assert.is(memberOf('b').traffic.inflight.size, 5, 'b still holds what it had');
  open();
  const done = await first;
  assert.ok(done.every((r) => r.correct), JSON.stringify(done.filter((r) => !r.correct)));
  assert.is(done.filter((r) => r.server === 'b').length, 5, 'b answered the requests it had when drained');
  assert.equal(proxy.pools().P!.members, ['a', 'b'], 'b is still registered, in its place in the rotation');
  proxy.actor.send({ type: 'MEMBER_ENABLE', member: 'b', by: 'spec' });
  assert.is(proxy.pools().P!.states.b, 'serving');
  const third = await send('third', 10);
  assert.is(third.filter((r) => r.correct && r.server === 'b').length, 5, 'enabled, b gets every other request again');
  const lines = ctx.logs.filter((l) => l.event === 'member_drain' || l.event === 'member_enable');
  assert.equal(lines.map((l) => [l.level, l.event, l.id, l.by]), [['info', 'member_drain', 'b', 'spec'], ['info', 'member_enable', 'b', 'spec']]);
  assert.match(lines[0]!.msg, /Drained server id b of privacy policy P \(asked by spec\): it takes no new requests, finishes the 5 it has, and stays registered$/);
});

d('with every member drained, requests are refused NO_SERVER until one is enabled; unknown members are logged, not fatal', async () => {
  const proxy = await proxyWith('a');
  proxy.actor.send({ type: 'MEMBER_DRAIN', member: 'a', by: '127.0.0.1:5000 (inspector)' });
  assert.match(ctx.logs.find((l) => l.event === 'member_drain')!.msg, /no other server of privacy policy P is serving/);
  const refused = await send('x', 3);
  assert.equal(refused.map((r) => r.error), ['NO_SERVER', 'NO_SERVER', 'NO_SERVER']);
  // It said "no live server serves privacy policy P" alone: read as no server registered (revproxy load said to start one).
  assert.is(refused[0]!.message, "no live server serves privacy policy P: its one server, a, is drained");
  proxy.actor.send({ type: 'MEMBER_DRAIN', member: 'nobody', by: 'spec' });
  const unknown = ctx.logs.find((l) => l.event === 'member_unknown')!;
  assert.is(unknown.level, 'warn');
  assert.match(unknown.msg, /Cannot drain server id nobody \(asked by spec\): no server of that id is registered/);
  proxy.actor.send({ type: 'MEMBER_ENABLE', member: 'a', by: 'spec' });
  const served = await send('y', 3);
  assert.ok(served.every((r) => r.correct && r.server === 'a'));
  assert.is(proxy.actor.getSnapshot().status, 'active');
});

d.run();
