/**
 * The main-thread side of continuous batching in `peft serve`:
 *
 * - {@link ModelWorker} starts the model thread (`worker.ts`), routes its messages, and restarts it
 *   (reloading the live adapters) if it dies, failing only the sequences it was running.
 * - {@link Scheduler} owns the admission queue. A request becomes one job per prompt; a job waits
 *   in a FIFO queue (bounded: beyond `maxQueue` waiting jobs a request is refused with 429) until
 *   one of `maxRunning` batch slots is free, then goes to the worker, which adds it to the running
 *   batch at its next decoding step. Finished, cancelled (client disconnect) and timed-out jobs
 *   leave the batch and free their slot at once; the next queued job takes it.
 * - Adapters: a registry maps public names (the request's `model` field) to internal names in the
 *   worker's PeftModel (`a1`, `a2`, … — never reused, so a name can be unloaded and loaded again
 *   while the old weights still drain). Each job holds a reference on its adapter from admission
 *   to its terminal event. Unloading removes the name at once (new requests get 404) but the
 *   worker deletes the weights only when the last reference is released, so in-flight requests
 *   always finish on the adapter they started with.
 * - Adapter caps: at most `maxAdapters` adapters and `maxAdapterBytes` bytes of adapter files are
 *   held (servable ones, draining ones and loads in progress all count). A load beyond a cap first
 *   unloads the least recently used idle adapter loaded at run time (no queued or running job, not
 *   given at start), repeatedly; when none is left to unload it is refused with 429.
 * - Progress: the time of the model thread's last step (or of the moment work arrived at an idle
 *   server) — {@link Scheduler.stalledMs} says how long work has waited without a step.
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { DecodeRequest, FinishReason, StepStats } from '../generate/batch.js';
import type { AdapterRef } from './adapter-source.js';
import type { ServeMetrics } from './metrics.js';
import { ApiError } from './openai.js';
import type { AdapterInfo, FromWorker, ModelInfo, ToWorker, WorkerEvent, WorkerInit } from './worker.js';

export type WorkerConfig = Omit<WorkerInit, 'peftServe' | 'adapters'>;

/** The ESM entry of tsx's API (its package exports' `./esm/api` import condition). */
function tsxEsmApi(from: string): string {
  const pkgFile = createRequire(from).resolve('tsx/package.json');
  const pkg = JSON.parse(readFileSync(pkgFile, 'utf8')) as { exports: Record<string, { import?: { default?: string } }> };
  const rel = pkg.exports['./esm/api']?.import?.default;
  if (!rel) throw new Error('tsx does not export ./esm/api; build the project (npm run build:ts) to serve from dist/');
  return join(dirname(pkgFile), rel);
}

/** Starts the worker module: compiled (.js) directly; from TypeScript sources through tsx. */
function spawn(init: WorkerInit): Worker {
  const here = import.meta.url;
  if (!/\.[cm]?ts$/.test(new URL(here).pathname)) return new Worker(new URL('./worker.js', here), { workerData: init });
  const api = pathToFileURL(tsxEsmApi(here)).href;
  const target = new URL('./worker.ts', here).href;
  const code = `import(${JSON.stringify(api)}).then((m) => (m.tsImport ?? m.default.tsImport)(${JSON.stringify(target)}, ${JSON.stringify(here)}));`;
  return new Worker(code, { eval: true, workerData: init });
}

type Reply = Extract<FromWorker, { type: 'reply' }>;

/** The model thread, restarted when it dies. */
export class ModelWorker {
  private worker: Worker | null = null;
  private nextReq = 1;
  private readonly pending = new Map<number, (r: Reply) => void>();
  private closing = false;
  private restarts: number[] = [];
  /** Model facts from the worker's `ready`. */
  model: ModelInfo | null = null;
  ready = false;
  /** Set when the worker cannot be (re)started; requests then get 503. */
  failed: string | null = null;

