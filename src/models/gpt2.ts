/**
 * GPT-2 family: GPT2LMHeadModel, as transformers' `models/gpt2/modeling_gpt2.py`: learned absolute
 * position embeddings (`transformer.wpe`, added to the token embeddings), pre-norm blocks with
 * LayerNorm (weight and bias, `layer_norm_epsilon`), fused `attn.c_attn` [hidden → 3·hidden] split
 * into q, k, v (no RoPE, multi-head attention, scale 1/√head_dim), `attn.c_proj`, an MLP
 * `mlp.c_proj(gelu_new(mlp.c_fc(h)))` (`gelu_new` = the tanh approximation), final `transformer.ln_f`,
 * lm_head tied to `transformer.wte`.
 *
 * GPT-2's linear layers are `Conv1D`, whose weights the checkpoint stores [in, out]: they are
 * transposed to [out, in] on load and back on save (`fanInFanOut` in the module map), so LoRA's
 * A [r, in] and B [out, r] (PEFT's shapes for Conv1D too) and its merge/unmerge work on the
 * [out, in] weight like any other; adapters record `fan_in_fan_out: true`, as PEFT sets it.
 * Checkpoints saved without the `transformer.` prefix (the original `gpt2` files) are renamed, and
 * the `attn.bias` / `attn.masked_bias` causal-mask buffers of old checkpoints dropped.
 */
import { PeftError } from '../errors.js';
import { activation, add, splitCols, type Tensor } from '../tensor/index.js';
import { ConfigReader, parseCommon, type Json, type ModelConfig } from './config.js';
import { afterHooks, applyNorm } from './layers.js';
import type { BlockEnv, CausalLM, DecoderLayer, Family, LinearSpec, ModuleMap, NormSpec } from './model.js';
import { runLinear } from './model.js';

function parseGpt2(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  const act = r.str('activation_function', 'gelu_new');
  if (act !== 'gelu_new' && act !== 'gelu_pytorch_tanh')
    throw new PeftError('unsupported activation for GPT-2', { file: r.file, field: 'activation_function', expected: 'gelu_new (the tanh approximation)', found: JSON.stringify(act) });
  if (r.bool('scale_attn_by_inverse_layer_idx', false))
    throw new PeftError('unsupported GPT-2 option', { file: r.file, field: 'scale_attn_by_inverse_layer_idx', expected: 'false', found: 'true' });
  if (!r.bool('scale_attn_weights', true))
    throw new PeftError('unsupported GPT-2 option', { file: r.file, field: 'scale_attn_weights', expected: 'true', found: 'false' });
  if (r.bool('add_cross_attention', false))
    throw new PeftError('unsupported GPT-2 option', { file: r.file, field: 'add_cross_attention', expected: 'false', found: 'true' });
  const H = r.int('n_embd');
  // GPT2Config's attribute_map, read through the shared reader (errors still name GPT-2's keys' values)
  const common = new ConfigReader({
    ...r.raw,
    hidden_size: H,
    num_attention_heads: r.int('n_head'),
    num_key_value_heads: r.raw.n_head,
    num_hidden_layers: r.int('n_layer'),
    intermediate_size: r.int('n_inner', 4 * H),
    max_position_embeddings: r.int('n_positions', 1024),
    rms_norm_eps: r.num('layer_norm_epsilon', 1e-5, true),
    tie_word_embeddings: r.bool('tie_word_embeddings', true),
    hidden_act: 'gelu_pytorch_tanh', head_dim: null, rope_parameters: null, rope_scaling: null,
  }, r.file);
  const c = parseCommon(common, architecture, gen);
  c.raw = r.raw;
  c.normKind = 'layernorm';
  c.layers = c.layers.map(() => ({ rope: null, window: null }));
  return c;
}

function gpt2ModuleMap(c: ModelConfig): ModuleMap {
  const H = c.hiddenSize, I = c.intermediateSize;
  const layers = Array.from({ length: c.numLayers }, (_, i) => {
    const p = `transformer.h.${i}`;
    const lin = (role: string, path: string, out: number, inp: number): LinearSpec =>
      ({ role, name: `${p}.${path}`, inFeatures: inp, outFeatures: out, bias: true, fanInFanOut: true });
    const norm = (role: string): NormSpec => ({ role, name: `${p}.${role}`, size: H, bias: true });
    return {
      norms: [norm('ln_1'), norm('ln_2')],
      linears: [lin('qkv', 'attn.c_attn', 3 * H, H), lin('o', 'attn.c_proj', H, H), lin('fc', 'mlp.c_fc', I, H), lin('proj', 'mlp.c_proj', H, I)],
    };
  });
  return {
    embed: 'transformer.wte', positions: { name: 'transformer.wpe', count: c.maxPositionEmbeddings }, layers,
    finalNorm: { role: 'norm', name: 'transformer.ln_f', size: H, bias: true }, lmHead: 'lm_head',
  };
}

/** GPT2Block: x + c_proj(attn(split(c_attn(ln_1(x))))), then + mlp.c_proj(gelu_new(c_fc(ln_2(x)))). */
function gpt2Block(model: CausalLM, layer: DecoderLayer, x: Tensor, env: BlockEnv): Tensor {
  const c = model.config, L = layer.linears, H = c.hiddenSize;
  const [q, k, v] = splitCols(runLinear(L.qkv, applyNorm(model, layer.norms.ln_1, x), env.ctx), [H, H, H]);
  const a = runLinear(L.o, env.attend(layer, q, k, v), env.ctx);
  x = add(x, afterHooks(layer.afterAttention, a, env));
  const h = activation(runLinear(L.fc, applyNorm(model, layer.norms.ln_2, x), env.ctx), 'gelu_tanh');
  return add(x, afterHooks(layer.afterMlp, runLinear(L.proj, h, env.ctx), env));
}

/** Old checkpoints: no `transformer.` prefix, causal-mask buffers stored as tensors. */
function sanitizeGpt2(weights: Map<string, unknown>): void {
  for (const name of [...weights.keys()]) {
    if (/\.attn\.(masked_)?bias$/.test(name)) {
      weights.delete(name);
      continue;
    }
    if (/^(wte|wpe|ln_f|h\.\d+)\./.test(name)) {
      weights.set(`transformer.${name}`, weights.get(name));
      weights.delete(name);
    }
  }
}

export const gpt2Family: Family = {
  name: 'gpt2',
  architectures: ['GPT2LMHeadModel'],
  parseConfig: parseGpt2,
  moduleMap: gpt2ModuleMap,
  block: gpt2Block,
  sanitize: sanitizeGpt2,
  // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING / IA3 mappings for gpt2
  peft: { lora: ['c_attn'], ia3: ['c_attn', 'mlp.c_proj'], ia3Feedforward: ['mlp.c_proj'] },
  gguf: () => ({
    refused: 'GPT-2 LoRA adapters are not exported to GGUF: llama.cpp\'s converter transposes GPT-2\'s Conv1D weights, and this exporter does not map LoRA factors through that transpose (merge the adapter with `peft merge` and convert the merged model instead)',
  }),
};
