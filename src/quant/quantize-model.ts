/**
 * The QLoRA base: linear weights stored frozen in 4 bits (NF4 / FP4, bitsandbytes layout, see
 * `bnb-layout.md`) and multiplied by the native `gemmQ4`, which dequantizes inside the GEMM packing.
 *
 * - {@link toQ4Native} / {@link fromQ4Native}: between the quantizer's {@link Quant4} and the
 *   addon's {@link Q4Native} (same bytes, no copy).
 * - {@link quantizeWeight}: one f32 / bf16 {@link Weight} to a 'q4' Weight.
 * - {@link loadModelQuantized}: `loadModel` with every decoder linear weight quantized as it is
 *   read. Embeddings, norms, biases and `lm_head` stay float32 (as transformers / QLoRA do).
 * - {@link quantizationReport}: exact storage accounting.
 *
 * Load-time memory: weights are read per tensor (`readModelWeights(dir, { lazy: true })`, which
 * parses only the headers and reads each tensor's bytes on first access), so each linear weight is
 * read, quantized and dropped before the next one is read: the peak is the quantized model + the
 * float32 non-linear weights + a few copies of ONE tensor.
 */
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { readModelWeights, type DType } from '../io/safetensors.js';
import { loadConfig } from '../models/registry.js';
import { decoderLinears, norms, type CausalLM } from '../models/model.js';
import { buildModel, type LoadOptions } from '../models/load.js';
import type { Q4Native } from '../native/index.js';
import type { Weight } from '../tensor/index.js';
import {
  BLOCKSIZES_4BIT, bitsPerParameter, FP4_DEQUANT_LUT, NF4_CODE, quantize4bit,
  type Quant4, type QuantType4, type TorchDtypeName,
} from './nf4.js';

/** How linear weights are quantized. */
export interface QuantizeOptions {
  /** 4-bit data type. Default 'nf4'. */
  quantType?: QuantType4;
  /** Elements per absmax block, one of 32, 64, …, 4096. Default 64. */
  blocksize?: number;
  /** Quantize the absmax statistics again (8 bits, blocks of 256). Default true. */
  doubleQuant?: boolean;
}

/** {@link quantizeWeight}'s options. */
export interface QuantizeWeightOptions extends QuantizeOptions {
  /**
   * The checkpoint dtype the weight came from, recorded in the quant state a bnb checkpoint stores
   * (`"dtype"` of `quant_state.bitsandbytes__*`). Default: 'bfloat16' for bf16 storage, else 'float32'.
   */
  sourceDtype?: TorchDtypeName;
}

/** What a Q4Native was quantized as (kept beside it, the addon needs none of it). */
interface Q4Meta {
  quantType: QuantType4;
  sourceDtype: TorchDtypeName;
}

const q4Meta = new WeakMap<Q4Native, Q4Meta>();

/** Records the quant type and source dtype of a Q4Native (used when saving a checkpoint). */
export function setQ4Meta(q4: Q4Native, meta: Q4Meta): void {
  q4Meta.set(q4, meta);
}

/** The quant type of a Q4Native: recorded, else inferred from its 16-entry code table. */
export function q4QuantType(q4: Q4Native): QuantType4 {
  const m = q4Meta.get(q4);
  if (m) return m.quantType;
  if (q4.code.every((v, i) => v === NF4_CODE[i])) return 'nf4';
  if (q4.code.every((v, i) => v === FP4_DEQUANT_LUT[i])) return 'fp4';
  throw new PeftError('4-bit weight has a code table that is neither NF4 nor FP4', { field: 'q4.code', found: Array.from(q4.code).join(', ') });
}

/** The dtype the weight had before quantization (for the bnb quant state); 'float32' when unknown. */
export function q4SourceDtype(q4: Q4Native): TorchDtypeName {
  return q4Meta.get(q4)?.sourceDtype ?? 'float32';
}

/**
 * The addon's view of a quantized [rows, cols] matrix (row-major, as quantized). Shares the
 * arrays of `q`. The 16-entry code table is the CUDA dequantization LUT (NF4: {@link NF4_CODE};
 * FP4: {@link FP4_DEQUANT_LUT}, whose code 8 is −0.0), so `dequantQ4` / `gemmQ4` reproduce
 * `dequantize4bit` bit for bit.
 * @throws PeftError when rows × cols differs from `q.numel`.
 */
