/**
 * DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation", eq. 5 and §4.3) as a LoRA
 * variant (see LoraVariant in lora.ts), following HF PEFT (`peft/tuners/lora/dora.py`
 * DoraLinearLayer, `peft/tuners/lora/variants.py` DoraLinearVariant):
 *
 *   W' = m ⊙ (W + s·B·A) / n,   n[o] = ‖W[o,:] + s·(B·A)[o,:]‖₂  (one norm per output row),
 *
 * with m = `lora_magnitude_vector` [out] (initialised to n, i.e. ‖W‖ per row while B = 0) and the
 * norm n treated as a constant in backward (the paper's §4.3; PEFT `weight_norm.detach()`), so
 * the gradients of A and B are PEFT's, not the derivative of the loss through n.
 *
 * Forward, as PEFT computes it on top of the base output y = x·Wᵀ + b:
 *   y' = y + (m/n − 1) ⊙ base + (m/n) ⊙ s·(x_d·Aᵀ)·Bᵀ
 * where base = y − b when dropout is off (PEFT reuses the base result) and base = x_d·Wᵀ (a second
 * base GEMM) when dropout is active while training; x_d = dropout(x).
 *
 * n is computed without materialising W + s·B·A:
 *   n[o]² = ‖W[o]‖² + 2s·Σ_j B[o,j]·(A·Wᵀ)[j,o] + s²·Σ_jk B[o,j]·(A·Aᵀ)[j,k]·B[o,k]
 * (A·Wᵀ is an [r, out] GEMM that reads W in its storage: float32, bf16 or 4-bit).
 */
import { native } from '../native/index.js';
import { allocF32, dropout, gemmWeight, gradOf, linear, lowRankDown, lowRankUp, noGrad, record, releaseF32, Tensor, weightToF32, type Weight, type WeightData } from '../tensor/index.js';
import { addDelta, loraRows, rowsOf, type LoraLayer, type LoraVariant } from './lora.js';

/** ‖W[o]‖² per row of frozen bf16 / 4-bit storage (never changed in place), by storage object. */
const rowNormCache = new WeakMap<WeightData, Float64Array>();

function baseRowNormsSq(w: Weight): Float64Array {
  const cached = w.data.kind === 'f32' ? undefined : rowNormCache.get(w.data);
  if (cached) return cached;
  const data = w.data.kind === 'f32' ? w.data.tensor.data : weightToF32(w);
  const out = new Float64Array(w.rows);
  for (let o = 0; o < w.rows; o++) out[o] = native.sumSquares(data.subarray(o * w.cols, (o + 1) * w.cols));
  if (w.data.kind !== 'f32') rowNormCache.set(w.data, out);
  return out;
}

/** n[o] = ‖W[o] + s·(B·A)[o]‖₂ for the layer's current base weight (float32 result [out]). */
export function doraWeightNorm(l: LoraLayer): Float32Array {
  const w = l.module.weight, r = l.r, K = w.cols, N = w.rows, s = l.scaling;
  const wsq = baseRowNormsSq(w);
  const P = new Float32Array(r * N); // A·Wᵀ [r, out]
  gemmWeight(false, true, r, N, K, 1, l.A.data, K, w, 0, P, N);
  const G = new Float32Array(r * r); // A·Aᵀ [r, r]
  native.gemm(false, true, r, r, K, 1, l.A.data, K, l.A.data, K, 0, G, r);
  const B = l.B.data;
  const n = new Float32Array(N);
  for (let o = 0; o < N; o++) {
    let cross = 0, quad = 0;
    for (let j = 0; j < r; j++) {
      const b = B[o * r + j];
      cross += b * P[j * N + o];
      let gb = 0;
      for (let k = 0; k < r; k++) gb += G[j * r + k] * B[o * r + k];
      quad += b * gb;
    }
    n[o] = Math.sqrt(Math.max(0, wsq[o] + 2 * s * cross + s * s * quad));
  }
  return n;
}

/** m / n per output row. */
function magnitudeScale(l: LoraLayer, n: Float32Array): Float32Array {
  const m = l.magnitude!.data;
  const c = new Float32Array(n.length);
  for (let o = 0; o < n.length; o++) c[o] = m[o] / n[o];
  return c;
}

/**
 * The differentiable DoRA combination: out = y + c1 ⊙ base + c2 ⊙ lora with c = m/n,
 * c1 = c − 1, c2 = s·c (per output column). `base` null means base = y − bias (values), whose
 * gradient then flows to y and bias. Gradient of m: Σ_rows g ⊙ (base + s·lora) / n.
 */
