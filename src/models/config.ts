/**
 * Model configuration read from a Hugging Face `config.json` (transformers 4.x and 5.x spellings),
 * validated field by field: a missing, wrong-typed (a string `rope_theta`) or oversized field is a
 * PeftError naming config.json, the field, the expected and the found value — never a silent default.
 *
 * The fields every decoder-only family shares are read here ({@link ConfigReader},
 * {@link parseCommon}); each architecture family (`src/models/<family>.ts`) reads its own extras
 * and fills the per-layer plan (RoPE, sliding window) the shared forward pass runs.
 */
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { readJsonObject } from '../io/files.js';

/** RoPE settings (transformers `rope_parameters` / `rope_scaling`). */
export interface RopeConfig {
  theta: number;
  type: 'default' | 'linear' | 'llama3' | 'longrope';
  factor: number;
  lowFreqFactor: number;
  highFreqFactor: number;
  originalMaxPositionEmbeddings: number;
  /** Rotated features per head (`partial_rotary_factor` · head_dim); absent = head_dim. */
  rotaryDim?: number;
  /** LongRoPE (Phi-3 "su"/"longrope"): per-frequency divisors [rotaryDim/2] for short and long inputs, and the cos/sin factor. */
  longrope?: { shortFactor: number[]; longFactor: number[]; attentionFactor: number };
}

/** What one decoder layer does differently from the others (interleaved local/global layers, NoPE layers). */
export interface LayerPlan {
  /** RoPE of the layer, or null for a layer without rotary embeddings (SmolLM3's NoPE layers). */
  rope: RopeConfig | null;
  /** Sliding window: a query sees the `window` most recent keys, itself included; null = global. */
  window: number | null;
}

/** Normalisation variants: x·rsqrt(mean x²+ε)·w; the same times (1+w) (Gemma); LayerNorm with bias (GPT-2). */
export type NormKind = 'rms' | 'rms1p' | 'layernorm';

export interface ModelConfig {
  /** `config.architectures[0]`, the registry key. */
  architecture: string;
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  /** The global (default) RoPE settings; layers may differ, see `layers`. */
  rope: RopeConfig;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  /** Bias on q/k/v projections (Qwen2 always; Llama when attention_bias). */
  qkvBias: boolean;
  /** Bias on o_proj (Llama attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  /** Activation of the MLP gate: 'silu' (SwiGLU) or 'gelu_pytorch_tanh' (GeGLU, Gemma). */
  hiddenAct: 'silu' | 'gelu_pytorch_tanh';
  bosTokenId: number | null;
  /** Every EOS id from config.json and generation_config.json. */
  eosTokenIds: number[];
  padTokenId: number | null;
  /** The sliding window of config.json (null when not used); which layers use it is in `layers`. */
  slidingWindow: number | null;
  /** Per-layer RoPE and attention window, numLayers entries. */
  layers: LayerPlan[];
  normKind: NormKind;
  /** Per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3). */
  qkNorm: boolean;
  /** Softmax scale of attention scores (1/√head_dim; Gemma: query_pre_attn_scalar^−½). */
  attnScale: number;
  /** Attention logits become cap·tanh(s/cap) (Gemma 2); null = none. */
  attnSoftcap: number | null;
  /** Final logits become cap·tanh(z/cap) (Gemma 2/3); null = none. */
  finalSoftcap: number | null;
  /** Input embeddings are multiplied by this (Gemma: √hidden_size rounded to the weights' dtype); null = 1. */
  embedScale: number | null;
  /** The parsed JSON, kept to write merged models back unchanged. */
  raw: Record<string, unknown>;
}

export type Json = Record<string, unknown>;

/** Upper bounds of integer fields: anything larger is a broken or hostile config.json, refused before allocating. */
const INT_LIMITS: Record<string, number> = {
  vocab_size: 1 << 24,
  hidden_size: 1 << 17,
  intermediate_size: 1 << 20,
  num_hidden_layers: 1 << 12,
  num_attention_heads: 1 << 12,
  num_key_value_heads: 1 << 12,
  head_dim: 1 << 13,
  max_position_embeddings: 2 ** 31 - 1,
  sliding_window: 2 ** 31 - 1,
};

