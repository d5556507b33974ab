// AVX-512 (F/BW/VL/DQ) SGEMM pieces: a 14x32 micro-kernel (28 zmm accumulators, two B vectors,
// one A broadcast), the 32-row transposing pack, bf16 widening and the 4-bit (NF4/FP4) decoder
// that looks the 16 codes up with one VPERMPS. Every function carries its own target attribute,
// so the file builds with baseline x86-64 flags and gemm.cc calls it only when
// kernel_level() == Avx512.
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
// GCC 12 flags _mm512_undefined_* inside the intrinsics headers under target attributes (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>

#include "kernels.h"

#define PEFT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))

namespace peft {

namespace {
constexpr int MR = GEMM512_MR;
constexpr int NR = GEMM512_NR;

PEFT_AVX512 inline void store_row(float* c, __m512 v0, __m512 v1, __m512 va, float beta, __mmask16 m0,
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
}  // namespace

namespace {
// The 14x32 kernel body. kBcastReg = false: each FMA takes its A operand as an embedded {1to16}
// broadcast from the packed panel (28 micro-fused load+FMA per k step; tuned on Zen 4).
// kBcastReg = true: one VBROADCASTSS per A element into a register, then two register FMAs
// (14 loads instead of 28 load+FMA pairs per k step), measured faster on Intel cores with two
// full-width 512-bit FMA ports (see notes/issue-12.md).
template <bool kBcastReg>
PEFT_AVX512 inline void micro_kernel_14x32(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                           float alpha, float beta, int m, int n) {
  // Accumulators pinned to zmm4..zmm31 (B in zmm0/zmm1, the broadcast in zmm2): left to itself GCC
  // rotates them through extra register moves inside the k loop.
  register __m512 c00 asm("zmm4") = _mm512_setzero_ps();
  register __m512 c01 asm("zmm5") = _mm512_setzero_ps();
  register __m512 c10 asm("zmm6") = _mm512_setzero_ps();
  register __m512 c11 asm("zmm7") = _mm512_setzero_ps();
  register __m512 c20 asm("zmm8") = _mm512_setzero_ps();
  register __m512 c21 asm("zmm9") = _mm512_setzero_ps();
  register __m512 c30 asm("zmm10") = _mm512_setzero_ps();
  register __m512 c31 asm("zmm11") = _mm512_setzero_ps();
  register __m512 c40 asm("zmm12") = _mm512_setzero_ps();
  register __m512 c41 asm("zmm13") = _mm512_setzero_ps();
  register __m512 c50 asm("zmm14") = _mm512_setzero_ps();
  register __m512 c51 asm("zmm15") = _mm512_setzero_ps();
  register __m512 c60 asm("zmm16") = _mm512_setzero_ps();
  register __m512 c61 asm("zmm17") = _mm512_setzero_ps();
  register __m512 c70 asm("zmm18") = _mm512_setzero_ps();
  register __m512 c71 asm("zmm19") = _mm512_setzero_ps();
  register __m512 c80 asm("zmm20") = _mm512_setzero_ps();
  register __m512 c81 asm("zmm21") = _mm512_setzero_ps();
  register __m512 c90 asm("zmm22") = _mm512_setzero_ps();
  register __m512 c91 asm("zmm23") = _mm512_setzero_ps();
  register __m512 ca0 asm("zmm24") = _mm512_setzero_ps();
  register __m512 ca1 asm("zmm25") = _mm512_setzero_ps();
  register __m512 cb0 asm("zmm26") = _mm512_setzero_ps();
  register __m512 cb1 asm("zmm27") = _mm512_setzero_ps();
  register __m512 cc0 asm("zmm28") = _mm512_setzero_ps();
  register __m512 cc1 asm("zmm29") = _mm512_setzero_ps();
  register __m512 cd0 asm("zmm30") = _mm512_setzero_ps();
  register __m512 cd1 asm("zmm31") = _mm512_setzero_ps();
  for (int i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc + NR - 1), _MM_HINT_T0);
  }
  // One k step: two B vectors, then 28 FMAs (row r of the A panel at byte offset 4r). Written as
  // inline asm because GCC 12 spills some of the 28 accumulators when the same loop is written with
  // intrinsics (four asm statements: at most 30 operands each).
#define PEFT_MEM(o, c0, c1)                                        \
  "vfmadd231ps " #o "(%[a])%{1to16%}, %[b0], %[" #c0 "]\n\t"      \
  "vfmadd231ps " #o "(%[a])%{1to16%}, %[b1], %[" #c1 "]\n\t"
#define PEFT_REG(o, c0, c1)                                        \
  "vbroadcastss " #o "(%[a]), %[t]\n\t"                            \
  "vfmadd231ps %[t], %[b0], %[" #c0 "]\n\t"                        \
  "vfmadd231ps %[t], %[b1], %[" #c1 "]\n\t"
#define PEFT_IN [a] "r"(a), [b0] "v"(b0), [b1] "v"(b1), "m"(*reinterpret_cast<const float(*)[MR]>(a))
#define PEFT_TOUT [t] "=&v"(t),
#define PEFT_ROWS(F, T)                                                                                            \
  __asm__(F(0, c00, c01) F(4, c10, c11) F(8, c20, c21) F(12, c30, c31)                                            \
          : T[c00] "+v"(c00), [c01] "+v"(c01), [c10] "+v"(c10), [c11] "+v"(c11), [c20] "+v"(c20), [c21] "+v"(c21), \
            [c30] "+v"(c30), [c31] "+v"(c31)                                                                       \
          : PEFT_IN);                                                                                              \
  __asm__(F(16, c40, c41) F(20, c50, c51) F(24, c60, c61)                                                         \
          : T[c40] "+v"(c40), [c41] "+v"(c41), [c50] "+v"(c50), [c51] "+v"(c51), [c60] "+v"(c60), [c61] "+v"(c61)  \
          : PEFT_IN);                                                                                              \
  __asm__(F(28, c70, c71) F(32, c80, c81) F(36, c90, c91) F(40, ca0, ca1)                                         \
          : T[c70] "+v"(c70), [c71] "+v"(c71), [c80] "+v"(c80), [c81] "+v"(c81), [c90] "+v"(c90), [c91] "+v"(c91), \
            [ca0] "+v"(ca0), [ca1] "+v"(ca1)                                                                       \
          : PEFT_IN);                                                                                              \
  __asm__(F(44, cb0, cb1) F(48, cc0, cc1) F(52, cd0, cd1)                                                         \
          : T[cb0] "+v"(cb0), [cb1] "+v"(cb1), [cc0] "+v"(cc0), [cc1] "+v"(cc1), [cd0] "+v"(cd0), [cd1] "+v"(cd1)  \
          : PEFT_IN);
#define PEFT_STEP()                           \
  {                                           \
    register __m512 b0 asm("zmm0") = _mm512_load_ps(b);      \
    register __m512 b1 asm("zmm1") = _mm512_load_ps(b + 16); \
    if constexpr (kBcastReg) {                \
      register __m512 t asm("zmm2");          \
      PEFT_ROWS(PEFT_REG, PEFT_TOUT)          \
    } else {                                  \
      PEFT_ROWS(PEFT_MEM, )                   \
    }                                         \
  }
  int64_t k = 0;
  for (; k + 4 <= kc; k += 4) {
    _mm_prefetch(reinterpret_cast<const char*>(a + 16 * MR), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + 16 * MR + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + 16 * MR + 32), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(a + 16 * MR + 48), _MM_HINT_T0);
    for (int u = 0; u < 4; ++u) {
      PEFT_STEP()
      a += MR;
      b += NR;
    }
  }
  for (; k < kc; ++k) {
    PEFT_STEP()
    a += MR;
    b += NR;
  }
#undef PEFT_STEP
#undef PEFT_ROWS
#undef PEFT_TOUT
#undef PEFT_IN
#undef PEFT_REG
#undef PEFT_MEM
  const __m512 va = _mm512_set1_ps(alpha);
  __mmask16 m0 = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : static_cast<__mmask16>((1u << (n - 16)) - 1);
  __m512 rows[2 * MR] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61,
                         c70, c71, c80, c81, c90, c91, ca0, ca1, cb0, cb1, cc0, cc1, cd0, cd1};
  for (int i = 0; i < m; ++i) store_row(c + i * ldc, rows[2 * i], rows[2 * i + 1], va, beta, m0, m1);
}
}  // namespace

