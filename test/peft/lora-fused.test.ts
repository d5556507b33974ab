/**
 * LoRA's fused A products (LoraAdapter.fuseSharedInputs: one GEMM [A_q; A_k; A_v]·xᵀ for the
 * modules that read the same input, and likewise gate/up) against one product per module: logits,
 * the loss and every trainable gradient agree within 3e-6 relative to the largest entry (float32
 * sums in another order; up to 1.4e-6 seen) for plain LoRA, rsLoRA with rank/alpha patterns,
 * lora_bias and bias = all, DoRA, adapters on a subset of q/k/v, two active adapters, a merged
 * adapter next to an unmerged one, LoRA + IA3, gradient checkpointing, and lora_dropout > 0 (fused
 * only outside training). Each case also checks from the GEMM calls that the fused path did (or
 * did not) run, and that saving writes the same per-module tensors.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits, lmLoss, setGradientCheckpointing, type CausalLM, type ForwardContext } from '../../src/models/model.js';
import { createIa3Adapter, LoraAdapter, parseLoraConfig, PeftModel } from '../../src/peft/index.js';
import { native } from '../../src/native/index.js';
import { backward, noGrad, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxRelDiff } from '../helpers.js';

const TINY = join(FIXTURES, 'tiny');
const IDS = [[1, 5, 9, 17, 33, 2, 40, 7, 11, 3, 60, 21, 13], [4, 8, 15, 16, 23, 42, 12, 19, 27, 31, 50, 6, 44]];
const TOKENS = 26;

/** Row counts of the A-side GEMMs (A·xᵀ: transA false, transB true, rows = stacked rank, columns = tokens) issued while fn runs. */
function aGemmRows<T>(fn: () => T): { value: T; rows: number[] } {
  const orig = native.gemm;
  const rows: number[] = [];
  native.gemm = (ta, tb, M, N, K, ...rest) => {
    if (!ta && tb && N === TOKENS) rows.push(M);
    return orig(ta, tb, M, N, K, ...rest);
  };
  try {
    return { value: fn(), rows };
  } finally {
    native.gemm = orig;
  }
}

interface Run {
  logits: Float32Array;
  loss: number;
  grads: Map<string, Float32Array>;
  aRows: number[];
}

/** Eval logits, then a training forward/backward (seeded context) of the next-token loss. */
function run(peft: PeftModel, train: string, training: boolean): Run {
  const model: CausalLM = peft.model;
  const B = IDS.length, T = IDS[0].length;
  const batch = { ids: Int32Array.from(IDS.flat()), B, T };
  const labels = new Int32Array(B * T).fill(-100);
  IDS.forEach((row, b) => { for (let t = 0; t < T - 1; t++) labels[b * T + t] = row[t + 1]; });
  labels[3] = -100;
  expect(B * T).toBe(TOKENS);
  const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, batch).hidden).data.slice()));
  const params = peft.trainable(train);
  for (const p of params) p.tensor.grad = null;
  const { value: loss, rows } = aGemmRows(() => withArena(() => {
    const ctx: ForwardContext = { training, seed: 7, dropoutCalls: 0 };
    const { hidden } = forwardHidden(model, batch, ctx);
    const r = lmLoss(model, hidden, labels, 1 / 20, ctx);
    backward(r.loss);
    return r.loss.data[0];
  }));
  return { logits, loss, grads: new Map(params.map((p) => [p.name, p.tensor.grad ? p.tensor.grad.slice() : new Float32Array(0)])), aRows: rows };
}

/** Fused on (from 1 row: the test batch has 26) or off for every LoRA adapter of peft. */
function setFused(peft: PeftModel, on: boolean): void {
  for (const a of peft.adapters.values()) {
    if (!(a instanceof LoraAdapter)) continue;
    a.fuseSharedInputs = on;
    a.fuseMinRows = 1;
  }
}

/** Runs fused and unfused, checks they agree, returns both. */
function compare(peft: PeftModel, train: string, training = true): { fused: Run; plain: Run } {
  setFused(peft, true);
  const fused = run(peft, train, training);
  setFused(peft, false);
  const plain = run(peft, train, training);
  setFused(peft, true);
  expect(maxRelDiff(fused.logits, plain.logits)).toBeLessThan(3e-6);
  expect(Math.abs(fused.loss - plain.loss)).toBeLessThan(3e-6 * Math.abs(plain.loss));
  expect([...fused.grads.keys()]).toEqual([...plain.grads.keys()]);
  let nonzero = 0;
  for (const [k, g] of plain.grads) {
    const f = fused.grads.get(k)!;
    expect(f.length, k).toBe(g.length);
    if (g.some((v) => v !== 0)) nonzero++;
    expect(maxRelDiff(f, g), k).toBeLessThan(3e-6);
  }
  expect(nonzero).toBeGreaterThan(0);
  return { fused, plain };
}

const lora = (model: CausalLM, cfg: Record<string, unknown>, seed = 0): LoraAdapter =>
  new LoraAdapter(model, parseLoraConfig({ r: 8, lora_alpha: 16, lora_dropout: 0, init_lora_weights: false, target_modules: 'all-linear', ...cfg }), seed);

