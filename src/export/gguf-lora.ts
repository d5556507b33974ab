/**
 * Export of a LoRA adapter to llama.cpp's GGUF adapter format, as llama.cpp's own
 * `convert_lora_to_gguf.py` writes it, so `llama-cli --lora FILE`, `llama_adapter_lora_init` and
 * node-llama-cpp's `createContext({ lora })` load it over the GGUF conversion of the base model.
 *
 * Layout (checked against convert_lora_to_gguf.py, convert_hf_to_gguf.py `LlamaModel`,
 * gguf-py, and llama.cpp `src/llama-adapter.cpp` / `llama-adapter.h`):
 * - metadata, in the converter's order: `general.architecture` (string: `llama` for Llama and
 *   Mistral checkpoints, `qwen2`/`qwen3`, `gemma2`/`gemma3`, `smollm3`: the family's `gguf`), `general.type` = `adapter`, `adapter.type` = `lora`,
 *   `general.name` (string: the adapter directory's name), `adapter.lora.alpha` (FLOAT32),
 *   `general.quantization_version` (UINT32 2). llama.cpp requires the first three and reads alpha.
 * - tensors, per adapted linear layer, the base tensor's GGUF name plus `.lora_a` / `.lora_b`:
 *   `blk.{i}.attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down.weight`, and
 *   `output.weight` for lm_head. Order: the PEFT keys sorted (how the converter meets them in
 *   adapter_model.safetensors), lora_a before lora_b.
 * - `lora_a` is PEFT's A [r, in] unchanged: ggml ne = [in, r]; `lora_b` is B [out, r]: ne = [r, out].
 *   llama.cpp checks ne[0] of the base weight = a.ne[0], base ne[1] = b.ne[1], a.ne[1] = b.ne[0].
 * - q/k: the converter permutes q_proj/k_proj output rows for llama.cpp's RoPE (adjacent pairs)
 *   — `reshape(n_head, 2, head_dim/2, ·).swapaxes(1, 2)` with n_head = num_key_value_heads for
 *   k_proj — and a LoRA pair follows its base weight, so B's rows get the same permutation
 *   (A is unaffected). Qwen2 GGUFs use NeoX RoPE and are not permuted.
 * - data type F32 (default) or F16 (`--dtype f16`, like the converter's `--outtype f16`).
 *
 * Scale. llama.cpp stores one alpha per file and scales each pair by alpha / r, with r read from
 * that pair's B (`b->ne[0]`), or by 1 when alpha is 0 (`llama_adapter_lora_weight::get_scale`).
 * That equals PEFT's per-module scaling only when the module's alpha is the config's lora_alpha
 * (≠ 0) and rsLoRA is off; per-module ranks (rank_pattern) are fine since r is per pair.
 * Rule used here: adapter.lora.alpha = the config's lora_alpha (what the converter writes); for
 * every module whose scaling s differs from llama.cpp's — rsLoRA (s = α/√r), an alpha_pattern
 * entry (α_m ≠ lora_alpha), or lora_alpha = 0 — B is multiplied by s / s_llama where
 * s_llama = lora_alpha / r (or 1 when lora_alpha is 0). Then s_llama · B' = s · B for every
 * module, and plain adapters are written bit-identically to the converter's output. (The
 * converter itself ignores use_rslora and alpha_pattern; its output is wrong for those.)
 *
 * Refused (PeftError naming the field), since a GGUF LoRA can only hold A/B pairs on linear
 * weights: non-LoRA adapters (peft_type), modules_to_save copies, lora_bias, trained base biases
 * (bias = all | lora_only), DoRA, and tensors that are not lora_A/lora_B of a known linear layer.
 */
import { basename, resolve } from 'node:path';
import { PeftError } from '../errors.js';
import { writeGgufFile, type GgufKV, type GgufTensorToWrite } from '../io/gguf.js';
import type { ModelConfig } from '../models/config.js';
import type { GgufMap, LinearSpec } from '../models/model.js';
import { familyOf, loadConfig } from '../models/registry.js';
import { parseLoraConfig, readAdapterConfig, requireSavedKeys, type LoraConfig } from '../peft/config.js';
import { readAdapterTensors } from '../peft/format.js';
import { patternKey } from '../peft/inject.js';
import type { LoraAdapter } from '../peft/lora.js';

