/** Sampling: greedy, top-k / top-p limits, seeded determinism and the softmax(logits / T) distribution. */
import { describe, expect, it } from 'vitest';
import { argmax, checkSampling, makeRng, sampleToken } from '../../src/generate/sampling.js';

const logits = Float32Array.from([2.0, 1.0, 0.5, -1.0, 3.0, 0.0]);

describe('sampling', () => {
  it('temperature 0 is argmax; top_k 1 and a tiny top_p are too', () => {
    const rng = makeRng(1);
    expect(sampleToken(logits, { temperature: 0 }, rng)).toBe(4);
    for (let i = 0; i < 50; i++) {
      expect(sampleToken(logits, { temperature: 1, topK: 1 }, rng)).toBe(4);
      expect(sampleToken(logits, { temperature: 1, topP: 1e-6 }, rng)).toBe(4);
    }
    expect(argmax(logits)).toBe(4);
  });

  it('frequencies follow softmax(logits / T) and top_k / top_p restrict the support', () => {
    const rng = makeRng(42);
    const T = 0.7, n = 40000;
    const counts = new Array(logits.length).fill(0);
    for (let i = 0; i < n; i++) counts[sampleToken(logits, { temperature: T }, rng)]++;
    const z = Array.from(logits, (x) => Math.exp(x / T));
    const s = z.reduce((a, b) => a + b, 0);
    z.forEach((p, i) => expect(Math.abs(counts[i] / n - p / s)).toBeLessThan(0.01));
    const seen = new Set<number>();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { temperature: 1, topK: 2 }, rng));
    expect([...seen].sort()).toEqual([0, 4]);
    // softmax(logits) ≈ [0.23, 0.09, 0.05, 0.01, 0.63, 0.03]: top_p 0.8 keeps {4, 0}
    seen.clear();
    for (let i = 0; i < 2000; i++) seen.add(sampleToken(logits, { temperature: 1, topP: 0.8 }, rng));
    expect([...seen].sort()).toEqual([0, 4]);
  });

  it('the same seed gives the same tokens', () => {
    const a = makeRng(7), b = makeRng(7);
    for (let i = 0; i < 100; i++) expect(sampleToken(logits, { temperature: 1.3, topP: 0.95 }, a)).toBe(sampleToken(logits, { temperature: 1.3, topP: 0.95 }, b));
  });

  it('bad options are range errors naming the option', () => {
    expect(() => checkSampling({ temperature: -1 })).toThrow(/temperature/);
    expect(() => checkSampling({ topK: 1.5 })).toThrow(/top_k/);
    expect(() => checkSampling({ topP: 0 })).toThrow(/top_p/);
  });
});
