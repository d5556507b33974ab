/**
 * The causal LM every architecture family builds: plain data (embeddings, decoder layers holding
 * their linear modules and norms by role, final norm, head) plus the forward passes shared by all
 * families — token (and learned position) embeddings, input hooks, RoPE tables per distinct RoPE,
 * attention with masks / sliding windows / soft-capping, the family's block per layer, the final
 * norm, logits with optional soft-capping, the loss, and the cached (generation) forward.
 *
 * A family (`src/models/<family>.ts`, registered in registry.ts) supplies its config parser, its
 * module map (HF tensor names, shapes, roles) and its block; see {@link Family}.
 *
 * PEFT methods attach hooks (`LinearModule.pre/post`, `DecoderLayer.afterAttention/afterMlp/prefix`,
 * `CausalLM.inputHooks`) without changing model code, and find their targets by module name.
 */
import { native } from '../native/index.js';
import {
  add, attention, checkpoint, chunkedCrossEntropy, concatSeq, crossEntropy as crossEntropyOf, defaultChunkRows, embedding, linear, linearCrossEntropy,
  ropeTable, scale, softcap, Tensor,
  type LossResult, type RopeTable, type Weight,
} from '../tensor/index.js';
import type { KVCache } from '../generate/kv-cache.js';
import type { ConfigReader, Json, ModelConfig } from './config.js';
import { applyNorm } from './layers.js';

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
  /** Always [out, in] in memory; see fanInFanOut for the checkpoint orientation. */
  weight: Weight;
  bias: Tensor | null;
  /** The checkpoint stores the weight [in, out] (GPT-2 Conv1D; PEFT's `fan_in_fan_out`): transposed on load and save. */
  fanInFanOut: boolean;
  pre: LinearPreHook[];
  post: LinearPostHook[];
}

/** A normalisation layer: weight [size] and, for LayerNorm, bias [size]. */
export interface Norm {
  /** HF module path, e.g. `model.layers.0.input_layernorm`. */
  name: string;
  weight: Tensor;
  bias: Tensor | null;
}

/** RoPE inverse frequencies of a layer; layers with the same RoPE share the object (one table per forward). */
export interface LayerRope {
  invFreq: Float32Array;
  attentionScaling: number;
  /** Rotated features per head (head_dim, or fewer with partial rotary). */
  rotaryDim: number;
  /** LongRoPE: frequencies for forwards whose max(position) + 1 exceeds `threshold` (as transformers switches per forward). */
  long?: { invFreq: Float32Array; threshold: number };
}

export interface DecoderLayer {
  index: number;
  /** Linear modules by role, in the family's module-map order (q, k, v, o, gate, up, down; fused families: their own roles). */
  linears: Record<string, LinearModule>;
  /** Norms by role (input, post_attention, pre_feedforward, post_feedforward, q_norm, k_norm, …). */
  norms: Record<string, Norm>;
  /** RoPE of this layer, null = no rotary embedding (SmolLM3 NoPE layers). */
  rope: LayerRope | null;
  /** Sliding window (keys a query sees, itself included) or null (global attention). */
  window: number | null;
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
  /** The architecture family (config parser, module map, block). */
  family: Family;
  /** Directory the model was loaded from ('' for models built in memory). */
  dir: string;
  /** HF module path of the token embedding (e.g. `model.embed_tokens`). */
  embedName: string;
  embedTokens: EmbeddingTable;
  /** Learned absolute position embeddings [max positions, hidden] (GPT-2 `wpe`), or null. */
  embedPositions: Norm | null;
  layers: DecoderLayer[];
  norm: Norm;
  lmHead: LinearModule;
  inputHooks: InputHook[];
  /** Recompute each decoder block in backward instead of keeping its activations (see setGradientCheckpointing). */
  gradientCheckpointing?: boolean;
}

// ------------------------------------------------------------------------------------------------
// Families

/** One linear module of the module map: role, HF path, shape ([out, in] in memory), bias, checkpoint orientation. */
export interface LinearSpec {
  role: string;
  name: string;
  inFeatures: number;
  outFeatures: number;
  bias: boolean;
  /** Stored [in, out] in the checkpoint (GPT-2 Conv1D). */
  fanInFanOut?: boolean;
}

