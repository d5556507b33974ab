/**
 * Reader and writer for the safetensors format, with no dependency.
 *
 * Source: the format spec in https://github.com/huggingface/safetensors (README, "Format"), and the
 * reference implementation `safetensors/src/tensor.rs` for the details the spec leaves open.
 *
 * Layout: 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON header
 * `{"__metadata__": {str: str}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}, ...}`,
 * then the data section. Offsets are bytes relative to the start of the data section; tensors are
 * little-endian, row-major (C order).
 *
 * Reading follows the reference validation (`Metadata::validate` and `read_metadata`): header at
 * most 100,000,000 bytes; tensors, ordered by offsets, must tile the data section exactly — no
 * overlap, no hole, no trailing byte — and each byte length must equal product(shape) × dtype size.
 * Every file python `safetensors` writes satisfies these rules.
 *
 * Writing reproduces the reference serializer (`prepare` in tensor.rs) byte for byte:
 *   - tensors sorted by dtype in DESCENDING order of the rust `Dtype` enum (declared in increasing
 *     alignment order: BOOL < U8 < I8 < I16 < U16 < F16 < BF16 < I32 < U32 < F32 < F64 < I64 < U64),
 *     ties broken by name in ascending byte order (rust `String` ordering = UTF-8 bytes); so for
 *     the usual single-dtype checkpoint the order is simply by name;
 *   - data concatenated in that order with no padding, offsets starting at 0;
 *   - header = compact serde_json (no spaces) with `__metadata__` first (only when metadata is
 *     given), then the tensors in data order, each as {"dtype","shape","data_offsets"};
 *   - header padded with spaces (0x20) to a multiple of 8 bytes, N counting the padding.
 * `__metadata__` keys: the reference keeps them in a rust HashMap, so with two or more keys python
 * writes them in a random per-process order (safetensors issue #584). We write them sorted by
 * UTF-8 bytes (what the pending upstream fix, PR #790, does); with zero or one key — the usual
 * `{"format": "pt"}` — the output is identical to python's.
 *
 * All typed-array views assume a little-endian host (x86-64, arm64), as the format does.
 */
import { closeSync, existsSync, fstatSync } from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { basename, join } from 'node:path';
import { PeftError } from '../errors.js';
import { writeFileAtomicWith } from './atomic.js';
import { jsonDepth, openRegularFile, readExactly, readJsonFile } from './files.js';

/** Element types this module reads and writes (the safetensors names). */
export type DType =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U8'
  | 'BOOL'
  | 'U16'
  | 'U32'
  | 'U64';

/** Bytes per element of each dtype. */
const DTYPE_SIZE: Readonly<Record<DType, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8,
};

/** Position of each dtype in the rust `Dtype` enum (tensor.rs); the writer sorts by it, descending. */
const DTYPE_RANK: Readonly<Record<DType, number>> = {
  BOOL: 0, U8: 1, I8: 2, I16: 3, U16: 4, F16: 5, BF16: 6, I32: 7, U32: 8, F32: 9, F64: 10, I64: 11, U64: 12,
};

const DTYPES = Object.keys(DTYPE_SIZE).join(', ');

/** Largest header the reference reader accepts (`MAX_HEADER_SIZE` in tensor.rs). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor of a parsed file. */
export interface TensorEntry {
  name: string;
  dtype: DType;
  /** Dimensions, outermost first (row-major). `[]` is a scalar. */
  shape: number[];
  /** The tensor's bytes: a zero-copy view into the file's buffer (little-endian). */
  data: Uint8Array;
  /** The file the tensor was read from (used in error messages). */
  file: string;
}

/** A parsed safetensors file. */
export interface SafetensorsContents {
  /** Tensors by name, in data-offset order (the order the file stores them). */
  tensors: Map<string, TensorEntry>;
  /** The `__metadata__` string map; `{}` when the header has none. */
  metadata: Record<string, string>;
}

/** A tensor to serialize; `data` holds exactly product(shape) × dtypeSize(dtype) bytes, little-endian. */
export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: ArrayBufferView;
}

