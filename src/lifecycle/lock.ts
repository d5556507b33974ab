/**
 * A cross-process lock file: `open(path, 'wx')` creates it only when absent (O_CREAT|O_EXCL, atomic
 * on local POSIX filesystems), holding the owner's pid. A lock whose owner process is gone is
 * broken (renamed away first, so two waiters cannot both delete a fresh lock by mistake).
 */
import { closeSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { PeftError } from '../errors.js';

const sleeper = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleeper, 0, 0, ms);
}

function ownerAlive(text: string): boolean {
  const [pidText, host] = text.split('\n');
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (host && host !== hostname()) return true; // another machine's process: cannot tell, assume alive
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `fn` holding the lock file `path`; waits (polling every 10–30 ms) up to `timeoutMs`.
 * Throws PeftError naming the lock file and its owner when the wait times out.
 */
export function withLock<T>(path: string, fn: () => T, timeoutMs = 60_000): T {
  const start = Date.now();
  let fd: number | undefined;
  for (;;) {
    try {
      fd = openSync(path, 'wx');
      writeSync(fd, `${process.pid}\n${hostname()}\n${new Date().toISOString()}\n`);
      closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner = '';
    try { owner = readFileSync(path, 'utf8'); } catch { continue; }
    if (owner && !ownerAlive(owner)) {
      const aside = `${path}.stale-${process.pid}`;
      try {
        renameSync(path, aside);
        const moved = readFileSync(aside, 'utf8');
        if (moved === owner) rmSync(aside, { force: true });
        else renameSync(aside, path); // someone else's fresh lock: put it back
      } catch { /* raced with another waiter: retry */ }
      continue;
    }
    if (Date.now() - start > timeoutMs)
      throw new PeftError('timed out waiting for the registry lock', { file: path, found: `held by pid ${owner.split('\n')[0]} since ${owner.split('\n')[2] ?? '?'}` });
    sleepMs(10 + Math.floor(Math.random() * 20));
  }
  try {
    return fn();
  } finally {
    rmSync(path, { force: true });
  }
}