export type GgufDtype = 'F32' | 'F16';

/** One LoRA pair to export (PEFT orientation). */
export interface LoraPair {
  /** HF module name, e.g. `model.layers.0.self_attn.q_proj` or `lm_head`. */
  module: string;
  r: number;
  alpha: number;
  /** The scaling the adapter applies: alpha/r, or alpha/√r with rsLoRA. */
  scaling: number;
  /** [r, in] row-major */
  A: Float32Array;
  /** [out, r] row-major */
  B: Float32Array;
  inFeatures: number;
  outFeatures: number;
}

export interface GgufLoraOptions {
  dtype?: GgufDtype;
  /** general.name (default: the adapter directory's name, or `adapter`). */
  name?: string;
}

/** What was written, per pair. */
export interface GgufLoraPairReport {
  module: string;
  tensor: string;
  r: number;
  /** PEFT's scaling for this module. */
  scaling: number;
  /** What llama.cpp computes from the file's alpha and this pair's rank. */
  llamaScale: number;
  /** Factor folded into B (1 = B written as is). */
  fold: number;
  permuted: boolean;
}

export interface GgufLoraReport {
  file: string;
  architecture: string;
  alpha: number;
  dtype: GgufDtype;
  pairs: GgufLoraPairReport[];
  /** Notes for the user (e.g. lm_head on a model with tied embeddings). */
  warnings: string[];
}

/**
 * GGUF architecture for a model config, whether q/k rows are permuted (convert_hf_to_gguf) and
 * the llama.cpp tensor names by module role — from the architecture family (src/models/<family>.ts).
 * @throws PeftError when the family has no GGUF mapping.
 */
export function ggufArchitecture(config: ModelConfig): GgufMap {
  const g = familyOf(config.architecture).gguf(config);
  if ('refused' in g) throw new PeftError(`no GGUF export for this model: ${g.refused}`, { field: 'architectures', found: config.architecture });
  return g;
}

const specsByConfig = new WeakMap<ModelConfig, Map<string, { spec: LinearSpec; layer: number }>>();

function linearSpecs(c: ModelConfig): Map<string, { spec: LinearSpec; layer: number }> {
  let m = specsByConfig.get(c);
  if (!m) {
    m = new Map();
    familyOf(c.architecture).moduleMap(c).layers.forEach((l, i) => { for (const spec of l.linears) m!.set(spec.name, { spec, layer: i }); });
    specsByConfig.set(c, m);
  }
  return m;
}

/** The GGUF name of a linear module's weight, and its [out, in] shape under `config` (module map of the family). */
export function ggufBaseTensor(module: string, config: ModelConfig): { name: string; out: number; in: number; kind: 'q' | 'k' | 'other' } {
  const c = config;
  const map = ggufArchitecture(c);
  if (module === 'lm_head') return { name: 'output.weight', out: c.vocabSize, in: c.hiddenSize, kind: 'other' };
  const found = linearSpecs(c).get(module);
  const tensor = found ? map.tensors[found.spec.role] : undefined;
  if (!found || !tensor)
    throw new PeftError('LoRA module has no GGUF counterpart', {
      field: module, expected: `a linear layer of the model (${Object.keys(map.tensors).join(', ')} roles, layers 0..${c.numLayers - 1}) or lm_head`,
    });
  const role = found.spec.role;
  return { name: `blk.${found.layer}.${tensor}.weight`, out: found.spec.outFeatures, in: found.spec.inFeatures, kind: role === 'q' ? 'q' : role === 'k' ? 'k' : 'other' };
}

/**
 * convert_hf_to_gguf `LlamaModel.permute` applied to the rows of a [out, cols] matrix:
 * `W.reshape(nHead, 2, out/nHead/2, cols).swapaxes(1, 2).reshape(out, cols)`, i.e.
 * GGUF row h·d + 2j + i = HF row h·d + i·d/2 + j (d = out/nHead).
 */
