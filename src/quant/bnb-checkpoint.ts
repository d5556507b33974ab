/**
 * bitsandbytes 4-bit checkpoints as transformers saves them (`save_pretrained` of a model loaded
 * with `BitsAndBytesConfig(load_in_4bit=True, …)`), both ways. Layout: `bnb-layout.md`
 * ("Checkpoint layout"): per quantized linear `<prefix>.weight` (U8 packed codes, [ceil(n/2), 1]),
 * `.weight.absmax`, `.weight.quant_map`, `.weight.nested_absmax`, `.weight.nested_quant_map` and
 * `.weight.quant_state.bitsandbytes__nf4|fp4` (packed JSON); everything else in the model dtype;
 * config.json carries `quantization_config` (`BitsAndBytesConfig.to_dict()`).
 *
 * Loading builds the model with `buildModel` from a per-tensor (lazy) weights map in which each
 * quantized `<prefix>.weight` is replaced by a placeholder entry of the logical shape from its quant
 * state (so `buildModel` checks the shape against config.json and names the tensor), and the
 * `weightTransform` swaps in the 4-bit weight. The placeholder's float32 zeros are never written
 * to and are dropped at once, and no file is held in memory whole.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { PeftError } from '../errors.js';
import { moveFilesInto, writeFileAtomic } from '../io/atomic.js';
import { assertRegularIfExists, readJsonFile, readJsonObject } from '../io/files.js';
import { readModelWeights, writeSafetensorsFile, type TensorEntry, type TensorToWrite } from '../io/safetensors.js';
import { loadConfig } from '../models/registry.js';
import { layerLinears, type CausalLM, type LinearModule, type Norm } from '../models/model.js';
import { buildModel, loadModel, type LoadOptions } from '../models/load.js';
import type { Q4Native } from '../native/index.js';
import type { Weight } from '../tensor/index.js';
import {
  FP4_CODE, formatPythonFloat, NF4_CODE, packQuantState, quant4FromBnb, unpackQuantState,
  type Quant4, type QuantStateInfo, type QuantType4,
} from './nf4.js';
import {
  decoderLinears, fromQ4Native, isBnbQuantizedConfig, q4QuantType, q4SourceDtype, setQ4Meta, toQ4Native,
} from './quantize-model.js';

/** The 4-bit settings a checkpoint's config.json declares. */
export interface BnbQuantizationConfig {
  quantType: QuantType4;
  doubleQuant: boolean;
  computeDtype: string;
  skipModules: string[] | null;
}

/**
 * The bitsandbytes 4-bit settings of `dir/config.json`, or null when it has no
 * `quantization_config` with quant_method "bitsandbytes".
 * @throws PeftError naming config.json and the field for an 8-bit or malformed bitsandbytes config.
 */
export function readBnbQuantizationConfig(dir: string): BnbQuantizationConfig | null {
  const file = join(dir, 'config.json');
  let raw: unknown;
  assertRegularIfExists(file, 'config.json'); // a FIFO or device would block or never end
  try {
    raw = readJsonFile(file, { what: 'config.json' });
  } catch {
    return null; // loadConfig reports an unreadable config.json
  }
  if (typeof raw !== 'object' || raw === null || !isBnbQuantizedConfig(raw as Record<string, unknown>)) return null;
  const qc = (raw as Record<string, unknown>).quantization_config as Record<string, unknown>;
  const four = qc.load_in_4bit === true || qc._load_in_4bit === true;
  const eight = qc.load_in_8bit === true || qc._load_in_8bit === true;
  if (!four || eight) {
    throw new PeftError('unsupported bitsandbytes quantization', {
      file, field: 'quantization_config.load_in_4bit', expected: 'a 4-bit checkpoint (load_in_4bit true)', found: eight ? 'load_in_8bit' : JSON.stringify(qc.load_in_4bit),
    });
  }
  const qt = qc.bnb_4bit_quant_type ?? 'fp4';
  if (qt !== 'nf4' && qt !== 'fp4') {
    throw new PeftError('unsupported 4-bit quant type', { file, field: 'quantization_config.bnb_4bit_quant_type', expected: "'nf4' or 'fp4'", found: JSON.stringify(qt) });
  }
  const skip = qc.llm_int8_skip_modules;
  return {
    quantType: qt,
    doubleQuant: qc.bnb_4bit_use_double_quant === true,
    computeDtype: typeof qc.bnb_4bit_compute_dtype === 'string' ? qc.bnb_4bit_compute_dtype : 'float32',
    skipModules: Array.isArray(skip) ? skip.map(String) : null,
  };
}