/** Whether `value` is one of the supported dtype names. */
export function isDType(value: unknown): value is DType {
  return typeof value === 'string' && Object.hasOwn(DTYPE_SIZE, value);
}

/**
 * Bytes per element of `dtype` (1, 2, 4 or 8), per the safetensors spec's dtype list.
 * Throws a {@link PeftError} for a name outside {@link DType} (possible from untyped callers).
 */
export function dtypeSize(dtype: DType): number {
  if (!isDType(dtype)) {
    throw new PeftError('unknown dtype', { field: 'dtype', expected: `one of ${DTYPES}`, found: String(dtype) });
  }
  return DTYPE_SIZE[dtype];
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/** Tensor header entry after field validation, before the layout check. */
interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parses a whole safetensors file held in memory (format: safetensors README, "Format").
 * Tensor `data` fields are zero-copy views into `bytes`; `file` is only used in messages.
 *
 * Throws a {@link PeftError} naming `file`, the field (`header length`, `header`, `__metadata__`
 * or the tensor name) and what was expected and found, when: the file is shorter than 8 bytes;
 * the header length exceeds 100,000,000 or runs past the end of the file; the header is not UTF-8,
 * not JSON, or not a JSON object; `__metadata__` is not an object of strings; a tensor entry is not
 * an object, has an unknown dtype, a shape that is not an array of non-negative integers, or
 * data_offsets that are not two non-negative integers with begin <= end; its offsets reach past the
 * data section; its byte length differs from product(shape) × dtype size; two tensors share bytes;
 * a hole is left between tensors; or bytes follow the last tensor.
 */
export function parseSafetensors(bytes: Uint8Array, file: string): SafetensorsContents {
  const { metadata, infos, dataStart } = parseHeader(bytes, bytes.byteLength, file);
  const tensors = new Map<string, TensorEntry>();
  for (const t of infos) {
    const data = bytes.subarray(dataStart + t.begin, dataStart + t.end);
    tensors.set(t.name, { name: t.name, dtype: t.dtype, shape: t.shape, data, file });
  }
  return { tensors, metadata };
}

/** Header checks shared by the in-memory and the per-tensor reader; `prefix` holds at least the 8 + N header bytes. */
function parseHeader(prefix: Uint8Array, fileSize: number, file: string): { metadata: Record<string, string>; infos: TensorInfo[]; dataStart: number } {
  const headerLength = readHeaderLength(prefix, file, fileSize);
  const header = decodeHeader(prefix.subarray(8, 8 + headerLength), file);
  const dataStart = 8 + headerLength;
  const dataLength = fileSize - dataStart;
  let metadata: Record<string, string> = {};
  const infos: TensorInfo[] = [];
  for (const [key, value] of Object.entries(header)) {
    if (key === '__metadata__') metadata = parseMetadata(value, file);
    else infos.push(parseTensorInfo(key, value, dataLength, file));
  }
  checkLayout(infos, dataLength, file);
  return { metadata, infos, dataStart };
}

/**
 * Like {@link readSafetensorsFile} (the same checks, the same errors) but reads only the header
 * up front: each tensor's `data` is read from disk on first access, into a buffer of its own, so
 * loading a model never holds the whole file and a copy of it at once.
 */
export function readSafetensorsLazy(path: string): SafetensorsContents {
  const fd = openExisting(path);
  let size: number;
  let prefix: Uint8Array;
  try {
    size = fstatSync(fd).size;
    const head = readAt(fd, 0, Math.min(8, size), path);
    const n = size >= 8 ? Number(new DataView(head.buffer).getBigUint64(0, true)) : 0;
    prefix = size >= 8 && n <= MAX_HEADER_BYTES && 8 + n <= size ? readAt(fd, 0, 8 + n, path) : head;
  } finally {
    closeSync(fd);
  }
  const { metadata, infos, dataStart } = parseHeader(prefix, size, path);
  const tensors = new Map<string, TensorEntry>();
  for (const t of infos) {
    let cache: Uint8Array | undefined;
    tensors.set(t.name, {
      name: t.name, dtype: t.dtype, shape: t.shape, file: path,
      get data(): Uint8Array {
        if (cache === undefined) {
          const f = openExisting(path);
          try {
            cache = readAt(f, dataStart + t.begin, t.end - t.begin, path);
          } finally {
            closeSync(f);
          }
        }
        return cache;
      },
    });
  }
  return { tensors, metadata };
}

/** Opens a regular file for reading; a missing file, a directory, a FIFO or a device is a PeftError naming it. */
function openExisting(path: string): number {
  return openRegularFile(path, 'a safetensors file').fd;
}

/** Reads `length` bytes at `position` into a new buffer of exactly that size. */
function readAt(fd: number, position: number, length: number, path: string): Uint8Array {
  return readExactly(fd, position, length, path);
}

/** The u64 header length N, checked against the file size and the reference's 100 MB cap. */
function readHeaderLength(bytes: Uint8Array, file: string, fileSize = bytes.byteLength): number {
  if (fileSize < 8 || bytes.byteLength < 8) {
    throw new PeftError('file truncated: no room for the 8-byte header length', {
      file,
      field: 'header length',
      expected: 'at least 8 bytes',
      found: `${fileSize} bytes`,
    });
  }
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) {
    throw new PeftError('header length too large', {
      file,
      field: 'header length',
      expected: `at most ${MAX_HEADER_BYTES} bytes`,
      found: `${n} bytes`,
    });
  }
  const length = Number(n);
  if (8 + length > fileSize) {
    throw new PeftError('header length runs past the end of the file', {
      file,
      field: 'header length',
      expected: `at most ${fileSize - 8} bytes (file is ${fileSize} bytes)`,
      found: `${length} bytes`,
    });
  }
  return length;
}

