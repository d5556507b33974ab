/**
 * Chat template rendering and assistant-token masks, and the general "label these character
 * spans of a text" tokenization used by every supervised format.
 *
 * Masks follow transformers' `apply_chat_template(return_assistant_tokens_mask=True)`: the
 * conversation is rendered once, the character spans to learn are found in the rendered string,
 * the FULL string is tokenized once (no special tokens added: the template writes them, as
 * `apply_chat_template` tokenizes with `add_special_tokens=False`), and a token is labelled when
 * its character range overlaps a span (transformers marks `char_to_token(start)` ..
 * `char_to_token(end − 1)`, which also takes a token straddling a span edge). Markers are never
 * tokenized alone: BPE merges them with neighbouring text differently in context.
 *
 * Spans are found, in order of preference:
 * 1. `{% generation %}…{% endgeneration %}` blocks, when the template has them (exactly HF's spans);
 * 2. prefix rendering: message i's rendering is render(messages[..i+1]) minus render(messages[..i])
 *    (used when each prefix rendering is a prefix of the full one); the assistant content is found
 *    in its own turn, and the end-of-turn marker the template writes right after the content
 *    (e.g. `<|im_end|>`, `<|eot_id|>`, `</s>`; trailing whitespace such as the newline excluded) is
 *    labelled with it unless `labelEndOfTurn` is false, so the model learns to stop, as templates
 *    with generation blocks do;
 * 3. otherwise (templates that render the last turn differently), the message contents are
 *    located in order in the full rendering and only the assistant content is labelled.
 */
import { Template } from '@huggingface/jinja';
import { PeftError } from '../../errors.js';
import type { Tokenizer } from '../../io/tokenizer.js';
import type { ChatMessage } from './formats.js';

/** Where a record came from, for PeftError: the file and the `line N` field prefix. */
/**
 * ChatML-style template used when the tokenizer has none (training and serving use the same one,
 * so an adapter trained on chat data is served in the format it learned).
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";
/** The end-of-turn marker of DEFAULT_CHAT_TEMPLATE (a stop string when serving it). */
export const DEFAULT_CHAT_STOP = '<|im_end|>';

export interface RecordSource {
  file: string;
  where: string;
}

/** A rendered conversation and the character spans to learn. */
export interface RenderedChat {
  /** The rendered conversation (add_generation_prompt = false). */
  text: string;
  /** [start, end) UTF-16 offsets into `text`, ascending and disjoint. */
  spans: Array<[number, number]>;
  /** How the spans were found (see the module comment). */
  method: 'generation-tags' | 'prefix-render' | 'content-search';
}

export interface RenderOptions {
  /** Values the template sees besides messages: bos_token, eos_token, … (see {@link templateSpecialTokens}). */
  specialTokens?: Record<string, string>;
  /** `tools` passed to the template, when the record has them. */
  tools?: unknown;
  /** Also label the end-of-turn marker after each assistant content (default true). */
  labelEndOfTurn?: boolean;
}

// Unicode noncharacters, reserved for internal use: stand-ins for {% generation %} boundaries.
const GEN_OPEN = '\uFDD0';
const GEN_CLOSE = '\uFDD1';
const GEN_TAG = /\{%(-?)\s*(end)?generation\s*(-?)%\}/g;

/** A parsed chat template (see {@link compileChatTemplate}). */
export interface ChatTemplate {
  source: string;
  template: Template;
  /** The template has `{% generation %}` blocks. */
  hasGeneration: boolean;
}

const compiled = new Map<string, ChatTemplate>();

/**
 * Parses a Jinja chat template (with `@huggingface/jinja`), turning `{% generation %}` blocks into
 * boundary markers. Throws PeftError (field `chat_template`, `file` when given) if it does not parse.
 */
export function compileChatTemplate(source: string, file?: string): ChatTemplate {
  const hit = compiled.get(source);
  if (hit) return hit;
  let hasGeneration = false;
  const rewritten = source.replace(GEN_TAG, (_m, l: string, end: string | undefined, r: string) => {
    hasGeneration = true;
    return `{{${l} '${end ? GEN_CLOSE : GEN_OPEN}' ${r}}}`;
  });
  let template: Template;
  try {
    template = new Template(rewritten);
  } catch (e) {
    throw new PeftError(`chat template does not parse: ${(e as Error).message}`, { file, field: 'chat_template' });
  }
  const out = { source, template, hasGeneration };
  compiled.set(source, out);
  return out;
}

