/**
 * DoRA (use_dora) against HF PEFT 0.21 on tiny models (fixtures from
 * scripts/fixtures/make_peft_methods.py: lora-dora on the tiny Llama, all linear layers;
 * lora-dora-bias on the tiny Qwen2 with q/k/v biases and rsLoRA): logits within 1e-4, gradients
 * (A, B with the detached norm, magnitude) within 1e-4 relative; PEFT's file layout both ways;
 * merge/unmerge; the dropout path; per-row (mixed-adapter) inference; a 4-bit base; checkpointing.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, lmLoss, runLinear, setGradientCheckpointing, type CausalLM, type ForwardContext } from '../../src/models/model.js';
import { doraWeightNorm } from '../../src/peft/dora.js';
import { loadAdapter, LoraAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { quantizeModel } from '../../src/quant/quantize-model.js';
import { backward, noGrad, Tensor, weightToF32, withArena } from '../../src/tensor/index.js';
import { readSafetensorsFile } from '../../src/io/safetensors.js';
import { runTraining } from '../../src/train/run.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors, STORIES } from '../helpers.js';

const TINY = join(FIXTURES, 'tiny');

function logitsOf(model: CausalLM, ids: number[][], ctx?: Partial<ForwardContext>): Float32Array {
  const B = ids.length, T = ids[0].length;
  return noGrad(() => withArena(() => {
    const c = { training: false, seed: 1, dropoutCalls: 0, ...ctx };
    return lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T }, c).hidden, c).data.slice();
  }));
}

function nextTokenLabels(ids: number[][]): Int32Array {
  const T = ids[0].length;
  const out = new Int32Array(ids.length * T).fill(-100);
  ids.forEach((row, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = row[t + 1]; });
  return out;
}

function adapterGrads(peft: PeftModel, name: string, ids: number[][]): Map<string, Float32Array> {
  const params = peft.trainable(name);
  for (const p of params) p.tensor.grad = null;
  withArena(() => {
    const labels = nextTokenLabels(ids);
    const n = labels.filter((l) => l !== -100).length;
    const { hidden } = forwardHidden(peft.model, { ids: Int32Array.from(ids.flat()), B: ids.length, T: ids[0].length });
    backward(lmLoss(peft.model, hidden, labels, 1 / n).loss);
  });
  return new Map(params.map((p) => [p.name, p.tensor.grad!.slice()]));
}

/** PEFT parameter name → saved key: drop `.default`; the magnitude's `.weight` too (PEFT saves `…lora_magnitude_vector`). */
const gradKey = (k: string): string => k.replace(/\.default(?=\.|$)/, '').replace(/lora_magnitude_vector\.weight$/, 'lora_magnitude_vector');

interface Fx { input_ids: number[][]; base_model: { dir: string }; lora_scalings: Record<string, { scaling: number }> }

function fixture(name: string): { dir: string; fx: Fx; model: CausalLM; peft: PeftModel; a: LoraAdapter } {
  const dir = join(FIXTURES, 'peft', name);
  const fx = readJson<Fx>(join(dir, 'fixture.json'));
  const model = loadModel(join(TINY, fx.base_model.dir.split('/').pop()!));
  const peft = new PeftModel(model);
  const a = loadAdapter(peft, dir, 'a') as LoraAdapter;
  return { dir, fx, model, peft, a };
}

