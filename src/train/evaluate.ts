/** Evaluation: mean loss per target token (nats) and perplexity over examples, no gradients. */
import { defaultContext, layerLinears, type CausalLM, type Norm } from '../models/model.js';
import type { AdapterMethod } from '../peft/types.js';
import { noGrad, weightToF32, withArena } from '../tensor/index.js';
import { evalBatches, type Example } from './data/index.js';
import { batchLoss, type LossConvention } from './methods.js';

export interface EvalResult {
  /** Mean next-token cross-entropy per target token (nats). */
  loss: number;
  perplexity: number;
  /** Target tokens scored. */
  tokens: number;
  /** Virtual tokens the active adapter prepends (prompt tuning), 0 otherwise. */
  virtualTokens: number;
  /** How virtual tokens were scored ({@link LossConvention}); 'next-token' when there are none. */
  lossConvention: LossConvention;
}

/**
 * Scores every example once (batches of batchSize rows, truncated to maxSeqLength). With prompt
 * tuning, `lossConvention` (default 'peft', HF PEFT's) decides whether the last virtual token's
 * prediction of each row's first token counts.
 */
export function evaluate(model: CausalLM, examples: readonly Example[], opts: { batchSize?: number; maxSeqLength: number; lossConvention?: LossConvention }): EvalResult {
  let sum = 0, count = 0, virtualTokens = 0;
  const convention = opts.lossConvention ?? 'peft';
  if (examples.length === 0) return { loss: NaN, perplexity: NaN, tokens: 0, virtualTokens: 0, lossConvention: 'next-token' };
  noGrad(() => {
    for (const tb of evalBatches(examples, { batchSize: opts.batchSize ?? 8, maxSeqLength: opts.maxSeqLength, pack: false })) {
      withArena(() => {
        const r = batchLoss(model, tb, 1, defaultContext(false), convention);
        sum += r.sum;
        count += r.count;
        virtualTokens = r.virtualTokens;
      });
    }
  });
  const loss = count > 0 ? sum / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count, virtualTokens, lossConvention: virtualTokens > 0 ? convention : 'next-token' };
}

/** Where a tensor holds a NaN or ±Inf: which tensor, whose (adapter name or 'base model'), the first bad element. */
export interface NonFinite {
  owner: string;
  tensor: string;
  index: number;
  value: number;
}

function firstBad(a: ArrayLike<number>): number {
  for (let i = 0; i < a.length; i++) if (!Number.isFinite(a[i])) return i;
  return -1;
}

/**
 * The first tensor holding a NaN or ±Inf, to name the cause of a non-finite loss: the adapters'
 * tensors first (state-dict order, PEFT names), then the base model's weights (HF names:
 * embedding, per layer norms and linear weights and biases — bf16 and 4-bit ones dequantized —,
 * final norm, lm_head). Null when every weight is finite (then the activations overflowed).
 */
export function firstNonFinite(model: CausalLM, adapters: Iterable<[string, AdapterMethod]> = []): NonFinite | null {
  for (const [owner, a] of adapters) {
    for (const [tensor, t] of a.stateDict()) {
      const i = firstBad(t.data);
      if (i >= 0) return { owner, tensor, index: i, value: t.data[i] };
    }
  }
  const owner = 'base model';
  const e = model.embedTokens;
  const emb = e.kind === 'f32' ? e.tensor.data : weightToF32({ rows: e.shape[0], cols: e.shape[1], data: { kind: 'bf16', bits: e.bits } });
  let i = firstBad(emb);
  if (i >= 0) return { owner, tensor: `${model.embedName}.weight`, index: i, value: emb[i] };
  const checks: Array<[string, () => ArrayLike<number>]> = [];
  const norm = (n: Norm): void => {
    checks.push([`${n.name}.weight`, () => n.weight.data]);
    if (n.bias) checks.push([`${n.name}.bias`, () => n.bias!.data]);
  };
  if (model.embedPositions) norm(model.embedPositions);
  for (const l of model.layers) {
    for (const n of Object.values(l.norms)) norm(n);
    for (const m of layerLinears(l)) {
      checks.push([`${m.name}.weight`, () => weightToF32(m.weight)]);
      if (m.bias) checks.push([`${m.name}.bias`, () => m.bias!.data]);
    }
  }
  norm(model.norm);
  const head = model.lmHead;
  if (!(head.weight.data.kind === 'f32' && e.kind === 'f32' && head.weight.data.tensor === e.tensor)) checks.push(['lm_head.weight', () => weightToF32(head.weight)]);
  for (const [tensor, get] of checks) {
    const d = get();
    i = firstBad(d);
    if (i >= 0) return { owner, tensor, index: i, value: d[i] };
  }
  return null;
}
