/**
 * revproxy as a library: `import { connect, startServer, startProxy } from 'revproxy'`.
 *
 * - `startServer({ id, policy, handler, revproc })` puts your code behind the
 *   proxy: `handler` is `async (payload, ctx) => answer`.
 * - `connect({ revproc })` gives a client: `request(policy, payload)` resolves
 *   to the answer; `requests(policy, payloads$)` is the RxJS form.
 * - `startProxy({ port })` runs the proxy itself.
 *
 * Every error is a `RevproxyError` with a stable `code`; a handler's own
 * errors arrive as `HandlerError` with its `appCode`.
 *
 * @example
 * import { connect, startProxy, startServer } from 'revproxy';
 * const proxy = await startProxy({ port: 0 });
 * const server = await startServer({ id: 's1', policy: 'upper', revproc: proxy.port, handler: async (p) => String(p).toUpperCase() });
 * const client = await connect({ revproc: proxy.port });
 * console.log(await client.request('upper', 'hello')); // HELLO
 * await client.close(); await server.stop(); await proxy.stop();
 */
export { startProxy, startServer, StartError } from '../actors/index.js';
export type { ProxyHandle, ServerHandle, StartProxyOptions, StartServerOptions, PoolView, Inspect } from '../actors/index.js';
export type { ProxyOptions, ProxyObserver, Outcome as ProxyOutcome } from '../actors/proxy-options.js';
/** The proxy's "stopped" line, for a caller that says it itself (`stoppedLine: 'caller'`). */
export { logStopped } from '../actors/children.js';
/** The failures `ProxyOptions.retryOn` may list (`--retry-on`). */
export { RETRY_CONDITIONS, type RetryCondition } from '../actors/link.js';
export type { Endpoint } from '../actors/server.js';

export { connect, Client, runClient } from '../actors/connect.js';
export type { ClientEvents, ConnectOptions, Disconnected, Reconnected, RequestOptions, Reply, Revproc, Packet, Result, RunOptions } from '../actors/connect.js';
export { RequestError } from '../actors/client.js';

export { HandlerError, sha1Handler } from '../actors/handler.js';
export type { Answer, Handler, HandlerContext, Payload } from '../actors/handler.js';
export { sha1Hex } from '../actors/sha1.js';

export { ErrorCode, LocalCode, RETRYABLE, RevproxyError, type ClientCode, type Code } from '../transport/errors.js';
export { TlsConfigError, type TlsMaterial, type UpstreamTlsMaterial } from '../transport/tls.js';
export { ManualClock, systemClock, type Clock, type Timer } from '../transport/clock.js';
export { Logger, jsonSink, textSink, type LogRecord, type LogSink, type Level } from '../actors/logger.js';
