/**
 * Runs one scenario: starts the proxy and the servers on fresh ephemeral
 * ports, plays every step in order, and reports each one passed, failed (with
 * what was expected and what happened) or skipped. Only the interfaces a user
 * has are used: the actors' public surface or the `revproxy` command, client
 * runs, and raw sockets.
 */
import { connect } from 'node:net';
import { dirname, resolve } from 'node:path';
import { runClient, type Packet } from '../actors/index.js';
import { loadPackets } from '../config/files.js';
import { encodeFrame, FrameDecoder } from '../transport/frame.js';
import { JsonDecoder } from '../transport/json.js';
import { checkPool, checkRaw, checkSend, rawSettled, summariseSend, type Diff, type RawSummary } from './expect.js';
import type { PoolExpect, RawStep, Scenario, SendStep, ServerSpec, Step } from './format.js';
import { InProcessTopology } from './inprocess.js';
import { ProcessTopology } from './processes.js';
import { REFUSALS, type Attach, type Topology } from './topology.js';

export type StepStatus = 'passed' | 'failed' | 'skipped';

export interface StepReport {
  /** The line the step starts on; absent for the proxy's start. */
  line?: number;
  kind: string;
  label: string;
  status: StepStatus;
  ms: number;
  /** Expectations that did not hold. */
  diffs: Diff[];
  /** An action that could not be done (not an expectation). */
  error?: string;
  /** What happened, for the JSON report. */
  got?: unknown;
  /** The steps of a parallel step. */
  steps?: StepReport[];
}

export interface ScenarioReport {
  file: string;
  name: string;
  mode: 'in-process' | 'processes';
  ok: boolean;
  ms: number;
  steps: StepReport[];
}

export interface RunOptions {
  /** Run the proxy and servers as `revproxy` processes. */
  processes?: boolean;
  /** The inspector, for in-process actors (clients too, in both modes). */
  attach?: Attach;
  /** With --processes: start the proxy process with its own inspector page; its address goes to `onNote`. */
  inspectProxy?: boolean;
  /** Lines for the user that are not steps (where the inspector is). */
  onNote?: (line: string) => void;
  /** Told of each top-level step as it ends, for live output. */
  onStep?: (step: StepReport) => void;
}

const DEFAULT_TIMEOUT = 5000;

/** Run a loaded scenario (see loader.ts); never throws for a failing step, only reports it. */
export async function runScenario(sc: Scenario, opts: RunOptions = {}): Promise<ScenarioReport> {
  const topo: Topology = opts.processes ? new ProcessTopology({ inspect: opts.inspectProxy, onNote: opts.onNote }, sc.registry) : new InProcessTopology(opts.attach, sc.registry);
  const run = new Run(sc, topo, opts.attach);
  const t0 = performance.now();
  const steps: StepReport[] = [];
  const emit = (r: StepReport): void => {
    steps.push(r);
    opts.onStep?.(r);
  };
  try {
    const proxy = await run.timed({ kind: 'proxy', label: 'start proxy' }, run.startTimeout(), () => topo.startProxy(sc.proxy ?? {}).then(() => ({ diffs: [] })));
    emit(proxy);
    const rest: Array<{ line: number; kind: string; label: string; go: () => Promise<StepReport> }> = [
      ...sc.servers.map((s) => ({ line: s.line, kind: 'start', label: serverLabel(s), go: () => run.timed({ line: s.line, kind: 'start', label: serverLabel(s) }, run.startTimeout(), () => run.start(s, undefined, run.startTimeout())) })),
      ...sc.steps.map((st) => ({ line: st.line, kind: st.kind, label: labelOf(st), go: () => run.step(st) })),
    ];
    for (const r of rest) {
      // Without a proxy nothing can happen: say so for every step rather than fail each.
      if (proxy.status !== 'passed') emit({ line: r.line, kind: r.kind, label: r.label, status: 'skipped', ms: 0, diffs: [] });
      else emit(await r.go());
    }
  } finally {
    await topo.close();
  }
  return { file: sc.file, name: sc.name, mode: topo.mode, ok: steps.every((s) => s.status !== 'failed'), ms: Math.round(performance.now() - t0), steps };
}

