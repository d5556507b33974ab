/**
 * Preference objectives on per-sequence log-probabilities, in float64, each with its analytic
 * gradient with respect to the policy's summed completion log-probabilities (the model side of
 * the gradient is back-propagated by `surrogateLoss`). Reported metrics carry TRL's names.
 *
 * Conventions (TRL 1.13, checked by test/train/preference.test.ts against fixtures from
 * scripts/fixtures/make_preference.py):
 * - `logp` of a sequence is the SUM of its completion tokens' log-probabilities (prompt and
 *   padding masked); IPO divides each log-ratio by the completion length, ORPO and SimPO use the
 *   per-token MEAN (`average_log_prob=True`).
 * - rewards: DPO/IPO/KTO `β·(logp − logp_ref)`; ORPO/SimPO `β·mean logp` (no reference model).
 * - a batch's loss is the mean over pairs (KTO: over examples), plus the NLL term where the
 *   objective has one.
 */

/** The preference objectives. */
export type Objective = 'dpo' | 'ipo' | 'orpo' | 'simpo' | 'kto';
export const OBJECTIVES: Objective[] = ['dpo', 'ipo', 'orpo', 'simpo', 'kto'];

/** Which objectives need reference log-probabilities. */
export function needsReference(o: Objective): boolean {
  return o === 'dpo' || o === 'ipo' || o === 'kto';
}

export interface PreferenceConfig {
  objective: Objective;
  /** β: DPO/IPO/KTO temperature (IPO: τ), ORPO's λ weight of the odds-ratio term, SimPO's reward scale. */
  beta: number;
  /** DPO and SimPO: probability that a preference label is flipped (conservative DPO). */
  labelSmoothing: number;
  /** SimPO: target reward margin γ. */
  simpoGamma: number;
  /** SimPO: weight of the NLL term on the chosen completions (CPO's α; 0 = pure SimPO). */
  cpoAlpha: number;
  /** KTO: weights of desirable and undesirable examples' losses. */
  desirableWeight: number;
  undesirableWeight: number;
}

/**
 * Defaults per objective: β 0.1 (TRL's DPOConfig/ORPOConfig/KTOConfig), SimPO β 2.0 and γ 0.5
 * (SimPO paper, Meng et al. 2024, §4: β 2.0–2.5; TRL CPOConfig simpo_gamma 0.5) with cpo_alpha 0.
 */
export function defaultPreferenceConfig(objective: Objective): PreferenceConfig {
  return {
    objective, beta: objective === 'simpo' ? 2.0 : 0.1, labelSmoothing: 0, simpoGamma: 0.5, cpoAlpha: 0,
    desirableWeight: 1, undesirableWeight: 1,
  };
}

/** Per-sequence log-probabilities of a batch of pairs (index i = pair i). */
export interface PairLogps {
  /** Σ of completion-token log-probabilities of the chosen / rejected sequences (policy). */
  chosen: Float64Array;
  rejected: Float64Array;
  /** Completion tokens of each sequence. */
  chosenTokens: Float64Array;
  rejectedTokens: Float64Array;
  /** Reference Σ log-probabilities (DPO, IPO). */
  refChosen?: Float64Array;
  refRejected?: Float64Array;
  /** ORPO: Σ log-probabilities over every token of the chosen sequence (prompt included) and the count. */
  chosenAll?: Float64Array;
  chosenAllTokens?: Float64Array;
  /** Σ over completion tokens of the mean logit (TRL's logits/chosen, logits/rejected), and token totals. */
  chosenLogitSum?: number;
  rejectedLogitSum?: number;
}

/** A loss, its gradient w.r.t. the policy's sums, and metrics. */
export interface PairLoss {
  loss: number;
  dChosen: Float64Array;
  dRejected: Float64Array;
  /** ORPO: gradient w.r.t. `chosenAll`. */
  dChosenAll?: Float64Array;
  metrics: Record<string, number>;
}

const logSigmoid = (x: number): number => (x >= 0 ? -Math.log1p(Math.exp(-x)) : x - Math.log1p(Math.exp(x)));
const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));
/** log(1 − eˣ) for x < 0, stable on both sides of −ln 2 (TRL orpo_trainer.py `log1mexp`). */
export const log1mexp = (x: number): number => (x < -Math.LN2 ? Math.log1p(-Math.exp(x)) : Math.log(-Math.expm1(x)));
const mean = (a: ArrayLike<number>): number => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i]; return a.length ? s / a.length : 0; };

