/**
 * The architecture registry: `config.architectures[0]` → its family (config parser, module map,
 * block). Adding an architecture = one family file in src/models/ and one line here.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PeftError } from '../errors.js';
import { readJsonObject } from '../io/files.js';
import { architectureOf, ConfigReader, readConfigFiles, type Json, type ModelConfig } from './config.js';
import { gemmaFamily } from './gemma.js';
import { gpt2Family } from './gpt2.js';
import { llamaFamily } from './llama.js';
import type { Family } from './model.js';
import { phi3Family } from './phi3.js';
import { qwenFamily } from './qwen.js';
import { smollm3Family } from './smollm3.js';

export const FAMILIES: readonly Family[] = [llamaFamily, qwenFamily, smollm3Family, phi3Family, gpt2Family, gemmaFamily];

/** Every `architectures[0]` value a model may have. */
export const SUPPORTED_ARCHITECTURES: readonly string[] = FAMILIES.flatMap((f) => f.architectures);

/** The family of an architecture name, or a PeftError naming the file and the supported list. */
export function familyOf(architecture: string, file = 'config.json'): Family {
  const f = FAMILIES.find((x) => x.architectures.includes(architecture));
  if (!f) throw new PeftError('unsupported architecture', { file, field: 'architectures', expected: SUPPORTED_ARCHITECTURES.join(', '), found: architecture });
  return f;
}

/** Validates a parsed config.json object with its family's parser; `file` is used in error messages. */
export function parseConfig(raw: Json, file: string, generationConfig: Json = {}): ModelConfig {
  const arch = architectureOf(raw, file, SUPPORTED_ARCHITECTURES);
  return familyOf(arch, file).parseConfig(new ConfigReader(raw, file), arch, generationConfig);
}

/** Reads and validates `dir/config.json` (and EOS ids from `generation_config.json` when present). */
export function loadConfig(dir: string): ModelConfig {
  // regular file, bounded, nesting-capped (a 5,000-deep value overflowed the stack in an error message)
  if (existsSync(join(dir, 'config.json'))) readJsonObject(join(dir, 'config.json'), { what: 'config.json (a JSON object)' });
  const { raw, file, gen } = readConfigFiles(dir);
  return parseConfig(raw, file, gen);
}
