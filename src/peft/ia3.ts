/**
 * (IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
 * In-Context Learning", §3.3): learned vectors that rescale activations elementwise. As in HF PEFT
 * `peft/tuners/ia3/{config,layer,model}.py`:
 * - an attention module (k_proj, v_proj by default) scales its OUTPUT: y = base(x) ⊙ l, with
 *   l saved as `ia3_l` of shape [out, 1];
 * - a feedforward module (down_proj by default) scales its INPUT: y = base(x ⊙ l), with l of
 *   shape [1, in].
 * Vectors start at ones (`init_ia3_weights`), so a fresh adapter leaves the model unchanged.
 * Several active IA3 adapters multiply their scalings, as PEFT does.
 */
import { PeftError } from '../errors.js';
import type { CausalLM, ForwardContext, LinearModule } from '../models/model.js';
import { linearModules } from '../models/model.js';
import { native } from '../native/index.js';
import { f32Weight, mulFeatures, Tensor, weightToF32 } from '../tensor/index.js';
import { ConfigReader } from './config.js';
import { loadStateDict, registerAdapterLoader } from './registry.js';
import { normalRng } from '../tensor/random.js';
import { configRegex, isTargeted, moduleSuffixes } from './inject.js';
import { peftKey } from './lora.js';
import type { AdapterMethod, NamedTensor, RowRange } from './types.js';
import { installMerged, restoreMerged, type SavedWeights } from './merged-weights.js';

/** IA3 settings with PEFT's IA3Config keys; defaults are PEFT's. */
export interface Ia3Config {
  peft_type: 'IA3';
  task_type: 'CAUSAL_LM';
  /** Module-name suffixes, a full-match regex or 'all-linear'; null = the model type's default. */
  target_modules: string | string[] | null;
  /** Which targets scale their input instead of their output; null = the model type's default. */
  feedforward_modules: string | string[] | null;
  exclude_modules: string | string[] | null;
  /** true: vectors start at ones; false: N(0, 1) (PEFT's torch.randn; for tests). */
  init_ia3_weights: boolean;
  fan_in_fan_out: boolean;
  modules_to_save: string[] | null;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  revision: string | null;
}


/** Validates an IA3 config (adapter_config.json or user options), filling PEFT's defaults. */
export function parseIa3Config(raw: Record<string, unknown>, file = 'IA3 config'): Ia3Config {
  const c = new ConfigReader(raw, file);
  const cfg: Ia3Config = {
    peft_type: 'IA3',
    task_type: 'CAUSAL_LM',
    target_modules: c.strOrList('target_modules'),
    feedforward_modules: c.strOrList('feedforward_modules'),
    exclude_modules: c.strOrList('exclude_modules'),
    init_ia3_weights: c.bool('init_ia3_weights', true),
    fan_in_fan_out: c.bool('fan_in_fan_out', false),
    modules_to_save: c.strList('modules_to_save'),
    base_model_name_or_path: c.strOrNull('base_model_name_or_path'),
    inference_mode: c.bool('inference_mode', false),
    revision: c.strOrNull('revision'),
  };
  if (cfg.modules_to_save && cfg.modules_to_save.length > 0)
    throw new PeftError('modules_to_save is not supported for IA3 adapters', { file, field: 'modules_to_save', expected: 'null', found: JSON.stringify(cfg.modules_to_save) });
  const t = cfg.target_modules, ff = cfg.feedforward_modules;
  if (Array.isArray(t) && Array.isArray(ff)) {
    const missing = ff.filter((m) => !t.includes(m));
    if (missing.length)
      throw new PeftError('feedforward_modules must be a subset of target_modules', { file, field: 'feedforward_modules', expected: `names among ${JSON.stringify(t)}`, found: JSON.stringify(missing) });
  }
  return cfg;
}

/** The IA3 vector on one linear module. */
export interface Ia3Layer {
  module: LinearModule;
  /** Scales the module's input (true) or its output (false). */
  feedforward: boolean;
  /** [1, in] when feedforward, else [out, 1]. */
  vector: Tensor;
  merged: boolean;
  /** While merged: the pre-merge weight and bias (restored exactly by unmerge) and the merged weight. */
  saved?: SavedWeights | null;
}


