/**
 * Reverse-mode automatic differentiation on a tape.
 *
 * Each differentiable op, when gradient recording is on and one of its inputs requires a
 * gradient, marks its output as requiring one and appends a closure to the tape. `backward(loss)`
 * runs the closures in reverse order; each reads its output's gradient (skipping ops whose output
 * received none) and ACCUMULATES into its inputs' gradients. Frozen tensors (requiresGrad false)
 * never get a gradient buffer, so e.g. a frozen weight costs no weight-gradient GEMM.
 */
import { allocF32Like, releaseF32 } from './pool.js';
import { Tensor } from './tensor.js';

interface Node {
  out: Tensor;
  backward: (gOut: Float32Array) => void;
}

let recording = true;
let tape: Node[] = [];
/** While set, leaf (parameter) gradients accumulate here instead of into `.grad` (see withLeafGradsInto). */
let leafSink: Map<Tensor, Float32Array> | null = null;

/** True when ops should record for backward. */
export function isRecording(): boolean {
  return recording;
}

/** Runs fn without recording (inference); restores the previous mode afterwards. */
export function noGrad<T>(fn: () => T): T {
  const prev = recording;
  recording = false;
  try {
    return fn();
  } finally {
    recording = prev;
  }
}

/** Runs fn with recording on (e.g. a checkpointed block recomputed inside backward); restores the mode after. */
export function enableGrad<T>(fn: () => T): T {
  const prev = recording;
  recording = true;
  try {
    return fn();
  } finally {
    recording = prev;
  }
}

/** Whether an op over these inputs must record (and its output require a gradient). */
export function needsGrad(...inputs: Array<Tensor | null | undefined>): boolean {
  if (!recording) return false;
  for (const t of inputs) if (t && t.requiresGrad) return true;
  return false;
}

/**
 * Records `backward` for `out` when any input requires a gradient. Returns out (marked).
 * The closure receives dL/d(out) and must accumulate into `gradOf(input)` for inputs that
 * require gradients.
 */
export function record(out: Tensor, inputs: Array<Tensor | null | undefined>, backward: (gOut: Float32Array) => void): Tensor {
  if (!needsGrad(...inputs)) return out;
  out.requiresGrad = true;
  tape.push({ out, backward });
  return out;
}

function root(t: Tensor): Tensor {
  return t.base ?? t;
}

/**
 * The gradient buffer of t (zero-initialised on first use): pooled for intermediates, a plain
 * persistent buffer for leaves (parameters), which the optimiser zeroes between steps. An
 * intermediate's gradient lives in the same arena as its data (see allocF32Like).
 */
export function gradOf(t: Tensor): Float32Array {
  const r = root(t);
  if (r.isLeaf && leafSink) {
    let g = leafSink.get(r);
    if (!g) leafSink.set(r, (g = new Float32Array(r.size)));
    return g;
  }
  if (!r.grad) r.grad = r.isLeaf ? new Float32Array(r.size) : allocF32Like(r.data, r.size, true);
  return r.grad;
}

/** The gradient of t if one has been accumulated, else null. */
export function gradIfAny(t: Tensor): Float32Array | null {
  return root(t).grad;
}

/**
 * Back-propagates from `out` (seed gradient `seed`, default ones — i.e. d(sum(out))) through
 * the recorded tape, then clears the tape. Intermediate gradient buffers are pooled and freed
 * with the arena that allocated them.
 */
export function backward(out: Tensor, seed?: Float32Array): void {
  const g = gradOf(out);
  if (seed) {
    if (seed.length !== g.length) throw new Error(`backward: seed has ${seed.length} elements, output ${g.length}`);
    for (let i = 0; i < g.length; i++) g[i] += seed[i];
  } else {
    g.fill(1);
  }
  propagate();
}

/**
 * As {@link backward}, with out's gradient already written by the caller into `gradOf(out)`
 * (saves a seed buffer the size of out, e.g. a chunk of logits whose gradient the loss kernel wrote).
 */
export function backwardFromGrad(out: Tensor): void {
  if (!root(out).grad) throw new Error('backwardFromGrad: the output has no gradient');
  propagate();
}

function propagate(): void {
  const nodes = tape;
  tape = [];
  // an output's gradient is dead once the last (earliest) node producing it has run: return it
  // to the pool right away, so peak memory holds activations plus a few live gradients
  const producers = new Map<Tensor, number>();
  for (const n of nodes) {
    const r = root(n.out);
    producers.set(r, (producers.get(r) ?? 0) + 1);
  }
  for (let i = nodes.length - 1; i >= 0; i--) {
    const n = nodes[i];
    const r = root(n.out);
    const go = r.grad;
    if (go) n.backward(go);
    const left = producers.get(r)! - 1;
    producers.set(r, left);
    if (left === 0 && !r.isLeaf && r.grad) {
      releaseF32(r.grad);
      r.grad = null;
    }
  }
  for (const n of nodes) {
    const r = root(n.out);
    if (!r.isLeaf) r.grad = null;
  }
}

/** Discards recorded ops without running them (e.g. after an evaluation forward with recording on). */
export function clearTape(): void {
  tape = [];
}

/**
 * Runs fn with an empty tape of its own and returns what it recorded, restoring the enclosing
 * tape afterwards (for gradient checkpointing: a block's forward is recorded apart, then either
 * dropped or back-propagated on its own).
 */
export function withOwnTape<T>(fn: () => T): { value: T; nodes: number } {
  const outer = tape;
  tape = [];
  try {
    const value = fn();
    return { value, nodes: tape.length };
  } finally {
    tape = outer;
  }
}

/**
 * Runs fn with every leaf (parameter) gradient it produces accumulated into `sink` (one zeroed
 * buffer per leaf, created on first use) instead of the leaf's own gradient; restores the previous
 * mode after. For an op that back-propagates part of the graph eagerly, before the scale of its
 * own output gradient is known (the chunked loss over a hooked LM head), and adds the sink, scaled,
 * in its backward.
 */
export function withLeafGradsInto<T>(sink: Map<Tensor, Float32Array>, fn: () => T): T {
  const prev = leafSink;
  leafSink = sink;
  try {
    return fn();
  } finally {
    leafSink = prev;
  }
}

/**
 * Appends a node to the current tape directly (the checkpoint op: its inputs are not known
 * in advance, so `record`'s input test does not apply). Marks out as requiring a gradient.
 */
export function recordNode(out: Tensor, backwardFn: (gOut: Float32Array) => void): Tensor {
  out.requiresGrad = true;
  tape.push({ out, backward: backwardFn });
  return out;
}