function doraCombine(y: Tensor, base: Tensor | null, bias: Tensor | null, lora: Tensor, mag: Tensor, n: Float32Array, s: number): Tensor {
  const R = y.rows, D = y.cols;
  const c = new Float32Array(D), c1 = new Float32Array(D), c2 = new Float32Array(D), nInv = new Float32Array(D);
  for (let d = 0; d < D; d++) {
    nInv[d] = 1 / n[d];
    c[d] = mag.data[d] / n[d];
    c1[d] = c[d] - 1;
    c2[d] = c[d] * s;
  }
  let baseVals: Float32Array;
  if (base) baseVals = base.data;
  else {
    baseVals = allocF32(R * D);
    baseVals.set(y.data);
    if (bias) {
      const neg = new Float32Array(D);
      native.scale(bias.data, -1, neg);
      native.addRow(baseVals, neg, R, D);
    }
  }
  const out = Tensor.empty(y.shape);
  out.data.set(y.data);
  native.mulRow(baseVals, c1, out.data, R, D, true);
  native.mulRow(lora.data, c2, out.data, R, D, true);
  return record(out, [y, base, base ? null : bias, lora, mag], (g) => {
    if (y.requiresGrad) {
      const gy = gradOf(y);
      native.axpy(1, g, gy);
      if (!base) native.mulRow(g, c1, gy, R, D, true);
    }
    if (base?.requiresGrad) native.mulRow(g, c1, gradOf(base), R, D, true);
    if (!base && bias?.requiresGrad) {
      const t = new Float32Array(D);
      native.sumRows(g, null, t, R, D);
      const gb = gradOf(bias);
      for (let d = 0; d < D; d++) gb[d] -= c1[d] * t[d];
    }
    if (lora.requiresGrad) native.mulRow(g, c2, gradOf(lora), R, D, true);
    if (mag.requiresGrad) {
      const t1 = new Float32Array(D), t2 = new Float32Array(D);
      native.sumRows(g, baseVals, t1, R, D);
      native.sumRows(g, lora.data, t2, R, D);
      const gm = gradOf(mag);
      for (let d = 0; d < D; d++) gm[d] += nInv[d] * (t1[d] + s * t2[d]);
    }
  });
}

/** Multiplies row o of w [rows, cols] by f[o]. */
function scaleRows(w: Float32Array, f: Float32Array, cols: number): void {
  for (let o = 0; o < f.length; o++) {
    const row = w.subarray(o * cols, (o + 1) * cols);
    native.scale(row, f[o], row);
  }
}

export const doraVariant: LoraVariant = {
  useDora: true,
  init(l) {
    const n = noGrad(() => doraWeightNorm(l));
    l.magnitude = Tensor.param(n, [n.length], false);
  },
  forward(l, x, y, ctx, down) {
    const training = ctx.training && l.dropout > 0;
    const xd = training ? dropout(x, l.dropout, ctx.seed * 1000003 + ctx.dropoutCalls++) : x;
    const n = noGrad(() => doraWeightNorm(l));
    // A·xᵀ: from the adapter's fused shared-input GEMM (only given when no dropout applies) or its own
    const d = down ?? { t: lowRankDown(xd, [l.A]), offset: 0 };
    const lora = lowRankUp(null, d.t, d.offset, l.B, 1);
    const base = training ? linear(xd, l.module.weight) : null;
    return doraCombine(y, base, base ? null : l.module.bias, lora, l.magnitude!, n, l.scaling);
  },
  forwardRows(l, x, y, rows) {
    const M = rows.end - rows.start, N = l.module.outFeatures;
    if (M <= 0) return;
    const c = magnitudeScale(l, doraWeightNorm(l));
    const c2 = new Float32Array(N);
    for (let o = 0; o < N; o++) c2[o] = c[o] * l.scaling;
    const yr = rowsOf(y, rows);
    const b = l.module.bias?.data ?? null;
    // y' = c ⊙ (y − b) + b + s·c ⊙ lora
    if (b) {
      const neg = new Float32Array(N);
      native.scale(b, -1, neg);
      native.addRow(yr, neg, M, N);
    }
    native.mulRow(yr, c, yr, M, N, false);
    if (b) native.addRow(yr, b, M, N);
    const lora = allocF32(M * N);
    loraRows(l, x, rows, lora, 1, 0);
    native.mulRow(lora, c2, yr, M, N, true);
    releaseF32(lora);
  },
  mergeInto(l, w) {
    // PEFT merge: the norm of the unmerged weight (the module still holds it); the bias is unchanged
    const n = doraWeightNorm(l);
    addDelta(l, w);
    scaleRows(w, magnitudeScale(l, n), l.module.inFeatures);
  },
  tensors: (l) => [['lora_magnitude_vector', l.magnitude!]],
};
