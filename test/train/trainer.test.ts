/**
 * The training loop: gradient accumulation normalised by total target tokens, resume equals an
 * uninterrupted run, NaN stops naming the step, schedules, and flat resident memory over 50 steps.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { LoraAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { batchLoss, fullFineTuneParameters, type LabelledBatch } from '../../src/train/methods.js';
import { lrFactor } from '../../src/train/schedule.js';
import { train, type BatchSource, type StepBatch } from '../../src/train/trainer.js';
import { maxAbsDiff, maxRelDiff, STORIES } from '../helpers.js';

type TB = LabelledBatch & StepBatch;

/** A batch of rows of different lengths, right-padded. */
function makeBatch(rows: number[][]): TB {
  const B = rows.length, T = Math.max(...rows.map((r) => r.length));
  const ids = new Int32Array(B * T), labels = new Int32Array(B * T).fill(-100), keyMask = new Uint8Array(B * T);
  let numTargets = 0, numTokens = 0;
  rows.forEach((r, b) => {
    r.forEach((id, t) => { ids[b * T + t] = id; keyMask[b * T + t] = 1; if (t + 1 < r.length) { labels[b * T + t] = r[t + 1]; numTargets++; } });
    numTokens += r.length;
  });
  return { batch: { ids, B, T, keyMask }, labels, numTargets, numTokens };
}

function source(batches: TB[]): BatchSource<TB> {
  let i = 0;
  return { next: () => batches[i++ % batches.length], state: () => ({ i }), restore: (s) => { i = (s as { i: number }).i; } };
}

function rows(seed: number, n: number): number[][] {
  let s = seed;
  const r = (): number => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648; };
  return Array.from({ length: n }, (_, k) => [1, ...Array.from({ length: 5 + ((k * 7 + seed) % 9) }, () => 3 + Math.floor(r() * 500))]);
}

function loraSetup(seed = 0) {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  peft.addAdapter('t', new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', lora_dropout: 0.1 }), seed));
  const params = peft.trainable('t');
  return { model, peft, params };
}

describe('trainer', () => {
  it('gradient accumulation 4×1 equals one batch of 4 (different lengths) within 1e-5', () => {
    const data = rows(3, 4);
    const a = loraSetup(), b = loraSetup();
    // one optimizer step; compare the accumulated gradients (Adam's first update is ~sign(g), which hides differences)
    const opts = { maxSteps: 1, lr: 1e-2, schedule: 'constant' as const, maxGradNorm: 0, seed: 5 };
    // dropout differs between the two layouts, so compare with dropout off
    for (const s of [a, b]) for (const l of (s.peft.get('t') as LoraAdapter).layers.values()) l.dropout = 0;
    train({ params: a.params, data: source(data.map((r) => makeBatch([r]))), loss: (lb, gs, ctx) => batchLoss(a.model, lb, gs, ctx) }, { ...opts, gradAccum: 4 });
    train({ params: b.params, data: source([makeBatch(data)]), loss: (lb, gs, ctx) => batchLoss(b.model, lb, gs, ctx) }, { ...opts, gradAccum: 1 });
    let worst = 0;
    for (let i = 0; i < a.params.length; i++) worst = Math.max(worst, maxRelDiff(a.params[i].tensor.grad!, b.params[i].tensor.grad!));
    expect(worst).toBeLessThan(1e-5);
    expect(a.params.some((p) => p.tensor.grad!.some((g) => g !== 0))).toBe(true);
  });

  it('resume from a checkpoint reaches the same final weights as an uninterrupted run', () => {
    const out = mkdtempSync(join(tmpdir(), 'peft-resume-'));
    try {
      const batches = rows(7, 12).map((r, i, all) => makeBatch([r, all[(i + 1) % all.length]]));
      const opts = { maxSteps: 6, lr: 5e-3, gradAccum: 2, schedule: 'cosine' as const, warmupSteps: 2, seed: 11, maxGradNorm: 1 };
      const full = loraSetup(1);
      train({ params: full.params, data: source(batches), loss: (lb, gs, ctx) => batchLoss(full.model, lb, gs, ctx) }, opts);
      const first = loraSetup(1);
      train({ params: first.params, data: source(batches), loss: (lb, gs, ctx) => batchLoss(first.model, lb, gs, ctx),
        saveExtra: (dir) => saveAdapter(first.peft.get('t'), dir) }, { ...opts, maxSteps: 3, checkpointEvery: 3, outputDir: out });
      // the interrupted run's options say maxSteps 3; resume asks for 6 (the schedule length must match the uninterrupted run)
      const resumed = loraSetup(1);
      const r = train({ params: resumed.params, data: source(batches), loss: (lb, gs, ctx) => batchLoss(resumed.model, lb, gs, ctx) }, { ...opts, resume: out });
      expect(r.state.step).toBe(6);
      for (let i = 0; i < full.params.length; i++) expect(maxAbsDiff(resumed.params[i].tensor.data, full.params[i].tensor.data), full.params[i].name).toBe(0);
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  });

  it('a NaN loss stops the run naming the step', () => {
    const s = loraSetup();
    let calls = 0;
    expect(() => train({ params: s.params, data: source([makeBatch(rows(1, 1))]),
      loss: (lb, gs, ctx) => { const r = batchLoss(s.model, lb, gs, ctx); if (++calls === 3) r.sum = NaN; return r; } }, { maxSteps: 5, lr: 1e-3 }))
      .toThrow(/loss is NaN at step 3/);
  });

  it('schedules follow transformers (warmup from 0, linear to 0, cosine to 0)', () => {
    expect(lrFactor('constant', 0, 10, 2)).toBe(0);
    expect(lrFactor('constant', 1, 10, 2)).toBe(0.5);
    expect(lrFactor('linear', 2, 10, 2)).toBe(1);
    expect(lrFactor('linear', 6, 10, 2)).toBeCloseTo(0.5);
    expect(lrFactor('cosine', 6, 10, 2)).toBeCloseTo(0.5);
    expect(lrFactor('cosine', 10, 10, 2)).toBeCloseTo(0);
  });

  it('50 full fine-tuning steps on stories260K keep resident memory flat (< 8 MiB growth after warm-up)', () => {
    const model = loadModel(STORIES);
    const params = fullFineTuneParameters(model);
    const batch = makeBatch(rows(9, 8).map((r) => [...r, ...r, ...r, ...r]));
    const rss: number[] = [];
    global.gc?.();
    train({ params, data: source([batch]), loss: (lb, gs, ctx) => batchLoss(model, lb, gs, ctx),
      onStep: (m) => { if (m.step % 5 === 0) rss.push(process.memoryUsage().rss); } }, { maxSteps: 50, lr: 1e-4 });
    const growth = rss[rss.length - 1] - rss[1];
    expect(growth).toBeLessThan(8 * 1024 * 1024);
  });
});
