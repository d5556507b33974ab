/**
 * Causal-LM losses. Softmax cross-entropy with ignore_index −100 (torch.nn.functional.cross_entropy)
 * and two chunked forms that never hold the full [tokens, vocab] logits: a fused "LM head (+
 * soft-capping) + cross-entropy" for a plain head, each chunk's logits buffer turned into its
 * gradient in place, and one for any row-wise head (an LM head with PEFT hooks), each chunk's
 * sub-graph back-propagated as soon as its loss is known.
 */
import { native } from '../../native/index.js';
import { allocF32, releaseF32, withArena } from '../pool.js';
import { backwardFromGrad, gradOf, isRecording, record, withLeafGradsInto, withOwnTape } from '../autograd.js';
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

/** Rows per chunk of a chunked loss over V classes: as many as fit 16 Mi logits (64 MiB), at least 16. */
export function defaultChunkRows(V: number): number {
  return Math.max(16, Math.floor((16 << 20) / V));
}

/**
 * Fused LM head + cross-entropy: logits = h · Wᵀ (+ bias), soft-capped to cap·tanh(logits/cap)
 * when `softcap` is given (Gemma 2's final_logit_softcapping, as {@link softcap} computes it),
 * computed `chunkRows` rows at a time (default {@link defaultChunkRows}); peak extra memory is one
 * chunk of logits (two with soft-capping) instead of [N, V] logits and their gradient.
 * h: [N, D]; W: [V, D]; labels [N]. Gradients w.r.t. h (and W/bias when trainable) are computed
 * during the forward pass and scaled by the incoming gradient in backward. Same loss and
 * gradients as crossEntropy(softcap(linear(h, W, bias))) up to float rounding of the GEMM sums.
 */
export function linearCrossEntropy(h: Tensor, w: Weight, bias: Tensor | null, labels: Int32Array, gradScale: number,
  chunkRows = defaultChunkRows(w.rows), softcap: number | null = null): LossResult {
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
  const grad = needH || needW || needB;
  const capped = softcap !== null && grad ? allocF32(rows * V) : null;
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
    if (softcap !== null) capLogits(logits, softcap, capped);
    const [s, c] = native.crossEntropy(logits, lc, m, V, IGNORE_INDEX, grad ? logits : null, gradScale);
    if (capped) {
      // d logits = d capped · (1 − tanh²), tanh = capped / cap (the softcap op's backward)
      for (let i = 0; i < m * V; i++) {
        const t = capped[i] / softcap!;
        logits[i] = logits[i] * (1 - t * t);
      }
    }
    sum += s;
    count += c;
    if (dh) gemmWeight(false, false, m, D, V, 1, logits, V, w, 1, dh.subarray(r0 * D, (r0 + m) * D), D);
    if (dw) native.gemm(true, false, V, D, m, 1, logits, V, hc, D, 1, dw, D);
    if (db) native.sumRows(logits, null, db, m, V);
  }
  if (capped) releaseF32(capped);
  releaseF32(buf);
  const loss = Tensor.empty([1]);
  loss.data[0] = sum * gradScale;
  record(loss, [h, wt, bias], (g) => {
    if (dh) native.axpy(g[0], dh, gradOf(h));
    if (dw) native.axpy(g[0], dw, gradOf(wt!));
    if (db) native.axpy(g[0], db, gradOf(bias!));
  });
  return { loss, sum, count };
}

/** In place: z ← cap·tanh(z/cap) in float32 steps as the softcap op; the capped values also go to `keep` when given. */
function capLogits(z: Float32Array, cap: number, keep: Float32Array | null): void {
  const f = Math.fround;
  for (let i = 0; i < z.length; i++) z[i] = f(f(Math.tanh(f(z[i] / cap))) * cap);
  if (keep) keep.set(z);
}

/**
 * Cross-entropy of logits = logitsOf(h_chunk) over h [N, D] taken `chunkRows` rows at a time, for a
 * head that is any differentiable ROW-WISE function of h (an LM head with PEFT hooks — LoRA, a
 * trainable modules_to_save copy, IA3 —, soft-capped or not): each chunk's forward runs on a tape
 * of its own and, while recording, is back-propagated at once from the chunk's dlogits, so only one
 * chunk's logits and their gradient are alive (not [N, V] of each). The gradient of h and of every
 * parameter (leaf) the chunks used is gathered apart and added, times the loss's incoming
 * gradient, in backward. logitsOf must read no intermediate tensor of the enclosing graph other
 * than its argument (parameters are fine). Chunks whose labels are all ignored are skipped.
 * `abort`, asked after the first computed chunk's forward, may stop before anything else happens
 * (result null; no gradient touched) — e.g. when the head drew dropout masks, which chunking changes.
 * Same loss and gradients as crossEntropy(logitsOf(h)) up to float rounding.
 */
export function chunkedCrossEntropy(h: Tensor, labels: Int32Array, gradScale: number, logitsOf: (hChunk: Tensor) => Tensor,
  chunkRows: number, abort?: () => boolean): LossResult | null {
  const N = h.rows, D = h.cols;
  if (labels.length !== N) throw new Error(`chunkedCrossEntropy: ${labels.length} labels for ${N} rows`);
  const recording = isRecording();
  const dh = recording && h.requiresGrad ? allocF32(N * D, true) : null;
  const sink = new Map<Tensor, Float32Array>();
  const rows = Math.max(1, Math.min(chunkRows, N));
  let sum = 0, count = 0, first = true;
  for (let r0 = 0; r0 < N; r0 += rows) {
    const m = Math.min(rows, N - r0);
    const lc = labels.subarray(r0, r0 + m);
    let any = false;
    for (let i = 0; i < m; i++) if (lc[i] !== IGNORE_INDEX) { any = true; break; }
    if (!any) continue;
    const r = withArena(() => withOwnTape(() => {
      const hc = new Tensor(h.data.subarray(r0 * D, (r0 + m) * D), [m, D], h.requiresGrad, false);
      const z = logitsOf(hc);
      if (first && abort?.()) return null;
      if (z.rows !== m) throw new Error(`chunkedCrossEntropy: the head gave ${z.rows} rows for ${m}`);
      const backprop = recording && z.requiresGrad;
      const [s, c] = native.crossEntropy(z.data, lc, m, z.cols, IGNORE_INDEX, backprop ? gradOf(z) : null, gradScale);
      if (backprop) withLeafGradsInto(sink, () => backwardFromGrad(z));
      if (hc.grad) {
        if (dh) native.axpy(1, hc.grad, dh.subarray(r0 * D, (r0 + m) * D));
        releaseF32(hc.grad);
        hc.grad = null;
      }
      return [s, c];
    }).value);
    if (!r) return null;
    first = false;
    sum += r[0];
    count += r[1];
  }
  const loss = Tensor.empty([1]);
  loss.data[0] = sum * gradScale;
  record(loss, [dh ? h : null, ...sink.keys()], (g) => {
    if (dh) native.axpy(g[0], dh, gradOf(h));
    for (const [t, gt] of sink) native.axpy(g[0], gt, gradOf(t));
  });
  return { loss, sum, count };
}
