import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, lmLoss } from '../../src/models/model.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, readJson, readTensors, STORIES } from '../helpers.js';

const fx = join(FIXTURES, 'stories260K');
const fixture = readJson<{ input_ids: number[]; loss: { base: number } }>(join(fx, 'fixture.json'));

describe('stories260K matches transformers', () => {
  const model = loadModel(STORIES);
  const ids = Int32Array.from(fixture.input_ids);
  const T = ids.length;

  it('logits within 1e-4 at every position', () => {
    const ref = readTensors(join(fx, 'base_logits.safetensors')).get('logits')!;
    const logits = noGrad(() => withArena(() => {
      const { hidden } = forwardHidden(model, { ids, B: 1, T });
      return lmLogits(model, hidden).data.slice();
    }));
    expect(logits.length).toBe(ref.data.length);
    expect(maxAbsDiff(logits, ref.data)).toBeLessThan(1e-4);
  });

  it('mean next-token loss matches', () => {
    const labels = new Int32Array(T).fill(-100);
    for (let t = 0; t < T - 1; t++) labels[t] = ids[t + 1];
    const r = noGrad(() => withArena(() => lmLoss(model, forwardHidden(model, { ids, B: 1, T }).hidden, labels, 1)));
    expect(r.count).toBe(T - 1);
    expect(Math.abs(r.sum / r.count - fixture.loss.base)).toBeLessThan(1e-5);
  });
});