function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

/**
 * bos_token, eos_token, unk_token and pad_token strings of a tokenizer, as chat templates expect
 * them (from tokenizer_config.json, else the decoded special token id). Missing ones are left out.
 */
export function templateSpecialTokens(tok: Tokenizer): Record<string, string> {
  const out: Record<string, string> = {};
  const ids: Record<string, number | null> = { bos_token: tok.bosTokenId, eos_token: tok.eosTokenId, unk_token: null, pad_token: tok.padTokenId };
  for (const key of Object.keys(ids)) {
    const s = tokenString(tok.config[key]);
    const id = ids[key];
    if (s !== null) out[key] = s;
    else if (id !== null) out[key] = tok.decode([id], false);
  }
  return out;
}

function renderOnce(tpl: ChatTemplate, messages: ChatMessage[], opts: RenderOptions): string {
  return tpl.template.render({
    ...(opts.specialTokens ?? {}),
    messages,
    ...(opts.tools !== undefined ? { tools: opts.tools } : {}),
    add_generation_prompt: false,
  });
}

/**
 * Renders a conversation and finds the character spans to learn (assistant contents, with their
 * end-of-turn markers where found; see the module comment). Throws PeftError (file, `where:
 * messages…`) when the template rejects the conversation (its `raise_exception`, e.g. an unknown
 * role) or an assistant content cannot be found in the rendering.
 */
export function renderChat(tpl: ChatTemplate, messages: ChatMessage[], opts: RenderOptions = {}, src: RecordSource = { file: '', where: '' }): RenderedChat {
  const field = src.where ? `${src.where}: messages` : 'messages';
  let full: string;
  try {
    full = renderOnce(tpl, messages, opts);
  } catch (e) {
    throw new PeftError(`chat template rejected the conversation: ${(e as Error).message}`, {
      file: src.file, field, found: `roles [${messages.map((m) => m.role).join(', ')}]`,
    });
  }
  if (tpl.hasGeneration) {
    const fromTags = generationSpans(full);
    if (fromTags) return { ...fromTags, method: 'generation-tags' };
    // unbalanced markers (data containing U+FDD0/U+FDD1): fall through on the cleaned text
    full = full.replaceAll(GEN_OPEN, '').replaceAll(GEN_CLOSE, '');
  }
  // prefix rendering renders every prefix: quadratic in the number of messages, so long conversations
  // learn the end-of-turn marker from the first assistant turn and locate the rest in one pass
  const byPrefix = messages.length <= PREFIX_RENDER_MAX_MESSAGES ? prefixSpans(tpl, messages, opts, full) : linearSpans(tpl, messages, opts, full);
  if (byPrefix) return { text: full, spans: byPrefix, method: 'prefix-render' };
  return { text: full, spans: searchSpans(messages, full, src, field), method: 'content-search' };
}

function generationSpans(marked: string): { text: string; spans: Array<[number, number]> } | null {
  let text = '';
  const spans: Array<[number, number]> = [];
  let open = -1, last = 0;
  for (let i = 0; i < marked.length; i++) {
    const c = marked[i];
    if (c !== GEN_OPEN && c !== GEN_CLOSE) continue;
    text += marked.slice(last, i);
    last = i + 1;
    if (c === GEN_OPEN) {
      if (open >= 0) return null;
      open = text.length;
    } else {
      if (open < 0) return null;
      if (text.length > open) spans.push([open, text.length]);
      open = -1;
    }
  }
  if (open >= 0) return null;
  text += marked.slice(last);
  return { text, spans };
}

/** Where `content` (or its trimmed form) occurs in text[from, to); null if nowhere. */
function findContent(text: string, content: string, from: number, to: number): [number, number] | null {
  for (const c of [content, content.trim()]) {
    if (c === '') continue;
    const p = text.indexOf(c, from);
    if (p >= 0 && p + c.length <= to) return [p, p + c.length];
  }
  return null;
}

