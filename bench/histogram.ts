/**
 * Latencies in an HDR histogram (hdr-histogram-js, its WebAssembly build:
 * about 30 ns a record here against about 170 ns for its JavaScript one, and
 * the load generator records every answer on the cores it measures).
 * Values go in as milliseconds and are kept as whole microseconds to three
 * significant digits, so every percentile is within 0.1 % of the true value.
 */
import type * as Hdr from 'hdr-histogram-js';

export interface LatencySummary {
  /** Milliseconds. */
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  mean: number;
  max: number;
  /** Latencies recorded. */
  count: number;
}

let ready: Promise<void> | undefined;
let hdr: typeof Hdr | undefined;

/** Load the package and its WebAssembly module once per process (on first use: only load and bench need them); every histogram waits for it. */
export function histogramsReady(): Promise<void> {
  ready ??= import('hdr-histogram-js').then((m) => {
    hdr = m;
    return hdr.initWebAssembly();
  });
  return ready;
}

export class LatencyHistogram {
  private readonly h: Hdr.Histogram;

  /** Call `await histogramsReady()` first. */
  constructor() {
    if (!hdr) throw new Error('LatencyHistogram: await histogramsReady() first');
    this.h = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3, useWebAssembly: true });
  }

  /** Record one latency in milliseconds (below 1 us counts as 1 us). */
  record(ms: number): void {
    this.h.recordValue(ms < 0.001 ? 1 : Math.round(ms * 1000));
  }

  get count(): number {
    return this.h.totalCount;
  }

  /** Latency (ms) at quantile q in [0, 1]; 0 when empty. HDR answers with the top of a value's bucket, so never above the largest recorded. */
  quantile(q: number): number {
    return this.h.totalCount === 0 ? 0 : Math.min(this.h.getValueAtPercentile(q * 100), this.h.maxValue) / 1000;
  }

  summary(): LatencySummary {
    const empty = this.h.totalCount === 0;
    return {
      p50: this.quantile(0.5),
      p90: this.quantile(0.9),
      p99: this.quantile(0.99),
      p999: this.quantile(0.999),
      mean: empty ? 0 : this.h.mean / 1000,
      max: empty ? 0 : this.h.maxValue / 1000,
      count: this.h.totalCount,
    };
  }

  /** Free the WebAssembly memory; the histogram cannot be used after. */
  destroy(): void {
    this.h.destroy();
  }
}
