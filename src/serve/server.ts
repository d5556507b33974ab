/**
 * `peft serve`: an OpenAI-compatible HTTP server (fastify) for one base model and many adapters.
 *
 * Threads: the main thread runs HTTP, validation, tokenization and chat-template rendering; the
 * model runs in a worker thread (`worker.ts`) that decodes a continuous batch step by step; the
 * {@link Scheduler} between them queues requests, fills batch slots, and tracks adapter lifetimes.
 *
 * Endpoints:
 * - POST /v1/completions, POST /v1/chat/completions — streaming (SSE: `data: {json}\n\n` chunks,
 *   then `data: [DONE]\n\n`) or not; the `model` field is the base model's id (e.g. "stories260K")
 *   or a loaded adapter's name (vLLM's multi-LoRA convention).
 * - GET /v1/models (base + every loaded adapter), GET /v1/models/{id}.
 * - POST /v1/adapters {name, path} loads an adapter directory; DELETE /v1/adapters/{name} unloads
 *   it (requests already admitted finish on it; new ones get 404); GET /v1/adapters lists them.
 * - GET /health (200 {"status": "ok"} while the model thread runs, else 503), GET /metrics
 *   (Prometheus text format).
 *
 * Chat: messages are rendered with the tokenizer's chat template (tokenizer_config.json
 * `chat_template` or chat_template.jinja) with add_generation_prompt, and tokenized without adding
 * special tokens (the template writes them), as transformers does. A tokenizer without a template
 * (e.g. the bundled stories260K) gets {@link DEFAULT_CHAT_TEMPLATE}, ChatML-style
 * (`<|im_start|>role\ncontent<|im_end|>\n`, then `<|im_start|>assistant\n`); its rendering is
 * tokenized WITH special tokens (BOS), and `<|im_end|>` is then always a stop string.
 *
 * Defaults: max_tokens 16 for completions (as OpenAI), the rest of the context for chat;
 * temperature 1; a random seed when none is given. Generation stops at the model's EOS ids (unless
 * ignore_eos), the server's extra stop ids (--stop-ids), stop_token_ids and stop strings.
 */
import { randomUUID } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { basename, resolve } from 'node:path';
import type { ServerResponse } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { PeftError } from '../errors.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { DEFAULT_MODEL } from '../paths.js';
import { compileChatTemplate, templateSpecialTokens, type ChatTemplate } from '../train/data/chat.js';
import { ServeMetrics } from './metrics.js';
import {
  ApiError, chatChunk, chatResponse, completionChunk, completionResponse, errorBody, parseChatRequest, parseCompletionRequest,
  usageChunk, usageOf, type ChatMessageIn, type Finish, type GenerationParams,
} from './openai.js';
import { Scheduler, type AdapterEntry, type JobHandlers, type JobSpec } from './scheduler.js';
import type { ModelInfo } from './worker.js';
import { RegistrySource } from './registry-source.js';

import { DEFAULT_CHAT_STOP, DEFAULT_CHAT_TEMPLATE } from '../train/data/chat.js';
export { DEFAULT_CHAT_STOP, DEFAULT_CHAT_TEMPLATE };

export interface ServeOptions {
  /** Model directory (default: the bundled stories260K). */
  model?: string;
  /** The base model's id in the API (default: the directory's name). */
  modelId?: string;
  /** Adapters to load at start. */
  adapters?: Array<{ name: string; path: string }>;
  host?: string;
  /** 0 = any free port. Default 8000. */
  port?: number;
  /** Batch slots: sequences decoding at once. Default 32. */
  maxBatch?: number;
  /** Sequences waiting for a slot before new requests get 429. Default 256. */
  maxQueue?: number;
  /** Per-request timeout in ms, from admission (0 = none). Default 300 000. */
  requestTimeoutMs?: number;
  /** Largest request body in bytes (413 beyond). Default 2 MiB. */
  bodyLimit?: number;
  /** Prompt tokens admitted into one decoding step. Default 2048. */
  maxPrefillTokens?: number;
  /** Base weights in 4 bits: nf4 | fp4. */
  quantize?: string;
  /** Extra token ids that end every generation (stories260K starts a new story with BOS = 1). */
  stopIds?: number[];
  /**
   * Native kernel threads for the model. Default: PEFT_NUM_THREADS when set, else one less than the
   * CPUs (at least 1), leaving a core to the HTTP thread — the kernels' spinning pool slows down a
   * lot when its threads share cores with other busy threads.
   */
  threads?: number;
  /** Process metrics (CPU, memory, event loop lag) in /metrics. Default true. */
  defaultMetrics?: boolean;
  /** Serve adapters only from this registry: `NAME` (its prod tag, followed as it moves) and `NAME@N` (src/serve/registry-source.ts). */
  registry?: string;
  /** How often the registry's tags are read (ms). Default 500. */
  registryPollMs?: number;
  /** For tests: sleep between decoding steps in the model thread. */
  stepDelayMs?: number;
}

