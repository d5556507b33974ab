/**
 * Training checkpoints: trainable parameters, AdamW moments, the schedule position and the data
 * position, written to a temporary directory and renamed into place (atomic). Resuming from one
 * continues to the same final weights as an uninterrupted run.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { PeftError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
import { readJsonObject, shortMessage } from '../io/files.js';
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from '../io/safetensors.js';
import type { NamedTensor } from '../peft/types.js';
import type { AdamWState } from './optim.js';

export interface TrainerState {
  /** Optimizer steps completed. */
  step: number;
  /** Data loader position (JSON, from the loader's state()). */
  data: unknown;
  /** Loss history so far ({step, loss} and eval entries). */
  history: Array<Record<string, number>>;
  /** Options of the run (to refuse resuming with incompatible ones). */
  options: Record<string, unknown>;
  tokensSeen: number;
}

/**
 * Writes checkpoint `dir` (e.g. out/checkpoint-200): params.safetensors, optimizer.safetensors,
 * trainer_state.json, plus whatever `extra(dir)` writes (the adapter files). The directory
 * appears complete or not at all.
 */
export function saveCheckpoint(dir: string, params: NamedTensor[], opt: AdamWState, state: TrainerState,
  extra?: (dir: string) => void): void {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  writeSafetensorsFile(join(tmp, 'params.safetensors'),
    params.map((p) => ({ name: p.name, dtype: 'F32' as const, shape: p.tensor.shape, data: p.tensor.data })), { format: 'pt' });
  const moments = params.flatMap((p) => [
    { name: `exp_avg.${p.name}`, dtype: 'F32' as const, shape: p.tensor.shape, data: opt.m.get(p.name)! },
    { name: `exp_avg_sq.${p.name}`, dtype: 'F32' as const, shape: p.tensor.shape, data: opt.v.get(p.name)! },
  ]);
  writeSafetensorsFile(join(tmp, 'optimizer.safetensors'), moments, { step: String(opt.step) });
  extra?.(tmp);
  writeJsonAtomic(join(tmp, 'trainer_state.json'), state);
  rmSync(dir, { recursive: true, force: true });
  renameSync(tmp, dir);
}

/** Why a checkpoint directory cannot be resumed from, or null when it looks complete. */
export function checkpointProblem(dir: string): string | null {
  for (const f of ['trainer_state.json', 'params.safetensors', 'optimizer.safetensors'])
    if (!existsSync(join(dir, f))) return `${f} is missing`;
  try {
    readTrainerState(join(dir, 'trainer_state.json'));
  } catch (e) {
    return e instanceof PeftError ? e.message : shortMessage(e);
  }
  return null;
}

/** A checkpoint to resume from, and the newer ones skipped because they were incomplete. */
export interface FoundCheckpoint {
  dir: string;
  skipped: Array<{ dir: string; reason: string }>;
}

/**
 * The newest complete `checkpoint-N` directory inside `dir` (or `dir` itself when it is a
 * checkpoint). A newer checkpoint whose trainer_state.json is truncated or whose tensor files are
 * missing (a kill at the wrong moment, a full disk) is skipped and reported in `skipped`, so the
 * run falls back to the previous complete one. Temporary `checkpoint-N.tmp-PID` directories are
 * never candidates.
 * @throws PeftError naming `dir` when it does not exist or holds no complete checkpoint, or naming
 *   the file when `dir` is itself a checkpoint and is incomplete.
 */
export function findCheckpoint(dir: string): FoundCheckpoint {
  if (existsSync(join(dir, 'trainer_state.json'))) {
    const problem = checkpointProblem(dir);
    if (problem) throw new PeftError(`cannot resume from this checkpoint: ${problem}`, { file: dir, expected: 'a complete checkpoint (or the output directory holding checkpoint-N)' });
    return { dir, skipped: [] };
  }
  if (!existsSync(dir)) throw new PeftError('resume directory does not exist', { file: dir });
  const steps = readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
  const skipped: FoundCheckpoint['skipped'] = [];
  for (const step of steps) {
    const c = join(dir, `checkpoint-${step}`);
    const problem = checkpointProblem(c);
    if (problem === null) return { dir: c, skipped };
    skipped.push({ dir: c, reason: problem });
  }
  throw new PeftError('no complete checkpoint found to resume from', {
    file: dir, expected: 'a checkpoint-N directory with trainer_state.json, params.safetensors and optimizer.safetensors',
    found: skipped.length ? skipped.map((s) => `${basename(s.dir)} (${s.reason})`).join('; ') : 'none',
  });
}

