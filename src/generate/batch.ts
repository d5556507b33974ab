/**
 * Step-wise continuous-batching decoder: the generalisation of `generateBatch` that serving needs.
 * Sequences are added and cancelled at any time between steps; each `step()` runs ONE cached
 * forward over every live sequence (new sequences contribute their whole prompt — prefill —,
 * running ones their last token), so prefill and decode rows of sequences using different
 * adapters share each linear layer's GEMM (`ForwardContext.rowAdapters`). A sequence leaves the
 * batch as soon as it finishes, and its place is free for the next step.
 *
 * Every sequence has its own adapter (or the base model), sampling options, RNG (seeded per
 * sequence, so its tokens do not depend on what else is in the batch), stop ids, stop strings and
 * token budget. Adapters of every PEFT type are served through the {@link SequenceSetup} hooks
 * (prefix tuning pre-fills the sequence's KV cache, prompt tuning feeds its virtual tokens at
 * prefill and shifts positions).
 *
 * Text: with a `decode` function the decoder turns tokens into text incrementally (a sliding
 * window of ids, as text-generation-inference's `decode_token`, so tokens whose bytes do not yet
 * form a character are held back), finds stop strings, and emits only text that can no longer
 * become part of a stop string. The returned text never contains the stop string.
 */
import { cachedSeqRows, defaultContext, forwardCached, lmLogits, type CachedSeq, type CausalLM, type ForwardContext } from '../models/model.js';
import { noGrad, Tensor, withArena } from '../tensor/index.js';
import { defaultSequenceSetup, type SequenceSetup } from './generate.js';
import { KVCache } from './kv-cache.js';
import { checkSampling, makeRng, sampleToken, type SamplingOptions } from './sampling.js';

/** One sequence to generate. */
export interface DecodeRequest extends SamplingOptions {
  /** Caller's id, echoed in every event of this sequence (unique among live sequences). */
  id: string;
  promptIds: number[];
  /** Adapter name in the model's PeftModel; null or absent = the base model. */
  adapter?: string | null;
  /** Most tokens to generate (>= 1). */
  maxNewTokens: number;
  /** Ids that end generation besides the model's EOS ids. */
  stopIds?: number[];
  /** Strings that end generation (needs `decode`); the text returned stops before the match. */
  stopStrings?: string[];
  /** Do not stop at the model's EOS ids (stopIds still apply). */
  ignoreEos?: boolean;
}

export type FinishReason = 'stop' | 'length';

/** What happened to one sequence in a step. */
export interface DecodeEvent {
  id: string;
  /** Token ids generated in this step (the stop token, if any, is not included). */
  tokens: number[];
  /** Text that became final in this step (may be empty even when tokens were generated). */
  text: string;
  /** Present on the sequence's last event: why it ended and its token counts. */
  finish?: { reason: FinishReason; promptTokens: number; completionTokens: number };
}

/** Shape of one forward pass. */
export interface StepStats {
  /** Sequences in the batch. */
  sequences: number;
  /** Of which joined in this step (prefill). */
  prefills: number;
  /** Rows through the linear layers. */
  rows: number;
  /** Distinct adapters in the batch (the base model counts as one). */
  adapters: number;
  /** Wall time of the step in milliseconds. */
  ms: number;
}

export interface BatchDecoderOptions {
  setup?: SequenceSetup;
  /** Token ids → text (special tokens skipped); enables text output and stop strings. */
  decode?: (ids: number[]) => string;
  /** Prompt tokens admitted per step (prefill budget; one sequence is always admitted). Default 2048. */
  maxPrefillTokens?: number;
  /** Most live sequences; add() beyond it throws. Default: unbounded. */
  maxSequences?: number;
}

interface Seq {
  req: DecodeRequest;
  adapter: string | null;
  rng: () => number;
  sampling: SamplingOptions;
  stops: Set<number>;
  cache: KVCache | null;
  offset: number;
  /** Tokens to feed at the next step (the prompt at prefill, then the last token). */
  pending: number[];
  /** Prompt tuning's embeddings, fed once at prefill. */
  prefix: Float32Array | null;
  /** Position of the next token fed (before offset). */
  fed: number;
  newIds: number[];
  limit: number;
  // incremental detokenization over ctx = (tail of the prompt) ++ newIds
  ctx: number[];
  prefixOffset: number;
  readOffset: number;
  text: string;
  emitted: number;
}

