/**
 * The old system's programs many at once through our proxy (issue 15).
 *
 * The stand-ins in spec/fixtures/ behave like the old system's server.py and
 * client.py in every point that hurt here (each fixture's docstring says how
 * that was checked against the real programs, side by side): an old server
 * sends its setup before it listens, serves one connection at a time under a
 * lock only the peer's close releases, and breaks for good on a read that is
 * not one whole object or on a reset; an old client reads `payload` of
 * whatever comes back. Before the fix, the real programs in this topology
 * lost 1 server in 4 to 1 in 20 at start-up and 538 of 1000 requests with
 * every server dropped; this spec shows neither happens.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Logger, memorySink, startProxy, startServer, type LogRecord, type ProxyHandle, type ServerHandle } from '../actors/index.js';
import { eventually, LOCAL, tempDir } from './helpers.js';
import { killAll, python, type Proc } from './procs.js';

interface Ctx {
  proxy: ProxyHandle;
  logs: LogRecord[];
  /** Answers per policy and member, as the proxy's observer sees them. */
  answered: Map<string, Map<string, number>>;
  /** Tries retried elsewhere, per policy, as the observer sees them (log lines of repeated retries are summarised). */
  retried: Map<string, number>;
  servers: ServerHandle[];
}
const ctx = {} as Ctx;

const CLIENTS = 20;
const REQUESTS = 50;

async function startOld(id: string, policy: string): Promise<Proc> {
  const p = python('old_server', ['-id', id, '-pp', policy, '-listen', '0', '-revproc', String(ctx.proxy.port)]);
  await p.waitFor(/Connecting to the reverse proxy on port/);
  return p;
}

function serving(policy: string): string[] {
  return ctx.proxy.pools()[policy]?.serving ?? [];
}

function noBreakage(procs: Proc[]): void {
  for (const p of procs) assert.not.ok(p.out.some((l) => l.startsWith('BROKEN')), `an old server broke:\n${p.out.join('\n')}`);
}

function deregistered(): LogRecord[] {
  return ctx.logs.filter((l) => l.event === 'deregister');
}

/**
 * CLIENTS old clients at once, half on each policy, each sending its own
 * packet REQUESTS times on its connection, one after the other's answer.
 */
async function oldClients(policies: [string, string]): Promise<{ correct: number; wrong: string[]; failed: string[] }> {
  const dir = tempDir('oldwire-load-');
  const clients: Proc[] = [];
  for (let i = 0; i < CLIENTS; i++) {
    const file = join(dir, `${i}.json`);
    writeFileSync(file, JSON.stringify({ type: '0', srcid: String(i), privPoliId: policies[i % 2], payload: `load${i}` }));
    clients.push(python('old_client', ['-id', String(i), '-revproc', String(ctx.proxy.port), '-pkt', file, '-repeat', String(REQUESTS)]));
  }
  const codes = await Promise.all(clients.map((c) => c.exited));
  let correct = 0;
  const wrong: string[] = [];
  const failed: string[] = [];
  clients.forEach((c, i) => {
    correct += c.out.filter((l) => l === 'Hash of payload is correct').length;
    for (let j = 0; j < c.out.length; j++) if (c.out[j] === 'Hash of payload is not correct') wrong.push(c.out[j - 1]!);
    if (codes[i] !== 0) failed.push(`client ${i} exited ${codes[i]}:\n${c.out.slice(-5).join('\n')}`);
  });
  return { correct, wrong, failed };
}

/**
 * Each member's share of its policy's answers: a round robin gives each the
 * same, give or take one - and one more per try retried elsewhere (a try
 * that timed out on a machine too loaded to answer within the try timeout).
 */
function assertRoundRobin(policy: string, ids: string[]): void {
  const counts = ids.map((id) => ctx.answered.get(policy)?.get(id) ?? 0);
  const total = counts.reduce((a, b) => a + b, 0);
  const retried = ctx.retried.get(policy) ?? 0;
  assert.is(total, (CLIENTS / 2) * REQUESTS, `policy ${policy}: every request answered by a member (${counts})`);
  assert.ok(Math.max(...counts) - Math.min(...counts) <= 1 + retried, `policy ${policy}: members ${ids} answered ${counts} (${retried} retried): a round robin, not a pile-up`);
}

const load = suite<Ctx>('the old programs under load', ctx);

