/**
 * Reading training records from a data file. The file kind is chosen by extension:
 *
 * - `.txt`: plain text for causal LM. `textSplit: 'blocks'` (default) makes the whole file one
 *   document (later cut into `maxSeqLength` blocks); `'paragraphs'` makes every run of non-blank
 *   lines (documents separated by blank lines) its own record.
 * - `.jsonl`: one JSON object per line (blank lines ignored); `.json`: one JSON array of objects.
 *
 * Record formats, detected per record by its keys, in this order of precedence (so a record with
 * extra keys, e.g. the `text` column of the HF `tatsu-lab/alpaca` dataset, is still read as alpaca):
 *
 * | keys                                 | format              |
 * |--------------------------------------|---------------------|
 * | `messages`                           | `chat`              |
 * | `instruction` / `input` / `output`   | `alpaca`            |
 * | `prompt` / `completion`              | `prompt-completion` |
 * | `text`                               | `text`              |
 *
 * All records of one file must share one format (the first good record sets it). A bad record
 * (invalid JSON, not an object, unknown format, missing field, wrong field type, empty text, chat
 * without an assistant turn, format different from the file's) is a {@link PeftError} naming the
 * file, `line N` (for `.json`: `line N (record [i])`, N the line where the element starts) and
 * the field, unless `skipBadLines` is set: then it is left out and listed in `bad`.
 */
import { extname } from 'node:path';
import { PeftError } from '../../errors.js';
import { readRegularFile } from '../../io/files.js';

/** The training formats a record can have. */
export type RecordFormat = 'text' | 'alpaca' | 'prompt-completion' | 'chat';

/** One chat message; keys other than role/content (e.g. `tool_calls`, `name`) go to the template as given. */
export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

/** A parsed record. `blocks` marks a whole `.txt` file to be cut into fixed-length blocks. */
export type DataRecord =
  | { format: 'text'; text: string; blocks?: boolean }
  | { format: 'alpaca'; instruction: string; input: string; output: string }
  | { format: 'prompt-completion'; prompt: string; completion: string }
  | { format: 'chat'; messages: ChatMessage[]; tools?: unknown };

/** A record and where it came from, for error messages. */
export interface SourcedRecord {
  record: DataRecord;
  file: string;
  /** 1-based line where the record starts. */
  line: number;
  /** `line N`, or `line N (record [i])` for `.json` arrays: the PeftError `field` prefix. */
  where: string;
}

/** A record left out by `skipBadLines`, with the error it would have raised. */
export interface BadLine {
  file: string;
  line: number;
  message: string;
}

export interface ReadOptions {
  /** `.txt` only: one document cut into blocks (default), or one record per blank-line-separated paragraph. */
  textSplit?: 'blocks' | 'paragraphs';
  /** Leave out bad records (listed in the result) instead of throwing. */
  skipBadLines?: boolean;
}

export interface ReadResult {
  file: string;
  /** The format shared by the records (null when none was read). */
  format: RecordFormat | null;
  records: SourcedRecord[];
  /** Records left out under `skipBadLines` (always empty otherwise). */
  bad: BadLine[];
}

/** Stanford Alpaca prompt with a non-empty input (tatsu-lab/stanford_alpaca, train.py `PROMPT_DICT`). */
export const ALPACA_PROMPT_INPUT =
  'Below is an instruction that describes a task, paired with an input that provides further context. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:';

/** Stanford Alpaca prompt without input (tatsu-lab/stanford_alpaca, train.py `PROMPT_DICT`). */
export const ALPACA_PROMPT_NO_INPUT =
  'Below is an instruction that describes a task. ' +
  'Write a response that appropriately completes the request.\n\n' +
  '### Instruction:\n{instruction}\n\n### Response:';

/**
 * The Stanford Alpaca prompt of a record: {@link ALPACA_PROMPT_INPUT} when `input` is not the
 * empty string, else {@link ALPACA_PROMPT_NO_INPUT}. As in tatsu-lab/stanford_alpaca train.py,
 * the output follows the prompt's final `### Response:` directly (no separator), then EOS.
 */
export function alpacaPrompt(instruction: string, input: string): string {
  // function replacements: `$` sequences in the data stay literal
  return input !== ''
    ? ALPACA_PROMPT_INPUT.replace('{instruction}', () => instruction).replace('{input}', () => input)
    : ALPACA_PROMPT_NO_INPUT.replace('{instruction}', () => instruction);
}

/** Short description of a JSON value for error messages. */
export function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return `an array of ${v.length}`;
  if (typeof v === 'object') return `an object with keys [${Object.keys(v).join(', ')}]`;
  if (typeof v === 'string') return v.length > 40 ? `the string ${JSON.stringify(v.slice(0, 40))}…` : `the string ${JSON.stringify(v)}`;
  return `${typeof v} ${String(v)}`;
}

function fieldError(file: string, where: string, field: string, problem: string, expected: string, found: unknown): PeftError {
  return new PeftError(problem, { file, field: `${where}: ${field}`, expected, found: describeValue(found) });
}

