/**
 * What the proxy and its two kinds of upstream link (upstream.ts for this
 * project's servers, upstream-json.ts for old JSON servers) share: the
 * request as it travels, the commands a link takes, the reports it sends
 * back, and the rules both links apply to a try (its deadline, how an answer
 * settles it). Neither link file imports the other; both import this one.
 */
import { connect as netConnect, type Socket } from 'node:net';
import type { BufferBudget } from '../transport/budget.js';
import type { BusyPoll } from '../transport/busy-poll.js';
import { ErrorCode, HANDLER_FAILED, SERVER_ANSWER_CODES, type ErrorCode as WireCode } from '../transport/errors.js';
import { MsgType, type AckMsg, type DataMsg, type ErrorMsg, type PongMsg } from '../transport/messages.js';
import type { Connection } from '../transport/socket.js';
import { CLOSED_BY_PROXY, describeLookupError, describeUpstreamTlsError, type RefusedBy, type UpstreamTlsMaterial } from '../transport/tls.js';
import { outOfDescriptors } from './port-limits.js';
import type { Clock } from '../transport/clock.js';
import type { Inflight } from './inflight.js';
import type { RecentOutcomes } from './recent-outcomes.js';
import { fmt, type Logger } from './logger.js';

/**
 * A client connection as the proxy keeps it: the connection, and the
 * proxy's own bookkeeping about it (the transport knows nothing of roles).
 */
export interface Peer {
  readonly conn: Connection;
  /** What the connection turned out to be, from its first message. */
  role: 'unknown' | 'client' | 'registration';
  /** Requests this peer sent that are still unanswered (for its in-flight limit). */
  outstanding: number;
  /** Bytes its unanswered requests hold against the buffer budget (for the budget's share per connection). */
  heldBytes: number;
  /** Whether its reads are paused because `outstanding` or `heldBytes` hit its limit. */
  throttled: boolean;
  /**
   * Whether its reads are paused because a policy's full wait queue refused it (`unrouted`): until
   * its next answer, what it sends waits in the kernel rather than be read and refused at once.
   */
  queueHeld: boolean;
  /** The one privacy policy its requests have named so far (until `mixed`). */
  policy?: string;
  /**
   * Whether its requests have named more than one privacy policy (the library's client carries
   * all of an application's policies on one connection): a full queue does not hold its reads,
   * which would hold its requests to the other policies too (`holdRefused`).
   */
  mixed: boolean;
  /** The proxy's own refusals of its requests in the window ending at `refusalsUntil` (refusal-budget.ts). */
  refusals: number;
  refusalsUntil: number;
  /** Whether its reads are paused for the rest of that window: it was refused more than its budget in it. */
  refusalHold: boolean;
  /** PINGs sent on a registration connection without a PONG since. */
  missedPings: number;
  /** Its registration's events waiting in the lifecycle lane (proxy-io.ts `registrationEvent`). */
  inLane: number;
  /**
   * PINGs sent on a registration connection whose PONG has not come (a late one is still owed): a PONG
   * beyond them answers nothing, and is refused as bad input (a server flooding them unasked cost the proxy CPU).
   */
  pongsOwed: number;
  /** On a registration connection: the id of the server it registered. */
  serverId?: string;
  /**
   * Set once the connection is to end after its last answer: a client that
   * sent bad input (`error`, sent before the end on the JSON wire; on the frames wire it went at once) or that ended its side
   * (half-closed: it reads its answers, then gets our end).
   */
  closing?: { error?: ErrorMsg };
}

export function newPeer(conn: Connection): Peer {
  return { conn, role: 'unknown', outstanding: 0, heldBytes: 0, throttled: false, queueHeld: false, policy: undefined, mixed: false, refusals: 0, refusalsUntil: 0, refusalHold: false, missedPings: 0, inLane: 0, pongsOwed: 0 };
}

