/** peft deploy: vLLM filesystem-resolver layout and launch command; llama.cpp GGUF + llama-server line; refusals. */
import { describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseGguf } from '../../src/io/gguf.js';
import { deployLlamaCpp, deployVllm } from '../../src/lifecycle/deploy.js';
import { FIXTURES, STORIES } from '../helpers.js';

const LORA = join(FIXTURES, 'stories260K');

describe('peft deploy', () => {
  it('vLLM: loras/NAME with base_model_name_or_path = the served name, and the launch command', () => {
    const out = mkdtempSync(join(tmpdir(), 'peft-deploy-'));
    const r = deployVllm(LORA, out, { base: 'org/stories260K', servedModelName: 'stories', loraName: 'tales', baseDir: STORIES });
    const cfg = JSON.parse(readFileSync(join(out, 'loras', 'tales', 'adapter_config.json'), 'utf8'));
    expect(cfg.base_model_name_or_path).toBe('stories');
    expect(cfg.peft_type).toBe('LORA');
    expect(readFileSync(join(out, 'loras', 'tales', 'adapter_model.safetensors')).equals(readFileSync(join(LORA, 'adapter_model.safetensors')))).toBe(true);
    expect(r.command).toBe(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_PLUGINS=lora_filesystem_resolver VLLM_LORA_RESOLVER_CACHE_DIR=${join(out, 'loras')} vllm serve org/stories260K --served-model-name stories --enable-lora --max-lora-rank 8 --max-loras 4`);
    expect(readFileSync(join(out, 'launch.sh'), 'utf8')).toContain(r.command);
    expect(statSync(join(out, 'launch.sh')).mode & 0o111).not.toBe(0);
  });

  it('vLLM refuses modules_to_save; llama.cpp writes the GGUF adapter and the llama-server line', () => {
    const out = mkdtempSync(join(tmpdir(), 'peft-deploy-'));
    expect(() => deployVllm(join(FIXTURES, 'peft', 'lora-bias-mts'), out, { base: 'b', servedModelName: 'b', loraName: 'x', baseDir: join(FIXTURES, 'tiny', 'llama-gqa') }))
      .toThrow(/cannot be deployed to vLLM: vLLM only supports modules_to_save being None/);
    const r = deployLlamaCpp(LORA, out, { baseDir: STORIES, loraName: 'tales' });
    expect(r.command).toBe(`llama-server -m ${join(STORIES, 'stories260K.gguf')} --lora ${join(out, 'tales.gguf')}`);
    const g = parseGguf(new Uint8Array(readFileSync(join(out, 'tales.gguf'))));
    const kv = new Map(g.kvs.map((m) => [m.key, m.value]));
    expect(kv.get('general.type')).toBe('adapter');
    expect(kv.get('adapter.type')).toBe('lora');
    expect(kv.get('general.name')).toBe('tales');
    const noGguf = join(out, 'base');
    mkdirSync(noGguf);
    for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(STORIES, f), join(noGguf, f));
    expect(() => deployLlamaCpp(LORA, out, { baseDir: noGguf, loraName: 't' })).toThrow(/--base-gguf: which GGUF base model/);
    expect(existsSync(join(out, 'launch.sh'))).toBe(true);
  });
});
