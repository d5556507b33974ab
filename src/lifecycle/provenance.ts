/**
 * Provenance of a trained adapter, beside HF PEFT's files in the adapter directory:
 *
 * - `training_provenance.json` (ours): SHA-256 of the base model's config, weights and tokenizer,
 *   of every data file, the full training arguments, the tool and its version, and the run's
 *   metrics (validation loss/perplexity before → after, base-domain perplexity before → after).
 * - `README.md`: a Hugging Face model card whose YAML front matter has `base_model`,
 *   `library_name: peft`, `tags` (as PEFT's `create_or_update_model_card` writes them, plus the
 *   method) , `pipeline_tag: text-generation`, the data hashes and a `model-index` with the
 *   perplexities (https://huggingface.co/docs/hub/model-cards#model-card-metadata).
 *
 * HF PEFT's `PeftModel.from_pretrained` reads only adapter_config.json and the weights, so the
 * two extra files load without a warning (checked by test/lifecycle/interop.test.ts).
 *
 * On load, {@link checkBase} compares the recorded base digest with the base actually given and
 * throws a PeftError naming the first differing file unless the mismatch is allowed.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { PeftError } from '../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { PACKAGE_ROOT } from '../paths.js';
import { baseIdentity, sha256File, sha256Text, type BaseIdentity } from './hash.js';
import { readJsonObject } from '../io/files.js';

export const PROVENANCE_FILE = 'training_provenance.json';
export const MODEL_CARD_FILE = 'README.md';
/** Marks a model card this tool wrote (so a retrain may replace it; a user's own README is kept). */
const CARD_MARKER = '<!-- written by peft-ts -->';

export interface DataFileHash { role: string; path: string; sha256: string; bytes: number }

export interface RunMetrics {
  /** Validation set: base model (adapter disabled) and after training. */
  eval_loss_before?: number; eval_loss?: number;
  eval_perplexity_before?: number; eval_perplexity?: number;
  /** Base-domain (forgetting) data: perplexity before → after. */
  forgetting_perplexity_before?: number; forgetting_perplexity_after?: number;
  steps?: number; train_loss?: number;
}

export interface Provenance {
  format: 'peft-ts-provenance/1';
  tool: { name: string; version: string };
  created: string;
  method: string;
  peft_type: string;
  base: { name_or_path: string } & BaseIdentity;
  data: DataFileHash[];
  train_args: Record<string, unknown>;
  metrics: RunMetrics;
}

