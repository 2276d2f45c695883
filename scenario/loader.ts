/**
 * Reads scenario files: YAML parsed with line numbers kept, checked against
 * the format (format.ts), then checked as a story (a server is running when a
 * step stops or kills it, ids are unique (a server started again while it runs
 * is refused, unless the step expects that refusal), a `proxy: N` is one the scenario
 * runs, a pool's serving ids are among its members). Any problem refuses the
 * file before anything starts, naming file:line:column and what was expected there.
 */
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { LocalCode } from '../transport/errors.js';
import { scenarioSpec, type Scenario, type Step } from './format.js';
import { IssuesError, readYaml, type Issue } from '../config/schema.js';
import { readYamlFile } from '../config/files.js';

/** A file that cannot run, with every problem found in it. */
export class ScenarioError extends IssuesError<typeof LocalCode.SCENARIO_INVALID> {
  constructor(file: string, issues: Issue[]) {
    super(LocalCode.SCENARIO_INVALID, file, issues);
    this.name = 'ScenarioError';
  }
}

/** Read and check a scenario file; throws ScenarioError when it cannot run. */
export function loadScenario(file: string): Scenario {
  return parseScenario(readYamlFile(file, 'the scenario', (issues) => new ScenarioError(file, issues)), file);
}

/**
 * Check a scenario given as text; `file` names it in messages and anchors
 * relative packet-file paths.
 *
 * @example
 * const sc = parseScenario('name: x\nsteps:\n  - wait: 10\n', 'inline.yaml');
 */
export function parseScenario(source: string, file: string): Scenario {
  const { value, ctx } = readYaml(source, scenarioSpec);
  const issues = ctx.issues;
  if (!value) throw new ScenarioError(file, issues);
  const scenario = { ...value, servers: value.servers ?? [], file } as Scenario;
  checkStory(scenario, issues);
  if (issues.length) throw new ScenarioError(file, issues);
  return scenario;
}

/** Story rules the schema cannot see: who is running when each step names a server, which proxies there are, what a pool can hold. */
function checkStory(sc: Scenario, issues: Issue[]): void {
  /** Servers running at this point of the story; those that left, with the line of the step that took them out. */
  const running = new Map<string, string>();
  const left = new Map<string, number>();
  for (const s of sc.servers) {
    if (running.has(s.id)) issues.push({ line: s.line, col: s.col, path: 'servers', message: `server id ${s.id} is listed twice; ids are unique among live servers` });
    running.set(s.id, `listed under servers at line ${s.line}`);
  }
  const proxies = sc.registry ? (sc.registry.proxies ?? 1) : 1;
  const proxyIssue = (n: number | undefined): string | undefined =>
    n === undefined || n <= proxies ? undefined
      : sc.registry ? `there is no proxy ${n}: registry.proxies is ${proxies}; name a proxy from 1 to ${proxies}, or raise registry.proxies`
      : `there is no proxy ${n}: without a \`registry\` the scenario runs one proxy; add \`registry: { proxies: ${n} }\` for a fleet, or leave \`proxy:\` out`;
  const walk = (steps: Step[], path: string): void => {
    steps.forEach((st, i) => {
      const at = `${path}[${i}]`;
      const say = (where: string, message: string): void => void issues.push({ line: st.line, col: st.col, path: `${at}.${where}`, message });
      if (st.kind === 'start') {
        const id = st.start.server.id;
        const refused = st.expect?.refused;
        const since = running.get(id);
        if (since !== undefined && refused === undefined) say('start', `server ${id} is already running (${since}): the proxy refuses a second registration of a live id (DUPLICATE_ID); give this server another id, stop or kill ${id} before this step, or add \`expect: { refused: DUPLICATE_ID }\` to show the refusal`);
        else if (since === undefined && refused === 'DUPLICATE_ID') say('expect.refused', `server ${id} is not running at this step (running: ${[...running.keys()].join(', ') || 'none'}), so its registration is not a duplicate: start ${id} before this step, or name a running server`);
        if (refused === undefined) {
          running.set(id, `started at line ${st.line}`);
          left.delete(id);
        }
      } else if (st.kind === 'kill' || st.kind === 'stop') {
        const target = st.kind === 'kill' ? st.kill.server : st.stop.server;
        if (!running.has(target)) {
          const gone = left.get(target);
          const known = [...running.keys()].join(', ') || 'none';
          say(st.kind, gone === undefined ? `server ${target} is never started before this step (started: ${known})`
            : `server ${target} already left at line ${gone} and is not started again before this step (running: ${known}); take this step out, or add a \`start\` before it`);
        }
        if (running.delete(target)) left.set(target, st.line);
      } else if (st.kind === 'parallel') walk(st.parallel, `${at}.parallel`);
      else if (st.kind === 'send') {
        const wrong = proxyIssue(st.send.proxy);
        if (wrong) say('send.proxy', wrong);
        for (const p of st.send.pkt ?? []) {
          if (!existsSync(resolve(dirname(sc.file), p))) say('send.pkt', `packet file ${p} does not exist (paths are relative to the scenario file)`);
        }
      } else if (st.kind === 'expect_pool') {
        const e = st.expect_pool;
        const wrong = proxyIssue(e.proxy);
        if (wrong) say('expect_pool.proxy', wrong);
        const outside = e.members ? (e.serving ?? []).filter((id) => !e.members!.includes(id)) : [];
        if (outside.length) say('expect_pool.serving', `serving names ${outside.join(', ')}, not among members (${e.members!.join(', ') || 'none'}): only a member can serve; add it to members or take it out of serving`);
      }
    });
  };
  walk(sc.steps, 'steps');
}
