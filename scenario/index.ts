/** Scripted scenarios: load a file, run it, report every step. */
export { loadScenario, parseScenario, ScenarioError } from './loader.js';
export { runScenario, labelOf, type RunOptions, type ScenarioReport, type StepReport, type StepStatus } from './runner.js';
export { jsonRefusal, jsonReport, scenarioFooter, scenarioHeader, stepLines } from './report.js';
export { STEP_KINDS, type Scenario, type Step } from './format.js';
export type { Diff } from './expect.js';
export type { Issue } from '../config/schema.js';
