/**
 * Every kernel level this CPU can run (generic always; avx2 and avx512 when the CPU-feature probe
 * reports them), each forced with PEFT_KERNELS in a child process: GEMM with float32, bfloat16 and
 * 4-bit (NF4, plain and double-quantized absmax) weights in every transpose combination, alpha/beta
 * and ragged edges, against a float64 reference; and the stories260K logits against transformers'.
 * On a machine without AVX-512 the avx512 case is skipped (and the level caps to what the CPU has).
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
const fx = ${JSON.stringify(join(ROOT, 'test/fixtures/stories260K'))};
const ids = Int32Array.from(readJson(fx + '/fixture.json').input_ids);
const m = loadModel(${JSON.stringify(join(ROOT, 'models/stories260K'))});
const logits = noGrad(() => withArena(() => lmLogits(m, forwardHidden(m, { ids, B: 1, T: ids.length }).hidden).data.slice()));
console.log(JSON.stringify({ info: native.kernelInfo(), gemm: worst, logits: maxAbsDiff(logits, readTensors(fx + '/base_logits.safetensors').get('logits').data) }));
`;

const cpu = native.kernelInfo().cpu;
const avx512 = cpu.avx2 && cpu.fma && cpu.avx512f && cpu.avx512bw && cpu.avx512vl && cpu.avx512dq;
// the AVX-512 level has two 14x32 micro-kernels (embedded vs register broadcast of A, chosen by CPU
// vendor); PEFT_AVX512_BCAST forces each so both are checked on any AVX-512 machine
const levels: Array<{ level: 'generic' | 'avx2' | 'avx512'; gemm: string; available: boolean; env?: Record<string, string> }> = [
  { level: 'generic', gemm: 'generic-6x16', available: true },
  { level: 'avx2', gemm: 'avx2-fma-6x16', available: cpu.avx2 && cpu.fma },
  { level: 'avx512', gemm: 'avx512-14x32', available: avx512, env: { PEFT_AVX512_BCAST: '0' } },
  { level: 'avx512', gemm: 'avx512-14x32-bcast', available: avx512, env: { PEFT_AVX512_BCAST: '1' } },
];

describe('kernel levels (PEFT_KERNELS)', () => {
  const f = join(mkdtempSync(join(tmpdir(), 'peft-levels-')), 'check.ts');
  writeFileSync(f, script);
  for (const l of levels) {
    it.skipIf(!l.available)(`GEMM (f32/bf16/NF4) and the stories260K logits are right with PEFT_KERNELS=${l.level} (${l.gemm})`, () => {
      const r = spawnSync(process.execPath, ['--import', 'tsx', f], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: l.level, ...l.env } });
      expect(r.status, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
      expect(out.info.level).toBe(l.level);
      expect(out.info.gemm).toBe(l.gemm);
      expect(out.gemm).toBeLessThan(2e-6);
      expect(out.logits).toBeLessThan(1e-4);
    });
  }
  it('an unknown PEFT_KERNELS value is refused with a clear error', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', `import(${JSON.stringify(join(ROOT, 'src/native/index.ts'))})`], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: 'sse9' } });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/PEFT_KERNELS: unknown kernel family \(expected avx512, avx2 or generic, found "sse9"\)/);
  });
});
