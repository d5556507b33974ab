/**
 * Every kernel level this CPU can run (generic always; avx2, avx512 and amx when the CPU-feature
 * probe reports them), each forced with PEFT_KERNELS in a child process: GEMM with float32, bfloat16
 * and 4-bit (NF4, plain and double-quantized absmax) weights in every transpose combination,
 * alpha/beta and ragged edges, against a float64 reference; the bf16 compute GEMM (gemmBf16Dot: AMX
 * tiles at the amx level, VDPBF16PS at avx512) against the float64 product of the bf16-rounded
 * operands, with NaN propagation; the row kernels of that level (SwiGLU, RMSNorm, RoPE,
 * cross-entropy's softmax, AdamW) and attention forward/backward (GQA, causal, head_dim 64 and an
 * odd one, padding, packed segments, a sliding window) against float64 references; and the
 * stories260K logits against transformers'. Levels the CPU lacks are skipped (and the level caps to
 * what the CPU has).
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';
import { native } from '../../src/native/index.js';

const script = `
import { native } from ${JSON.stringify(join(ROOT, 'src/native/index.ts'))};
import { loadModel } from ${JSON.stringify(join(ROOT, 'src/models/load.ts'))};
import { forwardHidden, lmLogits } from ${JSON.stringify(join(ROOT, 'src/models/model.ts'))};
import { noGrad, withArena } from ${JSON.stringify(join(ROOT, 'src/tensor/index.ts'))};
import { readTensors, readJson, maxAbsDiff } from ${JSON.stringify(join(ROOT, 'test/helpers.ts'))};
const NF4 = [-1, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
  -0.09105003625154495, 0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
  0.44070982933044434, 0.5626170039176941, 0.7229568362236328, 1];
const bf16 = (x) => { const f = new Float32Array([x]); return new Uint16Array(f.buffer)[1]; };
const fromBf16 = (h) => new Float32Array(new Uint32Array([h << 16]).buffer)[0];
let worst = 0;
// op(B) as float64 for each kind: W is stored K x N (!tb) or N x K (tb)
function check(M, N, K, ta, tb, kind, alpha, beta) {
  const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 1.3));
  const stored = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i * 0.7));
  const C = Float32Array.from({ length: M * N }, (_, i) => Math.sin(i * 0.1)), C0 = C.slice();
  let Bval, B, q4;
  if (kind === 'f32') { B = stored; Bval = (i) => stored[i]; }
  else if (kind === 'bf16') { B = Uint16Array.from(stored, bf16); Bval = (i) => fromBf16(B[i]); }
  else {
    const rows = tb ? N : K, cols = tb ? K : N, bs = 64, nb = Math.ceil(rows * cols / bs);
    const packed = Uint8Array.from({ length: Math.ceil(rows * cols / 2) }, (_, i) => (i * 37 + 11) & 255);
    const absmax = Float32Array.from({ length: nb }, (_, b) => 0.5 + (b % 7) * 0.25);
    const code = Float32Array.from(NF4);
    const nibble = (i) => (i & 1) ? (packed[i >> 1] & 15) : (packed[i >> 1] >> 4);
    if (kind === 'q4') {
      q4 = { packed, code, rows, cols, blocksize: bs, absmax };
      Bval = (i) => code[nibble(i)] * absmax[Math.floor(i / bs)];
    } else {  // double-quantized absmax: nested_code[absmaxCodes[b]] * nestedAbsmax[b / 256] + offset
      const absmaxCodes = Uint8Array.from({ length: nb }, (_, b) => (b * 13) & 255);
      const nestedCode = Float32Array.from({ length: 256 }, (_, i) => (i - 128) / 128);
      const nestedAbsmax = Float32Array.from({ length: Math.ceil(nb / 256) }, (_, i) => 0.9 + i);
      q4 = { packed, code, rows, cols, blocksize: bs, absmax: null, absmaxCodes, nestedAbsmax, nestedCode, nestedBlocksize: 256, offset: 0.125 };
      Bval = (i) => code[nibble(i)] * Math.fround(Math.fround(nestedCode[absmaxCodes[Math.floor(i / bs)]] * nestedAbsmax[Math.floor(i / bs / 256)]) + 0.125);
    }
  }
  const Bd = Float64Array.from({ length: K * N }, (_, i) => Bval(i));
  if (kind === 'f32' || kind === 'bf16') native.gemm(ta, tb, M, N, K, alpha, A, ta ? M : K, B, tb ? K : N, beta, C, N);
  else native.gemmQ4(ta, tb, M, N, K, alpha, A, ta ? M : K, q4, beta, C, N);
  for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
    let s = 0, mag = 0;
    for (let k = 0; k < K; k++) {
      const p = (ta ? A[k * M + i] : A[i * K + k]) * Bd[tb ? j * K + k : k * N + j];
      s += p; mag += Math.abs(p);
    }
    const want = alpha * s + beta * C0[i * N + j];
    worst = Math.max(worst, Math.abs(C[i * N + j] - want) / (Math.abs(alpha) * mag + Math.abs(beta) + 1));
  }
}
// [20, 45, 1300]: K over every level's K block (384 for 6x16, 256 / 640 for the 14x32 variants),
// so later K blocks accumulate into C (beta applied once); N <= 16 with M > 8: the AVX-512 skinny-N
// paths (row dot products without packing, or the transposed product when op(A) is transposed)
for (const [M, N, K] of [[7, 33, 300], [50, 17, 9], [29, 70, 130], [15, 40, 1], [20, 45, 1300], [37, 8, 300], [70, 13, 45], [66, 16, 40]]) for (const ta of [false, true]) for (const tb of [false, true])
  for (const kind of ['f32', 'bf16', 'q4', 'q4dq']) {
    if (kind.startsWith('q4') && (ta || (M * K) % 2)) continue;
    check(M, N, K, ta, tb, kind, 1, 0);
    check(M, N, K, ta, tb, kind, 0.5, 0.25);
  }
// gemmBf16Dot against the float64 product of bf16-rounded operands: ragged M, N, K (K = 1100 spans two
// K blocks of the AMX path), both weight layouts, alpha/beta incl. the alpha 1 / beta 0 or 1 case that
// accumulates in C directly; then a NaN in A reaches exactly its row of C.
let bf16Dot = null;
if (native.kernelInfo().bf16Dot) {
  // float32 -> bf16 -> float64, round to nearest even (finite inputs)
  const round = (x) => { const u = new Uint32Array(new Float32Array([x]).buffer)[0]; return fromBf16(((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff); };
  let w = 0;
  for (const [M, N, K] of [[7, 33, 300], [50, 17, 9], [29, 70, 131], [15, 40, 1], [33, 40, 1100], [64, 64, 64], [33, 80, 70]]) for (const tb of [false, true])
    for (const [alpha, beta] of [[1, 0], [1, 1], [0.5, 0.25]]) {
      const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 1.3));
      const B = Uint16Array.from({ length: K * N }, (_, i) => bf16(Math.cos(i * 0.7)));
      const Ab = Float64Array.from(A, round), Bd = Float64Array.from(B, fromBf16);
      const C = Float32Array.from({ length: M * N }, (_, i) => Math.sin(i * 0.1)), C0 = C.slice();
      native.gemmBf16Dot(false, tb, M, N, K, alpha, A, K, B, tb ? K : N, beta, C, N);
      for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
        let s = 0, mag = 0;
        for (let k = 0; k < K; k++) { const p = Ab[i * K + k] * Bd[tb ? j * K + k : k * N + j]; s += p; mag += Math.abs(p); }
        w = Math.max(w, Math.abs(C[i * N + j] - (alpha * s + beta * C0[i * N + j])) / (Math.abs(alpha) * mag + Math.abs(beta) + 1));
      }
    }
  const A = new Float32Array(40 * 40).fill(1);
  A[1 * 40 + 5] = NaN;
  const C = new Float32Array(40 * 64);
  native.gemmBf16Dot(false, true, 40, 64, 40, 1, A, 40, new Uint16Array(64 * 40).fill(bf16(0.5)), 40, 0, C, 64);
  const nanRowOnly = C.every((v, i) => (Math.floor(i / 64) === 1 ? Number.isNaN(v) : v === 20));
  bf16Dot = { worst: w, nanRowOnly };
}
// ---- row kernels and attention against float64; err = |got − want| / (|want| + 1) per element, max
const rowErr = {};
const note = (name, got, want, scaleBy = 1) => {
  let e = 0;
  for (let i = 0; i < want.length; i++) {
    const d = Math.abs(got[i] - want[i]) / (Math.abs(want[i]) + scaleBy);
    e = Number.isNaN(d) ? Infinity : Math.max(e, d);
  }
  rowErr[name] = Math.max(rowErr[name] ?? 0, e);
};
let seed = 5;
const rnd = (n, s = 1) => Float32Array.from({ length: n }, () => { seed = (seed * 1664525 + 1013904223) >>> 0; return ((seed / 2 ** 32) * 2 - 1) * s; });
const sig = (x) => 1 / (1 + Math.exp(-x));
for (const n of [1, 15, 16, 17, 4099]) {  // vector body and scalar tails of every lane width
  const g = rnd(n, 8), u = rnd(n), dy = rnd(n), y = new Float32Array(n), dg = rnd(n), du = rnd(n), dg0 = dg.slice(), du0 = du.slice();
  native.swigluForward(g, u, y);
  note('swiglu fwd', y, Array.from(g, (x, i) => x * sig(x) * u[i]));
  native.swigluBackward(g, u, dy, dg, du);
  note('swiglu bwd dg', dg, Array.from(g, (x, i) => dg0[i] + dy[i] * u[i] * sig(x) * (1 + x * (1 - sig(x)))));
  note('swiglu bwd du', du, Array.from(g, (x, i) => du0[i] + dy[i] * x * sig(x)));
}
for (const [rows, D] of [[3, 576], [5, 37], [2, 8]]) {
  const x = rnd(rows * D, 2), w = rnd(D), dy = rnd(rows * D), y = new Float32Array(rows * D), rstd = new Float32Array(rows), dx = rnd(rows * D), dx0 = dx.slice();
  native.rmsnormForward(x, w, rows, D, 1e-5, y, rstd);
  const wantY = [], wantR = [], wantDx = [];
  for (let r = 0; r < rows; r++) {
    let ss = 0, dot = 0;
    for (let d = 0; d < D; d++) { ss += x[r * D + d] ** 2; dot += dy[r * D + d] * w[d] * x[r * D + d]; }
    const rs = 1 / Math.sqrt(ss / D + 1e-5);
    wantR.push(rs);
    for (let d = 0; d < D; d++) {
      wantY.push(w[d] * x[r * D + d] * rs);
      wantDx.push(dx0[r * D + d] + rs * (dy[r * D + d] * w[d] - x[r * D + d] * rs * rs * dot / D));
    }
  }
  note('rmsnorm fwd', y, wantY);
  note('rmsnorm rstd', rstd, wantR);
  native.rmsnormBackward(dy, x, w, rstd, rows, D, dx, null);
  note('rmsnorm bwd dx', dx, wantDx);
}
for (const [rows, H, D] of [[4, 3, 64], [3, 2, 38], [2, 1, 2]]) {
  const half = D / 2, x = rnd(rows * H * D), cos = rnd(rows * half), sin = rnd(rows * half);
  for (const sign of [1, -1]) for (const acc of [false, true]) {
    const y = rnd(rows * H * D), y0 = y.slice(), want = [];
    native.ropeApply(x, y, rows, H, D, H * D, cos, sin, sign, acc);
    for (let r = 0; r < rows; r++) for (let h = 0; h < H; h++) for (let i = 0; i < D; i++) {
      const o = r * H * D + h * D, c = cos[r * half + (i % half)], s = sign * sin[r * half + (i % half)];
      const v = i < half ? x[o + i] * c - x[o + i + half] * s : x[o + i] * c + x[o + i - half] * s;
      want.push((acc ? y0[o + i] : 0) + v);
    }
    note('rope', y, want);
  }
}
for (const [N, V] of [[3, 49152], [4, 37]]) {
  const logits = rnd(N * V, 6), labels = Int32Array.from({ length: N }, (_, i) => (i === 1 ? -100 : (i * 7919) % V)), dl = new Float32Array(N * V);
  const [sum] = native.crossEntropy(logits, labels, N, V, -100, dl, 0.25);
  let want = 0;
  const wantDl = [];
  for (let r = 0; r < N; r++) {
    let m = -Infinity, se = 0;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[r * V + j]);
    for (let j = 0; j < V; j++) se += Math.exp(logits[r * V + j] - m);
    const lse = m + Math.log(se);
    if (labels[r] !== -100) want += lse - logits[r * V + labels[r]];
    for (let j = 0; j < V; j++) wantDl.push(labels[r] === -100 ? 0 : 0.25 * (Math.exp(logits[r * V + j] - lse) - (j === labels[r] ? 1 : 0)));
  }
  note('cross-entropy loss', [sum], [want]);
  note('cross-entropy dlogits', dl, wantDl, 1e-3);
}
{
  const n = 1000 + 13, p = rnd(n), m = new Float32Array(n), v = new Float32Array(n);
  const P = Float64Array.from(p), M = new Float64Array(n), Vv = new Float64Array(n);
  for (let t = 1; t <= 3; t++) {
    const g = rnd(n);
    native.adamwStep(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.1, t);
    for (let i = 0; i < n; i++) {
      P[i] *= 1 - 1e-2 * 0.1;
      M[i] = 0.9 * M[i] + 0.1 * g[i];
      Vv[i] = 0.999 * Vv[i] + 0.001 * g[i] * g[i];
      P[i] -= (1e-2 / (1 - 0.9 ** t)) * M[i] / (Math.sqrt(Vv[i]) / Math.sqrt(1 - 0.999 ** t) + 1e-8);
    }
  }
  note('adamw p', p, P);
  note('adamw m', m, M);
  note('adamw v', v, Vv);
}
// attention: out = softmax(scale·q kᵀ + mask) v per (b, h), grouped kv heads; backward by the chain rule
function attnRef(sh, q, k, v, dout) {
  const { B, Tq, Tk, Hq, Hkv, D } = sh, G = Hq / Hkv, off = Tk - Tq;
  const out = new Float64Array(B * Tq * Hq * D), dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) {
    const kh = Math.floor(h / G);
    for (let i = 0; i < Tq; i++) {
      const qo = (b * Tq + i) * Hq * D + h * D, vis = [], s = [];
      for (let j = 0; j < Tk; j++) {
        if (sh.causal && j > off + i) continue;
        if (sh.window && j <= off + i - sh.window) continue;
        if (sh.keyMask && !sh.keyMask[b * Tk + j]) continue;
        if (sh.qSeg && sh.kSeg[b * Tk + j] >= 0 && sh.kSeg[b * Tk + j] !== sh.qSeg[b * Tq + i]) continue;
        let d0 = 0;
        for (let d = 0; d < D; d++) d0 += q[qo + d] * k[(b * Tk + j) * Hkv * D + kh * D + d];
        vis.push(j); s.push(d0 * sh.scale);
      }
      if (!vis.length) continue;
      const mx = Math.max(...s), e = s.map((x) => Math.exp(x - mx)), z = e.reduce((a, c) => a + c, 0), pr = e.map((x) => x / z);
      const dp = [];
      for (const [n, j] of vis.entries()) {
        const vo = (b * Tk + j) * Hkv * D + kh * D;
        let t = 0;
        for (let d = 0; d < D; d++) { out[qo + d] += pr[n] * v[vo + d]; dv[vo + d] += pr[n] * dout[qo + d]; t += dout[qo + d] * v[vo + d]; }
        dp.push(t);
      }
      const di = pr.reduce((a, c, n) => a + c * dp[n], 0);
      for (const [n, j] of vis.entries()) {
        const ds = pr[n] * (dp[n] - di) * sh.scale, ko = (b * Tk + j) * Hkv * D + kh * D;
        for (let d = 0; d < D; d++) { dq[qo + d] += ds * k[ko + d]; dk[ko + d] += ds * q[qo + d]; }
      }
    }
  }
  return { out, dq, dk, dv };
}
for (const c of [
  { B: 2, Tq: 150, Tk: 150, Hq: 6, Hkv: 2, D: 64, causal: true },
  { B: 1, Tq: 70, Tk: 90, Hq: 4, Hkv: 4, D: 64, causal: true, keyMask: Uint8Array.from({ length: 90 }, (_, j) => (j % 11 === 3 ? 0 : 1)) },
  { B: 1, Tq: 67, Tk: 67, Hq: 2, Hkv: 1, D: 64, causal: false, qSeg: Int32Array.from({ length: 67 }, (_, j) => (j < 30 ? 0 : 1)), kSeg: Int32Array.from({ length: 67 }, (_, j) => (j < 2 ? -1 : j < 30 ? 0 : 1)) },
  { B: 1, Tq: 33, Tk: 33, Hq: 3, Hkv: 1, D: 24, causal: true },
  { B: 1, Tq: 130, Tk: 130, Hq: 2, Hkv: 1, D: 64, causal: true, window: 20 },
]) {
  const sh = { ...c, qStride: c.Hq * c.D, kStride: c.Hkv * c.D, vStride: c.Hkv * c.D, oStride: c.Hq * c.D, scale: 1 / Math.sqrt(c.D) };
  const q = rnd(c.B * c.Tq * c.Hq * c.D, 2), k = rnd(c.B * c.Tk * c.Hkv * c.D, 2), v = rnd(c.B * c.Tk * c.Hkv * c.D), dout = rnd(q.length);
  const out = new Float32Array(q.length), lse = new Float32Array(c.B * c.Hq * c.Tq);
  const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length);
  native.attentionForward(sh, q, k, v, out, lse);
  native.attentionBackward(sh, q, k, v, out, lse, dout, dq, dk, dv);
  const ref = attnRef(sh, q, k, v, dout);
  note('attention out', out, ref.out);
  note('attention dq', dq, ref.dq);
  note('attention dk', dk, ref.dk);
  note('attention dv', dv, ref.dv);
}

const fx = ${JSON.stringify(join(ROOT, 'test/fixtures/stories260K'))};
const ids = Int32Array.from(readJson(fx + '/fixture.json').input_ids);
const m = loadModel(${JSON.stringify(join(ROOT, 'models/stories260K'))});
const logits = noGrad(() => withArena(() => lmLogits(m, forwardHidden(m, { ids, B: 1, T: ids.length }).hidden).data.slice()));
console.log(JSON.stringify({ info: native.kernelInfo(), gemm: worst, bf16Dot, rowErr, logits: maxAbsDiff(logits, readTensors(fx + '/base_logits.safetensors').get('logits').data) }));
`;

const cpu = native.kernelInfo().cpu;
const avx512 = cpu.avx2 && cpu.fma && cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512dq;
// amx is the avx512 level (same f32 GEMM and row kernels) plus AMX tiles for the bf16 GEMM. The
// AVX-512 level has two 14x32 f32 micro-kernels (embedded vs register broadcast of A, chosen by CPU
// vendor: register broadcast on Intel); PEFT_AVX512_BCAST forces each so both are checked on any
// AVX-512 machine (AMX implies Intel, so amx runs the register-broadcast one).
const levels: Array<{ level: 'generic' | 'avx2' | 'avx512' | 'amx'; gemm: string; rowops: string; bf16Kernel: string; available: boolean; env?: Record<string, string> }> = [
  { level: 'generic', gemm: 'generic-6x16', rowops: 'generic', bf16Kernel: 'none', available: true },
  { level: 'avx2', gemm: 'avx2-fma-6x16', rowops: 'avx2', bf16Kernel: 'none', available: cpu.avx2 && cpu.fma },
  { level: 'avx512', gemm: 'avx512-14x32', rowops: 'avx512', bf16Kernel: cpu.avx512_bf16 ? 'avx512-bf16-dot' : 'none', available: avx512, env: { PEFT_AVX512_BCAST: '0' } },
  { level: 'avx512', gemm: 'avx512-14x32-bcast', rowops: 'avx512', bf16Kernel: cpu.avx512_bf16 ? 'avx512-bf16-dot' : 'none', available: avx512, env: { PEFT_AVX512_BCAST: '1' } },
  { level: 'amx', gemm: 'avx512-14x32-bcast', rowops: 'avx512', bf16Kernel: 'amx-bf16-tiles', available: avx512 && cpu.avx512_bf16 && cpu.amx_tile && cpu.amx_bf16 },
];

/** This process's environment without a PEFT_AVX512_BCAST the caller may have set: each level checks its own default variant. */
function inheritedEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.PEFT_AVX512_BCAST;
  return env;
}

