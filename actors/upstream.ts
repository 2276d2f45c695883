/**
 * An upstream link: the proxy's persistent connection to one registered
 * server, reused for every request routed to that server. Requests are
 * pipelined; answers come back in any order and are matched by seq.
 *
 * connecting --CONNECTED--> verifying --PONG--> open --DISCONNECTED--> down
 *      |                        |                 |
 *      +--fail / timeout--> down+                 +--RETIRE--> retiring --idle--> retired
 *
 * The link never answers a failed request itself: requests it cannot finish
 * (connection lost, try timed out, the server answered with an error) go
 * back to the proxy, which retries them on another member or answers them.
 */
import { isIP } from 'node:net';
import { TLSSocket } from 'node:tls';
import { assertEvent, assign, enqueueActions, fromCallback, sendParent, setup, type ActorRefFrom } from 'xstate';
import type { BufferBudget } from '../transport/budget.js';
import type { BusyPoll } from '../transport/busy-poll.js';
import { ANSWER_TOO_LARGE, ErrorCode, ProtocolError } from '../transport/errors.js';
import { hostPort } from '../transport/address.js';
import { errorMsg, MsgType, type AckMsg, type ErrorMsg, type Message, type PongMsg } from '../transport/messages.js';
import type { Timer } from '../transport/clock.js';
import type { SkippedFrame } from '../transport/oversized.js';
import { Connection } from '../transport/socket.js';
import { linkClosedUnanswered, LOOKUP_TIMEOUT_MS, refusedByProxy, whenReady, type RefusedBy } from '../transport/tls.js';
import { Inflight, type Pending } from './inflight.js';
import { fmt } from './logger.js';
import { RecentOutcomes } from './recent-outcomes.js';
import {
  closedByServer, deadline as requestDeadline, describeLinkError, answersReports, keepTry, lastKept, leavingPong, leftReports, logForward, quoted, retryReport, settle, tryDeadline, tryTimedOut,
  type Failure, type LinkCommand, type LinkInput, type LinkPhase, type LinkPort, type LinkReport, type ProxyRequest, type SocketFactory, type Tally, type TryFailure,
} from './link.js';

/** The seq of the proxy's PINGs on a link (verifying it, checking its life). */
const PING_SEQ = 0;

export interface UpstreamContext extends LinkInput {
  inflight: Inflight<ProxyRequest>;
  /**
   * Tries given up at their try timeout and kept for their answer until their request's deadline
   * (`hedge`, `keepTry`), apart from `inflight`: the slots and the stall rule count what is in flight
   * there, as before tries were kept. Swept by the proxy's sweeper as `inflight` is (one `busy` set).
   */
  kept: Inflight<ProxyRequest>;
  queue: ProxyRequest[];
  /** The traffic side of the link: how requests go out and answers come in while it is open. */
  traffic: LinkTraffic;
  lastError?: Failure;
}

/**
 * The traffic side of an upstream link. While the link machine is `open`,
 * the proxy's pools hand it requests by calling `send`, and
 * each read of answers is settled by `answer` straight from the socket
 * stream: the link machine gets events only for what changes its state
 * (connected, verified, down, retired, expired tries, error answers to report).
 * An event per batch per member would cost about 3 us each, and a batch
 * spread over 10,000 members would make 10,000 of them.
 */
export class LinkTraffic implements LinkPort {
  /** Set by the link machine's entry actions only. */
  phase: LinkPhase = 'connecting';
  /** The link's connection, from CONNECTED until the link is down or retired. */
  conn?: Connection;
  /** Failures since the last ACK (try timeouts, error answers): for outlier ejection. */
  failures = 0;
  answered = 0;
  readonly recent = new RecentOutcomes();
  /** The server ended the link with an ERROR without a seq: the failure of what the link held (`closedByServer`). */
  said?: Failure;
  /**
   * The server sent what it never sends on a link, or was never asked for: a DATA, SETUP, PING or DEREGISTER, a PONG
   * answering no PING (`unasked`), an answer with a seq never sent (`neverSent`). What is wrong, to tell it; the link is closed.
   */
  wrong?: ProtocolError;
  /**
   * PINGs sent on the link whose PONG has not come (`ping`): a late PONG, after its check gave up, is still owed.
   * A PONG beyond them answers nothing: a server flooding them unasked held the proxy at 100 % CPU.
   */
  private pongsOwed = 0;
  /** The one PONG a draining server sends unasked (`PongMsg.leaving`, docs/PROTOCOL.md) was taken. */
  private toldLeaving = false;
  /** A PING sent on the link after tries timed out, waiting for any sign of life (`checkLife`). */
  private lifeCheck?: Timer;
  overtakenAt = -Infinity;
  answeredAt = -Infinity;
  sentAt = -Infinity;
  /** How many requests its server runs at once, as its first PONG stated (`concurrency`); undefined: not said. */
  limit: number | undefined;
  /**
   * The time between the server's answers while it held `limit` requests or more, each read of answers moving it by an
   * eighth of its difference (clock ms); undefined until measured. What it measures is the server's pace when busy:
   * its slots all taken from one read to the next, the answers of the second came that far apart.
   */
  pace: number | undefined = undefined;
  /** When the last read of answers left the link holding `limit` requests or more (clock ms): the server busy since; undefined when not. */
  private busyFrom: number | undefined = undefined;