export interface NormSpec {
  role: string;
  name: string;
  size: number;
  bias: boolean;
}

/** Where every tensor of a family lives in an HF checkpoint (the weight-name map). */
export interface ModuleMap {
  embed: string;
  /** Learned position embeddings (name and number of positions), when the family has them. */
  positions?: { name: string; count: number };
  layers: Array<{ linears: LinearSpec[]; norms: NormSpec[] }>;
  finalNorm: NormSpec;
  lmHead: string;
}

/** PEFT's default targets for the family (TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING). */
export interface PeftDefaults {
  lora: string[];
  ia3: string[];
  ia3Feedforward: string[];
}

/** How a family's LoRA tensors are named in a llama.cpp GGUF adapter. */
export interface GgufMap {
  arch: string;
  /** convert_hf_to_gguf.py permutes q/k rows for llama.cpp's RoPE (Llama-style converters). */
  permuteQK: boolean;
  /** llama.cpp tensor name (without `blk.N.` and `.weight`) by role. */
  tensors: Record<string, string>;
}

/** What the shared forward gives a block: the hooks' context, the layer's RoPE table, the attention. */
export interface BlockEnv {
  ctx: ForwardContext;
  /** The RoPE table of a layer's rope (null when the layer has none). */
  table(layer: DecoderLayer): RopeTable | null;
  /** Attention of rotated q [rows, Hq·D] against k, v [rows, Hkv·D] with the layer's window, the masks, prefix and cache. */
  attend(layer: DecoderLayer, q: Tensor, k: Tensor, v: Tensor): Tensor;
}

/**
 * An architecture family: MLX-LM's per-model file (`mlx_lm/models/llama.py`: ModelArgs, the block,
 * `sanitize`) in this project's terms.
 */
export interface Family {
  /** Short name (file name), e.g. 'llama'. */
  name: string;
  /** `config.architectures[0]` values this family loads. */
  architectures: readonly string[];
  /** Validated config from config.json (`r`) and generation_config.json. */
  parseConfig(r: ConfigReader, architecture: string, generationConfig: Json): ModelConfig;
  /** Tensor names and shapes. */
  moduleMap(c: ModelConfig): ModuleMap;
  /** One decoder block: x [rows, hidden] → x [rows, hidden]. */
  block(model: CausalLM, layer: DecoderLayer, x: Tensor, env: BlockEnv): Tensor;
  /** Final norm (default: the config's norm kind on `model.norm`). */
  finalNorm?(model: CausalLM, x: Tensor): Tensor;
  /** Drops (or renames) tensors a checkpoint may carry that the model does not use (buffers), in place. */
  sanitize?(weights: Map<string, unknown>): void;
  peft: PeftDefaults | null;
  /** llama.cpp architecture name, q/k row permutation and tensor names by role — or why GGUF export is refused. */
  gguf(c: ModelConfig): GgufMap | { refused: string };
}

// ------------------------------------------------------------------------------------------------
// Forward

/** Applies a linear module with its PEFT hooks: pre-hooks transform the input, post-hooks the output. */
export function runLinear(m: LinearModule, x: Tensor, ctx: ForwardContext): Tensor {
  let xin = x;
  for (const h of m.pre) xin = h(xin, ctx);
  let y = linear(xin, m.weight, m.bias);
  for (const h of m.post) y = h(xin, y, ctx);
  return y;
}

/**
 * Token embeddings [ids, hidden] from `table` (default: the model's), times the config's embedding
 * scale (Gemma: √hidden, applied inside transformers' embedding module, so PEFT's word embeddings
 * — prompt-tuning init, a trained embed_tokens copy — are scaled too; learned virtual tokens are not).
 */
export function tokenEmbeddings(model: CausalLM, ids: Int32Array, table: Tensor | null = null): Tensor {
  const e = model.embedTokens;
  let x = table ? embedding(table, ids) : e.kind === 'f32' ? embedding(e.tensor, ids) : embedding({ bits: e.bits, shape: e.shape }, ids);
  if (model.config.embedScale !== null) x = scale(x, model.config.embedScale);
  return x;
}

