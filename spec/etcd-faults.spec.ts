/**
 * What an etcd in trouble does to a fleet, as real processes against Debian's etcd: an etcd out
 * of space (its NOSPACE alarm: every write refused, reads answered), an endpoints list with a
 * member that is down (connection refused) beside one that serves, and etcd stopped. Where the
 * registry answers, the proxies must say what is wrong once, in words an operator acts on, and
 * not take it for an outage nor read the whole registry again and again; where it is away, a
 * server says so when the reason changes, not at every try.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../bench/procs.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { openEtcd, type Etcd3 } from '../registry/etcd.js';
import { resolveRegistry } from '../registry/options.js';
import { eventually, sleep } from './helpers.js';
import { killAll, revproxy, type Proc } from './procs.js';

const run = promisify(execFile);
const ctx: { etcd?: Etcd; raw?: Etcd3; n: number } = { n: 0 };
const TTL = '2';

/** Its /metrics as name{labels} -> value. */
async function metrics(admin: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const line of (await (await fetch(`${admin}metrics`)).text()).split('\n')) {
    const m = /^(revproxy_registry_\w+(?:\{[^}]*\})?) (\S+)$/.exec(line);
    if (m) out.set(m[1]!, Number(m[2]));
  }
  return out;
}

async function proxyProc(registry: string, prefix: string): Promise<{ proc: Proc; admin: string }> {
  const proc = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--registry', registry, '--registry-prefix', prefix, '--registry-ttl', TTL]);
  const admin = (await proc.waitFor(/Admin endpoint on (http:\S+)/))[1]!;
  await proc.waitFor(/Read \d+ server entr/);
  return { proc, admin };
}

const lines = (p: Proc, re: RegExp): string[] => p.out.filter((l) => re.test(l));

const full = suite('etcd out of space');
full.before(async () => {
  // The smallest quota etcd takes without complaint; 40 values of 100 kB fill it.
  ctx.etcd = await startEtcd({ args: ['--quota-backend-bytes', String(4 * 1024 * 1024)] });
  ctx.raw = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint] }));
});
full.after.each(() => killAll());
full.after(async () => {
  ctx.raw?.close();
  await ctx.etcd?.remove();
  killEtcds();
});

