/**
 * Loading a Llama-family model from a Hugging Face directory: config.json, model.safetensors or a
 * sharded checkpoint (model.safetensors.index.json), F32/F16/BF16 tensors. Every expected tensor
 * is checked against the config; a missing tensor or a shape mismatch is a PeftError naming the
 * tensor, the expected and the found shape.
 */
import { PeftError } from '../errors.js';
import { readModelWeights, toFloat32, type TensorEntry } from '../io/safetensors.js';
import { f32Weight, Tensor, type Weight } from '../tensor/index.js';
import { loadConfig, ropeInvFreq, type ModelConfig } from './config.js';
import type { CausalLM, DecoderLayer, EmbeddingTable, LinearModule } from './llama.js';

export interface LoadOptions {
  /**
   * Storage of linear and embedding weights: 'auto' keeps BF16 checkpoints in bfloat16 (converted
   * inside the GEMM) and everything else float32; 'float32' widens all. Norms are always float32.
   */
  dtype?: 'auto' | 'float32';
  /** Load every linear weight frozen-quantized (QLoRA base); applied by quantizeModel in quant/. */
  weightTransform?: (name: string, w: Weight) => Weight;
}

type Weights = Map<string, TensorEntry>;

function take(weights: Weights, name: string, shape: number[], dir: string): TensorEntry {
  const e = weights.get(name);
  if (!e) throw new PeftError('missing tensor', { file: dir, field: name, expected: `a tensor of shape [${shape}]`, found: 'nothing' });
  if (e.shape.length !== shape.length || e.shape.some((d, i) => d !== shape[i]))
    throw new PeftError('tensor shape does not match config.json', { file: e.file, field: name, expected: `[${shape}]`, found: `[${e.shape}]` });
  if (e.dtype !== 'F32' && e.dtype !== 'F16' && e.dtype !== 'BF16' && e.dtype !== 'F64')
    throw new PeftError('unsupported dtype for a weight', { file: e.file, field: name, expected: 'F32, F16 or BF16', found: e.dtype });
  weights.delete(name);
  return e;
}

function f32Tensor(e: TensorEntry, requiresGrad = false): Tensor {
  // a view into a larger buffer (a whole file read at once) is copied, so the model owns exactly its memory
  const data = toFloat32(e);
  const shared = data.buffer === e.data.buffer && data.byteLength !== data.buffer.byteLength;
  return Tensor.param(shared ? data.slice() : data, e.shape, requiresGrad);
}

function weightOf(e: TensorEntry, opts: LoadOptions): Weight {
  if (e.dtype === 'BF16' && (opts.dtype ?? 'auto') === 'auto') {
    // a per-tensor (lazy) read is used as it is; a view into a whole file is copied, so the model owns exactly its memory
    const d = e.data, n = e.shape[0] * e.shape[1];
    const own = d.byteOffset === 0 && d.byteLength === d.buffer.byteLength;
    const bits = own ? new Uint16Array(d.buffer, 0, n) : new Uint16Array(n);
    if (!own) new Uint8Array(bits.buffer).set(d);
    return { rows: e.shape[0], cols: e.shape[1], data: { kind: 'bf16', bits } };
  }
  const t = f32Tensor(e);
  t.requiresGrad = false;
  return f32Weight(t);
}

function linearModule(weights: Weights, name: string, out: number, inp: number, bias: boolean, dir: string, opts: LoadOptions): LinearModule {
  let weight = weightOf(take(weights, `${name}.weight`, [out, inp], dir), opts);
  if (opts.weightTransform) weight = opts.weightTransform(name, weight);
  const b = bias ? f32Tensor(take(weights, `${name}.bias`, [out], dir)) : null;
  return { name, inFeatures: inp, outFeatures: out, weight, bias: b, pre: [], post: [] };
}

/** Builds a model from a validated config and its weights map (consumed). */
export function buildModel(config: ModelConfig, weights: Weights, dir: string, opts: LoadOptions = {}): CausalLM {
  const c = config;
  const H = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize;
  const qOut = c.numHeads * c.headDim, kvOut = c.numKvHeads * c.headDim;
  const embE = take(weights, 'model.embed_tokens.weight', [V, H], dir);
  let embedTokens: EmbeddingTable;
  let embedWeight: Weight;
  if (embE.dtype === 'BF16' && (opts.dtype ?? 'auto') === 'auto') {
    const w = weightOf(embE, opts);
    embedTokens = { kind: 'bf16', bits: (w.data as { bits: Uint16Array }).bits, shape: [V, H] };
    embedWeight = w;
  } else {
    const t = f32Tensor(embE);
    embedTokens = { kind: 'f32', tensor: t };
    embedWeight = f32Weight(t);
  }
  const layers: DecoderLayer[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `model.layers.${i}`;
    layers.push({
      index: i,
      inputLayernorm: f32Tensor(take(weights, `${p}.input_layernorm.weight`, [H], dir)),
      postAttentionLayernorm: f32Tensor(take(weights, `${p}.post_attention_layernorm.weight`, [H], dir)),
      q: linearModule(weights, `${p}.self_attn.q_proj`, qOut, H, c.qkvBias, dir, opts),
      k: linearModule(weights, `${p}.self_attn.k_proj`, kvOut, H, c.qkvBias, dir, opts),
      v: linearModule(weights, `${p}.self_attn.v_proj`, kvOut, H, c.qkvBias, dir, opts),
      o: linearModule(weights, `${p}.self_attn.o_proj`, H, qOut, c.oBias, dir, opts),
      gate: linearModule(weights, `${p}.mlp.gate_proj`, I, H, c.mlpBias, dir, opts),
      up: linearModule(weights, `${p}.mlp.up_proj`, I, H, c.mlpBias, dir, opts),
      down: linearModule(weights, `${p}.mlp.down_proj`, H, I, c.mlpBias, dir, opts),
      afterAttention: [],
      afterMlp: [],
      prefix: null,
    });
  }
  const norm = f32Tensor(take(weights, 'model.norm.weight', [H], dir));
  let lmHead: LinearModule;
  if (c.tieWordEmbeddings) {
    weights.delete('lm_head.weight'); // some checkpoints store the tied copy too
    lmHead = { name: 'lm_head', inFeatures: H, outFeatures: V, weight: embedWeight, bias: null, pre: [], post: [] };
  } else {
    lmHead = linearModule(weights, 'lm_head', V, H, false, dir, { ...opts, weightTransform: undefined });
  }
  for (const name of weights.keys()) {
    if (/rotary_emb\.inv_freq$/.test(name)) weights.delete(name); // buffers some old checkpoints carry
  }
  if (weights.size > 0) {
    const names = [...weights.keys()];
    throw new PeftError('unexpected tensors in checkpoint', { file: dir, field: names.slice(0, 5).join(', ') + (names.length > 5 ? `, … (${names.length} in all)` : ''), expected: `only the tensors of ${c.architecture}` });
  }
  const { invFreq, attentionScaling } = ropeInvFreq(c.rope, c.headDim);
  return { config: c, dir, embedTokens, layers, norm, lmHead, invFreq, attentionScaling, inputHooks: [] };
}

/** Loads a causal LM from a Hugging Face model directory. */
export function loadModel(dir: string, opts: LoadOptions = {}): CausalLM {
  const config = loadConfig(dir);
  // per-tensor reads: the peak is the model itself, not the file plus a copy
  const weights = readModelWeights(dir, { lazy: true });
  return buildModel(config, weights, dir, opts);
}
