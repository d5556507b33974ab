/**
 * NF4 / FP4 quantization against the numpy reference fixtures made by
 * scripts/fixtures/make_nf4_reference.py (bitsandbytes CUDA semantics): every comparison is bit for
 * bit (float32 bit patterns, so -0.0 vs +0.0 counts).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PeftError } from '../../src/errors.js';
import { readSafetensorsFile, toFloat32, type TensorEntry } from '../../src/io/safetensors.js';
import {
  DYNAMIC_MAP_SIGNED,
  FP4_CODE,
  FP4_DEQUANT_LUT,
  FP4_THRESHOLDS,
  NF4_CODE,
  NF4_THRESHOLDS,
  bitsPerParameter,
  createDynamicMap,
  dequantize4bit,
  dequantizeAbsmax,
  dequantizeBlockwise,
  formatPythonFloat,
  packQuantState,
  quant4FromBnb,
  quantize4bit,
  quantizeBlockwise,
  unpackQuantState,
  type Quant4,
  type QuantType4,
} from '../../src/quant/nf4.js';

const FIX = join(import.meta.dirname, '..', 'fixtures', 'nf4');

interface Case {
  name: string;
  file: string;
  kind: '4bit' | 'blockwise8';
  quant_type?: QuantType4;
  blocksize: number;
  numel: number;
  shape?: number[];
  double_quant?: boolean;
  offset?: number;
  quant_state_json?: string;
  dq_quant_state_json?: string;
}

const index = JSON.parse(readFileSync(join(FIX, 'index.json'), 'utf8')) as {
  cases: Case[];
  checkpoint: { dir: string; quantized_linears: string[]; original: string; dequantized: string };
};

function load(file: string): Map<string, TensorEntry> {
  return readSafetensorsFile(join(FIX, file)).tensors;
}
function f32(t: Map<string, TensorEntry>, name: string): Float32Array {
  const e = t.get(name);
  if (e === undefined) throw new Error(`missing tensor ${name}`);
  expect(e.dtype).toBe('F32');
  return toFloat32(e);
}
function u8(t: Map<string, TensorEntry>, name: string): Uint8Array {
  const e = t.get(name);
  if (e === undefined) throw new Error(`missing tensor ${name}`);
  expect(e.dtype).toBe('U8');
  return e.data;
}
/** float32 bit patterns, so equality is bit-for-bit (NaN payloads, signed zeros). */
function bitsOf(a: Float32Array): Uint32Array {
  return new Uint32Array(Float32Array.from(a).buffer);
}
function expectSameBits(actual: Float32Array, expected: Float32Array, what: string): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  const a = bitsOf(actual);
  const b = bitsOf(expected);
  let first = -1;
  let count = 0;
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  expect(count, `${what}: ${count} differ, first at ${first} (${actual[first]} vs ${expected[first]})`).toBe(0);
}
function expectSameBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  expect(actual.length, `${what}: length`).toBe(expected.length);
  let first = -1;
  let count = 0;
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      if (first < 0) first = i;
      count++;
    }
  }
  expect(count, `${what}: ${count} differ, first at ${first}`).toBe(0);
}

describe('code tables', () => {
  const t = load('tables.safetensors');
  it('NF4 / FP4 codes, dequant LUT and thresholds equal the reference bit for bit', () => {
    expectSameBits(NF4_CODE, f32(t, 'nf4_code'), 'nf4_code');
    expectSameBits(NF4_CODE, f32(t, 'nf4_dequant_lut'), 'nf4_dequant_lut');
    expectSameBits(FP4_CODE, f32(t, 'fp4_code'), 'fp4_code');
    expectSameBits(FP4_DEQUANT_LUT, f32(t, 'fp4_dequant_lut'), 'fp4_dequant_lut');
    expectSameBits(NF4_THRESHOLDS, f32(t, 'nf4_thresholds'), 'nf4_thresholds');
    expectSameBits(FP4_THRESHOLDS, f32(t, 'fp4_thresholds'), 'fp4_thresholds');
    expect(Object.is(FP4_CODE[8], 0)).toBe(true);
    expect(Object.is(FP4_DEQUANT_LUT[8], -0)).toBe(true);
  });
  it('the signed dynamic map equals create_dynamic_map() (torch float32) bit for bit', () => {
    expectSameBits(DYNAMIC_MAP_SIGNED, f32(t, 'dynamic_map_signed'), 'dynamic_map_signed');
    expectSameBits(createDynamicMap(true), DYNAMIC_MAP_SIGNED, 'createDynamicMap()');
    expect(DYNAMIC_MAP_SIGNED[127]).toBe(0);
    expect(DYNAMIC_MAP_SIGNED[255]).toBe(1);
  });
});

