/**
 * The scenario format, written once. The loader reads files with it, the
 * runner gets its types from it, and every refusal message names what these
 * schemas expect. docs/SCENARIOS.md describes the same format for people.
 */
import { flagOfKey, NUMBERS, secret, type NumberKey } from '../config/proxy.js';
import { CLIENT_CODES, ERROR_CODES, REGISTRATION_CODES, type Code } from '../transport/errors.js';
import {
  anything, dict, flag, fraction, lazy, list, located, name, object, oneOf, opt, refine, req, scalar, tagged, text, whole,
  type Field, type Infer, type Schema,
} from '../config/schema.js';

const ms = whole('milliseconds');

/** Codes a send's answers can carry: the proxy's, but those it says only to registrations, and the client's own outcomes. */
export const SEND_CODES: readonly Code[] = [...ERROR_CODES.filter((c) => !(REGISTRATION_CODES as readonly string[]).includes(c)), ...CLIENT_CODES];
const sendCode = oneOf(SEND_CODES, (v) =>
  (REGISTRATION_CODES as readonly unknown[]).includes(v) ? `the proxy says ${String(v)} only to a server's registration, never in answer to a request, so no send gets it` : undefined,
);
/** Codes a raw connection or a registration is answered with: the wire's (the client's own outcomes never travel). */
const wireCode = oneOf(ERROR_CODES);

/**
 * Proxy options a scenario may set: the key in the file, the library's option
 * (in-process) and the `revproxy proxy` flag (--processes). They are the
 * proxy's config-file settings of the same names (config/proxy.ts).
 */
const SCENARIO_KEYS = [
  'timeout', 'retries', 'try_timeout', 'max_frame', 'max_connections', 'max_client_inflight', 'max_server_inflight', 'max_server_queue', 'slow_after',
  'queue_limit', 'queue_timeout', 'queue_lifo_after', 'ping_interval', 'ping_misses', 'eject_after', 'eject_time', 'drain_timeout', 'retry_budget', 'min_retry_rate', 'max_resets',
] as const satisfies readonly NumberKey[];
export const PROXY_OPTIONS = Object.fromEntries(
  SCENARIO_KEYS.map((k) => [k, { option: NUMBERS[k].option, flag: flagOfKey(k)!, min: NUMBERS[k].min, doc: NUMBERS[k].doc }]),
) as { [K in (typeof SCENARIO_KEYS)[number]]: { option: (typeof NUMBERS)[K]['option']; flag: string; min: number; doc: string } };
export type ProxyOptionKey = keyof typeof PROXY_OPTIONS;

const proxyFields = Object.fromEntries(
  Object.entries(PROXY_OPTIONS).map(([k, o]) => [k, opt(whole(`${o.doc}`, o.min), o.flag)]),
) as { [K in ProxyOptionKey]: Field<number, false> };

export const proxySpec = object('proxy', {
  ...proxyFields,
  // The config file's rule (`secret`): a short token ran in-process and failed at the proxy's start, every step skipped
  // (and `--processes` failed at `revproxy proxy --token`).
  token: opt(secret, 'registration secret every server must present (--token; 8 characters or more)'),
  tokens: opt(dict(secret), 'per-policy secrets (--tokens FILE; 8 characters or more each)'),
});

export const serverSpec = object('server', {
  id: req(name, "the server's id"),
  policy: req(name, 'the privacy policy it serves'),
  wire: opt(oneOf(['msgpack', 'frames', 'json'] as const), "msgpack (default; frames is the same) or json: the old system's wire (setup on its own connection, one request at a time)"),
  behaviour: opt(oneOf(['normal', 'silent', 'fail'] as const), 'normal answers; silent accepts requests and never answers; fail answers every request UPSTREAM_FAILED, which the proxy retries on another server'),
  token: opt(text, 'the registration secret it presents'),
  delay: opt(ms, 'every request waits this long before the server answers it, as `revproxy server --delay` (a slow server; the default 0 answers at once)'),
});

const hex = scalar('hex digits, two per byte (spaces allowed)', (v) => {
  const s = typeof v === 'string' ? v.replace(/\s+/g, '') : typeof v === 'number' && Number.isInteger(v) ? String(v) : undefined;
  return s !== undefined && s.length > 0 && s.length % 2 === 0 && /^[0-9a-fA-F]+$/.test(s) ? s.toLowerCase() : undefined;
});

const exactlyOne = (v: Record<string, unknown>, keys: string[]): string | undefined => {
  const given = keys.filter((k) => v[k] !== undefined);
  if (given.length === 1) return undefined;
  return given.length === 0 ? `needs one of ${keys.join(', ')}` : `takes one of ${keys.join(', ')}, got ${given.join(' and ')}`;
};

/** The keys of a step, for a step's own mapping that holds one of them by mistake (`send: { ..., timeout: 300 }`). */
const stepKeys = (kind: string): Record<string, string> => {
  const where = `the step: put it beside '${kind}:', at its indentation, not inside it`;
  return { timeout: where, delay: where, name: where, expect: where };
};

export const sendSpec = object(
  'send',
  {
    client: opt(name, 'client id, the srcid of every packet'),
    policy: opt(name, 'privacy policy of every packet'),
    payload: opt(text, 'one payload, sent `count` times'),
    payloads: opt(list(text, { min: 1 }), 'payloads sent one after another'),
    pkt: opt(list(text, { min: 1 }), 'packet files (JSON, the old format), relative to the scenario file'),
    count: opt(whole('how many times to send `payload`', 1)),
    concurrency: opt(whole('requests in flight at once', 1), 'default 1: one after another'),
    proxy: opt(whole('which proxy of the fleet to send through (1 = the first)', 1), 'with a registry: default 1'),
  },
  (v) =>
    exactlyOne(v, ['payload', 'payloads', 'pkt']) ??
    (v.count !== undefined && v.payload === undefined ? '`count` goes with `payload`' : undefined) ??
    (v.pkt === undefined && (v.client === undefined || v.policy === undefined) ? 'needs `client` and `policy` (only packet files carry their own)' : undefined),
  stepKeys('send'),
);

