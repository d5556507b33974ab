// bfloat16 dot-product GEMM pieces for AVX512_BF16 (VDPBF16PS): frozen bf16 weights times
// activations rounded to bf16 (round-to-nearest-even, NaN kept), products summed in float32.
// Operands are packed as k-pairs: one 32-bit word holds (x[2p], x[2p+1]) with the even k in the low
// half, which is what VDPBF16PS multiplies lane-wise: acc[j] += a.lo*b.lo + a.hi*b.hi.
// Every function carries its own target attribute; gemm.cc calls them only when
// bf16_dot_available() (cpu_features.h).
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
// GCC 12 flags _mm512_undefined_* inside the intrinsics headers under target attributes (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cstring>

#include "kernels.h"

#define PEFT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

namespace peft {

namespace {
constexpr int MR = GEMM512_MR;
constexpr int NR = GEMM512_NR;

PEFT_AVX512BF16 inline void store_row(float* c, __m512 v0, __m512 v1, __m512 va, float beta, __mmask16 m0,
                                      __mmask16 m1) {
  if (beta == 0.f) {
    _mm512_mask_storeu_ps(c, m0, _mm512_mul_ps(va, v0));
    _mm512_mask_storeu_ps(c + 16, m1, _mm512_mul_ps(va, v1));
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
    _mm512_mask_storeu_ps(c, m0, _mm512_fmadd_ps(va, v0, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, c))));
    _mm512_mask_storeu_ps(c + 16, m1,
                          _mm512_fmadd_ps(va, v1, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, c + 16))));
  }
}

// float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
inline uint32_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (u >> 16) | 0x40u;
  return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}
}  // namespace

