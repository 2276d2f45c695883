/**
 * The actors' public surface: start a proxy or a server, run a client. Each
 * helper returns once the actor is ready (or has failed with a clear error).
 */
import { createActor, toPromise, type InspectionEvent } from 'xstate';
import { clientMachine, type ClientOptions, type Result } from './client.js';
import { jsonRegistration } from './json-registration.js';
import { proxyMachine, type ProxyActor, type ProxyOptions } from './proxy.js';
import { serverMachine, type ServerActor, type ServerOptions } from './server.js';

export { clientMachine, type ClientOptions, type Packet, type Result } from './client.js';
export { systemClock, ManualClock, type Clock } from './clock.js';
export { Logger, textSink, jsonSink, memorySink, silentLogger, type LogRecord, type Level } from './logger.js';
export { poolMachine, join, leave, pick, type Rotation } from './pool.js';
export { proxyMachine, type ProxyOptions, type ProxyActor } from './proxy.js';
export { serverMachine, sha1Hex, type ServerOptions, type ServerActor, type Endpoint } from './server.js';
export { upstreamMachine } from './upstream.js';
export { upstreamJsonMachine, type OldServerOptions } from './upstream-json.js';

export interface Inspect {
  inspect?: (event: InspectionEvent) => void;
}

export class StartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StartError';
  }
}

export interface ProxyHandle {
  actor: ProxyActor;
  port: number;
  /** Stop accepting, close every connection. */
  stop(): Promise<void>;
  /** Members of each pool, in rotation order, with the cursor. */
  pools(): Record<string, { members: string[]; cursor: number; state: string }>;
}

/** Start a proxy; resolves once it listens. */
export async function startProxy(opts: ProxyOptions & Inspect = {}): Promise<ProxyHandle> {
  const actor = createActor(proxyMachine, { input: opts, inspect: opts.inspect });
  actor.start();
  await waitUntil(actor, (s) => s.value !== 'starting');
  const snap = actor.getSnapshot();
  if (snap.value === 'failed') throw new StartError(snap.context.error ?? 'the proxy failed to start');
  return {
    actor,
    port: snap.context.port,
    async stop() {
      if (actor.getSnapshot().status === 'active') actor.send({ type: 'STOP' });
      actor.stop();
    },
    pools() {
      const out: Record<string, { members: string[]; cursor: number; state: string }> = {};
      for (const [policy, ref] of actor.getSnapshot().context.pools) {
        const s = ref.getSnapshot();
        out[policy] = { members: [...s.context.members], cursor: s.context.cursor, state: String(s.value) };
      }
      return out;
    },
  };
}

export interface ServerHandle {
  actor: ServerActor;
  port: number;
  id: string;
  /** Graceful: leave the proxy's pool, finish what is in flight, then stop. */
  stop(): Promise<void>;
  /** Abrupt, as SIGKILL: close every socket now. */
  kill(): void;
}

/** Start a server; resolves once it listens and its setup message is on the wire. */
export async function startServer(opts: ServerOptions & Inspect): Promise<ServerHandle> {
  const machine = opts.wire === 'json' ? serverMachine.provide({ actors: { registration: jsonRegistration } }) : serverMachine;
  const actor = createActor(machine, { input: opts, inspect: opts.inspect });
  actor.start();
  await waitUntil(actor, (s) => s.status !== 'active' || s.matches({ online: 'registered' }));
  const snap = actor.getSnapshot();
  if (snap.value === 'failed') throw new StartError(snap.context.error ?? 'the server failed to start');
  return {
    actor,
    port: snap.context.port,
    id: opts.id,
    async stop() {
      if (actor.getSnapshot().status === 'active') actor.send({ type: 'STOP' });
      actor.stop();
    },
    kill() {
      actor.stop();
    },
  };
}

/** Send every packet, wait for every answer (or its failure), return the results in packet order. */
export async function runClient(opts: ClientOptions & Inspect): Promise<Result[]> {
  const actor = createActor(clientMachine, { input: opts, inspect: opts.inspect });
  actor.start();
  const out = await toPromise(actor);
  return out.results;
}

interface Watchable<S> {
  getSnapshot(): S;
  subscribe(o: { next: (s: S) => void; error?: (e: unknown) => void }): { unsubscribe(): void };
}

function waitUntil<S>(actor: Watchable<S>, pred: (s: S) => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    if (pred(actor.getSnapshot())) return resolve();
    const sub = actor.subscribe({
      next: (s) => {
        if (pred(s)) {
          sub.unsubscribe();
          resolve();
        }
      },
      error: (e) => reject(e),
    });
  });
}
