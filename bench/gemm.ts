/**
 * SGEMM benchmark: our native GEMM at every kernel level this CPU has (avx512, avx2, generic —
 * each in a child process with PEFT_KERNELS) next to numpy's OpenBLAS, from one invocation, on 1
 * and 2 threads, for 1024³ and the SmolLM-135M-like shapes 1024×576×1536 and 1024×576×49152
 * (M×K×N), plus the overhead of tiny native calls. Where the CPU has them, the bf16 compute GEMM
 * (`gemmBf16Dot`: float32 A rounded to bf16 times a bf16 B, float32 sums — `--compute-dtype bf16`)
 * gets columns too: VDPBF16PS (PEFT_KERNELS=avx512) and AMX tiles (PEFT_KERNELS=amx), same shapes.
 *
 * The OpenBLAS column runs with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
 * environment (a machine setting OPENBLAS_CORETYPE=Haswell would otherwise force its AVX2
 * kernel), and prints the kernel threadpoolctl reports. Each figure is the best of several runs,
 * both by wall clock and by process CPU time (flops / (CPU s / threads)); on a shared machine the
 * CPU-time figure is the steadier one, and the load average is printed with the table.
 *
 * Run: npm run bench:gemm   (the numpy column needs .venv-ref; see scripts/setup-ref-venv.sh)
 *      npm run bench:gemm -- --levels avx512   (only some levels; --threads 1; --bf16 0 skips bf16)
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { native } from '../src/native/index.js';
import { toBf16Bits } from '../src/models/compute-dtype.js';

const shapes: Array<[number, number, number]> = [
  [1024, 1024, 1024],
  [1024, 1536, 576],
  [1024, 49152, 576],
]; // [M, N, K]: C[M,N] = A[M,K]·B[K,N]

type Rate = { wall: number; cpu: number };

function best(M: number, N: number, K: number, threads: number, bf16: boolean, runs = 7, minTime = 0.25): Rate {
  const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i));
  const B = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i));
  const Bh = bf16 ? toBf16Bits(B) : null;
  const C = new Float32Array(M * N);
  const call = Bh ? () => native.gemmBf16Dot(false, false, M, N, K, 1, A, K, Bh, N, 0, C, N)
    : () => native.gemm(false, false, M, N, K, 1, A, K, B, N, 0, C, N);
  call();
  const r: Rate = { wall: 0, cpu: 0 };
  for (let i = 0; i < runs; i++) {
    let n = 0;
    const t0 = performance.now(), c0 = process.cpuUsage();
    let dt = 0;
    do {
      call();
      n++;
      dt = (performance.now() - t0) / 1000;
    } while (dt < minTime);
    const u = process.cpuUsage(c0);
    const flops = 2 * M * N * K * n;
    r.wall = Math.max(r.wall, flops / dt / 1e9);
    r.cpu = Math.max(r.cpu, flops / ((u.user + u.system) / 1e6 / threads) / 1e9);
  }
  return r;
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

if (process.argv.includes('--child')) {
  const threads = Number(arg('--threads'));
  native.setNumThreads(threads);
  const bf16 = process.argv.includes('--bf16-child');
  const out = shapes.map(([M, N, K]) => best(M, N, K, threads, bf16));
  console.log(JSON.stringify({ kernel: bf16 ? native.kernelInfo().bf16Kernel : native.kernelName(), rates: out }));
  process.exit(0);
}

function ours(level: string, threads: number, bf16 = false): { kernel: string; rates: Rate[] } | null {
  const me = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, ['--import', 'tsx', me, '--child', '--threads', String(threads), ...(bf16 ? ['--bf16-child'] : [])], {
    encoding: 'utf8',
    env: { ...process.env, PEFT_KERNELS: level },
  });
  if (r.status !== 0) {
    console.error(r.stderr);
    return null;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { kernel: string; rates: Rate[] };
}

function openblas(threads: number): { blas: string; rates: Rate[] } | null {
  const py = ['.venv-ref/bin/python', '.venv-ref/bin/python3'].find((p) => existsSync(p));
  if (!py) return null;
  const env: NodeJS.ProcessEnv = { ...process.env, OPENBLAS_NUM_THREADS: String(threads), OMP_NUM_THREADS: String(threads) };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync(py, ['bench/ref_gemm.py', ...shapes.map(([M, N, K]) => `${M},${N},${K}`)], { env, encoding: 'utf8' });
  if (r.status !== 0) return null;
  const lines = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
  const info = (lines[0].blas as Array<Record<string, unknown>>).map((b) => `${b.internal_api} ${b.version} kernel ${b.architecture}`).join(', ');
  return { blas: info, rates: lines.slice(1).map((l) => ({ wall: l.gflops as number, cpu: l.cpu_gflops as number })) };
}

const info = native.kernelInfo();
const flags = Object.entries(info.cpu).filter(([, v]) => v).map(([k]) => k).join(' ');
const available = ['avx512', 'avx2', 'generic'].filter((l) => l !== 'avx512' || (info.cpu.avx512f && info.cpu.avx512bw && info.cpu.avx512vl && info.cpu.avx512dq))
  .filter((l) => l !== 'avx2' || (info.cpu.avx2 && info.cpu.fma));
const levels = (arg('--levels') ?? available.filter((l) => l !== 'generic').join(',')).split(',').filter((l) => available.includes(l));
const threadList = (arg('--threads') ?? '1,2').split(',').map(Number);
// bf16 compute GEMM kernels: VDPBF16PS at the avx512 level, AMX tiles at the amx level
const bf16Levels = arg('--bf16') === '0' ? [] : [
  ...(available.includes('avx512') && info.cpu.avx512_bf16 ? ['avx512'] : []),
  ...(available.includes('avx512') && info.cpu.avx512_bf16 && info.cpu.amx_tile && info.cpu.amx_bf16 ? ['amx'] : []),
];
const bf16Name: Record<string, string> = { avx512: 'bf16 VDPBF16PS', amx: 'bf16 AMX' };
console.log(`CPU flags: ${flags}; load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
const fmt = (r: Rate | undefined) => (r ? `${r.wall.toFixed(0)} / ${r.cpu.toFixed(0)}` : 'n/a');
const header = ['shape M×K×N', 'threads', ...levels.map((l) => `${l} wall / cpu`), 'OpenBLAS wall / cpu', ...levels.map((l) => `${l}/OpenBLAS (cpu)`),
  ...bf16Levels.map((l) => `${bf16Name[l]} wall / cpu`)];
const rows: string[] = [];
let blasName = 'n/a';
const kernels: string[] = [];
for (const threads of threadList) {
  const ref = openblas(threads);
  if (ref) blasName = ref.blas;
  const mine = levels.map((l) => ours(l, threads));
  const mineBf16 = bf16Levels.map((l) => ours(l, threads, true));
  for (const m of [...mine, ...mineBf16]) if (m && !kernels.includes(m.kernel)) kernels.push(m.kernel);
  shapes.forEach(([M, N, K], s) => {
    const theirs = ref?.rates[s];
    const cells = [`${M}×${K}×${N}`, String(threads), ...mine.map((m) => fmt(m?.rates[s])), fmt(theirs),
      ...mine.map((m) => (m && theirs ? (m.rates[s].cpu / theirs.cpu).toFixed(2) : 'n/a')), ...mineBf16.map((m) => fmt(m?.rates[s]))];
    rows.push(`| ${cells.join(' | ')} |`);
  });
}
console.log(`ours: ${kernels.join(', ')}; reference: numpy ${blasName} (OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset)`);
console.log(`| ${header.join(' | ')} |`);
console.log(`|${header.map((_, i) => (i < 2 ? '---' : '---:')).join('|')}|`);
for (const r of rows) console.log(r);
console.log(`load average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
const a8 = new Float32Array(64), c8 = new Float32Array(64);
function microseconds(fn: () => void, iters = 200000): number {
  for (let i = 0; i < 1000; i++) fn();
  let b = Infinity;
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) fn();
    b = Math.min(b, Number(process.hrtime.bigint() - t0) / 1000 / iters);
  }
  return b;
}
console.log(`tiny native call (noop): ${(microseconds(() => native.noop()) * 1000).toFixed(0)} ns`);
console.log(`tiny native call (8×8×8 gemm): ${microseconds(() => native.gemm(false, false, 8, 8, 8, 1, a8, 8, a8, 8, 0, c8, 8), 100000).toFixed(2)} µs`);
