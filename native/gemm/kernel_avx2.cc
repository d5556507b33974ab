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
  store_tile(acc, c, ldc, alpha, beta, m, n);
}

}  // namespace peft
#endif
