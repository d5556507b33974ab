/**
 * Training benchmark: LoRA (r = 8, alpha = 16, all linear layers) training tokens/s and peak RSS,
 * next to PyTorch + HF PEFT running the identical configuration, from one invocation; plus QLoRA
 * (NF4 base, double quantization) against float32 LoRA with the base-weight bytes.
 *   (a) stories260K shape, batch 8 × 256 tokens;
 *   (b) a randomly initialised Llama with SmolLM2-135M's shape, batch 4 × 256;
 *   (c) the same shape at 4 × 1024 tokens with and without gradient checkpointing (`smol-1k`,
 *       `smol-1k-gc`; no PyTorch column: its 4 × 1024 float32 run needs more memory than a shared
 *       machine should give a benchmark).
 * Each case runs in its own process so peak RSS is its own. Not a test: numbers vary with the
 * machine; the ratios are the point.
 *
 * Run: npm run bench:train [-- --cases stories,smol,smol-qlora,smol-1k,smol-1k-gc --steps 5]
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseConfig } from '../src/models/registry.js';
import { buildModel } from '../src/models/load.js';
import type { TensorEntry } from '../src/io/safetensors.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../src/peft/index.js';
import { quantizeModel, quantizationReport } from '../src/quant/quantize-model.js';
import { batchLoss } from '../src/train/methods.js';
import { train } from '../src/train/trainer.js';
import { weightBytes } from '../src/tensor/index.js';
import { linearModules, setGradientCheckpointing } from '../src/models/model.js';

const SHAPES: Record<string, Record<string, unknown>> = {
  smol: { hidden_size: 576, num_hidden_layers: 30, num_attention_heads: 9, num_key_value_heads: 3, intermediate_size: 1536, vocab_size: 49152, tie_word_embeddings: true },
  stories: { hidden_size: 64, num_hidden_layers: 5, num_attention_heads: 8, num_key_value_heads: 4, intermediate_size: 172, vocab_size: 512, tie_word_embeddings: true },
};

function randomModel(shape: Record<string, unknown>) {
  const raw = { architectures: ['LlamaForCausalLM'], model_type: 'llama', rms_norm_eps: 1e-5, rope_theta: 10000, max_position_embeddings: 2048, hidden_act: 'silu', ...shape };
  const c = parseConfig(raw, 'bench config');
  const H = c.hiddenSize, I = c.intermediateSize, V = c.vocabSize, q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim;
  let s = 12345;
  const rnd = (n: number, std: number, one = false): Uint8Array => {
    const a = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      s = (s * 1664525 + 1013904223) >>> 0;
      a[i] = one ? 1 : ((s / 2 ** 32) * 2 - 1) * std * 1.732;
    }
    return new Uint8Array(a.buffer);
  };
  const w = new Map<string, TensorEntry>();
  const add = (name: string, shapeT: number[], one = false): void => {
    w.set(name, { name, dtype: 'F32', shape: shapeT, data: rnd(shapeT.reduce((a, b) => a * b, 1), 0.02, one), file: 'random' });
  };
  add('model.embed_tokens.weight', [V, H]);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H], true);
    add(`${p}.post_attention_layernorm.weight`, [H], true);
    add(`${p}.self_attn.q_proj.weight`, [q, H]);
    add(`${p}.self_attn.k_proj.weight`, [kv, H]);
    add(`${p}.self_attn.v_proj.weight`, [kv, H]);
    add(`${p}.self_attn.o_proj.weight`, [H, q]);
    add(`${p}.mlp.gate_proj.weight`, [I, H]);
    add(`${p}.mlp.up_proj.weight`, [I, H]);
    add(`${p}.mlp.down_proj.weight`, [H, I]);
  }
  add('model.norm.weight', [H], true);
  return buildModel(c, w, '');
}

/** One case in this process: prints a JSON line. */
function runCase(name: string, B: number, T: number, steps: number, warmup: number, qlora: boolean, gc: boolean): void {
  const model = randomModel(SHAPES[name.replace(/(-qlora|-1k|-gc)+$/, '')]);
  setGradientCheckpointing(model, gc);
  if (qlora) quantizeModel(model, { quantType: 'nf4', doubleQuant: true });
  const peft = new PeftModel(model);
  peft.addAdapter('b', new LoraAdapter(model, parseLoraConfig({ r: 8, lora_alpha: 16, lora_dropout: 0, target_modules: 'all-linear' })));
  const params = peft.trainable('b');
  const V = model.config.vocabSize;
  let s = 7;
  const ids = Int32Array.from({ length: B * T }, () => { s = (s * 1664525 + 1013904223) >>> 0; return 3 + (s % (V - 3)); });
  const labels = new Int32Array(B * T).fill(-100);
  for (let b = 0; b < B; b++) for (let t = 0; t < T - 1; t++) labels[b * T + t] = ids[b * T + t + 1];
  const batch = { batch: { ids, B, T }, labels, numTargets: B * (T - 1), numTokens: B * T };
  const times: number[] = [];
  let last = performance.now();
  train({ params, data: { next: () => batch, state: () => null, restore: () => {} }, loss: (lb, gs, ctx) => batchLoss(model, lb, gs, ctx),
    onStep: () => { const now = performance.now(); times.push(now - last); last = now; } }, { maxSteps: warmup + steps, lr: 1e-3, maxGradNorm: 0 });
  const measured = times.slice(warmup);
  const sec = measured.reduce((a, b) => a + b, 0) / 1000;
  let linearBytes = 0, linearF32 = 0;
  for (const m of linearModules(model)) {
    if (m === model.lmHead) continue;
    linearBytes += weightBytes(m.weight);
    linearF32 += m.inFeatures * m.outFeatures * 4;
  }
  const quant = qlora ? quantizationReport(model) : null;
  console.log(JSON.stringify({
    impl: 'peft-ts', case: name, tokens_per_second: (B * T * measured.length) / sec, step_seconds: sec / measured.length,
    peak_rss_bytes: process.resourceUsage().maxRSS * 1024, linear_weight_bytes: linearBytes, linear_f32_bytes: linearF32,
    bits_per_param: quant?.bitsPerParam ?? 32, base_bytes_total: quant?.baseBytesTotal ?? null,
  }));
}