export class Ia3Adapter implements AdapterMethod {
  readonly peftType = 'IA3' as const;
  readonly layers = new Map<string, Ia3Layer>();
  /** The resolved target and feedforward lists (defaults applied), as written to adapter_config.json. */
  readonly targetModules: string | string[];
  readonly feedforwardModules: string | string[];

  constructor(readonly model: CausalLM, readonly cfg: Ia3Config, seed = 0, file = 'IA3 config') {
    const mt = model.config.modelType;
    // PEFT's TRANSFORMERS_MODELS_TO_IA3_{TARGET,FEEDFORWARD}_MODULES_MAPPING, from the architecture family
    const targets = cfg.target_modules ?? model.family.peft?.ia3;
    let ff = cfg.feedforward_modules ?? model.family.peft?.ia3Feedforward;
    // with explicit targets, the default feedforward modules are those of them (PEFT requires a subset)
    if (cfg.feedforward_modules === null && cfg.target_modules !== null && Array.isArray(targets) && Array.isArray(ff)) ff = ff.filter((m) => targets.includes(m));
    if (Array.isArray(targets) && Array.isArray(ff) && ff.some((m) => !targets.includes(m)))
      throw new PeftError('feedforward_modules must be a subset of target_modules', { file, field: 'feedforward_modules', expected: `names among ${JSON.stringify(targets)}`, found: JSON.stringify(ff.filter((m) => !targets.includes(m))) });
    if (!targets || !ff)
      throw new PeftError(`no default IA3 modules for model_type ${JSON.stringify(mt)}; set target_modules and feedforward_modules`, {
        file, field: targets ? 'feedforward_modules' : 'target_modules', expected: 'a list of module names', found: 'null',
      });
    const spec = { target_modules: targets, exclude_modules: cfg.exclude_modules };
    const modules = linearModules(model).filter((m) => isTargeted(spec, m.name));
    if (modules.length === 0)
      throw new PeftError('target_modules matched no linear layer', {
        file, field: 'target_modules', expected: `names such as ${moduleSuffixes(linearModules(model)).join(', ')}`, found: JSON.stringify(targets),
      });
    // PEFT saves 'all-linear' resolved to the full module paths
    this.targetModules = typeof targets === 'string' && targets.toLowerCase() === 'all-linear' ? modules.map((m) => m.name) : targets;
    this.feedforwardModules = ff;
    const rnd = normalRng(seed);
    for (const m of modules) {
      // PEFT `_check_target_module_feedforward`: a regex must match the whole name; list entries are plain suffixes
      const feedforward = typeof ff === 'string' ? configRegex(`^(?:${ff})$`, 'feedforward_modules', ff).test(m.name) : ff.some((k) => m.name.endsWith(k));
      const n = feedforward ? m.inFeatures : m.outFeatures;
      const data = new Float32Array(n);
      if (cfg.init_ia3_weights) data.fill(1);
      else for (let i = 0; i < n; i++) data[i] = rnd();
      const vector = Tensor.param(data, feedforward ? [1, n] : [n, 1], false);
      this.layers.set(m.name, { module: m, feedforward, vector, merged: false });
    }
  }

