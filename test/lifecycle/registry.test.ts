/**
 * The adapter registry: immutable versions, content-addressed blobs, tags with rollback, diff,
 * gc, the lock, and two processes pushing at once (both land distinct versions, nothing lost).
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeftError } from '../../src/errors.js';
import { checkout, diff, gc, listVersions, parseRef, push, readManifest, readTags, resolveRef, rollback, setTag, show } from '../../src/lifecycle/registry.js';
import { withLock } from '../../src/lifecycle/lock.js';
import { FIXTURES, ROOT } from '../helpers.js';

/** A copy of the stories260K LoRA fixture, optionally with lora_alpha changed. */
function adapterCopy(parent: string, name: string, alpha?: number): string {
  const d = join(parent, name);
  mkdirSync(d, { recursive: true });
  const src = join(FIXTURES, 'stories260K');
  copyFileSync(join(src, 'adapter_model.safetensors'), join(d, 'adapter_model.safetensors'));
  const cfg = JSON.parse(readFileSync(join(src, 'adapter_config.json'), 'utf8'));
  if (alpha !== undefined) cfg.lora_alpha = alpha;
  writeFileSync(join(d, 'adapter_config.json'), JSON.stringify(cfg));
  mkdirSync(join(d, 'checkpoint-1')); // subdirectories are not pushed
  return d;
}

describe('registry', () => {
  it('push / show / diff / tag / rollback / gc', () => {
    const tmp = mkdtempSync(join(tmpdir(), 'peft-reg-'));
    const root = join(tmp, 'reg');
    const a = adapterCopy(tmp, 'a'), b = adapterCopy(tmp, 'b', 32);
    expect(push(root, 'tales', a, { message: 'first' }).version).toBe(1);
    expect(push(root, 'tales', b).version).toBe(2);
    expect(listVersions(root, 'tales')).toEqual([1, 2]);
    const m1 = readManifest(root, 'tales', 1);
    expect(Object.keys(m1.files)).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    expect(m1.message).toBe('first');
    // the shared weights are stored once
    expect(readdirSync(join(root, 'blobs', 'sha256')).length).toBe(3);
    const d = diff(root, 'tales@1', 'tales@2');
    expect(d.config).toEqual([{ key: 'lora_alpha', a: m1.config.lora_alpha, b: 32, delta: 32 - (m1.config.lora_alpha as number) }]);
    expect(d.files.map((f) => f.key)).toEqual(['adapter_config.json']);
    // NAME alone: the prod tag, else the latest
    expect(resolveRef(root, 'tales')).toEqual({ name: 'tales', version: 2 });
    setTag(root, 'tales@1', 'prod');
    expect(resolveRef(root, 'tales')).toEqual({ name: 'tales', version: 1 });
    setTag(root, 'tales@2', 'prod');
    expect(setTag(root, 'tales@2', 'prod')).toEqual({ from: 2, to: 2 }); // no-op: not a rollback step
    expect(show(root, 'tales').tags).toEqual(['prod']);
    expect(rollback(root, 'tales')).toEqual({ from: 2, to: 1 });
    expect(resolveRef(root, 'tales@prod').version).toBe(1);
    expect(() => rollback(root, 'tales')).toThrow(/nothing to roll back to/);
    expect(readTags(root, 'tales').history.map((h) => h.action)).toEqual(['tag', 'tag', 'rollback']);
    // a checkout is a loadable adapter directory with the pushed bytes
    const co = checkout(root, 'tales', 2);
    expect(readFileSync(join(co, 'adapter_config.json')).equals(readFileSync(join(b, 'adapter_config.json')))).toBe(true);
    // gc --keep-last 1: 1 is tagged and 2 is the last version, so nothing goes
    expect(gc(root, { keepLast: 1 }).removedVersions).toEqual([]);
    push(root, 'tales', a);
    const r = gc(root, { keepLast: 1 });
    expect(r.removedVersions).toEqual(['tales@2']);
    expect(r.removedBlobs).toBe(1); // b's config; the weights are still used by 1 and 3
    expect(existsSync(co)).toBe(false);
    expect(listVersions(root, 'tales')).toEqual([1, 3]);
    expect(() => resolveRef(root, 'tales@2')).toThrow(/tales@1, tales@3/);
    expect(() => parseRef('bad name')).toThrow(PeftError);
    expect(() => push(root, 'x', tmp)).toThrow(/adapter_config.json not found/);
  });

  it('a lock whose owner died is broken; a live one is waited for', () => {
    const root = mkdtempSync(join(tmpdir(), 'peft-lock-'));
    const lock = join(root, '.lock');
    writeFileSync(lock, `999999999\n${'x'}\n`); // another host: cannot tell, must wait
    expect(() => withLock(lock, () => 1, 200)).toThrow(/timed out waiting for the registry lock/);
    writeFileSync(lock, `2147483646\n${hostname()}\n`); // this host, no such pid
    expect(withLock(lock, () => 7)).toBe(7);
    expect(existsSync(lock)).toBe(false);
  });

  it('two processes pushing at once both land distinct versions', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'peft-reg-race-'));
    const root = join(tmp, 'reg');
    const dirs = [adapterCopy(tmp, 'a'), adapterCopy(tmp, 'b', 32)];
    const runs = dirs.map((d) => new Promise<number[]>((res, rej) => {
      const p = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'lifecycle', 'push-child.ts'), root, 'tales', d, '4'], { cwd: ROOT });
      let out = '', err = '';
      p.stdout.on('data', (c) => { out += c; });
      p.stderr.on('data', (c) => { err += c; });
      p.on('close', (code) => (code === 0 ? res(out.trim().split('\n').map(Number)) : rej(new Error(`child exited ${code}: ${err}`))));
    }));
    const [va, vb] = await Promise.all(runs);
    expect([...va, ...vb].sort((x, y) => x - y)).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    for (const v of va) expect(readManifest(root, 'tales', v).source).toBe(dirs[0]);
    for (const v of vb) expect(readManifest(root, 'tales', v).source).toBe(dirs[1]);
    expect(readdirSync(join(root, 'adapters', 'tales', 'versions')).filter((f) => f.includes('tmp'))).toEqual([]);
    expect(existsSync(join(root, '.lock'))).toBe(false);
  });
});
