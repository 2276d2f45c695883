/**
 * Error codes are part of the protocol: they travel in ERROR frames, appear in
 * logs and metrics, and tests branch on them. Never rename one; add new ones.
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
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export const ERROR_CODES: readonly ErrorCode[] = Object.values(ErrorCode);

/** Base error: every failure the project raises carries a stable `code`. */
export class RevproxyError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RevproxyError';
    this.code = code;
  }
}

/** Bytes or a decoded value that break the protocol. The connection that sent them is closed. */
export class ProtocolError extends RevproxyError {
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.name = 'ProtocolError';
  }
}

/** Shorten and hex-encode bytes for error messages. */
export function hexPreview(bytes: Uint8Array, max = 16): string {
  const head = Buffer.from(bytes.subarray(0, max)).toString('hex').replace(/(..)/g, '$1 ').trim();
  return bytes.length > max ? `${head} ... (${bytes.length} bytes)` : head;
}
