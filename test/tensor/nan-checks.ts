/**
 * NaN-propagation checks through the public ops, shared by nan-propagation.test.ts (run in
 * process with the kernels this CPU selects, and in a child with PEFT_KERNELS=generic). Any
 * kernel path — AVX2, AVX-512, portable — must give torch's answer: a NaN input reaches every
 * output that depends on it, never a silent 0 or a finite value.
 * Returns, per check, whether it held (and a detail when it did not).
 */
import { activation, attention, crossEntropy, linear, f32Weight, noGrad, rmsnorm, swiglu, Tensor, withArena } from '../../src/tensor/index.js';

export type NanReport = Record<string, string>; // check → 'ok' or what went wrong

const isNaNAll = (a: ArrayLike<number>): boolean => Array.prototype.every.call(a, (x: number) => Number.isNaN(x));
const isFiniteAll = (a: ArrayLike<number>): boolean => Array.prototype.every.call(a, (x: number) => Number.isFinite(x));

export function nanChecks(): NanReport {
  const out: NanReport = {};
  const check = (name: string, fn: () => string | true): void => {
    try {
      const r = noGrad(() => withArena(fn));
      out[name] = r === true ? 'ok' : r;
    } catch (e) {
      out[name] = `threw ${(e as Error).message}`;
    }
  };
  const wave = (n: number, f: number): Float32Array => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f) * 0.5);

  // attention: a NaN in one key (in the vectorised body and in the tail of the row) makes every
  // query that sees that key NaN (whole head), and leaves the queries before it (causal) finite
  for (const [Tk, nanAt] of [[37, 3], [37, 34], [130, 70]] as const) {
    check(`attention: NaN in key ${nanAt} of ${Tk}`, () => {
      const Hq = 2, Hkv = 1, D = 8;
      const q = new Tensor(wave(Tk * Hq * D, 0.37), [Tk, Hq * D]);
      const k = new Tensor(wave(Tk * Hkv * D, 0.53), [Tk, Hkv * D]);
      const v = new Tensor(wave(Tk * Hkv * D, 0.71), [Tk, Hkv * D]);
      k.data[nanAt * D + 5] = NaN;
      const o = attention(q, k, v, { B: 1, Tq: Tk, Tk, Hq, Hkv, D, causal: true });
      for (let i = 0; i < Tk; i++) {
        const row = o.data.subarray(i * Hq * D, (i + 1) * Hq * D);
        if (i < nanAt && !isFiniteAll(row)) return `query ${i} (before the NaN key) is not finite`;
        if (i >= nanAt && !isNaNAll(row)) return `query ${i} sees the NaN key but its output is not NaN: ${Array.from(row.slice(0, 3))}`;
      }
      return true;
    });
  }
  check('attention: NaN in a query row gives NaN for that row only', () => {
    const T = 20, H = 1, D = 8;
    const q = new Tensor(wave(T * D, 0.3), [T, D]), k = new Tensor(wave(T * D, 0.4), [T, D]), v = new Tensor(wave(T * D, 0.5), [T, D]);
    q.data[7 * D] = NaN;
    const o = attention(q, k, v, { B: 1, Tq: T, Tk: T, Hq: H, Hkv: H, D, causal: true });
    for (let i = 0; i < T; i++) {
      const row = o.data.subarray(i * D, (i + 1) * D);
      if (i === 7 ? !isNaNAll(row) : !isFiniteAll(row)) return `row ${i}: ${Array.from(row.slice(0, 3))}`;
    }
    return true;
  });

  // cross-entropy: a NaN logit anywhere in a scored row (body or tail) makes the loss NaN
  for (const [V, at] of [[37, 2], [37, 36], [520, 300]] as const) {
    check(`cross-entropy: NaN logit ${at} of ${V}`, () => {
      const logits = new Tensor(wave(3 * V, 0.11), [3, V]);
      logits.data[V + at] = NaN;
      const r = crossEntropy(logits, Int32Array.from([1, 2, 3]), 1);
      return Number.isNaN(r.sum) ? true : `loss ${r.sum}`;
    });
  }
  check('cross-entropy: a NaN in an ignored row (label −100) does not matter', () => {
    const V = 37;
    const logits = new Tensor(wave(2 * V, 0.11), [2, V]);
    logits.data[V + 4] = NaN;
    const r = crossEntropy(logits, Int32Array.from([1, -100]), 1);
    return Number.isFinite(r.sum) ? true : `loss ${r.sum}`;
  });

  // activations (ReLU included), SwiGLU, RMSNorm, linear
  for (const act of ['relu', 'silu', 'gelu', 'gelu_tanh'] as const) {
    check(`activation ${act}: NaN stays NaN`, () => {
      const x = new Tensor(Float32Array.from([NaN, -1, 0, 2, NaN]), [1, 5]);
      const y = activation(x, act as Parameters<typeof activation>[1]).data;
      return Number.isNaN(y[0]) && Number.isNaN(y[4]) && isFiniteAll(y.subarray(1, 4)) ? true : `got ${Array.from(y)}`;
    });
  }
  check('swiglu: NaN gate or up gives NaN', () => {
    const g = new Tensor(Float32Array.from([NaN, 1, -3]), [1, 3]), u = new Tensor(Float32Array.from([1, NaN, 0]), [1, 3]);
    const y = swiglu(g, u).data;
    return Number.isNaN(y[0]) && Number.isNaN(y[1]) && Number.isFinite(y[2]) ? true : `got ${Array.from(y)}`;
  });
  check('rmsnorm: a NaN feature makes its row NaN', () => {
    const x = new Tensor(wave(2 * 24, 0.2), [2, 24]);
    x.data[24 + 17] = NaN;
    const y = rmsnorm(x, new Tensor(new Float32Array(24).fill(1), [24]), 1e-5).data;
    return isFiniteAll(y.subarray(0, 24)) && isNaNAll(y.subarray(24)) ? true : 'row 0 not finite or row 1 not all NaN';
  });
  check('linear: a NaN input feature makes its output row NaN', () => {
    const x = new Tensor(wave(3 * 40, 0.3), [3, 40]);
    x.data[40 + 39] = NaN;
    const w = f32Weight(new Tensor(wave(24 * 40, 0.7), [24, 40]));
    const y = linear(x, w).data;
    return isFiniteAll(y.subarray(0, 24)) && isNaNAll(y.subarray(24, 48)) && isFiniteAll(y.subarray(48)) ? true : 'wrong rows';
  });
  return out;
}

// run as a script (the child process of the test): print the report as JSON
if (process.argv[1] && /nan-checks\.ts$/.test(process.argv[1])) process.stdout.write(JSON.stringify(nanChecks()));
