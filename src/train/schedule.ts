/**
 * Learning-rate schedules with linear warmup, as transformers' `get_constant_schedule_with_warmup`,
 * `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` (optimization.py).
 */
export type ScheduleName = 'constant' | 'linear' | 'cosine';

/**
 * Multiplier of the base learning rate for optimizer step `step` (0-based) of `total`, as the
 * transformers lambdas compute it (so warmup starts at 0: factor = step / warmup).
 */
export function lrFactor(name: ScheduleName, step: number, total: number, warmup: number): number {
  if (step < warmup) return step / Math.max(1, warmup);
  if (name === 'constant') return 1;
  const progress = (step - warmup) / Math.max(1, total - warmup);
  if (name === 'linear') return Math.max(0, (total - step) / Math.max(1, total - warmup));
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
}
