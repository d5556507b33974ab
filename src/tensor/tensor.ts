/**
 * Tensor: a float32 buffer with a shape, and the autograd bookkeeping for reverse-mode
 * differentiation (see autograd.ts). Data is row-major and contiguous.
 */
import { allocF32 } from './pool.js';

export class Tensor {
  /** Gradient of the current backward pass's output w.r.t. this tensor (allocated on demand). */
  grad: Float32Array | null = null;
  /** Parameters (leaves) keep their gradient buffer across steps; intermediates get pooled ones. */
  readonly isLeaf: boolean;

  constructor(
    public data: Float32Array,
    public shape: number[],
    public requiresGrad = false,
    isLeaf = true,
  ) {
    this.isLeaf = isLeaf;
    const n = shape.reduce((a, b) => a * b, 1);
    if (n !== data.length) throw new Error(`Tensor: shape [${shape}] needs ${n} elements, data has ${data.length}`);
  }

  /** Number of elements. */
  get size(): number {
    return this.data.length;
  }

  /** Last dimension (features) and the product of the others (rows). */
  get cols(): number {
    return this.shape[this.shape.length - 1];
  }
  get rows(): number {
    return this.data.length / this.cols;
  }

  /** A new leaf tensor (plain allocation, not pooled). */
  static param(data: Float32Array, shape: number[], requiresGrad = true): Tensor {
    return new Tensor(data, shape, requiresGrad, true);
  }

  /** An intermediate (pooled) tensor, uninitialised unless zero. */
  static empty(shape: number[], zero = false): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    return new Tensor(allocF32(n, zero), shape, false, false);
  }

  /** The tensor whose data (and gradient) this one shares, for views. */
  base: Tensor | null = null;

  /** Same data and gradient, new shape (no copy; element count must match). */
  view(shape: number[]): Tensor {
    const t = new Tensor(this.data, shape, this.requiresGrad, false);
    t.base = this.base ?? this;
    return t;
  }
}
