/**
 * Attention and row-op micro-benchmark on the SmolLM2-135M layer shape: causal GQA attention
 * (B 4, T 256, 9 q heads / 3 kv heads, head_dim 64) forward and backward, and the row ops of one
 * layer (SwiGLU 1024×1536, RMSNorm 1024×576, RoPE, cross-entropy 341×49152 as one LM-head chunk,
 * AdamW over 1 Mi parameters). Prints ms per call (wall and process CPU) and attention GFLOP/s
 * (causal FLOPs: 4·B·Hq·D·T·(T+1)/2 forward, 2.5× that backward).
 *
 * Run: npx tsx bench/attention.ts [--reps 20] (PEFT_KERNELS=avx2|generic to compare levels)
 */
import { native, type AttentionShape } from '../src/native/index.js';
import { loadavg } from 'node:os';

const argv = process.argv.slice(2);
const reps = Number(argv.includes('--reps') ? argv[argv.indexOf('--reps') + 1] : '20');
const B = 4, T = 256, Hq = 9, Hkv = 3, D = 64, H = 576, I = 1536, V = 49152;
let seed = 1;
const rand = (n: number, s = 1): Float32Array => Float32Array.from({ length: n }, () => {
  seed = (seed * 1664525 + 1013904223) >>> 0;
  return ((seed / 2 ** 32) * 2 - 1) * s;
});

function time(name: string, f: () => void, flop = 0): void {
  f();
  const c0 = process.cpuUsage(), t0 = performance.now();
  for (let i = 0; i < reps; i++) f();
  const wall = (performance.now() - t0) / reps, c = process.cpuUsage(c0), cpu = (c.user + c.system) / 1000 / reps;
  console.log(`| ${name} | ${wall.toFixed(3)} | ${cpu.toFixed(3)} | ${flop ? (flop / (cpu / native.numThreads()) / 1e6).toFixed(1) : ''} |`);
}

const shape: AttentionShape = { B, Tq: T, Tk: T, Hq, Hkv, D, qStride: Hq * D, kStride: Hkv * D, vStride: Hkv * D, oStride: Hq * D,
  scale: 1 / Math.sqrt(D), causal: true };
const q = rand(B * T * Hq * D), k = rand(B * T * Hkv * D), v = rand(B * T * Hkv * D), dout = rand(B * T * Hq * D);
const out = new Float32Array(q.length), lse = new Float32Array(B * Hq * T);
const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length);
const fwdFlop = 4 * B * Hq * D * (T * (T + 1)) / 2;
console.log(`kernels: ${native.kernelName()} (level ${native.kernelInfo().level}); threads ${native.numThreads()}; reps ${reps}; load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
console.log('| op | wall ms / call | CPU ms / call | GFLOP per CPU-second |');
console.log('|---|---|---|---|');
time('attention fwd (4×256, 9/3 heads, D 64, causal)', () => native.attentionForward(shape, q, k, v, out, lse), fwdFlop);
time('attention bwd', () => native.attentionBackward(shape, q, k, v, out, lse, dout, dq, dk, dv), 2.5 * fwdFlop);
const g = rand(B * T * I, 3), u = rand(B * T * I), y = new Float32Array(B * T * I), dg = new Float32Array(y.length), du = new Float32Array(y.length);
time('SwiGLU fwd 1024×1536', () => native.swigluForward(g, u, y));
time('SwiGLU bwd', () => native.swigluBackward(g, u, u, dg, du));
const x = rand(B * T * H), w = rand(H), yn = new Float32Array(x.length), rstd = new Float32Array(B * T), dx = new Float32Array(x.length);
time('RMSNorm fwd 1024×576', () => native.rmsnormForward(x, w, B * T, H, 1e-5, yn, rstd));
time('RMSNorm bwd (dx)', () => native.rmsnormBackward(x, x, w, rstd, B * T, H, dx, null));
const pos = Int32Array.from({ length: B * T }, (_, i) => i % T), inv = Float32Array.from({ length: D / 2 }, (_, i) => 1 / 10000 ** ((2 * i) / D));
const cos = new Float32Array(B * T * D / 2), sin = new Float32Array(cos.length);
native.ropeTable(pos, inv, 1, cos, sin);
time('RoPE q 1024×9×64', () => native.ropeApply(q, out, B * T, Hq, D, Hq * D, cos, sin, 1, false));
time('residual add 1024×576', () => native.add(x, x, yn));
time('axpy 1024×576', () => native.axpy(0.5, x, yn));
const R = 341, logits = rand(R * V, 4), labels = Int32Array.from({ length: R }, (_, i) => (i * 7919) % V), dl = new Float32Array(logits.length);
time('cross-entropy 341×49152 with grad', () => native.crossEntropy(logits, labels, R, V, -100, dl, 1 / 1024));
const n = 1 << 20, p = rand(n), pg = rand(n), m1 = new Float32Array(n), m2 = new Float32Array(n);
time('AdamW 1 Mi params', () => native.adamwStep(p, pg, m1, m2, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1));