export interface RunningServer {
  app: FastifyInstance;
  /** `http://host:port` */
  url: string;
  scheduler: Scheduler;
  metrics: ServeMetrics;
  modelId: string;
  close(): Promise<void>;
}

const ADAPTER_NAME = /^[A-Za-z0-9_.-]{1,128}$/;
/** A text longer than this many characters per context position cannot fit: refused before tokenizing. */
const MAX_CHARS_PER_POSITION = 64;

interface Ctx {
  opts: Required<Pick<ServeOptions, 'maxBatch' | 'maxQueue' | 'requestTimeoutMs' | 'bodyLimit'>> & ServeOptions;
  modelId: string;
  modelDir: string;
  created: number;
  tok: Tokenizer;
  chat: { tpl: ChatTemplate; isDefault: boolean; special: Record<string, string> };
  info: ModelInfo;
  scheduler: Scheduler;
  metrics: ServeMetrics;
  registry: RegistrySource | null;
}

/** Loads the model (in its thread), builds the app and listens. */
export async function startServer(options: ServeOptions = {}): Promise<RunningServer> {
  const opts = {
    maxBatch: 32, maxQueue: 256, requestTimeoutMs: 300_000, bodyLimit: 2 * 1024 * 1024, ...options,
  };
  const modelDir = resolve(opts.model ?? DEFAULT_MODEL);
  const modelId = opts.modelId ?? basename(modelDir);
  for (const a of opts.adapters ?? []) {
    if (!ADAPTER_NAME.test(a.name)) throw new PeftError('invalid adapter name', { field: '--adapter', expected: '1-128 letters, digits, _ . -', found: JSON.stringify(a.name) });
    if (a.name === modelId) throw new PeftError("an adapter cannot be named after the base model's id", { field: '--adapter', found: JSON.stringify(a.name) });
  }
  if (opts.registry && opts.adapters?.length) throw new PeftError('with --registry, adapters are served only from the registry', { field: '--adapter', expected: 'no --adapter with --registry' });
  const names = (opts.adapters ?? []).map((a) => a.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new PeftError('adapter name given twice', { field: '--adapter', found: JSON.stringify(dup) });
  const tok = loadTokenizer(modelDir);
  const isDefault = tok.chatTemplate === null;
  const chat = { tpl: compileChatTemplate(tok.chatTemplate ?? DEFAULT_CHAT_TEMPLATE), isDefault, special: templateSpecialTokens(tok) };
  const metrics = new ServeMetrics({ defaultMetrics: opts.defaultMetrics });
  const scheduler = new Scheduler(
    { modelDir, quantize: opts.quantize, maxPrefillTokens: opts.maxPrefillTokens, stepDelayMs: opts.stepDelayMs, numThreads: defaultThreads(opts.threads) },
    { maxRunning: opts.maxBatch, maxQueue: opts.maxQueue, timeoutMs: opts.requestTimeoutMs },
    metrics,
  );
  let info: ModelInfo;
  try {
    info = await scheduler.start((opts.adapters ?? []).map((a) => ({ name: a.name, path: resolve(a.path) })));
  } catch (e) {
    throw new PeftError(`cannot start the model: ${(e as Error).message}`);
  }
  let registry: RegistrySource | null = null;
  if (opts.registry) {
    registry = new RegistrySource(resolve(opts.registry), scheduler, modelDir, opts.registryPollMs);
    try {
      await registry.start();
    } catch (e) {
      await scheduler.close();
      throw e;
    }
  }
  const ctx: Ctx = { opts, modelId, modelDir, created: Math.floor(Date.now() / 1000), tok, chat, info, scheduler, metrics, registry };
  const app = buildApp(ctx);
  try {
    await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8000 });
  } catch (e) {
    await scheduler.close();
    throw new PeftError(`cannot listen: ${(e as Error).message}`, { field: '--host/--port' });
  }
  const addr = app.server.address();
  const url = typeof addr === 'object' && addr ? `http://${addr.family === 'IPv6' ? `[${addr.address}]` : addr.address}:${addr.port}` : String(addr);
  return {
    app, url, scheduler, metrics, modelId,
    close: async () => {
      registry?.stop();
      await app.close();
      await scheduler.close();
    },
  };
}

