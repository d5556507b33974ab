/** Splitting the columns of a matrix (fused projections: Phi-3 qkv_proj / gate_up_proj, GPT-2 c_attn). */
import { native } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/**
 * Splits x [rows, Σ widths] into [rows, widths[i]] parts, left to right (torch's
 * `x.split(widths, dim=-1)`); each part back-propagates into its columns of x.
 * @throws Error when the widths do not add up to x's columns.
 */
export function splitCols(x: Tensor, widths: number[]): Tensor[] {
  const C = x.cols, R = x.rows;
  if (widths.reduce((a, b) => a + b, 0) !== C) throw new Error(`splitCols: widths ${widths} do not add up to ${C} columns`);
  const out: Tensor[] = [];
  let start = 0;
  for (const w of widths) {
    const s = start;
    const y = Tensor.empty([R, w]);
    for (let r = 0; r < R; r++) y.data.set(x.data.subarray(r * C + s, r * C + s + w), r * w);
    out.push(record(y, [x], (gy) => {
      const gx = gradOf(x);
      for (let r = 0; r < R; r++) native.axpy(1, gy.subarray(r * w, (r + 1) * w), gx.subarray(r * C + s, r * C + s + w));
    }));
    start += w;
  }
  return out;
}
