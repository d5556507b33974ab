/**
 * Llama-family decoder-only causal LMs (LlamaForCausalLM — Llama 2/3, TinyLlama, SmolLM,
 * stories260K —, MistralForCausalLM, Qwen2ForCausalLM), as in transformers'
 * `models/llama/modeling_llama.py`: pre-norm RMSNorm blocks, RoPE, grouped-query attention,
 * SwiGLU MLP; optional q/k/v (and o) biases; tied or untied embeddings.
 *
 * Modules are plain data. PEFT methods attach hooks (`LinearModule.pre/post`,
 * `DecoderLayer.afterAttention/afterMlp/prefix`, `CausalLM.inputHooks`) without changing this file.
 */
import { native } from '../native/index.js';
import {
  add, attention, checkpoint, concatSeq, crossEntropy as crossEntropyOf, embedding, linear, linearCrossEntropy, rmsnorm, rope, ropeTable, swiglu, Tensor,
  type LossResult, type RopeTable, type Weight,
} from '../tensor/index.js';
import type { KVCache } from '../generate/kv-cache.js';
import type { ModelConfig } from './config.js';

/** Per-call state shared by hooks: training mode, dropout seeds, which rows use which adapter. */
export interface ForwardContext {
  training: boolean;
  /** Seed for dropout masks; hooks derive per-module seeds from it. */
  seed: number;
  /** Row ranges [start, end) of the flattened batch and the adapter each uses (null = none). Absent: the active adapter(s) for all rows. */
  rowAdapters?: Array<{ start: number; end: number; adapter: string | null }>;
  /** Counter hooks use to give each dropout call its own stream. */
  dropoutCalls: number;
}

export function defaultContext(training = false, seed = 0): ForwardContext {
  return { training, seed, dropoutCalls: 0 };
}

export type LinearPreHook = (x: Tensor, ctx: ForwardContext) => Tensor;
export type LinearPostHook = (x: Tensor, y: Tensor, ctx: ForwardContext) => Tensor;
export type BlockHook = (y: Tensor, ctx: ForwardContext) => Tensor;

/** Learned key/value prefix of one layer for B batch rows: k, v [B·P, Hkv·D] (keys not rotated). */
export type PrefixProvider = (ctx: ForwardContext, B: number) => { k: Tensor; v: Tensor; P: number } | null;

export interface LinearModule {
  /** HF module path, e.g. `model.layers.0.self_attn.q_proj`. */
  name: string;
  inFeatures: number;
  outFeatures: number;
  weight: Weight;
  bias: Tensor | null;
  pre: LinearPreHook[];
  post: LinearPostHook[];
}

export interface DecoderLayer {
  index: number;
  inputLayernorm: Tensor;
  postAttentionLayernorm: Tensor;
  q: LinearModule;
  k: LinearModule;
  v: LinearModule;
  o: LinearModule;
  gate: LinearModule;
  up: LinearModule;
  down: LinearModule;
  afterAttention: BlockHook[];
  afterMlp: BlockHook[];
  prefix: PrefixProvider | null;
}

export type EmbeddingTable = { kind: 'f32'; tensor: Tensor } | { kind: 'bf16'; bits: Uint16Array; shape: [number, number] };

/**
 * Input of a uniform batch: B rows of T tokens (flattened [B·T]).
 * positions default to 0..T−1 per row; keyMask [B, T] marks real tokens (1) vs padding (0);
 * segIds [B·T] separate packed examples (no attention across segments).
 */
export interface Batch {
  ids: Int32Array;
  B: number;
  T: number;
  positions?: Int32Array;
  keyMask?: Uint8Array | null;
  segIds?: Int32Array | null;
}

/** An input hook may replace the embeddings and the batch (e.g. prompt tuning prepends virtual tokens). */
export type InputHook = (embeds: Tensor, batch: Batch, ctx: ForwardContext) => { embeds: Tensor; batch: Batch };

export interface CausalLM {
  config: ModelConfig;
  /** Directory the model was loaded from ('' for models built in memory). */
  dir: string;
  embedTokens: EmbeddingTable;
  layers: DecoderLayer[];
  norm: Tensor;
  lmHead: LinearModule;
  invFreq: Float32Array;
  attentionScaling: number;
  inputHooks: InputHook[];
  /** Recompute each decoder block in backward instead of keeping its activations (see setGradientCheckpointing). */
  gradientCheckpointing?: boolean;
}

