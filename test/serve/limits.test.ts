/**
 * Limits of `peft serve`: a client that disconnects mid-stream (or before a non-streaming answer)
 * frees its batch slot at once; beyond the queue cap requests get 429; the per-request timeout
 * answers 408 (or an error event in a stream) and frees the slot. The server runs with one batch
 * slot, a queue of one, and slowed-down decoding steps so sequences stay in flight long enough.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../../src/serve/server.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let server: RunningServer;
let url: string;

const STEP_MS = 15;
const TIMEOUT_MS = 2000;

async function post(body: unknown, signal?: AbortSignal): Promise<{ status: number; body: Json; headers: Headers }> {
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal });
  return { status: r.status, body: await r.json() as Json, headers: r.headers };
}

/** Opens a stream and waits for its first generated text chunk. */
async function startStream(body: Json, ctl: AbortController): Promise<{ reader: ReadableStreamDefaultReader<Uint8Array> }> {
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }), signal: ctl.signal });
  expect(r.status).toBe(200);
  const reader = r.body!.getReader();
  let text = '';
  while (!text.includes('"text"')) {
    const { value, done } = await reader.read();
    if (done) throw new Error('stream ended early');
    text += new TextDecoder().decode(value);
  }
  return { reader };
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const long = { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 400, temperature: 0, ignore_eos: true };
const short = { model: 'stories260K', prompt: 'The cat', max_tokens: 3, temperature: 0, ignore_eos: true };

beforeAll(async () => {
  server = await startServer({ port: 0, maxBatch: 1, maxQueue: 1, requestTimeoutMs: TIMEOUT_MS, stepDelayMs: STEP_MS, defaultMetrics: false });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
});

describe('limits', () => {
  it('run-time adapter loading is off without an adapter directory: 403', async () => {
    const r = await fetch(`${url}/v1/adapters`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'A', path: '/etc' }) });
    expect(r.status).toBe(403);
    expect(((await r.json()) as Json).error.code).toBe('adapter_loading_disabled');
  });

  it('a client that disconnects mid-stream frees its slot: the next request starts at once', async () => {
    const ctl = new AbortController();
    await startStream(long, ctl);
    expect(server.scheduler.runningCount).toBe(1);
    ctl.abort();
    await until(() => server.scheduler.runningCount === 0);
    // with one slot, this would wait ~400 steps if the aborted sequence were still decoding
    const t0 = performance.now();
    const r = await post(short);
    expect(r.status).toBe(200);
    expect(performance.now() - t0).toBeLessThan(1500);
    const m = await (await fetch(`${url}/metrics`)).text();
    expect(m).toMatch(/peft_serve_requests_total\{endpoint="\/v1\/completions",status="499"\} 1/);
    expect(m).toMatch(/peft_serve_running_sequences 0/);
  });

  it('a non-streaming client that goes away also frees its slot', async () => {
    const ctl = new AbortController();
    const p = post(long, ctl.signal).catch((e: Error) => e);
    await until(() => server.scheduler.runningCount === 1);
    await new Promise((r) => setTimeout(r, 50));
    ctl.abort();
    expect(await p).toBeInstanceOf(Error);
    await until(() => server.scheduler.runningCount === 0);
    expect((await post(short)).status).toBe(200);
  });

  it('beyond the queue cap: 429 with an OpenAI-style body and Retry-After; the queued request still completes', async () => {
    const ctl = new AbortController();
    await startStream(long, ctl); // takes the only slot
    const queued = post(short); // waits in the queue (cap 1)
    await until(() => server.scheduler.queueDepth === 1);
    const refused = await post(short);
    expect(refused.status).toBe(429);
    expect(refused.headers.get('retry-after')).toBe('1');
    expect(refused.body.error).toMatchObject({ type: 'rate_limit_error', code: 'queue_full', param: null });
    const refusedStream = await post({ ...short, stream: true });
    expect(refusedStream.status).toBe(429);
    expect((await fetch(`${url}/health`)).status).toBe(200);
    ctl.abort(); // frees the slot: the queued request runs
    const q = await queued;
    expect(q.status).toBe(200);
    expect(q.body.usage.completion_tokens).toBe(3);
    const m = await (await fetch(`${url}/metrics`)).text();
    expect(m).toMatch(/peft_serve_requests_total\{endpoint="\/v1\/completions",status="429"\} 2/);
    expect(m).toMatch(/peft_serve_queue_depth 0/);
  });

  it('the per-request timeout answers 408 (non-streaming) or an error event (streaming) and frees the slot', async () => {
    const t0 = performance.now();
    const r = await post(long);
    expect(r.status).toBe(408);
    expect(r.body.error).toMatchObject({ type: 'timeout_error', code: 'timeout' });
    expect(performance.now() - t0).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    await until(() => server.scheduler.runningCount === 0);
    const s = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...long, stream: true }) });
    const text = await s.text();
    expect(s.status).toBe(200);
    expect(text).toContain('"code":"timeout"');
    expect(text.endsWith('data: [DONE]\n\n')).toBe(true);
    await until(() => server.scheduler.runningCount === 0);
    expect((await post(short)).status).toBe(200);
  });
});
