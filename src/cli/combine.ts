/**
 * `peft combine`: combine LoRA adapters into a new adapter (PEFT's add_weighted_adapter):
 * `cat` (exact, rank = Σ ranks), `svd` (best rank-k approximation of the weighted delta) or
 * `linear` (PEFT's approximate rule, equal ranks only).
 */
import { Command, InvalidArgumentError } from 'commander';
import { PeftError } from '../errors.js';
import { combineLoraDetailed, LORA_COMBINATIONS, type LoraCombination } from '../peft/combine.js';
import { LoraAdapter, loadAdapter, PeftModel, saveAdapter } from '../peft/index.js';
import { adapterBase } from './model.js';
import { openModel } from './model.js';
import { float, int, list, withConfigFile } from './options.js';

function collectAdapter(v: string, prev: Array<{ name: string; dir: string }> = []): Array<{ name: string; dir: string }> {
  const eq = v.indexOf('=');
  if (eq <= 0 || eq === v.length - 1) throw new InvalidArgumentError(`--adapter must be NAME=DIR, got "${v}"`);
  return [...prev, { name: v.slice(0, eq), dir: v.slice(eq + 1) }];
}

function weightList(v: string): number[] {
  return list(v).map((s) => float('--weights')(s));
}

export function combineCommand(): Command {
  const cmd = new Command('combine')
    .description('combine LoRA adapters into a new adapter (cat: exact; svd: best rank-k; linear: approximate, equal ranks)')
    .requiredOption('--adapter <name=dir>', 'a LoRA adapter to combine (repeat the option for each)', collectAdapter)
    .requiredOption('--weights <w1,w2,...>', 'one weight per adapter, in order (may be negative)', weightList)
    .requiredOption('--combination <type>', `how to combine: ${LORA_COMBINATIONS.join(' | ')}`)
    .option('--svd-rank <n>', 'rank of the svd combination (default: the largest source rank)', int('--svd-rank', 1))
    .requiredOption('--output <dir>', 'directory to write the combined adapter to')
    .option('--model <dir>', 'base model directory (default: from the first adapter, else the bundled stories260K)')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      adapter: Array<{ name: string; dir: string }>; weights: number[]; combination: string; svdRank?: number; output: string; model?: string;
    };
    if (!(LORA_COMBINATIONS as readonly string[]).includes(o.combination))
      throw new PeftError('unknown combination type', { field: '--combination', expected: LORA_COMBINATIONS.join(' | '), found: o.combination });
    if (o.weights.length !== o.adapter.length)
      throw new PeftError('need one weight per adapter', { field: '--weights', expected: `${o.adapter.length} values`, found: `${o.weights.length} (${o.weights.join(',')})` });
    if (o.svdRank !== undefined && o.combination !== 'svd')
      throw new PeftError('--svd-rank applies only to --combination svd', { field: '--svd-rank', found: o.combination });
    const names = new Set<string>();
    for (const a of o.adapter) {
      if (names.has(a.name)) throw new PeftError('adapter names must be distinct', { field: '--adapter', found: a.name });
      names.add(a.name);
    }
    const base = adapterBase(o.adapter[0].dir, o.model);
    const model = openModel(base.dir);
    const peft = new PeftModel(model);
    const sources = o.adapter.map((a, i) => {
      const adapter = loadAdapter(peft, a.dir, a.name, false);
      if (!(adapter instanceof LoraAdapter)) throw new PeftError('only LoRA adapters can be combined', { file: a.dir, field: 'peft_type', expected: 'LORA', found: adapter.peftType });
      return { adapter, weight: o.weights[i], name: a.name };
    });
    const r = combineLoraDetailed(sources, o.combination as LoraCombination, { svdRank: o.svdRank });
    saveAdapter(r.adapter, o.output, sources[0].adapter.cfg.base_model_name_or_path ?? undefined);
    const ranks = [...new Set(r.modules.map((m) => m.rank))].sort((a, b) => a - b);
    process.stdout.write(`combined ${sources.length} adapters (${o.combination}; weights ${o.weights.join(', ')}) over ${r.modules.length} modules, rank ${ranks.join('/')}\n`);
    if (o.combination === 'svd') {
      let worst = 0, worstName = '';
      for (const m of r.modules) {
        const rel = m.energy ? Math.sqrt(m.discardedEnergy! / m.energy) : 0;
        if (rel >= worst) [worst, worstName] = [rel, m.name];
      }
      process.stdout.write(`svd truncation: largest relative Frobenius error ${worst.toExponential(3)} (${worstName})\n`);
    }
    process.stdout.write(`wrote ${o.output}\n`);
  });
  return cmd;
}