export const sendExpect = object('expect of send', {
  servers: opt(list(name), 'who answered each request, in order'),
  verified: opt(flag, 'every ACK carried the right SHA1 (and at least one came)'),
  error: opt(sendCode, 'the code every answer carried'),
  acked_at_least: opt(fraction, 'the least share of requests answered with an ACK'),
  acked: opt(whole('ACKs')),
  per_server: opt(dict(whole('answers')), 'how many answers each server gave'),
});

export const rawSpec = object('raw', { hex: opt(hex), text: opt(text), frame: opt(anything, 'a message, encoded as one MessagePack frame') }, (v) =>
  exactlyOne(v, ['hex', 'text', 'frame']), stepKeys('raw'),
);

export const rawExpect = object('expect of raw', {
  error: opt(wireCode, 'the code of every ERROR that came back (at least one)'),
  closed: opt(flag, 'the proxy closed the connection'),
  answers: opt(whole('messages that came back')),
});

export const startExpect = object('expect of start', {
  refused: opt(wireCode, 'the proxy refuses the registration with this code'),
});

const common = {
  name: opt(text, 'a label for the report'),
  timeout: opt(ms, 'deadline for this step (default: the scenario timeout)'),
  delay: opt(ms, 'wait this long before the step (useful inside parallel)'),
};
const serverRef = (what: string) => object(what, { server: req(name, 'server id') }, undefined, stepKeys(what));

const leafKinds = {
  send: object('send step', { send: req(sendSpec), expect: opt(sendExpect), ...common }),
  raw: object('raw step', { raw: req(rawSpec), expect: opt(rawExpect), ...common }),
  start: object('start step', { start: req(object('start', { server: req(serverSpec) }, undefined, stepKeys('start'))), expect: opt(startExpect), ...common }),
  kill: object('kill step', { kill: req(serverRef('kill')), ...common }),
  stop: object('stop step', { stop: req(serverRef('stop')), ...common }),
  wait: object('wait step', { wait: req(ms), ...common }),
  restart: object('restart step', { restart: req(oneOf(['proxy'] as const)), ...common }),
  expect_pool: object('expect_pool step', {
    expect_pool: req(
      object('expect_pool', {
        policy: req(name),
        members: opt(list(name), 'every member, in rotation order (unless `order: any`)'),
        serving: opt(list(name), 'the members taking requests now (not down, not ejected), in rotation order (unless `order: any`)'),
        order: opt(oneOf(['rotation', 'any'] as const), 'rotation (default): members and serving as the proxy rotates over them; any: the same servers in whatever order (servers registering again after a restart, in whatever order they reach it)'),
        proxy: opt(whole('which proxy of the fleet (1 = the first)', 1), 'with a registry: default 1'),
      }, (v) => (v.members === undefined && v.serving === undefined ? 'needs `members`, `serving` or both' : undefined), stepKeys('expect_pool')),
    ),
    ...common,
  }),
};

type LeafKind = keyof typeof leafKinds;
type StepOf<K extends LeafKind> = Infer<(typeof leafKinds)[K]> & { kind: K; line: number; col: number };
/** Steps run at the same time; the step ends when all of them have. */
export interface ParallelStep {
  kind: 'parallel';
  line: number;
  col: number;
  parallel: Step[];
  name?: string;
  timeout?: number;
  delay?: number;
}
export type Step = { [K in LeafKind]: StepOf<K> }[LeafKind] | ParallelStep;
export type StepKind = Step['kind'];
export type SendStep = StepOf<'send'>;
export type RawStep = StepOf<'raw'>;

const stepKinds = {
  ...leafKinds,
  parallel: object('parallel step', { parallel: req(list(lazy<Step>(() => step, 'a step'), { min: 2 })), ...common }),
};
export const STEP_KINDS = Object.keys(stepKinds) as StepKind[];

const step = located(tagged('step', stepKinds)) as Schema<Step>;

/** A fleet: an etcd of the scenario's own, `proxies` proxies watching it, and every server registered there once. */
export const registrySpec = object('registry', {
  proxies: opt(whole('proxies watching the registry', 1), 'default 1'),
  ttl: opt(whole('seconds', 1), 'lease TTL of servers and proxies (default 2)'),
});

export const scenarioSpec = object('scenario', {
  name: req(text, 'what the scenario shows'),
  description: opt(text),
  timeout: opt(ms, 'default deadline of every step (5000)'),
  proxy: opt(proxySpec, 'proxy options'),
  registry: opt(registrySpec, 'run a fleet: an etcd, proxies watching it, servers registered in it'),
  servers: opt(list(located(serverSpec)), 'started in order, each registered before the next'),
  steps: req(list(step), 'the story, one step after another'),
});

export type ServerSpec = Infer<typeof serverSpec>;
export type ProxySpec = Infer<typeof proxySpec>;
export type RegistrySpec = Infer<typeof registrySpec>;
export type SendExpect = Infer<typeof sendExpect>;
export type RawExpect = Infer<typeof rawExpect>;
export type PoolExpect = StepOf<'expect_pool'>['expect_pool'];
export type Scenario = Infer<typeof scenarioSpec> & { file: string; servers: Array<ServerSpec & { line: number; col: number }> };
