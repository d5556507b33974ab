// Dispatch table of vectorised row kernels (see rowops.h).
#pragma once
#include <cstdint>

namespace peft {

struct RowOps {
  float (*max)(const float* row, int64_t n);
  float (*exp_sub_sum)(float* row, int64_t n, float sub);
  float (*sum_exp_sub)(const float* row, int64_t n, float sub);
  void (*exp_scale)(const float* row, float* out, int64_t n, float sub, float mul);
  void (*scale)(float* row, int64_t n, float mul);
};

// The best implementation for this CPU (AVX2+FMA, else the portable one).
const RowOps& row_ops();

}  // namespace peft
