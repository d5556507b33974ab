/** Evaluation: mean loss per target token (nats) and perplexity over examples, no gradients. */
import type { CausalLM } from '../models/llama.js';
import { defaultContext } from '../models/llama.js';
import type { AdapterMethod } from '../peft/types.js';
import { noGrad, weightToF32, withArena } from '../tensor/index.js';
import { evalBatches, type Example } from './data/index.js';
import { batchLoss } from './methods.js';

export interface EvalResult {
  /** Mean next-token cross-entropy per target token (nats). */
  loss: number;
  perplexity: number;
  /** Target tokens scored. */
  tokens: number;
}

/** Scores every example once (batches of batchSize rows, truncated to maxSeqLength). */
export function evaluate(model: CausalLM, examples: readonly Example[], opts: { batchSize?: number; maxSeqLength: number }): EvalResult {
  let sum = 0, count = 0;
  if (examples.length === 0) return { loss: NaN, perplexity: NaN, tokens: 0 };
  noGrad(() => {
    for (const tb of evalBatches(examples, { batchSize: opts.batchSize ?? 8, maxSeqLength: opts.maxSeqLength, pack: false })) {
      withArena(() => {
        const r = batchLoss(model, tb, 1, defaultContext(false));
        sum += r.sum;
        count += r.count;
      });
    }
  });
  const loss = count > 0 ? sum / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count };
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
  if (i >= 0) return { owner, tensor: 'model.embed_tokens.weight', index: i, value: emb[i] };
  const checks: Array<[string, () => ArrayLike<number>]> = [];
  for (const l of model.layers) {
    const p = `model.layers.${l.index}`;
    checks.push([`${p}.input_layernorm.weight`, () => l.inputLayernorm.data], [`${p}.post_attention_layernorm.weight`, () => l.postAttentionLayernorm.data]);
    for (const m of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) {
      checks.push([`${m.name}.weight`, () => weightToF32(m.weight)]);
      if (m.bias) checks.push([`${m.name}.bias`, () => m.bias!.data]);
    }
  }
  checks.push(['model.norm.weight', () => model.norm.data]);
  const head = model.lmHead;
  if (!(head.weight.data.kind === 'f32' && e.kind === 'f32' && head.weight.data.tensor === e.tensor)) checks.push(['lm_head.weight', () => weightToF32(head.weight)]);
  for (const [tensor, get] of checks) {
    const d = get();
    i = firstBad(d);
    if (i >= 0) return { owner, tensor, index: i, value: d[i] };
  }
  return null;
}
