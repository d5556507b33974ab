// AVX-512 build of the row kernels (16 floats per vector, zmm registers), used only when the probe
// reports the avx512 level (F+BW+VL+DQ with AVX2+FMA). The target pragma applies the
// target("avx512f,…") attribute to every function of this file, so it builds with baseline x86-64
// flags and nothing here runs unless row_ops() chose it.
#if defined(__x86_64__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")
#include "rowops_api.h"

namespace peft {
namespace rowops_avx512 {
#define ROWOPS_VW 16
#define ROWOPS_NAME "avx512"
#include "rowops.h"
const RowOps& get() { return kRowOps; }
}  // namespace rowops_avx512
}  // namespace peft
#endif
