/**
 * Memory for bigger bases: LoRA and QLoRA training on random bf16 weights of the Qwen2.5-0.5B and
 * Llama-3.2-1B shapes, with and without gradient checkpointing. The checkpoints are written once
 * (streamed, bf16, as the real ones are stored) under out/bench-models/; every case then runs in a
 * process of its own, so its peak RSS is its own:
 *   - load: per-tensor reads into buffers the model keeps (bf16 stays bf16; QLoRA quantizes each
 *     linear weight as it is read) — peak RSS of the load next to the checkpoint's size;
 *   - train: LoRA r 8, alpha 16, all linear layers, batch B × T random tokens, AdamW;
 *     `steps` measured after `warmup` — peak RSS and tokens/s.
 * Not a test: figures depend on the machine and its load.
 *
 * Run: npx tsx bench/big-models.ts [--shapes qwen2.5-0.5b,llama-3.2-1b] [--methods lora,qlora]
 *        [--gc both|on|off] [--batch 1] [--seq 512] [--steps 2] [--warmup 1]
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, renameSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../src/models/load.js';
import { linearModules, norms, setGradientCheckpointing, type CausalLM } from '../src/models/model.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../src/peft/index.js';
import { loadModelQuantized } from '../src/quant/quantize-model.js';
import { weightBytes } from '../src/tensor/index.js';
import { batchLoss } from '../src/train/methods.js';
import { train } from '../src/train/trainer.js';

const CONFIGS: Record<string, Record<string, unknown>> = {
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', hidden_size: 896, intermediate_size: 4864, num_hidden_layers: 24,
    num_attention_heads: 14, num_key_value_heads: 2, vocab_size: 151936, max_position_embeddings: 32768, rms_norm_eps: 1e-6,
    rope_theta: 1000000, tie_word_embeddings: true, hidden_act: 'silu', torch_dtype: 'bfloat16', use_sliding_window: false,
    bos_token_id: 151643, eos_token_id: 151643,
  },
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16,
    num_attention_heads: 32, num_key_value_heads: 8, head_dim: 64, vocab_size: 128256, max_position_embeddings: 131072,
    rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true, hidden_act: 'silu', torch_dtype: 'bfloat16',
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
    bos_token_id: 128000, eos_token_id: 128001,
  },
};

/** Tensor names and shapes of a Llama/Qwen2 checkpoint; `one` marks norm weights (initialised to 1). */
function tensorList(c: Record<string, number | boolean | string>): Array<{ name: string; shape: number[]; one: boolean }> {
  const H = c.hidden_size as number, I = c.intermediate_size as number, V = c.vocab_size as number;
  const D = (c.head_dim as number | undefined) ?? H / (c.num_attention_heads as number);
  const q = (c.num_attention_heads as number) * D, kv = (c.num_key_value_heads as number) * D;
  const qkvBias = c.model_type === 'qwen2';
  const out: Array<{ name: string; shape: number[]; one: boolean }> = [{ name: 'model.embed_tokens.weight', shape: [V, H], one: false }];
  for (let l = 0; l < (c.num_hidden_layers as number); l++) {
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [H], one: true }, { name: `${p}.post_attention_layernorm.weight`, shape: [H], one: true });
    for (const [n, o] of [['q', q], ['k', kv], ['v', kv]] as const) {
      out.push({ name: `${p}.self_attn.${n}_proj.weight`, shape: [o, H], one: false });
      if (qkvBias) out.push({ name: `${p}.self_attn.${n}_proj.bias`, shape: [o], one: false });
    }
    out.push({ name: `${p}.self_attn.o_proj.weight`, shape: [H, q], one: false });
    out.push({ name: `${p}.mlp.gate_proj.weight`, shape: [I, H], one: false }, { name: `${p}.mlp.up_proj.weight`, shape: [I, H], one: false });
    out.push({ name: `${p}.mlp.down_proj.weight`, shape: [H, I], one: false });
  }
  out.push({ name: 'model.norm.weight', shape: [H], one: true });
  return out;
}