/** Applies a linear module with its PEFT hooks: pre-hooks transform the input, post-hooks the output. */
export function runLinear(m: LinearModule, x: Tensor, ctx: ForwardContext): Tensor {
  let xin = x;
  for (const h of m.pre) xin = h(xin, ctx);
  let y = linear(xin, m.weight, m.bias);
  for (const h of m.post) y = h(xin, y, ctx);
  return y;
}

function embed(model: CausalLM, ids: Int32Array): Tensor {
  const e = model.embedTokens;
  return e.kind === 'f32' ? embedding(e.tensor, ids) : embedding({ bits: e.bits, shape: e.shape }, ids);
}

/** The decoder stack; `attend` computes one layer's attention from rotated q, k and v. */
function decoder(model: CausalLM, x: Tensor, table: RopeTable, ctx: ForwardContext,
  attend: (layer: DecoderLayer, q: Tensor, k: Tensor, v: Tensor) => Tensor): Tensor {
  const c = model.config;
  const block = (layer: DecoderLayer, x: Tensor): Tensor => {
    const h = rmsnorm(x, layer.inputLayernorm, c.rmsNormEps);
    const q = rope(runLinear(layer.q, h, ctx), table, c.numHeads, c.headDim);
    const k = rope(runLinear(layer.k, h, ctx), table, c.numKvHeads, c.headDim);
    const v = runLinear(layer.v, h, ctx);
    let a = runLinear(layer.o, attend(layer, q, k, v), ctx);
    for (const hook of layer.afterAttention) a = hook(a, ctx);
    x = add(x, a);
    const h2 = rmsnorm(x, layer.postAttentionLayernorm, c.rmsNormEps);
    const g = runLinear(layer.gate, h2, ctx);
    const u = runLinear(layer.up, h2, ctx);
    let d = runLinear(layer.down, swiglu(g, u), ctx);
    for (const hook of layer.afterMlp) d = hook(d, ctx);
    return add(x, d);
  };
  for (const layer of model.layers) x = runBlock(model, x, ctx, (xi) => block(layer, xi));
  return rmsnorm(x, model.norm, c.rmsNormEps);
}

/**
 * Runs one decoder block, recomputed in backward when the model has gradient checkpointing on
 * (see tensor/checkpoint.ts; the dropout-call counter is replayed so masks are identical).
 */
export function runBlock(model: CausalLM, x: Tensor, ctx: ForwardContext, block: (x: Tensor) => Tensor): Tensor {
  if (!model.gradientCheckpointing) return block(x);
  return checkpoint(x, block, { get: () => ctx.dropoutCalls, set: (v) => { ctx.dropoutCalls = v; } });
}

/**
 * Turns gradient checkpointing on or off (transformers' `gradient_checkpointing_enable()`): each
 * decoder block keeps only its input during the forward and is recomputed in backward. Same
 * gradients, less activation memory, about one more forward pass of compute per step.
 */
export function setGradientCheckpointing(model: CausalLM, on = true): void {
  model.gradientCheckpointing = on;
}

/** Positions 0..T−1 for each of B rows. */
export function defaultPositions(B: number, T: number): Int32Array {
  const p = new Int32Array(B * T);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) p[b * T + t] = t;
  return p;
}

/**
 * Positions of a padded batch from its key mask, as transformers' generation derives them
 * (`_prepare_position_ids_for_generation`): cumsum(mask) − 1 along each row, 0 at pads. A
 * left-padded row's real tokens then sit at 0..n−1, exactly as when the row runs alone.
 */
export function maskPositions(keyMask: Uint8Array, B: number, T: number): Int32Array {
  const p = new Int32Array(B * T);
  for (let b = 0; b < B; b++) {
    let c = -1;
    for (let t = 0; t < T; t++) p[b * T + t] = keyMask[b * T + t] ? ++c : 0;
  }
  return p;
}

/**
 * Final hidden states [B·T', hidden] of a uniform batch (T' = T, or more when an input hook
 * such as prompt tuning adds virtual tokens; the returned batch says which). When the batch has
 * a keyMask and no positions, positions come from the mask ({@link maskPositions}), so padding
 * never shifts a row's positions (nor a prefix's or prompt's, which are not rotated with them).
 */
