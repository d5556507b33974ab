/**
 * Strict readers of saved adapter configs: defaults are for creating an adapter, never for reading
 * a saved one. Each method's shape- or output-defining key missing from adapter_config.json is a
 * PeftError naming the file and the key, and nothing is loaded.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeftError } from '../../src/errors.js';
import { exportLoraGguf } from '../../src/export/gguf-lora.js';
import { loadModel } from '../../src/models/load.js';
import {
  createBottleneckAdapter, createIa3Adapter, createPrefixAdapter, createPromptAdapter, loadAdapter, LoraAdapter, parseLoraConfig, PeftModel,
  saveAdapter, SAVED_CONFIG_REQUIRED_KEYS, type AdapterMethod, type PeftType,
} from '../../src/peft/index.js';
import { STORIES } from '../helpers.js';

const work = mkdtempSync(join(tmpdir(), 'peft-saved-cfg-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));
const model = loadModel(STORIES);

const makers: Record<PeftType, () => AdapterMethod> = {
  LORA: () => new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 16, target_modules: ['q_proj', 'v_proj'] })),
  IA3: () => createIa3Adapter(model, {}),
  PREFIX_TUNING: () => createPrefixAdapter(model, { num_virtual_tokens: 3 }),
  PROMPT_TUNING: () => createPromptAdapter(model, { num_virtual_tokens: 3 }),
  BOTTLENECK: () => createBottleneckAdapter(model, { reduction_factor: 8, non_linearity: 'gelu', placement: 'pfeiffer' }),
};

describe('strict saved-config readers', () => {
  for (const type of Object.keys(makers) as PeftType[]) {
    it(`strict saved-config reader: a ${type} adapter_config.json missing a required key is refused naming file and key`, () => {
      const dir = join(work, type);
      saveAdapter(makers[type](), dir, STORIES);
      const cfgFile = join(dir, 'adapter_config.json');
      const full = JSON.parse(readFileSync(cfgFile, 'utf8')) as Record<string, unknown>;
      // the complete saved config loads
      expect(() => loadAdapter(new PeftModel(loadModel(STORIES)), dir)).not.toThrow();
      expect(SAVED_CONFIG_REQUIRED_KEYS[type].length).toBeGreaterThan(0);
      for (const key of SAVED_CONFIG_REQUIRED_KEYS[type]) {
        for (const value of [undefined, null]) {
          const cfg = { ...full };
          if (value === undefined) delete cfg[key];
          else cfg[key] = null;
          writeFileSync(cfgFile, JSON.stringify(cfg));
          const peft = new PeftModel(loadModel(STORIES));
          let err: unknown;
          try {
            loadAdapter(peft, dir);
          } catch (e) {
            err = e;
          }
          expect(err, `${type} without ${key}`).toBeInstanceOf(PeftError);
          expect((err as Error).message).toContain(`${cfgFile}: ${key}: ${key} is required`);
          expect(peft.adapters.size).toBe(0);
        }
      }
      writeFileSync(cfgFile, JSON.stringify(full));
    });
  }

  it('strict saved-config reader: LoRA without lora_alpha no longer loads with alpha 8; creating one still defaults', () => {
    const dir = join(work, 'LORA-noalpha');
    saveAdapter(makers.LORA(), dir, STORIES);
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    delete cfg.lora_alpha;
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    expect(() => loadAdapter(new PeftModel(loadModel(STORIES)), dir)).toThrow(/adapter_config\.json: lora_alpha: lora_alpha is required in a saved LORA adapter config/);
    expect(() => exportLoraGguf(dir, join(work, 'x.gguf'), STORIES)).toThrow(/lora_alpha: lora_alpha is required/);
    expect(parseLoraConfig({ r: 4 }).lora_alpha).toBe(8); // PEFT's LoraConfig default, for users creating an adapter
  });
});
