/**
 * The thin socket layer: a socket becomes an RxJS stream of message batches
 * (one batch per read) and a writer that coalesces and honours `drain`.
 * All protocol knowledge stays in the codecs.
 */
import { Socket as NetSocket, type Socket } from 'node:net';
import { Observable } from 'rxjs';
import type { BudgetHolder, BufferBudget } from './budget.js';
import { setDeadline, systemClock, type Clock, type Timer } from './clock.js';
import { ErrorCode, LocalCode, RevproxyError, type ProtocolError } from './errors.js';
import { FrameBuffer, FrameDecoder, writeFrame, type Decoder, type FrameDecoderOptions } from './frame.js';
import { jsonWire, type JsonEncoder } from './json.js';
import { errorMsg, type Message } from './messages.js';
import { SniffDecoder, type Wire } from './sniff.js';
import { lifecycle } from './lane.js';
import { peerAddress, peerName } from './address.js';

/**
 * How a connection turns messages into bytes, by wire: frames are written by
 * the frame encoder straight into the connection's batch; the old JSON wire
 * has an encoder per connection (it keeps answers in request order).
 */
type WireEncoder = { readonly wire: 'frames' } | { readonly wire: 'json'; readonly encode: JsonEncoder };

const FRAMES: WireEncoder = { wire: 'frames' };

export interface ConnectionOptions {
  maxFrameBytes?: number;
  /** Text payloads of this many bytes or more (frames', and the old JSON wire's requests') are made into strings only when read (`FrameDecoderOptions.lazyTextFrom`; default: never). */
  lazyTextFrom?: number;
  /**
   * `frames` (default); the old `json` wire, on a connection this side dialed to
   * ask (answers are matched to its requests in order); or `sniff`, on an accepted
   * connection: the peer's first byte decides, and requests are answered in order.
   */
  wire?: Wire | 'sniff';
  /** With `sniff`: the id this side answers as (a server's), written as `srcid` in its JSON ERRORs (transport/sniff.ts). */
  answerAs?: string;
  /** Close the connection after this long without any bytes from the peer (ms). 0 or absent: never. Changed later with `setIdleTimeout`. */
  idleTimeoutMs?: number;
  /** Where the connection's timers come from (default: the system clock). */
  clock?: Clock;
  /** The process's budget of bytes held for peers: this connection's partial messages and unread answers count against it. */
  budget?: BufferBudget;
  /**
   * This side dialed the connection to forward requests the budget already holds (`BufferBudget.hold`,
   * until their answers): what it has not written yet counts apart, as a link's (`addUnwritten`), and
   * the budget never cuts it (`shielded`), which would fail every request on it and free nothing. A
   * partial message read from it counts as any connection's.
   */
  forwarding?: boolean;
  /** A frame (or JSON object) begun must be complete within this long (ms), or the connection is closed. 0 or absent: no limit. */
  frameTimeoutMs?: number;
  /**
   * Stop reading from the peer while what we write to it is not drained
   * (default true): a peer that keeps asking and never reads cannot pile up
   * answers in memory. Turn it off where holding reads could deadlock two
   * full buffers (a link whose peer also waits for us to read).
   */
  holdReadsWhenCongested?: boolean;
  /** Where the peer is, when not the socket's other end: the client a trusted balancer's PROXY header named (transport/proxied.ts). */
  from?: { address: string; port: number };
  /**
   * Hand the reader at most this many messages a turn (`READ_SLICE` where many peers share one
   * process's turns: the proxy's port); the rest of a read waits for the next turns, the socket
   * not read meanwhile. Absent: each read whole, which batches best (a server's link from its proxy).
   */
  readSlice?: number;
  /** On the frames wire: a frame over the limit passed over rather than refused, and what stands in its place (`FrameDecoderOptions.skipOversized`). */
  skipOversized?: FrameDecoderOptions['skipOversized'];
}

/** Why a connection was closed by us rather than by the peer. */
export class ConnectionTimeout extends RevproxyError<typeof LocalCode.CONNECTION_TIMEOUT> {
  constructor(message: string) {
    super(LocalCode.CONNECTION_TIMEOUT, message);
    this.name = 'ConnectionTimeout';
  }
}

