/**
 * SGEMM benchmark: our native GEMM next to numpy's (OpenBLAS) from one invocation, on 1 and 2
 * threads, for 1024³ and the SmolLM-135M-like shapes 1024×576×1536 and 1024×576×49152 (M×K×N),
 * plus the overhead of tiny native calls.
 *
 * Run: npm run bench:gemm   (the numpy column needs .venv-ref; see scripts/setup-ref-venv.sh)
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { native } from '../src/native/index.js';

const shapes: Array<[number, number, number]> = [
  [1024, 1024, 1024],
  [1024, 1536, 576],
  [1024, 49152, 576],
]; // [M, N, K]: C[M,N] = A[M,K]·B[K,N]

function bestGflops(M: number, N: number, K: number, runs = 5, minTime = 0.3): number {
  const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i));
  const B = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i));
  const C = new Float32Array(M * N);
  native.gemm(false, false, M, N, K, 1, A, K, B, N, 0, C, N);
  let best = 0;
  for (let r = 0; r < runs; r++) {
    let n = 0;
    const t0 = performance.now();
    let dt = 0;
    do {
      native.gemm(false, false, M, N, K, 1, A, K, B, N, 0, C, N);
      n++;
      dt = (performance.now() - t0) / 1000;
    } while (dt < minTime);
    best = Math.max(best, (2 * M * N * K * n) / dt / 1e9);
  }
  return best;
}

function numpyGflops(threads: number): Map<string, number> | null {
  const py = ['.venv-ref/bin/python', '.venv-ref/bin/python3'].find((p) => existsSync(p));
  if (!py) return null;
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const args = ['bench/ref_gemm.py', ...shapes.map(([M, N, K]) => `${M},${N},${K}`)];
  const r = spawnSync(py, args, { env, encoding: 'utf8' });
  if (r.status !== 0) return null;
  const out = new Map<string, number>();
  for (const line of r.stdout.trim().split('\n')) {
    const o = JSON.parse(line) as { shape: number[]; gflops: number };
    out.set(o.shape.join(','), o.gflops);
  }
  return out;
}

function microseconds(fn: () => void, iters = 200000): number {
  for (let i = 0; i < 1000; i++) fn();
  let best = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) fn();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1000 / iters);
  }
  return best;
}

const maxThreads = native.numThreads();
console.log(`kernel: ${native.kernelName()}, default threads: ${maxThreads}`);
console.log('| shape M×K×N | threads | peft-ts GFLOP/s | numpy GFLOP/s | ratio |');
console.log('|---|---:|---:|---:|---:|');
for (const threads of [1, 2]) {
  native.setNumThreads(threads);
  const ref = numpyGflops(threads);
  for (const [M, N, K] of shapes) {
    const ours = bestGflops(M, N, K);
    const theirs = ref?.get(`${M},${N},${K}`);
    const ratio = theirs ? (ours / theirs).toFixed(2) : 'n/a';
    console.log(`| ${M}×${K}×${N} | ${threads} | ${ours.toFixed(1)} | ${theirs ? theirs.toFixed(1) : 'n/a'} | ${ratio} |`);
  }
}
native.setNumThreads(maxThreads);
const a8 = new Float32Array(64), c8 = new Float32Array(64);
console.log(`tiny native call (noop): ${(microseconds(() => native.noop()) * 1000).toFixed(0)} ns`);
console.log(`tiny native call (8×8×8 gemm): ${microseconds(() => native.gemm(false, false, 8, 8, 8, 1, a8, 8, a8, 8, 0, c8, 8), 100000).toFixed(2)} µs`);
