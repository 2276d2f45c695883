/**
 * Running a server's handler: the code that turns a request's payload into
 * its answer. The server machine hands every request it reads to a
 * `HandlerRunner`, which runs the handler under the server's limits and
 * writes the one answer each request gets:
 *
 * - an ACK carrying what the handler returned (text or bytes, as returned);
 * - an ERROR `HANDLER_ERROR` with the handler's own code (`appcode`) when it
 *   threw or rejected: an application error is the answer, so the proxy
 *   passes it to the client and neither retries it nor holds it against the
 *   server;
 * - an ERROR `OVERLOADED` when `concurrency` requests run and `queueLimit`
 *   more wait (the proxy tries another server);
 * - nothing at all with `behaviour: 'silent'`, and `UPSTREAM_FAILED` with
 *   `behaviour: 'fail'` (for fault tests).
 *
 * A handler that returns a value (not a promise) is answered in the same
 * turn, with no timer and no AbortController unless it reads `ctx.signal`:
 * the default SHA1 handler costs what hashing costs.
 */
import { ANSWER_TOO_LARGE, ErrorCode, HANDLER_FAILED, RETRYABLE, RevproxyError } from '../transport/errors.js';
import { APP_CODE, errorMsg, loneSurrogateIn, MsgType, payloadSize, sliceWhole, type AckMsg, type DataMsg, type ErrorMsg } from '../transport/messages.js';
import type { BufferBudget } from '../transport/budget.js';
import type { Connection } from '../transport/socket.js';
import type { Clock, Timer } from '../transport/clock.js';
import { fmt, type Logger } from './logger.js';
import { sha1Hex } from './sha1.js';

/** A request's payload as the client sent it: text (MessagePack `str`) or bytes (`bin`). */
export type Payload = string | Uint8Array;

/** What a handler answers: text or bytes (a `Uint8Array` or `Buffer`, an `ArrayBuffer`, a `DataView` or any typed array, its bytes), sent to the client as it is. */
export type Answer = string | Uint8Array | ArrayBuffer | ArrayBufferView;

/** What a handler knows about the request it runs for. */
export interface HandlerContext {
  /** The id of the client that sent the request (its DATA's `srcid`). */
  readonly clientId: string;
  /** The privacy policy the request was sent to (this server's). */
  readonly policy: string;
  /** This server's id. */
  readonly serverId: string;
  /**
   * Aborted when the answer is no longer wanted: the proxy's deadline for
   * this try has passed (the proxy sends it with each request, as
   * `timeoutms`), the server's handler timeout has passed (`handlerTimeoutMs`,
   * 30 s by default), or the server is being stopped abruptly. Its `reason` is a
   * `RevproxyError` with code `TIMEOUT` or `SHUTTING_DOWN`. Pass it on to
   * whatever the handler waits for (`fetch(url, { signal: ctx.signal })`).
   */
  readonly signal: AbortSignal;
}

/**
 * A server's handler: `async (payload, ctx) => answer`. Throw a
 * `HandlerError` (or any error with a string `code` of its own, not Node's) to answer with an
 * application error the client can branch on.
 *
 * @example
 * const upper: Handler = async (payload) => String(payload).toUpperCase();
 */
export type Handler = (payload: Payload, ctx: HandlerContext) => Answer | Promise<Answer>;

/**
 * The default handler, the old system's stand-in for work: the SHA1 hex of
 * the payload's exact bytes.
 *
 * @example
 * await startServer({ id: '100', policy: '111', revproc: 2100, handler: sha1Handler }); // the same as no handler
 */
export const sha1Handler: Handler = (payload) => sha1Hex(payload);

/**
 * Why `handler` cannot answer requests, if it cannot: what is not a function, and a generator
 * function, whose call returns a generator (an object) instead of running: every request would
 * be answered BAD_ANSWER. Said at start (`startServer`, `--handler`), not per request.
 */
export function badHandler(handler: unknown): string | undefined {
  if (handler === undefined) return undefined;
  if (typeof handler !== 'function') return `the handler is a function, async (payload, ctx) => answer, not ${handler === null ? 'null' : typeof handler === 'object' ? 'an object' : `a ${typeof handler}`}`;
  const kind = Object.prototype.toString.call(handler).slice(8, -1);
  // A class is a function that cannot be called: it started, then every request failed HANDLER_FAILED ("Class constructor ... cannot be invoked without 'new'").
  if (/^class\b/.test(Function.prototype.toString.call(handler))) {
    const name = (handler as { name?: unknown }).name;
    return `the handler is a class${typeof name === 'string' && name ? ` (${name})` : ''}, which cannot be called: a handler is a function, async (payload, ctx) => answer; make one instance and give a function that calls its method, (payload, ctx) => instance.handle(payload, ctx)`;
  }
  if (kind === 'AsyncGeneratorFunction' || kind === 'GeneratorFunction') {
    return `the handler is ${kind === 'AsyncGeneratorFunction' ? 'an async generator function (async function*)' : 'a generator function (function*)'}: a handler returns one answer, it does not yield; write async (payload, ctx) => answer`;
  }
  return undefined;
}

/** A handler computing this long without returning (ms) held the server's thread past a PING interval (1 s by default): said, at warn. */
const BLOCKING_MS = 1000;

/** Longest handler error message passed on to the client (characters). */
const MAX_APP_MESSAGE = 1024;

/**
 * An application error: thrown by a handler to answer its request with an
 * error of its own, and what a client's request rejects with when a handler
 * did. `code` is always `HANDLER_ERROR`; `appCode` is the handler's.
 *
 * @example
 * // in a handler
 * if (!isJson(payload)) throw new HandlerError('NOT_JSON', 'policy 222 takes a JSON object');
 * // in a client
 * try { await client.request('222', 'hello'); }
 * catch (err) { if (err instanceof HandlerError && err.appCode === 'NOT_JSON') ... }
 */
