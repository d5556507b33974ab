/**
 * The training loop, method-agnostic: it updates a list of parameters with AdamW from a loss
 * function over batches. Gradient accumulation normalises the loss by the total number of target
 * tokens of all micro-batches of a step (so 4 micro-batches of 1 equal one batch of 4); global-norm
 * clipping; constant/linear/cosine schedules with warmup; evaluation and atomic checkpoints every
 * N steps; resume; a NaN/Inf loss stops the run naming the step.
 */
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import type { ForwardContext } from '../models/model.js';
import type { NamedTensor } from '../peft/types.js';
import { backward, withArena, type LossResult } from '../tensor/index.js';
import { cleanStaleCheckpointTemps, findCheckpoint, loadCheckpoint, pruneCheckpoints, saveCheckpoint, type TrainerState } from './checkpoint.js';
import { adamwStep, ADAMW_DEFAULTS, clipGradNorm, newAdamWState, zeroGrads, type AdamWOptions } from './optim.js';
import { lrFactor, type ScheduleName } from './schedule.js';

/** A micro-batch as the data pipeline produces it (see train/data). */
export interface StepBatch {
  /** Number of target (labelled) tokens in the micro-batch. */
  numTargets: number;
  /** Number of tokens processed (for tokens/s). */
  numTokens: number;
}

export interface BatchSource<B extends StepBatch> {
  next(): B;
  state(): unknown;
  restore(state: unknown): void;
}

export type LossFn<B> = (batch: B, gradScale: number, ctx: ForwardContext) => LossResult;

export interface TrainOptions extends AdamWOptions {
  maxSteps: number;
  gradAccum: number;
  schedule: ScheduleName;
  warmupSteps: number;
  /** Global gradient-norm clip (0 = off). */
  maxGradNorm: number;
  seed: number;
  /** Evaluate every N optimizer steps (0 = only at the end). */
  evalEvery: number;
  /** Checkpoint every N optimizer steps (0 = none). */
  checkpointEvery: number;
  /** Directory for checkpoints (required when checkpointEvery > 0). */
  outputDir?: string;
  /** Checkpoint (or output directory) to resume from. */
  resume?: string;
  /** Keep only the N newest checkpoint-N directories (0 = keep all), as transformers' save_total_limit. */
  saveTotalLimit: number;
  /** The run's `--compute-dtype` (applied to the model by the caller; recorded in checkpoints so a change on resume is stated). */
  computeDtype?: string;
}

export const TRAIN_DEFAULTS: TrainOptions = {
  ...ADAMW_DEFAULTS,
  maxSteps: 100,
  gradAccum: 1,
  schedule: 'cosine',
  warmupSteps: 0,
  maxGradNorm: 1.0,
  seed: 0,
  evalEvery: 0,
  checkpointEvery: 0,
  saveTotalLimit: 0,
};

export interface StepMetrics {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  tokens: number;
  tokensPerSecond: number;
  elapsed: number;
  /** Objective-specific metrics of the step (e.g. preference tuning's `rewards/*`), from `TrainHooks.stepMetrics`. */
  extra?: Record<string, number>;
}

export interface TrainHooks<B> {
  params: NamedTensor[];
  loss: LossFn<B>;
  data: BatchSource<B & StepBatch>;
  /** Mean loss per target token on validation data (called at eval steps). */
  evaluate?: () => { loss: number; tokens: number };
  /** Writes method-specific files (e.g. the adapter) into a checkpoint directory. */
  saveExtra?: (dir: string) => void;
  onStep?: (m: StepMetrics) => void;
  /** Called once per optimizer step after its micro-batches: metrics to attach to the step (`StepMetrics.extra`). */
  stepMetrics?: () => Record<string, number> | undefined;
  onEval?: (step: number, loss: number) => void;
  onCheckpoint?: (dir: string) => void;
  /** Something the user should know about the run's state (a checkpoint skipped, a setting changed on resume). */
  onNote?: (message: string) => void;
}

