/**
 * Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation"):
 * P learned key/value vectors per layer, prepended to every layer's keys and values. As in HF PEFT
 * 0.21 (`peft/tuners/prefix_tuning/model.py` PrefixEncoder, `peft_model.py` get_prompt,
 * `utils/other.py` _prepare_prompt_learning_config) with transformers' Llama:
 * - token_dim = num_key_value_heads · head_dim (head_dim from the model config), and
 *   num_attention_heads = num_key_value_heads;
 * - the prefix is a [P, num_layers·2·token_dim] matrix; per virtual token its columns are
 *   `[L0 K | L0 V | L1 K | L1 V | …]`, each block kv_heads × head_dim;
 * - with prefix_projection the matrix is the output of Embedding(P, token_dim) → Linear(token_dim,
 *   encoder_hidden_size) → tanh → Linear(encoder_hidden_size, num_layers·2·token_dim) while
 *   training; saving folds it into the plain `prompt_embeddings` tensor (PEFT saves only that);
 * - the prefix keys are NOT rotated (they sit in the cache as if already rotated);
 * - real tokens take positions P + (the positions passed, or 0..T−1): without position ids
 *   transformers uses arange(T) + cache length; with them PEFT adds num_virtual_tokens;
 * - the prefix is visible to every query (PEFT prepends ones to the attention mask).
 */
import { PeftError } from '../errors.js';
import type { KVCache } from '../generate/kv-cache.js';
import type { Batch, CausalLM, DecoderLayer, ForwardContext } from '../models/model.js';
import { defaultPositions } from '../models/model.js';
import { f32Weight, gradOf, linear, noGrad, record, repeatBatch, Tensor, withArena } from '../tensor/index.js';
import { ConfigReader } from './config.js';
import { registerAdapterLoader, type TensorMap } from './registry.js';
import { fillNormal, uniformRng } from '../tensor/random.js';
import type { AdapterMethod, NamedTensor } from './types.js';

/** Prefix-tuning settings with PEFT's PrefixTuningConfig keys (adapter_config.json). */
export interface PrefixConfig {
  peft_type: 'PREFIX_TUNING';
  task_type: 'CAUSAL_LM';
  num_virtual_tokens: number;
  /** Resolved from the model: num_key_value_heads · head_dim. */
  token_dim: number;
  num_transformer_submodules: 1;
  /** Resolved from the model: num_key_value_heads. */
  num_attention_heads: number;
  num_layers: number;
  /** Width of the reparameterisation MLP's hidden layer (default token_dim). */
  encoder_hidden_size: number;
  prefix_projection: boolean;
  /** null: random (N(0,1) embedding, PyTorch-default Linear init); 'zero': zero prefix (zero last MLP layer). */
  init_weights: 'zero' | null;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  revision: string | null;
}

/** The shape values a model fixes for a prefix: layers, KV width and heads. */
export function prefixGeometry(model: CausalLM): { numLayers: number; tokenDim: number; kvHeads: number; headDim: number } {
  const c = model.config;
  return { numLayers: c.numLayers, tokenDim: c.numKvHeads * c.headDim, kvHeads: c.numKvHeads, headDim: c.headDim };
}

/**
 * Validates a prefix-tuning config, resolving the model-dependent fields as PEFT does. With
 * `strict` (loading a saved adapter) fields the file sets must agree with the base model.
 */
