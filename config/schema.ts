/**
 * A small schema language over YAML syntax nodes. A schema reads a node and
 * either returns a typed value or records an issue at the node's line and
 * column saying what was expected. Every issue in a file is collected, so a
 * user fixes them all in one go. The scenario format (scenario/format.ts)
 * and the proxy's config file (config/proxy.ts) are each written once with
 * these combinators; their loaders, types and error messages all come from
 * that one description.
 */
import type * as Yaml from 'yaml';
import type { Document, LineCounter, Pair } from 'yaml';
import { lazyPackage } from '../transport/lazy.js';
import { RevproxyError, type Code } from '../transport/errors.js';

/** yaml, loaded when the first file is read (a proxy without a config file never loads it). */
export const yaml = lazyPackage<typeof Yaml>('yaml');

/** One problem in a file: where it is and what was expected there. */
export interface Issue {
  /** 1-based; 0 when the issue has no place in a file (settings that clash, from flags or a file). */
  line: number;
  col: number;
  /** Where in the document, e.g. `steps[2].send.count`. */
  path: string;
  message: string;
}

export interface ReadContext {
  doc: Document;
  lines: LineCounter;
  issues: Issue[];
}

/** Where a value sits: its path, and an offset in the source for its line number. */
export interface At {
  path: string;
  offset: number;
}

export const INVALID: unique symbol = Symbol('invalid');
export type Read<T> = T | typeof INVALID;

export interface Schema<T> {
  /** What a user must write here, in words: "a whole number of milliseconds". */
  readonly expected: string;
  read(node: unknown, at: At, ctx: ReadContext): Read<T>;
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

/** `file:line:col: path: message`, one line per issue. */
export function formatIssues(file: string, issues: Issue[]): string {
  return issues.map((i) => `${i.line ? `${file}:${i.line}:${i.col}` : file}: ${i.path ? `${i.path}: ` : ''}${i.message}`).join('\n');
}

/** A file read with these schemas that cannot be used (a config file, a scenario): every problem in it, as `formatIssues` writes them. */
export class IssuesError<C extends Code = Code> extends RevproxyError<C> {
  constructor(
    code: C,
    readonly file: string,
    readonly issues: Issue[],
  ) {
    super(code, formatIssues(file, issues));
    this.name = 'IssuesError';
  }
}

/** A value that is a reference to an environment variable, as a shell, compose or HAProxy would expand it (`${NAME}`, `${NAME:-default}`, `$NAME`). */
export const ENV_REFERENCE = /^\$(\{[A-Za-z_][A-Za-z0-9_]*(:?[-=?+][^}]*)?\}|[A-Za-z_][A-Za-z0-9_]*)$/;
/** What to do instead of such a reference. */
export const NOT_EXPANDED = 'nothing here expands environment variables (as a shell or compose would): write the value itself, or give it by its flag or environment variable (docs/CONFIG.md)';