export function permuteRowsForGguf(W: Float32Array, out: number, cols: number, nHead: number): Float32Array {
  if (out % nHead !== 0 || (out / nHead) % 2 !== 0) throw new PeftError('cannot permute q/k rows: rows are not a whole number of even-sized heads', { expected: `a multiple of 2·${nHead}`, found: String(out) });
  const d = out / nHead, half = d / 2;
  const res = new Float32Array(W.length);
  for (let h = 0; h < nHead; h++) {
    for (let j = 0; j < half; j++) {
      for (let i = 0; i < 2; i++) {
        const dst = h * d + 2 * j + i, src = h * d + i * half + j;
        res.set(W.subarray(src * cols, (src + 1) * cols), dst * cols);
      }
    }
  }
  return res;
}

/** llama.cpp's scale for a pair of rank r under the file's alpha (float32 arithmetic, as in C++). */
export function llamaCppScale(alpha: number, r: number): number {
  const a = Math.fround(alpha);
  return a !== 0 ? Math.fround(a / Math.fround(r)) : 1;
}

/**
 * The GGUF metadata and tensors of a LoRA adapter (see the module comment for the layout and
 * the scale rule). `loraAlpha` is the config's lora_alpha, written as adapter.lora.alpha.
 */
export function buildLoraGguf(config: ModelConfig, pairs: LoraPair[], loraAlpha: number, useRslora: boolean, opts: GgufLoraOptions & { file?: string } = {}):
  { metadata: GgufKV[]; tensors: GgufTensorToWrite[]; report: GgufLoraReport } {
  const { arch, permuteQK } = ggufArchitecture(config);
  const dtype = opts.dtype ?? 'F32';
  if (dtype !== 'F32' && dtype !== 'F16') throw new PeftError('unsupported GGUF LoRA data type', { field: '--dtype', expected: 'f32 or f16', found: String(dtype) });
  if (pairs.length === 0) throw new PeftError('the adapter has no LoRA layers to export', { file: opts.file });
  const warnings: string[] = [];
  const sorted = [...pairs].sort((a, b) => (a.module < b.module ? -1 : a.module > b.module ? 1 : 0));
  const tensors: GgufTensorToWrite[] = [];
  const report: GgufLoraPairReport[] = [];
  for (const p of sorted) {
    const base = ggufBaseTensor(p.module, config);
    if (p.inFeatures !== base.in || p.outFeatures !== base.out || p.A.length !== p.r * base.in || p.B.length !== base.out * p.r)
      throw new PeftError('LoRA tensors do not match the base model', {
        file: opts.file, field: p.module, expected: `A [${p.r}, ${base.in}], B [${base.out}, ${p.r}]`, found: `A ${p.A.length} values, B ${p.B.length} values (in ${p.inFeatures}, out ${p.outFeatures})`,
      });
    if (p.module === 'lm_head' && config.tieWordEmbeddings)
      warnings.push('lm_head is tied to the input embeddings in this model: the adapter is written for output.weight, which only GGUF conversions that store a separate output.weight have (llama.cpp refuses it otherwise)');
    const llamaScale = llamaCppScale(loraAlpha, p.r);
    const needsFold = useRslora || p.alpha !== loraAlpha || loraAlpha === 0;
    const fold = needsFold ? p.scaling / (loraAlpha !== 0 ? loraAlpha / p.r : 1) : 1;
    let B = p.B;
    if (fold !== 1) {
      B = new Float32Array(p.B.length);
      for (let i = 0; i < B.length; i++) B[i] = p.B[i] * fold;
    }
    const permuted = permuteQK && base.kind !== 'other';
    if (permuted) B = permuteRowsForGguf(B, base.out, p.r, base.kind === 'q' ? config.numHeads : config.numKvHeads);
    checkValues(p.A, `${base.name}.lora_a`, dtype, opts.file);
    checkValues(B, `${base.name}.lora_b`, dtype, opts.file);
    tensors.push({ name: `${base.name}.lora_a`, shape: [p.r, base.in], type: dtype, data: p.A });
    tensors.push({ name: `${base.name}.lora_b`, shape: [base.out, p.r], type: dtype, data: B });
    report.push({ module: p.module, tensor: base.name, r: p.r, scaling: p.scaling, llamaScale, fold, permuted });
  }
  const metadata: GgufKV[] = [
    { key: 'general.architecture', value: { type: 'STRING', value: arch } },
    { key: 'general.type', value: { type: 'STRING', value: 'adapter' } },
    { key: 'adapter.type', value: { type: 'STRING', value: 'lora' } },
    { key: 'general.name', value: { type: 'STRING', value: opts.name ?? 'adapter' } },
    { key: 'adapter.lora.alpha', value: { type: 'FLOAT32', value: loraAlpha } },
    { key: 'general.quantization_version', value: { type: 'UINT32', value: 2 } },
  ];
  return { metadata, tensors, report: { file: opts.file ?? '', architecture: arch, alpha: loraAlpha, dtype, pairs: report, warnings: [...new Set(warnings)] } };
}

