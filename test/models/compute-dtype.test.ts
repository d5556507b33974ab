/**
 * `--compute-dtype bf16`: bf16 rounding, the bf16 GEMM in use (AMX tiles where the CPU has them,
 * else VDPBF16PS; both levels are also checked in kernel-levels.test.ts) against a float64
 * reference over bf16-rounded operands (NaN propagates), the LoRA loss curve on stories260K within 5e-3 of float32,
 * and a clear refusal where the instruction is unavailable (forced with PEFT_KERNELS=avx2 in a
 * child process). The GEMM and training cases are skipped on CPUs without AVX512_BF16.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../src/native/index.js';
import { bf16ComputeAvailable, setComputeDtype, toBf16Bits } from '../../src/models/compute-dtype.js';
import { loadModel } from '../../src/models/load.js';
import { runTraining } from '../../src/train/run.js';
import { ROOT, STORIES } from '../helpers.js';

const fromBf16 = (h: number): number => new Float32Array(new Uint32Array([h << 16]).buffer)[0];
const hasBf16 = bf16ComputeAvailable();

describe('bf16 compute dtype', () => {
  it('rounds float32 to bfloat16 to nearest even, keeping NaN and infinities', () => {
    const x = new Float32Array([1, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, Infinity, -Infinity, NaN, 3.4028234663852886e38]);
    const b = Array.from(toBf16Bits(x), fromBf16);
    expect(b.slice(0, 6)).toEqual([1, 1, 1 + 2 ** -6, -2.5, Infinity, -Infinity]);
    expect(Number.isNaN(b[6])).toBe(true);
    expect(b[7]).toBe(Infinity); // rounds past the largest finite bf16
  });

  it.skipIf(!hasBf16)(`bf16 GEMM (${native.kernelInfo().bf16Kernel}) equals the float64 product of bf16-rounded operands; NaN propagates`, () => {
    let worst = 0;
    for (const [M, N, K] of [[7, 33, 300], [50, 17, 9], [29, 70, 131], [15, 40, 1], [40, 64, 1100]]) for (const tb of [false, true]) for (const [al, be] of [[0.5, 0.25], [1, 1]]) {
      const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i * 1.3));
      const B = toBf16Bits(Float32Array.from({ length: K * N }, (_, i) => Math.cos(i * 0.7)));
      const Ab = Array.from(toBf16Bits(A), fromBf16), Bd = Array.from(B, fromBf16);
      const C = Float32Array.from({ length: M * N }, (_, i) => Math.sin(i * 0.1)), C0 = C.slice();
      native.gemmBf16Dot(false, tb, M, N, K, al, A, K, B, tb ? K : N, be, C, N);
      for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
        let s = 0, mag = 0;
        for (let k = 0; k < K; k++) {
          const p = Ab[i * K + k] * Bd[tb ? j * K + k : k * N + j];
          s += p; mag += Math.abs(p);
        }
        worst = Math.max(worst, Math.abs(C[i * N + j] - (al * s + be * C0[i * N + j])) / (al * mag + be + 1));
      }
    }
    expect(worst).toBeLessThan(1e-6);
    const A = new Float32Array(3 * 20).fill(1);
    A[1 * 20 + 5] = NaN;
    const C = new Float32Array(3 * 4);
    native.gemmBf16Dot(false, true, 3, 4, 20, 1, A, 20, toBf16Bits(new Float32Array(4 * 20).fill(0.5)), 20, 0, C, 4);
    expect(Array.from(C.subarray(0, 4))).toEqual([10, 10, 10, 10]);
    expect(Array.from(C.subarray(4, 8)).every(Number.isNaN)).toBe(true);
  });

  it.skipIf(!hasBf16)('LoRA on stories260K: bf16 loss curve within 5e-3 of float32; only frozen weights switch', async () => {
    const data = join(mkdtempSync(join(tmpdir(), 'peft-bf16-')), 'data.jsonl');
    const text = readFileSync(join(ROOT, 'data/tinystories_val_sample/tinystories_val_head.txt'), 'utf8').split(/\n\s*\n/).slice(0, 40);
    writeFileSync(data, text.map((t) => JSON.stringify({ text: t })).join('\n'));
    const common = { data, method: 'lora' as const, maxSteps: 4, batchSize: 2, maxSeqLength: 48, lr: 3e-3, evalEvery: 0,
      maxEvalExamples: 2, seed: 1, loraDropout: 0 };
    const a = await runTraining(common);
    const b = await runTraining({ ...common, computeDtype: 'bf16' });
    expect(b.summary).toMatch(/compute dtype: bf16 \(36 frozen linear weights/);
    const la = a.result.steps.map((s) => s.loss), lb = b.result.steps.map((s) => s.loss);
    expect(lb.length).toBe(4);
    for (let i = 0; i < la.length; i++) expect(Math.abs(la[i] - lb[i])).toBeLessThan(5e-3);
    // trainable weights stay float32
    const m = loadModel(STORIES);
    if (m.layers[0].linears.q.weight.data.kind === 'f32') m.layers[0].linears.q.weight.data.tensor.requiresGrad = true;
    const c = setComputeDtype(m, 'bf16');
    expect(c).toEqual({ bf16: 35, other: 1 });
    expect(m.layers[0].linears.q.weight.data.kind).toBe('f32');
    expect(m.layers[0].linears.k.weight.data.kind).toBe('bf16');
  });

  it('is refused with a clear error where VDPBF16PS is unavailable, and unknown dtypes are refused', () => {
    const code = `import { setComputeDtype } from ${JSON.stringify(join(ROOT, 'src/models/compute-dtype.ts'))};
      import { loadModel } from ${JSON.stringify(join(ROOT, 'src/models/load.ts'))};
      setComputeDtype(loadModel(${JSON.stringify(STORIES)}), 'bf16');`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: 'avx2' } });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/--compute-dtype: bf16 compute needs the AVX512_BF16 instruction VDPBF16PS.*found kernel level avx2/);
    expect(() => setComputeDtype(loadModel(STORIES), 'fp16')).toThrow(/--compute-dtype: unknown compute dtype \(expected float32 or bf16, found fp16\)/);
  });
});
