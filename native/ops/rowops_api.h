// Dispatch table of vectorised row kernels (see rowops.h), one build per kernel level.
#pragma once
#include <cstdint>

namespace peft {

struct RowOps {
  const char* name;
  // ---- softmax pieces (attention, cross-entropy)
  float (*max)(const float* row, int64_t n);                                  // NaN if any is NaN
  float (*exp_sub_sum)(float* row, int64_t n, float sub);                     // row = exp(row - sub), returns Σ
  float (*sum_exp_sub)(const float* row, int64_t n, float sub);               // Σ exp(row - sub)
  void (*exp_scale)(const float* row, float* out, int64_t n, float sub, float mul);  // out = exp(row - sub)·mul
  void (*scale)(float* row, int64_t n, float mul);                            // row *= mul
  // ---- SwiGLU (Shazeer 2020): y = silu(g)·u; backward accumulates, dg/du may be null
  void (*swiglu_fwd)(const float* g, const float* u, float* y, int64_t n);
  void (*swiglu_bwd)(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n);
  // ---- RMSNorm rows (Zhang & Sennrich 2019): y = x·rstd·w, rstd = 1/sqrt(mean(x²) + eps), returned;
  // backward: dx += rstd·(dy·w − x·rstd²·mean(dy·w·x))
  float (*rmsnorm_fwd_row)(const float* x, const float* w, int64_t D, float eps, float* y);
  void (*rmsnorm_bwd_row)(const float* dy, const float* x, const float* w, float rstd, int64_t D, float* dx);
  // ---- RoPE on one row of H heads in HF's rotate_half layout (see ops.h rope_apply); s already signed
  void (*rope_row)(const float* x, float* y, int64_t H, int64_t D, const float* c, const float* s, float sign,
                   bool accumulate);
  // ---- AdamW over [0, n) (see ops.h adamw_step for the formula; factors precomputed by the caller)
  void (*adamw)(float* p, const float* g, float* m, float* v, int64_t n, float step_size, float bc2_sqrt,
                float decay, float beta2, float w1, float w2, float eps, bool decay_on);
};

// The implementation for the kernel level in use (kernel_level(): avx512, avx2+fma, else portable).
const RowOps& row_ops();

}  // namespace peft
