/**
 * Running `peft` subcommands in child processes, so each training run of a comparison has its own
 * clean peak-memory figure. Works from the compiled package (bin/peft.js) and from TypeScript
 * sources (through tsx), whichever this process is running.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PeftError } from '../errors.js';
import { PACKAGE_ROOT } from '../paths.js';

function cliInvocation(): string[] {
  const fromSource = fileURLToPath(import.meta.url).endsWith('.ts');
  if (fromSource) return ['--import', 'tsx', join(PACKAGE_ROOT, 'src', 'cli', 'bin.ts')];
  const bin = join(PACKAGE_ROOT, 'bin', 'peft.js');
  if (!existsSync(bin)) throw new PeftError('cannot find the peft CLI entry point', { file: bin });
  return [bin];
}

/** Runs `peft <args>` and resolves with its output; rejects with the child's stderr on failure. */
export function runPeft(args: string[], onLine?: (line: string) => void): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...cliInvocation(), ...args], { cwd: process.cwd(), env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    const lines = (chunk: Buffer, acc: 'out' | 'err'): void => {
      const text = chunk.toString();
      if (acc === 'out') stdout += text; else stderr += text;
      if (onLine) for (const l of text.split('\n')) if (l.trim()) onLine(l);
    };
    child.stdout.on('data', (c: Buffer) => lines(c, 'out'));
    child.stderr.on('data', (c: Buffer) => lines(c, 'err'));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve({ stdout, stderr });
      else reject(new PeftError(`peft ${args[0]} failed (exit ${code}): ${stderr.trim().split('\n').slice(-3).join(' | ')}`));
    });
  });
}
