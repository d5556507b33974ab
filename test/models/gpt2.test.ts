/**
 * GPT-2 (src/models/gpt2.ts) against transformers 5.18 + HF PEFT 0.21 on a tiny random checkpoint
 * (scripts/fixtures/make_phi3_gpt2.py): learned positions, LayerNorm, gelu_new, fused c_attn,
 * Conv1D weights stored [in, out]. LoRA (all-linear, fan_in_fan_out), IA3 (PEFT's defaults),
 * prompt tuning; LoRA merge equals PEFT's merged Conv1D weights ([in, out]) and unmerge restores
 * them exactly (a public PEFT bug was a missing transpose on unmerge); the merged save reloads;
 * GGUF export refused clearly.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportLoraGguf } from '../../src/export/gguf-lora.js';
import { readSafetensorsFile, toFloat32 } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { decoderLinears } from '../../src/models/model.js';
import { modelTensors, saveModelDir } from '../../src/models/save.js';
import { loadAdapter, LoraAdapter, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { runTraining } from '../../src/train/run.js';
import { weightToF32 } from '../../src/tensor/index.js';
import { maxAbsDiff, readTensors } from '../helpers.js';
import { cachedVsFull, checkBase, checkPeft, logitsOf, peftDir, tinyDir, trainableCopy } from './arch-fixture.js';

describe('GPT-2 matches transformers', () => {
  it('logits, losses, padded batch, all-weight gradients', () => checkBase('gpt2'));

  it('cached generation with learned positions (prefill 5, then one token at a time) equals the full forward', () => {
    expect(cachedVsFull('gpt2')).toBeLessThan(1e-4);
  });

  it('Conv1D weights are [out, in] in memory and written back [in, out]', () => {
    const model = loadModel(tinyDir('gpt2'));
    const cAttn = model.layers[0].linears.qkv;
    expect([cAttn.outFeatures, cAttn.inFeatures, cAttn.fanInFanOut]).toEqual([144, 48, true]);
    const file = readSafetensorsFile(join(tinyDir('gpt2'), 'model.safetensors')).tensors;
    for (const t of modelTensors(model)) {
      const e = file.get(t.name)!;
      expect(e.shape, t.name).toEqual(t.shape);
      expect(maxAbsDiff(toFloat32(e), t.data as Float32Array), t.name).toBe(0);
    }
  });
});

describe('PEFT on GPT-2 matches HF PEFT', () => {
  it('LoRA on all linear (Conv1D) layers; saved with fan_in_fan_out as PEFT sets it', () => {
    const { peft } = checkPeft('gpt2', 'gpt2-lora');
    const out = mkdtempSync(join(tmpdir(), 'peft-gpt2-'));
    try {
      saveAdapter(peft.get('a'), out, 'gpt2');
      expect(JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')).fan_in_fan_out).toBe(true);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
  it('IA3 with PEFT\'s GPT-2 defaults (c_attn, mlp.c_proj feedforward)', () => { checkPeft('gpt2', 'gpt2-ia3'); });
  it('prompt tuning', () => { checkPeft('gpt2', 'gpt2-prompt'); });

  it("merge equals PEFT's merged [in, out] weights; unmerge restores them bit for bit; the merged save reloads", () => {
    const { peft, fx } = checkPeft('gpt2', 'gpt2-lora');
    const a = peft.get('a') as LoraAdapter;
    const before = new Map(decoderLinears(peft.model).map((m) => [m.name, weightToF32(m.weight)]));
    a.merge();
    const merged = readTensors(join(peftDir('gpt2-lora'), 'merged.safetensors'));
    const ours = new Map(modelTensors(peft.model).map((t) => [t.name, t.data as Float32Array]));
    expect(merged.size).toBe(8);
    for (const [k, r] of merged) expect(maxAbsDiff(ours.get(k)!, r.data), k).toBeLessThan(1e-6);
    const ref = readTensors(join(peftDir('gpt2-lora'), 'logits.safetensors')).get('logits')!;
    peft.withDisabled(() => expect(maxAbsDiff(logitsOf(peft.model, fx.input_ids), ref.data)).toBeLessThan(1e-4));
    const out = mkdtempSync(join(tmpdir(), 'peft-gpt2-'));
    try {
      saveModelDir(peft.model, out);
      expect(maxAbsDiff(logitsOf(loadModel(out), fx.input_ids), ref.data)).toBeLessThan(1e-4);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
    a.unmerge();
    for (const m of decoderLinears(peft.model)) expect(maxAbsDiff(weightToF32(m.weight), before.get(m.name)!), m.name).toBe(0);
    expect(maxAbsDiff(logitsOf(peft.model, fx.input_ids), ref.data)).toBeLessThan(1e-4);
  });

  it('DoRA on Conv1D layers (c_attn, mlp.c_fc): logits, loss, gradients within 1e-4; merge/unmerge', () => {
    const { peft, fx } = checkPeft('gpt2', 'gpt2-dora');
    const a = peft.get('a') as LoraAdapter;
    expect(a.cfg.use_dora).toBe(true);
    const ref = readTensors(join(peftDir('gpt2-dora'), 'logits.safetensors')).get('logits')!;
    const before = decoderLinears(peft.model).map((m) => m.weight);
    a.merge();
    peft.withDisabled(() => expect(maxAbsDiff(logitsOf(peft.model, fx.input_ids), ref.data)).toBeLessThan(1e-4));
    a.unmerge();
    decoderLinears(peft.model).forEach((m, i) => expect(m.weight).toBe(before[i]));
  });

  it('GGUF export is refused with the reason', () => {
    const out = mkdtempSync(join(tmpdir(), 'peft-gpt2-'));
    try {
      expect(() => exportLoraGguf(peftDir('gpt2-lora'), join(out, 'a.gguf'), tinyDir('gpt2'))).toThrow(/GPT-2.*GGUF|GGUF.*GPT-2/);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('a PeftModel on GPT-2 is built from the module map (no Llama names assumed)', () => {
    expect(() => new PeftModel(loadModel(tinyDir('gpt2')))).not.toThrow();
  });
});

describe('peft train on GPT-2', () => {
  it('LoRA (PEFT default target c_attn) and prompt tuning train (2 steps, with gradient checkpointing) and save adapters that load', async () => {
    const { model, data } = trainableCopy('gpt2');
    for (const method of ['lora', 'prompt'] as const) {
      const output = join(model, `out-${method}`);
      const r = await runTraining({ model, data, method, maxSteps: 2, batchSize: 2, maxSeqLength: 16, numVirtualTokens: 3, evalEvery: 0, output, gradientCheckpointing: true });
      expect(r.result.steps).toHaveLength(2);
      expect(Number.isFinite(r.result.steps[1].loss)).toBe(true);
      const peft = new PeftModel(loadModel(model));
      expect(() => loadAdapter(peft, output)).not.toThrow();
    }
  });
});