export function forwardHidden(model: CausalLM, batch: Batch, ctx: ForwardContext = defaultContext()): { hidden: Tensor; batch: Batch } {
  const c = model.config;
  if (batch.ids.length !== batch.B * batch.T) throw new Error(`forward: ${batch.ids.length} ids for B=${batch.B} × T=${batch.T}`);
  if (batch.keyMask && !batch.positions) batch = { ...batch, positions: maskPositions(batch.keyMask, batch.B, batch.T) };
  let x = embed(model, batch.ids);
  for (const hook of model.inputHooks) ({ embeds: x, batch } = hook(x, batch, ctx));
  const { B, T } = batch;
  const positions = batch.positions ?? defaultPositions(B, T);
  const table = ropeTable(positions, model.invFreq, model.attentionScaling);
  const hidden = decoder(model, x, table, ctx, (layer, q, k, v) => {
    let keys = k, values = v, Tk = T;
    let keyMask = batch.keyMask ?? null;
    let kSeg = batch.segIds ?? null;
    const prefix = layer.prefix?.(ctx, B) ?? null;
    if (prefix) {
      keys = concatSeq(prefix.k, k, B);
      values = concatSeq(prefix.v, v, B);
      Tk = prefix.P + T;
      if (keyMask) keyMask = prependOnes(keyMask, B, T, prefix.P);
      if (kSeg) kSeg = prependValue(kSeg, B, T, prefix.P, -1);
    }
    return attention(q, keys, values, {
      B, Tq: T, Tk, Hq: c.numHeads, Hkv: c.numKvHeads, D: c.headDim, causal: true,
      keyMask, qSeg: batch.segIds ?? null, kSeg,
    });
  });
  return { hidden, batch };
}

function prependOnes(mask: Uint8Array, B: number, T: number, P: number): Uint8Array {
  const out = new Uint8Array(B * (P + T));
  for (let b = 0; b < B; b++) {
    out.fill(1, b * (P + T), b * (P + T) + P);
    out.set(mask.subarray(b * T, (b + 1) * T), b * (P + T) + P);
  }
  return out;
}

function prependValue(a: Int32Array, B: number, T: number, P: number, value: number): Int32Array {
  const out = new Int32Array(B * (P + T));
  for (let b = 0; b < B; b++) {
    out.fill(value, b * (P + T), b * (P + T) + P);
    out.set(a.subarray(b * T, (b + 1) * T), b * (P + T) + P);
  }
  return out;
}

/** Logits [rows, vocab] = hidden · lm_headᵀ (with the head's PEFT hooks). */
export function lmLogits(model: CausalLM, hidden: Tensor, ctx: ForwardContext = defaultContext()): Tensor {
  return runLinear(model.lmHead, hidden, ctx);
}

/**
 * Next-token loss for labels [rows] aligned with hidden rows (label r is the target predicted at
 * row r; −100 = ignored). Uses the fused chunked head + cross-entropy unless the head has hooks.
 */
export function lmLoss(model: CausalLM, hidden: Tensor, labels: Int32Array, gradScale: number,
  ctx: ForwardContext = defaultContext()): LossResult {
  const head = model.lmHead;
  if (head.pre.length === 0 && head.post.length === 0)
    return linearCrossEntropy(hidden, head.weight, head.bias, labels, gradScale);
  // hooked head (e.g. LoRA on lm_head): materialise logits
  const logits = runLinear(head, hidden, ctx);
  return crossEntropyOf(logits, labels, gradScale);
}

/** One sequence in a cached (ragged) forward: its new token ids and positions, and its cache. */
export interface CachedSeq {
  ids: Int32Array;
  /** Positions of the sequence's new rows: prefixEmbeds rows first (when given), then ids. */
  positions: Int32Array;
  cache: KVCache;
  /** Embeddings [P, hidden] to feed before `ids` (prompt tuning's virtual tokens at prefill). */
  prefixEmbeds?: Float32Array | null;
}

/** Rows a sequence contributes: its prefix embeddings (if any) plus its ids. */
export function cachedSeqRows(s: CachedSeq, hidden: number): number {
  return (s.prefixEmbeds ? s.prefixEmbeds.length / hidden : 0) + s.ids.length;
}

/**
 * Inference forward over several sequences with their own KV caches (no padding): hidden states
 * for all new rows, concatenated in sequence order (each sequence's prefix-embedding rows, then
 * its token rows). Linear layers run on all rows at once (one GEMM for the whole batch);
 * attention runs per sequence against its cache. Appends the new keys/values to each cache.
 */
