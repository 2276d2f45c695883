/**
 * Fairness between the clients of one policy, over real processes: a client that pipelines
 * thousands of requests to a busy policy must not starve the others of that policy ("no peer can
 * hurt another"). The proxy's wait queue takes clients in turn and, when full, refuses the client
 * holding the most its own excess (actors/fair-queue.ts). Counts and order only, never wall times.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import type { Socket } from 'node:net';
import { connect, type Client } from '../actors/index.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { MsgType } from '../transport/messages.js';
import { eventually, LOCAL, rawConnect, sleep } from './helpers.js';
import { killAll, proxyProcess, revproxy, type Proc } from './procs.js';

/**
 * A raw client that pipelines `first` requests at once, then sends one more for each ACK until it
 * has sent `total`: it keeps the policy's wait queue full for as long as it sends.
 */
async function flood(port: number, name: string, first: number, total: number): Promise<{ sock: Socket; answers: string[]; seqs: Map<number, number> }> {
  const sock = await rawConnect(port);
  const answers: string[] = [];
  const seqs = new Map<number, number>();
  const decoder = new FrameDecoder();
  let sent = 0;
  const request = (): Buffer => encodeFrame({ type: MsgType.DATA, seq: sent, srcid: name, privPoliId: 'P', payload: `${name}-${sent++}` });
  sock.on('data', (chunk: Buffer) => {
    let more = 0;
    for (const m of decoder.push(chunk).messages) {
      if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
      answers.push(m.type === MsgType.ACK ? 'ACK' : m.code);
      seqs.set(m.seq!, (seqs.get(m.seq!) ?? 0) + 1);
      if (m.type === MsgType.ACK && sent + more < total) more++;
    }
    if (more) sock.write(Buffer.concat(Array.from({ length: more }, request)));
  });
  sock.write(Buffer.concat(Array.from({ length: first }, request)));
  return { sock, answers, seqs };
}

const count = (answers: string[], what: string): number => answers.filter((a) => a === what).length;

const fair = suite<{ sockets: Socket[]; clients: Client[] }>('fairness between the clients of one policy', { sockets: [], clients: [] });
fair.before.each((ctx) => {
  ctx.sockets = [];
  ctx.clients = [];
});
fair.after.each((ctx) => {
  for (const c of ctx.clients) c.destroy();
  for (const s of ctx.sockets) s.destroy();
  killAll();
});

/**
 * A proxy with 4 requests in flight per server and 64 waiting per policy, and one server of P
 * that works 2 requests at a time, 20 ms each: a flood of 1,000 fills both at once.
 */
async function busyPolicy(): Promise<{ proxy: Proc; port: number }> {
  const { proc: proxy, port } = await proxyProcess(['--log-level', 'warn', '--max-server-inflight', '4', '--queue-limit', '64']);
  const server = revproxy(['server', '-id', 's1', '-pp', 'P', '-listen', '0', '-revproc', String(port), '--concurrency', '2', '--delay', '20']);
  await server.waitFor(/Registered with the reverse proxy/, 15000);
  await sleep(150); // the upstream link's PING round trip
  return { proxy, port };
}

fair("during one client's flood, another client of the policy is answered, each request before most of the flood's backlog: on main the flood kept the whole queue and it was refused OVERLOADED, or waited behind all of it", async (ctx) => {
  const { proxy, port } = await busyPolicy();
  const heavy = await flood(port, 'heavy', 300, 500);
  ctx.sockets.push(heavy.sock);
  // The flood is read whole: 4 in flight, 64 waiting, the rest refused at once; each answer brings another request.
  await eventually(() => count(heavy.answers, 'OVERLOADED') >= 300 - 4 - 64 - 8, 15000, "the flood's excess refused");
  const good = await connect({ revproc: `${LOCAL}:${port}`, id: 'good' });
  ctx.clients.push(good);
  const outcomes: string[] = [];
  const heavyAcksAt: number[] = [];
  for (let i = 0; i < 5; i++) {
    const before = count(heavy.answers, 'ACK');
    outcomes.push(await good.request('P', `good-${i}`).then(() => 'ACK', (e: { code: string }) => e.code));
    heavyAcksAt.push(count(heavy.answers, 'ACK') - before);
  }
  assert.equal(outcomes, ['ACK', 'ACK', 'ACK', 'ACK', 'ACK'], `the good client's answers (the heavy client's answered meanwhile: ${heavyAcksAt.join(', ')})`);
  // Each waited for the server's window (4) and at most one turn of the flood, not for its 64 waiting.
  for (const n of heavyAcksAt) assert.ok(n <= 12, `the flood's answers while one good request waited: ${heavyAcksAt.join(', ')}`);
  assert.ok(count(heavy.answers, 'ACK') < 64, `the good client was done before most of the flood's backlog was served: ${count(heavy.answers, 'ACK')} answered`);
  // Each of the flood's requests is answered exactly once: those that made room for the good client OVERLOADED.
  await eventually(() => heavy.answers.length === 500, 20000, 'every flood request answered');
  assert.ok([...heavy.seqs.values()].every((n) => n === 1) && heavy.seqs.size === 500, 'each answered once');
  assert.is(count(heavy.answers, 'ACK') + count(heavy.answers, 'OVERLOADED'), 500, JSON.stringify(heavy.answers.filter((a) => a !== 'ACK' && a !== 'OVERLOADED')));
  assert.match(proxy.out.join('\n'), /Privacy policy P is at its limits; refused [\d,]+ request\(s\) with OVERLOADED/);
});

fair('two clients flooding one policy share its server: the one that came second is served in turn with the first, where on main it was refused until the first one\'s backlog was gone', async (ctx) => {
  const { port } = await busyPolicy();
  const first = await flood(port, 'first', 300, 500);
  ctx.sockets.push(first.sock);
  await eventually(() => count(first.answers, 'OVERLOADED') >= 300 - 4 - 64 - 8, 15000, "the first flood's excess refused");
  const second = await flood(port, 'second', 300, 500);
  ctx.sockets.push(second.sock);
  const acksBefore = count(first.answers, 'ACK');
  await eventually(() => count(second.answers, 'ACK') + count(first.answers, 'ACK') - acksBefore >= 40, 20000, '40 more answered');
  const secondAcks = count(second.answers, 'ACK');
  const firstAcks = count(first.answers, 'ACK') - acksBefore;
  // The second client took half the queue from the first (its newest, answered OVERLOADED) and half the turns.
  assert.ok(secondAcks >= 12, `of the 40 answered next, the second client had ${secondAcks}, the first ${firstAcks}`);
  await eventually(() => first.answers.length === 500 && second.answers.length === 500, 20000, 'every request answered');
  for (const f of [first, second]) assert.ok(f.seqs.size === 500 && [...f.seqs.values()].every((n) => n === 1), 'each answered once');
});

fair.run();
