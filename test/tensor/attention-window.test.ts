/**
 * Sliding-window attention and attention-logit soft-capping (Mistral / Gemma 2 / Gemma 3) in the
 * native kernel: the forward against a float64 reference of transformers' eager attention
 * (scores·scale → cap·tanh(s/cap) → mask: causal and kv_idx > q_idx − window → softmax), the
 * backward against central differences, a cached step (Tk > Tq) against the full pass, and the
 * elementwise ops the Gemma blocks add (mul, soft-cap of logits).
 */
import { describe, expect, it } from 'vitest';
import { attention, backward, mul, noGrad, softcap, Tensor, withArena } from '../../src/tensor/index.js';

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

/** Central differences of Σ f()⊙R against the analytic gradient at up to 24 entries of each input. */
function gradcheck(inputs: Tensor[], f: () => Tensor): void {
  const eps = 1e-3, rtol = 2e-2, atol = 2e-3;
  const r = rng(7);
  for (const t of inputs) t.grad = null;
  let R = new Float32Array(0);
  withArena(() => {
    const out = f();
    R = Float32Array.from({ length: out.size }, () => r() * 2 - 1);
    backward(out, R);
  });
  const L = (): number => noGrad(() => withArena(() => {
    const o = f().data;
    let s = 0;
    for (let i = 0; i < o.length; i++) s += o[i] * R[i];
    return s;
  }));
  for (const t of inputs) {
    for (let n = 0; n < 24; n++) {
      const i = Math.floor(r() * t.size);
      const old = t.data[i];
      t.data[i] = old + eps;
      const up = L();
      t.data[i] = old - eps;
      const down = L();
      t.data[i] = old;
      const num = (up - down) / (2 * eps);
      expect(Math.abs(num - t.grad![i]), `numeric ${num} vs analytic ${t.grad![i]}`).toBeLessThanOrEqual(atol + rtol * Math.abs(num));
    }
  }
}

/** float64 eager attention for one batch row layout [T, H·D] with GQA, causal, window, soft-cap. */
function reference(q: Float32Array, k: Float32Array, v: Float32Array, o: { B: number; Tq: number; Tk: number; Hq: number; Hkv: number; D: number; scale: number; window: number; cap: number }): Float64Array {
  const { B, Tq, Tk, Hq, Hkv, D } = o;
  const out = new Float64Array(B * Tq * Hq * D);
  const off = Tk - Tq;
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) {
    const kh = Math.floor(h / (Hq / Hkv));
    for (let i = 0; i < Tq; i++) {
      const s: number[] = [];
      for (let j = 0; j < Tk; j++) {
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[(b * Tq + i) * Hq * D + h * D + d] * k[(b * Tk + j) * Hkv * D + kh * D + d];
        let sc = dot * o.scale;
        if (o.cap > 0) sc = o.cap * Math.tanh(sc / o.cap);
        const visible = j <= off + i && (o.window <= 0 || j > off + i - o.window);
        s.push(visible ? sc : -Infinity);
      }
      const mx = Math.max(...s);
      const e = s.map((x) => Math.exp(x - mx));
      const sum = e.reduce((a, c) => a + c, 0);
      for (let d = 0; d < D; d++) {
        let acc = 0;
        for (let j = 0; j < Tk; j++) acc += (e[j] / sum) * v[(b * Tk + j) * Hkv * D + kh * D + d];
        out[(b * Tq + i) * Hq * D + h * D + d] = acc;
      }
    }
  }
  return out;
}

describe('sliding-window and soft-capped attention', () => {
  const r = rng(3);
  const B = 2, T = 9, Hq = 4, Hkv = 2, D = 8;
  const q = param([B * T, Hq * D], r, 1.5), k = param([B * T, Hkv * D], r, 1.5), v = param([B * T, Hkv * D], r);

  for (const [window, cap] of [[3, 0], [0, 2.5], [4, 3]] as const) {
    it(`forward equals float64 eager attention (window ${window}, softcap ${cap}) within 1e-5`, () => {
      const out = noGrad(() => withArena(() => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true, window, softcap: cap, scale: 0.4 }).data.slice()));
      const ref = reference(q.data, k.data, v.data, { B, Tq: T, Tk: T, Hq, Hkv, D, scale: 0.4, window, cap });
      let worst = 0;
      for (let i = 0; i < out.length; i++) worst = Math.max(worst, Math.abs(out[i] - ref[i]));
      expect(worst).toBeLessThan(1e-5);
    });
    it(`gradients match finite differences (window ${window}, softcap ${cap})`, () => {
      gradcheck([q, k, v], () => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true, window, softcap: cap, scale: 0.4 }));
    });
  }

  it('a window wider than the sequence changes nothing; a cached step (Tk > Tq) sees the same window as the full pass', () => {
    const full = noGrad(() => withArena(() => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true }).data.slice()));
    const wide = noGrad(() => withArena(() => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true, window: T }).data.slice()));
    expect(wide).toEqual(full);
    // last 2 queries of row 0 against all 9 keys = rows 7, 8 of the full windowed pass
    const win = noGrad(() => withArena(() => attention(q, k, v, { B, Tq: T, Tk: T, Hq, Hkv, D, causal: true, window: 3, softcap: 2 }).data.slice()));
    const W = Hq * D;
    const qTail = Tensor.param(q.data.slice(7 * W, 9 * W), [2, W], false);
    const k0 = Tensor.param(k.data.slice(0, T * Hkv * D), [T, Hkv * D], false), v0 = Tensor.param(v.data.slice(0, T * Hkv * D), [T, Hkv * D], false);
    const step = noGrad(() => withArena(() => attention(qTail, k0, v0, { B: 1, Tq: 2, Tk: T, Hq, Hkv, D, causal: true, window: 3, softcap: 2 }).data.slice()));
    let worst = 0;
    for (let i = 0; i < step.length; i++) worst = Math.max(worst, Math.abs(step[i] - win[7 * W + i]));
    expect(worst).toBeLessThan(1e-6);
  });

  it('mul and logit soft-capping: values and finite-difference gradients', () => {
    const a = param([5, 6], r, 3), b = param([5, 6], r, 3);
    const y = noGrad(() => withArena(() => softcap(a, 2).data.slice()));
    for (let i = 0; i < y.length; i++) expect(y[i]).toBeCloseTo(2 * Math.tanh(a.data[i] / 2), 6);
    gradcheck([a, b], () => mul(a, b));
    gradcheck([a], () => softcap(a, 2));
  });
});
