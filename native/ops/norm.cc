// RMSNorm and LayerNorm, forward and backward. RMSNorm rows run through the vectorised row kernels
// (float32 lane reductions, rowops.h); LayerNorm and the weight gradients reduce in float64.
#include <cmath>
#include <vector>

#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"

namespace peft {

void rmsnorm_forward(const float* x, const float* w, int64_t rows, int64_t D, float eps, float* y,
                     float* rstd) {
  const RowOps& ro = row_ops();
  parallel_for(rows, 16, [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      float rs = ro.rmsnorm_fwd_row(x + r * D, w, D, eps, y + r * D);
      if (rstd) rstd[r] = rs;
    }
  });
}

// Runs body(r0, r1, partial) over row chunks with one zeroed `width`-float partial per thread, then
// adds the partials into out in thread order (deterministic for a given thread count).
template <typename F>
static void rows_with_partials(int64_t rows, int64_t width, float* out, F body) {
  const int nt = slots(rows, 32);
  std::vector<std::vector<double>> partial(nt);
  run_slots(rows, nt, [&](long r0, long r1, int slot) {
    std::vector<double> p(out ? width : 0, 0.0);
    body(r0, r1, out ? p.data() : nullptr);
    partial[slot] = std::move(p);
  });
  if (!out) return;
  for (int t = 0; t < nt; ++t) {
    if (partial[t].empty()) continue;
    for (int64_t d = 0; d < width; ++d) out[d] += static_cast<float>(partial[t][d]);
  }
}

void rmsnorm_backward(const float* dy, const float* x, const float* w, const float* rstd, int64_t rows,
                      int64_t D, float* dx, float* dw) {
  const RowOps& ro = row_ops();
  rows_with_partials(rows, D, dw, [&](long r0, long r1, double* pdw) {
    for (long r = r0; r < r1; ++r) {
      const float* xr = x + r * D;
      const float* dyr = dy + r * D;
      float rs = rstd[r];
      if (pdw)
        for (int64_t d = 0; d < D; ++d) pdw[d] += static_cast<double>(dyr[d]) * xr[d] * rs;
      if (dx) ro.rmsnorm_bwd_row(dyr, xr, w, rs, D, dx + r * D);
    }
  });
}

void layernorm_forward(const float* x, const float* w, const float* b, int64_t rows, int64_t D,
                       float eps, float* y, float* mean, float* rstd) {
  parallel_for(rows, 16, [&](long r0, long r1) {
    for (long r = r0; r < r1; ++r) {
      const float* xr = x + r * D;
      float* yr = y + r * D;
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += xr[d];
      float mu = static_cast<float>(s / D);
      double ss = 0;
      for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d] - mu) * (xr[d] - mu);
      float rs = 1.0f / std::sqrt(static_cast<float>(ss / D) + eps);
      if (mean) mean[r] = mu;
      if (rstd) rstd[r] = rs;
      for (int64_t d = 0; d < D; ++d) {
        float v = (xr[d] - mu) * rs;
        yr[d] = (w ? w[d] : 1.f) * v + (b ? b[d] : 0.f);
      }
    }
  });
}

void layernorm_backward(const float* dy, const float* x, const float* w, const float* mean,
                        const float* rstd, int64_t rows, int64_t D, float* dx, float* dw, float* db) {
  // dw and db share one partial buffer of width 2D
  std::vector<float> wb((dw || db) ? 2 * D : 0, 0.f);
  rows_with_partials(rows, 2 * D, (dw || db) ? wb.data() : nullptr, [&](long r0, long r1, double* p) {
    for (long r = r0; r < r1; ++r) {
      const float* xr = x + r * D;
      const float* dyr = dy + r * D;
      float mu = mean[r], rs = rstd[r];
      double s1 = 0, s2 = 0;
      for (int64_t d = 0; d < D; ++d) {
        float xh = (xr[d] - mu) * rs;
        float g = dyr[d] * (w ? w[d] : 1.f);
        s1 += g;
        s2 += static_cast<double>(g) * xh;
        if (p) {
          p[d] += static_cast<double>(dyr[d]) * xh;
          p[D + d] += dyr[d];
        }
      }
      if (dx) {
        float m1 = static_cast<float>(s1 / D), m2 = static_cast<float>(s2 / D);
        float* dxr = dx + r * D;
        for (int64_t d = 0; d < D; ++d) {
          float xh = (xr[d] - mu) * rs;
          float g = dyr[d] * (w ? w[d] : 1.f);
          dxr[d] += rs * (g - m1 - xh * m2);
        }
      }
    }
  });
  if (dw) for (int64_t d = 0; d < D; ++d) dw[d] += wb[d];
  if (db) for (int64_t d = 0; d < D; ++d) db[d] += wb[D + d];
}

}  // namespace peft
