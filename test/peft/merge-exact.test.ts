/**
 * Merge / unmerge done right:
 * - a LoRA on the lm_head of a tied-embedding model unties it on merge (embed_tokens unchanged,
 *   the saved model has lm_head.weight and tie_word_embeddings false) and unmerge ties it again;
 * - unmerge(merge(W)) is bit-exact, and a bf16 weight is bf16 again after unmerge (LoRA and IA3);
 * - `peft merge --requantize` re-quantizes with the base's own quantization settings.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensorsFile, toFloat32 } from '../../src/io/safetensors.js';
import { forwardHidden, linearModules, lmLogits, type CausalLM, type LinearModule } from '../../src/models/model.js';
import { loadModel } from '../../src/models/load.js';
import { createIa3Adapter, LoraAdapter, mergeAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { loadBnbCheckpoint, saveQuantizedCheckpoint } from '../../src/quant/bnb-checkpoint.js';
import { loadModelQuantized } from '../../src/quant/quantize-model.js';
import { noGrad, Tensor, withArena } from '../../src/tensor/index.js';
import { FIXTURES, maxAbsDiff, STORIES } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-merge-exact-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const ids = [1, 403, 407, 261, 378, 410, 285, 287, 46, 311, 362, 281, 429];

function logitsOf(model: CausalLM, tokens = ids): Float32Array {
  return noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: Int32Array.from(tokens), B: 1, T: tokens.length }).hidden).data.slice()));
}

/** Every weight and bias of the model's linear modules and the embedding, as raw bytes. */
function snapshot(model: CausalLM): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const bytes = (a: Float32Array | Uint16Array): Buffer => Buffer.from(a.buffer.slice(a.byteOffset, a.byteOffset + a.byteLength));
  const e = model.embedTokens;
  out.set('embed', bytes(e.kind === 'f32' ? e.tensor.data : e.bits));
  for (const m of linearModules(model)) {
    const d = m.weight.data;
    out.set(`${m.name}.weight:${d.kind}`, bytes(d.kind === 'f32' ? d.tensor.data : d.kind === 'bf16' ? d.bits : d.q4.packed as unknown as Uint16Array));
    if (m.bias) out.set(`${m.name}.bias`, bytes(m.bias.data));
  }
  return out;
}

function expectSame(a: Map<string, Buffer>, b: Map<string, Buffer>): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  const differ = [...a].filter(([k, v]) => Buffer.compare(v, b.get(k)!) !== 0).map(([k]) => k);
  expect(differ).toEqual([]);
}

const f32Of = (m: LinearModule): Tensor => (m.weight.data as { kind: 'f32'; tensor: Tensor }).tensor;

describe('tied lm_head merge', () => {
  it('tied lm_head merge: merging a LoRA on lm_head unties it (embed_tokens unchanged); the saved model has lm_head.weight and tie_word_embeddings false; unmerge re-ties', () => {
    const model = loadModel(STORIES);
    expect(model.config.tieWordEmbeddings).toBe(true);
    const embed = (model.embedTokens as { tensor: Tensor }).tensor;
    expect(f32Of(model.lmHead)).toBe(embed);
    const embedBefore = embed.data.slice();
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['lm_head', 'q_proj'], init_lora_weights: false }), 3);
    peft.addAdapter('t', a);
    const adapted = logitsOf(model);
    const base = peft.withDisabled(() => logitsOf(model));
    expect(maxAbsDiff(adapted, base)).toBeGreaterThan(0.05);

    a.merge();
    expect(Buffer.compare(Buffer.from(embed.data.buffer), Buffer.from(embedBefore.buffer))).toBe(0);
    expect(model.config.tieWordEmbeddings).toBe(false);
    expect(model.config.raw.tie_word_embeddings).toBe(false);
    expect(f32Of(model.lmHead)).not.toBe(embed);
    expect(maxAbsDiff(logitsOf(model), adapted)).toBeLessThan(1e-4);

    a.unmerge();
    expect(f32Of(model.lmHead)).toBe(embed);
    expect(model.config.tieWordEmbeddings).toBe(true);
    expect(model.config.raw.tie_word_embeddings).toBe(true);
    expect(maxAbsDiff(logitsOf(model), adapted)).toBe(0);

    // what `peft merge` writes: transformers and peft-ts reload it with the adapter's logits
    const adapterDir = join(work, 'tied-adapter');
    saveAdapter(a, adapterDir, STORIES);
    const out = join(work, 'tied-merged');
    mergeAdapter(loadModel(STORIES), adapterDir, out);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(cfg.tie_word_embeddings).toBe(false);
    const st = readSafetensorsFile(join(out, 'model.safetensors')).tensors;
    expect(st.has('lm_head.weight')).toBe(true);
    const savedEmbed = toFloat32(st.get('model.embed_tokens.weight')!);
    expect(maxAbsDiff(savedEmbed, embedBefore)).toBe(0);
    expect(maxAbsDiff(logitsOf(loadModel(out)), adapted)).toBeLessThan(1e-4);
  });
});

