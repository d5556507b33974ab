/**
 * `peft doctor`: checks that catch the common ways a fine-tuning goes wrong, on a CPU in seconds.
 *
 * Before training ({@link doctorData}): the data rendered exactly as `peft train` will see it
 * (same reader, chat template, truncation and masks: src/train/data), each token with its loss
 * mask, and the counts of examples dropped (nothing left to learn within --max-seq-length) and
 * truncated. No target token left is an error.
 *
 * After training ({@link doctorAdapter}), for any adapter directory (ours or HF PEFT's) and a base:
 * tensor-key prefixes against the base's modules; `base_model_name_or_path` and the recorded base
 * hash (training_provenance.json) against the given base; config against tensor shapes (the
 * adapter is loaded by the same loader as every command); and a numeric probe: max |Δ logit|
 * between base and adapted model on a fixed prompt (0 means the adapter does nothing).
 * {@link targetChecks} adds a runtime's known limits: vLLM (LoRA only, no modules_to_save, no
 * DoRA, bias "none", rank ≤ --max-lora-rank: vllm/lora/peft_helper.py validate_legal), llama.cpp
 * (LoRA pairs on linear layers of a supported architecture: the GGUF export is run into a
 * temporary file) and HF PEFT (a peft_type PEFT knows, safetensors weights).
 *
 * Findings carry a severity; the CLI exits 1 when any is an error (and 2 with --strict when only
 * warnings), so CI can gate on it.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { PeftError } from '../errors.js';
import { exportLoraGguf } from '../export/gguf-lora.js';
import { readSafetensorsLazy, readModelWeights } from '../io/safetensors.js';
import type { Tokenizer } from '../io/tokenizer.js';
import { defaultContext, forwardHidden, lmLogits, type CausalLM } from '../models/model.js';
import { readAdapterConfig } from '../peft/config.js';
import { loadAdapter } from '../peft/format.js';
import { PeftModel } from '../peft/peft-model.js';
import { noGrad, withArena } from '../tensor/index.js';
import { loadExamples, type DataOptions, type DataStats } from '../train/data/index.js';
import { compareBase } from './provenance.js';

export type Severity = 'ok' | 'warning' | 'error';
export interface Finding { check: string; severity: Severity; message: string }

export interface DoctorToken { id: number; text: string; learned: boolean }
export interface DataReport {
  stats: DataStats;
  examples: Array<{ source: string; tokens: DoctorToken[] }>;
  findings: Finding[];
}

/**
 * Renders the first `numExamples` examples of a data file token by token with their loss mask
 * (`learned`: the token is a prediction target) and checks the whole file's counts.
 * Throws PeftError for unreadable data (file and line), as `peft train` would.
 */
export function doctorData(file: string, tok: Tokenizer, opts: DataOptions & { numExamples?: number }): DataReport {
  if (!existsSync(file)) throw new PeftError('data file not found', { file });
  const { examples, stats } = loadExamples(file, tok, opts);
  const n = opts.numExamples ?? 3;
  const shown = examples.slice(0, n).map((ex) => ({
    source: ex.source ?? file,
    tokens: tokenPieces(tok, ex.ids).map((text, t) => ({ id: ex.ids[t], text, learned: t > 0 && ex.targets[t] === 1 })),
  }));
  const findings: Finding[] = [];
  const total = stats.examples + stats.droppedTooLong;
  if (stats.targets === 0) findings.push({ check: 'targets', severity: 'error', message: `no target tokens remain in ${file} (${stats.droppedTooLong} of ${total} examples dropped: nothing to learn within --max-seq-length ${opts.maxSeqLength})` });
  else findings.push({ check: 'targets', severity: 'ok', message: `${stats.targets} target tokens of ${stats.tokens} (${(100 * stats.targets / Math.max(1, stats.tokens)).toFixed(1)}%) in ${stats.examples} examples` });
  if (stats.droppedTooLong > 0) findings.push({ check: 'dropped', severity: 'warning', message: `${stats.droppedTooLong} of ${total} examples dropped: the prompt alone fills --max-seq-length ${opts.maxSeqLength}` });
  if (stats.truncated > 0) findings.push({ check: 'truncated', severity: stats.format === 'text' ? 'ok' : 'warning', message: `${stats.truncated} examples truncated to ${opts.maxSeqLength} tokens` });
  if (stats.skippedBadLines > 0) findings.push({ check: 'bad-lines', severity: 'warning', message: `${stats.skippedBadLines} malformed lines skipped (first: ${stats.badLines[0]?.message})` });
  return { stats, examples: shown, findings };
}

