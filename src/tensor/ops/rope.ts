/** Rotary position embedding (HF rotate_half convention) as a differentiable op. */
import { native } from '../../native/index.js';
import { allocF32 } from '../pool.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/** cos/sin tables [rows, D/2] for a set of positions; compute once per forward, share by layers. */
export interface RopeTable {
  cos: Float32Array;
  sin: Float32Array;
  rows: number;
}

/**
 * Builds the table for `positions` ([rows]) from inv_freq ([D/2], see models/rope.ts) and HF's
 * attention_scaling factor (1 except for yarn-like scalings).
 */
export function ropeTable(positions: Int32Array, invFreq: Float32Array, attentionScaling = 1): RopeTable {
  const cos = allocF32(positions.length * invFreq.length);
  const sin = allocF32(positions.length * invFreq.length);
  native.ropeTable(positions, invFreq, attentionScaling, cos, sin);
  return { cos, sin, rows: positions.length };
}

/**
 * Rotates x: [rows, H·D] (heads of size D) by the table's angles. With rotaryDim < D (partial
 * rotary, Phi-4-mini's `partial_rotary_factor`) only the first rotaryDim features of each head are
 * rotated (the table then has rotaryDim/2 columns) and the rest pass through, as transformers'
 * `apply_rotary_pos_emb` does with `q[..., :rotary_dim]`.
 */
export function rope(x: Tensor, table: RopeTable, H: number, D: number, rotaryDim = D): Tensor {
  const R = x.rows;
  if (x.cols !== H * D || R !== table.rows) throw new Error(`rope: input [${x.shape}] does not match ${table.rows} rows × ${H}·${D}`);
  if (rotaryDim > D || rotaryDim % 2 !== 0) throw new Error(`rope: rotary dimension ${rotaryDim} must be even and at most ${D}`);
  const y = Tensor.empty(x.shape);
  if (rotaryDim === D) {
    native.ropeApply(x.data, y.data, R, H, D, H * D, table.cos, table.sin, 1, false);
    return record(y, [x], (gy) => {
      native.ropeApply(gy, gradOf(x), R, H, D, H * D, table.cos, table.sin, -1, true);
    });
  }
  // one call per head: rows of stride H·D, rotating the head's first rotaryDim features
  y.data.set(x.data);
  for (let h = 0; h < H; h++)
    native.ropeApply(x.data.subarray(h * D), y.data.subarray(h * D), R, 1, rotaryDim, H * D, table.cos, table.sin, 1, false);
  return record(y, [x], (gy) => {
    const g = allocF32(gy.length);
    g.set(gy);
    for (let h = 0; h < H; h++)
      native.ropeApply(gy.subarray(h * D), g.subarray(h * D), R, 1, rotaryDim, H * D, table.cos, table.sin, -1, false);
    native.axpy(1, g, gradOf(x));
  });
}