function stringField(obj: Record<string, unknown>, key: string, file: string, where: string,
  opts: { optional?: boolean; nonEmpty?: boolean } = {}): string {
  if (!(key in obj) || obj[key] === undefined) {
    if (opts.optional) return '';
    throw new PeftError(`missing field "${key}"`, { file, field: where, expected: `a "${key}" string`, found: `keys [${Object.keys(obj).join(', ')}]` });
  }
  const v = obj[key];
  if (typeof v !== 'string') throw fieldError(file, where, key, 'wrong field type', 'a string', v);
  if (opts.nonEmpty && v.trim() === '') throw fieldError(file, where, key, 'empty text', 'a non-empty string', v);
  return v;
}

/** Detects the format of a JSON object by its keys (precedence in the module comment); null if none. */
export function detectFormat(obj: Record<string, unknown>): RecordFormat | null {
  if ('messages' in obj) return 'chat';
  if ('instruction' in obj || 'output' in obj) return 'alpaca';
  if ('prompt' in obj || 'completion' in obj) return 'prompt-completion';
  if ('text' in obj) return 'text';
  return null;
}

/**
 * Validates one JSON value as a record. Throws PeftError (file, `where: field`, expected, found)
 * on: not an object, unknown format, missing or non-string fields, empty text / output /
 * completion / instruction, messages that are not a non-empty array of {role, content} objects,
 * or no assistant message with content.
 */
export function parseRecord(value: unknown, file: string, where: string): DataRecord {
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    throw new PeftError('record is not a JSON object', { file, field: where, expected: 'a JSON object', found: describeValue(value) });
  const obj = value as Record<string, unknown>;
  const format = detectFormat(obj);
  switch (format) {
    case 'text':
      return { format, text: stringField(obj, 'text', file, where, { nonEmpty: true }) };
    case 'alpaca':
      return {
        format,
        instruction: stringField(obj, 'instruction', file, where, { nonEmpty: true }),
        input: stringField(obj, 'input', file, where, { optional: true }),
        output: stringField(obj, 'output', file, where, { nonEmpty: true }),
      };
    case 'prompt-completion':
      return {
        format,
        prompt: stringField(obj, 'prompt', file, where),
        completion: stringField(obj, 'completion', file, where, { nonEmpty: true }),
      };
    case 'chat':
      return { format, messages: parseMessages(obj.messages, file, where), ...('tools' in obj ? { tools: obj.tools } : {}) };
    default:
      throw new PeftError('unknown record format', {
        file, field: where,
        expected: 'keys "text", "instruction"+"output", "prompt"+"completion" or "messages"',
        found: `keys [${Object.keys(obj).join(', ')}]`,
      });
  }
}

function parseMessages(v: unknown, file: string, where: string): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) throw fieldError(file, where, 'messages', 'wrong field type', 'a non-empty array of {role, content} objects', v);
  let assistantWithContent = 0;
  const out = v.map((m, i): ChatMessage => {
    const f = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw fieldError(file, where, f, 'wrong field type', 'a {role, content} object', m);
    const msg = m as Record<string, unknown>;
    if (typeof msg.role !== 'string' || msg.role === '') throw fieldError(file, where, `${f}.role`, 'wrong field type', 'a non-empty string', msg.role);
    if (typeof msg.content !== 'string') throw fieldError(file, where, `${f}.content`, 'wrong field type', 'a string', msg.content);
    if (msg.role === 'assistant' && msg.content.trim() !== '') assistantWithContent++;
    return msg as ChatMessage;
  });
  if (assistantWithContent === 0)
    throw new PeftError('conversation has no assistant turn to train on', {
      file, field: `${where}: messages`, expected: 'at least one message with role "assistant" and non-empty content',
      found: `roles [${out.map((m) => m.role).join(', ')}]`,
    });
  return out;
}

/** Line (1-based) of a character offset, given the sorted offsets of line starts. */
function lineOf(lineStarts: number[], offset: number): number {
  let lo = 0, hi = lineStarts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (lineStarts[mid] <= offset) lo = mid; else hi = mid - 1;
  }
  return lo + 1;
}

function lineStartsOf(text: string): number[] {
  const starts = [0];
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) starts.push(i + 1);
  return starts;
}

/** Offsets where the elements of a top-level JSON array start (the text is valid JSON). */
function arrayElementOffsets(text: string): number[] {
  const out: number[] = [];
  let depth = 0, inString = false, expectValue = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === ' ' || c === '\n' || c === '\r' || c === '\t') continue;
    if (depth === 1 && expectValue && c !== ']') { out.push(i); expectValue = false; }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') { depth++; if (depth === 1) expectValue = true; }
    else if (c === ']' || c === '}') depth--;
    else if (c === ',' && depth === 1) expectValue = true;
  }
  return out;
}

/**
 * The 1-based line of a JSON.parse error in a JSON array: from the message (`position N` or
 * `line L column C`) when it has one, else the start line of the first element that does not
 * parse on its own.
 */
