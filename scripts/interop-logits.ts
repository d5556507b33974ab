/**
 * The peft-ts half of scripts/check-peft-interop.py (run with `npx tsx`).
 *
 *   npx tsx scripts/interop-logits.ts logits --adapter DIR --output FILE [--model DIR] [--text TEXT]
 *     Loads the model and the adapter (any peft_type peft-ts can load), runs one forward pass on
 *     the tokenized text and writes FILE (safetensors): `logits` [rows, vocab] float32 — rows =
 *     the text's tokens plus any virtual tokens the adapter prepends (prompt tuning), as HF PEFT
 *     returns them — and metadata `input_ids` (JSON), `peft_type`, `virtual_tokens`.
 *
 *   npx tsx scripts/interop-logits.ts make --type TYPE --output DIR [--model DIR] [--seed N]
 *     Writes a sample adapter of TYPE (LORA, LORA_RSLORA, IA3, PREFIX_TUNING,
 *     PREFIX_TUNING_PROJ, PROMPT_TUNING) with saveAdapter, its trainable tensors perturbed with
 *     deterministic noise so it changes the output (LoRA's B and IA3's ones are trivial at init).
 */
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeSafetensorsFile } from '../src/io/safetensors.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { forwardHidden, lmLogits } from '../src/models/model.js';
import { loadModel } from '../src/models/load.js';
import { DEFAULT_MODEL } from '../src/paths.js';
import {
  attachAdapters, createIa3Adapter, createPrefixAdapter, createPromptAdapter, LoraAdapter, parseLoraConfig, saveAdapter,
  type AdapterMethod,
} from '../src/peft/index.js';
import { noGrad, withArena } from '../src/tensor/index.js';
import { uniformRng } from '../src/tensor/random.js';

export const DEFAULT_TEXT = 'Once upon a time, there was a little girl named Lily. She loved to play outside.';

function args(argv: string[]): { cmd: string; o: Record<string, string> } {
  const [cmd, ...rest] = argv;
  const o: Record<string, string> = {};
  for (let i = 0; i < rest.length; i += 2) {
    if (!rest[i].startsWith('--') || rest[i + 1] === undefined) throw new Error(`bad argument ${rest[i]}`);
    o[rest[i].slice(2)] = rest[i + 1];
  }
  return { cmd: cmd ?? '', o };
}

/** Uniform [-0.5, 0.5) draws from a seed. */
function rng(seed: number): () => number {
  const u = uniformRng(seed);
  return () => u() - 0.5;
}

/** The `logits` command: writes o.output and returns its summary line. */
export function logits(o: Record<string, string>): string {
  const modelDir = o.model ?? DEFAULT_MODEL;
  if (!o.adapter || !o.output) throw new Error('logits needs --adapter DIR --output FILE');
  const model = loadModel(modelDir);
  attachAdapters(model, [{ name: 'a', dir: o.adapter }]);
  const ids = loadTokenizer(modelDir).encode(o.text ?? DEFAULT_TEXT);
  // the rows the adapter's input hooks added (prompt tuning's virtual tokens) come first
  const { data, rows, virtual } = noGrad(() => withArena(() => {
    const { hidden, batch } = forwardHidden(model, { ids: Int32Array.from(ids), B: 1, T: ids.length });
    const l = lmLogits(model, hidden);
    return { data: l.data.slice(), rows: l.rows, virtual: batch.T - ids.length };
  }));
  const V = model.config.vocabSize;
  const cfg = JSON.parse(readFileSync(join(o.adapter, 'adapter_config.json'), 'utf8')) as { peft_type: string };
  writeSafetensorsFile(o.output, [{ name: 'logits', dtype: 'F32', shape: [rows, V], data }], {
    input_ids: JSON.stringify(ids), peft_type: cfg.peft_type, virtual_tokens: String(virtual), model: resolve(modelDir),
  });
  return `${o.output}: logits [${rows}, ${V}] (${ids.length} tokens + ${virtual} virtual), ${cfg.peft_type}`;
}

/** Sample adapter types `make` writes. */
export const MAKE_TYPES = ['LORA', 'LORA_RSLORA', 'LORA_DORA', 'IA3', 'PREFIX_TUNING', 'PREFIX_TUNING_PROJ', 'PROMPT_TUNING'] as const;

/** The `make` command: writes a sample adapter into o.output and returns its summary line. */
export function make(o: Record<string, string>): string {
  const modelDir = o.model ?? DEFAULT_MODEL;
  const type = o.type;
  if (!type || !o.output) throw new Error('make needs --type TYPE --output DIR');
  const seed = Number(o.seed ?? 7);
  const model = loadModel(modelDir);
  let a: AdapterMethod;
  switch (type) {
    case 'LORA':
      a = new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear' }), seed);
      break;
    case 'LORA_RSLORA':
      a = new LoraAdapter(model, parseLoraConfig({
        r: 8, lora_alpha: 4, use_rslora: true, target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'],
        rank_pattern: { k_proj: 2 }, alpha_pattern: { v_proj: 12 },
      }), seed);
      break;
    case 'LORA_DORA':
      a = new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, use_dora: true, target_modules: 'all-linear' }), seed);
      break;
    case 'IA3':
      a = createIa3Adapter(model, {}, seed);
      break;
    case 'PREFIX_TUNING':
      a = createPrefixAdapter(model, { num_virtual_tokens: 5 }, seed);
      break;
    case 'PREFIX_TUNING_PROJ':
      a = createPrefixAdapter(model, { num_virtual_tokens: 4, prefix_projection: true, encoder_hidden_size: 32 }, seed);
      break;
    case 'PROMPT_TUNING':
      a = createPromptAdapter(model, { num_virtual_tokens: 6 }, undefined, seed);
      break;
    default:
      throw new Error(`unknown --type ${type} (LORA, LORA_RSLORA, LORA_DORA, IA3, PREFIX_TUNING, PREFIX_TUNING_PROJ, PROMPT_TUNING)`);
  }
  const u = rng(seed * 7919 + 1);
  for (const { tensor } of a.trainableParameters()) {
    const d = tensor.data;
    for (let i = 0; i < d.length; i++) d[i] = d[i] * (1 + 0.4 * u()) + 0.2 * u();
  }
  saveAdapter(a, o.output, modelDir);
  return `${o.output}: ${a.peftType} adapter (${type})`;
}

/** Runs one command line; returns the exit status. */
export function main(argv: string[]): number {
  const { cmd, o } = args(argv);
  if (cmd === 'logits') process.stdout.write(`${logits(o)}\n`);
  else if (cmd === 'make') process.stdout.write(`${make(o)}\n`);
  else {
    process.stderr.write('usage: interop-logits.ts logits --adapter DIR --output FILE [--model DIR] [--text TEXT]\n       interop-logits.ts make --type TYPE --output DIR [--model DIR] [--seed N]\n');
    return 2;
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) process.exitCode = main(process.argv.slice(2));