/** Each token's own text as it appears in the decoded sequence (leading spaces kept): decode(ids[..t+1]) minus decode(ids[..t]). */
function tokenPieces(tok: Tokenizer, ids: Int32Array): string[] {
  const out: string[] = [];
  let prev = '';
  for (let t = 0; t < ids.length; t++) {
    const text = tok.decode(ids.subarray(0, t + 1), false);
    out.push(text.startsWith(prev) ? text.slice(prev.length) : tok.decode([ids[t]], false));
    prev = text;
  }
  return out;
}

export type DeployTarget = 'vllm' | 'llama.cpp' | 'peft';
export const DEPLOY_TARGETS: DeployTarget[] = ['vllm', 'llama.cpp', 'peft'];

export interface AdapterReport {
  adapter: string;
  base: string;
  peftType: string;
  /** max |Δ logit| between the base and the adapted model on the probe prompt (null when loading failed). */
  maxAbsLogitDelta: number | null;
  findings: Finding[];
}

/** Module path of a PEFT tensor key (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` → `model.layers.0.self_attn.q_proj`), or null for keys not tied to one module. */
export function adapterKeyModule(key: string): string | null {
  const k = key.replace(/^base_model\.model\./, '');
  const m = /^(.*?)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector|ia3_l|modules_to_save)(\.|$)/.exec(k);
  if (m) return m[1];
  return null;
}

/**
 * Checks an adapter directory against the base model `model` (loaded from `baseDir`). Never
 * throws for a bad adapter: every problem is a finding.
 */
export function doctorAdapter(adapterDir: string, model: CausalLM, baseDir: string, tok: Tokenizer, opts: { prompt?: string } = {}): AdapterReport {
  const findings: Finding[] = [];
  const report: AdapterReport = { adapter: adapterDir, base: baseDir, peftType: '?', maxAbsLogitDelta: null, findings };
  let raw: Record<string, unknown>;
  try {
    const c = readAdapterConfig(adapterDir);
    raw = c.raw;
    report.peftType = c.peftType;
  } catch (e) {
    findings.push({ check: 'config', severity: 'error', message: (e as Error).message });
    return report;
  }
  // base identity: name, then content hash
  const named = typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null;
  if (named === null) findings.push({ check: 'base-name', severity: 'warning', message: 'adapter_config.json has no base_model_name_or_path' });
  else if (named !== baseDir && basename(named.replace(/\/+$/, '')) !== basename(resolve(baseDir)) && resolve(named) !== resolve(baseDir))
    findings.push({ check: 'base-name', severity: 'warning', message: `base_model_name_or_path is "${named}" but the base given is ${baseDir}` });
  else findings.push({ check: 'base-name', severity: 'ok', message: `base_model_name_or_path "${named}" names the given base` });
  try {
    const b = compareBase(adapterDir, baseDir);
    if (b.status === 'mismatch') findings.push({ check: 'base-hash', severity: 'error', message: `trained on a different base (training_provenance.json): ${b.differences.slice(0, 3).join('; ')}` });
    else if (b.status === 'match') findings.push({ check: 'base-hash', severity: 'ok', message: `base content hash matches the training base (${b.found!.slice(0, 12)}…)` });
    else findings.push({ check: 'base-hash', severity: 'ok', message: 'no training_provenance.json (not trained by peft-ts): base hash not checked' });
  } catch (e) {
    findings.push({ check: 'base-hash', severity: 'error', message: (e as Error).message });
  }
  // tensor keys against the base's modules
  const file = join(adapterDir, 'adapter_model.safetensors');
  if (existsSync(file)) {
    const keys = [...readSafetensorsLazy(file).tensors.keys()];
    const baseNames = [...readModelWeights(baseDir, { lazy: true }).keys()];
    const modules = new Set<string>();
    for (const n of baseNames) { const parts = n.split('.'); for (let i = 1; i < parts.length; i++) modules.add(parts.slice(0, i).join('.')); }
    const unknown = keys.map((k) => ({ k, m: adapterKeyModule(k.replace(/\.default(?=\.|$)/, '')) })).filter((x) => x.m !== null && !modules.has(x.m));
    if (unknown.length) findings.push({ check: 'keys', severity: 'error', message: `${unknown.length} of ${keys.length} tensors target modules the base does not have, e.g. ${unknown[0].k} (module ${unknown[0].m})` });
    else findings.push({ check: 'keys', severity: 'ok', message: `${keys.length} tensors, every module prefix found in the base` });
  }
  // config vs shapes, by loading it (the loaders name the tensor and both shapes)
  const peft = new PeftModel(model);
  try {
    loadAdapter(peft, adapterDir, 'doctor');
    findings.push({ check: 'shapes', severity: 'ok', message: 'config and tensor shapes agree with the base model' });
  } catch (e) {
    findings.push({ check: 'shapes', severity: 'error', message: (e as Error).message });
    return report;
  }
  // numeric probe
  const ids = tok.encode(opts.prompt ?? 'Once upon a time, there was a little girl');
  const logits = (): Float32Array => noGrad(() => withArena(() => {
    const batch = { ids: Int32Array.from(ids), B: 1, T: ids.length };
    const ctx = defaultContext(false);
    const { hidden } = forwardHidden(model, batch, ctx);
    return lmLogits(model, hidden, ctx).data.slice();
  }));
  const adapted = logits();
  const base = peft.withDisabled(logits);
  // prompt tuning adds virtual rows in front: compare the last rows (the real tokens)
  const V = model.config.vocabSize;
  const n = Math.min(adapted.length, base.length);
  let d = 0;
  for (let i = 0; i < n; i++) d = Math.max(d, Math.abs(adapted[adapted.length - n + i] - base[base.length - n + i]));
  report.maxAbsLogitDelta = d;
  if (!(d > 1e-6)) findings.push({ check: 'effect', severity: 'error', message: `the adapter does not change the logits (max |Δ| ${d.toExponential(2)} over ${ids.length} tokens × ${V} vocab): untrained or zero weights` });
  else findings.push({ check: 'effect', severity: 'ok', message: `max |Δ logit| ${d.toPrecision(4)} on the probe prompt` });
  return report;
}