  constructor(private readonly link: Pick<UpstreamContext, 'inflight' | 'kept' | 'clock' | 'tryTimeoutMs' | 'timeoutMs' | 'hedge' | 'logger' | 'member' | 'policy' | 'reply' | 'queue' | 'budget' | 'registrationReads' | 'maxFrameBytes'>) {}

  get inflight(): Inflight<ProxyRequest> {
    return this.link.inflight;
  }

  get kept(): Inflight<ProxyRequest> {
    return this.link.kept;
  }

  /** New timeouts (a reload): the tries sent from now on use them. */
  retune(timeoutMs: number, tryTimeoutMs: number, hedge: boolean): void {
    this.link.timeoutMs = timeoutMs;
    this.link.tryTimeoutMs = tryTimeoutMs;
    this.link.hedge = hedge;
  }

  get reads(): number {
    return this.conn?.reads ?? -1;
  }

  /**
   * The most the link may hold unwritten (Node's buffer, past what the kernel took) and still
   * take new requests: one connection's share of the buffer budget, as a client's requests get
   * (`requestsPerPeer`, a 32nd of it; no limit without a budget). Tries that timed out leave
   * their bytes here, counted by no request (theirs were answered elsewhere): without a bound,
   * a server that read its link a little at a time and answered a little - alive to every check -
   * took every burst its clients sent, and the proxy's memory grew for as long as they sent.
   */
  private get maxUnwritten(): number {
    return this.link.budget?.requestsPerPeer ?? Infinity;
  }

  /**
   * Past its share; or, while the links together hold more unwritten than the budget lets them
   * (`BufferBudget.linksFull`: many servers reading slowly, each within its share), holding bytes
   * its server's side will not take now. A link whose server reads takes requests all the while.
   */
  get backlogged(): boolean {
    const conn = this.conn;
    if (conn === undefined) return false;
    return conn.pendingBytes > this.maxUnwritten || (conn.unwritten > 0 && this.link.budget?.linksFull === true);
  }

  /** Write requests to the server now (or queue them until the connection is there). */
  send(requests: ProxyRequest[]): void {
    for (let i = 0; i < requests.length; i++) this.sendOne(requests[i]!);
  }

  /** Write one request now (the pool's hot path: it hands requests over one by one, in turn). */
  sendOne(req: ProxyRequest, at?: number): void {
    const conn = this.conn;
    // No connection yet, or one that has ended (its server's close read, the link told of it a turn or more later, in the
    // lifecycle lane): the request waits in the queue, handed back unsent as the link goes down - never written, so
    // sent again whatever --retry-on says. Written to the closed connection, it was dropped, and failed as a reset.
    if (!conn || conn.closed) {
      this.link.queue.push(req);
      return;
    }
    const link = this.link;
    const now = at ?? link.clock.now();
    const deadline = tryDeadline(link, req, now);
    const upSeq = link.inflight.add(req, deadline, now);
    this.sentAt = now;
    if (link.logger.enabled('debug')) logForward(link, req);
    // The server learns how long its answer is waited for (its handler's signal fires then): time left, no shared
    // clock needed. A try kept past its try timeout (`hedge`, `keepTry`) is waited for until the request's deadline.
    // Written by the encoder, not set on the message: a property added to each request read was an allocation each.
    const timeoutms = Math.max(0, Math.floor((link.hedge ? requestDeadline(link, req) : deadline) - now));
    const before = conn.pendingBytes;
    conn.send(req.msg, upSeq, timeoutms);
    // While the links hold more than their part, each request is written at once, not at the turn's end: a link
    // whose server's side is full shows it (`backlogged`) after one request, not after a turn's worth of them.
    if (link.budget?.linksFull) conn.flush();
    const max = this.maxUnwritten;
    if (before <= max && conn.pendingBytes > max) logBacklog(link, conn.pendingBytes, max);
  }

  /**
   * Tries timed out on this link: PING it, and end it if it reads nothing at all
   * within a try timeout. A link whose packets vanish - a NAT or firewall that
   * forgot an idle flow, a path that broke while the registration's did not -
   * neither closes nor answers: the server stays registered (its registration
   * answers PINGs), and without this each ejection ended on the same dead
   * link, its requests lost a try timeout at a time, for ever. Ended, the link
   * goes down and the member is probed with a new one, as after a reset.
   * A server that is only slow answers the PING at once. One whose registration read nothing either
   * is silent everywhere - its event loop blocked by a handler that computes, or the server gone -
   * not cut off on this path: the link is kept, and looked at again a try timeout later, while the
   * registration's PING misses decide whether the server stays. Ended, a blocked server's link lost
   * every request it held (UPSTREAM_FAILED, with only one server), which it answered once free.
   */
  checkLife(): void {
    const conn = this.conn;
    if (!conn || this.lifeCheck) return;
    const ms = this.link.tryTimeoutMs;
    const elsewhere = this.link.registrationReads;
    this.ping(conn);
    const watch = (reads: number, registered: number | undefined): void => {
      this.lifeCheck = this.link.clock.setTimeout(() => {
        this.lifeCheck = undefined;
        if (this.conn !== conn || conn.reads !== reads) return;
        const now = elsewhere?.();
        if (now !== undefined && now === registered) return watch(reads, now);
        conn.destroy(new Error(now === undefined
          ? `tries timed out and the link read nothing, not even a PONG, within ${ms} ms: the connection is dead (a NAT or firewall dropping it, or a broken path), or the server's event loop is blocked`
          : `tries timed out and the link read nothing, not even a PONG, within ${ms} ms, while the server's registration answered: the connection is dead (a NAT or firewall dropping it, or a broken path)`));
      }, ms);
    };
    watch(conn.reads, elsewhere?.());
  }

