/**
 * The Python peers of examples/python/, written from docs/PROTOCOL.md alone, against a real
 * proxy: the Python server answers the Python client, `revproxy client` and `revproxy load`;
 * the Python client is answered by `revproxy server`; SIGTERM drains the Python server.
 * They need Debian's python3-msgpack (.ci/run installs it); without it this spec fails, saying so.
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { killAll, proxyProcess, PYTHON, pythonFile, revproxy, type Proc } from './procs.js';

const peers = suite('python peers');
peers.after.each(killAll);

peers.before(() => {
  try {
    execFileSync(PYTHON, ['-c', 'import msgpack'], { stdio: 'pipe' });
  } catch {
    throw new Error(`${PYTHON} cannot import msgpack: install Debian's python3-msgpack (apt-get install -y python3-msgpack) to run examples/python/`);
  }
});

const sha1 = (text: string): string => createHash('sha1').update(text, 'utf8').digest('hex');

async function pythonServer(port: number, id: string): Promise<Proc> {
  const server = pythonFile('examples/python/server.py', ['--proxy', `127.0.0.1:${port}`, '--id', id, '--policy', '111']);
  await server.waitFor(new RegExp(`registered ${id} for policy 111`));
  return server;
}

function pythonClient(port: number, payloads: string[]): Proc {
  return pythonFile('examples/python/client.py', ['--proxy', `127.0.0.1:${port}`, '--policy', '111', ...payloads]);
}

/** The client's answer lines, by seq: `seq N: ANSWER from SERVER`. */
function answers(client: Proc): Map<number, string> {
  const out = new Map<number, string>();
  for (const l of client.out) {
    const m = l.match(/^seq (\d+): (.*)$/);
    if (m) out.set(Number(m[1]), m[2]!);
  }
  return out;
}

const PAYLOADS = ['xyz1', 'hello', '', 'naïve café ✓', 'x'.repeat(5000), 'last'];

peers('the Python client sends its requests at once on one connection and the Python server answers each with the SHA1 of its payload', async () => {
  const { port } = await proxyProcess();
  await pythonServer(port, 'py-1');
  const client = pythonClient(port, PAYLOADS);
  assert.is(await client.exited, 0, client.out.join('\n'));
  const got = answers(client);
  assert.equal([...got.keys()].sort((a, b) => a - b), PAYLOADS.map((_, i) => i));
  PAYLOADS.forEach((p, i) => assert.is(got.get(i), `${sha1(p)} from py-1`, `seq ${i}`));
});

peers('the Python server answers `revproxy client` and `revproxy load`, every answer right', async () => {
  const { port } = await proxyProcess();
  await pythonServer(port, 'py-2');
  const client = revproxy(['client', '--revproc', String(port), '--pkt', 'pktfiles/1.json', '--json']);
  assert.is(await client.exited, 0, client.out.join('\n'));
  const report = JSON.parse(client.out.find((l) => l.startsWith('{'))!);
  assert.equal([report.verified, report.results[0].server], [1, 'py-2']);
  const load = revproxy(['load', '--revproc', String(port), '-n', '500', '-c', '2', '-p', '16', '--json']);
  assert.is(await load.exited, 0, load.out.join('\n'));
  const result = JSON.parse(load.out.find((l) => l.startsWith('{'))!);
  assert.equal([result.ok, result.wrongHash, result.errors], [500, 0, {}]);
});

peers('the Python client is answered by `revproxy server`', async () => {
  const { proc: proxy, port } = await proxyProcess();
  revproxy(['server', '--id', 'ts-1', '--pp', '111', '--revproc', String(port)]);
  await proxy.waitFor(/Received setup message from server id ts-1 /);
  const client = pythonClient(port, PAYLOADS);
  assert.is(await client.exited, 0, client.out.join('\n'));
  PAYLOADS.forEach((p, i) => assert.is(answers(client).get(i), `${sha1(p)} from ts-1`, `seq ${i}`));
});

peers('SIGTERM: the Python server deregisters, the proxy closes its link, it exits 0; then the policy has no server', async () => {
  const { proc: proxy, port } = await proxyProcess();
  const server = await pythonServer(port, 'py-3');
  const first = pythonClient(port, ['before']);
  assert.is(await first.exited, 0, first.out.join('\n'));
  server.kill('SIGTERM');
  await proxy.waitFor(/Server id py-3 left privacy policy 111: the server is draining/);
  assert.is(await server.exited, 0, server.out.join('\n'));
  assert.ok(server.out.includes('drained'), server.out.join('\n'));
  const after = pythonClient(port, ['after']);
  assert.is(await after.exited, 1);
  assert.match(after.out.join('\n'), /^seq 0: NO_SERVER: /m);
});

peers.run();
