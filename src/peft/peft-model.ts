/**
 * One base model carrying many named adapters (HF PEFT's PeftModel / multi-adapter API):
 * add/load several adapters, choose the active one(s), disable all (then the output equals the
 * base model's exactly), delete, and batches in which each row uses a different adapter.
 *
 * The PeftModel installs one dispatching hook per hook point of the base model; each call asks
 * which adapters apply (the active list, or per row range when ForwardContext.rowAdapters is set)
 * and forwards to those adapters' methods.
 */
import { PeftError } from '../errors.js';
import { registerSequenceSetup, type SequenceSetup } from '../generate/generate.js';
import type { CausalLM, DecoderLayer, ForwardContext, LinearModule } from '../models/model.js';
import { linearModules, namedParameters } from '../models/model.js';
import { add, scale, Tensor } from '../tensor/index.js';
import type { AdapterMethod, NamedTensor, RowRange } from './types.js';

/** How several active bottleneck adapters combine: in sequence, summed, or averaged. */
export type Composition = 'stack' | 'parallel' | 'average';

interface Group {
  adapters: AdapterMethod[];
  rows?: RowRange;
}

export class PeftModel {
  readonly adapters = new Map<string, AdapterMethod>();
  /** Names of the active adapters, in application order. */
  active: string[] = [];
  /** When true every hook is skipped: the base model runs unchanged. */
  disabled = false;
  composition: Composition = 'stack';
  private hooked = new Set<string>();

  /**
   * Installs the dispatching hooks on `model` and registers this PeftModel's
   * {@link sequenceSetup} as the model's default for generation, so `generate(model, ids)`
   * honours active prompt/prefix-tuning adapters as the uncached forward does.
   */
  constructor(readonly model: CausalLM) {
    this.installStructuralHooks();
    registerSequenceSetup(model, sequenceSetup(this));
  }

  /** Registers an adapter under a name; it becomes active when `activate` (default true). */
  addAdapter(name: string, adapter: AdapterMethod, activate = true): void {
    if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new PeftError('invalid adapter name', { expected: 'letters, digits, _ . -', found: JSON.stringify(name) });
    if (this.adapters.has(name)) throw new PeftError('an adapter with this name is already loaded', { field: name });
    this.adapters.set(name, adapter);
    this.installLinearHooks(adapter);
    if (activate) this.active = [name];
  }

  get(name: string): AdapterMethod {
    const a = this.adapters.get(name);
    if (!a) throw new PeftError('no adapter with this name', { field: name, expected: [...this.adapters.keys()].join(', ') || 'a loaded adapter' });
    return a;
  }

  /** Makes exactly these adapters active (and enables adapters). */
  setActive(...names: string[]): void {
    for (const n of names) this.get(n);
    this.active = names;
    this.disabled = false;
  }

  deleteAdapter(name: string): void {
    this.get(name);
    this.adapters.delete(name);
    this.active = this.active.filter((n) => n !== name);
  }

  /** Runs fn with all adapters disabled (output = base model), restoring the state after. */
  withDisabled<T>(fn: () => T): T {
    const prev = this.disabled;
    this.disabled = true;
    try {
      return fn();
    } finally {
      this.disabled = prev;
    }
  }

  /** Marks the named adapter's parameters trainable and every other tensor frozen; returns them. */
  trainable(name: string): NamedTensor[] {
    for (const p of namedParameters(this.model)) p.tensor.requiresGrad = false;
    for (const [, a] of this.adapters) for (const p of a.trainableParameters()) p.tensor.requiresGrad = false;
    const params = this.get(name).trainableParameters();
    for (const p of params) p.tensor.requiresGrad = true;
    return params;
  }

  /** Counts for the trainable-parameter summary (PEFT `get_nb_trainable_parameters`). */
  parameterCounts(trainableOf?: string): { trainable: number; all: number } {
    let base = 0;
    for (const p of namedParameters(this.model)) base += p.tensor.size;
    for (const m of linearModules(this.model)) {
      if (m === this.model.lmHead && this.model.config.tieWordEmbeddings) continue;
      if (m.weight.data.kind !== 'f32') base += m.outFeatures * m.inFeatures;
    }
    if (this.model.embedTokens.kind === 'bf16') base += this.model.embedTokens.shape[0] * this.model.embedTokens.shape[1];
    let extra = 0;
    for (const a of this.adapters.values()) extra += a.numParameters();
    const name = trainableOf ?? this.active[0];
    let trainable = 0;
    if (name) for (const p of this.get(name).trainableParameters()) trainable += p.tensor.size;
    return { trainable, all: base + extra };
  }

  /** PEFT's exact summary line: `trainable params: 1,234 || all params: 5,678 || trainable%: 21.7329`. */
  trainableSummary(name?: string): string {
    const { trainable, all } = this.parameterCounts(name);
    return formatTrainableSummary(trainable, all);
  }

  // ---- dispatch ------------------------------------------------------------------------------------

