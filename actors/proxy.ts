/**
 * The reverse proxy. Registers servers into per-policy pools, forwards each
 * client request to the pool's next member over a persistent upstream link,
 * and returns the one answer every request gets: an ACK, or an ERROR with a
 * stable code, within the request timeout.
 *
 * starting --LISTENING--> running --STOP--> draining --DRAINED / drain timeout--> stopped
 *     \--LISTEN_FAILED--> failed
 *
 * Transitions are driven by the socket streams: the reads of client
 * connections in one turn of the event loop become one FORWARD event
 * carrying every batch (proxy-io.ts). The rules are plain functions:
 * membership.ts (who is registered), routing.ts (who takes a request, and
 * the one reply path), health.ts (down, probes, ejection); the vocabulary is
 * in proxy-types.ts, the options in proxy-options.ts. docs/ARCHITECTURE.md
 * follows one request through.
 *
 * Members of a pool are `connecting` (link not verified yet), `serving`,
 * `down` (link failed: probed with backoff until it answers again),
 * `ejected` (too many consecutive failures: out for a while) or `drained`
 * (by an operator, MEMBER_DRAIN: out until MEMBER_ENABLE).
 */
import { assertEvent, assign, sendTo, setup, type ActorRefFrom } from 'xstate';
import { BufferBudget } from '../transport/budget.js';
import { BusyPoll } from '../transport/busy-poll.js';
import { ErrorCode } from '../transport/errors.js';
import { errorMsg } from '../transport/messages.js';
import { dial } from '../transport/tls.js';
import { systemClock } from '../transport/clock.js';
import { InflightCount } from './inflight.js';
import { Pacer } from './pacer.js';
import { tcpConnect, type ProxyRequest } from './link.js';
import { silentLogger } from './logger.js';
import { lazyTextFrom } from './memory-limit.js';
import { drainWatch, linkHub, listener, noRegistry, pinger, PortClosed, sweeper } from './proxy-io.js';
import { LinkSockets, logBadInput, logLinksFull, logShed } from './port-limits.js';
import { guardObserver, proxyBudgetNote, proxyInsecureNote, proxyListeningNote, proxyConnectionsNote, resolveOptions, sweepInterval, type ProxyOptions } from './proxy-options.js';
import type { ProxyContext, ProxyEvent, ProxyMachineInput } from './proxy-types.js';
import { drainMember, enableMember, linkDown, linkUp, probe, probeRefused, readmit, serverLeaving, triesFailed } from './health.js';
import { admit, applyReload, evict, registeredBy, removeServer } from './membership.js';
import { closeAfterAnswers, drainWaiting, expireWaiting, failRemaining, forwardRead, makeReply, refuse } from './routing.js';
import { fromRegistry } from './registry-members.js';
import { logStopped, releaseAll } from './children.js';

