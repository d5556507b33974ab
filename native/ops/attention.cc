// Scaled dot-product attention with grouped-query heads, causal / padding / segment / additive
// masks, one head's scores live per thread (query blocks of QB rows), and a FlashAttention-style
// backward that recomputes probabilities from the saved log-sum-exp.
//
// Two paths compute the same blocks: the general one calls sgemm for the five block products;
// on the avx512 kernel level with head_dim 64 and no soft-capping, the products run in the
// register kernels of attention_avx512.cc (no packing; K and V transposed once per task) and the
// forward pass is split into (batch, kv head, query block) tasks that share one Kᵀ panel.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu_features.h"
#include "../gemm/gemm.h"
#include "../threadpool.h"
#include "ops.h"
#include "rowops_api.h"
#if defined(__x86_64__)
#include "attention_kernels.h"
#endif

namespace peft {
namespace {

constexpr int64_t QB = 64;  // query rows per block
const float kNegInf = -std::numeric_limits<float>::infinity();

thread_local std::vector<float> s_buf, dp_buf, tf_buf, kt_buf, vt_buf, di_buf;

// Number of keys any query in [i0, i1) can see (causal bound), i.e. the key range [0, kend).
inline int64_t key_end(const AttentionShape& s, int64_t i1) {
  if (!s.causal) return s.Tk;
  int64_t e = (s.Tk - s.Tq) + i1;
  return e < 0 ? 0 : (e > s.Tk ? s.Tk : e);
}

void apply_masks(const AttentionShape& s, int64_t b, int64_t i0, int64_t rows, int64_t kend, float* S);

// S[i, j] = scale * q_i . k_j for the block, then the mask (invisible entries set to -inf).
void block_scores(const AttentionShape& s, const float* q, const float* k, int64_t b, int64_t h, int64_t kvh,
                  int64_t i0, int64_t rows, int64_t kend, float* S) {
  const float* qa = q + (b * s.Tq + i0) * s.q_stride + h * s.D;
  const float* ka = k + (b * s.Tk) * s.k_stride + kvh * s.D;
  sgemm(false, true, rows, kend, s.D, s.scale, qa, s.q_stride, ka, s.k_stride, 0.f, S, kend, false);
  apply_masks(s, b, i0, rows, kend, S);
}

// Soft-capping, then every mask of the shape on the block's scores S [rows, kend] (query rows
// i0.., keys 0..kend): invisible entries become -inf.
void apply_masks(const AttentionShape& s, int64_t b, int64_t i0, int64_t rows, int64_t kend, float* S) {
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

// Rows of S [rows, kend] become softmax probabilities; lse_row[r] (may be null) = log-sum-exp, -inf
// (and a zero row) where no key is visible.
void softmax_rows(const RowOps& ro, float* S, int64_t rows, int64_t kend, float* lse_row) {
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
    if (lse_row) lse_row[r] = l;
  }
}

// P = exp(S - lse) in place (the probabilities of the forward pass; rows with lse = -inf are 0)
void probs_from_lse(const RowOps& ro, float* P, int64_t rows, int64_t kend, const float* lrow) {
  for (int64_t r = 0; r < rows; ++r) {
    float* Pr = P + r * kend;
    if (lrow[r] == kNegInf) {
      for (int64_t j = 0; j < kend; ++j) Pr[j] = 0.f;
    } else {
      ro.exp_sub_sum(Pr, kend, lrow[r]);
    }
  }
}

// dS = P * (dP - rowsum(dO * O)) into dP (then times the soft-capping derivative Tf when given)
void block_dscores(const AttentionShape& s, const float* P, float* dP, const float* Tf, const float* oa,
                   const float* doa, int64_t rows, int64_t kend) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* o_r = oa + r * s.o_stride;
    const float* do_r = doa + r * s.o_stride;
    double di = 0;
    for (int64_t d = 0; d < s.D; ++d) di += static_cast<double>(o_r[d]) * do_r[d];
    float dif = static_cast<float>(di);
    const float* Pr = P + r * kend;
    float* dPr = dP + r * kend;
    for (int64_t j = 0; j < kend; ++j) dPr[j] = Pr[j] * (dPr[j] - dif);
    if (Tf) {
      const float* Tr = Tf + r * kend;
      for (int64_t j = 0; j < kend; ++j) dPr[j] *= Tr[j];
    }
  }
}

