// Register kernels for attention blocks with head_dim 64 (attention_avx512.cc; x86-64 only, called
// when kernel_level() == Avx512). Row-major, strides in floats; "64" is the head dimension.
#pragma once
#include <cstdint>

namespace peft {
namespace attn_avx512 {
// C[rows × n] = alpha · A[rows × 64] · Bt[64 × n]  (S = scale·Q·Kᵀ, dP = dO·Vᵀ; Bt = Kᵀ / Vᵀ)
void abt(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb,
         float* C, int64_t ldc);
// C[rows × 64] = beta · C + alpha · A[rows × n] · B[n × 64]  (O = P·V, dQ += scale·dS·K)
void ab(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
        float beta, float* C, int64_t ldc);
// C[n × 64] += alpha · A[rows × n]ᵀ · B[rows × 64]  (dV += Pᵀ·dO, dK += scale·dSᵀ·Q)
void atb(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
         float* C, int64_t ldc);
}  // namespace attn_avx512
}  // namespace peft
