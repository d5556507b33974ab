/**
 * Phi-3 family: Phi3ForCausalLM (Phi-3-mini/-small-style/-medium, Phi-3.5-mini, Phi-4-mini), as
 * transformers' `models/phi3/modeling_phi3.py`: the Llama pre-norm block with FUSED projections —
 * `self_attn.qkv_proj` [Hq·D + 2·Hkv·D, hidden] split into q, k, v, and `mlp.gate_up_proj`
 * [2·intermediate, hidden] chunked into gate, up (SwiGLU: up · silu(gate)) — partial rotary
 * (`partial_rotary_factor`: only the first factor·head_dim features of each head rotate, Phi-4-mini
 * 0.75), and LongRoPE (`rope_scaling` / `rope_parameters` type "longrope", older "su"): per-frequency
 * short/long divisors, the long ones for a forward whose max(position) + 1 exceeds
 * `original_max_position_embeddings`, cos/sin scaled by attention_factor =
 * √(1 + ln(factor)/ln(original)) with factor = max_position_embeddings / original (or the given
 * `factor` / `attention_factor`) — `modeling_rope_utils.py` `_compute_longrope_parameters` and
 * `longrope_frequency_update`. `sliding_window`, when set, applies to every layer.
 *
 * The fused modules are the PEFT targets (`qkv_proj`, `gate_up_proj`), as in HF PEFT; PEFT has no
 * default target modules for phi3 (so neither do we: target_modules must be given).
 */
import { PeftError } from '../errors.js';
import { add, splitCols, swiglu, type Tensor } from '../tensor/index.js';
import { ConfigReader, parseCommon, type Json, type ModelConfig, type RopeConfig } from './config.js';
import { afterHooks, applyNorm, attendQkv } from './layers.js';
import { dropRotaryBuffers } from './llama.js';
import type { BlockEnv, CausalLM, DecoderLayer, Family, LinearSpec, ModuleMap, NormSpec } from './model.js';
import { runLinear } from './model.js';

/** RoPE of a Phi-3 config: default or LongRoPE, with partial rotary. */
function parsePhi3Rope(r: ConfigReader, headDim: number, maxPos: number): RopeConfig {
  const params = r.object('rope_parameters') ?? r.object('rope_scaling');
  const p = params ?? new ConfigReader({}, r.file, 'rope_parameters');
  const theta = p.has('rope_theta') ? p.num('rope_theta', 0, true) : r.num('rope_theta', 10000, true);
  const typeKey = p.has('rope_type') ? 'rope_type' : 'type';
  let type = p.str(typeKey, 'default');
  if (type === 'su' || type === 'yarn') type = 'longrope'; // Phi3Config.convert_rope_params_to_dict renames both
  if (type !== 'default' && type !== 'longrope')
    throw new PeftError('unsupported RoPE scaling type for Phi-3', { file: r.file, field: `${p.prefix}.${typeKey}`, expected: 'default, longrope or su', found: JSON.stringify(type) });
  const prf = p.has('partial_rotary_factor') ? p.num('partial_rotary_factor', 1, true) : r.num('partial_rotary_factor', 1, true);
  // transformers: int(hidden_size // num_attention_heads * partial_rotary_factor)
  const rotaryDim = Math.floor(headDim * prf);
  if (rotaryDim < 2 || rotaryDim > headDim || rotaryDim % 2 !== 0)
    throw new PeftError('partial_rotary_factor gives an unusable rotary dimension', { file: r.file, field: 'partial_rotary_factor', expected: `a factor giving an even dimension in [2, ${headDim}]`, found: `${prf} (→ ${rotaryDim})` });
  const original = p.has('original_max_position_embeddings') ? p.num('original_max_position_embeddings', 0, true)
    : r.num('original_max_position_embeddings', maxPos, true);
  const cfg: RopeConfig = { theta, type, factor: 1, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: original, rotaryDim };
  if (type === 'longrope') {
    const n = rotaryDim / 2;
    const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0;
    const short = p.list('short_factor', n, isNum, 'positive numbers (one per rotary frequency)');
    const long = p.list('long_factor', n, isNum, 'positive numbers (one per rotary frequency)');
    if (!short || !long)
      throw new PeftError('missing field', { file: r.file, field: `${p.prefix}.${short ? 'long_factor' : 'short_factor'}`, expected: `a list of ${n} numbers for LongRoPE`, found: 'nothing' });
    const factor = p.has('factor') ? p.num('factor', 1, true) : maxPos / original;
    const attentionFactor = p.has('attention_factor') ? p.num('attention_factor', 1, true)
      : factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(original));
    cfg.factor = factor;
    cfg.longrope = { shortFactor: short, longFactor: long, attentionFactor };
  }
  return cfg;
}

