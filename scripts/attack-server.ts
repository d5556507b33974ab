/**
 * An attack on `peft serve`, bounded and on loopback only: starts its own server (bundled
 * stories260K, an API key, an --adapter-dir holding good and hostile adapter directories, small
 * caps), fires hostile requests at it, and classifies every answer.
 *
 *   npx tsx scripts/attack-server.ts [--rounds N] [--budget-s S] [--timeout-ms MS] [--seed N] [--json FILE] [--verbose]
 *
 * --rounds (default 1): fixed attack cases run once; each round adds 60 randomly mutated
 * generation requests and 20 mutated adapter loads (seeded, reproducible). --budget-s (default
 * 60): the run stops starting requests after this many seconds. --timeout-ms (default 10000): an
 * answer slower than this is a hang. The server is closed and its files removed at the end.
 *
 * Outcomes per request (the first that applies):
 * - `leak`: the answer holds a server path (the fixture tree, model directory, working or temp
 *   directory), a file's secret marker, /etc/passwd content or a stack trace (`    at `);
 * - `5xx`: a 500-599 status where none is expected (503 is expected only from /health tests);
 * - `hang`: no complete answer within the timeout;
 * - `dropped`: the connection closed without an answer;
 * - `silent accept`: a 2xx for an input that must be refused (no key, a path out of the
 *   adapter directory, a refused value);
 * - `clean 4xx`: a 4xx with an OpenAI error body `{"error": {"message", "type", ...}}` (or Node's
 *   own 431 for an over-large header, answered before any application code);
 * - `accepted`: a 2xx where acceptance is fine (ignored unknown fields, valid mutations);
 * - `bad 4xx`: a 4xx without that body shape.
 * Defects are leak, 5xx, hang, silent accept and bad 4xx. The exit code is 1 when any occurred.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { loadModel } from '../src/models/load.js';
import { DEFAULT_MODEL } from '../src/paths.js';
import { LoraAdapter, parseLoraConfig, saveAdapter } from '../src/peft/index.js';
import { startServer, type RunningServer } from '../src/serve/server.js';
import { uniformRng } from '../src/tensor/random.js';

export type Outcome = 'clean 4xx' | 'accepted' | '5xx' | 'hang' | 'dropped' | 'leak' | 'silent accept' | 'bad 4xx';
const DEFECTS: Outcome[] = ['5xx', 'hang', 'dropped', 'leak', 'silent accept', 'bad 4xx'];
const COLUMNS: Outcome[] = ['clean 4xx', 'accepted', '5xx', 'hang', 'dropped', 'leak', 'silent accept', 'bad 4xx'];

/** What an attack expects: must be refused (4xx), may go either way, or must succeed. */
type Expect = 'reject' | 'any' | 'accept';

interface Attack {
  group: string;
  name: string;
  method: string;
  path: string;
  headers?: Record<string, string>;
  /** Omitted: no body. */
  body?: string;
  expect: Expect;
  /** Send without the API key (default: with it). */
  noKey?: boolean;
  /** Statuses that are fine besides the class above (e.g. 503 for /health while stalled). */
  allow?: number[];
}

export interface AttackResult {
  /** Rows per group: tries and outcome counts. */
  table: Array<{ group: string; tried: number } & Record<Outcome, number>>;
  /** Up to 20 defect examples. */
  defects: Array<{ group: string; name: string; outcome: Outcome; status: number | null; detail: string }>;
  requests: number;
  seconds: number;
  /** Whether the server still answered /health 200 at the end. */
  aliveAfter: boolean;
  stoppedByBudget: boolean;
}

export interface AttackOptions {
  rounds?: number;
  budgetMs?: number;
  timeoutMs?: number;
  seed?: number;
  /** Called with every request's outcome (for --verbose). */
  onResult?: (a: { group: string; name: string }, status: number | null, outcome: Outcome, body: string) => void;
}

const KEY = 'attack-key-7f3a9c';
const SECRET = 'SECRET-MARKER-do-not-echo';


