/**
 * Tiny random Llama (GQA, explicit head_dim, llama3 RoPE, untied), Mistral and Qwen2 (q/k/v bias,
 * linear RoPE, tied) checkpoints written by scripts/fixtures/make_tiny_models.py with transformers:
 * logits within 1e-4, the loss, and the gradient of the loss w.r.t. every weight within 1e-3 relative.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, lmLoss, namedParameters } from '../../src/models/model.js';
import { backward, noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors } from '../helpers.js';

interface TinyFixture {
  input_ids: number[][];
  loss_value?: number;
  losses?: Record<string, number>;
  masked: { labels: number[][] };
  padded: { input_ids: number[][]; attention_mask: number[][]; position_ids: number[][] };
  [k: string]: unknown;
}

function shiftLabels(ids: number[][]): Int32Array {
  const T = ids[0].length;
  const out = new Int32Array(ids.length * T).fill(-100);
  ids.forEach((row, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = row[t + 1]; });
  return out;
}

for (const name of ['llama-gqa', 'mistral', 'qwen2', 'llama-tiny-bf16', 'llama-sharded']) {
  describe(`tiny ${name} matches transformers`, () => {
    const dir = join(FIXTURES, 'tiny', name);
    const fx = readJson<TinyFixture>(join(dir, 'fixture.json'));
    const model = loadModel(dir);
    const B = fx.input_ids.length, T = fx.input_ids[0].length;
    const ids = Int32Array.from(fx.input_ids.flat());

    it('logits within 1e-4', () => {
      const ref = readTensors(join(dir, 'logits.safetensors')).get('logits')!;
      const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids, B, T }).hidden).data.slice()));
      expect(maxAbsDiff(logits, ref.data)).toBeLessThan(1e-4);
    });

    it('left-padded batch with attention mask and position ids: logits at real tokens within 1e-4', () => {
      const ref = readTensors(join(dir, 'logits_padded.safetensors')).get('logits')!;
      const p = fx.padded;
      const keyMask = Uint8Array.from(p.attention_mask.flat());
      const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, {
        ids: Int32Array.from(p.input_ids.flat()), B, T, keyMask, positions: Int32Array.from(p.position_ids.flat()),
      }).hidden).data.slice()));
      const V = model.config.vocabSize;
      let worst = 0;
      for (let r = 0; r < B * T; r++) {
        if (!keyMask[r]) continue;
        worst = Math.max(worst, maxAbsDiff(logits.subarray(r * V, (r + 1) * V), ref.data.subarray(r * V, (r + 1) * V)));
      }
      expect(worst).toBeLessThan(1e-4);
    });

    const losses = fx.losses as Record<string, number> | undefined;
    it('loss and masked loss (ignore_index -100)', () => {
      const full = noGrad(() => withArena(() => lmLoss(model, forwardHidden(model, { ids, B, T }).hidden, shiftLabels(fx.input_ids), 1)));
      expect(Math.abs(full.sum / full.count - losses!.loss)).toBeLessThan(1e-5);
      const masked = shiftLabels(fx.masked.labels);
      const m = noGrad(() => withArena(() => lmLoss(model, forwardHidden(model, { ids, B, T }).hidden, masked, 1)));
      expect(Math.abs(m.sum / m.count - losses!.loss_masked)).toBeLessThan(1e-5);
    });

    if (name === 'llama-gqa' || name === 'mistral' || name === 'qwen2') {
      it('gradient of the loss w.r.t. every weight within 1e-3 relative', () => {
        const refGrads = readTensors(join(dir, 'grads.safetensors'));
        const params = namedParameters(model);
        expect(params.length).toBe(refGrads.size);
        for (const p of params) { p.tensor.requiresGrad = true; p.tensor.grad = null; }
        withArena(() => {
          const labels = shiftLabels(fx.input_ids);
          let count = 0;
          for (const l of labels) if (l !== -100) count++;
          const r = lmLoss(model, forwardHidden(model, { ids, B, T }).hidden, labels, 1 / count);
          backward(r.loss);
        });
        for (const p of params) {
          const ref = refGrads.get(p.name);
          expect(ref, p.name).toBeDefined();
          expect(maxRelDiff(p.tensor.grad!, ref!.data), p.name).toBeLessThan(1e-3);
          p.tensor.requiresGrad = false;
          p.tensor.grad = null;
        }
      });
    }
  });
}
