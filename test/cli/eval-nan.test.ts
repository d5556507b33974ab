/**
 * A diverged or corrupt adapter or base shows up: with NaN propagating through the kernels, the
 * loss is NaN, `peft eval` exits non-zero naming the first non-finite tensor, and training stops
 * at step 1.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile, writeSafetensorsFile, type TensorToWrite } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { createBottleneckAdapter, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { runTraining } from '../../src/train/run.js';
import { STORIES, runPeft } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-nan-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const data = join(work, 'data.jsonl');
writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `Tom had ${i} red apples and a little dog.` })).join('\n'));

const peft = runPeft;

/** A copy of stories260K with one NaN in layer 0's k_proj weight (every key of one head becomes NaN). */
function corruptBase(): string {
  const dir = join(work, 'corrupt-base');
  cpSync(STORIES, dir, { recursive: true });
  const file = join(dir, 'model.safetensors');
  const st = readSafetensorsFile(file);
  const tensors: TensorToWrite[] = [...st.tensors].map(([name, e]) => {
    const data = new Float32Array(e.data.slice().buffer);
    if (name === 'model.layers.0.self_attn.k_proj.weight') data[5 * 64 + 3] = NaN;
    return { name, dtype: 'F32', shape: e.shape, data };
  });
  writeSafetensorsFile(file, tensors, st.metadata);
  return dir;
}

describe('non-finite losses are reported', () => {
  it('NaN loss: peft eval of a corrupt adapter (NaN in a ReLU bottleneck) exits non-zero naming the first non-finite tensor', () => {
    const model = loadModel(STORIES);
    const a = createBottleneckAdapter(model, { reduction_factor: 4, non_linearity: 'relu', seed: 1 });
    new PeftModel(model).addAdapter('b', a);
    for (const m of a.modules.values()) for (let i = 0; i < m.upWeight.size; i++) m.upWeight.data[i] = 0.05 * Math.sin(i);
    const bad = a.modules.get('2.mlp')!;
    bad.downWeight.data[7] = NaN;
    const dir = join(work, 'nan-adapter');
    saveAdapter(a, dir, STORIES);
    const r = peft('eval', '--data', data, '--adapter', dir, '--model', STORIES, '--max-seq-length', '32');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/evaluation loss is NaN/);
    expect(r.stderr).toContain('base_model.model.model.layers.2.mlp_adapter.down_proj.weight');
    expect(r.stderr).toContain('NaN at element 7');
  });

  it('NaN loss: a NaN base weight (all keys of one head NaN) gives a NaN loss; training stops at step 1 and eval names the tensor', async () => {
    const base = corruptBase();
    await expect(runTraining({ model: base, data, method: 'lora', maxSteps: 2, batchSize: 4, evalEvery: 0, output: join(work, 'run') }))
      .rejects.toThrow(/training loss is NaN at step 1/);
    const r = peft('eval', '--data', data, '--model', base, '--max-seq-length', '32');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('model.layers.0.self_attn.k_proj.weight');
    expect(r.stderr).toContain(`NaN at element ${5 * 64 + 3}`);
  });
});