/** A client request as it travels through the proxy. */
export interface ProxyRequest {
  /** The client that asked, and answers go back to. */
  client: Peer;
  msg: DataMsg;
  /** When the request arrived (clock ms); its deadline runs from here. */
  arrived: number;
  /** Bytes it holds against the proxy's buffer budget until it is answered (`requestBytes`). */
  bytes?: number;
  /** Members already tried for this request, in order. */
  tried?: string[];
  /** How the last try failed (its code and reason; the report's own object, shared by its requests), for the answer when no member is left to try. */
  last?: Failure;
  /**
   * Its try now is one no retry could follow (`makeDeliver`): its retries are spent, or its policy has
   * no member it has not tried. Such a try runs to the request's deadline (`tryDeadline`), not the try
   * timeout: given up there, it was answered `TIMEOUT` with most of its time left, and a policy of one
   * server whose handler took longer than a third of `timeout` answered nothing in time.
   */
  finalTry?: boolean;
  /**
   * Set once it is answered (`makeReply`, the one reply path). A try given up at its try timeout may
   * be kept in flight for its answer (`hedge_on_try_timeout`, `keepTry`) while the request goes on to
   * another member: whichever answers first answers the client, and every later answer, or a kept try's
   * own failure, is dropped (`settle`), never retried or replied again.
   */
  answered?: boolean;
  /** Its tries kept past their try timeout and still in flight (`keepTry`: each link's `kept` table), if any. */
  kept?: number;
  /**
   * Set when a failure would have been its answer (`retry`: no member left to try, its retries or the
   * retry budget spent) while a try of it was kept (`kept`): it waits for that try instead, whose answer,
   * or failure, or the deadline, answers it. Cleared when it is sent on another try (`makeDeliver`).
   */
  keptOnly?: boolean;
  /**
   * Members whose link went down while they held it (its tries that ended `reset`), in order: a
   * request its handler crashes on ends every server it reaches (`maxResets`).
   */
  downWith?: string[];
  /**
   * While it waits in its policy's queue for a member with room: when this stay began (clock ms),
   * from which `queue_timeout` counts. A request not sent yet waits from its arrival (`arrived`), one
   * back from a failed try from its return. Undefined while it is not waiting.
   */
  queued?: number;
  /** Ms it waited in its policy's queue over the stays that ended (`endStay`): HAProxy's `Tw`, the access log's `queue_ms`. Undefined if it never waited. */
  waited?: number;
}

/** When a request's whole time is up: `timeout` from its arrival. Every deadline check reads it here. */
export function deadline(o: { timeoutMs: number }, req: ProxyRequest): number {
  return req.arrived + o.timeoutMs;
}

/** Ends a request's stay in its policy's queue at `now` (it is sent, or answered while waiting), adding the stay to what it waited. */
export function endStay(req: ProxyRequest, now: number): void {
  const since = req.queued;
  if (since === undefined) return;
  req.queued = undefined;
  req.waited = (req.waited ?? 0) + (now - since);
}

/**
 * Sends the one answer a request gets. `at`: when its answer was read (clock ms), if the caller read the clock for
 * it - the observer's latency ends there, as it starts where the request was read (`arrived`); else the clock is read.
 */
export type Reply = (req: ProxyRequest, answer: AckMsg | ErrorMsg, member?: string, at?: number) => void;

/**
 * How a try failed, as `--retry-on` names the failures it retries (`RETRY_CONDITIONS`): the server's
 * link went down or the server left (`reset`), no answer within the try timeout (`try-timeout`), or
 * the server answered `OVERLOADED`, `TIMEOUT`, or another error (`upstream-failed`). `unsent`: the
 * request never reached the server (an old JSON server cannot carry it, or had no free connection
 * in time): always retried, as no try at all.
 */
export const RETRY_CONDITIONS = ['reset', 'try-timeout', 'overloaded', 'timeout', 'upstream-failed'] as const;
export type RetryCondition = (typeof RETRY_CONDITIONS)[number];
export type TryCause = RetryCondition | 'unsent';

