/**
 * The main job: fine-tune the bundled stories260K (trained on TinyStories) on Grimm's fairy tales
 * with every method at the same token budget, and report what the project exists to show —
 * trainable parameters, new-domain (fairy-tale) perplexity before → after, old-domain
 * (TinyStories) perplexity before → after (forgetting), LoRA against full fine-tuning in detail,
 * loss curves, and sample generations before and after. Writes report.json and report.md.
 */
import { mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { generate } from '../generate/generate.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { loadTokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/model.js';
import { loadModel } from '../models/load.js';
import { DEFAULT_MODEL } from '../paths.js';
import { attachAdapters, sequenceSetup } from '../peft/attach.js';
import type { SequenceSetup } from '../generate/generate.js';
import { METHODS, type MethodName } from '../train/run.js';
import { lossCurveSvg } from './charts.js';
import { compareMarkdown, runCompare, COMPARE_DEFAULTS, type CompareRow } from './compare.js';

export interface MainJobOptions {
  output?: string;
  maxSteps?: number;
  methods?: MethodName[];
  /** Base model directory (default: the bundled stories260K). */
  model?: string;
  onProgress?: (line: string) => void;
}

/** Prompts for the sample generations: one in the base domain, one in the new. */
export const SAMPLE_PROMPTS = ['Once upon a time', 'The king had a beautiful daughter'];

interface Sample {
  prompt: string;
  text: string;
}

function samples(model: CausalLM, setup: SequenceSetup, tokenizerDir: string): Sample[] {
  const tok = loadTokenizer(tokenizerDir);
  return SAMPLE_PROMPTS.map((prompt) => {
    const ids = tok.encode(prompt);
    // stops at the model's EOS ids (generate's default) and at BOS: stories260K ends a story with BOS (id 1)
    const bos = model.config.bosTokenId;
    const r = generate(model, ids, { maxNewTokens: 48, temperature: 0, stopIds: bos !== null ? [bos] : [] }, setup);
    return { prompt, text: tok.decode(r.ids) };
  });
}

export interface MainReport {
  settings: Record<string, unknown>;
  rows: CompareRow[];
  samples: Record<string, Sample[]>;
  headline: { lora: CompareRow; full: CompareRow } | null;
}

export async function runMainJob(o: MainJobOptions = {}): Promise<{ report: MainReport; markdown: string; dir: string }> {
  const dir = o.output ?? join('out', 'main');
  mkdirSync(dir, { recursive: true });
  const methods = o.methods ?? METHODS;
  const maxSteps = o.maxSteps ?? COMPARE_DEFAULTS.maxSteps;
  const t0 = performance.now();
  const base = o.model ?? DEFAULT_MODEL;
  const { rows } = await runCompare({
    model: o.model, methods, maxSteps, output: join(dir, 'runs'),
    onProgress: (m, line) => { if (/^(done|forgetting|trainable)/.test(line)) o.onProgress?.(`[${m}] ${line}`); },
  });
  o.onProgress?.('sample generations');
  const byMethod = new Map(rows.map((r) => [r.method, r]));
  const gen: Record<string, Sample[]> = {};
  gen.base = samples(loadModel(base), {}, base);
  for (const r of rows) {
    if (r.method === 'full') gen.full = samples(loadModel(r.output), {}, base);
    else if (r.method === 'lora') {
      const m = loadModel(base);
      const { peft } = attachAdapters(m, [{ name: 'lora', dir: r.output }]);
      gen.lora = samples(m, sequenceSetup(peft), base);
    }
  }
  const lora = byMethod.get('lora'), full = byMethod.get('full');
  const curves = [lora, full].filter((r): r is CompareRow => !!r).flatMap((r) => r.loss_curve.map(([step, loss]) => ({ step, loss, split: 'train', series: r.method })));
  if (curves.length) writeFileAtomic(join(dir, 'loss_curve.svg'), await lossCurveSvg(curves, 'training loss: LoRA vs full fine-tuning on Grimm\'s fairy tales'));
  const settings = { ...COMPARE_DEFAULTS, maxSteps, methods, model: o.model ? basename(o.model) : 'stories260K (bundled)', new_domain: 'Grimm\'s fairy tales (bundled)', old_domain: 'TinyStories validation sample (bundled)', wall_seconds: (performance.now() - t0) / 1000 };
  const report: MainReport = { settings, rows, samples: gen, headline: lora && full ? { lora, full } : null };
  const markdown = mainMarkdown(report);
  writeJsonAtomic(join(dir, 'report.json'), report);
  writeFileAtomic(join(dir, 'report.md'), markdown);
  return { report, markdown, dir };
}

function mainMarkdown(r: MainReport): string {
  const s = r.settings as typeof COMPARE_DEFAULTS & { wall_seconds: number };
  const out: string[] = [`# peft-ts main job: adapting ${String(r.settings.model).replace(' (bundled)', '')} to Grimm's fairy tales`, ''];
  if (r.headline) {
    const { lora, full } = r.headline;
    const f = (x: number): string => x.toFixed(2);
    out.push(
      `LoRA trains ${lora.trainable_params.toLocaleString('en-US')} parameters (${lora.summary.split('trainable%: ')[1]}% of the model); full fine-tuning trains all ${full.trainable_params.toLocaleString('en-US')}. Both ran ${s.maxSteps} steps at learning rate ${lora.lr}.`,
      '',
      '| | fairy-tale perplexity (new domain) | TinyStories perplexity (old domain: forgetting) |',
      '|---|---:|---:|',
      `| base model | ${f(lora.new_domain!.ppl_before)} | ${f(lora.old_domain!.ppl_before)} |`,
      `| LoRA | ${f(lora.new_domain!.ppl_after)} | ${f(lora.old_domain!.ppl_after)} |`,
      `| full fine-tuning | ${f(full.new_domain!.ppl_after)} | ${f(full.old_domain!.ppl_after)} |`,
      '',
      `TinyStories perplexity rises by ${f(lora.old_domain!.ppl_after - lora.old_domain!.ppl_before)} under LoRA and by ${f(full.old_domain!.ppl_after - full.old_domain!.ppl_before)} under full fine-tuning; the fairy-tale perplexity falls by ${f(lora.new_domain!.ppl_before - lora.new_domain!.ppl_after)} and ${f(full.new_domain!.ppl_before - full.new_domain!.ppl_after)}.`,
      '',
      'Training loss: `loss_curve.svg`. Every method: `runs/compare.md`, `runs/compare.svg`.',
      '',
    );
  }
  const q = r.rows.find((x) => x.method === 'qlora');
  const lq = r.rows.find((x) => x.method === 'lora');
  const qr = q?.quantization as { bitsPerParam: number; quantizedBytes: number; float32BytesOfThoseLayers: number; baseBytesTotal: number } | null | undefined;
  if (q && qr && lq) {
    out.push(
      `QLoRA: the base's linear layers are stored in NF4 with double quantization at ${qr.bitsPerParam.toFixed(4)} bits/param (${(qr.quantizedBytes / 1024).toFixed(1)} KiB against ${(qr.float32BytesOfThoseLayers / 1024).toFixed(1)} KiB in float32; whole base ${(qr.baseBytesTotal / 1024).toFixed(1)} KiB). ` +
      `At equal steps its fairy-tale perplexity reaches ${q.new_domain!.ppl_after.toFixed(2)} against float32 LoRA's ${lq.new_domain!.ppl_after.toFixed(2)} (the 4-bit base starts at ${q.new_domain!.ppl_before.toFixed(2)}).`,
      '',
    );
  }
  out.push('## All methods, same data and token budget', '', compareMarkdown(r.rows, s), '## Sample generations (greedy, 48 tokens)', '');
  for (const [who, list] of Object.entries(r.samples)) {
    out.push(`### ${who}`, '');
    for (const x of list) out.push('```', x.text, '```', '');
  }
  out.push(`Wall time: ${s.wall_seconds.toFixed(0)} s.`);
  return out.join('\n') + '\n';
}
