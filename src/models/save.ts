/**
 * Writing a model as a Hugging Face directory (config.json, model.safetensors, tokenizer files),
 * which transformers loads with `from_pretrained`: used for merged LoRA models and full
 * fine-tuning results. Weights are written as float32 (bfloat16/4-bit storage is widened).
 */
import { copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { moveFilesInto, writeJsonAtomic } from '../io/atomic.js';
import { writeSafetensorsFile, type TensorToWrite } from '../io/safetensors.js';
import { weightToF32 } from '../tensor/index.js';
import { layerLinears, type CausalLM, type LinearModule, type Norm } from './model.js';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'generation_config.json', 'chat_template.jinja'];

/** [rows, cols] → [cols, rows] float32. */
function transposed(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

/** The model's tensors under their HF names, as float32, in module-map order (Conv1D weights back to [in, out]). */
export function modelTensors(model: CausalLM): TensorToWrite[] {
  const out: TensorToWrite[] = [];
  const e = model.embedTokens;
  const embed = e.kind === 'f32' ? e.tensor.data : weightToF32({ rows: e.shape[0], cols: e.shape[1], data: { kind: 'bf16', bits: e.bits } });
  out.push({ name: `${model.embedName}.weight`, dtype: 'F32', shape: [model.config.vocabSize, model.config.hiddenSize], data: embed });
  const norm = (n: Norm): void => {
    out.push({ name: `${n.name}.weight`, dtype: 'F32', shape: [...n.weight.shape], data: n.weight.data });
    if (n.bias) out.push({ name: `${n.name}.bias`, dtype: 'F32', shape: [...n.bias.shape], data: n.bias.data });
  };
  if (model.embedPositions) norm(model.embedPositions);
  const lin = (m: LinearModule): void => {
    const w = weightToF32(m.weight);
    if (m.fanInFanOut) out.push({ name: `${m.name}.weight`, dtype: 'F32', shape: [m.inFeatures, m.outFeatures], data: transposed(w, m.outFeatures, m.inFeatures) });
    else out.push({ name: `${m.name}.weight`, dtype: 'F32', shape: [m.outFeatures, m.inFeatures], data: w });
    if (m.bias) out.push({ name: `${m.name}.bias`, dtype: 'F32', shape: [m.outFeatures], data: m.bias.data });
  };
  for (const l of model.layers) {
    for (const n of Object.values(l.norms)) norm(n);
    for (const m of layerLinears(l)) lin(m);
  }
  norm(model.norm);
  if (!model.config.tieWordEmbeddings) lin(model.lmHead);
  return out;
}

/**
 * Writes `dir` as a complete HF model directory: every file is written into a temporary directory
 * first, then renamed into `dir` file by file, so each file appears whole and files already in
 * `dir` that the model does not write (logs, checkpoints) are kept. `configOverrides` are merged
 * into config.json (e.g. removing quantization_config).
 */
export function saveModelDir(model: CausalLM, dir: string, configOverrides: Record<string, unknown> = {}): void {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  const config: Record<string, unknown> = { ...model.config.raw, ...configOverrides, torch_dtype: 'float32', dtype: 'float32' };
  delete config.quantization_config;
  for (const [k, v] of Object.entries(configOverrides)) if (v === undefined) delete config[k];
  writeJsonAtomic(join(tmp, 'config.json'), config);
  writeSafetensorsFile(join(tmp, 'model.safetensors'), modelTensors(model), { format: 'pt' });
  if (model.dir) for (const f of TOKENIZER_FILES) if (existsSync(join(model.dir, f))) copyFileSync(join(model.dir, f), join(tmp, f));
  moveFilesInto(tmp, dir);
}
