/**
 * The second bundled real model, models/tinystories656K (BPE tokenizer.json, its own EOS
 * `<|end_story|>` = 2), next to stories260K: the tokenizer and greedy generation reproduce the
 * transformers reference in its README, generation stops at EOS, `--model tinystories656K`
 * resolves to it, and `peft train` (runTraining) works on it and on every tiny architecture
 * checkpoint (LoRA on all linear layers, 2 steps, finite losses, adapter saved).
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate } from '../../src/generate/generate.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { BUNDLED_MODELS, PACKAGE_ROOT, resolveModel } from '../../src/paths.js';
import { runTraining } from '../../src/train/run.js';
import { FIXTURES } from '../helpers.js';

const DIR = join(PACKAGE_ROOT, 'models', 'tinystories656K');
// README "Verification": transformers 5.18 greedy, prompt "Once upon a time" with BOS, 60 new tokens
const REF_IDS = [1, 80, 147, 201, 282, 57, 313, 598, 303, 1049, 1468, 267, 628, 333, 94, 1210, 263, 251, 604, 94, 1030, 94, 1030, 94, 436, 220, 1053, 615, 303, 328, 552, 319, 1269, 163, 1945, 897, 645, 1188, 108, 319, 135, 448, 563, 1799, 1380, 1067, 163, 1855, 325, 825, 1896, 274, 108, 521, 1858, 204, 1803, 94, 1252, 444, 666, 309, 448, 825, 266, 243];

describe('bundled tinystories656K', () => {
  const model = loadModel(DIR);
  const tok = loadTokenizer(DIR);

  it('loads as a Llama (2 layers, hidden 128, 8/4 heads, vocab 2048, tied) with EOS 2', () => {
    const c = model.config;
    expect([c.architecture, c.numLayers, c.hiddenSize, c.numHeads, c.numKvHeads, c.vocabSize, c.tieWordEmbeddings]).toEqual(['LlamaForCausalLM', 2, 128, 8, 4, 2048, true]);
    expect(c.eosTokenIds).toEqual([2]);
    expect(tok.vocabSize).toBe(2048);
  });

  it('BPE tokenizer: "Once upon a time" → [1, 80, 147, 201, 282, 57], decodes back', () => {
    const ids = tok.encode('Once upon a time');
    expect(ids).toEqual(REF_IDS.slice(0, 6));
    expect(tok.decode(ids)).toBe('Once upon a time');
  });

  it('greedy generation reproduces transformers\' 60 tokens exactly', () => {
    const r = generate(model, REF_IDS.slice(0, 6), { maxNewTokens: 60, temperature: 0 });
    expect(r.ids).toEqual(REF_IDS);
    expect(r.finishReason).toBe('length');
  });

  it('generation stops at the model\'s own EOS (<|end_story|>, id 2)', () => {
    const r = generate(model, REF_IDS.slice(0, 6), { maxNewTokens: 300, temperature: 0 });
    // the README: greedy from this prompt emits <|end_story|> after ~135 tokens; the stop token is not returned
    expect(r.finishReason).toBe('stop');
    expect(r.ids.length).toBeGreaterThan(100);
    expect(r.ids.length).toBeLessThan(200);
    expect(r.ids).not.toContain(2);
    expect(tok.decode(r.ids)).toMatch(/^Once upon a time, a little girl named Lily/);
  });

  it('--model tinystories656K names the bundled directory; other values pass through', () => {
    expect(BUNDLED_MODELS).toContain('tinystories656K');
    expect(resolveModel('tinystories656K')).toBe(DIR);
    expect(resolveModel(undefined)).toBe(join(PACKAGE_ROOT, 'models', 'stories260K'));
    expect(resolveModel('/some/dir')).toBe('/some/dir');
  });
});

describe('peft train on tinystories656K and on each tiny architecture checkpoint', () => {
  const story = 'Once upon a time, a little girl named Lily lived in a small house. She liked to play with her dog.\n\n';
  for (const [name, dir] of [
    ['tinystories656K', DIR],
    ...['qwen3', 'qwen2.5', 'mistral-sw', 'smollm3', 'gemma2', 'gemma3'].map((n) => [n, join(FIXTURES, 'tiny', n)]),
  ]) {
    it(`${name}: LoRA trains 2 steps with a finite loss and saves an adapter`, async () => {
      const tmp = mkdtempSync(join(tmpdir(), `peft-train-${name}-`));
      try {
        const data = join(tmp, 'data.txt');
        writeFileSync(data, story.repeat(12));
        const r = await runTraining({ model: dir, data, method: 'lora', targetModules: 'all-linear', maxSteps: 2, batchSize: 2, maxSeqLength: 32, lr: 1e-2, evalEvery: 0, seed: 1, output: join(tmp, 'out') });
        const losses = r.result.steps.map((h) => h.loss);
        expect(losses.length).toBe(2);
        for (const l of losses) expect(Number.isFinite(l)).toBe(true);
        expect(r.outputDir).not.toBeNull();
        expect(existsSync(join(r.outputDir!, 'adapter_model.safetensors'))).toBe(true);
      } finally {
        rmSync(tmp, { recursive: true, force: true });
      }
    });
  }
});
