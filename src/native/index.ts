/**
 * The native kernel addon (C++17 through Node-API; sources in `native/`). Every function checks
 * its arguments' types and lengths and throws a TypeError/RangeError instead of crashing.
 *
 * Conventions: matrices are row-major Float32Array views (zero-copy); `ld*` are row strides in
 * elements; backward kernels ACCUMULATE into gradient buffers (`dx += …`), and passing `null` for
 * a gradient skips its computation.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PeftError } from '../errors.js';

/** A 4-bit (NF4/FP4) matrix in bitsandbytes' layout; see native/gemm/gemm.h `Q4Matrix`. */
export interface Q4Native {
  /** rows × cols elements, row-major, two codes per byte, element 2k in the high nibble. */
  packed: Uint8Array;
  /** The 16 code values (NF4 or FP4). */
  code: Float32Array;
  rows: number;
  cols: number;
  blocksize: number;
  /** float32 absmax per block, or null when double-quantized (then the nested fields are set). */
  absmax: Float32Array | null;
  absmaxCodes?: Uint8Array;
  nestedAbsmax?: Float32Array;
  nestedCode?: Float32Array;
  nestedBlocksize?: number;
  offset?: number;
}

/** Attention problem description; layouts q/out [B, Tq, Hq, D], k/v [B, Tk, Hkv, D] with row strides. */
export interface AttentionShape {
  B: number;
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  qStride: number;
  kStride: number;
  vStride: number;
  oStride: number;
  scale: number;
  /** Query i sees keys j <= (Tk - Tq) + i. */
  causal: boolean;
  /** Sliding window (> 0): query i sees only keys j > (Tk − Tq) + i − window (transformers' sliding_window); 0/absent = all. */
  window?: number;
  /** Soft-capping (> 0): scores become softcap·tanh(score/softcap) before masking (Gemma 2); 0/absent = none. */
  softcap?: number;
  /** [B, Tk], 1 = attend, 0 = padding. */
  keyMask?: Uint8Array | null;
  /** Segment ids [B, Tq] / [B, Tk]: a query sees only keys of its own segment (packing). */
  qSeg?: Int32Array | null;
  kSeg?: Int32Array | null;
  /** Additive mask [B or 1, Tq, Tk]. */
  addMask?: Float32Array | null;
  addMaskBatched?: boolean;
}

/** Activation kinds understood by actForward/actBackward. */
export const Act = { silu: 0, gelu_tanh: 1, gelu: 2, relu: 3, identity: 4 } as const;
export type ActName = keyof typeof Act;

type F32 = Float32Array;
type Nullable<T> = T | null;

/**
 * CPU features and the kernel level in use (PEFT_KERNELS=amx|avx512|avx2|generic caps it; `amx` is
 * the avx512 level plus Intel AMX tiles for the bf16 GEMM, `avx512` the same without AMX).
 */
export interface KernelInfo {
  level: 'amx' | 'avx512' | 'avx2' | 'generic';
  /** GEMM micro-kernel name, e.g. "avx512-14x32". */
  gemm: string;
  /** bf16 compute usable: VDPBF16PS (AVX512_BF16 and the avx512 or amx level). */
  bf16Dot: boolean;
  /**
   * The kernel behind gemmBf16Dot: 'amx-bf16-tiles' (AMX TDPBF16PS, level amx),
   * 'avx512-bf16-dot' (VDPBF16PS) or 'none'.
   */
  bf16Kernel: 'amx-bf16-tiles' | 'avx512-bf16-dot' | 'none';
  /** Row-kernel table in use (softmax, SwiGLU, RMSNorm, RoPE, AdamW; native/ops/rowops.h): "avx512", "avx2" or "generic". */
  rowops: string;
  /** PEFT_KERNELS holds something other than amx, avx512, avx2, generic. */
  envInvalid: boolean;
  /** amx_tile/amx_bf16: present, enabled in XCR0 and (Linux) permitted by the kernel. */
  cpu: Record<'avx2' | 'fma' | 'f16c' | 'avx512f' | 'avx512bw' | 'avx512vl' | 'avx512dq' | 'avx512_vnni' | 'avx512_bf16' |
    'amx_tile' | 'amx_bf16', boolean>;
}

