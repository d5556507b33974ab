/** Loading an adapter directory named on the command line. */
import type { SequenceSetup } from '../generate/generate.js';
import { checkBase } from '../lifecycle/provenance.js';
import type { CausalLM } from '../models/model.js';
import { attachAdapters } from '../peft/attach.js';
import type { PeftModel } from '../peft/peft-model.js';

/**
 * Loads one adapter onto the model for generation or evaluation. With `base.dir`, an adapter
 * whose training_provenance.json records another base (by content hash) is refused unless
 * `base.allowMismatch` (src/lifecycle/provenance.ts checkBase).
 */
export function attachAdapterForInference(model: CausalLM, dir: string, base?: { dir: string; allowMismatch?: boolean }): SequenceSetup & { peft: PeftModel } {
  if (base) {
    const c = checkBase(dir, base.dir, base.allowMismatch);
    if (c.status === 'mismatch') process.stderr.write(`peft: warning: ${dir} was trained on another base model (${c.differences[0]}); running it anyway (--allow-base-mismatch)\n`);
  }
  const { peft, setup } = attachAdapters(model, [{ name: 'default', dir }]);
  for (const note of (peft.get('default') as { loadNotes?: string[] }).loadNotes ?? []) process.stderr.write(`peft: note: ${note}\n`);
  return { ...setup, peft };
}
