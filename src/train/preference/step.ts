/**
 * One preference-tuning micro-batch: the policy forward (with gradients) over the chosen and
 * rejected sequences in one batch (chosen rows first, as TRL concatenates them), the reference
 * log-probabilities, the objective, and the surrogate scalar whose backward gives the objective's
 * gradient.
 *
 * The reference is, as in TRL for a PEFT model: the base model with the adapters disabled
 * (`PeftModel.withDisabled`) when a new adapter is trained; a frozen copy of the starting adapter
 * (loaded as `ref`) when an existing adapter is trained further; or log-probabilities precomputed
 * once before training (`precompute_ref_log_probs`), the only option for full fine-tuning. ORPO and
 * SimPO use no reference.
 */
import type { CausalLM, ForwardContext } from '../../models/model.js';
import { defaultContext, forwardHidden } from '../../models/model.js';
import type { PeftModel } from '../../peft/peft-model.js';
import { noGrad, type LossResult } from '../../tensor/index.js';
import { collateSequences, mismatched, type PairExample, type SequenceBatch, type UnpairedExample } from './data.js';
import { ktoLoss, needsReference, pairLoss, type KtoLogps, type PairLogps, type PreferenceConfig } from './losses.js';
import { lmTokenLogProbs, surrogateLoss, type TokenLogProbs } from './logps.js';

/** Where reference log-probabilities come from. */
export type ReferenceKind = 'base' | 'adapter' | 'precomputed' | 'none';

export interface PreferenceSetup {
  model: CausalLM;
  peft: PeftModel | null;
  config: PreferenceConfig;
  reference: ReferenceKind;
  /** Name of the frozen reference adapter (reference 'adapter'). */
  refAdapter?: string;
  maxSeqLength: number;
  padId: number;
  /** Precomputed reference Σ logps: pairs [chosen, rejected] per pair index; KTO per example index. */
  refCache?: { chosen: Float64Array; rejected: Float64Array } | { logps: Float64Array };
}

/** Per-row sums of a forward: completion Σ logp and count, all-token Σ logp and count, Σ logit means. */
interface RowSums {
  comp: Float64Array;
  compTokens: Float64Array;
  all: Float64Array;
  allTokens: Float64Array;
  logit: Float64Array;
  tl: TokenLogProbs;
  /** Row of each label in the model's (possibly virtual-token-extended) layout. */
  T: number;
  P: number;
}

/** Forward over a sequence batch; token log-probabilities and their per-row sums. */
export function sequenceLogps(model: CausalLM, sb: SequenceBatch, ctx: ForwardContext, wantLogitMeans = false): RowSums {
  const { hidden, batch } = forwardHidden(model, sb.batch, ctx);
  const B = sb.batch.B, T = sb.batch.T, P = batch.T - T;
  let labels = sb.labels, meanRows: Uint8Array | undefined = wantLogitMeans ? sb.completion : undefined;
  if (P > 0) {
    // prompt tuning: virtual tokens predict nothing
    labels = new Int32Array(B * (P + T)).fill(-100);
    const mr = new Uint8Array(B * (P + T));
    for (let b = 0; b < B; b++) {
      labels.set(sb.labels.subarray(b * T, (b + 1) * T), b * (P + T) + P);
      if (meanRows) mr.set(sb.completion.subarray(b * T, (b + 1) * T), b * (P + T) + P);
    }
    if (meanRows) meanRows = mr;
  }
  const tl = lmTokenLogProbs(model, hidden, labels, ctx, meanRows);
  const s: RowSums = {
    comp: new Float64Array(B), compTokens: new Float64Array(B), all: new Float64Array(B), allTokens: new Float64Array(B), logit: new Float64Array(B), tl, T, P,
  };
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const i = b * T + t, r = b * (P + T) + P + t;
      if (sb.labels[i] === -100) continue;
      const lp = tl.logps.data[r];
      s.all[b] += lp; s.allTokens[b]++;
      if (sb.completion[i]) { s.comp[b] += lp; s.compTokens[b]++; s.logit[b] += tl.logitMean[r]; }
    }
  }
  return s;
}

/** Gradient seed for the token log-probabilities: dL/d(completion sum) and dL/d(all-token sum) per row. */
function tokenWeights(sb: SequenceBatch, s: RowSums, dComp: Float64Array, dAll: Float64Array | null, scale: number): Float32Array {
  const { T, P } = s;
  const B = sb.batch.B;
  const w = new Float32Array(B * (P + T));
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const i = b * T + t;
      if (sb.labels[i] === -100) continue;
      let g = dAll ? dAll[b] : 0;
      if (sb.completion[i]) g += dComp[b];
      w[b * (P + T) + P + t] = g * scale;
    }
  }
  return w;
}

function withReference<T>(p: PreferenceSetup, fn: () => T): T {
  return noGrad(() => {
    if (p.reference === 'adapter') {
      const peft = p.peft!;
      const prev = peft.active, prevDisabled = peft.disabled;
      peft.setActive(p.refAdapter ?? 'ref');
      try {
        return fn();
      } finally {
        peft.active = prev;
        peft.disabled = prevDisabled;
      }
    }
    if (p.reference === 'base' && p.peft) return p.peft.withDisabled(fn);
    return fn();
  });
}

