/**
 * Issue 10: kill -9 during `peft train`, then tear the files a kill can tear — a truncated
 * trainer_state.json in the newest checkpoint, a torn last line of metrics.jsonl, a stale
 * checkpoint-N.tmp-PID directory — and resume: the run falls back to the previous complete
 * checkpoint, says so, cleans the temp directory and reaches the same weights as an uninterrupted
 * run. Also --save-total-limit, outputs checked before step 1, and a changed --lr stated on resume.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, truncateSync, appendFileSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runTraining, type TrainRunOptions } from '../../src/train/run.js';
import { PeftError } from '../../src/errors.js';
import { bf16ComputeAvailable } from '../../src/models/compute-dtype.js';
import { maxAbsDiff, readTensors, ROOT } from '../helpers.js';

function dataFile(dir: string): string {
  const f = join(dir, 'data.jsonl');
  writeFileSync(f, Array.from({ length: 48 }, (_, i) => JSON.stringify({ text: `Once upon a time a fox found ${i} shiny stones by the river.` })).join('\n'));
  return f;
}

const base = (data: string, output: string): TrainRunOptions => ({
  data, output, method: 'lora', r: 4, maxSteps: 30, batchSize: 2, maxSeqLength: 32, evalEvery: 0, valFraction: 0.1, lr: 5e-3, warmupSteps: 2, seed: 3,
});

/** Runs `peft train` in a child process and kills it (SIGKILL) once checkpoint-`atStep` exists. */
function trainAndKill(args: string[], out: string, atStep: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src', 'cli', 'bin.ts'), 'train', ...args], { cwd: ROOT, stdio: 'ignore' });
    const timer = setInterval(() => {
      if (existsSync(join(out, `checkpoint-${atStep}`))) {
        clearInterval(timer);
        child.kill('SIGKILL');
      }
    }, 5);
    child.on('exit', (_code, signal) => {
      clearInterval(timer);
      if (signal !== 'SIGKILL') reject(new Error(`train ended before it could be killed (signal ${signal})`));
      else resolve(child.pid!);
    });
  });
}

const checkpoints = (out: string): number[] =>
  readdirSync(out).map((n) => /^checkpoint-(\d+)$/.exec(n)).filter((m) => m !== null).map((m) => Number(m![1])).sort((a, b) => a - b);

describe('kill -9 and resume with torn files', () => {
  it('falls back to the previous complete checkpoint and reaches the uninterrupted weights', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-torn-'));
    const data = dataFile(dir);
    const ref = await runTraining(base(data, join(dir, 'ref')));
    expect(ref.result.state.step).toBe(30);

    const out = join(dir, 'run');
    const o = base(data, out);
    const pid = await trainAndKill(['--data', data, '--output', out, '--r', '4', '--max-steps', '30', '--batch-size', '2', '--max-seq-length', '32',
      '--eval-every', '0', '--val-fraction', '0.1', '--lr', '5e-3', '--warmup-steps', '2', '--seed', '3', '--checkpoint-every', '1'], out, 4);
    const steps = checkpoints(out);
    expect(steps.length).toBeGreaterThanOrEqual(2);
    const newest = steps[steps.length - 1];
    // the damage a kill (or a full disk) can leave
    const state = join(out, `checkpoint-${newest}`, 'trainer_state.json');
    truncateSync(state, Math.floor(statSync(state).size / 2));
    appendFileSync(join(out, 'metrics.jsonl'), '{"type":"train","step":');
    mkdirSync(join(out, `checkpoint-${newest + 1}.tmp-${pid}`));
    writeFileSync(join(out, `checkpoint-${newest + 1}.tmp-${pid}`, 'params.safetensors'), 'partial');

    const notes: string[] = [];
    const r = await runTraining({ ...o, checkpointEvery: 10, resume: out }, { onNote: (m) => notes.push(m) });
    expect(r.result.state.step).toBe(30);
    expect(notes.join('\n')).toMatch(new RegExp(`skipping incomplete .*checkpoint-${newest}: .*trainer_state\\.json.*invalid JSON`));
    expect(notes.join('\n')).toMatch(new RegExp(`resuming from the previous complete checkpoint .*checkpoint-${steps[steps.length - 2]}`));
    expect(notes.join('\n')).toMatch(/metrics\.jsonl: dropped 1 unreadable line/);
    expect(notes.join('\n')).toMatch(/removed 1 incomplete checkpoint temp dir/);
    expect(existsSync(join(out, `checkpoint-${newest + 1}.tmp-${pid}`))).toBe(false);

    const a = readTensors(join(out, 'adapter_model.safetensors'));
    const b = readTensors(join(dir, 'ref', 'adapter_model.safetensors'));
    for (const [k, t] of b) expect(maxAbsDiff(a.get(k)!.data, t.data), k).toBe(0);
    const logged = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; step: number });
    expect(logged.filter((m) => m.type === 'train').map((m) => m.step)).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
  }, 120_000);

  it('--save-total-limit keeps the newest N; a changed --lr on resume is stated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-limit-'));
    const data = dataFile(dir);
    const out = join(dir, 'run');
    await runTraining({ ...base(data, out), maxSteps: 6, checkpointEvery: 1, saveTotalLimit: 2 });
    expect(checkpoints(out)).toEqual([5, 6]);
    const notes: string[] = [];
    await runTraining({ ...base(data, out), maxSteps: 8, lr: 1e-3, resume: out }, { onNote: (m) => notes.push(m) });
    expect(notes.join('\n')).toMatch(/--lr changed from 0\.005 \(checkpoint\) to 0\.001/);
    expect(notes.join('\n')).toMatch(/--max-steps changed from 6 \(checkpoint\) to 8/);
  }, 60_000);

  it.skipIf(!bf16ComputeAvailable())('a changed --compute-dtype on resume is stated', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-dtype-'));
    const data = dataFile(dir);
    const out = join(dir, 'run');
    await runTraining({ ...base(data, out), maxSteps: 2, checkpointEvery: 1, computeDtype: 'bf16' });
    const notes: string[] = [];
    await runTraining({ ...base(data, out), maxSteps: 3, resume: out }, { onNote: (m) => notes.push(m) });
    expect(notes.join('\n')).toMatch(/--compute-dtype changed from bf16 \(checkpoint\) to float32; the remaining steps multiply the frozen weights in the new dtype/);
  }, 60_000);

  it('output problems fail before training: a directory named adapter_model.safetensors, a --result-json directory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-out-'));
    const data = dataFile(dir);
    const out = join(dir, 'run');
    mkdirSync(join(out, 'adapter_model.safetensors'), { recursive: true });
    const t0 = performance.now();
    await expect(runTraining(base(data, out))).rejects.toThrow(/adapter_model\.safetensors: --output: an output file of the run is a directory/);
    await expect(runTraining({ ...base(data, join(dir, 'ok')), resultJson: dir })).rejects.toThrow(PeftError);
    await expect(runTraining({ ...base(data, join(dir, 'ok')), resultJson: join(dir, 'nope', 'r.json') })).rejects.toThrow(/--result-json/);
    expect(performance.now() - t0).toBeLessThan(2000); // refused before the model loads or a step runs
    expect(existsSync(join(dir, 'ok'))).toBe(false);
  });
});
