/**
 * The contract every PEFT method implements. A method owns its tensors and answers the hook
 * calls the PeftModel dispatches to it. Hooks receive `rows` when different batch rows use
 * different adapters (inference only: no gradients are recorded then); without `rows` they act on
 * the whole batch and must be differentiable.
 */
import type { KVCache } from '../generate/kv-cache.js';
import type { Batch, DecoderLayer, ForwardContext, LinearModule } from '../models/model.js';
import type { Tensor } from '../tensor/index.js';
import type { PeftType } from './config.js';

/** A row range [start, end) of the flattened batch. */
export interface RowRange {
  start: number;
  end: number;
}

export interface NamedTensor {
  name: string;
  tensor: Tensor;
}

export interface AdapterMethod {
  readonly peftType: PeftType;
  /** The JSON written to adapter_config.json. */
  config(): Record<string, unknown>;
  /** Tensors written to adapter_model.safetensors, keyed as HF PEFT saves them. */
  stateDict(): Map<string, Tensor>;
  /** Parameters the optimiser updates when this adapter trains (may include tensors not saved as such). */
  trainableParameters(): NamedTensor[];
  /** Called once before saving (e.g. prefix tuning folds its reparameterisation MLP). */
  prepareSave?(): void;

  /** Modules whose input/output this method changes (linear hooks are installed on them). */
  linearTargets?(): Set<string>;
  linearPre?(m: LinearModule, x: Tensor, ctx: ForwardContext, rows?: RowRange): Tensor;
  linearPost?(m: LinearModule, x: Tensor, y: Tensor, ctx: ForwardContext, rows?: RowRange): Tensor;
  /** Residual-stream deltas after a block's attention / MLP output (bottleneck adapters). */
  afterAttention?(layer: DecoderLayer, y: Tensor, ctx: ForwardContext, rows?: RowRange): Tensor;
  afterMlp?(layer: DecoderLayer, y: Tensor, ctx: ForwardContext, rows?: RowRange): Tensor;
  /** Learned key/value prefix for a layer (prefix tuning). */
  prefix?(layer: DecoderLayer, ctx: ForwardContext, B: number): { k: Tensor; v: Tensor; P: number } | null;
  /** Replaces input embeddings / extends the batch (prompt tuning, modules_to_save on embed_tokens). */
  input?(embeds: Tensor, batch: Batch, ctx: ForwardContext): { embeds: Tensor; batch: Batch };
  /** Number of virtual tokens this method prepends to labels (prompt tuning), for loss alignment. */
  virtualTokens?(): number;
  /** Generation: fill a fresh cache before the prompt (prefix tuning) and the prompt's first position. */
  prepareCache?(cache: KVCache): void;
  positionOffset?(): number;
  /** Embeddings to feed before the prompt in cached generation (prompt tuning): [P, hidden]. */
  promptEmbeddings?(): Float32Array | null;
  /** Number of parameters it adds (for the trainable summary). */
  numParameters(): number;
}