/** Decodes the header bytes as strict UTF-8 JSON and checks it is an object. */
function decodeHeader(headerBytes: Uint8Array, file: string): Record<string, unknown> {
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new PeftError('header is not valid UTF-8', { file, field: 'header', expected: 'UTF-8 JSON', found: 'invalid UTF-8 bytes' });
  }
  // a header nests 3 levels (object → entry → shape/offsets); a deep one would overflow the stack of
  // whatever walks it (even an error message's formatting)
  const depth = jsonDepth(text);
  if (depth > 8) throw new PeftError('header JSON nested too deeply', { file, field: 'header', expected: 'at most 8 levels (a safetensors header has 3)', found: `${depth} levels` });
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new PeftError('header is not valid JSON', {
      file,
      field: 'header',
      expected: 'a JSON object',
      found: `${(err as Error).message}; text starts ${JSON.stringify(text.slice(0, 40))}`,
    });
  }
  if (!isPlainObject(value)) {
    throw new PeftError('header is not a JSON object', { file, field: 'header', expected: 'a JSON object', found: describe(value) });
  }
  return value;
}

/** `__metadata__` must be an object whose values are all strings. */
function parseMetadata(value: unknown, file: string): Record<string, string> {
  if (!isPlainObject(value)) {
    throw new PeftError('metadata is not an object', { file, field: '__metadata__', expected: 'an object of strings', found: describe(value) });
  }
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'string') {
      throw new PeftError('metadata value is not a string', {
        file,
        field: `__metadata__.${key}`,
        expected: 'a string',
        found: describe(v),
      });
    }
  }
  return value as Record<string, string>;
}