export function parsePrefixConfig(raw: Record<string, unknown>, model: CausalLM, file = 'prefix tuning config', strict = false): PrefixConfig {
  const c = new ConfigReader(raw, file);
  const g = prefixGeometry(model);
  const nv = requiredVirtualTokens(raw, file);
  const subs = c.int('num_transformer_submodules', 1, 1);
  if (subs !== 1)
    throw new PeftError('causal LMs have one transformer submodule', { file, field: 'num_transformer_submodules', expected: '1', found: String(subs) });
  const numLayers = c.int('num_layers', g.numLayers, 1);
  if (numLayers !== g.numLayers)
    throw new PeftError('prefix num_layers does not match the base model', { file, field: 'num_layers', expected: `${g.numLayers} (num_hidden_layers)`, found: String(numLayers) });
  // PEFT overwrites token_dim and num_attention_heads from num_key_value_heads/head_dim for GQA-capable
  // configs; a saved adapter that disagrees was made for another base model
  if (strict) {
    const td = c.int('token_dim', g.tokenDim, 1);
    if (td !== g.tokenDim)
      throw new PeftError('prefix token_dim does not match the base model', { file, field: 'token_dim', expected: `${g.tokenDim} (num_key_value_heads ${g.kvHeads} × head_dim ${g.headDim})`, found: String(td) });
    const nh = c.int('num_attention_heads', g.kvHeads, 1);
    if (nh !== g.kvHeads)
      throw new PeftError('prefix num_attention_heads does not match the base model', { file, field: 'num_attention_heads', expected: `${g.kvHeads} (num_key_value_heads)`, found: String(nh) });
  }
  const initWeights = c.has('init_weights') ? c.str('init_weights', 'zero', ['zero'] as const) : null;
  if (c.strList('modules_to_save')?.length)
    throw new PeftError('modules_to_save is not supported for prefix tuning', { file, field: 'modules_to_save', expected: 'null', found: JSON.stringify(raw.modules_to_save) });
  return {
    peft_type: 'PREFIX_TUNING',
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: nv,
    token_dim: g.tokenDim,
    num_transformer_submodules: 1,
    num_attention_heads: g.kvHeads,
    num_layers: numLayers,
    encoder_hidden_size: c.int('encoder_hidden_size', g.tokenDim, 1),
    prefix_projection: c.bool('prefix_projection', false),
    init_weights: initWeights,
    base_model_name_or_path: c.strOrNull('base_model_name_or_path'),
    inference_mode: c.bool('inference_mode', false),
    revision: c.strOrNull('revision'),
  };
}

/** num_virtual_tokens, which every prompt-learning config must set. */
export function requiredVirtualTokens(raw: Record<string, unknown>, file: string): number {
  const c = new ConfigReader(raw, file);
  if (!c.has('num_virtual_tokens'))
    throw new PeftError('num_virtual_tokens is required', { file, field: 'num_virtual_tokens', expected: 'an integer >= 1', found: 'nothing' });
  return c.int('num_virtual_tokens', 0, 1);
}

/** y = tanh(x) elementwise (differentiable: dx = dy · (1 − y²)). */
export function tanh(x: Tensor): Tensor {
  const y = Tensor.empty([...x.shape]);
  const xd = x.data, yd = y.data;
  for (let i = 0; i < xd.length; i++) yd[i] = Math.tanh(xd[i]);
  return record(y, [x], (gy) => {
    const gx = gradOf(x);
    for (let i = 0; i < gy.length; i++) gx[i] += gy[i] * (1 - yd[i] * yd[i]);
  });
}

/** Columns [start, start + width) of a [R, C] tensor: [R, width] (differentiable). */
export function sliceCols(x: Tensor, start: number, width: number): Tensor {
  const C = x.cols, R = x.rows;
  if (start < 0 || start + width > C) throw new Error(`sliceCols: [${start}, ${start + width}) outside ${C} columns`);
  const y = Tensor.empty([R, width]);
  for (let r = 0; r < R; r++) y.data.set(x.data.subarray(r * C + start, r * C + start + width), r * width);
  return record(y, [x], (gy) => {
    const gx = gradOf(x);
    for (let r = 0; r < R; r++) {
      const o = r * C + start, s = r * width;
      for (let j = 0; j < width; j++) gx[o + j] += gy[s + j];
    }
  });
}



/** PyTorch's nn.Linear default init: weight and bias U(±1/√fan_in). */
function linearInit(out: number, inp: number, u: () => number): { w: Tensor; b: Tensor } {
  const bound = 1 / Math.sqrt(inp);
  const w = new Float32Array(out * inp), b = new Float32Array(out);
  for (let i = 0; i < w.length; i++) w[i] = (u() * 2 - 1) * bound;
  for (let i = 0; i < b.length; i++) b[i] = (u() * 2 - 1) * bound;
  return { w: Tensor.param(w, [out, inp], false), b: Tensor.param(b, [out], false) };
}

/** PrefixEncoder's reparameterisation MLP (prefix_projection while training). */
interface PrefixMlp {
  /** [P, token_dim] */
  embedding: Tensor;
  w0: Tensor; b0: Tensor;
  w2: Tensor; b2: Tensor;
}

