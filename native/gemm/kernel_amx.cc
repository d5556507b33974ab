// bfloat16 GEMM on Intel AMX (AMX-TILE + AMX-BF16; Sapphire Rapids and later): C = alpha * bf16(A) *
// op(B) + beta * C with TDPBF16PS, the numerics of the VDPBF16PS path (kernel_avx512_bf16.cc): A
// rounded to bf16 (nearest even, VCVTNE2PS2BF16), products of bf16 summed in float32.
//
// Tiles (palette 1, every tile 16 rows x 64 bytes, loaded once per thread): tmm0..3 accumulate a
// 32 x 32 block of C as 2 x 2 tiles of 16 x 16 float32; tmm4/5 hold two A tiles of 16 rows x 32 bf16;
// tmm6/7 two B tiles of 16 k-pair rows x 16 columns in the VNNI layout, one uint32 = (B[2p][j],
// B[2p+1][j]) — the layout of the VDPBF16PS path's packed 32-column panels, whose packing
// (pack_b_bf16dot_avx512) this file reuses; a B tile is half a panel's row (stride 128 bytes).
// TDPBF16PS: C[m][n] += sum_p A[m][2p] * B[2p][n] + A[m][2p+1] * B[2p+1][n] (Intel SDM vol. 2,
// "TDPBF16PS"; Intel Architecture Instruction Set Extensions Programming Reference, ch. 3 AMX).
//
// Blocking as BLIS / Goto (gemm.cc): B packed per KC x NC block, A into 16 x 32 tiles once per KC
// block for the thread's whole row range (per MC x KC block when that exceeds 8 MiB); each 32 x 32
// micro-step keeps its 32-column B micro-panel (KC/2 x 32 uint32, 32 KiB at
// KC = 512) in L1 while the A tiles stream from L2. Ragged edges: the packed copies are zero-padded
// in K to a multiple of 32 (zero times zero adds nothing) and in M/N to whole tiles, and only the
// m x n corner of each 32 x 32 result block is written to C.
//
// Every function has its own target attribute, so the file builds with baseline x86-64 flags;
// gemm.cc calls gemm_bf16_amx only when amx_bf16_available() (cpu_features.h).
#if defined(__x86_64__)
#include "kernel_amx.h"

#include <immintrin.h>
// GCC 12 flags _mm512_undefined_* inside the intrinsics headers under target attributes (a false positive)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../threadpool.h"
#include "kernels.h"

#define PEFT_AMX __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")))

// Blocking (overridable at compile time for tuning: -DPEFT_AMX_KC=… etc.); tuned on a
// Sapphire-Rapids-class Xeon (48 KiB L1d, 2 MiB L2) with bench/gemm.ts.
#ifndef PEFT_AMX_KC
#define PEFT_AMX_KC 1024
#endif
#ifndef PEFT_AMX_MC
#define PEFT_AMX_MC 256
#endif
#ifndef PEFT_AMX_NC
#define PEFT_AMX_NC 1024
#endif
#ifndef PEFT_AMX_A_WHOLE_MAX
#define PEFT_AMX_A_WHOLE_MAX (8 << 20)
#endif

namespace peft {
namespace {

constexpr int TM = 16;           // rows of an A or C tile
constexpr int TK = 32;           // bf16 per A tile row (16 k-pairs)
constexpr int MR = 32, NR = 32;  // C block of one micro-step (2 x 2 tiles)
constexpr int A_TILE = TM * TK;  // bf16 per packed A tile (1 KiB)
constexpr int B_TILE_ROWS = TK / 2;
static_assert(GEMM512_NR == NR, "B panels are the VDPBF16PS path's 32-column k-pair panels");

// LDTILECFG operand (64 bytes): palette 1, bytes per row and rows of tmm0..tmm15.
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tile configuration is per thread (XTILECFG state); every tile here has the same 16 x 64-byte shape,
// so each thread loads it once and keeps it.
thread_local bool tiles_configured = false;

PEFT_AMX void configure_tiles() {
  if (tiles_configured) return;
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = TM;
    cfg.colsb[t] = 64;
  }
  // LDTILECFG by hand: GCC 12's _tile_loadconfig tells the compiler it reads only 8 bytes of the
  // configuration, so the stores of rows/colsb were dropped as dead (an all-zero shape, then #UD).
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
  tiles_configured = true;
}

// 64-byte aligned scratch buffer owned by each thread, grown on demand.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  ~Scratch() { std::free(p); }
  template <typename T>
  T* get(size_t count) {
    size_t need = ((count * sizeof(T) + 63) / 64) * 64;
    if (need > bytes) {
      std::free(p);
      p = std::aligned_alloc(64, need);
      if (!p) std::abort();
      bytes = need;
    }
    return static_cast<T*>(p);
  }
};
thread_local Scratch a_scratch, b_scratch;

