/** Activations (SiLU, GELU tanh/exact, ReLU), SwiGLU and dropout as differentiable ops. */
import { Act, native, type ActName } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/** y = act(x) elementwise. */
export function activation(x: Tensor, kind: ActName): Tensor {
  const k = Act[kind];
  if (k === undefined) throw new Error(`unknown activation ${kind}`);
  const y = Tensor.empty(x.shape);
  native.actForward(k, x.data, y.data);
  return record(y, [x], (gy) => native.actBackward(k, x.data, gy, gradOf(x)));
}

/** SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer"): y = silu(g) ⊙ u. */
export function swiglu(g: Tensor, u: Tensor): Tensor {
  if (g.size !== u.size) throw new Error(`swiglu: gate [${g.shape}] and up [${u.shape}] differ`);
  const y = Tensor.empty(g.shape);
  native.swigluForward(g.data, u.data, y.data);
  return record(y, [g, u], (gy) =>
    native.swigluBackward(g.data, u.data, gy, g.requiresGrad ? gradOf(g) : null, u.requiresGrad ? gradOf(u) : null));
}

/**
 * Inverted dropout (Srivastava et al. 2014): zero each element with probability p and scale the
 * rest by 1/(1−p). Deterministic for a given seed. p = 0 returns x unchanged.
 */
export function dropout(x: Tensor, p: number, seed: number): Tensor {
  if (p <= 0) return x;
  const y = Tensor.empty(x.shape);
  const s = seed >>> 0;
  native.dropoutForward(x.data, y.data, p, s);
  return record(y, [x], (gy) => native.dropoutBackward(gy, gradOf(x), p, s));
}