PEFT_AVX512BF16 void micro_kernel_bf16dot_avx512(int64_t kp, const uint32_t* a, const uint32_t* b, float* c,
                                                 int64_t ldc, float alpha, float beta, int m, int n) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  __m512 c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps();
  __m512 c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps();
  __m512 ca0 = _mm512_setzero_ps(), ca1 = _mm512_setzero_ps();
  __m512 cb0 = _mm512_setzero_ps(), cb1 = _mm512_setzero_ps();
  __m512 cc0 = _mm512_setzero_ps(), cc1 = _mm512_setzero_ps();
  __m512 cd0 = _mm512_setzero_ps(), cd1 = _mm512_setzero_ps();
  for (int i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  // One k-pair step: two B vectors (32 columns x 2 k), then 28 VDPBF16PS whose A operand is an
  // embedded {1to16} broadcast of one packed pair (inline asm: see kernel_avx512.cc).
#define PEFT_DOT0 \
  __asm__("vdpbf16ps 0(%[a])%{1to16%}, %[b0], %[c00]\n\t" \
          "vdpbf16ps 0(%[a])%{1to16%}, %[b1], %[c01]\n\t" \
          "vdpbf16ps 4(%[a])%{1to16%}, %[b0], %[c10]\n\t" \
          "vdpbf16ps 4(%[a])%{1to16%}, %[b1], %[c11]\n\t" \
          "vdpbf16ps 8(%[a])%{1to16%}, %[b0], %[c20]\n\t" \
          "vdpbf16ps 8(%[a])%{1to16%}, %[b1], %[c21]\n\t" \
          "vdpbf16ps 12(%[a])%{1to16%}, %[b0], %[c30]\n\t" \
          "vdpbf16ps 12(%[a])%{1to16%}, %[b1], %[c31]\n\t" \
          : [c00] "+v"(c00), [c01] "+v"(c01), [c10] "+v"(c10), [c11] "+v"(c11), [c20] "+v"(c20), [c21] "+v"(c21), [c30] "+v"(c30), [c31] "+v"(c31) \
          : [a] "r"(a), [b0] "v"(b0), [b1] "v"(b1), "m"(*reinterpret_cast<const uint32_t(*)[MR]>(a)));
#define PEFT_DOT1 \
  __asm__("vdpbf16ps 16(%[a])%{1to16%}, %[b0], %[c40]\n\t" \
          "vdpbf16ps 16(%[a])%{1to16%}, %[b1], %[c41]\n\t" \
          "vdpbf16ps 20(%[a])%{1to16%}, %[b0], %[c50]\n\t" \
          "vdpbf16ps 20(%[a])%{1to16%}, %[b1], %[c51]\n\t" \
          "vdpbf16ps 24(%[a])%{1to16%}, %[b0], %[c60]\n\t" \
          "vdpbf16ps 24(%[a])%{1to16%}, %[b1], %[c61]\n\t" \
          : [c40] "+v"(c40), [c41] "+v"(c41), [c50] "+v"(c50), [c51] "+v"(c51), [c60] "+v"(c60), [c61] "+v"(c61) \
          : [a] "r"(a), [b0] "v"(b0), [b1] "v"(b1), "m"(*reinterpret_cast<const uint32_t(*)[MR]>(a)));
#define PEFT_DOT2 \
  __asm__("vdpbf16ps 28(%[a])%{1to16%}, %[b0], %[c70]\n\t" \
          "vdpbf16ps 28(%[a])%{1to16%}, %[b1], %[c71]\n\t" \
          "vdpbf16ps 32(%[a])%{1to16%}, %[b0], %[c80]\n\t" \
          "vdpbf16ps 32(%[a])%{1to16%}, %[b1], %[c81]\n\t" \
          "vdpbf16ps 36(%[a])%{1to16%}, %[b0], %[c90]\n\t" \
          "vdpbf16ps 36(%[a])%{1to16%}, %[b1], %[c91]\n\t" \
          "vdpbf16ps 40(%[a])%{1to16%}, %[b0], %[ca0]\n\t" \
          "vdpbf16ps 40(%[a])%{1to16%}, %[b1], %[ca1]\n\t" \
          : [c70] "+v"(c70), [c71] "+v"(c71), [c80] "+v"(c80), [c81] "+v"(c81), [c90] "+v"(c90), [c91] "+v"(c91), [ca0] "+v"(ca0), [ca1] "+v"(ca1) \
          : [a] "r"(a), [b0] "v"(b0), [b1] "v"(b1), "m"(*reinterpret_cast<const uint32_t(*)[MR]>(a)));
#define PEFT_DOT3 \
  __asm__("vdpbf16ps 44(%[a])%{1to16%}, %[b0], %[cb0]\n\t" \
          "vdpbf16ps 44(%[a])%{1to16%}, %[b1], %[cb1]\n\t" \
          "vdpbf16ps 48(%[a])%{1to16%}, %[b0], %[cc0]\n\t" \
          "vdpbf16ps 48(%[a])%{1to16%}, %[b1], %[cc1]\n\t" \
          "vdpbf16ps 52(%[a])%{1to16%}, %[b0], %[cd0]\n\t" \
          "vdpbf16ps 52(%[a])%{1to16%}, %[b1], %[cd1]\n\t" \
          : [cb0] "+v"(cb0), [cb1] "+v"(cb1), [cc0] "+v"(cc0), [cc1] "+v"(cc1), [cd0] "+v"(cd0), [cd1] "+v"(cd1) \
          : [a] "r"(a), [b0] "v"(b0), [b1] "v"(b1), "m"(*reinterpret_cast<const uint32_t(*)[MR]>(a)));
#define PEFT_STEP()                                      \
  {                                                      \
    const __m512 b0 = _mm512_load_ps(reinterpret_cast<const float*>(b));       \
    const __m512 b1 = _mm512_load_ps(reinterpret_cast<const float*>(b + 16));  \
    PEFT_DOT0 PEFT_DOT1 PEFT_DOT2 PEFT_DOT3              \
  }
  for (int64_t p = 0; p < kp; ++p) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 4 * MR), _MM_HINT_T0);
    PEFT_STEP()
    a += MR;
    b += NR;
  }
