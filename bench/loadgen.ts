/**
 * The bench's load generator: plain sockets, frames built from templates
 * (only the seq bytes change), one write per refill, answers matched by seq
 * and checked against the SHA1 of what was sent. No actors here on purpose:
 * the generator shares the machine's two cores with what it measures, so it
 * must cost as little as it can. `revproxy load` and the bench both run it.
 *
 * Closed loop by default: each connection sends as soon as it has room.
 * With `rate`, open loop as wrk2 does: request j of connection c is due at a
 * fixed time, sent then (or as soon as the connection has room), and its
 * latency counts from when it was due, so a stalled target cannot hide the
 * requests it kept from being sent.
 *
 * Requests/s counts the answers that come in the measured window; the
 * latencies are those of the requests sent in it, answered in it or in the
 * drain after it (the slowest answers come last).
 */
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import { hostPort } from '../transport/address.js';
import { ErrorCode, isRetryable } from '../transport/errors.js';
import { encodeFrame, FrameDecoder, refusesARequest } from '../transport/frame.js';
import { MsgType, type Message } from '../transport/messages.js';
import { systemClock, type Timer } from '../transport/clock.js';
import { dial, dialDeadline, type TlsMaterial } from '../transport/tls.js';
import { histogramsReady, LatencyHistogram, type LatencySummary } from './histogram.js';

export interface LoadEndpoint {
  host: string;
  port: number;
  /** The privacy policy this connection's requests name. */
  policy: string;
}

export interface LoadOptions {
  /** Where connection (or loop) number i connects, and which policy it asks for. */
  target: (i: number) => LoadEndpoint;
  /** Connections held open at once (or, with `perRequest`, loops running at once). */
  connections: number;
  /** Requests in flight on each connection. */
  depth: number;
  /** Open a new connection for every request, as the old client did (depth is then 1). */
  perRequest?: boolean;
  /** Open loop: send this many requests per second in all, spread evenly over the connections. */
  rate?: number;
  /** Dial over TLS with this material (as `revproxy client --tls-*` does). */
  tls?: TlsMaterial;
  /** Keep sending this long after the warm-up... */
  durationMs?: number;
  /** ...or send exactly this many requests in all, then stop. */
  requests?: number;
  /** Requests sent in this first part are not measured, nor answers that come in it (the run is `warmupMs + durationMs` long). */
  warmupMs?: number;
  /**
   * Give up a connection (TCP, and TLS's handshake) not made within this long (default 5000 ms, as
   * `revproxy client`): it counts as CONNECT_FAILED, ETIMEDOUT or TLS_HANDSHAKE_TIMEOUT. A host that
   * drops the packets would otherwise hold the run for the system's connect timeout (about two
   * minutes), and a plain listener dialled over TLS, waiting for a request, for ever.
   */
  connectTimeoutMs?: number;
  /** Connects in progress at once while opening connections (default 256). */
  connectConcurrency?: number;
  /** Give up on the answers still in flight when none has come (and nothing was sent) for this long (default 5000 ms); they count as NO_ANSWER. */
  drainMs?: number;
  payloads?: string[];
  srcid?: string;
  /** Updated while the run goes on, for progress display. */
  live?: LiveCounters;
  /** Told when the measured window opens and closes (to sample the target's CPU over it). */
  window?: { start(): void; end(): void };
  /** Stop sending when this aborts (Ctrl-C): the answers still in flight are awaited and the run reports what it has. */
  stop?: AbortSignal;
}

export interface LiveCounters {
  answered: number;
  opened: number;
  /** Requests that failed (errors and wrong hashes). */
  failed?: number;
}

