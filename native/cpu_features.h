// One CPU-feature probe for the whole addon (after ggml's cpu-feats-x86.cpp): CPUID leaves 1 and 7
// plus XGETBV, so a feature counts only when the OS also saves its registers. Every kernel family
// (GEMM, bf16 GEMM, row ops) asks kernel_level() instead of probing on its own.
//
// PEFT_KERNELS=amx|avx512|avx2|generic caps the level (to test the slower paths on a fast machine);
// asking for more than the CPU has gives what it has (kernel_level_name() says which was used).
// `amx` (the default where present) is the avx512 level plus Intel AMX tiles for the bf16 GEMM;
// `avx512` means AVX-512 without AMX (the bf16 GEMM then uses VDPBF16PS).
#pragma once

namespace peft {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512_vnni = false, avx512_bf16 = false;
  // AMX-TILE (CPUID.7.0:EDX[24]) and AMX-BF16 (EDX[22]) with XCR0 bits 17/18 (XTILECFG, XTILEDATA)
  // set and, on Linux, the XTILEDATA permission granted (arch_prctl ARCH_REQ_XCOMP_PERM); when the
  // kernel refuses it, both count as absent.
  bool amx_tile = false, amx_bf16 = false;
  bool intel = false;  // vendor string "GenuineIntel" (CPUID leaf 0): picks the SGEMM kernel variant
};

// What the CPU and OS support (independent of PEFT_KERNELS).
const CpuFeatures& cpu_features();

enum class KernelLevel { Generic = 0, Avx2 = 1, Avx512 = 2 };

// The kernel family in use: the best the CPU supports (AVX2 needs AVX2+FMA; AVX-512 needs
// F+BW+VL+DQ), capped by PEFT_KERNELS.
KernelLevel kernel_level();
const char* kernel_level_name(KernelLevel l);
// True when PEFT_KERNELS is set to something other than amx, avx512, avx2, generic.
bool kernel_env_invalid();

// bf16 dot products (VDPBF16PS) usable: AVX512_BF16 present and the AVX-512 level in use.
bool bf16_dot_available();

// AMX-BF16 tile GEMM (TDPBF16PS) usable: bf16_dot_available(), AMX-TILE + AMX-BF16 present and
// permitted, and PEFT_KERNELS unset or amx.
bool amx_bf16_available();

// "amx" when amx_bf16_available(), else kernel_level_name(kernel_level()).
const char* kernel_level_label();

}  // namespace peft