  /** `heartbeat`'s: the link's reads at the last round, and the rounds since it read anything. */
  private heardReads = -1;
  private missedRounds = 0;

  heartbeat(misses: number): void {
    const conn = this.conn;
    if (!conn) return;
    if (conn.reads !== this.heardReads) {
      this.heardReads = conn.reads;
      this.missedRounds = 0;
      return;
    }
    if (++this.missedRounds > misses) {
      conn.destroy(new Error(`its link answered none of ${misses} PINGs in a row, and nothing else: the server is stopped, frozen (SIGSTOP, a handler computing without awaiting) or cut off; a server found in the registry has no registration connection to PING, so its link is PINGed while idle`));
      return;
    }
    this.ping(conn);
  }

  /**
   * PING the server on the link's connection: its PONG is owed from now on (`pongsOwed`). Each PING states the largest
   * frame the link reads (`maxFrame`): the first, which verifies the link, comes before any request, so a server of
   * 2026-12-07 or later keeps every answer on the link within it.
   */
  ping(conn = this.conn): void {
    if (!conn) return;
    this.pongsOwed++;
    conn.send({ type: MsgType.PING, seq: PING_SEQ, maxFrame: this.link.maxFrameBytes });
  }

  /**
   * A frame over the link's limit from the server, passed over unread (frame.ts `skipOversized`, none of it held). An
   * answer - an ACK or ERROR whose seq was read - stands as its request's `HANDLER_ERROR` `ANSWER_TOO_LARGE`, as a
   * server that knows the proxy's frame answers it itself: the handler's answer, too large to carry. Not retried
   * (another server's handler would answer as much) and not held against the server, whose link reads on and whose
   * other requests are answered. Before, it failed the link: every request in flight on it was retried, the server out of
   * rotation until a probe (0.9 s of NO_SERVER for a policy of one). Anything else (a seq not read, another type) is
   * refused as before: undefined.
   */
  oversized(frame: SkippedFrame): ErrorMsg | undefined {
    if (frame.seq === undefined || (frame.type !== MsgType.ACK && frame.type !== MsgType.ERROR)) return undefined;
    const { member: id, logger, maxFrameBytes: max } = this.link;
    logger.repeated('warn', 'answer_too_large', id, 1, (n, span) => span
      ? `Passed over ${fmt(n)} more answer(s) from server id ${id} over the proxy's max_frame ${span}, each answered ANSWER_TOO_LARGE`
      : `Server id ${id} answered with a frame of ${frame.bytes} bytes (seq ${frame.seq}), over the ${max} the proxy reads (its max_frame, --max-frame): passed over unread, its request answered HANDLER_ERROR ANSWER_TOO_LARGE, the link kept. A server of 2026-12-07 or later keeps its answers within the proxy's max_frame itself: upgrade it, or give it --max-frame ${max}`,
    { server: id, seq: frame.seq, bytes: frame.bytes, max });
    const message = `server ${id} answered with a frame of ${frame.bytes} bytes, over the ${max} the reverse proxy reads (its max_frame, --max-frame); answers may be ${max - 1024} bytes at most: have the handler answer less, or raise the proxy's max_frame (and the client's maxFrameBytes with it)`;
    return { type: MsgType.ERROR, seq: frame.seq, code: ErrorCode.HANDLER_ERROR, appcode: ANSWER_TOO_LARGE, message };
  }

  /**
   * Whether a PONG read answers a PING of the link's (taking it), or is the one a draining server sends unasked;
   * `first`: the PONGs of the read that verified the link, taken as they come. Else it is a protocol violation.
   */
  pongOwed(m: PongMsg, first = false): boolean {
    if (m.seq === PING_SEQ && this.pongsOwed > 0) {
      this.pongsOwed--;
      return true;
    }
    if (m.leaving !== undefined && !this.toldLeaving) return (this.toldLeaving = true);
    return first;
  }

  /** The link's connection is gone: no check of it is due. */
  release(): void {
    this.lifeCheck?.cancel();
    this.lifeCheck = undefined;
    this.conn = undefined;
  }

