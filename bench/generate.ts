/**
 * Generation benchmark: greedy decoding tokens/s, peft-ts next to llama.cpp (node-llama-cpp, CPU
 * build) from one invocation with the same thread count, at batch 1 and batch 8, prompt 128 tokens,
 * 256 new tokens, on
 *   - stories260K (bundled; llama.cpp reads the bundled stories260K.gguf),
 *   - tinystories656K (bundled, real weights; written to GGUF by our own writer like the next one;
 *     its BPE vocabulary is replaced in the GGUF by stories260K's SPM tokens padded to 2048 names —
 *     the bench feeds token ids, so only the vocabulary size matters to llama.cpp), and
 *   - the SmolLM2-135M shape with random float32 weights, written to GGUF by our own writer
 *     (src/io/gguf.ts; q/k rows permuted as convert_hf_to_gguf does),
 * each for the base model and with an unmerged LoRA (r 8, all linear layers, random nonzero B;
 * llama.cpp gets the same adapter exported by src/export/gguf-lora.ts).
 *
 * Decode tokens/s counts the tokens after each sequence's first (prefill excluded). Decoding is
 * bound by reading the weights once per step: the table gives the achieved GB/s of weight reads
 * (all linear weights + lm_head, float32, per decode step) next to the machine's memcpy bandwidth
 * (read + write bytes, measured here). EOS is ignored so every run makes 256 tokens.
 *
 * Run: npm run bench:generate [-- --cases stories,tinystories,smol --new 256 --prompt 128 --threads 2]
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../src/native/index.js';
import { loadModel } from '../src/models/load.js';
import { linearModules, type CausalLM } from '../src/models/model.js';
import { generateBatch } from '../src/generate/generate.js';
import { LoraAdapter, parseLoraConfig, PeftModel } from '../src/peft/index.js';
import { exportLoraAdapterGguf, permuteRowsForGguf } from '../src/export/gguf-lora.js';
import { readGgufFile, writeGgufFile, type GgufKV, type GgufTensorToWrite } from '../src/io/gguf.js';
import { weightBytes, weightToF32 } from '../src/tensor/index.js';
import { DEFAULT_MODEL, PACKAGE_ROOT } from '../src/paths.js';
import { randomModel, SHAPES } from './random-model.js';

const argv = process.argv.slice(2);
const arg = (k: string, d: string): string => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
const NEW = Number(arg('--new', '256')), PROMPT = Number(arg('--prompt', '128')), THREADS = Number(arg('--threads', '2'));
const cases = arg('--cases', 'stories,tinystories,smol').split(',');
const batches = arg('--batches', '1,8').split(',').map(Number);
native.setNumThreads(THREADS);
const tmp = mkdtempSync(join(tmpdir(), 'peft-bench-gen-'));

/** memcpy bandwidth (read + write bytes per second) over a 256 MiB buffer, best of 5. */
function memcpyGBs(): number {
  const n = 64 * 2 ** 20;
  const a = new Float32Array(n).fill(1), b = new Float32Array(n).fill(0); // pages faulted in before timing
  let best = 0;
  for (let r = 0; r < 5; r++) {
    const t0 = performance.now();
    b.set(a);
    best = Math.max(best, (2 * n * 4) / ((performance.now() - t0) / 1000) / 1e9);
  }
  return best;
}

