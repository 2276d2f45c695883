/**
 * The inspector's hub: takes XState's `inspect` stream, keeps what the page
 * shows (actors, their states and charts, a bounded log of events, pools,
 * figures) and hands it out in batches.
 *
 * The `inspect` callback runs synchronously inside every actor transition, so
 * it does as little as it can: it notes which actor changed and records
 * events up to a budget per flush; anything over the budget is only counted.
 * Snapshots are read and projected to JSON once per flush (every `flushMs`),
 * for the actors that changed. Everything the page gets is also a `Rec`, so a
 * recorded NDJSON log replays through the same `apply`.
 */
import type { InspectionEvent } from 'xstate';
import { Connection } from '../transport/socket.js';
import { chartOf, type Chart, type StateNodeLike } from './chart.js';
import type { Metrics } from './metrics.js';
import { Ring } from './ring.js';
import { CONTEXT_LIMITS, connView, isPeer, project, projectEvent, stateName, type ConnView, type Json, type SeenConn } from './sanitise.js';
import type { ProxyContext } from '../actors/proxy-types.js';
import { byPolicy, mergePools, poolKey, poolView, proxyInflight, type Figures, type PoolView } from './views.js';
import { hostPort } from '../transport/address.js';

/** One line of the inspection log, and one item of the page's feed. */
export type Rec =
  | { k: 'actor'; t: number; sid: string; id: string; parent?: string; machine?: string }
  | { k: 'chart'; machine: string; chart: Omit<Chart, 'machine'> }
  | { k: 'event'; t: number; n: number; sid: string; from?: string; type: string; data: Json }
  | { k: 'state'; t: number; sid: string; name?: string; state: string; status: string; event?: string; edge?: string; changed: boolean; context: Json }
  | { k: 'dropped'; t: number; count: number; types: Record<string, number> }
  /** The pools that changed since the last record, and those gone, by `poolKey` (without `gone`, as in logs before it: every pool). */
  | { k: 'pools'; t: number; pools: PoolView[]; gone?: string[] }
  | { k: 'figures'; t: number; figures: Figures }
  | { k: 'conns'; t: number; conns: ConnView[]; more?: number };

type StateRec = Extract<Rec, { k: 'state' }>;

/** What a reader of the event log asks for (`/api/events`): the rows before `before` (a row's number) that match, at most `limit`. */
export interface RowQuery {
  before?: number;
  limit: number;
  /** Only rows of this actor (its session id), sent by it or to it. */
  actor?: string;
  /** Only events of this type, as `typeKey` names it. */
  type?: string;
  /** With state changes. */
  states: boolean;
}

/** A page of the event log: rows oldest first, each with its number (`i`), and how many there are. */
export interface RowPage {
  rows: Array<Rec & { i: number }>;
  /** Rows before the first one given that match too. */
  more: boolean;
  /** Rows that match, of every row kept. */
  matching: number;
  /** Rows kept: for a recorded log, every one it holds. */
  total: number;
  /** Every event type of the rows kept, as `typeKey` names them. */
  types: string[];
}

/**
 * An event's entry in the type filter. XState names an actor's done and error events after the
 * actor (`xstate.done.actor.upstream:310#26`): one entry each, `xstate.done.actor.*` and
 * `xstate.error.actor.*`. The page's `typeKey` (page/app.js) is this rule, for the rows it keeps.
 */
export function typeKey(type: string): string {
  return type.replace(/^(xstate\.(?:done|error)\.actor\.).+$/, '$1*');
}

/** Whether a row of the event log is one a query asks for; the page's `matches` (page/app.js) is this rule. */
function rowMatches(r: Rec, q: RowQuery): boolean {
  if (r.k === 'state' && !q.states) return false;
  if (q.actor && !('sid' in r && r.sid === q.actor) && !(r.k === 'event' && r.from === q.actor)) return false;
  if (q.type && !(r.k === 'event' && typeKey(r.type) === q.type)) return false;
  return true;
}

/** Open connections listed on the page (the rest are counted), and closed ones kept. */
const MAX_OPEN_CONNS = 100;
const MAX_CLOSED_CONNS = 20;

/** An actor as the page shows it. */
export interface ActorView {
  sid: string;
  id: string;
  parent?: string;
  machine?: string;
  state: string;
  status: string;
  event?: string;
  edge?: string;
  events: number;
  context: Json;
  since: number;
}

