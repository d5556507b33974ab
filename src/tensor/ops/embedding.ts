/** Token embedding lookup (differentiable w.r.t. a float32 table). */
import { native } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

/** out[r, :] = W[ids[r], :]. W: Tensor [vocab, D] or bfloat16 bits with its shape. Throws on an id outside the vocabulary. */
export function embedding(w: Tensor | { bits: Uint16Array; shape: [number, number] }, ids: Int32Array): Tensor {
  const [V, D] = w.shape;
  const out = Tensor.empty([ids.length, D]);
  if (w instanceof Tensor) {
    native.embeddingForward(w.data, V, D, ids, out.data);
    return record(out, [w], (g) => native.embeddingBackward(g, ids, D, gradOf(w)));
  }
  native.embeddingForward(w.bits, V, D, ids, out.data);
  return out;
}