let nextConnId = 1;

/**
 * The most messages one client connection hands the proxy in one turn of the event loop (its
 * `readSlice`). A read holds up to 64 KiB (libuv reads up to 32 of them from a socket per turn),
 * a thousand small requests or more; the rest of such a read waits for the next turns, a slice a
 * turn, its socket not read meanwhile (`Connection.slice`). Without it every turn did all that a
 * flood had sent: 30 connections each keeping 4,096 requests to a full policy in flight made turns
 * of up to 0.8 s, and a one-at-a-time client of another policy waited 899 ms (p50) for answers
 * that took 2.6 ms.
 */
export const READ_SLICE = 64;

/**
 * A batch (what `send` queued this turn) this big or bigger counts against the budget as it grows,
 * not only once written: a handler answering a read's every request in one turn (big answers to
 * many small requests, from a peer that does not read them) filled a batch of 1 GB against a
 * 64 MiB budget before the budget saw a byte of it.
 */
const BATCH_COUNTED = 64 * 1024;

/**
 * Connections with bytes waiting, written out together once the event loop
 * has run every callback of this turn (setImmediate runs right after the
 * poll phase). Everything sent while handling one turn's reads - from every
 * socket that was readable - leaves in one write per connection.
 */
const dirty: Connection[] = [];
let flushScheduled = false;
/** Write out now what every connection has queued (for callers that know a turn's work is done). */
export function flushAll(): void {
  flushScheduled = false;
  for (let i = 0; i < dirty.length; i++) dirty[i]!.flush();
  dirty.length = 0;
}

let together = false;
/**
 * Run `work`, then write out everything it sent, at once: no end-of-turn
 * flush is scheduled for it (which would cost an extra turn of the event
 * loop, and a poll, per batch when traffic is light).
 */
export function sendTogether(work: () => void): void {
  if (together) return work();
  together = true;
  try {
    work();
  } finally {
    together = false;
    flushAll();
  }
}

/**
 * Who reads a connection's messages (`Connection.listen`): told of each
 * read's batch, then once of how the stream ended (in the lifecycle lane,
 * `transport/lane.ts`: at once, unless a storm of ends waits before it). `messages$` is this as an
 * RxJS stream; a listener with thousands of connections gives one small
 * object per connection instead (no closures, no subscriber chain).
 */
export interface MessageSink {
  /** One read's messages, validated, in order. */
  messages(batch: Message[]): void;
  /** The stream failed: bad input (a `ProtocolError`), a `ConnectionTimeout`, or the socket's error. Nothing follows. */
  failed(err: Error): void;
  /** The peer closed its side (or the socket closed). Nothing follows. */
  ended(): void;
  /** The socket closed (a resource held for the connection can be let go now): at once, before `ended` or `failed` when those wait in the lifecycle lane. */
  closed?(): void;
}

/** The socket's Connection, so that one listener function serves every socket. */
const OWNER = Symbol('revproxy.connection');
type Owned = Socket & { [OWNER]: Connection };

function onSocketData(this: Owned, chunk: Buffer): void {
  this[OWNER].read(chunk);
}
function onSocketEnd(this: Owned): void {
  this[OWNER].peerEnded();
}
function onSocketClose(this: Owned): void {
  this[OWNER].socketClosed();
}
function nextSlice(conn: Connection, messages: Message[]): void {
  conn.nextSlice(messages);
}
function onSocketConnect(this: Owned): void {
  const conn = this[OWNER];
  if (this.remoteAddress !== undefined) conn.remoteAddress = peerAddress(this);
  conn.remotePort = this.remotePort ?? conn.remotePort;
}
function onSocketError(this: Owned, err: Error): void {
  this[OWNER].finish(err);
}

/**
 * One TCP (or TLS) connection speaking one wire. Its reader (`listen`, or
 * `messages$` as an RxJS stream) gets a batch of validated messages for
 * every read; the stream fails with a `ProtocolError` on bad input
 * and ends when the peer closes. `send` coalesces everything sent
 * in one turn of the event loop into one write (one buffer, one syscall) and
 * tracks the socket's buffer, so callers can stop reading from elsewhere
 * while `congested`.
 */
