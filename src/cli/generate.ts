/** `peft generate`: stream a continuation of a prompt from the base model or with an adapter. */
import { Command } from 'commander';
import { generate } from '../generate/generate.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { openModelFor } from './model.js';
import { float, int, intList, requireOptions, withConfigFile } from './options.js';
import { attachAdapterForInference } from './adapters.js';

export function generateCommand(): Command {
  const cmd = new Command('generate')
    .description('generate a continuation of a prompt (streams to stdout)')
    .option('--prompt <text>', 'prompt text (required)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--adapter <dir>', 'PEFT adapter directory to apply')
    .option('--max-new-tokens <n>', 'most tokens to generate', int('--max-new-tokens'), 64)
    .option('--temperature <t>', 'sampling temperature; 0 = greedy', float('--temperature', 0), 0)
    .option('--top-k <k>', 'sample from the k most likely tokens (0 = off)', int('--top-k'), 0)
    .option('--top-p <p>', 'nucleus sampling mass (1 = off)', float('--top-p', 0, 1), 1)
    .option('--seed <s>', 'sampling seed', int('--seed'), 0)
    .option('--stop-ids <ids>', 'extra token ids that end generation (comma-separated; stories260K ends a story with 1)', intList('--stop-ids'))
    .option('--quantize <type>', 'store the base linear weights in 4 bits (nf4 or fp4)')
    .option('--allow-base-mismatch', "run an adapter whose training_provenance.json records a different base model (by content hash)")
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action(async (raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      prompt: string; model?: string; adapter?: string; maxNewTokens: number; temperature: number; topK: number;
      topP: number; seed: number; stopIds?: number[]; quantize?: string; allowBaseMismatch?: boolean;
    };
    requireOptions(o as unknown as Record<string, unknown>, ['prompt']);
    const { model, dir } = openModelFor(o.adapter, o.model, o.quantize);
    const tok = loadTokenizer(dir);
    const setup = o.adapter ? attachAdapterForInference(model, o.adapter, { dir, allowMismatch: o.allowBaseMismatch }) : {};
    const ids = tok.encode(o.prompt);
    let printed = tok.decode(ids);
    process.stdout.write(printed);
    const all = [...ids];
    generate(model, ids, {
      maxNewTokens: o.maxNewTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed, stopIds: o.stopIds,
      onToken: (id) => {
        all.push(id);
        const text = tok.decode(all);
        if (text.startsWith(printed)) {
          process.stdout.write(text.slice(printed.length));
          printed = text;
        }
      },
    }, setup);
    process.stdout.write('\n');
  });
  return cmd;
}
