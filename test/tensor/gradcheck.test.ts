/**
 * Finite-difference gradient checks for every differentiable op: the analytic gradient of
 * L = Σ out ⊙ R (R random) must match central differences of L (float32 ops, float64 sums).
 */
import { describe, expect, it } from 'vitest';
import {
  activation, add, attention, backward, concatSeq, crossEntropy, dropout, embedding, f32Weight, layernorm, linear,
  linearAccumulate, linearCrossEntropy, lowRankDown, lowRankUp, mulFeatures, noGrad, repeatBatch, rmsnorm, rope, ropeTable, scale, swiglu,
  Tensor, withArena,
} from '../../src/tensor/index.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function param(shape: number[], r: () => number, scaleBy = 1): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return Tensor.param(Float32Array.from({ length: n }, () => (r() * 2 - 1) * scaleBy), shape, true);
}

/** Checks d(Σ f()⊙R)/d(input) for each input against central differences at up to `samples` entries. */
function gradcheck(inputs: Tensor[], f: () => Tensor, opts: { eps?: number; rtol?: number; atol?: number; samples?: number } = {}): void {
  const eps = opts.eps ?? 1e-3, rtol = opts.rtol ?? 2e-2, atol = opts.atol ?? 2e-3, samples = opts.samples ?? 24;
  const r = rng(99);
  for (const t of inputs) t.grad = null;
  let R: Float32Array = new Float32Array(0);
  withArena(() => {
    const out = f();
    R = Float32Array.from({ length: out.size }, () => r() * 2 - 1);
    backward(out, R);
  });
  const L = (): number =>
    noGrad(() => withArena(() => {
      const o = f().data;
      let s = 0;
      for (let i = 0; i < o.length; i++) s += o[i] * R[i];
      return s;
    }));
  for (const [ti, t] of inputs.entries()) {
    const g = t.grad;
    expect(g, `input ${ti} got no gradient`).not.toBeNull();
    const idx = t.size <= samples ? [...Array(t.size).keys()] : Array.from({ length: samples }, () => Math.floor(r() * t.size));
    for (const i of idx) {
      const old = t.data[i];
      t.data[i] = old + eps;
      const up = L();
      t.data[i] = old - eps;
      const down = L();
      t.data[i] = old;
      const num = (up - down) / (2 * eps);
      const ana = g![i];
      expect(Math.abs(num - ana), `input ${ti}[${i}]: numeric ${num} vs analytic ${ana}`).toBeLessThanOrEqual(atol + rtol * Math.abs(num));
    }
  }
}

