// Scaled dot-product attention with grouped-query heads, causal / padding / segment / additive
// masks, one head's scores live per thread (query blocks of QB rows), and a FlashAttention-style
// backward that recomputes probabilities from the saved log-sum-exp.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../gemm/gemm.h"
#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"

namespace peft {
namespace {

constexpr int64_t QB = 64;  // query rows per block
const float kNegInf = -std::numeric_limits<float>::infinity();

thread_local std::vector<float> s_buf, dp_buf, tf_buf;

// Number of keys any query in [i0, i1) can see (causal bound), i.e. the key range [0, kend).
inline int64_t key_end(const AttentionShape& s, int64_t i1) {
  if (!s.causal) return s.Tk;
  int64_t e = (s.Tk - s.Tq) + i1;
  return e < 0 ? 0 : (e > s.Tk ? s.Tk : e);
}

// S[i, j] = scale * q_i . k_j for the block, then the mask (invisible entries set to -inf).
void block_scores(const AttentionShape& s, const float* q, const float* k, int64_t b, int64_t h, int64_t kvh,
                  int64_t i0, int64_t rows, int64_t kend, float* S) {
  const float* qa = q + (b * s.Tq + i0) * s.q_stride + h * s.D;
  const float* ka = k + (b * s.Tk) * s.k_stride + kvh * s.D;
  sgemm(false, true, rows, kend, s.D, s.scale, qa, s.q_stride, ka, s.k_stride, 0.f, S, kend, false);
  const int64_t off = s.Tk - s.Tq;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t i = i0 + r;
    float* Sr = S + r * kend;
    if (s.softcap > 0.f) {
      const float inv = 1.f / s.softcap;
      for (int64_t j = 0; j < kend; ++j) Sr[j] = s.softcap * std::tanh(Sr[j] * inv);
    }
    if (s.window > 0) {
      int64_t first = off + i - s.window + 1;  // keys j < first are outside the window
      for (int64_t j = 0; j < kend && j < first; ++j) Sr[j] = kNegInf;
    }
    if (s.causal) {
      int64_t lim = off + i;  // keys j > lim are in the future
      for (int64_t j = (lim + 1 < 0 ? 0 : lim + 1); j < kend; ++j) Sr[j] = kNegInf;
    }
    if (s.key_mask) {
      const uint8_t* km = s.key_mask + b * s.Tk;
      for (int64_t j = 0; j < kend; ++j) Sr[j] = km[j] ? Sr[j] : kNegInf;
    }
    if (s.q_seg) {
      int32_t sq = s.q_seg[b * s.Tq + i];
      const int32_t* ks = s.k_seg + b * s.Tk;
      for (int64_t j = 0; j < kend; ++j) if (ks[j] >= 0 && ks[j] != sq) Sr[j] = kNegInf;  // k_seg < 0: shared (e.g. prefix)
    }
    if (s.add_mask) {
      const float* am = s.add_mask + (s.add_mask_batched ? b * s.Tq * s.Tk : 0) + i * s.Tk;
      for (int64_t j = 0; j < kend; ++j) Sr[j] += am[j];
    }
  }
}

// Runs task(index) for index in [0, n) on the pool with dynamic scheduling.
template <typename F>
void run_tasks(int64_t n, F task) {
  std::atomic<int64_t> next{0};
  int threads = static_cast<int>(n < num_threads() ? n : num_threads());
  parallel_run(threads < 1 ? 1 : threads, [&](int, int) {
    for (;;) {
      int64_t t = next.fetch_add(1);
      if (t >= n) break;
      task(t);
    }
  });
}

}  // namespace

void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                       float* lse) {
  const int64_t G = s.Hq / s.Hkv;
  const RowOps& ro = row_ops();
  run_tasks(s.B * s.Hq, [&](int64_t task) {
    int64_t b = task / s.Hq, h = task % s.Hq, kvh = h / G;
    for (int64_t i0 = 0; i0 < s.Tq; i0 += QB) {
      int64_t rows = std::min<int64_t>(QB, s.Tq - i0);
      int64_t kend = key_end(s, i0 + rows);
      float* o = out + (b * s.Tq + i0) * s.o_stride + h * s.D;
      if (kend == 0) {
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t d = 0; d < s.D; ++d) o[r * s.o_stride + d] = 0.f;
          if (lse) lse[(b * s.Hq + h) * s.Tq + i0 + r] = kNegInf;
        }
        continue;
      }
      if (static_cast<int64_t>(s_buf.size()) < rows * kend) s_buf.resize(rows * kend);
      float* S = s_buf.data();
      block_scores(s, q, k, b, h, kvh, i0, rows, kend, S);
      for (int64_t r = 0; r < rows; ++r) {
        float* Sr = S + r * kend;
        float mx = ro.max(Sr, kend);
        float l;
        if (mx == kNegInf) {  // no visible key: zero output
          for (int64_t j = 0; j < kend; ++j) Sr[j] = 0.f;
          l = kNegInf;
        } else {
          float sum = ro.exp_sub_sum(Sr, kend, mx);
          ro.scale(Sr, kend, 1.0f / sum);
          l = mx + std::log(sum);
        }
        if (lse) lse[(b * s.Hq + h) * s.Tq + i0 + r] = l;
      }
      const float* va = v + (b * s.Tk) * s.v_stride + kvh * s.D;
      sgemm(false, false, rows, s.D, kend, 1.f, S, kend, va, s.v_stride, 0.f, o, s.o_stride, false);
    }
  });
}

