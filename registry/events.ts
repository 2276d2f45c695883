/**
 * What the registry tells the proxy machine, and what the proxy tells it:
 * the vocabulary between registry/proxy-registry.ts (which talks to etcd)
 * and the proxy's actions (actors/registry-members.ts). Types only.
 */
import type { ServerEntry } from './keys.js';
import type { SyncReason } from './mirror.js';

export type { ServerEntry } from './keys.js';

/** The registry as the proxy last heard of it: for /readyz, /metrics, the inspector and the logs. */
export interface RegistryStatus {
  /** `etcd://...` */
  url: string;
  /** etcd answers now. */
  up: boolean;
  /** The first read of the servers is in (the membership is known). */
  synced: boolean;
  /** Since when `up` has been what it is (ms, the clock of the registry actor). */
  since: number;
  /** Why etcd cannot be reached, while it cannot. */
  why?: string;
  /** Server entries held from the registry. */
  entries: number;
  /** Whole reads of the prefix so far, by reason. */
  syncs: Record<SyncReason, number>;
  /** This proxy's own key is in the registry (clients find it there). */
  advertised: boolean;
  /** Why this proxy's own key cannot be written while etcd answers its reads (out of space, a role that may not write it): clients do not find it. */
  unadvertised?: string;
}

/** From the registry actor to the proxy machine. */
export type RegistryEvent =
  /** A server's entry appeared or changed: the proxy checks its proof and admits it (or refuses it). */
  | { type: 'REGISTRY_JOIN'; entry: ServerEntry }
  /**
   * A server's entry went (drained, deleted) or became unusable. `unlisted`: its key went with its
   * lease expired - the server may only have lost etcd, not died: the proxy keeps it while its link
   * answers, and removes it when the link fails (actors/registry-members.ts).
   */
  | { type: 'REGISTRY_LEAVE'; id: string; reason: string; unlisted?: boolean }
  | { type: 'REGISTRY_HEALTH'; status: RegistryStatus };

/** From the proxy machine to the registry actor. */
export type RegistryCommand =
  /** The proxy listens: advertise it once the membership is known. */
  | { type: 'LISTENING'; port: number }
  /** The proxy drains: withdraw its own key (clients stop choosing it); keep watching. */
  | { type: 'DRAIN' }
  /** The secrets may have changed: send every entry again, for the proxy to check. */
  | { type: 'RELOAD' }
  /** A member left the id or the room the registry's entry under `id` was passed over for: send that entry again, for the proxy to check. */
  | { type: 'RELEASED'; id: string };