  /** Settle one read of answers; returns the reports for the proxy, if any: its error answers, and the server's leaving (`answersReports`). */
  answer(messages: Message[], linkId: string): LinkReport[] | undefined {
    const link = this.link;
    const tally: Tally = { answered: 0, failures: this.failures };
    // When the newest request this read answered went (`overtakenAt`).
    let newest = -Infinity;
    /**
     * The clock when this read's answers were taken, read once at the first: a TIMEOUT's earliness, the replies' time
     * (the access log's latency, which read the clock again per answer) and the link's times of answers all read it.
     */
    let readAt: number | undefined;
    for (let i = 0; i < messages.length; i++) {
      const m = messages[i]!;
      if (m.type !== MsgType.ACK && m.type !== MsgType.ERROR) {
        if (m.type === MsgType.PONG) {
          if (!this.pongOwed(m)) {
            this.wrong = unasked(m);
            break;
          }
          leavingPong(tally, m);
          continue;
        }
        // Dropped unsaid, a server's DATA left the request it was sent unanswered (its try timed out, 1.7 s of a client's wait) and its author none the wiser.
        this.wrong = new ProtocolError(ErrorCode.BAD_REQUEST, `message type ${m.type} is not allowed on an upstream link: a server sends ACK, ERROR and PONG there`);
        break;
      }
      // An ACK always has a seq (the check of messages sees to it): this is an ERROR about the link, which the server closes.
      if (m.seq === undefined) {
        this.said ??= closedByServer(link.member, m as ErrorMsg);
        continue;
      }
      // The request and its times, as the table took it out (no entry object: `takeReq`).
      let from = link.inflight;
      let req = from.takeReq(m.seq);
      let kept = false;
      // Off the hot path: only answers no request in flight waits for come here, a kept try's (`keepTry`) among them.
      if (req === undefined && link.kept.size > 0 && (req = link.kept.takeReq(m.seq)) !== undefined) {
        kept = true;
        from = link.kept;
      }
      if (req === undefined) {
        // An answer to a request never sent here is no server's slip of timing: the link is closed, as for a DATA.
        if (!link.inflight.wasSent(m.seq)) {
          this.wrong = neverSent(m, link.inflight.lastSeq);
          break;
        }
        logLate(link, m);
        continue;
      }
      // A TIMEOUT in less than half the time the server was given (`timeoutms`, as `send` wrote it: to the request's deadline
      // with `hedge`, else to the try's) is none.
      const sentAt = from.takenSentAt;
      const at = (readAt ??= link.clock.now());
      const early = m.type === MsgType.ERROR && m.code === ErrorCode.TIMEOUT && at - sentAt < ((link.hedge ? requestDeadline(link, req) : from.takenDeadline) - sentAt) / 2;
      settle(link, req, m, tally, kept, early, at);
      if (sentAt > newest) newest = sentAt;
    }
    this.answered += tally.answered;
    this.failures = tally.failures;
    const inflight = link.inflight;
    const now = readAt ?? 0;
    if (newest > -Infinity) {
      this.answeredAt = now;
      if (this.limit !== undefined) this.timePace(now, tally.answered, inflight.size);
    }
    if (inflight.size > 0 && newest > inflight.oldestSentAt()!) this.overtakenAt = now;
    if (tally.answered || tally.faults) this.recent.add(now, tally.answered, tally.faults ?? 0);
    return answersReports(link.member, linkId, tally);
  }

  /**
   * `answered` answers read at `now`, `held` requests left in flight: while the server held `limit` or more from the
   * last read to this one, every slot of it was taken all that time, and these answers came `pace` apart.
   */
  private timePace(now: number, answered: number, held: number): void {
    const from = this.busyFrom;
    if (from !== undefined && answered > 0) {
      const sample = (now - from) / answered;
      this.pace = this.pace === undefined ? sample : this.pace + (sample - this.pace) / 8;
    }
    this.busyFrom = held >= this.limit! ? now : undefined;
  }
}

/**
 * Why the server at a registry member's address is not that member, if it says so in its PONG:
 * another id or another policy. Requests sent there would reach a server of another policy (a
 * server killed, and another started on its port before its entry's lease ran out).
 */
function stranger(context: Pick<UpstreamContext, 'member' | 'policy' | 'host' | 'port'>, messages: Message[]): string | undefined {
  const pong = messages.find((m): m is PongMsg => m.type === MsgType.PONG);
  if (!pong || ((pong.id === undefined || pong.id === context.member) && (pong.privPolyId === undefined || pong.privPolyId === context.policy))) return undefined;
  return `${hostPort(context.host, context.port)} answered as server id ${pong.id ?? '(not said)'} of privacy policy ${pong.privPolyId ?? '(not said)'}, not as id ${context.member} of privacy policy ${context.policy}, which the registry's entry names: another server listens there now (the entry outlived its server, or names a wrong address); not sent anything`;
}

/** A link took more unwritten than it may (`LinkTraffic.backlogged`): said at `warn` once, then once per interval with a count. */
function logBacklog(link: Pick<UpstreamContext, 'logger' | 'member' | 'policy'>, unwritten: number, max: number): void {
  const id = link.member;
  link.logger.repeated('warn', 'link_backlog', id, 1, (n, span) => span
    ? `Server id ${id} fell behind reading its upstream link ${fmt(n)} more time(s) ${span}`
    : `Server id ${id} reads its upstream link too slowly: ${unwritten} bytes of requests wait unwritten, more than its share of the buffer budget (${max} bytes, --max-buffered-bytes / 32). It gets no new requests until it reads them (the others of privacy policy ${link.policy} take them, or they wait); a server that stopped reading fails its tries and is taken out of rotation`,
  { server: id, policy: link.policy, unwritten, max });
}