  private groups(ctx: ForwardContext): Group[] {
    if (this.disabled) return [];
    if (ctx.rowAdapters) {
      return ctx.rowAdapters
        .filter((g) => g.adapter !== null && g.end > g.start)
        .map((g) => ({ adapters: [this.get(g.adapter!)], rows: { start: g.start, end: g.end } }));
    }
    return this.active.length ? [{ adapters: this.active.map((n) => this.get(n)) }] : [];
  }

  private installLinearHooks(adapter: AdapterMethod): void {
    const targets = adapter.linearTargets?.() ?? new Set<string>();
    for (const m of linearModules(this.model)) {
      if (!targets.has(m.name) || this.hooked.has(m.name)) continue;
      this.hooked.add(m.name);
      m.pre.push((x, ctx) => this.linearPre(m, x, ctx));
      m.post.push((x, y, ctx) => this.linearPost(m, x, y, ctx));
    }
  }

  private linearPre(m: LinearModule, x: Tensor, ctx: ForwardContext): Tensor {
    for (const g of this.groups(ctx)) {
      for (const a of g.adapters) {
        if (!a.linearPre) continue;
        x = a.linearPre(m, x, ctx, g.rows);
      }
    }
    return x;
  }

  private linearPost(m: LinearModule, x: Tensor, y: Tensor, ctx: ForwardContext): Tensor {
    for (const g of this.groups(ctx)) for (const a of g.adapters) if (a.linearPost) y = a.linearPost(m, x, y, ctx, g.rows);
    return y;
  }

  private block(kind: 'afterAttention' | 'afterMlp', layer: DecoderLayer, y: Tensor, ctx: ForwardContext): Tensor {
    for (const g of this.groups(ctx)) {
      const list = g.adapters.filter((a) => a[kind]);
      if (list.length === 0) continue;
      if (this.composition === 'stack' || list.length === 1 || g.rows) {
        for (const a of list) y = a[kind]!(layer, y, ctx, g.rows);
      } else {
        y = combineParallel(list.map((a) => a[kind]!(layer, y, ctx)), y, this.composition === 'average');
      }
    }
    return y;
  }

  private installStructuralHooks(): void {
    for (const layer of this.model.layers) {
      layer.afterAttention.push((y, ctx) => this.block('afterAttention', layer, y, ctx));
      layer.afterMlp.push((y, ctx) => this.block('afterMlp', layer, y, ctx));
      layer.prefix = (ctx, B) => {
        if (ctx.rowAdapters) return null; // cached generation fills prefixes into each sequence's cache
        for (const g of this.groups(ctx)) for (const a of g.adapters) {
          const p = a.prefix?.(layer, ctx, B);
          if (p) return p;
        }
        return null;
      };
    }
    this.model.inputHooks.push((embeds, batch, ctx) => {
      for (const g of this.groups(ctx)) for (const a of g.adapters) if (a.input && !g.rows) ({ embeds, batch } = a.input(embeds, batch, ctx));
      return { embeds, batch };
    });
  }
}

/**
 * The generation setup for adapters of a PeftModel: for a named adapter, that adapter (null =
 * base model); for `undefined`, the active adapters; none while adapters are disabled; the first one that
 * provides each hook, as the uncached forward uses the first active prefix.
 */
export function sequenceSetup(peft: PeftModel): SequenceSetup {
  const adaptersFor = (adapter: string | null | undefined): AdapterMethod[] => {
    if (peft.disabled) return [];
    if (adapter === undefined) return peft.active.map((n) => peft.get(n));
    return adapter ? [peft.get(adapter)] : [];
  };
  return {
    prepareCache: (cache, adapter) => adaptersFor(adapter).find((a) => a.prepareCache)?.prepareCache!(cache),
    positionOffset: (adapter) => adaptersFor(adapter).find((a) => a.positionOffset)?.positionOffset!() ?? 0,
    promptEmbeddings: (adapter) => adaptersFor(adapter).find((a) => a.promptEmbeddings)?.promptEmbeddings!() ?? null,
  };
}

/**
 * Parallel composition of adapters that each return y + delta_i: y + Σ delta_i, or the mean of
 * their outputs (= y + mean delta) when average. Built from differentiable ops.
 */
function combineParallel(outs: Tensor[], y: Tensor, average: boolean): Tensor {
  const k = outs.length;
  let acc = outs[0];
  for (let i = 1; i < k; i++) acc = add(acc, outs[i]);
  // Σ y_i − (k−1)·y  or  (Σ y_i)/k
  if (average) return scale(acc, 1 / k);
  return add(acc, scale(y, -(k - 1)));
}

/** Formats PEFT's `print_trainable_parameters` line. */
export function formatTrainableSummary(trainable: number, all: number): string {
  const fmt = (n: number): string => n.toLocaleString('en-US');
  return `trainable params: ${fmt(trainable)} || all params: ${fmt(all)} || trainable%: ${(all ? (100 * trainable) / all : 0).toFixed(4)}`;
}