/** Our model as a llama-architecture GGUF (F32), tokenizer from the bundled stories260K.gguf padded to the vocab. */
function writeModelGguf(model: CausalLM, path: string): void {
  const c = model.config;
  const src = readGgufFile(join(DEFAULT_MODEL, 'stories260K.gguf'));
  const V = c.vocabSize;
  // llama.cpp's SPM tokenizer needs the byte tokens (<0x0A> …): keep stories260K's 512, pad with unique names
  const srcTokens = src.kvs.find((k) => k.key === 'tokenizer.ggml.tokens')!.value as string[];
  const srcTypes = src.kvs.find((k) => k.key === 'tokenizer.ggml.token_type')!.value as number[];
  const tokens = Array.from({ length: V }, (_, i) => (i < srcTokens.length ? srcTokens[i] : `<t${i}>`));
  const types = tokens.map((_, i) => (i < srcTypes.length ? srcTypes[i] : 1));
  const kvs: GgufKV[] = [
    { key: 'general.architecture', value: { type: 'STRING', value: 'llama' } },
    { key: 'general.name', value: { type: 'STRING', value: 'peft-ts bench' } },
    { key: 'llama.context_length', value: { type: 'UINT32', value: 2048 } },
    { key: 'llama.embedding_length', value: { type: 'UINT32', value: c.hiddenSize } },
    { key: 'llama.feed_forward_length', value: { type: 'UINT32', value: c.intermediateSize } },
    { key: 'llama.attention.head_count', value: { type: 'UINT32', value: c.numHeads } },
    { key: 'llama.attention.head_count_kv', value: { type: 'UINT32', value: c.numKvHeads } },
    { key: 'llama.block_count', value: { type: 'UINT32', value: c.numLayers } },
    { key: 'llama.rope.dimension_count', value: { type: 'UINT32', value: c.headDim } },
    { key: 'llama.rope.freq_base', value: { type: 'FLOAT32', value: c.rope.theta } },
    { key: 'llama.attention.layer_norm_rms_epsilon', value: { type: 'FLOAT32', value: c.rmsNormEps } },
    { key: 'tokenizer.ggml.model', value: { type: 'STRING', value: 'llama' } },
    { key: 'tokenizer.ggml.tokens', value: { type: 'ARRAY', itemType: 'STRING', value: tokens } },
    { key: 'tokenizer.ggml.scores', value: { type: 'ARRAY', itemType: 'FLOAT32', value: tokens.map(() => 0) } },
    { key: 'tokenizer.ggml.token_type', value: { type: 'ARRAY', itemType: 'INT32', value: types } },
    { key: 'tokenizer.ggml.bos_token_id', value: { type: 'UINT32', value: 1 } },
    { key: 'tokenizer.ggml.eos_token_id', value: { type: 'UINT32', value: 2 } },
  ];
  const t: GgufTensorToWrite[] = [];
  const emb = model.embedTokens.kind === 'f32' ? model.embedTokens.tensor.data : weightToF32(model.lmHead.weight);
  t.push({ name: 'token_embd.weight', shape: [V, c.hiddenSize], type: 'F32', data: emb });
  t.push({ name: 'output_norm.weight', shape: [c.hiddenSize], type: 'F32', data: model.norm.weight.data });
  for (const l of model.layers) {
    const p = `blk.${l.index}`;
    const lin = (role: string) => l.linears[role];
    const w = (role: string) => weightToF32(lin(role).weight);
    const shape = (role: string) => [lin(role).outFeatures, lin(role).inFeatures];
    t.push({ name: `${p}.attn_norm.weight`, shape: [c.hiddenSize], type: 'F32', data: l.norms.input_layernorm.weight.data });
    t.push({ name: `${p}.attn_q.weight`, shape: shape('q'), type: 'F32', data: permuteRowsForGguf(w('q'), lin('q').outFeatures, lin('q').inFeatures, c.numHeads) });
    t.push({ name: `${p}.attn_k.weight`, shape: shape('k'), type: 'F32', data: permuteRowsForGguf(w('k'), lin('k').outFeatures, lin('k').inFeatures, c.numKvHeads) });
    t.push({ name: `${p}.attn_v.weight`, shape: shape('v'), type: 'F32', data: w('v') });
    t.push({ name: `${p}.attn_output.weight`, shape: shape('o'), type: 'F32', data: w('o') });
    t.push({ name: `${p}.ffn_norm.weight`, shape: [c.hiddenSize], type: 'F32', data: l.norms.post_attention_layernorm.weight.data });
    t.push({ name: `${p}.ffn_gate.weight`, shape: shape('gate'), type: 'F32', data: w('gate') });
    t.push({ name: `${p}.ffn_up.weight`, shape: shape('up'), type: 'F32', data: w('up') });
    t.push({ name: `${p}.ffn_down.weight`, shape: shape('down'), type: 'F32', data: w('down') });
  }
  writeGgufFile(path, kvs, t);
}

type Run = { decodeTps: number; gbs: number };

function prompts(B: number, V: number): number[][] {
  let s = 11;
  return Array.from({ length: B }, () => Array.from({ length: PROMPT }, () => { s = (s * 1664525 + 1013904223) >>> 0; return 3 + (s % (V - 3)); }));
}

function oursRun(model: CausalLM, B: number, stepBytes: number): Run {
  const ps = prompts(B, model.config.vocabSize);
  generateBatch(model, ps.map((ids) => ({ ids: ids.slice(0, 16) })), { maxNewTokens: 16, temperature: 0 }); // JIT warm-up
  let calls = 0, tFirst = 0;
  const t0 = performance.now();
  generateBatch(model, ps.map((ids) => ({ ids })), { maxNewTokens: NEW, temperature: 0, onToken: () => { if (++calls === B) tFirst = performance.now(); } });
  const dt = (performance.now() - tFirst) / 1000;
  void t0;
  return { decodeTps: (B * (NEW - 1)) / dt, gbs: (stepBytes * (NEW - 1)) / dt / 1e9 };
}