export function toolVersion(): string {
  try {
    return (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

/** Hashes of the data files a run read (missing paths skipped). */
export function hashDataFiles(files: Array<{ role: string; path: string | undefined }>): DataFileHash[] {
  const out: DataFileHash[] = [];
  for (const f of files) {
    if (!f.path || !existsSync(f.path)) continue;
    const bytes = readFileSync(f.path).byteLength;
    out.push({ role: f.role, path: f.path, sha256: sha256File(f.path), bytes });
  }
  return out;
}

/** Builds the provenance record of a run on the base model in `baseDir`. */
export function buildProvenance(o: {
  baseDir: string; baseName: string; method: string; peftType: string; trainArgs: Record<string, unknown>;
  data: Array<{ role: string; path: string | undefined }>; chatTemplate?: string; metrics: RunMetrics;
}): Provenance {
  const data = hashDataFiles(o.data);
  if (o.chatTemplate) data.push({ role: 'chat_template', path: '(inline)', sha256: sha256Text(o.chatTemplate), bytes: Buffer.byteLength(o.chatTemplate) });
  const args = { ...o.trainArgs };
  if (typeof args.chatTemplate === 'string') args.chatTemplate = `sha256:${sha256Text(args.chatTemplate)}`;
  return {
    format: 'peft-ts-provenance/1',
    tool: { name: 'peft-ts', version: toolVersion() },
    created: new Date().toISOString(),
    method: o.method,
    peft_type: o.peftType,
    base: { name_or_path: o.baseName, ...baseIdentity(o.baseDir) },
    data,
    train_args: args,
    metrics: o.metrics,
  };
}

/** The model card (README.md) text for a provenance record. */
export function modelCard(p: Provenance, title: string): string {
  const metrics: Array<{ type: string; value: number; name: string }> = [];
  const m = p.metrics;
  if (m.eval_perplexity !== undefined) metrics.push({ type: 'perplexity', value: round(m.eval_perplexity), name: 'validation perplexity' });
  if (m.forgetting_perplexity_after !== undefined) metrics.push({ type: 'perplexity', value: round(m.forgetting_perplexity_after), name: 'base-domain perplexity (forgetting)' });
  const front: Record<string, unknown> = {
    base_model: p.base.name_or_path,
    library_name: 'peft',
    pipeline_tag: 'text-generation',
    tags: [...new Set([`base_model:adapter:${p.base.name_or_path}`, p.peft_type.toLowerCase(), p.method, 'peft-ts'])],
    base_model_sha256: p.base.sha256,
    training_data: p.data.map((d) => ({ role: d.role, file: basename(d.path), sha256: d.sha256 })),
  };
  if (metrics.length) front['model-index'] = [{ name: title, results: [{ task: { type: 'text-generation' }, dataset: { name: basename(p.data[0]?.path ?? 'data'), type: 'text' }, metrics }] }];
  const row = (k: string, v: number | undefined): string => (v === undefined ? '' : `| ${k} | ${round(v)} |\n`);
  return `---\n${toYaml(front)}---\n${CARD_MARKER}\n\n# ${title}\n\n` +
    `A ${p.peft_type} adapter (${p.method}) for \`${p.base.name_or_path}\`, trained with peft-ts ${p.tool.version}.\n\n` +
    `## Training data\n\n${p.data.map((d) => `- ${d.role}: \`${basename(d.path)}\` (sha256 \`${d.sha256}\`, ${d.bytes} bytes)`).join('\n')}\n\n` +
    `## Results\n\n| metric | value |\n|---|---:|\n` +
    row('validation perplexity, base', m.eval_perplexity_before) + row('validation perplexity, adapted', m.eval_perplexity) +
    row('base-domain perplexity, before', m.forgetting_perplexity_before) + row('base-domain perplexity, after', m.forgetting_perplexity_after) +
    `\nFull arguments, base-model hashes and data hashes: \`${PROVENANCE_FILE}\`.\n\n### Framework versions\n\n- peft-ts ${p.tool.version}\n`;
}

function round(x: number): number {
  return Number(x.toPrecision(6));
}

/** Writes training_provenance.json and (unless the user's own README.md is there) the model card, atomically. */
export function writeProvenance(dir: string, p: Provenance): void {
  writeJsonAtomic(join(dir, PROVENANCE_FILE), p);
  const card = join(dir, MODEL_CARD_FILE);
  if (existsSync(card) && !readFileSync(card, 'utf8').includes(CARD_MARKER)) return;
  writeFileAtomic(card, modelCard(p, basename(resolve(dir))));
}

/** The provenance record of an adapter directory, or null when it has none. Throws a PeftError for an unreadable one. */
export function readProvenance(dir: string): Provenance | null {
  const f = join(dir, PROVENANCE_FILE);
  if (!existsSync(f)) return null;
  const p = readJsonObject(f, { what: 'a peft-ts provenance record' }) as unknown as Provenance;
  if (p?.format !== 'peft-ts-provenance/1' || typeof p.base?.sha256 !== 'string')
    throw new PeftError('invalid provenance file', { file: f, field: 'format / base.sha256', expected: 'peft-ts-provenance/1 with a base digest', found: String(p?.format) });
  return p;
}

export interface BaseCheck {
  /** 'match', 'mismatch' or 'unknown' (no provenance recorded). */
  status: 'match' | 'mismatch' | 'unknown';
  /** Differing files: `weights/model.safetensors: recorded abc…, found def…` */
  differences: string[];
  recorded?: string;
  found?: string;
}

/** Compares an adapter's recorded base identity with the model directory `baseDir`. */
export function compareBase(adapterDir: string, baseDir: string): BaseCheck {
  const p = readProvenance(adapterDir);
  if (!p) return { status: 'unknown', differences: [] };
  const now = baseIdentity(baseDir);
  if (now.sha256 === p.base.sha256) return { status: 'match', differences: [], recorded: p.base.sha256, found: now.sha256 };
  const differences: string[] = [];
  for (const g of ['config', 'weights', 'tokenizer'] as const) {
    const a = p.base[g] ?? {}, b = now[g];
    for (const f of new Set([...Object.keys(a), ...Object.keys(b)])) {
      if (a[f] !== b[f]) differences.push(`${f}: recorded ${a[f]?.slice(0, 12) ?? 'absent'}, found ${b[f]?.slice(0, 12) ?? 'absent'}`);
    }
  }
  return { status: 'mismatch', differences, recorded: p.base.sha256, found: now.sha256 };
}

/**
 * Refuses to run an adapter on a base other than the one it was trained on (by content hash).
 * No-op for adapters without provenance (e.g. HF PEFT's) and when `allowMismatch`.
 * Throws PeftError naming the provenance file, the first differing base file and both hashes.
 */
export function checkBase(adapterDir: string, baseDir: string, allowMismatch = false): BaseCheck {
  const c = compareBase(adapterDir, baseDir);
  if (c.status === 'mismatch' && !allowMismatch) {
    throw new PeftError(`the adapter was trained on a different base model than ${baseDir} (${c.differences.slice(0, 3).join('; ')}); pass --allow-base-mismatch to run it anyway`, {
      file: join(adapterDir, PROVENANCE_FILE), field: 'base.sha256', expected: c.recorded, found: c.found,
    });
  }
  return c;
}