describe('4-bit cases', () => {
  for (const c of index.cases.filter((k) => k.kind === '4bit')) {
    it(`${c.name} (${c.quant_type}, blocksize ${c.blocksize}, numel ${c.numel})`, () => {
      const t = load(c.file);
      const x = f32(t, 'input');
      expect(x.length).toBe(c.numel);
      const q = quantize4bit(x, { blocksize: c.blocksize, quantType: c.quant_type, shape: c.shape });
      expectSameBytes(q.packed, u8(t, 'packed'), 'packed');
      expectSameBits(q.absmax as Float32Array, f32(t, 'absmax'), 'absmax');
      expectSameBits(dequantize4bit(q), f32(t, 'dequant'), 'dequant');
      const qs = packQuantState(q, c.shape, 'float32');
      expectSameBytes(qs, u8(t, 'quant_state'), 'quant_state');
      expect(new TextDecoder().decode(qs)).toBe(c.quant_state_json);

      if (c.double_quant) {
        const d = quantize4bit(x, { blocksize: c.blocksize, quantType: c.quant_type, doubleQuant: true, shape: c.shape });
        expect(d.absmax).toBeUndefined();
        const n = d.nested!;
        expectSameBytes(d.packed, q.packed, 'packed (double quant)');
        expectSameBytes(n.absmaxCodes, u8(t, 'dq.absmax_codes'), 'dq.absmax_codes');
        expectSameBits(n.nestedAbsmax, f32(t, 'dq.nested_absmax'), 'dq.nested_absmax');
        expectSameBits(Float32Array.of(n.offset), f32(t, 'dq.offset'), 'dq.offset');
        expect(n.offset).toBe(c.offset);
        expectSameBits(dequantizeAbsmax(d), f32(t, 'dq.absmax_dequant'), 'dq.absmax_dequant');
        expectSameBits(dequantize4bit(d), f32(t, 'dq.dequant'), 'dq.dequant');
        const dqs = packQuantState(d, c.shape, 'float32');
        expectSameBytes(dqs, u8(t, 'dq.quant_state'), 'dq.quant_state');
        expect(new TextDecoder().decode(dqs)).toBe(c.dq_quant_state_json);
        const info = unpackQuantState(u8(t, 'dq.quant_state'));
        expect(info).toEqual({
          quantType: c.quant_type, blocksize: c.blocksize, dtype: 'float32', shape: c.shape,
          nested: { blocksize: 256, dtype: 'float32', offset: n.offset },
        });
      }
    });
  }
});

describe('8-bit blockwise (nested) quantization', () => {
  for (const c of index.cases.filter((k) => k.kind === 'blockwise8')) {
    it(c.name, () => {
      const t = load(c.file);
      const x = f32(t, 'input');
      const { codes, absmax } = quantizeBlockwise(x, 256);
      expectSameBytes(codes, u8(t, 'codes'), 'codes');
      expectSameBits(absmax, f32(t, 'absmax'), 'absmax');
      expectSameBits(dequantizeBlockwise(codes, absmax, 256), f32(t, 'dequant'), 'dequant');
    });
  }
  it('ties at a midpoint go to the binary search pivot, which is sometimes the upper neighbour', () => {
    const c = DYNAMIC_MAP_SIGNED;
    const mids = new Float32Array(255);
    for (let i = 0; i < 255; i++) mids[i] = Math.fround(Math.fround(c[i] + c[i + 1]) * 0.5);
    const x = new Float32Array(256 * 2);
    x[0] = 1;
    x.set(mids.subarray(0, 255), 1);
    const { codes } = quantizeBlockwise(x.subarray(0, 256), 256);
    let up = 0;
    let down = 0;
    for (let i = 0; i < 255; i++) {
      if (codes[i + 1] === i + 1) up++;
      else if (codes[i + 1] === i) down++;
    }
    expect(up + down).toBe(255);
    expect(up).toBeGreaterThan(0);
    expect(down).toBeGreaterThan(0);
  });
});