full('a proxy whose key etcd refuses for want of space says so once, with what to do, in its log and /readyz; it does not take etcd for unreachable, nor read the registry again; freed, it is advertised again', async () => {
  const prefix = '/full/';
  const flags = ['--registry', ctx.etcd!.url, '--registry-prefix', prefix, '--registry-ttl', TTL];
  const early = revproxy(['server', '--id', 'a', '--pp', '111', ...flags]);
  await early.waitFor(/Registered in the registry/);
  const value = 'x'.repeat(100_000);
  let filled = false;
  // etcd checks its quota against its database as last committed (every 100 ms, --backend-batch-interval): on a quick
  // machine a hundred puts all went in before a commit, and none was refused. Written a few at a time, room for commits.
  for (let i = 0; i < 1000 && !filled; i++) {
    await ctx.raw!.put(`/filler/${i}`).value(value).exec().catch(() => (filled = true));
    if (i % 10 === 9) await sleep(50);
  }
  assert.ok(filled, 'etcd refused a write: out of space');
  const { proc, admin } = await proxyProc(ctx.etcd!.url, prefix);
  const server = revproxy(['server', '--id', 'b', '--pp', '111', ...flags]);
  // Its key refused at once, then every retry (up to 2 s apart) for 6 s.
  await proc.waitFor(/This proxy is not in the registry/, 8000);
  await sleep(6000);
  const said = lines(proc, /This proxy is not in the registry/);
  assert.is(said.length, 1, `one line, not one per retry:\n${proc.out.join('\n')}`);
  assert.match(said[0]!, /etcd refused to write its key \/full\/proxies\/127\.0\.0\.1:\d+ \(etcd at etcd:\/\/127\.0\.0\.1:\d+ is out of space and refuses every write \(etcdserver: mvcc: database space exceeded\): .*etcdctl alarm disarm/);
  const ready = (await (await fetch(`${admin}readyz`)).json()) as { ready: boolean; warnings?: Array<{ code: string; message: string }> };
  assert.ok(ready.ready, JSON.stringify(ready));
  assert.equal(ready.warnings?.map((w) => w.code), ['REGISTRY_NOT_ADVERTISED'], JSON.stringify(ready));
  // etcd answered every read throughout: the proxy never said otherwise, and read the registry once.
  assert.equal(lines(proc, /registry is unreachable|Read the registry again/), [], proc.out.join('\n'));
  const m = await metrics(admin);
  assert.is(m.get('revproxy_registry_up'), 1);
  assert.is(m.get('revproxy_registry_advertised'), 0);
  assert.is(m.get('revproxy_registry_syncs_total{reason="reconnect"}'), 0);
  // The server that registered before keeps its key (a keepalive is no write); the new one says why it is not registered.
  assert.match(lines(server, /Not registered in the registry/)[0] ?? server.out.join('\n'), /is out of space and refuses every write/);
  assert.not.ok(early.out.some((l) => /Not registered/.test(l)), early.out.join('\n'));
  // Freed as the words say: the proxy is advertised again and says so, the new server registers.
  const mark = proc.out.length;
  await ctx.raw!.delete().prefix('/filler/').exec();
  const revision = (await ctx.raw!.get('/none').exec()).header.revision;
  const etcdctl = (...args: string[]) => run('etcdctl', ['--endpoints', ctx.etcd!.endpoint, ...args], { env: { ...process.env, ETCDCTL_API: '3' } });
  await etcdctl('compaction', revision);
  await etcdctl('defrag');
  await etcdctl('alarm', 'disarm');
  await eventually(() => lines(proc, /Advertised this proxy in the registry/).some((l) => proc.out.indexOf(l) >= mark), 8000, 'the proxy advertised');
  await server.waitFor(/Registered in the registry/, 8000);
  await eventually(async () => !('warnings' in ((await (await fetch(`${admin}readyz`)).json()) as object)), 3000, '/readyz without a warning');
});

full.run();

const member = suite('etcd members down');
member.before(async () => {
  ctx.etcd = await startEtcd();
});
member.after.each(() => killAll());
member.after(async () => {
  await ctx.etcd?.remove();
  killEtcds();
});

member('a member that refuses connections beside one that serves: the proxy is not sent there again and again, so it reads the registry again a few times, not every second or two', async () => {
  const registry = `etcd://127.0.0.1:${await freePort()},${ctx.etcd!.endpoint}`;
  const prefix = '/dead/';
  const server = revproxy(['server', '--id', 's', '--pp', '111', '--registry', registry, '--registry-prefix', prefix, '--registry-ttl', TTL]);
  await server.waitFor(/Registered in the registry/);
  const { proc, admin } = await proxyProc(registry, prefix);
  await sleep(30_000);
  const m = await metrics(admin);
  const reads = m.get('revproxy_registry_syncs_total{reason="reconnect"}')!;
  // etcd3 sent a watch or a keepalive to the dead member whenever its breaker let one call through (each second): 34 reads a minute.
  // Left alone longer each time it fails again while the other answers (1, 2, 4 ... 30 s): 5-6 in 30 s, most in the first seconds.
  assert.ok(reads <= 12, `${reads} reads of the whole registry in 30 s:\n${lines(proc, /Read the registry again/).join('\n')}`);
  assert.is(m.get('revproxy_registry_up'), 1);
  assert.is(m.get('revproxy_registry_advertised'), 1);
  assert.equal(lines(proc, /registry is unreachable/), []);
  assert.equal(lines(server, /Not registered/), []);
});

member('etcd stopped: the proxy reports its key gone (revproxy_registry_advertised 0) once a TTL passed without a keepalive answered, not two; back, 1 again', async () => {
  // The lease is given up after two TTLs (etcd may yet answer), but etcd, if it runs, lets the key go a TTL after it last
  // renewed it: /metrics said the proxy was in the registry for a second TTL in which clients could not find it.
  const ttl = 3;
  const proc = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--registry', ctx.etcd!.url, '--registry-prefix', '/lapse/', '--registry-ttl', String(ttl)]);
  const admin = (await proc.waitFor(/Admin endpoint on (http:\S+)/))[1]!;
  await proc.waitFor(/Advertised this proxy in the registry/);
  assert.is((await metrics(admin)).get('revproxy_registry_advertised'), 1);
  await sleep(1500);
  const stopped = Date.now();
  await ctx.etcd!.stop();
  await eventually(async () => (await metrics(admin)).get('revproxy_registry_advertised') === 0, 3 * ttl * 1000, 'advertised 0');
  const after = Date.now() - stopped;
  // At most a TTL after the last keepalive answered (a third of a TTL before the stop at most), with room for a loaded machine;
  // two TTLs before (at least 5 s of the 6 here).
  assert.ok(after < (ttl + 1) * 1000, `advertised 0 ${after} ms after etcd stopped, its TTL ${ttl} s`);
  await ctx.etcd!.start();
  await eventually(async () => (await metrics(admin)).get('revproxy_registry_advertised') === 1, 15_000, 'advertised again');
  assert.equal(lines(proc, /error|warn/i).filter((l) => /lapsed|may be gone/.test(l)), [], 'the lapse is said at debug only');
});

member('a proxy frozen past its TTL (SIGSTOP, a paused VM) says, once it runs again, that etcd let its key go and that it is advertised again: it said nothing of either but the stall', async () => {
  const proc = revproxy(['proxy', '--port', '0', '--registry', ctx.etcd!.url, '--registry-prefix', '/frozen/', '--registry-ttl', TTL]);
  await proc.waitFor(/Advertised this proxy in the registry as/);
  proc.child.kill('SIGSTOP');
  await sleep(Number(TTL) * 1000 + 3000).finally(() => proc.child.kill('SIGCONT'));
  await proc.waitFor(/Advertised this proxy in the registry again/, 10_000);
  const gone = lines(proc, /registry key/);
  assert.is(gone.length, 1, gone.join('\n'));
  assert.match(gone[0]!, /warning: This proxy's registry key \/frozen\/proxies\/\S+ is gone \(etcd at \S+ let the lease expire: .*\): clients that find their proxies in etcd do not find this one until it is written again\. Serving on, and writing it again$/);
});

member("a server frozen past its TTL whose id another server took meanwhile says so when it runs again: two servers share the id (it said the other's key had stayed alive past the wait for a restart's)", async () => {
  const flags = ['--registry', ctx.etcd!.url, '--registry-prefix', '/twins/', '--registry-ttl', TTL];
  const first = revproxy(['server', '--id', 'twin', '--pp', '111', '--listen', '0', ...flags]);
  await first.waitFor(/Registered in the registry/);
  first.child.kill('SIGSTOP');
  const second = revproxy(['server', '--id', 'twin', '--pp', '222', '--listen', '0', ...flags]);
  try {
    await second.waitFor(/Registered in the registry/, 15_000);
  } finally {
    first.child.kill('SIGCONT');
  }
  assert.is(await first.exited, 1, first.out.join('\n'));
  assert.match(first.out.join('\n'), /DUPLICATE_ID\): server id twin was taken by a live server at \S+ while this server's lease had lapsed \(it could not renew it within its TTL: frozen, or cut off from etcd\): two servers are configured with id twin; give one another id/);
});

member('a server that cannot reach etcd says so when the reason changes, then every 30 s, not at every try; back, it says it registered again', async () => {
  const server = revproxy(['server', '--id', 's', '--pp', '111', '--registry', ctx.etcd!.url, '--registry-prefix', '/away/', '--registry-ttl', TTL]);
  await server.waitFor(/Registered in the registry/);
  await ctx.etcd!.stop();
  // Its lease given up two TTLs in (4 s), then tries 0.25, 0.5, 1, 2, 2, 2 ... s apart: a warn line each, 8 in 14 s.
  await sleep(14_000);
  const said = lines(server, /Not registered in the registry/);
  assert.ok(said.length >= 1 && said.length <= 3, `${said.length} lines:\n${said.join('\n')}`);
  assert.ok(said.some((l) => /connection refused/.test(l)), said.join('\n'));
  // Its lease given up for want of keepalives is said by why they failed: etcd stopped let no lease expire.
  assert.not.ok(server.out.some((l) => /let the lease expire/.test(l)), said.join('\n'));
  await ctx.etcd!.start();
  await server.waitFor(/Registered again in the registry/, 8000);
});

member.run();