export class Connection implements BudgetHolder {
  readonly id = nextConnId++;
  readonly socket: Socket;
  decoder: Decoder;
  /** The wire this connection speaks and its encoder; with `sniff`, frames until the first byte says otherwise. */
  private encoder: WireEncoder;
  /** Sniffing: the first read decides the wire. */
  private sniffing: boolean;
  /**
   * The peer's address and port: known once connected (a socket this side dials learns them at its connect), kept after the close.
   * The one place they are held: the logs, the access log, the inspector and the per-address limits all read them here.
   */
  remoteAddress: string;
  remotePort: number;
  /** Set once the connection is closing or closed: nothing more is sent on it. */
  closed = false;
  /**
   * Answer the peer's end with a reset (`resetAfterPeerEnd`) as it is read, before the sink hears of
   * it: set by an owner that dialed the connection to an old server. Done when the sink heard, in
   * the lifecycle lane, the reset came after Node's own FIN once the lane was busy, and the server's
   * port held TIME_WAIT again.
   */
  resetOnPeerEnd = false;
  /** The backpressure rule (see the option); the owner may change it once it knows what the connection is for. */
  holdReadsWhenCongested: boolean;
  /** Reads so far: a cheap sign of life (a link that answers needs no PING to prove its server alive). */
  reads = 0;
  /** Bytes waiting for the end of this turn: everything sent in it, encoded back to back. */
  private batch = new FrameBuffer();
  /**
   * Whether a batch the socket wrote at once may be written over: on a plain
   * TCP socket, nothing holds a buffer whose write completed before `write`
   * returned (TLS and other streams may keep or queue it: never there).
   */
  private readonly reclaims: boolean;
  /** Messages sent since the last flush. */
  private queued = 0;
  /** The budget was last told of a batch (`BATCH_COUNTED`): it is told again once the batch is written. */
  private batchCounted = false;
  /** The budget is told again at the socket's drain (`tellBudgetAtDrain`: a listener is waiting for it). */
  private budgetAtDrain = false;
  private pauses = 0;
  private readonly clock: Clock;
  private readonly budget?: BufferBudget;
  /** Cut by the budget (`shed`): what the peer still sends is dropped. */
  private cut = false;
  /** Whether the buffer budget cut this connection (`shed`): its peer was told OVERLOADED, and owed answers go nowhere. */
  get shedByBudget(): boolean {
    return this.cut;
  }
  /** Never cut by the budget (the `forwarding` option). */
  readonly shielded: boolean;
  /** On a link (`forwarding`): the unwritten bytes the budget was last told of (`countUnwritten`). */
  private unwrittenCounted = 0;
  /** When the peer last sent bytes of a message (clock ms): whitespace between JSON objects does not count. */
  private lastRead: number;
  private idleMs = 0;
  private idleTimer?: Timer;
  /**
   * Who owes this peer answers (the proxy's record of a client): a peer
   * waiting for one is not idle, however long its answer takes (HAProxy's
   * `timeout client` likewise does not run while the server works).
   */
  owed?: { readonly outstanding: number };
  /** A message begun must be complete within this long (ms; 0: no limit), timed by `frameTimer`. */
  private readonly frameTimeoutMs: number;
  private frameTimer?: Timer;
  /** Who reads the messages (`listen`); `listening` until the stream has ended. */
  private sink?: MessageSink;
  private listening = false;
  /** A read's messages past the slices handed over so far (`readSlice` a turn), from `unreadAt`; the read's error comes after them. */
  private unread?: Message[];
  private readonly readSlice: number;
  private unreadAt = 0;
  private unreadError?: ProtocolError;
  /** A next slice found the reads paused by another (`pause`) and waits for their `resume`. */
  private sliceHeld = false;
  /** Pauses that stop a read's slices too (`pause`), apart from those of the socket alone (`holdSocket`). */
  private sliceStops = 0;

