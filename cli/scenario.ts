/**
 * `revproxy scenario FILE...`: check every file first (nothing starts while
 * any is refused), then run them one after another, printing each step as it
 * ends. Exit 0 when every step passed, 1 when any failed, 2 when a file was
 * refused.
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { inspectOptions, startInspection, type InspectFlags } from './inspect.js';
import { useColor } from './common.js';
import {
  jsonRefusal, jsonReport, loadScenario, runScenario, scenarioFooter, scenarioHeader, ScenarioError, stepLines,
  type Scenario, type ScenarioReport,
} from '../scenario/index.js';

interface ScenarioFlags extends InspectFlags {
  processes?: boolean;
  json?: boolean;
  color: boolean;
}

/** Files as given; folders become their *.yaml and *.yml files, in name order. */
export function expandScenarioPaths(paths: string[]): string[] {
  return paths.flatMap((p) => {
    let dir = false;
    try {
      dir = statSync(p).isDirectory();
    } catch {
      return [p]; // the loader says it does not exist
    }
    if (!dir) return [p];
    return readdirSync(p)
      .filter((n) => /\.ya?ml$/.test(n))
      .sort()
      .map((n) => join(p, n));
  });
}

export function scenarioCommand(setExit: (code: number) => void): Command {
  const cmd = new Command('scenario');
  for (const o of inspectOptions()) cmd.addOption(o);
  return cmd
    .description('run scripted scenarios: a topology and a story in YAML, every step checked (docs/SCENARIOS.md)')
    .argument('<files...>', 'scenario files (YAML), or folders of them')
    .option('--processes', 'run the proxy and the servers as real revproxy processes instead of in-process actors')
    .option('--json', 'print one machine-readable JSON report at the end instead of text')
    .option('--no-color', 'plain text even on a terminal')
    .addHelpText(
      'after',
      '\nEvery scenario runs on fresh ephemeral ports. Files are checked before anything starts:\n' +
        'a malformed file, an unknown key or step is refused with file:line:column.\n\n' +
        'With --inspect the inspector shows the actors while the scenarios run (with --processes: the\n' +
        "proxy process's own page), and stays up after them until Ctrl-C.\n\n" +
        'Exit status: 0 when every step passed, 1 when any failed, 2 when a file was refused.\n\n' +
        'Examples:\n  revproxy scenario spec/scenarios/round-robin.yaml\n  revproxy scenario --processes --json spec/scenarios\n  revproxy scenario spec/scenarios --inspect      (files before --inspect, or give it a port)',
    )
    .action(async (paths: string[], o: ScenarioFlags) => {
      const files = expandScenarioPaths(paths);
      const scenarios: Scenario[] = [];
      const refused: ScenarioError[] = [];
      for (const f of files) {
        try {
          scenarios.push(loadScenario(f));
        } catch (err) {
          if (!(err instanceof ScenarioError)) throw err;
          refused.push(err);
        }
      }
      if (refused.length || scenarios.length === 0) {
        if (o.json) process.stdout.write(`${JSON.stringify(jsonRefusal(refused))}\n`);
        for (const e of refused) process.stderr.write(`${e.message}\n`);
        const why = refused.length ? `${refused.length} scenario file(s) refused` : `no scenario files in ${paths.join(', ')}`;
        process.stderr.write(`revproxy scenario: ${why}; nothing ran\n`);
        return setExit(2);
      }
      const style = { color: !o.json && useColor(o.color) };
      const say = (line: string): void => {
        if (!o.json) process.stdout.write(`${line}\n`);
      };
      const insp = await startInspection(o, 'scenarios');
      const reports: ScenarioReport[] = [];
      try {
        for (const sc of scenarios) {
          say(scenarioHeader(sc, o.processes ? 'processes' : 'in-process'));
          const r = await runScenario(sc, {
            processes: o.processes,
            attach: insp.attach,
            inspectProxy: o.processes && o.inspect !== undefined,
            onNote: (line) => process.stderr.write(`${line}\n`),
            onStep: (s) => say(stepLines(s, style).join('\n')),
          });
          say(`${scenarioFooter(r, style)}\n`);
          reports.push(r);
        }
        if (!o.processes) await insp.hold();
      } finally {
        await insp.close();
      }
      const failed = reports.filter((r) => !r.ok).length;
      if (o.json) process.stdout.write(`${JSON.stringify(jsonReport(reports))}\n`);
      else if (reports.length > 1) say(`${reports.length} scenarios: ${reports.length - failed} passed, ${failed} failed`);
      setExit(failed ? 1 : 0);
    });
}
