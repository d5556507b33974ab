/**
 * Randomly initialised Llama models for the benchmarks (deterministic LCG, uniform with std 0.02,
 * norms 1): the SmolLM2-135M shape (`smol`) and the stories260K shape (`stories`).
 */
import { parseConfig } from '../src/models/registry.js';
import { buildModel } from '../src/models/load.js';
import type { TensorEntry } from '../src/io/safetensors.js';

export const SHAPES: Record<string, Record<string, unknown>> = {
  smol: { hidden_size: 576, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, intermediate_size: 1536, vocab_size: 49152, tie_word_embeddings: true },
  stories: { hidden_size: 64, num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, intermediate_size: 172, vocab_size: 512, tie_word_embeddings: true },
};

export function randomModel(shape: Record<string, unknown>) {
  const raw = { architectures: ['LlamaForCausalLM'], model_type: 'llama', rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 2048, hidden_act: 'silu', ...shape };
  const c = parseConfig(raw, 'bench config');
  const H = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  let s = 12345;
  const rnd = (n: number, std: number, one = false): Uint8Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s = (s * 1664525 + 1013904223) >>> 0;
      a[i] = one ? 1 : ((s / 2 ** 32) * 2 - 1) * std * 1.732;
    }
    return new Uint8Array(a.buffer);
  };
  const w = new Map<string, TensorEntry>();
  const add = (name: string, shapeT: number[], one = false): void => {
    w.set(name, { name, dtype: 'F32', shape: shapeT, data: rnd(shapeT.reduce((a, b) => a * b, 1), 0.02, one), file: 'random' });
  };
  add('model.embed_tokens.weight', [V, H]);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H], true);
    add(`${p}.post_attention_layernorm.weight`, [H], true);
    add(`${p}.self_attn.q_proj.weight`, [q, H]);
    add(`${p}.self_attn.k_proj.weight`, [kv, H]);
    add(`${p}.self_attn.v_proj.weight`, [kv, H]);
    add(`${p}.self_attn.o_proj.weight`, [H, q]);
    add(`${p}.mlp.gate_proj.weight`, [I, H]);
    add(`${p}.mlp.up_proj.weight`, [I, H]);
    add(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  add('model.norm.weight', [H], true);
  return buildModel(c, w, '');
}