function parsePhi3(r: ConfigReader, architecture: string, gen: Json): ModelConfig {
  // the shared reader knows default/linear/llama3 RoPE only: hand it a copy without the RoPE
  // objects and read Phi-3's (LongRoPE, partial rotary) here
  const raw = { ...r.raw, rope_parameters: null, rope_scaling: null };
  const c = parseCommon(new ConfigReader(raw, r.file), architecture, gen);
  c.raw = r.raw;
  if (c.hiddenAct !== 'silu')
    throw new PeftError('unsupported activation for Phi-3', { file: r.file, field: 'hidden_act', expected: 'silu', found: JSON.stringify(c.hiddenAct) });
  const rope = parsePhi3Rope(r, c.headDim, c.maxPositionEmbeddings);
  const window = r.optInt('sliding_window');
  c.rope = rope;
  c.slidingWindow = window;
  c.layers = c.layers.map(() => ({ rope, window }));
  return c;
}

function phi3ModuleMap(c: ModelConfig): ModuleMap {
  const H = c.hiddenSize, I = c.intermediateSize;
  const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
  const layers = Array.from({ length: c.numLayers }, (_, i) => {
    const p = `model.layers.${i}`;
    const lin = (role: string, path: string, out: number, inp: number): LinearSpec => ({ role, name: `${p}.${path}`, inFeatures: inp, outFeatures: out, bias: false });
    const norm = (role: string): NormSpec => ({ role, name: `${p}.${role}`, size: H, bias: false });
    return {
      norms: [norm('input_layernorm'), norm('post_attention_layernorm')],
      linears: [
        lin('qkv', 'self_attn.qkv_proj', qOut + 2 * kvOut, H),
        lin('o', 'self_attn.o_proj', H, qOut),
        lin('gate_up', 'mlp.gate_up_proj', 2 * I, H),
        lin('down', 'mlp.down_proj', H, I),
      ],
    };
  });
  return { embed: 'model.embed_tokens', layers, finalNorm: { role: 'norm', name: 'model.norm', size: H, bias: false }, lmHead: 'lm_head' };
}

/** Phi3DecoderLayer: x + attn(norm(x)) with the fused qkv split, then + down(up · silu(gate)) of norm(x). */
function phi3Block(model: CausalLM, layer: DecoderLayer, x: Tensor, env: BlockEnv): Tensor {
  const c = model.config, L = layer.linears;
  const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
  const [q, k, v] = splitCols(runLinear(L.qkv, applyNorm(model, layer.norms.input_layernorm, x), env.ctx), [qOut, kvOut, kvOut]);
  x = add(x, afterHooks(layer.afterAttention, attendQkv(model, layer, q, k, v, env), env));
  const [gate, up] = splitCols(runLinear(L.gate_up, applyNorm(model, layer.norms.post_attention_layernorm, x), env.ctx), [c.intermediateSize, c.intermediateSize]);
  const d = runLinear(L.down, swiglu(gate, up), env.ctx);
  return add(x, afterHooks(layer.afterMlp, d, env));
}

export const phi3Family: Family = {
  name: 'phi3',
  architectures: ['Phi3ForCausalLM'],
  parseConfig: parsePhi3,
  moduleMap: phi3ModuleMap,
  block: phi3Block,
  sanitize: dropRotaryBuffers,
  // PEFT's TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING have no phi3 entry: targets must be given
  peft: null,
  // llama.cpp's Phi3MiniModel: fused attn_qkv and ffn_up (gate_up), no q/k permutation
  gguf: () => ({ arch: 'phi3', permuteQK: false, tensors: { qkv: 'attn_qkv', o: 'attn_output', gate_up: 'ffn_up', down: 'ffn_down' } }),
};
