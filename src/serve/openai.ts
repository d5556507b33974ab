/**
 * The OpenAI API surface of `peft serve`: request validation for /v1/completions and
 * /v1/chat/completions, OpenAI-style error bodies, and response / stream-chunk shapes.
 *
 * Errors: `{"error": {"message", "type", "param", "code"}}`. Client mistakes (4xx) have type
 * `invalid_request_error`, except 429 (`rate_limit_error`, the queue is full) and 408
 * (`timeout_error`, the request ran past the server's per-request timeout); server faults are
 * 5xx with type `server_error` and a message without internals.
 *
 * Supported request fields: model, prompt (string, token ids, or a list of either: one choice
 * per prompt) / messages, max_tokens (chat also max_completion_tokens), temperature, top_p, seed,
 * stop (string or list), stream, stream_options.include_usage, n (= 1), user (ignored) and the
 * vLLM extensions top_k, stop_token_ids and ignore_eos. Fields that would change the output and
 * are not implemented (logprobs, echo, best_of > 1, n > 1, suffix, penalties, logit_bias, tools,
 * response_format other than text) are rejected with 400 rather than silently ignored; other
 * unknown fields are ignored, as OpenAI clients send extras.
 */

/** An error answered to the client. */
export class ApiError extends Error {
  readonly type: string;
  constructor(readonly status: number, message: string, readonly param: string | null = null, readonly code: string | null = null, type?: string) {
    super(message);
    this.name = 'ApiError';
    this.type = type ?? (status === 429 ? 'rate_limit_error' : status === 408 ? 'timeout_error' : status >= 500 ? 'server_error' : 'invalid_request_error');
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export function errorBody(e: ApiError): ErrorBody {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

type Json = Record<string, unknown>;

const bad = (param: string, message: string, code = 'invalid_value'): ApiError => new ApiError(400, message, param, code);

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

function optional<T>(body: Json, key: string, check: (v: unknown) => T): T | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  return check(v);
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);

function intIn(param: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: unknown): number => {
    if (typeof v !== 'number') throw bad(param, `'${param}' must be an integer, got ${typeName(v)}`, 'invalid_type');
    if (!isInt(v) || v < min || v > max) throw bad(param, `'${param}' must be an integer in [${min}, ${max}], got ${v}`);
    return v;
  };
}

function numIn(param: string, min: number, max: number, openMin = false) {
  return (v: unknown): number => {
    if (typeof v !== 'number') throw bad(param, `'${param}' must be a number, got ${typeName(v)}`, 'invalid_type');
    if (!Number.isFinite(v) || v > max || v < min || (openMin && v === min)) throw bad(param, `'${param}' must be a number in ${openMin ? '(' : '['}${min}, ${max}], got ${v}`);
    return v;
  };
}

function bool(param: string) {
  return (v: unknown): boolean => {
    if (typeof v !== 'boolean') throw bad(param, `'${param}' must be a boolean, got ${typeName(v)}`, 'invalid_type');
    return v;
  };
}

/** Options common to both endpoints. */
export interface GenerationParams {
  /** The `model` field: the base model id or an adapter name. */
  model: string;
  stream: boolean;
  includeUsage: boolean;
  /** Requested max_tokens (null = endpoint default). */
  maxTokens: number | null;
  temperature: number;
  topP: number;
  topK: number;
  seed: number | null;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
}

export interface CompletionRequest extends GenerationParams {
  /** One entry per choice: text, or token ids. */
  prompts: Array<string | number[]>;
}

export interface ChatMessageIn {
  role: string;
  content: string;
}

export interface ChatRequest extends GenerationParams {
  messages: ChatMessageIn[];
}

/** Most prompts in one /v1/completions request. */
export const MAX_PROMPTS = 16;
/** Most stop strings, and the longest one. */
export const MAX_STOP = 16;
export const MAX_STOP_CHARS = 256;

function requireObject(body: unknown): Json {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ApiError(400, `request body must be a JSON object, got ${typeName(body)}`, null, 'invalid_type');
  return body as Json;
}

/** A short, bounded description of a client's value (a nested value is never walked). */
function preview(v: unknown): string {
  if (typeof v === 'object' && v !== null) return Array.isArray(v) ? `an array of ${v.length}` : 'an object';
  const t = typeof v === 'string' ? JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v) : String(v);
  return t;
}

