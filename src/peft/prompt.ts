/**
 * Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
 * P learned input embeddings ("soft prompt") placed before every sequence. As in HF PEFT 0.21
 * (`peft/tuners/prompt_tuning/model.py` PromptEmbedding, `peft_model.py`
 * PeftModelForCausalLM.forward):
 * - inputs_embeds = [prompt; embed(input_ids)]: the virtual tokens go FIRST, before any left
 *   padding, and the attention mask gets P leading ones;
 * - positions are arange(P + T) for every row when none are passed (PEFT always uses these: it
 *   drops position_ids). Here passed positions are honoured, shifted by P: with the cumsum
 *   positions of a left-padded batch each row then computes exactly what it computes alone;
 * - labels get P leading −100s, so the last virtual token predicts input_ids[0] (see
 *   `batchLoss(..., 'peft')`, the default loss convention for training and evaluation);
 * - init RANDOM (N(0,1)), TEXT (the word embeddings of the tokenized init text, repeated or cut to
 *   P tokens) or SAMPLE_VOCAB (embeddings of random vocabulary ids);
 * - the adapter file holds `prompt_embeddings` [P, hidden].
 */
import { PeftError } from '../errors.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import type { Batch, CausalLM, ForwardContext } from '../models/model.js';
import { concatSeq, repeatBatch, Tensor, weightToF32 } from '../tensor/index.js';
import { ConfigReader } from './config.js';
import { registerAdapterLoader } from './registry.js';
import { requiredVirtualTokens, takePromptTensor } from './prefix.js';
import { fillNormal } from '../tensor/random.js';
import type { AdapterMethod, NamedTensor } from './types.js';

export type PromptTuningInit = 'RANDOM' | 'TEXT' | 'SAMPLE_VOCAB';

/** Prompt-tuning settings with PEFT's PromptTuningConfig keys (adapter_config.json). */
export interface PromptConfig {
  peft_type: 'PROMPT_TUNING';
  task_type: 'CAUSAL_LM';
  num_virtual_tokens: number;
  /** The model's hidden size. */
  token_dim: number;
  num_transformer_submodules: 1;
  num_attention_heads: number;
  num_layers: number;
  prompt_tuning_init: PromptTuningInit;
  prompt_tuning_init_text: string | null;
  tokenizer_name_or_path: string | null;
  tokenizer_kwargs: Record<string, unknown> | null;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  revision: string | null;
}

/** Validates a prompt-tuning config, resolving token_dim / num_layers / num_attention_heads from the model. */
export function parsePromptConfig(raw: Record<string, unknown>, model: CausalLM, file = 'prompt tuning config'): PromptConfig {
  const c = new ConfigReader(raw, file);
  const mc = model.config;
  const nv = requiredVirtualTokens(raw, file);
  const subs = c.int('num_transformer_submodules', 1, 1);
  if (subs !== 1)
    throw new PeftError('causal LMs have one transformer submodule', { file, field: 'num_transformer_submodules', expected: '1', found: String(subs) });
  const td = c.int('token_dim', mc.hiddenSize, 1);
  if (td !== mc.hiddenSize)
    throw new PeftError('prompt token_dim does not match the base model', { file, field: 'token_dim', expected: `${mc.hiddenSize} (hidden_size)`, found: String(td) });
  const init = c.str('prompt_tuning_init', 'RANDOM', ['RANDOM', 'TEXT', 'SAMPLE_VOCAB'] as const);
  const text = c.strOrNull('prompt_tuning_init_text');
  const tokPath = c.strOrNull('tokenizer_name_or_path');
  const kw = raw.tokenizer_kwargs;
  if (kw !== undefined && kw !== null && (typeof kw !== 'object' || Array.isArray(kw)))
    throw new PeftError('invalid value in adapter config', { file, field: 'tokenizer_kwargs', expected: 'an object or null', found: JSON.stringify(kw) });
  if (c.strList('modules_to_save')?.length)
    throw new PeftError('modules_to_save is not supported for prompt tuning', { file, field: 'modules_to_save', expected: 'null', found: JSON.stringify(raw.modules_to_save) });
  return {
    peft_type: 'PROMPT_TUNING',
    task_type: 'CAUSAL_LM',
    num_virtual_tokens: nv,
    token_dim: td,
    num_transformer_submodules: 1,
    num_attention_heads: c.int('num_attention_heads', mc.numHeads, 1),
    num_layers: c.int('num_layers', mc.numLayers, 1),
    prompt_tuning_init: init,
    prompt_tuning_init_text: text,
    tokenizer_name_or_path: tokPath,
    tokenizer_kwargs: (kw as Record<string, unknown> | null | undefined) ?? null,
    base_model_name_or_path: c.strOrNull('base_model_name_or_path'),
    inference_mode: c.bool('inference_mode', false),
    revision: c.strOrNull('revision'),
  };
}