describe('fused LoRA A products equal one product per module', () => {
  it('plain LoRA, all linear layers: one A GEMM for q/k/v (24 rows) and one for gate/up (16) per layer', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    peft.addAdapter('a', lora(peft.model, {}));
    const { fused, plain } = compare(peft, 'a');
    const layers = peft.model.layers.length;
    expect(fused.aRows.filter((r) => r === 24)).toHaveLength(layers);
    expect(fused.aRows.filter((r) => r === 16)).toHaveLength(layers);
    expect(plain.aRows.filter((r) => r === 24 || r === 16)).toHaveLength(0);
    // o and down keep their own product: per layer 2 fused + 2 single in the forward
    expect(fused.aRows.filter((r) => r === 8)).toHaveLength(2 * layers);
    expect(plain.aRows.filter((r) => r === 8)).toHaveLength(7 * layers);
  });

  it('below fuseMinRows (default 64) each module runs its own product', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    const a = lora(peft.model, {});
    peft.addAdapter('a', a);
    expect(a.fuseMinRows).toBe(64);
    const small = run(peft, 'a', true);
    expect(small.aRows.filter((r) => r > 8)).toHaveLength(0);
  });

  it('rsLoRA, rank_pattern / alpha_pattern (different r per module), lora_bias and bias = all (Qwen2 q/k/v biases)', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'qwen2')));
    peft.addAdapter('a', lora(peft.model, {
      use_rslora: true, rank_pattern: { q_proj: 4, v_proj: 6, up_proj: 2 }, alpha_pattern: { k_proj: 5 }, lora_bias: true, bias: 'all',
    }));
    const { fused } = compare(peft, 'a');
    expect(fused.aRows).toContain(4 + 8 + 6);
    expect(fused.aRows).toContain(8 + 2);
  });

  it('DoRA', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    peft.addAdapter('a', lora(peft.model, { use_dora: true }));
    const { fused } = compare(peft, 'a');
    expect(fused.aRows).toContain(24);
  });

  it('adapters on a subset of q/k/v (q and v fused, up alone)', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    peft.addAdapter('a', lora(peft.model, { target_modules: ['q_proj', 'v_proj', 'up_proj'] }));
    const { fused } = compare(peft, 'a');
    expect(fused.aRows.filter((r) => r === 16)).toHaveLength(peft.model.layers.length);
    expect(fused.aRows.filter((r) => r === 24)).toHaveLength(0);
  });

  it('two active LoRA adapters (each fuses its own), one merged next to an unmerged one, LoRA with IA3', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    peft.addAdapter('a', lora(peft.model, {}, 1));
    peft.addAdapter('b', lora(peft.model, { r: 4, target_modules: ['q_proj', 'k_proj', 'gate_proj', 'up_proj'] }, 2));
    peft.setActive('a', 'b');
    const both = compare(peft, 'b');
    expect(both.fused.aRows).toContain(8); // b: q/k 4 + 4
    expect(both.fused.aRows).toContain(24);
    (peft.get('a') as LoraAdapter).merge();
    const merged = compare(peft, 'b');
    expect(merged.fused.aRows).not.toContain(24); // a is merged: its branch does not run
    expect(merged.fused.aRows).toContain(8);
    (peft.get('a') as LoraAdapter).unmerge();
    peft.addAdapter('i', createIa3Adapter(peft.model, { target_modules: ['k_proj', 'v_proj', 'down_proj'], feedforward_modules: ['down_proj'] }));
    peft.setActive('a', 'i');
    const withIa3 = compare(peft, 'a');
    expect(withIa3.fused.aRows).toContain(24);
  });

  it('gradient checkpointing', () => {
    const model = loadModel(join(TINY, 'llama-gqa'));
    setGradientCheckpointing(model, true);
    const peft = new PeftModel(model);
    peft.addAdapter('a', lora(model, { use_dora: true, rank_pattern: { k_proj: 3 } }));
    const { fused } = compare(peft, 'a');
    expect(fused.aRows).toContain(8 + 3 + 8);
  });

  it('lora_dropout > 0: separate masks while training (no fusion, identical results), fused in eval', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    peft.addAdapter('a', lora(peft.model, { lora_dropout: 0.3 }));
    setFused(peft, true);
    const fused = run(peft, 'a', true);
    setFused(peft, false);
    const plain = run(peft, 'a', true);
    expect(fused.aRows.filter((r) => r > 8)).toHaveLength(0);
    expect(fused.loss).toBe(plain.loss);
    for (const [k, g] of plain.grads) expect(Array.from(fused.grads.get(k)!), k).toEqual(Array.from(g));
    const evalRun = compare(peft, 'a', false);
    expect(evalRun.fused.aRows).toContain(24);
  });

  it('saving writes the per-module lora_A tensors, updated by training through the fused path', () => {
    const peft = new PeftModel(loadModel(join(TINY, 'llama-gqa')));
    const a = lora(peft.model, {});
    peft.addAdapter('a', a);
    const keys = [...a.stateDict().keys()];
    expect(keys.filter((k) => k.endsWith('q_proj.lora_A.weight'))).toHaveLength(peft.model.layers.length);
    const before = a.layers.get('model.layers.0.self_attn.k_proj')!.A.data.slice();
    const { fused } = compare(peft, 'a');
    const gk = fused.grads.get('base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight')!;
    expect(gk.some((v) => v !== 0)).toBe(true);
    expect([...a.stateDict().keys()]).toEqual(keys);
    expect(Array.from(a.layers.get('model.layers.0.self_attn.k_proj')!.A.data)).toEqual(Array.from(before));
  });
});
