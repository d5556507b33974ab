// Elementwise helpers used by the autograd layer (residual adds, scaling, broadcasts, reductions,
// dropout).
#include <cstring>
#include <vector>

#include "../threadpool.h"
#include "ops.h"

namespace peft {
namespace {
constexpr long kGrain = 32768;

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
}  // namespace

void add(const float* a, const float* b, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](long s, long e) { for (long i = s; i < e; ++i) out[i] = a[i] + b[i]; });
}
void axpy(float alpha, const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](long s, long e) { for (long i = s; i < e; ++i) y[i] += alpha * x[i]; });
}
void scale(const float* x, float alpha, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](long s, long e) { for (long i = s; i < e; ++i) out[i] = alpha * x[i]; });
}
void mul(const float* a, const float* b, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](long s, long e) { for (long i = s; i < e; ++i) out[i] = a[i] * b[i]; });
}
void mul_acc(const float* a, const float* b, float* out, int64_t n) {
  parallel_for(n, kGrain, [&](long s, long e) { for (long i = s; i < e; ++i) out[i] += a[i] * b[i]; });
}
void mul_row(const float* x, const float* w, float* out, int64_t rows, int64_t D, bool accumulate) {
  parallel_for(rows, kGrain / (D > 0 ? D : 1) + 1, [&](long s, long e) {
    for (long r = s; r < e; ++r) {
      const float* xr = x + r * D;
      float* o = out + r * D;
      if (accumulate) for (int64_t d = 0; d < D; ++d) o[d] += xr[d] * w[d];
      else for (int64_t d = 0; d < D; ++d) o[d] = xr[d] * w[d];
    }
  });
}
void add_row(float* x, const float* b, int64_t rows, int64_t D) {
  parallel_for(rows, kGrain / (D > 0 ? D : 1) + 1, [&](long s, long e) {
    for (long r = s; r < e; ++r) {
      float* xr = x + r * D;
      for (int64_t d = 0; d < D; ++d) xr[d] += b[d];
    }
  });
}
void sum_rows(const float* a, const float* b, float* out, int64_t rows, int64_t D) {
  // per-thread float64 partials, reduced in thread order (deterministic)
  const int nt = slots(rows * D, 4 * kGrain);
  std::vector<std::vector<double>> part(nt);
  run_slots(rows, nt, [&](long s, long e, int slot) {
    std::vector<double> p(D, 0.0);
    for (long r = s; r < e; ++r) {
      const float* ar = a + r * D;
      if (b) {
        const float* br = b + r * D;
        for (int64_t d = 0; d < D; ++d) p[d] += static_cast<double>(ar[d]) * br[d];
      } else {
        for (int64_t d = 0; d < D; ++d) p[d] += ar[d];
      }
    }
    part[slot] = std::move(p);
  });
  for (int t = 0; t < nt; ++t)
    if (!part[t].empty()) for (int64_t d = 0; d < D; ++d) out[d] += static_cast<float>(part[t][d]);
}
double sum_squares(const float* x, int64_t n) {
  const int nt = slots(n, 4 * kGrain);
  std::vector<double> part(nt, 0.0);
  run_slots(n, nt, [&](long s, long e, int slot) {
    double acc = 0;
    for (long i = s; i < e; ++i) acc += static_cast<double>(x[i]) * x[i];
    part[slot] = acc;
  });
  double total = 0;
  for (double p : part) total += p;
  return total;
}
// keep decision of element i: a counter-based hash of (seed, i), so backward regenerates the mask
static inline bool dropout_keep(uint64_t base, int64_t i, float p) {
  float u = static_cast<float>(splitmix64(base + static_cast<uint64_t>(i)) >> 40) * (1.0f / 16777216.0f);
  return u >= p;
}

void dropout_forward(const float* x, float* out, int64_t n, float p, uint64_t seed) {
  const float inv = p < 1.f ? 1.f / (1.f - p) : 0.f;
  const uint64_t base = splitmix64(seed);
  parallel_for(n, kGrain, [&](long s, long e) {
    for (long i = s; i < e; ++i) out[i] = dropout_keep(base, i, p) ? x[i] * inv : 0.f;
  });
}
void dropout_backward(const float* dy, float* dx, int64_t n, float p, uint64_t seed) {
  const float inv = p < 1.f ? 1.f / (1.f - p) : 0.f;
  const uint64_t base = splitmix64(seed);
  parallel_for(n, kGrain, [&](long s, long e) {
    for (long i = s; i < e; ++i) if (dropout_keep(base, i, p)) dx[i] += dy[i] * inv;
  });
}

}  // namespace peft
