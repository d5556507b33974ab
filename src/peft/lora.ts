/**
 * LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", eq. 3):
 * h = x·W₀ᵀ + b + scaling · (dropout(x)·Aᵀ)·Bᵀ with A [r, in], B [out, r] and
 * scaling = lora_alpha / r, or lora_alpha / √r with rsLoRA (Kalajdzievski 2023).
 * Follows HF PEFT `peft/tuners/lora/{config,layer,model}.py`: Kaiming-uniform(a=√5) A and zero B
 * (or N(0, 1/r) A with init_lora_weights='gaussian'), rank_pattern/alpha_pattern per module,
 * lora_bias (a bias on B, scaled with it), bias = none | all | lora_only, modules_to_save.
 */
import { PeftError } from '../errors.js';
import type { Batch, CausalLM, ForwardContext, LinearModule } from '../models/model.js';
import { linearModules, tokenEmbeddings } from '../models/model.js';
import { native } from '../native/index.js';
import {
  allocF32, dropout, f32Weight, gradOf, linear, lowRankDown, lowRankUp, record, Tensor, weightToF32,
} from '../tensor/index.js';
import { SHARED_INPUT_ROLES } from '../models/layers.js';
import type { ModelConfig } from '../models/config.js';
import { parseLoraConfig, type LoraConfig } from './config.js';
import { isTargeted, moduleSuffixes, patternKey } from './inject.js';
import type { AdapterMethod, NamedTensor, RowRange } from './types.js';
import { gaussian, uniformRng } from '../tensor/random.js';
import { loadStateDict, registerAdapterLoader, type TensorMap } from './registry.js';
import { reconcileEmbeddingSaves } from './embedding-saves.js';
import { checkLoraSizes } from './preflight.js';
import { doraVariant } from './dora.js';
import { installMerged, restoreMerged, type SavedWeights } from './merged-weights.js';

/** The LoRA branch on one linear module. */
export interface LoraLayer {
  module: LinearModule;
  r: number;
  alpha: number;
  scaling: number;
  /** [r, in] */
  A: Tensor;
  /** [out, r] */
  B: Tensor;
  /** [out] when lora_bias. */
  biasB: Tensor | null;
  dropout: number;
  /** True while the delta is merged into the module's weight (the branch is then skipped). */
  merged: boolean;
  /** How the branch joins the base output, merges and saves: plain LoRA or DoRA. */
  variant: LoraVariant;
  /** DoRA's `lora_magnitude_vector` m [out] (null for plain LoRA). */
  magnitude: Tensor | null;
  /**
   * While merged: the module's pre-merge weight and bias (the same objects, bf16 bits and a tied
   * embedding included) and the merged ones that replaced them; unmerge puts the former back.
   */
  saved?: SavedWeights | null;
}

/**
 * A LoRA variant: the seam through which DoRA (and future variants) change LoRA without branches
 * in the layer code — HF PEFT's `LoraVariant` (peft/tuners/lora/layer.py, implementations in
 * peft/tuners/lora/variants.py: init, forward, merge, unmerge).
 */
export interface LoraVariant {
  /** `use_dora` value written to adapter_config.json. */
  readonly useDora: boolean;
  /** Creates the variant's own tensors for a new layer (A and B already initialised). */
  init(l: LoraLayer): void;
  /**
   * The layer output for the whole batch, differentiable: y is the base output x·Wᵀ + b [rows, out]
   * (the variant may update it in place), x the module input [rows, in] before LoRA dropout.
   * `down`, when given, holds A·xᵀ already computed: rows [offset, offset + r) of a
   * {@link lowRankDown} product (the adapter's fused A GEMM of modules sharing x, see
   * {@link LoraAdapter.fuseSharedInputs}); it is only given when no dropout applies.
   */
  forward(l: LoraLayer, x: Tensor, y: Tensor, ctx: ForwardContext, down?: LoraDown): Tensor;
  /** Inference on a row range of the batch, in place on y (no gradients). */
  forwardRows(l: LoraLayer, x: Tensor, y: Tensor, rows: RowRange): void;
  /**
   * In place on a float32 copy w [out, in] of the base weight and bias [out] (a copy, when
   * present): the merged weight. The module still holds the unmerged weight while this runs.
   * (Unmerge needs no variant code: it puts the kept pre-merge weight back.)
   */
  mergeInto(l: LoraLayer, w: Float32Array, bias: Float32Array | null): void;
  /** Extra state-dict entries (PEFT suffix after the module name → tensor), e.g. `lora_magnitude_vector`. */
  tensors(l: LoraLayer): Array<[string, Tensor]>;
}

