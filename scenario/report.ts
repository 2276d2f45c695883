/**
 * Reports for people and for machines: a line per step with a tick or a
 * cross, its line in the file and its time; under a failed step, what was
 * expected and what happened.
 */
import { styleText } from 'node:util';
import type { Diff } from './expect.js';
import type { ScenarioError } from './loader.js';
import type { ScenarioReport, StepReport } from './runner.js';

export interface Style {
  color: boolean;
}

const MARK = { passed: '✔', failed: '✘', skipped: '-' } as const;
const TINT = { passed: 'green', failed: 'red', skipped: 'gray' } as const;

export function scenarioHeader(sc: { name: string; file: string }, mode: string): string {
  return `${sc.name}  (${sc.file}, ${mode})`;
}

/** One step (and, for a parallel step, its steps indented under it). */
export function stepLines(r: StepReport, style: Style, depth = 1): string[] {
  const pad = '  '.repeat(depth);
  const paint = (s: string, c: Parameters<typeof styleText>[0]): string => (style.color ? styleText(c, s) : s);
  const where = r.line !== undefined ? `line ${r.line}` : '';
  const time = r.status === 'skipped' ? 'skipped' : `${r.ms} ms`;
  const head = `${pad}${paint(MARK[r.status], TINT[r.status])} ${where.padEnd(8)} ${time.padStart(8)}  ${r.label}`;
  const out = [head.trimEnd()];
  const more = `${pad}    `;
  if (r.error) out.push(`${more}${paint(r.error, 'red')}`);
  for (const d of r.diffs) out.push(...diffLines(d, more));
  for (const child of r.steps ?? []) out.push(...stepLines(child, style, depth + 1));
  return out;
}

function diffLines(d: Diff, pad: string): string[] {
  const lead = `${d.what}: `;
  const out = [`${pad}${lead}expected ${show(d.expected)}`, `${pad}${' '.repeat(lead.length)}got      ${show(d.got)}`];
  if (d.note) out.push(`${pad}${' '.repeat(lead.length)}(${d.note})`);
  return out;
}

function show(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v);
}

export function scenarioFooter(r: ScenarioReport, style: Style): string {
  const flat = flatten(r.steps);
  const n = (s: string): number => flat.filter((x) => x.status === s).length;
  const line = `  ${flat.length} steps: ${n('passed')} passed, ${n('failed')} failed${n('skipped') ? `, ${n('skipped')} skipped` : ''} (${r.ms} ms)`;
  return style.color ? styleText(r.ok ? 'green' : 'red', line) : line;
}

function flatten(steps: StepReport[]): StepReport[] {
  return steps.flatMap((s) => [s, ...flatten(s.steps ?? [])]);
}

/** The machine-readable report of a run. */
export function jsonReport(reports: ScenarioReport[]): object {
  const failed = reports.filter((r) => !r.ok).length;
  return { ok: failed === 0, passed: reports.length - failed, failed, scenarios: reports };
}

/** The machine-readable report of files refused before anything ran. */
export function jsonRefusal(errors: ScenarioError[]): object {
  return { ok: false, refused: errors.flatMap((e) => e.issues.map((i) => ({ file: e.file, ...i }))) };
}
