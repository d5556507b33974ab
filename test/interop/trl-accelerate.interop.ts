/**
 * Scale-out through existing engines, checked with the local Python stack (.venv-ref: torch CPU,
 * transformers, peft, trl, accelerate): `peft export-job --target trl` → `accelerate launch` with
 * 2 processes (gloo, CPU) on the bundled stories260K for a few steps → the HF PEFT adapter it
 * writes passes `peft doctor` and `peft eval` here. Also: an adapter trained by peft-ts, with its
 * model card and training_provenance.json, loads in HF PEFT without a warning.
 *
 * Skipped, with a message, where .venv-ref or one of those packages is absent. Run with
 * `npm run test:interop` (not part of `npm test`).
 *
 * Note: accelerate 1.15 runs `accelerate launch --num_processes 2 --cpu` as ONE process (its simple
 * launcher; several CPU processes need an MPI hostfile), so the 2-process run uses
 * `--multi_gpu --num_processes 2` with no GPU visible: torchrun starts 2 ranks and accelerate
 * picks gloo on CPU. The script records WORLD_SIZE, checked below.
 */
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { doctorAdapter } from '../../src/lifecycle/doctor.js';
import { jobSpec, writeJob } from '../../src/lifecycle/export-job.js';
import { loadModel } from '../../src/models/load.js';
import { attachAdapters } from '../../src/peft/attach.js';
import { runTraining, evaluateFile } from '../../src/train/run.js';
import { ROOT, STORIES } from '../helpers.js';

const VENV = join(ROOT, '.venv-ref', 'bin');
const python = join(VENV, 'python');
const probe = existsSync(python) ? spawnSync(python, ['-c', 'import torch, transformers, peft, trl, accelerate, datasets'], { encoding: 'utf8' }) : null;
const missing = !probe ? `${python} not found (scripts/setup-ref-venv.sh makes it)` : probe.status !== 0 ? `the reference venv lacks a package: ${probe.stderr.trim().split('\n').pop()}` : null;
if (missing) console.warn(`skipping TRL/accelerate interop: ${missing}`);

describe.skipIf(missing !== null)('scale-out through TRL + accelerate', () => {
  it('export-job → accelerate launch (2 CPU processes) → peft doctor + peft eval on the result', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-trl-'));
    const data = join(ROOT, 'data', 'grimms_fairy_tales', 'grimms_fairy_tales_body.txt');
    const spec = jobSpec({ data, maxSteps: 4, batchSize: 4, maxSeqLength: 64, seed: 1 });
    const job = writeJob(spec, 'trl', join(dir, 'job'), 2);
    const out = join(dir, 'adapter');
    const args = ['launch', '--multi_gpu', '--num_processes', '2', join(dir, 'job', 'train_trl.py'), '--output-dir', out];
    const r = spawnSync(join(VENV, 'accelerate'), args, {
      cwd: dir, encoding: 'utf8', timeout: 600_000,
      env: { ...process.env, PATH: `${VENV}:${process.env.PATH}`, CUDA_VISIBLE_DEVICES: '', OMP_NUM_THREADS: '1', HF_HUB_OFFLINE: '1' },
    });
    writeFileSync(join(dir, 'accelerate.log'), `${job.command}\n${r.stdout}\n${r.stderr}`);
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const rec = JSON.parse(readFileSync(join(out, 'peft_ts_job.json'), 'utf8'));
    expect(rec.world_size).toBe(2);
    const losses = rec.log_history.filter((h: { loss?: number }) => h.loss !== undefined);
    expect(losses.length).toBe(4);
    // peft doctor: keys, shapes, base and a real effect on the logits
    const model = loadModel(STORIES);
    const tok = loadTokenizer(STORIES);
    const d = doctorAdapter(out, model, STORIES, tok);
    expect(d.findings.filter((f) => f.severity !== 'ok')).toEqual([]);
    expect(d.maxAbsLogitDelta).toBeGreaterThan(1e-4);
    // peft eval: the adapted model scores the data differently from the base
    const m2 = loadModel(STORIES);
    const base = evaluateFile(m2, tok, data, { maxSeqLength: 64, maxExamples: 8 });
    attachAdapters(m2, [{ name: 'trl', dir: out }]);
    const adapted = evaluateFile(m2, tok, data, { maxSeqLength: 64, maxExamples: 8 });
    expect(Number.isFinite(adapted.perplexity)).toBe(true);
    expect(adapted.loss).not.toBe(base.loss);
    console.log(`TRL adapter: accelerate ${args.join(' ')} → world_size ${rec.world_size}, losses ${losses.map((h: { loss: number }) => h.loss).join(', ')}; doctor max|Δlogit| ${d.maxAbsLogitDelta}; eval ppl ${base.perplexity.toFixed(3)} → ${adapted.perplexity.toFixed(3)}`);
  });

  it('a peft-ts adapter with its model card and provenance loads in HF PEFT without a warning', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-prov-hf-'));
    const data = join(dir, 'd.jsonl');
    writeFileSync(data, Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `The king had ${i} daughters, each more beautiful than the last.` })).join('\n'));
    const out = join(dir, 'a');
    await runTraining({ data, output: out, maxSteps: 2, batchSize: 4, maxSeqLength: 32, evalEvery: 0 });
    expect(existsSync(join(out, 'README.md')) && existsSync(join(out, 'training_provenance.json'))).toBe(true);
    const r = spawnSync(python, [join(ROOT, 'scripts', 'lifecycle', 'peft_load_check.py'), STORIES, out], { encoding: 'utf8', timeout: 300_000 });
    expect(r.status, r.stdout + r.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!).warnings).toEqual([]);
  });
});
