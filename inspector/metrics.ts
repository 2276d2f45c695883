/**
 * Metrics for a running system, served at `/metrics` in the Prometheus text
 * format (prom-client), by the admin endpoint and by the inspector. The
 * proxy's observer hooks are on its hot path, so they only add to plain
 * counters here; prom-client's metrics are filled from those counters when
 * scraped.
 *
 * Every label value comes from a known set (outcome and error codes, states,
 * roles) or from what registered servers named (policies, server ids), and
 * those are capped: a label never holds free text, so the number of series
 * stays bounded whatever peers send. More metrics (issue 18's registry, say)
 * register on `registry`.
 */
import type * as PromClient from 'prom-client';
import type { Counter, Gauge, Registry, MetricValue } from 'prom-client';
import { lazyPackage } from '../transport/lazy.js';
import { systemClock, type Clock } from '../transport/clock.js';
import { Paced } from './paced.js';
import { ErrorCode } from '../transport/errors.js';
import type { ProxyRequest } from '../actors/link.js';
import { CLIENT_GONE, type EjectReason, type Outcome, type ProxyObserver } from '../actors/proxy-options.js';
import { MEMBER_STATES } from '../actors/proxy-types.js';
import type { Logger } from '../actors/logger.js';
import { RecentLatency } from './latency.js';
import type { Figures, PoolView, Tally } from './views.js';
import { ROLES, type ConnSnapshot, type Role } from '../admin/conn-stats.js';
import { REFUSE_REASONS } from '../actors/port-limits.js';
import { TLS_FAILURES } from '../transport/foreign.js';

// Loaded when the first metrics are made (an admin endpoint or the inspector): a proxy without either never loads it.
const prom = lazyPackage<typeof PromClient>('prom-client');

/** prom-client's default metrics left out: gauges whose names end in `_total`, which Prometheus keeps for counters. */
export const UNLINTED_DEFAULTS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

/** Latency buckets in seconds: loopback answers take tenths of a millisecond, timeouts seconds. */
export const LATENCY_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A histogram's counts in LATENCY_BUCKETS (seconds). */
interface Buckets {
  buckets: Float64Array;
  sum: number;
  count: number;
}

interface PolicyTally extends Buckets {
  /** member -> outcome -> count */
  outcomes: Map<string, Map<string, number>>;
  /** The waits of its requests that waited in its queue for a server with room (made at the first). */
  queued?: Buckets;
  /** Its requests not sent again because `max_resets` servers went down with each (from the first). */
  poison?: number;
}

const newBuckets = (): Buckets => ({ buckets: new Float64Array(LATENCY_BUCKETS.length), sum: 0, count: 0 });

/** Counts `s` seconds in `t`. */
function observe(t: Buckets, s: number): void {
  t.sum += s;
  t.count++;
  for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
    if (s <= LATENCY_BUCKETS[i]!) {
      t.buckets[i]!++;
      break;
    }
  }
}

/**
 * One member's answers for its card. Its latency is counted from when a
 * card first shows it (`tally`); with the inspector's page, a member no card
 * showed for a sweep is forgotten, so members that come and go leave nothing
 * behind.
 */
interface MemberTally {
  answered: number;
  errors: number;
  recent?: RecentLatency;
  /** Read since the last sweep. */
  seen: boolean;
}

/** What the metrics read from the running actors when scraped. */
export interface MetricSources {
  pools(): PoolView[];
  inflight(): number;
  /** Answers counted by server and client actors (on their own processes). */
  actorCounts(): Array<{ actor: string; kind: string; outcome: string; count: number }>;
}

/**
 * Distinct policies, and servers per policy, counted one by one; more are
 * counted as OTHER. Those no pool holds any more keep their counts until room
 * is needed: then they are forgotten (their series end), so a proxy that saw
 * thousands of servers and policies come and go still counts each live one
 * under its own name.
 */
export const MAX_LABEL_VALUES = 1000;
/**
 * Policies that have left (no pool holds them) whose series /metrics keeps by default
 * (`admin.metrics_departed_policies`, `--metrics-departed-policies`): their requests, latencies and
 * revproxy_pool_members zeros (an alert on `{state="serving"} == 0` fires, as it does for a policy of
 * --ready-policies), until a member comes back, or DEPARTED_POLICY_SERIES_MS passes with no request
 * for them, or this many policies left (or were asked for) after them: the least recent goes first,
 * once a scrape has shown it gone (revproxy_departed_policies_dropped_total counts them). It was
 * 1000, and for the zeros only (the counts went when room was needed): policies churned through, each
 * with 20 requests, peaked at 25,024 lines (1.9 MB; 25 series and 3-6 KB of heap a policy), each scrape
 * rendered in one go, blocking the event loop 215-430 ms on a loaded 2-core machine (about 4 us a
 * line on an idle one); now 2,766 lines, 13-30 ms. The 60-minute soak's churn had 5,403 lines.
 */
export const DEPARTED_POLICIES_KEPT = 100;
/** The most `admin.metrics_departed_policies` may keep: as many as the policies' label values. */
export const MAX_DEPARTED_POLICIES = MAX_LABEL_VALUES;
/** How often, at most, the label values of departed policies and servers are looked for when room is needed. */
const MAKE_ROOM_EVERY_MS = 1000;
/**
 * How long the series of a server no pool holds stay (its answers, retries and ejections), so
 * that scrapes read its last counts: then they end. A server back under its id meanwhile keeps
 * them. Without it they stayed until room was needed (1000 servers a policy): a fleet of six
 * whose servers restart under new ids grew by a series or more each restart, for ever.
 */
