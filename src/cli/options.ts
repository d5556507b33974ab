/**
 * Shared CLI plumbing: an optional JSON/YAML config file whose keys fill any option not given
 * on the command line (flags override the file), and number/list parsers that name the flag in
 * their errors.
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError, type Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { PeftError } from '../errors.js';

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
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new PeftError(`cannot read config file: ${(e as Error).message}`, { file: path });
  }
  let v: unknown;
  try {
    v = path.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (e) {
    throw new PeftError('invalid config file', { file: path, expected: 'JSON or YAML', found: (e as Error).message });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new PeftError('config file must hold a mapping of option names to values', { file: path });
  const out: Record<string, unknown> = {};
  for (const [k, val] of Object.entries(v)) out[k.replace(/[-_]([a-z])/g, (_, c: string) => c.toUpperCase())] = val;
  return out;
}

/**
 * Merges a `--config` file into a command's options: keys the user did not pass on the command
 * line take the file's value; unknown keys are an error naming the key.
 */
export function withConfigFile<T extends Record<string, unknown>>(cmd: Command, opts: T): T {
  const path = opts.config as string | undefined;
  if (!path) return opts;
  const file = readConfigFile(path);
  const known = new Set(cmd.options.map((o) => o.attributeName()));
  const merged: Record<string, unknown> = { ...opts };
  for (const [k, v] of Object.entries(file)) {
    if (!known.has(k)) throw new PeftError('unknown option in config file', { file: path, field: k, expected: [...known].filter((x) => x !== 'config').join(', ') });
    const source = cmd.getOptionValueSource(k);
    if (source === 'cli' || source === 'env') continue;
    merged[k] = v;
  }
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
