/**
 * Training data for `peft train --data FILE`: reading (formats.ts), chat rendering and masks
 * (chat.ts), tokenization into {@link Example}s with the tokens to learn (here), and batching
 * (batching.ts).
 *
 * What is learned, per format:
 * - text (`.txt`, `{"text"}`): every token. A document is BOS (as the tokenizer's post-processor
 *   adds it) + text + EOS (when the tokenizer has one). A `.txt` file in `blocks` mode is one
 *   document whose token stream is cut into `maxSeqLength` blocks (the last may be shorter); in
 *   `paragraphs` mode, and for `{"text"}` records, every document is one example.
 * - alpaca (`{"instruction","input","output"}`): the Stanford Alpaca prompt (formats.ts,
 *   tatsu-lab/stanford_alpaca) followed directly by the output, then EOS; the output tokens and
 *   EOS are learned.
 * - prompt/completion: prompt + completion (concatenated as given), then EOS; the completion
 *   tokens and EOS are learned.
 * - chat (`{"messages"}`): the tokenizer's chat template (chat.ts); the assistant contents and the
 *   end-of-turn markers after them are learned; no BOS/EOS is added (the template writes them).
 *
 * Supervised texts are tokenized ONCE as a whole and the learned character spans are mapped to
 * tokens (chat.ts `encodeLabelled`), so a token straddling the prompt/answer boundary is learned.
 * Examples longer than maxSeqLength are truncated on the right (the prompt, being first, is kept
 * and the completion cut); an example left without a learned token (the prompt alone is too long)
 * is dropped and counted in `droppedTooLong`.
 */
import { PeftError } from '../../errors.js';
import type { Tokenizer } from '../../io/tokenizer.js';
import { countTargets, seededPermutation, truncateExample, type Example } from './batching.js';
import { compileChatTemplate, DEFAULT_CHAT_TEMPLATE, encodeLabelled, renderChat, templateSpecialTokens, type ChatTemplate, type LabelledTokens, type RecordSource } from './chat.js';
import { alpacaPrompt, readRecords, type BadLine, type RecordFormat, type SourcedRecord } from './formats.js';

export {
  collate, countTargets, createLoader, evalBatches, IGNORE_LABEL, packRows, seededPermutation, truncateExample,
  type BatchOptions, type DataLoader, type Example, type LoaderOptions, type LoaderState, type TrainBatch,
} from './batching.js';
export {
  compileChatTemplate, encodeLabelled, renderChat, templateSpecialTokens, tokenOffsets,
  type ChatTemplate, type LabelledTokens, type RecordSource, type RenderedChat, type RenderOptions, type TokenOffsets,
} from './chat.js';
export {
  ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, alpacaPrompt, detectFormat, parseRecord, readRecords,
  type BadLine, type ChatMessage, type DataRecord, type ReadOptions, type ReadResult, type RecordFormat, type SourcedRecord,
} from './formats.js';

export interface DataOptions {
  /** Tokens per training row at most (block length for `.txt` blocks; truncation length otherwise). */
  maxSeqLength: number;
  /** `.txt` files: one document cut into blocks (default) or one example per blank-line-separated paragraph. */
  textSplit?: 'blocks' | 'paragraphs';
  /** Skip bad records (counted and listed in the stats) instead of throwing. */
  skipBadLines?: boolean;
  /** Fraction of the examples held out for validation (0 ≤ f < 1): a seeded shuffle of the indices, whose tail is the validation set. */
  valFraction?: number;
  /** A separate validation file (any supported format); excludes valFraction. */
  valFile?: string;
  /** Seed of the validation split. Default 0. */
  seed?: number;
  /** Chat: also learn the end-of-turn marker after each assistant content (default true). */
  labelEndOfTurn?: boolean;
  /** Chat: a Jinja template to use instead of the tokenizer's. */
  chatTemplate?: string;
}

