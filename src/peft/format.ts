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
import { readAdapterConfig, requireSavedKeys } from './config.js';
import { adapterLoader, type TensorMap } from './registry.js';
// every method module registers its loader when imported
import './lora.js';
import './ia3.js';
import './prefix.js';
import './prompt.js';
import './bottleneck.js';
import type { PeftModel } from './peft-model.js';
import type { AdapterMethod } from './types.js';

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
  requireSavedKeys(raw, peftType, cfgFile);
  const loader = adapterLoader(peftType);
  if (!loader) throw new PeftError('this peft_type cannot be loaded', { file: cfgFile, field: 'peft_type', found: peftType });
  const { tensors, file } = readAdapterTensors(dir);
  let adapter: AdapterMethod;
  try {
    adapter = loader(peft.model, raw, tensors, { config: cfgFile, tensors: file });
  } catch (e) {
    // a config value the adapter itself rejects (target_modules matching nothing…) names the config file
    if (e instanceof PeftError && e.file === undefined) throw withFile(e, cfgFile);
    throw e;
  }
  peft.addAdapter(name, adapter, activate);
  return adapter;
}

/** The same error, with `file` in front of its message and in its details. */
function withFile(e: PeftError, file: string): PeftError {
  const n = new PeftError(e.message, { file });
  Object.assign(n, { field: e.field, expected: e.expected, found: e.found });
  return n;
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
