/**
 * Gemma family: Gemma2ForCausalLM and Gemma3ForCausalLM (text-only Gemma 3, model_type
 * `gemma3_text`), as transformers' `models/gemma2/modeling_gemma2.py` and
 * `models/gemma3/modeling_gemma3.py`:
 * - embeddings multiplied by √hidden_size (`Gemma2TextScaledWordEmbedding`, the scale rounded to float32);
 * - (1 + w) RMSNorm everywhere (`Gemma2RMSNorm`), sandwich norms: input → attn → post_attention,
 *   pre_feedforward → mlp → post_feedforward, each output normalised before its residual add;
 * - GeGLU MLP with `gelu_pytorch_tanh`;
 * - attention scale `query_pre_attn_scalar`^−½; Gemma 2 soft-caps attention logits
 *   (`attn_logit_softcapping`), both may soft-cap final logits (`final_logit_softcapping`);
 * - interleaved sliding-window / global layers (`layer_types`; 4.x: Gemma 2 every other layer,
 *   Gemma 3 `sliding_window_pattern`), Gemma 3 with separate RoPE bases for local and global layers
 *   (`rope_parameters.{sliding_attention,full_attention}`; 4.x: `rope_local_base_freq` and
 *   `rope_theta` + `rope_scaling`) and per-head q_norm/k_norm.
 */
import { PeftError } from '../errors.js';
import { add, type Tensor } from '../tensor/index.js';
import { ConfigReader, layerTypes, parseCommon, parseRope, type Json, type ModelConfig, type RopeConfig } from './config.js';
import { afterHooks, applyNorm, attentionBlock, gatedMlp } from './layers.js';
import { dropRotaryBuffers, GGUF_TENSORS, llamaModuleMap } from './llama.js';
import type { BlockEnv, CausalLM, DecoderLayer, Family, NormSpec } from './model.js';

function parseGemma(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  const gemma3 = architecture === 'Gemma3ForCausalLM';
  const c = parseCommon(r, architecture, gen, { hiddenAct: 'gelu_pytorch_tanh', tie: true });
  if (r.has('hidden_activation')) c.hiddenAct = r.oneOf('hidden_activation', ['gelu_pytorch_tanh'] as const, 'gelu_pytorch_tanh');
  else if (r.has('hidden_act') && c.hiddenAct !== 'gelu_pytorch_tanh')
    throw new PeftError('unsupported activation', { file: r.file, field: 'hidden_act', expected: 'gelu_pytorch_tanh', found: JSON.stringify(r.raw.hidden_act) });
  if (r.bool('use_bidirectional_attention', false))
    throw new PeftError('bidirectional Gemma (embedding models) is not a causal LM', { file: r.file, field: 'use_bidirectional_attention', expected: 'false', found: 'true' });
  c.normKind = 'rms1p';
  c.qkNorm = gemma3;
  c.embedScale = Math.fround(Math.sqrt(c.hiddenSize));
  c.attnScale = Math.pow(r.num('query_pre_attn_scalar', 256, true), -0.5);
  c.attnSoftcap = r.optNum('attn_logit_softcapping', true);
  c.finalSoftcap = r.optNum('final_logit_softcapping', true);
  const sw = r.optInt('sliding_window');
  const n = c.numLayers;
  const pattern = gemma3 ? r.int('sliding_window_pattern', 6) : 2;
  const types = layerTypes(r, n) ?? Array.from({ length: n }, (_, i) => ((i + 1) % pattern !== 0 ? 'sliding_attention' : 'full_attention'));
  let local: RopeConfig = c.rope, global: RopeConfig = c.rope;
  if (gemma3) {
    const params = r.object('rope_parameters');
    const nested = params && (params.has('full_attention') || params.has('sliding_attention'));
    if (nested) {
      global = params.has('full_attention') ? parseRope(params, 'full_attention', 1_000_000) : parseRope(new ConfigReader({}, r.file), 'rope_parameters', 1_000_000);
      local = params.has('sliding_attention') ? parseRope(params, 'sliding_attention', 10_000) : parseRope(new ConfigReader({}, r.file), 'rope_parameters', 10_000);
    } else {
      global = parseRope(r, 'rope_parameters', 1_000_000);
      local = { ...parseRope(new ConfigReader({}, r.file), 'rope_parameters'), theta: r.num('rope_local_base_freq', 10_000, true) };
    }
    c.rope = global;
  }
  c.slidingWindow = sw;
  c.layers = types.map((t) => (t === 'sliding_attention' ? { rope: local, window: sw } : { rope: global, window: null }));
  return c;
}

const sandwich = (i: number, H: number): NormSpec[] => [
  { role: 'pre_feedforward_layernorm', name: `model.layers.${i}.pre_feedforward_layernorm`, size: H, bias: false },
  { role: 'post_feedforward_layernorm', name: `model.layers.${i}.post_feedforward_layernorm`, size: H, bias: false },
];

/** Gemma2DecoderLayer / Gemma3DecoderLayer: every sub-block output is normalised before its residual add. */
function gemmaBlock(model: CausalLM, layer: DecoderLayer, x: Tensor, env: BlockEnv): Tensor {
  const n = layer.norms;
  let a = attentionBlock(model, layer, applyNorm(model, n.input_layernorm, x), env);
  a = applyNorm(model, n.post_attention_layernorm, a);
  x = add(x, afterHooks(layer.afterAttention, a, env));
  let d = gatedMlp(model, layer, applyNorm(model, n.pre_feedforward_layernorm, x), env);
  d = applyNorm(model, n.post_feedforward_layernorm, d);
  return add(x, afterHooks(layer.afterMlp, d, env));
}

export const gemmaFamily: Family = {
  name: 'gemma',
  architectures: ['Gemma2ForCausalLM', 'Gemma3ForCausalLM'],
  parseConfig: parseGemma,
  moduleMap: (c) => llamaModuleMap(c, (i) => sandwich(i, c.hiddenSize)),
  block: gemmaBlock,
  sanitize: dropRotaryBuffers,
  peft: { lora: ['q_proj', 'v_proj'], ia3: ['q_proj', 'v_proj', 'down_proj'], ia3Feedforward: ['down_proj'] },
  gguf: (c) => ({ arch: c.architecture === 'Gemma3ForCausalLM' ? 'gemma3' : 'gemma2', permuteQK: false, tensors: GGUF_TENSORS }),
};