interface Outcome {
  diffs: Diff[];
  got?: unknown;
}

/** One scenario's run: the topology, and how each kind of step is played. */
class Run {
  constructor(
    private readonly sc: Scenario,
    private readonly topo: Topology,
    private readonly attach: Attach = {},
  ) {}

  stepTimeout(step?: { timeout?: number }): number {
    return step?.timeout ?? this.sc.timeout ?? DEFAULT_TIMEOUT;
  }

  /**
   * Starting the proxy and the `servers:` list: no step of the file's, so no
   * `timeout` of its own to set. The scenario's, but never less than the
   * default: a `timeout: 300` meant for the story failed every scenario with
   * --processes, where a process takes most of a second to start.
   */
  startTimeout(): number {
    return Math.max(this.sc.timeout ?? DEFAULT_TIMEOUT, DEFAULT_TIMEOUT);
  }

  /** Times an action under a deadline and turns what it returns or throws into a report. */
  async timed(head: { line?: number; kind: string; label: string }, deadline: number | undefined, act: () => Promise<Outcome & { steps?: StepReport[] }>): Promise<StepReport> {
    const t0 = performance.now();
    const base = { ...head, ms: 0 };
    try {
      const out = await (deadline === undefined ? act() : withDeadline(act(), deadline));
      const failed = out.diffs.length > 0 || (out.steps?.some((s) => s.status === 'failed') ?? false);
      return { ...base, ...out, status: failed ? 'failed' : 'passed', ms: elapsed(t0) };
    } catch (err) {
      return { ...base, status: 'failed', diffs: [], error: (err as Error).message, ms: elapsed(t0) };
    }
  }

  async step(st: Step): Promise<StepReport> {
    if (st.delay) await sleep(st.delay);
    const head = { line: st.line, kind: st.kind, label: labelOf(st) };
    const t = this.stepTimeout(st);
    switch (st.kind) {
      // A send is bounded per request (the client's timeout), so it always ends with every answer counted.
      case 'send':
        return this.timed(head, undefined, () => this.send(st));
      case 'raw':
        return this.timed(head, undefined, () => this.raw(st, t));
      case 'start':
        return this.timed(head, t, () => this.start(st.start.server, st.expect?.refused, t));
      case 'kill':
        return this.timed(head, t, () => this.leave(st.kill.server, t, () => this.topo.killServer(st.kill.server)));
      case 'stop':
        return this.timed(head, t, () => this.leave(st.stop.server, t, () => this.topo.stopServer(st.stop.server)));
      case 'wait':
        return this.timed(head, undefined, () => sleep(st.wait).then(() => ({ diffs: [] })));
      case 'restart':
        return this.timed(head, t, () => this.topo.restartProxy().then(() => ({ diffs: [], got: { port: this.topo.port } })));
      case 'expect_pool':
        return this.timed(head, undefined, () => this.pool(st.expect_pool, t));
      case 'parallel':
        return this.timed(head, undefined, async () => ({ diffs: [], steps: await Promise.all(st.parallel.map((s) => this.step(s))) }));
      default:
        throw new Error(`unknown step ${(st as { kind: string }).kind}`);
    }
  }

