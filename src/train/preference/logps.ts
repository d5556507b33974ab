/**
 * Per-token log-probabilities of the labelled next tokens, differentiable, and per-sequence sums
 * of them: the quantities every preference objective is built from (TRL's `selective_log_softmax`
 * followed by a masked sum over the completion, `get_batch_logps` in the ORPO/CPO trainers).
 *
 * `tokenLogProbs` never holds the full [rows, vocab] logits when the LM head has no PEFT hook: the
 * head runs in chunks (as the fused cross-entropy does), and backward recomputes each chunk's
 * logits and turns them into `g_r · (onehot − softmax)` in place (one head GEMM more than training
 * with cross-entropy, no [rows, vocab] buffer kept between forward and backward). A hooked head
 * (LoRA on lm_head, modules_to_save) materialises the logits through the hooks.
 */
import { native } from '../../native/index.js';
import type { CausalLM, ForwardContext } from '../../models/model.js';
import { runLinear } from '../../models/model.js';
import {
  allocF32, gemmWeight, gradOf, IGNORE_INDEX, isRecording, record, Tensor, weightTensor, type Weight,
} from '../../tensor/index.js';

/** Output of {@link tokenLogProbs}. */
export interface TokenLogProbs {
  /** [N]: log p(labels[r] | row r); 0 where labels[r] = −100. Differentiable w.r.t. the hidden states and head. */
  logps: Tensor;
  /** [N]: mean over the vocabulary of row r's logits where `meanRows[r]` is set (TRL's `logits/*` metrics), else 0. */
  logitMean: Float64Array;
}

const CHUNK_FLOATS = 16 << 20;

function rowLogp(logits: Float32Array, label: Int32Array, V: number): number {
  const [s] = native.crossEntropy(logits, label, 1, V, IGNORE_INDEX, null, 1);
  return -s;
}

function rowMean(row: Float32Array): number {
  let s = 0;
  for (let i = 0; i < row.length; i++) s += row[i];
  return s / row.length;
}

/**
 * log softmax(h·Wᵀ + b)[label] per row. h: [N, D] hidden states; w: head [V, D]; labels [N]
 * (−100 = none). Rows whose gradient is zero are skipped in backward.
 * Throws Error when labels and rows differ in count or a label is outside [0, V).
 */
export function fusedTokenLogProbs(h: Tensor, w: Weight, bias: Tensor | null, labels: Int32Array, meanRows?: Uint8Array,
  chunkRows = Math.max(16, Math.floor(CHUNK_FLOATS / w.rows))): TokenLogProbs {
  const N = h.rows, D = h.cols, V = w.rows;
  if (w.cols !== D) throw new Error(`tokenLogProbs: hidden size ${D}, head expects ${w.cols}`);
  if (labels.length !== N) throw new Error(`tokenLogProbs: ${labels.length} labels for ${N} rows`);
  for (const y of labels) if (y !== IGNORE_INDEX && (y < 0 || y >= V)) throw new Error(`tokenLogProbs: label ${y} outside the vocabulary of ${V}`);
  const out = Tensor.empty([N], true);
  const logitMean = new Float64Array(N);
  const rows = Math.max(1, Math.min(chunkRows, N));
  const buf = allocF32(rows * V);
  const chunk = (r0: number, m: number, want: (i: number) => boolean): Float32Array | null => {
    let any = false;
    for (let i = 0; i < m && !any; i++) any = want(r0 + i);
    if (!any) return null;
    const logits = buf.subarray(0, m * V);
    gemmWeight(false, true, m, V, D, 1, h.data.subarray(r0 * D, (r0 + m) * D), D, w, 0, logits, V);
    if (bias) native.addRow(logits, bias.data, m, V);
    return logits;
  };
  for (let r0 = 0; r0 < N; r0 += rows) {
    const m = Math.min(rows, N - r0);
    const logits = chunk(r0, m, (r) => labels[r] !== IGNORE_INDEX || !!meanRows?.[r]);
    if (!logits) continue;
    for (let i = 0; i < m; i++) {
      const r = r0 + i, row = logits.subarray(i * V, (i + 1) * V);
      if (labels[r] !== IGNORE_INDEX) out.data[r] = rowLogp(row, labels.subarray(r, r + 1), V);
      if (meanRows?.[r]) logitMean[r] = rowMean(row);
    }
  }
  const wt = weightTensor(w);
  record(out, [h, wt, bias], (g) => {
    const needH = h.requiresGrad, needW = !!wt?.requiresGrad, needB = !!bias?.requiresGrad;
    for (let r0 = 0; r0 < N; r0 += rows) {
      const m = Math.min(rows, N - r0);
      const logits = chunk(r0, m, (r) => labels[r] !== IGNORE_INDEX && g[r] !== 0);
      if (!logits) continue;
      // d logp / d logits = onehot − softmax: cross-entropy's gradient, scaled by −g per row
      native.crossEntropy(logits, labels.subarray(r0, r0 + m), m, V, IGNORE_INDEX, logits, 1);
      for (let i = 0; i < m; i++) {
        const row = logits.subarray(i * V, (i + 1) * V);
        native.scale(row, -g[r0 + i], row);
      }
      const hc = h.data.subarray(r0 * D, (r0 + m) * D);
      if (needH) gemmWeight(false, false, m, D, V, 1, logits, V, w, 1, gradOf(h).subarray(r0 * D, (r0 + m) * D), D);
      if (needW) native.gemm(true, false, V, D, m, 1, logits, V, hc, D, 1, gradOf(wt!), D);
      if (needB) native.sumRows(logits, null, gradOf(bias!), m, V);
    }
  });
  return { logps: out, logitMean };
}