export const DEPARTED_SERVER_SERIES_MS = 10 * 60_000;
/**
 * How long the series of a policy no pool holds stay (its requests, latencies and pool-member
 * zeros) once no request has named it either: then they end. A request for it (refused
 * NO_SERVER) starts the time again, so a policy clients still ask for keeps its zeros and an
 * alert on `serving == 0` keeps firing; a policy retired on purpose goes by itself. Without it
 * they stayed until 1000 policies had left: a fleet retiring a policy every 20 s (the soak's
 * churn) held 10-13 KB a policy, some 13 MB, and a scrape of 25 series each, for hours.
 */
export const DEPARTED_POLICY_SERIES_MS = 60 * 60_000;
/**
 * A series' label values as one map key, and back. Ids are any string (a NUL too): values joined
 * with a NUL split apart elsewhere, so a server registered as `s1\0TIMEOUT` had its answers counted
 * as `{server="s1",outcome="TIMEOUT"}`, another server's timeouts.
 */
const labelKey = (...values: string[]): string => JSON.stringify(values);
const labelsOf = (key: string): string[] => JSON.parse(key) as string[];

/** Whether a server (a label value: not '' nor OTHER) is a member of no pool of its policy now. */
function departedTest(pools: readonly PoolView[]): (policy: string, server: string) => boolean {
  const live = new Map(pools.map((p) => [p.policy, new Set(p.members.map((m) => m.id))]));
  return (policy, server) => server !== '' && server !== OTHER && !live.get(policy)?.has(server);
}

/** The label value of what is past MAX_LABEL_VALUES. */
export const OTHER = '_other';

// Recent latencies for the live p50/p99: a power-of-two ring, written without allocation.
const RECENT = 4096;
// Requests/s from per-tick slots; the hub ticks every `tickMs`.
const SLOTS = 64;
// A member's p50/p99 read the answers of the last one to two windows of this length.
const MEMBER_WINDOW_MS = 5000;
// Members no card asked for within this long are forgotten.
const MEMBER_SWEEP_MS = 60_000;

export class Metrics implements ProxyObserver {
  readonly registry: Registry = new (prom().Registry)();
  private readonly policies = new Map<string, PolicyTally>();
  /** Per policy, per member: what its card shows (only members a card has shown are counted). */
  private readonly cards = new Map<string, Map<string, MemberTally>>();
  private readonly retries = new Map<string, number>();
  /** Failed tries not retried for the retry budget, by policy, server and code. */
  private readonly overBudget = new Map<string, number>();
  /** Policies the last scrape showed with members, each with their sources. */
  private shown = new Map<string, Set<string>>();
  /** Policies shown once, held by no pool now: in the order they left, each with the sources it last had. */
  private readonly departed = new Map<string, Set<string>>();
  private readonly ejections = new Map<string, number>();
  private readonly recent = new Float64Array(RECENT);
  private readonly recentTick = new Uint32Array(RECENT);
  private recentAt = 0;
  private readonly slots = new Float64Array(SLOTS);
  private tickNo = 1;
  /** The members' latency window now (moved on by `tick`). */
  private window = 0;
  private totalAnswered = 0;
  private totalErrors = 0;
  private readonly clock: Clock;
  private readonly scrapes: Paced;
  private lastRoomMade = -Infinity;
  /** Per `labelKey(policy, server)`: when a scrape first found that server in no pool. */
  private readonly goneSince = new Map<string, number>();
  /**
   * Per policy no pool holds (with series: a count, or zeros): since when a scrape has found it so with this request
   * count (a new request starts the time again), and the scrape that first found it gone. In the order they left or
   * were last asked for, the least recent first: the first to go past `departedKept`.
   */
  private readonly policyGoneSince = new Map<string, { since: number; count: number; scrape: number }>();
  /** Scrapes so far (`text`): a policy found gone at one keeps its series at least until the next. */
  private scrapeNo = 0;
  /** How many departed policies keep their series (`admin.metrics_departed_policies`). */
  private departedKept: number;
  /** Departed policies whose series ended early, past `departedKept`. */
  private departedDropped = 0;
  /** Whether the bound has been said (once, and again after it changed). */
  private boundSaid = false;
  private readonly logger?: Pick<Logger, 'warn'>;
  /** The pools as the render under way read them once (`text`): the series made from them read the same, once a scrape. */
  private renderPools?: PoolView[];

