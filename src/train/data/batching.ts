/**
 * From tokenized examples to model batches: truncation, packing, padding, labels, and the
 * deterministic, resumable training iterator.
 *
 * Labels follow the model's convention (see `lmLoss` in models/model.ts): labels are aligned with
 * rows, and the label of row r is the token at r + 1 of the SAME example when that token is a
 * target, else −100. So the last token of every example is unlabelled (a packed row never
 * teaches the first token of the next example), and padding is unlabelled.
 */
import { PeftError } from '../../errors.js';
import type { Batch } from '../../models/model.js';

/** Label of a row that is not learned (padding, prompt, last token of an example). */
export const IGNORE_LABEL = -100;

/** A tokenized example. */
export interface Example {
  /** Token ids [L]. */
  ids: Int32Array;
  /** [L]: 1 where the token is to be learned (predicted from the tokens before it). targets[0] counts only for prompt tuning's PEFT loss convention (the last virtual token predicts token 0). */
  targets: Uint8Array;
  /** Where it came from (`file: line N`), for messages. */
  source?: string;
}

/** A batch for the model plus its labels. */
export interface TrainBatch {
  /** ids [B·T]; keyMask [B·T] (1 real, 0 pad); packed batches also carry segIds and positions [B·T]. */
  batch: Batch;
  /** [B·T] next-token labels aligned with rows (−100 = ignored). */
  labels: Int32Array;
  /** Number of labels that are not −100 (the loss denominator; sum it over gradient-accumulation batches). */
  numTargets: number;
  /** [B]: each row's first token when it is a target, else −100 (prompt tuning's PEFT loss convention). */
  firstLabels: Int32Array;
}

/** Number of labelled rows an example yields: positions t ≥ 1 with targets[t] = 1. */
export function countTargets(ex: Example): number {
  let n = 0;
  for (let t = 1; t < ex.ids.length; t++) n += ex.targets[t];
  return n;
}

/**
 * Right truncation to `maxSeqLength` tokens. For supervised formats the prompt comes first, so it
 * is kept and the completion / later turns are cut (with the EOS). Returns the example itself
 * when it fits, a truncated copy (`truncated: true`), or null when no target is left (e.g. the
 * prompt alone fills maxSeqLength): such examples are dropped and counted by callers.
 */
export function truncateExample(ex: Example, maxSeqLength: number): { example: Example; truncated: boolean } | null {
  const fits = ex.ids.length <= maxSeqLength;
  const out = fits ? ex : { ids: ex.ids.slice(0, maxSeqLength), targets: ex.targets.slice(0, maxSeqLength), source: ex.source };
  if (countTargets(out) === 0) return null;
  return { example: out, truncated: !fits };
}

/**
 * Packs examples, taken in `order`, into rows of at most `maxSeqLength` tokens ("next fit": an
 * example goes into the current row if it fits, otherwise it starts a new row), so the order of
 * examples is kept. Every example must already be at most maxSeqLength long.
 * Returns the example indices of every row.
 */
export function packRows(lengths: ArrayLike<number>, order: ArrayLike<number>, maxSeqLength: number): number[][] {
  const rows: number[][] = [];
  let cur: number[] = [], used = 0;
  for (let k = 0; k < order.length; k++) {
    const i = order[k], L = lengths[i];
    if (L > maxSeqLength) throw new Error(`packRows: example ${i} has ${L} tokens > maxSeqLength ${maxSeqLength}`);
    if (used + L > maxSeqLength && cur.length > 0) { rows.push(cur); cur = []; used = 0; }
    cur.push(i);
    used += L;
  }
  if (cur.length > 0) rows.push(cur);
  return rows;
}

/**
 * Builds one batch: B = rows.length rows, T = the longest row (dynamic padding), right-padded
 * with `padId` (keyMask 0, label −100). With `packed`, every example of a row gets its own
 * segment id (0, 1, … within the row; padding gets the next one, and is masked anyway) and
 * positions restarting at 0, so no token attends across examples; without it, each row must hold
 * one example and positions are the default 0..T−1.
 */
