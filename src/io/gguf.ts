/**
 * A small, strict GGUF (version 3) writer, and a reader used to check what it writes.
 *
 * Format (ggml `docs/gguf.md`; gguf-py `gguf_writer.py` is the reference writer): little-endian
 *   magic "GGUF" · u32 version (3) · u64 tensor count · u64 metadata count,
 *   metadata: string key · u32 value type · value (strings are u64 byte length + UTF-8, no NUL;
 *             arrays are u32 element type · u64 count · elements; bool is one byte 0/1),
 *   tensor infos: string name · u32 n_dims · u64 ne[0..n_dims) · u32 ggml type · u64 offset,
 *   zero padding to the alignment (`general.alignment`, default 32),
 *   tensor data, each tensor starting at its offset (relative to the data section), each padded
 *   to the alignment — gguf-py pads after the last tensor too, and so does this writer.
 *
 * Shapes: ggml lists dimensions innermost first (`ne[0]` is the row length), the reverse of the
 * numpy/torch shape. This module takes and returns numpy-order `shape` and writes `ne` reversed,
 * exactly as gguf-py does, so a [rows, cols] float32 matrix is written with ne = [cols, rows].
 *
 * The writer refuses anything llama.cpp's `gguf_init_from_file` would reject or silently
 * misread: duplicate keys or tensor names, tensor names of 64 bytes or more (GGML_MAX_NAME),
 * more than 4 dimensions, data whose length is not the product of the shape, integer values out
 * of range for their declared type, non-ASCII keys, a `general.alignment` that is not a power of
 * two. Values are typed explicitly by the caller (a JavaScript number alone does not say whether
 * a key is u32 or f32, and llama.cpp checks the type).
 */
import { constants as bufferConstants } from 'node:buffer';
import { PeftError } from '../errors.js';
import { writeFileAtomicWith } from './atomic.js';
import { readRegularFile } from './files.js';
import { bf16ToFloat32, f16ToFloat32, float32ToF16 } from './safetensors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;
/** GGML_MAX_NAME: tensor names must be shorter (the C struct holds a NUL-terminated char[64]). */
export const GGML_MAX_NAME = 64;
export const GGML_MAX_DIMS = 4;

/** GGUF metadata value types (gguf-py `GGUFValueType`). */
export const GgufValueType = {
  UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9,
  UINT64: 10, INT64: 11, FLOAT64: 12,
} as const;
export type GgufScalarType = Exclude<keyof typeof GgufValueType, 'ARRAY'>;

/** ggml tensor types this module writes or decodes (ids from ggml.h `enum ggml_type`). */
export const GgmlType = { F32: 0, F16: 1, BF16: 30 } as const;
export type GgmlTypeName = keyof typeof GgmlType;

/** A typed metadata value. Integers of 64 bits may be given as bigint. */
export type GgufValue =
  | { type: GgufScalarType; value: number | bigint | boolean | string }
  | { type: 'ARRAY'; itemType: GgufScalarType; value: Array<number | bigint | boolean | string> };

export interface GgufKV {
  key: string;
  value: GgufValue;
}

/** A tensor to write: numpy-order shape, float32 data, stored as F32 or F16. */
export interface GgufTensorToWrite {
  name: string;
  shape: number[];
  type: 'F32' | 'F16';
  data: Float32Array;
}

export interface GgufWriteOptions {
  /** Data alignment in bytes; a non-default value is also written as `general.alignment` (u32). */
  alignment?: number;
}

const TYPE_NAMES = Object.fromEntries(Object.entries(GgufValueType).map(([k, v]) => [v, k])) as Record<number, keyof typeof GgufValueType>;
const GGML_NAMES = Object.fromEntries(Object.entries(GgmlType).map(([k, v]) => [v, k])) as Record<number, GgmlTypeName>;
const GGML_SIZE: Record<GgmlTypeName, number> = { F32: 4, F16: 2, BF16: 2 };

const INT_RANGE: Partial<Record<GgufScalarType, [bigint, bigint]>> = {
  UINT8: [0n, 0xffn], INT8: [-0x80n, 0x7fn], UINT16: [0n, 0xffffn], INT16: [-0x8000n, 0x7fffn],
  UINT32: [0n, 0xffffffffn], INT32: [-0x80000000n, 0x7fffffffn],
  UINT64: [0n, 0xffffffffffffffffn], INT64: [-0x8000000000000000n, 0x7fffffffffffffffn],
};

