/**
 * Where `peft serve` finds the adapters a client asks it to load at run time (`POST /v1/adapters`),
 * and what a client may learn when that fails.
 *
 * The seam: an {@link AdapterSource} turns the client's reference (a name or a relative path) into
 * an {@link AdapterRef} — a directory on the server the model thread may read, its size and the
 * 4-bit base it was trained on — or refuses with an {@link ApiError} that names no server path.
 * {@link adapterDirSource} confines references to one directory (`--adapter-dir`); another source
 * (e.g. a registry) implements the same interface and the server loads through it unchanged.
 *
 * Confinement rules of {@link adapterDirSource} (the directory `D`, its real path `R`):
 * - the reference is a relative path (a name is one) or an absolute one, non-empty, at most 1024
 *   characters, without NUL; resolved against `D`, it must stay inside `D` (or `R`) lexically,
 *   so `..` components that climb out are refused before touching the file system;
 * - its real path (every symlink resolved) must be a directory strictly inside `R`, and so must
 *   be the real paths of the files the loader reads (`adapter_config.json`,
 *   `adapter_model.safetensors`, `train_args.json` when present), each a regular file (no FIFO,
 *   device or socket): a symlink leading out of `R` is refused;
 * - errors name the reference as the client gave it, never a resolved path.
 */
import { existsSync, lstatSync, realpathSync, statSync, type Stats } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { PeftError } from '../errors.js';
import { ApiError } from './openai.js';
import { readJsonObject } from '../io/files.js';

/** An adapter directory the server may load. */
export interface AdapterRef {
  /** Real path of the adapter directory (never shown to clients). */
  path: string;
  /** Bytes of its weights and config files (what the adapter-bytes cap counts). */
  bytes: number;
  /** The 4-bit base type it was trained on (train_args.json of a QLoRA run), if any. */
  quantize?: string;
}

/** Resolves clients' adapter references. */
export interface AdapterSource {
  /** Resolves a reference (a name or a relative path); throws ApiError 4xx without server paths. */
  resolve(ref: string): AdapterRef;
  /** Directories whose paths must never reach a client (scrubbed from error messages). */
  readonly roots: string[];
}

/** Files the adapter loader reads, relative to the adapter directory. */
const ADAPTER_FILES = ['adapter_config.json', 'adapter_model.safetensors'] as const;
const OPTIONAL_FILES = ['train_args.json'] as const;
/** Largest train_args.json read (it is a small record of flags). */
const MAX_TRAIN_ARGS_BYTES = 1 << 20;
const MAX_REF_CHARS = 1024;

const inside = (root: string, p: string): boolean => {
  const rel = relative(root, p);
  return rel !== '' && !rel.startsWith('..' + sep) && rel !== '..' && !isAbsolute(rel);
};

/**
 * A source confined to the directory `dir` (`--adapter-dir`).
 * @throws PeftError when `dir` does not exist or is not a directory (naming the flag).
 */
export function adapterDirSource(dir: string): AdapterSource {
  const given = resolve(dir);
  let root: string;
  try {
    root = realpathSync(given);
  } catch {
    throw new PeftError('the adapter directory does not exist', { file: dir, field: '--adapter-dir' });
  }
  if (!statSync(root).isDirectory()) throw new PeftError('not a directory', { file: dir, field: '--adapter-dir', expected: 'a directory of adapter directories' });

  const refused = (ref: string, why: string, status = 400, code = 'invalid_adapter_path'): ApiError =>
    new ApiError(status, `cannot load adapter ${JSON.stringify(ref)}: ${why}`, 'path', code);

  return {
    roots: given === root ? [root] : [given, root],
    resolve(ref: string): AdapterRef {
      if (ref.length === 0 || ref.length > MAX_REF_CHARS || ref.includes('\0'))
        throw new ApiError(400, `'path' must be 1-${MAX_REF_CHARS} characters without NUL`, 'path', 'invalid_value');
      const shown = ref.length > 128 ? ref.slice(0, 128) + '…' : ref;
      const outside = (): ApiError => refused(shown, "it is not inside the server's adapter directory (--adapter-dir)", 403, 'path_outside_adapter_dir');
      // lexical check first: "../x" and absolute paths elsewhere never reach the file system
      const lexical = isAbsolute(ref) ? resolve(ref) : resolve(given, ref);
      if (!inside(given, lexical) && !inside(root, lexical)) throw outside();
      let real: string;
      try {
        real = realpathSync(lexical);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'ENOTDIR') throw refused(shown, 'no such adapter in the adapter directory', 404, 'adapter_not_found');
        throw refused(shown, `it cannot be resolved (${code ?? 'error'})`);
      }
      if (!inside(root, real)) throw outside(); // a symlink leading out
      if (!statSync(real).isDirectory()) throw refused(shown, 'not an adapter directory (adapter_config.json + adapter_model.safetensors)');
      let bytes = 0;
      const file = (name: string, required: boolean): Stats | null => {
        const p = join(real, name);
        let st: Stats;
        try {
          lstatSync(p);
        } catch {
          if (required) throw refused(shown, `not an adapter directory: ${name} is missing`);
          return null;
        }
        let rp: string;
        try {
          rp = realpathSync(p);
          st = statSync(rp);
        } catch {
          throw refused(shown, `${name} is a broken link`);
        }
        if (!inside(root, rp)) throw refused(shown, `${name} links outside the adapter directory`, 403, 'path_outside_adapter_dir');
        if (!st.isFile()) throw refused(shown, `${name} is not a regular file`);
        return st;
      };
      for (const f of ADAPTER_FILES) bytes += file(f, true)!.size;
      let quantize: string | undefined;
      for (const f of OPTIONAL_FILES) {
        const st = file(f, false);
        if (!st) continue;
        if (st.size > MAX_TRAIN_ARGS_BYTES) throw refused(shown, `${f} is larger than ${MAX_TRAIN_ARGS_BYTES} bytes`);
        try {
          quantize = trainedQuantize(real);
        } catch (e) {
          throw refused(shown, e instanceof PeftError ? publicAdapterError(e, real) : `${f} cannot be read`);
        }
      }
      return { path: real, bytes, quantize };
    },
  };
}