/**
 * An answer on a link to a request sent there and no longer in flight (a late answer after its try timed
 * out, or a second answer) is dropped, and said at `warn` once, then once per interval with a count
 * (`logger.repeated`). One with a seq never sent on the link closes it (`neverSent`).
 */
function logLate(link: Pick<UpstreamContext, 'logger' | 'member' | 'tryTimeoutMs'>, m: AckMsg | ErrorMsg): void {
  const id = link.member;
  const seq = m.seq!;
  const what = m.type === MsgType.ACK ? 'ACK' : `ERROR ${m.code}`;
  link.logger.repeated('warn', 'late_answer', id, 1, (n, span) => span
    ? `Dropped ${fmt(n)} more late or repeated answer(s) from server id ${id} ${span}`
    : `Dropped an answer (${what}, seq ${seq}) from server id ${id} to a request no longer in flight on its link: a late answer after its try timed out (${link.tryTimeoutMs} ms; the request went elsewhere), or a second answer to one request. A server this slow needs less load or a longer --try-timeout`,
  { server: id, seq });
}

/**
 * A PONG on a link that answers no PING sent there (`LinkTraffic.pongOwed`): a protocol violation, the link closed.
 * A server flooding them cost nothing to send and pinned the proxy at 100 % CPU, its policy's clients 10-170 times slower.
 */
function unasked(m: PongMsg): ProtocolError {
  const which = m.seq === PING_SEQ ? 'every PING the proxy sent on the link was answered already' : `the proxy PINGs with seq ${PING_SEQ} only`;
  return new ProtocolError(ErrorCode.BAD_REQUEST, `a PONG (seq ${m.seq}) that answers no PING (${which}): a server sends one PONG per PING, with its seq, and none unasked but the one saying it is leaving`);
}

/** An answer on a link with a seq the proxy never sent there: a protocol violation, the link closed (a server flooding them slowed its policy's clients 20 times). */
function neverSent(m: AckMsg | ErrorMsg, last: number): ProtocolError {
  const what = m.type === MsgType.ACK ? 'an ACK' : `an ERROR ${m.code}`;
  return new ProtocolError(ErrorCode.BAD_REQUEST, `${what} with seq ${m.seq}, which the proxy never sent on the link (its last is ${last}): a server answers each DATA once, with that DATA's seq (the proxy's own on the link, not the client's)`);
}

/**
 * Tries timed out at `now` (`expired`, out of `inflight`): kept for their answer until their request's
 * deadline when they may be (`keepTry`); returns the requests to retry, those not answered already.
 */
function keepTimedOut(context: Pick<UpstreamContext, 'kept' | 'hedge' | 'timeoutMs'>, expired: Array<Pending<ProxyRequest>>, now: number): ProxyRequest[] {
  const reqs: ProxyRequest[] = [];
  for (const p of expired) {
    const req = p.req;
    const end = keepTry(context, req, now);
    if (end !== undefined) {
      p.deadline = end;
      context.kept.put(p);
      req.kept = (req.kept ?? 0) + 1;
    }
    if (!req.answered) reqs.push(req);
  }
  return reqs;
}

/**
 * Kept tries that are over (their request's deadline came, or their link went down): the requests
 * that waited on them alone (`lastKept`), unanswered, for the proxy to answer.
 */
function keptOver(entries: Array<Pending<ProxyRequest>>): ProxyRequest[] {
  const out: ProxyRequest[] = [];
  for (const p of entries) {
    const req = p.req;
    req.kept!--;
    if (!req.answered && lastKept(req)) out.push(req);
  }
  return out;
}

/** The requests a link that went down or left hands back: those in flight on it, and those that waited on a try of theirs it kept (`keptOver`); not those answered meanwhile. */
function liveTries(context: Pick<UpstreamContext, 'inflight' | 'kept'>): ProxyRequest[] {
  const reqs: ProxyRequest[] = [];
  for (const p of context.inflight.takeAll()) if (!p.req.answered) reqs.push(p.req);
  if (context.kept.size > 0) reqs.push(...keptOver(context.kept.takeAll()));
  return reqs;
}

export type UpstreamEvent =
  | LinkCommand
  | { type: 'CONNECTED'; conn: Connection }
  | { type: 'ANSWERS'; messages: Message[] }
  | { type: 'REPORT'; report: LinkReport }
  /** `invalid`: the server sent something that is not a valid message (what the check said); it was told so and the link closed. */
  | { type: 'DISCONNECTED'; error?: string; invalid?: boolean; refused?: RefusedBy | undefined }
  /** The server's name resolved: the connection's own time starts. */
  | { type: 'RESOLVED' }
  | { type: 'TIMED_OUT' };

/**
 * Owns the socket: dials, then turns its reads into ANSWERS batches until the
 * link is open, and settles them through the link's port from then on.
 */
