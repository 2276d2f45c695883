/**
 * A server of one privacy policy: listens on its own port, registers with the
 * proxy over a connection it keeps open (its leaving is that connection
 * closing), and answers every DATA request with the SHA1 hex of its payload.
 *
 * starting --LISTENING--> online.registering --REGISTERED--> online.registered
 *    |                         |
 *    +--LISTEN_FAILED-->failed +--REFUSED / REGISTRATION_LOST--> failed
 * STOP from anywhere --> stopped
 */
import { createHash } from 'node:crypto';
import { connect as netConnect, createServer, type Socket } from 'node:net';
import { assign, fromCallback, setup, type ActorRefFrom } from 'xstate';
import { ErrorCode, ProtocolError } from '../transport/errors.js';
import { DEFAULT_MAX_FRAME_BYTES } from '../transport/frame.js';
import { errorMsg, MsgType, type DataMsg, type Message, type SetupMsg } from '../transport/messages.js';
import { Connection } from '../transport/socket.js';
import { silentLogger, type Logger } from './logger.js';
import { describeListenError } from './proxy.js';

export interface Endpoint {
  host: string;
  port: number;
}

export interface ServerOptions {
  id: string;
  policy: string;
  /** Port to listen on for the proxy's requests; 0 picks a free one. */
  listenPort: number;
  /** Address to listen on. Default 127.0.0.1. */
  listenHost?: string;
  /** The proxy to register with. */
  proxy: Endpoint;
  maxFrameBytes?: number;
  /**
   * How to register: `frames` (default) on a connection kept open; `json` the
   * old way, for the old Python proxy (see json-registration.ts). Requests are
   * read in either wire, decided by their first byte.
   */
  wire?: 'frames' | 'json';
  /** `normal` answers; `silent` accepts requests and never answers (for fault tests). */
  behaviour?: 'normal' | 'silent';
  logger?: Logger;
}

export interface ServerContext {
  opts: ServerOptions;
  logger: Logger;
  port: number;
  answered: number;
  error?: string;
}

export type ServerEvent =
  | { type: 'LISTENING'; port: number }
  | { type: 'LISTEN_FAILED'; error: string }
  | { type: 'REQUESTS'; conn: Connection; requests: DataMsg[] }
  | { type: 'REGISTERED' }
  | { type: 'REFUSED'; code: string; message: string }
  | { type: 'REGISTRATION_LOST'; error: string }
  | { type: 'STOP' };

/** Accepts the proxy's connections; each read becomes one REQUESTS batch. */
const requestListener = fromCallback<ServerEvent, { host: string; port: number; maxFrameBytes: number; logger: Logger }>(
  ({ sendBack, input }) => {
    const conns = new Set<Connection>();
    const server = createServer((socket: Socket) => {
      // Either wire: the old proxy talks JSON here, ours frames.
      const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes, wire: 'sniff' });
      conn.role = 'server-link';
      conns.add(conn);
      socket.on('error', () => {});
      conn.messages$.subscribe({
        next: (messages) => {
          const requests: DataMsg[] = [];
          for (const m of messages) {
            if (m.type === MsgType.DATA) requests.push(m);
            else if (m.type === MsgType.PING) conn.send({ type: MsgType.PONG, seq: m.seq });
            else {
              if (requests.length) sendBack({ type: 'REQUESTS', conn, requests: requests.splice(0) });
              refuse(conn, new ProtocolError(ErrorCode.BAD_REQUEST, `message type ${m.type} is not a request`), input.logger);
              return;
            }
          }
          if (requests.length) sendBack({ type: 'REQUESTS', conn, requests });
        },
        error: (err: Error) => {
          conns.delete(conn);
          if (err instanceof ProtocolError) refuse(conn, err, input.logger);
        },
        complete: () => conns.delete(conn),
      });
    });
    server.on('error', (err) => sendBack({ type: 'LISTEN_FAILED', error: describeListenError(err, input.host, input.port) }));
    server.listen(input.port, input.host, () => {
      const addr = server.address();
      sendBack({ type: 'LISTENING', port: typeof addr === 'object' && addr ? addr.port : input.port });
    });
    return () => {
      server.close();
      for (const c of conns) c.destroy();
    };
  },
);

function refuse(conn: Connection, err: ProtocolError, logger: Logger): void {
  logger.warn('bad_input', `Closed connection from ${conn.describe()}: ${err.message}`, { peer: conn.describe(), code: err.code });
  conn.endWith(errorMsg(err.code, err.message));
}