  constructor(
    private readonly sources: MetricSources,
    private readonly tickMs = 200,
    /**
     * Also collect prom-client's process and Node metrics (process_cpu_seconds_total, ...); `clock` paces `makeRoom` and
     * times departures; `departedPolicies` (DEPARTED_POLICIES_KEPT) bounds the departed policies with series, said once to
     * `logger` when reached.
     */
    opts: { defaults?: boolean; clock?: Clock; departedPolicies?: number; logger?: Pick<Logger, 'warn'> } = {},
  ) {
    this.clock = opts.clock ?? systemClock;
    this.departedKept = opts.departedPolicies ?? DEPARTED_POLICIES_KEPT;
    this.logger = opts.logger;
    this.scrapes = new Paced(() => this.text(), this.clock);
    const self = this;
    const { Counter, Gauge, collectDefaultMetrics } = prom();
    if (opts.defaults) {
      collectDefaultMetrics({ register: this.registry });
      // Gauges named like counters, which `promtool check metrics` refuses (prom-client issue #283):
      // their totals are the sums of nodejs_active_handles{type}, nodejs_active_requests{type} and nodejs_active_resources{type}.
      for (const name of UNLINTED_DEFAULTS) this.registry.removeSingleMetric(name);
    }
    const tally = (map: Map<string, number>, names: string[]) =>
      function (this: Counter<string>) {
        this.reset();
        for (const [key, n] of map) {
          const parts = labelsOf(key);
          this.inc(Object.fromEntries(names.map((l, i) => [l, parts[i] ?? ''])), n);
        }
      };
    const outcomes = new Map<string, number>();
    new Counter({
      name: 'revproxy_requests_total',
      help: 'Requests answered by the proxy, by policy, server (empty when none was chosen) and outcome (ok, an error code, or client_gone: the client\'s connection closed before its answer)',
      labelNames: ['policy', 'server', 'outcome'],
      registers: [this.registry],
      collect: function (this: Counter<string>) {
        outcomes.clear();
        for (const [policy, t] of self.policies) for (const [server, m] of t.outcomes) for (const [outcome, n] of m) outcomes.set(labelKey(policy, server, outcome), n);
        tally(outcomes, ['policy', 'server', 'outcome']).call(this);
      },
    });
    this.registry.registerMetric(new PolicyHistogram('revproxy_request_duration_seconds', 'Time from a request reaching the proxy to its answer leaving it, by policy', this.policies, (t) => t) as never);
    this.registry.registerMetric(new PolicyHistogram('revproxy_queue_wait_seconds', 'Of the requests that waited in their policy\'s queue for a server with room, how long they waited there (all their stays), by policy', this.policies, (t) => t.queued) as never);
    new Counter({
      name: 'revproxy_retries_total',
      help: 'Requests sent again to another member after one failed them, by policy, failed server and the failure\'s error code',
      labelNames: ['policy', 'server', 'code'],
      registers: [this.registry],
      collect: tally(this.retries, ['policy', 'server', 'code']),
    });
    new Counter({
      name: 'revproxy_retries_over_budget_total',
      help: 'Requests a failed try was not retried for, their policy\'s retry budget spent (--retry-budget, --min-retry-rate): they got that try\'s answer; by policy, failed server and the failure\'s error code',
      labelNames: ['policy', 'server', 'code'],
      registers: [this.registry],
      collect: tally(this.overBudget, ['policy', 'server', 'code']),
    });
    new Counter({
      name: 'revproxy_poison_requests_total',
      help: 'Requests not sent to another server because the links of max_resets servers (--max-resets) went down while each held it, as a request the handler crashes on does: they got the last try\'s answer; by policy',
      labelNames: ['policy'],
      registers: [this.registry],
      collect: function (this: Counter<string>) {
        this.reset();
        for (const [policy, t] of self.policies) if (t.poison !== undefined) this.inc({ policy }, t.poison);
      },
    });
    new Counter({
      name: 'revproxy_ejections_total',
      help: 'Members taken out of rotation (direction="out") or put back (direction="back"), by policy, server and reason (consecutive_failures, unreachable, invalid_message, ended_by_server, closed_by_proxy, probe_succeeded, ejection_over)',
      labelNames: ['policy', 'server', 'reason', 'direction'],
      registers: [this.registry],
      collect: tally(this.ejections, ['policy', 'server', 'reason', 'direction']),
    });
    new Gauge({
      name: 'revproxy_pool_members',
      help: `Members of each policy pool, by state (${MEMBER_STATES.join(', ')}; 0 when no member is in it) and source (direct: a registration connection; registry: an entry in etcd; unlisted: an entry gone with its lease, kept while its link answers)`,
      labelNames: ['policy', 'state', 'source'],
      registers: [this.registry],
      collect: function (this: Gauge<string>) {
        this.reset();
        const pools = self.pools();
        for (const p of pools) {
          const seen = new Set(p.members.map((m) => m.source ?? 'direct'));
          if (seen.size === 0) seen.add('direct');
          // Every state reads, 0 included, while the policy is held: an alert on `{state="serving"} == 0`
          // or a ratio of ejected members needs the series there, not absent.
          for (const source of seen) for (const state of MEMBER_STATES) this.set({ policy: p.policy, state, source }, 0);
          for (const m of p.members) this.inc({ policy: p.policy, state: m.state, source: m.source ?? 'direct' });
        }
        // A policy whose last member left reads 0 too, rather than vanishing (no data, which no alert
        // on `== 0` sees), until its series end (`settle`).
        const held = new Set(pools.map((p) => p.policy));
        for (const [policy, seen] of self.departed) if (!held.has(policy)) for (const source of seen) for (const state of MEMBER_STATES) this.set({ policy, state, source }, 0);
      },
    });
    new Counter({
      name: 'revproxy_departed_policies_dropped_total',
      help: 'Policies that had left whose series (requests, latencies, pool-member zeros) ended before their hour without a request was up, because more than admin.metrics_departed_policies (--metrics-departed-policies) policies left or were asked for after them; each had been shown gone by a scrape',
      registers: [this.registry],
      collect: function (this: Counter<string>) {
        this.reset();
        this.inc(self.departedDropped);
      },
    });
    new Gauge({
      name: 'revproxy_queued_requests',
      help: "Requests waiting in each policy's queue for a server with room (queue_limit, queue_timeout), as HAProxy's current queue; a policy whose servers keep up reads 0",
      labelNames: ['policy'],
      registers: [this.registry],
      collect: function (this: Gauge<string>) {
        this.reset();
        for (const p of self.pools()) if (p.waiting !== undefined) this.set({ policy: p.policy }, p.waiting);
      },
    });
    new Gauge({
      name: 'revproxy_inflight_requests',
      help: 'Requests the proxy has forwarded (or queued for a server) and not yet answered',
      registers: [this.registry],
      collect: function (this: Gauge<string>) {
        this.set(sources.inflight());
      },
    });
    new Counter({
      name: 'revproxy_actor_answers_total',
      help: 'Answers counted by server actors (requests answered) and client actors (answers received, by outcome)',
      labelNames: ['actor', 'kind', 'outcome'],
      registers: [this.registry],
      collect: function (this: Counter<string>) {
        this.reset();
        for (const a of sources.actorCounts()) this.inc({ actor: a.actor, kind: a.kind, outcome: a.outcome }, a.count);
      },
    });
  }

