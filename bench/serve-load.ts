/**
 * Load test of `peft serve` over loopback (`npm run bench:serve`): 32 concurrent streaming
 * requests spread over 4 LoRA adapters on stories260K, with an adapter loaded and another (in use)
 * unloaded during the run — every request must succeed; then the same run with all 32 requests on
 * one adapter for comparison. Prints p50/p99 time to first token, p50/p99 total latency and
 * generated tokens/s. Bounded: 32 requests of 64 tokens per run, 60 s per request, 240 s in all.
 *
 * Options (env): SERVE_BENCH_REQUESTS (32), SERVE_BENCH_TOKENS (64).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../src/models/load.js';
import { native } from '../src/native/index.js';
import { LoraAdapter, parseLoraConfig, saveAdapter } from '../src/peft/index.js';
import { DEFAULT_MODEL } from '../src/paths.js';
import { startServer, type RunningServer } from '../src/serve/server.js';

const REQUESTS = Number(process.env.SERVE_BENCH_REQUESTS ?? 32);
const TOKENS = Number(process.env.SERVE_BENCH_TOKENS ?? 64);
const PER_REQUEST_MS = 60_000;
const TOTAL_MS = 240_000;

const PROMPTS = ['Once upon a time', 'The little dog', 'Lily and Ben went', 'One day, a big bird', 'Tom had a red ball', 'The sun was'];

interface Outcome {
  ok: boolean;
  error?: string;
  ttftMs: number;
  totalMs: number;
  tokens: number;
}

/** One streaming completion, timed from sending to the first text chunk and to [DONE]. */
async function streamRequest(url: string, model: string, i: number): Promise<Outcome> {
  const t0 = performance.now();
  let ttft = NaN;
  try {
    const r = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model, prompt: PROMPTS[i % PROMPTS.length], max_tokens: TOKENS, temperature: 0.8, top_p: 0.95, seed: i,
        ignore_eos: true, stream: true, stream_options: { include_usage: true },
      }),
      signal: AbortSignal.timeout(PER_REQUEST_MS),
    });
    if (r.status !== 200) return { ok: false, error: `HTTP ${r.status}: ${await r.text()}`, ttftMs: NaN, totalMs: performance.now() - t0, tokens: 0 };
    const reader = r.body!.getReader();
    const dec = new TextDecoder();
    let buf = '', tokens = 0, done = false, finish: string | null = null;
    for (;;) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += dec.decode(value, { stream: true });
      let k: number;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const data = buf.slice(6, k);
        buf = buf.slice(k + 2);
        if (data === '[DONE]') { done = true; continue; }
        const ev = JSON.parse(data) as { error?: unknown; usage?: { completion_tokens: number }; choices: Array<{ text: string; finish_reason: string | null }> };
        if (ev.error) return { ok: false, error: JSON.stringify(ev.error), ttftMs: ttft, totalMs: performance.now() - t0, tokens };
        if (ev.usage) tokens = ev.usage.completion_tokens;
        const c = ev.choices[0];
        if (c && Number.isNaN(ttft) && c.text) ttft = performance.now() - t0;
        if (c?.finish_reason) finish = c.finish_reason;
      }
    }
    const ok = done && finish === 'length' && tokens === TOKENS;
    return { ok, error: ok ? undefined : `incomplete stream (done ${done}, finish ${finish}, ${tokens} tokens)`, ttftMs: ttft, totalMs: performance.now() - t0, tokens };
  } catch (e) {
    return { ok: false, error: (e as Error).message, ttftMs: ttft, totalMs: performance.now() - t0, tokens: 0 };
  }
}

function pct(xs: number[], p: number): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

interface RunResult {
  label: string;
  outcomes: Outcome[];
  wallMs: number;
  adapterOps: string[];
  failed: number;
  steps: number;
  stepMs: number;
}

/**
 * Sends `REQUESTS` streaming requests at once (request i uses models[i % models.length]); once the
 * first tokens flow, loads `load` and unloads `unload` through the HTTP API.
 */
