/**
 * `peft export-job --target trl|axolotl`: the same run as `peft train` (model, method and
 * hyperparameters, data format and loss masks, seed) for an existing engine that scales out with
 * `accelerate launch` over many GPUs or nodes. Its output is an HF PEFT adapter directory that
 * peft-ts then loads, doctors, registers and serves.
 *
 * TRL (`train_trl.py`): `SFTTrainer` + `SFTConfig` + PEFT `LoraConfig` (trl/trainer/sft_config.py,
 * peft/tuners/lora/config.py). Data are converted at run time the way peft-ts reads them
 * (src/train/data): `.txt` → one document per file (or per paragraph) packed into max_length
 * blocks (`packing_strategy="wrapped"`: BOS + text + EOS cut into blocks, every token learned);
 * `{"text"}` → language modelling; `{"prompt","completion"}` → prompt-completion with
 * `completion_only_loss` (loss on the completion and EOS); Alpaca → prompt-completion with the
 * Stanford Alpaca prompt; `{"messages"}` → conversational prompt-completion whose completion is
 * the last assistant turn (peft-ts learns every assistant turn: the one difference), rendered
 * with the tokenizer's chat template or peft-ts's ChatML-style default. The global batch is kept:
 * per-device batch = --batch-size / WORLD_SIZE.
 *
 * axolotl (`axolotl.yaml`): the same settings in axolotl's keys (`adapter`, `lora_r`,
 * `lora_alpha`, `lora_dropout`, `lora_target_linear` / `lora_target_modules`,
 * `peft_use_rslora`, `lora_modules_to_save`, `datasets` with `type: completion | alpaca |
 * chat_template` or a user-defined prompt/completion format, `train_on_inputs: false`,
 * `sequence_len`, `sample_packing`, `micro_batch_size`, `gradient_accumulation_steps`,
 * `max_steps`, `learning_rate`, `lr_scheduler`, `warmup_steps`, `optimizer: adamw_torch`, `seed`).
 */
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { PeftError } from '../errors.js';
import { writeFileAtomic, writeJsonAtomic } from '../io/atomic.js';
import { DEFAULT_MODEL } from '../paths.js';
import { ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT, detectFormat } from '../train/data/index.js';
import { DEFAULT_CHAT_TEMPLATE } from '../train/data/chat.js';
import { DEFAULT_LR, type MethodName } from '../train/run.js';
import { toolVersion } from './provenance.js';
import { parseJsonText, readJsonFile, readJsonObject, readTextFile } from '../io/files.js';

/** The run, in peft-ts's terms (a subset of `peft train`'s options). */
export interface JobSpec {
  model: string;
  data: string;
  method: MethodName;
  r: number; loraAlpha: number; loraDropout: number; targetModules: string | string[]; useRslora: boolean; modulesToSave: string[] | null;
  lr: number; maxSteps: number; batchSize: number; gradAccum: number; maxSeqLength: number;
  schedule: 'constant' | 'linear' | 'cosine'; warmupSteps: number; weightDecay: number; maxGradNorm: number; seed: number;
  textSplit: 'blocks' | 'paragraphs';
  quantType: 'nf4' | 'fp4';
}

export const JOB_DEFAULTS: Omit<JobSpec, 'data' | 'model' | 'lr'> = {
  method: 'lora', r: 8, loraAlpha: 16, loraDropout: 0.05, targetModules: 'all-linear', useRslora: false, modulesToSave: null,
  maxSteps: 200, batchSize: 8, gradAccum: 1, maxSeqLength: 256, schedule: 'cosine', warmupSteps: 10, weightDecay: 0, maxGradNorm: 1, seed: 0,
  textSplit: 'blocks', quantType: 'nf4',
};

