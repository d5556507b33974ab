/**
 * Crash-safe file and directory replacement.
 *
 * A reader of `path` sees either the old complete file or the new complete file, never a partial
 * one: data goes to a temporary sibling (same directory, hence same filesystem), is fsynced, and is
 * then renamed over the target (rename(2) is atomic on POSIX filesystems). The directory is fsynced
 * afterwards, best-effort, so the rename itself survives a power loss.
 */
import {
  closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statSync, writeSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { PeftError } from '../errors.js';

/** Appends bytes to the file being written; see {@link writeFileAtomicWith}. */
export type ChunkWriter = (chunk: Uint8Array) => void;

/**
 * Writes `path` atomically, letting `fill` stream the content in chunks (so a large file never has
 * to exist as one buffer). The content goes to `path + '.tmp-<pid>-<random>'` in the same
 * directory, is fsynced, and is renamed over `path`; the directory is then fsynced (best-effort).
 *
 * If `fill` (or any write) throws, the temporary file is removed, an existing `path` is left
 * untouched, and the error is rethrown. Filesystem errors (EACCES, ENOSPC, ENOENT for a missing
 * parent directory) propagate as Node's own errors.
 */
export function writeFileAtomicWith(path: string, fill: (write: ChunkWriter) => void): void {
  const tmp = tempSibling(path, 'tmp');
  const fd = openSync(tmp, 'wx');
  try {
    fill((chunk) => writeFully(fd, chunk));
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
  fsyncDirBestEffort(dirname(path));
}

/**
 * Writes `data` (bytes, or a string encoded as UTF-8) to `path` atomically; see
 * {@link writeFileAtomicWith} for the procedure and the errors.
 */
export function writeFileAtomic(path: string, data: Uint8Array | string): void {
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  writeFileAtomicWith(path, (write) => write(bytes));
}

/**
 * Writes `value` as JSON (2-space indent, trailing newline, UTF-8) to `path` atomically.
 * Throws a {@link PeftError} naming the file when `value` has no JSON form (undefined, a function);
 * JSON.stringify's own TypeError propagates for cycles and BigInts.
 */
export function writeJsonAtomic(path: string, value: unknown): void {
  const text = JSON.stringify(value, null, 2);
  if (text === undefined) {
    throw new PeftError('value has no JSON representation', {
      file: path,
      expected: 'a JSON-serializable value',
      found: typeof value,
    });
  }
  writeFileAtomic(path, text + '\n');
}

/**
 * Moves the fully written directory `tmpDir` to `finalDir`. When `finalDir` already exists it is
 * first renamed away to `finalDir + '.old-<pid>-<random>'`, then `tmpDir` is renamed in, then the
 * old copy is deleted; if the second rename fails the old directory is put back. So `finalDir` is
 * always the old complete directory or the new complete one, never a mix (it is briefly absent
 * between the two renames; POSIX has no atomic exchange of non-empty directories). Both paths must
 * be on the same filesystem: keep `tmpDir` next to `finalDir`.
 *
 * Throws a {@link PeftError} naming `tmpDir` when it is not an existing directory; filesystem
 * errors propagate as Node's own errors.
 */
export function replaceDirAtomic(tmpDir: string, finalDir: string): void {
  if (!isDirectory(tmpDir)) {
    throw new PeftError('temporary directory to move into place does not exist', {
      file: tmpDir,
      expected: 'a directory',
      found: existsSync(tmpDir) ? 'not a directory' : 'nothing',
    });
  }
  if (!existsSync(finalDir)) {
    renameSync(tmpDir, finalDir);
  } else {
    const old = tempSibling(finalDir, 'old');
    renameSync(finalDir, old);
    try {
      renameSync(tmpDir, finalDir);
    } catch (err) {
      renameSync(old, finalDir);
      throw err;
    }
    rmSync(old, { recursive: true, force: true });
  }
  fsyncDirBestEffort(dirname(finalDir));
}

/**
 * Moves every file of a fully written temporary directory into `finalDir` (created if needed),
 * each with one rename, then removes the temporary directory. Files of the same name are replaced
 * atomically; other files already in `finalDir` (logs, checkpoints, the user's own) are kept.
 * Throws a PeftError when `finalDir` exists and is not a directory.
 */
export function moveFilesInto(tmpDir: string, finalDir: string): void {
  if (existsSync(finalDir) && !isDirectory(finalDir))
    throw new PeftError('output path exists and is not a directory', { file: finalDir, expected: 'a directory (or nothing)', found: 'a file' });
  mkdirSync(finalDir, { recursive: true });
  for (const name of readdirSync(tmpDir)) renameSync(join(tmpDir, name), join(finalDir, name));
  rmSync(tmpDir, { recursive: true, force: true });
  fsyncDirBestEffort(finalDir);
}

/** `<path>.<tag>-<pid>-<12 hex chars>`: a fresh sibling name in the same directory. */
function tempSibling(path: string, tag: string): string {
  const name = `${basename(path)}.${tag}-${process.pid}-${randomBytes(6).toString('hex')}`;
  return join(dirname(path), name);
}

/** writeSync may write fewer bytes than asked; loop until the whole chunk is on disk. */
function writeFully(fd: number, chunk: Uint8Array): void {
  let done = 0;
  while (done < chunk.byteLength) {
    done += writeSync(fd, chunk, done, chunk.byteLength - done);
  }
}

/** fsync a directory so a rename inside it is durable; not supported everywhere, so errors are ignored. */
function fsyncDirBestEffort(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch {
    // Windows and some filesystems refuse to open or fsync directories; durability is best-effort.
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function isDirectory(path: string): boolean {
  try {
    return statSync(path).isDirectory();
  } catch {
    return false;
  }
}