export class HandlerError extends RevproxyError<typeof ErrorCode.HANDLER_ERROR> {
  readonly appCode: string;
  /** Always false: a handler ran the request (as `RequestError.retryable`, so either error of a request answers `err.retryable`). */
  readonly retryable = RETRYABLE.HANDLER_ERROR;
  /**
   * @param appCode 1 to 64 letters, digits, `_ . : -` (docs/PROTOCOL.md, `appcode`); any other throws a
   *   `TypeError` saying so, as Node's own functions refuse an invalid argument. It became HANDLER_FAILED
   *   without a word: `new HandlerError('user/not-found', ...)` answered every client HANDLER_FAILED, the
   *   server logged nothing, and the proxy counted each as its server failing.
   */
  constructor(appCode: string, message: string, options?: { cause?: unknown }) {
    super(ErrorCode.HANDLER_ERROR, message, options);
    this.name = 'HandlerError';
    const bad = badAppCode(appCode);
    if (bad) throw new TypeError(`new HandlerError(${typeof appCode === 'string' ? JSON.stringify(appCode.slice(0, 80)) : String(appCode)}, ...): ${bad}`);
    this.appCode = appCode;
  }
}

/** Why `code` is not an application code a client can be answered with, or undefined when it is one. */
export function badAppCode(code: unknown): string | undefined {
  if (typeof code !== 'string') return `an application code is a string, not ${code === null ? 'null' : typeof code}`;
  if (APP_CODE.test(code)) return undefined;
  const why = code.length === 0 ? 'it is empty' : code.length > 64 ? `it has ${code.length} characters` : `it has ${JSON.stringify([...new Set(code.replace(/[A-Za-z0-9_.:-]/g, ''))].join(''))} in it`;
  return `an application code is 1 to 64 letters, digits, _ . : or - (docs/PROTOCOL.md, appcode), and ${why}: write it as, say, ${JSON.stringify(suggestAppCode(code))}`;
}

/** An application code like `code`: its other characters as `_`, at most 64 (`user/not-found`: `user_not-found`). */
function suggestAppCode(code: string): string {
  return code.replace(/[^A-Za-z0-9_.:-]/g, '_').slice(0, 64) || 'NOT_FOUND';
}

export const BEHAVIOURS = ['normal', 'silent', 'fail'] as const;
export type Behaviour = (typeof BEHAVIOURS)[number];

export interface RunnerOptions {
  serverId: string;
  policy: string;
  handler: Handler;
  /** Requests running at once; more wait in a queue. Default: no limit. */
  concurrency: number;
  /** Requests waiting for a free slot; past it the server answers OVERLOADED. */
  queueLimit: number;
  /** The longest a request waits for a free slot (ms); past it the server answers OVERLOADED, unrun (0: until the proxy's deadline). */
  queueTimeoutMs: number;
  /** Adaptive LIFO: once the queue has not been empty for this long (ms), a free slot takes the newest waiting request (0: always the oldest). */
  queueLifoAfterMs: number;
  /** Every request waits this long inside its slot before its handler runs (ms, for tests and benchmarks). */
  delayMs: number;
  /** A handler's promise not settled this long after it started (ms) is answered TIMEOUT, its signal aborted and its slot freed (0: never). */
  handlerTimeoutMs: number;
  behaviour: Behaviour;
  /**
   * Largest frame this server reads (`--max-frame`); its answers are kept within it, or within the smaller frame a
   * proxy's link states (`Caller.peerMaxFrame`): a bigger answer is refused here (ANSWER_TOO_LARGE), not by the proxy's decoder.
   */
  maxFrameBytes: number;
  /** The server's buffer budget: every request holds its bytes against it until answered (`hold`). */
  budget: BufferBudget;
  clock: Clock;
  logger: Logger;
}

/** What a request holds of the buffer budget until it is answered: its payload, and room for its job, its context and its answer's bookkeeping. */
const REQUEST_ROOM = 1024;

/**
 * A connection requests come on, and what its requests hold of the buffer
 * budget: past its share (`requestsPerPeer`) it is read no more until
 * answers bring it under half that, as the proxy does with its clients.
 * Past the same share of answers it has not read, its requests wait unrun
 * (`parked`) until it reads them.
 */
export class Caller {
  heldBytes = 0;
  throttled = false;
  /** Requests taken and not run yet because the peer has not read its answers (oldest first). */
  parked: Job[] = [];
  /** Its requests whose handler runs: each owes it an answer (`HandlerRunner.backedUp`). */
  running = 0;
  /** Its parked requests wait for the next of its running ones to be answered (not for a drain). */
  wakeOnAnswer = false;
  /**
   * The largest frame the peer reads, as a proxy's PING on its link states it (`PingMsg.maxFrame`; a proxy before
   * 2026-12-07 states none): answers on this connection are kept within the smaller of it and the server's own.
   */
  peerMaxFrame?: number;
  constructor(readonly conn: Connection) {}
}

/** Handlers' promises not settled yet: one collected unsettled can never settle (`HandlerRunner.collected`). */
const unsettled = new FinalizationRegistry<Job>((job) => job.runner.collected(job));

/** One request, from its arrival until its answer is written. */
class Job {
  private controller?: AbortController;
  private timer?: Timer;
  /** The handler timeout, while its promise is pending. */
  limit?: Timer;
  /** Answered: what the handler does afterwards is ignored. */
  done = false;
  /** Answered TIMEOUT while its handler still runs (it ignores ctx.signal): counted by the runner until it settles. */
  lingering = false;
  /** When it last went into the queue for a slot (clock ms): `queueTimeoutMs` counts from here. */
  queuedAt = 0;

  constructor(
    readonly runner: HandlerRunner,
    readonly caller: Caller,
    readonly msg: DataMsg,
    /** Bytes it holds of the buffer budget. */
    readonly bytes: number,
    /** When the proxy stops waiting (clock ms), if it said. */
    readonly deadline: number | undefined,
  ) {}

