/**
 * A client of the proxy, as an actor: requests come in as events, go out on
 * one connection pipelined up to a window (the rest wait their turn), and
 * each is settled exactly once - by its answer (matched by seq), its
 * timeout, its abort, or the client giving up on every proxy.
 *
 * session.connecting --CONNECTED--> session.open --CLOSED--> lost --failover delay--> session (next proxy)
 *        \--CONNECT_FAILED--> lost                          lost --attempts used up--> offline --REQUEST--> session
 *                                     lost --attempts used up, requests held--> backoff --delay--> session
 *                     lost --attempts used up by dials, nothing held--> reconnecting --delay (unref'd)--> session
 *                                                                       reconnecting --REQUEST--> session (at once)
 *                     lost --after a pause, a proxy of the list not dialled since--> session (the next proxy, at once)
 *  (any) --CLOSE--> closed
 *
 * A client that has been connected holds its requests while no proxy answers (hold.ts): each
 * waits until a proxy is back, or its own timeout or abort ends it; after each pause it dials every
 * proxy of its list once, in turn. Holding none, it dials
 * again in the background with the same backoff (reconnecting) once the quick round's dials
 * found no proxy, so its `reconnect` comes when the proxy is back, not at its next request. A
 * connection a proxy closed after answering on it (its idle timeout, say) is not chased: once
 * the quick round is used up by such closes, the client goes offline, as before.
 *
 * When a connection is lost, the requests sent on it go out again, first,
 * on the next proxy (the work is idempotent). So do requests a draining
 * proxy refused SHUTTING_DOWN, when there is another proxy: nothing more is
 * sent to it, and the client leaves it once it has answered the rest.
 * Connecting is not progress (a proxy that accepts and then closes must not
 * keep us trying for ever); an answer is, but not a refusal SHUTTING_DOWN. connect.ts builds the promise and
 * RxJS forms on this machine.
 */
import { Buffer } from 'node:buffer';
import { assertEvent, assign, enqueueActions, fromCallback, raise, setup, type ActorRefFrom, type EventObject } from 'xstate';
import { DEFAULT_PROXY_TIMEOUT_MS, hostPort } from '../transport/address.js';
import { ErrorCode, HANDLER_FAILED, isRetryable, LocalCode, ProtocolError, RevproxyError, type ClientCode } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES, FRAME_OVER, refusesARequest } from '../transport/frame.js';
import { heldEstimate, isIdValue, loneSurrogateIn, MAX_ID_LENGTH, MsgType, type AckMsg, type DataMsg, type Message, type PongMsg } from '../transport/messages.js';
import { DEFAULT_BUFFER_BUDGET, PEER_SHARE } from '../transport/budget.js';
import { Connection } from '../transport/socket.js';
import { closedAtOnce, peerAlert, PLAIN_TO_TLS, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TCP_KEEPALIVE_MS, describeDialError, dial, dialDeadline, whenReady, type TlsMaterial } from '../transport/tls.js';
import { setDeadline, systemClock, type Clock, type Timer } from '../transport/clock.js';
import { HandlerError, show, type Payload } from './handler.js';
import { badLogger, fmt, silentLogger, type Logger } from './logger.js';
import { DEFAULT_FAILOVER_DELAY_MS, DEFAULT_RECONNECT_MAX_DELAY_MS, failoverDelay, movedForNoServer, NO_SERVER_GRACE_MS, parkDelay, reconnectDelay, stillNoServer, stillShuttingDown, unreachable } from './hold.js';
import { badId, badWholeNumbers, DEFAULT_PROXY, type Endpoint } from './server.js';
import { badKinds } from './start-options.js';
import { Liveness, NoPings, PING_AFTER_MS, PONG_WITHIN_MS } from './liveness.js';
import { NOT_QUEUED, PolicyQueue, type Queued } from './client-queue.js';

/**
 * Why a request has no answer: the proxy's ERROR (its wire code: `NO_SERVER`,
 * `TIMEOUT`, `OVERLOADED`, ...) or the client's own outcome (`CLIENT_TIMEOUT`,
 * `CONNECT_FAILED`, ...). An application error from a handler is a
 * `HandlerError` instead.
 *
 * A request its signal aborted (`ABORTED`) rejects with one named `AbortError`, its `cause` the signal's `reason`,
 * as Node's own APIs reject (timers/promises, events.once, fs): `err.name === 'AbortError'` finds it as it finds
 * fetch's and undici's aborts, and it is still a `RequestError` coded `ABORTED`. For `AbortSignal.timeout()` the
 * cause is its `TimeoutError` (fetch rejects with that itself; Node's APIs, and this client, with it as the cause).
 *
 * @example
 * try { await client.request('111', 'hello'); }
 * catch (err) {
 *   if (err instanceof RequestError && err.retryable) setTimeout(sendAgain, 100); // no handler ran it
 *   else if (err instanceof RequestError && err.code === 'TIMEOUT') ... // a handler may have run it
 * }
 */
export class RequestError extends RevproxyError<ErrorCode | ClientCode> {
  /**
   * Whether sending the request again cannot run it twice and may succeed: no handler ran it (the proxy sent it to no
   * server, `NO_SERVER`, or the client never sent it), as `RETRYABLE` says of its code. False when a handler may
   * have run it: a `TIMEOUT` or `UPSTREAM_FAILED` after the proxy forwarded it, a connection lost with it in flight
   * (`CONNECTION_LOST`), a `CLIENT_TIMEOUT` or an abort after it was sent - and for any code once the client had sent it
   * on a connection lost unanswered (the client sends such a request again by itself: at least once). False too
   * where the same request fails again (`BAD_REQUEST`). docs/PROTOCOL.md, "Sending a request again".
   */
  readonly retryable: boolean;
  /** @param options.mayHaveRun the client had sent the request where a handler may have run it: never retryable. */
  constructor(code: ErrorCode | ClientCode, message: string, options?: { cause?: unknown; mayHaveRun?: boolean }) {
    super(code, message, options && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = code === LocalCode.ABORTED ? 'AbortError' : 'RequestError';
    this.retryable = isRetryable(code, options?.mayHaveRun === true);
  }
}

/**
 * How long a client waits for each answer unless told otherwise (ms): the library's `timeoutMs` and
 * `revproxy client --timeout`. A second past the proxy's default `--timeout` (5000), within which the
 * proxy answers every request: its `TIMEOUT`, which says which server did not answer and why, reaches
 * the client first. At 5000 the client's timer, started as it sent, ran out before the proxy's, started
 * as it read the request: a policy whose servers did not answer got `CLIENT_TIMEOUT`, which names none.
 */
export const DEFAULT_CLIENT_TIMEOUT_MS = DEFAULT_PROXY_TIMEOUT_MS + 1000;

export interface ClientOptions {
  /** The client's id: the `srcid` of its requests unless a request names another. */
  id: string;
  /** The proxy to send through (or use `proxies`). */
  proxy?: Endpoint | undefined;
  /** Several proxies: the client uses the first and fails over to the next when one is down. */
  proxies?: Endpoint[] | undefined;
  /** Per-request timeout in ms, unless a request says otherwise (default 6000, a second past the proxy's default timeout, so the proxy's `TIMEOUT`, which names the server, arrives first; `Infinity`: none of the client's own, the proxy's `TIMEOUT` still comes). */
  timeoutMs?: number | undefined;
  /**
   * Requests of one privacy policy in flight at once on the connection (default 64; always 1 request
   * in all on the json wire): each policy has its own, so a slow policy's requests do not hold up
   * another's.
   */
  window?: number | undefined;
  /** Requests that may wait for room in the window; past it a request is refused with CLIENT_OVERLOADED (default 100,000). */
  maxQueued?: number | undefined;
  /**
   * Bytes the connection's requests in flight may hold at the proxy, as its buffer budget counts
   * them (the payload; a text one under 64 KiB twice, with its frame). Default: under the share the
   * proxy states in its PONG (`--max-buffered-bytes` / 32: 8 MiB by default, less under a memory
   * limit) by 64 KiB, and 8 MiB less 64 KiB until it has (or from a proxy that states none). Past
   * its share the proxy stops reading the connection - every policy's requests with it. A policy
   * that would hold more than an eighth of this takes at most seven eighths, so one policy's large
   * requests to slow servers leave room for the others'. A request larger than this is sent alone.
   * Given, it is kept whatever the proxy states.
   */
  maxBytesInFlight?: number | undefined;
  /** `frames` (default), or `json`: the old wire, one request at a time, for the old Python proxy. */
  wire?: 'frames' | 'json' | undefined;
  /**
   * Largest frame the proxy takes (its `--max-frame`, default 1 MiB): a request that would not fit is refused here, alone, with
   * BAD_REQUEST before it is sent. A proxy that states a smaller one in its PONG (`maxFrame`) is kept to that one.
   */
  maxFrameBytes?: number | undefined;
  /** Consecutive failed connection attempts before giving up on what is pending (default: 2 per proxy). */
  maxAttempts?: number | undefined;
  /** Pause before trying the next proxy (ms, default 100), up to a fifth early at random, so the clients of a proxy that goes do not all dial the next one at once. */
  failoverDelayMs?: number | undefined;
  /**
   * Hold requests while no proxy answers, once the client has been connected (default true):
   * dial again with backoff (the failover delay doubling up to `reconnectMaxDelayMs`, each pause
   * up to a fifth early at random, and followed by a dial of every proxy of the list in turn) until a proxy is back or each request's own timeout or abort
   * ends it. A client holding no request dials so too, in the background, until a proxy answers
   * (its `reconnect` event then), on a timer that keeps no process alive by itself. `false`: fail
   * what is pending after `maxAttempts` dials, and dial again only for the next request, as before.
   */
  hold?: boolean | undefined;
  /** The longest pause between rounds of dials (each proxy of the list once) while no proxy answers (ms, default 1000). */
  reconnectMaxDelayMs?: number | undefined;
  /**
   * Longest wait for a connection (TCP, and TLS's handshake), and then for the proxy's answer to
   * the PING the client sends first, before the next proxy is tried (ms, default 2000: well within
   * a request's default timeout). A peer that accepts the connection and answers no PING in that
   * time (a wrong port, a stopped or hung proxy) counts as a failed dial.
   */
  connectTimeoutMs?: number | undefined;
  /**
   * TCP keepalive on the connection to the proxy: probes after this long without traffic (ms;
   * 0 = off), one a second, ten unanswered end it. An idle connection whose path died without a
   * word (a NAT or firewall that forgot the flow, a partition, a host gone) is found and dialled
   * again before a request is lost on it, and the probes keep a NAT's or firewall's idle flow
   * alive. Default 15000, as a server's registrations.
   */
  tcpKeepAliveMs?: number | undefined;
  /** TLS to the proxy: the CA that signed its certificate, and a client certificate for mutual TLS. */
  tls?: TlsMaterial | undefined;
  /** Where the client says what happens to it (failovers, holding, a proxy gone quiet): nothing is logged without one. */
  logger?: Logger | undefined;
  /** The clock its timers and timeouts run on (default: the system's monotonic clock); a manual one in tests. */
  clock?: Clock | undefined;
}

/** One request as the client machine takes it. `done` is called exactly once. */
export interface ClientRequest {
  policy: string;
  payload: Payload;
  /** The `srcid` to send (default: the client's id). */
  srcid?: string;
  /** Default: the client's `timeoutMs`. */
  timeoutMs?: number;
  /** The caller's signal: aborted while the request waits, it is not sent (its CANCEL settles it). */
  signal?: AbortSignal;
  done: (outcome: Outcome) => void;
}

/** How a request ended: its ACK, or the error it got. */
export type Outcome =
  | { ok: true; answer: AckMsg; latencyMs: number }
  | { ok: false; error: RequestError | HandlerError; latencyMs: number };

/** A request from its arrival to its outcome; waiting to be sent, it is linked into its policy's queue (client-queue.ts). */
interface Entry extends Queued<Entry> {
  readonly req: ClientRequest;
  readonly handle: RequestHandle;
  readonly arrived: number;
  /** The payload's size in bytes, as sent in `payloadsize`. */
  readonly size: number;
  /** What the proxy holds for it while it is in flight (`heldEstimate`), against `maxBytesInFlight`. */
  readonly held: number;
  timer?: Timer;
  /** Its seq on the current connection while in flight there. */
  seq?: number;
  /** Its place in the order the client sent requests in (RequestBook.failRefused). */
  sentNo?: number;
  /** When it was sent on the current connection (the clock's ms). */
  sentAt?: number;
  /** What a proxy just reconnected to said when it refused it NO_SERVER (its servers may still be registering again): held to send again. */
  refused?: string;
  /** A draining proxy refused it SHUTTING_DOWN, and the client held it to send again (unsend). */
  refusedShutting?: boolean;
  /**
   * It was in flight, unanswered, on a connection the client left because the proxy went silent
   * (RequestBook.losses then): until the client sends it again or a dial fails, its own timeout ending is no answer, not an outage.
   */
  unansweredAt?: number;
  /**
   * A send of it before this one may have run at a server: it was in flight on a connection lost or left without its
   * answer (but one whose proxy read nothing of it: unsend), or a draining proxy refused it SHUTTING_DOWN, which its
   * drain timeout also answers requests at servers with. Whatever it ends with, it is not `retryable`.
   */
  ran?: boolean;
  settled: boolean;
}

/** A handle on a request given to the machine, to cancel it by. */
export type RequestHandle = object;

export type ClientEvent =
  | { type: 'REQUEST'; requests: Array<{ req: ClientRequest; handle: RequestHandle }> }
  | { type: 'CANCEL'; handle: RequestHandle; error: RequestError }
  /** `lateMs`: how late its timer ran, when STALL_MS or more (the client's process stalled). */
  | { type: 'EXPIRE'; handle: RequestHandle; lateMs?: number }
  /** After CANCELs: send what waits, once the caller's own code (a loop of aborts, say) has run to its end. */
  | { type: 'SEND_MORE' }
  | { type: 'CLOSE' }
  /** The live proxies changed (a registry's list): fail over among these from now on. */
  | { type: 'PROXIES'; proxies: ListedProxy[] }
  /** Renewed client certificates (Client.renewTls): the next dials present them; the open connection keeps its own. */
  | { type: 'RENEW_TLS'; tls: TlsMaterial }
  /** `probing`: a PING went to the proxy first, requests go out behind it; PROBED says how it went (connect() resolves then). */
  | { type: 'CONNECTED'; conn: Connection; probing: boolean }
  /** The proxy answered that PING (its PONG says its `share` and `maxFrame`): a silent cut is found by PINGs from now on (liveness.ts). */
  | { type: 'PROBED'; share?: number; maxFrame?: number }
  /** The proxy refused that PING (one from before client PINGs: BAD_REQUEST, the connection closed, nothing after the PING read): dial it again without. */
  | { type: 'PINGS_REFUSED'; error: string }
  /** Send the requests parked after a NO_SERVER again (see hold.ts). */
  | { type: 'UNPARK' }
  /** An idle client's pause between background dials is over (reconnecting): dial. */
  | { type: 'REDIAL' }
  /** `invalid`: the proxy sent something that is not a valid message, and the client closed the connection. */
  | { type: 'CONNECT_FAILED'; error: string; invalid?: boolean }
  | { type: 'ANSWERS'; messages: Message[] }
  /**
   * The proxy said why it will close the connection (an ERROR without a seq), before the answers it still owes on it:
   * nothing more is sent on it, and its silence to PINGs (it reads nothing more) is not taken for a dead connection.
   */
  | { type: 'CLOSING' }
  /**
   * `silent`: the client leaves a proxy that stopped answering (cut off, stalled, gone from the registry). `refused`:
   * the proxy ended the connection refusing what it read, `BAD_REQUEST: ...` (its words): a request of ours (failRefused).
   * `unread`: its last word was SHUTTING_DOWN (a stopped proxy's), which says it read nothing still unanswered on it.
   */
  | { type: 'CLOSED'; error: string; silent?: boolean; invalid?: boolean; refused?: string; unread?: boolean };

/**
 * Every request the client holds, waiting or in flight, with the window
 * between them. Owned by the machine; changed only in its actions.
 */
export class RequestBook {
  /**
   * Requests to send, by privacy policy, each policy's oldest first. A request leaves it when it is
   * sent or settled (aborted, timed out): nothing sent or settled is held here, or counted against
   * `maxQueued` (`waitingCount`). Each policy has its own `window`: with one window for all, a
   * policy whose requests waited long at the proxy (its servers short of room) took every place in
   * it, and the others' requests waited behind them in the client (1.8 s at the median where they
   * took 2-4 ms).
   */
  private readonly waiting = new Map<string, PolicyQueue<Entry>>();
  private waitingCount = 0;
  /** Queues made so far: the next one's `order`, its place in `waiting`'s order (a Map's: by insertion). */
  private queuesMade = 0;
  /**
   * The queues `sendMore` looks at: every one with requests to look at and room in its policy's window, and
   * perhaps others (it drops those it finds without either). A queue comes back as a request of its policy
   * lands (its window has room again) or a request waits in it. Each `sendMore` looked at every policy's
   * queue: with many policies whose windows were full, each answer, expiry and new request cost a look at all.
   */
  private readonly toLook = new Set<PolicyQueue<Entry>>();
  private readonly inflight = new Map<number, Entry>();
  /** Requests in flight, by privacy policy (policies with none are not kept). */
  private readonly inflightBy = new Map<string, number>();
  /** What the requests in flight hold at the proxy (`Entry.held`), in all and by privacy policy (policies with none are not kept). */
  private bytesInFlight = 0;
  /** The most they may hold (`maxBytesInFlight`, or under the proxy's share: `proxyShare`). */
  private maxBytes: number;
  private readonly bytesBy = new Map<string, number>();
  /** Requests in flight at most, all policies together: 1 on the old JSON wire (one at a time on a connection). */
  private readonly total: number;
  /** Requests the proxy refused SHUTTING_DOWN (it is draining), to send again on the next proxy. */
  private bounced: Entry[] = [];
  /** The client leaves this connection for a proxy that came and ranks first for it (rebalance): nothing more is sent on it. */
  moving = false;
  /** A SEND_MORE is on its way (the machine's `sendSoon`): the CANCELs before it need no other. */
  sendScheduled = false;
  /** Requests a proxy just reconnected to refused NO_SERVER (see `hold.ts`), to send again on it after a pause. */
  private parked: Entry[] = [];
  private readonly byHandle = new Map<RequestHandle, Entry>();
  private seq = 0;
  /** Connections lost and dials failed so far (unsend). */
  private losses = 0;
  /** Requests settled so far, by outcome: `ok`, or the error's code (for the inspector's counts). */
  readonly outcomes: Record<string, number> = {};
  /** Answers a proxy gave (ACK or ERROR) so far: whether this client ever got through. */
  answers = 0;
  /** When the proxy last said anything, or the connection opened (the clock's ms). */
  heardAt = 0;
  /** PINGs sent on the connection whose PONG may still come through the answers (strays): the watch's. */
  pingsOwed = 0;
  /**
   * When the first request sent since the proxy last said anything went out (the clock's ms): the
   * proxy owes it an answer within its timeout. Not the last thing it said: a client idle a minute
   * has heard nothing for a minute from a proxy that owes it nothing.
   */
  private unheardSince?: number;
  /** The largest frame the connection's proxy takes, as its PONG said (`maxFrame`), and that proxy: none until one says (a proxy before 2026-12-06 says none). */
  private stated?: { max: number; proxy: string };
  /** Requests sent so far (`Entry.sentNo`). */
  private sends = 0;
  /**
   * Requests in flight on this connection that their callers gave up on (aborted, timed out), their answers not come
   * yet: seq -> sentNo. The proxy may have refused one of them (failRefused).
   */
  private readonly abandoned = new Map<number, number>();

