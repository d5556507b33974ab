/**
 * Prompt-tuning loss convention: by default training and evaluation score what HF PEFT scores with
 * labels = input_ids (the last virtual token also predicts each row's first token), so losses
 * match PEFT's; 'next-token' scores the real tokens only; `peft eval --json` states which.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { createPromptAdapter, loadAdapter, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { evaluate } from '../../src/train/evaluate.js';
import { collate } from '../../src/train/data/batching.js';
import { batchLoss, firstTargetCount } from '../../src/train/methods.js';
import { defaultContext } from '../../src/models/model.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, readJson, ROOT, STORIES } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-prompt-loss-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('prompt-tuning loss convention', () => {
  const fx = readJson<{ input_ids: number[][]; loss: { value: number } }>(join(FIXTURES, 'peft', 'prompt-random', 'fixture.json'));
  const examples = fx.input_ids.map((r) => ({ ids: Int32Array.from(r), targets: new Uint8Array(r.length).fill(1) }));

  it("prompt loss convention: evaluate() by default gives HF PEFT's prompt-tuning loss (labels = input_ids) within 1e-5", () => {
    const model = loadModel(join(FIXTURES, 'tiny', 'llama-gqa'));
    loadAdapter(new PeftModel(model), join(FIXTURES, 'peft', 'prompt-random'), 'p');
    const peftLike = evaluate(model, examples, { maxSeqLength: 64, batchSize: 2 });
    expect(peftLike.lossConvention).toBe('peft');
    expect(peftLike.virtualTokens).toBe(6);
    expect(peftLike.tokens).toBe(2 * 11);
    expect(Math.abs(peftLike.loss - fx.loss.value)).toBeLessThan(1e-5);
    const nextToken = evaluate(model, examples, { maxSeqLength: 64, batchSize: 2, lossConvention: 'next-token' });
    expect(nextToken.tokens).toBe(2 * 10);
    expect(Math.abs(nextToken.loss - fx.loss.value)).toBeGreaterThan(1e-3);
  });

  it('prompt loss convention: the training loss counts the first-token targets (completion-only rows do not)', () => {
    const model = loadModel(join(FIXTURES, 'tiny', 'llama-gqa'));
    loadAdapter(new PeftModel(model), join(FIXTURES, 'peft', 'prompt-random'), 'p');
    const prompt = { ids: examples[1].ids, targets: Uint8Array.from(examples[1].ids, (_, i) => (i < 4 ? 0 : 1)) };
    const tb = collate([[examples[0]], [prompt]], { packed: false });
    expect(Array.from(tb.firstLabels)).toEqual([fx.input_ids[0][0], -100]);
    expect(firstTargetCount(tb)).toBe(1);
    const r = noGrad(() => withArena(() => batchLoss(model, tb, 1, defaultContext(false))));
    expect(r.count).toBe(tb.numTargets + 1);
  });

  it('prompt loss convention: peft eval --json states the convention and the scored tokens', () => {
    const model = loadModel(STORIES);
    const a = createPromptAdapter(model, { num_virtual_tokens: 4 }, undefined, 3);
    new PeftModel(model).addAdapter('p', a);
    const dir = join(work, 'prompt');
    saveAdapter(a, dir, STORIES);
    const data = join(work, 'data.jsonl');
    writeFileSync(data, ['One day a cat sat.', 'The sun was warm.'].map((text) => JSON.stringify({ text })).join('\n'));
    const run = (...extra: string[]): Record<string, unknown> => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli', 'bin.ts'), 'eval', '--data', data, '--adapter', dir, '--model', STORIES, '--json', ...extra],
        { cwd: ROOT, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      return JSON.parse(r.stdout) as Record<string, unknown>;
    };
    const peftLike = run();
    expect(peftLike.loss_convention).toBe('peft');
    expect(peftLike.virtual_tokens).toBe(4);
    expect(String(peftLike.loss_convention_note)).toMatch(/last virtual token predicts each row's first token/);
    const nextToken = run('--loss-convention', 'next-token');
    expect(nextToken.loss_convention).toBe('next-token');
    expect(nextToken.tokens).toBe((peftLike.tokens as number) - 2);
  });
});
