/**
 * Training benchmark: LoRA (r = 8, alpha = 16, all linear layers) training tokens/s and peak RSS,
 * next to PyTorch + HF PEFT running the identical configuration, from one invocation; plus QLoRA
 * (NF4 base, double quantization) against float32 LoRA with the base-weight bytes.
 *   (a) stories260K shape, batch 8 × 256 tokens;
 *   (b) a randomly initialised Llama with SmolLM2-135M's shape, batch 4 × 256;
 *   (c) the same shape at 4 × 1024 tokens with and without gradient checkpointing (`smol-1k`,
 *       `smol-1k-gc`; no PyTorch column: its 4 × 1024 float32 run needs more memory than a shared
 *       machine should give a benchmark).
 * Anchors side by side: PyTorch eager float32 and PyTorch with torch.autocast("cpu",
 * dtype=torch.bfloat16); ours in float32 and with `--compute-dtype bf16` (frozen base weights
 * multiplied with VDPBF16PS; `-bf16` cases, only where AVX512_BF16 is available).
 * Each case runs in its own process so peak RSS is its own. Besides wall-clock tokens/s each row
 * gives tokens per CPU-second / threads (steadier on a shared, busy machine); the load average
 * is printed. Not a test: numbers vary with the machine; the ratios are the point.
 *
 * Run: npm run bench:train [-- --cases stories,smol,smol-bf16,smol-qlora,smol-1k,smol-1k-gc --steps 5]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { randomModel, SHAPES } from './random-model.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../src/peft/index.js';
import { quantizeModel, quantizationReport } from '../src/quant/quantize-model.js';
import { batchLoss } from '../src/train/methods.js';
import { train } from '../src/train/trainer.js';
import { weightBytes } from '../src/tensor/index.js';
import { native } from '../src/native/index.js';
import { linearModules, setGradientCheckpointing } from '../src/models/model.js';
import { bf16ComputeAvailable, setComputeDtype } from '../src/models/compute-dtype.js';
import { loadavg } from 'node:os';

/** One case in this process: prints a JSON line. */
function runCase(name: string, B: number, T: number, steps: number, warmup: number, qlora: boolean, gc: boolean): void {
  const model = randomModel(SHAPES[name.replace(/(-qlora|-1k|-gc|-bf16)+$/, '')]);
  setGradientCheckpointing(model, gc);
  if (qlora) quantizeModel(model, { quantType: 'nf4', doubleQuant: true });
  const peft = new PeftModel(model);
  peft.addAdapter('b', new LoraAdapter(model, parseLoraConfig({ r: 8, lora_alpha: 16, lora_dropout: 0, target_modules: 'all-linear' })));
  const params = peft.trainable('b');
  if (name.endsWith('-bf16')) setComputeDtype(model, 'bf16');
  const V = model.config.vocabSize;
  let s = 7;
  const ids = Int32Array.from({ length: B * T }, () => { s = (s * 1664525 + 1013904223) >>> 0; return 3 + (s % (V - 3)); });
  const labels = new Int32Array(B * T).fill(-100);
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) labels[b * T + t] = ids[b * T + t + 1];
  const batch = { batch: { ids, B, T }, labels, numTargets: B * (T - 1), numTokens: B * T };
  const times: number[] = [], cpu: number[] = [];
  let last = performance.now(), lastCpu = process.cpuUsage();
  train({ params, data: { next: () => batch, state: () => null, restore: () => {} }, loss: (lb, gs, ctx) => batchLoss(model, lb, gs, ctx),
    onStep: () => {
      const now = performance.now(), c = process.cpuUsage();
      times.push(now - last);
      cpu.push((c.user - lastCpu.user + c.system - lastCpu.system) / 1000);
      last = now;
      lastCpu = c;
    } }, { maxSteps: warmup + steps, lr: 1e-3, maxGradNorm: 0 });
  const measured = times.slice(warmup);
  const cpuSec = cpu.slice(warmup).reduce((a, b) => a + b, 0) / 1000 / native.numThreads();
  const sec = measured.reduce((a, b) => a + b, 0) / 1000;
  let linearBytes = 0, linearF32 = 0;
  for (const m of linearModules(model)) {
    if (m === model.lmHead) continue;
    linearBytes += weightBytes(m.weight);
    linearF32 += m.inFeatures * m.outFeatures * 4;
  }
  const quant = qlora ? quantizationReport(model) : null;
  console.log(JSON.stringify({
    impl: 'peft-ts', case: name, tokens_per_second: (B * T * measured.length) / sec, cpu_tokens_per_second: (B * T * measured.length) / cpuSec, step_seconds: sec / measured.length,
    peak_rss_bytes: process.resourceUsage().maxRSS * 1024, linear_weight_bytes: linearBytes, linear_f32_bytes: linearF32,
    bits_per_param: quant?.bitsPerParam ?? 32, base_bytes_total: quant?.baseBytesTotal ?? null,
  }));
}

function spawnJson(cmd: string, args: string[]): Record<string, number | string> | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) {
    process.stderr.write(`${cmd} ${args.join(' ')} failed: ${r.stderr.slice(-500)}\n`);
    return null;
  }
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  return line ? JSON.parse(line) : null;
}

