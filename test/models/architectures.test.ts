/**
 * The architectures of issue #11 against transformers 5.18 + PEFT 0.21 on tiny random checkpoints
 * (scripts/fixtures/make_tiny_archs.py): Qwen3 (q/k norms, explicit head_dim), Qwen2.5 with a
 * sliding-window layer, Mistral with sliding_window, SmolLM3 (a NoPE layer), Gemma 2 (√hidden
 * embedding scale, (1+w) norms, sandwich norms, GeGLU, query_pre_attn_scalar, attention and final
 * soft-capping, local/global layers) and Gemma 3 (q/k norms, separate local/global RoPE).
 * Per model: logits (1e-4), the left-padded batch, losses, every weight's gradient (1e-3 relative);
 * HF PEFT LoRA (all-linear), prompt tuning and IA3 adapters: logits, loss and adapter gradients;
 * cached generation (KV cache, sliding windows) equal to the full forward; GGUF LoRA export under
 * the family's llama.cpp names; a merged save reloads.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportLoraGguf } from '../../src/export/gguf-lora.js';
import { KVCache } from '../../src/generate/kv-cache.js';
import { ggufValue, readGgufFile } from '../../src/io/gguf.js';
import { loadModel } from '../../src/models/load.js';
import { defaultContext, forwardCached, forwardHidden, lmLogits, lmLoss, namedParameters, type CausalLM } from '../../src/models/model.js';
import { saveModelDir } from '../../src/models/save.js';
import { loadAdapter, LoraAdapter, PeftModel } from '../../src/peft/index.js';
import { backward, noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors } from '../helpers.js';

interface Fx {
  input_ids: number[][];
  losses: Record<string, number>;
  masked: { labels: number[][] };
  padded: { input_ids: number[][]; attention_mask: number[][]; position_ids: number[][]; labels: number[][] };
}

function shiftLabels(ids: number[][]): Int32Array {
  const T = ids[0].length;
  const out = new Int32Array(ids.length * T).fill(-100);
  ids.forEach((row, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = row[t + 1]; });
  return out;
}

function logitsOf(model: CausalLM, ids: number[][]): Float32Array {
  const B = ids.length, T = ids[0].length;
  return noGrad(() => withArena(() => {
    const { hidden, batch } = forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T });
    const all = lmLogits(model, hidden).data;
    const V = model.config.vocabSize, Tp = batch.T;
    // virtual tokens (prompt tuning) come first in each row: keep the real tokens' logits
    const out = new Float32Array(B * T * V);
    for (let b = 0; b < B; b++) out.set(all.subarray((b * Tp + Tp - T) * V, (b + 1) * Tp * V), b * T * V);
    return out;
  }));
}

/** Loss (mean over labels) and backward; labels are shifted to the rows the input hooks produce. */
function lossAndBackward(model: CausalLM, ids: number[][]): number {
  const B = ids.length, T = ids[0].length;
  let loss = 0;
  withArena(() => {
    const { hidden, batch } = forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T }, defaultContext(true));
    const Tp = batch.T;
    const labels = new Int32Array(B * Tp).fill(-100);
    const base = shiftLabels(ids);
    for (let b = 0; b < B; b++) {
      labels.set(base.subarray(b * T, (b + 1) * T), b * Tp + Tp - T);
      // PEFT prepends -100 labels for virtual tokens; after the shift the last virtual token predicts the first real one
      if (Tp > T) labels[b * Tp + Tp - T - 1] = ids[b][0];
    }
    const n = labels.filter((l) => l !== -100).length;
    const r = lmLoss(model, hidden, labels, 1 / n);
    loss = r.sum / r.count;
    backward(r.loss);
  });
  return loss;
}

const norm = (k: string): string => k.replace(/\.default(?=\.|$)/g, '');

const NAMES = ['qwen3', 'qwen2.5', 'mistral-sw', 'smollm3', 'gemma2', 'gemma3'];

