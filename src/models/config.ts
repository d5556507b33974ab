/**
 * Model configuration read from a Hugging Face `config.json` (transformers 4.x and 5.x spellings),
 * validated field by field: a bad or missing field is a PeftError naming config.json, the field,
 * the expected and the found value.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM'] as const;
export type Architecture = (typeof SUPPORTED_ARCHITECTURES)[number];

/** RoPE settings (transformers `rope_parameters` / `rope_scaling`). */
export interface RopeConfig {
  theta: number;
  /** 'default' | 'linear' | 'llama3' */
  type: 'default' | 'linear' | 'llama3';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
}

export interface ModelConfig {
  architecture: Architecture;
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  rope: RopeConfig;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Bias on q/k/v projections (Qwen2 always; Llama when attention_bias). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  hiddenAct: string;
  bosTokenId: number | null;
  /** Every EOS id from config.json and generation_config.json. */
  eosTokenIds: number[];
  padTokenId: number | null;
  slidingWindow: number | null;
  /** The parsed JSON, kept to write merged models back unchanged. */
  raw: Record<string, unknown>;
}

type Json = Record<string, unknown>;

function readJson(path: string): Json {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PeftError(`cannot read: ${(e as Error).message}`, { file: path });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PeftError('invalid JSON', { file: path, found: (e as Error).message });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftError('not a JSON object', { file: path });
  return v as Json;
}

/** Reads and validates `dir/config.json` (and EOS ids from `generation_config.json` when present). */
export function loadConfig(dir: string): ModelConfig {
  const file = join(dir, 'config.json');
  const raw = readJson(file);
  let gen: Json = {};
  try {
    gen = readJson(join(dir, 'generation_config.json'));
  } catch {
    gen = {};
  }
  return parseConfig(raw, file, gen);
}

/** Validates a parsed config.json object; `file` is used in error messages. */
export function parseConfig(raw: Json, file: string, generationConfig: Json = {}): ModelConfig {
  const int = (key: string, opts: { min?: number; optional?: boolean } = {}): number | undefined => {
    const v = raw[key];
    if (v === undefined || v === null) {
      if (opts.optional) return undefined;
      throw new PeftError('missing field', { file, field: key, expected: 'an integer' });
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < (opts.min ?? 1))
      throw new PeftError('invalid value', { file, field: key, expected: `an integer >= ${opts.min ?? 1}`, found: JSON.stringify(v) });
    return v;
  };
  const num = (key: string, dflt: number): number => {
    const v = raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new PeftError('invalid value', { file, field: key, expected: 'a number', found: JSON.stringify(v) });
    return v;
  };
  const bool = (key: string, dflt: boolean): boolean => {
    const v = raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') throw new PeftError('invalid value', { file, field: key, expected: 'true or false', found: JSON.stringify(v) });
    return v;
  };

  const archs = raw.architectures;
  if (!Array.isArray(archs) || typeof archs[0] !== 'string')
    throw new PeftError('missing field', { file, field: 'architectures', expected: `a list naming one of ${SUPPORTED_ARCHITECTURES.join(', ')}`, found: JSON.stringify(archs) });
  const arch = archs[0] as string;
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch))
    throw new PeftError('unsupported architecture', { file, field: 'architectures', expected: SUPPORTED_ARCHITECTURES.join(', '), found: arch });
  const architecture = arch as Architecture;

  const hiddenSize = int('hidden_size')!;
  const numHeads = int('num_attention_heads')!;
  const numKvHeads = int('num_key_value_heads', { optional: true }) ?? numHeads;
  if (numHeads % numKvHeads !== 0)
    throw new PeftError('num_attention_heads must be a multiple of num_key_value_heads', { file, field: 'num_key_value_heads', expected: `a divisor of ${numHeads}`, found: String(numKvHeads) });
  let headDim = int('head_dim', { optional: true });
  if (headDim === undefined) {
    if (hiddenSize % numHeads !== 0)
      throw new PeftError('hidden_size is not a multiple of num_attention_heads and head_dim is not given', { file, field: 'head_dim' });
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw new PeftError('head_dim must be even for rotary embeddings', { file, field: 'head_dim', found: String(headDim) });

  const hiddenAct = (raw.hidden_act ?? raw.hidden_activation ?? 'silu') as string;
  if (hiddenAct !== 'silu' && hiddenAct !== 'swish')
    throw new PeftError('unsupported activation', { file, field: 'hidden_act', expected: 'silu', found: JSON.stringify(hiddenAct) });

  const rope = parseRope(raw, file, num('rope_theta', 10000));
  const attentionBias = bool('attention_bias', false);
  const eos = new Set<number>();
  for (const src of [raw.eos_token_id, generationConfig.eos_token_id]) {
    if (typeof src === 'number') eos.add(src);
    else if (Array.isArray(src)) for (const e of src) if (typeof e === 'number') eos.add(e);
  }
  const sw = raw.sliding_window;
  const useSw = raw.use_sliding_window;
  return {
    architecture,
    modelType: typeof raw.model_type === 'string' ? raw.model_type : architecture,
    vocabSize: int('vocab_size')!,
    hiddenSize,
    intermediateSize: int('intermediate_size')!,
    numLayers: int('num_hidden_layers')!,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: num('rms_norm_eps', 1e-6),
    rope,
    maxPositionEmbeddings: int('max_position_embeddings', { optional: true }) ?? 2048,
    tieWordEmbeddings: bool('tie_word_embeddings', false),
    qkvBias: architecture === 'Qwen2ForCausalLM' ? true : attentionBias,
    oBias: architecture === 'Qwen2ForCausalLM' ? false : attentionBias,
    mlpBias: bool('mlp_bias', false),
    hiddenAct,
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : null,
    eosTokenIds: [...eos],
    padTokenId: typeof raw.pad_token_id === 'number' ? raw.pad_token_id : null,
    slidingWindow: typeof sw === 'number' && useSw !== false ? sw : null,
    raw,
  };
}

