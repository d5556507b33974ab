/**
 * `peft serve` endpoints over loopback: completions and chat (streaming and not), usage counts,
 * stop strings, seeds, /v1/models, /health, /metrics, and every error case answered with an
 * OpenAI-style body (nothing a client sends takes the server down).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:net';
import { startServer, type RunningServer } from '../../src/serve/server.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { loadModel } from '../../src/models/load.js';
import { LoraAdapter, parseLoraConfig, saveAdapter } from '../../src/peft/index.js';
import { STORIES } from '../helpers.js';

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

let server: RunningServer;
let url: string;
let dir: string;
const tok = loadTokenizer(STORIES);

async function post(path: string, body: unknown, headers: Record<string, string> = { 'content-type': 'application/json' }): Promise<{ status: number; body: Json; headers: Headers }> {
  const r = await fetch(url + path, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await r.text();
  return { status: r.status, body: JSON.parse(text) as Json, headers: r.headers };
}

/** POSTs a streaming request and returns the parsed `data:` payloads (the last is "[DONE]"). */
async function stream(path: string, body: Json): Promise<{ status: number; contentType: string | null; events: Array<Json | '[DONE]'>; raw: string }> {
  const r = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...body, stream: true }) });
  const raw = await r.text();
  const events = raw.split('\n\n').filter((b) => b.length > 0).map((b) => {
    expect(b.startsWith('data: ')).toBe(true);
    const d = b.slice(6);
    return d === '[DONE]' ? '[DONE]' : JSON.parse(d) as Json;
  });
  return { status: r.status, contentType: r.headers.get('content-type'), events, raw };
}

function expectError(r: { status: number; body: Json }, status: number, param?: string | null, code?: string): void {
  expect(r.status).toBe(status);
  expect(Object.keys(r.body)).toEqual(['error']);
  const e = r.body.error;
  expect(typeof e.message).toBe('string');
  expect(e.message.length).toBeGreaterThan(0);
  expect(Object.keys(e).sort()).toEqual(['code', 'message', 'param', 'type']);
  if (status < 500 && status !== 429 && status !== 408) expect(e.type).toBe('invalid_request_error');
  if (param !== undefined) expect(e.param).toBe(param);
  if (code !== undefined) expect(e.code).toBe(code);
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'peft-serve-api-'));
  const model = loadModel(STORIES);
  saveAdapter(new LoraAdapter(model, parseLoraConfig({ r: 4, lora_alpha: 8, target_modules: 'all-linear', init_lora_weights: false }), 3), join(dir, 'tales'));
  server = await startServer({ port: 0, adapters: [{ name: 'tales', path: join(dir, 'tales') }], bodyLimit: 64 * 1024, adapterDir: dir });
  url = server.url;
});