inline __mmask16 lanes(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
}

// Packs rows [0, mr) x columns [0, kc) of A (row stride lda) rounded to bf16 as 16 x 32 tiles:
// rows 16g..16g+15 and k-tile t at d + (g * nkt + t) * A_TILE (row stride TK); zero beyond mr and kc.
PEFT_AMX void pack_a(const float* A, int64_t lda, int64_t mr, int64_t kc, int64_t nkt, int64_t groups, uint16_t* d) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t r = 0; r < groups * TM; ++r) {
    uint16_t* out = d + (r / TM) * nkt * A_TILE + (r % TM) * TK;
    if (r >= mr) {
      for (int64_t t = 0; t < nkt; ++t) _mm512_store_si512(reinterpret_cast<__m512i*>(out + t * A_TILE), zero);
      continue;
    }
    const float* src = A + r * lda;
    int64_t t = 0;
    for (; (t + 1) * TK <= kc; ++t) {
      const __m512 lo = _mm512_loadu_ps(src + t * TK), hi = _mm512_loadu_ps(src + t * TK + 16);
      _mm512_store_si512(reinterpret_cast<__m512i*>(out + t * A_TILE), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
    for (; t < nkt; ++t) {
      const int64_t rem = kc - t * TK;
      const __m512 lo = _mm512_maskz_loadu_ps(lanes(rem), src + t * TK);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes(rem - 16), src + t * TK + 16);
      _mm512_store_si512(reinterpret_cast<__m512i*>(out + t * A_TILE), reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
  }
}

PEFT_AMX void store_block(const float* acc, float* c, int64_t ldc, float alpha, float beta, int m, int n);

// out[16*GM x 16*GN] (row stride ld_out floats) = (load_c ? out : 0) + the sum over nkt k-tiles of
// the A tiles of row groups a and a + a_next times the B micro-panel b (per k-tile 16 k-pair rows x
// 32 uint32). `out` is either C itself (full tiles, alpha == 1, beta 0 or 1) or a 32 x 32 scratch.
template <int GM, int GN>
PEFT_AMX void tile_block(int64_t nkt, const uint16_t* a, int64_t a_next, const uint32_t* b, float* out, int64_t ld_out,
                         bool load_c) {
  const int64_t ldo = ld_out * 4;
  if (load_c) {
    _tile_loadd(0, out, ldo);
    if (GN > 1) _tile_loadd(1, out + 16, ldo);
    if (GM > 1) _tile_loadd(2, out + TM * ld_out, ldo);
    if (GM > 1 && GN > 1) _tile_loadd(3, out + TM * ld_out + 16, ldo);
  } else {
    _tile_zero(0);
    if (GN > 1) _tile_zero(1);
    if (GM > 1) _tile_zero(2);
    if (GM > 1 && GN > 1) _tile_zero(3);
  }
  for (int64_t t = 0; t < nkt; ++t) {
    const uint32_t* bt = b + t * B_TILE_ROWS * NR;
    _tile_loadd(6, bt, NR * 4);
    if (GN > 1) _tile_loadd(7, bt + 16, NR * 4);
    _tile_loadd(4, a + t * A_TILE, TK * 2);
    _tile_dpbf16ps(0, 4, 6);
    if (GN > 1) _tile_dpbf16ps(1, 4, 7);
    if (GM > 1) {
      _tile_loadd(5, a + a_next + t * A_TILE, TK * 2);
      _tile_dpbf16ps(2, 5, 6);
      if (GN > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, out, ldo);
  if (GN > 1) _tile_stored(1, out + 16, ldo);
  if (GM > 1) _tile_stored(2, out + TM * ld_out, ldo);
  if (GM > 1 && GN > 1) _tile_stored(3, out + TM * ld_out + 16, ldo);
}

// One micro-step: C[0..m, 0..n] = alpha * A-tiles * B-panel + beta * C. Whole tiles with alpha == 1
// and beta 0 or 1 accumulate in C itself; anything else goes through the scratch acc.
template <int GM, int GN>
PEFT_AMX void micro_step(int64_t nkt, const uint16_t* a, int64_t a_next, const uint32_t* b, float* c, int64_t ldc,
                         float alpha, float beta, int m, int n, float* acc) {
  if (m == GM * TM && n == GN * 16 && alpha == 1.f && (beta == 0.f || beta == 1.f)) {
    tile_block<GM, GN>(nkt, a, a_next, b, c, ldc, beta == 1.f);
    return;
  }
  tile_block<GM, GN>(nkt, a, a_next, b, acc, NR, false);
  store_block(acc, c, ldc, alpha, beta, m, n);
}

// c[0..m, 0..n] = alpha * acc + beta * c (beta == 0: c is not read).
PEFT_AMX void store_block(const float* acc, float* c, int64_t ldc, float alpha, float beta, int m, int n) {
  const __mmask16 m0 = lanes(n), m1 = lanes(n - 16);
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    __m512 v0 = _mm512_load_ps(acc + i * NR), v1 = _mm512_load_ps(acc + i * NR + 16);
    if (beta == 0.f) {
      v0 = _mm512_mul_ps(va, v0);
      v1 = _mm512_mul_ps(va, v1);
    } else {
      v0 = _mm512_fmadd_ps(va, v0, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m0, ci)));
      v1 = _mm512_fmadd_ps(va, v1, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m1, ci + 16)));
    }
    _mm512_mask_storeu_ps(ci, m0, v0);
    _mm512_mask_storeu_ps(ci + 16, m1, v1);
  }
}

