/**
 * HF PEFT's saves with embedding layers (`save_pretrained(save_embedding_layers="auto")`, the
 * default; `peft/utils/save_and_load.py` get_peft_model_state_dict, PEFT 0.21). When an embedding
 * layer is targeted (a LoRA on lm_head) or the vocabulary was resized, PEFT adds the base copies:
 * - `base_model.model.<m>.base_layer.weight` for a LoRA-wrapped embed_tokens / lm_head;
 * - `base_model.model.<m>.original_module.weight` and `<m>.modules_to_save.weight` for
 *   modules_to_save on them (the latter equal to the usual `<m>.weight` copy).
 * PEFT loads these into the base. Here each base copy is checked against the base model's weight
 * and dropped when it equals it (said in the returned notes); a copy that differs is refused, and
 * a vocabulary of another size is named as such (the adapter belongs to a resized base).
 */
import { PeftError } from '../errors.js';
import type { CausalLM } from '../models/model.js';
import { weightToF32 } from '../tensor/index.js';
import type { TensorMap } from './registry.js';

const PREFIX = 'base_model.model.';

/** The base weight [rows, cols] of an embedding-layer module name, or null for other modules. */
function baseEmbeddingWeight(model: CausalLM, module: string): { data: Float32Array; shape: [number, number] } | null {
  if (module === 'lm_head' || module.endsWith('.lm_head')) {
    const w = model.lmHead.weight;
    return { data: weightToF32(w), shape: [w.rows, w.cols] };
  }
  if (/(^|\.)embed_tokens$/.test(module)) {
    const e = model.embedTokens;
    if (e.kind === 'f32') return { data: e.tensor.data, shape: [e.tensor.shape[0], e.tensor.shape[1]] };
    return { data: weightToF32({ rows: e.shape[0], cols: e.shape[1], data: { kind: 'bf16', bits: e.bits } }), shape: e.shape };
  }
  return null;
}

function vocabError(file: string, key: string, found: number, base: number): PeftError {
  return new PeftError(
    `the adapter was saved for a vocabulary of ${found} tokens, the base model has ${base} (${found} vs ${base}): it was trained on a base whose embeddings were resized; load that resized base`,
    { file, field: key, expected: `${base} rows (the base model's vocab_size)`, found: `${found} rows` });
}

/**
 * Checks and removes PEFT's embedding-layer base copies from `tensors` (in place); renames a lone
 * `<m>.modules_to_save.weight` to `<m>.weight`. Returns one note per dropped tensor.
 * @throws PeftError naming the file and tensor: a vocabulary size mismatch (both sizes), or a base
 *   copy that differs from the base model's weight (max |Δ|).
 */
export function reconcileEmbeddingSaves(model: CausalLM, tensors: TensorMap, file: string): string[] {
  const notes: string[] = [];
  const V = model.config.vocabSize;
  // any embedding-layer tensor with another vocabulary: name that first, it is the real cause
  for (const [key, t] of tensors) {
    const m = /^base_model\.model\.(.+?)\.(?:base_layer\.|original_module\.|modules_to_save\.)?weight$/.exec(key);
    if (!m || !baseEmbeddingWeight(model, m[1])) continue;
    if (/lora_[AB]/.test(key)) continue;
    if (t.shape[0] !== V) throw vocabError(file, key, t.shape[0], V);
  }
  for (const key of [...tensors.keys()]) {
    const m = /^base_model\.model\.(.+)\.(base_layer|original_module|modules_to_save)\.weight$/.exec(key);
    if (!m) continue;
    const [, module, kind] = m;
    const base = baseEmbeddingWeight(model, module);
    if (!base) continue;
    const t = tensors.get(key)!;
    if (kind === 'modules_to_save') {
      const plain = `${PREFIX}${module}.weight`;
      const other = tensors.get(plain);
      if (!other) tensors.set(plain, t);
      else if (maxAbsDiff(other.data, t.data) !== 0)
        throw new PeftError('the two saved copies of a module differ', { file, field: key, expected: `equal to ${plain}`, found: `max |Δ| ${maxAbsDiff(other.data, t.data)}` });
      tensors.delete(key);
      continue;
    }
    if (t.shape.length !== 2 || t.shape[1] !== base.shape[1])
      throw new PeftError('saved base copy does not fit the base model', { file, field: key, expected: `[${base.shape}]`, found: `[${t.shape}]` });
    const d = maxAbsDiff(t.data, base.data);
    if (d > 1e-6)
      throw new PeftError('the saved base copy differs from the base model (the adapter was trained on another base; HF PEFT would overwrite the base with it)',
        { file, field: key, expected: `the base model's ${module}.weight`, found: `max |Δ| ${d.toExponential(2)}` });
    tensors.delete(key);
    notes.push(`${file}: ${key}: HF PEFT's saved copy of the base ${module} weight equals the base model's (max |Δ| ${d}); not needed, ignored`);
  }
  return notes;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}