/** The registration connection: sends SETUP, then stays open as the server's presence. */
const registration = fromCallback<ServerEvent, { proxy: Endpoint; setup: SetupMsg; maxFrameBytes: number }>(({ sendBack, input }) => {
  const socket = netConnect({ host: input.proxy.host, port: input.proxy.port });
  const conn = new Connection(socket, { maxFrameBytes: input.maxFrameBytes });
  conn.role = 'registration';
  let done = false;
  const lost = (error: string): void => {
    if (done) return;
    done = true;
    sendBack({ type: 'REGISTRATION_LOST', error });
  };
  socket.once('connect', () => {
    conn.send(input.setup);
    sendBack({ type: 'REGISTERED' });
  });
  const sub = conn.messages$.subscribe({
    next: (messages: Message[]) => {
      for (const m of messages) {
        if (m.type === MsgType.PING) conn.send({ type: MsgType.PONG, seq: m.seq });
        else if (m.type === MsgType.ERROR) {
          done = true;
          sendBack({ type: 'REFUSED', code: m.code, message: m.message });
        }
      }
    },
    error: (err: NodeJS.ErrnoException) =>
      lost(err.code === 'ECONNREFUSED' ? `no reverse proxy is listening on ${input.proxy.host}:${input.proxy.port}` : err.message),
    complete: () => lost('the reverse proxy closed the registration connection'),
  });
  return () => {
    done = true;
    sub.unsubscribe();
    conn.destroy();
  };
});

export function sha1Hex(payload: string): string {
  return createHash('sha1').update(payload).digest('hex');
}

export const serverMachine = setup({
  types: {
    context: {} as ServerContext,
    events: {} as ServerEvent,
    input: {} as ServerOptions,
  },
  actors: { requestListener, registration },
  actions: {
    setPort: assign(({ event }) => (event.type === 'LISTENING' ? { port: event.port } : {})),
    logStart: ({ context }) => {
      const log = context.logger;
      log.info('start', `Server running with id ${context.opts.id}`, { id: context.opts.id });
      log.info('policy', `Server serving privacy policy ${context.opts.policy}`, { policy: context.opts.policy });
      log.info('listening', `Listening on port ${context.port}`, { port: context.port });
      log.info('connecting', `Connecting to the reverse proxy on port ${context.opts.proxy.port}`, { proxy: context.opts.proxy });
    },
    respond: assign(({ context, event }) => {
      if (event.type !== 'REQUESTS') return {};
      if (context.opts.behaviour === 'silent') return {};
      const { conn, requests } = event;
      const log = context.logger;
      const verbose = log.enabled('info');
      for (const req of requests) {
        const hash = sha1Hex(req.payload);
        if (verbose) {
          log.info('request', `Received a message from client ${req.srcid} payload ${req.payload}`, { client: req.srcid, payload: req.payload });
          log.info('answer', `Sending a message to the client ${req.srcid} payload ${hash}`, { client: req.srcid, payload: hash });
        }
        conn.send({ type: MsgType.ACK, seq: req.seq, srcid: context.opts.id, destid: req.srcid, payload: hash, payloadsize: hash.length });
      }
      return { answered: context.answered + requests.length };
    }),
    setError: assign(({ event }) => {
      if (event.type === 'LISTEN_FAILED' || event.type === 'REGISTRATION_LOST') return { error: event.error };
      if (event.type === 'REFUSED') return { error: `the reverse proxy refused the registration (${event.code}): ${event.message}` };
      return {};
    }),
    logError: ({ context }) => context.logger.error('failed', context.error ?? 'unknown error', { id: context.opts.id }),
    logRegistered: ({ context }) =>
      context.logger.debug('registered', `Registered with the reverse proxy on port ${context.opts.proxy.port}`, { proxy: context.opts.proxy }),
  },
}).createMachine({
  id: 'server',
  context: ({ input }) => ({ opts: input, logger: input.logger ?? silentLogger, port: input.listenPort, answered: 0 }),
  invoke: {
    id: 'listener',
    src: 'requestListener',
    input: ({ context }) => ({
      host: context.opts.listenHost ?? '127.0.0.1',
      port: context.opts.listenPort,
      maxFrameBytes: context.opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      logger: context.logger,
    }),
  },
  initial: 'starting',
  states: {
    starting: {
      on: {
        LISTENING: { target: 'online', actions: ['setPort', 'logStart'] },
        LISTEN_FAILED: { target: 'failed', actions: ['setError', 'logError'] },
      },
    },
    online: {
      invoke: {
        id: 'registration',
        src: 'registration',
        input: ({ context }) => ({
          proxy: context.opts.proxy,
          maxFrameBytes: context.opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
          setup: { type: MsgType.SETUP, id: context.opts.id, privPolyId: context.opts.policy, listenport: context.port },
        }),
      },
      on: {
        REQUESTS: { actions: 'respond' },
        REFUSED: { target: '#server.failed', actions: ['setError', 'logError'] },
        REGISTRATION_LOST: { target: '#server.failed', actions: ['setError', 'logError'] },
      },
      initial: 'registering',
      states: {
        registering: { on: { REGISTERED: { target: 'registered', actions: 'logRegistered' } } },
        registered: {},
      },
    },
    stopped: { type: 'final' },
    failed: { type: 'final' },
  },
  on: { STOP: '.stopped' },
});

export type ServerActor = ActorRefFrom<typeof serverMachine>;
