/**
 * The chunked losses equal the loss over whole logits: linearCrossEntropy with soft-capping and
 * chunkedCrossEntropy (a hooked head) against crossEntropy(softcap(linear(…))) at the op level, and
 * lmLoss against crossEntropy(lmLogits(…)) on tiny models — Gemma 2 (final_logit_softcapping,
 * tied embeddings), LoRA on lm_head, a modules_to_save lm_head copy, IA3 on lm_head, lora_dropout on
 * lm_head while training (falls back, same masks) — with ignored labels (−100, a whole chunk of
 * them) and an incoming gradient ≠ 1. Loss within 1e-6 relative, gradients within 2e-6 of the
 * largest entry (float32 GEMM sums in chunks).
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, lmLoss, type CausalLM, type ForwardContext } from '../../src/models/model.js';
import { createIa3Adapter, LoraAdapter, parseLoraConfig, PeftModel } from '../../src/peft/index.js';
import {
  backward, chunkedCrossEntropy, crossEntropy, f32Weight, linear, linearCrossEntropy, lowRankDown, lowRankUp, softcap,
  Tensor, withArena, type LossResult,
} from '../../src/tensor/index.js';
import { FIXTURES, maxRelDiff } from '../helpers.js';

const TINY = join(FIXTURES, 'tiny');

function rnd(n: number, seed: number, s = 1): Float32Array {
  let x = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    x = (x * 1664525 + 1013904223) >>> 0;
    return ((x / 2 ** 32) * 2 - 1) * s;
  });
}

/** Loss value and the gradients of `params` after backward(loss, [g]). */
function lossAndGrads(params: Tensor[], g: number, f: () => LossResult): { loss: number; sum: number; count: number; grads: Float32Array[] } {
  for (const p of params) p.grad = null;
  const r = withArena(() => {
    const res = f();
    backward(res.loss, Float32Array.of(g));
    return { loss: res.loss.data[0], sum: res.sum, count: res.count };
  });
  return { ...r, grads: params.map((p) => (p.grad ? p.grad.slice() : new Float32Array(p.size))) };
}

function expectSame(a: ReturnType<typeof lossAndGrads>, b: ReturnType<typeof lossAndGrads>, what: string): void {
  expect(a.count, what).toBe(b.count);
  expect(Math.abs(a.loss - b.loss), what).toBeLessThanOrEqual(1e-6 * Math.abs(b.loss));
  a.grads.forEach((g, i) => {
    expect(b.grads[i].some((v) => v !== 0), `${what}: gradient ${i} is zero`).toBe(true);
    expect(maxRelDiff(g, b.grads[i]), `${what}: gradient ${i}`).toBeLessThan(2e-6);
  });
}

// labels: rows 6–9 all ignored (a whole chunk of 4 skipped), others scattered
const N = 14, D = 6, V = 11;
const LABELS = Int32Array.from([3, -100, 8, 0, 10, 5, -100, -100, -100, -100, 1, 7, -100, 2]);

describe('chunked cross-entropy (op level)', () => {
  const h = Tensor.param(rnd(N * D, 1), [N, D]), w = Tensor.param(rnd(V * D, 2, 2), [V, D]), b = Tensor.param(rnd(V, 3), [V]);

  for (const cap of [null, 1.5]) {
    it(`linearCrossEntropy in chunks of 4${cap ? ', soft-capped at 1.5' : ''} equals the whole-logits loss: h, W, bias`, () => {
      const ref = lossAndGrads([h, w, b], 0.7, () => {
        const z = linear(h, f32Weight(w), b);
        return crossEntropy(cap ? softcap(z, cap) : z, LABELS, 1 / 9);
      });
      const got = lossAndGrads([h, w, b], 0.7, () => linearCrossEntropy(h, f32Weight(w), b, LABELS, 1 / 9, 4, cap));
      expectSame(got, ref, `cap ${cap}`);
    });
  }

  it('chunkedCrossEntropy over a LoRA-style soft-capped head equals the whole-logits loss; abort leaves gradients untouched', () => {
    const A = Tensor.param(rnd(3 * D, 4), [3, D]), B = Tensor.param(rnd(V * 3, 5), [V, 3]);
    const head = (x: Tensor): Tensor => softcap(lowRankUp(linear(x, f32Weight(w), b), lowRankDown(x, [A]), 0, B, 0.5), 2);
    const params = [h, w, b, A, B];
    const ref = lossAndGrads(params, 1.3, () => crossEntropy(head(h), LABELS, 1 / 9));
    const got = lossAndGrads(params, 1.3, () => chunkedCrossEntropy(h, LABELS, 1 / 9, head, 4)!);
    expectSame(got, ref, 'chunked head');
    for (const p of params) p.grad = null;
    const aborted = withArena(() => chunkedCrossEntropy(h, LABELS, 1 / 9, head, 4, () => true));
    expect(aborted).toBeNull();
    for (const p of params) expect(p.grad).toBeNull();
  });
});

