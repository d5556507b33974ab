/** Elementwise and shape ops: residual add, scaling, per-feature scaling, sequence concatenation. */
import { native } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/** a + b (same shape). */
export function add(a: Tensor, b: Tensor): Tensor {
  if (a.size !== b.size) throw new Error(`add: [${a.shape}] vs [${b.shape}]`);
  const y = Tensor.empty(a.shape);
  native.add(a.data, b.data, y.data);
  return record(y, [a, b], (gy) => {
    if (a.requiresGrad) native.axpy(1, gy, gradOf(a));
    if (b.requiresGrad) native.axpy(1, gy, gradOf(b));
  });
}

/** s · x. */
export function scale(x: Tensor, s: number): Tensor {
  const y = Tensor.empty(x.shape);
  native.scale(x.data, s, y.data);
  return record(y, [x], (gy) => native.axpy(s, gy, gradOf(x)));
}

/** y[r, d] = x[r, d] · w[d] (IA3's learned rescaling, Liu et al. 2022). x: [..., D], w: [D]. */
export function mulFeatures(x: Tensor, w: Tensor): Tensor {
  const D = x.cols, R = x.rows;
  if (w.size !== D) throw new Error(`mulFeatures: vector has ${w.size} elements, input has ${D} features`);
  const y = Tensor.empty(x.shape);
  native.mulRow(x.data, w.data, y.data, R, D, false);
  return record(y, [x, w], (gy) => {
    if (x.requiresGrad) native.mulRow(gy, w.data, gradOf(x), R, D, true);
    if (w.requiresGrad) native.sumRows(gy, x.data, gradOf(w), R, D);
  });
}

/**
 * Concatenates along the sequence axis per batch row: a [B·Ta, C] and b [B·Tb, C] give
 * [B·(Ta+Tb), C] with row b's Ta rows of a followed by its Tb rows of b.
 */
export function concatSeq(a: Tensor, b: Tensor, B: number): Tensor {
  const C = a.cols;
  if (b.cols !== C) throw new Error(`concatSeq: widths ${C} and ${b.cols} differ`);
  const Ta = a.rows / B, Tb = b.rows / B;
  const y = Tensor.empty([B * (Ta + Tb), C]);
  for (let i = 0; i < B; i++) {
    y.data.set(a.data.subarray(i * Ta * C, (i + 1) * Ta * C), i * (Ta + Tb) * C);
    y.data.set(b.data.subarray(i * Tb * C, (i + 1) * Tb * C), (i * (Ta + Tb) + Ta) * C);
  }
  return record(y, [a, b], (gy) => {
    for (let i = 0; i < B; i++) {
      if (a.requiresGrad) {
        const ga = gradOf(a).subarray(i * Ta * C, (i + 1) * Ta * C);
        native.axpy(1, gy.subarray(i * (Ta + Tb) * C, (i * (Ta + Tb) + Ta) * C), ga);
      }
      if (b.requiresGrad) {
        const gb = gradOf(b).subarray(i * Tb * C, (i + 1) * Tb * C);
        native.axpy(1, gy.subarray((i * (Ta + Tb) + Ta) * C, (i + 1) * (Ta + Tb) * C), gb);
      }
    }
  });
}

/** Repeats a [T, C] tensor for each of B batch rows: [B·T, C] (gradients summed back). */
export function repeatBatch(x: Tensor, B: number): Tensor {
  const n = x.size;
  const y = Tensor.empty([B * x.rows, x.cols]);
  for (let i = 0; i < B; i++) y.data.set(x.data, i * n);
  return record(y, [x], (gy) => {
    const gx = gradOf(x);
    for (let i = 0; i < B; i++) native.axpy(1, gy.subarray(i * n, (i + 1) * n), gx);
  });
}

/** a ⊙ b elementwise (same shape). */
export function mul(a: Tensor, b: Tensor): Tensor {
  if (a.size !== b.size) throw new Error(`mul: [${a.shape}] vs [${b.shape}]`);
  const y = Tensor.empty(a.shape);
  native.mul(a.data, b.data, y.data);
  return record(y, [a, b], (gy) => {
    if (a.requiresGrad) {
      const ga = gradOf(a);
      for (let i = 0; i < ga.length; i++) ga[i] += gy[i] * b.data[i];
    }
    if (b.requiresGrad) {
      const gb = gradOf(b);
      for (let i = 0; i < gb.length; i++) gb[i] += gy[i] * a.data[i];
    }
  });
}

/**
 * Soft-capping y = cap·tanh(x/cap) (Gemma 2's final_logit_softcapping; transformers
 * `Gemma2ForCausalLM.forward`), float32 like transformers: x/cap, tanh, ·cap.
 * Backward: dx = dy·(1 − tanh²).
 */
export function softcap(x: Tensor, cap: number): Tensor {
  const y = Tensor.empty(x.shape);
  const f = Math.fround;
  for (let i = 0; i < x.size; i++) y.data[i] = f(f(Math.tanh(f(x.data[i] / cap))) * cap);
  return record(y, [x], (gy) => {
    const gx = gradOf(x);
    for (let i = 0; i < gx.length; i++) {
      const t = y.data[i] / cap;
      gx[i] += gy[i] * (1 - t * t);
    }
  });
}
