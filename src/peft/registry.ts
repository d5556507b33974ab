/**
 * The table of adapter loaders by peft_type. Each method module registers its own loader when it
 * is imported; format.ts imports every method module, so loading any adapter type works from it.
 */
import { PeftError } from '../errors.js';
import type { CausalLM } from '../models/model.js';
import type { Tensor } from '../tensor/index.js';
import type { PeftType } from './config.js';
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

/** The loader registered for a peft_type, if any. */
export function adapterLoader(type: PeftType): AdapterLoader | undefined {
  return loaders.get(type);
}

/** Registers the loader of a PEFT method (each method module calls this for its peft_type). */
export function registerAdapterLoader(type: PeftType, loader: AdapterLoader): void {
  loaders.set(type, loader);
}

/**
 * Copies saved tensors into an adapter's state dict: missing or unexpected tensors are reported by
 * name with the file; a shape mismatch names the tensor and both shapes.
 */
export function loadStateDict(expected: Map<string, Tensor>, tensors: TensorMap, file: string): void {
  const missing = [...expected.keys()].filter((k) => !tensors.has(k));
  const unexpected = [...tensors.keys()].filter((k) => !expected.has(k));
  if (missing.length > 0 || unexpected.length > 0) {
    const parts: string[] = [];
    const list = (a: string[]): string => `${a.slice(0, 8).join(', ')}${a.length > 8 ? ` … (${a.length})` : ''}`;
    if (missing.length) parts.push(`missing: ${list(missing)}`);
    if (unexpected.length) parts.push(`unexpected: ${list(unexpected)}`);
    throw new PeftError(`adapter tensors do not match the config and base model (${parts.join('; ')})`, { file, field: (missing[0] ?? unexpected[0]) });
  }
  for (const [key, t] of expected) {
    const src = tensors.get(key)!;
    if (src.shape.length !== t.shape.length || src.shape.some((d, i) => d !== t.shape[i]))
      throw new PeftError('adapter tensor shape does not match the base model and config', { file, field: key, expected: `[${t.shape}]`, found: `[${src.shape}]` });
    t.data.set(src.data);
  }
}