export interface TrainResult {
  state: TrainerState;
  steps: StepMetrics[];
  evals: Array<{ step: number; loss: number; perplexity: number }>;
}

/** Seed of the dropout streams of micro-batch `micro` of optimizer step `step`. */
function stepSeed(seed: number, step: number, micro: number): number {
  return ((seed * 1000003) ^ (step * 7919 + micro * 104729)) >>> 0;
}

export function train<B>(h: TrainHooks<B>, options: Partial<TrainOptions>): TrainResult {
  const o: TrainOptions = { ...TRAIN_DEFAULTS, ...options };
  const bad = (field: string, expected: string, found: unknown): never => {
    throw new PeftError('invalid training option', { field, expected, found: JSON.stringify(found) ?? String(found) });
  };
  if (!Number.isInteger(o.maxSteps) || o.maxSteps < 1) bad('--max-steps', 'an integer >= 1', o.maxSteps);
  if (!Number.isInteger(o.gradAccum) || o.gradAccum < 1) bad('--grad-accum', 'an integer >= 1', o.gradAccum);
  if (typeof o.lr !== 'number' || !(o.lr > 0) || !Number.isFinite(o.lr)) bad('--lr', 'a number > 0', o.lr);
  if (!['constant', 'linear', 'cosine'].includes(o.schedule)) bad('--schedule', 'constant, linear or cosine', o.schedule);
  if (!Number.isInteger(o.warmupSteps) || o.warmupSteps < 0) bad('--warmup-steps', 'an integer >= 0', o.warmupSteps);
  if (typeof o.maxGradNorm !== 'number' || !Number.isFinite(o.maxGradNorm) || o.maxGradNorm < 0) bad('--max-grad-norm', 'a number >= 0 (0 = no clipping)', o.maxGradNorm);
  if (typeof o.weightDecay !== 'number' || !Number.isFinite(o.weightDecay) || o.weightDecay < 0) bad('--weight-decay', 'a number >= 0', o.weightDecay);
  for (const [k, flag] of [['evalEvery', '--eval-every'], ['checkpointEvery', '--checkpoint-every'], ['saveTotalLimit', '--save-total-limit']] as const)
    if (!Number.isInteger(o[k]) || o[k] < 0) bad(flag, 'an integer >= 0', o[k]);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0) bad('--seed', 'an integer >= 0', o.seed);
  if (o.checkpointEvery > 0 && !o.outputDir) bad('--output', 'an output directory for --checkpoint-every', o.outputDir);
  const params = h.params;
  if (params.length === 0) throw new PeftError('nothing to train: the method has no trainable parameters');
  const opt = newAdamWState(params);
  const runOptions = { maxSteps: o.maxSteps, gradAccum: o.gradAccum, lr: o.lr, schedule: o.schedule, warmupSteps: o.warmupSteps, seed: o.seed, computeDtype: o.computeDtype ?? 'float32' };
  let state: TrainerState = { step: 0, data: null, history: [], options: runOptions, tokensSeen: 0 };
  if (o.outputDir && o.checkpointEvery > 0) {
    const removed = cleanStaleCheckpointTemps(o.outputDir);
    if (removed.length) h.onNote?.(`removed ${removed.length} incomplete checkpoint temp dir(s) left by an interrupted run: ${removed.join(', ')}`);
  }
  if (o.resume) {
    const found = findCheckpoint(o.resume);
    for (const s of found.skipped) h.onNote?.(`skipping incomplete ${s.dir}: ${s.reason}`);
    const dir = found.dir;
    if (found.skipped.length) h.onNote?.(`resuming from the previous complete checkpoint ${dir}`);
    state = loadCheckpoint(dir, params, opt);
    for (const k of ['gradAccum', 'seed'] as const) {
      if (state.options[k] !== runOptions[k])
        throw new PeftError('cannot resume with a different setting', { file: dir, field: k, expected: String(state.options[k]), found: String(runOptions[k]) });
    }
    // a changed learning rate or length changes the schedule from here on: allowed, and said
    const flags: Record<string, string> = { lr: '--lr', maxSteps: '--max-steps', schedule: '--schedule', warmupSteps: '--warmup-steps', computeDtype: '--compute-dtype' };
    for (const k of ['lr', 'maxSteps', 'schedule', 'warmupSteps', 'computeDtype'] as const) {
      if (state.options[k] !== undefined && state.options[k] !== runOptions[k])
        h.onNote?.(`resume: ${flags[k]} changed from ${String(state.options[k])} (checkpoint) to ${String(runOptions[k])}; ${k === 'computeDtype'
          ? 'the remaining steps multiply the frozen weights in the new dtype'
          : 'the learning-rate schedule continues with the new value'}, so the result differs from an uninterrupted run`);
    }
    if (state.step >= o.maxSteps) h.onNote?.(`resume: the checkpoint is at step ${state.step}, already at or past --max-steps ${o.maxSteps}; no further steps`);
    h.data.restore(state.data);
    state.options = runOptions;
  }
  const steps: StepMetrics[] = [];
  const evals: TrainResult['evals'] = [];
  const t0 = performance.now();
  const doEval = (): void => {
    if (!h.evaluate) return;
    const e = h.evaluate();
    evals.push({ step: state.step, loss: e.loss, perplexity: Math.exp(e.loss) });
    state.history.push({ step: state.step, eval_loss: e.loss });
    h.onEval?.(state.step, e.loss);
  };
  if (!o.resume) doEval();
  while (state.step < o.maxSteps) {
    const step = state.step;
    const micro: Array<B & StepBatch> = [];
    for (let i = 0; i < o.gradAccum; i++) micro.push(h.data.next());
    const total = micro.reduce((s, b) => s + b.numTargets, 0);
    zeroGrads(params);
    let lossSum = 0, tokens = 0;
    if (total > 0) {
      micro.forEach((b, i) => {
        const ctx: ForwardContext = { training: true, seed: stepSeed(o.seed, step, i), dropoutCalls: 0 };
        withArena(() => {
          const r = h.loss(b, 1 / total, ctx);
          lossSum += r.sum;
          backward(r.loss);
        });
        tokens += b.numTokens;
      });
    }
    const loss = total > 0 ? lossSum / total : 0;
    if (!Number.isFinite(loss)) throw new PeftError(`training loss is ${loss} at step ${step + 1}; stopping (try a lower --lr or check the data)`, { field: `step ${step + 1}` });
    const gradNorm = clipGradNorm(params, o.maxGradNorm);
    if (!Number.isFinite(gradNorm)) throw new PeftError(`gradient norm is ${gradNorm} at step ${step + 1}; stopping`, { field: `step ${step + 1}` });
    const lr = o.lr * lrFactor(o.schedule, step, o.maxSteps, o.warmupSteps);
    adamwStep(params, opt, o, lr);
    state.step++;
    state.tokensSeen += tokens;
    const elapsed = (performance.now() - t0) / 1000;
    const m: StepMetrics = { step: state.step, loss, lr, gradNorm, tokens, tokensPerSecond: 0, elapsed };
    const extra = h.stepMetrics?.();
    if (extra) m.extra = extra;
    steps.push(m);
    m.tokensPerSecond = steps.reduce((s, x) => s + x.tokens, 0) / Math.max(elapsed, 1e-9);
    state.history.push({ step: state.step, loss });
    h.onStep?.(m);
    if (o.evalEvery > 0 && state.step % o.evalEvery === 0 && state.step < o.maxSteps) doEval();
    if (o.checkpointEvery > 0 && (state.step % o.checkpointEvery === 0 || state.step === o.maxSteps)) {
      state.data = h.data.state();
      const dir = join(o.outputDir!, `checkpoint-${state.step}`);
      saveCheckpoint(dir, params, opt, state, h.saveExtra);
      h.onCheckpoint?.(dir);
      if (o.saveTotalLimit > 0) pruneCheckpoints(o.outputDir!, o.saveTotalLimit);
    }
  }
  doEval();
  state.data = h.data.state();
  return { state, steps, evals };
}