  constructor(socket: Socket, opts: ConnectionOptions = {}) {
    this.socket = socket;
    this.encoder = FRAMES;
    this.sniffing = opts.wire === 'sniff';
    if (opts.wire === 'json') {
      const json = jsonWire(opts.maxFrameBytes, 'asks');
      this.decoder = json.decoder;
      this.encoder = { wire: 'json', encode: json.encoder };
    } else if (opts.wire === 'sniff') this.decoder = new SniffDecoder({ maxFrameBytes: opts.maxFrameBytes, lazyTextFrom: opts.lazyTextFrom, answerAs: opts.answerAs });
    else this.decoder = new FrameDecoder({ maxFrameBytes: opts.maxFrameBytes, lazyTextFrom: opts.lazyTextFrom, skipOversized: opts.skipOversized });
    this.holdReadsWhenCongested = opts.holdReadsWhenCongested ?? true;
    this.readSlice = opts.readSlice ?? Infinity;
    this.reclaims = socket instanceof NetSocket && (socket as { encrypted?: boolean }).encrypted !== true;
    this.remoteAddress = peerAddress(socket, opts.from?.address);
    this.remotePort = opts.from?.port ?? socket.remotePort ?? 0;
    if (socket.remoteAddress === undefined && socket.connecting) socket.once('connect', onSocketConnect);
    socket.setNoDelay(true);
    this.frameTimeoutMs = opts.frameTimeoutMs ?? 0;
    this.clock = opts.clock ?? systemClock;
    this.budget = opts.budget;
    this.shielded = opts.forwarding ?? false;
    this.lastRead = this.clock.now();
    // One function per event for every socket (they find this connection through OWNER): a
    // proxy holding 10,000 connections keeps no closures per connection for them.
    (socket as Owned)[OWNER] = this;
    socket.on('end', onSocketEnd);
    socket.on('close', onSocketClose);
    // A socket error ends the stream (when someone listens) and is followed by 'close'; it never throws.
    socket.on('error', onSocketError);
    this.setIdleTimeout(opts.idleTimeoutMs ?? 0);
  }

  /**
   * Read the connection: `sink` gets each read's messages, then how the
   * stream ended. One sink at a time; `stopListening` detaches it.
   */
  listen(sink: MessageSink): void {
    if (this.listening) throw new Error('Connection.listen: this connection already has a listener');
    this.sink = sink;
    this.listening = true;
    this.socket.on('data', onSocketData);
  }

  /** Stop reading (the stream's reader went away): nothing more is told to it. */
  stopListening(): void {
    this.frameTimer?.cancel();
    this.frameTimer = undefined;
    if (this.unread) {
      this.unread = this.unreadError = undefined;
      this.sliceHeld = false;
      this.releaseSocket();
    }
    if (!this.listening) return;
    this.listening = false;
    this.sink = undefined;
    this.socket.off('data', onSocketData);
  }

  /**
   * The messages as an RxJS stream: a batch of validated messages for every
   * read; it errors with a `ProtocolError` on bad input (or a
   * `ConnectionTimeout`) and completes when the peer closes.
   */
  get messages$(): Observable<Message[]> {
    return new Observable<Message[]>((sub) => {
      this.listen({ messages: (batch) => sub.next(batch), failed: (err) => sub.error(err), ended: () => sub.complete() });
      return () => this.stopListening();
    });
  }

  /** @internal One read from the socket. */
  read(chunk: Buffer): void {
    if (this.cut) return;
    this.reads++;
    const decoder = this.decoder;
    const { messages, error } = decoder.push(chunk);
    // A read that began or ended no message (whitespace between JSON objects) is not activity: a
    // space every 20 s kept a JSON connection past --idle-timeout for ever.
    if (messages.length > 0 || decoder.buffered > 0 || error) this.lastRead = this.clock.now();
    if (this.sniffing) {
      const sniff = decoder as SniffDecoder;
      if (sniff.wire) {
        this.sniffing = false;
        if (sniff.wire === 'json' && sniff.jsonEncoder) this.encoder = { wire: 'json', encode: sniff.jsonEncoder };
      }
    }
    if (this.budget) this.account();
    if (this.unread) {
      // Slices wait, which hold the socket's reads: this is a caller's own `read`, and goes after them.
      for (const m of messages) this.unread.push(m);
      this.unreadError ??= error;
      return;
    }
    if (messages.length > this.readSlice && this.sink) return this.slice(messages, error);
    if (messages.length > 0) this.sink?.messages(messages);
    if (error) return this.finish(error);
    // Slow senders: a message begun must arrive whole in time.
    if (this.frameTimeoutMs && this.listening) {
      const buffered = this.decoder.buffered;
      if (buffered === 0 || messages.length > 0) {
        this.frameTimer?.cancel();
        this.frameTimer = undefined;
      }
      this.armFrameTimer();
    }
  }