  /** Made on first use: most handlers never look. */
  signal(): AbortSignal {
    if (this.controller) return this.controller.signal;
    const controller = (this.controller = new AbortController());
    this.runner.watched.add(this);
    if (this.deadline !== undefined) {
      const left = this.deadline - this.runner.opts.clock.now();
      if (left <= 0) this.abort(this.timeoutReason());
      else this.timer = this.runner.opts.clock.setTimeout(() => this.abort(this.timeoutReason()), left);
    }
    return controller.signal;
  }

  get aborted(): boolean {
    return this.controller?.signal.aborted ?? false;
  }

  abort(reason: RevproxyError): void {
    this.controller?.abort(reason);
  }

  /** The job is over: no timer or watch outlives it. */
  release(): void {
    this.timer?.cancel();
    if (this.limit) {
      this.limit.cancel();
      this.runner.timed.delete(this);
    }
    if (this.controller) this.runner.watched.delete(this);
  }

  timeoutReason(): RevproxyError {
    return new RevproxyError(ErrorCode.TIMEOUT, `the proxy stopped waiting for the answer to request ${this.msg.seq} of client ${this.msg.srcid}`);
  }
}

/** What the handler sees of its job: read-only, nothing of the runner's. */
class RequestContext implements HandlerContext {
  readonly #job: Job;
  constructor(job: Job) {
    this.#job = job;
  }
  get clientId(): string {
    return this.#job.msg.srcid;
  }
  get policy(): string {
    return this.#job.runner.opts.policy;
  }
  get serverId(): string {
    return this.#job.runner.opts.serverId;
  }
  get signal(): AbortSignal {
    return this.#job.signal();
  }
}

/**
 * Runs a server's handler for every request, at most `concurrency` at once,
 * and writes each answer to the connection the request came on.
 */
export class HandlerRunner {
  readonly opts: RunnerOptions;
  /** Jobs whose handler asked for a signal: aborted all at once when the server stops. */
  readonly watched = new Set<Job>();
  /** Jobs whose handler timeout runs: given up on all at once when the server stops (no line about them after it). */
  readonly timed = new Set<Job>();
  private running = 0;
  /**
   * Handlers answered TIMEOUT that still run (they ignore ctx.signal): a promise cannot be
   * cancelled. Up to `concurrency` of them take no slot; past it each takes one (`busy`), so at
   * most twice `concurrency` handlers run at once, and their requests' bytes stay held of the
   * budget until they settle. They were not bounded: with --concurrency 4, 76 ran at once, and
   * the server grew to 2.7 GB within 20 s with the defaults.
   */
  private lingering = 0;
  private lingeringBytes = 0;
  private readonly queue: Job[] = [];
  /** With a queue timeout, while the queue holds requests: the timer that answers its oldest once past it. */
  private queueSweep?: Timer;
  /** When the queue last went from empty to not (clock ms; kept only with `queueLifoAfterMs`). */
  private queueSince = 0;
  /** Callers with requests parked (`park`): let go all at once when the server stops. */
  private readonly waiting = new Set<Caller>();
  private parkedCount = 0;
  /**
   * The bytes an answer is taken to write until it is written (`backedUp`): the mean of the answers
   * so far, each moving it by an eighth of its difference from it (as TCP smooths its round-trip
   * time, RFC 6298), what the running handlers' answers come to together. The first answer's size
   * at once; before it, a frame (`maxFrameBytes`, the most an answer may be), but at most half a
   * connection's share of the budget, so that two run at once. It was the last answer's whenever
   * bigger, each smaller one taking a 16th of the difference off: after one answer of 900 kB among
   * small ones (8 MiB shares), 32 small requests sent together to a handler of 1 s were answered over
   * 3 s (11, 18 and 4 a second), not in 1; through a proxy, its other clients' p99 to a server of
   * 400 ms requests went from 410-419 ms to 655-657 while one client sent such a request every 2 s
   * (413-419 now).
   */
  private answerRoom: number;
  private answerKnown = false;
  /** Answers sent: ACKs, and errors by code (the handler's own errors are HANDLER_ERROR); for the stop line and the inspector's metrics. */
  readonly outcomes = { ok: 0, errors: new Map<string, number>() };

  /** Slots taken: requests running, and timed-out handlers still running past the `concurrency` that may linger. */
  private get busy(): number {
    return this.running + Math.max(0, this.lingering - this.opts.concurrency);
  }

  /** Requests taken and not answered yet: running, or waiting for a slot. */
  get held(): number {
    return this.running + this.queue.length + this.parkedCount;
  }

  /** Answers sent so far, whatever they were. */
  get answered(): number {
    let n = this.outcomes.ok;
    for (const k of this.outcomes.errors.values()) n += k;
    return n;
  }

  /** Send one answer on `conn`, counted by its outcome (and its size learnt, for `backedUp`). */
  private answer(conn: Connection, answer: AckMsg | ErrorMsg): void {
    const before = conn.pendingBytes;
    conn.send(answer);
    const bytes = conn.pendingBytes - before;
    if (bytes > 0) {
      this.answerRoom = this.answerKnown ? this.answerRoom + (bytes - this.answerRoom) / 8 : bytes;
      this.answerKnown = true;
    }
    if (answer.type === MsgType.ACK) this.outcomes.ok++;
    else this.outcomes.errors.set(answer.code, (this.outcomes.errors.get(answer.code) ?? 0) + 1);
  }

  constructor(opts: RunnerOptions) {
    this.opts = opts;
    this.answerRoom = Math.min(opts.budget.requestsPerPeer / 2, opts.maxFrameBytes);
  }

