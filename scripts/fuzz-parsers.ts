/**
 * Mutation fuzzing of every input parser (issue 10): valid inputs are built from the bundled model
 * and fixtures, mutated (byte flips, truncation, inserted/deleted ranges, header-length and size
 * fields set to edge values, JSON values replaced by wrong-typed, huge, negative or deeply nested
 * ones, keys deleted), and each outcome is classified:
 *
 * - `clean`: a PeftError whose message names the mutated file;
 * - `crash`: any other exception (a stack trace for the user), a PeftError that does not name the
 *   file, or the worker process dying (native crash, out of memory);
 * - `hang`: no answer within the time limit (the worker is killed and restarted);
 * - `silent`: the parser accepted the input but its result contradicts the input (a value present
 *   in the file with the wrong type replaced by a default, a size or id out of range, …): garbage
 *   accepted without a word;
 * - `ok`: accepted, and the result is consistent with the input (a mutation can produce a valid file).
 *
 * Usage:
 *   npx tsx scripts/fuzz-parsers.ts [--count N] [--seed S] [--timeout-ms T] [--targets a,b] [--json FILE]
 * Each input runs in a child process (so a native crash or a hang is caught); inputs are derived
 * from (target, index, seed) alone, so any failing case reruns with `--only TARGET:INDEX`.
 * The bounded CI run is test/io/fuzz-parsers.test.ts (runFuzz with a small count).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command } from 'commander';
import { PeftError } from '../src/errors.js';
import { readSafetensorsFile, serializeSafetensors, toFloat32 } from '../src/io/safetensors.js';
import { ggufTensorF32, readGgufFile } from '../src/io/gguf.js';
import { loadTokenizer, type Tokenizer } from '../src/io/tokenizer.js';
import { loadConfig } from '../src/models/registry.js';
import { loadModel } from '../src/models/load.js';
import type { CausalLM } from '../src/models/model.js';
import { createBottleneckAdapter, loadAdapter, PeftModel, saveAdapter } from '../src/peft/index.js';
import { loadBnbCheckpoint, saveQuantizedCheckpoint } from '../src/quant/bnb-checkpoint.js';
import { loadModelQuantized } from '../src/quant/quantize-model.js';
import { exportLoraGguf } from '../src/export/gguf-lora.js';
import { loadExamples } from '../src/train/data/index.js';
import { trainCommand } from '../src/cli/train.js';
import { withConfigFile } from '../src/cli/options.js';
import { readTrainArgs } from '../src/cli/model.js';
import { checkpointProblem, readTrainerState } from '../src/train/checkpoint.js';
import { uniformRng } from '../src/tensor/random.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const STORIES = join(ROOT, 'models', 'stories260K');
const LORA_FIXTURE = join(ROOT, 'test', 'fixtures', 'stories260K');
const PREFIX_FIXTURE = join(ROOT, 'test', 'fixtures', 'peft', 'prefix');
const TINY_GQA = join(ROOT, 'test', 'fixtures', 'tiny', 'llama-gqa');

export const TARGETS = [
  'safetensors', 'adapter_config', 'adapter_tensors', 'prefix_adapter', 'prompt_adapter', 'ia3_adapter', 'bottleneck_adapter', 'config_json', 'tokenizer_json', 'gguf', 'bnb_checkpoint',
  'data_jsonl', 'data_json', 'data_txt', 'config_file', 'train_args', 'trainer_state',
] as const;
export type Target = (typeof TARGETS)[number];
export type Outcome = 'clean' | 'crash' | 'hang' | 'silent' | 'ok';

export interface CaseResult { target: Target; index: number; outcome: Outcome; detail: string }

// ---------------------------------------------------------------------------------------------
// Deterministic randomness and mutations
// ---------------------------------------------------------------------------------------------


function hashSeed(target: string, index: number, seed: number): number {
  let h = 2166136261 ^ seed;
  for (const c of `${target}:${index}`) h = Math.imul(h ^ c.charCodeAt(0), 16777619);
  return h >>> 0;
}

const pick = <T>(r: () => number, a: readonly T[]): T => a[Math.floor(r() * a.length)];
const int = (r: () => number, n: number): number => Math.floor(r() * n);

/** Byte-level mutations of a file. */
function mutateBytes(r: () => number, src: Uint8Array, opts: { u64At?: number[] } = {}): { bytes: Uint8Array; how: string } {
  const b = Buffer.from(src);
  const kind = int(r, opts.u64At ? 7 : 6);
  switch (kind) {
    case 0: { // flip 1-8 bytes
      const n = 1 + int(r, 8);
      for (let i = 0; i < n; i++) b[int(r, b.length)] = int(r, 256);
      return { bytes: b, how: `flip ${n} bytes` };
    }
    case 1: { // truncate
      const at = int(r, b.length);
      return { bytes: b.subarray(0, at), how: `truncate at ${at}` };
    }
    case 2: { // insert random bytes
      const at = int(r, b.length + 1), n = 1 + int(r, 64);
      const ins = Buffer.from(Array.from({ length: n }, () => int(r, 256)));
      return { bytes: Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]), how: `insert ${n} at ${at}` };
    }
    case 3: { // delete a range
      const at = int(r, b.length), n = 1 + int(r, 64);
      return { bytes: Buffer.concat([b.subarray(0, at), b.subarray(at + n)]), how: `delete ${n} at ${at}` };
    }
    case 4: { // duplicate a chunk
      const at = int(r, b.length), n = 1 + int(r, 256);
      return { bytes: Buffer.concat([b, b.subarray(at, at + n)]), how: `append copy of ${n} at ${at}` };
    }
    case 5: { // a 4/8-byte field to an edge value
      const at = int(r, Math.max(1, b.length - 8));
      const v = pick(r, [0n, 1n, 0xffffffffn, 0xffffffffffffffffn, 1n << 53n, 100_000_001n, BigInt(b.length), 7n]);
      b.writeBigUInt64LE(v, at);
      return { bytes: b, how: `u64 ${v} at ${at}` };
    }
    default: { // a known length/count field to an edge value
      const at = pick(r, opts.u64At!);
      const v = pick(r, [0n, 1n, 0xffffffffn, 0xffffffffffffffffn, 1n << 53n, 100_000_001n, BigInt(b.length), BigInt(b.length - 7)]);
      b.writeBigUInt64LE(v, at);
      return { bytes: b, how: `u64 field at ${at} = ${v}` };
    }
  }
}

