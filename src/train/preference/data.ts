/**
 * Preference data: reading, tokenizing (through the SFT code: the same prompt/completion
 * tokenization, chat templates and assistant masks as `peft train` on SFT data), batching.
 *
 * Record formats (`.jsonl`, one object per line, or `.json`, an array), as TRL names them:
 * - paired, standard: `{"prompt": str, "chosen": str, "rejected": str}`;
 * - paired, conversational: `{"prompt": [messages], "chosen": [messages], "rejected": [messages]}`
 *   (`prompt` may be left out: then the longest common message prefix of chosen and rejected is the
 *   prompt, TRL's "implicit prompt");
 * - unpaired (KTO): `{"prompt": str, "completion": str, "label": true|false}`, or with message lists.
 *
 * A standard record becomes two examples `prompt + chosen` and `prompt + rejected`, each tokenized
 * once with the tokenizer's special tokens around it and EOS after it, the completion (and EOS)
 * learned (train/data `prompt-completion`). A conversational one is rendered with the chat
 * template; the learned tokens are the assistant turns of the completion (with their end-of-turn
 * marker), not those of the prompt. Examples are truncated on the right to maxSeqLength; a pair
 * whose chosen or rejected side has no completion token left is dropped (counted).
 */
import { extname } from 'node:path';
import { PeftError } from '../../errors.js';
import { readRegularFile } from '../../io/files.js';
import type { Tokenizer } from '../../io/tokenizer.js';
import type { Batch } from '../../models/model.js';
import { DEFAULT_CHAT_TEMPLATE } from '../data/chat.js';
import {
  compileChatTemplate, countTargets, encodeLabelled, encodeRecord, renderChat, seededPermutation, templateSpecialTokens, truncateExample,
  IGNORE_LABEL, type ChatMessage, type ChatTemplate, type Example,
} from '../data/index.js';
import { describeValue } from '../data/formats.js';

/** A chosen/rejected pair of tokenized examples (targets = completion tokens). */
export interface PairExample {
  chosen: Example;
  rejected: Example;
  source: string;
}

/** A KTO example: prompt + completion tokenized together, and whether the completion is desirable. */
export interface UnpairedExample {
  example: Example;
  desirable: boolean;
  /** Tokens before the first learned token (the prompt), for KTO's mismatched KL pairs. */
  promptLength: number;
  source: string;
}

export type PreferenceKind = 'paired' | 'unpaired';

export interface PreferenceData {
  kind: PreferenceKind;
  pairs: PairExample[];
  unpaired: UnpairedExample[];
  /** Records dropped because truncation left a side without completion tokens. */
  droppedTooLong: number;
  records: number;
}

type Messages = ChatMessage[];
type RawPaired = { prompt: string | Messages; chosen: string | Messages; rejected: string | Messages };
type RawUnpaired = { prompt: string | Messages; completion: string | Messages; label: boolean };

function isMessages(v: unknown): v is Messages {
  return Array.isArray(v) && v.length > 0 && v.every((m) => typeof m === 'object' && m !== null && typeof (m as ChatMessage).role === 'string' && typeof (m as ChatMessage).content === 'string');
}

function readJsonRecords(file: string): Array<{ value: unknown; where: string }> {
  const ext = extname(file).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.json') throw new PeftError('unsupported preference data file type', { file, expected: 'a .jsonl or .json file', found: ext || 'no extension' });
  // a regular file only, bounded (a FIFO or /dev/zero would block or never end)
  const text = Buffer.from(readRegularFile(file, { maxBytes: 512 * 2 ** 20, what: 'a preference data file (.jsonl or .json)' })).toString('utf8');
  if (ext === '.json') {
    let arr: unknown;
    try {
      arr = JSON.parse(text);
    } catch (e) {
      throw new PeftError('invalid JSON', { file, expected: 'a JSON array of records', found: (e as Error).message });
    }
    if (!Array.isArray(arr)) throw new PeftError('not a JSON array', { file, expected: 'a JSON array of records', found: describeValue(arr) });
    return arr.map((value, i) => ({ value, where: `record [${i}]` }));
  }
  const out: Array<{ value: unknown; where: string }> = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '') return;
    try {
      out.push({ value: JSON.parse(line), where: `line ${i + 1}` });
    } catch (e) {
      throw new PeftError('invalid JSON', { file, field: `line ${i + 1}`, expected: 'one JSON object per line', found: (e as Error).message });
    }
  });
  return out;
}