export interface NativeAddon {
  noop(): void;
  numThreads(): number;
  setNumThreads(n: number): void;
  kernelName(): string;
  /** What the CPU-feature probe found and which kernel level PEFT_KERNELS left in use. */
  kernelInfo(): KernelInfo;
  /** C[M,N] = alpha·op(A)·op(B) + beta·C; B float32 or bfloat16 bits (Uint16Array). */
  gemm(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: F32, lda: number,
    B: F32 | Uint16Array, ldb: number, beta: number, C: F32, ldc: number): void;
  /**
   * C[M,N] = alpha·A·op(B) + beta·C with B bfloat16 bits multiplied by AMX TDPBF16PS or VDPBF16PS
   * (kernelInfo().bf16Kernel says which): A rounded to bf16
   * (nearest even), products summed in float32. transA must be false. Throws a RangeError where
   * kernelInfo().bf16Dot is false.
   */
  gemmBf16Dot(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: F32, lda: number,
    B: Uint16Array, ldb: number, beta: number, C: F32, ldc: number): void;
  /** As gemm with a 4-bit B dequantized inside the packing; transB: op(B) = W^T with W [N, K]. */
  gemmQ4(transA: boolean, transB: boolean, M: number, N: number, K: number, alpha: number, A: F32, lda: number,
    q4: Q4Native, beta: number, C: F32, ldc: number): void;
  dequantQ4(q4: Q4Native, out: F32): void;
  embeddingForward(W: F32 | Uint16Array, vocab: number, D: number, ids: Int32Array, out: F32): void;
  embeddingBackward(dout: F32, ids: Int32Array, D: number, dW: F32): void;
  rmsnormForward(x: F32, w: F32, rows: number, D: number, eps: number, y: F32, rstd: Nullable<F32>): void;
  rmsnormBackward(dy: F32, x: F32, w: F32, rstd: F32, rows: number, D: number, dx: Nullable<F32>, dw: Nullable<F32>): void;
  layernormForward(x: F32, w: Nullable<F32>, b: Nullable<F32>, rows: number, D: number, eps: number, y: F32,
    mean: Nullable<F32>, rstd: Nullable<F32>): void;
  layernormBackward(dy: F32, x: F32, w: Nullable<F32>, mean: F32, rstd: F32, rows: number, D: number,
    dx: Nullable<F32>, dw: Nullable<F32>, db: Nullable<F32>): void;
  ropeTable(positions: Int32Array, invFreq: F32, attentionScaling: number, cos: F32, sin: F32): void;
  ropeApply(x: F32, y: F32, rows: number, H: number, D: number, stride: number, cos: F32, sin: F32,
    sign: number, accumulate: boolean): void;
  attentionForward(shape: AttentionShape, q: F32, k: F32, v: F32, out: F32, lse: Nullable<F32>): void;
  attentionBackward(shape: AttentionShape, q: F32, k: F32, v: F32, out: F32, lse: F32, dout: F32,
    dq: Nullable<F32>, dk: Nullable<F32>, dv: Nullable<F32>): void;
  actForward(kind: number, x: F32, y: F32): void;
  actBackward(kind: number, x: F32, dy: F32, dx: F32): void;
  swigluForward(g: F32, u: F32, y: F32): void;
  swigluBackward(g: F32, u: F32, dy: F32, dg: Nullable<F32>, du: Nullable<F32>): void;
  /** Returns [sum of losses over counted rows, number of counted rows]. */
  crossEntropy(logits: F32, labels: Int32Array, N: number, V: number, ignoreIndex: number,
    dlogits: Nullable<F32>, gradScale: number): [number, number];
  adamwStep(p: F32, g: F32, m: F32, v: F32, lr: number, beta1: number, beta2: number, eps: number,
    weightDecay: number, step: number): void;
  add(a: F32, b: F32, out: F32): void;
  axpy(alpha: number, x: F32, y: F32): void;
  scale(x: F32, alpha: number, out: F32): void;
  mul(a: F32, b: F32, out: F32): void;
  mulAcc(a: F32, b: F32, out: F32): void;
  mulRow(x: F32, w: F32, out: F32, rows: number, D: number, accumulate: boolean): void;
  addRow(x: F32, b: F32, rows: number, D: number): void;
  sumRows(a: F32, b: Nullable<F32>, out: F32, rows: number, D: number): void;
  sumSquares(x: F32): number;
  /** Inverted dropout; the keep mask is a hash of (seed, index), regenerated by dropoutBackward. */
  dropoutForward(x: F32, out: F32, p: number, seed: number): void;
  dropoutBackward(dy: F32, dx: F32, p: number, seed: number): void;
}

function findAddon(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    for (const sub of ['build/Release/peft_native.node', 'build/Debug/peft_native.node']) {
      const p = join(dir, sub);
      if (existsSync(p)) return p;
    }
    dir = dirname(dir);
  }
  throw new Error(
    'peft-ts native addon not found (build/Release/peft_native.node). Build it with `npm run build:native` ' +
      '(needs a C++17 compiler, make and python3).',
  );
}

const require = createRequire(import.meta.url);
/** The loaded addon (process-wide; also loads in worker threads). */
export const native: NativeAddon = require(findAddon()) as NativeAddon;

if (native.kernelInfo().envInvalid)
  throw new PeftError('unknown kernel family', { field: 'PEFT_KERNELS', expected: 'amx, avx512, avx2 or generic', found: JSON.stringify(process.env.PEFT_KERNELS) });
if (process.env.PEFT_NUM_THREADS) native.setNumThreads(Number(process.env.PEFT_NUM_THREADS));