describe('lmLoss in chunks equals crossEntropy(lmLogits) on tiny models', () => {
  const ids = Int32Array.from({ length: 2 * 9 }, (_, i) => (i * 37 + 5) % 90 + 3);
  const labels = new Int32Array(18).fill(-100);
  for (let t = 0; t < 8; t++) { labels[t] = ids[t + 1]; labels[9 + t] = ids[10 + t]; }
  labels[2] = -100;

  function compare(model: CausalLM, params: Tensor[], training: boolean): void {
    const batch = { ids, B: 2, T: 9 };
    const run = (chunked: boolean) => lossAndGrads(params, 0.5, () => {
      const ctx: ForwardContext = { training, seed: 3, dropoutCalls: 0 };
      const { hidden } = forwardHidden(model, batch, ctx);
      return chunked ? lmLoss(model, hidden, labels, 1 / 15, ctx, 5) : crossEntropy(lmLogits(model, hidden, ctx), labels, 1 / 15);
    });
    expectSame(run(true), run(false), model.config.architecture);
  }

  it('Gemma 2: soft-capped final logits, tied embeddings (full fine-tuning gradients of the tied table)', () => {
    const model = loadModel(join(TINY, 'gemma2'));
    expect(model.config.finalSoftcap).toBe(5);
    const embed = model.embedTokens.kind === 'f32' ? model.embedTokens.tensor : null;
    expect(embed).not.toBeNull();
    embed!.requiresGrad = true;
    compare(model, [embed!], true);
    embed!.requiresGrad = false;
  });

  it('LoRA on lm_head (Gemma 2, soft-capped) and a modules_to_save lm_head copy (Llama)', () => {
    const g = new PeftModel(loadModel(join(TINY, 'gemma2')));
    g.addAdapter('a', new LoraAdapter(g.model, parseLoraConfig({ r: 4, lora_alpha: 8, init_lora_weights: false, target_modules: ['q_proj', 'lm_head'] })));
    compare(g.model, g.trainable('a').map((p) => p.tensor), true);
    const l = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    l.addAdapter('a', new LoraAdapter(l.model, parseLoraConfig({ r: 4, lora_alpha: 8, init_lora_weights: false, target_modules: ['v_proj'], modules_to_save: ['lm_head'] })));
    compare(l.model, l.trainable('a').map((p) => p.tensor), true);
  });

  it('IA3 on lm_head; LoRA on lm_head with dropout while training (whole-logits fallback, same masks)', () => {
    const p = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    p.addAdapter('i', createIa3Adapter(p.model, { target_modules: ['k_proj', 'lm_head'], feedforward_modules: [] }));
    compare(p.model, p.trainable('i').map((t) => t.tensor), true);
    const q = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    q.addAdapter('a', new LoraAdapter(q.model, parseLoraConfig({ r: 4, lora_alpha: 8, lora_dropout: 0.4, init_lora_weights: false, target_modules: ['lm_head', 'q_proj'] })));
    compare(q.model, q.trainable('a').map((t) => t.tensor), true);
  });
});
