/**
 * `peft compare`: every method trained on the same data with the same token budget (same steps,
 * batch and sequence length), each in its own process, then one table (Markdown + JSON) and a
 * chart: trainable parameters, adapter file size, peak memory, wall time, tokens/s, new-domain
 * perplexity and old-domain perplexity (forgetting). With `objectives`, preference objectives
 * (LoRA, on the bundled Grimm preference set) are compared the same way: held-out reward accuracy
 * and margin before → after, and forgetting.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { DEFAULT_NEW_DOMAIN, DEFAULT_OLD_DOMAIN, DEFAULT_PREFERENCE_DATA } from '../paths.js';
import type { Objective } from '../train/preference/losses.js';
import { DEFAULT_LR, METHODS, type MethodName } from '../train/run.js';
import { barsSvg } from './charts.js';
import { runPeft } from './subprocess.js';
import { readJsonObject } from '../io/files.js';

export interface CompareOptions {
  model?: string;
  /** New-domain training data (default: the bundled Grimm's fairy tales). */
  data?: string;
  /** Old-domain text for forgetting (default: the bundled TinyStories sample). */
  forgettingData?: string;
  /** SFT methods to compare (default: every method; none when only `objectives` are given). */
  methods?: MethodName[];
  /**
   * Preference objectives to compare, each with LoRA on `preferenceData` (a directory holding
   * train.jsonl / val.jsonl pairs and train_kto.jsonl / val_kto.jsonl for KTO; default: the bundled
   * data/grimms_preference, chosen = the real Grimm continuation, rejected = a stories260K sample).
   */
  objectives?: Objective[];
  preferenceData?: string;
  maxSteps?: number;
  batchSize?: number;
  maxSeqLength?: number;
  textSplit?: 'blocks' | 'paragraphs';
  seed?: number;
  output?: string;
  maxEvalExamples?: number;
  maxForgettingExamples?: number;
  /** Learning rate per method (default DEFAULT_LR). */
  lr?: Partial<Record<MethodName, number>>;
  onProgress?: (method: string, line: string) => void;
}

/** One preference-objective row: held-out TRL metrics before and after, and forgetting. */
export interface PreferenceRow {
  objective: Objective;
  lr: number;
  reference: string;
  train_seconds: number;
  before: Record<string, number>;
  after: Record<string, number>;
  old_domain: { ppl_before: number; ppl_after: number } | null;
  output: string;
}

export interface CompareRow {
  method: MethodName;
  lr: number;
  trainable_params: number;
  summary: string;
  adapter_bytes: number | null;
  peak_rss_bytes: number;
  train_seconds: number;
  tokens: number;
  tokens_per_second: number;
  new_domain: { ppl_before: number; ppl_after: number } | null;
  old_domain: { ppl_before: number; ppl_after: number } | null;
  output: string;
  loss_curve: Array<[number, number]>;
  eval_curve: Array<[number, number]>;
  quantization?: { bitsPerParam: number; baseBytesTotal: number } | null;
}

export const COMPARE_DEFAULTS = {
  maxSteps: 100, batchSize: 8, maxSeqLength: 256, textSplit: 'paragraphs' as const, seed: 0,
  maxEvalExamples: 48, maxForgettingExamples: 300,
};

/** Trains each method and each preference objective in a child process (`peft train --result-json`) and collects the summaries. */
export async function runCompare(o: CompareOptions = {}): Promise<{ rows: CompareRow[]; preferenceRows: PreferenceRow[]; dir: string }> {
  const dir = o.output ?? join('out', 'compare');
  mkdirSync(dir, { recursive: true });
  const c = { ...COMPARE_DEFAULTS, ...Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) } as typeof COMPARE_DEFAULTS & CompareOptions;
  // one `peft train` child per row: its own run arguments plus the budget every row shares
  const train = async (name: string, runArgs: string[], lr: number): Promise<{ out: string; summary: unknown }> => {
    const out = join(dir, name);
    const result = join(dir, `${name}.result.json`);
    await runPeft([
      'train', ...runArgs,
      '--forgetting-data', o.forgettingData ?? DEFAULT_OLD_DOMAIN, '--max-forgetting-examples', String(c.maxForgettingExamples),
      '--max-steps', String(c.maxSteps), '--batch-size', String(c.batchSize), '--max-seq-length', String(c.maxSeqLength),
      '--lr', String(lr), '--seed', String(c.seed), '--eval-every', '0', '--max-eval-examples', String(c.maxEvalExamples),
      '--output', out, '--result-json', result,
      ...(o.model ? ['--model', o.model] : []),
    ], (line) => o.onProgress?.(name, line));
    return { out, summary: readJsonObject(result, { what: 'a peft train --result-json file' }) };
  };
  const rows: CompareRow[] = [];
  for (const method of o.methods ?? (o.objectives?.length ? [] : METHODS)) {
    const runArgs = ['--method', method, '--data', o.data ?? DEFAULT_NEW_DOMAIN, '--text-split', c.textSplit];
    rows.push((await train(method, runArgs, o.lr?.[method] ?? DEFAULT_LR[method])).summary as CompareRow);
  }
  const preferenceRows: PreferenceRow[] = [];
  const prefDir = o.preferenceData ?? DEFAULT_PREFERENCE_DATA;
  for (const objective of o.objectives ?? []) {
    const kto = objective === 'kto';
    const runArgs = [
      '--method', 'lora', '--objective', objective,
      '--data', join(prefDir, kto ? 'train_kto.jsonl' : 'train.jsonl'), '--val-data', join(prefDir, kto ? 'val_kto.jsonl' : 'val.jsonl'),
    ];
    const { out, summary } = await train(`lora-${objective}`, runArgs, o.lr?.lora ?? DEFAULT_LR.lora);
    const r = summary as { lr: number; train_seconds: number; old_domain: CompareRow['old_domain']; preference: { reference: string; before: Record<string, number>; after: Record<string, number> } };
    preferenceRows.push({
      objective, lr: r.lr, reference: r.preference.reference, train_seconds: r.train_seconds,
      before: r.preference.before, after: r.preference.after, old_domain: r.old_domain, output: out,
    });
  }
  writeJsonAtomic(join(dir, 'compare.json'), { settings: { ...c, onProgress: undefined, lr: Object.fromEntries(rows.map((r) => [r.method, r.lr])) }, rows, preference_rows: preferenceRows });
  writeFileAtomic(join(dir, 'compare.md'), [rows.length ? compareMarkdown(rows, c) : '', preferenceRows.length ? preferenceMarkdown(preferenceRows, c) : ''].filter(Boolean).join('\n'));
  writeFileAtomic(join(dir, 'compare.svg'), await compareChart(rows, preferenceRows));
  return { rows, preferenceRows, dir };
}