describe('DoRA matches HF PEFT', () => {
  for (const name of ['lora-dora', 'lora-dora-bias']) {
    it(`${name}: logits within 1e-4, gradients within 1e-4 relative`, () => {
      const { dir, fx, model, peft, a } = fixture(name);
      expect(a.cfg.use_dora).toBe(true);
      for (const [mod, s] of Object.entries(fx.lora_scalings)) expect(a.layers.get(mod)?.scaling, mod).toBeCloseTo(s.scaling, 12);
      const ref = readTensors(join(dir, 'logits.safetensors')).get('logits')!;
      expect(maxAbsDiff(logitsOf(model, fx.input_ids), ref.data)).toBeLessThan(1e-4);
      const refG = readTensors(join(dir, 'grads.safetensors'));
      const grads = adapterGrads(peft, 'a', fx.input_ids);
      expect(grads.size).toBe(refG.size);
      let magnitudes = 0;
      for (const [k, r] of refG) {
        const g = grads.get(gradKey(k));
        expect(g, k).toBeDefined();
        expect(maxRelDiff(g!, r.data), k).toBeLessThan(1e-4);
        if (k.includes('lora_magnitude_vector')) magnitudes++;
      }
      expect(magnitudes).toBe(a.layers.size);
    });
  }

  it("save → load: PEFT's keys and bytes, use_dora in the config", () => {
    const { dir, fx, model, peft } = fixture('lora-dora');
    const out = mkdtempSync(join(tmpdir(), 'peft-dora-'));
    try {
      saveAdapter(peft.get('a'), out, 'tiny');
      const a = readSafetensorsFile(join(dir, 'adapter_model.safetensors'));
      const b = readSafetensorsFile(join(out, 'adapter_model.safetensors'));
      expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
      expect([...b.tensors.keys()].some((k) => k.endsWith('.self_attn.q_proj.lora_magnitude_vector'))).toBe(true);
      for (const [k, e] of a.tensors) expect(Buffer.compare(Buffer.from(e.data), Buffer.from(b.tensors.get(k)!.data)), k).toBe(0);
      expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'))).toMatchObject({ peft_type: 'LORA', use_dora: true });
      const p2 = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
      loadAdapter(p2, out);
      expect(maxAbsDiff(logitsOf(p2.model, fx.input_ids), logitsOf(model, fx.input_ids))).toBe(0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe('DoRA behaviour', () => {
  it('merge gives the same logits (1e-4) and layer outputs (1e-5); unmerge restores W exactly; lora_bias refused', () => {
    const { fx, model, a } = fixture('lora-dora-bias');
    const mod = model.layers[1].linears.q;
    const x = Tensor.param(Float32Array.from({ length: 3 * mod.inFeatures }, (_, i) => Math.cos(i * 0.3)), [3, mod.inFeatures], false);
    const layerOut = (): Float32Array => noGrad(() => withArena(() => runLinear(mod, x, { training: false, seed: 0, dropoutCalls: 0 }).data.slice()));
    const w0 = weightToF32(mod.weight), b0 = mod.bias!.data.slice();
    const before = layerOut(), logits = logitsOf(model, fx.input_ids);
    a.merge();
    expect(maxRelDiff(layerOut(), before)).toBeLessThan(1e-5);
    expect(maxAbsDiff(logitsOf(model, fx.input_ids), logits)).toBeLessThan(1e-4);
    // the merged weight is m ⊙ (W + s·B·A) / ‖W + s·B·A‖ per row: its row norms are the magnitudes
    const l = a.layers.get(mod.name)!;
    const wm = weightToF32(mod.weight);
    for (let o = 0; o < mod.outFeatures; o++) {
      let s = 0;
      for (let i = 0; i < mod.inFeatures; i++) s += wm[o * mod.inFeatures + i] ** 2;
      expect(Math.sqrt(s)).toBeCloseTo(l.magnitude!.data[o], 5);
    }
    expect(maxAbsDiff(mod.bias!.data, b0)).toBe(0);
    a.unmerge();
    expect(maxAbsDiff(weightToF32(mod.weight), w0)).toBe(0);
    expect(maxAbsDiff(logitsOf(model, fx.input_ids), logits)).toBeLessThan(1e-5);
    expect(() => parseLoraConfig({ use_dora: true, lora_bias: true })).toThrow(/lora_bias.*DoRA/);
  });

  it('a new DoRA adapter starts as the base model exactly (m = ‖W‖ per row) and trains its magnitudes', () => {
    const model = loadModel(join(TINY, 'qwen2'));
    const ids = [[3, 17, 29, 41, 5, 8, 13]];
    const base = logitsOf(model, ids);
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, use_dora: true, target_modules: 'all-linear' }));
    peft.addAdapter('d', a);
    expect(maxAbsDiff(logitsOf(model, ids), base)).toBe(0);
    const l = a.layers.get('model.layers.0.self_attn.k_proj')!;
    const w = weightToF32(l.module.weight);
    let s = 0;
    for (let i = 0; i < l.module.inFeatures; i++) s += w[i] ** 2;
    expect(l.magnitude!.data[0]).toBeCloseTo(Math.sqrt(s), 6);
    const params = peft.trainable('d');
    expect(params.filter((p) => p.name.endsWith('lora_magnitude_vector'))).toHaveLength(a.layers.size);
    const g = adapterGrads(peft, 'd', ids);
    expect([...g].filter(([k]) => k.endsWith('lora_magnitude_vector')).every(([, v]) => v.some((x) => x !== 0))).toBe(true);
  });

  it('the weight norm equals a direct computation of ‖W + s·B·A‖ (float32 and 4-bit bases)', () => {
    const { model, a } = fixture('lora-dora');
    const check = (): void => {
      for (const l of [...a.layers.values()].slice(0, 4)) {
        const w = weightToF32(l.module.weight), K = l.module.inFeatures, r = l.r;
        const n = doraWeightNorm(l);
        for (let o = 0; o < l.module.outFeatures; o += 7) {
          let s = 0;
          for (let i = 0; i < K; i++) {
            let d = 0;
            for (let j = 0; j < r; j++) d += l.B.data[o * r + j] * l.A.data[j * K + i];
            s += (w[o * K + i] + l.scaling * d) ** 2;
          }
          expect(Math.abs(n[o] - Math.sqrt(s)) / Math.sqrt(s)).toBeLessThan(1e-5);
        }
      }
    };
    check();
    quantizeModel(model, { quantType: 'nf4' });
    expect(model.layers[0].linears.q.weight.data.kind).toBe('q4');
    check();
  });

  it('dropout: training mode takes the second base GEMM; with p → 0 it equals the eval output', () => {
    const { fx, model, peft } = fixture('lora-dora');
    const evalOut = logitsOf(model, fx.input_ids);
    const a = peft.get('a') as LoraAdapter;
    for (const l of a.layers.values()) l.dropout = 1e-7;
    const trainOut = logitsOf(model, fx.input_ids, { training: true });
    expect(maxAbsDiff(trainOut, evalOut)).toBeLessThan(1e-4);
    for (const l of a.layers.values()) l.dropout = 0.3;
    expect(maxAbsDiff(logitsOf(model, fx.input_ids, { training: true }), evalOut)).toBeGreaterThan(1e-3);
  });

  it('per-row adapters (mixed batches) equal whole-batch runs', () => {
    const { fx, model } = fixture('lora-dora-bias');
    const row = fx.input_ids[0], T = row.length;
    const both = [row, row];
    const mixed = logitsOf(model, both, { rowAdapters: [{ start: 0, end: T, adapter: 'a' }, { start: T, end: 2 * T, adapter: null }] });
    const V = mixed.length / (2 * T);
    const alone = logitsOf(model, [row]);
    const peftOff = new PeftModel(loadModel(join(TINY, 'qwen2')));
    const base = logitsOf(peftOff.model, [row]);
    expect(maxAbsDiff(mixed.subarray(0, T * V), alone)).toBeLessThan(1e-5);
    expect(maxAbsDiff(mixed.subarray(T * V), base)).toBeLessThan(1e-5);
  });

  it('gradient checkpointing gives the same DoRA gradients bit for bit', () => {
    const { fx, peft } = fixture('lora-dora');
    const plain = adapterGrads(peft, 'a', fx.input_ids);
    setGradientCheckpointing(peft.model, true);
    const ckpt = adapterGrads(peft, 'a', fx.input_ids);
    setGradientCheckpointing(peft.model, false);
    for (const [k, g] of plain) expect(maxAbsDiff(ckpt.get(k)!, g), k).toBe(0);
  });

  it('peft train --use-dora (runTraining useDora) trains magnitudes and saves an adapter that loads as DoRA', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-dora-train-'));
    try {
      const data = join(dir, 'data.jsonl');
      writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `The goose laid ${i} golden eggs.` })).join('\n'));
      const out = join(dir, 'a');
      const r = await runTraining({ data, method: 'lora', useDora: true, maxSteps: 2, batchSize: 4, evalEvery: 0, output: out });
      expect(r.summary).toMatch(/trainable params/);
      expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).use_dora).toBe(true);
      const p = new PeftModel(loadModel(STORIES));
      const a = loadAdapter(p, out) as LoraAdapter;
      expect([...a.layers.values()].every((l) => l.magnitude !== null)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
