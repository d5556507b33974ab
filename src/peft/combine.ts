/**
 * Combining LoRA adapters into a new LoRA adapter, like HF PEFT's `LoraModel.add_weighted_adapter`
 * (`peft/tuners/lora/model.py`), for the `cat`, `svd` and `linear` combination types. Each source i
 * has a weight w_i; on every module it adapts it contributes w_i·Δ_i with Δ_i = scaling_i·B_i·A_i.
 * The new adapter targets the union of the sources' modules; a source that lacks a module simply
 * contributes nothing there.
 *
 * - `cat` (exact): A = [A_1; A_2; …] (rows stacked), B = [w_1·s_1·B_1, w_2·s_2·B_2, …] (columns
 *   side by side), scaling 1, so B·A = Σ w_i·Δ_i exactly (up to one float32 rounding of w·s·B).
 *   Rank per module = Σ r_i of the sources having it. (PEFT puts w·s on A instead; same product.)
 * - `svd` (best rank-k): ΔW = Σ w_i·s_i·B_i·A_i in float64, truncated to rank k by its SVD;
 *   B = U_k·Σ_k, A = V_kᵀ, scaling 1 (PEFT's rule, from kohya's svd_merge_lora). k = svdRank, or
 *   the largest rank among the sources (PEFT's default), capped per module at min(out, in, Σ r_i).
 *   The SVD never forms ΔW: with ΔW = B_c·A_c (the `cat` factors, R = Σ r_i columns/rows),
 *   Householder QR gives B_c = Q_B·R_B and A_cᵀ = Q_A·R_A, so ΔW = Q_B·(R_B·R_Aᵀ)·Q_Aᵀ, and a
 *   one-sided (Hestenes) Jacobi SVD of the small R×R core C = R_B·R_Aᵀ = U_c·Σ·V_cᵀ gives
 *   U = Q_B·U_c, V = Q_A·V_c. Cost O((out + in)·R² + R³) per module instead of O(out·in·min),
 *   all in float64. Jacobi sweeps run until every column pair is orthogonal to 1e-15 relative
 *   (|u_p·u_q| ≤ 1e-15·‖u_p‖·‖u_q‖), which one-sided Jacobi reaches in a few sweeps with
 *   singular values accurate to high relative precision (Demmel & Veselić 1992). Tests: on
 *   matrices built with known singular values, S is recovered and U·Σ·Vᵀ reproduces the matrix
 *   within 1e-12 relative; the saved float32 factors then add one float32 rounding (~6e-8).
 * - `linear` (approximate): PEFT's `_generalized_task_arithmetic_weighted_adapter` with
 *   `task_arithmetic`: with c_i = w_i·s_i, A = Σ sign(c_i)·√|c_i|·A_i and B = Σ √|c_i|·B_i,
 *   scaling 1. B·A = Σ c_i·B_i·A_i + cross terms √|c_i c_j|·B_i·A_j, so it is NOT the weighted sum
 *   of the deltas unless there is one source (or the cross terms vanish). Every source must have
 *   the same rank on each module it shares with another.
 *
 * LoRA-B biases (lora_bias) are combined exactly in every mode: bias = Σ w_i·s_i·bias_i.
 * Sources with modules_to_save or trained base biases (bias = all | lora_only), and sources with a
 * merged layer, are refused. The new config has r = the main rank, lora_alpha = r, use_rslora
 * false, and rank_pattern / alpha_pattern entries (escaped full module names, rank = alpha, so
 * scaling = 1) for every module whose rank differs, so a save → load reproduces it exactly.
 */
import { PeftError } from '../errors.js';
import type { LinearModule } from '../models/model.js';
import { linearModules } from '../models/model.js';
import { parseLoraConfig } from './config.js';
import { isTargeted, moduleSuffixes } from './inject.js';
import { LoraAdapter, type LoraLayer } from './lora.js';

export type LoraCombination = 'cat' | 'svd' | 'linear';
export const LORA_COMBINATIONS: readonly LoraCombination[] = ['cat', 'svd', 'linear'];

export interface CombineSource {
  adapter: LoraAdapter;
  weight: number;
  /** Used in error messages (default `adapter <index>`). */
  name?: string;
}

export interface CombineOptions {
  /** Target rank for `svd` (default: the largest rank among the sources). */
  svdRank?: number;
  /** Seed for the new adapter's (overwritten) initialisation. */
  seed?: number;
}