/** Stands for 5,000 nested arrays, spliced in as text (JSON.stringify itself would overflow the stack). */
const DEEP = '__DEEP_NESTING__';
const DEEP_TEXT = '['.repeat(5000) + '1' + ']'.repeat(5000);
const stringify = (doc: unknown): string => JSON.stringify(doc).replaceAll(`"${DEEP}"`, DEEP_TEXT);

/** Garbage values a JSON field may be replaced with. */
function garbage(r: () => number): unknown {
  return pick(r, [
    -1, 0, 1, 0.5, -0.5, 1e7, 10_000_000, 2 ** 53 + 2, 1e308, -1e308, 'abc', '', '0.5', 'true', true, false, null, {}, [], [1, 'a'],
    { a: { b: { c: 1 } } }, 'x'.repeat(100_000), 4294967297, -2147483649, '__proto__', [[[[[]]]]], DEEP,
  ]);
}

type Json = Record<string, unknown>;

/** Paths to every value of a JSON tree (bounded). */
function paths(v: unknown, prefix: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  if (out.length > 5000) return out;
  if (Array.isArray(v)) v.slice(0, 50).forEach((x, i) => { out.push([...prefix, i]); paths(x, [...prefix, i], out); });
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) { out.push([...prefix, k]); paths(x, [...prefix, k], out); }
  return out;
}

/** A structural mutation of a JSON document (as text), or a raw text mutation. */
function mutateJson(r: () => number, text: string, focus?: string[]): { text: string; how: string } {
  if (r() < 0.25) {
    const m = mutateBytes(r, Buffer.from(text));
    return { text: Buffer.from(m.bytes).toString('latin1'), how: m.how };
  }
  const doc = JSON.parse(text) as unknown;
  const all = paths(doc);
  const preferred = focus ? all.filter((p) => p.length === 1 && focus.includes(String(p[0]))) : [];
  const path = preferred.length && r() < 0.7 ? pick(r, preferred) : all.length ? pick(r, all) : [];
  const parent = path.slice(0, -1).reduce<unknown>((o, k) => (o as Json)[k as string], doc) as Json | unknown[];
  const key = path[path.length - 1];
  const op = int(r, 10);
  if (path.length === 0) return { text: stringify(garbage(r)), how: 'replace document' };
  if (op === 0 && !Array.isArray(parent)) {
    delete (parent as Json)[key as string];
    return { text: stringify(doc), how: `delete ${path.join('.')}` };
  }
  if (op === 1 && !Array.isArray(parent)) {
    (parent as Json)[`unknown_${int(r, 100)}`] = garbage(r);
    return { text: stringify(doc), how: `add unknown key under ${path.slice(0, -1).join('.')}` };
  }
  const g = garbage(r);
  (parent as Json)[key as string] = g;
  const shown = JSON.stringify(g)?.slice(0, 30);
  return { text: stringify(doc), how: `${path.join('.')} = ${shown}` };
}

// ---------------------------------------------------------------------------------------------
// Base inputs
// ---------------------------------------------------------------------------------------------

interface Base {
  dir: string;
  model: CausalLM;
  /** The base of the prefix-tuning fixture (tiny Llama with GQA). */
  tiny: CausalLM;
  tok: Tokenizer;
  files: Record<string, string>;
}