  /** Take one read's requests from `caller`. */
  take(caller: Caller, requests: DataMsg[]): void {
    const { behaviour, clock, budget } = this.opts;
    const conn = caller.conn;
    if (behaviour === 'silent') return;
    let now = -1;
    for (const msg of requests) {
      if (behaviour === 'fail') {
        this.answer(conn, errorMsg(ErrorCode.UPSTREAM_FAILED, `server ${this.opts.serverId} is configured to fail every request`, msg.seq));
        continue;
      }
      let deadline: number | undefined;
      if (msg.timeoutms !== undefined) deadline = (now < 0 ? (now = clock.now()) : now) + msg.timeoutms;
      const runs = this.busy < this.opts.concurrency;
      if (!runs && this.queue.length >= this.opts.queueLimit && !this.shedExpired()) {
        const lingering = this.lingering > 0 ? ` (and ${this.lingering} handler(s) that timed out still run: they ignore ctx.signal)` : '';
        this.answer(conn, errorMsg(ErrorCode.OVERLOADED,
          `server ${this.opts.serverId} is running ${this.running} request(s)${lingering}, its limit, and ${this.queue.length} more are waiting; try another server or later`, msg.seq));
        continue;
      }
      const bytes = payloadSize(msg) + REQUEST_ROOM; // UTF-8, as the proxy counts it (routing.ts, requestBytes)
      if (!budget.hold(bytes)) {
        this.overBudget(conn, msg);
        continue;
      }
      caller.heldBytes += bytes;
      const job = new Job(this, caller, msg, bytes, deadline);
      if (this.backedUp(caller)) this.park(job);
      else if (runs) this.start(job);
      else this.enqueue(job);
    }
    // A connection holding its share of the budget is not read until answers bring it down.
    if (!caller.throttled && caller.heldBytes >= budget.requestsPerPeer) {
      caller.throttled = true;
      conn.pause();
    }
  }

  /**
   * A full queue first answers its oldest whose deadline has passed (TIMEOUT: the proxy no longer
   * waits for them), from the head while they have; returns whether that made room. They were
   * answered only on reaching a slot, and meanwhile filled the queue: with handlers slower than the
   * proxy's try timeout, or newest first (`--queue-lifo-after`) without `--queue-timeout`, a queue
   * of requests nobody waited for refused every new one OVERLOADED.
   */
  private shedExpired(): boolean {
    const queue = this.queue;
    const before = queue.length;
    // `expired` is the one deadline check (and its answer), as `next` makes it for each job it takes.
    while (queue.length > 0 && this.expired(queue[0]!, `in server ${this.opts.serverId}'s queue`)) queue.shift();
    return queue.length < before;
  }

  /** The budget's half for requests is taken: refused at once, as the proxy refuses its clients'. */
  private overBudget(conn: Connection, msg: DataMsg): void {
    const { serverId: id, budget, logger } = this.opts;
    const lingering = this.lingeringBytes > 0 ? ` (${this.lingeringBytes} of them for ${this.lingering} handler(s) answered TIMEOUT that still run: they ignore ctx.signal)` : '';
    const why = `server ${id} holds ${budget.limit / 2} bytes of requests not answered yet${lingering}, half its buffer budget (--max-buffered-bytes); try another server or later`;
    this.answer(conn, errorMsg(ErrorCode.OVERLOADED, why, msg.seq));
    logger.repeated('warn', 'refused', id, 1, (n, span) => `Refused ${fmt(n)} request(s) with OVERLOADED${span ? ` ${span}` : ''}: ${why}`, { code: ErrorCode.OVERLOADED });
  }

  /** The job holds nothing of the budget any more (`keepBytes`: but what its lingering handler holds); its connection is read again once under half its share. */
  private letGo(job: Job, keepBytes = false): void {
    const caller = job.caller;
    if (!keepBytes) this.opts.budget.release(job.bytes);
    caller.heldBytes -= job.bytes;
    if (caller.throttled && caller.heldBytes <= this.opts.budget.requestsPerPeer / 2) {
      caller.throttled = false;
      caller.conn.resume();
    }
  }

  /**
   * Whether the caller's next request waits unrun: some of its requests wait already (they keep
   * their order), or it has not read its share of answers (`requestsPerPeer` of the budget, as the
   * proxy allows its link to a server unwritten), counting the answers its running handlers owe it
   * (each as big as `answerRoom`). A handler answering a read's every request in
   * the same turn made answers for a peer that reads nothing until the budget cut it - 256 MiB
   * built in one turn, the event loop stalled for seconds (the proxy's PINGs unanswered, every
   * other peer waiting) at every connection. An async handler's were all running before the first
   * was answered: 1,024 answers of 500 kB settled in one turn and the budget cut the proxy's link.
   */
  private backedUp(caller: Caller): boolean {
    if (caller.parked.length > 0) return true;
    const share = this.opts.budget.requestsPerPeer;
    if (share === Infinity) return false;
    return caller.conn.pendingBytes + caller.running * this.answerRoom >= share;
  }

  /** Hold `job` unrun, holding its bytes, until its caller has read its answers (or is gone). */
  private park(job: Job): void {
    const caller = job.caller;
    this.parkedCount++;
    if (caller.parked.push(job) > 1) return;
    this.waiting.add(caller);
    const { serverId: id, logger } = this.opts;
    const share = this.opts.budget.requestsPerPeer;
    // Its running handlers owe the rest of its share: the next answer wakes them (`finish`), said by nobody (the
    // peer reads; its requests wait their turn). Else it has not read its share: its written answers do.
    if (caller.running > 0 && caller.conn.pendingBytes < share) {
      caller.wakeOnAnswer = true;
      return;
    }
    caller.conn.whenWritten(() => this.unpark(caller));
    logger.repeated('warn', 'answers_unread', id, 1, (n, span) => span
      ? `Held the requests of connections that had not read their answers ${fmt(n)} more time(s) ${span}, until they read them`
      : `Connection from ${caller.conn.describe()} has not read ${caller.conn.pendingBytes} bytes of answers, more than its share of the buffer budget (${share} bytes, --max-buffered-bytes / 32): its requests wait, unrun, until it reads them`,
    { peer: caller.conn.describe(), share });
  }