function rejectUnsupported(body: Json, chat: boolean): void {
  const isDefault = (k: string, ok: (v: unknown) => boolean): void => {
    const v = body[k];
    if (v === undefined || v === null || ok(v)) return;
    throw new ApiError(400, `'${k}' is not supported by this server (got ${preview(v)})`, k, 'unsupported_parameter');
  };
  isDefault('n', (v) => v === 1);
  isDefault('best_of', (v) => v === 1);
  isDefault('echo', (v) => v === false);
  isDefault('logprobs', (v) => v === false || (!chat && v === 0));
  isDefault('top_logprobs', (v) => v === 0);
  isDefault('suffix', (v) => v === '');
  isDefault('presence_penalty', (v) => v === 0);
  isDefault('frequency_penalty', (v) => v === 0);
  isDefault('logit_bias', (v) => typeof v === 'object' && v !== null && Object.keys(v).length === 0);
  isDefault('tools', (v) => Array.isArray(v) && v.length === 0);
  isDefault('functions', (v) => Array.isArray(v) && v.length === 0);
  isDefault('tool_choice', (v) => v === 'none');
  isDefault('function_call', (v) => v === 'none');
  isDefault('response_format', (v) => typeof v === 'object' && v !== null && (v as Json).type === 'text');
}

function parseCommon(body: Json, chat: boolean): GenerationParams {
  rejectUnsupported(body, chat);
  const model = body.model;
  if (model === undefined || model === null) throw new ApiError(400, "you must provide a 'model' parameter", 'model', 'missing_required_parameter');
  if (typeof model !== 'string') throw bad('model', `'model' must be a string, got ${typeName(model)}`, 'invalid_type');
  if (model.length === 0) throw bad('model', "'model' must not be empty");
  const stream = optional(body, 'stream', bool('stream')) ?? false;
  const so = body.stream_options;
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (typeof so !== 'object' || Array.isArray(so)) throw bad('stream_options', `'stream_options' must be an object, got ${typeName(so)}`, 'invalid_type');
    includeUsage = optional(so as Json, 'include_usage', bool('stream_options.include_usage')) ?? false;
  }
  let maxTokens = optional(body, 'max_tokens', intIn('max_tokens', 1)) ?? null;
  if (chat) maxTokens = optional(body, 'max_completion_tokens', intIn('max_completion_tokens', 1)) ?? maxTokens;
  const temperature = optional(body, 'temperature', numIn('temperature', 0, 2)) ?? 1;
  const topP = optional(body, 'top_p', numIn('top_p', 0, 1, true)) ?? 1;
  const topK = optional(body, 'top_k', intIn('top_k', -1)) ?? 0;
  const seed = optional(body, 'seed', intIn('seed', Number.MIN_SAFE_INTEGER)) ?? null;
  let stop: string[] = [];
  const st = body.stop;
  if (st !== undefined && st !== null) {
    const list = typeof st === 'string' ? [st] : st;
    if (!Array.isArray(list) || list.some((s) => typeof s !== 'string'))
      throw bad('stop', `'stop' must be a string or a list of strings, got ${typeName(st)}`, 'invalid_type');
    if (list.length > MAX_STOP) throw bad('stop', `'stop' may hold at most ${MAX_STOP} strings, got ${list.length}`);
    for (const s of list as string[]) {
      if (s.length === 0) throw bad('stop', "'stop' strings must not be empty");
      if (s.length > MAX_STOP_CHARS) throw bad('stop', `'stop' strings must be at most ${MAX_STOP_CHARS} characters`);
    }
    stop = [...new Set(list as string[])];
  }
  const sti = body.stop_token_ids;
  let stopTokenIds: number[] = [];
  if (sti !== undefined && sti !== null) {
    if (!Array.isArray(sti) || sti.some((x) => !isInt(x) || x < 0)) throw bad('stop_token_ids', "'stop_token_ids' must be a list of non-negative integers", 'invalid_type');
    if (sti.length > 256) throw bad('stop_token_ids', "'stop_token_ids' may hold at most 256 ids");
    stopTokenIds = sti as number[];
  }
  const ignoreEos = optional(body, 'ignore_eos', bool('ignore_eos')) ?? false;
  const user = body.user;
  if (user !== undefined && user !== null && typeof user !== 'string') throw bad('user', `'user' must be a string, got ${typeName(user)}`, 'invalid_type');
  return { model, stream, includeUsage: stream && includeUsage, maxTokens, temperature, topP, topK: topK < 0 ? 0 : topK, seed, stop, stopTokenIds, ignoreEos };
}

function isTokenList(v: unknown): v is number[] {
  return Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number');
}

