import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeftError } from '../../src/errors.js';
import {
  bf16ToFloat32,
  dtypeSize,
  f16ToFloat32,
  float32ToBf16,
  float32ToF16,
  parseSafetensors,
  readModelWeights,
  readSafetensorsFile,
  serializeSafetensors,
  toFloat32,
  writeSafetensorsFile,
  type DType,
  type TensorEntry,
  type TensorToWrite,
} from '../../src/io/safetensors.js';
import { replaceDirAtomic, writeFileAtomic, writeFileAtomicWith, writeJsonAtomic } from '../../src/io/atomic.js';

const ROOT = join(import.meta.dirname, '..', '..');
const MODEL = join(ROOT, 'models', 'stories260K', 'model.safetensors');
const FIXTURES = join(ROOT, 'test', 'fixtures', 'stories260K');

const ALL_DTYPES: DType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'U16', 'U32', 'U64'];

/** A file from a header (object or raw JSON text or raw bytes) and a data section. */
function fileBytes(header: unknown, data: Uint8Array = new Uint8Array(0), headerLength?: number): Uint8Array {
  const json =
    header instanceof Uint8Array ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const out = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLength ?? json.byteLength), true);
  out.set(json, 8);
  out.set(data, 8 + json.byteLength);
  return out;
}

/** Runs `fn`, expects a PeftError whose message contains every part. */
function expectPeftError(fn: () => unknown, parts: string[]): PeftError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(PeftError);
  const message = (caught as PeftError).message;
  for (const part of parts) expect(message).toContain(part);
  return caught as PeftError;
}

function headerOf(bytes: Uint8Array): { n: number; text: string } {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  return { n, text: Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8') };
}

function patternBytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed * 7 + 3) & 0xff);
}

describe('dtypeSize', () => {
  it('gives bytes per element', () => {
    const sizes = Object.fromEntries(ALL_DTYPES.map((d) => [d, dtypeSize(d)]));
    expect(sizes).toEqual({ F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1, U16: 2, U32: 4, U64: 8 });
    expectPeftError(() => dtypeSize('Q4' as DType), ['unknown dtype', 'Q4']);
  });
});

