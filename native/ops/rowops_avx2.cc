// AVX2+FMA build of the row kernels, used only when the CPU reports both.
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma")
#include "rowops_api.h"

namespace peft {
namespace rowops_avx2 {
#include "rowops.h"
const RowOps& get() { return kRowOps; }
}  // namespace rowops_avx2
}  // namespace peft
#endif
