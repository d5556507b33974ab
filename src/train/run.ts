/**
 * A complete training run, as `peft train` performs it: load the base model (float32, or NF4/FP4
 * for QLoRA), set up the method, read and split the data, train, evaluate, and write the result
 * (the adapter in HF PEFT format — or, for full fine-tuning, a Hugging Face model directory),
 * the metrics log (JSONL), the loss curve (SVG) and the run's arguments.
 */
import { accessSync, appendFileSync, constants as fsConstants, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { PeftError } from '../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { assertRegularIfExists, readRegularFile } from '../io/files.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { decoderLinears, setGradientCheckpointing, type CausalLM } from '../models/model.js';
import { loadModel } from '../models/load.js';
import { setComputeDtype, type ComputeDtype } from '../models/compute-dtype.js';
import { DEFAULT_MODEL } from '../paths.js';
import { createBottleneckAdapter, createIa3Adapter, createPrefixAdapter, createPromptAdapter, loadAdapter, LoraAdapter, parseLoraConfig, PeftModel, saveAdapter } from '../peft/index.js';
import type { AdapterMethod, NamedTensor } from '../peft/types.js';
import { loadModelQuantized, quantizationReport, type QuantizationReport } from '../quant/quantize-model.js';
import { isBnb4bitCheckpoint, loadBnbCheckpoint } from '../quant/bnb-checkpoint.js';
import { lossCurveSvg } from '../report/charts.js';
import { saveModelDir } from '../models/save.js';
import { createLoader, loadDataset, type Dataset, type TrainBatch } from './data/index.js';
import { evaluate, type EvalResult } from './evaluate.js';
import { batchLoss, firstTargetCount, fullFineTuneParameters, type LossConvention } from './methods.js';
import { readTrainerState, resolveCheckpoint } from './checkpoint.js';
import { buildProvenance, writeProvenance, type RunMetrics } from '../lifecycle/provenance.js';
import { train, TRAIN_DEFAULTS, type StepMetrics, type TrainOptions, type TrainResult } from './trainer.js';
import type { Objective } from './preference/losses.js';
import { runPreferenceTraining, type PreferenceRunResult } from './preference/run.js';
import { native } from '../native/index.js';

export type MethodName = 'lora' | 'qlora' | 'full' | 'adapter' | 'prefix' | 'prompt' | 'ia3';
export const METHODS: MethodName[] = ['lora', 'qlora', 'full', 'adapter', 'prefix', 'prompt', 'ia3'];

/** Default peak learning rates per method (AdamW, cosine schedule), stated in reports. */
export const DEFAULT_LR: Record<MethodName, number> = {
  lora: 1e-3, qlora: 1e-3, full: 1e-3, adapter: 1e-3, ia3: 1e-2, prefix: 1e-2, prompt: 3e-2,
};

export interface TrainRunOptions extends Partial<TrainOptions> {
  model?: string;
  /** 'bf16': frozen base weights multiply in bfloat16 on AMX tiles or with VDPBF16PS (models/compute-dtype.ts); default 'float32'. */
  computeDtype?: ComputeDtype;
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
  /** DoRA (weight-decomposed LoRA; PEFT use_dora) instead of plain LoRA. */
  useDora?: boolean;
  modulesToSave?: string[];
  initLoraWeights?: boolean | 'gaussian';
  /** QLoRA base */
  quantType?: 'nf4' | 'fp4';
  /** IA3: modules whose input (not output) is scaled. */
  feedforwardModules?: string[];
  /** Prefix / prompt tuning */
  numVirtualTokens?: number;
  /**
   * Prompt tuning: 'peft' (default) scores the last virtual token's prediction of each row's first
   * token, as HF PEFT does with labels = input_ids; 'next-token' scores only the real tokens.
   */
  lossConvention?: LossConvention;
  prefixProjection?: boolean;
  encoderHiddenSize?: number;
  promptTuningInit?: 'RANDOM' | 'TEXT';
  promptTuningInitText?: string;
  /** Bottleneck adapters */
  reductionFactor?: number;
  bottleneckSize?: number;
  placement?: 'houlsby' | 'pfeiffer';
  nonLinearity?: string;
  /** Text of the base model's own domain: perplexity before and after training measures forgetting. */
  forgettingData?: string;
  /** Score at most N forgetting-data examples (0 = all). */
  maxForgettingExamples?: number;
  /** Write a JSON summary of the run (metrics, perplexities, memory, time) here. */
  resultJson?: string;
  batchSize?: number;
  maxSeqLength?: number;
  pack?: boolean;
  textSplit?: 'blocks' | 'paragraphs';
  skipBadLines?: boolean;
  /** Jinja chat template for chat data (default: the tokenizer's, else DEFAULT_CHAT_TEMPLATE). */
  chatTemplate?: string;
  /** Where the adapter, logs and checkpoints go. */
  output?: string;
  /** An existing adapter directory to continue training (instead of a new adapter); its method replaces --method's adapter settings. */
  adapter?: string;
  /** Training objective: next-token SFT (default) or a preference objective (train/preference). */
  objective?: 'sft' | Objective;
  /** Preference objectives: β (see train/preference/losses.ts). Default 0.1, SimPO 2.0. */
  beta?: number;
  /** DPO / SimPO label smoothing (conservative DPO). */
  labelSmoothing?: number;
  /** SimPO target margin γ (default 0.5). */
  simpoGamma?: number;
  /** SimPO: weight of the NLL term on chosen completions (CPO's alpha; default 0). */
  cpoAlpha?: number;
  /** KTO weights of desirable / undesirable examples (default 1). */
  desirableWeight?: number;
  undesirableWeight?: number;
  /** DPO/IPO/KTO: compute the reference log-probabilities once before training and cache them (always for --method full). */
  precomputeRefLogps?: boolean;
  /** Cap on validation examples scored at each evaluation (0 = all). */
  maxEvalExamples?: number;
  /** Recompute each decoder block in backward instead of keeping its activations (less memory, ~1 more forward). */
  gradientCheckpointing?: boolean;
}

export interface RunEvents {
  onStart?(info: { summary: string; trainExamples: number; valExamples: number; maxSteps: number; quant?: QuantizationReport }): void;
  onStep?(m: StepMetrics): void;
  onEval?(step: number, loss: number): void;
  onCheckpoint?(dir: string): void;
  /** Something the user should know (a torn log line dropped, a checkpoint skipped, a setting changed on resume). */
  onNote?(message: string): void;
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
  /** Base-domain evaluation before and after training (with forgettingData). */
  forgetting?: { before: EvalResult; after: EvalResult };
  /** The base model's (adapters disabled) validation result before training. */
  newDomainBase?: EvalResult;
  /** Preference objectives: held-out metrics before and after training, and the reference used. */
  preference?: PreferenceRunResult;
}

/** A model, tokenizer and (for PEFT methods) the PeftModel with one new trainable adapter named `default`. */
export function setupMethod(o: TrainRunOptions): { model: CausalLM; tokenizer: Tokenizer; peft: PeftModel | null; params: NamedTensor[]; summary: string; quant?: QuantizationReport } {
  const dir = o.model ?? DEFAULT_MODEL;
  const method = o.method ?? 'lora';
  if (!METHODS.includes(method)) throw new PeftError('unknown method', { field: '--method', expected: METHODS.join(', '), found: method });
  if (o.useDora && method !== 'lora' && method !== 'qlora')
    throw new PeftError('DoRA is a LoRA variant', { field: '--use-dora', expected: '--method lora or qlora', found: `--method ${method}` });
  // a FIFO or device named config.json would block the model reader; refuse it by name first
  assertRegularIfExists(join(dir, 'config.json'), 'config.json');
  const tokenizer = loadTokenizer(dir);
  const baseName = o.model ?? basename(DEFAULT_MODEL);
  if (method === 'full') {
    if (o.adapter) throw new PeftError('--adapter continues training an adapter; it cannot be combined with --method full', { field: '--adapter', expected: 'a PEFT method (lora, qlora, ia3, …)', found: 'full' });
    const model = loadModel(dir, { dtype: 'float32' });
    const params = fullFineTuneParameters(model);
    const n = params.reduce((s, p) => s + p.tensor.size, 0);
    return { model, tokenizer, peft: null, params, summary: `trainable params: ${n.toLocaleString('en-US')} || all params: ${n.toLocaleString('en-US')} || trainable%: 100.0000` };
  }
  // a bitsandbytes 4-bit checkpoint (e.g. from `peft quantize`) is a QLoRA base as it is
  const model = isBnb4bitCheckpoint(dir) ? loadBnbCheckpoint(dir)
    : method === 'qlora' ? loadModelQuantized(dir, { quantType: o.quantType ?? 'nf4', dtype: 'auto' }) : loadModel(dir);
  const peft = new PeftModel(model);
  const seed = o.seed ?? 0;
  const common = { base_model_name_or_path: baseName };
  let adapter: AdapterMethod;
  if (o.adapter) {
    // continue training an existing adapter (its own config; --method chooses the base: qlora = 4-bit)
    loadAdapter(peft, o.adapter, 'default');
    const params = peft.trainable('default');
    const quant = linearModulesQuantized(model) ? quantizationReport(model) : undefined;
    return { model, tokenizer, peft, params, summary: peft.trainableSummary('default'), quant };
  }
  switch (method) {
    case 'lora':
    case 'qlora':
      adapter = new LoraAdapter(model, parseLoraConfig({
        ...common,
        r: o.r ?? 8,
        lora_alpha: o.loraAlpha ?? 16,
        lora_dropout: o.loraDropout ?? 0.05,
        target_modules: o.targetModules ?? 'all-linear',
        use_rslora: o.useRslora ?? false,
        use_dora: o.useDora ?? false,
        modules_to_save: o.modulesToSave ?? null,
        init_lora_weights: o.initLoraWeights ?? true,
      }, 'training options'), seed);
      break;
    case 'ia3':
      adapter = createIa3Adapter(model, { ...common, ...(o.targetModules ? { target_modules: o.targetModules } : {}), ...(o.feedforwardModules ? { feedforward_modules: o.feedforwardModules } : {}) }, seed);
      break;
    case 'prefix':
      adapter = createPrefixAdapter(model, { ...common, num_virtual_tokens: o.numVirtualTokens ?? 16, prefix_projection: o.prefixProjection ?? true, ...(o.encoderHiddenSize ? { encoder_hidden_size: o.encoderHiddenSize } : {}) }, seed);
      break;
    case 'prompt':
      adapter = createPromptAdapter(model, {
        ...common, num_virtual_tokens: o.numVirtualTokens ?? 16,
        prompt_tuning_init: o.promptTuningInit ?? (o.promptTuningInitText ? 'TEXT' : 'RANDOM'),
        ...(o.promptTuningInitText ? { prompt_tuning_init_text: o.promptTuningInitText, tokenizer_name_or_path: dir } : {}),
      }, tokenizer, seed);
      break;
    case 'adapter':
      adapter = createBottleneckAdapter(model, {
        ...common, seed, ...(o.reductionFactor ? { reduction_factor: o.reductionFactor } : {}), ...(o.bottleneckSize ? { bottleneck_size: o.bottleneckSize } : {}),
        ...(o.placement ? { placement: o.placement } : {}), ...(o.nonLinearity ? { non_linearity: o.nonLinearity as 'relu' } : {}),
      });
      break;
    default:
      throw new PeftError('unknown method', { field: '--method', expected: METHODS.join(', '), found: method });
  }
  peft.addAdapter('default', adapter);
  const params = peft.trainable('default');
  const quant = linearModulesQuantized(model) ? quantizationReport(model) : undefined;
  return { model, tokenizer, peft, params, summary: peft.trainableSummary('default'), quant };
}

function linearModulesQuantized(model: CausalLM): boolean {
  return decoderLinears(model).some((m) => m.weight.data.kind === 'q4');
}

/** Writes the trained result: the adapter (PEFT methods) or a full model directory. */
export function saveResult(r: { model: CausalLM; peft: PeftModel | null }, dir: string, baseName: string): void {
  if (r.peft) saveAdapter(r.peft.get('default'), dir, baseName);
  else saveModelDir(r.model, dir);
}

function rss(): number {
  return process.memoryUsage().rss;
}

/**
 * Applies `--compute-dtype` to a set-up run (call after its adapters are attached, so trainable
 * weights are known) and adds a line to its summary; 'float32' or absent changes nothing.
 * @throws PeftError for an unknown dtype (also an empty one) or bf16 where no bf16 kernel can run.
 */
export function applyComputeDtype(setup: { model: CausalLM; summary: string }, dtype: string | undefined): void {
  if (dtype === undefined || dtype === 'float32') return;
  const c = setComputeDtype(setup.model, dtype);
  const kernel = native.kernelInfo().bf16Kernel === 'amx-bf16-tiles' ? 'AMX tiles (TDPBF16PS)' : 'VDPBF16PS';
  setup.summary += `\ncompute dtype: ${dtype} (${c.bf16} frozen linear weights multiply in bf16 with ${kernel}, ${c.other} stay as they are)`;
}

/** Runs training end to end (see module doc). */
export async function runTraining(o: TrainRunOptions, events: RunEvents = {}): Promise<TrainRunResult> {
  // every output is checked before anything is loaded, so a bad path fails in a second, not after training
  checkOutputsWritable(o);
  if (o.objective && o.objective !== 'sft') return runPreferenceTraining(o, events);
  const t0 = performance.now();
  let peakRss = rss();
  const setup = setupMethod(o);
  const { model, tokenizer, peft, params } = setup;
  applyComputeDtype(setup, o.computeDtype);
  setGradientCheckpointing(model, o.gradientCheckpointing ?? false);
  const maxSeqLength = o.maxSeqLength ?? 256;
  const dataset = loadDataset(o.data, tokenizer, {
    maxSeqLength, textSplit: o.textSplit, skipBadLines: o.skipBadLines, valFraction: o.valData ? undefined : (o.valFraction ?? 0.05),
    valFile: o.valData, seed: o.seed ?? 0, chatTemplate: o.chatTemplate,
  });
  const loader = createLoader(dataset.train, { batchSize: o.batchSize ?? 8, maxSeqLength, pack: o.pack ?? true, seed: o.seed ?? 0 });
  const valExamples = o.maxEvalExamples && o.maxEvalExamples > 0 ? dataset.val.slice(0, o.maxEvalExamples) : dataset.val;
  const { out, metricsFile, log } = openRunOutput(o, events.onNote);
  const convention: LossConvention = o.lossConvention ?? 'peft';
  const opts: Partial<TrainOptions> = { ...TRAIN_DEFAULTS, lr: DEFAULT_LR[o.method ?? 'lora'], ...stripUndefined(o), outputDir: out ?? undefined };
  const forgetting = o.forgettingData ? loadDataset(o.forgettingData, tokenizer, { maxSeqLength, textSplit: 'paragraphs' }).train : null;
  const forgettingExamples = forgetting && o.maxForgettingExamples ? forgetting.slice(0, o.maxForgettingExamples) : forgetting;
  // "before" figures are the base model's: adapters disabled (a fresh prefix/prompt is random, not neutral)
  const baseline = <T>(fn: () => T): T => (peft ? peft.withDisabled(fn) : fn());
  const forgettingBefore = forgettingExamples ? baseline(() => evaluate(model, forgettingExamples, { batchSize: o.batchSize ?? 8, maxSeqLength, lossConvention: convention })) : null;
  const newDomainBefore = valExamples.length ? baseline(() => evaluate(model, valExamples, { batchSize: o.batchSize ?? 8, maxSeqLength, lossConvention: convention })) : null;
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
        // PEFT's prompt-tuning convention: each row's first token is one more target
        const extra = o.method === 'prompt' && convention === 'peft' ? firstTargetCount(b) : 0;
        return { ...b, numTokens, numTargets: b.numTargets + extra };
      },
      state: () => loader.state(),
      restore: (s) => loader.restore(s as ReturnType<typeof loader.state>),
    },
    loss: (b, gs, ctx) => batchLoss(model, b, gs, ctx, convention),
    evaluate: valExamples.length ? () => evaluate(model, valExamples, { batchSize: o.batchSize ?? 8, maxSeqLength, lossConvention: convention }) : undefined,
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
    onNote: events.onNote,
  }, opts);
  const trainSeconds = (performance.now() - t0) / 1000;
  const forgettingAfter = forgettingExamples ? evaluate(model, forgettingExamples, { batchSize: o.batchSize ?? 8, maxSeqLength, lossConvention: convention }) : null;
  peakRss = Math.max(peakRss, rss(), maxRss());
  if (out) {
    saveResult({ model, peft }, out, baseName);
    // the whole run's curve, from the log (a resumed run continues the interrupted one's)
    const logged = readMetricsLog(metricsFile!).records as Array<{ type: string; step: number; loss: number }>;
    const points = logged.map((m) => ({ step: m.step, loss: m.loss, split: m.type === 'eval' ? 'validation' : 'train' }));
    writeFileAtomic(join(out, 'loss_curve.svg'), await lossCurveSvg(points, `${o.method ?? 'lora'} on ${basename(o.data)}`));
    writeJsonAtomic(join(out, 'train_args.json'), { ...stripUndefined(o), summary: setup.summary });
    if (peft) writeRunProvenance(out, o, peft, result, forgettingBefore, forgettingAfter, newDomainBefore);
  }
  const run: TrainRunResult = {
    model, peft, tokenizer, dataset, result, summary: setup.summary, outputDir: out, quant: setup.quant, peakRss,
    wallSeconds: trainSeconds,
    forgetting: forgettingBefore && forgettingAfter ? { before: forgettingBefore, after: forgettingAfter } : undefined,
    newDomainBase: newDomainBefore ?? undefined,
  };
  if (o.resultJson) writeJsonAtomic(o.resultJson, runSummary(run, o, setup.params));
  return run;
}