/** Is this record paired (`chosen`/`rejected`) or unpaired (`completion` + `label`)? Null if neither. */
export function preferenceKind(obj: Record<string, unknown>): PreferenceKind | null {
  if ('chosen' in obj || 'rejected' in obj) return 'paired';
  if ('label' in obj && 'completion' in obj) return 'unpaired';
  return null;
}

/** True when a data file's first record is a preference record (paired or unpaired). */
export function isPreferenceFile(file: string): boolean {
  const ext = extname(file).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.json') return false;
  try {
    const first = readJsonRecords(file)[0]?.value;
    return typeof first === 'object' && first !== null && !Array.isArray(first) && preferenceKind(first as Record<string, unknown>) !== null;
  } catch {
    return false;
  }
}

function field(obj: Record<string, unknown>, key: string, file: string, where: string, allowMessages: boolean): string | Messages {
  const v = obj[key];
  if (typeof v === 'string') {
    if (key !== 'prompt' && v.trim() === '') throw new PeftError('empty text', { file, field: `${where}: ${key}`, expected: 'a non-empty string', found: describeValue(v) });
    return v;
  }
  if (allowMessages && isMessages(v)) return v;
  throw new PeftError(v === undefined ? `missing field "${key}"` : 'wrong field type', {
    file, field: `${where}: ${key}`, expected: allowMessages ? 'a string or a non-empty list of {role, content} messages' : 'a string', found: describeValue(v),
  });
}

/** TRL's implicit prompt: the longest common message prefix of chosen and rejected. */
function splitImplicitPrompt(chosen: Messages, rejected: Messages): { prompt: Messages; chosen: Messages; rejected: Messages } {
  let k = 0;
  while (k < chosen.length && k < rejected.length && chosen[k].role === rejected[k].role && chosen[k].content === rejected[k].content) k++;
  return { prompt: chosen.slice(0, k), chosen: chosen.slice(k), rejected: rejected.slice(k) };
}

function parsePaired(obj: Record<string, unknown>, file: string, where: string): RawPaired {
  const chosen = field(obj, 'chosen', file, where, true), rejected = field(obj, 'rejected', file, where, true);
  const chat = typeof chosen !== 'string';
  if (chat !== (typeof rejected !== 'string'))
    throw new PeftError('chosen and rejected must have the same form', { file, field: `${where}: rejected`, expected: chat ? 'a message list like chosen' : 'a string like chosen', found: describeValue(rejected) });
  if (!('prompt' in obj) && chat) return splitImplicitPrompt(chosen as Messages, rejected as Messages);
  const prompt = field(obj, 'prompt', file, where, chat);
  if (chat !== (typeof prompt !== 'string'))
    throw new PeftError('prompt and completions must have the same form', { file, field: `${where}: prompt`, expected: chat ? 'a message list' : 'a string', found: describeValue(prompt) });
  return { prompt, chosen, rejected };
}

function parseUnpaired(obj: Record<string, unknown>, file: string, where: string): RawUnpaired {
  const completion = field(obj, 'completion', file, where, true);
  const prompt = field(obj, 'prompt', file, where, typeof completion !== 'string');
  if (typeof obj.label !== 'boolean') throw new PeftError('wrong field type', { file, field: `${where}: label`, expected: 'true (desirable) or false (undesirable)', found: describeValue(obj.label) });
  return { prompt, completion, label: obj.label };
}