  config(): Record<string, unknown> {
    const c = this.cfg;
    return {
      auto_mapping: null,
      base_model_name_or_path: c.base_model_name_or_path,
      exclude_modules: c.exclude_modules,
      // PEFT sets it for Conv1D targets (GPT-2) and clears it for nn.Linear ones
      fan_in_fan_out: [...this.layers.values()].some((l) => l.module.fanInFanOut),
      feedforward_modules: this.feedforwardModules,
      inference_mode: true,
      init_ia3_weights: c.init_ia3_weights,
      modules_to_save: null,
      peft_type: 'IA3',
      revision: c.revision,
      target_modules: this.targetModules,
      task_type: 'CAUSAL_LM',
    };
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, l] of this.layers) out.set(`${peftKey(name)}.ia3_l`, l.vector);
    return out;
  }

  trainableParameters(): NamedTensor[] {
    return [...this.stateDict()].map(([name, tensor]) => ({ name, tensor }));
  }

  numParameters(): number {
    let n = 0;
    for (const l of this.layers.values()) n += l.vector.size;
    return n;
  }

  linearTargets(): Set<string> {
    return new Set(this.layers.keys());
  }

  linearPre(m: LinearModule, x: Tensor, _ctx: ForwardContext, rows?: RowRange): Tensor {
    const l = this.layers.get(m.name);
    if (!l || !l.feedforward || l.merged) return x;
    if (!rows) return mulFeatures(x, l.vector);
    // inference on a row range: the input may be shared with other modules (e.g. q/k/v read the
    // same normed hidden state), so scale a copy rather than x itself
    const y = Tensor.empty([...x.shape]);
    y.data.set(x.data);
    scaleRows(y, l.vector.data, rows);
    return y;
  }

  linearPost(m: LinearModule, _x: Tensor, y: Tensor, _ctx: ForwardContext, rows?: RowRange): Tensor {
    const l = this.layers.get(m.name);
    if (!l || l.feedforward || l.merged) return y;
    if (!rows) return mulFeatures(y, l.vector);
    scaleRows(y, l.vector.data, rows); // y is this module's fresh output: in place
    return y;
  }

  /**
   * Folds the vectors into the weights: W[:, j] *= l[j] (feedforward) or W[i, :] *= l[i] and
   * bias[i] *= l[i] (outputs), into new float32 tensors; the pre-merge weight (float32 or bfloat16
   * bits) and bias are kept for {@link unmerge}.
   * @throws PeftError for a 4-bit weight.
   */
  merge(): void {
    for (const l of this.layers.values()) {
      if (l.merged) continue;
      mergeScaling(l);
    }
  }

  /**
   * Restores the pre-merge weights and biases exactly (PEFT divides by l + 1e-8, which is not
   * exact; the kept originals are). Adapters merged one after the other unmerge in reverse order.
   * @throws PeftError when a module's weight was replaced after this adapter merged into it.
   */
  unmerge(): void {
    restoreMerged(this.layers.values());
  }
}

/** t[rows, :] *= v (in place, no autograd). */
function scaleRows(t: Tensor, v: Float32Array, rows: RowRange): void {
  const D = t.cols;
  const n = rows.end - rows.start;
  if (n <= 0) return;
  const r = t.data.subarray(rows.start * D, rows.end * D);
  native.mulRow(r, v, r, n, D, false);
}

function mergeScaling(l: Ia3Layer): void {
  const m = l.module;
  if (m.weight.data.kind === 'q4')
    throw new PeftError('cannot merge IA3 into a 4-bit weight in place; use `peft merge`, which dequantizes and writes a float32 model', { field: m.name });
  const w = weightToF32(m.weight);
  const s = l.vector.data;
  const I = m.inFeatures, O = m.outFeatures;
  let bias = m.bias;
  if (l.feedforward) {
    for (let o = 0; o < O; o++) for (let i = 0; i < I; i++) w[o * I + i] *= s[i];
  } else {
    for (let o = 0; o < O; o++) {
      const k = s[o];
      for (let i = 0; i < I; i++) w[o * I + i] *= k;
    }
    if (m.bias) {
      bias = Tensor.param(m.bias.data.slice(), [O], false);
      for (let o = 0; o < O; o++) bias.data[o] *= s[o];
    }
  }
  const merged = f32Weight(Tensor.param(w, [O, I], false));
  installMerged(l, merged, bias);
}

/** Creates an IA3 adapter from options with PEFT's IA3Config keys (vectors start at ones by default). */
export function createIa3Adapter(model: CausalLM, options: Partial<Ia3Config> & Record<string, unknown> = {}, seed = 0): Ia3Adapter {
  return new Ia3Adapter(model, parseIa3Config(options, 'IA3 options'), seed, 'IA3 options');
}

registerAdapterLoader('IA3', (model, raw, tensors, files) => {
  const a = new Ia3Adapter(model, parseIa3Config(raw, files.config), 0, files.config);
  loadStateDict(a.stateDict(), tensors, files.tensors);
  return a;
});