/** Per-module outcome of a combination. */
export interface CombinedModule {
  name: string;
  rank: number;
  /** svd only: Σ σ_j² of all singular values, and of those discarded by the truncation. */
  energy?: number;
  discardedEnergy?: number;
  /** svd only: all singular values of the weighted ΔW (descending). */
  singularValues?: Float64Array;
}

export interface CombineResult {
  adapter: LoraAdapter;
  modules: CombinedModule[];
}

/** PEFT's add_weighted_adapter for cat / svd / linear: a new LoraAdapter on the sources' base model. */
export function combineLora(adapters: CombineSource[], combination: LoraCombination, opts: CombineOptions = {}): LoraAdapter {
  return combineLoraDetailed(adapters, combination, opts).adapter;
}

/** As {@link combineLora}, also returning each module's rank (and, for svd, its spectrum). */
export function combineLoraDetailed(adapters: CombineSource[], combination: LoraCombination, opts: CombineOptions = {}): CombineResult {
  if (!LORA_COMBINATIONS.includes(combination))
    throw new PeftError('unknown combination type', { field: 'combination', expected: LORA_COMBINATIONS.join(' | '), found: String(combination) });
  if (adapters.length === 0) throw new PeftError('no adapters to combine', { field: 'adapters', expected: 'at least one LoRA adapter' });
  const names = adapters.map((s, i) => s.name ?? `adapter ${i}`);
  const model = adapters[0].adapter.model;
  adapters.forEach((s, i) => {
    if (!(s.adapter instanceof LoraAdapter) || (s.adapter as { peftType: string }).peftType !== 'LORA')
      throw new PeftError('only LoRA adapters can be combined', { field: names[i], expected: 'LORA', found: String((s.adapter as { peftType?: string }).peftType) });
    if (!Number.isFinite(s.weight)) throw new PeftError('combination weight must be a finite number', { field: names[i], found: String(s.weight) });
    if (s.adapter.model !== model) throw new PeftError('adapters to combine must be on the same base model object', { field: names[i] });
    if (s.adapter.copies.size > 0)
      throw new PeftError('cannot combine an adapter with modules_to_save (full module copies are not low-rank deltas)', { field: names[i], found: [...s.adapter.copies.keys()].join(', ') });
    if (s.adapter.cfg.use_dora)
      throw new PeftError('cannot combine DoRA adapters (their magnitude vectors are not low-rank deltas)', { field: `${names[i]}: use_dora`, expected: 'false', found: 'true' });
    if (s.adapter.biases.size > 0)
      throw new PeftError('cannot combine an adapter that trains base biases', { field: `${names[i]}: bias`, expected: 'none', found: s.adapter.cfg.bias });
    for (const l of s.adapter.layers.values())
      if (l.merged) throw new PeftError('cannot combine an adapter whose layers are merged into the base weights; unmerge it first', { field: `${names[i]}: ${l.module.name}` });
  });
  if (opts.svdRank !== undefined && (!Number.isInteger(opts.svdRank) || opts.svdRank < 1))
    throw new PeftError('invalid SVD rank', { field: 'svdRank', expected: 'an integer >= 1', found: String(opts.svdRank) });

  // union of modules, in the model's order
  const union: LinearModule[] = linearModules(model).filter((m) => adapters.some((s) => s.adapter.layers.has(m.name)));
  const parts = (m: LinearModule): Array<{ l: LoraLayer; w: number; name: string }> =>
    adapters.flatMap((s, i) => {
      const l = s.adapter.layers.get(m.name);
      return l ? [{ l, w: s.weight, name: names[i] }] : [];
    });

  // ranks
  const maxRank = (a: LoraAdapter): number => Math.max(...[...a.layers.values()].map((l) => l.r));
  const moduleRank = new Map<string, number>();
  let mainRank: number;
  if (combination === 'cat') {
    for (const m of union) moduleRank.set(m.name, parts(m).reduce((a, p) => a + p.l.r, 0));
    mainRank = adapters.reduce((a, s) => a + s.adapter.cfg.r, 0);
  } else if (combination === 'linear') {
    for (const m of union) {
      const ps = parts(m);
      if (ps.some((p) => p.l.r !== ps[0].l.r))
        throw new PeftError('the linear combination needs adapters of equal rank', {
          field: m.name, expected: 'the same r for every adapter', found: ps.map((p) => `${p.name} (r=${p.l.r})`).join(', '),
        });
      moduleRank.set(m.name, ps[0].l.r);
    }
    mainRank = mostCommon([...moduleRank.values()]);
  } else {
    const k = opts.svdRank ?? Math.max(...adapters.map((s) => maxRank(s.adapter)));
    for (const m of union) {
      const R = parts(m).reduce((a, p) => a + p.l.r, 0);
      moduleRank.set(m.name, Math.min(k, m.outFeatures, m.inFeatures, R));
    }
    mainRank = k;
  }

  // config: targets as suffixes when they select exactly the union, else an exact regex
  const unionNames = new Set(union.map((m) => m.name));
  const suffixes = moduleSuffixes(union);
  const bySuffix = linearModules(model).filter((m) => isTargeted({ target_modules: suffixes }, m.name));
  const target_modules: string | string[] = bySuffix.length === union.length && bySuffix.every((m) => unionNames.has(m.name))
    ? suffixes
    : `(${union.map((m) => escapeRegex(m.name)).join('|')})`;
  const rank_pattern: Record<string, number> = {};
  const alpha_pattern: Record<string, number> = {};
  for (const [name, r] of moduleRank) {
    if (r === mainRank) continue;
    rank_pattern[escapeRegex(name)] = r;
    alpha_pattern[escapeRegex(name)] = r;
  }
  const first = adapters[0].adapter.cfg;
  const lora_bias = adapters.some((s) => s.adapter.cfg.lora_bias);
  const cfg = parseLoraConfig({
    r: mainRank, lora_alpha: mainRank, lora_dropout: first.lora_dropout, target_modules, rank_pattern, alpha_pattern,
    lora_bias, use_rslora: false, base_model_name_or_path: first.base_model_name_or_path, revision: first.revision,
  }, `combined LoRA (${combination})`);
  const out = new LoraAdapter(model, cfg, opts.seed ?? 0);
  if (out.layers.size !== union.length || [...out.layers.keys()].some((k) => !unionNames.has(k)))
    throw new Error(`combineLora: the new config selects ${out.layers.size} modules, expected ${union.length}`);

  const report: CombinedModule[] = [];
  for (const m of union) {
    const l = out.layers.get(m.name)!;
    const ps = parts(m);
    const r = moduleRank.get(m.name)!;
    if (l.r !== r || Math.abs(l.scaling - 1) > 0) throw new Error(`combineLora: ${m.name} got r=${l.r}, scaling ${l.scaling}; expected r=${r}, scaling 1`);
    const entry: CombinedModule = { name: m.name, rank: r };
    if (combination === 'cat') fillCat(l, ps);
    else if (combination === 'linear') fillLinear(l, ps);
    else Object.assign(entry, fillSvd(l, ps, r));
    if (l.biasB) {
      const b = new Float64Array(m.outFeatures);
      for (const p of ps) if (p.l.biasB) for (let o = 0; o < b.length; o++) b[o] += p.w * p.l.scaling * p.l.biasB.data[o];
      l.biasB.data.set(b);
    }
    report.push(entry);
  }
  return { adapter: out, modules: report };
}

