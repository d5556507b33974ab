/**
 * Bottleneck adapters (Houlsby / Pfeiffer): identity at init, disabling, key layout and
 * save/load, loader errors, finite-difference gradients, composition (stack / parallel / average)
 * checked against hand-computed float64 values, and mixed-adapter row batches.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KVCache } from '../../src/generate/kv-cache.js';
import { generate, generateBatch } from '../../src/generate/generate.js';
import { writeSafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { defaultContext, forwardCached, forwardHidden, lmLogits, lmLoss, type CausalLM, type ForwardContext } from '../../src/models/model.js';
import {
  BottleneckAdapter, createBottleneckAdapter, loadAdapter, PeftModel, saveAdapter, type BottleneckModule,
} from '../../src/peft/index.js';
import { backward, noGrad, Tensor, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, readTensors, STORIES } from '../helpers.js';

const GQA = join(FIXTURES, 'tiny', 'llama-gqa');
const ids = [[1, 403, 407, 261, 378, 432, 383, 286, 261], [1, 17, 99, 310, 45, 2, 88, 7, 300]];

function logitsOf(model: CausalLM, rows: number[][]): Float32Array {
  const B = rows.length, T = rows[0].length;
  return noGrad(() => withArena(() =>
    lmLogits(model, forwardHidden(model, { ids: Int32Array.from(rows.flat()), B, T }).hidden).data.slice()));
}

function uniform(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296 * 2 - 1;
  };
}

/** Gives an adapter non-zero up-projections (and perturbs down) so it changes the output. */
function randomize(a: BottleneckAdapter, seed: number, scale = 0.3): void {
  const r = uniform(seed);
  for (const m of a.modules.values()) {
    for (const t of [m.upWeight, m.upBias]) for (let i = 0; i < t.size; i++) t.data[i] = r() * scale;
    for (const t of [m.downWeight, m.downBias]) for (let i = 0; i < t.size; i++) t.data[i] += r() * 0.1;
  }
}

const act = {
  relu: (x: number) => Math.max(0, x),
  silu: (x: number) => x / (1 + Math.exp(-x)),
};

/** Float64 reference of a module's delta up(act(down(y))) for y [rows, H]. */
function refDelta(m: BottleneckModule, f: (x: number) => number, y: Float64Array, rows: number, H: number): Float64Array {
  const b = m.downBias.size;
  const out = new Float64Array(rows * H);
  for (let r = 0; r < rows; r++) {
    const h = new Float64Array(b);
    for (let j = 0; j < b; j++) {
      let s = m.downBias.data[j];
      for (let k = 0; k < H; k++) s += m.downWeight.data[j * H + k] * y[r * H + k];
      h[j] = f(s);
    }
    for (let o = 0; o < H; o++) {
      let s = m.upBias.data[o];
      for (let j = 0; j < b; j++) s += m.upWeight.data[o * b + j] * h[j];
      out[r * H + o] = s;
    }
  }
  return out;
}

describe('bottleneck adapter structure', () => {
  it('houlsby adds attention and MLP adapters, pfeiffer only MLP; reduction_factor 16 by default; PEFT-style keys', () => {
    const model = loadModel(STORIES);
    const h = createBottleneckAdapter(model);
    expect(h.bottleneck).toBe(4); // 64 / 16
    expect(h.modules.size).toBe(10);
    const keys = [...h.stateDict().keys()];
    expect(keys).toHaveLength(40);
    expect(keys.slice(0, 8)).toEqual([
      'base_model.model.model.layers.0.attention_adapter.down_proj.weight',
      'base_model.model.model.layers.0.attention_adapter.down_proj.bias',
      'base_model.model.model.layers.0.attention_adapter.up_proj.weight',
      'base_model.model.model.layers.0.attention_adapter.up_proj.bias',
      'base_model.model.model.layers.0.mlp_adapter.down_proj.weight',
      'base_model.model.model.layers.0.mlp_adapter.down_proj.bias',
      'base_model.model.model.layers.0.mlp_adapter.up_proj.weight',
      'base_model.model.model.layers.0.mlp_adapter.up_proj.bias',
    ]);
    const sd = h.stateDict();
    expect(sd.get('base_model.model.model.layers.3.mlp_adapter.down_proj.weight')!.shape).toEqual([4, 64]);
    expect(sd.get('base_model.model.model.layers.3.mlp_adapter.up_proj.weight')!.shape).toEqual([64, 4]);
    expect(sd.get('base_model.model.model.layers.3.mlp_adapter.up_proj.bias')!.shape).toEqual([64]);
    // up starts at zero, down is Kaiming-uniform within 1/sqrt(hidden)
    const m = h.modules.get('2.attention')!;
    expect(m.upWeight.data.every((x) => x === 0) && m.upBias.data.every((x) => x === 0)).toBe(true);
    expect(Math.max(...m.downWeight.data.map(Math.abs))).toBeLessThanOrEqual(1 / 8);
    expect(Math.max(...m.downWeight.data.map(Math.abs))).toBeGreaterThan(0.1);
    expect(h.numParameters()).toBe(10 * (4 * 64 + 4 + 64 * 4 + 64));

    const p = createBottleneckAdapter(model, { placement: 'pfeiffer', bottleneck_size: 6, layers_to_transform: [1, 3], non_linearity: 'gelu' });
    expect([...p.modules.keys()]).toEqual(['1.mlp', '3.mlp']);
    expect(p.bottleneck).toBe(6);
    expect(p.config()).toMatchObject({ peft_type: 'BOTTLENECK', task_type: 'CAUSAL_LM', placement: 'pfeiffer', bottleneck_size: 6, non_linearity: 'gelu', layers_to_transform: [1, 3], reduction_factor: 16 });
  });

  it('rejects bad options with the field named', () => {
    const model = loadModel(STORIES);
    expect(() => createBottleneckAdapter(model, { non_linearity: 'tanh' as never })).toThrow(/non_linearity/);
    expect(() => createBottleneckAdapter(model, { reduction_factor: 128 })).toThrow(/reduction_factor/);
    expect(() => createBottleneckAdapter(model, { placement: 'middle' as never })).toThrow(/placement/);
    expect(() => createBottleneckAdapter(model, { layers_to_transform: 7 })).toThrow(/layers_to_transform/);
  });
});