/** A coded failure, as reports and events carry it (never a bare string). */
export interface Failure {
  code: WireCode;
  message: string;
  /** How the try failed (`--retry-on`): every retry report says (`TryFailure`); unset on a link that went down (`reset`). */
  cause?: TryCause;
  /**
   * Set when a link ended because its server sent something that is not a
   * valid message (what the check said, e.g. `missing field 'destid'`): a
   * fault of the server's code, not of the network, and logged as one.
   */
  invalid?: string;
  /**
   * Set when the server ended the link with an ERROR without a seq (its buffer budget cutting
   * the connection that held the most: OVERLOADED): its code and message. The server's doing, logged as one.
   */
  closed?: { code: string; reason: string };
  /**
   * Set when an old server's link went down because the server stopped answering (misses in a row),
   * its port still taking connections: stalled (stopped with SIGSTOP, a `print` blocked on a full
   * pipe), not gone. It is probed, not removed: it sends its setup again only when it restarts.
   */
  stalled?: boolean;
  /**
   * Set when the link failed because the proxy refused its server by its own upstream_tls (`refusedByProxy`): it
   * closed the link at a renewal, or refused the server's certificate at the handshake (names, server name or address,
   * CRL). The server is reachable; the proxy will not have it until its certificate or the settings change.
   */
  byProxy?: RefusedBy;
}

/** A failure of tries a link reports to be retried: it always says how they failed. */
export type TryFailure = Failure & { cause: TryCause };

/**
 * Why a link's connection failed, in words (both links' one rule): refused; the proxy closing it itself (a renewal's
 * CRL or names: `closedByProxy`, its reason); the server's name not resolving; its TLS handshake failing (in the words
 * of the proxy's upstream_tls); or this process out of descriptors, which is no fault of the server's.
 */
export function describeLinkError(err: NodeJS.ErrnoException, host: string): string {
  if (err.code === 'ECONNREFUSED') return 'connection refused';
  if (err.code === CLOSED_BY_PROXY) return err.message;
  return describeLookupError(err, host) ?? describeUpstreamTlsError(err) ?? outOfDescriptors(err, 'max_connections') ?? err.message;
}

/** Dials host:port; `tls`, when given, is what to dial over TLS with now (the proxy's upstreamTls, renewed by `renewTls`). */
export type SocketFactory = (host: string, port: number, tls?: UpstreamTlsMaterial) => Socket;
export const tcpConnect: SocketFactory = (host, port) => netConnect({ host, port });

/** What the proxy gives every link it spawns. */
export interface LinkInput {
  member: string;
  policy: string;
  host: string;
  port: number;
  connect: SocketFactory;
  clock: Clock;
  /** Whole-request timeout: no try outlives `arrived + timeoutMs`. */
  timeoutMs: number;
  /** One try's timeout; also bounds connecting and the first PING. */
  tryTimeoutMs: number;
  /**
   * A try given up at the try timeout stays in flight until the request's deadline, its answer still
   * taken if it comes first (`hedge_on_try_timeout`, Envoy's `hedge_on_per_try_timeout`): `keepTry`.
   */
  hedge: boolean;
  maxFrameBytes: number;
  /** Answers' text payloads of this many bytes or more are made into strings only when read (memory-limit.ts `lazyTextFrom` of the memory limit). */
  lazyTextFrom: number;
  busy: Set<Inflight<ProxyRequest>>;
  reply: Reply;
  logger: Logger;
  /** Kicked by every read of answers (the proxy's busy polling, when on). */
  busyPoll?: BusyPoll;
  /** The proxy's buffer budget, which the link's connections count against. */
  budget?: BufferBudget;
  /**
   * Reads so far on the server's registration connection, when it registered directly: whether the
   * server itself answers elsewhere while this link is silent (`LinkTraffic.checkLife`).
   */
  registrationReads?: () => number;
  /**
   * Whether the server's first PONG must not state another id or policy than this member's: for a
   * member found in the registry, whose address may outlive its server (another, of another policy,
   * may listen there since). A direct registration is the server's own word on a live connection, and
   * its address goes with it; a relay or a stand-in registered for a server is the operator's choice.
   */
  checkIdentity?: boolean;
}

/** Where a link is, as its traffic side shows it: written only by the link machine. */
export type LinkPhase = 'connecting' | 'open' | 'retiring' | 'down' | 'retired';

/**
 * The face a link shows the proxy's hot path: requests go in through
 * `sendOne` without an event while `phase` is `open`; `inflight` is its table
 * of unanswered requests (for the in-flight limit).
 */
