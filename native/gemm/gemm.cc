// GEMM driver: blocking, packing (float32 / bfloat16 / 4-bit weight sources) and threading.
#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "../cpu_features.h"
#include "../threadpool.h"
#include "kernel_amx.h"
#include "kernels.h"

namespace peft {
namespace {

// Blocking (overridable at compile time for tuning: -DPEFT_GEMM_KC=… etc.). 6x16 kernels: tuned
// on Zen 3 (32 KiB L1d / 512 KiB L2) with bench/gemm.ts; 14x32 AVX-512: tuned on Zen 4 (32 KiB L1d,
// 1 MiB L2); the Intel 14x32 variant (PEFT_GEMM512I_*): tuned on a Sapphire-Rapids-class Xeon
// (48 KiB L1d, 2 MiB L2), where one K block up to 640 (K = 576 in one pass, 1024 as 2 x 512) beats
// keeping the KC x 32 B micro-panel in L1: C is then read and written once per 640 of K instead of
// once per 256, and the B micro-panel streams from L2 behind the hardware prefetcher.
#ifndef PEFT_GEMM_KC
#define PEFT_GEMM_KC 384
#endif
#ifndef PEFT_GEMM_MC
#define PEFT_GEMM_MC 96
#endif
#ifndef PEFT_GEMM_NC
#define PEFT_GEMM_NC 2048
#endif
#ifndef PEFT_GEMM512_KC
#define PEFT_GEMM512_KC 256
#endif
#ifndef PEFT_GEMM512_MC
#define PEFT_GEMM512_MC 168
#endif
#ifndef PEFT_GEMM512_NC
#define PEFT_GEMM512_NC 2048
#endif
#ifndef PEFT_GEMM512I_KC
#define PEFT_GEMM512I_KC 640
#endif
#ifndef PEFT_GEMM512I_MC
#define PEFT_GEMM512I_MC 168
#endif
#ifndef PEFT_GEMM512I_NC
#define PEFT_GEMM512I_NC 2048
#endif

const GemmKernels kGeneric = {"generic-6x16", micro_kernel_generic, pack_rows_transposed_generic,
                              widen_bf16_generic, decode_q4_generic, PEFT_GEMM_KC, PEFT_GEMM_MC, PEFT_GEMM_NC};
#if defined(__x86_64__) || defined(__i386__)
const GemmKernels kAvx2 = {"avx2-fma-6x16", micro_kernel_avx2, pack_rows_transposed_avx2,
                           widen_bf16_generic, decode_q4_generic, PEFT_GEMM_KC, PEFT_GEMM_MC, PEFT_GEMM_NC};
const GemmKernels kAvx512 = {"avx512-14x32", micro_kernel_avx512, pack_rows_transposed_avx512,
                             widen_bf16_avx512, decode_q4_avx512, PEFT_GEMM512_KC, PEFT_GEMM512_MC,
                             PEFT_GEMM512_NC};
const GemmKernels kAvx512Bcast = {"avx512-14x32-bcast", micro_kernel_avx512_bcast, pack_rows_transposed_avx512,
                                  widen_bf16_avx512, decode_q4_avx512, PEFT_GEMM512I_KC, PEFT_GEMM512I_MC,
                                  PEFT_GEMM512I_NC};

// Which 14x32 variant: the register-broadcast one on Intel, the embedded-broadcast one elsewhere
// (Zen 4, where it was tuned); PEFT_AVX512_BCAST=1|0 forces one (tests run both on any machine).
bool avx512_bcast_variant() {
  const char* e = std::getenv("PEFT_AVX512_BCAST");
  if (e && !std::strcmp(e, "1")) return true;
  if (e && !std::strcmp(e, "0")) return false;
  return cpu_features().intel;
}
bool is_avx512(const GemmKernels& ks) { return &ks == &kAvx512 || &ks == &kAvx512Bcast; }
#endif

const GemmKernels& kernels() {
  static const GemmKernels* k = [] {
#if defined(__x86_64__) || defined(__i386__)
    switch (kernel_level()) {
      case KernelLevel::Avx512: return avx512_bcast_variant() ? &kAvx512Bcast : &kAvx512;
      case KernelLevel::Avx2: return &kAvx2;
      default: break;
    }
#endif
    return &kGeneric;
  }();
  return *k;
}

// 64-byte aligned scratch buffer owned by each thread, grown on demand.
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
  float* get(size_t count) {
    if (count > n) {
      std::free(p);
      size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      n = p ? count : 0;
      if (!p) std::abort();
    }
    return p;
  }
};

thread_local Scratch a_scratch, b_scratch, row_scratch, ct_scratch;

// The blocked algorithm for one micro-tile shape.
template <int MR, int NR>
struct Blocked {
  // Packs op(B)[k0:k0+kc, j0:j0+nc] into NR-column micro-panels (zero-padded), panel p at dst + p*kc*NR.
  static void pack_b(const GemmKernels& ks, const WeightRef& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc,
                     float* dst) {
    if (!B.trans) {
      // op(B) = the stored K x N matrix: walk it row by row (each row segment is contiguous, so the
      // reads stream through memory and the TLB) and deal each row's 32-column pieces to the panels
      const int64_t full = nc / NR * NR;
      if (full < nc) std::memset(dst + (full / NR) * kc * NR, 0, sizeof(float) * kc * NR);
      for (int64_t k = 0; k < kc; ++k) {
        float* d = dst + k * NR;
        for (int64_t jp = 0; jp < nc; jp += NR, d += kc * NR) {
          int64_t j = j0 + jp, nr = std::min<int64_t>(NR, nc - jp);
          switch (B.kind) {
            case WeightKind::F32: {
              const float* s = static_cast<const float*>(B.data) + (k0 + k) * B.ld + j;
              if (nr == NR) std::memcpy(d, s, sizeof(float) * NR);  // fixed size: inlined vector moves
              else std::memcpy(d, s, sizeof(float) * nr);
              break;
            }
            case WeightKind::BF16:
              ks.widen(static_cast<const uint16_t*>(B.data) + (k0 + k) * B.ld + j, nr, d);
              break;
            case WeightKind::Q4:
              ks.decode(*B.q4, (k0 + k) * B.q4->cols + j, nr, d);
              break;
          }
        }
      }
      return;
    }
    for (int64_t jp = 0; jp < nc; jp += NR) {
      int64_t nr = std::min<int64_t>(NR, nc - jp);
      float* d = dst + (jp / NR) * kc * NR;
      int64_t j = j0 + jp;
      if (nr < NR) std::memset(d, 0, sizeof(float) * kc * NR);
      switch (B.kind) {
        case WeightKind::F32: {
          const float* s = static_cast<const float*>(B.data);
          if (nr == NR) {
            ks.pack_t(s + j * B.ld + k0, B.ld, kc, d);
          } else {
            for (int64_t jj = 0; jj < nr; ++jj) {
              const float* row = s + (j + jj) * B.ld + k0;
              for (int64_t k = 0; k < kc; ++k) d[k * NR + jj] = row[k];
            }
          }
          break;
        }
        case WeightKind::BF16: {
          const uint16_t* s = static_cast<const uint16_t*>(B.data);
          // widen the rows into a row-major tile, then transpose it into the panel
          float* tmp = row_scratch.get(static_cast<size_t>(NR) * kc);
          if (nr < NR) std::memset(tmp, 0, sizeof(float) * NR * kc);
          for (int64_t jj = 0; jj < nr; ++jj) ks.widen(s + (j + jj) * B.ld + k0, kc, tmp + jj * kc);
          ks.pack_t(tmp, kc, kc, d);
          break;
        }
        case WeightKind::Q4: {
          const Q4Matrix& q = *B.q4;
          // op(B)[k][j] = W[j][k]: decode each row segment, then transpose the tile
          float* tmp = row_scratch.get(static_cast<size_t>(NR) * kc);
          if (nr < NR) std::memset(tmp, 0, sizeof(float) * NR * kc);
          for (int64_t jj = 0; jj < nr; ++jj) ks.decode(q, (j + jj) * q.cols + k0, kc, tmp + jj * kc);
          ks.pack_t(tmp, kc, kc, d);
          break;
        }
      }
    }
  }

  // Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row micro-panels (zero-padded), panel p at dst + p*kc*MR.
  static void pack_a(bool trans_a, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
                     float* dst) {
    for (int64_t ip = 0; ip < mc; ip += MR) {
      int64_t mr = std::min<int64_t>(MR, mc - ip);
      float* d = dst + (ip / MR) * kc * MR;
      int64_t i = i0 + ip;
      if (!trans_a) {
        if (mr == MR) {
          const float* r[MR];
          for (int ii = 0; ii < MR; ++ii) r[ii] = A + (i + ii) * lda + k0;
          for (int64_t k = 0; k < kc; ++k) {
            float* dk = d + k * MR;
            for (int ii = 0; ii < MR; ++ii) dk[ii] = r[ii][k];
          }
        } else {
          std::memset(d, 0, sizeof(float) * kc * MR);
          for (int64_t ii = 0; ii < mr; ++ii) {
            const float* row = A + (i + ii) * lda + k0;
            for (int64_t k = 0; k < kc; ++k) d[k * MR + ii] = row[k];
          }
        }
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          const float* src = A + (k0 + k) * lda + i;
          float* dk = d + k * MR;
          int64_t ii = 0;
          for (; ii < mr; ++ii) dk[ii] = src[ii];
          for (; ii < MR; ++ii) dk[ii] = 0.f;
        }
      }
    }
  }