// The serial algorithm over rows [m0, m1) x cols [n0, n1) of C.
void amx_rect(int64_t m0, int64_t m1, int64_t n0, int64_t n1, int64_t K, float alpha, const float* A, int64_t lda,
              const uint16_t* B, int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc) {
  if (m0 >= m1 || n0 >= n1) return;
  if (K == 0) {
    for (int64_t i = m0; i < m1; ++i) {
      float* r = C + i * ldc;
      if (beta == 0.f) std::memset(r + n0, 0, sizeof(float) * (n1 - n0));
      else for (int64_t j = n0; j < n1; ++j) r[j] *= beta;
    }
    return;
  }
  configure_tiles();
  const int64_t KC_MAX = PEFT_AMX_KC, MC_MAX = PEFT_AMX_MC, NC_MAX = PEFT_AMX_NC;
  // balanced K and M blocks, K blocks a multiple of one tile's 32
  const int64_t kblocks = (K + KC_MAX - 1) / KC_MAX;
  const int64_t kc_step = ((K + kblocks - 1) / kblocks + TK - 1) / TK * TK;
  const int64_t mblocks = (m1 - m0 + MC_MAX - 1) / MC_MAX;
  const int64_t mc_step = ((m1 - m0 + mblocks - 1) / mblocks + MR - 1) / MR * MR;
  const int64_t ncap = std::min<int64_t>(NC_MAX, ((n1 - n0) + NR - 1) / NR * NR);
  uint32_t* bbuf = b_scratch.get<uint32_t>(static_cast<size_t>(kc_step / 2) * ncap);
  // When the rectangle's whole A (rows rounded to 32, times KC) fits in A_WHOLE_MAX bytes, it is packed
  // once per K block instead of once per NC block (the lm_head's N = 49152 would repack it 24 times).
  const int64_t rows_pad = (m1 - m0 + MR - 1) / MR * MR;
  const bool a_whole = rows_pad * kc_step * 2 <= PEFT_AMX_A_WHOLE_MAX;
  uint16_t* abuf = a_scratch.get<uint16_t>(static_cast<size_t>(kc_step) * (a_whole ? rows_pad : mc_step));
  alignas(64) float acc[MR * NR];
  for (int64_t pc = 0; pc < K; pc += kc_step) {
    const int64_t kc = std::min<int64_t>(kc_step, K - pc);
    const int64_t nkt = (kc + TK - 1) / TK, kp = nkt * B_TILE_ROWS, filled = (kc + 1) / 2;
    const float beta_eff = pc == 0 ? beta : 1.f;
    if (a_whole) pack_a(A + m0 * lda + pc, lda, m1 - m0, kc, nkt, (m1 - m0 + TM - 1) / TM, abuf);
    for (int64_t jc = n0; jc < n1; jc += NC_MAX) {
      const int64_t nc = std::min<int64_t>(NC_MAX, n1 - jc);
      for (int64_t jr = 0; jr < nc; jr += NR) {
        uint32_t* d = bbuf + (jr / NR) * kp * NR;
        pack_b_bf16dot_avx512(B, ldb, trans_b, pc, kc, K, jc + jr, std::min<int64_t>(NR, nc - jr), d);
        if (filled < kp) std::memset(d + filled * NR, 0, sizeof(uint32_t) * (kp - filled) * NR);
      }
      for (int64_t ic = m0; ic < m1; ic += mc_step) {
        const int64_t mc = std::min<int64_t>(mc_step, m1 - ic);
        const uint16_t* ablock = a_whole ? abuf + ((ic - m0) / TM) * nkt * A_TILE : abuf;
        if (!a_whole) pack_a(A + ic * lda + pc, lda, mc, kc, nkt, (mc + TM - 1) / TM, abuf);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const uint32_t* bp = bbuf + (jr / NR) * kp * NR;
          const int n = static_cast<int>(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int m = static_cast<int>(std::min<int64_t>(MR, mc - ir));
            const uint16_t* ap = ablock + (ir / TM) * nkt * A_TILE;
            const int64_t next = nkt * A_TILE;
            float* c = C + (ic + ir) * ldc + jc + jr;
            if (m > TM && n > 16) micro_step<2, 2>(nkt, ap, next, bp, c, ldc, alpha, beta_eff, m, n, acc);
            else if (m > TM) micro_step<2, 1>(nkt, ap, next, bp, c, ldc, alpha, beta_eff, m, n, acc);
            else if (n > 16) micro_step<1, 2>(nkt, ap, next, bp, c, ldc, alpha, beta_eff, m, n, acc);
            else micro_step<1, 1>(nkt, ap, next, bp, c, ldc, alpha, beta_eff, m, n, acc);
          }
        }
      }
    }
  }
}