export interface LinkPort {
  readonly phase: LinkPhase;
  readonly inflight: Inflight<ProxyRequest>;
  /** Its tries kept past their try timeout for their answer (`keepTry`), apart from `inflight`; none on an old JSON server's link. */
  readonly kept?: Inflight<ProxyRequest>;
  /** Reads of answers so far (a sign of life), or -1 when the link has no connection of its own to count. */
  readonly reads: number;
  /** It holds more bytes unwritten than it may (its server reads too slowly): it takes no new request until the server reads them. */
  readonly backlogged: boolean;
  /** How its tries ended lately, for telling an outlier from a policy failing as a whole (ejection). */
  readonly recent: RecentOutcomes;
  /**
   * When it last read an answer to a request sent after one still unanswered (clock ms; -Infinity
   * before any): its server works past a slow request (`stalled`). A server that works one request
   * at a time answers in order, and never does.
   */
  readonly overtakenAt: number;
  /** When it last read an answer to a request (clock ms; -Infinity before any). */
  readonly answeredAt: number;
  /** How many requests its server says it runs at once (a revproxy server's `--concurrency`, in its link PONG); undefined: not said. */
  readonly limit: number | undefined;
  /**
   * For a server that states its `limit`: the time between its answers while it held that many or more (clock ms,
   * smoothed), how long it takes to free a slot when busy; undefined before it was measured (`routing.ts` `serverQueue`).
   */
  readonly pace?: number;
  /** When it last took a request (clock ms; -Infinity before any; Infinity where `stalled` keeps to the oldest request's wait alone). */
  readonly sentAt: number;
  /**
   * An old JSON server's link: whether its server holds one of the link's connections open now, which
   * only a live process does (one that exits closes them all). Undefined on other links.
   */
  readonly serverHolds?: boolean;
  /** `now`: the clock as the batch it is in was routed (one reading for the batch), else read here. */
  sendOne(req: ProxyRequest, now?: number): void;
  /**
   * The pinger's round, for a member with no registration connection (found in the registry):
   * its link is then the only sign of its life. A link that read nothing since the last round is
   * PINGed; past `misses` such rounds in a row it is ended, and the member probed.
   */
  heartbeat?(misses: number): void;
}

/** What the proxy tells a link. */
export type LinkCommand =
  | { type: 'SEND'; requests: ProxyRequest[] }
  | { type: 'EXPIRE'; now: number }
  | { type: 'RETIRE' }
  | { type: 'RESET_FAILURES' }
  /** A reload changed the timeouts (or `hedge_on_try_timeout`): tries started from now on use these. */
  | { type: 'RETUNE'; timeoutMs: number; tryTimeoutMs: number; hedge: boolean };

/** What a link tells the proxy. */
export type LinkReport =
  | { type: 'UPSTREAM_UP'; member: string; linkId: string }
  /**
   * `requests` had been written to the server (counted against `max_resets`, as the server may have
   * gone down on one of them); `unsent` only waited in the link for room, and go on as `unsent`.
   */
  | { type: 'UPSTREAM_DOWN'; member: string; linkId: string; failure: Failure; requests: ProxyRequest[]; unsent: ProxyRequest[] }
  | { type: 'UPSTREAM_RETRY'; member: string; linkId: string; requests: ProxyRequest[]; failure: TryFailure; failures: number }
  /**
   * The server answered `requests` SHUTTING_DOWN, or its PONG said it leaves (no requests): it is draining, ran none
   * of them (docs/PROTOCOL.md), and says so because its registry entry could not (etcd away). `reason`: how it said
   * so, its words quoted (`settle`, `leavingPong`), as the proxy's line gives it.
   */
  | { type: 'UPSTREAM_LEAVING'; member: string; linkId: string; requests: ProxyRequest[]; reason: string };

/** A try ends at the try timeout, and never after the request's own deadline; a final try (`finalTry`) at that deadline. */
export function tryDeadline(link: Pick<LinkInput, 'tryTimeoutMs' | 'timeoutMs'>, req: ProxyRequest, now: number): number {
  return req.finalTry ? deadline(link, req) : Math.min(now + link.tryTimeoutMs, deadline(link, req));
}

