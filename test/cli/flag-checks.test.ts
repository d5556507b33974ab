/**
 * CLI flag checks: `peft eval --compute-dtype bf16` (frozen base weights multiply in bfloat16 on
 * AMX tiles or VDPBF16PS, as in `peft train`; close to float32 but really bf16); preference
 * training applies it too; unknown or empty dtypes, an unknown PEFT_KERNELS and --use-dora with a
 * non-LoRA method are one-line errors naming the flag.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bf16ComputeAvailable } from '../../src/models/compute-dtype.js';
import { ROOT, runPeft } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-eval-dtype-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const data = join(work, 'data.jsonl');
writeFileSync(data, Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `Once upon a time, Tom had ${i} red apples and a little dog named Max.` })).join('\n'));

const peft = runPeft;

describe('peft eval --compute-dtype', () => {
  it.skipIf(!bf16ComputeAvailable())('bf16 gives a perplexity within 1% of float32, from bf16 products', () => {
    const f32 = peft('eval', '--data', data, '--json');
    const bf16 = peft('eval', '--data', data, '--json', '--compute-dtype', 'bf16');
    expect(f32.code, f32.stderr).toBe(0);
    expect(bf16.code, bf16.stderr).toBe(0);
    const a = JSON.parse(f32.stdout) as { perplexity: number; compute_dtype: string; tokens: number };
    const b = JSON.parse(bf16.stdout) as { perplexity: number; compute_dtype: string; tokens: number };
    expect(a.compute_dtype).toBe('float32');
    expect(b.compute_dtype).toBe('bf16');
    expect(b.tokens).toBe(a.tokens);
    expect(Math.abs(b.perplexity - a.perplexity) / a.perplexity).toBeLessThan(1e-2);
    expect(b.perplexity).not.toBe(a.perplexity); // the bf16 path really ran
  });

  it('an unknown PEFT_KERNELS is one error line from the CLI, not a stack trace', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli', 'bin.ts'), 'eval', '--data', data],
      { cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: { ...process.env, PEFT_KERNELS: 'bogus', PEFT_DEBUG: '' } });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe('peft: error: PEFT_KERNELS: unknown kernel family (expected amx, avx512, avx2 or generic, found "bogus")');
  });

  it('an empty compute dtype is refused by train, naming the flag', () => {
    const e = peft('train', '--data', data, '--max-steps', '1', '--compute-dtype', '', '--output', join(work, 'o'));
    expect(e.code).not.toBe(0);
    expect(e.stderr).toMatch(/peft: error: --compute-dtype: unknown compute dtype/);
  });

  it.skipIf(!bf16ComputeAvailable())('preference training (DPO) applies --compute-dtype bf16 too', () => {
    const r = peft('train', '--data', join(ROOT, 'data', 'grimms_preference', 'train.jsonl'), '--objective', 'dpo', '--compute-dtype', 'bf16',
      '--max-steps', '1', '--batch-size', '2', '--max-seq-length', '48', '--max-eval-examples', '2', '--output', join(work, 'dpo'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/compute dtype: bf16 \(\d+ frozen linear weights multiply in bf16/);
  });

  it('--use-dora with a method other than lora/qlora is refused, naming the flag', () => {
    const r = peft('train', '--data', data, '--method', 'adapter', '--use-dora', '--max-steps', '1', '--output', join(work, 'dora'));
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe('peft: error: --use-dora: DoRA is a LoRA variant (expected --method lora or qlora, found --method adapter)');
  });

  it('an unknown compute dtype is refused, naming the flag', () => {
    const r = peft('eval', '--data', data, '--compute-dtype', 'fp8');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--compute-dtype/);
    expect(r.stderr).toMatch(/fp8/);
    expect(r.stderr).not.toMatch(/\n\s+at /); // one line, no stack
  });
});
