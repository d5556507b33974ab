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
 * - POST /v1/adapters {name, path?} loads an adapter directory from the server's adapter
 *   directory (`adapterDir`, --adapter-dir; `path` is relative to it and defaults to `name`;
 *   refused with 403 when no adapter directory is configured — see adapter-source.ts for the
 *   confinement rules); DELETE /v1/adapters/{name} unloads it (requests already admitted finish
 *   on it; new ones get 404); GET /v1/adapters lists them. Caps: `maxAdapters` and
 *   `maxAdapterBytes`, with least-recently-used idle run-time adapters unloaded to make room
 *   (scheduler.ts).
 * - GET /health (200 {"status": "ok"} while the model thread runs and makes progress; 503 when it
 *   is down, or when queued or running work has seen no decoding step for `healthStallMs`),
 *   GET /metrics (Prometheus text format).
 *
 * Access: with `apiKey` every endpoint but /health and /metrics needs `Authorization: Bearer KEY`
 * (401 otherwise; auth.ts). A host other than loopback is refused without a key unless `insecure`.
 * No answer carries a server file-system path: /v1/models and /v1/adapters give ids only, and
 * error messages are scrubbed of the model and adapter directories.
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
import { statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import type { ServerResponse } from 'node:http';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { PeftError } from '../errors.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { DEFAULT_MODEL } from '../paths.js';
import { compileChatTemplate, templateSpecialTokens, type ChatTemplate } from '../train/data/chat.js';
import { RegistrySource } from './registry-source.js';
import { adapterDirSource, scrubPaths, trainedQuantize, type AdapterSource } from './adapter-source.js';
import { bearerChecker, isLoopbackHost, needsKey } from './auth.js';
import { ServeMetrics } from './metrics.js';
import {
  ApiError, chatChunk, chatResponse, completionChunk, completionResponse, errorBody, parseChatRequest, parseCompletionRequest,
  usageChunk, usageOf, type ChatMessageIn, type Finish, type GenerationParams,
} from './openai.js';
import { Scheduler, type AdapterEntry, type JobHandlers, type JobSpec } from './scheduler.js';
import type { ModelInfo } from './worker.js';

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
  /** Key every request but /health and /metrics must send as `Authorization: Bearer KEY`. */
  apiKey?: string;
  /** Allow a non-loopback host without an API key. */
  insecure?: boolean;
  /** Directory POST /v1/adapters may load from (absent: run-time loading is off). */
  adapterDir?: string;
  /** Another source of run-time adapters (takes the place of adapterDir; e.g. a registry). */
  adapterSource?: AdapterSource;
  /** Most adapters held at once, start-up ones included (0 = no cap). Default 32. */
  maxAdapters?: number;
  /** Most bytes of adapter files held at once (0 = no cap). Default 4 GiB. */
  maxAdapterBytes?: number;
  /** /health answers 503 when work has waited this long (ms) without a decoding step (0 = never). Default 60 000. */
  healthStallMs?: number;
}

export interface RunningServer {
  app: FastifyInstance;
  /** `http://host:port` */
  url: string;
  scheduler: Scheduler;
  metrics: ServeMetrics;
  modelId: string;
  /** The base's 4-bit type (from quantize, else the start-up adapters' train_args.json), if any. */
  quantize?: string;
  close(): Promise<void>;
}

const ADAPTER_NAME = /^[A-Za-z0-9_.-]{1,128}$/;
/** A text longer than this many characters per context position cannot fit: refused before tokenizing. */
const MAX_CHARS_PER_POSITION = 64;

interface Ctx {
  opts: Required<Pick<ServeOptions, 'maxBatch' | 'maxQueue' | 'requestTimeoutMs' | 'bodyLimit' | 'healthStallMs'>> & ServeOptions;
  modelId: string;
  modelDir: string;
  created: number;
  tok: Tokenizer;
  chat: { tpl: ChatTemplate; isDefault: boolean; special: Record<string, string> };
  info: ModelInfo;
  scheduler: Scheduler;
  metrics: ServeMetrics;
  /** Run-time adapter source (null: POST /v1/adapters is off). */
  source: AdapterSource | null;
  /** The base's 4-bit type, if any. */
  quantize?: string;
  /** Directories scrubbed from error messages. */
  roots: string[];
  /** `--registry`: adapters come only from it (NAME follows its prod tag). */
  registry: RegistrySource | null;
}

