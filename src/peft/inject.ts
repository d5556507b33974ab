/**
 * Which modules an adapter targets, with HF PEFT's rules (`peft/tuners/tuners_utils.py`
 * `check_target_module_exists`, `_maybe_include_all_linear_layers`; `peft/utils/other.py`
 * `get_pattern_key`):
 * - a string is a regular expression that must match the whole module name;
 * - a list matches a module whose name equals an entry or ends with `.` + entry;
 * - `all-linear` means every linear layer except the output head (lm_head);
 * - `layers_to_transform` keeps only modules of those layer indices (first numbered segment);
 * - modules in `modules_to_save` and `exclude_modules` are never targeted.
 */
import { PeftError } from '../errors.js';
import type { CausalLM, LinearModule } from '../models/model.js';
import { linearModules } from '../models/model.js';

/** Longest pattern compiled from a config (module names are < 200 characters; a 100,000-character regex is an attack). */
const MAX_PATTERN_LENGTH = 4096;
const regexCache = new Map<string, RegExp>();

/**
 * `new RegExp(source)` for a pattern taken from a config (`field` names the key): an invalid or
 * oversized expression is a PeftError naming the field instead of a SyntaxError with a stack.
 */
export function configRegex(source: string, field: string, pattern: string = source): RegExp {
  const hit = regexCache.get(source);
  if (hit) return hit;
  if (pattern.length > MAX_PATTERN_LENGTH)
    throw new PeftError('pattern too long', { field, expected: `a regular expression of at most ${MAX_PATTERN_LENGTH} characters`, found: `${pattern.length} characters` });
  let re: RegExp;
  try {
    re = new RegExp(source);
  } catch (e) {
    throw new PeftError('invalid regular expression', { field, expected: 'a valid regular expression (matched against module names)', found: `${JSON.stringify(pattern.slice(0, 60))}: ${(e as Error).message.split(': ').pop()}` });
  }
  if (regexCache.size > 1000) regexCache.clear();
  regexCache.set(source, re);
  return re;
}

export interface TargetSpec {
  target_modules: string | string[] | null;
  layers_to_transform?: number | number[] | null;
  layers_pattern?: string | string[] | null;
  modules_to_save?: string[] | null;
  exclude_modules?: string | string[] | null;
}

function endsWithModule(key: string, target: string): boolean {
  return key === target || key.endsWith(`.${target}`);
}

/** Python-style `re.fullmatch`. */
function fullMatch(pattern: string, key: string, field = 'target_modules'): boolean {
  return configRegex(`^(?:${pattern})$`, field, pattern).test(key);
}

function layerIndex(key: string, layersPattern: string | string[] | null | undefined): number | null {
  const patterns = layersPattern === null || layersPattern === undefined || layersPattern.length === 0
    ? null
    : Array.isArray(layersPattern) ? layersPattern : [layersPattern];
  if (!patterns) {
    const m = /^.*?\.[^.]*\.(\d+)\./.exec(key);
    return m ? Number(m[1]) : null;
  }
  for (const p of patterns) {
    const m = configRegex(`^(?:.*?\\.)?${p}\\.(\\d+)\\.`, 'layers_pattern', p).exec(key);
    if (m) return Number(m[1]);
  }
  return null;
}

/** True when `key` (a module name like `model.layers.0.self_attn.q_proj`) is targeted by spec. */
export function isTargeted(spec: TargetSpec, key: string): boolean {
  const ex = spec.exclude_modules;
  if (ex) {
    if (typeof ex === 'string' ? fullMatch(ex, key, 'exclude_modules') : ex.some((e) => endsWithModule(key, e))) return false;
  }
  if (spec.modules_to_save?.some((m) => configRegex(`(^|.*\\.)${m}($|\\..*)`, 'modules_to_save', m).test(key))) return false;
  const t = spec.target_modules;
  if (t === null) return false;
  if (typeof t === 'string') {
    if (t.toLowerCase() === 'all-linear') return !/(^|\.)lm_head$/.test(key) && matchesLayers(spec, key);
    return fullMatch(t, key);
  }
  if (t.includes(key)) return true;
  if (!t.some((target) => endsWithModule(key, target))) return false;
  return matchesLayers(spec, key);
}

function matchesLayers(spec: TargetSpec, key: string): boolean {
  const idx = spec.layers_to_transform;
  if (idx === null || idx === undefined || (Array.isArray(idx) && idx.length === 0)) return true;
  const li = layerIndex(key, spec.layers_pattern);
  if (li === null) return false;
  return Array.isArray(idx) ? idx.includes(li) : li === idx;
}

/** The linear modules of a model an adapter targets. */
export function targetedLinears(model: CausalLM, spec: TargetSpec): LinearModule[] {
  return linearModules(model).filter((m) => isTargeted(spec, m.name));
}

/** PEFT's `get_pattern_key`: the rank_pattern/alpha_pattern key matching a module name, or null. */
export function patternKey(patterns: Record<string, unknown>, key: string): string | null {
  for (const p of Object.keys(patterns)) if (configRegex(`^(?:.*\\.)?(?:${p})$`, 'rank_pattern / alpha_pattern', p).test(key)) return p;
  return null;
}

/** The module-name suffixes (`q_proj`, …) of a set of modules, sorted — how we save resolved targets. */
export function moduleSuffixes(modules: LinearModule[]): string[] {
  return [...new Set(modules.map((m) => m.name.split('.').pop()!))].sort();
}
