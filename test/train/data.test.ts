/**
 * Training data pipeline with the real stories260K tokenizer (512-piece BPE with byte fallback):
 * formats and label masks (decoded labelled tokens = the answer text), bad-input errors naming
 * file and line, skip-bad-lines counts, truncation, packing (segments, positions, labels, and a
 * model-level check that a packed row computes the same logits as each example alone), loader
 * determinism and resume, validation split.
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PeftError } from '../../src/errors.js';
import { loadTokenizer, type Tokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { forwardHidden, lmLogits } from '../../src/models/model.js';
import { noGrad, withArena } from '../../src/tensor/index.js';
import {
  collate, compileChatTemplate, createLoader, evalBatches, loadDataset, loadExamples, readRecords, renderChat,
  templateSpecialTokens, type Example, type TrainBatch,
} from '../../src/train/data/index.js';
import { FIXTURES, maxAbsDiff, STORIES } from '../helpers.js';

const DATA = join(FIXTURES, 'data');
const tok = loadTokenizer(STORIES);
const EOS = '</s>';

const TEMPLATE =
  "{{ bos_token }}{% for m in messages %}" +
  "{% if m.role == 'system' %}<|system|>\n{{ m.content }}<|end|>\n" +
  "{% elif m.role == 'user' %}<|user|>\n{{ m.content }}<|end|>\n" +
  "{% elif m.role == 'assistant' %}<|assistant|>\n{{ m.content }}<|end|>\n" +
  "{% else %}{{ raise_exception('Unknown role: ' + m.role) }}{% endif %}{% endfor %}";
const chatTok: Tokenizer = { ...tok, chatTemplate: TEMPLATE };

/** Text of each maximal run of target tokens, decoded in context (so leading spaces survive the Metaspace decoder). */
function labelledRuns(t: Tokenizer, ids: ArrayLike<number>, isTarget: (i: number) => boolean): string[] {
  const all = Array.from(ids);
  const runs: string[] = [];
  for (let i = 0; i < all.length; i++) {
    if (!isTarget(i)) continue;
    let j = i;
    while (j + 1 < all.length && isTarget(j + 1)) j++;
    const before = t.decode(all.slice(0, i), false);
    runs.push(t.decode(all.slice(0, j + 1), false).slice(before.length));
    i = j;
  }
  return runs;
}

const runsOf = (ex: Example): string[] => labelledRuns(tok, ex.ids, (i) => ex.targets[i] === 1);

/** Labelled tokens of a one-example batch row, via the labels (label r = token r + 1). */
function runsFromLabels(b: TrainBatch): string[] {
  const { T } = b.batch;
  const ids = Array.from(b.batch.ids.subarray(0, T));
  return labelledRuns(tok, ids, (i) => i > 0 && b.labels[i - 1] !== -100 && b.labels[i - 1] === ids[i]);
}

function isSubsequence(needle: number[], hay: number[]): boolean {
  outer: for (let p = 0; p + needle.length <= hay.length; p++) {
    for (let i = 0; i < needle.length; i++) if (hay[p + i] !== needle[i]) continue outer;
    return true;
  }
  return false;
}

function tmpFile(name: string, content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'peft-data-'));
  const f = join(dir, name);
  writeFileSync(f, content);
  return f;
}

function expectBad(file: string, line: number, fragment: RegExp): void {
  let err: unknown;
  try {
    loadExamples(file, chatTok, { maxSeqLength: 256 });
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PeftError);
  const pe = err as PeftError;
  expect(pe.file).toBe(file);
  expect(pe.field).toMatch(new RegExp(`^line ${line}\\b`));
  expect(pe.message).toContain(`${file}: line ${line}`);
  expect(pe.message).toMatch(fragment);
}