  constructor(
    private readonly config: WorkerConfig,
    private readonly handlers: {
      onEvents: (events: WorkerEvent[], stats: StepStats | null) => void;
      /** The worker died (or was restarted): every sequence it held is gone. */
      onLost: (reason: string) => void;
      /** Adapters to load into a restarted worker. */
      liveAdapters: () => Array<{ internal: string; path: string }>;
      onReady: () => void;
      onRestart?: () => void;
    },
  ) {}

  /** Starts the worker and resolves with the model and adapter info, or rejects with its fatal error. */
  async start(adapters: Array<{ internal: string; path: string }>): Promise<{ model: ModelInfo; adapters: Array<{ internal: string; info: AdapterInfo }> }> {
    const w = spawn({ ...this.config, peftServe: true, adapters });
    this.worker = w;
    const ready = new Promise<Extract<FromWorker, { type: 'ready' }>>((resolve, reject) => {
      w.on('message', (m: FromWorker) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'fatal') reject(new Error(m.message));
        else if (m.type === 'events') this.handlers.onEvents(m.events, m.stats);
        else if (m.type === 'reply') {
          const cb = this.pending.get(m.reqId);
          this.pending.delete(m.reqId);
          cb?.(m);
        }
      });
      w.on('error', (e) => reject(e));
      w.on('exit', (code) => reject(new Error(`model thread exited with code ${code} while starting`)));
    });
    w.on('error', (e) => this.lost(w, `model thread error: ${e.message}`));
    w.on('exit', (code) => this.lost(w, `model thread exited with code ${code}`));
    let r: Extract<FromWorker, { type: 'ready' }>;
    try {
      r = await ready;
    } catch (e) {
      this.worker = null;
      await w.terminate();
      throw e;
    }
    this.model = r.model;
    this.ready = true;
    this.handlers.onReady();
    return { model: r.model, adapters: r.adapters };
  }

  private lost(w: Worker, reason: string): void {
    if (this.worker !== w) return;
    this.worker = null;
    this.ready = false;
    for (const [, cb] of this.pending) cb({ type: 'reply', reqId: 0, ok: false, message: reason });
    this.pending.clear();
    if (!this.closing) {
      const now = Date.now();
      this.restarts = this.restarts.filter((t) => now - t < 60_000);
      if (this.restarts.length >= 5) this.failed = `${reason}; not restarted (5 restarts in the last minute)`;
      else this.restarts.push(now);
    }
    this.handlers.onLost(reason);
    if (this.closing || this.failed) return;
    this.handlers.onRestart?.();
    setTimeout(() => {
      if (this.closing) return;
      this.start(this.handlers.liveAdapters()).catch((e: Error) => {
        this.failed = `model thread failed to restart: ${e.message}`;
        this.handlers.onLost(this.failed);
      });
    }, 200).unref();
  }

  send(m: ToWorker): void {
    this.worker?.postMessage(m);
  }

  /** Sends a load/unload and waits for the worker's reply. */
  request(m: { type: 'load'; internal: string; path: string } | { type: 'unload'; internal: string }): Promise<Reply> {
    if (!this.worker || !this.ready) return Promise.resolve({ type: 'reply', reqId: 0, ok: false, message: 'model thread is not running' });
    const reqId = this.nextReq++;
    return new Promise((resolve) => {
      this.pending.set(reqId, resolve);
      this.worker!.postMessage({ ...m, reqId } as ToWorker);
    });
  }

  /** Asks the worker to stop and waits for it (terminating it after a grace period). */
  async close(): Promise<void> {
    this.closing = true;
    const w = this.worker;
    if (!w) return;
    const exited = once(w, 'exit').catch(() => undefined);
    w.postMessage({ type: 'shutdown' } satisfies ToWorker);
    const timer = setTimeout(() => void w.terminate(), 2000);
    await exited;
    clearTimeout(timer);
    this.worker = null;
  }

  /** For tests: kills the worker as a crash would. */
  async crashForTest(): Promise<void> {
    await this.worker?.terminate();
  }
}