const upstreamSocket = fromCallback<UpstreamEvent, { host: string; port: number; connect: SocketFactory; maxFrameBytes: number; lazyTextFrom: number; link: LinkTraffic; linkId: string; busyPoll?: BusyPoll; budget?: BufferBudget }>(
  ({ sendBack, input }) => {
    const { link, linkId } = input;
    const socket = input.connect(input.host, input.port);
    // Emitted once per address found, or once with the error (which DISCONNECTED reports).
    if (isIP(input.host) === 0) socket.once('lookup', (err: Error | null) => err || sendBack({ type: 'RESOLVED' }));
    // Never hold this link's reads for its writes: the server may be waiting for us to read, too.
    // What it has not written are the requests it forwards, which hold their bytes against the budget
    // already (routing.ts `holdRequest`); the budget cuts clients, never this link (every request on it would fail).
    // An answer over the limit is passed over, its request answered ANSWER_TOO_LARGE (`LinkTraffic.oversized`): the link reads on.
    const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, lazyTextFrom: input.lazyTextFrom, holdReadsWhenCongested: false, budget: input.budget, forwarding: true, skipOversized: (f) => link.oversized(f) });
    let done = false;
    /** Set once the server was told why its link ends (bad input): the connection closes by `endWith`, its last frame not cut off. */
    let told = false;
    /** Set once the server sent anything: a close before it is likelier a dial it refused than a server that went (`linkClosedUnanswered`). */
    let heard = false;
    const down = (error?: string, invalid?: boolean, refused?: RefusedBy): void => {
      if (done) return;
      done = true;
      sendBack({ type: 'DISCONNECTED', error, invalid, refused });
    };
    const refuse = (err: ProtocolError): void => {
      if (done) return;
      told = true;
      conn.endWith(errorMsg(err.code, err.message));
      // Nothing it sends after is read (its close comes within 2 s): a server flooding its link was read and decoded until then.
      conn.pause();
      down(err.message, true);
    };
    whenReady(socket, () => sendBack({ type: 'CONNECTED', conn }));
    const sub = conn.messages$.subscribe({
      next: (messages) => {
        heard = true;
        input.busyPoll?.kick();
        if (link.phase !== 'open') sendBack({ type: 'ANSWERS', messages });
        else {
          const reports = link.answer(messages, linkId);
          if (reports) for (const report of reports) sendBack({ type: 'REPORT', report });
        }
        // The server ended the link (an ERROR without a seq): down now, with its words, not when the close arrives.
        // A retiring link's answers (the ANSWERS event's) are looked at too: one flooding PONGs unasked is closed then as well.
        if (link.said) down(link.said.message);
        else if (link.wrong) refuse(link.wrong);
      },
      error: (err: NodeJS.ErrnoException) => {
        // A server that sent something not a valid message is told what, as a client would be: its
        // author may never see the proxy's log.
        if (err instanceof ProtocolError) return refuse(err);
        down(!heard && err.code === 'ECONNRESET' ? linkClosedUnanswered(socket instanceof TLSSocket) : describeLinkError(err, input.host), false, refusedByProxy(err));
      },
      complete: () => down(heard ? 'connection closed by the server' : linkClosedUnanswered(socket instanceof TLSSocket)),
    });
    return () => {
      done = true;
      sub.unsubscribe();
      if (!told) conn.destroy();
    };
  },
);

/**
 * Sends TIMED_OUT after `ms` on the link's clock, unless stopped first.
 * Instead of an `after` delay: XState keeps every pending delay of a system
 * in one table that each stopping actor scans, which with thousands of
 * links being dialed made every stop cost thousands of steps.
 */
const deadline = fromCallback<UpstreamEvent, { clock: LinkInput['clock']; ms: number }>(({ sendBack, input }) => {
  const t = input.clock.setTimeout(() => sendBack({ type: 'TIMED_OUT' }), input.ms);
  return () => t.cancel();
});

