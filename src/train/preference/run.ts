/**
 * A preference-tuning run (`peft train --objective dpo|ipo|orpo|simpo|kto`): the same model and
 * method setup, optimizer, schedule, checkpoints and outputs as SFT (train/run.ts), with the
 * preference data, objective and reference of train/preference. Writes the adapter (or model),
 * `metrics.jsonl` with TRL's metric names per step and per evaluation, `loss_curve.svg` (loss,
 * rewards/margins, rewards/accuracies, logps), `train_args.json`, and with `resultJson` a summary
 * that states the reference used and the held-out metrics before → after.
 */
import { basename, join } from 'node:path';
import { PeftError } from '../../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../../io/atomic.js';
import { defaultContext } from '../../models/model.js';
import { DEFAULT_MODEL } from '../../paths.js';
import { loadAdapter } from '../../peft/index.js';
import { metricPanelsSvg } from '../../report/charts.js';
import { noGrad, withArena } from '../../tensor/index.js';
import { buildProvenance, writeProvenance } from '../../lifecycle/provenance.js';
import { loadDataset, splitIndices } from '../data/index.js';
import { evaluate } from '../evaluate.js';
import { applyComputeDtype, DEFAULT_LR, openRunOutput, readMetricsLog, runSummary, saveResult, setupMethod, type RunEvents, type TrainRunOptions, type TrainRunResult } from '../run.js';
import { train, TRAIN_DEFAULTS, type TrainOptions } from '../trainer.js';
import { collateSequences, indexLoader, loadPreferenceData, type PairExample, type PreferenceData, type UnpairedExample } from './data.js';
import { defaultPreferenceConfig, needsReference, OBJECTIVES, type Objective, type PreferenceConfig } from './losses.js';
import { ktoStep, pairStep, referenceLogps, type PreferenceSetup, type PreferenceStep, type ReferenceKind } from './step.js';

/** What a preference run reports besides the common figures. */
export interface PreferenceRunResult {
  objective: Objective;
  config: PreferenceConfig;
  reference: ReferenceKind;
  /** In words, as TRL states it: where the reference log-probabilities came from. */
  referenceDescription: string;
  trainExamples: number;
  valExamples: number;
  droppedTooLong: number;
  /** Held-out loss and metrics (TRL names, plus `logps/accuracies`) before and after training. */
  before: Record<string, number> | null;
  after: Record<string, number> | null;
}

type Item = PairExample | UnpairedExample;

function preferenceConfig(o: TrainRunOptions, objective: Objective): PreferenceConfig {
  const c = defaultPreferenceConfig(objective);
  const set = <K extends keyof PreferenceConfig>(k: K, v: PreferenceConfig[K] | undefined, check: (x: number) => boolean, expected: string): void => {
    if (v === undefined) return;
    if (typeof v !== 'number' || !check(v)) throw new PeftError('invalid preference option', { field: k, expected, found: String(v) });
    c[k] = v;
  };
  set('beta', o.beta, (x) => x > 0, 'a number > 0');
  set('labelSmoothing', o.labelSmoothing, (x) => x >= 0 && x < 0.5, 'a number in [0, 0.5)');
  set('simpoGamma', o.simpoGamma, Number.isFinite, 'a number');
  set('cpoAlpha', o.cpoAlpha, (x) => x >= 0, 'a number ≥ 0');
  set('desirableWeight', o.desirableWeight, (x) => x > 0, 'a number > 0');
  set('undesirableWeight', o.undesirableWeight, (x) => x > 0, 'a number > 0');
  if (c.labelSmoothing > 0 && objective !== 'dpo' && objective !== 'simpo')
    throw new PeftError('label smoothing applies to dpo and simpo only', { field: 'labelSmoothing', expected: '0 for ' + objective, found: String(c.labelSmoothing) });
  return c;
}

/** Metrics averaged over micro-batches or evaluation batches, weighted by their pairs (KTO: examples). */
class MetricMean {
  private sums = new Map<string, { s: number; w: number }>();
  add(m: Record<string, number>, w: number): void {
    for (const [k, v] of Object.entries(m)) {
      const e = this.sums.get(k) ?? { s: 0, w: 0 };
      e.s += v * w; e.w += w;
      this.sums.set(k, e);
    }
  }
  take(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, e] of this.sums) out[k] = e.w > 0 ? e.s / e.w : 0;
    this.sums.clear();
    return out;
  }
}

