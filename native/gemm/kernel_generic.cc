// Portable 6x16 micro-kernel: plain loops the compiler vectorises (SSE2 on x86-64, NEON on arm64).
#include "kernels.h"

namespace peft {

void micro_kernel_generic(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                          float alpha, float beta, int m, int n) {
  float acc[GEMM_MR * GEMM_NR] = {0};
  for (int64_t k = 0; k < kc; ++k) {
    const float* bk = b + k * GEMM_NR;
    const float* ak = a + k * GEMM_MR;
    for (int i = 0; i < GEMM_MR; ++i) {
      float ai = ak[i];
      float* row = acc + i * GEMM_NR;
      for (int j = 0; j < GEMM_NR; ++j) row[j] += ai * bk[j];
    }
  }
  store_tile(acc, c, ldc, alpha, beta, m, n);
}

void pack_rows_transposed_generic(const float* s, int64_t ld, int64_t kc, float* d) {
  for (int64_t k = 0; k < kc; ++k)
    for (int jj = 0; jj < GEMM_NR; ++jj) d[k * GEMM_NR + jj] = s[jj * ld + k];
}

}  // namespace peft
