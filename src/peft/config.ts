/**
 * PEFT adapter configurations: plain JSON-shaped objects with HF PEFT's snake_case keys, so they
 * round-trip to `adapter_config.json` unchanged (source: `peft/tuners/<method>/config.py`).
 * Unknown keys in a file are ignored; a known key with a bad value is a PeftError naming the file
 * and the key.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { readJsonObject } from '../io/files.js';

export type PeftType = 'LORA' | 'IA3' | 'PREFIX_TUNING' | 'PROMPT_TUNING' | 'BOTTLENECK';
export const PEFT_TYPES: PeftType[] = ['LORA', 'IA3', 'PREFIX_TUNING', 'PROMPT_TUNING', 'BOTTLENECK'];

/** LoRA (Hu et al. 2021) settings; defaults are PEFT's LoraConfig defaults. */
export interface LoraConfig {
  peft_type: 'LORA';
  task_type: 'CAUSAL_LM';
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  /** Module-name suffixes, a full-match regex, or 'all-linear'. null = the model type's default (q_proj, v_proj). */
  target_modules: string | string[] | null;
  exclude_modules: string | string[] | null;
  bias: 'none' | 'all' | 'lora_only';
  /** Scale by lora_alpha/√r (Kalajdzievski 2023) instead of lora_alpha/r. */
  use_rslora: boolean;
  /** Extra modules trained in full and saved (e.g. lm_head, embed_tokens). */
  modules_to_save: string[] | null;
  /** true (Kaiming-uniform A, zero B), 'gaussian' (N(0, 1/r) A, zero B) or false (random B too: testing only). */
  init_lora_weights: boolean | 'gaussian';
  layers_to_transform: number | number[] | null;
  layers_pattern: string | string[] | null;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  fan_in_fan_out: boolean;
  use_dora: boolean;
  lora_bias: boolean;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  revision: string | null;
}

export const LORA_DEFAULTS: LoraConfig = {
  peft_type: 'LORA',
  task_type: 'CAUSAL_LM',
  r: 8,
  lora_alpha: 8,
  lora_dropout: 0,
  target_modules: null,
  exclude_modules: null,
  bias: 'none',
  use_rslora: false,
  modules_to_save: null,
  init_lora_weights: true,
  layers_to_transform: null,
  layers_pattern: null,
  rank_pattern: {},
  alpha_pattern: {},
  fan_in_fan_out: false,
  use_dora: false,
  lora_bias: false,
  base_model_name_or_path: null,
  inference_mode: false,
  revision: null,
};

type Json = Record<string, unknown>;

/** Field validators that name the file and key in their errors. */
export class ConfigReader {
  constructor(readonly raw: Json, readonly file: string) {}

  private bad(key: string, expected: string): never {
    throw new PeftError('invalid value in adapter config', { file: this.file, field: key, expected, found: JSON.stringify(this.raw[key]) });
  }
  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }
  int(key: string, dflt: number, min = 0): number {
    if (!this.has(key)) return dflt;
    const v = this.raw[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min) this.bad(key, `an integer >= ${min}`);
    return v;
  }
  num(key: string, dflt: number, min = -Infinity, max = Infinity): number {
    if (!this.has(key)) return dflt;
    const v = this.raw[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) this.bad(key, `a number in [${min}, ${max}]`);
    return v;
  }
  bool(key: string, dflt: boolean): boolean {
    if (!this.has(key)) return dflt;
    const v = this.raw[key];
    if (typeof v !== 'boolean') this.bad(key, 'true or false');
    return v;
  }
  str<T extends string>(key: string, dflt: T, allowed?: readonly T[]): T {
    if (!this.has(key)) return dflt;
    const v = this.raw[key];
    if (typeof v !== 'string' || (allowed && !allowed.includes(v as T))) this.bad(key, allowed ? allowed.join(' | ') : 'a string');
    return v as T;
  }
  strOrNull(key: string): string | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    if (typeof v !== 'string') this.bad(key, 'a string or null');
    return v;
  }
  strList(key: string): string[] | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    if (!Array.isArray(v) || v.some((s) => typeof s !== 'string')) this.bad(key, 'a list of strings');
    return v as string[];
  }
  strOrList(key: string): string | string[] | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    if (typeof v === 'string') return v;
    if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return v as string[];
    this.bad(key, 'a string or a list of strings');
  }
  intOrList(key: string): number | number[] | null {
    if (!this.has(key)) return null;
    const v = this.raw[key];
    if (typeof v === 'number' && Number.isInteger(v)) return v;
    if (Array.isArray(v) && v.every((s) => typeof s === 'number' && Number.isInteger(s))) return v as number[];
    this.bad(key, 'an integer or a list of integers');
  }
  numberMap(key: string): Record<string, number> {
    if (!this.has(key)) return {};
    const v = this.raw[key];
    if (typeof v !== 'object' || Array.isArray(v) || Object.values(v as Json).some((x) => typeof x !== 'number'))
      this.bad(key, 'a mapping of module patterns to numbers');
    return { ...(v as Record<string, number>) };
  }
}

