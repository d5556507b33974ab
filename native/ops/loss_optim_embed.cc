// Cross-entropy, AdamW and embedding kernels.
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"

namespace peft {

double cross_entropy(const float* logits, const int32_t* labels, int64_t N, int64_t V, int32_t ignore_index,
                     float* dlogits, float grad_scale, int64_t* count, int64_t* bad_row) {
  *bad_row = -1;
  for (int64_t r = 0; r < N; ++r) {
    int32_t y = labels[r];
    if (y != ignore_index && (y < 0 || y >= V)) {
      *bad_row = r;
      return 0.0;
    }
  }
  const int nt = slots(N * V, 65536);
  const RowOps& ro = row_ops();
  std::vector<double> part(nt, 0.0);
  std::vector<int64_t> cnt(nt, 0);
  run_slots(N, nt, [&](long s, long e, int tid) {
    double acc = 0;
    int64_t c = 0;
    for (long r = s; r < e; ++r) {
      const float* x = logits + r * V;
      int32_t y = labels[r];
      float* dx = dlogits ? dlogits + r * V : nullptr;
      if (y == ignore_index) {
        if (dx) std::memset(dx, 0, sizeof(float) * V);
        continue;
      }
      float mx = ro.max(x, V);
      double se = ro.sum_exp_sub(x, V, mx);
      double lse = mx + std::log(se);
      acc += lse - x[y];
      ++c;
      if (dx) {
        ro.exp_scale(x, dx, V, static_cast<float>(lse), grad_scale);
        dx[y] -= grad_scale;
      }
    }
    part[tid] = acc;
    cnt[tid] = c;
  });
  double total = 0;
  int64_t c = 0;
  for (int t = 0; t < nt; ++t) {
    total += part[t];
    c += cnt[t];
  }
  *count = c;
  return total;
}

void adamw_step(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1, float beta2,
                float eps, float weight_decay, int64_t step) {
  // scalar factors in float64 as torch computes them in Python, applied in float32
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(step));
  const float step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * weight_decay);
  const float w1 = 1.f - beta1, w2 = 1.f - beta2;
  const RowOps& ro = row_ops();
  parallel_for(n, 32768, [&](long s, long e) {
    ro.adamw(p + s, g + s, m + s, v + s, e - s, step_size, bc2_sqrt, decay, beta2, w1, w2, eps, weight_decay != 0.f);
  });
}

int64_t embedding_forward(const float* w, const uint16_t* w_bf16, int64_t vocab, int64_t D,
                          const int32_t* ids, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r)
    if (ids[r] < 0 || ids[r] >= vocab) return r;
  parallel_for(rows, 64, [&](long s, long e) {
    for (long r = s; r < e; ++r) {
      float* o = out + r * D;
      if (w) {
        std::memcpy(o, w + static_cast<int64_t>(ids[r]) * D, sizeof(float) * D);
      } else {
        const uint16_t* src = w_bf16 + static_cast<int64_t>(ids[r]) * D;
        for (int64_t d = 0; d < D; ++d) {
          uint32_t u = static_cast<uint32_t>(src[d]) << 16;
          std::memcpy(o + d, &u, 4);
        }
      }
    }
  });
  return -1;
}

void embedding_backward(const float* dout, const int32_t* ids, int64_t rows, int64_t D, float* dw) {
  // parallel over the embedding dimension: every thread visits all rows in order (deterministic)
  parallel_for(D, 16, [&](long d0, long d1) {
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = dw + static_cast<int64_t>(ids[r]) * D;
      const float* src = dout + r * D;
      for (long d = d0; d < d1; ++d) dst[d] += src[d];
    }
  });
}

}  // namespace peft