  /** The caller read its answers: run its parked requests, in order, until it falls behind again; gone, they are dropped. */
  private unpark(caller: Caller): void {
    const jobs = caller.parked;
    caller.parked = [];
    this.waiting.delete(caller);
    this.parkedCount -= jobs.length;
    for (let i = 0; i < jobs.length; i++) {
      const job = jobs[i]!;
      if (caller.conn.closed) this.letGo(job);
      else if (this.expired(job, 'while its connection did not read its answers')) continue;
      else if (this.backedUp(caller)) this.park(job);
      else if (this.busy < this.opts.concurrency) this.start(job);
      else this.enqueue(job);
    }
  }

  /** Abort every handler still running that watches its signal (the server is going away). */
  abortAll(why: string): void {
    const reason = new RevproxyError(ErrorCode.SHUTTING_DOWN, why);
    for (const job of this.watched) job.abort(reason);
    for (const job of this.timed) job.release();
    for (const job of this.queue) this.letGo(job);
    this.queue.length = 0;
    this.queueSweep?.cancel();
    this.queueSweep = undefined;
    for (const caller of this.waiting) {
      for (const job of caller.parked) this.letGo(job);
      caller.parked = [];
    }
    this.waiting.clear();
    this.parkedCount = 0;
  }

  private start(job: Job): void {
    this.running++;
    job.caller.running++;
    const delay = this.opts.delayMs;
    if (delay > 0) this.opts.clock.setTimeout(() => this.invoke(job), delay);
    else this.invoke(job);
  }

  private invoke(job: Job): void {
    const log = this.opts.logger;
    const { msg } = job;
    if (log.enabled('debug')) log.debug('request', `Received a message from client ${msg.srcid} payload ${show(msg.payload)}`, { client: msg.srcid, payload: show(msg.payload) });
    let result: Answer | Promise<Answer>;
    const began = this.opts.clock.now();
    this.calling = job;
    this.callingSince = began;
    try {
      result = this.opts.handler(msg.payload, new RequestContext(job));
    } catch (err) {
      this.calling = undefined;
      this.blocking(job, began);
      this.finish(job, this.failure(job, err));
      return;
    }
    this.calling = undefined;
    this.blocking(job, began);
    if (typeof result === 'string' || isBytes(result)) this.finish(job, this.ack(job, result));
    else {
      const ms = this.opts.handlerTimeoutMs;
      if (ms > 0) {
        job.limit = this.opts.clock.setTimeout(() => this.timedOut(job, ms), ms);
        this.timed.add(job);
      }
      if (typeof result === 'object' && result !== null) unsettled.register(result, job, job);
      Promise.resolve(result).then(
        (answer) => (unsettled.unregister(job), job.lingering ? this.settled(job) : this.finish(job, this.ack(job, answer))),
        (err: unknown) => (unsettled.unregister(job), job.lingering ? this.settled(job) : this.finish(job, this.failure(job, err))),
      );
    }
  }

  /** The job whose handler is being called (it has not returned yet), and since when (clock ms). */
  private calling?: Job;
  private callingSince = 0;

  /**
   * What the handler was doing when the server's event loop stopped turning, for the watchdog's line
   * (`cli/watchdog.ts`): the request it was called for and has not returned from, else where the loop
   * must be.
   */
  stuckOn(): string {
    const job = this.calling;
    if (job) {
      const { msg } = job;
      return `the handler had not returned from request ${msg.seq} of client ${msg.srcid}, called ${fmt(Math.round(this.opts.clock.now() - this.callingSince))} ms before`;
    }
    const n = this.running;
    return n > 0
      ? `the handler had returned for each of its ${fmt(n)} running request(s), so it computes after an await in one of them, or in a callback of the handler module's own`
      : "no request was running, so it computes in a callback of the handler module's own (a timer, an event)";
  }

  /**
   * The handler computed for `BLOCKING_MS` or more before it returned (or awaited): the server's one
   * thread answered nothing meanwhile, the proxy's PINGs included. The proxy then tries its requests
   * elsewhere and, past --ping-interval x --ping-misses (3 s), removes the server; the server's log
   * said only 'REMOVED: it missed 3 PINGs', nothing of the handler.
   */
  private blocking(job: Job, began: number): void {
    const ms = Math.round(this.opts.clock.now() - began);
    if (ms < BLOCKING_MS) return;
    const { msg } = job;
    const id = this.opts.serverId;
    this.opts.logger.repeated('warn', 'handler_blocking', id, 1, (n, span) => span
      ? `The handler of server ${id} computed for ${BLOCKING_MS} ms or more without awaiting on ${fmt(n)} more request(s) ${span}, the server answering nothing meanwhile`
      : `The handler of server ${id} computed for ${ms} ms without awaiting on request ${msg.seq} of client ${msg.srcid}: the server answered nothing meanwhile, the proxy's PINGs included, so the proxy tries its requests on other servers after its try timeout and removes the server after 3 s of it (--ping-interval x --ping-misses). Run heavy work in a worker thread (node:worker_threads, or a pool such as piscina) and await it`,
    { client: msg.srcid, seq: msg.seq, ms });
  }

  /** Write the job's answer, free its slot, start the next waiting job whose answer is still wanted. */
  private finish(job: Job, answer: AckMsg | ErrorMsg, lingers = false): void {
    if (job.done) return;
    job.done = true;
    job.release();
    this.letGo(job, lingers);
    if (lingers) {
      job.lingering = true;
      this.lingering++;
      this.lingeringBytes += job.bytes;
    }
    this.running--;
    const caller = job.caller;
    caller.running--;
    this.answer(caller.conn, answer);
    if (caller.wakeOnAnswer) {
      caller.wakeOnAnswer = false;
      caller.conn.whenWritten(() => this.unpark(caller));
    }
    this.next();
  }

