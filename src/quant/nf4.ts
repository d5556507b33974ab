/**
 * 4-bit NormalFloat (NF4) and FP4 block-wise quantization with optional double quantization, bit
 * for bit as bitsandbytes does it on CUDA — the QLoRA storage format.
 *
 * Sources:
 *   - QLoRA: Efficient Finetuning of Quantized LLMs (Dettmers, Pagnoni, Holtzman, Zettlemoyer 2023,
 *     arXiv:2305.14314): NF4 data type, block-wise absmax scaling, double quantization.
 *   - bitsandbytes `bitsandbytes/functional.py`: `get_4bit_type`, `create_dynamic_map`,
 *     `quantize_4bit`, `dequantize_4bit`, `quantize_blockwise`, `dequantize_blockwise`,
 *     `QuantState.as_dict` / `from_dict`; `bitsandbytes/utils.py`: `pack_dict_to_tensor`.
 *   - bitsandbytes `csrc/kernels.cu`, `csrc/cuda/blockwise_quantization.cu`: `kQuantizeBlockwise`,
 *     `dQuantizeNF4`, `dQuantizeFP4`, `dQuantize`, `kDequantizeBlockwise`, the dequantization LUTs.
 * The exact rules (rounding, ties, zero blocks, padding) and the checkpoint layout are written up
 * in `src/quant/bnb-layout.md`; `scripts/fixtures/make_nf4_reference.py` is the numpy reference the
 * tests compare against.
 *
 * Every value here is float32 arithmetic: a JS double product/sum/quotient of two float32 values,
 * rounded once with `Math.fround`, is the IEEE float32 operation. Inputs are flat row-major
 * `Float32Array`s; blocks are runs of `blocksize` consecutive elements, the last one possibly
 * partial. Packed codes: element 2k in the HIGH nibble of byte k, element 2k+1 in the low nibble.
 *
 * The exported `Float32Array` tables are shared constants: do not modify them.
 */
import { PeftError } from '../errors.js';
import { jsonDepth } from '../io/files.js';

/** The two 4-bit data types of bitsandbytes. */
export type QuantType4 = 'nf4' | 'fp4';

/** torch dtype names as bitsandbytes writes them in the packed quant state (`str(dtype)` minus `torch.`). */
export type TorchDtypeName = 'float32' | 'float16' | 'bfloat16';

/** Block sizes `quantize_4bit` accepts on CUDA. */
export const BLOCKSIZES_4BIT: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
/** Block sizes `quantize_blockwise` (8-bit) accepts on CUDA. */
export const BLOCKSIZES_8BIT: readonly number[] = [64, 128, 256, 512, 1024, 2048, 4096];
/** Block size of the second (nested) quantization of the absmax statistics. */
export const NESTED_BLOCKSIZE = 256;

// ------------------------------------------------------------------------------------------------
// code tables
// ------------------------------------------------------------------------------------------------

/**
 * The 16 NF4 values, index = 4-bit code: `get_4bit_type('nf4')` in functional.py, which equals the
 * CUDA `nf4_dequantization_lut`. Ascending; code 7 is 0, code 15 is 1.
 */
export const NF4_CODE: Float32Array = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
]);

/**
 * The 16 FP4 values (1 sign bit, 2 exponent bits, 1 mantissa bit, bias 3, normalized by 12), index =
 * 4-bit code: `get_4bit_type('fp4')` = [0, 0.0625, 8, 12, 4, 6, 2, 3, -0, -0.0625, -8, -12, -4, -6,
 * -2, -3] / 12 in float32. Bit 3 is the sign; magnitude bits 000=0, 001=0.0625, 110=2, 111=3, 100=4,
 * 101=6, 010=8, 011=12 (before /12). Entry 8 is +0.0 (the python list holds the int `-0`); this is
 * what checkpoints store as `quant_map`. Not sorted.
 */
export const FP4_CODE: Float32Array = Float32Array.from(
  [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3].map((v) => Math.fround(v / 12)),
);

/**
 * What the CUDA kernel returns when dequantizing each FP4 code (`dDequantizeFP4Tree`:
 * `fp4_dequantization_lut[v & 7] * (1 - 2 * (v >> 3))`): {@link FP4_CODE} except entry 8 is -0.0.
 */
export const FP4_DEQUANT_LUT: Float32Array = Float32Array.from(FP4_CODE, (v, i) => (i === 8 ? -0 : v));

/**
 * `dQuantizeNF4` thresholds, ascending: code = number of thresholds t with `x > t` (a value equal to a
 * threshold takes the lower code; NaN takes code 0). These are the float32 values of the kernel's
 * decimal literals (midpoints of neighbouring codes), rounded once from decimal as a C/CUDA
 * compiler does; `Math.fround(parseFloat(literal))` would double-round 4 of them (indices 0, 8, 12, 14).
 */
