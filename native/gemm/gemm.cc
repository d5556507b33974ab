// GEMM driver: blocking, packing (float32 / bfloat16 / 4-bit weight sources) and threading.
#include "gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

#include "../threadpool.h"
#include "kernels.h"

namespace peft {
namespace {

constexpr int MR = GEMM_MR;
constexpr int NR = GEMM_NR;
// Blocking for AVX2 cores with 32 KiB L1d / 512 KiB L2 (tuned on Zen 3 with bench/gemm.ts):
// (overridable at compile time for tuning: -DPEFT_GEMM_KC=… etc.)
#ifndef PEFT_GEMM_KC
#define PEFT_GEMM_KC 384
#endif
#ifndef PEFT_GEMM_MC
#define PEFT_GEMM_MC 96
#endif
#ifndef PEFT_GEMM_NC
#define PEFT_GEMM_NC 2048
#endif
constexpr int64_t KC_MAX = PEFT_GEMM_KC;  // kc x NR panel of B (24 KiB) stays in L1
constexpr int64_t MC_MAX = PEFT_GEMM_MC;  // MC x KC block of A (144 KiB) stays in L2
constexpr int64_t NC_MAX = PEFT_GEMM_NC;  // KC x NC panel of B (3 MiB) stays in L3

MicroKernel pick_kernel() {
  // PEFT_KERNELS=generic forces the portable kernels (to test that path on an AVX2 machine)
  const char* force = std::getenv("PEFT_KERNELS");
  if (force && std::string(force) == "generic") return micro_kernel_generic;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return micro_kernel_avx2;
#endif
  return micro_kernel_generic;
}

MicroKernel kernel() {
  static const MicroKernel k = pick_kernel();
  return k;
}

using TransposePack = void (*)(const float* s, int64_t ld, int64_t kc, float* d);

TransposePack transpose_pack() {
  static const TransposePack t = [] {
#if defined(__x86_64__) || defined(__i386__)
    if (kernel() == micro_kernel_avx2) return &pack_rows_transposed_avx2;
#endif
    return &pack_rows_transposed_generic;
  }();
  return t;
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

thread_local Scratch a_scratch, b_scratch, row_scratch;

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Decodes `count` consecutive 4-bit elements starting at flat index idx into out[e * stride].
void decode_q4(const Q4Matrix& q, int64_t idx, int64_t count, float* out, int64_t stride) {
  int64_t end = idx + count;
  while (idx < end) {
    int64_t b = idx / q.blocksize;
    int64_t stop = std::min(end, (b + 1) * q.blocksize);
    float s = q.block_absmax(b);
    float lut[16];
    for (int i = 0; i < 16; ++i) lut[i] = q.code[i] * s;
    for (; idx < stop; ++idx) {
      uint8_t byte = q.packed[idx >> 1];
      *out = lut[(idx & 1) ? (byte & 15) : (byte >> 4)];
      out += stride;
    }
  }
}

// Packs op(B)[k0:k0+kc, j0:j0+nc] into NR-column micro-panels (zero-padded), panel p at dst + p*kc*NR.
void pack_b(const WeightRef& B, int64_t k0, int64_t kc, int64_t j0, int64_t nc, float* dst) {
  for (int64_t jp = 0; jp < nc; jp += NR) {
    int64_t nr = std::min<int64_t>(NR, nc - jp);
    float* d = dst + (jp / NR) * kc * NR;
    int64_t j = j0 + jp;
    if (nr < NR) std::memset(d, 0, sizeof(float) * kc * NR);
    switch (B.kind) {
      case WeightKind::F32: {
        const float* s = static_cast<const float*>(B.data);
        if (!B.trans) {
          for (int64_t k = 0; k < kc; ++k) std::memcpy(d + k * NR, s + (k0 + k) * B.ld + j, sizeof(float) * nr);
        } else if (nr == NR) {
          transpose_pack()(s + j * B.ld + k0, B.ld, kc, d);
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
        if (!B.trans) {
          for (int64_t k = 0; k < kc; ++k) {
            const uint16_t* row = s + (k0 + k) * B.ld + j;
            for (int64_t jj = 0; jj < nr; ++jj) d[k * NR + jj] = bf16_to_f32(row[jj]);
          }
        } else {
          // widen the rows into a row-major tile, then transpose it into the panel
          float* tmp = row_scratch.get(static_cast<size_t>(NR) * kc);
          if (nr < NR) std::memset(tmp, 0, sizeof(float) * NR * kc);
          for (int64_t jj = 0; jj < nr; ++jj) {
            const uint16_t* row = s + (j + jj) * B.ld + k0;
            float* t = tmp + jj * kc;
            for (int64_t k = 0; k < kc; ++k) t[k] = bf16_to_f32(row[k]);
          }
          transpose_pack()(tmp, kc, kc, d);
        }
        break;
      }
      case WeightKind::Q4: {
        const Q4Matrix& q = *B.q4;
        if (B.trans) {  // op(B)[k][j] = W[j][k]: decode each row segment, then transpose the tile
          float* tmp = row_scratch.get(static_cast<size_t>(NR) * kc);
          if (nr < NR) std::memset(tmp, 0, sizeof(float) * NR * kc);
          for (int64_t jj = 0; jj < nr; ++jj) decode_q4(q, (j + jj) * q.cols + k0, kc, tmp + jj * kc, 1);
          transpose_pack()(tmp, kc, kc, d);
        } else {  // op(B)[k][j] = W[k][j]
          for (int64_t k = 0; k < kc; ++k) decode_q4(q, (k0 + k) * q.cols + j, nr, d + k * NR, 1);
        }
        break;
      }
    }
  }
}

// Packs op(A)[i0:i0+mc, k0:k0+kc] into MR-row micro-panels (zero-padded), panel p at dst + p*kc*MR.
void pack_a(bool trans_a, const float* A, int64_t lda, int64_t i0, int64_t mc, int64_t k0, int64_t kc,
            float* dst) {
  for (int64_t ip = 0; ip < mc; ip += MR) {
    int64_t mr = std::min<int64_t>(MR, mc - ip);
    float* d = dst + (ip / MR) * kc * MR;
    int64_t i = i0 + ip;
    if (!trans_a) {
      if (mr == MR) {
        const float* r0 = A + (i + 0) * lda + k0;
        const float* r1 = A + (i + 1) * lda + k0;
        const float* r2 = A + (i + 2) * lda + k0;
        const float* r3 = A + (i + 3) * lda + k0;
        const float* r4 = A + (i + 4) * lda + k0;
        const float* r5 = A + (i + 5) * lda + k0;
        for (int64_t k = 0; k < kc; ++k) {
          float* dk = d + k * MR;
          dk[0] = r0[k]; dk[1] = r1[k]; dk[2] = r2[k];
          dk[3] = r3[k]; dk[4] = r4[k]; dk[5] = r5[k];
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
void scale_c(int64_t m0, int64_t m1, int64_t n0, int64_t n1, float beta, float* C, int64_t ldc) {
  for (int64_t i = m0; i < m1; ++i) {
    float* r = C + i * ldc;
    if (beta == 0.f) std::memset(r + n0, 0, sizeof(float) * (n1 - n0));
    else for (int64_t j = n0; j < n1; ++j) r[j] *= beta;
  }
}

// The serial algorithm over the rectangle rows [m0, m1) x cols [n0, n1) of C.
void gemm_rect(bool trans_a, int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha,
               const float* A, int64_t lda, const WeightRef& B, float beta, float* C, int64_t ldc) {
  if (m0 >= m1 || n0 >= n1) return;
  if (K == 0) {
    scale_c(m0, m1, n0, n1, beta, C, ldc);
    return;
  }
  MicroKernel uk = kernel();
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
      pack_b(B, pc, kc, jc, nc, bbuf);
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

// Chooses a tm x tn grid of threads over C minimising the largest tile plus packing work.
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

const char* gemm_kernel_name() {
#if defined(__x86_64__) || defined(__i386__)
  if (kernel() == micro_kernel_avx2) return "avx2-fma-6x16";
#endif
  return "generic-6x16";
}

void gemm(bool trans_a, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const WeightRef& B, float beta, float* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  double flops = 2.0 * M * N * K;
  int threads = parallel ? num_threads() : 1;
  if (flops < 2.0e5) threads = 1;  // below ~2 us of work, threading costs more than it saves
  if (threads <= 1) {
    gemm_rect(trans_a, 0, M, 0, N, K, alpha, A, lda, B, beta, C, ldc);
    return;
  }
  int tm, tn;
  choose_grid(M, N, K, threads, &tm, &tn);
  parallel_run(tm * tn, [&](int tid, int nt) {
    if (nt != tm * tn) {  // pool was busy: we run alone
      gemm_rect(trans_a, 0, M, 0, N, K, alpha, A, lda, B, beta, C, ldc);
      return;
    }
    int ti = tid / tn, tj = tid % tn;
    long mb, me, nb, ne;
    split_range(M, ti, tm, MR, &mb, &me);
    split_range(N, tj, tn, NR, &nb, &ne);
    gemm_rect(trans_a, mb, me, nb, ne, K, alpha, A, lda, B, beta, C, ldc);
  });
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
    decode_q4(q4, s, e - s, out + s, 1);
  });
}

}  // namespace peft