export const proxyMachine = setup({
  types: {
    context: {} as ProxyContext,
    events: {} as ProxyEvent,
    input: {} as ProxyOptions & ProxyMachineInput,
  },
  actors: { listener, sweeper, pinger, drainWatch, linkHub, registry: noRegistry },
  delays: {
    drainTimeout: ({ context }) => context.opts.drainTimeoutMs,
  },
  actions: {
    setPort: assign(({ event }) => {
      assertEvent(event, 'LISTENING');
      return { port: event.port, listenAddress: event.address };
    }),
    logListening: ({ context }) => {
      const o = context.opts;
      const listening = proxyListeningNote(o, context.port, context.listenAddress);
      context.logger.info('listening', listening.message, listening.fields);
      const memory = proxyBudgetNote(o);
      if (memory) context.logger[memory.level]('memory_limit', memory.message, memory.fields);
      const conns = proxyConnectionsNote(o);
      if (conns) context.logger.info('connection_limit', conns.message, conns.fields);
      const open = proxyInsecureNote(o);
      if (open) context.logger.warn('insecure', open.message, open.fields);
    },
    setError: assign(({ event }) => {
      assertEvent(event, 'LISTEN_FAILED');
      return { error: event.error };
    }),

    register: ({ context, event }) => {
      assertEvent(event, 'REGISTER');
      admit(context, event.peer, event.setup);
    },

    forward: ({ context, event }) => {
      assertEvent(event, 'FORWARD');
      forwardRead(context, event.batches);
    },

    refuseNew: ({ context, event }) => {
      assertEvent(event, 'FORWARD');
      const now = context.clock.now();
      const requests: ProxyRequest[] = [];
      for (const { peer, requests: msgs } of event.batches) {
        peer.outstanding += msgs.length;
        context.inflight.add(msgs.length);
        for (const msg of msgs) requests.push({ client: peer, msg, arrived: now });
      }
      refuse(context, requests, { code: ErrorCode.SHUTTING_DOWN, message: 'the proxy is shutting down and takes no new requests; try another proxy' });
    },

    refuseRegistration: ({ event }) => {
      assertEvent(event, 'REGISTER');
      event.peer.conn.endWith(errorMsg(ErrorCode.SHUTTING_DOWN, 'the proxy is shutting down; register with another proxy'));
    },

    deregister: ({ context, event }) => {
      assertEvent(event, ['DEREGISTER', 'CONN_CLOSED', 'BAD_INPUT']);
      const entry = registeredBy(context, event.peer);
      if (!entry) return;
      const reason =
        event.type === 'DEREGISTER' ? event.reason
        : event.type === 'BAD_INPUT' ? `bad input on its registration connection: ${event.error.message}`
        : event.error ? `its registration connection failed: ${event.error}` : 'its registration connection closed';
      removeServer(context, entry, reason);
    },

    endHalfClosed: ({ event }) => {
      assertEvent(event, 'CONN_CLOSED');
      if (event.halfClosed) closeAfterAnswers(event.peer);
    },

    evict: ({ context, event }) => {
      assertEvent(event, 'MISSED_PINGS');
      evict(context, event.peer, `it missed ${event.misses} PINGs in a row on its registration connection`);
    },

    badInput: ({ context, event }) => {
      assertEvent(event, 'BAD_INPUT');
      const conn = event.peer.conn;
      logBadInput(context.logger, conn, event.error, { role: event.peer.role });
      closeAfterAnswers(event.peer, errorMsg(event.error.code, event.error.message));
    },

    upstreamUp: ({ context, event }) => {
      assertEvent(event, 'UPSTREAM_UP');
      linkUp(context, event.member, event.linkId);
    },

    upstreamDown: ({ context, event }) => {
      assertEvent(event, 'UPSTREAM_DOWN');
      linkDown(context, event.member, event.linkId, event.failure, event.requests, event.unsent);
    },

    upstreamRetry: ({ context, event }) => {
      assertEvent(event, 'UPSTREAM_RETRY');
      triesFailed(context, event.member, event.linkId, event.failure, event.failures, event.requests);
    },

    upstreamLeaving: ({ context, event }) => {
      assertEvent(event, 'UPSTREAM_LEAVING');
      serverLeaving(context, event.member, event.linkId, event.requests, event.reason);
    },

    probe: ({ context, event }) => {
      assertEvent(event, 'PROBE');
      probe(context, event.member);
    },

    readmit: ({ context, event }) => {
      assertEvent(event, 'READMIT');
      readmit(context, event.member);
    },

    memberDrain: ({ context, event }) => {
      assertEvent(event, 'MEMBER_DRAIN');
      drainMember(context, event.member, event.by);
    },

    memberEnable: ({ context, event }) => {
      assertEvent(event, 'MEMBER_ENABLE');
      enableMember(context, event.member, event.by);
    },

    drainWaitingQueue: ({ context, event }) => {
      assertEvent(event, 'DRAIN_WAITING');
      drainWaiting(context, event.policy);
    },

    expireWaiting: ({ context, event }) => {
      assertEvent(event, 'EXPIRE_WAITING');
      expireWaiting(context, event.now);
    },

    logDraining: ({ context }) => {
      context.logger.info('draining', `Draining: no new connections; answering the requests in flight (at most ${context.opts.drainTimeoutMs} ms)`, {
        drainTimeoutMs: context.opts.drainTimeoutMs,
      });
    },

    failRemaining: ({ context, event }) => failRemaining(context, event.type === 'STOP'),

    reload: ({ context, event }) => {
      assertEvent(event, 'RELOAD');
      applyReload(context, event.opts);
    },
    renewTls: ({ context, event }) => {
      assertEvent(event, 'RENEW_TLS');
      if (context.opts.tls?.cert) context.opts = { ...context.opts, tls: event.tls };
    },

    /** News from the registry (etcd): a server entry came, went, or etcd's health changed. */
    fromRegistry: ({ context, event }) => {
      assertEvent(event, ['REGISTRY_JOIN', 'REGISTRY_LEAVE', 'REGISTRY_HEALTH']);
      fromRegistry(context, event);
    },

    stopAll: ({ context }) => releaseAll(context),
    logStopped: ({ context }) => logStopped(context.logger, context.port),
  },
}).createMachine({
  id: 'proxy',
  context: ({ input, self }) => {
    const opts = resolveOptions(input);
    const logger = input.logger ?? silentLogger;
    const observer = input.observer && guardObserver(input.observer, logger);
    const ctx: ProxyContext = {
      opts,
      logger,
      clock: input.clock ?? systemClock,
      linkSockets: new LinkSockets(input.connect ?? (input.upstreamTls ? (host, port) => dial(host, port, input.upstreamTls) : tcpConnect)),
      dialsTls: Boolean(input.upstreamTls),
      upstreamTls: input.upstreamTlsNow ?? (() => input.upstreamTls),
      observer,
      port: opts.port,
      policies: new Map(),
      servers: new Map(),
      openRegistrations: { total: 0, byHost: new Map() },
      overLimit: new Set(),
      tlsMisfits: new Map(),
      keptEjections: new Map(),
      inflight: new InflightCount(),
      busy: new Set(),
      linkSeq: 0, upstreamTlsRenewals: 0,
      self,
      reply: () => {},
      probes: new Pacer(input.clock ?? systemClock, opts.probesPerSecond, (member) => self.send({ type: 'PROBE', member })),
      busyPoll: opts.busyPollUs ? new BusyPoll({ windowUs: opts.busyPollUs }) : undefined,
      budget: new BufferBudget(opts.maxBufferedBytes, logShed(logger, opts.maxBufferedBytes), logLinksFull(logger)),
      portClosed: new PortClosed(logger, input.clock ?? systemClock, observer),
    };
    ctx.reply = makeReply(ctx);
    return ctx;
  },
  invoke: [
    {
      id: 'listener',
      src: 'listener',
      input: ({ context }) => ({ ...context.opts, lazyTextFrom: lazyTextFrom(context.opts.memoryLimit), logger: context.logger, clock: context.clock, busyPoll: context.busyPoll, observer: context.observer, budget: context.budget, linkSockets: context.linkSockets, portClosed: context.portClosed }),
    },
    { id: 'links', src: 'linkHub', input: ({ context }) => ({ logger: context.logger }) },
    { id: 'registry', src: 'registry', input: ({ context }) => ({ logger: context.logger, clock: context.clock, servers: context.servers }) },
  ],
  initial: 'starting',
  states: {
    starting: {
      on: {
        LISTENING: { target: 'running', actions: ['setPort', 'logListening', sendTo('registry', ({ event }) => event)] },
        LISTEN_FAILED: { target: 'failed', actions: 'setError' },
      },
    },
    running: {
      invoke: [
        { id: 'sweeper', src: 'sweeper', input: sweeperInput },
        {
          id: 'pinger',
          src: 'pinger',
          input: ({ context }) => ({ servers: context.servers, clock: context.clock, every: context.opts.pingIntervalMs, misses: context.opts.pingMisses, proxy: context.self }),
        },
      ],
      on: {
        REGISTER: { actions: 'register' },
        FORWARD: { actions: 'forward' },
        STOP: { target: 'draining' },
        // Re-entered, so the pinger and the sweeper restart with the new intervals.
        RELOAD: { target: 'running', reenter: true, actions: ['reload', sendTo('listener', ({ event }) => event), sendTo('registry', { type: 'RELOAD' })] },
      },
    },
    draining: {
      entry: ['logDraining', sendTo('listener', { type: 'STOP' }), sendTo('registry', { type: 'DRAIN' })],
      invoke: [
        { id: 'sweeper', src: 'sweeper', input: sweeperInput },
        { id: 'drainWatch', src: 'drainWatch', input: ({ context }) => ({ inflight: context.inflight }) },
      ],
      after: { drainTimeout: { target: 'stopped', actions: 'failRemaining' } },
      on: {
        FORWARD: { actions: 'refuseNew' },
        REGISTER: { actions: 'refuseRegistration' },
        DRAINED: { target: 'stopped' },
        STOP: { target: 'stopped', actions: 'failRemaining' },
      },
    },
    stopped: { type: 'final', entry: ['stopAll', 'logStopped'] },
    failed: { type: 'final' },
  },
  on: {
    DEREGISTER: { actions: 'deregister' },
    MISSED_PINGS: { actions: 'evict' },
    BAD_INPUT: { actions: ['badInput', 'deregister'] },
    CONN_CLOSED: { actions: ['deregister', 'endHalfClosed'] },
    UPSTREAM_UP: { actions: 'upstreamUp' },
    UPSTREAM_DOWN: { actions: 'upstreamDown' },
    UPSTREAM_RETRY: { actions: 'upstreamRetry' },
    UPSTREAM_LEAVING: { actions: 'upstreamLeaving' },
    PROBE: { actions: 'probe' },
    READMIT: { actions: 'readmit' },
    MEMBER_DRAIN: { actions: 'memberDrain' },
    RENEW_TLS: { actions: ['renewTls', sendTo('listener', ({ event }) => event)] },
    UPSTREAM_TLS_RENEWED: { actions: ({ context }) => probeRefused(context) },
    MEMBER_ENABLE: { actions: 'memberEnable' },
    DRAIN_WAITING: { actions: 'drainWaitingQueue' },
    EXPIRE_WAITING: { actions: 'expireWaiting' },
    REGISTRY_JOIN: { actions: 'fromRegistry' },
    REGISTRY_LEAVE: { actions: 'fromRegistry' },
    REGISTRY_HEALTH: { actions: 'fromRegistry' },
    RELEASED: { actions: sendTo('registry', ({ event }) => event) },
  },
});

function sweeperInput({ context }: { context: ProxyContext }) {
  return { busy: context.busy, policies: context.policies, opts: context.opts, clock: context.clock, every: sweepInterval(context.opts), logger: context.logger };
}

export type ProxyActor = ActorRefFrom<typeof proxyMachine>;
