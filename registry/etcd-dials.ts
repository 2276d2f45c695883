/**
 * The TCP connections one etcd client (registry/etcd.ts) dials, each given a connect timeout and all
 * ended when the client closes. grpc-js gives its dial (a `net.connect`) no timeout and never ends one
 * itself: a dial to a member whose packets are dropped (a powered-off host, a firewall's DROP) waits for
 * the kernel to give up its SYNs, about 127 s (tcp_syn_retries 6). And etcd3 closes a member's gRPC
 * clients on each failed call to it (its `resetAllServices`), which drops the dial's subchannel with the
 * dial still pending (grpc-js's channel close lets go of an unused subchannel at once); its next call
 * makes a new one, which dials again. So during a silent cut of one member, dials piled up in SYN-SENT
 * (a probe: 0.7 a second, levelling at 85-90, the process's open files 33 -> 126), and each one held
 * the process: a proxy stopped then took 59-139 s to exit after its last line, a server's exit check
 * called them revproxy's bug (`revproxy itself left it`, 12 ConnectWrap).
 *
 * Each address gRPC dials is marked (a load-balancing policy of our own, `revproxy_etcd_dials`, set by
 * the client's channel options, in front of gRPC's own pick_first): grpc-js hands the address to
 * `net.connect` as its options, and Node destroys a socket whose options' `signal` aborts. The mark
 * gives each dial a signal of its own, aborted by `close` (every dial and connection the client made),
 * and the dial is destroyed if it has not connected, and etcd said its first bytes on it, within
 * `connectMs` (the socket is seen through Node's `net.client.socket` diagnostics channel, published as
 * `net.connect` made it). Connected is not enough: grpc-js then waits, with no timeout either, for
 * the TLS handshake and for HTTP/2's SETTINGS, which etcd sends at once. A member that takes the
 * connection and says nothing (a listener that is not etcd, a TLS handshake that hangs, an etcd
 * stopped with SIGSTOP, whose kernel still completes connections) held each such dial until the
 * client closed, and etcd3's next channel dialled again: 8-9 of them open after 16 s (a proxy and a
 * server, etcds:// or etcd://). So each of a client's gRPC channels dials a member once at a time, for at most
 * `connectMs`: a few at once (a channel per etcd service it uses, and one etcd3 keeps a second after dropping it;
 * a proxy was seen with two pending, a proxy and a server with three), never a pile. Nothing of either library is patched; a grpc-js or Node that no longer passes these on
 * leaves the dials as they were, unmarked.
 */
import { subscribe } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import type { ChannelOptions, experimental } from '@grpc/grpc-js';
import { setDeadline, systemClock, type Timer } from '../transport/clock.js';

type Grpc = typeof import('@grpc/grpc-js');
type Experimental = Grpc['experimental'];
type Endpoint = experimental.Endpoint;
type Address = experimental.SubchannelAddress;

/** The name of the load-balancing policy that marks the addresses. */
const POLICY = 'revproxy_etcd_dials';

/** The dials of each open client, by the number its channel options name (`Dials.channelOptions`). */
const open = new Map<number, Dials>();
let made = 0;

/** The dial whose socket `net.connect` is making now: set as Node reads the signal, taken by the diagnostics channel's subscriber just after, in the same synchronous run. */
let making: Dial | undefined;

interface Dial {
  readonly dials: Dials;
  readonly controller: AbortController;
  readonly where: string;
  timer?: Timer;
  socket?: Socket;
}

export class Dials {
  private readonly id = ++made;
  /** Dials made (and their connections), until each socket has closed. */
  private readonly live = new Set<Dial>();
  private closed = false;

  constructor(grpc: Grpc, private readonly connectMs: number) {
    register(grpc.experimental);
    open.set(this.id, this);
  }

  /**
   * The channel options that put this client's dials under the policy. They also keep its subchannels
   * (and their connections) its own: gRPC shares a subchannel between channels only when their options
   * are equal. The service config is not taken from DNS (a TXT record could set another policy).
   */
  channelOptions(): ChannelOptions {
    return {
      'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ [POLICY]: { client: this.id } }] }),
      'grpc.service_config_disable_resolution': 1,
    };
  }

  /** `address`, marked: each socket `net.connect` makes for it has a signal of its own, from `dial`. */
  mark(address: Address): Address {
    if (this.closed) return closedMark(address);
    // A getter, read as Node makes each socket: enumerable, as net.Socket copies its options (`{ ...options }`) and reads
    // the copy. grpc-js 1.14 neither copies nor prints an address (it prints host:port); a read outside net.connect makes
    // a dial that no socket takes, dropped after the current run (`dial`).
    return Object.defineProperty({ ...address }, 'signal', { enumerable: true, get: () => this.dial(address).controller.signal });
  }