/** Rows [offset, offset + r) of a {@link lowRankDown} product t [R, rows]: one layer's A·xᵀ. */
export interface LoraDown {
  t: Tensor;
  offset: number;
}

/** The layer's A·(dropout(x))ᵀ [r, rows] (dropout only while training with lora_dropout > 0). */
export function loraDown(l: LoraLayer, x: Tensor, ctx: ForwardContext): LoraDown {
  const xd = ctx.training && l.dropout > 0 ? dropout(x, l.dropout, ctx.seed * 1000003 + ctx.dropoutCalls++) : x;
  return { t: lowRankDown(xd, [l.A]), offset: 0 };
}

/**
 * Plain LoRA: y + scaling · (dropout(x)·Aᵀ)·Bᵀ (+ scaling · bias_B); merged as W + scaling·B·A.
 */
export const plainLora: LoraVariant = {
  useDora: false,
  init: () => {},
  forward(l, x, y, ctx, down) {
    const d = down ?? loraDown(l, x, ctx);
    y = lowRankUp(y, d.t, d.offset, l.B, l.scaling);
    if (l.biasB) y = addScaledBias(y, l.biasB, l.scaling);
    return y;
  },
  forwardRows(l, x, y, rows) {
    const M = rows.end - rows.start, N = l.module.outFeatures;
    if (M <= 0) return;
    const yr = rowsOf(y, rows);
    loraRows(l, x, rows, yr, l.scaling, 1);
    if (l.biasB) {
      const b = new Float32Array(N);
      native.scale(l.biasB.data, l.scaling, b);
      native.addRow(yr, b, M, N);
    }
  },
  mergeInto(l, w, bias) {
    addDelta(l, w);
    if (l.biasB && bias) native.axpy(l.scaling, l.biasB.data, bias);
  },
  tensors: () => [],
};

/** w += scaling·B·A (w [out, in]). */
export function addDelta(l: LoraLayer, w: Float32Array): void {
  const m = l.module;
  native.gemm(false, false, m.outFeatures, m.inFeatures, l.r, l.scaling, l.B.data, l.r, l.A.data, m.inFeatures, 1, w, m.inFeatures);
}

/** out[rows] = alpha · (x[rows]·Aᵀ)·Bᵀ + beta · out (inference; out is [M, out_features]). */
export function loraRows(l: LoraLayer, x: Tensor, rows: RowRange, out: Float32Array, alpha: number, beta: number): void {
  const M = rows.end - rows.start, K = l.module.inFeatures, N = l.module.outFeatures;
  const xa = allocF32(M * l.r);
  native.gemm(false, true, M, l.r, K, 1, rowsOf(x, rows), K, l.A.data, K, 0, xa, l.r);
  native.gemm(false, true, M, N, l.r, alpha, xa, l.r, l.B.data, l.r, beta, out, N);
}

/** Key prefix PEFT gives a module in adapter_model.safetensors. */
export function peftKey(moduleName: string): string {
  return `base_model.model.${moduleName}`;
}


/** Row-range view [start, end) of a [rows, cols] tensor's data. */
export function rowsOf(t: Tensor, rows: RowRange): Float32Array {
  return t.data.subarray(rows.start * t.cols, rows.end * t.cols);
}