/** Adds learned absolute position embeddings (GPT-2 `wpe`) after the input hooks, as transformers adds them to inputs_embeds. */
function addPositions(model: CausalLM, x: Tensor, positions: Int32Array): Tensor {
  return model.embedPositions ? add(x, embedding(model.embedPositions.weight, positions)) : x;
}

/**
 * RoPE tables built once per forward and per distinct layer RoPE — all of them up front, outside
 * any block: a table made inside a checkpointed block's arena would be freed with it.
 */
function ropeTables(model: CausalLM, positions: Int32Array): (layer: DecoderLayer) => RopeTable | null {
  const tables = new Map<LayerRope, RopeTable>();
  let maxPos = -1;
  for (const p of positions) if (p > maxPos) maxPos = p;
  for (const r of model.layers.map((l) => l.rope)) {
    if (!r || tables.has(r)) continue;
    // LongRoPE: the long frequencies when this forward reaches past the original context (transformers' longrope_frequency_update)
    const inv = r.long && maxPos + 1 > r.long.threshold ? r.long.invFreq : r.invFreq;
    tables.set(r, ropeTable(positions, inv, r.attentionScaling));
  }
  return (layer) => (layer.rope ? tables.get(layer.rope)! : null);
}

/** The decoder stack: the family's block per layer, then the final norm. */
function decoder(model: CausalLM, x: Tensor, env: BlockEnv): Tensor {
  for (const layer of model.layers) x = runBlock(model, x, env.ctx, (xi) => model.family.block(model, layer, xi, env));
  return model.family.finalNorm ? model.family.finalNorm(model, x) : applyNorm(model, model.norm, x);
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
  let x = tokenEmbeddings(model, batch.ids);
  for (const hook of model.inputHooks) ({ embeds: x, batch } = hook(x, batch, ctx));
  const { B, T } = batch;
  const positions = batch.positions ?? defaultPositions(B, T);
  x = addPositions(model, x, positions);
  const hidden = decoder(model, x, {
    ctx,
    table: ropeTables(model, positions),
    attend: (layer, q, k, v) => {
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
        B, Tq: T, Tk, Hq: c.numHeads, Hkv: c.numKvHeads, D: c.headDim, causal: true, scale: c.attnScale,
        keyMask, qSeg: batch.segIds ?? null, kSeg, window: layer.window, softcap: c.attnSoftcap,
      });
    },
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

/** Logits [rows, vocab] = hidden · lm_headᵀ (with the head's PEFT hooks), soft-capped when the config says so. */
export function lmLogits(model: CausalLM, hidden: Tensor, ctx: ForwardContext = defaultContext()): Tensor {
  const z = runLinear(model.lmHead, hidden, ctx);
  return model.config.finalSoftcap !== null ? softcap(z, model.config.finalSoftcap) : z;
}

/**
 * Next-token loss for labels [rows] aligned with hidden rows (label r is the target predicted at
 * row r; −100 = ignored), never holding the [rows, vocab] logits whole: a plain head (soft-capped
 * or not) uses the fused chunked head + cross-entropy (linearCrossEntropy); a head with PEFT hooks
 * (LoRA or IA3 on lm_head, a modules_to_save copy) runs its hooks chunk by chunk
 * (chunkedCrossEntropy). The hooked head falls back to whole logits when rows use different
 * adapters (ctx.rowAdapters) or its hooks draw dropout masks (lora_dropout on lm_head while
 * training: chunking would change the masks). `chunkRows`: rows per chunk (default: 16 Mi logits).
 */
export function lmLoss(model: CausalLM, hidden: Tensor, labels: Int32Array, gradScale: number,
  ctx: ForwardContext = defaultContext(), chunkRows = defaultChunkRows(model.lmHead.outFeatures)): LossResult {
  const head = model.lmHead;
  if (head.pre.length === 0 && head.post.length === 0)
    return linearCrossEntropy(hidden, head.weight, head.bias, labels, gradScale, chunkRows, model.config.finalSoftcap);
  if (!ctx.rowAdapters) {
    const start = ctx.dropoutCalls;
    const r = chunkedCrossEntropy(hidden, labels, gradScale, (h) => lmLogits(model, h, ctx), chunkRows, () => ctx.dropoutCalls !== start);
    if (r) return r;
    ctx.dropoutCalls = start;
  }
  return crossEntropyOf(lmLogits(model, hidden, ctx), labels, gradScale);
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
 * attention runs per sequence against its cache, with each layer's sliding window and the
 * config's soft-capping. Appends the new keys/values to each cache.
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
  const tokenEmbeds = tokenEmbeddings(model, ids);
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
  x = addPositions(model, x, positions);
  const width = c.numKvHeads * c.headDim;
  const qWidth = c.numHeads * c.headDim;
  const hidden = decoder(model, x, {
    ctx,
    table: ropeTables(model, positions),
    attend: (layer, q, k, v) => {
      const out = Tensor.empty([total, qWidth]);
      seqs.forEach((s, i) => {
        const n = counts[i], r0 = starts[i];
        s.cache.write(layer.index, k.data.subarray(r0 * width, (r0 + n) * width), v.data.subarray(r0 * width, (r0 + n) * width), n);
        const Tk = s.cache.stored(layer.index) + n; // a sliding-window layer's cache holds only its window's keys
        native.attentionForward({
          B: 1, Tq: n, Tk, Hq: c.numHeads, Hkv: c.numKvHeads, D: c.headDim,
          qStride: qWidth, kStride: width, vStride: width, oStride: qWidth,
          scale: c.attnScale, causal: true, window: layer.window ?? 0, softcap: c.attnSoftcap ?? 0,
        }, q.data.subarray(r0 * qWidth, (r0 + n) * qWidth), s.cache.keys[layer.index].subarray(0, Tk * width),
        s.cache.values[layer.index].subarray(0, Tk * width), out.data.subarray(r0 * qWidth, (r0 + n) * qWidth), null);
      });
      return out;
    },
  });
  seqs.forEach((s, i) => s.cache.advance(counts[i]));
  return hidden;
}

// ------------------------------------------------------------------------------------------------
// Parameters

/** The linear modules of a layer in module-map order. */
export function layerLinears(l: DecoderLayer): LinearModule[] {
  return Object.values(l.linears);
}

/** The linear modules of the decoder (every layer's, in module-map order) — what QLoRA quantizes and LoRA merges. */
export function decoderLinears(model: CausalLM): LinearModule[] {
  return model.layers.flatMap(layerLinears);
}

/** Linear modules of the decoder, then lm_head. */
export function linearModules(model: CausalLM): LinearModule[] {
  return [...decoderLinears(model), model.lmHead];
}

/** Every norm of the model: per layer in module-map order, then the final norm. */
export function norms(model: CausalLM): Norm[] {
  return [...model.layers.flatMap((l) => Object.values(l.norms)), model.norm];
}

/** Every float32 parameter tensor under its HF name (tied lm_head appears once, as the embedding), in checkpoint order. */
export function namedParameters(model: CausalLM): Array<{ name: string; tensor: Tensor }> {
  const out: Array<{ name: string; tensor: Tensor }> = [];
  if (model.embedTokens.kind === 'f32') out.push({ name: `${model.embedName}.weight`, tensor: model.embedTokens.tensor });
  const norm = (n: Norm): void => {
    out.push({ name: `${n.name}.weight`, tensor: n.weight });
    if (n.bias) out.push({ name: `${n.name}.bias`, tensor: n.bias });
  };
  if (model.embedPositions) norm(model.embedPositions);
  const lin = (m: LinearModule): void => {
    if (m.weight.data.kind === 'f32') out.push({ name: `${m.name}.weight`, tensor: m.weight.data.tensor });
    if (m.bias) out.push({ name: `${m.name}.bias`, tensor: m.bias });
  };
  for (const l of model.layers) {
    for (const n of Object.values(l.norms)) norm(n);
    for (const m of layerLinears(l)) lin(m);
  }
  norm(model.norm);
  const embedT = model.embedTokens.kind === 'f32' ? model.embedTokens.tensor : null;
  if (!(model.lmHead.weight.data.kind === 'f32' && model.lmHead.weight.data.tensor === embedT)) lin(model.lmHead);
  return out;
}

/** Finds a linear module by its full HF name (or null). */
export function findLinear(model: CausalLM, name: string): LinearModule | null {
  return linearModules(model).find((m) => m.name === name) ?? null;
}
