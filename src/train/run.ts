/**
 * A complete training run, as `peft train` performs it: load the base model (float32, or NF4/FP4
 * for QLoRA), set up the method, read and split the data, train, evaluate, and write the result
 * (the adapter in HF PEFT format — or, for full fine-tuning, a Hugging Face model directory),
 * the metrics log (JSONL), the loss curve (SVG) and the run's arguments.
 */
import { appendFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { PeftError } from '../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/llama.js';
import { loadModel } from '../models/load.js';
import { DEFAULT_MODEL } from '../paths.js';
import { LoraAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../peft/index.js';
import type { NamedTensor } from '../peft/types.js';
import { loadModelQuantized, quantizationReport, type QuantizationReport } from '../quant/quantize-model.js';
import { lossCurveSvg } from '../report/charts.js';
import { saveModelDir } from '../models/save.js';
import { createLoader, loadDataset, type Dataset, type TrainBatch } from './data/index.js';
import { evaluate, type EvalResult } from './evaluate.js';
import { batchLoss, fullFineTuneParameters } from './methods.js';
import { train, TRAIN_DEFAULTS, type StepMetrics, type TrainOptions, type TrainResult } from './trainer.js';

export type MethodName = 'lora' | 'qlora' | 'full';
export const METHODS: MethodName[] = ['lora', 'qlora', 'full'];

export interface TrainRunOptions extends Partial<TrainOptions> {
  model?: string;
  data: string;
  valData?: string;
  valFraction?: number;
  method?: MethodName;
  /** LoRA */
  r?: number;
  loraAlpha?: number;
  loraDropout?: number;
  targetModules?: string | string[];
  useRslora?: boolean;
  modulesToSave?: string[];
  initLoraWeights?: boolean | 'gaussian';
  /** QLoRA base */
  quantType?: 'nf4' | 'fp4';
  batchSize?: number;
  maxSeqLength?: number;
  pack?: boolean;
  textSplit?: 'blocks' | 'paragraphs';
  skipBadLines?: boolean;
  /** Where the adapter, logs and checkpoints go. */
  output?: string;
  /** Cap on validation examples scored at each evaluation (0 = all). */
  maxEvalExamples?: number;
}

export interface RunEvents {
  onStart?(info: { summary: string; trainExamples: number; valExamples: number; maxSteps: number; quant?: QuantizationReport }): void;
  onStep?(m: StepMetrics): void;
  onEval?(step: number, loss: number): void;
  onCheckpoint?(dir: string): void;
}

export interface TrainRunResult {
  model: CausalLM;
  peft: PeftModel | null;
  tokenizer: Tokenizer;
  dataset: Dataset;
  result: TrainResult;
  summary: string;
  outputDir: string | null;
  quant?: QuantizationReport;
  /** Peak resident set size seen during training (bytes). */
  peakRss: number;
  wallSeconds: number;
}

/** A model, tokenizer and (for PEFT methods) the PeftModel with one new trainable adapter named `default`. */
export function setupMethod(o: TrainRunOptions): { model: CausalLM; tokenizer: Tokenizer; peft: PeftModel | null; params: NamedTensor[]; summary: string; quant?: QuantizationReport } {
  const dir = o.model ?? DEFAULT_MODEL;
  const method = o.method ?? 'lora';
  if (!METHODS.includes(method)) throw new PeftError('unknown method', { field: '--method', expected: METHODS.join(', '), found: method });
  const tokenizer = loadTokenizer(dir);
  if (method === 'full') {
    const model = loadModel(dir, { dtype: 'float32' });
    const params = fullFineTuneParameters(model);
    const n = params.reduce((s, p) => s + p.tensor.size, 0);
    return { model, tokenizer, peft: null, params, summary: `trainable params: ${n.toLocaleString('en-US')} || all params: ${n.toLocaleString('en-US')} || trainable%: 100.0000` };
  }
  const model = method === 'qlora' ? loadModelQuantized(dir, { quantType: o.quantType ?? 'nf4' }) : loadModel(dir);
  const peft = new PeftModel(model);
  const cfg = parseLoraConfig({
    r: o.r ?? 8,
    lora_alpha: o.loraAlpha ?? 16,
    lora_dropout: o.loraDropout ?? 0.05,
    target_modules: o.targetModules ?? 'all-linear',
    use_rslora: o.useRslora ?? false,
    modules_to_save: o.modulesToSave ?? null,
    init_lora_weights: o.initLoraWeights ?? true,
    base_model_name_or_path: o.model ?? basename(DEFAULT_MODEL),
  }, 'training options');
  peft.addAdapter('default', new LoraAdapter(model, cfg, o.seed ?? 0));
  const params = peft.trainable('default');
  const quant = method === 'qlora' ? quantizationReport(model) : undefined;
  return { model, tokenizer, peft, params, summary: peft.trainableSummary('default'), quant };
}

/** Writes the trained result: the adapter (PEFT methods) or a full model directory. */
export function saveResult(r: { model: CausalLM; peft: PeftModel | null }, dir: string, baseName: string): void {
  if (r.peft) saveAdapter(r.peft.get('default'), dir, baseName);
  else saveModelDir(r.model, dir);
}

function rss(): number {
  return process.memoryUsage().rss;
}

/** Runs training end to end (see module doc). */
export async function runTraining(o: TrainRunOptions, events: RunEvents = {}): Promise<TrainRunResult> {
  const t0 = performance.now();
  let peakRss = rss();
  const setup = setupMethod(o);
  const { model, tokenizer, peft, params } = setup;
  const maxSeqLength = o.maxSeqLength ?? 256;
  const dataset = loadDataset(o.data, tokenizer, {
    maxSeqLength, textSplit: o.textSplit, skipBadLines: o.skipBadLines, valFraction: o.valData ? undefined : (o.valFraction ?? 0.05),
    valFile: o.valData, seed: o.seed ?? 0,
  });
  const loader = createLoader(dataset.train, { batchSize: o.batchSize ?? 8, maxSeqLength, pack: o.pack ?? true, seed: o.seed ?? 0 });
  const valExamples = o.maxEvalExamples && o.maxEvalExamples > 0 ? dataset.val.slice(0, o.maxEvalExamples) : dataset.val;
  const out = o.output ?? null;
  if (out) mkdirSync(out, { recursive: true });
  const metricsFile = out ? join(out, 'metrics.jsonl') : null;
  if (metricsFile && !o.resume) writeFileSync(metricsFile, '');
  const log = (rec: Record<string, unknown>): void => {
    if (metricsFile) appendFileSync(metricsFile, JSON.stringify(rec) + '\n');
  };
  const opts: Partial<TrainOptions> = { ...TRAIN_DEFAULTS, ...stripUndefined(o), outputDir: out ?? undefined };
  events.onStart?.({ summary: setup.summary, trainExamples: dataset.train.length, valExamples: valExamples.length, maxSteps: opts.maxSteps!, quant: setup.quant });
  const baseName = o.model ?? basename(DEFAULT_MODEL);
  const result = train<TrainBatch>({
    params,
    data: {
      next: () => {
        const b = loader.next();
        let numTokens = 0;
        const km = b.batch.keyMask;
        if (km) for (const v of km) numTokens += v; else numTokens = b.batch.ids.length;
        return { ...b, numTokens };
      },
      state: () => loader.state(),
      restore: (s) => loader.restore(s as ReturnType<typeof loader.state>),
    },
    loss: (b, gs, ctx) => batchLoss(model, b, gs, ctx),
    evaluate: valExamples.length ? () => evaluate(model, valExamples, { batchSize: o.batchSize ?? 8, maxSeqLength }) : undefined,
    saveExtra: (dir) => saveResult({ model, peft }, dir, baseName),
    onStep: (m) => {
      peakRss = Math.max(peakRss, rss());
      log({ type: 'train', ...m });
      events.onStep?.(m);
    },
    onEval: (step, loss) => {
      log({ type: 'eval', step, loss, perplexity: Math.exp(loss) });
      events.onEval?.(step, loss);
    },
    onCheckpoint: events.onCheckpoint,
  }, opts);
  if (out) {
    saveResult({ model, peft }, out, baseName);
    const points = [
      ...result.steps.map((s) => ({ step: s.step, loss: s.loss, split: 'train' })),
      ...result.evals.map((e) => ({ step: e.step, loss: e.loss, split: 'validation' })),
    ];
    writeFileAtomic(join(out, 'loss_curve.svg'), await lossCurveSvg(points, `${o.method ?? 'lora'} on ${basename(o.data)}`));
    writeJsonAtomic(join(out, 'train_args.json'), { ...stripUndefined(o), summary: setup.summary });
  }
  return {
    model, peft, tokenizer, dataset, result, summary: setup.summary, outputDir: out, quant: setup.quant, peakRss,
    wallSeconds: (performance.now() - t0) / 1000,
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

/** Evaluate a model on a data file's examples (all of it). */
export function evaluateFile(model: CausalLM, tokenizer: Tokenizer, file: string, o: { maxSeqLength?: number; batchSize?: number; textSplit?: 'blocks' | 'paragraphs'; skipBadLines?: boolean; maxExamples?: number }): EvalResult {
  if (!existsSync(file)) throw new PeftError('data file not found', { file });
  const maxSeqLength = o.maxSeqLength ?? 256;
  const ds = loadDataset(file, tokenizer, { maxSeqLength, textSplit: o.textSplit, skipBadLines: o.skipBadLines });
  const ex = o.maxExamples && o.maxExamples > 0 ? ds.train.slice(0, o.maxExamples) : ds.train;
  return evaluate(model, ex, { maxSeqLength, batchSize: o.batchSize });
}