  constructor(
    private readonly clock: Clock,
    private readonly window: number,
    private readonly maxQueued: number,
    /** The old JSON wire: payloads must be text. */
    private readonly textOnly: boolean,
    private readonly maxFrameBytes: number,
    /** `maxBytesInFlight` as given: the proxy's share does not change it. */
    private readonly maxBytesSet?: number,
  ) {
    this.total = textOnly ? 1 : Infinity;
    this.maxBytes = maxBytesSet ?? DEFAULT_MAX_BYTES_IN_FLIGHT;
  }

  /**
   * The connection's proxy said what its requests may hold before it stops reading the connection
   * (its PONG's `share`), or said nothing (an older proxy, or no PONG in time): unless
   * `maxBytesInFlight` was given, the requests in flight keep under that share (less a read), or
   * under the default one.
   */
  proxyShare(share: number | undefined): void {
    if (this.maxBytesSet !== undefined) return;
    this.maxBytes = share === undefined ? DEFAULT_MAX_BYTES_IN_FLIGHT : underShare(share);
  }

  /**
   * The connection's proxy said the largest frame it takes (its PONG's `maxFrame`: its max_frame), or said none (a
   * proxy before 2026-12-06): a request that would not fit is refused here from now on, `BAD_REQUEST`, unsent. Sent,
   * the proxy refuses it and ends the connection (failRefused).
   */
  proxyMaxFrame(max: number | undefined, proxy: string): void {
    this.stated = max === undefined ? undefined : { max, proxy };
  }

  /**
   * A connection is open, or was lost: what a proxy said of its frames is that connection's (a proxy restarted on its port
   * may take larger ones), known again from the new connection's PONG. Kept across connections, a 4 MiB request was
   * refused by the 1 MiB a proxy had said before its restart with 4 MiB.
   */
  forgetMaxFrame(): void {
    this.stated = undefined;
  }

  /** Why a payload of `size` bytes is over the frames the proxy said it takes, if it is (the client's own maxFrameBytes let it through). */
  private overStated(size: number): string | undefined {
    const s = this.stated;
    if (!s || size + FRAME_ROOM <= s.max) return undefined;
    return `the payload is ${size} bytes, over the ${s.max - FRAME_ROOM} a request may carry through the reverse proxy at ${s.proxy}: it takes frames of at most ${s.max} bytes (its max_frame, --max-frame), ${FRAME_ROOM} of them kept for the request's other fields; send a smaller payload, or raise the proxy's max_frame (--max-frame), and maxFrameBytes here with it`;
  }

  /** Since when the proxy's silence counts against it (liveness.ts): the first request sent since it last said anything, or when it did. */
  get quietSince(): number {
    return this.unheardSince ?? this.heardAt;
  }

