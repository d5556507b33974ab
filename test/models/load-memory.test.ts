/**
 * Loading keeps exactly the model in memory: bf16 weights stay bf16, each in a buffer of exactly
 * its own bytes (per-tensor reads: never a view that keeps a whole file alive), with the file's bits.
 * (The peak load RSS ≈ checkpoint size is measured by bench/big-models.ts, not here.)
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { readSafetensorsFile } from '../../src/io/safetensors.js';
import { loadModel } from '../../src/models/load.js';
import { linearModules } from '../../src/models/model.js';
import { FIXTURES } from '../helpers.js';

describe('model loading memory', () => {
  it('bf16 linear weights own exactly their bytes and equal the file', () => {
    const dir = join(FIXTURES, 'tiny', 'llama-tiny-bf16');
    const model = loadModel(dir);
    const file = readSafetensorsFile(join(dir, 'model.safetensors')).tensors;
    let n = 0;
    for (const m of linearModules(model)) {
      const d = m.weight.data;
      expect(d.kind, m.name).toBe('bf16');
      if (d.kind !== 'bf16') continue;
      expect(d.bits.buffer.byteLength, m.name).toBe(m.outFeatures * m.inFeatures * 2);
      expect(Buffer.compare(Buffer.from(d.bits.buffer), Buffer.from(file.get(`${m.name}.weight`)!.data)), m.name).toBe(0);
      n++;
    }
    expect(n).toBe(15);
  });
});
