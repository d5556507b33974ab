/**
 * Where one LoRA training step's time goes, op by op: the `smol` case of bench/train.ts (random
 * SmolLM2-135M-shape Llama from bench/random-model.ts, LoRA r 8 / alpha 16 on all linear layers,
 * batch 4 × 256) with every native call timed on the calling thread (native work is synchronous,
 * so a call's wall time is the step time it costs; the thread pool works inside it).
 *
 * GEMMs are split by kind from their shapes: LoRA's skinny products (one of M, N, K at most four
 * ranks: fused A matrices stack 2–3), the LM head (N or K equal to the vocabulary), the frozen base weights; forward and
 * backward by the step's phase (forward until the loss, backward after it). "JS and allocation" is
 * the step's wall time not spent in native calls (autograd, buffer pool, tensor views); run with
 * `node --cpu-prof` to split it further.
 *
 * Run: npx tsx bench/profile-step.ts [--steps 3] [--warmup 1] [--compute-dtype bf16] [--no-wrap] [--shapes]
 */
import { randomModel, SHAPES } from './random-model.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../src/peft/index.js';
import { batchLoss } from '../src/train/methods.js';
import { train } from '../src/train/trainer.js';
import { native } from '../src/native/index.js';
import { setComputeDtype } from '../src/models/compute-dtype.js';
import { loadavg } from 'node:os';

const argv = process.argv.slice(2);
const arg = (k: string, d: string): string => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
const steps = Number(arg('--steps', '3')), warmup = Number(arg('--warmup', '1'));
const dtype = arg('--compute-dtype', 'float32');
const wrap = !argv.includes('--no-wrap');
const byShape = argv.includes('--shapes');  // GEMM rows keyed by transA/transB and M×N×K too
const B = 4, T = 256, R = 8;

const model = randomModel(SHAPES.smol);
const peft = new PeftModel(model);
peft.addAdapter('b', new LoraAdapter(model, parseLoraConfig({ r: R, lora_alpha: 16, lora_dropout: 0, target_modules: 'all-linear' })));
const params = peft.trainable('b');
if (dtype === 'bf16') setComputeDtype(model, 'bf16');
const V = model.config.vocabSize;

// ---- timing wrappers ------------------------------------------------------------------------
let phase: 'fwd' | 'bwd' = 'fwd';
let measuring = false;
const ms = new Map<string, number>(), cpus = new Map<string, number>(), calls = new Map<string, number>(), flops = new Map<string, number>();
const GEMMS = new Set(['gemm', 'gemmBf16Dot', 'gemmQ4']);

function category(name: string, a: unknown[]): string {
  if (GEMMS.has(name)) {
    const M = a[2] as number, N = a[3] as number, K = a[4] as number;
    const sfx = name === 'gemm' ? '' : ` (${name})`;
    // the fused LM head + loss computes the hidden-state gradient during the forward pass
    if (M === V || N === V || K === V) return `GEMM lm_head ${N === V ? 'fwd' : 'bwd'}${sfx}`;
    const shape = byShape ? ` ${a[0] ? 'T' : 'N'}${a[1] ? 'T' : 'N'} ${M}×${N}×${K}` : '';
    // LoRA products have the rank (or a few ranks side by side: fused q/k/v or gate/up A) as one dimension
    return `GEMM ${Math.min(M, N, K) <= 4 * R ? 'LoRA A/B' : 'frozen base'} ${phase}${sfx}${shape}`;
  }
  if (name.startsWith('attention')) return `attention ${name === 'attentionForward' ? 'fwd' : 'bwd'}`;
  if (name.startsWith('rmsnorm')) return `RMSNorm ${name.endsWith('Forward') ? 'fwd' : 'bwd'}`;
  if (name.startsWith('rope')) return `RoPE ${phase}`;
  if (name.startsWith('swiglu') || name.startsWith('act')) return `SwiGLU/act ${name.endsWith('Forward') ? 'fwd' : 'bwd'}`;
  if (name === 'crossEntropy') return 'cross-entropy';
  if (name === 'adamwStep') return 'AdamW';
  if (name === 'sumSquares') return 'grad norm';
  if (name.startsWith('embedding')) return 'embedding';
  return `elementwise (${name}) ${phase}`;
}

