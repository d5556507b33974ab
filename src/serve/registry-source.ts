/**
 * `peft serve --registry DIR`: adapters come only from a registry (src/lifecycle/registry.ts).
 * A request's `model` may be `NAME` (the version NAME's `prod` tag points to) or `NAME@N` /
 * `NAME@TAG` (that version, loaded on first use). The registry's tags are polled; when `prod`
 * moves, the new version is loaded first, then `NAME` switches to it, then the old version is
 * unloaded — the scheduler lets requests already admitted on it finish (src/serve/scheduler.ts),
 * so a tag move drops no request. Loading goes through the server's one run-time loading path
 * (server.ts loadAdapterByName) with this class as the {@link AdapterSource}: a reference is a
 * registry version, resolved to its checkout; a version recorded as trained on another base
 * (training_provenance.json) is refused. An adapter evicted by --max-adapters is loaded again on
 * its next request.
 */
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { checkBase } from '../lifecycle/provenance.js';
import { checkout, listNames, listVersions, parseRef, readTags } from '../lifecycle/registry.js';
import { trainedQuantize, type AdapterRef, type AdapterSource } from './adapter-source.js';
import { ApiError } from './openai.js';
import type { AdapterEntry } from './scheduler.js';

export const SERVED_TAG = 'prod';

type Load = (name: string, ref: string) => Promise<AdapterEntry>;

export class RegistrySource implements AdapterSource {
  /** NAME (or NAME@TAG) → the public name `NAME@N` of the version it points to. */
  private readonly aliases = new Map<string, string>();
  private readonly pending = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private polling: Promise<void> | null = null;
  readonly roots: string[];
  /** Tag moves applied (for logs and tests). */
  readonly events: Array<{ name: string; from: number | null; to: number }> = [];

  constructor(readonly root: string, private readonly modelDir: string, private readonly loadByName: Load,
    private readonly loaded: (name: string) => AdapterEntry | undefined, private readonly unload: (name: string) => Promise<number>, private readonly pollMs = 500) {
    this.roots = [root];
  }

  /** Resolves `NAME@N` to its checkout (AdapterSource): refuses unknown versions (404) and other bases (409). */
  resolve(ref: string): AdapterRef {
    let name: string, selector: string | null;
    try {
      ({ name, selector } = parseRef(ref));
    } catch {
      throw new ApiError(404, `The model '${ref}' does not exist`, 'model', 'model_not_found');
    }
    const version = selector === null ? NaN : Number(selector);
    if (!Number.isInteger(version) || !listVersions(this.root, name).includes(version))
      throw new ApiError(404, `The model '${ref}' does not exist in the registry`, 'model', 'model_not_found');
    const dir = checkout(this.root, name, version);
    try {
      checkBase(dir, this.modelDir);
    } catch {
      throw new ApiError(409, `cannot serve '${ref}': it was trained on a different base model than this server's (training_provenance.json)`, 'model', 'base_mismatch');
    }
    let bytes = 0;
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) bytes += statSync(join(dir, f)).size;
    return { path: dir, bytes, quantize: trainedQuantize(dir) };
  }

  /** Loads the tagged version of every adapter in the registry and starts watching the tags. */
  async start(): Promise<void> {
    await this.poll();
    this.timer = setInterval(() => { void this.poll(); }, this.pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** `NAME` aliases served now, with their loaded targets. */
  listAliases(): Array<{ name: string; target: AdapterEntry }> {
    const out: Array<{ name: string; target: AdapterEntry }> = [];
    for (const [name, pub] of this.aliases) {
      const e = this.loaded(pub);
      if (e) out.push({ name, target: e });
    }
    return out;
  }

  /** The loaded adapter a request's `model` names right now (synchronous: nothing interleaves before submit). */
  lookup(model: string): AdapterEntry | undefined {
    return this.loaded(this.aliases.get(model) ?? model);
  }

  /** Makes `model` servable: loads NAME@N / NAME@TAG on first use, reloads an evicted target. ApiError 404 for names the registry lacks. */
  async ensure(model: string): Promise<void> {
    if (this.lookup(model)) return;
    let name: string, selector: string | null;
    try {
      ({ name, selector } = parseRef(model));
    } catch {
      throw new ApiError(404, `The model '${model}' does not exist`, 'model', 'model_not_found');
    }
    if (selector === null) {
      await this.poll(); // tagged since the last poll?
      const pub = this.aliases.get(model);
      if (!pub) throw new ApiError(404, `The model '${model}' does not exist (no ${SERVED_TAG} tag in the registry)`, 'model', 'model_not_found');
      if (!this.loaded(pub)) await this.load(pub); // evicted by the adapter caps
      return;
    }
    if (/^\d+$/.test(selector)) return this.load(`${name}@${Number(selector)}`);
    const v = readTags(this.root, name).tags[selector];
    if (v === undefined) throw new ApiError(404, `The model '${model}' does not exist in the registry`, 'model', 'model_not_found');
    await this.load(`${name}@${v}`);
    this.aliases.set(model, `${name}@${v}`);
  }

  /** Loads NAME@N under the public name `NAME@N`, once however many requests ask at the same time. */
  private async load(pub: string): Promise<void> {
    if (this.loaded(pub)) return;
    let p = this.pending.get(pub);
    if (!p) {
      p = this.loadByName(pub, pub).then(() => undefined).finally(() => this.pending.delete(pub));
      this.pending.set(pub, p);
    }
    await p;
  }

  private poll(): Promise<void> {
    this.polling ??= this.pollOnce().finally(() => { this.polling = null; });
    return this.polling;
  }

  /** Reads every adapter's served tag; loads a new target, then switches NAME, then unloads the old version. */
  private async pollOnce(): Promise<void> {
    for (const name of listNames(this.root)) {
      const target = readTags(this.root, name).tags[SERVED_TAG];
      const current = this.aliases.get(name) ?? null;
      if (target === undefined || current === `${name}@${target}`) continue;
      try {
        await this.load(`${name}@${target}`);
      } catch (e) {
        process.stderr.write(`peft serve: cannot load ${name}@${target} from the registry: ${(e as Error).message}\n`);
        continue;
      }
      this.aliases.set(name, `${name}@${target}`);
      this.events.push({ name, from: current === null ? null : Number(current.slice(current.lastIndexOf('@') + 1)), to: target });
      // the old version goes once its in-flight requests end (unless another alias still points to it)
      if (current && ![...this.aliases.values()].includes(current) && this.loaded(current)) await this.unload(current).catch(() => 0);
    }
  }
}