/** A job spec from explicit options over a previous run's train_args.json (if given) over the defaults. */
export function jobSpec(o: Partial<JobSpec> & { fromRun?: string }): JobSpec {
  let prev: Partial<JobSpec> = {};
  if (o.fromRun) {
    const f = join(o.fromRun, 'train_args.json');
    if (!existsSync(f)) throw new PeftError('train_args.json not found', { file: o.fromRun, field: '--from-run', expected: 'an output directory of peft train' });
    prev = readJsonObject(f, { what: 'the train_args.json of a peft train run' }) as Partial<JobSpec>;
  }
  const defined = Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<JobSpec>;
  const s = { ...JOB_DEFAULTS, ...pick(prev), ...defined } as JobSpec;
  if (!s.data) throw new PeftError('missing required option --data', { field: '--data', expected: '--data FILE or --from-run DIR' });
  if (s.method !== 'lora' && s.method !== 'qlora') throw new PeftError('export-job writes LoRA and QLoRA runs', { field: '--method', expected: 'lora or qlora', found: s.method });
  s.model = resolve(s.model ?? DEFAULT_MODEL);
  s.data = resolve(s.data);
  if (!existsSync(s.data)) throw new PeftError('data file not found', { file: s.data, field: '--data' });
  s.lr ??= DEFAULT_LR[s.method];
  return s;
}

function pick(a: Partial<JobSpec>): Partial<JobSpec> {
  const keys = ['model', 'data', 'method', 'r', 'loraAlpha', 'loraDropout', 'targetModules', 'useRslora', 'modulesToSave', 'lr', 'maxSteps', 'batchSize', 'gradAccum', 'maxSeqLength', 'schedule', 'warmupSteps', 'weightDecay', 'maxGradNorm', 'seed', 'textSplit', 'quantType'];
  return Object.fromEntries(Object.entries(a).filter(([k, v]) => keys.includes(k) && v !== undefined && v !== null)) as Partial<JobSpec>;
}

/** The data file's record format, as peft-ts detects it: txt, text, alpaca, prompt-completion or chat. */
export function dataKind(file: string): 'txt' | 'text' | 'alpaca' | 'prompt-completion' | 'chat' {
  if (file.endsWith('.txt')) return 'txt';
  let first: unknown;
  if (file.endsWith('.json')) {
    const all = readJsonFile(file, { what: 'a JSON array of records', maxBytes: 1 << 30 });
    if (!Array.isArray(all) || all.length === 0) throw new PeftError('a .json data file holds a non-empty array of records', { file, found: Array.isArray(all) ? 'an empty array' : typeof all });
    first = all[0];
  } else {
    const line = readTextFile(file, { maxBytes: 1 << 30 }).split('\n').find((l) => l.trim());
    if (line === undefined) throw new PeftError('empty data file', { file, expected: 'one JSON record per line' });
    first = parseJsonText(line, file, { what: 'a JSON record on the first line' });
  }
  if (typeof first !== 'object' || first === null || Array.isArray(first)) throw new PeftError('a record is a JSON object', { file, found: first === null ? 'null' : Array.isArray(first) ? 'an array' : typeof first });
  const f = detectFormat(first as Record<string, unknown>);
  if (!f) throw new PeftError('cannot tell the data format', { file, expected: '{"text"}, {"instruction","output"}, {"prompt","completion"} or {"messages"}' });
  return f;
}

const SCHEDULER: Record<JobSpec['schedule'], string> = { cosine: 'cosine', linear: 'linear', constant: 'constant_with_warmup' };