/** Validates a /v1/completions body. */
export function parseCompletionRequest(raw: unknown): CompletionRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, false);
  const p = body.prompt;
  if (p === undefined || p === null) throw new ApiError(400, "you must provide a 'prompt' parameter", 'prompt', 'missing_required_parameter');
  let prompts: Array<string | number[]>;
  if (typeof p === 'string') prompts = [p];
  else if (isTokenList(p)) prompts = [p];
  else if (Array.isArray(p) && p.length > 0 && p.every((x) => typeof x === 'string' || isTokenList(x))) prompts = p as Array<string | number[]>;
  else throw bad('prompt', "'prompt' must be a string, a non-empty list of token ids, or a non-empty list of those", 'invalid_type');
  if (prompts.length > MAX_PROMPTS) throw bad('prompt', `at most ${MAX_PROMPTS} prompts per request, got ${prompts.length}`);
  for (const q of prompts) if (typeof q !== 'string') for (const t of q) if (!isInt(t) || t < 0) throw bad('prompt', `token ids must be non-negative integers, got ${t}`);
  return { ...common, prompts };
}

const ROLES = new Set(['system', 'developer', 'user', 'assistant', 'tool']);

/** Validates a /v1/chat/completions body. Content may be a string or a list of text parts. */
export function parseChatRequest(raw: unknown): ChatRequest {
  const body = requireObject(raw);
  const common = parseCommon(body, true);
  const ms = body.messages;
  if (ms === undefined || ms === null) throw new ApiError(400, "you must provide a 'messages' parameter", 'messages', 'missing_required_parameter');
  if (!Array.isArray(ms)) throw bad('messages', `'messages' must be a list, got ${typeName(ms)}`, 'invalid_type');
  if (ms.length === 0) throw bad('messages', "'messages' must hold at least one message");
  if (ms.length > 4096) throw bad('messages', "'messages' may hold at most 4096 messages");
  const messages = ms.map((m, i): ChatMessageIn => {
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(param, `${param} must be an object, got ${typeName(m)}`, 'invalid_type');
    const { role, content } = m as Json;
    if (typeof role !== 'string') throw bad(`${param}.role`, `${param}.role must be a string, got ${typeName(role)}`, 'invalid_type');
    if (!ROLES.has(role)) throw bad(`${param}.role`, `${param}.role must be one of ${[...ROLES].join(', ')}, got ${JSON.stringify(role)}`);
    if (typeof content === 'string') return { role, content };
    if (Array.isArray(content)) {
      const parts = content.map((c, j) => {
        const cp = `${param}.content[${j}]`;
        if (typeof c !== 'object' || c === null || (c as Json).type !== 'text' || typeof (c as Json).text !== 'string')
          throw bad(cp, `${cp} must be a text part {"type": "text", "text": "..."} (other content types are not supported)`, 'invalid_type');
        return (c as Json).text as string;
      });
      return { role, content: parts.join('') };
    }
    if (content === null && role === 'assistant') return { role, content: '' };
    throw bad(`${param}.content`, `${param}.content must be a string or a list of text parts, got ${typeName(content)}`, 'invalid_type');
  });
  return { ...common, messages };
}

// ---- responses ----------------------------------------------------------------------------------

export type Finish = 'stop' | 'length';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usageOf(prompt: number, completion: number): Usage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

export function completionResponse(id: string, created: number, model: string, choices: Array<{ text: string; finish: Finish }>, usage: Usage): Json {
  return {
    id, object: 'text_completion', created, model,
    choices: choices.map((c, index) => ({ index, text: c.text, logprobs: null, finish_reason: c.finish })),
    usage,
  };
}

export function completionChunk(id: string, created: number, model: string, index: number, text: string, finish: Finish | null): Json {
  return { id, object: 'text_completion', created, model, choices: [{ index, text, logprobs: null, finish_reason: finish }] };
}

export function chatResponse(id: string, created: number, model: string, choices: Array<{ text: string; finish: Finish }>, usage: Usage): Json {
  return {
    id, object: 'chat.completion', created, model,
    choices: choices.map((c, index) => ({ index, message: { role: 'assistant', content: c.text }, logprobs: null, finish_reason: c.finish })),
    usage,
  };
}

/** A chat stream chunk; `role` only in each choice's first chunk. */
export function chatChunk(id: string, created: number, model: string, index: number, delta: { role?: 'assistant'; content?: string }, finish: Finish | null): Json {
  return { id, object: 'chat.completion.chunk', created, model, choices: [{ index, delta, logprobs: null, finish_reason: finish }] };
}

/** The final usage chunk of a stream with stream_options.include_usage. */
export function usageChunk(id: string, created: number, model: string, chat: boolean, usage: Usage): Json {
  return { id, object: chat ? 'chat.completion.chunk' : 'text_completion', created, model, choices: [], usage };
}