/**
 * Whether a try given up at its try timeout is kept in flight for its answer (`hedge`), until the
 * request's deadline: then its new deadline, else undefined. A server slower than the try timeout
 * still answers it (the request went on to another member meanwhile, and the first answer wins):
 * given up, three servers each slower than the try timeout left every request unanswered, TIMEOUT,
 * though each did the work. A final try already runs to the deadline. A try whose request another
 * answered is kept as well: its server still works on it, and its answer is dropped as such (`settle`).
 */
export function keepTry(link: Pick<LinkInput, 'hedge' | 'timeoutMs'>, req: ProxyRequest, now: number): number | undefined {
  if (!link.hedge || req.finalTry) return undefined;
  const end = deadline(link, req);
  return end > now ? end : undefined;
}

/** Whether `req` waits on its kept tries alone (`keptOnly`) and none is left: what ended the last one answers it. */
export function lastKept(req: ProxyRequest): boolean {
  return req.keptOnly === true && !req.kept;
}

/** The words of a try that timed out: after the try timeout, or (a final try) at its request's deadline. */
export function tryTimedOut(member: string, tryTimeoutMs: number, final: boolean, timeoutMs: number): string {
  return final ? `server ${member} did not answer within the request's ${timeoutMs} ms (no other server to try)` : `server ${member} did not answer within ${tryTimeoutMs} ms`;
}

/** Per request, so `debug` only (callers check `enabled('debug')` first): the payload is never logged above it. */
export function logForward(link: Pick<LinkInput, 'member' | 'policy' | 'logger'>, req: ProxyRequest): void {
  link.logger.debug('forward', `Forwarding a data message to server id ${link.member} from client ${req.msg.srcid} payload ${req.msg.payload}`, {
    server: link.member, client: req.msg.srcid, policy: link.policy, payload: req.msg.payload,
  });
}

/** What a batch of answers did: counted for the link, error answers kept to be retried elsewhere. */
export interface Tally {
  answered: number;
  /** Failures in a row, carried over from the link and reset by an ACK; a server shedding load does not add to them. */
  failures: number;
  /** Error answers that count against the server (all but its OVERLOADED and TIMEOUT), and handler failures (`handlerFailed`). */
  faults?: number;
  /** The last answer of the read whose handler failed (`HANDLER_FAILED`): answered to its client, and a fault of the server's. */
  handlerFailed?: ErrorMsg;
  failed?: ProxyRequest[];
  lastFailure?: ErrorMsg;
  /** Requests the server answered SHUTTING_DOWN (draining: not run). */
  unrun?: ProxyRequest[];
  /** Set when the server said it leaves, how (its SHUTTING_DOWN answer's words, or its PONG's: `leavingPong`): the read reports UPSTREAM_LEAVING. */
  leaving?: string;
}

/**
 * One server answer to one request: an ACK, or an application error (the
 * handler's own `HANDLER_ERROR`: an answer, not a fault of the server), goes
 * to the client now; any other ERROR is kept in the tally for a retry.
 * `early`: it came in less than half the time the server was given for it.
 */
