/** Checks on the paths a command writes to, so it never overwrites its own inputs. */
import { existsSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { PeftError } from '../errors.js';

/** Throws when `output` is one of `inputs` (same directory) or an existing file. */
export function checkOutputDir(output: string, inputs: Array<{ path: string | undefined; what: string }>, flag = '--output'): void {
  const out = resolve(output);
  if (existsSync(out) && !statSync(out).isDirectory())
    throw new PeftError('output path exists and is not a directory', { file: output, field: flag, expected: 'a directory (or nothing)', found: 'a file' });
  for (const i of inputs) {
    if (i.path && resolve(i.path) === out)
      throw new PeftError(`output directory is the ${i.what}; writing there would overwrite it`, { file: output, field: flag, expected: `a directory other than the ${i.what}` });
  }
}