if (wrap) {
  const n = native as unknown as Record<string, (...a: unknown[]) => unknown>;
  for (const name of Object.keys(n)) {
    const f = n[name];
    if (typeof f !== 'function' || ['numThreads', 'kernelInfo', 'kernelName', 'noop', 'setNumThreads'].includes(name)) continue;
    n[name] = (...a: unknown[]): unknown => {
      if (name === 'embeddingForward') phase = 'fwd';
      const c0 = measuring ? process.cpuUsage() : null;
      const t0 = performance.now();
      const r = f(...a);
      const dt = performance.now() - t0;
      if (c0) {
        const c1 = process.cpuUsage(c0);
        const c = category(name, a);
        ms.set(c, (ms.get(c) ?? 0) + dt);
        cpus.set(c, (cpus.get(c) ?? 0) + (c1.user + c1.system) / 1000);
        calls.set(c, (calls.get(c) ?? 0) + 1);
        if (GEMMS.has(name)) flops.set(c, (flops.get(c) ?? 0) + 2 * (a[2] as number) * (a[3] as number) * (a[4] as number));
      }
      if (name === 'crossEntropy' && a[5]) phase = 'bwd';
      return r;
    };
  }
}

let s = 7;
const ids = Int32Array.from({ length: B * T }, () => { s = (s * 1664525 + 1013904223) >>> 0; return 3 + (s % (V - 3)); });
const labels = new Int32Array(B * T).fill(-100);
for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) labels[b * T + t] = ids[b * T + t + 1];
const batch = { batch: { ids, B, T }, labels, numTargets: B * (T - 1), numTokens: B * T };
let done = 0, wallMs = 0, cpuMs = 0;
let last = performance.now(), lastCpu = process.cpuUsage();
train({ params, data: { next: () => batch, state: () => null, restore: () => {} }, loss: (lb, gs, ctx) => batchLoss(model, lb, gs, ctx),
  onStep: () => {
    const now = performance.now(), c = process.cpuUsage();
    if (done >= warmup) {
      wallMs += now - last;
      cpuMs += (c.user - lastCpu.user + c.system - lastCpu.system) / 1000;
    }
    done++;
    if (done === warmup) measuring = true;
    last = performance.now();
    lastCpu = process.cpuUsage();
  } }, { maxSteps: warmup + steps, lr: 1e-3, maxGradNorm: 0 });

const per = (x: number): string => (x / steps).toFixed(1);
console.log(`kernels: ${native.kernelName()} (level ${native.kernelInfo().level}); compute dtype ${dtype}; threads ${native.numThreads()}; load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
console.log(`step: ${per(wallMs)} ms wall, ${per(cpuMs)} ms CPU (${((B * T * steps) / (wallMs / 1000)).toFixed(0)} tok/s wall, ${((B * T * steps) / (cpuMs / 1000 / native.numThreads())).toFixed(0)} per CPU-second)`);
if (wrap) {
  const rows = [...ms.entries()].sort((a, b) => b[1] - a[1]);
  const nativeMs = rows.reduce((t, [, v]) => t + v, 0), nativeCpu = [...cpus.values()].reduce((t, v) => t + v, 0);
  const pct = (v: number, of: number): string => ((100 * v) / of).toFixed(1);
  console.log('| part | wall ms / step | % of wall | CPU ms / step | % of CPU | calls / step | GFLOP/s (wall) |');
  console.log('|---|---|---|---|---|---|---|');
  for (const [c, v] of rows) {
    const f = flops.get(c), u = cpus.get(c)!;
    console.log(`| ${c} | ${per(v)} | ${pct(v, wallMs)} | ${per(u)} | ${pct(u, cpuMs)} | ${(calls.get(c)! / steps).toFixed(0)} | ${f ? (f / v / 1e6).toFixed(0) : ''} |`);
  }
  console.log(`| JS and allocation (rest) | ${per(wallMs - nativeMs)} | ${pct(wallMs - nativeMs, wallMs)} | ${per(cpuMs - nativeCpu)} | ${pct(cpuMs - nativeCpu, cpuMs)} | | |`);
}