export function collate(rows: ReadonlyArray<ReadonlyArray<Example>>, opts: { packed: boolean; padId?: number }): TrainBatch {
  const B = rows.length;
  let T = 1;
  for (const row of rows) {
    if (!opts.packed && row.length !== 1) throw new Error(`collate: an unpacked row holds ${row.length} examples`);
    let L = 0;
    for (const ex of row) L += ex.ids.length;
    T = Math.max(T, L);
  }
  const ids = new Int32Array(B * T).fill(opts.padId ?? 0);
  const labels = new Int32Array(B * T).fill(IGNORE_LABEL);
  const keyMask = new Uint8Array(B * T);
  const segIds = opts.packed ? new Int32Array(B * T) : null;
  const positions = opts.packed ? new Int32Array(B * T) : null;
  const firstLabels = new Int32Array(B).fill(IGNORE_LABEL);
  let numTargets = 0;
  for (let b = 0; b < B; b++) {
    const first = rows[b][0];
    if (first && first.ids.length > 0 && first.targets[0]) firstLabels[b] = first.ids[0];
    let off = b * T;
    rows[b].forEach((ex, seg) => {
      const L = ex.ids.length;
      ids.set(ex.ids, off);
      keyMask.fill(1, off, off + L);
      for (let t = 0; t < L; t++) {
        if (t + 1 < L && ex.targets[t + 1]) { labels[off + t] = ex.ids[t + 1]; numTargets++; }
        if (segIds) segIds[off + t] = seg;
        if (positions) positions[off + t] = t;
      }
      off += L;
    });
    // padding: its own segment, positions continuing (both irrelevant: keyMask hides pad keys)
    const end = (b + 1) * T;
    for (let r = off, p = 0; r < end; r++, p++) {
      if (segIds) segIds[r] = rows[b].length;
      if (positions) positions[r] = p;
    }
  }
  const batch: Batch = { ids, B, T, keyMask };
  if (segIds) batch.segIds = segIds;
  if (positions) batch.positions = positions;
  return { batch, labels, numTargets, firstLabels };
}

/** splitmix32: a small seeded generator of uint32s. */
function splitmix32(seed: number): () => number {
  let a = seed | 0;
  return () => {
    a = (a + 0x9e3779b9) | 0;
    let t = a ^ (a >>> 16);
    t = Math.imul(t, 0x21f0aaad);
    t ^= t >>> 15;
    t = Math.imul(t, 0x735a2d97);
    return (t ^ (t >>> 15)) >>> 0;
  };
}

/**
 * A permutation of 0..n−1, Fisher–Yates with a splitmix32 stream seeded by `seed` (and `stream`,
 * e.g. the epoch). Identical for identical arguments on every platform.
 */
export function seededPermutation(n: number, seed: number, stream = 0): number[] {
  const rand = splitmix32((seed ^ Math.imul(stream + 1, 0x85ebca6b)) >>> 0);
  const out = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor((rand() / 4294967296) * (i + 1));
    const t = out[i]; out[i] = out[j]; out[j] = t;
  }
  return out;
}

export interface BatchOptions {
  /** Rows per batch. */
  batchSize: number;
  /** Tokens per row at most; longer examples are truncated on the right. */
  maxSeqLength: number;
  /** Pack several examples per row (segment ids, positions restarting at 0). Default false. */
  pack?: boolean;
  /** Token id written at padded positions (masked and unlabelled). Default 0. */
  padId?: number;
}

export interface LoaderOptions extends BatchOptions {
  /** Seed of the per-epoch shuffle (a 32-bit integer). Default 0. */
  seed?: number;
  /** Shuffle the examples every epoch (a different order per epoch). Default true. */
  shuffle?: boolean;
}

/** Serialisable position of a {@link DataLoader}: the next batch is batch `index` of `epoch`. */
export interface LoaderState {
  epoch: number;
  index: number;
  /** The shuffle seed. */
  seed: number;
  /** Examples the loader was built on (checked on restore). */
  numExamples: number;
}

/** Endless, deterministic training batches. */
export interface DataLoader {
  /** The next batch; after the last batch of an epoch, the first of the next epoch (new order). */
  next(): TrainBatch;
  /** Position before the next batch, as plain JSON-able data. */
  state(): LoaderState;
  /** Continues from a saved position: the following next() calls return exactly the batches they would have. Throws PeftError on a state that does not fit. */
  restore(state: LoaderState): void;
  /** Number of batches of an epoch (default: the current one; with packing it can vary a little between epochs). */
  batchesInEpoch(epoch?: number): number;
  /** Current epoch (0-based). */
  readonly epoch: number;
  /** Examples used (after dropping those left without a target by truncation). */
  readonly numExamples: number;
  /** Examples dropped because truncation left them no target. */
  readonly dropped: number;
  /** Examples truncated to maxSeqLength. */
  readonly truncated: number;
}

function checkInt(v: unknown, name: string, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min)
    throw new PeftError('invalid option', { field: name, expected: `an integer ≥ ${min}`, found: String(v) });
  return v;
}