  private policy(policy: string): PolicyTally {
    let t = this.policies.get(policy);
    if (t) return t;
    // Past the bound, new policies are counted together under OTHER (itself the one entry past it).
    if (policy !== OTHER && this.policies.size >= MAX_LABEL_VALUES && !(this.makeRoom() && this.policies.size < MAX_LABEL_VALUES)) {
      policy = OTHER;
      t = this.policies.get(OTHER);
      if (t) return t;
    }
    t = { ...newBuckets(), outcomes: new Map() };
    this.policies.set(policy, t);
    return t;
  }

  answered(policy: string, member: string | undefined, outcome: Outcome, latencyMs: number, req?: ProxyRequest, _tries?: number, proxy?: string): void {
    // A policy with no label yet whose request no server could take (NO_SERVER) gets none: a client naming
    // made-up policies must not use up the label values real ones need (Envoy keeps no stats per unknown cluster).
    // One that left (whose zeros a scrape still shows) keeps its own label: clients asking for it keep its series.
    let t = this.policies.get(policy) ?? this.policy(member === undefined && outcome === ErrorCode.NO_SERVER && !this.departed.has(policy) ? OTHER : policy);
    let server = member ?? '';
    if (member !== undefined && !t.outcomes.has(member) && t.outcomes.size >= MAX_LABEL_VALUES) {
      // Making room may forget this very policy (it has no pool now): its record is looked up again.
      server = this.makeRoom() && (t = this.policies.get(policy) ?? this.policy(policy)).outcomes.size < MAX_LABEL_VALUES ? member : OTHER;
    }
    let byOutcome = t.outcomes.get(server);
    if (!byOutcome) t.outcomes.set(server, (byOutcome = new Map()));
    byOutcome.set(outcome, (byOutcome.get(outcome) ?? 0) + 1);
    if (member !== undefined) {
      const m = this.card(policy, member, false, proxy);
      if (m) {
        // A client gone is neither the server's answer nor its error (its latency still counts).
        if (outcome === 'ok') m.answered++;
        else if (outcome !== CLIENT_GONE) m.errors++;
        m.recent?.add(latencyMs, this.window);
      }
    }
    observe(t, latencyMs / 1000);
    const waited = req?.waited;
    if (waited !== undefined) observe((t.queued ??= newBuckets()), waited / 1000);
    if (outcome === 'ok') this.totalAnswered++;
    else if (outcome !== CLIENT_GONE) this.totalErrors++;
    const at = this.recentAt++ & (RECENT - 1);
    this.recent[at] = latencyMs;
    this.recentTick[at] = this.tickNo;
    this.slots[this.tickNo % SLOTS]!++;
  }

  retried(policy: string, failed: string, code: ErrorCode): void {
    this.count(this.retries, labelKey(policy, failed, code));
  }

  retryRefused(policy: string, failed: string, code: ErrorCode): void {
    this.count(this.overBudget, labelKey(policy, failed, code));
  }

  poison(policy: string): void {
    const t = this.policy(policy);
    t.poison = (t.poison ?? 0) + 1;
  }

  ejected(policy: string, member: string, reason: EjectReason, back: boolean): void {
    this.count(this.ejections, labelKey(policy, member, reason, back ? 'back' : 'out'));
  }

  /** One more for series `k` of a per-server table, unless the table is full of live series (MAX_LABEL_VALUES). */
  private count(table: Map<string, number>, k: string): void {
    if (table.has(k) || table.size < MAX_LABEL_VALUES || (this.makeRoom() && table.size < MAX_LABEL_VALUES)) table.set(k, (table.get(k) ?? 0) + 1);
  }

