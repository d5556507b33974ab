/**
 * Tokenizer from a Hugging Face model directory (`tokenizer.json` + `tokenizer_config.json`),
 * through the well-kept `@huggingface/tokenizers` library.
 */
import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { readJsonObject, readTextFile, shortMessage } from './files.js';

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
  return readJsonObject(path, { what: 'a JSON object' });
}

/** Ids from the library, each checked to be an integer in [0, vocabSize) (a malformed tokenizer.json can yield others). */
function checkedIds(file: string, vocabSize: number, ids: number[]): number[] {
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize)
      throw new PeftError('tokenizer produced an id outside its vocabulary', { file, expected: `integer ids in [0, ${vocabSize})`, found: String(id) });
  }
  return ids;
}

/** Runs a tokenizer call; an exception from the library becomes a PeftError naming tokenizer.json. */
function guard<T>(file: string, op: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw new PeftError(`tokenizer failed to ${op}: ${shortMessage(e)}`, { file });
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
  const model = tj.model as { vocab?: Record<string, number> | unknown[] } | undefined;
  const added = Array.isArray(tj.added_tokens) ? (tj.added_tokens as Array<{ id: unknown }>) : [];
  const vocab = model && typeof model === 'object' ? model.vocab : undefined;
  let vocabSize = Array.isArray(vocab) ? vocab.length : vocab && typeof vocab === 'object' ? Object.keys(vocab).length : 0;
  if (vocab && typeof vocab === 'object' && !Array.isArray(vocab)) {
    for (const [piece, id] of Object.entries(vocab)) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
        throw new PeftError('invalid token id in the vocabulary', { file: tjPath, field: `model.vocab[${JSON.stringify(piece).slice(0, 40)}]`, expected: 'a non-negative integer', found: JSON.stringify(id)?.slice(0, 40) ?? 'nothing' });
      vocabSize = Math.max(vocabSize, id + 1);
    }
  }
  for (const [i, a] of added.entries()) {
    const id = a && typeof a === 'object' ? a.id : undefined;
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0)
      throw new PeftError('invalid added token id', { file: tjPath, field: `added_tokens[${i}].id`, expected: 'a non-negative integer', found: JSON.stringify(id) ?? 'nothing' });
    vocabSize = Math.max(vocabSize, id + 1);
  }
  let tok: HFTokenizer;
  try {
    tok = new HFTokenizer(tj as never, cfg as never);
    // a malformed tokenizer.json often builds and fails only at its first encode: try one now, so the
    // error names the file at load time instead of surfacing as a stack trace mid-run
    const probe = tok.encode('Hello world 123', { add_special_tokens: true }).ids;
    if (!Array.isArray(probe) || probe.some((id) => !Number.isInteger(id) || id < 0)) throw new Error(`test encode gave ${JSON.stringify(probe).slice(0, 60)}`);
    tok.decode(probe, { skip_special_tokens: true });
  } catch (e) {
    if (e instanceof PeftError) throw e;
    throw new PeftError(`unsupported or malformed tokenizer: ${shortMessage(e)}`, { file: tjPath, expected: 'a tokenizer.json that @huggingface/tokenizers can encode with' });
  }
  const idOf = (s: string | null): number | null => (s === null ? null : (tok.token_to_id(s) ?? null));
  let chatTemplate: string | null = null;
  if (typeof cfg.chat_template === 'string') chatTemplate = cfg.chat_template;
  else if (Array.isArray(cfg.chat_template)) {
    const d = (cfg.chat_template as Array<{ name: string; template: string }>).find((t) => t.name === 'default');
    chatTemplate = d?.template ?? null;
  }
  const jinjaPath = join(dir, 'chat_template.jinja');
  if (chatTemplate === null && existsSync(jinjaPath)) chatTemplate = readTextFile(jinjaPath, { what: 'a Jinja chat template' });
  return {
    encode: (text, addSpecialTokens = true) => checkedIds(tjPath, vocabSize, guard(tjPath, 'encode', () => tok.encode(text, { add_special_tokens: addSpecialTokens }).ids)),
    decode: (ids, skip = true) => guard(tjPath, 'decode', () => tok.decode(Array.from(ids), { skip_special_tokens: skip })),
    tokenToId: (s) => tok.token_to_id(s) ?? undefined,
    vocabSize,
    bosTokenId: idOf(tokenContent(cfg.bos_token)),
    eosTokenId: idOf(tokenContent(cfg.eos_token)),
    padTokenId: idOf(tokenContent(cfg.pad_token)),
    chatTemplate,
    config: cfg,
  };
}
