/**
 * Whole training runs (as `peft train` does them): full fine-tuning checkpoints resume to the same
 * final model and saving keeps the other files of the output directory; IA3 with explicit target
 * modules saves an adapter that loads; a run refuses to write over its own base model.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { attachAdapters } from '../../src/peft/attach.js';
import { runTraining } from '../../src/train/run.js';
import { STORIES } from '../helpers.js';

function dataFile(dir: string): string {
  const f = join(dir, 'data.jsonl');
  writeFileSync(f, Array.from({ length: 30 }, (_, i) => JSON.stringify({ text: `The miller's daughter spun ${i} bales of straw into gold.` })).join('\n'));
  return f;
}

describe('training runs', () => {
  it('full fine-tuning: resume from a checkpoint reaches the same model; saving keeps other files', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-run-'));
    const data = dataFile(dir);
    const common = { data, method: 'full' as const, maxSteps: 4, batchSize: 4, lr: 1e-3, evalEvery: 0, seed: 3 };
    const a = join(dir, 'a'), b = join(dir, 'b');
    await runTraining({ ...common, output: a });
    await runTraining({ ...common, output: b, checkpointEvery: 2 });
    writeFileSync(join(b, 'notes.txt'), 'mine');
    expect(readFileSync(join(b, 'model.safetensors')).equals(readFileSync(join(a, 'model.safetensors')))).toBe(true);
    // as if interrupted after step 2: continue from checkpoint-2 to step 4, into the same directory
    await runTraining({ ...common, output: b, resume: join(b, 'checkpoint-2') });
    expect(readFileSync(join(b, 'model.safetensors')).equals(readFileSync(join(a, 'model.safetensors')))).toBe(true);
    for (const f of ['notes.txt', 'metrics.jsonl', 'checkpoint-2/params.safetensors', 'checkpoint-2/optimizer.safetensors', 'config.json', 'tokenizer.json'])
      expect(existsSync(join(b, f)), f).toBe(true);
    expect(existsSync(join(a, 'metrics.jsonl'))).toBe(true);
    // the log holds each step once: what the interrupted run logged after its checkpoint is dropped
    const steps = readFileSync(join(b, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'train').map((m) => m.step);
    expect(steps).toEqual([1, 2, 3, 4]);
  });

  it('IA3 with explicit target modules trains an adapter that loads', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-run-'));
    const out = join(dir, 'ia3');
    await runTraining({ data: dataFile(dir), method: 'ia3', targetModules: ['q_proj', 'v_proj'], maxSteps: 2, batchSize: 4, evalEvery: 0, output: out });
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
    expect(cfg.feedforward_modules).toEqual([]);
    expect(() => attachAdapters(loadModel(STORIES), [{ name: 'x', dir: out }])).not.toThrow();
  });

  it('refuses to write over the base model or a file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-run-'));
    const data = dataFile(dir);
    await expect(runTraining({ data, method: 'full', maxSteps: 1, output: STORIES })).rejects.toThrow(/output directory is the base model/);
    const file = join(dir, 'afile');
    writeFileSync(file, 'x');
    await expect(runTraining({ data, maxSteps: 1, output: file })).rejects.toThrow(/not a directory/);
  });
});
