// AVX-512 register kernels for attention with head_dim 64 (one head row = four zmm vectors): the
// five products of an attention block — S = Q·Kᵀ and dP = dO·Vᵀ (against a transposed K/V panel),
// O = P·V and dQ += dS·K, dV += Pᵀ·dO and dK += dSᵀ·Q — computed straight from the row-major
// activations without the general GEMM's packing (the blocks are 64 × kend × 64: packing cost as
// much as the products). Every function carries its own target attribute, so the file builds
// with baseline x86-64 flags; attention.cc calls it only when kernel_level() == Avx512.
#if defined(__x86_64__)
#include "attention_kernels.h"

#include <immintrin.h>
// GCC 12 flags _mm512_undefined_* inside the intrinsics headers under target attributes (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define PEFT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace peft {
namespace attn_avx512 {
namespace {

constexpr int D = 64;

PEFT_AVX512 inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : left <= 0 ? static_cast<__mmask16>(0)
                                                                  : static_cast<__mmask16>((1u << left) - 1);
}

// exp(x) for x <= ~0 (Cephes range reduction and polynomial as rowops.h; scalef applies 2^n):
// below -87 (and -inf) exactly 0, NaN stays NaN
PEFT_AVX512 inline __m512 exp_nonpos(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  const __m512 xc = _mm512_max_ps(x, lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 e = _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
  return _mm512_mask_mov_ps(e, nan, x);
}

// What abt writes for visible entries (key j <= diag + r); invisible ones (and columns past the
// NV computed vectors) get 0.
enum class Out { Scale, ExpLse, DScore };

// C[MR × ncols] (ncols <= 64, masked tail) = epilogue(alpha · A[MR × 64] · Bt[64 × NV·16 of ncols]):
// Scale: alpha·acc; ExpLse: exp(alpha·acc − lse[r]) (0 when lse[r] = -inf); DScore: P[r, j]·(acc − di[r]).
template <int MR, int NV, Out O>
PEFT_AVX512 inline void abt_tile(int64_t ncols, int64_t vis0, float alpha, const float* A, int64_t lda,
                                 const float* Bt, int64_t ldb, float* C, int64_t ldc, const float* lse,
                                 const float* P, int64_t ldp, const float* di) {
  __mmask16 lm[4];
#pragma GCC unroll 4
  for (int v = 0; v < 4; ++v) lm[v] = tail_mask(ncols - 16 * v);
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const float* b = Bt + d * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = _mm512_maskz_loadu_ps(lm[v], b + 16 * v);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + d]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, bv[v], acc[r][v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
    const int64_t vis = vis0 + r < ncols ? vis0 + r : ncols;  // visible columns of this row
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 x;
      if (O == Out::Scale) {
        x = _mm512_mul_ps(acc[r][v], va);
      } else if (O == Out::ExpLse) {
        x = lse[r] == -__builtin_inff() ? _mm512_setzero_ps()
                                        : exp_nonpos(_mm512_fmsub_ps(acc[r][v], va, _mm512_set1_ps(lse[r])));
      } else {
        x = _mm512_mul_ps(_mm512_maskz_loadu_ps(lm[v], P + r * ldp + 16 * v),
                          _mm512_sub_ps(acc[r][v], _mm512_set1_ps(di[r])));
      }
      _mm512_mask_storeu_ps(c + 16 * v, lm[v], _mm512_maskz_mov_ps(tail_mask(vis - 16 * v), x));
    }
#pragma GCC unroll 4
    for (int v = NV; v < 4; ++v) _mm512_mask_storeu_ps(c + 16 * v, lm[v], _mm512_setzero_ps());
  }
}