/** What reading one file gave. */
export interface DataStats {
  file: string;
  format: RecordFormat | null;
  /** Good records read. */
  records: number;
  /** Records skipped under skipBadLines (the count of `badLines`). */
  skippedBadLines: number;
  badLines: BadLine[];
  /** Examples produced (after block splitting and dropping). */
  examples: number;
  /** Examples cut to maxSeqLength. */
  truncated: number;
  /** Examples dropped because nothing to learn was left within maxSeqLength. */
  droppedTooLong: number;
  /** Tokens in the examples (after truncation). */
  tokens: number;
  /** Labelled rows (positions whose next token is learned). */
  targets: number;
}

export interface Dataset {
  train: Example[];
  /** Validation examples (empty without valFraction / valFile). */
  val: Example[];
  /** One entry per file read: the data file, then the validation file if any. */
  stats: DataStats[];
  /** Bad records skipped over all files. */
  skippedBadLines: number;
}

/** Special ids the tokenizer's post-processor puts before and after a text (e.g. [BOS], []). */
const affixCache = new WeakMap<Tokenizer, { prefix: number[]; suffix: number[] }>();
function specialAffixes(tok: Tokenizer): { prefix: number[]; suffix: number[] } {
  let a = affixCache.get(tok);
  if (!a) {
    const core = tok.encode('a', false), full = tok.encode('a', true);
    a = { prefix: [], suffix: [] };
    for (let p = 0; p + core.length <= full.length; p++) {
      if (core.every((id, i) => full[p + i] === id)) { a = { prefix: full.slice(0, p), suffix: full.slice(p + core.length) }; break; }
    }
    affixCache.set(tok, a);
  }
  return a;
}

/** tok.encode(text, true) of a text cut to a character budget as in {@link encodeLabelledBounded}. */
function encodeTextBounded(tok: Tokenizer, text: string, maxTokens: number): number[] {
  let budget = Math.max(4096, maxTokens * 32);
  while (text.length > budget) {
    let cut = budget;
    const c = text.charCodeAt(cut - 1);
    if (c >= 0xd800 && c <= 0xdbff) cut--;
    const ids = tok.encode(text.slice(0, cut), true);
    if (ids.length >= maxTokens + 16) return ids;
    budget *= 4;
  }
  return tok.encode(text, true);
}

function withEos(ids: number[], targets: number[], tok: Tokenizer): void {
  if (tok.eosTokenId !== null && ids[ids.length - 1] !== tok.eosTokenId) { ids.push(tok.eosTokenId); targets.push(1); }
}

function example(ids: number[], targets: ArrayLike<number>, source: string): Example {
  return { ids: Int32Array.from(ids), targets: Uint8Array.from(targets), source };
}

/**
 * {@link encodeLabelled} of at most about `maxTokens` tokens' worth of text: a record is truncated
 * to maxSeqLength tokens on the right anyway, so a huge record (a 64 MiB line) is cut to a
 * character budget (32 characters per token, at least 4096) before tokenizing, keeping memory
 * bounded. The budget grows ×4 while the cut text gives fewer than maxTokens + 16 tokens (so the
 * kept tokens never depend on where the cut fell); spans are clipped to the cut.
 */
export function encodeLabelledBounded(tok: Tokenizer, text: string, spans: ReadonlyArray<readonly [number, number]>, src: RecordSource, maxTokens: number): LabelledTokens {
  let budget = Math.max(4096, maxTokens * 32);
  while (text.length > budget) {
    let cut = budget;
    const c = text.charCodeAt(cut - 1);
    if (c >= 0xd800 && c <= 0xdbff) cut--; // never split a surrogate pair
    const clipped = spans.filter(([a]) => a < cut).map(([a, b]) => [a, Math.min(b, cut)] as const);
    const r = encodeLabelled(tok, text.slice(0, cut), clipped, src);
    if (r.ids.length >= maxTokens + 16) return r;
    budget *= 4;
  }
  return encodeLabelled(tok, text, spans, src);
}

/** prompt + answer tokenized once with the post-processor's specials around it; the answer (and the specials after it, and EOS) learned. */
function supervised(tok: Tokenizer, prompt: string, answer: string, src: RecordSource, maxTokens: number): { ids: number[]; targets: number[] } {
  const text = prompt + answer;
  const core = encodeLabelledBounded(tok, text, [[prompt.length, text.length]], src, maxTokens);
  const { prefix, suffix } = specialAffixes(tok);
  const ids = [...prefix, ...core.ids, ...suffix];
  const targets = [...prefix.map(() => 0), ...core.targets, ...suffix.map(() => 1)];
  withEos(ids, targets, tok);
  return { ids, targets };
}

