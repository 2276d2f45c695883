/**
 * The proof a server writes beside its registry entry: an HMAC-SHA256 of
 * its id, policy, address and port under its policy's registration secret.
 * A proxy admits an entry only when the proof matches under the secret it
 * holds for that policy (the same secrets as direct registration,
 * actors/routing.ts), so write access to etcd alone does not put a server
 * in a pool, and an entry copied to another id, policy or address is
 * refused. Pure: no etcd here.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

export interface Provable {
  id: string;
  policy: string;
  address: string;
  port: number;
}

/** The proof of `e` under `secret` (hex). The fields are encoded as one JSON array, so no two entries share a message. */
export function proofOf(secret: string, e: Provable): string {
  return createHmac('sha256', secret).update(JSON.stringify(['revproxy-registry-v1', e.id, e.policy, e.address, e.port])).digest('hex');
}

/** Whether `proof` is the proof of `e` under `secret`, compared in constant time. */
export function proofHolds(secret: string, e: Provable, proof: string | undefined): boolean {
  if (proof === undefined || !/^[0-9a-f]{64}$/.test(proof)) return false;
  return timingSafeEqual(Buffer.from(proofOf(secret, e), 'hex'), Buffer.from(proof, 'hex'));
}