function prefixSpans(tpl: ChatTemplate, messages: ChatMessage[], opts: RenderOptions, full: string): Array<[number, number]> | null {
  const ends = new Map<number, number>(); // i → length of render(messages[0..i)), i.e. where message i starts
  const startOf = (i: number): number | null => {
    if (i === 0) return 0;
    if (i === messages.length) return full.length;
    const memo = ends.get(i);
    if (memo !== undefined) return memo;
    let r: string;
    try {
      r = renderOnce(tpl, messages.slice(0, i), opts);
    } catch {
      return null;
    }
    if (tpl.hasGeneration) r = r.replaceAll(GEN_OPEN, '').replaceAll(GEN_CLOSE, '');
    if (!full.startsWith(r)) return null;
    ends.set(i, r.length);
    return r.length;
  };
  const spans: Array<[number, number]> = [];
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i];
    if (m.role !== 'assistant' || m.content.trim() === '') continue;
    const s = startOf(i), e = startOf(i + 1);
    if (s === null || e === null || e < s) return null;
    const at = findContent(full, m.content, s, e);
    if (!at) return null;
    let end = at[1];
    if (opts.labelEndOfTurn ?? true) end += full.slice(at[1], e).trimEnd().length;
    spans.push([at[0], end]);
  }
  return spans;
}

/** Conversations longer than this use {@link linearSpans} (a constant number of renders) instead of one render per prefix. */
export const PREFIX_RENDER_MAX_MESSAGES = 16;

/**
 * Spans of a long conversation in linear time: the first assistant turn is located by prefix
 * rendering (two renders), which gives the end-of-turn text the template writes after an assistant
 * content; every assistant content is then found in order in the full rendering, and labelled with
 * that end-of-turn text when it follows. Null when the template is not prefix-consistent or a
 * content is not found (the caller then falls back to content search).
 */
function linearSpans(tpl: ChatTemplate, messages: ChatMessage[], opts: RenderOptions, full: string): Array<[number, number]> | null {
  const first = messages.findIndex((m) => m.role === 'assistant' && m.content.trim() !== '');
  if (first < 0) return [];
  const headText = renderPrefix(tpl, messages.slice(0, first + 2), opts);
  const head = prefixSpans(tpl, messages.slice(0, first + 2), opts, headText);
  if (!head || head.length === 0) return null;
  const firstAt = findContent(headText, messages[first].content, head[0][0], headText.length);
  if (!firstAt) return null;
  const eot = headText.slice(firstAt[1], head[0][1]); // what the template writes right after the content (trimmed end)
  const label = opts.labelEndOfTurn ?? true;
  const spans: Array<[number, number]> = [];
  let cursor = 0;
  for (const m of messages) {
    if (m.content.trim() === '') continue;
    const at = findContent(full, m.content, cursor, full.length);
    if (!at) return null;
    cursor = at[1];
    if (m.role !== 'assistant') continue;
    let end = at[1];
    if (label && eot !== '' && full.startsWith(eot, end)) end += eot.length;
    spans.push([at[0], end]);
    cursor = end;
  }
  return spans;
}

function renderPrefix(tpl: ChatTemplate, messages: ChatMessage[], opts: RenderOptions): string {
  const r = renderOnce(tpl, messages, opts);
  return tpl.hasGeneration ? r.replaceAll(GEN_OPEN, '').replaceAll(GEN_CLOSE, '') : r;
}

function searchSpans(messages: ChatMessage[], full: string, src: RecordSource, field: string): Array<[number, number]> {
  const spans: Array<[number, number]> = [];
  let cursor = 0;
  messages.forEach((m, i) => {
    if (m.content.trim() === '') return;
    const at = findContent(full, m.content, cursor, full.length);
    if (at) {
      if (m.role === 'assistant') spans.push(at);
      cursor = at[1];
    } else if (m.role === 'assistant') {
      throw new PeftError('assistant content not found in the rendered conversation', {
        file: src.file, field: `${field}[${i}].content`, expected: 'the chat template to render the content verbatim (or stripped)',
        found: 'no occurrence after the previous messages',
      });
    }
  });
  return spans;
}

/** Token ranges in a text: token t covers text[starts[t], ends[t]) (empty for tokens that add no character). */
export interface TokenOffsets {
  starts: Int32Array;
  ends: Int32Array;
}

/**
 * Character offsets of tokens, `ids` being `tok.encode(text, false)`, computed from the tokenizer's
 * decoder (the tokenizer library gives no offsets): incremental decoding of a sliding window of
 * ids, as in text-generation-inference's `decode_token` — a token whose bytes do not yet form a
 * whole character (byte-fallback / byte-level pieces, decoding to U+FFFD) is grouped with the
 * following tokens up to the one that completes it, and all of them cover that character. The
 * decoded stream is then aligned with `text` allowing only whitespace differences (Metaspace
 * decoders drop or add a space next to special tokens and at the start). Returns the offsets in
 * UTF-16 code units of `text`, or the first position where the decoding cannot be aligned.
 */