/**
 * Typed, strict access to the fields of one JSON object (config.json or a nested object in it):
 * absent/null gives the default, a present value of the wrong type or range throws a PeftError
 * naming `file`, the field (dotted for nested objects), the expected and the found value.
 */
export class ConfigReader {
  constructor(readonly raw: Json, readonly file: string, readonly prefix = '') {}

  private field(key: string): string {
    return this.prefix ? `${this.prefix}.${key}` : key;
  }

  private bad(key: string, expected: string, v: unknown): never {
    throw new PeftError('invalid value', { file: this.file, field: this.field(key), expected, found: show(v) });
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** An integer in [min, max] (max: INT_LIMITS for the key, else 2³¹−1). Required unless a default is given. */
  int(key: string, dflt?: number, min = 1, max = INT_LIMITS[key] ?? 2 ** 31 - 1): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (dflt !== undefined) return dflt;
      throw new PeftError('missing field', { file: this.file, field: this.field(key), expected: `an integer >= ${min}` });
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) this.bad(key, `an integer in [${min}, ${max}]`, v);
    return v;
  }

  optInt(key: string, min = 1, max?: number): number | null {
    return this.has(key) ? this.int(key, undefined, min, max) : null;
  }

  /** A finite number (> 0 when positive). */
  num(key: string, dflt: number, positive = false): number {
    const v = this.raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || (positive && !(v > 0))) this.bad(key, positive ? 'a positive number' : 'a number', v);
    return v;
  }

  optNum(key: string, positive = false): number | null {
    return this.has(key) ? this.num(key, 0, positive) : null;
  }

  bool(key: string, dflt: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'boolean') this.bad(key, 'true or false', v);
    return v;
  }

  str(key: string, dflt: string): string {
    const v = this.raw[key];
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'string') this.bad(key, 'a string', v);
    return v;
  }

  /** One of `allowed` (default when absent). */
  oneOf<T extends string>(key: string, allowed: readonly T[], dflt: T): T {
    const v = this.str(key, dflt);
    if (!(allowed as readonly string[]).includes(v)) throw new PeftError('unsupported value', { file: this.file, field: this.field(key), expected: allowed.join(' or '), found: show(v) });
    return v as T;
  }

  /** A list of `n` items each checked by `item` (null when absent). */
  list<T>(key: string, n: number | null, item: (v: unknown) => v is T, what: string): T[] | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (!Array.isArray(v) || (n !== null && v.length !== n) || !v.every(item))
      this.bad(key, `a list of ${n ?? ''}${n === null ? '' : ' '}${what}`, v);
    return v as T[];
  }

  /** A nested object (null when absent), read with its own reader. */
  object(key: string): ConfigReader | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) this.bad(key, 'an object or null', v);
    return new ConfigReader(v as Json, this.file, this.field(key));
  }

  /** A token id or a list of them (EOS ids). */
  ids(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    const ok = (x: unknown): x is number => typeof x === 'number' && Number.isInteger(x) && x >= 0 && x < 2 ** 31;
    if (ok(v)) return [v];
    if (Array.isArray(v) && v.every(ok)) return v;
    this.bad(key, 'a token id or a list of token ids', v);
  }

  optId(key: string): number | null {
    const ids = this.ids(key);
    if (Array.isArray(this.raw[key])) this.bad(key, 'a single token id', this.raw[key]);
    return ids.length ? ids[0] : null;
  }
}

