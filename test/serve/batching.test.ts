/**
 * Continuous batching and adapter lifetimes in `peft serve`: a request arriving while another
 * decodes joins the running batch; a mixed-adapter batch gives each row the tokens it gets alone
 * (greedy) and sampled rows their seed's tokens; /health answers while the model thread is busy.
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
  dir = mkdtempSync(join(tmpdir(), 'peft-serve-batch-'));
  const adapters = ['A', 'B', 'C'].map((name, i) => ({ name, path: newAdapter(name, 21 + i) }));
  server = await startServer({ port: 0, adapters, defaultMetrics: false });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('continuous batching', () => {
  it('a request arriving while another decodes joins the batch and finishes first', async () => {
    const joinsBefore = server.scheduler.stats.joinsWhileDecoding;
    const long = await openStream('/v1/completions', { model: 'A', prompt: 'Once upon a time', max_tokens: 300, temperature: 0, ignore_eos: true });
    await long.next();
    await long.next(); // decoding is under way
    const t0 = performance.now();
    const short = await post('/v1/completions', { model: 'B', prompt: 'The cat', max_tokens: 5, temperature: 0, ignore_eos: true });
    const shortMs = performance.now() - t0;
    expect(short.status).toBe(200);
    expect(short.body.usage.completion_tokens).toBe(5);
    // the long request is still decoding: the short one did not wait for it
    const longEventsWhenShortDone = long.events.length;
    const r = await long.finish();
    expect(r.finish).toBe('length');
    expect(longEventsWhenShortDone).toBeLessThan(r.events - 20);
    expect(server.scheduler.stats.joinsWhileDecoding).toBeGreaterThan(joinsBefore);
    expect(shortMs).toBeLessThan(5000);
  });

  it('a mixed-adapter batch gives row by row the same tokens as single requests (greedy)', async () => {
    const rows = [
      { model: 'stories260K', prompt: 'Once upon a time' },
      { model: 'A', prompt: 'Once upon a time' },
      { model: 'B', prompt: 'The little dog' },
      { model: 'C', prompt: 'Lily and Ben' },
      { model: 'A', prompt: 'The sun was' },
    ].map((r) => ({ ...r, max_tokens: 25, temperature: 0, ignore_eos: true }));
    const single: string[] = [];
    for (const r of rows) single.push((await post('/v1/completions', r)).body.choices[0].text);
    expect(new Set(single.slice(0, 2)).size).toBe(2); // adapter A changes the output
    const before = server.scheduler.stats.maxAdapters;
    const batched = await Promise.all(rows.map((r) => post('/v1/completions', r)));
    batched.forEach((b, i) => {
      expect(b.status).toBe(200);
      expect(b.body.choices[0].text).toBe(single[i]);
    });
    // streaming in a batch too, and seeded sampling per row
    const streamed = await Promise.all(rows.map(async (r) => (await openStream('/v1/completions', r)).finish()));
    streamed.forEach((s, i) => expect(s.text).toBe(single[i]));
    expect(server.scheduler.stats.maxAdapters).toBeGreaterThanOrEqual(3);
    expect(Math.max(before, server.scheduler.stats.maxAdapters)).toBeGreaterThanOrEqual(3);
    const sampled = rows.map((r, i) => ({ ...r, temperature: 0.8, seed: 1000 + i }));
    const alone: string[] = [];
    for (const r of sampled) alone.push((await post('/v1/completions', r)).body.choices[0].text);
    const together = await Promise.all(sampled.map((r) => post('/v1/completions', r)));
    together.forEach((t, i) => expect(t.body.choices[0].text).toBe(alone[i]));
  });

  it('/health answers quickly while the model thread is busy', async () => {
    const load = Array.from({ length: 16 }, (_, i) => post('/v1/completions', { model: ['A', 'B', 'C', 'stories260K'][i % 4], prompt: 'Once upon a time', max_tokens: 100, temperature: 0, ignore_eos: true }));
    await new Promise((r) => setTimeout(r, 100));
    const times: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      const h = await fetch(`${url}/health`);
      times.push(performance.now() - t0);
      expect(h.status).toBe(200);
      const body = await h.json() as Json;
      if (i === 0) expect(body.running).toBeGreaterThan(0);
      await new Promise((r) => setTimeout(r, 20));
    }
    const results = await Promise.all(load);
    expect(results.every((r) => r.status === 200)).toBe(true);
    times.sort((a, b) => a - b);
    expect(times[5]).toBeLessThan(100); // median
    expect(times[9]).toBeLessThan(500);
  });
});