/** Whether `dir` holds a bitsandbytes 4-bit checkpoint (config.json `quantization_config`). */
export function isBnb4bitCheckpoint(dir: string): boolean {
  return readBnbQuantizationConfig(dir) !== null;
}

const QUANT_STATE_RE = /^(.+)\.weight\.quant_state\.bitsandbytes__([A-Za-z0-9]+)$/;
const COMPONENT_RE = /^(.+)\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|quant_state\..+)$/;

function f32Of(e: TensorEntry, what: string): Float32Array {
  if (e.dtype !== 'F32') throw new PeftError('wrong dtype for a 4-bit statistics tensor', { file: e.file, field: e.name, expected: `F32 (${what})`, found: e.dtype });
  if (e.shape.length !== 1) throw new PeftError('a 4-bit statistics tensor must be 1-D', { file: e.file, field: e.name, expected: `a 1-D tensor (${what})`, found: `shape [${e.shape.join(', ')}]` });
  const d = e.data;
  // a copy when unaligned: `new Uint8Array(d)` owns a fresh buffer (a Buffer's slice() is a view of the file)
  return d.byteOffset % 4 === 0 ? new Float32Array(d.buffer, d.byteOffset, d.byteLength / 4) : new Float32Array(new Uint8Array(d).buffer);
}

/** Options of {@link loadBnbCheckpoint}. */
export interface LoadBnbOptions {
  /** Storage of the unquantized weights (embeddings, lm_head): 'float32' (default) or 'auto' (BF16 stays bf16). */
  dtype?: LoadOptions['dtype'];
}

/**
 * Loads a bitsandbytes 4-bit checkpoint (see the module header) into a model whose quantized
 * linear weights are 'q4' Weights (bitsandbytes `Params4bit.from_prequantized`: dequantization uses
 * the kernel tables and the stored nested map / offset). Other weights load as in `loadModel`.
 * @throws PeftError naming the file and tensor when a quant state is missing, not JSON or
 *   inconsistent; a statistics tensor is missing or has the wrong dtype / length; the packed codes
 *   do not match the quant state's shape; the quant state's shape does not match config.json;
 *   plus every error of `loadModel`.
 */
