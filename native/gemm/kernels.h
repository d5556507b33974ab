// Register micro-kernels and packing helpers over packed panels (see gemm.h), one set per CPU
// kernel level (cpu_features.h): generic and AVX2 use MR x NR = 6 x 16, AVX-512 uses 14 x 32.
#pragma once
#include <cstdint>

#include "gemm.h"

namespace peft {

constexpr int GEMM_MR = 6;
constexpr int GEMM_NR = 16;
constexpr int GEMM512_MR = 14;
constexpr int GEMM512_NR = 32;

// c[0..m, 0..n] = alpha * sum_k a[k*MR + i] * b[k*NR + j] + beta * c (beta == 0: c is not read).
// a: packed MR-row micro-panel (kc x MR), b: packed NR-column micro-panel (kc x NR).
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                             float alpha, float beta, int m, int n);
// Packs NR full rows (row i at s + i*ld, kc floats each) as a kc x NR panel: d[k*NR + i] = s[i*ld + k].
// d must be 64-byte aligned.
using TransposePack = void (*)(const float* s, int64_t ld, int64_t kc, float* d);
// d[i] = float(bfloat16 bits s[i]) for i < n.
using WidenBf16 = void (*)(const uint16_t* s, int64_t n, float* d);
// Decodes `count` consecutive 4-bit elements of q starting at flat index idx into out[0..count).
using DecodeQ4 = void (*)(const Q4Matrix& q, int64_t idx, int64_t count, float* out);

// One kernel level's GEMM pieces and its cache blocking (KC x NR panel of B in L1, MC x KC block
// of A in L2, KC x NC panel of B in L3).
struct GemmKernels {
  const char* name;
  MicroKernel uk;
  TransposePack pack_t;
  WidenBf16 widen;
  DecodeQ4 decode;
  int64_t kc, mc, nc;
};

void micro_kernel_generic(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                          float alpha, float beta, int m, int n);
void pack_rows_transposed_generic(const float* s, int64_t ld, int64_t kc, float* d);
void widen_bf16_generic(const uint16_t* s, int64_t n, float* d);
void decode_q4_generic(const Q4Matrix& q, int64_t idx, int64_t count, float* out);
// q.block_absmax(b) compiled without FMA contraction (kernel_generic.cc), so the AVX-512 decoder
// reproduces bitsandbytes' double-quantized absmax (a product, then a sum) bit for bit.
float q4_block_absmax_plain(const Q4Matrix& q, int64_t b);

#if defined(__x86_64__) || defined(__i386__)
void micro_kernel_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                       float alpha, float beta, int m, int n);
void pack_rows_transposed_avx2(const float* s, int64_t ld, int64_t kc, float* d);

// AVX-512 (F/BW/VL/DQ) set, compiled with per-function target attributes (kernel_avx512.cc).
void micro_kernel_avx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                         float alpha, float beta, int m, int n);
// The same 14x32 kernel with the A operand broadcast into a register (VBROADCASTSS) instead of an
// embedded {1to16} memory operand: faster on Intel cores with two 512-bit FMA ports.
void micro_kernel_avx512_bcast(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                               float alpha, float beta, int m, int n);
void pack_rows_transposed_avx512(const float* s, int64_t ld, int64_t kc, float* d);
void widen_bf16_avx512(const uint16_t* s, int64_t n, float* d);
void decode_q4_avx512(const Q4Matrix& q, int64_t idx, int64_t count, float* out);

// C[i, j] = alpha * dot(A row i, W row j) + beta * C[i, j] for i < m <= 8 and j in [j0, j1); W is
// f32 or (bf16) bfloat16 [N, K] with row stride ldw: the decode-time product x·Wᵀ without packing.
void small_m_nt_avx512(int m, int64_t j0, int64_t j1, int64_t K, float alpha, const float* a, int64_t lda,
                       const void* w, bool bf16, int64_t ldw, float beta, float* c, int64_t ldc);

// C[i, j] = alpha * dot(A row i, w row j) + beta * C[i, j] for rows i in [i0, i1) and j < N: the
// skinny-N product (N = a LoRA rank) without packing A. w is op(B)ᵀ [N, K] (row stride ldw) whose
// row count is padded with zero rows to a multiple of 8; a, c point at row 0.
void small_n_avx512(int64_t i0, int64_t i1, int64_t N, int64_t K, float alpha, const float* a, int64_t lda,
                    const float* w, int64_t ldw, float beta, float* c, int64_t ldc);

// AVX512_BF16 dot-product set (kernel_avx512_bf16.cc): panels of k-pairs, one uint32 = (x[2p], x[2p+1]).
// micro-kernel: c[0..m, 0..n] = alpha * sum_p dot2(a[p*MR + i], b[p*NR + j]) + beta * c over kp pairs.
void micro_kernel_bf16dot_avx512(int64_t kp, const uint32_t* a, const uint32_t* b, float* c, int64_t ldc,
                                 float alpha, float beta, int m, int n);
// Packs mr <= MR rows of A (row ii at A + ii*lda, kc floats) rounded to bf16 as a (kc+1)/2 x MR panel.
void pack_a_bf16dot_avx512(const float* A, int64_t lda, int64_t mr, int64_t kc, uint32_t* d);
// Packs op(B)[k0:k0+kc, j:j+nr] (B bf16 [K, N], or [N, K] when trans) as a (kc+1)/2 x NR panel.
void pack_b_bf16dot_avx512(const uint16_t* B, int64_t ldb, bool trans, int64_t k0, int64_t kc, int64_t K, int64_t j,
                           int64_t nr, uint32_t* d);
#endif

// Writes an m x n corner of an accumulator tile (row stride acc_ld) into c.
inline void store_tile(const float* acc, int acc_ld, float* c, int64_t ldc, float alpha, float beta, int m, int n) {
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    const float* ai = acc + i * acc_ld;
    if (beta == 0.f) {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ai[j];
    } else {
      for (int j = 0; j < n; ++j) ci[j] = alpha * ai[j] + beta * ci[j];
    }
  }
}

}  // namespace peft