/** Validates one tensor entry's fields, its bounds and its byte length. */
function parseTensorInfo(name: string, value: unknown, dataLength: number, file: string): TensorInfo {
  if (!isPlainObject(value)) {
    throw new PeftError('tensor entry is not an object', { file, field: name, expected: '{dtype, shape, data_offsets}', found: describe(value) });
  }
  const { dtype, shape, data_offsets: offsets } = value;
  if (!isDType(dtype)) {
    throw new PeftError('unknown dtype', { file, field: `${name}.dtype`, expected: `one of ${DTYPES}`, found: describe(dtype) });
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new PeftError('bad shape', { file, field: `${name}.shape`, expected: 'an array of non-negative integers', found: describe(shape) });
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0] > offsets[1]) {
    throw new PeftError('bad data_offsets', {
      file,
      field: `${name}.data_offsets`,
      expected: '[begin, end] with non-negative integers begin <= end',
      found: describe(offsets),
    });
  }
  const [begin, end] = offsets as [number, number];
  if (end > dataLength) {
    throw new PeftError('data_offsets outside the data section', {
      file,
      field: `${name}.data_offsets`,
      expected: `end <= ${dataLength} (data section size)`,
      found: `[${begin}, ${end}]`,
    });
  }
  const expectedBytes = product(shape) * DTYPE_SIZE[dtype];
  if (end - begin !== expectedBytes) {
    throw new PeftError('byte length does not match shape and dtype', {
      file,
      field: name,
      expected: `${expectedBytes} bytes (${dtype} [${shape.join(', ')}])`,
      found: `${end - begin} bytes`,
    });
  }
  return { name, dtype, shape, begin, end };
}

/**
 * Tensors ordered by offsets must tile [0, dataLength) exactly (reference `Metadata::validate`
 * plus its "incomplete buffer" check). Sorts `infos` in place into data order.
 */
function checkLayout(infos: TensorInfo[], dataLength: number, file: string): void {
  infos.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  let previous: TensorInfo | undefined;
  for (const t of infos) {
    if (t.begin < cursor) {
      throw new PeftError('tensors overlap', {
        file,
        field: t.name,
        expected: `data to start at or after byte ${cursor}, where ${previous?.name} ends`,
        found: `data_offsets [${t.begin}, ${t.end}] sharing bytes with ${previous?.name}`,
      });
    }
    if (t.begin > cursor) {
      throw new PeftError('hole in the data section before tensor', {
        file,
        field: t.name,
        expected: `data to start at byte ${cursor}`,
        found: `data_offsets [${t.begin}, ${t.end}]`,
      });
    }
    cursor = t.end;
    previous = t;
  }
  if (cursor !== dataLength) {
    throw new PeftError('trailing bytes after the last tensor', {
      file,
      field: 'data section',
      expected: `${cursor} bytes`,
      found: `${dataLength} bytes`,
    });
  }
}

/**
 * Reads and parses a safetensors file (see {@link parseSafetensors}); the whole file is read into
 * one buffer that the returned tensors view. Throws a {@link PeftError} naming `path` when it does
 * not exist, is a directory, is too large for one buffer, or is malformed.
 */
export function readSafetensorsFile(path: string): SafetensorsContents {
  return parseSafetensors(readWholeFile(path), path);
}

/**
 * Reads a file into one buffer. Uses fs.readFileSync, except above 2 GiB (its limit) where it reads
 * in chunks into a buffer of the file's size, so multi-GB checkpoints load too.
 */
function readWholeFile(path: string): Uint8Array {
  const { fd, size } = openRegularFile(path, 'a safetensors file');
  try {
    if (size > bufferConstants.MAX_LENGTH) {
      throw new PeftError('file too large for one buffer', {
        file: path,
        expected: `at most ${bufferConstants.MAX_LENGTH} bytes`,
        found: `${size} bytes`,
      });
    }
    // exactly the size fstat reported: a file growing while read cannot make this read unbounded
    return readExactly(fd, 0, size, path);
  } finally {
    closeSync(fd);
  }
}

/**
 * Reads a Hugging Face model's weights from `dir`: `model.safetensors` when present (as
 * transformers does, it wins), else the shards listed by `model.safetensors.index.json`
 * (`{"metadata": ..., "weight_map": {tensorName: "model-00001-of-00002.safetensors"}}`), each shard
 * read once. For a sharded checkpoint the result holds exactly the weight_map's tensors, in its
 * order. Tensor data are views into each file's buffer, or, with `lazy`, read per tensor on first
 * access ({@link readSafetensorsLazy}).
 *
 * Throws a {@link PeftError}: naming `dir` when neither file exists; naming the index when it is
 * not JSON, has no `weight_map` object, or maps a tensor to a non-string or a path that is not a
 * plain file name; naming the shard and the tensor when a listed tensor is missing from its shard;
 * and any error of {@link readSafetensorsFile} for a missing or malformed shard.
 */