export function loadBnbCheckpoint(dir: string, opts: LoadBnbOptions = {}): CausalLM {
  // regular file, bounded, nesting-capped, named errors — before the model's config parser walks it
  readJsonObject(join(dir, 'config.json'), { what: 'config.json (a JSON object)' });
  const config = loadConfig(dir);
  if (readBnbQuantizationConfig(dir) === null) {
    throw new PeftError('not a bitsandbytes 4-bit checkpoint', { file: join(dir, 'config.json'), field: 'quantization_config', expected: 'quant_method "bitsandbytes" with load_in_4bit', found: 'none' });
  }
  const weights = readModelWeights(dir, { lazy: true });
  // group the quantization tensors by module prefix
  const states = new Map<string, TensorEntry>();
  const components = new Map<string, string[]>();
  for (const name of weights.keys()) {
    const m = COMPONENT_RE.exec(name);
    if (!m) continue;
    const list = components.get(m[1]);
    if (list) list.push(name);
    else components.set(m[1], [name]);
    const s = QUANT_STATE_RE.exec(name);
    if (s) {
      const e = weights.get(name)!;
      if (s[2] !== 'nf4' && s[2] !== 'fp4') {
        throw new PeftError('unsupported quant state', { file: e.file, field: name, expected: 'quant_state.bitsandbytes__nf4 or __fp4', found: `__${s[2]}` });
      }
      if (states.has(s[1])) throw new PeftError('two quant states for one weight', { file: e.file, field: name, found: `also ${states.get(s[1])!.name}` });
      states.set(s[1], e);
    }
  }
  const quantized = new Map<string, Q4Native>();
  for (const [prefix, names] of components) {
    const w = `${prefix}.weight`;
    const stateEntry = states.get(prefix);
    const packedEntry = weights.get(w);
    const file = (stateEntry ?? packedEntry ?? weights.get(`${w}.absmax`))?.file ?? dir;
    if (!stateEntry) {
      throw new PeftError('missing quant state', { file, field: `${w}.quant_state.bitsandbytes__nf4`, expected: `the packed JSON quant state of ${w} (…__nf4 or …__fp4)`, found: 'nothing' });
    }
    const qt = QUANT_STATE_RE.exec(stateEntry.name)![2];
    if (!packedEntry) throw new PeftError('missing packed 4-bit weight', { file, field: w, expected: 'U8 packed codes', found: 'nothing' });
    const absmaxEntry = weights.get(`${w}.absmax`);
    if (!absmaxEntry) throw new PeftError('missing absmax', { file, field: `${w}.absmax`, expected: 'U8 codes or F32 absmax', found: 'nothing' });
    if (stateEntry.dtype !== 'U8') throw new PeftError('wrong dtype for a quant state', { file, field: stateEntry.name, expected: 'U8', found: stateEntry.dtype });
    if (absmaxEntry.dtype !== 'U8' && absmaxEntry.dtype !== 'F32') {
      throw new PeftError('wrong dtype for absmax', { file, field: absmaxEntry.name, expected: 'U8 or F32', found: absmaxEntry.dtype });
    }
    if (absmaxEntry.shape.length !== 1) {
      throw new PeftError('absmax must be 1-D', { file, field: absmaxEntry.name, expected: 'a 1-D tensor (one value per block)', found: `shape [${absmaxEntry.shape.join(', ')}]` });
    }
    // bitsandbytes QuantState.from_dict requires quant_map (the code table); a checkpoint without it is not one bnb wrote
    if (!weights.has(`${w}.quant_map`)) {
      throw new PeftError('missing quant_map', { file, field: `${w}.quant_map`, expected: 'the 16-entry F32 code table (bitsandbytes get_4bit_type)', found: 'nothing' });
    }
    if (packedEntry.dtype !== 'U8') {
      throw new PeftError('wrong dtype for packed 4-bit codes', { file, field: w, expected: 'U8', found: packedEntry.dtype });
    }
    const opt = (suffix: string, what: string): Float32Array | undefined => {
      const e = weights.get(`${w}.${suffix}`);
      return e ? f32Of(e, what) : undefined;
    };
    const quantState = stateEntry.data;
    let q: Quant4;
    let info: QuantStateInfo;
    try {
      info = unpackQuantState(quantState, `${w}.quant_state`);
      if (info.quantType !== qt) {
        throw new PeftError('quant state type does not match its tensor name', { field: `${stateEntry.name}: quant_type`, expected: qt, found: info.quantType });
      }
      q = quant4FromBnb({
        weight: packedEntry.data,
        absmax: absmaxEntry.dtype === 'U8' ? absmaxEntry.data : f32Of(absmaxEntry, 'absmax'),
        quantMap: opt('quant_map', 'quant_map'),
        nestedAbsmax: opt('nested_absmax', 'nested_absmax'),
        nestedQuantMap: opt('nested_quant_map', 'nested_quant_map'),
        quantState,
      }, w);
      if (q.shape!.length !== 2) {
        throw new PeftError('a 4-bit linear weight must be 2-D', { field: `${w}.quant_state: shape`, expected: '[out_features, in_features]', found: JSON.stringify(q.shape) });
      }
    } catch (e) {
      if (e instanceof PeftError) throw new PeftError(e.message, { file });
      throw e;
    }
    const [rows, cols] = q.shape!;
    const q4 = toQ4Native(q, rows, cols);
    const dt = info.dtype;
    setQ4Meta(q4, { quantType: q.quantType, sourceDtype: dt === 'bfloat16' || dt === 'float16' ? dt : 'float32' });
    quantized.set(prefix, q4);
    for (const name of names) weights.delete(name);
    // placeholder of the logical shape: buildModel checks it against config.json; its zeros are never touched
    const n = rows * cols;
    weights.set(w, { name: w, dtype: 'F32', shape: [rows, cols], file: packedEntry.file, get data() { return new Uint8Array(4 * n); } });
  }
  const toQ4 = (q4: Q4Native): Weight => ({ rows: q4.rows, cols: q4.cols, data: { kind: 'q4', q4 } });
  const model = buildModel(config, weights, dir, {
    dtype: opts.dtype ?? 'float32',
    weightTransform: (name, w) => {
      const q4 = quantized.get(name);
      if (!q4) return w;
      quantized.delete(name);
      return toQ4(q4);
    },
  });
  for (const [prefix, q4] of quantized) {
    if (prefix === 'lm_head' && !config.tieWordEmbeddings) model.lmHead.weight = toQ4(q4);
    else {
      throw new PeftError('quantized weight of a module this model does not use', { file: states.get(prefix)?.file ?? dir, field: `${prefix}.weight`, expected: `a linear module of ${config.architecture}` });
    }
  }
  return model;
}

/**
 * Loads `dir` whichever way it is stored: a bitsandbytes 4-bit checkpoint with
 * {@link loadBnbCheckpoint}, anything else with `loadModel`.
 */