  /**
   * The handler's promise has not settled within the handler timeout: a
   * promise cannot be cancelled, so the request is answered TIMEOUT, its
   * slot goes to the next request and the handler is told to stop (its
   * signal); whatever it settles with later is dropped.
   */
  private timedOut(job: Job, ms: number): void {
    const { msg } = job;
    const id = this.opts.serverId;
    const reason = new RevproxyError(ErrorCode.TIMEOUT, `the handler of server ${id} did not settle within ${ms} ms (its handler timeout)`);
    this.finish(job, errorMsg(ErrorCode.TIMEOUT, reason.message, msg.seq), true);
    job.abort(reason);
    const c = this.opts.concurrency;
    if (this.lingering > c) {
      this.opts.logger.repeated('warn', 'handler_lingering', id, 1, (n, span) => span
        ? `Handlers of server ${id} that timed out and ignore ctx.signal took ${fmt(n)} more slot(s) ${span}`
        : `${this.lingering} handlers of server ${id} were answered TIMEOUT and still run, more than --concurrency (${c}): the handler ignores ctx.signal, so each one past ${c} takes a slot from new requests (they wait, or are refused OVERLOADED) until it settles; pass ctx.signal on to whatever it waits for`,
      { lingering: this.lingering, concurrency: c });
    }
    this.opts.logger.repeated('warn', 'handler_timeout', id, 1, (n, span) => span
      ? `The handler of server ${id} did not settle within ${ms} ms on ${fmt(n)} request(s) ${span}: answered TIMEOUT, aborted their ctx.signal and freed their slots (--handler-timeout)`
      : `The handler of server ${id} did not settle within ${ms} ms on request ${msg.seq} of client ${msg.srcid}: answered TIMEOUT, aborted its ctx.signal and freed its slot (--handler-timeout); a handler should pass ctx.signal on to whatever it waits for`, {
      client: msg.srcid, seq: msg.seq, timeoutMs: ms,
    });
  }

  /**
   * The handler's promise was garbage-collected unsettled: nothing refers to it, so nothing can settle
   * it (a resolve() left out on some path). What it held is free: before, such handlers kept their
   * slots for good (with --concurrency 2, four of them and the server ran no request again, its
   * queue waiting for ever). One not answered yet (no handler timeout) is answered TIMEOUT now.
   */
  collected(job: Job): void {
    if (!job.lingering && job.done) return;
    const id = this.opts.serverId;
    this.opts.logger.repeated('warn', 'handler_unsettled', id, 1, (n, span) => span
      ? `The handler of server ${id} returned ${fmt(n)} more promise(s) that can never settle ${span}: their slots are free`
      : `The handler of server ${id} returned a promise that can never settle on request ${job.msg.seq} of client ${job.msg.srcid}: nothing refers to it any more (it was garbage-collected), so nothing can resolve it; a resolve() or reject() left out on some path? Its slot is free`,
    { client: job.msg.srcid, seq: job.msg.seq });
    if (job.lingering) this.settled(job);
    else this.finish(job, errorMsg(ErrorCode.TIMEOUT, `the handler of server ${id} returned a promise that can never settle`, job.msg.seq));
  }

  /** A handler answered TIMEOUT has settled at last: what it held is free, and its slot if it took one. */
  private settled(job: Job): void {
    job.lingering = false;
    this.lingering--;
    this.lingeringBytes -= job.bytes;
    this.opts.budget.release(job.bytes);
    this.next();
  }

  /** Queue `job` for a slot; with a queue timeout, the sweep that answers those past it is armed. */
  private enqueue(job: Job): void {
    if (this.queue.length === 0 && this.opts.queueLifoAfterMs > 0) this.queueSince = this.opts.clock.now();
    this.queue.push(job);
    if (this.opts.queueTimeoutMs <= 0) return;
    job.queuedAt = this.opts.clock.now();
    if (!this.queueSweep) this.armQueueSweep();
  }

  /** Arm the queue's one timer: due when its oldest has waited `queueTimeoutMs` (the queue is in the order they went in). */
  private armQueueSweep(): void {
    const head = this.queue[0];
    if (!head) return;
    const { clock, queueTimeoutMs } = this.opts;
    this.queueSweep = clock.setTimeout(() => {
      this.queueSweep = undefined;
      const now = clock.now();
      let n = 0;
      while (this.queue.length > 0 && this.queue[0]!.queuedAt + queueTimeoutMs <= now) {
        this.waitedTooLong(this.queue.shift()!);
        n++;
      }
      if (n) {
        const id = this.opts.serverId;
        this.opts.logger.repeated('warn', 'queue_timeout', id, n, (k, span) => `Answered ${fmt(k)} request(s) OVERLOADED, unrun: they waited ${queueTimeoutMs} ms for one of the server's ${this.opts.concurrency} slot(s) (--queue-timeout, --concurrency)${span ? ` ${span}` : ''}`, { code: ErrorCode.OVERLOADED });
      }
      this.armQueueSweep();
    }, Math.max(0, head.queuedAt + queueTimeoutMs - clock.now()));
  }

  /** A request that waited `queueTimeoutMs` for a slot: OVERLOADED, unrun, so the proxy sends it to a server with room. */
  private waitedTooLong(job: Job): void {
    this.letGo(job);
    const { serverId: id, queueTimeoutMs } = this.opts;
    this.answer(job.caller.conn, errorMsg(ErrorCode.OVERLOADED, `request ${job.msg.seq} waited ${queueTimeoutMs} ms in server ${id}'s queue for a slot (--queue-timeout), not run; try another server or later`, job.msg.seq));
  }

  /**
   * Adaptive LIFO (`queueLifoAfterMs`): whether the queue has stood that long, not empty once, so a
   * free slot takes its newest (the proxy's `queue_lifo_after` does the same in its own queue). The
   * queue stays in the order its jobs came: the queue timeout's sweep still takes the oldest first.
   */
  private standing(): boolean {
    const after = this.opts.queueLifoAfterMs;
    return after > 0 && this.opts.clock.now() - this.queueSince >= after;
  }

