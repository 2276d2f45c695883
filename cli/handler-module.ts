/**
 * `revproxy server --handler FILE`: the handler comes from an ES module whose
 * default export is `async (payload, ctx) => answer`.
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
  const handler = mod.default;
  if (typeof handler !== 'function') {
    throw new StartError(`handler module '${path}' has no default export function (it exports ${typeof handler}); write: export default async (payload, ctx) => answer`);
  }
  return handler as Handler;
}