afterAll(async () => {
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

const base = { model: 'stories260K', temperature: 0 };

describe('completions', () => {
  it('non-streaming: OpenAI shape, usage counts, text = decoded continuation', async () => {
    const r = await post('/v1/completions', { ...base, prompt: 'Once upon a time', max_tokens: 12, ignore_eos: true });
    expect(r.status).toBe(200);
    const b = r.body;
    expect(b.object).toBe('text_completion');
    expect(b.id).toMatch(/^cmpl-/);
    expect(b.model).toBe('stories260K');
    expect(typeof b.created).toBe('number');
    expect(b.choices).toHaveLength(1);
    expect(b.choices[0]).toMatchObject({ index: 0, logprobs: null, finish_reason: 'length' });
    const promptIds = tok.encode('Once upon a time');
    expect(b.usage).toEqual({ prompt_tokens: promptIds.length, completion_tokens: 12, total_tokens: promptIds.length + 12 });
    expect(b.choices[0].text.startsWith(', there was')).toBe(true);
  });

  it('streaming: SSE chunks concatenate to the non-streaming text, then [DONE]; include_usage adds a usage chunk', async () => {
    const body = { ...base, prompt: 'The dog', max_tokens: 20, ignore_eos: true };
    const whole = await post('/v1/completions', body);
    const s = await stream('/v1/completions', { ...body, stream_options: { include_usage: true } });
    expect(s.status).toBe(200);
    expect(s.contentType).toMatch(/^text\/event-stream/);
    expect(s.raw.endsWith('data: [DONE]\n\n')).toBe(true);
    const chunks = s.events.slice(0, -1) as Json[];
    expect(s.events.at(-1)).toBe('[DONE]');
    const usage = chunks.at(-1)!;
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual(whole.body.usage);
    const textChunks = chunks.slice(0, -1);
    for (const c of textChunks) {
      expect(c.object).toBe('text_completion');
      expect(c.id).toBe(textChunks[0].id);
    }
    expect(textChunks.at(-1)!.choices[0].finish_reason).toBe('length');
    expect(textChunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null)).toBe(true);
    expect(textChunks.map((c) => c.choices[0].text).join('')).toBe(whole.body.choices[0].text);
    expect(textChunks.length).toBeGreaterThan(5); // streamed piece by piece
  });

  it('stop strings (string or list) cut the text before the match with finish_reason stop', async () => {
    const whole = await post('/v1/completions', { ...base, prompt: 'Once upon a time', max_tokens: 30 });
    const text: string = whole.body.choices[0].text;
    const stopAt = text.indexOf(' named');
    expect(stopAt).toBeGreaterThan(0);
    for (const stop of [' named', ['zzz', ' named']]) {
      const r = await post('/v1/completions', { ...base, prompt: 'Once upon a time', max_tokens: 30, stop });
      expect(r.body.choices[0].text).toBe(text.slice(0, stopAt));
      expect(r.body.choices[0].finish_reason).toBe('stop');
      const s = await stream('/v1/completions', { ...base, prompt: 'Once upon a time', max_tokens: 30, stop });
      const chunks = s.events.slice(0, -1) as Json[];
      expect(chunks.map((c) => c.choices[0].text).join('')).toBe(text.slice(0, stopAt));
      expect(chunks.at(-1)!.choices[0].finish_reason).toBe('stop');
    }
  });

  it('seeded sampling is reproducible; token-id prompts and several prompts per request', async () => {
    const body = { model: 'stories260K', prompt: 'Once upon a time', max_tokens: 20, temperature: 1, top_p: 0.9, seed: 7 };
    const a = await post('/v1/completions', body);
    const b = await post('/v1/completions', body);
    expect(a.body.choices[0].text).toBe(b.body.choices[0].text);
    const ids = tok.encode('Once upon a time');
    const c = await post('/v1/completions', { ...body, prompt: ids });
    expect(c.body.choices[0].text).toBe(a.body.choices[0].text);
    const multi = await post('/v1/completions', { ...base, prompt: ['Once upon a time', 'The cat'], max_tokens: 5, ignore_eos: true });
    expect(multi.body.choices.map((x: Json) => x.index)).toEqual([0, 1]);
    expect(multi.body.usage.completion_tokens).toBe(10);
  });

  it('the model field selects an adapter (different output from the base model)', async () => {
    const body = { prompt: 'Once upon a time', max_tokens: 20, temperature: 0, ignore_eos: true };
    const baseOut = await post('/v1/completions', { ...body, model: 'stories260K' });
    const ad = await post('/v1/completions', { ...body, model: 'tales' });
    expect(ad.status).toBe(200);
    expect(ad.body.model).toBe('tales');
    expect(ad.body.choices[0].text).not.toBe(baseOut.body.choices[0].text);
  });
});

describe('chat completions', () => {
  const messages = [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'Tell me about a cat.' }];

  it('non-streaming: renders the default ChatML template with a generation prompt', async () => {
    const r = await post('/v1/chat/completions', { ...base, messages, max_tokens: 10, ignore_eos: true });
    expect(r.status).toBe(200);
    expect(r.body.object).toBe('chat.completion');
    expect(r.body.id).toMatch(/^chatcmpl-/);
    expect(r.body.choices[0].message.role).toBe('assistant');
    expect(typeof r.body.choices[0].message.content).toBe('string');
    const rendered = '<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nTell me about a cat.<|im_end|>\n<|im_start|>assistant\n';
    expect(r.body.usage.prompt_tokens).toBe(tok.encode(rendered).length);
    expect(r.body.usage.completion_tokens).toBe(10);
    // text parts are accepted like plain content
    const parts = await post('/v1/chat/completions', { ...base, messages: [messages[0], { role: 'user', content: [{ type: 'text', text: 'Tell me ' }, { type: 'text', text: 'about a cat.' }] }], max_tokens: 10, ignore_eos: true });
    expect(parts.body.choices[0].message.content).toBe(r.body.choices[0].message.content);
  });

  it('streaming: role chunk first, content deltas, finish chunk, [DONE]', async () => {
    const whole = await post('/v1/chat/completions', { ...base, messages, max_completion_tokens: 15, ignore_eos: true });
    const s = await stream('/v1/chat/completions', { ...base, messages, max_tokens: 15, ignore_eos: true });
    expect(s.events.at(-1)).toBe('[DONE]');
    const chunks = s.events.slice(0, -1) as Json[];
    expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    for (const c of chunks) expect(c.object).toBe('chat.completion.chunk');
    expect(chunks.at(-1)!.choices[0]).toMatchObject({ delta: {}, finish_reason: 'length' });
    const text = chunks.slice(1, -1).map((c) => c.choices[0].delta.content).join('');
    expect(text).toBe(whole.body.choices[0].message.content);
  });
});