export const NF4_THRESHOLDS: Float32Array = Float32Array.from([
  -0.8480964303016663, -0.6106328964233398, -0.4599952697753906, -0.33967941999435425,
  -0.23460739850997925, -0.13791173696517944, -0.045525018125772476, 0.03979014977812767,
  0.1202552542090416, 0.2035212516784668, 0.2920137643814087, 0.3893125355243683,
  0.5016633868217468, 0.6427869200706482, 0.8614783883094788,
]);

/**
 * `dQuantizeFP4` thresholds on |x|, ascending (the kernel's literals 0.00260417f, 0.0859375f,
 * 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f). Rank r (number of thresholds with
 * `|x| > t`) maps to magnitude code [0, 1, 6, 7, 4, 5, 2, 3][r]; 8 is added when x < 0.
 */
export const FP4_THRESHOLDS: Float32Array = Float32Array.from([
  0.0026041700039058924, 0.0859375, 0.2083333283662796, 0.2916666567325592, 0.4166666865348816,
  0.5833330154418945, 0.8333333134651184,
]);

// scalar copies for the hot loops
const [N0, N1, N2, N3, N4, N5, N6, N7, N8, N9, N10, N11, N12, N13, N14] = Array.from(NF4_THRESHOLDS);
const [P0, P1, P2, P3, P4, P5, P6] = Array.from(FP4_THRESHOLDS);

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` on CPU: step = (end - start) / (steps - 1)
 * in float32; element i is start + step*i for i < steps/2, else end - step*(steps-1-i), each rounded
 * once (a fused multiply-add: the exact product and sum fit a double here). Checked against torch 2.13.
 */
function linspaceF32(start: number, end: number, steps: number): Float32Array {
  const s = Math.fround(start);
  const e = Math.fround(end);
  const step = Math.fround(Math.fround(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  const out = new Float32Array(steps);
  for (let i = 0; i < steps; i++) out[i] = i < half ? s + step * i : e - step * (steps - 1 - i);
  return out;
}

/**
 * bitsandbytes' 8-bit dynamic (dynamic-exponent) quantization map, `create_dynamic_map(signed,
 * max_exponent_bits, total_bits)` in functional.py, evaluated in float32 exactly as torch does
 * (float32 `linspace`, float32 means, float32 products with `10 ** (i - max_exponent_bits + 1)`).
 * Returns 256 ascending values. Only the bitsandbytes defaults (7 exponent bits, 8 total bits, where
 * no "additional items" exist) are supported.
 *
 * Source: functional.py `create_dynamic_map`; Dettmers 2015, "8-Bit Approximations for Parallelism
 * in Deep Learning".
 * @throws PeftError for other maxExponentBits / totalBits.
 */
export function createDynamicMap(signed = true, maxExponentBits = 7, totalBits = 8): Float32Array {
  if (maxExponentBits !== 7 || totalBits !== 8) {
    throw new PeftError('unsupported dynamic map parameters', {
      field: 'createDynamicMap', expected: 'maxExponentBits 7, totalBits 8', found: `${maxExponentBits}, ${totalBits}`,
    });
  }
  // 10 ** (-(max_exponent_bits - 1) + i) as python evaluates it (correctly rounded), i = 0..6
  const scales = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1];
  const data: number[] = [];
  const nonSignBits = totalBits - 1;
  for (let i = 0; i < maxExponentBits; i++) {
    const items = signed ? 2 ** (i + nonSignBits - maxExponentBits) + 1 : 2 ** (i + nonSignBits - maxExponentBits + 1) + 1;
    const b = linspaceF32(0.1, 1, items);
    const scale = Math.fround(scales[i]);
    const means: number[] = [];
    for (let j = 0; j + 1 < b.length; j++) means.push(Math.fround(Math.fround(b[j] + b[j + 1]) / 2));
    for (const m of means) data.push(Math.fround(m * scale));
    if (signed) for (const m of means) data.push(Math.fround(m * -scale));
  }
  data.push(0, 1);
  while (data.length < 256) data.push(0);
  data.sort((a, b) => a - b);
  return Float32Array.from(data);
}

/** `create_dynamic_map(signed=True)`: the code of the nested (double) quantization, 256 ascending values. */
export const DYNAMIC_MAP_SIGNED: Float32Array = createDynamicMap(true);

// ------------------------------------------------------------------------------------------------
// types
// ------------------------------------------------------------------------------------------------

/** Options of {@link quantize4bit}. */
export interface Quant4Options {
  /** Elements per absmax block; one of {@link BLOCKSIZES_4BIT}. Default 64 (bitsandbytes' default). */
  blocksize?: number;
  /** Data type. Default `'nf4'` (QLoRA; note bitsandbytes' own default is `'fp4'`). */
  quantType?: QuantType4;
  /** Double quantization (`compress_statistics=True`, `bnb_4bit_use_double_quant`). Default false. */
  doubleQuant?: boolean;
  /** Logical shape (row-major) recorded in the result; its product must equal `x.length`. */
  shape?: readonly number[];
}

/** The doubly-quantized absmax statistics (bitsandbytes `QuantState.state2` + `offset`). */
export interface NestedAbsmax {
  /** One 8-bit code per 4-bit block (the checkpoint's `weight.absmax`, uint8). */
  absmaxCodes: Uint8Array;
  /** float32 absmax of each run of `nestedBlocksize` centred absmax values (`weight.nested_absmax`). */
  nestedAbsmax: Float32Array;
  /** The float32 mean subtracted before quantizing (`nested_offset`). */
  offset: number;
  /** Codes per nested block: 256 (what `quantize_4bit` uses; a loaded checkpoint may say otherwise). */
  nestedBlocksize: number;
  /** The 8-bit code table, 256 ascending values (`weight.nested_quant_map`), normally {@link DYNAMIC_MAP_SIGNED}. */
  code: Float32Array;
}

/** A quantized tensor. Exactly one of `absmax` and `nested` is set. */
export interface Quant4 {
  /** ceil(numel / 2) bytes; element 2k in the high nibble of byte k (checkpoint `weight`, shape [n/2, 1]). */
  packed: Uint8Array;
  /** float32 absmax per block, ceil(numel / blocksize) values — without double quantization. */
  absmax?: Float32Array;
  /** The doubly-quantized absmax — with double quantization. */
  nested?: NestedAbsmax;
  blocksize: number;
  quantType: QuantType4;
  /** Number of elements of the original tensor. */
  numel: number;
  /** Original shape (row-major), when known. */
  shape?: number[];
}

/** The fields of a packed `quant_state.bitsandbytes__<type>` tensor ({@link unpackQuantState}). */
export interface QuantStateInfo {
  quantType: QuantType4;
  blocksize: number;
  /** dtype of the tensor before quantization (and of the dequantized result in bitsandbytes). */
  dtype: string;
  shape: number[];
  /** Present when the absmax is doubly quantized. */
  nested?: { blocksize: number; dtype: string; offset: number };
}

// ------------------------------------------------------------------------------------------------
// validation helpers
// ------------------------------------------------------------------------------------------------

function checkBlocksize(blocksize: number, allowed: readonly number[], field: string): void {
  if (!allowed.includes(blocksize)) {
    throw new PeftError('unsupported blocksize', { field, expected: `one of ${allowed.join(', ')}`, found: String(blocksize) });
  }
}

function checkQuantType(t: unknown, field: string): asserts t is QuantType4 {
  if (t !== 'nf4' && t !== 'fp4') {
    throw new PeftError('unsupported 4-bit quant type', { field, expected: "'nf4' or 'fp4'", found: String(t) });
  }
}

function checkShape(shape: readonly number[], numel: number, field: string): number[] {
  let p = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new PeftError('bad shape', { field, expected: 'non-negative integer dimensions', found: JSON.stringify(shape) });
    }
    p *= d;
  }
  if (p !== numel) {
    throw new PeftError('shape does not match element count', { field, expected: `product ${numel}`, found: `${JSON.stringify(shape)} (product ${p})` });
  }
  return [...shape];
}

function nonFinite(i: number, v: number): never {
  throw new PeftError('cannot quantize a non-finite value', { field: `element ${i}`, expected: 'a finite number', found: String(v) });
}

/**
 * Per-block max |x| (float32), rejecting NaN and ±Infinity.
 * kQuantizeBlockwise: `fmaxf` over the block, starting below 0, so an all-zero block gives 0.
 */
function blockAbsmax(x: Float32Array, blocksize: number): Float32Array {
  const n = x.length;
  const nb = Math.ceil(n / blocksize);
  const out = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    const start = b * blocksize;
    const end = Math.min(start + blocksize, n);
    let m = 0;
    for (let i = start; i < end; i++) {
      const a = Math.abs(x[i]);
      if (a > m) m = a;
      else if (a !== a) nonFinite(i, x[i]);
    }
    if (m === Infinity) {
      for (let i = start; i < end; i++) if (!Number.isFinite(x[i])) nonFinite(i, x[i]);
    }
    out[b] = m;
  }
  return out;
}

// ------------------------------------------------------------------------------------------------
// 4-bit kernels
// ------------------------------------------------------------------------------------------------

/** dQuantizeNF4: binary decision tree on `x > t` (NaN -> 0). */
function nf4Code(x: number): number {
  if (x > N7) {
    if (x > N11) {
      if (x > N13) return x > N14 ? 15 : 14;
      return x > N12 ? 13 : 12;
    }
    if (x > N9) return x > N10 ? 11 : 10;
    return x > N8 ? 9 : 8;
  }
  if (x > N3) {
    if (x > N5) return x > N6 ? 7 : 6;
    return x > N4 ? 5 : 4;
  }
  if (x > N1) return x > N2 ? 3 : 2;
  return x > N0 ? 1 : 0;
}

/** dQuantizeFP4: sign bit 8 when x < 0 (not for -0.0 or NaN), tree on |x|. */
function fp4Code(x: number): number {
  const sign = x < 0 ? 8 : 0;
  const a = Math.abs(x);
  if (a > P3) {
    if (a > P5) return (a > P6 ? 3 : 2) + sign;
    return (a > P4 ? 5 : 4) + sign;
  }
  if (a > P1) return (a > P2 ? 7 : 6) + sign;
  return (a > P0 ? 1 : 0) + sign;
}

/**
 * Quantizes a float32 tensor to 4 bits per element (NF4 or FP4) in blocks, optionally with double
 * quantization of the per-block absmax — `bitsandbytes.functional.quantize_4bit(A, blocksize,
 * compress_statistics, quant_type)` as the CUDA kernel computes it:
 *   absmax_b = max |x| over block b; r = 1.0f / absmax_b (float32; +inf when absmax_b = 0);
 *   code = dQuantizeNF4/FP4(fround(x * r)). An all-zero block gives NaN, hence code 0 (NF4 -1.0,
 *   FP4 +0). For odd numel the last low nibble encodes the kernel's zero padding, code(0 * r).
 * With `doubleQuant`: offset = mean(absmax) (float64 sum, / n, rounded to float32 — bitsandbytes
 * uses torch's float32 `mean()`, whose last bit depends on the device), then the absmax - offset
 * values are quantized by {@link quantizeBlockwise} with blocksize 256 and {@link DYNAMIC_MAP_SIGNED}.
 *
 * @param x flat row-major float32 values (length = numel, may be 0)
 * @returns the packed codes and statistics; `shape` is `opts.shape` when given
 * @throws PeftError for an unsupported blocksize or quant type, a shape that does not match, or a
 *   NaN / ±Infinity element.
 */
export function quantize4bit(x: Float32Array, opts: Quant4Options = {}): Quant4 {
  const blocksize = opts.blocksize ?? 64;
  const quantType = opts.quantType ?? 'nf4';
  checkBlocksize(blocksize, BLOCKSIZES_4BIT, 'blocksize');
  checkQuantType(quantType, 'quantType');
  const shape = opts.shape === undefined ? undefined : checkShape(opts.shape, x.length, 'shape');
  const n = x.length;
  const absmax = blockAbsmax(x, blocksize);
  const packed = new Uint8Array((n + 1) >> 1);
  const code = quantType === 'nf4' ? nf4Code : fp4Code;
  for (let b = 0; b < absmax.length; b++) {
    const start = b * blocksize;
    const end = Math.min(start + blocksize, n);
    const r = Math.fround(1 / absmax[b]);
    let i = start;
    if (quantType === 'nf4') {
      for (; i + 1 < end; i += 2) {
        packed[i >> 1] = (nf4Code(Math.fround(x[i] * r)) << 4) | nf4Code(Math.fround(x[i + 1] * r));
      }
    } else {
      for (; i + 1 < end; i += 2) {
        packed[i >> 1] = (fp4Code(Math.fround(x[i] * r)) << 4) | fp4Code(Math.fround(x[i + 1] * r));
      }
    }
    // odd element count (only possible in the last block): pair with the kernel's 0 padding
    if (i < end) packed[i >> 1] = (code(Math.fround(x[i] * r)) << 4) | code(0 * r);
  }
  const q: Quant4 = { packed, blocksize, quantType, numel: n };
  if (shape !== undefined) q.shape = shape;
  if (opts.doubleQuant) q.nested = doubleQuantize(absmax);
  else q.absmax = absmax;
  return q;
}

/**
 * Double quantization of per-block absmax values (QLoRA §3 "Double Quantization"): offset =
 * mean(absmax) in float32, then 8-bit blockwise quantization of (absmax - offset) with blocksize 256
 * and the signed dynamic map.
 */
export function doubleQuantize(absmax: Float32Array): NestedAbsmax {
  let sum = 0;
  for (let i = 0; i < absmax.length; i++) sum += absmax[i];
  const offset = absmax.length === 0 ? 0 : Math.fround(sum / absmax.length);
  const centered = new Float32Array(absmax.length);
  for (let i = 0; i < absmax.length; i++) centered[i] = absmax[i] - offset;
  const { codes, absmax: nestedAbsmax } = quantizeBlockwise(centered, NESTED_BLOCKSIZE, DYNAMIC_MAP_SIGNED);
  return { absmaxCodes: codes, nestedAbsmax, offset, nestedBlocksize: NESTED_BLOCKSIZE, code: DYNAMIC_MAP_SIGNED };
}

/**
 * The float32 absmax of every 4-bit block: `q.absmax`, or for double quantization
 * `dequantize_blockwise(absmax_codes, state2) + offset` = fround(fround(code[c] * nestedAbsmax[i / 256]) + offset).
 * @returns ceil(numel / blocksize) values
 * @throws PeftError when `q` is inconsistent (see {@link checkQuant4}).
 */
export function dequantizeAbsmax(q: Quant4): Float32Array {
  checkQuant4(q);
  if (q.absmax !== undefined) return q.absmax;
  const nq = q.nested as NestedAbsmax;
  const out = dequantizeBlockwise(nq.absmaxCodes, nq.nestedAbsmax, nq.nestedBlocksize, nq.code);
  const off = nq.offset;
  for (let i = 0; i < out.length; i++) out[i] = out[i] + off;
  return out;
}

/**
 * Dequantizes to float32: element i = lut[code_i] * absmax[i / blocksize] (float32 product), with
 * the CUDA kernel's tables (NF4: {@link NF4_CODE}; FP4: {@link FP4_DEQUANT_LUT}, code 8 giving -0.0).
 * `bitsandbytes.functional.dequantize_4bit`.
 * @param out optional destination of length numel
 * @returns numel float32 values in the original row-major order
 * @throws PeftError when `q` is inconsistent or `out` has the wrong length.
 */
export function dequantize4bit(q: Quant4, out?: Float32Array): Float32Array {
  const absmax = dequantizeAbsmax(q);
  const n = q.numel;
  const res = out ?? new Float32Array(n);
  if (res.length !== n) {
    throw new PeftError('output buffer has the wrong length', { field: 'out', expected: String(n), found: String(res.length) });
  }
  const lut = q.quantType === 'nf4' ? NF4_CODE : FP4_DEQUANT_LUT;
  const p = q.packed;
  const bs = q.blocksize;
  for (let b = 0; b < absmax.length; b++) {
    const start = b * bs;
    const end = Math.min(start + bs, n);
    const s = absmax[b];
    let i = start;
    for (; i + 1 < end; i += 2) {
      const byte = p[i >> 1];
      res[i] = lut[byte >> 4] * s;
      res[i + 1] = lut[byte & 15] * s;
    }
    if (i < end) res[i] = lut[p[i >> 1] >> 4] * s;
  }
  return res;
}

/**
 * Checks that a {@link Quant4} is self-consistent (lengths, block size, quant type, exactly one of
 * `absmax` / `nested`).
 * @throws PeftError naming the inconsistent field.
 */
export function checkQuant4(q: Quant4): void {
  checkQuantType(q.quantType, 'quantType');
  if (!Number.isSafeInteger(q.blocksize) || q.blocksize <= 0 || q.blocksize % 2 !== 0) {
    throw new PeftError('bad blocksize', { field: 'blocksize', expected: 'a positive even integer', found: String(q.blocksize) });
  }
  if (!Number.isSafeInteger(q.numel) || q.numel < 0) {
    throw new PeftError('bad element count', { field: 'numel', expected: 'a non-negative integer', found: String(q.numel) });
  }
  if (q.shape !== undefined) checkShape(q.shape, q.numel, 'shape');
  const nb = Math.ceil(q.numel / q.blocksize);
  if (q.packed.length !== (q.numel + 1) >> 1) {
    throw new PeftError('packed codes have the wrong length', { field: 'packed', expected: `${(q.numel + 1) >> 1} bytes`, found: String(q.packed.length) });
  }
  if ((q.absmax === undefined) === (q.nested === undefined)) {
    throw new PeftError('exactly one of absmax and nested must be set', { field: 'absmax', found: q.absmax === undefined ? 'neither' : 'both' });
  }
  if (q.absmax !== undefined && q.absmax.length !== nb) {
    throw new PeftError('absmax has the wrong length', { field: 'absmax', expected: `${nb} (ceil(${q.numel} / ${q.blocksize}))`, found: String(q.absmax.length) });
  }
  if (q.nested !== undefined) {
    const nq = q.nested;
    if (nq.absmaxCodes.length !== nb) {
      throw new PeftError('absmax codes have the wrong length', { field: 'nested.absmaxCodes', expected: String(nb), found: String(nq.absmaxCodes.length) });
    }
    if (!Number.isSafeInteger(nq.nestedBlocksize) || nq.nestedBlocksize <= 0) {
      throw new PeftError('bad nested blocksize', { field: 'nested.nestedBlocksize', expected: 'a positive integer', found: String(nq.nestedBlocksize) });
    }
    const nn = Math.ceil(nb / nq.nestedBlocksize);
    if (nq.nestedAbsmax.length !== nn) {
      throw new PeftError('nested absmax has the wrong length', { field: 'nested.nestedAbsmax', expected: String(nn), found: String(nq.nestedAbsmax.length) });
    }
    if (nq.code.length !== 256) {
      throw new PeftError('nested code table has the wrong length', { field: 'nested.code', expected: '256', found: String(nq.code.length) });
    }
  }
}

// ------------------------------------------------------------------------------------------------
// 8-bit blockwise (the nested quantization)
// ------------------------------------------------------------------------------------------------

/**
 * 8-bit blockwise quantization with a 256-entry code: `bitsandbytes.functional.quantize_blockwise`
 * as the CUDA kernel computes it (kQuantizeBlockwise General8bit + dQuantize<0>):
 *   absmax_b = max |x|; v = fround(x * fround(1 / absmax_b)); binary search from pivot 127 with
 *   steps 64, 32, …, 1 on `v > code[pivot]`, then the float32 midpoint (neighbour + code[pivot]) * 0.5f
 *   decides: `v > mid` -> upper neighbour, `v < mid` -> lower neighbour, equal -> pivot. NaN -> 0.
 * @param x flat float32 values
 * @param blocksize one of {@link BLOCKSIZES_8BIT} (bitsandbytes' default 4096; the nested
 *   quantization uses 256)
 * @param code 256 ascending values (default {@link DYNAMIC_MAP_SIGNED})
 * @returns one code per element and the float32 absmax per block
 * @throws PeftError for a bad blocksize or code table, or a non-finite element.
 */
export function quantizeBlockwise(
  x: Float32Array,
  blocksize = 4096,
  code: Float32Array = DYNAMIC_MAP_SIGNED,
): { codes: Uint8Array; absmax: Float32Array } {
  checkBlocksize(blocksize, BLOCKSIZES_8BIT, 'blocksize');
  checkCode256(code);
  const n = x.length;
  const absmax = blockAbsmax(x, blocksize);
  const codes = new Uint8Array(n);
  const c255 = code[255];
  const c0 = code[0];
  for (let b = 0; b < absmax.length; b++) {
    const start = b * blocksize;
    const end = Math.min(start + blocksize, n);
    const r = Math.fround(1 / absmax[b]);
    for (let i = start; i < end; i++) {
      const v = Math.fround(x[i] * r);
      let pivot = 127;
      let upperPivot = 255;
      let lowerPivot = 0;
      let lower = -1;
      let upper = 1;
      let val = code[127];
      for (let s = 64; s > 0; s >>= 1) {
        if (v > val) {
          lowerPivot = pivot;
          lower = val;
          pivot += s;
        } else {
          upperPivot = pivot;
          upper = val;
          pivot -= s;
        }
        val = code[pivot];
      }
      if (upperPivot === 255) upper = c255;
      if (lowerPivot === 0) lower = c0;
      let res: number;
      if (v > val) {
        res = v > Math.fround(Math.fround(upper + val) * 0.5) ? upperPivot : pivot;
      } else {
        res = v < Math.fround(Math.fround(lower + val) * 0.5) ? lowerPivot : pivot;
      }
      codes[i] = res;
    }
  }
  return { codes, absmax };
}

/**
 * `dequantize_blockwise`: element i = fround(code[codes[i]] * absmax[i / blocksize]).
 * @throws PeftError when absmax has fewer than ceil(n / blocksize) values or the code is not 256 long.
 */
export function dequantizeBlockwise(
  codes: Uint8Array,
  absmax: Float32Array,
  blocksize = 4096,
  code: Float32Array = DYNAMIC_MAP_SIGNED,
): Float32Array {
  if (!Number.isSafeInteger(blocksize) || blocksize <= 0) {
    throw new PeftError('bad blocksize', { field: 'blocksize', expected: 'a positive integer', found: String(blocksize) });
  }
  if (code.length !== 256) {
    throw new PeftError('code table must have 256 values', { field: 'code', expected: '256', found: String(code.length) });
  }
  const n = codes.length;
  const nb = Math.ceil(n / blocksize);
  if (absmax.length !== nb) {
    throw new PeftError('absmax has the wrong length', { field: 'absmax', expected: String(nb), found: String(absmax.length) });
  }
  const out = new Float32Array(n);
  for (let b = 0; b < nb; b++) {
    const s = absmax[b];
    const end = Math.min((b + 1) * blocksize, n);
    for (let i = b * blocksize; i < end; i++) out[i] = code[codes[i]] * s;
  }
  return out;
}

function checkCode256(code: Float32Array): void {
  if (code.length !== 256) {
    throw new PeftError('code table must have 256 values', { field: 'code', expected: '256', found: String(code.length) });
  }
  for (let i = 1; i < 256; i++) {
    if (!(code[i] >= code[i - 1])) {
      throw new PeftError('code table must be ascending', { field: `code[${i}]`, expected: `>= ${code[i - 1]}`, found: String(code[i]) });
    }
  }
}

// ------------------------------------------------------------------------------------------------
// storage accounting
// ------------------------------------------------------------------------------------------------

/**
 * Storage bits per parameter of a quantized tensor: packed codes (8 bits per byte, so 4 bits per
 * element plus half a byte for odd counts) + absmax (32 bits per block), or with double
 * quantization 8 bits per block + 32 bits per nested block + 32 bits of offset.
 * With `includeCodebooks`, also the code tables a bitsandbytes checkpoint stores with every tensor
 * (`quant_map` 16 × 32 bits; `nested_quant_map` 256 × 32 bits) — constants shared by all tensors in
 * memory, hence off by default. (The quant-state JSON is not counted.)
 * Blocksize 64 with double quantization tends to 4 + 8/64 + 32/(64·256) = 4.127 bits (QLoRA §3).
 * @returns bits / numel (NaN for an empty tensor)
 */
export function bitsPerParameter(q: Quant4, opts: { includeCodebooks?: boolean } = {}): number {
  checkQuant4(q);
  let bitsTotal = 8 * q.packed.length;
  if (q.nested !== undefined) {
    bitsTotal += 8 * q.nested.absmaxCodes.length + 32 * q.nested.nestedAbsmax.length + 32;
    if (opts.includeCodebooks) bitsTotal += 32 * q.nested.code.length;
  } else {
    bitsTotal += 32 * (q.absmax as Float32Array).length;
  }
  if (opts.includeCodebooks) bitsTotal += 32 * 16;
  return bitsTotal / q.numel;
}

// ------------------------------------------------------------------------------------------------
// quant state (de)serialization
// ------------------------------------------------------------------------------------------------

/**
 * Formats a number as python's `repr(float)` (and so `json.dumps`) does: shortest round-trip digits,
 * fixed notation when the decimal exponent is in [-4, 16), else `d.ddde±XX`; integral values get
 * `.0`; NaN / ±Infinity as json.dumps writes them.
 */
export function formatPythonFloat(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  const [mant, expStr] = Math.abs(x).toExponential().split('e');
  const digits = mant.replace('.', '');
  const e = Number(expStr);
  const decpt = e + 1; // value = 0.DIGITS × 10^decpt
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) return `${sign}0.${'0'.repeat(-decpt)}${digits}`;
    if (decpt >= digits.length) return `${sign}${digits}${'0'.repeat(decpt - digits.length)}.0`;
    return `${sign}${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
  }
  const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
  const ea = Math.abs(e);
  return `${sign}${m}e${e < 0 ? '-' : '+'}${ea < 10 ? '0' : ''}${ea}`;
}

