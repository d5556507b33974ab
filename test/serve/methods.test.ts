/**
 * Every adapter type the project trains is served: LoRA, IA3, prefix tuning (KV prefix in each
 * sequence's cache), prompt tuning (virtual tokens at prefill, shifted positions) and bottleneck
 * adapters, all in one mixed batch through the server, each row giving the same greedy tokens as
 * in-process `generate` with that adapter alone.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generate } from '../../src/generate/generate.js';
import { makeRng } from '../../src/generate/sampling.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import {
  createBottleneckAdapter, createIa3Adapter, createPrefixAdapter, createPromptAdapter, LoraAdapter, loadAdapter, parseLoraConfig, PeftModel,
  saveAdapter, sequenceSetup, type AdapterMethod,
} from '../../src/peft/index.js';
import { startServer, type RunningServer } from '../../src/serve/server.js';
import { STORIES } from '../helpers.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let server: RunningServer;
let dir: string;
const tok = loadTokenizer(STORIES);
const names = ['lora', 'ia3', 'prefix', 'prompt', 'bottleneck'];

/** Moves every trainable tensor away from its (often identity) initialisation. */
function perturb(a: AdapterMethod, seed: number, scale: number): AdapterMethod {
  const rng = makeRng(seed);
  for (const p of a.trainableParameters()) for (let i = 0; i < p.tensor.data.length; i++) p.tensor.data[i] += (rng() - 0.5) * scale;
  return a;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'peft-serve-methods-'));
  const model = loadModel(STORIES);
  const adapters: Record<string, AdapterMethod> = {
    lora: new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 32, target_modules: 'all-linear', init_lora_weights: false }), 1),
    ia3: perturb(createIa3Adapter(model, {}), 2, 1.0),
    prefix: perturb(createPrefixAdapter(model, { num_virtual_tokens: 4 }, 3), 3, 0.5),
    prompt: createPromptAdapter(model, { num_virtual_tokens: 3 }, undefined, 4),
    bottleneck: perturb(createBottleneckAdapter(model, { seed: 5 }), 5, 0.5),
  };
  for (const n of names) saveAdapter(adapters[n], join(dir, n));
  server = await startServer({ port: 0, adapters: names.map((name) => ({ name, path: join(dir, name) })), defaultMetrics: false });
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('adapter types', () => {
  it('LoRA, IA3, prefix, prompt and bottleneck adapters in one batch match generate() alone, row by row', async () => {
    const models = await (await fetch(`${server.url}/v1/models`)).json() as Json;
    expect(models.data.slice(1).map((m: Json) => m.peft_type)).toEqual(['LORA', 'IA3', 'PREFIX_TUNING', 'PROMPT_TUNING', 'BOTTLENECK']);
    // the reference: each adapter loaded from its saved directory, generating alone in-process
    const model = loadModel(STORIES);
    const peft = new PeftModel(model);
    for (const n of names) loadAdapter(peft, join(dir, n), n, false);
    const setup = sequenceSetup(peft);
    const prompt = 'Once upon a time';
    const ids = tok.encode(prompt);
    const promptText = tok.decode(ids);
    const rows = [null, ...names];
    const expected = rows.map((n) => {
      const r = generate(model, ids, { maxNewTokens: 20 }, setup, n);
      return { text: tok.decode([...ids, ...r.newIds]).slice(promptText.length), tokens: r.newIds.length };
    });
    expect(new Set(expected.map((e) => e.text)).size).toBe(rows.length); // every adapter changes the output
    const before = server.scheduler.stats.maxAdapters;
    const got = await Promise.all(rows.map(async (n) => {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: n ?? 'stories260K', prompt, max_tokens: 20, temperature: 0 }),
      });
      expect(r.status).toBe(200);
      return await r.json() as Json;
    }));
    got.forEach((g, i) => {
      expect(g.choices[0].text, String(rows[i])).toBe(expected[i].text);
      expect(g.usage.completion_tokens).toBe(expected[i].tokens);
      expect(g.usage.prompt_tokens).toBe(ids.length); // virtual tokens are not prompt tokens
    });
    expect(Math.max(before, server.scheduler.stats.maxAdapters)).toBeGreaterThanOrEqual(3);
  });

  it('the prompt-tuning position shift counts against the context', async () => {
    const fits = new Array(512 - 3 - 5).fill(300);
    const post = (model: string, max: number) => fetch(`${server.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, prompt: fits, max_tokens: max, temperature: 0, ignore_eos: true }),
    });
    expect((await post('stories260K', 8)).status).toBe(200);
    expect((await post('prompt', 5)).status).toBe(200);
    const over = await post('prompt', 6);
    expect(over.status).toBe(400);
    expect(((await over.json()) as Json).error.code).toBe('context_length_exceeded');
  });
});
