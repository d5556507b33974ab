/** `peft eval`: mean loss per target token and perplexity of a model (and adapter) on a data file. */
import { Command } from 'commander';
import { loadTokenizer } from '../io/tokenizer.js';
import { evaluateFile } from '../train/run.js';
import { attachAdapterForInference } from './adapters.js';
import { openModelFor } from './model.js';
import { int, requireOptions, withConfigFile } from './options.js';

export function evalCommand(): Command {
  const cmd = new Command('eval')
    .description('mean next-token loss per target token (nats) and perplexity on a data file')
    .option('--data <file>', 'data file (.txt, .jsonl, .json) (required)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--adapter <dir>', 'PEFT adapter directory to apply')
    .option('--quantize <type>', 'quantize the base linear weights on load (nf4 | fp4), as for a QLoRA adapter')
    .option('--max-seq-length <n>', 'tokens per row', int('--max-seq-length', 2), 256)
    .option('--batch-size <n>', 'rows per batch', int('--batch-size', 1), 8)
    .option('--text-split <mode>', '.txt files: blocks | paragraphs', 'blocks')
    .option('--max-examples <n>', 'score only the first N examples (0 = all)', int('--max-examples'), 0)
    .option('--skip-bad-lines', 'skip malformed lines instead of stopping')
    .option('--json', 'print the result as JSON')
    .option('--allow-base-mismatch', "run an adapter whose training_provenance.json records a different base model (by content hash)")
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      data: string; model?: string; adapter?: string; quantize?: string; maxSeqLength: number; batchSize: number;
      textSplit: 'blocks' | 'paragraphs'; maxExamples: number; skipBadLines?: boolean; json?: boolean; allowBaseMismatch?: boolean;
    };
    requireOptions(o as unknown as Record<string, unknown>, ['data']);
    const { model, dir } = openModelFor(o.adapter, o.model, o.quantize);
    const tok = loadTokenizer(dir);
    if (o.adapter) attachAdapterForInference(model, o.adapter, { dir, allowMismatch: o.allowBaseMismatch });
    const r = evaluateFile(model, tok, o.data, { maxSeqLength: o.maxSeqLength, batchSize: o.batchSize, textSplit: o.textSplit, skipBadLines: o.skipBadLines, maxExamples: o.maxExamples });
    const out = { data: o.data, model: dir, adapter: o.adapter ?? null, loss: r.loss, perplexity: r.perplexity, tokens: r.tokens };
    if (o.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    else process.stdout.write(`loss ${r.loss.toFixed(5)} nats/token, perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} target tokens\n`);
  });
  return cmd;
}