type Llama = Awaited<ReturnType<typeof import('node-llama-cpp')['getLlama']>>;
async function llamaRun(llama: Llama, gguf: string, lora: string | null, B: number, V: number, stepBytes: number): Promise<Run> {
  const model = await llama.loadModel({ modelPath: gguf });
  try {
    const ctx = await model.createContext({ contextSize: (PROMPT + NEW + 8) * B, sequences: B, threads: THREADS, batchSize: Math.max(512, PROMPT * B),
      ...(lora ? { lora: { adapters: [{ filePath: lora, scale: 1 }] } } : {}) });
    try {
      const ps = prompts(B, V);
      let firsts = 0, tFirst = 0;
      await Promise.all(ps.map(async (ids, b) => {
        const seq = ctx.getSequence();
        let n = 0;
        for await (const tk of seq.evaluate(ids as import('node-llama-cpp').Token[], { temperature: 0, yieldEogToken: true })) {
          void tk;
          if (++n === 1 && ++firsts === B) tFirst = performance.now();
          if (n >= NEW) break;
        }
        void b;
      }));
      const dt = (performance.now() - tFirst) / 1000;
      return { decodeTps: (B * (NEW - 1)) / dt, gbs: (stepBytes * (NEW - 1)) / dt / 1e9 };
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

const nlc = await import('node-llama-cpp');
const llama = await nlc.getLlama({ gpu: false, build: 'never', logLevel: nlc.LlamaLogLevel.error, progressLogs: false });
const bw = memcpyGBs();
const info = native.kernelInfo();
console.log(`peft-ts kernels: ${info.gemm}; llama.cpp: node-llama-cpp ${(JSON.parse(readFileSync('node_modules/node-llama-cpp/package.json', 'utf8')) as { version: string }).version} (CPU); threads: ${THREADS} both`);
console.log(`CPU flags: ${Object.entries(info.cpu).filter(([, v]) => v).map(([k]) => k).join(' ')}; memcpy bandwidth (read+write): ${bw.toFixed(1)} GB/s; load average before: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
console.log(`prompt ${PROMPT} tokens, ${NEW} new tokens, greedy; decode tokens/s (after the first token); GB/s = weight bytes read per decode step × steps / time\n`);
console.log('| model | adapter | batch | peft-ts tok/s | llama.cpp tok/s | ratio | peft-ts GB/s | llama.cpp GB/s |');
console.log('|---|---|---:|---:|---:|---:|---:|---:|');
for (const name of cases) {
  const model = name === 'stories' ? loadModel(DEFAULT_MODEL)
    : name === 'tinystories' ? loadModel(join(PACKAGE_ROOT, 'models', 'tinystories656K'))
    : randomModel(SHAPES[name]);
  model.config.eosTokenIds = [];
  const gguf = name === 'stories' ? join(DEFAULT_MODEL, 'stories260K.gguf') : join(tmp, `${name}.gguf`);
  if (name !== 'stories') writeModelGguf(model, gguf);
  const stepBytes = linearModules(model).reduce((s, m) => s + weightBytes(m.weight), 0);
  const peft = new PeftModel(model);
  const adapter = new LoraAdapter(model, parseLoraConfig({ r: 8, lora_alpha: 16, lora_dropout: 0, target_modules: 'all-linear', init_lora_weights: false }), 5);
  const loraFile = join(tmp, `${name}-lora.gguf`);
  exportLoraAdapterGguf(adapter, loraFile);
  for (const withLora of [false, true]) {
    if (withLora) peft.addAdapter('bench', adapter);
    for (const B of batches) {
      const ours = oursRun(model, B, stepBytes);
      const theirs = await llamaRun(llama, gguf, withLora ? loraFile : null, B, model.config.vocabSize, stepBytes);
      console.log(`| ${name} | ${withLora ? 'LoRA r8 unmerged' : 'base'} | ${B} | ${ours.decodeTps.toFixed(0)} | ${theirs.decodeTps.toFixed(0)} | ${(ours.decodeTps / theirs.decodeTps).toFixed(2)} | ${ours.gbs.toFixed(1)} | ${theirs.gbs.toFixed(1)} |`);
    }
  }
}
console.log(`\nload average after: ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