  /**
   * A read of more messages than `readSlice`: the first slice now, the rest a slice a turn, the
   * socket not read until the last (the peer's bytes wait in the kernel, where TCP holds it back).
   * Each next slice is scheduled after the reader took this one, so that what the reader gathers
   * for the end of this turn (the proxy's FORWARD of every connection's reads) goes before it.
   */
  private slice(messages: Message[], error?: ProtocolError): void {
    this.unread = messages;
    this.unreadAt = this.readSlice;
    this.unreadError = error;
    this.holdSocket();
    this.sink!.messages(messages.slice(0, this.readSlice));
    if (this.unread === messages) setImmediate(nextSlice, this, messages);
  }

  /**
   * @internal The next slice of `messages`, if they are still the ones waiting, and unless the reads
   * are paused (`pause`: a client past --max-client-inflight, a peer that does not read its answers):
   * the rest then waits for their `resume`. Handed over regardless, a client past its limit of 2 had
   * a whole read of 300 requests sent to its server. A hold of the socket alone (`holdSocket`: the
   * proxy's hold of a connection a full queue refused) lets them go on, so what was read is answered
   * at once.
   */
  nextSlice(messages: Message[]): void {
    if (this.unread !== messages) return;
    if (this.sliceStops > 0) {
      this.sliceHeld = true;
      return;
    }
    const from = this.unreadAt;
    const to = from + this.readSlice;
    if (to < messages.length) {
      this.unreadAt = to;
      this.sink?.messages(messages.slice(from, to));
      if (this.unread === messages) setImmediate(nextSlice, this, messages);
      return;
    }
    const error = this.unreadError;
    this.unread = this.unreadError = undefined;
    this.sliceHeld = false;
    this.sink?.messages(messages.slice(from));
    if (error) return this.finish(error);
    this.releaseSocket();
  }

  /** What a read left for later turns, handed over now (the stream is ending); returns the error that read ended in. */
  private takeUnread(): ProtocolError | undefined {
    const messages = this.unread;
    if (!messages) return undefined;
    const { unreadAt: from, unreadError: error } = this;
    this.unread = this.unreadError = undefined;
    this.sliceHeld = false;
    this.releaseSocket();
    this.sink?.messages(messages.slice(from));
    return error;
  }

  /**
   * Time the message begun, unless we hold the reads ourselves (`pause`; the sink may have paused
   * them while taking this read's messages): its rest then waits in our own receive queue, not on
   * the peer, and the timer starts afresh when the reads resume. A connection whose requests held
   * their share of the budget, or whose answers went unread, was cut 10 s into the pause as "a
   * message begun 10000 ms ago is still incomplete" - the proxy's link, and a client pipelining
   * big requests, with every request on it.
   */
  private armFrameTimer(): void {
    if (this.frameTimer || !this.frameTimeoutMs || !this.listening || this.pauses > 0 || this.decoder.buffered === 0) return;
    this.frameTimer = setDeadline(this.clock, () => this.frameExpired(), this.frameTimeoutMs);
  }

  private frameExpired(): void {
    this.frameTimer = undefined;
    this.finish(new ConnectionTimeout(`a message begun ${this.frameTimeoutMs} ms ago is still incomplete (${this.decoder.buffered} bytes so far)`));
    this.socket.destroy();
  }

