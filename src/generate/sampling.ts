/**
 * Next-token selection from logits: greedy (temperature 0) or sampling with temperature, top-k
 * and top-p (nucleus, Holtzman et al. 2020), applied in that order as transformers' logits
 * processors do (TemperatureLogitsWarper → TopKLogitsWarper → TopPLogitsWarper).
 */
import { uniformRng } from '../tensor/random.js';

export interface SamplingOptions {
  /** 0 (default) = greedy argmax. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability mass reaches p (1 = off). */
  topP?: number;
  /** Seed of the sampling RNG (runs with the same seed pick the same tokens). */
  seed?: number;
}

/** Seedable uniform [0, 1) generator (mulberry32, see tensor/random.ts). */
export const makeRng = uniformRng;

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** Validates options, throwing a RangeError naming the bad one. */
export function checkSampling(o: SamplingOptions): void {
  const t = o.temperature ?? 0;
  if (!(t >= 0) || !Number.isFinite(t)) throw new RangeError(`temperature must be a number >= 0, got ${o.temperature}`);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) throw new RangeError(`top_k must be an integer >= 0, got ${o.topK}`);
  const p = o.topP ?? 1;
  if (!(p > 0 && p <= 1)) throw new RangeError(`top_p must be in (0, 1], got ${o.topP}`);
}

/** Picks the next token id from logits [vocab]. */
export function sampleToken(logits: Float32Array, o: SamplingOptions, rng: () => number): number {
  const t = o.temperature ?? 0;
  if (t === 0) return argmax(logits);
  const V = logits.length;
  const k = o.topK ?? 0;
  const p = o.topP ?? 1;
  let mx = -Infinity;
  for (let i = 0; i < V; i++) if (logits[i] > mx) mx = logits[i];
  const probs = new Float64Array(V);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += probs[i] = Math.exp((logits[i] - mx) / t);
  if ((k === 0 || k >= V) && p >= 1) {
    // plain temperature sampling: no ordering needed
    let u = rng() * sum;
    for (let i = 0; i < V; i++) {
      u -= probs[i];
      if (u < 0) return i;
    }
    return argmax(logits);
  }
  // order candidates by probability; tokens below 1e-12 of the total can never matter
  const floor = sum * 1e-12;
  let idx: number[] = [];
  for (let i = 0; i < V; i++) if (probs[i] >= floor) idx.push(i);
  idx.sort((a, b) => probs[b] - probs[a]);
  if (k > 0 && k < idx.length) idx = idx.slice(0, k);
  let kept = idx.reduce((acc, i) => acc + probs[i], 0);
  if (p < 1) {
    // keep tokens while the mass before them is < p of the (top-k) mass; always keeps the top token
    let cum = 0, n = 0;
    while (n < idx.length && cum < p * kept) cum += probs[idx[n++]];
    idx = idx.slice(0, n);
    kept = cum;
  }
  let u = rng() * kept;
  for (const i of idx) {
    u -= probs[i];
    if (u < 0) return i;
  }
  return idx[idx.length - 1];
}
