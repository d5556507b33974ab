import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCompare } from '../../src/report/compare.js';

describe('peft compare with preference objectives', () => {
  it('runs DPO with LoRA on the bundled Grimm preference set and reports held-out rewards and forgetting', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-compare-pref-'));
    const { rows, preferenceRows } = await runCompare({
      objectives: ['dpo'], maxSteps: 3, batchSize: 4, maxSeqLength: 64, maxEvalExamples: 8, maxForgettingExamples: 8, output: dir,
    });
    expect(rows).toEqual([]); // objectives alone: no SFT methods run
    expect(preferenceRows).toHaveLength(1);
    const r = preferenceRows[0];
    expect(r.objective).toBe('dpo');
    expect(r.reference).toBe('base');
    // before training the policy is the reference: DPO loss ln 2 and zero margins, exactly
    expect(r.before.loss).toBeCloseTo(Math.log(2), 6);
    expect(r.before['rewards/margins']).toBeCloseTo(0, 6);
    // training moved the policy: margins grew and the loss fell
    expect(r.after['rewards/margins']).toBeGreaterThan(0);
    expect(r.after.loss).toBeLessThan(r.before.loss);
    expect(r.old_domain!.ppl_before).toBeGreaterThan(1);
    expect(Number.isFinite(r.old_domain!.ppl_after)).toBe(true);
    const md = readFileSync(join(dir, 'compare.md'), 'utf8');
    expect(md).toContain('| dpo | 0.001 | base |');
    expect(md).not.toContain('| method | lr | trainable params'); // no empty SFT table
    expect(existsSync(join(dir, 'lora-dpo', 'adapter_model.safetensors'))).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'compare.json'), 'utf8')).preference_rows).toHaveLength(1);
  });

  it('names an unknown objective', async () => {
    const { compareCommand } = await import('../../src/cli/compare.js');
    const cmd = compareCommand().exitOverride();
    await expect(cmd.parseAsync(['--objectives', 'dpo,rlhf', '--output', join(tmpdir(), 'x')], { from: 'user' })).rejects.toThrow(/unknown objective.*rlhf|--objectives/s);
  });
});
