/** The old system's stand-in for work, and this project's default answer: the SHA1 hex of the payload. */
import { createHash } from 'node:crypto';

export function sha1Hex(payload: string): string {
  return createHash('sha1').update(payload).digest('hex');
}