describe('bit-exact unmerge', () => {
  it('bit-exact unmerge: LoRA (every linear and lm_head, lora_bias) merge then unmerge restores every weight bit for bit', () => {
    const model = loadModel(STORIES);
    const before = snapshot(model);
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 8, lora_alpha: 16, target_modules: 'all-linear', init_lora_weights: false, lora_bias: true }), 11);
    for (const l of a.layers.values()) for (let i = 0; i < l.biasB!.size; i++) l.biasB!.data[i] = 0.01 * Math.sin(i);
    peft.addAdapter('x', a);
    const adapted = logitsOf(model);
    for (let round = 0; round < 3; round++) {
      a.merge();
      expect(maxAbsDiff(logitsOf(model), adapted)).toBeLessThan(1e-4);
      a.unmerge();
      expectSame(before, snapshot(model));
    }
    expect(maxAbsDiff(logitsOf(model), adapted)).toBe(0);
  });

  it('bit-exact unmerge: a bf16 base is merged in float32 and is bf16 again (same bits) after unmerge', () => {
    const model = loadModel(join(FIXTURES, 'tiny', 'llama-tiny-bf16'));
    const q = model.layers[0].linears.q;
    expect(q.weight.data.kind).toBe('bf16');
    const before = snapshot(model);
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false }), 2);
    peft.addAdapter('x', a);
    const tokens = [1, 5, 9, 20, 3];
    const adapted = logitsOf(model, tokens);
    a.merge();
    expect(q.weight.data.kind).toBe('f32');
    expect(maxAbsDiff(logitsOf(model, tokens), adapted)).toBeLessThan(1e-4);
    a.unmerge();
    expect(q.weight.data.kind).toBe('bf16');
    expectSame(before, snapshot(model));
  });

  it('bit-exact unmerge: IA3 merge then unmerge restores every weight bit for bit', () => {
    const model = loadModel(STORIES);
    const before = snapshot(model);
    const peft = new PeftModel(model);
    const a = createIa3Adapter(model, { init_ia3_weights: false }, 4);
    peft.addAdapter('x', a);
    const adapted = logitsOf(model);
    a.merge();
    expect(maxAbsDiff(logitsOf(model), adapted)).toBeLessThan(1e-4);
    a.unmerge();
    expectSame(before, snapshot(model));
  });

  it('bit-exact unmerge: unmerging adapters out of merge order is refused naming the module', () => {
    const model = loadModel(STORIES);
    const peft = new PeftModel(model);
    const a = new LoraAdapter(model, parseLoraConfig({ r: 2, lora_alpha: 4, target_modules: ['q_proj'], init_lora_weights: false }), 1);
    const b = new LoraAdapter(model, parseLoraConfig({ r: 2, lora_alpha: 4, target_modules: ['q_proj'], init_lora_weights: false }), 2);
    peft.addAdapter('a', a);
    peft.addAdapter('b', b);
    const before = snapshot(model);
    a.merge();
    b.merge();
    expect(() => a.unmerge()).toThrow(/model\.layers\.0\.self_attn\.q_proj.*reverse order/s);
    b.unmerge();
    a.unmerge();
    expectSame(before, snapshot(model));
  });
});

describe('requantize with the base settings', () => {
  it("requantize settings: peft merge --requantize keeps the base's quant type, blocksize and double-quant choice", () => {
    const baseDir = join(work, 'fp4-128');
    saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'fp4', blocksize: 128, doubleQuant: false }), baseDir, { sourceDir: STORIES });
    const base = loadBnbCheckpoint(baseDir);
    const peft = new PeftModel(base);
    const a = new LoraAdapter(base, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: ['q_proj', 'down_proj'], init_lora_weights: false }), 9);
    peft.addAdapter('q', a);
    const adapterDir = join(work, 'fp4-adapter');
    saveAdapter(a, adapterDir, baseDir);
    const out = join(work, 'fp4-requantized');
    const r = mergeAdapter(loadBnbCheckpoint(baseDir), adapterDir, out, { requantize: true });
    expect(r.requantization).toMatchObject({ quantType: 'fp4', blocksize: 128, doubleQuant: false, quantizedLayers: 35 });
    const qc = (JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { quantization_config: Record<string, unknown> }).quantization_config;
    expect(qc.bnb_4bit_quant_type).toBe('fp4');
    expect(qc.bnb_4bit_use_double_quant).toBe(false);
    const merged = loadBnbCheckpoint(out);
    for (const l of merged.layers) for (const m of Object.values(l.linears)) {
      const d = m.weight.data;
      expect(d.kind, m.name).toBe('q4');
      if (d.kind !== 'q4') continue;
      expect(d.q4.blocksize, m.name).toBe(128);
      expect(d.q4.absmax, m.name).not.toBeNull();
    }
  });
});
