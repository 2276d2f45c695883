/**
 * One port, both wires: the first byte of a connection decides. `{` starts
 * the old JSON wire; anything else is a MessagePack frame (whose first byte,
 * the top of a length of at most 1 MiB, is 0x00). Pure: no sockets here.
 */
import { FrameDecoder, type DecodeResult, type Decoder } from './frame.js';
import { jsonWire, startsJson, type JsonEncoder } from './json.js';

export type Wire = 'frames' | 'json';

export interface SniffOptions {
  maxFrameBytes?: number;
  /** `FrameDecoderOptions.lazyTextFrom`, and the old JSON wire's requests' (`JsonDecoderOptions.lazyTextFrom`). */
  lazyTextFrom?: number;
  /** The id this side answers as (a server's): its JSON ERRORs carry it as `srcid`, as its ACKs do (`encodeJson`). */
  answerAs?: string;
  /** Told once, on the first byte, which wire the peer speaks and the encoder to answer it with. */
  onWire?: (wire: Wire, encoder: JsonEncoder | undefined) => void;
}

/**
 * A decoder that holds nothing and decides on the first byte which decoder
 * reads the rest of the connection.
 *
 * @example
 * const d = new SniffDecoder({ onWire: (wire, enc) => { if (wire === 'json') answerWith(enc!); } });
 */
export class SniffDecoder implements Decoder {
  private inner?: Decoder;
  private picked?: Wire;
  /** The encoder that answers a JSON peer (in its requests' order), once the first byte said JSON. */
  jsonEncoder?: JsonEncoder;
  constructor(private readonly opts: SniffOptions = {}) {}

  /** The wire picked, once the first byte has arrived. */
  get wire(): Wire | undefined {
    return this.picked;
  }

  get buffered(): number {
    return this.inner?.buffered ?? 0;
  }

  push(chunk: Buffer): DecodeResult {
    if (!this.inner) {
      if (chunk.length === 0) return { messages: [] };
      if (startsJson(chunk[0]!)) {
        const w = jsonWire(this.opts.maxFrameBytes, 'answers', this.opts.answerAs, this.opts.lazyTextFrom);
        this.inner = w.decoder;
        this.picked = 'json';
        this.jsonEncoder = w.encoder;
        this.opts.onWire?.('json', w.encoder);
      } else {
        this.inner = new FrameDecoder({ maxFrameBytes: this.opts.maxFrameBytes, lazyTextFrom: this.opts.lazyTextFrom });
        this.picked = 'frames';
        this.opts.onWire?.('frames', undefined);
      }
    }
    return this.inner.push(chunk);
  }
}
