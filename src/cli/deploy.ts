/**
 * `peft deploy --target vllm|llama.cpp`: lays an adapter (a directory, or NAME@N / NAME from the
 * registry) out for vLLM's filesystem LoRA resolver or llama.cpp's server, and prints the launch
 * command (also written to OUTPUT/launch.sh). See src/lifecycle/deploy.ts.
 */
import { basename, resolve } from 'node:path';
import { Command } from 'commander';
import { PeftError } from '../errors.js';
import { defaultLoraName, deployLlamaCpp, deployVllm } from '../lifecycle/deploy.js';
import { checkout, registryRoot, resolveRef } from '../lifecycle/registry.js';
import { adapterBase } from './model.js';
import { int, withConfigFile } from './options.js';

export const DEPLOY_ENGINES = ['vllm', 'llama.cpp'];

export function deployCommand(): Command {
  const cmd = new Command('deploy')
    .description('lay an adapter out for an existing serving engine (vLLM filesystem LoRA resolver, llama.cpp server) and print its launch command')
    .option('--target <engine>', `serving engine: ${DEPLOY_ENGINES.join(' | ')} (required)`)
    .option('--adapter <dir>', 'adapter directory')
    .option('--from <ref>', 'registry version instead of a directory: NAME (its prod tag), NAME@N or NAME@TAG')
    .option('--registry <dir>', 'registry directory for --from (default: $PEFT_REGISTRY, else ~/.cache/peft-ts/registry)')
    .option('--output <dir>', 'where the deployment goes (required)')
    .option('--model <dir>', 'base model directory (default: from the adapter, else the bundled stories260K)')
    .option('--lora-name <name>', 'the adapter\'s model name in requests (default: NAME for --from, else the adapter directory\'s name)')
    .option('--base-model <id>', 'vLLM: the base model to serve, a hub id or path (default: the base model directory)')
    .option('--served-model-name <name>', 'vLLM: the base model\'s served name, written as base_model_name_or_path (default: the base directory\'s name)')
    .option('--max-loras <n>', 'vLLM: adapters resident on the GPU at once', int('--max-loras', 1), 4)
    .option('--base-gguf <file>', 'llama.cpp: the base model as GGUF (default: the one .gguf in the base model directory)')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action((raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      target?: string; adapter?: string; from?: string; registry?: string; output?: string; model?: string; loraName?: string;
      baseModel?: string; servedModelName?: string; maxLoras: number; baseGguf?: string;
    };
    if (!o.target || !DEPLOY_ENGINES.includes(o.target)) throw new PeftError('unknown or missing deploy target', { field: '--target', expected: DEPLOY_ENGINES.join(', '), found: o.target ?? 'nothing' });
    if (!o.output) throw new PeftError('missing required option --output', { field: '--output' });
    if (!!o.adapter === !!o.from) throw new PeftError('give the adapter as a directory or a registry version', { field: '--adapter / --from', expected: 'exactly one of them' });
    let dir = o.adapter!;
    let name = o.loraName;
    if (o.from) {
      const root = registryRoot(o.registry);
      const r = resolveRef(root, o.from);
      dir = checkout(root, r.name, r.version);
      name ??= r.name;
    }
    name ??= defaultLoraName(dir);
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new PeftError('invalid LoRA name', { field: '--lora-name', expected: 'letters, digits, _ . -', found: name });
    const base = adapterBase(dir, o.model);
    const r = o.target === 'vllm'
      ? deployVllm(dir, o.output, { base: o.baseModel ?? resolve(base.dir), servedModelName: o.servedModelName ?? basename(resolve(base.dir)), loraName: name, maxLoras: o.maxLoras, baseDir: base.dir })
      : deployLlamaCpp(dir, o.output, { baseDir: base.dir, baseGguf: o.baseGguf, loraName: name });
    for (const f of r.findings.filter((x) => x.severity === 'warning')) process.stderr.write(`peft: warning: ${f.message}\n`);
    process.stdout.write(`wrote ${r.files.join(', ')}\nlaunch (also in ${resolve(o.output)}/launch.sh):\n  ${r.command}\n`);
  });
  return cmd;
}
