/**
 * Every PEFT method behaves the same in every inference path, through the public API:
 * - generate(model, ids) with no setup honours the active adapter (prompt and prefix tuning
 *   included): KV-cached generation equals uncached recomputation, alone and in a batch;
 * - a left-padded batch given only a key mask equals each row run alone (positions derive from
 *   the mask), for every method.
 */
import { describe, expect, it } from 'vitest';
import { generate, generateBatch } from '../../src/generate/generate.js';
import { argmax } from '../../src/generate/sampling.js';
import { defaultContext, forwardHidden, lmLogits, type Batch, type CausalLM } from '../../src/models/model.js';
import { loadModel } from '../../src/models/load.js';
import {
  createBottleneckAdapter, createIa3Adapter, createPrefixAdapter, createPromptAdapter, LoraAdapter, parseLoraConfig, PeftModel,
  type AdapterMethod,
} from '../../src/peft/index.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { uniformRng } from '../../src/tensor/random.js';
import { maxAbsDiff, STORIES } from '../helpers.js';

type Make = (m: CausalLM) => AdapterMethod;
const METHODS: Record<string, Make> = {
  lora: (m) => new LoraAdapter(m, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false }), 1),
  ia3: (m) => createIa3Adapter(m, { init_ia3_weights: false }, 2),
  bottleneck: (m) => createBottleneckAdapter(m, { reduction_factor: 4, seed: 3 }),
  prefix: (m) => createPrefixAdapter(m, { num_virtual_tokens: 4 }, 4),
  prompt: (m) => createPromptAdapter(m, { num_virtual_tokens: 5 }, undefined, 5),
};

/** A model with one active adapter of the method, its trainable tensors perturbed so it changes the output. */
function adapted(name: string): { model: CausalLM; peft: PeftModel } {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  const a = METHODS[name](model);
  const u = uniformRng(17);
  for (const { tensor } of a.trainableParameters()) for (let i = 0; i < tensor.size; i++) tensor.data[i] = tensor.data[i] * (1 + 0.5 * (u() - 0.5)) + 0.3 * (u() - 0.5);
  peft.addAdapter(name, a);
  return { model, peft };
}

function logitsOf(model: CausalLM, b: Batch): { data: Float32Array; T: number } {
  return noGrad(() => withArena(() => {
    const { hidden, batch } = forwardHidden(model, b, defaultContext());
    return { data: lmLogits(model, hidden).data.slice(), T: batch.T };
  }));
}

function greedyNoCache(model: CausalLM, prompt: number[], maxNew: number): number[] {
  const ids = [...prompt];
  const V = model.config.vocabSize;
  for (let i = 0; i < maxNew; i++) {
    const { data, T } = logitsOf(model, { ids: Int32Array.from(ids), B: 1, T: ids.length });
    const id = argmax(data.subarray((T - 1) * V, T * V));
    if (model.config.eosTokenIds.includes(id)) break;
    ids.push(id);
  }
  return ids;
}

const prompts = [[1, 403, 407, 261, 378], [1, 365, 338]];
const N = 6;

describe('generation honours the active adapter by default', () => {
  for (const name of Object.keys(METHODS)) {
    it(`default sequence setup: ${name}: generate(model, ids) with no setup equals uncached greedy decoding, alone and batched`, () => {
      const { model, peft } = adapted(name);
      const uncached = prompts.map((p) => greedyNoCache(model, p, N));
      const base = peft.withDisabled(() => prompts.map((p) => greedyNoCache(model, p, N)));
      expect(uncached, 'the adapter changes the greedy continuation').not.toEqual(base);
      prompts.forEach((p, i) => expect(generate(model, p, { maxNewTokens: N }).ids, `prompt ${i}`).toEqual(uncached[i]));
      generateBatch(model, prompts.map((ids) => ({ ids })), { maxNewTokens: N }).forEach((r, i) => expect(r.ids, `batch row ${i}`).toEqual(uncached[i]));
      // disabled adapters: generation is the base model's
      peft.withDisabled(() => prompts.forEach((p, i) => expect(generate(model, p, { maxNewTokens: N }).ids).toEqual(base[i])));
    });
  }
});

describe('padded batches derive positions from the mask', () => {
  for (const name of Object.keys(METHODS)) {
    it(`mask-derived positions: ${name}: a left-padded batch with only a key mask equals each row alone within 1e-4`, () => {
      const { model } = adapted(name);
      const V = model.config.vocabSize;
      const rows = [[1, 403, 407, 261, 378, 410, 285, 287, 46], [1, 365, 338, 261, 297, 280]];
      const T = 9;
      const pads = rows.map((r) => T - r.length);
      const ids = Int32Array.from(rows.flatMap((r, b) => [...new Array(pads[b]).fill(0), ...r]));
      const keyMask = Uint8Array.from(rows.flatMap((r, b) => [...new Array(pads[b]).fill(0), ...r.map(() => 1)]));
      const padded = logitsOf(model, { ids, B: 2, T, keyMask });
      const P = padded.T - T; // prompt tuning returns its virtual rows first
      rows.forEach((r, b) => {
        const alone = logitsOf(model, { ids: Int32Array.from(r), B: 1, T: r.length });
        const start = b * padded.T + P + pads[b];
        expect(maxAbsDiff(padded.data.subarray(start * V, (start + r.length) * V), alone.data.subarray(P * V)), `row ${b}`).toBeLessThan(1e-4);
      });
    });
  }

  it('mask-derived positions: an explicit positions array is still honoured as given', () => {
    const { model } = adapted('prompt');
    const b: Batch = { ids: Int32Array.from([0, 0, 1, 403, 407]), B: 1, T: 5, keyMask: Uint8Array.from([0, 0, 1, 1, 1]) };
    const derived = logitsOf(model, b).data;
    const explicit = logitsOf(model, { ...b, positions: Int32Array.from([0, 1, 2, 3, 4]) }).data;
    expect(maxAbsDiff(derived, explicit)).toBeGreaterThan(1e-3);
  });
});
