/**
 * The step-wise continuous-batching decoder (src/generate/batch.ts) against the static
 * `generate`/`generateBatch`: sequences joining mid-run, mixed adapters, per-sequence RNG,
 * PEFT sequence setup (virtual-token embeddings, position offsets, cache prefill), stop ids and
 * strings, cancellation, and the context limit.
 */
import { describe, expect, it } from 'vitest';
import { BatchDecoder, type DecodeEvent, type DecodeRequest } from '../../src/generate/batch.js';
import { generate, generateBatch, type SequenceSetup } from '../../src/generate/generate.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { sequenceSetup } from '../../src/peft/attach.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../../src/peft/index.js';
import { makeRng } from '../../src/generate/sampling.js';
import { STORIES } from '../helpers.js';

const model = loadModel(STORIES);
const tok = loadTokenizer(STORIES);
const peft = new PeftModel(model);
for (let i = 0; i < 3; i++) {
  const cfg = parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false });
  peft.addAdapter(`a${i}`, new LoraAdapter(model, cfg, 11 + i), false);
}
const setup = sequenceSetup(peft);
const decode = (ids: number[]): string => tok.decode(ids);
const prompts = ['Once upon a time', 'The cat sat', 'Lily was happy', 'One day, a little'].map((p) => tok.encode(p));
const adapters = [null, 'a0', 'a1', 'a2'];

/** Runs the decoder to completion; `joins[step]` lists requests added before that step. */
function run(dec: BatchDecoder, joins: Map<number, DecodeRequest[]>): Map<string, { tokens: number[]; text: string; finish: DecodeEvent['finish'] }> {
  const out = new Map<string, { tokens: number[]; text: string; finish: DecodeEvent['finish'] }>();
  const lastJoin = Math.max(...joins.keys());
  for (let step = 0; step <= lastJoin || !dec.idle; step++) {
    for (const r of joins.get(step) ?? []) {
      dec.add(r);
      out.set(r.id, { tokens: [], text: '', finish: undefined });
    }
    for (const e of dec.step().events) {
      const o = out.get(e.id)!;
      expect(o.finish).toBeUndefined();
      o.tokens.push(...e.tokens);
      o.text += e.text;
      if (e.finish) o.finish = e.finish;
    }
    if (step > 2000) throw new Error('decoder did not finish');
  }
  return out;
}

