/**
 * Merging a LoRA adapter into its base and exporting the result. Over a 4-bit base the weights are
 * dequantized and merged in float32 (W = dequant(W_q) + scaling·B·A exactly, then written in
 * float32); re-quantization to 4 bits happens only when asked, and its error is reported.
 */
import { PeftError } from '../errors.js';
import { findLinear, type CausalLM } from '../models/model.js';
import { saveModelDir } from '../models/save.js';
import { saveQuantizedCheckpoint } from '../quant/bnb-checkpoint.js';
import { decoderLinears, q4QuantType, q4SourceDtype, quantizeModel, quantizeWeight, type QuantizeWeightOptions } from '../quant/quantize-model.js';
import { f32Weight, Tensor, weightToF32 } from '../tensor/index.js';
import { loadAdapter } from './format.js';
import { LoraAdapter } from './lora.js';
import { PeftModel } from './peft-model.js';

export interface MergeResult {
  mergedLayers: number;
  /** True when the base was 4-bit and was dequantized for the merge. */
  dequantized: boolean;
  requantization?: {
    quantType: 'nf4' | 'fp4';
    /** Block size and double quantization used: the base's own (per module), or 64 and true for a float base. */
    blocksize: number;
    doubleQuant: boolean;
    /** Modules re-quantized (those that were 4-bit in the base; every decoder linear for a float base). */
    quantizedLayers: number;
    maxAbsChange: number;
    meanAbsChange: number;
    lossBefore?: number;
    lossAfter?: number;
  };
}

/**
 * The quantization settings each 4-bit decoder linear of `model` was loaded with (quant type,
 * blocksize, double quantization, source dtype), keyed by module name; empty for a float model.
 */
export function quantizationSettings(model: CausalLM): Map<string, QuantizeWeightOptions> {
  const out = new Map<string, QuantizeWeightOptions>();
  for (const m of decoderLinears(model)) {
    if (m.weight.data.kind !== 'q4') continue;
    const q4 = m.weight.data.q4;
    out.set(m.name, { quantType: q4QuantType(q4), blocksize: q4.blocksize, doubleQuant: q4.absmax === null, sourceDtype: q4SourceDtype(q4) });
  }
  return out;
}

/** Replaces every 4-bit linear weight by its float32 dequantization; returns the quant type found (or null). */
export function dequantizeModel(model: CausalLM): 'nf4' | 'fp4' | null {
  let type: 'nf4' | 'fp4' | null = null;
  for (const m of decoderLinears(model)) {
    if (m.weight.data.kind !== 'q4') continue;
    type = q4QuantType(m.weight.data.q4) as 'nf4' | 'fp4';
    m.weight = f32Weight(Tensor.param(weightToF32(m.weight), [m.outFeatures, m.inFeatures], false));
  }
  return type;
}

/**
 * Merges the LoRA adapter in `adapterDir` into `model` and writes `outDir` (a Hugging Face model
 * directory: float32, or the bitsandbytes 4-bit layout with requantize). With requantize, the
 * modules that were 4-bit in the base are quantized again with the base's own settings (quant
 * type, blocksize, double quantization, per module; unquantized modules stay float32); a float
 * base is quantized to NF4, blocksize 64, double quantization. `evaluate` (optional) measures the
 * validation loss before and after re-quantization.
 */
export function mergeAdapter(model: CausalLM, adapterDir: string, outDir: string,
  opts: { requantize?: boolean; evaluate?: (m: CausalLM) => number } = {}): MergeResult {
  const settings = quantizationSettings(model);
  const quantType = dequantizeModel(model);
  const peft = new PeftModel(model);
  const a = loadAdapter(peft, adapterDir, 'merge');
  if (!(a instanceof LoraAdapter)) throw new PeftError('only LoRA adapters can be merged into the weights', { file: adapterDir, field: 'peft_type', expected: 'LORA', found: a.peftType });
  if (a.copies.size > 0) {
    // modules_to_save: the trained copies replace the base modules
    for (const [name, c] of a.copies) {
      if (name === model.embedName) model.embedTokens = { kind: 'f32', tensor: c.weight };
      else {
        const m = findLinear(model, name)!;
        m.weight = f32Weight(c.weight);
        m.bias = c.bias;
        if (name === 'lm_head' && model.config.tieWordEmbeddings) model.config = { ...model.config, tieWordEmbeddings: false, raw: { ...model.config.raw, tie_word_embeddings: false } };
      }
    }
  }
  a.merge();
  peft.deleteAdapter('merge');
  const result: MergeResult = { mergedLayers: a.layers.size, dequantized: quantType !== null };
  if (!opts.requantize) {
    saveModelDir(model, outDir);
    return result;
  }
  const type = quantType ?? 'nf4';
  const targets = settings.size > 0 ? decoderLinears(model).filter((m) => settings.has(m.name)) : decoderLinears(model);
  const before = new Map<string, Float32Array>();
  for (const m of targets) before.set(m.name, weightToF32(m.weight));
  const lossBefore = opts.evaluate?.(model);
  if (settings.size > 0) for (const m of targets) m.weight = quantizeWeight(m.weight, settings.get(m.name));
  else quantizeModel(model, { quantType: type });
  let maxAbs = 0, sumAbs = 0, n = 0;
  for (const m of targets) {
    const w0 = before.get(m.name)!, w1 = weightToF32(m.weight);
    for (let i = 0; i < w0.length; i++) {
      const d = Math.abs(w1[i] - w0[i]);
      if (d > maxAbs) maxAbs = d;
      sumAbs += d;
    }
    n += w0.length;
  }
  const lossAfter = opts.evaluate?.(model);
  saveQuantizedCheckpoint(model, outDir, { sourceDir: model.dir });
  const first = settings.values().next().value;
  result.requantization = {
    quantType: type, blocksize: first?.blocksize ?? 64, doubleQuant: first?.doubleQuant ?? true, quantizedLayers: targets.length,
    maxAbsChange: maxAbs, meanAbsChange: sumAbs / Math.max(1, n), lossBefore, lossAfter };
  return result;
}
