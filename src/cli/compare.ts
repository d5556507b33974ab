/** `peft compare` and `peft main`: every method on the same data and budget, and the main job's report. */
import { Command } from 'commander';
import { runCompare, COMPARE_DEFAULTS } from '../report/compare.js';
import { runMainJob } from '../report/main-job.js';
import { METHODS, type MethodName } from '../train/run.js';
import { PeftError } from '../errors.js';
import { OBJECTIVES, type Objective } from '../train/preference/losses.js';
import { int, list, withConfigFile } from './options.js';

function methodsOf(v: string[] | undefined): MethodName[] | undefined {
  if (!v) return undefined;
  for (const m of v) if (!METHODS.includes(m as MethodName)) throw new PeftError('unknown method', { field: '--methods', expected: METHODS.join(', '), found: m });
  return v as MethodName[];
}

function objectivesOf(v: string[] | undefined): Objective[] | undefined {
  if (!v) return undefined;
  for (const m of v) if (!OBJECTIVES.includes(m as Objective)) throw new PeftError('unknown objective', { field: '--objectives', expected: OBJECTIVES.join(', '), found: m });
  return v as Objective[];
}

export function compareCommand(): Command {
  const cmd = new Command('compare')
    .description('train every method on the same data and token budget; write a table (Markdown + JSON) and a chart')
    .option('--model <dir>', 'Hugging Face model directory or a bundled model name: stories260K (default), tinystories656K')
    .option('--data <file>', 'new-domain training data (default: the bundled Grimm\'s fairy tales)')
    .option('--forgetting-data <file>', 'old-domain text for forgetting (default: the bundled TinyStories sample)')
    .option('--methods <list>', `comma-separated subset of ${METHODS.join(', ')}`, list)
    .option('--objectives <list>', `preference objectives to compare with LoRA (comma-separated subset of ${OBJECTIVES.join(', ')}); alone, only these run`, list)
    .option('--preference-data <dir>', 'directory with train.jsonl/val.jsonl pairs and train_kto.jsonl/val_kto.jsonl (default: the bundled data/grimms_preference)')
    .option('--max-steps <n>', 'optimizer steps per method', int('--max-steps', 1), COMPARE_DEFAULTS.maxSteps)
    .option('--batch-size <n>', 'rows per step', int('--batch-size', 1), COMPARE_DEFAULTS.batchSize)
    .option('--max-seq-length <n>', 'tokens per row', int('--max-seq-length', 2), COMPARE_DEFAULTS.maxSeqLength)
    .option('--output <dir>', 'output directory', 'out/compare')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action(async (raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as { model?: string; data?: string; forgettingData?: string; methods?: string[]; objectives?: string[]; preferenceData?: string; maxSteps: number; batchSize: number; maxSeqLength: number; output: string };
    const { dir } = await runCompare({
      model: o.model, data: o.data, forgettingData: o.forgettingData, methods: methodsOf(o.methods), objectives: objectivesOf(o.objectives),
      preferenceData: o.preferenceData, maxSteps: o.maxSteps,
      batchSize: o.batchSize, maxSeqLength: o.maxSeqLength, output: o.output,
      onProgress: (m, line) => { if (/^(done|forgetting|trainable)/.test(line)) process.stderr.write(`[${m}] ${line}\n`); },
    });
    const { readFileSync } = await import('node:fs');
    process.stdout.write(readFileSync(`${dir}/compare.md`, 'utf8'));
    process.stdout.write(`written: ${dir}/compare.md, compare.json, compare.svg\n`);
  });
  return cmd;
}

export function mainCommand(): Command {
  const cmd = new Command('main')
    .description('the main job: adapt the bundled stories260K (or --model) to Grimm\'s fairy tales with every method; report perplexities, forgetting and samples')
    .option('--model <dir>', 'Hugging Face model directory or a bundled model name: stories260K (default), tinystories656K')
    .option('--output <dir>', 'output directory', 'out/main')
    .option('--max-steps <n>', 'optimizer steps per method', int('--max-steps', 1), COMPARE_DEFAULTS.maxSteps)
    .option('--methods <list>', `comma-separated subset of ${METHODS.join(', ')}`, list);
  cmd.action(async (o: { model?: string; output: string; maxSteps: number; methods?: string[] }) => {
    const { markdown, dir } = await runMainJob({
      model: o.model, output: o.output, maxSteps: o.maxSteps, methods: methodsOf(o.methods),
      onProgress: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(markdown);
    process.stdout.write(`\nwritten: ${dir}/report.md, ${dir}/report.json, ${dir}/loss_curve.svg, ${dir}/runs/\n`);
  });
  return cmd;
}