void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
  const int64_t G = s.Hq / s.Hkv;
  const RowOps& ro = row_ops();
  // one task per (batch, kv head): it owns dk/dv of that head and dq of its query heads
  run_tasks(s.B * s.Hkv, [&](int64_t task) {
    int64_t b = task / s.Hkv, kvh = task % s.Hkv;
    const float* ka = k + (b * s.Tk) * s.k_stride + kvh * s.D;
    const float* va = v + (b * s.Tk) * s.v_stride + kvh * s.D;
    float* dka = dk ? dk + (b * s.Tk) * s.k_stride + kvh * s.D : nullptr;
    float* dva = dv ? dv + (b * s.Tk) * s.v_stride + kvh * s.D : nullptr;
    for (int64_t g = 0; g < G; ++g) {
      int64_t h = kvh * G + g;
      for (int64_t i0 = 0; i0 < s.Tq; i0 += QB) {
        int64_t rows = std::min<int64_t>(QB, s.Tq - i0);
        int64_t kend = key_end(s, i0 + rows);
        if (kend == 0) continue;
        if (static_cast<int64_t>(s_buf.size()) < rows * kend) s_buf.resize(rows * kend);
        if (static_cast<int64_t>(dp_buf.size()) < rows * kend) dp_buf.resize(rows * kend);
        float* P = s_buf.data();
        float* dP = dp_buf.data();
        block_scores(s, q, k, b, h, kvh, i0, rows, kend, P);
        float* Tf = nullptr;  // soft-capping: d(capped)/d(raw) = 1 - (capped / cap)^2, from the capped scores
        if (s.softcap > 0.f) {
          if (static_cast<int64_t>(tf_buf.size()) < rows * kend) tf_buf.resize(rows * kend);
          Tf = tf_buf.data();
          const float inv = 1.f / s.softcap;
          for (int64_t e = 0; e < rows * kend; ++e) {
            float t = P[e] * inv;
            Tf[e] = std::isfinite(t) ? 1.f - t * t : 0.f;
          }
        }
        const float* lrow = lse + (b * s.Hq + h) * s.Tq + i0;
        for (int64_t r = 0; r < rows; ++r) {
          float* Pr = P + r * kend;
          float l = lrow[r];
          if (l == kNegInf) {
            for (int64_t j = 0; j < kend; ++j) Pr[j] = 0.f;
          } else {
            ro.exp_sub_sum(Pr, kend, l);
          }
        }
        const float* qa = q + (b * s.Tq + i0) * s.q_stride + h * s.D;
        const float* oa = out + (b * s.Tq + i0) * s.o_stride + h * s.D;
        const float* doa = dout + (b * s.Tq + i0) * s.o_stride + h * s.D;
        // dV += P^T dO
        if (dva) sgemm(true, false, kend, s.D, rows, 1.f, P, kend, doa, s.o_stride, 1.f, dva, s.v_stride, false);
        if (!dq && !dka) continue;
        // dP = dO V^T
        sgemm(false, true, rows, kend, s.D, 1.f, doa, s.o_stride, va, s.v_stride, 0.f, dP, kend, false);
        // dS = P * (dP - rowsum(dO * O)), stored in dP
        for (int64_t r = 0; r < rows; ++r) {
          const float* o_r = oa + r * s.o_stride;
          const float* do_r = doa + r * s.o_stride;
          double di = 0;
          for (int64_t d = 0; d < s.D; ++d) di += static_cast<double>(o_r[d]) * do_r[d];
          float dif = static_cast<float>(di);
          float* Pr = P + r * kend;
          float* dPr = dP + r * kend;
          for (int64_t j = 0; j < kend; ++j) dPr[j] = Pr[j] * (dPr[j] - dif);
          if (Tf) {
            const float* Tr = Tf + r * kend;
            for (int64_t j = 0; j < kend; ++j) dPr[j] *= Tr[j];
          }
        }
        // dQ += scale * dS K ; dK += scale * dS^T Q
        if (dq) {
          float* dqa = dq + (b * s.Tq + i0) * s.q_stride + h * s.D;
          sgemm(false, false, rows, s.D, kend, s.scale, dP, kend, ka, s.k_stride, 1.f, dqa, s.q_stride, false);
        }
        if (dka) sgemm(true, false, kend, s.D, rows, s.scale, dP, kend, qa, s.q_stride, 1.f, dka, s.k_stride, false);
      }
    }
  });
}

}  // namespace peft