/**
 * −(1−ε)·logσ(z) − ε·logσ(−z) and its derivative in z: the (conservative, ε > 0) logistic
 * preference loss (Rafailov et al. 2023 eq. 7; label smoothing as cDPO, Mitchell 2023, and TRL
 * CPOTrainer `cpo_loss`).
 */
export function smoothedLogistic(z: number, eps: number): { loss: number; dz: number } {
  return { loss: -(1 - eps) * logSigmoid(z) - eps * logSigmoid(-z), dz: -(1 - eps) * sigmoid(-z) + eps * sigmoid(z) };
}

function rewardMetrics(rc: ArrayLike<number>, rr: ArrayLike<number>, p: PairLogps, chosenLogps: ArrayLike<number>, rejectedLogps: ArrayLike<number>): Record<string, number> {
  const n = rc.length;
  let acc = 0, margin = 0;
  for (let i = 0; i < n; i++) { acc += rc[i] > rr[i] ? 1 : 0; margin += rc[i] - rr[i]; }
  const m: Record<string, number> = {
    'rewards/chosen': mean(rc), 'rewards/rejected': mean(rr), 'rewards/accuracies': n ? acc / n : 0, 'rewards/margins': n ? margin / n : 0,
    'logps/chosen': mean(chosenLogps), 'logps/rejected': mean(rejectedLogps),
  };
  const tc = p.chosenTokens.reduce((s, x) => s + x, 0), tr = p.rejectedTokens.reduce((s, x) => s + x, 0);
  if (p.chosenLogitSum !== undefined && tc > 0) m['logits/chosen'] = p.chosenLogitSum / tc;
  if (p.rejectedLogitSum !== undefined && tr > 0) m['logits/rejected'] = p.rejectedLogitSum / tr;
  return m;
}

function requireRef(p: PairLogps, o: Objective): { rc: Float64Array; rr: Float64Array } {
  if (!p.refChosen || !p.refRejected) throw new Error(`${o}: reference log-probabilities are required`);
  return { rc: p.refChosen, rr: p.refRejected };
}

/**
 * DPO (Rafailov et al. 2023, eq. 7; TRL DPOTrainer loss_type "sigmoid"): per pair
 * −logσ(β·Δ) with Δ = (logp_c − ref_c) − (logp_r − ref_r); with label smoothing ε,
 * −(1−ε)logσ(βΔ) − ε·logσ(−βΔ) (conservative DPO). Loss = mean over pairs.
 */
export function dpoLoss(p: PairLogps, c: PreferenceConfig): PairLoss {
  const { rc, rr } = requireRef(p, 'dpo');
  const n = p.chosen.length;
  const dChosen = new Float64Array(n), dRejected = new Float64Array(n);
  const rewC = new Float64Array(n), rewR = new Float64Array(n);
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const lc = p.chosen[i] - rc[i], lr = p.rejected[i] - rr[i];
    const { loss: l, dz } = smoothedLogistic(c.beta * (lc - lr), c.labelSmoothing);
    loss += l / n;
    dChosen[i] = (c.beta * dz) / n;
    dRejected[i] = -(c.beta * dz) / n;
    rewC[i] = c.beta * lc; rewR[i] = c.beta * lr;
  }
  return { loss, dChosen, dRejected, metrics: rewardMetrics(rewC, rewR, p, p.chosen, p.rejected) };
}

/**
 * IPO (Azar et al. 2023, eq. 17; TRL DPOTrainer loss_type "ipo"): per pair
 * (Δ̄ − 1/(2β))² with Δ̄ = (logp_c − ref_c)/|y_c| − (logp_r − ref_r)/|y_r| (log-ratios averaged per
 * completion token, as TRL does). Rewards as DPO (summed).
 */
export function ipoLoss(p: PairLogps, c: PreferenceConfig): PairLoss {
  const { rc, rr } = requireRef(p, 'ipo');
  const n = p.chosen.length;
  const dChosen = new Float64Array(n), dRejected = new Float64Array(n);
  const rewC = new Float64Array(n), rewR = new Float64Array(n);
  let loss = 0;
  for (let i = 0; i < n; i++) {
    const lc = p.chosen[i] - rc[i], lr = p.rejected[i] - rr[i];
    const nc = Math.max(1, p.chosenTokens[i]), nr = Math.max(1, p.rejectedTokens[i]);
    const e = lc / nc - lr / nr - 1 / (2 * c.beta);
    loss += (e * e) / n;
    dChosen[i] = (2 * e) / nc / n;
    dRejected[i] = (-2 * e) / nr / n;
    rewC[i] = c.beta * lc; rewR[i] = c.beta * lr;
  }
  return { loss, dChosen, dRejected, metrics: rewardMetrics(rewC, rewR, p, p.chosen, p.rejected) };
}

