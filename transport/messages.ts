/**
 * The message model, in one place. Both wires (MessagePack frames and the old
 * JSON objects) decode into these types, and every decoded value goes through
 * `toMessage` before any actor sees it.
 */
import { Buffer } from 'node:buffer';
import { ErrorCode, isLocalCode, isWireCode, ProtocolError } from './errors.js';

export const MsgType = {
  DATA: 0,
  SETUP: 1,
  ACK: 2,
  ERROR: 3,
  PING: 4,
  PONG: 5,
  DEREGISTER: 6,
} as const;
export type MsgType = (typeof MsgType)[keyof typeof MsgType];

/**
 * A DATA or ACK read from the wire keeps, under this key, where its bytes
 * are: so the proxy can forward it as those bytes, with its seq replaced
 * (and a DATA's `timeoutms` added), instead of encoding it again. It is the
 * same message, carried as its bytes: the key is a symbol, so it is no field
 * (msgpackr, JSON, key counts and equality do not see it). A message read
 * from the wire is not changed in place - the seq to send and a DATA's
 * `timeoutms` are the encoder's to write - and to send something else, send
 * a copy: a copy carries the key but is another object, and is encoded from
 * its fields.
 */
export const WIRE: unique symbol = Symbol('revproxy.wire');

/**
 * A DATA or ACK whose text payload was read from the wire and not yet made into a string
 * (fastwire.ts `lazyText`, where the process may: memory-limit.ts `lazyTextFrom`; a string of 128 KiB
 * or more costs V8 about 4 ms a megabyte to make, 40 times a shorter one's, and a proxy forwarding
 * the frame's bytes never needs it) holds here the text's UTF-8 bytes (a view of what it was read
 * from: valid UTF-8, exactly the bytes of the string), until its `payload` is set. It is the same
 * payload, carried as its bytes: its size is their length, and the frame encoder writes them as
 * the `str` the string would be (fastwire.ts `encodeHot`), so a request read from the old JSON wire
 * goes to a server without its string made. Reading `payload` makes the string, once.
 * Not enumerable: a copy (`{...m}`) does not carry it, and its payload is a string.
 */
export const TEXT_BYTES: unique symbol = Symbol('revproxy.textBytes');

/**
 * Where a message read by the fast decoder (fastwire.ts) came from: its frame
 * body `buf[start, end)`, validated, whose map holds exactly the model's
 * fields of the message, each once (its own spelling of the policy, ids as
 * text, no `timeoutms`), and where the seq's value sits, `buf[seqAt, seqEnd)`.
 */
export interface WireBytes {
  /** The message these bytes were read as (not a copy of it). */
  readonly msg: DataMsg | AckMsg;
  buf: Uint8Array;
  start: number;
  seqAt: number;
  seqEnd: number;
  end: number;
}

