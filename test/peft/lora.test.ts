/**
 * LoRA against HF PEFT: adapters saved by PEFT reproduce its adapted logits and LoRA gradients;
 * merge/unmerge, rsLoRA, dropout, save/load, summary, modules_to_save with tied embeddings, bad input.
 */
import { describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { defaultContext, forwardHidden, lmLogits, lmLoss, runLinear, type CausalLM } from '../../src/models/model.js';
import { LoraAdapter, loadAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { backward, noGrad, Tensor, withArena } from '../../src/tensor/index.js';
import { serializeSafetensors, readSafetensorsFile, toFloat32 } from '../../src/io/safetensors.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors, STORIES } from '../helpers.js';

function logitsOf(model: CausalLM, ids: number[][], training = false): Float32Array {
  const B = ids.length, T = ids[0].length;
  return noGrad(() => withArena(() =>
    lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids.flat()), B, T }, { training, seed: 1, dropoutCalls: 0 }).hidden).data.slice()));
}

function nextTokenLabels(ids: number[][]): Int32Array {
  const T = ids[0].length;
  const out = new Int32Array(ids.length * T).fill(-100);
  ids.forEach((row, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = row[t + 1]; });
  return out;
}

/** Gradients of the mean next-token loss w.r.t. the adapter's trainable tensors, keyed as saved. */
function adapterGrads(peft: PeftModel, name: string, ids: number[][]): Map<string, Float32Array> {
  const params = peft.trainable(name);
  for (const p of params) p.tensor.grad = null;
  withArena(() => {
    const labels = nextTokenLabels(ids);
    const n = labels.filter((l) => l !== -100).length;
    const { hidden } = forwardHidden(peft.model, { ids: Int32Array.from(ids.flat()), B: ids.length, T: ids[0].length });
    backward(lmLoss(peft.model, hidden, labels, 1 / n).loss);
  });
  return new Map(params.map((p) => [p.name, p.tensor.grad!]));
}

const normGradKey = (k: string): string => k.replace(/\.default(?=\.|$)/, '').replace('.modules_to_save', '');

