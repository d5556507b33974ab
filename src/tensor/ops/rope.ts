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

/** Rotates x: [rows, H·D] (heads of size D) by the table's angles. */
export function rope(x: Tensor, table: RopeTable, H: number, D: number): Tensor {
  const R = x.rows;
  if (x.cols !== H * D || R !== table.rows) throw new Error(`rope: input [${x.shape}] does not match ${table.rows} rows × ${H}·${D}`);
  const y = Tensor.empty(x.shape);
  native.ropeApply(x.data, y.data, R, H, D, H * D, table.cos, table.sin, 1, false);
  return record(y, [x], (gy) => {
    native.ropeApply(gy, gradOf(x), R, H, D, H * D, table.cos, table.sin, -1, true);
  });
}
