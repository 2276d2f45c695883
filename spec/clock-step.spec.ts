/**
 * The wall clock steps under running programs (NTP stepping at boot, a VM
 * resumed or migrated, `date -s`): real processes on libfaketime
 * (spec/faketime.ts), their wall clock moved an hour or a day mid-run while
 * their monotonic clock runs on. Waits, deadlines and durations must not
 * move with it.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { killEtcds, startEtcd, type Etcd } from '../scenario/etcd.js';
import { openEtcd, type Etcd3 } from '../registry/etcd.js';
import { resolveRegistry } from '../registry/options.js';
import { eventually, sleep } from './helpers.js';
import { steppedClock } from './faketime.js';
import { killAll, revproxy, type Proc } from './procs.js';

const ctx: { etcd?: Etcd; raw?: Etcd3; n: number } = { n: 0 };
const test = suite('clock step');
const TTL = '2';

test.before(async () => {
  ctx.etcd = await startEtcd();
  ctx.raw = await openEtcd(resolveRegistry({ endpoints: [ctx.etcd.endpoint] }));
});

test.after.each(() => killAll());

test.after(async () => {
  ctx.raw?.close();
  await ctx.etcd?.remove();
  killEtcds();
});

/** A prefix of the test's own, and the flags that put a proxy or server on it. */
function fleet(): { prefix: string; flags: string[] } {
  const prefix = `/clock${++ctx.n}/`;
  return { prefix, flags: ['--registry', ctx.etcd!.url, '--registry-prefix', prefix, '--registry-ttl', TTL] };
}

/** Waits for a line matching `re` that `p` printed after its first `from` lines; fails, with its output, if `p` exits first. */
async function printed(p: Proc, re: RegExp, from: number, what: string, ms = 8000): Promise<void> {
  const seen = (): boolean => p.out.slice(from).some((l) => re.test(l));
  await eventually(() => seen() || p.child.exitCode !== null, ms, what).catch(() => undefined);
  assert.ok(seen(), `${what}: not printed${p.child.exitCode === null ? ` within ${ms} ms` : ` (it exited, ${p.child.exitCode})`}; its output:\n${p.out.join('\n')}`);
}

test('a server waiting out an earlier lease on its id keeps waiting when the wall clock steps forward, and registers once it ends', async () => {
  const { prefix, flags } = fleet();
  const clock = steppedClock();
  // Its previous run's key (SIGKILLed a moment ago): on a lease that lives on for a while.
  const lease = ctx.raw!.lease(Number(TTL));
  await lease.put(`${prefix}servers/7`).value('{"policy":"111","address":"127.0.0.1","port":1}').exec();
  const server = revproxy(['server', '--id', '7', '--pp', '111', ...flags], { env: clock.env });
  await printed(server, /waiting for the lease to end/, 0, 'the server waits for the lease');
  clock.step('+1h');
  const mark = server.out.length;
  await printed(server, /waiting for the lease to end/, mark, 'the server still waiting after the step');
  await lease.revoke();
  await printed(server, /Registered in the registry/, mark, 'the server registered once the lease ended');
  server.kill();
  assert.is(await server.exited, 0);
});

test('etcd away while the wall clock steps: /readyz counts the outage in real seconds; once etcd is back the proxy reads it again and the server registers again, within seconds', async () => {
  const { flags } = fleet();
  const clock = steppedClock();
  // At debug: each try of a lasting failure (the breaker's included) is a debug line, the warn lines say it when it changes and every 30 s.
  const server = revproxy(['server', '--id', '8', '--pp', '111', '--log-level', 'debug', ...flags], { env: clock.env });
  const proxy = revproxy(['proxy', '--port', '0', '--admin', '127.0.0.1:0', '--log-level', 'debug', ...flags], { env: clock.env });
  const admin = (await proxy.waitFor(/Admin endpoint on (http:\S+)/))[1]!;
  await printed(server, /Registered in the registry/, 0, 'the server registered');
  await printed(proxy, /Advertised this proxy/, 0, 'the proxy advertised');
  await ctx.etcd!.stop();
  // etcd's client stops calling an etcd that failed several calls in a row (its circuit breaker), and tries again after a second.
  await printed(proxy, /failed several calls in a row/, 0, 'the proxy\'s etcd client gave up calling for a while');
  await printed(server, /failed several calls in a row/, 0, 'the server\'s etcd client gave up calling for a while');
  // /readyz counts the outage in real seconds, not the hour the wall clock jumped.
  clock.step('+1h');
  const ready = await (await fetch(`${admin}readyz`)).text();
  const downFor = Number(/unreachable for (-?\d+) s/.exec(ready)?.[1]);
  assert.ok(downFor >= 0 && downFor < 60, `/readyz: ${ready}`);
  clock.step('-1h');
  const marks = [proxy.out.length, server.out.length];
  await ctx.etcd!.start();
  await printed(proxy, /Read the registry again/, marks[0]!, 'the proxy read the registry again');
  await printed(server, /Registered again in the registry/, marks[1]!, 'the server registered again');
});

test('the inspector counts how long a member has been serving across a wall-clock step, as the page shows it', async () => {
  const clock = steppedClock();
  const proxy = revproxy(['proxy', '--port', '0', '--inspect', '0'], { env: clock.env });
  const port = (await proxy.waitFor(/Running the reverse proxy on port (\d+)/))[1]!;
  const inspector = (await proxy.waitFor(/Inspector for proxy on (http:\S+)/))[1]!;
  const server = revproxy(['server', '--id', '9', '--pp', '111', '--revproc', port], { env: clock.env });
  await printed(server, /Registered with the reverse proxy/, 0, 'the server registered');
  /** How long the page would say the member has been serving: the server's `now` minus the member's `since`. */
  const servingFor = async (): Promise<number> => {
    const s = (await (await fetch(`${inspector}api/state`)).json()) as { meta: { now: number }; pools: Array<{ members: Array<{ id: string; state: string; since?: number }> }> };
    const m = s.pools.flatMap((p) => p.members).find((x) => x.id === '9' && x.state === 'serving');
    return m?.since === undefined ? NaN : s.meta.now - m.since;
  };
  let before = NaN;
  for (let i = 0; i < 100 && !(before >= 0); i++) before = await servingFor().then((ms) => (ms >= 0 ? ms : sleep(20).then(() => ms)));
  assert.ok(before >= 0, `the member serving, as the inspector sees it (${before})`);
  clock.step('+1h');
  const after = await servingFor();
  assert.ok(after >= 0 && after < 60_000, `serving for ${after} ms after an hour's step forward`);
  clock.step('-1d');
  const back = await servingFor();
  assert.ok(back >= 0 && back < 60_000, `serving for ${back} ms after a day's step back`);
});

test.run();
