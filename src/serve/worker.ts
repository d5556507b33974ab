/**
 * The model thread of `peft serve`: a worker_thread that owns the model, its PeftModel with every
 * loaded adapter, and a {@link BatchDecoder}. It runs decoding steps back to back while any
 * sequence is live, and between steps (one turn of its event loop) takes the main thread's
 * messages: sequences to add or cancel, adapters to load or unload. So the HTTP event loop never
 * waits for the model, and new sequences join the batch at the next step.
 *
 * Protocol (structured-clone messages; types below): the main thread sends `init` data as
 * workerData and then {@link ToWorker} messages; the worker answers {@link FromWorker}. Every
 * `add` gets exactly one terminal event (finish, error or cancelled) unless it was already
 * finished when its `cancel` arrived (then its finish event is already on its way). The main
 * thread unloads an adapter only after the terminal events of all its sequences, so the worker
 * never deletes an adapter a live sequence uses.
 *
 * This module only starts the loop when loaded as that worker (workerData.peftServe); importing
 * it for its types has no effect.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { BatchDecoder, type DecodeEvent, type DecodeRequest, type StepStats } from '../generate/batch.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { native } from '../native/index.js';
import { openModel } from '../cli/model.js';
import { sequenceSetup } from '../peft/attach.js';
import { loadAdapter } from '../peft/format.js';
import { PeftModel } from '../peft/peft-model.js';
import { publicAdapterError } from './adapter-source.js';

export interface WorkerInit {
  peftServe: true;
  modelDir: string;
  quantize?: string;
  /** Adapters to load at start (internal name → directory). */
  adapters: Array<{ internal: string; path: string }>;
  maxPrefillTokens?: number;
  /** Sleep between steps, for tests that need slow decoding (default 0). */
  stepDelayMs?: number;
  /** Native kernel threads (process-wide pool); absent = keep the current setting. */
  numThreads?: number;
}

/** What the main thread needs to know about the model. */
export interface ModelInfo {
  maxPositionEmbeddings: number;
  vocabSize: number;
  eosTokenIds: number[];
  bosTokenId: number | null;
}

/** What the main thread needs to know about a loaded adapter. */
export interface AdapterInfo {
  peftType: string;
  /** First position of the prompt (prefix/prompt tuning shift it). */
  positionOffset: number;
}

export type ToWorker =
  | { type: 'add'; req: DecodeRequest }
  | { type: 'cancel'; id: string }
  | { type: 'load'; reqId: number; internal: string; path: string }
  | { type: 'unload'; reqId: number; internal: string }
  | { type: 'shutdown' };

/** A terminal or streaming event; `error` ends a sequence that failed inside the worker. */
export type WorkerEvent = DecodeEvent | { id: string; error: string } | { id: string; cancelled: true };

export type FromWorker =
  | { type: 'ready'; model: ModelInfo; adapters: Array<{ internal: string; info: AdapterInfo }> }
  | { type: 'fatal'; message: string }
  | { type: 'events'; events: WorkerEvent[]; stats: StepStats | null }
  | { type: 'reply'; reqId: number; ok: true; info?: AdapterInfo }
  /** `public`: the failure as a client may read it (no server paths or file contents; see adapter-source.ts). */
  | { type: 'reply'; reqId: number; ok: false; message: string; public?: string };

function runWorker(init: WorkerInit): void {
  const port = parentPort!;
  const post = (m: FromWorker): void => port.postMessage(m);
  let decoder: BatchDecoder;
  let peft: PeftModel;
  const adapterInfo = (internal: string): AdapterInfo => {
    const a = peft.get(internal);
    return { peftType: a.peftType, positionOffset: a.positionOffset?.() ?? 0 };
  };
  try {
    if (init.numThreads !== undefined) native.setNumThreads(init.numThreads);
    const model = openModel(init.modelDir, init.quantize);
    const tok = loadTokenizer(init.modelDir);
    peft = new PeftModel(model);
    for (const a of init.adapters) loadAdapter(peft, a.path, a.internal, false);
    decoder = new BatchDecoder(model, {
      setup: sequenceSetup(peft),
      decode: (ids) => tok.decode(ids),
      maxPrefillTokens: init.maxPrefillTokens,
    });
    post({
      type: 'ready',
      model: {
        maxPositionEmbeddings: model.config.maxPositionEmbeddings, vocabSize: model.config.vocabSize,
        eosTokenIds: model.config.eosTokenIds, bosTokenId: model.config.bosTokenId,
      },
      adapters: init.adapters.map((a) => ({ internal: a.internal, info: adapterInfo(a.internal) })),
    });
  } catch (e) {
    post({ type: 'fatal', message: (e as Error).message });
    return;
  }

  let looping = false;
  let shuttingDown = false;
  const delay = init.stepDelayMs ?? 0;
  const loop = (): void => {
    if (shuttingDown || decoder.idle) {
      looping = false;
      return;
    }
    let msg: FromWorker;
    try {
      const { events, stats } = decoder.step();
      msg = { type: 'events', events, stats };
    } catch (e) {
      // an internal error in the forward pass: fail the sequences of this batch, keep serving
      const message = (e as Error).message;
      msg = { type: 'events', events: decoder.clear().map((id) => ({ id, error: message })), stats: null };
    }
    post(msg);
    if (delay > 0) setTimeout(loop, delay);
    else setImmediate(loop);
  };
  const kick = (): void => {
    if (looping) return;
    looping = true;
    setImmediate(loop);
  };

  port.on('message', (m: ToWorker) => {
    switch (m.type) {
      case 'add':
        try {
          decoder.add(m.req);
          kick();
        } catch (e) {
          post({ type: 'events', events: [{ id: m.req.id, error: (e as Error).message }], stats: null });
        }
        break;
      case 'cancel':
        if (decoder.cancel(m.id)) post({ type: 'events', events: [{ id: m.id, cancelled: true }], stats: null });
        break;
      case 'load':
        try {
          loadAdapter(peft, m.path, m.internal, false);
          post({ type: 'reply', reqId: m.reqId, ok: true, info: adapterInfo(m.internal) });
        } catch (e) {
          post({ type: 'reply', reqId: m.reqId, ok: false, message: (e as Error).message, public: publicAdapterError(e, m.path) });
        }
        break;
      case 'unload':
        try {
          if (decoder.adaptersInUse().has(m.internal)) throw new Error(`adapter ${m.internal} is still in use`);
          peft.deleteAdapter(m.internal);
          post({ type: 'reply', reqId: m.reqId, ok: true });
        } catch (e) {
          post({ type: 'reply', reqId: m.reqId, ok: false, message: (e as Error).message });
        }
        break;
      case 'shutdown':
        shuttingDown = true;
        decoder.clear();
        port.close();
        break;
    }
  });
}

if (!isMainThread && (workerData as WorkerInit | undefined)?.peftServe === true) runWorker(workerData as WorkerInit);
