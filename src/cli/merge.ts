/**
 * `peft merge`: fold a LoRA adapter into the base weights and write a full-precision Hugging Face
 * model directory. Over a 4-bit base (a bitsandbytes checkpoint, or a QLoRA adapter trained with
 * `--method qlora`) the base is dequantized, merged in float32 and written in float32; it is
 * re-quantized to 4 bits only with --requantize, which reports the error that adds.
 */
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { mergeAdapter } from '../peft/merge.js';
import { DEFAULT_MODEL } from '../paths.js';
import { evaluateFile } from '../train/run.js';
import { adapterBase, openModel } from './model.js';
import { int, requireOptions, withConfigFile } from './options.js';
import { checkOutputDir } from './paths-check.js';

export function mergeCommand(): Command {
  const cmd = new Command('merge')
    .description('merge a LoRA adapter into the base model and write a full-precision Hugging Face model directory')
    .option('--adapter <dir>', 'LoRA adapter directory (required)')
    .option('--output <dir>', 'output model directory (required)')
    .option('--model <dir>', 'base model directory (default: from the adapter, else the bundled stories260K)')
    .option('--quantize <type>', 'the adapter was trained over this 4-bit base (nf4 | fp4); read from train_args.json when present')
    .option('--requantize', 'write the merged model back in 4 bits (bitsandbytes layout) and report the error this adds')
    .option('--eval-data <file>', 'with --requantize: data to measure the validation-loss change on')
    .option('--max-seq-length <n>', 'tokens per row for --eval-data', int('--max-seq-length', 2), 256)
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as { adapter: string; output: string; model?: string; quantize?: string; requantize?: boolean; evalData?: string; maxSeqLength: number };
    requireOptions(o as unknown as Record<string, unknown>, ['adapter', 'output']);
    const base = adapterBase(o.adapter, o.model);
    checkOutputDir(o.output, [{ path: base.dir, what: 'base model' }, { path: o.adapter, what: 'adapter being merged' }]);
    const quantize = o.quantize ?? base.quantize;
    const model = openModel(base.dir, quantize);
    const r = mergeAdapter(model, o.adapter, o.output, {
      requantize: Boolean(o.requantize),
      evaluate: o.evalData ? (m) => evaluateFile(m, loadTokenizer(base.dir ?? DEFAULT_MODEL), o.evalData!, { maxSeqLength: o.maxSeqLength }).loss : undefined,
    });
    process.stdout.write(`merged ${r.mergedLayers} LoRA layers with the base ${base.dir}${r.dequantized ? ' (4-bit base dequantized, merged in float32)' : ''}\n`);
    if (r.requantization) {
      const q = r.requantization;
      process.stdout.write(`re-quantized ${q.quantizedLayers} linear weights to ${q.quantType} (blocksize ${q.blocksize}, ${q.doubleQuant ? 'double quantization' : 'float32 absmax'}${r.dequantized ? ', as the base' : ''}): max |Δw| ${q.maxAbsChange.toExponential(3)}, mean |Δw| ${q.meanAbsChange.toExponential(3)}`);
      if (q.lossBefore !== undefined) process.stdout.write(`, validation loss ${q.lossBefore.toFixed(5)} → ${q.lossAfter!.toFixed(5)} (Δ ${(q.lossAfter! - q.lossBefore).toFixed(5)})`);
      process.stdout.write('\n');
    }
    process.stdout.write(`wrote ${o.output}\n`);
    if (!existsSync(join(o.output, 'config.json'))) throw new PeftError('merge did not produce a model', { file: o.output });
  });
  return cmd;
}
