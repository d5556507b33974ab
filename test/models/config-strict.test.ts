/**
 * Strict config.json reading (issue #10/#11): wrong-typed and oversized fields are PeftErrors
 * naming the file, the field, the expected and the found value — never silently defaulted.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/models/registry.js';
import { readJson } from '../helpers.js';
import { join } from 'node:path';
import { FIXTURES } from '../helpers.js';

const base = readJson<Record<string, unknown>>(join(FIXTURES, 'tiny', 'llama-gqa', 'config.json'));
const parse = (patch: Record<string, unknown>, arch?: string): unknown =>
  parseConfig({ ...base, ...patch, ...(arch ? { architectures: [arch] } : {}) }, '/m/config.json');

describe('config.json is read strictly', () => {
  it('the untouched fixture parses', () => {
    expect(() => parse({})).not.toThrow();
  });
  const cases: Array<[string, Record<string, unknown>, RegExp]> = [
    ['a string rope_theta', { rope_parameters: null, rope_theta: '10000' }, /\/m\/config\.json: rope_theta: invalid value \(expected a positive number, found "10000"\)/],
    ['a string in rope_parameters', { rope_parameters: { rope_type: 'default', rope_theta: '1e4' } }, /config\.json: rope_parameters\.rope_theta: invalid value \(expected a positive number, found "1e4"\)/],
    ['an oversized vocab_size', { vocab_size: 1e12 }, /config\.json: vocab_size: invalid value \(expected an integer in \[1, 16777216\], found 1000000000000\)/],
    ['an oversized hidden_size', { hidden_size: 2 ** 40 }, /config\.json: hidden_size: invalid value \(expected an integer in \[1, 131072\]/],
    ['a fractional layer count', { num_hidden_layers: 2.5 }, /config\.json: num_hidden_layers: invalid value \(expected an integer in \[1, 4096\], found 2\.5\)/],
    ['a string tie_word_embeddings', { tie_word_embeddings: 'false' }, /config\.json: tie_word_embeddings: invalid value \(expected true or false, found "false"\)/],
    ['a negative rms_norm_eps', { rms_norm_eps: -1 }, /config\.json: rms_norm_eps: invalid value \(expected a positive number, found -1\)/],
    ['a string eos_token_id', { eos_token_id: '2' }, /config\.json: eos_token_id: invalid value \(expected a token id or a list of token ids, found "2"\)/],
    ['an unknown activation', { hidden_act: 'relu' }, /config\.json: hidden_act: unsupported activation \(expected silu or gelu_pytorch_tanh, found "relu"\)/],
    ['an unknown RoPE type', { rope_parameters: { rope_type: 'yarn', rope_theta: 1e4 } }, /config\.json: rope_parameters\.rope_type: unsupported value \(expected default or linear or llama3, found "yarn"\)/],
    ['a string sliding_window (Mistral)', { sliding_window: '4' }, /config\.json: sliding_window: invalid value \(expected an integer in \[1, 2147483647\], found "4"\)/],
  ];
  for (const [what, patch, re] of cases) {
    it(`refuses ${what}`, () => {
      const arch = what.includes('Mistral') ? 'MistralForCausalLM' : undefined;
      expect(() => parse(patch, arch)).toThrow(re);
    });
  }
  it('refuses layer_types of the wrong length or content (Qwen3)', () => {
    const q = { ...base, architectures: ['Qwen3ForCausalLM'], layer_types: ['full_attention'] };
    expect(() => parseConfig(q, 'c.json')).toThrow(/c\.json: layer_types: invalid value \(expected a list of 2 'full_attention' or 'sliding_attention'/);
    expect(() => parseConfig({ ...q, layer_types: ['full_attention', 'local'] }, 'c.json')).toThrow(/layer_types/);
  });
  it('refuses an unknown architecture, naming the supported ones', () => {
    expect(() => parse({}, 'GPTNeoXForCausalLM')).toThrow(/architectures: unsupported architecture \(expected LlamaForCausalLM, .*Qwen3ForCausalLM.*Gemma3ForCausalLM, found GPTNeoXForCausalLM\)/);
  });
});