// one row tile of MR rows over the 64-column chunk: as many vectors as the last row can see
template <int MR, Out O>
PEFT_AVX512 inline void abt_rows(int64_t ncols, int64_t vis0, float alpha, const float* A, int64_t lda,
                                 const float* Bt, int64_t ldb, float* C, int64_t ldc, const float* lse,
                                 const float* P, int64_t ldp, const float* di) {
  int64_t need = vis0 + MR - 1 < ncols ? vis0 + MR - 1 : ncols;  // columns the tile's last row sees
  switch (need <= 0 ? 0 : (need + 15) / 16) {
    case 0:  // nothing visible in this chunk
      for (int r = 0; r < MR; ++r)
        for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(C + r * ldc + 16 * v, tail_mask(ncols - 16 * v), _mm512_setzero_ps());
      break;
    case 1: abt_tile<MR, 1, O>(ncols, vis0, alpha, A, lda, Bt, ldb, C, ldc, lse, P, ldp, di); break;
    case 2: abt_tile<MR, 2, O>(ncols, vis0, alpha, A, lda, Bt, ldb, C, ldc, lse, P, ldp, di); break;
    case 3: abt_tile<MR, 3, O>(ncols, vis0, alpha, A, lda, Bt, ldb, C, ldc, lse, P, ldp, di); break;
    default: abt_tile<MR, 4, O>(ncols, vis0, alpha, A, lda, Bt, ldb, C, ldc, lse, P, ldp, di); break;
  }
}

// C[MR × 64] = beta · C + alpha · A[MR × n] · B[n × 64]
template <int MR>
PEFT_AVX512 inline void ab_tile(int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                                float beta, float* C, int64_t ldc) {
  __m512 acc[MR][4];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; ++j) {
    const float* b = B + j * ldb;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32),
                 b3 = _mm512_loadu_ps(b + 48);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + j]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* c = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      __m512 x = _mm512_mul_ps(acc[r][v], va);
      if (beta != 0.f) x = _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(c + 16 * v), x);
      _mm512_storeu_ps(c + 16 * v, x);
    }
  }
}

// C[MJ × 64] += alpha · Σ_r A[r, j0 + jj] · B[r, :] for jj < MJ (A's columns j0.. given as A)
template <int MJ>
PEFT_AVX512 inline void atb_tile(int64_t rows, float alpha, const float* A, int64_t lda, const float* B,
                                 int64_t ldb, float* C, int64_t ldc) {
  __m512 acc[MJ][4];
#pragma GCC unroll 8
  for (int j = 0; j < MJ; ++j)
    for (int v = 0; v < 4; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int64_t r = 0; r < rows; ++r) {
    const float* b = B + r * ldb;
    const float* a = A + r * lda;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32),
                 b3 = _mm512_loadu_ps(b + 48);
#pragma GCC unroll 8
    for (int j = 0; j < MJ; ++j) {
      const __m512 x = _mm512_set1_ps(a[j]);
      acc[j][0] = _mm512_fmadd_ps(x, b0, acc[j][0]);
      acc[j][1] = _mm512_fmadd_ps(x, b1, acc[j][1]);
      acc[j][2] = _mm512_fmadd_ps(x, b2, acc[j][2]);
      acc[j][3] = _mm512_fmadd_ps(x, b3, acc[j][3]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int j = 0; j < MJ; ++j) {
    float* c = C + j * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(c + 16 * v, _mm512_fmadd_ps(acc[j][v], va, _mm512_loadu_ps(c + 16 * v)));
  }
}

constexpr int MR = 6;  // 6 × 4 = 24 accumulators, 4 B vectors, 1 broadcast: 29 of 32 zmm

}  // namespace

template <Out O>
PEFT_AVX512 void abt_any(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt,
                         int64_t ldb, float* C, int64_t ldc, int64_t diag, const float* lse, const float* P,
                         const float* di) {
  for (int64_t j0 = 0; j0 < n; j0 += 64) {
    const int64_t nc = n - j0 < 64 ? n - j0 : 64;
    const float* bt = Bt + j0;
    // row r sees columns j < diag + r + 1 - j0 of this chunk
    const int64_t vis_base = diag + 1 - j0;
    const float* pp = P ? P + j0 : nullptr;
    int64_t r = 0;
    for (; r + MR <= rows; r += MR)
      abt_rows<MR, O>(nc, vis_base + r, alpha, A + r * lda, lda, bt, ldb, C + r * ldc + j0, ldc, lse ? lse + r : nullptr,
                      pp ? pp + r * ldc : nullptr, ldc, di ? di + r : nullptr);
    const float* a = A + r * lda;
    float* c = C + r * ldc + j0;
    const float* l = lse ? lse + r : nullptr;
    const float* p = pp ? pp + r * ldc : nullptr;
    const float* dd = di ? di + r : nullptr;
    const int64_t vb = vis_base + r;
    switch (rows - r) {
      case 5: abt_rows<5, O>(nc, vb, alpha, a, lda, bt, ldb, c, ldc, l, p, ldc, dd); break;
      case 4: abt_rows<4, O>(nc, vb, alpha, a, lda, bt, ldb, c, ldc, l, p, ldc, dd); break;
      case 3: abt_rows<3, O>(nc, vb, alpha, a, lda, bt, ldb, c, ldc, l, p, ldc, dd); break;
      case 2: abt_rows<2, O>(nc, vb, alpha, a, lda, bt, ldb, c, ldc, l, p, ldc, dd); break;
      case 1: abt_rows<1, O>(nc, vb, alpha, a, lda, bt, ldb, c, ldc, l, p, ldc, dd); break;
      default: break;
    }
  }
}

