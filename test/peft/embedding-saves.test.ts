/**
 * HF PEFT's default save with embedding layers (save_embedding_layers="auto"), fixtures from
 * scripts/fixtures/make_peft_embedding_saves.py:
 * - a LoRA on the tied lm_head saves `lm_head.base_layer.weight`: accepted (it equals the base,
 *   so it is ignored, with a note), logits equal PEFT's;
 * - modules_to_save on embed_tokens/lm_head after a vocabulary resize saves `modules_to_save` and
 *   `original_module` copies: accepted on the resized base, logits equal PEFT's; on the original
 *   base the vocabulary mismatch (96 vs 100) is named.
 */
import { describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from '../../src/io/safetensors.js';
import { forwardHidden, lmLogits, type CausalLM } from '../../src/models/model.js';
import { loadModel } from '../../src/models/load.js';
import { loadAdapter, LoraAdapter, PeftModel } from '../../src/peft/index.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, readJson, readTensors } from '../helpers.js';

const fxDir = (n: string): string => join(FIXTURES, 'peft', n);
const ids = readJson<{ input_ids: number[][] }>(join(fxDir('lora-lm-head-tied'), 'fixture.json')).input_ids[0];

function logitsOf(model: CausalLM): Float32Array {
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids), B: 1, T: ids.length }).hidden).data.slice()));
}

describe("HF PEFT's save_embedding_layers output", () => {
  it('embedding-layer saves: a LoRA on a tied lm_head saved with lm_head.base_layer.weight loads (copy checked and ignored, with a note); logits equal PEFT\'s', () => {
    const model = loadModel(join(FIXTURES, 'tiny', 'qwen2'));
    expect(model.config.tieWordEmbeddings).toBe(true);
    const a = loadAdapter(new PeftModel(model), fxDir('lora-lm-head-tied')) as LoraAdapter;
    expect([...a.layers.keys()]).toContain('lm_head');
    expect(a.loadNotes.join('\n')).toMatch(/lm_head\.base_layer\.weight: .*equals the base model's .*ignored/);
    const ref = readTensors(join(fxDir('lora-lm-head-tied'), 'logits.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(model), ref.data)).toBeLessThan(1e-4);
  });

  it('embedding-layer saves: modules_to_save + original_module copies after a vocab resize load on the resized base; logits equal PEFT\'s', () => {
    const model = loadModel(join(fxDir('lora-resized-vocab'), 'base'));
    expect(model.config.vocabSize).toBe(100);
    const a = loadAdapter(new PeftModel(model), fxDir('lora-resized-vocab')) as LoraAdapter;
    expect([...a.copies.keys()].sort()).toEqual(['lm_head', 'model.embed_tokens']);
    expect(a.loadNotes.length).toBe(2);
    const ref = readTensors(join(fxDir('lora-resized-vocab'), 'logits.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(model), ref.data)).toBeLessThan(1e-4);
  });

  it('embedding-layer saves: on the un-resized base the vocabulary mismatch (96 vs 100) is named', () => {
    const peft = new PeftModel(loadModel(join(FIXTURES, 'tiny', 'llama-gqa')));
    expect(() => loadAdapter(peft, fxDir('lora-resized-vocab'))).toThrow(/vocabulary of 100 tokens, the base model has 96 \(100 vs 96\)/);
    expect(peft.adapters.size).toBe(0);
  });

  it('embedding-layer saves: a saved base copy that differs from the base is refused naming the tensor', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-embsave-'));
    try {
      cpSync(fxDir('lora-lm-head-tied'), dir, { recursive: true });
      const file = join(dir, 'adapter_model.safetensors');
      const st = readSafetensorsFile(file);
      writeSafetensorsFile(file, [...st.tensors].map(([name, e]) => {
        const data = toFloat32(e).slice();
        if (name.endsWith('lm_head.base_layer.weight')) data[3] += 0.5;
        return { name, dtype: 'F32' as const, shape: e.shape, data };
      }), st.metadata);
      expect(() => loadAdapter(new PeftModel(loadModel(join(FIXTURES, 'tiny', 'qwen2'))), dir))
        .toThrow(/lm_head\.base_layer\.weight: the saved base copy differs from the base model/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