/**
 * Tokenizes one record into examples (several for a `.txt` file in blocks mode), before
 * truncation. Throws PeftError (file, `line N`) when the chat template rejects the conversation,
 * the tokens cannot be mapped back to the text, or nothing is left to learn.
 */
export function encodeRecord(rec: SourcedRecord, tok: Tokenizer, opts: { maxSeqLength: number; chat?: ChatTemplate | null; labelEndOfTurn?: boolean }): Example[] {
  const r = rec.record;
  const src: RecordSource = { file: rec.file, where: rec.where };
  const source = `${rec.file}: ${rec.where}`;
  let ids: number[], targets: number[];
  switch (r.format) {
    case 'text': {
      // a record (not a whole .txt document in blocks) keeps only maxSeqLength tokens: cut first
      ids = r.blocks ? tok.encode(r.text, true) : encodeTextBounded(tok, r.text, opts.maxSeqLength);
      targets = ids.map(() => 1);
      withEos(ids, targets, tok);
      if (r.blocks) {
        const out: Example[] = [];
        for (let s = 0; s < ids.length; s += opts.maxSeqLength) {
          const e = Math.min(ids.length, s + opts.maxSeqLength);
          if (e - s >= 2) out.push(example(ids.slice(s, e), targets.slice(s, e), `${rec.file}: block ${out.length}`));
        }
        return out;
      }
      break;
    }
    case 'alpaca':
      ({ ids, targets } = supervised(tok, alpacaPrompt(r.instruction, r.input), r.output, src, opts.maxSeqLength));
      break;
    case 'prompt-completion':
      ({ ids, targets } = supervised(tok, r.prompt, r.completion, src, opts.maxSeqLength));
      break;
    case 'chat': {
      if (!opts.chat) throw new PeftError('no chat template for a chat record', { file: rec.file, field: rec.where, expected: 'a chat_template in the tokenizer', found: 'none' });
      const rendered = renderChat(opts.chat, r.messages, {
        specialTokens: templateSpecialTokens(tok), tools: r.tools, labelEndOfTurn: opts.labelEndOfTurn,
      }, src);
      const lt = encodeLabelledBounded(tok, rendered.text, rendered.spans, src, opts.maxSeqLength);
      ids = lt.ids;
      targets = Array.from(lt.targets);
      break;
    }
  }
  const ex = example(ids, targets, source);
  if (countTargets(ex) === 0)
    throw new PeftError('nothing to learn in this record', { file: rec.file, field: rec.where, expected: 'at least one target token after the first', found: `${ids.length} tokens, none learned` });
  return [ex];
}

function checkOptions(opts: DataOptions): void {
  const m = opts.maxSeqLength;
  if (typeof m !== 'number' || !Number.isInteger(m) || m < 2)
    throw new PeftError('invalid option', { field: 'maxSeqLength', expected: 'an integer ≥ 2', found: String(m) });
  const f = opts.valFraction;
  if (f !== undefined && (typeof f !== 'number' || !(f >= 0 && f < 1)))
    throw new PeftError('invalid option', { field: 'valFraction', expected: 'a number in [0, 1)', found: String(f) });
  if (f !== undefined && f > 0 && opts.valFile !== undefined)
    throw new PeftError('conflicting options', { field: 'valFraction', expected: 'either valFraction or valFile', found: 'both' });
  if (opts.textSplit !== undefined && opts.textSplit !== 'blocks' && opts.textSplit !== 'paragraphs')
    throw new PeftError('invalid option', { field: 'textSplit', expected: '"blocks" or "paragraphs"', found: String(opts.textSplit) });
}

/**
 * Reads one data file into examples (tokenized, truncated to maxSeqLength, examples left without
 * a target dropped) and its statistics. Throws PeftError naming the file and `line N` for bad
 * records unless `skipBadLines` (then they are counted in `skippedBadLines`).
 */