  /** @internal The stream is over: with `err` it failed, without it the peer closed. The sink is told once, in the lifecycle lane (lane.ts). */
  finish(err?: Error): void {
    if (!this.listening || !this.sink) return;
    // What a read left for later turns came before this end, and the bad bytes after them before it too.
    err = this.takeUnread() ?? err;
    const sink = this.sink;
    if (!this.listening || !sink) return;
    this.stopListening();
    this.sink = sink; // kept for `closed`
    // Read no more now; the owner hears of it in the lifecycle lane's turn (a storm of ends is spread over turns).
    const failure = err;
    lifecycle.run(failure ? () => sink.failed(failure) : () => sink.ended());
  }

  /**
   * @internal The peer's end: the stream ends. Our side ends with it - unless
   * the socket allows half-open connections (`listenServer`'s
   * `allowHalfOpen`), where the owner may still answer, then ends it (`endWith`).
   */
  peerEnded(): void {
    if (!this.socket.allowHalfOpen) this.closed = true;
    // In the turn the peer's end is read: Node sends our FIN in the next, and the sink may hear of the end turns later.
    if (this.resetOnPeerEnd && this.listening) this.resetAfterPeerEnd();
    this.finish();
  }

  /** @internal The socket closed: release what it held. */
  socketClosed(): void {
    this.closed = true;
    if (this.encoder.wire === 'json') this.encoder.encode.drop?.();
    this.budget?.set(this, 0);
    if (this.unwrittenCounted) {
      this.budget!.addUnwritten(-this.unwrittenCounted);
      this.unwrittenCounted = 0;
    }
    this.idleTimer?.cancel();
    this.finish();
    const sink = this.sink;
    this.sink = undefined;
    // At once, so the owner's counts follow the kernel's (a connection limit released a storm's worth of turns late refused
    // clients that came back): before its `ended` or `failed` when those wait in the lane.
    sink?.closed?.();
  }

  /** The wire this connection speaks; with `sniff`, `frames` until the first byte says otherwise. */
  get wire(): Wire {
    return this.encoder.wire;
  }

  /**
   * Close the connection after `ms` without bytes from the peer (0: never).
   * One timer, re-armed only when it fires: a read costs a clock read, not a
   * timer.
   */
  setIdleTimeout(ms: number): void {
    this.idleMs = ms;
    this.idleTimer?.cancel();
    this.idleTimer = undefined;
    if (ms > 0 && !this.socket.destroyed) this.armIdle(ms);
  }

  /**
   * Both timers of a connection (idle, a frame begun) are deadlines (`setDeadline`): after this
   * process was paused (SIGSTOP, a frozen VM, a reload that blocked it), a timer that comes late runs
   * one turn later, once what the peer sent meanwhile is read. Plain timers ran before the reads:
   * a client that kept sending through a 74 s stall was closed "no message for 60000 ms" with its
   * messages waiting unread, and one mid-frame "a message begun 10000 ms ago is still incomplete".
   */
  private armIdle(wait: number): void {
    this.idleTimer = setDeadline(this.clock, () => {
      const quiet = this.clock.now() - this.lastRead;
      if (quiet < this.idleMs) return this.armIdle(this.idleMs - quiet);
      if ((this.owed?.outstanding ?? 0) > 0) return this.armIdle(this.idleMs);
      this.idleTimer = undefined;
      this.finish(new ConnectionTimeout(`no message for ${this.idleMs} ms`));
      this.socket.destroy();
    }, wait);
  }

  /**
   * Queue one message; everything sent in one turn of the event loop leaves
   * in one write. With `seq`, the message goes out with that seq instead of
   * its own (no copy of the message is made), and a DATA with `timeoutms`
   * (frames only: the old JSON wire has no such field) with that field, the
   * message untouched: set on it, the field was a property added to each
   * request forwarded, an allocation each. Whether the socket's buffer is
   * full is `congested`'s to say: it returned that each time, read by no
   * caller, four getters of the socket's for every message forwarded.
   */
  send(msg: Message, seq?: number, timeoutms?: number): void {
    if (this.closed || this.socket.destroyed) return;
    if (this.queued++ === 0) {
      dirty.push(this);
      if (!flushScheduled && !together) {
        flushScheduled = true;
        setImmediate(flushAll);
      }
    }
    const encoder = this.encoder;
    if (encoder.wire === 'frames') writeFrame(msg, this.batch, seq, timeoutms);
    else {
      this.batch.append(encoder.encode(msg, seq));
      // Answers held for an earlier one are answers the peer cannot read yet: they count as unread ones.
      if (this.budget && encoder.encode.held !== undefined) this.account();
    }
    if (this.budget) {
      if (this.shielded) this.countUnwritten();
      else if (this.batch.length >= BATCH_COUNTED) this.account();
    }
  }