export class PrefixAdapter implements AdapterMethod {
  readonly peftType = 'PREFIX_TUNING' as const;
  readonly P: number;
  /** Width of the flat prefix: num_layers · 2 · token_dim. */
  readonly width: number;
  /** The flat prefix [P, width] (no projection, or a loaded adapter), else null. */
  readonly flat: Tensor | null;
  /** The reparameterisation MLP (prefix_projection while training), else null. */
  readonly mlp: PrefixMlp | null;
  /**
   * The flat prefix of each forward, by its context (computed once by the input hook, sliced per
   * layer — also when a checkpointed block is recomputed in backward).
   */
  private current = new WeakMap<ForwardContext, Tensor>();

  /**
   * `inference` (a loaded adapter, or inference_mode) holds the flat prefix even with
   * prefix_projection, as PEFT does; otherwise prefix_projection trains the MLP.
   */
  constructor(readonly model: CausalLM, readonly cfg: PrefixConfig, seed = 0, inference = cfg.inference_mode) {
    this.P = cfg.num_virtual_tokens;
    const td = cfg.token_dim;
    this.width = cfg.num_layers * 2 * td;
    if (cfg.prefix_projection && !inference) {
      const emb = new Float32Array(this.P * td);
      fillNormal(emb, seed);
      const u = uniformRng(seed ^ 0x9e3779b9);
      const l0 = linearInit(cfg.encoder_hidden_size, td, u);
      const l2 = linearInit(this.width, cfg.encoder_hidden_size, u);
      if (cfg.init_weights === 'zero') {
        l2.w.data.fill(0);
        l2.b.data.fill(0);
      }
      this.mlp = { embedding: Tensor.param(emb, [this.P, td], false), w0: l0.w, b0: l0.b, w2: l2.w, b2: l2.b };
      this.flat = null;
    } else {
      const data = new Float32Array(this.P * this.width);
      if (cfg.init_weights !== 'zero') fillNormal(data, seed);
      this.flat = Tensor.param(data, [this.P, this.width], false);
      this.mlp = null;
    }
  }

  /** The flat prefix [P, width] for this forward (differentiable through the MLP). */
  private computeFlat(): Tensor {
    if (this.flat) return this.flat;
    const m = this.mlp!;
    const h = tanh(linear(m.embedding, f32Weight(m.w0), m.b0));
    return linear(h, f32Weight(m.w2), m.b2);
  }

  /** The flat prefix's values now (a plain copy; for saving and for generation). */
  prefixValues(): Float32Array {
    if (this.flat) return this.flat.data.slice();
    return noGrad(() => withArena(() => this.computeFlat().data.slice()));
  }

  config(): Record<string, unknown> {
    const c = this.cfg;
    return {
      auto_mapping: null,
      base_model_name_or_path: c.base_model_name_or_path,
      encoder_hidden_size: c.encoder_hidden_size,
      inference_mode: true,
      init_weights: c.init_weights,
      modules_to_save: null,
      num_attention_heads: c.num_attention_heads,
      num_layers: c.num_layers,
      num_transformer_submodules: 1,
      num_virtual_tokens: c.num_virtual_tokens,
      peft_type: 'PREFIX_TUNING',
      prefix_projection: c.prefix_projection,
      revision: c.revision,
      task_type: 'CAUSAL_LM',
      token_dim: c.token_dim,
    };
  }

  /** Saves the flat prefix only (for prefix_projection: the MLP's output now), as PEFT does. */
  stateDict(): Map<string, Tensor> {
    const t = this.flat ?? Tensor.param(this.prefixValues(), [this.P, this.width], false);
    return new Map([['prompt_embeddings', t]]);
  }

  /** Nothing to do beyond what stateDict() does: the fold is computed from the current MLP each time. */
  prepareSave(): void {}

  trainableParameters(): NamedTensor[] {
    if (this.flat) return [{ name: 'prompt_encoder.embedding.weight', tensor: this.flat }];
    const m = this.mlp!;
    return [
      { name: 'prompt_encoder.embedding.weight', tensor: m.embedding },
      { name: 'prompt_encoder.transform.0.weight', tensor: m.w0 },
      { name: 'prompt_encoder.transform.0.bias', tensor: m.b0 },
      { name: 'prompt_encoder.transform.2.weight', tensor: m.w2 },
      { name: 'prompt_encoder.transform.2.bias', tensor: m.b2 },
    ];
  }