interface Encoder {
  encode(prompt: string | Messages, completion: string | Messages, where: string): Example;
}

function encoder(file: string, tok: Tokenizer, maxSeqLength: number, chatTemplate: string | undefined, labelEndOfTurn: boolean | undefined): Encoder {
  let tpl: ChatTemplate | null = null;
  return {
    encode(prompt, completion, where) {
      if (typeof completion === 'string') {
        const [ex] = encodeRecord({ record: { format: 'prompt-completion', prompt: prompt as string, completion }, file, line: 0, where }, tok, { maxSeqLength });
        return { ...ex, source: `${file}: ${where}` };
      }
      tpl ??= compileChatTemplate(chatTemplate ?? tok.chatTemplate ?? DEFAULT_CHAT_TEMPLATE);
      const messages = [...(prompt as Messages), ...completion];
      const src = { file, where };
      const r = renderChat(tpl, messages, { specialTokens: templateSpecialTokens(tok), labelEndOfTurn }, src);
      // learn the completion's assistant turns only: the last spans
      const k = completion.filter((m) => m.role === 'assistant' && m.content.trim() !== '').length;
      if (k === 0) throw new PeftError('completion has no assistant message to learn', { file, field: `${where}: completion`, expected: 'an assistant message with content', found: `roles [${completion.map((m) => m.role).join(', ')}]` });
      const lt = encodeLabelled(tok, r.text, r.spans.slice(-k), src);
      return { ids: Int32Array.from(lt.ids), targets: Uint8Array.from(lt.targets), source: `${file}: ${where}` };
    },
  };
}

export interface PreferenceDataOptions {
  maxSeqLength: number;
  chatTemplate?: string;
  labelEndOfTurn?: boolean;
}

/**
 * Reads a preference data file (paired or unpaired; all records of one kind) into tokenized
 * examples. Throws PeftError naming the file and `line N: field` for a bad record, a file mixing
 * kinds, or a file where no record survives truncation.
 */
export function loadPreferenceData(file: string, tok: Tokenizer, opts: PreferenceDataOptions): PreferenceData {
  const enc = encoder(file, tok, opts.maxSeqLength, opts.chatTemplate, opts.labelEndOfTurn);
  const out: PreferenceData = { kind: 'paired', pairs: [], unpaired: [], droppedTooLong: 0, records: 0 };
  let kind: PreferenceKind | null = null;
  const cut = (ex: Example): Example | null => truncateExample(ex, opts.maxSeqLength)?.example ?? null;
  for (const { value, where } of readJsonRecords(file)) {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new PeftError('record is not a JSON object', { file, field: where, expected: 'a JSON object', found: describeValue(value) });
    const obj = value as Record<string, unknown>;
    const k = preferenceKind(obj);
    if (!k) throw new PeftError('not a preference record', { file, field: where, expected: 'keys "prompt","chosen","rejected" or "prompt","completion","label"', found: `keys [${Object.keys(obj).join(', ')}]` });
    if (kind && k !== kind) throw new PeftError('record kind differs from the rest of the file', { file, field: where, expected: `${kind} records`, found: `a ${k} record` });
    kind = k;
    out.records++;
    if (k === 'paired') {
      const r = parsePaired(obj, file, where);
      const chosen = cut(enc.encode(r.prompt, r.chosen, where)), rejected = cut(enc.encode(r.prompt, r.rejected, where));
      if (!chosen || !rejected) { out.droppedTooLong++; continue; }
      out.pairs.push({ chosen, rejected, source: `${file}: ${where}` });
    } else {
      const r = parseUnpaired(obj, file, where);
      const ex = cut(enc.encode(r.prompt, r.completion, where));
      if (!ex) { out.droppedTooLong++; continue; }
      out.unpaired.push({ example: ex, desirable: r.label, promptLength: promptLength(ex), source: `${file}: ${where}` });
    }
  }
  out.kind = kind ?? 'paired';
  if (out.pairs.length + out.unpaired.length === 0)
    throw new PeftError('no preference examples', { file, expected: 'at least one record with completion tokens within maxSeqLength', found: `${out.records} records, ${out.droppedTooLong} too long for --max-seq-length ${opts.maxSeqLength}` });
  return out;
}