/**
 * PEFT's TEXT init token ids: the tokenizer's ids for the text (special tokens such as BOS
 * included, as `tokenizer(text)["input_ids"]` gives them), cut to n, or the whole list repeated
 * ceil(n / len) times and cut to n.
 */
export function textInitIds(ids: number[], n: number): number[] {
  if (ids.length === 0) throw new PeftError('prompt_tuning_init_text tokenizes to no tokens', { field: 'prompt_tuning_init_text' });
  if (ids.length >= n) return ids.slice(0, n);
  const reps = Math.ceil(n / ids.length);
  const out: number[] = [];
  for (let r = 0; r < reps; r++) out.push(...ids);
  return out.slice(0, n);
}

/** Rows `ids` of the model's (float32 or bfloat16) embedding table as float32. */
function embeddingRows(model: CausalLM, ids: number[]): Float32Array {
  const e = model.embedTokens;
  const [V, H] = e.kind === 'f32' ? [e.tensor.shape[0], e.tensor.shape[1]] : e.shape;
  const out = new Float32Array(ids.length * H);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id) || id < 0 || id >= V) throw new PeftError('prompt init token id outside the vocabulary', { expected: `0..${V - 1}`, found: String(id) });
    if (e.kind === 'f32') out.set(e.tensor.data.subarray(id * H, (id + 1) * H), i * H);
    else out.set(weightToF32({ rows: 1, cols: H, data: { kind: 'bf16', bits: e.bits.subarray(id * H, (id + 1) * H) } }), i * H);
  });
  // PEFT initialises from the model's word-embedding module, which scales (Gemma: √hidden)
  const s = model.config.embedScale;
  if (s !== null) for (let i = 0; i < out.length; i++) out[i] = Math.fround(out[i] * s);
  return out;
}

export class PromptAdapter implements AdapterMethod {
  readonly peftType = 'PROMPT_TUNING' as const;
  readonly P: number;
  /** [P, hidden] */
  readonly embedding: Tensor;
  /** Token ids the TEXT / SAMPLE_VOCAB init copied (null for RANDOM and loaded adapters). */
  readonly initTokenIds: number[] | null;

  /**
   * Initialises the soft prompt per cfg.prompt_tuning_init (pass `initial` to load saved values
   * instead). TEXT needs a tokenizer: the one given, else one loaded from tokenizer_name_or_path.
   */
  constructor(readonly model: CausalLM, readonly cfg: PromptConfig, opts: { tokenizer?: Tokenizer; seed?: number; initial?: Float32Array } = {}) {
    const H = model.config.hiddenSize;
    this.P = cfg.num_virtual_tokens;
    let data: Float32Array;
    let ids: number[] | null = null;
    if (opts.initial) {
      data = opts.initial.slice();
    } else if (cfg.prompt_tuning_init === 'TEXT') {
      if (cfg.prompt_tuning_init_text === null)
        throw new PeftError("prompt_tuning_init 'TEXT' needs prompt_tuning_init_text", { field: 'prompt_tuning_init_text', expected: 'a string', found: 'null' });
      let tok = opts.tokenizer;
      if (!tok) {
        if (!cfg.tokenizer_name_or_path)
          throw new PeftError("prompt_tuning_init 'TEXT' needs a tokenizer: pass one, or set tokenizer_name_or_path", { field: 'tokenizer_name_or_path', expected: 'a model directory with tokenizer.json', found: 'null' });
        tok = loadTokenizer(cfg.tokenizer_name_or_path);
      }
      ids = textInitIds(tok.encode(cfg.prompt_tuning_init_text), this.P);
      data = embeddingRows(model, ids);
    } else if (cfg.prompt_tuning_init === 'SAMPLE_VOCAB') {
      const u = new Float32Array(this.P);
      fillUniform(u, opts.seed ?? 0);
      ids = [...u].map((x) => Math.min(model.config.vocabSize - 1, Math.floor(x * model.config.vocabSize)));
      data = embeddingRows(model, ids);
    } else {
      data = new Float32Array(this.P * H);
      fillNormal(data, opts.seed ?? 0);
    }
    this.initTokenIds = ids;
    this.embedding = Tensor.param(data, [this.P, H], false);
  }