load.before.each(async () => {
  ctx.logs = [];
  ctx.answered = new Map();
  ctx.retried = new Map();
  ctx.servers = [];
  ctx.proxy = await startProxy({
    port: 0,
    logger: new Logger('proxy', memorySink(ctx.logs), 'warn'),
    observer: {
      answered(policy, member, outcome) {
        if (outcome !== 'ok' || member === undefined) return;
        let m = ctx.answered.get(policy);
        if (!m) ctx.answered.set(policy, (m = new Map()));
        m.set(member, (m.get(member) ?? 0) + 1);
      },
      retried(policy) {
        ctx.retried.set(policy, (ctx.retried.get(policy) ?? 0) + 1);
      },
    },
  });
});

load.after.each(async () => {
  killAll();
  for (const s of ctx.servers) await s.stop();
  await ctx.proxy.stop();
});

load(`4 old servers (2 policies) and ${CLIENTS} old clients at once, ${REQUESTS} requests each: all correct, round robin per policy, no server dropped`, async () => {
  const olds = await Promise.all([startOld('100', '111'), startOld('300', '111'), startOld('200', '222'), startOld('400', '222')]);
  await eventually(() => serving('111').length === 2 && serving('222').length === 2, 5000, 'all 4 old servers serving');
  const r = await oldClients(['111', '222']);
  assert.equal(r.failed, [], r.failed.join('\n'));
  assert.equal(r.wrong, [], `wrong answers:\n${r.wrong.slice(0, 5).join('\n')}`);
  assert.is(r.correct, CLIENTS * REQUESTS);
  assertRoundRobin('111', ['100', '300']);
  assertRoundRobin('222', ['200', '400']);
  // The old servers' own output shows their share too.
  for (const p of olds) assert.is(p.out.filter((l) => l.startsWith('Sending a message to the client')).length, (CLIENTS / 2) * REQUESTS / 2);
  assert.equal(deregistered(), []);
  assert.equal([serving('111').sort(), serving('222').sort()], [['100', '300'], ['200', '400']]);
  noBreakage(olds);
});

load(`a pool mixing old servers with this project's (one of them on the old wire, answering several connections at once): ${CLIENTS} old clients, ${REQUESTS} requests each, all correct`, async () => {
  const olds = await Promise.all([startOld('100', '111'), startOld('200', '222')]);
  for (const [id, policy, wire] of [['101', '111', undefined], ['102', '111', 'json'], ['201', '222', undefined], ['202', '222', 'json']] as const) {
    ctx.servers.push(await startServer({ id, policy, listenPort: 0, proxy: { host: LOCAL, port: ctx.proxy.port }, wire }));
  }
  await eventually(() => serving('111').length === 3 && serving('222').length === 3, 5000, 'all 6 servers serving');
  const r = await oldClients(['111', '222']);
  assert.equal(r.failed, [], r.failed.join('\n'));
  assert.equal(r.wrong, [], `wrong answers:\n${r.wrong.slice(0, 5).join('\n')}`);
  assert.is(r.correct, CLIENTS * REQUESTS);
  assertRoundRobin('111', ['100', '101', '102']);
  assertRoundRobin('222', ['200', '201', '202']);
  assert.equal(deregistered(), []);
  noBreakage(olds);
});

load('the old topology started 20 times in a row: no server lost at registration', async () => {
  await ctx.proxy.stop();
  let refused = 0;
  for (let round = 1; round <= 20; round++) {
    ctx.logs = [];
    ctx.proxy = await startProxy({ port: 0, logger: new Logger('proxy', memorySink(ctx.logs), 'debug') });
    const olds = await Promise.all([startOld('100', '111'), startOld('300', '111'), startOld('200', '222'), startOld('400', '222')]);
    await eventually(
      () => (serving('111').length === 2 && serving('222').length === 2) || deregistered().length > 0,
      5000,
      `round ${round}: all 4 old servers serving`,
    );
    assert.equal(deregistered().map((l) => l.msg), [], `round ${round}`);
    refused += ctx.logs.filter((l) => l.event === 'old_server_not_listening').length;
    for (const p of olds) p.kill('SIGKILL');
    await Promise.all(olds.map((p) => p.exited));
    await ctx.proxy.stop();
  }
  // Not asserted (it depends on timing): how often an old server's port was not listening yet when first dialed.
  console.log(`    (20 rounds, 80 old servers: ${refused} first dial(s) refused and tried again)`);
  ctx.logs = [];
  ctx.proxy = await startProxy({ port: 0 });
});

load.run();