function buildApp(ctx: Ctx): FastifyInstance {
  const app = Fastify({ bodyLimit: ctx.opts.bodyLimit, logger: false, forceCloseConnections: true, return503OnClosing: true });
  // any content type is read as JSON (curl -d sends form encoding by default)
  app.removeContentTypeParser('text/plain');
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    try {
      done(null, JSON.parse(body as string));
    } catch (e) {
      done(new ApiError(400, `invalid JSON in request body: ${(e as Error).message}`, null, 'invalid_json'), undefined);
    }
  });

  app.addHook('onRequest', (req, reply, done) => {
    const res = reply.raw;
    res.once('close', () => {
      const endpoint = req.routeOptions.url ?? 'other';
      const status = res.writableFinished ? res.statusCode : 499;
      ctx.metrics.requests.inc({ endpoint, status: String(status) });
    });
    done();
  });

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    const e = toApiError(err, ctx.opts.bodyLimit);
    if (e.status === 429) reply.header('retry-after', '1');
    void reply.code(e.status).send(errorBody(e));
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `Invalid URL (${req.method} ${req.url.split('?')[0]})`, null, 'unknown_url');
    void reply.code(404).send(errorBody(e));
  });

  app.get('/health', async (_req, reply) => {
    const s = ctx.scheduler;
    const up = s.worker.ready;
    return reply.code(up ? 200 : 503).send({ status: up ? 'ok' : 'unavailable', running: s.runningCount, queued: s.queueDepth });
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await ctx.metrics.text();
    return reply.header('content-type', ctx.metrics.contentType).send(text);
  });

  const modelCard = (a: AdapterEntry | null): Record<string, unknown> => a
    ? { id: a.name, object: 'model', created: a.created, owned_by: 'peft-ts', root: a.path, parent: ctx.modelId, max_model_len: ctx.info.maxPositionEmbeddings, peft_type: a.info.peftType }
    : {
      id: ctx.modelId, object: 'model', created: ctx.created, owned_by: 'peft-ts', root: ctx.modelDir, parent: null, max_model_len: ctx.info.maxPositionEmbeddings,
      // which template /v1/chat/completions renders with: the tokenizer's, or the ChatML-style default
      chat_template: ctx.chat.isDefault ? 'default-chatml' : 'tokenizer',
    };

  const aliasCards = (): Array<Record<string, unknown>> => (ctx.registry?.listAliases() ?? []).map((a) => ({ ...modelCard(a.target), id: a.name, version: a.target.name }));
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard(null), ...aliasCards(), ...ctx.scheduler.listAdapters().map(modelCard)] }));
  app.get('/v1/models/:id', async (req) => {
    const id = (req.params as { id: string }).id;
    if (id === ctx.modelId) return modelCard(null);
    const alias = aliasCards().find((c) => c.id === id);
    if (alias) return alias;
    const a = ctx.scheduler.adapter(id);
    if (!a) throw modelNotFound(id);
    return modelCard(a);
  });

  app.get('/v1/adapters', async () => ({
    object: 'list',
    data: ctx.scheduler.listAdapters().map((a) => ({ object: 'adapter', id: a.name, path: a.path, peft_type: a.info.peftType, created: a.created, in_flight: a.refs })),
  }));
  const registryOnly = (): void => {
    if (ctx.registry) throw new ApiError(403, 'this server serves adapters only from its registry (peft registry push / tag / promote)', null, 'registry_only');
  };
  app.post('/v1/adapters', async (req) => {
    registryOnly();
    const body = req.body;
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'request body must be a JSON object {"name", "path"}', null, 'invalid_type');
    const { name, path } = body as Record<string, unknown>;
    if (typeof name !== 'string') throw new ApiError(400, "'name' must be a string", 'name', name === undefined ? 'missing_required_parameter' : 'invalid_type');
    if (!ADAPTER_NAME.test(name)) throw new ApiError(400, "'name' must be 1-128 letters, digits, '_', '.' or '-'", 'name', 'invalid_value');
    if (name === ctx.modelId) throw new ApiError(409, `'${name}' is the base model's id`, 'name', 'adapter_exists');
    if (typeof path !== 'string' || path.length === 0) throw new ApiError(400, "'path' must be a non-empty string (an adapter directory on the server)", 'path', path === undefined ? 'missing_required_parameter' : 'invalid_type');
    const a = await ctx.scheduler.loadAdapter(name, resolve(path));
    return { object: 'adapter', id: a.name, path: a.path, peft_type: a.info.peftType, created: a.created };
  });
  app.delete('/v1/adapters/:name', async (req) => {
    registryOnly();
    const name = (req.params as { name: string }).name;
    const inFlight = await ctx.scheduler.unloadAdapter(name);
    return { object: 'adapter', id: name, deleted: true, in_flight: inFlight };
  });

  app.post('/v1/completions', (req, reply) => generation(ctx, 'completion', req, reply));
  app.post('/v1/chat/completions', (req, reply) => generation(ctx, 'chat', req, reply));
  return app;
}