  /** Hand what `send` queued to the socket now, in one write. */
  flush(): void {
    if (this.queued === 0) return;
    this.queued = 0;
    const data = this.batch.take();
    // A JSON answer held for an earlier one leaves nothing to write yet.
    if (data.length === 0 || this.socket.destroyed) return;
    const room = this.socket.write(data);
    // Nothing left unwritten: the kernel has the bytes, and the batch's buffer can be written over.
    if (this.reclaims && this.socket.writableLength === 0) this.batch.reclaim(data);
    if (!room) {
      this.holdReadsUntilDrained();
      if (this.budget && !this.shielded) {
        this.account();
        this.tellBudgetAtDrain();
      }
    } else if (this.batchCounted) this.account();
    if (this.shielded && this.budget) this.countUnwritten();
  }

  /**
   * On a link: tell the budget what it holds unwritten - this turn's batch, and what the socket
   * holds past a full buffer of the kernel's (the server is not reading) - and again when that drains.
   */
  private countUnwritten(): void {
    const now = this.closed ? 0 : this.batch.length + this.unwritten;
    if (now !== this.unwrittenCounted) {
      this.budget!.addUnwritten(now - this.unwrittenCounted);
      this.unwrittenCounted = now;
    }
    if (now > this.batch.length) this.tellBudgetAtDrain();
  }

  /**
   * Tell the budget again at the socket's next drain - a link what it holds unwritten, any other
   * connection what it holds - with one listener however many turns write to the full socket before it.
   */
  private tellBudgetAtDrain(): void {
    if (this.budgetAtDrain) return;
    this.budgetAtDrain = true;
    this.socket.once('drain', () => {
      this.budgetAtDrain = false;
      if (this.shielded) this.countUnwritten();
      else this.account();
    });
  }

  /** Tell the budget what this connection holds: a message begun, and answers the peer has not read while they pile up (not requests it forwards: they hold their own). */
  private account(): void {
    const unsent = this.socket.writableNeedDrain && !this.shielded ? this.socket.writableLength : 0;
    const batch = this.batch.length >= BATCH_COUNTED && !this.shielded ? this.batch.length : 0;
    this.batchCounted = batch > 0;
    const encoder = this.encoder;
    this.budget!.set(this, this.decoder.buffered + unsent + batch + (encoder.wire === 'json' ? encoder.encode.held ?? 0 : 0));
  }

  /** Cut by the budget: read nothing more, drop what was buffered, tell the peer why (OVERLOADED) and close. */
  shed(reason: string): void {
    this.socket.pause();
    // Reads stay off whoever resumes them (an owner that had paused them for its own reasons): what the
    // peer still sends is dropped, not read as bad input by an emptied decoder.
    this.cut = true;
    this.unread = this.unreadError = undefined;
    this.sliceHeld = false;
    this.decoder = new FrameDecoder({ maxFrameBytes: 1 });
    if (this.encoder.wire === 'json') this.encoder.encode.drop?.();
    // What this turn queued for it goes too (the reason alone is sent).
    this.batch.clear();
    this.queued = 0;
    // A peer that does not read would not read the reason either: its bytes are released now.
    if (this.closed || this.socket.writableNeedDrain) this.destroy();
    else this.endWith(errorMsg(ErrorCode.OVERLOADED, reason));
  }

  private readsHeld = false;

  /** A peer that does not read what it is sent is not read from either, until its socket drains (unless the owner said otherwise). */
  private holdReadsUntilDrained(): void {
    if (this.readsHeld || !this.holdReadsWhenCongested) return;
    this.readsHeld = true;
    this.pause();
    this.socket.once('drain', () => {
      this.readsHeld = false;
      this.resume();
    });
  }