export interface LoadResult {
  /** Requests written. */
  sent: number;
  /** ACKs with the right hash (all of them, warm-up included). */
  ok: number;
  /** ACKs whose payload was not SHA1 of what was sent. */
  wrongHash: number;
  /**
   * Failed requests by code: ERROR answers, and CONNECT_FAILED, CONNECTION_LOST, NO_ANSWER, BAD_FRAME (and
   * with `perRequest`, UNEXPECTED_ANSWER: a connection's one answer neither an ACK nor an ERROR). Each request
   * counts once: `sent` = `ok` + `wrongHash` + these (CONNECT_FAILED of a connection kept open is a connection's, not a request's).
   * A connection the target closed after an ERROR naming no request: the one request it refused (BAD_REQUEST) under
   * that code, and all of a stopped proxy's last word (SHUTTING_DOWN: not read); the others lost with it, CONNECTION_LOST.
   */
  errors: Record<string, number>;
  /**
   * Answers to no request in flight, apart from the requests (not in `errors`): an answer again to a
   * request answered already, to a seq never sent, a message of another type (a PONG unasked), or a
   * frame that is not one with nothing in flight. A target that sends them is broken.
   */
  unexpected: number;
  /** What the first of them was. */
  firstUnexpected?: string;
  /** Connections that were open at once at the peak. */
  connected: number;
  /** What the first failure of each code said (CONNECT_FAILED: 'ECONNREFUSED 127.0.0.1:2100'; an ERROR answer: its message). */
  firstError: Record<string, string>;
  /** Targets (`host:port`) a connection to could not be opened, in the order they failed. */
  unreachable: string[];
  /** Length of the measured window (after warm-up). */
  windowMs: number;
  /** Right answers that came in the window (what `rps` counts; the CPU read over the window is per one of these). */
  answered: number;
  /** Right answers per second in the window. */
  rps: number;
  /**
   * Latencies of the right answers to the requests sent in the window, ms
   * (per-request mode: connect included; open loop: from when each request
   * was due). Answers that come after the window, while the run waits for
   * the last ones, count too: they are the slowest, and an open loop must not
   * leave out the requests a stalled target held back longest.
   */
  latency: LatencySummary;
  /**
   * The target closed every connection this long into the measured window (ms;
   * 0 if during the warm-up): nothing was sent after, since connections are not
   * opened again, and the window ended there. Undefined when they stayed open.
   */
  closedAllAfterMs?: number;
  /**
   * Who closed them, when every connection closed: the target, load itself (each after the target
   * sent what is not a revproxy frame: BAD_FRAME), or both, some each.
   */
  closedAllBy?: 'target' | 'load' | 'both';
}

export const DEFAULT_PAYLOADS = Array.from({ length: 16 }, (_, i) => `bench payload ${i.toString(16).padStart(2, '0')}`);

const SEQ_MARK = 0xfffffffe;
const MAX_SEQ = 0xffffffff;

/** A frame with a 32-bit seq whose bytes are patched per request. */
interface Template {
  bytes: Buffer;
  seqAt: number;
}

function template(srcid: string, policy: string, payload: string): Template {
  const bytes = encodeFrame({ type: MsgType.DATA, seq: SEQ_MARK, srcid, privPoliId: policy, payload, payloadsize: Buffer.byteLength(payload) });
  const mark = Buffer.from([0xce, 0xff, 0xff, 0xff, 0xfe]);
  const at = bytes.indexOf(mark);
  if (at < 0) throw new Error('cannot find the seq field in the request template');
  return { bytes, seqAt: at + 1 };
}

/** Open loop: when request j of connection c is due. */
class Pace {
  /** Set when sending starts. */
  t0 = 0;
  private readonly intervalMs: number;

  constructor(rate: number, private readonly connections: number) {
    this.intervalMs = (connections * 1000) / rate;
  }

  /** The connections' schedules are staggered evenly inside one interval. */
  due(c: number, j: number): number {
    return this.t0 + (j + c / this.connections) * this.intervalMs;
  }

  /** How many of connection c's requests are due by `now`, beyond the `issued` already sent. */
  owed(c: number, issued: number, now: number): number {
    return Math.max(0, Math.floor((now - this.t0) / this.intervalMs - c / this.connections) + 1 - issued);
  }
}

class Run {
  readonly hist = new LatencyHistogram();
  readonly errors: Record<string, number> = {};
  sent = 0;
  ok = 0;
  wrongHash = 0;
  open = 0;
  peakOpen = 0;
  inflight = 0;
  /** Whether the measured window is open (answers now count towards requests/s). */
  measuring = false;
  /** Right answers that came in the window. */
  inWindow = 0;
  /** The window, by send time (open loop: due time): a request sent in it has its latency recorded, whenever it is answered. */
  windowFrom = Infinity;
  windowTo = Infinity;
  stopped = false;
  /** Counts sends and answers, so a wait can tell a slow run from a stuck one. */
  progress = 0;
  /** When something was last sent or answered (performance.now(), set once per write and per answer): a fixed count's window ends there when the target goes quiet. */
  lastAt = 0;
  readonly firstError: Record<string, string> = {};
  readonly pace?: Pace;
  readonly templates = new Map<string, Template[]>();
  readonly hashes: string[];
  private payloadTurn = 0;
  private doneWaiter?: () => void;
  /** Aborted when the target has closed every connection: the run's waits end there. */
  readonly gone = new AbortController();
  /** When the last open connection closed (performance.now()). */
  closedAllAt?: number;
  /** Connections closed by the target, and by load on what the target sent (BAD_FRAME), before the run's end. */
  readonly closedBy = { target: 0, load: 0 };