export const upstreamMachine = setup({
  types: {
    context: {} as UpstreamContext,
    events: {} as UpstreamEvent,
    input: {} as LinkInput,
  },
  actors: { upstreamSocket, deadline },
  actions: {
    enqueue: ({ context, event }) => {
      assertEvent(event, 'SEND');
      for (const r of event.requests) context.queue.push(r);
    },
    setConn: ({ context, event }) => {
      assertEvent(event, 'CONNECTED');
      context.traffic.conn = event.conn;
    },
    trafficOpen: ({ context }) => {
      context.traffic.phase = 'open';
    },
    trafficRetiring: ({ context }) => {
      context.traffic.phase = 'retiring';
    },
    trafficDown: ({ context }) => {
      context.traffic.phase = 'down';
      context.traffic.release();
    },
    trafficRetired: ({ context }) => {
      context.traffic.phase = 'retired';
      context.traffic.release();
    },
    report: sendParent(({ event }) => {
      assertEvent(event, 'REPORT');
      return event.report;
    }),
    ping: ({ context }) => context.traffic.ping(),
    noteLimit: ({ context, event }) => {
      assertEvent(event, 'ANSWERS');
      // The verifying PING's PONG, and the unasked one a server draining meanwhile may send: the read's others are let be.
      for (const m of event.messages) if (m.type === MsgType.PONG) context.traffic.pongOwed(m, true);
      context.traffic.limit = event.messages.find((m): m is PongMsg => m.type === MsgType.PONG)?.concurrency;
    },
    // A first PONG saying the server leaves (a member read again from the registry while it drains untold): out again at once.
    noteLeaving: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'ANSWERS');
      const tally: Tally = { answered: 0, failures: context.traffic.failures };
      for (const m of event.messages) if (m.type === MsgType.PONG) leavingPong(tally, m);
      for (const report of answersReports(context.member, self.id, tally) ?? []) enqueue.sendParent(report);
    }),
    notifyUp: sendParent(({ context, self }) => ({ type: 'UPSTREAM_UP' as const, member: context.member, linkId: self.id })),
    flushQueue: ({ context }) => {
      const queued = context.queue.splice(0);
      if (queued.length) context.traffic.send(queued);
    },
    write: ({ context, event }) => {
      assertEvent(event, 'SEND');
      context.traffic.send(event.requests);
    },
    respond: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'ANSWERS');
      const reports = context.traffic.answer(event.messages, self.id);
      if (reports) for (const report of reports) enqueue.sendParent(report);
    }),
    expire: enqueueActions(({ context, event, enqueue, self }) => {
      assertEvent(event, 'EXPIRE');
      const now = event.now;
      // Kept tries whose request's deadline came: those that it waited on alone end it (TIMEOUT, as its last try's).
      const lapsed = context.kept.size > 0 ? keptOver(context.kept.takeExpired(now)) : [];
      if (lapsed.length) {
        const message = `server ${context.member} did not answer within the request's ${context.timeoutMs} ms (its try, kept past the ${context.tryTimeoutMs} ms try timeout, was all it had left)`;
        enqueue.sendParent(retryReport(context.member, self.id, lapsed, { code: ErrorCode.TIMEOUT, message, cause: 'try-timeout' }, context.traffic.failures));
      }
      const reqs = keepTimedOut(context, context.inflight.takeExpired(now), now);
      if (reqs.length === 0) return;
      const failures = (context.traffic.failures += reqs.length);
      context.traffic.recent.add(now, 0, reqs.length);
      context.traffic.checkLife();
      const final = reqs.every((r) => r.finalTry);
      const failure: TryFailure = { code: ErrorCode.TIMEOUT, message: tryTimedOut(context.member, context.tryTimeoutMs, final, context.timeoutMs), cause: 'try-timeout' };
      enqueue.sendParent(retryReport(context.member, self.id, reqs, failure, failures));
    }),
    setError: assign(({ context, event }) => {
      assertEvent(event, 'DISCONNECTED');
      if (context.traffic.said) return { lastError: context.traffic.said };
      if (event.invalid && event.error) {
        return { lastError: { code: ErrorCode.UPSTREAM_FAILED, message: `server ${context.member} sent a message that is not valid (${event.error})`, invalid: event.error } };
      }
      return { lastError: { code: ErrorCode.UPSTREAM_FAILED, message: event.error ?? 'connection lost', ...(event.refused ? { byProxy: event.refused } : {}) } };
    }),
    resetFailures: ({ context }) => {
      context.traffic.failures = 0;
    },
    retune: ({ context, event }) => {
      assertEvent(event, 'RETUNE');
      context.timeoutMs = event.timeoutMs;
      context.tryTimeoutMs = event.tryTimeoutMs;
      context.hedge = event.hedge;
      context.traffic.retune(event.timeoutMs, event.tryTimeoutMs, event.hedge);
    },
    /** Hand every unfinished request back to the proxy, with the reason. */
    notifyDown: sendParent(({ context, self }) => ({
      type: 'UPSTREAM_DOWN' as const,
      member: context.member,
      linkId: self.id,
      failure: context.lastError ?? { code: ErrorCode.UPSTREAM_FAILED, message: 'connection lost' },
      requests: liveTries(context),
      unsent: context.queue.splice(0),
    })),
    /** A retired link's unfinished requests go back to be routed elsewhere; its kept tries are let go (`keptOver`), so none is left in the sweeper's tables. */
    returnQueue: enqueueActions(({ context, enqueue, self }) => {
      for (const r of leftReports(context.member, self.id, liveTries(context), context.queue.splice(0))) enqueue.sendParent(r);
    }),
  },
  guards: {
    // Kept tries too (`keepTry`) whose requests wait for an answer: a link that retired with some left let their requests
    // wait on tries nothing would end, never answered. A retiring link waits for their answers, or their deadlines, as for
    // its requests in flight; those answered by another try meanwhile are dropped as it retires (`returnQueue`).
    idle: ({ context }) => context.inflight.size === 0 && context.queue.length === 0 && !context.kept.some((p) => !p.req.answered),
    byName: ({ context }) => isIP(context.host) === 0,
    hasPong: ({ event }) => {
      assertEvent(event, 'ANSWERS');
      return event.messages.some((m) => m.type === MsgType.PONG);
    },
    /**
     * The port answered as a proxy's client port: a proxy's PONG to a client says its `share`, a
     * server's never does. A registration naming one (the proxy's own port, another proxy's, or a
     * relay to one) would send each request back into a proxy, which forwards it there again: a
     * loop, each pass with a fresh deadline, that a few such registrations turned into most of the
     * proxy's work (every other policy's p99 40 times higher).
     */
    proxyPong: ({ event }) => {
      assertEvent(event, 'ANSWERS');
      return event.messages.some((m) => m.type === MsgType.PONG && m.share !== undefined);
    },
    /** A registry member's server that states another id or policy than the entry's (`checkIdentity`). */
    strangerPong: ({ context, event }) => {
      assertEvent(event, 'ANSWERS');
      return context.checkIdentity === true && stranger(context, event.messages) !== undefined;
    },
  },
}).createMachine({
  id: 'upstream',
  context: ({ input, self }) => {
    const link = { ...input, inflight: new Inflight<ProxyRequest>(input.busy, self), kept: new Inflight<ProxyRequest>(input.busy, self), queue: [] as ProxyRequest[] };
    return { ...link, traffic: new LinkTraffic(link) };
  },
  invoke: {
    id: 'socket',
    src: 'upstreamSocket',
    input: ({ context, self }) => ({ host: context.host, port: context.port, connect: context.connect, maxFrameBytes: context.maxFrameBytes, lazyTextFrom: context.lazyTextFrom, link: context.traffic, linkId: self.id, busyPoll: context.busyPoll, budget: context.budget }),
  },
  on: {
    RESET_FAILURES: { actions: 'resetFailures' },
    RETUNE: { actions: 'retune' },
    REPORT: { actions: 'report' },
  },
  initial: 'dialing',
  states: {
    // A server given by name (a registry entry's address) is timed from when its name resolved: a
    // slow resolver's wait (seconds, with a first nameserver down) is not the server's, and a link
    // given up before its lookup ended would never connect. The lookup has LOOKUP_TIMEOUT_MS.
    dialing: { always: [{ guard: 'byName', target: 'resolving' }, { target: 'connecting' }] },
    resolving: {
      invoke: { id: 'deadline', src: 'deadline', input: ({ context }) => ({ clock: context.clock, ms: LOOKUP_TIMEOUT_MS }) },
      on: {
        TIMED_OUT: { target: 'down', actions: assign({ lastError: ({ context }) => ({ code: ErrorCode.UPSTREAM_FAILED, message: `the name ${context.host} was not resolved within ${LOOKUP_TIMEOUT_MS} ms: its DNS server does not answer` }) }) },
        RESOLVED: 'connecting',
        SEND: { actions: 'enqueue' },
        CONNECTED: { target: 'verifying', actions: ['setConn', 'ping'] },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: { target: 'retired' },
      },
    },
    connecting: {
      invoke: { id: 'deadline', src: 'deadline', input: ({ context }) => ({ clock: context.clock, ms: context.tryTimeoutMs }) },
      on: {
        TIMED_OUT: { target: 'down', actions: assign({ lastError: { code: ErrorCode.UPSTREAM_FAILED, message: 'connect timed out' } }) },
        SEND: { actions: 'enqueue' },
        CONNECTED: { target: 'verifying', actions: ['setConn', 'ping'] },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: { target: 'retired' },
      },
    },
    verifying: {
      invoke: { id: 'deadline', src: 'deadline', input: ({ context }) => ({ clock: context.clock, ms: context.tryTimeoutMs }) },
      on: {
        TIMED_OUT: { target: 'down', actions: assign({ lastError: { code: ErrorCode.UPSTREAM_FAILED, message: 'no answer to PING in time' } }) },
        SEND: { actions: 'enqueue' },
        ANSWERS: [
          {
            guard: 'proxyPong',
            target: 'down',
            actions: assign({ lastError: ({ context }) => ({ code: ErrorCode.UPSTREAM_FAILED, message: `${hostPort(context.host, context.port)} answered as a revproxy proxy's client port (its PONG states a share), not as a server: requests sent there would come back into a proxy. Register the server's own listen port` }) }),
          },
          {
            guard: 'strangerPong',
            target: 'down',
            actions: assign({ lastError: ({ context, event }) => ({ code: ErrorCode.UPSTREAM_FAILED, message: stranger(context, (event as { messages: Message[] }).messages)! }) }),
          },
          { guard: 'hasPong', target: 'open', actions: ['noteLimit', 'notifyUp', 'flushQueue', 'noteLeaving'] },
        ],
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: { target: 'retired' },
      },
    },
    // Only here does traffic bypass events: `retiring` waits for its last answers as events, so its `idle` check sees each one.
    open: {
      entry: 'trafficOpen',
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'down', actions: 'setError' },
        RETIRE: [{ guard: 'idle', target: 'retired' }, { target: 'retiring' }],
      },
    },
    retiring: {
      entry: 'trafficRetiring',
      always: { guard: 'idle', target: 'retired' },
      on: {
        SEND: { actions: 'write' },
        ANSWERS: { actions: 'respond' },
        EXPIRE: { actions: 'expire' },
        DISCONNECTED: { target: 'retired', actions: 'setError' },
      },
    },
    down: { type: 'final', entry: ['trafficDown', 'notifyDown'] },
    retired: { type: 'final', entry: ['trafficRetired', 'returnQueue'] },
  },
});

export type UpstreamRef = ActorRefFrom<typeof upstreamMachine>;