type RowGroup = { start: number; end: number; adapter: string | null };

/** Joins adjacent row ranges that use the same adapter. */
function mergeRanges(groups: RowGroup[]): RowGroup[] {
  const out: RowGroup[] = [];
  for (const g of groups) {
    const last = out[out.length - 1];
    if (last && last.adapter === g.adapter && last.end === g.start) last.end = g.end;
    else out.push({ ...g });
  }
  return out;
}

/** Longest stop-string length, for bounded searches. */
function maxLen(xs: string[]): number {
  return xs.reduce((m, s) => Math.max(m, s.length), 0);
}

/** Length of the longest suffix of `text` that is a proper prefix of one of `stops`. */
function partialStopSuffix(text: string, stops: string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > best; k--) {
      if (text.endsWith(s.slice(0, k))) {
        best = k;
        break;
      }
    }
  }
  return best;
}

export class BatchDecoder {
  private readonly waiting: Seq[] = [];
  private readonly active: Seq[] = [];
  private readonly ids = new Set<string>();
  private readonly maxPrefill: number;
  private readonly maxSequences: number;
  /** Steps run so far. */
  steps = 0;

  constructor(readonly model: CausalLM, private readonly opts: BatchDecoderOptions = {}) {
    this.maxPrefill = opts.maxPrefillTokens ?? 2048;
    this.maxSequences = opts.maxSequences ?? Infinity;
  }

  /** Sequences waiting to join plus those in the batch. */
  get size(): number {
    return this.waiting.length + this.active.length;
  }