  constructor(readonly opts: LoadOptions) {
    const payloads = opts.payloads ?? DEFAULT_PAYLOADS;
    this.hashes = payloads.map((p) => createHash('sha1').update(p).digest('hex'));
    if (opts.rate !== undefined) this.pace = new Pace(opts.rate, opts.connections);
  }

  templatesFor(policy: string): Template[] {
    let t = this.templates.get(policy);
    if (!t) {
      const srcid = this.opts.srcid ?? 'bench';
      t = (this.opts.payloads ?? DEFAULT_PAYLOADS).map((p) => template(srcid, policy, p));
      this.templates.set(policy, t);
    }
    return t;
  }

  /** Whether one more request may be issued now. */
  mayIssue(): boolean {
    if (this.stopped) return false;
    if (this.opts.requests !== undefined && this.sent >= this.opts.requests) return false;
    return true;
  }

  nextPayload(): number {
    const i = this.payloadTurn;
    this.payloadTurn = i + 1 === this.hashes.length ? 0 : i + 1;
    return i;
  }

  fail(code: string, n = 1, detail?: string): void {
    this.errors[code] = (this.errors[code] ?? 0) + n;
    if (detail !== undefined) this.firstError[code] ??= detail;
    if (this.opts.live) this.opts.live.failed = (this.opts.live.failed ?? 0) + n;
  }

  /** Answers to no request in flight (see LoadResult.unexpected): not failures of requests. */
  unexpected = 0;
  firstUnexpected?: string;

  /** An answer `m` to no request in flight (`detail` says what it was, when `m` alone does not). */
  stray(m: unknown, detail?: string): void {
    if (this.unexpected++ === 0) this.firstUnexpected = detail ?? describeStray(m);
  }

  wrong(): void {
    this.wrongHash++;
    if (this.opts.live) this.opts.live.failed = (this.opts.live.failed ?? 0) + 1;
  }

  /** Targets a connection to could not be opened. */
  readonly unreachable = new Set<string>();

  /** A connection to `ep` could not be opened (one CONNECT_FAILED: a connection, or with a connection per request, a request). */
  connectFailed(err: NodeJS.ErrnoException, ep: LoadEndpoint): void {
    this.unreachable.add(hostPort(ep.host, ep.port));
    this.fail('CONNECT_FAILED', 1, `${err.code ?? err.message} ${hostPort(ep.host, ep.port)}`);
  }

  /** One answer to a request sent (open loop: due) at `sentAt`, `latencyMs` after. */
  answered(ok: boolean, latencyMs: number, sentAt: number): void {
    this.inflight--;
    this.progress++;
    if (ok) {
      this.ok++;
      if (this.measuring) this.inWindow++;
      if (sentAt >= this.windowFrom && sentAt < this.windowTo) this.hist.record(latencyMs);
      if (this.opts.live) this.opts.live.answered++;
    }
    this.checkDone();
  }

  lost(code: string, n: number, detail?: string): void {
    this.progress++;
    if (n > 0) {
      this.inflight -= n;
      this.fail(code, n, detail);
    }
    this.checkDone();
  }

  checkDone(): void {
    if (this.inflight === 0 && !this.mayIssue()) this.doneWaiter?.();
  }

  /**
   * Resolves once nothing is in flight and nothing more will be sent (false), or once nothing was
   * sent or answered for `ms` (true: the requests still in flight are given up).
   */
  settled(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      let seen = this.progress;
      const timer = setInterval(() => {
        if (this.progress === seen) finish(true);
        seen = this.progress;
      }, ms);
      const finish = (quiet: boolean): void => {
        clearInterval(timer);
        this.doneWaiter = undefined;
        resolve(quiet);
      };
      this.doneWaiter = () => finish(false);
      this.checkDone();
    });
  }
}

/**
 * One connection keeping up to `depth` requests in flight; seq mod depth is the slot, and seq div depth the
 * slot's round: each use of a slot takes its next round, so a seq is not used again until every other round of
 * its slot has been (about 4e9 / depth uses later). Taken from one round for all slots (until 2026-12-06), a
 * slot freed was used again at once with the same seq: a second answer to a request (or a late one after a
 * retry) was matched to the next request, counted as its answer, and no `unexpected` said so.
 */
