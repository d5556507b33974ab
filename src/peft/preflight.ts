/**
 * Checks of a saved adapter's config against its tensor headers and the base model's dimensions,
 * run BEFORE the adapter allocates anything: a 683-byte adapter_config.json with `r: 10000000`
 * must be a PeftError naming the field, not gigabytes of zeros followed by a shape mismatch.
 *
 * The bound on a size is the base model's widest dimension (max of hidden, intermediate and vocab
 * sizes over its linear layers): no real LoRA rank or bottleneck width exceeds it, and anything up
 * to it costs at most a few times the base model's own largest weight.
 */
import { PeftError } from '../errors.js';
import { linearModules, type CausalLM } from '../models/model.js';
import type { LoraConfig } from './config.js';
import { patternKey } from './inject.js';
import type { AdapterFiles, TensorMap } from './registry.js';

/** The largest in/out width of the model's linear layers (the bound on adapter widths). */
export function widestDimension(model: CausalLM): number {
  let w = model.config.hiddenSize;
  for (const m of linearModules(model)) w = Math.max(w, m.inFeatures, m.outFeatures);
  return w;
}

function tooLarge(files: AdapterFiles, field: string, value: number, bound: number): never {
  throw new PeftError('adapter size larger than the base model allows', {
    file: files.config, field, expected: `at most ${bound} (the base model's widest layer)`, found: String(value),
  });
}

/**
 * LoRA: `r` and every `rank_pattern` value are at most the widest base dimension, and the rank the
 * config gives each module equals the rows of that module's `lora_A.weight` in the tensor file.
 * @throws PeftError naming adapter_config.json and `r` / `rank_pattern.<key>`.
 */
export function checkLoraSizes(model: CausalLM, cfg: LoraConfig, tensors: TensorMap, files: AdapterFiles): void {
  const bound = widestDimension(model);
  if (cfg.r > bound) tooLarge(files, 'r', cfg.r, bound);
  for (const [k, v] of Object.entries(cfg.rank_pattern)) if (v > bound) tooLarge(files, `rank_pattern.${k}`, v, bound);
  for (const [key, t] of tensors) {
    const m = /^base_model\.model\.(.+)\.lora_A\.weight$/.exec(key);
    if (!m) continue;
    const rk = patternKey(cfg.rank_pattern, m[1]);
    const r = rk ? cfg.rank_pattern[rk] : cfg.r;
    if (t.shape.length !== 2 || t.shape[0] !== r) {
      throw new PeftError('adapter config rank does not match the saved tensors', {
        file: files.config, field: rk ? `rank_pattern.${rk}` : 'r',
        expected: `${t.shape.length === 2 ? t.shape[0] : '?'} (rows of ${key} [${t.shape.join(', ')}] in ${files.tensors})`, found: String(r),
      });
    }
  }
}

/**
 * Bottleneck adapters: the width (bottleneck_size, or hidden / reduction_factor) is at most the
 * widest base dimension and equals the rows of the saved down-projections.
 * @throws PeftError naming adapter_config.json and `bottleneck_size` / `reduction_factor`.
 */
export function checkBottleneckSize(model: CausalLM, cfg: { bottleneck_size: number | null; reduction_factor: number }, tensors: TensorMap, files: AdapterFiles): void {
  const field = cfg.bottleneck_size !== null ? 'bottleneck_size' : 'reduction_factor';
  const b = cfg.bottleneck_size ?? Math.floor(model.config.hiddenSize / cfg.reduction_factor);
  const bound = widestDimension(model);
  if (b > bound) tooLarge(files, field, cfg.bottleneck_size ?? cfg.reduction_factor, bound);
  for (const [key, t] of tensors) {
    if (!/_adapter\.down_proj\.weight$/.test(key)) continue;
    if (t.shape.length !== 2 || t.shape[0] !== b) {
      throw new PeftError('adapter config bottleneck width does not match the saved tensors', {
        file: files.config, field, expected: `width ${t.shape.length === 2 ? t.shape[0] : '?'} (rows of ${key} [${t.shape.join(', ')}] in ${files.tensors})`, found: `width ${b}`,
      });
    }
  }
}
