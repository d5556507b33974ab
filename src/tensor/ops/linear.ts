/**
 * Linear layers: y = x · Wᵀ + b (PyTorch nn.Linear), with W in any storage (see weight.ts).
 * Backward: dx += dy · W, dW += dyᵀ · x (only when W requires a gradient), db += Σ_rows dy.
 */
import { native } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';
import { gemmWeight, weightTensor, type Weight } from '../weight.js';

function checkIn(x: Tensor, w: Weight, what: string): void {
  if (x.cols !== w.cols) throw new Error(`${what}: input has ${x.cols} features, weight expects ${w.cols}`);
}

/** y[..., out] = x[..., in] · Wᵀ + bias. x: [..., in]; W: [out, in]; bias: [out] or null. */
export function linear(x: Tensor, w: Weight, bias: Tensor | null = null): Tensor {
  checkIn(x, w, 'linear');
  const M = x.rows, K = w.cols, N = w.rows;
  const y = Tensor.empty([...x.shape.slice(0, -1), N]);
  gemmWeight(false, true, M, N, K, 1, x.data, K, w, 0, y.data, N);
  if (bias) native.addRow(y.data, bias.data, M, N);
  const wt = weightTensor(w);
  return record(y, [x, wt, bias], (gy) => {
    if (x.requiresGrad) gemmWeight(false, false, M, K, N, 1, gy, N, w, 1, gradOf(x), K);
    if (wt?.requiresGrad) native.gemm(true, false, N, K, M, 1, gy, N, x.data, K, 1, gradOf(wt), K);
    if (bias?.requiresGrad) native.sumRows(gy, null, gradOf(bias), M, N);
  });
}

/**
 * In place: y += scale · (x · Wᵀ). Used for side branches such as LoRA's B (y's value is not
 * needed by any backward, so accumulating into it is safe). Returns y.
 */
export function linearAccumulate(y: Tensor, x: Tensor, w: Weight, scale: number): Tensor {
  checkIn(x, w, 'linearAccumulate');
  const M = x.rows, K = w.cols, N = w.rows;
  if (y.cols !== N || y.rows !== M) throw new Error(`linearAccumulate: output is [${y.shape}], expected [${M}, ${N}]`);
  gemmWeight(false, true, M, N, K, scale, x.data, K, w, 1, y.data, N);
  const wt = weightTensor(w);
  return record(y, [x, wt, y], (gy) => {
    if (x.requiresGrad) gemmWeight(false, false, M, K, N, scale, gy, N, w, 1, gradOf(x), K);
    if (wt?.requiresGrad) native.gemm(true, false, N, K, M, scale, gy, N, x.data, K, 1, gradOf(wt), K);
  });
}