class PipelinedConn {
  private readonly socket: Socket;
  private readonly decoder = new FrameDecoder({ validate: false });
  private readonly seqs: Float64Array;
  private readonly sentAt: Float64Array;
  private readonly payloadOf: Uint16Array;
  private readonly free: Int32Array;
  private nFree: number;
  /** Each slot's round: the seq it was last used with, div depth. */
  private readonly rounds: Uint32Array;
  private readonly maxRound: number;
  private readonly templates: Template[];
  private inflight = 0;
  private up = false;
  /** This side closed it (the run is over), not the target. */
  private closedHere = false;
  /** This side closed it because the target sent what is not a revproxy frame: not the target's close, nor the run's end. */
  private refused = false;
  /** Whether any byte came from the target (one that closes before saying anything may want TLS, or be another program). */
  private heard = false;
  /**
   * Why the connection is closing, when the socket said (an error) or load did (BAD_FRAME): its
   * requests in flight fail with this code, so each failed request is counted once, under its cause.
   */
  private closing?: { code: string; detail: string };
  /**
   * What the target said before it closed (an ERROR naming no request: about the connection).
   * `refused`: it refuses one of the requests in flight (`BAD_REQUEST`, a frame over its limit or
   * after answers: it answers what it read before the bad bytes, so the oldest unanswered, as the
   * library's client takes it, RequestBook.failRefused). The others are lost to the close, not
   * answered with its code: OVERLOADED 31 said 31 refusals of a server that cut a connection whose
   * requests may have run. But SHUTTING_DOWN, a stopped proxy's last word, says that what it has not
   * answered on the connection it did not read: those are its (port-closed.ts).
   */
  private said?: { code: string; message: string; refused: boolean };
  /** Answers read (to requests of this connection). */
  private answers = 0;
  private readonly maxFrame: number;
  /** Open loop: requests of this connection sent so far. */
  private issued = 0;

