/**
 * `peft export --adapter DIR --format gguf --output FILE [--model DIR] [--dtype f32|f16]`: writes a
 * LoRA adapter as a llama.cpp GGUF adapter (layout and scale rule: src/export/gguf-lora.ts). Only
 * the base model's config.json is read, never its weights.
 */
import { Command, Option } from 'commander';
import { PeftError } from '../errors.js';
import { exportLoraGguf, type GgufDtype } from '../export/gguf-lora.js';
import { adapterBase } from './model.js';
import { withConfigFile } from './options.js';

export const EXPORT_FORMATS = ['gguf'] as const;

export function exportCommand(): Command {
  const cmd = new Command('export')
    .description('export an adapter to another runtime\'s format (gguf: a llama.cpp LoRA adapter)')
    .requiredOption('--adapter <dir>', 'PEFT LoRA adapter directory')
    .requiredOption('--format <format>', `output format (${EXPORT_FORMATS.join(' | ')})`)
    .requiredOption('--output <file>', 'output file')
    .option('--model <dir>', 'base model directory, for its config.json (default: from the adapter, else the bundled stories260K)')
    .addOption(new Option('--dtype <type>', 'tensor data type').choices(['f32', 'f16']).default('f32'))
    .option('--name <name>', 'general.name written to the file (default: the adapter directory\'s name)')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as { adapter: string; format: string; output: string; model?: string; dtype: string; name?: string };
    if (!(EXPORT_FORMATS as readonly string[]).includes(o.format))
      throw new PeftError('unknown export format', { field: '--format', expected: EXPORT_FORMATS.join(', '), found: o.format });
    if (o.dtype !== 'f32' && o.dtype !== 'f16') throw new PeftError('unknown data type', { field: '--dtype', expected: 'f32 or f16', found: String(o.dtype) });
    const base = adapterBase(o.adapter, o.model);
    const r = exportLoraGguf(o.adapter, o.output, base.dir, { dtype: o.dtype.toUpperCase() as GgufDtype, name: o.name });
    for (const w of r.warnings) process.stderr.write(`peft: warning: ${w}\n`);
    const folded = r.pairs.filter((p) => p.fold !== 1);
    const permuted = r.pairs.filter((p) => p.permuted).length;
    process.stdout.write(`wrote ${o.output}: ${r.pairs.length} LoRA pairs (${r.pairs.length * 2} tensors, ${r.dtype}), architecture ${r.architecture}, adapter.lora.alpha ${r.alpha}\n`);
    if (permuted) process.stdout.write(`q/k rows of lora_b permuted for llama.cpp RoPE in ${permuted} pairs\n`);
    if (folded.length) {
      const f = folded.map((p) => p.fold);
      process.stdout.write(`true scaling folded into lora_b for ${folded.length} pairs (rsLoRA / alpha_pattern; factor ${Math.min(...f).toPrecision(6)}…${Math.max(...f).toPrecision(6)})\n`);
    }
  });
  return cmd;
}
