/**
 * The portable kernels (what arm64 and pre-AVX2 CPUs run), forced with PEFT_KERNELS=generic in a
 * child process: GEMM in every transpose combination against a float64 reference, and the
 * stories260K logits against transformers'.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';

const script = `
import { native } from ${JSON.stringify(join(ROOT, 'src/native/index.ts'))};
import { loadModel } from ${JSON.stringify(join(ROOT, 'src/models/load.ts'))};
import { forwardHidden, lmLogits } from ${JSON.stringify(join(ROOT, 'src/models/llama.ts'))};
import { noGrad, withArena } from ${JSON.stringify(join(ROOT, 'src/tensor/index.ts'))};
import { readTensors, readJson, maxAbsDiff } from ${JSON.stringify(join(ROOT, 'test/helpers.ts'))};
let worst = 0;
for (const [M, N, K] of [[7, 33, 300], [50, 17, 9], [64, 64, 64]]) for (const ta of [false, true]) for (const tb of [false, true]) {
  const A = Float32Array.from({ length: M * K }, (_, i) => Math.sin(i)), B = Float32Array.from({ length: K * N }, (_, i) => Math.cos(i * 0.7));
  const C = new Float32Array(M * N);
  native.gemm(ta, tb, M, N, K, 1, A, ta ? M : K, B, tb ? K : N, 0, C, N);
  for (let i = 0; i < M; i++) for (let j = 0; j < N; j++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += (ta ? A[k * M + i] : A[i * K + k]) * (tb ? B[j * K + k] : B[k * N + j]);
    worst = Math.max(worst, Math.abs(C[i * N + j] - s));
  }
}
const fx = ${JSON.stringify(join(ROOT, 'test/fixtures/stories260K'))};
const ids = Int32Array.from(readJson(fx + '/fixture.json').input_ids);
const m = loadModel(${JSON.stringify(join(ROOT, 'models/stories260K'))});
const logits = noGrad(() => withArena(() => lmLogits(m, forwardHidden(m, { ids, B: 1, T: ids.length }).hidden).data.slice()));
console.log(JSON.stringify({ kernel: native.kernelName(), gemm: worst, logits: maxAbsDiff(logits, readTensors(fx + '/base_logits.safetensors').get('logits').data) }));
`;

describe('portable kernels', () => {
  it('GEMM and the stories260K logits are right with PEFT_KERNELS=generic', () => {
    const f = join(mkdtempSync(join(tmpdir(), 'peft-portable-')), 'check.ts');
    writeFileSync(f, script);
    const r = spawnSync(process.execPath, ['--import', 'tsx', f], { cwd: ROOT, encoding: 'utf8', env: { ...process.env, PEFT_KERNELS: 'generic' } });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.kernel).toBe('generic-6x16');
    expect(out.gemm).toBeLessThan(1e-3);
    expect(out.logits).toBeLessThan(1e-4);
  });
});
