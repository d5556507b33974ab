/**
 * Scaled dot-product attention with grouped-query heads (differentiable). Layouts:
 * q [B·Tq, Hq·D], k/v [B·Tk, Hkv·D], out [B·Tq, Hq·D]. Query i of a row sees key j when
 * j <= (Tk − Tq) + i (causal; keys before the queries are a prefix or cache), j is inside the
 * sliding window when one is set, the key is not padding (keyMask), it shares the query's segment
 * (packing) and the additive mask allows it. Optional logit soft-capping (Gemma 2).
 */
import { native, type AttentionShape } from '../../native/index.js';
import { allocF32 } from '../pool.js';
import { gradOf, isRecording, record } from '../autograd.js';
import { Tensor } from '../tensor.js';

export interface AttentionOptions {
  B: number;
  Tq: number;
  Tk: number;
  Hq: number;
  Hkv: number;
  D: number;
  /** Softmax scale; default 1/√D. */
  scale?: number;
  causal?: boolean;
  keyMask?: Uint8Array | null;
  qSeg?: Int32Array | null;
  kSeg?: Int32Array | null;
  addMask?: Float32Array | null;
  addMaskBatched?: boolean;
  /** Sliding window: query i sees the `window` most recent keys, itself included (0/null = all). */
  window?: number | null;
  /** Attention logit soft-capping: scores become cap·tanh(score/cap) (Gemma 2; 0/null = none). */
  softcap?: number | null;
}

export function attention(q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions): Tensor {
  const shape: AttentionShape = {
    B: o.B, Tq: o.Tq, Tk: o.Tk, Hq: o.Hq, Hkv: o.Hkv, D: o.D,
    qStride: o.Hq * o.D, kStride: o.Hkv * o.D, vStride: o.Hkv * o.D, oStride: o.Hq * o.D,
    scale: o.scale ?? 1 / Math.sqrt(o.D),
    causal: o.causal ?? true,
    keyMask: o.keyMask ?? null,
    qSeg: o.qSeg ?? null,
    kSeg: o.kSeg ?? null,
    addMask: o.addMask ?? null,
    addMaskBatched: o.addMaskBatched ?? false,
    window: o.window ?? 0,
    softcap: o.softcap ?? 0,
  };
  const out = Tensor.empty([o.B * o.Tq, o.Hq * o.D]);
  const wantGrad = isRecording() && (q.requiresGrad || k.requiresGrad || v.requiresGrad);
  const lse = wantGrad ? allocF32(o.B * o.Hq * o.Tq) : null;
  native.attentionForward(shape, q.data, k.data, v.data, out.data, lse);
  return record(out, [q, k, v], (gOut) => {
    native.attentionBackward(shape, q.data, k.data, v.data, out.data, lse!, gOut,
      q.requiresGrad ? gradOf(q) : null, k.requiresGrad ? gradOf(k) : null, v.requiresGrad ? gradOf(v) : null);
  });
}