  config(): Record<string, unknown> {
    const c = this.cfg;
    return {
      auto_mapping: null,
      base_model_name_or_path: c.base_model_name_or_path,
      inference_mode: true,
      modules_to_save: null,
      num_attention_heads: c.num_attention_heads,
      num_layers: c.num_layers,
      num_transformer_submodules: 1,
      num_virtual_tokens: c.num_virtual_tokens,
      peft_type: 'PROMPT_TUNING',
      prompt_tuning_init: c.prompt_tuning_init,
      prompt_tuning_init_text: c.prompt_tuning_init_text,
      revision: c.revision,
      task_type: 'CAUSAL_LM',
      token_dim: c.token_dim,
      tokenizer_kwargs: c.tokenizer_kwargs,
      tokenizer_name_or_path: c.tokenizer_name_or_path,
    };
  }

  stateDict(): Map<string, Tensor> {
    return new Map([['prompt_embeddings', this.embedding]]);
  }

  trainableParameters(): NamedTensor[] {
    return [{ name: 'prompt_encoder.embedding.weight', tensor: this.embedding }];
  }

  numParameters(): number {
    return this.embedding.size;
  }

  virtualTokens(): number {
    return this.P;
  }

  /**
   * Prepends the soft prompt to every row: embeds [B·T, H] → [B·(P+T), H]. Virtual tokens get
   * id 0 (never looked up), key mask 1, segment −1 (visible to every packed example) and
   * positions 0..P−1; real tokens get P + their positions (default 0..T−1).
   */
  input(embeds: Tensor, batch: Batch, _ctx: ForwardContext): { embeds: Tensor; batch: Batch } {
    const { B, T } = batch, P = this.P, T2 = P + T;
    const x = concatSeq(repeatBatch(this.embedding, B), embeds, B);
    const ids = new Int32Array(B * T2);
    const positions = new Int32Array(B * T2);
    const keyMask = batch.keyMask ? new Uint8Array(B * T2) : null;
    const segIds = batch.segIds ? new Int32Array(B * T2) : null;
    for (let b = 0; b < B; b++) {
      const o = b * T2, s = b * T;
      ids.set(batch.ids.subarray(s, s + T), o + P);
      for (let j = 0; j < P; j++) positions[o + j] = j;
      for (let t = 0; t < T; t++) positions[o + P + t] = P + (batch.positions ? batch.positions[s + t] : t);
      if (keyMask) {
        keyMask.fill(1, o, o + P);
        keyMask.set(batch.keyMask!.subarray(s, s + T), o + P);
      }
      if (segIds) {
        segIds.fill(-1, o, o + P);
        segIds.set(batch.segIds!.subarray(s, s + T), o + P);
      }
    }
    return { embeds: x, batch: { ids, B, T: T2, positions, keyMask, segIds } };
  }

  /** Generation: the soft prompt enters each sequence's cache at prefill, at positions 0..P−1. */
  promptEmbeddings(): Float32Array {
    return this.embedding.data.slice();
  }

  /** The prompt's first real token sits at position P. */
  positionOffset(): number {
    return this.P;
  }
}

function fillUniform(a: Float32Array, seed: number): void {
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    a[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
}

/**
 * Creates a prompt-tuning adapter from options with PEFT's PromptTuningConfig keys. TEXT init
 * tokenizes prompt_tuning_init_text with `tokenizer` (or the tokenizer at tokenizer_name_or_path).
 */
export function createPromptAdapter(model: CausalLM, options: Partial<PromptConfig> & Record<string, unknown>, tokenizer?: Tokenizer, seed = 0): PromptAdapter {
  const cfg = parsePromptConfig(options, model, 'prompt tuning options');
  if (cfg.prompt_tuning_init === 'TEXT' && cfg.prompt_tuning_init_text === null)
    throw new PeftError("prompt_tuning_init 'TEXT' needs prompt_tuning_init_text", { file: 'prompt tuning options', field: 'prompt_tuning_init_text', expected: 'a string', found: 'null' });
  return new PromptAdapter(model, cfg, { tokenizer, seed });
}

registerAdapterLoader('PROMPT_TUNING', (model, raw, tensors, files) => {
  const nv = requiredVirtualTokens(raw, files.config);
  const H = model.config.hiddenSize;
  const data = takePromptTensor(tensors, [nv, H], files.tensors, `num_virtual_tokens × hidden_size ${H}`);
  const cfg = parsePromptConfig(raw, model, files.config);
  return new PromptAdapter(model, cfg, { initial: data });
});