/** The TRL SFTTrainer script. */
export function trlScript(s: JobSpec): string {
  const job = {
    ...s, data_kind: dataKind(s.data), lr_scheduler_type: SCHEDULER[s.schedule],
    alpaca_prompt_input: ALPACA_PROMPT_INPUT, alpaca_prompt_no_input: ALPACA_PROMPT_NO_INPUT, default_chat_template: DEFAULT_CHAT_TEMPLATE,
  };
  return `#!/usr/bin/env python3
"""The run of \`peft train\` (peft-ts ${toolVersion()}) as a TRL SFTTrainer job.

Written by \`peft export-job --target trl\`; see src/lifecycle/export-job.ts for how data and loss
masks map. Run on any number of processes, GPUs or nodes:

    accelerate launch --num_processes N train_trl.py --output-dir OUT

The result (OUT/adapter_config.json + adapter_model.safetensors) is an HF PEFT adapter that
\`peft doctor --adapter OUT\`, \`peft eval\`, \`peft registry push\` and \`peft serve\` read.
"""
import argparse
import json
import os
import re

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

JOB = json.loads(r'''${JSON.stringify(job)}''')


def records(job):
    """The data as peft-ts reads it, in the dataset format TRL trains the same way."""
    path, kind = job["data"], job["data_kind"]
    if kind == "txt":
        text = open(path, encoding="utf-8").read()
        if job["textSplit"] == "paragraphs":
            return [{"text": p.strip()} for p in re.split(r"\\n\\s*\\n", text) if p.strip()]
        return [{"text": text}]
    raw = open(path, encoding="utf-8").read()
    rows = json.loads(raw) if path.endswith(".json") else [json.loads(l) for l in raw.splitlines() if l.strip()]
    out = []
    for r in rows:
        if kind == "text":
            out.append({"text": r["text"]})
        elif kind == "alpaca":
            tpl = job["alpaca_prompt_input"] if r.get("input") else job["alpaca_prompt_no_input"]
            out.append({"prompt": tpl.replace("{instruction}", r["instruction"]).replace("{input}", r.get("input", "")), "completion": r["output"]})
        elif kind == "prompt-completion":
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
        else:  # chat: the last assistant turn is the completion
            m = r["messages"]
            last = max(i for i, x in enumerate(m) if x["role"] == "assistant")
            out.append({"prompt": m[:last], "completion": [m[last]]})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--output-dir", default="out/trl-adapter")
    ap.add_argument("--max-steps", type=int, default=JOB["maxSteps"])
    ap.add_argument("--bf16", action="store_true", help="bf16 mixed precision (peft-ts trains in float32)")
    args = ap.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if JOB["batchSize"] % world:
        raise SystemExit(f"--batch-size {JOB['batchSize']} does not split over {world} processes")
    tok = AutoTokenizer.from_pretrained(JOB["model"])
    if JOB["data_kind"] == "chat" and tok.chat_template is None:
        tok.chat_template = JOB["default_chat_template"]
    quant = None
    if JOB["method"] == "qlora":
        from transformers import BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=JOB["quantType"], bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(JOB["model"], dtype=torch.float32 if quant is None else torch.bfloat16, quantization_config=quant)
    peft_config = LoraConfig(
        r=JOB["r"], lora_alpha=JOB["loraAlpha"], lora_dropout=JOB["loraDropout"], target_modules=JOB["targetModules"],
        use_rslora=JOB["useRslora"], modules_to_save=JOB["modulesToSave"], bias="none", task_type="CAUSAL_LM",
    )
    text = JOB["data_kind"] in ("txt", "text")
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=JOB["batchSize"] // world,
        gradient_accumulation_steps=JOB["gradAccum"], learning_rate=JOB["lr"], lr_scheduler_type=JOB["lr_scheduler_type"],
        warmup_steps=JOB["warmupSteps"], weight_decay=JOB["weightDecay"], max_grad_norm=JOB["maxGradNorm"], optim="adamw_torch",
        seed=JOB["seed"], data_seed=JOB["seed"], max_length=JOB["maxSeqLength"], packing=text,
        packing_strategy="wrapped", completion_only_loss=None if text else True, dataset_text_field="text",
        logging_steps=1, save_strategy="no", report_to="none", dataloader_drop_last=False,
        bf16=args.bf16, use_cpu=not torch.cuda.is_available(), ddp_find_unused_parameters=False,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(records(JOB)), processing_class=tok, peft_config=peft_config)
    trainer.train()
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "peft_ts_job.json"), "w") as f:
            json.dump({"job": JOB, "world_size": world, "log_history": trainer.state.log_history}, f, indent=2)


if __name__ == "__main__":
    main()
`;
}