  numParameters(): number {
    return this.trainableParameters().reduce((s, p) => s + p.tensor.size, 0);
  }

  /** Shifts real-token positions by P (HF: arange(T) + cache length, or passed ids + num_virtual_tokens). */
  input(embeds: Tensor, batch: Batch, ctx: ForwardContext): { embeds: Tensor; batch: Batch } {
    this.current.set(ctx, this.computeFlat());
    const base = batch.positions ?? defaultPositions(batch.B, batch.T);
    const positions = new Int32Array(base.length);
    for (let i = 0; i < base.length; i++) positions[i] = base[i] + this.P;
    return { embeds, batch: { ...batch, positions } };
  }

  prefix(layer: DecoderLayer, ctx: ForwardContext, B: number): { k: Tensor; v: Tensor; P: number } {
    let flat = this.current.get(ctx);
    if (!flat) this.current.set(ctx, (flat = this.computeFlat()));
    const td = this.cfg.token_dim;
    const k = sliceCols(flat, 2 * layer.index * td, td);
    const v = sliceCols(flat, (2 * layer.index + 1) * td, td);
    return { k: repeatBatch(k, B), v: repeatBatch(v, B), P: this.P };
  }

  /** Generation: writes the P prefix keys/values into every layer of a fresh cache and advances it. */
  prepareCache(cache: KVCache): void {
    const flat = this.prefixValues();
    const td = this.cfg.token_dim, P = this.P;
    if (cache.width !== td) throw new Error(`prefix: cache width ${cache.width} differs from token_dim ${td}`);
    const k = new Float32Array(P * td), v = new Float32Array(P * td);
    for (let l = 0; l < this.cfg.num_layers; l++) {
      for (let p = 0; p < P; p++) {
        k.set(flat.subarray(p * this.width + 2 * l * td, p * this.width + (2 * l + 1) * td), p * td);
        v.set(flat.subarray(p * this.width + (2 * l + 1) * td, p * this.width + (2 * l + 2) * td), p * td);
      }
      cache.write(l, k, v, P);
    }
    cache.advance(P);
  }

  /** Real tokens start at position P. */
  positionOffset(): number {
    return this.P;
  }
}

/**
 * Takes the one tensor a prompt-learning adapter saves: reports a missing or unexpected tensor by
 * name, and a shape that does not fit the base model with the tensor and both shapes.
 */
export function takePromptTensor(tensors: TensorMap, expected: number[], file: string, why: string): Float32Array {
  const key = 'prompt_embeddings';
  const t = tensors.get(key);
  if (!t) throw new PeftError('adapter tensor missing', { file, field: key, expected: `[${expected}]`, found: `tensors ${[...tensors.keys()].join(', ') || '(none)'}` });
  const extra = [...tensors.keys()].filter((k) => k !== key);
  if (extra.length) throw new PeftError('unexpected adapter tensors', { file, field: extra.slice(0, 8).join(', '), expected: `only ${key}` });
  if (t.shape.length !== expected.length || t.shape.some((d, i) => d !== expected[i]))
    throw new PeftError(`adapter tensor shape does not fit the base model (${why})`, { file, field: key, expected: `[${expected}]`, found: `[${t.shape}]` });
  return t.data;
}

/** Creates a prefix-tuning adapter from options with PEFT's PrefixTuningConfig keys. */
export function createPrefixAdapter(model: CausalLM, options: Partial<PrefixConfig> & Record<string, unknown>, seed = 0): PrefixAdapter {
  return new PrefixAdapter(model, parsePrefixConfig(options, model, 'prefix tuning options'), seed);
}

registerAdapterLoader('PREFIX_TUNING', (model, raw, tensors, files) => {
  const g = prefixGeometry(model);
  // the tensor shape first: it is the clearest sign of an adapter made for another base model
  const nv = requiredVirtualTokens(raw, files.config);
  const expected = [nv, g.numLayers * 2 * g.tokenDim];
  const data = takePromptTensor(tensors, expected, files.tensors,
    `num_virtual_tokens × num_layers ${g.numLayers} · 2 · num_key_value_heads ${g.kvHeads} · head_dim ${g.headDim}`);
  const cfg = parsePrefixConfig(raw, model, files.config, true);
  const a = new PrefixAdapter(model, cfg, 0, true);
  a.flat!.data.set(data);
  return a;
});