  /** Requests not settled yet. */
  get size(): number {
    return this.byHandle.size;
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /** Requests refused NO_SERVER by a proxy just reconnected to, waiting to be sent again. */
  get parkedCount(): number {
    return this.parked.length;
  }

  /** Whether a parked request still waits (one settled meanwhile - timed out, aborted - stays parked until they are sent again). */
  get parkedWaiting(): boolean {
    return this.parked.some((e) => !e.settled);
  }

  /**
   * The parked requests go to the next proxy instead (the client knows another): as after a
   * SHUTTING_DOWN, nothing more is sent on this connection, left once what is in flight on it is
   * answered. Returns how many, and the first one's refusal (the proxy's words).
   */
  moveParked(): { count: number; said?: string; policy?: string } {
    const moving = this.parked.filter((e) => !e.settled);
    this.parked = [];
    this.bounced.push(...moving);
    return { count: moving.length, said: moving[0]?.refused, policy: moving[0]?.req.policy };
  }

  /** The parked requests wait again, first, to be sent on this connection. */
  unpark(): void {
    const back = this.parked.filter((e) => !e.settled);
    this.parked = [];
    this.waitFirst(back);
  }

  /** What the proxy said when it refused this held request NO_SERVER, if it did and it has not been sent since. */
  refusedWith(handle: RequestHandle): string | undefined {
    const entry = this.byHandle.get(handle);
    return entry?.seq === undefined ? entry?.refused : undefined;
  }

  /** The proxy said it will close this connection (CLOSING): nothing more is sent on it. */
  closing = false;

  /**
   * The open connection ended the last outage, made without a PING first to a proxy that answers none (the binary
   * wire; not a move for a NO_SERVER), and its proxy has said nothing on it yet but, perhaps, why it closes it: a
   * request held through that outage whose timeout ends now, within `connectTimeoutMs` of it, fails as in the outage
   * (`outageAt`). Kept here, not in the machine's context: `answer` clears it as it reads, with no action per batch.
   */
  unheardSinceOutage = false;

  /** The proxy said it is shutting down: nothing more is sent on this connection. */
  get draining(): boolean {
    return this.bounced.length > 0 || this.moving;
  }

  /** Take a request to send when the window has room (settled at once with CLIENT_OVERLOADED when the queue is full). */
  add(req: ClientRequest, handle: RequestHandle, expire: (handle: RequestHandle, ms: number) => Timer, clientId: string): void {
    const { payload } = req;
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload instanceof Uint8Array ? payload.length : -1;
    const entry: Entry = {
      req, handle, arrived: this.clock.now(), size, held: heldEstimate(size, typeof payload === 'string'), settled: false,
      qPrev: undefined, qNext: undefined, lPrev: undefined, lNext: undefined, queued: NOT_QUEUED,
    };
    // The proxy closes a connection that sends a message it cannot take, failing every request in flight on it.
    const refused = refusal(req, size, this.maxFrameBytes, clientId) ?? this.overStated(size);
    if (refused) {
      this.settle(entry, { ok: false, error: new RequestError(ErrorCode.BAD_REQUEST, refused), latencyMs: 0 });
      return;
    }
    if (this.textOnly && typeof req.payload !== 'string') {
      this.settle(entry, { ok: false, error: new RequestError(ErrorCode.BAD_REQUEST, 'the old JSON wire carries text only: send bytes over frames (the default wire)'), latencyMs: 0 });
      return;
    }
    if (this.waitingCount >= this.maxQueued && !this.makeRoom(req.policy)) {
      this.settle(entry, { ok: false, error: new RequestError(LocalCode.CLIENT_OVERLOADED, `${this.maxQueued} requests are already waiting to be sent; slow down or raise maxQueued`), latencyMs: 0 });
      return;
    }
    this.byHandle.set(handle, entry);
    // Infinity, or longer than a timer can wait, waits the longest there is (the clock's timerMs): no timeout of the client's own in practice.
    entry.timer = expire(handle, req.timeoutMs!);
    this.queueOf(req.policy).push(entry);
    this.waitingCount++;
  }

  /** `policy`'s queue, made (last in `waiting`'s order) if it has none; `sendMore` looks at it. */
  private queueOf(policy: string): PolicyQueue<Entry> {
    let queue = this.waiting.get(policy);
    if (!queue) this.waiting.set(policy, (queue = new PolicyQueue(policy, this.queuesMade++)));
    this.toLook.add(queue);
    return queue;
  }

  /**
   * The queue is full (`maxQueued`): a request to a policy with fewer requests waiting than the
   * policy with the most, less one, gets in, and that policy's oldest waiting request (the nearest
   * its timeout) is given up instead, `CLIENT_OVERLOADED` saying so. As the proxy's `FairQueue`
   * shares its queue between client connections: one policy whose requests piled up here (its
   * servers slow, the application sending on regardless) took every place, and every other
   * policy's requests were refused. Returns whether room was made.
   */
  private makeRoom(policy: string): boolean {
    let most: PolicyQueue<Entry> | undefined;
    for (const queue of this.waiting.values()) if (!most || queue.size > most.size) most = queue;
    if (!most || (this.waiting.get(policy)?.size ?? 0) + 1 >= most.size) return false;
    const oldest = most.oldest!;
    const message = `${fmt(this.maxQueued)} requests were waiting to be sent, ${fmt(most.size)} of them to policy ${most.policy}, the most: its oldest was given up to make room for one to policy ${policy} (each policy keeps its share of maxQueued); slow down or raise maxQueued`;
    this.settle(oldest, { ok: false, error: new RequestError(LocalCode.CLIENT_OVERLOADED, message), latencyMs: this.clock.now() - oldest.arrived });
    return true;
  }

  /** `entries` (sent, then taken back) wait again, each before its policy's other waiting requests, in their order. */
  private waitFirst(entries: Entry[]): void {
    const by = new Map<string, Entry[]>();
    for (const e of entries) {
      const list = by.get(e.req.policy);
      if (list) list.push(e);
      else by.set(e.req.policy, [e]);
    }
    for (const [policy, list] of by) this.queueOf(policy).unshift(list);
    this.waitingCount += entries.length;
  }

  /** A request waiting to be sent leaves the queue (sent, or settled). */
  private unwait(entry: Entry): void {
    const queue = this.waiting.get(entry.req.policy);
    if (!queue?.remove(entry)) return;
    this.waitingCount--;
    if (queue.size > 0) return;
    this.waiting.delete(entry.req.policy);
    this.toLook.delete(queue);
  }

  /** The request in flight with `seq` is answered, settled or taken back: its policy's window has room for one more. */
  private landed(seq: number, entry: Entry): void {
    this.inflight.delete(seq);
    const policy = entry.req.policy;
    const n = this.inflightBy.get(policy)! - 1;
    if (n > 0) this.inflightBy.set(policy, n);
    else this.inflightBy.delete(policy);
    this.bytesInFlight -= entry.held;
    const b = this.bytesBy.get(policy)! - entry.held;
    if (n > 0) this.bytesBy.set(policy, b);
    else this.bytesBy.delete(policy);
    const queue = this.waiting.get(policy);
    if (queue) this.toLook.add(queue);
  }

  /** Nothing is in flight any more (the connection is gone, or the client gave up). */
  private landedAll(): void {
    this.inflight.clear();
    this.abandoned.clear();
    this.inflightBy.clear();
    this.bytesInFlight = 0;
    this.bytesBy.clear();
    for (const queue of this.waiting.values()) this.toLook.add(queue);
  }

  /**
   * Send waiting requests while their policy's window and the bytes in flight have room, each policy's oldest first,
   * the policies in the order their queues were made (`waiting`'s).
   * One its caller gave up on (its signal aborted, its time up) stays where it is, unsent: its CANCEL or EXPIRE,
   * the next event, settles it. A slot freed by one such event sent the next waiting request, given up on too,
   * whose own event came next: 1,000 requests aborted (or timed out) together went to the proxy all at once, past
   * the window (902 handlers running at once behind a window of 4), each for a caller gone. It is set aside
   * (`PolicyQueue.setAside`), not looked at again: each EXPIRE of many at once walked past all the others, and
   * 40,000 requests whose timeouts ended together held the client's event loop 22-28 s (now 0.7-1.8 s, linear).
   */
  sendMore(conn: Connection, client: string, log: Logger, port: number): void {
    // The old JSON wire's one request in flight: no policy has room.
    if (this.draining || this.closing || this.inflight.size >= this.total || this.toLook.size === 0) return;
    const verbose = log.enabled('debug');
    const now = this.clock.now();
    const queues = this.toLook.size === 1 ? this.toLook : [...this.toLook].sort(byOrder);
    for (const queue of queues) {
      const { policy } = queue;
      const free = this.window - (this.inflightBy.get(policy) ?? 0);
      let room = Math.min(free, this.total - this.inflight.size);
      // Under the total (the old JSON wire), with room in its window: looked at again once a request lands.
      if (room <= 0) {
        if (free <= 0) this.toLook.delete(queue);
        continue;
      }
      for (let entry = queue.first, next; entry; entry = next) {
        next = entry.lNext;
        if (entry.req.signal?.aborted || now - entry.arrived >= entry.req.timeoutMs!) {
          queue.setAside(entry);
          continue;
        }
        // It waited while the proxy said a smaller frame than the client's own: sent, it would cost the connection.
        if (this.stated && entry.size + FRAME_ROOM > this.stated.max) {
          this.settle(entry, { ok: false, error: new RequestError(ErrorCode.BAD_REQUEST, this.overStated(entry.size)!), latencyMs: now - entry.arrived });
          continue;
        }
        if (room-- <= 0 || !this.bytesFit(policy, entry.held)) break;
        this.unwait(entry);
        this.send(entry, conn, client, log, port, verbose);
      }
      // Nothing left to look at, or no room: until a request waits or lands. Held back by the bytes in flight, it stays.
      if (!queue.first || this.window - (this.inflightBy.get(policy) ?? 0) <= 0) this.toLook.delete(queue);
    }
  }

  /**
   * Whether a request of `policy` holding `held` bytes at the proxy may go now (`maxBytesInFlight`):
   * the connection's requests in flight stay under what the proxy lets one connection hold before
   * it stops reading it, every policy's requests with it. Past it, one policy's large requests to
   * slow servers held another policy's requests in the kernel for seconds. A policy that would hold
   * more than an eighth of it leaves that last eighth to the others, so a small request of another
   * policy goes at once rather than after the large ones' next answer. One request alone always goes.
   */
  private bytesFit(policy: string, held: number): boolean {
    const total = this.bytesInFlight;
    if (total === 0) return true;
    const reserve = this.maxBytes / 8;
    return total + held <= ((this.bytesBy.get(policy) ?? 0) + held > reserve ? this.maxBytes - reserve : this.maxBytes);
  }

  /** Write one waiting request: held in `inflight` until answered, and by nothing once answered (its payload may be large). */
  private send(entry: Entry, conn: Connection, client: string, log: Logger, port: number, verbose: boolean): void {
    entry.unansweredAt = undefined;
    const seq = this.seq;
    this.seq = this.seq >= 0xffffffff ? 0 : this.seq + 1;
    const { req } = entry;
    const srcid = req.srcid ?? client;
    const { size } = entry;
    if (verbose) {
      log.debug('send', `Sending message ${show(req.payload)} to privacy policy ${req.policy} through reverse proxy running on port ${port}`, {
        client: srcid, policy: req.policy, payload: show(req.payload), seq,
      });
    }
    const msg: DataMsg = { type: MsgType.DATA, seq, srcid, privPoliId: req.policy, payload: req.payload, payloadsize: size };
    entry.seq = seq;
    entry.sentNo = this.sends++;
    entry.sentAt = this.clock.now();
    this.unheardSince ??= entry.sentAt;
    this.inflight.set(seq, entry);
    this.inflightBy.set(req.policy, (this.inflightBy.get(req.policy) ?? 0) + 1);
    this.bytesInFlight += entry.held;
    this.bytesBy.set(req.policy, (this.bytesBy.get(req.policy) ?? 0) + entry.held);
    conn.send(msg);
  }

  /**
   * Settle what one read answered; returns how many requests it settled. With
   * `elsewhere` (another proxy to go to, or the same one once it is back), a request refused
   * SHUTTING_DOWN is not settled: it waits to go to the next proxy. With `parkNoServer` (the
   * proxy was just reconnected to after an outage), nor is one refused NO_SERVER: it is parked.
   */
  answer(messages: Message[], log: Logger, elsewhere: boolean, parkNoServer = false): number {
    let settled = 0;
    this.heardAt = this.clock.now();
    this.unheardSince = undefined;
    for (const m of messages) {
      // Anything but why it closes the connection (an ERROR naming no request): the proxy reads what it is sent.
      if (this.unheardSinceOutage && (m.type !== MsgType.ERROR || m.seq !== undefined)) this.unheardSinceOutage = false;
      if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) continue;
      const seq = m.seq;
      if (m.type === MsgType.ERROR && seq === undefined) {
        // Not about one request: the proxy is closing this connection. SHUTTING_DOWN is a stopped proxy's last word (nothing
        // unanswered on it was read): what is in flight goes again when the connection is gone, as after any lost connection.
        if (m.code === ErrorCode.SHUTTING_DOWN) log.info('proxy_closing', `The reverse proxy closes the connection: ${m.message}`, { code: m.code });
        else log.error('proxy_error', `The reverse proxy said ${m.code}: ${m.message}`, { code: m.code });
        continue;
      }
      const entry = seq === undefined ? undefined : this.inflight.get(seq);
      if (!entry) {
        if (this.abandoned.size > 0) this.abandoned.delete(seq!);
        continue;
      }
      this.answers++;
      this.landed(seq!, entry);
      if (elsewhere && m.type === MsgType.ERROR && m.code === ErrorCode.SHUTTING_DOWN) {
        entry.seq = undefined;
        entry.ran = true;
        this.bounced.push(entry);
        continue;
      }
      if (parkNoServer && m.type === MsgType.ERROR && m.code === ErrorCode.NO_SERVER) {
        entry.seq = undefined;
        entry.refused = m.message;
        this.parked.push(entry);
        continue;
      }
      const latencyMs = this.clock.now() - entry.arrived;
      if (m.type === MsgType.ACK) {
        log.debug('answer', `Receiving a response from the server payload: ${show(m.payload)}`, { server: m.srcid, payload: show(m.payload), seq });
        this.settle(entry, { ok: true, answer: m, latencyMs }, true);
      } else {
        const error = m.code === ErrorCode.HANDLER_ERROR ? new HandlerError(m.appcode ?? HANDLER_FAILED, m.message) : new RequestError(m.code, m.message);
        this.settle(entry, { ok: false, error, latencyMs }, true);
      }
      settled++;
    }
    return settled;
  }

  /**
   * Say what in a read answers nothing (before `answer` takes the rest): an ACK or ERROR for a seq
   * no request in flight has (or one answered earlier in the read) is debug - normal once a request
   * timed out or was aborted - and a message no proxy sends a client (DATA, SETUP, PING, DEREGISTER,
   * or a PONG answering no PING: its seq is not the 0 the client PINGs with, or none is owed) a warn
   * line, once per proxy and type, then counted in a summary each interval. They are dropped, as before.
   */
  strays(messages: Message[], log: Logger, proxy: string): void {
    // Answers are looked at only for debug lines: the usual read costs a type check per message.
    const debug = log.enabled('debug');
    let answered: Set<number> | undefined;
    for (const m of messages) {
      if (m.type === MsgType.ACK || m.type === MsgType.ERROR) {
        if (!debug || m.seq === undefined) continue;
        if (this.inflight.has(m.seq) && !answered?.has(m.seq)) {
          if (messages.length > 1) (answered ??= new Set()).add(m.seq);
          continue;
        }
        const what = m.type === MsgType.ACK ? 'an ACK' : `an ERROR ${m.code}`;
        log.debug('stray_answer', `The reverse proxy at ${proxy} sent ${what} for seq ${m.seq}, which no request in flight has (it timed out, was aborted, or was answered already): dropped`, { proxy, seq: m.seq, type: m.type });
      } else if (m.type === MsgType.PONG && m.seq === 0 && this.pingsOwed > 0) {
        this.pingsOwed--;
      } else {
        const name = MSG_NAMES[m.type] ?? String(m.type);
        const what = m.type !== MsgType.PONG ? `a ${name} message (type ${m.type}), which no proxy sends a client`
          : m.seq === 0 ? 'a PONG when the client had sent no PING' : `a PONG for seq ${m.seq} (the client PINGs with seq 0 only)`;
        log.repeated('warn', 'wrong_message', `${proxy} ${m.type}`, 1, (n, span) => span
          ? `The reverse proxy at ${proxy} sent ${n} more ${name} message(s) a client cannot take ${span}: dropped`
          : `The reverse proxy at ${proxy} sent ${what}: dropped (a broken proxy, or another program; more are counted)`, { proxy, type: m.type });
      }
    }
  }

  /** Whether this request is in flight on the connection: sent, not answered. */
  sent(handle: RequestHandle): boolean {
    return this.byHandle.get(handle)?.seq !== undefined;
  }

  /** The policy `handle` was sent for, or undefined once it is settled. */
  policyOf(handle: RequestHandle): string | undefined {
    return this.byHandle.get(handle)?.req.policy;
  }

  /** When `handle` came (the clock's ms), or undefined once it is settled. */
  arrivedAt(handle: RequestHandle): number | undefined {
    return this.byHandle.get(handle)?.arrived;
  }

  /** When the timeout of `handle` ran out (the clock's ms), if it waits in the client unsent (never sent, or taken back): undefined once sent or settled. */
  dueUnsent(handle: RequestHandle): number | undefined {
    const entry = this.byHandle.get(handle);
    return entry && entry.seq === undefined ? entry.arrived + entry.req.timeoutMs! : undefined;
  }

  /** The timeout `handle` was given (its own, or the client's), or undefined once it is settled. */
  timeoutOf(handle: RequestHandle): number | undefined {
    return this.byHandle.get(handle)?.req.timeoutMs;
  }