  private next(): void {
    if (this.busy >= this.opts.concurrency || this.queue.length === 0) return;
    const newest = this.standing();
    while (this.busy < this.opts.concurrency && this.queue.length > 0) {
      const job = newest ? this.queue.pop()! : this.queue.shift()!;
      if (this.expired(job, `in server ${this.opts.serverId}'s queue`)) continue;
      // A slot goes to a peer that reads its answers; this one's request waits for it to read.
      if (this.backedUp(job.caller)) this.park(job);
      else this.start(job);
    }
  }

  /** The proxy has stopped waiting for `job` while it waited: it is answered TIMEOUT (running it would only keep the others waiting). */
  private expired(job: Job, where: string): boolean {
    if (job.deadline === undefined || this.opts.clock.now() < job.deadline) return false;
    this.letGo(job);
    this.answer(job.caller.conn, errorMsg(ErrorCode.TIMEOUT, `request ${job.msg.seq} waited past its deadline ${where}`, job.msg.seq));
    return true;
  }

  private ack(job: Job, returned: unknown): AckMsg | ErrorMsg {
    const { msg } = job;
    const id = this.opts.serverId;
    const answer = asBytes(returned);
    if (typeof answer !== 'string' && !isBytes(answer)) {
      // A bug in the handler, as one that throws: the server's log says so too (it said nothing, even at info).
      const what = describe(answer);
      this.opts.logger.repeated('error', 'bad_answer', what, 1, (n, span) => span
        ? `The handler of server ${id} answered ${fmt(n)} request(s) ${span} with what is neither text nor bytes: ${what}`
        : `The handler of server ${id} answered request ${msg.seq} of client ${msg.srcid} with ${what}: a handler answers a string or bytes (the client gets BAD_ANSWER)`, {
        client: msg.srcid, seq: msg.seq, answer: what,
      });
      return this.appError(job, 'BAD_ANSWER', `the handler of server ${id} answered ${what}; a handler answers a string or bytes`);
    }
    // Text goes out as UTF-8, which has no lone surrogates: it became U+FFFD without a word, where the answer
    // reaches the client as returned (and the wire refuses such text from a peer: docs/PROTOCOL.md).
    if (typeof answer === 'string') {
      const lone = loneSurrogateIn(answer);
      if (lone) return this.appError(job, 'BAD_ANSWER', `the handler of server ${id} answered text with ${lone}, which UTF-8 cannot carry; answer well-formed text, or bytes`);
    }
    const size = typeof answer === 'string' ? Buffer.byteLength(answer) : answer.length;
    // The ACK's other fields take well under 1 KiB. Past the frame the proxy reads, an older proxy refused the whole
    // frame and closed the link, every request on it with it (one of this build passes it over, ANSWER_TOO_LARGE).
    const own = this.opts.maxFrameBytes;
    const theirs = job.caller.peerMaxFrame ?? Infinity;
    const most = Math.min(own, theirs) - 1024;
    if (size > most) {
      const cap = theirs < own
        ? `the reverse proxy it came through reads frames of at most ${theirs} bytes (its max_frame, --max-frame, as its link from ${job.caller.conn.describe()} states), less 1024 for the rest of the frame; this server's own --max-frame is ${own}`
        : `the server's --max-frame, maxFrameBytes to startServer, ${own} less 1024 for the rest of the frame`;
      return this.appError(job, ANSWER_TOO_LARGE, `the handler of server ${id} answered ${size} bytes; answers may be ${most} bytes at most (${cap})`);
    }
    const log = this.opts.logger;
    if (log.enabled('debug')) log.debug('answer', `Sending a message to the client ${msg.srcid} payload ${show(answer)}`, { client: msg.srcid, payload: show(answer) });
    return { type: MsgType.ACK, seq: msg.seq, srcid: id, destid: msg.srcid, payload: answer, payloadsize: size };
  }

  /**
   * A thrown error becomes the request's answer. A `HandlerError`, or any
   * error with a valid string `code` that is not Node's (`readCode`), is the
   * handler's own: its code and message go to the client. Anything else is a bug in the handler: the
   * client gets `HANDLER_FAILED` and a message that hides the details, and
   * the server's log has them.
   */
  private failure(job: Job, err: unknown): ErrorMsg {
    const id = this.opts.serverId;
    if (job.aborted) {
      return errorMsg(ErrorCode.TIMEOUT, `the handler of server ${id} stopped: ${(job.signal().reason as Error).message}`, job.msg.seq);
    }
    // Whatever was thrown is read through `safely`: a null-prototype object (no toString), a revoked
    // Proxy (every look throws), an error whose `code` getter throws each ended the whole server.
    const { code, refused: why } = safely(() => readCode(err), {} as ThrownCode);
    if (code !== undefined) {
      const m = safely(() => (err as { message?: unknown }).message, undefined);
      const message = typeof m === 'string' && m ? sliceWhole(m, MAX_APP_MESSAGE) : code;
      return this.appError(job, code, message);
    }
    // A handler that fails on every request would write a stack per request: the first, then a count per interval, per kind of failure.
    const described = describeThrown(err);
    // An error with a code of its own that is no application code says why it was not taken as one (`why`): its log line showed the stack only.
    const reason = why ? `${described.reason} (${why})` : described.reason;
    const detail = why ? `${described.detail}\n(${why})` : described.detail;
    this.opts.logger.repeated('error', 'handler_failed', reason, 1, (n, span) => span
      ? `The handler of server ${id} failed on ${fmt(n)} request(s) ${span}: ${reason}`
      : `The handler of server ${id} failed on request ${job.msg.seq} of client ${job.msg.srcid}: ${detail}`, {
      client: job.msg.srcid, seq: job.msg.seq, reason,
    });
    return this.appError(job, HANDLER_FAILED, `the handler of server ${id} failed; the server's log says why`);
  }