// Chooses a tm x tn grid of threads over C minimising the largest block plus packing work (as gemm.cc).
void choose_grid(int64_t M, int64_t N, int64_t K, int threads, int* tm_out, int* tn_out) {
  double best = -1;
  int bm = 1, bn = 1;
  for (int tn = 1; tn <= threads; ++tn) {
    if (threads % tn) continue;
    const int tm = threads / tn;
    const int64_t tile_m = ((M + tm - 1) / tm + MR - 1) / MR * MR;
    const int64_t tile_n = ((N + tn - 1) / tn + NR - 1) / NR * NR;
    if (tm > 1 && tile_m * (tm - 1) >= M + MR) continue;  // some thread would be idle
    if (tn > 1 && tile_n * (tn - 1) >= N + NR) continue;
    const double cost = static_cast<double>(tile_m) * tile_n * K + 4.0 * (tile_m + tile_n) * K;
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

void gemm_bf16_amx(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const uint16_t* B,
                   int64_t ldb, bool trans_b, float beta, float* C, int64_t ldc, bool parallel) {
  if (M <= 0 || N <= 0) return;
  auto rect = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    amx_rect(m0, m1, n0, n1, K, alpha, A, lda, B, ldb, trans_b, beta, C, ldc);
  };
  int threads = parallel ? num_threads() : 1;
  if (2.0 * M * N * K < 1.0e6) threads = 1;  // below ~1 us of tile work, threading costs more than it saves
  if (threads <= 1) {
    rect(0, M, 0, N);
    return;
  }
  int tm, tn;
  choose_grid(M, N, K, threads, &tm, &tn);
  parallel_run(tm * tn, [&](int tid, int nt) {
    if (nt != tm * tn) {  // pool was busy: we run alone
      rect(0, M, 0, N);
      return;
    }
    long mb, me, nb, ne;
    split_range(M, tid / tn, tm, MR, &mb, &me);
    split_range(N, tid % tn, tn, NR, &nb, &ne);
    rect(mb, me, nb, ne);
  });
}

}  // namespace peft
#endif
