/**
 * The README's "Adapter lifecycle" walk-through, step by step through the CLI (in process, smaller
 * budgets): doctor the data → train → doctor the adapter → push → promote with a failing then a
 * passing gate → serve prod from the registry → train and push v2 → promote (the server follows)
 * → rollback (the server follows back) → deploy to vLLM and llama.cpp → export a TRL job.
 */
import { afterAll, describe, expect, it, vi } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildProgram } from '../../src/cli/index.js';
import { readGate } from '../../src/lifecycle/gate.js';
import { readTags } from '../../src/lifecycle/registry.js';
import { startServer, type RunningServer } from '../../src/serve/server.js';
import { ROOT, STORIES } from '../helpers.js';

/** The README's data files, cut to their first 24 KB (the README runs the whole files). */
function excerpt(dir: string, file: string): string {
  const f = join(dir, file.split('/').pop()!);
  writeFileSync(f, readFileSync(file, 'utf8').slice(0, 24_000));
  return f;
}

/** Runs `peft ARGS…` in this process; returns its stdout and exit code. */
async function peft(...args: string[]): Promise<{ out: string; code: number }> {
  let out = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => { out += String(c); return true; });
  process.exitCode = 0;
  try {
    await buildProgram().exitOverride().parseAsync(['node', 'peft', ...args]);
  } finally {
    spy.mockRestore();
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { out, code };
}

let server: RunningServer | undefined;
afterAll(async () => { await server?.close(); });

describe('README walk-through: the adapter lifecycle', () => {
  it('train → doctor → push → promote (fail, pass) → serve prod → push v2 → promote → rollback → deploy', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-walk-'));
    const GRIMM = excerpt(dir, join(ROOT, 'data', 'grimms_fairy_tales', 'grimms_fairy_tales_body.txt'));
    const TINY = excerpt(dir, join(ROOT, 'data', 'tinystories_val_sample', 'tinystories_val_head.txt'));
    const reg = join(dir, 'registry');
    const R = ['--registry', reg];
    for (const g of ['gate.yaml', 'gate-strict.yaml']) expect(readGate(join(ROOT, 'examples', 'lifecycle', g)).spec.target?.min_improvement).toBe(0.3);
    const gate = (name: string, minImprovement: number, maxIncrease: number): string => {
      const f = join(dir, name);
      writeFileSync(f, `target:\n  data: ${GRIMM}\n  min_improvement: ${minImprovement}\n  max_examples: 4\nforgetting:\n  data: ${TINY}\n  max_increase: ${maxIncrease}\n  max_examples: 4\nmax_seq_length: 64\n`);
      return f;
    };
    const train = ['--data', GRIMM, '--max-seq-length', '64', '--batch-size', '4', '--max-eval-examples', '4', '--eval-every', '0', '--forgetting-data', TINY, '--max-forgetting-examples', '4'];

    const d0 = await peft('doctor', '--data', GRIMM, '--num-examples', '1', '--max-seq-length', '24');
    expect(d0.code).toBe(0);
    expect(d0.out).toContain('learned tokens in [brackets]');
    const v1 = join(dir, 'tales-v1');
    await peft('train', ...train, '--max-steps', '4', '--output', v1);
    expect(existsSync(join(v1, 'training_provenance.json'))).toBe(true);
    // on another base (here: a copy whose config differs) the adapter is refused unless allowed
    const other = join(dir, 'other-base');
    mkdirSync(other);
    for (const f of ['model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model']) copyFileSync(join(STORIES, f), join(other, f));
    writeFileSync(join(other, 'config.json'), readFileSync(join(STORIES, 'config.json'), 'utf8').replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": 1e-06'));
    await expect(peft('eval', '--adapter', v1, '--model', other, '--data', TINY, '--max-examples', '2')).rejects.toThrow(/trained on a different base model .*config\.json: recorded/);
    expect((await peft('eval', '--adapter', v1, '--model', other, '--data', TINY, '--max-examples', '2', '--allow-base-mismatch')).out).toMatch(/perplexity/);
    const d1 = await peft('doctor', '--adapter', v1, '--target', 'vllm');
    expect(d1.code).toBe(0);
    expect(d1.out).toContain('doctor: no problems found');
    expect((await peft('registry', 'push', 'tales', v1, ...R)).out).toMatch(/^pushed tales@1 /);

    const fail = await peft('registry', 'promote', 'tales@1', '--to', 'prod', '--gate', gate('strict.yaml', 0.99, 0.0), ...R);
    expect(fail.code).toBe(1);
    expect(fail.out).toMatch(/FAIL target: .*needs ≥ 99\.0%/);
    expect(fail.out).toMatch(/refused: tales@1 failed the gate; prod stays unset/);
    expect(readTags(reg, 'tales').tags.prod).toBeUndefined();
    const lenient = gate('gate.yaml', -1, 10);
    const pass = await peft('registry', 'promote', 'tales@1', '--to', 'prod', '--gate', lenient, ...R);
    expect(pass.code).toBe(0);
    expect(pass.out).toMatch(/promoted tales@1 to prod \(was unset\)/);

    server = await startServer({ port: 0, registry: reg, registryPollMs: 50, defaultMetrics: false });
    const ask = async (model: string): Promise<string> => {
      const r = await fetch(`${server!.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: 'The king said', max_tokens: 8, temperature: 0, ignore_eos: true }) });
      expect(r.status).toBe(200);
      return ((await r.json()) as { choices: Array<{ text: string }> }).choices[0].text;
    };
    const t1 = await ask('tales');
    expect(t1).toBe(await ask('tales@1'));

    const v2 = join(dir, 'tales-v2');
    await peft('train', ...train, '--max-steps', '6', '--lr', '5e-3', '--output', v2);
    expect((await peft('registry', 'push', 'tales', v2, ...R)).out).toMatch(/^pushed tales@2 /);
    const diff = await peft('registry', 'diff', 'tales@1', 'tales@2', ...R);
    expect(diff.out).toMatch(/metrics:\n(.*\n)*  steps: 4 → 6 \(\+2\)/);
    const t2 = await ask('tales@2');
    expect(t2).not.toBe(t1);
    expect((await peft('registry', 'promote', 'tales@2', '--to', 'prod', '--gate', lenient, ...R)).out).toMatch(/promoted tales@2 to prod \(was 1\)/);
    const follows = async (want: string): Promise<void> => {
      let now = '';
      for (let i = 0; i < 100 && now !== want; i++) { now = await ask('tales'); if (now !== want) await new Promise((r) => setTimeout(r, 50)); }
      expect(now).toBe(want);
    };
    await follows(t2);
    expect((await peft('registry', 'rollback', 'tales', ...R)).out).toBe('tales@prod: 2 → 1 (rolled back)\n');
    await follows(t1);

    const vllm = await peft('deploy', '--target', 'vllm', '--from', 'tales', ...R, '--output', join(dir, 'vllm'));
    expect(vllm.out).toContain('VLLM_PLUGINS=lora_filesystem_resolver');
    expect(existsSync(join(dir, 'vllm', 'loras', 'tales', 'adapter_model.safetensors'))).toBe(true);
    const llama = await peft('deploy', '--target', 'llama.cpp', '--from', 'tales', ...R, '--output', join(dir, 'llama'));
    expect(llama.out).toContain('llama-server -m ');
    expect(existsSync(join(dir, 'llama', 'tales.gguf'))).toBe(true);
    const job = await peft('export-job', '--target', 'trl', '--from-run', v1, '--output', join(dir, 'trl'), '--num-processes', '2');
    expect(job.out).toContain('accelerate launch --multi_gpu --num_processes 2');
  });
});