/**
 * The bytes of the `<prefix>.weight.quant_state.bitsandbytes__<quant_type>` tensor (uint8, 1-D):
 * `pack_dict_to_tensor` of the non-tensor items of `QuantState.as_dict(packed=True)`, i.e. the UTF-8
 * of python `json.dumps` of, in this order,
 *   {"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype", "nested_offset"]}
 * e.g. `{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [576, 1536],
 * "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0123}`.
 * @param shape the tensor's shape (default `q.shape`, else `[numel]`)
 * @param dtype the tensor's dtype before quantization (default 'float32')
 * @throws PeftError when `q` is inconsistent or the shape does not match numel.
 */
export function packQuantState(q: Quant4, shape?: readonly number[], dtype: TorchDtypeName = 'float32'): Uint8Array {
  checkQuant4(q);
  const shp = checkShape(shape ?? q.shape ?? [q.numel], q.numel, 'shape');
  if (dtype !== 'float32' && dtype !== 'float16' && dtype !== 'bfloat16') {
    throw new PeftError('unsupported dtype', { field: 'dtype', expected: "'float32', 'float16' or 'bfloat16'", found: String(dtype) });
  }
  let s = `{"quant_type": "${q.quantType}", "blocksize": ${q.blocksize}, "dtype": "${dtype}", "shape": [${shp.join(', ')}]`;
  if (q.nested !== undefined) {
    s += `, "nested_blocksize": ${q.nested.nestedBlocksize}, "nested_dtype": "float32", "nested_offset": ${formatPythonFloat(q.nested.offset)}`;
  }
  s += '}';
  return new TextEncoder().encode(s);
}