const num = (x: number | undefined, d: number): string => (x === undefined || Number.isNaN(x) ? '-' : x.toFixed(d));

/** The preference rows as a Markdown table: held-out TRL metrics before → after and forgetting. */
export function preferenceMarkdown(rows: PreferenceRow[], s: { maxSteps: number; batchSize: number }): string {
  const lines = [
    `Preference objectives with LoRA: ${s.maxSteps} optimizer steps × ${s.batchSize} pairs (KTO: ${s.batchSize} unpaired examples); metrics on the held-out pairs, TRL's rewards (β·log-ratio to the reference; ORPO/SimPO: β·mean log-prob).`,
    '',
    '| objective | lr | reference | held-out loss (before → after) | rewards/accuracies | rewards/margins | old-domain ppl (before → after) |',
    '|---|---:|---|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.objective} | ${r.lr} | ${r.reference} | ${num(r.before.loss, 3)} → ${num(r.after.loss, 3)} | ${num(r.before['rewards/accuracies'], 2)} → ${num(r.after['rewards/accuracies'], 2)} | ${num(r.before['rewards/margins'], 3)} → ${num(r.after['rewards/margins'], 3)} | ${arrow(r.old_domain)} |`),
  ];
  return lines.join('\n') + '\n';
}

const mib = (b: number | null): string => (b === null ? '-' : b < 1024 * 1024 ? `${(b / 1024).toFixed(1)} KiB` : `${(b / 2 ** 20).toFixed(1)} MiB`);
const arrow = (d: { ppl_before: number; ppl_after: number } | null): string => (d ? `${d.ppl_before.toFixed(2)} → ${d.ppl_after.toFixed(2)}` : '-');

/** The comparison as a Markdown table, with the shared settings stated above it. */
export function compareMarkdown(rows: CompareRow[], s: { maxSteps: number; batchSize: number; maxSeqLength: number }): string {
  const lines = [
    `Every method: ${s.maxSteps} optimizer steps × ${s.batchSize} rows × ≤ ${s.maxSeqLength} tokens (packed), AdamW, cosine schedule, seed-fixed; each run in its own process.`,
    '',
    '| method | lr | trainable params | adapter file | peak RSS | train time | tokens/s | new-domain ppl (before → after) | old-domain ppl (before → after) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.method} | ${r.lr} | ${r.trainable_params.toLocaleString('en-US')} | ${mib(r.adapter_bytes)} | ${mib(r.peak_rss_bytes)} | ${r.train_seconds.toFixed(1)} s | ${Math.round(r.tokens_per_second)} | ${arrow(r.new_domain)} | ${arrow(r.old_domain)} |`),
    '',
    '"before" is the base model (adapters disabled); "adapter file" is adapter_model.safetensors (model.safetensors for full fine-tuning).',
  ];
  return lines.join('\n') + '\n';
}

async function compareChart(rows: CompareRow[], pref: PreferenceRow[] = []): Promise<string> {
  const data = [...rows.flatMap((r) => [
    { method: r.method, metric: 'new-domain ppl (after)', value: r.new_domain?.ppl_after ?? 0 },
    { method: r.method, metric: 'old-domain ppl (after)', value: r.old_domain?.ppl_after ?? 0 },
    { method: r.method, metric: 'trainable params (log10)', value: Math.log10(Math.max(1, r.trainable_params)) },
    { method: r.method, metric: 'peak RSS (MiB)', value: r.peak_rss_bytes / 2 ** 20 },
    { method: r.method, metric: 'tokens/s', value: r.tokens_per_second },
  ]), ...pref.flatMap((r) => [
    { method: `lora+${r.objective}`, metric: 'old-domain ppl (after)', value: r.old_domain?.ppl_after ?? 0 },
    { method: `lora+${r.objective}`, metric: 'rewards/accuracies (after)', value: r.after['rewards/accuracies'] ?? 0 },
    { method: `lora+${r.objective}`, metric: 'rewards/margins (after)', value: r.after['rewards/margins'] ?? 0 },
  ])];
  return barsSvg(data, 'PEFT methods on the same data and token budget');
}
