/**
 * IA3 against HF PEFT 0.21 on the tiny GQA Llama (explicit head_dim): the PEFT-saved adapter
 * reproduces PEFT's logits and gradients; defaults per model type; save/load; the mixed-adapter
 * rows path; merge/unmerge; bad input.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { defaultContext, forwardHidden, lmLogits, lmLoss, type CausalLM, type ForwardContext } from '../../src/models/model.js';
import { createIa3Adapter, Ia3Adapter, loadAdapter, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { generateBatch } from '../../src/generate/generate.js';
import { sequenceSetup } from '../../src/peft/attach.js';
import { serializeSafetensors, readSafetensorsFile } from '../../src/io/safetensors.js';
import { backward, noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors } from '../helpers.js';

const DIR = join(FIXTURES, 'peft', 'ia3');
const GQA = join(FIXTURES, 'tiny', 'llama-gqa');
const fx = readJson<{ input_ids: number[][]; loss: { value: number }; adapter_keys: Record<string, number[]>; adapter_config: Record<string, unknown> }>(join(DIR, 'fixture.json'));
const ids = fx.input_ids;

function logitsOf(model: CausalLM, rows: number[][], ctx: ForwardContext = defaultContext()): Float32Array {
  const B = rows.length, T = rows[0].length;
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(rows.flat()), B, T }, ctx).hidden, ctx).data.slice()));
}

function nextTokenLabels(rows: number[][]): Int32Array {
  const T = rows[0].length;
  const out = new Int32Array(rows.length * T).fill(-100);
  rows.forEach((r, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = r[t + 1]; });
  return out;
}

function loaded(): { model: CausalLM; peft: PeftModel; a: Ia3Adapter } {
  const model = loadModel(GQA);
  const peft = new PeftModel(model);
  const a = loadAdapter(peft, DIR, 'ia3') as Ia3Adapter;
  return { model, peft, a };
}

describe('IA3 matches HF PEFT (tiny GQA Llama)', () => {
  const { model, peft, a } = loaded();

  it('loads the PEFT adapter: attention vectors [out, 1], feedforward [1, in]', () => {
    const sd = a.stateDict();
    expect(Object.fromEntries([...sd].map(([k, t]) => [k, t.shape]))).toEqual(fx.adapter_keys);
    expect(a.layers.get('model.layers.0.mlp.down_proj')!.feedforward).toBe(true);
    expect(a.layers.get('model.layers.1.self_attn.k_proj')!.feedforward).toBe(false);
    expect(a.numParameters()).toBe(288);
  });

  it('adapted logits within 1e-4', () => {
    const ref = readTensors(join(DIR, 'logits.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(model, ids), ref.data)).toBeLessThan(1e-4);
  });

  it('loss and gradients of every vector within 1e-4 (relative to each tensor max)', () => {
    const params = peft.trainable('ia3');
    for (const p of params) p.tensor.grad = null;
    const labels = nextTokenLabels(ids);
    const n = labels.filter((l) => l !== -100).length;
    let loss = 0;
    withArena(() => {
      const { hidden } = forwardHidden(model, { ids: Int32Array.from(ids.flat()), B: 2, T: ids[0].length }, defaultContext(true));
      const r = lmLoss(model, hidden, labels, 1 / n);
      loss = r.sum / r.count;
      backward(r.loss);
    });
    expect(Math.abs(loss - fx.loss.value)).toBeLessThan(1e-5);
    const ref = readTensors(join(DIR, 'grads.safetensors'));
    expect(params.length).toBe(ref.size);
    const byName = new Map(params.map((p) => [p.name, p.tensor]));
    for (const [k, r] of ref) {
      const t = byName.get(k.replace(/\.default$/, ''));
      expect(t, k).toBeDefined();
      expect(t!.shape).toEqual(r.shape);
      expect(maxRelDiff(t!.grad!, r.data), k).toBeLessThan(1e-4);
    }
  });

  it("config() writes PEFT's adapter_config.json keys and values", () => {
    const { peft_version: _v, ...want } = fx.adapter_config;
    const got = a.config();
    expect(Object.keys(got).sort()).toEqual(Object.keys(want).sort());
    expect({ ...got, target_modules: [...(got.target_modules as string[])].sort() }).toEqual({ ...want, target_modules: [...(want.target_modules as string[])].sort() });
  });

  it('save → load round trip is bit-exact (PEFT tensor names and bytes)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-ia3-'));
    try {
      saveAdapter(a, dir, 'test/fixtures/tiny/llama-gqa');
      const src = readSafetensorsFile(join(DIR, 'adapter_model.safetensors'));
      const out = readSafetensorsFile(join(dir, 'adapter_model.safetensors'));
      expect([...out.tensors.keys()].sort()).toEqual([...src.tensors.keys()].sort());
      for (const [k, e] of src.tensors) expect(Buffer.compare(Buffer.from(e.data), Buffer.from(out.tensors.get(k)!.data)), k).toBe(0);
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      expect(cfg).toMatchObject({ peft_type: 'IA3', task_type: 'CAUSAL_LM', feedforward_modules: ['down_proj'], init_ia3_weights: true });
      const p2 = new PeftModel(loadModel(GQA));
      loadAdapter(p2, dir);
      expect(maxAbsDiff(logitsOf(p2.model, ids), logitsOf(model, ids))).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('IA3 behaviour', () => {
  it("defaults follow PEFT's mapping: llama k/v/down, qwen2 q/v/down; ones leave the model unchanged", () => {
    const model = loadModel(GQA);
    const base = logitsOf(model, ids);
    const peft = new PeftModel(model);
    const a = createIa3Adapter(model, {});
    peft.addAdapter('x', a);
    expect([...a.stateDict().keys()].sort()).toEqual(Object.keys(fx.adapter_keys).sort());
    expect(a.config()).toMatchObject({ target_modules: ['k_proj', 'v_proj', 'down_proj'], feedforward_modules: ['down_proj'] });
    expect(maxAbsDiff(logitsOf(model, ids), base)).toBe(0);
    const qwen = createIa3Adapter(loadModel(join(FIXTURES, 'tiny', 'qwen2')), {});
    expect([...qwen.layers.keys()].filter((k) => k.startsWith('model.layers.0.'))).toEqual(
      ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.0.mlp.down_proj']);
    expect(qwen.layers.get('model.layers.0.self_attn.q_proj')!.vector.shape).toEqual([48, 1]);
    const all = createIa3Adapter(model, { target_modules: 'all-linear' });
    expect(all.layers.size).toBe(14);
    expect(all.config().target_modules).toEqual([...all.layers.keys()]); // saved resolved, as PEFT does
    expect([...all.layers.values()].filter((l) => l.feedforward).map((l) => l.module.name)).toEqual(['model.layers.0.mlp.down_proj', 'model.layers.1.mlp.down_proj']);
  });

  it('mixed-adapter batch: rows with the IA3 adapter and rows without equal each run alone', () => {
    const { model, peft } = loaded();
    const T = ids[0].length;
    const withA = logitsOf(model, ids);
    const without = peft.withDisabled(() => logitsOf(model, ids));
    const ctx: ForwardContext = { ...defaultContext(), rowAdapters: [{ start: 0, end: T, adapter: 'ia3' }, { start: T, end: 2 * T, adapter: null }] };
    const mixed = logitsOf(model, ids, ctx);
    const V = model.config.vocabSize;
    expect(maxAbsDiff(mixed.subarray(0, T * V), withA.subarray(0, T * V))).toBeLessThan(1e-5);
    expect(maxAbsDiff(mixed.subarray(T * V), without.subarray(T * V))).toBeLessThan(1e-5);
    // generation with per-row adapters
    const prompts = [{ ids: ids[0].slice(0, 5), adapter: 'ia3' }, { ids: ids[1].slice(0, 7), adapter: null }];
    const together = generateBatch(model, prompts, { maxNewTokens: 6 }, sequenceSetup(peft));
    const alone0 = generateBatch(model, [prompts[0]], { maxNewTokens: 6 }, sequenceSetup(peft));
    const alone1 = generateBatch(model, [prompts[1]], { maxNewTokens: 6 }, sequenceSetup(peft));
    expect(together[0].ids).toEqual(alone0[0].ids);
    expect(together[1].ids).toEqual(alone1[0].ids);
    const plain = peft.withDisabled(() => generateBatch(model, [{ ids: prompts[1].ids }], { maxNewTokens: 6 }));
    expect(together[1].ids).toEqual(plain[0].ids);
  });

  it('merge folds the vectors into the weights (logits within 1e-5); unmerge restores them', () => {
    const { model, a } = loaded();
    const before = logitsOf(model, ids);
    const w = (model.layers[0].linears.k.weight.data as { tensor: { data: Float32Array } }).tensor.data.slice();
    a.merge();
    expect(maxAbsDiff(logitsOf(model, ids), before)).toBeLessThan(1e-5);
    a.unmerge();
    expect(maxRelDiff((model.layers[0].linears.k.weight.data as { tensor: { data: Float32Array } }).tensor.data, w)).toBeLessThan(1e-6);
    expect(maxAbsDiff(logitsOf(model, ids), before)).toBeLessThan(1e-5);
  });

  it('refuses unsupported or inconsistent options, naming the key', () => {
    const model = loadModel(GQA);
    expect(() => createIa3Adapter(model, { modules_to_save: ['lm_head'] })).toThrow(/modules_to_save/);
    // PEFT warns and sets fan_in_fan_out to False for nn.Linear targets (True for GPT-2's Conv1D)
    expect(createIa3Adapter(model, { fan_in_fan_out: true }).config().fan_in_fan_out).toBe(false);
    expect(() => createIa3Adapter(model, { target_modules: ['k_proj'], feedforward_modules: ['down_proj'] })).toThrow(/feedforward_modules.*subset/);
    expect(() => createIa3Adapter(model, { target_modules: ['nope'] })).toThrow(/target_modules matched no linear layer/);
  });

  it('an adapter whose vector does not fit the base is refused naming the tensor and both shapes', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-ia3-bad-'));
    try {
      cpSync(join(DIR, 'adapter_config.json'), join(dir, 'adapter_config.json'));
      const src = readTensors(join(DIR, 'adapter_model.safetensors'));
      const entries = [...src].map(([name, t]) => name.endsWith('layers.0.self_attn.v_proj.ia3_l')
        ? { name, dtype: 'F32' as const, shape: [64, 1], data: new Float32Array(64) }
        : { name, dtype: 'F32' as const, shape: t.shape, data: t.data });
      writeFileSync(join(dir, 'adapter_model.safetensors'), serializeSafetensors(entries, { format: 'pt' }));
      const p = new PeftModel(loadModel(GQA));
      expect(() => loadAdapter(p, dir)).toThrow(/adapter_model\.safetensors: base_model\.model\.model\.layers\.0\.self_attn\.v_proj\.ia3_l: .*expected \[32,1\], found \[64,1\]/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
