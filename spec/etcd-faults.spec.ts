/**
 * What an etcd in trouble does to a fleet, as real processes against Debian's etcd: an endpoints
 * list with a member that is down (connection refused) beside one that serves. The registry
 * answers: the proxies must not take it for an outage nor read the whole registry again and again.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { freePort } from '../bench/procs.js';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { sleep } from './helpers.js';
import { killAll, revproxy, type Proc } from './procs.js';

const ctx: { etcd?: Etcd } = {};
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

const member = suite('an etcd member down in the endpoints list');
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
  // Left alone longer each time it fails again while the other answers (1, 2, 4 ... 30 s): 6-8 in 30 s, most in the first seconds.
  console.log(`  ${reads} reads of the whole registry in 30 s`);
  assert.ok(reads <= 12, `${reads} reads of the whole registry in 30 s:\n${lines(proc, /Read the registry again/).join('\n')}`);
  assert.is(m.get('revproxy_registry_up'), 1);
  assert.is(m.get('revproxy_registry_advertised'), 1);
  assert.equal(lines(proc, /registry is unreachable/), []);
  assert.equal(lines(server, /Not registered/), []);
});

member.run();