/** As {@link fusedTokenLogProbs} on materialised logits [N, V] (a hooked LM head). */
export function logitsTokenLogProbs(logits: Tensor, labels: Int32Array, meanRows?: Uint8Array): TokenLogProbs {
  const N = logits.rows, V = logits.cols;
  if (labels.length !== N) throw new Error(`tokenLogProbs: ${labels.length} labels for ${N} rows`);
  for (const y of labels) if (y !== IGNORE_INDEX && (y < 0 || y >= V)) throw new Error(`tokenLogProbs: label ${y} outside the vocabulary of ${V}`);
  const out = Tensor.empty([N], true);
  const logitMean = new Float64Array(N);
  for (let r = 0; r < N; r++) {
    const row = logits.data.subarray(r * V, (r + 1) * V);
    if (labels[r] !== IGNORE_INDEX) out.data[r] = rowLogp(row, labels.subarray(r, r + 1), V);
    if (meanRows?.[r]) logitMean[r] = rowMean(row);
  }
  record(out, [logits], (g) => {
    const tmp = allocF32(V);
    const gl = gradOf(logits);
    for (let r = 0; r < N; r++) {
      if (labels[r] === IGNORE_INDEX || g[r] === 0) continue;
      native.crossEntropy(logits.data.subarray(r * V, (r + 1) * V), labels.subarray(r, r + 1), 1, V, IGNORE_INDEX, tmp, 1);
      native.axpy(-g[r], tmp, gl.subarray(r * V, (r + 1) * V));
    }
  });
  return { logps: out, logitMean };
}

/** Token log-probabilities through the model's LM head (fused unless the head has PEFT hooks). */
export function lmTokenLogProbs(model: CausalLM, hidden: Tensor, labels: Int32Array, ctx: ForwardContext, meanRows?: Uint8Array): TokenLogProbs {
  const head = model.lmHead;
  if (head.pre.length === 0 && head.post.length === 0) return fusedTokenLogProbs(hidden, head.weight, head.bias, labels, meanRows);
  return logitsTokenLogProbs(runLinear(head, hidden, ctx), labels, meanRows);
}

/**
 * A scalar whose value is `value` and whose gradient w.r.t. `x` is `w` (the loss's gradient,
 * computed analytically from x's values): lets a loss evaluated in float64 outside the tape
 * back-propagate through the model. x: any shape; w: x.size values.
 */
export function surrogateLoss(x: Tensor, w: Float32Array, value: number): Tensor {
  if (w.length !== x.size) throw new Error(`surrogateLoss: ${w.length} weights for ${x.size} values`);
  const out = Tensor.empty([1]);
  out.data[0] = value;
  if (isRecording()) record(out, [x], (g) => native.axpy(g[0], w, gradOf(x)));
  return out;
}
