/**
 * Key/value cache of one sequence: per layer, keys and values [capacity, Hkv·D] (keys already
 * rotated by RoPE), grown by doubling. `length` counts cached positions, including any prefix
 * (prefix tuning) written before the first token.
 */
export class KVCache {
  keys: Float32Array[];
  values: Float32Array[];
  length = 0;
  capacity: number;
  readonly width: number;

  constructor(numLayers: number, numKvHeads: number, headDim: number, capacity = 64) {
    this.width = numKvHeads * headDim;
    this.capacity = Math.max(1, capacity);
    this.keys = Array.from({ length: numLayers }, () => new Float32Array(this.capacity * this.width));
    this.values = Array.from({ length: numLayers }, () => new Float32Array(this.capacity * this.width));
  }

  /** Makes room for `extra` more positions. */
  reserve(extra: number): void {
    const need = this.length + extra;
    if (need <= this.capacity) return;
    let cap = this.capacity;
    while (cap < need) cap *= 2;
    const grow = (a: Float32Array): Float32Array => {
      const b = new Float32Array(cap * this.width);
      b.set(a.subarray(0, this.length * this.width));
      return b;
    };
    this.keys = this.keys.map(grow);
    this.values = this.values.map(grow);
    this.capacity = cap;
  }

  /** Writes k/v rows [n, width] of layer l at positions [length, length + n) (call advance() after all layers). */
  write(layer: number, k: Float32Array, v: Float32Array, n: number): void {
    this.reserve(n);
    this.keys[layer].set(k.subarray(0, n * this.width), this.length * this.width);
    this.values[layer].set(v.subarray(0, n * this.width), this.length * this.width);
  }

  advance(n: number): void {
    this.length += n;
  }

  /** Bytes held. */
  get bytes(): number {
    return 2 * this.keys.length * this.capacity * this.width * 4;
  }
}