export class LoraAdapter implements AdapterMethod {
  readonly peftType = 'LORA' as const;
  readonly layers = new Map<string, LoraLayer>();
  /** modules_to_save: trainable full copies, keyed by module name ('lm_head', 'model.embed_tokens', …). */
  readonly copies = new Map<string, { weight: Tensor; bias: Tensor | null }>();
  /** Base biases this adapter trains (bias = all | lora_only), keyed by module name. */
  readonly biases = new Map<string, Tensor>();
  /** What loading this adapter from a directory accepted and ignored (printed by the CLI). */
  readonly loadNotes: string[] = [];
  /** The model config before merge() untied lm_head from embed_tokens (restored by unmerge). */
  private tiedConfig: ModelConfig | null = null;
  /**
   * Compute A·xᵀ of this adapter's layers that read the same input (q/k/v, gate/up of a decoder
   * layer: SHARED_INPUT_ROLES) as one GEMM [A_q; A_k; A_v]·xᵀ → [r_q + r_k + r_v, rows] whenever
   * no LoRA dropout applies (eval, or lora_dropout = 0) and the layers are unmerged; each module's
   * B product then reads its row block in place, and backward gives dx and the stacked dA with
   * one GEMM each. The A tensors stay the per-module parameters (saved, loaded and updated as
   * before); the stacked copy is made from their current values at each forward. Same outputs
   * and gradients as separate products up to float rounding. On by default; false = one GEMM per module.
   */
  fuseSharedInputs = true;
  /**
   * Fewest input rows for the fused product: below it (decoding, small batches) stacking the A
   * matrices costs as much as the GEMM saves (1 thread, one 135M layer's LoRA forward: 57 vs 32 µs
   * at 1 row, 93 vs 69 µs at 16; about even from 32 to 256 rows; a gain in training at 1024).
   */
  fuseMinRows = 64;
  /** Per targeted module: the adapter's layers of its shared-input group (itself included), when ≥ 2. */
  private readonly groups = new Map<string, LoraLayer[]>();
  /** The fused A product of a group being run, by the input tensor its modules share. */
  private readonly fusedA = new WeakMap<Tensor, { t: Tensor; offsets: Map<LoraLayer, number>; left: number }>();

  constructor(readonly model: CausalLM, readonly cfg: LoraConfig, seed = 0) {
    // PEFT's default targets come from the architecture family (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING)
    const targets = cfg.target_modules ?? model.family.peft?.lora;
    if (!targets)
      throw new PeftError(`no default LoRA target modules for ${model.config.architecture}; set target_modules`, { field: 'target_modules', expected: 'a list of module names', found: 'null' });
    const spec = { ...cfg, target_modules: targets };
    const modules = linearModules(model).filter((m) => isTargeted(spec, m.name));
    if (modules.length === 0)
      throw new PeftError('target_modules matched no linear layer', {
        field: 'target_modules', expected: `names such as ${moduleSuffixes(linearModules(model)).join(', ')}`, found: JSON.stringify(targets),
      });
    const r0 = uniformRng(seed);
    for (const m of modules) {
      const rk = patternKey(cfg.rank_pattern, m.name);
      const ak = patternKey(cfg.alpha_pattern, m.name);
      const r = rk ? cfg.rank_pattern[rk] : cfg.r;
      const alpha = ak ? cfg.alpha_pattern[ak] : cfg.lora_alpha;
      const A = Tensor.param(new Float32Array(r * m.inFeatures), [r, m.inFeatures], false);
      const B = Tensor.param(new Float32Array(m.outFeatures * r), [m.outFeatures, r], false);
      if (cfg.init_lora_weights === 'gaussian') {
        for (let i = 0; i < A.size; i++) A.data[i] = gaussian(r0) / r;
      } else {
        // kaiming_uniform_(a=√5): bound = gain·√(3/fan_in) with gain = √(2/(1+a²)) → 1/√fan_in
        const bound = 1 / Math.sqrt(m.inFeatures);
        for (let i = 0; i < A.size; i++) A.data[i] = (r0() * 2 - 1) * bound;
      }
      if (cfg.init_lora_weights === false) for (let i = 0; i < B.size; i++) B.data[i] = (r0() * 2 - 1) * 0.1;
      const biasB = cfg.lora_bias ? Tensor.param(new Float32Array(m.outFeatures), [m.outFeatures], false) : null;
      const scaling = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
      const variant = cfg.use_dora ? doraVariant : plainLora;
      const layer: LoraLayer = { module: m, r, alpha, scaling, A, B, biasB, dropout: cfg.lora_dropout, merged: false, variant, magnitude: null };
      variant.init(layer);
      this.layers.set(m.name, layer);
    }
    for (const layer of model.layers) {
      for (const roles of SHARED_INPUT_ROLES) {
        const group = roles.map((r) => layer.linears[r]).filter((m) => m).map((m) => this.layers.get(m.name)).filter((l) => l !== undefined);
        if (group.length < 2) continue;
        for (const l of group) this.groups.set(l.module.name, group);
      }
    }
    for (const name of cfg.modules_to_save ?? []) this.addCopy(name);
    if (cfg.bias !== 'none') {
      for (const m of linearModules(model)) {
        if (!m.bias) continue;
        if (cfg.bias === 'all' || this.layers.has(m.name)) this.biases.set(m.name, m.bias);
      }
    }
  }