// Xt[d, j] = X[j, d] for j < n, d < D (X row stride ldx, Xt row stride n), in 8-row strips
void transpose_rows(const float* X, int64_t ldx, int64_t n, int64_t D, float* Xt) {
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    const int64_t j1 = j0 + 8 < n ? j0 + 8 : n;
    for (int64_t d = 0; d < D; ++d)
      for (int64_t j = j0; j < j1; ++j) Xt[d * n + j] = X[j * ldx + d];
  }
}

inline float* grow(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// The register-kernel path: avx512 level, head_dim 64, no soft-capping (x86-64 only).
inline bool fast_path(const AttentionShape& s) {
#if defined(__x86_64__)
  return s.D == 64 && s.softcap <= 0.f && kernel_level() == KernelLevel::Avx512;
#else
  (void)s;
  return false;
#endif
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

#if defined(__x86_64__)
namespace {

void attention_forward_d64(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                           float* lse) {
  const int64_t G = s.Hq / s.Hkv, nb = (s.Tq + QB - 1) / QB, bk = s.B * s.Hkv;
  const RowOps& ro = row_ops();
  // one task per (batch, kv head, query block), the longest (last) blocks first
  run_tasks(bk * nb, [&](int64_t task) {
    const int64_t blk = nb - 1 - task / bk, b = (task % bk) / s.Hkv, kvh = task % s.Hkv;
    const int64_t i0 = blk * QB, rows = std::min<int64_t>(QB, s.Tq - i0), kend = key_end(s, i0 + rows);
    if (kend == 0) {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = kvh * G + g;
        for (int64_t r = 0; r < rows; ++r) {
          float* o = out + (b * s.Tq + i0 + r) * s.o_stride + h * s.D;
          for (int64_t d = 0; d < s.D; ++d) o[d] = 0.f;
          if (lse) lse[(b * s.Hq + h) * s.Tq + i0 + r] = kNegInf;
        }
      }
      return;
    }
    float* Kt = grow(kt_buf, s.D * kend);
    transpose_rows(k + (b * s.Tk) * s.k_stride + kvh * s.D, s.k_stride, kend, s.D, Kt);
    float* S = grow(s_buf, rows * kend);
    const float* va = v + (b * s.Tk) * s.v_stride + kvh * s.D;
    const int64_t diag = s.causal ? (s.Tk - s.Tq) + i0 : attn_avx512::kAllVisible;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      attn_avx512::abt(rows, kend, s.scale, q + (b * s.Tq + i0) * s.q_stride + h * s.D, s.q_stride, Kt, kend, S, kend,
                       diag);
      apply_masks(s, b, i0, rows, kend, S);
      softmax_rows(ro, S, rows, kend, lse ? lse + (b * s.Hq + h) * s.Tq + i0 : nullptr);
      attn_avx512::ab(rows, kend, 1.f, S, kend, va, s.v_stride, 0.f, out + (b * s.Tq + i0) * s.o_stride + h * s.D,
                      s.o_stride, diag);
    }
  });
}

void attention_backward_d64(const AttentionShape& s, const float* q, const float* k, const float* v,
                            const float* out, const float* lse, const float* dout, float* dq, float* dk,
                            float* dv) {
  const int64_t G = s.Hq / s.Hkv;
  const RowOps& ro = row_ops();
  // only the causal limit masks keys: probabilities come straight out of the score kernel
  const bool causal_only = !s.key_mask && !s.q_seg && !s.add_mask && s.window <= 0;
  run_tasks(s.B * s.Hkv, [&](int64_t task) {
    const int64_t b = task / s.Hkv, kvh = task % s.Hkv;
    const float* ka = k + (b * s.Tk) * s.k_stride + kvh * s.D;
    const float* va = v + (b * s.Tk) * s.v_stride + kvh * s.D;
    float* dka = dk ? dk + (b * s.Tk) * s.k_stride + kvh * s.D : nullptr;
    float* dva = dv ? dv + (b * s.Tk) * s.v_stride + kvh * s.D : nullptr;
    const int64_t kmax = key_end(s, s.Tq);
    if (kmax == 0) return;
    float* Kt = grow(kt_buf, s.D * kmax);
    float* Vt = grow(vt_buf, s.D * kmax);
    transpose_rows(ka, s.k_stride, kmax, s.D, Kt);
    transpose_rows(va, s.v_stride, kmax, s.D, Vt);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kvh * G + g;
      for (int64_t i0 = 0; i0 < s.Tq; i0 += QB) {
        const int64_t rows = std::min<int64_t>(QB, s.Tq - i0), kend = key_end(s, i0 + rows);
        if (kend == 0) continue;
        float* P = grow(s_buf, rows * kend);
        float* dP = grow(dp_buf, rows * kend);
        const float* qa = q + (b * s.Tq + i0) * s.q_stride + h * s.D;
        const float* oa = out + (b * s.Tq + i0) * s.o_stride + h * s.D;
        const float* doa = dout + (b * s.Tq + i0) * s.o_stride + h * s.D;
        const int64_t diag = s.causal ? (s.Tk - s.Tq) + i0 : attn_avx512::kAllVisible;
        const float* lrow = lse + (b * s.Hq + h) * s.Tq + i0;
        if (causal_only) {
          attn_avx512::abt_exp(rows, kend, s.scale, qa, s.q_stride, Kt, kmax, P, kend, diag, lrow);
        } else {
          attn_avx512::abt(rows, kend, s.scale, qa, s.q_stride, Kt, kmax, P, kend, diag);
          apply_masks(s, b, i0, rows, kend, P);
          probs_from_lse(ro, P, rows, kend, lrow);
        }
        if (dva) attn_avx512::atb(rows, kend, 1.f, P, kend, doa, s.o_stride, dva, s.v_stride, diag);  // dV += Pᵀ dO
        if (!dq && !dka) continue;
        float* di = grow(di_buf, rows);  // rowsum(dO ∘ O)
        for (int64_t r = 0; r < rows; ++r) {
          double acc = 0;
          for (int64_t d = 0; d < s.D; ++d) acc += static_cast<double>(oa[r * s.o_stride + d]) * doa[r * s.o_stride + d];
          di[r] = static_cast<float>(acc);
        }
        // dS = P ∘ (dO Vᵀ − di), into dP
        attn_avx512::abt_dscore(rows, kend, doa, s.o_stride, Vt, kmax, dP, kend, diag, P, di);
        if (dq)  // dQ += scale · dS K
          attn_avx512::ab(rows, kend, s.scale, dP, kend, ka, s.k_stride, 1.f,
                          dq + (b * s.Tq + i0) * s.q_stride + h * s.D, s.q_stride, diag);
        if (dka) attn_avx512::atb(rows, kend, s.scale, dP, kend, qa, s.q_stride, dka, s.k_stride, diag);  // dK += scale · dSᵀ Q
      }
    }
  });
}

}  // namespace
#endif