export function settle(link: Pick<LinkInput, 'member' | 'logger' | 'reply'>, req: ProxyRequest, m: AckMsg | ErrorMsg, tally: Tally, kept = false, early = false, at?: number): void {
  if (kept) req.kept!--;
  if (req.answered) {
    // Another try of it answered first (one kept past its try timeout, or the retry that went on meanwhile).
    logLateAnswer(link, m, kept);
    return;
  }
  if (m.type === MsgType.ACK || m.code === ErrorCode.HANDLER_ERROR) {
    if (m.type === MsgType.ACK && link.logger.enabled('debug')) {
      link.logger.debug('ack', `Received a data message from server id ${link.member} payload ${m.payload}`, { server: link.member, client: m.destid, payload: m.payload });
    }
    if (m.type === MsgType.ERROR && m.appcode === HANDLER_FAILED) {
      // The handler failed (threw something of no code of its own: a bug, a broken instance), not the application's
      // verdict: the client gets it, as it ran there (not retried), but it counts against the server as a 5xx does
      // in Envoy's outlier detection. Counted as an answer, a server whose handler threw on every request was never
      // ejected, and a third of its policy's requests failed for as long as it ran.
      tally.failures++;
      tally.faults = (tally.faults ?? 0) + 1;
      tally.handlerFailed = m;
    } else {
      tally.failures = 0;
      tally.answered++;
    }
    link.reply(req, m, link.member, at);
  } else if (kept && !lastKept(req)) {
    // A kept try that failed while another try of it goes on: that one answers it.
    return;
  } else if (m.code === ErrorCode.SHUTTING_DOWN) {
    // A draining server ran none of it: no fault of the server's, and safe to send elsewhere.
    (tally.unrun ??= []).push(req);
    tally.leaving ??= `it answered SHUTTING_DOWN (${quoted(m.message)})`;
  } else {
    // A server that answers OVERLOADED (its queue or buffer budget is full) or TIMEOUT (the request waited past its
    // deadline in its queue) is shedding load, busy rather than broken: the request is retried elsewhere, but the
    // answer does not count towards ejecting the server. Counted, an overloaded policy lost its servers one by one,
    // each ejected by its first run of them and its load sent to the others (Google's SRE book, "Addressing Cascading
    // Failures", warns of the same).
    // A TIMEOUT in less than half the time the server was given (`early`) is no deadline that passed: a broken or
    // hostile server answering every request so at once was never ejected, and failed a tenth of its policy's requests
    // once the retry budget was spent.
    if ((m.code !== ErrorCode.OVERLOADED && m.code !== ErrorCode.TIMEOUT) || (early && m.code === ErrorCode.TIMEOUT)) {
      tally.failures++;
      tally.faults = (tally.faults ?? 0) + 1;
    }
    tally.lastFailure = m;
    (tally.failed ??= []).push(req);
  }
}

/**
 * An answer to a request already answered (`ProxyRequest.answered`) is dropped: said at `warn` once,
 * then once per interval with a count, per server. A kept try's (`kept`) came from a server slower than
 * the try timeout; a live try's came from the server that took the request on, after another's kept
 * try answered first: that one was not slow, and is not told to be faster.
 */
function logLateAnswer(link: Pick<LinkInput, 'member' | 'logger'>, m: AckMsg | ErrorMsg, kept: boolean): void {
  const id = link.member;
  const what = `${m.type === MsgType.ACK ? 'ACK' : `ERROR ${m.code}`}, seq ${m.seq}`;
  link.logger.repeated('warn', 'late_answer', id, 1, (n, span) => span
    ? `Dropped ${fmt(n)} more late or repeated answer(s) from server id ${id} ${span}`
    : kept
      ? `Dropped an answer (${what}) from server id ${id} to a request another server answered first: its try timed out here (--try-timeout) and was kept in flight while the request went on to another server (hedge_on_try_timeout), and the first answer of the two was the client's. A server this slow needs less load or a longer --try-timeout`
      : `Dropped an answer (${what}) from server id ${id} to a request another server answered first: the request came here after its try on that server timed out (--try-timeout), and that try, kept in flight (hedge_on_try_timeout), answered before this one did. Nothing is wrong with this server; the other one is slower than the try timeout`,
  { server: id, seq: m.seq });
}

/** Hands requests a link cannot finish back to the proxy, to be retried on another member. */
export function retryReport(member: string, linkId: string, requests: ProxyRequest[], failure: TryFailure, failures: number): LinkReport {
  return { type: 'UPSTREAM_RETRY', member, linkId, requests, failure, failures };
}

/**
 * A retiring link whose server left hands back what it had not finished: the requests written to
 * the server as `reset` (each counts against `max_resets`), the ones still waiting in the link as
 * `unsent` (the server never saw them).
 */
export function leftReports(member: string, linkId: string, written: ProxyRequest[], unsent: ProxyRequest[]): LinkReport[] {
  const reports: LinkReport[] = [];
  const code = ErrorCode.UPSTREAM_FAILED;
  if (written.length) reports.push(retryReport(member, linkId, written, { code, message: `server ${member} left before answering`, cause: 'reset' }, 0));
  if (unsent.length) reports.push(retryReport(member, linkId, unsent, { code, message: `server ${member} left before the request was written to it`, cause: 'unsent' }, 0));
  return reports;
}

