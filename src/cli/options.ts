/**
 * Shared CLI plumbing: an optional JSON/YAML config file whose keys fill any option not given
 * on the command line (flags override the file), and number/list parsers that name the flag in
 * their errors.
 */
import { resolveModel } from '../paths.js';
import { InvalidArgumentError, type Command, type Option } from 'commander';
import { parse as parseYaml } from 'yaml';
import { PeftError } from '../errors.js';
import { jsonDepth, parseJsonText, readTextFile, shortMessage } from '../io/files.js';

export function int(name: string, min = 0) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

export function float(name: string, min = -Infinity, max = Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}], got "${v}"`);
    return n;
  };
}

export function list(v: string): string[] {
  return v.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
}

export function intList(name: string) {
  return (v: string): number[] => list(v).map((s) => int(name)(s));
}

/** Reads a JSON or YAML config file into an object with camelCase keys (snake/kebab accepted). */
export function readConfigFile(path: string): Record<string, unknown> {
  const text = readTextFile(path, { maxBytes: 16 * 2 ** 20, what: 'a JSON or YAML config file' });
  let v: unknown;
  if (path.endsWith('.json')) v = parseJsonText(text, path, { what: 'a JSON config file', maxDepth: 64 });
  else {
    if (jsonDepth(text) > 64) throw new PeftError('config file nested too deeply', { file: path, expected: 'at most 64 levels', found: `${jsonDepth(text)} levels` });
    try {
      v = parseYaml(text, { maxAliasCount: 100 });
    } catch (e) {
      throw new PeftError('invalid config file', { file: path, expected: 'JSON or YAML', found: shortMessage(e) });
    }
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftError('config file must hold a mapping of option names to values', { file: path, found: v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v });
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) out[k.replace(/[-_]([a-z])/g, (_, c: string) => c.toUpperCase())] = val;
  return out;
}

/**
 * One `--config` value through the same checks as its flag: booleans must be true/false; values of
 * options with a parser (numbers, lists) go through that parser (a list may be a YAML/JSON list or
 * a comma-separated string); options with fixed choices must name one; other options take a string.
 * Throws a PeftError naming the file, the key and the flag.
 */
function configValue(opt: Option, key: string, v: unknown, file: string): unknown {
  const flag = opt.long ?? opt.flags;
  const bad = (expected: string): never => {
    throw new PeftError('invalid value in config file', { file, field: `${key} (${flag})`, expected, found: describeValue(v) });
  };
  if (v === null || v === undefined) return undefined;
  if (opt.isBoolean() || opt.negate) {
    if (typeof v !== 'boolean') bad('true or false');
    // a negated flag (--no-pack) stores under its positive name: the file gives the positive value
    return v;
  }
  let text: string;
  if (typeof v === 'string') text = v;
  else if (typeof v === 'number' && Number.isFinite(v)) text = String(v);
  else if (Array.isArray(v) && v.every((x) => typeof x === 'string' || (typeof x === 'number' && Number.isFinite(x)))) text = v.join(',');
  else return bad('a string, a number or a list of them');
  if (opt.argChoices && !opt.argChoices.includes(text)) bad(opt.argChoices.join(' | '));
  const parse = opt.parseArg as ((value: string, previous: unknown) => unknown) | undefined;
  if (parse) {
    try {
      return parse(text, undefined);
    } catch (e) {
      return bad(shortMessage(e));
    }
  }
  if (typeof v !== 'string') bad('a string (quote it in YAML)');
  return v;
}

function describeValue(v: unknown): string {
  let t: string;
  try {
    t = JSON.stringify(v) ?? String(v);
  } catch {
    t = String(v);
  }
  return t.length > 60 ? `${t.slice(0, 57)}...` : t;
}

/**
 * Merges a `--config` file into a command's options: keys the user did not pass on the command
 * line take the file's value, checked and converted as the flag's own value would be; unknown keys
 * are an error naming the key.
 */
export function withConfigFile<T extends Record<string, unknown>>(cmd: Command, opts: T): T {
  const path = opts.config as string | undefined;
  if (!path) return opts;
  const file = readConfigFile(path);
  const byName = new Map<string, Option>();
  for (const o of cmd.options) if (!byName.has(o.attributeName()) || !o.negate) byName.set(o.attributeName(), o);
  const merged: Record<string, unknown> = { ...opts };
  for (const [k, v] of Object.entries(file)) {
    const opt = byName.get(k);
    if (!opt || k === 'config') throw new PeftError('unknown option in config file', { file: path, field: k, expected: [...byName.keys()].filter((x) => x !== 'config').join(', ') });
    const source = cmd.getOptionValueSource(k);
    if (source === 'cli' || source === 'env') continue;
    const value = configValue(opt, k, v, path);
    if (value !== undefined) merged[k] = value;
  }
  if (typeof merged.model === 'string') merged.model = resolveModel(merged.model);
  return merged as T;
}

/**
 * Options a command needs, given either as flags or in its --config file (commander's
 * requiredOption would reject a value that only the file gives). Throws naming the flag.
 */
export function requireOptions(o: Record<string, unknown>, names: string[]): void {
  for (const n of names) {
    if (o[n] === undefined || o[n] === null || o[n] === '') {
      const flag = '--' + n.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
      throw new PeftError(`missing required option ${flag}`, { field: flag, expected: `${flag} on the command line or ${n.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase())}: in the --config file` });
    }
  }
}