/** A loaded adapter. */
export interface AdapterEntry {
  name: string;
  internal: string;
  path: string;
  info: AdapterInfo;
  /** Jobs (queued or running) using it. */
  refs: number;
  /** Unloaded by the user: no new requests; deleted in the worker when refs reaches 0. */
  removed: boolean;
  created: number;
  /** Given at start (--adapter): never unloaded to make room. */
  pinned: boolean;
  /** Bytes of its files (counted against maxAdapterBytes). */
  bytes: number;
  /** Use counter value of its last admission (or its load): the LRU order. */
  lastUsed: number;
  /** The 4-bit base it was trained on, from train_args.json. */
  quantize?: string;
}

/** Job parameters (what the worker's decoder needs, minus the id and adapter). */
export type JobSpec = Omit<DecodeRequest, 'id' | 'adapter'>;

export interface JobHandlers {
  /** Tokens generated in a step and the text that became final. */
  onTokens(text: string, tokens: number): void;
  onFinish(f: { reason: FinishReason; promptTokens: number; completionTokens: number }): void;
  onError(e: ApiError): void;
}

interface Job {
  id: string;
  spec: JobSpec;
  adapter: AdapterEntry | null;
  handlers: JobHandlers;
  state: 'queued' | 'running' | 'cancelling' | 'done';
  timer: NodeJS.Timeout | null;
}

export interface SchedulerOptions {
  /** Sequences decoding at once (batch slots). */
  maxRunning: number;
  /** Jobs waiting for a slot; a request that would exceed it gets 429. */
  maxQueue: number;
  /** Per-request timeout from admission, in ms (0 = none). */
  timeoutMs: number;
  /** Most adapters held at once (0 = no cap). */
  maxAdapters?: number;
  /** Most bytes of adapter files held at once (0 = no cap). */
  maxAdapterBytes?: number;
}

/** Observed batch shapes, for tests and the bench. */
export interface BatchStats {
  steps: number;
  maxSequences: number;
  maxAdapters: number;
  /** Steps in which a sequence joined while others were decoding. */
  joinsWhileDecoding: number;
  /** Model-thread time spent in forward passes, ms. */
  stepMs: number;
}

export class Scheduler {
  readonly worker: ModelWorker;
  private readonly queue: Job[] = [];
  private readonly jobs = new Map<string, Job>();
  private running = 0;
  private nextId = 1;
  private nextInternal = 1;
  private readonly adapters = new Map<string, AdapterEntry>();
  /** Loads in progress: name → bytes reserved. */
  private readonly loading = new Map<string, number>();
  private useClock = 0;
  /** performance.now() of the last sign of progress (a step, or work arriving at an idle server). */
  private progressAt = performance.now();
  /** Removed adapters still referenced by jobs. */
  private readonly draining = new Set<AdapterEntry>();
  readonly stats: BatchStats = { steps: 0, maxSequences: 0, maxAdapters: 0, joinsWhileDecoding: 0, stepMs: 0 };

  constructor(config: WorkerConfig, private readonly opts: SchedulerOptions, private readonly metrics: ServeMetrics) {
    this.worker = new ModelWorker(config, {
      onEvents: (events, stats) => this.onEvents(events, stats),
      onLost: (reason) => this.onLost(reason),
      liveAdapters: () => [...this.adapters.values()].map((a) => ({ internal: a.internal, path: a.path })),
      onReady: () => {
        this.progressAt = performance.now();
        this.pump();
      },
      onRestart: () => metrics.workerRestarts.inc(),
    });
  }

