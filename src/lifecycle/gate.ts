/**
 * The promote gate: `peft registry promote NAME@N --to prod --gate gate.yaml` moves the tag only
 * when the adapter passes every check the gate file states, and keeps the report with the version.
 *
 * Gate file (YAML or JSON; paths relative to the gate file):
 * ```yaml
 * target:                 # the new domain: perplexity must improve
 *   data: grimms.txt
 *   min_improvement: 0.3  # (ppl_base − ppl_adapter) / ppl_base ≥ 0.3
 *   max_examples: 32      # optional: examples evenly spaced over the file (default 32; 0 = all)
 * forgetting:             # the base domain: perplexity may rise only so much
 *   data: tinystories.txt
 *   max_increase: 0.25    # (ppl_adapter − ppl_base) / ppl_base ≤ 0.25
 * exact_match:            # optional: greedy completions of {"prompt","completion"} pairs
 *   data: pairs.jsonl
 *   min_accuracy: 0.5     # share whose whitespace-normalised completion starts the generated text
 *   max_new_tokens: 32
 * max_seq_length: 256     # optional (default 256)
 * text_split: blocks      # optional, .txt files (blocks | paragraphs)
 * ```
 * "base" is the same model with the adapter disabled, evaluated on the same examples.
 */
import { existsSync } from 'node:fs';
import { dirname, isAbsolute, join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { PeftError } from '../errors.js';
import { generate } from '../generate/generate.js';
import type { Tokenizer } from '../io/tokenizer.js';
import type { CausalLM } from '../models/model.js';
import { sequenceSetup } from '../peft/attach.js';
import { loadAdapter } from '../peft/format.js';
import { PeftModel } from '../peft/peft-model.js';
import { evaluate } from '../train/evaluate.js';
import { loadExamples, readRecords } from '../train/data/index.js';
import { sha256Text } from './hash.js';
import { parseJsonText, readTextFile } from '../io/files.js';

export interface GateSpec {
  target?: { data: string; min_improvement: number; max_examples?: number };
  forgetting?: { data: string; max_increase: number; max_examples?: number };
  exact_match?: { data: string; min_accuracy: number; max_new_tokens?: number; max_examples?: number };
  max_seq_length?: number;
  text_split?: 'blocks' | 'paragraphs';
}

export interface GateCheck { name: string; passed: boolean; value: number; threshold: number; detail: string }
export interface GateReport {
  adapter: string;
  gate: string;
  gate_sha256: string;
  created: string;
  passed: boolean;
  checks: GateCheck[];
}

function num(file: string, field: string, v: unknown, min = -Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) throw new PeftError('invalid gate value', { file, field, expected: `a number ≥ ${min}`, found: JSON.stringify(v) });
  return v;
}

/** Reads and validates a gate file; data paths are resolved against its directory. Throws PeftError naming the file and the field. */
export function readGate(file: string): { spec: GateSpec; sha256: string } {
  if (!existsSync(file)) throw new PeftError('gate file not found', { file });
  const text = readTextFile(file, { what: 'a gate file (YAML or JSON)' });
  let v: unknown;
  if (file.endsWith('.json')) v = parseJsonText(text, file, { what: 'a gate file' });
  else try { v = parseYaml(text, { maxAliasCount: 100 }); } catch (e) { throw new PeftError('invalid gate file', { file, expected: 'YAML or JSON', found: (e as Error).message }); }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftError('a gate file holds a mapping', { file, expected: 'target / forgetting / exact_match sections' });
  const g = v as { target?: Record<string, unknown>; forgetting?: Record<string, unknown>; exact_match?: Record<string, unknown>; max_seq_length?: unknown; text_split?: unknown };
  const known = ['target', 'forgetting', 'exact_match', 'max_seq_length', 'text_split'];
  for (const k of Object.keys(g)) if (!known.includes(k)) throw new PeftError('unknown gate key', { file, field: k, expected: known.join(', ') });
  const rel = (field: string, p: unknown): string => {
    if (typeof p !== 'string' || !p) throw new PeftError('missing data file', { file, field, expected: 'a path' });
    const abs = isAbsolute(p) ? p : join(dirname(file), p);
    if (!existsSync(abs)) throw new PeftError('gate data file not found', { file, field, found: abs });
    return abs;
  };
  const spec: GateSpec = {};
  if (g.target) spec.target = { data: rel('target.data', g.target.data), min_improvement: num(file, 'target.min_improvement', g.target.min_improvement), max_examples: g.target.max_examples === undefined ? undefined : num(file, 'target.max_examples', g.target.max_examples, 0) };
  if (g.forgetting) spec.forgetting = { data: rel('forgetting.data', g.forgetting.data), max_increase: num(file, 'forgetting.max_increase', g.forgetting.max_increase), max_examples: g.forgetting.max_examples === undefined ? undefined : num(file, 'forgetting.max_examples', g.forgetting.max_examples, 0) };
  if (g.exact_match) spec.exact_match = {
    data: rel('exact_match.data', g.exact_match.data), min_accuracy: num(file, 'exact_match.min_accuracy', g.exact_match.min_accuracy, 0),
    max_new_tokens: g.exact_match.max_new_tokens === undefined ? undefined : num(file, 'exact_match.max_new_tokens', g.exact_match.max_new_tokens, 1),
    max_examples: g.exact_match.max_examples === undefined ? undefined : num(file, 'exact_match.max_examples', g.exact_match.max_examples, 0),
  };
  if (g.max_seq_length !== undefined) spec.max_seq_length = num(file, 'max_seq_length', g.max_seq_length, 2);
  if (g.text_split !== undefined) {
    if (g.text_split !== 'blocks' && g.text_split !== 'paragraphs') throw new PeftError('invalid gate value', { file, field: 'text_split', expected: 'blocks or paragraphs', found: JSON.stringify(g.text_split) });
    spec.text_split = g.text_split;
  }
  if (!spec.target && !spec.forgetting && !spec.exact_match) throw new PeftError('a gate needs at least one check', { file, expected: 'target, forgetting or exact_match' });
  return { spec, sha256: sha256Text(text) };
}