  /**
   * Call `cb` once, in a later turn, when what was sent so far has left for the kernel (this
   * turn's batch written and the socket's buffer drained), or the connection is closed.
   */
  whenWritten(cb: () => void): void {
    const socket = this.socket;
    // A batch waits for this turn's flush, which was scheduled when it began: look again after it.
    if (this.queued > 0 && !this.closed) return void setImmediate(() => this.whenWritten(cb));
    if (this.closed || socket.destroyed || !socket.writableNeedDrain) return void setImmediate(cb);
    const done = (): void => {
      socket.off('drain', done);
      socket.off('close', done);
      this.whenWritten(cb);
    };
    socket.on('drain', done);
    socket.on('close', done);
  }

  /** Bytes accepted by `send` but not yet handed to the kernel. */
  get pendingBytes(): number {
    return this.socket.writableLength + this.batch.length;
  }

  /** Bytes the socket holds because the peer's side of the kernel is full (it reads too slowly): 0 while the socket takes more. */
  get unwritten(): number {
    return this.socket.writableNeedDrain ? this.socket.writableLength : 0;
  }

  /** Whether the socket's write buffer (with what waits for this turn's end) is over its high-water mark. */
  get congested(): boolean {
    return this.socket.writableNeedDrain || this.pendingBytes >= this.socket.writableHighWaterMark;
  }

  /** Stop reading, and handing over what a read took in (nested: each pause needs its resume). */
  pause(): void {
    this.sliceStops++;
    this.holdSocket();
  }

  resume(): void {
    if (this.sliceStops > 0 && --this.sliceStops === 0 && this.sliceHeld && this.unread) {
      // Its next slice, next turn (not inside the caller's own).
      this.sliceHeld = false;
      setImmediate(nextSlice, this, this.unread);
    }
    this.releaseSocket();
  }

  /** Stop reading the socket; what a read took in is still handed over, a slice a turn (nested: each needs its `releaseSocket`). */
  holdSocket(): void {
    if (this.pauses++ !== 0) return;
    this.socket.pause();
    // Not the peer's stall but ours: the message begun is timed again once we read again.
    this.frameTimer?.cancel();
    this.frameTimer = undefined;
  }

  releaseSocket(): void {
    if (this.pauses > 0 && --this.pauses === 0) {
      this.socket.resume();
      this.armFrameTimer();
    }
  }

  /** Send a last message, then close the write side once it has left. */
  endWith(msg?: Message): void {
    if (this.closed) return;
    if (msg) this.send(msg);
    this.flush();
    this.closed = true;
    this.socket.end();
    // A peer that never reads must not keep a half-closed socket alive.
    const timer = this.clock.setTimeout(() => this.socket.destroy(), 2000);
    this.socket.once('close', () => timer.cancel());
  }

  destroy(err?: Error): void {
    this.dropUnsent();
    this.socket.destroy(err);
  }

  private dropUnsent(): void {
    this.closed = true;
    this.queued = 0;
    this.batch.clear();
  }

  /**
   * After the peer's end (its FIN) on a dialed connection: close with a reset rather than a FIN of
   * ours, so the TIME_WAIT the peer's side would hold for 60 s is not held. An old server.py binds
   * its listen port without SO_REUSEADDR: that TIME_WAIT kept it from starting again on its port.
   * Its side is closed by then, so the reset reaches no reader. A TLS socket closes as `destroy`.
   *
   * Not while our own end is under way (`endWith` in this turn: its FIN is queued, not yet sent):
   * libuv refuses to reset a socket it is shutting down (`uv_tcp_close_reset`: EINVAL), and
   * Node 20 then never closes the handle - no 'close', the descriptor held for good, and at exit
   * the process spins at a full core waiting for that handle. Such a socket is destroyed (the
   * FIN goes out; the server's port holds TIME_WAIT, as when both sides close at once).
   */
  resetAfterPeerEnd(): void {
    if (this.socket.destroyed) return;
    if (!this.reclaims || (this.socket.writableEnded && !this.socket.writableFinished)) return this.destroy();
    this.dropUnsent();
    this.socket.resetAndDestroy();
  }

  describe(): string {
    return peerName(this.remoteAddress, this.remotePort);
  }
}
