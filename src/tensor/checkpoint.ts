/**
 * Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
 * transformers' `gradient_checkpointing_enable()`, torch.utils.checkpoint): a block's forward runs
 * without keeping its activations — only its input is kept — and is run again inside backward to
 * back-propagate through it. Peak activation memory becomes one block's plus every block's input,
 * for about one extra forward pass of compute.
 *
 * The block's forward is recorded on a tape of its own in a nested arena; its buffers return to
 * the pool as soon as the block ends. The checkpoint node is put on the enclosing tape whenever
 * the block's OUTPUT requires a gradient — that is, when the input or ANY parameter used inside
 * (a LoRA matrix, an IA3 vector, a prefix) does. Deciding from the inputs alone is the known
 * failure of reentrant checkpointing (torch `use_reentrant=True`; transformers'
 * `enable_input_require_grads` works around it): with frozen embeddings the block input needs no
 * gradient, and the adapters inside the block silently got none.
 */
import { native } from '../native/index.js';
import { backward, enableGrad, gradOf, isRecording, recordNode, withOwnTape } from './autograd.js';
import { releaseF32, withArena } from './pool.js';
import { Tensor } from './tensor.js';

/** State a block's forward consumes that must be replayed on recomputation (e.g. a dropout-call counter). */
export interface ReplayState {
  get(): number;
  set(v: number): void;
}

/**
 * y = fn(x) for a shape-preserving block (x, y: same shape, e.g. a decoder layer's [B·T, hidden]),
 * with fn's intermediate activations freed right after the forward and recomputed in backward.
 * `replay` is read before the forward and restored before the recomputation, so the recomputed
 * forward is identical (same dropout masks). Without recording (inference) this is just fn(x).
 * Gradients equal those of the plain fn(x) exactly: the recomputation runs the same ops on the
 * same inputs. Throws Error when fn changes the shape.
 */
export function checkpoint(x: Tensor, fn: (x: Tensor) => Tensor, replay?: ReplayState): Tensor {
  if (!isRecording()) return fn(x);
  const start = replay?.get() ?? 0;
  const out = Tensor.empty(x.shape);
  let needsGrad = false;
  withArena(() => {
    const { value } = withOwnTape(() => fn(new Tensor(x.data, x.shape, x.requiresGrad, false)));
    if (value.size !== out.size) throw new Error(`checkpoint: the block changed the shape [${x.shape}] to [${value.shape}]`);
    out.data.set(value.data);
    needsGrad = value.requiresGrad;
  });
  if (!needsGrad) return out;
  return recordNode(out, (gOut) => {
    const end = replay?.get();
    replay?.set(start);
    withArena(() => {
      const xr = new Tensor(x.data, x.shape, x.requiresGrad, false);
      enableGrad(() => withOwnTape(() => {
        const y = fn(xr);
        backward(y, gOut);
      }));
      if (xr.grad) {
        native.axpy(1, xr.grad, gradOf(x));
        releaseF32(xr.grad);
        xr.grad = null;
      }
    });
    if (end !== undefined) replay!.set(end);
  });
}
