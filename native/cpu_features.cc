// CPU-feature probe (see cpu_features.h).
#include "cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace peft {
namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

// Linux >= 5.16 keeps AMX tile data disabled until a process asks for it (the 8 KiB XTILEDATA state
// then joins its signal frames): ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, confirmed with
// ARCH_GET_XCOMP_PERM (Documentation/arch/x86/xstate.rst). Asked once per process, from the probe.
bool request_amx_permission() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  unsigned long mask = 0;
  if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask) == 0 && (mask >> XFEATURE_XTILEDATA) & 1) return true;
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
  mask = 0;
  return syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask) == 0 && ((mask >> XFEATURE_XTILEDATA) & 1);
#else
  return false;  // other OSes: no AMX path (not verified there)
#endif
}
#endif

CpuFeatures probe() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
  f.intel = b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e;  // "Genu" "ineI" "ntel"
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  bool osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
  bool fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
  if (!osxsave || !avx) return f;
  uint64_t xcr0 = xgetbv0();
  bool ymm_ok = (xcr0 & 0x6) == 0x6;             // SSE + AVX state
  bool zmm_ok = (xcr0 & 0xE6) == 0xE6;           // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_ok) return f;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  f.avx2 = (b >> 5) & 1;
  f.fma = fma;
  f.f16c = f16c;
  if (zmm_ok) {
    f.avx512f = (b >> 16) & 1;
    f.avx512dq = (b >> 17) & 1;
    f.avx512bw = (b >> 30) & 1;
    f.avx512vl = (b >> 31) & 1;
    f.avx512_vnni = (c >> 11) & 1;
    unsigned max_sub = a;
    bool amx_os = ((xcr0 >> 17) & 3) == 3;  // XTILECFG and XTILEDATA state enabled
    if (amx_os && ((d >> 24) & 1) && ((d >> 22) & 1) && request_amx_permission()) {
      f.amx_tile = true;
      f.amx_bf16 = true;
    }
    if (max_sub >= 1) {
      __cpuid_count(7, 1, a, b, c, d);
      f.avx512_bf16 = (a >> 5) & 1;
    }
  }
#endif
  return f;
}

KernelLevel best_level(const CpuFeatures& f) {
  if (f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.avx2 && f.fma) return KernelLevel::Avx512;
  if (f.avx2 && f.fma) return KernelLevel::Avx2;
  return KernelLevel::Generic;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = probe();
  return f;
}

namespace {
// PEFT_KERNELS, read once: unset/empty (no cap), one of the level names, or something else.
enum class KernelsEnv { Unset, Amx, Avx512, Avx2, Generic, Invalid };
KernelsEnv kernels_env() {
  static const KernelsEnv v = [] {
    const char* e = std::getenv("PEFT_KERNELS");
    if (!e || !*e) return KernelsEnv::Unset;
    if (!std::strcmp(e, "amx")) return KernelsEnv::Amx;
    if (!std::strcmp(e, "avx512")) return KernelsEnv::Avx512;
    if (!std::strcmp(e, "avx2")) return KernelsEnv::Avx2;
    if (!std::strcmp(e, "generic")) return KernelsEnv::Generic;
    return KernelsEnv::Invalid;
  }();
  return v;
}
}  // namespace

bool kernel_env_invalid() { return kernels_env() == KernelsEnv::Invalid; }

KernelLevel kernel_level() {
  static const KernelLevel l = [] {
    KernelLevel best = best_level(cpu_features());
    KernelsEnv e = kernels_env();
    KernelLevel cap = e == KernelsEnv::Avx2 ? KernelLevel::Avx2 : e == KernelsEnv::Generic ? KernelLevel::Generic : KernelLevel::Avx512;
    return static_cast<int>(best) < static_cast<int>(cap) ? best : cap;
  }();
  return l;
}

const char* kernel_level_name(KernelLevel l) {
  switch (l) {
    case KernelLevel::Avx512: return "avx512";
    case KernelLevel::Avx2: return "avx2";
    default: return "generic";
  }
}

bool bf16_dot_available() {
  return kernel_level() == KernelLevel::Avx512 && cpu_features().avx512_bf16;
}

bool amx_bf16_available() {
  static const bool a = [] {
    bool allowed = kernels_env() == KernelsEnv::Unset || kernels_env() == KernelsEnv::Amx;
    const CpuFeatures& f = cpu_features();
    return allowed && bf16_dot_available() && f.amx_tile && f.amx_bf16;
  }();
  return a;
}

const char* kernel_level_label() {
  return amx_bf16_available() ? "amx" : kernel_level_name(kernel_level());
}

}  // namespace peft
