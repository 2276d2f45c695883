/**
 * The error family: every error the project throws is a `RevproxyError` with
 * a stable `code`. Codes come in two kinds, kept apart by type:
 *
 * - wire codes (`ErrorCode`) travel in ERROR frames. `toMessage` reads a
 *   code of their shape it does not know (a newer peer's) as UPSTREAM_FAILED
 *   naming it, and refuses a local code as BAD_REQUEST.
 * - local codes (`LocalCode`) name failures reported on this side only (the
 *   command line, starting, TLS files, timeouts, the client's own outcomes);
 *   they never go on the wire.
 *
 * Codes appear in logs, metrics and tests and are never renamed; add new ones.
 */

/**
 * Codes that travel in ERROR frames (docs/PROTOCOL.md, "Error codes").
 *
 * @example
 * if (err instanceof RequestError && err.code === ErrorCode.NO_SERVER) startAServer();
 */
export const ErrorCode = {
  /** No live server is registered for the packet's privacy policy. */
  NO_SERVER: 'NO_SERVER',
  /** The peer sent something that is not a valid frame or message. */
  BAD_REQUEST: 'BAD_REQUEST',
  /** No answer arrived within the request timeout. */
  TIMEOUT: 'TIMEOUT',
  /** The server chosen for the request failed before answering. */
  UPSTREAM_FAILED: 'UPSTREAM_FAILED',
  /** The proxy is at a configured limit and refuses more work for now. */
  OVERLOADED: 'OVERLOADED',
  /** The proxy is shutting down and takes no new requests. */
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  /** A registration that lacks the right secret. */
  UNAUTHORIZED: 'UNAUTHORIZED',
  /** A registration claims an id held by a live server. */
  DUPLICATE_ID: 'DUPLICATE_ID',
  /** The server's handler answered with an application error, its own code in `appcode`: an answer, not a fault (never retried). */
  HANDLER_ERROR: 'HANDLER_ERROR',
  /** The proxy took this server out of its pool (it missed PINGs, say) and closes its registration: register again. */
  REMOVED: 'REMOVED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * The `appcode` of a `HANDLER_ERROR` whose handler failed without a code of its own (a plain `Error`, one of
 * Node's, anything thrown): a fault of the server's, where any other appcode is the application's answer.
 */
export const HANDLER_FAILED = 'HANDLER_FAILED';

/**
 * The `appcode` of a `HANDLER_ERROR` whose handler's answer was too large for the frames between the server and the
 * proxy: said by the server (past the smaller of its own and its proxy's frame), or by the proxy for a server that
 * sent it anyway (docs/PROTOCOL.md, "The largest answer"). An answer, not a fault: never retried, never held against the server.
 */
export const ANSWER_TOO_LARGE = 'ANSWER_TOO_LARGE';

/** Every wire code: the set an ERROR frame's `code` is checked against. */
export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

/** Wire codes the proxy says only to a server's registration (docs/PROTOCOL.md): never in answer to a request. */
export const REGISTRATION_CODES = [ErrorCode.UNAUTHORIZED, ErrorCode.DUPLICATE_ID, ErrorCode.REMOVED] as const;

/**
 * Wire codes a server may answer a request with (docs/PROTOCOL.md): its own OVERLOADED and
 * TIMEOUT, UPSTREAM_FAILED (a failure of its own, or a newer code read as one), and its
 * handler's HANDLER_ERROR. The others say something of the proxy or of the client's bytes
 * (NO_SERVER, SHUTTING_DOWN, BAD_REQUEST) or of a registration, which a client would act on.
 */
export const SERVER_ANSWER_CODES = [ErrorCode.OVERLOADED, ErrorCode.TIMEOUT, ErrorCode.UPSTREAM_FAILED, ErrorCode.HANDLER_ERROR] as const;

const wireCodes: ReadonlySet<string> = new Set(ERROR_CODES);

/** Whether `code` may travel in an ERROR frame. */
export function isWireCode(code: string): code is ErrorCode {
  return wireCodes.has(code);
}

/**
 * Codes of failures reported on this side only: never sent, refused when received.
 *
 * @example
 * if (err instanceof RequestError && err.code === LocalCode.CLIENT_TIMEOUT) retryLater();
 */
export const LocalCode = {
  /** The command line is wrong (exit code 2). */
  BAD_USAGE: 'BAD_USAGE',
  /** A proxy or server could not start (exit code 1). */
  START_FAILED: 'START_FAILED',
  /** A file given on the command line cannot be read or is not what it should be (exit code 1). */
  BAD_FILE: 'BAD_FILE',
  /** The TLS certificate, key or CA files cannot be used. */
  TLS_CONFIG: 'TLS_CONFIG',
  /** A connection was closed by this side: idle too long, or a message begun and not finished in time. */
  CONNECTION_TIMEOUT: 'CONNECTION_TIMEOUT',
  /** A scenario file cannot run. */
  SCENARIO_INVALID: 'SCENARIO_INVALID',
  /** The client's own outcome: no answer at all within its timeout. */
  CLIENT_TIMEOUT: 'CLIENT_TIMEOUT',
  /** The client's own outcome: the connection to the proxy was lost before the answer came. */
  CONNECTION_LOST: 'CONNECTION_LOST',
  /** The client's own outcome: no reverse proxy could be reached, or none ever answered. */
  CONNECT_FAILED: 'CONNECT_FAILED',
  /** The client's own outcome: the request's signal aborted it. */
  ABORTED: 'ABORTED',
  /** The client's own outcome: the client was closed before the answer came. */
  CLIENT_CLOSED: 'CLIENT_CLOSED',
  /** The client's own outcome: its queue of requests waiting to be sent is full. */
  CLIENT_OVERLOADED: 'CLIENT_OVERLOADED',
} as const;
export type LocalCode = (typeof LocalCode)[keyof typeof LocalCode];

/** The client's own outcomes, beside the wire codes its answers carry: a request got no answer from the proxy. */
export const CLIENT_CODES = [
  LocalCode.CLIENT_TIMEOUT, LocalCode.CONNECTION_LOST, LocalCode.CONNECT_FAILED, LocalCode.ABORTED, LocalCode.CLIENT_CLOSED, LocalCode.CLIENT_OVERLOADED,
] as const;
export type ClientCode = (typeof CLIENT_CODES)[number];

/**
 * Whether a request that failed with each code may be sent again: `true` where the code leaves the request unrun
 * by any handler and the failure may pass, `false` where a handler may have run it (or did), or where the same
 * request would fail the same way. A `RequestError`'s `retryable` is this, and false besides for a request the
 * client had sent to a proxy that never said it left it unrun (a connection lost with it in flight, a timeout or
 * an abort after it went out). Decided from the paths that give each code, not from its name: docs/PROTOCOL.md,
 * "Sending a request again", shows this table with the reason for each row (a spec holds the two together).
 *
 * @example
 * catch (err) { if (err instanceof RequestError && err.retryable) sendAgainLater(); }
 */
export const RETRYABLE: Readonly<Record<ErrorCode | ClientCode, boolean>> = {
  NO_SERVER: true,
  BAD_REQUEST: false,
  TIMEOUT: false,
  UPSTREAM_FAILED: false,
  OVERLOADED: false,
  SHUTTING_DOWN: false,
  UNAUTHORIZED: false,
  DUPLICATE_ID: false,
  HANDLER_ERROR: false,
  REMOVED: false,
  CLIENT_TIMEOUT: true,
  CONNECTION_LOST: true,
  CONNECT_FAILED: true,
  ABORTED: true,
  CLIENT_CLOSED: true,
  CLIENT_OVERLOADED: true,
};

/**
 * Whether a request that failed with `code` may be sent again without running twice: its row of `RETRYABLE`, and
 * false for a code the table has no row for (a newer peer's, a tool's own) or for a request sent where a handler may
 * have run it and left unanswered (`mayHaveRun`). `RequestError.retryable`, `revproxy client --json` and `revproxy
 * load --json` all read it here.
 */
export function isRetryable(code: string, mayHaveRun = false): boolean {
  return !mayHaveRun && Object.hasOwn(RETRYABLE, code) && RETRYABLE[code as keyof typeof RETRYABLE];
}

const localCodes: ReadonlySet<string> = new Set(Object.values(LocalCode));

/** Whether `code` is a local code (so a peer that sends it is told so). */
export function isLocalCode(code: string): code is LocalCode {
  return localCodes.has(code);
}

/** Any code a `RevproxyError` carries. */
export type Code = ErrorCode | LocalCode;

/**
 * Base error: every failure the project raises carries a stable `code`.
 * Subclasses name one kind of failure each and fix its code.
 *
 * @example
 * try { await client.request('111', 'x'); }
 * catch (err) { if (err instanceof RevproxyError) log(err.code, err.message); else throw err; }
 */
export class RevproxyError<C extends Code = Code> extends Error {
  readonly code: C;
  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RevproxyError';
    this.code = code;
  }
}

