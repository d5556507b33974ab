/**
 * Prefix tuning and prompt tuning against HF PEFT 0.21 + transformers (tiny GQA Llama with an
 * explicit head_dim; stories260K for the TEXT init): PEFT-saved adapters reproduce PEFT's logits
 * (plain and left-padded) and gradients; save/load; the reparameterisation MLP; cached generation
 * equals recomputation; batched generation equals each prompt alone; padded batches vs alone;
 * bad input.
 */
import { describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { defaultContext, forwardHidden, lmLogits, type Batch, type CausalLM } from '../../src/models/model.js';
import {
  createPrefixAdapter, createPromptAdapter, loadAdapter, PeftModel, PrefixAdapter, PromptAdapter, saveAdapter,
} from '../../src/peft/index.js';
import { sequenceSetup } from '../../src/peft/attach.js';
import { generate, generateBatch } from '../../src/generate/generate.js';
import { argmax } from '../../src/generate/sampling.js';
import { batchLoss } from '../../src/train/methods.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { readSafetensorsFile, serializeSafetensors } from '../../src/io/safetensors.js';
import { backward, noGrad, Tensor, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, maxRelDiff, readJson, readTensors, STORIES } from '../helpers.js';

const GQA = join(FIXTURES, 'tiny', 'llama-gqa');
const fxDir = (name: string): string => join(FIXTURES, 'peft', name);

interface Fixture {
  input_ids: number[][];
  loss: { value: number };
  adapter_config: Record<string, unknown>;
  padded?: { input_ids: number[][]; attention_mask: number[][]; labels: number[][]; loss: number };
  prompt_text_init?: { init_token_ids: number[] };
}
const fixture = (name: string): Fixture => readJson<Fixture>(join(fxDir(name), 'fixture.json'));

/** The positions HF PEFT uses when none are passed: arange(T) for every row, pads counted. */
const peftPositions = (rows: number[][]): number[][] => rows.map((r) => r.map((_, t) => t));

function batchOf(rows: number[][], mask?: number[][], positions?: number[][]): Batch {
  const b: Batch = { ids: Int32Array.from(rows.flat()), B: rows.length, T: rows[0].length };
  if (mask) b.keyMask = Uint8Array.from(mask.flat());
  if (positions) b.positions = Int32Array.from(positions.flat());
  return b;
}

/** Logits of every row the forward produced (virtual-token rows included for prompt tuning). */
function logitsOf(model: CausalLM, batch: Batch): Float32Array {
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, batch, defaultContext()).hidden).data.slice()));
}

/** labels[b, t] = ids[b, t+1] (−100 for the last token and for −100 targets): transformers' shift. */
function shiftedLabels(labels: number[][]): Int32Array {
  const T = labels[0].length;
  const out = new Int32Array(labels.length * T).fill(-100);
  labels.forEach((r, b) => { for (let t = 0; t < T - 1; t++) out[b * T + t] = r[t + 1]; });
  return out;
}

/**
 * PEFT's loss with labels = input_ids (prompt tuning: the last virtual token also predicts
 * input_ids[0]) and its gradients w.r.t. the adapter's trainable tensors.
 */
function lossAndGrads(peft: PeftModel, name: string, batch: Batch, labels: number[][]): { loss: number; grads: Map<string, Float32Array> } {
  const params = peft.trainable(name);
  for (const p of params) p.tensor.grad = null;
  const prompt = (peft.get(name).virtualTokens?.() ?? 0) > 0;
  const lab = shiftedLabels(labels);
  let n = lab.filter((l) => l !== -100).length;
  if (prompt) n += labels.filter((r) => r[0] !== -100).length;
  let loss = 0;
  withArena(() => {
    const r = batchLoss(peft.model, { batch, labels: lab, numTargets: n }, 1 / n, defaultContext(true), prompt);
    expect(r.count).toBe(n);
    loss = r.sum / r.count;
    backward(r.loss);
  });
  return { loss, grads: new Map(params.map((p) => [p.name, p.tensor.grad ?? new Float32Array(p.tensor.size)])) };
}

const gradKey = (k: string): string => k.replace('.default.', '.');

