// MR x NR register micro-kernels over packed panels (see gemm.h).
#pragma once
#include <cstdint>

namespace peft {

constexpr int GEMM_MR = 6;
constexpr int GEMM_NR = 16;

// c[0..m, 0..n] = alpha * sum_k a[k*MR + i] * b[k*NR + j] + beta * c (beta == 0: c is not read).
// a: packed MR-row micro-panel (kc x MR), b: packed NR-column micro-panel (kc x NR).
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha, float beta, int m, int n);

void micro_kernel_generic(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                          float alpha, float beta, int m, int n);
#if defined(__x86_64__) || defined(__i386__)
void micro_kernel_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                       float alpha, float beta, int m, int n);
#endif

// Packs 16 full rows (row i at s + i*ld, kc floats each) as a kc x NR panel: d[k*NR + i] = s[i*ld + k].
// d must be 32-byte aligned.
void pack_rows_transposed_generic(const float* s, int64_t ld, int64_t kc, float* d);
#if defined(__x86_64__) || defined(__i386__)
void pack_rows_transposed_avx2(const float* s, int64_t ld, int64_t kc, float* d);
#endif

// Writes an MR x NR accumulator tile into c (shared by the kernels for partial tiles).
inline void store_tile(const float* acc, float* c, int64_t ldc, float alpha, float beta, int m, int n) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    const float* ai = acc + i * GEMM_NR;
    if (beta == 0.f) {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ai[j];
    } else {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ai[j] + beta * ci[j];
    }
  }
}

}  // namespace peft