  constructor(
    private readonly run: Run,
    ep: LoadEndpoint,
    private readonly depth: number,
    /** This connection's number (its place in the open loop's schedule). */
    private readonly index: number,
    onConnected: (ok: boolean) => void,
  ) {
    this.templates = run.templatesFor(ep.policy);
    this.maxFrame = Math.max(...this.templates.map((t) => t.bytes.length));
    this.seqs = new Float64Array(depth).fill(-1);
    this.sentAt = new Float64Array(depth);
    this.payloadOf = new Uint16Array(depth);
    this.free = new Int32Array(depth);
    this.rounds = new Uint32Array(depth);
    for (let i = 0; i < depth; i++) this.free[i] = depth - 1 - i;
    this.nFree = depth;
    this.maxRound = Math.floor(MAX_SEQ / depth) - 1;
    this.socket = dial(ep.host, ep.port, run.opts.tls);
    this.socket.setNoDelay(true);
    connectDeadline(run, this.socket, ep);
    this.socket.once(run.opts.tls ? 'secureConnect' : 'connect', () => {
      this.up = true;
      run.open++;
      if (run.open > run.peakOpen) run.peakOpen = run.open;
      if (run.opts.live) run.opts.live.opened++;
      onConnected(true);
    });
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (err: NodeJS.ErrnoException) => {
      if (!this.up) {
        run.connectFailed(err, ep);
        onConnected(false);
      } else this.closing ??= { code: err.code ?? 'SOCKET_ERROR', detail: err.message };
    });
    this.socket.on('close', () => {
      const wasUp = this.up;
      if (this.up) run.open--;
      this.up = false;
      // With every connection gone nothing more can be sent: let the run end.
      if (run.open === 0) run.stopped = true;
      if (wasUp && !this.closedHere) run.closedBy[this.refused ? 'load' : 'target']++;
      if (run.open === 0 && wasUp && !this.closedHere && !run.gone.signal.aborted) {
        run.closedAllAt = performance.now();
        run.gone.abort();
      }
      let n = this.inflight;
      this.inflight = 0;
      this.nFree = 0;
      const said = this.said;
      if (said?.code === ErrorCode.SHUTTING_DOWN) return run.lost(said.code, n, said.message);
      if (said?.refused && n > 0) {
        run.lost(said.code, 1, said.message);
        n--;
      }
      // After an ERROR about the connection, a reset as it closes (a frame left unread) says no more than the close.
      if (said) return run.lost('CONNECTION_LOST', n, `${CLOSED_AFTER} ${said.code}: ${said.message}`);
      run.lost(this.closing?.code ?? 'CONNECTION_LOST', n, this.closing?.detail ?? (this.heard ? undefined : CLOSED_UNHEARD));
    });
  }

  /** Issue requests until the window is full (open loop: or until none is due), in one write. */
  fill(): void {
    const run = this.run;
    if (!this.up) return;
    const now = performance.now();
    const room = run.pace ? Math.min(this.nFree, run.pace.owed(this.index, this.issued, now)) : this.nFree;
    let n = 0;
    while (room - n > 0 && run.mayIssue()) {
      n++;
      run.sent++;
    }
    if (n === 0) return;
    run.progress++;
    const out = Buffer.allocUnsafe(n * this.maxFrame);
    let at = 0;
    for (let k = 0; k < n; k++) {
      const slot = this.free[--this.nFree]!;
      const p = run.nextPayload();
      const t = this.templates[p]!;
      const round = this.rounds[slot] === this.maxRound ? 0 : this.rounds[slot]! + 1;
      this.rounds[slot] = round;
      const seq = round * this.depth + slot;
      t.bytes.copy(out, at);
      out.writeUInt32BE(seq, at + t.seqAt);
      at += t.bytes.length;
      this.seqs[slot] = seq;
      this.sentAt[slot] = run.pace ? run.pace.due(this.index, this.issued++) : now;
      this.payloadOf[slot] = p;
    }
    this.inflight += n;
    run.inflight += n;
    run.lastAt = now;
    this.socket.write(at === out.length ? out : out.subarray(0, at));
  }

  private onData(chunk: Buffer): void {
    const run = this.run;
    this.heard = true;
    const { messages, error } = this.decoder.push(chunk);
    const now = performance.now();
    for (let i = 0; i < messages.length; i++) {
      // A frame that is not a map ends the connection, as one that is not MessagePack does: what follows it is not read.
      if (!this.onMessage(messages[i]!, now)) return;
    }
    if (error) return this.badInput(error.message);
    this.fill();
    if (run.stopped && this.inflight === 0) this.close();
  }

  /** The target sent what is not a revproxy frame: the connection ends, its requests in flight failing BAD_FRAME (with none, it is an answer to nothing). */
  private badInput(detail: string): void {
    if (this.inflight === 0 && this.closing === undefined) this.run.stray(undefined, `BAD_FRAME: ${detail}`);
    this.closing ??= { code: 'BAD_FRAME', detail };
    this.refused = true;
    this.socket.destroy();
  }

  /** One answer read (unvalidated: any MessagePack value); false when it ended the connection. */
  private onMessage(m: Message | null | undefined, now: number): boolean {
    const run = this.run;
    // The decoder does not validate (it would cost the generator): a body of nil is null here (and msgpackr's d4 00 00 is undefined): reading its type would throw.
    if (m === null || m === undefined || (m.type !== MsgType.ACK && m.type !== MsgType.ERROR)) {
      if (!isMap(m)) {
        this.badInput(notAMap(m));
        return false;
      }
      run.stray(m);
      return true;
    }
    if (typeof m.seq !== 'number') {
      // An ERROR that names no request is about the connection, which the target then closes.
      if (m.type === MsgType.ERROR) {
        const code = String(m.code);
        this.said ??= { code, message: m.message, refused: code === ErrorCode.BAD_REQUEST && refusesARequest(m.message, this.answers > 0) };
      } else run.stray(m);
      return true;
    }
    const slot = m.seq % this.depth;
    if (this.seqs[slot] !== m.seq) {
      run.stray(m);
      return true;
    }
    run.lastAt = now;
    this.answers++;
    this.seqs[slot] = -1;
    this.free[this.nFree++] = slot;
    this.inflight--;
    if (m.type === MsgType.ERROR) {
      run.fail(String(m.code), 1, m.message);
      run.answered(false, 0, 0);
      return true;
    }
    const right = m.payload === run.hashes[this.payloadOf[slot]!];
    if (!right) run.wrong();
    run.answered(right, now - this.sentAt[slot]!, this.sentAt[slot]!);
    return true;
  }

  close(): void {
    this.closedHere = true;
    this.socket.destroy();
  }
}

/** Whether a value read is a MessagePack map (a frame's body must be one). */
function isMap(v: unknown): boolean {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !ArrayBuffer.isView(v);
}