interface ActorInfo extends ActorView {
  ref?: { getSnapshot(): unknown; sessionId: string; send(event: unknown): void };
  snap?: { value?: unknown; status?: string; context?: unknown };
  lastValue?: unknown;
  lastStatus?: string;
  dirty: boolean;
  /** The transition objects of the latest microstep (mapped to edge ids when read). */
  took?: readonly object[];
  history: Ring<StateRec>;
  /** Members that left a pool, with why, oldest first (pools only). */
  leaves?: Map<string, string>;
}

/** Pools: remember who left and why, so the page can show them as gone. */
function notePoolMember(info: ActorInfo, event: { type: string; id?: unknown; reason?: unknown }): void {
  if (typeof event.id !== 'string') return;
  const leaves = (info.leaves ??= new Map());
  leaves.delete(event.id);
  if (event.type === 'LEAVE') {
    leaves.set(event.id, typeof event.reason === 'string' ? event.reason : 'left');
    if (leaves.size > 16) leaves.delete(leaves.keys().next().value!);
  }
}

export interface HubOptions {
  /** Events kept for the page's log. Default 5000. */
  ringSize?: number;
  /** States kept per actor for stepping through. Default 300. */
  historySize?: number;
  /** How often batches go out. Default 200 ms. */
  flushMs?: number;
  /** Events recorded in full per flush; the rest are counted. Default 250 (over 1000 a second with the default flush). */
  eventBudget?: number;
  /** Stopped actors kept on the page. Default 60. */
  keepStopped?: number;
  /** Receives every record (the NDJSON log): a flush's records as lines, and how many. */
  sink?: (lines: string, count: number) => void;
  /** The records' clock, epoch ms (default `monotonicEpoch`). */
  now?: () => number;
}

/**
 * Epoch ms that move with the monotonic clock: the wall-clock time the
 * process started at, plus the monotonic time since. Ages and durations
 * counted on it (how long a member has been serving, a record's age on the
 * page) stay right when the wall clock steps (NTP, a resumed VM, `date -s`);
 * a time of day shown from it may be off by the steps since the process
 * started (the page shows times of day through `meta.wall`, see http.ts).
 */
export const monotonicEpoch = (): number => performance.timeOrigin + performance.now();

export type Batch = {
  /** A batch's pools are in its `pools` records (only those that changed); a full picture has them all here. */
  recs: Rec[];
  actors: ActorView[];
  pools?: PoolView[];
  figures?: Figures;
  conns: ConnView[];
  /** Open connections past the ones listed. */
  connsMore?: number;
  /** Stopped actors the hub no longer keeps (`keepStopped`): the page drops them too. */
  forgot?: string[];
};

export class Hub {
  readonly actors = new Map<string, ActorInfo>();
  readonly charts = new Map<string, Omit<Chart, 'machine'>>();
  readonly ring: Ring<Rec>;
  pools: PoolView[] = [];
  figures?: Figures;
  conns: ConnView[] = [];
  connsMore = 0;
  /** The time of the latest record (a recorded log's end). */
  lastTime = 0;
  /** When this hub started, on the records' clock: a page that sees another start knows the process (or its inspector) restarted. */
  readonly started: number;
  metrics?: Metrics;
  private readonly edgeMaps = new Map<string, Map<object, string>>();
  private readonly liveConns = new Map<number, SeenConn>();
  /** Per pool (its session id), each member's state as last seen and since when (epoch ms). */
  private readonly memberSince = new Map<string, Map<string, { state: string; since: number }>>();
  /** Per proxy (its session id): epoch ms minus its clock's time, taken once so views stay the same while nothing changes. */
  private readonly clockOffsets = new Map<string, number>();
  private closedConns: ConnView[] = [];
  private pending: Rec[] = [];
  /** Session ids of stopped actors forgotten since the last flush. */
  private forgotten: string[] = [];
  /** Session ids of the stopped actors kept, in the order they stopped: the oldest is forgotten first, without a scan of every actor. */
  private readonly stopped = new Set<string>();
  private budget: number;
  private droppedTypes: Record<string, number> = {};
  private dropped = 0;
  private eventNo = 0;
  private timer?: NodeJS.Timeout;
  private readonly listeners = new Set<(b: Batch) => void>();
  private readonly o: Required<Omit<HubOptions, 'sink'>> & Pick<HubOptions, 'sink'>;
  private lastFigures = '';
  /** The last figures read showed traffic (a rate, a latency, requests in flight): read them until they settle, live actors or not. */
  private figuresStirring = false;
  /** Each pool as last recorded (by `poolKey`; its view and JSON), to record only the ones that changed; `stopped` once its proxy did. */
  private readonly lastPools = new Map<string, { view: PoolView; json: string; stopped?: boolean }>();
  private lastConns = '';
  /** The event types of the rows kept, and the ring's count when they were listed (`rows`). */
  private types: string[] = [];
  private typesAt = -1;

