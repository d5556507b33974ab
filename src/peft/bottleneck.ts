/**
 * Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP";
 * Pfeiffer et al. 2020, "AdapterFusion"): a small residual MLP on a sublayer's output y,
 *
 *   out = y + up(act(down(y)))     down: [bottleneck, hidden] + bias, up: [hidden, bottleneck] + bias,
 *
 * applied after the attention output (after o_proj) and after the MLP output (after down_proj) of
 * each decoder layer for `houlsby`, after the MLP only for `pfeiffer` — in both cases before the
 * residual add. The down-projection is initialised like nn.Linear (Kaiming-uniform weight and
 * uniform bias, bound 1/√hidden); the up-projection's weight AND bias start at zero, so an
 * untrained adapter leaves the model's output exactly unchanged.
 *
 * HF PEFT has no format for these. We save `peft_type: "BOTTLENECK"` with the keys of
 * {@link BottleneckConfig} and tensors
 *   base_model.model.model.layers.{i}.{attention|mlp}_adapter.{down|up}_proj.{weight|bias}
 * (down_proj.weight [bottleneck, hidden], down_proj.bias [bottleneck], up_proj.weight
 * [hidden, bottleneck], up_proj.bias [hidden]).
 */
import { PeftError } from '../errors.js';
import type { CausalLM, DecoderLayer, ForwardContext } from '../models/model.js';
import { Act, native } from '../native/index.js';
import { activation, add, allocF32, f32Weight, linear, Tensor } from '../tensor/index.js';
import { ConfigReader } from './config.js';
import { loadStateDict, registerAdapterLoader, type TensorMap } from './registry.js';
import { checkBottleneckSize } from './preflight.js';
import { uniformRng } from '../tensor/random.js';
import type { AdapterMethod, NamedTensor, RowRange } from './types.js';

export type BottleneckPlacement = 'houlsby' | 'pfeiffer';
export type BottleneckActivation = 'relu' | 'gelu' | 'gelu_tanh' | 'silu';
export const BOTTLENECK_ACTIVATIONS: readonly BottleneckActivation[] = ['relu', 'gelu', 'gelu_tanh', 'silu'];

/** adapter_config.json of a bottleneck adapter. */
export interface BottleneckConfig {
  peft_type: 'BOTTLENECK';
  task_type: 'CAUSAL_LM';
  /** bottleneck = floor(hidden / reduction_factor) unless bottleneck_size is given. */
  reduction_factor: number;
  /** Explicit bottleneck width (wins over reduction_factor). Saved resolved. */
  bottleneck_size: number | null;
  /** relu (default), gelu (exact, erf), gelu_tanh, silu. */
  non_linearity: BottleneckActivation;
  /** houlsby: after attention and after the MLP; pfeiffer: after the MLP only. */
  placement: BottleneckPlacement;
  /** Layer indices that get adapters (null = all). */
  layers_to_transform: number | number[] | null;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
}

export const BOTTLENECK_DEFAULTS: BottleneckConfig = {
  peft_type: 'BOTTLENECK',
  task_type: 'CAUSAL_LM',
  reduction_factor: 16,
  bottleneck_size: null,
  non_linearity: 'relu',
  placement: 'houlsby',
  layers_to_transform: null,
  base_model_name_or_path: null,
  inference_mode: false,
};

/** Validates a bottleneck config (adapter_config.json or user options), filling the defaults. */
export function parseBottleneckConfig(raw: Record<string, unknown>, file = 'bottleneck config'): BottleneckConfig {
  const c = new ConfigReader(raw, file);
  const reduction = c.num('reduction_factor', BOTTLENECK_DEFAULTS.reduction_factor, Number.MIN_VALUE);
  return {
    ...BOTTLENECK_DEFAULTS,
    reduction_factor: reduction,
    bottleneck_size: c.has('bottleneck_size') ? c.int('bottleneck_size', 0, 1) : null,
    non_linearity: c.str('non_linearity', 'relu', BOTTLENECK_ACTIVATIONS),
    placement: c.str('placement', 'houlsby', ['houlsby', 'pfeiffer'] as const),
    layers_to_transform: c.intOrList('layers_to_transform'),
    base_model_name_or_path: c.strOrNull('base_model_name_or_path'),
    inference_mode: c.bool('inference_mode', false),
  };
}

export type BottleneckSite = 'attention' | 'mlp';

/** One adapter module: after the attention or the MLP output of a layer. */
export interface BottleneckModule {
  layer: number;
  site: BottleneckSite;
  /** [bottleneck, hidden] */
  downWeight: Tensor;
  /** [bottleneck] */
  downBias: Tensor;
  /** [hidden, bottleneck] */
  upWeight: Tensor;
  /** [hidden] */
  upBias: Tensor;
}

/** The key prefix of a module in adapter_model.safetensors. */
export function bottleneckKey(layer: number, site: BottleneckSite): string {
  return `base_model.model.model.layers.${layer}.${site}_adapter`;
}


export class BottleneckAdapter implements AdapterMethod {
  readonly peftType = 'BOTTLENECK' as const;
  /** Keyed `${layer}.${site}`. */
  readonly modules = new Map<string, BottleneckModule>();
  readonly bottleneck: number;