/** What a frame whose body is not a map held, in words. */
function notAMap(v: unknown): string {
  const what = v === null ? 'nil' : v === undefined ? 'undefined' : Array.isArray(v) ? 'an array' : ArrayBuffer.isView(v) ? 'binary' : `a ${typeof v}`;
  return `a frame whose body is ${what}, not a map`;
}

/**
 * Every kind of error of a run, for the bench (which wants none of any): the failed requests by code, and the
 * answers to no request in flight as UNEXPECTED_ANSWER.
 */
export function errorsOf(r: Pick<LoadResult, 'errors' | 'unexpected'>): Record<string, number> {
  return r.unexpected ? { ...r.errors, UNEXPECTED_ANSWER: (r.errors.UNEXPECTED_ANSWER ?? 0) + r.unexpected } : r.errors;
}

/**
 * The codes `load` gives requests that were in flight, written to the target, when they failed without an answer of
 * their own: the connection was lost (CONNECTION_LOST), none came in time (NO_ANSWER), the target sent what is not a
 * frame (BAD_FRAME) or, with a connection per request, an answer that is neither an ACK nor an ERROR (UNEXPECTED_ANSWER).
 */
const IN_FLIGHT_CODES: ReadonlySet<string> = new Set(['CONNECTION_LOST', 'NO_ANSWER', 'BAD_FRAME', 'UNEXPECTED_ANSWER']);

/**
 * Whether the requests a run counted under `code` may be sent again without running twice (transport/errors.ts
 * `isRetryable`): an answer's code as its row of `RETRYABLE` says (NO_SERVER yes; TIMEOUT, OVERLOADED, ... no; a code
 * it has no row for, no); CONNECT_FAILED yes (nothing was sent); the codes of requests left unanswered in flight, no
 * (a handler may have run them).
 */
export function retryableLoadCode(code: string): boolean {
  return isRetryable(code, IN_FLIGHT_CODES.has(code));
}

/** The first CONNECTION_LOST's detail when the target closed a connection without sending a byte on it (cli/load.ts hints from it). */
export const CLOSED_UNHEARD = 'closed by the target before it sent anything on the connection';

/** How the first CONNECTION_LOST's detail starts when the target said why before it closed (an ERROR naming no request): its code and words follow. */
export const CLOSED_AFTER = 'closed by the target after it said';

/** What an answer to no request in flight was, in words (for the first one only: not on the hot path). */
function describeStray(m: unknown): string {
  if (!isMap(m)) return notAMap(m);
  const { type, seq } = m as { type?: unknown; seq?: unknown };
  const name = type === MsgType.ACK ? 'an ACK' : type === MsgType.ERROR ? 'an ERROR' : type === MsgType.PONG ? 'a PONG' : type === MsgType.DATA ? 'a DATA' : `a message of type ${JSON.stringify(type)}`;
  if (type !== MsgType.ACK && type !== MsgType.ERROR) return `${name}, which load never asks for`;
  return typeof seq === 'number' ? `${name} of seq ${seq}, which no request in flight has (answered already, or never sent)` : `${name} without a seq`;
}

/**
 * The deadline of a dial (transport/tls.ts's dialDeadline: the connection's time counts from when
 * the name resolved): a socket not ready within `connectTimeoutMs` is destroyed with an error its
 * 'error' handler counts as a connection that could not be opened - ETIMEDOUT, or over TLS, when the
 * TCP connection was made, TLS_HANDSHAKE_TIMEOUT (a plain listener says nothing to a ClientHello).
 */
function connectDeadline(run: Run, socket: Socket, ep: LoadEndpoint): Timer {
  const ms = run.opts.connectTimeoutMs ?? 5000;
  let tcpUp = false;
  if (run.opts.tls) socket.once('connect', () => (tcpUp = true));
  const deadline = dialDeadline(socket, ep.host, ep.port, ms, systemClock, (why) => {
    const code = why.startsWith('the name ') ? 'EAI_AGAIN' : tcpUp ? 'TLS_HANDSHAKE_TIMEOUT' : 'ETIMEDOUT';
    socket.destroy(Object.assign(new Error(why), { code }));
  }, '--connect-timeout');
  socket.once(run.opts.tls ? 'secureConnect' : 'connect', () => deadline.cancel());
  socket.once('close', () => deadline.cancel());
  return deadline;
}