/** The fixture tree: good adapters and hostile ones inside the adapter directory, one outside. */
function makeFixtures(root: string): { adapterDir: string; outside: string } {
  const adapterDir = join(root, 'adapters');
  const outside = join(root, 'outside');
  mkdirSync(adapterDir);
  mkdirSync(outside);
  const model = loadModel(DEFAULT_MODEL);
  const write = (dir: string, seed: number, r = 2): void =>
    saveAdapter(new LoraAdapter(model, parseLoraConfig({ r, lora_alpha: 2 * r, target_modules: ['q_proj', 'v_proj'], init_lora_weights: false }), seed), dir);
  for (const [i, n] of ['good1', 'good2', 'good3', 'good4'].entries()) write(join(adapterDir, n), 100 + i);
  write(join(adapterDir, 'big'), 110, 32);
  write(join(outside, 'victim'), 120);
  writeFileSync(join(outside, 'secret.txt'), SECRET);
  // hostile entries inside the adapter directory
  symlinkSync(join(outside, 'victim'), join(adapterDir, 'dir-link-out'));
  symlinkSync('/etc', join(adapterDir, 'etc-link'));
  mkdirSync(join(adapterDir, 'file-link-out'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_config.json'), join(adapterDir, 'file-link-out', 'adapter_config.json'));
  symlinkSync(join(outside, 'victim', 'adapter_model.safetensors'), join(adapterDir, 'file-link-out', 'adapter_model.safetensors'));
  mkdirSync(join(adapterDir, 'config-link-secret'));
  symlinkSync(join(outside, 'secret.txt'), join(adapterDir, 'config-link-secret', 'adapter_config.json'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_model.safetensors'), join(adapterDir, 'config-link-secret', 'adapter_model.safetensors'));
  mkdirSync(join(adapterDir, 'fifo'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_config.json'), join(adapterDir, 'fifo', 'adapter_config.json'));
  spawnSync('mkfifo', [join(adapterDir, 'fifo', 'adapter_model.safetensors')]);
  mkdirSync(join(adapterDir, 'devzero'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_config.json'), join(adapterDir, 'devzero', 'adapter_config.json'));
  symlinkSync('/dev/zero', join(adapterDir, 'devzero', 'adapter_model.safetensors'));
  mkdirSync(join(adapterDir, 'broken-json'));
  writeFileSync(join(adapterDir, 'broken-json', 'adapter_config.json'), `{"peft_type": "LORA", "r": ${SECRET}`);
  copyFileSync(join(adapterDir, 'good1', 'adapter_model.safetensors'), join(adapterDir, 'broken-json', 'adapter_model.safetensors'));
  mkdirSync(join(adapterDir, 'garbage-weights'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_config.json'), join(adapterDir, 'garbage-weights', 'adapter_config.json'));
  writeFileSync(join(adapterDir, 'garbage-weights', 'adapter_model.safetensors'), Buffer.from(`\xff\xff\xff\xff\x00\x00\x00\x00${SECRET}`, 'latin1'));
  mkdirSync(join(adapterDir, 'qlora'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_config.json'), join(adapterDir, 'qlora', 'adapter_config.json'));
  copyFileSync(join(adapterDir, 'good1', 'adapter_model.safetensors'), join(adapterDir, 'qlora', 'adapter_model.safetensors'));
  writeFileSync(join(adapterDir, 'qlora', 'train_args.json'), JSON.stringify({ method: 'qlora', quantType: 'nf4' }));
  mkdirSync(join(adapterDir, 'empty'));
  return { adapterDir, outside };
}

const json = (v: unknown): string => JSON.stringify(v);
const deep = (n: number, open = '[', close = ']'): string => open.repeat(n) + close.repeat(n);

/** The fixed attack cases. */
function fixedAttacks(fx: { adapterDir: string; outside: string }): Attack[] {
  const A: Attack[] = [];
  const gen = (name: string, body: unknown, expect: Expect, path = '/v1/completions'): void => {
    A.push({ group: 'generation params', name, method: 'POST', path, body: typeof body === 'string' ? body : json(body), expect });
  };
  const base = { model: 'stories260K', prompt: 'Once', max_tokens: 2 };
  // --- authentication
  const auth = (name: string, headers: Record<string, string>, expect: Expect, path = '/v1/models', method = 'GET', body?: string): void => {
    A.push({ group: 'authentication', name, method, path, headers, noKey: true, expect, body });
  };
  auth('no Authorization', {}, 'reject');
  auth('wrong key', { authorization: `Bearer ${KEY}x` }, 'reject');
  auth('key prefix', { authorization: `Bearer ${KEY.slice(0, 5)}` }, 'reject');
  auth('empty bearer', { authorization: 'Bearer ' }, 'reject');
  auth('Basic scheme', { authorization: `Basic ${Buffer.from(`x:${KEY}`).toString('base64')}` }, 'reject');
  auth('bare key', { authorization: KEY }, 'reject');
  auth('key in x-api-key', { 'x-api-key': KEY }, 'reject');
  auth('key in query', {}, 'reject', `/v1/models?api_key=${KEY}`);
  auth('double space', { authorization: `Bearer  ${KEY}` }, 'reject');
  auth('lower-case scheme', { authorization: `bearer ${KEY}` }, 'accept');
  auth('no key: completions', {}, 'reject', '/v1/completions', 'POST', json(base));
  auth('no key: load adapter', { 'content-type': 'application/json' }, 'reject', '/v1/adapters', 'POST', json({ name: 'good1' }));
  auth('no key: unload adapter', {}, 'reject', '/v1/adapters/pinned', 'DELETE');
  auth('no key: unknown URL', {}, 'reject', '/admin');
  auth('no key: /healthz', {}, 'reject', '/healthz');
  auth('no key: //health', {}, 'reject', '//health');
  auth('no key: /health/../v1/models', {}, 'reject', '/health/../v1/models');
  auth('no key: /%68ealth', {}, 'reject', '/%68ealth');
  auth('no key: /health (public)', {}, 'accept', '/health');
  auth('no key: /metrics (public)', {}, 'accept', '/metrics');
  auth('no key: OPTIONS', {}, 'any', '/v1/models', 'OPTIONS');
  auth('huge Authorization', { authorization: `Bearer ${'k'.repeat(60_000)}` }, 'reject');
  // --- adapter paths
  const load = (name: string, body: unknown, expect: Expect = 'reject'): void => {
    A.push({ group: 'adapter paths', name, method: 'POST', path: '/v1/adapters', body: typeof body === 'string' ? body : json(body), expect });
  };
  const refs = [
    '../outside/victim', '..', '.', '../../../../etc', '/etc', '/etc/passwd', '/dev/zero', '/proc/self/environ', resolve(fx.outside, 'victim'),
    `${fx.adapterDir}/../outside/victim`, 'good1/../../outside/victim', 'good1/../..', './../outside/victim', 'dir-link-out', 'etc-link', 'etc-link/passwd',
    'file-link-out', 'config-link-secret', 'fifo', 'devzero', 'broken-json', 'garbage-weights', 'qlora', 'empty', 'good1/adapter_config.json',
    '%2e%2e%2foutside', '..\\outside\\victim', 'good1\u0000', 'x'.repeat(5000), '~/.ssh', '~root', 'file:///etc/passwd', 'http://127.0.0.1/x', '', ' ',
  ];
  refs.forEach((ref, i) => load(`path ${JSON.stringify(ref.length > 40 ? ref.slice(0, 40) + '…' : ref)}`, { name: `evil${i}`, path: ref }));
  load('name with slash', { name: '../x', path: 'good1' });
  load('name = base model', { name: 'stories260K', path: 'good1' });
  load('path as object', { name: 'e1', path: { $ref: '/etc/passwd' } });
  load('path as array', { name: 'e2', path: ['..', 'outside'] });
  load('nested unknown field', { name: 'good-a', path: 'good1', extra: { a: { b: [1, { c: 2 }] } } }, 'accept');
  load('relative name only', { name: 'good2' }, 'accept');
  load('absolute path inside', { name: 'good-abs', path: join(fx.adapterDir, 'good3') }, 'accept');
  load('too big for the byte cap', { name: 'big' });
  for (let i = 0; i < 6; i++) load(`load over the count cap #${i}`, { name: `cap${i}`, path: `good${(i % 4) + 1}` }, 'any');
  // --- URL paths
  const url = (name: string, method: string, path: string, expect: Expect = 'reject', headers?: Record<string, string>, body?: string): void => {
    A.push({ group: 'URLs and methods', name, method, path, expect, headers, body });
  };
  url('model id traversal', 'GET', '/v1/models/..%2F..%2Fetc%2Fpasswd');
  url('model id NUL', 'GET', '/v1/models/a%00b');
  url('unload traversal', 'DELETE', '/v1/adapters/..%2F..%2Fetc');
  url('unload unknown', 'DELETE', '/v1/adapters/ghost');
  url('DELETE, JSON type, empty body', 'DELETE', '/v1/adapters/ghost', 'reject', { 'content-type': 'application/json' }, '');
  url('DELETE, JSON type, body', 'DELETE', '/v1/adapters/ghost', 'reject', { 'content-type': 'application/json' }, '{}');
  url('GET with a body', 'GET', '/v1/models', 'accept', { 'content-type': 'application/json' }, '{"x":1}');
  url('PUT completions', 'PUT', '/v1/completions', 'reject', { 'content-type': 'application/json' }, json(base));
  url('unknown version', 'GET', '/v2/models');
  url('very long URL', 'GET', `/v1/models/${'a'.repeat(7000)}`);
  url('malformed %-escape', 'GET', '/v1/models/%E0%A4%A');
  url('malformed %-escape, no key', 'GET', '/v1/models/%E0%A4%A', 'reject', { authorization: '' });
  url('list models (leak check)', 'GET', '/v1/models', 'accept');
  url('list adapters (leak check)', 'GET', '/v1/adapters', 'accept');
  url('model card (leak check)', 'GET', '/v1/models/pinned', 'accept');
  url('metrics (leak check)', 'GET', '/metrics', 'accept');
  // --- request bodies
  gen('nested unknown parameter', { ...base, extra: { a: { b: { c: [1, 2, { d: null }] } } } }, 'accept');
  gen('deeply nested unknown parameter', `${json(base).slice(0, -1)},"extra":${deep(100_000)}}`, 'any');
  gen('deeply nested n', `${json(base).slice(0, -1)},"n":${deep(100_000)}}`, 'reject');
  gen('deeply nested logit_bias', `${json(base).slice(0, -1)},"logit_bias":{"x":${'{"a":'.repeat(30_000)}1${'}'.repeat(30_000)}}}`, 'reject');
  gen('deeply nested objects', `${json(base).slice(0, -1)},"o":${'{"a":'.repeat(30_000)}1${'}'.repeat(30_000)}}`, 'any');
  gen('__proto__ pollution', `${json(base).slice(0, -1)},"__proto__":{"polluted":true}}`, 'reject');
  gen('constructor.prototype pollution', `${json(base).slice(0, -1)},"x":{"constructor":{"prototype":{"polluted":true}}}}`, 'reject');
  gen('truncated JSON', json(base).slice(0, 20), 'reject');
  gen('not JSON', 'model=stories260K&prompt=x', 'reject');
  gen('JSON array body', '[1,2,3]', 'reject');
  gen('JSON string body', '"hello"', 'reject');
  gen('empty body', '', 'reject');
  gen('huge max_tokens', { ...base, max_tokens: 1e300 }, 'reject');
  gen('negative max_tokens', { ...base, max_tokens: -1 }, 'reject');
  gen('NaN-like temperature', '{"model":"stories260K","prompt":"x","temperature":1e999}', 'reject');
  gen('token id out of vocabulary', { ...base, prompt: [1, 999999999] }, 'reject');
  gen('negative token id', { ...base, prompt: [1, -5] }, 'reject');
  gen('fractional token id', { ...base, prompt: [1, 2.5] }, 'reject');
  gen('1000 prompts', { ...base, prompt: Array.from({ length: 1000 }, () => 'x') }, 'reject');
  gen('stop of 10000 strings', { ...base, stop: Array.from({ length: 10000 }, (_, i) => `s${i}`) }, 'reject');
  gen('lone surrogate prompt', '{"model":"stories260K","prompt":"\\ud800\\udfff\\ud800","max_tokens":2}', 'any');
  gen('unknown model', { ...base, model: '../../etc/passwd' }, 'reject');
  gen('model as object', { ...base, model: { id: 'stories260K' } }, 'reject');
  gen('chat: messages nested content', { model: 'stories260K', messages: [{ role: 'user', content: [{ type: 'text', text: 'hi', x: { y: 1 } }] }], max_tokens: 2 }, 'accept', '/v1/chat/completions');
  gen('chat: role as object', { model: 'stories260K', messages: [{ role: { r: 'user' }, content: 'hi' }] }, 'reject', '/v1/chat/completions');
  gen('chat: template injection', { model: 'stories260K', messages: [{ role: 'user', content: '{{ 7*7 }}{% for x in range(99999999) %}x{% endfor %}' }], max_tokens: 2 }, 'any', '/v1/chat/completions');
  gen('chat: 4097 messages', { model: 'stories260K', messages: Array.from({ length: 4097 }, () => ({ role: 'user', content: 'x' })) }, 'reject', '/v1/chat/completions');
  gen('adapter: QLoRA on a float base', { ...base, model: 'qlora' }, 'reject');
  A.push({ group: 'generation params', name: 'content-type text/plain', method: 'POST', path: '/v1/completions', headers: { 'content-type': 'text/plain' }, body: json(base), expect: 'accept' });
  A.push({ group: 'generation params', name: 'content-type multipart', method: 'POST', path: '/v1/completions', headers: { 'content-type': 'multipart/form-data; boundary=x' }, body: '--x\r\n\r\n--x--', expect: 'reject' });
  A.push({ group: 'generation params', name: 'body over the limit', method: 'POST', path: '/v1/completions', body: json({ ...base, prompt: 'x'.repeat(300_000) }), expect: 'reject' });
  return A;
}

/** A random mutation of a valid request (kept small: max_tokens is bounded by the context). */
function mutated(r: () => number, i: number): Attack {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const values: Array<() => unknown> = [
    () => null, () => true, () => -1, () => 0, () => 2 ** 53 + 1, () => -1e308, () => 0.5, () => '', () => 'x'.repeat(Math.floor(r() * 3000)),
    () => '\u0000\ud800', () => [], () => [[[[]]]], () => ({}), () => ({ a: { b: { c: {} } } }), () => [1, 'a', null], () => '../../etc/passwd',
    () => Array.from({ length: 20 }, () => Math.floor(r() * 600)), () => JSON.parse(deep(200 + Math.floor(r() * 2000))),
  ];
  const chat = r() < 0.4;
  const body: Record<string, unknown> = chat
    ? { model: 'stories260K', messages: [{ role: 'user', content: 'Once upon a time' }], max_tokens: 3, temperature: 0.7 }
    : { model: pick(['stories260K', 'pinned', 'good2']), prompt: 'Once upon a time', max_tokens: 3, temperature: 0.7 };
  const keys = ['model', 'prompt', 'messages', 'max_tokens', 'temperature', 'top_p', 'top_k', 'seed', 'stop', 'stop_token_ids', 'stream', 'stream_options',
    'ignore_eos', 'n', 'logprobs', 'logit_bias', 'response_format', 'user', 'unknown_field', 'max_completion_tokens', 'echo', 'suffix'];
  const edits = 1 + Math.floor(r() * 3);
  for (let e = 0; e < edits; e++) {
    const k = pick(keys);
    if (r() < 0.15) delete body[k];
    else body[k] = pick(values)();
  }
  if (typeof body.max_tokens === 'number' && body.max_tokens > 64) body.max_tokens = 64; // bounded run time, not a defect
  let text = json(body);
  if (r() < 0.1) text = text.slice(0, Math.floor(r() * text.length)); // torn
  return { group: 'mutated generation', name: `mutation #${i}: ${text.slice(0, 80)}`, method: 'POST', path: chat ? '/v1/chat/completions' : '/v1/completions', body: text, expect: 'any' };
}

function mutatedLoad(r: () => number, i: number): Attack {
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)];
  const parts = ['..', '.', 'good1', 'good2', 'dir-link-out', 'etc-link', 'outside', 'victim', 'adapter_config.json', '', '/', '//', 'fifo', 'devzero', '\u0000', '%2e', 'config-link-secret'];
  const n = 1 + Math.floor(r() * 5);
  let path = Array.from({ length: n }, () => pick(parts)).join('/');
  if (r() < 0.3) path = '/' + path;
  const body: Record<string, unknown> = { name: `m${i}`, path };
  if (r() < 0.1) body.path = pick([null, 5, {}, [path]]);
  // loads that land on a good adapter are fine; anything else must be refused
  return { group: 'mutated adapter paths', name: `load ${JSON.stringify(body.path)}`, method: 'POST', path: '/v1/adapters', body: json(body), expect: 'any' };
}

interface Answer { status: number | null; body: string; timedOut: boolean }

function send(base: URL, a: Attack, key: string, timeoutMs: number): Promise<Answer> {
  return new Promise((done) => {
    const headers: Record<string, string> = { ...(a.noKey ? {} : { authorization: `Bearer ${key}` }), ...(a.headers ?? {}) };
    if (a.body !== undefined && !('content-type' in headers)) headers['content-type'] = 'application/json';
    if (a.body !== undefined) headers['content-length'] = String(Buffer.byteLength(a.body));
    let settled = false;
    const finish = (ans: Answer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      done(ans);
    };
    const req = httpRequest({ host: base.hostname, port: base.port, method: a.method, path: a.path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size < 4 << 20) chunks.push(c);
      });
      res.on('end', () => finish({ status: res.statusCode ?? null, body: Buffer.concat(chunks).toString('utf8'), timedOut: false }));
      res.on('error', () => finish({ status: res.statusCode ?? null, body: Buffer.concat(chunks).toString('utf8'), timedOut: false }));
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish({ status: null, body: '', timedOut: true });
    }, timeoutMs);
    req.on('error', (e) => finish({ status: null, body: `client error: ${e.message}`, timedOut: false }));
    if (a.body !== undefined) req.end(a.body);
    else req.end();
  });
}

function classify(a: Attack, ans: Answer, leaks: string[]): { outcome: Outcome; detail: string } {
  if (ans.timedOut) return { outcome: 'hang', detail: 'no answer in time' };
  const hit = leaks.find((l) => ans.body.includes(l));
  if (hit) return { outcome: 'leak', detail: `answer contains ${JSON.stringify(hit.slice(0, 40))}: ${ans.body.slice(0, 200)}` };
  if (/\n\s+at [\w.<>]+ \(|\bat (?:async )?[\w.]+ \(.*:\d+:\d+\)/.test(ans.body)) return { outcome: 'leak', detail: `stack trace: ${ans.body.slice(0, 200)}` };
  const s = ans.status;
  if (s === null) return { outcome: 'dropped', detail: ans.body };
  if (a.allow?.includes(s)) return { outcome: s < 400 ? 'accepted' : 'clean 4xx', detail: '' };
  if (s >= 500) return { outcome: '5xx', detail: `${s}: ${ans.body.slice(0, 200)}` };
  if (s >= 400) {
    if (a.expect === 'accept') return { outcome: 'bad 4xx', detail: `expected success, got ${s}: ${ans.body.slice(0, 200)}` };
    if (s === 431) return { outcome: 'clean 4xx', detail: '' }; // Node's HTTP parser, before any application code
    try {
      const e = (JSON.parse(ans.body) as { error?: { message?: unknown; type?: unknown } }).error;
      if (e && typeof e.message === 'string' && typeof e.type === 'string') return { outcome: 'clean 4xx', detail: '' };
    } catch { /* fall through */ }
    return { outcome: 'bad 4xx', detail: `${s} without an OpenAI error body: ${ans.body.slice(0, 200)}` };
  }
  if (a.expect === 'reject') return { outcome: 'silent accept', detail: `${s}: ${ans.body.slice(0, 200)}` };
  return { outcome: 'accepted', detail: '' };
}

/** Runs the attack against a fresh in-process server on 127.0.0.1 and returns the table. */
export async function runAttack(opts: AttackOptions = {}): Promise<AttackResult> {
  const rounds = opts.rounds ?? 1;
  const budgetMs = opts.budgetMs ?? 60_000;
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const r = uniformRng(opts.seed ?? 1);
  const t0 = performance.now();
  const root = mkdtempSync(join(tmpdir(), 'peft-attack-'));
  let server: RunningServer | null = null;
  try {
    const fx = makeFixtures(root);
    const pinnedDir = join(fx.outside, 'victim');
    server = await startServer({
      host: '127.0.0.1', port: 0, apiKey: KEY, adapterDir: fx.adapterDir, adapters: [{ name: 'pinned', path: pinnedDir }],
      maxAdapters: 4, maxAdapterBytes: 100 * 1024, bodyLimit: 256 * 1024, maxQueue: 64, requestTimeoutMs: timeoutMs, defaultMetrics: false,
    });
    const base = new URL(server.url);
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(base.hostname)) throw new Error('the attack runs on loopback only');
    const leaks = [root, realpathSync(root), resolve(DEFAULT_MODEL), realpathSync(DEFAULT_MODEL), process.cwd(), SECRET, 'root:x:0:0', tmpdir() + '/'];
    const attacks: Attack[] = [...fixedAttacks(fx)];
    for (let k = 0; k < rounds; k++) {
      for (let i = 0; i < 60; i++) attacks.push(mutated(r, k * 60 + i));
      for (let i = 0; i < 20; i++) attacks.push(mutatedLoad(r, k * 20 + i));
    }
    const rows = new Map<string, { group: string; tried: number } & Record<Outcome, number>>();
    const defects: AttackResult['defects'] = [];
    let requests = 0;
    let stoppedByBudget = false;
    // a few at a time: concurrency is part of the attack, bounded so the run stays small
    const CONCURRENCY = 4;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < attacks.length) {
        if (performance.now() - t0 > budgetMs) {
          stoppedByBudget = true;
          return;
        }
        const a = attacks[next++];
        const ans = await send(base, a, KEY, timeoutMs);
        requests++;
        const { outcome, detail } = classify(a, ans, leaks);
        opts.onResult?.(a, ans.status, outcome, ans.body);
        let row = rows.get(a.group);
        if (!row) {
          row = { group: a.group, tried: 0, 'clean 4xx': 0, accepted: 0, '5xx': 0, hang: 0, dropped: 0, leak: 0, 'silent accept': 0, 'bad 4xx': 0 };
          rows.set(a.group, row);
        }
        row.tried++;
        row[outcome]++;
        if (DEFECTS.includes(outcome) && defects.length < 20) defects.push({ group: a.group, name: a.name, outcome, status: ans.status, detail });
        // adapters loaded by the attack are unloaded again so the caps keep being exercised
        if (a.path === '/v1/adapters' && a.method === 'POST' && ans.status === 200) {
          const id = (JSON.parse(ans.body) as { id: string }).id;
          if (r() < 0.5) await send(base, { group: '', name: '', method: 'DELETE', path: `/v1/adapters/${encodeURIComponent(id)}`, expect: 'any' }, KEY, timeoutMs);
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    const health = await send(base, { group: '', name: '', method: 'GET', path: '/health', expect: 'accept', noKey: true }, KEY, timeoutMs);
    return {
      table: [...rows.values()], defects, requests, seconds: Math.round((performance.now() - t0) / 100) / 10,
      aliveAfter: health.status === 200, stoppedByBudget,
    };
  } finally {
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  }
}

/** The table as Markdown. */
export function formatTable(res: AttackResult): string {
  const cols = COLUMNS;
  const lines = [`| group | tried | ${cols.join(' | ')} |`, `|---|---:|${cols.map(() => '---:').join('|')}|`];
  const total = { group: '**total**', tried: 0 } as { group: string; tried: number } & Record<Outcome, number>;
  for (const c of cols) total[c] = 0;
  for (const row of res.table) {
    lines.push(`| ${row.group} | ${row.tried} | ${cols.map((c) => row[c]).join(' | ')} |`);
    total.tried += row.tried;
    for (const c of cols) total[c] += row[c];
  }
  lines.push(`| ${total.group} | ${total.tried} | ${cols.map((c) => total[c]).join(' | ')} |`);
  return lines.join('\n');
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string, def: number): number => {
    const i = argv.indexOf(name);
    if (i < 0) return def;
    const v = Number(argv[i + 1]);
    if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a non-negative number`);
    return v;
  };
  const jsonAt = argv.indexOf('--json');
  const verbose = argv.includes('--verbose');
  const res = await runAttack({
    rounds: arg('--rounds', 1), budgetMs: arg('--budget-s', 60) * 1000, timeoutMs: arg('--timeout-ms', 10_000), seed: arg('--seed', 1),
    onResult: verbose ? (a, status, outcome, body) => process.stdout.write(`${outcome.padEnd(13)} ${String(status).padEnd(4)} [${a.group}] ${a.name.slice(0, 70)} :: ${body.replace(/\s+/g, ' ').slice(0, 160)}\n`) : undefined,
  });
  process.stdout.write(`${formatTable(res)}\n\n${res.requests} requests in ${res.seconds} s; server healthy after: ${res.aliveAfter}${res.stoppedByBudget ? '; stopped by the time budget' : ''}\n`);
  for (const d of res.defects) process.stdout.write(`DEFECT ${d.outcome} [${d.group}] ${d.name} -> ${d.status}: ${d.detail}\n`);
  if (jsonAt >= 0) writeFileSync(argv[jsonAt + 1], JSON.stringify(res, null, 2));
  process.exitCode = res.defects.length > 0 || !res.aliveAfter ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  main(process.argv.slice(2)).catch((e: Error) => {
    process.stderr.write(`attack-server: ${e.message}\n`);
    process.exitCode = 2;
  });
}