/** A runtime's known limits for an adapter directory. */
export function targetChecks(adapterDir: string, target: DeployTarget, o: { baseDir: string; maxLoraRank?: number }): Finding[] {
  const out: Finding[] = [];
  const { raw, peftType } = readAdapterConfig(adapterDir);
  const err = (check: string, message: string): void => { out.push({ check: `${target}:${check}`, severity: 'error', message }); };
  const ok = (check: string, message: string): void => { out.push({ check: `${target}:${check}`, severity: 'ok', message }); };
  if (target === 'vllm') {
    if (peftType !== 'LORA') { err('peft_type', `vLLM serves LoRA adapters only, this is ${peftType}`); return out; }
    const mts = raw.modules_to_save as unknown[] | null | undefined;
    if (mts && mts.length) err('modules_to_save', `vLLM only supports modules_to_save being None, found ${JSON.stringify(mts)}`);
    if (raw.use_dora) err('use_dora', 'vLLM does not support DoRA (use_dora: true)');
    if (raw.bias !== undefined && raw.bias !== 'none') err('bias', `vLLM needs bias "none", found "${String(raw.bias)}"`);
    if (raw.lora_bias) err('lora_bias', 'vLLM does not load lora_bias');
    const ranks = [Number(raw.r ?? 8), ...Object.values((raw.rank_pattern ?? {}) as Record<string, number>).map(Number)];
    const r = Math.max(...ranks);
    const max = o.maxLoraRank ?? 16;
    if (r > max) err('rank', `rank ${r} exceeds --max-lora-rank ${max} (vLLM's default is 16; launch with --max-lora-rank ≥ ${r})`);
    else ok('rank', `rank ${r} ≤ --max-lora-rank ${max}`);
    if (!out.some((f) => f.severity === 'error')) ok('format', 'loadable by vLLM\'s LoRA loader');
  } else if (target === 'llama.cpp') {
    if (peftType !== 'LORA') { err('peft_type', `llama.cpp loads LoRA adapters only, this is ${peftType}`); return out; }
    const tmp = mkdtempSync(join(tmpdir(), 'peft-doctor-'));
    try {
      const r = exportLoraGguf(adapterDir, join(tmp, 'adapter.gguf'), o.baseDir);
      ok('gguf', `GGUF conversion works: ${r.pairs.length} LoRA pairs, architecture ${r.architecture}`);
      for (const w of r.warnings) out.push({ check: 'llama.cpp:gguf', severity: 'warning', message: w });
    } catch (e) {
      err('gguf', (e as Error).message);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  } else {
    if (peftType === 'BOTTLENECK') err('peft_type', 'HF PEFT has no bottleneck-adapter type (peft_type BOTTLENECK is peft-ts\'s own)');
    else ok('peft_type', `HF PEFT loads peft_type ${peftType}`);
    if (!existsSync(join(adapterDir, 'adapter_model.safetensors'))) err('weights', 'adapter_model.safetensors missing');
  }
  return out;
}

/** The CLI's exit code for a set of findings: 1 with any error, 2 with warnings under `strict`, else 0. */
export function exitCode(findings: Finding[], strict = false): number {
  if (findings.some((f) => f.severity === 'error')) return 1;
  if (strict && findings.some((f) => f.severity === 'warning')) return 2;
  return 0;
}
