/**
 * Gradient checkpointing: every method's gradients are identical (bit for bit) with and without
 * recomputing the decoder blocks in backward — also when the block input needs no gradient (frozen
 * embeddings: the known failure of reentrant checkpointing gave the adapters inside zero
 * gradients), with dropout (masks replayed), with prefix tuning (a tensor of the enclosing forward
 * used inside every block) and for full fine-tuning.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLoss, setGradientCheckpointing, type CausalLM } from '../../src/models/model.js';
import {
  createBottleneckAdapter, createIa3Adapter, createPrefixAdapter, createPromptAdapter, LoraAdapter, parseLoraConfig, PeftModel,
  type AdapterMethod, type NamedTensor,
} from '../../src/peft/index.js';
import { fullFineTuneParameters } from '../../src/train/methods.js';
import { runTraining } from '../../src/train/run.js';
import { backward, poolIdleBytes, trimPool, withArena } from '../../src/tensor/index.js';
import { STORIES } from '../helpers.js';

const B = 2, T = 24;
const ids = Int32Array.from({ length: B * T }, (_, i) => (i * 37 + 11) % 512);
const labels = Int32Array.from({ length: B * T }, (_, i) => (i % T === T - 1 ? -100 : ids[i + 1]));

/** Loss and the gradients of params after one forward/backward (training mode, dropout seed 3). */
function step(model: CausalLM, params: NamedTensor[], checkpointing: boolean): { loss: number; grads: Float32Array[] } {
  setGradientCheckpointing(model, checkpointing);
  for (const p of params) p.tensor.grad = null;
  let loss = 0;
  withArena(() => {
    const ctx = { training: true, seed: 3, dropoutCalls: 0 };
    const { hidden, batch } = forwardHidden(model, { ids, B, T }, ctx);
    const P = batch.T - T;
    let lab = labels;
    if (P > 0) {
      lab = new Int32Array(B * batch.T).fill(-100);
      for (let b = 0; b < B; b++) lab.set(labels.subarray(b * T, (b + 1) * T), b * batch.T + P);
    }
    const r = lmLoss(model, hidden, lab, 1 / 46, ctx);
    loss = r.sum;
    backward(r.loss);
  });
  setGradientCheckpointing(model, false);
  return { loss, grads: params.map((p) => (p.tensor.grad ?? new Float32Array(p.tensor.size)).slice()) };
}

function expectSameGrads(model: CausalLM, params: NamedTensor[]): void {
  const plain = step(model, params, false);
  const ckpt = step(model, params, true);
  expect(ckpt.loss).toBe(plain.loss);
  let nonzero = 0;
  params.forEach((p, i) => {
    const a = plain.grads[i], b = ckpt.grads[i];
    for (let j = 0; j < a.length; j++) if (a[j] !== b[j]) throw new Error(`${p.name}[${j}]: ${b[j]} with checkpointing, ${a[j]} without`);
    if (a.some((v) => v !== 0)) nonzero++;
  });
  // every trainable tensor gets a gradient (LoRA's A is zero-gradient only while B = 0: B is random here)
  expect(nonzero).toBe(params.length);
}

function withAdapter(make: (model: CausalLM) => AdapterMethod): { model: CausalLM; params: NamedTensor[] } {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  peft.addAdapter('a', make(model));
  return { model, params: peft.trainable('a') };
}

describe('gradient checkpointing', () => {
  it('LoRA with frozen embeddings (block inputs need no gradient): same gradients, none zero', () => {
    const { model, params } = withAdapter((m) => new LoraAdapter(m, parseLoraConfig({ r: 4, lora_alpha: 8, lora_dropout: 0, init_lora_weights: false, target_modules: 'all-linear' })));
    expect(model.embedTokens.kind === 'f32' && model.embedTokens.tensor.requiresGrad).toBe(false);
    expectSameGrads(model, params);
  });

  it('LoRA with dropout: the recomputation replays the same masks', () => {
    const { model, params } = withAdapter((m) => new LoraAdapter(m, parseLoraConfig({ r: 4, lora_alpha: 8, lora_dropout: 0.2, init_lora_weights: false, target_modules: 'all-linear' })));
    expectSameGrads(model, params);
  });

  it('IA3, bottleneck adapters, prompt tuning', () => {
    for (const make of [
      (m: CausalLM) => createIa3Adapter(m, {}),
      (m: CausalLM) => createBottleneckAdapter(m, { seed: 1 }),
      (m: CausalLM) => createPromptAdapter(m, { num_virtual_tokens: 4 }),
    ]) {
      const { model, params } = withAdapter(make);
      // bottleneck up-projections start at zero, so their down-projections get no gradient yet
      for (const p of params) if (/up_proj\.weight$/.test(p.name)) p.tensor.data.fill(0.01);
      expectSameGrads(model, params);
    }
  });

  it('prefix tuning through its projection MLP (a tensor of the enclosing forward used in every block)', () => {
    const { model, params } = withAdapter((m) => createPrefixAdapter(m, { num_virtual_tokens: 3, prefix_projection: true, encoder_hidden_size: 16 }));
    expectSameGrads(model, params);
  });

  it('full fine-tuning (the block inputs need gradients)', () => {
    const model = loadModel(STORIES, { dtype: 'float32' });
    expectSameGrads(model, fullFineTuneParameters(model));
  });

  it('keeps less activation memory: fewer pooled bytes after a step', () => {
    const { model, params } = withAdapter((m) => new LoraAdapter(m, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' })));
    const pooled = (on: boolean): number => {
      trimPool();
      step(model, params, on);
      return poolIdleBytes();
    };
    const plain = pooled(false), ckpt = pooled(true);
    expect(ckpt).toBeLessThan(plain * 0.6);
  });

  it('runTraining({ gradientCheckpointing }) (peft train --gradient-checkpointing) writes the same adapter', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-ckpt-'));
    const data = join(dir, 'data.jsonl');
    writeFileSync(data, Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `The frog fetched ${i} golden balls from the well.` })).join('\n'));
    const common = { data, method: 'lora' as const, maxSteps: 3, batchSize: 4, evalEvery: 0, seed: 5 };
    await runTraining({ ...common, output: join(dir, 'a') });
    await runTraining({ ...common, output: join(dir, 'b'), gradientCheckpointing: true });
    const file = (d: string): Buffer => readFileSync(join(dir, d, 'adapter_model.safetensors'));
    expect(file('b').equals(file('a'))).toBe(true);
  });
});