/** Loads the model (in its thread), builds the app and listens. */
export async function startServer(options: ServeOptions = {}): Promise<RunningServer> {
  const opts = {
    maxBatch: 32, maxQueue: 256, requestTimeoutMs: 300_000, bodyLimit: 2 * 1024 * 1024, maxAdapters: 32, maxAdapterBytes: 4 * 1024 ** 3, healthStallMs: 60_000, ...options,
  };
  const host = opts.host ?? '127.0.0.1';
  if (opts.apiKey !== undefined && opts.apiKey.length === 0) throw new PeftError('the API key is empty', { field: '--api-key / PEFT_API_KEY' });
  if (!opts.apiKey && !opts.insecure && !isLoopbackHost(host))
    throw new PeftError(`refusing to listen on ${host} without an API key: anyone who can reach it could generate and load adapters`, {
      field: '--host', expected: 'a loopback address (127.0.0.1, ::1, localhost), or --api-key KEY / PEFT_API_KEY, or --insecure to accept the exposure',
    });
  const source = opts.adapterSource ?? (opts.adapterDir !== undefined ? adapterDirSource(opts.adapterDir) : null);
  const modelDir = resolve(opts.model ?? DEFAULT_MODEL);
  const modelId = opts.modelId ?? basename(modelDir);
  for (const a of opts.adapters ?? []) {
    if (!ADAPTER_NAME.test(a.name)) throw new PeftError('invalid adapter name', { field: '--adapter', expected: '1-128 letters, digits, _ . -', found: JSON.stringify(a.name) });
    if (a.name === modelId) throw new PeftError("an adapter cannot be named after the base model's id", { field: '--adapter', found: JSON.stringify(a.name) });
  }
  if (opts.registry && (opts.adapters?.length || opts.adapterDir !== undefined || opts.adapterSource))
    throw new PeftError('with --registry, adapters are served only from the registry', { field: '--adapter / --adapter-dir', expected: 'neither with --registry' });
  const names = (opts.adapters ?? []).map((a) => a.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new PeftError('adapter name given twice', { field: '--adapter', found: JSON.stringify(dup) });
  const startup = (opts.adapters ?? []).map((a) => {
    const path = resolve(a.path);
    return { name: a.name, path, bytes: adapterBytes(path), quantize: trainedQuantize(path) };
  });
  if (opts.maxAdapters > 0 && startup.length > opts.maxAdapters)
    throw new PeftError('more adapters given than the adapter cap', { field: '--max-adapters', expected: `at most ${opts.maxAdapters}`, found: String(startup.length) });
  const startBytes = startup.reduce((n, a) => n + a.bytes, 0);
  if (opts.maxAdapterBytes > 0 && startBytes > opts.maxAdapterBytes)
    throw new PeftError("the adapters' files are larger than the adapter byte cap", { field: '--max-adapter-bytes', expected: `at most ${opts.maxAdapterBytes}`, found: String(startBytes) });
  // a QLoRA adapter runs on the 4-bit base it was trained on (as peft eval/generate), unless --quantize says otherwise
  let quantize = opts.quantize === 'none' ? undefined : opts.quantize;
  if (opts.quantize === undefined) {
    const kinds = [...new Set(startup.map((a) => a.quantize).filter((q) => q !== undefined))];
    if (kinds.length > 1) {
      const by = (q: string): string => startup.filter((a) => a.quantize === q).map((a) => a.name).join(', ');
      throw new PeftError('adapters were trained on different 4-bit bases; serve them from separate servers or choose one with --quantize', {
        field: '--adapter', found: kinds.map((q) => `${q}: ${by(q)}`).join('; '),
      });
    }
    quantize = kinds[0];
  }
  const tok = loadTokenizer(modelDir);
  const isDefault = tok.chatTemplate === null;
  const chat = { tpl: compileChatTemplate(tok.chatTemplate ?? DEFAULT_CHAT_TEMPLATE), isDefault, special: templateSpecialTokens(tok) };
  const metrics = new ServeMetrics({ defaultMetrics: opts.defaultMetrics });
  const scheduler = new Scheduler(
    { modelDir, quantize, maxPrefillTokens: opts.maxPrefillTokens, stepDelayMs: opts.stepDelayMs, numThreads: defaultThreads(opts.threads) },
    { maxRunning: opts.maxBatch, maxQueue: opts.maxQueue, timeoutMs: opts.requestTimeoutMs, maxAdapters: opts.maxAdapters, maxAdapterBytes: opts.maxAdapterBytes },
    metrics,
  );
  let info: ModelInfo;
  try {
    info = await scheduler.start(startup);
  } catch (e) {
    throw new PeftError(`cannot start the model: ${(e as Error).message}`);
  }
  let registry: RegistrySource | null = null;
  if (opts.registry) {
    registry = new RegistrySource(resolve(opts.registry), modelDir, (name, ref) => loadAdapterByName({ source: registry, scheduler, quantize }, name, ref), (n) => scheduler.adapter(n), (n) => scheduler.unloadAdapter(n), opts.registryPollMs);
    try {
      await registry.start();
    } catch (e) {
      await scheduler.close();
      throw e;
    }
  }
  const roots = [modelDir, ...(source?.roots ?? []), ...(registry?.roots ?? []), ...startup.map((a) => a.path)];
  const ctx: Ctx = { opts, modelId, modelDir, created: Math.floor(Date.now() / 1000), tok, chat, info, scheduler, metrics, source, quantize, roots, registry };
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
    app, url, scheduler, metrics, modelId, quantize,
    close: async () => {
      registry?.stop();
      await app.close();
      await scheduler.close();
    },
  };
}

