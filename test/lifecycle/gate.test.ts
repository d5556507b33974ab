/** The promote gate: target improvement, forgetting and exact-match checks against thresholds, and gate-file errors. */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate } from '../../src/generate/generate.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { readGate, runGate } from '../../src/lifecycle/gate.js';
import { loadModel } from '../../src/models/load.js';
import { attachAdapters } from '../../src/peft/attach.js';
import { evaluate } from '../../src/train/evaluate.js';
import { loadExamples } from '../../src/train/data/index.js';
import { FIXTURES, STORIES } from '../helpers.js';

const LORA = join(FIXTURES, 'stories260K');

describe('promote gate', () => {
  it('measures perplexity change and exact match against the thresholds', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-gate-'));
    const tok = loadTokenizer(STORIES);
    const text = join(dir, 'text.txt');
    writeFileSync(text, 'Once upon a time, there was a little girl named Lily. She loved to play outside.\n\nThe sun was warm and the birds sang in the trees.\n');
    // expected figures, computed directly
    const model = loadModel(STORIES);
    const { peft, setup } = attachAdapters(model, [{ name: 'x', dir: LORA }]);
    const ex = loadExamples(text, tok, { maxSeqLength: 64, textSplit: 'paragraphs' }).examples;
    const withA = evaluate(model, ex, { maxSeqLength: 64 }).perplexity;
    const base = peft.withDisabled(() => evaluate(model, ex, { maxSeqLength: 64 })).perplexity;
    const prompt = 'Once upon a time';
    const greedy = tok.decode(generate(model, tok.encode(prompt), { maxNewTokens: 6, temperature: 0 }, setup).newIds);
    peft.deleteAdapter('x');
    const pairs = join(dir, 'pairs.jsonl');
    writeFileSync(pairs, [JSON.stringify({ prompt, completion: greedy }), JSON.stringify({ prompt, completion: ' zebra zebra' })].join('\n'));
    const gate = join(dir, 'gate.yaml');
    writeFileSync(gate, `target:\n  data: text.txt\n  min_improvement: -100\nforgetting:\n  data: text.txt\n  max_increase: 100\nexact_match:\n  data: pairs.jsonl\n  min_accuracy: 0.5\n  max_new_tokens: 6\nmax_seq_length: 64\ntext_split: paragraphs\n`);
    const fresh = loadModel(STORIES);
    const r = runGate(fresh, tok, LORA, gate, 'tales@1');
    expect(r.passed).toBe(true);
    const t = r.checks.find((c) => c.name === 'target')!;
    expect(t.value).toBeCloseTo((base - withA) / base, 6);
    expect(r.checks.find((c) => c.name === 'forgetting')!.value).toBeCloseTo((withA - base) / base, 6);
    expect(r.checks.find((c) => c.name === 'exact_match')!.value).toBe(0.5);
    // a threshold the adapter cannot meet fails, with the reason in the detail
    const strict = join(dir, 'strict.yaml');
    writeFileSync(strict, `target:\n  data: text.txt\n  min_improvement: 0.99\nmax_seq_length: 64\ntext_split: paragraphs\n`);
    const f = runGate(fresh, tok, LORA, strict, 'tales@1');
    expect(f.passed).toBe(false);
    expect(f.checks[0].detail).toMatch(/needs ≥ 99\.0%/);
  });

  it('gate files: unknown keys, missing data and bad values name the file and field', () => {
    const dir = mkdtempSync(join(tmpdir(), 'peft-gate-bad-'));
    const g = (text: string): string => { const f = join(dir, `g${Math.random()}.yaml`); writeFileSync(f, text); return f; };
    expect(() => readGate(g('targte:\n  data: x\n'))).toThrow(/targte: unknown gate key/);
    expect(() => readGate(g('target:\n  data: nope.txt\n  min_improvement: 0.1\n'))).toThrow(/target\.data: gate data file not found/);
    writeFileSync(join(dir, 't.txt'), 'hello');
    expect(() => readGate(g('target:\n  data: t.txt\n  min_improvement: high\n'))).toThrow(/target\.min_improvement: invalid gate value/);
    expect(() => readGate(g('max_seq_length: 64\n'))).toThrow(/at least one check/);
  });
});