function runStep(p: PreferenceSetup, kind: 'paired' | 'unpaired', items: Item[], indices: number[] | null, gradScale: number,
  ctx: ReturnType<typeof defaultContext>): PreferenceStep {
  return kind === 'paired' ? pairStep(p, items as PairExample[], indices, gradScale, ctx) : ktoStep(p, items as UnpairedExample[], indices, gradScale, ctx);
}

/** Held-out loss and metrics over all items, in batches, without gradients. */
export function evaluatePreference(p: PreferenceSetup, kind: 'paired' | 'unpaired', items: Item[], batchSize: number): { loss: number; metrics: Record<string, number>; count: number } {
  const mean = new MetricMean();
  let lossSum = 0, count = 0;
  noGrad(() => {
    for (let i = 0; i < items.length; i += batchSize) {
      const idx = Array.from({ length: Math.min(batchSize, items.length - i) }, (_, k) => i + k);
      // KTO needs at least two examples per batch to mismatch them
      if (kind === 'unpaired' && idx.length < 2 && i > 0) idx.unshift(i - 1);
      withArena(() => {
        const st = runStep(p, kind, idx.map((k) => items[k]), idx, 0, defaultContext(false));
        lossSum += st.loss * st.count;
        count += st.count;
        mean.add(st.metrics, st.count);
      });
    }
  });
  return { loss: count ? lossSum / count : NaN, metrics: mean.take(), count };
}

/** Reference Σ completion log-probabilities of every item, computed once (precompute_ref_log_probs). */
function precompute(p: PreferenceSetup, kind: 'paired' | 'unpaired', items: Item[], batchSize: number): PreferenceSetup['refCache'] {
  if (kind === 'paired') {
    const chosen = new Float64Array(items.length), rejected = new Float64Array(items.length);
    for (let i = 0; i < items.length; i += batchSize) {
      const part = (items as PairExample[]).slice(i, i + batchSize);
      withArena(() => {
        const r = referenceLogps(p, collateSequences([...part.map((x) => x.chosen), ...part.map((x) => x.rejected)], p.padId));
        part.forEach((_, k) => { chosen[i + k] = r[k]; rejected[i + k] = r[part.length + k]; });
      });
    }
    return { chosen, rejected };
  }
  const logps = new Float64Array(items.length);
  for (let i = 0; i < items.length; i += batchSize) {
    const part = (items as UnpairedExample[]).slice(i, i + batchSize);
    withArena(() => referenceLogps(p, collateSequences(part.map((x) => x.example), p.padId)).forEach((v, k) => { logps[i + k] = v; }));
  }
  return { logps };
}

function itemsOf(d: PreferenceData): Item[] {
  return d.kind === 'paired' ? d.pairs : d.unpaired;
}

function itemTokens(x: Item): number {
  return 'chosen' in x ? x.chosen.ids.length + x.rejected.ids.length : x.example.ids.length;
}