/** Validates a LoRA config (a parsed adapter_config.json or user options), filling PEFT's defaults. */
export function parseLoraConfig(raw: Json, file = 'LoRA config'): LoraConfig {
  const c = new ConfigReader(raw, file);
  const init = raw.init_lora_weights;
  let initLoraWeights: LoraConfig['init_lora_weights'] = true;
  if (init === false || init === true || init === 'gaussian') initLoraWeights = init;
  else if (init !== undefined && init !== null)
    throw new PeftError('unsupported init_lora_weights', { file, field: 'init_lora_weights', expected: 'true, false or "gaussian"', found: JSON.stringify(init) });
  const cfg: LoraConfig = {
    ...LORA_DEFAULTS,
    r: c.int('r', LORA_DEFAULTS.r, 1),
    lora_alpha: c.num('lora_alpha', LORA_DEFAULTS.lora_alpha),
    lora_dropout: c.num('lora_dropout', 0, 0, 0.999),
    target_modules: c.strOrList('target_modules'),
    exclude_modules: c.strOrList('exclude_modules'),
    bias: c.str('bias', 'none', ['none', 'all', 'lora_only'] as const),
    use_rslora: c.bool('use_rslora', false),
    modules_to_save: c.strList('modules_to_save'),
    init_lora_weights: initLoraWeights,
    layers_to_transform: c.intOrList('layers_to_transform'),
    layers_pattern: c.strOrList('layers_pattern'),
    rank_pattern: c.numberMap('rank_pattern'),
    alpha_pattern: c.numberMap('alpha_pattern'),
    fan_in_fan_out: c.bool('fan_in_fan_out', false),
    use_dora: c.bool('use_dora', false),
    lora_bias: c.bool('lora_bias', false),
    base_model_name_or_path: c.strOrNull('base_model_name_or_path'),
    inference_mode: c.bool('inference_mode', false),
    revision: c.strOrNull('revision'),
  };
  if (cfg.use_dora && cfg.lora_bias)
    throw new PeftError('lora_bias is not supported with DoRA (as in HF PEFT)', { file, field: 'lora_bias', expected: 'false when use_dora is true', found: 'true' });
  for (const [k, v] of Object.entries(cfg.rank_pattern)) if (!Number.isInteger(v) || v < 1)
    throw new PeftError('invalid rank in rank_pattern', { file, field: `rank_pattern.${k}`, expected: 'an integer >= 1', found: String(v) });
  return cfg;
}

/**
 * Keys a SAVED adapter_config.json must give, per peft_type: the ones that define the adapter's
 * tensors or its output (rank and scale, which modules, how many virtual tokens, the bottleneck
 * shape). Defaults are for users creating an adapter, never for reading a saved one: a file
 * without `lora_alpha` must not load with alpha 8.
 */
export const SAVED_CONFIG_REQUIRED_KEYS: Record<PeftType, readonly string[]> = {
  LORA: ['r', 'lora_alpha', 'target_modules'],
  IA3: ['target_modules', 'feedforward_modules'],
  PREFIX_TUNING: ['num_virtual_tokens', 'num_layers', 'token_dim', 'num_attention_heads'],
  PROMPT_TUNING: ['num_virtual_tokens', 'token_dim'],
  BOTTLENECK: ['bottleneck_size', 'placement', 'non_linearity'],
};

/**
 * Checks that a saved adapter config gives every key of {@link SAVED_CONFIG_REQUIRED_KEYS} for its
 * peft_type (present and not null).
 * @throws PeftError naming the file and the first missing key.
 */
export function requireSavedKeys(raw: Json, peftType: PeftType, file: string): void {
  for (const key of SAVED_CONFIG_REQUIRED_KEYS[peftType]) {
    if (raw[key] === undefined || raw[key] === null)
      throw new PeftError(`${key} is required in a saved ${peftType} adapter config (defaults apply only when creating an adapter)`, {
        file, field: key, expected: `${key} (required keys: ${SAVED_CONFIG_REQUIRED_KEYS[peftType].join(', ')})`, found: raw[key] === null ? 'null' : 'nothing',
      });
  }
}

/**
 * Reads `dir/adapter_config.json` and returns the raw object and its peft_type.
 * Readers of the method's settings then call {@link requireSavedKeys}.
 * @throws PeftError naming the file (and key): missing file, bad JSON, unknown peft_type or task_type.
 */
export function readAdapterConfig(dir: string): { raw: Json; peftType: PeftType; file: string } {
  const file = join(dir, 'adapter_config.json');
  if (!existsSync(file)) throw new PeftError('adapter_config.json not found', { file: dir, expected: 'an adapter directory (adapter_config.json + adapter_model.safetensors)' });
  const raw = readJsonObject(file, { what: 'adapter_config.json (a JSON object)', maxBytes: 16 * 2 ** 20 });
  const t = (raw as Json).peft_type;
  if (typeof t !== 'string' || !(PEFT_TYPES as string[]).includes(t))
    throw new PeftError('unsupported peft_type', { file, field: 'peft_type', expected: PEFT_TYPES.join(', '), found: JSON.stringify(t) });
  const task = (raw as Json).task_type;
  if (task !== undefined && task !== null && task !== 'CAUSAL_LM')
    throw new PeftError('unsupported task_type', { file, field: 'task_type', expected: 'CAUSAL_LM', found: JSON.stringify(task) });
  return { raw: raw as Json, peftType: t as PeftType, file };
}