  /** Settle one request with an error (its timeout, its abort), wherever it is. */
  fail(handle: RequestHandle, error: RequestError): void {
    const entry = this.byHandle.get(handle);
    if (!entry) return;
    if (entry.seq !== undefined) {
      this.abandoned.set(entry.seq, entry.sentNo!);
      this.landed(entry.seq, entry);
    }
    this.settle(entry, { ok: false, error, latencyMs: this.clock.now() - entry.arrived });
  }

  /**
   * The proxy at `proxy` ended the connection refusing what it read, `BAD_REQUEST` (`said`, its words). It answers
   * every request it read before the bad bytes first and reads nothing after them, so what it refused is the oldest
   * request still unanswered: that one fails `BAD_REQUEST`, not sent again. It was sent again on every new
   * connection and refused again, every request behind it with it, until each one's timeout ended it CONNECT_FAILED
   * ("no reverse proxy could be reached ... check that the proxy runs"). Returns it; none when that is not known (a
   * request its caller gave up on was sent before it and not answered: the proxy may have refused that one).
   */
  failRefused(said: string, proxy: string): { policy: string; size: number } | undefined {
    const first = this.inflight.values().next().value;
    if (!first) return undefined;
    for (const n of this.abandoned.values()) if (n < first.sentNo!) return undefined;
    this.answers++;
    this.landed(first.seq!, first);
    this.settle(first, { ok: false, error: new RequestError(ErrorCode.BAD_REQUEST, refusedRequest(proxy, said, first.size)), latencyMs: this.clock.now() - first.arrived }, true);
    return { policy: first.req.policy, size: first.size };
  }

  /**
   * Whether `handle` went unanswered on a proxy the client left as silent, with no dial failed since:
   * its timeout ending now is the proxy's silence (CLIENT_TIMEOUT), not a time when no proxy could be reached.
   */
  unanswered(handle: RequestHandle): boolean {
    return this.byHandle.get(handle)?.unansweredAt === this.losses;
  }

  /**
   * The connection is gone (`silent`: the client left it, the proxy having stopped answering), or a
   * dial failed: what was in flight on it, or refused SHUTTING_DOWN or NO_SERVER, waits again, first.
   * What was in flight may have run at a server (`Entry.ran`), unless `unread`: the proxy said it read none of it
   * (it refused the first PING, its last word closing the connection was SHUTTING_DOWN, it refused the request before them).
   */
  unsend(silent = false, unread = false): number {
    this.losses++;
    this.moving = false;
    if (silent) for (const e of this.inflight.values()) e.unansweredAt = this.losses;
    if (!unread) for (const e of this.inflight.values()) e.ran = true;
    for (const e of this.bounced) e.refusedShutting = true;
    const back = [...this.bounced, ...this.parked, ...this.inflight.values()].filter((e) => !e.settled);
    this.bounced = [];
    this.parked = [];
    this.landedAll();
    this.unheardSince = undefined;
    for (const e of back) {
      e.seq = undefined;
      e.sentAt = undefined;
    }
    this.waitFirst(back);
    return back.length;
  }

  /** Whether a draining proxy refused `handle` SHUTTING_DOWN, and the client held it to send again. */
  wasRefusedShutting(handle: RequestHandle): boolean {
    return this.byHandle.get(handle)?.refusedShutting === true;
  }

  /** Settle everything still held with `error` (or `refused`, those a draining proxy refused): the client gave up or was closed. Returns how many. */
  failAll(error: RequestError, refused?: RequestError): number {
    const all = [...this.byHandle.values()];
    this.moving = false;
    this.landedAll();
    this.bounced = [];
    this.parked = [];
    this.waiting.clear();
    this.toLook.clear();
    this.waitingCount = 0;
    for (const e of all) e.queued = NOT_QUEUED;
    for (const e of all) this.settle(e, { ok: false, error: (e.refusedShutting && refused) || error, latencyMs: this.clock.now() - e.arrived });
    return all.length;
  }

