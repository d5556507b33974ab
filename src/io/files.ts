/**
 * Reading input files defensively: only regular files (a FIFO, a device such as /dev/zero, a socket
 * or a directory is refused before any read, so nothing blocks or fills memory), reads bounded by a
 * size cap, and JSON parsed with a nesting cap so a hostile file gets a {@link PeftError} naming it
 * instead of "Maximum call stack size exceeded" in whatever walks the value later.
 */
import { closeSync, constants, fstatSync, openSync, readSync, statSync, type Stats } from 'node:fs';
import { PeftError } from '../errors.js';

/** Default cap on a JSON file read whole (configs, tokenizer.json, trainer state): 256 MiB. */
export const MAX_JSON_BYTES = 256 * 2 ** 20;

/** Default cap on JSON nesting: far above any real config or tokenizer (they nest < 10 deep). */
export const MAX_JSON_DEPTH = 256;

/** What kind of file-system object `st` is, in words. */
function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * Opens `path` for reading and checks it is a regular file (symlinks are followed). Opening uses
 * O_NONBLOCK so that a FIFO without a writer does not block the open itself.
 * @returns the descriptor (caller closes it) and the file's size in bytes.
 * @throws PeftError naming `path` and `what` when it does not exist, cannot be read, or is a
 *   directory, FIFO, device or socket.
 */
export function openRegularFile(path: string, what = 'a file'): { fd: number; size: number } {
  let fd: number;
  try {
    // O_RDONLY | O_NONBLOCK: a FIFO opens at once (and is then refused) instead of waiting for a writer
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PeftError('file not found', { file: path, expected: what, found: 'nothing' });
    if (code === 'EISDIR') throw new PeftError('is a directory', { file: path, expected: what, found: 'a directory' });
    throw new PeftError(`cannot open file (${code ?? (e as Error).message})`, { file: path, expected: what });
  }
  let st: Stats;
  try {
    st = fstatSync(fd);
  } catch (e) {
    closeSync(fd);
    throw new PeftError(`cannot stat file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { file: path, expected: what });
  }
  if (!st.isFile()) {
    closeSync(fd);
    throw new PeftError('not a regular file', { file: path, expected: `${what} (a regular file)`, found: kindOf(st) });
  }
  return { fd, size: st.size };
}

/**
 * Checks, without opening it, that `path` is a regular file when it exists (stat follows
 * symlinks). Used before handing a path to code that opens it itself; a FIFO opened by plain
 * `open(2)` would block.
 */
export function assertRegularIfExists(path: string, what = 'a file'): void {
  let st: Stats;
  try {
    st = statSync(path);
  } catch {
    return;
  }
  if (!st.isFile()) throw new PeftError('not a regular file', { file: path, expected: `${what} (a regular file)`, found: kindOf(st) });
}

/** Reads `length` bytes at `position` of `fd` into a new buffer; a short file is a PeftError naming `path`. */
export function readExactly(fd: number, position: number, length: number, path: string): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, Math.min(length - done, 2 ** 30), position + done);
    if (n === 0) throw new PeftError('file truncated', { file: path, expected: `${length} bytes at offset ${position}`, found: `${done} bytes` });
    done += n;
  }
  return out;
}

/**
 * Reads a whole regular file of at most `maxBytes` bytes (the size is checked before reading, and
 * the read never goes past the size fstat reported).
 * @throws PeftError naming `path` as {@link openRegularFile} does, or when it exceeds `maxBytes`.
 */
export function readRegularFile(path: string, opts: { maxBytes: number; what?: string }): Uint8Array {
  const what = opts.what ?? 'a file';
  const { fd, size } = openRegularFile(path, what);
  try {
    if (size > opts.maxBytes) throw new PeftError('file too large', { file: path, expected: `${what} of at most ${opts.maxBytes} bytes`, found: `${size} bytes` });
    return readExactly(fd, 0, size, path);
  } finally {
    closeSync(fd);
  }
}

/** Reads a regular file as strict UTF-8 text (see {@link readRegularFile}); invalid UTF-8 is a PeftError. */
export function readTextFile(path: string, opts: { maxBytes?: number; what?: string } = {}): string {
  const bytes = readRegularFile(path, { maxBytes: opts.maxBytes ?? MAX_JSON_BYTES, what: opts.what });
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new PeftError('file is not valid UTF-8 text', { file: path, expected: opts.what ?? 'UTF-8 text', found: 'invalid UTF-8 bytes' });
  }
}

/**
 * Nesting depth of JSON text (objects and arrays), scanned iteratively, so a 1-million-deep file
 * costs a loop and not a stack. Brackets inside strings are skipped.
 */
export function jsonDepth(text: string): number {
  let depth = 0, max = 0, inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x7b || c === 0x5b) { if (++depth > max) max = depth; }
    else if (c === 0x7d || c === 0x5d) depth--;
  }
  return max;
}

/**
 * Parses JSON text from `file` with a nesting cap.
 * @throws PeftError naming `file` (and `what` as the expectation) when the text is not JSON or
 *   nests deeper than `maxDepth`.
 */
export function parseJsonText(text: string, file: string, opts: { what?: string; maxDepth?: number } = {}): unknown {
  const maxDepth = opts.maxDepth ?? MAX_JSON_DEPTH;
  const depth = jsonDepth(text);
  if (depth > maxDepth) throw new PeftError('JSON nested too deeply', { file, expected: `${opts.what ?? 'JSON'} nested at most ${maxDepth} levels`, found: `${depth} levels` });
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new PeftError('invalid JSON', { file, expected: opts.what ?? 'JSON', found: shortMessage(e) });
  }
}

/**
 * Reads a regular file holding one JSON value (see {@link readTextFile} and {@link parseJsonText}).
 * With `object: true` the value must be a JSON object (not an array, string or null).
 */
export function readJsonFile(path: string, opts: { what?: string; maxBytes?: number; maxDepth?: number; object?: boolean } = {}): unknown {
  const v = parseJsonText(readTextFile(path, opts), path, opts);
  if (opts.object && (typeof v !== 'object' || v === null || Array.isArray(v)))
    throw new PeftError('not a JSON object', { file: path, expected: opts.what ?? 'a JSON object', found: v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v });
  return v;
}

/** Reads a regular file holding a JSON object (see {@link readJsonFile}). */
export function readJsonObject(path: string, opts: { what?: string; maxBytes?: number; maxDepth?: number } = {}): Record<string, unknown> {
  return readJsonFile(path, { ...opts, object: true }) as Record<string, unknown>;
}

/** The first line of an error's message, at most 120 characters. */
export function shortMessage(e: unknown): string {
  const m = (e instanceof Error ? e.message : String(e)).split('\n')[0];
  return m.length > 120 ? `${m.slice(0, 117)}...` : m;
}
