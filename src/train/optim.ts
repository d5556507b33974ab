/**
 * AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Alg. 2), the update
 * of torch.optim.AdamW (non-amsgrad), run by the native kernel; global-norm gradient clipping as
 * torch.nn.utils.clip_grad_norm_.
 */
import { native } from '../native/index.js';
import type { NamedTensor } from '../peft/types.js';

export interface AdamWOptions {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export const ADAMW_DEFAULTS: AdamWOptions = { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0 };

/** First and second moment buffers per parameter name, and the step count. */
export interface AdamWState {
  step: number;
  m: Map<string, Float32Array>;
  v: Map<string, Float32Array>;
}

export function newAdamWState(params: NamedTensor[]): AdamWState {
  const m = new Map<string, Float32Array>(), v = new Map<string, Float32Array>();
  for (const p of params) {
    m.set(p.name, new Float32Array(p.tensor.size));
    v.set(p.name, new Float32Array(p.tensor.size));
  }
  return { step: 0, m, v };
}

/** One AdamW update of every parameter that has a gradient, at learning rate lr. */
export function adamwStep(params: NamedTensor[], state: AdamWState, o: AdamWOptions, lr: number): void {
  state.step++;
  for (const p of params) {
    const g = p.tensor.grad;
    if (!g) continue;
    native.adamwStep(p.tensor.data, g, state.m.get(p.name)!, state.v.get(p.name)!, lr, o.betas[0], o.betas[1], o.eps,
      o.weightDecay, state.step);
  }
}

/** The L2 norm of all gradients together (0 for parameters without one). */
export function globalGradNorm(params: NamedTensor[]): number {
  let s = 0;
  for (const p of params) if (p.tensor.grad) s += native.sumSquares(p.tensor.grad);
  return Math.sqrt(s);
}

/** Scales gradients so their global norm is at most maxNorm (no-op when maxNorm <= 0); returns the norm before clipping. */
export function clipGradNorm(params: NamedTensor[], maxNorm: number): number {
  const norm = globalGradNorm(params);
  if (maxNorm > 0 && norm > maxNorm) {
    const c = maxNorm / (norm + 1e-6); // torch: clip_coef = max_norm / (total_norm + 1e-6)
    for (const p of params) if (p.tensor.grad) native.scale(p.tensor.grad, c, p.tensor.grad);
  }
  return norm;
}

/** Sets every gradient to zero (allocating none). */
export function zeroGrads(params: NamedTensor[]): void {
  for (const p of params) p.tensor.grad?.fill(0);
}
