/**
 * Hosts on a real network for specs: two network namespaces joined by a veth
 * pair, and a silent cut between them (nftables dropping every packet, both
 * ways: no FIN, no RST, as a partition or a pulled cable). Needs root,
 * iproute2 and nftables (`.ci/run` installs nftables when missing). Each
 * namespace is named after this process, and removed in `remove()` and when
 * the process exits, whatever happened.
 */
import { execFileSync } from 'node:child_process';
import { BIN, start, type Proc } from './procs.js';

export interface Host {
  /** The namespace's name. */
  readonly ns: string;
  /** Its address on the link. */
  readonly addr: string;
  /** Run `revproxy ARGS` inside it. */
  revproxy(args: string[]): Proc;
  /** Run a TypeScript file of the project (`node --import tsx FILE ARGS`) inside it. */
  tsx(file: string, args: string[]): Proc;
  /** The TCP connections it holds to `peer` (established, closing or orphaned), as `ss` lists them. */
  socketsTo(peer: Host): string[];
}

export interface Link {
  readonly a: Host;
  readonly b: Host;
  /**
   * Drop every packet in and out of `b`, silently; with `port`, only those to and from that TCP port of `a` (an etcd there, say);
   * with `ports`, only those between the hosts to or from any of these TCP ports, on either side (etcd members' client and peer ports: a cluster split);
   * with `flow`, only those of `b`'s connection from this local TCP port (a NAT or firewall that forgot that one flow: a new connection goes through).
   */
  cut(only?: { port: number } | { ports: number[] } | { flow: number }): void;
  heal(): void;
  remove(): void;
}

const run = (args: string[], input?: string): string => execFileSync(args[0]!, args.slice(1), { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
const inNs = (ns: string, args: string[]): string => run(['ip', 'netns', 'exec', ns, ...args]);

let made = 0;

/** Why namespaces cannot be made here, or undefined when they can. */
export function cannotMakeHosts(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root (CI runs the specs as root)';
  for (const tool of ['ip', 'nft']) {
    try {
      run(['sh', '-c', `command -v ${tool}`]);
    } catch {
      return `${tool} is not installed (apt-get install -y ${tool === 'ip' ? 'iproute2' : 'nftables'})`;
    }
  }
  return undefined;
}

/**
 * Two hosts, `a` at 10.201.0.1 and `b` at 10.201.0.2, on a veth link of their own.
 * `orphanRetries` sets the kernel's `tcp_orphan_retries` in `a`: a socket `a` closed
 * while cut off is then forgotten within a second, as after a long cut, instead of
 * resending its FIN for about two minutes.
 */
export function twoHosts(opts: { orphanRetries?: number } = {}): Link {
  const tag = `rp${process.pid}x${made++}`;
  const names = [`${tag}a`, `${tag}b`];
  const remove = (): void => {
    for (const ns of names) {
      try {
        run(['ip', 'netns', 'del', ns]);
      } catch {
        // not made, or gone already
      }
    }
  };
  process.once('exit', remove);
  try {
    for (const ns of names) run(['ip', 'netns', 'add', ns]);
    run(['ip', 'link', 'add', `${tag}va`, 'netns', names[0]!, 'type', 'veth', 'peer', 'name', `${tag}vb`, 'netns', names[1]!]);
    const hosts = names.map((ns, i) => {
      const dev = `${tag}v${'ab'[i]}`;
      const addr = `10.201.0.${i + 1}`;
      inNs(ns, ['ip', 'addr', 'add', `${addr}/30`, 'dev', dev]);
      inNs(ns, ['ip', 'link', 'set', dev, 'up']);
      inNs(ns, ['ip', 'link', 'set', 'lo', 'up']);
      const host: Host = {
        ns,
        addr,
        revproxy: (args) => start('ip', ['netns', 'exec', ns, process.execPath, BIN, ...args]),
        tsx: (file, args) => start('ip', ['netns', 'exec', ns, process.execPath, '--import', 'tsx', file, ...args]),
        socketsTo: (peer) => inNs(ns, ['ss', '-tanH', 'dst', peer.addr]).split('\n').filter((l) => l.trim() !== ''),
      };
      return host;
    });
    if (opts.orphanRetries !== undefined) inNs(names[0]!, ['sysctl', '-qw', `net.ipv4.tcp_orphan_retries=${opts.orphanRetries}`]);
    const [a, b] = hosts as [Host, Host];
    return {
      a,
      b,
      cut: (only) => {
        const set = only && 'ports' in only ? `{ ${only.ports.join(', ')} }` : undefined;
        const [inRule, outRule] = set
          ? [`ip saddr ${a.addr} tcp sport ${set} drop; ip saddr ${a.addr} tcp dport ${set} drop`, `ip daddr ${a.addr} tcp dport ${set} drop; ip daddr ${a.addr} tcp sport ${set} drop`]
          : only && 'port' in only
            ? [`ip saddr ${a.addr} tcp sport ${only.port} drop`, `ip daddr ${a.addr} tcp dport ${only.port} drop`]
            : only && 'flow' in only
              ? [`ip saddr ${a.addr} tcp dport ${only.flow} drop`, `ip daddr ${a.addr} tcp sport ${only.flow} drop`]
              : ['iifname != "lo" drop', 'oifname != "lo" drop'];
        const rules = `table inet cut {\n chain in { type filter hook input priority 0; ${inRule}; }\n chain out { type filter hook output priority 0; ${outRule}; }\n}\n`;
        run(['ip', 'netns', 'exec', b.ns, 'nft', '-f', '-'], rules);
      },
      heal: () => inNs(b.ns, ['nft', 'delete', 'table', 'inet', 'cut']),
      remove,
    };
  } catch (err) {
    remove();
    throw err;
  }
}