/**
 * ORPO (Hong et al. 2024, eqs. 4–7; TRL ORPOTrainer `odds_ratio_loss`): with per-token mean
 * log-probabilities a_c, a_r, log_odds = (a_c − a_r) − (log(1−e^{a_c}) − log(1−e^{a_r})), loss =
 * NLL − β·mean(logσ(log_odds)), where NLL is the mean cross-entropy over every token of the chosen
 * sequences — prompt included, as TRL computes it (`chosen_nll_loss` on the full prompt and
 * response). Metrics add `nll_loss`, `log_odds_ratio` (mean logσ(log_odds)) and `log_odds_chosen`
 * (mean log_odds).
 */
export function orpoLoss(p: PairLogps, c: PreferenceConfig): PairLoss {
  if (!p.chosenAll || !p.chosenAllTokens) throw new Error('orpo: full-sequence chosen log-probabilities are required');
  const n = p.chosen.length;
  const dChosen = new Float64Array(n), dRejected = new Float64Array(n), dChosenAll = new Float64Array(n);
  const ac = new Float64Array(n), ar = new Float64Array(n);
  let allSum = 0, allTokens = 0, ratio = 0, odds = 0;
  for (let i = 0; i < n; i++) { allSum += p.chosenAll[i]; allTokens += p.chosenAllTokens[i]; }
  const nll = allTokens > 0 ? -allSum / allTokens : 0;
  for (let i = 0; i < n; i++) {
    const nc = Math.max(1, p.chosenTokens[i]), nr = Math.max(1, p.rejectedTokens[i]);
    ac[i] = p.chosen[i] / nc; ar[i] = p.rejected[i] / nr;
    const lo = ac[i] - ar[i] - (log1mexp(ac[i]) - log1mexp(ar[i]));
    ratio += logSigmoid(lo) / n;
    odds += lo / n;
    // loss −β·logσ(lo)/n; d lo/d a_c = 1/(1 − e^{a_c}), d lo/d a_r = −1/(1 − e^{a_r})
    const dlo = (-c.beta * sigmoid(-lo)) / n;
    dChosen[i] = (dlo / -Math.expm1(ac[i])) / nc;
    dRejected[i] = (-dlo / -Math.expm1(ar[i])) / nr;
    dChosenAll[i] = allTokens > 0 ? -1 / allTokens : 0;
  }
  const rewC = ac.map((x) => c.beta * x), rewR = ar.map((x) => c.beta * x);
  const metrics = rewardMetrics(rewC, rewR, p, ac, ar);
  metrics.nll_loss = nll;
  metrics.log_odds_ratio = ratio;
  metrics.log_odds_chosen = odds;
  return { loss: nll - c.beta * ratio, dChosen, dRejected, dChosenAll, metrics };
}

/**
 * SimPO (Meng et al. 2024, eq. 6; TRL CPOTrainer loss_type "simpo"): with per-token mean
 * log-probabilities a_c, a_r, per pair −(1−ε)logσ(β(a_c − a_r) − γ) − ε·logσ(−(β(a_c − a_r) − γ)),
 * plus cpo_alpha × the mean NLL of the chosen completion tokens (CPO, Xu et al. 2024).
 */
export function simpoLoss(p: PairLogps, c: PreferenceConfig): PairLoss {
  const n = p.chosen.length;
  const dChosen = new Float64Array(n), dRejected = new Float64Array(n);
  const ac = new Float64Array(n), ar = new Float64Array(n);
  let loss = 0, cSum = 0, cTokens = 0;
  for (let i = 0; i < n; i++) { cSum += p.chosen[i]; cTokens += p.chosenTokens[i]; }
  const nll = cTokens > 0 ? -cSum / cTokens : 0;
  for (let i = 0; i < n; i++) {
    const nc = Math.max(1, p.chosenTokens[i]), nr = Math.max(1, p.rejectedTokens[i]);
    ac[i] = p.chosen[i] / nc; ar[i] = p.rejected[i] / nr;
    const { loss: l, dz } = smoothedLogistic(c.beta * (ac[i] - ar[i]) - c.simpoGamma, c.labelSmoothing);
    loss += l / n;
    dChosen[i] = (c.beta * dz) / n / nc + (c.cpoAlpha && cTokens > 0 ? -c.cpoAlpha / cTokens : 0);
    dRejected[i] = -(c.beta * dz) / n / nr;
  }
  const metrics = rewardMetrics(ac.map((x) => c.beta * x), ar.map((x) => c.beta * x), p, ac, ar);
  metrics.nll_loss = c.cpoAlpha ? nll : 0;
  return { loss: loss + c.cpoAlpha * nll, dChosen, dRejected, metrics };
}

