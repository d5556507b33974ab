/**
 * Adapter directories in HF PEFT's format: `adapter_config.json` + `adapter_model.safetensors`
 * (tensor names as PEFT saves them, without the adapter name; metadata {"format": "pt"}), written
 * atomically. Loading dispatches on `peft_type`.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from '../io/safetensors.js';
import type { CausalLM } from '../models/llama.js';
import { readAdapterConfig, parseLoraConfig, type PeftType } from './config.js';
import { LoraAdapter, loadLoraTensors } from './lora.js';
import type { PeftModel } from './peft-model.js';
import type { AdapterMethod } from './types.js';

export type TensorMap = Map<string, { data: Float32Array; shape: number[] }>;

/** Builds an adapter of a given type from a parsed config and its saved tensors. */
export type AdapterLoader = (model: CausalLM, raw: Record<string, unknown>, tensors: TensorMap, files: AdapterFiles) => AdapterMethod;

/** The two files of an adapter directory, for error messages. */
export interface AdapterFiles {
  config: string;
  tensors: string;
}

const loaders = new Map<PeftType, AdapterLoader>();

/** Registers the loader of a PEFT method (each method module calls this for its peft_type). */
export function registerAdapterLoader(type: PeftType, loader: AdapterLoader): void {
  loaders.set(type, loader);
}

registerAdapterLoader('LORA', (model, raw, tensors, files) => {
  const cfg = parseLoraConfig(raw, files.config);
  const a = new LoraAdapter(model, cfg);
  loadLoraTensors(a, tensors, files.tensors);
  return a;
});

/**
 * Reads an adapter's tensors: keys with PEFT's `.default` adapter infix (as in `state_dict()`
 * dumps) are accepted and normalised to the saved form.
 */
export function readAdapterTensors(dir: string): { tensors: TensorMap; file: string } {
  const file = join(dir, 'adapter_model.safetensors');
  if (!existsSync(file)) {
    if (existsSync(join(dir, 'adapter_model.bin')))
      throw new PeftError('adapter_model.bin (pickle) is not supported; save with safe_serialization=True', { file: dir });
    throw new PeftError('adapter_model.safetensors not found', { file: dir });
  }
  const tensors: TensorMap = new Map();
  for (const [name, e] of readSafetensorsFile(file).tensors) {
    tensors.set(name.replace(/\.default(?=\.|$)/, ''), { data: toFloat32(e).slice(), shape: e.shape });
  }
  return { tensors, file };
}

/** Loads an adapter directory into the PeftModel under `name` (and activates it unless told not to). */
export function loadAdapter(peft: PeftModel, dir: string, name = 'default', activate = true): AdapterMethod {
  const { raw, peftType, file: cfgFile } = readAdapterConfig(dir);
  const loader = loaders.get(peftType);
  if (!loader) throw new PeftError('this peft_type cannot be loaded', { file: cfgFile, field: 'peft_type', found: peftType });
  const { tensors, file } = readAdapterTensors(dir);
  const adapter = loader(peft.model, raw, tensors, { config: cfgFile, tensors: file });
  peft.addAdapter(name, adapter, activate);
  return adapter;
}

/**
 * Writes an adapter to `dir` (created if needed): adapter_config.json and
 * adapter_model.safetensors, each atomically (temp file + rename).
 */
export function saveAdapter(adapter: AdapterMethod, dir: string, baseModelName?: string): void {
  adapter.prepareSave?.();
  mkdirSync(dir, { recursive: true });
  const cfg = adapter.config();
  if (baseModelName !== undefined) cfg.base_model_name_or_path = baseModelName;
  const tensors = [...adapter.stateDict()].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: t.data }));
  writeSafetensorsFile(join(dir, 'adapter_model.safetensors'), tensors, { format: 'pt' });
  writeJsonAtomic(join(dir, 'adapter_config.json'), sortKeys(cfg));
}

function sortKeys(o: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(o).sort()) out[k] = o[k];
  return out;
}