/** training_provenance.json + the model card (src/lifecycle/provenance.ts) for an adapter run. */
function writeRunProvenance(out: string, o: TrainRunOptions, peft: PeftModel, result: TrainResult, fBefore: EvalResult | null, fAfter: EvalResult | null, vBefore: EvalResult | null): void {
  const evals = result.evals;
  const last = evals[evals.length - 1];
  const steps = result.steps;
  const metrics: RunMetrics = {
    steps: result.state.step,
    ...(steps.length ? { train_loss: steps[steps.length - 1].loss } : {}),
    ...(vBefore ? { eval_loss_before: vBefore.loss, eval_perplexity_before: vBefore.perplexity } : {}),
    ...(last ? { eval_loss: last.loss, eval_perplexity: last.perplexity } : {}),
    ...(fBefore && fAfter ? { forgetting_perplexity_before: fBefore.perplexity, forgetting_perplexity_after: fAfter.perplexity } : {}),
  };
  writeProvenance(out, buildProvenance({
    baseDir: o.model ?? DEFAULT_MODEL, baseName: o.model ?? basename(DEFAULT_MODEL), method: o.method ?? 'lora',
    peftType: String(peft.get('default').config().peft_type), trainArgs: stripUndefined(o) as Record<string, unknown>,
    data: [{ role: 'train', path: o.data }, { role: 'validation', path: o.valData }, { role: 'forgetting', path: o.forgettingData }],
    chatTemplate: o.chatTemplate, metrics,
  }));
}