function prepare(examples: readonly Example[], opts: BatchOptions): { kept: Example[]; dropped: number; truncated: number } {
  checkInt(opts.batchSize, 'batchSize', 1);
  checkInt(opts.maxSeqLength, 'maxSeqLength', 2);
  const kept: Example[] = [];
  let dropped = 0, truncated = 0;
  for (const ex of examples) {
    const r = truncateExample(ex, opts.maxSeqLength);
    if (!r) { dropped++; continue; }
    if (r.truncated) truncated++;
    kept.push(r.example);
  }
  return { kept, dropped, truncated };
}

/** Groups the rows (example indices in order) into batches of `batchSize` rows (the last may be smaller). */
function planBatches(examples: readonly Example[], order: number[], opts: BatchOptions): number[][][] {
  const rows = opts.pack
    ? packRows(examples.map((e) => e.ids.length), order, opts.maxSeqLength)
    : order.map((i) => [i]);
  const batches: number[][][] = [];
  for (let i = 0; i < rows.length; i += opts.batchSize) batches.push(rows.slice(i, i + opts.batchSize));
  return batches;
}

/**
 * A deterministic training iterator over `examples`: each epoch shuffles the examples with
 * (seed, epoch), packs them into rows when `pack` is set, and cuts the rows into batches of
 * `batchSize` (the last batch of an epoch may be smaller); epochs follow each other endlessly.
 * Examples are first truncated to maxSeqLength (right), and dropped (counted in `dropped`) if no
 * target remains. state()/restore() resume on exactly the same batches. For gradient
 * accumulation, take `gradAccum` consecutive batches per optimizer step and divide the summed
 * loss by the summed numTargets.
 * Throws PeftError for invalid options or when no example has a target.
 */
export function createLoader(examples: readonly Example[], opts: LoaderOptions): DataLoader {
  const { kept, dropped, truncated } = prepare(examples, opts);
  if (kept.length === 0) throw new PeftError('no training example with a target token', { field: 'examples', expected: 'at least one', found: `${examples.length} examples, ${dropped} left without target by truncation` });
  const shuffle = opts.shuffle ?? true;
  let seed = checkInt(opts.seed ?? 0, 'seed', -(2 ** 31)) | 0;
  let epoch = 0, index = 0;
  let planned: { epoch: number; seed: number; batches: number[][][] } | null = null;
  const plan = (e: number): number[][][] => {
    if (planned && planned.epoch === e && planned.seed === seed) return planned.batches;
    const order = shuffle ? seededPermutation(kept.length, seed, e) : kept.map((_, i) => i);
    const batches = planBatches(kept, order, opts);
    if (e === epoch) planned = { epoch: e, seed, batches };
    return batches;
  };
  return {
    next(): TrainBatch {
      let batches = plan(epoch);
      if (index >= batches.length) { epoch++; index = 0; batches = plan(epoch); }
      const rows = batches[index++];
      return collate(rows.map((r) => r.map((i) => kept[i])), { packed: opts.pack ?? false, padId: opts.padId });
    },
    state: () => ({ epoch, index, seed, numExamples: kept.length }),
    restore(s: LoaderState): void {
      const bad = (field: string, expected: string, found: unknown): PeftError =>
        new PeftError('loader state does not fit this data', { field: `state.${field}`, expected, found: String(found) });
      if (typeof s !== 'object' || s === null) throw bad('', 'an object {epoch, index, seed, numExamples}', s);
      for (const k of ['epoch', 'index', 'seed', 'numExamples'] as const)
        if (typeof s[k] !== 'number' || !Number.isInteger(s[k])) throw bad(k, 'an integer', s[k]);
      if (s.numExamples !== kept.length) throw bad('numExamples', `${kept.length} (this data set)`, s.numExamples);
      if (s.epoch < 0 || s.index < 0) throw bad(s.epoch < 0 ? 'epoch' : 'index', 'a non-negative integer', s.epoch < 0 ? s.epoch : s.index);
      epoch = s.epoch; index = s.index; seed = s.seed | 0;
      planned = null;
    },
    batchesInEpoch: (e = epoch) => plan(e).length,
    get epoch() { return epoch; },
    numExamples: kept.length,
    dropped,
    truncated,
  };
}

/**
 * Evaluation batches: every example once, in the given order, no shuffle; one example per row
 * (right-padded) unless `pack`. Examples are truncated like in {@link createLoader}; those left
 * without a target are skipped. Throws PeftError for invalid options.
 */
export function evalBatches(examples: readonly Example[], opts: BatchOptions): IterableIterator<TrainBatch> {
  const { kept } = prepare(examples, opts);
  const batches = planBatches(kept, kept.map((_, i) => i), opts);
  return (function* () {
    for (const rows of batches) yield collate(rows.map((r) => r.map((i) => kept[i])), { packed: opts.pack ?? false, padId: opts.padId });
  })();
}