  constructor(readonly model: CausalLM, readonly cfg: BottleneckConfig, seed = 0) {
    const H = model.config.hiddenSize;
    const b = cfg.bottleneck_size ?? Math.floor(H / cfg.reduction_factor);
    if (!Number.isInteger(b) || b < 1)
      throw new PeftError('bottleneck size must be at least 1', {
        field: cfg.bottleneck_size !== null ? 'bottleneck_size' : 'reduction_factor',
        expected: `reduction_factor <= ${H} (hidden size) or bottleneck_size >= 1`,
        found: cfg.bottleneck_size !== null ? String(cfg.bottleneck_size) : `${cfg.reduction_factor} (hidden ${H} → ${b})`,
      });
    this.bottleneck = b;
    const lt = cfg.layers_to_transform;
    const layers = lt === null ? model.layers.map((l) => l.index) : Array.isArray(lt) ? lt : [lt];
    for (const i of layers) if (!model.layers.some((l) => l.index === i))
      throw new PeftError('layers_to_transform names a layer the model does not have', { field: 'layers_to_transform', expected: `0..${model.layers.length - 1}`, found: String(i) });
    const sites: BottleneckSite[] = cfg.placement === 'houlsby' ? ['attention', 'mlp'] : ['mlp'];
    const r0 = uniformRng(seed);
    const bound = 1 / Math.sqrt(H); // nn.Linear: kaiming_uniform_(a=√5) → 1/√fan_in; bias U(±1/√fan_in)
    for (const layer of model.layers) {
      if (!layers.includes(layer.index)) continue;
      for (const site of sites) {
        const downWeight = Tensor.param(new Float32Array(b * H), [b, H], false);
        const downBias = Tensor.param(new Float32Array(b), [b], false);
        for (let i = 0; i < downWeight.size; i++) downWeight.data[i] = (r0() * 2 - 1) * bound;
        for (let i = 0; i < b; i++) downBias.data[i] = (r0() * 2 - 1) * bound;
        this.modules.set(`${layer.index}.${site}`, {
          layer: layer.index, site, downWeight, downBias,
          upWeight: Tensor.param(new Float32Array(H * b), [H, b], false),
          upBias: Tensor.param(new Float32Array(H), [H], false),
        });
      }
    }
  }

  config(): Record<string, unknown> {
    const c = this.cfg;
    return {
      base_model_name_or_path: c.base_model_name_or_path,
      bottleneck_size: this.bottleneck,
      inference_mode: true,
      layers_to_transform: c.layers_to_transform,
      non_linearity: c.non_linearity,
      peft_type: 'BOTTLENECK',
      placement: c.placement,
      reduction_factor: c.reduction_factor,
      task_type: 'CAUSAL_LM',
    };
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const m of this.modules.values()) {
      const k = bottleneckKey(m.layer, m.site);
      out.set(`${k}.down_proj.weight`, m.downWeight);
      out.set(`${k}.down_proj.bias`, m.downBias);
      out.set(`${k}.up_proj.weight`, m.upWeight);
      out.set(`${k}.up_proj.bias`, m.upBias);
    }
    return out;
  }

  trainableParameters(): NamedTensor[] {
    return [...this.stateDict()].map(([name, tensor]) => ({ name, tensor }));
  }

  numParameters(): number {
    let n = 0;
    for (const t of this.stateDict().values()) n += t.size;
    return n;
  }

  afterAttention(layer: DecoderLayer, y: Tensor, _ctx: ForwardContext, rows?: RowRange): Tensor {
    return this.apply(this.modules.get(`${layer.index}.attention`), y, rows);
  }

  afterMlp(layer: DecoderLayer, y: Tensor, _ctx: ForwardContext, rows?: RowRange): Tensor {
    return this.apply(this.modules.get(`${layer.index}.mlp`), y, rows);
  }

  private apply(m: BottleneckModule | undefined, y: Tensor, rows?: RowRange): Tensor {
    if (!m) return y;
    if (rows) {
      this.applyRows(m, y, rows);
      return y;
    }
    const h = activation(linear(y, f32Weight(m.downWeight), m.downBias), this.cfg.non_linearity);
    return add(y, linear(h, f32Weight(m.upWeight), m.upBias));
  }

  /** Inference on a row range, in place: y[rows] += up(act(down(y[rows]))). */
  private applyRows(m: BottleneckModule, y: Tensor, rows: RowRange): void {
    const M = rows.end - rows.start, H = y.cols, b = this.bottleneck;
    if (M <= 0) return;
    const yr = y.data.subarray(rows.start * H, rows.end * H);
    const h = allocF32(M * b);
    native.gemm(false, true, M, b, H, 1, yr, H, m.downWeight.data, H, 0, h, b);
    native.addRow(h, m.downBias.data, M, b);
    const a = allocF32(M * b);
    native.actForward(Act[this.cfg.non_linearity], h, a);
    native.gemm(false, true, M, H, b, 1, a, b, m.upWeight.data, b, 1, yr, H);
    native.addRow(yr, m.upBias.data, M, H);
  }
}

/** A bottleneck adapter for `model` (options as in adapter_config.json, plus an init seed). */
export function createBottleneckAdapter(model: CausalLM, options: Partial<Omit<BottleneckConfig, 'peft_type' | 'task_type'>> & { seed?: number } = {}): BottleneckAdapter {
  const { seed, ...rest } = options;
  return new BottleneckAdapter(model, parseBottleneckConfig(rest as Record<string, unknown>, 'bottleneck options'), seed ?? 0);
}

/** Loads saved tensors into an adapter built from the same config (errors: {@link loadStateDict}). */
export function loadBottleneckTensors(a: BottleneckAdapter, tensors: TensorMap, file: string): void {
  loadStateDict(a.stateDict(), tensors, file);
}

registerAdapterLoader('BOTTLENECK', (model, raw, tensors, files) => {
  const cfg = parseBottleneckConfig(raw, files.config);
  checkBottleneckSize(model, cfg, tensors, files); // before the adapter allocates its projections
  const a = new BottleneckAdapter(model, cfg);
  loadBottleneckTensors(a, tensors, files.tensors);
  return a;
});