/** Reference Σ completion logps of sequences (reference 'base' or 'adapter'). */
export function referenceLogps(p: PreferenceSetup, seqs: SequenceBatch): Float64Array {
  return withReference(p, () => sequenceLogps(p.model, seqs, defaultContext(false)).comp);
}

/** Result of one micro-batch: the trainer's LossResult (sum = pairs × mean loss, count = pairs) and metrics. */
export interface PreferenceStep {
  result: LossResult;
  /** Mean loss of the micro-batch (as TRL reports it). */
  loss: number;
  metrics: Record<string, number>;
  /** Pairs (KTO: examples) in the micro-batch. */
  count: number;
  numTokens: number;
}

/**
 * Loss of a micro-batch of pairs. `gradScale` multiplies the gradient of Σ over pairs of the
 * per-pair loss (the trainer passes 1 / pairs in the step, so the step's gradient is that of the
 * mean). Without gradient recording (noGrad) it only evaluates.
 */
export function pairStep(p: PreferenceSetup, pairs: readonly PairExample[], indices: readonly number[] | null, gradScale: number, ctx: ForwardContext): PreferenceStep {
  const n = pairs.length;
  const sb = collateSequences([...pairs.map((x) => x.chosen), ...pairs.map((x) => x.rejected)], p.padId);
  const s = sequenceLogps(p.model, sb, ctx, true);
  const lp: PairLogps = {
    chosen: s.comp.slice(0, n), rejected: s.comp.slice(n), chosenTokens: s.compTokens.slice(0, n), rejectedTokens: s.compTokens.slice(n),
    chosenAll: s.all.slice(0, n), chosenAllTokens: s.allTokens.slice(0, n),
    chosenLogitSum: s.logit.slice(0, n).reduce((a, b) => a + b, 0), rejectedLogitSum: s.logit.slice(n).reduce((a, b) => a + b, 0),
  };
  if (needsReference(p.config.objective)) {
    let ref: Float64Array;
    if (p.reference === 'precomputed') {
      const c = p.refCache as { chosen: Float64Array; rejected: Float64Array };
      if (!indices) throw new Error('pairStep: precomputed reference log-probabilities need example indices');
      ref = Float64Array.from([...indices.map((i) => c.chosen[i]), ...indices.map((i) => c.rejected[i])]);
    } else {
      ref = referenceLogps(p, sb);
    }
    lp.refChosen = ref.slice(0, n); lp.refRejected = ref.slice(n);
  }
  const out = pairLoss(lp, p.config);
  const dComp = Float64Array.from([...out.dChosen, ...out.dRejected]);
  const dAll = out.dChosenAll ? Float64Array.from([...out.dChosenAll, ...new Float64Array(n)]) : null;
  // the trainer's loss is Σ over pairs (÷ pairs of the step via gradScale): scale the mean's gradient by n
  const w = tokenWeights(sb, s, dComp, dAll, n * gradScale);
  const logpAcc = lp.chosen.reduce((a, x, i) => a + (x > lp.rejected[i] ? 1 : 0), 0) / n;
  return {
    result: { loss: surrogateLoss(s.tl.logps, w, n * out.loss * gradScale), sum: n * out.loss, count: n },
    loss: out.loss, metrics: { ...out.metrics, 'logps/accuracies': logpAcc }, count: n, numTokens: sb.numTokens,
  };
}

/**
 * Loss of a micro-batch of KTO examples; the KL estimate uses the batch's mismatched pairs
 * (prompt i with completion i−1, TRL's rotation by one), computed without gradient.
 */
export function ktoStep(p: PreferenceSetup, items: readonly UnpairedExample[], indices: readonly number[] | null, gradScale: number, ctx: ForwardContext): PreferenceStep {
  const n = items.length;
  const sb = collateSequences(items.map((x) => x.example), p.padId);
  const kb = collateSequences(items.map((x, i) => mismatched(x, items[(i + n - 1) % n], p.maxSeqLength)), p.padId);
  const s = sequenceLogps(p.model, sb, ctx, true);
  const klLogps = noGrad(() => sequenceLogps(p.model, kb, defaultContext(false)).comp);
  let ref: Float64Array;
  if (p.reference === 'precomputed') {
    const c = p.refCache as { logps: Float64Array };
    if (!indices) throw new Error('ktoStep: precomputed reference log-probabilities need example indices');
    ref = Float64Array.from(indices.map((i) => c.logps[i]));
  } else {
    ref = referenceLogps(p, sb);
  }
  const klRef = referenceLogps(p, kb);
  const desirable = items.map((x) => x.desirable);
  let cl = 0, rl = 0, ct = 0, rt = 0;
  desirable.forEach((d, i) => { if (d) { cl += s.logit[i]; ct += s.compTokens[i]; } else { rl += s.logit[i]; rt += s.compTokens[i]; } });
  const k: KtoLogps = { logps: s.comp, ref, desirable, klLogps, klRef, chosenLogitSum: cl, rejectedLogitSum: rl, chosenTokens: ct, rejectedTokens: rt };
  const out = ktoLoss(k, p.config);
  const w = tokenWeights(sb, s, out.dLogps, null, n * gradScale);
  return {
    result: { loss: surrogateLoss(s.tl.logps, w, n * out.loss * gradScale), sum: n * out.loss, count: n },
    loss: out.loss, metrics: out.metrics, count: n, numTokens: sb.numTokens + kb.numTokens,
  };
}