describe('serialize / parse round trip', () => {
  it('round-trips every dtype with metadata', () => {
    const tensors: TensorToWrite[] = ALL_DTYPES.map((dtype, i) => ({
      name: `t.${dtype.toLowerCase()}`,
      dtype,
      shape: [2, 3],
      data: patternBytes(6 * dtypeSize(dtype), i),
    }));
    tensors.push({ name: 'scalar', dtype: 'F32', shape: [], data: new Float32Array([1.5]) });
    tensors.push({ name: 'empty', dtype: 'I32', shape: [0, 4], data: new Int32Array(0) });
    const bytes = serializeSafetensors(tensors, { format: 'pt', note: 'ünïcode "quoted"\n' });
    const parsed = parseSafetensors(bytes, 'mem.safetensors');
    expect(parsed.metadata).toEqual({ format: 'pt', note: 'ünïcode "quoted"\n' });
    expect(parsed.tensors.size).toBe(tensors.length);
    for (const t of tensors) {
      const e = parsed.tensors.get(t.name)!;
      expect(e.dtype).toBe(t.dtype);
      expect(e.shape).toEqual(t.shape);
      expect(e.file).toBe('mem.safetensors');
      expect(Buffer.from(e.data).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))).toBe(true);
      expect(e.data.buffer).toBe(bytes.buffer); // zero-copy view
    }
    expect(toFloat32(parsed.tensors.get('scalar')!)).toEqual(new Float32Array([1.5]));
  });

  it('orders the header like the rust serializer: dtype descending, then name by bytes; metadata first', () => {
    const t = (name: string, dtype: DType): TensorToWrite => ({ name, dtype, shape: [1], data: new Uint8Array(dtypeSize(dtype)) });
    const bytes = serializeSafetensors(
      [t('b', 'F32'), t('a', 'F16'), t('z', 'BOOL'), t('é', 'F32'), t('Z', 'F32'), t('c', 'U64'), t('a2', 'F32'), t('i', 'I64'), t('d', 'F64'), t('h', 'BF16')],
      { z: '1', a: '2' },
    );
    const { n, text } = headerOf(bytes);
    expect(n % 8).toBe(0);
    const json = text.trimEnd();
    expect(text.slice(json.length)).toMatch(/^ {0,7}$/);
    expect(Object.keys(JSON.parse(json))).toEqual(['__metadata__', 'c', 'i', 'd', 'Z', 'a2', 'b', 'é', 'h', 'a', 'z']);
    expect(json.startsWith('{"__metadata__":{"a":"2","z":"1"},"c":{"dtype":"U64","shape":[1],"data_offsets":[0,8]},')).toBe(true);
    expect(bytes.byteLength).toBe(8 + n + 8 + 8 + 8 + 4 * 4 + 2 + 2 + 1);
  });

  it('matches the rust crate serialization test vectors', () => {
    // safetensors/src/tensor.rs tests `test_serialization` and `test_empty`.
    const data = new Float32Array([0, 1, 2, 3, 4, 5]);
    const out = serializeSafetensors([{ name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], data }]);
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    expect(Buffer.from(out).equals(Buffer.concat([Buffer.from([64, 0, 0, 0, 0, 0, 0, 0]), Buffer.from(header), Buffer.from(data.buffer)]))).toBe(true);
    expect(Array.from(serializeSafetensors([]))).toEqual([8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]);
    const withMeta = serializeSafetensors([], { framework: 'pt' });
    expect(Buffer.from(withMeta).equals(Buffer.concat([Buffer.from([40, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"__metadata__":{"framework":"pt"}}     ')]))).toBe(true);
  });

  it('rejects bad tensors to write', () => {
    const ok = { name: 'x', dtype: 'F32' as DType, shape: [2], data: new Float32Array(2) };
    expectPeftError(() => serializeSafetensors([ok, ok]), ['x', 'duplicate tensor name']);
    expectPeftError(() => serializeSafetensors([{ ...ok, name: '__metadata__' }]), ['reserved tensor name']);
    expectPeftError(() => serializeSafetensors([{ ...ok, shape: [3] }]), ['x', 'data size does not match', '12 bytes', 'found 8 bytes']);
    expectPeftError(() => serializeSafetensors([{ ...ok, shape: [-2] }]), ['x.shape', 'bad shape']);
    expectPeftError(() => serializeSafetensors([{ ...ok, dtype: 'F8' as DType }]), ['x.dtype', 'unknown dtype', 'F8']);
    expectPeftError(() => serializeSafetensors([ok], { n: 1 as unknown as string }), ['__metadata__.n', 'not a string']);
  });
});

describe('files written by python safetensors', () => {
  it('reads stories260K model.safetensors', () => {
    const { tensors, metadata } = readSafetensorsFile(MODEL);
    expect(metadata).toEqual({ format: 'pt' });
    expect(tensors.size).toBe(47);
    const embed = tensors.get('model.embed_tokens.weight')!;
    expect(embed.dtype).toBe('F32');
    expect(embed.shape).toEqual([512, 64]);
    expect(embed.file).toBe(MODEL);
    const values = toFloat32(embed);
    expect(values.length).toBe(512 * 64);
    expect(values.buffer).toBe(embed.data.buffer); // aligned F32: zero-copy
    for (const v of [values[0], values[1], values[64 * 100 + 7], values[values.length - 1]]) expect(Number.isFinite(v)).toBe(true);
    expect(values.some((v) => v !== 0)).toBe(true);
    const norm = tensors.get('model.layers.0.input_layernorm.weight')!;
    expect(norm.shape).toEqual([64]);
    expect(toFloat32(norm).every(Number.isFinite)).toBe(true);
  });

  it('re-serializes base_logits.safetensors byte for byte', () => {
    const path = join(FIXTURES, 'base_logits.safetensors');
    const original = readFileSync(path);
    const { tensors, metadata } = parseSafetensors(original, path);
    expect(metadata).toEqual({ format: 'pt' });
    expect(tensors.get('logits')!.shape).toEqual([1, 46, 512]);
    const again = serializeSafetensors([...tensors.values()], metadata);
    expect(Buffer.from(again).equals(original)).toBe(true);
  });

  it.each(['adapter_model.safetensors', 'lora_grads.safetensors', 'lora_logits.safetensors', '../../../models/stories260K/model.safetensors'])(
    're-serializes %s byte for byte',
    (name) => {
      const path = join(FIXTURES, name);
      const original = readFileSync(path);
      const { tensors, metadata } = parseSafetensors(original, path);
      // reverse the input order: the writer must restore the reference order itself
      const again = serializeSafetensors([...tensors.values()].reverse(), metadata);
      expect(Buffer.from(again).equals(original)).toBe(true);
    },
  );
});

describe('malformed files', () => {
  const F = 'bad.safetensors';
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

  it('truncated file', () => {
    expectPeftError(() => parseSafetensors(new Uint8Array(5), F), [F, 'header length', 'truncated', 'at least 8 bytes', 'found 5 bytes']);
  });

  it('header length past the end of the file', () => {
    expectPeftError(() => parseSafetensors(fileBytes('{}', new Uint8Array(0), 1000), F), [F, 'header length', 'past the end', 'found 1000 bytes']);
  });

  it('header length over the 100 MB cap', () => {
    expectPeftError(() => parseSafetensors(fileBytes('{}', new Uint8Array(0), 200_000_000), F), [F, 'header length too large']);
  });

  it('header not UTF-8', () => {
    expectPeftError(() => parseSafetensors(fileBytes(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), F), [F, 'header', 'not valid UTF-8']);
  });

  it('header not JSON', () => {
    expectPeftError(() => parseSafetensors(fileBytes('{"a":'), F), [F, 'header', 'not valid JSON']);
  });

  it('header not an object', () => {
    expectPeftError(() => parseSafetensors(fileBytes('[1,2]'), F), [F, 'header', 'not a JSON object', 'found [1,2]']);
  });

  it('tensor entry not an object', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: 3 }), F), [F, 'w', 'not an object']);
  });

  it('unknown dtype', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: entry('Q4_K', [1], [0, 1]) }, new Uint8Array(1)), F), [F, 'w.dtype', 'unknown dtype', 'found "Q4_K"']);
  });

  it.each([[[-1]], [[1.5]], ['4'], [[2, null]]])('shape %j not an array of non-negative integers', (shape) => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: entry('U8', shape, [0, 4]) }, new Uint8Array(4)), F), [F, 'w.shape', 'bad shape', 'non-negative integers']);
  });

  it.each([[[4]], [[8, 0]], [[0, 4, 8]], [['0', '4']], [[-4, 0]]])('data_offsets %j not [begin, end] with begin <= end', (offsets) => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: entry('U8', [4], offsets) }, new Uint8Array(8)), F), [F, 'w.data_offsets', 'bad data_offsets', 'begin <= end']);
  });

  it('offsets outside the data section', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: entry('F32', [4], [0, 16]) }, new Uint8Array(8)), F), [F, 'w.data_offsets', 'outside the data section', 'end <= 8', 'found [0, 16]']);
  });

  it('byte length differs from shape x dtype size', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ w: entry('F32', [3], [0, 8]) }, new Uint8Array(8)), F), [F, 'w', 'does not match shape and dtype', 'expected 12 bytes', 'found 8 bytes']);
  });

  it('overlapping tensors', () => {
    const header = { a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) };
    expectPeftError(() => parseSafetensors(fileBytes(header, new Uint8Array(12)), F), [F, 'b', 'tensors overlap', 'sharing bytes with a']);
  });

  it('hole between tensors', () => {
    const header = { a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) };
    expectPeftError(() => parseSafetensors(fileBytes(header, new Uint8Array(12)), F), [F, 'b', 'hole', 'start at byte 4']);
  });

  it('trailing bytes after the last tensor', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ a: entry('F32', [1], [0, 4]) }, new Uint8Array(8)), F), [F, 'data section', 'trailing bytes', 'expected 4 bytes', 'found 8 bytes']);
  });

  it('__metadata__ value not a string', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ __metadata__: { format: 'pt', step: 3 } }), F), [F, '__metadata__.step', 'not a string', 'found 3']);
  });

  it('__metadata__ not an object', () => {
    expectPeftError(() => parseSafetensors(fileBytes({ __metadata__: 'pt' }), F), [F, '__metadata__', 'not an object']);
  });

  it('accepts tensors listed out of offset order, as the reference does', () => {
    const header = { b: entry('U8', [2], [2, 4]), a: entry('U8', [2], [0, 2]) };
    const parsed = parseSafetensors(fileBytes(header, Uint8Array.from([1, 2, 3, 4])), F);
    expect([...parsed.tensors.keys()]).toEqual(['a', 'b']);
    expect(Array.from(parsed.tensors.get('b')!.data)).toEqual([3, 4]);
  });

  it('missing file', () => {
    expectPeftError(() => readSafetensorsFile('/nonexistent/x.safetensors'), ['/nonexistent/x.safetensors', 'file not found']);
  });
});

