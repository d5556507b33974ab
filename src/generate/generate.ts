/**
 * Autoregressive generation with a KV cache: prefill the prompt, then one token per step until an
 * EOS id, an extra stop id, or maxNewTokens. Several prompts can be generated together
 * (`generateBatch`): their linear layers run as one batch each step, each with its own cache
 * (no padding), and each row may use a different adapter.
 */
import { cachedSeqRows, defaultContext, forwardCached, lmLogits, type CachedSeq, type CausalLM, type ForwardContext } from '../models/model.js';
import { noGrad, Tensor, withArena } from '../tensor/index.js';
import { KVCache } from './kv-cache.js';
import { checkSampling, makeRng, sampleToken, type SamplingOptions } from './sampling.js';

export interface GenerateOptions extends SamplingOptions {
  maxNewTokens?: number;
  /** Ids that end generation besides the config's EOS ids (e.g. BOS = 1 for stories260K). */
  stopIds?: number[];
  /** Called with each new token id as it is produced (streaming). */
  onToken?: (id: number) => void;
}

export interface GenerationResult {
  /** Prompt ids followed by the generated ids (the stop token, if any, is not included). */
  ids: number[];
  /** Only the generated ids. */
  newIds: number[];
  finishReason: 'stop' | 'length';
}

/** A prompt in a batch, optionally with its own adapter name (null = base model). */
export interface BatchPrompt {
  ids: number[];
  adapter?: string | null;
}

/** Hooks PEFT methods use to set up a sequence (prefill prefix KV, choose positions). */
export interface SequenceSetup {
  prepareCache?: (cache: KVCache, adapter: string | null | undefined) => void;
  positionOffset?: (adapter: string | null | undefined) => number;
  /** Embeddings [P, hidden] fed before the prompt (prompt tuning), or null. */
  promptEmbeddings?: (adapter: string | null | undefined) => Float32Array | null;
}

const registeredSetups = new WeakMap<CausalLM, SequenceSetup>();

/**
 * Registers the sequence setup generation uses for `model` when the caller passes none. A
 * PeftModel registers its own when it is created, so an active prompt- or prefix-tuning adapter
 * is honoured by `generate(model, ids)` exactly as by the uncached forward.
 */
export function registerSequenceSetup(model: CausalLM, setup: SequenceSetup): void {
  registeredSetups.set(model, setup);
}

/** The setup registered for `model` ({@link registerSequenceSetup}), else none (the base model's). */
export function defaultSequenceSetup(model: CausalLM): SequenceSetup {
  return registeredSetups.get(model) ?? {};
}

/**
 * Generates a continuation of one prompt. `setup` defaults to the one the model's PeftModel
 * registered ({@link defaultSequenceSetup}); `adapter` undefined = the active adapter(s).
 */
export function generate(model: CausalLM, promptIds: number[], opts: GenerateOptions = {}, setup?: SequenceSetup,
  adapter: string | null | undefined = undefined): GenerationResult {
  return generateBatch(model, [{ ids: promptIds, adapter }], opts, setup)[0];
}

/**
 * Generates continuations of several prompts at once. Each row stops independently. With
 * `adapter` set on a prompt, only that row uses that adapter (ForwardContext.rowAdapters).
 * `setup` defaults to {@link defaultSequenceSetup}.
 */
export function generateBatch(model: CausalLM, prompts: BatchPrompt[], opts: GenerateOptions = {}, setupArg?: SequenceSetup): GenerationResult[] {
  const setup = setupArg ?? defaultSequenceSetup(model);
  checkSampling(opts);
  const maxNew = opts.maxNewTokens ?? 64;
  if (!Number.isInteger(maxNew) || maxNew < 0) throw new RangeError(`maxNewTokens must be an integer >= 0, got ${maxNew}`);
  const c = model.config;
  const stops = new Set<number>([...c.eosTokenIds, ...(opts.stopIds ?? [])]);
  const rng = makeRng(opts.seed ?? 0);
  const useRows = prompts.some((p) => p.adapter !== undefined);
  const states = prompts.map((p) => {
    if (p.ids.length === 0) throw new RangeError('prompt must have at least one token');
    const adapter = p.adapter === undefined ? undefined : p.adapter;
    const prefix = setup.promptEmbeddings?.(adapter) ?? null;
    const prefixRows = prefix ? prefix.length / c.hiddenSize : 0;
    const offset = setup.positionOffset?.(adapter) ?? 0;
    const cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, offset + p.ids.length + prefixRows + maxNew + 1, c.layers.map((l) => l.window));
    setup.prepareCache?.(cache, adapter);
    return {
      ids: [...p.ids], newIds: [] as number[], cache, adapter: adapter ?? null, offset, prefix,
      done: maxNew === 0, reason: 'length' as 'stop' | 'length', pending: p.ids,
    };
  });
  for (let step = 0; step <= maxNew; step++) {
    const active = states.filter((s) => !s.done);
    if (active.length === 0) break;
    const logits = noGrad(() => withArena(() => {
      const ctx: ForwardContext = defaultContext(false);
      const seqs: CachedSeq[] = active.map((s) => {
        const n = s.pending.length;
        const start = s.ids.length - n;
        const P = s.prefix ? s.prefix.length / c.hiddenSize : 0;
        const positions = new Int32Array(P + n);
        for (let j = 0; j < P; j++) positions[j] = s.offset - P + j;
        for (let i = 0; i < n; i++) positions[P + i] = s.offset + start + i;
        const seq: CachedSeq = { ids: Int32Array.from(s.pending), positions, cache: s.cache, prefixEmbeds: s.prefix };
        s.prefix = null; // virtual tokens enter the cache once, at prefill
        return seq;
      });
      const counts = seqs.map((q) => cachedSeqRows(q, c.hiddenSize));
      if (useRows) {
        let r = 0;
        ctx.rowAdapters = active.map((s, i) => {
          const g = { start: r, end: r + counts[i], adapter: s.adapter };
          r += counts[i];
          return g;
        });
      }
      const hidden = forwardCached(model, seqs, ctx);
      // last row of each sequence
      const H = c.hiddenSize;
      const last = new Float32Array(active.length * H);
      let r = 0;
      counts.forEach((n, i) => {
        r += n;
        last.set(hidden.data.subarray((r - 1) * H, r * H), i * H);
      });
      const lastT = new Tensor(last, [active.length, H]);
      if (useRows) ctx.rowAdapters = active.map((s, i) => ({ start: i, end: i + 1, adapter: s.adapter }));
      return lmLogits(model, lastT, ctx).data.slice();
    }));
    if (step === maxNew) break;
    active.forEach((s, i) => {
      const row = logits.subarray(i * c.vocabSize, (i + 1) * c.vocabSize);
      const id = sampleToken(row, opts, rng);
      if (stops.has(id)) {
        s.done = true;
        s.reason = 'stop';
        return;
      }
      s.ids.push(id);
      s.newIds.push(id);
      s.pending = [id];
      opts.onToken?.(id);
      if (s.newIds.length >= maxNew) s.done = true;
    });
  }
  return states.map((s) => ({ ids: s.ids, newIds: s.newIds, finishReason: s.reason }));
}