/** Rounds n up to a multiple of align. */
export function alignUp(n: number, align: number): number {
  return Math.ceil(n / align) * align;
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** Growable little-endian byte buffer. */
class ByteWriter {
  private buf = new Uint8Array(1024);
  private view = new DataView(this.buf.buffer);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let cap = this.buf.length * 2;
    while (cap < this.length + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.length));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void { this.reserve(1); this.view.setUint8(this.length, v); this.length += 1; }
  i8(v: number): void { this.reserve(1); this.view.setInt8(this.length, v); this.length += 1; }
  u16(v: number): void { this.reserve(2); this.view.setUint16(this.length, v, true); this.length += 2; }
  i16(v: number): void { this.reserve(2); this.view.setInt16(this.length, v, true); this.length += 2; }
  u32(v: number): void { this.reserve(4); this.view.setUint32(this.length, v, true); this.length += 4; }
  i32(v: number): void { this.reserve(4); this.view.setInt32(this.length, v, true); this.length += 4; }
  f32(v: number): void { this.reserve(4); this.view.setFloat32(this.length, v, true); this.length += 4; }
  f64(v: number): void { this.reserve(8); this.view.setFloat64(this.length, v, true); this.length += 8; }
  u64(v: bigint): void { this.reserve(8); this.view.setBigUint64(this.length, v, true); this.length += 8; }
  i64(v: bigint): void { this.reserve(8); this.view.setBigInt64(this.length, v, true); this.length += 8; }
  bytes(b: Uint8Array): void { this.reserve(b.length); this.buf.set(b, this.length); this.length += b.length; }
  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(BigInt(b.length));
    this.bytes(b);
  }
  pad(align: number): void {
    const n = alignUp(this.length, align) - this.length;
    this.reserve(n);
    this.buf.fill(0, this.length, this.length + n);
    this.length += n;
  }
  result(): Uint8Array {
    return this.buf.subarray(0, this.length);
  }
}

function badValue(key: string, expected: string, found: unknown): never {
  throw new PeftError('invalid GGUF metadata value', { field: key, expected, found: typeof found === 'bigint' ? `${found}n` : JSON.stringify(found) ?? String(found) });
}

function writeScalar(w: ByteWriter, key: string, type: GgufScalarType, v: unknown): void {
  const range = INT_RANGE[type];
  if (range) {
    let b: bigint;
    if (typeof v === 'bigint') b = v;
    else if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v);
    else badValue(key, `an integer for ${type}`, v);
    if (b < range[0] || b > range[1]) badValue(key, `${type} in [${range[0]}, ${range[1]}]`, v);
    switch (type) {
      case 'UINT8': return w.u8(Number(b));
      case 'INT8': return w.i8(Number(b));
      case 'UINT16': return w.u16(Number(b));
      case 'INT16': return w.i16(Number(b));
      case 'UINT32': return w.u32(Number(b));
      case 'INT32': return w.i32(Number(b));
      case 'UINT64': return w.u64(b);
      default: return w.i64(b);
    }
  }
  switch (type) {
    case 'FLOAT32':
    case 'FLOAT64':
      if (typeof v !== 'number') badValue(key, `a number for ${type}`, v);
      return type === 'FLOAT32' ? w.f32(v) : w.f64(v);
    case 'BOOL':
      if (typeof v !== 'boolean') badValue(key, 'true or false for BOOL', v);
      return w.u8(v ? 1 : 0);
    case 'STRING':
      if (typeof v !== 'string') badValue(key, 'a string for STRING', v);
      return w.str(v);
    default:
      badValue(key, 'a GGUF value type', type);
  }
}

function checkKey(key: string): void {
  // gguf.md: keys are ASCII, at most 2^16 - 1 bytes, dot-separated lower_snake_case segments
  if (typeof key !== 'string' || key.length === 0 || key.length > 65535 || !/^[\x21-\x7e]+$/.test(key))
    throw new PeftError('invalid GGUF metadata key', { field: String(key), expected: 'a non-empty printable ASCII string of at most 65535 bytes' });
}