  /**
   * A table is full: forget the counts of policies no pool holds now and of
   * servers no pool has as a member (at most once a MAKE_ROOM_EVERY_MS, as it
   * reads every pool). True when anything was forgotten.
   */
  private makeRoom(): boolean {
    const now = this.clock.now();
    if (now - this.lastRoomMade < MAKE_ROOM_EVERY_MS) return false;
    this.lastRoomMade = now;
    const pools = this.sources.pools();
    const live = new Set(pools.map((p) => p.policy));
    const gone = departedTest(pools);
    let forgot = 0;
    for (const [policy, t] of this.policies) {
      if (policy !== OTHER && !live.has(policy)) {
        this.policies.delete(policy);
        forgot++;
        continue;
      }
      for (const server of t.outcomes.keys()) if (gone(policy, server) && t.outcomes.delete(server)) forgot++;
    }
    for (const table of [this.retries, this.overBudget, this.ejections]) {
      for (const k of table.keys()) {
        const [policy, server] = labelsOf(k) as [string, string];
        if (gone(policy, server) && table.delete(k)) forgot++;
      }
    }
    return forgot > 0;
  }

  /**
   * Before each scrape renders: the policies that left since the last one (shown with members then, held by
   * no pool now) keep their sources for their zeros, and the series that are over end (`forgetDeparted`),
   * so every series of the scrape reads the same policies.
   */
  private settle(pools: readonly PoolView[]): void {
    const held = new Set(pools.map((p) => p.policy));
    for (const [policy, seen] of this.shown) if (!held.has(policy)) this.departed.set(policy, seen);
    for (const policy of held) this.departed.delete(policy);
    this.shown = new Map();
    for (const p of pools) if (p.members.length > 0) this.shown.set(p.policy, new Set(p.members.map((m) => m.source ?? 'direct')));
    this.scrapeNo++;
    this.forgetDeparted(pools);
  }

  /**
   * At each scrape: the counts of servers no pool has held for DEPARTED_SERVER_SERIES_MS are
   * forgotten (their series end), and all series of policies no pool has held and no request
   * has named for DEPARTED_POLICY_SERIES_MS, so the series follow the fleet, not its history.
   */
  private forgetDeparted(pools: readonly PoolView[]): void {
    const now = this.clock.now();
    this.forgetDepartedPolicies(pools, now);
    const gone = departedTest(pools);
    const still = new Set<string>();
    const expired = (policy: string, server: string): boolean => {
      if (!gone(policy, server)) return false;
      const k = labelKey(policy, server);
      still.add(k);
      const since = this.goneSince.get(k);
      if (since === undefined) this.goneSince.set(k, now);
      return since !== undefined && now - since >= DEPARTED_SERVER_SERIES_MS;
    };
    for (const [policy, t] of this.policies) for (const server of t.outcomes.keys()) if (expired(policy, server)) t.outcomes.delete(server);
    for (const table of [this.retries, this.overBudget, this.ejections]) {
      for (const k of table.keys()) {
        const [policy, server] = labelsOf(k) as [string, string];
        if (expired(policy, server)) table.delete(k);
      }
    }
    for (const k of this.goneSince.keys()) if (!still.has(k)) this.goneSince.delete(k);
  }

  private forgetDepartedPolicies(pools: readonly PoolView[], now: number): void {
    const held = new Set(pools.map((p) => p.policy));
    const quiet = (policy: string): boolean => {
      if (policy === OTHER || held.has(policy)) return false;
      const count = this.policies.get(policy)?.count ?? 0;
      const gone = this.policyGoneSince.get(policy);
      if (gone === undefined || gone.count !== count) {
        // Found gone, or asked for since: the most recent now (last in the order).
        this.policyGoneSince.delete(policy);
        this.policyGoneSince.set(policy, { since: now, count, scrape: gone?.scrape ?? this.scrapeNo });
        return false;
      }
      return now - gone.since >= DEPARTED_POLICY_SERIES_MS;
    };
    const expired = new Set<string>();
    for (const policy of this.policies.keys()) if (quiet(policy)) expired.add(policy);
    for (const policy of this.departed.keys()) if (!this.policies.has(policy) && quiet(policy)) expired.add(policy);
    for (const policy of this.policyGoneSince.keys()) {
      if (held.has(policy) || expired.has(policy) || !(this.policies.has(policy) || this.departed.has(policy))) this.policyGoneSince.delete(policy);
    }
    // Past the bound, the least recent go first: each once a scrape before this one has shown it gone (its
    // final counts, and its zeros), so a policy whose last server left is never read only as missing.
    let over = this.policyGoneSince.size - this.departedKept;
    let first: string | undefined;
    for (const [policy, gone] of this.policyGoneSince) {
      if (over <= 0) break;
      if (gone.scrape >= this.scrapeNo) continue;
      this.policyGoneSince.delete(policy);
      expired.add(policy);
      first ??= policy;
      this.departedDropped++;
      over--;
    }
    if (first !== undefined && !this.boundSaid) {
      this.boundSaid = true;
      this.logger?.warn('metrics_departed_bound', `/metrics keeps the series of at most ${this.departedKept} privacy policies that have left (admin.metrics_departed_policies, --metrics-departed-policies), and more have left or been asked for within the hour: the series of policy ${first} ended before their hour was up, and from now on the least recent go first, each counted in revproxy_departed_policies_dropped_total (said once). Raise the setting to keep more; list a policy that must alert for as long as it has no server in admin.ready_policies`, { kept: this.departedKept, policy: first });
    }
    if (expired.size === 0) return;
    for (const policy of expired) {
      this.policies.delete(policy);
      this.departed.delete(policy);
      this.cards.delete(policy);
    }
    // Its servers' series too (retries, ejections), which would otherwise end DEPARTED_SERVER_SERIES_MS after they left.
    for (const table of [this.retries, this.overBudget, this.ejections]) {
      for (const k of table.keys()) if (expired.has(labelsOf(k)[0]!)) table.delete(k);
    }
  }

