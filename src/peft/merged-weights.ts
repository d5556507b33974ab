/**
 * Exact merge/unmerge bookkeeping shared by the methods that fold into a linear module's weight
 * (LoRA, DoRA, IA3): merging installs a new weight and keeps the pre-merge objects (float32, bf16
 * bits or a tied embedding — the same objects), unmerging puts those back, bit for bit. HF PEFT
 * instead subtracts the delta (peft/tuners/lora/layer.py `unmerge`), which is not exact.
 */
import { PeftError } from '../errors.js';
import type { LinearModule } from '../models/model.js';
import type { Tensor, Weight } from '../tensor/index.js';

/** While merged: the module's pre-merge weight and bias, and the merged weight that replaced them. */
export interface SavedWeights { weight: Weight; bias: Tensor | null; merged: Weight }

/** A layer of a merging method: its module, whether it is merged, and what merging replaced. */
export interface MergeableLayer { module: LinearModule; merged: boolean; saved?: SavedWeights | null }

/** Installs `merged` [out, in] and `bias` [out] on the layer's module, keeping the pre-merge ones. */
export function installMerged(l: MergeableLayer, merged: Weight, bias: Tensor | null): void {
  const m = l.module;
  l.saved = { weight: m.weight, bias: m.bias, merged };
  m.weight = merged;
  m.bias = bias;
  l.merged = true;
}

/**
 * Restores every merged layer's pre-merge weight and bias exactly (nothing is changed unless all
 * can be restored).
 * @throws PeftError naming the module when its weight was replaced after this adapter merged into
 *   it (adapters merged one after another unmerge in reverse order).
 */
export function restoreMerged(layers: Iterable<MergeableLayer>): void {
  const list = [...layers];
  for (const l of list)
    if (l.merged && l.module.weight !== l.saved!.merged)
      throw new PeftError('the weight changed after this adapter was merged into it (unmerge adapters in the reverse order of merging)', { field: l.module.name });
  for (const l of list) {
    if (!l.merged) continue;
    l.module.weight = l.saved!.weight;
    l.module.bias = l.saved!.bias;
    l.saved = null;
    l.merged = false;
  }
}