describe('quant state packing', () => {
  it('unpacks what it packs, and bitsandbytes-format bytes', () => {
    const q = quantize4bit(new Float32Array(576).fill(0.5), { doubleQuant: true, shape: [24, 24] });
    const bytes = packQuantState(q, undefined, 'bfloat16');
    expect(new TextDecoder().decode(bytes)).toBe(
      '{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [24, 24], "nested_blocksize": 256, ' +
        '"nested_dtype": "float32", "nested_offset": 0.5}',
    );
    expect(unpackQuantState(bytes)).toEqual({
      quantType: 'nf4', blocksize: 64, dtype: 'bfloat16', shape: [24, 24],
      nested: { blocksize: 256, dtype: 'float32', offset: 0.5 },
    });
  });
  it('formats floats as python repr / json.dumps', () => {
    const cases: Array<[number, string]> = [
      [1e-5, '1e-05'], [0.0001, '0.0001'], [1e16, '1e+16'], [1234567890123456.0, '1234567890123456.0'],
      [1.5e-7, '1.5e-07'], [0.05151911824941635, '0.05151911824941635'], [2.4428458213806152, '2.4428458213806152'],
      [0, '0.0'], [-0, '-0.0'], [5e-324, '5e-324'], [1.7976931348623157e308, '1.7976931348623157e+308'],
      [123, '123.0'], [1e22, '1e+22'], [100, '100.0'], [0.1, '0.1'], [-3.25e-6, '-3.25e-06'],
      [1e15, '1000000000000000.0'], [Math.fround(1e-5), '9.999999747378752e-06'],
    ];
    for (const [v, s] of cases) expect(formatPythonFloat(v), String(v)).toBe(s);
  });
  it('rejects malformed quant states with PeftError', () => {
    const enc = (s: string) => new TextEncoder().encode(s);
    expect(() => unpackQuantState(enc('{"quant_type": "nf4"'))).toThrow(PeftError);
    expect(() => unpackQuantState(enc('{"quant_type": "int4", "blocksize": 64, "dtype": "float32", "shape": [2]}'))).toThrow(PeftError);
    expect(() => unpackQuantState(enc('{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2], "x": 1}'))).toThrow(PeftError);
    expect(() => unpackQuantState(enc('{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [2], "nested_offset": 0.1}'))).toThrow(PeftError);
    expect(() => unpackQuantState(Uint8Array.of(0xff, 0xfe))).toThrow(PeftError);
  });
});

describe('bnb-layout checkpoint (tiny Llama, nf4 + double quant)', () => {
  const ck = index.checkpoint;
  const model = readSafetensorsFile(join(FIX, ck.dir, 'model.safetensors')).tensors;
  const orig = load(ck.original);
  const deq = load(ck.dequantized);

  it('config.json carries the transformers quantization_config', () => {
    const cfg = JSON.parse(readFileSync(join(FIX, ck.dir, 'config.json'), 'utf8'));
    expect(cfg.quantization_config).toEqual({
      quant_method: 'bitsandbytes', _load_in_8bit: false, _load_in_4bit: true, llm_int8_threshold: 6.0,
      llm_int8_skip_modules: null, llm_int8_enable_fp32_cpu_offload: false, llm_int8_has_fp16_weight: false,
      bnb_4bit_quant_type: 'nf4', bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: 'float32',
      bnb_4bit_quant_storage: 'uint8', load_in_4bit: true, load_in_8bit: false,
    });
  });

  it('every linear layer loads, dequantizes and re-quantizes bit for bit', () => {
    expect(ck.quantized_linears.length).toBe(14);
    for (const p of ck.quantized_linears) {
      const w = model.get(`${p}.weight`)!;
      expect(w.dtype).toBe('U8');
      const shape = orig.get(`${p}.weight`)!.shape;
      expect(w.shape).toEqual([(shape[0] * shape[1] + 1) >> 1, 1]);
      const q = quant4FromBnb({
        weight: w.data,
        absmax: u8(model, `${p}.weight.absmax`),
        quantMap: f32(model, `${p}.weight.quant_map`),
        nestedAbsmax: f32(model, `${p}.weight.nested_absmax`),
        nestedQuantMap: f32(model, `${p}.weight.nested_quant_map`),
        quantState: u8(model, `${p}.weight.quant_state.bitsandbytes__nf4`),
      }, p);
      expect(q.shape).toEqual(shape);
      expectSameBits(dequantize4bit(q), f32(deq, `${p}.weight`), `${p} dequant`);
      const r = quantize4bit(f32(orig, `${p}.weight`), { doubleQuant: true, shape });
      expectSameBytes(r.packed, w.data, `${p} packed`);
      expectSameBytes(r.nested!.absmaxCodes, q.nested!.absmaxCodes, `${p} absmax codes`);
      expectSameBits(r.nested!.nestedAbsmax, q.nested!.nestedAbsmax, `${p} nested absmax`);
      expectSameBits(r.nested!.code, q.nested!.code, `${p} nested quant map`);
      expectSameBytes(packQuantState(r, shape, 'float32'), u8(model, `${p}.weight.quant_state.bitsandbytes__nf4`), `${p} quant_state`);
    }
  });

  it('non-linear tensors stay float32 and unchanged', () => {
    const quantKeys = new Set<string>();
    for (const p of ck.quantized_linears) {
      for (const s of ['', '.absmax', '.quant_map', '.nested_absmax', '.nested_quant_map', '.quant_state.bitsandbytes__nf4']) {
        quantKeys.add(`${p}.weight${s}`);
      }
    }
    for (const [name, e] of model) {
      if (quantKeys.has(name)) continue;
      expect(e.dtype, name).toBe('F32');
      expectSameBits(toFloat32(e), f32(orig, name), name);
    }
    expect(model.size).toBe(quantKeys.size + (orig.size - ck.quantized_linears.length));
  });

  it('rejects inconsistent checkpoint tensors with PeftError', () => {
    const p = ck.quantized_linears[0];
    const base = {
      weight: model.get(`${p}.weight`)!.data,
      absmax: u8(model, `${p}.weight.absmax`),
      nestedAbsmax: f32(model, `${p}.weight.nested_absmax`),
      nestedQuantMap: f32(model, `${p}.weight.nested_quant_map`),
      quantState: u8(model, `${p}.weight.quant_state.bitsandbytes__nf4`),
    };
    expect(() => quant4FromBnb({ ...base, weight: base.weight.subarray(1) })).toThrow(PeftError);
    expect(() => quant4FromBnb({ ...base, nestedAbsmax: undefined })).toThrow(PeftError);
    expect(() => quant4FromBnb({ ...base, quantMap: FP4_CODE })).toThrow(PeftError);
    expect(() => quant4FromBnb({ ...base, absmax: new Float32Array(base.absmax.length) })).toThrow(PeftError);
  });
});