/** Client -> proxy -> server. `seq` correlates the answer on the same connection. */
export interface DataMsg {
  type: 0;
  seq: number;
  srcid: string;
  privPoliId: string;
  /** Text (MessagePack `str`, UTF-8) or bytes (`bin`), carried to the server as sent. */
  payload: string | Uint8Array;
  payloadsize?: number;
  /** Proxy -> server: how long from now the proxy waits for the answer (ms); the handler's signal fires then. */
  timeoutms?: number;
  /** Read from the wire: where its bytes are (see `WIRE`). */
  [WIRE]?: WireBytes;
  /** A text payload not made into a string yet: its UTF-8 bytes (see `TEXT_BYTES`). */
  [TEXT_BYTES]?: Uint8Array;
}
/** Server -> proxy: announce id, policy and listen port. Sent on a connection kept open. */
export interface SetupMsg {
  type: 1;
  id: string;
  privPolyId: string;
  listenport: number;
  token?: string;
  /**
   * Whether `listenport` serves TLS (since 2026-12-07; a revproxy server writes it, true with --tls-cert): a proxy of
   * this build refuses a setup that does not say how it dials its servers (its upstream_tls), BAD_REQUEST saying what
   * to change, where its link failed at every dial. Absent (a server from before, another implementation): the proxy
   * dials it as it dials every server.
   */
  tls?: boolean;
}
/** Server -> proxy -> client: the handler's answer (by default the SHA1 hex of the payload). */
export interface AckMsg {
  type: 2;
  seq: number;
  srcid: string;
  destid: string;
  /** Text or bytes, as the handler answered. */
  payload: string | Uint8Array;
  payloadsize: number;
  /** Read from the wire: where its bytes are (see `WIRE`). */
  [WIRE]?: WireBytes;
  /** A text payload not made into a string yet: its UTF-8 bytes (see `TEXT_BYTES`). */
  [TEXT_BYTES]?: Uint8Array;
}
/** Anyone -> peer: a request failed, or the peer sent something wrong. */
export interface ErrorMsg {
  type: 3;
  seq?: number;
  code: ErrorCode;
  message: string;
  /** With `HANDLER_ERROR`: the handler's own code (see `APP_CODE`). */
  appcode?: string;
}
/** Liveness on a registration connection. */
export interface PingMsg {
  type: 4;
  seq: number;
  /**
   * From a proxy on its link to a server: the largest frame it reads from the link (its `max_frame`, `--max-frame`,
   * as the link was dialled). A revproxy server keeps its answers on that connection within the smaller of it and its
   * own `--max-frame`, answering ANSWER_TOO_LARGE itself past it. Absent from proxies before 2026-12-07 (and on their
   * PINGs anywhere else); a server from before ignores it.
   */
  maxFrame?: number;
  /**
   * From a proxy on a registration connection, in the PING that accepts a SETUP: the DNS name it verifies in the
   * server's certificate in place of the address it dials back (its `upstream_tls.server_name`). A revproxy server then
   * checks its certificate against that name, where it checked the address (`certificate_not_for_address`, false
   * then). Absent: the proxy verifies the address, or dials plain TCP; proxies before 2026-12-07 never send it, and
   * servers before it ignore it.
   */
  serverName?: string;
}
export interface PongMsg {
  type: 5;
  seq: number;
  /**
   * From a proxy to a client: the bytes the connection's unanswered requests may hold before the
   * proxy stops reading it (its share of the buffer budget, `--max-buffered-bytes` / 32); absent
   * when nothing limits them. The library's client keeps its requests in flight under it.
   */
  share?: number;
  /**
   * From a proxy to a client: the largest frame it takes on this connection (its `max_frame`,
   * `--max-frame`, as the connection was accepted; it reads frames up to this less frame.ts `FORWARD_ROOM`).
   * The library's client refuses a request that would not fit before sending it: sent, the proxy
   * refuses it `BAD_REQUEST` and closes the connection. Absent from proxies before 2026-12-06.
   */
  maxFrame?: number;
  /**
   * From a revproxy server on a proxy's link: the server's id and the privacy policy it serves. A
   * proxy checks them on the link to a member it found in the registry: an address can outlive
   * the server its entry names, and another server may listen there since. Absent from servers
   * that do not state them (checked for nothing).
   */
  id?: string;
  privPolyId?: string;
  /**
   * From a revproxy server on a proxy's link: how many requests it runs at once (`--concurrency`),
   * when it has a limit. Past it the server queues them; the proxy then holds a server that answers
   * in order back under `slow_after`, its backlog waiting in the proxy's fair queue.
   */
  concurrency?: number;
  /**
   * From a revproxy server on a proxy's link, once it drains and its registry entry could not say so
   * (etcd did not take its leaving): why, in its words. Sent unasked too, on each link that PINGed it
   * (a PONG answering no PING, which a proxy of an earlier build skips). A proxy takes the server out
   * of rotation, as at its `SHUTTING_DOWN` answers, and a registry member's link then closes, ending the drain.
   */
  leaving?: string;
}
/** Server -> proxy on its registration connection: stop sending me new requests. */
export interface DeregisterMsg { type: 6; id: string }

