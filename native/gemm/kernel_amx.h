// bfloat16 GEMM on Intel AMX tiles (AMX-TILE + AMX-BF16, TDPBF16PS), kernel_amx.cc.
#pragma once
#include <cstdint>

namespace peft {

// C[M,N] = alpha * A[M,K] * op(B)[K,N] + beta * C with the same contract as gemm_bf16_dot (gemm.h):
// A float32 rounded to bf16 (nearest even), B bfloat16 [K, N] (ldb) or, when trans_b, [N, K];
// products of bf16 summed in float32. Call only when amx_bf16_available() (cpu_features.h).
// Uses the thread pool unless `parallel` is false.
void gemm_bf16_amx(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc, bool parallel);

}  // namespace peft