for (const name of NAMES) {
  describe(`tiny ${name} matches transformers and HF PEFT`, () => {
    const dir = join(FIXTURES, 'tiny', name);
    const fx = readJson<Fx>(join(dir, 'fixture.json'));
    const model = loadModel(dir);
    const B = fx.input_ids.length, T = fx.input_ids[0].length;
    const ids = Int32Array.from(fx.input_ids.flat());
    const V = model.config.vocabSize;

    it('logits within 1e-4; loss and masked loss within 1e-5', () => {
      const ref = readTensors(join(dir, 'logits.safetensors')).get('logits')!;
      expect(maxAbsDiff(logitsOf(model, fx.input_ids), ref.data)).toBeLessThan(1e-4);
      const full = noGrad(() => withArena(() => lmLoss(model, forwardHidden(model, { ids, B, T }).hidden, shiftLabels(fx.input_ids), 1)));
      expect(Math.abs(full.sum / full.count - fx.losses.loss)).toBeLessThan(1e-5);
      const m = noGrad(() => withArena(() => lmLoss(model, forwardHidden(model, { ids, B, T }).hidden, shiftLabels(fx.masked.labels), 1)));
      expect(Math.abs(m.sum / m.count - fx.losses.loss_masked)).toBeLessThan(1e-5);
    });

    // (the padded loss is not compared: transformers' eager attention gives a fully masked pad query a
    // uniform softmax over all keys, and the pad row before the first real token carries a label)
    it('left-padded batch: logits at real tokens within 1e-4', () => {
      const ref = readTensors(join(dir, 'logits_padded.safetensors')).get('logits')!;
      const p = fx.padded;
      const keyMask = Uint8Array.from(p.attention_mask.flat());
      const batch = { ids: Int32Array.from(p.input_ids.flat()), B, T, keyMask, positions: Int32Array.from(p.position_ids.flat()) };
      const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, batch).hidden).data.slice()));
      let worst = 0;
      for (let r = 0; r < B * T; r++) if (keyMask[r]) worst = Math.max(worst, maxAbsDiff(logits.subarray(r * V, (r + 1) * V), ref.data.subarray(r * V, (r + 1) * V)));
      expect(worst).toBeLessThan(1e-4);
    });

    it('gradient of the loss w.r.t. every weight within 1e-3 relative', () => {
      const ref = readTensors(join(dir, 'grads.safetensors'));
      const params = namedParameters(model);
      expect(params.map((p) => p.name).sort()).toEqual([...ref.keys()].sort());
      for (const p of params) { p.tensor.requiresGrad = true; p.tensor.grad = null; }
      lossAndBackward(model, fx.input_ids);
      for (const p of params) {
        expect(maxRelDiff(p.tensor.grad!, ref.get(p.name)!.data), p.name).toBeLessThan(1e-3);
        p.tensor.requiresGrad = false;
        p.tensor.grad = null;
      }
    });

    it('cached generation (prefill 5, then one token at a time) equals the full forward within 1e-4', () => {
      const c = model.config;
      const row = fx.input_ids[0];
      const full = logitsOf(model, [row]);
      const cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, 16);
      const got = new Float32Array(full.length);
      noGrad(() => withArena(() => {
        const pre = lmLogits(model, forwardCached(model, [{ ids: Int32Array.from(row.slice(0, 5)), positions: Int32Array.from([0, 1, 2, 3, 4]), cache }]));
        got.set(pre.data, 0);
      }));
      for (let t = 5; t < row.length; t++) {
        noGrad(() => withArena(() => {
          const step = lmLogits(model, forwardCached(model, [{ ids: Int32Array.of(row[t]), positions: Int32Array.of(t), cache }]));
          got.set(step.data, t * V);
        }));
      }
      expect(maxAbsDiff(got, full)).toBeLessThan(1e-4);
    });

    for (const kind of ['lora', 'prompt', 'ia3']) {
      it(`HF PEFT ${kind}: logits within 1e-4, loss within 1e-5, adapter gradients within 1e-3 relative`, () => {
        const adir = join(dir, `peft-${kind}`);
        const afx = readJson<{ loss: number }>(join(adir, 'fixture.json'));
        const m = loadModel(dir);
        const peft = new PeftModel(m);
        loadAdapter(peft, adir, 'a');
        expect(maxAbsDiff(logitsOf(m, fx.input_ids), readTensors(join(adir, 'logits.safetensors')).get('logits')!.data)).toBeLessThan(1e-4);
        const params = peft.trainable('a');
        for (const p of params) p.tensor.grad = null;
        expect(Math.abs(lossAndBackward(m, fx.input_ids) - afx.loss)).toBeLessThan(1e-5);
        const ref = readTensors(join(adir, 'grads.safetensors'));
        const byName = new Map(params.map((p) => [norm(p.name), p.tensor]));
        expect(byName.size).toBe(ref.size);
        for (const [k, r] of ref) {
          const t = byName.get(norm(k));
          expect(t, k).toBeDefined();
          expect(maxRelDiff(t!.grad!, r.data), k).toBeLessThan(1e-3);
        }
      });
    }

    it('the PEFT LoRA adapter exports to a llama.cpp GGUF adapter under the family\'s architecture and tensor names', () => {
      const out = mkdtempSync(join(tmpdir(), `peft-gguf-${name}-`));
      try {
        const file = join(out, 'a.gguf');
        exportLoraGguf(join(dir, 'peft-lora'), file, dir);
        const g = readGgufFile(file);
        const arch = { qwen3: 'qwen3', 'qwen2.5': 'qwen2', 'mistral-sw': 'llama', smollm3: 'smollm3', gemma2: 'gemma2', gemma3: 'gemma3' }[name];
        expect(ggufValue(g, 'general.architecture')).toBe(arch);
        // every linear of every layer: 7 roles × 2 (lora_a, lora_b)
        expect(g.tensors.length).toBe(model.config.numLayers * 7 * 2);
        expect(g.tensors.some((t) => t.name === `blk.${model.config.numLayers - 1}.ffn_down.weight.lora_b`)).toBe(true);
      } finally {
        rmSync(out, { recursive: true, force: true });
      }
    });

    it('LoRA merged into the weights and saved as an HF directory reloads with the adapted logits', () => {
      const m = loadModel(dir);
      const peft = new PeftModel(m);
      const a = loadAdapter(peft, join(dir, 'peft-lora'), 'a') as LoraAdapter;
      a.merge();
      peft.deleteAdapter('a');
      const out = mkdtempSync(join(tmpdir(), `peft-arch-${name}-`));
      try {
        saveModelDir(m, out);
        const again = loadModel(out);
        const ref = readTensors(join(dir, 'peft-lora', 'logits.safetensors')).get('logits')!;
        expect(maxAbsDiff(logitsOf(again, fx.input_ids), ref.data)).toBeLessThan(1e-4);
      } finally {
        rmSync(out, { recursive: true, force: true });
      }
    });
  });
}
