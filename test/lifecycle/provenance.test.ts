/**
 * Provenance: a training run writes training_provenance.json (base/data hashes, args, metrics)
 * and an HF model card; loading on another base is refused unless allowed.
 */
import { describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { PeftError } from '../../src/errors.js';
import { sha256File } from '../../src/lifecycle/hash.js';
import { checkBase, compareBase, readProvenance } from '../../src/lifecycle/provenance.js';
import { runTraining } from '../../src/train/run.js';
import { FIXTURES, STORIES } from '../helpers.js';

describe('provenance', () => {
  it('a run records hashes, args and metrics; the card has HF front matter; another base is refused', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-prov-'));
    const data = join(dir, 'data.jsonl');
    writeFileSync(data, Array.from({ length: 20 }, (_, i) => JSON.stringify({ text: `The miller's daughter spun ${i} bales of straw into gold.` })).join('\n'));
    const out = join(dir, 'adapter');
    await runTraining({ data, output: out, maxSteps: 2, batchSize: 4, maxSeqLength: 32, evalEvery: 0, forgettingData: data, maxForgettingExamples: 4 });
    const p = readProvenance(out)!;
    expect(p.tool.name).toBe('peft-ts');
    expect(p.base.weights['model.safetensors']).toBe(sha256File(join(STORIES, 'model.safetensors')));
    expect(p.base.config['config.json']).toBe(sha256File(join(STORIES, 'config.json')));
    expect(p.base.tokenizer['tokenizer.json']).toBe(sha256File(join(STORIES, 'tokenizer.json')));
    expect(p.data.find((d) => d.role === 'train')).toMatchObject({ path: data, sha256: sha256File(data) });
    expect(p.train_args).toMatchObject({ maxSteps: 2, batchSize: 4, maxSeqLength: 32 });
    expect(p.metrics.steps).toBe(2);
    expect(p.metrics.forgetting_perplexity_before).toBeGreaterThan(1);
    expect(p.metrics.eval_perplexity).toBeGreaterThan(1);
    const card = readFileSync(join(out, 'README.md'), 'utf8');
    const front = parseYaml(card.split('---\n')[1]) as Record<string, unknown>;
    expect(front).toMatchObject({ base_model: 'stories260K', library_name: 'peft', pipeline_tag: 'text-generation', base_model_sha256: p.base.sha256 });
    expect(front.tags).toContain('base_model:adapter:stories260K');
    expect(compareBase(out, STORIES).status).toBe('match');
    // a base whose config differs: refused with the file named, unless allowed
    const other = join(dir, 'other-base');
    mkdirSync(other);
    for (const f of readdirSync(STORIES)) if (!f.endsWith('.gguf') && !f.startsWith('LICENSE')) copyFileSync(join(STORIES, f), join(other, f));
    writeFileSync(join(other, 'config.json'), readFileSync(join(STORIES, 'config.json'), 'utf8').replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e-06'));
    expect(() => checkBase(out, other)).toThrow(PeftError);
    expect(() => checkBase(out, other)).toThrow(/config\.json: recorded .* --allow-base-mismatch/);
    expect(checkBase(out, other, true).status).toBe('mismatch');
    // a user's own README is kept on a retrain; HF PEFT adapters (no provenance) are not checked
    writeFileSync(join(out, 'README.md'), 'my notes');
    await runTraining({ data, output: out, maxSteps: 1, batchSize: 4, maxSeqLength: 32, evalEvery: 0 });
    expect(readFileSync(join(out, 'README.md'), 'utf8')).toBe('my notes');
    expect(existsSync(join(out, 'training_provenance.json'))).toBe(true);
    expect(checkBase(join(FIXTURES, 'stories260K'), other).status).toBe('unknown');
  });
});