export function toQ4Native(q: Quant4, rows: number, cols: number): Q4Native {
  if (!Number.isSafeInteger(rows) || !Number.isSafeInteger(cols) || rows < 0 || cols < 0 || rows * cols !== q.numel) {
    throw new PeftError('matrix shape does not match the quantized element count', {
      field: 'shape', expected: `rows × cols = ${q.numel}`, found: `${rows} × ${cols}`,
    });
  }
  const code = q.quantType === 'nf4' ? NF4_CODE : FP4_DEQUANT_LUT;
  const out: Q4Native = { packed: q.packed, code, rows, cols, blocksize: q.blocksize, absmax: q.absmax ?? null };
  if (q.nested) {
    out.absmaxCodes = q.nested.absmaxCodes;
    out.nestedAbsmax = q.nested.nestedAbsmax;
    out.nestedCode = q.nested.code;
    out.nestedBlocksize = q.nested.nestedBlocksize;
    out.offset = q.nested.offset;
  }
  setQ4Meta(out, { quantType: q.quantType, sourceDtype: 'float32' });
  return out;
}

/** The {@link Quant4} behind a Q4Native (shares its arrays), with shape [rows, cols]. */
export function fromQ4Native(q4: Q4Native): Quant4 {
  const q: Quant4 = {
    packed: q4.packed, blocksize: q4.blocksize, quantType: q4QuantType(q4), numel: q4.rows * q4.cols, shape: [q4.rows, q4.cols],
  };
  if (q4.absmax) q.absmax = q4.absmax;
  else {
    if (!q4.absmaxCodes || !q4.nestedAbsmax || !q4.nestedCode || q4.offset === undefined) {
      throw new PeftError('4-bit weight has neither absmax nor complete nested statistics', { field: 'q4.absmax' });
    }
    q.nested = {
      absmaxCodes: q4.absmaxCodes, nestedAbsmax: q4.nestedAbsmax, offset: q4.offset,
      nestedBlocksize: q4.nestedBlocksize ?? 256, code: q4.nestedCode,
    };
  }
  return q;
}

function checkOptions(opts: QuantizeOptions): Required<QuantizeOptions> {
  const quantType = opts.quantType ?? 'nf4';
  const blocksize = opts.blocksize ?? 64;
  if (quantType !== 'nf4' && quantType !== 'fp4') {
    throw new PeftError('unsupported 4-bit quant type', { field: 'quantType', expected: "'nf4' or 'fp4'", found: String(quantType) });
  }
  if (!BLOCKSIZES_4BIT.includes(blocksize)) {
    throw new PeftError('unsupported blocksize', { field: 'blocksize', expected: `one of ${BLOCKSIZES_4BIT.join(', ')}`, found: String(blocksize) });
  }
  return { quantType, blocksize, doubleQuant: opts.doubleQuant ?? true };
}

/**
 * Quantizes a float32 or bfloat16 weight to 4 bits (bitsandbytes `quantize_4bit`, bit-exact; see
 * nf4.ts). A 'q4' weight is returned unchanged. The float32 values are only read.
 * @throws PeftError for a bad quant type / blocksize or a non-finite weight value.
 */
export function quantizeWeight(w: Weight, opts: QuantizeWeightOptions = {}): Weight {
  const o = checkOptions(opts);
  const d = w.data;
  if (d.kind === 'q4') return w;
  let values: Float32Array;
  if (d.kind === 'f32') values = d.tensor.data;
  else {
    values = new Float32Array(d.bits.length);
    const u = new Uint32Array(values.buffer);
    for (let i = 0; i < d.bits.length; i++) u[i] = d.bits[i] << 16;
  }
  const q = quantize4bit(values, { quantType: o.quantType, blocksize: o.blocksize, doubleQuant: o.doubleQuant });
  const q4 = toQ4Native(q, w.rows, w.cols);
  setQ4Meta(q4, { quantType: o.quantType, sourceDtype: opts.sourceDtype ?? (d.kind === 'bf16' ? 'bfloat16' : 'float32') });
  return { rows: w.rows, cols: w.cols, data: { kind: 'q4', q4 } };
}

