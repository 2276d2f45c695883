// A reference for the bench, not a product: the least a Node.js process can
// do to relay this protocol per message. It reads frames, finds each
// request's policy and seq with a minimal scan, picks the next server of that
// policy in turn, copies the frame to it with its own seq, and copies the
// answer back with the client's seq. No validation, no timeouts, no retries,
// no registration, no state machines, no limits: bad input breaks it.
// `revproxy bench --targets ...,relay` runs it beside the proxy, so each run
// shows how close to direct and to HAProxy a Node relay can get at all on
// this machine.
//
//   node bench/bare-relay.mjs LISTEN_PORT POLICY:PORT,PORT [POLICY:PORT,...]
import net from 'node:net';

const port = Number(process.argv[2]);
const pools = new Map();
const dirty = [];
let scheduled = false;

function flushAll() {
  scheduled = false;
  for (const c of dirty) {
    const bytes = c.out.subarray(0, c.len);
    c.out = Buffer.allocUnsafe(65536);
    c.len = 0;
    c.sock.write(bytes);
  }
  dirty.length = 0;
}

function room(c, n) {
  if (c.len + n > c.out.length) {
    const grown = Buffer.allocUnsafe(Math.max(c.out.length * 2, c.len + n));
    c.out.copy(grown, 0, 0, c.len);
    c.out = grown;
  }
  if (c.len === 0) {
    dirty.push(c);
    if (!scheduled) {
      scheduled = true;
      setImmediate(flushAll);
    }
  }
}

// Scan results (one frame at a time).
let seqStart = 0;
let seqEnd = 0;
let seq = 0;
let policy = '';

/** Find seq (value bytes and number) and the policy string in a flat map of short scalars. */
function scan(b, s, e) {
  let p = s;
  let n = b[p++];
  if (n === 0xde) {
    n = b.readUInt16BE(p);
    p += 2;
  } else n -= 0x80;
  for (let i = 0; i < n; i++) {
    const klen = b[p++] - 0xa0;
    const k0 = b[p];
    const k1 = b[p + 1];
    p += klen;
    const vs = p;
    const t = b[p++];
    let v = 0;
    let slen = -1;
    if (t <= 0x7f) v = t;
    else if (t >= 0xa0 && t <= 0xbf) slen = t - 0xa0;
    else if (t === 0xcc) v = b[p++];
    else if (t === 0xcd) { v = b.readUInt16BE(p); p += 2; }
    else if (t === 0xce) { v = b.readUInt32BE(p); p += 4; }
    else if (t === 0xd9) slen = b[p++];
    else return false;
    if (slen >= 0) {
      if (klen === 10 && k0 === 0x70) policy = b.latin1Slice(p, p + slen);
      p += slen;
    }
    if (klen === 3 && k0 === 0x73 && k1 === 0x65) {
      seqStart = vs;
      seqEnd = p;
      seq = v;
    }
  }
  return p === e;
}

/** Copy the frame body [s, e) to `c` with `newSeq` in place of the seq value. */
function copyFrame(c, b, s, e, newSeq) {
  const len = seqStart - s + 5 + (e - seqEnd);
  room(c, len + 4);
  const o = c.out;
  let at = c.len;
  o.writeUInt32BE(len, at);
  at += 4;
  at += b.copy(o, at, s, seqStart);
  o[at] = 0xce;
  o.writeUInt32BE(newSeq, at + 1);
  at += 5;
  at += b.copy(o, at, seqEnd, e);
  c.len = at;
}

function frames(sock, onFrame) {
  let rest = null;
  sock.on('data', (chunk) => {
    const b = rest ? Buffer.concat([rest, chunk]) : chunk;
    rest = null;
    let p = 0;
    while (b.length - p >= 4) {
      const len = b.readUInt32BE(p);
      if (b.length - p - 4 < len) break;
      onFrame(b, p + 4, p + 4 + len);
      p += 4 + len;
    }
    if (p < b.length) rest = b.subarray(p);
  });
  sock.on('error', () => {});
}

function upstream(serverPort) {
  const u = { sock: net.connect(serverPort, '127.0.0.1'), out: Buffer.allocUnsafe(65536), len: 0, waiting: new Map(), next: 1 };
  u.sock.setNoDelay(true);
  frames(u.sock, (b, s, e) => {
    if (!scan(b, s, e)) return;
    const r = u.waiting.get(seq);
    if (!r) return;
    u.waiting.delete(seq);
    copyFrame(r.client, b, s, e, r.seq);
  });
  return u;
}

for (const arg of process.argv.slice(3)) {
  const [name, ports] = arg.split(':');
  pools.set(name, { members: ports.split(',').map((p) => upstream(Number(p))), cursor: 0 });
}

net.createServer((sock) => {
  sock.setNoDelay(true);
  const client = { sock, out: Buffer.allocUnsafe(65536), len: 0 };
  frames(sock, (b, s, e) => {
    if (!scan(b, s, e)) return;
    const pool = pools.get(policy);
    if (!pool) return;
    const u = pool.members[pool.cursor];
    pool.cursor = (pool.cursor + 1) % pool.members.length;
    const id = u.next;
    u.next = id >= 0xffffffff ? 1 : id + 1;
    u.waiting.set(id, { client, seq });
    copyFrame(u, b, s, e, id);
  });
}).listen(port, '127.0.0.1');