function buildApp(ctx: Ctx): FastifyInstance {
  const app = Fastify({
    bodyLimit: ctx.opts.bodyLimit, logger: false, forceCloseConnections: true, return503OnClosing: true,
    // the router's own errors (a malformed %-escape, an over-long URL parameter) in the OpenAI shape
    frameworkErrors: (err, _req, reply) => {
      const long = err.code === 'FST_ERR_MAX_PARAM_LENGTH';
      const e = new ApiError(long ? 414 : 400, long ? 'a URL component is too long' : 'the URL is malformed', null, long ? 'url_too_long' : 'invalid_url');
      void (reply as unknown as FastifyReply).code(e.status).send(errorBody(e));
    },
  });
  // any content type is read as JSON (curl -d sends form encoding by default); an empty body is
  // no body (DELETE with a JSON content type); `__proto__` / `constructor.prototype` keys are refused
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', { parseAs: 'string' }, (_req, body, done) => {
    const text = body as string;
    if (text.trim() === '') {
      done(null, undefined);
      return;
    }
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      const m = e instanceof RangeError ? 'nested too deeply' : (e as Error).message;
      done(new ApiError(400, `invalid JSON in request body: ${m}`, null, 'invalid_json'), undefined);
      return;
    }
    if (/"(?:__proto__|constructor)"\s*:/.test(text) && hasPrototypeKey(v)) {
      done(new ApiError(400, 'request body has a forbidden key (__proto__ or constructor.prototype)', null, 'invalid_json'), undefined);
      return;
    }
    done(null, v);
  });

  // the API key, before the body is read
  if (ctx.opts.apiKey) {
    const ok = bearerChecker(ctx.opts.apiKey);
    app.addHook('onRequest', async (req, reply) => {
      if (!needsKey(req.method, req.url) || ok(req.headers.authorization)) return;
      const e = new ApiError(401, 'invalid or missing API key: send the header "Authorization: Bearer KEY"', null, 'invalid_api_key');
      return reply.code(401).header('www-authenticate', 'Bearer').send(errorBody(e));
    });
  }

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
    const body = errorBody(e);
    body.error.message = scrubPaths(body.error.message, ctx.roots);
    void reply.code(e.status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const e = new ApiError(404, `Invalid URL (${req.method} ${req.url.split('?')[0]})`, null, 'unknown_url');
    void reply.code(404).send(errorBody(e));
  });

  app.get('/health', async (_req, reply) => {
    const s = ctx.scheduler;
    const up = s.worker.ready;
    const stalledMs = s.stalledMs();
    const stalled = up && ctx.opts.healthStallMs > 0 && stalledMs > ctx.opts.healthStallMs;
    const status = !up ? 'unavailable' : stalled ? 'stalled' : 'ok';
    return reply.code(status === 'ok' ? 200 : 503).send({
      status, running: s.runningCount, queued: s.queueDepth,
      // seconds queued/running work has waited for a decoding step
      ...(stalled ? { stalled_s: Math.round(stalledMs / 100) / 10 } : {}),
    });
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await ctx.metrics.text();
    return reply.header('content-type', ctx.metrics.contentType).send(text);
  });

  const modelCard = (a: AdapterEntry | null): Record<string, unknown> => a
    ? { id: a.name, object: 'model', created: a.created, owned_by: 'peft-ts', root: a.name, parent: ctx.modelId, max_model_len: ctx.info.maxPositionEmbeddings, peft_type: a.info.peftType }
    : {
      // root: the id, never the server's directory
      id: ctx.modelId, object: 'model', created: ctx.created, owned_by: 'peft-ts', root: ctx.modelId, parent: null, max_model_len: ctx.info.maxPositionEmbeddings,
      // which template /v1/chat/completions renders with: the tokenizer's, or the ChatML-style default
      chat_template: ctx.chat.isDefault ? 'default-chatml' : 'tokenizer',
    };

  const aliasCards = (): Array<Record<string, unknown>> => (ctx.registry?.listAliases() ?? []).map((a) => ({ ...modelCard(a.target), id: a.name, root: a.target.name }));
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
    data: ctx.scheduler.listAdapters().map((a) => ({
      object: 'adapter', id: a.name, peft_type: a.info.peftType, created: a.created, in_flight: a.refs, pinned: a.pinned, bytes: a.bytes,
    })),
  }));
  const registryOnly = (): void => {
    if (ctx.registry) throw new ApiError(403, 'this server serves adapters only from its registry (peft registry push / tag / promote)', null, 'registry_only');
  };
  app.post('/v1/adapters', async (req) => {
    registryOnly();
    const body = req.body;
    if (!ctx.source) throw new ApiError(403, 'loading adapters at run time is off on this server (start it with --adapter-dir DIR)', null, 'adapter_loading_disabled');
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ApiError(400, 'request body must be a JSON object {"name", "path"}', null, 'invalid_type');
    const { name, path } = body as Record<string, unknown>;
    if (typeof name !== 'string') throw new ApiError(400, "'name' must be a string", 'name', name === undefined ? 'missing_required_parameter' : 'invalid_type');
    if (!ADAPTER_NAME.test(name)) throw new ApiError(400, "'name' must be 1-128 letters, digits, '_', '.' or '-'", 'name', 'invalid_value');
    if (name === ctx.modelId) throw new ApiError(409, `'${name}' is the base model's id`, 'name', 'adapter_exists');
    if (path !== undefined && path !== null && (typeof path !== 'string' || path.length === 0))
      throw new ApiError(400, "'path' must be a non-empty string (an adapter directory inside the server's adapter directory)", 'path', 'invalid_type');
    const a = await loadAdapterByName(ctx, name, typeof path === 'string' ? path : name);
    return { object: 'adapter', id: a.name, peft_type: a.info.peftType, created: a.created };
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

/**
 * The one way an adapter is loaded at run time: the source resolves the client's reference
 * (confined, sized, its trained base read), the base is checked, and the scheduler loads it under
 * `name` within the caps. A registry-backed server swaps the source, not this function.
 */
export async function loadAdapterByName(ctx: Pick<Ctx, 'source' | 'scheduler' | 'quantize'>, name: string, ref: string): Promise<AdapterEntry> {
  if (!ctx.source) throw new ApiError(403, 'loading adapters at run time is off on this server', null, 'adapter_loading_disabled');
  const r = ctx.source.resolve(ref);
  if (r.quantize !== undefined && r.quantize !== ctx.quantize)
    throw new ApiError(400, `adapter '${name}' was trained on a ${r.quantize} 4-bit base (its train_args.json) but this server's base is ${ctx.quantize ?? 'not quantized'}; ` +
      `serve it from a server started with --quantize ${r.quantize}`, 'path', 'adapter_base_mismatch');
  return ctx.scheduler.loadAdapter(name, r);
}

/** Bytes of an adapter directory's config and weights (0 for files that are missing; the loader reports those). */
function adapterBytes(dir: string): number {
  let n = 0;
  for (const f of ['adapter_config.json', 'adapter_model.safetensors']) {
    try {
      n += statSync(join(dir, f)).size;
    } catch { /* missing: the loader names it */ }
  }
  return n;
}

/** Whether a parsed JSON value holds an own `__proto__` key or a `constructor` object with `prototype` (iterative: any depth). */
function hasPrototypeKey(v: unknown): boolean {
  const stack: unknown[] = [v];
  while (stack.length > 0) {
    const x = stack.pop();
    if (typeof x !== 'object' || x === null) continue;
    if (Array.isArray(x)) {
      for (const y of x) stack.push(y);
      continue;
    }
    if (Object.prototype.hasOwnProperty.call(x, '__proto__')) return true;
    const c = (x as Record<string, unknown>).constructor;
    if (Object.prototype.hasOwnProperty.call(x, 'constructor') && typeof c === 'object' && c !== null && Object.prototype.hasOwnProperty.call(c, 'prototype')) return true;
    for (const y of Object.values(x)) stack.push(y);
  }
  return false;
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
    // registry: NAME@N (and an evicted NAME target) loads on first use; the lookup itself is
    // synchronous up to submit, so a tag move cannot unload the adapter between lookup and admission
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