function parseRope(raw: Json, file: string, thetaDefault: number): RopeConfig {
  // transformers 5.x: rope_parameters {rope_theta, rope_type, factor, ...}; 4.x: rope_theta + rope_scaling
  const params = (raw.rope_parameters ?? raw.rope_scaling ?? null) as Json | null;
  const field = raw.rope_parameters ? 'rope_parameters' : 'rope_scaling';
  if (params !== null && (typeof params !== 'object' || Array.isArray(params)))
    throw new PeftError('invalid value', { file, field, expected: 'an object or null', found: JSON.stringify(params) });
  const p = params ?? {};
  const theta = typeof p.rope_theta === 'number' ? p.rope_theta : thetaDefault;
  const type = (p.rope_type ?? p.type ?? 'default') as string;
  if (type !== 'default' && type !== 'linear' && type !== 'llama3')
    throw new PeftError('unsupported RoPE scaling type', { file, field: `${field}.rope_type`, expected: 'default, linear or llama3', found: JSON.stringify(type) });
  const numOr = (k: string, d: number): number => {
    const v = p[k];
    if (v === undefined || v === null) return d;
    if (typeof v !== 'number') throw new PeftError('invalid value', { file, field: `${field}.${k}`, expected: 'a number', found: JSON.stringify(v) });
    return v;
  };
  const factor = numOr('factor', 1);
  if (type !== 'default' && !(factor > 0)) throw new PeftError('invalid value', { file, field: `${field}.factor`, expected: 'a positive number', found: String(factor) });
  const cfg: RopeConfig = {
    theta,
    type,
    factor,
    lowFreqFactor: numOr('low_freq_factor', 1),
    highFreqFactor: numOr('high_freq_factor', 4),
    originalMaxPositionEmbeddings: numOr('original_max_position_embeddings', 8192),
  };
  if (type === 'llama3' && p.original_max_position_embeddings === undefined)
    throw new PeftError('missing field', { file, field: `${field}.original_max_position_embeddings`, expected: 'a number for llama3 RoPE scaling' });
  return cfg;
}

/**
 * RoPE inverse frequencies [headDim/2] exactly as transformers computes them in float32
 * (`modeling_rope_utils.py`: `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
 * `_compute_llama3_parameters`). Returns inv_freq and the attention scaling factor (1 here).
 */
export function ropeInvFreq(rope: RopeConfig, headDim: number): { invFreq: Float32Array; attentionScaling: number } {
  const f = Math.fround;
  const half = headDim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f(1 / f(Math.pow(rope.theta, f(f(2 * i) / headDim))));
  if (rope.type === 'linear') for (let i = 0; i < half; i++) inv[i] = f(inv[i] / rope.factor);
  if (rope.type === 'llama3') {
    const oldCtx = rope.originalMaxPositionEmbeddings;
    const lowWl = oldCtx / rope.lowFreqFactor;
    const highWl = oldCtx / rope.highFreqFactor;
    for (let i = 0; i < half; i++) {
      const wl = f((2 * Math.PI) / inv[i]);
      let v = wl > lowWl ? f(inv[i] / rope.factor) : inv[i];
      const smooth = f((oldCtx / wl - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor));
      const isMedium = !(wl < highWl) && !(wl > lowWl);
      if (isMedium) v = f(f(f(1 - smooth) * v) / rope.factor + f(smooth * v));
      inv[i] = v;
    }
  }
  return { invFreq: inv, attentionScaling: 1 };
}
