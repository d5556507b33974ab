/**
 * `peft serve --registry DIR`: adapters come only from a registry (src/lifecycle/registry.ts).
 * A request's `model` may be `NAME` (the version NAME's `prod` tag points to) or `NAME@N` (that
 * version, loaded on first use). The registry's tags are polled; when `prod` moves, the new
 * version is loaded first, then `NAME` switches to it, then the old version is unloaded — the
 * scheduler lets requests already admitted on it finish (src/serve/scheduler.ts), so a tag move
 * drops no request. Adapters recorded as trained on another base (training_provenance.json) are
 * refused.
 */
import { checkBase } from '../lifecycle/provenance.js';
import { checkout, listNames, listVersions, parseRef, readTags } from '../lifecycle/registry.js';
import { ApiError } from './openai.js';
import type { AdapterEntry, Scheduler } from './scheduler.js';

export const SERVED_TAG = 'prod';

export class RegistrySource {
  /** NAME → the public name (`NAME@N`) of the version its tag points to. */
  private readonly aliases = new Map<string, string>();
  private readonly pending = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | null = null;
  private polling = false;
  /** Tag moves applied, for tests and logs. */
  readonly events: Array<{ name: string; from: number | null; to: number }> = [];

  constructor(readonly root: string, private readonly scheduler: Scheduler, private readonly modelDir: string, private readonly pollMs = 500) {}

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

  /** Public names served: `NAME` aliases with their targets. */
  listAliases(): Array<{ name: string; target: AdapterEntry }> {
    const out: Array<{ name: string; target: AdapterEntry }> = [];
    for (const [name, pub] of this.aliases) {
      const e = this.scheduler.adapter(pub);
      if (e) out.push({ name, target: e });
    }
    return out;
  }

  /** The loaded adapter a request's `model` names right now (synchronous, so no tag move can interleave before submit). */
  lookup(model: string): AdapterEntry | undefined {
    return this.scheduler.adapter(this.aliases.get(model) ?? model);
  }

  /** Makes `model` loadable: NAME@N is loaded from the registry on first use. Throws ApiError 404 for names the registry does not hold. */
  async ensure(model: string): Promise<void> {
    if (this.lookup(model)) return;
    let name: string, selector: string | null;
    try {
      ({ name, selector } = parseRef(model));
    } catch {
      throw new ApiError(404, `The model '${model}' does not exist`, 'model', 'model_not_found');
    }
    if (selector === null) {
      await this.poll(); // a NAME tagged since the last poll
      if (!this.lookup(model)) throw new ApiError(404, `The model '${model}' does not exist (no ${SERVED_TAG} tag in the registry)`, 'model', 'model_not_found');
      return;
    }
    const tags = readTags(this.root, name).tags;
    const version = /^\d+$/.test(selector) ? Number(selector) : tags[selector];
    if (version === undefined || !listVersions(this.root, name).includes(version))
      throw new ApiError(404, `The model '${model}' does not exist in the registry`, 'model', 'model_not_found');
    await this.load(name, version);
    if (!/^\d+$/.test(selector)) this.aliases.set(model, `${name}@${version}`);
  }

  /** Loads NAME@N under the public name `NAME@N` (once, however many requests ask at the same time). */
  private async load(name: string, version: number): Promise<void> {
    const pub = `${name}@${version}`;
    if (this.scheduler.adapter(pub)) return;
    let p = this.pending.get(pub);
    if (!p) {
      p = (async () => {
        const dir = checkout(this.root, name, version);
        try {
          checkBase(dir, this.modelDir);
        } catch (e) {
          throw new ApiError(409, `cannot serve '${pub}': ${(e as Error).message}`, 'model', 'base_mismatch');
        }
        await this.scheduler.loadAdapter(pub, dir);
      })().finally(() => this.pending.delete(pub));
      this.pending.set(pub, p);
    }
    await p;
  }

  /** Reads every adapter's served tag; loads new targets, then switches and unloads the old ones. */
  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      for (const name of listNames(this.root)) {
        const target = readTags(this.root, name).tags[SERVED_TAG];
        const current = this.aliases.get(name) ?? null;
        if (target === undefined || current === `${name}@${target}`) continue;
        try {
          await this.load(name, target);
        } catch (e) {
          process.stderr.write(`peft serve: cannot load ${name}@${target} from the registry: ${(e as Error).message}\n`);
          continue;
        }
        this.aliases.set(name, `${name}@${target}`);
        const from = current === null ? null : Number(current.slice(current.lastIndexOf('@') + 1));
        this.events.push({ name, from, to: target });
        // the old version goes once its in-flight requests end (unless another alias still uses it)
        if (current && ![...this.aliases.values()].includes(current) && this.scheduler.adapter(current)) await this.scheduler.unloadAdapter(current);
      }
    } finally {
      this.polling = false;
    }
  }
}