  /**
   * `answered`: the proxy's answer settles it. Otherwise one in flight (sent, its answer not come: a timeout, an abort, the
   * client giving up or closed) may have run at a server, and so may one sent before (`Entry.ran`): not `retryable`.
   */
  private settle(entry: Entry, outcome: Outcome, answered = false): void {
    if (entry.settled) return;
    if (!outcome.ok && outcome.error instanceof RequestError && outcome.error.retryable && (entry.ran || (!answered && entry.seq !== undefined))) {
      outcome = { ...outcome, error: mayHaveRun(outcome.error) };
    }
    entry.settled = true;
    entry.timer?.cancel();
    this.byHandle.delete(entry.handle);
    this.unwait(entry);
    const key = outcome.ok ? 'ok' : outcome.error.code;
    this.outcomes[key] = (this.outcomes[key] ?? 0) + 1;
    entry.req.done(outcome);
  }
}

/** `error` for a request a handler may have run: not `retryable` (one error may be shared by many requests: `failAll`). */
function mayHaveRun(error: RequestError): RequestError {
  return new RequestError(error.code, error.message, 'cause' in error ? { cause: error.cause, mayHaveRun: true } : { mayHaveRun: true });
}

/** Queues in the order they were made (`RequestBook.waiting`'s). */
const byOrder = (a: PolicyQueue<Entry>, b: PolicyQueue<Entry>): number => a.order - b.order;

/** Message types by number, for lines about them. */
const MSG_NAMES: Record<number, string> = Object.fromEntries(Object.entries(MsgType).map(([name, n]) => [n, name]));

/** What a request's frame holds besides its payload, at most (the server bounds its answers the same way). */
const FRAME_ROOM = 1024;

/** The request the proxy refused as it ended the connection (RequestBook.failRefused), in words: what to do about it. */
function refusedRequest(proxy: string, said: string, size: number): string {
  const base = `the reverse proxy at ${proxy} refused the request and ended the connection, saying ${said}`;
  return FRAME_OVER.test(said)
    ? `${base}: the request (a payload of ${size} bytes) is over the proxy's frame limit; send a smaller payload, or raise the proxy's max_frame (--max-frame), and maxFrameBytes here with it`
    : `${base}; it was not sent again`;
}

/** Why the proxy would refuse this request, if it would. */
function refusal(req: ClientRequest, size: number, maxFrameBytes: number, clientId: string): string | undefined {
  if (size < 0) return `a payload is a string or a Uint8Array (a Buffer is one), not ${describe(req.payload)}${isArrayBuffer(req.payload) ? ': pass a view of it, new Uint8Array(buffer)' : ''}`;
  if (!isIdValue(req.policy)) return `a policy is a string of 1 to ${MAX_ID_LENGTH} characters, not ${describe(req.policy)}`;
  if (req.srcid !== undefined && !isIdValue(req.srcid)) return `a srcid is a string of 1 to ${MAX_ID_LENGTH} characters, not ${describe(req.srcid)}`;
  if (req.srcid === undefined && !isIdValue(clientId)) return `the client's id (its requests' srcid) is a string of 1 to ${MAX_ID_LENGTH} characters, not ${describe(clientId)}: connect({ id })`;
  const broken = surrogate('the payload', req.payload) ?? surrogate('the policy', req.policy) ?? surrogate('the srcid', req.srcid ?? clientId);
  if (broken) return broken;
  // A timeout of -1 or NaN failed CLIENT_TIMEOUT at once, as if the proxy were slow; '100' ran as 100 by chance.
  const ms = req.timeoutMs;
  if (typeof ms !== 'number' || !(ms > 0)) return `timeoutMs is a number of milliseconds above 0 (Infinity for no timeout of the client's own), not ${describe(ms)}`;
  // The DATA's other fields take well under 1 KiB (FRAME_ROOM).
  if (size + FRAME_ROOM > maxFrameBytes) {
    return `the payload is ${size} bytes, over the ${maxFrameBytes - FRAME_ROOM} a request may carry: its frame is at most ${maxFrameBytes} bytes, ${FRAME_ROOM} of them kept for its other fields (the proxy's --max-frame: raise maxFrameBytes here with it, or send less)`;
  }
  return undefined;
}

/**
 * Why text to be sent cannot be, if it has a lone surrogate: UTF-8 cannot carry one, and the
 * encoder wrote U+FFFD in its place without a word (a policy 'p\uD800' was refused NO_SERVER
 * for 'p\uFFFD', a payload reached the handler changed).
 */
function surrogate(what: string, text: unknown): string | undefined {
  const lone = typeof text === 'string' ? loneSurrogateIn(text) : undefined;
  return lone && `${what} has ${lone}, which UTF-8 cannot carry (it would arrive as U+FFFD): send well-formed text${what === 'the payload' ? ', or bytes' : ''}`;
}

const sameEndpoint = (a: Endpoint, b: Endpoint): boolean => a.host === b.host && a.port === b.port;

/**
 * The list's first proxy, if it came - it was not in the client's list, or was as another start of it (a proxy
 * restarted within its lease TTL, whose key never left etcd: `ListedProxy.instance`) - and is not the one in use,
 * which stays listed: the client goes to it (rebalance). Told by its address alone, a proxy killed and restarted
 * a second later had no client back (0 of 9 for the 23 s measured; 6 before the kill).
 */
function newcomerFirst(context: ClientContext, proxies: ListedProxy[]): ListedProxy | undefined {
  const top = proxies[0];
  const cur = context.proxies[context.proxyIndex]!;
  if (!top || sameEndpoint(top, cur) || context.proxies.some((p) => sameEndpoint(p, top) && p.instance === top.instance) || !proxies.some((p) => sameEndpoint(p, cur))) return undefined;
  return top;
}

/** The client's list of proxies from now on, its connection at `proxyIndex`: the PING refusals remembered are kept for those alone. */
function listed(context: ClientContext, proxies: Endpoint[], proxyIndex: number): Pick<ClientContext, 'proxies' | 'proxyIndex' | 'unlisted'> {
  context.noPings.keep(proxies.map((p) => hostPort(p.host, p.port)));
  return { proxies, proxyIndex, unlisted: false };
}

/** An ArrayBuffer or SharedArrayBuffer, from this realm or another. */
function isArrayBuffer(v: unknown): v is ArrayBufferLike {
  const tag = Object.prototype.toString.call(v);
  return tag === '[object ArrayBuffer]' || tag === '[object SharedArrayBuffer]';
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return v.length ? `a string of ${v.length} characters` : 'an empty string';
  if (typeof v === 'number') return `the number ${v}`;
  if (ArrayBuffer.isView(v)) return `a ${v.constructor.name}`;
  // It read 'an object', though the bytes were there (fetch's arrayBuffer() gives one).
  if (isArrayBuffer(v)) return `an ${Object.prototype.toString.call(v).slice(8, -1)} of ${v.byteLength} bytes`;
  return Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : typeof v;
}

/** A proxy of the client's list: from the registry, with the start of it found there (registry/discovery.ts `Found`). */
export interface ListedProxy extends Endpoint {
  instance?: string;
}

export interface ClientContext {
  opts: ClientOptions;
  proxies: ListedProxy[];
  proxyIndex: number;
  /** The first of `proxies` is kept only because the connection is on it: it left the registry's list (setProxies), and goes at the next failover. */
  unlisted: boolean;
  /** Connection attempts in a row without an answer (a refusal SHUTTING_DOWN is none: the proxy takes nothing). */
  attempts: number;
  /**
   * The last try was a dial no proxy answered (refused, timed out, closed before the PONG of the first PING), not a
   * connection a proxy had answered on and then closed: with the quick round used up and nothing held, the proxies are
   * down, and the client dials again in the background (reconnecting). After a connection closed, they may well be up:
   * an idle connection the proxy closes (its `idle_timeout`, 60 s) looks the same as one lost to a proxy killed, and
   * chased it would be dialled again each time for ever.
   */
  dialFailed: boolean;
  /** The dial under way is an idle client's background one (reconnecting): answered, the outage is over, the quick round whole again. */
  redialing: boolean;
  /**
   * The draining proxy (host:port) that last refused a request SHUTTING_DOWN, and its words, while
   * no proxy has answered a request since: a held request whose timeout ends then, or a request
   * failed when the client gives up, gets that code and says so. Forgotten once no request it refused is held
   * (forgetShutting: offline, reconnecting).
   */
  shutting?: { proxy: string; message: string };
  logger: Logger;
  clock: Clock;
  conn?: Connection;
  book: RequestBook;
  lastError?: string;
  /**
   * Each proxy's last failed dial or connection since the client was last connected (host:port and
   * why), in the order first tried: connect() names them all. It named only the last one: two
   * proxies down read "no reverse proxy is listening on <the second>".
   */
  tried: Array<{ proxy: string; why: string }>;
  /** The last connection was closed by the client because the proxy sent an invalid message (lastError says which): BAD_REQUEST, not an outage. */
  lastInvalid?: boolean;
  /**
   * The last connection ended with its proxy refusing a request of ours `BAD_REQUEST` (a frame over its limit,
   * say), which failed (RequestBook.failRefused): the proxy is up, and is dialled again at once, no failed
   * attempt and no outage, for the requests behind it. Not while the client was leaving that proxy anyway.
   */
  redial?: { policy: string; size: number };
  /** A proxy was reached at least once (reached()): requests are held from then on (hold.ts). */
  connectedOnce: boolean;
  /** Since when no proxy has been connected (the clock's ms), after a connection or dial failed. */
  outageSince?: number;
  /**
   * The outage that ended last (`outageSince`, and when a proxy was reached again): a request held unsent whose
   * timeout ran out in it, its EXPIRE read only after the proxy was reached (a late timer runs a turn later,
   * setDeadline), failed as one held in the outage does, not as one a proxy left unanswered (`outageAt`).
   */
  lastOutage?: { since: number; until: number; move?: Move };
  /** When a proxy was connected again after an outage: its NO_SERVER is held a while (NO_SERVER_GRACE_MS). */
  recoveredAt?: number;
  /** An UNPARK is on its way. */
  unparking: boolean;
  /**
   * Why the client leaves the proxy once what is in flight there is answered, if not because it is
   * draining: requests it refused NO_SERVER in the grace go to the next proxy (moveOn).
   */
  leaving?: string;
  /** The connection being made follows a move to the next proxy for a NO_SERVER: the grace still counts from the first reconnect. */
  hop: boolean;
  /** The refusal the last move to the next proxy was for (moveOn): what a request held unsent in the move ends with (movingFor). */
  move?: Move;
  /** Moves to the next proxy for a NO_SERVER since the reconnect (`parkDelay`): only the first is a warn line. */
  hops: number;
  /** The client is leaving its proxy for the list's first, a proxy that came (rebalance): it dials that one next, at once. */
  rebalance: boolean;
  /** The proxies (host:port) dialled without a PING first, until a connection to them is lost (liveness.ts). */
  noPings: NoPings;
  /** The watch on the open connection: whether its proxy is silent, and what then (liveness.ts). */
  liveness?: Liveness;
  /** The PING sent first on the open connection is not answered yet (requests go out behind it: connect() waits for it). */
  probing: boolean;
}

/**
 * `probe`: PING the proxy first, the requests going out right behind it: PROBED says it
 * answered. A proxy from before client PINGs refuses the PING (BAD_REQUEST, 'message type 4 is not
 * allowed as a first message') and closes the connection, reading nothing after it, so nothing
 * sent behind it ran: PINGS_REFUSED. One that says nothing within `connectTimeoutMs` is no proxy
 * reached: CONNECT_FAILED, and the next proxy is tried (unanswered).
 */
const clientSocket = fromCallback<EventObject, { proxy: Endpoint; tls?: TlsMaterial | undefined; wire?: 'frames' | 'json' | undefined; maxFrameBytes?: number | undefined; clock: Clock; connectTimeoutMs: number; keepAliveMs: number; probe: boolean }>(({ sendBack, input }) => {
  const send = (e: ClientEvent): void => sendBack(e);
  const socket = dial(input.proxy.host, input.proxy.port, input.tls);
  // The proxy sends nothing unasked: without probes an idle connection whose path died silently looks open, and the next request is lost on it.
  if (input.keepAliveMs > 0) socket.setKeepAlive(true, input.keepAliveMs);
  // On the json wire answers carry no seq: the connection gives each the seq of the oldest unanswered request.
  // Its answers are read while its requests wait to be written, as every dialling side's are: a proxy that stopped
  // reading (a frame over its limit refused, the connection ended) was heard only when its 2 s close reset the
  // socket, after the first PING's deadline or the watch's had taken it for silent.
  // Answers as large as the requests it may send, and never less than the default 1 MiB (maxFrameBytes bounds what it
  // sends): read with the default bound, a 2 MiB answer through a fleet of 4 MiB frames was taken for an invalid message,
  // the connection closed and the request sent again, until its timeout.
  const conn = new Connection(socket, { wire: input.wire, maxFrameBytes: Math.max(input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_FRAME_BYTES), holdReadsWhenCongested: false });
  let connected = false;
  /** The PONG's deadline while the PING sent before any request waits for it. */
  let probing: Timer | undefined;
  whenReady(socket, () => {
    connected = true;
    slow.cancel();
    // The PING first: the requests CONNECTED lets out go behind it, without waiting for its PONG (a round trip).
    if (input.probe) conn.send({ type: MsgType.PING, seq: 0 });
    send({ type: 'CONNECTED', conn, probing: input.probe });
    if (!input.probe) return;
    // Silent that long, the peer is no proxy reached (a wrong port, a proxy stopped or hung): before,
    // the connection was used without PINGs, connect() resolved after 2 s and each request waited
    // out its whole timeout. A revproxy proxy answers the PING as it reads it; an older one refuses
    // it at once (PINGS_REFUSED); the old reverse_proxy.py dies on it holding its lock and says
    // nothing again (oldwire.spec.ts), so it was never usable on this wire anyway.
    probing = setDeadline(input.clock, () => {
      probing = undefined;
      sub.unsubscribe();
      conn.destroy();
      send({ type: 'CONNECT_FAILED', error: unanswered(input.proxy, ms) });
    }, ms);
  });
  // What the proxy said as it closed the connection (an ERROR without a seq): an older proxy refusing
  // what it cannot read says why here, and 'closed the connection' alone would hide it.
  let said: string | undefined;
  /** The proxy answered something on this connection before any closing ERROR (the first PING's PONG, an answer): it reads what we send. */
  let heard = false;
  /**
   * The refusal, when it can be a request's: after the proxy answered something (it read our bytes before the bad ones), or
   * naming a frame over its limit. Nothing heard first, it may be the connection's (a proxy wanting a PROXY header refuses
   * every connection from some addresses, `BAD_REQUEST`, before it reads any): the client fails over as after a lost
   * connection. Taken for a request's, such a proxy failed every request in turn while another proxy could answer them.
   */
  const blamed = (s: string | undefined): string | undefined => (refusesARequest(s, heard) ? badRequest(s) : undefined);
  const sub = conn.messages$.subscribe({
    next: (messages) => {
      let closing = false;
      for (const m of messages) {
        if (m.type === MsgType.ERROR && m.seq === undefined) {
          said = `${m.code}: ${m.message}`;
          closing = true;
        } else if (said === undefined) heard = true;
      }
      const probed = probing !== undefined;
      // The first PING's PONG: the proxy answers PINGs, and says its share.
      const pong = probed ? messages.find((m): m is PongMsg => m.type === MsgType.PONG) : undefined;
      if (pong) {
        probing?.cancel();
        probing = undefined;
        send({ type: 'PROBED', share: pong.share, maxFrame: pong.maxFrame });
      }
      if (probed) {
        // Answers to the requests sent behind the PING may come before its PONG. An ERROR without a seq is in `said`: a
        // refused PING (refusedPing) or the reason the connection closes, as before the PONG nothing else is.
        messages = messages.filter((m) => m.type !== MsgType.PONG && !(m.type === MsgType.ERROR && m.seq === undefined));
      }
      if (messages.length > 0) send({ type: 'ANSWERS', messages });
      // The proxy's reason to close comes before the answers it still owes (a request of ours it refused, behind others
      // it is answering): it reads nothing more on this connection.
      if (closing) send({ type: 'CLOSING' });
    },
    error: (err: NodeJS.ErrnoException) => {
      if (refusedPing()) return;
      if (err instanceof ProtocolError) {
        // Not the proxy closing: the client read something that is no message, and closed the connection itself.
        send({ type: connected ? 'CLOSED' : 'CONNECT_FAILED', error: sentInvalid(input.proxy, err.message, probing !== undefined), invalid: true });
      } else if (!connected) {
        const why = err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${hostPort(input.proxy.host, input.proxy.port)}` : describeDialError(err, input.proxy.host);
        send({ type: 'CONNECT_FAILED', error: why });
      } else if (!said && probing) send({ type: 'CLOSED', error: closedUnanswered(input.proxy, err.message) });
      else if (said) send({ type: 'CLOSED', error: refusedBy(input.proxy, said), refused: blamed(said), unread: unread(said) });
      else if (err.code === 'ETIMEDOUT') send({ type: 'CLOSED', error: `the reverse proxy at ${hostPort(input.proxy.host, input.proxy.port)} stopped acknowledging anything (${err.message}: keepalive probes or resent data went unanswered): the path to it died without a word` });
      else send({ type: 'CLOSED', error: err.message });
    },
    complete: () => {
      if (refusedPing()) return;
      const error = said ? refusedBy(input.proxy, said) : probing ? closedUnanswered(input.proxy) : 'the reverse proxy closed the connection';
      send(connected ? { type: 'CLOSED', error, refused: blamed(said), unread: unread(said) } : { type: 'CONNECT_FAILED', error });
    },
  });
  function refusedPing(): boolean {
    if (!probing || !said?.startsWith(`${ErrorCode.BAD_REQUEST}: `)) return false;
    probing.cancel();
    probing = undefined;
    send({ type: 'PINGS_REFUSED', error: refusedBy(input.proxy, said) });
    return true;
  }
  // A host that drops the packets (down, firewalled) would hold us for the OS's connect timeout,
  // about two minutes on Linux, before the next proxy is tried.
  const { host, port } = input.proxy;
  const ms = input.connectTimeoutMs;
  // A deadline (dialDeadline times through setDeadline): a connection made in time while the process was paused is taken (undici waits a turn too).
  const slow = dialDeadline(socket, host, port, ms, input.clock, (why) => {
    sub.unsubscribe();
    conn.destroy();
    send({ type: 'CONNECT_FAILED', error: why });
  }, 'connectTimeoutMs');
  return () => {
    slow.cancel();
    probing?.cancel();
    sub.unsubscribe();
    conn.destroy();
  };
});

/**
 * How long a proxy that left the registry may be silent with requests waiting on it before its
 * clients leave it. Its key outlived it by most of a lease TTL (a second or more), so a stalled
 * proxy has been silent longer than this by then; a draining one is answering.
 */
const LEFT_SILENT_MS = 1000;

function stalled(log: Logger, late: number): void {
  log.repeated('warn', 'stalled', '', 1, (n, span) => span
    ? `${n} request deadline(s) fell in a stall of the client's event loop ${span} (the process was paused or blocked)`
    : `The client's event loop did not run for ${Math.round(late)} ms (the process was paused or blocked): answers that came meanwhile are read before any request counts as timed out`, { ms: Math.round(late) });
}

/** The proxy in use, as host:port: what `noPings` knows it by, and how lines name it. */
function currentProxy(context: ClientContext): string {
  const { host, port } = context.proxies[context.proxyIndex]!;
  return hostPort(host, port);
}

/**
 * The current proxy does not answer PINGs (`why`): it is dialled without one until a connection to
 * it is lost, and the log says what that costs - once per proxy until it answers a PING (debug
 * when it refuses again on a later connection).
 */
function noPingsFrom(context: ClientContext, why: string, now: string): void {
  const proxy = currentProxy(context);
  const level = context.noPings.mark(proxy) ? 'warn' : 'debug';
  context.logger[level]('no_pings', `${why}: it answers no PING (a proxy older than this client), so a connection to it cut without a word is found only by TCP keepalive (tcpKeepAliveMs) or a request's timeout, not within about ${(PING_AFTER_MS + PONG_WITHIN_MS) / 1000} s; this client ${now}, and sends it no PINGs until that connection is lost (the next one PINGs it again, in case it was upgraded: upgrade the proxy first, as README "Upgrading" says)`, { proxy });
}

/**
 * A proxy is reached (it answered the PING sent first, or was dialled without one): the outage is
 * over, and requests are held from now on when no proxy answers (hold.ts). A move to the next proxy
 * for a NO_SERVER does not start the grace again: it ends NO_SERVER_GRACE_MS after the reconnect.
 */
function reached(context: ClientContext): Partial<ClientContext> {
  const fresh = !context.hop && context.outageSince !== undefined;
  // The "outage" was a move for a NO_SERVER with no dial failed in it: every proxy tried had answered.
  const move = context.hop && !context.dialFailed ? context.move : undefined;
  // A background dial answered: nothing was sent, so no request is at stake in counting it as progress, and the next
  // loss gets its quick round (without, a proxy killed again under the idle client left it offline at once).
  const redialed = context.redialing ? { attempts: 0, redialing: false } : {};
  const ended = context.outageSince === undefined ? {} : { lastOutage: { since: context.outageSince, until: context.clock.now(), move } };
  return { connectedOnce: true, outageSince: undefined, tried: [], recoveredAt: fresh ? context.clock.now() : context.recoveredAt, hop: false, hops: fresh ? 0 : context.hops, ...ended, ...redialed };
}

/**
 * The outage in effect when the timeout of `handle` ran out, as `since` and `until` (now, while it lasts), if there
 * was one: the current one, or - for a request held unsent whose timeout ran out in the last one, its EXPIRE read
 * only after a proxy was reached (a timer 500 ms late runs a turn later, setDeadline, so the sockets are read first) -
 * that one. Such a request, past its time when the connection opened, was not sent there (sendMore): it ended
 * CLIENT_TIMEOUT "no answer within the request's timeout", as if a proxy had left it unanswered, where one whose
 * EXPIRE came a moment earlier said for how long no proxy could be reached (README's soak, 200 idle clients).
 *
 * The last one goes on, too, for a request held through it whose timeout runs out on the connection that ended it, a
 * connection made without a PING first on which the proxy has said nothing yet (`unheardSinceOutage`), within
 * `connectTimeoutMs`: as long as a PINGed proxy has to answer the first PING before its outage ends. Such a connection
 * counts as reached at once, with nothing heard to say the proxy reads what it is sent; a proxy older than client PINGs
 * that refuses the request ends it a moment later (the outage again), and the request's verdict was CLIENT_TIMEOUT "no
 * answer" if its timeout ended in that moment, CONNECT_FAILED naming the refusal if it ended in the outage around it.
 * A request sent after the reconnect, or a proxy that answered something there, or one silent there longer: the proxy's
 * silence (CLIENT_TIMEOUT).
 */
function outageAt(context: ClientContext, handle: RequestHandle): { since: number; until: number } | undefined {
  const now = context.clock.now();
  if (context.outageSince !== undefined) return { since: context.outageSince, until: now };
  const last = context.lastOutage;
  const arrived = context.book.arrivedAt(handle);
  if (context.book.unheardSinceOutage && last && arrived !== undefined && arrived < last.until && now - last.until < connectTimeoutMs(context)) return { since: last.since, until: now };
  return lastOutageAt(context, context.book.dueUnsent(handle));
}

/** How long a dial, and the first PING's answer, may take (ClientOptions.connectTimeoutMs). */
function connectTimeoutMs(context: ClientContext): number {
  return context.opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
}

/** The outage that ended last (`lastOutage`), if the timeout due at `due` ran out in it. */
function lastOutageAt(context: ClientContext, due: number | undefined): ClientContext['lastOutage'] {
  const last = context.lastOutage;
  return last && due !== undefined && due >= last.since && due <= last.until ? last : undefined;
}

/** A proxy's NO_SERVER the client moved to the next proxy for (moveOn): the proxy (host:port), its words and the policy refused. */
interface Move {
  proxy: string;
  said: string;
  policy?: string;
}

/**
 * The NO_SERVER the client was moving to the next proxy for when the timeout of `handle` ran out, if it held `handle`
 * unsent then and no dial had failed in the move: the move under way (still on the proxy it leaves, or between the
 * two), or - its EXPIRE read only once the next proxy was reached, a late timer - the last one. Such a request is held
 * by the client's own choice, every proxy up: it ended CONNECTION_LOST, "no reverse proxy could be reached for 520 ms
 * ... check that the proxy runs" (the soak's fleet mode), where the request refused said NO_SERVER.
 */
function movingFor(context: ClientContext, handle: RequestHandle): Move | undefined {
  const due = context.book.dueUnsent(handle);
  if (due === undefined) return undefined;
  // Of another policy than the one refused, the refusal says nothing about it (left: it ends as before).
  const move = context.hop ? context.move : context.lastOutage?.move;
  // A request refused itself (of any policy, moved with the others) keeps the move's verdict: its own words say it.
  if (move?.policy !== undefined && move.policy !== context.book.policyOf(handle) && context.book.refusedWith(handle) === undefined) return undefined;
  if (context.hop) return context.outageSince === undefined || !context.dialFailed ? move : undefined;
  return lastOutageAt(context, due)?.move;
}

function maxAttempts(context: ClientContext): number {
  return context.opts.maxAttempts ?? 2 * context.proxies.length;
}

/** Whether this client holds requests while no proxy answers (it has been connected, and was not told not to). */
function holding(context: ClientContext): boolean {
  return context.opts.hold !== false && context.connectedOnce;
}

/**
 * The pause before the next round of dials once the quick round is used up: its step the rounds failed since (hold.ts
 * reconnectDelay). A round dials each proxy of the list once (midRound).
 */
function backoffMs(context: ClientContext): number {
  const rounds = Math.floor((context.attempts - maxAttempts(context)) / context.proxies.length);
  return reconnectDelay(rounds, context.opts.failoverDelayMs ?? DEFAULT_FAILOVER_DELAY_MS, context.opts.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS);
}

/**
 * Past the quick round, the dials after a pause are a round: each proxy of the list once, in turn, the next at once,
 * before the next pause - as nats.js dials each server of its pool, waiting only on one it tried within its
 * reconnectTimeWait. With one dial a pause, a list whose first proxy was dead reached the second only every other
 * pause: 20 idle clients of [A, B], both killed and B started again, said `reconnect` a median 0.5-1.6 s after B
 * listened, where a pause is at most 1 s.
 */
function midRound(context: ClientContext): boolean {
  const past = context.attempts - maxAttempts(context);
  return past > 0 && past % context.proxies.length !== 0;
}

/**
 * The pause before an idle client's next background dial, on the client's clock. The system clock's timers are unref'd:
 * the wait keeps no process alive by itself, as no timer of an idle client did before (it went offline after the quick
 * round), so a script that forgets `close()` ends as it did once its proxy is gone. XState's `after` timers keep the
 * process alive: the held requests' backoff waits on one, as a request awaited must.
 */
const redialTimer = fromCallback<EventObject, { clock: Clock; ms: number }>(({ sendBack, input }) => {
  const timer = input.clock.setTimeout(() => sendBack({ type: 'REDIAL' } satisfies ClientEvent), input.ms);
  return () => timer.cancel();
});

/** What the requests in flight may hold under a proxy's `share` for one connection: less a read (64 KiB), or a 16th of a share under 1 MiB. */
function underShare(share: number): number {
  return share - Math.min(64 * 1024, share / 16);
}

/** `maxBytesInFlight`'s default, until the proxy says its share: under a proxy's default share of its buffer budget for one connection (8 MiB). */
export const DEFAULT_MAX_BYTES_IN_FLIGHT = underShare(DEFAULT_BUFFER_BUDGET / PEER_SHARE);

/**
 * What is wrong with the client's numeric options, if anything: each a whole number of at least its
 * least, or `Infinity` (no limit); or with its `logger`. Unchecked, a `window` of 0 sent nothing and every request waited
 * out its timeout; a `maxQueued` of 0 refused every request.
 */
export function badClientOption(opts: Partial<ClientOptions>): string | undefined {
  return badWholeNumbers(opts, [
    ['timeoutMs', 1, ' (Infinity: none)'], ['window', 1, ''], ['maxQueued', 1, ''], ['maxBytesInFlight', 1, ' (Infinity: no limit)'],
    ['maxFrameBytes', 1024, ''], ['maxAttempts', 1, ''], ['failoverDelayMs', 0, ''], ['reconnectMaxDelayMs', 0, ''],
    ['connectTimeoutMs', 1, ''], ['tcpKeepAliveMs', 0, ' (0 = off)'],
  ]) ?? badLogger(opts.logger) ?? (opts.id === undefined ? undefined : badId('id', opts.id))
    ?? badKinds(opts, [['wire', { oneOf: ['frames', 'json'] }], ['hold', 'boolean']]);
}

function windowOf(opts: ClientOptions): number {
  return opts.wire === 'json' ? 1 : opts.window ?? 64;
}

/** Why the client left a draining proxy (it refused requests SHUTTING_DOWN, and holds none of ours). */
function leftDraining(proxy: string, shutting: ClientContext['shutting']): string {
  return `the reverse proxy at ${proxy} is shutting down${shutting ? ` (it said: ${shutting.message})` : ''}`;
}

/** How the last dial or connection failed, when the client is not connected and that was not leaving the draining proxy. */
function lastTry(context: ClientContext, shutting: NonNullable<ClientContext['shutting']>): string | undefined {
  const { lastError } = context;
  return context.outageSince === undefined || lastError === leftDraining(shutting.proxy, shutting) ? undefined : lastError;
}

/**
 * The proxy sent bytes that are no valid message (`detail`: the decoder's words), and the client
 * closed the connection; `unproven`: before it answered the first PING, so it may not be a proxy at all.
 */
function sentInvalid(proxy: Endpoint, detail: string, unproven: boolean): string {
  return `the reverse proxy at ${hostPort(proxy.host, proxy.port)} sent an invalid message (${detail}); the client closed the connection`
    // The decoder named what it is (`the peer is an SSH server ...`, foreign.ts), and what to check.
    + (unproven && !detail.startsWith('the peer ') ? `: ${PLAIN_TO_TLS}` : '');
}

/** A request's own timeout ran out with no answer. */
function noAnswer(timeoutMs: number): string {
  return `no answer within the request's timeout (${timeoutMs} ms)`;
}

/** A draining proxy's refusal, in words. */
function refusedShutting(s: { proxy: string; message: string }): string {
  return `the reverse proxy at ${s.proxy} refused the request ${ErrorCode.SHUTTING_DOWN}: ${s.message}`;
}

/**
 * Whether what the proxy said as it ended the connection says it read nothing still unanswered on it: a stopped
 * proxy's last word, SHUTTING_DOWN without a seq (docs/PROTOCOL.md, "Error codes"; port-closed.ts).
 */
function unread(said: string | undefined): boolean {
  return said?.startsWith(`${ErrorCode.SHUTTING_DOWN}: `) === true;
}

/** What the proxy said as it ended the connection (`CODE: message`), when it refused what the client sent: BAD_REQUEST. */
function badRequest(said: string | undefined): string | undefined {
  return said?.startsWith(`${ErrorCode.BAD_REQUEST}: `) ? said : undefined;
}

/** A proxy that ended the connection with an ERROR (a proxy older than this client refusing a binary payload, say), in words. */
function refusedBy(proxy: Endpoint, said: string): string {
  return `the reverse proxy at ${hostPort(proxy.host, proxy.port)} ended the connection saying ${said}`;
}

/** What to look at when a port accepts the client's connection and closes it without answering. */
const CLOSED_AT_ONCE = closedAtOnce('is the old proxy (--wire json)');

/**
 * A connection closed by the other end before it answered the PING sent first, without a word: not
 * a proxy reached (the client does not count it as connected), and what an operator should look at.
 */
function closedUnanswered(proxy: Endpoint, detail?: string): string {
  const alert = detail === undefined ? undefined : peerAlert(detail);
  if (alert) return `the reverse proxy at ${hostPort(proxy.host, proxy.port)} ended the connection before answering the client's first PING: ${alert}`;
  return `the reverse proxy at ${hostPort(proxy.host, proxy.port)} accepted the connection and closed it${detail ? ` (${detail})` : ''} before answering the client's first PING: ${CLOSED_AT_ONCE}`;
}

/**
 * A peer that accepted the connection and said nothing within `ms` of the PING sent first: what
 * to check. Measured (probe, 2026-12-06): a listener that accepts and never reads or writes (a
 * wrong port, a SIGSTOPped proxy) was taken for a proxy, and each request waited out its timeout.
 */
function unanswered(proxy: Endpoint, ms: number): string {
  const at = hostPort(proxy.host, proxy.port);
  return `the reverse proxy at ${at} accepted the connection but did not answer the client's first PING within ${ms} ms (connectTimeoutMs), as a revproxy proxy does at once:`
    + ` check that a revproxy proxy listens on that port (not another program) and is not stopped or hung (SIGSTOP, a blocked event loop);`
    + ` the old system's reverse_proxy.py reads no frame and answers nobody after one: speak its JSON to it, wire 'json' (\`--wire json\`), and restart it`;
}

/**
 * Why no proxy could be reached: the last failure when one proxy was tried, else each proxy's (its
 * last try), named, in the order they were tried.
 */
export function whyUnreached(context: ClientContext): string | undefined {
  if (context.tried.length < 2) return context.lastError;
  return `no reverse proxy could be reached: ${context.tried.map(({ proxy, why }) => (why.includes(proxy) ? why : `${proxy}: ${why}`)).join('; ')}`;
}

/** Why the client gave up, with a hint when the cause is a common mistake. */
function hint(why: string, gotThrough: boolean): string {
  // closedUnanswered says it already.
  if (gotThrough || why.includes(CLOSED_AT_ONCE)) return '';
  if (/closed the connection|ECONNRESET|socket hang up/.test(why)) return ` (the proxy accepted the connection and closed it without answering: ${CLOSED_AT_ONCE})`;
  return /no reverse proxy is listening/.test(why) ? ' (start one with `revproxy proxy -port N`, or check --revproc)' : '';
}

export const clientMachine = setup({
  types: {
    context: {} as ClientContext,
    events: {} as ClientEvent,
    input: {} as ClientOptions,
  },
  actors: { clientSocket, redialTimer },
  delays: {
    // A move to a proxy that came, or a dial again of one that refused a request, is no loss: at once.
    failoverDelay: ({ context }) => (context.rebalance || context.redial ? 0 : failoverDelay(context.opts.failoverDelayMs ?? DEFAULT_FAILOVER_DELAY_MS)),
    reconnectDelay: ({ context }) => backoffMs(context),
  },
  actions: {
    enqueue: ({ context, event, self }) => {
      assertEvent(event, 'REQUEST');
      const timeout = context.opts.timeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
      // A request whose timer comes late (the process was paused) expires only once what the proxy sent meanwhile is read.
      const expire = (handle: RequestHandle, ms: number): Timer => {
        let lateMs: number | undefined;
        return setDeadline(context.clock, () => self.send({ type: 'EXPIRE', handle, lateMs }), ms, (late) => {
          lateMs = late;
          stalled(context.logger, late);
        });
      };
      for (const { req, handle } of event.requests) {
        if (req.timeoutMs === undefined) req.timeoutMs = timeout;
        context.book.add(req, handle, expire, context.opts.id);
      }
    },
    /**
     * A CANCEL frees a slot, and the next waiting request goes once the code that aborted it has run to its end (a
     * microtask later), not at once: a caller aborting its requests one by one, each with its own AbortController,
     * oldest first in one loop, had each next one sent before its own abort came (500 behind a window of 4: all 500 sent,
     * each for a caller gone). A burst of CANCELs schedules one send.
     */
    sendSoon: ({ context, self }) => {
      if (context.book.sendScheduled) return;
      context.book.sendScheduled = true;
      queueMicrotask(() => {
        context.book.sendScheduled = false;
        self.send({ type: 'SEND_MORE' });
      });
    },
    sendMore: ({ context }) => {
      if (!context.conn) return;
      context.book.sendMore(context.conn, context.opts.id, context.logger, context.proxies[context.proxyIndex]!.port);
      // After every send and read: PING a proxy silent with requests waiting, or give up on one silent since a PING.
      context.liveness?.check();
    },
    setConn: assign(({ context, event, self }) => {
      assertEvent(event, 'CONNECTED');
      const now = context.clock.now();
      context.book.heardAt = now;
      context.book.pingsOwed = 0;
      context.book.closing = false;
      // Made without a PING after an outage on the binary wire (a proxy older than client PINGs): see unheardSinceOutage.
      // Not on the json wire (no PING on any of its connections, and no binary payload for an older proxy to refuse), nor
      // after a move for a NO_SERVER (hop: its requests say the refusal they moved for, movingFor).
      context.book.unheardSinceOutage = !event.probing && context.opts.wire !== 'json' && context.outageSince !== undefined && !context.hop;
      // A new proxy: its share comes with its PONG (probed); until then, the default one's.
      context.book.proxyShare(undefined);
      context.book.forgetMaxFrame();
      const { conn } = event;
      const { logger, book } = context;
      // Without PINGs until the proxy answers one (probed). Its callbacks hold no `context`: this one's holds
      // the last connection and its watch, whose callbacks held the one before, and so on for every connection.
      const liveness = new Liveness(context.clock, book, currentProxy(context), () => {
        book.pingsOwed++;
        conn.send({ type: MsgType.PING, seq: 0 });
      },
        (error) => self.send({ type: 'CLOSED', error, silent: true }), (late) => stalled(logger, late));
      const opened = { conn, probing: event.probing, liveness, leaving: undefined, rebalance: false };
      // A proxy PINGed first is reached once it answers (PROBED): one that closes the connection before is not.
      return event.probing ? opened : { ...opened, ...reached(context) };
    }),
    /** The PING sent first was answered: the proxy is reached, and the connection is watched with PINGs from now on. */
    probed: assign(({ context, event }) => {
      assertEvent(event, 'PROBED');
      const first = context.probing ? reached(context) : {};
      if (event.share !== undefined) context.book.proxyShare(event.share);
      const proxy = currentProxy(context);
      context.book.proxyMaxFrame(event.maxFrame, proxy);
      context.liveness?.pinged();
      if (context.noPings.answered(proxy)) {
        context.logger.info('pings', `The reverse proxy at ${proxy} answers PINGs now (upgraded): a connection to it cut without a word is found within about ${(PING_AFTER_MS + PONG_WITHIN_MS) / 1000} s again`, { proxy });
      }
      return { ...first, probing: false };
    }),
    /** A connection lost, or a dial failed: a proxy dialled without PINGs may have been restarted, upgraded: the next connection PINGs it again. */
    pingAgain: ({ context }) => {
      // Not after a refused request: that proxy was not lost, nor restarted.
      if (!context.redial) context.noPings.lost(currentProxy(context));
    },
    stopLiveness: ({ context }) => context.liveness?.stop(),
    /** The proxy said it will close the connection once it has answered what it read: nothing more goes on it, and it is not PINGed. */
    proxyClosing: ({ context }) => {
      context.book.closing = true;
      context.liveness?.closing();
    },
    /**
     * The proxy is older than client PINGs: it is dialled again at once, without a PING until that
     * connection is lost (NoPings), and what was sent behind the PING goes again on it (that proxy
     * read nothing after the PING: none of it ran).
     */
    noPings: assign(({ context, event }) => {
      assertEvent(event, 'PINGS_REFUSED');
      const resend = context.book.unsend(false, true);
      noPingsFrom(context, event.error, `dials it again at once without one${resend ? `, sending again the ${resend} request(s) sent behind the PING (that proxy read nothing after it)` : ''}`);
      return { conn: undefined, probing: false };
    }),
    receive: ({ context, event }) => {
      assertEvent(event, 'ANSWERS');
      // Held, a request refused SHUTTING_DOWN waits for the proxy to be back (or the next), and one refused
      // NO_SERVER by a proxy just back waits for its servers to register again.
      const held = holding(context);
      const fresh = held && context.recoveredAt !== undefined && context.clock.now() - context.recoveredAt < NO_SERVER_GRACE_MS;
      context.book.strays(event.messages, context.logger, currentProxy(context));
      context.book.answer(event.messages, context.logger, context.proxies.length > 1 || held, fresh);
    },
    scheduleUnpark: enqueueActions(({ context, enqueue }) => {
      if (context.unparking || context.book.parkedCount === 0) return;
      enqueue.assign({ unparking: true });
      enqueue.raise({ type: 'UNPARK' }, { delay: parkDelay(context.hops, context.opts.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS) });
    }),
    unpark: ({ context }) => context.book.unpark(),
    /**
     * Requests a proxy just reconnected to refused NO_SERVER go to the next proxy of the fleet, which
     * may serve their policy now, rather than to the same one again (as Envoy retries on another
     * host): the client leaves this one once what is in flight there is answered.
     */
    moveOn: assign(({ context }) => {
      const moved = context.book.moveParked();
      const ms = Math.round(context.clock.now() - (context.recoveredAt ?? context.clock.now()));
      const proxy = currentProxy(context);
      return { hop: true, hops: context.hops + 1, move: moved.said === undefined ? undefined : { proxy, said: moved.said, policy: moved.policy }, leaving: `the reverse proxy at ${proxy} has no server yet for ${moved.count} request(s) it refused NO_SERVER (the client reconnected to it ${ms} ms before: its servers may still be registering again)` };
    }),
    unparked: assign({ unparking: false }),
    /** The first pause of an outage with requests held says so; the next ones are only debug. */
    noteHold: ({ context }) => {
      const held = context.book.size;
      const first = context.attempts === maxAttempts(context);
      const msg = `${context.lastError ?? 'no reverse proxy reached'}: holding ${held} request(s) until a reverse proxy answers or their own timeouts end them, dialling again with backoff (at most ${context.opts.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS} ms apart)`;
      if (first) context.logger.warn('holding', msg, { reason: context.lastError, count: held });
      else context.logger.debug('holding', msg, { reason: context.lastError, count: held });
    },
    /** The proxy is draining and holds nothing more of ours: leave it for the next, with what it refused. */
    leaveIfDrained: enqueueActions(({ context, enqueue }) => {
      if (!context.book.draining || context.book.inFlight > 0) return;
      enqueue.raise({ type: 'CLOSED', error: context.leaving ?? leftDraining(currentProxy(context), context.shutting) });
    }),
    /**
     * An answer is progress: the dials start again from the quick round. A refusal SHUTTING_DOWN is
     * not (the proxy took nothing): a proxy that refuses every request and still accepts connections
     * was dialled again every failoverDelayMs, the request sent each time, for its whole timeout.
     */
    progress: assign(({ context, event }) => {
      assertEvent(event, 'ANSWERS');
      const refusing = (m: Message): boolean => m.type === MsgType.ERROR && m.code === ErrorCode.SHUTTING_DOWN;
      const answered = event.messages.some((m) => m.type === MsgType.ACK || (m.type === MsgType.ERROR && m.seq !== undefined && !refusing(m)));
      // Only a refusal the client holds the request through (receive: another proxy, or held) is remembered; one the caller got is told already.
      const refusal = context.proxies.length > 1 || holding(context) ? event.messages.find((m) => refusing(m) && m.type === MsgType.ERROR && m.seq !== undefined) : undefined;
      const shutting = refusal?.type === MsgType.ERROR ? { proxy: currentProxy(context), message: refusal.message } : answered ? undefined : context.shutting;
      return answered ? { attempts: 0, shutting } : { shutting };
    }),
    expire: ({ context, event }) => {
      assertEvent(event, 'EXPIRE');
      const ms = context.book.timeoutOf(event.handle);
      if (ms === undefined) return;
      const { book, clock } = context;
      const refused = book.refusedWith(event.handle);
      const since = clock.now() - (context.recoveredAt ?? clock.now());
      const noServer = (): RequestError => new RequestError(ErrorCode.NO_SERVER, stillNoServer(refused!, since, ms));
      const outage = outageAt(context, event.handle);
      const move = movingFor(context, event.handle);
      // A held request says why it was held: a proxy refusing it SHUTTING_DOWN, no proxy for so long, or a proxy just back without its servers.
      // One the client took off a proxy that went silent (the first of them to run out left it) has had no answer, as that first one.
      const error = book.unanswered(event.handle)
        ? new RequestError(LocalCode.CLIENT_TIMEOUT, noAnswer(ms))
        : context.shutting !== undefined && holding(context) && book.wasRefusedShutting(event.handle)
        ? new RequestError(ErrorCode.SHUTTING_DOWN, stillShuttingDown(refusedShutting(context.shutting), ms, lastTry(context, context.shutting)))
        // Held unsent on its way to the next proxy for a NO_SERVER (moveOn): the client left a proxy that answered, by its
        // own choice, and had no failed dial since, so no proxy is down. It said CONNECTION_LOST, "no reverse proxy could
        // be reached for 31 ms ... check that the proxy runs", where the same request a moment later said NO_SERVER; one
        // not refused itself, held while the client moved, says the refusal it moved for.
        : move !== undefined
        ? refused !== undefined ? noServer() : new RequestError(ErrorCode.NO_SERVER, movedForNoServer(move.said, move.proxy, since, ms))
        : outage !== undefined && holding(context) && context.lastInvalid
        ? new RequestError(ErrorCode.BAD_REQUEST, `${context.lastError!} (the client held the request and dialled again with backoff until the request's timeout, ${ms} ms, ran out)`)
        : outage !== undefined && holding(context)
        ? new RequestError(book.answers > 0 ? LocalCode.CONNECTION_LOST : LocalCode.CONNECT_FAILED,
          unreachable(outage.until - outage.since, context.proxies, context.lastError, ms, event.lateMs) + hint(context.lastError ?? '', book.answers > 0))
        : refused !== undefined
          ? noServer()
          : new RequestError(LocalCode.CLIENT_TIMEOUT, noAnswer(ms));
      book.fail(event.handle, error);
    },
    cancel: ({ context, event }) => {
      assertEvent(event, 'CANCEL');
      context.book.fail(event.handle, event.error);
    },
    /** The proxy ended the connection refusing a request of ours BAD_REQUEST: that request fails, and is not sent again. */
    failRefused: assign(({ context, event }) => {
      assertEvent(event, ['CONNECT_FAILED', 'CLOSED']);
      const failed = event.type === 'CLOSED' && event.refused !== undefined ? context.book.failRefused(event.refused, currentProxy(context)) : undefined;
      const leavingAnyway = context.rebalance || context.unlisted || context.leaving !== undefined || context.book.draining;
      return { redial: leavingAnyway ? undefined : failed };
    }),
    /** Requests sent on the lost connection go out again, first, on the next one. */
    unsend: ({ context, event }) => {
      assertEvent(event, ['CONNECT_FAILED', 'CLOSED']);
      context.book.forgetMaxFrame();
      const { redial } = context;
      // The proxy read none of what is unanswered: it refused the oldest (redial), or its last word was SHUTTING_DOWN.
      const resend = context.book.unsend(event.type === 'CLOSED' && event.silent === true, redial !== undefined || (event.type === 'CLOSED' && event.unread === true));
      if (redial) {
        context.logger.warn('refused', `${event.error}: the request it refused (policy ${redial.policy}, a payload of ${redial.size} bytes) failed ${ErrorCode.BAD_REQUEST} and is not sent again; dialling the proxy again at once${resend ? ` and sending the ${resend} other unanswered request(s) again` : ''}`, {
          reason: event.error, policy: redial.policy, size: redial.size, resend,
        });
        return;
      }
      const next = context.rebalance ? 0 : (context.proxyIndex + 1) % context.proxies.length;
      if (context.attempts + 1 < maxAttempts(context)) {
        const target = context.proxies[next]!;
        const how = next === context.proxyIndex ? 'trying again' : `trying the reverse proxy at ${hostPort(target.host, target.port)}`;
        // Requests no proxy serves yet move on and on within the grace: the first move says so, the rest are debug.
        const again = event.type === 'CLOSED' && event.error === context.leaving && context.hops > 1;
        // A move back to a proxy that came is chosen, not a failure.
        const back = event.type === 'CLOSED' && event.error === context.leaving && context.rebalance;
        context.logger[again ? 'debug' : back ? 'info' : 'warn']('failover', `${event.error}; ${how}${resend ? ` and sending ${resend} unanswered request(s) again` : ''}`, {
          reason: event.error, proxy: hostPort(target.host, target.port), resend,
        });
      }
    },
    failover: assign(({ context, event }) => {
      assertEvent(event, ['CONNECT_FAILED', 'CLOSED']);
      context.book.unheardSinceOutage = false;
      // The proxy refused a request and is up (it answered what it read before): the same one again, no failed attempt, no outage.
      if (context.redial) return { conn: undefined, attempts: 0 };
      // Each proxy keeps its place in the order first tried, with its latest failure.
      const proxy = currentProxy(context);
      const known = context.tried.some((t) => t.proxy === proxy);
      const tried = known ? context.tried.map((t) => (t.proxy === proxy ? { proxy, why: event.error } : t)) : [...context.tried, { proxy, why: event.error }];
      // Leaving a proxy that left the registry: it goes from the list (it was first; the next is the list's first).
      const moved = context.unlisted ? listed(context, context.proxies.slice(1), 0) : { proxyIndex: context.rebalance ? 0 : (context.proxyIndex + 1) % context.proxies.length };
      // Closed before it answered the first PING, the proxy was not reached: a failed dial, as a refused one.
      const dialFailed = event.type === 'CONNECT_FAILED' || context.probing;
      return {
        ...moved, conn: undefined, tried, attempts: context.rebalance ? context.attempts : context.attempts + 1, lastError: event.error, lastInvalid: event.invalid === true,
        outageSince: context.outageSince ?? context.clock.now(), dialFailed,
      };
    }),
    giveUp: ({ context }) => {
      // A client that never had an answer never got through: that is failing to connect, whatever TCP said.
      const gotThrough = context.book.answers > 0;
      const why = (gotThrough ? context.lastError : whyUnreached(context)) ?? 'no reverse proxy reached';
      // A proxy that sent an invalid message was reached, and answered wrongly: BAD_REQUEST (the peer sent something that is not a valid message).
      const code = context.lastInvalid ? ErrorCode.BAD_REQUEST : gotThrough ? LocalCode.CONNECTION_LOST : LocalCode.CONNECT_FAILED;
      // Those a draining proxy refused are told what it said (hold: false, every proxy draining).
      const last = context.shutting && lastTry(context, context.shutting);
      const refused = context.shutting && new RequestError(ErrorCode.SHUTTING_DOWN, `${refusedShutting(context.shutting)}${last ? `; the last try: ${last}` : ''}`);
      const failed = context.book.failAll(new RequestError(code, why), refused);
      const said = refused ? refused.message : why;
      if (failed) context.logger.error('connection', `${said}: ${failed} request(s) unanswered${refused || context.lastInvalid ? '' : hint(why, gotThrough)}`, { code: refused ? refused.code : code, count: failed });
    },
    /**
     * The refusal SHUTTING_DOWN is told to the requests it concerned: those held since (a held one's timeout ends
     * SHUTTING_DOWN in the proxy's words) have ended - failed (giveUp, offline), or timed out while the client dialled
     * (reconnecting: it holds nothing). A later request that cannot be sent is told what happens then, not that refusal.
     */
    forgetShutting: assign({ shutting: undefined }),
    /**
     * A proxy came (it was not in the list) and ranks first for this client (rendezvous): the client
     * goes to it, as a proxy that goes moves its share away. Nothing more is sent on this connection;
     * it is left once what is in flight on it is answered, and the next request waits only for the dial.
     * Without this a client stayed where its last failover had put it: after a rolling restart of three
     * proxies, the last one restarted had no client at all.
     */
    rebalance: assign(({ context, event }) => {
      assertEvent(event, 'PROXIES');
      const top = newcomerFirst(context, event.proxies);
      if (!top || context.book.draining) return {};
      context.book.moving = true;
      const back = context.proxies.some((p) => sameEndpoint(p, top));
      return { rebalance: true, leaving: `the reverse proxy at ${hostPort(top.host, top.port)} ${back ? 'started again (its registry entry names a new start of it)' : 'joined the registry'} and comes first for this client: moving to it from ${currentProxy(context)}` };
    }),
    /**
     * A proxy came and ranks first (as `rebalance`) while no connection is open (the client is between
     * dials after a failover, backing off, or idle): the next dial goes to it. Without this a client that
     * had just failed over when a proxy came stayed where the dial took it.
     */
    dialFirst: assign(({ context, event }) => {
      assertEvent(event, 'PROXIES');
      return listed(context, event.proxies, 0);
    }),
    /** The list changes under the connection: it stays where it is (a proxy that left drains its clients), and fails over within the new list. */
    renewTls: assign(({ context, event }) => {
      assertEvent(event, 'RENEW_TLS');
      return { opts: { ...context.opts, tls: event.tls } };
    }),
    setProxies: assign(({ context, event }) => {
      assertEvent(event, 'PROXIES');
      if (event.proxies.length === 0) return {};
      const cur = context.proxies[context.proxyIndex]!;
      const i = event.proxies.findIndex((p) => sameEndpoint(p, cur));
      return i >= 0 ? listed(context, event.proxies, i) : { ...listed(context, [cur, ...event.proxies], 0), unlisted: true };
    }),
    /** A request ran out of time on a proxy that answers no PING and has been silent too long (proxySilent): the connection is given up as lost. */
    leaveSilentProxy: raise(({ context }) => ({ type: 'CLOSED' as const, error: context.liveness!.silentAtExpiry()!, silent: true })),
    /** The proxy left the registry and is silent (proxyLeftSilent): its connection is given up as lost, and what it held goes to the next. */
    leaveProxy: raise(({ context }) => {
      const { host, port } = context.proxies[context.proxyIndex]!;
      const idle = context.book.inFlight === 0;
      return { type: 'CLOSED' as const, error: `the reverse proxy at ${hostPort(host, port)} left the registry${idle ? '' : ` and has not answered for ${context.clock.now() - context.book.heardAt} ms`}`, silent: true };
    }),
    resetAttempts: assign({ attempts: 0, redialing: false }),
    redial: assign({ redialing: true }),
    /** The first pause of an idle client's background dials in an outage says so; the next ones are only debug. */
    noteReconnecting: ({ context }) => {
      const first = context.attempts === maxAttempts(context);
      const msg = `${context.lastError ?? 'no reverse proxy reached'}: no request is held; dialling again in the background with backoff (at most ${context.opts.reconnectMaxDelayMs ?? DEFAULT_RECONNECT_MAX_DELAY_MS} ms apart) until a reverse proxy answers, and at once for a request`;
      context.logger[first ? 'info' : 'debug']('reconnecting', msg, { reason: context.lastError });
    },
    closeAll: ({ context }) => {
      context.book.failAll(new RequestError(LocalCode.CLIENT_CLOSED, 'the client was closed before the answer came'));
    },
  },
  guards: {
    newcomerFirst: ({ context, event }) => {
      assertEvent(event, 'PROXIES');
      return newcomerFirst(context, event.proxies) !== undefined;
    },
    givesUp: ({ context }) => context.attempts >= maxAttempts(context),
    /** A round of the backoff's dials is under way (midRound), held requests waiting or an idle client's dials failing: the next proxy at once. */
    roundGoesOn: ({ context }) => midRound(context) && holding(context) && (context.book.size > 0 || context.dialFailed),
    /** The quick round of dials is used up with requests pending: they are held, not failed. */
    holds: ({ context }) => context.attempts >= maxAttempts(context) && holding(context) && context.book.size > 0,
    nothingHeld: ({ context }) => context.book.size === 0,
    /**
     * The quick round is used up by dials no proxy answered, nothing is held, and the client holds requests when it has
     * some (`hold`, connected once): it dials again in the background (reconnecting), as nats.js and MQTT.js reconnect.
     */
    reconnectsIdle: ({ context }) => context.attempts >= maxAttempts(context) && context.book.size === 0 && holding(context) && context.dialFailed,
    /** Requests refused NO_SERVER in the grace are parked, and the client knows another proxy to send them to. */
    anotherProxy: ({ context }) => context.proxies.length > 1 && context.book.parkedWaiting,
    /** The request that ran out of time was in flight on a proxy the watch finds silent too long (liveness.ts). */
    proxySilent: ({ context, event }) => {
      assertEvent(event, 'EXPIRE');
      return context.book.sent(event.handle) && context.liveness?.silentAtExpiry() !== undefined;
    },
    /**
     * The current proxy left the registry's list, and nothing waits on it or it has been silent a
     * while: it is gone (its lease ended: it died, stalled, or is cut off), not draining. A proxy
     * that drains answers what it holds, then closes the connection itself.
     */
    proxyLeftSilent: ({ context, event }) => {
      assertEvent(event, 'PROXIES');
      const cur = context.proxies[context.proxyIndex]!;
      if (event.proxies.length === 0 || event.proxies.some((p) => sameEndpoint(p, cur))) return false;
      return context.book.inFlight === 0 || context.clock.now() - context.book.heardAt >= LEFT_SILENT_MS;
    },
  },
}).createMachine({
  id: 'client',
  context: ({ input }) => {
    const proxies = input.proxies ?? (input.proxy ? [input.proxy] : [{ ...DEFAULT_PROXY }]);
    const clock = input.clock ?? systemClock;
    return {
      opts: input,
      proxies,
      proxyIndex: 0,
      unlisted: false,
      attempts: 0,
      dialFailed: false,
      redialing: false,
      connectedOnce: false,
      tried: [],
      unparking: false,
      hop: false,
      rebalance: false,
      hops: 0,
      noPings: new NoPings(),
      probing: false,
      logger: input.logger ?? silentLogger,
      clock,
      book: new RequestBook(clock, windowOf(input), input.maxQueued ?? 100_000, input.wire === 'json', input.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES, input.maxBytesInFlight),
    };
  },
  on: {
    REQUEST: { actions: 'enqueue' },
    EXPIRE: { actions: 'expire' },
    CANCEL: { actions: 'cancel' },
    CLOSE: { target: '.closed' },
    // Between connections: a proxy that came and ranks first is the next dialled.
    PROXIES: [{ guard: 'newcomerFirst', actions: 'dialFirst' }, { actions: 'setProxies' }],
    RENEW_TLS: { actions: 'renewTls' },
    // Not open (the connection went meanwhile): unsend took the parked requests back already.
    UNPARK: { actions: 'unparked' },
  },
  initial: 'session',
  states: {
    session: {
      invoke: {
        id: 'socket',
        src: 'clientSocket',
        input: ({ context }) => ({
          proxy: context.proxies[context.proxyIndex]!, tls: context.opts.tls, wire: context.opts.wire, maxFrameBytes: context.opts.maxFrameBytes, clock: context.clock, connectTimeoutMs: connectTimeoutMs(context),
          keepAliveMs: context.opts.tcpKeepAliveMs ?? DEFAULT_TCP_KEEPALIVE_MS,
          probe: context.opts.wire !== 'json' && !context.noPings.skips(currentProxy(context)),
        }),
      },
      on: {
        // Nothing sent on that connection was read: dial the same proxy again at once, not counted as a failed attempt.
        PINGS_REFUSED: { target: 'session', reenter: true, actions: 'noPings' },
        CONNECT_FAILED: { target: 'lost', actions: ['failRefused', 'unsend', 'pingAgain', 'failover'] },
        CLOSED: { target: 'lost', actions: ['failRefused', 'unsend', 'pingAgain', 'failover'] },
      },
      initial: 'connecting',
      states: {
        connecting: {
          on: {
            CONNECTED: { target: 'open', actions: ['setConn', 'sendMore'] },
            // Nothing is sent until the dial connects: a proxy that came and ranks first is dialled instead.
            PROXIES: [{ guard: 'newcomerFirst', target: '#client.session', reenter: true, actions: 'dialFirst' }, { actions: 'setProxies' }],
          },
        },
        open: {
          exit: 'stopLiveness',
          on: {
            PROBED: { actions: ['probed', 'sendMore'] },
            CLOSING: { actions: 'proxyClosing' },
            REQUEST: { actions: ['enqueue', 'sendMore'] },
            ANSWERS: { actions: ['receive', 'progress', 'sendMore', 'leaveIfDrained', 'scheduleUnpark'] },
            UNPARK: [{ guard: 'anotherProxy', actions: ['unparked', 'moveOn', 'leaveIfDrained'] }, { actions: ['unparked', 'unpark', 'sendMore'] }],
            EXPIRE: [{ guard: 'proxySilent', actions: ['expire', 'leaveSilentProxy'] }, { actions: ['expire', 'sendMore', 'leaveIfDrained'] }],
            CANCEL: { actions: ['cancel', 'sendSoon', 'leaveIfDrained'] },
            SEND_MORE: { actions: 'sendMore' },
            PROXIES: [{ guard: 'proxyLeftSilent', actions: ['setProxies', 'leaveProxy'] }, { actions: ['rebalance', 'setProxies', 'leaveIfDrained'] }],
          },
        },
      },
    },
    lost: {
      always: [{ guard: 'roundGoesOn', target: 'session' }, { guard: 'holds', target: 'backoff' }, { guard: 'reconnectsIdle', target: 'reconnecting' }, { guard: 'givesUp', target: 'offline' }],
      after: { failoverDelay: 'session' },
    },
    /** No proxy answered the quick round: the requests wait, and the client dials again after a pause that grows. */
    backoff: {
      entry: 'noteHold',
      always: [{ guard: 'reconnectsIdle', target: 'reconnecting' }, { guard: 'nothingHeld', target: 'offline' }],
      after: { reconnectDelay: 'session' },
    },
    /**
     * No proxy answered the quick round, and nothing is held: the client dials again in the background with the same
     * backoff, each pause up to a fifth early at random (a thousand clients of a proxy restarted do not dial it in one
     * millisecond), on a timer that keeps no process alive by itself (redialTimer). A request dials at once, as offline.
     */
    reconnecting: {
      // Nothing is held: a refusal SHUTTING_DOWN has been told to every request it concerned, as when the client goes offline.
      entry: ['forgetShutting', 'noteReconnecting'],
      invoke: { src: 'redialTimer', input: ({ context }) => ({ clock: context.clock, ms: backoffMs(context) }) },
      on: {
        REDIAL: { target: 'session', actions: 'redial' },
        REQUEST: { target: 'session', actions: ['enqueue', 'resetAttempts'] },
      },
    },
    /** Gave up: everything pending has failed. The next request tries the proxies again. */
    offline: {
      entry: ['giveUp', 'forgetShutting'],
      on: { REQUEST: { target: 'session', actions: ['enqueue', 'resetAttempts'] } },
    },
    closed: { type: 'final', entry: 'closeAll' },
  },
});

export type ClientActor = ActorRefFrom<typeof clientMachine>;
