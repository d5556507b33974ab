/**
 * Float32 buffer pool and allocation arenas.
 *
 * Activations and gradients are drawn from a pool of reusable buffers (fresh large buffers cost
 * ~6× a refill in page faults) and returned deterministically when the arena that allocated them
 * ends, so a training step does not grow resident memory step after step. Buffers are grouped in
 * size classes (powers of two with four sub-steps, ≤ 19% slack); callers get an exact-length view.
 */

const SUBSTEPS = 4;
/** Most bytes kept idle in the pool; beyond this, released buffers are dropped for the GC. */
let maxIdleBytes = 4 * 1024 ** 3;
let idleBytes = 0;
const free = new Map<number, Float32Array[]>();

function sizeClass(n: number): number {
  if (n <= 64) return 64;
  const p = 2 ** Math.floor(Math.log2(n));
  const step = p / SUBSTEPS;
  return Math.ceil(n / step) * step;
}

interface Arena {
  buffers: Set<Float32Array>;
}
/** Base buffer of every live pooled allocation, by its ArrayBuffer (views share it). */
const liveBase = new Map<ArrayBufferLike, { base: Float32Array; arena: Arena }>();
const arenas: Arena[] = [];

/**
 * A pooled Float32Array of length n (zero-filled when `zero`). Inside an arena it is released when
 * the arena ends; outside any arena it is never returned to the pool (plain allocation).
 */
export function allocF32(n: number, zero = false): Float32Array {
  return allocIn(arenas[arenas.length - 1], n, zero);
}

/**
 * A pooled Float32Array of length n that lives as long as `owner` (a pooled buffer, or a view of
 * one): allocated in the arena that holds owner, or in the innermost arena when owner is not
 * pooled. Gradients use it, so a tensor's gradient is never freed before the tensor itself —
 * e.g. when a recomputed (checkpointed) block, running in a nested arena, accumulates into the
 * gradient of a tensor of the enclosing forward.
 */
export function allocF32Like(owner: Float32Array, n: number, zero = false): Float32Array {
  const live = liveBase.get(owner.buffer);
  const arena = live && arenas.includes(live.arena) ? live.arena : arenas[arenas.length - 1];
  return allocIn(arena, n, zero);
}

function allocIn(arena: Arena | undefined, n: number, zero: boolean): Float32Array {
  if (!arena) return new Float32Array(n);
  const cls = sizeClass(n);
  const list = free.get(cls);
  let base = list?.pop();
  if (base) {
    idleBytes -= base.byteLength;
    const view = base.subarray(0, n);
    if (zero) view.fill(0);
  } else {
    base = new Float32Array(cls);
  }
  arena.buffers.add(base);
  liveBase.set(base.buffer, { base, arena });
  return base.subarray(0, n);
}

/**
 * Returns a pooled buffer (any view of it) to the pool before its arena ends, when the caller
 * knows nothing reads it any more (e.g. a gradient already propagated). Plain allocations are
 * ignored.
 */
export function releaseF32(view: Float32Array): void {
  const live = liveBase.get(view.buffer);
  if (!live) return;
  liveBase.delete(view.buffer);
  live.arena.buffers.delete(live.base);
  release(live.base);
}

function release(buf: Float32Array): void {
  if (idleBytes + buf.byteLength > maxIdleBytes) return;
  const cls = buf.length;
  let list = free.get(cls);
  if (!list) free.set(cls, (list = []));
  list.push(buf);
  idleBytes += buf.byteLength;
}

/**
 * Runs fn with a new arena: every pooled buffer allocated inside (by any nested call) returns to
 * the pool when fn finishes or throws. Values that must outlive the arena have to be copied out
 * (e.g. `logits.data.slice()`), never returned as views.
 */
export function withArena<T>(fn: () => T): T {
  arenas.push({ buffers: new Set() });
  try {
    return fn();
  } finally {
    const a = arenas.pop()!;
    for (const b of a.buffers) {
      liveBase.delete(b.buffer);
      release(b);
    }
  }
}

/** Bytes currently idle in the pool (for memory reports and tests). */
export function poolIdleBytes(): number {
  return idleBytes;
}

/** Drops every idle buffer and sets the idle cap (bytes). */
export function trimPool(maxBytes = maxIdleBytes): void {
  free.clear();
  idleBytes = 0;
  maxIdleBytes = maxBytes;
}
