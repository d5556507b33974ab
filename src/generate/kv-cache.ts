/**
 * Key/value cache of one sequence: per layer, keys and values [stored, Hkv·D] (keys already
 * rotated by RoPE). `length` counts the sequence's cached positions, including any prefix (prefix
 * tuning) written before the first token.
 *
 * Sliding-window layers (`windows[l]` = w, a query sees the w most recent keys, itself included)
 * keep only what a later query can still see: after each forward the cache drops all but the last
 * w − 1 positions of such a layer once it holds at least 2·(w − 1) + 16 of them (amortised
 * compaction), so its memory is bounded by the window, not the sequence — as transformers'
 * `SlidingWindowCache` / llama.cpp's SWA cache. This is exact: attention masks keys by their
 * offset from the newest key (native/ops/attention.cc: key j is visible to query i when
 * Tk − Tq + i − w < j ≤ Tk − Tq + i), and dropping keys from the front shifts both ends alike;
 * only keys no query can see any more are dropped. Global layers (null) keep every position.
 */
export class KVCache {
  keys: Float32Array[];
  values: Float32Array[];
  length = 0;
  readonly width: number;
  /** Per layer: positions dropped from the front (sliding-window layers only). */
  readonly dropped: number[];
  /** Per layer: rows the key/value arrays can hold. */
  private readonly caps: number[];
  private readonly windows: Array<number | null>;

  /**
   * @param capacity rows to allocate up front per layer (global layers; window layers allocate at
   *   most what their window needs, 2·(w − 1) + 16 + 1 rows, and grow only for a longer prefill).
   * @param windows per layer, the sliding window (null or absent = global; values ≥ 2^30 count as global).
   */
  constructor(numLayers: number, numKvHeads: number, headDim: number, capacity = 64, windows: ReadonlyArray<number | null> = []) {
    this.width = numKvHeads * headDim;
    this.windows = Array.from({ length: numLayers }, (_, l) => {
      const w = windows[l] ?? null;
      return w !== null && w > 0 && w < 2 ** 30 ? w : null;
    });
    this.dropped = new Array<number>(numLayers).fill(0);
    this.caps = this.windows.map((w) => Math.max(1, w === null ? capacity : Math.min(capacity, compactAt(w) + 1)));
    this.keys = this.caps.map((cap) => new Float32Array(cap * this.width));
    this.values = this.caps.map((cap) => new Float32Array(cap * this.width));
  }

  /** Positions layer `l` holds now (its keys/values rows [0, stored)). */
  stored(l: number): number {
    return this.length - this.dropped[l];
  }

  /** Makes room in every layer for `extra` more positions. */
  reserve(extra: number): void {
    for (let l = 0; l < this.caps.length; l++) this.reserveLayer(l, extra);
  }

  private reserveLayer(l: number, extra: number): void {
    const need = this.stored(l) + extra;
    if (need <= this.caps[l]) return;
    let cap = this.caps[l];
    while (cap < need) cap *= 2;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(cap * this.width);
      b.set(a.subarray(0, this.stored(l) * this.width));
      return b;
    };
    this.keys[l] = grow(this.keys[l]);
    this.values[l] = grow(this.values[l]);
    this.caps[l] = cap;
  }

  /** Writes k/v rows [n, width] of layer l after its stored positions (call advance() after all layers). */
  write(layer: number, k: Float32Array, v: Float32Array, n: number): void {
    this.reserveLayer(layer, n);
    const at = this.stored(layer) * this.width;
    this.keys[layer].set(k.subarray(0, n * this.width), at);
    this.values[layer].set(v.subarray(0, n * this.width), at);
  }

  /** Counts n new positions (written to every layer), then compacts sliding-window layers. */
  advance(n: number): void {
    this.length += n;
    for (let l = 0; l < this.windows.length; l++) {
      const w = this.windows[l];
      if (w === null) continue;
      const keep = w - 1, stored = this.stored(l);
      if (stored < compactAt(w)) continue;
      const from = (stored - keep) * this.width;
      this.keys[l].copyWithin(0, from, stored * this.width);
      this.values[l].copyWithin(0, from, stored * this.width);
      this.dropped[l] += stored - keep;
    }
  }

  /** Bytes held. */
  get bytes(): number {
    return 2 * this.caps.reduce((a, c) => a + c, 0) * this.width * 4;
  }
}

/** Stored positions at which a window-w layer is compacted down to its last w − 1. */
function compactAt(w: number): number {
  return 2 * (w - 1) + 16;
}