function mostCommon(xs: number[]): number {
  const counts = new Map<number, number>();
  for (const x of xs) counts.set(x, (counts.get(x) ?? 0) + 1);
  let best = xs[0], n = 0;
  for (const [x, c] of counts) if (c > n || (c === n && x > best)) [best, n] = [x, c];
  return best;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

type Part = { l: LoraLayer; w: number };

/** A = rows of A_i stacked, B = columns w_i·s_i·B_i side by side. */
function fillCat(l: LoraLayer, ps: Part[]): void {
  const N = l.module.outFeatures, K = l.module.inFeatures, R = l.r;
  let off = 0;
  for (const p of ps) {
    const c = p.w * p.l.scaling, ri = p.l.r;
    l.A.data.set(p.l.A.data, off * K);
    for (let o = 0; o < N; o++) for (let j = 0; j < ri; j++) l.B.data[o * R + off + j] = c * p.l.B.data[o * ri + j];
    off += ri;
  }
}

/** PEFT's linear rule: A = Σ sign(c_i)·√|c_i|·A_i, B = Σ √|c_i|·B_i with c_i = w_i·s_i. */
function fillLinear(l: LoraLayer, ps: Part[]): void {
  const A = new Float64Array(l.A.size), B = new Float64Array(l.B.size);
  for (const p of ps) {
    const c = p.w * p.l.scaling;
    const wb = Math.sqrt(Math.abs(c)), wa = c >= 0 ? wb : -wb;
    for (let i = 0; i < A.length; i++) A[i] += wa * p.l.A.data[i];
    for (let i = 0; i < B.length; i++) B[i] += wb * p.l.B.data[i];
  }
  l.A.data.set(A);
  l.B.data.set(B);
}

/** Best rank-k factors of ΔW = Σ w_i·s_i·B_i·A_i: B = U_k·Σ_k, A = V_kᵀ. */
function fillSvd(l: LoraLayer, ps: Part[], k: number): Pick<CombinedModule, 'energy' | 'discardedEnergy' | 'singularValues'> {
  const N = l.module.outFeatures, K = l.module.inFeatures;
  const R = ps.reduce((a, p) => a + p.l.r, 0);
  const Bc = new Float64Array(N * R), Ac = new Float64Array(R * K);
  let off = 0;
  for (const p of ps) {
    const c = p.w * p.l.scaling, ri = p.l.r;
    for (let o = 0; o < N; o++) for (let j = 0; j < ri; j++) Bc[o * R + off + j] = c * p.l.B.data[o * ri + j];
    for (let i = 0; i < ri * K; i++) Ac[off * K + i] = p.l.A.data[i];
    off += ri;
  }
  const { U, S, V, q } = lowRankSvd(Bc, Ac, N, R, K);
  for (let o = 0; o < N; o++) for (let j = 0; j < k; j++) l.B.data[o * k + j] = j < q ? U[o * q + j] * S[j] : 0;
  for (let j = 0; j < k; j++) for (let i = 0; i < K; i++) l.A.data[j * K + i] = j < q ? V[i * q + j] : 0;
  let energy = 0, discarded = 0;
  for (let j = 0; j < q; j++) {
    energy += S[j] * S[j];
    if (j >= k) discarded += S[j] * S[j];
  }
  return { energy, discardedEnergy: discarded, singularValues: S };
}

// ---- dense linear algebra in float64 (row-major) -------------------------------------------------

/**
 * Thin Householder QR of X [m, n]: Q [m, p] with orthonormal columns and upper-triangular
 * R [p, n], p = min(m, n), X = Q·R. Rank-deficient X (zero columns) is handled: the reflector
 * of a zero column is skipped and Q keeps the identity's column there.
 */
export function householderQR(X: Float64Array, m: number, n: number): { Q: Float64Array; R: Float64Array; p: number } {
  const p = Math.min(m, n);
  const A = X.slice();
  const vs: Array<Float64Array | null> = [];
  for (let k = 0; k < p; k++) {
    let norm = 0;
    for (let i = k; i < m; i++) norm += A[i * n + k] * A[i * n + k];
    norm = Math.sqrt(norm);
    if (norm === 0) {
      vs.push(null);
      continue;
    }
    const x0 = A[k * n + k];
    const alpha = x0 >= 0 ? -norm : norm;
    const v = new Float64Array(m - k);
    for (let i = k; i < m; i++) v[i - k] = A[i * n + k];
    v[0] -= alpha;
    let vn = 0;
    for (let i = 0; i < v.length; i++) vn += v[i] * v[i];
    vn = Math.sqrt(vn);
    if (vn === 0) {
      vs.push(null);
      continue;
    }
    for (let i = 0; i < v.length; i++) v[i] /= vn;
    // A[k:, k:] -= 2 v (vᵀ A[k:, k:])
    for (let j = k; j < n; j++) {
      let d = 0;
      for (let i = k; i < m; i++) d += v[i - k] * A[i * n + j];
      d *= 2;
      for (let i = k; i < m; i++) A[i * n + j] -= d * v[i - k];
    }
    for (let i = k + 1; i < m; i++) A[i * n + k] = 0;
    vs.push(v);
  }
  const R = new Float64Array(p * n);
  for (let i = 0; i < p; i++) for (let j = i; j < n; j++) R[i * n + j] = A[i * n + j];
  const Q = new Float64Array(m * p);
  for (let i = 0; i < p; i++) Q[i * p + i] = 1;
  for (let k = p - 1; k >= 0; k--) {
    const v = vs[k];
    if (!v) continue;
    for (let j = 0; j < p; j++) {
      let d = 0;
      for (let i = k; i < m; i++) d += v[i - k] * Q[i * p + j];
      d *= 2;
      for (let i = k; i < m; i++) Q[i * p + j] -= d * v[i - k];
    }
  }
  return { Q, R, p };
}

/**
 * SVD of M [m, n] by one-sided (Hestenes) Jacobi: M = U·diag(S)·Vᵀ with U [m, q], V [n, q],
 * q = min(m, n), S descending and ≥ 0. Columns of U for zero singular values are zero.
 */
export function jacobiSvd(M: Float64Array, m: number, n: number): { U: Float64Array; S: Float64Array; V: Float64Array; q: number } {
  if (m < n) {
    const Mt = new Float64Array(n * m);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) Mt[j * m + i] = M[i * n + j];
    const r = jacobiSvd(Mt, n, m);
    return { U: r.V, S: r.S, V: r.U, q: r.q };
  }
  // column-major working copies: cols[j] = column j of M; vcols[j] = column j of V
  const cols = Array.from({ length: n }, (_, j) => {
    const c = new Float64Array(m);
    for (let i = 0; i < m; i++) c[i] = M[i * n + j];
    return c;
  });
  const vcols = Array.from({ length: n }, (_, j) => {
    const c = new Float64Array(n);
    c[j] = 1;
    return c;
  });
  const tol = 1e-15;
  for (let sweep = 0; sweep < 100; sweep++) {
    let rotated = false;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        const up = cols[p], uq = cols[q];
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < m; i++) {
          alpha += up[i] * up[i];
          beta += uq[i] * uq[i];
          gamma += up[i] * uq[i];
        }
        if (gamma === 0 || Math.abs(gamma) <= tol * Math.sqrt(alpha * beta)) continue;
        rotated = true;
        const zeta = (beta - alpha) / (2 * gamma);
        const t = (zeta >= 0 ? 1 : -1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t), s = c * t;
        for (let i = 0; i < m; i++) {
          const a = up[i], b = uq[i];
          up[i] = c * a - s * b;
          uq[i] = s * a + c * b;
        }
        const vp = vcols[p], vq = vcols[q];
        for (let i = 0; i < n; i++) {
          const a = vp[i], b = vq[i];
          vp[i] = c * a - s * b;
          vq[i] = s * a + c * b;
        }
      }
    }
    if (!rotated) break;
  }
  const norms = cols.map((c) => Math.sqrt(c.reduce((a, x) => a + x * x, 0)));
  const order = norms.map((_, j) => j).sort((a, b) => norms[b] - norms[a]);
  const q = n;
  const U = new Float64Array(m * q), S = new Float64Array(q), V = new Float64Array(n * q);
  order.forEach((j, k) => {
    S[k] = norms[j];
    if (norms[j] > 0) for (let i = 0; i < m; i++) U[i * q + k] = cols[j][i] / norms[j];
    for (let i = 0; i < n; i++) V[i * q + k] = vcols[j][i];
  });
  return { U, S, V, q };
}