describe('gradient checks (finite differences)', () => {
  const r = rng(1);

  it('linear: x, W, bias', () => {
    const x = param([5, 7], r), w = param([4, 7], r), b = param([4], r);
    gradcheck([x, w, b], () => linear(x, f32Weight(w), b));
  });

  it('linear with a bfloat16 frozen weight: x only', () => {
    const x = param([3, 8], r);
    const bits = Uint16Array.from({ length: 6 * 8 }, () => {
      const f = new Float32Array([(r() * 2 - 1)]);
      return new Uint32Array(f.buffer)[0] >>> 16;
    });
    gradcheck([x], () => linear(x, { rows: 6, cols: 8, data: { kind: 'bf16', bits } }));
  });

  it('linearAccumulate (LoRA-style side branch)', () => {
    const x = param([4, 6], r), w = param([5, 6], r), y0 = param([4, 5], r), b = param([5, 3], r), z = param([4, 3], r);
    gradcheck([x, w, y0, b, z], () => {
      const y = add(y0, linear(z, f32Weight(b)));
      return linearAccumulate(y, x, f32Weight(w), 0.7);
    });
  });

  it('lowRankDown (stacked A·xᵀ) and lowRankUp in place and into a new tensor (LoRA / DoRA branch)', () => {
    const x = param([5, 6], r), a1 = param([3, 6], r), a2 = param([2, 6], r), b1 = param([4, 3], r), b2 = param([7, 2], r);
    const y0 = param([5, 4], r), z = param([5, 3], r), c = param([4, 3], r);
    gradcheck([x, a1, a2, b1, b2, y0, z, c], () => {
      const t = lowRankDown(x, [a1, a2]);
      const y = add(y0, linear(z, f32Weight(c)));
      const u = lowRankUp(y, t, 0, b1, 0.7);
      const v = lowRankUp(null, t, 3, b2, -1.3);
      // both outputs mixed into one [5, 11] result through fixed (frozen) maps
      const p = Tensor.param(Float32Array.from({ length: 44 }, (_, i) => ((i * 7) % 5) - 2), [11, 4], false);
      const q = Tensor.param(Float32Array.from({ length: 77 }, (_, i) => ((i * 3) % 7) - 3), [11, 7], false);
      return add(linear(u, f32Weight(p)), linear(v, f32Weight(q)));
    });
  });

  it('lowRankDown/lowRankUp equal linear(linear(x, A), B)', () => {
    const x = param([6, 9], r), a = param([4, 9], r), b = param([5, 4], r);
    const fused = noGrad(() => withArena(() => lowRankUp(null, lowRankDown(x, [param([2, 9], r), a]), 2, b, 1).data.slice()));
    const plain = noGrad(() => withArena(() => linear(linear(x, f32Weight(a)), f32Weight(b)).data.slice()));
    for (let i = 0; i < plain.length; i++) expect(Math.abs(fused[i] - plain[i])).toBeLessThan(1e-5 * (1 + Math.abs(plain[i])));
  });

  it('rmsnorm: x, weight', () => {
    const x = param([4, 10], r), w = param([10], r);
    gradcheck([x, w], () => rmsnorm(x, w, 1e-5));
  });

  it('layernorm: x, weight, bias', () => {
    const x = param([4, 10], r), w = param([10], r), b = param([10], r);
    gradcheck([x, w, b], () => layernorm(x, w, b, 1e-5));
  });

  it('rope', () => {
    const x = param([6, 2 * 8], r);
    const inv = Float32Array.from({ length: 4 }, (_, i) => 1 / Math.pow(10000, (2 * i) / 8));
    gradcheck([x], () => rope(x, ropeTable(Int32Array.from([0, 1, 2, 7, 3, 100]), inv), 2, 8));
  });

  it('attention: grouped-query, causal, padding mask and a prefix (Tk > Tq)', () => {
    const B = 2, Tq = 5, P = 2, Tk = Tq + P, Hq = 4, Hkv = 2, D = 4;
    const q = param([B * Tq, Hq * D], r), k = param([B * Tk, Hkv * D], r), v = param([B * Tk, Hkv * D], r);
    const keyMask = new Uint8Array(B * Tk).fill(1);
    keyMask[Tk + P] = 0; // second row: first real token is padding
    gradcheck([q, k, v], () => attention(q, k, v, { B, Tq, Tk, Hq, Hkv, D, causal: true, keyMask }));
  });

  it('attention: head_dim 64 (the avx512 register-kernel path), grouped-query, causal, padding, two query blocks', () => {
    const B = 2, T = 70, Hq = 4, Hkv = 2, D = 64;
    const q = param([B * T, Hq * D], r), k = param([B * T, Hkv * D], r), v = param([B * T, Hkv * D], r);
    const keyMask = new Uint8Array(B * T).fill(1);
    keyMask[T + 3] = 0;
    gradcheck([q, k, v], () => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true, keyMask }), { samples: 16 });
  });

  it('attention: packed segments and an additive mask', () => {
    const B = 1, T = 6, H = 2, D = 4;
    const q = param([T, H * D], r), k = param([T, H * D], r), v = param([T, H * D], r);
    const seg = Int32Array.from([0, 0, 0, 1, 1, 1]);
    const addMask = Float32Array.from({ length: T * T }, (_, i) => ((i * 7) % 5) * 0.1);
    gradcheck([q, k, v], () => attention(q, k, v, { B, Tq: T, Tk: T, Hq: H, Hkv: H, D, qSeg: seg, kSeg: seg, addMask }));
  });

  for (const kind of ['silu', 'gelu_tanh', 'gelu'] as const) {
    it(`activation ${kind}`, () => {
      const x = param([3, 9], r, 3);
      gradcheck([x], () => activation(x, kind));
    });
  }

  it('activation relu (away from 0)', () => {
    const x = Tensor.param(Float32Array.from({ length: 12 }, (_, i) => (i % 2 ? 1 : -1) * (0.5 + i * 0.1)), [12]);
    gradcheck([x], () => activation(x, 'relu'));
  });

  it('swiglu: gate and up', () => {
    const g = param([4, 6], r, 3), u = param([4, 6], r);
    gradcheck([g, u], () => swiglu(g, u));
  });

  it('dropout (fixed seed)', () => {
    const x = param([5, 8], r);
    gradcheck([x], () => dropout(x, 0.3, 1234));
  });

  it('add, scale, mulFeatures (IA3)', () => {
    const a = param([3, 5], r), b = param([3, 5], r), w = param([5], r);
    gradcheck([a, b, w], () => mulFeatures(scale(add(a, b), 1.5), w));
  });

  it('concatSeq and repeatBatch (prefix / prompt)', () => {
    const p = param([2, 3], r), x = param([2 * 4, 3], r);
    gradcheck([p, x], () => concatSeq(repeatBatch(p, 2), x, 2));
  });

  it('embedding (float32 table)', () => {
    const w = param([7, 3], r);
    gradcheck([w], () => embedding(w, Int32Array.from([1, 4, 1, 6, 0])));
  });

  it('cross-entropy with ignored tokens', () => {
    const logits = param([6, 5], r, 2);
    const labels = Int32Array.from([1, -100, 4, 0, -100, 2]);
    gradcheck([logits], () => crossEntropy(logits, labels, 1 / 4).loss, { atol: 1e-3 });
  });

  it('fused LM head + cross-entropy (chunked): hidden, head weight and bias', () => {
    const h = param([7, 4], r), w = param([9, 4], r), b = param([9], r);
    const labels = Int32Array.from([3, -100, 8, 0, 1, -100, 5]);
    gradcheck([h, w, b], () => linearCrossEntropy(h, f32Weight(w), b, labels, 1 / 5, 3).loss, { atol: 1e-3 });
  });

  it('fused LM head + cross-entropy equals the unfused loss', () => {
    const h = param([7, 4], r), w = param([9, 4], r);
    const labels = Int32Array.from([3, -100, 8, 0, 1, -100, 5]);
    const a = noGrad(() => withArena(() => linearCrossEntropy(h, f32Weight(w), null, labels, 1, 2).sum));
    const b2 = noGrad(() => withArena(() => crossEntropy(linear(h, f32Weight(w)), labels, 1).sum));
    expect(Math.abs(a - b2)).toBeLessThan(1e-5);
  });
});