  /** Start a server and wait for the proxy's word on its setup: registered, or refused with a code. */
  async start(spec: ServerSpec, refused: string | undefined, ms: number): Promise<Outcome> {
    const since = this.topo.events.mark();
    const running = await this.topo.startServer(spec);
    const rec = await this.topo.events.next(since, (r) => (r.event === 'register' || REFUSALS.has(r.event)) && String(r.id) === spec.id, ms, running.ended);
    if (!rec) {
      const why = await Promise.race([running.ended, sleep(0).then(() => undefined)]);
      throw new Error(why ? `server ${spec.id} ended before the proxy registered it: ${why}` : `the proxy did not register server ${spec.id} within ${ms} ms`);
    }
    const got = rec.event === 'register' ? 'registered' : String(rec.code ?? 'refused');
    if (refused !== undefined) return { diffs: got === refused ? [] : [{ what: 'refused', expected: refused, got, note: rec.msg }], got };
    if (rec.event !== 'register') throw new Error(`the proxy refused server ${spec.id} (${String(rec.code ?? '?')}): ${rec.msg}`);
    // Registered is not yet serving: the proxy first connects to the server's listen port.
    const up = await this.topo.events.next(since, (r) => (r.event === 'serving' || r.event === 'down') && String(r.id) === spec.id, ms, running.ended);
    if (!up) throw new Error(`the proxy registered server ${spec.id} but did not reach it within ${ms} ms`);
    if (up.event === 'down') throw new Error(`the proxy registered server ${spec.id} but cannot reach it: ${up.msg}`);
    // A fleet: every proxy takes the server from the registry.
    for (let n = 2; n <= this.topo.ports.length; n++) {
      const events = this.topo.eventsOf(n)!;
      const other = await events.next(0, (r) => r.event === 'serving' && String(r.id) === spec.id && events.isMember(spec.id), ms, running.ended);
      if (!other) throw new Error(`proxy ${n} did not take server ${spec.id} from the registry within ${ms} ms`);
    }
    return { diffs: [], got: 'serving' };
  }

  /** Kill or stop a server; done when the proxy has taken it out of its pool. */
  async leave(id: string, ms: number, act: () => Promise<void>): Promise<Outcome> {
    const since = this.topo.events.mark();
    const member = this.topo.events.isMember(id);
    await act();
    if (!member) return { diffs: [], got: 'was not in any pool' };
    const rec = await this.topo.events.next(since, (r) => r.event === 'deregister' && String(r.id) === id, ms);
    if (!rec) return { diffs: [{ what: 'pool', expected: `server ${id} out of its pool`, got: `still a member after ${ms} ms` }] };
    return { diffs: [], got: rec.msg };
  }

  async send(st: SendStep): Promise<Outcome> {
    const s = st.send;
    let packets: Packet[];
    if (s.pkt) packets = loadPackets(s.pkt.map((p) => resolve(dirname(this.sc.file), p)), s.client ?? '0');
    else {
      const payloads = s.payloads ?? Array.from({ length: s.count ?? 1 }, () => s.payload!);
      packets = payloads.map((payload) => ({ srcid: s.client!, privPoliId: s.policy!, payload }));
    }
    // The proxy's own timeout answers first; the client's is the backstop.
    const timeoutMs = st.timeout ?? this.sc.timeout ?? (this.sc.proxy?.timeout ?? DEFAULT_TIMEOUT) + 1000;
    const port = this.topo.ports[(s.proxy ?? 1) - 1] ?? (s.proxy === undefined ? this.topo.port : undefined);
    if (port === undefined) throw new Error(`there is no proxy ${s.proxy}: the scenario runs ${this.topo.ports.length || 1} (registry.proxies)`);
    const results = await runClient({
      id: s.client ?? packets[0]?.srcid ?? '0',
      proxy: { host: '127.0.0.1', port },
      packets: packets.map(({ srcid, privPoliId, payload }) => ({ srcid, privPoliId, payload })),
      window: s.concurrency ?? 1,
      timeoutMs,
      inspect: this.attach.inspect,
    });
    const summary = summariseSend(results);
    return { diffs: st.expect ? checkSend(st.expect, summary) : [], got: summary };
  }

