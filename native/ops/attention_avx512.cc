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

// C[MR × ncols] = alpha · A[MR × 64] · Bt[64 × ncols], ncols <= 64 (masked tail)
template <int MR>
PEFT_AVX512 inline void abt_tile(int64_t ncols, float alpha, const float* A, int64_t lda, const float* Bt,
                                 int64_t ldb, float* C, int64_t ldc) {
  const __mmask16 m0 = tail_mask(ncols), m1 = tail_mask(ncols - 16), m2 = tail_mask(ncols - 32),
                  m3 = tail_mask(ncols - 48);
  __m512 acc[MR][4];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int d = 0; d < D; ++d) {
    const float* b = Bt + d * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16),
                 b2 = _mm512_maskz_loadu_ps(m2, b + 32), b3 = _mm512_maskz_loadu_ps(m3, b + 48);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + d]);
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
    _mm512_mask_storeu_ps(c, m0, _mm512_mul_ps(acc[r][0], va));
    _mm512_mask_storeu_ps(c + 16, m1, _mm512_mul_ps(acc[r][1], va));
    _mm512_mask_storeu_ps(c + 32, m2, _mm512_mul_ps(acc[r][2], va));
    _mm512_mask_storeu_ps(c + 48, m3, _mm512_mul_ps(acc[r][3], va));
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

PEFT_AVX512 void abt(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb,
                     float* C, int64_t ldc) {
  for (int64_t j0 = 0; j0 < n; j0 += 64) {
    const int64_t nc = n - j0 < 64 ? n - j0 : 64;
    int64_t r = 0;
    for (; r + MR <= rows; r += MR) abt_tile<MR>(nc, alpha, A + r * lda, lda, Bt + j0, ldb, C + r * ldc + j0, ldc);
    const float* a = A + r * lda;
    float* c = C + r * ldc + j0;
    switch (rows - r) {
      case 5: abt_tile<5>(nc, alpha, a, lda, Bt + j0, ldb, c, ldc); break;
      case 4: abt_tile<4>(nc, alpha, a, lda, Bt + j0, ldb, c, ldc); break;
      case 3: abt_tile<3>(nc, alpha, a, lda, Bt + j0, ldb, c, ldc); break;
      case 2: abt_tile<2>(nc, alpha, a, lda, Bt + j0, ldb, c, ldc); break;
      case 1: abt_tile<1>(nc, alpha, a, lda, Bt + j0, ldb, c, ldc); break;
      default: break;
    }
  }
}

PEFT_AVX512 void ab(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                    float beta, float* C, int64_t ldc) {
  int64_t r = 0;
  for (; r + MR <= rows; r += MR) ab_tile<MR>(n, alpha, A + r * lda, lda, B, ldb, beta, C + r * ldc, ldc);
  const float* a = A + r * lda;
  float* c = C + r * ldc;
  switch (rows - r) {
    case 5: ab_tile<5>(n, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 4: ab_tile<4>(n, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 3: ab_tile<3>(n, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 2: ab_tile<2>(n, alpha, a, lda, B, ldb, beta, c, ldc); break;
    case 1: ab_tile<1>(n, alpha, a, lda, B, ldb, beta, c, ldc); break;
    default: break;
  }
}

PEFT_AVX512 void atb(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                     float* C, int64_t ldc) {
  int64_t j = 0;
  for (; j + MR <= n; j += MR) atb_tile<MR>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc);
  switch (n - j) {
    case 5: atb_tile<5>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc); break;
    case 4: atb_tile<4>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc); break;
    case 3: atb_tile<3>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc); break;
    case 2: atb_tile<2>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc); break;
    case 1: atb_tile<1>(rows, alpha, A + j, lda, B, ldb, C + j * ldc, ldc); break;
    default: break;
  }
}

}  // namespace attn_avx512
}  // namespace peft
#endif
