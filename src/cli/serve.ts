/** `peft serve`: an OpenAI-compatible HTTP server for a base model and many adapters (see src/serve/server.ts). */
import { basename } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { startServer, type ServeOptions } from '../serve/server.js';
import { int, intList, withConfigFile } from './options.js';

/** `NAME=DIR` (or a bare `DIR`, named after its last path component), collected over repeats. */
function adapterSpec(v: string, prev: Array<{ name: string; path: string }> = []): Array<{ name: string; path: string }> {
  const eq = v.indexOf('=');
  const name = eq > 0 ? v.slice(0, eq) : basename(v.replace(/\/+$/, ''));
  const path = eq > 0 ? v.slice(eq + 1) : v;
  if (!name || !path) throw new InvalidArgumentError(`--adapter must be NAME=DIR, got "${v}"`);
  return [...prev, { name, path }];
}

export function serveCommand(): Command {
  const cmd = new Command('serve')
    .description('serve the model and adapters over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models, /v1/adapters, /health, /metrics)')
    .option('--model <dir>', 'Hugging Face model directory (default: the bundled stories260K)')
    .option('--adapter <name=dir>', 'load an adapter under a name (repeatable); requests select it with "model": NAME', adapterSpec)
    .option('--host <host>', 'address to listen on (an address other than loopback needs --api-key, or --insecure)', '127.0.0.1')
    .option('--api-key <key>', 'require "Authorization: Bearer KEY" on every endpoint but /health and /metrics (default: env PEFT_API_KEY)')
    .option('--insecure', 'listen on a non-loopback --host without an API key')
    .option('--adapter-dir <dir>', 'directory POST /v1/adapters may load adapters from, by name or relative path (default: run-time loading off)')
    .option('--max-adapters <n>', 'adapters held at once (0 = no cap); beyond it the least recently used idle one loaded at run time is unloaded', int('--max-adapters'), 32)
    .option('--max-adapter-bytes <bytes>', 'bytes of adapter files held at once (0 = no cap)', int('--max-adapter-bytes'), 4 * 1024 ** 3)
    .option('--health-stall-timeout <s>', '/health answers 503 when queued work has seen no decoding step for this many seconds (0 = never)', int('--health-stall-timeout'), 60)
    .option('--registry <dir>', 'serve adapters only from this registry: "model": NAME (its prod tag, reloaded when the tag moves) or NAME@N')
    .option('--registry-poll-ms <n>', 'how often the registry\'s tags are read', int('--registry-poll-ms', 10), 500)
    .option('--port <n>', 'port to listen on', int('--port'), 8000)
    .option('--served-model-name <id>', "the base model's id in the API (default: the model directory's name)")
    .option('--max-batch <n>', 'sequences decoded together (batch slots)', int('--max-batch', 1), 32)
    .option('--max-queue <n>', 'sequences waiting for a slot before requests get 429', int('--max-queue'), 256)
    .option('--request-timeout <s>', 'seconds a request may take, queueing included (0 = none)', int('--request-timeout'), 300)
    .option('--body-limit <bytes>', 'largest request body (413 beyond)', int('--body-limit', 1024), 2 * 1024 * 1024)
    .option('--max-prefill-tokens <n>', 'prompt tokens admitted into one decoding step', int('--max-prefill-tokens', 1), 2048)
    .option('--stop-ids <ids>', 'extra token ids that end every generation (comma-separated; stories260K starts a new story with 1)', intList('--stop-ids'))
    .option('--threads <n>', 'native kernel threads (default: PEFT_NUM_THREADS, else CPUs - 1, leaving one to the HTTP thread)', int('--threads', 1))
    .option('--quantize <type>', 'store the base linear weights in 4 bits (nf4 or fp4)')
    .option('--config <file>', 'JSON/YAML file with any of these options (flags override)');
  cmd.action(async (raw: Record<string, unknown>) => {
    const o = withConfigFile(cmd, raw) as {
      model?: string; adapter?: Array<{ name: string; path: string }> | string[]; host: string; port: number; servedModelName?: string;
      maxBatch: number; maxQueue: number; requestTimeout: number; bodyLimit: number; maxPrefillTokens: number; stopIds?: number[]; quantize?: string; threads?: number;
      apiKey?: string; insecure?: boolean; adapterDir?: string; maxAdapters: number; maxAdapterBytes: number; healthStallTimeout: number;
      registry?: string; registryPollMs: number;
    };
    const apiKey = o.apiKey ?? (process.env.PEFT_API_KEY || undefined);
    // a config file gives adapters as a list of "NAME=DIR" strings or {name, path} objects
    const adapters = (o.adapter ?? []).flatMap((a) => (typeof a === 'string' ? adapterSpec(a) : [a]));
    const opts: ServeOptions = {
      model: o.model, modelId: o.servedModelName, adapters, host: o.host, port: o.port, maxBatch: o.maxBatch, maxQueue: o.maxQueue,
      requestTimeoutMs: o.requestTimeout * 1000, bodyLimit: o.bodyLimit, maxPrefillTokens: o.maxPrefillTokens, stopIds: o.stopIds, quantize: o.quantize, threads: o.threads,
      apiKey, insecure: o.insecure === true, adapterDir: o.adapterDir, maxAdapters: o.maxAdapters, maxAdapterBytes: o.maxAdapterBytes, healthStallMs: o.healthStallTimeout * 1000,
      registry: o.registry, registryPollMs: o.registryPollMs,
    };
    const server = await startServer(opts);
    process.stdout.write(`serving ${server.modelId}${server.quantize ? ` (${server.quantize} base)` : ''}${adapters.length ? ` with adapters ${adapters.map((a) => a.name).join(', ')}` : ''}` +
      `${o.registry ? ` with ${server.scheduler.listAdapters().map((a) => a.name).join(', ') || 'no tagged adapters'} from registry ${o.registry}` : ''} on ${server.url}` +
      `${apiKey ? ' (API key required)' : ''}${o.adapterDir ? `; run-time adapters from ${o.adapterDir}` : ''}\n`);
    if (!apiKey && o.insecure === true) process.stderr.write(`warning: --insecure: ${o.host} is served without an API key\n`);
    let stopping = false;
    const stop = (): void => {
      if (stopping) return;
      stopping = true;
      process.stdout.write('shutting down\n');
      server.close().then(() => process.exit(0), () => process.exit(1));
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return cmd;
}
