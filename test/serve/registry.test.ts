/**
 * `peft serve --registry`: NAME serves its prod version and NAME@N any version (loaded on first
 * use); when prod moves, requests in flight finish on the old version and new ones get the new
 * one, none dropped; adapters cannot be loaded by path; a version trained on another base is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { push, setTag } from '../../src/lifecycle/registry.js';
import { startServer, type RunningServer } from '../../src/serve/server.js';
import { client, type Json } from './client.js';

let server: RunningServer;
let url: string;
let dir: string;
let root: string;
const { post, openStream, newAdapter } = client(() => url);
const ask = (model: string) => post('/v1/completions', { model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, ignore_eos: true });

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'peft-serve-reg-'));
  root = join(dir, 'reg');
  push(root, 'tales', newAdapter(dir, 'v1', 5));
  push(root, 'tales', newAdapter(dir, 'v2', 6));
  const bad = newAdapter(dir, 'v3', 7);
  writeFileSync(join(bad, 'training_provenance.json'), JSON.stringify({ format: 'peft-ts-provenance/1', base: { sha256: 'f'.repeat(64), config: { 'config.json': 'f'.repeat(64) }, weights: {}, tokenizer: {} }, metrics: {} }));
  push(root, 'tales', bad);
  setTag(root, 'tales@1', 'prod');
  server = await startServer({ port: 0, registry: root, registryPollMs: 50, stepDelayMs: 10, defaultMetrics: false });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('serve --registry', () => {
  it('NAME follows prod without dropping requests; NAME@N pins a version; only the registry loads adapters', async () => {
    const v1 = await ask('tales@1'), v2 = await ask('tales@2'), prod = await ask('tales');
    expect(v1.status).toBe(200);
    expect(v2.status).toBe(200);
    expect(prod.body.choices[0].text).toBe(v1.body.choices[0].text);
    expect(v2.body.choices[0].text).not.toBe(v1.body.choices[0].text);
    const models = (await (await fetch(`${url}/v1/models`)).json() as Json).data.map((m: Json) => m.id);
    expect(models).toEqual(expect.arrayContaining(['tales', 'tales@1', 'tales@2']));
    // a long request on prod (= v1) while prod moves to v2
    const long = await openStream('/v1/completions', { model: 'tales', prompt: 'Once upon a time', max_tokens: 120, temperature: 0, ignore_eos: true });
    await long.next();
    setTag(root, 'tales@2', 'prod');
    let now = '';
    for (let i = 0; i < 100 && now !== v2.body.choices[0].text; i++) now = (await ask('tales')).body.choices[0].text;
    expect(now).toBe(v2.body.choices[0].text);
    expect(server.scheduler.runningCount).toBe(1); // the switch happened while the long request ran
    const done = await long.finish();
    expect(done.finish).toBe('length');
    const ref = await post('/v1/completions', { model: 'tales@1', prompt: 'Once upon a time', max_tokens: 120, temperature: 0, ignore_eos: true });
    expect(done.text).toBe(ref.body.choices[0].text); // finished on the version it started with
    // by path: refused; unknown names and versions: 404; another base: refused
    expect((await post('/v1/adapters', { name: 'x', path: dir })).status).toBe(403);
    expect((await ask('tales@9')).status).toBe(404);
    expect((await ask('nope')).status).toBe(404);
    const other = await ask('tales@3');
    expect(other.status).toBe(409);
    expect(other.body.error.message).toMatch(/different base model/);
  });
});

describe('serve --registry under the adapter cap', () => {
  it('a version evicted by --max-adapters is loaded again on its next request', async () => {
    const small = await startServer({ port: 0, registry: root, registryPollMs: 50, maxAdapters: 1, defaultMetrics: false });
    try {
      const at = (model: string) => fetch(`${small.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, ignore_eos: true }) });
      const prod = await (await at('tales')).json() as Json; // prod = tales@2 since the test above
      expect((await at('tales@1')).status).toBe(200); // evicts the idle prod version
      expect(small.scheduler.listAdapters().map((a) => a.name)).toEqual(['tales@1']);
      const again = await at('tales');
      expect(again.status).toBe(200);
      expect(((await again.json()) as Json).choices[0].text).toBe(prod.choices[0].text);
    } finally {
      await small.close();
    }
  });
});
