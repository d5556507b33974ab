/** `peft inspect`: a model's architecture, parameter counts and storage, and an adapter's summary. */
import { Command } from 'commander';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { linearModules, namedParameters } from '../models/model.js';
import { quantizationReport } from '../quant/quantize-model.js';
import { weightBytes } from '../tensor/index.js';
import { attachAdapterForInference } from './adapters.js';
import { openModelFor } from './model.js';
import { withConfigFile } from './options.js';

export function inspectCommand(): Command {
  const cmd = new Command('inspect')
    .description('show a model\'s architecture, parameter counts and storage, and an adapter\'s summary')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--adapter <dir>', 'PEFT adapter directory')
    .option('--quantize <type>', 'quantize the base linear weights on load (nf4 | fp4) and report the 4-bit figures')
    .option('--json', 'print JSON')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as { model?: string; adapter?: string; quantize?: string; json?: boolean };
    const { model, dir } = openModelFor(o.adapter, o.model, o.quantize);
    const c = model.config;
    let params = 0, bytes = 0;
    for (const p of namedParameters(model)) { params += p.tensor.size; bytes += p.tensor.data.byteLength; }
    for (const m of linearModules(model)) {
      if (m === model.lmHead && c.tieWordEmbeddings) continue;
      if (m.weight.data.kind !== 'f32') { params += m.inFeatures * m.outFeatures; bytes += weightBytes(m.weight); }
    }
    if (model.embedTokens.kind === 'bf16') { params += c.vocabSize * c.hiddenSize; bytes += model.embedTokens.bits.byteLength; }
    const q = linearModules(model).some((m) => m.weight.data.kind === 'q4') ? quantizationReport(model) : null;
    const info: Record<string, unknown> = {
      model: dir,
      architecture: c.architecture,
      layers: c.numLayers, hidden_size: c.hiddenSize, intermediate_size: c.intermediateSize,
      attention_heads: c.numHeads, key_value_heads: c.numKvHeads, head_dim: c.headDim, vocab_size: c.vocabSize,
      rope: c.rope, tied_embeddings: c.tieWordEmbeddings,
      parameters: params, weight_bytes: bytes,
      storage: [...new Set(linearModules(model).map((m) => m.weight.data.kind))].join(', '),
    };
    if (q) info.quantization = { type: q.quantType, bits_per_param: q.bitsPerParam, quantized_params: q.quantizedParams, quantized_bytes: q.quantizedBytes, ratio_to_float32: q.ratio, base_bytes_total: q.baseBytesTotal };
    if (o.adapter) {
      const { peft } = attachAdapterForInference(model, o.adapter);
      const a = peft.get('default');
      const cfg = a.config();
      info.adapter = {
        dir: o.adapter, peft_type: a.peftType, summary: peft.trainableSummary('default'),
        config: Object.fromEntries(Object.entries(cfg).filter(([, v]) => v !== null && !(typeof v === 'object' && Object.keys(v as object).length === 0))),
        file_bytes: statSync(join(o.adapter, 'adapter_model.safetensors')).size,
      };
    }
    if (o.json) {
      process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      return;
    }
    const lines = [
      `model: ${dir} (${c.architecture})`,
      `  layers ${c.numLayers}, hidden ${c.hiddenSize}, intermediate ${c.intermediateSize}, heads ${c.numHeads} (kv ${c.numKvHeads}, head_dim ${c.headDim}), vocab ${c.vocabSize}`,
      `  ${c.layers.every((l) => l.rope === null) ? `learned positions (${c.maxPositionEmbeddings})` : `RoPE ${c.rope.type} theta ${c.rope.theta}${c.rope.type !== 'default' ? ` factor ${c.rope.factor}` : ''}${c.rope.rotaryDim !== undefined && c.rope.rotaryDim < c.headDim ? ` on ${c.rope.rotaryDim} of ${c.headDim} dims` : ''}`}, ${c.tieWordEmbeddings ? 'tied' : 'untied'} embeddings`,
      `  parameters ${params.toLocaleString('en-US')}, weights ${(bytes / 2 ** 20).toFixed(2)} MiB (linear storage: ${info.storage})`,
    ];
    if (q) lines.push(`  4-bit ${q.quantType}: ${q.bitsPerParam.toFixed(4)} bits/param over ${q.quantizedParams.toLocaleString('en-US')} params, ${(100 * q.ratio).toFixed(2)}% of float32; whole base ${(q.baseBytesTotal / 2 ** 20).toFixed(2)} MiB`);
    if (info.adapter) {
      const a = info.adapter as { dir: string; peft_type: string; summary: string; config: Record<string, unknown>; file_bytes: number };
      lines.push(`adapter: ${a.dir} (${a.peft_type}, ${(a.file_bytes / 1024).toFixed(1)} KiB)`, `  ${a.summary}`);
      for (const k of ['r', 'lora_alpha', 'use_rslora', 'target_modules', 'modules_to_save', 'num_virtual_tokens', 'reduction_factor', 'placement'])
        if (a.config[k] !== undefined) lines.push(`  ${k}: ${JSON.stringify(a.config[k])}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
  });
  return cmd;
}
