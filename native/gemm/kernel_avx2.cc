// AVX2 + FMA 6x16 micro-kernel: 12 ymm accumulators, two B vectors and one A broadcast per row.
// Compiled with a target attribute so the rest of the addon stays baseline x86-64; gemm.cc picks
// it at run time only when the CPU reports AVX2 and FMA.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "kernels.h"

namespace peft {

__attribute__((target("avx2,fma"))) void micro_kernel_avx2(int64_t kc, const float* a,
                                                             const float* b, float* c, int64_t ldc,
                                                             float alpha, float beta, int m, int n) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  // the C tile is read/written after the loop: start fetching it now
  for (int i = 0; i < GEMM_MR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + GEMM_NR - 1), _MM_HINT_T0);
  }
#define PEFT_STEP(off)                                                        \
  {                                                                           \
    __m256 b0 = _mm256_load_ps(b + (off) * GEMM_NR);                          \
    __m256 b1 = _mm256_load_ps(b + (off) * GEMM_NR + 8);                      \
    const float* ak = a + (off) * GEMM_MR;                                    \
    __m256 av = _mm256_broadcast_ss(ak + 0);                                  \
    c00 = _mm256_fmadd_ps(av, b0, c00);                                       \
    c01 = _mm256_fmadd_ps(av, b1, c01);                                       \
    av = _mm256_broadcast_ss(ak + 1);                                         \
    c10 = _mm256_fmadd_ps(av, b0, c10);                                       \
    c11 = _mm256_fmadd_ps(av, b1, c11);                                       \
    av = _mm256_broadcast_ss(ak + 2);                                         \
    c20 = _mm256_fmadd_ps(av, b0, c20);                                       \
    c21 = _mm256_fmadd_ps(av, b1, c21);                                       \
    av = _mm256_broadcast_ss(ak + 3);                                         \
    c30 = _mm256_fmadd_ps(av, b0, c30);                                       \
    c31 = _mm256_fmadd_ps(av, b1, c31);                                       \
    av = _mm256_broadcast_ss(ak + 4);                                         \
    c40 = _mm256_fmadd_ps(av, b0, c40);                                       \
    c41 = _mm256_fmadd_ps(av, b1, c41);                                       \
    av = _mm256_broadcast_ss(ak + 5);                                         \
    c50 = _mm256_fmadd_ps(av, b0, c50);                                       \
    c51 = _mm256_fmadd_ps(av, b1, c51);                                       \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 8 * GEMM_MR * 4), _MM_HINT_T0);
    PEFT_STEP(0)
    PEFT_STEP(1)
    PEFT_STEP(2)
    PEFT_STEP(3)
    a += 4 * GEMM_MR;
    b += 4 * GEMM_NR;
  }
  for (; k < kc; ++k) {
    PEFT_STEP(0)
    a += GEMM_MR;
    b += GEMM_NR;
  }
#undef PEFT_STEP
  if (m == GEMM_MR && n == GEMM_NR) {
    const __m256 va = _mm256_set1_ps(alpha);
    __m256 rows[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
    if (beta == 0.f) {
      for (int i = 0; i < GEMM_MR; ++i) {
        _mm256_storeu_ps(c + i * ldc, _mm256_mul_ps(va, rows[2 * i]));
        _mm256_storeu_ps(c + i * ldc + 8, _mm256_mul_ps(va, rows[2 * i + 1]));
      }
    } else {
      const __m256 vb = _mm256_set1_ps(beta);
      for (int i = 0; i < GEMM_MR; ++i) {
        float* ci = c + i * ldc;
        _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, rows[2 * i], _mm256_mul_ps(vb, _mm256_loadu_ps(ci))));
        _mm256_storeu_ps(ci + 8,
                         _mm256_fmadd_ps(va, rows[2 * i + 1], _mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8))));
      }
    }
    return;
  }
  alignas(32) float acc[GEMM_MR * GEMM_NR];
  __m256 rows[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  for (int i = 0; i < 12; ++i) _mm256_store_ps(acc + 8 * i, rows[i]);
  store_tile(acc, GEMM_NR, c, ldc, alpha, beta, m, n);
}

}  // namespace peft
#endif

#if defined(__x86_64__) || defined(__i386__)
namespace peft {

// 8x8 transpose of rows r[0..8) (8 floats each) into 8 registers holding the columns.
__attribute__((target("avx2,fma"))) static inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3,
                                                                 __m256& r4, __m256& r5, __m256& r6, __m256& r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
  r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
  r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
  r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
  r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
  r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
  r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
  r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

__attribute__((target("avx2,fma"))) void pack_rows_transposed_avx2(const float* s, int64_t ld, int64_t kc, float* d) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int half = 0; half < 2; ++half) {
      const float* p = s + half * 8 * ld + k;
      __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + ld), r2 = _mm256_loadu_ps(p + 2 * ld), r3 = _mm256_loadu_ps(p + 3 * ld);
      __m256 r4 = _mm256_loadu_ps(p + 4 * ld), r5 = _mm256_loadu_ps(p + 5 * ld), r6 = _mm256_loadu_ps(p + 6 * ld), r7 = _mm256_loadu_ps(p + 7 * ld);
      transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
      float* q = d + k * GEMM_NR + half * 8;
      _mm256_store_ps(q, r0);
      _mm256_store_ps(q + GEMM_NR, r1);
      _mm256_store_ps(q + 2 * GEMM_NR, r2);
      _mm256_store_ps(q + 3 * GEMM_NR, r3);
      _mm256_store_ps(q + 4 * GEMM_NR, r4);
      _mm256_store_ps(q + 5 * GEMM_NR, r5);
      _mm256_store_ps(q + 6 * GEMM_NR, r6);
      _mm256_store_ps(q + 7 * GEMM_NR, r7);
    }
  }
  for (; k < kc; ++k)
    for (int jj = 0; jj < GEMM_NR; ++jj) d[k * GEMM_NR + jj] = s[jj * ld + k];
}

}  // namespace peft
#endif