function defaultThreads(threads: number | undefined): number | undefined {
  if (threads !== undefined) return threads;
  if (process.env.PEFT_NUM_THREADS) return undefined;
  return Math.max(1, availableParallelism() - 1);
}

function modelNotFound(model: string): ApiError {
  return new ApiError(404, `The model '${model}' does not exist`, 'model', 'model_not_found');
}

/** Maps any error to the one answered (fastify's body/content-type errors keep their 4xx). */
function toApiError(err: Error & { statusCode?: number; code?: string }, bodyLimit: number): ApiError {
  if (err instanceof ApiError) return err;
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError(413, `request body is larger than the limit of ${bodyLimit} bytes`, null, 'body_too_large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError(415, 'unsupported content type; send application/json', null, 'unsupported_media_type');
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError(400, 'request body is empty; send a JSON object', null, 'invalid_json');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError(400, 'Content-Length does not match the body', null, 'invalid_request');
    default:
  }
  if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY') return new ApiError(400, `invalid JSON in request body: ${err.message}`, null, 'invalid_json');
  const sc = err.statusCode;
  if (typeof sc === 'number' && sc >= 400 && sc < 500) return new ApiError(sc, err.message, null, err.code ?? null);
  return new ApiError(500, 'internal server error', null, 'internal_error');
}

/** Renders a conversation with the chat template, ready to generate the assistant's turn. */
function renderConversation(ctx: Ctx, messages: ChatMessageIn[]): number[] {
  let text: string;
  try {
    text = ctx.chat.tpl.template.render({ ...ctx.chat.special, messages, add_generation_prompt: true });
  } catch (e) {
    throw new ApiError(400, `the chat template rejected the conversation: ${(e as Error).message}`, 'messages', 'invalid_value');
  }
  text = text.replaceAll('\uFDD0', '').replaceAll('\uFDD1', ''); // {% generation %} markers of compileChatTemplate
  return ctx.tok.encode(text, ctx.chat.isDefault);
}

interface Choice {
  text: string;
  finish: Finish | null;
  promptTokens: number;
  completionTokens: number;
}

