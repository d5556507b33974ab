// Vectorised row kernels written with GCC/Clang vector extensions of ROWOPS_VW floats, so one
// source builds the portable table (rowops_generic.cc: 8 lanes, SSE2/NEON), the AVX2+FMA one
// (rowops_avx2.cc: 8 lanes, ymm) and the AVX-512 one (rowops_avx512.cc: 16 lanes, zmm); rowops.cc
// picks one at run time. Include only from those files, inside their namespace, after defining
// ROWOPS_VW and ROWOPS_NAME.
//
// exp: Cephes expf range reduction x = n·ln2 + r, |r| <= ln2/2, degree-6 polynomial
// (max relative error ~2e-7 for x in [-87, 0]); inputs below -87, -inf included, give exactly 0.
// sigmoid(x) = 1/(1+e) for x >= 0 and e/(1+e) for x < 0 with e = exp(-|x|), so the exponential
// only sees non-positive arguments (no overflow).
//
// NaN propagates as in torch: a NaN anywhere in a row makes its max NaN, exp(NaN) is NaN, so the
// whole softmax row (and the attention output / loss built from it) is NaN — never a silent 0;
// sigmoid/SiLU/SwiGLU of NaN are NaN.
//
// Reductions (softmax sums, RMSNorm's mean square and dot) run in float32 over ROWOPS_VW lanes
// and are summed pairwise, as torch's vectorised CPU reductions do.

typedef float vf __attribute__((vector_size(4 * ROWOPS_VW)));
typedef int32_t vi __attribute__((vector_size(4 * ROWOPS_VW)));
constexpr int64_t VW = ROWOPS_VW;

static inline vf loadv(const float* p) {
  vf v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
static inline void storev(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return vf{} + x; }
// m ? a : b lane by lane (m from a comparison: all ones or zero), as bit operations: GCC 12
// scalarises the vector `?:` when the vector is wider than the target's registers (the generic
// 8-lane build on SSE2); AVX2/AVX-512 builds still get one blend.
static inline vf sel(vi m, vf a, vf b) {
  vi ai, bi;
  __builtin_memcpy(&ai, &a, sizeof a);
  __builtin_memcpy(&bi, &b, sizeof b);
  vi r = (ai & m) | (bi & ~m);
  vf out;
  __builtin_memcpy(&out, &r, sizeof out);
  return out;
}

static inline vf exp_nonpos(vf x) {
  const vf lo = splat(-87.0f);
  vi keep = x >= lo;
  vf xc = sel(keep, x, lo);
  const vf magic = splat(12582912.0f);  // 1.5·2^23: round to nearest integer
  vf n = (xc * 1.44269504088896341f + magic) - magic;
  vf r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  vf e = p * scale;
  vf out = sel(keep, e, splat(0.0f));
  return sel(x != x, x, out);  // NaN in, NaN out
}

static inline float exp1_nonpos(float x) { return exp_nonpos(splat(x))[0]; }

static inline vf sigmoid_v(vf x) {
  const vf zero = splat(0.f);
  vf e = exp_nonpos(sel(x < zero, x, -x));
  vf r = 1.0f / (1.0f + e);
  return sel(x >= zero, r, e * r);  // NaN: the comparison is false and e is NaN
}
static inline float sigmoid1(float x) { return sigmoid_v(splat(x))[0]; }

static inline float hsum(vf v) {
  float t[VW];
  __builtin_memcpy(t, &v, sizeof v);
  for (int64_t w = VW / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) t[l] += t[l + w];
  return t[0];
}

// max of row[0..n) (-inf for n == 0); NaN when any element is NaN (a NaN is taken because
// x != x, and once in the accumulator it stays: nothing compares greater than NaN)
static inline float row_max_impl(const float* row, int64_t n) {
  const float ninf = -__builtin_inff();
  vf m = splat(ninf);
  int64_t j = 0;
  for (; j + VW <= n; j += VW) {
    vf x = loadv(row + j);
    m = sel((x > m) | (x != x), x, m);
  }
  float s = ninf;
  for (int64_t l = 0; l < VW; ++l) s = (m[l] > s || m[l] != m[l]) ? m[l] : s;
  for (; j < n; ++j) s = (row[j] > s || row[j] != row[j]) ? row[j] : s;
  return s;
}

// row[j] = exp(row[j] - sub) (arguments <= 0); returns the sum
static inline float row_exp_sub_sum_impl(float* row, int64_t n, float sub) {
  vf acc = splat(0.0f);
  const vf vs = splat(sub);
  int64_t j = 0;
  for (; j + VW <= n; j += VW) {
    vf e = exp_nonpos(loadv(row + j) - vs);
    storev(row + j, e);
    acc += e;
  }
  float s = hsum(acc);
  for (; j < n; ++j) {
    float e = exp1_nonpos(row[j] - sub);
    row[j] = e;
    s += e;
  }
  return s;
}

// sum_j exp(row[j] - sub) without writing
static inline float row_sum_exp_sub_impl(const float* row, int64_t n, float sub) {
  vf acc = splat(0.0f);
  const vf vs = splat(sub);
  int64_t j = 0;
  for (; j + VW <= n; j += VW) acc += exp_nonpos(loadv(row + j) - vs);
  float s = hsum(acc);
  for (; j < n; ++j) s += exp1_nonpos(row[j] - sub);
  return s;
}

// out[j] = exp(row[j] - sub) * mul
static inline void row_exp_scale_impl(const float* row, float* out, int64_t n, float sub, float mul) {
  const vf vs = splat(sub), vm = splat(mul);
  int64_t j = 0;
  for (; j + VW <= n; j += VW) storev(out + j, exp_nonpos(loadv(row + j) - vs) * vm);
  for (; j < n; ++j) out[j] = exp1_nonpos(row[j] - sub) * mul;
}

// row[j] *= mul
static inline void row_scale_impl(float* row, int64_t n, float mul) {
  const vf vm = splat(mul);
  int64_t j = 0;
  for (; j + VW <= n; j += VW) storev(row + j, loadv(row + j) * vm);
  for (; j < n; ++j) row[j] *= mul;
}

static void swiglu_fwd_impl(const float* g, const float* u, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    vf gv = loadv(g + i);
    storev(y + i, gv * sigmoid_v(gv) * loadv(u + i));
  }
  for (; i < n; ++i) y[i] = g[i] * sigmoid1(g[i]) * u[i];
}