describe('models, health, metrics', () => {
  it('GET /v1/models lists the base and the adapters', async () => {
    const r = await (await fetch(`${url}/v1/models`)).json() as Json;
    expect(r.object).toBe('list');
    expect(r.data.map((m: Json) => m.id)).toEqual(['stories260K', 'tales']);
    expect(r.data[1]).toMatchObject({ object: 'model', parent: 'stories260K', max_model_len: 512 });
    const one = await fetch(`${url}/v1/models/tales`);
    expect(one.status).toBe(200);
    expectError({ status: (await fetch(`${url}/v1/models/nope`)).status, body: { error: { message: 'x', type: 'invalid_request_error', param: 'model', code: 'model_not_found' } } }, 404);
  });

  it('GET /health and GET /metrics (Prometheus text)', async () => {
    const h = await fetch(`${url}/health`);
    expect(h.status).toBe(200);
    expect((await h.json() as Json).status).toBe('ok');
    const m = await fetch(`${url}/metrics`);
    expect(m.headers.get('content-type')).toMatch(/^text\/plain/);
    const text = await m.text();
    for (const name of ['peft_serve_requests_total', 'peft_serve_generated_tokens_total', 'peft_serve_request_duration_seconds_bucket',
      'peft_serve_time_to_first_token_seconds_bucket', 'peft_serve_queue_depth', 'peft_serve_adapters_loaded', 'peft_serve_running_sequences'])
      expect(text).toContain(name);
    expect(text).toMatch(/peft_serve_requests_total\{endpoint="\/v1\/completions",status="200"\} [1-9]/);
    expect(text).toMatch(/peft_serve_adapters_loaded 1/);
    const gen = Number(/peft_serve_generated_tokens_total (\d+)/.exec(text)![1]);
    expect(gen).toBeGreaterThan(50);
  });
});