/** NaN/inf never make a usable adapter; F16 overflows to inf past 65504 (write F32 then). */
function checkValues(data: Float32Array, name: string, dtype: GgufDtype, file?: string): void {
  const limit = dtype === 'F16' ? 65504 : Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (!Number.isFinite(v)) throw new PeftError('adapter tensor holds a non-finite value', { file, field: name, found: `${v} at index ${i}` });
    if (Math.abs(v) > limit)
      throw new PeftError('value does not fit float16; export with --dtype f32', { file, field: name, expected: '|x| <= 65504', found: `${v} at index ${i}` });
  }
}

/** Refusals common to both entry points: what a GGUF LoRA cannot express. */
function checkExpressible(cfg: LoraConfig, file: string): void {
  if (cfg.modules_to_save && cfg.modules_to_save.length > 0)
    throw new PeftError('GGUF LoRA adapters cannot hold modules_to_save (full trained copies of modules); merge the adapter with `peft merge` instead', {
      file, field: 'modules_to_save', expected: 'null or []', found: JSON.stringify(cfg.modules_to_save),
    });
  if (cfg.lora_bias)
    throw new PeftError('GGUF LoRA adapters cannot hold a bias on lora_B (lora_bias); merge the adapter with `peft merge` instead', { file, field: 'lora_bias', expected: 'false', found: 'true' });
  if (cfg.bias !== 'none')
    throw new PeftError('GGUF LoRA adapters cannot hold trained base-layer biases; merge the adapter with `peft merge` instead', { file, field: 'bias', expected: '"none"', found: JSON.stringify(cfg.bias) });
  if (cfg.use_dora) throw new PeftError('GGUF LoRA adapters cannot hold DoRA magnitudes', { file, field: 'use_dora', expected: 'false', found: 'true' });
}

/** Exports an in-memory LoRA adapter. */
export function exportLoraAdapterGguf(adapter: LoraAdapter, out: string, opts: GgufLoraOptions = {}): GgufLoraReport {
  checkExpressible(adapter.cfg, 'adapter');
  if (adapter.copies.size > 0) throw new PeftError('GGUF LoRA adapters cannot hold modules_to_save copies', { field: 'modules_to_save', found: [...adapter.copies.keys()].join(', ') });
  if (adapter.biases.size > 0) throw new PeftError('GGUF LoRA adapters cannot hold trained base-layer biases', { field: 'bias', found: [...adapter.biases.keys()].join(', ') });
  const pairs: LoraPair[] = [];
  for (const [name, l] of adapter.layers) {
    if (l.biasB) throw new PeftError('GGUF LoRA adapters cannot hold a bias on lora_B (lora_bias)', { field: `${name}.lora_B.bias` });
    if (l.merged) throw new PeftError('the adapter is merged into the base weights; unmerge it before exporting', { field: name });
    pairs.push({ module: name, r: l.r, alpha: l.alpha, scaling: l.scaling, A: l.A.data, B: l.B.data, inFeatures: l.module.inFeatures, outFeatures: l.module.outFeatures });
  }
  const built = buildLoraGguf(adapter.model.config, pairs, adapter.cfg.lora_alpha, adapter.cfg.use_rslora, { ...opts, file: out });
  writeGgufFile(out, built.metadata, built.tensors);
  return built.report;
}

