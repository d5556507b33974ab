/**
 * Hardening (issue 10 follow-up): the lifecycle, serving and model-config readers that used plain
 * readFileSync + JSON.parse now go through io/files.ts (regular files only, bounded size and
 * nesting), so a FIFO, a deeply nested file or a non-object gives a PeftError naming the file
 * instead of blocking, overflowing the stack or crashing with a TypeError.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PeftError } from '../../src/errors.js';
import { readGate } from '../../src/lifecycle/gate.js';
import { PROVENANCE_FILE, readProvenance } from '../../src/lifecycle/provenance.js';
import { dataKind } from '../../src/lifecycle/export-job.js';
import { readConfigFiles } from '../../src/models/config.js';
import { trainedQuantize } from '../../src/serve/adapter-source.js';

const deep = (n: number): string => '['.repeat(n) + ']'.repeat(n);

function peftError(f: () => unknown): PeftError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(PeftError);
    return e as PeftError;
  }
  throw new Error('expected a PeftError');
}

describe('hostile JSON in lifecycle, serve and config readers', () => {
  const dir = mkdtempSync(join(tmpdir(), 'peft-hostile-json-'));

  it('a FIFO as config.json is refused at once, naming the file (direct loadModel path)', () => {
    const d = join(dir, 'fifo-model');
    mkdirSync(d);
    execFileSync('mkfifo', [join(d, 'config.json')]);
    const e = peftError(() => readConfigFiles(d));
    expect(e.message).toMatch(/not a regular file/);
    expect(e.message).toContain(join(d, 'config.json'));
  });

  it('deeply nested provenance, train_args.json and gate files: a named PeftError, not a stack overflow', () => {
    const a = join(dir, 'adapter');
    mkdirSync(a);
    writeFileSync(join(a, PROVENANCE_FILE), `{"x":${deep(200_000)}}`);
    expect(peftError(() => readProvenance(a)).message).toMatch(/training_provenance\.json: JSON nested too deeply/);
    writeFileSync(join(a, 'train_args.json'), deep(200_000));
    expect(peftError(() => trainedQuantize(a)).message).toMatch(/train_args\.json: JSON nested too deeply/);
    writeFileSync(join(a, 'gate.json'), `{"target":${deep(200_000)}}`);
    expect(peftError(() => readGate(join(a, 'gate.json'))).message).toMatch(/gate\.json: JSON nested too deeply/);
  });

  it('non-object train_args.json and a non-object first data record are named errors', () => {
    const a = join(dir, 'adapter2');
    mkdirSync(a);
    writeFileSync(join(a, 'train_args.json'), '[1, 2]');
    expect(peftError(() => trainedQuantize(a)).message).toMatch(/train_args\.json: not a JSON object/);
    writeFileSync(join(dir, 'data.jsonl'), '\n42\n');
    expect(peftError(() => dataKind(join(dir, 'data.jsonl'))).message).toMatch(/record is a JSON object/);
    writeFileSync(join(dir, 'empty.json'), '[]');
    expect(peftError(() => dataKind(join(dir, 'empty.json'))).message).toMatch(/non-empty array/);
  });
});