function buildBase(): Base {
  const dir = mkdtempSync(join(tmpdir(), 'peft-fuzz-base-'));
  const files: Record<string, string> = {};
  // a small two-tensor safetensors file, one F16 one F32, plus the LoRA fixture
  files.safetensors = join(dir, 'small.safetensors');
  writeFileSync(files.safetensors, serializeSafetensors([
    { name: 'a', dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, 2, 3, 4, 5, 6]) },
    { name: 'b', dtype: 'F16', shape: [4], data: Uint16Array.from([0x3c00, 0x4000, 0xbc00, 0]) },
  ], { format: 'pt' }));
  cpSync(LORA_FIXTURE, join(dir, 'lora'), { recursive: true });
  cpSync(PREFIX_FIXTURE, join(dir, 'prefix'), { recursive: true });
  cpSync(join(ROOT, 'test', 'fixtures', 'peft', 'prompt-random'), join(dir, 'prompt'), { recursive: true });
  cpSync(join(ROOT, 'test', 'fixtures', 'peft', 'ia3'), join(dir, 'ia3'), { recursive: true });
  const stories = loadModel(STORIES);
  saveAdapter(createBottleneckAdapter(stories, { bottleneck_size: 6, placement: 'houlsby' }), join(dir, 'bottleneck'));
  files.gguf = join(dir, 'lora.gguf');
  exportLoraGguf(join(dir, 'lora'), files.gguf, STORIES);
  saveQuantizedCheckpoint(loadModelQuantized(STORIES, { quantType: 'nf4' }), join(dir, 'bnb'));
  const data = join(dir, 'data');
  mkdirSync(data);
  writeFileSync(join(data, 'text.jsonl'), [
    '{"text": "Once upon a time there was a fox."}', '{"text": "The fox liked apples."}',
  ].join('\n') + '\n');
  writeFileSync(join(data, 'chat.jsonl'), JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello, friend.' }] }) + '\n');
  writeFileSync(join(data, 'alpaca.json'), JSON.stringify([{ instruction: 'Say hi', input: '', output: 'Hi!' }, { instruction: 'Count', input: '1 2', output: '3' }], null, 1));
  writeFileSync(join(data, 'pc.jsonl'), JSON.stringify({ prompt: 'Tell me: ', completion: 'a story.' }) + '\n');
  writeFileSync(join(data, 'tales.txt'), 'Once upon a time.\n\nThere was a fox.\nIt ran.\n');
  files.config_file = join(dir, 'train.yaml');
  writeFileSync(files.config_file, 'max_steps: 6\nbatch_size: 4\nr: 4\nlr: 0.01\nuse_rslora: true\ntarget_modules: q_proj,v_proj\nmodules_to_save: [lm_head]\nmax_grad_norm: 1.0\npack: false\nschedule: cosine\n');
  files.train_args = join(dir, 'train_args.json');
  writeFileSync(files.train_args, JSON.stringify({ data: 'x.jsonl', method: 'qlora', quantType: 'nf4', model: STORIES, r: 8, summary: 's' }, null, 2));
  const ck = join(dir, 'checkpoint-2');
  mkdirSync(ck);
  writeFileSync(join(ck, 'trainer_state.json'), JSON.stringify({ step: 2, data: { epoch: 0, cursor: 16 }, history: [{ step: 1, loss: 3.2 }, { step: 2, loss: 3.1 }], options: { maxSteps: 10, gradAccum: 1, lr: 0.001, schedule: 'cosine', warmupSteps: 0, seed: 0 }, tokensSeen: 1024 }, null, 2));
  writeFileSync(join(ck, 'params.safetensors'), readFileSync(files.safetensors));
  writeFileSync(join(ck, 'optimizer.safetensors'), readFileSync(files.safetensors));
  files.trainer_state = join(ck, 'trainer_state.json');
  return { dir, model: stories, tiny: loadModel(TINY_GQA), tok: loadTokenizer(STORIES), files };
}

/** A scratch directory holding links to every file of `src` except `replace`, which gets `bytes`. */
function scratchWith(src: string, scratch: string, replace: string, bytes: Uint8Array | string): string {
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  for (const f of readdirSync(src)) if (f !== replace) symlinkSync(join(src, f), join(scratch, f));
  writeFileSync(join(scratch, replace), bytes);
  return join(scratch, replace);
}

// ---------------------------------------------------------------------------------------------
// One case
// ---------------------------------------------------------------------------------------------

class Silent extends Error {}
const silent = (why: string): never => { throw new Silent(why); };

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Raw values present in a mutated JSON object must come out as given (not silently defaulted). */
function checkFields(raw: unknown, got: Record<string, unknown>, map: Record<string, string>): void {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return;
  for (const [k, field] of Object.entries(map)) {
    const v = (raw as Json)[k];
    if (v === undefined || v === null) continue;
    if (!same(got[field], v)) silent(`${k} = ${JSON.stringify(v)?.slice(0, 40)} in the file, ${JSON.stringify(got[field])?.slice(0, 40)} used`);
  }
}

function tryJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function checkSafetensorsResult(path: string, fileSize: number): void {
  const st = readSafetensorsFile(path);
  let total = 0;
  for (const e of st.tensors.values()) {
    const n = e.shape.reduce((a, b) => a * b, 1);
    total += e.data.byteLength;
    if (['F32', 'F16', 'BF16', 'F64'].includes(e.dtype)) {
      const f = toFloat32(e);
      if (f.length !== n) silent(`${e.name}: ${f.length} values for shape [${e.shape}]`);
    }
  }
  const n = Number(Buffer.from(readFileSync(path)).readBigUInt64LE(0));
  if (8 + n + total !== fileSize) silent(`tensors cover ${total} of ${fileSize - 8 - n} data bytes`);
}

