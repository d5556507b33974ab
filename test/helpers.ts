/** Shared test helpers: fixture paths, tensor comparisons and the CLI runner. */
import { spawnSync } from 'node:child_process';
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

/** Runs the `peft` CLI (src/cli/bin.ts through tsx) in a child process from the repository root; 2-minute limit. */
export function runPeft(...args: string[]): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli', 'bin.ts'), ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}
