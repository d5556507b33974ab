/**
 * `peft doctor`: data checks before training (--data) and adapter checks after (--adapter), with
 * a runtime's limits (--target). Exit codes for CI: 0 no error, 1 an error finding (or bad
 * input), 2 warnings only under --strict. See src/lifecycle/doctor.ts.
 */
import { readTextFile } from '../io/files.js';
import { Command } from 'commander';
import { PeftError } from '../errors.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { DEPLOY_TARGETS, doctorAdapter, doctorData, exitCode, targetChecks, type DeployTarget, type Finding } from '../lifecycle/doctor.js';
import { DEFAULT_MODEL } from '../paths.js';
import { adapterBase, openModel } from './model.js';
import { int, withConfigFile } from './options.js';

const MARK: Record<string, string> = { ok: 'ok  ', warning: 'WARN', error: 'FAIL' };

function printFindings(findings: Finding[]): void {
  for (const f of findings) process.stdout.write(`${MARK[f.severity]} ${f.check}: ${f.message}\n`);
}

export function doctorCommand(): Command {
  const cmd = new Command('doctor')
    .description('check training data (--data: tokens with their loss mask, dropped/truncated counts) or an adapter (--adapter: keys, base, shapes, effect on the logits, --target limits); exit 1 on an error')
    .option('--data <file>', 'data file to render as `peft train` would see it')
    .option('--adapter <dir>', 'adapter directory (ours or HF PEFT\'s) to check against the base')
    .option('--model <dir>', 'base model directory (default: from the adapter, else the bundled stories260K)')
    .option('--target <name>', `also check a runtime's limits: ${DEPLOY_TARGETS.join(' | ')}`)
    .option('--max-lora-rank <n>', 'vLLM --max-lora-rank the adapter must fit', int('--max-lora-rank', 1), 16)
    .option('--num-examples <n>', 'examples to print token by token', int('--num-examples'), 2)
    .option('--max-seq-length <n>', 'tokens per row, as for peft train', int('--max-seq-length', 2), 256)
    .option('--text-split <mode>', '.txt files: blocks | paragraphs', 'blocks')
    .option('--chat-template <file>', 'Jinja chat template for {"messages"} data (as peft train)')
    .option('--skip-bad-lines', 'count malformed lines instead of stopping')
    .option('--prompt <text>', 'probe prompt for the logit check')
    .option('--strict', 'exit 2 when there are warnings (and no errors)')
    .option('--json', 'print the report as JSON')
    .option('--color', 'colour the token mask even when stdout is not a terminal')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      data?: string; adapter?: string; model?: string; target?: string; maxLoraRank: number; numExamples: number; maxSeqLength: number;
      textSplit: 'blocks' | 'paragraphs'; chatTemplate?: string; skipBadLines?: boolean; prompt?: string; strict?: boolean; json?: boolean; color?: boolean;
    };
    if (!o.data && !o.adapter) throw new PeftError('nothing to check', { field: '--data / --adapter', expected: '--data FILE and/or --adapter DIR' });
    if (o.target !== undefined && !(DEPLOY_TARGETS as string[]).includes(o.target)) throw new PeftError('unknown target', { field: '--target', expected: DEPLOY_TARGETS.join(', '), found: o.target });
    const findings: Finding[] = [];
    const json: Record<string, unknown> = {};
    const base = o.adapter ? adapterBase(o.adapter, o.model) : { dir: o.model ?? DEFAULT_MODEL, quantize: undefined };
    const tok = loadTokenizer(base.dir);
    if (o.data) {
      const r = doctorData(o.data, tok, {
        maxSeqLength: o.maxSeqLength, textSplit: o.textSplit, skipBadLines: o.skipBadLines, numExamples: o.numExamples,
        chatTemplate: o.chatTemplate ? readTextFile(o.chatTemplate, { maxBytes: 4 * 2 ** 20, what: 'a Jinja chat template' }) : undefined,
      });
      findings.push(...r.findings);
      json.data = r;
      if (!o.json) {
        const color = o.color || process.stdout.isTTY;
        const s = r.stats;
        process.stdout.write(`${o.data}: format ${s.format}, ${s.records} records → ${s.examples} examples (${s.truncated} truncated, ${s.droppedTooLong} dropped), ${s.targets} target tokens of ${s.tokens}\n`);
        process.stdout.write(color ? 'learned tokens in green, context dimmed\n' : 'learned tokens in [brackets]\n');
        for (const ex of r.examples) {
          process.stdout.write(`--- ${ex.source}\n`);
          process.stdout.write(ex.tokens.map((t) => (color ? (t.learned ? `\x1b[42;30m${t.text}\x1b[0m` : `\x1b[2m${t.text}\x1b[0m`) : t.learned ? `[${t.text}]` : t.text)).join('') + '\n');
        }
      }
    }
    if (o.adapter) {
      const model = openModel(base.dir, base.quantize);
      const r = doctorAdapter(o.adapter, model, base.dir, tok, { prompt: o.prompt });
      findings.push(...r.findings);
      json.adapter = r;
      if (!o.json) process.stdout.write(`${o.adapter} (${r.peftType}) on ${base.dir}\n`);
      if (o.target) {
        const t = targetChecks(o.adapter, o.target as DeployTarget, { baseDir: base.dir, maxLoraRank: o.maxLoraRank });
        findings.push(...t);
        json.target = { name: o.target, findings: t };
      }
    }
    const code = exitCode(findings, o.strict);
    if (o.json) process.stdout.write(JSON.stringify({ ...json, findings, exit_code: code }, null, 2) + '\n');
    else {
      printFindings(findings);
      process.stdout.write(code === 0 ? 'doctor: no problems found\n' : `doctor: ${findings.filter((f) => f.severity === 'error').length} error(s), ${findings.filter((f) => f.severity === 'warning').length} warning(s)\n`);
    }
    process.exitCode = code;
  });
  return cmd;
}
