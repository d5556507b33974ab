/**
 * Prometheus metrics of `peft serve` (prom-client, text exposition format at GET /metrics). Each
 * server has its own registry, so several servers in one process (tests) do not collide. Labels
 * are bounded: `endpoint` is a route pattern (or "other"), `status` an HTTP status code (499 =
 * the client closed the connection before the response ended).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class ServeMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'endpoint' | 'status'>;
  readonly promptTokens: Counter;
  readonly generatedTokens: Counter;
  readonly latency: Histogram<'endpoint'>;
  readonly ttft: Histogram<'endpoint'>;
  readonly queueDepth: Gauge;
  readonly running: Gauge;
  readonly adaptersLoaded: Gauge;
  readonly batchSize: Histogram;
  readonly stepSeconds: Histogram;
  readonly workerRestarts: Counter;
  readonly adapterEvictions: Counter;

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    this.requests = new Counter({ name: 'peft_serve_requests_total', help: 'HTTP requests by endpoint and status code', labelNames: ['endpoint', 'status'], registers });
    this.promptTokens = new Counter({ name: 'peft_serve_prompt_tokens_total', help: 'Prompt tokens of admitted generation requests', registers });
    this.generatedTokens = new Counter({ name: 'peft_serve_generated_tokens_total', help: 'Tokens generated', registers });
    this.latency = new Histogram({ name: 'peft_serve_request_duration_seconds', help: 'Latency of completed generation requests, from arrival to the last byte', labelNames: ['endpoint'], buckets: LATENCY_BUCKETS, registers });
    this.ttft = new Histogram({ name: 'peft_serve_time_to_first_token_seconds', help: 'Time from a generation request\'s arrival to its first generated token', labelNames: ['endpoint'], buckets: LATENCY_BUCKETS, registers });
    this.queueDepth = new Gauge({ name: 'peft_serve_queue_depth', help: 'Sequences waiting for a batch slot', registers });
    this.running = new Gauge({ name: 'peft_serve_running_sequences', help: 'Sequences in the decoding batch', registers });
    this.adaptersLoaded = new Gauge({ name: 'peft_serve_adapters_loaded', help: 'Adapters loaded and servable', registers });
    this.batchSize = new Histogram({ name: 'peft_serve_batch_sequences', help: 'Sequences per forward pass', buckets: [1, 2, 4, 8, 16, 32, 64, 128], registers });
    this.stepSeconds = new Histogram({ name: 'peft_serve_step_duration_seconds', help: 'Wall time of one batched forward pass (in the model thread)', buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], registers });
    this.workerRestarts = new Counter({ name: 'peft_serve_worker_restarts_total', help: 'Times the model thread was restarted after dying', registers });
    this.adapterEvictions = new Counter({ name: 'peft_serve_adapter_evictions_total', help: 'Idle adapters unloaded to make room for a new one (--max-adapters, --max-adapter-bytes)', registers });
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'peft_serve_' });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
