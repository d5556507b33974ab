/** Opening the model a command names: a bitsandbytes 4-bit checkpoint, a 4-bit quantization on load, or as stored. */
import { existsSync } from 'node:fs';
import { readJsonObject } from '../io/files.js';
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
    const a = readTrainArgs(args);
    if (a.method === 'qlora') quantize = a.quantType ?? 'nf4';
    if (!model && a.model) model = a.model;
  }
  if (!model) {
    const cfgFile = join(adapterDir, 'adapter_config.json');
    const base = existsSync(cfgFile) ? readJsonObject(cfgFile, { what: 'adapter_config.json (a JSON object)', maxBytes: 16 * 2 ** 20 }).base_model_name_or_path : undefined;
    if (base !== undefined && base !== null && typeof base !== 'string')
      throw new PeftError('invalid value in adapter config', { file: cfgFile, field: 'base_model_name_or_path', expected: 'a string or null', found: JSON.stringify(base).slice(0, 60) });
    model = base && existsSync(join(base, 'config.json')) ? base : DEFAULT_MODEL;
  }
  return { dir: model, quantize };
}

/** The fields of an adapter's train_args.json that choose its base; each checked for its type. */
export function readTrainArgs(file: string): { method?: string; quantType?: 'nf4' | 'fp4'; model?: string } {
  const a = readJsonObject(file, { what: 'train_args.json (a JSON object)', maxBytes: 16 * 2 ** 20 });
  const str = (key: string, allowed?: string[]): string | undefined => {
    const v = a[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' || (allowed && !allowed.includes(v)))
      throw new PeftError('invalid value in train_args.json', { file, field: key, expected: allowed ? allowed.join(' | ') : 'a string', found: JSON.stringify(v).slice(0, 60) });
    return v;
  };
  return { method: str('method'), quantType: str('quantType', ['nf4', 'fp4']) as 'nf4' | 'fp4' | undefined, model: str('model') };
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