/**
 * Prepares a run's `--output` directory and opens its `metrics.jsonl` (one JSON record per line).
 * A new run starts the log empty; a `--resume` run cuts it back to the checkpoint's step (those
 * steps are redone) and drops a line torn by the kill, saying so through `onNote`.
 * Throws PeftError when `--output` is a file or the base model directory itself.
 * Shared by SFT (`runTraining`) and preference runs (`runPreferenceTraining`).
 */
export function openRunOutput(
  o: { output?: string; model?: string; resume?: string },
  onNote?: (message: string) => void,
): { out: string | null; metricsFile: string | null; log: (rec: Record<string, unknown>) => void } {
  const out = o.output ?? null;
  if (out) {
    if (existsSync(out) && !statSync(out).isDirectory())
      throw new PeftError('output path exists and is not a directory', { file: out, field: '--output', expected: 'a directory (or nothing)', found: 'a file' });
    if (resolve(out) === resolve(o.model ?? DEFAULT_MODEL))
      throw new PeftError('output directory is the base model; saving there would overwrite it', { file: out, field: '--output', expected: 'a directory other than --model' });
    mkdirSync(out, { recursive: true });
  }
  const metricsFile = out ? join(out, 'metrics.jsonl') : null;
  if (metricsFile && !o.resume) writeFileSync(metricsFile, '');
  if (metricsFile && o.resume && existsSync(metricsFile)) {
    // drop what the interrupted run logged after its checkpoint: those steps are redone; a line torn
    // by the kill (or otherwise unreadable) is dropped too, and said
    const from = readTrainerState(join(resolveCheckpoint(o.resume), 'trainer_state.json')).step;
    const { records, dropped } = readMetricsLog(metricsFile);
    if (dropped > 0) onNote?.(`${metricsFile}: dropped ${dropped} unreadable line(s) (a torn write from the interrupted run)`);
    writeFileAtomic(metricsFile, records.filter((r) => (r.step as number) <= from).map((r) => JSON.stringify(r) + '\n').join(''));
  }
  const log = (rec: Record<string, unknown>): void => {
    if (metricsFile) appendFileSync(metricsFile, JSON.stringify(rec) + '\n');
  };
  return { out, metricsFile, log };
}