describe('formats and label masks', () => {
  it('alpaca: Stanford Alpaca prompt, loss on output + EOS only', () => {
    const { examples, stats } = loadExamples(join(DATA, 'alpaca.json'), tok, { maxSeqLength: 256 });
    expect(stats.format).toBe('alpaca');
    expect(examples.length).toBe(3);
    const outputs = ['The capital of France is Paris.', '2 + 3 = 5', 'こんにちは (konnichiwa)'];
    examples.forEach((ex, i) => expect(runsOf(ex)).toEqual([outputs[i] + EOS]));
    // the canonical prompt text (tatsu-lab/stanford_alpaca train.py PROMPT_DICT), output directly after "### Response:"
    const withInput = 'Below is an instruction that describes a task, paired with an input that provides further context. ' +
      'Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the two numbers.\n\n### Input:\n2 and 3\n\n### Response:';
    const noInput = 'Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n' +
      '### Instruction:\nName the capital of France.\n\n### Response:';
    expect(tok.decode(examples[1].ids.subarray(1), false)).toBe(`${withInput}2 + 3 = 5${EOS}`);
    expect(tok.decode(examples[0].ids.subarray(1), false)).toBe(`${noInput}The capital of France is Paris.${EOS}`);
    expect(examples[0].ids[0]).toBe(tok.bosTokenId);
    // the same through the batch labels
    for (const [i, b] of [...evalBatches(examples, { batchSize: 1, maxSeqLength: 256 })].entries()) {
      expect(runsFromLabels(b)).toEqual([outputs[i] + EOS]);
      expect(b.labels[b.batch.T - 1]).toBe(-100);
    }
  });

  it('prompt/completion: loss on completion + EOS only', () => {
    const { examples } = loadExamples(join(DATA, 'pc.jsonl'), tok, { maxSeqLength: 256 });
    expect(examples.map(runsOf)).toEqual([
      [' blue.' + EOS], [' gave it to his sister, who smiled.' + EOS], [' Meow!' + EOS],
    ]);
  });

  it('chat: markers tokenize differently in context; the mask labels exactly the assistant contents (+ end-of-turn marker)', () => {
    const { examples, stats } = loadExamples(join(DATA, 'chat.jsonl'), chatTok, { maxSeqLength: 256 });
    expect(stats.format).toBe('chat');
    const answers = [['Hello! How can I help?'], ['Once upon a time, there was a cat.', 'The cat ate café 日本 cake.'], ['4']];
    examples.forEach((ex, i) => expect(runsOf(ex)).toEqual(answers[i].map((a) => a + '<|end|>')));
    // tokenizing a marker (or an answer) alone gives ids that do not occur in the conversation's tokens
    const conv = Array.from(examples[1].ids);
    for (const marker of ['<|user|>\n', '<|assistant|>\n', '<|end|>\n']) {
      const alone = tok.encode(marker, false);
      expect(isSubsequence(alone, conv)).toBe(false);
    }
    expect(isSubsequence(tok.encode('Once upon a time, there was a cat.', false), conv)).toBe(false);
    // byte-fallback pieces (日本 = 6 byte tokens) are labelled with the character they build
    expect(conv.filter((id, t) => examples[1].targets[t] && tok.decode([id], false) === '\uFFFD').length).toBeGreaterThanOrEqual(6);
    // content only, without the end-of-turn marker
    const plain = loadExamples(join(DATA, 'chat.jsonl'), chatTok, { maxSeqLength: 256, labelEndOfTurn: false }).examples;
    plain.forEach((ex, i) => expect(runsOf(ex)).toEqual(answers[i]));
    // a template with {% generation %} blocks gives HF's spans, here the same mask
    const gen = TEMPLATE.replace("<|assistant|>\n{{ m.content }}<|end|>\n", "<|assistant|>\n{% generation %}{{ m.content }}<|end|>{% endgeneration %}\n");
    const msgs = [{ role: 'user', content: 'Hi there' }, { role: 'assistant', content: 'Hello! How can I help?' }];
    const r = renderChat(compileChatTemplate(gen), msgs, { specialTokens: templateSpecialTokens(tok) });
    expect(r.method).toBe('generation-tags');
    const viaGen = loadExamples(tmpFile('g.jsonl', JSON.stringify({ messages: msgs }) + '\n'), { ...tok, chatTemplate: gen }, { maxSeqLength: 256 }).examples[0];
    expect(Array.from(viaGen.targets)).toEqual(Array.from(examples[0].targets));
    expect(Array.from(viaGen.ids)).toEqual(Array.from(examples[0].ids));
  });

  it('text: .jsonl {"text"}, .txt blocks and paragraphs; every token a target, BOS … EOS', () => {
    const { examples } = loadExamples(join(DATA, 'text.jsonl'), tok, { maxSeqLength: 256 });
    expect(examples.length).toBe(8);
    expect(examples[2].ids[0]).toBe(tok.bosTokenId);
    expect(tok.decode(examples[2].ids.subarray(1), false)).toBe('The sun was hot.</s>');
    expect(examples.every((e) => e.targets.every((x) => x === 1))).toBe(true);
    const text = readRecords(join(DATA, 'story.txt')).records[0].record;
    expect(text.format).toBe('text');
    const blocks = loadExamples(join(DATA, 'story.txt'), tok, { maxSeqLength: 32 }).examples;
    const all = [...tok.encode((text as { text: string }).text, true), tok.eosTokenId!];
    expect(blocks.slice(0, -1).every((b) => b.ids.length === 32)).toBe(true);
    expect(blocks.flatMap((b) => Array.from(b.ids))).toEqual(all);
    const paras = loadExamples(join(DATA, 'story.txt'), tok, { maxSeqLength: 256, textSplit: 'paragraphs' });
    expect(paras.examples.map((e) => tok.decode(e.ids))).toEqual([
      'Once upon a time, there was a little girl named Lily. She loved to play outside.',
      'One day, Lily saw a big red ball in the park. She ran to get it.\nThe ball was very bouncy.',
      'Lily played with the ball all day. When the sun went down, she went home happy.',
    ]);
    expect(paras.examples[1].source).toContain('line 3');
  });
});