export type Message = DataMsg | SetupMsg | AckMsg | ErrorMsg | PingMsg | PongMsg | DeregisterMsg;

/** Largest seq value; seqs wrap to 0 after it. */
export const MAX_SEQ = 0xffffffff;

/** Longest id (srcid, destid, policy, server id) accepted, in characters. */
export const MAX_ID_LENGTH = 256;

/** Longest DNS name (RFC 1035): a PING's `serverName` longer than this is none. */
const MAX_DNS_NAME = 253;

/**
 * Most values (map keys, map values, array items, each counted) one message
 * may hold, on either wire. A message is a flat map of a dozen fields at
 * most; unknown fields are ignored, but each value costs decoding about as
 * much as an object: a 1 MiB frame of a million empty maps took msgpackr
 * 140 ms, and four connections sending such frames stalled the proxy
 * (another client's median request went from 1.2 ms to 750 ms). So a body
 * over this count is refused, `BAD_REQUEST`, before anything of it is decoded.
 */
export const MAX_VALUES = 1024;

/**
 * The privacy policy's field. DATA writes it `privPoliId`, SETUP `privPolyId`
 * (the old programs' spellings); each message accepts the other spelling too,
 * as some old programs wrote it, and its own wins when both are present.
 */
export const POLICY_KEY = { DATA: 'privPoliId', SETUP: 'privPolyId' } as const satisfies { DATA: keyof DataMsg; SETUP: keyof SetupMsg };

/** The policy as a message reads it: under its own spelling when present, else under the other (see `POLICY_KEY`). */
export function ownSpellingFirst<T>(own: T | undefined, other: T | undefined): T | undefined {
  return own !== undefined ? own : other;
}

const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

/**
 * Index of the first lone surrogate in `text` (half of a pair, which UTF-8 cannot encode), or -1.
 * The encoder writes one as U+FFFD without a word: what is sent must be checked before.
 */
function loneSurrogate(text: string): number {
  const wellFormed = (text as { isWellFormed?: () => boolean }).isWellFormed;
  if (wellFormed ? wellFormed.call(text) : !LONE_SURROGATE.test(text)) return -1;
  return LONE_SURROGATE.exec(text)?.index ?? -1;
}

/** The first `n` UTF-16 units of `text`, one fewer when the last would be the first half of a pair (a lone surrogate made by the cut). */
export function sliceWhole(text: string, n: number): string {
  const last = text.charCodeAt(n - 1);
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? n - 1 : n);
}

/** `text`'s first lone surrogate, for a message (`a lone surrogate (U+D800 at index 1)`), or undefined when it has none. */
export function loneSurrogateIn(text: string): string | undefined {
  const at = loneSurrogate(text);
  return at < 0 ? undefined : `a lone surrogate (U+${text.charCodeAt(at).toString(16).toUpperCase()} at index ${at})`;
}

/** Whether `v` is a valid id value: a string of 1 to `MAX_ID_LENGTH` characters, or an integer written as a number. */
export function isIdValue(v: unknown): v is string | number {
  return typeof v === 'string' ? v.length > 0 && v.length <= MAX_ID_LENGTH : typeof v === 'number' && Number.isSafeInteger(v);
}

/**
 * An error code this build does not know but a newer peer may send (docs/PROTOCOL.md,
 * "Compatibility"): read as a failure, `UPSTREAM_FAILED`, whose message names it, so a request
 * a newer proxy or server refuses with a code of its own fails alone instead of taking the
 * connection, and every request on it, down as BAD_REQUEST.
 */
const NEWER_CODE = /^[A-Z][A-Z0-9_]{0,63}$/;

function newerCode(code: string, message: string): string {
  return `${code} (an error code this revproxy does not know, from a newer peer): ${message}`;
}

/** A handler's own error code (an ERROR's `appcode`): letters, digits, `_ . : -`, 1 to 64 characters. */
export const APP_CODE = /^[A-Za-z0-9_.:-]{1,64}$/;

type Raw = Record<string, unknown>;

