// Pointwise activations (SiLU, GELU tanh/exact, ReLU) and the SwiGLU product, forward and backward.
#include <cmath>

#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"

namespace peft {
namespace {

constexpr long kGrain = 16384;
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluC = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

inline float act(Act a, float x) {
  switch (a) {
    case Act::Silu: return x * sigmoid(x);
    case Act::GeluTanh: return 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + kGeluC * x * x * x)));
    case Act::GeluExact: return 0.5f * x * (1.f + std::erf(x * kInvSqrt2));
    case Act::Relu: return (x > 0.f || x != x) ? x : 0.f;  // relu(NaN) = NaN, as torch
    case Act::Identity: return x;
  }
  return x;
}

inline float act_grad(Act a, float x) {
  switch (a) {
    case Act::Silu: {
      float s = sigmoid(x);
      return s * (1.f + x * (1.f - s));
    }
    case Act::GeluTanh: {
      float u = kSqrt2OverPi * (x + kGeluC * x * x * x);
      float t = std::tanh(u);
      float du = kSqrt2OverPi * (1.f + 3.f * kGeluC * x * x);
      return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
    }
    case Act::GeluExact:
      return 0.5f * (1.f + std::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * std::exp(-0.5f * x * x);
    case Act::Relu: return x > 0.f ? 1.f : 0.f;
    case Act::Identity: return 1.f;
  }
  return 1.f;
}

}  // namespace

void act_forward(Act a, const float* x, float* y, int64_t n) {
  parallel_for(n, kGrain, [&](long b, long e) {
    for (long i = b; i < e; ++i) y[i] = act(a, x[i]);
  });
}

void act_backward(Act a, const float* x, const float* dy, float* dx, int64_t n) {
  parallel_for(n, kGrain, [&](long b, long e) {
    for (long i = b; i < e; ++i) dx[i] += dy[i] * act_grad(a, x[i]);
  });
}

// SwiGLU runs through the vectorised row kernels of the kernel level in use (rowops.h).
void swiglu_forward(const float* g, const float* u, float* y, int64_t n) {
  const RowOps& ro = row_ops();
  parallel_for(n, kGrain, [&](long b, long e) { ro.swiglu_fwd(g + b, u + b, y + b, e - b); });
}

void swiglu_backward(const float* g, const float* u, const float* dy, float* dg, float* du, int64_t n) {
  const RowOps& ro = row_ops();
  parallel_for(n, kGrain, [&](long b, long e) {
    ro.swiglu_bwd(g + b, u + b, dy + b, dg ? dg + b : nullptr, du ? du + b : nullptr, e - b);
  });
}

}  // namespace peft
