/**
 * Preference tuning end to end (`runTraining` with an objective) and its building blocks: the
 * chunked token log-probabilities against the materialised-logits path and finite differences;
 * runs with every objective over LoRA, QLoRA, prompt tuning and full fine-tuning (precomputed
 * reference); `--adapter` continuing an adapter with its frozen copy as the reference; bad data.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeftError } from '../../src/errors.js';
import { backward, f32Weight, noGrad, Tensor, withArena } from '../../src/tensor/index.js';
import { runTraining } from '../../src/train/run.js';
import { fusedTokenLogProbs, logitsTokenLogProbs, surrogateLoss } from '../../src/train/preference/logps.js';
import { linear } from '../../src/tensor/index.js';
import { FIXTURES, maxRelDiff, readJson, STORIES } from '../helpers.js';
import { loadModel } from '../../src/models/load.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadAdapter, PeftModel } from '../../src/peft/index.js';
import { loadPreferenceData } from '../../src/train/preference/data.js';
import { defaultPreferenceConfig } from '../../src/train/preference/losses.js';
import { pairStep, type PreferenceSetup } from '../../src/train/preference/step.js';

function rand(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => { s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648 - 0.5; });
}

describe('token log-probabilities', () => {
  const N = 7, D = 8, V = 11;
  const labels = Int32Array.from([3, -100, 0, 10, 5, -100, 7]);
  const gw = Float32Array.from(rand(N, 9).map((x, i) => (labels[i] === -100 ? 0 : x)));
  const run = (hData: Float32Array, fused: boolean, chunk?: number): { value: number; dh: Float32Array; dw: Float32Array; lp: Float32Array } => {
    const h = Tensor.param(hData.slice(), [N, D]);
    const w = Tensor.param(rand(V * D, 3), [V, D]);
    let value = 0, lp = new Float32Array(N);
    withArena(() => {
      const t = fused ? fusedTokenLogProbs(h, f32Weight(w), null, labels, undefined, chunk) : logitsTokenLogProbs(linear(h, f32Weight(w), null), labels);
      lp = t.logps.data.slice();
      value = lp.reduce((s, x, i) => s + x * gw[i], 0);
      backward(surrogateLoss(t.logps, gw, value));
    });
    return { value, dh: h.grad!, dw: w.grad!, lp };
  };
  const h0 = rand(N * D, 5);
  it('chunked (fused) equals materialised logits, forward and gradients', () => {
    const a = run(h0, true, 3), b = run(h0, false);
    for (let i = 0; i < N; i++) expect(Math.abs(a.lp[i] - b.lp[i])).toBeLessThan(1e-6);
    expect(a.lp[1]).toBe(0);
    for (let i = 0; i < a.dh.length; i++) expect(Math.abs(a.dh[i] - b.dh[i])).toBeLessThan(1e-6);
    for (let i = 0; i < a.dw.length; i++) expect(Math.abs(a.dw[i] - b.dw[i])).toBeLessThan(1e-6);
  });
  it('gradient w.r.t. the hidden states equals finite differences', () => {
    const a = run(h0, true, 4);
    const eps = 1e-2;
    for (const i of [0, 5, 17, 30, 55]) {
      const hp = h0.slice(), hm = h0.slice();
      hp[i] += eps; hm[i] -= eps;
      const fd = (run(hp, true).value - run(hm, true).value) / (2 * eps);
      expect(Math.abs(a.dh[i] - fd)).toBeLessThan(2e-4);
    }
  });
  it('no gradient is recorded under noGrad', () => {
    const h = Tensor.param(h0.slice(), [N, D]);
    noGrad(() => withArena(() => { const t = fusedTokenLogProbs(h, f32Weight(Tensor.param(rand(V * D, 3), [V, D])), null, labels); expect(t.logps.requiresGrad).toBe(false); }));
  });
});

describe('preference runs', () => {
  const fx = readJson<{ pairs: Array<Record<string, string>>; unpaired: Array<Record<string, unknown>> }>(join(FIXTURES, 'preference', 'fixture.json'));
  const dir = mkdtempSync(join(tmpdir(), 'pref-run-'));
  const pairs = join(dir, 'pairs.jsonl'), kto = join(dir, 'kto.jsonl'), sft = join(dir, 'sft.jsonl');
  writeFileSync(pairs, [...fx.pairs, ...fx.pairs].map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(kto, [...fx.unpaired, ...fx.unpaired].map((r) => JSON.stringify(r)).join('\n') + '\n');
  writeFileSync(sft, fx.pairs.map((r) => JSON.stringify({ prompt: r.prompt, completion: r.chosen })).join('\n') + '\n');
  const common = { maxSteps: 2, batchSize: 2, valFraction: 0.3, evalEvery: 1, warmupSteps: 0, lr: 1e-2 };
  const records = (out: string): Array<Record<string, number | string>> =>
    readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, number | string>);

  for (const [objective, method] of [['dpo', 'lora'], ['ipo', 'qlora'], ['orpo', 'lora'], ['simpo', 'ia3'], ['kto', 'prompt'], ['dpo', 'full']] as const) {
    it(`${objective} with ${method}: TRL metric names in metrics.jsonl, curve, adapter, summary`, async () => {
      const out = join(dir, `${objective}-${method}`);
      const r = await runTraining({
        ...common, data: objective === 'kto' ? kto : pairs, objective, method, output: out, numVirtualTokens: 4, resultJson: join(dir, `${objective}-${method}.json`),
        ...(objective === 'dpo' && method === 'lora' ? { labelSmoothing: 0.1 } : {}),
      });
      const recs = records(out);
      const train = recs.filter((x) => x.type === 'train'), evals = recs.filter((x) => x.type === 'eval');
      expect(train.length).toBe(2);
      expect(evals.length).toBe(3);
      for (const k of ['loss', 'rewards/chosen', 'rewards/rejected', 'logps/chosen', 'logps/rejected', 'logits/chosen', 'logits/rejected']) {
        expect(typeof train[0][k], k).toBe('number');
        expect(Number.isFinite(train[0][k] as number), k).toBe(true);
      }
      if (objective !== 'kto') expect(typeof train[0]['rewards/accuracies']).toBe('number');
      if (objective === 'kto') expect(typeof evals[0].kl).toBe('number');
      if (objective === 'orpo') expect(typeof train[0].nll_loss).toBe('number');
      expect(existsSync(join(out, 'loss_curve.svg'))).toBe(true);
      expect(readFileSync(join(out, 'loss_curve.svg'), 'utf8')).toContain('rewards/margins');
      expect(existsSync(join(out, method === 'full' ? 'model.safetensors' : 'adapter_model.safetensors'))).toBe(true);
      if (method !== 'full') expect(readJson<{ train_args: { objective: string } }>(join(out, 'training_provenance.json')).train_args.objective).toBe(objective);
      const summary = readJson<{ preference: { reference: string; before: Record<string, number>; after: Record<string, number> } }>(join(dir, `${objective}-${method}.json`));
      expect(summary.preference.reference).toBe(method === 'full' ? 'precomputed' : objective === 'orpo' || objective === 'simpo' ? 'none' : 'base');
      expect(summary.preference.before.loss).toBeCloseTo(evals[0].loss as number, 12);
      expect(r.preference?.after?.loss).toBeCloseTo(evals[2].loss as number, 12);
      if (objective === 'dpo' && method !== 'full') {
        // a new LoRA adapter starts equal to its reference: rewards 0, loss log 2
        expect(evals[0]['rewards/margins']).toBe(0);
        expect(evals[0].loss).toBeCloseTo(Math.LN2, 12);
      }
      if (method === 'full') expect(evals[0].loss).toBeCloseTo(Math.LN2, 5); // the precomputed reference is the initial model
    });
  }

  it('a precomputed reference gives the same run as the per-batch reference (base, adapter disabled)', async () => {
    const a = await runTraining({ ...common, data: pairs, objective: 'dpo', seed: 3 });
    const b = await runTraining({ ...common, data: pairs, objective: 'dpo', seed: 3, precomputeRefLogps: true });
    expect(b.preference?.reference).toBe('precomputed');
    expect(b.preference?.referenceDescription).toContain('computed once');
    a.result.steps.forEach((s, i) => expect(Math.abs(s.loss - b.result.steps[i].loss)).toBeLessThan(1e-6));
    expect(Math.abs(a.preference!.after!['rewards/margins'] - b.preference!.after!['rewards/margins'])).toBeLessThan(1e-5);
  });

  it('gradient accumulation: two micro-batches of one pair equal one batch of two', async () => {
    const model = loadModel(STORIES);
    const peft = new PeftModel(model);
    loadAdapter(peft, join(FIXTURES, 'stories260K'), 'default');
    const params = peft.trainable('default');
    const tok = loadTokenizer(STORIES);
    const d = loadPreferenceData(pairs, tok, { maxSeqLength: 256 });
    const p: PreferenceSetup = { model, peft, config: defaultPreferenceConfig('dpo'), reference: 'base', maxSeqLength: 256, padId: 0 };
    const ctx = { training: false, seed: 0, dropoutCalls: 0 };
    const grads = (batches: number[][]): Float32Array[] => {
      for (const q of params) q.tensor.grad = null;
      for (const b of batches) withArena(() => backward(pairStep(p, b.map((i) => d.pairs[i]), null, 1 / 2, ctx).result.loss));
      return params.map((q) => q.tensor.grad!.slice());
    };
    const one = grads([[0, 1]]), two = grads([[0], [1]]);
    one.forEach((g, i) => expect(maxRelDiff(two[i], g)).toBeLessThan(1e-5));
  });

  it('--adapter continues an adapter; its frozen copy is the reference (rewards start at 0)', async () => {
    const out = join(dir, 'continue');
    const r = await runTraining({ ...common, data: pairs, objective: 'dpo', adapter: join(FIXTURES, 'stories260K'), output: out, loraDropout: 0 });
    expect(r.preference?.reference).toBe('adapter');
    expect(r.preference?.referenceDescription).toContain('frozen');
    const first = records(out).find((x) => x.type === 'eval')!;
    expect(Math.abs(first['rewards/chosen'] as number)).toBeLessThan(1e-6);
    expect(first['logps/accuracies']).toBeDefined();
    // the trained adapter differs from the reference after the steps
    expect(Math.abs(r.preference!.after!['rewards/margins'])).toBeGreaterThan(0);
  });

  it('bad input: data of the wrong kind, SFT data, unknown objective, KTO with a precomputed reference', async () => {
    await expect(runTraining({ ...common, data: kto, objective: 'dpo' })).rejects.toThrow(/needs paired preference data/);
    await expect(runTraining({ ...common, data: pairs, objective: 'kto' })).rejects.toThrow(/needs unpaired preference data/);
    await expect(runTraining({ ...common, data: sft, objective: 'dpo' })).rejects.toThrow(PeftError);
    await expect(runTraining({ ...common, data: sft, objective: 'dpo' })).rejects.toThrow(/not a preference record/);
    await expect(runTraining({ ...common, data: pairs, objective: 'rlhf' as 'dpo' })).rejects.toThrow(/unknown objective/);
    await expect(runTraining({ ...common, data: kto, objective: 'kto', precomputeRefLogps: true })).rejects.toThrow(/cannot be precomputed/);
    await expect(runTraining({ ...common, data: pairs, objective: 'ipo', labelSmoothing: 0.1 })).rejects.toThrow(/label smoothing/);
    const bad = join(dir, 'bad.jsonl');
    writeFileSync(bad, JSON.stringify(fx.pairs[0]) + '\n' + JSON.stringify({ prompt: 'a', chosen: 'b', rejected: 3 }) + '\n');
    await expect(runTraining({ ...common, data: bad, objective: 'dpo' })).rejects.toThrow(/line 2: rejected/);
    rmSync(dir, { recursive: true, force: true });
  });
});