/** The axolotl config. */
export function axolotlYaml(s: JobSpec, outputDir = './out/axolotl-adapter'): string {
  const kind = dataKind(s.data);
  const ds: Record<string, unknown> = { path: s.data };
  if (kind === 'txt') Object.assign(ds, { ds_type: 'text', type: 'completion', field: 'text' });
  else if (kind === 'text') Object.assign(ds, { ds_type: 'json', type: 'completion', field: 'text' });
  else if (kind === 'alpaca') Object.assign(ds, { ds_type: 'json', type: 'alpaca' });
  else if (kind === 'prompt-completion') Object.assign(ds, { ds_type: 'json', type: { field_instruction: 'prompt', field_output: 'completion', format: '{instruction}', no_input_format: '{instruction}' } });
  else Object.assign(ds, { ds_type: 'json', type: 'chat_template', field_messages: 'messages', roles_to_train: ['assistant'] });
  const cfg: Record<string, unknown> = {
    base_model: s.model, model_type: 'AutoModelForCausalLM', tokenizer_type: 'AutoTokenizer',
    load_in_4bit: s.method === 'qlora', adapter: s.method,
    lora_r: s.r, lora_alpha: s.loraAlpha, lora_dropout: s.loraDropout,
    ...(s.targetModules === 'all-linear' ? { lora_target_linear: true } : { lora_target_modules: Array.isArray(s.targetModules) ? s.targetModules : [s.targetModules] }),
    ...(s.useRslora ? { peft_use_rslora: true } : {}),
    ...(s.modulesToSave?.length ? { lora_modules_to_save: s.modulesToSave } : {}),
    datasets: [ds], ...(kind === 'chat' ? { chat_template: 'tokenizer_default_fallback_chatml' } : {}),
    dataset_prepared_path: './last_run_prepared', val_set_size: 0, train_on_inputs: false,
    sequence_len: s.maxSeqLength, sample_packing: true, pad_to_sequence_len: false,
    micro_batch_size: s.batchSize, gradient_accumulation_steps: s.gradAccum, max_steps: s.maxSteps,
    optimizer: 'adamw_torch', learning_rate: s.lr, lr_scheduler: s.schedule === 'constant' ? 'constant_with_warmup' : s.schedule,
    warmup_steps: s.warmupSteps, weight_decay: s.weightDecay, max_grad_norm: s.maxGradNorm, seed: s.seed,
    bf16: 'auto', output_dir: outputDir, save_safetensors: true, logging_steps: 1,
  };
  return `# The run of \`peft train\` (peft-ts ${toolVersion()}) as an axolotl config; written by \`peft export-job --target axolotl\`.\n` +
    `# micro_batch_size is per GPU: divide it by the number of GPUs to keep peft-ts's global batch of ${s.batchSize}.\n` +
    `# Run: axolotl train axolotl.yaml   (or: accelerate launch -m axolotl.cli.train axolotl.yaml)\n` + toYaml(cfg);
}

/** Writes the job (script or config, job.json and launch.sh) into `out`; returns the files and the launch command. */
export function writeJob(s: JobSpec, target: 'trl' | 'axolotl', out: string, numProcesses = 1): { files: string[]; command: string } {
  mkdirSync(out, { recursive: true });
  const files: string[] = [];
  let command: string;
  if (target === 'trl') {
    writeFileAtomic(join(out, 'train_trl.py'), trlScript(s));
    files.push(join(out, 'train_trl.py'));
    command = `accelerate launch${numProcesses > 1 ? ' --multi_gpu' : ''} --num_processes ${numProcesses} ${join(resolve(out), 'train_trl.py')} --output-dir ${join(resolve(out), 'adapter')}`;
  } else {
    writeFileAtomic(join(out, 'axolotl.yaml'), axolotlYaml(s, join(resolve(out), 'adapter')));
    files.push(join(out, 'axolotl.yaml'));
    command = `axolotl train ${join(resolve(out), 'axolotl.yaml')}`;
  }
  writeJsonAtomic(join(out, 'job.json'), { target, tool: `peft-ts ${toolVersion()}`, spec: s });
  writeFileAtomic(join(out, 'launch.sh'), `#!/bin/sh\n# ${basename(s.data)} on ${basename(s.model)}, ${s.method} r=${s.r}, ${s.maxSteps} steps\nexec ${command} "$@"\n`);
  chmodSync(join(out, 'launch.sh'), 0o755);
  files.push(join(out, 'job.json'), join(out, 'launch.sh'));
  return { files, command };
}
