/**
 * Which build runs: package.json's version, and the git commit of the checkout it runs from (its
 * first 12 hex digits; `unknown` outside one, as in a copy without `.git`). Every build said
 * 0.1.0, so neither `--version` nor `revproxy_build_info` could tell the builds of a rolling
 * upgrade apart (Prometheus's own build_info names its revision as well).
 */
import { readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

export const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

export const REVISION = gitRevision(ROOT) ?? 'unknown';

/** What `--version` prints: `0.1.0 (revision 0123456789ab)`, or the version alone outside a checkout. */
export const VERSION_LINE = REVISION === 'unknown' ? VERSION : `${VERSION} (revision ${REVISION})`;

/** The commit checked out at `root` (a clone, or a worktree whose `.git` is a file naming its folder), read from git's files, not its program. */
function gitRevision(root: string): string | undefined {
  try {
    let dir = join(root, '.git');
    if (statSync(dir).isFile()) dir = resolve(root, /^gitdir: (.+)$/m.exec(readFileSync(dir, 'utf8'))![1]!.trim());
    const common = (() => {
      try {
        return resolve(dir, readFileSync(join(dir, 'commondir'), 'utf8').trim());
      } catch {
        return dir;
      }
    })();
    const head = readFileSync(join(dir, 'HEAD'), 'utf8').trim();
    const ref = /^ref: (.+)$/.exec(head)?.[1];
    const hash = !ref ? head : (() => {
      for (const d of [dir, common]) {
        try {
          return readFileSync(join(d, ref), 'utf8').trim();
        } catch { /* not a loose ref here */ }
      }
      const packed = readFileSync(join(common, 'packed-refs'), 'utf8');
      return new RegExp(`^([0-9a-f]{40}) ${ref.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm').exec(packed)?.[1];
    })();
    return hash && /^[0-9a-f]{40,64}$/.test(hash) ? hash.slice(0, 12) : undefined;
  } catch {
    return undefined;
  }
}
