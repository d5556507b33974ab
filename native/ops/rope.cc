// Rotary position embedding in HF's rotate_half layout.
#include <cmath>

#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"

namespace peft {

void rope_table(const int32_t* pos, int64_t rows, const float* inv_freq, int64_t half, float attn_scaling,
                float* cos_out, float* sin_out) {
  parallel_for(rows, 64, [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      float p = static_cast<float>(pos[r]);
      for (int64_t i = 0; i < half; ++i) {
        float angle = p * inv_freq[i];  // float32 product, as transformers computes freqs
        cos_out[r * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * attn_scaling;
        sin_out[r * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * attn_scaling;
      }
    }
  });
}

void rope_apply(const float* x, float* y, int64_t rows, int64_t H, int64_t D, int64_t stride,
                const float* cos_t, const float* sin_t, int sign, bool accumulate) {
  const int64_t half = D / 2;
  const float sg = sign >= 0 ? 1.f : -1.f;
  const RowOps& ro = row_ops();
  parallel_for(rows, 32, [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r)
      ro.rope_row(x + r * stride, y + r * stride, H, D, cos_t + r * half, sin_t + r * half, sg, accumulate);
  });
}

}  // namespace peft
