// AVX2+FMA build of the row kernels (8 floats per vector), used only when the CPU reports both.
#if defined(__x86_64__)
#pragma GCC target("avx2,fma")
#include "rowops_api.h"

namespace peft {
namespace rowops_avx2 {
#define ROWOPS_VW 8
#define ROWOPS_NAME "avx2"
#include "rowops.h"
const RowOps& get() { return kRowOps; }
}  // namespace rowops_avx2
}  // namespace peft
#endif
