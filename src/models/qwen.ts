/**
 * Qwen family: Qwen2ForCausalLM (Qwen2, Qwen2.5) and Qwen3ForCausalLM, as transformers'
 * `models/qwen2/modeling_qwen2.py` and `models/qwen3/modeling_qwen3.py`: the Llama block with
 * q/k/v biases (Qwen2) or `attention_bias` plus per-head RMSNorm of q and k before RoPE
 * (Qwen3, `self_attn.q_norm`/`k_norm` [head_dim], explicit `head_dim`), and sliding-window
 * attention on the layers `layer_types` marks `sliding_attention` (4.x configs: layers
 * >= `max_window_layers` when `use_sliding_window`).
 */
import { ConfigReader, layerTypes, parseCommon, type Json, type ModelConfig } from './config.js';
import { dropRotaryBuffers, GGUF_TENSORS, llamaModuleMap, preNormBlock } from './llama.js';
import type { Family } from './model.js';

/**
 * Which layers use the sliding window (transformers' Qwen2Config/Qwen3Config `__post_init__`):
 * `sliding_window` counts only when `use_sliding_window`; `layer_types` when given, else layers
 * i >= `max_window_layers`.
 */
export function qwenWindows(r: ConfigReader, c: ModelConfig): void {
  const use = r.bool('use_sliding_window', false);
  const sw = r.optInt('sliding_window');
  const w = use ? sw : null;
  const maxWindowLayers = r.int('max_window_layers', 28, 0);
  const types = layerTypes(r, c.numLayers)
    ?? Array.from({ length: c.numLayers }, (_, i) => (w !== null && i >= maxWindowLayers ? 'sliding_attention' : 'full_attention'));
  c.slidingWindow = w;
  c.layers = c.layers.map((l, i) => ({ ...l, window: types[i] === 'sliding_attention' ? w : null }));
}

function parseQwen(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  const c = parseCommon(r, architecture, gen);
  if (architecture === 'Qwen2ForCausalLM') {
    c.qkvBias = true;
    c.oBias = false;
  } else {
    c.qkNorm = true;
  }
  qwenWindows(r, c);
  return c;
}

export const qwenFamily: Family = {
  name: 'qwen',
  architectures: ['Qwen2ForCausalLM', 'Qwen3ForCausalLM'],
  parseConfig: parseQwen,
  moduleMap: (c) => llamaModuleMap(c),
  block: preNormBlock,
  sanitize: dropRotaryBuffers,
  peft: { lora: ['q_proj', 'v_proj'], ia3: ['q_proj', 'v_proj', 'down_proj'], ia3Feedforward: ['down_proj'] },
  // llama.cpp's qwen2/qwen3 converters do not permute q/k
  gguf: (c) => ({ arch: c.architecture === 'Qwen3ForCausalLM' ? 'qwen3' : 'qwen2', permuteQK: false, tensors: GGUF_TENSORS }),
};