describe('bad input', () => {
  const lines = (...ls: string[]): string => ls.join('\n') + '\n';
  const good = '{"prompt": "a", "completion": " b"}';
  it('every bad record names file and line', () => {
    expectBad(tmpFile('a.jsonl', lines(good, '{"prompt": "a", "completion": }')), 2, /invalid JSON/);
    expectBad(tmpFile('b.jsonl', lines(good, '', '[1, 2]')), 3, /not a JSON object/);
    expectBad(tmpFile('c.jsonl', lines('{"question": "x", "answer": "y"}')), 1, /unknown record format.*found keys \[question, answer\]/);
    expectBad(tmpFile('d.jsonl', lines('{"instruction": "x", "input": ""}')), 1, /missing field "output"/);
    expectBad(tmpFile('e.jsonl', lines(good, good, '{"prompt": "a", "completion": 5}')), 3, /line 3: completion: wrong field type \(expected a string, found number 5\)/);
    expectBad(tmpFile('f.jsonl', lines('{"text": "ok"}', '{"text": "   "}')), 2, /empty text/);
    expectBad(tmpFile('g.jsonl', lines('{"messages": [{"role": "user", "content": "hi"}]}')), 1, /no assistant turn.*roles \[user\]/);
    expectBad(tmpFile('h.jsonl', lines('{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "ok"}]}')), 1, /chat template rejected the conversation: Unknown role: robot/);
    expectBad(tmpFile('i.jsonl', lines('{"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "ok"}]}')), 1, /messages\[0\]\.content: wrong field type/);
    expectBad(tmpFile('j.jsonl', lines('{"text": "hello"}', good)), 2, /format differs.*expected format "text" \(set by line 1\), found format "prompt-completion"/);
    expectBad(tmpFile('k.json', '[\n  {"text": "a"},\n  {"text": "b"},\n  {"text": 7}\n]\n'), 4, /record \[2\]\): text: wrong field type/);
    expectBad(tmpFile('l.json', '[\n  {"text": "a"},\n  {"text": }\n]\n'), 3, /invalid JSON/);
    // chat data and a tokenizer without a chat template: the ChatML-style default (as peft serve uses)
    const m = tmpFile('m.jsonl', lines('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}'));
    const { examples } = loadExamples(m, tok, { maxSeqLength: 64 });
    const ex = examples[0];
    const learned = tok.decode(Array.from(ex.ids).filter((_, t) => t > 0 && ex.targets[t]), false);
    expect(learned).toContain('hello there');
    expect(tok.decode(Array.from(ex.ids), false)).toContain('<|im_start|>assistant');
  });

  it('skipBadLines skips and counts', () => {
    const f = tmpFile('s.jsonl', lines(good, '{oops', good, '{"prompt": 1, "completion": "x"}', good, '{"text": "other format"}', good));
    const { examples, stats } = loadExamples(f, tok, { maxSeqLength: 64, skipBadLines: true });
    expect(examples.length).toBe(4);
    expect(stats.skippedBadLines).toBe(3);
    expect(stats.badLines.map((b) => b.line)).toEqual([2, 4, 6]);
    const c = tmpFile('s.jsonl', lines('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "ok"}]}', '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "ok"}]}'));
    const d = loadDataset(c, chatTok, { maxSeqLength: 64, skipBadLines: true });
    expect([d.train.length, d.skippedBadLines, d.stats[0].badLines[0].line]).toEqual([1, 1, 1]);
  });
});

