/**
 * What bounds a listening port, shared by the proxy's port and a server's:
 * how a connection cut by the buffer budget is logged.
 */
import type { BudgetHolder } from '../transport/budget.js';
import { ErrorCode } from '../transport/errors.js';
import type { Connection } from '../transport/socket.js';
import type { Logger } from './logger.js';

/**
 * How a connection the buffer budget cut is logged: a crowd of peers cut
 * must not become a log flood, so one line, then one per interval with a
 * count (per address).
 */
export function logShed(logger: Logger, limit: number) {
  return (holder: BudgetHolder, bytes: number): void => {
    const conn = holder as Connection;
    logger.repeated('warn', 'budget_shed', conn.remoteAddress, 1, (n, span) => span
      ? `Closed ${n} connection(s) from ${conn.remoteAddress} ${span}: the buffer budget of ${limit} bytes (--max-buffered-bytes) was full and each held the most`
      : `Closed connection from ${conn.describe()}: the buffer budget of ${limit} bytes (--max-buffered-bytes) is full and it held the most (${bytes} bytes)`, {
      peer: conn.describe(), bytes, code: ErrorCode.OVERLOADED,
    });
  };
}
