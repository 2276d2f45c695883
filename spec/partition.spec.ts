/**
 * A real network between the peers: hosts in network namespaces, cut apart
 * silently (every packet dropped both ways: no FIN, no RST), as a partition,
 * a pulled cable or a frozen VM would. On loopback a dead peer always answers
 * at once; here it does not. Needs root, iproute2 and nftables (CI has them).
 */
import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { eventually } from './helpers.js';
import { cannotMakeHosts, twoHosts, type Link } from './netns.js';
import { killAll } from './procs.js';

const cut = suite('a silent cut between hosts');
let link: Link | undefined;
cut.before(() => {
  const why = cannotMakeHosts();
  if (why) throw new Error(`this spec runs hosts in network namespaces: ${why}`);
});
cut.after.each(() => {
  killAll();
  link?.remove();
  link = undefined;
});

cut('a server cut off from its proxy long enough to be removed registers again once the cut heals', async () => {
  // The proxy's side forgets its closed sockets within a second (as after a cut of two minutes or more):
  // no late FIN reaches the server when the cut heals.
  link = twoHosts({ orphanRetries: 1 });
  const { a, b } = link;
  const proxy = a.revproxy(['proxy', '--host', a.addr, '--port', '2100', '--ping-interval', '200']);
  await proxy.waitFor(/Running the reverse proxy on port 2100/);
  const server = b.revproxy(['server', '--id', 'n1', '--pp', 'P', '--host', b.addr, '--revproc', `${a.addr}:2100`, '--tcp-keepalive', '1000']);
  await server.waitFor(/Registered with the reverse proxy/);

  link.cut();
  await proxy.waitFor(/Server id n1 left privacy policy P: it missed 3 PINGs/);
  await eventually(() => a.socketsTo(b).length === 0, 10000, 'the proxy host to forget its connections to the server');
  link.heal();

  // The server's registration looks open on its side; only probes of its own find the proxy forgot it.
  await server.waitFor(/Registered again with the reverse proxy/);
  // The proxy's line comes on its own pipe, which may be read after the server's.
  const setups = (): number => proxy.out.filter((l) => l.includes('Received setup message from server id n1 ')).length;
  await eventually(() => setups() >= 2, 5000, 'the proxy to log the second registration');
  assert.is(setups(), 2, proxy.out.join('\n'));
});

cut.run();