PEFT_AVX512 void micro_kernel_avx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                     float alpha, float beta, int m, int n) {
  micro_kernel_14x32<false>(kc, a, b, c, ldc, alpha, beta, m, n);
}

PEFT_AVX512 void micro_kernel_avx512_bcast(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                           float alpha, float beta, int m, int n) {
  micro_kernel_14x32<true>(kc, a, b, c, ldc, alpha, beta, m, n);
}

namespace {
PEFT_AVX512 inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5,
                                   __m256& r6, __m256& r7) {
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
}  // namespace

PEFT_AVX512 void pack_rows_transposed_avx512(const float* s, int64_t ld, int64_t kc, float* d) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int g = 0; g < NR / 8; ++g) {
      const float* p = s + g * 8 * ld + k;
      __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + ld), r2 = _mm256_loadu_ps(p + 2 * ld),
             r3 = _mm256_loadu_ps(p + 3 * ld);
      __m256 r4 = _mm256_loadu_ps(p + 4 * ld), r5 = _mm256_loadu_ps(p + 5 * ld), r6 = _mm256_loadu_ps(p + 6 * ld),
             r7 = _mm256_loadu_ps(p + 7 * ld);
      transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
      float* q = d + k * NR + g * 8;
      _mm256_store_ps(q, r0);
      _mm256_store_ps(q + NR, r1);
      _mm256_store_ps(q + 2 * NR, r2);
      _mm256_store_ps(q + 3 * NR, r3);
      _mm256_store_ps(q + 4 * NR, r4);
      _mm256_store_ps(q + 5 * NR, r5);
      _mm256_store_ps(q + 6 * NR, r6);
      _mm256_store_ps(q + 7 * NR, r7);
    }
  }
  for (; k < kc; ++k)
    for (int jj = 0; jj < NR; ++jj) d[k * NR + jj] = s[jj * ld + k];
}