describe('truncation and packing', () => {
  it('right truncation keeps the prompt; an example whose prompt fills maxSeqLength is dropped and counted', () => {
    const { examples: full } = loadExamples(join(DATA, 'pc.jsonl'), tok, { maxSeqLength: 256 });
    const promptLen = (e: Example): number => e.targets.indexOf(1);
    const L = promptLen(full[1]) + 3;
    const { examples, stats } = loadExamples(join(DATA, 'pc.jsonl'), tok, { maxSeqLength: L });
    expect(stats.truncated).toBeGreaterThanOrEqual(1);
    const cut = examples.find((e) => e.source!.endsWith('line 2'))!;
    expect(cut.ids.length).toBe(L);
    expect(Array.from(cut.ids)).toEqual(Array.from(full[1].ids.subarray(0, L)));
    const tiny = loadExamples(join(DATA, 'pc.jsonl'), tok, { maxSeqLength: promptLen(full[1]) });
    expect(tiny.stats.droppedTooLong).toBeGreaterThanOrEqual(1);
    expect(tiny.examples.some((e) => e.source!.endsWith('line 2'))).toBe(false);
  });

  it('packed rows: segment ids and positions restart per example, last token of each example unlabelled', () => {
    const { examples } = loadExamples(join(DATA, 'text.jsonl'), tok, { maxSeqLength: 64 });
    const loader = createLoader(examples, { batchSize: 2, maxSeqLength: 64, pack: true, shuffle: false });
    let seen = 0;
    for (let k = 0; k < loader.batchesInEpoch(); k++) {
      const { batch, labels, numTargets } = loader.next();
      const { B, T, ids, segIds, positions, keyMask } = batch;
      let counted = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          const r = b * T + t;
          if (labels[r] !== -100) counted++;
          if (!keyMask![r]) { expect(labels[r]).toBe(-100); continue; }
          const first = t === 0 || segIds![r - 1] !== segIds![r];
          if (first) { seen++; expect(positions![r]).toBe(0); expect(ids[r]).toBe(tok.bosTokenId); expect(segIds![r]).toBe(t === 0 ? 0 : segIds![r - 1] + 1); }
          else expect(positions![r]).toBe(positions![r - 1] + 1);
          const last = t === T - 1 || !keyMask![r + 1] || segIds![r + 1] !== segIds![r];
          if (last) { expect(ids[r]).toBe(tok.eosTokenId); expect(labels[r]).toBe(-100); }
          else expect(labels[r]).toBe(ids[r + 1]);
        }
      }
      expect(numTargets).toBe(counted);
    }
    expect(seen).toBe(examples.length);
  });

  it('a packed row gives each example the logits it has alone (no attention across examples)', () => {
    const model = loadModel(join(FIXTURES, 'tiny', 'llama-gqa'));
    const V = model.config.vocabSize;
    let s = 12345;
    const rand = (): number => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296;
    const exs: Example[] = [5, 9, 3, 7, 6].map((n) => ({ ids: Int32Array.from({ length: n }, () => Math.floor(rand() * V)), targets: new Uint8Array(n).fill(1) }));
    // row 0: examples 0, 1, 2 (17 tokens); row 1: examples 3, 4 (13 tokens + 4 pads)
    const packed = collate([[exs[0], exs[1], exs[2]], [exs[3], exs[4]]], { packed: true });
    expect(packed.batch.T).toBe(17);
    const logits = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, packed.batch).hidden).data.slice()));
    const rowOf = [[0, 0], [0, 5], [0, 14], [1, 0], [1, 7]];
    let worst = 0;
    exs.forEach((ex, i) => {
      const alone = noGrad(() => withArena(() => lmLogits(model, forwardHidden(model, { ids: ex.ids, B: 1, T: ex.ids.length }).hidden).data.slice()));
      const start = (rowOf[i][0] * 17 + rowOf[i][1]) * V;
      worst = Math.max(worst, maxAbsDiff(logits.subarray(start, start + ex.ids.length * V), alone));
    });
    expect(worst).toBeLessThan(1e-5);
    expect(Number.isFinite(logits.reduce((a, b) => a + b, 0))).toBe(true); // padded rows stay finite
  });
});

