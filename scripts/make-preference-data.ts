/**
 * Builds data/grimms_preference/ from the bundled Grimm's Fairy Tales text: a small preference
 * set whose chosen completion is the REAL continuation of a passage and whose rejected completion
 * is a SAMPLE FROM THE BASE MODEL (the bundled stories260K, temperature 1, seeded per record) given
 * the same prompt and as many new tokens as the real continuation has (stopping early at the end
 * of a story). The base model prefers its own TinyStories-like samples; preference tuning should
 * move it to the tales' continuations.
 *
 * Passages: paragraphs (blank-line separated) of at least PROMPT_WORDS + COMPLETION_WORDS words,
 * skipping the first ones up to the first tale ("THE GOLDEN BIRD" text) and the preparer's notes;
 * prompt = the first PROMPT_WORDS words, chosen = the next COMPLETION_WORDS words (each with a
 * leading space). Paragraphs are assigned to validation by a seeded shuffle (VAL_FRACTION), so
 * held-out pairs come from passages never trained on.
 *
 * Writes train.jsonl / val.jsonl ({"prompt","chosen","rejected"}) and the unpaired form for KTO,
 * train_kto.jsonl / val_kto.jsonl ({"prompt","completion","label"}: every pair gives a desirable
 * and an undesirable example, as TRL's `unpair_preference_dataset`).
 *
 * Usage: npx tsx scripts/make-preference-data.ts   (deterministic; rerun gives identical files)
 */
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from '../src/generate/generate.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { loadModel } from '../src/models/load.js';
import { seededPermutation } from '../src/train/data/batching.js';

const ROOT = join(import.meta.dirname, '..');
const SRC = join(ROOT, 'data', 'grimms_fairy_tales', 'grimms_fairy_tales_body.txt');
const OUT = join(ROOT, 'data', 'grimms_preference');
const PROMPT_WORDS = 24;
const COMPLETION_WORDS = 16;
const VAL_FRACTION = 0.15;
const SEED = 2591;

const text = readFileSync(SRC, 'utf8');
const start = text.indexOf('\nTHE GOLDEN BIRD\n'); // the tale itself (the contents list is indented)
if (start < 0) throw new Error('first tale not found');
const paragraphs = text.slice(start).split(/\n\s*\n/).map((p) => p.replace(/\s+/g, ' ').trim())
  .filter((p) => !/^[A-Z0-9 ,.'\-[\]]+$/.test(p)) // titles
  .map((p) => p.split(' '))
  .filter((w) => w.length >= PROMPT_WORDS + COMPLETION_WORDS);

const MODEL = join(ROOT, 'models', 'stories260K');
const model = loadModel(MODEL);
const tok = loadTokenizer(MODEL);

/** The base model's continuation of `prompt`: as many tokens as `chosen` has, temperature 1, seeded. */
function baseSample(prompt: string, chosen: string, seed: number): string {
  const promptIds = tok.encode(prompt, true);
  const n = tok.encode(prompt + chosen, true).length - promptIds.length;
  const head = tok.decode(promptIds, true);
  for (let s = seed; ; s += 100003) {
    const r = generate(model, promptIds, { maxNewTokens: n, temperature: 1, seed: s, stopIds: [1, 2] });
    const full = tok.decode(r.ids, true);
    const text = full.startsWith(head) ? full.slice(head.length) : ' ' + tok.decode(r.newIds, true);
    if (text.trim().length > 0) return text.startsWith(' ') ? text : ' ' + text;
  }
}

const order = seededPermutation(paragraphs.length, SEED, 0);
const nVal = Math.round(paragraphs.length * VAL_FRACTION);
const valSet = new Set(order.slice(0, nVal));
const train: string[] = [], val: string[] = [], trainKto: string[] = [], valKto: string[] = [];
paragraphs.forEach((w, i) => {
  const prompt = w.slice(0, PROMPT_WORDS).join(' ');
  const cont = w.slice(PROMPT_WORDS, PROMPT_WORDS + COMPLETION_WORDS);
  const chosen = ' ' + cont.join(' ');
  const rec = { prompt, chosen, rejected: baseSample(prompt, chosen, SEED + i) };
  const line = JSON.stringify(rec);
  const kto = [JSON.stringify({ prompt, completion: rec.chosen, label: true }), JSON.stringify({ prompt, completion: rec.rejected, label: false })];
  if (valSet.has(i)) { val.push(line); valKto.push(...kto); } else { train.push(line); trainKto.push(...kto); }
});
mkdirSync(OUT, { recursive: true });
const files: Array<[string, string[]]> = [['train.jsonl', train], ['val.jsonl', val], ['train_kto.jsonl', trainKto], ['val_kto.jsonl', valKto]];
for (const [name, lines] of files) {
  const body = lines.join('\n') + '\n';
  writeFileSync(join(OUT, name), body);
  console.log(`${name}: ${lines.length} records, sha256 ${createHash('sha256').update(body).digest('hex')}`);
}
console.log(`source sha256 ${createHash('sha256').update(text).digest('hex')}`);