PEFT_AVX512 void widen_bf16_avx512(const uint16_t* s, int64_t n, float* d) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
    _mm512_storeu_ps(d + i, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  if (i < n) {
    __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, s + i));
    _mm512_mask_storeu_ps(d + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
}

PEFT_AVX512 void decode_q4_avx512(const Q4Matrix& q, int64_t idx, int64_t count, float* out) {
  const int64_t end = idx + count;
  const __m512 code = _mm512_loadu_ps(q.code);
  const __m128i low4 = _mm_set1_epi8(15);
  while (idx < end) {
    int64_t b = idx / q.blocksize;
    int64_t stop = std::min(end, (b + 1) * q.blocksize);
    const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(q4_block_absmax_plain(q, b)));
    if ((idx & 1) && idx < stop) {  // odd start: the low nibble of its byte
      __m512 v = _mm512_permutexvar_ps(_mm512_set1_epi32(q.packed[idx >> 1] & 15), lut);
      _mm512_mask_storeu_ps(out, 1, v);
      ++idx;
      ++out;
    }
    for (; idx + 16 <= stop; idx += 16, out += 16) {
      __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q.packed + (idx >> 1)));
      __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low4);
      __m128i lo = _mm_and_si128(bytes, low4);
      __m512i codes = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(hi, lo));  // element 2k: high nibble
      _mm512_storeu_ps(out, _mm512_permutexvar_ps(codes, lut));
    }
    float l[16];
    _mm512_storeu_ps(l, lut);
    for (; idx < stop; ++idx) {
      uint8_t byte = q.packed[idx >> 1];
      *out++ = l[(idx & 1) ? (byte & 15) : (byte >> 4)];
    }
  }
}

