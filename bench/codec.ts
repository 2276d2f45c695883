/**
 * What the hot codec costs per message: DATA and ACK frames, shaped as the
 * bench's load generator and servers send them, decoded by the fast scanner
 * (`transport/fastwire.ts`), and encoded by the frame encoder into each of
 * its two places: a connection's batch, with a new seq, as the proxy sends
 * (`writeFrame`), and a buffer of its own (`encodeFrame`). A message read
 * from the wire goes out as its own bytes with the seq replaced (`WIRE`);
 * "from fields" rows encode copies of the same messages. The last row is the
 * proxy's codec work per request: a read of 32 DATA decoded and forwarded
 * (kept until answered) in turn to 4 servers, a read of 32 ACKs decoded and
 * forwarded to 8 clients. One
 * process, no sockets: nanoseconds of CPU time (user + system, which a
 * shared machine disturbs less than wall time) per message, best of the rounds.
 *
 *   npx tsx bench/codec.ts [--rounds 5] [--frames 4096]
 */
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { decodeHot } from '../transport/fastwire.js';
import { encodeFrame, FrameBuffer, FrameDecoder, writeFrame } from '../transport/frame.js';
import { MsgType, type Message } from '../transport/messages.js';
import { DEFAULT_PAYLOADS } from './loadgen.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '5' }, frames: { type: 'string', default: '4096' } } });
const rounds = Number(values.rounds);
const frames = Number(values.frames);

/** `frames` frames back to back in one buffer, cycling through the given messages. */
function stream(messages: Message[]): Buffer {
  const one = messages.map((m) => encodeFrame(m));
  return Buffer.concat(Array.from({ length: frames }, (_, i) => one[i % one.length]!));
}

const data = stream(DEFAULT_PAYLOADS.map((payload, i) => ({ type: MsgType.DATA, seq: 1000 + i, srcid: 'bench-3', privPoliId: '111', payload, payloadsize: payload.length })));
// As the proxy forwards DATA to a server: with the time left of the try (`timeoutms`).
const forwarded = stream(DEFAULT_PAYLOADS.map((payload, i) => ({ type: MsgType.DATA, seq: 1000 + i, srcid: 'bench-3', privPoliId: '111', payload, payloadsize: payload.length, timeoutms: 1666 })));
// A binary payload of the same bytes.
const binary = stream(DEFAULT_PAYLOADS.map((payload, i) => ({ type: MsgType.DATA, seq: 1000 + i, srcid: 'bench-3', privPoliId: '111', payload: Buffer.from(payload), payloadsize: payload.length })));
const ack = stream(
  DEFAULT_PAYLOADS.map((payload, i) => ({ type: MsgType.ACK, seq: 70000 + i, srcid: '100', destid: 'bench-3', payload: createHash('sha1').update(payload).digest('hex'), payloadsize: payload.length })),
);

function decodeAll(buf: Buffer): Message[] {
  const out: Message[] = [];
  for (let p = 0; p < buf.length; ) {
    const len = buf.readUInt32BE(p);
    const m = decodeHot(buf, p + 4, p + 4 + len);
    if (!m) throw new Error('the fast path refused a frame of the bench');
    out.push(m);
    p += 4 + len;
  }
  return out;
}

const cpuUs = (): number => {
  const u = process.cpuUsage();
  return u.user + u.system;
};

function nsPerMessage(work: () => void, per = frames): number {
  const reps = 20;
  const t0 = cpuUs();
  for (let r = 0; r < reps; r++) work();
  return ((cpuUs() - t0) * 1000) / (reps * per);
}

/** Copies of decoded messages, with the same fields in the same order: encoded from their fields. */
const fromFields = (msgs: Message[]): Message[] => msgs.map((m) => ({ ...m }));

/** Reads of 32 frames each, as one client connection (or one server's link) delivers them. */
const readOf = (buf: Buffer, n = 32): Buffer => {
  let p = 0;
  for (let i = 0; i < n; i++) p += 4 + buf.readUInt32BE(p);
  return buf.subarray(0, p);
};
const dataRead = readOf(data);
const ackRead = readOf(ack);
const held: Message[][] = [];
// As the proxy writes: requests in turn to 4 servers' batches, answers to 8 clients' batches.
const ups = Array.from({ length: 4 }, () => new FrameBuffer());
const downs = Array.from({ length: 8 }, () => new FrameBuffer());
const proxyReads = 200;
/** The proxy's codec work for `proxyReads` reads of 32 requests and of their 32 answers. */
function proxyWork(): void {
  const clients = new FrameDecoder();
  const links = new FrameDecoder();
  for (let i = 0; i < proxyReads; i++) {
    const requests = clients.push(Buffer.from(dataRead)).messages;
    // With the proxy's seq and timeoutms, given to the encoder as the proxy gives them (the request read is not changed).
    for (let k = 0; k < requests.length; k++) writeFrame(requests[k]!, ups[k & 3]!, 5000 + k, 1666);
    for (const up of ups) written += up.take().length;
    // Requests stay in flight for a while, answers are forwarded as they are read.
    held[i & 63] = requests;
    const answers = links.push(Buffer.from(ackRead)).messages;
    for (let k = 0; k < answers.length; k++) writeFrame(answers[k]!, downs[k & 7]!, 77 + k);
    for (const down of downs) written += down.take().length;
  }
}

