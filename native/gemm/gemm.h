// Single-precision GEMM, BLIS-style: C = alpha * op(A) * op(B) + beta * C, row-major.
//
// op(A) is M x K (A stored M x K, or K x M when trans_a); op(B) is K x N. B is a "weight source"
// that the packing step reads in its stored form: float32, bfloat16 or 4-bit (NF4/FP4 with one
// absmax per block, optionally double-quantized), so quantized weights are dequantized panel by
// panel inside the GEMM and never materialised whole.
//
// Blocking follows Goto & van de Geijn, "Anatomy of High-Performance Matrix Multiplication"
// (ACM TOMS 2008) and the BLIS papers: B is packed into KC x NR panels, A into MC x KC blocks of
// MR-row micro-panels, and an MR x NR register micro-kernel runs over them.
#pragma once
#include <cstdint>

namespace peft {

enum class WeightKind { F32 = 0, BF16 = 1, Q4 = 2 };

// A 4-bit matrix as bitsandbytes stores it: `rows x cols` elements in row-major order, two codes
// per byte (element 2k in the high nibble), code value = code[nibble], one absmax per `blocksize`
// consecutive elements. absmax is either given in float32 (`absmax`) or double-quantized: absmax[b]
// = nested_code[absmax_codes[b]] * nested_absmax[b / nested_blocksize] + offset.
struct Q4Matrix {
  const uint8_t* packed = nullptr;
  const float* code = nullptr;  // 16 values
  const float* absmax = nullptr;
  const uint8_t* absmax_codes = nullptr;
  const float* nested_absmax = nullptr;
  const float* nested_code = nullptr;  // 256 values
  float offset = 0.f;
  int64_t blocksize = 64;
  int64_t nested_blocksize = 256;
  int64_t rows = 0, cols = 0;

  inline float block_absmax(int64_t b) const {
    if (absmax) return absmax[b];
    return nested_code[absmax_codes[b]] * nested_absmax[b / nested_blocksize] + offset;
  }
};

// op(B) as the GEMM sees it. For F32/BF16, `data` is the stored matrix with leading dimension ld:
// K x N when !trans, N x K when trans. For Q4 the stored matrix is q4 (rows x cols): trans means
// op(B) = q4^T (q4 is N x K, the usual weight [out, in] for y = x W^T); !trans means op(B) = q4
// (K x N, as in dX = dY W).
struct WeightRef {
  WeightKind kind = WeightKind::F32;
  const void* data = nullptr;
  int64_t ld = 0;
  bool trans = false;
  const Q4Matrix* q4 = nullptr;
};

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C. lda/ldc are row strides in elements.
// Uses the thread pool unless `parallel` is false (callers already inside a parallel region).
void gemm(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const WeightRef& B, float beta, float* C, int64_t ldc, bool parallel = true);

// Convenience for float32 B.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
           bool parallel = true);

// C[M,N] = alpha * A[M,K] * op(B)[K,N] + beta * C with a bfloat16 B multiplied by AMX TDPBF16PS
// where amx_bf16_available() (kernel_amx.cc), else by VDPBF16PS: A is rounded to bf16 (nearest
// even) for the product, sums are float32 (PyTorch CPU autocast's bf16 matmul numerics). B is
// [K, N] (ldb) or, when trans_b, [N, K]. Returns false and does nothing when bf16_dot_available()
// is false (no AVX512_BF16, or PEFT_KERNELS below avx512).
bool gemm_bf16_dot(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc, bool parallel = true);

// Writes all rows*cols elements of q4 as float32.
void dequantize_q4(const Q4Matrix& q4, float* out);

// Name of the micro-kernel chosen at run time ("avx2-fma-6x16" or "generic-6x16").
const char* gemm_kernel_name();
// The kernel behind gemm_bf16_dot: "amx-bf16-tiles", "avx512-bf16-dot" or "none".
const char* gemm_bf16_kernel_name();

}  // namespace peft
