/**
 * peft doctor: data masks and counts; adapter checks (keys, base, shapes, logit probe) on HF PEFT
 * fixtures and broken copies of them; runtime limits for vLLM, llama.cpp and HF PEFT.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { readSafetensorsFile, toFloat32, writeSafetensorsFile } from '../../src/io/safetensors.js';
import { adapterKeyModule, doctorAdapter, doctorData, exitCode, targetChecks } from '../../src/lifecycle/doctor.js';
import { loadModel } from '../../src/models/load.js';
import { FIXTURES, STORIES } from '../helpers.js';

const LORA = join(FIXTURES, 'stories260K');
const TINY = join(FIXTURES, 'tiny', 'llama-gqa');

/** A copy of an adapter with its tensors (and optionally config) rewritten. */
function edited(name: string, src: string, tensor: (k: string, d: Float32Array) => { k: string; d: Float32Array }, cfg: (c: Record<string, unknown>) => void = () => {}): string {
  const d = join(mkdtempSync(join(tmpdir(), 'peft-doc-')), name);
  mkdirSync(d);
  const c = JSON.parse(readFileSync(join(src, 'adapter_config.json'), 'utf8'));
  cfg(c);
  writeFileSync(join(d, 'adapter_config.json'), JSON.stringify(c));
  const ts = [...readSafetensorsFile(join(src, 'adapter_model.safetensors')).tensors].map(([k, e]) => { const r = tensor(k, toFloat32(e).slice()); return { name: r.k, dtype: 'F32' as const, shape: e.shape, data: r.d }; });
  writeSafetensorsFile(join(d, 'adapter_model.safetensors'), ts, { format: 'pt' });
  return d;
}

const sev = (fs: Array<{ check: string; severity: string }>, check: string): string | undefined => fs.find((f) => f.check === check)?.severity;

describe('peft doctor', () => {
  const tok = loadTokenizer(STORIES);

  it('data: tokens with their loss mask, dropped and truncated counts; no target left is an error', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-doc-data-'));
    const f = join(dir, 'pc.jsonl');
    writeFileSync(f, [JSON.stringify({ prompt: 'Q: hi\nA:', completion: ' hello there' }), JSON.stringify({ prompt: 'word '.repeat(100), completion: ' x' }), JSON.stringify({ prompt: 'Q: ok\nA:', completion: ' fine '.repeat(40) })].join('\n'));
    const r = doctorData(f, tok, { maxSeqLength: 32, numExamples: 1 });
    expect(r.stats.droppedTooLong).toBe(1);
    expect(r.stats.truncated).toBe(1);
    const toks = r.examples[0].tokens;
    expect(toks.map((t) => t.text).join('')).toBe('<s> Q: hi\nA: hello there</s>');
    expect(toks.filter((t) => t.learned).map((t) => t.text).join('')).toBe(' hello there</s>');
    expect(sev(r.findings, 'dropped')).toBe('warning');
    expect(exitCode(r.findings)).toBe(0);
    expect(exitCode(r.findings, true)).toBe(2);
    const none = join(dir, 'none.jsonl');
    writeFileSync(none, JSON.stringify({ prompt: 'word '.repeat(100), completion: ' x' }));
    const r2 = doctorData(none, tok, { maxSeqLength: 32 });
    expect(sev(r2.findings, 'targets')).toBe('error');
    expect(exitCode(r2.findings)).toBe(1);
  });

  it('adapter: an HF PEFT LoRA passes; zero B, foreign keys and wrong shapes are errors', () => {
    const model = loadModel(STORIES);
    const good = doctorAdapter(LORA, model, STORIES, tok);
    expect(good.findings.filter((f) => f.severity !== 'ok')).toEqual([]);
    expect(good.maxAbsLogitDelta).toBeGreaterThan(1e-3);
    const zero = doctorAdapter(edited('zero', LORA, (k, d) => ({ k, d: k.includes('lora_B') ? d.fill(0) : d })), model, STORIES, tok);
    expect(sev(zero.findings, 'effect')).toBe('error');
    expect(zero.maxAbsLogitDelta).toBe(0);
    const keys = doctorAdapter(edited('keys', LORA, (k, d) => ({ k: k.replace('self_attn.q_proj', 'attn.c_attn'), d })), model, STORIES, tok);
    expect(sev(keys.findings, 'keys')).toBe('error');
    expect(sev(keys.findings, 'shapes')).toBe('error');
    const rank = doctorAdapter(edited('rank', LORA, (k, d) => ({ k, d }), (c) => { c.r = 2; }), model, STORIES, tok);
    expect(rank.findings.find((f) => f.check === 'shapes')?.message).toMatch(/r: adapter config rank does not match the saved tensors/);
    expect(adapterKeyModule('base_model.model.model.layers.0.mlp.down_proj.lora_A.weight')).toBe('model.layers.0.mlp.down_proj');
  });

  it('targets: vLLM rank / modules_to_save, llama.cpp LoRA only, HF PEFT types', () => {
    expect(targetChecks(LORA, 'vllm', { baseDir: STORIES }).every((f) => f.severity === 'ok')).toBe(true);
    const r = targetChecks(LORA, 'vllm', { baseDir: STORIES, maxLoraRank: 2 });
    expect(r.find((f) => f.check === 'vllm:rank')?.severity).toBe('error');
    const mts = targetChecks(join(FIXTURES, 'peft', 'lora-bias-mts'), 'vllm', { baseDir: TINY });
    expect(mts.find((f) => f.check === 'vllm:modules_to_save')?.severity).toBe('error');
    expect(targetChecks(LORA, 'llama.cpp', { baseDir: STORIES })[0]).toMatchObject({ check: 'llama.cpp:gguf', severity: 'ok' });
    expect(targetChecks(join(FIXTURES, 'peft', 'prefix'), 'llama.cpp', { baseDir: TINY })[0].severity).toBe('error');
    expect(targetChecks(join(FIXTURES, 'peft', 'ia3'), 'peft', { baseDir: TINY }).every((f) => f.severity === 'ok')).toBe(true);
    const bn = edited('bn', LORA, (k, d) => ({ k, d }), (c) => { c.peft_type = 'BOTTLENECK'; });
    expect(targetChecks(bn, 'peft', { baseDir: STORIES })[0].severity).toBe('error');
  });
});