#undef PEFT_STEP
#undef PEFT_DOT0
#undef PEFT_DOT1
#undef PEFT_DOT2
#undef PEFT_DOT3
  const __m512 va = _mm512_set1_ps(alpha);
  __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  __m512 rows[2 * MR] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71, c80, c81, c90, c91, ca0, ca1, cb0, cb1, cc0, cc1, cd0, cd1};
  for (int i = 0; i < m; ++i) store_row(c + i * ldc, rows[2 * i], rows[2 * i + 1], va, beta, m0, m1);
}

PEFT_AVX512BF16 void pack_a_bf16dot_avx512(const float* A, int64_t lda, int64_t mr, int64_t kc, uint32_t* d) {
  const int64_t kp = (kc + 1) / 2;
  alignas(64) uint32_t tmp[16];
  for (int64_t ii = 0; ii < mr; ++ii) {
    const float* row = A + ii * lda;
    int64_t p = 0;
    for (; 2 * p + 32 <= kc; p += 16) {
      __m512i v = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 2 * p + 16), _mm512_loadu_ps(row + 2 * p)));
      _mm512_store_si512(reinterpret_cast<__m512i*>(tmp), v);
      for (int t = 0; t < 16; ++t) d[(p + t) * MR + ii] = tmp[t];
    }
    for (; p < kp; ++p) {
      uint32_t lo = bf16_bits(row[2 * p]);
      uint32_t hi = 2 * p + 1 < kc ? bf16_bits(row[2 * p + 1]) : 0u;
      d[p * MR + ii] = lo | (hi << 16);
    }
  }
  for (int64_t ii = mr; ii < MR; ++ii)
    for (int64_t p = 0; p < kp; ++p) d[p * MR + ii] = 0;
}

PEFT_AVX512BF16 void pack_b_bf16dot_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t k0, int64_t kc,
                                           int64_t K, int64_t j, int64_t nr, uint32_t* d) {
  const int64_t kp = (kc + 1) / 2;
  if (trans) {  // op(B)[k][jj] = B[(j + jj) * ldb + k]: a k-pair is one 32-bit word of a row
    if (nr == NR && (ldb % 2) == 0 && (k0 % 2) == 0 && (kc % 2) == 0) {
      pack_rows_transposed_avx512(reinterpret_cast<const float*>(B + j * ldb + k0), ldb / 2, kp,
                                  reinterpret_cast<float*>(d));
      return;
    }
    std::memset(d, 0, sizeof(uint32_t) * kp * NR);
    for (int64_t jj = 0; jj < nr; ++jj) {
      const uint16_t* row = B + (j + jj) * ldb + k0;
      for (int64_t p = 0; p < kp; ++p) {
        uint32_t lo = row[2 * p];
        uint32_t hi = 2 * p + 1 < kc ? row[2 * p + 1] : 0u;
        d[p * NR + jj] = lo | (hi << 16);
      }
    }
    return;
  }
  // op(B)[k][jj] = B[k * ldb + j + jj]: interleave rows k and k+1
  const __m512i idx_lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36, 4,
                                          35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i idx_hi = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54, 22, 53, 21,
                                          52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
  const __mmask32 mask = nr >= 32 ? 0xFFFFFFFFu : static_cast<__mmask32>((1u << nr) - 1);
  for (int64_t p = 0; p < kp; ++p) {
    const uint16_t* r0 = B + (k0 + 2 * p) * ldb + j;
    __m512i v0 = _mm512_maskz_loadu_epi16(mask, r0);
    __m512i v1 = 2 * p + 1 < kc ? _mm512_maskz_loadu_epi16(mask, r0 + ldb) : _mm512_setzero_si512();
    _mm512_store_si512(reinterpret_cast<__m512i*>(d + p * NR), _mm512_permutex2var_epi16(v0, idx_lo, v1));
    _mm512_store_si512(reinterpret_cast<__m512i*>(d + p * NR + 16), _mm512_permutex2var_epi16(v0, idx_hi, v1));
  }
  (void)K;
}

}  // namespace peft
#endif
