/**
 * Reads scenario files: YAML parsed with line numbers kept, checked against
 * the format (format.ts), then checked as a story (a server is started before
 * it is stopped, ids are unique). Any problem refuses the file before anything
 * starts, naming file:line:column and what was expected there.
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

/** Story rules the schema cannot see: who is running when each step names a server. */
function checkStory(sc: Scenario, issues: Issue[]): void {
  const started = new Set<string>();
  for (const s of sc.servers) {
    if (started.has(s.id)) issues.push({ line: s.line, col: s.col, path: 'servers', message: `server id ${s.id} is listed twice; ids are unique among live servers` });
    started.add(s.id);
  }
  const walk = (steps: Step[], path: string): void => {
    steps.forEach((st, i) => {
      const at = `${path}[${i}]`;
      const target = st.kind === 'kill' ? st.kill.server : st.kind === 'stop' ? st.stop.server : undefined;
      if (st.kind === 'start') started.add(st.start.server.id);
      else if (target !== undefined && !started.has(target)) {
        const known = [...started].join(', ') || 'none';
        issues.push({ line: st.line, col: st.col, path: `${at}.${st.kind}`, message: `server ${target} is never started before this step (started: ${known})` });
      } else if (st.kind === 'parallel') walk(st.parallel, `${at}.parallel`);
      else if (st.kind === 'send') {
        for (const p of st.send.pkt ?? []) {
          if (!existsSync(resolve(dirname(sc.file), p))) issues.push({ line: st.line, col: st.col, path: `${at}.send.pkt`, message: `packet file ${p} does not exist (paths are relative to the scenario file)` });
        }
      }
    });
  };
  walk(sc.steps, 'steps');
}