/** One loop of connection-per-request: connect, send one, read the answer, close, again. */
function perRequestLoop(run: Run, ep: LoadEndpoint, done: () => void): void {
  const templates = run.templatesFor(ep.policy);
  const next = (): void => {
    if (!run.mayIssue()) return done();
    const p = run.nextPayload();
    const t = templates[p]!;
    const started = performance.now();
    run.sent++;
    run.progress++;
    run.inflight++;
    const decoder = new FrameDecoder({ validate: false });
    const socket = dial(ep.host, ep.port, run.opts.tls);
    socket.setNoDelay(true);
    connectDeadline(run, socket, ep);
    let settled = false;
    let up = false;
    // Ctrl-C while this request's connection is being made gives it up: nothing was sent on it, so it
    // is not counted as sent (a dial to a silent target held the run's end for its --connect-timeout).
    const giveUp = (): void => {
      if (settled || up) return;
      settled = true;
      socket.destroy();
      run.sent--;
      run.inflight--;
      run.checkDone();
      setImmediate(next);
    };
    run.opts.stop?.addEventListener('abort', giveUp, { once: true });
    const settle = (ok: boolean | string, detail?: string): void => {
      if (settled) return;
      settled = true;
      run.opts.stop?.removeEventListener('abort', giveUp);
      socket.destroy();
      run.lastAt = performance.now();
      if (ok === true || ok === false) run.answered(ok, run.lastAt - started, started);
      else run.lost(ok, 1, detail);
      setImmediate(next);
    };
    socket.once(run.opts.tls ? 'secureConnect' : 'connect', () => {
      up = true;
      run.open++;
      if (run.open > run.peakOpen) run.peakOpen = run.open;
      socket.write(t.bytes); // seq 0xfffffffe as templated: one request per connection
    });
    let heard = false;
    socket.on('data', (chunk: Buffer) => {
      heard = true;
      const { messages, error } = decoder.push(chunk);
      if (messages.length === 0) {
        if (error) settle('BAD_FRAME', error.message);
        return;
      }
      const m = messages[0]!;
      if (!isMap(m)) return settle('BAD_FRAME', notAMap(m));
      if (m.type === MsgType.ACK) {
        const right = m.payload === run.hashes[p];
        if (!right) run.wrong();
        settle(right);
      } else {
        if (m.type === MsgType.ERROR) run.fail(String(m.code), 1, m.message);
        settle(m.type === MsgType.ERROR ? false : 'UNEXPECTED_ANSWER');
      }
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (up) return settle('CONNECTION_LOST', heard ? err.message : CLOSED_UNHEARD);
      run.firstError.CONNECT_FAILED ??= `${err.code ?? err.message} ${hostPort(ep.host, ep.port)}`;
      run.unreachable.add(hostPort(ep.host, ep.port));
      settle('CONNECT_FAILED');
    });
    socket.on('close', () => {
      if (up) run.open--;
      settle('CONNECTION_LOST', heard ? undefined : CLOSED_UNHEARD);
    });
  };
  next();
}