/**
 * SVD of the product B·A (B [m, r], A [r, n]) without forming it: QR of B and of Aᵀ, Jacobi SVD
 * of the small core R_B·R_Aᵀ. Returns U [m, q], S [q] (descending), V [n, q], q = min(m, n, r).
 */
export function lowRankSvd(B: Float64Array, A: Float64Array, m: number, r: number, n: number): { U: Float64Array; S: Float64Array; V: Float64Array; q: number } {
  const qb = householderQR(B, m, r);
  const At = new Float64Array(n * r);
  for (let i = 0; i < r; i++) for (let j = 0; j < n; j++) At[j * r + i] = A[i * n + j];
  const qa = householderQR(At, n, r);
  // core C = R_B [pB, r] · R_Aᵀ [r, pA]
  const pB = qb.p, pA = qa.p;
  const C = new Float64Array(pB * pA);
  for (let i = 0; i < pB; i++) for (let j = 0; j < pA; j++) {
    let s = 0;
    for (let t = 0; t < r; t++) s += qb.R[i * r + t] * qa.R[j * r + t];
    C[i * pA + j] = s;
  }
  const core = jacobiSvd(C, pB, pA);
  const q = core.q;
  const U = new Float64Array(m * q), V = new Float64Array(n * q);
  for (let i = 0; i < m; i++) for (let k = 0; k < q; k++) {
    let s = 0;
    for (let t = 0; t < pB; t++) s += qb.Q[i * pB + t] * core.U[t * q + k];
    U[i * q + k] = s;
  }
  for (let i = 0; i < n; i++) for (let k = 0; k < q; k++) {
    let s = 0;
    for (let t = 0; t < pA; t++) s += qa.Q[i * pA + t] * core.V[t * q + k];
    V[i * q + k] = s;
  }
  return { U, S: core.S, V, q };
}
