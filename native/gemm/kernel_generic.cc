// Portable 6x16 micro-kernel and packing helpers: plain loops the compiler vectorises (SSE2 on
// x86-64, NEON on arm64).
#include <algorithm>
#include <cstring>

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
  store_tile(acc, GEMM_NR, c, ldc, alpha, beta, m, n);
}

void pack_rows_transposed_generic(const float* s, int64_t ld, int64_t kc, float* d) {
  for (int64_t k = 0; k < kc; ++k)
    for (int jj = 0; jj < GEMM_NR; ++jj) d[k * GEMM_NR + jj] = s[jj * ld + k];
}

void widen_bf16_generic(const uint16_t* s, int64_t n, float* d) {
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(d + i, &u, 4);
  }
}

__attribute__((noinline)) float q4_block_absmax_plain(const Q4Matrix& q, int64_t b) { return q.block_absmax(b); }

void decode_q4_generic(const Q4Matrix& q, int64_t idx, int64_t count, float* out) {
  int64_t end = idx + count;
  while (idx < end) {
    int64_t b = idx / q.blocksize;
    int64_t stop = std::min(end, (b + 1) * q.blocksize);
    float s = q.block_absmax(b);
    float lut[16];
    for (int i = 0; i < 16; ++i) lut[i] = q.code[i] * s;
    for (; idx < stop; ++idx) {
      uint8_t byte = q.packed[idx >> 1];
      *out++ = lut[(idx & 1) ? (byte & 15) : (byte >> 4)];
    }
  }
}

}  // namespace peft
