/** The old system's stand-in for work, and this project's default answer: the SHA1 hex of the payload. */
import { createHash } from 'node:crypto';

/**
 * SHA1 hex of a payload's exact bytes: a string's UTF-8 bytes, or the bytes themselves.
 *
 * @example
 * sha1Hex('xyz1'); // 'b0400cf1f3919fdba057dbd2acc52f148fbb43ac'
 */
export function sha1Hex(payload: string | Uint8Array): string {
  return createHash('sha1').update(payload).digest('hex');
}
