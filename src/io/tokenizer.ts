/**
 * Tokenizer from a Hugging Face model directory (`tokenizer.json` + `tokenizer_config.json`),
 * through the well-kept `@huggingface/tokenizers` library.
 */
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';

export interface Tokenizer {
  /** Token ids of text; BOS/special tokens added as the tokenizer's post-processor says unless addSpecialTokens is false. */
  encode(text: string, addSpecialTokens?: boolean): number[];
  /** Text of ids (special tokens skipped unless skipSpecialTokens is false). */
  decode(ids: ArrayLike<number>, skipSpecialTokens?: boolean): string;
  /** The id of a token string, or undefined. */
  tokenToId(token: string): number | undefined;
  vocabSize: number;
  bosTokenId: number | null;
  eosTokenId: number | null;
  padTokenId: number | null;
  /** The chat template from tokenizer_config.json, if any. */
  chatTemplate: string | null;
  /** tokenizer_config.json as read (or {}). */
  config: Record<string, unknown>;
}

function readJson(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PeftError(`cannot read file: ${(e as Error).message}`, { file: path });
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new PeftError('invalid JSON', { file: path, expected: 'a JSON object', found: (e as Error).message });
  }
}

function tokenContent(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/** Loads the tokenizer of a model directory. Throws PeftError naming the file when it is missing or invalid. */
export function loadTokenizer(dir: string): Tokenizer {
  const tjPath = join(dir, 'tokenizer.json');
  if (!existsSync(tjPath)) throw new PeftError('tokenizer.json not found', { file: dir, expected: 'tokenizer.json in the model directory' });
  const tj = readJson(tjPath);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? readJson(cfgPath) : {};
  let tok: HFTokenizer;
  try {
    tok = new HFTokenizer(tj as never, cfg as never);
  } catch (e) {
    throw new PeftError(`unsupported tokenizer: ${(e as Error).message}`, { file: tjPath });
  }
  const idOf = (s: string | null): number | null => (s === null ? null : (tok.token_to_id(s) ?? null));
  const model = tj.model as { vocab?: Record<string, number> | unknown[] } | undefined;
  const added = (tj.added_tokens as Array<{ id: number }> | undefined) ?? [];
  let vocabSize = Array.isArray(model?.vocab) ? model.vocab.length : Object.keys(model?.vocab ?? {}).length;
  for (const a of added) vocabSize = Math.max(vocabSize, a.id + 1);
  let chatTemplate: string | null = null;
  if (typeof cfg.chat_template === 'string') chatTemplate = cfg.chat_template;
  else if (Array.isArray(cfg.chat_template)) {
    const d = (cfg.chat_template as Array<{ name: string; template: string }>).find((t) => t.name === 'default');
    chatTemplate = d?.template ?? null;
  }
  const jinjaPath = join(dir, 'chat_template.jinja');
  if (chatTemplate === null && existsSync(jinjaPath)) chatTemplate = readFileSync(jinjaPath, 'utf8');
  return {
    encode: (text, addSpecialTokens = true) => tok.encode(text, { add_special_tokens: addSpecialTokens }).ids,
    decode: (ids, skip = true) => tok.decode(Array.from(ids), { skip_special_tokens: skip }),
    tokenToId: (s) => tok.token_to_id(s) ?? undefined,
    vocabSize,
    bosTokenId: idOf(tokenContent(cfg.bos_token)),
    eosTokenId: idOf(tokenContent(cfg.eos_token)),
    padTokenId: idOf(tokenContent(cfg.pad_token)),
    chatTemplate,
    config: cfg,
  };
}
