/**
 * Adapter lifetimes in `peft serve`: adapters load and unload at run time with requests in flight
 * and none fails (the unloaded adapter's running sequences finish on it; new requests get 404; its
 * name can be reused at once); a dead model thread is replaced with the same adapters.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../src/serve/server.js';
import { client, type Json } from './client.js';

let server: RunningServer;
let url: string;
let dir: string;

const { post, openStream, newAdapter: writeAdapter } = client(() => url);
const newAdapter = (name: string, seed: number): string => writeAdapter(dir, name, seed);

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'peft-serve-adapters-'));
  const adapters = ['A', 'B', 'C'].map((name, i) => ({ name, path: newAdapter(name, 21 + i) }));
  newAdapter('D', 31);
  newAdapter('A2', 41);
  server = await startServer({ port: 0, adapters, defaultMetrics: false, adapterDir: dir });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('adapters at run time', () => {
  it('load and unload while requests are in flight: no request fails', async () => {
    const inflight = await Promise.all(Array.from({ length: 6 }, (_, i) => openStream('/v1/completions', {
      model: i % 2 ? 'A' : 'B', prompt: 'Once upon a time', max_tokens: 120, temperature: 0, ignore_eos: true,
    })));
    for (const s of inflight) await s.next();
    // unload A while three sequences use it
    const del = await fetch(`${url}/v1/adapters/A`, { method: 'DELETE' });
    expect(del.status).toBe(200);
    const delBody = await del.json() as Json;
    expect(delBody).toMatchObject({ id: 'A', deleted: true });
    expect(delBody.in_flight).toBeGreaterThan(0);
    // new requests for A: 404; /v1/models no longer lists it
    const gone = await post('/v1/completions', { model: 'A', prompt: 'x', max_tokens: 2 });
    expect(gone.status).toBe(404);
    expect(gone.body.error.code).toBe('model_not_found');
    const models = await (await fetch(`${url}/v1/models`)).json() as Json;
    expect(models.data.map((m: Json) => m.id)).not.toContain('A');
    // load a new adapter, and a new one under the old name, while A's sequences still drain
    const loadD = await post('/v1/adapters', { name: 'D' });
    expect(loadD.status).toBe(200);
    expect(loadD.body).toMatchObject({ id: 'D', peft_type: 'LORA' });
    const reA = await post('/v1/adapters', { name: 'A', path: 'A2' });
    expect(reA.status).toBe(200);
    const useD = await post('/v1/completions', { model: 'D', prompt: 'Once upon a time', max_tokens: 10, temperature: 0, ignore_eos: true });
    expect(useD.status).toBe(200);
    const useA2 = await post('/v1/completions', { model: 'A', prompt: 'Once upon a time', max_tokens: 10, temperature: 0, ignore_eos: true });
    expect(useA2.status).toBe(200);
    // every in-flight request completes in full
    const done = await Promise.all(inflight.map((s) => s.finish()));
    for (const d of done) expect(d.finish).toBe('length');
    // the old A finished on its own weights: same text as a fresh request on old A would give is
    // unknowable now, but the new A differs from the old one's output
    expect(done[1].text.startsWith(useA2.body.choices[0].text)).toBe(false);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/peft_serve_adapters_loaded 4/); // B, C, D, A (new)
    // unload with nothing in flight
    const delD = await fetch(`${url}/v1/adapters/D`, { method: 'DELETE' });
    expect((await delD.json() as Json).in_flight).toBe(0);
    expect((await post('/v1/completions', { model: 'D', prompt: 'x', max_tokens: 2 })).status).toBe(404);
  });

  it('a dead model thread is restarted with the adapters; only its running requests fail', async () => {
    const running = openStream('/v1/completions', { model: 'B', prompt: 'Once upon a time', max_tokens: 300, temperature: 0, ignore_eos: true });
    const s = await running;
    await s.next();
    await server.scheduler.worker.crashForTest();
    const events: Array<Json | '[DONE]'> = [];
    for (let e = await s.next(); e !== null; e = await s.next()) events.push(e);
    expect(events.at(-1)).toBe('[DONE]');
    const err = events.find((e) => e !== '[DONE]' && e.error) as Json;
    expect(err.error.type).toBe('server_error');
    // back in service with the same adapters
    const deadline = Date.now() + 10_000;
    while ((await fetch(`${url}/health`)).status !== 200 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    const after = await post('/v1/completions', { model: 'C', prompt: 'Once upon a time', max_tokens: 5, temperature: 0 });
    expect(after.status).toBe(200);
    const models = await (await fetch(`${url}/v1/models`)).json() as Json;
    expect(models.data.map((m: Json) => m.id)).toEqual(expect.arrayContaining(['stories260K', 'B', 'C', 'A']));
    expect(await (await fetch(`${url}/metrics`)).text()).toMatch(/peft_serve_worker_restarts_total 1/);
  });
});