/** Writes a random bf16 checkpoint tensor by tensor (never the whole model in memory). */
function writeCheckpoint(dir: string, shape: string): void {
  if (existsSync(join(dir, 'model.safetensors'))) return;
  mkdirSync(dir, { recursive: true });
  const cfg = CONFIGS[shape];
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  const list = tensorList(cfg as Record<string, number | boolean | string>);
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  let off = 0;
  for (const t of list) {
    const n = t.shape.reduce((a, b) => a * b, 1) * 2;
    header[t.name] = { dtype: 'BF16', shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const tmp = join(dir, 'model.safetensors.tmp');
  const fd = openSync(tmp, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeSync(fd, len);
  writeSync(fd, Buffer.from(json));
  let s = 12345;
  for (const t of list) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const bits = new Uint16Array(n);
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    for (let i = 0; i < n; i++) {
      if (t.one) { bits[i] = 0x3f80; continue; }
      s = (s * 1664525 + 1013904223) >>> 0;
      f[0] = ((s / 2 ** 32) * 2 - 1) * 0.02 * 1.732;
      bits[i] = u[0] >>> 16;
    }
    writeSync(fd, new Uint8Array(bits.buffer));
  }
  closeSync(fd);
  renameSync(tmp, join(dir, 'model.safetensors'));
}

/** Bytes the loaded model holds in its weights (linear weights in their storage, embeddings, norms, biases). */
function modelBytes(model: CausalLM): number {
  let n = 0;
  const e = model.embedTokens;
  n += e.kind === 'f32' ? e.tensor.data.byteLength : e.bits.byteLength;
  for (const m of linearModules(model)) {
    if (m === model.lmHead && model.config.tieWordEmbeddings) continue;
    n += weightBytes(m.weight) + (m.bias?.data.byteLength ?? 0);
  }
  for (const x of norms(model)) n += x.weight.data.byteLength + (x.bias?.data.byteLength ?? 0);
  return n;
}

function runCase(dir: string, method: string, gc: boolean, B: number, T: number, steps: number, warmup: number): void {
  const rss0 = process.memoryUsage().rss;
  const t0 = performance.now();
  const model = method === 'qlora' ? loadModelQuantized(dir, { quantType: 'nf4', dtype: 'auto' }) : loadModel(dir);
  const loadSeconds = (performance.now() - t0) / 1000;
  const loadPeak = process.resourceUsage().maxRSS * 1024;
  const afterLoad = process.memoryUsage().rss;
  setGradientCheckpointing(model, gc);
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
    onStep: () => { const now = performance.now(); times.push(now - last); last = now; } }, { maxSteps: warmup + steps, lr: 1e-4, maxGradNorm: 0 });
  const sec = times.slice(warmup).reduce((a, b) => a + b, 0) / 1000;
  console.log(JSON.stringify({
    method, gc, B, T, rss_before_load: rss0, load_peak_rss: loadPeak, rss_after_load: afterLoad, load_seconds: loadSeconds,
    checkpoint_bytes: statSync(join(dir, 'model.safetensors')).size, model_bytes: modelBytes(model),
    peak_rss: process.resourceUsage().maxRSS * 1024, tokens_per_second: (B * T * steps) / sec, step_seconds: sec / steps,
  }));
}

const argv = process.argv.slice(2);
const arg = (k: string, d: string): string => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
if (argv[0] === '--run-case') {
  const [, dir, method, gc, B, T, steps, warmup] = argv;
  runCase(dir, method, gc === '1', Number(B), Number(T), Number(steps), Number(warmup));
} else {
  const shapes = arg('--shapes', 'qwen2.5-0.5b,llama-3.2-1b').split(',');
  const methods = arg('--methods', 'lora,qlora').split(',');
  const gcs = { both: [false, true], on: [true], off: [false] }[arg('--gc', 'both') as 'both'] ?? [false, true];
  const B = arg('--batch', '1'), T = arg('--seq', '512'), steps = arg('--steps', '2'), warmup = arg('--warmup', '1');
  const self = fileURLToPath(import.meta.url);
  const mib = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MiB`;
  console.log(`batch ${B}×${T} tokens, ${steps} steps measured after ${warmup} warm-up, PEFT_NUM_THREADS=${process.env.PEFT_NUM_THREADS ?? 'all cores'}\n`);
  console.log('| shape | method | checkpointing | checkpoint (bf16) | model in memory | load peak RSS | train peak RSS | tokens/s |');
  console.log('|---|---|---|---:|---:|---:|---:|---:|');
  for (const shape of shapes) {
    const dir = join('out', 'bench-models', shape);
    writeCheckpoint(dir, shape);
    for (const method of methods) for (const gc of gcs) {
      const r = spawnSync(process.execPath, [...process.execArgv, self, '--run-case', dir, method, gc ? '1' : '0', B, T, steps, warmup], { encoding: 'utf8', maxBuffer: 1 << 24 });
      const line = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).pop();
      if (r.status !== 0 || !line) {
        console.log(`| ${shape} | ${method} | ${gc ? 'on' : 'off'} | failed: ${r.stderr.trim().split('\n').pop()} |`);
        continue;
      }
      const j = JSON.parse(line) as Record<string, number>;
      console.log(`| ${shape} | ${method} | ${gc ? 'on' : 'off'} | ${mib(j.checkpoint_bytes)} | ${mib(j.model_bytes)} | ${mib(j.load_peak_rss)} (+${mib(j.load_peak_rss - j.rss_before_load)}) | ${mib(j.peak_rss)} | ${j.tokens_per_second.toFixed(1)} |`);
    }
  }
}
