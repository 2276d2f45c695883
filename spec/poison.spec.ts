/**
 * A request that ends every server it reaches (its handler crashes on it): `max_resets`
 * (`--max-resets`, 2) bounds the servers one request may take down. Real processes: a proxy, four
 * servers of one policy running a handler module that exits the process on one payload (as a
 * handler would on input it cannot take: an uncaught throw in a callback, an allocation past the
 * heap, a native crash), and the library's client.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runClient } from '../actors/index.js';
import { eventually, LOCAL, sleep, tempDir } from './helpers.js';
import { killAll, proxyProcess, revproxy, type Proc } from './procs.js';

const test = suite('a request that crashes its servers');
test.after.each(killAll);

/** Exits with 70 on a payload starting `poison`; answers the SHA1 of any other, as the default handler. */
const HANDLER = `import { createHash } from 'node:crypto';
export default async function (payload) {
  if (String(payload).startsWith('poison')) process.exit(70);
  return createHash('sha1').update(String(payload)).digest('hex');
}
`;

interface Pool {
  proxy: Proc;
  port: number;
  admin: string;
  servers: Proc[];
}

/** A proxy run with `args` and four servers of policy P with the crashing handler, all registered. */
async function pool(args: string[]): Promise<Pool> {
  const dir = tempDir('poison-');
  const handler = join(dir, 'crash-on-poison.mjs');
  writeFileSync(handler, HANDLER);
  const { proc: proxy, port } = await proxyProcess(['--admin', '127.0.0.1:0', ...args]);
  const admin = (await proxy.waitFor(/Admin endpoint on (http:\S+)/))[1]!;
  const servers = ['s1', 's2', 's3', 's4'].map((id) => revproxy(['server', '--id', id, '--pp', 'P', '--listen', '0', '--revproc', String(port), '--handler', handler]));
  await eventually(() => servers.every((s) => s.out.some((l) => /Registered with the reverse proxy/.test(l))), 15000, 'four servers registered');
  await sleep(150); // each upstream link verifies with a PING round trip
  return { proxy, port, admin, servers };
}

const exited = (servers: Proc[]): string[] => servers.filter((s) => s.child.exitCode !== null).map((s) => `exit ${s.child.exitCode}`);

test('by default one such request takes down two servers, not three: it gets UPSTREAM_FAILED saying so, a warn line names its client, and the other two serve on', async () => {
  const { proxy, port, admin, servers } = await pool([]);
  const [answer] = await runClient({ id: 'c9', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c9', privPoliId: 'P', payload: 'poison pill' }], window: 1 });
  assert.is(answer!.error, 'UPSTREAM_FAILED', JSON.stringify(answer));
  assert.match(answer!.message!, /; not sent to another server: the links of servers s\d and s\d went down while each held it: a request the handler crashes on ends every server it reaches \(max_resets, --max-resets 2\)$/);
  await eventually(() => exited(servers).length === 2, 5000, 'two servers exited');
  await sleep(300);
  // Without the limit the proxy sent it on to a third (--retries 2), which died too.
  assert.equal(exited(servers), ['exit 70', 'exit 70']);
  const line = proxy.out.find((l) => l.includes('Did not send request'));
  assert.ok(line, proxy.out.join('\n'));
  assert.match(line!, /warn.*Did not send request 0 of client c9 \(privacy policy P\) from 127\.0\.0\.1:\d+ to another server: the links of servers s\d and s\d went down while each held it/);
  // The two left answer everyone else.
  const after = await runClient({ id: 'c1', proxy: { host: LOCAL, port }, packets: Array.from({ length: 8 }, (_, i) => ({ srcid: 'c1', privPoliId: 'P', payload: `fine ${i}` })), window: 4 });
  assert.ok(after.every((r) => r.correct), JSON.stringify(after.filter((r) => !r.correct)));
  assert.is(new Set(after.map((r) => r.server)).size, 2);
  const metrics = await (await fetch(new URL('/metrics', admin))).text();
  assert.match(metrics, /^revproxy_poison_requests_total\{policy="P"\} 1$/m);
});

test('--max-resets 0 is no limit: the request goes on to a third server (--retries 2), which it takes down too', async () => {
  const { port, admin, servers } = await pool(['--max-resets', '0']);
  const [answer] = await runClient({ id: 'c9', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c9', privPoliId: 'P', payload: 'poison pill' }], window: 1 });
  assert.is(answer!.error, 'UPSTREAM_FAILED', JSON.stringify(answer));
  assert.match(answer!.message!, /; tried s\d, s\d, s\d$/);
  await eventually(() => exited(servers).length === 3, 5000, 'three servers exited');
  const metrics = await (await fetch(new URL('/metrics', admin))).text();
  assert.not.match(metrics, /revproxy_poison_requests_total\{/);
});

test('--max-resets 1: a request whose server went down with it is not sent on at all, and its server alone is lost', async () => {
  const { port, servers } = await pool(['--max-resets', '1']);
  const [answer] = await runClient({ id: 'c9', proxy: { host: LOCAL, port }, packets: [{ srcid: 'c9', privPoliId: 'P', payload: 'poison pill' }], window: 1 });
  assert.match(answer!.message ?? '', /; not sent to another server: the link of server s\d went down while it held it: a request the handler crashes on ends every server it reaches \(max_resets, --max-resets 1\)$/);
  await sleep(500);
  assert.equal(exited(servers), ['exit 70']);
});

test.run();
