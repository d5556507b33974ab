/**
 * Sliding-window KV cache (issue 11 follow-up): a window layer's cache keeps only the keys a later
 * query can still see, so its memory is bounded by the window, and cached generation still equals
 * the full forward (which masks by the window) at every step — on the tiny transformers
 * checkpoints with windows (Mistral, Qwen2.5's sliding layers, Gemma 2/3 local layers; window 4).
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { KVCache } from '../../src/generate/kv-cache.js';
import { generate } from '../../src/generate/generate.js';
import { loadModel } from '../../src/models/load.js';
import { forwardCached, forwardHidden, lmLogits } from '../../src/models/model.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff } from '../helpers.js';

const T = 70; // well past the compaction point 2·(4 − 1) + 16 = 22, several times over

for (const name of ['mistral-sw', 'qwen2.5', 'gemma2', 'gemma3']) {
  describe(`sliding-window cache, tiny ${name}`, () => {
    const model = loadModel(join(FIXTURES, 'tiny', name));
    const c = model.config;
    const V = c.vocabSize;
    let s = 7;
    const ids = Array.from({ length: T }, () => { s = (s * 1103515245 + 12345) >>> 0; return 3 + (s % (V - 3)); });

    it('prefill 9 then one token at a time equals the full forward within 1e-4; window layers hold at most their bound', () => {
      const windows = c.layers.map((l) => l.window);
      expect(windows.some((w) => w !== null)).toBe(true);
      const full = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids), B: 1, T }).hidden).data.slice()));
      const cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, 16, windows);
      const got = new Float32Array(T * V);
      const step = (from: number, to: number): void => noGrad(() => withArena(() => {
        const out = lmLogits(model, forwardCached(model, [{ ids: Int32Array.from(ids.slice(from, to)), positions: Int32Array.from({ length: to - from }, (_, i) => from + i), cache }]));
        got.set(out.data, from * V);
      }));
      step(0, 9);
      let maxStored = 0;
      for (let t = 9; t < T; t++) {
        step(t, t + 1);
        windows.forEach((w, l) => { if (w !== null) maxStored = Math.max(maxStored, cache.stored(l)); });
      }
      expect(maxAbsDiff(got, full)).toBeLessThan(1e-4);
      windows.forEach((w, l) => {
        if (w === null) {
          expect(cache.stored(l), `global layer ${l}`).toBe(T);
        } else {
          expect(cache.dropped[l], `window layer ${l} dropped old keys`).toBeGreaterThan(0);
          expect(cache.stored(l)).toBeLessThanOrEqual(2 * (w - 1) + 16);
        }
      });
      expect(maxStored).toBeLessThanOrEqual(2 * 3 + 16);
    });

    it('generate() (window-bounded cache) greedy over up to 60 new tokens equals the full-forward argmax at every step', () => {
      const prompt = ids.slice(0, 6);
      const out = generate(model, prompt, { maxNewTokens: 60, temperature: 0 });
      const seq = out.ids;
      expect(out.newIds.length).toBeGreaterThan(20);
      const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(seq), B: 1, T: seq.length }).hidden).data.slice()));
      for (let t = prompt.length - 1; t < seq.length - 1; t++) {
        const row = logits.subarray(t * V, (t + 1) * V);
        let best = 0;
        for (let v = 1; v < V; v++) if (row[v] > row[best]) best = v;
        const second = Math.max(...Array.from(row).filter((_, v) => v !== best));
        if (row[best] - second > 1e-4) expect(seq[t + 1], `step ${t}`).toBe(best); // skip near-ties

      }
    });
  });
}
