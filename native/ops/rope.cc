// Rotary position embedding in HF's rotate_half layout.
#include <cmath>

#include "../threadpool.h"
#include "ops.h"

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
  parallel_for(rows, 32, [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      const float* c = cos_t + r * half;
      const float* s = sin_t + r * half;
      for (int64_t h = 0; h < H; ++h) {
        const float* xh = x + r * stride + h * D;
        float* yh = y + r * stride + h * D;
        for (int64_t i = 0; i < half; ++i) {
          float x1 = xh[i], x2 = xh[i + half];
          float si = sg * s[i];
          float a = x1 * c[i] - x2 * si;
          float b = x2 * c[i] + x1 * si;
          if (accumulate) {
            yh[i] += a;
            yh[i + half] += b;
          } else {
            yh[i] = a;
            yh[i + half] = b;
          }
        }
      }
    }
  });
}

}  // namespace peft