export function loadModelAuto(dir: string, opts: LoadOptions = {}): CausalLM {
  return isBnb4bitCheckpoint(dir) ? loadBnbCheckpoint(dir, { dtype: opts.dtype }) : loadModel(dir, opts);
}

// ------------------------------------------------------------------------------------------------
// saving
// ------------------------------------------------------------------------------------------------

/** A float in config.json that python writes with a decimal point even when integral (`6.0`). */
class PyFloat {
  constructor(readonly value: number) {}
}

/**
 * `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type, bnb_4bit_use_double_quant,
 * bnb_4bit_compute_dtype).to_dict()` of transformers 5.x (bnb-layout.md).
 */
export function bnbQuantizationConfig(quantType: QuantType4, doubleQuant: boolean, computeDtype = 'float32',
  skipModules: string[] | null = null): Record<string, unknown> {
  return {
    quant_method: 'bitsandbytes', _load_in_8bit: false, _load_in_4bit: true,
    llm_int8_threshold: new PyFloat(6), llm_int8_skip_modules: skipModules,
    llm_int8_enable_fp32_cpu_offload: false, llm_int8_has_fp16_weight: false,
    bnb_4bit_quant_type: quantType, bnb_4bit_use_double_quant: doubleQuant,
    bnb_4bit_compute_dtype: computeDtype, bnb_4bit_quant_storage: 'uint8',
    load_in_4bit: true, load_in_8bit: false,
  };
}

/**
 * python `json.dumps(value, indent=2, sort_keys=True)` (what `PretrainedConfig.to_json_string`
 * writes): non-ASCII escaped, floats in `repr` form. Integral numbers are written as integers,
 * except {@link PyFloat}s and numbers under a key in `floatKeys` (keys the source file wrote as floats).
 */
function pythonJson(v: unknown, floatKeys: Set<string>, indent = '', key = ''): string {
  const inner = indent + '  ';
  if (v instanceof PyFloat) return formatPythonFloat(v.value);
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') return Number.isInteger(v) && !floatKeys.has(key) ? String(v) : formatPythonFloat(v);
  if (typeof v === 'string') return JSON.stringify(v).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return `[\n${v.map((x) => inner + pythonJson(x, floatKeys, inner, key)).join(',\n')}\n${indent}]`;
  }
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort();
  if (keys.length === 0) return '{}';
  return `{\n${keys.map((k) => `${inner}${pythonJson(k, floatKeys)}: ${pythonJson(o[k], floatKeys, inner, k)}`).join(',\n')}\n${indent}}`;
}

/** Keys whose value the JSON text writes as a float literal (`10000.0`, `1e-05`). */
function floatKeysOf(text: string): Set<string> {
  const out = new Set<string>();
  for (const m of text.matchAll(/"((?:[^"\\]|\\.)*)"\s*:\s*(-?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)/g)) {
    if (/[.eE]/.test(m[2])) out.add(m[1]);
  }
  return out;
}

/** Files `save_pretrained` of a model + tokenizer writes besides config.json and the weights. */
const COPIED_FILES = [
  'generation_config.json', 'tokenizer.json', 'tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json',
  'added_tokens.json', 'vocab.json', 'merges.txt', 'chat_template.jinja', 'chat_template.json',
];

/** The state-dict entries of one linear module (bnb layout for a 4-bit weight). */
function linearTensors(m: LinearModule): TensorToWrite[] {
  const out: TensorToWrite[] = [];
  const w = `${m.name}.weight`;
  const d = m.weight.data;
  if (d.kind === 'q4') {
    const q = fromQ4Native(d.q4);
    out.push({ name: w, dtype: 'U8', shape: [q.packed.length, 1], data: q.packed });
    if (q.nested) {
      out.push({ name: `${w}.absmax`, dtype: 'U8', shape: [q.nested.absmaxCodes.length], data: q.nested.absmaxCodes });
      out.push({ name: `${w}.nested_absmax`, dtype: 'F32', shape: [q.nested.nestedAbsmax.length], data: q.nested.nestedAbsmax });
      out.push({ name: `${w}.nested_quant_map`, dtype: 'F32', shape: [q.nested.code.length], data: q.nested.code });
    } else {
      out.push({ name: `${w}.absmax`, dtype: 'F32', shape: [q.absmax!.length], data: q.absmax! });
    }
    out.push({ name: `${w}.quant_map`, dtype: 'F32', shape: [16], data: q.quantType === 'nf4' ? NF4_CODE : FP4_CODE });
    const state = packQuantState(q, [m.weight.rows, m.weight.cols], q4SourceDtype(d.q4));
    out.push({ name: `${w}.quant_state.bitsandbytes__${q.quantType}`, dtype: 'U8', shape: [state.length], data: state });
  } else if (d.kind === 'f32') {
    out.push({ name: w, dtype: 'F32', shape: [m.weight.rows, m.weight.cols], data: d.tensor.data });
  } else {
    out.push({ name: w, dtype: 'BF16', shape: [m.weight.rows, m.weight.cols], data: d.bits });
  }
  if (m.bias) out.push({ name: `${m.name}.bias`, dtype: 'F32', shape: [m.bias.size], data: m.bias.data });
  return out;
}