function fail(message: string): never {
  throw new ProtocolError(ErrorCode.BAD_REQUEST, message);
}

function isPlainObject(v: unknown): v is Raw {
  if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Uint8Array) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

function own(o: Raw, key: string): unknown {
  return Object.prototype.hasOwnProperty.call(o, key) ? o[key] : undefined;
}

/** An id-like field: a non-empty string, or a finite integer written as a number. */
function idField(o: Raw, key: string): string {
  const v = own(o, key);
  if (isIdValue(v)) return typeof v === 'string' ? v : String(v);
  if (v === '') fail(`field '${key}' is empty`);
  if (typeof v === 'string') fail(`field '${key}' is longer than ${MAX_ID_LENGTH} characters`);
  if (v === undefined) fail(`missing field '${key}'`);
  fail(`field '${key}' must be a string, got ${describe(v)}`);
}

/** An integer field, accepting the old wire's decimal strings. */
function intField(o: Raw, key: string, min: number, max: number, required: true): number;
function intField(o: Raw, key: string, min: number, max: number, required: false): number | undefined;
function intField(o: Raw, key: string, min: number, max: number, required: boolean): number | undefined {
  let v = own(o, key);
  if (v === undefined) {
    if (required) fail(`missing field '${key}'`);
    return undefined;
  }
  if (typeof v === 'string' && /^[0-9]{1,10}$/.test(v)) v = Number(v);
  // An integer another MessagePack writes as uint64 or int64 (0xcf, 0xd3) comes as a bigint when large.
  if (typeof v === 'bigint') {
    if (v < BigInt(min) || v > BigInt(max)) fail(`field '${key}' must be between ${min} and ${max}, got ${v}`);
    v = Number(v);
  }
  if (typeof v !== 'number' || !Number.isInteger(v)) fail(`field '${key}' must be an integer, got ${describe(v)}`);
  if (v < min || v > max) fail(`field '${key}' must be between ${min} and ${max}, got ${v}`);
  return v;
}

/** What `read` gives, or undefined where it refuses the value (an optional field read only where it is valid). */
function leniently<T>(read: () => T): T | undefined {
  try {
    return read();
  } catch (err) {
    if (err instanceof ProtocolError) return undefined;
    throw err;
  }
}

/** A request's `payloadsize` where it is advisory (`ValidateOptions.sizeAdvisory`): the size, or undefined when it is none. */
function advisorySize(o: Raw): number | undefined {
  try {
    return intField(o, 'payloadsize', 0, MAX_SEQ, false);
  } catch (err) {
    if (err instanceof ProtocolError) return undefined;
    throw err;
  }
}

function strField(o: Raw, key: string): string {
  const v = own(o, key);
  if (typeof v === 'string') return v;
  if (v === undefined) fail(`missing field '${key}'`);
  fail(`field '${key}' must be a string, got ${describe(v)}`);
}

/** A payload's size in bytes (a string's in UTF-8): an ACK's `payloadsize` when its server left it out. */
export function payloadBytes(payload: string | Uint8Array): number {
  return typeof payload === 'string' ? Buffer.byteLength(payload, 'utf8') : payload.length;
}

/** `payloadBytes` of a message's payload, without making a text payload read from the wire into a string (`TEXT_BYTES`). */
export function payloadSize(m: DataMsg | AckMsg): number {
  return m[TEXT_BYTES]?.length ?? payloadBytes(m.payload);
}

/**
 * What a proxy holds in memory for a request until it is answered, as its buffer budget counts it
 * (routing.ts `requestBytes`, and the library's client before it sends, `frameBytes` estimated): its
 * payload, and for a text payload the frame it keeps too, to forward as its own bytes (a binary
 * payload is a view of that frame).
 */
export function heldBytes(payloadSize: number, text: boolean, frameBytes: number): number {
  return text ? payloadSize + frameBytes : payloadSize;
}