PEFT_AVX512 void abt(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb,
                     float* C, int64_t ldc, int64_t diag) {
  abt_any<Out::Scale>(rows, n, alpha, A, lda, Bt, ldb, C, ldc, diag, nullptr, nullptr, nullptr);
}

PEFT_AVX512 void abt_exp(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt,
                         int64_t ldb, float* C, int64_t ldc, int64_t diag, const float* lse) {
  abt_any<Out::ExpLse>(rows, n, alpha, A, lda, Bt, ldb, C, ldc, diag, lse, nullptr, nullptr);
}

PEFT_AVX512 void abt_dscore(int64_t rows, int64_t n, const float* A, int64_t lda, const float* Bt, int64_t ldb,
                            float* C, int64_t ldc, int64_t diag, const float* P, const float* di) {
  abt_any<Out::DScore>(rows, n, 1.f, A, lda, Bt, ldb, C, ldc, diag, nullptr, P, di);
}

PEFT_AVX512 void ab(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float beta, float* C, int64_t ldc, int64_t diag) {
  // row r of A is zero past column diag + r: a tile needs columns < diag + (last row) + 1
  auto cols = [&](int64_t r_last) { int64_t c = diag + r_last + 1; return c < 0 ? 0 : c < n ? c : n; };
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) ab_tile<MR>(cols(r + MR - 1), alpha, A + r * lda, lda, B, ldb, beta, C + r * ldc, ldc);
  const float* a = A + r * lda;
  float* c = C + r * ldc;
  const int64_t nn = cols(rows - 1);
  switch (rows - r) {
    case 5: ab_tile<5>(nn, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 4: ab_tile<4>(nn, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 3: ab_tile<3>(nn, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 2: ab_tile<2>(nn, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 1: ab_tile<1>(nn, alpha, a, lda, B, ldb, beta, c, ldc); break;
    default: break;
  }
}

PEFT_AVX512 void atb(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc, int64_t diag) {
  // column j of A is zero in rows r < j - diag: a key tile starting at j needs rows from j - diag
  auto first = [&](int64_t j) { int64_t r = j - diag; return r < 0 ? 0 : r < rows ? r : rows; };
  int64_t j = 0;
  for (; j + MR <= n; j += MR) {
    const int64_t r0 = first(j);
    atb_tile<MR>(rows - r0, alpha, A + r0 * lda + j, lda, B + r0 * ldb, ldb, C + j * ldc, ldc);
  }
  const int64_t r0 = first(j);
  const float* a = A + r0 * lda + j;
  const float* b = B + r0 * ldb;
  float* c = C + j * ldc;
  switch (n - j) {
    case 5: atb_tile<5>(rows - r0, alpha, a, lda, b, ldb, c, ldc); break;
    case 4: atb_tile<4>(rows - r0, alpha, a, lda, b, ldb, c, ldc); break;
    case 3: atb_tile<3>(rows - r0, alpha, a, lda, b, ldb, c, ldc); break;
    case 2: atb_tile<2>(rows - r0, alpha, a, lda, b, ldb, c, ldc); break;
    case 1: atb_tile<1>(rows - r0, alpha, a, lda, b, ldb, c, ldc); break;
    default: break;
  }
}

}  // namespace attn_avx512
}  // namespace peft
#endif