/** The newest complete `checkpoint-N` directory inside `dir`, or `dir` itself when it is a checkpoint (see {@link findCheckpoint}). */
export function resolveCheckpoint(dir: string): string {
  return findCheckpoint(dir).dir;
}

/**
 * Reads and checks a trainer_state.json: a JSON object with an integer `step` >= 0, an `options`
 * object, a `history` list and a numeric `tokensSeen`.
 * @throws PeftError naming the file and the field (a truncated file is "invalid JSON").
 */
export function readTrainerState(file: string): TrainerState {
  const raw = readJsonObject(file, { what: 'trainer_state.json (a JSON object)' });
  const bad = (field: string, expected: string): never => {
    throw new PeftError('invalid trainer state', { file, field, expected, found: JSON.stringify(raw[field])?.slice(0, 60) ?? 'nothing' });
  };
  if (!Number.isSafeInteger(raw.step) || (raw.step as number) < 0) bad('step', 'an integer >= 0');
  if (typeof raw.options !== 'object' || raw.options === null || Array.isArray(raw.options)) bad('options', 'an object');
  if (!Array.isArray(raw.history)) bad('history', 'a list');
  if (typeof raw.tokensSeen !== 'number' || !Number.isFinite(raw.tokensSeen)) bad('tokensSeen', 'a number');
  return raw as unknown as TrainerState;
}

/**
 * Removes `checkpoint-N.tmp-PID` directories that a killed run left behind in `dir` (those of a
 * process that is no longer running). Returns the names removed.
 */
export function cleanStaleCheckpointTemps(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const removed: string[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^checkpoint-\d+\.tmp-(\d+)$/.exec(name);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && processAlive(pid)) continue;
    rmSync(join(dir, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Keeps the `limit` newest `checkpoint-N` directories of `dir` and deletes older ones (as
 * transformers' `save_total_limit`). Returns the names deleted. `limit` 0 keeps all.
 */
export function pruneCheckpoints(dir: string, limit: number): string[] {
  if (limit <= 0 || !existsSync(dir)) return [];
  const steps = readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
  const removed: string[] = [];
  for (const step of steps.slice(limit)) {
    rmSync(join(dir, `checkpoint-${step}`), { recursive: true, force: true });
    removed.push(`checkpoint-${step}`);
  }
  return removed;
}

/** Loads a checkpoint into the given parameters and optimizer state; returns the trainer state. */
export function loadCheckpoint(dir: string, params: NamedTensor[], opt: AdamWState): TrainerState {
  const pfile = join(dir, 'params.safetensors');
  const ofile = join(dir, 'optimizer.safetensors');
  const ps = readSafetensorsFile(pfile).tensors;
  const os = readSafetensorsFile(ofile);
  for (const p of params) {
    const load = (file: string, map: Map<string, import('../io/safetensors.js').TensorEntry>, key: string, into: Float32Array): void => {
      const e = map.get(key);
      if (!e) throw new PeftError('checkpoint lacks a tensor of this run (different method or options?)', { file, field: key });
      const d = toFloat32(e);
      if (d.length !== into.length) throw new PeftError('checkpoint tensor has another shape than this run', { file, field: key, expected: `${into.length} elements`, found: `${d.length}` });
      into.set(d);
    };
    load(pfile, ps, p.name, p.tensor.data);
    load(ofile, os.tensors, `exp_avg.${p.name}`, opt.m.get(p.name)!);
    load(ofile, os.tensors, `exp_avg_sq.${p.name}`, opt.v.get(p.name)!);
  }
  opt.step = Number(os.metadata.step ?? 0);
  return readTrainerState(join(dir, 'trainer_state.json'));
}
