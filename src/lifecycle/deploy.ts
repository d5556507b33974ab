/**
 * `peft deploy`: an adapter laid out for an existing serving engine, plus its launch command.
 *
 * vLLM (`--target vllm`): `<out>/loras/<LORA_NAME>/` holds the adapter with
 * `base_model_name_or_path` set to the served model name — vLLM's filesystem LoRA resolver
 * (plugin `lora_filesystem_resolver`) loads `<VLLM_LORA_RESOLVER_CACHE_DIR>/<model>/` when a
 * request names an unknown model, only if adapter_config.json has `peft_type: "LORA"` and
 * `base_model_name_or_path` equal to the served base model's name. `<out>/launch.sh` sets
 * `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, `VLLM_PLUGINS=lora_filesystem_resolver`,
 * `VLLM_LORA_RESOLVER_CACHE_DIR=<out>/loras` and runs `vllm serve BASE --served-model-name NAME
 * --enable-lora --max-lora-rank R --max-loras N`, R the smallest of vLLM's allowed ranks
 * (8, 16, 32, 64, 128, 256, 320, 512) ≥ the adapter's largest rank. The adapter is checked
 * against vLLM's limits first (src/lifecycle/doctor.ts targetChecks).
 *
 * llama.cpp (`--target llama.cpp`): `<out>/<LORA_NAME>.gguf` (src/export/gguf-lora.ts) and
 * `<out>/launch.sh` running `llama-server -m BASE.gguf --lora <out>/<LORA_NAME>.gguf`.
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { PeftError } from '../errors.js';
import { exportLoraGguf } from '../export/gguf-lora.js';
import { moveFilesInto, writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { targetChecks, type Finding } from './doctor.js';
import { readJsonObject } from '../io/files.js';

export const VLLM_MAX_LORA_RANKS = [8, 16, 32, 64, 128, 256, 320, 512];

export interface DeployResult { files: string[]; command: string; findings: Finding[] }

const q = (s: string): string => (/^[A-Za-z0-9_./:@=-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

function maxRank(adapterDir: string): number {
  const c = readJsonObject(join(adapterDir, 'adapter_config.json'), { what: 'an adapter config' }) as { r?: number; rank_pattern?: Record<string, number> };
  return Math.max(Number(c.r ?? 8), ...Object.values(c.rank_pattern ?? {}).map(Number));
}

function refuseOnErrors(findings: Finding[], target: string, adapterDir: string): void {
  const errors = findings.filter((f) => f.severity === 'error');
  if (errors.length) throw new PeftError(`the adapter cannot be deployed to ${target}: ${errors.map((e) => e.message).join('; ')}`, { file: adapterDir });
}

/** Writes the vLLM layout and launch script into `out` (other files there are kept). */
export function deployVllm(adapterDir: string, out: string, o: { base: string; servedModelName: string; loraName: string; maxLoras?: number; baseDir: string }): DeployResult {
  const r = maxRank(adapterDir);
  const rank = VLLM_MAX_LORA_RANKS.find((x) => x >= r);
  const findings = targetChecks(adapterDir, 'vllm', { baseDir: o.baseDir, maxLoraRank: rank ?? VLLM_MAX_LORA_RANKS[VLLM_MAX_LORA_RANKS.length - 1] });
  refuseOnErrors(findings, 'vLLM', adapterDir);
  const loras = join(out, 'loras');
  const final = join(loras, o.loraName);
  const tmp = `${final}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  for (const f of readdirSync(adapterDir)) {
    if (f === 'adapter_config.json' || !statSync(join(adapterDir, f)).isFile()) continue;
    if (!['adapter_model.safetensors', 'README.md', 'training_provenance.json'].includes(f)) continue;
    copyFileSync(join(adapterDir, f), join(tmp, f));
    chmodSync(join(tmp, f), 0o644); // registry blobs are read-only; the deployed copy is the user's
  }
  const cfg = readJsonObject(join(adapterDir, 'adapter_config.json'), { what: 'an adapter config' });
  cfg.base_model_name_or_path = o.servedModelName;
  writeJsonAtomic(join(tmp, 'adapter_config.json'), cfg);
  moveFilesInto(tmp, final);
  const cacheDir = resolve(loras);
  const command = [
    'VLLM_ALLOW_RUNTIME_LORA_UPDATING=True', 'VLLM_PLUGINS=lora_filesystem_resolver', `VLLM_LORA_RESOLVER_CACHE_DIR=${q(cacheDir)}`,
    'vllm', 'serve', q(o.base), '--served-model-name', q(o.servedModelName), '--enable-lora', '--max-lora-rank', String(rank), '--max-loras', String(o.maxLoras ?? 4),
  ].join(' ');
  const script = `#!/bin/sh\n# vLLM with its filesystem LoRA resolver: a request for "model": "${o.loraName}" loads ${cacheDir}/${o.loraName}\n` +
    `# try: curl localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"model": "${o.loraName}", "prompt": "Once upon a time", "max_tokens": 32}'\n` +
    `exec env ${command} "$@"\n`;
  writeFileAtomic(join(out, 'launch.sh'), script);
  chmodSync(join(out, 'launch.sh'), 0o755);
  return { files: [join(final, 'adapter_config.json'), join(final, 'adapter_model.safetensors'), join(out, 'launch.sh')], command, findings };
}

/** Writes the GGUF adapter and the llama-server launch script into `out`. */
export function deployLlamaCpp(adapterDir: string, out: string, o: { baseDir: string; baseGguf?: string; loraName: string }): DeployResult {
  const findings = targetChecks(adapterDir, 'llama.cpp', { baseDir: o.baseDir });
  refuseOnErrors(findings, 'llama.cpp', adapterDir);
  let baseGguf = o.baseGguf;
  if (!baseGguf) {
    const found = existsSync(o.baseDir) ? readdirSync(o.baseDir).filter((f) => f.endsWith('.gguf')) : [];
    if (found.length !== 1) throw new PeftError('which GGUF base model should llama-server load?', { file: o.baseDir, field: '--base-gguf', expected: 'the base model converted to GGUF (convert_hf_to_gguf.py)', found: found.length ? found.join(', ') : 'no .gguf in the base directory' });
    baseGguf = join(o.baseDir, found[0]);
  }
  mkdirSync(out, { recursive: true });
  const gguf = join(out, `${o.loraName}.gguf`);
  exportLoraGguf(adapterDir, gguf, o.baseDir, { name: o.loraName });
  const command = ['llama-server', '-m', q(resolve(baseGguf)), '--lora', q(resolve(gguf))].join(' ');
  writeFileAtomic(join(out, 'launch.sh'), `#!/bin/sh\n# llama.cpp's server with the LoRA applied (scale 1; --lora-scaled FILE S for another scale)\nexec ${command} "$@"\n`);
  chmodSync(join(out, 'launch.sh'), 0o755);
  return { files: [gguf, join(out, 'launch.sh')], command, findings };
}

export function defaultLoraName(adapterDir: string): string {
  return basename(resolve(adapterDir)).replace(/[^A-Za-z0-9_.-]/g, '-');
}
