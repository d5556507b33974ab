/** SHA-256 of files and of model directories (streamed in 4 MiB reads, so a large checkpoint never sits in memory). */
import { createHash } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';

/** Hex SHA-256 of a file's bytes. Node's ENOENT/EACCES errors propagate (they name the path). */
export function sha256File(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 << 20);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

export function sha256Text(text: string | Uint8Array): string {
  return createHash('sha256').update(text).digest('hex');
}

/** The files of a Hugging Face model directory that decide what the model computes. */
export const MODEL_CONFIG_FILES = ['config.json'];
export const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'chat_template.jinja'];

/** Weight files of a model directory: every `*.safetensors` (single or sharded), sorted. */
export function weightFiles(dir: string): string[] {
  return readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
}

/** The identity of a base model: per-file hashes of its config, weights and tokenizer, and one digest over them all. */
export interface BaseIdentity {
  /** sha256 over the sorted `name:sha256` lines of every file below. */
  sha256: string;
  config: Record<string, string>;
  weights: Record<string, string>;
  tokenizer: Record<string, string>;
}

const identityCache = new Map<string, { key: string; id: BaseIdentity }>();

/**
 * Hashes a model directory's config, weights and tokenizer files. Cached per directory while the
 * files' sizes and modification times stay the same.
 */
export function baseIdentity(dir: string): BaseIdentity {
  const pick = (names: string[]): string[] => names.filter((f) => existsSync(join(dir, f)));
  const groups = { config: pick(MODEL_CONFIG_FILES), weights: weightFiles(dir), tokenizer: pick(TOKENIZER_FILES) };
  const all = [...groups.config, ...groups.weights, ...groups.tokenizer];
  const key = all.map((f) => { const s = statSync(join(dir, f)); return `${f}:${s.size}:${s.mtimeMs}`; }).join('|');
  const cached = identityCache.get(dir);
  if (cached && cached.key === key) return cached.id;
  const hashes = (files: string[]): Record<string, string> => Object.fromEntries(files.map((f) => [f, sha256File(join(dir, f))]));
  const id: BaseIdentity = { sha256: '', config: hashes(groups.config), weights: hashes(groups.weights), tokenizer: hashes(groups.tokenizer) };
  id.sha256 = sha256Text(Object.entries({ ...id.config, ...id.weights, ...id.tokenizer }).sort(([a], [b]) => a.localeCompare(b)).map(([f, h]) => `${f}:${h}\n`).join(''));
  identityCache.set(dir, { key, id });
  return id;
}