  get idle(): boolean {
    return this.size === 0;
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** Adapters (null = base) used by live sequences. */
  adaptersInUse(): Set<string | null> {
    return new Set([...this.waiting, ...this.active].map((s) => s.adapter));
  }

  /**
   * Queues a sequence; it joins the batch at the next step. Throws RangeError on invalid options
   * (before anything is allocated).
   */
  add(req: DecodeRequest): void {
    const c = this.model.config;
    if (this.ids.has(req.id)) throw new RangeError(`a sequence with id ${JSON.stringify(req.id)} is already live`);
    if (this.size >= this.maxSequences) throw new RangeError(`at most ${this.maxSequences} live sequences`);
    if (req.promptIds.length === 0) throw new RangeError('prompt must have at least one token');
    for (const t of req.promptIds) if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new RangeError(`prompt token id ${t} is outside the vocabulary [0, ${c.vocabSize})`);
    if (!Number.isInteger(req.maxNewTokens) || req.maxNewTokens < 1) throw new RangeError(`maxNewTokens must be an integer >= 1, got ${req.maxNewTokens}`);
    const sampling: SamplingOptions = { temperature: req.temperature ?? 0, topK: req.topK ?? 0, topP: req.topP ?? 1 };
    checkSampling(sampling);
    if ((req.stopStrings ?? []).some((s) => s.length === 0)) throw new RangeError('stop strings must not be empty');
    if ((req.stopStrings ?? []).length > 0 && !this.opts.decode) throw new RangeError('stop strings need a decode function');
    const adapter = req.adapter ?? null;
    const setup = this.opts.setup ?? defaultSequenceSetup(this.model);
    const offset = setup.positionOffset?.(adapter) ?? 0;
    const positionsLeft = c.maxPositionEmbeddings - offset - req.promptIds.length;
    if (positionsLeft < 1) throw new RangeError(`prompt of ${req.promptIds.length} tokens leaves no room in the context of ${c.maxPositionEmbeddings} positions`);
    const stops = new Set<number>(req.stopIds ?? []);
    if (!req.ignoreEos) for (const e of c.eosTokenIds) stops.add(e);
    const ctx = req.promptIds.slice(-5);
    const seq: Seq = {
      req, adapter, rng: makeRng(req.seed ?? 0), sampling, stops, cache: null, offset,
      pending: req.promptIds, prefix: null, fed: 0, newIds: [],
      limit: Math.min(req.maxNewTokens, positionsLeft),
      ctx, prefixOffset: 0, readOffset: ctx.length, text: '', emitted: 0,
    };
    this.ids.add(req.id);
    this.waiting.push(seq);
  }

  /** Removes a live sequence (waiting or in the batch) without an event; false if unknown. */
  cancel(id: string): boolean {
    if (!this.ids.has(id)) return false;
    this.ids.delete(id);
    for (const list of [this.waiting, this.active]) {
      const i = list.findIndex((s) => s.req.id === id);
      if (i >= 0) list.splice(i, 1);
    }
    return true;
  }

  /** Removes every live sequence; returns their ids. */
  clear(): string[] {
    const out = [...this.ids];
    this.waiting.length = 0;
    this.active.length = 0;
    this.ids.clear();
    return out;
  }

  /**
   * Runs one forward over the batch (admitting waiting sequences within the prefill budget) and
   * samples one token per sequence. Returns an event for every sequence in the batch; finished
   * sequences have left it. Throws only on internal errors (the batch is then unchanged except that
   * newly admitted sequences count as running).
   */
  step(): { events: DecodeEvent[]; stats: StepStats | null } {
    this.admit();
    // rows of the same adapter side by side: one row range (two small GEMMs per LoRA module) per adapter
    const key = (s: Seq): string => (s.adapter === null ? '' : `~${s.adapter}`);
    const batch = this.active.slice().sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
    if (batch.length === 0) return { events: [], stats: null };
    const t0 = performance.now();
    const c = this.model.config;
    const H = c.hiddenSize;
    let prefills = 0;
    const seqs: CachedSeq[] = batch.map((s) => {
      if (!s.cache) {
        prefills++;
        this.initCache(s);
      }
      const n = s.pending.length;
      const P = s.prefix ? s.prefix.length / H : 0;
      const positions = new Int32Array(P + n);
      for (let j = 0; j < P; j++) positions[j] = s.offset - P + j;
      for (let i = 0; i < n; i++) positions[P + i] = s.offset + s.fed + i;
      return { ids: Int32Array.from(s.pending), positions, cache: s.cache!, prefixEmbeds: s.prefix };
    });
    const counts = seqs.map((q) => cachedSeqRows(q, H));
    const rows = counts.reduce((a, b) => a + b, 0);
    const logits = noGrad(() => withArena(() => {
      const ctx: ForwardContext = defaultContext(false);
      let r = 0;
      ctx.rowAdapters = mergeRanges(batch.map((s, i) => {
        const g = { start: r, end: r + counts[i], adapter: s.adapter };
        r += counts[i];
        return g;
      }));
      const hidden = forwardCached(this.model, seqs, ctx);
      const last = new Float32Array(batch.length * H);
      r = 0;
      counts.forEach((n, i) => {
        r += n;
        last.set(hidden.data.subarray((r - 1) * H, r * H), i * H);
      });
      ctx.rowAdapters = mergeRanges(batch.map((s, i) => ({ start: i, end: i + 1, adapter: s.adapter })));
      return lmLogits(this.model, new Tensor(last, [batch.length, H]), ctx).data.slice();
    }));
    this.steps++;
    const events: DecodeEvent[] = [];
    const V = c.vocabSize;
    batch.forEach((s, i) => {
      s.fed += s.pending.length;
      s.prefix = null;
      const id = sampleToken(logits.subarray(i * V, (i + 1) * V), s.sampling, s.rng);
      events.push(this.advance(s, id));
    });
    for (const e of events) if (e.finish) this.remove(e.id);
    const stats: StepStats = {
      sequences: batch.length, prefills, rows,
      adapters: new Set(batch.map((s) => s.adapter)).size, ms: performance.now() - t0,
    };
    return { events, stats };
  }

  private admit(): void {
    let budget = this.maxPrefill;
    while (this.waiting.length > 0) {
      const s = this.waiting[0];
      const n = s.req.promptIds.length;
      if (n > budget && budget < this.maxPrefill) break;
      budget -= n;
      this.active.push(this.waiting.shift()!);
    }
  }

  private initCache(s: Seq): void {
    const c = this.model.config;
    const setup = this.opts.setup ?? defaultSequenceSetup(this.model);
    s.prefix = setup.promptEmbeddings?.(s.adapter) ?? null;
    const P = s.prefix ? s.prefix.length / c.hiddenSize : 0;
    s.cache = new KVCache(c.numLayers, c.numKvHeads, c.headDim, s.req.promptIds.length + P + Math.min(s.limit, 256) + 1, c.layers.map((l) => l.window));
    setup.prepareCache?.(s.cache, s.adapter);
  }

  private remove(id: string): void {
    this.ids.delete(id);
    const i = this.active.findIndex((s) => s.req.id === id);
    if (i >= 0) this.active.splice(i, 1);
  }

  /** Takes the sampled token: stop ids, budget, text and stop strings. */
  private advance(s: Seq, id: number): DecodeEvent {
    const ev: DecodeEvent = { id: s.req.id, tokens: [], text: '' };
    const finish = (reason: FinishReason): DecodeEvent => {
      ev.finish = { reason, promptTokens: s.req.promptIds.length, completionTokens: s.newIds.length };
      return ev;
    };
    if (s.stops.has(id)) {
      ev.text = this.flush(s);
      return finish('stop');
    }
    s.newIds.push(id);
    s.pending = [id];
    ev.tokens.push(id);
    const stopStrings = s.req.stopStrings ?? [];
    if (this.opts.decode) {
      s.ctx.push(id);
      const before = s.text.length;
      this.detokenize(s);
      if (stopStrings.length > 0) {
        const from = Math.max(0, before - maxLen(stopStrings) + 1);
        let at = -1;
        for (const st of stopStrings) {
          const p = s.text.indexOf(st, from);
          if (p >= 0 && (at < 0 || p < at)) at = p;
        }
        if (at >= 0) {
          s.text = s.text.slice(0, at);
          ev.text = s.text.slice(s.emitted);
          s.emitted = Math.max(s.emitted, s.text.length);
          return finish('stop');
        }
      }
    }
    if (s.newIds.length >= s.limit) {
      ev.text = this.flush(s);
      return finish('length');
    }
    if (this.opts.decode) {
      const hold = Math.max(partialStopSuffix(s.text, stopStrings), 0);
      const stable = s.text.length - hold;
      if (stable > s.emitted) {
        ev.text = s.text.slice(s.emitted, stable);
        s.emitted = stable;
      }
    }
    return ev;
  }

  /**
   * Appends the text of newly complete tokens (text-generation-inference's `decode_token`): decode
   * a short window of ids with and without the new ones; accept the difference unless it ends in
   * an incomplete character. The window keeps the previous tokens so leading spaces survive.
   */
  private detokenize(s: Seq): void {
    const decode = this.opts.decode!;
    const prefixText = decode(s.ctx.slice(s.prefixOffset, s.readOffset));
    const newText = decode(s.ctx.slice(s.prefixOffset));
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      s.text += newText.slice(prefixText.length);
      s.ctx = s.ctx.slice(s.readOffset);
      s.prefixOffset = 0;
      s.readOffset = s.ctx.length;
    }
  }

  /** Everything not yet emitted, including an incomplete character at the end. */
  private flush(s: Seq): string {
    if (this.opts.decode && s.readOffset < s.ctx.length) {
      const decode = this.opts.decode;
      const prefixText = decode(s.ctx.slice(s.prefixOffset, s.readOffset));
      const newText = decode(s.ctx.slice(s.prefixOffset));
      if (newText.length > prefixText.length) s.text += newText.slice(prefixText.length);
      s.readOffset = s.ctx.length;
    }
    const out = s.text.slice(s.emitted);
    s.emitted = s.text.length;
    return out;
  }
}
