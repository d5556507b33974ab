/**
 * Attaching saved adapters to a model for inference: a PeftModel holding them, and the
 * per-sequence setup generation needs (prefix tuning pre-fills the KV cache; prompt tuning feeds
 * its virtual tokens first and shifts positions).
 */
import type { SequenceSetup } from '../generate/generate.js';
import type { CausalLM } from '../models/model.js';
import { loadAdapter } from './format.js';
import { PeftModel, sequenceSetup } from './peft-model.js';

export { sequenceSetup };

/** Loads adapter directories (name → dir) onto `model`; the first becomes active. */
export function attachAdapters(model: CausalLM, dirs: Array<{ name: string; dir: string }>): { peft: PeftModel; setup: SequenceSetup } {
  const peft = new PeftModel(model);
  dirs.forEach(({ name, dir }, i) => loadAdapter(peft, dir, name, i === 0));
  return { peft, setup: sequenceSetup(peft) };
}