void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v, float* out,
                       float* lse) {
#if defined(__x86_64__)
  if (fast_path(s)) return attention_forward_d64(s, q, k, v, out, lse);
#endif
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
      softmax_rows(ro, S, rows, kend, lse ? lse + (b * s.Hq + h) * s.Tq + i0 : nullptr);
      const float* va = v + (b * s.Tk) * s.v_stride + kvh * s.D;
      sgemm(false, false, rows, s.D, kend, 1.f, S, kend, va, s.v_stride, 0.f, o, s.o_stride, false);
    }
  });
}

void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk,
                        float* dv) {
#if defined(__x86_64__)
  if (fast_path(s)) return attention_backward_d64(s, q, k, v, out, lse, dout, dq, dk, dv);
#endif
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
        probs_from_lse(ro, P, rows, kend, lse + (b * s.Hq + h) * s.Tq + i0);
        const float* qa = q + (b * s.Tq + i0) * s.q_stride + h * s.D;
        const float* oa = out + (b * s.Tq + i0) * s.o_stride + h * s.D;
        const float* doa = dout + (b * s.Tq + i0) * s.o_stride + h * s.D;
        // dV += P^T dO
        if (dva) sgemm(true, false, kend, s.D, rows, 1.f, P, kend, doa, s.o_stride, 1.f, dva, s.v_stride, false);
        if (!dq && !dka) continue;
        // dP = dO V^T
        sgemm(false, true, rows, kend, s.D, 1.f, doa, s.o_stride, va, s.v_stride, 0.f, dP, kend, false);
        block_dscores(s, P, dP, Tf, oa, doa, rows, kend);  // dS = P * (dP - rowsum(dO * O)), in dP
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