  /**
   * How many departed policies keep their series (`admin.metrics_departed_policies`, a reload): the next
   * scrape ends those past it. A new bound is said again when reached.
   */
  setDepartedPolicies(n: number): void {
    if (n !== this.departedKept) this.boundSaid = false;
    this.departedKept = n;
  }

  /** Answers and errors of one member (of the proxy whose session id is `proxy`, if named), for the pool view. */
  tally(policy: string, member: string, proxy?: string): Tally | undefined {
    const m = this.card(policy, member, true, proxy);
    if (!m) return undefined;
    m.seen = true;
    m.recent ??= new RecentLatency();
    const q = m.recent.quantiles(this.window);
    return { answered: m.answered, errors: m.errors, p50: q?.p50, p99: q?.p99 };
  }


  /** Called by the hub every `tickMs`: moves the requests/s window on. */
  tick(): void {
    this.tickNo++;
    this.window = Math.floor((this.tickNo * this.tickMs) / MEMBER_WINDOW_MS);
    this.slots[this.tickNo % SLOTS] = 0;
    if (this.tickNo % Math.max(1, Math.round(MEMBER_SWEEP_MS / this.tickMs)) === 0) this.sweepMembers();
  }

  /**
   * A member's card tally, made when first needed (up to MAX_LABEL_VALUES policies, and members per policy).
   * Per proxy as well: several proxies in one process (`revproxy scenario A.yaml B.yaml`) each have a
   * card of server 1 of policy P, and one tally showed the first one's answers on the second one's card.
   */
  private card(policy: string, member: string, seen: boolean, proxy = ''): MemberTally | undefined {
    let members = this.cards.get(policy);
    if (!members && this.cards.size < MAX_LABEL_VALUES) this.cards.set(policy, (members = new Map()));
    const key = proxy ? `${proxy}\0${member}` : member;
    let m = members?.get(key);
    if (!m && members && members.size < MAX_LABEL_VALUES) members.set(key, (m = { answered: 0, errors: 0, seen }));
    return m;
  }

  private sweepMembers(): void {
    for (const [policy, members] of this.cards) {
      for (const [id, m] of members) {
        if (m.seen) m.seen = false;
        else members.delete(id);
      }
      if (members.size === 0) this.cards.delete(policy);
    }
  }

  /** Live figures over the last second. */
  figures(): Figures {
    const per = Math.max(1, Math.round(1000 / this.tickMs));
    let n = 0;
    // Whole ticks just before the current (partial) one.
    for (let k = 1; k <= per; k++) n += this.slots[(this.tickNo - k + SLOTS) % SLOTS]!;
    const since = this.tickNo - per;
    const lat: number[] = [];
    const filled = Math.min(this.recentAt, RECENT);
    for (let i = 0; i < filled; i++) if (this.recentTick[i]! >= since) lat.push(this.recent[i]!);
    lat.sort((a, b) => a - b);
    const q = (p: number): number | undefined => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : undefined);
    return { rps: n * (1000 / (per * this.tickMs)), p50: q(0.5), p99: q(0.99), inflight: this.sources.inflight(), answered: this.totalAnswered, errors: this.totalErrors };
  }

  /**
   * The text of every series. The pools are read once for it, not once per series made from them
   * (members, queued requests): prom-client runs every collect as `metrics()` is called, before it
   * first awaits, so the snapshot is let go as soon as that call returns.
   */
  text(): Promise<string> {
    const pools = (this.renderPools = this.sources.pools());
    try {
      this.settle(pools);
      return this.registry.metrics();
    } finally {
      this.renderPools = undefined;
    }
  }

  /** The pools: those the render under way read, or read now (a collect outside `text`). */
  private pools(): PoolView[] {
    return this.renderPools ?? this.sources.pools();
  }

  /**
   * The text for a scrape over HTTP (the admin endpoint's and the inspector's `/metrics`), paced
   * (paced.ts): a 900-policy fleet's text took about 95 ms to make, and 64 connections asking for it
   * again and again left the proxy's clients 8 answers in 8 s.
   */
  scrape(): Promise<string> {
    return this.scrapes.get();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * A histogram by policy (the latency, the queue waits), rendered from the per-policy
 * buckets counted on the hot path: prom-client's own Histogram hashes its labels on every
 * observe. A policy whose `pick` has no tally has no series.
 */
class PolicyHistogram {
  readonly type = 'histogram';
  /** As a prom-client metric says its labels (its series have `le` besides). */
  readonly labelNames = ['policy'];
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly policies: Map<string, PolicyTally>,
    private readonly pick: (t: PolicyTally) => Buckets | undefined,
  ) {}

  get(): { name: string; help: string; type: string; values: MetricValue<string>[]; aggregator: string } {
    const values: Array<MetricValue<string> & { metricName: string }> = [];
    for (const [policy, p] of this.policies) {
      const t = this.pick(p);
      if (t === undefined) continue;
      let cum = 0;
      LATENCY_BUCKETS.forEach((le, i) => {
        cum += t.buckets[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { policy, le }, value: cum });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { policy, le: '+Inf' }, value: t.count });
      values.push({ metricName: `${this.name}_sum`, labels: { policy }, value: t.sum });
      values.push({ metricName: `${this.name}_count`, labels: { policy }, value: t.count });
    }
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }

  reset(): void {}
}