function spawnJson(cmd: string, args: string[]): Record<string, number | string> | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (r.status !== 0) {
    process.stderr.write(`${cmd} ${args.join(' ')} failed: ${r.stderr.slice(-500)}\n`);
    return null;
  }
  const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  return line ? JSON.parse(line) : null;
}

const argv = process.argv.slice(2);
const arg = (k: string, d: string): string => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
if (argv[0] === '--run-case') {
  const [, name, B, T, steps, warmup] = argv;
  runCase(name, Number(B), Number(T), Number(steps), Number(warmup), name.includes('-qlora'), name.endsWith('-gc'));
} else {
  const steps = arg('--steps', '5'), warmup = arg('--warmup', '2');
  const cases = arg('--cases', 'stories,smol,smol-qlora').split(',');
  const dims: Record<string, [number, number]> = { stories: [8, 256], smol: [4, 256], 'smol-qlora': [4, 256], 'smol-1k': [4, 1024], 'smol-1k-gc': [4, 1024] };
  const py = ['.venv-ref/bin/python'].find((p) => existsSync(p));
  const self = fileURLToPath(import.meta.url);
  const rows: Array<Record<string, number | string> | null> = [];
  const mib = (b: unknown): string => (typeof b === 'number' ? `${(b / 2 ** 20).toFixed(0)} MiB` : 'n/a');
  console.log(`threads: 2 (both); steps measured: ${steps} after ${warmup} warm-up\n`);
  console.log('| case | batch | peft-ts tok/s | PyTorch+PEFT tok/s | ratio | peft-ts peak RSS | PyTorch peak RSS |');
  console.log('|---|---|---:|---:|---:|---:|---:|');
  for (const c of cases) {
    const [B, T] = dims[c];
    const ours = spawnJson(process.execPath, [...process.execArgv, self, '--run-case', c, String(B), String(T), steps, warmup]);
    const ref = c.endsWith('-qlora') || c.includes('-1k') || !py ? null : spawnJson(py, ['bench/ref_train.py', '--case', c, '--batch', String(B), '--seq', String(T), '--steps', steps, '--warmup', warmup]);
    rows.push(ours);
    const ratio = ours && ref ? (Number(ours.tokens_per_second) / Number(ref.tokens_per_second)).toFixed(2) : 'n/a';
    console.log(`| ${c} | ${B}×${T} | ${ours ? Number(ours.tokens_per_second).toFixed(0) : 'fail'} | ${ref ? Number(ref.tokens_per_second).toFixed(0) : 'n/a'} | ${ratio} | ${mib(ours?.peak_rss_bytes)} | ${mib(ref?.peak_rss_bytes)} |`);
  }
  const f32 = rows.find((r) => r?.case === 'smol'), q = rows.find((r) => r?.case === 'smol-qlora');
  if (f32 && q) {
    console.log('\nQLoRA (NF4, double quantization) vs float32 LoRA on the SmolLM2-135M shape:');
    console.log(`  tokens/s: ${Number(q.tokens_per_second).toFixed(0)} vs ${Number(f32.tokens_per_second).toFixed(0)} (${(Number(q.tokens_per_second) / Number(f32.tokens_per_second)).toFixed(2)}x)`);
    console.log(`  quantized linear layers: ${mib(q.linear_weight_bytes)} vs ${mib(f32.linear_weight_bytes)} float32 (${(100 * Number(q.linear_weight_bytes) / Number(f32.linear_f32_bytes)).toFixed(2)}%), ${Number(q.bits_per_param).toFixed(4)} bits/param`);
    console.log(`  whole base (embeddings stay float32): ${mib(q.base_bytes_total)}; peak RSS ${mib(q.peak_rss_bytes)} vs ${mib(f32.peak_rss_bytes)}`);
  }
  const k1 = rows.find((r) => r?.case === 'smol-1k'), gc = rows.find((r) => r?.case === 'smol-1k-gc');
  if (k1 && gc) {
    console.log('\nGradient checkpointing on the SmolLM2-135M shape at 4 × 1024 tokens:');
    console.log(`  peak RSS: ${mib(gc.peak_rss_bytes)} with vs ${mib(k1.peak_rss_bytes)} without; tokens/s ${Number(gc.tokens_per_second).toFixed(0)} vs ${Number(k1.tokens_per_second).toFixed(0)} (${(Number(gc.tokens_per_second) / Number(k1.tokens_per_second)).toFixed(2)}x)`);
  }
}
