/**
 * NaN propagation in every kernel, as torch does it: attention row max / softmax, cross-entropy,
 * activations (ReLU included), SwiGLU, RMSNorm, linear. Runs the checks of nan-checks.ts through
 * the public ops with the kernels this CPU selects and, in a child process, with the portable
 * kernels (PEFT_KERNELS=generic); a new kernel path must pass the same checks.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { ROOT } from '../helpers.js';
import { nanChecks } from './nan-checks.js';

describe('NaN propagation in the kernels', () => {
  it(`NaN propagation: attention, cross-entropy, activations, norms, linear (kernels: ${native.kernelName()})`, () => {
    const r = nanChecks();
    expect(Object.keys(r).length).toBeGreaterThan(12);
    expect(Object.entries(r).filter(([, v]) => v !== 'ok')).toEqual([]);
  });

  it('NaN propagation: the same with the portable kernels (PEFT_KERNELS=generic)', () => {
    const p = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'tensor', 'nan-checks.ts')], {
      cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: 'generic' },
    });
    expect(p.stderr).toBe('');
    expect(p.status).toBe(0);
    const r = JSON.parse(p.stdout) as Record<string, string>;
    expect(Object.keys(r).length).toBeGreaterThan(12);
    expect(Object.entries(r).filter(([, v]) => v !== 'ok')).toEqual([]);
  });
});