/** A frame's bytes beyond its payload at most: its 4-byte length, its keys and small fields, and its two ids at their longest. */
const FRAME_FIELDS_MAX = 4 + 64 + 2 * MAX_ID_LENGTH;
/** The most one socket read brings (libuv's 64 KiB): a longer frame is put together from several, alone, and keeps no view of its bytes (frame.ts `holdLittle`). */
const READ_BYTES = 64 * 1024;

/**
 * `heldBytes` as a client can tell it before it sends a request, never less than what the proxy
 * will count: a text payload under a read's size may come in one read with others, its frame kept.
 */
export function heldEstimate(payloadSize: number, text: boolean): number {
  return heldBytes(payloadSize, text && payloadSize < READ_BYTES, payloadSize + FRAME_FIELDS_MAX);
}

/** A payload: text, or bytes (msgpackr gives a `bin` as a Buffer). */
function payloadField(o: Raw): string | Uint8Array {
  const v = own(o, 'payload');
  return v instanceof Uint8Array ? v : strField(o, 'payload');
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Uint8Array) return 'binary';
  return typeof v;
}

/** The key the policy is read from: by `ownSpellingFirst`, and the usual spelling when neither is present (so errors name the usual one). */
function spelling(o: Raw, usual: string, other: string): string {
  return ownSpellingFirst(own(o, usual) === undefined ? undefined : usual, own(o, other) === undefined ? undefined : other) ?? usual;
}

function typeOf(o: Raw): number {
  const t = own(o, 'type');
  if (typeof t === 'number' && Number.isInteger(t)) return t;
  if (typeof t === 'string' && /^[0-9]$/.test(t)) return Number(t);
  if (t === undefined) fail("missing field 'type'");
  fail(`field 'type' must be an integer 0-6, got ${describe(t)}`);
}

export interface ValidateOptions {
  /**
   * The old JSON wire has no correlation field: requests are answered in
   * order, one at a time. There a missing `seq` is allowed (taken as 0).
   */
  seqOptional?: boolean;
  /**
   * A request's `payloadsize` is advisory (the old JSON wire): one that is not a size is left out,
   * not refused. Nothing of the old system read a request's, and its proxy and server passed
   * whatever a packet file held (`"four"`, `1.5`): such a request was refused `BAD_REQUEST`.
   */
  sizeAdvisory?: boolean;
}

/**
 * Check a decoded value against the message model and return a fresh,
 * normalised message holding only the model's fields. Throws a
 * `ProtocolError` (`BAD_REQUEST`) naming the first thing that is wrong.
 */