describe('storage and errors', () => {
  it('bits per parameter of a 576x1536 tensor with double quantization', () => {
    const n = 576 * 1536;
    const x = new Float32Array(n);
    for (let i = 0; i < n; i++) x[i] = Math.sin(i * 0.7) * 0.02;
    const q = quantize4bit(x, { doubleQuant: true, shape: [576, 1536] });
    const bpp = bitsPerParameter(q);
    // 4 bits + 8/64 + 54 nested absmax * 32 + 32 offset
    expect(bpp).toBe((8 * (n / 2) + 8 * (n / 64) + 32 * Math.ceil(n / 64 / 256) + 32) / n);
    expect(bpp).toBeLessThanOrEqual(4.13);
    // with the per-tensor code tables a checkpoint also stores (16 + 256 float32)
    expect(bitsPerParameter(q, { includeCodebooks: true })).toBeCloseTo(bpp + (32 * 272) / n, 12);
    const plain = quantize4bit(x, { shape: [576, 1536] });
    expect(bitsPerParameter(plain)).toBe(4.5);
  });

  it('throws PeftError for bad input', () => {
    const x = new Float32Array(128).fill(0.25);
    expect(() => quantize4bit(x, { blocksize: 48 })).toThrow(PeftError);
    expect(() => quantize4bit(x, { quantType: 'int4' as QuantType4 })).toThrow(PeftError);
    expect(() => quantize4bit(x, { shape: [3, 40] })).toThrow(PeftError);
    const bad = x.slice();
    bad[77] = NaN;
    expect(() => quantize4bit(bad)).toThrow(/element 77/);
    bad[77] = -Infinity;
    expect(() => quantize4bit(bad)).toThrow(PeftError);
    const q = quantize4bit(x);
    expect(() => dequantize4bit({ ...q, packed: q.packed.subarray(1) })).toThrow(PeftError);
    expect(() => dequantize4bit({ ...q, nested: quantize4bit(x, { doubleQuant: true }).nested } as Quant4)).toThrow(PeftError);
    expect(() => dequantize4bit(q, new Float32Array(3))).toThrow(PeftError);
    expect(() => quantizeBlockwise(x, 100)).toThrow(PeftError);
    expect(() => quantizeBlockwise(x, 256, new Float32Array(256).map((_, i) => -i))).toThrow(PeftError);
  });

  it('handles an empty tensor', () => {
    const q = quantize4bit(new Float32Array(0), { doubleQuant: true });
    expect(q.packed.length).toBe(0);
    expect(dequantize4bit(q).length).toBe(0);
  });

  it('quantizes and dequantizes 8M parameters in well under a few seconds', () => {
    const n = 1 << 23;
    const x = new Float32Array(n);
    let s = 12345;
    for (let i = 0; i < n; i++) {
      s = (s * 1103515245 + 12345) >>> 0;
      x[i] = (s / 2 ** 32 - 0.5) * 0.04;
    }
    const t0 = performance.now();
    const q = quantize4bit(x, { doubleQuant: true });
    const t1 = performance.now();
    const y = dequantize4bit(q);
    const t2 = performance.now();
    expect(y.length).toBe(n);
    // a generous bound that only catches a pathologically slow loop (135M params ~ 16x this)
    expect(t1 - t0).toBeLessThan(8000);
    expect(t2 - t1).toBeLessThan(8000);
  });
});