describe('temporary directories', () => {
  let dir = '';
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'peft-io-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  const f32 = (name: string, values: number[]): TensorToWrite => ({ name, dtype: 'F32', shape: [values.length], data: new Float32Array(values) });

  function writeSharded(weightMap: Record<string, string>): void {
    writeSafetensorsFile(join(dir, 'model-00001-of-00002.safetensors'), [f32('a', [1, 2]), f32('b', [3])], { format: 'pt' });
    writeSafetensorsFile(join(dir, 'model-00002-of-00002.safetensors'), [f32('c', [4, 5, 6])], { format: 'pt' });
    writeJsonAtomic(join(dir, 'model.safetensors.index.json'), { metadata: { total_size: 24 }, weight_map: weightMap });
  }

  describe('readModelWeights', () => {
    it('reads a sharded checkpoint through the index', () => {
      writeSharded({ a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' });
      const weights = readModelWeights(dir);
      expect([...weights.keys()]).toEqual(['a', 'b', 'c']);
      expect(Array.from(toFloat32(weights.get('c')!))).toEqual([4, 5, 6]);
      expect(weights.get('c')!.file).toBe(join(dir, 'model-00002-of-00002.safetensors'));
      expect(Array.from(toFloat32(weights.get('a')!))).toEqual([1, 2]);
    });

    it('reads model.safetensors when present', () => {
      writeSafetensorsFile(join(dir, 'model.safetensors'), [f32('w', [7])]);
      expect(Array.from(toFloat32(readModelWeights(dir).get('w')!))).toEqual([7]);
    });

    it('names the tensor and shard when a listed tensor is missing', () => {
      writeSharded({ a: 'model-00001-of-00002.safetensors', c: 'model-00001-of-00002.safetensors' });
      expectPeftError(() => readModelWeights(dir), ['model-00001-of-00002.safetensors', 'c', 'missing from its shard']);
    });

    it('names a missing shard file', () => {
      writeSharded({ a: 'model-00003-of-00003.safetensors' });
      expectPeftError(() => readModelWeights(dir), ['model-00003-of-00003.safetensors', 'file not found']);
    });

    it('rejects a shard path outside the directory', () => {
      writeSharded({ a: '../model-00001-of-00002.safetensors' });
      expectPeftError(() => readModelWeights(dir), ['model.safetensors.index.json', 'weight_map.a', 'bad shard file name']);
    });

    it('rejects an index without weight_map and one that is not JSON', () => {
      writeFileSync(join(dir, 'model.safetensors.index.json'), '{"metadata":{}}');
      expectPeftError(() => readModelWeights(dir), ['model.safetensors.index.json', 'weight_map']);
      writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map":');
      expectPeftError(() => readModelWeights(dir), ['model.safetensors.index.json', 'invalid JSON']);
    });

    it('names the directory when there are no weights', () => {
      expectPeftError(() => readModelWeights(dir), [dir, 'no safetensors weights found', 'model.safetensors.index.json']);
    });
  });

  describe('atomic writes', () => {
    it('writes, overwrites, and leaves no temporary file', () => {
      const path = join(dir, 'out.bin');
      writeFileAtomic(path, 'first');
      writeFileAtomic(path, Uint8Array.from([1, 2, 3]));
      expect(Array.from(readFileSync(path))).toEqual([1, 2, 3]);
      expect(readdirSync(dir)).toEqual(['out.bin']);
    });

    it('keeps an existing file intact when the writer throws before the rename', () => {
      const path = join(dir, 'model.safetensors');
      writeFileAtomic(path, 'original');
      expect(() =>
        writeFileAtomicWith(path, (write) => {
          write(Buffer.from('partial new content'));
          expect(readdirSync(dir).some((n) => n.startsWith('model.safetensors.tmp-'))).toBe(true);
          throw new Error('disk on fire');
        }),
      ).toThrow('disk on fire');
      expect(readFileSync(path, 'utf8')).toBe('original');
      expect(readdirSync(dir)).toEqual(['model.safetensors']);
    });

    it('writeSafetensorsFile leaves an existing file intact on bad input', () => {
      const path = join(dir, 'w.safetensors');
      writeSafetensorsFile(path, [f32('w', [1])]);
      const before = readFileSync(path);
      expect(() => writeSafetensorsFile(path, [{ ...f32('w', [1]), shape: [2] }])).toThrow(PeftError);
      expect(readFileSync(path).equals(before)).toBe(true);
      expect(readdirSync(dir)).toEqual(['w.safetensors']);
    });

    it('writeJsonAtomic writes 2-space JSON with a trailing newline', () => {
      const path = join(dir, 'c.json');
      writeJsonAtomic(path, { r: 4, target: ['q', 'v'] });
      expect(readFileSync(path, 'utf8')).toBe('{\n  "r": 4,\n  "target": [\n    "q",\n    "v"\n  ]\n}\n');
      expectPeftError(() => writeJsonAtomic(path, undefined), [path, 'no JSON representation']);
    });

    it('replaceDirAtomic moves a new directory in and replaces an existing one', () => {
      const final = join(dir, 'adapter');
      const tmp1 = join(dir, 'adapter.tmp1');
      mkdirSync(tmp1);
      writeFileSync(join(tmp1, 'v'), '1');
      replaceDirAtomic(tmp1, final);
      expect(readFileSync(join(final, 'v'), 'utf8')).toBe('1');

      const tmp2 = join(dir, 'adapter.tmp2');
      mkdirSync(tmp2);
      writeFileSync(join(tmp2, 'v'), '2');
      replaceDirAtomic(tmp2, final);
      expect(readFileSync(join(final, 'v'), 'utf8')).toBe('2');
      expect(readdirSync(dir)).toEqual(['adapter']);
      expect(existsSync(tmp2)).toBe(false);

      expectPeftError(() => replaceDirAtomic(join(dir, 'missing'), final), [join(dir, 'missing'), 'does not exist']);
      expect(readFileSync(join(final, 'v'), 'utf8')).toBe('2');
    });
  });
});

describe('float conversions', () => {
  const f32Bits = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0];
  const half = (bits: number) => f16ToFloat32(Uint16Array.of(bits))[0];
  const toHalf = (x: number) => float32ToF16(Float32Array.of(x))[0];
  const bf = (bits: number) => bf16ToFloat32(Uint16Array.of(bits))[0];
  const toBf = (x: number) => float32ToBf16(Float32Array.of(x))[0];

  it('f16 to f32 on edge values', () => {
    expect(Object.is(half(0x0000), 0)).toBe(true);
    expect(Object.is(half(0x8000), -0)).toBe(true);
    expect(half(0x0001)).toBe(2 ** -24); // smallest subnormal
    expect(half(0x03ff)).toBe(1023 * 2 ** -24); // largest subnormal
    expect(half(0x0400)).toBe(2 ** -14); // smallest normal
    expect(half(0x3c00)).toBe(1);
    expect(half(0xc000)).toBe(-2);
    expect(half(0x3555)).toBe((1024 + 0x155) * 2 ** -12); // 0.333251953125
    expect(half(0x7bff)).toBe(65504); // max
    expect(half(0x7c00)).toBe(Infinity);
    expect(half(0xfc00)).toBe(-Infinity);
    expect(half(0x7e00)).toBeNaN();
    expect(half(0xfc01)).toBeNaN();
  });

  it('f32 to f16 on edge values, round to nearest even', () => {
    expect(toHalf(0)).toBe(0x0000);
    expect(toHalf(-0)).toBe(0x8000);
    expect(toHalf(2 ** -24)).toBe(0x0001);
    expect(toHalf(1023 * 2 ** -24)).toBe(0x03ff);
    expect(toHalf(65504)).toBe(0x7bff);
    expect(toHalf(65519)).toBe(0x7bff); // below the midpoint to 65536
    expect(toHalf(65520)).toBe(0x7c00); // midpoint, ties to even = inf
    expect(toHalf(1e10)).toBe(0x7c00);
    expect(toHalf(-Infinity)).toBe(0xfc00);
    expect(toHalf(NaN)).toBe(0x7e00);
    expect(toHalf(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (down)
    expect(toHalf(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (up)
    expect(toHalf(1 + 2 ** -11 + 2 ** -20)).toBe(0x3c01); // above tie -> up
    expect(toHalf(2 ** -25)).toBe(0x0000); // subnormal tie -> even 0
    expect(toHalf(3 * 2 ** -25)).toBe(0x0002); // subnormal tie -> even 2
    expect(toHalf(2 ** -25 + 2 ** -35)).toBe(0x0001);
    expect(toHalf(2 ** -26)).toBe(0x0000);
    expect(toHalf(-(2 ** -26))).toBe(0x8000);
    expect(toHalf(1023.5 * 2 ** -24)).toBe(0x0400); // subnormal rounds up into the smallest normal
    expect(toHalf(1 / 3)).toBe(0x3555);
  });

  it('f16 -> f32 -> f16 is the identity on every non-NaN half', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const back = float32ToF16(f16ToFloat32(all));
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      if (!isNaN && back[h] !== h) throw new Error(`half 0x${h.toString(16)} came back as 0x${back[h].toString(16)}`);
    }
  });

  it('bf16 to f32 on edge values', () => {
    expect(Object.is(bf(0x0000), 0)).toBe(true);
    expect(Object.is(bf(0x8000), -0)).toBe(true);
    expect(bf(0x0001)).toBe(2 ** -133); // smallest subnormal
    expect(bf(0x3f80)).toBe(1);
    expect(bf(0x7f7f)).toBe(Math.fround(2 ** 127 * (2 - 2 ** -7))); // max
    expect(bf(0x7f80)).toBe(Infinity);
    expect(bf(0xff80)).toBe(-Infinity);
    expect(bf(0x7fc0)).toBeNaN();
  });

  it('f32 to bf16 on edge values, round to nearest even as torch', () => {
    expect(toBf(0)).toBe(0x0000);
    expect(toBf(-0)).toBe(0x8000);
    expect(toBf(2 ** -133)).toBe(0x0001);
    expect(toBf(1)).toBe(0x3f80);
    expect(toBf(1 + 2 ** -8)).toBe(0x3f80); // tie -> even (down)
    expect(toBf(1 + 3 * 2 ** -8)).toBe(0x3f82); // tie -> even (up)
    expect(toBf(1 + 2 ** -8 + 2 ** -20)).toBe(0x3f81);
    expect(toBf(bf(0x7f7f))).toBe(0x7f7f);
    expect(toBf(3.4028234663852886e38)).toBe(0x7f80); // float32 max rounds to inf, as torch
    expect(toBf(Infinity)).toBe(0x7f80);
    expect(toBf(-Infinity)).toBe(0xff80);
    expect(toBf(NaN)).toBe(0x7fc0);
    expect(f32Bits(bf(toBf(-1.5)))).toBe(f32Bits(-1.5));
  });

  it('bf16 -> f32 -> bf16 is the identity on every non-NaN bf16', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const back = float32ToBf16(bf16ToFloat32(all));
    for (let h = 0; h < 65536; h++) {
      const isNaN = (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0;
      if (!isNaN && back[h] !== h) throw new Error(`bf16 0x${h.toString(16)} came back as 0x${back[h].toString(16)}`);
    }
  });

  describe('toFloat32', () => {
    const entry = (dtype: DType, data: Uint8Array, shape = [data.byteLength / dtypeSize(dtype)]): TensorEntry => ({ name: 'w', dtype, shape, data, file: 'f.safetensors' });
    const bytes = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

    it('converts F16, BF16 and F64', () => {
      expect(Array.from(toFloat32(entry('F16', bytes(Uint16Array.of(0x3c00, 0xc000, 0x7c00)))))).toEqual([1, -2, Infinity]);
      expect(Array.from(toFloat32(entry('BF16', bytes(Uint16Array.of(0x3f80, 0xc040)))))).toEqual([1, -3]);
      expect(Array.from(toFloat32(entry('F64', bytes(Float64Array.of(0.5, 1e300)))))).toEqual([0.5, Infinity]);
    });

    it('views aligned F32 data and copies unaligned data', () => {
      const aligned = bytes(Float32Array.of(1, 2, 3));
      expect(toFloat32(entry('F32', aligned)).buffer).toBe(aligned.buffer);
      const backing = new Uint8Array(13);
      backing.set(aligned, 1);
      const unaligned = backing.subarray(1);
      const copy = toFloat32(entry('F32', unaligned));
      expect(Array.from(copy)).toEqual([1, 2, 3]);
      expect(copy.buffer).not.toBe(backing.buffer);
      const halfUnaligned = new Uint8Array(5);
      halfUnaligned.set(bytes(Uint16Array.of(0x3c00, 0x4000)), 1);
      expect(Array.from(toFloat32(entry('F16', halfUnaligned.subarray(1))))).toEqual([1, 2]);
    });

    it('rejects integer dtypes, naming the tensor', () => {
      expectPeftError(() => toFloat32(entry('I32', new Uint8Array(4))), ['f.safetensors', 'w', 'cannot convert', 'found I32']);
    });
  });
});
