/** How the bench writes its figures. */
export const MB = 1024 * 1024;

export function fmtRate(r?: number): string {
  if (r === undefined) return '-';
  return r >= 1e6 ? `${(r / 1e6).toFixed(1)}M` : r >= 1e3 ? `${(r / 1e3).toFixed(1)}k` : r.toFixed(0);
}

export const fmtMs = (ms: number): string => (ms >= 10 ? ms.toFixed(1) : ms >= 1 ? ms.toFixed(2) : ms.toFixed(3));

/** A ratio's median over the rounds and its range: `0.84x (0.80-0.90, 5 rounds)`; one value alone: `0.84x`. */
export function fmtSpread(s: { median: number; min: number; max: number; n: number }): string {
  return s.n > 1 ? `${s.median.toFixed(2)}x (${s.min.toFixed(2)}-${s.max.toFixed(2)}, ${s.n} rounds)` : `${s.median.toFixed(2)}x`;
}
