/**
 * Issue 10 regressions for hostile or unusual input files: each input is built by the test, small,
 * and must give a PeftError naming the file (and field) — or, for valid-but-unusual files, the right
 * values — never garbage, a hang, a stack trace or gigabytes of allocation.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { PeftError } from '../../src/errors.js';
import { parseSafetensors, readSafetensorsFile, readSafetensorsLazy, serializeSafetensors, toFloat32 } from '../../src/io/safetensors.js';
import { parseGguf } from '../../src/io/gguf.js';
import { jsonDepth, readJsonFile } from '../../src/io/files.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { createBottleneckAdapter, loadAdapter, PeftModel, saveAdapter } from '../../src/peft/index.js';
import { adapterBase } from '../../src/cli/model.js';
import { trainCommand } from '../../src/cli/train.js';
import { withConfigFile } from '../../src/cli/options.js';
import { main } from '../../src/cli/index.js';
import { isBnb4bitCheckpoint, loadBnbCheckpoint, saveQuantizedCheckpoint } from '../../src/quant/bnb-checkpoint.js';
import { setupMethod } from '../../src/train/run.js';
import { loadModelQuantized } from '../../src/quant/quantize-model.js';
import { FIXTURES, STORIES } from '../helpers.js';

const tmp = (): string => mkdtempSync(join(tmpdir(), 'peft-hard-'));

function peftError(fn: () => unknown, ...parts: Array<string | RegExp>): PeftError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught, 'expected a PeftError').toBeInstanceOf(PeftError);
  const m = (caught as PeftError).message;
  for (const p of parts) {
    if (typeof p === 'string') expect(m).toContain(p);
    else expect(m).toMatch(p);
  }
  return caught as PeftError;
}

/** A safetensors file whose header is NOT padded, so the data section starts at an odd offset. */
function unalignedSafetensors(values: Float32Array, name = 'w'): Uint8Array {
  const json = Buffer.from(JSON.stringify({ [name]: { dtype: 'F32', shape: [values.length], data_offsets: [0, values.byteLength] } }));
  const padded = json.byteLength % 2 === 0 ? Buffer.concat([json, Buffer.from(' ')]) : json; // odd length → 8 + N odd
  const out = new Uint8Array(8 + padded.byteLength + values.byteLength);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded.byteLength), true);
  out.set(padded, 8);
  out.set(new Uint8Array(values.buffer), 8 + padded.byteLength);
  return out;
}

/** Re-emits a safetensors file with one extra header byte, so every tensor's data is misaligned. */
function misalignFile(path: string): void {
  const bytes = readFileSync(path);
  const n = Number(bytes.readBigUInt64LE(0));
  const out = Buffer.alloc(bytes.length + 1);
  out.writeBigUInt64LE(BigInt(n + 1), 0);
  bytes.copy(out, 8, 8, 8 + n);
  out[8 + n] = 0x20;
  bytes.copy(out, 9 + n, 8 + n);
  writeFileSync(path, out);
}