  private addCopy(name: string): void {
    const model = this.model;
    if (name === model.embedName || model.embedName.endsWith(`.${name}`)) {
      const e = model.embedTokens;
      const data = e.kind === 'f32' ? e.tensor.data.slice() : weightToF32({ rows: e.shape[0], cols: e.shape[1], data: { kind: 'bf16', bits: e.bits } });
      const shape = e.kind === 'f32' ? e.tensor.shape : e.shape;
      this.copies.set(model.embedName, { weight: Tensor.param(data, [...shape], false), bias: null });
      return;
    }
    const m = linearModules(model).find((x) => x.name === name || x.name.endsWith(`.${name}`));
    if (!m) throw new PeftError('modules_to_save names no module of this model', { field: 'modules_to_save', expected: 'lm_head, embed_tokens or a linear module name', found: name });
    this.copies.set(m.name, {
      weight: Tensor.param(weightToF32(m.weight), [m.outFeatures, m.inFeatures], false),
      bias: m.bias ? Tensor.param(m.bias.data.slice(), [...m.bias.shape], false) : null,
    });
  }

  config(): Record<string, unknown> {
    const c = this.cfg;
    const targets = savedTargetModules(this.model, c, [...this.layers.values()].map((l) => l.module));
    return {
      alpha_pattern: c.alpha_pattern,
      auto_mapping: null,
      base_model_name_or_path: c.base_model_name_or_path,
      bias: c.bias,
      exclude_modules: c.exclude_modules,
      // PEFT sets it (with a warning) when the targets are Conv1D layers (GPT-2) and clears it for nn.Linear ones;
      // the factors' shapes are the same either way, and our weights are [out, in] in memory
      fan_in_fan_out: [...this.layers.values()].some((l) => l.module.fanInFanOut),
      inference_mode: true,
      init_lora_weights: c.init_lora_weights,
      layer_replication: null,
      layers_pattern: c.layers_pattern,
      layers_to_transform: c.layers_to_transform,
      loftq_config: {},
      lora_alpha: c.lora_alpha,
      lora_bias: c.lora_bias,
      lora_dropout: c.lora_dropout,
      megatron_config: null,
      megatron_core: 'megatron.core',
      modules_to_save: c.modules_to_save,
      peft_type: 'LORA',
      r: c.r,
      rank_pattern: c.rank_pattern,
      revision: c.revision,
      target_modules: targets,
      task_type: 'CAUSAL_LM',
      use_dora: c.use_dora,
      use_rslora: c.use_rslora,
    };
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, l] of this.layers) {
      out.set(`${peftKey(name)}.lora_A.weight`, l.A);
      out.set(`${peftKey(name)}.lora_B.weight`, l.B);
      if (l.biasB) out.set(`${peftKey(name)}.lora_B.bias`, l.biasB);
      for (const [suffix, t] of l.variant.tensors(l)) out.set(`${peftKey(name)}.${suffix}`, t);
    }
    for (const [name, c] of this.copies) {
      out.set(`${peftKey(name)}.weight`, c.weight);
      if (c.bias) out.set(`${peftKey(name)}.bias`, c.bias);
    }
    for (const [name, b] of this.biases) out.set(`${peftKey(name)}${this.layers.has(name) ? '.base_layer' : ''}.bias`, b);
    return out;
  }

  trainableParameters(): NamedTensor[] {
    return [...this.stateDict()].map(([name, tensor]) => ({ name, tensor }));
  }

  numParameters(): number {
    let n = 0;
    for (const [name, t] of this.stateDict()) if (!name.endsWith('.bias') || !this.isBaseBias(name)) n += t.size;
    return n;
  }

  /** Base biases belong to the base model: they are counted there, not as adapter parameters. */
  private isBaseBias(key: string): boolean {
    for (const [name] of this.biases) if (key === `${peftKey(name)}.base_layer.bias` || key === `${peftKey(name)}.bias`) return true;
    return false;
  }

  linearTargets(): Set<string> {
    return new Set([...this.layers.keys(), ...[...this.copies.keys()].filter((k) => k !== this.model.embedName)]);
  }

  linearPost(m: LinearModule, x: Tensor, y: Tensor, ctx: ForwardContext, rows?: RowRange): Tensor {
    const copy = this.copies.get(m.name);
    if (copy) y = rows ? this.replaceRows(x, y, copy, rows) : linear(x, f32Weight(copy.weight), copy.bias);
    const l = this.layers.get(m.name);
    if (!l || l.merged) return y;
    if (rows) {
      l.variant.forwardRows(l, x, y, rows);
      return y;
    }
    return l.variant.forward(l, x, y, ctx, this.fusedProduct(l, x, ctx));
  }

  /**
   * l's block of the fused [A…]·xᵀ of its shared-input group (computed at the group's first
   * module, for every member that can use it now), or undefined when l runs its own product.
   */
  private fusedProduct(l: LoraLayer, x: Tensor, ctx: ForwardContext): LoraDown | undefined {
    const group = this.fuseSharedInputs ? this.groups.get(l.module.name) : undefined;
    const usable = (s: LoraLayer): boolean => !s.merged && !(ctx.training && s.dropout > 0) && s.module.inFeatures === x.cols;
    if (!group || x.rows < this.fuseMinRows || !usable(l)) return undefined;
    let e = this.fusedA.get(x);
    if (!e || !e.offsets.has(l)) {
      const members = group.filter(usable);
      if (members.length < 2) return undefined;
      const offsets = new Map<LoraLayer, number>();
      let o = 0;
      for (const s of members) {
        offsets.set(s, o);
        o += s.r;
      }
      e = { t: lowRankDown(x, members.map((s) => s.A)), offsets, left: members.length };
      this.fusedA.set(x, e);
    }
    const offset = e.offsets.get(l)!;
    if (--e.left === 0) this.fusedA.delete(x);
    return { t: e.t, offset };
  }

  private replaceRows(x: Tensor, y: Tensor, copy: { weight: Tensor; bias: Tensor | null }, rows: RowRange): Tensor {
    const M = rows.end - rows.start, K = x.cols, N = y.cols;
    const yr = rowsOf(y, rows);
    native.gemm(false, true, M, N, K, 1, rowsOf(x, rows), K, copy.weight.data, K, 0, yr, N);
    if (copy.bias) native.addRow(yr, copy.bias.data, M, N);
    return y;
  }

  input(embeds: Tensor, batch: Batch, _ctx: ForwardContext): { embeds: Tensor; batch: Batch } {
    const copy = this.copies.get(this.model.embedName);
    if (!copy) return { embeds, batch };
    return { embeds: tokenEmbeddings(this.model, batch.ids, copy.weight), batch };
  }

  /**
   * W ← W + scaling·B·A (and bias ← bias + scaling·bias_B) for every layer — for DoRA
   * W ← m ⊙ (W + scaling·B·A) / ‖W + scaling·B·A‖ per row (see LoraVariant) —, into a new float32
   * weight; the pre-merge weight (float32, or bfloat16 bits) is kept for {@link unmerge}. A LoRA on
   * the lm_head of a tied-embedding model unties it first (as HF PEFT's merge_and_unload leaves
   * lm_head with its own weight): embed_tokens is unchanged, and the model config then says
   * `tie_word_embeddings: false`, so a saved merged model writes `lm_head.weight`.
   * @throws PeftError for a 4-bit weight (merge over a dequantized copy: `peft merge`).
   */
  merge(): void {
    for (const l of this.layers.values()) {
      if (l.merged) continue;
      const m = l.module;
      if (m === this.model.lmHead && this.model.config.tieWordEmbeddings && !this.tiedConfig) {
        const c = this.model.config;
        this.tiedConfig = c;
        this.model.config = { ...c, tieWordEmbeddings: false, raw: { ...c.raw, tie_word_embeddings: false } };
      }
      mergeLayer(l);
    }
  }

  /**
   * Restores every merged layer's pre-merge weight and bias exactly (the same storage: bf16 stays
   * bf16, a tied lm_head is tied again). Adapters merged one after the other unmerge in reverse order.
   * @throws PeftError when a module's weight was replaced after this adapter merged into it.
   */
  unmerge(): void {
    restoreMerged(this.layers.values());
    if (this.tiedConfig) {
      this.model.config = this.tiedConfig;
      this.tiedConfig = null;
    }
  }
}