/** What the operator's metrics read when scraped (admin endpoint). */
export interface OperationsSources {
  conns(): ConnSnapshot;
  /** The listener's limit on connections open at once, as last applied (undefined before it listens). */
  maxConnections(): number | undefined;
  /** Log lines dropped so far because a reader was too slow, per log. */
  dropped(): Record<'main' | 'access', number>;
  /** Reloads so far: applied, or refused (invalid file); whether the last one was applied (true before any), and when the configuration running was last read (ms). */
  reloads(): Record<'applied' | 'refused', number> & { lastOk?: boolean; lastOkAt?: number };
  /** This build's version and git revision (cli/build.ts), for `revproxy_build_info`. */
  version?: string;
  revision?: string;
  /** The certificate files in use, by the setting that names them (tls.cert, tls.ca, registry.tls.*): when each begins and ends (ms); and each CRL of tls.crl (`crl`, its issuer the subject): when it was made and its next is due. */
  certs(): ReadonlyArray<{ role: string; file: string; notBefore: number; notAfter: number; subject?: string; crl?: true }>;
}

/**
 * The operator's metrics beside the request metrics: connections by role,
 * bytes in and out by role, log lines dropped, reloads. Every label value is
 * from a fixed set.
 */
export function addOperationsMetrics(registry: Registry, s: OperationsSources): void {
  const { Counter, Gauge } = prom();
  // One metric with one label whose values are a fixed set, read from its source at each scrape.
  const labelled = <K extends string>(name: string, help: string, label: string, keys: readonly K[], read: () => Record<K, number>, Kind: typeof Gauge | typeof Counter) =>
    new Kind({
      name,
      help,
      labelNames: [label],
      registers: [registry],
      collect: function (this: Gauge<string> | Counter<string>) {
        this.reset();
        const values = read();
        for (const key of keys) (this as Gauge<string>).inc({ [label]: key }, values[key]);
      },
    });
  // One pass over the open sockets a scrape, for the four metrics that read them: a proxy of 3,000 servers holds
  // 6,000 (their registrations and links), read four times in each scrape, about 15 ms of it.
  let taken: ConnSnapshot | undefined;
  const conns = (): ConnSnapshot => {
    if (!taken) {
      taken = s.conns();
      setImmediate(() => (taken = undefined));
    }
    return taken;
  };
  const byRole = (name: string, help: string, pick: (c: ConnSnapshot) => Record<Role, number>, Kind: typeof Gauge | typeof Counter) =>
    labelled(name, help, 'role', ROLES, () => pick(conns()), Kind);
  byRole('revproxy_connections', 'Connections open now, by role (client, registration, unknown: no message yet, upstream: to servers)', (c) => c.open, Gauge);
  new Gauge({
    name: 'revproxy_max_connections',
    help: 'Connections the proxy\'s port keeps open at once (client, registration and unknown: revproxy_connections but upstream); past it each new one is refused: max_connections, or less when the open-files limit leaves room for fewer; follows reloads',
    registers: [registry],
    collect: function (this: Gauge<string>) {
      const limit = s.maxConnections();
      if (limit === undefined || !Number.isFinite(limit)) this.reset();
      else this.set(limit);
    },
  });
  labelled('revproxy_connections_refused_total', 'Connections the proxy\'s port refused as they came, by reason (max_connections: past revproxy_max_connections; per_peer: from an address with max_conns_per_peer open; conn_rate: from an address opening more than max_conn_rate_per_peer a second; tls_handshakes: a TLS connection that waited too long to begin its handshake, or found too many waiting, max_tls_handshakes), as HAProxy\'s denied connections and Envoy\'s downstream_cx_overflow', 'reason', REFUSE_REASONS, () => conns().refused, Counter);
  labelled('revproxy_tls_handshake_failures_total', 'TLS handshakes the proxy\'s port failed, each a tls_refused line, by reason (no_certificate; unknown_ca: signed by no CA in tls.ca; expired; not_yet_valid; revoked: listed by a CRL in tls.crl; crl: tls.crl cannot vouch - no CRL from the peer\'s CA, or one past its nextUpdate; bad_purpose: not a client/server certificate; plain_tcp; http; timeout; closed: the peer hung up mid-handshake; peer_alert: it sent a TLS alert; other), as Envoy\'s ssl.fail_verify_* and HAProxy\'s failed handshakes', 'reason', TLS_FAILURES, () => conns().tlsFailures, Counter);
  byRole('revproxy_received_bytes_total', 'Bytes read from peers, by role', (c) => c.received, Counter);
  byRole('revproxy_sent_bytes_total', 'Bytes written to peers, by role', (c) => c.sent, Counter);
  labelled('revproxy_log_lines_dropped_total', 'Log lines dropped because the log\'s reader (or disk) was slower than the log, by log (main, access)', 'log', ['main', 'access'], () => s.dropped(), Counter);
  labelled('revproxy_reloads_total', 'Configuration reloads (SIGHUP), by result (applied, refused: the file was invalid and the running configuration stayed)', 'result', ['applied', 'refused'], () => s.reloads(), Counter);
  // As Prometheus's prometheus_config_last_reload_successful and _success_timestamp_seconds: what an
  // alert on a refused reload needs for as long as the proxy runs the old configuration.
  new Gauge({
    name: 'revproxy_config_last_reload_successful',
    help: 'Whether the last configuration reload (SIGHUP) was applied: 1, or 0 when it was refused and the proxy runs the configuration it had before (1 before any reload)',
    registers: [registry],
    collect: function (this: Gauge<string>) {
      this.set(s.reloads().lastOk === false ? 0 : 1);
    },
  });
  new Gauge({
    name: 'revproxy_config_last_reload_success_timestamp_seconds',
    help: 'When the configuration running was read (Unix time): the start, or the last reload applied',
    registers: [registry],
    collect: function (this: Gauge<string>) {
      const at = s.reloads().lastOkAt;
      if (at === undefined) this.reset();
      else this.set(Math.floor(at / 1000));
    },
  });
  if (s.version !== undefined) {
    // As prometheus_build_info: a constant 1 whose labels say which build runs (a rollout's version skew, at a glance).
    new Gauge({ name: 'revproxy_build_info', help: 'The build running: version (package.json), git revision (unknown outside a checkout) and Node version; always 1', labelNames: ['version', 'revision', 'node'], registers: [registry] }).set({ version: s.version, revision: s.revision ?? 'unknown', node: process.version }, 1);
  }
  // As Traefik's traefik_tls_certs_not_after: one series per certificate file in use (config/files.ts `loadedCerts`: a chain's
  // certificate that ends first, a CA bundle's first to end of those that have not ended, so an old CA left in it does not fire RevproxyCertificateExpired).
  // The CRLs of tls.crl likewise, one series per CRL (a file holds one for each CA): its issuer is a label of its own.
  const validity = (name: string, help: string, at: 'notBefore' | 'notAfter', crl = false) =>
    new Gauge({
      name,
      help,
      labelNames: crl ? ['role', 'file', 'issuer'] : ['role', 'file'],
      registers: [registry],
      collect: function (this: Gauge<string>) {
        this.reset();
        for (const c of s.certs()) if (Boolean(c.crl) === crl) this.set({ role: c.role, file: c.file, ...(crl ? { issuer: c.subject ?? '' } : {}) }, Math.floor(c[at] / 1000));
      },
    });
  validity('revproxy_tls_cert_not_after_seconds', 'When each certificate in use ends (Unix time), by the setting that names its file (role: tls.cert, tls.ca, registry.tls.cert, registry.tls.ca) and the file; a renewal takes effect on SIGHUP', 'notAfter');
  validity('revproxy_tls_cert_not_before_seconds', 'When each certificate in use began (Unix time), by role and file as revproxy_tls_cert_not_after_seconds: the two give its lifetime', 'notBefore');
  validity('revproxy_tls_crl_next_update_seconds', 'When each CRL in use is due to be replaced (its nextUpdate, Unix time), by the setting that names its file (role: tls.crl, upstream_tls.crl), the file and its issuer: past it TLS refuses every peer certificate that CA signed (CRL_HAS_EXPIRED); a fresh CRL takes effect on SIGHUP', 'notAfter', true);
  validity('revproxy_tls_crl_this_update_seconds', 'When each CRL in use was made (its thisUpdate, Unix time), by role, file and issuer as revproxy_tls_crl_next_update_seconds: the two give its lifetime', 'notBefore', true);
}