function expectGrads(grads: Map<string, Float32Array>, refFile: string, only?: string[]): void {
  const ref = readTensors(refFile);
  for (const [k, r] of ref) {
    if (only && !only.includes(k)) continue;
    const g = grads.get(gradKey(k));
    expect(g, k).toBeDefined();
    expect(maxRelDiff(g!, r.data), k).toBeLessThan(1e-4);
  }
}

/** Greedy decoding without a cache: the full forward each step, argmax of the last row. */
function greedyNoCache(model: CausalLM, prompt: number[], maxNew: number): number[] {
  const ids = [...prompt];
  const stops = new Set(model.config.eosTokenIds);
  for (let i = 0; i < maxNew; i++) {
    const logits = noGrad(() => withArena(() => {
      const { hidden, batch } = forwardHidden(model, batchOf([ids]), defaultContext());
      const H = model.config.hiddenSize;
      const last = new Tensor(hidden.data.slice((batch.T - 1) * H, batch.T * H), [1, H]);
      return lmLogits(model, last).data.slice();
    }));
    const id = argmax(logits);
    if (stops.has(id)) break;
    ids.push(id);
  }
  return ids;
}

function roundTrip(peft: PeftModel, name: string, base: string, fx: string): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `peft-${name}-`));
  saveAdapter(peft.get(name), dir, base);
  const src = readSafetensorsFile(join(fxDir(fx), 'adapter_model.safetensors'));
  const out = readSafetensorsFile(join(dir, 'adapter_model.safetensors'));
  expect([...out.tensors.keys()]).toEqual(['prompt_embeddings']);
  expect(out.tensors.get('prompt_embeddings')!.shape).toEqual(src.tensors.get('prompt_embeddings')!.shape);
  expect(out.metadata).toEqual({ format: 'pt' });
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

