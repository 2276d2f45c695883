/**
 * Children the proxy may have by the thousand (a link per server, a pool per
 * policy), started and stopped in O(1).
 *
 * XState keeps the children a machine spawns in its snapshot, in a map it
 * copies on every spawn and every stop: with thousands of links, each probe
 * of a dead server copied them all (quadratic under churn). These children
 * are started with a parent given instead (the proxy for its pools, the
 * proxy's link hub for its links): they share its system (so `sendParent`
 * and the inspector see them as its children), but live in the proxy's own
 * tables, which it changes in place.
 */
import { createActor, type ActorRefFrom, type AnyActorLogic, type AnyActorRef, type InputFrom } from 'xstate';
import type { Logger } from './logger.js';
import type { ProxyContext } from './proxy-types.js';

/** Start `logic` as a child of `parent`, outside the parent's children map. */
export function startChild<T extends AnyActorLogic>(parent: AnyActorRef, logic: T, opts: { id: string; input: InputFrom<T> }): ActorRefFrom<T> {
  const child = createActor(logic, { id: opts.id, input: opts.input, parent } as Parameters<typeof createActor<T>>[1]);
  child.start();
  return child as ActorRefFrom<T>;
}

/**
 * Stop a child started by `startChild`. XState refuses `stop()` on an actor
 * with a parent (a spawned child is stopped through its parent's map, which
 * these are not in); `_stop` is what that map's removal calls.
 */
export function stopChild(child: AnyActorRef): void {
  (child as unknown as { _stop(): void })._stop();
}

/**
 * The proxy's last line, after the summaries of what repeated while it ran: a "Retrying ... in the
 * last 4 s" written after "stopped" read as if it still ran. The CLI says it itself, once it has closed
 * its access and inspection logs, whose warnings come before it (`StartProxyOptions.stoppedLine`).
 */
export function logStopped(logger: Logger, port: number): void {
  logger.flush();
  logger.info('stopped', 'Reverse proxy stopped', { port });
}

/**
 * Stop what the proxy started outside XState's children map: its links to
 * servers and their sockets, its pools, probes and timers. The proxy's final
 * state does it; so must anything that stops its actor short of that state
 * (`kill()`), or the links outlive the proxy.
 */
export function releaseAll(context: ProxyContext): void {
  context.probes.stop();
  for (const entry of context.servers.values()) {
    entry.timer?.cancel();
    entry.registration?.conn.endWith();
    if (entry.link.getSnapshot().status === 'active') stopChild(entry.link);
  }
  for (const policy of context.policies.values()) stopChild(policy.pool);
}