async function generation(ctx: Ctx, kind: 'completion' | 'chat', req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const t0 = performance.now();
  const endpoint = kind === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const chat = kind === 'chat';
  const p: GenerationParams & { prompts?: Array<string | number[]>; messages?: ChatMessageIn[] } = chat ? parseChatRequest(req.body) : parseCompletionRequest(req.body);
  let adapter: AdapterEntry | null = null;
  if (p.model !== ctx.modelId) {
    // registry: load NAME@N on first use; the lookup itself is synchronous up to submit, so a tag
    // move cannot unload the adapter between lookup and admission
    if (ctx.registry) await ctx.registry.ensure(p.model);
    adapter = (ctx.registry ? ctx.registry.lookup(p.model) : ctx.scheduler.adapter(p.model)) ?? null;
    if (!adapter) throw modelNotFound(p.model);
  }
  const maxPos = ctx.info.maxPositionEmbeddings;
  const offset = adapter?.info.positionOffset ?? 0;
  const room = maxPos - offset;
  const tooManyChars = (n: number): boolean => n > maxPos * MAX_CHARS_PER_POSITION;
  const param = chat ? 'messages' : 'prompt';
  let prompts: number[][];
  if (chat) {
    if (tooManyChars(p.messages!.reduce((n, m) => n + m.content.length, 0))) throw contextError(maxPos, null, null, param);
    prompts = [renderConversation(ctx, p.messages!)];
  } else {
    prompts = p.prompts!.map((q) => {
      if (typeof q !== 'string') return q;
      if (tooManyChars(q.length)) throw contextError(maxPos, null, null, param);
      return ctx.tok.encode(q);
    });
  }
  const V = ctx.info.vocabSize;
  for (const ids of prompts) {
    if (ids.length === 0) throw new ApiError(400, 'the prompt is empty after tokenization', param, 'invalid_value');
    for (const t of ids) if (t >= V) throw new ApiError(400, `token id ${t} is outside the vocabulary (size ${V})`, param, 'invalid_value');
    if (ids.length >= room) throw contextError(room, ids.length, null, param);
    if (p.maxTokens !== null && ids.length + p.maxTokens > room) throw contextError(room, ids.length, p.maxTokens, 'max_tokens');
  }
  for (const t of p.stopTokenIds) if (t >= V) throw new ApiError(400, `stop token id ${t} is outside the vocabulary (size ${V})`, 'stop_token_ids', 'invalid_value');
  const stop = chat && ctx.chat.isDefault && !p.stop.includes(DEFAULT_CHAT_STOP) ? [...p.stop, DEFAULT_CHAT_STOP] : p.stop;
  const seed = p.seed ?? Math.floor(Math.random() * 2 ** 32);
  const specs: JobSpec[] = prompts.map((ids) => ({
    promptIds: ids,
    maxNewTokens: p.maxTokens ?? (chat ? room - ids.length : Math.min(16, room - ids.length)),
    temperature: p.temperature, topP: p.topP, topK: p.topK, seed,
    stopIds: [...(ctx.opts.stopIds ?? []), ...p.stopTokenIds],
    stopStrings: stop, ignoreEos: p.ignoreEos,
  }));

  const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomUUID().replaceAll('-', '')}`;
  const created = Math.floor(Date.now() / 1000);
  const model = p.model;
  const choices: Choice[] = prompts.map((ids) => ({ text: '', finish: null, promptTokens: ids.length, completionTokens: 0 }));
  let firstToken = true;
  const sawToken = (): void => {
    if (!firstToken) return;
    firstToken = false;
    ctx.metrics.ttft.observe({ endpoint }, (performance.now() - t0) / 1000);
  };
  const usage = () => usageOf(choices.reduce((n, c) => n + c.promptTokens, 0), choices.reduce((n, c) => n + c.completionTokens, 0));
  const res = reply.raw;

  if (!p.stream) {
    let cancel = (): void => undefined;
    let abort = (): void => undefined;
    const done = new Promise<void>((resolveAll, reject) => {
      abort = () => {
        cancel();
        reject(new ApiError(499, 'the client closed the connection', null, 'client_closed'));
      };
      let left = choices.length;
      const handlers = choices.map((c): JobHandlers => ({
        onTokens: (text, n) => {
          if (n > 0) sawToken();
          c.text += text;
        },
        onFinish: (f) => {
          c.finish = f.reason;
          c.completionTokens = f.completionTokens;
          if (--left === 0) resolveAll();
        },
        onError: (e) => {
          cancel();
          reject(e);
        },
      }));
      cancel = ctx.scheduler.submit(adapter, specs, handlers);
    });
    ctx.metrics.promptTokens.inc(choices.reduce((n, c) => n + c.promptTokens, 0));
    res.once('close', () => {
      if (!res.writableEnded) abort();
    });
    await done;
    ctx.metrics.latency.observe({ endpoint }, (performance.now() - t0) / 1000);
    const body = choices.map((c) => ({ text: c.text, finish: c.finish! }));
    return reply.code(200).send(chat ? chatResponse(id, created, model, body, usage()) : completionResponse(id, created, model, body, usage()));
  }

  // streaming: admission errors (429, 503) are still answered as JSON; after that, SSE
  let ended = false;
  const write = (obj: unknown): void => {
    if (!res.destroyed) res.write(`data: ${typeof obj === 'string' ? obj : JSON.stringify(obj)}\n\n`);
  };
  const end = (): void => {
    if (ended) return;
    ended = true;
    write('[DONE]');
    if (!res.destroyed) res.end();
  };
  let left = choices.length;
  let cancel = (): void => undefined;
  const handlers = choices.map((c, index): JobHandlers => ({
    onTokens: (text, n) => {
      if (n > 0) sawToken();
      if (ended || text === '') return;
      c.text += text;
      write(chat ? chatChunk(id, created, model, index, { content: text }, null) : completionChunk(id, created, model, index, text, null));
    },
    onFinish: (f) => {
      if (ended) return;
      c.finish = f.reason;
      c.completionTokens = f.completionTokens;
      write(chat ? chatChunk(id, created, model, index, {}, f.reason) : completionChunk(id, created, model, index, '', f.reason));
      if (--left === 0) {
        if (p.includeUsage) write(usageChunk(id, created, model, chat, usage()));
        ctx.metrics.latency.observe({ endpoint }, (performance.now() - t0) / 1000);
        end();
      }
    },
    onError: (e) => {
      if (ended) return;
      cancel();
      write(errorBody(e));
      end();
    },
  }));
  // handlers only run from later events, so the stream is open before any of them
  cancel = ctx.scheduler.submit(adapter, specs, handlers);
  ctx.metrics.promptTokens.inc(choices.reduce((n, c) => n + c.promptTokens, 0));
  reply.hijack();
  startStream(res);
  if (chat) for (let i = 0; i < choices.length; i++) write(chatChunk(id, created, model, i, { role: 'assistant', content: '' }, null));
  res.once('close', () => {
    if (!ended) {
      ended = true;
      cancel();
    }
  });
  return reply;
}

function startStream(res: ServerResponse): void {
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    'x-accel-buffering': 'no',
  });
  res.flushHeaders();
}

function contextError(maxPos: number, promptTokens: number | null, maxTokens: number | null, param: string): ApiError {
  const what = param === 'messages' ? 'messages' : 'prompt';
  const msg = promptTokens === null
    ? `This model's maximum context length is ${maxPos} tokens, and the ${what} ${what === 'messages' ? 'are' : 'is'} far longer.`
    : maxTokens === null || param !== 'max_tokens'
      ? `This model's maximum context length is ${maxPos} tokens. However, your ${what} ${what === 'messages' ? 'have' : 'has'} ${promptTokens} tokens, ` +
        'which leaves no room for a completion. Please reduce the length of the prompt.'
      : `This model's maximum context length is ${maxPos} tokens. However, you requested ${promptTokens + maxTokens} tokens ` +
        `(${promptTokens} in the prompt, ${maxTokens} in the completion). Please reduce the length of the prompt or max_tokens.`;
  return new ApiError(400, msg, param, 'context_length_exceeded');
}
