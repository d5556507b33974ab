/** Attaching an adapter directory to a loaded model for inference (filled in by the PEFT layer). */
import type { SequenceSetup } from '../generate/generate.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/llama.js';
import { PeftError } from '../errors.js';

export function attachAdapterForInference(_model: CausalLM, dir: string, _tok: Tokenizer): SequenceSetup {
  throw new PeftError('adapters are not supported yet', { file: dir });
}