export function readModelWeights(dir: string, opts: { lazy?: boolean } = {}): Map<string, TensorEntry> {
  const read = opts.lazy ? readSafetensorsLazy : readSafetensorsFile;
  const single = join(dir, 'model.safetensors');
  if (existsSync(single)) return read(single).tensors;
  const index = join(dir, 'model.safetensors.index.json');
  if (existsSync(index)) return readShardedWeights(dir, readWeightMap(index), read);
  throw new PeftError('no safetensors weights found', {
    file: dir,
    expected: 'model.safetensors or model.safetensors.index.json',
    found: 'neither',
  });
}

/** Parses a shard index into tensor name -> shard file name. */
function readWeightMap(indexPath: string): Map<string, string> {
  const index = readJsonFile(indexPath, { what: 'a safetensors index (JSON object with weight_map)' });
  const weightMap = isPlainObject(index) ? index.weight_map : undefined;
  if (!isPlainObject(weightMap)) {
    throw new PeftError('index has no weight_map object', {
      file: indexPath,
      field: 'weight_map',
      expected: 'an object {tensorName: shardFile}',
      found: describe(weightMap),
    });
  }
  const map = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard !== basename(shard) || shard === '.' || shard === '..') {
      throw new PeftError('bad shard file name', {
        file: indexPath,
        field: `weight_map.${tensor}`,
        expected: 'a file name in the same directory',
        found: describe(shard),
      });
    }
    map.set(tensor, shard);
  }
  return map;
}