describe('LoRA on stories260K matches HF PEFT', () => {
  const fx = join(FIXTURES, 'stories260K');
  const f = readJson<{ input_ids: number[]; loss: { lora: number } }>(join(fx, 'fixture.json'));
  const ids = [f.input_ids];
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  loadAdapter(peft, fx, 'fixture');

  it('adapted logits within 1e-4', () => {
    const ref = readTensors(join(fx, 'lora_logits.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(model, ids), ref.data)).toBeLessThan(1e-4);
  });

  it('LoRA gradients within 1e-4 relative', () => {
    const ref = readTensors(join(fx, 'lora_grads.safetensors'));
    const grads = adapterGrads(peft, 'fixture', ids);
    expect(grads.size).toBe(70);
    for (const [k, r] of ref) {
      const g = grads.get(normGradKey(k));
      expect(g, k).toBeDefined();
      expect(maxRelDiff(g!, r.data), k).toBeLessThan(1e-4);
    }
  });

  it("trainable-parameter summary in PEFT's format", () => {
    expect(peft.trainableSummary('fixture')).toBe('trainable params: 23,120 || all params: 283,152 || trainable%: 8.1652');
  });

  it('disabling adapters gives exactly the base output', () => {
    const base = readTensors(join(fx, 'base_logits.safetensors')).get('logits')!;
    const off = peft.withDisabled(() => logitsOf(model, ids));
    const plain = logitsOf(loadModel(STORIES), ids);
    expect(maxAbsDiff(off, plain)).toBe(0);
    expect(maxAbsDiff(off, base.data)).toBeLessThan(1e-4);
  });

  it('LoRA layer output equals the merged-weight layer output within 1e-5; unmerge restores W within 1e-6', () => {
    const m2 = loadModel(STORIES);
    const p2 = new PeftModel(m2);
    const a = loadAdapter(p2, fx, 'x') as LoraAdapter;
    const mod = m2.layers[2].linears.down;
    const x = Tensor.param(Float32Array.from({ length: 5 * mod.inFeatures }, (_, i) => Math.sin(i * 0.37)), [5, mod.inFeatures], false);
    const layerOut = (): Float32Array => noGrad(() => withArena(() => runLinear(mod, x, defaultContext()).data.slice()));
    const w = (mod.weight.data as { tensor: { data: Float32Array } }).tensor.data;
    const before = w.slice();
    const unmergedLayer = layerOut();
    const unmergedLogits = logitsOf(m2, ids);
    a.merge();
    expect(maxRelDiff(layerOut(), unmergedLayer)).toBeLessThan(1e-5);
    // whole model: the float32 reassociation of 5 layers stays within the 1e-4 logits tolerance
    expect(maxAbsDiff(logitsOf(m2, ids), unmergedLogits)).toBeLessThan(1e-4);
    a.unmerge();
    expect(maxRelDiff(w, before)).toBeLessThan(1e-6);
    // restored weights still give PEFT's adapted logits
    const ref = readTensors(join(fx, 'lora_logits.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(m2, ids), ref.data)).toBeLessThan(1e-4);
  });

  it('save → load round trip is bit-exact', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-lora-'));
    try {
      saveAdapter(peft.get('fixture'), dir, 'stories260K');
      const a = readSafetensorsFile(join(fx, 'adapter_model.safetensors'));
      const b = readSafetensorsFile(join(dir, 'adapter_model.safetensors'));
      expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
      for (const [k, e] of a.tensors) expect(Buffer.compare(Buffer.from(e.data), Buffer.from(b.tensors.get(k)!.data)), k).toBe(0);
      expect(b.metadata).toEqual({ format: 'pt' });
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg).toMatchObject({ peft_type: 'LORA', task_type: 'CAUSAL_LM', r: 4, lora_alpha: 8, inference_mode: true, base_model_name_or_path: 'stories260K' });
      const p3 = new PeftModel(loadModel(STORIES));
      loadAdapter(p3, dir);
      expect(maxAbsDiff(logitsOf(p3.model, ids), logitsOf(model, ids))).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('LoRA variants match HF PEFT (tiny models)', () => {
  for (const name of ['lora-rslora', 'lora-patterns', 'lora-bias-mts', 'lora-bias-all']) {
    it(`${name}: logits within 1e-4, gradients within 1e-4 relative`, () => {
      const dir = join(FIXTURES, 'peft', name);
      const fx = readJson<{ input_ids: number[][]; base_model: { dir: string }; lora_scalings: Record<string, { scaling: number }> }>(join(dir, 'fixture.json'));
      const model = loadModel(join(FIXTURES, 'tiny', fx.base_model.dir.split('/').pop()!));
      const peft = new PeftModel(model);
      const a = loadAdapter(peft, dir, 'a') as LoraAdapter;
      for (const [mod, s] of Object.entries(fx.lora_scalings)) expect(a.layers.get(mod)?.scaling, mod).toBeCloseTo(s.scaling, 12);
      const ref = readTensors(join(dir, 'logits.safetensors')).get('logits')!;
      expect(maxAbsDiff(logitsOf(model, fx.input_ids), ref.data)).toBeLessThan(1e-4);
      const refG = readTensors(join(dir, 'grads.safetensors'));
      const grads = adapterGrads(peft, 'a', fx.input_ids);
      expect(grads.size).toBe(refG.size);
      for (const [k, r] of refG) {
        const g = grads.get(normGradKey(k));
        expect(g, k).toBeDefined();
        expect(maxRelDiff(g!, r.data), k).toBeLessThan(1e-4);
      }
    });
  }
});

describe('LoRA behaviour', () => {
  const ids = [[1, 403, 407, 261, 378, 432, 383, 286, 261]];

  it('rsLoRA scales by alpha/sqrt(r)', () => {
    const a = new LoraAdapter(loadModel(STORIES), parseLoraConfig({ r: 16, lora_alpha: 8, use_rslora: true, target_modules: ['q_proj'] }));
    for (const l of a.layers.values()) expect(l.scaling).toBeCloseTo(8 / 4, 12);
    const b = new LoraAdapter(loadModel(STORIES), parseLoraConfig({ r: 16, lora_alpha: 8, target_modules: ['q_proj'] }));
    for (const l of b.layers.values()) expect(l.scaling).toBeCloseTo(0.5, 12);
  });

  it('dropout is active only in training', () => {
    const model = loadModel(STORIES);
    const peft = new PeftModel(model);
    peft.addAdapter('d', new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, lora_dropout: 0.5, target_modules: 'all-linear', init_lora_weights: false }), 3));
    const e1 = logitsOf(model, ids), e2 = logitsOf(model, ids);
    expect(maxAbsDiff(e1, e2)).toBe(0);
    const noDrop = new PeftModel(loadModel(STORIES));
    const a = new LoraAdapter(noDrop.model, parseLoraConfig({ r: 4, lora_alpha: 8, lora_dropout: 0, target_modules: 'all-linear', init_lora_weights: false }), 3);
    noDrop.addAdapter('d', a);
    expect(maxAbsDiff(e1, logitsOf(noDrop.model, ids))).toBeLessThan(1e-6);
    expect(maxAbsDiff(logitsOf(model, ids, true), e1)).toBeGreaterThan(1e-3);
  });

  it('target_modules: suffix list, regex and all-linear; layers_to_transform', () => {
    const model = loadModel(STORIES);
    const names = (cfg: Record<string, unknown>): string[] => [...new LoraAdapter(model, parseLoraConfig(cfg)).layers.keys()];
    expect(names({ target_modules: ['q_proj', 'v_proj'] })).toHaveLength(10);
    expect(names({ target_modules: 'all-linear' })).toHaveLength(35);
    expect(names({ target_modules: 'all-linear' })).not.toContain('lm_head');
    expect(names({ target_modules: '.*layers\\.[01]\\.mlp\\.(up|down)_proj' })).toEqual([
      'model.layers.0.mlp.up_proj', 'model.layers.0.mlp.down_proj', 'model.layers.1.mlp.up_proj', 'model.layers.1.mlp.down_proj']);
    expect(names({ target_modules: ['q_proj'], layers_to_transform: [4] })).toEqual(['model.layers.4.self_attn.q_proj']);
  });

  it('modules_to_save on lm_head with tied embeddings trains a copy and leaves embed_tokens unchanged', () => {
    const model = loadModel(STORIES);
    const embed = (model.embedTokens as { tensor: { data: Float32Array } }).tensor.data;
    const embedBefore = embed.slice();
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 2, target_modules: ['q_proj'], modules_to_save: ['lm_head'] }));
    peft.addAdapter('mts', a);
    const copy = a.copies.get('lm_head')!.weight;
    const params = peft.trainable('mts');
    expect(params.map((p) => p.name)).toContain('base_model.model.lm_head.weight');
    withArena(() => {
      const labels = nextTokenLabels(ids);
      backward(lmLoss(model, forwardHidden(model, { ids: Int32Array.from(ids.flat()), B: 1, T: ids[0].length }).hidden, labels, 1 / 8).loss);
    });
    // a plain SGD step on the copy
    for (let i = 0; i < copy.size; i++) copy.data[i] -= 0.5 * copy.grad![i];
    expect(maxAbsDiff(embed, embedBefore)).toBe(0);
    expect(maxAbsDiff(copy.data, embedBefore)).toBeGreaterThan(1e-4);
    // the head now uses the copy; with adapters disabled the tied head is the untouched embedding
    const on = logitsOf(model, ids), off = peft.withDisabled(() => logitsOf(model, ids));
    expect(maxAbsDiff(on, off)).toBeGreaterThan(1e-4);
    expect(maxAbsDiff(off, logitsOf(loadModel(STORIES), ids))).toBe(0);
  });
});

describe('LoRA bad input', () => {
  const fx = join(FIXTURES, 'stories260K');
  function withBrokenAdapter(edit: (tensors: Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>, cfg: Record<string, unknown>) => void): string {
    const dir = mkdtempSync(join(tmpdir(), 'peft-bad-'));
    cpSync(fx, dir, { recursive: true });
    const st = readSafetensorsFile(join(fx, 'adapter_model.safetensors'));
    const tensors = new Map<string, { dtype: 'F32'; shape: number[]; data: Float32Array }>();
    for (const [k, e] of st.tensors) tensors.set(k, { dtype: 'F32', shape: e.shape, data: toFloat32(e).slice() });
    const cfg = JSON.parse(readFileSync(join(fx, 'adapter_config.json'), 'utf8'));
    edit(tensors, cfg);
    writeFileSync(join(dir, 'adapter_model.safetensors'), serializeSafetensors([...tensors].map(([name, t]) => ({ name, ...t })), { format: 'pt' }));
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    return dir;
  }
  const load = (dir: string): void => { loadAdapter(new PeftModel(loadModel(STORIES)), dir); };
  const q0A = 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight';

  it('a missing tensor is reported by name', () => {
    const dir = withBrokenAdapter((t) => t.delete(q0A));
    expect(() => load(dir)).toThrow(/missing: .*layers\.0\.self_attn\.q_proj\.lora_A\.weight/);
  });
  it('an unexpected tensor is reported by name', () => {
    const dir = withBrokenAdapter((t) => t.set('base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight', { dtype: 'F32', shape: [1], data: new Float32Array(1) }));
    expect(() => load(dir)).toThrow(/unexpected: .*lora_C\.weight/);
  });
  it('a rank mismatch names the config field, the tensor and both ranks (before allocating)', () => {
    const dir = withBrokenAdapter((_t, cfg) => { cfg.r = 8; });
    expect(() => load(dir)).toThrow(/adapter_config\.json: r: .*expected 4 \(rows of .*lora_A\.weight \[4, \d+\].*found 8/);
  });
  it('unknown config keys are ignored; a bad value names the key', () => {
    const ok = withBrokenAdapter((_t, cfg) => { cfg.some_future_option = { x: 1 }; });
    expect(() => load(ok)).not.toThrow();
    const bad = withBrokenAdapter((_t, cfg) => { cfg.lora_alpha = 'eight'; });
    expect(() => load(bad)).toThrow(/adapter_config\.json: lora_alpha: invalid value/);
  });
});
