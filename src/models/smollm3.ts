/**
 * SmolLM3 family: SmolLM3ForCausalLM, as transformers' `models/smollm3/modeling_smollm3.py`: the
 * Llama block and weights, but some layers skip RoPE (NoPE): `no_rope_layers[i]` = 1 means layer i
 * uses RoPE, 0 means it does not (default: every `no_rope_layer_interval`-th layer is NoPE), and
 * optional sliding windows on NoPE layers (`use_sliding_window`, `layer_types`).
 */
import { ConfigReader, layerTypes, parseCommon, type Json, type ModelConfig } from './config.js';
import { dropRotaryBuffers, GGUF_TENSORS, llamaModuleMap, preNormBlock } from './llama.js';
import type { Family } from './model.js';

function parseSmolLM3(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  const c = parseCommon(r, architecture, gen, { tie: true });
  const n = c.numLayers;
  const interval = r.int('no_rope_layer_interval', 4);
  const noRope = r.list('no_rope_layers', n, (v): v is number => v === 0 || v === 1, '0 or 1')
    ?? Array.from({ length: n }, (_, i) => ((i + 1) % interval !== 0 ? 1 : 0));
  const use = r.bool('use_sliding_window', false);
  const sw = r.optInt('sliding_window');
  const types = layerTypes(r, n)
    ?? noRope.map((hasRope) => (use && sw !== null && !hasRope ? 'sliding_attention' : 'full_attention'));
  c.slidingWindow = use ? sw : null;
  c.layers = c.layers.map((l, i) => ({
    rope: noRope[i] ? l.rope : null,
    window: use && sw !== null && types[i] === 'sliding_attention' ? sw : null,
  }));
  return c;
}

export const smollm3Family: Family = {
  name: 'smollm3',
  architectures: ['SmolLM3ForCausalLM'],
  parseConfig: parseSmolLM3,
  moduleMap: (c) => llamaModuleMap(c),
  block: preNormBlock,
  sanitize: dropRotaryBuffers,
  // PEFT has no SmolLM3 entry in its target-module mappings; these are the Llama ones it would need
  peft: { lora: ['q_proj', 'v_proj'], ia3: ['k_proj', 'v_proj', 'down_proj'], ia3Feedforward: ['down_proj'] },
  gguf: () => ({ arch: 'smollm3', permuteQK: true, tensors: GGUF_TENSORS }),
};
