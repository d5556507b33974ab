/** Loading an adapter directory named on the command line. */
import type { SequenceSetup } from '../generate/generate.js';
import type { CausalLM } from '../models/model.js';
import { attachAdapters } from '../peft/attach.js';
import type { PeftModel } from '../peft/peft-model.js';

/** Loads one adapter onto the model for generation or evaluation. */
export function attachAdapterForInference(model: CausalLM, dir: string): SequenceSetup & { peft: PeftModel } {
  const { peft, setup } = attachAdapters(model, [{ name: 'default', dir }]);
  return { ...setup, peft };
}
