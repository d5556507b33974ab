/**
 * `npm run lint` type-checks every TypeScript file of the repository (src/, test/, scripts/,
 * bench/, configs): a script that calls a method which no longer exists must fail lint, and CI
 * runs lint before the tests.
 */
import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from '../helpers.js';

describe('lint coverage', () => {
  it('lint coverage: tsconfig.check.json (what npm run lint type-checks) holds every tracked .ts file', () => {
    const r = spawnSync('npx', ['--no-install', 'tsc', '-p', 'tsconfig.check.json', '--showConfig'], { cwd: ROOT, encoding: 'utf8' });
    expect(r.status).toBe(0);
    const files = new Set((JSON.parse(r.stdout) as { files: string[] }).files.map((f) => f.replace(/^\.\//, '')));
    const tracked = execFileSync('git', ['ls-files', '*.ts', '*.mts', '*.cts'], { cwd: ROOT, encoding: 'utf8' }).split('\n').filter(Boolean);
    expect(tracked.length).toBeGreaterThan(50);
    expect(tracked.filter((f) => !f.startsWith('test/fixtures/') && !files.has(f))).toEqual([]);
    for (const dir of ['src/', 'test/', 'scripts/', 'bench/']) expect([...files].some((f) => f.startsWith(dir))).toBe(true);
  });

  it('lint coverage: npm run lint uses it and CI runs lint before npm test', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.lint).toContain('tsc -p tsconfig.check.json');
    expect(pkg.scripts.lint).toContain('eslint');
    const ci = readFileSync(join(ROOT, '.ci', 'run'), 'utf8').split('\n').map((l) => l.trim());
    const lint = ci.indexOf('npm run lint'), test = ci.indexOf('npm test');
    expect(lint).toBeGreaterThan(-1);
    expect(test).toBeGreaterThan(lint);
  });
});