/**
 * A proxy, server or client that could not start, and why (the CLI exits with 1): a port in use,
 * an option out of range.
 *
 * @example
 * try { await startProxy({ port: 2100 }); }
 * catch (err) { if (err instanceof StartError) console.error(err.message); } // e.g. the port is in use
 */
export class StartError extends RevproxyError<typeof LocalCode.START_FAILED> {
  constructor(message: string) {
    super(LocalCode.START_FAILED, message);
    this.name = 'StartError';
  }
}

/** Bytes or a decoded value that break the protocol. The connection that sent them is closed. */
export class ProtocolError extends RevproxyError<ErrorCode> {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
  }
}

/** A CLI usage error: printed without a stack, exit code 2. */
export class UsageError extends RevproxyError<typeof LocalCode.BAD_USAGE> {
  constructor(message: string) {
    super(LocalCode.BAD_USAGE, message);
    this.name = 'UsageError';
  }
}

/**
 * A start that failed on a file the command was given (missing, unreadable,
 * not what it should be): one line that names the file, says why and what to
 * do; exit code 1, as for any failed start.
 */
export class FileError extends RevproxyError<typeof LocalCode.BAD_FILE> {
  constructor(message: string) {
    super(LocalCode.BAD_FILE, message);
    this.name = 'FileError';
  }
}

/** Whether `v` is an options object: an object, not null nor an array (what each library entry and option of objects takes). */
export function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** What `v` is, for an error that says what it got instead of an object: `null`, `an array`, or its `typeof`. */
export function kindOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** Shorten and hex-encode bytes for error messages. */
export function hexPreview(bytes: Uint8Array, max = 16): string {
  const head = Buffer.from(bytes.subarray(0, max)).toString('hex').replace(/(..)/g, '$1 ').trim();
  return bytes.length > max ? `${head} ... (${bytes.length} bytes)` : head;
}
