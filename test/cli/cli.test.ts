/**
 * The `peft` command line end to end (run from source through tsx): the reference greedy
 * continuation of the bundled model, train → eval → merge → generate with an adapter, inspect,
 * config files, and errors on bad flags.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runPeft } from '../helpers.js';

const peft = runPeft;

const REFERENCE = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\nLily';

describe('peft CLI', () => {
  it('generate prints exactly the reference greedy continuation of the bundled model', () => {
    const r = peft('generate', '--prompt', 'Once upon a time', '--max-new-tokens', '60', '--temperature', '0');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(REFERENCE + '\n');
  });

  it('train → eval → merge → generate with the adapter and with the merged model agree', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-cli-'));
    const data = join(dir, 'data.jsonl');
    writeFileSync(data, Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `The king had ${i} golden apples and a beautiful daughter.` })).join('\n'));
    const cfg = join(dir, 'train.yaml');
    writeFileSync(cfg, 'max_steps: 6\nbatch-size: 4\nr: 4\nlr: 0.01\neval_every: 3\n');
    const out = join(dir, 'adapter');
    const t = peft('train', '--data', data, '--output', out, '--config', cfg, '--max-steps', '8');
    expect(t.code, t.stderr).toBe(0);
    expect(t.stdout).toMatch(/trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}/);
    expect(t.stdout).toMatch(/done: 8 steps/); // the flag overrides the config file
    for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'metrics.jsonl', 'loss_curve.svg']) expect(existsSync(join(out, f)), f).toBe(true);
    expect(readFileSync(join(out, 'loss_curve.svg'), 'utf8')).toMatch(/^<svg/);
    const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(metrics.filter((m) => m.type === 'train')).toHaveLength(8);
    const ev = peft('eval', '--data', data, '--adapter', out, '--json');
    expect(ev.code, ev.stderr).toBe(0);
    const e1 = JSON.parse(ev.stdout);
    expect(e1.perplexity).toBeCloseTo(Math.exp(e1.loss), 6);
    const merged = join(dir, 'merged');
    const m = peft('merge', '--adapter', out, '--output', merged);
    expect(m.code, m.stderr).toBe(0);
    const ev2 = JSON.parse(peft('eval', '--data', data, '--model', merged, '--json').stdout);
    expect(Math.abs(ev2.loss - e1.loss)).toBeLessThan(1e-4);
    const g1 = peft('generate', '--prompt', 'The king', '--adapter', out, '--max-new-tokens', '20');
    const g2 = peft('generate', '--prompt', 'The king', '--model', merged, '--max-new-tokens', '20');
    expect(g1.stdout).toBe(g2.stdout);
    const ins = peft('inspect', '--adapter', out);
    expect(ins.stdout).toMatch(/adapter: .*\(LORA/);
  });

  it('bad flags and bad data are clear errors', () => {
    const r = peft('train', '--data', 'nope.jsonl', '--max-steps', '2');
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/nope\.jsonl/);
    const bad = peft('generate', '--prompt', 'x', '--temperature', '-1');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--temperature must be a number/);
    const dir = mkdtempSync(join(tmpdir(), 'peft-cli-'));
    const f = join(dir, 'bad.jsonl');
    writeFileSync(f, '{"text": "fine"}\n{"text": 3}\n');
    const d = peft('train', '--data', f, '--max-steps', '1');
    expect(d.code).not.toBe(0);
    expect(d.stderr).toMatch(/bad\.jsonl: line 2/);
  });
});
