/**
 * Training checkpoints: trainable parameters, AdamW moments, the schedule position and the data
 * position, written to a temporary directory and renamed into place (atomic). Resuming from one
 * continues to the same final weights as an uninterrupted run.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { writeJsonAtomic } from '../io/atomic.js';
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

/** The newest `checkpoint-N` directory inside `dir`, or `dir` itself when it is a checkpoint. */
export function resolveCheckpoint(dir: string): string {
  if (existsSync(join(dir, 'trainer_state.json'))) return dir;
  if (!existsSync(dir)) throw new PeftError('resume directory does not exist', { file: dir });
  const steps = readdirSync(dir)
    .map((n) => /^checkpoint-(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null && existsSync(join(dir, m[0], 'trainer_state.json')))
    .map((m) => Number(m[1]))
    .sort((a, b) => b - a);
  if (steps.length === 0) throw new PeftError('no checkpoint found to resume from', { file: dir, expected: 'a checkpoint-N directory with trainer_state.json' });
  return join(dir, `checkpoint-${steps[0]}`);
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
  const state = JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')) as TrainerState;
  return state;
}