/** The decoder's linear modules (every layer's, from the family's module map) — the ones QLoRA quantizes. */
export { decoderLinears };

/**
 * Quantizes, in place, every decoder linear weight of an already loaded model (not `lm_head`, not
 * the embeddings). Already quantized weights are left alone. Returns the number quantized.
 * Prefer {@link loadModelQuantized}, which never holds the float32 linear weights all at once.
 */
export function quantizeModel(model: CausalLM, opts: QuantizeOptions = {}): number {
  checkOptions(opts);
  let n = 0;
  for (const m of decoderLinears(model)) {
    if (m.weight.data.kind === 'q4') continue;
    m.weight = quantizeWeight(m.weight, opts);
    n++;
  }
  return n;
}

/** The torch dtype name of a safetensors dtype, for the quant state ('float32' for anything else). */
export function torchDtypeOf(d: DType): TorchDtypeName {
  return d === 'BF16' ? 'bfloat16' : d === 'F16' ? 'float16' : 'float32';
}

/** Whether config.json of `raw` declares a bitsandbytes-quantized checkpoint. */
export function isBnbQuantizedConfig(raw: Record<string, unknown>): boolean {
  const qc = raw.quantization_config as Record<string, unknown> | undefined;
  return typeof qc === 'object' && qc !== null && qc.quant_method === 'bitsandbytes';
}

/** {@link loadModelQuantized}'s options. */
export interface LoadQuantizedOptions extends QuantizeOptions {
  /**
   * Storage of the weights that stay unquantized (embeddings, lm_head): 'float32' (default — QLoRA
   * keeps them in the compute dtype) or 'auto' (a BF16 checkpoint keeps them bfloat16).
   */
  dtype?: LoadOptions['dtype'];
}

/**
 * Loads a causal LM with every decoder linear weight quantized to 4 bits as it is read (see this
 * module's header for the memory behaviour). Embeddings, norms, biases and `lm_head` are float32.
 * @throws PeftError for the errors of `loadModel`, bad options, or a checkpoint that is already
 *   bitsandbytes-quantized (load those with `loadBnbCheckpoint` from ./bnb-checkpoint.ts).
 */
export function loadModelQuantized(dir: string, opts: LoadQuantizedOptions = {}): CausalLM {
  const o = checkOptions(opts);
  const config = loadConfig(dir);
  if (isBnbQuantizedConfig(config.raw)) {
    throw new PeftError('checkpoint is already bitsandbytes-quantized', {
      file: join(dir, 'config.json'), field: 'quantization_config', expected: 'a float checkpoint (load this one with loadBnbCheckpoint)',
    });
  }
  const weights = readModelWeights(dir, { lazy: true });
  const dtypes = new Map<string, DType>();
  for (const [name, e] of weights) dtypes.set(name, e.dtype);
  return buildModel(config, weights, dir, {
    dtype: opts.dtype ?? 'float32',
    weightTransform: (name, w) => quantizeWeight(w, { ...o, sourceDtype: torchDtypeOf(dtypes.get(`${name}.weight`) ?? 'F32') }),
  });
}

// ------------------------------------------------------------------------------------------------
// accounting
// ------------------------------------------------------------------------------------------------

