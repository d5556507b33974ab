/**
 * Preference tuning against TRL 1.13 (fixtures from scripts/fixtures/make_preference.py): on
 * stories260K with a fixed LoRA adapter, one batch's loss and reward metrics equal DPOTrainer
 * (sigmoid, IPO), ORPOTrainer, CPOTrainer (SimPO, with and without the NLL term) and KTOTrainer
 * within 1e-5, with the reference being the base (adapter disabled) or a frozen reference adapter;
 * the LoRA gradients match TRL's; the losses' analytic gradients match finite differences; our
 * data pipeline tokenizes the records into TRL's token ids and masks.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { loadAdapter, PeftModel } from '../../src/peft/index.js';
import { backward, withArena } from '../../src/tensor/index.js';
import { loadPreferenceData, type PairExample, type UnpairedExample } from '../../src/train/preference/data.js';
import {
  defaultPreferenceConfig, dpoLoss, ipoLoss, ktoLoss, orpoLoss, simpoLoss, type PairLogps, type PreferenceConfig,
} from '../../src/train/preference/losses.js';
import { ktoStep, pairStep, type PreferenceSetup } from '../../src/train/preference/step.js';
import { FIXTURES, maxRelDiff, readJson, readTensors, STORIES } from '../helpers.js';

interface Case {
  objective: 'dpo' | 'ipo' | 'orpo' | 'simpo' | 'kto';
  config: Record<string, number | string>;
  ref_lora_B_factor?: number | null;
  input_ids: number[][];
  attention_mask: number[][];
  completion_mask?: number[][];
  labels?: number[][];
  KL_input_ids?: number[][];
  KL_completion_mask?: number[][];
  KL_attention_mask?: number[][];
  label?: boolean[];
  loss: number;
  metrics: Record<string, number>;
}
interface Fixture {
  pairs: Array<{ prompt: string; chosen: string; rejected: string }>;
  unpaired: Array<{ prompt: string; completion: string; label: boolean }>;
  cases: Record<string, Case>;
}

const DIR = join(FIXTURES, 'preference');
const fx = readJson<Fixture>(join(DIR, 'fixture.json'));
const ADAPTER = join(FIXTURES, 'stories260K');

function rowExample(ids: number[], attn: number[], learned: (t: number) => boolean): { ids: Int32Array; targets: Uint8Array } {
  const L = attn.reduce((a, b) => a + b, 0);
  return { ids: Int32Array.from(ids.slice(0, L)), targets: Uint8Array.from({ length: L }, (_, t) => (learned(t) ? 1 : 0)) };
}

function caseRows(c: Case): Array<{ ids: Int32Array; targets: Uint8Array }> {
  return c.input_ids.map((ids, b) => rowExample(ids, c.attention_mask[b],
    c.completion_mask ? (t) => c.completion_mask![b][t] === 1 : (t) => c.labels![b][t] !== -100));
}

function config(c: Case): PreferenceConfig {
  const d = defaultPreferenceConfig(c.objective);
  const k = c.config;
  return {
    ...d, beta: Number(k.beta),
    labelSmoothing: Number(k.label_smoothing ?? 0), simpoGamma: Number(k.simpo_gamma ?? d.simpoGamma), cpoAlpha: Number(k.cpo_alpha ?? 0),
    desirableWeight: Number(k.desirable_weight ?? 1), undesirableWeight: Number(k.undesirable_weight ?? 1),
  };
}

function setup(c: Case): PreferenceSetup {
  const model = loadModel(STORIES);
  const peft = new PeftModel(model);
  loadAdapter(peft, ADAPTER, 'default');
  let reference: PreferenceSetup['reference'] = 'base';
  if (c.ref_lora_B_factor) {
    loadAdapter(peft, ADAPTER, 'ref', false);
    for (const p of peft.get('ref').trainableParameters()) if (p.name.includes('lora_B')) for (let i = 0; i < p.tensor.size; i++) p.tensor.data[i] *= c.ref_lora_B_factor;
    reference = 'adapter';
  }
  peft.setActive('default');
  peft.trainable('default');
  return { model, peft, config: config(c), reference, refAdapter: 'ref', maxSeqLength: 1024, padId: 2 };
}

const GRADS: Record<string, string> = { dpo: 'dpo', orpo: 'orpo', simpo_cpo: 'simpo_cpo', kto: 'kto', kto_ref: 'kto_ref' };
const ctx = { training: true, seed: 0, dropoutCalls: 0 };

describe('preference losses equal TRL 1.13 on one batch (stories260K + fixed LoRA)', () => {
  for (const [name, c] of Object.entries(fx.cases)) {
    it(`${name}: loss and metrics within 1e-5${GRADS[name] ? ', LoRA gradients within 1e-4 relative' : ''}`, () => {
      const p = setup(c);
      const rows = caseRows(c);
      const params = p.peft!.trainable('default');
      for (const q of params) q.tensor.grad = null;
      let loss = 0, metrics: Record<string, number> = {};
      withArena(() => {
        let r;
        if (c.objective === 'kto') {
          const items: UnpairedExample[] = rows.map((e, i) => ({ example: e, desirable: c.label![i], promptLength: e.targets.indexOf(1), source: '' }));
          r = ktoStep(p, items, null, 1 / items.length, ctx);
          // the mismatched KL sequences we build are TRL's
          const kl = c.KL_input_ids!.map((ids, b) => rowExample(ids, c.KL_attention_mask![b], (t) => c.KL_completion_mask![b][t] === 1));
          items.forEach((_, i) => {
            const prev = items[(i + items.length - 1) % items.length];
            const ids = [...items[i].example.ids.slice(0, items[i].promptLength), ...prev.example.ids.slice(prev.promptLength)];
            expect(ids).toEqual([...kl[i].ids]);
          });
        } else {
          const n = rows.length / 2;
          const pairs: PairExample[] = Array.from({ length: n }, (_, i) => ({ chosen: rows[i], rejected: rows[n + i], source: '' }));
          r = pairStep(p, pairs, null, 1 / n, ctx);
        }
        loss = r.loss;
        metrics = r.metrics;
        backward(r.result.loss);
      });
      expect(Math.abs(loss - c.loss)).toBeLessThan(1e-5);
      for (const [k, v] of Object.entries(c.metrics)) {
        // ORPO/CPO average their logits over every position of the padded batch (prompt and padding
        // included); we report DPO's per-completion-token mean for every objective
        if (k.startsWith('logits/') && (c.objective === 'orpo' || c.objective === 'simpo')) continue;
        expect(metrics[k], k).toBeDefined();
        // 1e-5, relative for magnitudes above 1: TRL's summed log-probabilities are float32 (ulp 7.6e-6 at 72)
        expect(Math.abs(metrics[k] - v), `${k}: ${metrics[k]} vs ${v}`).toBeLessThan(1e-5 * Math.max(1, Math.abs(v)));
      }
      if (GRADS[name]) {
        const ref = readTensors(join(DIR, `${GRADS[name]}_grads.safetensors`));
        expect(ref.size).toBe(params.length);
        let worst = 0;
        for (const q of params) {
          const g = ref.get(q.name);
          expect(g, q.name).toBeDefined();
          worst = Math.max(worst, maxRelDiff(q.tensor.grad!, g!.data));
        }
        expect(worst).toBeLessThan(1e-4);
      }
    });
  }
});

describe('our data pipeline gives TRL\'s token ids and masks', () => {
  const tok = loadTokenizer(STORIES);
  const dir = mkdtempSync(join(tmpdir(), 'pref-'));
  it('paired records: BOS + prompt + completion + EOS, completion learned (DPOTrainer)', () => {
    const f = join(dir, 'pairs.jsonl');
    writeFileSync(f, fx.pairs.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const d = loadPreferenceData(f, tok, { maxSeqLength: 256 });
    expect(d.kind).toBe('paired');
    const rows = caseRows(fx.cases.dpo);
    const n = d.pairs.length;
    d.pairs.forEach((p, i) => {
      expect([...p.chosen.ids]).toEqual([...rows[i].ids]);
      expect([...p.rejected.ids]).toEqual([...rows[n + i].ids]);
      expect([...p.chosen.targets].slice(1)).toEqual([...rows[i].targets].slice(1));
      expect([...p.rejected.targets].slice(1)).toEqual([...rows[n + i].targets].slice(1));
    });
  });
  it('conversational records: the completion\'s assistant turn (and end-of-turn marker) is learned, not the prompt\'s; implicit prompt = common prefix', () => {
    const f = join(dir, 'chat.jsonl'), g = join(dir, 'chat-implicit.jsonl');
    const prompt = [{ role: 'user', content: 'Tell me about Lily.' }, { role: 'assistant', content: 'Lily is a girl.' }, { role: 'user', content: 'What does she like?' }];
    const chosen = [{ role: 'assistant', content: 'She likes to play in the park.' }], rejected = [{ role: 'assistant', content: 'Ball red a had.' }];
    writeFileSync(f, JSON.stringify({ prompt, chosen, rejected }) + '\n');
    writeFileSync(g, JSON.stringify({ chosen: [...prompt, ...chosen], rejected: [...prompt, ...rejected] }) + '\n');
    const a = loadPreferenceData(f, tok, { maxSeqLength: 512 }).pairs[0], b = loadPreferenceData(g, tok, { maxSeqLength: 512 }).pairs[0];
    const learned = (e: { ids: Int32Array; targets: Uint8Array }): string => tok.decode([...e.ids].filter((_, t) => e.targets[t]), false);
    expect(learned(a.chosen)).toBe('She likes to play in the park.<|im_end|>');
    expect(learned(a.rejected)).toBe('Ball red a had.<|im_end|>');
    expect(tok.decode([...a.chosen.ids], false)).toContain('Lily is a girl.');
    expect([...b.chosen.ids]).toEqual([...a.chosen.ids]);
    expect([...b.chosen.targets]).toEqual([...a.chosen.targets]);
  });
  it('unpaired records (KTOTrainer)', () => {
    const f = join(dir, 'kto.jsonl');
    writeFileSync(f, fx.unpaired.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const d = loadPreferenceData(f, tok, { maxSeqLength: 256 });
    expect(d.kind).toBe('unpaired');
    const rows = caseRows(fx.cases.kto);
    d.unpaired.forEach((u, i) => {
      expect([...u.example.ids]).toEqual([...rows[i].ids]);
      expect([...u.example.targets].slice(1)).toEqual([...rows[i].targets].slice(1));
      expect(u.desirable).toBe(fx.cases.kto.label![i]);
    });
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('loss gradients equal finite differences', () => {
  const base = (): PairLogps => ({
    chosen: Float64Array.from([-30.2, -12.5, -40.1]), rejected: Float64Array.from([-35.7, -11.9, -39.0]),
    chosenTokens: Float64Array.from([10, 6, 14]), rejectedTokens: Float64Array.from([12, 5, 13]),
    refChosen: Float64Array.from([-31.0, -12.0, -41.5]), refRejected: Float64Array.from([-34.9, -12.8, -38.2]),
    chosenAll: Float64Array.from([-55.0, -30.1, -70.3]), chosenAllTokens: Float64Array.from([20, 15, 25]),
  });
  const fns = {
    dpo: (p: PairLogps) => dpoLoss(p, { ...defaultPreferenceConfig('dpo'), labelSmoothing: 0.1 }),
    ipo: (p: PairLogps) => ipoLoss(p, defaultPreferenceConfig('ipo')),
    orpo: (p: PairLogps) => orpoLoss(p, defaultPreferenceConfig('orpo')),
    simpo: (p: PairLogps) => simpoLoss(p, { ...defaultPreferenceConfig('simpo'), cpoAlpha: 0.5, labelSmoothing: 0.1 }),
  };
  for (const [name, fn] of Object.entries(fns)) {
    it(name, () => {
      const p = base();
      const g = fn(p);
      const h = 1e-5;
      for (const key of ['chosen', 'rejected', 'chosenAll'] as const) {
        const grad = key === 'chosen' ? g.dChosen : key === 'rejected' ? g.dRejected : g.dChosenAll;
        for (let i = 0; i < 3; i++) {
          const plus = base(), minus = base();
          plus[key]![i] += h; minus[key]![i] -= h;
          const fd = (fn(plus).loss - fn(minus).loss) / (2 * h);
          expect(Math.abs((grad?.[i] ?? 0) - fd), `${name} d/d${key}[${i}]`).toBeLessThan(1e-7);
        }
      }
    });
  }
  it('kto', () => {
    const mk = (d: number) => ({
      logps: Float64Array.from([-20 + d, -31, -18.5, -40]), ref: Float64Array.from([-21, -30, -19, -38]), desirable: [true, false, true, false],
      klLogps: Float64Array.from([-50, -60, -55, -45]), klRef: Float64Array.from([-51, -61.5, -54, -46]),
    });
    const c = { ...defaultPreferenceConfig('kto'), undesirableWeight: 1.5 };
    const g = ktoLoss(mk(0), c);
    for (let i = 0; i < 4; i++) {
      const plus = mk(0), minus = mk(0);
      plus.logps[i] += 1e-5; minus.logps[i] -= 1e-5;
      const fd = (ktoLoss(plus, c).loss - ktoLoss(minus, c).loss) / 2e-5;
      expect(Math.abs(g.dLogps[i] - fd)).toBeLessThan(1e-7);
    }
    expect(g.metrics.kl).toBeCloseTo(0.625, 12); // mean(1, 1.5, −1, 1)
  });
});
