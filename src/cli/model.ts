/** Opening the model a command names: a bitsandbytes 4-bit checkpoint, a 4-bit quantization on load, or as stored. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import type { CausalLM } from '../models/model.js';
import { DEFAULT_MODEL } from '../paths.js';
import { loadModelAuto } from '../quant/bnb-checkpoint.js';
import { loadModelQuantized } from '../quant/quantize-model.js';

export function openModel(dir: string | undefined, quantize?: string): CausalLM {
  const d = dir ?? DEFAULT_MODEL;
  if (quantize === undefined || quantize === 'none') return loadModelAuto(d);
  if (quantize !== 'nf4' && quantize !== 'fp4') throw new PeftError('unknown quantization', { field: '--quantize', expected: 'nf4 or fp4', found: quantize });
  return loadModelQuantized(d, { quantType: quantize });
}

/** The base model an adapter was trained on: --model, else base_model_name_or_path when it is a directory, else the bundled model. */
export function adapterBase(adapterDir: string, model?: string): { dir: string; quantize?: string } {
  let quantize: string | undefined;
  const args = join(adapterDir, 'train_args.json');
  if (existsSync(args)) {
    const a = JSON.parse(readFileSync(args, 'utf8')) as { method?: string; quantType?: string; model?: string };
    if (a.method === 'qlora') quantize = a.quantType ?? 'nf4';
    if (!model && a.model) model = a.model;
  }
  if (!model) {
    const cfgFile = join(adapterDir, 'adapter_config.json');
    const base = existsSync(cfgFile) ? (JSON.parse(readFileSync(cfgFile, 'utf8')) as { base_model_name_or_path?: string }).base_model_name_or_path : undefined;
    model = base && existsSync(join(base, 'config.json')) ? base : DEFAULT_MODEL;
  }
  return { dir: model, quantize };
}

/**
 * The model (and 4-bit quantization) to run an adapter on: --model/--quantize when given, else
 * what the adapter's train_args.json records (a QLoRA adapter runs on the same 4-bit base it was
 * trained on), else the bundled model.
 */
export function openModelFor(adapter: string | undefined, model: string | undefined, quantize: string | undefined): { model: CausalLM; dir: string } {
  if (!adapter) return { model: openModel(model, quantize), dir: model ?? DEFAULT_MODEL };
  const base = adapterBase(adapter, model);
  return { model: openModel(base.dir, quantize ?? base.quantize), dir: base.dir };
}