describe('bottleneck adapter outputs', () => {
  for (const placement of ['houlsby', 'pfeiffer'] as const) {
    it(`${placement}: an untrained adapter gives exactly the base output; a trained one changes it; disabling restores it exactly`, () => {
      const base = logitsOf(loadModel(STORIES), ids);
      const model = loadModel(STORIES);
      const peft = new PeftModel(model);
      const a = createBottleneckAdapter(model, { placement, seed: 3 });
      peft.addAdapter('a', a);
      expect(maxAbsDiff(logitsOf(model, ids), base)).toBe(0);
      randomize(a, 11);
      const adapted = logitsOf(model, ids);
      expect(maxAbsDiff(adapted, base)).toBeGreaterThan(1e-3);
      expect(maxAbsDiff(peft.withDisabled(() => logitsOf(model, ids)), base)).toBe(0);
      peft.disabled = true;
      expect(maxAbsDiff(logitsOf(model, ids), base)).toBe(0);
      peft.setActive('a');
      expect(maxAbsDiff(logitsOf(model, ids), adapted)).toBe(0);
    });
  }

  it('save → load round trip reproduces the outputs exactly; the config and tensors are as documented', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-bottleneck-'));
    try {
      const model = loadModel(STORIES);
      const peft = new PeftModel(model);
      const a = createBottleneckAdapter(model, { placement: 'houlsby', reduction_factor: 8, non_linearity: 'silu', layers_to_transform: [0, 2, 4], seed: 5 });
      randomize(a, 2);
      peft.addAdapter('a', a);
      const want = logitsOf(model, ids);
      saveAdapter(a, dir, 'stories260K');
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg).toEqual({
        base_model_name_or_path: 'stories260K', bottleneck_size: 8, inference_mode: true, layers_to_transform: [0, 2, 4],
        non_linearity: 'silu', peft_type: 'BOTTLENECK', placement: 'houlsby', reduction_factor: 8, task_type: 'CAUSAL_LM',
      });
      const saved = readTensors(join(dir, 'adapter_model.safetensors'));
      expect(saved.size).toBe(24);
      expect(saved.get('base_model.model.model.layers.4.attention_adapter.down_proj.weight')!.shape).toEqual([8, 64]);
      const p2 = new PeftModel(loadModel(STORIES));
      const b = loadAdapter(p2, dir, 'b');
      expect(b).toBeInstanceOf(BottleneckAdapter);
      expect(maxAbsDiff(logitsOf(p2.model, ids), want)).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('loader errors name missing / unexpected tensors and a shape mismatch with both shapes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-bottleneck-bad-'));
    try {
      const model = loadModel(STORIES);
      const a = createBottleneckAdapter(model, { placement: 'pfeiffer', layers_to_transform: 0 });
      saveAdapter(a, dir);
      const file = join(dir, 'adapter_model.safetensors');
      const t = readTensors(file);
      const write = (m: Map<string, { data: Float32Array; shape: number[] }>): void =>
        writeSafetensorsFile(file, [...m].map(([name, x]) => ({ name, dtype: 'F32' as const, shape: x.shape, data: x.data })), { format: 'pt' });
      const k = 'base_model.model.model.layers.0.mlp_adapter.up_proj.bias';
      const missing = new Map(t);
      missing.delete(k);
      missing.set('base_model.model.model.layers.0.mlp_adapter.extra.weight', { data: new Float32Array(2), shape: [2] });
      write(missing);
      const load = (): unknown => loadAdapter(new PeftModel(loadModel(STORIES)), dir);
      expect(load).toThrow(/missing: base_model\.model\.model\.layers\.0\.mlp_adapter\.up_proj\.bias; unexpected: base_model\.model\.model\.layers\.0\.mlp_adapter\.extra\.weight/);
      const wrong = new Map(t);
      wrong.set(k, { data: new Float32Array(63), shape: [63] });
      write(wrong);
      expect(load).toThrow(/up_proj\.bias.*expected \[64\].*found \[63\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('bottleneck gradients', () => {
  for (const nl of ['gelu', 'silu'] as const) {
    it(`${nl}: analytic gradients of every adapter tensor match central finite differences (tiny llama-gqa)`, () => {
      const model = loadModel(GQA);
      const peft = new PeftModel(model);
      const a = createBottleneckAdapter(model, { bottleneck_size: 4, non_linearity: nl, seed: 9 });
      randomize(a, 21, 0.5);
      peft.addAdapter('a', a);
      const rows = [[1, 5, 9, 33, 70, 12, 3], [1, 80, 44, 2, 61, 18, 90]];
      const B = rows.length, T = rows[0].length;
      const labels = new Int32Array(B * T).fill(-100);
      rows.forEach((r, b) => { for (let t = 0; t < T - 1; t++) labels[b * T + t] = r[t + 1]; });
      const batch = { ids: Int32Array.from(rows.flat()), B, T };
      const lossValue = (): number => noGrad(() => withArena(() => {
        const r = lmLoss(model, forwardHidden(model, batch).hidden, labels, 1);
        return r.sum;
      }));
      const params = peft.trainable('a');
      expect(params).toHaveLength(16);
      for (const p of params) p.tensor.grad = null;
      withArena(() => backward(lmLoss(model, forwardHidden(model, batch, defaultContext(true)).hidden, labels, 1).loss));
      const eps = 1e-3;
      let checked = 0;
      for (const p of params) {
        const g = p.tensor.grad!;
        expect(g, p.name).toBeTruthy();
        // the largest entries plus one fixed entry
        const order = [...g.keys()].sort((i, j) => Math.abs(g[j]) - Math.abs(g[i]));
        for (const i of [...order.slice(0, 2), Math.floor(g.length / 2)]) {
          const x0 = p.tensor.data[i];
          p.tensor.data[i] = x0 + eps;
          const up = lossValue();
          p.tensor.data[i] = x0 - eps;
          const dn = lossValue();
          p.tensor.data[i] = x0;
          const fd = (up - dn) / (2 * eps);
          expect(Math.abs(fd - g[i]), `${p.name}[${i}]: fd ${fd} vs ${g[i]}`).toBeLessThan(2e-3 + 1e-2 * Math.abs(g[i]));
          checked++;
        }
      }
      expect(checked).toBe(48);
      // the largest gradients are far above the finite-difference noise
      expect(Math.max(...params.map((p) => Math.max(...p.tensor.grad!.map(Math.abs))))).toBeGreaterThan(0.1);
    });
  }
});

describe('composition of bottleneck adapters', () => {
  it('stack = A then B; parallel = y + ΔA + ΔB; average = y + (ΔA + ΔB)/2 (against float64 by hand)', () => {
    const model = loadModel(STORIES);
    const peft = new PeftModel(model);
    const A = createBottleneckAdapter(model, { non_linearity: 'relu', seed: 1 });
    const B = createBottleneckAdapter(model, { non_linearity: 'silu', bottleneck_size: 6, seed: 2 });
    randomize(A, 31);
    randomize(B, 32);
    peft.addAdapter('A', A);
    peft.addAdapter('B', B);
    peft.setActive('A', 'B');
    const H = 64, R = 5;
    const r = uniform(77);
    const y64 = Float64Array.from({ length: R * H }, () => r());
    const y = Tensor.param(Float32Array.from(y64), [R, H], false);
    const yf = Float64Array.from(y.data);
    const layer = model.layers[1];
    for (const [hookList, site] of [[layer.afterAttention, 'attention'], [layer.afterMlp, 'mlp']] as const) {
      const mA = A.modules.get(`1.${site}`)!, mB = B.modules.get(`1.${site}`)!;
      const dA = refDelta(mA, act.relu, yf, R, H);
      const dB = refDelta(mB, act.silu, yf, R, H);
      const mid = yf.map((v, i) => v + dA[i]);
      const dBmid = refDelta(mB, act.silu, mid, R, H);
      const expected = {
        stack: mid.map((v, i) => v + dBmid[i]),
        parallel: yf.map((v, i) => v + dA[i] + dB[i]),
        average: yf.map((v, i) => v + (dA[i] + dB[i]) / 2),
      };
      for (const comp of ['stack', 'parallel', 'average'] as const) {
        peft.composition = comp;
        const got = noGrad(() => withArena(() => hookList[0](y, defaultContext()).data.slice()));
        expect(maxAbsDiff(got, expected[comp]), `${site} ${comp}`).toBeLessThan(1e-5);
      }
      // the three really differ here
      expect(maxAbsDiff(expected.stack, expected.parallel)).toBeGreaterThan(1e-3);
      // the hook did not modify its input
      expect(maxAbsDiff(y.data, yf)).toBe(0);
    }
    // order matters for stack: B then A differs from A then B
    peft.composition = 'stack';
    const ab = logitsOf(model, ids);
    peft.setActive('B', 'A');
    expect(maxAbsDiff(logitsOf(model, ids), ab)).toBeGreaterThan(1e-4);
    // parallel with an untrained partner equals the adapter alone (up to float32 rounding of
    // (y + ΔA) + y − y, carried through 5 layers into logits of magnitude ~10)
    const Z = createBottleneckAdapter(model, { seed: 4 });
    peft.addAdapter('Z', Z);
    peft.setActive('A');
    const aOnly = logitsOf(model, ids);
    peft.setActive('A', 'Z');
    peft.composition = 'parallel';
    expect(maxAbsDiff(logitsOf(model, ids), aOnly)).toBeLessThan(1e-4);
  });
});

describe('mixed-adapter batches (rows path)', () => {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  const A = createBottleneckAdapter(model, { placement: 'houlsby', non_linearity: 'gelu', seed: 1 });
  const B = createBottleneckAdapter(model, { placement: 'pfeiffer', non_linearity: 'relu', bottleneck_size: 8, seed: 2 });
  randomize(A, 41);
  randomize(B, 42);
  peft.addAdapter('A', A);
  peft.addAdapter('B', B);
  const c = model.config;
  const seqs = [[1, 403, 407, 261, 378], [1, 17, 99], [1, 286, 261, 432, 383, 300, 12], [1, 44]];
  const names = ['A', 'B', null, 'A'];

  function hiddenAlone(s: number[], name: string | null): Float32Array {
    const cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, 16);
    if (name) peft.setActive(name);
    else peft.disabled = true;
    try {
      return noGrad(() => withArena(() => forwardCached(model, [{ ids: Int32Array.from(s), positions: Int32Array.from(s.keys()), cache }]).data.slice()));
    } finally {
      peft.disabled = false;
    }
  }

  it('forwardCached with ctx.rowAdapters gives each row the hidden states of its adapter alone', () => {
    const caches = seqs.map(() => new KVCache(c.numLayers, c.numKvHeads, c.headDim, 16));
    const ctx: ForwardContext = defaultContext(false);
    let r = 0;
    ctx.rowAdapters = seqs.map((s, i) => {
      const g = { start: r, end: r + s.length, adapter: names[i] };
      r += s.length;
      return g;
    });
    peft.setActive('B'); // ignored when rowAdapters is set
    const mixed = noGrad(() => withArena(() => forwardCached(model, seqs.map((s, i) => ({ ids: Int32Array.from(s), positions: Int32Array.from(s.keys()), cache: caches[i] })), ctx).data.slice()));
    let off = 0;
    const H = c.hiddenSize;
    for (let i = 0; i < seqs.length; i++) {
      const alone = hiddenAlone(seqs[i], names[i]);
      const got = mixed.subarray(off * H, (off + seqs[i].length) * H);
      expect(maxAbsDiff(got, alone), `sequence ${i} (${names[i]})`).toBeLessThan(1e-5);
      off += seqs[i].length;
    }
    // the adapters matter: A's rows differ from the base model's
    expect(maxAbsDiff(hiddenAlone(seqs[0], 'A'), hiddenAlone(seqs[0], null))).toBeGreaterThan(1e-3);
  });

  it('generateBatch with per-prompt adapters produces the same tokens as each prompt alone', () => {
    const opts = { maxNewTokens: 8, temperature: 0 };
    const batch = generateBatch(model, seqs.map((s, i) => ({ ids: s, adapter: names[i] })), opts);
    seqs.forEach((s, i) => {
      if (names[i]) peft.setActive(names[i]!);
      else peft.disabled = true;
      try {
        expect(batch[i].newIds, `prompt ${i}`).toEqual(generate(model, s, opts).newIds);
      } finally {
        peft.disabled = false;
      }
    });
  });
});
