/** Locations inside the installed package (bundled model and data). */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'models'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

export const PACKAGE_ROOT = packageRoot();
/** The bundled stories260K model (default when --model is omitted). */
export const DEFAULT_MODEL = join(PACKAGE_ROOT, 'models', 'stories260K');
/** Real models bundled under models/, usable by name: `--model tinystories656K`. */
export const BUNDLED_MODELS = ['stories260K', 'tinystories656K'] as const;

/**
 * A `--model` value: undefined → the default (stories260K); the name of a bundled model that is
 * not also a path here → that bundled directory; anything else unchanged (a directory or hub id).
 */
export function resolveModel(v: string | undefined): string {
  if (v === undefined) return DEFAULT_MODEL;
  if ((BUNDLED_MODELS as readonly string[]).includes(v) && !existsSync(v)) return join(PACKAGE_ROOT, 'models', v);
  return v;
}
/** The bundled preference set (train/val pairs and KTO's unpaired files) made from the Grimm tales. */
export const DEFAULT_PREFERENCE_DATA = join(PACKAGE_ROOT, 'data', 'grimms_preference');
export const DEFAULT_NEW_DOMAIN = join(PACKAGE_ROOT, 'data', 'grimms_fairy_tales', 'grimms_fairy_tales_body.txt');
export const DEFAULT_OLD_DOMAIN = join(PACKAGE_ROOT, 'data', 'tinystories_val_sample', 'tinystories_val_head.txt');