/** Tokens before the first learned one (t ≥ 1). */
export function promptLength(ex: Example): number {
  for (let t = 1; t < ex.ids.length; t++) if (ex.targets[t]) return t;
  return ex.ids.length;
}

/** KTO's mismatched sequence: the prompt of `a` followed by the completion of `b` (TRL `KL_completion_ids`). */
export function mismatched(a: UnpairedExample, b: UnpairedExample, maxSeqLength: number): Example {
  const comp = b.example.ids.subarray(b.promptLength);
  const ids = new Int32Array(a.promptLength + comp.length);
  ids.set(a.example.ids.subarray(0, a.promptLength));
  ids.set(comp, a.promptLength);
  const targets = new Uint8Array(ids.length);
  targets.set(b.example.targets.subarray(b.promptLength), a.promptLength);
  return { ids: ids.subarray(0, maxSeqLength), targets: targets.subarray(0, maxSeqLength) };
}

/** Sequences as model rows (one per row, right-padded), with next-token labels and the completion mask. */
export interface SequenceBatch {
  batch: Batch;
  /** [B·T]: the next token of the same sequence at every real position (−100 at its last token and on padding). */
  labels: Int32Array;
  /** [B·T]: 1 where the label is a completion (learned) token. */
  completion: Uint8Array;
  /** Real tokens (for tokens/s). */
  numTokens: number;
}

/** Collates sequences into one right-padded batch (see {@link SequenceBatch}). */
export function collateSequences(seqs: readonly Example[], padId = 0): SequenceBatch {
  const B = seqs.length;
  const T = Math.max(2, ...seqs.map((s) => s.ids.length));
  const ids = new Int32Array(B * T).fill(padId);
  const labels = new Int32Array(B * T).fill(IGNORE_LABEL);
  const completion = new Uint8Array(B * T);
  const keyMask = new Uint8Array(B * T);
  let numTokens = 0;
  seqs.forEach((s, b) => {
    const L = s.ids.length, o = b * T;
    ids.set(s.ids, o);
    keyMask.fill(1, o, o + L);
    numTokens += L;
    for (let t = 0; t + 1 < L; t++) {
      labels[o + t] = s.ids[t + 1];
      completion[o + t] = s.targets[t + 1] ? 1 : 0;
    }
  });
  return { batch: { ids, B, T, keyMask }, labels, completion, numTokens };
}

/** Serialisable position of a {@link IndexLoader}. */
export interface IndexLoaderState {
  epoch: number;
  index: number;
  seed: number;
  numExamples: number;
}

/** Endless, deterministic, resumable batches of example indices (a seeded shuffle per epoch). */
export interface IndexLoader {
  next(): number[];
  state(): IndexLoaderState;
  restore(s: IndexLoaderState): void;
}

export function indexLoader(n: number, batchSize: number, seed = 0): IndexLoader {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new PeftError('invalid option', { field: 'batchSize', expected: 'an integer ≥ 1', found: String(batchSize) });
  let epoch = 0, index = 0;
  let order = seededPermutation(n, seed, 0);
  return {
    next() {
      if (index >= n) { epoch++; index = 0; order = seededPermutation(n, seed, epoch); }
      const out = order.slice(index, index + batchSize);
      index += batchSize;
      return out;
    },
    state: () => ({ epoch, index, seed, numExamples: n }),
    restore(s) {
      if (!s || typeof s !== 'object' || s.numExamples !== n)
        throw new PeftError('loader state does not fit this data', { field: 'state.numExamples', expected: `${n} (this data set)`, found: String(s?.numExamples) });
      epoch = s.epoch; index = s.index;
      order = seededPermutation(n, seed, epoch);
    },
  };
}

export { countTargets };