describe('BatchDecoder', () => {
  it('sequences joining at different steps, each with its own adapter, match single-sequence generate (greedy)', () => {
    const ref = prompts.map((p, i) => generate(model, p, { maxNewTokens: 30 }, setup, adapters[i]));
    const dec = new BatchDecoder(model, { setup, decode });
    const req = (i: number): DecodeRequest => ({ id: String(i), promptIds: prompts[i], adapter: adapters[i], maxNewTokens: 30 });
    const out = run(dec, new Map([[0, [req(0)]], [3, [req(1)]], [7, [req(2), req(3)]]]));
    prompts.forEach((p, i) => {
      const o = out.get(String(i))!;
      expect(o.tokens).toEqual(ref[i].newIds);
      expect(o.finish?.reason).toBe(ref[i].finishReason);
      expect(o.finish?.completionTokens).toBe(ref[i].newIds.length);
      expect(o.finish?.promptTokens).toBe(p.length);
      // streamed text = the continuation's text as decoded with the prompt
      expect(tok.decode([...p, ...o.tokens])).toBe(tok.decode(p) + o.text);
    });
    // the adapters really differ: not every row equals the base model's
    const base = generate(model, prompts[1], { maxNewTokens: 30 }, setup, null).newIds;
    expect(out.get('1')!.tokens).not.toEqual(base);
  });

  it('sampling uses a per-sequence RNG: the same tokens alone and in a batch', () => {
    const opts = { temperature: 0.9, topP: 0.95, topK: 40 };
    const alone = prompts.map((p, i) => {
      const d = new BatchDecoder(model, { setup });
      return run(d, new Map([[0, [{ id: 'x', promptIds: p, adapter: adapters[i], maxNewTokens: 25, seed: 100 + i, ...opts }]]])).get('x')!.tokens;
    });
    const dec = new BatchDecoder(model, { setup });
    const out = run(dec, new Map([
      [0, [{ id: '0', promptIds: prompts[0], adapter: adapters[0], maxNewTokens: 25, seed: 100, ...opts }]],
      [2, [1, 2, 3].map((i) => ({ id: String(i), promptIds: prompts[i], adapter: adapters[i], maxNewTokens: 25, seed: 100 + i, ...opts }))],
    ]));
    prompts.forEach((_, i) => expect(out.get(String(i))!.tokens).toEqual(alone[i]));
    expect(alone[0]).not.toEqual(generate(model, prompts[0], { maxNewTokens: 25 }).newIds);
  });

  it('feeds PEFT sequence setup (virtual-token embeddings, position offset, cache prefill) as generateBatch does', () => {
    const H = model.config.hiddenSize;
    const rng = makeRng(5);
    const virt = Float32Array.from({ length: 3 * H }, () => (rng() - 0.5) * 0.5);
    let prepared = 0;
    const fake: SequenceSetup = {
      positionOffset: (a) => (a === 'a0' ? 3 : 0),
      promptEmbeddings: (a) => (a === 'a0' ? virt : null),
      prepareCache: () => { prepared++; },
    };
    const ref = generateBatch(model, [{ ids: prompts[0], adapter: 'a0' }], { maxNewTokens: 20 }, fake)[0];
    const plain = generate(model, prompts[0], { maxNewTokens: 20 }, {}, 'a0');
    expect(ref.newIds).not.toEqual(plain.newIds);
    prepared = 0;
    const dec = new BatchDecoder(model, { setup: fake });
    const out = run(dec, new Map([[0, [{ id: 'p', promptIds: prompts[1], adapter: 'a1', maxNewTokens: 20 }]], [2, [{ id: 'v', promptIds: prompts[0], adapter: 'a0', maxNewTokens: 20 }]]]));
    expect(prepared).toBe(2);
    expect(out.get('v')!.tokens).toEqual(ref.newIds);
    expect(out.get('p')!.tokens).toEqual(generate(model, prompts[1], { maxNewTokens: 20 }, fake, 'a1').newIds);
  });

  it('stop ids end a sequence (token not returned); ignoreEos keeps going', () => {
    const ref = generate(model, prompts[0], { maxNewTokens: 40 }).newIds;
    const stopAt = ref[10];
    const cut = ref.indexOf(stopAt);
    const dec = new BatchDecoder(model, { decode });
    const out = run(dec, new Map([[0, [
      { id: 's', promptIds: prompts[0], maxNewTokens: 40, stopIds: [stopAt] },
      { id: 'n', promptIds: prompts[0], maxNewTokens: 40 },
    ]]]));
    expect(out.get('s')!.tokens).toEqual(ref.slice(0, cut));
    expect(out.get('s')!.finish?.reason).toBe('stop');
    expect(out.get('n')!.tokens).toEqual(ref);
    // EOS (id 2) is a stop id unless ignoreEos
    const eos = model.config.eosTokenIds[0];
    const e = new BatchDecoder(model);
    const withEos = run(e, new Map([[0, [{ id: 'a', promptIds: prompts[0], maxNewTokens: 150, stopIds: [1] }, { id: 'b', promptIds: prompts[0], maxNewTokens: 150, stopIds: [1], ignoreEos: true }]]]));
    const a = withEos.get('a')!, b = withEos.get('b')!;
    expect(a.tokens).not.toContain(eos);
    if (a.finish?.reason === 'stop' && b.tokens.length > a.tokens.length) expect(b.tokens.slice(0, a.tokens.length)).toEqual(a.tokens);
  });

  it('stop strings: text ends before the match, partial matches are held back, tokens count', () => {
    const ref = generate(model, prompts[0], { maxNewTokens: 40 }).newIds;
    const full = tok.decode([...prompts[0], ...ref]).slice(tok.decode(prompts[0]).length);
    const stop = 'little girl';
    const at = full.indexOf(stop);
    expect(at).toBeGreaterThan(0);
    const dec = new BatchDecoder(model, { decode });
    const texts: string[] = [];
    dec.add({ id: 's', promptIds: prompts[0], maxNewTokens: 40, stopStrings: ['never-appears', stop] });
    let finish: DecodeEvent['finish'];
    while (!dec.idle) for (const e of dec.step().events) { texts.push(e.text); finish = e.finish ?? finish; }
    expect(texts.join('')).toBe(full.slice(0, at));
    expect(finish?.reason).toBe('stop');
    expect(finish!.completionTokens).toBeGreaterThan(0);
    // no emitted piece ever contained a prefix of the stop string that was later completed
    expect(texts.join('')).not.toContain('little');
  });

  it('cancel removes a sequence between steps; the rest continue unchanged', () => {
    const ref = generate(model, prompts[2], { maxNewTokens: 20 }, setup, 'a1').newIds;
    const dec = new BatchDecoder(model, { setup });
    dec.add({ id: 'gone', promptIds: prompts[0], maxNewTokens: 100 });
    dec.add({ id: 'stay', promptIds: prompts[2], adapter: 'a1', maxNewTokens: 20 });
    const got: number[] = [];
    for (let i = 0; i < 3; i++) for (const e of dec.step().events) if (e.id === 'stay') got.push(...e.tokens);
    expect(dec.cancel('gone')).toBe(true);
    expect(dec.cancel('gone')).toBe(false);
    expect(dec.adaptersInUse()).toEqual(new Set(['a1']));
    while (!dec.idle) {
      const { events, stats } = dec.step();
      expect(stats!.sequences).toBe(1);
      for (const e of events) got.push(...e.tokens);
    }
    expect(got).toEqual(ref);
  });

  it('stops at the context limit with finish reason length; rejects bad requests', () => {
    const maxPos = model.config.maxPositionEmbeddings;
    const long = Array.from({ length: maxPos - 3 }, (_, i) => 3 + (i % 200));
    const dec = new BatchDecoder(model);
    const out = run(dec, new Map([[0, [{ id: 'l', promptIds: long, maxNewTokens: 50, ignoreEos: true }]]]));
    expect(out.get('l')!.tokens.length).toBe(3);
    expect(out.get('l')!.finish?.reason).toBe('length');
    expect(() => dec.add({ id: 'x', promptIds: [], maxNewTokens: 1 })).toThrow(RangeError);
    expect(() => dec.add({ id: 'x', promptIds: [1], maxNewTokens: 0 })).toThrow(RangeError);
    expect(() => dec.add({ id: 'x', promptIds: [1, 99999], maxNewTokens: 1 })).toThrow(/vocabulary/);
    expect(() => dec.add({ id: 'x', promptIds: new Array(maxPos).fill(5), maxNewTokens: 1 })).toThrow(/context/);
    expect(() => dec.add({ id: 'x', promptIds: [1], maxNewTokens: 1, temperature: -1 })).toThrow(RangeError);
    expect(() => dec.add({ id: 'x', promptIds: [1], maxNewTokens: 1, stopStrings: ['a'] })).toThrow(/decode/);
    dec.add({ id: 'x', promptIds: [1], maxNewTokens: 1 });
    expect(() => dec.add({ id: 'x', promptIds: [1], maxNewTokens: 1 })).toThrow(/already/);
  });

  it('the prefill budget admits long prompts over several steps', () => {
    const dec = new BatchDecoder(model, { maxPrefillTokens: 10 });
    for (let i = 0; i < 4; i++) dec.add({ id: String(i), promptIds: new Array(8).fill(300 + i), maxNewTokens: 5 });
    const first = dec.step().stats!;
    expect(first.prefills).toBe(1);
    expect(first.rows).toBe(8);
    const second = dec.step().stats!;
    expect(second.prefills).toBe(1);
    expect(second.sequences).toBe(2);
  });
});
