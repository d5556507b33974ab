// Register kernels for attention blocks with head_dim 64 (attention_avx512.cc; x86-64 only, called
// when kernel_level() == Avx512). Row-major, strides in floats; "64" is the head dimension.
//
// diag: row r of the block sees key columns j <= diag + r (causal: diag = (Tk − Tq) + first query
// row); pass kAllVisible otherwise. abt writes 0 to invisible entries, ab/atb skip the work their
// zero entries would add (A is zero there: probabilities or score gradients of invisible keys).
#pragma once
#include <cstdint>

namespace peft {
namespace attn_avx512 {
constexpr int64_t kAllVisible = INT64_MAX / 4;
// C[rows × n] = alpha · A[rows × 64] · Bt[64 × n]  (S = scale·Q·Kᵀ; Bt = Kᵀ)
void abt(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb,
         float* C, int64_t ldc, int64_t diag);
// C = exp(alpha · A · Bt − lse[r]) (the probabilities from the saved log-sum-exp; a row with
// lse = -inf is 0). Only valid when diag is the whole mask.
void abt_exp(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* Bt, int64_t ldb,
             float* C, int64_t ldc, int64_t diag, const float* lse);
// C = P ∘ (A · Bt − di[r])  (dS from dP = dO·Vᵀ; P has C's row stride)
void abt_dscore(int64_t rows, int64_t n, const float* A, int64_t lda, const float* Bt, int64_t ldb, float* C,
                int64_t ldc, int64_t diag, const float* P, const float* di);
// C[rows × 64] = beta · C + alpha · A[rows × n] · B[n × 64]  (O = P·V, dQ += scale·dS·K)
void ab(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
        float beta, float* C, int64_t ldc, int64_t diag);
// C[n × 64] += alpha · A[rows × n]ᵀ · B[rows × 64]  (dV += Pᵀ·dO, dK += scale·dSᵀ·Q)
void atb(int64_t rows, int64_t n, float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
         float* C, int64_t ldc, int64_t diag);
}  // namespace attn_avx512
}  // namespace peft
