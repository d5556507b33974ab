/**
 * Causal-LM losses. Softmax cross-entropy with ignore_index −100 (torch.nn.functional.cross_entropy)
 * and a fused "LM head + cross-entropy" that never holds the full [tokens, vocab] logits: rows are
 * processed in chunks, and each chunk's logits buffer is turned into its gradient in place.
 */
import { native } from '../../native/index.js';
import { allocF32 } from '../pool.js';
import { gradOf, isRecording, record } from '../autograd.js';
import { Tensor } from '../tensor.js';
import { gemmWeight, weightTensor, type Weight } from '../weight.js';

export const IGNORE_INDEX = -100;

export interface LossResult {
  /** A 1-element tensor = gradScale · Σ(token losses); call backward() on it. */
  loss: Tensor;
  /** Σ of per-token losses (nats) and the number of counted (non-ignored) tokens. */
  sum: number;
  count: number;
}

/**
 * Cross-entropy over logits [N, V] with labels [N] (−100 = ignored). The returned tensor is
 * gradScale · Σ losses; pass gradScale = 1/total_tokens to get a mean that stays exact across
 * micro-batches of a gradient-accumulation step.
 */
export function crossEntropy(logits: Tensor, labels: Int32Array, gradScale: number): LossResult {
  const V = logits.cols, N = logits.rows;
  if (labels.length !== N) throw new Error(`crossEntropy: ${labels.length} labels for ${N} rows`);
  const wantGrad = isRecording() && logits.requiresGrad;
  const dl = wantGrad ? allocF32(N * V) : null;
  const [sum, count] = native.crossEntropy(logits.data, labels, N, V, IGNORE_INDEX, dl, gradScale);
  const loss = Tensor.empty([1]);
  loss.data[0] = sum * gradScale;
  record(loss, [logits], (g) => native.axpy(g[0], dl!, gradOf(logits)));
  return { loss, sum, count };
}

/**
 * Fused LM head + cross-entropy: logits = h · Wᵀ (+ bias) computed `chunkRows` rows at a time
 * (default: as many rows as fit 16 Mi logits, 64 MiB).
 * h: [N, D]; W: [V, D]; labels [N]. Gradients w.r.t. h (and W/bias when trainable) are computed
 * during the forward pass and scaled by the incoming gradient in backward.
 */
export function linearCrossEntropy(h: Tensor, w: Weight, bias: Tensor | null, labels: Int32Array, gradScale: number,
  chunkRows = Math.max(16, Math.floor((16 << 20) / w.rows))): LossResult {
  const N = h.rows, D = h.cols, V = w.rows;
  if (w.cols !== D) throw new Error(`linearCrossEntropy: hidden size ${D}, head expects ${w.cols}`);
  if (labels.length !== N) throw new Error(`linearCrossEntropy: ${labels.length} labels for ${N} rows`);
  const wt = weightTensor(w);
  const recording = isRecording();
  const needH = recording && h.requiresGrad;
  const needW = recording && !!wt?.requiresGrad;
  const needB = recording && !!bias?.requiresGrad;
  const dh = needH ? allocF32(N * D, true) : null;
  const dw = needW ? allocF32(V * D, true) : null;
  const db = needB ? allocF32(V, true) : null;
  const rows = Math.max(1, Math.min(chunkRows, N));
  const buf = allocF32(rows * V);
  let sum = 0, count = 0;
  for (let r0 = 0; r0 < N; r0 += rows) {
    const m = Math.min(rows, N - r0);
    const logits = buf.subarray(0, m * V);
    const hc = h.data.subarray(r0 * D, (r0 + m) * D);
    const lc = labels.subarray(r0, r0 + m);
    // skip chunks whose labels are all ignored
    let any = false;
    for (let i = 0; i < m; i++) if (lc[i] !== IGNORE_INDEX) { any = true; break; }
    if (!any) continue;
    gemmWeight(false, true, m, V, D, 1, hc, D, w, 0, logits, V);
    if (bias) native.addRow(logits, bias.data, m, V);
    const grad = needH || needW || needB;
    const [s, c] = native.crossEntropy(logits, lc, m, V, IGNORE_INDEX, grad ? logits : null, gradScale);
    sum += s;
    count += c;
    if (dh) gemmWeight(false, false, m, D, V, 1, logits, V, w, 1, dh.subarray(r0 * D, (r0 + m) * D), D);
    if (dw) native.gemm(true, false, V, D, m, 1, logits, V, hc, D, 1, dw, D);
    if (db) native.sumRows(logits, null, db, m, V);
  }
  const loss = Tensor.empty([1]);
  loss.data[0] = sum * gradScale;
  record(loss, [h, wt, bias], (g) => {
    if (dh) native.axpy(g[0], dh, gradOf(h));
    if (dw) native.axpy(g[0], dw, gradOf(wt!));
    if (db) native.axpy(g[0], db, gradOf(bias!));
  });
  return { loss, sum, count };
}
