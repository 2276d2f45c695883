/**
 * `revproxy server --handler FILE`: the handler comes from an ES module whose
 * default export is `async (payload, ctx) => answer`, or a CommonJS module
 * that exports it (`module.exports = fn`, or `export default` compiled by tsc).
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { StartError, type Handler } from '../actors/index.js';

/** Import the handler module at `path` (relative to the working directory); a StartError says what is wrong with it. */
export async function loadHandler(path: string): Promise<Handler> {
  const url = pathToFileURL(resolve(path)).href;
  let mod: { default?: unknown };
  try {
    mod = (await import(url)) as { default?: unknown };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ERR_MODULE_NOT_FOUND' && e.message.includes(resolve(path)) ? 'the file does not exist' : e.message.split('\n')[0];
    throw new StartError(`handler module '${path}' cannot be loaded: ${why}`);
  }
  let handler = mod.default;
  // CommonJS compiled from `export default` (tsc, Babel): Node gives the whole `exports` as the default, the function inside it.
  const compiled = handler as { __esModule?: unknown; default?: unknown } | null;
  if (typeof compiled === 'object' && compiled?.__esModule === true && typeof compiled.default === 'function') handler = compiled.default;
  if (typeof handler !== 'function') {
    throw new StartError(`handler module '${path}' has no default export function (it exports ${typeof handler}); write: export default async (payload, ctx) => answer`);
  }
  return handler as Handler;
}
