/**
 * Smoke test of the TypeScript half of scripts/check-peft-interop.py (scripts/interop-logits.ts),
 * which needs no Python: every sample adapter type is written by `make`, then `logits` writes the
 * file the Python half reads (logits [tokens + virtual, vocab], metadata input_ids / peft_type /
 * virtual_tokens), and the logits equal a direct forward pass of the same adapter. One run goes
 * through `npx tsx` as the Python script calls it.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { logits, make, MAKE_TYPES } from '../../scripts/interop-logits.js';
import { readSafetensorsFile } from '../../src/io/safetensors.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { forwardHidden, lmLogits } from '../../src/models/model.js';
import { loadModel } from '../../src/models/load.js';
import { attachAdapters } from '../../src/peft/index.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { maxAbsDiff, readTensors, ROOT, STORIES } from '../helpers.js';

const TEXT = 'Once upon a time there was a cat.';
const work = mkdtempSync(join(tmpdir(), 'interop-ts-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

function baseLogits(): Float32Array {
  const model = loadModel(STORIES);
  const ids = loadTokenizer(STORIES).encode(TEXT);
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids), B: 1, T: ids.length }).hidden).data.slice()));
}

describe('interop script smoke test (scripts/interop-logits.ts, no Python)', () => {
  const ids = loadTokenizer(STORIES).encode(TEXT);
  const V = loadModel(STORIES).config.vocabSize;
  const base = baseLogits();

  for (const type of MAKE_TYPES) {
    it(`interop script: make + logits for ${type} write what check-peft-interop.py reads`, () => {
      const dir = join(work, type);
      const file = join(work, `${type}.safetensors`);
      expect(make({ type, output: dir, model: STORIES, seed: '3' })).toContain(type);
      expect(logits({ adapter: dir, output: file, model: STORIES, text: TEXT })).toContain('logits [');
      const st = readSafetensorsFile(file);
      const meta = st.metadata ?? {};
      expect(JSON.parse(meta.input_ids)).toEqual(ids);
      const virtual = Number(meta.virtual_tokens);
      expect(virtual).toBe(type === 'PROMPT_TUNING' ? 6 : 0);
      expect(meta.peft_type).toBe(type.startsWith('LORA') ? 'LORA' : type === 'PREFIX_TUNING_PROJ' ? 'PREFIX_TUNING' : type);
      const l = readTensors(file).get('logits')!;
      expect(l.shape).toEqual([ids.length + virtual, V]);
      // same as loading the adapter and running it here
      const model = loadModel(STORIES);
      attachAdapters(model, [{ name: 'x', dir }]);
      const direct = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(ids), B: 1, T: ids.length }).hidden).data.slice()));
      expect(maxAbsDiff(l.data, direct)).toBe(0);
      // the sample adapter changes the text rows' logits (else the interop check proves nothing)
      expect(maxAbsDiff(l.data.subarray(virtual * V), base)).toBeGreaterThan(0.05);
    });
  }

  it('interop script: the command line the Python half runs (npx tsx … logits) exits 0', () => {
    const file = join(work, 'cli.safetensors');
    const r = spawnSync('npx', ['--no-install', 'tsx', join(ROOT, 'scripts', 'interop-logits.ts'), 'logits', '--adapter', join(work, 'PROMPT_TUNING'),
      '--model', STORIES, '--text', TEXT, '--output', file], { cwd: ROOT, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`(${ids.length} tokens + 6 virtual), PROMPT_TUNING`);
    const bad = spawnSync('npx', ['--no-install', 'tsx', join(ROOT, 'scripts', 'interop-logits.ts'), 'nope'], { cwd: ROOT, encoding: 'utf8' });
    expect(bad.status).toBe(2);
  });
});