/** Storage of a model whose linear weights are (partly) 4-bit. All sizes in bytes. */
export interface QuantizationReport {
  /** Quant type of the quantized weights ('mixed' if they differ, null if none). */
  quantType: QuantType4 | 'mixed' | null;
  /** Block size of the quantized weights (null if none or mixed). */
  blocksize: number | null;
  /** Whether the quantized weights use double quantization (null if none or mixed). */
  doubleQuant: boolean | null;
  /** Number of 4-bit linear weights. */
  quantizedLayers: number;
  /** Parameters stored in 4 bits. */
  quantizedParams: number;
  /**
   * Exact storage bits per quantized parameter: packed codes + absmax (float32 per block, or 8-bit
   * codes + float32 nested absmax per 256 blocks + the float32 offset), summed over all quantized
   * weights and divided by {@link quantizedParams}. Includes the code tables only with
   * `includeCodebooks` (then it is what a bitsandbytes checkpoint stores, less the JSON state).
   */
  bitsPerParam: number;
  /** Bytes of the quantized weights, on the same basis as bitsPerParam (= bitsPerParam × params / 8). */
  quantizedBytes: number;
  /** Bytes of the per-tensor code tables (quant_map 16 × f32, nested_quant_map 256 × f32) a checkpoint stores. */
  codebookBytes: number;
  /** What the quantized weights would take in float32 (4 bytes per parameter). */
  float32BytesOfThoseLayers: number;
  /** quantizedBytes / float32BytesOfThoseLayers (= bitsPerParam / 32). */
  ratio: number;
  /** Parameters of every other weight (embeddings, norms, biases, unquantized linears such as lm_head). */
  unquantizedParams: number;
  /** Bytes of those other weights in their storage (f32 or bf16). */
  unquantizedBytes: number;
  /** All weights of the model as stored: quantizedBytes + unquantizedBytes (a tied lm_head counted once). */
  baseBytesTotal: number;
  /** All weights of the model in float32: 4 × (quantizedParams + unquantizedParams). */
  baseBytesFloat32: number;
}

/**
 * Storage accounting of a model's weights (see {@link QuantizationReport}).
 * @param opts.includeCodebooks count the per-tensor code tables in bitsPerParam / quantizedBytes.
 */
export function quantizationReport(model: CausalLM, opts: { includeCodebooks?: boolean } = {}): QuantizationReport {
  let qParams = 0, qBits = 0, codebookBytes = 0, qLayers = 0;
  let uParams = 0, uBytes = 0;
  const types = new Set<QuantType4>(), sizes = new Set<number>(), dq = new Set<boolean>();
  const seen = new Set<unknown>();
  const addTensor = (data: Float32Array | Uint16Array): void => {
    if (seen.has(data)) return;
    seen.add(data);
    uParams += data.length;
    uBytes += data.byteLength;
  };
  const addWeight = (w: Weight): void => {
    const d = w.data;
    if (d.kind === 'q4') {
      if (seen.has(d.q4)) return;
      seen.add(d.q4);
      const q = fromQ4Native(d.q4);
      qLayers++;
      qParams += q.numel;
      qBits += Math.round(bitsPerParameter(q) * q.numel);
      codebookBytes += 4 * 16 + (q.nested ? 4 * q.nested.code.length : 0);
      types.add(q.quantType);
      sizes.add(q.blocksize);
      dq.add(q.nested !== undefined);
    } else {
      addTensor(d.kind === 'f32' ? d.tensor.data : d.bits);
    }
  };
  const e = model.embedTokens;
  addTensor(e.kind === 'f32' ? e.tensor.data : e.bits);
  if (model.embedPositions) addTensor(model.embedPositions.weight.data);
  for (const n of norms(model)) {
    addTensor(n.weight.data);
    if (n.bias) addTensor(n.bias.data);
  }
  for (const m of [...decoderLinears(model), model.lmHead]) {
    addWeight(m.weight);
    if (m.bias) addTensor(m.bias.data);
  }
  const quantizedBytes = qBits / 8 + (opts.includeCodebooks ? codebookBytes : 0);
  const one = <T>(s: Set<T>): T | null => (s.size === 1 ? [...s][0] : null);
  return {
    quantType: types.size === 0 ? null : types.size === 1 ? [...types][0] : 'mixed',
    blocksize: one(sizes),
    doubleQuant: one(dq),
    quantizedLayers: qLayers,
    quantizedParams: qParams,
    bitsPerParam: qParams === 0 ? NaN : (quantizedBytes * 8) / qParams,
    quantizedBytes,
    codebookBytes,
    float32BytesOfThoseLayers: 4 * qParams,
    ratio: qParams === 0 ? NaN : quantizedBytes / (4 * qParams),
    unquantizedParams: uParams,
    unquantizedBytes: uBytes,
    baseBytesTotal: quantizedBytes + uBytes,
    baseBytesFloat32: 4 * (qParams + uParams),
  };
}