function jsonErrorLine(text: string, message: string, lineStarts: number[]): number | null {
  const lc = /line (\d+) column/.exec(message);
  if (lc) return Number(lc[1]);
  const pos = /position (\d+)/.exec(message);
  if (pos) return lineOf(lineStarts, Number(pos[1]));
  const offsets = arrayElementOffsets(text);
  for (let i = 0; i < offsets.length; i++) {
    let piece = text.slice(offsets[i], i + 1 < offsets.length ? offsets[i + 1] : text.length).trim();
    if (i + 1 === offsets.length) piece = piece.replace(/\]$/, '').trim();
    piece = piece.replace(/,$/, '');
    try {
      JSON.parse(piece);
    } catch {
      return lineOf(lineStarts, offsets[i]);
    }
  }
  return null;
}

/** Largest data file read (V8 strings stop a little above 2^29 characters). */
const MAX_DATA_BYTES = 512 * 2 ** 20;

function readText(file: string): string {
  // a regular file only (a FIFO or /dev/zero would block or never end), at most MAX_DATA_BYTES
  const text = Buffer.from(readRegularFile(file, { maxBytes: MAX_DATA_BYTES, what: 'a data file (.txt, .jsonl or .json)' })).toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * Reads and validates the records of a data file (`.txt`, `.jsonl`, `.json`; see the module
 * comment). Throws PeftError for an unreadable file, an unsupported extension, a `.json` file
 * that is not valid JSON or not an array, and (without `skipBadLines`) for any bad record.
 */
export function readRecords(file: string, opts: ReadOptions = {}): ReadResult {
  const ext = extname(file).toLowerCase();
  if (ext !== '.txt' && ext !== '.jsonl' && ext !== '.json')
    throw new PeftError('unsupported data file type', { file, expected: 'a .txt, .jsonl or .json file', found: ext === '' ? 'no extension' : ext });
  const text = readText(file);
  const result: ReadResult = { file, format: null, records: [], bad: [] };
  if (ext === '.txt') {
    readTxt(file, text, opts.textSplit ?? 'blocks', result);
    return result;
  }
  const entries: Array<{ line: number; where: string; parse: () => unknown }> = [];
  if (ext === '.jsonl') {
    const lines = text.split('\n');
    lines.forEach((raw, i) => {
      const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
      if (line.trim() === '') return;
      entries.push({
        line: i + 1, where: `line ${i + 1}`,
        parse: () => {
          try {
            return JSON.parse(line) as unknown;
          } catch (e) {
            throw new PeftError('invalid JSON', { file, field: `line ${i + 1}`, expected: 'one JSON object per line', found: (e as Error).message });
          }
        },
      });
    });
  } else {
    const starts = lineStartsOf(text);
    let arr: unknown;
    try {
      arr = JSON.parse(text) as unknown;
    } catch (e) {
      const line = jsonErrorLine(text, (e as Error).message, starts);
      throw new PeftError('invalid JSON', { file, field: line === null ? undefined : `line ${line}`, expected: 'a JSON array of records', found: (e as Error).message });
    }
    if (!Array.isArray(arr)) throw new PeftError('not a JSON array', { file, field: 'line 1', expected: 'a JSON array of records (or use .jsonl)', found: describeValue(arr) });
    const offsets = arrayElementOffsets(text);
    arr.forEach((v, i) => {
      const line = offsets[i] !== undefined ? lineOf(starts, offsets[i]) : 1;
      entries.push({ line, where: `line ${line} (record [${i}])`, parse: () => v });
    });
  }
  let formatLine = 0;
  for (const e of entries) {
    try {
      const record = parseRecord(e.parse(), file, e.where);
      if (result.format === null) { result.format = record.format; formatLine = e.line; }
      else if (record.format !== result.format)
        throw new PeftError('record format differs from the rest of the file', {
          file, field: e.where, expected: `format "${result.format}" (set by line ${formatLine})`, found: `format "${record.format}"`,
        });
      result.records.push({ record, file, line: e.line, where: e.where });
    } catch (err) {
      if (!(err instanceof PeftError) || !opts.skipBadLines) throw err;
      result.bad.push({ file, line: e.line, message: err.message });
    }
  }
  return result;
}

function readTxt(file: string, text: string, split: 'blocks' | 'paragraphs', result: ReadResult): void {
  if (split !== 'blocks' && split !== 'paragraphs')
    throw new PeftError('unknown textSplit', { file, field: 'textSplit', expected: '"blocks" or "paragraphs"', found: String(split) });
  result.format = 'text';
  if (split === 'blocks') {
    if (text.trim() === '') throw new PeftError('empty text', { file, field: 'line 1', expected: 'some text', found: 'an empty or blank file' });
    result.records.push({ record: { format: 'text', text, blocks: true }, file, line: 1, where: 'line 1' });
    return;
  }
  const lines = text.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
  let start = -1;
  for (let i = 0; i <= lines.length; i++) {
    const blank = i === lines.length || lines[i].trim() === '';
    if (!blank && start < 0) start = i;
    if (blank && start >= 0) {
      const para = lines.slice(start, i).join('\n');
      result.records.push({ record: { format: 'text', text: para }, file, line: start + 1, where: `line ${start + 1}` });
      start = -1;
    }
  }
  if (result.records.length === 0) throw new PeftError('empty text', { file, field: 'line 1', expected: 'some text', found: 'an empty or blank file' });
}
