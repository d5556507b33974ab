/**
 * The table of adapter loaders by peft_type. Each method module registers its own loader when it
 * is imported; format.ts imports every method module, so loading any adapter type works from it.
 */
import type { CausalLM } from '../models/llama.js';
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