  /** Starts the model thread with the initial adapters. */
  async start(adapters: Array<{ name: string; path: string; bytes?: number; quantize?: string }>): Promise<ModelInfo> {
    const named = adapters.map((a) => ({ ...a, internal: `a${this.nextInternal++}` }));
    const r = await this.worker.start(named.map((a) => ({ internal: a.internal, path: a.path })));
    for (const a of named) {
      const info = r.adapters.find((x) => x.internal === a.internal)!.info;
      this.adapters.set(a.name, {
        name: a.name, internal: a.internal, path: a.path, info, refs: 0, removed: false, created: Math.floor(Date.now() / 1000),
        pinned: true, bytes: a.bytes ?? 0, lastUsed: this.useClock++, quantize: a.quantize,
      });
    }
    this.metrics.adaptersLoaded.set(this.adapters.size);
    return r.model;
  }

  close(): Promise<void> {
    for (const j of [...this.jobs.values()]) this.fail(j, new ApiError(503, 'the server is shutting down', null, 'shutting_down'));
    return this.worker.close();
  }

  // ---- adapters ----------------------------------------------------------------------------------

  listAdapters(): AdapterEntry[] {
    return [...this.adapters.values()];
  }

  /** The adapter a request's `model` names; undefined when none is loaded under that name. */
  adapter(name: string): AdapterEntry | undefined {
    return this.adapters.get(name);
  }

  /**
   * Loads an adapter at run time under `name`, first unloading least recently used idle adapters
   * while a cap would be exceeded. Throws ApiError 409 (name taken), 413 (larger than the byte cap
   * alone), 429 (caps reached and every adapter busy or pinned), 503 (model thread down) or 400
   * (the loader refused the files; the message names no server path).
   */
  async loadAdapter(name: string, ref: AdapterRef): Promise<AdapterEntry> {
    if (this.adapters.has(name) || this.loading.has(name))
      throw new ApiError(409, `an adapter named '${name}' is already loaded`, 'name', 'adapter_exists');
    this.unavailable();
    if (!this.worker.ready) throw new ApiError(503, 'the model thread is restarting; retry shortly', null, 'model_restarting');
    const maxBytes = this.opts.maxAdapterBytes ?? 0;
    if (maxBytes > 0 && ref.bytes > maxBytes)
      throw new ApiError(413, `adapter '${name}' has ${ref.bytes} bytes of files, more than the server's limit of ${maxBytes} (--max-adapter-bytes)`, 'path', 'adapter_too_large');
    this.makeRoom(ref.bytes);
    this.loading.set(name, ref.bytes);
    try {
      const internal = `a${this.nextInternal++}`;
      const r = await this.worker.request({ type: 'load', internal, path: ref.path });
      if (!r.ok) throw new ApiError(400, `cannot load adapter '${name}': ${r.public ?? 'the model thread is not running'}`, 'path', 'invalid_adapter');
      const entry: AdapterEntry = {
        name, internal, path: ref.path, info: r.info!, refs: 0, removed: false, created: Math.floor(Date.now() / 1000),
        pinned: false, bytes: ref.bytes, lastUsed: this.useClock++, quantize: ref.quantize,
      };
      this.adapters.set(name, entry);
      this.metrics.adaptersLoaded.set(this.adapters.size);
      return entry;
    } finally {
      this.loading.delete(name);
    }
  }

  /** Adapters and bytes held: servable, draining, and loads in progress. */
  held(): { adapters: number; bytes: number } {
    let bytes = 0;
    for (const a of this.adapters.values()) bytes += a.bytes;
    for (const a of this.draining) bytes += a.bytes;
    for (const b of this.loading.values()) bytes += b;
    return { adapters: this.adapters.size + this.draining.size + this.loading.size, bytes };
  }

