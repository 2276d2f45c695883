import { suite } from 'uvu';
import * as assert from 'uvu/assert';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadScenario, runScenario, stepLines, type ScenarioReport } from '../scenario/index.js';
import { killAll, revproxy } from './procs.js';
import { tempDir } from './helpers.js';

const DIR = fileURLToPath(new URL('./scenarios', import.meta.url));
const files = readdirSync(DIR).filter((f) => /\.ya?ml$/.test(f)).sort();

/** The failing steps as the CLI prints them, for the assertion message. */
function failures(r: ScenarioReport): string {
  return r.steps.filter((s) => s.status !== 'passed').flatMap((s) => stepLines(s, { color: false })).join('\n');
}

const inProcess = suite('scenarios, in-process');

inProcess('spec/scenarios holds the scenarios the issue asks for', () => {
  for (const f of ['demo.yaml', 'round-robin.yaml', 'join-leave.yaml', 'no-server.yaml', 'bad-input.yaml', 'failover.yaml', 'drain.yaml', 'proxy-restart.yaml', 'tokens.yaml']) {
    assert.ok(files.includes(f), f);
  }
});

for (const f of files) {
  inProcess(`${f} passes every step`, async () => {
    const report = await runScenario(loadScenario(join(DIR, f)));
    assert.ok(report.ok, `${f}:\n${failures(report)}`);
    assert.ok(report.steps.length > 1);
    assert.ok(report.steps.every((s) => s.status === 'passed'));
  });
}

inProcess.run();

const processes = suite('scenarios, as revproxy processes');
processes.after.each(killAll);

processes("`revproxy scenario --processes --json` runs the assignment's example, a proxy restart and slow servers (`delay`, as `--delay`) with real processes", async () => {
  const run = revproxy(['scenario', '--processes', '--json', 'spec/scenarios/round-robin.yaml', 'spec/scenarios/proxy-restart.yaml', 'spec/scenarios/slow-server.yaml']);
  assert.is(await run.exited, 0, run.out.join('\n'));
  const report = JSON.parse(run.out.find((l) => l.startsWith('{'))!);
  assert.is(report.ok, true, JSON.stringify(report.scenarios.map((s: ScenarioReport) => s.steps.filter((st) => st.status !== 'passed'))));
  assert.is(report.passed, 3);
  const [sc] = report.scenarios;
  assert.is(sc.mode, 'processes');
  const five = sc.steps.find((s: { line?: number }) => s.line === 7);
  assert.equal(five.got.servers, ['1', '2', '1', '2', '1']);
});

processes('the text report ticks every step, with its line and time', async () => {
  const run = revproxy(['scenario', 'spec/scenarios/round-robin.yaml', 'spec/scenarios/no-server.yaml']);
  assert.is(await run.exited, 0, run.out.join('\n'));
  const text = run.out.join('\n');
  assert.match(text, /^ {2}✔ line 7 +\d+ ms {2}five messages, one after another$/m);
  assert.match(text, /^ {2}✔ +\d+ ms {2}start proxy$/m);
  assert.match(text, /2 scenarios: 2 passed, 0 failed/);
  assert.not.match(text, /✘/);
});

processes('--inspect-log records what the in-process actors did during the run', async () => {
  const { readFileSync } = await import('node:fs');
  const log = join(tempDir('scenario-insp-'), 'run.ndjson');
  const run = revproxy(['scenario', '--inspect-log', log, 'spec/scenarios/round-robin.yaml']);
  assert.is(await run.exited, 0, run.out.join('\n'));
  const lines = readFileSync(log, 'utf8').split('\n').filter(Boolean);
  assert.ok(lines.length > 10, `${lines.length} inspection records`);
  assert.ok(lines.every((l) => JSON.parse(l)));
});

processes.run();
