/** Evaluation: mean loss per target token (nats) and perplexity over examples, no gradients. */
import type { CausalLM } from '../models/model.js';
import { defaultContext } from '../models/model.js';
import { noGrad, withArena } from '../tensor/index.js';
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
