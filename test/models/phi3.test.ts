/**
 * Phi-3 / Phi-4-mini (src/models/phi3.ts) against transformers 5.18 + HF PEFT 0.21 on tiny random
 * checkpoints (scripts/fixtures/make_phi3_gpt2.py): fused qkv_proj / gate_up_proj, partial rotary,
 * LongRoPE (long factors beyond original_max_position_embeddings, short ones within); LoRA on the
 * fused modules, IA3, prompt tuning; merge → save → reload; GGUF names.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportLoraGguf } from '../../src/export/gguf-lora.js';
import { ggufTensorF32, ggufValue, readGgufFile } from '../../src/io/gguf.js';
import { loadModel } from '../../src/models/load.js';
import { saveModelDir } from '../../src/models/save.js';
import { loadAdapter, LoraAdapter, parseLoraConfig, PeftModel } from '../../src/peft/index.js';
import { runTraining, type MethodName, type TrainRunOptions } from '../../src/train/run.js';
import { maxAbsDiff, readTensors } from '../helpers.js';
import { archFixture, cachedVsFull, checkBase, checkPeft, logitsOf, peftDir, tinyDir, trainableCopy } from './arch-fixture.js';

describe('Phi-3 matches transformers', () => {
  it('phi3 (fused qkv / gate_up, GQA): logits, losses, padded batch, all-weight gradients', () => checkBase('phi3'));
  it('phi4-mini (partial rotary 0.75, LongRoPE long factors, tied): logits, losses, padded batch, all-weight gradients', () => checkBase('phi4-mini'));

  it('phi4-mini: an input within original_max_position_embeddings uses the short factors', () => {
    const fx = archFixture('phi4-mini');
    const short = fx.input_ids.map((r) => r.slice(0, 8));
    const ref = readTensors(join(tinyDir('phi4-mini'), 'logits_short.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(loadModel(tinyDir('phi4-mini')), short), ref.data)).toBeLessThan(1e-4);
  });

  it('config: rotary dimension, LongRoPE attention factor', () => {
    const c = loadModel(tinyDir('phi4-mini')).config;
    expect(c.rope.rotaryDim).toBe(12);
    expect(c.rope.longrope!.attentionFactor).toBeCloseTo(Math.sqrt(1 + Math.log(4) / Math.log(8)), 12);
  });

  it('cached generation (prefill 5, then one token at a time) equals the full forward', () => {
    expect(cachedVsFull('phi3')).toBeLessThan(1e-4);
  });
});

describe('PEFT on Phi-3 matches HF PEFT', () => {
  it('LoRA on the fused qkv_proj and gate_up_proj (and o_proj, down_proj)', () => {
    const { peft } = checkPeft('phi3', 'phi3-lora');
    const a = peft.get('a') as LoraAdapter;
    expect([...a.layers.keys()]).toContain('model.layers.0.self_attn.qkv_proj');
    expect(a.layers.get('model.layers.0.mlp.gate_up_proj')!.B.shape).toEqual([160, 4]);
  });
  it('IA3 on qkv_proj and down_proj (feedforward)', () => { checkPeft('phi3', 'phi3-ia3'); });
  it('prompt tuning', () => { checkPeft('phi3', 'phi3-prompt'); });
  it('DoRA on the fused qkv_proj and gate_up_proj', () => { checkPeft('phi3', 'phi3-dora'); });

  it('LoRA merged and saved as an HF directory reloads with the adapted logits; no default targets (PEFT has none)', () => {
    const { peft, fx } = checkPeft('phi3', 'phi3-lora');
    (peft.get('a') as LoraAdapter).merge();
    peft.deleteAdapter('a');
    const out = mkdtempSync(join(tmpdir(), 'peft-phi3-'));
    try {
      saveModelDir(peft.model, out);
      const ref = readTensors(join(peftDir('phi3-lora'), 'logits.safetensors')).get('logits')!;
      expect(maxAbsDiff(logitsOf(loadModel(out), fx.input_ids), ref.data)).toBeLessThan(1e-4);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
    expect(() => new LoraAdapter(loadModel(tinyDir('phi3')), parseLoraConfig({ r: 2 }))).toThrow(/target_modules/);
  });
});

describe('GGUF export of a Phi-3 LoRA', () => {
  it("uses llama.cpp's phi3 names (fused attn_qkv, ffn_up) with A and B as PEFT saved them", () => {
    const out = mkdtempSync(join(tmpdir(), 'peft-phi3-gguf-'));
    try {
      exportLoraGguf(peftDir('phi3-lora'), join(out, 'a.gguf'), tinyDir('phi3'));
      const g = readGgufFile(join(out, 'a.gguf'));
      expect(ggufValue(g, 'general.architecture')).toBe('phi3');
      const st = readTensors(join(peftDir('phi3-lora'), 'adapter_model.safetensors'));
      const a = st.get('base_model.model.model.layers.1.self_attn.qkv_proj.lora_A.weight')!;
      const b = st.get('base_model.model.model.layers.1.mlp.gate_up_proj.lora_B.weight')!;
      expect(maxAbsDiff(ggufTensorF32(g, 'blk.1.attn_qkv.weight.lora_a'), a.data)).toBe(0);
      // alpha/r = 2: the true scale equals llama.cpp's alpha/r, so B is stored as saved
      expect(maxAbsDiff(ggufTensorF32(g, 'blk.1.ffn_up.weight.lora_b'), b.data)).toBe(0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe('peft train on Phi-3', () => {
  it('LoRA on the fused modules and IA3 train (2 steps, with gradient checkpointing) and save adapters that load', async () => {
    const { model, data } = trainableCopy('phi4-mini');
    const runs: Array<[MethodName, Partial<TrainRunOptions>]> = [
      ['lora', { targetModules: ['qkv_proj', 'gate_up_proj'] }],
      ['ia3', { targetModules: ['qkv_proj', 'down_proj'], feedforwardModules: ['down_proj'] }],
    ];
    for (const [method, extra] of runs) {
      const output = join(model, `out-${method}`);
      const r = await runTraining({ model, data, method, ...extra, maxSteps: 2, batchSize: 2, maxSeqLength: 16, evalEvery: 0, output, gradientCheckpointing: true });
      expect(r.result.steps).toHaveLength(2);
      expect(Number.isFinite(r.result.steps[1].loss)).toBe(true);
      const peft = new PeftModel(loadModel(model));
      expect(() => loadAdapter(peft, output)).not.toThrow();
    }
  });
});
