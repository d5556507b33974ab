/**
 * Shared checks of an architecture against its transformers / HF PEFT fixtures
 * (scripts/fixtures/make_phi3_gpt2.py layout): logits, losses, the left-padded batch, every
 * weight's gradient, and PEFT adapters' logits, loss and gradients. Used by the per-architecture
 * tests (phi3.test.ts, gpt2.test.ts).
 */
import { expect } from 'vitest';
import { copyFileSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { KVCache } from '../../src/generate/kv-cache.js';
import { decoderLinears, defaultContext, forwardCached, forwardHidden, lmLogits, lmLoss, namedParameters, type CausalLM } from '../../src/models/model.js';
import { loadAdapter, PeftModel } from '../../src/peft/index.js';
import { backward, noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors } from '../helpers.js';

export interface ArchFx {
  input_ids: number[][];
  losses: Record<string, number>;
  masked: { labels: number[][] };
  padded: { input_ids: number[][]; attention_mask: number[][]; position_ids: number[][] };
}

export const tinyDir = (name: string): string => join(FIXTURES, 'tiny', name);
export const peftDir = (name: string): string => join(FIXTURES, 'peft', name);
export const archFixture = (name: string): ArchFx => readJson<ArchFx>(join(tinyDir(name), 'fixture.json'));

export function shiftLabels(ids: number[][]): Int32Array {
  const T = ids[0].length;
  const out = new Int32Array(ids.length * T).fill(-100);
  ids.forEach((row, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = row[t + 1]; });
  return out;
}

/** Logits of every row the forward produces (virtual tokens of prompt tuning included, first in each row). */
export function logitsOf(model: CausalLM, ids: number[][], extra: { keyMask?: Uint8Array; positions?: Int32Array } = {}): Float32Array {
  const B = ids.length, T = ids[0].length;
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T, ...extra }).hidden).data.slice()));
}

/** Mean next-token loss with labels = ids (PEFT's rule for virtual tokens: -100 labels, the last one predicts ids[0]); backward when asked. */
export function lossOf(model: CausalLM, ids: number[][], withBackward: boolean, labelsIds: number[][] = ids): number {
  const B = ids.length, T = ids[0].length;
  let loss = 0;
  const run = (): void => withArena(() => {
    const { hidden, batch } = forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T }, defaultContext(withBackward));
    const Tp = batch.T, P = Tp - T;
    const base = shiftLabels(labelsIds);
    const labels = new Int32Array(B * Tp).fill(-100);
    for (let b = 0; b < B; b++) {
      labels.set(base.subarray(b * T, (b + 1) * T), b * Tp + P);
      if (P > 0) labels[b * Tp + P - 1] = ids[b][0];
    }
    const n = labels.filter((l) => l !== -100).length;
    const r = lmLoss(model, hidden, labels, 1 / n);
    loss = r.sum / r.count;
    if (withBackward) backward(r.loss);
  });
  if (withBackward) run(); else noGrad(run);
  return loss;
}

/** Logits (1e-4), loss and masked loss (1e-5), padded batch at real tokens (1e-4), every weight's gradient (1e-3 relative). */
export function checkBase(name: string): void {
  const dir = tinyDir(name), fx = archFixture(name);
  const model = loadModel(dir);
  const V = model.config.vocabSize, B = fx.input_ids.length, T = fx.input_ids[0].length;
  expect(maxAbsDiff(logitsOf(model, fx.input_ids), readTensors(join(dir, 'logits.safetensors')).get('logits')!.data)).toBeLessThan(1e-4);
  expect(Math.abs(lossOf(model, fx.input_ids, false) - fx.losses.loss)).toBeLessThan(1e-5);
  expect(Math.abs(lossOf(model, fx.input_ids, false, fx.masked.labels) - fx.losses.loss_masked)).toBeLessThan(1e-5);
  const p = fx.padded;
  const keyMask = Uint8Array.from(p.attention_mask.flat());
  const padded = logitsOf(model, p.input_ids, { keyMask, positions: Int32Array.from(p.position_ids.flat()) });
  const ref = readTensors(join(dir, 'logits_padded.safetensors')).get('logits')!.data;
  let worst = 0;
  for (let r = 0; r < B * T; r++) if (keyMask[r]) worst = Math.max(worst, maxAbsDiff(padded.subarray(r * V, (r + 1) * V), ref.subarray(r * V, (r + 1) * V)));
  expect(worst).toBeLessThan(1e-4);
  const grads = readTensors(join(dir, 'grads.safetensors'));
  const params = namedParameters(model);
  expect(params.map((q) => q.name).sort()).toEqual([...grads.keys()].sort());
  for (const q of params) { q.tensor.requiresGrad = true; q.tensor.grad = null; }
  lossOf(model, fx.input_ids, true);
  // Conv1D (GPT-2) weights are [out, in] here and [in, out] in transformers: compare transposed
  const conv = new Map(decoderLinears(model).filter((m) => m.fanInFanOut).map((m) => [`${m.name}.weight`, m]));
  for (const q of params) {
    const m = conv.get(q.name);
    const g = m ? transpose(q.tensor.grad!, m.outFeatures, m.inFeatures) : q.tensor.grad!;
    expect(maxRelDiff(g, grads.get(q.name)!.data), q.name).toBeLessThan(1e-3);
  }
}