/**
 * Reads a LoRA adapter directory (HF PEFT format) and the base model's config.json (no weights
 * are loaded), checks every tensor against both, and returns the pairs with PEFT's scaling.
 */
export function readLoraPairs(adapterDir: string, config: ModelConfig): { cfg: LoraConfig; pairs: LoraPair[] } {
  const { raw, peftType, file: cfgFile } = readAdapterConfig(adapterDir);
  if (peftType !== 'LORA')
    throw new PeftError(`GGUF adapters hold LoRA only; a ${peftType} adapter has no GGUF LoRA form`, { file: cfgFile, field: 'peft_type', expected: '"LORA"', found: JSON.stringify(peftType) });
  requireSavedKeys(raw, peftType, cfgFile);
  const cfg = parseLoraConfig(raw, cfgFile);
  checkExpressible(cfg, cfgFile);
  const { tensors, file } = readAdapterTensors(adapterDir);
  const A = new Map<string, { data: Float32Array; shape: number[] }>();
  const B = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [key, t] of tensors) {
    const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(key);
    if (!m) {
      let why = 'not a lora_A/lora_B weight';
      if (/\.lora_B\.bias$/.test(key)) why = 'a lora_B bias (lora_bias)';
      else if (/\.lora_embedding_[AB]$/.test(key)) why = 'an embedding LoRA';
      else if (/\.bias$/.test(key)) why = 'a trained bias';
      else if (/\.weight$/.test(key)) why = 'a full module copy (modules_to_save)';
      throw new PeftError(`GGUF LoRA adapters cannot hold this tensor: ${why}`, { file, field: key });
    }
    (m[2] === 'A' ? A : B).set(m[1], t);
  }
  const pairs: LoraPair[] = [];
  for (const [module, a] of A) {
    const b = B.get(module);
    if (!b) throw new PeftError('lora_A without lora_B', { file, field: `base_model.model.${module}.lora_B.weight`, found: 'nothing' });
    const base = ggufBaseTensor(module, config);
    const rk = patternKey(cfg.rank_pattern, module);
    const r = rk ? cfg.rank_pattern[rk] : cfg.r;
    const ak = patternKey(cfg.alpha_pattern, module);
    const alpha = ak ? cfg.alpha_pattern[ak] : cfg.lora_alpha;
    const key = `base_model.model.${module}`;
    if (a.shape.length !== 2 || a.shape[0] !== r || a.shape[1] !== base.in)
      throw new PeftError('adapter tensor shape does not match the base model and config', { file, field: `${key}.lora_A.weight`, expected: `[${r},${base.in}]`, found: `[${a.shape}]` });
    if (b.shape.length !== 2 || b.shape[0] !== base.out || b.shape[1] !== r)
      throw new PeftError('adapter tensor shape does not match the base model and config', { file, field: `${key}.lora_B.weight`, expected: `[${base.out},${r}]`, found: `[${b.shape}]` });
    const scaling = cfg.use_rslora ? alpha / Math.sqrt(r) : alpha / r;
    pairs.push({ module, r, alpha, scaling, A: a.data, B: b.data, inFeatures: base.in, outFeatures: base.out });
  }
  for (const module of B.keys()) if (!A.has(module))
    throw new PeftError('lora_B without lora_A', { file, field: `base_model.model.${module}.lora_A.weight`, found: 'nothing' });
  return { cfg, pairs };
}

/**
 * `peft export --format gguf`: reads the adapter directory and the base model's config.json
 * (`modelDir`), writes the GGUF adapter atomically and returns what it wrote.
 */
export function exportLoraGguf(adapterDir: string, out: string, modelDir: string, opts: GgufLoraOptions = {}): GgufLoraReport {
  const config = loadConfig(modelDir);
  const { cfg, pairs } = readLoraPairs(adapterDir, config);
  const built = buildLoraGguf(config, pairs, cfg.lora_alpha, cfg.use_rslora, { name: opts.name ?? basename(resolve(adapterDir)), dtype: opts.dtype, file: out });
  writeGgufFile(out, built.metadata, built.tensors);
  return built.report;
}