describe('kernel levels (PEFT_KERNELS)', () => {
  const f = join(mkdtempSync(join(tmpdir(), 'peft-levels-')), 'check.ts');
  writeFileSync(f, script);
  for (const l of levels) {
    it.skipIf(!l.available)(`GEMM (f32/bf16/NF4, bf16 compute), row kernels, attention and the stories260K logits are right with PEFT_KERNELS=${l.level} (${l.gemm})`, () => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', f], { cwd: ROOT, encoding: 'utf8', env: { ...inheritedEnv(), PEFT_KERNELS: l.level, ...l.env } });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      expect(out.info.level).toBe(l.level);
      expect(out.info.gemm).toBe(l.gemm);
      expect(out.info.bf16Kernel).toBe(l.bf16Kernel);
      if (l.bf16Kernel === 'none') expect(out.bf16Dot).toBeNull();
      else expect(out.bf16Dot).toEqual({ worst: expect.any(Number), nanRowOnly: true });
      if (out.bf16Dot) expect(out.bf16Dot.worst).toBeLessThan(1e-6);
      expect(out.info.rowops).toBe(l.rowops);
      expect(out.gemm).toBeLessThan(2e-6);
      // float32 rounding of a few operations plus the polynomial exp (~2e-7 relative); the row
      // reductions (RMSNorm over 576, softmax over 49152) sum in float32 lanes
      const expected = ['swiglu fwd', 'swiglu bwd dg', 'swiglu bwd du', 'rmsnorm fwd', 'rmsnorm rstd', 'rmsnorm bwd dx', 'rope',
        'cross-entropy loss', 'cross-entropy dlogits', 'adamw p', 'adamw m', 'adamw v', 'attention out', 'attention dq', 'attention dk', 'attention dv'];
      expect(Object.keys(out.rowErr).sort()).toEqual(expected.sort());
      for (const [name, e] of Object.entries(out.rowErr)) expect(e, name).toBeLessThan(name.startsWith('attention') ? 5e-6 : 2e-6);
      expect(out.logits).toBeLessThan(1e-4);
    });
  }
  it('an unknown PEFT_KERNELS value is refused with a clear error', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', `import(${JSON.stringify(join(ROOT, 'src/native/index.ts'))})`], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: 'sse9' } });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/PEFT_KERNELS: unknown kernel family \(expected amx, avx512, avx2 or generic, found "sse9"\)/);
  });
});