  /** The dial `net.connect` is making now (Node reads the signal more than once as it makes the socket: one dial for all). */
  private dial(address: Address): Dial {
    if (making?.dials === this) return making;
    const dial: Dial = { dials: this, controller: new AbortController(), where: 'host' in address ? `${address.host}:${address.port}` : address.path };
    // Closed meanwhile (a subchannel dialling again after its backoff): ended as it starts (`closedMark`).
    if (this.closed) {
      queueMicrotask(() => dial.controller.abort(new Error('the etcd client is closed')));
      return dial;
    }
    this.live.add(dial);
    making = dial;
    queueMicrotask(() => {
      if (making === dial) making = undefined;
      // Read by something other than net.connect: no socket to end.
      if (!dial.socket) this.live.delete(dial);
    });
    return dial;
  }

  /** `socket` was made for `dial`: it must connect, and etcd say its first bytes on it, within `connectMs`; it is let go once closed. */
  made(dial: Dial, socket: Socket): void {
    dial.socket = socket;
    socket.once('close', () => {
      dial.timer?.cancel();
      this.live.delete(dial);
    });
    // Published before net.connect starts the dial (`socket.connecting` is still false): it has `connectMs` from now. A
    // deadline (unref'd, as the pending socket holds the process while it dials): after a pause of this process, looked at
    // once what came meanwhile is read, not taken for no answer.
    if (this.closed) return;
    dial.timer = setDeadline(systemClock, () => {
      // Node's own words for a connect that timed out: gRPC says them as the member's last error.
      if (socket.connecting) socket.destroy(Object.assign(new Error(`connect ETIMEDOUT ${dial.where} (no answer within ${this.connectMs} ms)`), { code: 'ETIMEDOUT' }));
      // Connected, and nothing read: etcd answers a TLS ClientHello, and HTTP/2's preface, at once. The socket counts what TLS
      // and HTTP/2 read through it; destroyed, it fails the handshake or the session that grpc-js made on it, and gRPC dials again.
      else if (socket.bytesRead === 0) socket.destroy(Object.assign(new Error(`ETIMEDOUT: ${dial.where} took the connection but said nothing within ${this.connectMs} ms (no TLS handshake, no HTTP/2 greeting)`), { code: 'ETIMEDOUT' }));
    }, this.connectMs);
  }

  /** The client closed: every dial still pending is ended, and every connection it made (what gRPC left of them) closed. */
  close(): void {
    this.closed = true;
    open.delete(this.id);
    for (const dial of [...this.live]) {
      dial.timer?.cancel();
      dial.controller.abort(new Error('the etcd client is closed'));
    }
    this.live.clear();
  }
}

/**
 * `address`, marked for a client that is closed (a channel etcd3 lets run on for a second after it closed it, still
 * connecting): a socket made for it is destroyed as soon as it has started its dial. Not by a signal aborted already:
 * Node 20 destroys the socket with it as it makes it, and `connect` then undoes the destroy and dials all the same.
 */
function closedMark(address: Address): Address {
  return Object.defineProperty({ ...address }, 'signal', {
    enumerable: true,
    get: () => {
      const c = new AbortController();
      queueMicrotask(() => c.abort(new Error('the etcd client is closed')));
      return c.signal;
    },
  });
}

let registered = false;

/** The policy (once in the process) and the subscriber that takes each socket made for a marked address. */
function register(x: Experimental): void {
  if (registered) return;
  registered = true;
  subscribe('net.client.socket', (message) => {
    const dial = making;
    if (!dial) return;
    making = undefined;
    dial.dials.made(dial, (message as { socket: Socket }).socket);
  });

  class Config implements experimental.TypedLoadBalancingConfig {
    constructor(readonly client: number) {}
    getLoadBalancerName(): string {
      return POLICY;
    }
    toJsonObject(): object {
      return { [POLICY]: { client: this.client } };
    }
    static createFromJson(obj: unknown): Config {
      return new Config(Number((obj as { client?: unknown } | undefined)?.client));
    }
  }

  const pickFirst = x.parseLoadBalancingConfig({ pick_first: {} });

  /** gRPC's pick_first, given the addresses marked by the client's `Dials` (as they are while it is closed: there are none). */
  class Policy implements experimental.LoadBalancer {
    private readonly child: InstanceType<Experimental['ChildLoadBalancerHandler']>;
    constructor(helper: experimental.ChannelControlHelper) {
      this.child = new x.ChildLoadBalancerHandler(helper);
    }
    updateAddressList(endpoints: Parameters<experimental.LoadBalancer['updateAddressList']>[0], config: experimental.TypedLoadBalancingConfig, options: ChannelOptions, note: string): boolean {
      const id = (config as Config).client;
      const dials = open.get(id);
      // A client closed already (a channel etcd3 let run on for a second after the close, connecting): each dial is ended as it starts.
      const mark = dials ? (a: Address) => dials.mark(a) : id > 0 && id <= made ? closedMark : undefined;
      const marked = mark && endpoints.ok ? { ok: true as const, value: endpoints.value.map((e: Endpoint) => ({ ...e, addresses: e.addresses.map(mark) })) } : endpoints;
      return this.child.updateAddressList(marked, pickFirst, options, note);
    }
    exitIdle(): void {
      this.child.exitIdle();
    }
    resetBackoff(): void {
      this.child.resetBackoff();
    }
    destroy(): void {
      this.child.destroy();
    }
    getTypeName(): string {
      return POLICY;
    }
  }

  x.registerLoadBalancerType(POLICY, Policy, Config);
}