/**
 * The retry report for a tally's error answers, if it has any. A code no server may answer a
 * request with (`SERVER_ANSWER_CODES`: a proxy's NO_SERVER or SHUTTING_DOWN, BAD_REQUEST, a
 * registration's REMOVED) would tell the client something untrue of its proxy or its bytes: a
 * server that answers one fails the try UPSTREAM_FAILED, its words kept in the message.
 */
function errorAnswersReport(member: string, linkId: string, tally: Tally): LinkReport | undefined {
  const m = tally.lastFailure;
  if (!tally.failed || !m) return handlerFailedReport(member, linkId, tally);
  const cause = m.code === ErrorCode.OVERLOADED ? 'overloaded' : m.code === ErrorCode.TIMEOUT ? 'timeout' : 'upstream-failed';
  return retryReport(member, linkId, tally.failed, { code: answerCode(m.code), message: `server ${member} answered ${m.code}: ${m.message}`, cause }, tally.failures);
}

/**
 * A read whose only faults were handler failures (`HANDLER_FAILED`, answered to their clients) reports
 * them with no request to retry, for the failure count to be weighed (ejection).
 */
function handlerFailedReport(member: string, linkId: string, tally: Tally): LinkReport | undefined {
  const m = tally.handlerFailed;
  if (!m) return undefined;
  return retryReport(member, linkId, [], { code: ErrorCode.UPSTREAM_FAILED, message: `the handler of server ${member} failed (${HANDLER_FAILED}: ${m.message}); answered to the client, not retried`, cause: 'upstream-failed' }, tally.failures);
}

/**
 * The reports of a read's answers that were not answers to pass on, if any: the error answers, to be
 * retried (`errorAnswersReport`), and the requests a draining server did not run, with its leaving.
 */
export function answersReports(member: string, linkId: string, tally: Tally): LinkReport[] | undefined {
  const failed = errorAnswersReport(member, linkId, tally);
  if (tally.leaving === undefined) return failed && [failed];
  const leaving: LinkReport = { type: 'UPSTREAM_LEAVING', member, linkId, requests: tally.unrun ?? [], reason: tally.leaving };
  return failed ? [failed, leaving] : [leaving];
}

/**
 * A server's PONG on its link saying it leaves (`PongMsg.leaving`: it drains, and its registry entry
 * could not say so): noted in the tally as its SHUTTING_DOWN answers are, so the proxy takes it out
 * of rotation even while no request goes to it (an idle link stayed open until its drain timeout).
 */
export function leavingPong(tally: Tally, m: PongMsg): void {
  if (m.leaving === undefined) return;
  tally.leaving ??= `its link's PONG says it is leaving (${quoted(m.leaving)})`;
}

/** A server's error code as a try's failure: its own when a server may answer a request with it (`SERVER_ANSWER_CODES`), else UPSTREAM_FAILED. */
function answerCode(code: string): WireCode {
  return (SERVER_ANSWER_CODES as readonly string[]).includes(code) ? (code as WireCode) : ErrorCode.UPSTREAM_FAILED;
}

/**
 * The failure of the requests a link held when its server ended it with an ERROR without a seq
 * (docs/PROTOCOL.md: an error about the connection, which is then closed): the server's code, as
 * its answer to each of them would have been (HANDLER_ERROR, a handler's verdict on one request,
 * is UPSTREAM_FAILED here), and its words.
 */
export function closedByServer(member: string, m: ErrorMsg): Failure {
  const code = m.code === ErrorCode.HANDLER_ERROR ? ErrorCode.UPSTREAM_FAILED : answerCode(m.code);
  const reason = quoted(m.message);
  return { code, message: `server ${member} closed the link with ${m.code}: ${reason}`, closed: { code: m.code, reason } };
}

/** At most this much of a server's own words (an ERROR's message, a failure quoting it) goes into an answer or a log line. */
const QUOTE_CHARS = 200;

/** `text`, cut to QUOTE_CHARS with '...' when longer: a server's ERROR message may be as long as a frame. */
export function quoted(text: string): string {
  return text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}...` : text;
}