  /** Unloads idle run-time adapters, least recently used first, until `bytes` more fit both caps. */
  private makeRoom(bytes: number): void {
    const maxA = this.opts.maxAdapters ?? 0;
    const maxB = this.opts.maxAdapterBytes ?? 0;
    for (;;) {
      const h = this.held();
      const overCount = maxA > 0 && h.adapters + 1 > maxA;
      const overBytes = maxB > 0 && h.bytes + bytes > maxB;
      if (!overCount && !overBytes) return;
      let victim: AdapterEntry | null = null;
      for (const a of this.adapters.values()) if (!a.pinned && a.refs === 0 && (!victim || a.lastUsed < victim.lastUsed)) victim = a;
      if (!victim) {
        const what = overCount ? `${h.adapters} adapters are held (limit ${maxA}, --max-adapters)` : `${h.bytes} bytes of adapters are held (limit ${maxB}, --max-adapter-bytes)`;
        throw new ApiError(429, `cannot load another adapter: ${what} and none is idle and unloadable; retry later or unload one`, null, 'adapter_capacity');
      }
      this.metrics.adapterEvictions.inc();
      void this.unloadAdapter(victim.name);
    }
  }

  /**
   * Unloads an adapter: it stops being servable now; its weights go when its last job ends.
   * Returns how many jobs still use it.
   */
  async unloadAdapter(name: string): Promise<number> {
    const entry = this.adapters.get(name);
    if (!entry) throw new ApiError(404, `no adapter named '${name}' is loaded`, 'name', 'adapter_not_found');
    this.adapters.delete(name);
    entry.removed = true;
    this.metrics.adaptersLoaded.set(this.adapters.size);
    const inFlight = entry.refs;
    if (inFlight === 0) await this.deleteInWorker(entry);
    else this.draining.add(entry);
    return inFlight;
  }

  private async deleteInWorker(entry: AdapterEntry): Promise<void> {
    this.draining.delete(entry);
    await this.worker.request({ type: 'unload', internal: entry.internal });
    // a failure means the worker no longer has it (restarted): nothing left to free
  }

  private release(entry: AdapterEntry | null): void {
    if (!entry) return;
    entry.refs--;
    if (entry.removed && entry.refs === 0) void this.deleteInWorker(entry);
  }

  // ---- jobs --------------------------------------------------------------------------------------

  private unavailable(): void {
    if (this.worker.failed) throw new ApiError(503, 'the model is unavailable', null, 'model_unavailable');
  }

  get queueDepth(): number {
    return this.queue.length;
  }

  get runningCount(): number {
    return this.running;
  }

  /**
   * Admits a request's jobs (all or none): each takes a reference on the adapter (null = base) and
   * waits for a slot. Throws ApiError 429 when the queue cannot hold them, 503 when the model is
   * unavailable. Returns a cancel function for all of them.
   */
  submit(adapter: AdapterEntry | null, specs: JobSpec[], handlers: JobHandlers[]): () => void {
    this.unavailable();
    if (adapter?.removed) throw new ApiError(404, `The model '${adapter.name}' does not exist`, 'model', 'model_not_found');
    const freeSlots = this.worker.ready ? Math.max(0, this.opts.maxRunning - this.running) : 0;
    if (this.queue.length + Math.max(0, specs.length - freeSlots) > this.opts.maxQueue)
      throw new ApiError(429, `the server is busy: ${this.queue.length} requests are queued (limit ${this.opts.maxQueue}); retry later`, null, 'queue_full');
    const jobs = specs.map((spec, i): Job => ({ id: String(this.nextId++), spec, adapter, handlers: handlers[i], state: 'queued', timer: null }));
    if (adapter) adapter.lastUsed = this.useClock++;
    if (this.jobs.size === 0) this.progressAt = performance.now(); // work arrives at an idle server
    for (const j of jobs) {
      if (adapter) adapter.refs++;
      this.jobs.set(j.id, j);
      this.queue.push(j);
      if (this.opts.timeoutMs > 0) {
        j.timer = setTimeout(() => this.fail(j, new ApiError(408, `the request did not finish within the server's timeout of ${this.opts.timeoutMs / 1000} s`, null, 'timeout')), this.opts.timeoutMs);
        j.timer.unref();
      }
    }
    this.pump();
    this.gauges();
    return () => {
      for (const j of jobs) this.cancel(j);
    };
  }