namespace {
// M rows of A against W rows [j0, j1) (one W row read once for all M rows: decode is bound by
// reading the weights, and packing them first would read and write them again).
template <int M>
PEFT_AVX512 void small_m_rows(int64_t j0, int64_t j1, int64_t K, float alpha, const float* a, int64_t lda,
                              const void* w, bool bf16, int64_t ldw, float beta, float* c, int64_t ldc) {
  const int64_t kfull = K / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (K - kfull)) - 1);
  for (int64_t j = j0; j < j1; ++j) {
    __m512 acc[M];
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
    const float* wf = static_cast<const float*>(w) + j * ldw;
    const uint16_t* wh = static_cast<const uint16_t*>(w) + j * ldw;
    for (int64_t k = 0; k < kfull; k += 16) {
      __m512 wv = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(
                             _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + k))), 16))
                       : _mm512_loadu_ps(wf + k);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i * lda + k), wv, acc[i]);
    }
    if (tail) {
      __m512 wv = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(tail, wh + kfull)), 16))
                       : _mm512_maskz_loadu_ps(tail, wf + kfull);
#pragma GCC unroll 8
      for (int i = 0; i < M; ++i) acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, a + i * lda + kfull), wv, acc[i]);
    }
#pragma GCC unroll 8
    for (int i = 0; i < M; ++i) {
      float s = alpha * _mm512_reduce_add_ps(acc[i]);
      float* ci = c + i * ldc + j;
      *ci = beta == 0.f ? s : s + beta * *ci;
    }
  }
}
}  // namespace

PEFT_AVX512 void small_m_nt_avx512(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* a, int64_t lda,
                                   const void* w, bool bf16, int64_t ldw, float beta, float* c, int64_t ldc) {
  switch (m) {
    case 1: small_m_rows<1>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 2: small_m_rows<2>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 3: small_m_rows<3>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 4: small_m_rows<4>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 5: small_m_rows<5>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 6: small_m_rows<6>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    case 7: small_m_rows<7>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
    default: small_m_rows<8>(j0, j1, K, alpha, a, lda, w, bf16, ldw, beta, c, ldc); break;
  }
}

namespace {
// R rows of A against the 8 rows of w (a zero-padded W block): 8R accumulators, each k step of 16
// loads R A vectors and 8 W vectors for 8R FMAs; the dot products are reduced at the end.
template <int R>
PEFT_AVX512 void rows_x8(int64_t K, const float* a, int64_t lda, const float* w, int64_t ldw, int nj, float alpha,
                         float beta, float* c, int64_t ldc) {
  __m512 acc[R][8];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) acc[r][j] = _mm512_setzero_ps();
  const int64_t kfull = K / 16 * 16;
  for (int64_t k = 0; k < kfull; k += 16) {
    __m512 av[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) av[r] = _mm512_loadu_ps(a + r * lda + k);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512 wv = _mm512_loadu_ps(w + j * ldw + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(av[r], wv, acc[r][j]);
    }
  }
  if (kfull < K) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (K - kfull)) - 1);
    __m512 av[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) av[r] = _mm512_maskz_loadu_ps(tail, a + r * lda + kfull);
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512 wv = _mm512_maskz_loadu_ps(tail, w + j * ldw + kfull);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[r][j] = _mm512_fmadd_ps(av[r], wv, acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    for (int j = 0; j < nj; ++j) {
      float v = alpha * _mm512_reduce_add_ps(acc[r][j]);
      cr[j] = beta == 0.f ? v : v + beta * cr[j];
    }
  }
}
}  // namespace

PEFT_AVX512 void small_n_avx512(int64_t i0, int64_t i1, int64_t N, int64_t K, float alpha, const float* a, int64_t lda,
                                const float* w, int64_t ldw, float beta, float* c, int64_t ldc) {
  for (int64_t j = 0; j < N; j += 8) {
    const int nj = static_cast<int>(std::min<int64_t>(8, N - j));
    const float* wj = w + j * ldw;
    int64_t i = i0;
    for (; i + 3 <= i1; i += 3) rows_x8<3>(K, a + i * lda, lda, wj, ldw, nj, alpha, beta, c + i * ldc + j, ldc);
    if (i1 - i == 2) rows_x8<2>(K, a + i * lda, lda, wj, ldw, nj, alpha, beta, c + i * ldc + j, ldc);
    else if (i1 - i == 1) rows_x8<1>(K, a + i * lda, lda, wj, ldw, nj, alpha, beta, c + i * ldc + j, ldc);
  }
}

}  // namespace peft
#endif