/**
 * Serializes a GGUF v3 file: metadata in the given order, tensors in the given order (offsets
 * assigned consecutively, each aligned). Returns the header (everything before the data section,
 * padded) and the tensor data chunks (each padded), so a caller can stream them.
 */
export function prepareGguf(metadata: GgufKV[], tensors: GgufTensorToWrite[], opts: GgufWriteOptions = {}): { header: Uint8Array; chunks: Uint8Array[] } {
  const alignment = opts.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment <= 0 || (alignment & (alignment - 1)) !== 0 || alignment > 0x7fffffff)
    throw new PeftError('invalid GGUF alignment', { field: 'general.alignment', expected: 'a power of two', found: String(alignment) });
  const kvs = [...metadata];
  if (kvs.some((kv) => kv.key === 'general.alignment'))
    throw new PeftError('set the alignment with the alignment option, not as a metadata key', { field: 'general.alignment' });
  if (alignment !== GGUF_DEFAULT_ALIGNMENT) kvs.push({ key: 'general.alignment', value: { type: 'UINT32', value: alignment } });
  const seen = new Set<string>();
  for (const kv of kvs) {
    checkKey(kv.key);
    if (seen.has(kv.key)) throw new PeftError('duplicate GGUF metadata key', { field: kv.key });
    seen.add(kv.key);
  }

  const w = new ByteWriter();
  w.u32(GGUF_MAGIC);
  w.u32(GGUF_VERSION);
  w.u64(BigInt(tensors.length));
  w.u64(BigInt(kvs.length));
  for (const { key, value } of kvs) {
    w.str(key);
    if (value.type === 'ARRAY') {
      if (!(value.itemType in GgufValueType) || value.itemType === ('ARRAY' as string)) badValue(key, 'a scalar array item type', value.itemType);
      if (!Array.isArray(value.value)) badValue(key, 'an array', value.value);
      w.u32(GgufValueType.ARRAY);
      w.u32(GgufValueType[value.itemType]);
      w.u64(BigInt(value.value.length));
      value.value.forEach((v, i) => writeScalar(w, `${key}[${i}]`, value.itemType, v));
    } else {
      if (!(value.type in GgufValueType)) badValue(key, 'a GGUF value type', value.type);
      w.u32(GgufValueType[value.type]);
      writeScalar(w, key, value.type, value.value);
    }
  }

  const names = new Set<string>();
  const chunks: Uint8Array[] = [];
  let offset = 0;
  for (const t of tensors) {
    const nameBytes = Buffer.byteLength(t.name, 'utf8');
    if (t.name.length === 0 || nameBytes >= GGML_MAX_NAME)
      throw new PeftError('GGUF tensor name too long or empty', { field: t.name, expected: `1 to ${GGML_MAX_NAME - 1} bytes`, found: `${nameBytes} bytes` });
    if (names.has(t.name)) throw new PeftError('duplicate GGUF tensor name', { field: t.name });
    names.add(t.name);
    if (!Array.isArray(t.shape) || t.shape.length < 1 || t.shape.length > GGML_MAX_DIMS || t.shape.some((d) => !Number.isSafeInteger(d) || d < 1))
      throw new PeftError('invalid GGUF tensor shape', { field: t.name, expected: `1 to ${GGML_MAX_DIMS} positive dimensions`, found: JSON.stringify(t.shape) });
    if (t.type !== 'F32' && t.type !== 'F16') throw new PeftError('unsupported GGUF tensor type for writing', { field: t.name, expected: 'F32 or F16', found: String(t.type) });
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (!(t.data instanceof Float32Array) || t.data.length !== n)
      throw new PeftError('tensor data does not match its shape', { field: t.name, expected: `${n} float32 values for shape [${t.shape}]`, found: t.data instanceof Float32Array ? `${t.data.length}` : typeof t.data });
    w.str(t.name);
    w.u32(t.shape.length);
    for (let j = t.shape.length - 1; j >= 0; j--) w.u64(BigInt(t.shape[j]));
    w.u32(GgmlType[t.type]);
    w.u64(BigInt(offset));
    const raw = t.type === 'F32' ? leBytesF32(t.data) : leBytesU16(float32ToF16(t.data));
    const padded = new Uint8Array(alignUp(raw.length, alignment));
    padded.set(raw);
    chunks.push(padded);
    offset += padded.length;
  }
  w.pad(alignment);
  return { header: w.result().slice(), chunks };
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function leBytesF32(a: Float32Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.length * 4);
  const v = new DataView(out.buffer);
  a.forEach((x, i) => v.setFloat32(i * 4, x, true));
  return out;
}