const argv = process.argv.slice(2);
const arg = (k: string, d: string): string => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
if (argv[0] === '--run-case') {
  const [, name, B, T, steps, warmup] = argv;
  runCase(name, Number(B), Number(T), Number(steps), Number(warmup), name.includes('-qlora'), name.endsWith('-gc'));
} else {
  const steps = arg('--steps', '5'), warmup = arg('--warmup', '2');
  const cases = arg('--cases', bf16ComputeAvailable() ? 'stories,stories-bf16,smol,smol-bf16,smol-qlora' : 'stories,smol,smol-qlora').split(',');
  const dims: Record<string, [number, number]> = { stories: [8, 256], smol: [4, 256], 'smol-qlora': [4, 256], 'smol-1k': [4, 1024], 'smol-1k-gc': [4, 1024] };
  const py = ['.venv-ref/bin/python'].find((p) => existsSync(p));
  const self = fileURLToPath(import.meta.url);
  const rows: Array<Record<string, number | string> | null> = [];
  const mib = (b: unknown): string => (typeof b === 'number' ? `${(b / 2 ** 20).toFixed(0)} MiB` : 'n/a');
  const tok = (r: Record<string, number | string> | null): string => (r ? `${Number(r.tokens_per_second).toFixed(0)} / ${Number(r.cpu_tokens_per_second).toFixed(0)}` : 'n/a');
  const ratio = (a: Record<string, number | string> | null, b: Record<string, number | string> | null): string =>
    (a && b ? (Number(a.cpu_tokens_per_second) / Number(b.cpu_tokens_per_second)).toFixed(2) : 'n/a');
  const info = native.kernelInfo();
  console.log(`kernels: ${info.gemm} (level ${info.level}, bf16 GEMM ${info.bf16Kernel}); CPU flags: ${Object.entries(info.cpu).filter(([, v]) => v).map(([k]) => k).join(' ')}`);
  console.log(`threads: 2 (both); steps measured: ${steps} after ${warmup} warm-up; load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  console.log('tok/s given as wall / per CPU-second (tokens ÷ (CPU s / threads)); ratios use the CPU-second figures\n');
  console.log('| case | batch | peft-ts tok/s | PyTorch eager f32 tok/s | PyTorch autocast bf16 tok/s | vs eager f32 | vs autocast bf16 | peft-ts peak RSS | PyTorch f32 / bf16 peak RSS |');
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  const refs = new Map<string, [Record<string, number | string> | null, Record<string, number | string> | null]>();
  for (const c of cases) {
    const base = c.replace(/-bf16$/, '');
    const [B, T] = dims[base];
    const ours = spawnJson(process.execPath, [...process.execArgv, self, '--run-case', c, String(B), String(T), steps, warmup]);
    if (!refs.has(base)) {
      const ref = (autocast: string) => (base.endsWith('-qlora') || base.includes('-1k') || !py ? null
        : spawnJson(py, ['bench/ref_train.py', '--case', base, '--batch', String(B), '--seq', String(T), '--steps', steps, '--warmup', warmup, '--autocast', autocast]));
      refs.set(base, [ref('none'), ref('bf16')]);
    }
    const [f32, bf] = refs.get(base)!;
    rows.push(ours);
    console.log(`| ${c} | ${B}×${T} | ${tok(ours)} | ${tok(f32)} | ${tok(bf)} | ${ratio(ours, f32)} | ${ratio(ours, bf)} | ${mib(ours?.peak_rss_bytes)} | ${mib(f32?.peak_rss_bytes)} / ${mib(bf?.peak_rss_bytes)} |`);
  }
  console.log(`\nload average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  const f32 = rows.find((r) => r?.case === 'smol'), q = rows.find((r) => r?.case === 'smol-qlora');
  if (f32 && q) {
    console.log('\nQLoRA (NF4, double quantization) vs float32 LoRA on the SmolLM2-135M shape:');
    console.log(`  tokens per CPU-second: ${Number(q.cpu_tokens_per_second).toFixed(0)} vs ${Number(f32.cpu_tokens_per_second).toFixed(0)} (${(Number(q.cpu_tokens_per_second) / Number(f32.cpu_tokens_per_second)).toFixed(2)}x)`);
    console.log(`  quantized linear layers: ${mib(q.linear_weight_bytes)} vs ${mib(f32.linear_weight_bytes)} float32 (${(100 * Number(q.linear_weight_bytes) / Number(f32.linear_f32_bytes)).toFixed(2)}%), ${Number(q.bits_per_param).toFixed(4)} bits/param`);
    console.log(`  whole base (embeddings stay float32): ${mib(q.base_bytes_total)}; peak RSS ${mib(q.peak_rss_bytes)} vs ${mib(f32.peak_rss_bytes)}`);
  }
  const k1 = rows.find((r) => r?.case === 'smol-1k'), gc = rows.find((r) => r?.case === 'smol-1k-gc');
  if (k1 && gc) {
    console.log('\nGradient checkpointing on the SmolLM2-135M shape at 4 × 1024 tokens:');
    console.log(`  peak RSS: ${mib(gc.peak_rss_bytes)} with vs ${mib(k1.peak_rss_bytes)} without; tokens/s ${Number(gc.tokens_per_second).toFixed(0)} vs ${Number(k1.tokens_per_second).toFixed(0)} (${(Number(gc.tokens_per_second) / Number(k1.tokens_per_second)).toFixed(2)}x)`);
  }
}