  /** Ends a job without calling its handlers again (client gone). */
  private cancel(j: Job): void {
    if (j.state === 'queued') {
      this.queue.splice(this.queue.indexOf(j), 1);
      this.finishJob(j);
      this.gauges();
    } else if (j.state === 'running') {
      j.state = 'cancelling';
      this.worker.send({ type: 'cancel', id: j.id });
    }
  }

  /** Ends a job with an error to its handlers (timeout, shutdown). */
  private fail(j: Job, e: ApiError): void {
    if (j.state === 'done' || j.state === 'cancelling') return;
    const h = j.handlers;
    this.cancel(j);
    h.onError(e);
  }

  /** Terminal bookkeeping: slot, adapter reference, timer. */
  private finishJob(j: Job): void {
    if (j.state === 'running' || j.state === 'cancelling') this.running--;
    j.state = 'done';
    if (j.timer) clearTimeout(j.timer);
    this.jobs.delete(j.id);
    this.release(j.adapter);
  }

  private pump(): void {
    while (this.running < this.opts.maxRunning && this.queue.length > 0 && this.worker.ready) {
      const j = this.queue.shift()!;
      j.state = 'running';
      this.running++;
      this.worker.send({ type: 'add', req: { ...j.spec, id: j.id, adapter: j.adapter?.internal ?? null } });
    }
    this.gauges();
  }

  private gauges(): void {
    this.metrics.queueDepth.set(this.queue.length);
    this.metrics.running.set(this.running);
  }

  /**
   * Milliseconds that queued or running work has waited without the model thread making progress
   * (0 when there is no work).
   */
  stalledMs(now = performance.now()): number {
    if (this.jobs.size === 0) return 0;
    return Math.max(0, now - this.progressAt);
  }

  private onEvents(events: WorkerEvent[], stats: StepStats | null): void {
    this.progressAt = performance.now();
    if (stats) {
      this.stats.steps++;
      this.stats.stepMs += stats.ms;
      this.stats.maxSequences = Math.max(this.stats.maxSequences, stats.sequences);
      this.stats.maxAdapters = Math.max(this.stats.maxAdapters, stats.adapters);
      if (stats.prefills > 0 && stats.prefills < stats.sequences) this.stats.joinsWhileDecoding++;
      this.metrics.batchSize.observe(stats.sequences);
      this.metrics.stepSeconds.observe(stats.ms / 1000);
    }
    let ended = false;
    for (const e of events) {
      const j = this.jobs.get(e.id);
      if (!j) continue;
      if ('error' in e) {
        const live = j.state === 'running';
        this.finishJob(j);
        ended = true;
        if (live) j.handlers.onError(new ApiError(500, 'generation failed inside the model thread', null, 'generation_failed'));
        continue;
      }
      if ('cancelled' in e) {
        this.finishJob(j);
        ended = true;
        continue;
      }
      if (e.tokens.length > 0) this.metrics.generatedTokens.inc(e.tokens.length);
      const live = j.state === 'running';
      if (live && (e.tokens.length > 0 || e.text)) j.handlers.onTokens(e.text, e.tokens.length);
      if (e.finish) {
        this.finishJob(j);
        ended = true;
        if (live) j.handlers.onFinish(e.finish);
      }
    }
    if (ended) this.pump();
  }

  /** The worker died: its sequences are gone; queued jobs wait for the restart. */
  private onLost(reason: string): void {
    for (const j of [...this.jobs.values()]) {
      if (j.state === 'running' || j.state === 'cancelling') {
        const live = j.state === 'running';
        this.finishJob(j);
        if (live) j.handlers.onError(new ApiError(500, 'the model thread stopped while generating; retry the request', null, 'model_thread_lost'));
      } else if (this.worker.failed) {
        this.fail(j, new ApiError(503, 'the model is unavailable', null, 'model_unavailable'));
      }
    }
    this.gauges();
    void reason;
  }
}
