/**
 * `revproxy server --handler FILE`: the handler comes from an ES module whose
 * default export is `async (payload, ctx) => answer`, or a CommonJS module
 * that exports it (`module.exports = fn`, or `export default` compiled by tsc).
 */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { StartError, type Handler } from '../actors/index.js';

/** Why a module that exists could not be imported, and what to do about it. */
function whyNotLoaded(err: unknown, path: string): string {
  const e = err as NodeJS.ErrnoException;
  const first = String(e?.message ?? err).split('\n')[0]!;
  if (e?.code === 'ERR_MODULE_NOT_FOUND' || e?.code === 'MODULE_NOT_FOUND') {
    const m = /^Cannot find (?:package|module) '([^']+)' imported from (.+)$/.exec(first) ?? /^Cannot find module '([^']+)'/.exec(first);
    const what = m?.[1] ?? first;
    const from = m?.[2] ? ` from ${m[2]}` : '';
    return `it imports '${what}', which cannot be found${from}: install it in a node_modules folder beside the module or above it (or fix the path)`;
  }
  if (e?.code === 'ERR_UNKNOWN_FILE_EXTENSION' && /\.[cm]?tsx?$/.test(path)) {
    return `this Node (${process.version}) does not run TypeScript: compile it (tsc) and give the .js file, or use Node 22.18 or later, which runs TypeScript whose types can be erased`;
  }
  if (e?.code === 'ERR_UNSUPPORTED_TYPESCRIPT_SYNTAX') {
    return `this Node (${process.version}) does not run this TypeScript (${first}): it runs only TypeScript whose types can be erased (no enums, namespaces or parameter properties); compile it (tsc) and give the .js file`;
  }
  if (e instanceof SyntaxError) return `${e.name}: ${first} (node --check ${resolve(path)} shows where)`;
  return first;
}

/** Import the handler module at `path` (relative to the working directory); a StartError says what is wrong with it. */
export async function loadHandler(path: string): Promise<Handler> {
  const file = resolve(path);
  if (!existsSync(file)) throw new StartError(`handler module '${path}' cannot be loaded: the file does not exist`);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (err) {
    throw new StartError(`handler module '${path}' cannot be loaded: ${whyNotLoaded(err, path)}`);
  }
  let handler = mod.default;
  // CommonJS compiled from `export default` (tsc, Babel): Node gives the whole `exports` as the default, the function inside it.
  const compiled = handler as { __esModule?: unknown; default?: unknown } | null;
  if (typeof compiled === 'object' && compiled?.__esModule === true && typeof compiled.default === 'function') handler = compiled.default;
  if (typeof handler === 'object' && handler !== null) {
    const keys = Object.keys(handler);
    throw new StartError(`handler module '${path}' exports an object${keys.length ? ` (${keys.slice(0, 5).join(', ')})` : ''}, not a function: export the handler itself (export default async (payload, ctx) => answer, or module.exports = fn)`);
  }
  if (typeof handler !== 'function') {
    throw new StartError(`handler module '${path}' has no default export function (it exports ${typeof handler}); write: export default async (payload, ctx) => answer`);
  }
  return handler as Handler;
}