async function run(s: RunningServer, label: string, models: string[], load: { name: string; path: string }, unload: string): Promise<RunResult> {
  const t0 = performance.now();
  const steps0 = s.scheduler.stats.steps, stepMs0 = s.scheduler.stats.stepMs;
  const pending = Array.from({ length: REQUESTS }, (_, i) => streamRequest(s.url, models[i % models.length], i));
  const ops: string[] = [];
  const opsDone = (async () => {
    // once every request is admitted and tokens flow (requests for an adapter that arrive after
    // its unload get 404 by design: the point is to unload it under requests already running)
    const deadline = Date.now() + 10_000;
    const gen0 = (await s.metrics.generatedTokens.get()).values[0]?.value ?? 0;
    while (Date.now() < deadline) {
      const gen = (await s.metrics.generatedTokens.get()).values[0]?.value ?? 0;
      if (gen > gen0 && s.scheduler.runningCount + s.scheduler.queueDepth >= REQUESTS) break;
      await new Promise((r) => setTimeout(r, 2));
    }
    const inFlightBefore = s.scheduler.runningCount;
    const l = await fetch(`${s.url}/v1/adapters`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(load) });
    ops.push(`POST /v1/adapters ${load.name} -> ${l.status} (${inFlightBefore} sequences running)`);
    const d = await fetch(`${s.url}/v1/adapters/${unload}`, { method: 'DELETE' });
    const body = await d.json() as { in_flight?: number };
    ops.push(`DELETE /v1/adapters/${unload} -> ${d.status} (${body.in_flight ?? '?'} of its requests in flight)`);
    // the new adapter serves at once (probe request, not counted in the figures)
    const probe = await streamRequest(s.url, load.name, 0);
    ops.push(`probe on ${load.name}: ${probe.ok ? 'ok' : `FAILED ${probe.error}`}`);
    return (l.status === 200 ? 0 : 1) + (d.status === 200 ? 0 : 1) + (probe.ok ? 0 : 1);
  })();
  const outcomes = await Promise.all(pending);
  const wallMs = performance.now() - t0;
  const opFailures = await opsDone;
  const steps = s.scheduler.stats.steps - steps0, stepMs = s.scheduler.stats.stepMs - stepMs0;
  return { label, outcomes, wallMs, adapterOps: ops, failed: outcomes.filter((o) => !o.ok).length + opFailures, steps, stepMs };
}

function report(r: RunResult): void {
  const ok = r.outcomes.filter((o) => o.ok);
  const tokens = r.outcomes.reduce((n, o) => n + o.tokens, 0);
  const f = (x: number): string => `${x.toFixed(0)} ms`;
  console.log(`\n== ${r.label}`);
  for (const op of r.adapterOps) console.log(`   ${op}`);
  console.log(`   requests: ${r.outcomes.length}, succeeded: ${ok.length}, failed: ${r.failed}`);
  for (const o of r.outcomes.filter((x) => !x.ok).slice(0, 5)) console.log(`   failure: ${o.error}`);
  console.log(`   time to first token: p50 ${f(pct(ok.map((o) => o.ttftMs), 50))}, p99 ${f(pct(ok.map((o) => o.ttftMs), 99))}`);
  console.log(`   total latency:       p50 ${f(pct(ok.map((o) => o.totalMs), 50))}, p99 ${f(pct(ok.map((o) => o.totalMs), 99))}`);
  console.log(`   model thread: ${r.steps} forward passes, ${(r.stepMs / r.steps).toFixed(1)} ms each on average (${(100 * r.stepMs / r.wallMs).toFixed(0)}% of the wall time)`);
  console.log(`   generated: ${tokens} tokens in ${(r.wallMs / 1000).toFixed(2)} s = ${(tokens / (r.wallMs / 1000)).toFixed(0)} tokens/s`);
}

async function main(): Promise<void> {
  const guard = setTimeout(() => {
    console.error(`bench:serve: did not finish within ${TOTAL_MS / 1000} s`);
    process.exit(2);
  }, TOTAL_MS);
  guard.unref();
  const dir = mkdtempSync(join(tmpdir(), 'peft-serve-bench-'));
  const base = loadModel(DEFAULT_MODEL);
  const mk = (name: string, seed: number): { name: string; path: string } => {
    const path = join(dir, name);
    saveAdapter(new LoraAdapter(base, parseLoraConfig({ r: 8, lora_alpha: 16, target_modules: 'all-linear', init_lora_weights: false }), seed), path);
    return { name, path };
  };
  const initial = ['tales-0', 'tales-1', 'tales-2', 'tales-3'].map((n, i) => mk(n, 100 + i));
  const extra = [mk('late-0', 200), mk('late-1', 201)];
  const s = await startServer({ port: 0, adapters: initial, defaultMetrics: false, adapterDir: dir });
  console.log(`peft serve bench: ${REQUESTS} concurrent streaming requests x ${TOKENS} tokens (temperature 0.8, ignore_eos), stories260K, ` +
    `${cpus().length} CPUs, ${native.numThreads()} native kernel thread(s), batch slots 32, ${s.url}`);
  let failed = 0;
  try {
    // warm-up: one request per adapter
    await Promise.all(initial.map((a, i) => streamRequest(s.url, a.name, i)));
    const mixed = await run(s, `4 adapters (${initial.map((a) => a.name).join(', ')}), load late-0 + unload tales-3 mid-run`,
      initial.map((a) => a.name), extra[0], 'tales-3');
    report(mixed);
    console.log(`   batch: up to ${s.scheduler.stats.maxSequences} sequences and ${s.scheduler.stats.maxAdapters} adapters per forward pass`);
    const single = await run(s, '1 adapter (tales-0), load late-1 + unload late-0 mid-run', ['tales-0'], extra[1], 'late-0');
    report(single);
    failed = mixed.failed + single.failed;
  } finally {
    await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(failed === 0 ? '\nzero failed requests' : `\n${failed} FAILED`);
  process.exitCode = failed === 0 ? 0 : 1;
}

await main();
