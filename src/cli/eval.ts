/** `peft eval`: mean loss per target token and perplexity of a model (and adapter) on a data file. */
import { Command, Option } from 'commander';
import { PeftError } from '../errors.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { firstNonFinite } from '../train/evaluate.js';
import { evaluateFile } from '../train/run.js';
import { attachAdapterForInference } from './adapters.js';
import { openModelFor } from './model.js';
import { int, requireOptions, withConfigFile } from './options.js';
import { setComputeDtype } from '../models/compute-dtype.js';

export function evalCommand(): Command {
  const cmd = new Command('eval')
    .description('mean next-token loss per target token (nats) and perplexity on a data file')
    .option('--data <file>', 'data file (.txt, .jsonl, .json) (required)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--adapter <dir>', 'PEFT adapter directory to apply')
    .option('--quantize <type>', 'quantize the base linear weights on load (nf4 | fp4), as for a QLoRA adapter')
    .option('--compute-dtype <dtype>', 'float32 | bf16: bf16 multiplies the frozen base weights in bfloat16 (AMX tiles or VDPBF16PS; activations rounded to bf16, float32 sums), as peft train --compute-dtype; needs AMX-BF16 or AVX512_BF16, refused otherwise', 'float32')
    .option('--max-seq-length <n>', 'tokens per row', int('--max-seq-length', 2), 256)
    .option('--batch-size <n>', 'rows per batch', int('--batch-size', 1), 8)
    .option('--text-split <mode>', '.txt files: blocks | paragraphs', 'blocks')
    .option('--max-examples <n>', 'score only the first N examples (0 = all)', int('--max-examples'), 0)
    .option('--skip-bad-lines', 'skip malformed lines instead of stopping')
    .addOption(new Option('--loss-convention <c>', "prompt tuning: peft = HF PEFT's (labels = input_ids: the last virtual token also predicts each row's first token) | next-token (real tokens only)").choices(['peft', 'next-token']).default('peft'))
    .option('--json', 'print the result as JSON (states the loss convention used)')
    .option('--allow-base-mismatch', "run an adapter whose training_provenance.json records a different base model (by content hash)")
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      data: string; model?: string; adapter?: string; quantize?: string; maxSeqLength: number; batchSize: number;
      textSplit: 'blocks' | 'paragraphs'; maxExamples: number; skipBadLines?: boolean; json?: boolean; allowBaseMismatch?: boolean;
      lossConvention: 'peft' | 'next-token'; computeDtype: string;
    };
    requireOptions(o as unknown as Record<string, unknown>, ['data']);
    const { model, dir } = openModelFor(o.adapter, o.model, o.quantize);
    const tok = loadTokenizer(dir);
    const peft = o.adapter ? attachAdapterForInference(model, o.adapter, { dir, allowMismatch: o.allowBaseMismatch }).peft : null;
    setComputeDtype(model, o.computeDtype); // after the adapter: its trainable-looking weights stay float32
    const r = evaluateFile(model, tok, o.data, { maxSeqLength: o.maxSeqLength, batchSize: o.batchSize, textSplit: o.textSplit, skipBadLines: o.skipBadLines, maxExamples: o.maxExamples, lossConvention: o.lossConvention });
    if (r.tokens > 0 && !Number.isFinite(r.loss)) {
      // a diverged or corrupt adapter (or base): name the first tensor that is not finite
      const bad = firstNonFinite(model, peft ? peft.adapters : []);
      if (bad) throw new PeftError(`evaluation loss is ${r.loss}: ${bad.owner === 'base model' ? 'the base model' : `adapter ${o.adapter}`} holds a non-finite value`, {
        file: bad.owner === 'base model' ? dir : o.adapter, field: bad.tensor, expected: 'finite values', found: `${bad.value} at element ${bad.index}`,
      });
      throw new PeftError(`evaluation loss is ${r.loss}, though every weight is finite (the activations overflowed)`, { file: o.data });
    }
    const out = {
      data: o.data, model: dir, adapter: o.adapter ?? null, compute_dtype: o.computeDtype, loss: r.loss, perplexity: r.perplexity, tokens: r.tokens,
      virtual_tokens: r.virtualTokens,
      loss_convention: r.lossConvention,
      loss_convention_note: r.virtualTokens === 0 ? 'next-token loss over the real tokens (no virtual tokens)'
        : r.lossConvention === 'peft' ? "HF PEFT's prompt-tuning loss (labels = input_ids): the last virtual token predicts each row's first token, so each row has as many predictions as tokens"
          : 'next-token loss over the real tokens only (each row has one prediction fewer than tokens)',
    };
    if (o.json) process.stdout.write(JSON.stringify(out, null, 2) + '\n');
    else process.stdout.write(`loss ${r.loss.toFixed(5)} nats/token, perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} target tokens${r.virtualTokens > 0 ? ` (${r.lossConvention} loss convention, ${r.virtualTokens} virtual tokens)` : ''}\n`);
  });
  return cmd;
}
