/**
 * Preference tuning on real data: every objective with LoRA on data/grimms_preference (chosen =
 * the real Grimm continuation, rejected = a stories260K sample), the same budget for each, plus
 * SFT on the tales followed by DPO from that SFT adapter (reference = the frozen SFT adapter).
 * Reports held-out reward accuracy and margin before → after, the policy's own preference
 * (logps/accuracies) and forgetting (TinyStories perplexity before → after).
 *
 * Usage: npx tsx scripts/preference-demo.ts [--max-steps N] [--out DIR]   (default 60 steps, out/preference)
 * Writes DIR/report.md, DIR/report.json and one run directory per row (metrics.jsonl, loss_curve.svg).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runTraining, type TrainRunOptions } from '../src/train/run.js';
import { loadPreferenceData } from '../src/train/preference/data.js';
import { defaultPreferenceConfig } from '../src/train/preference/losses.js';
import { evaluatePreference } from '../src/train/preference/run.js';

const { values } = parseArgs({ options: { 'max-steps': { type: 'string', default: '60' }, out: { type: 'string', default: 'out/preference' } } });
const steps = Number(values['max-steps']);
const OUT = values.out!;
mkdirSync(OUT, { recursive: true });
const DATA = 'data/grimms_preference';
const common: TrainRunOptions = {
  data: join(DATA, 'train.jsonl'), valData: join(DATA, 'val.jsonl'), method: 'lora', maxSteps: steps, batchSize: 8, evalEvery: 0,
  warmupSteps: 5, seed: 0, forgettingData: 'data/tinystories_val_sample/tinystories_val_head.txt', maxForgettingExamples: 200,
};
const rows: Array<Record<string, unknown>> = [];
const fmt = (x: number | undefined, d = 3): string => (x === undefined || Number.isNaN(x) ? '–' : x.toFixed(d));

async function run(name: string, o: Partial<TrainRunOptions>): Promise<void> {
  const t0 = performance.now();
  const r = await runTraining({ ...common, ...o, output: join(OUT, name) });
  const p = r.preference!;
  const seconds = (performance.now() - t0) / 1000;
  // one yardstick for every run: DPO's implicit reward (β 0.1) against the base model on the held-out pairs
  const val = loadPreferenceData(join(DATA, 'val.jsonl'), r.tokenizer, { maxSeqLength: 256 });
  const vsBase = evaluatePreference({ model: r.model, peft: r.peft, config: defaultPreferenceConfig('dpo'), reference: 'base', maxSeqLength: 256, padId: 0 }, 'paired', val.pairs, 8).metrics;
  const row = {
    run: name, objective: p.objective, reference: p.reference, lr: r.result.state.options.lr, steps: r.result.state.step, seconds,
    before: p.before, after: p.after, vs_base: vsBase, forgetting_ppl: r.forgetting ? [r.forgetting.before.perplexity, r.forgetting.after.perplexity] : null,
  };
  rows.push(row);
  console.log(JSON.stringify(row));
}

await run('dpo', { objective: 'dpo' });
await run('dpo, lr 2e-4', { objective: 'dpo', lr: 2e-4 });
await run('ipo', { objective: 'ipo' });
await run('orpo', { objective: 'orpo' });
await run('simpo', { objective: 'simpo' });
await run('kto', { objective: 'kto', data: join(DATA, 'train_kto.jsonl'), valData: join(DATA, 'val_kto.jsonl'), batchSize: 16 });
// SFT on the tales' text, then DPO continuing that adapter with its frozen copy as the reference
const sft = await runTraining({ ...common, data: 'data/grimms_fairy_tales/grimms_fairy_tales_body.txt', valData: undefined, valFraction: 0.05, output: join(OUT, 'sft') });
const sftPpl = sft.forgetting ? [sft.forgetting.before.perplexity, sft.forgetting.after.perplexity] : null;
await run('sft+dpo', { objective: 'dpo', adapter: join(OUT, 'sft') });

const keys = ['rewards/accuracies', 'rewards/margins', 'logps/accuracies'] as const;
const md = [
  `Preference tuning, LoRA r 8 (all linear), ${steps} steps × 8 pairs (KTO: 16 examples), lr 1e-3 cosine, on data/grimms_preference`,
  `(546 train / 96 held-out pairs: chosen = the real Grimm continuation, rejected = a stories260K sample). Held-out figures before → after;`,
  `TinyStories perplexity on 200 paragraphs of data/tinystories_val_sample before → after (forgetting).`,
  '',
  'Own metrics: each objective\'s held-out loss and TRL metrics (DPO/IPO/KTO rewards are β·log-ratios to the run\'s reference,',
  'ORPO/SimPO rewards β·mean log-prob). Against base: DPO\'s implicit reward (β 0.1) of the trained policy vs the base model, the same',
  'yardstick for every run. Own preference: share of held-out pairs whose chosen completion has the higher summed log-prob under the',
  'policy (0.01 for the base model; sft+dpo starts from the SFT adapter).',
  '',
  '| run | lr | reference | held-out loss | rewards/accuracies (own) | rewards/margins (own) | rewards/accuracies, margins vs base | own preference | TinyStories ppl | time |',
  '|---|---:|---|---|---|---|---|---|---|---:|',
  ...rows.map((r) => {
    const b = r.before as Record<string, number>, a = r.after as Record<string, number>, v = r.vs_base as Record<string, number>, f = r.forgetting_ppl as number[] | null;
    return `| ${r.run} | ${r.lr} | ${r.reference} | ${fmt(b.loss)} → ${fmt(a.loss)} | ${fmt(b[keys[0]], 2)} → ${fmt(a[keys[0]], 2)} | ${fmt(b['rewards/margins'])} → ${fmt(a['rewards/margins'])} | ${fmt(v['rewards/accuracies'], 2)}, ${fmt(v['rewards/margins'])} | ${fmt(b['logps/accuracies'] ?? 1 / 96, 2)} → ${fmt(v['logps/accuracies'], 2)} | ${f ? `${fmt(f[0], 2)} → ${fmt(f[1], 2)}` : '–'} | ${(r.seconds as number).toFixed(0)} s |`;
  }),
  '',
  `SFT step of sft+dpo (${steps} steps on the tales' text): TinyStories ppl ${sftPpl ? `${fmt(sftPpl[0], 2)} → ${fmt(sftPpl[1], 2)}` : '–'}; its DPO "before" is the SFT adapter.`,
];
writeFileSync(join(OUT, 'report.md'), md.join('\n') + '\n');
writeFileSync(join(OUT, 'report.json'), JSON.stringify({ steps, rows, sft_forgetting_ppl: sftPpl }, null, 1) + '\n');
console.log(md.join('\n'));