/**
 * Reads metrics.jsonl: one JSON object per line with a numeric `step`. Lines that do not parse (a
 * torn last line after a kill) are skipped and counted instead of failing the run.
 */
export function readMetricsLog(file: string): { records: Array<Record<string, unknown>>; dropped: number } {
  const records: Array<Record<string, unknown>> = [];
  let dropped = 0;
  for (const line of readTextFileLenient(file).split('\n')) {
    if (!line.trim()) continue;
    try {
      const r = JSON.parse(line) as unknown;
      if (typeof r === 'object' && r !== null && !Array.isArray(r) && typeof (r as { step?: unknown }).step === 'number') records.push(r as Record<string, unknown>);
      else dropped++;
    } catch {
      dropped++;
    }
  }
  return { records, dropped };
}

/** A log file's text; invalid UTF-8 (a torn multi-byte character) is replaced rather than fatal. */
function readTextFileLenient(file: string): string {
  return Buffer.from(readRegularFile(file, { maxBytes: 1024 * 2 ** 20, what: 'metrics.jsonl' })).toString('utf8');
}

/** The files a run writes into `--output`, which must not be directories. */
const OUTPUT_FILES = ['adapter_model.safetensors', 'adapter_config.json', 'model.safetensors', 'config.json', 'metrics.jsonl', 'loss_curve.svg', 'train_args.json', 'training_provenance.json', 'README.md'];

