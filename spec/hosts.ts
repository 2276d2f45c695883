/**
 * Host names for specs: `revproxy` processes that read an /etc/hosts of the spec's own, in a
 * mount namespace each (`unshare -m`, bind mounts over /etc/hosts, nsswitch.conf and resolv.conf),
 * with `hosts: files` as the only source of names (no DNS: a name not in the file fails at once,
 * ENOTFOUND) unless a DNS server is asked for. Rewriting the
 * file moves a name for every process at once, as a DNS record changing when a pod is replaced:
 * glibc reads the file at every lookup. The namespaces end with their processes; the file's
 * folder (`tempDir`) is removed in `remove()` and when the spec's process exits. Needs root and util-linux.
 */
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { nodeFlags } from '../bench/procs.js';
import { tempDir } from './helpers.js';
import { BIN, start, type Proc } from './procs.js';

export interface Names {
  /** Write the names: each name with its addresses, in order (the file is rewritten in place). */
  set(names: Record<string, string[]>): void;
  /** Run `revproxy ARGS` reading these names. */
  revproxy(args: string[]): Proc;
  remove(): void;
}

// The mounts go before the program: the file's inode is bound, so it is rewritten in place, never replaced.
const MOUNT = 'for f in hosts nsswitch.conf resolv.conf; do mount --bind "$0/$f" /etc/$f || exit 1; done && exec "$@"';

/** Why host names cannot be given here, or undefined when they can. */
export function cannotMakeHosts(): string | undefined {
  if (process.getuid?.() !== 0) return 'a mount namespace over /etc/hosts needs root (CI runs the specs as root)';
  try {
    execFileSync('unshare', ['-m', 'true'], { stdio: 'ignore' });
  } catch {
    return 'unshare -m fails here (util-linux missing, or mount namespaces not allowed)';
  }
  return undefined;
}

/**
 * A hosts file of the spec's own (`localhost` is 127.0.0.1 unless `names` says otherwise). With
 * `dns`, the DNS server at that address is asked first, waiting `dnsTimeoutS` for its answer, and
 * the file after it (glibc goes on to the next source when DNS fails): a spec makes it as slow as it likes.
 */
export function hostNames(names: Record<string, string[]> = {}, opts: { dns?: string; dnsTimeoutS?: number } = {}): Names {
  const dir = tempDir('names');
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  writeFileSync(join(dir, 'nsswitch.conf'), opts.dns ? 'hosts: dns files\n' : 'hosts: files\n');
  writeFileSync(join(dir, 'resolv.conf'), opts.dns ? `nameserver ${opts.dns}\noptions timeout:${opts.dnsTimeoutS ?? 1} attempts:1\n` : '');
  const set = (n: Record<string, string[]>): void => {
    const all = { localhost: ['127.0.0.1'], ...n };
    writeFileSync(join(dir, 'hosts'), Object.entries(all).flatMap(([name, addrs]) => addrs.map((a) => `${a} ${name}\n`)).join(''));
  };
  set(names);
  return {
    set,
    revproxy: (args) => start('unshare', ['-m', 'sh', '-c', MOUNT, dir, process.execPath, ...nodeFlags(BIN), BIN, ...args]),
    remove,
  };
}
