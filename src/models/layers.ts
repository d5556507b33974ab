/**
 * Building blocks shared by the architecture families: norms (RMSNorm, Gemma's (1+w) RMSNorm,
 * LayerNorm), per-head q/k norms, the attention sub-block (projections, q/k norm, RoPE, attention,
 * output projection) and the gated MLP (SwiGLU / GeGLU-tanh). Shapes: x, h [rows, hidden].
 * Sources: transformers `modeling_llama.py` (LlamaRMSNorm, LlamaAttention, LlamaMLP),
 * `modeling_qwen3.py` (q_norm/k_norm), `modeling_gemma2.py` / `modeling_gemma3.py` (Gemma RMSNorm).
 */
import { activation, add, layernorm, mul, rmsnorm, rope, swiglu, Tensor } from '../tensor/index.js';
import type { BlockEnv, CausalLM, DecoderLayer, Norm } from './model.js';
import { runLinear } from './model.js';

const ones = new Map<number, Tensor>();
function onesOf(n: number): Tensor {
  let t = ones.get(n);
  if (!t) ones.set(n, (t = Tensor.param(new Float32Array(n).fill(1), [n], false)));
  return t;
}

/**
 * The model's norm kind on x: 'rms' y = x·rsqrt(mean x² + ε)·w; 'rms1p' the same times (1 + w)
 * (Gemma, `Gemma2RMSNorm`: computed as 1 + w in float32, gradient flows to w); 'layernorm'
 * (x − mean)·rsqrt(var + ε)·w + b. ε is `config.rmsNormEps`.
 */
export function applyNorm(model: CausalLM, n: Norm, x: Tensor): Tensor {
  const c = model.config;
  switch (c.normKind) {
    case 'rms': return rmsnorm(x, n.weight, c.rmsNormEps);
    case 'rms1p': return rmsnorm(x, add(n.weight, onesOf(n.weight.size)), c.rmsNormEps);
    case 'layernorm': return layernorm(x, n.weight, n.bias, c.rmsNormEps);
  }
}

/** A norm over each head of x [rows, heads·D] (Qwen3 / Gemma 3 q_norm, k_norm; weight [D]). */
export function headNorm(model: CausalLM, n: Norm, x: Tensor, heads: number): Tensor {
  const D = x.cols / heads;
  return applyNorm(model, n, x.view([x.rows * heads, D])).view([x.rows, heads * D]);
}

/**
 * Roles of a layer's linear modules that {@link attentionBlock} (q, k, v) and {@link gatedMlp}
 * (gate, up) run on the same input tensor — adapters may fuse products over such a group (LoRA's
 * A matrices). Only a grouping hint: a consumer must still check that the inputs are the same tensor.
 */
export const SHARED_INPUT_ROLES: readonly (readonly string[])[] = [['q', 'k', 'v'], ['gate', 'up']];

/**
 * Self-attention of normalised input h: q/k/v projections (roles q, k, v), optional per-head
 * q_norm/k_norm (before RoPE, as Qwen3 and Gemma 3), RoPE when the layer has it, attention with the
 * layer's window and the config's scale/soft-cap, and the output projection (role o).
 * Returns [rows, hidden] before the residual add.
 */
export function attentionBlock(model: CausalLM, layer: DecoderLayer, h: Tensor, env: BlockEnv): Tensor {
  const L = layer.linears;
  return attendQkv(model, layer, runLinear(L.q, h, env.ctx), runLinear(L.k, h, env.ctx), runLinear(L.v, h, env.ctx), env);
}

/**
 * The rest of the attention sub-block from projected q [rows, Hq·D], k, v [rows, Hkv·D] (separate
 * or split from a fused projection): q/k norms, RoPE (partial when the layer's rotaryDim < D),
 * attention, output projection (role o).
 */
export function attendQkv(model: CausalLM, layer: DecoderLayer, q: Tensor, k: Tensor, v: Tensor, env: BlockEnv): Tensor {
  const c = model.config;
  if (layer.norms.q_norm) q = headNorm(model, layer.norms.q_norm, q, c.numHeads);
  if (layer.norms.k_norm) k = headNorm(model, layer.norms.k_norm, k, c.numKvHeads);
  const table = env.table(layer);
  if (table) {
    const rd = layer.rope?.rotaryDim ?? c.headDim;
    q = rope(q, table, c.numHeads, c.headDim, rd);
    k = rope(k, table, c.numKvHeads, c.headDim, rd);
  }
  return runLinear(layer.linears.o, env.attend(layer, q, k, v), env.ctx);
}

/** Gated MLP: down(act(gate(h)) ⊙ up(h)), act = SiLU (SwiGLU) or GELU-tanh (GeGLU). */
export function gatedMlp(model: CausalLM, layer: DecoderLayer, h: Tensor, env: BlockEnv): Tensor {
  const L = layer.linears;
  const g = runLinear(L.gate, h, env.ctx);
  const u = runLinear(L.up, h, env.ctx);
  const a = model.config.hiddenAct === 'silu' ? swiglu(g, u) : mul(activation(g, 'gelu_tanh'), u);
  return runLinear(L.down, a, env.ctx);
}

/** Runs a layer's block hooks (bottleneck adapters) on a sub-block output. */
export function afterHooks(hooks: DecoderLayer['afterAttention'], y: Tensor, env: BlockEnv): Tensor {
  for (const hook of hooks) y = hook(y, env.ctx);
  return y;
}