describe('prefix tuning matches HF PEFT (tiny GQA Llama, head_dim 16, 2 kv heads)', () => {
  for (const name of ['prefix', 'prefix-proj']) {
    describe(name, () => {
      const fx = fixture(name);
      const model = loadModel(GQA);
      const peft = new PeftModel(model);
      const a = loadAdapter(peft, fxDir(name), 'p') as PrefixAdapter;

      it('config resolves token_dim = kv_heads·head_dim and heads = kv_heads; config() equals PEFT\'s', () => {
        expect(a.cfg).toMatchObject({ num_virtual_tokens: 5, token_dim: 32, num_attention_heads: 2, num_layers: 2, encoder_hidden_size: 32 });
        const { peft_version: _v, ...want } = fx.adapter_config;
        expect(a.config()).toEqual(want);
      });

      it('logits within 1e-4 (real tokens at positions 5..15)', () => {
        const ref = readTensors(join(fxDir(name), 'logits.safetensors')).get('logits')!;
        expect(maxAbsDiff(logitsOf(model, batchOf(fx.input_ids)), ref.data)).toBeLessThan(1e-4);
      });

      it("left-padded batch with PEFT's positions (arange, pads counted): every position within 1e-4 (prefix always visible, pad queries see only it)", () => {
        const ref = readTensors(join(fxDir(name), 'logits_padded.safetensors')).get('logits')!;
        const p = fx.padded!;
        expect(maxAbsDiff(logitsOf(model, batchOf(p.input_ids, p.attention_mask, peftPositions(p.input_ids))), ref.data)).toBeLessThan(1e-4);
      });

      it('loss within 1e-5; gradient of the flat prefix within 1e-4', () => {
        const { loss, grads } = lossAndGrads(peft, 'p', batchOf(fx.input_ids), fx.input_ids);
        expect(Math.abs(loss - fx.loss.value)).toBeLessThan(1e-5);
        const g = grads.get('prompt_encoder.embedding.weight')!;
        if (name === 'prefix') {
          expectGrads(grads, join(fxDir(name), 'grads.safetensors'));
        } else {
          // the fixture has the MLP's gradients but not its weights; the last layer's bias gradient
          // is Σ over virtual tokens of the flat prefix's gradient, which the loaded adapter gives
          const ref = readTensors(join(fxDir(name), 'grads.safetensors')).get('prompt_encoder.default.transform.2.bias')!;
          const sum = new Float32Array(a.width);
          for (let p = 0; p < a.P; p++) for (let j = 0; j < a.width; j++) sum[j] += g[p * a.width + j];
          expect(maxRelDiff(sum, ref.data)).toBeLessThan(1e-4);
        }
      });

      it('save → load round trip is bit-exact and gives the same logits', () => {
        const { dir, cleanup } = roundTrip(peft, 'p', 'test/fixtures/tiny/llama-gqa', name);
        try {
          const src = readSafetensorsFile(join(fxDir(name), 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
          const out = readSafetensorsFile(join(dir, 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
          expect(Buffer.compare(Buffer.from(src.data), Buffer.from(out.data))).toBe(0);
          expect(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'))).toEqual(
            Object.fromEntries(Object.entries(fx.adapter_config).filter(([k]) => k !== 'peft_version')));
          const p2 = new PeftModel(loadModel(GQA));
          loadAdapter(p2, dir);
          expect(maxAbsDiff(logitsOf(p2.model, batchOf(fx.input_ids)), logitsOf(model, batchOf(fx.input_ids)))).toBe(0);
        } finally {
          cleanup();
        }
      });
    });
  }

  it('prefix_projection trains the MLP: autograd gradients equal the chain rule through the flat prefix; saving folds it', () => {
    const model = loadModel(GQA);
    const peft = new PeftModel(model);
    const mlpA = createPrefixAdapter(model, { num_virtual_tokens: 5, prefix_projection: true, encoder_hidden_size: 24 }, 7);
    peft.addAdapter('mlp', mlpA);
    expect(mlpA.numParameters()).toBe(5 * 32 + 24 * 32 + 24 + 128 * 24 + 128);
    expect(mlpA.config()).toMatchObject({ token_dim: 32, encoder_hidden_size: 24, prefix_projection: true, num_attention_heads: 2 });
    const fx = fixture('prefix');
    const batch = batchOf(fx.input_ids);
    const { grads } = lossAndGrads(peft, 'mlp', batch, fx.input_ids);
    // the same prefix, flat: its gradient G = dL/dflat
    const flatA = createPrefixAdapter(model, { num_virtual_tokens: 5 });
    flatA.flat!.data.set(mlpA.prefixValues());
    peft.addAdapter('flat', flatA);
    const logitsMlp = (peft.setActive('mlp'), logitsOf(model, batch));
    peft.setActive('flat');
    expect(maxAbsDiff(logitsOf(model, batch), logitsMlp)).toBeLessThan(1e-5);
    const G = lossAndGrads(peft, 'flat', batch, fx.input_ids).grads.get('prompt_encoder.embedding.weight')!;
    // manual backprop (float64) through flat = tanh(E·W0ᵀ + b0)·W2ᵀ + b2
    const m = mlpA.mlp!;
    const P = 5, td = 32, enc = 24, W = 128;
    const h = new Float64Array(P * enc);
    for (let p = 0; p < P; p++) for (let e = 0; e < enc; e++) {
      let s = m.b0.data[e];
      for (let i = 0; i < td; i++) s += m.embedding.data[p * td + i] * m.w0.data[e * td + i];
      h[p * enc + e] = Math.tanh(s);
    }
    const dW2 = new Float64Array(W * enc), db2 = new Float64Array(W), da = new Float64Array(P * enc);
    for (let p = 0; p < P; p++) for (let o = 0; o < W; o++) {
      const g = G[p * W + o];
      db2[o] += g;
      for (let e = 0; e < enc; e++) { dW2[o * enc + e] += g * h[p * enc + e]; da[p * enc + e] += g * m.w2.data[o * enc + e]; }
    }
    for (let i = 0; i < da.length; i++) da[i] *= 1 - h[i] * h[i];
    const dW0 = new Float64Array(enc * td), db0 = new Float64Array(enc), dE = new Float64Array(P * td);
    for (let p = 0; p < P; p++) for (let e = 0; e < enc; e++) {
      const g = da[p * enc + e];
      db0[e] += g;
      for (let i = 0; i < td; i++) { dW0[e * td + i] += g * m.embedding.data[p * td + i]; dE[p * td + i] += g * m.w0.data[e * td + i]; }
    }
    const want: Record<string, Float64Array> = {
      'prompt_encoder.embedding.weight': dE, 'prompt_encoder.transform.0.weight': dW0, 'prompt_encoder.transform.0.bias': db0,
      'prompt_encoder.transform.2.weight': dW2, 'prompt_encoder.transform.2.bias': db2,
    };
    for (const [k, v] of Object.entries(want)) expect(maxRelDiff(grads.get(k)!, v), k).toBeLessThan(1e-4);
    // saved: one tensor, the MLP output
    const sd = mlpA.stateDict();
    expect([...sd.keys()]).toEqual(['prompt_embeddings']);
    expect(sd.get('prompt_embeddings')!.shape).toEqual([5, 128]);
    const dir = mkdtempSync(join(tmpdir(), 'peft-prefix-mlp-'));
    try {
      saveAdapter(mlpA, dir, 'llama-gqa');
      const p2 = new PeftModel(loadModel(GQA));
      const back = loadAdapter(p2, dir) as PrefixAdapter;
      expect(back.mlp).toBeNull();
      expect(back.config()).toMatchObject({ prefix_projection: true, encoder_hidden_size: 24 });
      expect(maxAbsDiff(logitsOf(p2.model, batch), logitsMlp)).toBeLessThan(1e-5);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('prompt tuning matches HF PEFT', () => {
  for (const name of ['prompt-random', 'prompt-text']) {
    describe(name, () => {
      const fx = fixture(name);
      const base = name === 'prompt-text' ? STORIES : GQA;
      const model = loadModel(base);
      const peft = new PeftModel(model);
      const a = loadAdapter(peft, fxDir(name), 'p') as PromptAdapter;

      it("config() equals PEFT's adapter_config.json", () => {
        const { peft_version: _v, ...want } = fx.adapter_config;
        expect(a.config()).toEqual(want);
      });

      it('logits of the virtual and the real rows within 1e-4 (positions arange(P+T))', () => {
        const ref = readTensors(join(fxDir(name), 'logits.safetensors')).get('logits')!;
        expect(ref.shape[1]).toBe(6 + 11);
        expect(maxAbsDiff(logitsOf(model, batchOf(fx.input_ids)), ref.data)).toBeLessThan(1e-4);
      });

      it('loss (the last virtual token predicts input_ids[0]) within 1e-5; gradients within 1e-4', () => {
        const { loss, grads } = lossAndGrads(peft, 'p', batchOf(fx.input_ids), fx.input_ids);
        expect(Math.abs(loss - fx.loss.value)).toBeLessThan(1e-5);
        expectGrads(grads, join(fxDir(name), 'grads.safetensors'));
      });

      it('save → load round trip is bit-exact', () => {
        const { dir, cleanup } = roundTrip(peft, 'p', String(fx.adapter_config.base_model_name_or_path), name);
        try {
          const src = readSafetensorsFile(join(fxDir(name), 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
          const out = readSafetensorsFile(join(dir, 'adapter_model.safetensors')).tensors.get('prompt_embeddings')!;
          expect(Buffer.compare(Buffer.from(src.data), Buffer.from(out.data))).toBe(0);
          expect(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'))).toEqual(
            Object.fromEntries(Object.entries(fx.adapter_config).filter(([k]) => k !== 'peft_version')));
        } finally {
          cleanup();
        }
      });
    });
  }

  it("prompt-random, left-padded with PEFT's positions: every position within 1e-4 (virtual tokens first, before the padding), and PEFT's padded loss", () => {
    const fx = fixture('prompt-random');
    const model = loadModel(GQA);
    const peft = new PeftModel(model);
    loadAdapter(peft, fxDir('prompt-random'), 'p');
    const p = fx.padded!;
    const ref = readTensors(join(fxDir('prompt-random'), 'logits_padded.safetensors')).get('logits')!;
    expect(maxAbsDiff(logitsOf(model, batchOf(p.input_ids, p.attention_mask, peftPositions(p.input_ids))), ref.data)).toBeLessThan(1e-4);
    const { loss } = lossAndGrads(peft, 'p', batchOf(p.input_ids, p.attention_mask, peftPositions(p.input_ids)), p.labels);
    expect(Math.abs(loss - p.loss)).toBeLessThan(1e-5);
  });

  it("TEXT init: the tokenizer's ids (BOS included) repeated to num_virtual_tokens; embeddings equal PEFT's bit for bit", () => {
    const fx = fixture('prompt-text');
    const model = loadModel(STORIES);
    const a = createPromptAdapter(model, {
      num_virtual_tokens: 6, prompt_tuning_init: 'TEXT', prompt_tuning_init_text: 'Once upon a', tokenizer_name_or_path: 'models/stories260K',
      base_model_name_or_path: 'models/stories260K',
    }, loadTokenizer(STORIES));
    expect(a.initTokenIds).toEqual(fx.prompt_text_init!.init_token_ids);
    const saved = readTensors(join(fxDir('prompt-text'), 'adapter_model.safetensors')).get('prompt_embeddings')!;
    expect(maxAbsDiff(a.embedding.data, saved.data)).toBe(0);
    const { peft_version: _v, ...want } = fx.adapter_config;
    expect(a.config()).toEqual(want);
    expect(() => createPromptAdapter(model, { num_virtual_tokens: 6, prompt_tuning_init: 'TEXT' })).toThrow(/prompt_tuning_init_text/);
  });
});

describe('prompt learning: generation and padding', () => {
  const model = loadModel(GQA);
  const peft = new PeftModel(model);
  loadAdapter(peft, fxDir('prefix'), 'prefix', false);
  loadAdapter(peft, fxDir('prefix-proj'), 'proj', false);
  loadAdapter(peft, fxDir('prompt-random'), 'prompt', false);
  const setup = sequenceSetup(peft);
  const fx = fixture('prefix');
  const prompts = [fx.input_ids[0].slice(0, 3), fx.input_ids[1].slice(0, 7), fx.input_ids[0].slice(2, 11)];
  const maxNew = 8;

  for (const name of ['prefix', 'proj', 'prompt']) {
    it(`${name}: KV-cached greedy generation equals full recomputation; a batch of different lengths equals each alone`, () => {
      peft.setActive(name);
      const alone = prompts.map((p) => generate(model, p, { maxNewTokens: maxNew }, setup).ids);
      prompts.forEach((p, i) => expect(alone[i], `prompt ${i}`).toEqual(greedyNoCache(model, p, maxNew)));
      const together = generateBatch(model, prompts.map((ids) => ({ ids })), { maxNewTokens: maxNew }, setup);
      together.forEach((r, i) => expect(r.ids, `row ${i}`).toEqual(alone[i]));
      // the same, each row naming its adapter (the mixed-adapter path)
      const named = generateBatch(model, prompts.map((ids) => ({ ids, adapter: name })), { maxNewTokens: maxNew }, setup);
      named.forEach((r, i) => expect(r.ids, `named row ${i}`).toEqual(alone[i]));
    });
  }

  it('a mixed batch (prefix, prompt, base) gives each row what it gives alone', () => {
    const rows = [{ ids: prompts[0], adapter: 'prefix' }, { ids: prompts[1], adapter: 'prompt' }, { ids: prompts[2], adapter: null }];
    const together = generateBatch(model, rows, { maxNewTokens: maxNew }, setup);
    rows.forEach((r, i) => {
      const alone = r.adapter
        ? (peft.setActive(r.adapter), greedyNoCache(model, r.ids, maxNew))
        : peft.withDisabled(() => greedyNoCache(model, r.ids, maxNew));
      expect(together[i].ids, `row ${i}`).toEqual(alone);
    });
  });

  it('padded batch vs alone: PEFT positions (arange) differ for prefix/prompt tuning; a mask alone derives cumsum positions, making padding invisible', () => {
    const p = fx.padded!;
    const pos = p.attention_mask.map((m) => { let c = -1; return m.map((x) => (x ? ++c : 0)); });
    const V = model.config.vocabSize, T = 11, pad = 3, n = T - pad;
    const real = p.input_ids[1].slice(pad);
    for (const name of ['prompt', 'prefix', 'proj']) {
      peft.setActive(name);
      const P = name === 'prompt' ? 6 : 0; // prompt tuning returns the virtual rows too
      const alone = logitsOf(model, batchOf([real])).subarray(P * V);
      const rowReal = (l: Float32Array): Float32Array => l.subarray(((P + T) + P + pad) * V, ((P + T) + P + T) * V);
      const hf = rowReal(logitsOf(model, batchOf(p.input_ids, p.attention_mask, peftPositions(p.input_ids))));
      const cumsum = rowReal(logitsOf(model, batchOf(p.input_ids, p.attention_mask, pos)));
      const maskOnly = rowReal(logitsOf(model, batchOf(p.input_ids, p.attention_mask)));
      expect(hf.length).toBe(n * V);
      // with PEFT's positions the real tokens sit 3 positions later than alone; the prefix/prompt
      // keys are unrotated/fixed, so the logits move (the fixture README reports up to 3.5–5.2)
      expect(maxAbsDiff(hf, alone), name).toBeGreaterThan(1e-2);
      expect(maxAbsDiff(cumsum, alone), name).toBeLessThan(1e-4);
      expect(maxAbsDiff(maskOnly, cumsum), name).toBe(0);
    }
  });
  it('packed rows (segment ids, positions restarting at 0): every example sees the virtual tokens and equals itself alone', () => {
    const a = [5, 9, 13, 21], b = [40, 41, 42, 43, 44];
    const batch: Batch = {
      ids: Int32Array.from([...a, ...b]), B: 1, T: 9,
      segIds: Int32Array.from([0, 0, 0, 0, 1, 1, 1, 1, 1]), positions: Int32Array.from([0, 1, 2, 3, 0, 1, 2, 3, 4]),
    };
    const V = model.config.vocabSize;
    for (const name of ['prompt', 'prefix']) {
      peft.setActive(name);
      const P = name === 'prompt' ? 6 : 0;
      const packed = logitsOf(model, batch);
      expect(maxAbsDiff(packed.subarray(P * V, (P + 4) * V), logitsOf(model, batchOf([a])).subarray(P * V)), name).toBeLessThan(1e-4);
      expect(maxAbsDiff(packed.subarray((P + 4) * V), logitsOf(model, batchOf([b])).subarray(P * V)), name).toBeLessThan(1e-4);
    }
  });
});

describe('prompt learning: bad input', () => {
  function adapterDir(cfg: Record<string, unknown>, shape: number[]): string {
    const dir = mkdtempSync(join(tmpdir(), 'peft-bad-'));
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    const n = shape.reduce((a, b) => a * b, 1);
    writeFileSync(join(dir, 'adapter_model.safetensors'), serializeSafetensors([{ name: 'prompt_embeddings', dtype: 'F32', shape, data: new Float32Array(n) }], { format: 'pt' }));
    return dir;
  }

  it('a prefix made for a base with 4 KV heads is refused, naming the tensor and both shapes', () => {
    const cfg = { ...fixture('prefix').adapter_config, num_attention_heads: 4, token_dim: 64 };
    const dir = adapterDir(cfg, [5, 2 * 2 * 64]);
    try {
      const p = new PeftModel(loadModel(GQA));
      expect(() => loadAdapter(p, dir)).toThrow(/adapter_model\.safetensors: prompt_embeddings: adapter tensor shape does not fit the base model .*\(expected \[5,128\], found \[5,256\]\)/);
      expect(p.adapters.size).toBe(0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a prefix whose tensor fits but whose head split differs is refused, naming the config key', () => {
    const dir = adapterDir({ ...fixture('prefix').adapter_config, num_attention_heads: 4 }, [5, 128]);
    try {
      expect(() => loadAdapter(new PeftModel(loadModel(GQA)), dir)).toThrow(/adapter_config\.json: num_attention_heads: .*expected 2/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a prompt of another hidden size, and a missing tensor, are refused naming file and tensor', () => {
    const dir = adapterDir(fixture('prompt-random').adapter_config, [6, 64]);
    try {
      expect(() => loadAdapter(new PeftModel(loadModel(GQA)), dir)).toThrow(/prompt_embeddings: .*expected \[6,48\], found \[6,64\]/);
      writeFileSync(join(dir, 'adapter_model.safetensors'), serializeSafetensors([{ name: 'other', dtype: 'F32', shape: [1], data: new Float32Array(1) }], { format: 'pt' }));
      expect(() => loadAdapter(new PeftModel(loadModel(GQA)), dir)).toThrow(/adapter_model\.safetensors: prompt_embeddings: adapter tensor missing/);
      cpSync(join(fxDir('prompt-random'), 'adapter_model.safetensors'), join(dir, 'adapter_model.safetensors'));
      writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ peft_type: 'PROMPT_TUNING', task_type: 'CAUSAL_LM' }));
      expect(() => loadAdapter(new PeftModel(loadModel(GQA)), dir)).toThrow(/adapter_config\.json: num_virtual_tokens: num_virtual_tokens is required/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