function leBytesU16(a: Uint16Array): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const out = new Uint8Array(a.length * 2);
  const v = new DataView(out.buffer);
  a.forEach((x, i) => v.setUint16(i * 2, x, true));
  return out;
}

/** The whole GGUF file as bytes (see {@link prepareGguf}). */
export function serializeGguf(metadata: GgufKV[], tensors: GgufTensorToWrite[], opts: GgufWriteOptions = {}): Uint8Array {
  const { header, chunks } = prepareGguf(metadata, tensors, opts);
  const out = new Uint8Array(header.length + chunks.reduce((s, c) => s + c.length, 0));
  out.set(header);
  let o = header.length;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** Writes a GGUF file atomically (temporary sibling + rename; see io/atomic.ts). */
export function writeGgufFile(path: string, metadata: GgufKV[], tensors: GgufTensorToWrite[], opts: GgufWriteOptions = {}): void {
  const { header, chunks } = prepareGguf(metadata, tensors, opts);
  writeFileAtomicWith(path, (write) => {
    write(header);
    for (const c of chunks) write(c);
  });
}

// ---------------------------------------------------------------------------------------------
// Reading (for tests and checks; strict: any structural problem is a PeftError naming the file)
// ---------------------------------------------------------------------------------------------

export type GgufReadValue = number | bigint | boolean | string | GgufReadValue[];

export interface GgufReadKV {
  key: string;
  type: keyof typeof GgufValueType;
  /** For arrays, the element type. */
  itemType?: keyof typeof GgufValueType;
  value: GgufReadValue;
}

export interface GgufReadTensor {
  name: string;
  /** numpy order (outermost first) */
  shape: number[];
  /** ggml order (ne[0] innermost) as stored */
  ne: number[];
  type: GgmlTypeName | `ggml_type_${number}`;
  /** Offset relative to the data section. */
  offset: number;
  /** Absolute file offset of the data. */
  fileOffset: number;
  byteLength: number;
}

export interface GgufContents {
  version: number;
  alignment: number;
  /** Metadata in file order. */
  kvs: GgufReadKV[];
  tensors: GgufReadTensor[];
  /** Byte offset of the data section. */
  dataOffset: number;
  bytes: Uint8Array;
}

class ByteReader {
  pos = 0;
  private view: DataView;
  constructor(readonly bytes: Uint8Array, readonly file: string) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  private need(n: number, what: string): void {
    if (this.pos + n > this.bytes.length)
      throw new PeftError('GGUF file is truncated', { file: this.file, field: what, expected: `${n} more bytes at offset ${this.pos}`, found: `${this.bytes.length - this.pos}` });
  }
  u8(w: string): number { this.need(1, w); return this.view.getUint8(this.pos++); }
  i8(w: string): number { this.need(1, w); return this.view.getInt8(this.pos++); }
  u16(w: string): number { this.need(2, w); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  i16(w: string): number { this.need(2, w); const v = this.view.getInt16(this.pos, true); this.pos += 2; return v; }
  u32(w: string): number { this.need(4, w); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  i32(w: string): number { this.need(4, w); const v = this.view.getInt32(this.pos, true); this.pos += 4; return v; }
  f32(w: string): number { this.need(4, w); const v = this.view.getFloat32(this.pos, true); this.pos += 4; return v; }
  f64(w: string): number { this.need(8, w); const v = this.view.getFloat64(this.pos, true); this.pos += 8; return v; }
  u64(w: string): bigint { this.need(8, w); const v = this.view.getBigUint64(this.pos, true); this.pos += 8; return v; }
  i64(w: string): bigint { this.need(8, w); const v = this.view.getBigInt64(this.pos, true); this.pos += 8; return v; }
  /** A u64 that must fit a JS number (counts, lengths, offsets). */
  size(w: string): number {
    const v = this.u64(w);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new PeftError('GGUF size field out of range', { file: this.file, field: w, found: String(v) });
    return Number(v);
  }
  str(w: string): string {
    const n = this.size(`${w} (length)`);
    this.need(n, w);
    const s = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(s);
    } catch {
      throw new PeftError('GGUF string is not valid UTF-8', { file: this.file, field: w, expected: 'UTF-8', found: 'invalid bytes' });
    }
  }
}

function readScalar(r: ByteReader, type: number, key: string): GgufReadValue {
  switch (TYPE_NAMES[type]) {
    case 'UINT8': return r.u8(key);
    case 'INT8': return r.i8(key);
    case 'UINT16': return r.u16(key);
    case 'INT16': return r.i16(key);
    case 'UINT32': return r.u32(key);
    case 'INT32': return r.i32(key);
    case 'FLOAT32': return r.f32(key);
    case 'FLOAT64': return r.f64(key);
    case 'UINT64': return r.u64(key);
    case 'INT64': return r.i64(key);
    case 'BOOL': {
      const b = r.u8(key);
      if (b > 1) throw new PeftError('invalid GGUF bool', { file: r.file, field: key, expected: '0 or 1', found: String(b) });
      return b === 1;
    }
    case 'STRING': return r.str(key);
    default: throw new PeftError('unknown GGUF value type', { file: r.file, field: key, found: String(type) });
  }
}

/** Parses GGUF bytes (version 2 or 3). */
export function parseGguf(bytes: Uint8Array, file = 'GGUF data'): GgufContents {
  const r = new ByteReader(bytes, file);
  const magic = r.u32('magic');
  if (magic !== GGUF_MAGIC) throw new PeftError('not a GGUF file', { file, field: 'magic', expected: '"GGUF"', found: `0x${magic.toString(16)}` });
  const version = r.u32('version');
  if (version !== 2 && version !== 3) throw new PeftError('unsupported GGUF version', { file, field: 'version', expected: '2 or 3', found: String(version) });
  const nTensors = r.size('tensor_count');
  const nKv = r.size('kv_count');
  const kvs: GgufReadKV[] = [];
  const keys = new Set<string>();
  for (let i = 0; i < nKv; i++) {
    const key = r.str(`kv ${i} key`);
    if (keys.has(key)) throw new PeftError('duplicate GGUF metadata key', { file, field: key });
    keys.add(key);
    const type = r.u32(key);
    if (TYPE_NAMES[type] === 'ARRAY') {
      const itemType = r.u32(key);
      const n = r.size(`${key} (count)`);
      if (TYPE_NAMES[itemType] === undefined) throw new PeftError('unknown GGUF array item type', { file, field: key, found: String(itemType) });
      const value: GgufReadValue[] = [];
      if (TYPE_NAMES[itemType] === 'ARRAY') throw new PeftError('nested GGUF arrays are not supported', { file, field: key });
      for (let j = 0; j < n; j++) value.push(readScalar(r, itemType, `${key}[${j}]`));
      kvs.push({ key, type: 'ARRAY', itemType: TYPE_NAMES[itemType], value });
    } else {
      if (TYPE_NAMES[type] === undefined) throw new PeftError('unknown GGUF value type', { file, field: key, found: String(type) });
      kvs.push({ key, type: TYPE_NAMES[type], value: readScalar(r, type, key) });
    }
  }
  const alignKv = kvs.find((k) => k.key === 'general.alignment');
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  if (alignKv) {
    if (alignKv.type !== 'UINT32' || typeof alignKv.value !== 'number' || alignKv.value === 0 || (alignKv.value & (alignKv.value - 1)) !== 0)
      throw new PeftError('invalid general.alignment', { file, field: 'general.alignment', expected: 'a UINT32 power of two', found: `${alignKv.type} ${String(alignKv.value)}` });
    alignment = alignKv.value;
  }
  const infos: Array<Omit<GgufReadTensor, 'fileOffset' | 'byteLength'> & { typeId: number }> = [];
  const names = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = r.str(`tensor ${i} name`);
    if (names.has(name)) throw new PeftError('duplicate GGUF tensor name', { file, field: name });
    names.add(name);
    const nDims = r.u32(name);
    if (nDims < 1 || nDims > GGML_MAX_DIMS) throw new PeftError('invalid GGUF tensor rank', { file, field: name, expected: `1 to ${GGML_MAX_DIMS}`, found: String(nDims) });
    const ne: number[] = [];
    for (let j = 0; j < nDims; j++) {
      const d = r.size(`${name} ne[${j}]`);
      if (d < 1) throw new PeftError('GGUF tensor has a zero dimension', { file, field: `${name} ne[${j}]`, expected: 'a dimension >= 1', found: String(d) });
      ne.push(d);
    }
    if (!Number.isSafeInteger(ne.reduce((a, b) => a * b, 1)))
      throw new PeftError('GGUF tensor element count out of range', { file, field: name, expected: `at most ${Number.MAX_SAFE_INTEGER} elements`, found: `ne [${ne.join(', ')}]` });
    const typeId = r.u32(name);
    if (GGML_NAMES[typeId] === undefined || !(GGML_NAMES[typeId] in GGML_SIZE))
      throw new PeftError('unsupported GGML tensor type', { file, field: `${name} type`, expected: `one of ${Object.keys(GGML_SIZE).join(', ')} (ids ${Object.keys(GGML_SIZE).map((k) => GgmlType[k as GgmlTypeName]).join(', ')})`, found: String(typeId) });
    const offset = r.size(`${name} offset`);
    if (offset % alignment !== 0) throw new PeftError('GGUF tensor offset is not aligned', { file, field: name, expected: `a multiple of ${alignment}`, found: String(offset) });
    infos.push({ name, ne, shape: [...ne].reverse(), type: GGML_NAMES[typeId] ?? `ggml_type_${typeId}`, offset, typeId });
  }
  const dataOffset = alignUp(r.pos, alignment);
  const tensors: GgufReadTensor[] = infos.map(({ typeId: _t, ...t }) => {
    const n = t.ne.reduce((a, b) => a * b, 1);
    const size = t.type in GGML_SIZE ? GGML_SIZE[t.type as GgmlTypeName] * n : 0;
    if (dataOffset + t.offset + size > bytes.length)
      throw new PeftError('GGUF tensor data extends past the end of the file', { file, field: t.name, expected: `${dataOffset + t.offset + size} bytes`, found: `${bytes.length}` });
    return { ...t, fileOffset: dataOffset + t.offset, byteLength: size };
  });
  // llama.cpp's gguf_init checks each tensor's offset against the running end of the previous one;
  // any two tensors sharing bytes mean a corrupt (or hostile) file
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < byOffset.length; i++) {
    const prev = byOffset[i - 1], t = byOffset[i];
    if (t.offset < prev.offset + prev.byteLength)
      throw new PeftError('GGUF tensors overlap', { file, field: t.name, expected: `data at or after offset ${prev.offset + prev.byteLength} (end of ${prev.name})`, found: `offset ${t.offset}` });
  }
  return { version, alignment, kvs, tensors, dataOffset, bytes };
}