describe('errors', () => {
  it('unknown model: 404 model_not_found', async () => {
    expectError(await post('/v1/completions', { model: 'nope', prompt: 'x' }), 404, 'model', 'model_not_found');
    expectError(await post('/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] }), 404, 'model', 'model_not_found');
  });

  it('invalid JSON, empty body, non-object body: 400', async () => {
    expectError(await post('/v1/completions', '{"model": '), 400, null, 'invalid_json');
    expectError(await post('/v1/completions', '{bad', { 'content-type': 'text/plain' }), 400, null, 'invalid_json');
    expectError(await post('/v1/completions', ''), 400);
    expectError(await post('/v1/completions', '[1, 2]'), 400, null, 'invalid_type');
    expectError(await post('/v1/completions', 'null'), 400);
    expectError(await post('/v1/completions', '{"__proto__": {"x": 1}}'), 400);
  });

  it('wrong field types and values: 400 naming the param', async () => {
    const cases: Array<[Json, string]> = [
      [{ prompt: 'x' }, 'model'],
      [{ model: 5, prompt: 'x' }, 'model'],
      [{ model: 'stories260K' }, 'prompt'],
      [{ model: 'stories260K', prompt: 5 }, 'prompt'],
      [{ model: 'stories260K', prompt: [] }, 'prompt'],
      [{ model: 'stories260K', prompt: [1, 'a'] }, 'prompt'],
      [{ model: 'stories260K', prompt: [1, -4] }, 'prompt'],
      [{ model: 'stories260K', prompt: [1, 100000] }, 'prompt'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: '5' }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: 2.5 }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: -1 }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: 0 }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: 1e12 }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', max_tokens: 600 }, 'max_tokens'],
      [{ model: 'stories260K', prompt: 'x', temperature: 'hot' }, 'temperature'],
      [{ model: 'stories260K', prompt: 'x', temperature: -1 }, 'temperature'],
      [{ model: 'stories260K', prompt: 'x', top_p: 0 }, 'top_p'],
      [{ model: 'stories260K', prompt: 'x', top_p: 1.5 }, 'top_p'],
      [{ model: 'stories260K', prompt: 'x', seed: 'abc' }, 'seed'],
      [{ model: 'stories260K', prompt: 'x', seed: 1.5 }, 'seed'],
      [{ model: 'stories260K', prompt: 'x', stop: 5 }, 'stop'],
      [{ model: 'stories260K', prompt: 'x', stop: [''] }, 'stop'],
      [{ model: 'stories260K', prompt: 'x', stop: ['a', 3] }, 'stop'],
      [{ model: 'stories260K', prompt: 'x', stream: 'yes' }, 'stream'],
      [{ model: 'stories260K', prompt: 'x', n: 2 }, 'n'],
      [{ model: 'stories260K', prompt: 'x', logprobs: 5 }, 'logprobs'],
      [{ model: 'stories260K', prompt: 'x', stop_token_ids: [1, 100000] }, 'stop_token_ids'],
      [{ model: 'stories260K', prompt: new Array(20).fill('x') }, 'prompt'],
    ];
    for (const [body, param] of cases) {
      const r = await post('/v1/completions', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expectError(r, 400, param);
    }
    const chatCases: Array<[Json, string]> = [
      [{ model: 'stories260K' }, 'messages'],
      [{ model: 'stories260K', messages: 'hi' }, 'messages'],
      [{ model: 'stories260K', messages: [] }, 'messages'],
      [{ model: 'stories260K', messages: ['hi'] }, 'messages[0]'],
      [{ model: 'stories260K', messages: [{ role: 'wizard', content: 'x' }] }, 'messages[0].role'],
      [{ model: 'stories260K', messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
      [{ model: 'stories260K', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 'messages[0].content[0]'],
      [{ model: 'stories260K', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] }, 'tools'],
      [{ model: 'stories260K', messages: [{ role: 'user', content: 'x' }], max_completion_tokens: -3 }, 'max_completion_tokens'],
    ];
    for (const [body, param] of chatCases) expectError(await post('/v1/chat/completions', body), 400, param);
  });

  it('a prompt longer than the context (max_position_embeddings): 400 context_length_exceeded', async () => {
    const long = 'Once upon a time there was a cat. '.repeat(80);
    expect(tok.encode(long).length).toBeGreaterThan(512);
    expectError(await post('/v1/completions', { ...base, prompt: long }), 400, 'prompt', 'context_length_exceeded');
    expectError(await post('/v1/completions', { ...base, prompt: new Array(600).fill(5) }), 400, 'prompt', 'context_length_exceeded');
    expectError(await post('/v1/chat/completions', { ...base, messages: [{ role: 'user', content: long }] }), 400, 'messages', 'context_length_exceeded');
    // streaming requests are refused before the stream starts
    const s = await post('/v1/completions', { ...base, prompt: long, stream: true });
    expectError(s, 400, 'prompt', 'context_length_exceeded');
    // fits exactly: prompt + max_tokens = 512 is accepted
    const ids = new Array(500).fill(300);
    const ok = await post('/v1/completions', { ...base, prompt: ids, max_tokens: 12, ignore_eos: true });
    expect(ok.status).toBe(200);
    expect(ok.body.usage.completion_tokens).toBe(12);
    expectError(await post('/v1/completions', { ...base, prompt: ids, max_tokens: 13 }), 400, 'max_tokens', 'context_length_exceeded');
  });

  it('a body over the size limit: 413', async () => {
    const r = await post('/v1/completions', { ...base, prompt: 'x'.repeat(70 * 1024) });
    expectError(r, 413, null, 'body_too_large');
  });

  it('unknown URL: 404 OpenAI-style; adapter API errors', async () => {
    expectError(await post('/v1/nothing', {}), 404, null, 'unknown_url');
    expectError({ status: (await fetch(`${url}/v2/models`)).status, body: await (await fetch(`${url}/v2/models`)).json() as Json }, 404);
    expectError(await post('/v1/adapters', { name: 'x' }), 404, 'path', 'adapter_not_found'); // path defaults to the name
    expectError(await post('/v1/adapters', { name: 'x', path: 5 }), 400, 'path', 'invalid_type');
    expectError(await post('/v1/adapters', { name: 'bad name!', path: 'tales' }), 400, 'name');
    expectError(await post('/v1/adapters', { name: 'tales', path: 'tales' }), 409, 'name', 'adapter_exists');
    expectError(await post('/v1/adapters', { name: 'stories260K', path: 'tales' }), 409, 'name');
    expectError(await post('/v1/adapters', { name: 'ghost', path: 'does-not-exist' }), 404, 'path', 'adapter_not_found');
    const del = await fetch(`${url}/v1/adapters/ghost`, { method: 'DELETE' });
    expectError({ status: del.status, body: await del.json() as Json }, 404, 'name', 'adapter_not_found');
  });

  it('malformed HTTP and abrupt clients do not take the server down', async () => {
    // garbage on the socket
    await new Promise<void>((resolve) => {
      const s = connect(Number(new URL(url).port), '127.0.0.1', () => s.end('NOT HTTP AT ALL\r\n\r\n'));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.resume();
    });
    // a body shorter than its Content-Length, then the socket closes
    await new Promise<void>((resolve) => {
      const req = httpRequest(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': '1000' } });
      req.on('error', () => resolve());
      req.on('response', (r) => { r.resume(); resolve(); });
      req.write('{"model": "stories');
      setTimeout(() => req.destroy(), 50);
    });
    const r = await post('/v1/completions', { ...base, prompt: 'Still alive?', max_tokens: 3 });
    expect(r.status).toBe(200);
    expect((await fetch(`${url}/health`)).status).toBe(200);
  });
});