  /** Bytes on a new connection; collects answers until the proxy closes it, the expectation holds, or time is up. */
  raw(st: RawStep, ms: number): Promise<Outcome> {
    const r = st.raw;
    const bytes = r.hex !== undefined ? Buffer.from(r.hex, 'hex') : r.text !== undefined ? Buffer.from(r.text) : encodeFrame(r.frame as Record<string, unknown>);
    return new Promise((done, fail) => {
      const got: RawSummary = { answers: [], closed: false };
      // The proxy answers in the wire the bytes began with: `{` is the old JSON wire.
      const decoder = bytes[0] === 0x7b ? new JsonDecoder({ number: true }) : new FrameDecoder({ validate: true });
      const socket = connect({ host: '127.0.0.1', port: this.topo.port }, () => socket.write(bytes));
      const finish = (): void => {
        clearTimeout(timer);
        socket.destroy();
        const summary = { closed: got.closed, answers: got.answers, undecodable: got.undecodable };
        done({ diffs: st.expect ? checkRaw(st.expect, got) : [], got: summary });
      };
      const timer = setTimeout(finish, ms);
      socket.on('data', (chunk: Buffer) => {
        const { messages, error } = decoder.push(chunk);
        got.answers.push(...messages);
        if (error) got.undecodable = error.message;
        if (rawSettled(st.expect, got)) finish();
      });
      socket.on('close', () => {
        got.closed = true;
        finish();
      });
      socket.on('error', (err) => {
        clearTimeout(timer);
        fail(new Error(`cannot reach the proxy on port ${this.topo.port}: ${err.message}`));
      });
    });
  }

  /** Pools change as the proxy hears of arrivals and departures: wait up to the deadline for the expected members. */
  async pool(expect: PoolExpect, ms: number): Promise<Outcome> {
    const until = performance.now() + ms;
    for (;;) {
      if (expect.proxy !== undefined && expect.proxy > Math.max(1, this.topo.ports.length)) throw new Error(`there is no proxy ${expect.proxy}: the scenario runs ${this.topo.ports.length || 1} (registry.proxies)`);
      const got = this.topo.pools(expect.proxy)[expect.policy] ?? { members: [], serving: [] };
      const diffs = checkPool(expect, got);
      if (diffs.length === 0 || performance.now() >= until) return { diffs, got };
      await sleep(10);
    }
  }
}

function serverLabel(s: ServerSpec): string {
  const extra = `${s.behaviour && s.behaviour !== 'normal' ? `, ${s.behaviour}` : ''}${s.delay ? `, ${s.delay} ms slow` : ''}`;
  return `start server ${s.id} (policy ${s.policy}${extra})`;
}

/** The step in a few words, unless the scenario names it. */
export function labelOf(st: Step): string {
  if (st.name) return st.name;
  switch (st.kind) {
    case 'send': {
      const s = st.send;
      const n = s.pkt?.length ?? s.payloads?.length ?? s.count ?? 1;
      const what = s.pkt ? `packet file${n > 1 ? 's' : ''} ${s.pkt.join(', ')}` : `${n} packet${n > 1 ? 's' : ''} as client ${s.client} to policy ${s.policy}`;
      return `send ${what}${s.concurrency && s.concurrency > 1 ? `, ${s.concurrency} at a time` : ''}`;
    }
    case 'raw': {
      const r = st.raw;
      if (r.hex !== undefined) return `raw bytes ${r.hex.length > 24 ? `${r.hex.slice(0, 24)}...` : r.hex}`;
      return r.text !== undefined ? `raw text ${JSON.stringify(r.text).slice(0, 30)}` : `raw frame ${JSON.stringify(r.frame).slice(0, 40)}`;
    }
    case 'start':
      return serverLabel(st.start.server);
    case 'kill':
      return `kill server ${st.kill.server}`;
    case 'stop':
      return `stop server ${st.stop.server}`;
    case 'wait':
      return `wait ${st.wait} ms`;
    case 'restart':
      return 'restart proxy';
    case 'expect_pool': {
      const e = st.expect_pool;
      const parts = [e.members && `[${e.members.join(', ')}]`, e.serving && `serving [${e.serving.join(', ')}]`].filter(Boolean);
      return `pool ${e.policy} is ${parts.join(', ')}${e.order === 'any' ? ' in any order' : ''}`;
    }
    case 'parallel':
      return `in parallel: ${st.parallel.length} steps`;
  }
}

function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`did not finish within ${ms} ms (set a longer \`timeout\` on the step if it needs one)`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const elapsed = (t0: number): number => Math.round(performance.now() - t0);