/** Reads and parses a GGUF file. */
export function readGgufFile(path: string): GgufContents {
  const bytes = readRegularFile(path, { maxBytes: bufferConstants.MAX_LENGTH, what: 'a GGUF file' });
  return parseGguf(bytes, path);
}

/** The value of a metadata key, or undefined. */
export function ggufValue(g: GgufContents, key: string): GgufReadValue | undefined {
  return g.kvs.find((k) => k.key === key)?.value;
}

/** A tensor's data as float32 (F32, F16 and BF16 tensors). */
export function ggufTensorF32(g: GgufContents, name: string): Float32Array {
  const t = g.tensors.find((x) => x.name === name);
  if (!t) throw new PeftError('no such GGUF tensor', { field: name });
  const raw = g.bytes.subarray(t.fileOffset, t.fileOffset + t.byteLength);
  const n = t.ne.reduce((a, b) => a * b, 1);
  // a view with the tensor's own offset: g.bytes may be a Node Buffer whose slice() shares the file's buffer
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  if (t.type === 'F32') {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = view.getFloat32(i * 4, true);
    return out;
  }
  if (t.type === 'F16' || t.type === 'BF16') {
    const u = new Uint16Array(n);
    for (let i = 0; i < n; i++) u[i] = view.getUint16(i * 2, true);
    return t.type === 'F16' ? f16ToFloat32(u) : bf16ToFloat32(u);
  }
  throw new PeftError('cannot decode this GGUF tensor type', { field: name, expected: 'F32, F16 or BF16', found: t.type });
}
