/**
 * Bad model directories: an unsupported architecture, a bad config field, a missing tensor, a
 * tensor whose shape does not match config.json, and malformed safetensors (the io tests cover
 * every header case) — each error names the file, the field, the expected and the found value.
 */
import { describe, expect, it } from 'vitest';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../../src/models/load.js';
import { readSafetensorsFile, serializeSafetensors } from '../../src/io/safetensors.js';
import { STORIES } from '../helpers.js';

function copyModel(edit?: { config?: (c: Record<string, unknown>) => void; tensors?: (t: Map<string, { dtype: string; shape: number[]; data: Uint8Array }>) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'peft-badmodel-'));
  cpSync(STORIES, dir, { recursive: true });
  if (edit?.config) {
    const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    edit.config(c);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(c));
  }
  if (edit?.tensors) {
    const st = readSafetensorsFile(join(STORIES, 'model.safetensors'));
    const t = new Map([...st.tensors].map(([k, e]) => [k, { dtype: e.dtype as string, shape: e.shape, data: new Uint8Array(e.data) }]));
    edit.tensors(t);
    writeFileSync(join(dir, 'model.safetensors'), serializeSafetensors([...t].map(([name, e]) => ({ name, dtype: e.dtype as 'F32', shape: e.shape, data: e.data })), st.metadata));
  }
  return dir;
}

describe('bad model input names the problem', () => {
  it('unsupported architecture', () => {
    const dir = copyModel({ config: (c) => { c.architectures = ['GPTNeoXForCausalLM']; } });
    expect(() => loadModel(dir)).toThrow(/config\.json: architectures: unsupported architecture \(expected LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, .*found GPTNeoXForCausalLM\)/);
  });
  it('invalid config field', () => {
    const dir = copyModel({ config: (c) => { c.num_attention_heads = 'eight'; } });
    expect(() => loadModel(dir)).toThrow(/config\.json: num_attention_heads: invalid value \(expected an integer in \[1, 4096\], found "eight"\)/);
  });
  it('heads not dividing into kv heads', () => {
    const dir = copyModel({ config: (c) => { c.num_key_value_heads = 3; } });
    expect(() => loadModel(dir)).toThrow(/num_key_value_heads.*expected a divisor of 8, found 3/);
  });
  it('invalid config JSON', () => {
    const dir = copyModel();
    writeFileSync(join(dir, 'config.json'), '{"architectures": [');
    expect(() => loadModel(dir)).toThrow(/config\.json: invalid JSON/);
  });
  it('missing tensor', () => {
    const dir = copyModel({ tensors: (t) => t.delete('model.layers.3.mlp.up_proj.weight') });
    expect(() => loadModel(dir)).toThrow(/model\.layers\.3\.mlp\.up_proj\.weight: missing tensor \(expected a tensor of shape \[172,64\], found nothing\)/);
  });
  it('tensor shape not matching config', () => {
    const dir = copyModel({ config: (c) => { c.intermediate_size = 128; } });
    expect(() => loadModel(dir)).toThrow(/model\.safetensors: model\.layers\.0\.mlp\.gate_proj\.weight: tensor shape does not match config\.json \(expected \[128,64\], found \[172,64\]\)/);
  });
  it('unexpected extra tensors', () => {
    const dir = copyModel({ tensors: (t) => t.set('model.layers.9.self_attn.q_proj.weight', { dtype: 'F32', shape: [1], data: new Uint8Array(4) }) });
    expect(() => loadModel(dir)).toThrow(/model\.layers\.9\.self_attn\.q_proj\.weight: unexpected tensors in checkpoint/);
  });
  it('truncated weights file', () => {
    const dir = copyModel();
    const bytes = readFileSync(join(dir, 'model.safetensors'));
    writeFileSync(join(dir, 'model.safetensors'), bytes.subarray(0, bytes.length - 100));
    expect(() => loadModel(dir)).toThrow(/model\.safetensors/);
  });
  it('missing weights', () => {
    const dir = copyModel();
    writeFileSync(join(dir, 'model.safetensors'), '');
    expect(() => loadModel(dir)).toThrow(/model\.safetensors.*(truncated|shorter)/i);
  });
});