  constructor(opts: HubOptions = {}) {
    this.o = {
      ringSize: 5000,
      historySize: 300,
      flushMs: 200,
      eventBudget: 250,
      keepStopped: 60,
      now: monotonicEpoch,
      ...opts,
    };
    this.ring = new Ring(this.o.ringSize);
    this.budget = this.o.eventBudget;
    this.started = this.o.now();
  }

  /** The records' clock now (epoch ms, see `monotonicEpoch`). */
  now(): number {
    return this.o.now();
  }

  /** Start flushing on a timer (live mode). */
  start(): this {
    this.timer ??= setInterval(() => this.flush(), this.o.flushMs);
    this.timer.unref();
    return this;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.flush();
  }

  subscribe(fn: (b: Batch) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** The `inspect` callback to give `createActor`. */
  readonly observe = (ev: InspectionEvent): void => {
    const sid = ev.actorRef.sessionId;
    switch (ev.type) {
      case '@xstate.event': {
        const info = this.actors.get(sid);
        if (info) info.events++;
        const event = ev.event;
        this.noteConns(event, info);
        if (info?.machine === 'pool') notePoolMember(info, event);
        if (this.budget > 0) {
          this.budget--;
          this.record({ k: 'event', t: this.o.now(), n: this.eventNo++, sid, from: ev.sourceRef?.sessionId, type: event.type, data: projectEvent(event) });
        } else {
          this.eventNo++;
          this.dropped++;
          // By type as the filter names them: a done event's type holds its actor's id, and thousands of links ending in
          // one flush made a record of 88 KB, a key each.
          const type = typeKey(event.type);
          this.droppedTypes[type] = (this.droppedTypes[type] ?? 0) + 1;
        }
        return;
      }
      case '@xstate.microstep': {
        const info = this.actors.get(sid);
        if (info && ev._transitions.length) info.took = ev._transitions;
        return;
      }
      case '@xstate.snapshot': {
        const info = this.actors.get(sid);
        if (!info) return;
        const snap = ev.snapshot as ActorInfo['snap'] & object;
        info.snap = snap;
        info.dirty = true;
        // Cheap on the hot path: string state values compare as they are; only nested ones are named.
        const value = snap.value;
        const changed = snap.status !== info.lastStatus || (value !== info.lastValue && (typeof value !== 'object' || stateName(value) !== stateName(info.lastValue)));
        info.lastValue = value;
        if (changed) {
          info.lastStatus = snap.status;
          this.sample(info, ev.event.type, true);
        } else info.event = ev.event.type;
        if (snap.status !== 'active') info.ref = undefined;
        return;
      }
      case '@xstate.actor':
        this.register(ev.actorRef as never);
        return;
    }
  };

  /**
   * Connections seen in events: a proxy's peers (registrations, clients: in
   * REGISTER, FORWARD batches and the like) and the connections links and
   * clients report when they connect.
   */
  private noteConns(event: { type: string }, info: ActorInfo | undefined): void {
    const e = event as { peer?: unknown; conn?: unknown; batches?: Array<{ peer?: unknown }> };
    const peers = e.batches ? e.batches.map((b) => b.peer) : [e.peer];
    for (const p of peers) if (isPeer(p)) this.notePeer(p);
    if (e.conn instanceof Connection && !this.liveConns.has(e.conn.id) && !e.conn.closed) {
      const machine = info?.machine;
      const role = machine === 'upstream' || machine === 'upstreamJson' ? 'upstream' : machine === 'client' ? 'client' : 'link';
      this.liveConns.set(e.conn.id, { conn: e.conn, role, dialed: dialedBy(info) });
    }
  }

  /** A proxy's peer (actors/link.ts `Peer`), from its events or from its observer's `accepted` as soon as it connects. */
  notePeer(p: SeenConn): void {
    const seen = this.liveConns.get(p.conn.id);
    if (seen) seen.role = p.role;
    // A closed connection not followed any more was listed as closed already (at the flush that found it so):
    // an event about it after that (the proxy's CONN_CLOSED, a member removed for missed PINGs) listed it again,
    // once per such event, and the last 20 closed filled with one registration.
    else if (!p.conn.closed) this.liveConns.set(p.conn.id, p);
  }

  private register(ref: { sessionId: string; id: string; _parent?: { sessionId: string }; logic?: { id?: string; root?: StateNodeLike }; getSnapshot(): unknown; send(event: unknown): void }): void {
    const logic = ref.logic;
    const machine = logic?.root ? (logic.id ?? ref.id) : undefined;
    if (machine && logic?.root && !this.charts.has(machine)) {
      const { edgeOf, machine: _m, ...chart } = chartOf(machine, logic.root);
      this.edgeMaps.set(machine, edgeOf);
      this.record({ k: 'chart', machine, chart });
    }
    const id = ref.id === ref.sessionId ? machine ?? 'actor' : ref.id;
    this.record({ k: 'actor', t: this.o.now(), sid: ref.sessionId, id, parent: ref._parent?.sessionId, machine });
    const info = this.actors.get(ref.sessionId);
    if (info) info.ref = ref;
  }

  /** Take the actor's current snapshot into its history (and the page's feed). */
  private sample(info: ActorInfo, event: string | undefined, changed: boolean): void {
    const snap = info.snap;
    if (!snap) return;
    let edge: string | undefined;
    if (info.took && info.machine) {
      const map = this.edgeMaps.get(info.machine);
      edge = map?.get(info.took[0]!);
      info.took = undefined;
    }
    // A root actor's name (`server 100`) is in its context, which exists only once it started.
    const name = info.id === info.machine ? rootName(info.machine, snap) : undefined;
    this.record({
      k: 'state',
      t: this.o.now(),
      sid: info.sid,
      name: name !== info.id ? name : undefined,
      state: stateName(snap.value) || (snap.status ?? ''),
      status: snap.status ?? 'active',
      event,
      edge: edge ?? info.edge,
      changed,
      context: project(snap.context, CONTEXT_LIMITS),
    });
    info.dirty = false;
  }

  /** Every record goes through here, live or replayed. */
  record(rec: Rec): void {
    this.apply(rec);
    this.pending.push(rec);
  }

  /** Update the hub's picture from one record. */
  apply(rec: Rec): void {
    if ('t' in rec && rec.t > this.lastTime) this.lastTime = rec.t;
    switch (rec.k) {
      case 'chart':
        this.charts.set(rec.machine, rec.chart);
        return;
      case 'actor': {
        this.actors.set(rec.sid, {
          sid: rec.sid, id: rec.id, parent: rec.parent, machine: rec.machine, state: '', status: 'active', events: 0, context: null,
          since: rec.t, dirty: false, history: new Ring(this.o.historySize),
        });
        this.stopped.delete(rec.sid);
        this.ring.push(rec);
        return;
      }
      case 'event': {
        this.ring.push(rec);
        return;
      }
      case 'state': {
        const info = this.actors.get(rec.sid);
        if (!info) return;
        if (rec.name) info.id = rec.name;
        info.state = rec.state;
        info.status = rec.status;
        info.event = rec.event;
        if (rec.edge) info.edge = rec.edge;
        info.context = rec.context;
        info.history.push(rec);
        if (rec.changed) this.ring.push(rec);
        if (rec.status !== 'active') this.forgetStopped(rec.sid);
        return;
      }
      case 'dropped':
        this.ring.push(rec);
        return;
      case 'pools':
        this.pools = rec.gone ? mergePools(this.pools, rec.pools, rec.gone) : rec.pools;
        return;
      case 'figures':
        this.figures = rec.figures;
        return;
      case 'conns':
        this.conns = rec.conns;
        this.connsMore = rec.more ?? 0;
        return;
    }
  }

  /** Keep the last `keepStopped` stopped actors: a fleet stopping at once costs one step per actor, not a scan of them all for each. */
  private forgetStopped(sid: string): void {
    this.stopped.add(sid);
    for (const old of this.stopped) {
      if (this.stopped.size <= this.o.keepStopped) return;
      this.stopped.delete(old);
      this.actors.delete(old);
      this.forgotten.push(old);
    }
  }

  /** Read what changed, send one batch. Runs on the timer; never inside a transition. */
  flush(): void {
    const now = this.o.now();
    if (this.dropped) {
      this.record({ k: 'dropped', t: now, count: this.dropped, types: this.droppedTypes });
      this.dropped = 0;
      this.droppedTypes = {};
    }
    this.budget = this.o.eventBudget;
    const changed = new Set<ActorInfo>();
    for (const info of this.actors.values()) {
      if (info.dirty) this.sample(info, info.event, false);
    }
    for (const r of this.pending) if (r.k === 'state' || r.k === 'actor') {
      const info = this.actors.get(r.sid);
      if (info) changed.add(info);
    }
    const live = this.actors.size > 0 && this.hasLive();
    // After the last live actor stopped too: the pools of a proxy that stopped were never read again and
    // said SERVING for ever (`revproxy scenario ... --inspect`, whose page stays up after the scenarios).
    if (live || [...this.lastPools.values()].some((p) => !p.stopped)) this.readPools(now);
    // Its actors stopped, a process's connections close after them: read so, the log's last picture
    // (and a page's) listed them open under a stopped proxy.
    if (live || this.liveConns.size) this.readConns(now);
    // And the figures, until they settle: the header kept its last `1 req/s · 2 in flight` for good.
    if (live || this.figuresStirring) this.readFigures(now);
    const recs = this.pending;
    this.pending = [];
    const forgot = this.forgotten;
    this.forgotten = [];
    if (this.o.sink && recs.length) this.o.sink(recs.map((r) => JSON.stringify(r)).join('\n') + '\n', recs.length);
    if (!recs.length || !this.listeners.size) return;
    const batch: Batch = { recs, actors: [...changed].map(view), figures: this.figures, conns: this.conns, connsMore: this.connsMore, forgot: forgot.length ? forgot : undefined };
    for (const l of this.listeners) l(batch);
  }

  private hasLive(): boolean {
    for (const a of this.actors.values()) if (a.ref) return true;
    return false;
  }

  /**
   * The pools, read from live snapshots. A pool whose actor stopped is gone, but for one whose proxy
   * stopped: that one stays as last seen, marked stopped, while the hub keeps its actor (`keepStopped`).
   */
  private readPools(now: number): void {
    // Only the pools that changed: a fleet of 500 policies is 300 KB of pools, and one member's
    // change sent them all again to every page (and into the log) at each flush.
    const changed: PoolView[] = [];
    const live = new Set<string>();
    for (const pool of this.livePools()) {
      const key = poolKey(pool);
      live.add(key);
      const json = JSON.stringify(pool);
      if (this.lastPools.get(key)?.json === json) continue;
      this.lastPools.set(key, { view: pool, json });
      changed.push(pool);
    }
    const gone: string[] = [];
    for (const [key, last] of this.lastPools) {
      if (live.has(key)) continue;
      const proxy = last.view.proxy === undefined ? undefined : this.actors.get(last.view.proxy);
      if (this.actors.has(key) && proxy && proxy.status !== 'active') {
        if (last.stopped) continue;
        last.stopped = true;
        changed.push({ ...last.view, stoppedAt: now });
      } else {
        this.lastPools.delete(key);
        gone.push(key);
      }
    }
    if (changed.length || gone.length) this.record({ k: 'pools', t: now, pools: changed, gone });
  }

  private readFigures(now: number): void {
    if (this.metrics) {
      this.metrics.tick();
      const figures = this.metrics.figures();
      this.figuresStirring = figures.rps > 0 || figures.inflight > 0 || figures.p50 !== undefined;
      const fj = JSON.stringify(figures);
      if (fj !== this.lastFigures) {
        this.lastFigures = fj;
        this.record({ k: 'figures', t: now, figures });
      }
    }
  }

  /** The connections followed: the open ones, the last closed; recorded when they changed. */
  private readConns(now: number): void {
    const open: ConnView[] = [];
    let more = 0;
    for (const [id, c] of this.liveConns) {
      if (c.conn.closed) {
        this.liveConns.delete(id);
        this.closedConns = [connView(c), ...this.closedConns].slice(0, MAX_CLOSED_CONNS);
      } else if (open.length < MAX_OPEN_CONNS) open.push(connView(c));
      else more++;
    }
    const conns = [...open, ...this.closedConns];
    const cj = JSON.stringify(conns) + more;
    if (cj !== this.lastConns) {
      this.lastConns = cj;
      this.record({ k: 'conns', t: now, conns, more: more || undefined });
    }
  }

  /** The pools of every live proxy, read from their snapshots now. */
  livePools(): PoolView[] {
    const pools: PoolView[] = [];
    const now = this.o.now();
    for (const sid of this.memberSince.keys()) if (!this.actors.get(sid)?.ref) this.memberSince.delete(sid);
    for (const sid of this.clockOffsets.keys()) if (!this.actors.get(sid)?.ref) this.clockOffsets.delete(sid);
    for (const info of this.actors.values()) {
      if (info.machine !== 'pool' || !info.ref) continue;
      const snap = info.ref.getSnapshot() as { value: unknown; context: Parameters<typeof poolView>[0]['ctx'] };
      const proxySid = info.parent;
      const proxy = proxySid ? (this.actors.get(proxySid)?.ref?.getSnapshot() as { context?: ProxyContext } | undefined)?.context : undefined;
      let offset = proxySid ? this.clockOffsets.get(proxySid) : undefined;
      if (proxy && offset === undefined) this.clockOffsets.set(proxySid!, (offset = now - proxy.clock.now()));
      let seen = this.memberSince.get(info.sid);
      if (!seen) this.memberSince.set(info.sid, (seen = new Map()));
      const members = seen;
      for (const id of members.keys()) if (!snap.context.members.includes(id)) members.delete(id);
      pools.push(poolView({
        value: snap.value,
        ctx: snap.context,
        sid: info.sid,
        proxy,
        proxySid,
        tally: (p, m) => this.metrics?.tally(p, m, proxySid),
        left: info.leaves ?? new Map(),
        toEpoch: (t) => Math.round(t + (offset ?? 0)),
        since: (id, state) => {
          const was = members.get(id);
          if (was?.state === state) return was.since;
          members.set(id, { state, since: now });
          return now;
        },
      }));
    }
    return pools.sort(byPolicy);
  }

  /** The live proxy actors, with their session ids (for actions). */
  liveProxies(): Array<{ sid: string; ref: NonNullable<ActorInfo['ref']> }> {
    const out: Array<{ sid: string; ref: NonNullable<ActorInfo['ref']> }> = [];
    for (const info of this.actors.values()) if (info.machine === 'proxy' && info.ref) out.push({ sid: info.sid, ref: info.ref });
    return out;
  }

  /** In-flight requests of every live proxy (for metrics and figures). */
  inflight(): number {
    let n = 0;
    for (const info of this.actors.values()) {
      if (!info.ref) continue;
      const ctx = (info.ref.getSnapshot() as { context?: Record<string, unknown> }).context;
      if (info.machine === 'proxy' && ctx) n += proxyInflight(ctx as never);
      if (info.machine === 'client') n += (ctx?.book as { inFlight?: number } | undefined)?.inFlight ?? 0;
    }
    return n;
  }

  /** Answers counted by live server and client actors. */
  actorCounts(): Array<{ actor: string; kind: string; outcome: string; count: number }> {
    const out: Array<{ actor: string; kind: string; outcome: string; count: number }> = [];
    for (const info of this.actors.values()) {
      const ctx = (info.ref?.getSnapshot() as { context?: Record<string, unknown> } | undefined)?.context;
      if (!ctx) continue;
      const answers = info.machine === 'server' ? (ctx.runner as { outcomes?: { ok: number; errors: Map<string, number> } } | undefined)?.outcomes : undefined;
      if (answers) {
        out.push({ actor: info.id, kind: 'server', outcome: 'ok', count: answers.ok });
        for (const [outcome, count] of answers.errors) out.push({ actor: info.id, kind: 'server', outcome, count });
      }
      const outcomes = info.machine === 'client' ? (ctx.book as { outcomes?: Record<string, number> } | undefined)?.outcomes : undefined;
      for (const [outcome, count] of Object.entries(outcomes ?? {})) out.push({ actor: info.id, kind: 'client', outcome, count });
    }
    return out;
  }

  /**
   * Records that rebuild the hub's picture from nothing: what a new inspection log file starts
   * with after a rotation, so that it replays on its own (`revproxy inspect`). Without them a
   * rotated file held events of actors it never introduced: 4 actors, no chart, one pool of 50.
   */
  picture(): Rec[] {
    const t = this.o.now();
    const recs: Rec[] = [];
    for (const [machine, chart] of this.charts) recs.push({ k: 'chart', machine, chart });
    for (const a of this.actors.values()) {
      recs.push({ k: 'actor', t: a.since, sid: a.sid, id: a.id, parent: a.parent, machine: a.machine });
      const [state] = a.history.last(1);
      if (state) recs.push(state);
    }
    // Without `gone`: every pool, as a full picture has them.
    recs.push({ k: 'pools', t, pools: this.pools });
    if (this.figures) recs.push({ k: 'figures', t, figures: this.figures });
    recs.push({ k: 'conns', t, conns: this.conns, more: this.connsMore || undefined });
    return recs;
  }

  /** Everything a page needs when it (re)connects. */
  full(recent = 2000): Batch & { charts: Record<string, Omit<Chart, 'machine'>> } {
    return {
      recs: this.ring.last(recent),
      actors: [...this.actors.values()].map(view),
      pools: this.pools,
      figures: this.figures,
      conns: this.conns,
      connsMore: this.connsMore,
      charts: Object.fromEntries(this.charts),
    };
  }

  /**
   * A page of the event log, from the server's rows: a recorded log keeps every row it holds
   * (`serveRecorded`), more than a page can, and the page reads them here a page at a time, filtered.
   */
  rows(q: RowQuery): RowPage {
    const ring = this.ring;
    const end = Math.min(q.before ?? ring.total, ring.total);
    const rows: Array<Rec & { i: number }> = [];
    let matching = 0;
    let more = false;
    for (let i = ring.total - 1; i >= ring.first; i--) {
      const r = ring.at(i)!;
      if (!rowMatches(r, q)) continue;
      matching++;
      if (i >= end) continue;
      if (rows.length < q.limit) rows.push({ ...r, i });
      else more = true;
    }
    if (this.typesAt !== ring.total) {
      const types = new Set<string>();
      for (let i = ring.first; i < ring.total; i++) {
        const r = ring.at(i)!;
        if (r.k === 'event') types.add(typeKey(r.type));
      }
      this.types = [...types].sort();
      this.typesAt = ring.total;
    }
    return { rows: rows.reverse(), more, matching, total: ring.size, types: this.types };
  }

  /**
   * A recorded log whose every actor stopped ends with its process, and so do its connections: a log
   * recorded before the hub read them after the proxy stopped listed them open under a stopped proxy.
   */
  ended(): void {
    for (const a of this.actors.values()) if (a.status === 'active') return;
    this.conns = this.conns.map((c) => (c.closed ? c : { ...c, closed: true }));
    this.connsMore = 0;
  }

  /** The recorded states of one actor, oldest first. */
  history(sid: string): StateRec[] {
    return this.actors.get(sid)?.history.toArray() ?? [];
  }
}

/** Where an actor that dials (an upstream link, a client) dialed: its connection was made before it had an address to read. */
function dialedBy(info: ActorInfo | undefined): string | undefined {
  const ctx = (info?.ref?.getSnapshot() as { context?: { host?: unknown; port?: unknown; proxies?: Array<{ host: string; port: number }>; proxyIndex?: number } } | undefined)?.context;
  if (!ctx) return undefined;
  if (typeof ctx.host === 'string' && typeof ctx.port === 'number') return hostPort(ctx.host, ctx.port);
  const p = ctx.proxies?.[ctx.proxyIndex ?? 0];
  return p ? hostPort(p.host, p.port) : undefined;
}

/** Root actors have only a session id; name them after what they run: `server 100`, `client 1`. */
function rootName(machine: string, snap: { context?: unknown }): string {
  const id = (snap.context as { opts?: { id?: unknown } } | undefined)?.opts?.id;
  return typeof id === 'string' ? `${machine} ${id}` : machine;
}

function view(a: ActorInfo): ActorView {
  return { sid: a.sid, id: a.id, parent: a.parent, machine: a.machine, state: a.state, status: a.status, event: a.event, edge: a.edge, events: a.events, context: a.context, since: a.since };
}