/**
 * target_modules as adapter_config.json records them: a list or a regex as the user gave it
 * (full module paths stay full paths, so a subset of layers stays that subset); 'all-linear' or
 * the model type's default resolved, as HF PEFT 0.21 does (`_maybe_include_all_linear_layers`,
 * then `_find_minimal_target_modules` from 20 modules up), to the full module paths, or to the
 * module-name suffixes when there are at least 20 and the suffixes select exactly the targeted
 * modules (with the saved layers_to_transform / exclude_modules).
 */
export function savedTargetModules(model: CausalLM, cfg: LoraConfig, targeted: LinearModule[]): string | string[] {
  const t = cfg.target_modules;
  if (Array.isArray(t)) return [...t];
  if (typeof t === 'string' && t.toLowerCase() !== 'all-linear') return t;
  const names = new Set(targeted.map((m) => m.name));
  const suffixes = moduleSuffixes(targeted);
  const spec = { ...cfg, target_modules: suffixes };
  const same = linearModules(model).every((m) => isTargeted(spec, m.name) === names.has(m.name));
  return same && names.size >= 20 ? suffixes : [...names].sort();
}

/** The full-precision delta scaling·B·A [out, in] of a layer. */
export function loraDelta(l: LoraLayer): Float32Array {
  const out = new Float32Array(l.module.outFeatures * l.module.inFeatures);
  native.gemm(false, false, l.module.outFeatures, l.module.inFeatures, l.r, l.scaling, l.B.data, l.r, l.A.data, l.module.inFeatures, 0, out, l.module.inFeatures);
  return out;
}