const out = new FrameBuffer();
const best = {
  dataDecode: Infinity, ackDecode: Infinity, dataEncode: Infinity, ackEncode: Infinity, dataFresh: Infinity, ackFresh: Infinity,
  fwdDecode: Infinity, fwdEncode: Infinity, fwdFresh: Infinity, binDecode: Infinity, binEncode: Infinity, binFresh: Infinity,
  dataFields: Infinity, ackFields: Infinity, proxy: Infinity,
};
const dataMsgs = decodeAll(data);

const ackMsgs = decodeAll(ack);
let written = 0;
const encodeAll = (msgs: Message[]) => (): void => {
  for (let i = 0; i < msgs.length; i++) writeFrame(msgs[i]!, out, 5000 + i);
  written += out.take().length;
};
const encodeEach = (msgs: Message[]) => (): void => {
  for (let i = 0; i < msgs.length; i++) written += encodeFrame(msgs[i]!).length;
};
for (let r = 0; r < rounds; r++) {
  best.dataDecode = Math.min(best.dataDecode, nsPerMessage(() => void decodeAll(data)));
  best.ackDecode = Math.min(best.ackDecode, nsPerMessage(() => void decodeAll(ack)));
  best.dataEncode = Math.min(best.dataEncode, nsPerMessage(encodeAll(dataMsgs)));
  best.ackEncode = Math.min(best.ackEncode, nsPerMessage(encodeAll(ackMsgs)));
  best.dataFresh = Math.min(best.dataFresh, nsPerMessage(encodeEach(dataMsgs)));
  best.ackFresh = Math.min(best.ackFresh, nsPerMessage(encodeEach(ackMsgs)));
}
const dataCopies = fromFields(dataMsgs);
const ackCopies = fromFields(ackMsgs);
for (let r = 0; r < rounds; r++) {
  best.dataFields = Math.min(best.dataFields, nsPerMessage(encodeAll(dataCopies)));
  best.ackFields = Math.min(best.ackFields, nsPerMessage(encodeAll(ackCopies)));
  best.proxy = Math.min(best.proxy, nsPerMessage(proxyWork, proxyReads * 32));
}
// Measured after the rows above, so their message shapes do not make the codec's call sites polymorphic while those are timed.
const fwdMsgs = decodeAll(forwarded);
const binMsgs = decodeAll(binary);
for (let r = 0; r < rounds; r++) {
  best.fwdDecode = Math.min(best.fwdDecode, nsPerMessage(() => void decodeAll(forwarded)));
  best.fwdEncode = Math.min(best.fwdEncode, nsPerMessage(encodeAll(fwdMsgs)));
  best.fwdFresh = Math.min(best.fwdFresh, nsPerMessage(encodeEach(fwdMsgs)));
  best.binDecode = Math.min(best.binDecode, nsPerMessage(() => void decodeAll(binary)));
  best.binEncode = Math.min(best.binEncode, nsPerMessage(encodeAll(binMsgs)));
  best.binFresh = Math.min(best.binFresh, nsPerMessage(encodeEach(binMsgs)));
}
if (written === 0) throw new Error('nothing was encoded');
const ns = (v: number): string => v.toFixed(0).padStart(4);
console.log(`ns of CPU per message, best of ${rounds} rounds of ${frames} frames x 20 (encode: into a connection's batch / into a buffer of its own):`);
console.log(`  DATA  decode ${ns(best.dataDecode)}   encode ${ns(best.dataEncode)} / ${ns(best.dataFresh)}   from fields ${ns(best.dataFields)}`);
console.log(`  ACK   decode ${ns(best.ackDecode)}   encode ${ns(best.ackEncode)} / ${ns(best.ackFresh)}   from fields ${ns(best.ackFields)}`);
console.log(`  DATA as forwarded (timeoutms)  decode ${ns(best.fwdDecode)}   encode ${ns(best.fwdEncode)} / ${ns(best.fwdFresh)}`);
console.log(`  DATA, binary payload           decode ${ns(best.binDecode)}   encode ${ns(best.binEncode)} / ${ns(best.binFresh)}`);
console.log(`  the proxy's codec per request (a DATA read and forwarded, its ACK read and forwarded): ${ns(best.proxy)}`);