  // C = beta * C for the K == 0 case (beta == 0 clears without reading).
  static void scale_c(int64_t m0, int64_t m1, int64_t n0, int64_t n1, float beta, float* C, int64_t ldc) {
    for (int64_t i = m0; i < m1; ++i) {
      float* r = C + i * ldc;
      if (beta == 0.f) std::memset(r + n0, 0, sizeof(float) * (n1 - n0));
      else for (int64_t j = n0; j < n1; ++j) r[j] *= beta;
    }
  }

  // The serial algorithm over the rectangle rows [m0, m1) x cols [n0, n1) of C.
  static void rect(const GemmKernels& ks, bool trans_a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K,
                   float alpha, const float* A, int64_t lda, const WeightRef& B, float beta, float* C, int64_t ldc) {
    if (m0 >= m1 || n0 >= n1) return;
    if (K == 0) {
      scale_c(m0, m1, n0, n1, beta, C, ldc);
      return;
    }
    const MicroKernel uk = ks.uk;
    const int64_t KC_MAX = ks.kc, MC_MAX = ks.mc, NC_MAX = ks.nc;
    // balanced K blocks: e.g. K=576 -> 3 x 192 rather than 256+256+64
    int64_t kblocks = (K + KC_MAX - 1) / KC_MAX;
    int64_t kc_step = ((K + kblocks - 1) / kblocks + 7) / 8 * 8;
    int64_t mblocks = (m1 - m0 + MC_MAX - 1) / MC_MAX;
    int64_t mc_step = ((m1 - m0 + mblocks - 1) / mblocks + MR - 1) / MR * MR;
    int64_t ncap = std::min<int64_t>(NC_MAX, ((n1 - n0) + NR - 1) / NR * NR);
    float* bbuf = b_scratch.get(static_cast<size_t>(kc_step) * ncap);
    float* abuf = a_scratch.get(static_cast<size_t>(kc_step) * mc_step);
    for (int64_t jc = n0; jc < n1; jc += NC_MAX) {
      int64_t nc = std::min<int64_t>(NC_MAX, n1 - jc);
      for (int64_t pc = 0; pc < K; pc += kc_step) {
        int64_t kc = std::min<int64_t>(kc_step, K - pc);
        float beta_eff = pc == 0 ? beta : 1.f;
        pack_b(ks, B, pc, kc, jc, nc, bbuf);
        for (int64_t ic = m0; ic < m1; ic += mc_step) {
          int64_t mc = std::min<int64_t>(mc_step, m1 - ic);
          pack_a(trans_a, A, lda, ic, mc, pc, kc, abuf);
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const float* bp = bbuf + (jr / NR) * kc * NR;
            int n = static_cast<int>(std::min<int64_t>(NR, nc - jr));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              int m = static_cast<int>(std::min<int64_t>(MR, mc - ir));
              uk(kc, abuf + (ir / MR) * kc * MR, bp, C + (ic + ir) * ldc + jc + jr, ldc, alpha, beta_eff, m, n);
            }
          }
        }
      }
    }
  }
};

