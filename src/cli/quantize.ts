/**
 * `peft quantize`: write a model's 4-bit (NF4/FP4) QLoRA base as a transformers/bitsandbytes
 * checkpoint (`load_in_4bit` layout) and print the storage report.
 */
import { Command, InvalidArgumentError } from 'commander';
import { DEFAULT_MODEL } from '../paths.js';
import { checkOutputDir } from './paths-check.js';
import { saveQuantizedCheckpoint } from '../quant/bnb-checkpoint.js';
import { BLOCKSIZES_4BIT, type QuantType4 } from '../quant/nf4.js';
import { loadModelQuantized, quantizationReport, type QuantizationReport } from '../quant/quantize-model.js';
import { withConfigFile } from './options.js';

function quantType(v: string): QuantType4 {
  if (v !== 'nf4' && v !== 'fp4') throw new InvalidArgumentError(`--quant-type must be nf4 or fp4, got "${v}"`);
  return v;
}

function blocksize(v: string): number {
  const n = Number(v);
  if (!BLOCKSIZES_4BIT.includes(n)) throw new InvalidArgumentError(`--blocksize must be one of ${BLOCKSIZES_4BIT.join(', ')}, got "${v}"`);
  return n;
}

const fmt = (n: number): string => n.toLocaleString('en-US');

/** The report as printed by `peft quantize`. */
export function formatQuantizationReport(r: QuantizationReport, withCodebooks?: QuantizationReport): string {
  const lines = [
    `quantized ${r.quantizedLayers} linear weights (${fmt(r.quantizedParams)} parameters): ${r.quantType}, blocksize ${r.blocksize}, ` +
      `${r.doubleQuant ? 'double quantization' : 'float32 absmax'}`,
    `  ${r.bitsPerParam.toFixed(4)} bits/parameter (codes + absmax${r.doubleQuant ? ' + nested statistics' : ''}` +
      (withCodebooks ? `; ${withCodebooks.bitsPerParam.toFixed(4)} with the per-tensor code tables a checkpoint stores)` : ')'),
    `  those weights: ${fmt(r.float32BytesOfThoseLayers)} bytes in float32 -> ${fmt(r.quantizedBytes)} bytes ` +
      `(${(100 * r.ratio).toFixed(2)}%, ${(1 / r.ratio).toFixed(2)}x smaller)`,
    `  whole model: ${fmt(r.baseBytesTotal)} bytes (${fmt(r.unquantizedParams)} parameters stay float32/bf16: embeddings, norms, lm_head); ` +
      `${fmt(r.baseBytesFloat32)} bytes all-float32`,
  ];
  return lines.join('\n');
}

export function quantizeCommand(): Command {
  const cmd = new Command('quantize')
    .description('quantize the linear weights to 4 bits (QLoRA base) and write a bitsandbytes-layout checkpoint')
    .requiredOption('--output <dir>', 'directory to write (replaced atomically)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--quant-type <type>', 'nf4 or fp4', quantType, 'nf4' as QuantType4)
    .option('--blocksize <n>', `elements per absmax block (${BLOCKSIZES_4BIT.join(', ')})`, blocksize, 64)
    .option('--no-double-quant', 'keep the absmax statistics in float32 instead of quantizing them to 8 bits')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as { output: string; model?: string; quantType: QuantType4; blocksize: number; doubleQuant: boolean };
    const dir = o.model ?? DEFAULT_MODEL;
    checkOutputDir(o.output, [{ path: dir, what: 'source model' }]);
    const model = loadModelQuantized(dir, { quantType: quantType(String(o.quantType)), blocksize: blocksize(String(o.blocksize)), doubleQuant: o.doubleQuant !== false });
    saveQuantizedCheckpoint(model, o.output);
    process.stdout.write(`${formatQuantizationReport(quantizationReport(model), quantizationReport(model, { includeCodebooks: true }))}\nwrote ${o.output}\n`);
  });
  return cmd;
}