/** The loss of a batch of pairs for a paired objective. */
export function pairLoss(p: PairLogps, c: PreferenceConfig): PairLoss {
  switch (c.objective) {
    case 'dpo': return dpoLoss(p, c);
    case 'ipo': return ipoLoss(p, c);
    case 'orpo': return orpoLoss(p, c);
    case 'simpo': return simpoLoss(p, c);
    default: throw new Error(`pairLoss: ${c.objective} is not a paired objective`);
  }
}

/** Per-example log-probabilities of a KTO batch (unpaired examples). */
export interface KtoLogps {
  /** Σ completion log-probabilities (policy, reference) and whether each example is desirable. */
  logps: Float64Array;
  ref: Float64Array;
  desirable: boolean[];
  /** Σ log-probabilities of the mismatched (prompt_i, completion_{i−1}) sequences under policy and reference (no gradient). */
  klLogps: Float64Array;
  klRef: Float64Array;
  /** Σ over completion tokens of the mean logit, and completion tokens, of desirable / undesirable examples. */
  chosenLogitSum?: number;
  rejectedLogitSum?: number;
  chosenTokens?: number;
  rejectedTokens?: number;
}

/**
 * KTO (Ethayarajh et al. 2024, eq. 7; TRL KTOTrainer loss_type "kto"): z₀ = max(0, mean(KL logps −
 * ref KL logps)) estimated from mismatched pairs and detached; desirable examples lose
 * w_d·(1 − σ(β(r − z₀))), undesirable ones w_u·(1 − σ(β(z₀ − r))), r = logp − ref; loss = mean
 * over the examples. Metrics: `kl`, rewards/logps per kind (`rewards/margins` only when both are
 * present, as TRL logs them).
 */
export function ktoLoss(k: KtoLogps, c: PreferenceConfig): { loss: number; dLogps: Float64Array; metrics: Record<string, number> } {
  const n = k.logps.length;
  const kl = Math.max(0, mean(Array.from(k.klLogps, (x, i) => x - k.klRef[i])));
  const d = new Float64Array(n);
  let loss = 0, nc = 0, nr = 0, rc = 0, rr = 0, lc = 0, lr = 0;
  for (let i = 0; i < n; i++) {
    const r = k.logps[i] - k.ref[i];
    if (k.desirable[i]) {
      const s = sigmoid(c.beta * (r - kl));
      loss += (c.desirableWeight * (1 - s)) / n;
      d[i] = (-c.desirableWeight * c.beta * s * (1 - s)) / n;
      nc++; rc += c.beta * r; lc += k.logps[i];
    } else {
      const s = sigmoid(c.beta * (kl - r));
      loss += (c.undesirableWeight * (1 - s)) / n;
      d[i] = (c.undesirableWeight * c.beta * s * (1 - s)) / n;
      nr++; rr += c.beta * r; lr += k.logps[i];
    }
  }
  const metrics: Record<string, number> = { kl };
  if (nc > 0) { metrics['rewards/chosen'] = rc / nc; metrics['logps/chosen'] = lc / nc; }
  if (nr > 0) { metrics['rewards/rejected'] = rr / nr; metrics['logps/rejected'] = lr / nr; }
  if (nc > 0 && nr > 0) metrics['rewards/margins'] = metrics['rewards/chosen'] - metrics['rewards/rejected'];
  if (k.chosenLogitSum !== undefined && k.chosenTokens) metrics['logits/chosen'] = k.chosenLogitSum / k.chosenTokens;
  if (k.rejectedLogitSum !== undefined && k.rejectedTokens) metrics['logits/rejected'] = k.rejectedLogitSum / k.rejectedTokens;
  return { loss, dLogps: d, metrics };
}