/**
 * Checks before training that every output can be written: `--output` is a directory or can be
 * created, is writable, and none of the files the run writes there is a directory; `--result-json`
 * is not a directory and its directory is writable.
 * @throws PeftError naming the path and the option.
 */
export function checkOutputsWritable(o: TrainRunOptions): void {
  if (o.output) {
    const out = o.output;
    if (existsSync(out) && !statSync(out).isDirectory())
      throw new PeftError('output path exists and is not a directory', { file: out, field: '--output', expected: 'a directory (or nothing)', found: 'a file' });
    if (resolve(out) === resolve(o.model ?? DEFAULT_MODEL))
      throw new PeftError('output directory is the base model; saving there would overwrite it', { file: out, field: '--output', expected: 'a directory other than --model' });
    for (const f of OUTPUT_FILES) {
      const p = join(out, f);
      if (existsSync(p) && statSync(p).isDirectory())
        throw new PeftError('an output file of the run is a directory', { file: p, field: '--output', expected: `${f} to be a file (or absent)`, found: 'a directory' });
    }
    probeWritableDir(existsSync(out) ? out : nearestExisting(out), '--output');
  }
  if (o.resultJson) {
    const p = o.resultJson;
    if (existsSync(p) && statSync(p).isDirectory())
      throw new PeftError('result file is a directory', { file: p, field: '--result-json', expected: 'a file path', found: 'a directory' });
    const parent = dirname(resolve(p));
    if (!existsSync(parent)) throw new PeftError('directory of the result file does not exist', { file: p, field: '--result-json', expected: `an existing directory ${parent}` });
    probeWritableDir(parent, '--result-json');
  }
}