function show(v: unknown): string {
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

/**
 * Reads a JSON object from a regular file (FIFOs, devices and directories refused; size and
 * nesting bounded — see io/files.ts readJsonObject).
 * @throws PeftError naming the file when it is missing, unreadable, not JSON or not an object.
 */
export function readJson(path: string): Json {
  return readJsonObject(path, { what: 'a JSON object' }) as Json;
}

/** Reads `dir/config.json` (and EOS ids from `generation_config.json` when present); validation is the family's. */
export function readConfigFiles(dir: string): { raw: Json; file: string; gen: Json } {
  const file = join(dir, 'config.json');
  const raw = readJson(file);
  let gen: Json = {};
  try {
    gen = readJson(join(dir, 'generation_config.json'));
  } catch {
    gen = {};
  }
  return { raw, file, gen };
}

/** `architectures[0]` of a config.json, checked to be a string. */
export function architectureOf(raw: Json, file: string, supported: readonly string[]): string {
  const archs = raw.architectures;
  if (!Array.isArray(archs) || typeof archs[0] !== 'string')
    throw new PeftError('missing field', { file, field: 'architectures', expected: `a list naming one of ${supported.join(', ')}`, found: show(archs) });
  return archs[0];
}

/**
 * The fields every family shares, read strictly; per-layer plan = the global RoPE on every layer,
 * no window. Families override what differs (`parseCommon(...)` then adjust).
 */
export function parseCommon(r: ConfigReader, architecture: string, generationConfig: Json = {},
  defaults: { hiddenAct?: ModelConfig['hiddenAct']; tie?: boolean } = {}): ModelConfig {
  const file = r.file;
  const hiddenSize = r.int('hidden_size');
  const numHeads = r.int('num_attention_heads');
  const numKvHeads = r.int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0)
    throw new PeftError('num_attention_heads must be a multiple of num_key_value_heads', { file, field: 'num_key_value_heads', expected: `a divisor of ${numHeads}`, found: String(numKvHeads) });
  let headDim = r.optInt('head_dim');
  if (headDim === null) {
    if (hiddenSize % numHeads !== 0)
      throw new PeftError('hidden_size is not a multiple of num_attention_heads and head_dim is not given', { file, field: 'head_dim', expected: 'an integer', found: 'nothing' });
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw new PeftError('head_dim must be even for rotary embeddings', { file, field: 'head_dim', expected: 'an even integer', found: String(headDim) });
  const actKey = r.has('hidden_activation') && !r.has('hidden_act') ? 'hidden_activation' : 'hidden_act';
  let act = r.str(actKey, defaults.hiddenAct ?? 'silu');
  if (act === 'swish') act = 'silu';
  if (act === 'gelu_tanh') act = 'gelu_pytorch_tanh';
  if (act !== 'silu' && act !== 'gelu_pytorch_tanh')
    throw new PeftError('unsupported activation', { file, field: actKey, expected: 'silu or gelu_pytorch_tanh', found: show(act) });
  const numLayers = r.int('num_hidden_layers');
  const rope = parseRope(r, 'rope_parameters');
  const attentionBias = r.bool('attention_bias', false);
  const eos = new Set<number>([...r.ids('eos_token_id'), ...new ConfigReader(generationConfig, 'generation_config.json').ids('eos_token_id')]);
  const modelType = r.str('model_type', architecture);
  return {
    architecture,
    modelType,
    vocabSize: r.int('vocab_size'),
    hiddenSize,
    intermediateSize: r.int('intermediate_size'),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: r.num('rms_norm_eps', 1e-6, true),
    rope,
    maxPositionEmbeddings: r.int('max_position_embeddings', 2048),
    tieWordEmbeddings: r.bool('tie_word_embeddings', defaults.tie ?? false),
    qkvBias: attentionBias,
    oBias: attentionBias,
    mlpBias: r.bool('mlp_bias', false),
    hiddenAct: act,
    bosTokenId: r.optId('bos_token_id'),
    eosTokenIds: [...eos],
    padTokenId: r.optId('pad_token_id'),
    slidingWindow: null,
    layers: Array.from({ length: numLayers }, () => ({ rope, window: null })),
    normKind: 'rms',
    qkNorm: false,
    attnScale: 1 / Math.sqrt(headDim),
    attnSoftcap: null,
    finalSoftcap: null,
    embedScale: null,
    raw: r.raw,
  };
}

/**
 * transformers' `layer_types` (5.x) when present: 'full_attention' | 'sliding_attention' per layer;
 * null when absent (4.x configs; the family derives the pattern).
 */
export function layerTypes(r: ConfigReader, n: number): Array<'full_attention' | 'sliding_attention'> | null {
  return r.list('layer_types', n, (v): v is 'full_attention' | 'sliding_attention' => v === 'full_attention' || v === 'sliding_attention', "'full_attention' or 'sliding_attention'");
}

/**
 * RoPE settings: transformers 5.x `rope_parameters` {rope_theta, rope_type, factor, ...}, or 4.x
 * `rope_theta` + `rope_scaling`. `key` names the object to read (Gemma 3 nests one per layer type).
 */
export function parseRope(r: ConfigReader, key: string, thetaDefault?: number): RopeConfig {
  const params = r.object(key) ?? r.object('rope_scaling');
  const theta = params?.has('rope_theta') ? params.num('rope_theta', 0, true) : r.num('rope_theta', thetaDefault ?? 10000, true);
  const p = params ?? new ConfigReader({}, r.file, key);
  const typeKey = p.has('rope_type') ? 'rope_type' : 'type';
  const type = p.oneOf(typeKey, ['default', 'linear', 'llama3'] as const, 'default');
  const factor = p.num('factor', 1, true);
  const cfg: RopeConfig = {
    theta,
    type,
    factor,
    lowFreqFactor: p.num('low_freq_factor', 1),
    highFreqFactor: p.num('high_freq_factor', 4),
    originalMaxPositionEmbeddings: p.num('original_max_position_embeddings', 8192, true),
  };
  if (type === 'llama3' && !p.has('original_max_position_embeddings'))
    throw new PeftError('missing field', { file: r.file, field: `${p.prefix}.original_max_position_embeddings`, expected: 'a number for llama3 RoPE scaling', found: 'nothing' });
  return cfg;
}

/** What a layer's RoPE needs at run time (see LayerRope in model.ts). */
export interface RopeFrequencies {
  invFreq: Float32Array;
  attentionScaling: number;
  /** Rotated features per head (< head_dim with partial rotary). */
  rotaryDim: number;
  /** LongRoPE: the frequencies used when max(position) + 1 > threshold (transformers' `longrope_frequency_update`). */
  long?: { invFreq: Float32Array; threshold: number };
}

/**
 * RoPE inverse frequencies [rotaryDim/2] exactly as transformers computes them in float32
 * (`modeling_rope_utils.py`: `_compute_default_rope_parameters`, `_compute_linear_scaling_rope_parameters`,
 * `_compute_llama3_parameters`, `_compute_longrope_parameters`). Returns inv_freq, the attention
 * scaling factor (LongRoPE's attention_factor, else 1), the rotary dimension and, for LongRoPE,
 * the long-context frequencies with the length beyond which they apply.
 */
export function ropeInvFreq(rope: RopeConfig, headDim: number): RopeFrequencies {
  const f = Math.fround;
  const dim = rope.rotaryDim ?? headDim;
  const half = dim / 2;
  const base = (i: number): number => f(Math.pow(rope.theta, f(f(2 * i) / dim)));
  if (rope.type === 'longrope') {
    const lr = rope.longrope!;
    const freqs = (ext: number[]): Float32Array => Float32Array.from({ length: half }, (_, i) => f(1 / f(f(ext[i]) * base(i))));
    return {
      invFreq: freqs(lr.shortFactor), attentionScaling: lr.attentionFactor, rotaryDim: dim,
      long: { invFreq: freqs(lr.longFactor), threshold: rope.originalMaxPositionEmbeddings },
    };
  }
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f(1 / base(i));
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
  return { invFreq: inv, attentionScaling: 1, rotaryDim: dim };
}
