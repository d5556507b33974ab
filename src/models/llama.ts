/**
 * Llama family: LlamaForCausalLM (Llama 2/3, TinyLlama, SmolLM/SmolLM2, stories260K,
 * TinyStories-656K) and MistralForCausalLM, as transformers' `models/llama/modeling_llama.py` and
 * `models/mistral/modeling_mistral.py`: pre-norm RMSNorm blocks, RoPE (default, linear, llama3),
 * grouped-query attention, SwiGLU MLP, optional q/k/v/o biases (`attention_bias`) and MLP biases
 * (`mlp_bias`), tied or untied embeddings. Mistral's `sliding_window` applies to every layer.
 *
 * Also exports the Llama weight layout and pre-norm block that the Qwen and SmolLM3 families reuse.
 */
import { add, type Tensor } from '../tensor/index.js';
import { ConfigReader, parseCommon, type Json, type ModelConfig } from './config.js';
import { afterHooks, applyNorm, attentionBlock, gatedMlp } from './layers.js';
import type { BlockEnv, CausalLM, DecoderLayer, Family, LinearSpec, ModuleMap, NormSpec } from './model.js';

/**
 * The Llama weight-name map: `model.embed_tokens`, per layer `self_attn.{q,k,v,o}_proj`,
 * `mlp.{gate,up,down}_proj`, `input_layernorm`, `post_attention_layernorm` (plus
 * `self_attn.{q,k}_norm` [head_dim] when `qkNorm`, Qwen3), `model.norm`, `lm_head`.
 */
export function llamaModuleMap(c: ModelConfig, extraNorms: (i: number) => NormSpec[] = () => []): ModuleMap {
  const H = c.hiddenSize, I = c.intermediateSize;
  const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
  const layers = Array.from({ length: c.numLayers }, (_, i) => {
    const p = `model.layers.${i}`;
    const lin = (role: string, path: string, out: number, inp: number, bias: boolean): LinearSpec =>
      ({ role, name: `${p}.${path}`, inFeatures: inp, outFeatures: out, bias });
    const norm = (role: string, path: string, size: number): NormSpec => ({ role, name: `${p}.${path}`, size, bias: false });
    const norms = [norm('input_layernorm', 'input_layernorm', H), norm('post_attention_layernorm', 'post_attention_layernorm', H), ...extraNorms(i)];
    if (c.qkNorm) norms.push(norm('q_norm', 'self_attn.q_norm', c.headDim), norm('k_norm', 'self_attn.k_norm', c.headDim));
    return {
      norms,
      linears: [
        lin('q', 'self_attn.q_proj', qOut, H, c.qkvBias),
        lin('k', 'self_attn.k_proj', kvOut, H, c.qkvBias),
        lin('v', 'self_attn.v_proj', kvOut, H, c.qkvBias),
        lin('o', 'self_attn.o_proj', H, qOut, c.oBias),
        lin('gate', 'mlp.gate_proj', I, H, c.mlpBias),
        lin('up', 'mlp.up_proj', I, H, c.mlpBias),
        lin('down', 'mlp.down_proj', H, I, c.mlpBias),
      ],
    };
  });
  return { embed: 'model.embed_tokens', layers, finalNorm: { role: 'norm', name: 'model.norm', size: H, bias: false }, lmHead: 'lm_head' };
}

/** Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)) (LlamaDecoderLayer). */
export function preNormBlock(model: CausalLM, layer: DecoderLayer, x: Tensor, env: BlockEnv): Tensor {
  const a = attentionBlock(model, layer, applyNorm(model, layer.norms.input_layernorm, x), env);
  x = add(x, afterHooks(layer.afterAttention, a, env));
  const d = gatedMlp(model, layer, applyNorm(model, layer.norms.post_attention_layernorm, x), env);
  return add(x, afterHooks(layer.afterMlp, d, env));
}

/** Drops the `rotary_emb.inv_freq` buffers some old checkpoints carry. */
export function dropRotaryBuffers(weights: Map<string, unknown>): void {
  for (const name of [...weights.keys()]) if (/rotary_emb\.inv_freq$/.test(name)) weights.delete(name);
}

/** llama.cpp tensor names by role (convert_hf_to_gguf.py / gguf-py tensor_mapping.py). */
export const GGUF_TENSORS: Record<string, string> = {
  q: 'attn_q', k: 'attn_k', v: 'attn_v', o: 'attn_output', gate: 'ffn_gate', up: 'ffn_up', down: 'ffn_down',
};

/** A config.json `sliding_window` value: a window (>= 1) or null. */
export function slidingWindowOf(r: ConfigReader): number | null {
  return r.optInt('sliding_window');
}

function parseLlama(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  const c = parseCommon(r, architecture, gen);
  if (architecture === 'MistralForCausalLM') {
    const w = slidingWindowOf(r);
    c.slidingWindow = w;
    c.layers = c.layers.map((l) => ({ ...l, window: w }));
  }
  // LlamaForCausalLM ignores sliding_window, as transformers does
  return c;
}

export const llamaFamily: Family = {
  name: 'llama',
  architectures: ['LlamaForCausalLM', 'MistralForCausalLM'],
  parseConfig: parseLlama,
  moduleMap: (c) => llamaModuleMap(c),
  block: preNormBlock,
  sanitize: dropRotaryBuffers,
  peft: { lora: ['q_proj', 'v_proj'], ia3: ['k_proj', 'v_proj', 'down_proj'], ia3Feedforward: ['down_proj'] },
  gguf: () => ({ arch: 'llama', permuteQK: true, tensors: GGUF_TENSORS }),
};
