/**
 * Linear-layer weights in any storage: float32 (a Tensor, trainable or frozen), bfloat16 bits, or
 * 4-bit (NF4/FP4, bitsandbytes layout). All are [out_features, in_features] as in PyTorch's
 * nn.Linear, and every GEMM reads them in place: bf16 and 4-bit are converted inside the GEMM's
 * packing, never materialised whole in float32.
 */
import { native, type Q4Native } from '../native/index.js';
import { Tensor } from './tensor.js';

export type WeightData =
  | { kind: 'f32'; tensor: Tensor }
  /** dot: multiply in bf16 (AMX tiles or VDPBF16PS, native gemm_bf16_dot), activations rounded to bf16 (models/compute-dtype.ts); else widened to f32. */
  | { kind: 'bf16'; bits: Uint16Array; dot?: boolean }
  | { kind: 'q4'; q4: Q4Native };

/** A [rows = out_features, cols = in_features] weight. */
export interface Weight {
  rows: number;
  cols: number;
  data: WeightData;
}

export function f32Weight(tensor: Tensor): Weight {
  if (tensor.shape.length !== 2) throw new Error(`weight must be 2-D, got [${tensor.shape}]`);
  return { rows: tensor.shape[0], cols: tensor.shape[1], data: { kind: 'f32', tensor } };
}

/** The trainable float32 tensor behind a weight, or null for frozen non-f32 storage. */
export function weightTensor(w: Weight): Tensor | null {
  return w.data.kind === 'f32' ? w.data.tensor : null;
}

/**
 * C[M, N] = alpha · op(A) · op(W) + beta · C where op(W) = Wᵀ ([cols, rows]) when transW, else W
 * ([rows, cols]). A is [M, K] (or [K, M] when transA) with row stride lda.
 */
export function gemmWeight(transA: boolean, transW: boolean, M: number, N: number, K: number, alpha: number,
  A: Float32Array, lda: number, w: Weight, beta: number, C: Float32Array, ldc: number): void {
  const d = w.data;
  if (d.kind === 'f32') native.gemm(transA, transW, M, N, K, alpha, A, lda, d.tensor.data, w.cols, beta, C, ldc);
  else if (d.kind === 'bf16' && d.dot && !transA) native.gemmBf16Dot(transA, transW, M, N, K, alpha, A, lda, d.bits, w.cols, beta, C, ldc);
  else if (d.kind === 'bf16') native.gemm(transA, transW, M, N, K, alpha, A, lda, d.bits, w.cols, beta, C, ldc);
  else native.gemmQ4(transA, transW, M, N, K, alpha, A, lda, d.q4, beta, C, ldc);
}

/** The weight as a new float32 array [rows, cols] (dequantizing / widening as needed). */
export function weightToF32(w: Weight): Float32Array {
  const d = w.data;
  if (d.kind === 'f32') return d.tensor.data.slice();
  const out = new Float32Array(w.rows * w.cols);
  if (d.kind === 'bf16') {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < d.bits.length; i++) u[i] = d.bits[i] << 16;
  } else {
    native.dequantQ4(d.q4, out);
  }
  return out;
}

/** Bytes of the weight's storage (codes, scales and statistics included). */
export function weightBytes(w: Weight): number {
  const d = w.data;
  if (d.kind === 'f32') return d.tensor.data.byteLength;
  if (d.kind === 'bf16') return d.bits.byteLength;
  const q = d.q4;
  return q.packed.byteLength + q.code.byteLength + (q.absmax?.byteLength ?? 0) + (q.absmaxCodes?.byteLength ?? 0) +
    (q.nestedAbsmax?.byteLength ?? 0) + (q.nestedCode?.byteLength ?? 0) + (q.absmaxCodes ? 4 : 0);
}