export function loadExamples(file: string, tok: Tokenizer, opts: DataOptions): { examples: Example[]; stats: DataStats } {
  checkOptions(opts);
  const read = readRecords(file, { textSplit: opts.textSplit, skipBadLines: opts.skipBadLines });
  let chat: ChatTemplate | null = null;
  if (read.format === 'chat') {
    const source = opts.chatTemplate ?? tok.chatTemplate ?? DEFAULT_CHAT_TEMPLATE;
    if (source === null || source === undefined)
      throw new PeftError('chat records need a chat template, and the tokenizer has none', {
        file, expected: 'a chat_template in tokenizer_config.json (or an explicit template)', found: 'no template',
      });
    chat = compileChatTemplate(source);
  }
  const bad = [...read.bad];
  const examples: Example[] = [];
  let truncated = 0, dropped = 0, tokens = 0, targets = 0, records = 0;
  for (const rec of read.records) {
    let exs: Example[];
    try {
      exs = encodeRecord(rec, tok, { maxSeqLength: opts.maxSeqLength, chat, labelEndOfTurn: opts.labelEndOfTurn });
    } catch (e) {
      if (!(e instanceof PeftError) || !opts.skipBadLines) throw e;
      bad.push({ file, line: rec.line, message: e.message });
      continue;
    }
    records++;
    for (const ex of exs) {
      const t = truncateExample(ex, opts.maxSeqLength);
      if (!t) { dropped++; continue; }
      if (t.truncated) truncated++;
      examples.push(t.example);
      tokens += t.example.ids.length;
      targets += countTargets(t.example);
    }
  }
  bad.sort((a, b) => a.line - b.line);
  return {
    examples,
    stats: {
      file, format: read.format, records, skippedBadLines: bad.length, badLines: bad,
      examples: examples.length, truncated, droppedTooLong: dropped, tokens, targets,
    },
  };
}

/**
 * Splits n items into train and validation indices: a seeded permutation of 0..n−1 whose last
 * round(n·valFraction) entries (at least 1, at most n − 1) are the validation set. Both lists are
 * returned in ascending order. Deterministic for (n, valFraction, seed).
 * Throws PeftError when a split is asked for fewer than 2 items.
 */
export function splitIndices(n: number, valFraction: number, seed = 0): { train: number[]; val: number[] } {
  if (!(valFraction > 0)) return { train: Array.from({ length: n }, (_, i) => i), val: [] };
  if (n < 2) throw new PeftError('too few examples to hold out a validation set (use --val-fraction 0 or --val-data FILE)', { field: 'valFraction', expected: 'at least 2 examples', found: `${n}` });
  const nVal = Math.min(n - 1, Math.max(1, Math.round(n * valFraction)));
  const perm = seededPermutation(n, seed, 0x7fffffff);
  return {
    train: perm.slice(0, n - nVal).sort((a, b) => a - b),
    val: perm.slice(n - nVal).sort((a, b) => a - b),
  };
}

/**
 * Loads the training data of `peft train --data FILE` (and its validation set: `valFraction` of
 * it, or `valFile`). Throws PeftError for bad options (field named) and bad data (file and line).
 */
export function loadDataset(file: string, tok: Tokenizer, opts: DataOptions): Dataset {
  checkOptions(opts);
  const main = loadExamples(file, tok, opts);
  const stats = [main.stats];
  let train = main.examples, val: Example[] = [];
  const noExamples = (): PeftError => new PeftError('no training examples', {
    file, expected: 'at least one example with a target within maxSeqLength',
    found: `${main.stats.records} records, ${main.stats.droppedTooLong} too long for --max-seq-length ${opts.maxSeqLength}, ${main.stats.skippedBadLines} skipped`,
  });
  if (train.length === 0) throw noExamples();
  if (opts.valFile !== undefined) {
    const v = loadExamples(opts.valFile, tok, opts);
    val = v.examples;
    stats.push(v.stats);
  } else if (opts.valFraction) {
    const split = splitIndices(train.length, opts.valFraction, opts.seed ?? 0);
    val = split.val.map((i) => main.examples[i]);
    train = split.train.map((i) => main.examples[i]);
  }
  if (train.length === 0) throw noExamples();
  return { train, val, stats, skippedBadLines: stats.reduce((s, x) => s + x.skippedBadLines, 0) };
}