/** [rows, cols] → [cols, rows]. */
export function transpose(a: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = a[r * cols + c];
  return out;
}

const normKey = (k: string): string => k.replace(/\.default(?=\.|$)/g, '').replace(/lora_magnitude_vector\.weight$/, 'lora_magnitude_vector');

/** An HF PEFT adapter on the base: logits (1e-4), loss (1e-5), adapter gradients (relative `gradTol`). Returns the PeftModel. */
export function checkPeft(base: string, adapter: string, gradTol = 1e-4): { peft: PeftModel; fx: ArchFx } {
  const dir = peftDir(adapter), fx = archFixture(base);
  const afx = readJson<{ loss: { value: number } }>(join(dir, 'fixture.json'));
  const peft = new PeftModel(loadModel(tinyDir(base)));
  loadAdapter(peft, dir, 'a');
  expect(maxAbsDiff(logitsOf(peft.model, fx.input_ids), readTensors(join(dir, 'logits.safetensors')).get('logits')!.data)).toBeLessThan(1e-4);
  const params = peft.trainable('a');
  for (const q of params) q.tensor.grad = null;
  expect(Math.abs(lossOf(peft.model, fx.input_ids, true) - afx.loss.value)).toBeLessThan(1e-5);
  const ref = readTensors(join(dir, 'grads.safetensors'));
  const byName = new Map(params.map((q) => [normKey(q.name), q.tensor]));
  expect(byName.size).toBe(ref.size);
  for (const [k, r] of ref) {
    const t = byName.get(normKey(k));
    expect(t, k).toBeDefined();
    expect(maxRelDiff(t!.grad!, r.data), k).toBeLessThan(gradTol);
  }
  return { peft, fx };
}

/**
 * A copy of a tiny checkpoint with a word-level tokenizer over its vocabulary (`w3` … `wN`, plus
 * <unk>/<s>/</s>) and a small text file of such words: what `peft train` needs to run on it.
 */
export function trainableCopy(name: string): { model: string; data: string } {
  const dir = mkdtempSync(join(tmpdir(), `peft-arch-${name}-`));
  const src = tinyDir(name);
  for (const f of ['config.json', 'generation_config.json', 'model.safetensors']) if (existsSync(join(src, f))) copyFileSync(join(src, f), join(dir, f));
  const V = readJson<{ vocab_size: number }>(join(src, 'config.json')).vocab_size;
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let i = 3; i < V; i++) vocab[`w${i}`] = i;
  const special = (id: number, content: string): Record<string, unknown> => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: null, pre_tokenizer: { type: 'Whitespace' }, post_processor: null, decoder: null,
    model: { type: 'WordLevel', vocab, unk_token: '<unk>' },
  }));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>' }));
  const data = join(dir, 'data.jsonl');
  writeFileSync(data, Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: Array.from({ length: 12 }, (_, j) => `w${3 + ((i * 7 + j * 5) % (V - 3))}`).join(' ') })).join('\n'));
  return { model: dir, data };
}

/** Cached generation of row 0 (prefill 5, then one token at a time) against the full forward's logits (max |Δ|). */
export function cachedVsFull(name: string): number {
  const model = loadModel(tinyDir(name));
  const c = model.config, V = c.vocabSize;
  const row = archFixture(name).input_ids[0];
  const full = logitsOf(model, [row]);
  const cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, 16);
  const got = new Float32Array(full.length);
  noGrad(() => withArena(() => got.set(lmLogits(model, forwardCached(model, [{ ids: Int32Array.from(row.slice(0, 5)), positions: Int32Array.from([0, 1, 2, 3, 4]), cache }])).data, 0)));
  for (let t = 5; t < row.length; t++)
    noGrad(() => withArena(() => got.set(lmLogits(model, forwardCached(model, [{ ids: Int32Array.of(row[t]), positions: Int32Array.of(t), cache }])).data, t * V)));
  return maxAbsDiff(got, full);
}