/**
 * The 4-bit base type an adapter was trained on: `quantType` (default nf4) when its
 * `train_args.json` records `method: "qlora"`; undefined for other methods or without the file.
 * @throws PeftError naming train_args.json and the field when the file is not a JSON object or
 *   the fields have the wrong type.
 */
export function trainedQuantize(adapterDir: string): string | undefined {
  const file = join(adapterDir, 'train_args.json');
  if (!existsSync(file)) return undefined;
  const a = readJsonObject(file, { what: 'the train_args.json of a peft train run' });
  const { method, quantType } = a as Record<string, unknown>;
  if (method !== undefined && typeof method !== 'string') throw new PeftError('wrong type', { file, field: 'method', expected: 'a string' });
  if (method !== 'qlora') return undefined;
  if (quantType === undefined || quantType === null) return 'nf4';
  if (quantType !== 'nf4' && quantType !== 'fp4') throw new PeftError('unknown 4-bit type', { file, field: 'quantType', expected: 'nf4 or fp4', found: JSON.stringify(quantType).slice(0, 40) });
  return quantType;
}

/**
 * What a client may read of an adapter load failure: for a {@link PeftError}, the file (relative
 * to the adapter directory), field, problem and expected value, and the found value only when it
 * is short (no file contents); for anything else a generic line. Never a server path.
 */
export function publicAdapterError(e: unknown, adapterDir: string): string {
  if (!(e instanceof PeftError)) return `the adapter could not be loaded (${e instanceof Error ? e.name : 'error'})`;
  const where = [e.file, e.field].filter((s) => s !== undefined && s !== '').join(': ');
  let problem = e.message;
  if (where && problem.startsWith(where + ': ')) problem = problem.slice(where.length + 2);
  const tail = [e.expected !== undefined ? `expected ${e.expected}` : null, e.found !== undefined ? `found ${e.found}` : null].filter(Boolean).join(', ');
  if (tail && problem.endsWith(` (${tail})`)) problem = problem.slice(0, -(tail.length + 3));
  const file = e.file === undefined ? undefined
    : resolve(e.file) === resolve(adapterDir) ? 'the adapter directory'
      : inside(resolve(adapterDir), resolve(e.file)) ? relative(resolve(adapterDir), resolve(e.file)) : 'a file';
  const parts: string[] = [];
  if (e.expected !== undefined) parts.push(`expected ${e.expected}`);
  if (e.found !== undefined && e.found.length <= 80 && !/[\n\r]/.test(e.found) && problem !== 'invalid JSON') parts.push(`found ${e.found}`);
  const head = [file, e.field].filter((s) => s !== undefined && s !== '').join(': ');
  return scrubPaths(`${head ? head + ': ' : ''}${problem}${parts.length ? ` (${parts.join(', ')})` : ''}`, [adapterDir], true);
}

/**
 * Removes server paths from a message: each of `roots` (and the working directory, home and temp
 * directories) becomes `<dir>`; with `anyPath`, any other absolute path of two or more components
 * becomes `<path>` (not for messages that quote the client's own URL or text).
 */
export function scrubPaths(message: string, roots: string[] = [], anyPath = false): string {
  let m = message;
  const known = [...roots, process.cwd(), process.env.HOME, process.env.TMPDIR, '/tmp'].filter((r): r is string => !!r && r.length > 1);
  for (const r of known.sort((a, b) => b.length - a.length)) m = m.split(r).join('<dir>');
  if (!anyPath) return m;
  return m.replace(/(?<![\w<>.~-])\/(?:[\w.@+-]+\/)+[\w.@+-]*/g, '<path>');
}