/** Options of {@link saveQuantizedCheckpoint}. */
export interface SaveQuantizedOptions {
  /** `bnb_4bit_compute_dtype` written to config.json. Default 'float32' (what this library computes in). */
  computeDtype?: string;
  /** Directory to copy tokenizer / generation config files from. Default `model.dir`. */
  sourceDir?: string;
}

/**
 * Writes `model` as a transformers bitsandbytes 4-bit checkpoint in `outDir`: model.safetensors
 * (4-bit linears in the bnb layout, other weights in their storage dtype — float32, or bf16 for
 * bf16 storage — with metadata {"format": "pt"}), config.json (the model's config with
 * `quantization_config`, as `save_pretrained` writes it: sorted keys, indent 2), and the tokenizer
 * and generation config files of the source directory. The directory is written next to `outDir`
 * and moved into place file by file (`moveFilesInto`): each file appears whole, other files in `outDir` are kept.
 * PEFT hooks attached to the model are not saved (only the base weights).
 * @throws PeftError when the model has no 4-bit weight; filesystem errors propagate.
 */
export function saveQuantizedCheckpoint(model: CausalLM, outDir: string, opts: SaveQuantizedOptions = {}): void {
  const c = model.config;
  const tensors: TensorToWrite[] = [];
  const e = model.embedTokens;
  if (e.kind === 'f32') tensors.push({ name: `${model.embedName}.weight`, dtype: 'F32', shape: [...e.tensor.shape], data: e.tensor.data });
  else tensors.push({ name: `${model.embedName}.weight`, dtype: 'BF16', shape: [...e.shape], data: e.bits });
  const norm = (n: Norm): void => {
    tensors.push({ name: `${n.name}.weight`, dtype: 'F32', shape: [n.weight.size], data: n.weight.data });
    if (n.bias) tensors.push({ name: `${n.name}.bias`, dtype: 'F32', shape: [n.bias.size], data: n.bias.data });
  };
  if (model.embedPositions) norm(model.embedPositions);
  for (const l of model.layers) {
    for (const n of Object.values(l.norms)) norm(n);
    for (const m of layerLinears(l)) tensors.push(...linearTensors(m));
  }
  norm(model.norm);
  if (!c.tieWordEmbeddings) tensors.push(...linearTensors(model.lmHead));

  const q4s = [...decoderLinears(model), model.lmHead].flatMap((m) => (m.weight.data.kind === 'q4' ? [m.weight.data.q4] : []));
  if (q4s.length === 0) {
    throw new PeftError('model has no 4-bit weights to save in the bitsandbytes layout', { file: outDir, expected: 'a model from loadModelQuantized or loadBnbCheckpoint' });
  }
  const unquantized = decoderLinears(model).filter((m) => m.weight.data.kind !== 'q4').map((m) => m.name);
  const qc = bnbQuantizationConfig(q4QuantType(q4s[0]), q4s[0].absmax === null, opts.computeDtype ?? 'float32',
    unquantized.length > 0 ? [...unquantized, 'lm_head'] : null);

  const srcDir = opts.sourceDir ?? model.dir;
  let floatKeys = new Set<string>();
  if (srcDir && existsSync(join(srcDir, 'config.json'))) floatKeys = floatKeysOf(readFileSync(join(srcDir, 'config.json'), 'utf8'));
  const configText = pythonJson({ ...c.raw, quantization_config: qc }, floatKeys) + '\n';

  const finalDir = resolve(outDir);
  mkdirSync(dirname(finalDir), { recursive: true });
  const tmp = join(dirname(finalDir), `${basename(finalDir)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  mkdirSync(tmp);
  try {
    writeSafetensorsFile(join(tmp, 'model.safetensors'), tensors, { format: 'pt' });
    writeFileAtomic(join(tmp, 'config.json'), configText);
    if (srcDir) {
      for (const f of COPIED_FILES) {
        const src = join(srcDir, f);
        if (existsSync(src) && statSync(src).isFile()) copyFileSync(src, join(tmp, f));
      }
    }
    moveFilesInto(tmp, finalDir);
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw err;
  }
}