/** Runs one case; throws PeftError / other errors / Silent as the parser does. */
function runCase(base: Base, target: Target, index: number, seed: number, scratch: string): { file: string; how: string } {
  const r = uniformRng(hashSeed(target, index, seed));
  const mutateFileJson = (path: string, focus?: string[]): { text: string; how: string } => mutateJson(r, readFileSync(path, 'utf8'), focus);
  switch (target) {
    case 'safetensors': {
      const n = Number(Buffer.from(readFileSync(base.files.safetensors)).readBigUInt64LE(0));
      const m = r() < 0.5 ? mutateBytes(r, readFileSync(base.files.safetensors), { u64At: [0] }) : (() => {
        // mutate the header JSON and re-frame it
        const src = readFileSync(base.files.safetensors);
        const j = mutateJson(r, src.subarray(8, 8 + n).toString('utf8').trimEnd(), undefined);
        const head = Buffer.from(j.text);
        const out = Buffer.alloc(8 + head.length);
        out.writeBigUInt64LE(BigInt(head.length));
        head.copy(out, 8);
        return { bytes: Buffer.concat([out, src.subarray(8 + n)]), how: `header: ${j.how}` };
      })();
      const f = join(scratch, 'x.safetensors');
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      writeFileSync(f, m.bytes);
      checkSafetensorsResult(f, m.bytes.length);
      return { file: f, how: m.how };
    }
    case 'adapter_config':
    case 'prefix_adapter':
    case 'prompt_adapter':
    case 'ia3_adapter':
    case 'bottleneck_adapter': {
      const kind = { adapter_config: 'lora', prefix_adapter: 'prefix', prompt_adapter: 'prompt', ia3_adapter: 'ia3', bottleneck_adapter: 'bottleneck' }[target];
      const src = join(base.dir, kind);
      const spec: Record<string, { focus: string[]; fields: Record<string, string> }> = {
        lora: {
          focus: ['r', 'lora_alpha', 'lora_dropout', 'target_modules', 'rank_pattern', 'alpha_pattern', 'use_rslora', 'bias', 'modules_to_save', 'peft_type', 'layers_to_transform', 'init_lora_weights'],
          fields: { r: 'r', lora_alpha: 'lora_alpha', lora_dropout: 'lora_dropout', use_rslora: 'use_rslora', bias: 'bias', rank_pattern: 'rank_pattern' },
        },
        prefix: {
          focus: ['num_virtual_tokens', 'token_dim', 'num_layers', 'num_attention_heads', 'encoder_hidden_size', 'prefix_projection', 'peft_type'],
          fields: { num_virtual_tokens: 'num_virtual_tokens', num_layers: 'num_layers', token_dim: 'token_dim' },
        },
        prompt: {
          focus: ['num_virtual_tokens', 'token_dim', 'num_layers', 'num_attention_heads', 'prompt_tuning_init', 'prompt_tuning_init_text', 'peft_type'],
          fields: { num_virtual_tokens: 'num_virtual_tokens', token_dim: 'token_dim' },
        },
        ia3: { focus: ['target_modules', 'feedforward_modules', 'init_ia3_weights', 'fan_in_fan_out', 'peft_type', 'modules_to_save'], fields: { init_ia3_weights: 'init_ia3_weights' } },
        bottleneck: {
          focus: ['bottleneck_size', 'reduction_factor', 'placement', 'non_linearity', 'layers_to_transform', 'peft_type'],
          fields: { bottleneck_size: 'bottleneck_size', placement: 'placement', non_linearity: 'non_linearity' },
        },
      };
      const j = mutateFileJson(join(src, 'adapter_config.json'), spec[kind].focus);
      const f = scratchWith(src, scratch, 'adapter_config.json', j.text);
      const onTiny = kind === 'prefix' || kind === 'prompt' || kind === 'ia3';
      const a = loadAdapter(new PeftModel(onTiny ? base.tiny : base.model), scratch) as unknown as { cfg: Record<string, unknown> };
      checkFields(tryJson(j.text), a.cfg, spec[kind].fields);
      return { file: f, how: j.how };
    }
    case 'adapter_tensors': {
      const src = join(base.dir, 'lora');
      const bytes = readFileSync(join(src, 'adapter_model.safetensors'));
      const m = mutateBytes(r, bytes, { u64At: [0] });
      const f = scratchWith(src, scratch, 'adapter_model.safetensors', m.bytes);
      loadAdapter(new PeftModel(base.model), scratch);
      return { file: f, how: m.how };
    }
    case 'config_json': {
      const j = mutateFileJson(join(STORIES, 'config.json'), ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'rope_theta', 'rms_norm_eps', 'vocab_size', 'max_position_embeddings', 'tie_word_embeddings', 'rope_scaling', 'architectures', 'head_dim']);
      const f = scratchWith(STORIES, scratch, 'config.json', j.text);
      const c = loadConfig(scratch) as unknown as Record<string, unknown>;
      // transformers 5.x: rope_parameters.rope_theta, when present, wins over the top-level rope_theta
      const raw = tryJson(j.text) as Json | undefined;
      const rp = raw && typeof raw === 'object' ? raw.rope_parameters : undefined;
      const expectRaw = raw && typeof raw === 'object' && rp && typeof rp === 'object' && !Array.isArray(rp) && (rp as Json).rope_theta !== undefined
        ? { ...raw, rope_theta: (rp as Json).rope_theta } : raw;
      checkFields(expectRaw, { ...c, rope_theta: (c.rope as { theta?: unknown } | undefined)?.theta }, {
        hidden_size: 'hiddenSize', intermediate_size: 'intermediateSize', num_hidden_layers: 'numLayers', num_attention_heads: 'numHeads',
        num_key_value_heads: 'numKvHeads', rms_norm_eps: 'rmsNormEps', vocab_size: 'vocabSize', max_position_embeddings: 'maxPositionEmbeddings',
        tie_word_embeddings: 'tieWordEmbeddings', rope_theta: 'rope_theta',
      });
      // and the weights must fit it
      loadModel(scratch);
      return { file: f, how: j.how };
    }
    case 'tokenizer_json': {
      const j = mutateFileJson(join(STORIES, 'tokenizer.json'), ['model', 'added_tokens', 'pre_tokenizer', 'normalizer', 'decoder', 'post_processor']);
      const f = scratchWith(STORIES, scratch, 'tokenizer.json', j.text);
      const tok = loadTokenizer(scratch);
      const ids = tok.encode('Once upon a time, a fox ran 12 miles. Ünïcödé ✓', true);
      for (const id of ids) if (!Number.isInteger(id) || id < 0 || id >= tok.vocabSize) silent(`encode gave id ${id} outside vocab size ${tok.vocabSize}`);
      tok.decode(ids);
      return { file: f, how: j.how };
    }
    case 'gguf': {
      const bytes = readFileSync(base.files.gguf);
      const m = mutateBytes(r, bytes, { u64At: [8, 16] });
      const f = join(scratch, 'x.gguf');
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      writeFileSync(f, m.bytes);
      const g = readGgufFile(f);
      const spans = g.tensors.map((t) => [t.fileOffset, t.fileOffset + t.byteLength] as const).sort((a, b) => a[0] - b[0]);
      for (let i = 1; i < spans.length; i++) if (spans[i][0] < spans[i - 1][1]) silent('overlapping tensors accepted');
      for (const t of g.tensors) {
        if (t.ne.some((d) => d < 1)) silent(`${t.name}: zero dimension accepted`);
        if (ggufTensorF32(g, t.name).length !== t.ne.reduce((a, b) => a * b, 1)) silent(`${t.name}: wrong element count`);
      }
      return { file: f, how: m.how };
    }
    case 'bnb_checkpoint': {
      const src = join(base.dir, 'bnb');
      let f: string, how: string;
      if (r() < 0.25) {
        const j = mutateFileJson(join(src, 'config.json'), ['quantization_config']);
        const doc = (j.text.includes(DEEP_TEXT) ? undefined : tryJson(j.text)) as Json | undefined;
        // mutate inside quantization_config most of the time
        if (doc && typeof doc === 'object' && doc.quantization_config && typeof doc.quantization_config === 'object' && r() < 0.7) {
          const q = mutateJson(r, stringify(doc.quantization_config));
          const deep = q.text.includes(DEEP_TEXT);
          const qv = deep ? undefined : tryJson(q.text);
          doc.quantization_config = deep ? '__QC__' : qv === undefined ? q.text : qv;
          const text = stringify(doc);
          f = scratchWith(src, scratch, 'config.json', deep ? text.replace('"__QC__"', () => q.text) : text);
          how = `quantization_config: ${q.how}`;
        } else {
          f = scratchWith(src, scratch, 'config.json', j.text);
          how = j.how;
        }
      } else {
        // mutate model.safetensors: tensor header fields (shapes, dtypes, names), quant_state JSON, or bytes
        const file = join(src, 'model.safetensors');
        const st = readSafetensorsFile(file);
        const entries = [...st.tensors.values()];
        const kind = int(r, 4);
        if (kind === 0) {
          const m = mutateBytes(r, readFileSync(file), { u64At: [0] });
          f = scratchWith(src, scratch, 'model.safetensors', m.bytes);
          how = m.how;
        } else {
          const victims = entries.filter((e) => /\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$|_proj\.weight$/.test(e.name));
          const v = pick(r, victims);
          const tensors = entries.map((e) => ({ name: e.name, dtype: e.dtype, shape: [...e.shape], data: e.data.slice() as Uint8Array }));
          const t = tensors.find((x) => x.name === v.name)!;
          if (kind === 1) {
            const i = tensors.indexOf(t);
            tensors.splice(i, 1);
            how = `drop ${v.name}`;
          } else if (kind === 2 && t.name.includes('quant_state')) {
            const j = mutateJson(r, Buffer.from(t.data).toString('utf8'), ['shape', 'blocksize', 'quant_type', 'dtype', 'nested_blocksize', 'nested_offset']);
            t.data = Buffer.from(j.text);
            t.shape = [t.data.length];
            how = `${v.name}: ${j.how}`;
          } else {
            const total = t.shape.reduce((a, b) => a * b, 1);
            t.shape = pick(r, [[total, 1], [1, total], [total]]);
            if (r() < 0.5 && t.dtype === 'U8') { t.data = t.data.subarray(0, t.data.length - (t.data.length % 4)); t.dtype = 'F32' as never; t.shape = [t.data.length / 4]; }
            how = `${v.name}: reshape/retype to ${t.dtype} [${t.shape}]`;
          }
          f = scratchWith(src, scratch, 'model.safetensors', serializeSafetensors(tensors, st.metadata));
        }
      }
      const m = loadBnbCheckpoint(scratch);
      const c = loadConfig(STORIES);
      if (m.layers.length !== c.numLayers || m.layers[0].linears.q.weight.rows !== c.numHeads * c.headDim || m.layers[0].linears.q.weight.cols !== c.hiddenSize)
        silent('loaded 4-bit model does not have the config\'s shapes');
      return { file: f, how };
    }
    case 'data_jsonl':
    case 'data_json':
    case 'data_txt': {
      const names = target === 'data_jsonl' ? ['text.jsonl', 'chat.jsonl', 'pc.jsonl'] : target === 'data_json' ? ['alpaca.json'] : ['tales.txt'];
      const name = pick(r, names);
      const src = join(base.dir, 'data', name);
      let text: string, how: string;
      if (target === 'data_jsonl' && r() < 0.7) {
        const lines = readFileSync(src, 'utf8').trim().split('\n');
        const li = int(r, lines.length);
        const j = mutateJson(r, lines[li], ['text', 'messages', 'prompt', 'completion', 'role', 'content']);
        lines[li] = j.text.replace(/\n/g, ' ');
        text = lines.join('\n') + '\n';
        how = `line ${li + 1}: ${j.how}`;
      } else if (target === 'data_json' && r() < 0.7) {
        const j = mutateJson(r, readFileSync(src, 'utf8'));
        text = j.text;
        how = j.how;
      } else {
        const m = mutateBytes(r, readFileSync(src));
        text = Buffer.from(m.bytes).toString('latin1');
        how = m.how;
      }
      const f = join(scratch, name);
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      writeFileSync(f, text);
      const { examples } = loadExamples(f, base.tok, { maxSeqLength: 64, textSplit: name.endsWith('.txt') && r() < 0.5 ? 'paragraphs' : 'blocks' });
      for (const e of examples) {
        if (e.ids.length > 64) silent(`example of ${e.ids.length} tokens > maxSeqLength`);
        for (const id of e.ids) if (id < 0 || id >= base.tok.vocabSize) silent(`token id ${id} outside the vocabulary`);
        if (e.targets.length !== e.ids.length) silent('targets and ids differ in length');
      }
      return { file: f, how };
    }
    case 'config_file': {
      const yaml = r() < 0.5;
      const srcText = readFileSync(base.files.config_file, 'utf8');
      const asJson = JSON.stringify(Object.fromEntries(srcText.trim().split('\n').map((l) => {
        const [k, ...rest] = l.split(': ');
        const v = rest.join(': ');
        return [k, v.startsWith('[') ? ['lm_head'] : v === 'true' ? true : v === 'false' ? false : Number.isFinite(Number(v)) ? Number(v) : v];
      })));
      const j = mutateJson(r, asJson, ['max_steps', 'batch_size', 'r', 'lr', 'use_rslora', 'target_modules', 'modules_to_save', 'max_grad_norm', 'pack', 'schedule', 'model', 'seed']);
      const f = join(scratch, yaml ? 'c.yaml' : 'c.json');
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      writeFileSync(f, j.text); // JSON is YAML too
      const cmd: Command = trainCommand();
      cmd.exitOverride();
      cmd.configureOutput({ writeErr: () => {}, writeOut: () => {} });
      let merged: Record<string, unknown> = {};
      cmd.action((o: Record<string, unknown>) => { merged = withConfigFile(cmd, o); });
      try {
        cmd.parse(['--config', f], { from: 'user' });
      } catch (e) {
        if (e instanceof PeftError) throw e;
        throw new Error(`commander: ${(e as Error).message}`);
      }
      const numeric = ['maxSteps', 'batchSize', 'r', 'lr', 'maxGradNorm', 'seed'];
      for (const k of numeric) if (merged[k] !== undefined && (typeof merged[k] !== 'number' || !Number.isFinite(merged[k]))) silent(`${k} = ${JSON.stringify(merged[k])?.slice(0, 30)} accepted`);
      for (const k of ['useRslora', 'pack']) if (merged[k] !== undefined && typeof merged[k] !== 'boolean') silent(`${k} = ${JSON.stringify(merged[k])?.slice(0, 30)} accepted`);
      for (const k of ['model', 'schedule', 'targetModules']) if (merged[k] !== undefined && typeof merged[k] !== 'string') silent(`${k} = ${JSON.stringify(merged[k])?.slice(0, 30)} accepted`);
      if (merged.modulesToSave !== undefined && (!Array.isArray(merged.modulesToSave) || merged.modulesToSave.some((x) => typeof x !== 'string'))) silent('modulesToSave not a list of strings');
      return { file: f, how: j.how };
    }
    case 'train_args': {
      const j = mutateFileJson(base.files.train_args, ['method', 'quantType', 'model']);
      const f = join(scratch, 'train_args.json');
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(scratch, { recursive: true });
      writeFileSync(f, j.text);
      const a = readTrainArgs(f) as Record<string, unknown>;
      checkFields(tryJson(j.text), a, { method: 'method', quantType: 'quantType', model: 'model' });
      return { file: f, how: j.how };
    }
    case 'trainer_state': {
      const j = mutateFileJson(base.files.trainer_state, ['step', 'history', 'options', 'tokensSeen', 'data']);
      const ck = join(scratch, 'checkpoint-2');
      rmSync(scratch, { recursive: true, force: true });
      mkdirSync(ck, { recursive: true });
      for (const n of ['params.safetensors', 'optimizer.safetensors']) symlinkSync(join(dirname(base.files.trainer_state), n), join(ck, n));
      const f = join(ck, 'trainer_state.json');
      writeFileSync(f, j.text);
      const s = readTrainerState(f);
      if (!Number.isSafeInteger(s.step) || s.step < 0) silent(`step ${JSON.stringify(s.step)} accepted`);
      if (checkpointProblem(ck) !== null) silent('checkpointProblem disagrees with readTrainerState');
      return { file: f, how: j.how };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Child process: runs cases, reports each
// ---------------------------------------------------------------------------------------------

interface Job { target: Target; index: number }

async function child(): Promise<void> {
  const base = buildBase();
  const scratch = mkdtempSync(join(tmpdir(), 'peft-fuzz-case-'));
  const seed = Number(process.env.FUZZ_SEED ?? 0);
  process.send!({ ready: true });
  process.on('message', (msg: { jobs?: Job[]; exit?: boolean }) => {
    if (msg.exit) {
      rmSync(base.dir, { recursive: true, force: true });
      rmSync(scratch, { recursive: true, force: true });
      process.exit(0);
    }
    for (const job of msg.jobs ?? []) {
      process.send!({ start: job });
      let outcome: Outcome = 'ok', detail = '';
      try {
        const { how } = runCase(base, job.target, job.index, seed, scratch);
        detail = how;
      } catch (e) {
        if (e instanceof Silent) { outcome = 'silent'; detail = e.message; }
        else if (e instanceof PeftError) {
          const named = e.file !== undefined || /\//.test(e.message);
          outcome = named ? 'clean' : 'crash';
          detail = named ? e.message.slice(0, 200) : `PeftError without a file: ${e.message.slice(0, 200)}`;
        } else {
          outcome = 'crash';
          detail = `${(e as Error)?.name ?? 'throw'}: ${String((e as Error)?.message ?? e).slice(0, 200)}`;
          if (process.env.FUZZ_STACKS) detail += ` ${(e as Error)?.stack?.split('\n').slice(1, 6).join(' <- ')}`;
        }
      }
      process.send!({ done: { ...job, outcome, detail } });
    }
    process.send!({ idle: true });
  });
}

// ---------------------------------------------------------------------------------------------
// Parent: schedules cases, kills hung children, records crashes
// ---------------------------------------------------------------------------------------------

export interface FuzzOptions {
  /** Inputs per target. */
  count: number;
  seed?: number;
  /** A case with no answer after this long is a hang. */
  timeoutMs?: number;
  targets?: readonly Target[];
  /** Only these `target:index` cases. */
  only?: Job[];
  onResult?: (r: CaseResult) => void;
}

export interface FuzzReport {
  results: CaseResult[];
  table: Array<{ target: Target; tried: number; clean: number; crash: number; hang: number; silent: number; ok: number }>;
}

export async function runFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const targets = o.targets ?? TARGETS;
  let queue: Job[] = o.only ?? targets.flatMap((target) => Array.from({ length: o.count }, (_, index) => ({ target, index })));
  // interleave targets so a short run covers all of them
  if (!o.only) queue = Array.from({ length: o.count }, (_, i) => targets.map((t) => ({ target: t, index: i }))).flat();
  const timeoutMs = o.timeoutMs ?? 20_000;
  const results: CaseResult[] = [];
  const record = (r: CaseResult): void => { results.push(r); o.onResult?.(r); };
  const self = fileURLToPath(import.meta.url);
  while (queue.length > 0) {
    const proc: ChildProcess = fork(self, ['--child'], {
      execArgv: ['--import', 'tsx', '--max-old-space-size=2048', '--stack-size=984'],
      env: { ...process.env, FUZZ_SEED: String(o.seed ?? 0), PEFT_NUM_THREADS: '1' },
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let stderr = '';
    proc.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-2000); });
    await new Promise<void>((resolve) => {
      let current: Job | null = null;
      let timer: NodeJS.Timeout | null = null;
      let settled = false;
      const finish = (): void => { if (!settled) { settled = true; if (timer) clearTimeout(timer); resolve(); } };
      const arm = (): void => {
        if (timer) clearTimeout(timer);
        timer = setTimeout(() => {
          if (current) {
            record({ ...current, outcome: 'hang', detail: `no answer in ${timeoutMs} ms` });
            queue = queue.filter((j) => j !== current);
            current = null;
          }
          proc.kill('SIGKILL');
        }, current ? timeoutMs : 120_000);
      };
      arm(); // startup
      proc.on('message', (m: { ready?: boolean; start?: Job; done?: CaseResult; idle?: boolean }) => {
        if (m.ready) { proc.send({ jobs: queue.slice() }); arm(); }
        if (m.start) { current = queue.find((j) => j.target === m.start!.target && j.index === m.start!.index) ?? null; arm(); }
        if (m.done) {
          record(m.done);
          queue = queue.filter((j) => !(j.target === m.done!.target && j.index === m.done!.index));
          current = null;
          arm();
        }
        if (m.idle) { proc.send({ exit: true }); }
      });
      proc.on('exit', (code, signal) => {
        if (current) {
          record({ ...current, outcome: 'crash', detail: `worker died (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 300)}` });
          queue = queue.filter((j) => j !== current);
          current = null;
        } else if (queue.length > 0 && code !== 0 && !signal) {
          // died before starting a case: avoid looping forever
          for (const j of queue.splice(0)) record({ ...j, outcome: 'crash', detail: `worker failed to start: ${stderr.slice(-300)}` });
        }
        finish();
      });
    });
  }
  const table = targets.map((target) => {
    const rs = results.filter((r) => r.target === target);
    const n = (k: Outcome): number => rs.filter((r) => r.outcome === k).length;
    return { target, tried: rs.length, clean: n('clean'), crash: n('crash'), hang: n('hang'), silent: n('silent'), ok: n('ok') };
  });
  return { results, table };
}

