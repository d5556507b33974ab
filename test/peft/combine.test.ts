/**
 * Combining LoRA adapters (PEFT's add_weighted_adapter): `cat` is exact (per-module deltas and
 * whole-model logits equal the weighted sum, with differing ranks, differing modules, rsLoRA and
 * lora_bias sources), `svd` at full rank reproduces `cat` and at lower rank is the best rank-k
 * approximation, `linear` follows PEFT's rule and refuses differing ranks, combined adapters
 * survive save → load, and the `peft combine` command.
 */
import { describe, expect, it, vi } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { combineCommand } from '../../src/cli/combine.js';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, type CausalLM } from '../../src/models/model.js';
import {
  combineLora, combineLoraDetailed, householderQR, jacobiSvd, loadAdapter, LoraAdapter, loraDelta, parseLoraConfig, PeftModel, saveAdapter,
} from '../../src/peft/index.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { maxAbsDiff, STORIES } from '../helpers.js';

const ids = [[1, 403, 407, 261, 378, 432, 383, 286, 261], [1, 17, 99, 310, 45, 2, 88, 7, 300]];

function logitsOf(model: CausalLM): Float32Array {
  const B = ids.length, T = ids[0].length;
  return noGrad(() => withArena(() =>
    lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T }).hidden).data.slice()));
}

function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 * 2 - 1;
  };
}

function lora(model: CausalLM, raw: Record<string, unknown>, seed: number): LoraAdapter {
  // init_lora_weights false: random B too, so the adapter changes the output
  const a = new LoraAdapter(model, parseLoraConfig({ init_lora_weights: false, ...raw }), seed);
  const r = uniform(seed + 100);
  for (const l of a.layers.values()) if (l.biasB) for (let i = 0; i < l.biasB.size; i++) l.biasB.data[i] = r() * 0.05;
  return a;
}

/** Float64 Σ w_i·scaling_i·B_i·A_i of a module over the sources that have it. */
function weightedDelta(sources: Array<{ adapter: LoraAdapter; weight: number }>, name: string): { d: Float64Array; out: number; in: number } {
  let out = 0, inn = 0, d = new Float64Array(0);
  for (const s of sources) {
    const l = s.adapter.layers.get(name);
    if (!l) continue;
    out = l.module.outFeatures;
    inn = l.module.inFeatures;
    if (d.length === 0) d = new Float64Array(out * inn);
    for (let o = 0; o < out; o++) for (let j = 0; j < l.r; j++) {
      const b = s.weight * l.scaling * l.B.data[o * l.r + j];
      for (let i = 0; i < inn; i++) d[o * inn + i] += b * l.A.data[j * inn + i];
    }
  }
  return { d, out, in: inn };
}

/** Float64 product scaling·B·A of a layer. */
function delta64(l: { r: number; scaling: number; A: { data: Float32Array }; B: { data: Float32Array }; module: { outFeatures: number; inFeatures: number } }): Float64Array {
  const N = l.module.outFeatures, K = l.module.inFeatures;
  const d = new Float64Array(N * K);
  for (let o = 0; o < N; o++) for (let j = 0; j < l.r; j++) {
    const b = l.scaling * l.B.data[o * l.r + j];
    for (let i = 0; i < K; i++) d[o * K + i] += b * l.A.data[j * K + i];
  }
  return d;
}

function frob(a: ArrayLike<number>, b?: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] - (b ? b[i] : 0);
    s += x * x;
  }
  return Math.sqrt(s);
}

/** Logits with the sources active together, each B (and bias) scaled by its weight. */
function weightedSumLogits(peft: PeftModel, sources: Array<{ adapter: LoraAdapter; weight: number }>, names: string[]): Float32Array {
  const saved = sources.map((s) => [...s.adapter.layers.values()].map((l) => [l.B.data.slice(), l.biasB?.data.slice()] as const));
  for (const s of sources) for (const l of s.adapter.layers.values()) {
    for (let i = 0; i < l.B.size; i++) l.B.data[i] *= s.weight;
    if (l.biasB) for (let i = 0; i < l.biasB.size; i++) l.biasB.data[i] *= s.weight;
  }
  peft.setActive(...names);
  const out = logitsOf(peft.model);
  sources.forEach((s, k) => [...s.adapter.layers.values()].forEach((l, j) => {
    l.B.data.set(saved[k][j][0]);
    if (l.biasB) l.biasB.data.set(saved[k][j][1]!);
  }));
  return out;
}