export function toMessage(value: unknown, opts: ValidateOptions = {}): Message {
  if (!isPlainObject(value)) fail(`a message must be a map, got ${describe(value)}`);
  const o = value;
  const seqReq = !opts.seqOptional;
  const seq = (): number => (seqReq ? intField(o, 'seq', 0, MAX_SEQ, true) : intField(o, 'seq', 0, MAX_SEQ, false) ?? 0);
  const t = typeOf(o);
  switch (t) {
    case MsgType.DATA: {
      const m: DataMsg = {
        type: 0,
        seq: seq(),
        srcid: idField(o, 'srcid'),
        privPoliId: idField(o, spelling(o, POLICY_KEY.DATA, POLICY_KEY.SETUP)),
        payload: payloadField(o),
      };
      const size = opts.sizeAdvisory ? advisorySize(o) : intField(o, 'payloadsize', 0, MAX_SEQ, false);
      if (size !== undefined) m.payloadsize = size;
      const timeout = intField(o, 'timeoutms', 0, MAX_SEQ, false);
      if (timeout !== undefined) m.timeoutms = timeout;
      return m;
    }
    case MsgType.SETUP: {
      const m: SetupMsg = {
        type: 1,
        id: idField(o, 'id'),
        privPolyId: idField(o, spelling(o, POLICY_KEY.SETUP, POLICY_KEY.DATA)),
        listenport: intField(o, 'listenport', 1, 65535, true),
      };
      const token = own(o, 'token');
      if (token !== undefined) {
        if (typeof token !== 'string') fail(`field 'token' must be a string, got ${describe(token)}`);
        m.token = token;
      }
      const tls = own(o, 'tls');
      if (tls !== undefined) {
        if (typeof tls !== 'boolean') fail(`field 'tls' must be true or false (whether listenport serves TLS), got ${describe(tls)}`);
        m.tls = tls;
      }
      return m;
    }
    case MsgType.ACK: {
      const m = { type: 2, seq: seq(), srcid: idField(o, 'srcid'), destid: idField(o, 'destid'), payload: payloadField(o) } as const;
      return { ...m, payloadsize: intField(o, 'payloadsize', 0, MAX_SEQ, false) ?? payloadBytes(m.payload) };
    }
    case MsgType.ERROR: {
      const code = strField(o, 'code');
      if (isLocalCode(code)) fail(`error code '${code}' is local to this side's programs and never travels on the wire`);
      if (!isWireCode(code) && !NEWER_CODE.test(code)) fail(`unknown error code '${code.slice(0, 40)}' (a code is a capital letter, then up to 63 capital letters, digits or _)`);
      const message = strField(o, 'message');
      const m: ErrorMsg = isWireCode(code) ? { type: 3, code, message } : { type: 3, code: ErrorCode.UPSTREAM_FAILED, message: newerCode(code, message) };
      const s = intField(o, 'seq', 0, MAX_SEQ, false);
      if (s !== undefined) m.seq = s;
      const appcode = own(o, 'appcode');
      if (appcode !== undefined) {
        if (typeof appcode !== 'string' || !APP_CODE.test(appcode)) fail(`field 'appcode' must be 1 to 64 letters, digits or _ . : -, got ${typeof appcode === 'string' ? `'${appcode.slice(0, 40)}'` : describe(appcode)}`);
        m.appcode = appcode;
      }
      return m;
    }
    case MsgType.PING: {
      const m: PingMsg = { type: 4, seq: intField(o, 'seq', 0, MAX_SEQ, true) };
      // Read where it is a frame's size, and passed by where it is none, as the field was before it meant anything (a
      // peer's PING of another field by that name is not refused for it; a server then keeps its own cap).
      const maxFrame = leniently(() => intField(o, 'maxFrame', 1, Number.MAX_SAFE_INTEGER, false));
      if (maxFrame !== undefined) m.maxFrame = maxFrame;
      // Passed by when it is no name (not text, empty, longer than a DNS name may be), as a server from before passes it by.
      const serverName = own(o, 'serverName');
      if (typeof serverName === 'string' && serverName.length > 0 && serverName.length <= MAX_DNS_NAME) m.serverName = serverName;
      return m;
    }
    case MsgType.PONG: {
      const m: PongMsg = { type: 5, seq: intField(o, 'seq', 0, MAX_SEQ, true) };
      const share = intField(o, 'share', 0, Number.MAX_SAFE_INTEGER, false);
      if (share !== undefined) m.share = share;
      const maxFrame = intField(o, 'maxFrame', 1, Number.MAX_SAFE_INTEGER, false);
      if (maxFrame !== undefined) m.maxFrame = maxFrame;
      if (own(o, 'id') !== undefined) m.id = idField(o, 'id');
      if (own(o, 'privPolyId') !== undefined) m.privPolyId = idField(o, 'privPolyId');
      const concurrency = intField(o, 'concurrency', 1, Number.MAX_SAFE_INTEGER, false);
      if (concurrency !== undefined) m.concurrency = concurrency;
      if (own(o, 'leaving') !== undefined) m.leaving = strField(o, 'leaving');
      return m;
    }
    case MsgType.DEREGISTER:
      return { type: 6, id: idField(o, 'id') };
    default:
      fail(`unknown message type ${t}`);
  }
}

/** Build an ERROR message. */
export function errorMsg(code: ErrorCode, message: string, seq?: number): ErrorMsg {
  return seq === undefined ? { type: 3, code, message } : { type: 3, seq, code, message };
}