/** The outcome table as Markdown. */
export function markdownTable(report: FuzzReport): string {
  const rows = report.table.map((t) => `| ${t.target} | ${t.tried} | ${t.clean} | ${t.crash} | ${t.hang} | ${t.silent} | ${t.ok} |`);
  const sum = (k: 'tried' | 'clean' | 'crash' | 'hang' | 'silent' | 'ok'): number => report.table.reduce((s, t) => s + t[k], 0);
  return ['| parser | inputs tried | clean errors | crashes | hangs | silent accepts | valid (accepted, consistent) |', '|---|---:|---:|---:|---:|---:|---:|', ...rows,
    `| **all** | **${sum('tried')}** | **${sum('clean')}** | **${sum('crash')}** | **${sum('hang')}** | **${sum('silent')}** | **${sum('ok')}** |`].join('\n');
}

async function cli(): Promise<void> {
  const cmd = new Command('fuzz-parsers')
    .option('--count <n>', 'inputs per parser', (v) => Number(v), 100)
    .option('--seed <s>', 'seed', (v) => Number(v), 0)
    .option('--timeout-ms <ms>', 'per-input time limit (a hang)', (v) => Number(v), 20_000)
    .option('--targets <list>', `comma-separated subset of ${TARGETS.join(', ')}`)
    .option('--only <cases>', 'rerun cases target:index,…')
    .option('--json <file>', 'write every result as JSON')
    .option('--show <kinds>', 'print the details of these outcomes', 'crash,hang,silent');
  cmd.parse();
  const o = cmd.opts<{ count: number; seed: number; timeoutMs: number; targets?: string; only?: string; json?: string; show: string }>();
  const targets = o.targets ? (o.targets.split(',') as Target[]) : undefined;
  const only = o.only?.split(',').map((c) => { const [t, i] = c.split(':'); return { target: t as Target, index: Number(i) }; });
  const show = new Set(o.show.split(','));
  const t0 = performance.now();
  let n = 0;
  const report = await runFuzz({
    count: o.count, seed: o.seed, timeoutMs: o.timeoutMs, targets, only,
    onResult: (r) => {
      n++;
      if (show.has(r.outcome)) process.stdout.write(`${r.outcome.toUpperCase()} ${r.target}:${r.index} ${r.detail}\n`);
      else if (n % 100 === 0) process.stderr.write(`${n} inputs…\n`);
    },
  });
  process.stdout.write(`\n${markdownTable(report)}\n\n${report.results.length} inputs in ${((performance.now() - t0) / 1000).toFixed(0)} s (seed ${o.seed})\n`);
  if (o.json) writeFileSync(o.json, JSON.stringify(report, null, 1));
  const bad = report.table.reduce((s, t) => s + t.crash + t.hang + t.silent, 0);
  process.exitCode = bad > 0 ? 1 : 0;
}

if (process.argv.includes('--child')) await child();
else if (basename(fileURLToPath(import.meta.url)) === basename(process.argv[1] ?? '')) await cli();
