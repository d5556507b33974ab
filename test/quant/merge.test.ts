/**
 * Merging into a 4-bit base done right: the merged full-precision model equals
 * dequantize(W_nf4) + scaling·B·A exactly, it is written in float32 (never silently
 * re-quantized), and re-quantization on request reports the error it adds.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { loadModel } from '../../src/models/load.js';
import { decoderLinears } from '../../src/models/model.js';
import { LoraAdapter, mergeAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { loadBnbCheckpoint } from '../../src/quant/bnb-checkpoint.js';
import { loadModelQuantized } from '../../src/quant/quantize-model.js';
import { readSafetensorsFile } from '../../src/io/safetensors.js';
import { weightToF32 } from '../../src/tensor/index.js';
import { STORIES } from '../helpers.js';

describe('merging LoRA into an NF4 base', () => {
  const dir = mkdtempSync(join(tmpdir(), 'peft-qmerge-'));
  const adapterDir = join(dir, 'adapter');
  const base = loadModelQuantized(STORIES, { quantType: 'nf4' });
  const peft = new PeftModel(base);
  const a = new LoraAdapter(base, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false, use_rslora: true }), 5);
  peft.addAdapter('q', a);
  saveAdapter(a, adapterDir, 'stories260K');

  it('the merged float32 model equals dequantized base + scaling·B·A exactly', () => {
    const out = join(dir, 'merged');
    const r = mergeAdapter(loadModelQuantized(STORIES, { quantType: 'nf4' }), adapterDir, out);
    expect(r.dequantized).toBe(true);
    expect(r.mergedLayers).toBe(35);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toBeUndefined();
    for (const e of readSafetensorsFile(join(out, 'model.safetensors')).tensors.values()) expect(e.dtype).toBe('F32');
    const merged = loadModel(out);
    for (const [name, l] of a.layers) {
      const expected = weightToF32(l.module.weight); // dequantized NF4 weight of the original base
      native.gemm(false, false, l.module.outFeatures, l.module.inFeatures, l.r, l.scaling, l.B.data, l.r, l.A.data, l.module.inFeatures, 1, expected, l.module.inFeatures);
      const m = decoderLinears(merged).find((x) => x.name === name)!;
      const got = weightToF32(m.weight);
      expect(Buffer.compare(Buffer.from(got.buffer), Buffer.from(expected.buffer)), name).toBe(0);
    }
  });

  it('re-quantizes only on request, reporting the weight change and the loss change', () => {
    const out = join(dir, 'requantized');
    const r = mergeAdapter(loadModelQuantized(STORIES, { quantType: 'nf4' }), adapterDir, out, { requantize: true, evaluate: () => 1.5 });
    expect(r.requantization).toBeDefined();
    expect(r.requantization!.quantType).toBe('nf4');
    expect(r.requantization!.maxAbsChange).toBeGreaterThan(0);
    expect(r.requantization!.meanAbsChange).toBeGreaterThan(0);
    expect(r.requantization!.meanAbsChange).toBeLessThan(r.requantization!.maxAbsChange);
    expect(r.requantization!.lossBefore).toBe(1.5);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(cfg.quantization_config.load_in_4bit).toBe(true);
    const q = loadBnbCheckpoint(out);
    expect(q.layers[0].linears.q.weight.data.kind).toBe('q4');
  });
});
