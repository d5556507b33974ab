/**
 * Loading a causal LM from a Hugging Face directory: config.json (parsed by the architecture's
 * family, see registry.ts), model.safetensors or a sharded checkpoint (model.safetensors.index.json),
 * F32/F16/BF16 tensors. The family's module map names every expected tensor and its shape; a
 * missing tensor, a shape mismatch or a left-over tensor is a PeftError naming the tensor, the
 * expected and the found shape.
 */
import { PeftError } from '../errors.js';
import { readModelWeights, toFloat32, type TensorEntry } from '../io/safetensors.js';
import { f32Weight, Tensor, type Weight } from '../tensor/index.js';
import { ropeInvFreq, type ModelConfig, type RopeConfig } from './config.js';
import type { CausalLM, DecoderLayer, EmbeddingTable, LayerRope, LinearModule, LinearSpec, Norm, NormSpec } from './model.js';
import { familyOf, loadConfig } from './registry.js';

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

/** [rows, cols] row-major → [cols, rows] (GPT-2 Conv1D weights are stored [in, out]). */
function transposeEntry(e: TensorEntry): TensorEntry {
  const [R, C] = e.shape;
  const size = e.dtype === 'F64' ? 8 : e.dtype === 'F32' ? 4 : 2;
  const src = e.data, out = new Uint8Array(src.length);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out.set(src.subarray((r * C + c) * size, (r * C + c + 1) * size), (c * R + r) * size);
  return { ...e, shape: [C, R], data: out };
}

function linearModule(weights: Weights, spec: LinearSpec, dir: string, opts: LoadOptions): LinearModule {
  const { name, outFeatures: out, inFeatures: inp } = spec;
  const fifo = spec.fanInFanOut ?? false;
  const e = fifo ? transposeEntry(take(weights, `${name}.weight`, [inp, out], dir)) : take(weights, `${name}.weight`, [out, inp], dir);
  let weight = weightOf(e, opts);
  if (opts.weightTransform) weight = opts.weightTransform(name, weight);
  const b = spec.bias ? f32Tensor(take(weights, `${name}.bias`, [out], dir)) : null;
  return { name, inFeatures: inp, outFeatures: out, weight, bias: b, fanInFanOut: fifo, pre: [], post: [] };
}

function norm(weights: Weights, spec: NormSpec, dir: string): Norm {
  return {
    name: spec.name,
    weight: f32Tensor(take(weights, `${spec.name}.weight`, [spec.size], dir)),
    bias: spec.bias ? f32Tensor(take(weights, `${spec.name}.bias`, [spec.size], dir)) : null,
  };
}

/** Builds a model from a validated config and its weights map (consumed), following the family's module map. */
export function buildModel(config: ModelConfig, weights: Weights, dir: string, opts: LoadOptions = {}): CausalLM {
  const c = config;
  const family = familyOf(c.architecture, dir);
  const map = family.moduleMap(c);
  family.sanitize?.(weights as Map<string, unknown>);
  const H = c.hiddenSize, V = c.vocabSize;
  const embE = take(weights, `${map.embed}.weight`, [V, H], dir);
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
  const embedPositions = map.positions
    ? { name: map.positions.name, weight: f32Tensor(take(weights, `${map.positions.name}.weight`, [map.positions.count, H], dir)), bias: null }
    : null;
  // one LayerRope per distinct RoPE configuration (one table per forward)
  const ropes = new Map<string, LayerRope>();
  const ropeOf = (r: RopeConfig | null): LayerRope | null => {
    if (!r) return null;
    const key = JSON.stringify(r);
    let lr = ropes.get(key);
    if (!lr) ropes.set(key, (lr = ropeInvFreq(r, c.headDim)));
    return lr;
  };
  const layers: DecoderLayer[] = map.layers.map((spec, i) => ({
    index: i,
    norms: Object.fromEntries(spec.norms.map((n) => [n.role, norm(weights, n, dir)])),
    linears: Object.fromEntries(spec.linears.map((l) => [l.role, linearModule(weights, l, dir, opts)])),
    rope: ropeOf(c.layers[i].rope),
    window: c.layers[i].window,
    afterAttention: [],
    afterMlp: [],
    prefix: null,
  }));
  const finalNorm = norm(weights, map.finalNorm, dir);
  let lmHead: LinearModule;
  if (c.tieWordEmbeddings) {
    weights.delete(`${map.lmHead}.weight`); // some checkpoints store the tied copy too
    lmHead = { name: map.lmHead, inFeatures: H, outFeatures: V, weight: embedWeight, bias: null, fanInFanOut: false, pre: [], post: [] };
  } else {
    lmHead = linearModule(weights, { role: 'lm_head', name: map.lmHead, inFeatures: H, outFeatures: V, bias: false }, dir, { ...opts, weightTransform: undefined });
  }
  if (weights.size > 0) {
    const names = [...weights.keys()];
    throw new PeftError('unexpected tensors in checkpoint', { file: dir, field: names.slice(0, 5).join(', ') + (names.length > 5 ? `, … (${names.length} in all)` : ''), expected: `only the tensors of ${c.architecture}` });
  }
  return { config: c, family, dir, embedName: map.embed, embedTokens, embedPositions, layers, norm: finalNorm, lmHead, inputHooks: [] };
}
/** Loads a causal LM from a Hugging Face model directory. */
export function loadModel(dir: string, opts: LoadOptions = {}): CausalLM {
  const config = loadConfig(dir);
  // per-tensor reads: the peak is the model itself, not the file plus a copy
  const weights = readModelWeights(dir, { lazy: true });
  return buildModel(config, weights, dir, opts);
}