const QS_KEYS = new Set(['quant_type', 'blocksize', 'dtype', 'shape', 'nested_blocksize', 'nested_dtype', 'nested_offset']);

/**
 * Parses a packed quant state ({@link packQuantState}'s format, as bitsandbytes writes it), with the
 * checks of `QuantState.from_dict`. `nested_offset` is rounded to float32 (`torch.tensor(float(...))`).
 * @param bytes the uint8 tensor's bytes
 * @param where file / tensor name for error messages
 * @throws PeftError for invalid UTF-8 / JSON, unknown keys, or missing / mistyped fields.
 */
export function unpackQuantState(bytes: Uint8Array, where = 'quant_state'): QuantStateInfo {
  let obj: unknown;
  try {
    const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    // a quant state is a flat object; a deeply nested one would overflow the stack formatting errors
    if (jsonDepth(text) > 4) throw new Error(`nested ${jsonDepth(text)} levels deep (a quant state is a flat object)`);
    obj = JSON.parse(text);
  } catch (e) {
    throw new PeftError('quant state is not UTF-8 JSON', { field: where, expected: 'packed JSON (pack_dict_to_tensor)', found: (e as Error).message });
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
    throw new PeftError('quant state is not a JSON object', { field: where, found: typeof obj });
  }
  const d = obj as Record<string, unknown>;
  for (const k of Object.keys(d)) {
    if (!QS_KEYS.has(k)) throw new PeftError('unknown quant state key', { field: `${where}: ${k}`, expected: [...QS_KEYS].join(', '), found: k });
  }
  const int = (k: string): number => {
    const v = d[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      throw new PeftError('bad quant state field', { field: `${where}: ${k}`, expected: 'a positive integer', found: JSON.stringify(v) });
    }
    return v;
  };
  const str = (k: string): string => {
    const v = d[k];
    if (typeof v !== 'string') throw new PeftError('bad quant state field', { field: `${where}: ${k}`, expected: 'a string', found: JSON.stringify(v) });
    return v;
  };
  const quantType = d.quant_type;
  checkQuantType(quantType, `${where}: quant_type`);
  const shape = d.shape;
  if (!Array.isArray(shape) || !shape.every((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0)) {
    throw new PeftError('bad quant state field', { field: `${where}: shape`, expected: 'a list of non-negative integers', found: JSON.stringify(shape) });
  }
  const info: QuantStateInfo = { quantType, blocksize: int('blocksize'), dtype: str('dtype'), shape: shape as number[] };
  const nestedKeys = ['nested_blocksize', 'nested_dtype', 'nested_offset'].filter((k) => k in d);
  if (nestedKeys.length === 3) {
    const off = d.nested_offset;
    if (typeof off !== 'number') {
      throw new PeftError('bad quant state field', { field: `${where}: nested_offset`, expected: 'a number', found: JSON.stringify(off) });
    }
    info.nested = { blocksize: int('nested_blocksize'), dtype: str('nested_dtype'), offset: Math.fround(off) };
  } else if (nestedKeys.length !== 0) {
    throw new PeftError('incomplete nested quant state', { field: where, expected: 'nested_blocksize, nested_dtype and nested_offset together', found: nestedKeys.join(', ') });
  }
  return info;
}

/** The tensors bitsandbytes / transformers save for one 4-bit `Linear4bit` weight `<prefix>.weight`. */
export interface BnbWeightTensors {
  /** `<prefix>.weight`: the packed codes, uint8 [ceil(n/2), 1] (any quant_storage: the raw bytes). */
  weight: Uint8Array;
  /** `<prefix>.weight.absmax`: uint8 codes with double quantization, else float32. */
  absmax: Uint8Array | Float32Array;
  /** `<prefix>.weight.quant_map`: float32 [16]; checked against the standard table when given. */
  quantMap?: Float32Array;
  /** `<prefix>.weight.nested_absmax`: float32 [ceil(blocks / nested_blocksize)]. */
  nestedAbsmax?: Float32Array;
  /** `<prefix>.weight.nested_quant_map`: float32 [256]. */
  nestedQuantMap?: Float32Array;
  /** `<prefix>.weight.quant_state.bitsandbytes__nf4|fp4`: packed JSON bytes. */
  quantState: Uint8Array;
}

/**
 * Builds a {@link Quant4} from the tensors of a bitsandbytes 4-bit checkpoint (`Params4bit.from_prequantized`
 * / `QuantState.from_dict`). The dequantization uses the kernel tables, so a `quantMap` that differs
 * from {@link NF4_CODE} / {@link FP4_CODE} is rejected rather than silently ignored; the nested map
 * is used as stored.
 * @param where the weight's name (for error messages)
 * @throws PeftError for any inconsistency (lengths, dtypes, missing nested tensors, unknown type).
 */
export function quant4FromBnb(t: BnbWeightTensors, where = 'weight'): Quant4 {
  const info = unpackQuantState(t.quantState, `${where}.quant_state`);
  const numel = info.shape.reduce((a, b) => a * b, 1);
  if (t.quantMap !== undefined) {
    const ref = info.quantType === 'nf4' ? NF4_CODE : FP4_CODE;
    const ok = t.quantMap.length === 16 && t.quantMap.every((v, i) => v === ref[i]);
    if (!ok) {
      throw new PeftError('non-standard quant_map', { field: `${where}.quant_map`, expected: `bitsandbytes get_4bit_type('${info.quantType}')`, found: Array.from(t.quantMap).join(', ') });
    }
  }
  const q: Quant4 = { packed: t.weight, blocksize: info.blocksize, quantType: info.quantType, numel, shape: info.shape };
  if (info.nested !== undefined) {
    if (!(t.absmax instanceof Uint8Array)) {
      throw new PeftError('absmax must be uint8 codes with double quantization', { field: `${where}.absmax`, expected: 'U8', found: 'F32' });
    }
    if (t.nestedAbsmax === undefined || t.nestedQuantMap === undefined) {
      throw new PeftError('missing nested statistics', { field: where, expected: 'weight.nested_absmax and weight.nested_quant_map', found: 'absent' });
    }
    q.nested = {
      absmaxCodes: t.absmax, nestedAbsmax: t.nestedAbsmax, offset: info.nested.offset,
      nestedBlocksize: info.nested.blocksize, code: t.nestedQuantMap,
    };
  } else {
    if (!(t.absmax instanceof Float32Array)) {
      throw new PeftError('absmax must be float32 without double quantization', { field: `${where}.absmax`, expected: 'F32', found: 'U8' });
    }
    q.absmax = t.absmax;
  }
  try {
    checkQuant4(q);
  } catch (e) {
    if (e instanceof PeftError) throw new PeftError(`inconsistent 4-bit tensors: ${e.message}`, { field: where });
    throw e;
  }
  return q;
}