/** A line whose value is an IPv6 address, or starts with `[`, written without quotes (`host: ::`, `listen: [::1]:9100`): YAML reads no such value as text. */
const UNQUOTED_ADDRESS = /^\s*(?:-\s+)?[\w.-]+:\s+(?:[0-9A-Fa-f]*::|\[)/;
/** What to do about such a value. */
const QUOTE_ADDRESS = "quote a value that is an IPv6 address or starts with '[' (host: '::', listen: '[::1]:9100'): YAML reads it as a mapping or a list";

/**
 * What yaml says of an error, in the words of a file's author: its first line, but for two documents in
 * one file, which yaml said to its caller ("Source contains multiple documents; please use
 * YAML.parseAllDocuments()"). A config, a scenario and a tokens file are each one document.
 */
export function yamlErrorWords(e: { code?: string; message: string }): string {
  if (e.code === 'MULTIPLE_DOCS') return 'a second document begins here (---): the file holds one document; remove this line to join the two, or keep one of them';
  return e.message.split('\n')[0]!;
}

/**
 * Parse YAML text and read it with `schema`. Syntax errors and every value
 * that is not what the schema expects come back as issues, with line and column.
 */
export function readYaml<T>(source: string, schema: Schema<T>): { value?: T; ctx: ReadContext } {
  const lines = new (yaml().LineCounter)();
  const doc = yaml().parseDocument(source, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const issues: Issue[] = doc.errors.map((e) => {
    // linePos is filled only with prettyErrors; the offset is always there.
    const pos = e.linePos?.[0] ?? (e.pos ? lines.linePos(e.pos[0]) : { line: 1, col: 1 });
    // The error's own line, by the offsets the line counter keeps (not the whole file split again for each error).
    const line = source.slice(lines.lineStarts[pos.line - 1] ?? 0, lines.lineStarts[pos.line] ?? source.length);
    const quote = UNQUOTED_ADDRESS.test(line) ? `: ${QUOTE_ADDRESS}` : '';
    return { line: pos.line, col: pos.col, path: '', message: `not valid YAML: ${yamlErrorWords(e)}${quote}` };
  });
  if (!issues.length) issues.push(...repeatedKeys(doc, lines));
  const ctx: ReadContext = { doc, lines, issues };
  if (issues.length) return { ctx };
  const value = schema.read(doc.contents, { path: '', offset: 0 }, ctx);
  return value === INVALID || issues.length ? { ctx } : { value, ctx };
}

/**
 * Keys written twice in one mapping, each at its second writing, in yaml's words for them. yaml's own
 * check (`uniqueKeys`) compares each key with every one before it: 2.4 s for a file of 20,000 keys
 * (a tokens list of 20,000 policies), 67 s for 100,000, each reload and start blocking the proxy that
 * long (its clients unanswered, its health checks failing). A set per mapping keeps it linear: 0.4 and 1.7 s.
 */
function repeatedKeys(doc: Document, lines: LineCounter): Issue[] {
  const issues: Issue[] = [];
  yaml().visit(doc, {
    Map(_, map) {
      const seen = new Set<unknown>();
      for (const { key } of map.items) {
        if (!yaml().isScalar(key)) continue;
        if (!seen.has(key.value)) {
          seen.add(key.value);
          continue;
        }
        const { line, col } = lines.linePos(key.range?.[0] ?? 0);
        issues.push({ line, col, path: '', message: 'not valid YAML: Map keys must be unique' });
      }
    },
  });
  return issues;
}

export function report(ctx: ReadContext, at: At, message: string): typeof INVALID {
  const { line, col } = ctx.lines.linePos(at.offset);
  ctx.issues.push({ line, col, path: at.path, message });
  return INVALID;
}

/** The source offset of a node, or the parent's when the node is absent. */
export function offsetOf(node: unknown, fallback: number): number {
  const range = (node as { range?: [number, number, number] } | null)?.range;
  return range ? range[0] : fallback;
}

function resolve(node: unknown, ctx: ReadContext): unknown {
  return yaml().isAlias(node) ? node.resolve(ctx.doc) : node;
}

/** Short, readable rendering of what the user wrote. */
export function shown(node: unknown, ctx: ReadContext): string {
  const n = resolve(node, ctx);
  if (n === null || n === undefined) return 'nothing';
  if (yaml().isMap(n)) return 'a mapping';
  if (yaml().isSeq(n)) return 'a list';
  if (yaml().isScalar(n)) {
    // `.inf` and `.nan` as written: JSON has no such numbers, and said them as null.
    if (typeof n.value === 'number' && !Number.isFinite(n.value)) return written(n);
    const text = JSON.stringify(n.value);
    return text === undefined ? String(n.value) : text.length > 40 ? `${text.slice(0, 37)}...` : text;
  }
  return String(n);
}

/** The text of a scalar as the file wrote it (`0111`, `0x10`), where YAML read it as something else (111, 16); its value's text otherwise. */
export function written(n: { value: unknown; source?: string }): string {
  return typeof n.source === 'string' ? n.source : String(n.value);
}

/**
 * A scalar converted by `convert` (given the value YAML read, and the text as written: `written`);
 * `undefined` from it means "not what was expected". `near`: the words it takes, for a "did you
 * mean" when what was written is one or two edits from one.
 */
export function scalar<T>(
  expected: string,
  convert: (value: unknown, source: string) => T | undefined,
  hint?: (value: unknown, source: string) => string | undefined,
  near?: readonly string[],
): Schema<T> {
  return {
    expected,
    read(node, at, ctx) {
      const n = resolve(node, ctx);
      const isScalar = yaml().isScalar(n);
      const value = isScalar ? convert(n.value, written(n)) : undefined;
      if (value === undefined) {
        // `host: [::1]` is a list of one item: the brackets of an IPv6 address are YAML's own.
        const more = isScalar ? hint?.(n.value, written(n)) ?? (ENV_REFERENCE.test(written(n)) ? NOT_EXPANDED : undefined) : yaml().isSeq(n) && n.flow ? QUOTE_ADDRESS : undefined;
        const meant = isScalar && near && !more ? suggest(written(n), near) : '';
        return report(ctx, { ...at, offset: offsetOf(n, at.offset) }, `expected ${expected}, got ${shown(n, ctx)}${meant}${more ? `: ${more}` : ''}`);
      }
      return value;
    },
  };
}

/**
 * YAML reads 12, 1.5, true and null as other things than text: say how to write them as text, as
 * written (`0x1234abcd`, which YAML reads as 305441741: the hint named the number, a secret the
 * servers do not have).
 */
export const text = scalar('a string', (v) => (typeof v === 'string' ? v : undefined), (v, source) =>
  v === null || typeof v === 'number' || typeof v === 'boolean' ? `YAML reads it as ${v === null ? 'null' : `a ${typeof v}`}; quote it to make it text (${JSON.stringify(source)})` : undefined,
);

/**
 * Ids and policies: a string, or a whole number taken as written (`0111` is policy "0111", as
 * `--pp 0111` registers it, not 111; `12345678901234567890` keeps its digits). They were the
 * number's decimal string, so a policy written with a leading zero, in hex or past 2^53 quietly
 * named another.
 */
export const name = scalar('a string or a whole number', (v, source) => {
  if (typeof v === 'string' && v.length > 0) return v;
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0) return source;
  return undefined;
});

export function whole(expected: string, min = 0): Schema<number> {
  return scalar(`${expected} (a whole number, at least ${min})`, (v) =>
    typeof v === 'number' && Number.isInteger(v) && v >= min ? v : undefined,
  );
}

export const fraction = scalar('a fraction from 0 to 1 (e.g. 0.99)', (v) => (typeof v === 'number' && v >= 0 && v <= 1 ? v : undefined));
export const flag = scalar('true or false', (v) => (typeof v === 'boolean' ? v : undefined));

/**
 * One of a few words (a behaviour, an error code). A word not among them is refused with the
 * nearest one, as an unknown key is: `NO_SEVRER` was refused with only the list to search. `hint`
 * says more about a value that is known to be wrong (a code no such step can get).
 */
export function oneOf<const V extends string>(values: readonly V[], hint?: (value: unknown) => string | undefined): Schema<V> {
  return scalar(`one of ${values.join(', ')}`, (v) => (typeof v === 'string' && (values as readonly string[]).includes(v) ? (v as V) : undefined), hint, values);
}

/** Any YAML value, as plain JSON-like data. */
export const anything: Schema<unknown> = {
  expected: 'any value',
  read: (node, _at, ctx) => {
    const n = resolve(node, ctx) as { toJSON?: () => unknown } | null;
    return n && typeof n.toJSON === 'function' ? n.toJSON() : n;
  },
};

/** A mapping's key as written: `0111:` is "0111" (a policy), not 111. */
const keyOf = (pair: Pair): string => (yaml().isScalar(pair.key) ? (typeof pair.key.value === 'string' ? pair.key.value : written(pair.key)) : String(pair.key));

/**
 * A schema of one kind of node (a list, a mapping): aliases resolved, anything else refused with what
 * was expected; `read` gets the node and where it starts. `is` is asked for when a file is read (yaml loads lazily).
 */
function ofKind<N, T>(expected: string, is: () => (n: unknown) => n is N, read: (n: N, offset: number, at: At, ctx: ReadContext) => Read<T>, hint?: (value: unknown) => string | undefined): Schema<T> {
  return {
    expected,
    read(node, at, ctx) {
      const n = resolve(node, ctx);
      const offset = offsetOf(n, at.offset);
      if (is()(n)) return read(n, offset, at, ctx);
      const more = yaml().isScalar(n) ? hint?.(n.value) : undefined;
      return report(ctx, { ...at, offset }, `expected ${expected}, got ${shown(n, ctx)}${more ? `: ${more}` : ''}`);
    },
  };
}

/**
 * Each child of a list or mapping read with one schema, at its own path: their values in order, or
 * INVALID when any was not what it should be (all are read, so every issue in them is reported).
 */
function readEach<T>(children: Array<{ key: string; node: unknown; at: At }>, schema: Schema<T>, ctx: ReadContext): Array<[string, T]> | typeof INVALID {
  const out: Array<[string, T]> = [];
  let ok = true;
  for (const { key, node, at } of children) {
    const v = schema.read(node, at, ctx);
    if (v === INVALID) ok = false;
    else out.push([key, v]);
  }
  return ok ? out : INVALID;
}

export function list<T>(item: Schema<T>, opts: { min?: number } = {}): Schema<T[]> {
  const min = opts.min ?? 0;
  const expected = `a list${min ? ` of at least ${min}` : ''} of ${item.expected}`;
  return ofKind(expected, () => yaml().isSeq, (n, offset, at, ctx) => {
    if (n.items.length < min) return report(ctx, { ...at, offset }, `expected ${expected}, got ${n.items.length}`);
    const read = readEach(n.items.map((el, i) => ({ key: String(i), node: el, at: { path: `${at.path}[${i}]`, offset: offsetOf(el, offset) } })), item, ctx);
    return read === INVALID ? read : read.map(([, v]) => v);
  });
}

/** One value, or a list of at least one of them (a secret, or the secrets accepted while servers move from one to the next). */
export function oneOrList<T>(item: Schema<T>): Schema<T | T[]> {
  const many = list(item, { min: 1 });
  return {
    expected: `${item.expected}, or a list of them`,
    read: (node, at, ctx) => (yaml().isSeq(resolve(node, ctx)) ? many.read(node, at, ctx) : item.read(node, at, ctx)),
  };
}

/**
 * A mapping whose keys are free (ids) and whose values all follow one schema. Every key is the object's own, `__proto__` too.
 * `hint`: more words for a scalar given instead of the mapping (`tokens: tokens.yaml`, a path where `tokens_file` takes one).
 */
export function dict<T>(value: Schema<T>, hint?: (value: unknown) => string | undefined): Schema<Record<string, T>> {
  const expected = `a mapping of names to ${value.expected}`;
  return ofKind(expected, () => yaml().isMap, (n, offset, at, ctx) => {
    const read = readEach((n.items as Pair[]).map((pair) => ({ key: keyOf(pair), node: pair.value, at: { path: `${at.path}.${keyOf(pair)}`, offset: offsetOf(pair.key, offset) } })), value, ctx);
    return read === INVALID ? read : Object.fromEntries(read);
  }, hint);
}

export interface Field<T, R extends boolean> {
  schema: Schema<T>;
  required: R;
  doc: string;
}
export const req = <T>(schema: Schema<T>, doc = ''): Field<T, true> => ({ schema, required: true, doc });
export const opt = <T>(schema: Schema<T>, doc = ''): Field<T, false> => ({ schema, required: false, doc });

type Fields = Record<string, Field<any, boolean>>;
type Simplify<T> = { [K in keyof T]: T[K] } & {};
export type ObjectOf<F extends Fields> = Simplify<
  { [K in keyof F as F[K]['required'] extends true ? K : never]: Infer<F[K]['schema']> } & {
    [K in keyof F as F[K]['required'] extends true ? never : K]?: Infer<F[K]['schema']>;
  }
>;

export interface ObjectSchema<F extends Fields> extends Schema<ObjectOf<F>> {
  readonly fields: F;
}

/**
 * A mapping with known keys. An unknown key is refused with the keys allowed
 * (and the nearest one, when it looks like a typo). `check` adds rules that
 * span fields; it returns a problem in words, or nothing.
 */
export function object<F extends Fields>(
  what: string,
  fields: F,
  check?: (v: ObjectOf<F>) => string | undefined,
  /** Keys that belong somewhere else, and where: an unknown key found here that is one of them says so. */
  elsewhere?: Record<string, string>,
  /** Unknown keys (in snake_case) that mean a key written otherwise, and how it is written: `log_level` is `log: {level}`. */
  meant?: Record<string, string>,
): ObjectSchema<F> {
  const keys = Object.keys(fields);
  const expected = `a mapping (${what}) with keys ${keys.join(', ')}`;
  const read = (n: Yaml.YAMLMap, offset: number, at: At, ctx: ReadContext): Read<ObjectOf<F>> => {
    const out: Record<string, unknown> = {};
    const seen = new Set<string>();
    let ok = true;
    for (const pair of n.items as Pair[]) {
      const key = keyOf(pair);
      const keyAt = { path: at.path ? `${at.path}.${key}` : key, offset: offsetOf(pair.key, offset) };
      const field = fields[key];
      if (!field) {
        const there = elsewhere?.[key];
        // A key written as a flag (max-connections) or as the library's option (maxConnections) is the same word in snake_case.
        const cased = there ? undefined : keys.find((k) => k === snakeCase(key));
        const near = there ? undefined : cased ?? (meant && Object.hasOwn(meant, snakeCase(key)) ? meant[snakeCase(key)] : nearest(key, keys));
        report(ctx, keyAt, there ? `'${key}' does not go in ${what}: it belongs to ${there}` : `unknown key '${key}' in ${what}; expected one of: ${keys.join(', ')}${near ? ` (did you mean '${near}'?${cased ? ' keys are snake_case' : ''})` : ''}`);
        if (near) seen.add(near); // a misspelt key is reported once, not also as missing
        ok = false;
        continue;
      }
      seen.add(key);
      const v = field.schema.read(pair.value, { ...keyAt, offset: offsetOf(pair.value, keyAt.offset) }, ctx);
      if (v === INVALID) ok = false;
      else out[key] = v;
    }
    for (const key of keys) {
      if (fields[key]!.required && !seen.has(key)) {
        report(ctx, { ...at, offset }, `${what} needs '${key}': ${fields[key]!.schema.expected}`);
        ok = false;
      }
    }
    if (!ok) return INVALID;
    const problem = check?.(out as ObjectOf<F>);
    return problem ? report(ctx, { ...at, offset }, `${what}: ${problem}`) : (out as ObjectOf<F>);
  };
  return { ...ofKind(expected, () => yaml().isMap, read), fields };
}

/**
 * A mapping that is one of several kinds, told apart by which kind's key it
 * holds (`send:`, `kill:`, ...). Each kind is an object schema that holds its
 * own key as a field.
 */
export function tagged<K extends Record<string, ObjectSchema<Fields>>>(what: string, kinds: K): Schema<{ [T in keyof K]: Infer<K[T]> & { kind: T } }[keyof K]> {
  const names = Object.keys(kinds);
  const expected = `a ${what}: a mapping with one of ${names.join(', ')}`;
  type Tagged = { [T in keyof K]: Infer<K[T]> & { kind: T } }[keyof K];
  return ofKind<Yaml.YAMLMap, Tagged>(expected, () => yaml().isMap, (n, offset, at, ctx) => {
    const keys = (n.items as Pair[]).map(keyOf);
    const found = keys.filter((k) => k in kinds);
    if (found.length === 0) {
      const common = new Set(Object.values(kinds).flatMap((s) => Object.keys(s.fields)));
      const odd = keys.filter((k) => !common.has(k));
      const pair = (n.items as Pair[])[keys.indexOf(odd[0] ?? '')];
      const where = { ...at, offset: pair ? offsetOf(pair.key, offset) : offset };
      return report(ctx, where, `${odd.length ? `unknown ${what} '${odd[0]}'` : `no ${what} given`}; expected one of: ${names.join(', ')}${suggest(odd[0] ?? '', names)}`);
    }
    if (found.length > 1) return report(ctx, { ...at, offset }, `one ${what} per entry, got ${found.join(' and ')}; split them into separate ${what}s`);
    const kind = found[0]!;
    const v = kinds[kind]!.read(n, at, ctx);
    return v === INVALID ? INVALID : ({ ...v, kind } as never);
  });
}

/** Adds where the value starts (line and column), for reports that point back into the file. */
export function located<T extends object>(schema: Schema<T>): Schema<T & { line: number; col: number }> {
  return {
    expected: schema.expected,
    read(node, at, ctx) {
      const v = schema.read(node, at, ctx);
      if (v === INVALID) return v;
      const { line, col } = ctx.lines.linePos(offsetOf(node, at.offset));
      return { ...v, line, col };
    },
  };
}

/** Defers to a schema defined later: for recursive formats. */
export function lazy<T>(get: () => Schema<T>, expected: string): Schema<T> {
  return { expected, read: (node, at, ctx) => get().read(node, at, ctx) };
}

/** A schema with one more rule on the value it read. */
export function refine<T>(schema: Schema<T>, check: (v: T) => string | undefined): Schema<T> {
  return {
    expected: schema.expected,
    read(node, at, ctx) {
      const v = schema.read(node, at, ctx);
      if (v === INVALID) return v;
      const problem = check(v);
      return problem ? report(ctx, { ...at, offset: offsetOf(node, at.offset) }, problem) : v;
    },
  };
}

/** `maxConnections` and `max-connections` as a config key is written: `max_connections`. */
function snakeCase(key: string): string {
  return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/-/g, '_').toLowerCase();
}

/** The known word one or two edits away, when there is one, whatever the case (`no_server` is `NO_SERVER`): for "did you mean". */
export function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const c of candidates) {
    const d = distance(word.toLowerCase(), c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  if (!word) return undefined;
  // Else a longer spelling of one (`warning` for `warn`, as syslog and HAProxy spell it) is that one.
  return best ?? candidates.find((c) => c.length >= 3 && word.toLowerCase().startsWith(c.toLowerCase()));
}

function suggest(word: string, candidates: readonly string[]): string {
  const near = nearest(word, candidates);
  return near ? ` (did you mean '${near}'?)` : '';
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}
