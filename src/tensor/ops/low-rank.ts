/**
 * The two products of a low-rank branch (LoRA, Hu et al. 2021, eq. 3: ΔW·x = B·A·x), with the
 * rank-sized intermediate kept TRANSPOSED, [r, rows]: the GEMM then has the rank r (8–64) on its
 * row side and the token count on its column side, where the kernels' register tiles (MR × NR =
 * 14 × 32 / 6 × 16) waste little, instead of padding an r = 8 output to 32 columns (the plain
 * x·Aᵀ [rows, 8]). Several A matrices reading the same input x stack into one GEMM
 * ([A₁; A₂; …]·xᵀ, e.g. LoRA on q/k/v), and each B product reads its row block of the result in place.
 *
 *   down:  T = [A₁; …; Aₙ] · xᵀ            x [rows, in], Aᵢ [rᵢ, in], T [Σ rᵢ, rows]
 *   up:    y (+)= s · T[o : o + r]ᵀ · Bᵀ     B [out, r], y [rows, out]
 *
 * Values equal `linear(linear(x, A), B)` (times s) up to float rounding (sums over the same index,
 * possibly in another order).
 */
import { native } from '../../native/index.js';
import { gradOf, record } from '../autograd.js';
import { allocF32, releaseF32 } from '../pool.js';
import { Tensor } from '../tensor.js';

/**
 * T [Σ rᵢ, rows] = [A₁; …; Aₙ] · xᵀ (ONE GEMM; Aᵢ's block is rows [Σ_{j<i} r_j, Σ_{j≤i} r_j)).
 * x: [..., in] (rows = product of the leading dims); Aᵢ: float32 [rᵢ, in]. The A matrices are
 * copied into one stacked matrix per call (their current values; backward multiplies with this copy).
 * Backward: dx += dTᵀ · A_stack and dA_stack = dT · x (one GEMM each; row blocks go to each dAᵢ).
 * @throws Error when an A is not 2-D or its width differs from x's features.
 */
export function lowRankDown(x: Tensor, As: Tensor[]): Tensor {
  const M = x.rows, K = x.cols;
  let R = 0;
  for (const a of As) {
    if (a.shape.length !== 2 || a.shape[1] !== K) throw new Error(`lowRankDown: A [${a.shape}] does not take ${K} input features`);
    R += a.shape[0];
  }
  let stack = As[0].data;
  if (As.length > 1) {
    stack = allocF32(R * K);
    let o = 0;
    for (const a of As) {
      stack.set(a.data, o);
      o += a.size;
    }
  }
  const t = Tensor.empty([R, M]);
  native.gemm(false, true, R, M, K, 1, stack, K, x.data, K, 0, t.data, M);
  return record(t, [x, ...As], (gt) => {
    if (x.requiresGrad) native.gemm(true, false, M, K, R, 1, gt, M, stack, K, 1, gradOf(x), K);
    if (!As.some((a) => a.requiresGrad)) return;
    if (As.length === 1) {
      native.gemm(false, false, R, K, M, 1, gt, M, x.data, K, 1, gradOf(As[0]), K);
      return;
    }
    const dA = allocF32(R * K);
    native.gemm(false, false, R, K, M, 1, gt, M, x.data, K, 0, dA, K);
    let o = 0;
    for (const a of As) {
      if (a.requiresGrad) native.axpy(1, dA.subarray(o, o + a.size), gradOf(a));
      o += a.size;
    }
    releaseF32(dA);
  });
}

/**
 * y += s · T[o : o + r]ᵀ · Bᵀ in place (y's value is read by no backward, as for LoRA's branch
 * added to the base output), or, when y is null, a new [rows, out] tensor s · T[o : o + r]ᵀ · Bᵀ.
 * t: [R, rows] from {@link lowRankDown}; B: float32 [out, r]. Returns y (or the new tensor).
 * Backward: dT[o : o + r] += s · B ᵀ· dyᵀ, dB += s · (T[o : o + r] · dy)ᵀ.
 * @throws Error on mismatched shapes.
 */
export function lowRankUp(y: Tensor | null, t: Tensor, o: number, B: Tensor, s: number): Tensor {
  const M = t.cols, N = B.shape[0], r = B.shape[1];
  if (B.shape.length !== 2 || o < 0 || o + r > t.rows) throw new Error(`lowRankUp: B [${B.shape}] at rank rows [${o}, ${o + r}) of a [${t.shape}] product`);
  if (y && (y.rows !== M || y.cols !== N)) throw new Error(`lowRankUp: output is [${y.shape}], expected [${M}, ${N}]`);
  const out = y ?? Tensor.empty([M, N]);
  const ti = t.data.subarray(o * M, (o + r) * M);
  native.gemm(true, true, M, N, r, s, ti, M, B.data, r, y ? 1 : 0, out.data, N);
  return record(out, [t, B, y], (gy) => {
    if (t.requiresGrad) {
      // dT[o : o + r] += s · (dy · B)ᵀ: dy·B [rows, r] takes the GEMM's narrow-N path (rows on the tile's M side)
      const g = allocF32(M * r);
      native.gemm(false, false, M, r, N, s, gy, N, B.data, r, 0, g, r);
      const dt = gradOf(t);
      for (let j = 0; j < r; j++) {
        const row = (o + j) * M;
        for (let m = 0; m < M; m++) dt[row + m] += g[m * r + j];
      }
      releaseF32(g);
    }
    if (B.requiresGrad) {
      // dBᵀ [r, N] = s · T_i · dy (rank on the GEMM's row side), then added transposed
      const dBt = allocF32(r * N);
      native.gemm(false, false, r, N, M, s, ti, M, gy, N, 0, dBt, N);
      const dB = gradOf(B);
      for (let j = 0; j < r; j++) for (let n = 0; n < N; n++) dB[n * r + j] += dBt[j * N + n];
      releaseF32(dBt);
    }
  });
}