export function tokenOffsets(tok: Tokenizer, ids: readonly number[], text: string): TokenOffsets | { failedAt: number; decoded: string } {
  const n = ids.length;
  const dStart = new Int32Array(n), dEnd = new Int32Array(n);
  let decoded = '';
  let prefixOff = 0, readOff = 0, prevText = '';
  const emit = (upTo: number, piece: string): void => {
    const s = decoded.length;
    decoded += piece;
    for (let j = readOff; j < upTo; j++) { dStart[j] = s; dEnd[j] = decoded.length; }
  };
  for (let k = 0; k < n; k++) {
    const newText = tok.decode(ids.slice(prefixOff, k + 1), false);
    if (newText.length > prevText.length && !newText.endsWith('\uFFFD')) {
      emit(k + 1, newText.slice(prevText.length));
      prefixOff = readOff;
      readOff = k + 1;
      prevText = tok.decode(ids.slice(prefixOff, readOff), false);
    }
  }
  if (readOff < n) {
    const rest = tok.decode(ids.slice(prefixOff, n), false);
    emit(n, rest.length > prevText.length ? rest.slice(prevText.length) : '');
  }
  // align decoded (D) with text (S): equal chars match; unmatched whitespace on either side is skipped
  const sIdx = new Int32Array(decoded.length + 1);
  const matched = new Uint8Array(decoded.length);
  let i = 0, j = 0;
  while (i < decoded.length) {
    if (j < text.length && decoded[i] === text[j]) { sIdx[i] = j; matched[i] = 1; i++; j++; }
    else if (/\s/.test(decoded[i])) { sIdx[i] = j; i++; }
    else if (j < text.length && /\s/.test(text[j])) j++;
    else return { failedAt: j, decoded };
  }
  sIdx[decoded.length] = j;
  while (j < text.length && /\s/.test(text[j])) j++;
  if (j < text.length) return { failedAt: j, decoded };
  const starts = new Int32Array(n), ends = new Int32Array(n);
  for (let t = 0; t < n; t++) {
    let s = -1, e = -1;
    for (let d = dStart[t]; d < dEnd[t]; d++) if (matched[d]) { if (s < 0) s = sIdx[d]; e = sIdx[d] + 1; }
    if (s < 0) { s = e = sIdx[dStart[t]]; }
    starts[t] = s; ends[t] = e;
  }
  return { starts, ends };
}

/** Token ids of a text and which tokens are targets. */
export interface LabelledTokens {
  ids: number[];
  /** 1 where the token is to be learned. */
  targets: Uint8Array;
}

/**
 * Tokenizes `text` once (no special tokens added) and marks as targets the tokens whose character
 * range overlaps one of `spans` ([start, end) UTF-16 offsets); an empty-range token counts when
 * its position lies inside a span. Throws PeftError (file, where) when the tokenizer's decoding
 * cannot be aligned with the text (see {@link tokenOffsets}).
 */
export function encodeLabelled(tok: Tokenizer, text: string, spans: ReadonlyArray<readonly [number, number]>, src: RecordSource = { file: '', where: '' }): LabelledTokens {
  const ids = tok.encode(text, false);
  const targets = new Uint8Array(ids.length);
  if (spans.length === 0) return { ids, targets };
  const off = tokenOffsets(tok, ids, text);
  if ('failedAt' in off) {
    throw new PeftError('cannot map tokens back to the text (the tokenizer does not reproduce it when decoding)', {
      file: src.file, field: src.where || undefined,
      expected: JSON.stringify(text.slice(off.failedAt, off.failedAt + 20)), found: `decoded text ${JSON.stringify(off.decoded.slice(Math.max(0, off.failedAt - 10), off.failedAt + 20))}`,
    });
  }
  for (let t = 0; t < ids.length; t++) {
    const s = off.starts[t], e = off.ends[t];
    for (const [a, b] of spans) {
      if (e > s ? s < b && e > a : a <= s && s < b) { targets[t] = 1; break; }
    }
  }
  return { ids, targets };
}