  private appError(job: Job, appcode: string, message: string): ErrorMsg {
    const { msg } = job;
    this.opts.logger.debug('app_error', `Answering request ${msg.seq} of client ${msg.srcid} with ${appcode}: ${message}`, { client: msg.srcid, seq: msg.seq, appcode });
    return { type: MsgType.ERROR, seq: msg.seq, code: ErrorCode.HANDLER_ERROR, appcode, message };
  }
}

/** `read()`, or `fallback` when reading throws (a getter, a revoked Proxy). */
function safely<T, F>(read: () => T, fallback: F): T | F {
  try {
    return read();
  } catch {
    return fallback;
  }
}

/**
 * An answer that is bytes of another shape - an `ArrayBuffer` (`await response.arrayBuffer()`), a `DataView`,
 * a typed array other than `Uint8Array` - as a `Uint8Array` over the same memory, as `ws` and undici take
 * them; anything else as it is. They were BAD_ANSWER 'an object (JSON.stringify it...)', which gives '{}'.
 */
function asBytes(v: unknown): unknown {
  return safely(() => (v instanceof ArrayBuffer ? new Uint8Array(v) : ArrayBuffer.isView(v) && !(v instanceof Uint8Array) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : v), v);
}

/** Bytes, asked safely: `instanceof` on a revoked Proxy throws. */
function isBytes(v: unknown): v is Uint8Array {
  return safely(() => v instanceof Uint8Array, false);
}

/** A thrown value's `code`, read once: the handler's own application code, or why a string code is not one. */
interface ThrownCode {
  /** The application code the client is answered with (`HandlerError`'s, or a valid string `code` not Node's). */
  code?: string;
  /** Why a string `code` was not taken as one: Node's (a failed system call, an `ERR_` code), or not an application code. */
  refused?: string;
}

/**
 * Read a thrown value's code once (a getter may answer differently each time). A code of Node's - a failed
 * system call (ENOENT, ECONNREFUSED: it names its `syscall`) or one of Node's own (`ERR_...`) - is no
 * application answer, and its message (a path, an internal address) is not the client's to read.
 * May throw: call it through `safely`.
 */
function readCode(err: unknown): ThrownCode {
  if (err instanceof HandlerError) return { code: err.appCode };
  if (err === null || (typeof err !== 'object' && typeof err !== 'function')) return {};
  const e = err as { code?: unknown; syscall?: unknown };
  const code = e.code;
  if (typeof code !== 'string') return {};
  const syscall = e.syscall;
  if (typeof syscall === 'string' || code.startsWith('ERR_')) {
    return { refused: `its code ${JSON.stringify(code.slice(0, 80))} is taken as Node's own (${typeof syscall === 'string' ? `a failed ${syscall}` : 'ERR_...'}), not an application code: answered HANDLER_FAILED; to answer the client with a code of the handler's own, throw new HandlerError(CODE, message)` };
  }
  if (APP_CODE.test(code)) return { code };
  const bad = badAppCode(code);
  return bad ? { refused: `its code is not an application code: ${bad}; answered HANDLER_FAILED` } : {};
}

/**
 * A thrown value for the log, whatever it is: `reason` short (a message), `detail` with the stack
 * when there is one. Never throws.
 */
export function describeThrown(err: unknown): { reason: string; detail: string } {
  const text = (v: unknown): string | undefined => safely(() => (typeof v === 'string' ? v : v === undefined ? undefined : String(v)), undefined);
  if (err === null || (typeof err !== 'object' && typeof err !== 'function')) {
    const t = text(err) ?? typeof err;
    const reason = `it threw ${typeof err === 'string' ? JSON.stringify(t) : t}, not an Error`;
    return { reason, detail: reason };
  }
  const message = text(safely(() => (err as { message?: unknown }).message, undefined));
  const stack = text(safely(() => (err as { stack?: unknown }).stack, undefined));
  if (message !== undefined || stack !== undefined) {
    const reason = message ?? stack!.split('\n')[0]!;
    return { reason, detail: stack ?? reason };
  }
  const plain = text(err);
  if (plain !== undefined && plain !== '[object Object]') return { reason: plain, detail: plain };
  const kind = safely(() => Object.prototype.toString.call(err), undefined);
  const what = kind === undefined
    ? 'it threw a value that cannot be looked at (a revoked Proxy?), not an Error'
    : `it threw ${safely(() => Object.getPrototypeOf(err) === null, false) ? 'an object with no prototype' : `a ${kind.slice(8, -1)}`}, not an Error (no message)`;
  return { reason: what, detail: what };
}

/** A payload or answer for a log line: text as it is, bytes by their size. */
export function show(p: Payload): string {
  return typeof p === 'string' ? p : `<${p.length} bytes>`;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'undefined (does it return its answer?)';
  if (typeof v === 'string') return 'a string';
  if (safely(() => Array.isArray(v), false)) return 'an array';
  const kind = safely(() => Object.prototype.toString.call(v).slice(8, -1), 'Object');
  if (kind === 'AsyncGenerator' || kind === 'Generator') return `${kind === 'AsyncGenerator' ? 'an async generator' : 'a generator'} (a handler returns its answer, it does not yield)`;
  // What fetch() gives: its bytes or text are the answer, read with one more await.
  if (kind === 'Blob' || kind === 'File') return `a ${kind} (answer await blob.arrayBuffer(), its bytes)`;
  if (kind === 'Response') return 'a fetch Response (answer await response.text(), or await response.arrayBuffer() for its bytes)';
  // asBytes reads any other: this one could not be read.
  if (kind === 'ArrayBuffer' || kind === 'SharedArrayBuffer') return `an ${kind} that cannot be read (detached: transferred to a worker or by structuredClone; answer a copy of its bytes)`;
  if (typeof v === 'object') return 'an object (JSON.stringify it to answer JSON)';
  return typeof v;
}
