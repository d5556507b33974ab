/**
 * `peft export-job --target trl|axolotl --output DIR`: the same run as `peft train` for TRL's
 * SFTTrainer (a script for `accelerate launch`) or axolotl (a YAML config). Options default to
 * `--from-run DIR`'s train_args.json, then to peft train's defaults. See src/lifecycle/export-job.ts.
 */
import { Command } from 'commander';
import { PeftError } from '../errors.js';
import { jobSpec, writeJob, type JobSpec } from '../lifecycle/export-job.js';
import type { MethodName } from '../train/run.js';
import { float, int, list, withConfigFile } from './options.js';

export function exportJobCommand(): Command {
  const cmd = new Command('export-job')
    .description('write the same training run as a TRL SFTTrainer script (accelerate launch) or an axolotl config, to scale out on existing engines')
    .option('--target <engine>', 'trl | axolotl (required)')
    .option('--output <dir>', 'where the job goes (required)')
    .option('--from-run <dir>', 'take the run\'s settings from a peft train output (its train_args.json)')
    .option('--num-processes <n>', 'processes in the printed accelerate command', int('--num-processes', 1), 1)
    .option('--data <file>', 'training data file')
    .option('--model <dir>', 'base model directory or hub id (default: the bundled stories260K)')
    .option('--method <name>', 'lora | qlora')
    .option('--r <n>', 'LoRA rank', int('--r', 1))
    .option('--lora-alpha <a>', 'LoRA alpha', float('--lora-alpha', 0))
    .option('--lora-dropout <p>', 'LoRA dropout', float('--lora-dropout', 0, 0.999))
    .option('--target-modules <list>', 'comma-separated module names, or all-linear')
    .option('--use-rslora', 'rank-stabilised LoRA scaling')
    .option('--modules-to-save <list>', 'modules trained in full and saved', list)
    .option('--lr <x>', 'peak learning rate', float('--lr', 0))
    .option('--max-steps <n>', 'optimizer steps', int('--max-steps', 1))
    .option('--batch-size <n>', 'global rows per micro-batch (split over the processes)', int('--batch-size', 1))
    .option('--grad-accum <n>', 'micro-batches per optimizer step', int('--grad-accum', 1))
    .option('--max-seq-length <n>', 'tokens per row', int('--max-seq-length', 2))
    .option('--schedule <name>', 'constant | linear | cosine')
    .option('--warmup-steps <n>', 'linear warmup steps', int('--warmup-steps'))
    .option('--weight-decay <x>', 'AdamW weight decay', float('--weight-decay', 0))
    .option('--max-grad-norm <x>', 'gradient-norm clip', float('--max-grad-norm', 0))
    .option('--seed <s>', 'seed', int('--seed'))
    .option('--text-split <mode>', '.txt files: blocks | paragraphs')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as Record<string, unknown>;
    const target = o.target as string | undefined;
    if (target !== 'trl' && target !== 'axolotl') throw new PeftError('unknown or missing target', { field: '--target', expected: 'trl or axolotl', found: target ?? 'nothing' });
    if (!o.output) throw new PeftError('missing required option --output', { field: '--output' });
    const tm = o.targetModules as string | undefined;
    const spec = jobSpec({
      fromRun: o.fromRun as string | undefined, data: o.data as string | undefined, model: o.model as string | undefined, method: o.method as MethodName | undefined,
      r: o.r as number | undefined, loraAlpha: o.loraAlpha as number | undefined, loraDropout: o.loraDropout as number | undefined,
      targetModules: tm === undefined ? undefined : tm === 'all-linear' ? tm : list(tm), useRslora: o.useRslora as boolean | undefined,
      modulesToSave: o.modulesToSave as string[] | undefined, lr: o.lr as number | undefined, maxSteps: o.maxSteps as number | undefined,
      batchSize: o.batchSize as number | undefined, gradAccum: o.gradAccum as number | undefined, maxSeqLength: o.maxSeqLength as number | undefined,
      schedule: o.schedule as JobSpec['schedule'] | undefined, warmupSteps: o.warmupSteps as number | undefined, weightDecay: o.weightDecay as number | undefined,
      maxGradNorm: o.maxGradNorm as number | undefined, seed: o.seed as number | undefined, textSplit: o.textSplit as JobSpec['textSplit'] | undefined,
    });
    const r = writeJob(spec, target, o.output as string, o.numProcesses as number);
    process.stdout.write(`wrote ${r.files.join(', ')}\nrun:\n  ${r.command}\n`);
  });
  return cmd;
}
