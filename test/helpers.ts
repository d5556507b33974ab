/** Shared test helpers: fixture paths and tensor comparisons. */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readSafetensorsFile, toFloat32 } from '../src/io/safetensors.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const STORIES = join(ROOT, 'models', 'stories260K');
export const FIXTURES = join(ROOT, 'test', 'fixtures');

export function readJson<T = Record<string, unknown>>(path: string): T {
  return JSON.parse(readFileSync(path, 'utf8')) as T;
}

/** All tensors of a safetensors file as float32 arrays. */
export function readTensors(path: string): Map<string, { data: Float32Array; shape: number[] }> {
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [name, e] of readSafetensorsFile(path).tensors) out.set(name, { data: toFloat32(e).slice(), shape: e.shape });
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** max |a−b| / max |b| (relative to the reference tensor's largest entry). */
export function maxRelDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let mb = 0;
  for (let i = 0; i < b.length; i++) mb = Math.max(mb, Math.abs(b[i]));
  return maxAbsDiff(a, b) / (mb || 1);
}