describe('safetensors: data not 8-byte aligned (valid files from other writers)', () => {
  const values = Float32Array.from([1.5, -2, 3.25, 1e-3, 7]);
  it('reads the right values from a Buffer, a file and lazily', () => {
    const bytes = unalignedSafetensors(values);
    expect((8 + Number(new DataView(bytes.buffer).getBigUint64(0, true))) % 4).not.toBe(0);
    // a Node Buffer (Buffer#slice is a view: the old copy read the file header as floats)
    const big = Buffer.concat([Buffer.alloc(3), Buffer.from(bytes)]).subarray(3);
    expect(Array.from(toFloat32(parseSafetensors(big, 'mem').tensors.get('w')!))).toEqual(Array.from(values));
    const dir = tmp();
    writeFileSync(join(dir, 'x.safetensors'), bytes);
    expect(Array.from(toFloat32(readSafetensorsFile(join(dir, 'x.safetensors')).tensors.get('w')!))).toEqual(Array.from(values));
    expect(Array.from(toFloat32(readSafetensorsLazy(join(dir, 'x.safetensors')).tensors.get('w')!))).toEqual(Array.from(values));
  });

  it('a bitsandbytes 4-bit checkpoint with misaligned data loads to the same model', () => {
    const dir = tmp();
    saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'nf4' }), join(dir, 'q'));
    const before = loadBnbCheckpoint(join(dir, 'q'));
    misalignFile(join(dir, 'q', 'model.safetensors'));
    const after = loadBnbCheckpoint(join(dir, 'q'));
    const a = before.layers[0].linears.q.weight.data, b = after.layers[0].linears.q.weight.data;
    expect(a.kind).toBe('q4');
    expect(JSON.stringify(after.layers.map((l) => l.linears.q.weight.rows))).toBe(JSON.stringify(before.layers.map((l) => l.linears.q.weight.rows)));
    const absA = (a as unknown as { q4: { packed: Uint8Array } }).q4, absB = (b as unknown as { q4: { packed: Uint8Array } }).q4;
    expect(Buffer.compare(Buffer.from(absA.packed), Buffer.from(absB.packed))).toBe(0);
  });

  it('a bnb checkpoint without quant_map or with a 2-D absmax is refused by name', () => {
    const dir = tmp();
    saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'nf4' }), join(dir, 'q'));
    const file = join(dir, 'q', 'model.safetensors');
    const st = readSafetensorsFile(file);
    const rewrite = (edit: (name: string, shape: number[]) => number[] | null): void => {
      const tensors = [...st.tensors.values()].flatMap((e) => {
        const shape = edit(e.name, e.shape);
        return shape ? [{ name: e.name, dtype: e.dtype, shape, data: e.data.slice() }] : [];
      });
      writeFileSync(file, serializeSafetensors(tensors, st.metadata));
    };
    const q0 = 'model.layers.0.self_attn.q_proj.weight';
    rewrite((n, s) => (n === `${q0}.quant_map` ? null : s));
    peftError(() => loadBnbCheckpoint(join(dir, 'q')), 'model.safetensors', `${q0}.quant_map`, 'missing quant_map');
    rewrite((n, s) => (n === `${q0}.absmax` ? [s[0], 1] : s));
    peftError(() => loadBnbCheckpoint(join(dir, 'q')), `${q0}.absmax`, '1-D');
  });
});

describe('special files are refused before any read', () => {
  it('a FIFO or /dev/zero as adapter weights, config or tokenizer', () => {
    const dir = tmp();
    cpSync(join(FIXTURES, 'stories260K'), join(dir, 'fifo'), { recursive: true });
    execFileSync('mkfifo', [join(dir, 'fifo', 'adapter_model.safetensors.new')]);
    const fifo = join(dir, 'fifo', 'adapter_model.safetensors.new');
    peftError(() => readSafetensorsFile(fifo), fifo, 'not a regular file', 'FIFO');
    peftError(() => readSafetensorsLazy(fifo), 'FIFO');
    peftError(() => readJsonFile(fifo), 'FIFO');
    const z = join(dir, 'zero');
    cpSync(join(FIXTURES, 'stories260K'), z, { recursive: true });
    execFileSync('rm', [join(z, 'adapter_model.safetensors')]);
    symlinkSync('/dev/zero', join(z, 'adapter_model.safetensors'));
    peftError(() => loadAdapter(new PeftModel(loadModel(STORIES)), z), 'adapter_model.safetensors', 'character device');
    const m = join(dir, 'model');
    cpSync(STORIES, m, { recursive: true });
    execFileSync('rm', [join(m, 'tokenizer.json')]);
    symlinkSync('/dev/zero', join(m, 'tokenizer.json'));
    peftError(() => loadTokenizer(m), 'tokenizer.json', 'character device');
    const c = join(dir, 'cfg');
    cpSync(STORIES, c, { recursive: true });
    execFileSync('rm', [join(c, 'config.json')]);
    execFileSync('mkfifo', [join(c, 'config.json')]);
    peftError(() => setupMethod({ data: 'x.txt', model: c, method: 'full' }), 'config.json', 'FIFO');
    peftError(() => isBnb4bitCheckpoint(c), 'config.json', 'FIFO');
  });
});

