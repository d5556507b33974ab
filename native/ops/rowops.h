// Vectorised row kernels (softmax pieces) written with GCC/Clang vector extensions, so the same
// source compiles to SSE2/NEON in rowops_generic.cc and to AVX2+FMA in rowops_avx2.cc; rowops.cc
// picks one at run time. Include only from those two files, inside their namespace.
//
// exp: Cephes expf range reduction x = n·ln2 + r, |r| <= ln2/2, degree-6 polynomial
// (max relative error ~2e-7 for x in [-87, 0]); inputs below -87, -inf included, give exactly 0.
//
// NaN propagates as in torch: a NaN anywhere in a row makes its max NaN, exp(NaN) is NaN, so the
// whole softmax row (and the attention output / loss built from it) is NaN — never a silent 0.

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load8(const float* p) {
  v8f v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
static inline void store8(float* p, v8f v) { __builtin_memcpy(p, &v, sizeof v); }
static inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

static inline v8f exp8_nonpos(v8f x) {
  const v8f lo = splat(-87.0f);
  v8i keep = x >= lo;
  v8f xc = keep ? x : lo;
  const v8f magic = splat(12582912.0f);  // 1.5·2^23: round to nearest integer
  v8f n = (xc * 1.44269504088896341f + magic) - magic;
  v8f r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v8f p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;
  __builtin_memcpy(&scale, &bits, sizeof scale);
  v8f e = p * scale;
  v8f out = keep ? e : splat(0.0f);
  return x != x ? x : out;  // NaN in, NaN out
}

static inline float exp1_nonpos(float x) {
  v8f v = splat(x);
  return exp8_nonpos(v)[0];
}

static inline float hsum8(v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

// max of row[0..n) (-inf for n == 0); NaN when any element is NaN (a NaN is taken because
// x != x, and once in the accumulator it stays: nothing compares greater than NaN)
static inline float row_max_impl(const float* row, int64_t n) {
  const float ninf = -__builtin_inff();
  v8f m = splat(ninf);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8f x = load8(row + j);
    m = ((x > m) | (x != x)) ? x : m;
  }
  float s = ninf;
  for (int l = 0; l < 8; ++l) s = (m[l] > s || m[l] != m[l]) ? m[l] : s;
  for (; j < n; ++j) s = (row[j] > s || row[j] != row[j]) ? row[j] : s;
  return s;
}

// row[j] = exp(row[j] - sub) (arguments <= 0); returns the sum
static inline float row_exp_sub_sum_impl(float* row, int64_t n, float sub) {
  v8f acc = splat(0.0f);
  const v8f vs = splat(sub);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    v8f e = exp8_nonpos(load8(row + j) - vs);
    store8(row + j, e);
    acc += e;
  }
  float s = hsum8(acc);
  for (; j < n; ++j) {
    float e = exp1_nonpos(row[j] - sub);
    row[j] = e;
    s += e;
  }
  return s;
}

// sum_j exp(row[j] - sub) without writing
static inline float row_sum_exp_sub_impl(const float* row, int64_t n, float sub) {
  v8f acc = splat(0.0f);
  const v8f vs = splat(sub);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc += exp8_nonpos(load8(row + j) - vs);
  float s = hsum8(acc);
  for (; j < n; ++j) s += exp1_nonpos(row[j] - sub);
  return s;
}

// out[j] = exp(row[j] - sub) * mul
static inline void row_exp_scale_impl(const float* row, float* out, int64_t n, float sub, float mul) {
  const v8f vs = splat(sub), vm = splat(mul);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(out + j, exp8_nonpos(load8(row + j) - vs) * vm);
  for (; j < n; ++j) out[j] = exp1_nonpos(row[j] - sub) * mul;
}

// row[j] *= mul
static inline void row_scale_impl(float* row, int64_t n, float mul) {
  const v8f vm = splat(mul);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(row + j, load8(row + j) * vm);
  for (; j < n; ++j) row[j] *= mul;
}

static const RowOps kRowOps = {row_max_impl, row_exp_sub_sum_impl, row_sum_exp_sub_impl, row_exp_scale_impl, row_scale_impl};
