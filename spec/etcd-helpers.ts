/** What the specs on a real etcd share: the fleet's etcd user, and a cluster that has lost its quorum. */
import * as assert from 'uvu/assert';
import { inCallTimeout, type Etcd3 } from '../registry/etcd.js';
import type { EtcdCluster, EtcdMember } from '../scenario/etcd.js';
import { eventually } from './helpers.js';

/**
 * etcd's users as the specs with its authentication make them, through `admin` before `auth enable`: root (which etcd
 * needs to turn authentication on), and `fleet` (password fleet-password-1; with client certificates, the CN fleet)
 * with readwrite on `prefix` only.
 */
export async function fleetUser(admin: Etcd3, prefix: string): Promise<void> {
  const { Range } = await import('etcd3');
  await admin.role('root').create();
  await admin.user('root').create('root-password-1');
  await admin.user('root').addRole('root');
  await admin.role('fleet').create();
  await admin.role('fleet').grant({ permission: 'Readwrite', range: Range.prefix(prefix) });
  await admin.user('fleet').create('fleet-password-1');
  await admin.user('fleet').addRole('fleet');
}

/**
 * Both followers of `cluster` hung (SIGSTOP; the leader is left running: hung, it would revoke every lease when it woke,
 * etcd-io/etcd#15247) until a read needing a leader fails through `raw`; then `run`, given the member left; then every
 * member woken.
 */
export async function withoutQuorum(cluster: EtcdCluster, raw: Etcd3, run: (left: EtcdMember) => Promise<void>): Promise<void> {
  const leader = await cluster.leader();
  assert.ok(leader, 'the cluster has a leader');
  try {
    for (const m of cluster.members) if (m !== leader) m.pause();
    // The leader steps down once it hears from no follower (etcd's check-quorum): reads that need one fail from then.
    await eventually(async () => (await inCallTimeout(raw.get('x').exec(), 1000).then(() => false, () => true)), 20_000, 'a read needing a leader to fail');
    await run(leader);
  } finally {
    for (const m of cluster.members) m.resume();
  }
}