describe('allocation before validation', () => {
  function adapterWith(edit: (cfg: Record<string, unknown>) => void, src = join(FIXTURES, 'stories260K')): string {
    const dir = tmp();
    cpSync(src, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    edit(cfg);
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    return dir;
  }
  it('LoRA r: 10000000 is refused naming r before gigabytes are allocated', () => {
    const model = loadModel(STORIES);
    const rss0 = process.memoryUsage().rss;
    peftError(() => loadAdapter(new PeftModel(model), adapterWith((c) => { c.r = 10_000_000; })), 'adapter_config.json: r', 'at most');
    peftError(() => loadAdapter(new PeftModel(model), adapterWith((c) => { c.rank_pattern = { q_proj: 5_000_000 }; })), 'rank_pattern.q_proj');
    expect(process.memoryUsage().rss - rss0).toBeLessThan(200 * 2 ** 20);
  });
  it('bottleneck_size: 10000000 is refused naming the field, before allocating', () => {
    const model = loadModel(STORIES);
    const dir = tmp();
    saveAdapter(createBottleneckAdapter(model, { bottleneck_size: 6 }), join(dir, 'ok'));
    const inflate = (edit: (c: Record<string, unknown>) => void): string => {
      const d = join(dir, `bad-${Math.random().toString(36).slice(2)}`);
      cpSync(join(dir, 'ok'), d, { recursive: true });
      const cfg = JSON.parse(readFileSync(join(d, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      edit(cfg);
      writeFileSync(join(d, 'adapter_config.json'), JSON.stringify(cfg));
      return d;
    };
    peftError(() => loadAdapter(new PeftModel(model), inflate((c) => { c.bottleneck_size = 10_000_000; })), 'adapter_config.json: bottleneck_size', 'at most');
    peftError(() => loadAdapter(new PeftModel(model), inflate((c) => { c.bottleneck_size = 8; })), 'bottleneck_size', 'width 6 (rows of', 'found width 8');
    expect(() => loadAdapter(new PeftModel(model), join(dir, 'ok'))).not.toThrow();
  });
  it('prefix/prompt num_virtual_tokens: 10000000 is refused against the tensor shape', () => {
    const model = loadModel(STORIES);
    for (const kind of ['prefix', 'prompt-random']) {
      const dir = adapterWith((c) => { c.num_virtual_tokens = 10_000_000; }, join(FIXTURES, 'peft', kind));
      peftError(() => loadAdapter(new PeftModel(model), dir), 'adapter_model.safetensors', 'prompt_embeddings', '10000000');
    }
  });
});

describe('JSON that would crash a recursive reader', () => {
  it('a deeply nested adapter_config.json names the file', () => {
    const dir = tmp();
    cpSync(join(FIXTURES, 'stories260K'), dir, { recursive: true });
    writeFileSync(join(dir, 'adapter_config.json'), '['.repeat(200_000) + ']'.repeat(200_000));
    peftError(() => loadAdapter(new PeftModel(loadModel(STORIES)), dir), 'adapter_config.json', 'nested too deeply');
    expect(jsonDepth('{"a":"[[[[","b":[[1]]}')).toBe(3);
  });
  it('malformed train_args.json / adapter_config.json in eval/generate --adapter name file and field', () => {
    const dir = tmp();
    cpSync(join(FIXTURES, 'stories260K'), dir, { recursive: true });
    writeFileSync(join(dir, 'train_args.json'), '{"method": "qlora", "quantType": 7}');
    peftError(() => adapterBase(dir), 'train_args.json: quantType', 'nf4 | fp4');
    writeFileSync(join(dir, 'train_args.json'), '{"method": "lora"');
    peftError(() => adapterBase(dir), 'train_args.json', 'invalid JSON');
    writeFileSync(join(dir, 'train_args.json'), '{}');
    writeFileSync(join(dir, 'adapter_config.json'), '{"base_model_name_or_path": {"x": 1}}');
    peftError(() => adapterBase(dir), 'adapter_config.json: base_model_name_or_path');
  });
});

describe('tokenizer.json that builds but cannot encode', () => {
  it('is refused at load, naming the file', () => {
    const m = tmp();
    cpSync(STORIES, m, { recursive: true });
    const tj = JSON.parse(readFileSync(join(m, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    tj.post_processor = { type: 'TemplateProcessing', single: 5 };
    writeFileSync(join(m, 'tokenizer.json'), JSON.stringify(tj));
    peftError(() => loadTokenizer(m), 'tokenizer.json', 'malformed tokenizer');
    tj.post_processor = null;
    tj.added_tokens = [{ id: 'x' }];
    writeFileSync(join(m, 'tokenizer.json'), JSON.stringify(tj));
    peftError(() => loadTokenizer(m), 'added_tokens[0].id');
  });
});

describe('--config values go through the flags\' parsers', () => {
  function merged(yaml: string, name = 'c.yaml'): Record<string, unknown> {
    const dir = tmp();
    writeFileSync(join(dir, name), yaml);
    const cmd: Command = trainCommand();
    cmd.exitOverride();
    let opts: Record<string, unknown> = {};
    cmd.action((o: Record<string, unknown>) => { opts = withConfigFile(cmd, o); });
    cmd.parse(['--config', join(dir, name)], { from: 'user' });
    return opts;
  }
  it('rejects what the flag would reject, naming file, key and flag', () => {
    peftError(() => merged('model: 0.5\n'), 'c.yaml', 'model (--model)', 'a string');
    peftError(() => merged('max_grad_norm: abc\n'), 'maxGradNorm (--max-grad-norm)', '--max-grad-norm must be a number');
    peftError(() => merged('use_rslora: {a: 1}\n'), 'useRslora (--use-rslora)', 'true or false');
    peftError(() => merged('r: 0\n'), 'r (--r)', 'integer >= 1');
    peftError(() => merged('{"lr": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}', 'c.json'), 'nested too deeply');
  });
  it('converts valid values as the flags do', () => {
    const o = merged('lr: 2e-3\nmax_steps: "12"\nmodules_to_save: [lm_head]\npack: false\n');
    expect(o.lr).toBe(0.002);
    expect(o.maxSteps).toBe(12);
    expect(o.modulesToSave).toEqual(['lm_head']);
    expect(o.pack).toBe(false);
  });
});

/** A minimal GGUF v3 file: no metadata, the given tensors (name, ne, type id, offset), data of `dataBytes`. */
function gguf(tensors: Array<{ name: string; ne: number[]; type: number; offset: number }>, dataBytes: number): Uint8Array {
  const parts: Buffer[] = [];
  const u32 = (v: number): void => { const b = Buffer.alloc(4); b.writeUInt32LE(v); parts.push(b); };
  const u64 = (v: number): void => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); parts.push(b); };
  parts.push(Buffer.from('GGUF'));
  u32(3); u64(tensors.length); u64(0);
  for (const t of tensors) {
    u64(Buffer.byteLength(t.name)); parts.push(Buffer.from(t.name));
    u32(t.ne.length); for (const d of t.ne) u64(d);
    u32(t.type); u64(t.offset);
  }
  const head = Buffer.concat(parts);
  const pad = (32 - (head.length % 32)) % 32;
  return Buffer.concat([head, Buffer.alloc(pad), Buffer.alloc(dataBytes)]);
}

describe('strict GGUF reader', () => {
  it('accepts a good file and refuses invalid type ids, zero dims and overlapping offsets by name', () => {
    expect(parseGguf(gguf([{ name: 'a', ne: [4], type: 0, offset: 0 }, { name: 'b', ne: [4], type: 0, offset: 32 }], 64), 'ok.gguf').tensors).toHaveLength(2);
    peftError(() => parseGguf(gguf([{ name: 'a', ne: [4], type: 99, offset: 0 }], 64), 'x.gguf'), 'x.gguf', 'a type', 'unsupported GGML tensor type', '99');
    peftError(() => parseGguf(gguf([{ name: 'a', ne: [4, 0], type: 0, offset: 0 }], 64), 'x.gguf'), 'a ne[1]', 'zero dimension');
    peftError(() => parseGguf(gguf([{ name: 'a', ne: [16], type: 0, offset: 0 }, { name: 'b', ne: [4], type: 0, offset: 32 }], 128), 'x.gguf'), 'x.gguf: b', 'overlap');
  });
});

describe('directories', () => {
  it('a directory named like a weights file is refused by name', () => {
    const dir = tmp();
    mkdirSync(join(dir, 'x.safetensors'));
    peftError(() => readSafetensorsFile(join(dir, 'x.safetensors')), 'x.safetensors', 'directory');
  });
});

describe('defects the fuzzer found', () => {
  it('a safetensors header nested 5,000 deep is a named error, not a stack overflow', () => {
    const json = Buffer.from(`{"a":{"dtype":"F32","shape":${'['.repeat(5000)}1${']'.repeat(5000)},"data_offsets":[0,4]}}`);
    const bytes = Buffer.alloc(8 + json.length + 4);
    bytes.writeBigUInt64LE(BigInt(json.length));
    json.copy(bytes, 8);
    peftError(() => parseSafetensors(bytes, 'deep.safetensors'), 'deep.safetensors: header', 'nested too deeply');
  });
  it('an adapter whose target_modules match no layer names adapter_config.json', () => {
    const dir = tmp();
    cpSync(join(FIXTURES, 'stories260K'), dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    cfg.target_modules = '';
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    const e = peftError(() => loadAdapter(new PeftModel(loadModel(STORIES)), dir), 'adapter_config.json', 'target_modules');
    expect(e.file).toBe(join(dir, 'adapter_config.json'));
  });
});

describe('the CLI prints no stack trace', () => {
  async function cli(...args: string[]): Promise<{ code: number; stderr: string }> {
    let stderr = '';
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => { stderr += String(chunk); return true; }) as typeof process.stderr.write;
    const before = process.exitCode;
    try {
      await main(['node', 'peft', ...args]);
    } finally {
      process.stderr.write = write;
    }
    const code = Number(process.exitCode ?? 0);
    process.exitCode = before;
    return { code, stderr };
  }
  it('malformed adapter files and config files end in one error line naming the file', async () => {
    const dir = tmp();
    cpSync(join(FIXTURES, 'stories260K'), join(dir, 'a'), { recursive: true });
    writeFileSync(join(dir, 'a', 'train_args.json'), '{"method": "qlora", "quantType": {"x": 1}}');
    writeFileSync(join(dir, 'data.txt'), 'Once upon a time there was a fox.\n');
    let r = await cli('eval', '--adapter', join(dir, 'a'), '--data', join(dir, 'data.txt'));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^peft: error: .*train_args\.json: quantType/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    writeFileSync(join(dir, 'a', 'train_args.json'), '{}');
    writeFileSync(join(dir, 'a', 'adapter_config.json'), '{"peft_type": "LORA", "r": "eight"');
    r = await cli('generate', '--adapter', join(dir, 'a'), '--prompt', 'Hi', '--max-new-tokens', '2');
    expect(r.stderr).toMatch(/^peft: error: .*adapter_config\.json: invalid JSON/);
    writeFileSync(join(dir, 'c.yaml'), 'max_grad_norm: abc\n');
    r = await cli('train', '--data', join(dir, 'data.txt'), '--config', join(dir, 'c.yaml'), '--output', join(dir, 'o'));
    expect(r.stderr).toMatch(/^peft: error: .*c\.yaml: maxGradNorm \(--max-grad-norm\): invalid value in config file/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });
});

describe('more defects the fuzzer found', () => {
  it('a config.json with a 5,000-deep value is a named error (model and bnb checkpoint)', () => {
    const dir = tmp();
    cpSync(STORIES, join(dir, 'm'), { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'm', 'config.json'), 'utf8')) as Record<string, unknown>;
    const deep = JSON.stringify({ ...cfg, hidden_size: '__D__' }).replace('"__D__"', '['.repeat(5000) + '1' + ']'.repeat(5000));
    writeFileSync(join(dir, 'm', 'config.json'), deep);
    peftError(() => loadModel(join(dir, 'm')), 'config.json', 'nested too deeply');
    saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'nf4' }), join(dir, 'q'));
    const q = JSON.parse(readFileSync(join(dir, 'q', 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'q', 'config.json'), JSON.stringify({ ...q, rms_norm_eps: '__D__' }).replace('"__D__"', '['.repeat(5000) + '1' + ']'.repeat(5000)));
    peftError(() => loadBnbCheckpoint(join(dir, 'q')), 'config.json', 'nested too deeply');
  });
  it('an invalid or 100,000-character target_modules regex names the config file and key', () => {
    const model = loadModel(STORIES);
    for (const [pattern, why] of [['.*q_proj(', 'invalid regular expression'], ['x'.repeat(100_000), 'pattern too long']]) {
      const dir = tmp();
      cpSync(join(FIXTURES, 'stories260K'), dir, { recursive: true });
      const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
      cfg.target_modules = pattern;
      writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
      peftError(() => loadAdapter(new PeftModel(model), dir), 'adapter_config.json: target_modules', why);
    }
  });
  it('a tokenizer vocabulary with a non-integer id is refused at load', () => {
    const m = tmp();
    cpSync(STORIES, m, { recursive: true });
    const tj = JSON.parse(readFileSync(join(m, 'tokenizer.json'), 'utf8')) as { model: { vocab: Record<string, unknown> } };
    const piece = Object.keys(tj.model.vocab)[300];
    tj.model.vocab[piece] = 0.5;
    writeFileSync(join(m, 'tokenizer.json'), JSON.stringify(tj));
    peftError(() => loadTokenizer(m), 'tokenizer.json: model.vocab', 'non-negative integer', '0.5');
  });
  it('a deeply nested bnb quant state is a named error', () => {
    const dir = tmp();
    saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'nf4' }), join(dir, 'q'));
    const file = join(dir, 'q', 'model.safetensors');
    const st = readSafetensorsFile(file);
    const qs = 'model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4';
    const deep = Buffer.from(`{"quant_type":${'['.repeat(3000)}1${']'.repeat(3000)}}`);
    writeFileSync(file, serializeSafetensors([...st.tensors.values()].map((e) => (e.name === qs
      ? { name: e.name, dtype: e.dtype, shape: [deep.length], data: new Uint8Array(deep) }
      : { name: e.name, dtype: e.dtype, shape: e.shape, data: e.data.slice() })), st.metadata));
    peftError(() => loadBnbCheckpoint(join(dir, 'q')), 'model.safetensors', 'quant_state', 'nested');
  });
});