/**
 * Run one workload against one target and count every answer.
 *
 * @example
 * const r = await runLoad({ target: () => ({ host: '127.0.0.1', port, policy: '111' }), connections: 8, depth: 32, durationMs: 5000 });
 * console.log(r.rps, r.latency.p99, r.errors);
 */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  if (opts.durationMs === undefined && opts.requests === undefined) throw new Error('runLoad needs durationMs or requests');
  if (opts.rate !== undefined && (opts.perRequest || !(opts.rate > 0))) throw new Error('runLoad: rate must be above 0, on connections kept open');
  await histogramsReady();
  const run = new Run(opts);
  const onStop = (): void => {
    run.stopped = true;
    run.checkDone();
  };
  opts.stop?.addEventListener('abort', onStop, { once: true });
  const warmupMs = opts.requests === undefined ? opts.warmupMs ?? 0 : 0;
  const conns: PipelinedConn[] = [];
  let started = 0;
  let ended = 0;

  if (opts.perRequest) {
    let loopsLeft = opts.connections;
    const loopsDone = new Promise<void>((resolve) => {
      for (let i = 0; i < opts.connections; i++) perRequestLoop(run, opts.target(i), () => --loopsLeft === 0 && resolve());
    });
    ({ started, ended } = await measure(run, warmupMs, opts.durationMs));
    // A fixed count's measure() waited for the answers already.
    if (opts.requests === undefined) await Promise.race([loopsDone, run.settled(opts.drainMs ?? 5000)]);
  } else {
    // Open every connection first (bounded concurrency: a listen backlog is finite), then start sending.
    const limit = Math.max(1, opts.connectConcurrency ?? 256);
    let nextConn = 0;
    await new Promise<void>((resolve) => {
      let pending = 0;
      // Ctrl-C while connecting ends the run there: the connections not yet made are given up (nothing was sent on them).
      const onAbort = (): void => {
        for (const c of conns) c.close();
        resolve();
      };
      if (opts.stop?.aborted) return onAbort();
      opts.stop?.addEventListener('abort', onAbort, { once: true });
      const more = (): void => {
        if (opts.stop?.aborted) return;
        while (pending < limit && nextConn < opts.connections) {
          pending++;
          const i = nextConn++;
          conns.push(new PipelinedConn(run, opts.target(i), opts.depth, i, () => {
            pending--;
            more();
          }));
        }
        if (pending === 0 && nextConn >= opts.connections) {
          opts.stop?.removeEventListener('abort', onAbort);
          resolve();
        }
      };
      more();
    });
    // Open loop: requests fall due between answers, so a ticker sends them (Node's timers run about every millisecond).
    const ticker = run.pace ? setInterval(() => conns.forEach((c) => c.fill()), 1) : undefined;
    if (run.pace) run.pace.t0 = performance.now();
    for (const c of conns) c.fill();
    try {
      ({ started, ended } = await measure(run, warmupMs, opts.durationMs));
    } finally {
      clearInterval(ticker);
    }
    if (opts.requests === undefined) await run.settled(opts.drainMs ?? 5000);
  }
  const unanswered = run.inflight;
  run.lost('NO_ANSWER', unanswered);
  for (const c of conns) c.close();
  opts.stop?.removeEventListener('abort', onStop);
  const windowMs = Math.max(1e-3, ended - started);
  const latency = run.hist.summary();
  run.hist.destroy();
  return {
    sent: run.sent,
    ok: run.ok,
    wrongHash: run.wrongHash,
    errors: run.errors,
    unexpected: run.unexpected,
    firstUnexpected: run.firstUnexpected,
    connected: run.peakOpen,
    firstError: run.firstError,
    unreachable: [...run.unreachable],
    windowMs,
    answered: run.inWindow,
    rps: (run.inWindow / windowMs) * 1000,
    latency,
    closedAllAfterMs: run.closedAllAt === undefined ? undefined : Math.max(0, run.closedAllAt - started),
    closedAllBy: run.closedAllAt === undefined ? undefined : run.closedBy.load === 0 ? 'target' : run.closedBy.target === 0 ? 'load' : 'both',
  };
}

/**
 * Warm up, then count answers for `durationMs` (or, for a fixed count, until every request is
 * answered, or none was for `drainMs`: the window then ends at the last send or answer, and the
 * wait for nothing is not measured). A fixed count waits here only: runLoad does not wait again.
 */
async function measure(run: Run, warmupMs: number, durationMs?: number): Promise<{ started: number; ended: number }> {
  if (durationMs === undefined) {
    run.measuring = true;
    // Open loop, the window opens when sending starts (the schedule's t0), whatever delayed this line.
    const started = run.pace?.t0 || performance.now();
    run.windowFrom = -Infinity;
    const quiet = await run.settled(run.opts.drainMs ?? 5000);
    return { started, ended: quiet ? Math.max(started, run.lastAt) : performance.now() };
  }
  // Ctrl-C, or the target closing every connection, ends the run.
  const stop = AbortSignal.any([run.gone.signal, ...(run.opts.stop ? [run.opts.stop] : [])]);
  if (warmupMs > 0) await sleep(warmupMs, stop);
  const before = run.hist.count;
  run.measuring = true;
  run.opts.window?.start();
  const started = performance.now();
  // Without a warm-up the first requests, sent as the run starts, belong to the window.
  run.windowFrom = warmupMs > 0 ? started : -Infinity;
  await sleep(durationMs, stop);
  run.measuring = false;
  run.stopped = true;
  const ended = performance.now();
  run.windowTo = ended;
  run.opts.window?.end();
  if (before !== 0) throw new Error('latencies were recorded during the warm-up');
  return { started, ended };
}

/** Resolves after `ms`, or as soon as `stop` aborts. */
function sleep(ms: number, stop?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (stop?.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      stop?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    stop?.addEventListener('abort', done, { once: true });
  });
}