/** The deepest existing ancestor of `path` (where mkdir -p would start). */
function nearestExisting(path: string): string {
  let p = resolve(path);
  while (!existsSync(p)) {
    const up = dirname(p);
    if (up === p) break;
    p = up;
  }
  if (!statSync(p).isDirectory()) throw new PeftError('output path runs through a file', { file: p, field: '--output', expected: 'a directory', found: 'a file' });
  return p;
}

/** access(2) for write and search on `dir`; a refusal is a PeftError naming the directory. */
function probeWritableDir(dir: string, flag: string): void {
  try {
    accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
  } catch (e) {
    throw new PeftError(`directory is not writable (${(e as NodeJS.ErrnoException).code ?? 'error'})`, { file: dir, field: flag, expected: 'a writable directory' });
  }
}

/** Process peak RSS (bytes) as the OS reports it. */
function maxRss(): number {
  return process.resourceUsage().maxRSS * 1024;
}

/** A JSON-friendly summary of a run: what `--result-json` writes and `peft compare` reads. */
export function runSummary(r: TrainRunResult, o: TrainRunOptions, params: NamedTensor[]): Record<string, unknown> {
  const steps = r.result.steps;
  const evals = r.result.evals;
  const tokens = steps.reduce((s, x) => s + x.tokens, 0);
  const trainSeconds = steps.length ? steps[steps.length - 1].elapsed : 0;
  const out = r.outputDir;
  const adapterFile = out ? join(out, r.peft ? 'adapter_model.safetensors' : 'model.safetensors') : null;
  return {
    method: o.method ?? 'lora',
    summary: r.summary,
    trainable_params: params.reduce((s, p) => s + p.tensor.size, 0),
    lr: r.result.state.options.lr,
    steps: r.result.state.step,
    tokens,
    train_seconds: trainSeconds,
    tokens_per_second: trainSeconds > 0 ? tokens / trainSeconds : 0,
    peak_rss_bytes: Math.max(r.peakRss, maxRss()),
    adapter_bytes: adapterFile && existsSync(adapterFile) ? statSync(adapterFile).size : null,
    new_domain: evals.length ? {
      before: r.newDomainBase?.loss ?? evals[0].loss, after: evals[evals.length - 1].loss,
      ppl_before: r.newDomainBase?.perplexity ?? evals[0].perplexity, ppl_after: evals[evals.length - 1].perplexity,
    } : null,
    old_domain: r.forgetting ? { before: r.forgetting.before.loss, after: r.forgetting.after.loss, ppl_before: r.forgetting.before.perplexity, ppl_after: r.forgetting.after.perplexity } : null,
    quantization: r.quant ?? null,
    loss_curve: steps.map((s) => [s.step, s.loss]),
    eval_curve: evals.map((e) => [e.step, e.loss]),
    output: out,
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}

/** Evaluate a model on a data file's examples (all of it). */
export function evaluateFile(model: CausalLM, tokenizer: Tokenizer, file: string, o: { maxSeqLength?: number; batchSize?: number; textSplit?: 'blocks' | 'paragraphs'; skipBadLines?: boolean; maxExamples?: number; lossConvention?: LossConvention }): EvalResult {
  if (!existsSync(file)) throw new PeftError('data file not found', { file });
  const maxSeqLength = o.maxSeqLength ?? 256;
  const ds = loadDataset(file, tokenizer, { maxSeqLength, textSplit: o.textSplit, skipBadLines: o.skipBadLines });
  const ex = o.maxExamples && o.maxExamples > 0 ? ds.train.slice(0, o.maxExamples) : ds.train;
  return evaluate(model, ex, { maxSeqLength, batchSize: o.batchSize, lossConvention: o.lossConvention });
}