describe('LoRA combination', () => {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  // different ranks, different (overlapping) modules, rsLoRA, lora_bias, a rank_pattern
  const a = lora(model, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'], rank_pattern: { down_proj: 2 } }, 1);
  const b = lora(model, { r: 8, lora_alpha: 16, use_rslora: true, lora_bias: true, target_modules: ['q_proj', 'k_proj', 'o_proj'] }, 2);
  peft.addAdapter('a', a, false);
  peft.addAdapter('b', b, false);
  const sources = [{ adapter: a, weight: 0.7, name: 'a' }, { adapter: b, weight: -0.45, name: 'b' }];
  const unionNames = [...new Set([...a.layers.keys(), ...b.layers.keys()])];
  const reference = weightedSumLogits(peft, sources, ['a', 'b']);
  const base = peft.withDisabled(() => logitsOf(model));
  /** Logits equal up to float32 reassociation through 5 layers: the adapters' logit deltas agree within 1e-5 relative. */
  const expectLogitsClose = (got: Float32Array, want: Float32Array): void => {
    const d = (x: Float32Array): Float64Array => Float64Array.from(x, (v, i) => v - base[i]);
    const wantDelta = d(want);
    const scale = Math.max(...wantDelta.map(Math.abs));
    expect(maxAbsDiff(d(got), wantDelta) / scale).toBeLessThan(1e-5);
  };

  it('cat is exact: per-module deltas and whole-model logits equal the weighted sum of the sources (ranks 4/2 and rsLoRA 8)', () => {
    expect(b.layers.get('model.layers.0.self_attn.q_proj')!.scaling).toBeCloseTo(16 / Math.sqrt(8), 12);
    const c = combineLora(sources, 'cat');
    expect([...c.layers.keys()].sort()).toEqual([...unionNames].sort());
    for (const name of unionNames) {
      const l = c.layers.get(name)!;
      const want = weightedDelta(sources, name);
      expect(l.scaling).toBe(1);
      expect(l.r).toBe((a.layers.get(name)?.r ?? 0) + (b.layers.get(name)?.r ?? 0));
      expect(maxAbsDiff(loraDelta(l), want.d), name).toBeLessThan(1e-6);
      expect(Boolean(l.biasB)).toBe(true);
    }
    expect(c.layers.get('model.layers.1.self_attn.q_proj')!.r).toBe(12);
    expect(c.layers.get('model.layers.1.mlp.down_proj')!.r).toBe(2);
    expect(c.layers.get('model.layers.1.self_attn.k_proj')!.r).toBe(8);
    peft.addAdapter('cat', c, false);
    peft.setActive('cat');
    const got = logitsOf(model);
    expectLogitsClose(got, reference);
    expect(maxAbsDiff(got, base)).toBeGreaterThan(1e-2);
    peft.deleteAdapter('cat');
  });

  it('cat writes r = Σ r, lora_alpha = r and rank/alpha patterns for the other modules; save → load reproduces the logits exactly', () => {
    const c = combineLora(sources, 'cat');
    const cfg = c.config();
    expect(cfg).toMatchObject({ r: 12, lora_alpha: 12, use_rslora: false, lora_bias: true, peft_type: 'LORA' });
    const rp = cfg.rank_pattern as Record<string, number>;
    expect(rp['model\\.layers\\.0\\.mlp\\.down_proj']).toBe(2);
    expect(rp['model\\.layers\\.0\\.self_attn\\.k_proj']).toBe(8);
    expect(rp['model\\.layers\\.0\\.self_attn\\.v_proj']).toBe(4);
    expect(cfg.alpha_pattern).toEqual(rp);
    expect(cfg.target_modules).toEqual(['down_proj', 'k_proj', 'o_proj', 'q_proj', 'v_proj']);
    peft.addAdapter('cat', c);
    const want = logitsOf(model);
    peft.deleteAdapter('cat');
    const dir = mkdtempSync(join(tmpdir(), 'peft-combine-'));
    try {
      saveAdapter(c, dir, 'stories260K');
      const p3 = new PeftModel(loadModel(STORIES));
      const back = loadAdapter(p3, dir) as LoraAdapter;
      for (const [name, l] of c.layers) {
        const m = back.layers.get(name)!;
        expect([m.r, m.scaling], name).toEqual([l.r, 1]);
      }
      expect(maxAbsDiff(logitsOf(p3.model), want)).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('svd at full rank reproduces cat within 1e-5', () => {
    const r = combineLoraDetailed(sources, 'svd', { svdRank: 12 });
    for (const name of unionNames) {
      const want = weightedDelta(sources, name);
      const l = r.adapter.layers.get(name)!;
      expect(l.r, name).toBe(Math.min(12, (a.layers.get(name)?.r ?? 0) + (b.layers.get(name)?.r ?? 0)));
      expect(maxAbsDiff(loraDelta(l), want.d), name).toBeLessThan(1e-5);
      const m = r.modules.find((x) => x.name === name)!;
      expect(m.discardedEnergy).toBe(0);
    }
    peft.addAdapter('svd', r.adapter);
    expectLogitsClose(logitsOf(model), reference);
    peft.deleteAdapter('svd');
  });

  it('svd at lower rank is the best rank-k approximation: Frobenius error² = Σ discarded σ², singular values agree with a dense SVD', () => {
    const k = 3;
    const r = combineLoraDetailed(sources, 'svd', { svdRank: k });
    expect(r.adapter.cfg.r).toBe(k);
    const catAdapter = combineLora(sources, 'cat');
    for (const name of unionNames) {
      const want = weightedDelta(sources, name);
      const l = r.adapter.layers.get(name)!;
      const m = r.modules.find((x) => x.name === name)!;
      const S = m.singularValues!;
      // independent check: a dense one-sided Jacobi SVD of the formed ΔW has the same spectrum
      const dense = jacobiSvd(want.d, want.out, want.in);
      for (let j = 0; j < S.length; j++) expect(Math.abs(S[j] - dense.S[j]), `${name} σ${j}`).toBeLessThan(1e-10 * dense.S[0]);
      for (let j = S.length; j < dense.q; j++) expect(dense.S[j]).toBeLessThan(1e-10 * dense.S[0]);
      // Σσ² = ‖ΔW‖²_F
      const total = frob(want.d) ** 2;
      expect(Math.abs(m.energy! - total)).toBeLessThan(1e-10 * total);
      // the truncation error is exactly the discarded energy (Eckart–Young optimum), up to float32 storage
      const err = frob(delta64(l), want.d);
      expect(Math.abs(err - Math.sqrt(m.discardedEnergy!)), name).toBeLessThan(1e-6 * Math.sqrt(total));
      if (l.r < S.length) expect(m.discardedEnergy!).toBeGreaterThan(0);
      // no other rank-k factorisation tried does better: keeping the sources' own factors truncated
      const cat = catAdapter.layers.get(name)!;
      if (cat.r > k) {
        const alt = { ...cat, r: k, A: { data: cat.A.data.slice(0, k * cat.module.inFeatures) }, B: { data: new Float32Array(cat.module.outFeatures * k) } };
        for (let o = 0; o < cat.module.outFeatures; o++) for (let j = 0; j < k; j++) alt.B.data[o * k + j] = cat.B.data[o * cat.r + j];
        expect(frob(delta64(alt), want.d)).toBeGreaterThan(err);
      }
    }
    // default rank: the largest source rank (PEFT)
    expect(combineLora(sources, 'svd').cfg.r).toBe(8);
  });

  it('linear follows PEFT: A = Σ sign(c)·√|c|·A_i, B = Σ √|c|·B_i (c = w·scaling), scaling 1; refuses differing ranks', () => {
    expect(() => combineLora(sources, 'linear')).toThrow(/equal rank.*a \(r=4\), b \(r=8\)/);
    const c1 = lora(model, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, 5);
    const c2 = lora(model, { r: 4, lora_alpha: 4, use_rslora: true, target_modules: ['q_proj'] }, 6);
    const src = [{ adapter: c1, weight: 0.6 }, { adapter: c2, weight: -1.5 }];
    const lin = combineLora(src, 'linear');
    expect(lin.cfg).toMatchObject({ r: 4, lora_alpha: 4, use_rslora: false });
    for (const [name, l] of lin.layers) {
      expect(l.scaling).toBe(1);
      const A = new Float64Array(l.A.size), B = new Float64Array(l.B.size);
      for (const s of src) {
        const sl = s.adapter.layers.get(name);
        if (!sl) continue;
        const cc = s.weight * sl.scaling;
        for (let i = 0; i < A.length; i++) A[i] += Math.sign(cc) * Math.sqrt(Math.abs(cc)) * sl.A.data[i];
        for (let i = 0; i < B.length; i++) B[i] += Math.sqrt(Math.abs(cc)) * sl.B.data[i];
      }
      expect(maxAbsDiff(l.A.data, A), name).toBeLessThan(1e-6);
      expect(maxAbsDiff(l.B.data, B), name).toBeLessThan(1e-6);
      // exact where a single source has the module (v_proj), approximate where both do (cross terms)
      const err = maxAbsDiff(loraDelta(l), weightedDelta(src, name).d);
      if (name.endsWith('v_proj')) expect(err).toBeLessThan(1e-6);
      else expect(err).toBeGreaterThan(1e-4);
    }
  });

  it('refuses sources on different models, with modules_to_save, or with an invalid SVD rank', () => {
    const other = lora(loadModel(STORIES), { r: 4, target_modules: ['q_proj'] }, 7);
    expect(() => combineLora([{ adapter: a, weight: 1 }, { adapter: other, weight: 1 }], 'cat')).toThrow(/same base model/);
    const mts = lora(model, { r: 4, target_modules: ['q_proj'], modules_to_save: ['lm_head'] }, 8);
    expect(() => combineLora([{ adapter: mts, weight: 1, name: 'm' }], 'cat')).toThrow(/modules_to_save/);
    expect(() => combineLora(sources, 'svd', { svdRank: 0 })).toThrow(/SVD rank/);
    expect(() => combineLora(sources, 'ties' as never)).toThrow(/combination/);
  });

  it('svd of untrained (zero-B) adapters or zero weights gives an exactly zero delta, no NaN', () => {
    const z = new LoraAdapter(model, parseLoraConfig({ r: 4, target_modules: ['q_proj'] }), 9);
    for (const src of [[{ adapter: z, weight: 1 }], [{ adapter: a, weight: 0 }, { adapter: z, weight: 2 }]]) {
      const c = combineLora(src, 'svd');
      for (const l of c.layers.values()) {
        expect(l.A.data.every(Number.isFinite) && l.B.data.every(Number.isFinite)).toBe(true);
        expect(loraDelta(l).every((x) => x === 0)).toBe(true);
      }
    }
  });
});

describe('float64 SVD', () => {
  function orthogonal(n: number, seed: number): Float64Array {
    const r = uniform(seed);
    return householderQR(Float64Array.from({ length: n * n }, () => r()), n, n).Q;
  }

  for (const [m, n] of [[9, 6], [5, 11], [7, 7]] as const) {
    it(`recovers known singular values of a ${m}×${n} matrix (repeated and zero ones) within 1e-12`, () => {
      const q = Math.min(m, n);
      const s = Array.from({ length: q }, (_, i) => [5, 3, 3, 1e-3, 0, 0.5, 2e-7][i % 7]);
      const Q1 = orthogonal(m, m * 31 + n), Q2 = orthogonal(n, n * 17 + m);
      const M = new Float64Array(m * n);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
        let x = 0;
        for (let k = 0; k < q; k++) x += Q1[i * m + k] * s[k] * Q2[j * n + k];
        M[i * n + j] = x;
      }
      const r = jacobiSvd(M, m, n);
      const sorted = [...s].sort((x, y) => y - x);
      expect(r.q).toBe(q);
      for (let k = 0; k < q; k++) expect(Math.abs(r.S[k] - sorted[k]), `σ${k}`).toBeLessThan(1e-12 * 5);
      const rec = new Float64Array(m * n);
      for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) {
        let x = 0;
        for (let k = 0; k < q; k++) x += r.U[i * q + k] * r.S[k] * r.V[j * q + k];
        rec[i * n + j] = x;
      }
      expect(frob(rec, M) / frob(M)).toBeLessThan(1e-12);
      // V orthonormal; U orthonormal on the non-zero singular values
      for (let a = 0; a < q; a++) for (let b = 0; b < q; b++) {
        let v = 0, u = 0;
        for (let j = 0; j < n; j++) v += r.V[j * q + a] * r.V[j * q + b];
        for (let i = 0; i < m; i++) u += r.U[i * q + a] * r.U[i * q + b];
        expect(Math.abs(v - (a === b ? 1 : 0))).toBeLessThan(1e-12);
        if (r.S[a] > 0 && r.S[b] > 0) expect(Math.abs(u - (a === b ? 1 : 0))).toBeLessThan(1e-9);
      }
    });
  }

  it('Householder QR: Q orthonormal, R upper triangular, QR = X (also with a zero column)', () => {
    const r = uniform(3);
    const m = 8, n = 5;
    const X = Float64Array.from({ length: m * n }, (_, i) => (i % n === 2 ? 0 : r()));
    const { Q, R, p } = householderQR(X, m, n);
    expect(p).toBe(5);
    for (let i = 0; i < p; i++) for (let j = 0; j < i; j++) expect(R[i * n + j]).toBe(0);
    const rec = new Float64Array(m * n);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let k = 0; k < p; k++) rec[i * n + j] += Q[i * p + k] * R[k * n + j];
    expect(frob(rec, X) / frob(X)).toBeLessThan(1e-14);
    for (let a = 0; a < p; a++) for (let b = 0; b < p; b++) {
      let d = 0;
      for (let i = 0; i < m; i++) d += Q[i * p + a] * Q[i * p + b];
      expect(Math.abs(d - (a === b ? 1 : 0))).toBeLessThan(1e-14);
    }
  });
});

describe('peft combine', () => {
  it('combines adapter directories and writes an adapter equal to combineLora in memory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-combine-cli-'));
    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      const model = loadModel(STORIES);
      const a = lora(model, { r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, 11);
      const b = lora(model, { r: 2, lora_alpha: 2, target_modules: ['v_proj'] }, 12);
      saveAdapter(a, join(dir, 'a'));
      saveAdapter(b, join(dir, 'b'));
      await combineCommand().parseAsync(['--adapter', `x=${join(dir, 'a')}`, '--adapter', `y=${join(dir, 'b')}`, '--weights', '0.5,2',
        '--combination', 'svd', '--svd-rank', '3', '--output', join(dir, 'out'), '--model', STORIES], { from: 'user' });
      const printed = write.mock.calls.map((c) => String(c[0])).join('');
      expect(printed).toMatch(/combined 2 adapters \(svd; weights 0.5, 2\) over 10 modules, rank 3/);
      expect(printed).toMatch(/svd truncation: largest relative Frobenius error/);
      expect(JSON.parse(readFileSync(join(dir, 'out', 'adapter_config.json'), 'utf8'))).toMatchObject({ peft_type: 'LORA', r: 3, lora_alpha: 3 });
      const p = new PeftModel(model);
      p.addAdapter('mem', combineLora([{ adapter: a, weight: 0.5 }, { adapter: b, weight: 2 }], 'svd', { svdRank: 3 }));
      const want = logitsOf(model);
      const p2 = new PeftModel(loadModel(STORIES));
      loadAdapter(p2, join(dir, 'out'));
      expect(maxAbsDiff(logitsOf(p2.model), want)).toBe(0);
      await expect(combineCommand().parseAsync(['--adapter', `x=${join(dir, 'a')}`, '--adapter', `y=${join(dir, 'b')}`, '--weights', '1',
        '--combination', 'cat', '--output', join(dir, 'o2')], { from: 'user' })).rejects.toThrow(/one weight per adapter/);
      await expect(combineCommand().parseAsync(['--adapter', `x=${join(dir, 'a')}`, '--adapter', `y=${join(dir, 'b')}`, '--weights', '1,1',
        '--combination', 'linear', '--output', join(dir, 'o3')], { from: 'user' })).rejects.toThrow(/x \(r=4\), y \(r=2\)/);
    } finally {
      write.mockRestore();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