/** What the registry metrics read when scraped: the registry as the proxy last heard of it. */
export interface RegistrySource {
  up: boolean;
  synced: boolean;
  entries: number;
  advertised: boolean;
  syncs: Record<'start' | 'reconnect' | 'compacted', number>;
}

/**
 * The registry's health beside the proxy's metrics (with --registry): whether
 * etcd answers, how many server entries the proxy holds from it, whether this
 * proxy is advertised to clients, and the whole reads of the prefix by reason.
 */
export function addRegistryMetrics(registry: Registry, status: () => RegistrySource | undefined): void {
  const { Counter, Gauge } = prom();
  const gauge = (name: string, help: string, value: (s: RegistrySource) => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect: function (this: Gauge<string>) {
        const s = status();
        this.set(s ? value(s) : 0);
      },
    });
  gauge('revproxy_registry_up', 'Whether etcd answers (1) or not (0); while 0 the proxy serves with the membership it last saw', (s) => (s.up ? 1 : 0));
  gauge('revproxy_registry_synced', 'Whether the proxy has read its servers from the registry at least once (1) or not yet (0)', (s) => (s.synced ? 1 : 0));
  gauge('revproxy_registry_entries', 'Server entries the proxy holds from the registry (admitted or not)', (s) => s.entries);
  gauge('revproxy_registry_advertised', 'Whether this proxy\'s own key is in the registry, where clients find it (1) or not (0)', (s) => (s.advertised ? 1 : 0));
  new Counter({
    name: 'revproxy_registry_syncs_total',
    help: 'Whole reads of the registry\'s server prefix, by reason (start; reconnect: etcd came back; compacted: the watch fell behind etcd\'s history)',
    labelNames: ['reason'],
    registers: [registry],
    collect: function (this: Counter<string>) {
      this.reset();
      const s = status();
      for (const reason of ['start', 'reconnect', 'compacted'] as const) this.inc({ reason }, s?.syncs[reason] ?? 0);
    },
  });
}