export function forwardCached(model: CausalLM, seqs: CachedSeq[], ctx: ForwardContext = defaultContext()): Tensor {
  const c = model.config;
  const H = c.hiddenSize;
  const counts = seqs.map((s) => cachedSeqRows(s, H));
  const total = counts.reduce((a, b) => a + b, 0);
  const ids = new Int32Array(seqs.reduce((a, s) => a + s.ids.length, 0));
  const positions = new Int32Array(total);
  const starts: number[] = [];
  let off = 0, idOff = 0;
  seqs.forEach((s, i) => {
    if (s.positions.length !== counts[i]) throw new Error(`forwardCached: sequence ${i} has ${counts[i]} rows but ${s.positions.length} positions`);
    starts.push(off);
    ids.set(s.ids, idOff);
    positions.set(s.positions, off);
    off += counts[i];
    idOff += s.ids.length;
  });
  const tokenEmbeds = embed(model, ids);
  let x = tokenEmbeds;
  if (seqs.some((s) => s.prefixEmbeds)) {
    x = Tensor.empty([total, H]);
    let r = 0, t = 0;
    for (const s of seqs) {
      if (s.prefixEmbeds) {
        x.data.set(s.prefixEmbeds, r * H);
        r += s.prefixEmbeds.length / H;
      }
      x.data.set(tokenEmbeds.data.subarray(t * H, (t + s.ids.length) * H), r * H);
      r += s.ids.length;
      t += s.ids.length;
    }
  }
  const table = ropeTable(positions, model.invFreq, model.attentionScaling);
  const width = c.numKvHeads * c.headDim;
  const qWidth = c.numHeads * c.headDim;
  const hidden = decoder(model, x, table, ctx, (layer, q, k, v) => {
    const out = Tensor.empty([total, qWidth]);
    seqs.forEach((s, i) => {
      const n = counts[i], r0 = starts[i];
      s.cache.write(layer.index, k.data.subarray(r0 * width, (r0 + n) * width), v.data.subarray(r0 * width, (r0 + n) * width), n);
      const Tk = s.cache.length + n;
      native.attentionForward({
        B: 1, Tq: n, Tk, Hq: c.numHeads, Hkv: c.numKvHeads, D: c.headDim,
        qStride: qWidth, kStride: width, vStride: width, oStride: qWidth,
        scale: 1 / Math.sqrt(c.headDim), causal: true,
      }, q.data.subarray(r0 * qWidth, (r0 + n) * qWidth), s.cache.keys[layer.index].subarray(0, Tk * width),
      s.cache.values[layer.index].subarray(0, Tk * width), out.data.subarray(r0 * qWidth, (r0 + n) * qWidth), null);
    });
    return out;
  });
  seqs.forEach((s, i) => s.cache.advance(counts[i]));
  return hidden;
}
/** Every float32 parameter tensor under its HF name (tied lm_head appears once, as the embedding). */
export function namedParameters(model: CausalLM): Array<{ name: string; tensor: Tensor }> {
  const out: Array<{ name: string; tensor: Tensor }> = [];
  if (model.embedTokens.kind === 'f32') out.push({ name: 'model.embed_tokens.weight', tensor: model.embedTokens.tensor });
  const lin = (m: LinearModule): void => {
    if (m.weight.data.kind === 'f32') out.push({ name: `${m.name}.weight`, tensor: m.weight.data.tensor });
    if (m.bias) out.push({ name: `${m.name}.bias`, tensor: m.bias });
  };
  for (const l of model.layers) {
    out.push({ name: `model.layers.${l.index}.input_layernorm.weight`, tensor: l.inputLayernorm });
    out.push({ name: `model.layers.${l.index}.post_attention_layernorm.weight`, tensor: l.postAttentionLayernorm });
    for (const m of [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]) lin(m);
  }
  out.push({ name: 'model.norm.weight', tensor: model.norm });
  const embedT = model.embedTokens.kind === 'f32' ? model.embedTokens.tensor : null;
  if (!(model.lmHead.weight.data.kind === 'f32' && model.lmHead.weight.data.tensor === embedT)) lin(model.lmHead);
  return out;
}

/** Linear modules of the decoder (q/k/v/o/gate/up/down of every layer), then lm_head. */
export function linearModules(model: CausalLM): LinearModule[] {
  const out: LinearModule[] = [];
  for (const l of model.layers) out.push(l.q, l.k, l.v, l.o, l.gate, l.up, l.down);
  out.push(model.lmHead);
  return out;
}
