/** RMSNorm (HF LlamaRMSNorm) and LayerNorm over the last dimension. */
import { native } from '../../native/index.js';
import { allocF32 } from '../pool.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/** y = x · rsqrt(mean(x²) + eps) · w. x: [..., D], w: [D]. */
export function rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor {
  const D = x.cols, R = x.rows;
  if (w.size !== D) throw new Error(`rmsnorm: weight has ${w.size} elements, input has ${D} features`);
  const y = Tensor.empty(x.shape);
  const rstd = allocF32(R);
  native.rmsnormForward(x.data, w.data, R, D, eps, y.data, rstd);
  return record(y, [x, w], (gy) => {
    native.rmsnormBackward(gy, x.data, w.data, rstd, R, D, x.requiresGrad ? gradOf(x) : null,
      w.requiresGrad ? gradOf(w) : null);
  });
}

/** y = (x − mean) · rsqrt(var + eps) · w + b. x: [..., D]; w, b: [D] or null. */
export function layernorm(x: Tensor, w: Tensor | null, b: Tensor | null, eps: number): Tensor {
  const D = x.cols, R = x.rows;
  const y = Tensor.empty(x.shape);
  const mean = allocF32(R), rstd = allocF32(R);
  native.layernormForward(x.data, w?.data ?? null, b?.data ?? null, R, D, eps, y.data, mean, rstd);
  return record(y, [x, w, b], (gy) => {
    native.layernormBackward(gy, x.data, w?.data ?? null, mean, rstd, R, D, x.requiresGrad ? gradOf(x) : null,
      w?.requiresGrad ? gradOf(w) : null, b?.requiresGrad ? gradOf(b) : null);
  });
}