/** Runs preference tuning end to end (see the module comment). */
export async function runPreferenceTraining(o: TrainRunOptions, events: RunEvents = {}): Promise<TrainRunResult> {
  const objective = o.objective as Objective;
  if (!OBJECTIVES.includes(objective)) throw new PeftError('unknown objective', { field: '--objective', expected: ['sft', ...OBJECTIVES].join(', '), found: String(o.objective) });
  const config = preferenceConfig(o, objective);
  const method = o.method ?? 'lora';
  const needRef = needsReference(objective);
  if (objective === 'kto' && (method === 'full' || o.precomputeRefLogps))
    throw new PeftError('KTO pairs every batch\'s prompts with other completions for its KL term, so its reference cannot be precomputed; train a PEFT method without --precompute-ref-logps', {
      field: method === 'full' ? '--method' : '--precompute-ref-logps', expected: 'a PEFT method with the reference computed per batch', found: method === 'full' ? 'full' : 'set',
    });
  const t0 = performance.now();
  let peakRss = process.memoryUsage().rss;
  const setup = setupMethod(o);
  const { model, tokenizer, peft, params } = setup;
  applyComputeDtype(setup, o.computeDtype); // the reference (adapter disabled) shares these frozen weights
  const maxSeqLength = o.maxSeqLength ?? 256;
  const batchSize = o.batchSize ?? 8;
  const seed = o.seed ?? 0;

  // reference: base with adapters disabled / frozen copy of the starting adapter / precomputed
  let underlying: ReferenceKind = 'none';
  let refDescription = 'none (the objective has no reference model)';
  if (needRef) {
    if (o.adapter) {
      loadAdapter(peft!, o.adapter, 'ref', false);
      peft!.setActive('default');
      peft!.trainable('default');
      underlying = 'adapter';
      refDescription = `the starting adapter ${o.adapter}, loaded again as a frozen adapter "ref" (TRL: the "ref" copy of a pretrained adapter)`;
    } else if (peft) {
      underlying = 'base';
      refDescription = 'the base model with the adapter disabled (TRL: PEFT model without ref_model)';
    } else {
      underlying = 'none';
      refDescription = 'the initial model itself';
    }
  }
  const precomputed = needRef && (o.precomputeRefLogps || method === 'full');
  if (precomputed) refDescription = `log-probabilities of ${refDescription} computed once before training and cached (TRL: precompute_ref_log_probs)`;

  const data = loadPreferenceData(o.data, tokenizer, { maxSeqLength, chatTemplate: o.chatTemplate });
  const wantKind = objective === 'kto' ? 'unpaired' : 'paired';
  if (data.kind !== wantKind)
    throw new PeftError(`--objective ${objective} needs ${wantKind} preference data`, {
      file: o.data, expected: wantKind === 'paired' ? 'records {"prompt","chosen","rejected"}' : 'records {"prompt","completion","label"}', found: `${data.kind} records`,
    });
  let trainItems = itemsOf(data), valItems: Item[] = [];
  if (o.valData) {
    const v = loadPreferenceData(o.valData, tokenizer, { maxSeqLength, chatTemplate: o.chatTemplate });
    if (v.kind !== wantKind) throw new PeftError(`--objective ${objective} needs ${wantKind} validation data`, { file: o.valData, found: `${v.kind} records` });
    valItems = itemsOf(v);
  } else {
    const f = o.valFraction ?? 0.05;
    if (f > 0) {
      const split = splitIndices(trainItems.length, f, seed);
      valItems = split.val.map((i) => trainItems[i]);
      trainItems = split.train.map((i) => trainItems[i]);
    }
  }
  const maxEval = o.maxEvalExamples && o.maxEvalExamples > 0 ? o.maxEvalExamples : Infinity;
  valItems = valItems.slice(0, maxEval);
  if (wantKind === 'unpaired' && batchSize < 2) throw new PeftError('KTO needs at least 2 examples per batch (its KL term pairs each prompt with another example\'s completion)', { field: '--batch-size', expected: '≥ 2', found: String(batchSize) });

  const padId = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  const base: PreferenceSetup = { model, peft, config, reference: underlying, refAdapter: 'ref', maxSeqLength, padId };
  const trainSetup: PreferenceSetup = precomputed ? { ...base, reference: 'precomputed', refCache: precompute(base, wantKind, trainItems, batchSize) } : base;
  const valSetup: PreferenceSetup = precomputed && valItems.length ? { ...base, reference: 'precomputed', refCache: precompute(base, wantKind, valItems, batchSize) } : base;

  const { out, metricsFile, log } = openRunOutput(o, events.onNote);

  // forgetting: the base-domain text before (base model) and after
  const forgetting = o.forgettingData ? loadDataset(o.forgettingData, tokenizer, { maxSeqLength, textSplit: 'paragraphs' }).train : null;
  const forgettingExamples = forgetting && o.maxForgettingExamples ? forgetting.slice(0, o.maxForgettingExamples) : forgetting;
  const baseline = <T>(fn: () => T): T => (peft ? peft.withDisabled(fn) : fn());
  const forgettingBefore = forgettingExamples ? baseline(() => evaluate(model, forgettingExamples, { batchSize, maxSeqLength })) : null;

  const opts: Partial<TrainOptions> = { ...TRAIN_DEFAULTS, lr: DEFAULT_LR[method], ...stripUndefined(o), outputDir: out ?? undefined };
  events.onStart?.({ summary: setup.summary, trainExamples: trainItems.length, valExamples: valItems.length, maxSteps: opts.maxSteps!, quant: setup.quant });
  const loader = indexLoader(trainItems.length, batchSize, seed);
  const stepMean = new MetricMean();
  let lastEval: Record<string, number> | null = null, firstEval: Record<string, number> | null = null;
  const baseName = o.model ?? basename(DEFAULT_MODEL);
  const result = train<{ indices: number[] }>({
    params,
    data: {
      next: () => {
        const indices = loader.next();
        return { indices, numTargets: indices.length, numTokens: indices.reduce((s, i) => s + itemTokens(trainItems[i]), 0) };
      },
      state: () => loader.state(),
      restore: (s) => loader.restore(s as ReturnType<typeof loader.state>),
    },
    loss: (b, gs, ctx) => {
      let idx = b.indices;
      if (wantKind === 'unpaired' && idx.length < 2) idx = [...idx, loader.next()[0]];
      const st = runStep(trainSetup, wantKind, idx.map((i) => trainItems[i]), idx, gs, ctx);
      stepMean.add(st.metrics, st.count);
      return st.result;
    },
    stepMetrics: () => stepMean.take(),
    evaluate: valItems.length ? () => {
      const e = evaluatePreference(valSetup, wantKind, valItems, batchSize);
      lastEval = { loss: e.loss, ...e.metrics };
      firstEval ??= lastEval;
      return { loss: e.loss, tokens: e.count };
    } : undefined,
    saveExtra: (dir) => saveResult({ model, peft }, dir, baseName),
    onStep: (m) => {
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
      const { extra, ...rest } = m;
      log({ type: 'train', ...rest, ...extra });
      events.onStep?.(m);
    },
    onEval: (step, loss) => {
      log({ type: 'eval', step, ...(lastEval ?? { loss }) });
      events.onEval?.(step, loss);
    },
    onCheckpoint: events.onCheckpoint,
    onNote: events.onNote,
  }, opts);
  const forgettingAfter = forgettingExamples ? evaluate(model, forgettingExamples, { batchSize, maxSeqLength }) : null;
  peakRss = Math.max(peakRss, process.memoryUsage().rss, process.resourceUsage().maxRSS * 1024);
  const preference: PreferenceRunResult = {
    objective, config, reference: precomputed ? 'precomputed' : underlying, referenceDescription: refDescription,
    trainExamples: trainItems.length, valExamples: valItems.length, droppedTooLong: data.droppedTooLong,
    before: firstEval, after: lastEval,
  };
  if (out) {
    saveResult({ model, peft }, out, baseName);
    const logged = readMetricsLog(metricsFile!).records as Array<Record<string, number | string>>;
    const shown = ['loss', 'rewards/margins', 'rewards/accuracies', 'rewards/chosen', 'rewards/rejected', objective === 'kto' ? 'kl' : 'logps/accuracies'];
    const points = logged.flatMap((r) => shown.filter((k) => typeof r[k] === 'number').map((k) => ({
      step: r.step as number, value: r[k] as number, metric: k, split: r.type === 'eval' ? 'validation' : 'train',
    })));
    writeFileAtomic(join(out, 'loss_curve.svg'), await metricPanelsSvg(points, `${objective} (${method}) on ${basename(o.data)}`));
    writeJsonAtomic(join(out, 'train_args.json'), { ...stripUndefined(o), summary: setup.summary, reference: refDescription });
    if (peft) {
      const steps = result.steps;
      writeProvenance(out, buildProvenance({
        baseDir: o.model ?? DEFAULT_MODEL, baseName, method, peftType: String(peft.get('default').config().peft_type),
        trainArgs: { ...stripUndefined(o), reference: refDescription } as Record<string, unknown>,
        data: [{ role: 'train', path: o.data }, { role: 'validation', path: o.valData }, { role: 'forgetting', path: o.forgettingData }, { role: 'starting adapter', path: o.adapter ? join(o.adapter, 'adapter_model.safetensors') : undefined }],
        chatTemplate: o.chatTemplate,
        metrics: {
          steps: result.state.step, ...(steps.length ? { train_loss: steps[steps.length - 1].loss } : {}),
          ...(forgettingBefore && forgettingAfter ? { forgetting_perplexity_before: forgettingBefore.perplexity, forgetting_perplexity_after: forgettingAfter.perplexity } : {}),
        },
      }));
    }
  }
  const run: TrainRunResult = {
    model, peft, tokenizer, dataset: { train: [], val: [], stats: [], skippedBadLines: 0 }, result, summary: setup.summary, outputDir: out, quant: setup.quant, peakRss,
    wallSeconds: (performance.now() - t0) / 1000,
    forgetting: forgettingBefore && forgettingAfter ? { before: forgettingBefore, after: forgettingAfter } : undefined,
    preference,
  };
  if (o.resultJson) writeJsonAtomic(o.resultJson, { ...runSummary(run, o, params), new_domain: null, eval_curve: [], preference });
  return run;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  return out;
}
