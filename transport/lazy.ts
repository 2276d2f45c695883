/**
 * Packages that only some commands use, loaded the first time they are used
 * instead of when the program starts. A proxy without JSON logs, an admin
 * endpoint or a config file never loads pino, prom-client or yaml, and only
 * `load` and `bench` load hdr-histogram-js and cli-progress
 * (hdr-histogram-js also pages in ICU's data, for a number format it makes
 * when loaded). Together that is about 15 MB of every proxy's and server's
 * resident memory (measured with `/proc/PID/status`, idle, before and after).
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/**
 * A getter that loads the CommonJS package `name` on its first call.
 *
 * @example
 * import type * as Yaml from 'yaml';
 * const yaml = lazyPackage<typeof Yaml>('yaml');
 * yaml().parse(text);
 */
export function lazyPackage<T>(name: string): () => T {
  let mod: T | undefined;
  return () => (mod ??= require(name) as T);
}