describe('loader and splits', () => {
  const sameBatch = (a: TrainBatch, b: TrainBatch): void => {
    expect(Array.from(a.batch.ids)).toEqual(Array.from(b.batch.ids));
    expect(Array.from(a.labels)).toEqual(Array.from(b.labels));
    expect(Array.from(a.batch.segIds ?? [])).toEqual(Array.from(b.batch.segIds ?? []));
    expect(Array.from(a.batch.positions ?? [])).toEqual(Array.from(b.batch.positions ?? []));
    expect([a.batch.B, a.batch.T, a.numTargets]).toEqual([b.batch.B, b.batch.T, b.numTargets]);
  };

  it('state()/restore() resumes on identical batches across epochs; epochs reshuffle', () => {
    const { examples } = loadExamples(join(DATA, 'text.jsonl'), tok, { maxSeqLength: 64 });
    for (const pack of [false, true]) {
      const opts = { batchSize: 3, maxSeqLength: pack ? 40 : 64, pack, seed: 7, shuffle: true };
      const a = createLoader(examples, opts);
      const n = a.batchesInEpoch();
      for (let k = 0; k < n - 1; k++) a.next();
      const saved = JSON.stringify(a.state());
      const rest = Array.from({ length: 2 * n + 1 }, () => a.next()); // crosses two epoch boundaries
      expect(a.epoch).toBeGreaterThanOrEqual(2);
      const b = createLoader(examples, opts);
      b.restore(JSON.parse(saved));
      rest.forEach((x) => sameBatch(b.next(), x));
      // a fresh loader with the same seed repeats the run
      const c = createLoader(examples, opts), d = createLoader(examples, opts);
      for (let k = 0; k < n + 2; k++) sameBatch(c.next(), d.next());
    }
    const e = createLoader(examples, { batchSize: 8, maxSeqLength: 64, seed: 3 });
    const ep0 = e.next(), ep1 = e.next();
    expect(Array.from(ep0.batch.ids)).not.toEqual(Array.from(ep1.batch.ids));
    expect(() => e.restore({ epoch: 0, index: 0, seed: 3, numExamples: 99 })).toThrow(/numExamples/);
  });

  it('evalBatches: every example once, in order', () => {
    const { examples } = loadExamples(join(DATA, 'text.jsonl'), tok, { maxSeqLength: 64 });
    const batches = [...evalBatches(examples, { batchSize: 3, maxSeqLength: 64 })];
    expect(batches.map((b) => b.batch.B)).toEqual([3, 3, 2]);
    const firsts = batches.flatMap((b) => Array.from({ length: b.batch.B }, (_, r) => tok.decode(b.batch.ids.subarray(r * b.batch.T, r * b.batch.T + 4))));
    expect(firsts).toEqual(examples.map((e) => tok.decode(e.ids.subarray(0, 4))));
    const b0 = batches[0];
    for (let r = 0; r < 3; r++) {
      const L = examples[r].ids.length;
      expect(Array.from(b0.batch.keyMask!.subarray(r * b0.batch.T, (r + 1) * b0.batch.T))).toEqual(Array.from({ length: b0.batch.T }, (_, t) => (t < L ? 1 : 0)));
    }
  });

  it('validation split by fraction is deterministic by seed; or by file', () => {
    const f = join(DATA, 'text.jsonl');
    const key = (es: Example[]): string[] => es.map((e) => e.source!);
    const a = loadDataset(f, tok, { maxSeqLength: 64, valFraction: 0.25, seed: 1 });
    const b = loadDataset(f, tok, { maxSeqLength: 64, valFraction: 0.25, seed: 1 });
    expect(a.val.length).toBe(2);
    expect(a.train.length).toBe(6);
    expect(key(a.val)).toEqual(key(b.val));
    expect(new Set([...key(a.train), ...key(a.val)]).size).toBe(8);
    const others = [2, 3, 4, 5].map((seed) => key(loadDataset(f, tok, { maxSeqLength: 64, valFraction: 0.25, seed }).val).join());
    expect(others.some((k) => k !== key(a.val).join())).toBe(true);
    const byFile = loadDataset(f, tok, { maxSeqLength: 64, valFile: join(DATA, 'pc.jsonl') });
    expect([byFile.train.length, byFile.val.length, byFile.stats.length]).toEqual([8, 3, 2]);
    expect(() => loadDataset(f, tok, { maxSeqLength: 64, valFile: join(DATA, 'pc.jsonl'), valFraction: 0.1 })).toThrow(PeftError);
  });
});