/** n examples evenly spaced over the file (all when n is 0 or exceeds the count), so a file's first section does not stand for all of it. */
function spread<T>(all: T[], n: number): T[] {
  if (n <= 0 || n >= all.length) return all;
  return Array.from({ length: n }, (_, i) => all[Math.floor((i * all.length) / n)]);
}

const norm = (s: string): string => s.replace(/\s+/g, ' ').trim();

/**
 * Evaluates the adapter in `adapterDir` on `model` (its base) against the gate. Never moves a tag:
 * the caller promotes only when `passed`.
 */
export function runGate(model: CausalLM, tok: Tokenizer, adapterDir: string, gateFile: string, adapterRef: string): GateReport {
  const { spec, sha256 } = readGate(gateFile);
  const maxSeqLength = spec.max_seq_length ?? 256;
  const peft = new PeftModel(model);
  loadAdapter(peft, adapterDir, 'gate');
  const checks: GateCheck[] = [];
  const ppl = (data: string, maxExamples: number | undefined): { base: number; adapter: number; tokens: number } => {
    const all = loadExamples(data, tok, { maxSeqLength, textSplit: spec.text_split }).examples;
    const ex = spread(all, maxExamples ?? 32);
    const adapter = evaluate(model, ex, { maxSeqLength });
    const base = peft.withDisabled(() => evaluate(model, ex, { maxSeqLength }));
    return { base: base.perplexity, adapter: adapter.perplexity, tokens: adapter.tokens };
  };
  if (spec.target) {
    const r = ppl(spec.target.data, spec.target.max_examples);
    const imp = (r.base - r.adapter) / r.base;
    checks.push({ name: 'target', passed: imp >= spec.target.min_improvement, value: imp, threshold: spec.target.min_improvement,
      detail: `perplexity ${r.base.toFixed(3)} → ${r.adapter.toFixed(3)} on ${r.tokens} tokens: improvement ${(100 * imp).toFixed(1)}% (needs ≥ ${(100 * spec.target.min_improvement).toFixed(1)}%)` });
  }
  if (spec.forgetting) {
    const r = ppl(spec.forgetting.data, spec.forgetting.max_examples);
    const inc = (r.adapter - r.base) / r.base;
    checks.push({ name: 'forgetting', passed: inc <= spec.forgetting.max_increase, value: inc, threshold: spec.forgetting.max_increase,
      detail: `base-domain perplexity ${r.base.toFixed(3)} → ${r.adapter.toFixed(3)} on ${r.tokens} tokens: increase ${(100 * inc).toFixed(1)}% (allowed ≤ ${(100 * spec.forgetting.max_increase).toFixed(1)}%)` });
  }
  if (spec.exact_match) {
    const em = spec.exact_match;
    const recs = readRecords(em.data).records.filter((r) => r.record.format === 'prompt-completion');
    const n = em.max_examples && em.max_examples > 0 ? Math.min(em.max_examples, recs.length) : recs.length;
    if (n === 0) throw new PeftError('exact_match data has no {"prompt","completion"} records', { file: em.data });
    const setup = sequenceSetup(peft);
    let hits = 0;
    const misses: string[] = [];
    for (const rec of recs.slice(0, n)) {
      const r = rec.record as { prompt: string; completion: string };
      const ids = tok.encode(r.prompt);
      const want = norm(r.completion);
      const out = generate(model, ids, { maxNewTokens: em.max_new_tokens ?? Math.max(4, tok.encode(r.completion, false).length + 2), temperature: 0 }, setup);
      const got = norm(tok.decode(out.newIds));
      if (got.startsWith(want)) hits++;
      else if (misses.length < 3) misses.push(`${rec.where}: wanted ${JSON.stringify(want)}, got ${JSON.stringify(got.slice(0, want.length + 20))}`);
    }
    const acc = hits / n;
    checks.push({ name: 'exact_match', passed: acc >= em.min_accuracy, value: acc, threshold: em.min_accuracy,
      detail: `${hits}/${n} completions exact (${(100 * acc).toFixed(1)}%, needs ≥ ${(100 * em.min_accuracy).toFixed(1)}%)${misses.length ? `; e.g. ${misses.join('; ')}` : ''}` });
  }
  peft.deleteAdapter('gate');
  return { adapter: adapterRef, gate: gateFile, gate_sha256: sha256, created: new Date().toISOString(), passed: checks.every((c) => c.passed), checks };
}
