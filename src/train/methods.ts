/**
 * Training methods: what is trained and how a batch's loss is computed. `full` fine-tunes every
 * weight of the base model (the baseline PEFT is compared against); the PEFT methods train one
 * adapter of a PeftModel while the base stays frozen.
 */
import type { Batch, CausalLM, ForwardContext } from '../models/model.js';
import { decoderLinears, forwardHidden, lmLoss, namedParameters } from '../models/model.js';
import { PeftError } from '../errors.js';
import type { NamedTensor } from '../peft/types.js';
import type { LossResult } from '../tensor/index.js';

/** What the trainer needs from a micro-batch. */
export interface LabelledBatch {
  batch: Batch;
  /** [B·T]: the token to predict at each row, −100 = no loss. */
  labels: Int32Array;
  numTargets: number;
  /**
   * [B]: each row's first token when it is a target, else −100 — what the last virtual token
   * predicts under PEFT's prompt-tuning convention. Absent: the row's first real token.
   */
  firstLabels?: Int32Array;
}

/**
 * How the loss treats virtual tokens (prompt tuning):
 * - 'peft' (default): HF PEFT's convention with `labels = input_ids` — P labels of −100 are
 *   prepended, so the last virtual token predicts the row's first token: T predictions per row;
 * - 'next-token': only the real tokens predict (T − 1 per row), as without an adapter.
 * Methods that add no virtual tokens have one convention only (next-token).
 */
export type LossConvention = 'peft' | 'next-token';
export const LOSS_CONVENTIONS: readonly LossConvention[] = ['peft', 'next-token'];

/** Targets the PEFT convention adds to a batch: rows whose first token is a target. */
export function firstTargetCount(lb: LabelledBatch): number {
  if (lb.firstLabels) return lb.firstLabels.reduce((n, v) => n + (v !== -100 ? 1 : 0), 0);
  let n = 0;
  for (let b = 0; b < lb.batch.B; b++) if (!lb.batch.keyMask || lb.batch.keyMask[b * lb.batch.T]) n++;
  return n;
}

/**
 * Labels for a batch an input hook extended with P virtual tokens per row (prompt tuning):
 * the virtual tokens predict nothing except the last, which predicts the row's first token when
 * `predictFirst` (HF PEFT prepends P labels of −100 to `labels = input_ids`, so the last virtual
 * token predicts input_ids[0]) — `firstLabels[b]` when given (−100 when that token is not a
 * target), else the first token unless it is padding.
 */
export function extendLabels(labels: Int32Array, ids: Int32Array, B: number, T: number, P: number, predictFirst: boolean,
  keyMask?: Uint8Array | null, firstLabels?: Int32Array | null): Int32Array {
  if (P === 0) return labels;
  const out = new Int32Array(B * (P + T)).fill(-100);
  for (let b = 0; b < B; b++) {
    out.set(labels.subarray(b * T, (b + 1) * T), b * (P + T) + P);
    if (!predictFirst) continue;
    if (firstLabels) out[b * (P + T) + P - 1] = firstLabels[b];
    else if (!keyMask || keyMask[b * T]) out[b * (P + T) + P - 1] = ids[b * T];
  }
  return out;
}

/**
 * Loss of a labelled batch through the model (and its active adapters, when it has any).
 * `convention` (or a boolean: true = 'peft') says whether virtual tokens predict the first token.
 */
export function batchLoss(model: CausalLM, lb: LabelledBatch, gradScale: number, ctx: ForwardContext,
  convention: LossConvention | boolean = 'peft'): LossResult & { virtualTokens: number } {
  const { hidden, batch } = forwardHidden(model, lb.batch, ctx);
  const P = batch.T - lb.batch.T;
  const predictFirst = convention === true || convention === 'peft';
  const labels = P > 0
    ? extendLabels(lb.labels, lb.batch.ids, lb.batch.B, lb.batch.T, P, predictFirst, lb.batch.keyMask, lb.firstLabels)
    : lb.labels;
  return { ...lmLoss(model, hidden, labels, gradScale, ctx), virtualTokens: P };
}

/** Every base weight trainable (full fine-tuning); requires float32 weights. */
export function fullFineTuneParameters(model: CausalLM): NamedTensor[] {
  const params = namedParameters(model).map((p) => ({ name: p.name, tensor: p.tensor }));
  const frozen = decoderLinears(model).some((m) => m.weight.data.kind !== 'f32');
  if (frozen || model.embedTokens.kind !== 'f32')
    throw new PeftError('full fine-tuning needs float32 weights; load the model with dtype float32 (not quantized or bfloat16)');
  for (const p of params) p.tensor.requiresGrad = true;
  return params;
}