// Chooses a tm x tn grid of threads over C minimising the largest tile plus packing work.
template <int MR, int NR>
void choose_grid(int64_t M, int64_t N, int64_t K, int threads, int* tm_out, int* tn_out) {
  double best = -1;
  int bm = 1, bn = 1;
  for (int tn = 1; tn <= threads; ++tn) {
    if (threads % tn) continue;
    int tm = threads / tn;
    int64_t tile_m = ((M + tm - 1) / tm + MR - 1) / MR * MR;
    int64_t tile_n = ((N + tn - 1) / tn + NR - 1) / NR * NR;
    if (tile_m * (tm - 1) >= M + MR && tm > 1) continue;  // some thread would be idle
    if (tile_n * (tn - 1) >= N + NR && tn > 1) continue;
    double cost = static_cast<double>(tile_m) * tile_n * K + 4.0 * (tile_m + tile_n) * K;
    if (best < 0 || cost < best) {
      best = cost;
      bm = tm;
      bn = tn;
    }
  }
  *tm_out = bm;
  *tn_out = bn;
}

}  // namespace

const char* gemm_kernel_name() { return kernels().name; }

const char* gemm_bf16_kernel_name() {
  if (!bf16_dot_available()) return "none";
  return amx_bf16_available() ? "amx-bf16-tiles" : "avx512-bf16-dot";
}

namespace {
// Runs rect(m0, m1, n0, n1) over a grid of threads covering C[M, N] (one call when serial).
template <int MR, int NR, typename Rect>
void run_grid(int64_t M, int64_t N, int64_t K, bool parallel, const Rect& rect) {
  double flops = 2.0 * M * N * K;
  int threads = parallel ? num_threads() : 1;
  if (flops < 2.0e5) threads = 1;  // below ~2 us of work, threading costs more than it saves
  if (threads <= 1) {
    rect(0, M, 0, N);
    return;
  }
  int tm, tn;
  choose_grid<MR, NR>(M, N, K, threads, &tm, &tn);
  parallel_run(tm * tn, [&](int tid, int nt) {
    if (nt != tm * tn) {  // pool was busy: we run alone
      rect(0, M, 0, N);
      return;
    }
    int ti = tid / tn, tj = tid % tn;
    long mb, me, nb, ne;
    split_range(M, ti, tm, MR, &mb, &me);
    split_range(N, tj, tn, NR, &nb, &ne);
    rect(mb, me, nb, ne);
  });
}

template <int MR, int NR>
void gemm_impl(const GemmKernels& ks, bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
               int64_t lda, const WeightRef& B, float beta, float* C, int64_t ldc, bool parallel) {
  run_grid<MR, NR>(M, N, K, parallel, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    Blocked<MR, NR>::rect(ks, trans_a, m0, m1, n0, n1, K, alpha, A, lda, B, beta, C, ldc);
  });
}

// C[M,N] = alpha * op(A) op(B) + beta * C for a skinny f32 op(B) and a transposed A (N <= 16:
// LoRA's dYᵀ·(x·Aᵀ), the rank-r factor's weight gradient), computed as the transpose Cᵀ[N,M] = op(B)ᵀ op(A)ᵀ so that M fills the
// 32-wide vector dimension of the 14x32 micro-tile and N pads to 14 rows instead of 32 columns
// (8 of 14 lanes busy at r = 8 instead of 8 of 32). The product goes to an N x M scratch, then
// C = alpha * scratchᵀ + beta * C (beta == 0: C is not read).
template <int MR, int NR>
void gemm_skinny_n(const GemmKernels& ks, bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                   int64_t lda, const WeightRef& B, float beta, float* C, int64_t ldc, bool parallel) {
  float* ct = ct_scratch.get(static_cast<size_t>(N) * M);
  // op(B)ᵀ is N x K: stored K x N (!B.trans) reads as a transposed A; stored N x K as a plain one.
  // op(A)ᵀ is K x M: stored M x K (!trans_a) is the [N', K']-layout weight (trans), K x M is plain.
  WeightRef at;
  at.kind = WeightKind::F32;
  at.data = A;
  at.ld = lda;
  at.trans = !trans_a;
  gemm_impl<MR, NR>(ks, !B.trans, N, M, K, 1.f, static_cast<const float*>(B.data), B.ld, at, 0.f, ct, M, parallel);
  auto store = [&](long m0, long m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* c = C + m * ldc;
      if (beta == 0.f) for (int64_t n = 0; n < N; ++n) c[n] = alpha * ct[n * M + m];
      else for (int64_t n = 0; n < N; ++n) c[n] = alpha * ct[n * M + m] + beta * c[n];
    }
  };
  if (parallel) parallel_for(M, 256, store);
  else store(0, M);
}