static void swiglu_bwd_impl(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n) {
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    vf gv = loadv(g + i), dyv = loadv(dy + i);
    vf s = sigmoid_v(gv);
    if (du) storev(du + i, loadv(du + i) + dyv * (gv * s));
    if (dg) storev(dg + i, loadv(dg + i) + dyv * loadv(u + i) * s * (1.f + gv * (1.f - s)));
  }
  for (; i < n; ++i) {
    float s = sigmoid1(g[i]);
    if (du) du[i] += dy[i] * (g[i] * s);
    if (dg) dg[i] += dy[i] * u[i] * s * (1.f + g[i] * (1.f - s));
  }
}

static float rmsnorm_fwd_row_impl(const float* x, const float* w, int64_t D, float eps, float* y) {
  vf a0 = splat(0.f), a1 = splat(0.f);
  int64_t d = 0;
  for (; d + 2 * VW <= D; d += 2 * VW) {
    vf x0 = loadv(x + d), x1 = loadv(x + d + VW);
    a0 += x0 * x0;
    a1 += x1 * x1;
  }
  for (; d + VW <= D; d += VW) {
    vf x0 = loadv(x + d);
    a0 += x0 * x0;
  }
  float ss = hsum(a0 + a1);
  for (; d < D; ++d) ss += x[d] * x[d];
  float rs = 1.0f / __builtin_sqrtf(ss / static_cast<float>(D) + eps);
  const vf vr = splat(rs);
  d = 0;
  for (; d + VW <= D; d += VW) storev(y + d, loadv(w + d) * (loadv(x + d) * vr));
  for (; d < D; ++d) y[d] = w[d] * (x[d] * rs);
  return rs;
}

static void rmsnorm_bwd_row_impl(const float* dy, const float* x, const float* w, float rs, int64_t D, float* dx) {
  vf a0 = splat(0.f);
  int64_t d = 0;
  for (; d + VW <= D; d += VW) a0 += loadv(dy + d) * loadv(w + d) * loadv(x + d);
  float dot = hsum(a0);
  for (; d < D; ++d) dot += dy[d] * w[d] * x[d];
  const float c = (dot / static_cast<float>(D)) * rs * rs;
  const vf vr = splat(rs), vc = splat(c);
  d = 0;
  for (; d + VW <= D; d += VW)
    storev(dx + d, loadv(dx + d) + vr * (loadv(dy + d) * loadv(w + d) - loadv(x + d) * vc));
  for (; d < D; ++d) dx[d] += rs * (dy[d] * w[d] - x[d] * c);
}

static void rope_row_impl(const float* x, float* y, int64_t H, int64_t D, const float* c, const float* s, float sign,
                          bool accumulate) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < H; ++h) {
    const float* xh = x + h * D;
    float* yh = y + h * D;
    int64_t i = 0;
    for (; i + VW <= half; i += VW) {
      vf x1 = loadv(xh + i), x2 = loadv(xh + i + half), cv = loadv(c + i), sv = loadv(s + i) * sign;
      vf a = x1 * cv - x2 * sv, b = x2 * cv + x1 * sv;
      if (accumulate) {
        a += loadv(yh + i);
        b += loadv(yh + i + half);
      }
      storev(yh + i, a);
      storev(yh + i + half, b);
    }
    for (; i < half; ++i) {
      float x1 = xh[i], x2 = xh[i + half], si = sign * s[i];
      float a = x1 * c[i] - x2 * si, b = x2 * c[i] + x1 * si;
      if (accumulate) {
        yh[i] += a;
        yh[i + half] += b;
      } else {
        yh[i] = a;
        yh[i + half] = b;
      }
    }
  }
}

// The plain loop; the compiler vectorises it for the build's target (sqrt has no vector-extension
// form). Same operation order as torch.optim.AdamW's single-tensor path.
static void adamw_impl(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                       int64_t n, float step_size, float bc2_sqrt, float decay, float beta2, float w1, float w2,
                       float eps, bool decay_on) {
  for (int64_t i = 0; i < n; ++i) {
    float gi = g[i];
    float pi = decay_on ? p[i] * decay : p[i];
    float mi = m[i] + w1 * (gi - m[i]);  // torch lerp_ with weight < 0.5
    float vi2 = v[i] * beta2 + w2 * gi * gi;
    float denom = __builtin_sqrtf(vi2) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi2;
    p[i] = pi - step_size * (mi / denom);
  }
}

static const RowOps kRowOps = {ROWOPS_NAME,           row_max_impl,          row_exp_sub_sum_impl, row_sum_exp_sub_impl,
                               row_exp_scale_impl,    row_scale_impl,        swiglu_fwd_impl,      swiglu_bwd_impl,
                               rmsnorm_fwd_row_impl,  rmsnorm_bwd_row_impl,  rope_row_impl,        adamw_impl};
