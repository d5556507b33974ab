/**
 * target_modules saved as given: a LoRA trained on full module paths of a subset of layers saves
 * those paths (not bare suffixes, which would select the module in every layer), reloads, and
 * evaluates; 'all-linear' is saved resolved as HF PEFT does (full paths; suffixes from 20 modules up
 * when they select exactly the targeted modules).
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { attachAdapters } from '../../src/peft/attach.js';
import { LoraAdapter, parseLoraConfig, saveAdapter } from '../../src/peft/index.js';
import { evaluateFile, runTraining } from '../../src/train/run.js';
import { STORIES } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-targets-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

describe('target_modules saved as given', () => {
  it('target_modules round trip: full module paths for a subset of layers are saved as given, reload and evaluate', async () => {
    const data = join(work, 'data.jsonl');
    writeFileSync(data, Array.from({ length: 12 }, (_, i) => JSON.stringify({ text: `The little fox found ${i} shiny stones by the river.` })).join('\n'));
    const targets = ['model.layers.0.self_attn.q_proj', 'model.layers.3.mlp.down_proj'];
    const out = join(work, 'lora');
    await runTraining({ data, method: 'lora', targetModules: targets, maxSteps: 2, batchSize: 4, evalEvery: 0, output: out, initLoraWeights: false });
    const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8')) as { target_modules: string[] };
    expect([...cfg.target_modules].sort()).toEqual([...targets].sort());
    const model = loadModel(STORIES);
    const { peft } = attachAdapters(model, [{ name: 'x', dir: out }]);
    expect([...(peft.get('x') as LoraAdapter).layers.keys()].sort()).toEqual([...targets].sort());
    const r = evaluateFile(model, loadTokenizer(STORIES), data, { maxSeqLength: 64 });
    expect(Number.isFinite(r.loss)).toBe(true);
  });

  it('target_modules round trip: all-linear is saved resolved; with exclude_modules the suffixes still select exactly the trained modules', () => {
    const model = loadModel(STORIES);
    const cases: Array<[Record<string, unknown>, unknown]> = [
      [{ target_modules: 'all-linear' }, ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']],
      // under 20 modules PEFT keeps the resolved full paths
      [{ target_modules: 'all-linear', layers_to_transform: [1, 2] }, [1, 2].flatMap((i) => ['mlp.down_proj', 'mlp.gate_proj', 'mlp.up_proj', 'self_attn.k_proj', 'self_attn.o_proj', 'self_attn.q_proj', 'self_attn.v_proj'].map((m) => `model.layers.${i}.${m}`))],
      [{ target_modules: '.*layers\\.[01]\\.self_attn\\.(q|v)_proj' }, '.*layers\\.[01]\\.self_attn\\.(q|v)_proj'],
      [{ target_modules: ['q_proj', 'v_proj'] }, ['q_proj', 'v_proj']],
    ];
    for (const [opts, saved] of cases) {
      const a = new LoraAdapter(model, parseLoraConfig({ r: 2, lora_alpha: 4, ...opts }));
      const dir = join(work, `c${Math.random().toString(36).slice(2)}`);
      saveAdapter(a, dir, STORIES);
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      expect(cfg.target_modules, JSON.stringify(opts)).toEqual(saved);
      const back = attachAdapters(loadModel(STORIES), [{ name: 'y', dir }]).peft.get('y') as LoraAdapter;
      expect([...back.layers.keys()].sort()).toEqual([...a.layers.keys()].sort());
    }
  });
});