#if defined(__x86_64__) || defined(__i386__)
#ifndef PEFT_GEMM_BF16_KC
#define PEFT_GEMM_BF16_KC 512
#endif
// The bf16 dot-product algorithm over rows [m0, m1) x cols [n0, n1) of C (blocking as Blocked,
// with panels of k-pairs: a KC x NR panel of B is KC/2 x NR uint32).
void bf16dot_rect(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha, const float* A,
                  int64_t lda, const uint16_t* B, int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc) {
  constexpr int MR = GEMM512_MR, NR = GEMM512_NR;
  if (m0 >= m1 || n0 >= n1) return;
  if (K == 0) {
    Blocked<MR, NR>::scale_c(m0, m1, n0, n1, beta, C, ldc);
    return;
  }
  const int64_t KC_MAX = PEFT_GEMM_BF16_KC, MC_MAX = PEFT_GEMM512_MC, NC_MAX = PEFT_GEMM512_NC;
  int64_t kblocks = (K + KC_MAX - 1) / KC_MAX;
  int64_t kc_step = ((K + kblocks - 1) / kblocks + 7) / 8 * 8;
  int64_t mblocks = (m1 - m0 + MC_MAX - 1) / MC_MAX;
  int64_t mc_step = ((m1 - m0 + mblocks - 1) / mblocks + MR - 1) / MR * MR;
  int64_t ncap = std::min<int64_t>(NC_MAX, ((n1 - n0) + NR - 1) / NR * NR);
  uint32_t* bbuf = reinterpret_cast<uint32_t*>(b_scratch.get(static_cast<size_t>(kc_step / 2) * ncap));
  uint32_t* abuf = reinterpret_cast<uint32_t*>(a_scratch.get(static_cast<size_t>(kc_step / 2) * mc_step));
  for (int64_t jc = n0; jc < n1; jc += NC_MAX) {
    int64_t nc = std::min<int64_t>(NC_MAX, n1 - jc);
    for (int64_t pc = 0; pc < K; pc += kc_step) {
      int64_t kc = std::min<int64_t>(kc_step, K - pc), kp = (kc + 1) / 2;
      float beta_eff = pc == 0 ? beta : 1.f;
      for (int64_t jr = 0; jr < nc; jr += NR)
        pack_b_bf16dot_avx512(B, ldb, trans_b, pc, kc, K, jc + jr, std::min<int64_t>(NR, nc - jr), bbuf + (jr / NR) * kp * NR);
      for (int64_t ic = m0; ic < m1; ic += mc_step) {
        int64_t mc = std::min<int64_t>(mc_step, m1 - ic);
        for (int64_t ir = 0; ir < mc; ir += MR)
          pack_a_bf16dot_avx512(A + (ic + ir) * lda + pc, lda, std::min<int64_t>(MR, mc - ir), kc, abuf + (ir / MR) * kp * MR);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const uint32_t* bp = bbuf + (jr / NR) * kp * NR;
          int n = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            int m = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            micro_kernel_bf16dot_avx512(kp, abuf + (ir / MR) * kp * MR, bp, C + (ic + ir) * ldc + jc + jr, ldc, alpha,
                                        beta_eff, m, n);
          }
        }
      }
    }
  }
}
#endif
}  // namespace

bool gemm_bf16_dot(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc, bool parallel) {
#if defined(__x86_64__) || defined(__i386__)
  if (!bf16_dot_available()) return false;
  if (M <= 0 || N <= 0) return true;
#if defined(__x86_64__)
  if (amx_bf16_available()) {
    gemm_bf16_amx(M, N, K, alpha, A, lda, B, ldb, trans_b, beta, C, ldc, parallel);
    return true;
  }
#endif
  run_grid<GEMM512_MR, GEMM512_NR>(M, N, K, parallel, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    bf16dot_rect(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, trans_b, beta, C, ldc);
  });
  return true;