/** Loads each shard once and picks the tensors the weight map assigns to it. */
function readShardedWeights(dir: string, weightMap: Map<string, string>, read: (path: string) => SafetensorsContents): Map<string, TensorEntry> {
  const shards = new Map<string, Map<string, TensorEntry>>();
  const out = new Map<string, TensorEntry>();
  for (const [tensor, shard] of weightMap) {
    let contents = shards.get(shard);
    if (contents === undefined) {
      contents = read(join(dir, shard)).tensors;
      shards.set(shard, contents);
    }
    const entry = contents.get(tensor);
    if (entry === undefined) {
      throw new PeftError('tensor listed in model.safetensors.index.json is missing from its shard', {
        file: join(dir, shard),
        field: tensor,
        expected: `tensor ${tensor} in ${shard}`,
        found: `${contents.size} other tensors`,
      });
    }
    out.set(tensor, entry);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

/**
 * The tensor's values as float32, element count product(shape), row-major.
 * F32: a zero-copy view when the data's byte offset is 4-aligned (always, for files the reference
 * writes and buffers read by this module), else a copy. F16 (IEEE binary16, subnormals, ±inf, NaN)
 * and BF16 (the upper 16 bits of a float32): converted exactly. F64: a copy rounded to nearest.
 * Throws a {@link PeftError} naming the file and tensor for any other dtype.
 */
export function toFloat32(entry: TensorEntry): Float32Array {
  switch (entry.dtype) {
    case 'F32':
      return typedView(entry.data, Float32Array);
    case 'F16':
      return f16ToFloat32(typedView(entry.data, Uint16Array));
    case 'BF16':
      return bf16ToFloat32(typedView(entry.data, Uint16Array));
    case 'F64':
      return Float32Array.from(typedView(entry.data, Float64Array));
    default:
      throw new PeftError('cannot convert tensor to float32', {
        file: entry.file,
        field: entry.name,
        expected: 'dtype F32, F16, BF16 or F64',
        found: entry.dtype,
      });
  }
}

interface TypedArrayClass<T> {
  readonly BYTES_PER_ELEMENT: number;
  new (buffer: ArrayBufferLike, byteOffset: number, length: number): T;
}

/** A typed view of `bytes` when aligned for `Ctor`, else a view of an aligned copy. */
function typedView<T>(bytes: Uint8Array, Ctor: TypedArrayClass<T>): T {
  const length = bytes.byteLength / Ctor.BYTES_PER_ELEMENT;
  if (bytes.byteOffset % Ctor.BYTES_PER_ELEMENT === 0) return new Ctor(bytes.buffer, bytes.byteOffset, length);
  // `new Uint8Array(bytes)` copies into a fresh buffer of its own; `bytes.slice()` would not when
  // `bytes` is a Node Buffer (Buffer#slice is a view, so `.buffer` would start at the file header)
  return new Ctor(new Uint8Array(bytes).buffer, 0, length);
}

/**
 * bfloat16 bit patterns to float32, exact (bf16 is the upper half of a float32; NaN payloads kept).
 * Output length equals input length.
 */
export function bf16ToFloat32(u16: Uint16Array): Float32Array {
  const out = new Float32Array(u16.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < u16.length; i++) bits[i] = u16[i] << 16;
  return out;
}

/**
 * float32 to bfloat16 bit patterns, rounding to nearest, ties to even, exactly as torch does
 * (c10::BFloat16 `round_to_nearest_even`): any NaN becomes 0x7FC0; values past the bf16 maximum
 * round to ±inf. Output length equals input length.
 */
export function float32ToBf16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    out[i] = (b & 0x7fffffff) > 0x7f800000 ? 0x7fc0 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

let halfTable: Float32Array | undefined;

/** float32 value of every binary16 bit pattern, built on first use (256 KiB). */
function halfToFloatTable(): Float32Array {
  if (halfTable === undefined) {
    halfTable = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfBitsToNumber(h);
  }
  return halfTable;
}

/** IEEE 754 binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. */
function halfBitsToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero and subnormals
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

/**
 * IEEE binary16 bit patterns to float32, exact (every half is a float32), including ±0,
 * subnormals, ±inf and NaN. Output length equals input length.
 */
export function f16ToFloat32(u16: Uint16Array): Float32Array {
  const table = halfToFloatTable();
  const out = new Float32Array(u16.length);
  for (let i = 0; i < u16.length; i++) out[i] = table[u16[i]];
  return out;
}

/**
 * float32 to IEEE binary16 bit patterns, rounding to nearest, ties to even (as torch's `.half()`):
 * overflow gives ±inf, underflow gives subnormals or ±0, NaN gives a quiet NaN with the sign kept.
 * Output length equals input length.
 */
export function float32ToF16(f32: Float32Array): Uint16Array {
  const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
  const out = new Uint16Array(f32.length);
  for (let i = 0; i < bits.length; i++) out[i] = floatBitsToHalf(bits[i]);
  return out;
}

function floatBitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | (mant === 0 ? 0x7c00 : 0x7e00);
  const e = exp - 127 + 15; // biased half exponent
  if (e >= 0x1f) return sign | 0x7c00;
  if (e >= 1) return sign | roundShift((e << 23) | mant, 13); // a carry out of the mantissa bumps e, up to inf
  if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
  return sign | roundShift(mant | 0x800000, 14 - e); // subnormal: value = (1.mant) × 2^(e-15)
}

/** `value >> shift`, rounded to nearest, ties to even. */
function roundShift(value: number, shift: number): number {
  const kept = value >>> shift;
  const rest = value & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  return rest > half || (rest === half && (kept & 1) === 1) ? kept + 1 : kept;
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** Header (length prefix + padded JSON) and tensor bytes in file order. */
interface PreparedFile {
  header: Uint8Array;
  chunks: Uint8Array[];
}

/**
 * Serializes tensors to safetensors bytes, identical to what python `safetensors` writes for the
 * same tensors and metadata (ordering rules in this module's header comment; format spec:
 * safetensors README "Format"). `metadata` undefined writes no `__metadata__`; `{}` writes an
 * empty one, as python does for None and {}. Input order does not matter.
 *
 * Throws a {@link PeftError} naming the tensor when a name repeats or is `__metadata__`, the dtype
 * is unknown, the shape is not an array of non-negative integers, or `data.byteLength` differs
 * from product(shape) × dtype size; naming the metadata key when a value is not a string.
 */
export function serializeSafetensors(tensors: TensorToWrite[], metadata?: Record<string, string>): Uint8Array {
  const { header, chunks } = prepare(tensors, metadata);
  const out = new Uint8Array(header.byteLength + chunks.reduce((n, c) => n + c.byteLength, 0));
  out.set(header, 0);
  let offset = header.byteLength;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

/**
 * Writes `tensors` as a safetensors file at `path`, atomically (temporary sibling, fsync, rename;
 * see writeFileAtomicWith in ./atomic.ts), streaming each tensor without building the whole file
 * in memory. Bytes are those of {@link serializeSafetensors}, which documents the errors; I/O errors
 * propagate and leave an existing `path` untouched.
 */
export function writeSafetensorsFile(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  const { header, chunks } = prepare(tensors, metadata);
  writeFileAtomicWith(path, (write) => {
    write(header);
    for (const c of chunks) write(c);
  });
}

function prepare(tensors: TensorToWrite[], metadata: Record<string, string> | undefined): PreparedFile {
  checkTensorsToWrite(tensors);
  const sorted = sortForWriting(tensors);
  const parts: string[] = [];
  if (metadata !== undefined) parts.push(`"__metadata__":${metadataJson(metadata)}`);
  let offset = 0;
  for (const t of sorted) {
    const end = offset + t.data.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${end}]}`,
    );
    offset = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const header = new Uint8Array(8 + padded).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(padded), true);
  header.set(json, 8);
  return { header, chunks: sorted.map((t) => bytesOf(t.data)) };
}

/** Rejects what the reference serializer would reject or what would produce an unreadable file. */
function checkTensorsToWrite(tensors: TensorToWrite[]): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === '__metadata__' || seen.has(t.name)) {
      throw new PeftError(t.name === '__metadata__' ? 'reserved tensor name' : 'duplicate tensor name', {
        field: t.name,
        expected: 'unique names other than __metadata__',
        found: t.name,
      });
    }
    seen.add(t.name);
    if (!isDType(t.dtype)) {
      throw new PeftError('unknown dtype', { field: `${t.name}.dtype`, expected: `one of ${DTYPES}`, found: String(t.dtype) });
    }
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) {
      throw new PeftError('bad shape', { field: `${t.name}.shape`, expected: 'an array of non-negative integers', found: describe(t.shape) });
    }
    const expected = product(t.shape) * DTYPE_SIZE[t.dtype];
    if (t.data.byteLength !== expected) {
      throw new PeftError('data size does not match shape and dtype', {
        field: t.name,
        expected: `${expected} bytes (${t.dtype} [${t.shape.join(', ')}])`,
        found: `${t.data.byteLength} bytes`,
      });
    }
  }
}

/** Reference order: dtype descending in the rust enum, then name ascending by UTF-8 bytes. */
function sortForWriting(tensors: TensorToWrite[]): TensorToWrite[] {
  const keyed = tensors.map((t) => ({ t, rank: DTYPE_RANK[t.dtype], name: Buffer.from(t.name, 'utf8') }));
  keyed.sort((a, b) => b.rank - a.rank || Buffer.compare(a.name, b.name));
  return keyed.map((k) => k.t);
}

/** `{"k":"v",...}` with keys sorted by UTF-8 bytes; serde_json and JSON.stringify escape strings alike. */
function metadataJson(metadata: Record<string, string>): string {
  const keys = Object.keys(metadata).sort((a, b) => Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8')));
  const entries = keys.map((k) => {
    const v = metadata[k];
    if (typeof v !== 'string') {
      throw new PeftError('metadata value is not a string', { field: `__metadata__.${k}`, expected: 'a string', found: describe(v) });
    }
    return `${JSON.stringify(k)}:${JSON.stringify(v)}`;
  });
  return `{${entries.join(',')}}`;
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A non-negative integer that a double holds exactly. */
function isCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function product(shape: number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Short description of a JSON value for error messages. */
function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