/** Replaces the layer's module weight (and bias) by new float32 tensors with the delta added, keeping the old ones. */
function mergeLayer(l: LoraLayer): void {
  const m = l.module;
  if (m.weight.data.kind === 'q4')
    throw new PeftError('cannot merge LoRA into a 4-bit weight in place; use `peft merge`, which dequantizes and writes a float32 model', { field: m.name });
  const w = Tensor.param(weightToF32(m.weight), [m.outFeatures, m.inFeatures], false);
  let bias = m.bias;
  if (l.biasB) bias = Tensor.param(m.bias ? m.bias.data.slice() : new Float32Array(m.outFeatures), [m.outFeatures], false);
  l.variant.mergeInto(l, w.data, l.biasB ? bias!.data : null);
  const merged = f32Weight(w);
  installMerged(l, merged, bias);
}

/** In place: y[r, :] += s · b (differentiable w.r.t. b and y). */
export function addScaledBias(y: Tensor, b: Tensor, s: number): Tensor {
  const scaled = new Float32Array(b.size);
  native.scale(b.data, s, scaled);
  native.addRow(y.data, scaled, y.rows, y.cols);
  return record(y, [y, b], (gy) => {
    if (b.requiresGrad) {
      const tmp = new Float32Array(b.size);
      native.sumRows(gy, null, tmp, y.rows, y.cols);
      native.axpy(s, tmp, gradOf(b));
    }
  });
}

/**
 * Loads LoRA tensors (PEFT state-dict keys, `.default` adapter names dropped) into an adapter
 * created from the same config; see {@link loadStateDict} for the errors (a rank mismatch shows up
 * as a shape mismatch naming the tensor).
 */
export function loadLoraTensors(a: LoraAdapter, tensors: TensorMap, file: string): void {
  loadStateDict(a.stateDict(), tensors, file);
}

registerAdapterLoader('LORA', (model, raw, tensors, files) => {
  const cfg = parseLoraConfig(raw, files.config);
  // HF PEFT's save_embedding_layers copies of the base embedding layers: checked, then dropped
  const notes = reconcileEmbeddingSaves(model, tensors, files.tensors);
  checkLoraSizes(model, cfg, tensors, files); // before the adapter allocates r × width per module
  const a = new LoraAdapter(model, cfg);
  loadLoraTensors(a, tensors, files.tensors);
  a.loadNotes.push(...notes);
  return a;
});