#else
  return false;
#endif
}

void gemm(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const WeightRef& B, float beta, float* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  const GemmKernels& ks = kernels();
#if defined(__x86_64__) || defined(__i386__)
  if (is_avx512(ks) && !trans_a && B.trans && M <= 8 && K > 0 &&
      (B.kind == WeightKind::F32 || B.kind == WeightKind::BF16)) {
    // decode-sized M: stream each weight row once instead of packing the weights
    const bool bf16 = B.kind == WeightKind::BF16;
    auto body = [&](long j0, long j1) {
      small_m_nt_avx512(static_cast<int>(M), j0, j1, K, alpha, A, lda, B.data, bf16, B.ld, beta, C, ldc);
    };
    if (parallel && static_cast<double>(N) * K >= 1 << 16) parallel_for(N, 16, body);
    else body(0, N);
    return;
  }
  if (is_avx512(ks) && B.kind == WeightKind::F32 && N <= 16 && M > 8 && K >= 32 && !trans_a) {
    // skinny N (LoRA's x·Aᵀ, dY·B at rank r <= 16): dot products of A's rows, read in place, with
    // op(B)ᵀ [N, K] (zero-padded to a multiple of 8 rows) — no padding of N to the 32-wide tile and
    // no packing of the M x K operand (2.4x the 14x32 path at N = 8, 1.5x at N = 16 on Intel; below
    // K = 32 the final horizontal sums cost more than the padding saves)
    const int64_t npad = (N + 7) / 8 * 8;
    float* w = ct_scratch.get(static_cast<size_t>(npad) * K);
    const float* s = static_cast<const float*>(B.data);
    if (B.trans) for (int64_t n = 0; n < N; ++n) std::memcpy(w + n * K, s + n * B.ld, sizeof(float) * K);
    else for (int64_t k = 0; k < K; ++k) for (int64_t n = 0; n < N; ++n) w[n * K + k] = s[k * B.ld + n];
    if (npad > N) std::memset(w + N * K, 0, sizeof(float) * (npad - N) * K);
    auto body = [&](long b0, long b1) {
      small_n_avx512(b0 * 3, std::min<int64_t>(M, b1 * 3), N, K, alpha, A, lda, w, K, beta, C, ldc);
    };
    int64_t blocks = (M + 2) / 3;
    if (parallel && static_cast<double>(M) * N * K >= 1 << 17) parallel_for(blocks, 8, body);
    else body(0, blocks);
    return;
  }
  if (is_avx512(ks) && B.kind == WeightKind::F32 && N <= 16 && M >= 64 && K >= 16 && trans_a) {
    gemm_skinny_n<GEMM512_MR, GEMM512_NR>(ks, trans_a, M, N, K, alpha, A, lda, B, beta, C, ldc, parallel);
    return;
  }
  if (is_avx512(ks)) {
    gemm_impl<GEMM512_MR, GEMM512_NR>(ks, trans_a, M, N, K, alpha, A, lda, B, beta, C, ldc, parallel);
    return;
  }
#endif
  gemm_impl<GEMM_MR, GEMM_NR>(ks, trans_a, M, N, K, alpha, A, lda, B, beta, C, ldc, parallel);
}

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
           int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc, bool parallel) {
  WeightRef w;
  w.kind = WeightKind::F32;
  w.data = B;
  w.ld = ldb;
  w.trans = trans_b;
  gemm(trans_a, M, N, K, alpha, A, lda, w, beta, C, ldc, parallel);
}

void dequantize_q4(const Q4Matrix& q4, float* out) {
  int64_t total = q4.rows * q4.cols;
  int64_t bs = q4.blocksize;
  parallel_for((total + bs - 1) / bs, 256, [&](long b0, long b1) {
    int64_t s = b0 * bs, e = std::min<int64_t>(total, b1 * bs);
    kernels().decode(q4, s, e - s, out + s);
  });
}

}  // namespace peft
