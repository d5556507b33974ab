/** Opening the model a command names: a bitsandbytes 4-bit checkpoint, a 4-bit quantization on load, or as stored. */
import { PeftError } from '../errors.js';
import type { CausalLM } from '../models/llama.js';
import { DEFAULT_MODEL } from '../paths.js';
import { loadModelAuto } from '../quant/bnb-checkpoint.js';
import { loadModelQuantized } from '../quant/quantize-model.js';

export function openModel(dir: string | undefined, quantize?: string): CausalLM {
  const d = dir ?? DEFAULT_MODEL;
  if (quantize === undefined || quantize === 'none') return loadModelAuto(d);
  if (quantize !== 'nf4' && quantize !== 'fp4') throw new PeftError('unknown quantization', { field: '--quantize', expected: 'nf4 or fp4', found: quantize });
  return loadModelQuantized(d, { quantType: quantize });
}
